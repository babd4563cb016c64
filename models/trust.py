"""Knowing when not to trust the thermal model, and what to do instead.

:meth:`Trust.check` returns a :class:`TrustVerdict` that is not ``ok`` when

* **out of distribution** — any live row has a feature outside its training
  range by more than 10 % of the span (:meth:`ThermalModel.ood`);
* **stale** — the model was trained more than ``max_age_days`` (14) ago;
* **live error grows** — for a kind and horizon with at least ``min_errors``
  recorded live errors ``|actual - predicted|``, the rolling 95th percentile
  exceeds ``error_factor`` (1.5) times the calibration quantile (the model's
  conformal offset ``q``: the held-out 95 % quantile of the normalised
  residuals) and ``min_error_c`` (0.1 °C, a sensor's resolution: a model
  calibrated on a quiet week has a tiny ``q``, and errors below what a sensor
  can resolve say nothing about drift).

The verdict carries human-readable reasons so the caller can raise an alarm
and record them; :attr:`Trust.log` keeps the last ``LOG_KEEP`` untrusted verdicts. When not
trusted, :meth:`Trust.conservative_headroom` is the fallback: headroom with
the bound's offset doubled, and zero for zones within ``near_limit_k`` (5 K)
of their alarm limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .dataset import Dataset, KindData
from .forecast import OOD_EXEMPT, ThermalModel
from .headroom import Headroom, headroom, latest_rows

__all__ = ["LiveErrors", "Trust", "TrustVerdict"]

DAY_S = 86400.0


@dataclass
class TrustVerdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    ood_zones: list[str] = field(default_factory=list)


class LiveErrors:
    """Rolling record of ``|actual - predicted|`` per (kind, horizon) as actuals arrive."""

    def __init__(self, window: int = 500) -> None:
        self.window = window
        self.errors: dict[tuple[str, int], deque[float]] = {}

    def add(self, kind: str, horizon_min: int, actual: Any, predicted: Any) -> None:
        err = np.abs(np.atleast_1d(np.asarray(actual, float) - np.asarray(predicted, float)))
        buf = self.errors.setdefault((kind, int(horizon_min)), deque(maxlen=self.window))
        buf.extend(float(e) for e in err if np.isfinite(e))

    def items(self) -> Iterable[tuple[tuple[str, int], Sequence[float]]]:
        return self.errors.items()


#: untrusted verdicts :attr:`Trust.log` keeps (a day of minutes): a model untrusted
#: for months must not keep every minute's reasons
LOG_KEEP = 1440


class Trust:
    def __init__(
        self,
        model: ThermalModel,
        *,
        max_age_days: float = 14.0,
        error_factor: float = 1.5,
        min_errors: int = 30,
        min_error_c: float = 0.1,
        near_limit_k: float = 5.0,
    ) -> None:
        self.model = model
        self.max_age_days = max_age_days
        self.error_factor = error_factor
        self.min_errors = min_errors
        self.min_error_c = min_error_c
        self.near_limit_k = near_limit_k
        self.log: deque[tuple[float, list[str]]] = deque(maxlen=LOG_KEEP)

    def calibration_quantile(self, kind: str, horizon_min: int) -> float:
        km = self.model.kinds[kind]
        return float(max(km.q[list(km.horizons_min).index(horizon_min)], 1e-6))

    def check(
        self,
        rows: Dataset | KindData | Iterable[KindData],
        now_t: float,
        last_trained_t: float,
        live_errors: LiveErrors | Mapping[tuple[str, int], Sequence[float]] | None = None,
    ) -> TrustVerdict:
        reasons: list[str] = []
        ood_zones: list[str] = []
        for kd in latest_rows(rows):
            km = self.model.kinds.get(kd.kind)
            if km is None:
                reasons.append(f"no model for {kd.kind}")
                continue
            bad = self.model.ood(kd)
            for i in np.flatnonzero(bad):
                tol = 0.1 * (km.hi - km.lo)
                out = (kd.X[i] < km.lo - tol) | (kd.X[i] > km.hi + tol)
                feats = ", ".join(
                    f"{kd.feature_names[j]}={kd.X[i, j]:.4g} "
                    f"not in [{km.lo[j]:.4g}, {km.hi[j]:.4g}]"
                    for j in np.flatnonzero(out)
                    if kd.feature_names[j] not in OOD_EXEMPT  # name only what ood() judged
                )
                ood_zones.append(str(kd.zones[i]))
                reasons.append(f"out of distribution: {kd.kind} {kd.zones[i]} ({feats})")
        age_d = (now_t - last_trained_t) / DAY_S
        if age_d > self.max_age_days:
            reasons.append(f"stale model: trained {age_d:.1f} days ago (> {self.max_age_days:g})")
        if live_errors is not None:
            pairs = live_errors.items()
            for (kind, h), errs in pairs:
                if kind not in self.model.kinds or len(errs) < self.min_errors:
                    continue
                p95 = float(np.percentile(np.asarray(errs, float), 95))
                cal = self.calibration_quantile(kind, h)
                if p95 > max(self.error_factor * cal, self.min_error_c):
                    reasons.append(
                        f"live error grew: {kind} {h} min p95 {p95:.3g} °C "
                        f"> {self.error_factor:g} x calibration {cal:.3g} °C "
                        f"(and > {self.min_error_c:g} °C)"
                    )
        verdict = TrustVerdict(not reasons, reasons, ood_zones)
        if not verdict.ok:
            self.log.append((float(now_t), list(reasons)))
        return verdict

    def conservative_headroom(
        self,
        rows: Dataset | KindData | Iterable[KindData],
        site: Any = None,
        *,
        bound_factor: float = 2.0,
        **kw: Any,
    ) -> dict[str, Headroom]:
        """Fallback headroom: doubled bound offset; zero within ``near_limit_k`` of the alarm."""
        hr = headroom(self.model, rows, site, bound_factor=bound_factor, **kw)
        margin = kw.get("margin_k", 2.0)
        for kd in latest_rows(rows):
            for z, temp in zip(kd.zones, kd.temp, strict=True):
                h = hr.get(str(z))
                if h is not None and temp >= h.limit_c + margin - self.near_limit_k:
                    hr[str(z)] = replace(h, extra_kw=0.0)
        return hr
