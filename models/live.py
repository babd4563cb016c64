"""The thermal model at run time: per-minute history, forecasts, headroom, trust.

:class:`LiveForecaster` sits beside the control core (it never blocks or
overrides protection). Every scan it is handed the validated values and their
quality (:meth:`observe`); it keeps one-minute means of the points the model
uses, exactly as :func:`~thermogate.models.dataset.resample` would build them
from the historian (a minute with too few scans, or too few usable samples of
a point, is invalid — never interpolated). Once a minute (:meth:`update`) it

1. builds the live rows of every zone from the last minutes,
2. checks whether the model may be trusted (:class:`~thermogate.models.trust.Trust`:
   out of distribution, stale, live error grown beyond calibration),
3. computes the heat headroom of every tank, CDU and loop — the model's, or
   the physics prior's when it is not trusted (see ``_with_prior``),
4. scores the forecasts made ``h`` minutes ago against what happened
   (the live errors the trust check watches), and
5. returns a :class:`ForecastUpdate`: headroom per zone and per load
   (:class:`LoadHeadroom`, what the controller hands its planning seam), the
   forecasts, and notices (:class:`Notice`: an alarm when trust is lost, a
   clear when it returns). These are the model's own records: the controller
   adapts them to its own types (``controller/forecasting.py``).

Without a learned model (a new site) the physics prior built from the site
description (:class:`~thermogate.models.prior.PhysicsPrior`) forecasts and
gives the headroom, from the first minute whose feature window is whole
(~16-20 minutes after a start); a learned model that arrives (``set_model``,
or learned in-run) takes over, with an info notice recording the hand-over,
and :attr:`ForecastUpdate.source` and :attr:`LoadHeadroom.source` say which
forecast. The prior keeps forecasting beside the learned model, scored on
its own, so its margin is current whenever it has to stand in.

Without a model it can learn one from its own history
(``learn_after_s``): ``thermogate simulate`` uses this to show a model
learned from the first hours of a run forecasting the rest.

Pure: no clock reads and no I/O; time is the data time handed in. A
restarted controller fills the minute bins from its historian with
:meth:`LiveForecaster.seed` (arrays it read over :meth:`seed_window`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import numpy as np

from thermogate.plc.points import BAD
from thermogate.plc.site import Site

from .bins import BinAccumulator, bin_index, bin_means, usual_scans
from .conformal import AdaptiveBound
from .dataset import WINDOW, build_dataset, input_columns, resample, zone_specs
from .forecast import ThermalModel
from .headroom import Headroom, headroom, latest_rows
from .prior import PRIOR_SOURCE, PhysicsPrior
from .scoring import Score, score_table
from .trust import LiveErrors, Trust

__all__ = ["LIVE_STEPS", "ForecastUpdate", "LiveForecaster", "LoadHeadroom", "Notice"]

#: headroom keeps the bound this far below a zone's alarm: where the controller's
#: thermal protection starts shedding (``THERMAL_SOFT_MARGIN_K``), so a load the
#: planner adds on the headroom is not shed again by protection
HEADROOM_MARGIN_K = 2.5
CLEAR_AFTER = 5  # trusted minutes in a row before a distrusted model is trusted again
#: minutes of history a forecast is built from (lagged features reach back past the window)
LIVE_STEPS = 2 * WINDOW
#: minute bins kept once nothing is to be learned from them (a forecast needs LIVE_STEPS)
KEEP_STEPS = LIVE_STEPS + 60
#: a jump of the data's clock beyond this (or any step back) restarts the minute history
RESTART_GAP_S = 6 * 3600.0
#: data time the report records (archived forecasts, measured minutes) are kept
#: behind the newest minute: a report takes them within minutes, a long run must
#: not keep every minute it ever forecast
REPORT_KEEP_S = 3600.0


@dataclass(frozen=True)
class LoadHeadroom:
    """The model's word on one load (a tank or a rack row)."""

    headroom_kw: float  # extra kW this load may add now (its tank, or its share of its CDU)
    loop_headroom_kw: float  # extra kW the load's whole loop may take (shared by its loads)
    time_to_limit_min: float  # first of its zones to reach its limit at current load (inf: > 30)
    trusted: bool  # False: the conservative fallback (model out of range, stale or drifting)
    source: str = "learned"  # learned | prior (the physics prior: no model yet, or not trusted)


