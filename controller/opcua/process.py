"""The OPC UA face in a process of its own: no client can take time from a scan.

A thread is not enough: asyncua's work per monitored item is Python, and with
10,000 items one scan's changes cost the server ~0.3 s of interpreter time that
a thread would take from the scan under the GIL (``thermogate bench opcua``
measured a scan p99 2.3x its baseline that way). In a process of its own the
server runs beside the scan, on the other core.

Two pipes join the run loop to the server process:

* **snapshots**, run loop -> server: ``publish`` only stores the newest
  snapshot and wakes a sender thread, which pickles and sends it (latest wins:
  a server that falls behind skips to the newest scan, and a full pipe blocks
  the sender thread, never the scan);
* **commands**, server -> run loop and back: a method call or write in the
  server becomes ``("cmd", id, command, principal, deadline)``; ``serve`` (the
  run loop, between two scans) gives each one waiting on the command path and
  sends its ``CommandResult`` back, or, past its deadline (the client was told
  it timed out), answers it withdrawn and audits that: never applied later,
  however long the run loop was frozen. Many commands may be in flight.

The server process is ``OpcUaFace`` (its own thread and event loop) fed by a
receiver thread; it ends when the snapshot pipe closes, so it never outlives
the controller.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.plc.equipment import Site
from thermogate.plc.errors import ThermogateError
from thermogate.plc.points import BAD

from ..core.commands import Command, CommandResult, Principal
from ..signals import FLAG_STALE, Audit
from .bridge import not_taken
from .security import OpcUaSecurity
from .snapshot import Snapshot

log = logging.getLogger(__name__)
START_TIMEOUT_S = 180.0  # asyncua's start-up of a 10,000-point space takes ~10 s
#: how long SCADA sees ServerState Shutdown before the server stops (a publishing
#: cycle of a client at 1 s carries it)
SHUTDOWN_NOTICE_S = 1.0


class OpcUaProcess:
    """The run loop's side of the OPC UA server process (a ``run.Face``)."""

    def __init__(
        self,
        site: Site,
        sec: OpcUaSecurity,
        db: Path | str,
        history: bool = True,
        naive: bool = False,
        command_timeout_s: float = 10.0,
    ) -> None:
        """``naive``: the server applies snapshots point by point through asyncua's
        public write (``bench opcua``'s baseline). ``command_timeout_s``: how long
        a client's command waits for the run loop before it is withdrawn."""
        self.site, self.sec, self.db, self.history = site, sec, Path(db), history
        self.naive = naive
        self.command_timeout_s = command_timeout_s
        self.endpoint = sec.endpoint
        self._proc: mp.process.BaseProcess | None = None
        self._snaps: Connection | None = None
        self._cmds: Connection | None = None
        self._latest: Snapshot | None = None
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None
        self.sent = 0
        self.applied = 0  # reported by the server process when it stops
        #: (scan time, apply started, changes flushed) of its latest applies, from the
        #: server process when it stops
        self.timings: list[tuple[float, float, float]] = []
        #: (generation, ms) of the server's latest collections between snapshots
        self.gc_runs: list[tuple[int, float]] = []
        #: where a command withdrawn past its deadline, or refused before it was
        #: one (an argument of the wrong type), is audited (the run's audit)
        self.audit: Callable[[Audit], None] | None = None

    @property
    def pid(self) -> int | None:
        """The server process's id once started (``bench opcua`` counts its CPU)."""
        return None if self._proc is None else self._proc.pid

    def start(self, timeout_s: float = START_TIMEOUT_S) -> list[str]:
        """Start the server process; the lines describing its endpoint."""
        ctx = mp.get_context("spawn")  # a clean interpreter: no threads or loops inherited
        snaps_child, self._snaps = ctx.Pipe(duplex=False)
        self._cmds, cmds_child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_serve,
            args=(
                self.site,
                self.sec,
                str(self.db),
                self.history,
                self.naive,
                self.command_timeout_s,
                snaps_child,
                cmds_child,
            ),
            name="thermogate-opcua",
            daemon=True,
        )
        self._proc.start()
        snaps_child.close()
        cmds_child.close()
        if not self._cmds.poll(timeout_s):
            self.stop()
            raise ThermogateError(f"the OPC UA server did not start within {timeout_s:g} s")
        try:
            kind, payload = self._cmds.recv()
        except EOFError:
            kind, payload = "error", "its process ended"
        if kind != "ready":
            self.stop()
            said = str(payload)  # the face's own error says it did not start already
            if not said.startswith("the OPC UA server"):
                said = f"the OPC UA server did not start: {said}"
            raise ThermogateError(said)
        self._sender = threading.Thread(target=self._send, name="opcua-publish", daemon=True)
        self._sender.start()
        return list(payload)

    def publish(self, snapshot: Snapshot) -> None:
        """Hand a scan's snapshot over (O(1), never blocks; the latest wins)."""
        self._latest = snapshot
        self._wake.set()

    def serve(self, give: Callable[[Command, Principal], CommandResult]) -> int:
        """Between two scans: give the commands clients sent, answer each."""
        conn, n = self._cmds, 0
        if conn is None:
            return 0
        try:
            while conn.poll(0):
                msg = conn.recv()
                if msg[0] == "applied":
                    self.applied = msg[1]
                    continue
                if msg[0] == "audit":  # a refusal that never became a command
                    if self.audit is not None:
                        self.audit(msg[1])
                    continue
                _, cid, cmd, by, deadline = msg
                res: CommandResult | str
                if time.monotonic() > deadline:  # its client was told: never given late
                    res = not_taken(cmd, by, None)
                    if self.audit is not None:
                        self.audit(res.audit)
                else:
                    try:
                        res = give(cmd, by)
                    except Exception as exc:  # a failed command must never stop the scan
                        log.exception("OPC UA command %s from %s failed", cmd, by.origin)
                        res = f"the controller failed on it ({type(exc).__name__}: {exc})"
                conn.send(("result", cid, res))
                n += 1
        except (EOFError, OSError, BrokenPipeError):
            log.error("the OPC UA server process is gone: commands over OPC UA are not served")
            self._cmds = None
        return n

    def stop(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout_s)
        if self._snaps is not None:
            self._snaps.close()  # the server process ends when its pipe closes
        if self._proc is not None:
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5.0)
        if self._cmds is not None:
            with contextlib.suppress(EOFError, OSError):
                while self._cmds.poll(0):
                    msg = self._cmds.recv()
                    if msg[0] == "applied":
                        self.applied = msg[1]
                    elif msg[0] == "timings":
                        self.timings = msg[1]
                    elif msg[0] == "gc":
                        self.gc_runs = msg[1]
            self._cmds.close()

    def _send(self) -> None:
        """The sender thread: the newest snapshot to the server process."""
        assert self._snaps is not None
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            snap, self._latest = self._latest, None
            if snap is None:
                continue
            try:
                self._snaps.send(dataclasses.replace(snap, status=dict(snap.status)))
                self.sent += 1
            except (OSError, BrokenPipeError, ValueError):
                log.error("the OPC UA server process is gone: it shows no more scans")
                return


