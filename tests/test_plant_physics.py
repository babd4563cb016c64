"""The simulated plant's physics: energy, steady states, hydraulics, heat transfer,
protection, throttling, breakers, fouling, sensors and the H200 calibration.

Every test runs the real plant (``thermogate.hil.plant.Plant``) with the real PLC
logic in lockstep; nothing is mocked. Tests that want normal operation change
``plant.heartbeat`` every step (see ``run``), otherwise the PLC's watchdog takes
the plant to its safe state after ``heartbeat_timeout_s``. Plants built with
``sensors=False`` are deterministic and noise-free.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from statistics import median

import numpy as np
import pytest

from thermogate.hil.plant import GPU_IDLE_W, GPU_TDP_W, Environment, Plant, _hx
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import parse_scenario
from thermogate.plc.errors import ConfigError
from thermogate.plc.site import Breaker, Site, demo_site_text, parse_site_text

AMBIENT_C = 25.0
# The real H200 load-step measurement the GPU model is calibrated on; shipped
# with the plant (a copy of shared/data/gpu_step_h200.csv).
GPU_STEP_CSV = Path(str(resources.files("thermogate.hil.data").joinpath("gpu_step_h200.csv")))


# -- helpers ------------------------------------------------------------------------


def make_plant(
    site: Site,
    *,
    ambient_c: float = AMBIENT_C,
    demand: float = 0.65,
    training: float = 0.95,
    sensors: bool = False,
    seed: int = 0,
) -> Plant:
    env = Environment(
        ambient_c=lambda t: ambient_c, gpu_demand=lambda t: demand, training_demand=training
    )
    return Plant(site, env=env, sensors=sensors, seed=seed)


def beat(plant: Plant) -> None:
    plant.heartbeat = (plant.heartbeat + 1) % 65536


def run(plant: Plant, seconds: float) -> None:
    """Step ``seconds`` of simulated time with a live controller heartbeat."""
    for _ in range(round(seconds / plant.dt)):
        beat(plant)
        plant.step()


def run_until(plant: Plant, cond: Callable[[], bool], max_s: float) -> float | None:
    """Step (with heartbeat) until ``cond()``; the plant time it became true, or None."""
    for _ in range(round(max_s / plant.dt)):
        beat(plant)
        plant.step()
        if cond():
            return plant.t
    return None


def idx(names: list[str], name: str) -> int:
    return names.index(name)


def tanks_on(site: Site, loop: str) -> np.ndarray:
    return np.array([t.loop == loop for t in site.tanks])


def asic(site: Site) -> np.ndarray:
    return np.array([t.workload == "asic" for t in site.tanks])


def set_all(plant: Plant, suffix: str, names: list[str], value: float) -> None:
    for n in names:
        plant.write(f"{n}.{suffix}", value)


# -- energy -------------------------------------------------------------------------


def test_energy_balance_closes_within_one_percent_over_a_simulated_normal_day(site):
    # stepped at the studies' 5 s: the books close by construction at any step,
    # and the day costs a fifth of the time it does at 1 s
    sp = ScenarioPlant(site, "normal-day", sensors=False, dt=5.0)
    plant = sp.plant
    stored0 = plant.stored_heat_kj()
    fluxes_kj = 0.0  # heat sources summed here from the plant's own power state
    for _ in range(86400 // 5):
        beat(plant)
        sp.step()
        fluxes_kj += plant.dt * float(
            plant.t_power.sum() + plant.r_power.sum() + plant.pump_kw.sum()
        )
    led = plant.ledger
    d_stored = plant.stored_heat_kj() - stored0
    assert plant.t == 86400.0
    assert not plant.plc.safe_state and not plant.plc.any_interlock(), plant.events
    assert led.heat_in_kj > 1e8  # a real day of a multi-MW hall, not an idle plant
    imbalance = led.heat_in_kj - (led.heat_rejected_kj + d_stored)
    assert abs(imbalance) <= 0.01 * led.heat_in_kj
    # the ledger books exactly the heat the loads and pumps put into the fluids...
    assert led.heat_in_kj == pytest.approx(fluxes_kj, rel=1e-9)
    # ...which is the IT energy plus (part of) the cooling energy, as metered
    assert led.it_kwh * 3600 <= led.heat_in_kj <= (led.it_kwh + led.cooling_kwh) * 3600


def test_tank_heat_capacity_is_dielectric_volume_times_0_8_kg_per_l_times_cp_2_1(site):
    plant = make_plant(site)
    volumes = np.array([t.volume_l for t in site.tanks])
    assert all(t.fluid_density_kg_l == pytest.approx(0.8) for t in site.tanks)
    assert all(t.fluid_cp_kj_kgk == pytest.approx(2.1) for t in site.tanks)
    np.testing.assert_allclose(plant.params.t_cap, volumes * 0.8 * 2.1, rtol=1e-12)
    # one kWh into a 2000 L tank warms it by ~1.07 K
    i = next(i for i, t in enumerate(site.tanks) if t.volume_l == 2000.0)
    assert 3600.0 / plant.params.t_cap[i] == pytest.approx(1.07, abs=0.01)


# -- steady state -------------------------------------------------------------------


@pytest.fixture(scope="module")
def steady(site) -> tuple[Plant, dict[str, np.ndarray]]:
    """Three simulated hours at 25 degC with the default commands (read-only!)."""
    plant = make_plant(site)
    run(plant, 3 * 3600 - 1800)
    before = {"tank": plant.T_tank.copy(), "supply": plant.T_cold.copy()}
    run(plant, 1800)
    return plant, before


def test_default_commands_settle_to_a_steady_state_within_hours(steady):
    plant, half_hour_ago = steady
    assert np.abs(plant.T_tank - half_hour_ago["tank"]).max() < 0.05
    assert np.abs(plant.T_cold - half_hour_ago["supply"]).max() < 0.05
    assert not plant.plc.safe_state and not plant.plc.any_interlock(), plant.events


def test_steady_miner_tank_fluid_is_between_40_and_58_c(steady, site):
    plant, _ = steady
    miners = plant.T_tank[asic(site)]
    assert miners.min() >= 40.0 and miners.max() <= 58.0, miners


def test_steady_loop_supply_is_2_to_15_k_above_ambient(steady):
    plant, _ = steady
    rise = plant.T_cold - plant.ambient
    assert (rise >= 2.0).all() and (rise <= 15.0).all(), rise


def test_steady_pue_is_between_1_01_and_1_15(steady):
    plant, _ = steady
    assert 1.01 <= plant.pue <= 1.15, plant.pue
    assert plant.site_kw == pytest.approx(
        plant.it_kw + plant.cooling_kw + 15.0 + 0.005 * plant.it_kw, rel=1e-9
    )


def test_steady_gpu_dies_stay_below_87_c_and_miner_chips_below_throttle(steady, site):
    plant, _ = steady
    assert (plant.r_gpu_temp < 87.0).all(), plant.r_gpu_temp
    assert (plant.r_gpu_temp > plant.c_supply).all()  # powered dies sit above their coolant
    gpu_tank = ~asic(site)
    assert (plant.t_chip[gpu_tank] < 87.0).all(), plant.t_chip
    assert (plant.t_chip <= plant.params.t_throttle + 1e-9).all()


def test_everything_at_full_power_needs_more_than_the_grid_connection_feeds(steady, site):
    plant, _ = steady  # the plant alone: no planner chooses what runs
    assert 1.3 * site.import_limit_kw < plant.site_kw < 1.15 * site.it_rated_kw


def test_steady_pdu_and_feeder_loads_are_below_their_breakers_continuous_rating(steady, site):
    plant, _ = steady
    breakers = [*(d.breaker for d in site.pdus), *(f.breaker for f in site.feeders)]
    continuous_a = np.array([b.rating_a * b.continuous_pct / 100.0 for b in breakers])
    assert (plant.b_current < continuous_a).all(), plant.b_current / continuous_a
    assert plant.b_closed.all()


def test_dry_cooler_approach_at_full_fan_is_5_to_10_k_at_design_load(site):
    plant = make_plant(site)
    dcs = site.dry_coolers
    set_all(plant, "fan_cmd", [d.name for d in dcs], 100)
    set_all(plant, "speed_cmd", [f"{lp.name}.pump_a" for lp in site.loops], 100)
    set_all(plant, "valve_cmd", [t.name for t in site.tanks], 100)
    set_all(plant, "valve_cmd", [c.name for c in site.cdus], 100)
    run(plant, 2400)
    assert (plant.fan_speed == 1.0).all()
    approach = plant.dc_out - plant.ambient
    # At fixed water and air flows a coil is linear in its entering temperature
    # difference: the approach scales with the duty, so scale it to the design duty.
    capacity = np.array([d.capacity_kw for d in dcs])
    assert (plant.q_dc > 0.4 * capacity).all(), plant.q_dc
    at_design = approach * capacity / plant.q_dc
    assert (at_design >= 5.0).all() and (at_design <= 10.0).all(), at_design
    assert (plant.T_cold - plant.ambient < 10.0).all()


# -- hydraulics: affinity laws ----------------------------------------------------------


def test_pump_affinity_laws_flow_linear_dp_square_power_cube_with_valves_fixed(site):
    plant = make_plant(site)
    pumps = [p.name for p in site.pumps]
    duty = [idx(pumps, f"{lp.name}.pump_a") for lp in site.loops]

    def settle(speed: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        set_all(plant, "speed_cmd", [pumps[i] for i in duty], speed)
        run(plant, 30)
        np.testing.assert_allclose(plant.pump_speed[duty], speed / 100.0)
        return plant.flow.copy(), plant.dp.copy(), plant.pump_kw[duty].copy()

    valves = plant.valve_pos.copy()
    q1, dp1, p1 = settle(100)
    q2, dp2, p2 = settle(50)
    np.testing.assert_array_equal(plant.valve_pos, valves)  # the system curve did not move
    np.testing.assert_allclose(q2 / q1, 0.5, rtol=0.02)
    np.testing.assert_allclose(dp2 / dp1, 0.25, rtol=0.02)
    np.testing.assert_allclose(p2 / p1, 0.125, rtol=0.02)
    # and the rated point is credible: full speed stays near the pump's nameplate power
    rated = np.array([site.pumps[i].rated_power_kw for i in duty])
    assert (p1 < 1.3 * rated).all() and (p1 > 0.3 * rated).all()


def test_a_slow_standby_beside_the_duty_pump_adds_nothing_and_takes_nothing(site):
    """Parallel pumps at different speeds meet at one head: a standby whose
    shut-off head is below it delivers nothing (its check valve shuts). The mean
    speed once let a standby at 5 % halve a duty pump's head at 100 %."""
    plant = make_plant(site)
    plant.pump_speed[:] = 0.0
    plant.pump_speed[0] = 1.0  # loop1.pump_a alone
    plant._hydraulics()
    alone = (plant.dp[0], plant.flow[0], plant.pump_kw[0])
    for standby in (0.05, 0.5):
        plant.pump_speed[1] = standby
        plant._hydraulics()
        assert (plant.dp[0], plant.flow[0], plant.pump_kw[0]) == pytest.approx(alone)
        assert plant.pump_kw[1] == 0.0
    plant.pump_speed[1] = 1.0  # both at one speed: the closed form ...
    plant._hydraulics()
    both = (plant.dp[0], plant.flow[0], plant.pump_kw[0])
    assert both[0] > alone[0] and both[1] > alone[1]
    assert plant.pump_kw[0] == pytest.approx(plant.pump_kw[1])
    plant.pump_speed[1] = 1.0 - 1e-6  # ... and the uneven one agree where they meet
    plant._hydraulics()
    assert (plant.dp[0], plant.flow[0], plant.pump_kw[0]) == pytest.approx(both, rel=1e-4)
    plant.pump_speed[1] = 0.99  # a standby near speed shares, less than the duty pump
    plant._hydraulics()
    assert alone[0] < plant.dp[0] < both[0]
    assert 0.0 < plant.pump_kw[1] < plant.pump_kw[0]


