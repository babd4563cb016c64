"""The thermal model beside the control core: the wiring between ``models`` and the scan.

``models`` is a learning library: its :class:`~thermogate.models.live.LiveForecaster`
returns its own records (headroom per load, notices). :class:`ModelRuntime`
owns that forecaster for ``thermogate run`` and ``thermogate simulate`` and
does what the controller needs around it, once per scan (:meth:`ModelRuntime.step`,
which is :meth:`~ModelRuntime.observe` then :meth:`~ModelRuntime.update`;
``thermogate run`` calls the two apart, the update between scans, so the
minute's forecast -- ~150 ms at 10,000 points -- never lengthens a scan):

* swaps in a model the background retraining promoted (its version handed
  over under a lock, the model loaded from the registry with the scan's
  records: the retrain thread never touches the forecaster, nor unpickles);
* feeds the forecaster the scan's validated record;
* hands the per-load headroom to the core's planning seam as
  :class:`~thermogate.controller.core.LoadForecast` (``source`` says whether
  the learned model or the physics prior gave it) and returns the
  forecaster's and the retraining's notices as controller :class:`Event` s.

A site with no promoted model is forecast by the physics prior
(:mod:`thermogate.models.prior`) as soon as the forecaster's minute bins hold
a feature window (~22 minutes: 15 minutes of features over 5-minute
setpoint changes, after the first partial minute; at once after a restart:
the bins are seeded from the historian); the first retrain comes as soon as ``MIN_HOURS`` of
history can exist, retried hourly until a model is promoted, and the promoted
model takes over from the prior with an info event.

The model never blocks or overrides protection: without a forecast, or with a
stale one, the planner simply gets none.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .core import Controller, LoadForecast, ScanResult
from .heap import release_freed_heap
from .historian import HistoryReader
from .signals import Event

if TYPE_CHECKING:  # scikit-learn loads when the model starts, not at import
    from thermogate.models.forecast import ThermalModel
    from thermogate.models.live import ForecastUpdate, LiveForecaster, LoadHeadroom, Notice
    from thermogate.models.training import TrainOutcome
    from thermogate.plc.site import Site

    from .retrain import RetrainScheduler

__all__ = ["MODEL_SOURCE", "ModelRuntime", "load_forecasts", "model_events"]

#: the source of every event about the thermal model
MODEL_SOURCE = "model"
#: s between retrain attempts while no model is promoted (the physics prior forecasts)
RETRY_UNTIL_MODEL_S = 3600.0
#: minute updates whose duration is kept (``ModelRuntime.update_s``): a day
UPDATES_KEPT = 1440


def load_forecasts(loads: Mapping[str, LoadHeadroom]) -> dict[str, LoadForecast]:
    """The forecaster's per-load headroom as the core's planning seam takes it,
    marked with its source (the learned model, or the physics prior)."""
    return {
        name: LoadForecast(
            h.headroom_kw, h.loop_headroom_kw, h.time_to_limit_min, h.trusted, h.source
        )
        for name, h in loads.items()
    }


def model_events(notices: Iterable[Notice]) -> list[Event]:
    """The forecaster's notices as controller events."""
    return [Event(n.t, n.kind, MODEL_SOURCE, n.message, n.severity, n.data) for n in notices]


