"""An upper bound that stays honest on weather the model was not calibrated on.

Split conformal (:mod:`.forecast`) fixes the bound's offset ``q`` once, from
held-out residuals of the training window. Its coverage holds for data
exchangeable with that window; a hotter week, a fouled exchanger or a new
load pattern is not, and the bound under-covers (measured: CDU 91-93 % on a
measured week it was not calibrated on, against 95 % asked).

:class:`AdaptiveBound` moves the offset online, from the live errors, by
**conformal quantile tracking** (Angelopoulos, Candès & Tibshirani 2023,
"Conformal PID control", the proportional part; the score-scale form of
Gibbs & Candès' adaptive conformal inference). One tracker per zone kind and
horizon; its state is the offset ``q`` of the normalised residual
``score = (actual - mean) / s(x)`` (the same score the calibration used, so
``upper = mean + q * s(x)`` as before).

What :func:`track_step` does with the scores that became known at one
instant (the zones of one kind whose ``h``-minute actual has just been
measured), in order:

* **Invalid scores** (NaN, inf: a gap, a bad sensor) are dropped; when none
  is left the state is returned unchanged — a NaN never reaches the offset.
* **Miss fraction** ``m``: the share of the scores above the offset *each
  forecast was issued with* (``used``; the current offset when not given).
  Only whether the bound held counts, not by how much: one wild sensor spike
  is one miss, whatever its size.
* **Step**: ``q += step * (m - alpha)`` — up by ``step * (1 - alpha)`` after
  a miss, down by ``step * alpha`` after a hit, so it settles where a
  fraction ``alpha`` of the forecasts miss.
* **Clamp** to ``[0, cap]``: never below the mean forecast (the one-sided
  bound of :mod:`.forecast` never was), never above ``cap`` (a multiple of
  the largest calibration score), so a sensor stuck high widens the bound to
  a known ceiling, not to 170 °C. Past the cap the trust check's live-error
  test is what must act.

Why it holds: without the clamps, ``q_T - q_0 = step * sum(m_t - alpha)``,
so over ``T`` steps ``|mean(m) - alpha| <= (cap + step) / (step * T)``
whatever the sequence of scores — including a shifted climate — and whatever
the delay between a forecast and its actual, because ``m`` is measured
against the offsets the forecasts were actually issued with (the realised
coverage of the bounds handed to the planner). The lower clamp only adds
coverage; the upper one is where the promise ends (see above).

Delayed feedback: a forecast for ``h`` minutes ahead is scored ``h`` minutes
later; the caller feeds each score only once its actual is known (the live
forecaster when the target minute closes, :func:`~.forecast.evaluate_adaptive`
by the target time), so a bound never uses a future actual. The price of
the delay is overshoot: the misses still in flight when the offset has
grown enough push it a little further (bounded by ``h * step``), which errs
wide, and hits bring it back at ``step * alpha`` a step.

Scale: ``step = lr * max(q0, STEP_FLOOR)`` with ``q0`` the calibration
offset, so every kind and horizon moves at the same pace relative to its own
residuals (a tank's 5-minute and a CDU's 30-minute scores differ tenfold).

Pure bookkeeping on floats: no clock, no I/O, a few microseconds a call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CAP_FACTOR",
    "DEFAULT_LR",
    "AdaptiveBound",
    "TrackerConfig",
    "TrackerState",
    "track_step",
]

#: step per instant as a fraction of the calibration offset: after a shift that
#: makes every forecast miss, the offset grows by ~5 % of its calibrated value a
#: minute (doubles in ~20 minutes); at rest a miss costs ``lr`` and a hit gives back
#: ``lr * alpha``. Chosen on the forecast bench (README, Benchmarks).
DEFAULT_LR = 0.05
#: the offset never exceeds this multiple of the largest calibration score
CAP_FACTOR = 3.0
#: a model pickled before ``calib_max`` was stored: the cap is this multiple of ``q``
CAP_FACTOR_Q = 6.0
#: floor of the step's scale (°C of normalised residual): a kind calibrated on a
#: quiet window with ``q`` ~ 0 must still be able to move
STEP_FLOOR = 0.01


@dataclass(frozen=True)
class TrackerConfig:
    """One kind and horizon's tracker: miss rate ``alpha`` aimed at, step and cap
    in normalised-residual units (°C at scale 1)."""

    alpha: float
    step: float
    cap: float

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not (math.isfinite(self.step) and self.step > 0.0):
            raise ValueError(f"step must be a positive finite number, got {self.step}")
        if not (math.isfinite(self.cap) and self.cap > 0.0):
            raise ValueError(f"cap must be a positive finite number, got {self.cap}")


@dataclass(frozen=True)
class TrackerState:
    offset: float  # the bound's current offset q (normalised residual)
    steps: int = 0  # instants that carried at least one valid score
    scores: int = 0  # valid scores seen
    misses: int = 0  # of them above the offset their forecast was issued with


def track_step(
    cfg: TrackerConfig, state: TrackerState, scores: ArrayLike, used: ArrayLike | None = None
) -> TrackerState:
    """One instant's scores (and the offsets their forecasts used); see the module docstring."""
    s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    u = np.broadcast_to(
        np.asarray(state.offset if used is None else used, dtype=np.float64), s.shape
    )
    ok = np.isfinite(s) & np.isfinite(u)
    n = int(ok.sum())
    if n == 0:
        return state
    missed = int((s[ok] > u[ok]).sum())
    q = state.offset + cfg.step * (missed / n - cfg.alpha)
    q = min(max(q, 0.0), cfg.cap)
    return replace(
        state,
        offset=q,
        steps=state.steps + 1,
        scores=state.scores + n,
        misses=state.misses + missed,
    )


