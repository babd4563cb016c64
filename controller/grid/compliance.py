"""Demand-response compliance as a grid operator settles it.

A curtailment instruction says "import at most ``limit_kw`` from ``start`` to
``end``". The operator (or aggregator) judges it per settlement interval
(15 min by default) on the revenue meter, and pays for the reduction against
a *baseline*: what the site would have drawn, estimated from like intervals
before the event. This module does that arithmetic; it is pure (arrays and
records in, records out, no clock, no I/O) so the same code scores a
simulation, a live run and a test with hand-computed intervals.

In order:

1. **Metered intervals** (:func:`interval_means`): the import samples
   (time, kW) are held from one sample to the next, at most ``max_hold_s``
   (a sample does not speak for a communication gap), and integrated per
   interval ``[k I, (k+1) I)``. An interval metered for less than
   ``min_coverage`` of its length is *missing*, not guessed; a NaN sample
   covers nothing.
2. **Baseline** (:func:`baseline_kw`): the mean of the last ``count`` like
   intervals that are metered and not themselves in an event —
   ``like="day"``: the same time of day on earlier days (the usual
   "high N of M" family, here the plain average of N); ``like="preceding"``:
   the intervals just before the event began (a "meter before/meter after"
   baseline for short events). Every interval an event touches, its ramps
   included, is no like interval. Too few like intervals: no baseline, and the
   record says so.
3. **Settlement** (:func:`settle`): every interval wholly inside the
   instruction's window (a partly covered first or last interval is the
   ramp, not judged) gets its metered mean, baseline, the reduction required
   (``baseline - limit``, at least 0) and delivered (``baseline - metered``),
   and ``compliant`` = metered ≤ limit + ``tolerance_kw``; ``None`` when the
   interval was not metered (unknown is not compliant, and not a breach).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "DAY_S",
    "BaselineRule",
    "Instruction",
    "IntervalCompliance",
    "baseline_kw",
    "interval_means",
    "settle",
    "summarise",
]

DAY_S = 86_400.0


@dataclass(frozen=True)
class BaselineRule:
    """How intervals are metered and what a baseline averages."""

    count: int = 10  # like intervals averaged
    like: Literal["day", "preceding"] = "day"
    interval_s: float = 900.0
    min_count: int = 1  # fewer usable like intervals than this: no baseline
    min_coverage: float = 0.9  # share of an interval that must be metered
    max_hold_s: float = 60.0  # a sample stands for at most this long

    def __post_init__(self) -> None:
        if self.like not in ("day", "preceding"):
            raise ValueError(f"like must be 'day' or 'preceding', got {self.like!r}")
        if not 1 <= self.min_count <= self.count:
            raise ValueError(f"need 1 <= min_count <= count, got {self.min_count}, {self.count}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0.0):
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")
        if self.like == "day" and DAY_S % self.interval_s:
            raise ValueError(f"interval_s must divide a day, got {self.interval_s}")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if not (math.isfinite(self.max_hold_s) and self.max_hold_s > 0.0):
            raise ValueError(f"max_hold_s must be positive, got {self.max_hold_s}")


@dataclass(frozen=True)
class Instruction:
    """Import at most ``limit_kw`` for ``start_s <= t < end_s``."""

    start_s: float
    end_s: float
    limit_kw: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise ValueError("an instruction needs a finite start and end")
        if self.end_s <= self.start_s:
            raise ValueError(f"instruction ends ({self.end_s}) before it starts ({self.start_s})")
        if not (math.isfinite(self.limit_kw) and self.limit_kw >= 0.0):
            raise ValueError(f"limit_kw must be >= 0, got {self.limit_kw}")

    def intervals(self, interval_s: float) -> range:
        """The interval indices wholly inside the window."""
        return range(math.ceil(self.start_s / interval_s), math.floor(self.end_s / interval_s))

    def touched(self, interval_s: float) -> range:
        """The interval indices the window touches, its ramps included."""
        return range(math.floor(self.start_s / interval_s), math.ceil(self.end_s / interval_s))


@dataclass(frozen=True)
class IntervalCompliance:
    start_s: float
    limit_kw: float
    metered_kw: float | None
    baseline_kw: float | None
    required_kw: float | None  # baseline - limit, at least 0
    delivered_kw: float | None  # baseline - metered
    compliant: bool | None  # None: not metered
    note: str = ""


def interval_means(
    times_s: ArrayLike, import_kw: ArrayLike, rule: BaselineRule = BaselineRule()
) -> dict[int, float]:
    """Interval index -> time-weighted mean import (kW) of every interval metered
    for at least ``rule.min_coverage`` of its length (step 1)."""
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(import_kw, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError("times and import must be 1-D arrays of one length")
    if len(t) == 0:
        return {}
    if not np.isfinite(t).all() or (np.diff(t) <= 0.0).any():
        raise ValueError("sample times must be finite and strictly increasing")
    size = rule.interval_s
    ends = np.minimum(np.append(t[1:], math.inf), t + rule.max_hold_s)
    ok = np.isfinite(p)
    t, ends, p = t[ok], ends[ok], p[ok]
    if len(t) == 0:
        return {}
    # cut every held segment at the interval boundaries it crosses
    first, last = int(t[0] // size), int(ends[-1] // size) + 1
    cuts = np.arange(first, last + 1) * size
    edges = np.union1d(np.concatenate([t, ends]), cuts)
    a, b = edges[:-1], edges[1:]
    seg = np.searchsorted(t, a, side="right") - 1  # the sample holding at a
    held = (seg >= 0) & (a < ends[np.maximum(seg, 0)])
    a, b, seg = a[held], b[held], seg[held]
    k = (a // size).astype(np.int64) - first
    n = last - first
    secs = np.bincount(k, weights=b - a, minlength=n)
    energy = np.bincount(k, weights=(b - a) * p[seg], minlength=n)
    return {
        first + i: float(energy[i] / secs[i])
        for i in range(n)
        if secs[i] >= rule.min_coverage * size
    }


def baseline_kw(
    means: Mapping[int, float], k: int, rule: BaselineRule, excluded: Iterable[int] = ()
) -> float | None:
    """The baseline of interval ``k`` from the metered ``means`` (step 2);
    ``excluded`` intervals (events, past and present) are never like intervals.
    ``None`` when fewer than ``rule.min_count`` like intervals were metered."""
    skip = set(excluded)
    stride = round(DAY_S / rule.interval_s) if rule.like == "day" else 1
    earliest = min(means, default=k)
    picked: list[float] = []
    j = k - stride
    while j >= earliest and len(picked) < rule.count:
        if j not in skip and j in means:
            picked.append(means[j])
        j -= stride
    return float(np.mean(picked)) if len(picked) >= rule.min_count else None


def settle(
    means: Mapping[int, float],
    instruction: Instruction,
    rule: BaselineRule = BaselineRule(),
    *,
    past_events: Sequence[Instruction] = (),
    tolerance_kw: float = 0.0,
) -> list[IntervalCompliance]:
    """Every interval wholly inside ``instruction`` scored (step 3)."""
    size = rule.interval_s
    window = instruction.intervals(size)
    excluded = {k for ev in (instruction, *past_events) for k in ev.touched(size)}
    if rule.like == "preceding":  # one baseline for the event: the intervals before it
        base_all = baseline_kw(means, window.start, rule, excluded) if window else None
    out = []
    for k in window:
        base = base_all if rule.like == "preceding" else baseline_kw(means, k, rule, excluded)
        metered = means.get(k)
        limit = instruction.limit_kw
        notes = []
        if metered is None:
            notes.append("not metered")
        if base is None:
            notes.append("too few like intervals for a baseline")
        out.append(
            IntervalCompliance(
                start_s=k * size,
                limit_kw=limit,
                metered_kw=metered,
                baseline_kw=base,
                required_kw=None if base is None else max(0.0, base - limit),
                delivered_kw=None if base is None or metered is None else base - metered,
                compliant=None if metered is None else metered <= limit + tolerance_kw,
                note="; ".join(notes),
            )
        )
    return out


def summarise(
    records: Sequence[IntervalCompliance], interval_s: float
) -> dict[str, float | int | None]:
    """Intervals judged, compliant, not metered; the compliant share of the
    metered ones; the reduction delivered and required (kWh) over the
    intervals that have both a baseline and a meter reading."""
    metered = [r for r in records if r.compliant is not None]
    compliant = sum(1 for r in metered if r.compliant)
    both = [r for r in records if r.delivered_kw is not None and r.required_kw is not None]
    hours = interval_s / 3600.0
    return {
        "intervals": len(records),
        "compliant": compliant,
        "not_metered": len(records) - len(metered),
        "compliance": compliant / len(metered) if metered else None,
        "delivered_kwh": sum(r.delivered_kw or 0.0 for r in both) * hours if both else None,
        "required_kwh": sum(r.required_kw or 0.0 for r in both) * hours if both else None,
    }
