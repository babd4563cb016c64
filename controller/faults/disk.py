"""Fault class 7: the historian's disk stops taking writes, then takes them again.

The process's file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored) is lowered
to one page: from then on every write the historian's SQLite makes past its
first page fails in the kernel (EFBIG; SQLite reports a disk I/O error), as
on a full or read-only filesystem, without mounting anything on a shared
machine. The plant in this process writes no file; stdout and stderr are not
regular files. After a seeded 2-8 s the limit is lifted.

The real run loop (:meth:`RealTimeController.run`) scans the served plant
throughout. The checks of each outage:

* control goes on: the loop does not end, it scans as often as before (the
  scans in the outage within two of its length / the scan period), and the
  PLC never takes its safe state;
* an alarm says so: ``historian`` among the scan's alarms while it lasts, an
  ``alarm`` event from the historian and a ``restore`` event after it;
* telemetry resumes: the historian commits again, and at the end every scan
  the loop recorded, before, during or after the outages, is a telemetry row
  (``lost_rows`` counts those that are not), ``PRAGMA integrity_check`` ok.

Detection: from the limit to the alarm in the scan's status; recovery: from
lifting it to the historian committing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from thermogate.plc.site import Site, demo_site

from .common import ClassResult, quiet
from .rig import EpisodeLog, Rig

#: the file-size limit of an outage: one page, so every commit fails
_OUTAGE_FSIZE = 4096
_RECOVERY_LIMIT_S = 30.0


@contextlib.contextmanager
def disk_refuses_writes() -> Iterator[None]:
    """Writes past the first page of any file fail in this process meanwhile (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (_OUTAGE_FSIZE, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def run_disk_outages(
    seed: int,
    outages: int = 3,
    *,
    seconds: tuple[float, float] = (2.0, 8.0),
    scan_s: float = 0.5,
    site: Site | None = None,
) -> ClassResult:
    """Fault class 7 (module docstring)."""
    site = site or demo_site()
    rng = random.Random(seed)
    res = ClassResult()
    t0 = time.monotonic()
    log = EpisodeLog()
    counts: dict[str, Any] = {}

    async def main(db: Path) -> None:
        async with Rig(site, db, scan_s=scan_s, proxy=False, seed=seed) as rig:
            assert rig.rt is not None
            rt, plc = rig.rt, rig.sp.sim.plant.plc
            if not await rig.settle(log, 60.0):
                res.fail(f"zones never left their start-up fail-safe: {sorted(rig.failsafe())}")
                return
            recorded: list[float] = []
            guarded = rt.historian.record_scan

            def record_scan(t: float, *args: Any) -> None:  # every scan the loop records
                recorded.append(t)
                guarded(t, *args)

            rt.historian.record_scan = record_scan  # type: ignore[attr-defined]  # shadows it
            stop = asyncio.Event()
            loop_task = asyncio.create_task(rt.run(stop))
            safe_seen = False
            per_outage: list[dict[str, Any]] = []
            try:
                await asyncio.sleep(2 * scan_s)
                for _ in range(outages):
                    length = rng.uniform(*seconds)
                    res.injected += 1
                    problems: list[str] = []
                    n0, since, wall0 = rt.scans, time.monotonic(), rt.clock()
                    seen = None
                    with disk_refuses_writes():
                        while time.monotonic() - since < length and not loop_task.done():
                            await asyncio.sleep(0.02)
                            safe_seen |= plc.safe_state
                            if seen is None and "historian" in rt.last.get("alarms", []):  # type: ignore[operator]
                                seen = time.monotonic() - since
                    scans = rt.scans - n0
                    lifted = time.monotonic()
                    back = None
                    while time.monotonic() - lifted < _RECOVERY_LIMIT_S and not loop_task.done():
                        await asyncio.sleep(0.02)
                        safe_seen |= plc.safe_state
                        if rt.historian.down is None and not rt.historian.failing:
                            back = time.monotonic() - lifted
                            break
                    if loop_task.done():
                        res.crashes += 1
                        problems.append(f"the run loop ended: {loop_task.exception()!r}")
                        log.problems.extend(problems)
                        break
                    if abs(scans - length / scan_s) > 2:
                        problems.append(f"{scans} scans in a {length:.1f} s outage")
                    if seen is None:
                        problems.append("no historian alarm in the scans' status")
                    else:
                        res.detected(seen)
                    if back is None:
                        problems.append(f"historian not committing {_RECOVERY_LIMIT_S:g} s after")
                    else:
                        res.recovered(back)
                        rt.historian.flush()
                        evs = rt.historian.events(wall0 - 1.0, None, ["alarm", "restore"])
                        kinds = [e["kind"] for e in evs if e["source"] == "historian"]
                        if kinds[:1] != ["alarm"] or "restore" not in kinds:
                            problems.append(f"historian events {kinds}, not an alarm and a clear")
                    per_outage.append({"seconds": round(length, 1), "scans": scans})
                    res.survived += not problems
                    log.problems.extend(problems)
                    await asyncio.sleep(2 * scan_s)
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loop_task
            rt.historian.flush()
            if safe_seen:
                res.fail("the PLC took its safe state during an outage (heartbeat gap)")
            rows, integrity = _rows(db)
            lost = len(set(recorded) - rows)
            res.lost_rows += lost
            if lost:
                res.fail(f"{lost} of {len(recorded)} recorded scans are not in telemetry")
            if integrity != "ok":
                res.fail(f"integrity_check: {integrity[:100]}")
            counts.update(
                {
                    "outages": per_outage,
                    "scans_recorded": len(recorded),
                    "telemetry_rows": len(rows),
                    "integrity": integrity,
                    "plc_safe_state_seen": safe_seen,
                }
            )

    with (
        quiet(
            "thermogate.controller.modbus_io",
            "thermogate.plc.transport",
            "thermogate.controller.recorder",
            "thermogate.controller.run",
        ),
        tempfile.TemporaryDirectory(prefix="thermogate-faults-") as tmp,
    ):
        asyncio.run(main(Path(tmp) / "disk.db"))
    res.crashes += log.crashes
    for p in log.problems:
        res.fail(p)
    res.counts = counts
    res.wall_s = time.monotonic() - t0
    return res


def _rows(db: Path) -> tuple[set[float], str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = {r[0] for r in con.execute('SELECT "t" FROM "telemetry_0"')}
    finally:
        con.close()
    return rows, integrity
