"""Fault class 6: the wall clock stepped by an hour, forward and back, under a running controller.

The real run loop (:meth:`RealTimeController.run`) scans the served plant
with a clock that is the wall clock plus an offset; at seeded instants the
offset jumps by +3600 s or -3600 s (NTP correcting a clock an hour off, or
an operator). The checks:

* no scan storm and no stall: the scans in the ``window`` after each step
  are as many as in the window before it, within one;
* no heartbeat gap: the PLC never takes its safe state, and its heartbeat
  age (read in the plant) stays within two scans and a plant step;
* the historian: every step is recorded as a ``clock`` event, and every
  place where telemetry timestamps go back is such a recorded step.

Detection is the time from the step to the scan that recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from thermogate.plc.site import Site, demo_site

from .common import ClassResult, quiet
from .rig import EpisodeLog, Rig

STEP_S = 3600.0


def run_clock_steps(
    seed: int,
    steps: int = 4,
    *,
    scan_s: float = 0.5,
    window_s: float = 5.0,
    site: Site | None = None,
) -> ClassResult:
    """Fault class 6 (module docstring): ``steps`` alternating +-1 h steps."""
    site = site or demo_site()
    rng = random.Random(seed)
    res = ClassResult()
    t0 = time.monotonic()
    offset = [0.0]
    log = EpisodeLog()
    counts: dict[str, object] = {}

    async def main(db: Path) -> None:
        async with Rig(
            site, db, scan_s=scan_s, proxy=False, seed=seed, clock=lambda: time.time() + offset[0]
        ) as rig:
            assert rig.rt is not None
            rt, plc = rig.rt, rig.sp.sim.plant.plc
            if not await rig.settle(log, 60.0):
                res.fail(f"zones never left their start-up fail-safe: {sorted(rig.failsafe())}")
                return
            stop = asyncio.Event()
            loop_task = asyncio.create_task(rt.run(stop))
            worst_age = 0.0
            safe_seen = False

            async def scans_in(seconds: float) -> int:
                nonlocal worst_age, safe_seen
                n0, end = rt.scans, time.monotonic() + seconds
                while time.monotonic() < end:
                    await asyncio.sleep(0.02)
                    worst_age = max(worst_age, plc.heartbeat_age_s)
                    safe_seen |= plc.safe_state
                return rt.scans - n0

            sign = rng.choice((1.0, -1.0))
            per_step: list[tuple[int, int]] = []
            try:
                await scans_in(rng.uniform(0.5, 2.0))
                for _ in range(steps):
                    before = await scans_in(window_s)
                    offset[0] += sign * STEP_S
                    stepped_at = time.time() + offset[0]
                    after = await scans_in(window_s)
                    per_step.append((before, after))
                    res.injected += 1
                    rt.historian.flush()
                    evs = rt.historian.events(stepped_at - 1.0, None, ["clock"], limit=100)
                    ok = abs(after - before) <= 1
                    if not ok:
                        log.problems.append(
                            f"{sign:+.0f} h step: {before} scans before, {after} after"
                        )
                    if not evs:
                        ok = False
                        log.problems.append(f"{sign:+.0f} h step: no clock event recorded")
                    else:
                        res.detected(evs[0]["t"] - stepped_at)
                    res.survived += ok
                    sign = -sign
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            limit = 2 * scan_s + rig.sp.sim.plant.dt
            if safe_seen or worst_age > limit:
                res.fail(f"heartbeat gap: age up to {worst_age:.1f} s, safe state {safe_seen}")
            rt.historian.flush()
            counts.update(
                {
                    "scans_before_after_each_step": per_step,
                    "worst_heartbeat_age_s": round(worst_age, 2),
                    "plc_safe_state_seen": safe_seen,
                }
            )
            back, recorded = _timestamps_back(db)
            counts.update({"timestamps_going_back": back, "clock_events": recorded})
            if back > recorded:
                res.fail(f"telemetry goes back {back} times, {recorded} steps recorded")

    with (
        quiet("thermogate.controller.modbus_io", "thermogate.plc.transport"),
        tempfile.TemporaryDirectory(prefix="thermogate-faults-") as tmp,
    ):
        asyncio.run(main(Path(tmp) / "clock.db"))
    res.crashes = log.crashes
    for p in log.problems:
        res.fail(p)
    res.counts = counts
    res.wall_s = time.monotonic() - t0
    return res


def _timestamps_back(db: Path) -> tuple[int, int]:
    """How often telemetry's timestamps go back (in insertion order), and clock events."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ts = [r[0] for r in con.execute('SELECT "t" FROM "telemetry_0" ORDER BY rowid')]
        events = con.execute('SELECT count(*) FROM "events" WHERE "kind" = ?', ("clock",))
        recorded = int(events.fetchone()[0])
    finally:
        con.close()
    return sum(b < a for a, b in itertools.pairwise(ts)), recorded
