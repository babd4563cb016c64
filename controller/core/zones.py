"""Fail-safe zones: a tank, a loop or a CDU whose inputs cannot be trusted.

A zone needs its inputs to be controlled: a tank its fluid temperature (either
of its two sensors is enough), valve position and power; a loop its supply
temperature, flow and ΔP; a CDU its supply temperature and valve position.
While any needed input is BAD (stale, implausible, never read) the zone is in
fail-safe: it takes its safe state whatever regulation or the planner wanted —
cooling to full, mining off, GPUs capped — raises an event, and leaves it, with
another event, once every input is usable again. Zones start in fail-safe
until every input was read once; the zones that leave that start-up state in
one scan are one event (``18 zones ready: ...``), not one "left" each with no
"entered" before it. A zone still in it after ``STARTUP_SCANS`` scans gets its
own fail-safe event naming its bad inputs (a tank the PLC does not serve yet
was otherwise in fail-safe with nothing in the event log), and a "left" one
when it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thermogate.plc.points import BAD

from .alarms import Alarms
from .topology import Topology
from .view import Cmd, Cmds

SAFE_GPU_CAP_FRAC = 0.5  # a GPU tank in fail-safe runs at most at this share of its rating
SAFE_ROW_CAP_W = 350.0  # per-GPU cap of the rows behind a CDU in fail-safe


#: the reason of a zone that has not had its inputs read since start
STARTING = "starting: inputs not read yet"
#: scans a zone may take to leave its start-up fail-safe before it is an event
STARTUP_SCANS = 3


def failsafe_key(zone: str) -> str:
    """The alarm of a zone in fail-safe (``failsafe:tank01``)."""
    return f"failsafe:{zone}"


@dataclass(slots=True)
class Zone:
    name: str
    inputs: list[int]  # point positions it needs
    #: a tank's two fluid sensors: one good one is enough
    pair: tuple[int, int] | None = None
    failsafe: bool = True
    reason: str = STARTING
    #: left the start-up fail-safe once (its inputs all read since start)
    started: bool = False


class FailSafeZones:
    """See the module docstring."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        ix = topo.ix
        self.zones: dict[str, Zone] = {}
        for tp in ix.tanks:
            self.zones[tp.name] = Zone(
                tp.name,
                [tp.fluid_temp, tp.fluid_temp_b, tp.valve_pos, tp.power_kw],
                (tp.fluid_temp, tp.fluid_temp_b),
            )
        for lpp in ix.loops:
            self.zones[lpp.name] = Zone(lpp.name, [lpp.supply_temp, lpp.flow, lpp.dp])
        for cp in ix.cdus:
            self.zones[cp.name] = Zone(cp.name, [cp.supply_temp, cp.valve_pos])
        self._scans = 0  # counted up to STARTUP_SCANS
        #: every zone's inputs in one array: their quality is read in one go
        self._inputs = np.array([i for z in self.zones.values() for i in z.inputs], dtype=np.intp)

    def in_failsafe(self) -> list[str]:
        return sorted(n for n, z in self.zones.items() if z.failsafe)

    def update(self, t: float, quality: np.ndarray, alarms: Alarms) -> None:
        bad_inputs = quality[self._inputs] == BAD
        if not np.count_nonzero(bad_inputs) and not any(z.failsafe for z in self.zones.values()):
            return  # every input usable and no zone to leave fail-safe: nothing changes
        name_of = self.topo.pmap.name_of
        bad_at = iter(bad_inputs.tolist())  # zone by zone, in order
        ready: list[str] = []  # zones out of their start-up fail-safe this scan
        if self._scans < STARTUP_SCANS:
            self._scans += 1
        overdue = self._scans >= STARTUP_SCANS  # start-up is over: say who is still in it
        for z in self.zones.values():
            bad = [i for i in z.inputs if next(bad_at)]
            if z.pair is not None:
                a, b = z.pair
                if (a in bad) != (b in bad):  # one good fluid sensor of two will do
                    bad = [i for i in bad if i not in z.pair]
            names = ", ".join(name_of(i) for i in bad)
            if bad and not z.failsafe:
                z.failsafe, z.reason = True, f"bad inputs: {names}"
                alarms.event(t, "failsafe", z.name, f"zone {z.name} in fail-safe: {z.reason}", 800)
            elif not bad and z.failsafe:
                if not z.started:
                    ready.append(z.name)
                else:
                    alarms.event(t, "restore", z.name, f"zone {z.name} left fail-safe", 400)
                z.failsafe, z.reason, z.started = False, "", True
            elif bad:
                z.reason = f"bad inputs: {names}"
                if overdue and not z.started:
                    z.started = True
                    alarms.event(
                        t, "failsafe", z.name, f"zone {z.name} in fail-safe: {z.reason}", 800
                    )
            # and an alarm for SCADA's list, to acknowledge (journalled above)
            alarms.alarm(
                t,
                failsafe_key(z.name),
                z.failsafe,
                f"zone {z.name} in fail-safe: {z.reason}",
                800,
                journal=False,
            )
        if ready:
            n = len(ready)
            shown = ", ".join(ready[:5]) + (f" and {n - 5} more" if n > 5 else "")
            what = f"{n} zones ready" if n > 1 else f"zone {ready[0]} ready"
            alarms.event(
                t,
                "restore",
                "zones",
                f"{what}: inputs read, out of start-up fail-safe ({shown})",
                300,
            )

    def holds(self, point: int) -> str | None:
        """Why a zone in fail-safe holds ``point`` at its safe value now (None: free)."""
        probe: Cmds = {}
        self.apply(probe)
        cmd = probe.get(point)
        return None if cmd is None else cmd.why

    def apply(self, cmds: Cmds) -> None:
        """Zones in fail-safe take their safe state, whatever regulation wanted."""
        site, ix = self.topo.site, self.topo.ix
        for t_, tp in zip(site.tanks, ix.tanks, strict=True):
            z = self.zones[t_.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                cmds[tp.valve_cmd] = Cmd(100.0, why)
                if t_.workload_class == "mining":
                    cmds[tp.enable] = Cmd(0.0, why)
                    cmds[tp.power_budget_kw] = Cmd(0.0, why)
                else:
                    cap = SAFE_GPU_CAP_FRAC * t_.rated_kw
                    cur = cmds[tp.power_budget_kw].value if tp.power_budget_kw in cmds else cap
                    cmds[tp.power_budget_kw] = Cmd(min(cur, round(cap, 1)), why)
        for lp in site.loops:
            z = self.zones[lp.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                for d in lp.dry_coolers:
                    cmds[ix.dry_cooler[d.name].fan_cmd] = Cmd(100.0, why)
                for p in lp.pumps:
                    pp = ix.pump[p.name]
                    cmds[pp.run_cmd] = Cmd(1.0, why)
                    cmds[pp.speed_cmd] = Cmd(100.0, why)
        for c, cp in zip(site.cdus, ix.cdus, strict=True):
            z = self.zones[c.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                cmds[cp.valve_cmd] = Cmd(100.0, why)
                for r, rp in zip(site.rack_rows, ix.rows, strict=True):
                    if r.cdu == c.name:
                        cap_w = rp.gpu_power_cap_w
                        cur = cmds[cap_w].value if cap_w in cmds else SAFE_ROW_CAP_W
                        cmds[cap_w] = Cmd(min(cur, SAFE_ROW_CAP_W), why)
