"""Weather and price series from CSV files, as stations and markets export them.

Formats (the header is the first line that is not blank or a ``#`` comment;
column names are case-insensitive, other columns are ignored):

    weather  ``time,ambient_c`` and optional ``ghi_wm2``, ``rh_pct``
    prices   ``time,price_per_mwh`` (negative prices allowed)

``time`` is seconds, or ISO 8601 (``2024-07-15T13:00:00Z``, ``2024-07-15
13:00``, ``2024-07-15``; ``24:00`` is midnight of the next day), one
convention per file. Seconds from 10^9 on are Unix time (UTC, aligned by
date); smaller ones count from the run's start. Tolerated: a BOM, UTF-16 and
Windows-1252 exports, CRLF, comments, blank lines, trailing commas,
``;``-separated files with decimal commas, missing cells (empty, ``NA``,
``NaN``, ``null``: filled like a missing row, a temperature or irradiance
interpolated between its neighbours, a price held from the one before), a
pyranometer's small negative night offset (clamped to 0). A stretch of a
required column longer than ``GAP_WARN_S`` (or four of the file's usual
steps) with no reading, missing rows and missing cells alike, is filled the
same way and said in one warning naming the file and lines. Anything else is
a ``DataFileError`` naming the file, the line a user sees in an editor, and
the column.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import Path

import numpy as np

from thermogate.plc.csvtable import read_table
from thermogate.plc.errors import DataFileError

from .series import (
    AMBIENT_RANGE_C,
    GHI_NIGHT_OFFSET_WM2,
    GHI_RANGE_WM2,
    PRICE_ABS_MAX,
    RH_RANGE_PCT,
    Interpolation,
    TimeSeries,
    Weather,
)

__all__ = ["CsvSource", "load_prices_csv", "load_weather_csv"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Column:
    name: str
    required: bool
    lo: float
    hi: float
    unit: str = ""
    clamp_from: float | None = None  # values in [clamp_from, lo) become lo
    #: how a missing cell is filled: between its neighbours, or from the one before
    #: (a market price holds for its interval)
    fill: str = "linear"


_WEATHER_COLUMNS = (
    _Column("ambient_c", True, *AMBIENT_RANGE_C, unit="°C"),
    _Column("ghi_wm2", False, *GHI_RANGE_WM2, unit="W/m²", clamp_from=GHI_NIGHT_OFFSET_WM2),
    _Column("rh_pct", False, *RH_RANGE_PCT, unit="%"),
)
_PRICE_COLUMNS = (
    _Column("price_per_mwh", True, -PRICE_ABS_MAX, PRICE_ABS_MAX, unit="/MWh", fill="previous"),
)
#: a required column this long without a reading is filled, and said in a warning
GAP_WARN_S = 6 * 3600.0
#: ... or this many of the file's usual (median) steps, if longer
GAP_WARN_STEPS = 4

_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
#: Times a weather or price series can mean: placeholder dates (0001-01-01,
#: 9999-12-31) and numbers that are not seconds (epoch milliseconds) lie outside.
_YEARS = (1900, 2200)
_SECONDS_MAX = 7.3e9  # 2200-01-01 as Unix seconds
#: the shortest sample spacing taken as seconds; below it, the time column is
#: most likely in days (a spreadsheet's date serial, 45488.0417 = one hour on)
_MIN_SPACING_S = 1.0
#: seconds from this on are Unix time (2001-09-09): a run lasts at most 400 days
_UNIX_FROM_S = 1e9
#: integer times up to this, one apart, are hour numbers, not seconds
_HOURS_OF_A_YEAR = 8784
#: the hottest stations' summer days (Death Valley, Kuwait) have medians near 40 °C:
#: a file whose median is above this is most likely in °F (39-57 °F reads as °C)
_HOT_MEDIAN_C = 42.0
#: A day of hourly readings: judged on at least this many, a unit slip shows
#: (humidity never all at or below 1 % -- a fraction written for percent;
#: market prices never all under 1 per MWh in size -- prices per kWh; a
#: median ambient above _HOT_MEDIAN_C -- degrees Fahrenheit)
_A_DAY_OF_ROWS = 24
# Hourly exports often write the end of the day as 24:00 (hour-ending convention).
_HOUR_24 = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ]24:00(?::00(?:\.0+)?)?(.*)$")


def _parse_iso(cell: str) -> datetime | None:
    m = _HOUR_24.match(cell)
    if m:
        try:
            day = datetime.fromisoformat(m.group(1) + "T00:00" + m.group(2))
        except ValueError:
            return None
        try:
            return day + timedelta(days=1)
        except OverflowError:  # 9999-12-31T24:00
            return None
    try:
        return datetime.fromisoformat(cell)
    except ValueError:
        return None


def _read_csv(
    path: str | PathLike[str], columns: Sequence[_Column]
) -> tuple[np.ndarray, datetime | None, dict[str, np.ndarray | None]]:
    """Read ``time`` plus ``columns``; return (t relative, start, values per column).

    Missing optional cells are NaN-filled then interpolated from their
    neighbours; an optional column with no value at all is ``None``.
    """
    table = read_table(
        path,
        ["time"] + [c.name for c in columns if c.required],
        [c.name for c in columns if not c.required],
    )
    label = table.label
    cols = [c for c in columns if c.name in table.columns]

    t_abs: list[float] = []
    t_cells: list[str] = []
    lines: list[int] = []
    vals: dict[str, list[float]] = {c.name: [] for c in cols}
    mode: str | None = None  # "seconds", "naive", "aware"; fixed by the first row
    first_dt: datetime | None = None
    first_line = 0
    for row in table:
        ln = row.line
        cell = row.text("time")
        if not cell:
            raise DataFileError(label, ln, "time", "empty cell; every row needs a time")
        secs = table.to_float(cell)  # a ';' file's decimal comma too (1800,5)
        if secs is not None:
            kind = "seconds"
            if not math.isfinite(secs):
                raise DataFileError(label, ln, "time", f"time {cell!r} is not finite")
            if abs(secs) > _SECONDS_MAX:
                raise DataFileError(
                    label,
                    ln,
                    "time",
                    f"time {cell!r} s is beyond the year {_YEARS[1]} as Unix time "
                    "(milliseconds? times in seconds must be seconds)",
                )
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
            if not _YEARS[0] <= dt.year < _YEARS[1]:
                raise DataFileError(
                    label,
                    ln,
                    "time",
                    f"time {cell!r} is outside the years {_YEARS[0]}-{_YEARS[1] - 1} "
                    "(a placeholder date?)",
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
        for c in cols:
            # a missing cell is a missing sample (NaN, filled below), required or not
            x = row.number(c.name, lo=c.lo, hi=c.hi, unit=c.unit, required=False,
                           clamp_from=c.clamp_from)  # fmt: skip
            vals[c.name].append(x)

    if len(t_abs) < 2:
        raise DataFileError(label, None, None, f"needs at least 2 samples, found {len(t_abs)}")
    ta = np.asarray(t_abs, dtype=np.float64)
    bad = np.flatnonzero(np.diff(ta) <= 0)
    if bad.size:
        k = int(bad[0]) + 1
        same = ta[k] == ta[k - 1]
        hint = ""
        if mode == "naive" and ta[k - 1] - ta[k] <= 3600.0:  # back by an hour at most
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
    if mode == "seconds" and (gap := float(np.median(np.diff(ta)))) < _MIN_SPACING_S:
        raise DataFileError(
            label,
            lines[1],
            "time",
            f"samples are {gap:.4g} s apart at the median: times in seconds must be "
            "seconds (a spreadsheet date serial counts days; give ISO 8601 times)",
        )
    if (
        mode == "seconds"
        and ta[-1] <= _HOURS_OF_A_YEAR
        and np.all(ta == np.round(ta))
        and float(np.median(np.diff(ta))) == 1.0  # 1, 2, 3 ... 24: hour numbers
    ):
        raise DataFileError(
            label,
            lines[0],
            "time",
            f"times {t_cells[0]!r}, {t_cells[1]!r} ... {t_cells[-1]!r} step by 1: hour "
            "numbers (hour ending?), not seconds; give ISO 8601 times or seconds",
        )
    t_rel = ta - ta[0]
    start: datetime | None = None
    if first_dt is not None:
        start = first_dt.astimezone(UTC) if mode == "aware" else first_dt
    elif mode == "seconds" and ta[0] >= _UNIX_FROM_S:
        # no run lasts decades: seconds this large are Unix time (UTC), and the
        # file is aligned by date like an ISO one (it was laid at the run's start)
        start = datetime.fromtimestamp(float(ta[0]), UTC)

    out: dict[str, np.ndarray | None] = {c.name: None for c in columns}
    for c in cols:
        v = np.asarray(vals[c.name], dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            if c.required:
                raise DataFileError(label, None, c.name, f"no {c.name} reading in the file")
            continue  # a column of empty cells is as good as no column
        if c.required:
            _warn_gap(label, c, ta, ok, lines, t_cells)
        if not ok.all():
            v = _filled(t_rel, v, ok, c.fill)
        out[c.name] = v
    return t_rel, start, out


def _filled(t: np.ndarray, v: np.ndarray, ok: np.ndarray, fill: str) -> np.ndarray:
    """``v`` with its missing samples filled: between neighbours, or the one before
    (before the first reading: the first)."""
    if fill == "linear":
        return np.interp(t, t[ok], v[ok])
    last = np.maximum.accumulate(np.where(ok, np.arange(len(v)), -1))
    first = int(np.flatnonzero(ok)[0])
    return v[np.where(last < 0, first, last)]


def _warn_gap(
    label: str, c: _Column, t: np.ndarray, ok: np.ndarray, lines: list[int], cells: list[str]
) -> None:
    """One warning for the longest stretch of ``column`` without a reading, if long."""
    step = float(np.median(np.diff(t)))
    limit = max(GAP_WARN_S, GAP_WARN_STEPS * step)
    have = np.flatnonzero(ok)
    # the stretches between readings, and before the first / after the last
    edges = np.concatenate(([0], have, [len(t) - 1]))
    spans = np.diff(t[edges])
    k = int(np.argmax(spans))
    if spans[k] <= limit:
        return
    a, b = int(edges[k]), int(edges[k + 1])
    missing = int((~ok[a : b + 1]).sum())
    cells_said = f", {missing} of them empty" if missing else ""
    log.warning(
        "%s: %s has no reading for %.1f h, from %s (line %d) to %s (line %d)%s: filled %s;"
        " check the file if that is not what happened",
        label, c.name, spans[k] / 3600.0, cells[a], lines[a], cells[b], lines[b], cells_said,
        "between them" if c.fill == "linear" else "with the reading before",
    )  # fmt: skip


def load_weather_csv(
    path: str | PathLike[str], *, wrap: bool = False, period_s: float | None = None
) -> Weather:
    """Read weather: ``time,ambient_c`` and optional ``ghi_wm2``, ``rh_pct``.

    Raises :class:`DataFileError` naming file, line and column for any problem.
    """
    t, start, cols = _read_csv(path, _WEATHER_COLUMNS)
    rh = cols["rh_pct"]
    if rh is not None and len(rh) >= _A_DAY_OF_ROWS and float(np.nanmax(rh)) <= 1.0:
        raise DataFileError(
            str(path),
            None,
            "rh_pct",
            f"every one of {len(rh)} readings is at most 1 %: a fraction (0.5 for 50 %)? "
            "rh_pct is in percent",
        )

    amb = cols["ambient_c"]
    if amb is not None and len(amb) >= _A_DAY_OF_ROWS:
        median = float(np.median(amb))
        if median > _HOT_MEDIAN_C:  # said, not refused: a desert summer comes close
            log.warning(
                "%s: ambient_c has a median of %.1f °C, hotter than any station's typical"
                " day: degrees Fahrenheit? ambient_c is in °C ((°F - 32) / 1.8)",
                path,
                median,
            )

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
    if len(v) >= _A_DAY_OF_ROWS and float(np.max(np.abs(v))) < 1.0:
        raise DataFileError(
            str(path),
            None,
            "price_per_mwh",
            f"every one of {len(v)} prices is under 1 per MWh in size: prices per kWh?"
            " price_per_mwh is per MWh (multiply by 1000)",
        )
    return TimeSeries(
        t,
        v,
        start=start,
        wrap=wrap,
        period_s=period_s,
        interpolation=interpolation,
        name="price_per_mwh",
    )


@dataclass(frozen=True)
class CsvSource:
    """A series read from a CSV file (see :func:`load_weather_csv`)."""

    path: Path
    wrap: bool = False
    period_s: float | None = None
