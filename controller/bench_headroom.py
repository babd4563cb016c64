"""``thermogate bench headroom``: the model's heat headroom tested by acting on it.

Headroom is a promise: "this zone can take X kW more for the next 30 minutes
and stay under its limit". The study keeps or breaks it on the plant itself.

1. **History.** The controller runs the simulated plant for ``--train-days``
   (3) ordinary days and then a hot ``--days`` (7) week, every scan recorded
   in a historian as ``thermogate run`` records it. The load moves between
   levels at random (:class:`~thermogate.controller.bench_forecast.BenchPlanner`),
   the heat exchangers foul as the days pass, and from the week's second day
   one pump of the first loop is worn to 70 % of its head (the controller sees
   less flow and speeds it up). Weather: ``--weather CSV`` (measured; hourly
   rows are interpolated) for the whole run, else synthetic days, the week's
   hotter than any the model was trained on.
2. **Models.** As a site retrains once a day on its own history, the points
   of each day are read with the learned model and the RC baseline fitted on
   every row before that day (the ordinary days, then the week so far): the
   week's first day is weather no model has seen.
3. **Operating points.** ``--points`` (120) instants spread over the week at
   random (seeded), each with one zone, the kinds in turn (tank, CDU, loop).
   At each, the plant, the controller and its planner are frozen
   (deep-copied) right after a scan, and the zone's headroom is read from the
   recorded minute that closed before it, as the live forecaster reads it:
   the headroom it *serves* the planner (the learned model's, its bound
   offset moved by the adaptive tracker since the day's model arrived, never
   above the physics prior's; the prior's alone where the row is out of the
   model's training range), and
   beside it the learned model's unguarded, the physics prior's (its margin
   measured on the 3 hours before), the conservative fallback's (bound offset
   doubled, none within 5 K of the alarm) and the RC baseline's (closed
   form), each held under the same limit.
4. **Acting on it.** In a copy of the frozen plant and controller, exactly
   that heat is added to the zone as a step (a tank's fluid, a CDU's coolant;
   a loop's share per tank and CDU by nameplate) and the pair runs 30
   minutes in lockstep. The step is heat no meter sees and no command sheds
   (:meth:`~thermogate.hil.plant.Plant.add_heat`): only the cooling can
   answer it, so the power protection and the breakers cannot blur the
   answer by shedding other loads. The zone *crossed* when its true
   temperature rose above the limit at any scan.
5. **The oracle** is the plant: the largest step that stays under the limit,
   by bisection on further copies (bracketed by the steps already run, to
   1 % of the zone's nameplate), capped at the zone's nameplate room (the
   headroom never offers more than the nameplate can draw).

The limit is the alarm minus 2.5 K: where the controller's thermal protection
starts shedding (``THERMAL_SOFT_MARGIN_K``). A headroom that takes a zone
there has not kept its promise, even if protection then holds it.

Reported per method (the served headroom at the top level; ``baselines``:
``learned``, ``prior``, ``conservative``, ``rc``): ``points``, ``violations`` (steps that
crossed), and per kind ``points``, ``violations``, ``median_utilisation`` and
``p10_utilisation`` (headroom / true headroom, over the points where the
zone had any: true headroom above 1 % of its nameplate); ``thermal_bound``
repeats them over the points where the heat, not the nameplate, bound the
true headroom (the harder half of the test: where the nameplate binds, a
headroom offering the whole nameplate room is right).
"""

from __future__ import annotations

import copy
import copyreg
import math
import multiprocessing
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import (
    DAY_S,
    Scenario,
    SyntheticPrices,
    SyntheticWeather,
    TimeSeries,
    Weather,
    load_weather_csv,
)
from thermogate.plc.errors import ThermogateError
from thermogate.plc.site import Site, load_site

from .bench_forecast import BenchPlanner
from .core import Controller
from .core.thermal import THERMAL_SOFT_MARGIN_K
from .historian import Historian, HistoryReader
from .modelcli import PRIOR_LOOKBACK_S
from .retrain import history_dataset
from .simulate import HISTORIAN_EPOCH_S, Lockstep, run_simulation

__all__ = ["bench_headroom"]

