"""The adaptive conformal bound: quantile tracking per kind and horizon, its replay
on test rows with delayed actuals, and the live forecaster adapting after a shift."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_models_live import _feed  # the same replay of a recorded minute

from thermogate.controller.simulate import run_simulation
from thermogate.models.conformal import (
    CAP_FACTOR,
    CAP_FACTOR_Q,
    AdaptiveBound,
    TrackerConfig,
    TrackerState,
    track_step,
)
from thermogate.models.dataset import KindData, build_dataset
from thermogate.models.forecast import ThermalModel, adaptive_offsets
from thermogate.models.headroom import headroom
from thermogate.models.live import LiveForecaster
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.records import record_columns
from thermogate.plc.site import demo_site

ALPHA = 0.04


def _model(q: list[float], top: list[float] | None = None, alpha: float = ALPHA) -> SimpleNamespace:
    """What an AdaptiveBound reads of a ThermalModel: alpha and each kind's q, calib_max."""
    km = SimpleNamespace(q=np.array(q))
    if top is not None:
        km.calib_max = np.array(top)
    return SimpleNamespace(alpha=alpha, kinds={"tank": km})


def _ar1(n: int, rho: float, seed: int) -> np.ndarray:
    """Unit-variance autocorrelated noise: residuals of a slow plant are not independent."""
    rng = np.random.default_rng(seed)
    e = np.zeros(n)
    for i in range(1, n):
        e[i] = rho * e[i - 1] + math.sqrt(1.0 - rho * rho) * rng.normal()
    return e


# ----------------------------------------------------------------------------
def test_offset_grows_after_a_run_of_misses_and_shrinks_after_a_run_of_hits() -> None:
    b = AdaptiveBound(_model([1.0], [2.0]))
    q0 = b.offsets("tank")[0]
    for _ in range(20):
        b.observe("tank", 0, [5.0])  # far above the bound
    grown = b.offsets("tank")[0]
    assert grown > q0
    for _ in range(200):
        b.observe("tank", 0, [-1.0])  # well inside it
    assert b.offsets("tank")[0] < grown


def test_a_miss_costs_more_than_a_hit_gives_back_in_the_ratio_of_alpha() -> None:
    cfg = TrackerConfig(alpha=ALPHA, step=0.1, cap=10.0)
    up = track_step(cfg, TrackerState(1.0), [2.0]).offset - 1.0
    down = 1.0 - track_step(cfg, TrackerState(1.0), [0.0]).offset
    assert up == pytest.approx(0.1 * (1 - ALPHA)) and down == pytest.approx(0.1 * ALPHA)


def test_one_wild_spike_moves_the_offset_by_one_step_not_by_its_size() -> None:
    b = AdaptiveBound(_model([1.0], [2.0]))
    step = b.cfg["tank"][0].step
    b.observe("tank", 0, [170.0])
    assert b.offsets("tank")[0] == pytest.approx(1.0 + step * (1 - ALPHA))


def test_a_stuck_high_sensor_widens_the_bound_to_the_cap_and_no_further() -> None:
    b = AdaptiveBound(_model([0.5], [1.2]))
    for _ in range(10_000):
        b.observe("tank", 0, [1e6])
    assert b.offsets("tank")[0] == pytest.approx(CAP_FACTOR * 1.2)


def test_invalid_scores_never_reach_the_offset() -> None:
    b = AdaptiveBound(_model([1.0], [2.0]))
    b.observe("tank", 0, [math.nan, math.inf, -math.inf])
    assert b.offsets("tank")[0] == 1.0 and b.state["tank"][0].steps == 0
    b.observe("tank", 0, [math.nan, 3.0])  # the valid one counts, alone
    assert b.state["tank"][0].scores == 1 and b.state["tank"][0].misses == 1


def test_zones_known_together_take_one_step_by_their_miss_fraction() -> None:
    cfg = TrackerConfig(alpha=ALPHA, step=0.1, cap=10.0)
    st_ = track_step(cfg, TrackerState(1.0), [2.0, 0.0, 0.0, 0.0])  # 1 of 4 missed
    assert st_.offset == pytest.approx(1.0 + 0.1 * (0.25 - ALPHA)) and st_.steps == 1


def test_a_miss_is_judged_against_the_offset_its_forecast_was_issued_with() -> None:
    cfg = TrackerConfig(alpha=ALPHA, step=0.1, cap=10.0)
    # the offset has since grown to 3; the forecast went out with 1 and the actual beat it
    assert track_step(cfg, TrackerState(3.0), [2.0], used=[1.0]).misses == 1
    assert track_step(cfg, TrackerState(3.0), [2.0]).misses == 0


