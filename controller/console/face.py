"""The console as one of the controller's faces (``run.Face``).

The run loop calls ``publish(snapshot)`` after each scan (one reference
stored: the console reads the latest whenever a technician asks) and
``serve(give)`` between scans: it gives the commands the console queued on
the ``CommandBridge`` (the OPC UA face's, shared rather than written twice)
and stores the console's own audit rows (logins, failures, lockouts) in the
historian from the run loop, the thread that owns it. The console thread
waits for each command's answer at most ``GIVE_TIMEOUT_S``; a command not
taken by then is withdrawn and will never be applied late.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from thermogate.plc.pointmap import PointMap
from thermogate.plc.site import Site

from ..core.commands import Command, CommandResult, Principal
from ..historian.reader import HistoryReader
from ..opcua.bridge import CommandBridge, give_blocking
from ..opcua.snapshot import Snapshot
from ..signals import Audit
from ..users import UserStore
from .config import ConsoleConfig
from .console import Console
from .port import ConsolePort, Link, Pacer, PtyLink, SerialLink
from .session import Session, SessionConfig
from .shell import Seen, Shell

log = logging.getLogger(__name__)

GIVE_TIMEOUT_S = 10.0  # a scan is 1 s: ten missed scans and the console says so
P99_SCANS = 600  # the scan-time percentile is over the last 10 minutes at 1 s


class ConsoleFace:
    """See the module docstring. ``device`` None opens a pseudo-terminal (``path``)."""

    def __init__(
        self,
        site: Site,
        pmap: PointMap,
        cfg: ConsoleConfig,
        db: str | Path,
        *,
        audit: Callable[[Audit], None],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        give_timeout_s: float = GIVE_TIMEOUT_S,
    ) -> None:
        self.site = site
        self.pmap = pmap
        self.cfg = cfg
        self.db = Path(db)
        self.audit = audit
        self.clock = clock
        self.give_timeout_s = give_timeout_s
        self.bridge = CommandBridge()
        self._seen = Seen(None)
        self._scan_ms: deque[float] = deque(maxlen=P99_SCANS)
        self._journal: deque[Audit] = deque()
        self.pty: PtyLink | None = PtyLink() if cfg.device is None else None
        self.path = self.pty.path if self.pty is not None else str(cfg.device)
        self.console: Console | None = None
        self.port = ConsolePort(
            self.path,
            self._open,
            self._make_console,
            Pacer(cfg.baudrate, enabled=cfg.pace, sleep=sleep),
            clock=clock,
        )
        self._stores: list[UserStore | HistoryReader] = []
        self._reader: HistoryReader | None = None  # the console thread's own

    # -- the Face protocol (run loop) -------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        if math.isfinite(snapshot.scan_ms):
            self._scan_ms.append(snapshot.scan_ms)
        ms = sorted(self._scan_ms)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else math.nan
        self._seen = Seen(snapshot, p99)  # one reference: atomic for the console thread

    def serve(self, give: Callable[[Command, Principal], CommandResult]) -> int:
        while self._journal:
            self.audit(self._journal.popleft())
        return self.bridge.serve(give)

    # -- lifecycle ---------------------------------------------------------------
    def describe(self) -> list[str]:
        """Where a technician finds the console, as the run's banner says it."""
        how = f"{self.cfg.line}; screen {self.path} {self.cfg.baudrate}"
        return [f"console:  {self.path} ({how})"]

    def start(self) -> list[str]:
        self.port.start()
        return self.describe()

    def stop(self) -> None:
        self.port.stop()
        if self.pty is not None:
            self.pty.close()

    # -- the console thread --------------------------------------------------------
    def _open(self) -> Link:
        if self.pty is not None:
            return _Kept(self.pty)
        return SerialLink(str(self.cfg.device), self.cfg.baudrate)

    def _make_console(self) -> Console:
        users = UserStore(self.db)
        self._stores = [users]
        self.port.on_close = self._close_stores

        def authenticate(name: str, secret: str) -> Principal:
            return users.authenticate(name, secret, "console")

        def role_of(name: str) -> str | None:
            u = users.get(name)
            return None if u is None else u.role

        def trend(name: str, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
            if self._reader is None:  # opened on first use: the historian may be new
                self._reader = HistoryReader(self.db, self.site.name)
                self._stores.append(self._reader)
            got = self._reader.telemetry([name], t0, t1)
            return got["t"], got.get(name, np.full(len(got["t"]), np.nan))

        session = Session(
            SessionConfig(self.cfg.idle_timeout_s, self.cfg.max_failed, self.cfg.lockout_s),
            journal=self._journal,
        )
        self.console = Console(
            Shell(self.site, self.pmap, ansi=self.cfg.ansi),
            session,
            give=self.give,
            authenticate=authenticate,
            role_of=role_of,
            seen=lambda: self._seen,
            trend=trend,
        )
        return self.console

    def _close_stores(self) -> None:
        for s in self._stores:
            s.close()

    def give(self, cmd: Command, by: Principal) -> CommandResult:
        """Console thread: queue ``cmd`` for the run loop and wait for its answer."""
        res, withdrawn = give_blocking(self.bridge, cmd, by, self.give_timeout_s)
        if withdrawn:
            self._journal.append(res.audit)
        return res


class _Kept:
    """The demo's pseudo-terminal as a line: it outlives each session on it."""

    def __init__(self, pty: PtyLink) -> None:
        self.pty = pty

    def read(self, n: int) -> bytes:
        return self.pty.read(n)

    def take_events(self) -> list[str]:
        return self.pty.take_events()

    def write(self, data: bytes) -> None:
        self.pty.write(data)

    def close(self) -> None:
        pass  # the pty is closed when the face stops
