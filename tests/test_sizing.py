"""Sizing the GPU side of a site: more of the same equipment, cooled and fed alike."""

from __future__ import annotations

from dataclasses import replace

import pytest

from thermogate.controller.simulate import run_simulation
from thermogate.hil.scenario.jobs import Job
from thermogate.plc.errors import ConfigError
from thermogate.plc.site import Site
from thermogate.plc.sizing import with_gpus


def _loop(site: Site, name: str):
    return next(lp for lp in site.loops if lp.name == name)


@pytest.mark.parametrize("gpus", [96, 2000])
def test_the_gpu_side_scales_with_its_cooling_and_breakers_and_mining_stays(site, gpus):
    big = with_gpus(site, gpus)
    assert abs(big.gpus - gpus) <= 8 * (len(site.rack_rows) + 2)  # whole nodes
    k = big.gpus / site.gpus
    mining = [t for t in site.tanks if t.workload == "asic"]
    assert [t for t in big.tanks if t.workload == "asic"] == mining
    for old, new in zip(site.tanks, big.tanks, strict=True):
        if old.workload == "gpu":
            f = new.units / old.units
            assert new.hx_ua_kw_k == pytest.approx(old.hx_ua_kw_k * f)
            assert new.volume_l == pytest.approx(old.volume_l * f)
            assert new.unit_power_kw == old.unit_power_kw  # a node is a node
    # the AI loop carries k times the heat: its dry coolers and pumps grow alike
    old_ai, new_ai = _loop(site, "ailoop1"), _loop(big, "ailoop1")
    grow = new_ai.dry_coolers[0].capacity_kw / old_ai.dry_coolers[0].capacity_kw
    assert grow == pytest.approx(k, rel=0.05)
    assert new_ai.pumps[0].rated_flow_m3h == pytest.approx(old_ai.pumps[0].rated_flow_m3h * grow)
    assert _loop(big, "loop1") == _loop(site, "loop1")  # the mining loop is untouched
    feeders = {f.name: f for f in big.feeders}
    assert feeders["feeder_ai1"].breaker.rating_a == pytest.approx(2000.0 * grow, rel=0.05)
    assert feeders["feeder_m1"].breaker.rating_a == 3200.0
    assert big.import_limit_kw == site.import_limit_kw  # the caller's to choose


def test_a_site_sized_to_2000_gpus_runs_them_all_at_full_power_within_its_limits(site):
    big = replace(with_gpus(site, 2000), import_limit_kw=20_000.0)
    every_gpu = [Job(i, 0.0, 7200.0, 8, "training", 1800.0) for i in range(big.gpus // 8)]
    r = run_simulation(big, "heatwave", 1.0, scan_s=5.0, plant_dt=5.0, jobs=every_gpu)
    assert r.summary["trips"] == 0 and r.summary["limit_violation_c_min"] == 0.0
    plant = r.sim.plant
    gpu_tanks = [i for i, t in enumerate(big.tanks) if t.workload == "gpu"]
    drawn = float(plant.t_power[gpu_tanks].sum() + plant.r_power.sum())
    rated = sum(big.tanks[i].rated_kw for i in gpu_tanks) + sum(r.rated_kw for r in big.rack_rows)
    assert drawn > 0.9 * rated and rated > 2.4 * 979.0  # 2.6x the demo's GPU power


def test_a_site_without_gpus_cannot_be_sized(site):
    miners = tuple(t for t in site.tanks if t.workload == "asic")
    with pytest.raises(ConfigError, match="no GPU equipment"):
        with_gpus(replace(site, tanks=miners, rack_rows=()), 100)
    with pytest.raises(ConfigError, match="at least 1"):
        with_gpus(site, 0)
