"""Training a model from the historian and registering it, once or on a schedule.

:func:`train_and_register` is what ``thermogate train`` does: read the last
``days`` of telemetry, fit a :class:`~thermogate.models.forecast.ThermalModel`
on the first 80 %, measure it on the held-out last 20 %, store it in the
:class:`~thermogate.models.registry.Registry` of the same database and promote
it only if it is not worse than the promoted model on those rows.

:class:`RetrainScheduler` runs it in a background thread every ``every_s``
seconds, so ``thermogate run`` retrains without its scan loop ever waiting for
a fit (up to about a minute).

Reading beside a running controller
===================================
The controller owns the only writing :class:`~thermogate.controller.historian.Historian`
of its database. Opening a *second* ``Historian`` on that file is not a read:
its constructor runs DDL, upserts ``meta``, adds columns for points new to it,
and it starts a writer thread that runs retention with its own ``raw_days``
(the default 7, whatever the controller was configured with) — it can delete
raw telemetry the controller keeps, and it competes for the write lock.
Training therefore reads through :class:`HistorianReader`: a SQLite connection
opened with ``mode=ro`` (the engine refuses every write) that reads the
historian's documented on-disk layout (the ``points`` table, ``telemetry_k``
shards with a quality BLOB per row) and offers the read API of ``Historian`` the
dataset builder uses (``telemetry``, ``quality``, ``points``). WAL lets it
read committed scans while the controller writes, without blocking it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thermogate.controller.historian import QUALITY_ABSENT, SCHEMA_VERSION, _align
from thermogate.plc.errors import ThermogateError

if TYPE_CHECKING:
    from thermogate.plc.site import Site

    from .forecast import ThermalModel

__all__ = [
    "HOLDOUT_FRAC",
    "MIN_HOURS",
    "SCHEDULED_BY",
    "HistorianReader",
    "RetrainScheduler",
    "TrainOutcome",
    "train_and_register",
]

#: less telemetry than this cannot fill a feature window, a 30-min target and a held-out tail
MIN_HOURS = 2.0
HOLDOUT_FRAC = 0.2
#: ``by`` recorded in the registry for the scheduler's attempts
SCHEDULED_BY = "thermogate run (scheduled retrain)"
#: rows converted to numpy at a time, so a week of scans never sits in Python tuples at once
_FETCH_ROWS = 20_000

_log = logging.getLogger(__name__)


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


class HistorianReader:
    """Read-only access to the raw telemetry of a historian database.

    Never writes, so it is safe beside the controller's writing ``Historian``
    (see the module docstring). ``telemetry`` (``resolution="raw"`` only),
    ``quality`` and ``points`` behave like the ``Historian`` methods of the
    same name; inside :meth:`snapshot` every read sees the same committed scans.
    """

    def __init__(self, db: str | Path, site_name: str = "") -> None:
        self.path = Path(db)
        if not self.path.exists():
            raise ThermogateError(f"{self.path}: no such historian database")
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise ThermogateError(f"{self.path}: cannot open the historian: {exc}") from None
        self._conn = conn
        self._in_snapshot = False
        try:
            self._col_of, self._n_shards = self._load_layout(site_name)
        except sqlite3.DatabaseError as exc:  # not SQLite, or not a historian
            conn.close()
            msg = f"{self.path}: not a readable historian database: {exc}"
            raise ThermogateError(msg) from None
        except BaseException:
            conn.close()
            raise

    def _load_layout(self, site_name: str) -> tuple[dict[str, tuple[int, str, int]], int]:
        c = self._conn
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "points"} <= tables:
            raise ThermogateError(f"{self.path}: not a thermogate historian database")
        meta = dict(c.execute('SELECT "key", "value" FROM "meta"').fetchall())
        stored = meta.get("site_name", "")
        if site_name and stored and stored != site_name:
            raise ThermogateError(
                f"{self.path}: holds the history of site {stored!r}, not {site_name!r}"
            )
        if int(meta.get("schema_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise ThermogateError(
                f"{self.path}: historian schema {meta['schema_version']} is newer than "
                f"{SCHEMA_VERSION}"
            )
        rows = c.execute('SELECT "name", "shard", "col", "slot" FROM "points"').fetchall()
        col_of = {str(n): (int(k), str(col), int(slot)) for n, k, col, slot in rows}
        return col_of, 1 + max((k for k, _, _ in col_of.values()), default=-1)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HistorianReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction for every read inside (the writer keeps committing meanwhile)."""
        with self._read():
            self._in_snapshot = True
            try:
                yield
            finally:
                self._in_snapshot = False

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._in_snapshot:
            yield self._conn
            return
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    def span(self) -> tuple[float, float] | None:
        """(first, last) scan time, or None when nothing was recorded.

        Shard 0 holds a row for every scan (shards added later lack older scans).
        """
        if self._n_shards == 0:
            return None
        with self._read() as c:
            lo, hi = c.execute('SELECT min("t"), max("t") FROM "telemetry_0"').fetchone()
        return None if lo is None else (float(lo), float(hi))

    def points(self) -> list[dict]:
        """Every point the database has ever held, as ``Historian.points`` returns them."""
        with self._read() as c:
            cur = c.execute('SELECT * FROM "points" ORDER BY "idx"')
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

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

    def telemetry(
        self, names: Sequence[str], t0: float, t1: float, *, resolution: str = "raw"
    ) -> dict[str, np.ndarray]:
        """Raw point values between t0 and t1 (inclusive): ``{"t": times, name: values}``."""
        if resolution != "raw":
            raise ValueError(f"HistorianReader reads raw telemetry only, not {resolution!r}")
        by_shard = self._by_shard(names)
        if by_shard is None:
            return {"t": np.zeros(0)}
        parts = []
        with self._read() as c:
            for k, cols in by_shard.items():
                sel = ", ".join(['"t"', *(_q(col) for _, col, _ in cols)])
                cur = c.execute(
                    f'SELECT {sel} FROM "telemetry_{k}" WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                    (float(t0), float(t1)),
                )
                chunks = [np.zeros((0, 1 + len(cols)))]
                while rows := cur.fetchmany(_FETCH_ROWS):
                    chunks.append(np.array(rows, dtype=np.float64).reshape(len(rows), -1))
                arr = np.concatenate(chunks)
                parts.append((arr[:, 0], [(n, arr[:, j + 1]) for j, (n, _, _) in enumerate(cols)]))
        return _align(parts)

    def quality(self, names: Sequence[str], t0: float, t1: float) -> dict[str, np.ndarray]:
        """Raw quality codes (uint8) between t0 and t1; a point absent from a scan reads 2."""
        by_shard = self._by_shard(names)
        if by_shard is None:
            return {"t": np.zeros(0)}
        parts = []
        with self._read() as c:
            for k, cols in by_shard.items():
                slots = np.array([slot for _, _, slot in cols], np.intp)
                cur = c.execute(
                    f'SELECT "t", "quality" FROM "telemetry_{k}" '
                    'WHERE "t" >= ? AND "t" <= ? ORDER BY "t"',
                    (float(t0), float(t1)),
                )
                ts, qs = [np.zeros(0)], [np.zeros((0, len(cols)), np.uint8)]
                while rows := cur.fetchmany(_FETCH_ROWS):
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


