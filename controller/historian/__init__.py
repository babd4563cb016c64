"""The controller's historian: telemetry, events, audit, state and the books
(economics per interval, gating reasons) in one SQLite file.

One writer (:class:`Historian`, owned by the controller) and one read path
(:class:`HistoryReader`, read-only, used by the historian's own reads,
training, forecasts and benchmarks). The parts:

``schema``
    column names, the shard layout, tables, schema version, validation of an
    existing file (the why of the layout is in its docstring);
``writer``
    the ``Historian``, callers' side: validate, copy, enqueue, flush/close,
    error reporting — the scan never waits for the disk;
``committer``
    the ``Historian``'s writer thread: batched telemetry commits, urgent
    (fsynced) events/audit/state, retries, the backlog bound;
``aggregate``
    1-minute aggregates (live and catch-up) and retention, on the writer thread;
``reader``
    ``HistoryReader``: snapshots, raw/1-minute telemetry, quality, events,
    audit, state, economics and gating rows;
``bench``
    ``thermogate bench historian`` (results in README.md, "Benchmarks").
"""

from .reader import HistoryReader
from .schema import (
    MAX_POINTS_PER_SHARD,
    QUALITY_ABSENT,
    SCHEMA_VERSION,
    HistorianError,
    WrongSiteError,
    column_name,
)
from .writer import Historian

__all__ = [
    "MAX_POINTS_PER_SHARD",
    "QUALITY_ABSENT",
    "SCHEMA_VERSION",
    "Historian",
    "HistorianError",
    "HistoryReader",
    "WrongSiteError",
    "column_name",
]
