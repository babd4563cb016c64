"""A physics prior: forecasts and heat headroom from the site description alone.

A site with no history has no learned model, yet its planner needs a bound on
how warm every zone may get. :class:`PhysicsPrior` gives one from the first
minutes of telemetry: per zone (tank, CDU, loop; named as
:func:`~thermogate.models.dataset.zone_specs` names them) a first-order RC
model whose parameters come from the site description, driven by the same
live rows the learned model reads (:data:`~thermogate.models.dataset.FEATURES`).
It never reads the plant; it needs no training.

The zone (:func:`zone_physics`)
===============================
``C dT/dt = P - Q``: ``P`` the zone's heat load (``power_kw``), ``Q`` the heat
its cooling removes, ``C`` the heat capacity of the zone's fluid alone (metal,
heat exchangers and chips add to it: leaving them out makes the zone heat
faster in the model than in the hall, the conservative side):

* **tank** — ``volume_l`` x the site's dielectric density x cp (the site's
  defaults: 0.8 kg/L x 2.1 kJ/(kg K) = 1.68 kJ/(L K)); ``UA`` = the tank HX's
  ``hx_ua_kw_k``; reference temperature the loop supply.
* **CDU** — ``tcs_volume_l`` x :data:`TCS_KJ_PER_L_K` (the TCS coolant taken as
  25 % propylene glycol, 1.02 kg/L x 3.95 kJ/(kg K)); ``UA`` = its
  ``hx_ua_kw_k``; reference the loop supply.
* **loop** — ``volume_l`` x the loop's own water/glycol density x cp (from its
  ``glycol_pct``: ~3.99 kJ/(L K) at 30 %); ``UA`` = the dry coolers' rated duty
  per kelvin of approach, ``sum(capacity_kw / design_approach_k)``;
  reference the ambient air.

What :meth:`PhysicsPrior.predict` does, per row and in order
==============================================================
1. **Heat removed now.** ``Q_now = P - C s`` with ``s`` the zone's slope over
   the last 5 minutes (``d_temp_5 / 5``): the heat balance closed on what
   the sensors show, so an unmodelled gain or loss is in ``Q_now``, not in the
   forecast's error.
2. **Mean: the cooling responds.** The zone relaxes toward
   ``T + (P + dP - Q_now) / UA`` with the time constant ``C / UA`` at the
   design ``UA`` (the regulation opens the valve or speeds the fans as the
   zone warms). At the current load this is the recent trend, damped. The
   planner's announced load (``plan_d*``) is not used: on the 24 h heatwave
   it raised the tanks' 15-min error from 0.53 to 0.87 °C (plans are revised)
   and, taken as certain in the bound, pinned idle tanks' bounds at the cap.
3. **Upper bound: the cooling responds only with the travel it has left.**
   The same relaxation at ``UA_now = Q_now / (T - T_ref)``, the conductance
   the actuators give *as they are now* (clipped to ``[UA_FLOOR_FRAC, 1] x
   UA``), raised toward the design ``UA`` by the share of travel its actuator
   has left (``1 - valve_pos``, for a loop ``1 - fan_speed``): a valve wide
   open or fans flat out add nothing, and every extra kW is then removed only
   by the zone getting warmer. Linear in the travel, which is less than an
   equal-percentage valve or a fan (airflow^0.6) gives for it. Frozen
   actuators alone (the first form of this bound) gave tanks held at their
   setpoint with a valve at 50-80 % a third less headroom than they had
   (``bench headroom``: median utilisation 0.78).
   Plus a margin per kind and horizon for what the RC does not know (the
   reference warming, a fouled HX, sensor noise): :data:`INITIAL_MARGIN_K`
   until the prior has scored :data:`MIN_MINUTES` minutes of its own
   forecasts, then the ``1 - alpha`` quantile of its own signed live errors
   (``actual - bare path``, the bound before its margin) over the last
   :data:`ERROR_WINDOW` of them — a margin that shrinks on a quiet site and
   grows when the bare path is beaten (a heatwave warming the reference),
   never below :data:`MARGIN_FLOOR_K`. A window of past errors lags a trend (its
   quantile is of the last two hours, the afternoon is hotter), so a
   tracked correction (:func:`~.conformal.track_step`, the learned model's
   adaptive bound) is added on top: it steps up by ``lr x initial margin x
   (1 - alpha)`` each minute the bounds *as issued* missed and back by
   ``... x alpha`` when they held, within ``[0, CAP_FACTOR x initial
   margin]`` (24 h heatwave, tanks' 15-min coverage: 94.1 % without it, 96.6 % with).
4. **Physical caps.** A zone cannot heat faster than its full nameplate plus
   the heat flowing in from a warmer reference through the design ``UA``
   with no cooling at all (``(P_max + UA max(0, T_ref - T)) / C``), and it
   cannot pass its trip limit by more than :data:`TRIP_OVERSHOOT_K`: the PLC's
   own interlock cuts a tank's or a rack row's power at its trip (a loop's
   water cannot get hotter than the hottest fluid heating it, so a loop's trip
   is the highest of its loads'). The upper bound is the lowest of the three,
   and the mean never exceeds it.

:meth:`PhysicsPrior.headroom` returns the same
:class:`~thermogate.models.headroom.Headroom` records as
:func:`~thermogate.models.headroom.headroom`: the extra kW each zone can take
now with its upper bound below ``alarm - margin_k`` at every horizon (the
bound is monotone in ``dP``: bisection), up to the zone's nameplate.

Pure: no clock, no I/O; the only state is the record of its own forecasts
awaiting their actuals and its live errors (:meth:`PhysicsPrior.observe`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from thermogate.plc.site import Site

from .conformal import CAP_FACTOR, DEFAULT_LR, TrackerConfig, TrackerState, track_step
from .dataset import KindData, zone_specs
from .headroom import Headroom, latest_rows, time_to_limit
from .scoring import Score, score_table

__all__ = [
    "INITIAL_MARGIN_K",
    "PRIOR_SOURCE",
    "TCS_KJ_PER_L_K",
    "TRIP_OVERSHOOT_K",
    "PhysicsPrior",
    "ZonePhysics",
    "zone_physics",
]

#: what a forecast made by the prior says about its source
PRIOR_SOURCE = "physics prior from the site description"
#: TCS coolant of a CDU (not in the site description): 25 % propylene glycol,
#: 1.02 kg/L x 3.95 kJ/(kg K); water (4.18) would make the zone slower, so the
#: glycol figure is the conservative one
TCS_KJ_PER_L_K = 1.02 * 3.95
#: K a zone may pass its trip limit by: the PLC trips the heat after a 3 s
#: debounce; the fluid then gains only what chips and metal still hold (a tank
#: at nameplate heats ~4.5 K/min, so 3 s is 0.2 K; a CDU row ~1 K)
TRIP_OVERSHOOT_K = 3.0
#: margin of the upper bound (K) at 5, 15 and 30 min before the prior has seen
#: its own errors: a loop supply warming 1 K per 10 min (a summer afternoon
#: with the fans flat out) passed on to the zones, plus 1 K of sensor noise
INITIAL_MARGIN_K = {5: 1.5, 15: 2.5, 30: 4.0}
#: the bound's target miss rate: one point below the 5 % asked, as the learned
#: model's (its errors are measured on the minutes before, and a heatwave's
#: afternoon is warmer than its morning: measured 94.5 % on the 24 h heatwave at 5 %)
DEFAULT_ALPHA = 0.04
#: the least margin (K): two steps of a 0.1 °C-resolution sensor
MARGIN_FLOOR_K = 0.2
#: minutes of scored forecasts (per kind and horizon) before the measured margin
#: replaces the initial one; the errors of one minute's zones move together,
#: so minutes are counted, not zones
MIN_MINUTES = 30
#: signed live errors kept per kind and horizon (~2 h of a 14-tank hall)
ERROR_WINDOW = 2000
#: today's conductance is taken as at least this share of the design UA:
#: a valve or fan at its minimum still moves some heat
UA_FLOOR_FRAC = 0.1
#: the least |T - T_ref| (K) ``UA_now`` is judged over (a smaller gap is noise)
GAP_FLOOR_K = 1.0
BISECT_STEPS = 24  # the nameplate / 2**24: far below a kW


@dataclass(frozen=True)
class ZonePhysics:
    """One zone's RC parameters, from the site description."""

    kind: str
    name: str
    heat_capacity_kj_k: float  # C: the zone's fluid
    ua_kw_k: float  # design conductance to its reference temperature
    rated_kw: float  # nameplate of the heat it carries
    alarm_c: float
    cap_c: float  # trip + TRIP_OVERSHOOT_K: no bound goes above it

    @property
    def tau_min(self) -> float:
        """Time constant at the design UA (minutes)."""
        return self.heat_capacity_kj_k / self.ua_kw_k / 60.0