def test_dry_cooler_fan_power_follows_speed_cubed(site):
    plant = make_plant(site)
    names = [d.name for d in site.dry_coolers]
    set_all(plant, "fan_cmd", names, 100)
    run(plant, 30)
    full = plant.fan_kw.copy()
    fans_kw = np.array([d.fans * d.fan_power_kw for d in site.dry_coolers])
    np.testing.assert_allclose(full, fans_kw, rtol=1e-9)
    set_all(plant, "fan_cmd", names, 50)
    run(plant, 30)
    np.testing.assert_allclose(plant.fan_kw / full, 0.125, rtol=0.02)


# -- heat transfer ---------------------------------------------------------------------


def test_counterflow_hx_duty_rises_with_either_flow_and_never_beats_cmin_dt():
    ua = np.full(5, 30.0)
    dt_in = np.full(5, 20.0)
    rates = np.array([2.0, 5.0, 10.0, 25.0, 80.0])
    fixed = np.full(5, 25.0)
    q_hot = _hx(ua, rates, fixed, dt_in)  # vary the hot-side flow
    q_cold = _hx(ua, fixed, rates, dt_in)  # vary the cold-side flow
    assert (np.diff(q_hot) > 0).all() and (np.diff(q_cold) > 0).all()
    assert (q_hot <= np.minimum(rates, fixed) * dt_in + 1e-9).all()
    # balanced flows take their own limit continuously; no flow moves no heat
    near = _hx(ua[:2], np.array([25.0, 25.0]), np.array([25.0, 25.0 * (1 - 1e-5)]), dt_in[:2])
    assert near[0] == pytest.approx(near[1], rel=1e-4)
    assert _hx(ua[:1], np.zeros(1), fixed[:1], dt_in[:1])[0] == 0.0
    # a huge HX approaches the ideal duty Cmin*dT
    assert _hx(np.array([1e5]), np.array([10.0]), np.array([40.0]), np.array([20.0]))[
        0
    ] == pytest.approx(200.0, rel=1e-6)


