"""Fault class 4: the controller killed with SIGKILL at random instants, and restarted.

Two processes besides this one, as on a site: the plant (``thermogate
plant``, its PLC watchdog included) and the controller, a
:class:`~thermogate.controller.run.RealTimeController` with its historian
scanning it over Modbus/TCP. The controller is forked from a forkserver that
imported thermogate once (an interpreter start costs ~4 s of imports; a fork
a few ms), so hundreds of lives fit in minutes; each is a process of its own,
killed with SIGKILL, nothing flushed on the way out.

Each life reports, over a pipe, every scan time the historian has committed
(after ``historian.flush()``: what the historian promises is on disk) and
whether it found the last life's saved state. It is killed either while it
starts (before its first committed scan: opening the database, restoring)
or at a random instant after its first commit (in a scan, a write, a commit,
a state save). After each kill:

* ``PRAGMA integrity_check`` of the database is ``ok``;
* every scan any life reported committed is in the telemetry table (a row
  missing is a lost row), and the events and audit rows up to the last
  committed scan never decrease from one kill to the next;
* if the controller was in charge (the PLC out of its safe state), the PLC
  reaches its safe state by itself; the time from the kill to the safe state
  seen over Modbus, in plant seconds, is the detection figure and must stay
  within the PLC's heartbeat timeout (plus one plant tick and one poll);
* the next life resumes: it restores the saved state, scans and commits,
  and the PLC leaves its safe state (recovery: from restart to that).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient

from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site, demo_site_text

from ..bench import _free_port, _wait_port, stop_process
from .common import ClassResult

#: the plant's speed: a 10 s heartbeat timeout is 0.5 s of wall time
PLANT_SPEED = 20.0
#: the controller's scan (wall); 4 plant seconds at PLANT_SPEED, inside the timeout
SCAN_S = 0.2
#: a commit acknowledged every this many scans
FLUSH_EVERY = 2
#: the controller's state saved every this many scans (``run`` saves every 10 s)
SAVE_EVERY = 5
#: share of lives killed while starting, before their first commit
EARLY_KILL_SHARE = 0.2
#: longest a life runs after its first commit before the kill (s)
LIFE_MAX_S = 1.2
#: plant tick (hil.serve.TICK_S) and the safe-state poll: the slack of the timeout check
_TICK_S = 0.1
_POLL_S = 0.02


def _controller_life(db: str, port: int, conn: Connection) -> None:
    """One life of the controller (runs in a forked child until SIGKILL)."""
    import asyncio
    import logging

    from ..modbus_io import Endpoint
    from ..run import RealTimeController
    from ..runconfig import RunConfig

    # a unit lost while the plant is faster than real time is expected here, not news
    logging.getLogger("thermogate").setLevel(logging.ERROR)

    async def main() -> None:
        cfg = RunConfig(
            demo_site(), Path(db), Endpoint("tcp", "127.0.0.1", port), SCAN_S, 0.25,
            built_in_plant=False, forecast=False,
        )  # fmt: skip
        rt = RealTimeController(cfg)
        conn.send(("restored", rt.historian.load_state("controller") is not None))
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            await rt.scan_once()
            if rt.scans % FLUSH_EVERY == 0:
                t = rt.ctrl.t_last
                rt.historian.flush()
                conn.send(("committed", t))
            if rt.scans % SAVE_EVERY == 0:
                rt.save_state()  # blocks until its commit is done
                conn.send(("saved", True))
            next_t += SCAN_S
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    asyncio.run(main())


class _Plant:
    """``thermogate plant`` in its own process, and a master polling its PLC."""

    def __init__(self, tmp: Path) -> None:
        site_file = tmp / "site.toml"
        site_file.write_text(demo_site_text(), encoding="utf-8")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "thermogate.controller.cli", "plant",
                "--site", str(site_file), "--port", str(self.port),
                "--speed", str(PLANT_SPEED),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ},
        )  # fmt: skip
        _wait_port(self.port, self.proc)
        self.client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=1.0)
        self.client.connect()
        self.safe_point = build_point_map(demo_site()).by_name["plc.safe_state"]

    def safe_state(self) -> bool | None:
        """The PLC's ``plc.safe_state`` bit, None if it did not answer."""
        p = self.safe_point
        try:
            rr = self.client.read_discrete_inputs(p.address, count=1, device_id=p.unit_id)
        except Exception:
            self.client.close()
            self.client.connect()
            return None
        return None if rr.isError() else bool(rr.bits[0])

    def wait_safe(self, want: bool, limit_s: float) -> float | None:
        """Seconds until the safe-state bit reads ``want`` (None: not within ``limit_s``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            if self.safe_state() is want:
                return time.monotonic() - t0
            time.sleep(_POLL_S)
        return None

    def close(self) -> None:
        self.client.close()
        stop_process(self.proc)


def _committed_rows(db: Path, upto: float) -> tuple[set[float], int, str]:
    """Scan times in telemetry, events + audit rows up to ``upto``, integrity check."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        times = {r[0] for r in con.execute('SELECT "t" FROM "telemetry_0"')}
        others = sum(
            con.execute(f'SELECT count(*) FROM "{tb}" WHERE "t" <= ?', (upto,)).fetchone()[0]
            for tb in ("events", "audit")
        )
    finally:
        con.close()
    return times, others, integrity


