"""1-minute aggregates and retention, run on the historian's writer thread.

**Aggregates.** A minute is complete once a scan of a later minute was
committed. The writer folds every committed scan into per-minute accumulators
(:class:`~thermogate.models.bins.BinAccumulator`: sum, count, min, max in
numpy, tens of microseconds per 10,000-point scan) and writes a completed
minute's three rows (mean, min, max), all shards and the per-shard watermarks
(``agg_progress``) in one transaction. Minutes it did not see from their start
(the one a restart or crash cut in two, or any not yet aggregated) are
aggregated from their raw rows instead, ``CATCH_UP_ROWS`` rows per
transaction, resuming from the committed watermark: reading the rows once
into the same accumulators is about twice as fast as three ``INSERT … SELECT
avg()/min()/max() … GROUP BY minute`` passes over 1000-column rows, and a
transaction never holds more than one chunk. A scan older than an aggregated
minute (late, out of order) or a batch with duplicate timestamps marks its
minute for recomputation from the raw rows. NaN/NULL is ignored; an all-NaN
minute aggregates to NULL.

**Retention** runs once per hour of *data* time (so it also runs in
accelerated simulation) and can be called directly: raw rows older than
``raw_days`` are deleted only up to the aggregation watermark (never before
they were aggregated), aggregates older than ``agg_days``. Deletes go in chunks
of ``RETENTION_CHUNK`` scans per transaction across all shards, with queued
events/audit committed between chunks. Events and state are never deleted by
retention, nor is any audit row of a person or a system (OPC UA, console, CLI,
grid, the PLC, a foreign write found). The one audit row retention deletes is
the controller's own regulation write (who ``controller``, where ``scan``, a
new value), after ``audit_days``: a scan writes several of them, so kept
forever they would outgrow the raw telemetry that already shows each commanded
value and its read-back (~0.7 million rows a day at a 1 s scan on the demo).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable

import numpy as np

from thermogate.models.bins import BinAccumulator, bin_index, bin_start

from .schema import MINUTE_S, STAT_SQL, Shard, quote

__all__ = ["Aggregator"]

DAY_S = 86400.0
#: data time between automatic retention runs
RETENTION_EVERY_S = 3600.0
#: scans deleted per retention transaction
RETENTION_CHUNK = 2000
#: audit rows deleted per retention transaction
AUDIT_CHUNK = 20000
#: the audit rows retention may delete: the controller's own regulation writes
REGULATION_SQL = '"who" = \'controller\' AND "where" = \'scan\' AND "new" IS NOT NULL'
#: raw rows read per catch-up aggregation transaction (one shard)
CATCH_UP_ROWS = 600
#: minutes accumulated in memory at once (more only when scans come far out of order)
MAX_OPEN_MINUTES = 10

#: (t, values, quality) of one committed scan
Scan = tuple[float, np.ndarray, np.ndarray]


def _minute(t: float) -> float:
    return bin_start(t, MINUTE_S)


class Aggregator:
    """The writer's data clock, minute accumulators, catch-up and retention.

    Runs only on the writer thread, inside its transactions: ``tx(body)`` runs
    ``body`` in one transaction, ``interleave()`` lets the writer commit urgent
    rows between two long transactions, ``note(kind, message, severity, data)``
    queues a historian event.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        shards: list[Shard],
        n_points: int,
        *,
        raw_days: float,
        agg_days: float,
        audit_days: float | None = None,
        tx: Callable[[Callable[[], None]], None],
        interleave: Callable[[], None],
        note: Callable[[str, str, int, dict], None],
    ) -> None:
        self._c = conn
        self._shards = shards
        self._n = n_points
        self.raw_days = raw_days
        self.agg_days = agg_days
        #: the controller's own regulation writes are audited this long (default raw_days)
        self.audit_days = raw_days if audit_days is None else audit_days
        self._tx = tx
        self._interleave = interleave
        self._note = note
        self._agg_until: dict[int, float | None] = {s.k: None for s in shards} | {
            int(r[0]): r[1]
            for r in conn.execute('SELECT "shard", "until" FROM "agg_progress"').fetchall()
        }
        tmax = [
            conn.execute(f'SELECT max("t") FROM {quote(s.table)}').fetchone()[0] for s in shards
        ]
        #: the newest committed scan's time (the historian's data clock)
        self.max_t: float | None = max((x for x in tmax if x is not None), default=None)
        row = conn.execute(
            'SELECT "value" FROM "meta" WHERE "key" = ?', ("last_retention",)
        ).fetchone()
        # due an hour (of data time) after the last run, or after the oldest raw row
        self._next_retention: float | None = (
            None if row is None else float(row[0]) + RETENTION_EVERY_S
        )
        self._dirty: set[float] = set()  # minutes to recompute from the raw rows
        self._duplicates = 0
        self._open_max_t = self.max_t
        self._live_from: float | None = None  # first minute seen whole by this process
        self._acc: dict[float, BinAccumulator] = {}
        #: retention runs and raw scans they deleted since this process opened the file
        self.retention_runs = 0
        self.raw_deleted = 0
        self.audit_deleted = 0

    # -- live scans ------------------------------------------------------------
    def account(self, scans: list[Scan], dups: int) -> None:
        """Account for committed scans; fold them into per-minute accumulators.

        Only minutes this process saw from their start are accumulated; older
        ones are aggregated from the raw rows (catch-up after a restart). A
        scan for a minute already aggregated, or a batch with duplicate
        timestamps (``dups`` scans were ignored), marks its minute for
        recomputation from the raw rows.
        """
        tmax = max(t for t, _, _ in scans)
        if self.max_t is None or tmax > self.max_t:
            self.max_t = tmax
        if dups > 0:
            self._duplicates += dups
            self._note(
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
                    acc = self._acc[m] = BinAccumulator(self._n)
                acc.add(v)
        if len(self._acc) > MAX_OPEN_MINUTES:  # scans far out of order: recompute instead
            for m in sorted(self._acc)[:-MAX_OPEN_MINUTES]:
                del self._acc[m]
                self._dirty.add(m)

    def after_scans(self) -> None:
        """Aggregate completed minutes; run retention when an hour of data time passed."""
        self._aggregate()
        if self.max_t is None or not self._shards:
            return
        if self._next_retention is None:
            oldest = self._c.execute('SELECT min("t") FROM "telemetry_0"').fetchone()[0]
            self._next_retention = (
                oldest if oldest is not None else self.max_t
            ) + RETENTION_EVERY_S
        if self.max_t >= self._next_retention:
            self.retention(self.max_t)

    # -- aggregation -----------------------------------------------------------
    def _aggregate(self) -> None:
        """Write the aggregates of every completed minute and advance the watermarks.

        Minutes from before this process started are aggregated from the raw
        rows, a few hundred rows per transaction; live minutes come from the
        accumulators, all shards in one transaction with the watermarks.
        """
        if self.max_t is None or not self._shards or self._live_from is None:
            return
        done = _minute(self.max_t)
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
        c = self._c
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

    def _catch_up(self, s: Shard, cut: float) -> None:
        """Aggregate shard ``s`` from its raw rows up to minute ``cut``, in chunks."""
        c = self._c
        until = self._agg_until.get(s.k)
        lo = -math.inf if until is None else until
        cols = ", ".join(quote(col) for col in s.cols)
        sql = (
            f'SELECT "t", {cols} FROM {quote(s.table)} '
            'WHERE "t" >= ? AND "t" < ? ORDER BY "t" LIMIT ?'
        )
        partial: dict[float, BinAccumulator] = {}
        while until is None or until < cut:
            rows = c.execute(sql, (lo, cut, CATCH_UP_ROWS)).fetchall()
            if rows:
                a = np.array(rows, np.float64).reshape(len(rows), 1 + len(s.cols))
                minutes = bin_index(a[:, 0], MINUTE_S) * MINUTE_S
                for m in np.unique(minutes).tolist():
                    acc = partial.get(m)
                    if acc is None:
                        acc = partial[m] = BinAccumulator(len(s.cols))
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

    def _put_minutes(self, s: Shard, minutes: list[tuple[float, int, dict]]) -> None:
        """Store (minute, raw row count, {stat: values in slot order}) rows."""
        for stat in STAT_SQL:
            rows = [
                [m, n, *st[stat].tolist()] if stat == "mean" else [m, *st[stat].tolist()]
                for m, n, st in minutes
            ]
            if rows:
                self._c.executemany(s.put_sql[stat], rows)

    def _agg_minutes(self, s: Shard, ranges: Iterable[tuple[float, float]]) -> None:
        for lo, hi in ranges:
            for stat in STAT_SQL:
                self._c.execute(s.agg_sql[stat], (lo, hi))

    # -- retention -------------------------------------------------------------
    def retention(self, now: float) -> dict:
        """Delete raw rows older than raw_days that are aggregated, old aggregates and
        the controller's regulation writes older than audit_days.

        Returns ``raw_rows``/``agg_rows``/``audit_rows`` (scans/minutes/audit rows
        deleted) and the cutoffs.
        """
        audit_rows = self._retire_audit(now - self.audit_days * DAY_S)
        if not self._shards:
            return {
                "raw_rows": 0,
                "agg_rows": 0,
                "audit_rows": audit_rows,
                "raw_cutoff": None,
                "agg_cutoff": None,
            }
        c = self._c
        # raw rows go only once every shard is aggregated past them
        known = [u for u in self._agg_until.values() if u is not None]
        complete = bool(known) and len(known) == len(self._agg_until)
        agg_floor = min(known) if complete else -math.inf
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

            def delete_raw(upto: float = upto, counts: list[int] = counts) -> None:
                for s in self._shards:
                    cur = c.execute(f'DELETE FROM {quote(s.table)} WHERE "t" < ?', (upto,))
                    counts.append(cur.rowcount)

            self._tx(delete_raw)
            raw_deleted += max(counts, default=0)
            self._interleave()
            if row is None:
                break
        agg_counts: list[int] = []

        def delete_agg() -> None:
            for s in self._shards:
                for stat in STAT_SQL:
                    cur = c.execute(
                        f'DELETE FROM {quote(f"agg_{stat}_{s.k}")} WHERE "t" <= ?',
                        (agg_cutoff - MINUTE_S,),
                    )
                    agg_counts.append(cur.rowcount)
            c.execute(
                'INSERT OR REPLACE INTO "meta" ("key", "value") VALUES (?, ?)',
                ("last_retention", repr(float(now))),
            )

        self._tx(delete_agg)
        self._next_retention = now + RETENTION_EVERY_S
        self.retention_runs += 1
        self.raw_deleted += raw_deleted
        return {
            "raw_rows": raw_deleted,
            "agg_rows": max(agg_counts, default=0),
            "audit_rows": audit_rows,
            "raw_cutoff": raw_cutoff,
            "agg_cutoff": agg_cutoff,
        }

    def _retire_audit(self, cutoff: float) -> int:
        """Delete the controller's regulation writes older than ``cutoff``, a chunk
        per transaction with urgent rows committed between chunks."""
        c, deleted = self._c, 0
        while True:
            counts: list[int] = []

            def delete(counts: list = counts) -> None:
                cur = c.execute(
                    'DELETE FROM "audit" WHERE rowid IN (SELECT rowid FROM "audit" '
                    f'WHERE "t" < ? AND {REGULATION_SQL} LIMIT ?)',
                    (cutoff, AUDIT_CHUNK),
                )
                counts.append(cur.rowcount)

            self._tx(delete)
            deleted += counts[0]
            self.audit_deleted += counts[0]
            if counts[0] < AUDIT_CHUNK:
                return deleted
            self._interleave()