def test_closing_a_tank_valve_cuts_its_water_flow_and_heat_removal(site):
    plant = make_plant(site)
    run(plant, 300)
    a, b = 0, 1  # identical miner tanks on the same loop
    assert site.tanks[a].loop == site.tanks[b].loop
    assert plant.q_tank[a] == pytest.approx(plant.q_tank[b], rel=1e-3)  # fouling differs a bit
    plant.write(f"{site.tanks[a].name}.valve_cmd", 10)
    run(plant, 40)  # a full stroke from 60 % at 1.5 %/s
    assert plant.valve_pos[a] == 10.0
    assert plant.t_flow[a] < 0.5 * plant.t_flow[b]
    assert plant.q_tank[a] < 0.8 * plant.q_tank[b]
    run(plant, 300)
    assert plant.T_tank[a] > plant.T_tank[b] + 1.0  # the starved tank runs hotter


def test_more_dry_cooler_fan_speed_lowers_the_loop_supply_temperature(site):
    slow, fast = make_plant(site), make_plant(site)
    set_all(fast, "fan_cmd", [d.name for d in site.dry_coolers], 100)
    run(slow, 900)
    run(fast, 900)
    assert (fast.T_cold < slow.T_cold - 1.0).all(), (fast.T_cold, slow.T_cold)
    assert (fast.q_dc > 0).all()
    assert fast.cooling_kw > slow.cooling_kw


