"""The estimator (step 2 of the scan): validation, filtering and bad-sensor flags.

Most tests drive the real simulated plant (``ScenarioPlant`` on the demo site)
in lockstep: per step the heartbeat changes, the plant steps, and its noisy,
quantised sensor samples go in as the scan's values with every point fresh.
Faults are injected into the plant's sensor model exactly as a scenario does
(``plant.sensors.inject``). Edge cases use hand-made arrays.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thermogate.controller.estimate import (
    CLEAR_S,
    DRIFT_CONFIRM_S,
    HOLD_S,
    RATE_RECOVER_S,
    Estimate,
    Estimator,
)
from thermogate.controller.signals import (
    BAD,
    FLAG_DISAGREE,
    FLAG_DRIFT,
    FLAG_NAN,
    FLAG_NEVER_READ,
    FLAG_RANGE,
    FLAG_RATE,
    FLAG_STALE,
    FLAG_STUCK,
    GOOD,
    UNCERTAIN,
    flag_names,
)
from thermogate.controller.stuck import STUCK_BAD_S, STUCK_S, StuckDetector
from thermogate.hil.runner import ScenarioPlant
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site

SITE = demo_site()
PMAP = build_point_map(SITE)
IDX = {p.name: i for i, p in enumerate(PMAP.points)}
TANKS = [t.name for t in SITE.tanks]
WARM_S = 60  # steps of normal running before a fault is injected


class Lockstep:
    """The demo plant and an estimator, one scan per simulated second."""

    def __init__(self, seed: int = 0, scenario: str = "normal-day") -> None:
        self.sp = ScenarioPlant(SITE, scenario, seed=seed, pmap=PMAP)
        self.plant = self.sp.plant
        self.est = Estimator(PMAP, SITE)
        self.fresh = np.ones(len(PMAP), dtype=bool)
        self.e: Estimate | None = None

    @property
    def t(self) -> float:
        return self.sp.t

    def step(self) -> Estimate:
        self.plant.heartbeat = (self.plant.heartbeat + 1) % 65536
        self.sp.step()
        self.e = self.est.update(self.sp.t, self.plant.sensors.sample(), self.fresh)
        return self.e

    def run(self, seconds: int) -> Estimate:
        for _ in range(seconds):
            self.step()
        assert self.e is not None
        return self.e

    def truth(self, tank: str) -> float:
        return float(self.plant.T_tank[TANKS.index(tank)])


def flags_of(e: Estimate, name: str) -> int:
    return int(e.flags[IDX[name]])


def quality_of(e: Estimate, name: str) -> int:
    return int(e.quality[IDX[name]])


def run_until_flagged(
    ls: Lockstep, name: str, flag: int, max_s: int, tank: str | None = None
) -> tuple[float, float]:
    """Step until ``name`` carries ``flag``; returns (seconds taken, worst voted error)."""
    t0, worst = ls.t, 0.0
    for _ in range(max_s):
        e = ls.step()
        if tank is not None:
            worst = max(worst, abs(e.voted[f"{tank}.fluid_temp"][0] - ls.truth(tank)))
        if flags_of(e, name) & flag:
            return ls.t - t0, worst
    pytest.fail(f"{name} not flagged {flag_names(flag)} within {max_s} s")


def baseline() -> np.ndarray:
    """One noisy sample of the plant in normal running (for hand-made scans)."""
    ls = Lockstep(seed=7)
    ls.run(5)
    return ls.plant.sensors.sample()


BASE = baseline()


def feed(est: Estimator, t0: float, seconds: int, values: np.ndarray, **over: float) -> Estimate:
    """The same scan ``seconds`` times from ``t0`` (with some points overridden)."""
    v = values.copy()
    for k, x in over.items():
        v[IDX[k.replace("__", ".")]] = x
    e = None
    for k in range(seconds):
        e = est.update(t0 + k, v, np.ones(len(v), dtype=bool))
    assert e is not None
    return e


# ----------------------------------------------------------------------------
# normal operation
# ----------------------------------------------------------------------------
def test_normal_noisy_operation_for_30_simulated_minutes_raises_no_flag_on_any_point():
    ls = Lockstep(seed=3)
    worst = 0.0
    for _ in range(1800):
        e = ls.step()
        assert not ls.est.newly_flagged(), ls.est.newly_flagged()
        bad = np.flatnonzero(e.flags)
        assert bad.size == 0, [(PMAP.points[i].name, flag_names(int(e.flags[i]))) for i in bad]
        assert (e.quality == GOOD).all()
        for key, (value, q) in e.voted.items():
            assert q == GOOD, key
            assert e.voted_flags[key] == 0
            assert math.isfinite(value)
        for tank in TANKS:
            worst = max(worst, abs(e.voted[f"{tank}.fluid_temp"][0] - ls.truth(tank)))
    assert worst < 0.3  # mean of two 0.1 °C sensors with 0.05 K noise


def test_good_values_are_the_readings_and_arrays_have_the_documented_types():
    ls = Lockstep()
    e = ls.run(3)
    assert e.values.dtype == np.float64 and e.values.shape == (len(PMAP),)
    assert e.quality.dtype == np.uint8 and e.flags.dtype == np.uint16
    sample = ls.plant.sensors.sample()
    e = ls.est.update(ls.t + 1, sample, ls.fresh)
    assert np.array_equal(e.values, sample)


# ----------------------------------------------------------------------------
# never read, stale, NaN, sentinels, range
# ----------------------------------------------------------------------------
def test_every_point_is_bad_never_read_until_it_has_been_read_once():
    est = Estimator(PMAP, SITE)
    n = len(PMAP)
    e = est.update(0.0, np.full(n, np.nan), np.zeros(n, dtype=bool))
    assert (e.quality == BAD).all()
    assert ((e.flags & FLAG_NEVER_READ) != 0).all() and ((e.flags & FLAG_STALE) != 0).all()
    assert np.isnan(e.values).all()
    assert all(q == BAD and math.isnan(v) for v, q in e.voted.values())
    assert len(est.newly_flagged()) == n  # every missing input is announced, once
    fresh = np.zeros(n, dtype=bool)
    half = np.arange(n) % 2 == 0
    fresh[half] = True
    e = est.update(1.0, BASE, fresh)
    assert (e.flags[half] & FLAG_NEVER_READ == 0).all()
    assert (e.flags[~half] & FLAG_NEVER_READ != 0).all() and (e.quality[~half] == BAD).all()
    assert est.newly_flagged() == []
    # a first reading that is NaN is not a reading
    unread = int(np.flatnonzero(~half)[0])
    v = BASE.copy()
    v[unread] = np.nan
    e = est.update(2.0, v, np.ones(n, dtype=bool))
    both = FLAG_NEVER_READ | FLAG_NAN
    assert e.flags[unread] & both == both and e.quality[unread] == BAD
    e = est.update(3.0, BASE, np.ones(n, dtype=bool))
    assert not (e.flags & FLAG_NEVER_READ).any()


def test_a_point_not_fresh_is_bad_and_stale_at_once_holds_its_value_at_most_hold_s():
    est = Estimator(PMAP, SITE)
    name = "loop1.flow"
    e = feed(est, 0.0, 5, BASE)
    good = e.values[IDX[name]]
    fresh = np.ones(len(PMAP), dtype=bool)
    fresh[IDX[name]] = False
    v = BASE.copy()
    v[IDX[name]] = np.nan
    e = est.update(5.0, v, fresh)
    assert quality_of(e, name) == BAD and flags_of(e, name) == FLAG_STALE
    assert est.newly_flagged() == [(name, FLAG_STALE)]
    assert e.values[IDX[name]] == good  # held ...
    for k in range(6, 6 + int(HOLD_S) + 1):
        e = est.update(float(k), v, fresh)
        assert est.newly_flagged() == []  # ... logged once, not every scan
    assert math.isnan(e.values[IDX[name]])  # ... and NaN after hold_s
    assert quality_of(e, name) == BAD
    # back: usable at once (UNCERTAIN), GOOD again after CLEAR_S clean
    e = est.update(20.0, BASE, np.ones(len(PMAP), dtype=bool))
    assert quality_of(e, name) == UNCERTAIN and e.values[IDX[name]] == BASE[IDX[name]]
    cleared = []
    for k in range(21, 21 + int(CLEAR_S)):
        e = est.update(float(k), BASE, np.ones(len(PMAP), dtype=bool))
        cleared += [k for n in est.newly_cleared() if n == name]
    assert quality_of(e, name) == GOOD and flags_of(e, name) == 0
    assert cleared == [int(16 + CLEAR_S)]  # clean for CLEAR_S after the last stale read


def test_nan_inf_and_integer_failure_sentinels_are_bad_nan_but_a_sentinel_in_range_is_a_value():
    est = Estimator(PMAP, SITE)
    feed(est, 0.0, 3, BASE)
    e = feed(
        est,
        3.0,
        1,
        BASE,
        tank01__fluid_temp=-3276.8,  # i16 0x8000 at 0.1 degC
        loop1__flow=6553.5,  # u16 0xFFFF at 0.1 m3/h
        tank02__power_kw=42949672.95,  # u32 0xFFFFFFFF at 0.01 kW
        site__power_kw=math.inf,
        feeder_m1__current_a=math.nan,
        plc__status=65535,  # a u16 whose declared range is 0..65535
    )
    for name in (
        "tank01.fluid_temp",
        "loop1.flow",
        "tank02.power_kw",
        "site.power_kw",
        "feeder_m1.current_a",
    ):
        assert quality_of(e, name) == BAD and flags_of(e, name) == FLAG_NAN, name
    assert quality_of(e, "plc.status") == GOOD


def test_values_outside_the_physically_plausible_range_are_bad_range():
    est = Estimator(PMAP, SITE)
    feed(est, 0.0, 3, BASE)
    v = BASE.copy()
    v[IDX["tank01.fluid_temp"]] = 130.0  # an i16 in 0.1 degC holds it; no fluid here does
    v[IDX["loop1.supply_temp"]] = -25.0  # frozen glycol
    v[IDX["tank01.water_flow"]] = 2.5 * SITE.tanks[0].design_water_flow_m3h
    v[IDX["site.frequency_hz"]] = 56.0
    v[IDX["site.ambient_temp"]] = -45.0  # a cold night is plausible
    e = est.update(100.0, v, np.ones(len(PMAP), dtype=bool))
    for name in (
        "tank01.fluid_temp",
        "loop1.supply_temp",
        "tank01.water_flow",
        "site.frequency_hz",
    ):
        assert quality_of(e, name) == BAD and flags_of(e, name) == FLAG_RANGE, name
    assert quality_of(e, "site.ambient_temp") == GOOD


def test_a_tank_whose_every_temperature_reads_zero_is_bad_all_zero_from_its_first_scan():
    """The commissioning prober's tank the PLC was not yet programmed for: the PLC
    answered 0 for its addresses, read as a GOOD tank at 0 degC and budgeted."""
    temps = ("fluid_temp", "fluid_temp_b", "return_temp", "water_out_temp")
    est = Estimator(PMAP, SITE)
    v = BASE.copy()
    for attr in (*temps, "level", "water_flow", "dielectric_flow", "power_kw"):
        v[IDX[f"tank05.{attr}"]] = 0.0
    e = est.update(0.0, v, np.ones(len(PMAP), dtype=bool))
    for attr in temps:
        assert quality_of(e, f"tank05.{attr}") == BAD
        assert "all-zero" in flag_names(flags_of(e, f"tank05.{attr}")), attr
    assert e.voted["tank05.fluid_temp"][1] == BAD  # what protection and the zones act on
    assert quality_of(e, "tank04.fluid_temp") == GOOD  # the others are read as ever
    # once programmed, real readings are taken (latched for CLEAR_S like any flag)
    feed(est, 1.0, 3, BASE)
    e = est.update(1.0 + CLEAR_S + 1.0, BASE, np.ones(len(PMAP), dtype=bool))
    assert quality_of(e, "tank05.fluid_temp") == GOOD


def test_one_sensor_reading_zero_is_not_called_all_zero():
    est = Estimator(PMAP, SITE)
    feed(est, 0.0, 3, BASE)
    v = BASE.copy()
    v[IDX["tank05.fluid_temp"]] = 0.0  # a plausible (if cold) reading, coupled ones warm
    v[IDX["loop1.return_temp"]] = 0.0
    e = est.update(3.0, v, np.ones(len(PMAP), dtype=bool))
    assert not any("all-zero" in flag_names(int(f)) for f in e.flags)


# ----------------------------------------------------------------------------
# rate of change
# ----------------------------------------------------------------------------
def test_a_single_spike_never_reaches_the_validated_value():
    est = Estimator(PMAP, SITE)
    e = feed(est, 0.0, 10, BASE)
    a = IDX["tank01.fluid_temp"]
    before = e.values[a]
    e = feed(
        est,
        10.0,
        1,
        BASE,
        tank01__fluid_temp=BASE[a] + 25.0,
        loop1__flow=BASE[IDX["loop1.flow"]] + 400.0,
    )
    assert e.values[a] == before
    assert quality_of(e, "tank01.fluid_temp") == UNCERTAIN
    assert flags_of(e, "tank01.fluid_temp") == FLAG_RATE
    assert flags_of(e, "loop1.flow") == FLAG_RATE
    assert e.values[IDX["loop1.flow"]] == BASE[IDX["loop1.flow"]]
    assert e.voted["tank01.fluid_temp"][0] == pytest.approx(BASE[IDX["tank01.fluid_temp_b"]])
    e = feed(est, 11.0, 1, BASE)  # the spike returned
    assert e.values[a] == BASE[a] and quality_of(e, "tank01.fluid_temp") == UNCERTAIN
    e = feed(est, 12.0, int(CLEAR_S), BASE)
    assert quality_of(e, "tank01.fluid_temp") == GOOD


def test_a_persistent_step_is_bad_from_the_third_scan_and_a_steady_new_level_is_accepted():
    est = Estimator(PMAP, SITE)
    feed(est, 0.0, 10, BASE)
    a = IDX["loop1.supply_temp"]
    held = BASE[a]
    qs = []
    for k in range(int(RATE_RECOVER_S) + 2):
        e = feed(est, 10.0 + k, 1, BASE, loop1__supply_temp=BASE[a] + 20.0)
        qs.append(quality_of(e, "loop1.supply_temp"))
        if k < HOLD_S:
            assert e.values[a] == held
    assert qs[:2] == [UNCERTAIN, UNCERTAIN] and BAD in qs[2:]
    assert qs[2] == BAD
    assert qs[-1] != BAD and e.values[a] == BASE[a] + 20.0  # re-accepted as a new level


def test_a_pump_stopping_or_starting_within_a_scan_is_not_a_rate_fault():
    est = Estimator(PMAP, SITE)
    feed(est, 0.0, 5, BASE)
    e = feed(est, 5.0, 3, BASE, tank01__dielectric_flow=0.0, loop1__dp=0.0)  # contactor opens
    e = feed(est, 8.0, 3, BASE)  # and closes again: direct-on-line, full flow at once
    for name in ("tank01.dielectric_flow", "loop1.dp"):
        assert quality_of(e, name) == GOOD, name
        assert e.values[IDX[name]] == BASE[IDX[name]]


def test_spiking_sensor_is_flagged_rate_and_the_vote_stays_within_1_k_of_the_truth():
    ls = Lockstep(seed=1)
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank01.fluid_temp", "spike", {"p": 0.05, "magnitude": 25.0})
    _, worst = run_until_flagged(ls, "tank01.fluid_temp", FLAG_RATE, 200, "tank01")
    a = IDX["tank01.fluid_temp"]
    for _ in range(300):
        e = ls.step()
        assert abs(e.values[a] - ls.truth("tank01")) < 1.0  # no spike ever validated
        worst = max(worst, abs(e.voted["tank01.fluid_temp"][0] - ls.truth("tank01")))
    assert worst < 1.0


# ----------------------------------------------------------------------------
# injected sensor faults on the plant
# ----------------------------------------------------------------------------
def test_nan_sensor_is_flagged_bad_at_once_and_the_vote_uses_the_other_sensor():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank01.fluid_temp", "nan")
    took, _ = run_until_flagged(ls, "tank01.fluid_temp", FLAG_NAN, 5, "tank01")
    assert took == 1.0
    assert ls.est.newly_flagged() == [("tank01.fluid_temp", FLAG_NAN)]
    for _ in range(300):
        e = ls.step()
        assert quality_of(e, "tank01.fluid_temp") == BAD
        value, q = e.voted["tank01.fluid_temp"]
        assert q == UNCERTAIN and abs(value - ls.truth("tank01")) < 1.0
        assert e.voted_flags["tank01.fluid_temp"] & FLAG_NAN


def test_dropout_is_flagged_nan_within_seconds_and_alarmed_once():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank02.fluid_temp_b", "dropout", {"p": 0.3})
    run_until_flagged(ls, "tank02.fluid_temp_b", FLAG_NAN, 20, "tank02")
    alarms = 1
    for _ in range(300):
        e = ls.step()
        alarms += sum(n == "tank02.fluid_temp_b" for n, _ in ls.est.newly_flagged())
        assert quality_of(e, "tank02.fluid_temp_b") != GOOD
        value, q = e.voted["tank02.fluid_temp"]
        assert q == UNCERTAIN and abs(value - ls.truth("tank02")) < 1.0
    assert alarms == 1


def test_stuck_sensor_is_flagged_when_the_tank_moves_then_bad_and_the_vote_follows_the_other():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank01.fluid_temp", "stuck")
    ls.plant.write("tank01.power_budget_kw", 150.0)  # the tank cools: the physics moves
    took, worst = run_until_flagged(ls, "tank01.fluid_temp", FLAG_STUCK, int(STUCK_S), "tank01")
    assert took < STUCK_S  # the partner moved 1.5 K: the fast path, not the full 120 s
    assert quality_of(ls.e, "tank01.fluid_temp") == UNCERTAIN
    assert worst < 1.0
    for _ in range(int(STUCK_BAD_S)):
        e = ls.step()
        value, q = e.voted["tank01.fluid_temp"]
        assert q == UNCERTAIN and abs(value - ls.truth("tank01")) < 1.0
    assert quality_of(e, "tank01.fluid_temp") == BAD
    assert flags_of(e, "tank01.fluid_temp") & FLAG_STUCK
    assert quality_of(e, "tank01.fluid_temp_b") == GOOD


def test_a_reading_that_repeats_while_nothing_coupled_moves_is_not_stuck():
    est = Estimator(PMAP, SITE)
    rng = np.random.default_rng(5)
    names = ["tank01.fluid_temp_b", "tank01.return_temp", "tank01.water_out_temp"]
    e = None
    for k in range(int(STUCK_BAD_S) + 60):
        v = BASE.copy()
        for nm in names:  # the witnesses only flicker by a count (noise)
            v[IDX[nm]] += 0.1 * rng.integers(-1, 2)
        e = est.update(float(k), v, np.ones(len(v), dtype=bool))
        assert flags_of(e, "tank01.fluid_temp") == 0
    # the partner now really moves: a reading with not one count of change is stuck
    for k in range(40):
        v = BASE.copy()
        v[IDX["tank01.fluid_temp_b"]] += 0.05 * k
        e = est.update(float(STUCK_BAD_S + 60 + k), v, np.ones(len(v), dtype=bool))
    assert flags_of(e, "tank01.fluid_temp") & FLAG_STUCK


def test_a_regulated_tank_reading_steady_while_its_heat_exchanger_swings_is_not_stuck():
    # The valve loop holds the fluid at its setpoint: both healthy sensors read the
    # same count for the fast path's window while the HX outlets swing by 2 K (the
    # valve moving). That is regulation, not a stuck sensor.
    est = Estimator(PMAP, SITE)
    fresh = np.ones(len(BASE), dtype=bool)
    n = int(STUCK_S) - 10  # past the fast path's 20 s, short of the slow path's 120 s
    for k in range(n):
        v = BASE.copy()
        swing = 2.0 * math.sin(2 * math.pi * k / 60.0)
        v[IDX["tank01.water_out_temp"]] += swing
        v[IDX["tank01.return_temp"]] -= swing
        e = est.update(float(k), v, fresh)
        assert flags_of(e, "tank01.fluid_temp") == 0, k
        assert flags_of(e, "tank01.fluid_temp_b") == 0, k
    # sensor B then follows a real 1.5 K move of the fluid: A, still on its count, is stuck
    for k in range(40):
        v = BASE.copy()
        v[IDX["tank01.fluid_temp_b"]] += min(1.5, 0.1 * k)
        e = est.update(float(n + k), v, fresh)
    assert flags_of(e, "tank01.fluid_temp") & FLAG_STUCK
    assert not flags_of(e, "tank01.fluid_temp_b") & FLAG_STUCK


def test_drifting_sensor_a_is_identified_against_the_hx_energy_balance():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank01.fluid_temp", "drift", {"rate_per_h": 6.0})
    took, worst = run_until_flagged(ls, "tank01.fluid_temp", FLAG_DRIFT, 1200, "tank01")
    assert took <= 600 + DRIFT_CONFIRM_S + 180  # 1 K at 6 K/h is 10 min, then confirmed
    assert worst < 1.0
    e = ls.e
    assert not flags_of(e, "tank01.fluid_temp_b") & FLAG_DRIFT
    assert quality_of(e, "tank01.fluid_temp") == UNCERTAIN
    for _ in range(600):
        e = ls.step()
        value, q = e.voted["tank01.fluid_temp"]
        assert q == UNCERTAIN and abs(value - ls.truth("tank01")) < 0.3  # sensor B alone
        assert e.voted_flags["tank01.fluid_temp"] & FLAG_DRIFT
    assert quality_of(e, "tank01.fluid_temp_b") == GOOD


def test_drifting_sensor_b_downwards_is_identified_and_the_vote_uses_a():
    ls = Lockstep(seed=2)
    ls.run(WARM_S)
    ls.plant.sensors.inject("gpu01.fluid_temp_b", "drift", {"rate_per_h": -6.0})
    _, worst = run_until_flagged(ls, "gpu01.fluid_temp_b", FLAG_DRIFT, 1200, "gpu01")
    assert worst < 1.0
    assert not flags_of(ls.e, "gpu01.fluid_temp") & FLAG_DRIFT
    e = ls.run(300)
    assert abs(e.voted["gpu01.fluid_temp"][0] - ls.truth("gpu01")) < 0.3


def test_loop_supply_drift_is_flagged_against_the_dry_cooler_outlets_and_voted_around():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("loop1.supply_temp", "drift", {"rate_per_h": 60.0})
    took, _ = run_until_flagged(ls, "loop1.supply_temp", FLAG_DRIFT, 600)
    assert took <= 120 + 120 + 60  # 2 K at 1 K/min, confirmed 2 min later
    e = ls.e
    assert quality_of(e, "loop1.supply_temp") == UNCERTAIN
    for _ in range(300):
        e = ls.step()
        value, q = e.voted["loop1.supply_temp"]
        assert q == UNCERTAIN and abs(value - ls.plant.T_cold[0]) < 0.5
    assert e.values[IDX["loop1.supply_temp"]] - ls.plant.T_cold[0] > 4.0  # the reading drifted


# ----------------------------------------------------------------------------
# voting rules (hand-made)
# ----------------------------------------------------------------------------
def vote_of(
    a: float, b: float, *, fresh_a: bool = True, fresh_b: bool = True, est: Estimator | None = None
) -> tuple[Estimator, Estimate]:
    est = est or Estimator(PMAP, SITE)
    v = BASE.copy()
    v[IDX["tank05.fluid_temp"]], v[IDX["tank05.fluid_temp_b"]] = a, b
    fresh = np.ones(len(v), dtype=bool)
    fresh[IDX["tank05.fluid_temp"]], fresh[IDX["tank05.fluid_temp_b"]] = fresh_a, fresh_b
    e = est.update(0.0, v, fresh)
    return est, e


def test_vote_both_good_and_close_is_their_mean_and_good():
    _, e = vote_of(50.0, 51.0)
    assert e.voted["tank05.fluid_temp"] == (50.5, GOOD)
    assert e.voted_flags["tank05.fluid_temp"] == 0


def test_vote_disagreeing_sensors_give_the_higher_uncertain_and_both_flagged_disagree():
    _, e = vote_of(50.0, 53.0)
    assert e.voted["tank05.fluid_temp"] == (53.0, UNCERTAIN)
    assert e.voted_flags["tank05.fluid_temp"] & FLAG_DISAGREE
    for name in ("tank05.fluid_temp", "tank05.fluid_temp_b"):
        assert flags_of(e, name) & FLAG_DISAGREE and quality_of(e, name) == UNCERTAIN


def test_vote_one_bad_gives_the_other_uncertain_and_both_bad_give_nan_bad():
    _, e = vote_of(50.0, math.nan)
    assert e.voted["tank05.fluid_temp"] == (50.0, UNCERTAIN)
    _, e = vote_of(50.0, 51.0, fresh_a=False)
    assert e.voted["tank05.fluid_temp"] == (51.0, UNCERTAIN)
    _, e = vote_of(math.nan, 51.0, fresh_b=False)
    value, q = e.voted["tank05.fluid_temp"]
    assert math.isnan(value) and q == BAD


# ----------------------------------------------------------------------------
# restart
# ----------------------------------------------------------------------------
def test_state_survives_a_restart_as_json_and_keeps_an_identified_drifting_sensor():
    ls = Lockstep()
    ls.run(WARM_S)
    ls.plant.sensors.inject("tank01.fluid_temp", "drift", {"rate_per_h": 6.0})
    run_until_flagged(ls, "tank01.fluid_temp", FLAG_DRIFT, 1200)
    saved = json.loads(json.dumps(ls.est.state()))
    fresh_est = Estimator(PMAP, SITE)
    fresh_est.restore(saved)
    ls.est = fresh_est
    e = ls.step()
    assert flags_of(e, "tank01.fluid_temp") & FLAG_DRIFT
    assert e.voted["tank01.fluid_temp"][1] == UNCERTAIN
    assert abs(e.voted["tank01.fluid_temp"][0] - ls.truth("tank01")) < 0.3
    with pytest.raises(ValueError):
        fresh_est.restore({"version": 99})


def test_a_restart_after_the_loop_moved_does_not_call_its_healthy_sensor_drifting():
    """The loop reference is fast state: restored from before a gap in which the
    loop cooled (the PLC's safe state runs the fans flat out), it flagged the
    healthy supply sensor as drifting 120 s after the restart."""
    ls = Lockstep()
    ls.run(WARM_S)
    saved = json.loads(json.dumps(ls.est.state()))
    assert all(set(loop) == {"drift"} for loop in saved["loops"].values())
    for name, loop in saved["loops"].items():  # as an earlier version saved it: 5 K warmer
        loop["ref_c"] = ls.plant.T_cold[[lp.name for lp in SITE.loops].index(name)] + 5.0
    fresh_est = Estimator(PMAP, SITE)
    fresh_est.restore(saved)
    ls.est = fresh_est
    for _ in range(300):
        e = ls.step()
        assert not flags_of(e, "loop1.supply_temp") & FLAG_DRIFT


def test_update_rejects_arrays_of_the_wrong_length():
    est = Estimator(PMAP, SITE)
    with pytest.raises(ValueError):
        est.update(0.0, np.zeros(3), np.ones(3, dtype=bool))


# ----------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------
_N = len(PMAP)
_special = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -3276.8, 6553.5, 0.0, 1e9, -1e9]),
)
_scan = st.tuples(
    st.integers(0, 2**32 - 1),  # noise seed
    st.floats(0.0, 1.0),  # share of points not fresh
    st.floats(0.0, 30.0),  # seconds since the previous scan
    st.lists(st.tuples(st.integers(0, _N - 1), _special), max_size=30),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_scan, min_size=1, max_size=8))
def test_quality_is_always_0_1_or_2_and_a_nan_or_stale_input_is_never_good(scans):
    est = Estimator(PMAP, SITE)
    t = 0.0
    for seed, stale_share, dt, specials in scans:
        rng = np.random.default_rng(seed)
        v = BASE * (1.0 + 0.01 * rng.standard_normal(_N))
        fresh = rng.random(_N) >= stale_share
        for i, x in specials:
            v[i] = x
        t += dt
        e = est.update(t, v, fresh)
        assert e.quality.dtype == np.uint8
        assert set(np.unique(e.quality)) <= {GOOD, UNCERTAIN, BAD}
        good = e.quality == GOOD
        assert not (good & ~np.isfinite(v)).any()
        assert not (good & ~fresh).any()
        assert (e.flags[good] == 0).all() and (e.flags[~good] != 0).all()
        assert np.isfinite(e.values[e.quality != BAD]).all()
        assert np.array_equal(e.values[good], v[good])
        for value, q in e.voted.values():
            assert q in (GOOD, UNCERTAIN, BAD)
            assert (q == BAD) == (not math.isfinite(value))


def test_each_latched_reason_expires_on_its_own_time():
    """A point stale for a few scans, then failing (NaN), showed the comms loss
    for as long as the failure lasted: one latch time per point let the NaN keep
    the stale flag alive, and SCADA read BadCommunicationError for a failed sensor."""
    ls = Lockstep(seed=3)
    ls.run(WARM_S)
    name = "tank03.fluid_temp"
    ls.fresh[IDX[name]] = False
    e = ls.run(3)
    assert flags_of(e, name) & FLAG_STALE
    ls.fresh[IDX[name]] = True
    ls.run(5)
    for _ in range(100):  # a failed sensor, read every scan
        v = ls.plant.sensors.sample()
        v[IDX[name]] = np.nan
        ls.plant.heartbeat = (ls.plant.heartbeat + 1) % 65536
        ls.sp.step()
        e = ls.est.update(ls.sp.t, v, ls.fresh)
    assert flags_of(e, name) & FLAG_NAN
    assert not flags_of(e, name) & FLAG_STALE  # the comms loss ended 100 s ago


def _stuck_over_every_point(
    est: StuckDetector, t: float, v: np.ndarray, accept: np.ndarray, cur: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stuck rule as one pass over every point and pair (the form before the
    pass was narrowed to the pairs and points that can still be stuck)."""
    from thermogate.controller import stuck as E

    elig = accept & est._elig
    changed = elig & (v != est._frozen)
    np.copyto(est._frozen, v, where=changed)
    est._frozen_t[changed] = t
    est._frozen_n[changed] = 0.0
    np.add(est._frozen_n, 1.0, out=est._frozen_n, where=elig & ~changed)
    wv = cur[est._pw]
    reset = changed[est._pp]
    np.copyto(est._w0, wv, where=reset)
    est._wmax[reset] = 0.0
    fill = np.isnan(est._w0) & ~np.isnan(wv)
    np.copyto(est._w0, wv, where=fill)
    thr = np.maximum(est._pw_abs, est._pw_rel * np.abs(est._w0))
    est._wmax[:] = np.fmax(est._wmax, np.abs(wv - est._w0) / thr)
    moved = np.zeros(est.n)
    moved_fast = np.zeros(est.n)
    moved[est._pp_heads] = np.maximum.reduceat(est._wmax, est._pp_starts)
    fast = np.where(est._pw_fast, est._wmax, 0.0)
    moved_fast[est._pp_heads] = np.maximum.reduceat(fast, est._pp_starts)
    frozen_for = t - est._frozen_t
    stuck = (
        elig
        & ~changed
        & (np.abs(v) > est._zero_band)
        & (est._frozen_n >= E.STUCK_MIN_SAMPLES)
        & (
            ((frozen_for >= STUCK_S) & (moved >= 1.0) & (est._frozen_n >= E.STUCK_MIN_SAMPLES_SLOW))
            | ((frozen_for >= E.STUCK_FAST_S) & (moved_fast >= E.STUCK_FAST_X))
        )
    )
    return stuck, stuck & (frozen_for >= STUCK_BAD_S)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), p_hold=st.floats(0.3, 0.95), p_away=st.floats(0.0, 0.2))
def test_stuck_narrowed_to_the_points_that_can_be_stuck_equals_the_pass_over_every_point(
    seed: int, p_hold: float, p_away: float
) -> None:
    rng = np.random.default_rng(seed)
    fast, ref = StuckDetector(PMAP, SITE), StuckDetector(PMAP, SITE)
    v = rng.uniform(-5.0, 80.0, fast.n)
    for k in range(70):
        t = 5.0 * k
        move = rng.random(fast.n) > p_hold  # the rest repeat their last reading
        v = np.where(move, v + rng.normal(0.0, 3.0, fast.n), v)
        v[rng.random(fast.n) < 0.02] = 0.0  # equipment off
        accept = rng.random(fast.n) >= p_away
        cur = np.where(accept, v, np.nan)
        got = fast.step(t, v, accept, cur)
        want = _stuck_over_every_point(ref, t, v, accept, cur)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)
        for name in ("_frozen", "_frozen_t", "_frozen_n", "_w0", "_wmax"):
            a, b = getattr(fast, name), getattr(ref, name)
            assert np.array_equal(a.view(np.int64), b.view(np.int64)), name
