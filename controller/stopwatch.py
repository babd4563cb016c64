"""Wall time by stage of a lockstep run (``thermogate bench lockstep``).

A :class:`Stopwatch` is handed to ``run_simulation``: the loop calls
:meth:`Stopwatch.lap` after each of its stages (observe, scan, apply, plant
advance, forecasting, ...), and :meth:`Stopwatch.instrument` times the control
core's parts from outside by wrapping their methods on the instance, so the
core itself reads no clock (its decisions stay a function of its inputs). A
lap costs one ``perf_counter`` call: timing a run changes its speed by well
under a percent, and never its results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any

#: the core's parts timed by ``instrument``: (stage, attribute path of the part, method)
CORE_STAGES: tuple[tuple[str, str, str], ...] = (
    ("estimate", "estimator", "update"),
    ("verify", "actuation", "verify"),
    ("zones", "failsafe", "update"),
    ("regulate", "regulation", "regulate"),
    ("thermal", "thermal", "protect"),
    ("power", "power", "protect"),
    ("plan", "planning", "allocate"),
    ("interlock", "trips", "latch"),
    ("failsafe", "failsafe", "apply"),
    ("actuate", "actuation", "actuate"),
    ("status", "", "_status"),
)


class Stopwatch:
    """Accumulated wall seconds per stage; see the module docstring."""

    def __init__(self) -> None:
        #: the loop's stages, in the order first seen (their sum is the run's wall time)
        self.seconds: dict[str, float] = {}
        #: the core's parts, timed inside the loop's ``scan`` stage
        self.core: dict[str, float] = {}
        self._t = time.perf_counter()

    def start(self) -> None:
        """Begin the first lap now."""
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        """The time since the last lap (or ``start``) goes to ``stage``."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - self._t)
        self._t = now

    def instrument(self, ctrl: object) -> None:
        """Time the core's parts (``CORE_STAGES``) of a controller into :attr:`core`."""
        for stage, part, method in CORE_STAGES:
            owner = getattr(ctrl, part) if part else ctrl
            setattr(owner, method, self._timed(stage, getattr(owner, method)))

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        core = self.core
        core.setdefault(stage, 0.0)
        clock = time.perf_counter

        @wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                core[stage] += clock() - t0

        return timed


def no_lap(stage: str) -> None:
    """``Stopwatch.lap`` of an untimed run: nothing."""
