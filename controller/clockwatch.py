"""A step of the controller's clock (NTP, an operator, a VM resumed), told from its rate.

The controller stamps everything with its clock (the wall clock, or a HIL
plant's faster one) and paces its scans on the monotonic clock, so a step of
the wall clock neither stalls nor storms the scans; what it does do is break
the order of the historian's timestamps (a step back) or leave a hole in
them (a step forward). :class:`ClockWatch` compares, between two scans, how
far the clock moved with how far the monotonic clock moved, at the rate the
clock has been running (the median of the last intervals, so a clock that
runs 20x faster in a HIL rig is not a step every scan). A difference beyond
``tolerance_s`` plus half an interval is a step; the run loop records it as
an event, so the history says where its timestamps jump.
"""

from __future__ import annotations

import statistics
from collections import deque

#: intervals that set the clock's rate before any step is judged
_WARM_UP = 3


class ClockWatch:
    """See the module docstring."""

    def __init__(self, tolerance_s: float = 2.0, history: int = 9) -> None:
        self.tolerance_s = tolerance_s
        self._rates: deque[float] = deque(maxlen=history)
        self._last: tuple[float, float] | None = None

    def observe(self, clock: float, monotonic: float) -> float | None:
        """The step (s, signed) since the last call, or None if the clock just ran."""
        last, self._last = self._last, (clock, monotonic)
        if last is None:
            return None
        moved, elapsed = clock - last[0], monotonic - last[1]
        if elapsed <= 0.0:
            return None
        if len(self._rates) < _WARM_UP:
            self._rates.append(moved / elapsed)
            return None
        expected = statistics.median(self._rates) * elapsed
        step = moved - expected
        if abs(step) > self.tolerance_s + 0.5 * abs(expected):
            return step
        self._rates.append(moved / elapsed)
        return None
