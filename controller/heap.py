"""Start-up's objects out of the cyclic garbage collector's sight.

A controller builds its site, point map, model and connections once and keeps
them for the whole run; CPython's full collections walk all of them again every
few scans. Measured at 10,000 points (``bench opcua``'s site, one process): a
full collection every ~9 scans of 80-110 ms, ~17 ms of collection per scan on
average; after ``freeze_startup`` the full ones take 1-6 ms.

Frozen objects are still freed by reference counting when dropped; only one
that dies inside a reference cycle waits for the next ``freeze_startup``, which
thaws everything first, collects, and freezes what still lives. The run loop
calls it at start and once an hour (``REFREEZE_S``) between two scans, so
nothing is kept for good and the full walk happens in a scan's slack time.

The young generations are collected in that slack too (:class:`BetweenScans`).
CPython starts a young collection whenever 700 more containers live than
died, counted at every allocation: a 10,000-point scan makes and drops tens of
thousands of short-lived objects, so its peaks started 9-13 young collections
inside every scan (measured with ``gc.callbacks``), and the scan's median and
its tail both carried them. The run loop raises that threshold as a backstop
and collects the young generations itself once a scan is done, when the slack
before the next one allows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "REFREEZE_S",
    "BetweenScans",
    "freeze_startup",
    "release_freed_heap",
    "single_malloc_arena",
]

#: how often a run thaws, collects and freezes again (seconds)
REFREEZE_S = 3600.0
#: the automatic collector's young threshold while ``BetweenScans`` collects: the
#: backstop for a loop that never has the slack (several 10,000-point scans' worth)
BACKSTOP_THRESHOLD = 100_000
#: a full collection (of what is not frozen) every this many collections between scans
FULL_EVERY = 60
#: collect between scans only when at least this share of the scan interval is left
MIN_SLACK_SHARE = 0.2
#: collection times kept (ms), for the benches
KEPT = 3600


class BetweenScans:
    """Garbage collection in the slack between scans instead of inside them (see the
    module docstring). ``install`` raises the automatic young threshold and
    ``uninstall`` restores it; ``collect(slack_s, interval_s)`` after each scan."""

    def __init__(
        self,
        *,
        full_every: int = FULL_EVERY,
        backstop: int = BACKSTOP_THRESHOLD,
        collect: Callable[[int], int] = gc.collect,
    ) -> None:
        self.full_every, self.backstop, self._collect = full_every, backstop, collect
        self._saved: tuple[int, int, int] | None = None
        self._since_full = 0
        #: (generation, milliseconds) of the latest collections between scans
        self.runs: deque[tuple[int, float]] = deque(maxlen=KEPT)
        self.skipped = 0  # scans that left too little slack: the backstop covers them

    def install(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.set_threshold(self.backstop, *self._saved[1:])

    def uninstall(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def collect(self, slack_s: float = float("inf"), interval_s: float = 0.0) -> int | None:
        """Collect now if ``slack_s`` (time left before the next scan) is at least
        ``MIN_SLACK_SHARE`` of ``interval_s``; the generation collected, or None."""
        if slack_s < MIN_SLACK_SHARE * interval_s:
            self.skipped += 1
            return None
        self._since_full += 1
        gen = 2 if self._since_full >= self.full_every else 1
        if gen == 2:
            self._since_full = 0
        t0 = time.perf_counter()
        self._collect(gen)
        self.runs.append((gen, (time.perf_counter() - t0) * 1000.0))
        return gen


def freeze_startup() -> int:
    """Thaw what an earlier call froze, collect everything, then move every surviving
    object out of the collector's generations; returns how many were frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        return None


_TRIM = _malloc_trim()


#: glibc's mallopt parameter for the most malloc arenas (malloc.h: M_ARENA_MAX)
_M_ARENA_MAX = -8


def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None


def single_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main arena; call it before any thread
    starts. False where the C library has no ``mallopt``.

    glibc gives a new thread an arena of its own, and a thread that unpickles a
    model (the retrainer's did, a week apart, each time a new thread; the scan
    loop loads a promoted one now, but any thread may allocate big) leaves that
    model's pages in its arena once it is replaced, where ``malloc_trim`` does not
    get them all back. Measured with the soak's own two 6.2 MB models, eight
    hand-overs from new threads: the resident set climbed +7.2, +3.8 and +1.0 MB
    after the first (a month's soak showed the same steps); from one arena +1.5
    MB at the second, then within 0.9 MB over six more. The threads here hold
    the GIL while they allocate, so sharing one arena costs them little."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))


def release_freed_heap() -> bool:
    """Give the heap memory freed since the last call back to the system (glibc's
    ``malloc_trim``); False where the C library has no such call.

    A model handed over replaces one of the same size: for a moment both are
    alive, and glibc keeps the freed one's pages as a high-water mark (+6-12 MB
    of resident set per hand-over of a 6 MB model, measured) though nothing
    holds them. Trimming after the hand-over returns them, so the resident set
    shows what the process really keeps."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
