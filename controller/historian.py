"""The controller's historian: telemetry, events, audit and state in one SQLite file.

Why it looks the way it does
============================

**The scan thread never waits for the disk.** ``record_scan`` validates the two
arrays, copies them into buffers the writer handed back (the caller reuses its
own arrays; fresh memory would cost a page fault per 4 KiB, 43 us instead of
7 us at 10,000 points) and appends one tuple to a ``deque``. That does not even
wake the writer: a writer thread, owner of the only writing connection, wakes
every ``batch_s`` and commits what accumulated in one transaction. Events,
audit, state, flush and close go through a ``queue.SimpleQueue`` that does wake
it. If the disk cannot keep up, the backlog is bounded (~256 MB of scans):
further scans are dropped, counted (``dropped_scans``) and reported as a
historian alarm — the scan keeps its 50 ms budget and the loss is never silent.

**Columns come from the point map** (design principle 2). Every point is a
``REAL`` column named after it (``tank03.fluid_temp`` → ``tank03__fluid_temp``;
anything else that is not ``[A-Za-z0-9_]`` is hex-escaped, clashes get a
suffix). SQLite allows at most 2000 columns per table, so telemetry is sharded:
``telemetry_0``, ``telemetry_1``, … hold at most 1000 point columns each plus
``t`` (REAL primary key, seconds since the epoch) and one ``quality`` BLOB. The
``points`` table (name → shard, col, slot, idx, unit, lo, hi) is written when the
database is created and is the authority on reopen: points that are new in the
point list get new columns (in the last shard with room, else a new shard);
points that left the list keep their column and history and read NULL/bad from
then on. Nothing is ever dropped. One scan is one row in *every* shard, written
in the same transaction, so shards never disagree about which scans exist.

**Quality as one BLOB per shard row, not one column per point** — measured
(10,000 points, 200 scans, 10 scans per transaction, WAL, synchronous=NORMAL,
this machine's SSD)::

    layout                                   scans/s   KiB/scan on disk
    values only (no quality)                  1223        81.1
    + one quality BLOB per shard row          1101        86.1   <- chosen
    + one INTEGER quality column per point     695        87.0   (999-point shards)

Per-point quality columns cost 37 % of the write throughput (twice the bound
parameters) for the same size, and would force shards of 999 points (2 × 999 +
``t`` ≤ 2000). The BLOB is the shard's ``uint8`` quality array in slot order,
and is NULL when every point of the shard is good (the common case): an
all-good scan then costs what the values-only layout does. NaN values are bound
as doubles and SQLite stores them as NULL (read back as NaN).

**Page size 4096 (the default)** — measured for the BLOB layout::

    page size   scans/s   KiB/scan   read 1 column, us/row (first/last column)
    4096         1054       86.1      2.3 / 5.4      <- chosen: smallest file,
    8192         1196       91.6      2.7 / 4.3         cheapest small commits
    32768        1154      111.4      1.7 / 3.0
    65536        1295      100.5      1.2 / 2.9

A 10,000-point row (~8.6 KB per shard) overflows any page below 16 KB; the
larger pages read faster but cost 6–30 % more disk and make every small
event/audit commit write 16× more bytes. Raw storage is ~86 KiB per scan at
10,000 points (~7 GB/day at 1 scan/s; ~4.4 KiB per scan for the 514-point demo).

**1-minute aggregates** live in ``agg_mean_k``, ``agg_min_k``, ``agg_max_k`` (same
columns as ``telemetry_k``; ``t`` is the minute's start; ``agg_mean_k.n`` is the
number of raw rows). A minute is complete once a scan of a later minute was
committed. The writer folds every committed scan into per-minute accumulators
(sum, count, fmin, fmax in numpy: ~30 us per 10,000-point scan) and writes a
completed minute's three rows, all shards and the per-shard watermarks
(``agg_progress``) in one transaction. Minutes it did not see from their start
(the one a restart or crash cut in two, or any not yet aggregated) are
aggregated from their raw rows instead, 600 rows per transaction, resuming from
the committed watermark. Measured: ``INSERT … SELECT avg()/min()/max() … GROUP
BY minute`` costs 570 us per 10,000-point raw row (three passes over 1000-column
rows) and reading the rows once into the same accumulators 265 us; the live
path needs neither. A scan older than an aggregated minute (late, out of order)
or a batch with duplicate timestamps marks its minute for recomputation from
the raw rows. NaN/NULL is ignored; an all-NaN minute aggregates to NULL.

**Retention** runs on the writer once per hour of *data* time (so it also runs
in accelerated simulation) and can be called directly: raw rows older than
``raw_days`` are deleted only up to the aggregation watermark (never before they
were aggregated), aggregates older than ``agg_days``. Deletes go in chunks of
2000 scans per transaction across all shards, with queued events/audit committed
between chunks. Events, audit and state are never deleted by retention.

**Durability** (design principle 6). WAL mode. Telemetry transactions commit
with ``synchronous=NORMAL``: the commit is a ``write()`` into the WAL, which
survives a crash or ``kill -9`` of the process at any instant (the OS holds the
bytes); only a power loss/OS crash can roll back the last telemetry commits,
and never corrupts the file. Events, audit and state are *urgent*: the writer
commits them as soon as it sees them, in their own small transaction with
``synchronous=FULL`` (the WAL is fsynced before ``record_*`` items count as
committed), so they also survive a power loss. They are not committed on the
caller's thread because an fsync per event (ms on SSD, tens of ms on an SD
card) inside a 50 ms scan during an alarm storm is exactly what the queue is
for. Measured: committed 0.3 ms (median) after ``record_event`` returned, at
worst the length of one telemetry commit. ``save_state`` blocks until its FULL
commit is done. ``flush()`` blocks until everything recorded before it is
committed, aggregates of completed minutes included.

**Never silent.** An exception on the writer thread rolls its transaction
back, is kept in ``historian.error`` and re-raised (as ``HistorianError``, chained)
by the next ``record_*``/``flush`` call; the failed items stay queued and are
retried every second (events/audit forever, scans within the backlog bound). A
writer that dies for good makes every later call raise.

**Reads** (``telemetry``) run on their own read-only connection inside one
read transaction, so all points of a result come from the same committed
scans; readers never block the writer (WAL). ``resolution="auto"`` reads raw
rows when they still reach back to ``t0`` (within raw retention) and the 1-minute
means otherwise. Reading a point costs the whole shard row (~5 us per row warm;
a week of 1 Hz raw is ~3 s per shard), which is why old data is read from the
aggregates.

Measured on this machine (``python -m thermogate.controller.historian``; a
2-vCPU VM shared with other work, so two runs each)::

                                              500 points      10,000 points
    record_scan, back to back                 3.7-7.9 us      11.5-11.8 us
    record_scan, one every 5 ms (median)      22-42 us        27-54 us
      a bare copy of the same arrays after
      the same 5 ms sleep (cold caches)       24-27 us        25-27 us
    writer, backlog of 1 Hz scans, 10 per
      transaction, aggregates included        8,100-8,600/s   710-810 scans/s
                                                              (7-8 M values/s)
    disk per scan incl. 1-minute aggregates   4.4 KB          88 KB
    record_event caller cost                  2.3-4.5 us
    event/audit committed (fsynced) after     0.3-0.4 ms median; max 2.5 ms
      record_event returned                   (500 pts), 38 ms (10,000 pts,
                                              waiting for a telemetry commit)

So the caller side is microseconds (the paced figure is the VM waking up: a
bare memcpy costs as much); the writer keeps up with 10,000 points at 10 Hz
with ~70x headroom. At 10,000 points raw history is ~7.3 GB per day at 1 scan/s
(~51 GB for the default 7 days) and aggregates ~0.35 GB per day (~140 GB for
400 days): size ``raw_days``/``agg_days`` to the disk.

The writer is a thread, so its Python work (building rows, ``tolist``) shares
the GIL with the scan: measured with a 1 ms numpy scan at 10 and 50 Hz and
10,000 points, p99 scan time is unchanged (1.0-1.6 ms) and a scan that
coincides with a batch commit takes up to one GIL switch interval longer
(max 2-6 ms, once 11 ms on this shared VM) — well inside the 50 ms budget.

Single writer per database file: two Historians on one file would fight over
aggregation and retention.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import math
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

__all__ = [
    "MAX_POINTS_PER_SHARD",
    "Historian",
    "HistorianError",
    "column_name",
]

SCHEMA_VERSION = 1
#: point columns per telemetry shard (SQLite allows 2000 columns per table)
MAX_POINTS_PER_SHARD = 1000
MINUTE_S = 60.0
DAY_S = 86400.0
#: data time between automatic retention runs
RETENTION_EVERY_S = 3600.0
#: memory allowed for scans waiting for the writer before scans are dropped
BACKLOG_BYTES = 256_000_000
#: size of one telemetry transaction, so a backlog never becomes one huge commit
TX_BYTES = 8_000_000
#: scans deleted per retention transaction
RETENTION_CHUNK = 2000
#: raw rows read per catch-up aggregation transaction (one shard)
CATCH_UP_ROWS = 600
#: minutes accumulated in memory at once (more only when scans come far out of order)
MAX_OPEN_MINUTES = 10
#: seconds between retries after a failed commit
RETRY_S = 1.0
#: quality byte for a point that is in the database but not in the point list
QUALITY_ABSENT = 2

_UNSAFE = re.compile(r"[^0-9A-Za-z_]")
_RESERVED = {"t", "n", "quality", "rowid", "oid", "_rowid_"}
_NEWEST = ' ORDER BY "t" DESC, "id" DESC LIMIT ?'
_STAT_SQL = {"mean": "avg", "min": "min", "max": "max"}
#: floor(t / 60) * 60 in portable SQL (CAST truncates toward zero, % casts to int)
_MINUTE_SQL = (
    '((CAST("t" / 60 AS INTEGER) - ("t" < 0 AND CAST("t" / 60 AS INTEGER) * 60 <> "t")) * 60)'
)


class HistorianError(RuntimeError):
    """The writer thread failed; raised on the caller's next record_*/flush."""


