"""The PID step: bounded, no windup, immune to NaN, bumpless, slew-limited."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from thermogate.controller.pid import (
    PidConfig,
    PidConfigs,
    PidState,
    pid_step,
    pid_step_many,
    pid_track,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
measurement = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))
gains = st.floats(min_value=0.0, max_value=100.0)


@st.composite
def configs(draw: st.DrawFn) -> PidConfig:
    lo = draw(st.floats(min_value=-100.0, max_value=50.0))
    hi = lo + draw(st.floats(min_value=1.0, max_value=200.0))
    return PidConfig(
        kp=draw(gains),
        ki=draw(gains),
        kd=draw(gains),
        out_min=lo,
        out_max=hi,
        slew_per_s=draw(st.one_of(st.just(math.inf), st.floats(min_value=0.1, max_value=50.0))),
        action=draw(st.sampled_from(["direct", "reverse"])),
    )


@settings(max_examples=150, deadline=None)
@given(
    configs(),
    st.lists(measurement, min_size=1, max_size=40),
    finite,
    st.floats(min_value=0.05, max_value=5.0),
)
def test_output_stays_within_its_limits_for_any_measurements(cfg, meas, sp, dt):
    state = PidState()
    for m in meas:
        res = pid_step(cfg, state, sp, m, dt)
        state = res.state
        assert cfg.out_min <= res.output <= cfg.out_max
        assert math.isfinite(res.output)
        assert math.isfinite(state.integral)


@settings(max_examples=150, deadline=None)
@given(configs(), st.lists(finite, min_size=2, max_size=30), finite)
def test_a_nan_measurement_holds_the_output_and_never_touches_the_integral(cfg, meas, sp):
    state = PidState()
    for m in meas:
        state = pid_step(cfg, state, sp, m, 1.0).state
    before = state
    res = pid_step(cfg, state, sp, math.nan, 1.0)
    assert res.held
    assert res.output == before.output
    assert res.state.integral == before.integral
    # and the loop carries on normally afterwards: no NaN anywhere
    after = pid_step(cfg, res.state, sp, meas[-1], 1.0)
    assert math.isfinite(after.output) and math.isfinite(after.state.integral)


def test_invalid_flag_holds_like_a_nan():
    cfg = PidConfig(kp=2.0, ki=0.5)
    s = pid_step(cfg, PidState(), 50.0, 55.0, 1.0).state
    res = pid_step(cfg, s, 50.0, 80.0, 1.0, valid=False)
    assert res.held and res.output == s.output and res.state.integral == s.integral


def test_integral_does_not_wind_up_while_the_output_is_saturated():
    # A cooling valve at 100 % that still cannot reach setpoint for an hour.
    cfg = PidConfig(kp=5.0, ki=0.1, out_min=0.0, out_max=100.0)
    state = PidState()
    for _ in range(3600):
        state = pid_step(cfg, state, 50.0, 60.0, 1.0).state
    assert state.output == 100.0
    assert state.integral <= cfg.out_max
    # When the error reverses, the output leaves saturation within a few scans,
    # not after unwinding an hour of integral.
    scans = 0
    while state.output >= 100.0 and scans < 1000:
        state = pid_step(cfg, state, 50.0, 48.0, 1.0).state
        scans += 1
    assert scans <= 5


@settings(max_examples=100, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=100.0),
    finite,
    finite,
    st.floats(0.1, 10.0),
    st.floats(0.0, 1.0),
)
def test_manual_to_auto_transfer_is_bumpless(manual, sp, meas, kp, ki):
    cfg = PidConfig(kp=kp, ki=ki, out_min=0.0, out_max=100.0)
    state = PidState()
    for _ in range(3):
        state = pid_step(cfg, state, sp, meas, 1.0, manual_output=manual).state
    assert state.output == pytest.approx(manual)
    auto = pid_step(cfg, state, sp, meas, 1.0)
    # The first automatic output continues from the manual one: only one
    # step of integral action (ki * error * dt) may separate them.
    err = abs(meas - sp)
    assert abs(auto.output - manual) <= ki * err * 1.0 + 1e-6


@settings(max_examples=200, deadline=None)
@given(configs(), finite, finite, finite, finite, st.floats(min_value=0.05, max_value=5.0))
def test_a_tracked_loop_continues_from_the_output_the_actuator_really_got(
    cfg, sp, meas, first, applied, dt
):
    """A floor downstream raised the valve: the next step moves from there by at
    most one step of integral (and the slew), not from the PID's own output."""
    cfg = PidConfig(**{**cfg.__dict__, "kd": 0.0})  # the derivative is a separate push
    state = pid_step(cfg, PidState(), sp, first, dt).state
    tracked = pid_track(cfg, state, sp, meas, applied)
    real = min(max(applied, cfg.out_min), cfg.out_max)
    assert tracked.output == real
    nxt = pid_step(cfg, tracked, sp, meas, dt).output
    err = meas - sp if cfg.action == "direct" else sp - meas
    assert abs(nxt - real) <= cfg.ki * abs(err) * dt + 1e-6 * (1.0 + abs(real) + cfg.kp * abs(err))


def test_tracking_a_non_finite_value_changes_nothing():
    cfg = PidConfig(kp=2.0, ki=0.1)
    state = pid_step(cfg, PidState(), 40.0, 45.0, 1.0).state
    assert pid_track(cfg, state, 40.0, 45.0, math.nan) == state