# -- failures and the PLC's interlocks ---------------------------------------------------


def test_duty_pump_trip_collapses_flow_and_low_flow_interlock_trips_the_loop_tanks(site):
    plant = make_plant(site)
    run(plant, 120)
    loop = site.loops[0]
    on_loop = tanks_on(site, loop.name)
    pumps = [p.name for p in site.pumps]
    assert not plant.cmd_pump_run[idx(pumps, f"{loop.name}.pump_b")]  # no standby running
    temp_before = plant.T_tank[on_loop].copy()
    t_fault = plant.t
    plant.set_equipment_fault("pump", f"{loop.name}.pump_a", "trip", True)

    first_low: list[float] = []

    def latched() -> bool:
        if not first_low and plant.flow[0] < loop.min_flow_m3h:
            first_low.append(plant.t)
        return bool(plant.plc.loop_low_flow[0])

    t_trip = run_until(plant, latched, 120)
    assert t_trip is not None, plant.events
    # the PLC reads the flow one scan late, then waits low_flow_trip_s
    assert loop.low_flow_trip_s <= t_trip - first_low[0] <= loop.low_flow_trip_s + 2
    assert t_trip - t_fault <= loop.low_flow_trip_s + 15  # coast-down + delay
    assert plant.T_tank[on_loop].min() > temp_before.max()  # heated without flow until the trip
    run(plant, 20)
    assert plant.flow[0] == 0.0
    assert plant.plc.tank_tripped()[on_loop].all()
    assert not plant.plc.tank_tripped()[~on_loop].any()
    assert (plant.t_power[on_loop] == 0).all() and (plant.t_power[~on_loop] > 0).all()
    assert any("low flow" in msg for _, msg in plant.events)


