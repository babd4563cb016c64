"""CSV tables as exports give them: one reader, one set of tolerances, one error style.

Every CSV input thermogate takes (weather, prices, GPU-cluster job traces)
is read through :func:`read_table`, so they share what a user can rely on:

* the header is the first line that is not blank or a ``#`` comment; column
  names are case-insensitive; other columns are ignored;
* tolerated: a BOM, UTF-16 and Windows-1252 exports, CRLF, comments, blank
  lines, trailing commas, ``;``-separated files with decimal commas;
* anything else is a :class:`~thermogate.plc.errors.DataFileError` naming the
  file, the line a user sees in an editor, and the column.

The table knows nothing of what its columns mean; the callers check ranges
and order (they know the units).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from thermogate.plc.errors import DataFileError

__all__ = ["MISSING_MARKERS", "Row", "Table", "read_table"]

#: Cells spelled like this are "no reading" (station exports use them).
#: what exports write for "no reading" (NOAA's LCD writes M), compared lower-case
MISSING_MARKERS = frozenset({"", "nan", "na", "n/a", "null", "none", "m", "missing", "-", "--"})


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


@dataclass(frozen=True, slots=True)
class Row:
    """One data row: its line in the file and its cells by (lower-case) column name."""

    table: Table
    line: int
    cells: dict[str, str]

    def text(self, column: str) -> str:
        """The stripped cell ('' when the row is short or the column absent)."""
        return self.cells.get(column, "")

    def error(self, column: str | None, reason: str) -> DataFileError:
        return DataFileError(self.table.label, self.line, column, reason)

    def number(
        self,
        column: str,
        *,
        lo: float = -math.inf,
        hi: float = math.inf,
        unit: str = "",
        required: bool = True,
        clamp_from: float | None = None,
    ) -> float:
        """The cell as a finite float in ``lo..hi``; NaN for an empty optional cell.

        ``clamp_from``: values in ``[clamp_from, lo)`` become ``lo`` (a sensor's
        known small offset, such as a pyranometer's negative night reading)."""
        raw = self.text(column)
        if raw.lower() in MISSING_MARKERS:
            if required:
                what = f"no reading ({raw!r})" if raw else "empty cell"
                raise self.error(column, f"{what}; {column} is required")
            return math.nan
        x = self.table.to_float(raw)
        if x is None:
            raise self.error(
                column,
                f"not a number: {raw!r} (a missing reading may be left empty or written as"
                " NA, NaN, M, null or -)",
            )
        if not math.isfinite(x):
            raise self.error(column, f"not a finite number: {raw!r}")
        if clamp_from is not None and clamp_from <= x < lo:
            x = lo
        if not lo <= x <= hi:
            raise self.error(
                column,
                f"{x:g}{unit} is outside the plausible range {lo:g}..{hi:g}{unit} "
                "(wrong unit or a faulty reading?)",
            )
        return x


@dataclass(frozen=True)
class Table:
    """A CSV file's header and data rows (see the module docstring)."""

    label: str  # the file, as errors name it
    header_line: int
    columns: tuple[str, ...]  # lower-case names, in file order
    decimal_comma: bool
    #: the data rows as the file's lines (each record lies on one line: checked
    #: when read), split into cells again as they are iterated: a year of minute
    #: readings held as cells took ~150 MB, as lines ~45 MB
    _lines: list[str]
    _numbers: list[int]  # each line's number in the file
    _delimiter: str = ","

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[Row]:
        idx = {c: j for j, c in enumerate(self.columns) if c}
        cells_of = csv.reader(self._lines, delimiter=self._delimiter, skipinitialspace=True)
        for line, cells in zip(self._numbers, cells_of, strict=True):
            yield Row(self, line, {c: cells[j].strip() for c, j in idx.items() if j < len(cells)})

    def to_float(self, cell: str) -> float | None:
        """A cell as a float (decimal comma in ``;`` files), or None when it is not one."""
        if self.decimal_comma:
            cell = cell.replace(",", ".")
        try:
            return float(cell)
        except ValueError:
            return None


def read_table(
    path: str | PathLike[str], required: Sequence[str], optional: Sequence[str] = ()
) -> Table:
    """Read a CSV file whose header must name every column in ``required``.

    A column of ``required`` or ``optional`` named twice is an error (which one
    would be meant?); other columns are ignored, twice or not."""
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

    head, header_line = kept[0], numbers[0]
    # Spreadsheets in comma-decimal locales export ';' separated with '12,5'.
    # The header's most frequent separator: a ';' file may name a column
    # "Bemerkung (EUR/MWh, DE-LU)"; a tie goes to the comma.
    delim = max((",", ";", "\t"), key=lambda d: (head.count(d), d == ","))
    reader = csv.reader(kept, delimiter=delim, skipinitialspace=True)
    header_raw = _next_record(reader, label, numbers)
    assert header_raw is not None  # ``kept`` is not empty
    header = [h.strip().lower() for h in header_raw]
    while header and not header[-1]:
        header.pop()  # trailing commas
    known = {*required, *optional}
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        if h in known and h in seen:
            raise DataFileError(
                label, numbers[0], h, f"column appears twice (fields {seen[h] + 1} and {j + 1})"
            )
        seen[h] = j
    found = ", ".join(repr(h.strip()) for h in header_raw if h.strip()) or "(nothing)"
    for name in required:
        if name not in seen:
            raise DataFileError(
                label,
                numbers[0],
                name,
                f"missing required column '{name}'; header found: {found} "
                "(the first line that is not blank or a '#' comment is the header)"
                + _later_header(kept, numbers, delim, required),
            )
    width = len(header)
    # every record checked here (one line each, no surplus fields); the table keeps
    # the lines, and splits them again as it is iterated
    while (row := _next_record(reader, label, numbers)) is not None:
        if len(row) > width and any(c.strip() for c in row[width:]):
            ln = numbers[reader.line_num - 1]
            hint = " (a decimal comma in a comma-separated file?)" if delim == "," else ""
            raise DataFileError(
                label, ln, None, f"row has {len(row)} fields but the header has {width}{hint}"
            )
    del kept[0], numbers[0]  # the header's
    return Table(label, header_line, tuple(header), delim != ",", kept, numbers, delim)


#: lines after the first searched for the real header (an export's preamble)
_PREAMBLE_LINES = 20


def _later_header(
    kept: Sequence[str], numbers: Sequence[int], delim: str, required: Sequence[str]
) -> str:
    """A hint naming a later line that holds every required column: exports
    (Open-Meteo's, a logger's) put metadata lines above the real header."""
    for line, no in zip(kept[1 : 1 + _PREAMBLE_LINES], numbers[1:], strict=False):
        cells = {c.strip().strip("\"'").lower() for c in line.split(delim)}
        if all(name in cells for name in required):
            return f"; line {no} has the columns: delete the lines above it or begin them with '#'"
    return ""


def _next_record(reader: Any, label: str, numbers: Sequence[int]) -> list[str] | None:
    """The next record, which must lie on one line; None at the end.

    The csv module lets a quoted field run on over line ends. In these files a
    field is a number, a time or a word, so a record over several lines is a
    stray quote that would otherwise swallow the rows after it (or a whole
    large file, up to the module's field limit): an error on the line it opens."""
    start = reader.line_num  # lines consumed so far: the record starts on the next
    try:
        row = next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise DataFileError(
            label, numbers[start], None, f'unreadable row ({exc}): a quote (") left open?'
        ) from None
    if reader.line_num - start > 1:
        raise DataFileError(
            label,
            numbers[start],
            None,
            f'a quote (") opened on this line is not closed on it (it runs on to line '
            f"{numbers[reader.line_num - 1]})",
        )
    return row