# Frozen site and scenario records hold read-only mapping views, which the copy
# module cannot copy by default; a copy of the view is as read-only as the view.
copyreg.pickle(types.MappingProxyType, lambda m: (types.MappingProxyType, (dict(m),)))

SCAN_S = 5.0  # controller scan of the study
PLANT_DT = 5.0  # plant step (its fastest zone, a CDU's coolant, has a ~40 s time constant)
STEP_MIN = 30.0  # minutes a step is held: the headroom's horizon
MARGIN_K = THERMAL_SOFT_MARGIN_K  # headroom limit below the alarm: where protection sheds
PUMP_WEAR = 0.7  # head of the worn pump, from the week's second day
ORACLE_TOL_FRAC = 0.01  # bisection stops within this fraction of the zone's nameplate
MAX_BISECT = 10
MIN_TRUE_FRAC = 0.01  # a zone with less true headroom than this x nameplate had none
KINDS = ("tank", "cdu", "loop")
METHODS = ("served", "learned", "prior", "conservative", "rc")
TARGETS: dict[str, Any] = {
    "violation_frac": 0.01,
    "median_utilisation": {"tank": 0.8, "loop": 0.6, "cdu": 0.6},
}


@dataclass(frozen=True)
class OperatingPoint:
    index: int
    t: float  # plant time of the snapshot (s)
    kind: str
    zone: str


@dataclass
class Snapshot:
    point: OperatingPoint
    sim: ScenarioPlant
    ctrl: Controller


# ----------------------------------------------------------------------------
# the study's week
def study_scenario(days: float, train_days: float, weather_csv: str | None, seed: int) -> Scenario:
    """Ordinary training days, then a hot week (synthetic), or a measured file throughout."""
    total = (train_days + days) * DAY_S
    prices = SyntheticPrices(seed=seed + 1).generate(total)
    if weather_csv is not None:
        weather = load_weather_csv(weather_csv).with_wrap(True)
        src = f"measured weather {Path(weather_csv).name}"
    else:
        rng = np.random.default_rng(seed + 31)
        amb: list[np.ndarray] = []
        for d in range(math.ceil(train_days) + math.ceil(days)):
            hot = d >= math.ceil(train_days)
            # the week: nights of 26-31 °C, afternoons of 37-46 °C (a desert summer),
            # beyond the demo's 35 °C design ambient: its dry coolers run out of margin
            lo = rng.uniform(26.0, 31.0) if hot else rng.uniform(8.0, 16.0)
            span = rng.uniform(11.0, 15.0) if hot else rng.uniform(7.0, 12.0)
            w = SyntheticWeather(
                seed=seed * 100 + d, min_c=lo, max_c=lo + span, noise_c=0.5, cloudiness=0.4
            ).generate(DAY_S)
            amb.append(np.asarray(w.ambient_c.values))
        a = np.concatenate(amb)
        weather = Weather(TimeSeries(np.arange(len(a)) * 300.0, a, name="ambient_c"))
        src = "synthetic: ordinary training days, then a hot week"
    return Scenario(
        name="headroom-study",
        weather=weather,
        prices=prices,
        duration_s=total,
        description=f"{train_days:g} + {days:g} days, varying load; weather {src}",
    )


def choose_points(
    site: Site, n: int, t0: float, t1: float, scan_s: float, seed: int
) -> list[OperatingPoint]:
    """``n`` instants in [t0, t1) (on scan boundaries), kinds in turn, zones at random."""
    rng = np.random.default_rng(seed + 7)
    zones = {
        "tank": [t.name for t in site.tanks],
        "cdu": [c.name for c in site.cdus],
        "loop": [lp.name for lp in site.loops],
    }
    kinds = [k for k in KINDS if zones[k]]
    times = np.sort(rng.uniform(t0, t1, n))
    times = np.round(times / scan_s) * scan_s
    return [
        OperatingPoint(
            i, float(t), kinds[i % len(kinds)], str(rng.choice(zones[kinds[i % len(kinds)]]))
        )
        for i, t in enumerate(times)
    ]