def column_name(point: str, taken: set[str] | None = None) -> str:
    """A safe SQL identifier for ``point``: dots become ``__``.

    Anything else outside ``[A-Za-z0-9_]`` is hex-escaped, names that would clash
    with the shard's own columns (``t``, ``quality``, ``n``) or start with a digit
    get a ``p_`` prefix, and a name already in ``taken`` (compared
    case-insensitively, as SQLite does) gets a numeric suffix. ``taken`` is
    updated, so one set keeps a whole database's columns distinct.
    """
    col = _UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", point.replace(".", "__"))
    if not col or col[0].isdigit() or col.lower() in _RESERVED or col.lower().startswith("sqlite"):
        col = "p_" + col
    if taken is not None:
        base, k = col, 2
        while col.lower() in taken:
            col = f"{base}_{k}"
            k += 1
        taken.add(col.lower())
    return col


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _minute(t: float) -> float:
    return math.floor(t / MINUTE_S) * MINUTE_S


def _json_default(o: object) -> object:
    """Let event data carry numpy scalars and arrays (the core produces them)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"event data value of type {type(o).__name__} is not JSON serialisable")


class _Waiter:
    """A caller blocked until the writer reaches (and commits) its request."""

    __slots__ = ("done", "error", "payload", "result")

    def __init__(self, payload: object = None) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.payload = payload
        self.result: object = None

    def release(self, error: BaseException | None = None, result: object = None) -> None:
        self.error = error
        self.result = result
        self.done.set()

    def wait(self, timeout: float, what: str) -> object:
        if not self.done.wait(timeout):
            raise TimeoutError(f"historian {what} not committed within {timeout:g} s")
        if self.error is not None:
            raise HistorianError(f"historian {what} failed: {self.error!r}") from self.error
        return self.result


class _Acc:
    """Running mean/min/max of one minute, one slot per point (list or shard order)."""

    __slots__ = ("cnt", "mn", "mx", "rows", "sum")

    def __init__(self, n: int) -> None:
        self.rows = 0
        self.sum = np.zeros(n)
        self.cnt = np.zeros(n, np.int64)
        self.mn = np.full(n, np.nan)
        self.mx = np.full(n, np.nan)

    def add(self, v: np.ndarray) -> None:
        ok = ~np.isnan(v)
        self.sum += np.where(ok, v, 0.0)
        self.cnt += ok
        np.fmin(self.mn, v, out=self.mn)  # fmin/fmax skip NaN, like SQL min/max skip NULL
        np.fmax(self.mx, v, out=self.mx)
        self.rows += 1

    def add_block(self, block: np.ndarray) -> None:
        """Fold several rows (one per scan) at once."""
        ok = ~np.isnan(block)
        self.sum += np.where(ok, block, 0.0).sum(axis=0)
        self.cnt += ok.sum(axis=0)
        np.fmin(self.mn, np.fmin.reduce(block, axis=0), out=self.mn)
        np.fmax(self.mx, np.fmax.reduce(block, axis=0), out=self.mx)
        self.rows += len(block)

    def stats(self) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.cnt > 0, self.sum / np.maximum(self.cnt, 1), np.nan)
        return {"mean": mean, "min": self.mn, "max": self.mx}


class _Shard:
    """One telemetry table: its columns in slot order and where they come from."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.cols: list[str] = []
        self.names: list[str] = []
        self.take = np.zeros(0, np.intp)  # slot -> position in the values array (N = absent)
        self.partial = False  # some slot has no point in the current list
        self.insert_sql = ""
        self.agg_sql: dict[str, str] = {}  # aggregate minutes from the raw rows
        self.put_sql: dict[str, str] = {}  # store accumulated minutes

    @property
    def table(self) -> str:
        return f"telemetry_{self.k}"

    def prepare(self, position: Mapping[str, int], n_points: int) -> None:
        self.take = np.array([position.get(n, n_points) for n in self.names], np.intp)
        self.partial = bool((self.take == n_points).any())
        cols = ", ".join(_q(c) for c in self.cols)
        marks = ", ".join("?" * (len(self.cols) + 2))
        self.insert_sql = (
            f'INSERT OR IGNORE INTO {_q(self.table)} ("t", "quality", {cols}) VALUES ({marks})'
        )
        for stat, fn in _STAT_SQL.items():
            n_col, n_expr = ('"n", ', "count(*), ") if stat == "mean" else ("", "")
            exprs = ", ".join(f"{fn}({_q(c)})" for c in self.cols)
            self.put_sql[stat] = (
                f'INSERT OR REPLACE INTO {_q(f"agg_{stat}_{self.k}")} ("t", {n_col}{cols}) '
                f"VALUES ({', '.join('?' * (len(self.cols) + 1 + bool(n_col)))})"
            )
            self.agg_sql[stat] = (
                f'INSERT OR REPLACE INTO {_q(f"agg_{stat}_{self.k}")} ("t", {n_col}{cols}) '
                f"SELECT {_MINUTE_SQL} AS m, {n_expr}{exprs} FROM {_q(self.table)} "
                f'WHERE "t" >= ? AND "t" < ? GROUP BY m'
            )


