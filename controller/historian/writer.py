"""The historian's caller side: validate, copy, hand over — the scan never waits for the disk.

``record_scan`` validates the two arrays, copies them into buffers the writer
handed back (the caller reuses its own arrays; fresh memory would cost a page
fault per 4 KiB, several times the copy itself at 10,000 points) and appends
one tuple to a ``deque``. That does not even wake the writer thread
(``committer.py``): it wakes every ``batch_s`` and commits what accumulated in
one transaction. Events, audit, state, flush and close go through a
``queue.SimpleQueue`` that does wake it: events and audit are committed
(fsynced) well under a millisecond after ``record_event`` returns, at worst
after one telemetry commit — not on the caller's thread, because an fsync per
event (ms on SSD, tens of ms on an SD card) inside a 50 ms scan during an
alarm storm is exactly what the queue is for. ``save_state`` blocks until its
fsynced commit is done; ``flush()`` until everything recorded before it is
committed, aggregates of completed minutes included. Rows of the books
(``record_economics``, ``record_gating``: a few a minute) take the scans' road:
a deque the writer empties on its batch tick, committed in the batch.

If the disk cannot keep up, the backlog is bounded (~256 MB of scans): further
scans are dropped, counted (``dropped_scans``) and reported as a historian
alarm — the scan keeps its 50 ms budget and the loss is never silent. A writer
failure is re-raised (as ``HistorianError``, chained) by the next
``record_*``/``flush`` call; a writer that died for good makes every later call
raise.

The writer is a thread, so its Python work (building rows, ``tolist``) shares
the GIL with the scan: a scan that coincides with a batch commit takes up to
one GIL switch interval longer, well inside the 50 ms budget.

Single writer per database file: two Historians on one file would fight over
aggregation and retention. Everything else reads through
:class:`~.reader.HistoryReader`.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from .aggregate import Aggregator, Scan
from .committer import Waiter, WriterThread
from .reader import HistoryReader
from .schema import (
    ECONOMICS_COLUMNS,
    HistorianError,
    Shard,
    create_or_extend,
    open_for_writing,
)

__all__ = ["Historian"]

#: memory allowed for scans waiting for the writer before scans are dropped
BACKLOG_BYTES = 256_000_000
#: size of one telemetry transaction, so a backlog never becomes one huge commit
TX_BYTES = 8_000_000
#: memory of scan buffers kept for reuse by ``record_scan`` (beyond: fresh buffers)
POOL_BYTES = 16_000_000


def _json_default(o: object) -> object:
    """Let event data carry numpy scalars and arrays (the core produces them)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"event data value of type {type(o).__name__} is not JSON serialisable")