class _Life:
    def __init__(self, ctx: Any, db: Path, port: int) -> None:
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_controller_life, args=(str(db), port, child), daemon=True)
        self.started = time.monotonic()
        self.proc.start()
        child.close()
        self.restored: bool | None = None
        self.saved = False
        self.committed: list[float] = []

    def drain(self, timeout: float = 0.0) -> None:
        """Take what the child reported (waiting up to ``timeout`` for the first message)."""
        try:
            while self.conn.poll(timeout):
                timeout = 0.0
                kind, value = self.conn.recv()
                if kind == "restored":
                    self.restored = value
                elif kind == "saved":
                    self.saved = True
                else:
                    self.committed.append(value)
        except (EOFError, OSError):  # the child died mid-message: what came before stands
            pass

    def wait_committed(self, limit_s: float) -> bool:
        end = time.monotonic() + limit_s
        while not self.committed and time.monotonic() < end and self.proc.is_alive():
            self.drain(0.05)
        return bool(self.committed)

    def kill(self) -> None:
        if self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, 9)
        self.proc.join(10)
        self.drain()
        self.conn.close()


def run_kill9(seed: int, runs: int) -> ClassResult:
    """Fault class 4 (module docstring): ``runs`` lives, each killed with SIGKILL."""
    res = ClassResult()
    t0 = time.monotonic()
    rng = random.Random(seed)
    timeout_s = demo_site().plc.heartbeat_timeout_s
    limit_wall = timeout_s / PLANT_SPEED + _TICK_S + 2 * _POLL_S
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["thermogate.controller.run", "thermogate.controller.modbus_io"])
    acknowledged: set[float] = set()
    others_before = 0
    early = in_charge = resumed = restored = 0
    saved_before = False
    with tempfile.TemporaryDirectory(prefix="thermogate-kill9-") as tmp:
        db = Path(tmp) / "controller.db"
        plant = _Plant(Path(tmp))
        try:
            for run in range(runs):
                life = _Life(ctx, db, plant.port)
                kill_early = run > 0 and rng.random() < EARLY_KILL_SHARE
                problems: list[str] = []
                if kill_early:
                    early += 1
                    time.sleep(rng.uniform(0.0, 0.3))
                else:
                    if not life.wait_committed(30.0):
                        problems.append(f"life {run} never committed a scan (did not resume)")
                    else:
                        resumed += 1
                        back = plant.wait_safe(False, 5.0)
                        if back is None:
                            problems.append(f"life {run}: the PLC stayed in its safe state")
                        elif run > 0:
                            res.recovered(time.monotonic() - life.started)
                        time.sleep(rng.uniform(0.0, LIFE_MAX_S))
                life.drain()
                was_safe = plant.safe_state()
                life.kill()
                killed_at = time.monotonic()
                res.injected += 1
                if life.restored:
                    restored += 1
                elif saved_before and life.restored is False:
                    problems.append(f"life {run} did not find the state saved before it")
                saved_before = saved_before or life.saved
                if was_safe is False:  # the controller was in charge: the PLC must take over
                    in_charge += 1
                    took = plant.wait_safe(True, 5 * limit_wall + 2.0)
                    if took is None:
                        problems.append(f"kill {run}: the PLC never took its safe state")
                    else:
                        took = time.monotonic() - killed_at
                        res.detected(took * PLANT_SPEED)
                        if took > limit_wall:
                            problems.append(
                                f"kill {run}: safe state after {took * PLANT_SPEED:.1f} plant s "
                                f"(timeout {timeout_s:g} s)"
                            )
                acknowledged.update(life.committed)
                if db.exists():
                    upto = max(acknowledged, default=0.0)
                    times, others, integrity = _committed_rows(db, upto)
                    lost = len(acknowledged - times)
                    if integrity != "ok":
                        problems.append(f"kill {run}: integrity_check says {integrity[:100]}")
                    if lost:
                        res.lost_rows += lost
                        problems.append(f"kill {run}: {lost} committed scan(s) missing")
                    if others < others_before:
                        res.lost_rows += others_before - others
                        problems.append(
                            f"kill {run}: events/audit rows went {others_before} -> {others}"
                        )
                    others_before = others
                if problems:
                    for p in problems:
                        res.fail(p)
                else:
                    res.survived += 1
        finally:
            plant.close()
    res.counts = {
        "killed_while_starting": early,
        "killed_in_charge": in_charge,
        "lives_resumed": resumed,
        "lives_restored_state": restored,
        "committed_scans_checked": len(acknowledged),
        "integrity_errors": sum("integrity" in f for f in res.failures),
        "plant_speed": PLANT_SPEED,
        "heartbeat_timeout_s": timeout_s,
    }
    res.wall_s = time.monotonic() - t0
    return res