def test_a_model_pickled_before_calib_max_still_gets_a_capped_bound() -> None:
    b = AdaptiveBound(_model([0.5]))  # no calib_max attribute at all
    assert b.cfg["tank"][0].cap == pytest.approx(CAP_FACTOR_Q * 0.5)
    assert b.offsets("tank")[0] == 0.5


def test_a_kind_the_model_does_not_know_is_ignored() -> None:
    b = AdaptiveBound(_model([1.0], [2.0]))
    b.observe("cdu", 0, [5.0])
    assert b.kinds() == ["tank"]


@settings(max_examples=150, deadline=None)
@given(
    q0=st.floats(-1.0, 5.0),
    top=st.floats(0.0, 10.0),
    batches=st.lists(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=6),
        max_size=60,
    ),
)
def test_offsets_stay_within_zero_and_the_cap_for_any_input(q0, top, batches) -> None:
    b = AdaptiveBound(_model([q0], [top]))
    cap = b.cfg["tank"][0].cap
    assert math.isfinite(cap) and cap > 0
    for scores in batches:
        b.observe("tank", 0, scores)
        q = b.offsets("tank")[0]
        assert 0.0 <= q <= cap


def test_long_run_miss_rate_converges_to_alpha_where_split_conformal_under_covers() -> None:
    """Calibrated on N(0, 1) residuals; deployed on a warmer, noisier regime
    (N(0.7, 1.3^2), autocorrelated); each score arrives 15 steps after its forecast."""
    rng = np.random.default_rng(1)
    cal = rng.normal(0.0, 1.0, 3000)
    q_static = float(np.quantile(cal, 1 - ALPHA))
    b = AdaptiveBound(_model([q_static], [float(cal.max())]))
    n, delay = 30_000, 15
    s = 0.7 + 1.3 * _ar1(n, 0.9, 2)
    used = np.zeros(n)
    for t in range(n):
        if t >= delay:
            b.observe("tank", 0, [s[t - delay]], [used[t - delay]])
        used[t] = b.offsets("tank")[0]
    assert (s > q_static).mean() > 3 * ALPHA  # the static bound misses far more than asked
    assert abs((s > used).mean() - ALPHA) < 0.01
    assert abs(b.miss_rate("tank")[0] - ALPHA) < 0.01


# ----------------------------------------------------------------------------
def _rows(
    times: np.ndarray, temp: np.ndarray, y: np.ndarray, horizons: tuple[int, ...]
) -> KindData:
    n = len(times)
    return KindData(
        kind="tank",
        feature_names=("temp",),
        horizons_min=horizons,
        X=temp[:, None],
        y=y,
        times=times,
        zones=np.array([f"z{i % 3}" for i in range(n)]),
        rated_kw=np.ones(n),
        alarm_c=np.full(n, 60.0),
    )


def test_the_replay_never_uses_an_actual_not_yet_known_at_the_row_time() -> None:
    horizons = (5, 15)
    minutes = np.repeat(np.arange(240), 3)  # 3 zones a minute
    times = 1e6 + 60.0 * minutes
    rng = np.random.default_rng(4)
    temp = 40.0 + rng.normal(0, 0.1, len(times))
    y = rng.normal(0.3, 0.2, (len(times), 2))  # warmer than calibrated: the offset moves
    model = _model([0.1, 0.2], [0.3, 0.5])
    mean, scale = temp[:, None].repeat(2, 1), np.ones(len(times))
    base = adaptive_offsets(model, _rows(times, temp, y, horizons), mean, scale)
    assert (base[-1] > base[0]).all()
    cut = 1e6 + 60.0 * 120
    for j, h in enumerate(horizons):
        future = times + 60.0 * h > cut  # actuals measured after `cut`
        y2 = y.copy()
        y2[future, j] += 100.0  # whatever they turn out to be
        other = adaptive_offsets(model, _rows(times, temp, y2, horizons), mean, scale)
        known = times <= cut
        np.testing.assert_array_equal(other[known], base[known])
        assert not np.array_equal(other[~known, j], base[~known, j])  # they do count later


def test_the_replay_starts_every_row_of_the_first_minutes_at_the_calibrated_offset() -> None:
    times = 60.0 * np.repeat(np.arange(30), 2)
    temp = np.full(len(times), 40.0)
    y = np.full((len(times), 1), 5.0)
    q = adaptive_offsets(
        _model([0.2], [0.4]), _rows(times, temp, y, (5,)), temp[:, None], np.ones(len(times))
    )
    assert (q[times < 5 * 60.0] == 0.2).all()  # no actual known before 5 minutes
    assert q[-1, 0] > 0.2


# ----------------------------------------------------------------------------
LEARN_H = 1.0
HOURS = 1.5


