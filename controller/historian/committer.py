"""The historian's writer thread: the only writing connection and what it commits.

:class:`WriterThread` is the half of :class:`~.writer.Historian` that runs on
the writer thread (the other half, in ``writer.py``, runs on the callers'
threads and only validates, copies and enqueues). They share the queue, the
pending lists and the error state, declared below.

**Batches.** The thread wakes every ``batch_s`` (or at once for an urgent row,
a flush, a retention request or close), commits the scans that accumulated,
``TX_BYTES`` worth per transaction so a backlog never becomes one huge
commit, then folds them into the minute aggregates (``aggregate.py``).
The rows of the books that accumulated (``economics``, ``gating``) go in one
small transaction of their own on the same tick, with telemetry's durability
(they are retried like scans if it fails).

**Out of the scan's way.** The caller may mark a time-critical stretch (a scan:
its read, decisions and writes) with ``hold_batches``/``release_batches``: a
batch falling due inside it waits for the release (at most ``HOLD_MAX_S``),
so the writer's commit and minute aggregates (tens of ms of CPU at 10,000
points) take the slack between scans instead of sharing the two cores with a
scan's read. Urgent rows never wait.

**Durability** (design principle 6). WAL mode. Telemetry transactions commit
with ``synchronous=NORMAL``: the commit is a ``write()`` into the WAL, which
survives a crash or ``kill -9`` of the process at any instant (the OS holds the
bytes); only a power loss/OS crash can roll back the last telemetry commits,
and never corrupts the file. Events, audit and state are *urgent*: the thread
commits them as soon as it sees them, in their own small transaction with
``synchronous=FULL`` (the WAL is fsynced before ``record_*`` items count as
committed), so they also survive a power loss — also between two long
telemetry, catch-up or retention transactions (:meth:`WriterThread._interleave`).

**Never silent.** An exception rolls its transaction back, is kept as the
historian's ``error`` and re-raised by the next caller; the failed items stay
queued and are retried every ``RETRY_S`` (events/audit forever, scans within
the backlog bound, the oldest dropped and counted beyond it). Dropped scans
are reported as a historian alarm. An exception that ends the thread releases
every blocked caller with it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

import numpy as np
import sqlite_utils

from .aggregate import Aggregator, Scan
from .schema import (
    COMPLIANCE_COLUMNS,
    ECONOMICS_COLUMNS,
    GATING_COLUMNS,
    QUALITY_ABSENT,
    HistorianError,
    Shard,
)

__all__ = ["HOLD_MAX_S", "RETRY_S", "Waiter", "WriterThread"]

#: seconds between retries after a failed commit
RETRY_S = 1.0
#: longest a due batch waits for the caller's scan to end (``hold_batches``): a scan
#: loop that never leaves a gap still gets its telemetry committed
HOLD_MAX_S = 1.0


class Waiter:
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


class WriterThread:
    """The writer-thread half of the ``Historian`` (see the module docstring)."""

    # set up by Historian.__init__
    batch_s: float
    _wconn: sqlite3.Connection
    _wdb: sqlite_utils.Database
    _shards: list[Shard]
    _agg: Aggregator
    _max_backlog: int
    _max_tx_scans: int
    _last_dup: int
    _scans: collections.deque[Scan]
    _books: collections.deque[tuple]
    _p_books: list[tuple]
    _q: queue.SimpleQueue
    _pool: collections.deque[tuple[np.ndarray, np.ndarray]]
    _pool_max: int
    _max_pool: int
    _dropped: itertools.count
    _dropped_n: int
    _dropped_reported: int
    _p_scans: list[Scan]
    _p_urgent: list[tuple]
    _p_flush: list[Waiter]
    _p_retention: list[Waiter]
    _closing: bool
    _retry_at: float
    _quiet: threading.Event  # clear while the caller's scan runs (``hold_batches``)
    _hold_wait: bool  # the writer waits for the release with a batch due
    _err_lock: threading.Lock
    _error: BaseException | None
    _unreported: BaseException | None
    _failing: bool
    _dead: bool

    def _fail(self, exc: BaseException) -> None:
        with self._err_lock:
            self._error = exc
            self._unreported = exc
        self._failing = True
        self._retry_at = time.monotonic() + RETRY_S

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
                    if wait == 0.0 and self._holding(now, next_batch):
                        wait = next_batch + HOLD_MAX_S - now
                self._drain(wait)
                now = time.monotonic()
                if now < self._retry_at:  # a commit failed: no flush can succeed yet
                    err = self._error or HistorianError("commit failed, retrying")
                    for w in self._p_flush:
                        w.release(err)
                    self._p_flush = []
                    continue
                batch_due = (
                    (now >= next_batch and not self._holding(now, next_batch))
                    or bool(self._p_flush)
                    or self._closing
                )
                if batch_due:
                    next_batch = now + self.batch_s
                self._service(batch_due)
                if self._closing and not (
                    self._scans
                    or self._p_scans
                    or self._books
                    or self._p_books
                    or self._p_urgent
                    or self._p_flush
                ):
                    break
        except BaseException as exc:  # never die silently
            self._dead = True
            self._fail(exc)
            self._release_all(exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()

    def _holding(self, now: float, next_batch: float) -> bool:
        """A due batch waits: the caller's scan is on (``hold_batches``), for at most
        ``HOLD_MAX_S`` past its time. Announced before the second look, so a
        release between the two either is seen or wakes the thread."""
        if self._quiet.is_set() or now >= next_batch + HOLD_MAX_S:
            self._hold_wait = False
            return False
        self._hold_wait = True
        if self._quiet.is_set():
            self._hold_wait = False
            return False
        return True

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
            # ("q",): the caller's scan ended while a batch waited: just a wake-up
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
                while self._books:
                    self._p_books.append(self._books.popleft())
                if self._p_books:  # a few rows a minute: one small transaction
                    rows = list(self._p_books)
                    self._tx(lambda: self._write_books(rows))
                    del self._p_books[: len(rows)]
                # the pool follows the batches, up to a fixed memory: one long stall
                # (a disk outage's backlog) must not keep its buffers for good
                self._pool_max = min(self._max_pool, max(self._pool_max, 2 * len(self._p_scans)))
                while self._p_scans:
                    chunk = self._p_scans[: self._max_tx_scans]
                    self._tx(functools.partial(self._write_scans, chunk))
                    del self._p_scans[: len(chunk)]
                    self._agg.account(chunk, self._last_dup)
                    for _, vb, qb in chunk:  # buffers back to record_scan
                        if len(self._pool) < self._pool_max:
                            self._pool.append((vb, qb))
                    self._interleave()
                self._agg.after_scans()
            while self._p_retention:
                w = self._p_retention[0]
                w.release(result=self._agg.retention(float(w.payload)))  # type: ignore[arg-type]
                self._p_retention.pop(0)
            self._commit_urgent()
        except Exception as exc:
            self._fail(exc)
            self._trim_backlog()
            for w in waiters + self._p_retention:
                w.release(exc)
            self._p_retention = []
            return
        self._failing = False  # everything due committed: the disk takes writes again
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

    def _write_books(self, items: list[tuple]) -> None:
        c = self._wconn
        econ = [i[1:] for i in items if i[0] == "econ"]
        gate = [i[1:] for i in items if i[0] == "gate"]
        comp = [i[1:] for i in items if i[0] == "comp"]
        if econ:
            cols = ", ".join(f'"{col}"' for col in ECONOMICS_COLUMNS)
            marks = ", ".join("?" * len(ECONOMICS_COLUMNS))
            c.executemany(f'INSERT INTO "economics" ({cols}) VALUES ({marks})', econ)
        if gate:
            cols = ", ".join(f'"{col}"' for col in GATING_COLUMNS)
            marks = ", ".join("?" * len(GATING_COLUMNS))
            c.executemany(f'INSERT INTO "gating" ({cols}) VALUES ({marks})', gate)
        if comp:
            cols = ", ".join(f'"{col}"' for col in COMPLIANCE_COLUMNS)
            marks = ", ".join("?" * len(COMPLIANCE_COLUMNS))
            c.executemany(f'INSERT INTO "compliance" ({cols}) VALUES ({marks})', comp)

    def _writer_event(self, kind: str, message: str, severity: int, data: dict) -> None:
        t = self._agg.max_t if self._agg.max_t is not None else time.time()
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

    def _write_scans(self, scans: list[Scan]) -> None:
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