def heat_shares(site: Site, kind: str, zone: str) -> dict[str, float]:
    """Where a zone's step goes: tank or CDU -> itself; a loop -> its tanks and CDUs
    by nameplate."""
    if kind != "loop":
        return {zone: 1.0}
    rated: dict[str, float] = {}
    for t in site.tanks:
        if t.loop == zone:
            rated[t.name] = t.units * t.unit_power_kw
    for c in site.cdus:
        if c.loop == zone:
            rated[c.name] = sum(
                r.nodes * r.node_power_kw for r in site.rack_rows if r.cdu == c.name
            )
    total = sum(rated.values()) or 1.0
    return {name: kw / total for name, kw in rated.items()}


def zone_truth(site: Site, kind: str, zone: str) -> Callable[[ScenarioPlant], float]:
    """The plant's true temperature of a zone (what its forecast target measures)."""
    if kind == "tank":
        i = [t.name for t in site.tanks].index(zone)
        return lambda sim: float(sim.plant.T_tank[i])
    if kind == "cdu":
        i = [c.name for c in site.cdus].index(zone)
        return lambda sim: float(sim.plant.c_supply[i])
    i = [lp.name for lp in site.loops].index(zone)
    return lambda sim: float(sim.plant.T_cold[i])


def fork(sim: ScenarioPlant, ctrl: Controller) -> tuple[ScenarioPlant, Controller]:
    """A copy of a plant and its controller that runs on apart from them.

    The site, the point map and the scenario are configuration, never changed
    by a run: the copy shares them (a fresh memo each call, so two copies never
    share anything else)."""
    memo: dict[int, Any] = {id(sim.site): sim.site, id(sim.pmap): sim.pmap}
    memo[id(sim.scenario)] = sim.scenario
    return copy.deepcopy((sim, ctrl), memo)


class _Recorder:
    """``run_simulation``'s ``on_scan``: snapshots at the points, the pump wears."""

    def __init__(self, points: Sequence[OperatingPoint], wear_at: float, pump: str | None) -> None:
        self.points = list(points)
        self.snapshots: list[Snapshot] = []
        self.wear_at = wear_at
        self.pump = pump
        self._next = 0

    def __call__(self, sim: ScenarioPlant, ctrl: Controller) -> None:
        if self.pump is not None and sim.plant.t >= self.wear_at:
            sim.plant.degrade_pump(self.pump, PUMP_WEAR)
            self.pump = None
        while self._next < len(self.points) and sim.plant.t >= self.points[self._next].t:
            self.snapshots.append(Snapshot(self.points[self._next], *fork(sim, ctrl)))
            self._next += 1


# ----------------------------------------------------------------------------
# acting on a step
def step_run(site: Site, snap: Snapshot, heat_kw: float, limit_c: float) -> float:
    """The hottest the zone got (°C) with ``heat_kw`` added for ``STEP_MIN`` minutes
    in a copy of the snapshot, stopping early once it crossed ``limit_c``."""
    p = snap.point
    sim, ctrl = fork(snap.sim, snap.ctrl)
    for name, share in heat_shares(site, p.kind, p.zone).items():
        sim.plant.add_heat(name, heat_kw * share)
    truth = zone_truth(site, p.kind, p.zone)
    lock = Lockstep(sim, ctrl)
    hottest = truth(sim)
    for _ in range(round(STEP_MIN * 60.0 / ctrl.scan_s)):
        lock.scan()
        hottest = max(hottest, truth(sim))
        if hottest > limit_c:
            break
    return hottest


def probe_point(site: Site, snap: Snapshot, est: dict[str, Any]) -> dict[str, Any]:
    """Each method's step run as given, then the oracle by bisection between them."""
    limit, room, rated = est["limit_c"], est["room_kw"], est["rated_kw"]
    runs: dict[float, float] = {}

    def crossed(x: float) -> bool:
        if x not in runs:
            runs[x] = step_run(site, snap, x, limit)
        return runs[x] > limit

    outcome = {}
    for m in METHODS:
        x = float(est[m])
        outcome[m] = x > 0.0 and crossed(x)
    safe = [x for x, hot in runs.items() if hot <= limit]
    unsafe = [x for x, hot in runs.items() if hot > limit]
    lo = max(safe, default=0.0)
    hi = min(unsafe, default=math.inf)
    if hi == math.inf:
        if room <= lo or not crossed(room):
            hi = lo = max(lo, room)  # the nameplate binds, not the heat
        else:
            hi = room
    tol = ORACLE_TOL_FRAC * rated
    for _ in range(MAX_BISECT):
        if hi - lo <= tol:
            break
        mid = 0.5 * (lo + hi)
        if crossed(mid):
            hi = mid
        else:
            lo = mid
    return {
        "index": snap.point.index,
        "true_kw": lo,
        "crossed": outcome,
        "runs": len(runs),
        "hottest_c": {m: runs.get(float(est[m])) for m in METHODS},
    }


