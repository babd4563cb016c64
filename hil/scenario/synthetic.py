"""Deterministic synthetic weather and prices: a day's shape, red noise, a seed.

A scenario without measured data still gets a plausible, repeatable input:
the same seed gives the same series, the bounds given are promises (clipped),
and the series cover whole days and wrap, so a run longer than the scenario
keeps a daily cycle instead of a frozen value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime

import numpy as np

from .fields import require
from .series import (
    AMBIENT_RANGE_C,
    DAY_S,
    GHI_RANGE_WM2,
    PRICE_ABS_MAX,
    TimeSeries,
    Weather,
)

__all__ = ["SyntheticPrices", "SyntheticWeather"]


def _check_seed(seed: int) -> None:
    ok = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    require(ok, "seed", "must be a non-negative integer")


def _check_hour(value: float, name: str) -> None:
    require(0.0 <= value < 24.0, name, f"{value:g} is not an hour of the day (0 <= h < 24)")


def _check_step(step_s: float) -> None:
    # Whole samples per day keep the daily cycle exact when the series wraps.
    n = DAY_S / step_s if step_s > 0 else 0.0
    require(
        60.0 <= step_s <= 3600.0 and abs(n - round(n)) < 1e-9,
        "step_s",
        f"{step_s:g} s must be 60..3600 s and divide a day evenly (300, 900, 3600, ...)",
    )


def _hours(n: int, step_s: float, start_hour: float) -> np.ndarray:
    return (start_hour + np.arange(n) * step_s / 3600.0) % 24.0


def _ar1(rng: np.random.Generator, n: int, sigma: float, step_s: float, tau_s: float) -> np.ndarray:
    """Red noise: weather wanders over ~tau, it does not jitter sample to sample."""
    phi = math.exp(-step_s / tau_s)
    e = rng.standard_normal(n) * sigma * math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    acc = rng.standard_normal() * sigma
    for k in range(n):
        acc = phi * acc + e[k]
        out[k] = acc
    return out


def _circ(hours: np.ndarray, centre: float) -> np.ndarray:
    """Signed hours from ``centre`` on the 24 h clock (-12..12)."""
    return (hours - centre + 12.0) % 24.0 - 12.0


@dataclass(frozen=True)
class SyntheticWeather:
    """Deterministic synthetic weather: a diurnal cycle, red noise, sun.

    Ambient follows a half-cosine from ``min_c`` at ``min_hour`` (around
    sunrise) up to ``max_c`` at ``peak_hour`` (mid-afternoon) and back; noise
    is red with ``noise_c`` standard deviation; the result is clipped to
    ``min_c..max_c`` so the bounds are a promise. GHI is a clear-sky bell
    between ``sunrise_hour`` and ``sunset_hour`` with peak ``ghi_peak_wm2``,
    attenuated by random clouds (``cloudiness`` 0 = clear, 1 = overcast
    possible). RH runs opposite to temperature between ``rh_min_pct`` (at the
    hottest) and ``rh_max_pct`` (at the coldest). The same seed gives the
    same weather.
    """

    seed: int = 0
    min_c: float = 12.0
    max_c: float = 24.0
    min_hour: float = 5.0
    peak_hour: float = 15.0
    noise_c: float = 0.4
    rh_min_pct: float = 40.0
    rh_max_pct: float = 85.0
    ghi_peak_wm2: float = 800.0
    sunrise_hour: float = 6.0
    sunset_hour: float = 20.0
    cloudiness: float = 0.0
    step_s: float = 300.0

    def __post_init__(self) -> None:
        _check_seed(self.seed)
        lo, hi = AMBIENT_RANGE_C
        for name in ("min_c", "max_c"):
            v = getattr(self, name)
            require(lo <= v <= hi, name, f"{v:g} °C is outside {lo:g}..{hi:g} °C")
        require(self.min_c <= self.max_c, "max_c", f"{self.max_c:g} is below min_c {self.min_c:g}")
        _check_hour(self.min_hour, "min_hour")
        _check_hour(self.peak_hour, "peak_hour")
        require(self.min_hour != self.peak_hour, "peak_hour", "must differ from min_hour")
        require(0.0 <= self.noise_c <= 10.0, "noise_c", f"{self.noise_c:g} must be 0..10 K")
        for name in ("rh_min_pct", "rh_max_pct"):
            v = getattr(self, name)
            require(0.0 <= v <= 100.0, name, f"{v:g} % is outside 0..100 %")
        require(
            self.rh_min_pct <= self.rh_max_pct,
            "rh_max_pct",
            f"{self.rh_max_pct:g} is below rh_min_pct {self.rh_min_pct:g}",
        )
        glo, ghi = GHI_RANGE_WM2
        require(
            glo <= self.ghi_peak_wm2 <= ghi,
            "ghi_peak_wm2",
            f"{self.ghi_peak_wm2:g} W/m² is outside {glo:g}..{ghi:g} W/m²",
        )
        _check_hour(self.sunrise_hour, "sunrise_hour")
        require(
            self.sunrise_hour < self.sunset_hour <= 24.0,
            "sunset_hour",
            f"{self.sunset_hour:g} must be after sunrise_hour {self.sunrise_hour:g} and <= 24",
        )
        require(0.0 <= self.cloudiness <= 1.0, "cloudiness", f"{self.cloudiness:g} must be 0..1")
        _check_step(self.step_s)

    def generate(
        self, duration_s: float, *, start: datetime | None = None, start_hour: float = 0.0
    ) -> Weather:
        """Weather for at least ``duration_s``, wrapping every whole day after.

        ``start_hour`` is the local time of day at ``t = 0`` (0 = midnight).
        The series covers whole days and wraps, so a simulation running past
        ``duration_s`` keeps a daily cycle instead of a frozen value.
        """
        days = max(1, math.ceil(duration_s / DAY_S - 1e-9))
        n = round(days * DAY_S / self.step_s)
        t = np.arange(n) * self.step_s
        h = _hours(n, self.step_s, start_hour)
        rng = np.random.default_rng(self.seed)
        span = self.max_c - self.min_c
        rise = (self.peak_hour - self.min_hour) % 24.0
        x = (h - self.min_hour) % 24.0
        up = x < rise
        shape = np.where(
            up,
            (1.0 - np.cos(np.pi * x / rise)) / 2.0,
            (1.0 + np.cos(np.pi * (x - rise) / (24.0 - rise))) / 2.0,
        )
        noise = _ar1(rng, n, self.noise_c, self.step_s, 3600.0) if self.noise_c else np.zeros(n)
        ambient = np.clip(self.min_c + span * shape + noise, self.min_c, self.max_c)

        rel = (ambient - self.min_c) / span if span > 0 else np.full(n, 0.5)
        rh = self.rh_max_pct - (self.rh_max_pct - self.rh_min_pct) * rel

        day_len = self.sunset_hour - self.sunrise_hour
        phase = (h - self.sunrise_hour) / day_len
        bell = np.where((phase > 0) & (phase < 1), np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)
        clouds = 1.0 / (1.0 + np.exp(-2.0 * _ar1(rng, n, 1.0, self.step_s, 1800.0)))
        ghi = self.ghi_peak_wm2 * bell**1.5 * (1.0 - self.cloudiness * clouds)

        period = days * DAY_S

        def ts(v: np.ndarray, name: str) -> TimeSeries:
            return TimeSeries(t, v, start=start, wrap=True, period_s=period, name=name)

        return Weather(ts(ambient, "ambient_c"), ts(ghi, "ghi_wm2"), ts(rh, "rh_pct"))


@dataclass(frozen=True)
class SyntheticPrices:
    """Deterministic synthetic day-ahead prices (per MWh, step-interpolated).

    ``base_per_mwh`` plus Gaussian morning and evening peaks (``*_peak_per_mwh``
    at ``*_peak_hour``, width ``peak_width_h``), minus an optional midday
    solar dip (``solar_dip_per_mwh`` at 13:00) that can push the price below
    zero as it does on sunny days with much PV, plus white noise and random
    spikes (``spikes_per_day`` expected, each ``+spike_per_mwh``).
    """

    seed: int = 0
    base_per_mwh: float = 60.0
    morning_peak_per_mwh: float = 25.0
    morning_peak_hour: float = 8.0
    evening_peak_per_mwh: float = 50.0
    evening_peak_hour: float = 19.0
    peak_width_h: float = 1.5
    solar_dip_per_mwh: float = 0.0
    noise_per_mwh: float = 3.0
    spikes_per_day: float = 0.0
    spike_per_mwh: float = 400.0
    step_s: float = 3600.0

    def __post_init__(self) -> None:
        _check_seed(self.seed)
        for f in fields(self):
            if f.name.endswith("_per_mwh"):
                v = getattr(self, f.name)
                require(
                    abs(v) <= PRICE_ABS_MAX, f.name, f"{v:g} is beyond ±{PRICE_ABS_MAX:g} per MWh"
                )
        for name in ("morning_peak_per_mwh", "evening_peak_per_mwh", "solar_dip_per_mwh"):
            require(getattr(self, name) >= 0, name, "must be >= 0 (it is added or subtracted)")
        _check_hour(self.morning_peak_hour, "morning_peak_hour")
        _check_hour(self.evening_peak_hour, "evening_peak_hour")
        require(0.25 <= self.peak_width_h <= 6.0, "peak_width_h", "must be 0.25..6 h")
        require(self.noise_per_mwh >= 0, "noise_per_mwh", "must be >= 0")
        require(0.0 <= self.spikes_per_day <= 24.0, "spikes_per_day", "must be 0..24")
        _check_step(self.step_s)

    def generate(
        self, duration_s: float, *, start: datetime | None = None, start_hour: float = 0.0
    ) -> TimeSeries:
        """Prices for at least ``duration_s`` in whole days, wrapping after."""
        days = max(1, math.ceil(duration_s / DAY_S - 1e-9))
        per_day = round(DAY_S / self.step_s)
        n = days * per_day
        t = np.arange(n) * self.step_s
        # Price of an interval = shape at its middle, as a market clears it.
        h = (_hours(n, self.step_s, start_hour) + self.step_s / 7200.0) % 24.0
        rng = np.random.default_rng(self.seed)

        def bump(centre: float, width: float) -> np.ndarray:
            return np.exp(-0.5 * (_circ(h, centre) / width) ** 2)

        p = (
            self.base_per_mwh
            + self.morning_peak_per_mwh * bump(self.morning_peak_hour, self.peak_width_h)
            + self.evening_peak_per_mwh * bump(self.evening_peak_hour, self.peak_width_h)
            - self.solar_dip_per_mwh * bump(13.0, 2.5)
            + rng.standard_normal(n) * self.noise_per_mwh
        )
        counts = rng.poisson(self.spikes_per_day, size=days)
        for d, k in enumerate(counts):
            k = min(int(k), per_day)
            if k:
                hit = rng.choice(per_day, size=k, replace=False)
                p[d * per_day + hit] += self.spike_per_mwh
        p = np.clip(p, -PRICE_ABS_MAX, PRICE_ABS_MAX)
        return TimeSeries(
            t,
            p,
            start=start,
            wrap=True,
            period_s=days * DAY_S,
            interpolation="step",
            name="price_per_mwh",
        )