def test_derivative_acts_on_the_measurement_so_a_setpoint_step_gives_no_kick():
    cfg = PidConfig(kp=0.0, ki=0.0, kd=10.0, out_min=-100.0, out_max=100.0)
    s = pid_step(cfg, PidState(), 50.0, 50.0, 1.0).state
    res = pid_step(cfg, s, 70.0, 50.0, 1.0)  # setpoint jumps, measurement still
    assert res.output == 0.0
    res = pid_step(cfg, res.state, 70.0, 51.0, 1.0)  # measurement rises 1 K/s
    assert res.output == pytest.approx(10.0)  # direct action: hotter -> more cooling


def test_slew_limit_bounds_every_step():
    cfg = PidConfig(kp=100.0, out_min=0.0, out_max=100.0, slew_per_s=2.0)
    s = pid_step(cfg, PidState(), 50.0, 50.0, 1.0).state
    for _ in range(10):
        res = pid_step(cfg, s, 50.0, 90.0, 0.5)
        assert abs(res.output - s.output) <= 2.0 * 0.5 + 1e-9
        s = res.state


def test_feed_forward_adds_before_the_clamp():
    cfg = PidConfig(kp=1.0, out_min=0.0, out_max=100.0)
    assert pid_step(cfg, PidState(), 50.0, 50.0, 1.0, feed_forward=30.0).output == 30.0
    assert pid_step(cfg, PidState(), 50.0, 50.0, 1.0, feed_forward=300.0).output == 100.0


def test_direct_and_reverse_action_push_opposite_ways():
    hot = pid_step(PidConfig(kp=1.0, out_min=-10, out_max=10), PidState(), 50.0, 55.0, 1.0)
    assert hot.output > 0  # direct: hotter -> more cooling output
    rev = pid_step(
        PidConfig(kp=1.0, out_min=-10, out_max=10, action="reverse"), PidState(), 50.0, 55.0, 1.0
    )
    assert rev.output < 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kp": -1.0},
        {"kp": math.nan},
        {"kp": 1.0, "out_min": 10.0, "out_max": 5.0},
        {"kp": 1.0, "slew_per_s": 0.0},
        {"kp": 1.0, "action": "sideways"},
    ],
)
def test_nonsense_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        PidConfig(**kwargs)


def test_non_positive_dt_is_refused():
    with pytest.raises(ValueError):
        pid_step(PidConfig(kp=1.0), PidState(), 1.0, 1.0, 0.0)


# -- many loops at once ------------------------------------------------------------------
@st.composite
def common_path_loops(draw: st.DrawFn) -> tuple[PidConfig, PidState, float, float]:
    """A loop on the array step's path: a last output, automatic, finite inputs.
    Gains and states reach far past the limits (saturation, the integral clamp)."""
    cfg = draw(configs())
    if draw(st.booleans()):  # an integral range of its own, either side of the output's
        a, b = draw(finite), draw(finite)
        cfg = PidConfig(**{**cfg.__dict__, "integral_min": min(a, b), "integral_max": max(a, b)})
    state = PidState(
        integral=draw(st.one_of(finite, st.sampled_from([0.0, -0.0, cfg.out_min, cfg.out_max]))),
        last_measurement=draw(st.one_of(finite, st.just(math.nan))),
        output=draw(st.one_of(finite, st.sampled_from([cfg.out_min, cfg.out_max, 0.0, -0.0]))),
    )
    sp = draw(st.one_of(finite, st.just(0.0)))
    meas = draw(st.one_of(finite, st.just(sp), st.just(-0.0)))
    return cfg, state, sp, meas


@settings(max_examples=200, deadline=None)
@given(
    st.lists(common_path_loops(), min_size=1, max_size=12),
    st.one_of(st.floats(min_value=0.001, max_value=10.0), st.just(1.0)),
)
@example(  # every term -0.0: the feed-forward's + 0.0 makes the output +0.0
    [(PidConfig(kp=1.0, kd=1.0, out_min=-1.0), PidState(-0.0, 0.0, 0.0), 0.0, -0.0)], 1.0
)
def test_the_array_step_equals_the_scalar_step_bit_for_bit_per_loop(loops, dt):
    cfgs = PidConfigs.of([c for c, _, _, _ in loops])

    def arr(xs: list[float]) -> np.ndarray:
        return np.array(xs, dtype=float)

    out, integral = pid_step_many(
        cfgs,
        arr([s.integral for _, s, _, _ in loops]),
        arr([s.last_measurement for _, s, _, _ in loops]),
        arr([s.output for _, s, _, _ in loops]),
        arr([sp for _, _, sp, _ in loops]),
        arr([m for _, _, _, m in loops]),
        dt,
    )
    for k, (cfg, state, sp, meas) in enumerate(loops):
        res = pid_step(cfg, state, sp, meas, dt)
        assert not res.held
        # hex: the same bits, the sign of a zero included
        assert float(out[k]).hex() == float(res.output).hex()
        assert float(integral[k]).hex() == float(res.state.integral).hex()
        assert res.state == PidState(res.state.integral, meas, res.output, False)


def test_a_retuned_loop_takes_its_new_settings_in_the_arrays():
    cfgs = PidConfigs.of([PidConfig(kp=1.0), PidConfig(kp=2.0, action="reverse")])
    cfgs.set(0, PidConfig(kp=3.0, ki=0.5, out_max=50.0, action="reverse"))
    assert cfgs.kp.tolist() == [3.0, 2.0] and cfgs.out_max.tolist() == [50.0, 100.0]
    assert cfgs.direct.tolist() == [False, False]
    assert cfgs.take(np.array([1])).kp.tolist() == [2.0]
