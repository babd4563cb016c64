"""Planning: the seam where economics and the grid hand in budgets.

The planner (``Planner``) says what each load should draw; protection's caps
always bound it: a planner can never raise a load above what protection
allows. A tank gets a power budget in kW (the miners' target, the GPU cap), a
rack row a per-GPU power cap in W (200 W at 30 % of its rating or less, 700 W
at full; for the busy GPUs a planner says its budget is for, ``BusyShares``).
Protection lowers the GPUs' power cap but never stops a row: stopping and
restarting training jobs costs more than running capped.

The thermal model's headroom reaches the planner through ``set_forecast``
while it is fresh (``FORECAST_FRESH_S``); an older forecast is withheld rather
than trusted. With every scan the planned load 5, 15 and 30 minutes ahead is
recorded (``PlanAhead``): the model learns what planned changes do.

In maintenance mode the planner is not asked: every load keeps the budget it
had, and only protection may lower it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast, runtime_checkable

import numpy as np

from thermogate.plc.records import PLAN_HORIZONS_MIN

from .topology import Topology
from .view import Cmd, Cmds, ScanView, nz

FORECAST_FRESH_S = 180.0  # a model forecast older than this is not handed to the planner
ROW_CAP_MIN_W = 200.0  # a rack row's per-GPU cap at or below 30 % of its rating ...
ROW_CAP_MAX_W = 700.0  # ... and at full rating
ROW_CAP_KNEE_FRAC = 0.3


@dataclass(frozen=True)
class LoadForecast:
    """The thermal model's word on one load, handed in once a minute (``set_forecast``)."""

    headroom_kw: float  # extra kW this load may add now (its tank, or its share of its CDU)
    loop_headroom_kw: float  # extra kW the load's whole loop may take (shared by its loads)
    time_to_limit_min: float  # first of its zones to reach its limit at current load (inf: > 30)
    trusted: bool  # False: the conservative fallback (model out of range, stale or drifting)
    #: learned (the learned model) | prior (the physics prior from the site description:
    #: no learned model yet, or it is not trusted)
    source: str = "learned"


class LoadInfo(NamedTuple):
    """One load as a planner sees it this scan (a named tuple: a large hall makes
    hundreds a scan, and a frozen dataclass costs several times as much to build)."""

    name: str
    workload_class: str
    rated_kw: float
    power_kw: float  # measured now (NaN if unknown)
    loop: str
    #: the learned forecast's headroom; None without a model or when its forecast is stale
    forecast: LoadForecast | None = None


@dataclass(frozen=True)
class SiteNow:
    """What a planner sees of the whole site this scan, besides its loads."""

    grid_limit_kw: float  # the import limit in force: the site's, the grid's, a curtailment's
    site_kw: float  # measured import (NaN when the meter is bad)
    it_kw: float  # the loads' measured power, summed (bad meters count 0)
    price_per_mwh: float  # the energy price now (NaN: no feed)


class Planner(Protocol):
    """``plan`` returns, per load (tank or rack row name), the budget in kW the
    planner wants (absent or not finite: no opinion, i.e. rated). ``headroom``
    is what protection allows each load now."""

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]: ...


@runtime_checkable
class Explains(Protocol):
    """A planner that says why: per load, the limit or price that bound its
    last plan ("grid limit", "price above mining breakeven", ...). The reason
    goes with the budget's write into the audit trail and the status."""

    def why(self) -> Mapping[str, str]: ...


class PlanAhead(Protocol):
    """A planner that also knows its plan ahead (a job schedule, a day-ahead
    price plan, a notified curtailment) implements ``planned``: the budget in
    kW it intends for each load ``horizon_s`` from now. The core records it
    (``ScanResult.plan``) so the thermal model learns what planned load
    changes do. Without it the plan ahead is today's request."""

    def planned(self, t: float, horizon_s: float, loads: list[LoadInfo]) -> dict[str, float]: ...


