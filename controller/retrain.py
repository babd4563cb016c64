"""Training from the historian, once or on a schedule: the controller's side of learning.

:func:`history_dataset` reads the points a dataset needs from a historian and
hands the arrays to :func:`~thermogate.models.dataset.build_dataset`;
:func:`train_and_register` is what ``thermogate train`` does: read the last
``days`` of telemetry and :func:`~thermogate.models.training.fit_and_register`
(fit on the first 80 %, measure on the held-out 20 %, register, promote only if
not worse). :class:`RetrainScheduler` runs it every ``every_s`` seconds in a process of its
own at a lower priority (a fit is a minute of numpy and scikit-learn: in a
thread it held the GIL long enough to wake scans ~14 ms late), watched by a
thread, so ``thermogate run`` retrains without its scan loop ever waiting.

Reading beside a running controller: the controller owns the only writing
``Historian`` of its database; training reads through a
:class:`~thermogate.controller.historian.HistoryReader` (read-only, WAL: it
sees committed scans and never blocks or alters the writer).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thermogate.plc.errors import ThermogateError

from .historian import HistoryReader

if TYPE_CHECKING:  # scikit-learn loads when a model is trained, not at import
    from thermogate.models.dataset import Dataset
    from thermogate.models.training import TrainOutcome
    from thermogate.plc.site import Site

__all__ = [
    "MIN_HOURS",
    "SCHEDULED_BY",
    "RetrainScheduler",
    "history_dataset",
    "train_and_register",
]

#: less telemetry than this cannot fill a feature window, a 30-min target and a held-out tail
MIN_HOURS = 2.0
#: ``by`` recorded in the registry for the scheduler's attempts
SCHEDULED_BY = "thermogate run (scheduled retrain)"
#: the zone kinds a dataset holds unless asked otherwise
KINDS = ("tank", "loop", "cdu")

_log = logging.getLogger(__name__)


def history_dataset(
    reader: HistoryReader,
    site: Site,
    *,
    t0: float | None = None,
    t1: float | None = None,
    kinds: Sequence[str] = KINDS,
    **kw: Any,
) -> Dataset:
    """The dataset of ``site`` from the raw scans (values and quality) in [t0, t1].

    Reads, in one snapshot, the points :func:`~thermogate.models.dataset.input_columns`
    names (planned load and setpoints as far as the history holds them); ``kw``
    goes to ``build_dataset`` (horizons, step, ``require_targets``). Raises
    ``KeyError`` for a point of the site the history never held.
    """
    from thermogate.models.dataset import build_dataset, input_columns, zone_specs

    specs = [s for s in zone_specs(site) if s.kind in kinds]
    lo = -1e18 if t0 is None else float(t0)
    hi = 1e18 if t1 is None else float(t1)
    with reader.snapshot():
        names = input_columns(specs, {p["name"] for p in reader.points()})
        t, values, quality = reader.scans(names, lo, hi)
    return build_dataset({"t": t, **values, "quality": quality}, site, kinds=kinds, **kw)


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
    file, another site's history). Safe beside a running controller.
    """
    from thermogate.models.training import fit_and_register

    say = progress or (lambda _msg: None)
    db = Path(db)
    days = float(days)
    if not days > 0:
        raise ThermogateError(f"days must be positive, not {days:g}")
    with HistoryReader(db, site.name) as reader:
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
                ds = history_dataset(reader, site, t0=t_start, t1=t_end)
            except KeyError as exc:  # a point of the site the database never held
                raise ThermogateError(
                    f"{db}: {exc.args[0] if exc.args else exc} (is it this site's database?)"
                ) from None
    if len(ds) == 0:
        raise ThermogateError(f"{db}: no usable rows in the last {days:g} days (gaps or bad data)")
    return fit_and_register(ds, db, t_start=t_start, by=by, progress=say)


#: on_outcome(outcome, None) after a success, on_outcome(None, message) after a failure
OutcomeCallback = Callable[["TrainOutcome | None", "str | None"], None]


class _Stopped(Exception):
    """stop() was called while a training process ran: it was ended."""


class _Crashed(Exception):
    """The training process failed unexpectedly; the message names the exception."""