def test_pumps_stopped_by_the_controller_do_not_trip_low_flow_but_overheat_trips_after_throttle(
    site,
):
    plant = make_plant(site)
    run(plant, 5)
    loop = site.loops[0]
    on_loop = tanks_on(site, loop.name)
    i = int(np.flatnonzero(on_loop)[0])
    trip_c = site.tanks[i].limits.fluid_trip_c
    assert plant.t_throttled[i] == 0 and plant.T_tank[i] < trip_c - 10
    hash_full = float(plant.t_hash[i])
    for p in loop.pumps:
        plant.write(f"{p.name}.run_cmd", 0)  # a controlled stop: no low-flow trip

    seen_throttle: list[tuple[float, float]] = []  # (t, hashrate) while throttled, untripped

    def tripped() -> bool:
        if plant.t_throttled[i] > 0 and not plant.plc.tank_tripped()[i]:
            seen_throttle.append((plant.t, float(plant.t_hash[i])))
        return bool(plant.plc.tank_latched[i])

    t_trip = run_until(plant, tripped, 1800)
    assert t_trip is not None, plant.events
    assert not plant.plc.loop_low_flow.any()
    assert plant.flow[0] == 0.0
    assert plant.T_tank[i] >= trip_c
    assert seen_throttle and seen_throttle[0][0] < t_trip  # chips throttled first
    assert min(h for _, h in seen_throttle) < hash_full
    run(plant, 2)
    assert plant.plc.tank_tripped()[on_loop].all()
    assert (plant.t_power[on_loop] == 0).all()
    assert any("over-temperature" in msg for _, msg in plant.events)


# -- loads: throttling and efficiency ---------------------------------------------------


def test_miners_throttle_as_fluid_nears_chip_throttle_shedding_power_and_hashrate(site):
    plant = make_plant(site)
    run(plant, 2)
    cool, warm = 0, 1
    t = site.tanks[cool]
    headroom_fluid = t.limits.chip_throttle_c - t.chip_r_k_per_kw * t.unit_power_kw
    plant.T_tank[cool] = headroom_fluid - 3.0
    plant.T_tank[warm] = headroom_fluid + 3.0
    run(plant, 1)
    assert plant.t_throttled[cool] == 0 and plant.t_throttled[warm] == t.units
    assert plant.t_power[warm] < plant.t_power[cool]
    assert plant.t_hash[warm] < plant.t_hash[cool]
    # the throttled chips hold exactly their throttle temperature
    assert plant.t_chip[warm] == pytest.approx(t.limits.chip_throttle_c, abs=0.05)
    assert plant.t_chip[cool] < t.limits.chip_throttle_c


def test_underclocked_miners_hash_more_efficiently(site):
    plant = make_plant(site)
    full, under = 0, 1
    rated = plant.params.t_rated[full]
    plant.write(f"{site.tanks[under].name}.power_budget_kw", 0.6 * rated)
    run(plant, 2)
    assert plant.t_throttled[[full, under]].sum() == 0
    assert plant.t_power[under] == pytest.approx(0.6 * plant.t_power[full], rel=1e-6)
    pair = [full, under]
    j_per_th = dict(zip(pair, 1000.0 * plant.t_power[pair] / plant.t_hash[pair], strict=True))
    assert j_per_th[full] == pytest.approx(16.5, rel=0.05)
    assert j_per_th[under] < j_per_th[full]
    # hashrate falls less than power does
    assert plant.t_hash[under] > 0.6 * plant.t_hash[full]


# -- breakers ------------------------------------------------------------------------------


