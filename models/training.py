"""Fit a model on a dataset, measure it on a held-out tail, register it, maybe promote it.

:func:`fit_and_register` is the learning half of ``thermogate train`` and of the
controller's scheduled retraining (which read the dataset from the historian:
``controller/retrain.py``): fit a :class:`~thermogate.models.forecast.ThermalModel`
on the first 80 % of the rows, measure it (and the persistence/RC baselines) on
the last 20 %, store it in the :class:`~thermogate.models.registry.Registry` and
promote it only if it is not worse than the promoted model on those rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.plc.errors import ThermogateError

from .baselines import RCBaseline
from .dataset import Dataset
from .forecast import ThermalModel, evaluate
from .registry import Registry, pooled_mae

__all__ = ["HOLDOUT_FRAC", "TrainOutcome", "fit_and_register"]

HOLDOUT_FRAC = 0.2


@dataclass(frozen=True)
class TrainOutcome:
    """What one training did: the version stored and whether it is now the one in use."""

    version: int
    promoted: bool
    reason: str  # the registry's decision, e.g. "15-min pooled MAE 0.1 >= 0.1 °C of version 1"
    window: tuple[float, float]  # (t0, t_split): the data time trained on
    metrics: dict[str, Any]  # as stored in the registry: per-kind MAE/coverage, pooled MAE, ...
    train_s: float
    #: the model trained; None in an outcome that came back from a training
    #: process (``RetrainScheduler``): it stays in the registry as ``version``,
    #: loaded from there where it is used (1.6 MB unpickled on the receiving
    #: thread held the scan loop's GIL for 15-90 ms, promoted or not)
    model: ThermalModel | None


def fit_and_register(
    ds: Dataset,
    db: Path,
    *,
    t_start: float,
    by: str,
    progress: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Fit on the first rows of ``ds``, evaluate on the last ``HOLDOUT_FRAC``,
    store the model in ``db``'s registry and promote it if it is not worse.

    ``t_start`` is the data time the rows start at (recorded as the training
    window), ``by`` is recorded as the creator and as who decided the
    promotion. Raises ``ThermogateError`` naming ``db`` when the rows cannot
    make a model.
    """
    say = progress or (lambda _msg: None)
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
