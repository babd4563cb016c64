"""Fault class 5: sensor faults (stuck, drift, spike, NaN, out of range) in the served plant.

The plant's own sensor model (``hil/sensors.py``) corrupts one tank's fluid
temperature sensor A while the real controller scans it over Modbus; the
plant runs ``speed`` times faster than real time and the controller lives on
its clock, so the estimator's minutes-long windows (stuck, drift) pass in
seconds. Kinds, one episode each per round, a seeded tank each time:

* ``stuck``: the reading frozen where it was;
* ``drift``: the reading walking down at 60 K/h;
* ``spike``: +25 K on 20 % of the samples;
* ``nan``: NaN (the i16 register's failure sentinel on the wire);
* ``out_of_range``: 90 K below the truth, under the plausible -20 degC.

A low reading is used for drift and range on purpose: the PLC's interlock
takes the hotter of the two sensors, and a reading high enough to be
implausible would (rightly) trip the tank at the PLC, which is another
class's business.

Each episode holds the fault until the controller has flagged the sensor
(its quality not GOOD, and a ``sensor ... flagged`` alarm in the event log)
and ``hold_after_s`` plant seconds more, at most ``max_hold_s``; meanwhile
no actuator of the tank or its loop may be commanded to its min or max
unless it already sat there before the fault. Detection is the plant time
from the injection to the flag; recovery the plant time from clearing the
fault to the quality GOOD again (reported, not required: some flags latch
until the reading proves itself).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from thermogate.plc.points import GOOD
from thermogate.plc.site import Site, demo_site

from ..core import OverrideActuator, Principal, ReturnToAuto
from .common import ClassResult, quiet
from .rig import EpisodeLog, Rig

_WHO = Principal("faults", "engineer", "cli")
KINDS = ("stuck", "drift", "spike", "nan", "out_of_range")
_PARAMS: dict[str, tuple[str, dict[str, float]]] = {
    "stuck": ("stuck", {}),
    "drift": ("drift", {"rate_per_h": -60.0}),
    "spike": ("spike", {"p": 0.2, "magnitude": 25.0}),
    "nan": ("nan", {}),
    "out_of_range": ("spike", {"p": 1.0, "magnitude": -90.0}),
}


def _actuators(rig: Rig, tank: str, but: str) -> list[tuple[str, float | None, float | None]]:
    """The tank's analog commands (what its fluid temperature feeds), with their limits.

    The loop's pumps and fans answer the loop's supply temperature, and reach their
    limits in ordinary regulation (standby pump off, fans at minimum at night)."""
    assert rig.rt is not None
    return [
        (p.name, p.min, p.max)
        for p in rig.rt.pmap.points
        if p.writable
        and p.table == "holding"
        and p.name.rsplit(".", 1)[0] == tank
        and p.name != but
    ]


class _Commands:
    """The last value the controller commanded to each point (writes go out on change)."""

    def __init__(self, rig: Rig) -> None:
        # What each command register holds now (read back, verified): a steady
        # command goes out again only at its refresh, maybe in mid-episode, and
        # is no new limit then.
        assert rig.rt is not None
        ctrl = rig.rt.ctrl
        self.last: dict[str, float] = {
            p.name: float(ctrl.values[i])
            for i, p in enumerate(rig.rt.pmap.points)
            if p.writable and p.table == "holding" and ctrl.quality[i] == GOOD
        }

    def take(self, rig: Rig) -> None:
        for o in rig.outcomes:
            if o.ok:
                self.last[o.point] = o.value

    def at_limit(self, acts: list[tuple[str, float | None, float | None]]) -> set[str]:
        out = set()
        for name, lo, hi in acts:
            v = self.last.get(name)
            if v is not None and ((lo is not None and v <= lo) or (hi is not None and v >= hi)):
                out.add(name)
        return out


async def _episode(
    rig: Rig,
    kind: str,
    tank: str,
    res: ClassResult,
    log: EpisodeLog,
    cmds: _Commands,
    hold_after_s: float,
    max_hold_s: float,
) -> bool:
    assert rig.rt is not None
    rt, sensors = rig.rt, rig.sp.sim.plant.sensors
    point = f"{tank}.fluid_temp"
    pos = rt.pmap.position(point)
    budget = f"{tank}.power_budget_kw"
    acts = _actuators(rig, tank, but=budget if kind == "stuck" else "")
    before = cmds.at_limit(acts)
    problems: list[str] = []
    t_wall = rig.clock()
    fault, params = _PARAMS[kind]
    t0 = rig.sp.sim_time()
    sensors.inject(point, fault, params)
    if kind == "stuck":  # a frozen reading shows only when the plant moves: move it
        rated = next(t.rated_kw for t in rig.site.tanks if t.name == tank)
        why = "fault campaign: move the plant so a stuck sensor can show"
        rt.command(OverrideActuator(budget, round(0.3 * rated, 1), max_hold_s * 2, why), _WHO)
    seen = None
    while True:
        await rig.scan(log)
        cmds.take(rig)
        now = rig.sp.sim_time()
        if seen is None and rt.ctrl.quality[pos] != GOOD:
            seen = now
            res.detected(seen - t0)
            by_kind = res.counts.setdefault("worst_detection_s_by_kind", {})
            by_kind[kind] = round(max(by_kind.get(kind, 0.0), seen - t0), 1)
        driven = cmds.at_limit(acts) - before
        if driven:
            problems.append(f"{kind} on {point} drove {sorted(driven)} to a limit")
            break
        if (seen is not None and now - seen >= hold_after_s) or now - t0 >= max_hold_s:
            break
    sensors.clear(point)
    if kind == "stuck":
        rt.command(ReturnToAuto(budget, "fault campaign: episode over"), _WHO)
    if seen is None:
        problems.append(f"{kind} on {point} not flagged within {max_hold_s:g} plant s")
    else:
        rt.historian.flush()
        alarms = rt.historian.events(t_wall, None, ["alarm"], limit=10_000)
        if not any(e["source"] == point and "flagged" in e["message"] for e in alarms):
            problems.append(f"{kind} on {point}: flagged, but no alarm in the event log")
        t1 = rig.sp.sim_time()
        while rig.sp.sim_time() - t1 < max_hold_s:
            await rig.scan(log)
            cmds.take(rig)
            if rt.ctrl.quality[pos] == GOOD:
                res.recovered(rig.sp.sim_time() - t1)
                break
        else:
            res.counts["not_good_again"] = res.counts.get("not_good_again", 0) + 1
    log.problems.extend(problems)
    return not problems


def run_sensor_faults(
    seed: int,
    *,
    kinds: Sequence[str] = KINDS,
    rounds: int = 1,
    speed: float = 10.0,
    hold_after_s: float = 30.0,
    max_hold_s: float = 600.0,
    site: Site | None = None,
) -> ClassResult:
    """Fault class 5 (module docstring) in its own event loop; times in plant seconds."""
    site = site or demo_site()
    rng = random.Random(seed)
    res = ClassResult()
    res.counts["not_good_again"] = 0
    t0 = time.monotonic()
    log = EpisodeLog()

    async def main(db: Path) -> None:
        with quiet("thermogate.controller.modbus_io", "thermogate.plc.transport"):
            async with Rig(
                site, db, scan_s=site.scan_interval_s, proxy=False, seed=seed, speed=speed
            ) as rig:
                if not await rig.settle(log, 60.0):
                    res.fail(f"zones never left their start-up fail-safe: {sorted(rig.failsafe())}")
                    return
                cmds = _Commands(rig)
                for _ in range(10):  # what the controller commands at rest
                    await rig.scan(log)
                    cmds.take(rig)
                tanks = [t.name for t in site.tanks]
                for _ in range(rounds):
                    for kind in kinds:
                        tank = rng.choice(tanks)
                        res.injected += 1
                        res.survived += await _episode(
                            rig, kind, tank, res, log, cmds, hold_after_s, max_hold_s
                        )

    with tempfile.TemporaryDirectory(prefix="thermogate-faults-") as tmp:
        asyncio.run(main(Path(tmp) / "sensors.db"))
    res.crashes = log.crashes
    for p in log.problems:
        res.fail(p)
    res.counts.update(
        {"kinds": list(kinds), "plant_speed": speed, "scans": log.scans, "times_in": "plant s"}
    )
    res.wall_s = time.monotonic() - t0
    return res
