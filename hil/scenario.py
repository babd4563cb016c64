"""Scenario inputs of the simulated plant: weather, prices, grid events, faults.

A scenario is everything the plant is *given* rather than computes: the
outdoor weather its dry coolers reject heat into, the market price the
controller trades power against, the signals a demand-response program sends,
and the equipment faults to inject. It is independent of the site: fault
targets are parsed to ``(category, name)`` here and checked against the site
by the plant, so a scenario file can be written before the site exists.

Time
    Simulation time ``t`` is seconds from the scenario start (``t = 0``).
    Series loaded from CSV keep seconds relative to their first sample plus the
    absolute ``start`` (``datetime`` or ``None`` when the file counts seconds).
    When both the scenario start and a series' start are absolute, the scenario
    aligns them by absolute time (``weather_offset_s`` / ``price_offset_s``).

Beyond the end of a series
    Without ``wrap`` a series holds its first value before the first sample and
    its last value after the last one (clamped). With ``wrap`` the series
    repeats with period ``period_s``, which defaults to the span of the samples
    plus the last sample interval: an hourly file 00:00 … 23:00 repeats every
    24 h, interpolating from the 23:00 value back to the 00:00 value. If a file
    already closes its cycle (00:00 … 24:00), pass ``period_s`` = its duration.

Entry points: :func:`load_scenario`, :func:`parse_scenario`,
:func:`list_builtin_scenarios`, :func:`load_weather_csv`,
:func:`load_prices_csv`, :class:`SyntheticWeather`, :class:`SyntheticPrices`.
"""

from __future__ import annotations

import bisect
import csv
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np

from thermogate.plc.config import type_name
from thermogate.plc.errors import ConfigError, DataFileError

__all__ = [
    "FAULT_CATEGORIES",
    "FAULT_KINDS",
    "GRID_EVENT_KINDS",
    "CsvSource",
    "FaultSpec",
    "FaultTarget",
    "GridEvent",
    "Scenario",
    "SyntheticPrices",
    "SyntheticWeather",
    "TimeSeries",
    "Weather",
    "WeatherSample",
    "list_builtin_scenarios",
    "load_prices_csv",
    "load_scenario",
    "load_weather_csv",
    "parse_scenario",
]

Interpolation = Literal["linear", "step"]

DAY_S = 86400.0

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


