"""Sampled signals: ``TimeSeries`` (interpolated, clamped or wrapped) and ``Weather``.

``t_s`` counts seconds from the first sample; ``start`` keeps the absolute
time of that sample when the source had one. Without ``wrap`` a series holds
its first value before the first sample and its last value after the last
one; with ``wrap`` it repeats with period ``period_s`` (default: the span of
the samples plus the last interval, so an hourly file 00:00 ... 23:00 repeats
every 24 h, interpolating from 23:00 back to 00:00).

The plausibility limits live here because both the CSV readers and the
synthetic generators promise them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, cast

import numpy as np

__all__ = [
    "AMBIENT_RANGE_C",
    "DAY_S",
    "GHI_NIGHT_OFFSET_WM2",
    "GHI_RANGE_WM2",
    "PRICE_ABS_MAX",
    "RH_RANGE_PCT",
    "Interpolation",
    "TimeSeries",
    "Weather",
    "WeatherSample",
]

Interpolation = Literal["linear", "step"]

DAY_S = 86400.0
#: a series up to this long keeps its samples as lists too, for the plant's
#: per-tick lookups (a year of hourly samples is 8,784; of minutes, 525,600)
LIST_MAX_SAMPLES = 50_000

#: Plausibility limits for CSV values (inclusive). Outside them a value is a
#: unit mistake (°F, kW/m², fraction instead of %) or a sensor fault, not weather.
AMBIENT_RANGE_C = (-60.0, 60.0)
GHI_RANGE_WM2 = (0.0, 1500.0)
RH_RANGE_PCT = (0.0, 100.0)
#: Markets do go negative; beyond this it is a spreadsheet unit or paste error.
PRICE_ABS_MAX = 100_000.0
#: Pyranometers read slightly negative at night (thermal offset). Values down to
#: this are clamped to 0 rather than rejected: measured station data has them.
GHI_NIGHT_OFFSET_WM2 = -10.0


@dataclass(frozen=True, eq=False, repr=False)
class TimeSeries:
    """A sampled signal with interpolation, clamping or wrapping.

    ``t_s`` are seconds relative to the first sample (``t_s[0] == 0``),
    strictly increasing; ``values`` are finite. ``start`` is the absolute time
    of the first sample (UTC-aware if the source had zones, naive if it gave
    local wall time, ``None`` if it counted seconds).

    ``interpolation`` is ``"linear"`` (weather) or ``"step"`` (the value holds
    until the next sample: how a day-ahead market price applies to its hour).
    See the module docstring for ``wrap`` and ``period_s``.
    """

    t_s: np.ndarray
    values: np.ndarray
    start: datetime | None = None
    wrap: bool = False
    period_s: float | None = None
    interpolation: Interpolation = "linear"
    name: str = ""
    # Lookup tables, built once: plain lists for the scalar path (bisect on a
    # list is ~10x faster than np.interp on one float, and the plant calls
    # at() every tick), arrays for at_many(). A list costs 40 bytes a sample
    # against an array's 8: a long series (a year of minutes) looks its samples
    # up in the arrays instead (LIST_MAX_SAMPLES).
    _xp: np.ndarray = field(init=False, repr=False)
    _fp: np.ndarray = field(init=False, repr=False)
    _xl: Sequence[float] = field(init=False, repr=False)
    _fl: Sequence[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        t = np.array(self.t_s, dtype=np.float64)
        v = np.array(self.values, dtype=np.float64)
        if t.ndim != 1 or v.shape != t.shape:
            raise ValueError(f"t_s and values must be 1-D of equal length, got {t.shape} {v.shape}")
        if t.size < 2:
            raise ValueError("a time series needs at least 2 samples")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
            raise ValueError("t_s and values must be finite")
        if t[0] != 0.0:
            raise ValueError("t_s must start at 0 (seconds relative to the first sample)")
        if np.any(np.diff(t) <= 0):
            raise ValueError("t_s must be strictly increasing")
        if self.interpolation not in ("linear", "step"):
            raise ValueError(
                f"interpolation must be 'linear' or 'step', not {self.interpolation!r}"
            )
        duration = float(t[-1])
        period = duration + float(t[-1] - t[-2]) if self.period_s is None else float(self.period_s)
        if not math.isfinite(period) or period < duration:
            raise ValueError(f"period_s {period} must be at least the duration {duration}")
        if self.wrap and period > duration:
            # Close the cycle: the sample after the last one is the first again.
            xp, fp = np.append(t, period), np.append(v, v[0])
        else:
            xp, fp = t, v
        for arr in (t, v, xp, fp):
            arr.setflags(write=False)
        set_ = object.__setattr__
        set_(self, "t_s", t)
        set_(self, "values", v)
        set_(self, "period_s", period)
        set_(self, "_xp", xp)
        set_(self, "_fp", fp)
        small = xp.size <= LIST_MAX_SAMPLES
        set_(self, "_xl", xp.tolist() if small else xp)
        set_(self, "_fl", fp.tolist() if small else fp)

    def __len__(self) -> int:
        return int(self.t_s.size)

    @property
    def covers_s(self) -> float:
        """Seconds the samples stand for: the last one holds for one more interval."""
        t = self.t_s
        return float(t[-1] + (t[-1] - t[-2]))

    def __repr__(self) -> str:
        # The arrays can hold a year of samples: summarise instead of dumping.
        return (
            f"TimeSeries(name={self.name!r}, samples={len(self)}, duration={self.duration:g} s, "
            f"start={self.start!r}, wrap={self.wrap}, period_s={self.period_s:g}, "
            f"interpolation={self.interpolation!r})"
        )

    @property
    def duration(self) -> float:
        """Seconds from the first to the last sample."""
        return float(self.t_s[-1])

    @property
    def end(self) -> datetime | None:
        """Absolute time of the last sample, if the series has a start."""
        return None if self.start is None else self.start + timedelta(seconds=self.duration)

    def with_wrap(self, wrap: bool = True, period_s: float | None = None) -> TimeSeries:
        """A copy that repeats (or stops repeating); ``period_s`` None = default."""
        return replace(self, wrap=wrap, period_s=period_s)

    def at(self, t_seconds: float) -> float:
        """The value at ``t_seconds`` after the first sample (see module doc)."""
        x = float(t_seconds)
        if not math.isfinite(x):
            raise ValueError(f"time must be finite, got {t_seconds!r}")
        xl, fl = self._xl, self._fl
        if self.wrap:
            # __post_init__ replaced a None period_s with the default: a float here
            x %= cast(float, self.period_s)  # Python's % is non-negative for a positive period
        elif x <= 0.0:
            return float(fl[0])
        elif x >= xl[-1]:
            return float(fl[-1])
        if not isinstance(xl, list):  # a long series, looked up in its arrays
            return self._at_array(x)
        i = bisect.bisect_right(xl, x) - 1
        if i >= len(xl) - 1:  # only when a wrapped period equals the duration
            return fl[-1]
        if self.interpolation == "step":
            return fl[i]
        x0, x1 = xl[i], xl[i + 1]
        return fl[i] + (fl[i + 1] - fl[i]) * (x - x0) / (x1 - x0)

    def _at_array(self, x: float) -> float:
        """:meth:`at` inside the samples of a long series: the same index and
        arithmetic on the arrays' floats, so the same value to the last bit."""
        xp, fp = self._xp, self._fp
        i = int(np.searchsorted(xp, x, side="right")) - 1
        if i >= xp.size - 1:
            return float(fp[-1])
        if self.interpolation == "step":
            return float(fp[i])
        x0, x1, f0, f1 = float(xp[i]), float(xp[i + 1]), float(fp[i]), float(fp[i + 1])
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)

    def at_many(self, t_seconds: np.ndarray | Sequence[float]) -> np.ndarray:
        """Vectorised :meth:`at` (numpy.interp); same clamping and wrapping."""
        x = np.asarray(t_seconds, dtype=np.float64)
        if self.wrap:
            x = np.mod(x, cast(float, self.period_s))  # a float: see at()
        if self.interpolation == "linear":
            return np.interp(x, self._xp, self._fp)
        idx = np.searchsorted(self._xp, x, side="right") - 1
        return self._fp[np.clip(idx, 0, self._fp.size - 1)]