@runtime_checkable
class BusyShares(Protocol):
    """A planner that budgets GPU loads for the GPUs it lets the cluster keep
    busy says so: per GPU load, the fraction of its GPUs its budget is for. A
    rack row's budget is enforced through one per-GPU power cap, so the cap
    must let that many busy GPUs draw the budget (idle GPUs draw their idle
    power whatever the cap), not spread the budget over every GPU."""

    def busy_shares(self) -> Mapping[str, float]: ...


class DefaultPlanner:
    """Until the gating planner exists: everything allowed within the limits."""

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]:
        return {ld.name: ld.rated_kw for ld in loads}


def row_cap_w(
    budget_kw: float,
    rated_kw: float,
    idle_kw: float = 0.0,
    busy: float = 1.0,
    cap_w: tuple[float, float] = (ROW_CAP_MIN_W, ROW_CAP_MAX_W),
) -> float:
    """A rack row's per-GPU power cap for a budget in kW, ``busy`` of its GPUs
    working (``BusyShares``): their power above the row's idle is the budget's."""
    frac = budget_kw / rated_kw if rated_kw else 0.0
    if busy < 1.0:
        idle = idle_kw / rated_kw if rated_kw else 0.0
        frac = idle + (frac - idle) / max(busy, 1e-3)
    knee = ROW_CAP_KNEE_FRAC
    lo, hi = cap_w  # the row's GPUs' (``Load.cap_w``; an H200's by default)
    return lo + (hi - lo) * max(0.0, min(1.0, (frac - knee) / (1.0 - knee)))


