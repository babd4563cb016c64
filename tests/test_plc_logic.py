"""The PLC's own logic: heartbeat watchdog, safe state and latched hard interlocks.

Two levels: the real plant with the PLC logic in lockstep (what the controller
actually faces), and ``PlcLogic`` alone as a pure step over hand-made arrays.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest

from thermogate.hil.plant import GPU_TDP_W, Environment, Plant
from thermogate.plc.logic import TRIP_DEBOUNCE_S, PlcInputs, PlcLogic
from thermogate.plc.pointmap import (
    STATUS_HEARTBEAT_OK,
    STATUS_INTERLOCK,
    STATUS_LEAK,
    STATUS_SAFE_STATE,
)
from thermogate.plc.site import Site


def make_plant(site: Site, *, sensors: bool = False) -> Plant:
    env = Environment(ambient_c=lambda t: 25.0, gpu_demand=lambda t: 0.65)
    return Plant(site, env=env, sensors=sensors)


def beat(plant: Plant) -> None:
    plant.heartbeat = (plant.heartbeat + 1) % 65536


def run(plant: Plant, seconds: float, heartbeat: bool = True) -> None:
    for _ in range(round(seconds / plant.dt)):
        if heartbeat:
            beat(plant)
        plant.step()


def asic(site: Site) -> np.ndarray:
    return np.array([t.workload == "asic" for t in site.tanks])


def tank_loop(site: Site) -> np.ndarray:
    return np.array([t.loop for t in site.tanks])


# ======================================================================================
# watchdog and safe state, on the plant
# ======================================================================================


def test_stale_heartbeat_enters_safe_state_exactly_after_the_timeout_and_not_before(site):
    plant = make_plant(site)
    run(plant, 30)
    timeout = site.plc.heartbeat_timeout_s
    last_change = plant.t
    states = []
    for _ in range(round(timeout) + 3):
        plant.step()  # the controller has gone quiet
        states.append((plant.t - last_change, plant.plc.safe_state))
    assert all(not safe for age, safe in states if age < timeout), states
    assert all(safe for age, safe in states if age >= timeout), states
    assert any("watchdog" in msg and "safe state" in msg for _, msg in plant.events)


def test_plc_that_never_hears_a_heartbeat_goes_safe_one_timeout_after_its_first_scan(site):
    plant = make_plant(site)
    run(plant, 1, heartbeat=False)  # the first scan starts the watchdog's clock
    first_scan = plant.t
    run(plant, site.plc.heartbeat_timeout_s - 1, heartbeat=False)
    assert not plant.plc.safe_state
    run(plant, 1, heartbeat=False)
    assert plant.plc.safe_state and plant.t - first_scan == site.plc.heartbeat_timeout_s


def test_safe_state_opens_valves_runs_pumps_and_fans_full_stops_mining_and_caps_gpus(site):
    plant = make_plant(site)
    run(plant, 60)
    row_kw = plant.r_power.copy()
    assert plant.plc_status_word() & STATUS_HEARTBEAT_OK
    assert not plant.plc_status_word() & STATUS_SAFE_STATE
    run(plant, site.plc.heartbeat_timeout_s, heartbeat=False)
    assert plant.plc.safe_state
    valve0 = plant.valve_pos.copy()
    run(plant, 10, heartbeat=False)
    assert (plant.valve_pos > valve0).all()  # moving toward 100 % at the actuators' rate
    run(plant, 50, heartbeat=False)
    np.testing.assert_allclose(plant.valve_pos, 100.0)
    np.testing.assert_allclose(plant.cdu_valve_pos, 100.0)
    np.testing.assert_allclose(plant.pump_speed, 1.0)  # standby pumps started too
    np.testing.assert_allclose(plant.fan_speed, 1.0)
    mining = asic(site)
    assert (plant.t_power[mining] == 0).all() and (plant.t_hash[mining] == 0).all()
    cap = site.plc.safe_gpu_cap_pct / 100.0
    assert (plant.t_power[~mining] <= cap * plant.params.t_rated[~mining] + 1e-9).all()
    assert (plant.t_power[~mining] > 0).all()  # AI keeps running, capped
    gpu_w = (plant.r_gpu_temp - plant.c_supply[plant.params.r_cdu]) / plant.params.r_gpu_r
    assert (gpu_w <= cap * GPU_TDP_W + 1e-6).all(), gpu_w
    assert (plant.r_power > 0).all() and (plant.r_power < row_kw).all()
    status = int(plant.sensors.truth_of("plc.status"))
    assert status & STATUS_SAFE_STATE and status & 1
    assert not status & STATUS_HEARTBEAT_OK
    assert plant.sensors.truth_of("plc.safe_state") == 1.0
    # the controller's own commands are untouched: it resumes from them
    assert (plant.cmd_valve == 60.0).all() and plant.cmd_enable.all()


def test_resuming_the_heartbeat_leaves_safe_state_and_hands_control_back(site):
    plant = make_plant(site)
    run(plant, 5)
    run(plant, site.plc.heartbeat_timeout_s + 30, heartbeat=False)
    assert plant.plc.safe_state
    valves = plant.valve_pos.copy()
    run(plant, 1)
    assert not plant.plc.safe_state
    assert not plant.plc_status_word() & STATUS_SAFE_STATE
    assert plant.plc_status_word() & STATUS_HEARTBEAT_OK
    run(plant, 10)
    assert (plant.valve_pos < valves).all()  # back toward the controller's 60 %
    assert (plant.t_power[asic(site)] > 0).all()
    assert any("resumed" in msg for _, msg in plant.events)


# ======================================================================================
# interlocks, on the plant
# ======================================================================================


def test_tank_over_temperature_trips_after_debounce_and_latches_until_reset_with_cause_gone(
    site,
):
    plant = make_plant(site)
    run(plant, 10)
    i = 4
    name = site.tanks[i].name
    trip_c = site.tanks[i].limits.fluid_trip_c
    plant.write(f"{name}.valve_cmd", 0)  # its cooling stops
    run(plant, 60)
    tripped_at = None
    t_hot = plant.t + 1
    for _ in range(10):
        plant.T_tank[i] = max(plant.T_tank[i], trip_c + 1.0)
        beat(plant)
        plant.step()
        if plant.plc.tank_tripped()[i]:
            tripped_at = plant.t
            break
    assert tripped_at is not None
    assert tripped_at - t_hot == pytest.approx(TRIP_DEBOUNCE_S)
    assert plant.plc.tank_tripped().sum() == 1
    run(plant, 1)
    assert plant.t_power[i] == 0 and plant.plc_status_word() & STATUS_INTERLOCK
    assert plant.sensors.truth_of(f"{name}.interlock") == 1.0

    plant.T_tank[i] = trip_c - 10.0  # cooled below the trip: still latched
    run(plant, 10)
    assert plant.plc.tank_tripped()[i] and plant.t_power[i] == 0

    plant.T_tank[i] = trip_c + 1.0  # reset while the cause persists: still latched
    plant.write("plc.reset", 1)
    run(plant, 1)
    assert plant.plc.tank_tripped()[i]

    plant.T_tank[i] = trip_c - 10.0  # reset once the cause has cleared: released
    plant.write("plc.reset", 1)
    run(plant, 1)
    assert not plant.plc.tank_tripped()[i]
    run(plant, 1)
    assert plant.t_power[i] > 0
    assert not plant.plc_status_word() & STATUS_INTERLOCK


def test_leak_at_a_tank_isolates_its_hx_and_trips_it_until_the_leak_is_gone(site):
    plant = make_plant(site)
    run(plant, 10)
    i = 2
    name = site.tanks[i].name
    plant.set_equipment_fault("leak", name, "leak", True)
    run(plant, 1)
    assert plant.plc.tank_tripped()[i] and plant.plc.tank_isolated[i]
    assert plant.plc.tank_tripped().sum() == 1
    assert plant.plc_status_word() & STATUS_LEAK
    assert plant.t_power[i] == 0
    run(plant, 60)  # the valve strokes shut at its own rate
    assert plant.valve_pos[i] == 0.0 and plant.t_flow[i] == 0.0
    assert plant.cmd_valve[i] == 60.0  # the PLC overrides, the command is untouched
    plant.write("plc.reset", 1)
    run(plant, 1)
    assert plant.plc.tank_isolated[i] and plant.plc.tank_tripped()[i]
    plant.set_equipment_fault("leak", name, "leak", False)
    plant.write("plc.reset", 1)
    run(plant, 2)
    assert not plant.plc.tank_isolated[i] and not plant.plc.tank_tripped()[i]
    assert plant.t_power[i] > 0 and plant.valve_pos[i] > 0


def test_leak_at_a_loop_skid_stops_its_pumps_and_trips_every_load_on_it(site):
    plant = make_plant(site)
    run(plant, 10)
    loop = site.loops[1]
    li = 1
    plant.set_equipment_fault("leak", loop.name, "leak", True)
    run(plant, 30)
    pumps = np.array([p.loop == loop.name for p in site.pumps])
    assert (plant.pump_speed[pumps] == 0).all() and plant.flow[li] == 0.0
    assert (plant.pump_speed[~pumps & plant.cmd_pump_run] > 0).all()  # other loop runs on
    on = tank_loop(site) == loop.name
    assert plant.plc.tank_tripped()[on].all() and not plant.plc.tank_tripped()[~on].any()
    assert (plant.t_power[on] == 0).all() and (plant.t_power[~on] > 0).all()
    rows_on = np.array(
        [site.cdus[plant.params.r_cdu[k]].loop == loop.name for k in range(plant.params.n_r)]
    )
    assert plant.plc.row_tripped()[rows_on].all()
    assert (plant.r_power[rows_on] == 0).all()
    assert not plant.plc.loop_low_flow.any()  # the isolation is not a flow fault


def test_low_loop_flow_with_a_pump_commanded_trips_the_loop_after_low_flow_trip_s(site):
    plant = make_plant(site)
    run(plant, 10)
    loop = site.loops[0]
    plant.write(f"{loop.name}.pump_a.speed_cmd", 0)  # the VFD holds its minimum speed
    seen_low = None
    for _ in range(120):
        low_before = plant.flow[0] < loop.min_flow_m3h  # what the PLC reads this scan
        beat(plant)
        plant.step()
        if low_before and seen_low is None:
            seen_low = plant.t
        if plant.plc.loop_low_flow[0]:
            break
    assert seen_low is not None and plant.plc.loop_low_flow[0]
    assert plant.t - seen_low == pytest.approx(loop.low_flow_trip_s)
    assert plant.flow[0] > 0  # low, not lost
    assert plant.plc.tank_tripped()[tank_loop(site) == loop.name].all()


def test_one_nan_fluid_sensor_does_not_trip_but_both_nan_do(site):
    plant = make_plant(site)
    run(plant, 5)
    name = site.tanks[0].name
    plant.sensors.inject(f"{name}.fluid_temp", "nan")
    run(plant, 30)
    assert not plant.plc.tank_tripped().any()
    plant.sensors.inject(f"{name}.fluid_temp_b", "nan")
    run(plant, TRIP_DEBOUNCE_S)
    assert not plant.plc.tank_tripped()[0]
    run(plant, 1)
    assert plant.plc.tank_tripped()[0] and plant.plc.tank_tripped().sum() == 1


def test_one_nan_sensor_still_lets_the_other_trip_a_hot_tank(site):
    plant = make_plant(site)
    run(plant, 5)
    plant.sensors.inject(f"{site.tanks[0].name}.fluid_temp", "nan")
    plant.write(f"{site.tanks[0].name}.valve_cmd", 0)
    for _ in range(10):
        plant.T_tank[0] = max(plant.T_tank[0], site.tanks[0].limits.fluid_trip_c + 2)
        run(plant, 1)
    assert plant.plc.tank_tripped()[0]


def test_a_stuck_fluid_sensor_pair_hides_a_hot_tank_from_the_plc_too(site):
    plant = make_plant(site)
    run(plant, 5)
    name = site.tanks[0].name
    plant.sensors.inject(f"{name}.fluid_temp", "stuck")
    plant.sensors.inject(f"{name}.fluid_temp_b", "stuck")
    for _ in range(10):
        plant.T_tank[0] = site.tanks[0].limits.fluid_trip_c + 2
        run(plant, 1)
    assert not plant.plc.tank_tripped()[0]  # why the controller votes its sensors


def test_both_fluid_sensors_dropping_out_fail_safe_like_nan(site):
    # A dropout is the signal intermittently lost: the PLC reads the same physical
    # sensor, so with p = 1 both inputs are always NaN and the tank must trip.
    plant = make_plant(site)
    run(plant, 5)
    name = site.tanks[0].name
    for suffix in ("fluid_temp", "fluid_temp_b"):
        plant.sensors.inject(f"{name}.{suffix}", "dropout", {"p": 1.0})
    assert math.isnan(plant.sensors.sample()[plant.sensors.index[f"{name}.fluid_temp"]])
    run(plant, TRIP_DEBOUNCE_S + 2)
    assert plant.plc.tank_tripped()[0]


def test_a_fluid_temperature_spike_shorter_than_the_debounce_does_not_trip(site):
    plant = make_plant(site)
    run(plant, 5)
    trip_c = site.tanks[0].limits.fluid_trip_c
    for width in (1, 2, 3):  # scans above the trip, each shorter than 3 s of debounce
        normal = plant.T_tank[0]
        for _ in range(width):
            plant.T_tank[0] = trip_c + 20.0
            run(plant, 1)
        plant.T_tank[0] = normal
        run(plant, 5)
        assert not plant.plc.tank_tripped()[0], width


def test_safe_state_pump_failure_still_trips_low_flow_when_the_controller_had_stopped_them(
    site,
):
    # The controller stopped loop2's pumps; then it went quiet and the PLC's safe
    # state started them itself. Those pumps are now the PLC's own command, so
    # losing them is a flow fault, not a controlled stop.
    plant = make_plant(site)
    loop = site.loops[1]
    for p in loop.pumps:
        plant.write(f"{p.name}.run_cmd", 0)
    run(plant, site.plc.heartbeat_timeout_s + 30, heartbeat=False)
    assert plant.plc.safe_state and plant.flow[1] > loop.min_flow_m3h
    for p in loop.pumps:
        plant.set_equipment_fault("pump", p.name, "trip", True)
    run(plant, 20 + loop.low_flow_trip_s + 5, heartbeat=False)
    assert plant.flow[1] == 0.0
    assert plant.plc.loop_low_flow[1]


# ======================================================================================
# PlcLogic alone: a pure step over hand-made arrays
# ======================================================================================


class Io:
    """Normal inputs for ``site``; tests edit the arrays between steps."""

    def __init__(self, site: Site) -> None:
        n_t, n_l, n_c = len(site.tanks), len(site.loops), len(site.cdus)
        self.heartbeat = 0
        self.tank_a = np.full(n_t, 45.0)
        self.tank_b = np.full(n_t, 45.0)
        self.tank_leak = np.zeros(n_t, dtype=bool)
        self.loop_flow = np.full(n_l, 200.0)
        self.loop_leak = np.zeros(n_l, dtype=bool)
        self.cdu_supply = np.full(n_c, 40.0)
        self.cdu_leak = np.zeros(n_c, dtype=bool)
        self.pumps = np.ones(n_l, dtype=bool)

    def inputs(self, reset: bool = False) -> PlcInputs:
        return PlcInputs(
            heartbeat=self.heartbeat,
            reset=reset,
            tank_temp_a=self.tank_a,
            tank_temp_b=self.tank_b,
            tank_leak=self.tank_leak,
            loop_flow=self.loop_flow,
            loop_leak=self.loop_leak,
            cdu_supply=self.cdu_supply,
            cdu_leak=self.cdu_leak,
        )


def step(plc: PlcLogic, io: Io, t: float, *, reset: bool = False, beat: bool = True) -> None:
    if beat:
        io.heartbeat += 1
    plc.step(t, io.inputs(reset), io.pumps)


@pytest.fixture
def plc(site) -> PlcLogic:
    return PlcLogic(site)


@pytest.fixture
def io(site) -> Io:
    return Io(site)


def test_unit_healthy_inputs_trip_nothing(plc, io):
    for t in range(1, 100):
        step(plc, io, float(t))
    assert not plc.safe_state and not plc.any_interlock()
    assert not plc.tank_tripped().any() and not plc.row_tripped().any()
    assert plc.events == []


def test_unit_watchdog_trips_at_the_timeout_from_the_last_change(plc, io, site):
    timeout = site.plc.heartbeat_timeout_s
    step(plc, io, 1.0)
    step(plc, io, 2.0)  # last change at t = 2
    step(plc, io, 2.0 + timeout - 0.5, beat=False)
    assert not plc.safe_state and plc.heartbeat_age_s == pytest.approx(timeout - 0.5)
    step(plc, io, 2.0 + timeout, beat=False)
    assert plc.safe_state
    step(plc, io, 2.0 + timeout + 1)  # any change of value resumes, even a wrap
    assert not plc.safe_state and plc.heartbeat_age_s == 0.0


def test_unit_over_temperature_needs_the_full_debounce(plc, io):
    io.tank_a[3] = 70.0
    for t in (1.0, 2.0, 3.0):
        step(plc, io, t)
        assert not plc.tank_latched[3]
    step(plc, io, 1.0 + TRIP_DEBOUNCE_S)
    assert plc.tank_latched[3] and plc.tank_latched.sum() == 1
    assert len([m for _, m in plc.events if "over-temperature" in m]) == 1
    step(plc, io, 5.0)  # still hot: no second event
    assert len([m for _, m in plc.events if "over-temperature" in m]) == 1


def test_unit_a_spike_shorter_than_the_debounce_restarts_it(plc, io):
    for t in range(1, 4):
        io.tank_b[0] = 90.0
        step(plc, io, float(t))
    io.tank_b[0] = 45.0
    step(plc, io, 4.0)  # dropped out before 3 s had passed
    io.tank_b[0] = 90.0
    for t in range(5, 8):
        step(plc, io, float(t))
    assert not plc.tank_latched.any()
    step(plc, io, 8.0)  # 3 s since the second excursion started
    assert plc.tank_latched[0]


def test_unit_hotter_of_two_sensors_counts_and_one_nan_defers_to_the_other(plc, io, site):
    trip = site.tanks[0].limits.fluid_trip_c
    io.tank_a[0], io.tank_b[0] = np.nan, 45.0  # one bad sensor on a normal tank
    io.tank_a[1], io.tank_b[1] = np.nan, trip + 1.0  # one bad sensor on a hot tank
    io.tank_a[2], io.tank_b[2] = 45.0, trip  # exactly at the trip counts
    io.tank_a[3], io.tank_b[3] = np.nan, np.nan  # both bad: fail safe
    for t in range(1, 6):
        step(plc, io, float(t))
    assert plc.tank_latched[:4].tolist() == [False, True, True, True]
    assert plc.tank_latched.sum() == 3


def test_unit_over_temperature_latch_clears_only_on_reset_once_the_cause_is_gone(plc, io):
    io.tank_a[5] = 80.0
    for t in range(1, 6):
        step(plc, io, float(t))
    assert plc.tank_tripped()[5]
    io.tank_a[5] = 45.0
    for t in range(6, 20):
        step(plc, io, float(t))
    assert plc.tank_tripped()[5]  # cool, but no reset
    io.tank_a[5] = 80.0
    step(plc, io, 20.0, reset=True)
    assert plc.tank_tripped()[5]  # reset refused: cause present
    io.tank_a[5] = 45.0
    step(plc, io, 21.0, reset=True)
    assert not plc.tank_tripped()[5]
    assert any(m.startswith("reset:") for _, m in plc.events)


def test_unit_tank_leak_isolates_and_trips_at_once_and_clears_after_repair(plc, io):
    io.tank_leak[7] = True
    step(plc, io, 1.0)
    assert plc.tank_isolated[7] and plc.tank_tripped()[7] and plc.tank_tripped().sum() == 1
    io.tank_leak[7] = False
    step(plc, io, 2.0)
    assert plc.tank_isolated[7] and plc.tank_tripped()[7]  # latched
    step(plc, io, 3.0, reset=True)
    assert not plc.tank_isolated[7] and not plc.tank_tripped()[7]


def test_unit_loop_leak_isolates_the_loop_and_trips_its_tanks_and_rows(plc, io, site):
    io.loop_leak[1] = True
    io.loop_flow[1] = 0.0  # its pumps stop: not a low-flow fault
    for t in range(1, 30):
        step(plc, io, float(t))
    on = tank_loop(site) == site.loops[1].name
    assert plc.loop_isolated[1] and not plc.loop_isolated[0]
    assert plc.tank_tripped()[on].all() and not plc.tank_tripped()[~on].any()
    rows_on = np.array([site.cdus[c].loop == site.loops[1].name for c in plc.row_cdu])
    assert rows_on.any()
    assert plc.row_tripped()[rows_on].all() and not plc.row_tripped()[~rows_on].any()
    assert not plc.loop_low_flow.any()


def test_unit_loop_leak_is_only_reported_where_the_site_does_not_isolate_loops(site, io):
    quiet = PlcLogic(replace(site, plc=replace(site.plc, leak_isolates_loop=False)))
    io.loop_leak[0] = True
    for t in range(1, 5):
        step(quiet, io, float(t))
    assert not quiet.loop_isolated.any() and not quiet.tank_tripped().any()


def test_unit_low_flow_trips_after_the_delay_only_with_a_pump_commanded(plc, io, site):
    delay = site.loops[0].low_flow_trip_s
    io.loop_flow[0] = 0.5 * site.loops[0].min_flow_m3h
    io.pumps[0] = False  # a controlled stop
    for t in range(1, 60):
        step(plc, io, float(t))
    assert not plc.loop_low_flow.any()
    io.pumps[0] = True
    step(plc, io, 100.0)
    step(plc, io, 100.0 + delay - 1)
    assert not plc.loop_low_flow[0]
    step(plc, io, 100.0 + delay)
    assert plc.loop_low_flow[0] and not plc.loop_low_flow[1]
    on = tank_loop(site) == site.loops[0].name
    assert plc.tank_tripped()[on].all() and not plc.tank_tripped()[~on].any()


def test_unit_low_flow_dip_shorter_than_the_delay_does_not_trip(plc, io, site):
    delay = site.loops[0].low_flow_trip_s
    for t in range(1, int(delay)):
        io.loop_flow[0] = 10.0
        step(plc, io, float(t))
    io.loop_flow[0] = 200.0
    step(plc, io, delay)
    io.loop_flow[0] = 10.0
    for t in range(int(delay) + 1, int(2 * delay)):
        step(plc, io, float(t))
    assert not plc.loop_low_flow.any()


def test_unit_reset_while_flow_is_still_low_keeps_the_loop_tripped(plc, io, site):
    # "A latch clears only on an explicit reset and only if its cause has cleared."
    delay = site.loops[0].low_flow_trip_s
    io.loop_flow[0] = 0.0
    for t in range(1, int(delay) + 3):
        step(plc, io, float(t))
    assert plc.loop_low_flow[0]
    step(plc, io, delay + 3, reset=True)
    assert plc.loop_low_flow[0], "loads re-energised on a loop that still has no flow"
    io.loop_flow[0] = 200.0
    step(plc, io, delay + 4, reset=True)
    assert not plc.loop_low_flow[0]


def test_unit_cdu_over_temperature_or_nan_trips_its_rack_row(plc, io, site):
    io.cdu_supply[0] = site.cdus[0].supply_trip_c + 0.5
    io.cdu_supply[1] = np.nan  # its only supply sensor: fail safe
    for t in range(1, 6):
        step(plc, io, float(t))
    assert plc.cdu_latched.all()
    assert plc.row_tripped().all()
    assert not plc.tank_tripped().any()
    io.cdu_supply[:] = 40.0
    step(plc, io, 6.0, reset=True)
    assert not plc.row_tripped().any()


def test_unit_step_is_pure_same_inputs_same_state_and_inputs_untouched(site):
    a, b = PlcLogic(site), PlcLogic(site)
    io_a, io_b = Io(site), Io(site)
    rng = np.random.default_rng(3)
    for t in range(1, 200):
        temps = 45.0 + 25.0 * rng.random(len(site.tanks))
        flows = 300.0 * rng.random(len(site.loops))
        for io in (io_a, io_b):
            io.tank_a = temps.copy()
            io.tank_b = temps[::-1].copy()
            io.loop_flow = flows.copy()
        before = copy.deepcopy(io_a.inputs())
        step(a, io_a, float(t), reset=t % 50 == 0)
        step(b, io_b, float(t), reset=t % 50 == 0)
        np.testing.assert_array_equal(io_a.tank_a, before.tank_temp_a)
        np.testing.assert_array_equal(io_a.loop_flow, before.loop_flow)
    assert a.status() == b.status()
    np.testing.assert_array_equal(a.tank_latched, b.tank_latched)
    assert a.events == b.events and a.tank_latched.any()
