"""The table of points: what every kind of equipment exposes, and the typed index.

Each kind of equipment is a frozen dataclass whose fields *are* its rows of the
table: a field's metadata is the point's table, type, scale, unit, access,
range and description, and its value (once the map is built) is the point's
position in the point map. So one declaration serves both ways:

* ``build_point_map`` walks the fields in declaration order to allocate every
  point (``tank03.fluid_temp`` from ``TankPoints.fluid_temp``), and
* code that needs a point asks the index instead of spelling a name:
  ``pmap.index.tanks[i].fluid_temp`` or ``pmap.index.tank["tank03"].fluid_temp``
  is an ``int`` into the scan's value arrays. A misspelled attribute is a type
  error for mypy and an ``AttributeError`` where the index is first used (when
  a part of the controller is built), never a silent miss at scan time.

Field order is the allocation order: appending a field at the end of a class
never moves an existing point's address; inserting one does (check
``tests/test_pointmap.py``'s pinned addresses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from .points import Access, PointType, Table, WordOrder

#: A range bound: a number, none, or computed from the equipment record.
Bound = float | None | Callable[[Any], float]


@dataclass(frozen=True, slots=True)
class Spec:
    """One row of the table: a point every piece of equipment of a kind has."""

    table: Table
    type: PointType
    #: ``str.format`` template: ``{n}`` the equipment's name, ``{what}`` its
    #: kind's label (``GroupPoints.label``), ``{units}`` what a tank holds
    description: str
    scale: float = 1.0
    unit: str = ""
    access: Access = "ro"
    lo: Bound = None
    hi: Bound = None
    #: the point exists only for equipment this returns True for (None: always)
    only: Callable[[Any], bool] | None = None
    #: the point's name prefix when it is not the equipment's name
    prefix: str | None = None


def point(
    table: Table,
    type_: PointType,
    description: str,
    *,
    scale: float = 1.0,
    unit: str = "",
    access: Access = "ro",
    lo: Bound = None,
    hi: Bound = None,
    only: Callable[[Any], bool] | None = None,
    prefix: str | None = None,
) -> Any:
    """A field of a points class: one row of the table (see the module docstring)."""
    spec = Spec(table, type_, description, scale, unit, access, lo, hi, only, prefix)
    return field(metadata={"spec": spec})


# -- the recurring kinds of point --------------------------------------------
def temp(description: str, lo: float = -40, hi: float = 150, prefix: str | None = None) -> Any:
    """A temperature input: i16 in 0.1 degC."""
    return point("input", "i16", description, scale=0.1, unit="degC", lo=lo, hi=hi, prefix=prefix)


def pct_cmd(description: str) -> Any:
    """A percentage command (speed, valve): u16 holding in 0.1 %, 0-100."""
    return point("holding", "u16", description, scale=0.1, unit="%", access="rw", lo=0.0, hi=100.0)


def pct_in(description: str) -> Any:
    """A percentage reading: u16 input in 0.1 %, 0-100."""
    return point("input", "u16", description, scale=0.1, unit="%", lo=0.0, hi=100.0)


def bit(table: Table, description: str, access: Access = "ro") -> Any:
    """A coil (command bit) or discrete input (status bit)."""
    return point(table, "bool", description, access=access)


# ==========================================================================
# the kinds of equipment
# ==========================================================================
@dataclass(frozen=True, slots=True)
class GroupPoints:
    """The points of one piece of equipment; ``name`` is the equipment's name."""

    name: str
    #: how descriptions name this kind of equipment ("feeder", "tank", ...)
    label: ClassVar[str] = ""
    #: word order of this kind's two-register values
    word_order: ClassVar[WordOrder] = "big"

    @classmethod
    def specs(cls) -> Iterator[tuple[str, Spec]]:
        """(attribute, spec) of every point of this kind, in allocation order."""
        for f in fields(cls):
            spec = f.metadata.get("spec")
            if spec is not None:
                yield f.name, spec

    @classmethod
    def point_name(cls, equipment: str, attr: str) -> str:
        """The name of point ``attr`` of ``equipment``; an unknown attribute raises."""
        for a, spec in cls.specs():
            if a == attr:
                return f"{spec.prefix or equipment}.{attr}"
        known = ", ".join(a for a, _ in cls.specs())
        raise KeyError(f"{cls.label or cls.__name__} has no point '{attr}' (points: {known})")

    def items(self) -> Iterator[tuple[str, int]]:
        """(attribute, position) of every point this equipment has."""
        for attr, _ in self.specs():
            pos = getattr(self, attr)
            if pos is not None:
                yield attr, pos