class AdaptiveBound:
    """Per zone kind, one tracker per horizon, started at the model's calibration.

    ``observe(kind, j, scores, used)`` feeds the normalised residuals of horizon
    index ``j`` that became known at one instant; ``offsets(kind)`` is the
    offset per horizon to hand to :meth:`ThermalModel.predict` (``q=``) and
    :func:`~.headroom.headroom` (``offsets=``). A kind the model does not know
    is ignored.
    """

    def __init__(self, model: Any, *, lr: float = DEFAULT_LR, alpha: float | None = None) -> None:
        self.lr = lr
        self.alpha = float(model.alpha if alpha is None else alpha)
        self.cfg: dict[str, list[TrackerConfig]] = {}
        self.state: dict[str, list[TrackerState]] = {}
        for kind, km in model.kinds.items():
            self.cfg[kind], self.state[kind] = self._start(km)

    def _start(self, km: Any) -> tuple[list[TrackerConfig], list[TrackerState]]:
        q0 = np.asarray(km.q, dtype=np.float64)
        top = np.asarray(getattr(km, "calib_max", np.zeros(0)), dtype=np.float64)
        if top.shape == q0.shape and np.isfinite(top).all():
            cap = CAP_FACTOR * np.maximum(top, q0)
        else:  # pickled before calib_max existed
            cap = CAP_FACTOR_Q * q0
        cfgs, states = [], []
        for q, c in zip(q0.tolist(), cap.tolist(), strict=True):
            start = max(q, 0.0) if math.isfinite(q) else 0.0
            step = self.lr * max(start, STEP_FLOOR)
            cfgs.append(TrackerConfig(self.alpha, step, max(c, start, 10.0 * STEP_FLOOR)))
            states.append(TrackerState(start))
        return cfgs, states

    def kinds(self) -> list[str]:
        return list(self.state)

    def observe(self, kind: str, j: int, scores: ArrayLike, used: ArrayLike | None = None) -> None:
        """The scores of horizon index ``j`` whose actuals became known together."""
        states = self.state.get(kind)
        if states is None:
            return
        states[j] = track_step(self.cfg[kind][j], states[j], scores, used)

    def offsets(self, kind: str) -> np.ndarray:
        """The current offset per horizon (H,) of ``kind``."""
        return np.array([st.offset for st in self.state[kind]])

    def all_offsets(self) -> dict[str, np.ndarray]:
        return {k: self.offsets(k) for k in self.state}

    def miss_rate(self, kind: str) -> np.ndarray:
        """Share of the scores fed so far that missed, per horizon (NaN: none yet)."""
        return np.array(
            [st.misses / st.scores if st.scores else math.nan for st in self.state[kind]]
        )
