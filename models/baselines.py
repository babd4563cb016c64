"""Baselines the learned model must beat, fitted on the same training rows.

* **Persistence** — the temperature ``h`` minutes ahead equals now (change 0).
* **First-order RC**, one per zone: ``dT/dt = a * P - b * (T - T_ref) + c`` (the
  lumped ``(P - UA (T - T_supply)) / C`` with ``a = 1/C``, ``b = UA/C``, and
  ``c`` the heat gains and losses no sensor sees), where ``T_ref`` is the loop
  supply for a tank or CDU and ambient for a loop. ``a``, ``b`` and ``c`` are
  fitted by least squares on the training rows (``b >= 0``: a negative
  restoring term would make the forecast run away, so the fit is redone
  without it), with the slope taken as the first horizon's change over its
  length (a forward difference over 5 minutes: 1-minute differences of
  0.1 °C-quantised sensors are mostly noise). Prediction integrates ``h``
  minutes at constant inputs (closed form). Its heat headroom
  (:meth:`RCBaseline.headroom`) is closed-form too: the forecast is linear in
  the power, so the largest power whose forecast stays under the limit at
  every horizon is one division per horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .dataset import KindData

__all__ = ["RCBaseline", "persistence"]

if TYPE_CHECKING:
    from .headroom import Headroom


def persistence(rows: KindData) -> np.ndarray:
    """Predicted temperatures (n, horizons): now, at every horizon."""
    return np.repeat(rows.temp[:, None], len(rows.horizons_min), axis=1)


def _ref_feature(kind: str) -> str:
    return "temp_minus_ambient" if kind == "loop" else "temp_minus_supply"


@dataclass
class RCBaseline:
    """Per-zone first-order RC fits: ``params[kind][zone] = (a, b, c)`` per minute."""

    params: dict[str, dict[str, tuple[float, float, float]]]

    @classmethod
    def fit(cls, dataset: object) -> RCBaseline:
        params: dict[str, dict[str, tuple[float, float, float]]] = {}
        for rows in dataset:  # type: ignore[attr-defined]
            h0 = float(rows.horizons_min[0])
            p = rows.feature("power_kw")
            dx = rows.feature(_ref_feature(rows.kind))
            slope = rows.y[:, 0] / h0  # K per minute
            out = {}
            for z in dict.fromkeys(rows.zones.tolist()):
                m = (rows.zones == z) & np.isfinite(slope)
                if m.sum() < 3:
                    out[z] = (0.0, 0.0, 0.0)
                    continue
                one = np.ones(int(m.sum()))
                coef, *_ = np.linalg.lstsq(
                    np.column_stack([p[m], -dx[m], one]), slope[m], rcond=None
                )
                if coef[1] <= 0.0:  # no restoring term: refit without it (never unstable)
                    c2, *_ = np.linalg.lstsq(np.column_stack([p[m], one]), slope[m], rcond=None)
                    coef = np.array([c2[0], 0.0, c2[1]])
                out[z] = (float(coef[0]), float(coef[1]), float(coef[2]))
            params[rows.kind] = out
        return cls(params)

    def predict(self, rows: KindData) -> np.ndarray:
        """Predicted temperatures (n, horizons) for the rows' zones."""
        a, b, c = self._abc(rows)
        r0 = a * rows.feature("power_kw") - b * rows.feature(_ref_feature(rows.kind)) + c
        out = np.empty((len(rows), len(rows.horizons_min)))
        for j, h in enumerate(rows.horizons_min):
            # integral of exp(-b t) over [0, h]; -> h as b -> 0
            with np.errstate(invalid="ignore", divide="ignore"):
                gain = np.where(b > 1e-12, -np.expm1(-b * h) / np.where(b > 1e-12, b, 1.0), h)
            out[:, j] = rows.temp + r0 * gain
        return out

    def _abc(self, rows: KindData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        par = self.params.get(rows.kind, {})
        abc = np.array([par.get(z, (0.0, 0.0, 0.0)) for z in rows.zones.tolist()]).reshape(-1, 3)
        return abc[:, 0], abc[:, 1], abc[:, 2]

    def headroom(
        self,
        rows: KindData,
        alarm_c: np.ndarray,
        *,
        margin_k: float,
        horizons: tuple[int, ...] | None = None,
        max_load_frac: float = 1.0,
    ) -> dict[str, Headroom]:
        """Extra kW per zone (one row each) keeping the RC forecast under
        ``alarm_c - margin_k`` at every horizon; capped at the nameplate room.

        The forecast ``T + (a P - b dx + c) g(h)`` is linear in ``P``: the
        capacity is ``min_h ((limit - T) / g(h) + b dx - c) / a``. A zone whose
        fit found no effect of power (``a <= 0``) is limited by its nameplate
        alone, if it is under its limit now."""
        from .headroom import Headroom, time_to_limit

        a, b, c = self._abc(rows)
        hs = tuple(rows.horizons_min) if horizons is None else horizons
        limit = np.asarray(alarm_c, float) - margin_k
        temp, p_now = rows.temp, rows.feature("power_kw")
        dx = rows.feature(_ref_feature(rows.kind))
        room = np.maximum(max_load_frac * rows.rated_kw - p_now, 0.0)
        cap = np.full(len(rows), np.inf)
        path = np.empty((len(rows), len(hs)))
        for j, h in enumerate(hs):
            with np.errstate(invalid="ignore", divide="ignore"):
                g = np.where(b > 1e-12, -np.expm1(-b * h) / np.where(b > 1e-12, b, 1.0), h)
                p_max = ((limit - temp) / g + b * dx - c) / np.where(a > 1e-12, a, 1.0)
            cap = np.minimum(cap, np.where(a > 1e-12, p_max, np.inf))
            path[:, j] = temp + (a * p_now - b * dx + c) * g
        over_now = (path.max(axis=1) > limit) | (temp >= limit)
        extra = np.where(over_now, 0.0, np.clip(cap - p_now, 0.0, room))
        ttl = time_to_limit(temp, path, hs, limit)
        return {
            str(z): Headroom(float(extra[i]), float(ttl[i]), float(limit[i]), float(path[i].max()))
            for i, z in enumerate(rows.zones)
        }