# -- the server process ------------------------------------------------------------------
#: scans missed before the server shows the controller's values stale, and at least
STALE_SCANS, STALE_MIN_S = 5, 5.0
#: the longest gap between two snapshots taken as the scan interval
STALE_MAX_INTERVAL_S = 60.0


def stale_after(interval_s: float) -> float:
    """Seconds without a snapshot after which the last one is shown stale."""
    return max(STALE_MIN_S, STALE_SCANS * interval_s)


def stale(snap: Snapshot) -> Snapshot:
    """``snap`` with every point Bad and stale (``BadCommunicationError``): what
    SCADA must see of values no scan has refreshed."""
    return dataclasses.replace(
        snap,
        quality=np.full_like(snap.quality, BAD),
        flags=(snap.flags | FLAG_STALE).astype(snap.flags.dtype),
        status=dict(snap.status),
    )


def _serve(
    site: Site,
    sec: OpcUaSecurity,
    db: str,
    history: bool,
    naive: bool,
    command_timeout_s: float,
    snaps: Connection,
    cmds: Connection,
) -> None:
    # Ctrl-C reaches the whole foreground process group: the controller stops this
    # process by closing its pipe, in order, never by a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from thermogate.plc.pointmap import build_point_map

    from ..core.topology import Topology
    from ..historian import HistoryReader
    from .server import OpcUaFace

    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",  # as the controller's own lines
    )
    pmap = build_point_map(site)
    reader = (lambda: HistoryReader(db, site.name)) if history else None
    face = OpcUaFace(
        site,
        pmap,
        Topology(site, pmap),
        sec,
        db,
        reader,
        naive=naive,
        command_timeout_s=command_timeout_s,
        shutdown_notice_s=SHUTDOWN_NOTICE_S,
    )
    try:
        lines = face.start()
    except Exception as exc:
        cmds.send(("error", str(exc)))
        return
    cmds.send(("ready", lines))
    sending = threading.Lock()  # the pipe's sends come from two threads
    ids = itertools.count(1)
    # Commands go to the run loop as they come, many in flight (one at a time, a
    # Write of 20 setpoints took 20 scans, past a client's 15 s timeout); each
    # carries its deadline, which the run loop enforces (``OpcUaProcess.serve``).
    pending: dict[int, concurrent.futures.Future[CommandResult]] = {}
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            if not face.bridge.wait(0.5):
                continue
            for cmd, by, fut, deadline in face.bridge.take():
                cid = next(ids)
                pending[cid] = fut
                with sending:
                    cmds.send(("cmd", cid, cmd, by, deadline))
            for audit in face.bridge.take_refused():
                with sending:
                    cmds.send(("audit", audit))

    def answers() -> None:
        while not stop.is_set():
            try:
                if not cmds.poll(0.5):
                    continue
                kind, rid, res = cmds.recv()
            except (EOFError, OSError):
                return
            fut = pending.pop(rid, None) if kind == "result" else None
            if fut is None:
                continue
            if isinstance(res, str):
                fut.set_exception(ThermogateError(res))
            else:
                fut.set_result(res)

    pumping = threading.Thread(target=pump, name="opcua-commands", daemon=True)
    answering = threading.Thread(target=answers, name="opcua-answers", daemon=True)
    pumping.start()
    answering.start()
    last: Any = None
    arrived = time.monotonic()
    interval = 1.0  # the scan interval, as the snapshots arrive
    gaps: collections.deque[float] = collections.deque(maxlen=9)
    stale_shown = False
    try:
        while True:
            try:
                if not snaps.poll(0.5):
                    # no scan for a while (the controller frozen or stopped by a
                    # debugger): its last values must not stay Good ("a stale point
                    # is never Good"); the next snapshot shows them as they are
                    quiet = time.monotonic() - arrived
                    if last is not None and not stale_shown and quiet > stale_after(interval):
                        face.publish(stale(last))
                        stale_shown = True
                    continue
                snap: Any = snaps.recv()
            except (EOFError, OSError):
                break  # the controller closed the pipe: stop
            now = time.monotonic()
            if last is not None:  # wall time between scans (a HIL clock runs faster);
                gaps.append(now - arrived)  # the median: a freeze is not the interval
                interval = min(float(np.median(gaps)), STALE_MAX_INTERVAL_S)
            last, arrived, stale_shown = snap, now, False
            face.publish(snap)
    finally:
        stop.set()
        pumping.join(5.0)
        answering.join(5.0)
        with sending, contextlib.suppress(OSError, BrokenPipeError):
            cmds.send(("applied", face.applied))
            cmds.send(("timings", face.timings))
            cmds.send(("gc", face.gc_runs))
        face.stop()