class _Capture(LiveForecaster):
    """Keeps one whole minute of scans from inside the learning window."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.captured: list[tuple[np.ndarray, np.ndarray]] = []

    def observe(self, t: float, values: np.ndarray, quality: np.ndarray) -> None:
        t_cap = 0.75 * LEARN_H * 3600.0
        if t_cap <= t < t_cap + 60.0:
            self.captured.append((values.copy(), quality.copy()))
        super().observe(t, values, quality)


@pytest.fixture(scope="module")
def learned() -> dict:
    site = demo_site()
    cols = record_columns(build_point_map(site), site)
    fc = _Capture(site, cols, learn_after_s=LEARN_H * 3600.0)
    res = run_simulation(site, "normal-day", HOURS, forecaster=fc, scan_s=5.0)
    assert fc.model is not None
    ds = build_dataset(fc._arrays(None), site)  # the run's whole history (it learned)
    return {"site": site, "cols": cols, "model": fc.model, "minute": fc.captured, "res": res,
            "ds": ds}  # fmt: skip


def _biased(model: ThermalModel, bias: dict[str, float]) -> ThermalModel:
    """The learned model forecasting ``temp - bias["c"] * s(x)`` at every horizon: it
    under-forecasts by ``bias["c"]`` in the bound's own units, whatever the plant does
    (s(x) is large on replayed minutes far from the hour it learned on)."""
    m = copy.deepcopy(model)
    for km in m.kinds.values():
        H = len(km.horizons_min)
        km.change = lambda X, km=km, H=H: np.repeat(-bias["c"] * km.scale(X)[:, None], H, axis=1)
    return m


def test_predict_and_headroom_take_the_adapted_offsets(learned: dict) -> None:
    model, ds = learned["model"], learned["ds"]
    tank = ds["tank"]
    km = model.kinds["tank"]
    _, upper = model.predict(tank)
    _, same = model.predict(tank, q=km.q)
    np.testing.assert_array_equal(upper, same)
    _, wider = model.predict(tank, q=km.q + 1.0)
    assert (wider > upper).all()
    base = headroom(model, ds, learned["site"])
    tight = headroom(model, ds, learned["site"], offsets={"tank": km.q + 1.0})
    assert base.keys() == tight.keys()
    tanks = {t.name for t in learned["site"].tanks}
    for z in tanks:
        assert tight[z].extra_kw <= base[z].extra_kw + 1e-9 and tight[z].bound_c > base[z].bound_c
    for z in set(base) - tanks:  # kinds the mapping does not name keep their calibration
        assert tight[z] == base[z]


def test_live_forecaster_widens_its_bound_after_a_shift_and_narrows_it_after(
    learned: dict,
) -> None:
    """A minute of the learning window replayed: the plant holds still, the model
    is exact, then under-forecasts by 1 °C for 90 minutes, then is exact again."""
    site, cols = learned["site"], learned["cols"]
    bias = {"c": 0.0}
    model = _biased(learned["model"], bias)
    q0 = np.maximum(model.kinds["tank"].q, 0.0)
    fc = LiveForecaster(site, cols, model, version=1)
    amb = cols.index("site.ambient_temp")
    t0 = math.ceil(learned["res"].sim.plant.t / 60.0) * 60.0 + 3600.0

    def feed(minutes: int, start: float) -> list:
        return _feed(fc, learned["minute"], amb, minutes, 0.0, start)

    assert feed(40, t0)  # exact forecasts: every bound holds
    calm = fc.bound().offsets("tank")
    assert (calm <= q0 + 1e-12).all()
    bias["c"] = 1.0
    feed(90, t0 + 40 * 60.0)
    hot = fc.bound().offsets("tank")
    assert (hot > q0).all(), (hot, q0)
    assert all(s.steps > 0 and s.misses > 0 for s in fc.bound().state["tank"])
    bias["c"] = 0.0
    feed(30, t0 + 130 * 60.0)  # the biased forecasts still in flight land: misses
    peak = fc.bound().offsets("tank")
    feed(120, t0 + 160 * 60.0)  # hits only: down by lr * q * alpha a minute
    assert (fc.bound().offsets("tank") < peak).all()


def test_a_new_model_starts_its_bound_from_its_own_calibration(learned: dict) -> None:
    model = learned["model"]
    fc = LiveForecaster(learned["site"], learned["cols"], model)
    fc.bound().observe("tank", 0, [1e3] * 5)
    assert fc.bound().offsets("tank")[0] > model.kinds["tank"].q[0]
    other = copy.deepcopy(model)
    fc.set_model(other, version=2)
    np.testing.assert_array_equal(fc.bound().offsets("tank"), np.maximum(other.kinds["tank"].q, 0))