class Historian:
    """Telemetry, events, audit and controller state of one site, in SQLite.

    Writes are queued to one writer thread (cheap for the scan); reads run on a
    separate read-only connection and see what is committed (call ``flush()``
    first to see what was just recorded). Use as a context manager or call
    ``close()``: closing commits everything queued; a process that exits
    without it loses the telemetry of the last ``batch_s`` (the file stays
    consistent; events and audit are already committed).
    """

    def __init__(
        self,
        path: str | Path,
        point_names: Sequence[str],
        *,
        raw_days: float = 7.0,
        agg_days: float = 400.0,
        batch_s: float = 1.0,
        site_name: str = "",
        point_info: Mapping[str, tuple[str, float | None, float | None]] | None = None,
    ) -> None:
        """Open (creating or extending) the database at ``path``.

        ``point_names`` is the point map's order: ``record_scan`` arrays are
        aligned with it. ``point_info`` (name → (unit, lo, hi)), if given, is
        stored with new points so readers can label trends without the map.
        A ``site_name`` that differs from the one stored raises ``ValueError``,
        so one site's controller never writes into another site's history.
        """
        names = list(point_names)
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise ValueError(f"duplicate point name {dup!r}")
        if raw_days <= 0 or agg_days <= 0 or batch_s <= 0:
            raise ValueError("raw_days, agg_days and batch_s must be positive")
        self.path = Path(path)
        self.point_names: tuple[str, ...] = tuple(names)
        self.raw_days = float(raw_days)
        self.agg_days = float(agg_days)
        self.batch_s = float(batch_s)
        self.site_name = site_name
        n = len(names)
        self._n = n
        self._position = {name: i for i, name in enumerate(names)}
        row_bytes = 9 * max(n, 1) + 64
        self._max_backlog = max(100, BACKLOG_BYTES // row_bytes)
        self._max_tx_scans = max(1, TX_BYTES // row_bytes)

        # -- schema (on the caller's thread, so a bad file fails here) ------
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wconn = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
        try:
            self._wdb = sqlite_utils.Database(wconn, execute_plugins=False)
            # page_size only takes effect on a new file, before WAL is on
            wconn.execute("PRAGMA page_size=4096")
            mode = wconn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistorianError(f"cannot put {self.path} in WAL mode (got {mode!r})")
            wconn.execute("PRAGMA synchronous=NORMAL")
            wconn.execute("PRAGMA secure_delete=FAST")  # retention: no extra I/O for zeroing
            wconn.execute("PRAGMA journal_size_limit=67108864")
            self._shards = self._init_schema(names, point_info or {})
        except BaseException:
            wconn.close()
            raise
        self._wconn = wconn
        for shard in self._shards:
            shard.prepare(self._position, n)
        self._col_of: dict[str, tuple[int, str, int]] = {
            name: (s.k, c, slot)
            for s in self._shards
            for slot, (name, c) in enumerate(zip(s.names, s.cols, strict=True))
        }
        self._agg_until: dict[int, float | None] = {s.k: None for s in self._shards} | {
            int(r[0]): r[1]
            for r in wconn.execute('SELECT "shard", "until" FROM "agg_progress"').fetchall()
        }
        tmax = [
            wconn.execute(f'SELECT max("t") FROM {_q(s.table)}').fetchone()[0] for s in self._shards
        ]
        self._max_t: float | None = max((x for x in tmax if x is not None), default=None)
        last = wconn.execute('SELECT "value" FROM "meta" WHERE "key" = ?', ("last_retention",))
        row = last.fetchone()
        # due an hour (of data time) after the last run, or after the oldest raw row
        self._next_retention: float | None = (
            None if row is None else float(row[0]) + RETENTION_EVERY_S
        )
        self._dirty: set[float] = set()  # minutes to recompute from the raw rows
        self._last_dup = 0

        # -- reader ----------------------------------------------------------
        rconn = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
        rconn.execute("PRAGMA query_only=ON")
        self._rdb = sqlite_utils.Database(rconn, execute_plugins=False)
        self._rconn = rconn
        self._rlock = threading.Lock()

        # -- writer ----------------------------------------------------------
        # scans go on a deque that does not wake the writer (it polls every
        # batch_s); everything else goes on a queue that wakes it at once
        self._scans: collections.deque[tuple[float, np.ndarray, np.ndarray]] = collections.deque()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._pool: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._pool_max = 64
        self._dropped = itertools.count(1)  # next() is atomic in CPython
        self._dropped_n = 0
        self._dropped_reported = 0
        self._duplicates = 0
        self._p_scans: list[tuple[float, np.ndarray, np.ndarray]] = []
        self._p_urgent: list[tuple] = []
        self._p_flush: list[_Waiter] = []
        self._p_retention: list[_Waiter] = []
        self._open_max_t = self._max_t
        self._live_from: float | None = None  # first minute seen whole by this process
        self._acc: dict[float, _Acc] = {}
        self._closing = False
        self._closed = False
        self._retry_at = 0.0
        self._err_lock = threading.Lock()
        self._error: BaseException | None = None
        self._unreported: BaseException | None = None
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

    # ======================================================================
    # schema
    # ======================================================================
    def _init_schema(
        self, names: list[str], info: Mapping[str, tuple[str, float | None, float | None]]
    ) -> list[_Shard]:
        """Create the tables, or add columns for points new to this database.

        One transaction (DDL is transactional in SQLite): a crash while
        creating or extending leaves the previous schema, never half of one.
        """
        db = self._wdb
        with db.atomic():
            db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db["points"].create(
                {
                    "name": str,
                    "shard": int,
                    "col": str,
                    "slot": int,
                    "idx": int,
                    "unit": str,
                    "lo": float,
                    "hi": float,
                    "added": float,
                },
                pk="name",
                if_not_exists=True,
            )
            db["agg_progress"].create(
                {"shard": int, "until": float}, pk="shard", if_not_exists=True
            )
            db["events"].create(
                {
                    "id": int,
                    "t": float,
                    "kind": str,
                    "source": str,
                    "message": str,
                    "severity": int,
                    "data": str,
                },
                pk="id",
                if_not_exists=True,
            )
            db["events"].create_index(["t"], if_not_exists=True)
            db["audit"].create(
                {
                    "id": int,
                    "t": float,
                    "who": str,
                    "where": str,
                    "point": str,
                    "old": float,
                    "new": float,
                    "why": str,
                    "ok": int,
                },
                pk="id",
                if_not_exists=True,
            )
            db["audit"].create_index(["t"], if_not_exists=True)
            db["state"].create(
                {"key": str, "value": str, "saved": float}, pk="key", if_not_exists=True
            )

            meta = {r["key"]: r["value"] for r in db.query('SELECT * FROM "meta"')}
            stored_site = meta.get("site_name", "")
            if self.site_name and stored_site and stored_site != self.site_name:
                raise ValueError(
                    f"{self.path} holds the history of site {stored_site!r}, not {self.site_name!r}"
                )
            version = int(meta.get("schema_version", SCHEMA_VERSION))
            if version > SCHEMA_VERSION:
                raise HistorianError(
                    f"{self.path} has schema {version}, newer than {SCHEMA_VERSION}"
                )

            rows = list(db.query('SELECT * FROM "points" ORDER BY "shard", "slot"'))
            shards: list[_Shard] = []
            taken: set[str] = set()
            for r in rows:
                while len(shards) <= r["shard"]:
                    shards.append(_Shard(len(shards)))
                shards[r["shard"]].cols.append(r["col"])
                shards[r["shard"]].names.append(r["name"])
                taken.add(r["col"].lower())
            known = {r["name"] for r in rows}
            next_idx = len(rows)
            now = time.time()
            new_rows = []
            fresh: dict[int, list[str]] = {}  # shard -> columns added now
            for name in names:
                if name in known:
                    continue
                if not shards or len(shards[-1].cols) >= MAX_POINTS_PER_SHARD:
                    shards.append(_Shard(len(shards)))
                s = shards[-1]
                col = column_name(name, taken)
                unit, lo, hi = info.get(name, ("", None, None))
                new_rows.append(
                    {
                        "name": name,
                        "shard": s.k,
                        "col": col,
                        "slot": len(s.cols),
                        "idx": next_idx,
                        "unit": unit,
                        "lo": lo,
                        "hi": hi,
                        "added": now,
                    }
                )
                next_idx += 1
                s.cols.append(col)
                s.names.append(name)
                fresh.setdefault(s.k, []).append(col)
            existing_tables = set(db.table_names())
            for k, cols in fresh.items():
                s = shards[k]
                if s.table not in existing_tables:
                    spec: dict[str, Any] = {"t": float, "quality": bytes}
                    spec.update(dict.fromkeys(s.cols, float))
                    db[s.table].create(spec, pk="t")
                    for stat in _STAT_SQL:
                        aspec: dict[str, Any] = {"t": float}
                        if stat == "mean":
                            aspec["n"] = int
                        aspec.update(dict.fromkeys(s.cols, float))
                        db[f"agg_{stat}_{k}"].create(aspec, pk="t")
                else:
                    for col in cols:
                        for table in (s.table, *(f"agg_{st}_{k}" for st in _STAT_SQL)):
                            db[table].add_column(col, float)
            if new_rows:
                db["points"].insert_all(new_rows)
            db["meta"].upsert_all(
                [
                    {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    {"key": "site_name", "value": stored_site or self.site_name},
                ]
                + ([] if "created" in meta else [{"key": "created", "value": repr(now)}]),
                pk="key",
            )
        return shards

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
            # page fault per 4 KiB (measured 43 us instead of 7 us at 10,000 points)
            try:
                vb, qb = self._pool.pop()
            except IndexError:
                vb, qb = np.empty(self._n), np.empty(self._n, np.uint8)
            np.copyto(vb, v)
            np.copyto(qb, qa)
            self._scans.append((t, vb, qb))
        if self._unreported is not None:
            self._raise_pending(queued=True)

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
        w = _Waiter(("st", str(key), payload, time.time()))
        self._q.put(("w", w))
        w.wait(timeout, f"save_state({key!r})")

    def load_state(self, key: str) -> dict | None:
        """The last committed value of ``save_state(key)``, or None."""
        with self._rlock:
            sql = 'SELECT "value" FROM "state" WHERE "key" = ?'
            row = self._rconn.execute(sql, (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything recorded before this call is committed."""
        if self._unreported is not None or self._dead or self._closed:
            self._raise_pending(queued=False)
        w = _Waiter()
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

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything recorded, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._q.put(("c",))
            self._thread.join(timeout)
        with self._rlock:
            self._rconn.close()
        if self._thread.is_alive():
            raise HistorianError(f"historian writer did not stop within {timeout:g} s")
        if self._unreported is not None:
            self._raise_pending(queued=False)

    # -- errors and counters ------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The last exception on the writer thread (None if there was none)."""
        return self._error

    @property
    def dropped_scans(self) -> int:
        """Scans dropped because the writer fell more than the backlog behind."""
        return self._dropped_n

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

    def _fail(self, exc: BaseException) -> None:
        with self._err_lock:
            self._error = exc
            self._unreported = exc
        self._retry_at = time.monotonic() + RETRY_S

    # ======================================================================
    # the writer thread
    # ======================================================================
    def _run(self) -> None:
        try:
            next_batch = time.monotonic() + self.batch_s
            while True:
                now = time.monotonic()
                if now < self._retry_at:
                    wait = self._retry_at - now
                elif self._p_flush or self._p_retention or self._closing or self._p_urgent:
                    wait = 0.0
                else:
                    wait = max(0.0, next_batch - now)
                self._drain(wait)
                now = time.monotonic()
                if now < self._retry_at:  # a commit failed: no flush can succeed yet
                    err = self._error or HistorianError("commit failed, retrying")
                    for w in self._p_flush:
                        w.release(err)
                    self._p_flush = []
                    continue
                batch_due = now >= next_batch or bool(self._p_flush) or self._closing
                if batch_due:
                    next_batch = now + self.batch_s
                self._service(batch_due)
                if self._closing and not (
                    self._scans or self._p_scans or self._p_urgent or self._p_flush
                ):
                    break
        except BaseException as exc:  # never die silently
            self._dead = True
            self._fail(exc)
            self._release_all(exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()

    def _drain(self, timeout: float) -> None:
        """Move the control queue into the pending lists (blocking up to timeout)."""
        try:
            item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return
        while True:
            kind = item[0]
            if kind in ("e", "a", "w"):
                self._p_urgent.append(item)
            elif kind == "f":
                self._p_flush.append(item[1])
            elif kind == "r":
                self._p_retention.append(item[1])
            elif kind == "c":
                self._closing = True
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return

    def _service(self, batch_due: bool) -> None:
        """Commit urgent rows; on a batch tick also the scans, then aggregates
        and retention; release the flush waiters whose records are in."""
        waiters, self._p_flush = self._p_flush, []
        try:
            self._commit_urgent()
            if batch_due:
                # every scan appended before a waiter's flush() call is on the deque now
                while self._scans:
                    self._p_scans.append(self._scans.popleft())
                self._pool_max = min(self._max_backlog, max(self._pool_max, 2 * len(self._p_scans)))
                while self._p_scans:
                    chunk = self._p_scans[: self._max_tx_scans]
                    self._tx(lambda c=chunk: self._write_scans(c))
                    del self._p_scans[: len(chunk)]
                    self._accumulate(chunk, self._last_dup)
                    for _, vb, qb in chunk:  # buffers back to record_scan
                        if len(self._pool) < self._pool_max:
                            self._pool.append((vb, qb))
                    self._interleave()
                self._after_scans()
            while self._p_retention:
                w = self._p_retention[0]
                w.release(result=self._retention(float(w.payload)))  # type: ignore[arg-type]
                self._p_retention.pop(0)
            self._commit_urgent()
        except Exception as exc:
            self._fail(exc)
            self._trim_backlog()
            for w in waiters + self._p_retention:
                w.release(exc)
            self._p_retention = []
            return
        for w in waiters:
            w.release()

    def _tx(self, body: Callable[[], None], *, durable: bool = False) -> None:
        """One transaction; FULL sync for the rows that must survive power loss."""
        c = self._wconn
        if durable:
            c.execute("PRAGMA synchronous=FULL")
        try:
            with self._wdb.atomic():
                body()
        finally:
            if durable:
                c.execute("PRAGMA synchronous=NORMAL")

    def _interleave(self) -> None:
        """Between two long transactions: take new requests, commit the urgent ones."""
        self._drain(0.0)
        self._commit_urgent()

    def _commit_urgent(self) -> None:
        """Commit queued events, audit rows and state in one fsynced transaction."""
        self._report_drops()
        if not self._p_urgent:
            return
        items = self._p_urgent
        try:
            self._tx(lambda: self._write_urgent(items), durable=True)
        except Exception as exc:
            # a state caller gets the error now (it is blocked); events and audit retry
            self._p_urgent = [i for i in items if i[0] != "w"]
            for i in items:
                if i[0] == "w":
                    i[1].release(exc)
            raise
        self._p_urgent = []
        for i in items:
            if i[0] == "w":
                i[1].release()

    def _write_urgent(self, items: list[tuple]) -> None:
        c = self._wconn
        ev = [i[1:] for i in items if i[0] == "e"]
        au = [i[1:] for i in items if i[0] == "a"]
        st = [i[1].payload[1:] for i in items if i[0] == "w"]
        if ev:
            c.executemany(
                'INSERT INTO "events" ("t", "kind", "source", "message", "severity", "data") '
                "VALUES (?, ?, ?, ?, ?, ?)",
                ev,
            )
        if au:
            c.executemany(
                'INSERT INTO "audit" ("t", "who", "where", "point", "old", "new", "why", "ok") '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                au,
            )
        if st:
            c.executemany(
                'INSERT OR REPLACE INTO "state" ("key", "value", "saved") VALUES (?, ?, ?)', st
            )

    def _writer_event(self, kind: str, message: str, severity: int, data: dict) -> None:
        t = self._max_t if self._max_t is not None else time.time()
        self._p_urgent.append(("e", t, kind, "historian", message, severity, json.dumps(data)))

    def _report_drops(self) -> None:
        dropped = self._dropped_n
        if dropped > self._dropped_reported:
            self._writer_event(
                "alarm",
                f"historian overrun: {dropped - self._dropped_reported} scans dropped",
                800,
                {"dropped_total": dropped},
            )
            self._dropped_reported = dropped

    def _trim_backlog(self) -> None:
        """While commits fail, keep at most the backlog bound of scans (oldest go)."""
        extra = len(self._p_scans) - self._max_backlog
        if extra > 0:
            del self._p_scans[:extra]
            for _ in range(extra):
                self._dropped_n = next(self._dropped)

    def _write_scans(self, scans: list[tuple[float, np.ndarray, np.ndarray]]) -> None:
        """Insert scans into every shard (inside the caller's transaction)."""
        self._last_dup = 0
        if not self._shards:
            return
        c = self._wconn
        if any(s.partial for s in self._shards):  # a column without a point in the list
            nan = np.array([np.nan])
            absent = np.array([QUALITY_ABSENT], np.uint8)
            ext = [(t, np.concatenate((v, nan)), np.concatenate((q, absent))) for t, v, q in scans]
        else:
            ext = scans
        inserted = 0
        for s in self._shards:
            rows = []
            for t, v, q in ext:
                qs = q[s.take]
                rows.append([t, qs.tobytes() if qs.any() else None, *v[s.take].tolist()])
            cur = c.executemany(s.insert_sql, rows)
            if s.k == 0:
                inserted = cur.rowcount
        self._last_dup = len(scans) - inserted

    # -- aggregates and retention (writer thread) ---------------------------
    def _accumulate(self, scans: list[tuple[float, np.ndarray, np.ndarray]], dups: int) -> None:
        """Account for committed scans; fold them into per-minute accumulators.

        Only minutes this process saw from their start are accumulated; older
        ones are aggregated from the raw rows (catch-up after a restart). A
        scan for a minute already aggregated, or a batch with duplicate
        timestamps (``dups`` scans were ignored), marks its minute for
        recomputation from the raw rows.
        """
        tmax = max(t for t, _, _ in scans)
        if self._max_t is None or tmax > self._max_t:
            self._max_t = tmax
        if dups > 0:
            self._duplicates += dups
            self._writer_event(
                "info",
                f"historian: {dups} scans with an already stored timestamp were ignored",
                300,
                {"duplicates_total": self._duplicates},
            )
        if not self._shards:
            return
        dup = dups > 0
        if self._live_from is None:
            live = _minute(min(t for t, _, _ in scans)) + MINUTE_S
            if self._open_max_t is not None:
                live = max(live, _minute(self._open_max_t) + MINUTE_S)
            self._live_from = live
        done = max((u for u in self._agg_until.values() if u is not None), default=-math.inf)
        for t, v, _ in scans:
            m = _minute(t)
            if m < done:
                self._dirty.add(m)
            elif m < self._live_from:
                continue  # catch-up aggregates it from the raw rows
            elif dup or m in self._dirty:
                self._dirty.add(m)
                self._acc.pop(m, None)
            else:
                acc = self._acc.get(m)
                if acc is None:
                    acc = self._acc[m] = _Acc(self._n)
                acc.add(v)
        if len(self._acc) > MAX_OPEN_MINUTES:  # scans far out of order: recompute instead
            for m in sorted(self._acc)[:-MAX_OPEN_MINUTES]:
                del self._acc[m]
                self._dirty.add(m)

    def _after_scans(self) -> None:
        self._aggregate()
        if self._max_t is None or not self._shards:
            return
        if self._next_retention is None:
            oldest = self._wconn.execute('SELECT min("t") FROM "telemetry_0"').fetchone()[0]
            self._next_retention = (
                oldest if oldest is not None else self._max_t
            ) + RETENTION_EVERY_S
        if self._max_t >= self._next_retention:
            self._retention(self._max_t)

    def _aggregate(self) -> None:
        """Write the aggregates of every completed minute and advance the watermarks.

        A minute is complete once a scan of a later minute is committed. Minutes
        from before this process started are aggregated from the raw rows, a few
        hundred rows per transaction; live minutes come from the accumulators, all
        shards in one transaction with the watermarks.
        """
        if self._max_t is None or not self._shards or self._live_from is None:
            return
        done = _minute(self._max_t)
        cut = min(done, self._live_from)
        for s in self._shards:
            self._catch_up(s, cut)
        ready = sorted(m for m in self._acc if m < done and m not in self._dirty)
        redo = sorted(m for m in self._dirty if m < done)
        if (
            not ready
            and not redo
            and all(u is not None and u >= done for u in self._agg_until.values())
        ):
            return
        stats = {m: self._acc[m].stats() for m in ready}
        rows_n = {m: self._acc[m].rows for m in ready}
        c = self._wconn
        nan = np.array([np.nan])

        def body() -> None:
            for s in self._shards:
                self._put_minutes(
                    s,
                    [
                        (m, rows_n[m], {k: np.concatenate((v, nan))[s.take] for k, v in st.items()})
                        for m, st in stats.items()
                    ],
                )
                self._agg_minutes(s, [(m, m + MINUTE_S) for m in redo])
                c.execute(
                    'INSERT OR REPLACE INTO "agg_progress" ("shard", "until") VALUES (?, ?)',
                    (s.k, max(done, self._agg_until.get(s.k) or -math.inf)),
                )

        self._tx(body)
        for s in self._shards:
            self._agg_until[s.k] = max(done, self._agg_until.get(s.k) or -math.inf)
        for m in ready:
            del self._acc[m]
        self._dirty.difference_update(redo)

    def _catch_up(self, s: _Shard, cut: float) -> None:
        """Aggregate shard ``s`` from its raw rows up to minute ``cut``.

        Reads CATCH_UP_ROWS rows at a time into the same accumulators the live
        path uses (one read for the three statistics: 2.2x faster than three
        ``INSERT … SELECT avg/min/max`` passes, and a transaction never holds more
        than one chunk, even for a minute of thousands of rows).
        """
        c = self._wconn
        until = self._agg_until.get(s.k)
        lo = -math.inf if until is None else until
        cols = ", ".join(_q(col) for col in s.cols)
        sql = (
            f'SELECT "t", {cols} FROM {_q(s.table)} WHERE "t" >= ? AND "t" < ? ORDER BY "t" LIMIT ?'
        )
        partial: dict[float, _Acc] = {}
        while until is None or until < cut:
            rows = c.execute(sql, (lo, cut, CATCH_UP_ROWS)).fetchall()
            if rows:
                a = np.array(rows, np.float64).reshape(len(rows), 1 + len(s.cols))
                minutes = np.floor(a[:, 0] / MINUTE_S) * MINUTE_S
                for m in np.unique(minutes).tolist():
                    acc = partial.get(m)
                    if acc is None:
                        acc = partial[m] = _Acc(len(s.cols))
                    acc.add_block(a[minutes == m, 1:])
                lo = math.nextafter(float(a[-1, 0]), math.inf)
            # the last row's minute may go on in the next chunk
            reached = cut if len(rows) < CATCH_UP_ROWS else _minute(rows[-1][0])
            complete = sorted(m for m in partial if m < reached)

            def step(complete: list = complete, reached: float = reached) -> None:
                self._put_minutes(s, [(m, partial[m].rows, partial[m].stats()) for m in complete])
                c.execute(
                    'INSERT OR REPLACE INTO "agg_progress" ("shard", "until") VALUES (?, ?)',
                    (s.k, reached),
                )

            self._tx(step)
            for m in complete:
                del partial[m]
            until = self._agg_until[s.k] = reached
            self._interleave()

    def _put_minutes(self, s: _Shard, minutes: list[tuple[float, int, dict]]) -> None:
        """Store (minute, raw row count, {stat: values in slot order}) rows."""
        for stat in _STAT_SQL:
            rows = [
                [m, n, *st[stat].tolist()] if stat == "mean" else [m, *st[stat].tolist()]
                for m, n, st in minutes
            ]
            if rows:
                self._wconn.executemany(s.put_sql[stat], rows)

    def _agg_minutes(self, s: _Shard, ranges: Iterable[tuple[float, float]]) -> None:
        c = self._wconn
        for lo, hi in ranges:
            for stat in _STAT_SQL:
                c.execute(s.agg_sql[stat], (lo, hi))

    def _retention(self, now: float) -> dict:
        """Delete raw rows older than raw_days that are aggregated, and old aggregates."""
        if not self._shards:
            return {"raw_rows": 0, "agg_rows": 0, "raw_cutoff": None, "agg_cutoff": None}
        c = self._wconn
        known = list(self._agg_until.values())
        agg_floor = -math.inf if (not known or None in known) else min(known)  # type: ignore[type-var]
        raw_cutoff = min(now - self.raw_days * DAY_S, agg_floor)
        agg_cutoff = now - self.agg_days * DAY_S
        raw_deleted = 0
        while True:
            row = c.execute(
                'SELECT "t" FROM "telemetry_0" WHERE "t" < ? ORDER BY "t" LIMIT 1 OFFSET ?',
                (raw_cutoff, RETENTION_CHUNK - 1),
            ).fetchone()
            upto = raw_cutoff if row is None else math.nextafter(row[0], math.inf)
            counts: list[int] = []

            def delete_raw(upto: float = upto, counts: list = counts) -> None:
                for s in self._shards:
                    cur = c.execute(f'DELETE FROM {_q(s.table)} WHERE "t" < ?', (upto,))
                    counts.append(cur.rowcount)

            self._tx(delete_raw)
            raw_deleted += max(counts, default=0)
            self._interleave()
            if row is None:
                break
        agg_counts: list[int] = []

        def delete_agg() -> None:
            for s in self._shards:
                for stat in _STAT_SQL:
                    cur = c.execute(
                        f'DELETE FROM {_q(f"agg_{stat}_{s.k}")} WHERE "t" <= ?',
                        (agg_cutoff - MINUTE_S,),
                    )
                    agg_counts.append(cur.rowcount)
            c.execute(
                'INSERT OR REPLACE INTO "meta" ("key", "value") VALUES (?, ?)',
                ("last_retention", repr(float(now))),
            )

        self._tx(delete_agg)
        self._next_retention = now + RETENTION_EVERY_S
        return {
            "raw_rows": raw_deleted,
            "agg_rows": max(agg_counts, default=0),
            "raw_cutoff": raw_cutoff,
            "agg_cutoff": agg_cutoff,
        }

    def retention(self, now: float, timeout: float = 600.0) -> dict:
        """Apply retention as of data time ``now``; returns what was deleted.

        ``raw_rows``/``agg_rows`` count scans/minutes deleted. Raw rows are kept
        past ``raw_days`` until the aggregator has covered them. Runs on the
        writer thread (the only writer), so this call waits for it.
        """
        if threading.current_thread() is self._thread:
            return self._retention(float(now))
        if self._dead or self._closed:
            self._raise_pending(queued=False)
        w = _Waiter(float(now))
        self._q.put(("r", w))
        return w.wait(timeout, "retention")  # type: ignore[return-value]

    def _release_all(self, exc: BaseException) -> None:
        for w in self._p_flush + self._p_retention:
            w.release(exc)
        for i in self._p_urgent:
            if i[0] == "w":
                i[1].release(exc)
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item[0] in ("f", "r", "w"):
                item[1].release(exc)

    # ======================================================================
    # reading
    # ======================================================================
    def _where(self, name: str) -> tuple[int, str, int]:
        try:
            return self._col_of[name]
        except KeyError:
            raise KeyError(f"no point {name!r} in the historian") from None

    def _raw_choice(self, t0: float) -> str:
        """'raw' if raw rows cover t0 (or nothing older exists), else '1m'."""
        c = self._rconn
        raw_start = c.execute('SELECT min("t") FROM "telemetry_0"').fetchone()[0]
        if raw_start is None or t0 >= raw_start:
            agg_start = c.execute('SELECT min("t") FROM "agg_mean_0"').fetchone()[0]
            if raw_start is None and agg_start is not None:
                return "1m"
            return "raw"
        agg_start = c.execute('SELECT min("t") FROM "agg_mean_0"').fetchone()[0]
        # aggregates only help if they hold a minute that raw no longer has
        return "1m" if agg_start is not None and agg_start < _minute(raw_start) else "raw"

    def telemetry(
        self,
        names: Sequence[str],
        t0: float,
        t1: float,
        *,
        resolution: str = "auto",
        stat: str = "mean",
    ) -> dict[str, np.ndarray]:
        """Point histories between t0 and t1 (inclusive) as float arrays.

        Returns ``{"t": times, name: values, ...}``, NULL as NaN. ``resolution``
        is ``"raw"``, ``"1m"`` (aggregates, ``t`` = minute start, ``stat`` one of
        mean/min/max) or ``"auto"``: raw while the raw rows reach back to t0,
        else the 1-minute aggregates — raw is deleted after ``raw_days``.
        Reads one snapshot, so all points come from the same committed scans.
        """
        if resolution not in ("auto", "raw", "1m"):
            raise ValueError(f"resolution must be auto, raw or 1m, not {resolution!r}")
        if stat not in _STAT_SQL:
            raise ValueError(f"stat must be one of {sorted(_STAT_SQL)}, not {stat!r}")
        where = [(n, *self._where(n)) for n in names]
        if not self._shards:
            return {"t": np.zeros(0)}
        by_shard: dict[int, list[tuple[str, str]]] = {}
        for n, k, col, _slot in where:
            by_shard.setdefault(k, []).append((n, col))
        with self._rlock:
            c = self._rconn
            c.execute("BEGIN")
            try:
                if resolution == "auto":
                    resolution = self._raw_choice(t0)
                lo = float(t0) if resolution == "raw" else _minute(float(t0))
                parts = []
                for k, cols in (by_shard or {0: []}).items():
                    table = f"telemetry_{k}" if resolution == "raw" else f"agg_{stat}_{k}"
                    sel = ", ".join(['"t"', *(_q(col) for _, col in cols)])
                    rows = c.execute(
                        f'SELECT {sel} FROM {_q(table)} WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                        (lo, float(t1)),
                    ).fetchall()
                    arr = np.array(rows, dtype=np.float64).reshape(len(rows), 1 + len(cols))
                    parts.append((arr[:, 0], [(n, arr[:, j + 1]) for j, (n, _) in enumerate(cols)]))
            finally:
                c.execute("COMMIT")
        return _align(parts)

    def quality(self, names: Sequence[str], t0: float, t1: float) -> dict[str, np.ndarray]:
        """Raw quality codes (uint8) between t0 and t1: ``{"t": times, name: codes}``.

        Points absent from a scan (not yet or no longer in the point list) read 2 (bad).
        """
        where = [(n, *self._where(n)) for n in names]
        if not self._shards:
            return {"t": np.zeros(0)}
        by_shard: dict[int, list[tuple[str, int]]] = {}
        for n, k, _col, slot in where:
            by_shard.setdefault(k, []).append((n, slot))
        parts = []
        with self._rlock:
            c = self._rconn
            c.execute("BEGIN")
            try:
                for k, slots in (by_shard or {0: []}).items():
                    rows = c.execute(
                        f'SELECT "t", "quality" FROM "telemetry_{k}" '
                        'WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                        (float(t0), float(t1)),
                    ).fetchall()
                    t = np.array([r[0] for r in rows], np.float64)
                    out = []
                    for n, slot in slots:
                        col = np.empty(len(rows), np.float64)
                        for i, (_, blob) in enumerate(rows):
                            if blob is None:
                                col[i] = 0
                            else:
                                col[i] = blob[slot] if slot < len(blob) else QUALITY_ABSENT
                        out.append((n, col))
                    parts.append((t, out))
            finally:
                c.execute("COMMIT")
        res = _align(parts, fill=QUALITY_ABSENT)
        return {k: (v if k == "t" else v.astype(np.uint8)) for k, v in res.items()}

    def events(
        self,
        t0: float | None = None,
        t1: float | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[dict]:
        """Committed events in [t0, t1], oldest first; the newest ``limit`` of them."""
        sql, params = _window_sql("events", t0, t1)
        if kinds:
            sql += f' AND "kind" IN ({", ".join("?" * len(kinds))})'
            params += list(kinds)
        with self._rlock:
            rows = list(self._rdb.query(sql + _NEWEST, [*params, limit]))
        for r in rows:
            r["data"] = json.loads(r["data"]) if r["data"] else {}
        return rows[::-1]

    def audit(
        self, t0: float | None = None, t1: float | None = None, limit: int = 1000
    ) -> list[dict]:
        """Committed audit rows in [t0, t1], oldest first; the newest ``limit``."""
        sql, params = _window_sql("audit", t0, t1)
        with self._rlock:
            rows = list(self._rdb.query(sql + _NEWEST, [*params, limit]))
        for r in rows:
            r["ok"] = bool(r["ok"])
        return rows[::-1]

    def points(self) -> list[dict]:
        """Every point the database has ever held: name, shard, col, slot, idx, unit, lo, hi."""
        with self._rlock:
            return list(self._rdb.query('SELECT * FROM "points" ORDER BY "idx"'))


def _window_sql(table: str, t0: float | None, t1: float | None) -> tuple[str, list]:
    sql, params = f'SELECT * FROM "{table}" WHERE 1', []
    if t0 is not None:
        sql += ' AND "t" >= ?'
        params.append(float(t0))
    if t1 is not None:
        sql += ' AND "t" <= ?'
        params.append(float(t1))
    return sql, params


def _align(
    parts: list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]], fill: float = np.nan
) -> dict[str, np.ndarray]:
    """Merge per-shard reads on their timestamps (shards added later lack old scans)."""
    if not parts:
        return {"t": np.zeros(0)}
    t = parts[0][0]
    if any(len(p[0]) != len(t) or not np.array_equal(p[0], t) for p in parts[1:]):
        t = np.unique(np.concatenate([p[0] for p in parts]))
    out: dict[str, np.ndarray] = {"t": t}
    for tk, cols in parts:
        same = len(tk) == len(t) and np.array_equal(tk, t)
        pos = None if same else np.searchsorted(t, tk)
        for name, col in cols:
            if same:
                out[name] = col
            else:
                full = np.full(len(t), fill, np.float64)
                full[pos] = col
                out[name] = full
    return out


# ==========================================================================
# measurement (the numbers in the module docstring)
# ==========================================================================
def benchmark(directory: str | Path, points: int = 10_000, scans: int = 300) -> dict[str, float]:
    """Caller-side cost of record_scan/record_event, writer throughput, event latency."""
    directory = Path(directory)
    names = [f"dev{i // 20:04d}.p{i % 20:02d}" for i in range(points)]
    rng = np.random.default_rng(0)
    values = rng.normal(50.0, 10.0, (scans, points))
    values[:, ::5] = np.round(values[:, ::5] > 50.0)  # a fifth are booleans
    qual = np.zeros(points, np.uint8)
    out: dict[str, float] = {}
    path = directory / f"bench_{points}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with Historian(path, names, batch_s=1.0) as h:
        for i in range(scans):  # warm up: the writer hands the buffers back
            h.record_scan(1e9 + i, values[i], qual)
        h.flush(timeout=600.0)

        def cost(pace: float, t0: float) -> list[float]:
            out = []
            for i in range(scans):
                start = time.perf_counter()
                h.record_scan(t0 + i, values[i], qual)
                out.append(time.perf_counter() - start)
                time.sleep(pace)
            return out

        hot = cost(0.0, 1e9 + scans)
        h.flush(timeout=600.0)
        paced = cost(0.005, 1e9 + 2 * scans)  # the writer commits once a second meanwhile
        h.flush(timeout=600.0)
        out["record_scan_us_median"] = float(np.median(hot)) * 1e6
        out["record_scan_us_p99"] = float(np.percentile(hot, 99)) * 1e6
        out["record_scan_paced_us_median"] = float(np.median(paced)) * 1e6
        out["record_scan_paced_us_p99"] = float(np.percentile(paced, 99)) * 1e6
        # the floor for the paced figure: a bare copy of the same arrays after the same sleep
        vb, qb = np.empty(points), np.empty(points, np.uint8)
        bare = []
        for i in range(scans):
            start = time.perf_counter()
            np.copyto(vb, values[i])
            np.copyto(qb, qual)
            bare.append(time.perf_counter() - start)
            time.sleep(0.005)
        out["bare_copy_paced_us_median"] = float(np.median(bare)) * 1e6
        # writer throughput: a backlog of scans (1 s apart in data time, so the
        # minutes' aggregates are part of the work) committed 10 scans per transaction
        h.batch_s = 3600.0
        h._max_tx_scans = 10
        for i in range(scans):
            h.record_scan(1e9 + 3 * scans + i, values[i], qual)
        t0 = time.perf_counter()
        h.flush(timeout=600.0)
        out["writer_scans_per_s"] = scans / (time.perf_counter() - t0)
        out["writer_values_per_s"] = out["writer_scans_per_s"] * points
        n = 200
        t0 = time.perf_counter()
        for i in range(n):
            h.record_event(1e9 + i, "info", "bench", "x")
        out["record_event_us"] = (time.perf_counter() - t0) / n * 1e6
        h.flush()
        lat = []
        probe = sqlite3.connect(str(path))
        for i in range(20):
            t0 = time.perf_counter()
            h.record_event(3e9 + i, "info", "bench", "latency")
            while not probe.execute('SELECT 1 FROM "events" WHERE "t" = ?', (3e9 + i,)).fetchone():
                time.sleep(0.0002)
            lat.append(time.perf_counter() - t0)
        probe.close()
        out["event_committed_ms_median"] = float(np.median(lat)) * 1e3
        out["event_committed_ms_max"] = float(np.max(lat)) * 1e3
    out["bytes_per_scan"] = path.stat().st_size / (4 * scans)
    return out


if __name__ == "__main__":  # pragma: no cover
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for n_points, n_scans in ((500, 600), (10_000, 300)):
            print(n_points, {k: round(v, 1) for k, v in benchmark(d, n_points, n_scans).items()})