class _Rated(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def rated_kw(self) -> float: ...


def asked(wanted: Mapping[str, float], ld: _Rated) -> float:
    """The budget a planner asked for a load (no or no finite answer: its rating)."""
    return _asked(wanted, ld.name, ld.rated_kw)


def _asked(wanted: Mapping[str, float], name: str, rated_kw: float) -> float:
    """``asked`` by name and rating (the scan's loop has them at hand)."""
    want = wanted.get(name)
    return rated_kw if want is None or not math.isfinite(want) else max(0.0, want)


class Planning:
    """See the module docstring."""

    def __init__(self, topo: Topology, planner: Planner) -> None:
        self.topo = topo
        self.planner = planner
        self._forecast: tuple[float, dict[str, LoadForecast]] = (-math.inf, {})
        self._held: dict[str, float] | None = None  # maintenance: the budgets kept
        self._last_wanted: dict[str, float] = {}
        #: planned load per load and horizon (``plc.records.plan_columns`` order)
        self.plan = np.full(len(topo.loads) * len(PLAN_HORIZONS_MIN), np.nan)
        self._loop_name = [topo.site.loops[ld.loop].name for ld in topo.loads]
        # isinstance against a runtime-checkable Protocol inspects the class
        # every time: asked once per planner object, not once per scan
        self._explains_of: tuple[Planner, bool] | None = None
        self._busy_of: tuple[Planner, bool] | None = None
        #: per load: the kW the thermal limit takes off its rating this scan (within
        #: its power caps; the planner plans within both, so this is what it lost)
        self.thermal_withheld_kw: dict[str, float] = {ld.name: 0.0 for ld in topo.loads}

    def _explains(self) -> bool:
        """The planner says why (``Explains``); remembered while it is the same planner."""
        got = self._explains_of
        if got is None or got[0] is not self.planner:
            got = self._explains_of = (self.planner, isinstance(self.planner, Explains))
        return got[1]

    def _busy_shares(self) -> Mapping[str, float]:
        """The planner's ``BusyShares`` (remembered per planner, as ``_explains``)."""
        got = self._busy_of
        if got is None or got[0] is not self.planner:
            got = self._busy_of = (self.planner, isinstance(self.planner, BusyShares))
        return cast(BusyShares, self.planner).busy_shares() if got[1] else {}

    def set_forecast(self, t: float, loads: dict[str, LoadForecast]) -> None:
        """The thermal model's headroom per load, computed at data time ``t``."""
        self._forecast = (t, dict(loads))

    def forecast(self, t: float) -> dict[str, LoadForecast]:
        """The model's word while fresh; nothing once it is older than FORECAST_FRESH_S."""
        t_fc, forecast = self._forecast
        return {} if t - t_fc > FORECAST_FRESH_S else forecast

    def allocate(
        self,
        view: ScanView,
        cmds: Cmds,
        thermal_cap: dict[str, float],
        power_cap: dict[str, float],
        grid_limit_kw: float,
        hold: bool = False,
    ) -> None:
        """Budgets for every load: the planner's wish within protection's caps.

        ``hold`` (maintenance) keeps the budgets the planner last asked for."""
        t = view.t
        forecast = self.forecast(t)
        val, measured = view.val, view.measured
        # each load's rating and protection caps, in the order the min()s take them
        caps = [
            (ld, ld.name, ld.rated_kw, thermal_cap[ld.name], power_cap[ld.name])
            for ld in self.topo.loads
        ]
        infos = [
            LoadInfo(name, ld.wclass, rated, val(ld.power), loop, forecast.get(name))
            for (ld, name, rated, _, _), loop in zip(caps, self._loop_name, strict=True)
        ]
        headroom = {name: min(th, pw, rated) for _, name, rated, th, pw in caps}
        why: Mapping[str, str] = {}
        if hold:
            if self._held is None:
                self._held = dict(self._last_wanted)
            wanted = self._held
        else:
            self._held = None
            it_kw = sum(nz(measured(ld.power)) for ld, *_ in caps)
            site_kw = measured(self.topo.site_meter)
            price = math.nan if view.price_per_mwh is None else float(view.price_per_mwh)
            now = SiteNow(grid_limit_kw, site_kw, it_kw, price)
            wanted = self.planner.plan(t, infos, headroom, now)
            self._last_wanted = wanted
            if self._explains():
                why = cast(Explains, self.planner).why()
        busy = self._busy_shares()
        ahead = getattr(self.planner, "planned", None)
        nh = len(PLAN_HORIZONS_MIN)
        plan = self.plan
        asked_now = [_asked(wanted, name, rated) for _, name, rated, _, _ in caps]
        final = [
            min(budget, rated, th, pw)
            for budget, (_, _, rated, th, pw) in zip(asked_now, caps, strict=True)
        ]
        for j, h in enumerate(PLAN_HORIZONS_MIN):
            later = wanted if ahead is None or hold else ahead(t, h * 60.0, infos)
            # (a plan ahead is mostly the plan now: its row is this scan's budgets)
            row = (
                final
                if later is wanted or later == wanted
                else [
                    min(_asked(later, name, rated), rated, th, pw)
                    for _, name, rated, th, pw in caps
                ]
            )
            # protection caps persist unless something changes: part of the plan
            plan[j::nh] = row
        withheld = self.thermal_withheld_kw
        get_why = why.get
        for (ld, name, rated, th, pw), budget, budget_final in zip(
            caps, asked_now, final, strict=True
        ):
            withheld[name] = max(0.0, min(rated, pw) - th)
            if budget_final < budget - 1e-6:
                # the lower of the two limits (thermal on a tie, as min() picks the first)
                reason = ("power" if pw < th else "thermal") + " limit"
            else:
                reason = get_why(name, "planner")
            if ld.kind == "tank":
                cmds[ld.budget] = Cmd(round(budget_final, 1), reason)
            else:
                share = busy.get(name, 1.0)
                cap_w = row_cap_w(budget_final, rated, ld.idle_kw, share, ld.cap_w)
                cmds[ld.budget] = Cmd(round(cap_w), reason)
            cmds[ld.enable] = Cmd(1.0, "workload permitted")
