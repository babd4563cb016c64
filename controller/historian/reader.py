"""The one read path of a historian file: :class:`HistoryReader`.

Everything that reads history — the controller's own ``Historian`` reads,
training, ``thermogate forecast``, the forecast benchmark, reports and, later,
OPC UA history — reads through this class, so the on-disk layout is
interpreted in one place.

**Read-only for real.** The file is opened with an SQLite ``mode=ro`` URI and
``query_only``: the engine refuses every write, so a reader is safe beside the
controller's writing ``Historian`` (opening a second ``Historian`` is not: its
constructor extends the schema and its writer thread runs retention with its
own settings). WAL lets a reader see committed scans while the writer goes on,
without blocking it.

**One snapshot per read.** Each read runs in one read transaction, so all
points of a result come from the same committed scans; :meth:`snapshot` widens
that to several reads (e.g. a span and the rows inside it).

**Resolution.** ``resolution="auto"`` reads raw rows when they still reach back
to ``t0`` and the 1-minute means otherwise (raw rows are deleted after
``raw_days``). Reading a point costs the whole shard row, which is why old
data is read from the aggregates.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.models.bins import bin_start

from .schema import (
    COMPLIANCE_COLUMNS,
    ECONOMICS_COLUMNS,
    GATING_COLUMNS,
    MINUTE_S,
    QUALITY_ABSENT,
    STAT_SQL,
    HistorianError,
    check_meta,
    quote,
)

__all__ = ["HistoryReader"]

#: rows converted to numpy at a time, so a week of scans never sits in Python tuples at once
FETCH_ROWS = 20_000
_NEWEST = ' ORDER BY "t" DESC, "id" DESC LIMIT ?'

#: per shard: its scans' times and (name, values) of the points read from it
Parts = list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]]


class HistoryReader:
    """Read-only access to a historian database (see the module docstring).

    ``site_name``, if given, must match the one stored: another site's file is
    refused with a :class:`~.schema.WrongSiteError`; a file that is not a
    historian with a :class:`~.schema.HistorianError`. Safe to share between
    threads (reads are serialised).
    """

    def __init__(self, path: str | Path, site_name: str = "") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise HistorianError(f"{self.path}: no such historian database")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise HistorianError(f"{self.path}: cannot open the historian: {exc}") from None
        self._conn = conn
        self._lock = threading.RLock()
        self._depth = 0  # snapshot nesting: reads inside one share its transaction
        try:
            meta, rows = self._load_layout()
            check_meta(meta, self.path, site_name)
        except sqlite3.DatabaseError as exc:  # not SQLite at all
            conn.close()
            raise HistorianError(f"{self.path}: not a readable historian database: {exc}") from None
        except BaseException:
            conn.close()
            raise
        #: the site whose history this is ("" for a file that never stored one)
        self.site_name: str = meta.get("site_name", "")
        # read once: points a Historian adds later (when it opens) need a new reader
        self._col_of = {str(n): (int(k), str(col), int(slot)) for n, k, col, slot in rows}
        self._n_shards = 1 + max((k for k, _, _ in self._col_of.values()), default=-1)

    def _load_layout(self) -> tuple[dict[str, str], list[tuple]]:
        """The ``meta`` table and the ``points`` rows (name, shard, col, slot)."""
        c = self._conn
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "points"} <= tables:
            raise HistorianError(f"{self.path}: not a thermogate historian database")
        meta = dict(c.execute('SELECT "key", "value" FROM "meta"').fetchall())
        rows = c.execute('SELECT "name", "shard", "col", "slot" FROM "points"').fetchall()
        return meta, rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[HistoryReader]:
        """One read transaction for every read inside (the writer keeps committing meanwhile)."""
        with self._read():
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._depth:
                yield self._conn
                return
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    # -- layout ----------------------------------------------------------------
    def points(self) -> list[dict]:
        """Every point the database has ever held: name, shard, col, slot, idx, unit, lo, hi."""
        return self.query('SELECT * FROM "points" ORDER BY "idx"')

    def span(self) -> tuple[float, float] | None:
        """(first, last) scan time, or None when nothing was recorded.

        Shard 0 holds a row for every scan (shards added later lack older scans).
        """
        if self._n_shards == 0:
            return None
        with self._read() as c:
            lo, hi = c.execute('SELECT min("t"), max("t") FROM "telemetry_0"').fetchone()
        return None if lo is None else (float(lo), float(hi))

    def _by_shard(self, names: Sequence[str]) -> dict[int, list[tuple[str, str, int]]] | None:
        """(name, column, slot) of ``names`` per shard (shard 0 alone for no names:
        it has every scan's time); None when nothing was ever recorded."""
        out: dict[int, list[tuple[str, str, int]]] = {}
        for n in names:
            try:
                k, col, slot = self._col_of[n]
            except KeyError:
                raise KeyError(f"no point {n!r} in the historian") from None
            out.setdefault(k, []).append((n, col, slot))
        if self._n_shards == 0:
            return None
        return out or {0: []}

    # -- telemetry -------------------------------------------------------------
    def _raw_choice(self, c: sqlite3.Connection, t0: float) -> str:
        """'raw' if raw rows cover t0 (or nothing older exists), else '1m'."""
        raw_start = c.execute('SELECT min("t") FROM "telemetry_0"').fetchone()[0]
        agg_start = c.execute('SELECT min("t") FROM "agg_mean_0"').fetchone()[0]
        if raw_start is None or t0 >= raw_start:
            return "1m" if raw_start is None and agg_start is not None else "raw"
        # aggregates only help if they hold a minute that raw no longer has
        return (
            "1m" if agg_start is not None and agg_start < bin_start(raw_start, MINUTE_S) else "raw"
        )

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
        mean/min/max) or ``"auto"`` (see the module docstring).
        """
        if resolution not in ("auto", "raw", "1m"):
            raise ValueError(f"resolution must be auto, raw or 1m, not {resolution!r}")
        if stat not in STAT_SQL:
            raise ValueError(f"stat must be one of {sorted(STAT_SQL)}, not {stat!r}")
        by_shard = self._by_shard(names)
        if by_shard is None:
            return {"t": np.zeros(0)}
        parts: Parts = []
        with self._read() as c:
            if resolution == "auto":
                resolution = self._raw_choice(c, t0)
            lo = float(t0) if resolution == "raw" else bin_start(float(t0), MINUTE_S)
            for k, cols in by_shard.items():
                table = f"telemetry_{k}" if resolution == "raw" else f"agg_{stat}_{k}"
                sel = ", ".join(['"t"', *(quote(col) for _, col, _ in cols)])
                cur = c.execute(
                    f'SELECT {sel} FROM {quote(table)} WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                    (lo, float(t1)),
                )
                chunks = [np.zeros((0, 1 + len(cols)))]
                while rows := cur.fetchmany(FETCH_ROWS):
                    chunks.append(np.array(rows, dtype=np.float64).reshape(len(rows), -1))
                arr = np.concatenate(chunks)
                parts.append((arr[:, 0], [(n, arr[:, j + 1]) for j, (n, _, _) in enumerate(cols)]))
        return _align(parts)

    def quality(self, names: Sequence[str], t0: float, t1: float) -> dict[str, np.ndarray]:
        """Raw quality codes (uint8) between t0 and t1: ``{"t": times, name: codes}``.

        Points absent from a scan (not yet or no longer in the point list) read 2 (bad).
        """
        by_shard = self._by_shard(names)
        if by_shard is None:
            return {"t": np.zeros(0)}
        parts: Parts = []
        with self._read() as c:
            for k, cols in by_shard.items():
                slots = np.array([slot for _, _, slot in cols], np.intp)
                cur = c.execute(
                    f'SELECT "t", "quality" FROM "telemetry_{k}" '
                    'WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                    (float(t0), float(t1)),
                )
                ts, qs = [np.zeros(0)], [np.zeros((0, len(cols)), np.uint8)]
                while rows := cur.fetchmany(FETCH_ROWS):
                    q = np.zeros((len(rows), len(cols)), np.uint8)  # NULL blob: all good
                    for i, (_, blob) in enumerate(rows):
                        if blob is not None:
                            b = np.frombuffer(blob, np.uint8)
                            inside = slots < len(b)
                            q[i] = QUALITY_ABSENT
                            q[i, inside] = b[slots[inside]]
                    ts.append(np.array([r[0] for r in rows], np.float64))
                    qs.append(q)
                t, qa = np.concatenate(ts), np.concatenate(qs).astype(np.float64)
                parts.append((t, [(n, qa[:, j]) for j, (n, _, _) in enumerate(cols)]))
        res = _align(parts, fill=QUALITY_ABSENT)
        return {k: (v if k == "t" else v.astype(np.uint8)) for k, v in res.items()}

    def scans(
        self, names: Sequence[str], t0: float, t1: float
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw values and quality of ``names`` between t0 and t1, from one snapshot:
        ``(times, {name: values}, {name: codes})``, all on the same scans."""
        with self.snapshot():
            tel = self.telemetry(names, t0, t1, resolution="raw")
            qual = self.quality(names, t0, t1)
        return tel["t"], {n: tel[n] for n in names}, {n: qual[n] for n in names}

    # -- events, audit, state --------------------------------------------------
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
        rows = self.query(sql + _NEWEST, [*params, limit])
        for r in rows:
            r["data"] = json.loads(r["data"]) if r["data"] else {}
        return rows[::-1]

    def audit(
        self, t0: float | None = None, t1: float | None = None, limit: int = 1000
    ) -> list[dict]:
        """Committed audit rows in [t0, t1], oldest first; the newest ``limit``."""
        sql, params = _window_sql("audit", t0, t1)
        rows = self.query(sql + _NEWEST, [*params, limit])
        for r in rows:
            r["ok"] = bool(r["ok"])
        return rows[::-1]

    # -- the books: economics, gating and compliance ------------------------------
    def economics(
        self, t0: float | None = None, t1: float | None = None, limit: int = 100_000
    ) -> list[dict]:
        """Economics rows whose interval starts in [t0, t1], oldest first; the newest
        ``limit``. Keys: ``ECONOMICS_COLUMNS`` (NULL as NaN). A file from before the
        table has none."""
        rows = self._book("economics", ECONOMICS_COLUMNS, t0, t1, limit)
        for r in rows:
            for c in ECONOMICS_COLUMNS:
                if r[c] is None:
                    r[c] = float("nan")
        return rows

    def gating(
        self,
        t0: float | None = None,
        t1: float | None = None,
        loads: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[dict]:
        """Changes of a load's budget or of what bound it in [t0, t1], oldest first
        (the newest ``limit``): ``t``, ``load``, ``budget_kw``, ``why``. A load's
        budget and reason hold from its row to its next one. A file from before the
        table has none."""
        return self._book("gating", GATING_COLUMNS, t0, t1, limit, "load", loads)

    def compliance(
        self, t0: float | None = None, t1: float | None = None, limit: int = 100_000
    ) -> list[dict]:
        """Settled intervals of curtailment instructions whose interval starts in
        [t0, t1], oldest first; keys ``COMPLIANCE_COLUMNS`` (``compliant`` True,
        False or None). A file from before the table has none."""
        rows = self._book("compliance", COMPLIANCE_COLUMNS, t0, t1, limit)
        for r in rows:
            r["compliant"] = None if r["compliant"] is None else bool(r["compliant"])
        return rows

    def _book(
        self,
        table: str,
        columns: Sequence[str],
        t0: float | None,
        t1: float | None,
        limit: int,
        key: str | None = None,
        values: Sequence[str] | None = None,
    ) -> list[dict]:
        """Rows of one of the books in [t0, t1] (``key`` IN ``values`` when given),
        oldest first, the newest ``limit``; none from a file before the table."""
        if not self._has_table(table):
            return []
        sql, params = _window_sql(table, t0, t1)
        if key is not None and values:
            sql += f" AND {quote(key)} IN ({', '.join('?' * len(values))})"
            params += list(values)
        cols = ", ".join(quote(c) for c in columns)
        sql = sql.replace("SELECT *", f'SELECT "id", {cols}', 1)
        rows = self.query(sql + _NEWEST, [*params, limit])
        for r in rows:
            del r["id"]
        return rows[::-1]

    def _has_table(self, name: str) -> bool:
        with self._read() as c:
            row = c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
        return row is not None

    def last_row_t(self) -> float | None:
        """The time of the newest committed telemetry, event or audit row (None: none).

        What a run that ended without a clean stop left behind: the gap to its
        restart is measured from here."""
        parts = ['SELECT max("t") AS t FROM "events"', 'SELECT max("t") AS t FROM "audit"']
        if self._n_shards:
            parts.append('SELECT max("t") AS t FROM "telemetry_0"')
        with self._read() as c:
            row = c.execute(f"SELECT max(t) FROM ({' UNION ALL '.join(parts)})").fetchone()
        return None if row[0] is None else float(row[0])

    def state(self, key: str) -> dict | None:
        """The last committed value saved under ``key`` (``Historian.save_state``), or None."""
        with self._read() as c:
            row = c.execute('SELECT "value" FROM "state" WHERE "key" = ?', (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """Rows of one SQL statement as dicts (column → value). The connection is
        read-only: a statement that writes raises ``sqlite3.OperationalError``."""
        with self._read() as c:
            cur = c.execute(sql, tuple(params))
            cols = [d[0] for d in cur.description or ()]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _window_sql(table: str, t0: float | None, t1: float | None) -> tuple[str, list]:
    sql, params = f'SELECT * FROM "{table}" WHERE 1', []
    if t0 is not None:
        sql += ' AND "t" >= ?'
        params.append(float(t0))
    if t1 is not None:
        sql += ' AND "t" <= ?'
        params.append(float(t1))
    return sql, params


def _align(parts: Parts, fill: float = np.nan) -> dict[str, np.ndarray]:
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
