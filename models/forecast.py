"""The learned thermal forecast: mean change per horizon plus a calibrated upper bound.

Per zone kind (tank, loop, CDU) and horizon, one ``HistGradientBoostingRegressor``
shared by all zones of the kind predicts the temperature *change*; the
forecast is ``temp + change``.

Fitting, per kind:

1. **Split in time.** The last ``calib_frac`` (20 %) of the training window is
   held out for calibration; the regressors are fitted on the first 80 %.
2. **Shrink toward persistence.** On the held-out rows the prediction is
   ``w * change`` with ``w`` from {0, 0.25, 0.5, 0.75, 1} minimising the MAE,
   per horizon: where the regressor does not beat persistence on unseen data
   (a loop with two zones and a few hours of history), it is not trusted.
3. **Split-conformal upper bound, widened where data is thin.** Each row's
   scale is ``s(x) = max(1, d(x) / d_ref)`` where ``d`` is the mean distance to
   the ``k`` nearest fitting rows in standardised feature space and ``d_ref``
   the median of the same distance among the fitting rows themselves. The
   bound's offset is the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile
   ``q`` of the normalised signed residuals ``(y - w * change) / s(x)`` on the
   held-out rows; ``upper = mean + max(q, 0) * s(x)``.
4. **No refit.** The regressors fitted on the first 80 % are the ones used:
   the conformal offset is only valid for the model its residuals were
   measured on (and training takes half the time). The feature ranges
   (``ood``) span the whole window.

At run time the offset moves: :class:`~.conformal.AdaptiveBound` starts at
``q`` and tracks the ``1 - alpha`` quantile of the live normalised residuals
(``predict(rows, q=...)`` takes its offsets); :func:`evaluate` reports both
bounds, the adaptive one replayed with each actual fed only once it is known
(:func:`adaptive_offsets`).

``ood(rows)`` flags rows with any feature outside its training range by more
than 10 % of that range's span; the time-of-day features (``OOD_EXEMPT``) are
not checked, since a short history covers only part of the day.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.neighbors import NearestNeighbors

from .baselines import RCBaseline, persistence
from .conformal import DEFAULT_LR, AdaptiveBound
from .dataset import Dataset, KindData
from .scoring import abs_errors, coverage, mae
from .trees import CompiledForest

__all__ = ["HGB_PARAMS", "KindModel", "ThermalModel", "adaptive_offsets", "evaluate"]

#: chosen on the 10-day ``thermogate bench forecast`` study (train 7 days, test 3):
#: tank 15-min MAE 0.060 °C with 100 iterations/depth 3/leaf 50, 0.051 with
#: 300/depth 6/leaf 20, 0.049 with these; full-site headroom 6.5, 12.6 and 6.5 ms
#: (the trees are evaluated for every candidate load: their size is the cost)
HGB_PARAMS: dict[str, object] = {
    "max_iter": 150,
    "learning_rate": 0.15,
    "max_depth": 5,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "random_state": 0,
}
#: for a kind with fewer fitting rows than ``SMALL_ROWS`` (a few hours of history,
#: or a site's two loops): a smaller model, as the larger one overfits them (8 h
#: demo run, loops: 0.0162 °C at 15 min against persistence 0.0133; this: 0.0135)
HGB_PARAMS_SMALL: dict[str, object] = {
    "max_iter": 100,
    "learning_rate": 0.05,
    "max_depth": 3,
    "min_samples_leaf": 50,
    "l2_regularization": 1.0,
    "random_state": 0,
}
SMALL_ROWS = 20_000
#: one point below the 95 % asked: split-conformal coverage holds for exchangeable
#: data, and the days a model forecasts are warmer or more fouled than those it
#: was calibrated on (measured: alpha 0.05 gave 94.4 % on the CDUs, 0.04 gives 95.2 %)
DEFAULT_ALPHA = 0.04
SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_KNN_ROWS = 5000  # neighbours searched among at most this many training rows
MAX_FIT_ROWS = 60_000  # rows per kind the regressors are fitted on (a stride beyond)
OOD_MARGIN = 0.10
#: features never checked by ``ood``: a short training history covers only part
#: of the day, so the time of day alone would flag every later hour as out of
#: distribution although the physics does not change with the clock
OOD_EXEMPT = ("tod_sin", "tod_cos")


@dataclass
class KindModel:
    """The fitted state of one zone kind."""

    kind: str
    feature_names: tuple[str, ...]
    horizons_min: tuple[int, ...]
    regressors: list[HistGradientBoostingRegressor]
    shrink: np.ndarray  # (H,) weight of the regressor vs persistence
    q: np.ndarray  # (H,) conformal offset of the normalised residuals
    mu: np.ndarray
    sd: np.ndarray
    nn: NearestNeighbors
    d_ref: float
    lo: np.ndarray
    hi: np.ndarray
    n_train: int
    n_calib: int
    calib_coverage: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: (H,) largest normalised calibration residual: caps the adaptive offset
    #: (:mod:`.conformal`); empty in a model pickled before it was stored
    calib_max: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def scale(self, X: np.ndarray) -> np.ndarray:
        """Residual scale per row: grows with the distance from the training data.

        The k-NN distances are computed in numpy for small batches (sklearn's
        query costs ~20 ms per call, a planning interval asks a few dozen rows).
        """
        if len(X) == 0:
            return np.zeros(0)
        Z = (X - self.mu) / self.sd
        fit = getattr(self.nn, "_fit_X", None)
        if fit is None or len(X) > 512:
            d, _ = self.nn.kneighbors(Z)
        else:
            d2 = (Z**2).sum(1)[:, None] + (fit**2).sum(1)[None, :] - 2.0 * Z @ fit.T
            k = self.nn.n_neighbors
            d = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, :k], 0.0))
        return np.maximum(1.0, d.mean(axis=1) / self.d_ref)

    def change(self, X: np.ndarray) -> np.ndarray:
        """Predicted temperature change (n, horizons)."""
        if len(X) == 0:
            return np.zeros((0, len(self.horizons_min)))
        forest = self.compiled()
        if forest is not None and len(X) <= 4096:
            return self.shrink * forest.predict(X)
        return np.column_stack(
            [w * r.predict(X) for w, r in zip(self.shrink, self.regressors, strict=True)]
        )

    def compiled(self) -> CompiledForest | None:
        """The regressors compiled once (checked against sklearn); None: use sklearn."""
        # False: compiling failed once (below), do not try again
        cache: CompiledForest | Literal[False] | None = self.__dict__.get("_compiled")
        if cache is None:
            try:
                cache = CompiledForest(self.regressors)
                probe = np.vstack([self.lo, self.hi, 0.5 * (self.lo + self.hi)])
                ref = np.column_stack([r.predict(probe) for r in self.regressors])
                if not np.allclose(cache.predict(probe), ref, atol=1e-9):
                    raise ValueError("compiled forest disagrees with sklearn")
            except (AttributeError, ValueError, KeyError, IndexError):
                cache = False  # a scikit-learn whose internals differ: stay correct, slower
            self.__dict__["_compiled"] = cache
        return cache or None

    def ood(self, X: np.ndarray) -> np.ndarray:
        tol = np.maximum(OOD_MARGIN * (self.hi - self.lo), 1e-9)
        out = (self.lo - tol > X) | (self.hi + tol < X)
        checked = np.array([f not in OOD_EXEMPT for f in self.feature_names], bool)
        return out[:, checked].any(axis=1)


def _knn(Xs: np.ndarray, k: int) -> tuple[NearestNeighbors, float]:
    rng = np.random.default_rng(0)
    if len(Xs) > MAX_KNN_ROWS:
        Xs = Xs[rng.choice(len(Xs), MAX_KNN_ROWS, replace=False)]
    k = max(1, min(k, len(Xs) - 1))
    nn = NearestNeighbors(n_neighbors=k).fit(Xs)
    d, _ = nn.kneighbors(Xs, n_neighbors=k + 1)  # the first neighbour is the row itself
    d_ref = float(np.median(d[:, 1:].mean(axis=1)))
    return nn, max(d_ref, 1e-9)


def _best_shrink(y: np.ndarray, raw: np.ndarray) -> float:
    """The factor of SHRINK_GRID whose shrunk predictions ``raw`` have the least MAE."""
    return min(SHRINK_GRID, key=lambda w: np.abs(y - w * raw).mean())


def _conformal_q(scores: np.ndarray, alpha: float) -> float:
    n = len(scores)
    if n == 0:
        return math.inf
    level = min(1.0, math.ceil((n + 1) * (1.0 - alpha)) / n)
    return float(np.quantile(scores, level, method="higher"))


class ThermalModel:
    """Forecasts of every zone kind; see the module docstring."""

    def __init__(
        self,
        *,
        alpha: float = DEFAULT_ALPHA,
        calib_frac: float = 0.2,
        k_neighbors: int = 10,
        hgb_params: dict[str, object] | None = None,
    ) -> None:
        self.alpha = alpha
        self.calib_frac = calib_frac
        self.k_neighbors = k_neighbors
        self.hgb_params = None if hgb_params is None else dict(hgb_params)
        self.kinds: dict[str, KindModel] = {}
        self.horizons_min: tuple[int, ...] = ()
        self.train_s = 0.0

    # ------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> ThermalModel:
        start = time.perf_counter()
        self.horizons_min = dataset.horizons_min
        self.kinds = {}
        for rows in dataset:
            if len(rows) >= 20:
                self.kinds[rows.kind] = self._fit_kind(rows)
        self.train_s = time.perf_counter() - start
        return self

    def _params(self, rows: int) -> dict[str, object]:
        """The given hyper-parameters, else a model sized to the data (see SMALL_ROWS)."""
        if self.hgb_params is not None:
            return self.hgb_params
        return HGB_PARAMS_SMALL if rows < SMALL_ROWS else HGB_PARAMS

    def _regressors(self, X: np.ndarray, y: np.ndarray) -> list[HistGradientBoostingRegressor]:
        return [
            HistGradientBoostingRegressor(**self._params(len(X))).fit(X, y[:, j])
            for j in range(y.shape[1])
        ]

    def _fit_kind(self, rows: KindData) -> KindModel:
        t = rows.times
        t_cut = t.min() + (1.0 - self.calib_frac) * (t.max() - t.min())
        hmax_s = max(rows.horizons_min) * 60.0
        fit_m = t + hmax_s < t_cut  # fitting rows never see a calibration-period temperature
        cal_m = t >= t_cut
        if fit_m.sum() < 10 or cal_m.sum() < 10:
            fit_m = cal_m = np.ones(len(t), bool)  # too little data to hold out: not calibrated
        X, y = rows.X, rows.y
        H = y.shape[1]

        # 1-3: fit on the first part, shrink and calibrate on the held-out part
        mu = X[fit_m].mean(axis=0)
        sd = X[fit_m].std(axis=0)
        sd[sd < 1e-9] = 1.0
        nn, d_ref = _knn((X[fit_m] - mu) / sd, self.k_neighbors)
        fit_idx = np.flatnonzero(fit_m)
        # consecutive minutes of one zone are nearly the same row: a stride keeps
        # training within its time budget at little cost in accuracy
        fit_idx = fit_idx[:: max(1, math.ceil(len(fit_idx) / MAX_FIT_ROWS))]
        regs = self._regressors(X[fit_idx], y[fit_idx])
        raw = np.column_stack([r.predict(X[cal_m]) for r in regs])
        yc = y[cal_m]
        shrink = np.array([_best_shrink(yc[:, j], raw[:, j]) for j in range(H)])
        part = KindModel(
            rows.kind, rows.feature_names, rows.horizons_min, regs, shrink, np.zeros(H),
            mu, sd, nn, d_ref, X.min(axis=0), X.max(axis=0), int(fit_m.sum()), int(cal_m.sum()),
        )  # fmt: skip
        s = part.scale(X[cal_m])
        resid = (yc - shrink * raw) / s[:, None]
        # signed: the bound is one-sided (an upper bound), so only under-forecasts count
        q = np.array([_conformal_q(resid[:, j], self.alpha) for j in range(H)])

        # no refit on the whole window: split-conformal coverage holds for the
        # regressors the residuals were measured on, not for a refitted one
        return KindModel(
            rows.kind,
            rows.feature_names,
            rows.horizons_min,
            regs,
            shrink,
            q,
            mu,
            sd,
            nn,
            d_ref,
            X.min(axis=0),
            X.max(axis=0),
            int(fit_m.sum()),
            int(cal_m.sum()),
            calib_coverage=(resid <= q).mean(axis=0),  # one-sided, on the held-out rows
            calib_max=resid.max(axis=0),
        )

    # ------------------------------------------------------------------
    def predict(
        self, rows: KindData, X: np.ndarray | None = None, q: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecast temperatures ``(mean, upper)``, each (n, horizons), for ``rows``.

        ``X`` replaces the rows' features (e.g. with extra load) while the
        current temperature stays ``rows.temp``; ``q`` (horizons,) replaces the
        calibrated offset of the bound (an :class:`~.conformal.AdaptiveBound`'s).
        """
        mean, s = self.mean_scale(rows, X)
        m = self.kinds[rows.kind]
        offset = m.q if q is None else np.asarray(q, dtype=np.float64)
        upper = mean + np.maximum(offset, 0.0)[None, :] * s[:, None]
        return mean, upper

    def mean_scale(
        self, rows: KindData, X: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The mean forecast (n, horizons) and the bound's scale ``s(x)`` (n,):
        ``upper = mean + max(q, 0) * s``, whichever offset ``q``."""
        m = self.kinds[rows.kind]
        if m.feature_names != rows.feature_names:
            raise ValueError(
                f"the model's {rows.kind} features differ from this version's; retrain it"
            )
        X = rows.X if X is None else X
        return rows.temp[:, None] + m.change(X), m.scale(X)

    def incompatible(self) -> list[str]:
        """Kinds whose features differ from what this version's dataset builds
        (a model stored before an upgrade that changed them): empty if usable."""
        from .dataset import FEATURES

        return [k for k, km in self.kinds.items() if km.feature_names != FEATURES.get(k)]

    def ood(self, rows: KindData, X: np.ndarray | None = None) -> np.ndarray:
        """Rows with a feature (not time of day) outside its training range by more
        than 10 % of its span."""
        return self.kinds[rows.kind].ood(rows.X if X is None else X)


def evaluate(
    model: ThermalModel, rc: RCBaseline | None, test: Dataset, *, lr: float = DEFAULT_LR
) -> dict[str, dict[str, dict[str, float]]]:
    """MAE/p95 (°C) per kind and horizon of the model and the baselines; the upper
    bound's coverage and mean width (upper - mean): the static split-conformal
    bound (``coverage``, ``bound_width_c``) and the adaptive one
    (``adaptive_coverage``, ``adaptive_bound_width_c``: :func:`adaptive_offsets`)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for rows in test:
        if rows.kind not in model.kinds or len(rows) == 0:
            continue
        truth = rows.temp[:, None] + rows.y
        mean, s = model.mean_scale(rows)
        upper = mean + np.maximum(model.kinds[rows.kind].q, 0.0)[None, :] * s[:, None]
        q_rows = adaptive_offsets(model, rows, mean, s, lr=lr)
        upper_a = mean + np.maximum(q_rows, 0.0) * s[:, None]
        res: dict[str, dict[str, float]] = {
            "mae_c": {},
            "p95_c": {},
            "persistence_mae_c": {},
            "rc_mae_c": {},
            "coverage": {},
            "bound_width_c": {},
            "adaptive_coverage": {},
            "adaptive_bound_width_c": {},
        }
        pers = persistence(rows)
        rcp = rc.predict(rows) if rc is not None else None
        for j, h in enumerate(rows.horizons_min):
            k = str(h)
            res["mae_c"][k] = mae(mean[:, j], truth[:, j])
            res["p95_c"][k] = float(np.percentile(abs_errors(mean[:, j], truth[:, j]), 95))
            res["persistence_mae_c"][k] = mae(pers[:, j], truth[:, j])
            if rcp is not None:
                res["rc_mae_c"][k] = mae(rcp[:, j], truth[:, j])
            res["coverage"][k] = coverage(upper[:, j], truth[:, j])
            res["bound_width_c"][k] = float((upper[:, j] - mean[:, j]).mean())
            res["adaptive_coverage"][k] = coverage(upper_a[:, j], truth[:, j])
            res["adaptive_bound_width_c"][k] = float((upper_a[:, j] - mean[:, j]).mean())
        out[rows.kind] = res
    return out


def adaptive_offsets(
    model: ThermalModel,
    rows: KindData,
    mean: np.ndarray,
    scale: np.ndarray,
    *,
    lr: float = DEFAULT_LR,
) -> np.ndarray:
    """The offset (n, horizons) an :class:`~.conformal.AdaptiveBound` started at
    the model's calibration would have given each row, replaying ``rows`` in
    time order as the live forecaster sees them.

    At each row time ``t``, first every score whose actual is known by ``t``
    (its row's ``t_row + h <= t``) is fed, the zones of one row time together
    and against the offset their forecasts were issued with; then the rows of
    ``t`` take the current offsets. No bound uses an actual after its own time.
    """
    bound = AdaptiveBound(model, lr=lr)
    kind = rows.kind
    H = len(rows.horizons_min)
    score = (rows.temp[:, None] + rows.y - mean) / scale[:, None]
    out = np.zeros((len(rows), H))
    order = np.argsort(rows.times, kind="stable")
    ts, first = np.unique(rows.times[order], return_index=True)
    groups = np.split(order, first[1:])
    lag_s = np.asarray(rows.horizons_min, dtype=np.float64) * 60.0
    fed = [0] * H  # per horizon: row times whose scores were fed
    for g, t in enumerate(ts.tolist()):
        for j in range(H):
            while fed[j] < g and ts[fed[j]] + lag_s[j] <= t:
                idx = groups[fed[j]]
                bound.observe(kind, j, score[idx, j], out[idx, j])
                fed[j] += 1
        out[groups[g]] = bound.offsets(kind)
    return out
