"""The historian's file: column names, shard layout, tables, schema version.

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

**Quality is one BLOB per shard row, not one column per point**: per-point
quality columns cost about a third of the write throughput (twice the bound
parameters) for the same size, and would force shards of 999 points
(2 × 999 + ``t`` ≤ 2000). The BLOB is the shard's ``uint8`` quality array in
slot order, and is NULL when every point of the shard is good (the common
case): an all-good scan then costs what a values-only layout does. NaN values
are bound as doubles and SQLite stores them as NULL (read back as NaN).

**Page size 4096 (the default)**: a 10,000-point row (~8.6 KB per shard)
overflows any page below 16 KB; larger pages read a column faster but cost
more disk and make every small event/audit commit write many times more bytes.
The measurements behind both choices are in README.md ("Benchmarks").

**The books** (additive to schema 1: an older file gains the tables when a
``Historian`` opens it; code without them ignores them): ``economics`` holds one
row per interval of the hall's economics (``ECONOMICS_COLUMNS``: money in $,
means over the metered seconds; ``t`` is the interval's start), ``gating``
one row per change of a load's budget or of the reason that bound it,
``compliance`` one row per settled interval of a curtailment instruction. All
are written in the writer's telemetry batches (no commit of their own).

**1-minute aggregates** live in ``agg_mean_k``, ``agg_min_k``, ``agg_max_k`` (same
columns as ``telemetry_k``; ``t`` is the minute's start; ``agg_mean_k.n`` is the
number of raw rows); ``agg_progress`` holds each shard's aggregation watermark.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from thermogate.plc.errors import ThermogateError

__all__ = [
    "COMPLIANCE_COLUMNS",
    "ECONOMICS_COLUMNS",
    "GATING_COLUMNS",
    "MAX_POINTS_PER_SHARD",
    "MINUTE_S",
    "QUALITY_ABSENT",
    "SCHEMA_VERSION",
    "STAT_SQL",
    "HistorianError",
    "Shard",
    "WrongSiteError",
    "check_meta",
    "column_name",
    "create_or_extend",
    "open_for_writing",
    "quote",
]

SCHEMA_VERSION = 1
#: point columns per telemetry shard (SQLite allows 2000 columns per table)
MAX_POINTS_PER_SHARD = 1000
MINUTE_S = 60.0
#: the ``economics`` table's columns after its ``id``, in insert order
ECONOMICS_COLUMNS: tuple[str, ...] = (
    "t",  # the interval's start (s since the epoch)
    "interval_s",  # seconds of it that were metered
    "mining_usd",
    "inference_usd",
    "training_usd",
    "energy_usd",
    "net_usd",
    "price_per_mwh",  # time-weighted mean energy price
    "import_kwh",
    "hash_th_s",  # mean hashrate
    "inference_gpus",  # mean busy GPUs
    "training_gpus",
    "mining_breakeven_per_mwh",
)
#: the ``gating`` table's columns after its ``id``
GATING_COLUMNS: tuple[str, ...] = ("t", "load", "budget_kw", "why")
#: the ``compliance`` table's columns after its ``id``: one settled interval of
#: one curtailment instruction (``controller.grid.settlement``); ``compliant`` is
#: 1, 0 or NULL (not metered)
COMPLIANCE_COLUMNS: tuple[str, ...] = (
    "t",  # the interval's start
    "interval_s",
    "instruction",
    "limit_kw",
    "metered_kw",
    "baseline_kw",
    "required_kw",
    "delivered_kw",
    "compliant",
    "note",
)
#: quality byte for a point that is in the database but not in the point list
QUALITY_ABSENT = 2
#: aggregate statistic -> its SQL function
STAT_SQL = {"mean": "avg", "min": "min", "max": "max"}
#: floor(t / 60) * 60 in portable SQL (CAST truncates toward zero, % casts to int)
MINUTE_SQL = (
    '((CAST("t" / 60 AS INTEGER) - ("t" < 0 AND CAST("t" / 60 AS INTEGER) * 60 <> "t")) * 60)'
)

_UNSAFE = re.compile(r"[^0-9A-Za-z_]")
_RESERVED = {"t", "n", "quality", "rowid", "oid", "_rowid_"}


class HistorianError(ThermogateError, RuntimeError):
    """The historian failed (raised on the caller's next record_*/flush), or a
    file is not a historian this version can use."""


class WrongSiteError(ThermogateError, ValueError):
    """The database holds another site's history: never read or extend it."""


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


def quote(ident: str) -> str:
    """``ident`` as a quoted SQL identifier."""
    return '"' + ident.replace('"', '""') + '"'


def check_meta(meta: Mapping[str, str], path: Path, site_name: str) -> None:
    """Refuse another site's history and a schema newer than this code."""
    stored = meta.get("site_name", "")
    if site_name and stored and stored != site_name:
        raise WrongSiteError(
            f"{path}: holds the history of site {stored!r}, not {site_name!r}: give this site"
            " its own database (--db, or [controller] db), or run the site file that wrote it"
        )
    version = int(meta.get("schema_version", SCHEMA_VERSION))
    if version > SCHEMA_VERSION:
        raise HistorianError(f"{path}: historian schema {version} is newer than {SCHEMA_VERSION}")


class Shard:
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
        """Map slots to the writer's point list and build the shard's statements."""
        self.take = np.array([position.get(n, n_points) for n in self.names], np.intp)
        self.partial = bool((self.take == n_points).any())
        cols = ", ".join(quote(c) for c in self.cols)
        marks = ", ".join("?" * (len(self.cols) + 2))
        self.insert_sql = (
            f'INSERT OR IGNORE INTO {quote(self.table)} ("t", "quality", {cols}) VALUES ({marks})'
        )
        for stat, fn in STAT_SQL.items():
            n_col, n_expr = ('"n", ', "count(*), ") if stat == "mean" else ("", "")
            exprs = ", ".join(f"{fn}({quote(c)})" for c in self.cols)
            self.put_sql[stat] = (
                f'INSERT OR REPLACE INTO {quote(f"agg_{stat}_{self.k}")} ("t", {n_col}{cols}) '
                f"VALUES ({', '.join('?' * (len(self.cols) + 1 + bool(n_col)))})"
            )
            self.agg_sql[stat] = (
                f'INSERT OR REPLACE INTO {quote(f"agg_{stat}_{self.k}")} ("t", {n_col}{cols}) '
                f"SELECT {MINUTE_SQL} AS m, {n_expr}{exprs} FROM {quote(self.table)} "
                f'WHERE "t" >= ? AND "t" < ? GROUP BY m'
            )


def open_for_writing(path: Path) -> sqlite3.Connection:
    """The writer's connection: WAL, NORMAL sync for telemetry, 4 KiB pages.

    A path that cannot be a database (a directory, under a file, unwritable) is a
    ``HistorianError`` naming it, not the OS's or sqlite's traceback."""
    if path.is_dir():
        raise HistorianError(f"{path}: is a directory, expected the historian's database file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HistorianError(f"{path}: cannot open the historian's database ({why})") from None
    try:
        # page_size only takes effect on a new file, before WAL is on
        conn.execute("PRAGMA page_size=4096")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistorianError(f"cannot put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA secure_delete=FAST")  # retention: no extra I/O for zeroing
        conn.execute("PRAGMA journal_size_limit=67108864")
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # not SQLite, or damaged
        conn.close()
        raise HistorianError(f"{path}: not a thermogate historian database ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _create_tables(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("points").create(
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
    db.table("agg_progress").create({"shard": int, "until": float}, pk="shard", if_not_exists=True)
    create_journal(db)
    create_books(db)


def create_books(db: sqlite_utils.Database) -> None:
    """The economics and gating tables (see the module docstring); idempotent, so
    a file from before them gains them when a ``Historian`` opens it."""
    spec: dict[str, Any] = {"id": int}
    spec.update(dict.fromkeys(ECONOMICS_COLUMNS, float))
    db.table("economics").create(spec, pk="id", if_not_exists=True)
    db.table("economics").create_index(["t"], if_not_exists=True)
    db.table("gating").create(
        {"id": int, "t": float, "load": str, "budget_kw": float, "why": str},
        pk="id",
        if_not_exists=True,
    )
    db.table("gating").create_index(["t"], if_not_exists=True)
    spec = {"id": int} | dict.fromkeys(COMPLIANCE_COLUMNS, float)
    spec |= {"instruction": str, "note": str}
    db.table("compliance").create(spec, pk="id", if_not_exists=True)
    db.table("compliance").create_index(["t"], if_not_exists=True)


def create_journal(db: sqlite_utils.Database) -> None:
    """The tables every writer of the site database shares: events, audit, state."""
    db.table("events").create(
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
    db.table("events").create_index(["t"], if_not_exists=True)
    db.table("audit").create(
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
    db.table("audit").create_index(["t"], if_not_exists=True)
    db.table("state").create(
        {"key": str, "value": str, "saved": float}, pk="key", if_not_exists=True
    )


def open_side_db(path: Path, ddl: str) -> sqlite3.Connection:
    """A connection for the site database's side tables (users, commands): WAL, a
    busy timeout, the shared journal in place, and ``ddl`` (idempotent) run once.

    A file that is not an SQLite database is one line, never a traceback."""
    try:
        conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            create_journal(sqlite_utils.Database(conn, execute_plugins=False))
        conn.executescript(ddl)
    except sqlite3.DatabaseError as exc:
        raise HistorianError(f"{path}: not a thermogate database ({exc})") from None
    return conn


def create_or_extend(
    db: sqlite_utils.Database,
    path: Path,
    site_name: str,
    names: list[str],
    info: Mapping[str, tuple[str, float | None, float | None]],
) -> list[Shard]:
    """Create the tables, or add columns for points new to this database.

    One transaction (DDL is transactional in SQLite): a crash while
    creating or extending leaves the previous schema, never half of one.
    """
    with db.atomic():
        _create_tables(db)
        meta = {r["key"]: r["value"] for r in db.query('SELECT * FROM "meta"')}
        check_meta(meta, path, site_name)
        stored_site = meta.get("site_name", "")

        rows = list(db.query('SELECT * FROM "points" ORDER BY "shard", "slot"'))
        shards: list[Shard] = []
        taken: set[str] = set()
        for r in rows:
            while len(shards) <= r["shard"]:
                shards.append(Shard(len(shards)))
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
                shards.append(Shard(len(shards)))
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
                db.table(s.table).create(spec, pk="t")
                for stat in STAT_SQL:
                    aspec: dict[str, Any] = {"t": float}
                    if stat == "mean":
                        aspec["n"] = int
                    aspec.update(dict.fromkeys(s.cols, float))
                    db.table(f"agg_{stat}_{k}").create(aspec, pk="t")
            else:
                for col in cols:
                    for table in (s.table, *(f"agg_{st}_{k}" for st in STAT_SQL)):
                        db.table(table).add_column(col, float)
        if new_rows:
            db.table("points").insert_all(new_rows)
        db.table("meta").upsert_all(
            [
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                {"key": "site_name", "value": stored_site or site_name},
            ]
            + ([] if "created" in meta else [{"key": "created", "value": repr(now)}]),
            pk="key",
        )
    return shards
