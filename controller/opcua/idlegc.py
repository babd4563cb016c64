"""The server process's garbage collection, between snapshots instead of inside them.

Applying a 10,000-point snapshot makes ~4,000 DataValues and notifications, tens
of thousands of objects, and CPython's collector runs on allocation counts: a
few dozen young collections per apply and, every few scans, a full one over
every object made since the address space was frozen (the monitored items, the
published values). ``thermogate bench opcua`` measured 30-40 ms of collection
inside an apply of ~45 ms of CPU, and full collections of 50-150 ms, each
holding up a whole scan's changes: the latency's tail.

``IdleCollector`` moves that work to where it costs no latency: a short while
after an apply (its notifications are on their way by then), when no newer
snapshot waits, it collects the young generations, and every ``FULL_EVERY``
applies all of them. Automatic collection stays on as the backstop, with a
young threshold high enough (``BACKSTOP_THRESHOLD`` allocations, several
scans' worth) that it only fires when the idle collections do not keep up
(a server that never idles): garbage is never left to pile up.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable

from ..heap import BetweenScans

__all__ = ["IdleCollector"]

#: a full collection every this many idle collections (a minute at 1 s scans)
FULL_EVERY = 60
#: the automatic collector's young threshold while idle collection runs
BACKSTOP_THRESHOLD = 200_000
#: the idle collection runs this share of the snapshot interval after an apply ...
IDLE_SHARE = 0.4
#: ... but never later than this after it (seconds)
IDLE_MAX_S = 0.25


class IdleCollector:
    """See the module docstring. ``busy()`` says a snapshot waits to be applied. The
    collections themselves (every ``full_every``-th a full one, each timed) are the
    controller's between-scans ones (:class:`~thermogate.controller.heap.BetweenScans`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        busy: Callable[[], bool],
        *,
        full_every: int = FULL_EVERY,
        clock: Callable[[], float] = time.monotonic,
        collect: Callable[[int], int] = gc.collect,
    ) -> None:
        self.loop, self.busy, self.clock = loop, busy, clock
        self._gc = BetweenScans(full_every=full_every, backstop=BACKSTOP_THRESHOLD, collect=collect)
        self._handle: asyncio.TimerHandle | None = None
        self._last_apply: float | None = None
        self._interval: float | None = None  # the snapshots' interval, smoothed
        self.skipped = 0  # idle collections given up because a snapshot waited

    @property
    def runs(self) -> deque[tuple[int, float]]:
        """(generation, milliseconds) of the latest idle collections."""
        return self._gc.runs

    def install(self) -> None:
        """Raise the automatic collector's young threshold (undone by ``uninstall``)."""
        self._gc.install()

    def uninstall(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._gc.uninstall()

    def applied(self) -> None:
        """An apply just ended: collect once the loop should be idle."""
        now = self.clock()
        if self._last_apply is not None:
            gap = now - self._last_apply
            self._interval = gap if self._interval is None else 0.8 * self._interval + 0.2 * gap
        self._last_apply = now
        delay = IDLE_MAX_S if self._interval is None else IDLE_SHARE * self._interval
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_later(min(delay, IDLE_MAX_S), self._idle)

    def _idle(self) -> None:
        self._handle = None
        if self.busy():  # the apply comes first; it schedules the next collection
            self.skipped += 1
            return
        self._gc.collect()
