"""Weather and price series from CSV files, as stations and markets export them.

Formats (the header is the first line that is not blank or a ``#`` comment;
column names are case-insensitive, other columns are ignored):

    weather  ``time,ambient_c`` and optional ``ghi_wm2``, ``rh_pct``
    prices   ``time,price_per_mwh`` (negative prices allowed)

``time`` is seconds, or ISO 8601 (``2024-07-15T13:00:00Z``, ``2024-07-15
13:00``, ``2024-07-15``; ``24:00`` is midnight of the next day), one
convention per file. Tolerated: a BOM, UTF-16 and Windows-1252 exports, CRLF,
comments, blank lines, trailing commas, ``;``-separated files with decimal
commas, missing optional cells (interpolated), a pyranometer's small negative
night offset (clamped to 0). Anything else is a ``DataFileError`` naming the
file, the line a user sees in an editor, and the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class CsvSource:
    """A series read from a CSV file (see :func:`load_weather_csv`)."""

    path: Path
    wrap: bool = False
    period_s: float | None = None
