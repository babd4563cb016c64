"""``thermogate bench headroom``: the heat step, the copies, the oracle and the RC bound.

The plant is the real simulated plant and the controller the real core, in
lockstep; the study's own command runs end to end on a few simulated hours.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thermogate.controller.bench_headroom import (
    OperatingPoint,
    Snapshot,
    choose_points,
    fork,
    heat_shares,
    probe_point,
    step_run,
)
from thermogate.controller.cli import main
from thermogate.controller.simulate import Lockstep, run_simulation
from thermogate.hil.plant import Plant
from thermogate.models.baselines import RCBaseline
from thermogate.models.dataset import FEATURES, KindData
from thermogate.plc.site import demo_site


@pytest.fixture(scope="module")
def site():
    return demo_site()


@pytest.fixture(scope="module")
def frozen(site) -> Snapshot:
    """The demo hall after 20 simulated minutes of a normal day under the controller."""
    res = run_simulation(site, "normal-day", 20 / 60, scan_s=5.0, plant_dt=5.0)
    return Snapshot(OperatingPoint(0, res.sim.plant.t, "tank", site.tanks[0].name), res.sim,
                    res.controller)  # fmt: skip


def test_headroom_stops_where_protection_starts_shedding_live_and_in_the_study() -> None:
    from thermogate.controller.bench_headroom import MARGIN_K
    from thermogate.controller.core.thermal import THERMAL_SOFT_MARGIN_K
    from thermogate.models.live import HEADROOM_MARGIN_K

    assert HEADROOM_MARGIN_K == THERMAL_SOFT_MARGIN_K == MARGIN_K


def test_added_heat_warms_a_tank_and_a_cdu_that_no_meter_sees(site) -> None:
    hot, cold = Plant(site), Plant(site)
    hot.add_heat(site.tanks[0].name, 80.0)
    hot.add_heat(site.cdus[0].name, 100.0)
    for p in (hot, cold):
        for _ in range(600):
            p.step()
    assert hot.T_tank[0] > cold.T_tank[0] + 0.5
    assert hot.c_supply[0] > cold.c_supply[0] + 0.5
    assert hot.t_power[0] == pytest.approx(cold.t_power[0])  # the meters see the IT load only


@pytest.mark.parametrize("kw", [-1.0, math.nan, math.inf])
def test_added_heat_refuses_what_is_not_a_finite_non_negative_kw(site, kw: float) -> None:
    with pytest.raises(ValueError, match="finite kW >= 0"):
        Plant(site).add_heat(site.tanks[0].name, kw)


def test_added_heat_names_a_zone_that_does_not_exist(site) -> None:
    with pytest.raises(KeyError, match="no tank or CDU named 'tank99'"):
        Plant(site).add_heat("tank99", 10.0)


def test_a_worn_pump_delivers_less_flow_at_the_same_speed(site) -> None:
    new, worn = Plant(site), Plant(site)
    worn.degrade_pump(site.loops[0].pumps[0].name, 0.7)
    for p in (new, worn):
        p.step()
    assert worn.flow[0] < 0.9 * new.flow[0]
    with pytest.raises(ValueError, match=r"head fraction must be in \(0, 1\]"):
        worn.degrade_pump(site.loops[0].pumps[0].name, 0.0)


def test_a_loop_step_is_shared_by_its_tanks_and_cdus_in_proportion_to_nameplate(site) -> None:
    loop = site.loops[0].name
    shares = heat_shares(site, "loop", loop)
    assert sum(shares.values()) == pytest.approx(1.0)
    on_loop = {t.name for t in site.tanks if t.loop == loop} | {
        c.name for c in site.cdus if c.loop == loop
    }
    assert set(shares) == on_loop
    assert heat_shares(site, "tank", "tank01") == {"tank01": 1.0}


def test_points_are_spread_in_time_with_the_kinds_in_turn(site) -> None:
    pts = choose_points(site, 30, 1000.0, 90_000.0, 5.0, seed=3)
    assert [p.kind for p in pts[:6]] == ["tank", "cdu", "loop"] * 2
    times = [p.t for p in pts]
    assert times == sorted(times) and times[0] >= 1000.0 and times[-1] < 90_005.0
    assert all(t % 5.0 == 0.0 for t in times)


def test_a_step_run_leaves_the_frozen_state_untouched_and_more_heat_is_hotter(
    site, frozen: Snapshot
) -> None:
    t0 = frozen.sim.plant.t
    temps0 = frozen.sim.plant.T_tank.copy()
    none, some, more = (step_run(site, frozen, kw, math.inf) for kw in (0.0, 100.0, 300.0))
    assert none < some < more
    assert frozen.sim.plant.t == t0
    np.testing.assert_array_equal(frozen.sim.plant.T_tank, temps0)
    # a copy run again gives the same answer: the study is repeatable
    assert step_run(site, frozen, 100.0, math.inf) == some


def test_the_oracle_brackets_the_largest_step_that_stays_under_the_limit(
    site, frozen: Snapshot
) -> None:
    base = step_run(site, frozen, 0.0, math.inf)
    limit = base + 2.0  # a limit the zone reaches with a step well inside its nameplate
    rated = site.tanks[0].units * site.tanks[0].unit_power_kw
    est = {"limit_c": limit, "room_kw": rated, "rated_kw": rated,
           "served": 0.5 * rated, "learned": 0.5 * rated, "prior": 0.0, "conservative": 0.0,
           "rc": 0.05 * rated}  # fmt: skip
    res = probe_point(site, frozen, est)
    true = res["true_kw"]
    assert 0.0 < true < rated
    assert step_run(site, frozen, true, limit) <= limit
    assert step_run(site, frozen, true + 0.011 * rated, limit) > limit
    over = 0.5 * rated > true
    assert res["crossed"] == {
        "served": over,
        "learned": over,
        "prior": False,
        "conservative": False,
        "rc": False,
    }


def _rc_rows(kind: str, temp: float, power: float, ref_dx: float) -> KindData:
    names = FEATURES[kind]
    X = np.zeros((1, len(names)))
    X[0, names.index("temp")] = temp
    X[0, names.index("power_kw")] = power
    X[0, names.index("load_frac")] = power / 250.0
    X[0, names.index("temp_minus_supply")] = ref_dx
    one = np.array(["t1"], dtype=object)
    nan = np.full((1, 3), np.nan)
    return KindData(kind, names, (5, 15, 30), X, nan, np.zeros(1), one, np.array([250.0]),
                    np.array([60.0]))  # fmt: skip


@pytest.mark.parametrize(("a", "b", "c"), [(0.002, 0.05, 0.0), (0.004, 0.0, -0.5)])
def test_rc_headroom_puts_the_hottest_horizon_exactly_on_the_limit(a, b, c) -> None:
    rc = RCBaseline({"tank": {"t1": (a, b, c)}})
    rows = _rc_rows("tank", 50.0, 100.0, 10.0)
    hr = rc.headroom(rows, rows.alarm_c, margin_k=2.5, max_load_frac=10.0)["t1"]
    assert hr.limit_c == 57.5
    at_cap = _rc_rows("tank", 50.0, 100.0 + hr.extra_kw, 10.0)
    assert rc.predict(at_cap).max() == pytest.approx(57.5, abs=1e-6)


def test_rc_headroom_is_capped_by_the_nameplate_and_zero_when_over_now() -> None:
    rc = RCBaseline({"tank": {"t1": (1e-6, 0.05, 0.0)}})
    rows = _rc_rows("tank", 50.0, 100.0, 10.0)
    assert rc.headroom(rows, rows.alarm_c, margin_k=2.5)["t1"].extra_kw == pytest.approx(150.0)
    hot = _rc_rows("tank", 58.0, 100.0, 10.0)
    assert rc.headroom(hot, hot.alarm_c, margin_k=2.5)["t1"].extra_kw == 0.0


def test_a_copied_plant_and_controller_run_on_exactly_as_the_original_and_apart_from_it(
    site,
) -> None:
    """The copy's writes reach its own plant and its sensors read its own state:
    run side by side, copy and original stay identical, and a step in one does
    not reach the other."""
    res = run_simulation(site, "normal-day", 10 / 60, scan_s=5.0, plant_dt=5.0)
    sim2, ctrl2 = fork(res.sim, res.controller)
    heated = fork(res.sim, res.controller)
    heated[0].plant.add_heat(site.tanks[0].name, 200.0)
    pairs = [Lockstep(res.sim, res.controller), Lockstep(sim2, ctrl2), Lockstep(*heated)]
    for _ in range(60):
        writes = [len(lock.scan().writes) for lock in pairs]
        assert writes[0] == writes[1]
    np.testing.assert_array_equal(sim2.plant.T_tank, res.sim.plant.T_tank)
    np.testing.assert_array_equal(sim2.plant.cmd_valve, res.sim.plant.cmd_valve)
    assert heated[0].plant.T_tank[0] > res.sim.plant.T_tank[0] + 1.0
    assert heated[0].plant.cmd_valve[0] != res.sim.plant.cmd_valve[0]  # its controller answered


def test_lockstep_scans_are_the_runs_scans(site) -> None:
    """A copy continued with ``Lockstep`` is where ``run_simulation`` would have been."""
    a = run_simulation(site, "normal-day", 10 / 60, scan_s=5.0, plant_dt=5.0)
    b = run_simulation(site, "normal-day", 5 / 60, scan_s=5.0, plant_dt=5.0)
    lock = Lockstep(b.sim, b.controller)
    for _ in range(60):
        lock.scan()
    assert b.sim.plant.t == a.sim.plant.t
    np.testing.assert_allclose(b.sim.plant.T_tank, a.sim.plant.T_tank, rtol=0, atol=1e-9)


def test_bench_headroom_prints_the_promise_kept_per_kind_and_method(capsys) -> None:
    rc = main(["bench", "headroom", "--train-days", "0.15", "--days", "0.1", "--points", "4",
               "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert 1 <= out["points"] <= 4
    assert 0 <= out["violations"] <= out["points"]
    assert set(out["baselines"]) == {"learned", "prior", "conservative", "rc"}
    for res in (out, *out["baselines"].values()):
        assert sum(k["points"] for k in res["kinds"].values()) == res["points"]
    for d in out["detail"]:
        assert 0.0 <= d["served"] <= d["room_kw"] + 1e-6
        assert 0.0 <= d["true_kw"] <= d["room_kw"] + 1e-6
        assert d["runs"] >= 1
    assert set(out["met"]) == {"violations", "utilisation", "better_than_rc"}
