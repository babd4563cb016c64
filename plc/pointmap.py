"""The point map: every Modbus point of a site, derived from its description.

This is the one place a point is declared. Names are stable and dotted
(``tank03.fluid_temp``); each device answers on its own unit id as on a real
site (PLC, site and feeder meters, PDU meters, pump and fan VFDs, CDUs);
addresses are 0-based and allocated in file order per unit and table, so a
PLC programmer can implement the map from ``thermogate points --format csv``.

Types and scales follow common field practice so the codec is exercised the
way real devices use it: temperatures as i16 in 0.1 °C, percentages as u16 in
0.1 %, meter quantities as IEEE-754 f32 (energy counters as u32, one meter
family with low word first).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from .equipment import Site
from .points import BIT_TABLES, TABLES, Point

#: Header of the published CSV; integrators' tooling keys on it, keep it exact.
CSV_HEADER = (
    "name",
    "unit_id",
    "table",
    "address",
    "type",
    "scale",
    "unit",
    "access",
    "min",
    "max",
    "description",
)

#: PLC status register bits (``plc.status``).
STATUS_SAFE_STATE = 1 << 0  # watchdog fallback active
STATUS_INTERLOCK = 1 << 1  # at least one hard interlock latched
STATUS_HEARTBEAT_OK = 1 << 2  # heartbeat changed within the timeout
STATUS_LEAK = 1 << 3  # any leak detected


@dataclass
class PointMap:
    """The ordered points of a site with lookups by name and by unit."""

    points: tuple[Point, ...]
    by_name: dict[str, Point] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.points}
        if len(self.by_name) != len(self.points):
            seen: set[str] = set()
            dup = next(p.name for p in self.points if p.name in seen or seen.add(p.name))
            raise ValueError(f"duplicate point name '{dup}'")

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __getitem__(self, name: str) -> Point:
        return self.by_name[name]

    def unit_ids(self) -> list[int]:
        return sorted({p.unit_id for p in self.points})

    def for_unit(self, unit_id: int) -> list[Point]:
        return [p for p in self.points if p.unit_id == unit_id]

    def writable(self) -> list[Point]:
        return [p for p in self.points if p.writable]

    # -- publication -------------------------------------------------------
    def rows(self) -> list[dict[str, object]]:
        return [
            {
                "name": p.name,
                "unit_id": p.unit_id,
                "table": p.table,
                "address": p.address,
                "type": p.type,
                "scale": p.scale,
                "unit": p.unit,
                "access": p.access,
                "min": "" if p.min is None else p.min,
                "max": "" if p.max is None else p.max,
                "description": p.description,
            }
            for p in self.points
        ]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for row in self.rows():
            w.writerow([_fmt(row[k]) for k in CSV_HEADER])
        return buf.getvalue()

    def to_json(self) -> str:
        out = []
        for p in self.points:
            out.append(
                {
                    "name": p.name,
                    "unit_id": p.unit_id,
                    "table": p.table,
                    "address": p.address,
                    "type": p.type,
                    "word_order": p.word_order,
                    "scale": p.scale,
                    "unit": p.unit,
                    "access": p.access,
                    "min": p.min,
                    "max": p.max,
                    "device": p.device,
                    "description": p.description,
                }
            )
        return json.dumps(out, indent=1)

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(CSV_HEADER) + " |",
            "|" + "---|" * len(CSV_HEADER),
        ]
        for row in self.rows():
            lines.append(
                "| " + " | ".join(_fmt(row[k]).replace("|", "\\|") for k in CSV_HEADER) + " |"
            )
        return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class _Allocator:
    """Hands out consecutive 0-based addresses per (unit, table)."""

    def __init__(self) -> None:
        self.next: dict[tuple[int, str], int] = {}
        self.points: list[Point] = []

    def add(
        self,
        device: str,
        unit_id: int,
        name: str,
        table: str,
        type_: str,
        description: str,
        *,
        scale: float = 1.0,
        unit: str = "",
        access: str = "ro",
        lo: float | None = None,
        hi: float | None = None,
        word_order: str = "big",
    ) -> None:
        assert table in TABLES
        if table in BIT_TABLES:
            type_ = "bool"
        key = (unit_id, table)
        addr = self.next.get(key, 0)
        p = Point(
            name=name,
            unit_id=unit_id,
            table=table,  # type: ignore[arg-type]
            address=addr,
            type=type_,  # type: ignore[arg-type]
            scale=scale,
            unit=unit,
            access=access,  # type: ignore[arg-type]
            min=lo,
            max=hi,
            description=description,
            word_order=word_order,  # type: ignore[arg-type]
            device=device,
        )
        self.next[key] = p.end
        self.points.append(p)

    # shorthands for the recurring kinds of point ------------------------------
    def temp(
        self, dev: str, uid: int, name: str, desc: str, lo: float = -40, hi: float = 150
    ) -> None:
        self.add(dev, uid, name, "input", "i16", desc, scale=0.1, unit="degC", lo=lo, hi=hi)

    def pct_cmd(self, dev: str, uid: int, name: str, desc: str, lo: float = 0.0) -> None:
        self.add(
            dev,
            uid,
            name,
            "holding",
            "u16",
            desc,
            scale=0.1,
            unit="%",
            access="rw",
            lo=lo,
            hi=100.0,
        )

    def pct_in(self, dev: str, uid: int, name: str, desc: str) -> None:
        self.add(dev, uid, name, "input", "u16", desc, scale=0.1, unit="%", lo=0.0, hi=100.0)

    def meter(self, dev: str, uid: int, prefix: str, what: str, word_order: str = "big") -> None:
        """A power meter's standard block: kW, A, V, Hz as f32, kWh as u32."""
        for q, unit, hi in (
            ("power_kw", "kW", None),
            ("current_a", "A", None),
            ("voltage_v", "V", None),
        ):
            self.add(
                dev,
                uid,
                f"{prefix}.{q}",
                "input",
                "f32",
                f"{what} {q.split('_')[0]}",
                unit=unit,
                lo=0.0,
                hi=hi,
                word_order=word_order,
            )
        self.add(
            dev,
            uid,
            f"{prefix}.energy_kwh",
            "input",
            "u32",
            f"{what} energy import counter",
            unit="kWh",
            lo=0.0,
            word_order=word_order,
        )


