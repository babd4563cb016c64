"""Peak windows (4CP-style): the import reduced by a set amount inside them.

ERCOT sets a year of transmission charges on the site's import in the four
15-minute intervals of the summer's coincident system peaks (4CP); other
markets have their own coincident-peak charges. A site that expects a peak
declares the window and how much to cut: inside it, the import limit is the
site's import just before the window (its mean over ``lookback_s``) less
``reduce_kw``, but never below what must stay on (inference and cooling, as
metered at the window's start). It is the site's own choice, not the grid's
instruction: mining sheds first as for any limit, then training.

Windows come from the scenario (``[[grid_events]] kind = "peak"``,
``params.reduce_kw``) or a CSV (:func:`load_peaks_csv`):

    start,end,reduce_kw
    2026-08-14T16:00:00-05:00,2026-08-14T16:30:00-05:00,1500

Times are ISO 8601 with a UTC offset (``Z`` or ``-05:00``): a window is a
moment on the grid's clock, so a time without its zone is refused rather than
guessed. Windows may not overlap.

:class:`PeakShaving` is pure: it is told the time and the import each scan.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike

from thermogate.plc.csvtable import Row, read_table
from thermogate.plc.errors import DataFileError

__all__ = ["PeakShaving", "PeakWindow", "describe_windows", "load_peaks_csv", "windows_within"]

LOOKBACK_S = 900.0  # the import a window cuts from: its mean over the 15 min before
MAX_REDUCE_KW = 1_000_000.0


@dataclass(frozen=True)
class PeakWindow:
    """Cut the import by ``reduce_kw`` for ``start_s <= t < end_s``."""

    start_s: float
    end_s: float
    reduce_kw: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise ValueError("a peak window needs a finite start and end")
        if self.end_s <= self.start_s:
            raise ValueError(
                f"the window ends ({self.end_s:g}) before it starts ({self.start_s:g})"
            )
        if not (math.isfinite(self.reduce_kw) and 0.0 < self.reduce_kw <= MAX_REDUCE_KW):
            raise ValueError(f"reduce_kw must be above 0, got {self.reduce_kw:g}")


def _moment(row: Row, column: str) -> float:
    cell = row.text(column)
    try:
        dt = datetime.fromisoformat(cell.replace("Z", "+00:00"))
    except ValueError:
        raise row.error(column, f"not an ISO 8601 time: {cell!r}") from None
    if dt.utcoffset() is None:
        raise row.error(column, f"{cell!r} has no UTC offset (write e.g. {cell}-05:00 or {cell}Z)")
    return dt.timestamp()


def load_peaks_csv(path: str | PathLike[str]) -> list[PeakWindow]:
    """Peak windows from a CSV (module docstring), in Unix seconds, sorted."""
    table = read_table(path, ("start", "end", "reduce_kw"))
    out: list[tuple[PeakWindow, int]] = []
    for row in table:
        start = _moment(row, "start")
        end = _moment(row, "end")
        reduce_kw = row.number("reduce_kw", lo=0.0, hi=MAX_REDUCE_KW, unit=" kW")
        if end <= start:
            raise row.error("end", "is not after start")
        if reduce_kw <= 0.0:
            raise row.error("reduce_kw", "must be above 0")
        out.append((PeakWindow(start, end, reduce_kw), row.line))
    if not out:
        raise DataFileError(str(path), None, None, "no peak windows (header only)")
    out.sort(key=lambda w: w[0].start_s)
    for (a, _), (b, line) in itertools.pairwise(out):
        if b.start_s < a.end_s:
            raise DataFileError(str(path), line, "start", "overlaps the window before it")
    return [w for w, _ in out]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def windows_within(windows: Sequence[PeakWindow], start_s: float, end_s: float) -> list[PeakWindow]:
    """The windows a run from ``start_s`` to ``end_s`` (Unix seconds) meets."""
    return [w for w in windows if w.end_s > start_s and w.start_s < end_s]


def describe_windows(windows: Sequence[PeakWindow], start_s: float, end_s: float) -> str | None:
    """What a run from ``start_s`` to ``end_s`` (Unix seconds; ``inf``: no end)
    will see of ``windows``: the next one, and how many lie outside it. None
    when there are none. A file whose windows were all over acted on nothing,
    and said nothing."""
    if not windows:
        return None
    inside = windows_within(windows, start_s, end_s)
    outside = len(windows) - len(inside)
    span = f"{_utc(windows[0].start_s)} .. {_utc(windows[-1].end_s)}"
    if not inside:
        which = "its one window" if len(windows) == 1 else f"none of its {len(windows)} windows"
        where = "lies outside" if len(windows) == 1 else "falls in"
        return f"{which} ({span}) {where} this run: none will act"
    nxt = inside[0]
    what = "now" if nxt.start_s <= start_s else f"next {_utc(nxt.start_s)}"
    note = f"; {outside} outside this run, ignored" if outside else ""
    n = f"{len(inside)} window" + ("s" if len(inside) > 1 else "")
    return f"{n}, {what} (import cut by {nxt.reduce_kw:g} kW){note}"


class PeakShaving:
    """The limit the peak windows put on the import (module docstring).

    A window's reference (the import it cuts from) is the mean import over
    ``lookback_s`` before it, outside every window. A window that follows
    another within ``lookback_s`` has no such import of its own: it cuts from
    the reference of the window before it, so back-to-back windows each cut
    ``reduce_kw`` from the same import instead of compounding, cut on cut.
    A controller restarted inside a window is given the import before it from
    its history (:meth:`seed`), so the window keeps the limit it had."""

    def __init__(self, windows: Iterable[PeakWindow], lookback_s: float = LOOKBACK_S) -> None:
        self.windows: Sequence[PeakWindow] = sorted(windows, key=lambda w: w.start_s)
        self.lookback_s = lookback_s
        self._history: deque[tuple[float, float]] = deque()
        self._limits: dict[int, float] = {}  # window index -> its limit, fixed at its start
        self._refs: dict[int, float] = {}  # window index -> the import it cut from

    def window_at(self, t: float) -> tuple[int, PeakWindow] | None:
        for i, w in enumerate(self.windows):
            if w.start_s <= t < w.end_s:
                return i, w
        return None

    def history_from(self, t: float) -> float:
        """From when the import must be known for :meth:`seed` at ``t``: the
        lookback before the first of the chain of windows ``t`` falls in (or
        before ``t`` outside every window)."""
        start = t
        for w in reversed(self.windows):
            if w.start_s <= start < w.end_s + self.lookback_s:
                start = min(start, w.start_s)
        return start - self.lookback_s

    def seed(self, samples: Iterable[tuple[float, float]]) -> None:
        """The import metered before now ``(t, kW)``, oldest first (a restarted
        controller's history): the samples inside windows are left out, as
        :meth:`limit_kw` leaves them."""
        for t, kw in samples:
            if math.isfinite(kw) and self.window_at(t) is None:
                self._history.append((t, kw))

    def _reference(self, i: int, w: PeakWindow, import_kw: float) -> float:
        before = [kw for ts, kw in self._history if w.start_s - self.lookback_s <= ts < w.start_s]
        if before:
            return sum(before) / len(before)
        prev = self.windows[i - 1] if i > 0 else None
        if prev is not None and prev.end_s >= w.start_s - self.lookback_s:
            got = self._refs.get(i - 1)
            return got if got is not None else self._reference(i - 1, prev, import_kw)
        return import_kw

    def limit_kw(self, t: float, import_kw: float, keep_kw: float = 0.0) -> float | None:
        """The import limit at ``t`` (None outside every window and when nothing
        was metered to cut from); ``import_kw`` is the site import now (NaN when
        unknown: it does not count), ``keep_kw`` what must stay on (inference,
        cooling): a window never cuts below it."""
        hit = self.window_at(t)
        if hit is None:
            if math.isfinite(import_kw):
                self._history.append((t, import_kw))
            while self._history and self._history[0][0] < t - self.lookback_s:
                self._history.popleft()
            return None
        i, w = hit
        if i not in self._limits:
            ref = self._reference(i, w, import_kw)
            if not math.isfinite(ref):  # nothing metered to cut from: no limit
                return None
            floor = keep_kw if math.isfinite(keep_kw) else 0.0
            self._refs[i] = ref
            self._limits[i] = max(floor, ref - w.reduce_kw, 0.0)
        return self._limits[i]
