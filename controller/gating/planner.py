"""The gating planner: what each tank and rack row may draw, and why.

It implements the core's planning seam (:class:`~thermogate.controller.core.Planner`,
:class:`~thermogate.controller.core.Explains`,
:class:`~thermogate.controller.core.BusyShares` and, with a known price ahead,
:class:`~thermogate.controller.core.PlanAhead`); protection's caps still
bound whatever it asks. Order of operations of one plan:

1. **room**: the IT power the grid allows, ``margin`` x the import limit in
   force (the site's, the grid's, a curtailment's) less the non-IT load
   (cooling, house) measured as import minus IT and smoothed; without a
   good meter, ``NON_IT_DEFAULT_FRAC`` of the IT rating;
2. **caps** per load: protection's headroom (interlocks, thermal limiter,
   breakers) and the rating; then the learned heat headroom: a load may
   grow by at most its forecast headroom (the model's conservative fallback
   when it is not trusted), and the loads of one loop share that loop's
   headroom;
3. **want** per load: a GPU load what its jobs need (``gpu_demand``; all of
   it without a scheduler in the loop); a mining tank the power where one
   more kW earns what it costs (``Tank.economic_power_kw``: underclocked
   miners are more efficient, so a dearer price asks less power rather than
   none), and nothing above its miners' breakeven at their best efficiency
   (with ``price_hysteresis`` so a price hovering there does not toggle it);
4. **allocate** the room by precedence, inference first, then training, then
   mining: a class gets what it wants within its caps while room is left,
   shared pro rata by want when not all of it fits, each load within its
   caps and what a capped load cannot take going to the others (not pro rata
   by the capped amounts: a thermal cap moves with the load's measured power,
   and the shares must not).

Every load's budget comes with the reason that bound it (``why``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from thermogate.plc.site import Site

from ..core import LoadInfo, SiteNow
from .placement import Placement

CLASS_PRECEDENCE = ("inference", "training", "mining")  # who gets the room first
NON_IT_DEFAULT_FRAC = 0.10  # cooling + house as a fraction of IT, before a meter says
NON_IT_SMOOTHING_S = 120.0  # time constant of the non-IT load estimate
ECONOMIC_PRICES_KEPT = 8  # prices whose miners' economic power is remembered


@dataclass(frozen=True)
class GatingConfig:
    margin: float = 0.95  # plan IT within this fraction of the import limit
    price_hysteresis: float = 0.05  # mining back on below (1 - h) x breakeven, off above (1 + h)


class GatingPlanner:
    """See the module docstring.

    ``gpu_demand(t)`` gives, per GPU load, the fraction of its GPUs its jobs
    need now (a scheduler's view); absent or unknown: all of them.
    """

    def __init__(
        self,
        site: Site,
        config: GatingConfig | None = None,
        gpu_demand: Callable[[float], Mapping[str, float]] | None = None,
        price_ahead: Callable[[float], float] | None = None,
    ) -> None:
        self.site = site
        self.config = config or GatingConfig()
        self.gpu_demand = gpu_demand
        #: the energy price at a future time where it is known (a day-ahead market)
        self.price_ahead = price_ahead
        self._last: dict[str, float] = {}
        self.breakeven = site.mining_breakeven()  # with its distinct set, below
        self._tanks = {t.name: t for t in site.tanks}
        self._mining_on = dict.fromkeys(self.breakeven, True)
        self._non_it_kw = NON_IT_DEFAULT_FRAC * site.it_rated_kw
        self._t_last = math.nan
        self._why: dict[str, str] = {}
        self._busy: dict[str, float] = {}
        self.room_kw = math.nan  # the IT room of the last plan (for the status)
        self.placement = Placement(site)
        self._gpu_load = {ld.name: ld for ld in self.placement.loads}  # by name, found once
        #: ``_economic_kw`` per (price, hashprice) and tank: a price holds for many
        #: scans (an hour of a market), and a large hall asks it of hundreds of tanks
        #: (the prices now and ahead: a few at a time, the oldest forgotten)
        self._economic_at: dict[tuple[float, float], dict[str, float]] = {}
        #: GPUs the cluster may keep busy under the last plan (jobs admitted within it)
        self.gpu_capacity = self.placement.gpus

    @property
    def breakeven(self) -> Mapping[str, float]:
        """Per mining tank, the energy price ($/MWh) above which it loses money
        (``Site.mining_breakeven``); read-only: set it whole."""
        return self._breakeven

    @breakeven.setter
    def breakeven(self, value: Mapping[str, float]) -> None:
        # The distinct breakevens are set with them, never apart: the plan ahead
        # tests each once (a hall's hundreds of tanks have a few miner models),
        # and a stale set would keep a tank's band that has moved.
        self._breakeven = MappingProxyType(dict(value))
        self._be_set = frozenset(self._breakeven.values())

    def why(self) -> Mapping[str, str]:
        return self._why

    def busy_shares(self) -> Mapping[str, float]:
        """Per GPU load, the busy fraction of its GPUs its last budget is for."""
        return self._busy

    @property
    def mining_on(self) -> Mapping[str, bool]:
        """Per mining tank: running (the price is below its breakeven, with hysteresis)."""
        return self._mining_on

    # -- the plan --------------------------------------------------------------

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]:
        self._observe_non_it(t, now)
        room = max(0.0, self.config.margin * now.grid_limit_kw - self._non_it_kw)
        self.room_kw = room
        caps, why = self._caps(loads, headroom)
        demand = self.gpu_demand(t) if self.gpu_demand is not None else {}
        spec = self._gpu_load
        want: dict[str, float] = {}
        busy: dict[str, float] = {}
        # a mining tank's want: its most profitable power at today's price, or
        # nothing (the price, its band and the economic powers found once a plan:
        # a large hall has hundreds of mining tanks)
        price = now.price_per_mwh
        if not math.isfinite(price):
            price = self.site.economics.energy_usd_per_mwh
        h = self.config.price_hysteresis
        mining_on, breakeven = self._mining_on, self._breakeven
        economic: dict[str, float] | None = None
        for ld in loads:
            name = ld.name
            if ld.workload_class == "mining":
                on = self._mining_band(mining_on[name], price, breakeven[name], h)
                mining_on[name] = on
                if on:
                    if economic is None:
                        economic = self._economic_table(price)
                    w = economic.get(name)
                    if w is None:
                        w = self._economic_kw(name, price)
                else:
                    w = 0.0
                want[name] = w
                if not w:
                    why[name] = "price above mining breakeven"
                elif w < ld.rated_kw - 1e-9:
                    why[name] = "energy price (most profitable miner power)"
                continue
            frac = demand.get(name, 1.0)
            frac = 1.0 if not math.isfinite(frac) else min(max(frac, 0.0), 1.0)
            want[name] = spec[name].kw_at(frac)  # its busy GPUs at full power
            busy[name] = frac
            if frac < 1.0:
                why.setdefault(name, "job demand")
        by_class = _by_class(loads)  # the same for both allocations below
        out, cut = _allocate(by_class, want, caps, room)
        for name in cut:
            why[name] = "grid limit"
        # The gate: the GPUs the cluster may keep busy. AI comes before mining, so
        # a job that arrives may start at once within what AI could take from
        # mining; the next plan then moves the power over.
        ai_want = {ld.name: ld.rated_kw if ld.workload_class != "mining" else 0.0 for ld in loads}
        gate, _ = _allocate(by_class, ai_want, caps, room)
        self.gpu_capacity = self.placement.capacity(gate)
        self._why = why
        self._busy = busy
        self._last = dict(out)
        return out

    def planned(self, t: float, horizon_s: float, loads: list[LoadInfo]) -> dict[str, float]:
        """The plan ``horizon_s`` ahead (the core's plan-ahead seam): today's plan,
        with each mining tank switched where a known price ahead crosses its
        breakeven band, so the thermal model learns what a price step does."""
        out = dict(self._last)
        if self.price_ahead is None:
            return out
        price = self.price_ahead(t + horizon_s)
        if not math.isfinite(price):
            return out
        h = self.config.price_hysteresis
        band = self._mining_band
        # Mostly the price ahead keeps every band as it is (on stays on, off stays
        # off): then no tank switches, found once per distinct breakeven (a hall's
        # hundreds of tanks have a few miner models) instead of per tank.
        if all(band(True, price, be, h) and not band(False, price, be, h) for be in self._be_set):
            return out
        breakeven = self._breakeven
        for ld in loads:
            be = breakeven.get(ld.name)
            if be is None:
                continue
            running = bool(out.get(ld.name))
            on = self._mining_band(running, price, be, self.config.price_hysteresis)
            if on != running:
                # switched ahead; back on at its economic power (protection caps it)
                out[ld.name] = self._economic_kw(ld.name, price) if on else 0.0
        return out

    def _observe_non_it(self, t: float, now: SiteNow) -> None:
        """Smooth import minus IT: the cooling and house load the IT must leave room for."""
        if not (math.isfinite(now.site_kw) and math.isfinite(now.it_kw)):
            return
        sample = max(0.0, now.site_kw - now.it_kw)
        dt = t - self._t_last if math.isfinite(self._t_last) else math.inf
        self._t_last = t
        a = 1.0 if not math.isfinite(dt) else 1.0 - math.exp(-max(dt, 0.0) / NON_IT_SMOOTHING_S)
        self._non_it_kw += a * (sample - self._non_it_kw)

    def _caps(
        self, loads: list[LoadInfo], headroom: dict[str, float]
    ) -> tuple[dict[str, float], dict[str, str]]:
        caps: dict[str, float] = {}
        why: dict[str, str] = {}
        for ld in loads:
            name, rated = ld.name, ld.rated_kw
            hr = headroom.get(name, rated)
            cap = hr if hr < rated else rated  # min(rated, hr)
            if cap < rated - 1e-9:
                why[name] = "protection"
            fc = ld.forecast
            if fc is None:
                caps[name] = cap
                continue
            if math.isfinite(fc.headroom_kw):
                now_kw = ld.power_kw if math.isfinite(ld.power_kw) else 0.0
                thermal = max(0.0, now_kw + fc.headroom_kw)
                if thermal < cap:
                    cap = thermal
                    why[ld.name] = (
                        "heat headroom (forecast)"
                        if fc.trusted
                        else "heat headroom (physics prior)"
                        if fc.source == "prior"
                        else "heat headroom (conservative fallback)"
                    )
            caps[ld.name] = cap
        # the loads of one loop share its headroom: their growth together fits it
        on_loop: dict[str, list[LoadInfo]] = {}
        for ld in loads:
            if ld.forecast is not None:
                on_loop.setdefault(ld.loop, []).append(ld)
        for members in on_loop.values():
            loop_room = min(ld.forecast.loop_headroom_kw for ld in members if ld.forecast)
            if not math.isfinite(loop_room):
                continue
            base = {ld.name: ld.power_kw if math.isfinite(ld.power_kw) else 0.0 for ld in members}
            growth = {ld.name: max(0.0, caps[ld.name] - base[ld.name]) for ld in members}
            total = sum(growth.values())
            if total > max(loop_room, 0.0):
                k = max(loop_room, 0.0) / total
                for ld in members:
                    if growth[ld.name] > 0:
                        caps[ld.name] = base[ld.name] + growth[ld.name] * k
                        why[ld.name] = "loop heat headroom (forecast)"
        return caps, why

    def _economic_table(self, price: float) -> dict[str, float]:
        """The tanks' ``_economic_kw`` known at ``price`` (and today's hashprice)."""
        hashprice = self.site.economics.hashprice_usd_per_th_day
        kws = self._economic_at.get((price, hashprice))
        if kws is None:
            if len(self._economic_at) >= ECONOMIC_PRICES_KEPT:
                del self._economic_at[next(iter(self._economic_at))]
            kws = self._economic_at[(price, hashprice)] = {}
        return kws

    def _economic_kw(self, name: str, price: float) -> float:
        """``Tank.economic_power_kw``; inside the hysteresis band, where that says
        off but the tank stays on, its miners' minimum (their best efficiency)."""
        hashprice = self.site.economics.hashprice_usd_per_th_day
        kws = self._economic_table(price)
        kw = kws.get(name)
        if kw is None:
            tank = self._tanks[name]
            kw = tank.economic_power_kw(hashprice, price)
            kw = kws[name] = max(kw, tank.miner_min_kw)
        return kw

    @staticmethod
    def _mining_band(on: bool, price: float, breakeven: float, h: float) -> bool:
        """Mining on or off at ``price``: off above (1 + h) x breakeven, on again below
        (1 - h) x breakeven (``h``: the price hysteresis), as it was in between."""
        if on and price > breakeven * (1.0 + h):
            return False
        if not on and price < breakeven * (1.0 - h):
            return True
        return on


def _by_class(loads: list[LoadInfo]) -> list[list[LoadInfo]]:
    """The loads of each class, in ``CLASS_PRECEDENCE`` order (each in the loads' order)."""
    return [[ld for ld in loads if ld.workload_class == wclass] for wclass in CLASS_PRECEDENCE]


def _allocate(
    by_class: list[list[LoadInfo]], want: dict[str, float], caps: dict[str, float], room: float
) -> tuple[dict[str, float], set[str]]:
    """The room by precedence (``_by_class``): each class what it wants within its
    caps; when not all of it fits, pro rata by want, each load within its cap and
    what a capped load cannot take shared by the others of its class
    (``_share``); the budgets and the loads the room cut."""
    out: dict[str, float] = {}
    cut: set[str] = set()
    for members in by_class:
        names = [ld.name for ld in members]
        give = {name: min(want[name], caps[name]) for name in names}
        total = sum(give.values())
        if total <= room or total <= 0:
            out.update(give)
            room = max(0.0, room - total)
            continue
        _share(members, want, give, room, out, cut)
        room = 0.0
    return out, cut


def _share(
    members: list[LoadInfo],
    want: dict[str, float],
    give: dict[str, float],
    room: float,
    out: dict[str, float],
    cut: set[str],
) -> None:
    """``room`` (less than the class's ``give``) shared pro rata by want, each load
    within its ``give`` (its want within its caps), into ``out``; the loads the
    room holds below their ``give`` into ``cut``.

    Shares go by want, not by the capped ``give``: a thermal cap is the load's
    measured power plus its heat headroom, so weighting shares by it fed each
    tank's measured power back into its next share even where no cap bound, and
    the mining feeders traded ~10 kW every ~6 minutes. A cap still binds where
    it is below the share, and the room it leaves goes to the others."""
    # the most capped first (its give the smallest part of its want): a load whose
    # give fits within the share takes it, which only raises the others' share
    order = sorted(
        (ld.name for ld in members if give[ld.name] > 0),
        key=lambda n: give[n] / want[n],
    )
    want_left = sum(want[n] for n in order)
    got: dict[str, float] = {}
    for i, name in enumerate(order):
        if give[name] <= room * want[name] / want_left:
            got[name] = give[name]
            room -= give[name]
            want_left -= want[name]
            continue
        scale = room / want_left  # every load from here is held below its give
        for n in order[i:]:
            got[n] = want[n] * scale
            cut.add(n)
        break
    for ld in members:  # in the loads' order, as the budgets always were
        out[ld.name] = got.get(ld.name, 0.0)