def build_point_map(site: Site) -> PointMap:
    """Derive every point of ``site``; pure and deterministic."""
    a = _Allocator()
    plc = site.plc.unit_id

    # PLC system block first: the heartbeat at holding 0 is what every
    # integrator looks for.
    a.add(
        "plc",
        plc,
        "plc.heartbeat",
        "holding",
        "u16",
        "controller heartbeat: change it every scan or the PLC takes its safe state",
        access="rw",
        lo=0,
        hi=65535,
    )
    a.add(
        "plc",
        plc,
        "plc.heartbeat_timeout_s",
        "holding",
        "u16",
        "watchdog timeout for the heartbeat (PLC setting, read-only here)",
        unit="s",
        lo=1,
        hi=600,
    )
    a.add(
        "plc",
        plc,
        "plc.status",
        "input",
        "u16",
        "status bits: 0 safe state, 1 interlock latched, 2 heartbeat ok, 3 leak",
        lo=0,
        hi=65535,
    )
    a.add(
        "plc",
        plc,
        "plc.heartbeat_age_s",
        "input",
        "u16",
        "seconds since the heartbeat last changed (saturates)",
        scale=0.1,
        unit="s",
        lo=0,
    )
    a.add(
        "plc",
        plc,
        "plc.reset",
        "coil",
        "bool",
        "write 1 to reset latched interlocks whose cause has cleared (self-clearing)",
        access="rw",
    )
    a.add(
        "plc",
        plc,
        "plc.safe_state",
        "discrete",
        "bool",
        "PLC is in its watchdog safe state (cooling full, mining off, GPUs capped)",
    )
    a.temp(
        "plc",
        plc,
        "site.ambient_temp",
        "outdoor ambient temperature at the dry coolers",
        lo=-50,
        hi=70,
    )
    a.add(
        "plc",
        plc,
        "site.ambient_rh",
        "input",
        "u16",
        "outdoor relative humidity",
        scale=0.1,
        unit="%",
        lo=0,
        hi=100,
    )

    # Site meter at the point of common coupling.
    m = site.meter_unit_id
    a.meter("site_meter", m, "site", "site import")
    a.add(
        "site_meter",
        m,
        "site.frequency_hz",
        "input",
        "f32",
        "grid frequency",
        unit="Hz",
        lo=40.0,
        hi=70.0,
    )
    a.add(
        "site_meter",
        m,
        "site.power_factor",
        "input",
        "i16",
        "site power factor",
        scale=0.001,
        lo=-1.0,
        hi=1.0,
    )

    for f in site.feeders:
        a.meter(f.name, f.unit_id, f.name, f"feeder {f.name}")
        a.add(
            f.name,
            f.unit_id,
            f"{f.name}.breaker_closed",
            "discrete",
            "bool",
            f"feeder {f.name} breaker closed",
        )
        a.add(
            f.name,
            f.unit_id,
            f"{f.name}.breaker_tripped",
            "discrete",
            "bool",
            f"feeder {f.name} breaker tripped on overcurrent",
        )
    for d in site.pdus:
        # PDU meters are a different family that puts the low word first.
        a.meter(d.name, d.unit_id, d.name, f"PDU {d.name}", word_order="little")
        a.add(
            d.name,
            d.unit_id,
            f"{d.name}.breaker_closed",
            "discrete",
            "bool",
            f"PDU {d.name} breaker closed",
        )
        a.add(
            d.name,
            d.unit_id,
            f"{d.name}.breaker_tripped",
            "discrete",
            "bool",
            f"PDU {d.name} breaker tripped on overcurrent",
        )

    for lp in site.loops:
        n = lp.name
        a.temp(n, plc, f"{n}.supply_temp", f"loop {n} supply temperature (to the HXs)")
        a.temp(n, plc, f"{n}.return_temp", f"loop {n} return temperature (to the dry coolers)")
        a.add(n, plc, f"{n}.flow", "input", "u16", f"loop {n} flow", scale=0.1, unit="m3/h", lo=0)
        a.add(
            n,
            plc,
            f"{n}.dp",
            "input",
            "u16",
            f"loop {n} differential pressure",
            scale=0.1,
            unit="kPa",
            lo=0,
        )
        a.add(n, plc, f"{n}.leak", "discrete", "bool", f"loop {n} leak detected at the skid")
        a.add(n, plc, f"{n}.low_flow", "discrete", "bool", f"loop {n} low-flow interlock latched")
        for pump in lp.pumps:
            u, pn = pump.unit_id, pump.name
            a.pct_cmd(pn, u, f"{pn}.speed_cmd", f"pump {pn} speed command", lo=0.0)
            a.add(pn, u, f"{pn}.run_cmd", "coil", "bool", f"pump {pn} run command", access="rw")
            a.pct_in(pn, u, f"{pn}.speed", f"pump {pn} actual speed")
            a.add(
                pn,
                u,
                f"{pn}.power_kw",
                "input",
                "u16",
                f"pump {pn} electrical power",
                scale=0.1,
                unit="kW",
                lo=0,
            )
            a.add(pn, u, f"{pn}.running", "discrete", "bool", f"pump {pn} running")
            a.add(pn, u, f"{pn}.fault", "discrete", "bool", f"pump {pn} VFD fault")
        for dc in lp.dry_coolers:
            u, dn = dc.unit_id, dc.name
            a.pct_cmd(dn, u, f"{dn}.fan_cmd", f"dry cooler {dn} fan speed command")
            a.pct_in(dn, u, f"{dn}.fan_speed", f"dry cooler {dn} actual fan speed")
            a.add(
                dn,
                u,
                f"{dn}.power_kw",
                "input",
                "u16",
                f"dry cooler {dn} fan power",
                scale=0.1,
                unit="kW",
                lo=0,
            )
            a.temp(dn, u, f"{dn}.outlet_temp", f"dry cooler {dn} water outlet temperature")
            a.add(
                dn,
                u,
                f"{dn}.fans_running",
                "input",
                "u16",
                f"dry cooler {dn} fans running",
                lo=0,
                hi=dc.fans,
            )
            a.add(dn, u, f"{dn}.fault", "discrete", "bool", f"dry cooler {dn} fan fault")

    for t in site.tanks:
        u, n = t.unit_id, t.name
        what = "miners" if t.workload == "asic" else "GPU nodes"
        a.temp(n, u, f"{n}.fluid_temp", f"tank {n} hot fluid temperature (sensor A)")
        a.temp(n, u, f"{n}.fluid_temp_b", f"tank {n} hot fluid temperature (sensor B, redundant)")
        a.temp(n, u, f"{n}.return_temp", f"tank {n} cooled fluid temperature after the HX")
        a.temp(n, u, f"{n}.water_out_temp", f"tank {n} water temperature leaving the HX")
        a.temp(n, u, f"{n}.chip_temp_max", f"tank {n} hottest chip reported by the {what}")
        a.add(
            n,
            u,
            f"{n}.dielectric_flow",
            "input",
            "u16",
            f"tank {n} dielectric flow",
            scale=0.01,
            unit="l/s",
            lo=0,
        )
        a.add(
            n,
            u,
            f"{n}.water_flow",
            "input",
            "u16",
            f"tank {n} HX water flow",
            scale=0.1,
            unit="m3/h",
            lo=0,
        )
        a.pct_in(n, u, f"{n}.level", f"tank {n} fluid level")
        a.add(
            n, u, f"{n}.power_kw", "input", "u32", f"tank {n} IT power", scale=0.01, unit="kW", lo=0
        )
        a.add(
            n, u, f"{n}.units_online", "input", "u16", f"tank {n} {what} online", lo=0, hi=t.units
        )
        a.add(
            n,
            u,
            f"{n}.units_throttled",
            "input",
            "u16",
            f"tank {n} {what} throttling",
            lo=0,
            hi=t.units,
        )
        if t.workload == "asic":
            a.add(
                n,
                u,
                f"{n}.hashrate_ths",
                "input",
                "u32",
                f"tank {n} hashrate",
                scale=0.1,
                unit="TH/s",
                lo=0,
            )
        # The two commands are adjacent, so one FC16 request can write both.
        a.pct_cmd(n, u, f"{n}.valve_cmd", f"tank {n} HX water valve command")
        a.add(
            n,
            u,
            f"{n}.power_budget_kw",
            "holding",
            "u16",
            f"tank {n} power budget for its {what} (miner target / GPU cap)",
            scale=0.1,
            unit="kW",
            access="rw",
            lo=0.0,
            hi=round(t.rated_kw, 1),
        )
        a.add(
            n,
            u,
            f"{n}.valve_pos",
            "holding",
            "u16",
            f"tank {n} HX water valve position",
            scale=0.1,
            unit="%",
            lo=0,
            hi=100,
        )
        a.add(n, u, f"{n}.enable", "coil", "bool", f"tank {n} workload enable", access="rw")
        a.add(n, u, f"{n}.leak", "discrete", "bool", f"tank {n} water leak at the HX")
        a.add(
            n,
            u,
            f"{n}.interlock",
            "discrete",
            "bool",
            f"tank {n} hard interlock latched (over-temperature, leak or low flow)",
        )
        a.add(n, u, f"{n}.power_on", "discrete", "bool", f"tank {n} power contactor closed")

    for c in site.cdus:
        u, n = c.unit_id, c.name
        a.temp(n, u, f"{n}.supply_temp", f"CDU {n} coolant supply to the racks")
        a.temp(n, u, f"{n}.return_temp", f"CDU {n} coolant return from the racks")
        a.temp(n, u, f"{n}.water_out_temp", f"CDU {n} facility water leaving the HX")
        a.add(
            n,
            u,
            f"{n}.tcs_flow",
            "input",
            "u16",
            f"CDU {n} coolant flow",
            scale=0.01,
            unit="l/s",
            lo=0,
        )
        a.pct_cmd(n, u, f"{n}.valve_cmd", f"CDU {n} facility water valve command")
        a.add(
            n,
            u,
            f"{n}.valve_pos",
            "holding",
            "u16",
            f"CDU {n} facility water valve position",
            scale=0.1,
            unit="%",
            lo=0,
            hi=100,
        )
        a.add(n, u, f"{n}.leak", "discrete", "bool", f"CDU {n} leak detected")
        a.add(n, u, f"{n}.fault", "discrete", "bool", f"CDU {n} fault")

    for r in site.rack_rows:
        u, n = r.unit_id, r.name
        a.add(
            n,
            u,
            f"{n}.power_kw",
            "input",
            "u32",
            f"rack row {n} IT power",
            scale=0.01,
            unit="kW",
            lo=0,
        )
        a.temp(n, u, f"{n}.gpu_temp_max", f"rack row {n} hottest GPU die")
        a.add(
            n,
            u,
            f"{n}.nodes_online",
            "input",
            "u16",
            f"rack row {n} nodes online",
            lo=0,
            hi=r.nodes,
        )
        a.add(
            n,
            u,
            f"{n}.nodes_throttled",
            "input",
            "u16",
            f"rack row {n} nodes throttling",
            lo=0,
            hi=r.nodes,
        )
        a.add(
            n,
            u,
            f"{n}.gpu_power_cap_w",
            "holding",
            "u16",
            f"rack row {n} per-GPU power cap",
            unit="W",
            access="rw",
            lo=200,
            hi=700,
        )
        a.add(n, u, f"{n}.enable", "coil", "bool", f"rack row {n} workload enable", access="rw")
        a.add(
            n,
            u,
            f"{n}.interlock",
            "discrete",
            "bool",
            f"rack row {n} hard interlock latched (coolant over-temperature)",
        )
        a.add(n, u, f"{n}.power_on", "discrete", "bool", f"rack row {n} power contactor closed")

    return PointMap(tuple(_layout(a.points, site)))