def test_breaker_trip_time_falls_with_current_and_is_infinite_up_to_pickup():
    for curve in Breaker.CURVES:
        b = Breaker(rating_a=500.0, curve=curve)
        pickup = 500.0 * b.pickup_pct / 100.0
        assert b.trip_time_s(0.0) == math.inf
        assert b.trip_time_s(pickup) == math.inf
        times = [b.trip_time_s(pickup * m) for m in (1.05, 1.2, 1.5, 2.0, 5.0, 10.0, 20.0)]
        assert all(math.isfinite(x) and x > 0 for x in times)
        assert all(x > y for x, y in itertools.pairwise(times)), (curve, times)
    ei = Breaker(rating_a=100.0, curve="iec-ei", pickup_pct=100.0)
    assert ei.trip_time_s(200.0) == pytest.approx(80.0 / 3.0)  # IEC 60255 extremely inverse
    assert Breaker(rating_a=100.0, tms=0.5, pickup_pct=100.0).trip_time_s(200.0) == (
        pytest.approx(40.0 / 3.0)
    )


def test_site_with_an_undersized_pdu_breaker_is_rejected():
    text = demo_site_text()
    marker = 'name = "pdu_tank01"'
    head, tail = text.split(marker, 1)
    tail = tail.replace("rating_a = 500.0", "rating_a = 200.0", 1)
    with pytest.raises(ConfigError) as err:
        parse_site_text(head + marker + tail, "small.toml")
    assert "pdus[0].rating_a" in str(err.value)


def _set_pickup(plant: Plant, k: int, amps: float) -> None:
    """Breaker ``k`` as another frame: its design changes, so the plant's parameters
    are replaced (they are read-only: no step may change them)."""
    pickup = plant.params.b_pickup.copy()
    pickup[k] = amps
    plant.params = dataclasses.replace(plant.params, b_pickup=pickup)


def test_overloaded_pdu_breaker_trips_on_its_inverse_time_curve_and_drops_its_loads(site):
    plant = make_plant(site)
    run(plant, 5)
    pdus = [d.name for d in site.pdus]
    k = idx(pdus, site.tanks[0].pdu)
    on_pdu = np.array([t.pdu == pdus[k] for t in site.tanks])
    current = float(plant.b_current[k])
    assert current > 0.5 * site.pdus[k].breaker.rating_a
    # Make this breaker see 1.5x its pickup: as if it were a smaller frame.
    brk = site.pdus[k].breaker
    small = dataclasses.replace(brk, rating_a=current / 1.5 / (brk.pickup_pct / 100.0))
    _set_pickup(plant, k, small.rating_a * small.pickup_pct / 100.0)
    expected = small.trip_time_s(current)
    assert 20.0 < expected < 300.0
    t0 = plant.t
    t_trip = run_until(plant, lambda: not plant.b_closed[k], 2 * expected)
    assert t_trip is not None, plant.events
    assert t_trip - t0 == pytest.approx(expected, rel=0.05, abs=2.0)
    run(plant, 1)
    assert (plant.t_power[on_pdu] == 0).all() and (plant.t_power[~on_pdu] > 0).all()
    assert not plant.t_power_on[on_pdu].any()
    assert plant.b_current[k] == 0.0
    assert plant.sensors.truth_of(f"{pdus[k]}.breaker_tripped") == 1.0
    assert any(pdus[k] in msg and "tripped" in msg for _, msg in plant.events)
    assert plant.b_closed[np.arange(len(plant.b_closed)) != k].all()
    # put the real frame back and reclose remotely with the PLC reset
    _set_pickup(plant, k, brk.rating_a * brk.pickup_pct / 100.0)
    plant.write("plc.reset", 1)
    run(plant, 2)
    assert plant.b_closed.all()
    assert (plant.t_power[on_pdu] > 0).all()


# -- fouling ---------------------------------------------------------------------------------


