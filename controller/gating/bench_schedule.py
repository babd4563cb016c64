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

The bench site is the demo (its GPU side sized with ``--gpus``, by default
for a CSV trace ``PEAK_OVER_MEAN`` x its mean offered load; ``plc.sizing``)
with its import limit lowered until the installed IT load is
``OVERSUBSCRIPTION`` times what the grid connection can feed, as hybrid halls
are built. The run starts at the first timestamp of the price series and the
measured series must cover it; nothing repeats. Jobs larger than the site's
GPUs are rejected and counted.

The built-in trace follows what published cluster traces show (Philly,
Helios, Alibaba PAI): many short jobs and a few long ones holding most of the
GPU time, submitted mostly in working hours. Inference is a service with a
diurnal demand peaking at ``INFERENCE_PEAK`` of the GPUs, scaled out every
30 min in 8-GPU replicas that serve 2 h each; training offers
``TRAINING_LOAD`` of the GPUs on average, 60 % of its jobs short (1 to 8
GPUs, 10 min median) and 40 % long (8 to 128 GPUs, 3 h median, log-normal),
arriving as a Poisson process thinned to a day-time peak, checkpointing every
30 min.

Completion and queueing times count every job submitted: one still waiting
or running at the end counts with its time so far (``world``), so a policy
cannot look faster by leaving work stuck in its queue.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

import numpy as np

from thermogate.hil.scenario import Scenario, load_for_run
from thermogate.hil.scenario.jobs import DEFAULT_CHECKPOINT_S, Job, JobKind, load_jobs_csv
from thermogate.plc.equipment import Tank
from thermogate.plc.errors import ThermogateError
from thermogate.plc.site import Site, load_site
from thermogate.plc.sizing import with_gpus

from ..core import Planner
from ..side_by_side import run_side_by_side, told
from .baselines import StaticPlanner
from .cluster import Admission
from .placement import Placement
from .planner import GatingPlanner

OVERSUBSCRIPTION = 1.4  # installed IT kW / import limit kW of the bench site
SCAN_S = 5.0  # controller scan of the study; the plant steps at the same period
PEAK_OVER_MEAN = 1.5  # GPUs installed per GPU of a trace's mean offered load
POLICIES = ("static", "static_backfill", "price_threshold", "thermogate")
LP_STEP_S = 900.0


def bench_site(site: Site) -> Site:
    """The site with its import limit lowered to ``it_rated / OVERSUBSCRIPTION``."""
    return replace(site, import_limit_kw=round(site.it_rated_kw / OVERSUBSCRIPTION, 1))


#: training job mix: (share of jobs, sizes in GPUs, their weights, median run s, sigma)
_TRAINING_MIX = (
    (0.6, (1, 2, 4, 8), (0.4, 0.25, 0.2, 0.15), 600.0, 1.0),  # debugging, evaluation
    (0.4, (8, 16, 32, 64, 128), (0.35, 0.25, 0.2, 0.12, 0.08), 3 * 3600.0, 0.8),  # runs
)
INFERENCE_REPLICA_S = 2 * 3600.0  # an inference replica, once placed, serves this long
TRAINING_LOAD = 0.35  # training offers this fraction of the GPUs on average
INFERENCE_PEAK = 0.5  # inference wants this fraction of the GPUs at its daily peak


def _hump(hour: float, start: float, span: float) -> float:
    """A half-sine over ``span`` hours from ``start``; zero outside it."""
    return max(0.0, math.sin(math.pi * (hour - start) / span))


def _working_hours(hour: float) -> float:
    """Relative training submission rate: a trickle at night, a day-time peak."""
    return 0.3 + 0.7 * _hump(hour, 8.0, 12.0)


