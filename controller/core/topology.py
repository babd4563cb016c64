"""The site as the scan sees it: loads, power constraints, what sits on each loop.

Derived once from the site description and the point index, never changed by
a scan: every part of the core reads its wiring from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from thermogate.plc.equipment import Cdu, ControlLoop, Site, Tank
from thermogate.plc.pointmap import PointMap

#: Workload classes in shedding order: mining first, then training, then inference.
CLASS_ORDER = ("mining", "training", "inference")


@dataclass(frozen=True, slots=True)
class Load:
    """A tank or a rack row: something with a power budget and an enable."""

    name: str
    kind: str  # "tank" | "row"
    workload: str  # asic | gpu
    wclass: str  # mining | training | inference
    rated_kw: float
    loop: int  # position of its cooling loop in site.loops
    pdu: int
    feeder: int
    power: int  # point positions: measured power ...
    budget: int  # ... budget (tank: power_budget_kw; row: gpu_power_cap_w) ...
    enable: int  # ... workload enable ...
    interlock: int  # ... and the PLC's latched interlock
    idle_kw: float = 0.0  # drawn with every GPU idle (GPU loads; 0 for miners)
    #: a rack row's per-GPU power cap range (W, ``RackRow.cap_range_w``)
    cap_w: tuple[float, float] = (200.0, 700.0)
    #: the least it draws while it keeps working (GPU tanks: idle; rack rows: busy
    #: at their lowest cap, ``RackRow.floor_kw``; miners: 0, they switch off)
    floor_kw: float = 0.0


@dataclass(frozen=True, slots=True)
class PowerConstraint:
    """A meter whose reading must stay inside a limit, and the loads under it."""

    name: str  # "site import", "feeder f1", "PDU pdu3"
    meter: int  # position of the meter's power_kw
    limit_kw: float | None  # continuous limit; None: the grid's import limit
    loads: tuple[Load, ...]
    severity: int


class Topology:
    """See the module docstring."""

    def __init__(self, site: Site, pmap: PointMap) -> None:
        self.site = site
        self.pmap = pmap
        self.ix = ix = pmap.index
        loops = [lp.name for lp in site.loops]
        pdus = [d.name for d in site.pdus]
        feeders = [f.name for f in site.feeders]
        cdu_loop = {c.name: c.loop for c in site.cdus}
        loads: list[Load] = []
        for t, tp in zip(site.tanks, ix.tanks, strict=True):
            pdu = pdus.index(t.pdu)
            feeder = feeders.index(site.pdus[pdu].feeder)
            loads.append(
                Load(
                    t.name,
                    "tank",
                    t.workload,
                    t.workload_class,
                    t.rated_kw,
                    loops.index(t.loop),
                    pdu,
                    feeder,
                    tp.power_kw,
                    tp.power_budget_kw,
                    tp.enable,
                    tp.interlock,
                    t.units * t.unit_idle_kw if t.workload == "gpu" else 0.0,
                    floor_kw=t.units * t.unit_idle_kw if t.workload == "gpu" else 0.0,
                )
            )
        for r, rp in zip(site.rack_rows, ix.rows, strict=True):
            pdu = pdus.index(r.pdu)
            feeder = feeders.index(site.pdus[pdu].feeder)
            loads.append(
                Load(
                    r.name,
                    "row",
                    "gpu",
                    r.workload_class,
                    r.rated_kw,
                    loops.index(cdu_loop[r.cdu]),
                    pdu,
                    feeder,
                    rp.power_kw,
                    rp.gpu_power_cap_w,
                    rp.enable,
                    rp.interlock,
                    r.nodes * r.node_idle_kw,
                    r.cap_range_w,
                    r.floor_kw,
                )
            )
        self.loads: tuple[Load, ...] = tuple(loads)
        self.load: dict[str, Load] = {ld.name: ld for ld in loads}
        #: the load whose budget a point is (for overrides of a budget)
        self.load_of_budget: dict[int, Load] = {ld.budget: ld for ld in loads}
        #: position of the site's import meter (power_kw)
        self.site_meter: int = ix.site.power_kw
        constraints = [PowerConstraint("site import", self.site_meter, None, self.loads, 800)]
        for j, f in enumerate(site.feeders):
            constraints.append(
                PowerConstraint(
                    f"feeder {f.name}",
                    ix.feeders[j].power_kw,
                    f.continuous_kw,
                    tuple(ld for ld in loads if ld.feeder == j),
                    700,
                )
            )
        for j, d in enumerate(site.pdus):
            constraints.append(
                PowerConstraint(
                    f"PDU {d.name}",
                    ix.pdus[j].power_kw,
                    d.continuous_kw,
                    tuple(ld for ld in loads if ld.pdu == j),
                    700,
                )
            )
        self.constraints: tuple[PowerConstraint, ...] = tuple(constraints)
        self.loop_tanks: dict[str, list[Tank]] = {
            lp.name: [t for t in site.tanks if t.loop == lp.name] for lp in site.loops
        }
        self.loop_cdus: dict[str, list[Cdu]] = {
            lp.name: [c for c in site.cdus if c.loop == lp.name] for lp in site.loops
        }
        #: valve positions on each loop: the most open one drives trim & respond
        self.loop_valves: dict[str, list[int]] = {
            lp.name: [ix.tank[t.name].valve_pos for t in self.loop_tanks[lp.name]]
            + [ix.cdu[c.name].valve_pos for c in self.loop_cdus[lp.name]]
            for lp in site.loops
        }
        #: every command's read-back (a valve's position, a drive's speed); a
        #: command that is its own read-back (a budget) is not listed
        self.readback: dict[int, int] = {}
        for tp in ix.tanks:
            self.readback[tp.valve_cmd] = tp.valve_pos
        for cp in ix.cdus:
            self.readback[cp.valve_cmd] = cp.valve_pos
        for dp in ix.dry_coolers:
            self.readback[dp.fan_cmd] = dp.fan_speed
        for pp in ix.pumps:
            self.readback[pp.speed_cmd] = pp.speed
        self._pump_of_speed = {pp.speed_cmd: pp.name for pp in ix.pumps}

    def is_pump_loop(self, c: ControlLoop) -> bool:
        """A loop driving pump speeds: duty/standby pumps hold its ΔP."""
        return all(self.pmap.position(a) in self._pump_of_speed for a in c.actuators)

    def loop_pos(self, name: str) -> int:
        return [lp.name for lp in self.site.loops].index(name)