_SNAPSHOTS: list[Snapshot] = []  # the parent's, read by forked workers
_SITE: list[Site] = []


def _probe(job: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    i, est = job
    return probe_point(_SITE[0], _SNAPSHOTS[i], est)


# ----------------------------------------------------------------------------
# the models a live site would have had
def _day(t: float) -> int:
    return int(t // DAY_S)


def _daily_models(ds: Any, t_week_abs: float, times: Sequence[float]) -> dict[int, tuple[Any, Any]]:
    """Per simulated day holding a point: the learned model and the RC baseline
    fitted on every row whose targets ended before that day began (a site
    retrains once a day on its own history; the week's first day is weather
    no model has seen)."""
    from thermogate.models.baselines import RCBaseline
    from thermogate.models.dataset import Dataset
    from thermogate.models.forecast import ThermalModel

    out: dict[int, tuple[Any, Any]] = {}
    for day in sorted({_day(t) for t in times}):
        cut = max(t_week_abs, HISTORIAN_EPOCH_S + day * DAY_S)
        part = ds.split(cut)[0]
        part = Dataset(
            part.horizons_min,
            part.step_s,
            {k: kd.take(np.isfinite(kd.y).all(axis=1)) for k, kd in part.kinds.items()},
        )
        out[day] = (ThermalModel().fit(part), RCBaseline.fit(part))
    return out


# ----------------------------------------------------------------------------
# reading the headroom at a point
def _rows_at(ds: Any, kind: str, zone: str, t_abs: float, step_s: float) -> Any:
    """The zone's row of the last minute that closed before ``t_abs`` (None: invalid)."""
    kd = ds.kinds.get(kind)
    if kd is None:
        return None
    m = (kd.zones == zone) & (kd.times + step_s <= t_abs)
    if not m.any():
        return None
    i = np.flatnonzero(m)[np.argmax(kd.times[m])]
    if t_abs - kd.times[i] > 3 * step_s:  # the zone's recent minutes were invalid
        return None
    return kd.take(np.array([i]))


def _adaptive(model: Any, ds: Any, day: int) -> dict[str, tuple[Any, np.ndarray]]:
    """Per kind: the rows of ``day`` and the offset the live forecaster's adaptive
    bound (:mod:`thermogate.models.conformal`), started when the day's model
    arrived, gave each of them (causal: each row's offset was fed only the
    actuals known by its time)."""
    from thermogate.models.forecast import adaptive_offsets

    t0 = HISTORIAN_EPOCH_S + day * DAY_S
    out = {}
    for kind, kd in ds.between(t0, t0 + DAY_S).kinds.items():
        if kind in model.kinds and len(kd):
            mean, _ = model.predict(kd)
            scale = model.kinds[kind].scale(kd.X)
            out[kind] = (kd, adaptive_offsets(model, kd, mean, scale))
    return out


def _prior_at(site: Site, ds: Any, row: Any) -> Any:
    """The physics prior as the live forecaster holds it: its margin measured by
    replaying the hours before the row, as ``thermogate forecast`` does."""
    from thermogate.models.prior import PhysicsPrior

    prior = PhysicsPrior(site)
    t = float(row.times[0])
    prior.replay(ds.between(t - PRIOR_LOOKBACK_S, t + 1.0))
    return prior


def _estimates(
    model: Any, rc: Any, site: Site, ds: Any, row: Any, offsets: dict[str, np.ndarray]
) -> dict[str, Any]:
    from thermogate.models.headroom import headroom
    from thermogate.models.trust import Trust

    zone = str(row.zones[0])
    rated = float(row.rated_kw[0])
    p_now = float(row.feature("power_kw")[0])
    learned = headroom(model, row, site, margin_k=MARGIN_K, offsets=offsets)[zone].extra_kw
    prior = _prior_at(site, ds, row).headroom([row], margin_k=MARGIN_K)[zone].extra_kw
    ood = bool(model.ood(row)[0])
    return {
        "limit_c": float(row.alarm_c[0]) - MARGIN_K,
        "rated_kw": rated,
        "power_kw": p_now,
        "room_kw": max(0.0, rated - p_now),
        "temp_c": float(row.temp[0]),
        "ood": ood,
        # what the live forecaster hands the planner: the prior's when out of range,
        # else the learned headroom checked against the prior's (live.physics_checked)
        "served": prior if ood else min(learned, prior),
        "learned": learned,
        "prior": prior,
        "conservative": Trust(model)
        .conservative_headroom(row, site, margin_k=MARGIN_K)[zone]
        .extra_kw,
        "rc": rc.headroom(row, row.alarm_c, margin_k=MARGIN_K)[zone].extra_kw,
    }


# ----------------------------------------------------------------------------
def _method_summary(rows: list[dict[str, Any]], method: str) -> dict[str, Any]:
    def stats(sel: list[dict[str, Any]]) -> dict[str, Any]:
        util = [
            r[method] / r["true_kw"] for r in sel if r["true_kw"] > MIN_TRUE_FRAC * r["rated_kw"]
        ]
        return {
            "points": len(sel),
            "violations": sum(1 for r in sel if r["crossed"][method]),
            "median_utilisation": round(float(np.median(util)), 3) if util else None,
            "p10_utilisation": round(float(np.percentile(util, 10)), 3) if util else None,
            "with_headroom": len(util),
        }

    def per_kind(sel: list[dict[str, Any]]) -> dict[str, Any]:
        out = stats(sel)
        out["kinds"] = {k: stats([r for r in sel if r["kind"] == k]) for k in KINDS}
        out["kinds"] = {k: v for k, v in out["kinds"].items() if v["points"]}
        return out

    out = per_kind(rows)
    out["thermal_bound"] = per_kind([r for r in rows if _thermal_bound(r)])
    return out


def _thermal_bound(r: dict[str, Any]) -> bool:
    """The heat bound the point's true headroom, not the nameplate room."""
    return bool(r["true_kw"] < r["room_kw"] - ORACLE_TOL_FRAC * r["rated_kw"])


def _met(res: dict[str, Any], rc: dict[str, Any]) -> dict[str, bool]:
    def med(d: dict[str, Any], k: str) -> float:
        v = d["kinds"].get(k, {}).get("median_utilisation")
        return -1.0 if v is None else float(v)

    kinds = list(res["kinds"])
    return {
        "violations": res["violations"] <= TARGETS["violation_frac"] * res["points"],
        "utilisation": all(med(res, k) >= TARGETS["median_utilisation"][k] for k in kinds),
        "better_than_rc": res["violations"] <= rc["violations"]
        and all(med(res, k) >= med(rc, k) for k in kinds),
    }


def bench_headroom(args: Any) -> dict[str, Any]:
    from thermogate.plc.pointmap import build_point_map
    from thermogate.plc.records import record_columns

    from .report import ProgressBar

    days = float(getattr(args, "days", None) or 7.0)
    train_days = float(getattr(args, "train_days", None) or 3.0)
    n_points = int(getattr(args, "points", None) or 120)
    seed = int(getattr(args, "seed", 0) or 0)
    weather = getattr(args, "weather", None)
    quiet = bool(getattr(args, "json", False))
    site = load_site(getattr(args, "site", None))
    wall0 = time.perf_counter()

    sc = study_scenario(days, train_days, weather, seed)
    t_week = train_days * DAY_S
    total_h = (train_days + days) * 24.0
    # the first hour of the week is skipped: the points' feature windows start in it
    points = choose_points(site, n_points, t_week + 3600.0, total_h * 3600.0 - 60.0, SCAN_S, seed)
    pump = site.loops[0].pumps[0].name if site.loops and site.loops[0].pumps else None
    rec = _Recorder(points, t_week + DAY_S, pump)
    names = record_columns(build_point_map(site), site)
    loads = [t.name for t in site.tanks] + [r.name for r in site.rack_rows]
    planner = BenchPlanner(loads, total_h * 3600.0, seed=seed)
    if not quiet:
        print(f"simulating {total_h / 24:g} days ({sc.description})", file=sys.stderr)
    keep = getattr(args, "db", None)
    if keep and Path(keep).exists():
        raise ThermogateError(f"{keep}: exists; remove it or name another file")
    with tempfile.TemporaryDirectory(prefix="thermogate-headroom-") as tmp:
        db = Path(keep) if keep else Path(tmp) / "headroom-study.db"
        hist = Historian(db, names, site_name=site.name, raw_days=total_h / 24 + 1)
        bar = ProgressBar(enabled=False if quiet else None, sim_hours=total_h)
        try:
            run_simulation(
                site, sc, total_h, seed=seed, planner=planner, historian=hist, scan_s=SCAN_S,
                plant_dt=PLANT_DT, progress=bar, on_scan=rec,
            )  # fmt: skip
        finally:
            bar.close()
            hist.close()
        sim_wall = time.perf_counter() - wall0
        with HistoryReader(db, site.name) as reader:
            ds = history_dataset(reader, site, require_targets=False)
    models = _daily_models(ds, HISTORIAN_EPOCH_S + t_week, [p.t for p in points])
    jobs: list[tuple[int, dict[str, Any]]] = []
    meta: list[dict[str, Any]] = []
    adaptive: dict[int, dict[str, tuple[Any, np.ndarray]]] = {}
    for i, snap in enumerate(rec.snapshots):
        p = snap.point
        day = _day(p.t)
        model, rc = models[day]
        row = _rows_at(ds, p.kind, p.zone, HISTORIAN_EPOCH_S + p.t, ds.step_s)
        if row is None or p.kind not in model.kinds:
            continue
        if day not in adaptive:
            adaptive[day] = _adaptive(model, ds, day)
        kd, q = adaptive[day][p.kind]
        at = np.flatnonzero((kd.zones == p.zone) & (kd.times == row.times[0]))
        offsets = {p.kind: q[at[0]] if len(at) else model.kinds[p.kind].q}
        est = _estimates(model, rc, site, ds, row, offsets)
        jobs.append((i, est))
        meta.append(
            {"index": p.index, "t_h": round(p.t / 3600.0, 3), "kind": p.kind, "zone": p.zone,
             "ambient_c": round(snap.sim.plant.ambient, 2), **est}
        )  # fmt: skip
    if not jobs:
        raise ThermogateError("no operating point had a valid live row; nothing to test")
    if not quiet:
        print(f"stepping {len(jobs)} operating points", file=sys.stderr)
    _SNAPSHOTS[:] = rec.snapshots
    _SITE[:] = [site]
    t_probe = time.perf_counter()
    try:
        ctx = multiprocessing.get_context("fork")  # the snapshots are this process's memory
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            results = []
            for k, r in enumerate(pool.map(_probe, jobs)):
                results.append(r)
                if not quiet and (k + 1) % 10 == 0:
                    print(f"  {k + 1}/{len(jobs)} points", file=sys.stderr)
    finally:
        _SNAPSHOTS.clear()
        _SITE.clear()
    rows = [m | r for m, r in zip(meta, results, strict=True)]
    model_res = _method_summary(rows, "served")
    base = {m: _method_summary(rows, m) for m in METHODS[1:]}
    return {
        "site": site.name,
        "weather": weather or "synthetic (ordinary training days, then a hot week)",
        "train_days": train_days,
        "days": days,
        "limit": f"alarm - {MARGIN_K:g} K (where thermal protection starts shedding)",
        "step_min": STEP_MIN,
        **model_res,
        "baselines": base,
        "ood_points": sum(1 for r in rows if r["ood"]),
        "thermal_bound_points": sum(1 for r in rows if _thermal_bound(r)),
        "step_runs": sum(r["runs"] for r in rows),
        "simulate_wall_s": round(sim_wall, 1),
        "probe_wall_s": round(time.perf_counter() - t_probe, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "targets": TARGETS,
        "met": _met(model_res, base["rc"]),
        "detail": [
            {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in r.items()
                if k not in ("hottest_c",)
            }
            for r in rows
        ],
    }