def zone_physics(site: Site) -> dict[str, ZonePhysics]:
    """The RC parameters of every zone of ``site`` (see the module docstring)."""
    tanks = {t.name: t for t in site.tanks}
    cdus = {c.name: c for c in site.cdus}
    loops = {lp.name: lp for lp in site.loops}
    out: dict[str, ZonePhysics] = {}
    for s in zone_specs(site):
        if s.kind == "tank":
            t = tanks[s.name]
            c_kj_k, ua, trip = t.heat_capacity_kj_k, t.hx_ua_kw_k, t.limits.fluid_trip_c
        elif s.kind == "cdu":
            c = cdus[s.name]
            c_kj_k, ua, trip = c.tcs_volume_l * TCS_KJ_PER_L_K, c.hx_ua_kw_k, c.supply_trip_c
        else:
            lp = loops[s.name]
            c_kj_k = lp.volume_l * lp.density_kg_l * lp.cp_kj_kgk
            ua = sum(d.capacity_kw / d.design_approach_k for d in lp.dry_coolers)
            trips = [t.limits.fluid_trip_c for t in site.tanks if t.loop == lp.name]
            trips += [c.supply_trip_c for c in site.cdus if c.loop == lp.name]
            # a loop with no loads has nothing heating it above its own alarm
            trip = max(trips) if trips else lp.supply_alarm_c
        out[s.name] = ZonePhysics(
            s.kind, s.name, float(c_kj_k), float(ua), s.rated_kw, s.alarm_c,
            float(trip) + TRIP_OVERSHOOT_K,
        )  # fmt: skip
    return out