@dataclass(frozen=True, slots=True)
class WeatherSample:
    """Weather at one instant; ``None`` where the source has no such column."""

    ambient_c: float
    ghi_wm2: float | None
    rh_pct: float | None


@dataclass(frozen=True, eq=False)
class Weather:
    """Ambient temperature and optional global horizontal irradiance and RH."""

    ambient_c: TimeSeries
    ghi_wm2: TimeSeries | None = None
    rh_pct: TimeSeries | None = None

    @property
    def start(self) -> datetime | None:
        return self.ambient_c.start

    @property
    def duration(self) -> float:
        return self.ambient_c.duration

    @property
    def wrap(self) -> bool:
        return self.ambient_c.wrap

    def at(self, t_seconds: float) -> WeatherSample:
        return WeatherSample(
            ambient_c=self.ambient_c.at(t_seconds),
            ghi_wm2=None if self.ghi_wm2 is None else self.ghi_wm2.at(t_seconds),
            rh_pct=None if self.rh_pct is None else self.rh_pct.at(t_seconds),
        )

    def with_wrap(self, wrap: bool = True, period_s: float | None = None) -> Weather:
        def w(s: TimeSeries | None) -> TimeSeries | None:
            return None if s is None else s.with_wrap(wrap, period_s)

        return Weather(self.ambient_c.with_wrap(wrap, period_s), w(self.ghi_wm2), w(self.rh_pct))