@dataclass(frozen=True, slots=True)
class PlcPoints(GroupPoints):
    """The PLC's system block (heartbeat first: what every integrator looks for),
    and the outdoor sensors wired to the PLC, named ``site.*``."""

    label: ClassVar[str] = "PLC"
    heartbeat: int = point(
        "holding",
        "u16",
        "controller heartbeat: change it every scan or the PLC takes its safe state",
        access="rw",
        lo=0,
        hi=65535,
    )
    heartbeat_timeout_s: int = point(
        "holding",
        "u16",
        "watchdog timeout for the heartbeat (PLC setting, read-only here)",
        unit="s",
        lo=1,
        hi=600,
    )
    status: int = point(
        "input",
        "u16",
        "status bits: 0 safe state, 1 interlock latched, 2 heartbeat ok, 3 leak, "
        "4 under-frequency trip",
        lo=0,
        hi=65535,
    )
    heartbeat_age_s: int = point(
        "input",
        "u16",
        "seconds since the heartbeat last changed (saturates)",
        scale=0.1,
        unit="s",
        lo=0,
    )
    reset: int = bit(
        "coil",
        "write 1 to reset latched interlocks whose cause has cleared (self-clearing)",
        access="rw",
    )
    safe_state: int = bit(
        "discrete",
        "PLC is in its watchdog safe state (cooling full, mining off, GPUs capped)",
    )
    ambient_temp: int = temp(
        "outdoor ambient temperature at the dry coolers", lo=-50, hi=70, prefix="site"
    )
    ambient_rh: int = point(
        "input",
        "u16",
        "outdoor relative humidity",
        scale=0.1,
        unit="%",
        lo=0,
        hi=100,
        prefix="site",
    )
    # The under-frequency relay (plc/ufls.py), appended: no earlier address moves.
    ufls_armed: int = bit(
        "coil",
        "under-frequency relay armed (starts as the site description says)",
        access="rw",
    )
    ufls_release: int = bit(
        "coil",
        "write 1 to release an under-frequency trip once the frequency has recovered "
        "(self-clearing; refused before, see ufls_recovered)",
        access="rw",
    )
    ufls_tripped: int = bit(
        "discrete", "under-frequency trip: the designated mining tanks are shed (latched)"
    )
    ufls_recovered: int = bit(
        "discrete",
        "frequency recovered for the required time: a release will be accepted",
    )


@dataclass(frozen=True, slots=True)
class MeterPoints(GroupPoints):
    """A power meter's standard block: kW, A, V as f32, kWh as u32."""

    power_kw: int = point("input", "f32", "{what} power", unit="kW", lo=0.0)
    current_a: int = point("input", "f32", "{what} current", unit="A", lo=0.0)
    voltage_v: int = point("input", "f32", "{what} voltage", unit="V", lo=0.0)
    energy_kwh: int = point("input", "u32", "{what} energy import counter", unit="kWh", lo=0.0)


@dataclass(frozen=True, slots=True)
class SiteMeterPoints(MeterPoints):
    """The site meter at the point of common coupling (points ``site.*``)."""

    label: ClassVar[str] = "site import"
    frequency_hz: int = point("input", "f32", "grid frequency", unit="Hz", lo=40.0, hi=70.0)
    power_factor: int = point("input", "i16", "site power factor", scale=0.001, lo=-1.0, hi=1.0)


@dataclass(frozen=True, slots=True)
class FeederPoints(MeterPoints):
    label: ClassVar[str] = "feeder"
    breaker_closed: int = bit("discrete", "{what} breaker closed")
    breaker_tripped: int = bit("discrete", "{what} breaker tripped on overcurrent")


@dataclass(frozen=True, slots=True)
class PduPoints(FeederPoints):
    label: ClassVar[str] = "PDU"
    #: PDU meters are a different family that puts the low word first
    word_order: ClassVar[WordOrder] = "little"


@dataclass(frozen=True, slots=True)
class LoopPoints(GroupPoints):
    """A water/glycol loop's skid instruments (wired to the PLC)."""

    label: ClassVar[str] = "loop"
    supply_temp: int = temp("loop {n} supply temperature (to the HXs)")
    return_temp: int = temp("loop {n} return temperature (to the dry coolers)")
    flow: int = point("input", "u16", "loop {n} flow", scale=0.1, unit="m3/h", lo=0)
    dp: int = point("input", "u16", "loop {n} differential pressure", scale=0.1, unit="kPa", lo=0)
    leak: int = bit("discrete", "loop {n} leak detected at the skid")
    low_flow: int = bit("discrete", "loop {n} low-flow interlock latched")