class ModelRuntime:
    """A live forecaster beside one controller, optionally retrained in the background.

    ``step`` (or ``observe`` and ``update``) runs on the scan's thread;
    ``on_retrain`` (the retrainer's callback) on the retrain thread, which only
    queues its result for the next ``observe``. A promoted model that came back
    from a training process without its model is loaded from ``db``'s registry
    there, off the scan's clock (``run`` calls ``observe`` with the scan's
    records), not on the retrain thread at a moment no scan chose.
    """

    def __init__(
        self,
        ctrl: Controller,
        forecaster: LiveForecaster,
        retrainer: RetrainScheduler | None = None,
        db: Path | None = None,
    ) -> None:
        self.ctrl = ctrl
        self.forecaster = forecaster
        self.retrainer = retrainer
        self.db = db  # the registry a promoted version is loaded from
        #: the last forecast handed to the core (None until the first)
        self.last: ForecastUpdate | None = None
        self._lock = threading.Lock()
        # from the retrain thread: (the model, or None to load it; version; t1)
        self._handover: list[tuple[ThermalModel | None, int, float]] = []
        self._events: list[Event] = []
        #: seconds each minute's update took (the last ``UPDATES_KEPT``)
        self.update_s: deque[float] = deque(maxlen=UPDATES_KEPT)

    @classmethod
    def for_run(
        cls,
        ctrl: Controller,
        site: Site,
        columns: Sequence[str],
        db: Path,
        history: HistoryReader,
        *,
        retrain_every_h: float,
        train_days: float,
    ) -> ModelRuntime:
        """``thermogate run``'s model: the promoted one of ``db`` (if any and
        usable) forecasts at once from the last minutes of ``history``;
        retraining runs in a process of its own once :meth:`start` is called."""
        from thermogate.models.live import LiveForecaster
        from thermogate.models.registry import ModelLoadError, Registry

        from .retrain import MIN_HOURS, RetrainScheduler

        rt = cls(ctrl, LiveForecaster(site, columns), db=db)
        unusable = None  # why the promoted model is not used
        with Registry(db) as reg:
            try:
                got = reg.promoted()
            except ModelLoadError as exc:  # damaged: the prior forecasts, a retrain replaces it
                got, unusable = None, f"promoted {exc}"
            t1 = {v["id"]: v["t1"] for v in reg.versions()}
        if got is not None and got[1].incompatible():
            unusable = (
                f"promoted model version {got[0]} was trained on other features than this"
                " version builds"
            )
            got = None
        if unusable is not None:
            rt._events.append(
                Event(
                    time.time(), "alarm", MODEL_SOURCE,
                    f"{unusable}: not used until a retrain replaces it", 500,
                )
            )  # fmt: skip
        if got is not None:
            version, model = got
            rt.forecaster.set_model(model, trained_t=t1[version], version=version)
        rt.seed(history, time.time())  # the model, or the physics prior, forecasts at once
        every = retrain_every_h * 3600.0
        # without a model, try as soon as there is enough history to learn from,
        # and again every hour until one is promoted (not a day after a failure)
        first = every if got is not None else min(every, (MIN_HOURS + 0.25) * 3600.0)
        rt.retrainer = RetrainScheduler(
            db, site, every_s=every, first_after_s=first, days=train_days,
            on_outcome=rt.on_retrain,
            retry_after_s=None if got is not None else min(every, RETRY_UNTIL_MODEL_S),
        )  # fmt: skip
        return rt

    def seed(self, history: HistoryReader, now: float) -> int:
        """Fill the forecaster's minutes from the recorded scans before ``now``
        (a restart forecasts at once); returns the minutes seeded."""
        fc = self.forecaster
        t0, t1 = fc.seed_window(now)
        t, values, quality = history.scans(fc.names, t0, t1)
        return fc.seed(t, values, quality)

    def start(self) -> None:
        """Start background retraining (if this runtime retrains)."""
        if self.retrainer is not None:
            self.retrainer.start()

    def close(self) -> None:
        """Stop background retraining; a fit in progress finishes on its own."""
        if self.retrainer is not None:
            self.retrainer.stop(timeout=5.0)

    def on_retrain(self, outcome: TrainOutcome | None, error: str | None) -> None:
        """The retrainer's callback (on its thread): hand the result to the scan loop."""
        now = time.time()
        with self._lock:
            if error is not None:
                self._events.append(Event(now, "alarm", MODEL_SOURCE, error, 500))
                return
            assert outcome is not None
            verdict = "promoted" if outcome.promoted else "not promoted"
            self._events.append(
                Event(
                    now, "info", MODEL_SOURCE,
                    f"retrained model version {outcome.version} {verdict}: {outcome.reason}", 300,
                )
            )  # fmt: skip
            if outcome.promoted:
                self._handover.append((outcome.model, outcome.version, outcome.window[1]))

    def step(self, t: float, res: ScanResult) -> list[Event]:
        """One scan, all of it: :meth:`observe`, then :meth:`update`; returns the
        events to record."""
        return self.observe(t, res) + self.update(t)

    def observe(self, t: float, res: ScanResult) -> list[Event]:
        """The scan's part (microseconds): swap in a newly promoted model and feed
        the forecaster the scan's record; returns the events to record."""
        fc = self.forecaster
        with self._lock:
            handover, self._handover = self._handover, []
            events, self._events = self._events, []
        for model, version, t1 in handover[-1:]:
            if model is None:
                model = self._load(version, events)
            if model is not None:
                fc.set_model(model, trained_t=t1, version=version)
                release_freed_heap()  # the model replaced is gone: its pages back to the system
        fc.observe(t, *res.record)
        return events

    def _load(self, version: int, events: list[Event]) -> ThermalModel | None:
        """A promoted ``version`` from the registry; None, with an alarm added to
        ``events``, where it cannot be read: the model in use stays."""
        from thermogate.models.registry import load_version

        why = "no database to load it from"
        if self.db is not None:
            try:
                return load_version(self.db, version)
            except Exception as exc:  # gone, corrupt, pickled by another library
                # version: whatever it is, a model that will not load never stops the scans
                why = f"{type(exc).__name__}: {exc}"
        events.append(
            Event(
                time.time(), "alarm", MODEL_SOURCE,
                f"promoted model version {version} could not be loaded ({why}):"
                " the model in use stays", 500,
            )
        )  # fmt: skip
        return None

    def update(self, t: float) -> list[Event]:
        """Once a minute (a no-op otherwise): forecast and hand the headroom to the
        core, for its next scan; returns the events to record."""
        t0 = time.perf_counter()
        upd = self.forecaster.update(t)
        if upd is None:
            return []
        self.last = upd
        self.ctrl.set_forecast(upd.t, load_forecasts(upd.loads))
        self.update_s.append(time.perf_counter() - t0)
        return model_events(upd.notices)
