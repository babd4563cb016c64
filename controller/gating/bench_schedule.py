"""``thermogate bench schedule``: the gating planner against the splits a hall would use.

The same oversubscribed site, the same weather, prices and job trace, under
four policies, each closed-loop through the controller core and the
simulated plant (``run_simulation`` with a simulated GPU cluster in the loop):

* ``static``: AI gets the power of the trace's mean GPU demand, mining the
  rest, always at full; FIFO admission;
* ``static_backfill``: the same split with EASY backfilling (as Slurm does);
* ``price_threshold``: the static split, mining off above its breakeven price;
* ``thermogate``: the gating planner with EASY backfilling.

``oracle_net_margin`` is a hindsight bound: a linear program (HiGHS through
scipy) choosing mining and AI power per 15 minutes with perfect knowledge of
prices and of the work submitted, within the import limit, GPU work never
done before it is submitted. It relaxes job granularity, the thermal limits
and cooling energy, and prices mining at its nameplate efficiency.

The bench site is the demo with its import limit lowered until the installed
IT load is ``OVERSUBSCRIPTION`` times what the grid connection can feed, as
hybrid halls are built. The built-in trace has a diurnal inference demand
(8-GPU services of 30 min, peaking at half the GPUs in the afternoon) and
Poisson-arriving training jobs (8 to 128 GPUs, log-normal run times with a
2 h median, checkpoints every 30 min).
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from thermogate.hil.scenario import Scenario, load_scenario
from thermogate.hil.scenario.jobs import DEFAULT_CHECKPOINT_S, Job, JobKind, load_jobs_csv
from thermogate.plc.site import Site, load_site

from ..core import Planner
from .baselines import StaticPlanner
from .cluster import Admission
from .placement import Placement
from .planner import GatingPlanner

OVERSUBSCRIPTION = 1.4  # installed IT kW / import limit kW of the bench site
SCAN_S = 5.0  # controller scan of the study (the plant steps at 1 s)
POLICIES = ("static", "static_backfill", "price_threshold", "thermogate")
LP_STEP_S = 900.0


def bench_site(site: Site) -> Site:
    """The site with its import limit lowered to ``it_rated / OVERSUBSCRIPTION``."""
    return replace(site, import_limit_kw=round(site.it_rated_kw / OVERSUBSCRIPTION, 1))


def synthetic_trace(days: float, gpus: int, seed: int = 0) -> tuple[Job, ...]:
    """The built-in trace (see the module docstring), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    end = days * 86400.0
    jobs: list[tuple[float, float, int, JobKind]] = []
    t = 0.0
    while t < end:  # inference: services re-placed every 30 min
        hour = (t % 86400.0) / 3600.0
        level = 0.35 + 0.65 * max(0.0, math.sin(math.pi * (hour - 6.0) / 16.0))
        want = 0.5 * gpus * level * rng.uniform(0.9, 1.1)
        for _ in range(int(want // 8)):
            jobs.append((t, 1800.0, 8, "inference"))
        t += 1800.0
    sizes = np.array([8, 16, 32, 64, 128])
    sizes = sizes[sizes <= gpus] if (sizes <= gpus).any() else np.array([gpus])
    weights = np.array([0.35, 0.25, 0.2, 0.12, 0.08])[: len(sizes)]
    weights /= weights.sum()
    mean_gpu_s = float((sizes * weights).sum()) * 2 * 3600.0 * math.exp(0.8**2 / 2)
    rate = 0.35 * gpus / mean_gpu_s  # training offers 35 % of the GPUs on average
    t = float(rng.exponential(1 / rate))
    while t < end:
        dur = float(min(24 * 3600.0, 2 * 3600.0 * rng.lognormal(0.0, 0.8)))
        jobs.append((t, max(60.0, dur), int(rng.choice(sizes, p=weights)), "training"))
        t += float(rng.exponential(1 / rate))
    jobs.sort(key=lambda j: j[0])
    return tuple(
        Job(i, s, d, g, k, DEFAULT_CHECKPOINT_S if k == "training" else math.inf)
        for i, (s, d, g, k) in enumerate(jobs)
    )


def mean_gpu_demand(jobs: tuple[Job, ...], seconds: float) -> float:
    """The trace's mean offered load in GPUs over ``seconds``."""
    return sum(j.gpu_s for j in jobs) / seconds if seconds > 0 else 0.0


def _planner(policy: str, site: Site, ai_gpus: int) -> Planner:
    if policy == "thermogate":
        return GatingPlanner(site)
    return StaticPlanner(site, ai_gpus, price_threshold=policy == "price_threshold")


def _scenario(name: str, weather: str | None, prices: str | None) -> Scenario:
    """The study's scenario; measured series given as CSV repeat over long studies."""
    return load_scenario(
        name, weather_csv=weather, prices_csv=prices, wrap=True if (weather or prices) else None
    )


def _run_policy(job: dict[str, Any]) -> dict[str, Any]:
    from ..simulate import run_simulation

    site: Site = job["site"]
    sc = _scenario(job["scenario"], job["weather"], job["prices"])
    policy = job["policy"]
    admission: Admission = "fifo" if policy == "static" else "backfill"
    r = run_simulation(
        site,
        sc,
        job["hours"],
        scan_s=SCAN_S,
        planner=_planner(policy, site, job["ai_gpus"]),
        jobs=job["jobs"],
        admission=admission,
    )
    s = r.summary
    jobs_s, econ = s["jobs"], s["economics"]
    assert isinstance(jobs_s, dict) and isinstance(econ, dict)
    return {
        "mean_jct_s": jobs_s["mean_jct_s"],
        "p95_jct_s": jobs_s["p95_jct_s"],
        "mean_queue_s": jobs_s["mean_queue_s"],
        "slo_violations": jobs_s["slo_violations"],
        "preemptions": jobs_s["preemptions"],
        "lost_gpu_h": jobs_s["lost_gpu_h"],
        "finished_jobs": jobs_s["finished"],
        "pending_jobs": jobs_s["pending"],
        "mining_revenue": econ["mining_revenue"],
        "ai_revenue": econ["ai_revenue"],
        "energy_cost": econ["energy_cost"],
        "net_margin": econ["net_margin"],
        "thermal_violation_c_min": s["limit_violation_c_min"],
        "trips": s["trips"],
        "wall_s": s["wall_seconds"],
    }


def oracle_net_margin(
    site: Site, jobs: tuple[Job, ...], price: np.ndarray, limit_kw: np.ndarray
) -> float:
    """The hindsight LP bound (module docstring); ``price``/``limit_kw`` per LP step."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack, identity, tril, vstack

    n = len(price)
    dt_h = LP_STEP_S / 3600.0
    econ = site.economics
    miners = [t for t in site.tanks if t.workload == "asic"]
    m_max = sum(t.rated_kw for t in miners)
    j_per_th = sum(t.rated_kw * t.miner_j_per_th for t in miners) / m_max if m_max else math.inf
    mine_usd_per_kwh = 1000.0 / j_per_th * econ.hashprice_usd_per_th_day / 24.0
    pl = Placement(site)
    idle_kw = sum(ld.idle_kw for ld in pl.loads)
    kw_per_gpu = sum(ld.rated_kw - ld.idle_kw for ld in pl.loads) / max(pl.gpus, 1)
    gpu_h = sum(j.gpu_s for j in jobs) / 3600.0
    ai_usd_per_gpu_h = (
        sum(
            j.gpu_s
            / 3600.0
            * (
                econ.inference_usd_per_gpu_h
                if j.kind == "inference"
                else econ.training_usd_per_gpu_h
            )
            for j in jobs
        )
        / gpu_h
        if gpu_h
        else 0.0
    )
    # variables: m_0..m_{n-1} (mining kW), a_0..a_{n-1} (busy GPUs)
    c = np.concatenate(
        [
            -(mine_usd_per_kwh - price / 1000.0) * dt_h,
            -(ai_usd_per_gpu_h - price / 1000.0 * kw_per_gpu) * dt_h,
        ]
    )
    # power: m_t + kw_per_gpu a_t <= limit_t - idle
    a_pow = hstack([identity(n), kw_per_gpu * identity(n)])
    b_pow = np.maximum(limit_kw - idle_kw, 0.0)
    # work: sum_{s<=t} a_s dt <= GPU-h submitted by the end of step t
    edges = (np.arange(n) + 1) * LP_STEP_S
    submits = np.array([j.submit_s for j in jobs])
    work = np.array([j.gpu_s / 3600.0 for j in jobs])
    order = np.argsort(submits)
    cum = np.concatenate([[0.0], np.cumsum(work[order])])
    b_work = cum[np.searchsorted(submits[order], edges, side="right")]
    a_work = hstack([coo_matrix((n, n)), dt_h * tril(np.ones((n, n)))])
    res = linprog(
        c,
        A_ub=vstack([a_pow, a_work]).tocsr(),
        b_ub=np.concatenate([b_pow, b_work]),
        bounds=[(0, m_max)] * n + [(0, pl.gpus)] * n,
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"oracle LP failed: {res.message}")
    return float(-res.fun - float((price / 1000.0 * idle_kw * dt_h).sum()))


def bench_schedule(args: argparse.Namespace) -> dict[str, Any]:
    site = bench_site(load_site(getattr(args, "site", None)))
    hours = args.days * 24.0
    jobs = load_jobs_csv(args.trace) if args.trace else synthetic_trace(args.days, site.gpus)
    rejected = sum(1 for j in jobs if j.gpus > site.gpus)
    ai_gpus = min(site.gpus, round(mean_gpu_demand(jobs, hours * 3600.0)))
    # read here first, so a bad CSV stops the bench before any policy runs; the
    # workers read it again (a scenario does not pickle)
    sc = _scenario(args.scenario, args.weather, args.prices)
    common = {
        "site": site,
        "scenario": args.scenario,
        "weather": args.weather,
        "prices": args.prices,
        "hours": hours,
        "jobs": jobs,
        "ai_gpus": ai_gpus,
    }
    progress = None
    if not args.json:
        from tqdm import tqdm

        progress = tqdm(total=len(POLICIES), desc="policies", unit="run")
    out: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=2) as pool:
        futs = {p: pool.submit(_run_policy, {**common, "policy": p}) for p in POLICIES}
        for p, fut in futs.items():
            out[p] = fut.result()
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.close()

    steps = np.arange(0.0, hours * 3600.0, LP_STEP_S)
    price = np.array([sc.price_at(t) for t in steps])
    price = np.where(np.isfinite(price), price, site.economics.energy_usd_per_mwh)
    limit = np.array([sc.import_limit_kw_at(t, site.import_limit_kw) for t in steps])
    oracle = oracle_net_margin(site, jobs, price, limit)
    static, mine = out["static"], out["thermogate"]
    return {
        "policies": out,
        "oracle_net_margin": round(oracle, 2),
        "rejected_jobs": rejected,
        "jobs": len(jobs),
        "site": {
            "it_rated_kw": round(site.it_rated_kw, 1),
            "import_limit_kw": site.import_limit_kw,
            "oversubscription": round(site.oversubscription, 2),
            "gpus": site.gpus,
            "static_ai_gpus": ai_gpus,
        },
        "days": args.days,
        "vs_static": {
            "jct_reduction": round(1 - mine["mean_jct_s"] / static["mean_jct_s"], 3)
            if static["mean_jct_s"]
            else None,
            "queue_ratio": round(static["mean_queue_s"] / mine["mean_queue_s"], 2)
            if mine["mean_queue_s"]
            else None,
        },
        "net_margin_vs_oracle": round(mine["net_margin"] / oracle, 3) if oracle > 0 else None,
    }
