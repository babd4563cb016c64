"""The schedule benchmark's parts: its site, trace, baselines and hindsight bound."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from thermogate.controller.core import LoadInfo, SiteNow
from thermogate.controller.gating.baselines import NON_IT_FRAC, StaticPlanner
from thermogate.controller.gating.bench_schedule import (
    OVERSUBSCRIPTION,
    bench_site,
    default_gpus,
    mean_gpu_demand,
    oracle_net_margin,
    synthetic_trace,
)
from thermogate.controller.gating.placement import Placement
from thermogate.hil.scenario.jobs import DEFAULT_CHECKPOINT_S, Job
from thermogate.plc.site import Site


def test_the_bench_site_cannot_run_everything_at_once(site: Site):
    b = bench_site(site)
    assert b.oversubscription == pytest.approx(OVERSUBSCRIPTION, rel=1e-3)
    assert b.it_rated_kw > b.import_limit_kw and b.gpus == site.gpus


def test_the_built_in_trace_is_deterministic_and_offers_about_what_it_says(site: Site):
    a = synthetic_trace(2.0, site.gpus, seed=3)
    assert a == synthetic_trace(2.0, site.gpus, seed=3)
    assert a != synthetic_trace(2.0, site.gpus, seed=4)
    assert all(j.gpus <= site.gpus for j in a)
    assert [j.submit_s for j in a] == sorted(j.submit_s for j in a)
    load = mean_gpu_demand(a, 2 * 86400.0) / site.gpus
    assert 0.4 < load < 0.8  # ~35 % training + a diurnal inference demand
    kinds = {j.kind for j in a}
    assert kinds == {"training", "inference"}


def _loads(site: Site) -> list[LoadInfo]:
    out = [LoadInfo(t.name, t.workload_class, t.rated_kw, t.rated_kw, t.loop) for t in site.tanks]
    loop = {c.name: c.loop for c in site.cdus}
    out += [
        LoadInfo(r.name, r.workload_class, r.rated_kw, r.rated_kw, loop[r.cdu])
        for r in site.rack_rows
    ]
    return out


def test_the_static_split_gives_ai_its_mean_gpus_and_mining_the_rest(site: Site):
    b = bench_site(site)
    p = StaticPlanner(b, ai_gpus=b.gpus // 2)
    assert p.gpu_capacity == b.gpus // 2
    plan = p.plan(0.0, _loads(b), {}, SiteNow(b.import_limit_kw, math.nan, math.nan, 40.0))
    mining = sum(plan[t.name] for t in b.tanks if t.workload == "asic")
    ai = sum(plan.values()) - mining
    assert ai + mining == pytest.approx((1 - NON_IT_FRAC) * b.import_limit_kw)
    # the same plan whatever the price, unless the threshold variant is asked for
    expensive = SiteNow(b.import_limit_kw, math.nan, math.nan, 10_000.0)
    assert p.plan(0.0, _loads(b), {}, expensive) == plan
    q = StaticPlanner(b, ai_gpus=b.gpus // 2, price_threshold=True)
    off = q.plan(0.0, _loads(b), {}, expensive)
    assert all(off[t.name] == 0.0 for t in b.tanks if t.workload == "asic")
    assert q.why()["tank01"] == "price above mining breakeven"


def test_the_hindsight_bound_on_cases_worked_by_hand(site: Site):
    b = bench_site(site)
    n = 8  # two hours of 15-minute steps
    limit = np.full(n, b.import_limit_kw)
    # free energy and no jobs: the miners take all the import, split evenly
    miners = [t for t in b.tanks if t.workload == "asic"]
    idle = sum(ld.idle_kw for ld in Placement(b).loads)  # the GPU nodes stay on
    each = min(miners[0].rated_kw, (b.import_limit_kw - idle) / len(miners))
    usd_h = len(miners) * miners[0].hashrate_at(each) * b.economics.hashprice_usd_per_th_day / 24
    got = oracle_net_margin(b, (), np.zeros(n), limit)
    assert usd_h * 2 <= got <= usd_h * 2 * 1.002  # tangents over-estimate, by little
    # energy dearer than mining pays: no mining; one job's work earns its price
    job = Job(0, 0.0, 3600.0, 8, "training", 1800.0)
    price = np.full(n, 1000.0)
    got = oracle_net_margin(b, (job,), price, limit)
    assert got < 0  # the GPUs' idle power still costs at that price
    with_job = got - oracle_net_margin(b, (), price, limit)
    pl = Placement(b)
    kw_per_gpu = sum(ld.rated_kw - ld.idle_kw for ld in pl.loads) / pl.gpus
    # 8 GPU-hours sold, their dynamic power bought at 1 $/kWh
    assert with_job == pytest.approx(8 * (b.economics.training_usd_per_gpu_h - kw_per_gpu))


DAYS = ("--days", "0.05")


@pytest.mark.timeout(600)
def test_bench_schedule_runs_every_policy_in_one_run_and_prints_json():
    out = subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", "bench", "schedule", *DAYS, "--json"],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["policies"]) == {"static", "static_backfill", "price_threshold", "thermogate"}
    for name, p in r["policies"].items():
        assert p["finished_jobs"] + p["pending_jobs"] == r["jobs"] - r["rejected_jobs"], name
        assert p["trips"] == 0 and p["thermal_violation_c_min"] == 0, name
    assert r["site"]["oversubscription"] == OVERSUBSCRIPTION
    # the bound is a bound
    assert max(p["net_margin"] for p in r["policies"].values()) <= r["oracle_net_margin"]


def test_the_offered_load_counts_only_the_jobs_submitted_within_the_run():
    # A trace of several days given to a one-day bench once sized the hall for all
    # of its work within that day.
    day = 86400.0
    jobs = tuple(Job(i, i * 3600.0, 3600.0, 8, "training", DEFAULT_CHECKPOINT_S) for i in range(72))
    assert mean_gpu_demand(jobs, day) == pytest.approx(24 * 8 * 3600.0 / day)
    assert mean_gpu_demand(jobs, 3 * day) == pytest.approx(8.0)


def test_one_huge_job_does_not_size_the_hall_but_a_large_real_one_does():
    day = 86400.0
    small = tuple(
        Job(i, i * 1200.0, 3600.0, 8, "training", DEFAULT_CHECKPOINT_S) for i in range(60)
    )
    alone = default_gpus(small, day)
    huge = Job(60, 100.0, 3600.0, 100_000, "training", DEFAULT_CHECKPOINT_S)
    assert default_gpus((*small, huge), day) == alone  # rejected in the run, not sized for
    big = Job(60, 100.0, day, 256, "training", DEFAULT_CHECKPOINT_S)  # a day on 256 GPUs
    assert default_gpus((*small, big), day) >= 256