class _FieldError(ValueError):
    """A dataclass field is invalid; the TOML reader maps ``field`` to its key."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field = field_name
        self.reason = reason
        super().__init__(f"{field_name}: {reason}")


def _require(ok: bool, field_name: str, reason: str) -> None:
    if not ok:
        raise _FieldError(field_name, reason)


# =============================================================================
# Time series
# =============================================================================


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
    # at() every tick), arrays for at_many().
    _xp: np.ndarray = field(init=False, repr=False)
    _fp: np.ndarray = field(init=False, repr=False)
    _xl: list[float] = field(init=False, repr=False)
    _fl: list[float] = field(init=False, repr=False)

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
        set_(self, "_xl", xp.tolist())
        set_(self, "_fl", fp.tolist())

    def __len__(self) -> int:
        return int(self.t_s.size)

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
            x %= self.period_s  # Python's % is non-negative for a positive period
        elif x <= 0.0:
            return fl[0]
        elif x >= xl[-1]:
            return fl[-1]
        i = bisect.bisect_right(xl, x) - 1
        if i >= len(xl) - 1:  # only when a wrapped period equals the duration
            return fl[-1]
        if self.interpolation == "step":
            return fl[i]
        x0, x1 = xl[i], xl[i + 1]
        return fl[i] + (fl[i + 1] - fl[i]) * (x - x0) / (x1 - x0)

    def at_many(self, t_seconds: np.ndarray | Sequence[float]) -> np.ndarray:
        """Vectorised :meth:`at` (numpy.interp); same clamping and wrapping."""
        x = np.asarray(t_seconds, dtype=np.float64)
        if self.wrap:
            x = np.mod(x, self.period_s)
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


# =============================================================================
# CSV reading
# =============================================================================


@dataclass(frozen=True)
class _Column:
    name: str
    required: bool
    lo: float
    hi: float
    unit: str = ""
    clamp_from: float | None = None  # values in [clamp_from, lo) become lo


_WEATHER_COLUMNS = (
    _Column("ambient_c", True, *AMBIENT_RANGE_C, unit="°C"),
    _Column("ghi_wm2", False, *GHI_RANGE_WM2, unit="W/m²", clamp_from=GHI_NIGHT_OFFSET_WM2),
    _Column("rh_pct", False, *RH_RANGE_PCT, unit="%"),
)
_PRICE_COLUMNS = (_Column("price_per_mwh", True, -PRICE_ABS_MAX, PRICE_ABS_MAX, unit="/MWh"),)

# Optional cells spelled like this are "no reading" (station exports use them).
_MISSING_MARKERS = frozenset({"", "nan", "na", "n/a", "null", "none"})
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
# Hourly exports often write the end of the day as 24:00 (hour-ending convention).
_HOUR_24 = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ]24:00(?::00(?:\.0+)?)?(.*)$")


def _decode(label: str, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # "Unicode text" exports: UTF-16 with BOM
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataFileError(label, None, None, f"invalid UTF-16 ({exc.reason})") from None
    try:
        return data.decode("utf-8-sig")  # -sig strips the BOM Excel writes
    except UnicodeDecodeError:
        # A Windows-1252 spreadsheet export: only header and comments carry
        # non-ASCII (°, µ), the numbers are ASCII, so Latin-1 reads it safely.
        return data.decode("latin-1")


def _parse_iso(cell: str) -> datetime | None:
    m = _HOUR_24.match(cell)
    if m:
        try:
            day = datetime.fromisoformat(m.group(1) + "T00:00" + m.group(2))
        except ValueError:
            return None
        return day + timedelta(days=1)
    try:
        return datetime.fromisoformat(cell)
    except ValueError:
        return None


def _to_float(cell: str, decimal_comma: bool) -> float | None:
    if decimal_comma:
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        return None


def _read_csv(
    path: str | PathLike[str], columns: Sequence[_Column]
) -> tuple[np.ndarray, datetime | None, dict[str, np.ndarray | None]]:
    """Read ``time`` plus ``columns``; return (t relative, start, values per column).

    Missing optional cells are NaN-filled then interpolated from their
    neighbours; an optional column with no value at all is ``None``.
    """
    label = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataFileError(label, None, None, "file not found") from None
    except IsADirectoryError:
        raise DataFileError(label, None, None, "is a directory, expected a CSV file") from None
    except OSError as exc:
        raise DataFileError(label, None, None, f"cannot read: {exc.strerror}") from None
    text = _decode(label, data)

    # Keep the physical line number of every line that carries data, so every
    # error points at the line a user sees in an editor.
    kept: list[str] = []
    numbers: list[int] = []
    for no, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        s = line.strip()
        if not s or s.startswith("#") or not s.strip(",;\t \"'"):
            continue  # blank, comment, or a row of empty cells
        kept.append(line)
        numbers.append(no)
    if not kept:
        raise DataFileError(label, None, None, "no header line: the file is empty or all comments")

    head = kept[0]
    # Spreadsheets in comma-decimal locales export ';' separated with '12,5'.
    delim = "," if "," in head else ";" if ";" in head else "\t" if "\t" in head else ","
    decimal_comma = delim != ","
    reader = csv.reader(kept, delimiter=delim, skipinitialspace=True)
    header_raw = next(reader)
    header = [h.strip().lower() for h in header_raw]
    while header and not header[-1]:
        header.pop()  # trailing commas
    wanted = {"time"} | {c.name for c in columns}
    idx: dict[str, int] = {}
    for j, h in enumerate(header):
        if h in wanted:
            if h in idx:
                raise DataFileError(
                    label, numbers[0], h, f"column appears twice (fields {idx[h] + 1} and {j + 1})"
                )
            idx[h] = j
    found = ", ".join(repr(h.strip()) for h in header_raw if h.strip()) or "(nothing)"
    for name in ["time"] + [c.name for c in columns if c.required]:
        if name not in idx:
            raise DataFileError(
                label,
                numbers[0],
                name,
                f"missing required column '{name}'; header found: {found} "
                "(the first line that is not blank or a '#' comment is the header)",
            )
    width = len(header)
    ti = idx["time"]
    cols = [(c, idx[c.name]) for c in columns if c.name in idx]

    t_abs: list[float] = []
    t_cells: list[str] = []
    lines: list[int] = []
    vals: dict[str, list[float]] = {c.name: [] for c, _ in cols}
    mode: str | None = None  # "seconds", "naive", "aware"; fixed by the first row
    first_dt: datetime | None = None
    first_line = 0
    for row in reader:
        ln = numbers[reader.line_num - 1]
        if len(row) > width and any(c.strip() for c in row[width:]):
            hint = " (a decimal comma in a comma-separated file?)" if delim == "," else ""
            raise DataFileError(
                label, ln, None, f"row has {len(row)} fields but the header has {width}{hint}"
            )
        cell = row[ti].strip() if ti < len(row) else ""
        if not cell:
            raise DataFileError(label, ln, "time", "empty cell; every row needs a time")
        secs = _to_float(cell, False)
        if secs is not None:
            kind = "seconds"
            if not math.isfinite(secs):
                raise DataFileError(label, ln, "time", f"time {cell!r} is not finite")
            value = secs
            dt = None
        else:
            dt = _parse_iso(cell)
            if dt is None:
                raise DataFileError(
                    label,
                    ln,
                    "time",
                    f"cannot read {cell!r} as a time: expected ISO 8601 "
                    "(2024-07-15T13:00:00Z, 2024-07-15 13:00, 2024-07-15) or seconds",
                )
            if dt.utcoffset() is not None:
                kind = "aware"
                value = (dt - _EPOCH_UTC).total_seconds()
            else:
                kind = "naive"
                value = (dt - _EPOCH_NAIVE).total_seconds()
        if mode is None:
            mode, first_dt, first_line = kind, dt, ln
        elif kind != mode:
            what = {
                "seconds": "seconds",
                "naive": "ISO 8601 without a time zone",
                "aware": "ISO 8601 with a time zone",
            }
            raise DataFileError(
                label,
                ln,
                "time",
                f"time {cell!r} is {what[kind]} but line {first_line} is {what[mode]}; "
                "a file must use one convention",
            )
        t_abs.append(value)
        t_cells.append(cell)
        lines.append(ln)
        for c, j in cols:
            raw = row[j].strip() if j < len(row) else ""
            if raw.lower() in _MISSING_MARKERS:
                if c.required:
                    raise DataFileError(label, ln, c.name, f"empty cell; {c.name} is required")
                vals[c.name].append(math.nan)
                continue
            x = _to_float(raw, decimal_comma)
            if x is None:
                raise DataFileError(label, ln, c.name, f"not a number: {raw!r}")
            if not math.isfinite(x):
                raise DataFileError(label, ln, c.name, f"not a finite number: {raw!r}")
            if c.clamp_from is not None and c.clamp_from <= x < c.lo:
                x = c.lo
            if not c.lo <= x <= c.hi:
                raise DataFileError(
                    label,
                    ln,
                    c.name,
                    f"{x:g}{c.unit} is outside the plausible range "
                    f"{c.lo:g}..{c.hi:g}{c.unit} (wrong unit or a faulty reading?)",
                )
            vals[c.name].append(x)

    if len(t_abs) < 2:
        raise DataFileError(label, None, None, f"needs at least 2 samples, found {len(t_abs)}")
    ta = np.asarray(t_abs, dtype=np.float64)
    bad = np.flatnonzero(np.diff(ta) <= 0)
    if bad.size:
        k = int(bad[0]) + 1
        same = ta[k] == ta[k - 1]
        hint = ""
        if same and mode == "naive":
            hint = (
                " (a repeated local hour is usually the daylight-saving change: "
                "give times in UTC or with an offset)"
            )
        raise DataFileError(
            label,
            lines[k],
            "time",
            f"time {t_cells[k]!r} is {'the same as' if same else 'before'} the previous "
            f"sample {t_cells[k - 1]!r} (line {lines[k - 1]}); times must increase{hint}",
        )
    t_rel = ta - ta[0]
    start: datetime | None = None
    if first_dt is not None:
        start = first_dt.astimezone(UTC) if mode == "aware" else first_dt

    out: dict[str, np.ndarray | None] = {c.name: None for c in columns}
    for c, _ in cols:
        v = np.asarray(vals[c.name], dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            continue  # a column of empty cells is as good as no column
        if not ok.all():
            v = np.interp(t_rel, t_rel[ok], v[ok])
        out[c.name] = v
    return t_rel, start, out


def load_weather_csv(
    path: str | PathLike[str], *, wrap: bool = False, period_s: float | None = None
) -> Weather:
    """Read weather: ``time,ambient_c`` and optional ``ghi_wm2``, ``rh_pct``.

    Raises :class:`DataFileError` naming file, line and column for any problem.
    """
    t, start, cols = _read_csv(path, _WEATHER_COLUMNS)

    def series(name: str) -> TimeSeries | None:
        v = cols[name]
        if v is None:
            return None
        return TimeSeries(t, v, start=start, wrap=wrap, period_s=period_s, name=name)

    ambient = series("ambient_c")
    assert ambient is not None  # required column
    return Weather(ambient, series("ghi_wm2"), series("rh_pct"))


def load_prices_csv(
    path: str | PathLike[str],
    *,
    wrap: bool = False,
    period_s: float | None = None,
    interpolation: Interpolation = "step",
) -> TimeSeries:
    """Read market prices: ``time,price_per_mwh`` (negative prices allowed).

    ``interpolation`` defaults to ``"step"``: a day-ahead price is the price
    for the whole interval that starts at its timestamp, not a ramp to the
    next one.
    """
    t, start, cols = _read_csv(path, _PRICE_COLUMNS)
    v = cols["price_per_mwh"]
    assert v is not None  # required column
    return TimeSeries(
        t,
        v,
        start=start,
        wrap=wrap,
        period_s=period_s,
        interpolation=interpolation,
        name="price_per_mwh",
    )


# =============================================================================
# Synthetic generators
# =============================================================================


def _check_hour(value: float, name: str) -> None:
    _require(0.0 <= value < 24.0, name, f"{value:g} is not an hour of the day (0 <= h < 24)")


def _check_step(step_s: float) -> None:
    # Whole samples per day keep the daily cycle exact when the series wraps.
    n = DAY_S / step_s if step_s > 0 else 0.0
    _require(
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
        _require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            "seed",
            "must be a non-negative integer",
        )
        lo, hi = AMBIENT_RANGE_C
        for name in ("min_c", "max_c"):
            v = getattr(self, name)
            _require(lo <= v <= hi, name, f"{v:g} °C is outside {lo:g}..{hi:g} °C")
        _require(self.min_c <= self.max_c, "max_c", f"{self.max_c:g} is below min_c {self.min_c:g}")
        _check_hour(self.min_hour, "min_hour")
        _check_hour(self.peak_hour, "peak_hour")
        _require(self.min_hour != self.peak_hour, "peak_hour", "must differ from min_hour")
        _require(0.0 <= self.noise_c <= 10.0, "noise_c", f"{self.noise_c:g} must be 0..10 K")
        for name in ("rh_min_pct", "rh_max_pct"):
            v = getattr(self, name)
            _require(0.0 <= v <= 100.0, name, f"{v:g} % is outside 0..100 %")
        _require(
            self.rh_min_pct <= self.rh_max_pct,
            "rh_max_pct",
            f"{self.rh_max_pct:g} is below rh_min_pct {self.rh_min_pct:g}",
        )
        glo, ghi = GHI_RANGE_WM2
        _require(
            glo <= self.ghi_peak_wm2 <= ghi,
            "ghi_peak_wm2",
            f"{self.ghi_peak_wm2:g} W/m² is outside {glo:g}..{ghi:g} W/m²",
        )
        _check_hour(self.sunrise_hour, "sunrise_hour")
        _require(
            self.sunrise_hour < self.sunset_hour <= 24.0,
            "sunset_hour",
            f"{self.sunset_hour:g} must be after sunrise_hour {self.sunrise_hour:g} and <= 24",
        )
        _require(0.0 <= self.cloudiness <= 1.0, "cloudiness", f"{self.cloudiness:g} must be 0..1")
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
        _require(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            "seed",
            "must be a non-negative integer",
        )
        for f in fields(self):
            if f.name.endswith("_per_mwh"):
                v = getattr(self, f.name)
                _require(
                    abs(v) <= PRICE_ABS_MAX, f.name, f"{v:g} is beyond ±{PRICE_ABS_MAX:g} per MWh"
                )
        for name in ("morning_peak_per_mwh", "evening_peak_per_mwh", "solar_dip_per_mwh"):
            _require(getattr(self, name) >= 0, name, "must be >= 0 (it is added or subtracted)")
        _check_hour(self.morning_peak_hour, "morning_peak_hour")
        _check_hour(self.evening_peak_hour, "evening_peak_hour")
        _require(0.25 <= self.peak_width_h <= 6.0, "peak_width_h", "must be 0.25..6 h")
        _require(self.noise_per_mwh >= 0, "noise_per_mwh", "must be >= 0")
        _require(0.0 <= self.spikes_per_day <= 24.0, "spikes_per_day", "must be 0..24")
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


@dataclass(frozen=True)
class CsvSource:
    """A series read from a CSV file (see :func:`load_weather_csv`)."""

    path: Path
    wrap: bool = False
    period_s: float | None = None


WeatherSource = SyntheticWeather | CsvSource
PriceSource = SyntheticPrices | CsvSource


# =============================================================================
# Grid events and faults
# =============================================================================

GridEventKind = Literal["curtail", "frequency", "price"]
#: What demand-response programs actually send: an import limit (curtail), a
#: grid-frequency excursion the site may respond to, and a price signal.
#: No "outage": losing the grid is a power-system failure the controller cannot
#: act on (UPS/generator territory), not a signal it gets to respond to.
GRID_EVENT_KINDS: tuple[str, ...] = ("curtail", "frequency", "price")
FREQUENCY_RANGE_HZ = (45.0, 65.0)

_GRID_PARAMS: dict[str, tuple[str, ...]] = {
    "curtail": ("limit_kw", "limit_fraction"),
    "frequency": ("frequency_hz",),
    "price": ("price_per_mwh",),
}


@dataclass(frozen=True)
class GridEvent:
    """A grid signal active for ``at_s <= t < at_s + duration_s``.

    ``curtail``: import must stay at or below ``limit_kw``, or
    ``limit_fraction`` x the site's import limit (exactly one is set; the
    fraction keeps a scenario independent of the site).
    ``frequency``: grid frequency is ``frequency_hz`` (e.g. 49.8) meanwhile.
    ``price``: the energy price is ``price_per_mwh`` meanwhile (a critical-peak
    or real-time price signal overriding the market series).
    """

    at_s: float
    kind: GridEventKind
    duration_s: float
    limit_kw: float | None = None
    limit_fraction: float | None = None
    frequency_hz: float | None = None
    price_per_mwh: float | None = None

    def __post_init__(self) -> None:
        _require(math.isfinite(self.at_s) and self.at_s >= 0, "at_s", "must be >= 0 s")
        _require(
            self.kind in GRID_EVENT_KINDS,
            "kind",
            f"{self.kind!r} is not one of {', '.join(GRID_EVENT_KINDS)}",
        )
        _require(
            math.isfinite(self.duration_s) and self.duration_s > 0,
            "duration_s",
            f"{self.duration_s:g} must be a positive number of seconds",
        )
        allowed = _GRID_PARAMS[self.kind]
        for name in ("limit_kw", "limit_fraction", "frequency_hz", "price_per_mwh"):
            v = getattr(self, name)
            if v is None:
                continue
            _require(name in allowed, name, f"not a parameter of a {self.kind} event")
            _require(math.isfinite(v), name, "must be finite")
        if self.kind == "curtail":
            _require(
                (self.limit_kw is None) != (self.limit_fraction is None),
                "limit_kw",
                "a curtail event needs exactly one of limit_kw or limit_fraction",
            )
            if self.limit_kw is not None:
                _require(self.limit_kw >= 0, "limit_kw", f"{self.limit_kw:g} kW must be >= 0")
            if self.limit_fraction is not None:
                _require(
                    0.0 <= self.limit_fraction <= 1.0,
                    "limit_fraction",
                    f"{self.limit_fraction:g} must be 0..1 (of the site's import limit)",
                )
        elif self.kind == "frequency":
            lo, hi = FREQUENCY_RANGE_HZ
            _require(self.frequency_hz is not None, "frequency_hz", "required for this kind")
            assert self.frequency_hz is not None
            _require(
                lo <= self.frequency_hz <= hi,
                "frequency_hz",
                f"{self.frequency_hz:g} Hz is outside {lo:g}..{hi:g} Hz",
            )
        else:
            _require(self.price_per_mwh is not None, "price_per_mwh", "required for this kind")
            assert self.price_per_mwh is not None
            _require(
                abs(self.price_per_mwh) <= PRICE_ABS_MAX,
                "price_per_mwh",
                f"beyond ±{PRICE_ABS_MAX:g}",
            )

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    def active(self, t_seconds: float) -> bool:
        return self.at_s <= t_seconds < self.end_s

    def import_limit_kw(self, site_import_limit_kw: float) -> float:
        """The kW limit of a curtail event for a site with this import limit."""
        if self.kind != "curtail":
            raise ValueError(f"a {self.kind} event has no import limit")
        if self.limit_kw is not None:
            return self.limit_kw
        assert self.limit_fraction is not None
        return self.limit_fraction * site_import_limit_kw


FaultCategory = Literal["pump", "fan", "sensor", "device", "leak"]


class _Param(NamedTuple):
    required: bool
    integer: bool = False
    choices: tuple[int, ...] = ()
    positive: bool = False
    nonzero: bool = False
    hi: float = math.inf


#: Modbus exception codes a real device can return (spec V1.1b3 §7).
MODBUS_EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 8, 10, 11)

# category -> kind -> parameter -> spec. Only parameters the plant acts on
# (hil/sensors.py, hil/plant.py, hil/modbus_server.py) are accepted, so none
# is silently ignored. While the fault is active:
#   pump/fan trip: the VFD (a pump, or a dry cooler's fans) trips and stops.
#   sensor stuck: the reading freezes at its value when the fault starts;
#     drift: it walks from truth at rate_per_h (sensor units per hour);
#     spike: random single-sample spikes of magnitude, probability p per sample;
#     dropout: the reading is intermittently lost (NaN), probability p;
#     nan: the reading is NaN.
#   device timeout: the Modbus unit does not answer; exception: it answers
#     every request with Modbus exception `code`.
#   leak: coolant leaks at the named tank, loop or CDU.
_FAULT_PARAMS: dict[str, dict[str, dict[str, _Param]]] = {
    "pump": {"trip": {}},
    "fan": {"trip": {}},
    "sensor": {
        "stuck": {},
        "drift": {"rate_per_h": _Param(True, nonzero=True)},
        "spike": {"magnitude": _Param(True, nonzero=True), "p": _Param(False, positive=True, hi=1)},
        "dropout": {"p": _Param(False, positive=True, hi=1)},
        "nan": {},
    },
    "device": {
        "timeout": {},
        "exception": {"code": _Param(True, integer=True, choices=MODBUS_EXCEPTION_CODES)},
    },
    "leak": {"leak": {}},
}
FAULT_CATEGORIES: tuple[str, ...] = tuple(_FAULT_PARAMS)
#: The fault kinds valid for each target category.
FAULT_KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {cat: tuple(kinds) for cat, kinds in _FAULT_PARAMS.items()}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class FaultTarget(NamedTuple):
    """A fault target ``category:name``, e.g. ``("pump", "loop1.pump_a")``."""

    category: str
    name: str

    @classmethod
    def parse(cls, text: str) -> FaultTarget:
        """Parse ``"pump:loop1.pump_a"``; raises ValueError explaining the form."""
        cat, sep, name = text.partition(":")
        cat, name = cat.strip(), name.strip()
        if not sep or not cat or not name:
            raise ValueError(
                f"{text!r} is not 'category:name' (e.g. 'pump:loop1.pump_a'); "
                f"categories: {', '.join(FAULT_CATEGORIES)}"
            )
        if cat not in _FAULT_PARAMS:
            raise ValueError(
                f"unknown category {cat!r} in {text!r}; categories: {', '.join(FAULT_CATEGORIES)}"
            )
        if not _NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid name (letters, digits, _ . -)")
        return cls(cat, name)

    def __str__(self) -> str:
        return f"{self.category}:{self.name}"


@dataclass(frozen=True)
class FaultSpec:
    """A fault injected at ``at_s`` for ``duration_s`` (``None`` = permanent).

    ``target`` accepts a ``"category:name"`` string and is stored parsed.
    ``params`` holds the kind's parameters (see ``_FAULT_PARAMS``: drift
    ``rate_per_h``; spike ``magnitude`` and ``p``; dropout ``p``; exception
    ``code``; the others none); parameters left out take the plant's
    defaults. Whether
    the target exists is the plant's check against its site.
    """

    at_s: float
    target: FaultTarget
    kind: str
    duration_s: float | None = None
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tgt = self.target
        if isinstance(tgt, str):
            try:
                tgt = FaultTarget.parse(tgt)
            except ValueError as exc:
                raise _FieldError("target", str(exc)) from None
        elif not isinstance(tgt, FaultTarget):
            tgt = FaultTarget.parse(f"{tgt[0]}:{tgt[1]}")
        object.__setattr__(self, "target", tgt)
        _require(math.isfinite(self.at_s) and self.at_s >= 0, "at_s", "must be >= 0 s")
        kinds = _FAULT_PARAMS[tgt.category]
        _require(
            self.kind in kinds,
            "kind",
            f"{self.kind!r} is not a {tgt.category} fault; {tgt.category} faults: "
            f"{', '.join(kinds)}",
        )
        if self.duration_s is not None:
            _require(
                math.isfinite(self.duration_s) and self.duration_s > 0,
                "duration_s",
                f"{self.duration_s:g} must be a positive number of seconds (omit it: permanent)",
            )
        spec = kinds[self.kind]
        params = dict(self.params)
        for name, v in params.items():
            key = f"params.{name}"
            _require(
                name in spec,
                key,
                f"not a parameter of a {tgt.category} {self.kind} fault; "
                f"parameters: {', '.join(spec) or 'none'}",
            )
            p = spec[name]
            _require(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                key,
                f"expected a finite number, got {v!r}",
            )
            if p.integer:
                _require(float(v).is_integer(), key, f"{v!r} must be an integer")
                params[name] = v = int(v)
            if p.choices:
                _require(v in p.choices, key, f"{v} is not one of {p.choices}")
            if p.positive:
                _require(v > 0, key, f"{v:g} must be > 0")
            _require(v <= p.hi, key, f"{v:g} must be <= {p.hi:g}")
            if p.nonzero:
                _require(v != 0, key, "must not be 0")
        for name, p in spec.items():
            _require(not p.required or name in params, f"params.{name}", "required for this kind")
        object.__setattr__(self, "params", MappingProxyType(params))

    @property
    def category(self) -> str:
        return self.target.category

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def permanent(self) -> bool:
        return self.duration_s is None

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.at_s + self.duration_s

    def active(self, t_seconds: float) -> bool:
        return self.at_s <= t_seconds < self.end_s


# =============================================================================
# Scenario
# =============================================================================


@dataclass(frozen=True, eq=False)
class Scenario:
    """A resolved scenario: series loaded, times in seconds from the start.

    ``weather_offset_s``/``price_offset_s`` map scenario time to series time
    (non-zero only when both have absolute starts that differ).
    ``initial`` maps dotted names (``tank01.fluid_temp_c``) to starting values;
    the plant checks the names against its site.
    """

    name: str
    weather: Weather
    prices: TimeSeries
    duration_s: float = DAY_S
    description: str = ""
    grid_events: tuple[GridEvent, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    initial: Mapping[str, float] = field(default_factory=dict)
    start: datetime | None = None
    weather_offset_s: float = 0.0
    price_offset_s: float = 0.0
    weather_source: WeatherSource | None = None
    price_source: PriceSource | None = None
    source: str = ""

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.duration_s) and self.duration_s > 0,
            "duration_s",
            "must be a positive number of seconds",
        )
        # Sorted so the plant can walk events in order with one cursor.
        object.__setattr__(
            self, "grid_events", tuple(sorted(self.grid_events, key=lambda e: e.at_s))
        )
        object.__setattr__(self, "faults", tuple(sorted(self.faults, key=lambda f: f.at_s)))
        object.__setattr__(self, "initial", MappingProxyType(dict(self.initial)))

    def weather_at(self, t_seconds: float) -> WeatherSample:
        return self.weather.at(t_seconds + self.weather_offset_s)

    def market_price_at(self, t_seconds: float) -> float:
        """The market series' price per MWh, ignoring price events."""
        return self.prices.at(t_seconds + self.price_offset_s)

    def price_at(self, t_seconds: float) -> float:
        """Price per MWh: an active price event (the latest started) else market."""
        for ev in reversed(self.grid_events):
            if ev.kind == "price" and ev.active(t_seconds):
                assert ev.price_per_mwh is not None
                return ev.price_per_mwh
        return self.market_price_at(t_seconds)

    def grid_events_at(self, t_seconds: float) -> tuple[GridEvent, ...]:
        return tuple(e for e in self.grid_events if e.active(t_seconds))

    def faults_at(self, t_seconds: float) -> tuple[FaultSpec, ...]:
        return tuple(f for f in self.faults if f.active(t_seconds))

    def import_limit_kw_at(self, t_seconds: float, site_import_limit_kw: float) -> float:
        """The site's import limit, lowered by any active curtail events."""
        limit = site_import_limit_kw
        for e in self.grid_events:
            if e.kind == "curtail" and e.active(t_seconds):
                limit = min(limit, e.import_limit_kw(site_import_limit_kw))
        return limit

    def frequency_hz_at(self, t_seconds: float, nominal_hz: float = 50.0) -> float:
        """Grid frequency: an active frequency event's value else nominal."""
        for e in reversed(self.grid_events):
            if e.kind == "frequency" and e.active(t_seconds):
                assert e.frequency_hz is not None
                return e.frequency_hz
        return nominal_hz