@dataclass(frozen=True)
class TrainOutcome:
    """What one training did: the version stored and whether it is now the one in use."""

    version: int
    promoted: bool
    reason: str  # the registry's decision, e.g. "15-min pooled MAE 0.1 >= 0.1 °C of version 1"
    window: tuple[float, float]  # (t0, t_split): the data time trained on
    metrics: dict[str, Any]  # as stored in the registry: per-kind MAE/coverage, pooled MAE, ...
    train_s: float
    model: ThermalModel


def train_and_register(
    db: Path,
    site: Site,
    *,
    days: float,
    by: str,
    progress: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train on the last ``days`` of ``db``'s telemetry, register and maybe promote the model.

    ``by`` is recorded as the creator and as who decided the promotion;
    ``progress`` receives a line per phase. Raises ``ThermogateError`` naming
    ``db`` when the data cannot make a model (too little of it, gaps, no such
    file, another site's history). Safe beside a running controller: the
    telemetry is read through :class:`HistorianReader`.
    """
    from .baselines import RCBaseline
    from .dataset import build_dataset
    from .forecast import ThermalModel, evaluate
    from .registry import Registry, pooled_mae

    say = progress or (lambda _msg: None)
    db = Path(db)
    days = float(days)
    if not days > 0:
        raise ThermogateError(f"days must be positive, not {days:g}")
    with HistorianReader(db, site.name) as reader:
        say(f"reading the last {days:g} days of telemetry from {db}")
        with reader.snapshot():  # the span and the rows from the same committed scans
            span = reader.span()
            if span is None:
                have_h = 0.0
            else:
                t_end = span[1]
                t_start = max(span[0], t_end - days * 86400.0)
                have_h = (t_end - t_start) / 3600.0
            if have_h < MIN_HOURS:
                raise ThermogateError(
                    f"{db}: need at least {MIN_HOURS:g} hours of telemetry, found {have_h:.1f}"
                )
            try:
                ds = build_dataset(reader, site, t0=t_start, t1=t_end)
            except KeyError as exc:  # a point of the site the database never held
                raise ThermogateError(
                    f"{db}: {exc.args[0] if exc.args else exc} (is it this site's database?)"
                ) from None
    if len(ds) == 0:
        raise ThermogateError(f"{db}: no usable rows in the last {days:g} days (gaps or bad data)")
    times = np.concatenate([kd.times for kd in ds if len(kd)])
    t_split = float(times.min() + (1.0 - HOLDOUT_FRAC) * (times.max() - times.min()))
    train, holdout = ds.split(t_split)
    if len(train) == 0 or len(holdout) == 0:
        raise ThermogateError(f"{db}: too little usable telemetry to hold out a test window")
    say(f"fitting on {len(train)} rows ({', '.join(f'{k.kind} {len(k)}' for k in train)})")
    model = ThermalModel().fit(train)
    if not model.kinds:
        raise ThermogateError(f"{db}: too few rows to fit any zone kind")
    say(f"evaluating on the held-out {HOLDOUT_FRAC:.0%} ({len(holdout)} rows)")
    rc = RCBaseline.fit(train)
    metrics: dict[str, Any] = {
        "kinds": evaluate(model, rc, holdout),
        "pooled_mae_15_c": pooled_mae(model, holdout),
        "holdout": [t_split, float(times.max())],
        "train_s": model.train_s,
        "rows": {"train": len(train), "holdout": len(holdout)},
    }
    with Registry(db) as reg:
        version = reg.add(model, (t_start, t_split), metrics, created_by=by)
        say(f"stored version {version}; comparing with the promoted model")
        promoted = reg.maybe_promote(version, holdout, by=by)
        # this candidate's decision, not merely the last one: a `thermogate train`
        # and the controller's retrain may decide on the same registry concurrently
        reason = next(d["reason"] for d in reversed(reg.decisions()) if d["candidate"] == version)
    return TrainOutcome(
        version=version,
        promoted=promoted,
        reason=reason,
        window=(t_start, t_split),
        metrics=metrics,
        train_s=model.train_s,
        model=model,
    )


#: on_outcome(outcome, None) after a success, on_outcome(None, message) after a failure
OutcomeCallback = Callable[[TrainOutcome | None, str | None], None]


class RetrainScheduler:
    """Retrain in a daemon thread every ``every_s`` wall-clock seconds.

    The first attempt comes ``first_after_s`` after :meth:`start` (default
    ``every_s``); each attempt is due ``every_s`` after the previous one
    started, and an attempt that overran its period is followed at once by one
    more, never by a burst. After every attempt ``on_outcome(outcome, None)``
    or ``on_outcome(None, message)`` is called on the thread that ran it. A
    failure — too little data, any ``ThermogateError``, an unexpected exception,
    even an exception from ``on_outcome`` itself — is reported (and logged) and
    never ends the thread: the next period tries again.

    Only one training runs at a time. :meth:`run_once` called while a scheduled
    attempt runs *waits* for it and then trains again on the latest data (an
    operator who asks for a retrain gets one), and postpones the next scheduled
    attempt to ``every_s`` after its own start.
    """

    def __init__(
        self,
        db: str | Path,
        site: Site,
        *,
        every_s: float,
        on_outcome: OutcomeCallback,
        first_after_s: float | None = None,
        days: float = 7.0,
        by: str = SCHEDULED_BY,
    ) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be positive, not {every_s:g}")
        if first_after_s is not None and not first_after_s >= 0:
            raise ValueError(f"first_after_s must be >= 0, not {first_after_s:g}")
        if not days > 0:
            raise ValueError(f"days must be positive, not {days:g}")
        self.db = Path(db)
        self.site = site
        self.every_s = float(every_s)
        self.first_after_s = self.every_s if first_after_s is None else float(first_after_s)
        self.days = float(days)
        self.by = by
        self.on_outcome = on_outcome
        self._lock = threading.Lock()  # one training at a time
        self._stop = threading.Event()
        self._next_due = 0.0  # time.monotonic() of the next scheduled attempt
        self._thread: threading.Thread | None = None
        self._attempts = 0

    @property
    def alive(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def attempts(self) -> int:
        """Attempts finished so far (scheduled and run_once)."""
        return self._attempts

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None:
            raise RuntimeError("RetrainScheduler.start() called twice")
        self._next_due = time.monotonic() + self.first_after_s
        self._thread = threading.Thread(target=self._loop, name="thermogate-retrain", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; returns whether it ended within ``timeout`` seconds.

        Between attempts it ends at once. A fit cannot be interrupted: if one
        is running, the thread (a daemon, so it never holds up the process's
        exit) finishes it — the registry stays consistent, every write is one
        transaction — and makes no more callbacks once stop() was called.
        """
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run_once(self, by: str | None = None) -> tuple[TrainOutcome | None, str | None]:
        """Train now, on the caller's thread; ``(outcome, None)`` or ``(None, message)``.

        Waits for a running attempt first (see the class docstring). Reports
        through ``on_outcome`` as well, unless stop() was called. ``by``
        defaults to the scheduler's.
        """
        return self._attempt(by=by or self.by, scheduled=False)

    # -- internals ----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = self._next_due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # an Event, so stop() ends the wait at once
                continue  # re-check: stopped, or a run_once moved the due time
            self._attempt(by=self.by, scheduled=True)

    def _attempt(self, *, by: str, scheduled: bool) -> tuple[TrainOutcome | None, str | None]:
        with self._lock:
            if scheduled and (self._stop.is_set() or time.monotonic() < self._next_due):
                return None, None  # stopped, or a run_once trained while we waited
            self._next_due = time.monotonic() + self.every_s
            outcome: TrainOutcome | None = None
            error: str | None = None
            try:
                outcome = train_and_register(
                    self.db,
                    self.site,
                    days=self.days,
                    by=by,
                    progress=lambda msg: _log.debug("retrain: %s", msg),
                )
            except ThermogateError as exc:
                error = f"retrain failed: {exc}"
                _log.warning("%s", error)
            except Exception as exc:  # a bug or an I/O fault: report it, keep the thread
                error = f"retrain failed unexpectedly ({self.db}): {type(exc).__name__}: {exc}"
                _log.exception("%s", error)
            self._attempts += 1
            if not self._stop.is_set():
                try:
                    self.on_outcome(outcome, error)
                except Exception:  # the callback's fault must not end the schedule
                    _log.exception("retrain on_outcome callback failed")
            return outcome, error
