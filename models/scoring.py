"""How a forecast is scored: mean absolute error of the mean, coverage of the bound.

One definition, used by evaluation, the registry's promotion decision, the
live forecaster's trust check and the reports, so a number called "MAE" or
"coverage" means the same everywhere: only pairs where both the forecast and
the actual value are finite count, and the bound "holds" when the actual
value is at or below it (the bound is one-sided: over-temperature is what
matters).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Score", "abs_errors", "bound_held", "coverage", "mae", "score_table"]


def abs_errors(predicted: ArrayLike, actual: ArrayLike) -> np.ndarray:
    """``|predicted - actual|`` over the pairs where both are finite (flattened)."""
    p = np.asarray(predicted, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    ok = np.isfinite(p) & np.isfinite(a)
    return np.abs(p[ok] - a[ok])


def bound_held(upper: ArrayLike, actual: ArrayLike) -> np.ndarray:
    """Per finite pair: did the actual value stay at or below the upper bound?"""
    u = np.asarray(upper, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    ok = np.isfinite(u) & np.isfinite(a)
    return a[ok] <= u[ok]


def mae(predicted: ArrayLike, actual: ArrayLike) -> float:
    """Mean absolute error over finite pairs; NaN when there is none."""
    err = abs_errors(predicted, actual)
    return float(err.mean()) if err.size else math.nan


def coverage(upper: ArrayLike, actual: ArrayLike) -> float:
    """Fraction of finite pairs the bound held for; NaN when there is none."""
    held = bound_held(upper, actual)
    return float(held.mean()) if held.size else math.nan


@dataclass
class Score:
    """A running MAE and coverage, fed pair by pair or array by array."""

    abs_sum: float = 0.0
    n_mae: int = 0
    held: int = 0
    n_coverage: int = 0

    def add(
        self,
        actual: ArrayLike,
        mean: ArrayLike | None = None,
        upper: ArrayLike | None = None,
    ) -> None:
        if mean is not None:
            err = abs_errors(mean, actual)
            self.abs_sum += float(err.sum())
            self.n_mae += int(err.size)
        if upper is not None:
            h = bound_held(upper, actual)
            self.held += int(h.sum())
            self.n_coverage += int(h.size)

    def merge(self, other: Score) -> Score:
        return Score(
            self.abs_sum + other.abs_sum,
            self.n_mae + other.n_mae,
            self.held + other.held,
            self.n_coverage + other.n_coverage,
        )

    @property
    def mae(self) -> float | None:
        return self.abs_sum / self.n_mae if self.n_mae else None

    @property
    def coverage(self) -> float | None:
        return self.held / self.n_coverage if self.n_coverage else None


def score_table(scores: Mapping[str, Score], horizon_min: int) -> dict[str, dict[str, float]]:
    """Per kind: MAE (°C), upper-bound coverage and samples of scored forecasts of
    ``horizon_min`` (kinds with none scored yet are left out)."""
    return {
        kind: {
            f"mae_{horizon_min}_c": round(sc.mae, 4),
            f"coverage_{horizon_min}": round(sc.coverage, 4),
            "samples": sc.n_mae,
        }
        for kind, sc in scores.items()
        if sc.mae is not None and sc.coverage is not None
    }