class Historian(WriterThread):
    """Telemetry, events, audit and controller state of one site, in SQLite.

    Writes are queued to one writer thread (cheap for the scan); reads go
    through :attr:`reader`, a read-only :class:`~.reader.HistoryReader` of the
    same file, and see what is committed (call ``flush()`` first to see what
    was just recorded). Use as a context manager or call ``close()``: closing
    commits everything queued; a process that exits without it loses the
    telemetry of the last ``batch_s`` (the file stays consistent; events and
    audit are already committed).
    """

    def __init__(
        self,
        path: str | Path,
        point_names: Sequence[str],
        *,
        raw_days: float = 7.0,
        agg_days: float = 400.0,
        audit_days: float | None = None,
        batch_s: float = 1.0,
        site_name: str = "",
        point_info: Mapping[str, tuple[str, float | None, float | None]] | None = None,
    ) -> None:
        """Open (creating or extending) the database at ``path``.

        ``audit_days`` (default ``raw_days``) is how long the controller's own
        regulation writes stay in the audit log (see ``aggregate``'s retention).
        ``point_names`` is the point map's order: ``record_scan`` arrays are
        aligned with it. ``point_info`` (name → (unit, lo, hi)), if given, is
        stored with new points so readers can label trends without the map.
        A ``site_name`` that differs from the one stored raises
        ``WrongSiteError`` (a ``ValueError``), so one site's controller never
        writes into another site's history.
        """
        names = list(point_names)
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise ValueError(f"duplicate point name {dup!r}")
        if min(raw_days, agg_days, batch_s, raw_days if audit_days is None else audit_days) <= 0:
            raise ValueError("raw_days, agg_days, audit_days and batch_s must be positive")
        self.path = Path(path)
        self.point_names: tuple[str, ...] = tuple(names)
        self.batch_s = float(batch_s)
        self.site_name = site_name
        n = len(names)
        self._n = n
        position = {name: i for i, name in enumerate(names)}
        row_bytes = 9 * max(n, 1) + 64
        self._max_backlog = max(100, BACKLOG_BYTES // row_bytes)
        self._max_tx_scans = max(1, TX_BYTES // row_bytes)

        # -- schema (on the caller's thread, so a bad file fails here) ------
        wconn = open_for_writing(self.path)
        try:
            self._wdb = sqlite_utils.Database(wconn, execute_plugins=False)
            self._shards: list[Shard] = create_or_extend(
                self._wdb, self.path, site_name, names, point_info or {}
            )
            for shard in self._shards:
                shard.prepare(position, n)
            self._agg = Aggregator(
                wconn,
                self._shards,
                n,
                raw_days=float(raw_days),
                agg_days=float(agg_days),
                audit_days=None if audit_days is None else float(audit_days),
                tx=self._tx,
                interleave=self._interleave,
                note=self._writer_event,
            )
            #: the read path (read-only connection): every read of this class goes through it
            self.reader = HistoryReader(self.path, site_name)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            # a damaged file (malformed pages, a mangled schema): one line, no traceback
            wconn.close()
            raise HistorianError(f"{self.path}: a damaged historian database ({exc})") from None
        except BaseException:
            wconn.close()
            raise
        self._wconn = wconn
        self._last_dup = 0

        # -- writer ----------------------------------------------------------
        # scans go on a deque that does not wake the writer (it polls every
        # batch_s); everything else goes on a queue that wakes it at once
        self._scans: collections.deque[Scan] = collections.deque()
        # economics and gating rows: batched with the scans, no wake-up either
        self._books: collections.deque[tuple] = collections.deque()
        self._p_books: list[tuple] = []
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._pool: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._pool_max = 64
        self._max_pool = max(self._pool_max, min(self._max_backlog, POOL_BYTES // row_bytes))
        self._dropped = itertools.count(1)  # next() is atomic in CPython
        self._dropped_n = 0
        self._dropped_reported = 0
        self._p_scans: list[Scan] = []
        self._p_urgent: list[tuple] = []
        self._p_flush: list[Waiter] = []
        self._p_retention: list[Waiter] = []
        self._closing = False
        self._closed = False
        self._retry_at = 0.0
        self._quiet = threading.Event()
        self._quiet.set()  # no scan marked: batches run on their tick
        self._hold_wait = False
        self._err_lock = threading.Lock()
        self._error: BaseException | None = None
        self._unreported: BaseException | None = None
        self._failing = False
        self._dead = False
        self._thread = threading.Thread(target=self._run, name="historian-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_point_map(cls, path: str | Path, pmap: Any, **kw: Any) -> Historian:
        """A historian whose columns, units and ranges come from a ``PointMap``."""
        info = {p.name: (p.unit, p.min, p.max) for p in pmap.points}
        return cls(path, [p.name for p in pmap.points], point_info=info, **kw)

    def __enter__(self) -> Historian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def raw_days(self) -> float:
        """Days raw telemetry is kept (then only the 1-minute aggregates)."""
        return self._agg.raw_days

    @property
    def agg_days(self) -> float:
        """Days the 1-minute aggregates are kept."""
        return self._agg.agg_days

    # ======================================================================
    # writing (caller side: validate, copy, hand over — microseconds)
    # ======================================================================
    def record_scan(self, t: float, values: np.ndarray, quality: np.ndarray) -> None:
        """Queue one scan: ``values`` (float64, NaN allowed) and ``quality``
        (uint8: 0 good, 1 uncertain, 2 bad), both aligned with ``point_names``.

        Raises ``ValueError`` for arrays of the wrong length (naming both
        lengths) before anything is queued, so bad input never reaches the file.
        Does not wake the writer: it picks the scans up every ``batch_s``.
        """
        v = np.asarray(values, dtype=np.float64)
        qa = np.asarray(quality, dtype=np.uint8)
        if v.shape != (self._n,) or qa.shape != (self._n,):
            raise ValueError(
                f"record_scan: values has {v.size} entries and quality {qa.size}, "
                f"expected {self._n} (one per point)"
            )
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"record_scan: t must be finite, got {t}")
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        if len(self._scans) >= self._max_backlog:
            self._dropped_n = next(self._dropped)  # the writer reports it as an alarm
        else:
            # copy into buffers the writer handed back: fresh memory would cost a
            # page fault per 4 KiB
            try:
                vb, qb = self._pool.pop()
            except IndexError:
                vb, qb = np.empty(self._n), np.empty(self._n, np.uint8)
            np.copyto(vb, v)
            np.copyto(qb, qa)
            self._scans.append((t, vb, qb))
        if self._unreported is not None:
            self._raise_pending(queued=True)

    def hold_batches(self) -> None:
        """A scan starts: a telemetry batch falling due now waits for
        :meth:`release_batches` (at most ``HOLD_MAX_S``; urgent rows never wait)."""
        self._quiet.clear()

    def release_batches(self) -> None:
        """The scan is over: a batch held for it runs now, in the slack."""
        self._quiet.set()
        if self._hold_wait:
            self._q.put(("q",))

    def record_event(
        self,
        t: float,
        kind: str,
        source: str,
        message: str,
        severity: int = 500,
        data: dict | None = None,
    ) -> None:
        """Queue an event/alarm; the writer commits it (fsynced) at once."""
        payload = json.dumps(data or {}, sort_keys=True, default=_json_default)
        self._urgent(("e", float(t), str(kind), str(source), str(message), int(severity), payload))

    def record_audit(
        self,
        t: float,
        who: str,
        where: str,
        point: str,
        old: float | None,
        new: float | None,
        why: str,
        ok: bool = True,
    ) -> None:
        """Queue an audit row for a write or a command: who, from where, old → new, why, ok.

        Committed (fsynced) at once by the writer, like events (principle 5).
        """
        row = (
            "a",
            float(t),
            str(who),
            str(where),
            str(point),
            None if old is None else float(old),
            None if new is None else float(new),
            str(why),
            int(bool(ok)),
        )
        self._urgent(row)

    def record_economics(self, row: Mapping[str, float] | object) -> None:
        """Queue one interval of the books: a mapping or an object (e.g. an
        ``EconomicsRow``) with the ``ECONOMICS_COLUMNS``; NaN is stored as NULL.

        Committed with the next telemetry batch (``batch_s``), not on its own."""
        # whatever the row holds: float() below accepts or rejects it
        get: Callable[[str], Any] = (
            row.get if isinstance(row, Mapping) else lambda k: getattr(row, k)
        )
        try:
            values = tuple(float(get(c)) for c in ECONOMICS_COLUMNS)
        except (AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"record_economics: not an economics row ({exc})") from None
        if not math.isfinite(values[0]):
            raise ValueError(f"record_economics: t must be finite, got {values[0]}")
        self._batched(("econ", *(None if math.isnan(v) else v for v in values)))

    def record_gating(self, t: float, load: str, budget_kw: float, why: str) -> None:
        """Queue a change of a load's budget or of what bound it (committed with
        the next telemetry batch)."""
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"record_gating: t must be finite, got {t}")
        kw = float(budget_kw)
        self._batched(("gate", t, str(load), None if math.isnan(kw) else kw, str(why)))

    def record_compliance(self, judged: Any, t_offset: float = 0.0) -> None:
        """Queue one settled interval (``controller.grid.settlement.Judged``);
        ``t_offset`` maps its time base to the historian's (a simulation's epoch)."""
        r = judged.record
        t = float(r.start_s) + float(t_offset)
        if not math.isfinite(t):
            raise ValueError(f"record_compliance: t must be finite, got {t}")

        def num(x: float | bool | None) -> float | None:
            return None if x is None else float(x)

        self._batched(
            (
                "comp",
                t,
                float(judged.interval_s),
                str(judged.instruction),
                num(r.limit_kw),
                num(r.metered_kw),
                num(r.baseline_kw),
                num(r.required_kw),
                num(r.delivered_kw),
                num(r.compliant),
                str(r.note),
            )
        )

    def _batched(self, item: tuple) -> None:
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        self._books.append(item)
        if self._unreported is not None:
            self._raise_pending(queued=True)

    def _urgent(self, item: tuple) -> None:
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        self._q.put(item)
        if self._unreported is not None:
            self._raise_pending(queued=True)

    def save_state(self, key: str, value: dict, timeout: float = 5.0) -> None:
        """Store controller state (modes, latched faults, overrides) for restarts.

        Blocks until it is committed with an fsync: state that a restart must
        see is worth a few milliseconds of the caller's time.
        """
        payload = json.dumps(value, sort_keys=True, default=_json_default)
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        w = Waiter(("st", str(key), payload, time.time()))
        self._q.put(("w", w))
        w.wait(timeout, f"save_state({key!r})")

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything recorded before this call is committed."""
        if self._unreported is not None or self._dead or self._closed:
            self._raise_pending(queued=False)
        w = Waiter()
        self._q.put(("f", w))
        try:
            w.wait(timeout, "flush")
        except HistorianError:
            with self._err_lock:  # reported now, not again on the next call
                if self._unreported is w.error:
                    self._unreported = None
            raise
        if self._unreported is not None:
            self._raise_pending(queued=False)

    def retention(self, now: float, timeout: float = 600.0) -> dict:
        """Apply retention as of data time ``now``; returns what was deleted.

        ``raw_rows``/``agg_rows`` count scans/minutes deleted. Raw rows are kept
        past ``raw_days`` until the aggregator has covered them. Runs on the
        writer thread (the only writer), so this call waits for it.
        """
        if threading.current_thread() is self._thread:
            return self._agg.retention(float(now))
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        w = Waiter(float(now))
        self._q.put(("r", w))
        return w.wait(timeout, "retention")  # type: ignore[return-value]

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything recorded, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        # the reader first: the writer's connection, closing last, checkpoints the
        # WAL into the database file (a read-only connection cannot)
        self.reader.close()
        if self._thread.is_alive():
            self._q.put(("c",))
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise HistorianError(f"historian writer did not stop within {timeout:g} s")
        if self._unreported is not None:
            self._raise_pending(queued=False)

    # ======================================================================
    # reading: the one read path (HistoryReader) of the same file
    # ======================================================================
    def telemetry(
        self,
        names: Sequence[str],
        t0: float,
        t1: float,
        *,
        resolution: str = "auto",
        stat: str = "mean",
    ) -> dict[str, np.ndarray]:
        """Committed point histories: see :meth:`HistoryReader.telemetry`."""
        return self.reader.telemetry(names, t0, t1, resolution=resolution, stat=stat)

    def quality(self, names: Sequence[str], t0: float, t1: float) -> dict[str, np.ndarray]:
        """Committed quality codes: see :meth:`HistoryReader.quality`."""
        return self.reader.quality(names, t0, t1)

    def events(
        self,
        t0: float | None = None,
        t1: float | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[dict]:
        """Committed events: see :meth:`HistoryReader.events`."""
        return self.reader.events(t0, t1, kinds, limit)

    def audit(
        self, t0: float | None = None, t1: float | None = None, limit: int = 1000
    ) -> list[dict]:
        """Committed audit rows: see :meth:`HistoryReader.audit`."""
        return self.reader.audit(t0, t1, limit)

    def economics(
        self, t0: float | None = None, t1: float | None = None, limit: int = 100_000
    ) -> list[dict]:
        """Committed economics rows: see :meth:`HistoryReader.economics`."""
        return self.reader.economics(t0, t1, limit)

    def gating(
        self,
        t0: float | None = None,
        t1: float | None = None,
        loads: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[dict]:
        """Committed gating rows: see :meth:`HistoryReader.gating`."""
        return self.reader.gating(t0, t1, loads, limit)

    def compliance(
        self, t0: float | None = None, t1: float | None = None, limit: int = 100_000
    ) -> list[dict]:
        """Committed settled intervals: see :meth:`HistoryReader.compliance`."""
        return self.reader.compliance(t0, t1, limit)

    def points(self) -> list[dict]:
        """Every point the database has ever held: see :meth:`HistoryReader.points`."""
        return self.reader.points()

    def load_state(self, key: str) -> dict | None:
        """The last committed value of ``save_state(key)``, or None."""
        return self.reader.state(key)

    # -- errors and counters ------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The last exception on the writer thread (None if there was none)."""
        return self._error

    @property
    def failing(self) -> bool:
        """True from a failed commit (a full or read-only disk) to the next one that
        succeeds; meanwhile records wait in memory (bounded, see BACKLOG_BYTES)."""
        return self._failing or self._dead

    @property
    def dropped_scans(self) -> int:
        """Scans dropped because the writer fell more than the backlog behind."""
        return self._dropped_n

    @property
    def retention_counts(self) -> tuple[int, int]:
        """(retention runs, raw scans they deleted) since this historian opened."""
        return self._agg.retention_runs, self._agg.raw_deleted

    @property
    def audit_deleted(self) -> int:
        """The controller's regulation writes retention deleted since this historian opened."""
        return self._agg.audit_deleted

    @property
    def backlog(self) -> int:
        """Scans recorded and not yet taken by the writer."""
        return len(self._scans)

    def _raise_pending(self, *, queued: bool) -> None:
        with self._err_lock:
            err, self._unreported = self._unreported, None
        note = " (this call's record was queued)" if queued else ""
        if err is not None:
            raise HistorianError(f"historian writer failed: {err!r}{note}") from err
        if self._closed:
            raise HistorianError("historian is closed")
        if self._dead:
            raise HistorianError(f"historian writer stopped: {self._error!r}") from self._error
