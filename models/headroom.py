"""Heat headroom: how many more kW each zone can take now, and how long until its limit.

For every zone (tank, CDU, loop) of the latest live row:

* ``extra_kw`` — the extra heat load that can be added *now* such that the
  upper-bound forecast stays below ``alarm - margin_k`` at every horizon.
* ``time_to_limit_min`` — at the current load, the first time the upper bound
  crosses ``alarm - margin_k``, linearly interpolated between ``(0, temp now)``
  and the horizons; ``0`` if the zone is already over, ``inf`` if not within
  the last horizon (30 min).
* ``limit_c`` — the limit the bound is held below (``alarm - margin_k``);
  ``bound_c`` — the highest upper bound over the horizons at the current load.

How
===
Only the power features of the row move (``power_kw`` and ``load_frac``, see
:meth:`KindData.with_power`); everything else is held, and the uncertainty
scale ``s(x)`` is held at the current row's value (one k-NN query per kind).

**Monotone by construction.** Boosted trees need not be monotone in power, so
the bound is replaced by its running maximum over the *absolute* power from 0
to the nameplate (``max_load_frac * rated_kw``): ``g(P) = max_{P' <= P} u(P')``.
The zone's capacity ``P_cap`` is the largest power with ``g <= limit`` — it does
not depend on the current load — and ``extra_kw = max(0, P_cap - P_now)``: more
load now never gives more headroom (for a fixed scale). ``P_cap`` is found on a
9-point grid of the power, then refined by 8 bisection steps inside the
first failing grid cell (to 0.05 % of the nameplate), every zone of a kind at
once per step.

**Fast.** ``HistGradientBoostingRegressor.predict`` costs ~10 ms per call
whatever the row count (thread start-up and validation), so the fitted trees
are compiled once into padded numpy arrays (:class:`CompiledForest`, checked
against sklearn's own ``predict`` at compile time) and evaluated level by level
for all rows and trees at once (:mod:`thermogate.models.trees`). Measured on
the demo site (14 tanks, 2 CDUs, 2 loops; 2 cores): a full-site
:func:`headroom` takes ~6-7 ms once the first call compiled the forests
(``thermogate bench forecast`` reports it as ``headroom_ms``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import Dataset, KindData
from .forecast import ThermalModel
from .trees import CompiledForest

__all__ = ["CompiledForest", "Headroom", "headroom", "latest_rows", "time_to_limit"]

GRID = 9
BISECT_STEPS = 8  # the cell is 1/8 of the nameplate: 8 halvings resolve 0.05 %


@dataclass(frozen=True)
class Headroom:
    extra_kw: float
    time_to_limit_min: float
    limit_c: float
    bound_c: float


# ----------------------------------------------------------------------------
# ----------------------------------------------------------------------------
def latest_rows(rows: Dataset | KindData | Iterable[KindData]) -> list[KindData]:
    """The latest row of every zone, one :class:`KindData` per kind."""
    kinds = [rows] if isinstance(rows, KindData) else list(rows)
    out = []
    for kd in kinds:
        if len(kd) == 0:
            continue
        order = np.lexsort((kd.times, kd.zones.astype(str)))
        z = kd.zones[order].astype(str)
        last = np.r_[z[1:] != z[:-1], True]
        out.append(kd.take(order[last]))
    return out


def time_to_limit(
    temp: np.ndarray, upper: np.ndarray, horizons: Sequence[float], limit: np.ndarray
) -> np.ndarray:
    """First crossing (min) of ``limit`` by the piecewise-linear path through
    ``(0, temp)`` and ``(h, upper[:, j])``; 0 if already over, inf if never."""
    t = np.concatenate([[0.0], np.asarray(horizons, float)])
    path = np.column_stack([temp, upper])
    out = np.full(len(temp), math.inf)
    for i in range(len(temp)):
        if path[i, 0] >= limit[i]:
            out[i] = 0.0
            continue
        for j in range(1, len(t)):
            a, b = path[i, j - 1], path[i, j]
            if b >= limit[i]:
                out[i] = t[j - 1] + (t[j] - t[j - 1]) * (limit[i] - a) / (b - a)
                break
    return out


def _kind_headroom(
    model: ThermalModel,
    rows: KindData,
    alarm: np.ndarray,
    *,
    margin_k: float,
    horizons: Sequence[int],
    bound_factor: float,
    max_load_frac: float,
    q: np.ndarray | None = None,
) -> dict[str, Headroom]:
    m = model.kinds[rows.kind]
    cols = [list(m.horizons_min).index(h) for h in horizons]
    n = len(rows)
    limit = alarm - margin_k
    temp = rows.temp
    p_now = rows.feature("power_kw")
    q_all = m.q if q is None else np.asarray(q, dtype=np.float64)
    offset = bound_factor * np.maximum(q_all[cols], 0.0)[None, :] * m.scale(rows.X)[:, None]

    def excess(power: np.ndarray) -> np.ndarray:
        """max over horizons of (upper bound - limit) with every row at ``power`` (n, k)."""
        k = power.shape[1]
        X = np.repeat(rows.X, k, axis=0)
        extra = (power - p_now[:, None]).ravel()
        X[:, rows.col("power_kw")] += extra
        X[:, rows.col("load_frac")] += extra / np.repeat(rows.rated_kw, k)
        up = np.repeat(temp, k)[:, None] + m.change(X)[:, cols] + np.repeat(offset, k, axis=0)
        return (up - np.repeat(limit, k)[:, None]).max(axis=1).reshape(n, k)

    # current load: bound and time to limit
    upper_now = temp[:, None] + m.change(rows.X)[:, cols] + offset
    now = (upper_now - limit[:, None]).max(axis=1)
    ttl = time_to_limit(temp, upper_now, horizons, limit)

    # capacity: grid of absolute power, running max, then bisection in the failing cell
    p_hi = np.maximum(max_load_frac * rows.rated_kw, p_now)
    grid = p_hi[:, None] * np.linspace(0.0, 1.0, GRID)[None, :]
    env = np.maximum.accumulate(excess(grid), axis=1)
    ok = env <= 0.0
    n_ok = np.where(ok[:, 0], np.argmin(ok, axis=1), 0)  # leading run of feasible points
    n_ok[ok.all(axis=1)] = GRID
    p_cap = np.where(n_ok > 0, grid[np.arange(n), np.maximum(n_ok - 1, 0)], 0.0)
    refine = (n_ok > 0) & (n_ok < GRID)
    if refine.any():
        lo = p_cap.copy()
        hi = grid[np.arange(n), np.minimum(n_ok, GRID - 1)]
        for _ in range(BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            good = excess(mid[:, None])[:, 0] <= 0.0
            lo = np.where(good, mid, lo)
            hi = np.where(good, hi, mid)
        p_cap = np.where(refine, lo, p_cap)
    extra = np.maximum(0.0, p_cap - p_now)
    extra[now > 0.0] = 0.0  # already over at the current load
    bound = upper_now.max(axis=1)
    return {
        str(z): Headroom(float(extra[i]), float(ttl[i]), float(limit[i]), float(bound[i]))
        for i, z in enumerate(rows.zones)
    }


def headroom(
    model: ThermalModel,
    rows: Dataset | KindData | Iterable[KindData],
    site: Any = None,
    *,
    margin_k: float = 2.0,
    horizons: Sequence[int] = (5, 15, 30),
    bound_factor: float = 1.0,
    max_load_frac: float = 1.0,
    kinds: Sequence[str] | None = None,
    offsets: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Headroom]:
    """Headroom of every zone in ``rows`` (its latest row) whose kind the model knows.

    ``site`` (optional) supplies the alarm limits by zone name (else the rows'
    own ``alarm_c``); ``bound_factor`` scales the bound's offset above the mean
    (2.0 = doubled: the conservative fallback); the capacity is capped at
    ``max_load_frac`` times the zone's nameplate. ``offsets`` (kind -> one per
    model horizon) replaces the calibrated offsets ``q`` of the kinds it names
    (an :class:`~.conformal.AdaptiveBound`'s ``all_offsets()``).
    """
    alarms: Mapping[str, float] = {}
    if site is not None:
        from .dataset import zone_specs

        alarms = {s.name: s.alarm_c for s in zone_specs(site)}
    out: dict[str, Headroom] = {}
    for kd in latest_rows(rows):
        if kd.kind not in model.kinds or (kinds is not None and kd.kind not in kinds):
            continue
        alarm = np.array([alarms.get(str(z), a) for z, a in zip(kd.zones, kd.alarm_c, strict=True)])
        out.update(
            _kind_headroom(
                model,
                kd,
                alarm,
                margin_k=margin_k,
                horizons=horizons,
                bound_factor=bound_factor,
                max_load_frac=max_load_frac,
                q=None if offsets is None else offsets.get(kd.kind),
            )
        )
    return out


def timed_headroom(model: ThermalModel, rows: Any, site: Any = None, **kw: Any) -> float:
    """Milliseconds of one :func:`headroom` call (after a warm-up call)."""
    headroom(model, rows, site, **kw)
    t = time.perf_counter()
    headroom(model, rows, site, **kw)
    return (time.perf_counter() - t) * 1e3