def _ref(rows: KindData) -> np.ndarray:
    """The temperature a zone's cooling works against: ambient for a loop, else its supply."""
    return rows.feature("ambient" if rows.kind == "loop" else "supply_temp")


def _spare_authority(rows: KindData) -> np.ndarray:
    """Share (0-1) of its travel the zone's cooling actuator has left: the valve
    of a tank or CDU, the dry coolers' fans of a loop; none when unknown."""
    pos = rows.feature("fan_speed" if rows.kind == "loop" else "valve_pos")
    return np.clip(1.0 - np.nan_to_num(pos, nan=100.0) / 100.0, 0.0, 1.0)


def _decay(ua: np.ndarray, c_min: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Share of its way a first-order zone has relaxed after ``h`` minutes:
    ``1 - exp(-h UA / C)`` (rows x horizons). The rise with ``net_kw`` of
    imbalance now is ``net / UA`` times it."""
    rate = (ua / c_min)[:, None]
    return -np.expm1(-rate * h[None, :])


@dataclass(frozen=True)
class _Terms:
    """One kind's rows with everything that does not depend on the extra load
    worked out: headroom's bisection evaluates the bound 26 times a minute on
    the same rows, and only the load changes (margin quantiles included)."""

    n: int
    h: np.ndarray  # horizons (min)
    temp: np.ndarray  # rows x 1
    power: np.ndarray
    c_min: np.ndarray  # kW min / K
    heat_now: np.ndarray  # C x slope: P - Q_now
    ua: np.ndarray
    decay: np.ndarray  # rows x horizons at the design UA
    ua_up: np.ndarray
    decay_up: np.ndarray  # ... at the conductance the actuators can still reach
    margin: np.ndarray  # 1 x horizons
    rated_kw: np.ndarray
    inflow: np.ndarray
    cap: np.ndarray  # rows x 1

    def _bound(self, extra_kw: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(net, bare, upper)`` with ``extra_kw`` more now (steps 1, 3 and 4)."""
        extra = np.broadcast_to(np.asarray(extra_kw, dtype=np.float64), (self.n,))
        net = self.heat_now + extra  # = P + dP - Q_now
        bare = self.temp + (net / self.ua_up)[:, None] * self.decay_up
        upper = bare + self.margin
        # 4. physical caps: nameplate (or more, if already above it) with no
        # cooling plus what a warmer reference pours in; the trip interlock
        p_max = np.maximum(self.rated_kw, self.power + extra)
        fastest = self.temp + ((p_max + self.inflow) / self.c_min)[:, None] * self.h[None, :]
        upper = np.minimum(upper, fastest + MARGIN_FLOOR_K)
        return net, bare, np.minimum(upper, self.cap)

    def upper(self, extra_kw: np.ndarray | float) -> np.ndarray:
        """The upper bound (rows x horizons) with ``extra_kw`` more now."""
        return self._bound(extra_kw)[2]

    def paths(self, extra_kw: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, bare, upper)``: see :meth:`PhysicsPrior.paths`."""
        net, bare, upper = self._bound(extra_kw)
        # 2. mean: the regulation responds (design UA)
        mean = self.temp + (net / self.ua)[:, None] * self.decay
        return np.minimum(mean, upper), bare, upper


class PhysicsPrior:
    """See the module docstring. ``alpha``: the upper bound's target miss rate."""

    def __init__(self, site: Site, *, alpha: float = DEFAULT_ALPHA) -> None:
        self.site = site
        self.physics = zone_physics(site)
        self.alpha = alpha
        self.source = PRIOR_SOURCE
        #: (kind, horizon) -> signed errors ``actual - bare path`` (the bound without margin)
        self.errors: dict[tuple[str, int], deque[float]] = {}
        self.minutes: dict[tuple[str, int], int] = {}  # scored minutes per (kind, horizon)
        #: per kind: the scored forecasts of ``report_horizon_min`` (MAE, coverage)
        self.score: dict[str, Score] = {}
        self.report_horizon_min = 15
        #: (kind, horizon) -> the tracked correction (K) added to the window's margin
        self.track: dict[tuple[str, int], TrackerState] = {}
        # (zone, target time) -> [(kind, horizon, bare path, mean, upper, correction)]
        self._pending: dict[
            tuple[str, float], list[tuple[str, int, float, float, float, float]]
        ] = {}

    @staticmethod
    def _initial(h: int) -> float:
        return INITIAL_MARGIN_K.get(int(h), INITIAL_MARGIN_K[30] * h / 30.0)

    def _tracker(self, h: int) -> TrackerConfig:
        scale = self._initial(h)
        return TrackerConfig(self.alpha, DEFAULT_LR * scale, CAP_FACTOR * scale)

    def correction(self, kind: str, h: int) -> float:
        """The tracked correction (K) of ``kind`` at horizon ``h`` (step 3)."""
        st = self.track.get((kind, int(h)))
        return st.offset if st is not None else 0.0

    # ------------------------------------------------------------------
    def margin(self, kind: str, horizons: Sequence[int]) -> np.ndarray:
        """The upper bound's margin (K) per horizon for ``kind`` (step 3)."""
        out = np.empty(len(horizons))
        for j, h in enumerate(horizons):
            initial = self._initial(h)
            errs = self.errors.get((kind, int(h)))
            if not errs:
                out[j] = initial
                continue
            e = np.asarray(errs)
            n = len(e)
            level = min(1.0, math.ceil((n + 1) * (1.0 - self.alpha)) / n)
            measured = max(MARGIN_FLOOR_K, float(np.quantile(e, level, method="higher")))
            seen = self.minutes.get((kind, int(h)), 0) >= MIN_MINUTES
            out[j] = (measured if seen else max(initial, measured)) + self.correction(kind, h)
        return out

    def _params(self, rows: KindData) -> tuple[np.ndarray, ...]:
        ph = [self.physics[str(z)] for z in rows.zones]
        c_min = np.array([p.heat_capacity_kj_k for p in ph]) / 60.0  # kW min / K
        ua = np.array([p.ua_kw_k for p in ph])
        cap = np.array([p.cap_c for p in ph])
        return c_min, ua, cap

    def paths(
        self, rows: KindData, extra_kw: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, bare, upper)`` temperatures (rows x horizons) with ``extra_kw``
        added to every row's load now; ``bare`` is the upper bound before its
        margin and caps (what the margin is measured against)."""
        if len(rows) == 0:
            z = np.zeros((0, len(rows.horizons_min)))
            return z, z, z
        return self._terms(rows).paths(extra_kw)

    def _terms(self, rows: KindData) -> _Terms:
        """Steps 1-4's parts that do not depend on the extra load (``len(rows) > 0``)."""
        h = np.asarray(rows.horizons_min, dtype=np.float64)
        c_min, ua, cap = self._params(rows)
        temp, power = rows.temp, rows.feature("power_kw")
        ref = _ref(rows)
        slope = rows.feature("d_temp_5") / 5.0  # K/min
        # 1. the heat balance closed on what the sensors show
        q_now = power - c_min * slope
        # 3. today's conductance (within [floor, design]), raised by the share of
        # travel the actuator has left: counted linearly, a fraction of what an
        # equal-percentage valve or a fan's airflow^0.6 gives for that travel
        gap = np.maximum(temp - ref, GAP_FLOOR_K)
        ua_now = np.clip(q_now / gap, UA_FLOOR_FRAC * ua, ua)
        ua_up = ua_now + (ua - ua_now) * _spare_authority(rows)
        return _Terms(
            n=len(rows),
            h=h,
            temp=temp[:, None],
            power=power,
            c_min=c_min,
            heat_now=c_min * slope,
            ua=ua,
            decay=_decay(ua, c_min, h),
            ua_up=ua_up,
            decay_up=_decay(ua_up, c_min, h),
            margin=self.margin(rows.kind, rows.horizons_min)[None, :],
            rated_kw=rows.rated_kw,
            # 4. what a warmer reference pours in with no cooling at all
            inflow=ua * np.maximum(ref - temp, 0.0),
            cap=cap[:, None],
        )

    def predict(
        self, rows: KindData, extra_kw: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecast temperatures ``(mean, upper)``, each (rows x horizons)."""
        mean, _, upper = self.paths(rows, extra_kw)
        return mean, upper

    # ------------------------------------------------------------------
    def forecast(
        self, rows: Iterable[KindData], t: float
    ) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
        """Forecast every zone of ``rows`` (made at data time ``t``) at its current
        load, and remember the forecasts to score them when their minute comes
        (:meth:`observe`). Returns zone -> (kind, mean, upper) like the learned
        model's forecasts."""
        out: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
        for kd in rows:
            mean, bare, upper = self.paths(kd)
            for i, z in enumerate(kd.zones.tolist()):
                out[z] = (kd.kind, mean[i], upper[i])
                for j, h in enumerate(kd.horizons_min):
                    self._pending.setdefault((z, t + h * 60.0), []).append(
                        (kd.kind, int(h), float(bare[i, j]), float(mean[i, j]),
                         float(upper[i, j]), self.correction(kd.kind, h))
                    )  # fmt: skip
        return out

    def observe(self, rows: Iterable[KindData], t: float) -> None:
        """Score the forecasts whose target is data time ``t`` against the rows'
        temperatures (the minute means measured then); forget older ones."""
        # (kind, horizon) -> this minute's (score, correction used): a score above
        # the correction its forecast went out with is a miss of the bound as issued
        held: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        for kd in rows:
            for z, temp in zip(kd.zones.tolist(), kd.temp, strict=True):
                for kind, h, bare, mean, upper, used in self._pending.pop((z, t), []):
                    key = (kind, h)
                    buf = self.errors.setdefault(key, deque(maxlen=ERROR_WINDOW))
                    buf.append(float(temp) - bare)
                    scores, corrections = held.setdefault(key, ([], []))
                    scores.append(float(temp) - upper + used)
                    corrections.append(used)
                    if h == self.report_horizon_min:
                        self.score.setdefault(kind, Score()).add(temp, mean, upper)
        for key, (scores, corrections) in held.items():
            self.minutes[key] = self.minutes.get(key, 0) + 1
            state = self.track.get(key, TrackerState(0.0))
            self.track[key] = track_step(self._tracker(key[1]), state, scores, corrections)
        for stale in [k for k in self._pending if k[1] <= t]:  # targets that never came
            del self._pending[stale]

    def replay(self, rows: Iterable[KindData]) -> None:
        """Forecast and score recorded rows minute by minute, as :meth:`forecast`
        and :meth:`observe` would have live: the margin is then measured on
        them (``thermogate forecast`` replays the last hours before it answers)."""
        kinds = [kd for kd in rows if len(kd)]
        times: np.ndarray | list[float] = (
            np.unique(np.concatenate([kd.times for kd in kinds])) if kinds else []
        )
        for t in times:
            now = [kd.take(kd.times == t) for kd in kinds]
            now = [kd for kd in now if len(kd)]
            self.observe(now, float(t))
            self.forecast(now, float(t))

    def scores(self) -> dict[str, dict[str, float]]:
        """Per kind: MAE (°C), upper-bound coverage and samples of the scored
        ``report_horizon_min`` forecasts."""
        return score_table(self.score, self.report_horizon_min)

    # ------------------------------------------------------------------
    def headroom(
        self,
        rows: Iterable[KindData],
        *,
        margin_k: float = 2.0,
        horizons: Sequence[int] = (5, 15, 30),
        max_load_frac: float = 1.0,
    ) -> dict[str, Headroom]:
        """Headroom of every zone of ``rows`` (its latest row): see the module docstring."""
        out: dict[str, Headroom] = {}
        for kd in latest_rows(list(rows)):
            cols = [list(kd.horizons_min).index(h) for h in horizons if h in kd.horizons_min]
            if cols:
                out.update(self._kind_headroom(kd, cols, margin_k, max_load_frac))
        return out

    def _kind_headroom(
        self, kd: KindData, cols: list[int], margin_k: float, max_load_frac: float
    ) -> dict[str, Headroom]:
        limit = np.array([self.physics[str(z)].alarm_c for z in kd.zones]) - margin_k

        terms = self._terms(kd)

        def excess(extra: np.ndarray) -> np.ndarray:
            """max over horizons of (upper bound - limit) with ``extra`` kW more now."""
            return (terms.upper(extra)[:, cols] - limit[:, None]).max(axis=1)

        upper_now = terms.upper(0.0)[:, cols]
        over_now = (upper_now - limit[:, None]).max(axis=1) > 0.0
        room = np.maximum(max_load_frac * kd.rated_kw - kd.feature("power_kw"), 0.0)
        lo, hi = np.zeros(len(kd)), room.copy()
        for _ in range(BISECT_STEPS):  # the bound is monotone in the extra load
            mid = 0.5 * (lo + hi)
            good = excess(mid) <= 0.0
            lo = np.where(good, mid, lo)
            hi = np.where(good, hi, mid)
        extra = np.where(excess(room) <= 0.0, room, lo)
        extra[over_now] = 0.0  # already over at the current load
        hs = [kd.horizons_min[c] for c in cols]
        ttl = time_to_limit(kd.temp, upper_now, hs, limit)
        return {
            str(z): Headroom(
                float(extra[i]), float(ttl[i]), float(limit[i]), float(upper_now[i].max())
            )
            for i, z in enumerate(kd.zones.tolist())
        }