def synthetic_trace(days: float, gpus: int, seed: int = 0) -> tuple[Job, ...]:
    """The built-in trace (see the module docstring), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    end = days * 86400.0
    jobs: list[tuple[float, float, int, JobKind]] = []
    # inference: every 30 min the service scales out to its demand; replicas live 2 h
    live: list[float] = []
    t = 0.0
    while t < end:
        level = 0.35 + 0.65 * _hump((t % 86400.0) / 3600.0, 6.0, 16.0)
        want = int(INFERENCE_PEAK * gpus * level * rng.uniform(0.9, 1.1) // 8)
        live = [e for e in live if e > t]
        for _ in range(max(0, want - len(live))):
            jobs.append((t, INFERENCE_REPLICA_S, 8, "inference"))
            live.append(t + INFERENCE_REPLICA_S)
        t += 1800.0
    # training: Poisson arrivals thinned to working hours; short and long jobs
    mix = [
        (share, np.array(sz), np.array(w) / sum(w), med, sig)
        for share, sz, w, med, sig in _TRAINING_MIX
        if (np.array(sz) <= gpus).any()
    ]
    mix = [
        (sh, sz[sz <= gpus], w[sz <= gpus] / w[sz <= gpus].sum(), m, sg) for sh, sz, w, m, sg in mix
    ]
    shares = np.array([m[0] for m in mix]) / sum(m[0] for m in mix)
    mean_gpu_s = sum(
        sh * float((sz * w).sum()) * med * math.exp(sg**2 / 2)
        for sh, (_, sz, w, med, sg) in zip(shares, mix, strict=True)
    )
    mean_shape = float(np.mean([_working_hours(h / 60.0) for h in range(24 * 60)]))
    rate = TRAINING_LOAD * gpus / mean_gpu_s / mean_shape  # the day-time peak rate
    t = float(rng.exponential(1 / rate))
    while t < end:
        if rng.uniform() < _working_hours((t % 86400.0) / 3600.0):
            _, sizes, weights, median, sigma = mix[int(rng.choice(len(mix), p=shares))]
            dur = float(min(86400.0, median * rng.lognormal(0.0, sigma)))
            jobs.append((t, max(60.0, dur), int(rng.choice(sizes, p=weights)), "training"))
        t += float(rng.exponential(1 / rate))
    jobs.sort(key=lambda j: j[0])
    return tuple(
        Job(i, s, d, g, k, DEFAULT_CHECKPOINT_S if k == "training" else math.inf)
        for i, (s, d, g, k) in enumerate(jobs)
    )


def mean_gpu_demand(jobs: tuple[Job, ...], seconds: float) -> float:
    """The trace's mean offered load in GPUs over its first ``seconds``: the work of
    the jobs submitted in them (a trace longer than the run once sized the hall for
    all of its work within the run's days)."""
    if seconds <= 0:
        return 0.0
    return sum(j.gpu_s for j in jobs if j.submit_s < seconds) / seconds


def _planner(policy: str, site: Site, ai_gpus: int) -> Planner:
    if policy == "thermogate":
        return GatingPlanner(site)
    return StaticPlanner(site, ai_gpus, price_threshold=policy == "price_threshold")


def _scenario(name: str, weather: str | None, prices: str | None, hours: float) -> Scenario:
    """The study's scenario: measured series must cover the run, which starts at
    the first timestamp of the prices (``load_for_run``, strict)."""
    return load_for_run(name, weather, prices, hours=hours, strict=True)


def default_gpus(jobs: tuple[Job, ...], seconds: float) -> int:
    """GPUs for a trace: its mean offered load x ``PEAK_OVER_MEAN`` (a hall is built
    for its peak AI demand, not its average), in whole 8-GPU nodes.

    A job larger than the hall so sized is left out and the hall sized again (it
    is rejected in the run, and counted): one 100,000-GPU row in a trace of small
    jobs once sized a 64-GPU hall at 25,000 GPUs."""

    def size(of: tuple[Job, ...]) -> int:
        return max(8, 8 * math.ceil(PEAK_OVER_MEAN * mean_gpu_demand(of, seconds) / 8))

    gpus = size(jobs)
    while True:
        fit = tuple(j for j in jobs if j.gpus <= gpus)
        smaller = size(fit)
        if smaller >= gpus:
            return gpus
        gpus = smaller


def _run_policy(job: dict[str, Any]) -> dict[str, Any]:
    from ..simulate import run_simulation

    site: Site = job["site"]
    sc = _scenario(job["scenario"], job["weather"], job["prices"], job["hours"])
    policy = job["policy"]
    admission: Admission = "fifo" if policy == "static" else "backfill"
    r = run_simulation(
        site,
        sc,
        job["hours"],
        scan_s=SCAN_S,
        plant_dt=SCAN_S,
        planner=_planner(policy, site, job["ai_gpus"]),
        jobs=job["jobs"],
        admission=admission,
        progress=told(job),
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


def _mining_tangents(site: Site) -> list[tuple[float, list[tuple[float, float]]]]:
    """Mining revenue as lines over-estimating it: per group of identical ASIC
    tanks, its kW and its lines ``($/h at 0 kW, $/h per kW)``. A group's revenue
    at ``m`` kW is at most every one of its lines at ``m`` (``Tank.hashrate_at``
    is concave: linear up to the miners' minimum, then a power law; tangents of
    a concave curve lie above it); ``n`` alike tanks earn most with the power
    split evenly."""
    groups: dict[tuple[float, ...], list[Tank]] = {}
    for t in site.tanks:
        if t.workload == "asic":
            key = (
                t.units,
                t.unit_power_kw,
                t.miner_j_per_th,
                t.miner_hash_exponent,
                t.miner_min_power_pct,
            )
            groups.setdefault(key, []).append(t)
    usd_h_per_th_s = site.economics.hashprice_usd_per_th_day / 24.0
    out: list[tuple[float, list[tuple[float, float]]]] = []
    for tanks in groups.values():
        t, n = tanks[0], len(tanks)
        r, e = t.rated_kw, t.miner_hash_exponent
        x_min = t.miner_min_kw
        th_full = t.hashrate_at(r)
        lines = [(0.0, t.hashrate_at(x_min) / x_min)] if x_min > 0 else []
        for x in np.linspace(max(x_min, 1e-3 * r), r, 12):
            slope = th_full * e * x ** (e - 1.0) / r**e
            lines.append((th_full * (x / r) ** e - slope * x, slope))
        # one tank's (TH/s at 0 kW, TH/s per kW) -> n alike tanks' $/h over their kW
        out.append((n * r, [(n * a * usd_h_per_th_s, b * usd_h_per_th_s) for a, b in lines]))
    return out


def oracle_net_margin(
    site: Site, jobs: tuple[Job, ...], price: np.ndarray, limit_kw: np.ndarray
) -> float:
    """The hindsight LP bound (module docstring); ``price``/``limit_kw`` per LP step.

    Per step: mining kW and revenue per group of alike ASIC tanks (below every
    line of ``_mining_tangents``), busy inference and training GPUs. Power: mining
    plus busy GPUs' dynamic power within the import limit less the GPUs' idle
    power. Work: by the end of each step no class has done more GPU-hours than
    its jobs could have, each at most at full rate on its own GPUs from its
    submission (and never more than all of it). Jobs larger than the site are
    rejected, as the cluster rejects them.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack, identity, tril, vstack

    n = len(price)
    dt_h = LP_STEP_S / 3600.0
    econ = site.economics
    pl = Placement(site)
    idle_kw = sum(ld.idle_kw for ld in pl.loads)
    kw_per_gpu = sum(ld.rated_kw - ld.idle_kw for ld in pl.loads) / max(pl.gpus, 1)
    groups = _mining_tangents(site)
    g = len(groups)
    e_n = identity(n, format="csr")
    z = coo_matrix((n, n))
    # variables, blocks of n steps: mining kW per group, mining $/h per group,
    # busy inference GPUs, busy training GPUs
    inf, tr = 2 * g, 2 * g + 1

    def row(blocks: dict[int, Any]) -> Any:
        return hstack([blocks.get(k, z) for k in range(2 * g + 2)])

    price_kwh = price / 1000.0
    c = np.concatenate(
        [price_kwh * dt_h] * g  # mining energy
        + [np.full(n, -dt_h)] * g  # mining revenue
        + [
            -(econ.inference_usd_per_gpu_h - price_kwh * kw_per_gpu) * dt_h,
            -(econ.training_usd_per_gpu_h - price_kwh * kw_per_gpu) * dt_h,
        ]
    )
    power = {k: e_n for k in range(g)} | {inf: kw_per_gpu * e_n, tr: kw_per_gpu * e_n}
    a_rows = [row(power), row({inf: e_n, tr: e_n})]  # the import, the GPUs installed
    b_rows = [np.maximum(limit_kw - idle_kw, 0.0), np.full(n, float(pl.gpus))]
    for k, (_, lines) in enumerate(groups):  # revenue <= a0 + slope x kW, every line
        for a0, slope in lines:
            a_rows.append(row({g + k: e_n, k: -slope * e_n}))
            b_rows.append(np.full(n, a0))
    edges = (np.arange(n) + 1) * LP_STEP_S
    cum = tril(np.ones((n, n)), format="csr") * dt_h
    for kind, var in (("inference", inf), ("training", tr)):
        ok = [j for j in jobs if j.kind == kind and j.gpus <= pl.gpus]
        if ok:
            sub = np.array([j.submit_s for j in ok])
            gpus = np.array([float(j.gpus) for j in ok])
            work = np.array([j.gpu_s for j in ok])
            ran = np.maximum(edges[:, None] - sub[None, :], 0.0) * gpus[None, :]
            can = np.minimum(ran, work[None, :]).sum(axis=1) / 3600.0
        else:
            can = np.zeros(n)
        a_rows.append(row({var: cum}))
        b_rows.append(can)
    res = linprog(
        c,
        A_ub=vstack(a_rows).tocsr(),
        b_ub=np.concatenate(b_rows),
        bounds=[(0.0, cap) for cap, _ in groups for _ in range(n)] + [(0.0, None)] * ((g + 2) * n),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"oracle LP failed: {res.message}")
    return float(-res.fun - float((price_kwh * idle_kw * dt_h).sum()))


def bench_schedule(args: argparse.Namespace) -> dict[str, Any]:
    site = load_site(getattr(args, "site", None))
    hours = args.days * 24.0
    jobs = load_jobs_csv(args.trace) if args.trace else None
    gpus = args.gpus
    if gpus is None and jobs is not None:
        gpus = default_gpus(jobs, hours * 3600.0)
    if gpus is not None and gpus != site.gpus:
        site = with_gpus(site, gpus)
    site = bench_site(site)
    if site.gpus == 0:  # nothing to gate between mining and AI
        raise ThermogateError(
            f"bench schedule: site '{site.name}' has no GPUs (no GPU tanks or rack rows): "
            "the bench gates AI work against mining"
        )
    if jobs is None:
        jobs = synthetic_trace(args.days, site.gpus)
    rejected = sum(1 for j in jobs if j.gpus > site.gpus)
    ai_gpus = min(site.gpus, round(mean_gpu_demand(jobs, hours * 3600.0)))
    # read here first, so a bad CSV stops the bench before any policy runs; the
    # workers read it again (a scenario does not pickle)
    sc = _scenario(args.scenario, args.weather, args.prices, hours)
    common = {
        "site": site,
        "scenario": args.scenario,
        "weather": args.weather,
        "prices": args.prices,
        "hours": hours,
        "jobs": jobs,
        "ai_gpus": ai_gpus,
    }
    out = run_side_by_side(
        _run_policy,
        {p: {**common, "policy": p} for p in POLICIES},
        hours,
        show_progress=not args.json,
    )

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