# =============================================================================
# TOML reading
# =============================================================================

_TOP_KEYS = (
    "name",
    "description",
    "duration_s",
    "duration",
    "start",
    "weather",
    "prices",
    "grid_events",
    "faults",
    "initial",
)
_CSV_KEYS = ("source", "path", "wrap", "period_s")
_EVENT_KEYS = ("at_s", "at", "kind", "duration_s", "params")
_FAULT_KEYS = ("at_s", "at", "target", "kind", "duration_s", "params")
_SCENARIO_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_HHMM_RE = re.compile(r"^(\d+):([0-5]\d)(?::([0-5]\d(?:\.\d+)?))?$")
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
_BUILTIN_PACKAGE = "thermogate.hil.data"


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Reader:
    """Typed access to the parsed TOML with errors naming file and key."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.file, key, reason)

    def table(self, val: object, key: str) -> dict[str, Any]:
        if not isinstance(val, dict):
            raise self.error(key, f"expected a table, got {type_name(val)}")
        return val

    def only(self, tbl: Mapping[str, Any], prefix: str, allowed: Sequence[str]) -> None:
        for k in tbl:
            if k not in allowed:
                raise self.error(
                    _key(prefix, k),
                    f"unknown key (check the spelling); allowed: {', '.join(allowed)}",
                )

    def number(self, val: object, key: str, *, positive: bool = False) -> float:
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise self.error(key, f"expected a number, got {type_name(val)}")
        x = float(val)
        if not math.isfinite(x):
            raise self.error(key, f"expected a finite number, got {x}")
        if positive and x <= 0:
            raise self.error(key, f"{x:g} must be a positive number of seconds")
        return x

    def integer(self, val: object, key: str) -> int:
        if isinstance(val, bool) or not isinstance(val, int):
            raise self.error(key, f"expected an integer, got {type_name(val)}")
        return val

    def string(self, val: object, key: str) -> str:
        if not isinstance(val, str):
            raise self.error(key, f"expected a string, got {type_name(val)}")
        return val

    def boolean(self, val: object, key: str) -> bool:
        if not isinstance(val, bool):
            raise self.error(key, f"expected true or false, got {type_name(val)}")
        return val

    def offset(self, val: object, key: str) -> float:
        """A duration/offset: seconds, 'HH:MM[:SS]' or ISO 8601 'PT2H30M'."""
        if isinstance(val, time):  # TOML local time `at = 18:00:00`
            return val.hour * 3600.0 + val.minute * 60.0 + val.second + val.microsecond / 1e6
        if isinstance(val, str):
            secs = _parse_offset(val)
            if secs is not None:
                return secs
        raise self.error(
            key, f"expected 'HH:MM[:SS]' or an ISO 8601 duration, got {type_name(val)}"
        )

    def moment(self, val: object, key: str) -> float | datetime:
        """``at``: an offset from the start, or an absolute date-time."""
        if isinstance(val, datetime):
            return val
        if isinstance(val, date):
            return datetime(val.year, val.month, val.day)
        if isinstance(val, str):
            secs = _parse_offset(val)
            if secs is not None:
                return secs
            dt = _parse_iso(val.strip())
            if dt is not None:
                return dt
        if isinstance(val, time):
            return self.offset(val, key)
        raise self.error(
            key,
            f"expected an offset from the start ('18:00', 'PT2H') or an ISO date-time, "
            f"got {type_name(val)}",
        )


def _parse_offset(text: str) -> float | None:
    s = text.strip()
    m = _HHMM_RE.match(s)
    if m:
        return int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0 + float(m.group(3) or 0)
    m = _ISO_DURATION_RE.match(s)
    if m and any(m.groupdict().values()) and not s.upper().endswith("T"):
        g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        return g["w"] * 7 * DAY_S + g["d"] * DAY_S + g["h"] * 3600 + g["m"] * 60 + g["s"]
    return None


def _norm(dt: datetime) -> datetime:
    return dt.astimezone(UTC) if dt.utcoffset() is not None else dt


def _aware(dt: datetime) -> bool:
    return dt.utcoffset() is not None


def _synthetic(
    rd: _Reader, tbl: Mapping[str, Any], prefix: str, cls: type[SyntheticWeather | SyntheticPrices]
) -> SyntheticWeather | SyntheticPrices:
    names = [f.name for f in fields(cls)]
    rd.only(tbl, prefix, ["source", *names])
    kwargs: dict[str, Any] = {}
    for k, v in tbl.items():
        if k == "source":
            continue
        key = _key(prefix, k)
        kwargs[k] = rd.integer(v, key) if k == "seed" else rd.number(v, key)
    try:
        return cls(**kwargs)
    except _FieldError as exc:
        raise rd.error(_key(prefix, exc.field), exc.reason) from None


def _source(
    rd: _Reader,
    raw: object,
    prefix: str,
    base_dir: Path | None,
    cls: type[SyntheticWeather | SyntheticPrices],
    overridden: bool = False,
) -> SyntheticWeather | SyntheticPrices | CsvSource:
    if raw is None:
        return cls()
    tbl = rd.table(raw, prefix)
    kind = rd.string(tbl.get("source", "synthetic"), _key(prefix, "source"))
    if kind == "synthetic":
        return _synthetic(rd, tbl, prefix, cls)
    if kind != "csv":
        raise rd.error(_key(prefix, "source"), f"{kind!r} is not 'synthetic' or 'csv'")
    rd.only(tbl, prefix, _CSV_KEYS)
    if "path" not in tbl:
        raise rd.error(_key(prefix, "path"), "required when source = 'csv'")
    p = Path(rd.string(tbl["path"], _key(prefix, "path")))
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p  # relative to the scenario file, not the working directory
    if not overridden and not p.is_file():
        raise rd.error(_key(prefix, "path"), f"file not found: {p}")
    wrap = rd.boolean(tbl.get("wrap", False), _key(prefix, "wrap"))
    period = tbl.get("period_s")
    period_s = (
        None if period is None else rd.number(period, _key(prefix, "period_s"), positive=True)
    )
    return CsvSource(p, wrap, period_s)


def _params(rd: _Reader, raw: object, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    tbl = rd.table(raw, key)
    for k, v in tbl.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise rd.error(f"{key}.{k}", f"expected a number, got {type_name(v)}")
    return dict(tbl)


def _at(rd: _Reader, tbl: Mapping[str, Any], prefix: str) -> tuple[float | datetime, str]:
    if "at_s" in tbl and "at" in tbl:
        raise rd.error(_key(prefix, "at"), "give at_s or at, not both")
    if "at_s" in tbl:
        key = _key(prefix, "at_s")
        x = rd.number(tbl["at_s"], key)
        if x < 0:
            raise rd.error(key, f"{x:g} must be >= 0 s")
        return x, key
    if "at" in tbl:
        key = _key(prefix, "at")
        return rd.moment(tbl["at"], key), key
    raise rd.error(_key(prefix, "at_s"), "required: when it happens (at_s = seconds, or at)")


def _list_of_tables(rd: _Reader, raw: object, key: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise rd.error(key, f"expected an array of tables ([[{key}]]), got {type_name(raw)}")
    return [rd.table(v, f"{key}[{i}]") for i, v in enumerate(raw)]


def _flatten_initial(rd: _Reader, raw: object, prefix: str = "") -> dict[str, float]:
    # Unquoted dotted keys (tank01.fluid_temp_c = 45) arrive as nested tables;
    # flatten them back to the dotted name the plant looks up.
    out: dict[str, float] = {}
    tbl = rd.table(raw, _key("initial", prefix))
    for k, v in tbl.items():
        name = _key(prefix, k)
        if isinstance(v, dict):
            out.update(_flatten_initial(rd, v, name))
            continue
        if not _NAME_RE.match(name):
            raise rd.error(f"initial.{name}", "invalid name (letters, digits, _ . -)")
        out[name] = rd.number(v, f"initial.{name}")
    return out


def _start_hour(dt: datetime | None) -> float:
    # Wall-clock time of day as written, before any UTC conversion: that is
    # the local time the synthetic diurnal cycle is about.
    if dt is None:
        return 0.0
    return dt.hour + dt.minute / 60.0 + dt.second / 3600.0


def _offset_between(
    rd: _Reader, key: str, scenario_start: datetime | None, series_start: datetime | None
) -> float:
    if scenario_start is None or series_start is None:
        return 0.0
    if _aware(scenario_start) != _aware(series_start):
        raise rd.error(
            key,
            "cannot align by absolute time: one of the scenario start "
            f"({scenario_start.isoformat()}) and this series' start "
            f"({series_start.isoformat()}) has a time zone and the other does not",
        )
    return (_norm(scenario_start) - _norm(series_start)).total_seconds()


def _coverage_problem(series: TimeSeries, offset: float, duration: float) -> str | None:
    if series.wrap:
        return None
    t = series.t_s
    cover = float(t[-1] + (t[-1] - t[-2]))  # the last sample stands for one interval
    if offset < -1e-6:
        return f"starts {-offset:g} s after the scenario start"
    if offset + duration > cover + 1e-6:
        return (
            f"covers {cover / 3600:g} h from the scenario start but the scenario runs "
            f"{duration / 3600:g} h; set wrap to repeat it, or shorten the duration"
        )
    return None


def parse_scenario(
    text: str,
    file: str = "<string>",
    *,
    base_dir: str | PathLike[str] | None = None,
    weather_csv: str | PathLike[str] | None = None,
    prices_csv: str | PathLike[str] | None = None,
    wrap: bool | None = None,
) -> Scenario:
    """Parse scenario TOML ``text`` (``file`` names it in errors).

    Relative CSV paths in the TOML resolve against ``base_dir``.
    ``weather_csv``/``prices_csv`` replace the file's weather/price source;
    ``wrap`` applies to those (None: the file's own ``wrap``, else false).
    """
    rd = _Reader(file)
    try:
        root = tomllib.loads(text.removeprefix("\ufeff"))  # Notepad writes a BOM
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"TOML syntax error: {exc}") from None
    rd.only(root, "", _TOP_KEYS)
    base = Path(base_dir) if base_dir is not None else None

    default_name = Path(file).stem.removeprefix("scenario_") if file[:1] != "<" else "scenario"
    name = rd.string(root.get("name", default_name), "name")
    if not _SCENARIO_NAME_RE.match(name):
        raise rd.error("name", f"{name!r}: use lowercase letters, digits, '-' and '_'")
    description = rd.string(root.get("description", ""), "description")
    if "duration_s" in root and "duration" in root:
        raise rd.error("duration", "give duration_s or duration, not both")
    if "duration" in root:
        duration = rd.offset(root["duration"], "duration")
        if duration <= 0:
            raise rd.error("duration", "must be positive")
    else:
        duration = rd.number(root.get("duration_s", DAY_S), "duration_s", positive=True)

    start_raw = root.get("start")
    start_given: datetime | None = None
    if start_raw is not None:
        moment = rd.moment(start_raw, "start")
        if not isinstance(moment, datetime):
            raise rd.error("start", "expected a date-time such as 2024-07-15T00:00:00Z")
        start_given = moment

    w_override = weather_csv is not None
    p_override = prices_csv is not None
    # The file's sources are validated even when replaced: a typo stays an error.
    wsrc = _source(rd, root.get("weather"), "weather", base, SyntheticWeather, w_override)
    psrc = _source(rd, root.get("prices"), "prices", base, SyntheticPrices, p_override)
    if weather_csv is not None:
        inherit = wsrc.wrap if isinstance(wsrc, CsvSource) else False
        wsrc = CsvSource(Path(weather_csv), inherit if wrap is None else wrap)
    if prices_csv is not None:
        inherit = psrc.wrap if isinstance(psrc, CsvSource) else False
        psrc = CsvSource(Path(prices_csv), inherit if wrap is None else wrap)

    weather = (
        load_weather_csv(wsrc.path, wrap=wsrc.wrap, period_s=wsrc.period_s)
        if isinstance(wsrc, CsvSource)
        else None
    )
    prices = (
        load_prices_csv(psrc.path, wrap=psrc.wrap, period_s=psrc.period_s)
        if isinstance(psrc, CsvSource)
        else None
    )
    # t = 0 is the explicit start, else the first weather sample, else prices'.
    start = start_given
    for series in (weather.ambient_c if weather else None, prices):
        if start is None and series is not None and series.start is not None:
            start = series.start
    hour0 = _start_hour(start_given if start_given is not None else start)
    if start is not None:
        start = _norm(start)
    if weather is None:
        assert isinstance(wsrc, SyntheticWeather)
        weather = wsrc.generate(duration, start=start, start_hour=hour0)
    if prices is None:
        assert isinstance(psrc, SyntheticPrices)
        prices = psrc.generate(duration, start=start, start_hour=hour0)

    w_off = _offset_between(rd, "weather", start, weather.start)
    p_off = _offset_between(rd, "prices", start, prices.start)
    for series, off, src, override, key in (
        (weather.ambient_c, w_off, wsrc, w_override, "weather"),
        (prices, p_off, psrc, p_override, "prices"),
    ):
        problem = _coverage_problem(series, off, duration)
        if problem is None:
            continue
        assert isinstance(src, CsvSource)
        if override:
            raise DataFileError(str(src.path), None, None, problem.replace("set wrap", "pass wrap"))
        raise rd.error(f"{key}.path", f"{src.path.name} {problem}")

    def resolve(at: float | datetime, key: str) -> float:
        if isinstance(at, datetime):
            if start is None:
                raise rd.error(
                    key,
                    "an absolute time needs a scenario start: set start, use a CSV with "
                    "ISO times, or give an offset such as '18:00' or at_s",
                )
            if _aware(at) != _aware(start):
                raise rd.error(
                    key, "has a time zone and the scenario start does not, or vice versa"
                )
            secs = (_norm(at) - start).total_seconds()
            if secs < 0:
                raise rd.error(key, f"is {-secs:g} s before the scenario start {start.isoformat()}")
        else:
            secs = at
        if secs >= duration:
            raise rd.error(
                key,
                f"at {secs:g} s it is not before the end of the scenario ({duration:g} s); "
                "lengthen the duration",
            )
        return secs

    events: list[GridEvent] = []
    for i, tbl in enumerate(_list_of_tables(rd, root.get("grid_events"), "grid_events")):
        prefix = f"grid_events[{i}]"
        rd.only(tbl, prefix, _EVENT_KEYS)
        at, at_key = _at(rd, tbl, prefix)
        at_s = resolve(at, at_key)
        if "kind" not in tbl:
            raise rd.error(_key(prefix, "kind"), f"required: one of {', '.join(GRID_EVENT_KINDS)}")
        kind = rd.string(tbl["kind"], _key(prefix, "kind"))
        if kind not in GRID_EVENT_KINDS:
            raise rd.error(
                _key(prefix, "kind"), f"{kind!r} is not one of {', '.join(GRID_EVENT_KINDS)}"
            )
        if "duration_s" not in tbl:
            raise rd.error(_key(prefix, "duration_s"), "required: how long the event lasts")
        dur = rd.number(tbl["duration_s"], _key(prefix, "duration_s"), positive=True)
        params = _params(rd, tbl.get("params"), _key(prefix, "params"))
        rd.only(params, _key(prefix, "params"), _GRID_PARAMS[kind])
        try:
            events.append(GridEvent(at_s=at_s, kind=kind, duration_s=dur, **params))
        except _FieldError as exc:
            renames = {
                "at_s": at_key.rsplit(".", 1)[-1],
                "kind": "kind",
                "duration_s": "duration_s",
            }
            name = renames.get(exc.field, f"params.{exc.field}")
            raise rd.error(_key(prefix, name), exc.reason) from None

    faults: list[FaultSpec] = []
    for i, tbl in enumerate(_list_of_tables(rd, root.get("faults"), "faults")):
        prefix = f"faults[{i}]"
        rd.only(tbl, prefix, _FAULT_KEYS)
        at, at_key = _at(rd, tbl, prefix)
        at_s = resolve(at, at_key)
        for req in ("target", "kind"):
            if req not in tbl:
                raise rd.error(_key(prefix, req), "required")
        target = rd.string(tbl["target"], _key(prefix, "target"))
        kind = rd.string(tbl["kind"], _key(prefix, "kind"))
        dur_raw = tbl.get("duration_s")
        dur_f = None
        if dur_raw is not None:
            dur_f = rd.number(dur_raw, _key(prefix, "duration_s"), positive=True)
        params = _params(rd, tbl.get("params"), _key(prefix, "params"))
        try:
            faults.append(FaultSpec(at_s, target, kind, dur_f, params))
        except _FieldError as exc:
            name = at_key.rsplit(".", 1)[-1] if exc.field == "at_s" else exc.field
            raise rd.error(_key(prefix, name), exc.reason) from None

    initial = _flatten_initial(rd, root["initial"]) if "initial" in root else {}

    return Scenario(
        name=name,
        description=description,
        duration_s=duration,
        weather=weather,
        prices=prices,
        grid_events=tuple(events),
        faults=tuple(faults),
        initial=initial,
        start=start,
        weather_offset_s=w_off,
        price_offset_s=p_off,
        weather_source=wsrc,
        price_source=psrc,
        source=file,
    )


def _builtin_file(name: str) -> Traversable:
    return resources.files(_BUILTIN_PACKAGE).joinpath(f"scenario_{name}.toml")


def list_builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with thermogate, sorted."""
    names = []
    for entry in resources.files(_BUILTIN_PACKAGE).iterdir():
        n = entry.name
        if n.startswith("scenario_") and n.endswith(".toml"):
            names.append(n.removeprefix("scenario_").removesuffix(".toml"))
    return sorted(names)


def load_scenario(
    path_or_name: str | PathLike[str],
    weather_csv: str | PathLike[str] | None = None,
    prices_csv: str | PathLike[str] | None = None,
    *,
    wrap: bool | None = None,
) -> Scenario:
    """Load a scenario from a TOML file or by built-in name (``"heatwave"``).

    A ``PathLike``, or a string ending in ``.toml`` or containing a path
    separator, is a file; any other string is a built-in name.
    ``weather_csv``/``prices_csv`` replace the scenario's sources (e.g. run the
    heatwave's events against measured weather); ``wrap`` repeats them.
    Raises ConfigError for scenario mistakes and DataFileError for CSV ones.
    """
    s = str(path_or_name)
    is_path = isinstance(path_or_name, PathLike) or s.endswith(".toml") or "/" in s or "\\" in s
    if is_path:
        path = Path(path_or_name)
        file = str(path_or_name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(file, "", "file not found") from None
        except IsADirectoryError:
            raise ConfigError(file, "", "is a directory, expected a TOML file") from None
        except OSError as exc:
            raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
        base_dir: Path | None = path.parent
    else:
        entry = _builtin_file(s)
        if not entry.is_file():
            raise ConfigError(
                "<scenario>",
                "",
                f"no built-in scenario {s!r}; built-ins: {', '.join(list_builtin_scenarios())} "
                "(or give the path of a .toml file)",
            )
        data = entry.read_bytes()
        file = f"<built-in {s}>"
        base_dir = Path(str(entry)).parent
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text ({exc.reason})") from None
    scenario = parse_scenario(
        text, file, base_dir=base_dir, weather_csv=weather_csv, prices_csv=prices_csv, wrap=wrap
    )
    if not is_path and scenario.name != s:
        raise ConfigError(file, "name", f"{scenario.name!r} differs from the built-in name {s!r}")
    return scenario