@dataclass(frozen=True)
class Notice:
    """Something the forecaster has to say: trust lost (alarm), regained (clear), info."""

    t: float
    kind: str  # alarm | clear | info
    message: str
    severity: int = 500  # OPC UA style 1..1000
    data: dict = field(default_factory=dict)


@dataclass
class ForecastUpdate:
    t: float
    trusted: bool
    reasons: list[str]
    zones: dict[str, Headroom]  # by zone name (tank, CDU, loop)
    loads: dict[str, LoadHeadroom]  # by load name (tank, rack row)
    forecasts: dict[str, tuple[str, np.ndarray, np.ndarray]]  # zone -> (kind, mean, upper)
    notices: list[Notice] = field(default_factory=list)
    #: what forecast this minute: the learned model's source, or the physics prior's
    #: (no learned model yet, or it is not trusted)
    source: str = ""


class _MinuteBins:
    """One-minute means of selected points, valid as :mod:`.bins` defines it."""

    def __init__(self, n: int, step_s: float, keep: int | None) -> None:
        self.step_s = step_s
        self.n = n
        self.k: int | None = None
        self.acc = BinAccumulator(n, extremes=False)
        self.t: deque[float] = deque(maxlen=keep)
        self.v: deque[np.ndarray] = deque(maxlen=keep)
        self.scans_per_bin: deque[int] = deque(maxlen=keep or 1440)

    def add(self, t: float, values: np.ndarray, usable: np.ndarray) -> bool:
        """Add one scan; True when it restarted the history: the clock stepped back,
        or forward by more than ``RESTART_GAP_S`` (a dead RTC's 1970 put right by
        NTP): minutes across such a step are no series, and bins spanning decades
        would not fit in memory."""
        k = bin_index(t, self.step_s)
        restarted = False
        if self.k is not None and k != self.k:
            self._close()
            if k < self.k or (k - self.k) * self.step_s > RESTART_GAP_S:
                self.t.clear()
                self.v.clear()
                self.scans_per_bin.clear()
                restarted = True
        if self.k != k:
            self.k = k
            self.acc.reset()
        self.acc.add(values, usable)
        return restarted

    def _close(self) -> None:
        assert self.k is not None
        scans = self.acc.rows
        self.scans_per_bin.append(scans)
        usual = usual_scans(np.asarray(self.scans_per_bin))
        self.t.append(self.k * self.step_s)
        self.v.append(bin_means(self.acc.sum, self.acc.cnt, scans, usual))

    def limit(self, keep: int) -> None:
        """Keep only the last ``keep`` minutes from now on (the history was learned)."""
        self.t = deque(self.t, maxlen=keep)
        self.v = deque(self.v, maxlen=keep)

    def arrays(self, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        # only the tail: a run that learns keeps its whole history in these deques
        skip = max(0, len(self.t) - last) if last else 0
        ts = list(islice(self.t, skip, None))
        vs = list(islice(self.v, skip, None))
        if not ts:
            return np.zeros(0), np.zeros((0, self.n))
        return np.asarray(ts), np.vstack(vs)


def physics_checked(
    zones: Mapping[str, Headroom],
    prior: PhysicsPrior,
    rows: Sequence[Any],
    kinds: Collection[str],
    margin_k: float,
) -> dict[str, Headroom]:
    """The learned headroom, never above the physics prior's for the same zone.

    Heat must go somewhere: a regulated zone's history says little about a
    step its regulation cannot follow (in a tank held at its setpoint the
    trees learn that power barely moves the temperature). Two upper bounds
    that each hold with probability 1 - alpha hold together with at least
    that probability, so the smaller headroom keeps the promise of either.
    Measured (``thermogate bench headroom``, 120 steps of a hot week): 7
    crossed on the learned headroom alone, 1 with this check."""
    checked = prior.headroom([kd for kd in rows if kd.kind in kinds], margin_k=margin_k)
    out = dict(zones)
    for z, h in checked.items():
        if z in out and h.extra_kw < out[z].extra_kw:
            out[z] = replace(out[z], extra_kw=h.extra_kw)
    return out


class LiveForecaster:
    """See the module docstring."""

    def __init__(
        self,
        site: Site,
        columns: Sequence[str],
        model: ThermalModel | None = None,
        *,
        trained_t: float | None = None,
        version: int | str | None = None,
        step_s: float = 60.0,
        margin_k: float = HEADROOM_MARGIN_K,
        learn_after_s: float | None = None,
        keep_history: bool = False,
        max_age_days: float = 14.0,
        prior: bool = True,
    ) -> None:
        self.site = site
        self.specs = zone_specs(site)
        index = {n: i for i, n in enumerate(columns)}
        names = input_columns(self.specs, index)
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"point map lacks {missing[:5]}")
        self.names = names
        self.idx = np.array([index[n] for n in names], np.intp)
        self.step_s = step_s
        self.margin_k = margin_k
        self.learn_after_s = learn_after_s
        self.max_age_days = max_age_days
        self.keep_history = keep_history
        keep = None if (keep_history or learn_after_s is not None) else KEEP_STEPS
        self.bins = _MinuteBins(len(names), step_s, keep)
        self.model: ThermalModel | None = None
        self.version: int | str | None = None
        self.trained_t = math.nan
        self.learned_at: float | None = None
        #: forecasts and headroom before a learned model arrives, and while one is
        #: not trusted (None: no forecast without a learned model)
        self.prior = PhysicsPrior(site) if prior else None
        self.source = PRIOR_SOURCE if prior else "no model"
        #: data time of the first forecast, and of the learned model's taking over
        self.first_forecast_t: float | None = None
        self.handover_t: float | None = None
        #: target minutes of archived forecasts the prior made for want of a learned
        #: model (reports mark them; the last REPORT_KEEP_S only)
        self.prior_made: set[float] = set()
        self._handover: str | None = None  # the source handed over from, until its notice
        self.trust: Trust | None = None
        self.errors = LiveErrors()
        self._t_first: float | None = None
        self._restarts: list[Notice] = []  # the history restarted (a clock step), unsaid
        self._last_update_k: int | None = None
        self._trusted: bool | None = None
        self._reason_kinds: frozenset[str] = frozenset()  # raised in this untrusted episode
        # forecasts awaiting their actuals: (zone, target bin time) ->
        # (kind, horizon index, horizon, mean, upper, scale s(x), offset the bound used)
        self._pending: dict[
            tuple[str, float], list[tuple[str, int, int, float, float, float, float]]
        ] = {}
        #: the bound's offsets, adapted from the scored forecasts (:mod:`.conformal`),
        #: with the model they belong to (a new model starts from its own calibration)
        self._bound: tuple[ThermalModel, AdaptiveBound] | None = None
        self._ok_streak = 0
        #: per kind, the scored forecasts of the report horizon
        self.score: dict[str, Score] = {}
        #: (minute, zone) -> the minute's measured mean, once known (for reports)
        self.measured: dict[tuple[float, str], float] = {}
        #: (target time, zone) -> (mean, upper) of the 15-min forecast, for reports
        self.archive: dict[tuple[float, str], tuple[float, float]] = {}
        self.archive_horizon_min = 15
        self._loads = self._load_map(site)
        if model is not None:
            self.set_model(model, trained_t=trained_t, version=version)

    # ------------------------------------------------------------------
    @staticmethod
    def _load_map(site: Site) -> dict[str, tuple[str, str, float]]:
        """load -> (its zone, its loop, its share of the zone's nameplate)."""
        out: dict[str, tuple[str, str, float]] = {}
        for t in site.tanks:
            out[t.name] = (t.name, t.loop, 1.0)
        cdu_loop = {c.name: c.loop for c in site.cdus}
        rated: dict[str, float] = {}
        for r in site.rack_rows:
            rated[r.cdu] = rated.get(r.cdu, 0.0) + r.nodes * r.node_power_kw
        for r in site.rack_rows:
            share = r.nodes * r.node_power_kw / rated[r.cdu] if rated[r.cdu] else 0.0
            out[r.name] = (r.cdu, cdu_loop[r.cdu], share)
        return out

    def set_model(
        self,
        model: ThermalModel,
        *,
        trained_t: float | None = None,
        version: int | str | None = None,
    ) -> None:
        """Use ``model`` from now on (``trained_t``: data time its training window ended).

        After forecasts from the physics prior the next :meth:`update` records
        the hand-over in an info notice."""
        if self.model is None and self.first_forecast_t is not None and self._handover is None:
            self._handover = self.source
        self.model = model
        self.version = version
        self.source = f"model version {version}"
        self.trained_t = math.nan if trained_t is None else float(trained_t)
        self.trust = Trust(model, max_age_days=self.max_age_days)
        self.errors = LiveErrors()  # errors of the previous model say nothing about this one
        self._pending.clear()

    def seed_window(self, now: float) -> tuple[float, float]:
        """The data time (t0, t1) of the recorded scans :meth:`seed` wants: the
        last ``LIVE_STEPS`` whole minutes before ``now``."""
        t0 = (math.floor(now / self.step_s) - LIVE_STEPS) * self.step_s
        t1 = math.floor(now / self.step_s) * self.step_s - 1e-6  # whole minutes only
        return t0, t1

    def seed(
        self,
        t: np.ndarray,
        values: Mapping[str, np.ndarray],
        quality: Mapping[str, np.ndarray] | None,
    ) -> int:
        """Fill the minute bins from recorded scans (of :attr:`names`, over
        :meth:`seed_window`), so a restarted controller forecasts at once
        instead of after ``LIVE_STEPS`` minutes.

        The minutes are resampled exactly as :meth:`observe` would have binned
        them. Returns the number of minutes seeded (0 when there are no scans).
        """
        if len(t) == 0:
            return 0
        rs = resample(t, {n: values[n] for n in self.names}, quality, step_s=self.step_s)
        for i, tb in enumerate(rs.t):
            self.bins.t.append(float(tb))
            self.bins.v.append(np.array([rs.values[n][i] for n in self.names]))
        return len(rs.t)

    def observe(self, t: float, values: np.ndarray, quality: np.ndarray) -> None:
        """One scan's validated values and quality, aligned with ``columns``
        (``ScanResult.record`` for ``record_columns``)."""
        if self._t_first is None:
            self._t_first = t
        v = np.asarray(values, dtype=np.float64)[self.idx]
        usable = np.isfinite(v) & (np.asarray(quality)[self.idx] != BAD)
        if self.bins.add(t, v, usable):
            self._t_first = t  # learning counts its hours from the step
            self._pending.clear()  # forecasts made before it are scored against nothing
            self._restarts.append(
                Notice(
                    t, "info",
                    "the clock stepped; the thermal model's minute history starts again "
                    f"(a forecast needs {LIVE_STEPS} minutes of it)", 500,
                )
            )  # fmt: skip

    # ------------------------------------------------------------------
    def _arrays(self, last: int | None) -> dict[str, Any]:
        t, v = self.bins.arrays(last)
        out: dict[str, Any] = {"t": t}
        for j, n in enumerate(self.names):
            out[n] = v[:, j]
        return out

    def _learn(self, t: float) -> list[Notice]:
        assert self.learn_after_s is not None and self._t_first is not None
        if self.model is not None or t - self._t_first < self.learn_after_s:
            return []
        ds = build_dataset(self._arrays(None), self.site, step_s=self.step_s)
        self.learned_at = t  # once, whether or not it worked: do not retry every minute
        if not self.keep_history:  # learned once: the rest of a month need not stay
            self.bins.limit(KEEP_STEPS)
        model = ThermalModel().fit(ds) if len(ds) else None
        if model is None or not model.kinds:
            return [Notice(t, "alarm", "too few usable rows to learn a thermal model", 600)]
        self.set_model(model, trained_t=float(self.bins.t[-1]), version="learned in run")
        self.source = f"learned in-run from the first {(t - self._t_first) / 3600:.3g} h"
        kinds = ", ".join(f"{kd.kind} {len(kd)}" for kd in ds)
        return [
            Notice(
                t, "info",
                f"thermal model learned from {(t - self._t_first) / 3600:.1f} h of history "
                f"({kinds} rows, {model.train_s:.1f} s)", 300,
            )
        ]  # fmt: skip

    def update(self, t: float) -> ForecastUpdate | None:
        """At most once a minute (after the minute's bin closed): see the module docstring."""
        k = bin_index(t, self.step_s)
        if self._last_update_k == k or not self.bins.t:
            return None
        self._last_update_k = k
        notices, self._restarts = self._restarts, []
        if self.learn_after_s is not None:
            notices += self._learn(t)
        if (self.model is None or self.trust is None) and self.prior is None:
            return None if not notices else ForecastUpdate(t, False, [], {}, {}, {}, notices)
        ds = build_dataset(
            self._arrays(LIVE_STEPS), self.site, step_s=self.step_s, require_targets=False
        )
        t_bin = float(self.bins.t[-1])
        self._forget(t_bin)
        rows = [kd.take(kd.times == t_bin) for kd in latest_rows(ds)]  # zones valid this minute
        rows = [kd for kd in rows if len(kd)]
        prior_fc = self._prior_step(rows, t_bin)
        if self.model is None or self.trust is None:
            return self._prior_update(t, t_bin, rows, prior_fc, notices)
        live = [kd for kd in rows if kd.kind in self.model.kinds]
        self._score(live)
        trained = self.trained_t if math.isfinite(self.trained_t) else t_bin
        verdict = self.trust.check(
            live, now_t=t_bin, last_trained_t=trained, live_errors=self.errors
        )
        # trust returns only after CLEAR_AFTER trusted minutes in a row: a model at
        # the edge of its range would otherwise flap between alarm and clear
        self._ok_streak = self._ok_streak + 1 if verdict.ok else 0
        if verdict.ok and self._trusted is False and self._ok_streak < CLEAR_AFTER:
            verdict.ok = False
            verdict.reasons = [f"recovering: {self._ok_streak} of {CLEAR_AFTER} minutes trusted"]
        offsets = self.bound().all_offsets()
        if verdict.ok:
            zones = headroom(self.model, live, self.site, margin_k=self.margin_k, offsets=offsets)
        else:
            # the fallback doubles an offset never narrower than the calibrated one
            wide = {k: np.maximum(q, self.model.kinds[k].q) for k, q in offsets.items()}
            zones = self.trust.conservative_headroom(
                live, self.site, margin_k=self.margin_k, offsets=wide
            )
        forecasts = self._forecast(live, t_bin)
        zones, forecasts, used = self._with_prior(
            verdict.ok, rows, zones, forecasts, prior_fc, t_bin
        )
        n_zones = sum(len(kd) for kd in live)  # len(live) is the kinds: it said "3 zones"
        notices += self._handover_notice(t, t_bin, n_zones)
        notices += self._trust_notices(t, verdict.ok, verdict.reasons, n_zones)
        return ForecastUpdate(
            t, verdict.ok, list(verdict.reasons), zones, self._per_load(zones, verdict.ok, used),
            forecasts, notices, self.source if verdict.ok or self.prior is None else PRIOR_SOURCE,
        )  # fmt: skip

    def _forget(self, t_bin: float) -> None:
        """Drop report records older than ``REPORT_KEEP_S`` behind minute ``t_bin``."""
        old = t_bin - REPORT_KEEP_S
        for store in (self.archive, self.measured):
            if store and min(k[0] for k in store) < old:
                for key in [k for k in store if k[0] < old]:
                    del store[key]

    def bound(self) -> AdaptiveBound:
        """The adaptive bound of the model in use (see :mod:`.conformal`)."""
        assert self.model is not None
        if self._bound is None or self._bound[0] is not self.model:
            self._bound = (self.model, AdaptiveBound(self.model))
        return self._bound[1]

    def _forecast(self, live: list[Any], t_bin: float) -> dict[str, tuple[str, Any, Any]]:
        assert self.model is not None
        out = {}
        bound = self.bound()
        for kd in live:
            q = bound.offsets(kd.kind)
            mean, upper = self.model.predict(kd, q=q)
            s = self.model.kinds[kd.kind].scale(kd.X)
            for i, z in enumerate(kd.zones.tolist()):
                out[z] = (kd.kind, mean[i], upper[i])
                for j, h in enumerate(kd.horizons_min):
                    target = t_bin + h * 60.0
                    self._pending.setdefault((z, target), []).append(
                        (kd.kind, j, h, float(mean[i, j]), float(upper[i, j]), float(s[i]),
                         float(q[j]))
                    )  # fmt: skip
                    if h == self.archive_horizon_min:
                        self.archive[(target, z)] = (float(mean[i, j]), float(upper[i, j]))
        return out

    def _score(self, live: list[Any]) -> None:
        """Live error of every forecast whose target minute is this one; the
        adaptive bound steps once per kind and horizon on this minute's scores."""
        fed: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        for kd in live:
            for z, temp, tt in zip(kd.zones.tolist(), kd.temp, kd.times, strict=True):
                if self.archive_horizon_min in kd.horizons_min:
                    self.measured[(float(tt), z)] = float(temp)
                for kind, j, h, mean, upper, s, q in self._pending.pop((z, float(tt)), []):
                    self.errors.add(kind, h, temp, mean)
                    if h == self.archive_horizon_min:
                        self.score.setdefault(kind, Score()).add(temp, mean, upper)
                    scores, used = fed.setdefault((kind, j), ([], []))
                    scores.append((float(temp) - mean) / s)
                    used.append(q)
        if fed and self.model is not None:
            bound = self.bound()
            for (kind, j), (scores, used) in fed.items():
                bound.observe(kind, j, scores, used)
        if self.bins.t:
            now = float(self.bins.t[-1])
            for key in [k for k in self._pending if k[1] < now]:  # targets that never came
                del self._pending[key]

    def scores(self) -> dict[str, dict[str, float]]:
        """Per kind: MAE (°C) and upper-bound coverage of the scored report-horizon
        forecasts, against the measured minute means they forecast."""
        return score_table(self.score, self.archive_horizon_min)

    def _trust_notices(self, t: float, ok: bool, reasons: list[str], n: int) -> list[Notice]:
        if reasons and reasons[0].startswith("recovering:"):
            return []  # still the same episode: its alarm stands, its clear is not due
        if ok and n == 0:
            return []  # nothing forecast yet (no zone's inputs in): nothing to say
        kinds = frozenset(r.split(":")[0] for r in reasons)
        out: list[Notice] = []
        # one alarm per episode, and another only for a kind of reason the episode
        # has not raised yet (reasons coming and going inside it are not news)
        if not ok and (self._trusted is not False or not kinds <= self._reason_kinds):
            more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
            fallback = "the physics prior's" if self.prior is not None else "conservative"
            msg = f"thermal model not trusted, {fallback} headroom in use: "
            msg += "; ".join(reasons[:3]) + more
            out.append(Notice(t, "alarm", msg, 700, {"reasons": reasons}))
        elif ok and self._trusted is False:
            out.append(Notice(t, "clear", "thermal model trusted again", 300))
        elif ok and self._trusted is None:
            out.append(Notice(t, "info", f"thermal model {self.version} forecasting {n} zones"))
        self._trusted = ok
        self._reason_kinds = self._reason_kinds | kinds if not ok else frozenset()
        return out

    def _per_load(
        self,
        zones: Mapping[str, Headroom],
        trusted: bool,
        sources: Mapping[str, str] | None = None,
    ) -> dict[str, LoadHeadroom]:
        """Per load: its zone's headroom (its share of a CDU's), its loop's; ``sources``
        (zone -> learned | prior) says which forecast gave its zone's."""
        out = {}
        for load, (zone, loop, share) in self._loads.items():
            hz, hl = zones.get(zone), zones.get(loop)
            if hz is None:
                continue  # no valid forecast of its zone this minute: the planner gets none
            ttl = min(hz.time_to_limit_min, hl.time_to_limit_min if hl else math.inf)
            source = (sources or {}).get(zone, "learned")
            out[load] = LoadHeadroom(
                hz.extra_kw * share, hl.extra_kw if hl else math.nan, ttl,
                trusted and source == "learned", source,
            )  # fmt: skip
        return out

    # -- the physics prior: before a learned model, and in its place when untrusted
    def _prior_step(
        self, rows: list[Any], t_bin: float
    ) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
        """Score the prior's earlier forecasts on this minute, then forecast from it.

        Every minute, whoever forecasts: its margin is measured on its own live
        errors, so it is calibrated on this site the moment it is needed again."""
        if self.prior is None:
            return {}
        for kd in rows:  # what reports score the shown forecasts against, with or without a model
            for z, temp in zip(kd.zones.tolist(), kd.temp, strict=True):
                self.measured[(t_bin, z)] = float(temp)
        self.prior.observe(rows, t_bin)
        return self.prior.forecast(rows, t_bin)

    def _archive(
        self, forecasts: Mapping[str, tuple[str, Any, Any]], rows: list[Any], t_bin: float
    ) -> None:
        """Keep the report horizon's forecasts (mean, upper) of ``forecasts``."""
        h = self.archive_horizon_min
        if not rows or h not in rows[0].horizons_min:
            return
        j = list(rows[0].horizons_min).index(h)
        for z, (_kind, mean, upper) in forecasts.items():
            self.archive[(t_bin + h * 60.0, z)] = (float(mean[j]), float(upper[j]))

    def _prior_update(
        self,
        t: float,
        t_bin: float,
        rows: list[Any],
        forecasts: dict[str, tuple[str, np.ndarray, np.ndarray]],
        notices: list[Notice],
    ) -> ForecastUpdate | None:
        """No learned model yet: the physics prior forecasts (once the minute
        bins hold a feature window, ~22 minutes after the start)."""
        assert self.prior is not None
        if not forecasts:
            return None if not notices else ForecastUpdate(t, False, [], {}, {}, {}, notices)
        zones = self.prior.headroom(rows, margin_k=self.margin_k)
        self._archive(forecasts, rows, t_bin)
        self.prior_made = {k for k in self.prior_made if k > t_bin - REPORT_KEEP_S}
        self.prior_made.add(t_bin + self.archive_horizon_min * 60.0)
        if self.first_forecast_t is None:
            self.first_forecast_t = t_bin
            notices.append(
                Notice(
                    t, "info",
                    f"no learned thermal model yet: the {PRIOR_SOURCE} forecasts "
                    f"{len(forecasts)} zones (conservative headroom)", 300,
                    {"source": "prior"},
                )
            )  # fmt: skip
        reasons = ["no learned model yet: physics prior"]
        loads = self._per_load(zones, False, dict.fromkeys(zones, "prior"))
        return ForecastUpdate(t, False, reasons, zones, loads, forecasts, notices, PRIOR_SOURCE)

    def _with_prior(
        self,
        ok: bool,
        rows: list[Any],
        zones: dict[str, Headroom],
        forecasts: dict[str, tuple[str, Any, Any]],
        prior_fc: Mapping[str, tuple[str, Any, Any]],
        t_bin: float,
    ) -> tuple[dict[str, Headroom], dict[str, tuple[str, Any, Any]], dict[str, str]]:
        """The learned model's headroom and forecasts, with the prior where the
        learned model cannot be relied on: ``(zones, forecasts, zone -> source)``.

        * **Not trusted** (out of its training range, stale, live error grown):
          the prior's headroom and forecasts for every zone. Doubling the
          offset of a model that extrapolates is not a bound: out of range its
          trees run flat while the k-NN scale explodes, so its doubled bound
          swings between absurd (a tank at 170 °C: no headroom at all) and
          untouched (the full nameplate); the prior's bound is physics with a
          margin measured on this site's own live errors, valid at any input.
          Without a prior (``prior=False``) the conservative fallback stands.
        * **Trusted**: the learned model's, plus the prior's for zones of a
          kind the learned model has no regressor for (too few rows of it).

        Either way no upper bound passes the zone's physical cap (trip +
        overshoot, :mod:`.prior`)."""
        if self.first_forecast_t is None:
            self.first_forecast_t = t_bin
        sources = dict.fromkeys(zones, "learned")
        if self.prior is None:
            return zones, forecasts, sources
        cap = {z: p.cap_c for z, p in self.prior.physics.items()}
        for z, (kind, mean, upper) in list(forecasts.items()):
            capped = np.minimum(upper, cap[z])
            forecasts[z] = (kind, np.minimum(mean, capped), capped)
        if ok:
            missing = [kd for kd in rows if self.model is None or kd.kind not in self.model.kinds]
        else:
            missing = rows
        if missing:
            zones = {**zones, **self.prior.headroom(missing, margin_k=self.margin_k)}
            names = {z for kd in missing for z in kd.zones.tolist()}
            forecasts = {**forecasts, **{z: f for z, f in prior_fc.items() if z in names}}
            sources.update(dict.fromkeys(names, "prior"))
        if ok and self.model is not None:
            zones = physics_checked(zones, self.prior, rows, self.model.kinds, self.margin_k)
        self._archive(forecasts, rows, t_bin)
        return zones, forecasts, sources

    def _handover_notice(self, t: float, t_bin: float, n: int) -> list[Notice]:
        """The info notice of a learned model taking over from the physics prior."""
        if self._handover is None:
            return []
        was, self._handover = self._handover, None
        self.handover_t = t_bin
        return [
            Notice(
                t, "info",
                f"forecast hand-over: {self.source} takes over {n} zones from the {was}",
                300, {"from": "prior", "to": self.source, "version": self.version},
            )
        ]  # fmt: skip