# --------------------------------------------------------------------------
# address layout
# --------------------------------------------------------------------------
#: Regions of a unit shared by several pieces of equipment (a PLC or gateway):
#: category -> (base address, stride per table). Every piece of equipment gets
#: a fixed slot ``base + index * stride`` where ``index`` counts the earlier
#: equipment of its category on that unit, so appending equipment never moves
#: an existing point. Unused addresses inside a slot are reserved and read 0.
REGIONS: dict[str, tuple[int, dict[str, int]]] = {
    "system": (0, {"coil": 16, "discrete": 16, "input": 16, "holding": 16}),
    "loop": (100, {"coil": 2, "discrete": 2, "input": 8, "holding": 2}),
    "tank": (1000, {"coil": 2, "discrete": 4, "input": 16, "holding": 4}),
    "gpu_tank": (15000, {"coil": 2, "discrete": 4, "input": 16, "holding": 4}),
    "rack_row": (20000, {"coil": 2, "discrete": 2, "input": 8, "holding": 2}),
    "cdu": (30000, {"coil": 1, "discrete": 2, "input": 4, "holding": 2}),
    "pump": (32000, {"coil": 1, "discrete": 2, "input": 2, "holding": 1}),
    "dry_cooler": (34000, {"coil": 1, "discrete": 1, "input": 4, "holding": 1}),
    "feeder": (40000, {"coil": 1, "discrete": 2, "input": 8, "holding": 1}),
    "pdu": (44000, {"coil": 1, "discrete": 2, "input": 8, "holding": 1}),
    "site_meter": (60000, {"coil": 1, "discrete": 1, "input": 12, "holding": 1}),
}
_REGION_ORDER = list(REGIONS)


