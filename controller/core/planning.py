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
from itertools import repeat
from math import isfinite
from typing import NamedTuple, Protocol, cast, runtime_checkable

import numpy as np

from thermogate.plc.points import BAD
from thermogate.plc.records import PLAN_HORIZONS_MIN

from .topology import Topology
from .view import Cmd, Cmds, ScanView

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
        # What allocate needs of each load, in the loads' order, found once
        loads = topo.loads
        self._names = [ld.name for ld in loads]
        self._wclass = [ld.wclass for ld in loads]
        self._rated = [ld.rated_kw for ld in loads]
        self._power_ix = np.array([ld.power for ld in loads], dtype=np.intp)
        self._no_forecast: list[LoadForecast | None] = [None] * len(loads)
        #: per load: None for a tank (a budget in kW), a rack row's rating, idle and
        #: GPU cap range (a per-GPU cap in W)
        self._rows: list[tuple[float, float, tuple[float, float]] | None] = [
            None if ld.kind == "tank" else (ld.rated_kw, ld.idle_kw, ld.cap_w) for ld in loads
        ]
        #: the commands of each load: its budget, then its enable (the enable never
        #: changes: one command made once; nothing after planning changes a command
        #: in place; a budget's is made each scan)
        self._cmd_ix = [i for ld in loads for i in (ld.budget, ld.enable)]
        self._cmds = [Cmd(1.0, "workload permitted") for ld in loads for _ in range(2)]

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
        names, rated_l = self._names, self._rated
        # each load's protection caps, in the order the min()s take them
        th_l = [thermal_cap[name] for name in names]
        pw_l = [power_cap[name] for name in names]
        values = np.asarray(view.values, dtype=float)
        power_l = values[self._power_ix].tolist()  # ``view.val`` of each load's meter
        fc_l = [forecast.get(name) for name in names] if forecast else self._no_forecast
        # LoadInfo(name, wclass, rated, power, loop, forecast) for each load, built
        # from its fields' tuple as ``LoadInfo.__new__`` does
        infos: list[LoadInfo] = list(
            map(
                _tuple_new,
                repeat(LoadInfo),
                zip(names, self._wclass, rated_l, power_l, self._loop_name, fc_l, strict=True),
            )
        )
        headroom = dict(zip(names, map(min, th_l, pw_l, rated_l), strict=True))
        why: Mapping[str, str] = {}
        if hold:
            if self._held is None:
                self._held = dict(self._last_wanted)
            wanted = self._held
        else:
            self._held = None
            good_l = (view.quality[self._power_ix] != BAD).tolist()
            # nz(view.measured(meter)), summed in the loads' order
            it_kw = sum(
                [p if g and isfinite(p) else 0.0 for p, g in zip(power_l, good_l, strict=True)]
            )
            site_kw = view.measured(self.topo.site_meter)
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
        asked_now = asked_all(wanted, names, rated_l)
        final = list(map(min, asked_now, rated_l, th_l, pw_l))
        final_a: np.ndarray | None = None
        for j, h in enumerate(PLAN_HORIZONS_MIN):
            later = wanted if ahead is None or hold else ahead(t, h * 60.0, infos)
            # (a plan ahead is mostly the plan now: its row is this scan's budgets)
            if later is wanted or later == wanted:
                if final_a is None:
                    final_a = np.array(final, dtype=float)
                row: list[float] | np.ndarray = final_a
            else:
                row = list(map(min, asked_all(later, names, rated_l), rated_l, th_l, pw_l))
            # protection caps persist unless something changes: part of the plan
            plan[j::nh] = row
        self.thermal_withheld_kw.update(
            zip(
                names,
                [max(0.0, min(r, pw) - th) for r, th, pw in zip(rated_l, th_l, pw_l, strict=True)],
                strict=True,
            )
        )
        get_why = why.get
        rows, out = self._rows, self._cmds
        for k, (name, budget, budget_final, th, pw) in enumerate(
            zip(names, asked_now, final, th_l, pw_l, strict=True)
        ):
            if budget_final < budget - 1e-6:
                # the lower of the two limits (thermal on a tie, as min() picks the first)
                reason = _POWER_LIMIT if pw < th else _THERMAL_LIMIT
            else:
                reason = get_why(name, "planner")
            row_of = rows[k]
            if row_of is None:  # a tank
                out[2 * k] = Cmd(round(budget_final, 1), reason)
            else:
                rated, idle_kw, cap_w = row_of
                share = busy.get(name, 1.0)
                out[2 * k] = Cmd(
                    round(row_cap_w(budget_final, rated, idle_kw, share, cap_w)), reason
                )
        # every load's budget, then its enable, in the loads' order
        cmds.update(zip(self._cmd_ix, out, strict=True))


_tuple_new = tuple.__new__
_POWER_LIMIT = "power limit"
_THERMAL_LIMIT = "thermal limit"


def asked_all(wanted: Mapping[str, float], names: list[str], rated: list[float]) -> list[float]:
    """The budget a planner asked for each load (the loads' names and ratings, in
    order): its rating where it gave no finite budget, else the budget, negatives
    as 0.0."""
    get = wanted.get
    return [
        r if (w := get(name)) is None or not isfinite(w) else w if w > 0.0 else 0.0
        for name, r in zip(names, rated, strict=True)
    ]