def _train_child(conn: Any, db: Path, site: Site, days: float, by: str, nice: int) -> None:
    """The training process: one ``train_and_register``, its result on ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    try:
        outcome = train_and_register(db, site, days=days, by=by)
        # without the model: it is in the registry (TrainOutcome.model)
        conn.send(("ok", replace(outcome, model=None)))
    except ThermogateError as exc:
        conn.send(("refused", str(exc)))
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


#: niceness added to a training process: the controller's scan comes first
TRAIN_NICE = 10


class RetrainScheduler:
    """Retrain every ``every_s`` wall-clock seconds, in a process of its own.

    The first attempt comes ``first_after_s`` after :meth:`start` (default
    ``every_s``); each attempt is due ``every_s`` after the previous one
    started (``retry_after_s`` after it while no attempt has promoted a model:
    a new site should not wait a day for its first model after a failure),
    and an attempt that overran its period is followed at once by one more,
    never by a burst. After every attempt ``on_outcome(outcome, None)``
    or ``on_outcome(None, message)`` is called on the thread that ran it. A
    failure — too little data, any ``ThermogateError``, an unexpected exception,
    even an exception from ``on_outcome`` itself — is reported (and logged) and
    never ends the thread: the next period tries again.

    Each training runs in a child process (``process=False``: on the calling
    thread, for tests that replace ``train_and_register``) at a lower priority;
    its outcome comes back pickled, without the model (``TrainOutcome.model``
    None: the registry holds it as the outcome's version). ``last_pid`` is the
    process that ran the last one. ``nice`` is added to the child's niceness
    (default :data:`TRAIN_NICE`: the scan's process comes first on a shared
    core; 0 where nothing latency-bound shares the machine, as in tests that
    run two workers on two cores and would otherwise starve the child).

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
        retry_after_s: float | None = None,
        process: bool = True,
        nice: int = TRAIN_NICE,
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
        #: until an attempt promotes a model, the next is due this long after a
        #: failed or unpromoted one (None: ``every_s`` always)
        self.retry_after_s = None if retry_after_s is None else float(retry_after_s)
        self._lock = threading.Lock()  # one training at a time
        self._stop = threading.Event()
        self._next_due = 0.0  # time.monotonic() of the next scheduled attempt
        self._thread: threading.Thread | None = None
        self._attempts = 0
        self.process = bool(process)
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be 0..19, not {nice}")
        self.nice = int(nice)
        self.last_pid: int | None = None

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

        Between attempts it ends at once. A training process is ended (the
        registry stays consistent: every write of it is one SQLite transaction);
        a training on the thread itself (``process=False``) cannot be
        interrupted and is finished by the thread (a daemon). No callbacks are
        made once stop() was called.
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

    def _train(self, by: str) -> TrainOutcome:
        if not self.process:
            self.last_pid = os.getpid()
            return train_and_register(
                self.db,
                self.site,
                days=self.days,
                by=by,
                progress=lambda msg: _log.debug("retrain: %s", msg),
            )
        ctx = mp.get_context("spawn")  # a clean interpreter: no threads or loops inherited
        answer, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_train_child,
            args=(child_end, self.db, self.site, self.days, by, self.nice),
            name="thermogate-retrain",
            daemon=True,  # never outlives the controller
        )
        proc.start()
        child_end.close()
        self.last_pid = proc.pid
        try:
            while not answer.poll(0.5):
                if self._stop.is_set():
                    raise _Stopped
                if not proc.is_alive() and not answer.poll(0):
                    raise ThermogateError(
                        f"{self.db}: the training process ended (exit code {proc.exitcode}) "
                        "without an answer"
                    )
            try:
                kind, payload = answer.recv()
            except EOFError:
                raise ThermogateError(
                    f"{self.db}: the training process ended without an answer"
                ) from None
        finally:
            if proc.is_alive() and self._stop.is_set():
                proc.terminate()
            proc.join(10)
            answer.close()
        if kind == "ok":
            return payload
        if kind == "refused":
            raise ThermogateError(payload)
        raise _Crashed(payload)

    def _attempt(self, *, by: str, scheduled: bool) -> tuple[TrainOutcome | None, str | None]:
        with self._lock:
            if scheduled and (self._stop.is_set() or time.monotonic() < self._next_due):
                return None, None  # stopped, or a run_once trained while we waited
            started = time.monotonic()
            self._next_due = started + self.every_s
            outcome: TrainOutcome | None = None
            error: str | None = None
            try:
                outcome = self._train(by)
            except _Stopped:
                return None, None
            except ThermogateError as exc:
                error = f"retrain failed: {exc}"
                _log.warning("%s", error)
            except Exception as exc:  # a bug or an I/O fault: report it, keep the thread
                what = str(exc) if isinstance(exc, _Crashed) else f"{type(exc).__name__}: {exc}"
                error = f"retrain failed unexpectedly ({self.db}): {what}"
                _log.exception("%s", error)
            self._attempts += 1
            if outcome is not None and outcome.promoted:
                self.retry_after_s = None  # a model exists: the normal period from now on
            elif self.retry_after_s is not None:
                self._next_due = min(self._next_due, started + self.retry_after_s)
            if not self._stop.is_set():
                try:
                    self.on_outcome(outcome, error)
                except Exception:  # the callback's fault must not end the schedule
                    _log.exception("retrain on_outcome callback failed")
            return outcome, error