def _categories(site: Site) -> dict[str, str]:
    cat = {"plc": "system", "site_meter": "site_meter"}
    cat.update({f.name: "feeder" for f in site.feeders})
    cat.update({d.name: "pdu" for d in site.pdus})
    cat.update({lp.name: "loop" for lp in site.loops})
    cat.update({p.name: "pump" for p in site.pumps})
    cat.update({d.name: "dry_cooler" for d in site.dry_coolers})
    # ASIC and GPU tanks in separate regions: either list can grow on its own.
    cat.update({t.name: "tank" if t.workload == "asic" else "gpu_tank" for t in site.tanks})
    cat.update({c.name: "cdu" for c in site.cdus})
    cat.update({r.name: "rack_row" for r in site.rack_rows})
    return cat


def _layout(points: list[Point], site: Site) -> list[Point]:
    """Final addresses: dense from 0 on a device's own unit, slotted on shared units.

    ``device`` becomes the Modbus device answering for the point: the
    equipment itself on its own unit id, the PLC (``plc``, or ``plc<unit>``
    for further PLCs) where several pieces of equipment share one.
    """
    from dataclasses import replace

    cat = _categories(site)
    owners: dict[int, list[str]] = {}
    for p in points:
        devs = owners.setdefault(p.unit_id, [])
        if p.device not in devs:
            devs.append(p.device)
    out: list[Point] = []
    slot_base: dict[tuple[int, str], int] = {}  # (unit, device) -> slot index
    seen_in_cat: dict[tuple[int, str], int] = {}
    nxt: dict[tuple[int, str, str], int] = {}  # (unit, device, table) -> next address
    for p in points:
        shared = len(owners[p.unit_id]) > 1
        if not shared:
            key = (p.unit_id, p.device, p.table)
            addr = nxt.get(key, 0)
            nxt[key] = addr + p.words
            out.append(replace(p, address=addr))
            continue
        c = cat[p.device]
        if (p.unit_id, p.device) not in slot_base:
            idx = seen_in_cat.get((p.unit_id, c), 0)
            seen_in_cat[(p.unit_id, c)] = idx + 1
            slot_base[(p.unit_id, p.device)] = idx
        idx = slot_base[(p.unit_id, p.device)]
        base, strides = REGIONS[c]
        stride = strides[p.table]
        start = base + idx * stride
        key = (p.unit_id, p.device, p.table)
        addr = nxt.get(key, start)
        nxt[key] = addr + p.words
        if addr + p.words > start + stride:
            raise AssertionError(f"slot of {p.device} overflows its {p.table} stride")
        following = _REGION_ORDER.index(c) + 1
        limit = REGIONS[_REGION_ORDER[following]][0] if following < len(_REGION_ORDER) else 65536
        if addr + p.words > limit:
            raise ValueError(
                f"too many {c.replace('_', ' ')}s on unit {p.unit_id} for its address region "
                f"({base}..{limit - 1}): spread them over more PLCs (unit ids)"
            )
        device = "plc" if p.unit_id == site.plc.unit_id else f"plc{p.unit_id}"
        out.append(replace(p, address=addr, device=device))
    return out