def test_hx_fouling_lowers_tank_ua_and_heat_removal_over_days(site):
    clean, fouled = make_plant(site), make_plant(site)
    run(clean, 2)
    run(fouled, 2)
    ua0 = fouled._ua_t.copy()
    fouled.t = 10 * 86400.0  # jump ahead ten days rather than simulate them
    for attr in ("T_tank", "T_cold", "T_hot", "T_tcs"):
        setattr(fouled, attr, getattr(clean, attr).copy())
    run(clean, 1)
    run(fouled, 1)
    ua10 = fouled._ua_t
    assert (ua10 < ua0).all()
    assert (ua10 >= 0.8 * ua0).all()  # fouling erodes, it does not block
    assert (fouled.q_tank < clean.q_tank).all()
    # the same load through a fouled HX settles hotter
    run(clean, 1800)
    run(fouled, 1800)
    assert (fouled.T_tank > clean.T_tank).all()


# -- determinism and sensors --------------------------------------------------------------


def test_same_seed_gives_identical_samples_and_other_seeds_differ(site):
    def samples(seed: int) -> np.ndarray:
        plant = make_plant(site, sensors=True, seed=seed)
        run(plant, 50)
        return np.stack([plant.sensors.sample() for _ in range(3)])

    a, b, c = samples(7), samples(7), samples(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # noise is drawn per sample


def test_noise_free_plant_samples_equal_the_truth(site):
    plant = make_plant(site)
    run(plant, 10)
    np.testing.assert_array_equal(plant.sensors.sample(), plant.sensors.truth())


def _point(plant: Plant, name: str) -> float:
    return float(plant.sensors.sample()[plant.sensors.index[name]])


def test_stuck_sensor_holds_its_value_while_the_truth_moves(site):
    plant = make_plant(site)
    run(plant, 5)
    name = f"{site.tanks[0].name}.fluid_temp"
    held = plant.sensors.truth_of(name)
    plant.sensors.inject(name, "stuck")
    plant.T_tank[0] += 5.0
    run(plant, 10)
    assert abs(plant.sensors.truth_of(name) - held) > 3.0
    assert _point(plant, name) == held
    plant.sensors.clear(name)
    assert _point(plant, name) == plant.sensors.truth_of(name)


def test_drifting_sensor_walks_away_at_its_rate_per_hour(site):
    plant = make_plant(site)
    run(plant, 5)
    name = f"{site.loops[0].name}.supply_temp"
    plant.sensors.inject(name, "drift", {"rate_per_h": 3.6})
    run(plant, 500)
    assert _point(plant, name) - plant.sensors.truth_of(name) == pytest.approx(0.5, abs=1e-6)


def test_nan_sensor_reads_nan(site):
    plant = make_plant(site)
    run(plant, 2)
    plant.sensors.inject(f"{site.tanks[2].name}.fluid_temp", "nan")
    assert math.isnan(_point(plant, f"{site.tanks[2].name}.fluid_temp"))
    assert not math.isnan(_point(plant, f"{site.tanks[2].name}.fluid_temp_b"))


def test_dropout_sensor_reads_nan_some_of_the_time_and_truth_otherwise(site):
    plant = make_plant(site)
    run(plant, 2)
    name = f"{site.tanks[3].name}.fluid_temp"
    plant.sensors.inject(name, "dropout", {"p": 0.3})
    values = np.array([_point(plant, name) for _ in range(600)])
    lost = np.isnan(values)
    assert 0.2 < lost.mean() < 0.4
    np.testing.assert_array_equal(values[~lost], plant.sensors.truth_of(name))


def test_spiking_sensor_adds_its_magnitude_to_some_samples(site):
    plant = make_plant(site)
    run(plant, 2)
    name = f"{site.tanks[0].name}.fluid_temp"
    truth = plant.sensors.truth_of(name)
    plant.sensors.inject(name, "spike", {"magnitude": 25.0, "p": 0.2})
    values = np.array([_point(plant, name) for _ in range(600)])
    spiked = values != truth
    assert 0.12 < spiked.mean() < 0.28
    np.testing.assert_allclose(values[spiked], truth + 25.0)


def test_unknown_sensor_faults_and_points_are_rejected(site):
    plant = make_plant(site)
    with pytest.raises(KeyError):
        plant.sensors.inject("tank01.fluid_temp", "melted")
    with pytest.raises(KeyError):
        plant.sensors.inject("tank99.fluid_temp", "nan")


# -- GPU calibration against the real H200 step ---------------------------------------------


def _h200_step() -> tuple[float, float, float, float]:
    """(idle die degC, loaded die degC, idle W, loaded W) from the measurement."""
    if not GPU_STEP_CSV.is_file():
        pytest.fail(
            f"H200 step measurement not found at {GPU_STEP_CSV.resolve()}: it is part of the "
            "shared folder beside the repository (shared/data/gpu_step_h200.csv)"
        )
    with GPU_STEP_CSV.open(newline="", encoding="utf-8") as fh:
        rows = [
            (float(r["t_s"]), r["phase"], float(r["power_w"]), float(r["gpu_temp_c"]))
            for r in csv.DictReader(fh)
        ]
    t_step = min(t for t, ph, _, _ in rows if ph == "load")
    t_end = max(t for t, ph, _, _ in rows if ph == "load")
    idle = [r for r in rows if r[1] == "idle" and r[0] >= t_step - 10.0]
    # the die settles within about a second; the slow creep after that is the coolant's
    jump = [r for r in rows if r[1] == "load" and t_step + 2.0 <= r[0] <= t_step + 6.0]
    held = [r for r in rows if r[1] == "load" and t_step + 2.0 <= r[0] <= t_end]
    assert len(idle) > 20 and len(jump) > 20
    return (
        median(r[3] for r in idle),
        median(r[3] for r in jump),
        median(r[2] for r in idle),
        median(r[2] for r in held),
    )


def test_h200_measurement_sits_on_the_700_w_cap_and_the_plant_idle_matches():
    _, _, idle_w, load_w = _h200_step()
    assert load_w == pytest.approx(700.0, rel=0.05)
    assert GPU_TDP_W == 700.0
    assert idle_w == pytest.approx(GPU_IDLE_W, rel=0.05)


def test_plant_gpu_die_step_matches_the_measured_h200_rise_within_25_percent(site):
    idle_c, load_c, idle_w, load_w = _h200_step()
    measured_rise = load_c - idle_c
    assert 10.0 < measured_rise < 40.0
    plant = make_plant(site, training=0.0)  # rows are training: idle GPUs
    run(plant, 60)
    die_idle = plant.r_gpu_temp.copy()
    plant.env.training_demand = 1.0  # the matrix products start
    run(plant, 2)
    model_rise = plant.r_gpu_temp - die_idle
    r = np.array([row.gpu_r_k_per_w for row in site.rack_rows])
    # the site's die resistance is the measured one: rise / power step, within 10 %
    np.testing.assert_allclose(r, measured_rise / (load_w - idle_w), rtol=0.10)
    assert ((model_rise > 0.75 * measured_rise) & (model_rise < 1.25 * measured_rise)).all(), (
        model_rise,
        measured_rise,
    )


# -- grid signals ------------------------------------------------------------------------------

GRID_SCENARIO = """
name = "grid-test"
duration_s = 600

[weather]
source = "synthetic"
seed = 2

[prices]
source = "synthetic"
seed = 2

[[grid_events]]
at_s = 60
kind = "frequency"
duration_s = 30
params = { frequency_hz = 49.7 }

[[grid_events]]
at_s = 120
kind = "curtail"
duration_s = 60
params = { limit_fraction = 0.6 }
"""


def test_scenario_frequency_event_shows_on_the_site_meter_and_curtail_lowers_the_limit(site):
    sp = ScenarioPlant(site, parse_scenario(GRID_SCENARIO, "grid.toml"), sensors=False)
    plant = sp.plant
    freq, limit = {}, {}
    for _ in range(240):
        beat(plant)
        sp.step()
        freq[plant.t] = plant.site_freq
        limit[plant.t] = sp.import_limit_kw()
        if plant.t == 75.0:
            assert plant.sensors.truth_of("site.frequency_hz") == pytest.approx(49.7)
    assert freq[59.0] == site.frequency_hz and freq[91.0] == site.frequency_hz
    assert all(freq[t] == 49.7 for t in range(60, 90))
    assert limit[119.0] == site.import_limit_kw and limit[181.0] == site.import_limit_kw
    assert all(limit[t] == pytest.approx(0.6 * site.import_limit_kw) for t in range(120, 180))