@dataclass(frozen=True, slots=True)
class PumpPoints(GroupPoints):
    """A loop pump's VFD."""

    label: ClassVar[str] = "pump"
    speed_cmd: int = pct_cmd("pump {n} speed command")
    run_cmd: int = bit("coil", "pump {n} run command", access="rw")
    speed: int = pct_in("pump {n} actual speed")
    power_kw: int = point("input", "u16", "pump {n} electrical power", scale=0.1, unit="kW", lo=0)
    running: int = bit("discrete", "pump {n} running")
    fault: int = bit("discrete", "pump {n} VFD fault")


@dataclass(frozen=True, slots=True)
class DryCoolerPoints(GroupPoints):
    label: ClassVar[str] = "dry cooler"
    fan_cmd: int = pct_cmd("dry cooler {n} fan speed command")
    fan_speed: int = pct_in("dry cooler {n} actual fan speed")
    power_kw: int = point("input", "u16", "dry cooler {n} fan power", scale=0.1, unit="kW", lo=0)
    outlet_temp: int = temp("dry cooler {n} water outlet temperature")
    fans_running: int = point(
        "input", "u16", "dry cooler {n} fans running", lo=0, hi=lambda d: d.fans
    )
    fault: int = bit("discrete", "dry cooler {n} fan fault")


def _is_asic(tank: Any) -> bool:
    return bool(tank.workload == "asic")


@dataclass(frozen=True, slots=True)
class TankPoints(GroupPoints):
    """An immersion tank: its sensors, its miners or GPU nodes, its two commands."""

    label: ClassVar[str] = "tank"
    fluid_temp: int = temp("tank {n} hot fluid temperature (sensor A)")
    fluid_temp_b: int = temp("tank {n} hot fluid temperature (sensor B, redundant)")
    return_temp: int = temp("tank {n} cooled fluid temperature after the HX")
    water_out_temp: int = temp("tank {n} water temperature leaving the HX")
    chip_temp_max: int = temp("tank {n} hottest chip reported by the {units}")
    dielectric_flow: int = point(
        "input", "u16", "tank {n} dielectric flow", scale=0.01, unit="l/s", lo=0
    )
    water_flow: int = point("input", "u16", "tank {n} HX water flow", scale=0.1, unit="m3/h", lo=0)
    level: int = pct_in("tank {n} fluid level")
    power_kw: int = point("input", "u32", "tank {n} IT power", scale=0.01, unit="kW", lo=0)
    units_online: int = point("input", "u16", "tank {n} {units} online", lo=0, hi=lambda t: t.units)
    units_throttled: int = point(
        "input", "u16", "tank {n} {units} throttling", lo=0, hi=lambda t: t.units
    )
    hashrate_ths: int | None = point(
        "input", "u32", "tank {n} hashrate", scale=0.1, unit="TH/s", lo=0, only=_is_asic
    )
    # The two commands are adjacent, so one FC16 request can write both.
    valve_cmd: int = pct_cmd("tank {n} HX water valve command")
    power_budget_kw: int = point(
        "holding",
        "u16",
        "tank {n} power budget for its {units} (miner target / GPU cap)",
        scale=0.1,
        unit="kW",
        access="rw",
        lo=0.0,
        hi=lambda t: round(t.rated_kw, 1),
    )
    valve_pos: int = point(
        "holding", "u16", "tank {n} HX water valve position", scale=0.1, unit="%", lo=0, hi=100
    )
    enable: int = bit("coil", "tank {n} workload enable", access="rw")
    leak: int = bit("discrete", "tank {n} water leak at the HX")
    interlock: int = bit(
        "discrete", "tank {n} hard interlock latched (over-temperature, leak or low flow)"
    )
    power_on: int = bit("discrete", "tank {n} power contactor closed")


