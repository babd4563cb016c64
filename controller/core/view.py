"""What the parts of a scan share: the validated observation and the commands.

``ScanView`` is the estimator's picture of one scan, read-only, by point
position (``pmap.index``): every part after estimation reads the plant through
it, never the raw observation. ``Cmd`` is one command a part wants written this
scan, with its reason and, for an operator's override, who gave it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from thermogate.plc.points import BAD


@dataclass(frozen=True, slots=True)
class ScanView:
    """One scan's validated values and quality (arrays are read-only)."""

    t: float  # the observation's time (s)
    dt: float  # time since the previous scan, bounded (s)
    values: np.ndarray  # validated values, aligned with pmap.points
    quality: np.ndarray  # GOOD / UNCERTAIN / BAD per point
    #: voted or cross-checked signals (tank fluid, loop supply) by the position
    #: of the point they stand for: (value, usable)
    voted: Mapping[int, tuple[float, bool]]
    import_limit_kw: float | None = None  # the grid's limit this scan (scenario / DR)
    price_per_mwh: float | None = None  # the energy price this scan (market feed / scenario)
    # The parts read ~100 single points a scan: plain Python lists (made once,
    # the arrays are read-only) are several times faster to index than numpy.
    _vals: list[float] = field(init=False, repr=False, compare=False)
    _good: list[bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.values.setflags(write=False)
        self.quality.setflags(write=False)
        object.__setattr__(self, "_vals", self.values.astype(float, copy=False).tolist())
        object.__setattr__(self, "_good", _good_list(self.quality != BAD))

    def val(self, i: int) -> float:
        """The validated value of point ``i`` (NaN once a BAD point's hold ran out)."""
        return self._vals[i]

    def good(self, i: int) -> bool:
        """Point ``i`` may be acted on (GOOD or UNCERTAIN)."""
        return self._good[i]

    def vote(self, i: int) -> tuple[float, bool]:
        """The voted value of point ``i`` where there is one, else its own."""
        got = self.voted.get(i)
        if got is not None:
            return got
        return self.val(i), self.good(i)

    def votes(self, points: Sequence[int]) -> tuple[tuple[float, ...], tuple[bool, ...]]:
        """``vote`` of each of ``points``: the values, then whether each is usable
        (one pass over the points, not a call each; hundreds a scan at 10,000 points)."""
        if not points:
            return (), ()
        vals, good = self._vals, self._good
        own = zip(map(vals.__getitem__, points), map(good.__getitem__, points), strict=True)
        values, usable = zip(*map(self.voted.get, points, own), strict=True)
        return values, usable

    def measured(self, i: int) -> float:
        """A meter's reading this scan, NaN when it is BAD."""
        return self._vals[i] if self._good[i] else math.nan


#: the last ``_good_list``: (its mask, the list); one entry, replaced whole
_good_last: tuple[np.ndarray, list[bool]] = (np.zeros(0, dtype=bool), [])


def _good_list(good: np.ndarray) -> list[bool]:
    """``good.tolist()``, or the last scan's list when the mask is the same (which
    points are usable rarely changes; the lists are never written)."""
    global _good_last
    mask, got = _good_last
    if not np.array_equal(mask, good):
        got = good.tolist()
        _good_last = (good, got)
    return got


@dataclass(slots=True)
class Cmd:
    """A value a part wants on point ``i`` (the key of the scan's command dict)."""

    value: float
    why: str
    who: str = "controller"
    where: str = "scan"
    override: bool = False  # an operator's value: not rate-limited
    pulse: bool = False  # always sent, even if unchanged (the PLC's reset coil)


#: The scan's commands by point position, in the order the parts set them.
Cmds = dict[int, Cmd]


def nz(x: float) -> float:
    """0 for NaN and inf: a missing reading adds nothing to a sum."""
    return 0.0 if not math.isfinite(x) else x