@dataclass(frozen=True, slots=True)
class CduPoints(GroupPoints):
    """A coolant distribution unit for direct-to-chip racks."""

    label: ClassVar[str] = "CDU"
    supply_temp: int = temp("CDU {n} coolant supply to the racks")
    return_temp: int = temp("CDU {n} coolant return from the racks")
    water_out_temp: int = temp("CDU {n} facility water leaving the HX")
    tcs_flow: int = point("input", "u16", "CDU {n} coolant flow", scale=0.01, unit="l/s", lo=0)
    valve_cmd: int = pct_cmd("CDU {n} facility water valve command")
    valve_pos: int = point(
        "holding",
        "u16",
        "CDU {n} facility water valve position",
        scale=0.1,
        unit="%",
        lo=0,
        hi=100,
    )
    leak: int = bit("discrete", "CDU {n} leak detected")
    fault: int = bit("discrete", "CDU {n} fault")


@dataclass(frozen=True, slots=True)
class RowPoints(GroupPoints):
    """A row of direct-to-chip GPU racks."""

    label: ClassVar[str] = "rack row"
    power_kw: int = point("input", "u32", "rack row {n} IT power", scale=0.01, unit="kW", lo=0)
    gpu_temp_max: int = temp("rack row {n} hottest GPU die")
    nodes_online: int = point(
        "input", "u16", "rack row {n} nodes online", lo=0, hi=lambda r: r.nodes
    )
    nodes_throttled: int = point(
        "input", "u16", "rack row {n} nodes throttling", lo=0, hi=lambda r: r.nodes
    )
    gpu_power_cap_w: int = point(
        "holding",
        "u16",
        "rack row {n} per-GPU power cap",
        unit="W",
        access="rw",
        lo=lambda r: r.cap_range_w[0],
        hi=lambda r: r.cap_range_w[1],
    )
    enable: int = bit("coil", "rack row {n} workload enable", access="rw")
    interlock: int = bit(
        "discrete", "rack row {n} hard interlock latched (coolant over-temperature)"
    )
    power_on: int = bit("discrete", "rack row {n} power contactor closed")


# ==========================================================================
# the index of a built map
# ==========================================================================
G = TypeVar("G", bound=GroupPoints)


def _by_name(groups: tuple[G, ...]) -> Mapping[str, G]:
    return MappingProxyType({g.name: g for g in groups})


#: (lookup by name, tuple in site order) of each kind of equipment in ``PointIndex``
_PER_KIND = (
    ("feeder", "feeders"),
    ("pdu", "pdus"),
    ("loop", "loops"),
    ("pump", "pumps"),
    ("dry_cooler", "dry_coolers"),
    ("tank", "tanks"),
    ("cdu", "cdus"),
    ("row", "rows"),
)


@dataclass(frozen=True)
class PointIndex:
    """Every point of a site by equipment and attribute (positions in the point map).

    The tuples follow the site description's order (``site.tanks`` and
    ``index.tanks`` line up); the mappings look equipment up by name.
    """

    plc: PlcPoints
    site: SiteMeterPoints
    feeders: tuple[FeederPoints, ...]
    pdus: tuple[PduPoints, ...]
    loops: tuple[LoopPoints, ...]
    pumps: tuple[PumpPoints, ...]
    dry_coolers: tuple[DryCoolerPoints, ...]
    tanks: tuple[TankPoints, ...]
    cdus: tuple[CduPoints, ...]
    rows: tuple[RowPoints, ...]
    feeder: Mapping[str, FeederPoints] = field(init=False, repr=False)
    pdu: Mapping[str, PduPoints] = field(init=False, repr=False)
    loop: Mapping[str, LoopPoints] = field(init=False, repr=False)
    pump: Mapping[str, PumpPoints] = field(init=False, repr=False)
    dry_cooler: Mapping[str, DryCoolerPoints] = field(init=False, repr=False)
    tank: Mapping[str, TankPoints] = field(init=False, repr=False)
    cdu: Mapping[str, CduPoints] = field(init=False, repr=False)
    row: Mapping[str, RowPoints] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for single, many in _PER_KIND:
            object.__setattr__(self, single, _by_name(getattr(self, many)))

    def groups(self) -> Iterator[GroupPoints]:
        """Every piece of equipment's points, PLC and site meter first."""
        yield self.plc
        yield self.site
        for _, many in _PER_KIND:
            yield from getattr(self, many)

    def meter(self, name: str) -> MeterPoints:
        """The meter block of ``site``, a feeder or a PDU, by name."""
        if name == "site":
            return self.site
        found = self.feeder.get(name) or self.pdu.get(name)
        if found is None:
            raise KeyError(f"no meter named '{name}' (site, feeders, PDUs)")
        return found
