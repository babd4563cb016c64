"""The physics prior: forecasts and headroom from the site description alone, the
live forecaster's first hour with it, and the hand-over to a learned model."""

from __future__ import annotations

import argparse
import io
import json
import math
from collections import deque
from contextlib import redirect_stdout
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.core import DefaultPlanner, LoadInfo, SiteNow
from thermogate.controller.historian import Historian, HistoryReader
from thermogate.controller.modelcli import forecast_cli
from thermogate.controller.retrain import history_dataset
from thermogate.controller.simulate import HISTORIAN_EPOCH_S, SimulationResult, run_simulation
from thermogate.models.dataset import FEATURES, KindData, zone_specs
from thermogate.models.live import LiveForecaster
from thermogate.models.prior import (
    INITIAL_MARGIN_K,
    PRIOR_SOURCE,
    TRIP_OVERSHOOT_K,
    PhysicsPrior,
    zone_physics,
)
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.records import record_columns
from thermogate.plc.site import Site, demo_site

STEP_MIN = 35  # the tanks' budget steps from LOW_FRAC to their rating here (min)
LOW_FRAC = 0.4
HOURS = 70 / 60


class StepPlanner(DefaultPlanner):
    """Tanks at LOW_FRAC of their rating, then all at rating from STEP_MIN on;
    remembers the sources of the headroom the seam handed in."""

    def __init__(self, site: Site) -> None:
        self.tanks = {tk.name for tk in site.tanks}
        self.sources: set[str] = set()

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]:
        self.sources |= {ld.forecast.source for ld in loads if ld.forecast is not None}
        frac = 1.0 if t >= STEP_MIN * 60.0 else LOW_FRAC
        return {ld.name: ld.rated_kw * (frac if ld.name in self.tanks else 1.0) for ld in loads}


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A new site's first 70 minutes, its tanks stepping up at 45 min, recorded in
    a historian with no model in it."""
    site = replace(demo_site(), import_limit_kw=5000.0)  # the step is not cut by the grid
    path = tmp_path_factory.mktemp("prior") / "new_site.db"
    cols = record_columns(build_point_map(site), site)
    fc = LiveForecaster(site, cols)
    planner = StepPlanner(site)
    with Historian(path, cols, site_name=site.name) as h:
        res = run_simulation(
            site, "normal-day", HOURS, historian=h, scan_s=5.0, planner=planner, forecaster=fc
        )
        h.flush(timeout=120.0)
    with HistoryReader(path, site.name) as reader:
        ds = history_dataset(reader, site)
    return {"site": site, "path": path, "ds": ds, "fc": fc, "res": res, "planner": planner}


def test_prior_parameters_come_from_the_site_description_alone() -> None:
    site = demo_site()
    ph = zone_physics(site)
    assert set(ph) == {s.name for s in zone_specs(site)}
    tank = site.tanks[0]
    # 2,000 L of dielectric at 0.8 kg/L x 2.1 kJ/(kg K); the HX's design UA
    assert ph[tank.name].heat_capacity_kj_k == pytest.approx(2000 * 0.8 * 2.1)
    assert ph[tank.name].ua_kw_k == tank.hx_ua_kw_k
    assert ph[tank.name].cap_c == tank.limits.fluid_trip_c + TRIP_OVERSHOOT_K
    loop = site.loops[0]
    ua = sum(d.capacity_kw / d.design_approach_k for d in loop.dry_coolers)
    assert ph[loop.name].ua_kw_k == pytest.approx(ua)
    assert ph[loop.name].cap_c == pytest.approx(
        max(t.limits.fluid_trip_c for t in site.tanks if t.loop == loop.name) + TRIP_OVERSHOOT_K
    )
    assert ph[site.cdus[0].name].cap_c == site.cdus[0].supply_trip_c + TRIP_OVERSHOOT_K


def test_prior_forecasts_a_heat_step_in_the_right_direction_and_magnitude(step: dict) -> None:
    tanks = step["ds"]["tank"]
    t_before = HISTORIAN_EPOCH_S + (STEP_MIN - 1) * 60.0  # the last minute before the step
    rows = tanks.take(tanks.times == tanks.times[np.argmin(np.abs(tanks.times - t_before))])
    assert len(rows) == len(step["site"].tanks)
    assert (rows.feature("load_frac") < LOW_FRAC + 0.1).all()  # still before the step
    after = tanks.take(tanks.times == rows.times[0] + 5 * 60.0)  # the load the step brought
    assert list(after.zones) == list(rows.zones)
    extra = after.feature("power_kw") - rows.feature("power_kw")
    stepped = extra > 0.3 * rows.rated_kw  # the miners; a GPU tank's load is its jobs'
    assert stepped.sum() >= 10
    prior = PhysicsPrior(step["site"])
    mean, upper = prior.predict(rows, extra)
    actual = rows.temp[:, None] + rows.y
    j5 = rows.horizons_min.index(5)
    rise = (actual[:, j5] - rows.temp)[stepped]
    rise_mean = (mean[:, j5] - rows.temp)[stepped]
    assert (rise > 1.0).all()  # the step heats the tanks
    assert (rise_mean > 1.0).all()  # and the prior says so, before it happened
    # within a plausible magnitude: a factor 2 of what happened, 5 minutes on
    assert (rise_mean < 2.0 * rise).all() and (rise_mean > rise / 2.0).all()
    assert (actual <= upper).all()  # the upper bound held at every horizon
    # and it is no wilder than the zone heating at full nameplate with no cooling
    c_min = np.array([prior.physics[z].heat_capacity_kj_k for z in rows.zones]) / 60.0
    h = np.asarray(rows.horizons_min, float)
    assert (upper - rows.temp[:, None] <= (rows.rated_kw / c_min)[:, None] * h + 0.5).all()


def _rows(kind: str, temp: float, power: float, ref: float, d5: float, rated: float) -> KindData:
    names = FEATURES[kind]
    x = dict.fromkeys(names, 0.0)
    x.update(temp=temp, power_kw=power, load_frac=power / rated, d_temp_5=d5)
    x["ambient" if kind == "loop" else "supply_temp"] = ref
    x["temp_minus_ambient" if kind == "loop" else "temp_minus_supply"] = temp - ref
    return KindData(
        kind, names, (5, 15, 30), np.array([[x[n] for n in names]]), np.full((1, 3), np.nan),
        np.zeros(1), np.array(["z"], dtype=object), np.array([rated]), np.array([60.0]),
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["tank", "cdu", "loop"]),
    temp=st.floats(-20.0, 150.0),
    power=st.floats(0.0, 10_000.0),
    ref=st.floats(-20.0, 120.0),
    d5=st.floats(-50.0, 50.0),
    extra=st.floats(0.0, 10_000.0),
    scored=st.lists(st.floats(-100.0, 100.0), max_size=60),
)
def test_prior_upper_bound_never_exceeds_trip_plus_overshoot(
    kind: str, temp: float, power: float, ref: float, d5: float, extra: float, scored: list
) -> None:
    site = demo_site()
    prior = PhysicsPrior(site)
    zone = next(z for z, p in prior.physics.items() if p.kind == kind)
    rows = _rows(kind, temp, power, ref, d5, prior.physics[zone].rated_kw)
    rows.zones[:] = zone
    for i, e in enumerate(scored):  # whatever its live errors were
        prior.errors.setdefault((kind, 30), deque()).append(e)
        prior.minutes[(kind, 30)] = i + 1
    mean, upper = prior.predict(rows, extra)
    cap = prior.physics[zone].cap_c
    assert np.isfinite(upper).all() and (upper <= cap).all()
    assert (mean <= upper).all()
    hr = prior.headroom([rows])[zone]
    assert hr.bound_c <= cap and hr.extra_kw >= 0.0


def test_prior_margin_grows_when_an_unannounced_step_beats_its_frozen_path(step: dict) -> None:
    prior = PhysicsPrior(step["site"])
    initial = prior.margin("tank", (5, 15, 30))
    prior.replay(step["ds"])  # forecasts at the load of the moment: the step is a surprise
    assert (prior.margin("tank", (5, 15))[0] > initial[0]).all()


@pytest.mark.parametrize("kind", ["tank", "cdu", "loop"])
def test_prior_headroom_counts_the_travel_its_actuator_has_left(kind: str) -> None:
    prior = PhysicsPrior(demo_site())
    zone = next(z for z, p in prior.physics.items() if p.kind == kind)
    ph = prior.physics[zone]
    actuator = "fan_speed" if kind == "loop" else "valve_pos"
    ref = 25.0 if kind == "loop" else 35.0
    temp = ph.alarm_c - 8.0  # held steady, carrying a quarter of its nameplate

    def headroom_at(pos: float) -> float:
        rows = _rows(kind, temp, 0.25 * ph.rated_kw, ref, 0.0, ph.rated_kw)
        rows.X[:, rows.col(actuator)] = pos
        rows = replace(rows, zones=np.array([zone], dtype=object))
        return prior.headroom([rows])[zone].extra_kw

    wide_open, half, shut = headroom_at(100.0), headroom_at(50.0), headroom_at(0.0)
    assert wide_open < half < shut  # a saturated actuator adds no conductance
    assert shut <= 0.75 * ph.rated_kw


def _warming_prior(rise_c: np.ndarray) -> PhysicsPrior:
    """A prior fed one tank minute by minute: the tank reads ``rise_c`` above 45 °C
    at minute ``i`` while its rows show no trend (a reference warming the RC
    cannot see), forecasting at every minute and scoring what comes due."""
    prior = PhysicsPrior(demo_site())
    zone = next(z for z, p in prior.physics.items() if p.kind == "tank")
    for i, r in enumerate(rise_c):
        rows = _rows("tank", 45.0 + float(r), 20.0, 35.0, 0.0, prior.physics[zone].rated_kw)
        rows = replace(rows, zones=np.array([zone], dtype=object), times=np.array([i * 60.0]))
        prior.observe([rows], i * 60.0)
        prior.forecast([rows], i * 60.0)
    return prior


def test_prior_bound_keeps_its_coverage_through_an_accelerating_warming() -> None:
    # 0.5 K/h at first, 5.5 K/h four hours on: every error beats the window's
    # past quantile, so the window alone misses nearly every minute
    minutes = np.arange(300)
    rise = 0.5 * minutes / 60.0 + 0.5 * (minutes / 60.0) ** 2 * 1.25
    prior = _warming_prior(rise)
    score = prior.score["tank"]
    assert score.n_coverage >= 250
    assert score.held / score.n_coverage >= 0.9
    assert prior.correction("tank", 15) > 0.0


def test_prior_correction_stays_at_zero_on_a_steady_tank() -> None:
    prior = _warming_prior(np.zeros(200))
    assert all(prior.correction("tank", h) == 0.0 for h in (5, 15, 30))
    assert prior.score["tank"].held == prior.score["tank"].n_coverage


def test_live_forecaster_without_a_model_forecasts_from_the_prior_in_its_first_20_minutes(
    step: dict,
) -> None:
    fc, res = step["fc"], step["res"]
    assert fc.model is None and fc.first_forecast_t is not None
    assert fc.first_forecast_t <= 20 * 60.0
    assert res.summary["forecast"]["source"] == PRIOR_SOURCE
    assert res.meta["forecast"]["first_forecast_h"] <= 20 / 60
    infos = [e for e in res.events if e["source"] == "model" and e["kind"] == "info"]
    assert infos and "physics prior" in str(infos[0]["message"])
    # the report series: a forecast bound below the physical cap, marked as the prior's
    site = step["site"]
    cap = {z: p.cap_c for z, p in zone_physics(site).items()}
    s = res.series
    for t in site.tanks:
        up = s[f"forecast.tank.{t.name}.upper15_c"]
        assert np.isfinite(up).any() and (up[np.isfinite(up)] <= cap[t.name]).all()
    prior = s["forecast.prior"] == 1.0
    assert prior.any()
    for t in site.tanks:  # scored against what the sensors measured, as a model's are
        measured = s[f"forecast.tank.{t.name}.measured_c"][prior]
        assert np.isfinite(measured).mean() > 0.9
    # the planner got the prior's headroom, marked as such (no learned model to give any)
    assert step["planner"].sources == {"prior"}


def test_the_planner_is_handed_the_priors_headroom_marked_as_such() -> None:
    from thermogate.controller.forecasting import load_forecasts
    from thermogate.models.live import LoadHeadroom

    got = load_forecasts({"tank01": LoadHeadroom(12.0, 300.0, math.inf, False, "prior")})
    assert got["tank01"].source == "prior" and got["tank01"].trusted is False
    assert got["tank01"].headroom_kw == 12.0


@pytest.fixture(scope="module")
def learned_run() -> tuple[LiveForecaster, SimulationResult]:
    """A quiet first 66 minutes that learns its model from the first hour."""
    site = replace(demo_site(), import_limit_kw=5000.0)
    cols = record_columns(build_point_map(site), site)
    fc = LiveForecaster(site, cols, learn_after_s=3600.0)
    return fc, run_simulation(site, "normal-day", 1.1, scan_s=5.0, forecaster=fc)


def test_a_model_learned_in_run_takes_over_from_the_prior_with_a_notice(
    learned_run: tuple[LiveForecaster, SimulationResult],
) -> None:
    fc, res = learned_run
    assert fc.model is not None
    assert fc.first_forecast_t is not None and fc.first_forecast_t <= 20 * 60.0
    assert fc.handover_t is not None and fc.handover_t >= 3600.0 - 60.0
    msgs = [str(e["message"]) for e in res.events if e["source"] == "model"]
    handover = [m for m in msgs if m.startswith("forecast hand-over")]
    assert len(handover) == 1 and "physics prior" in handover[0] and "learned" in handover[0]
    assert res.meta["forecast"]["handover_h"] == pytest.approx(1.0, abs=0.05)
    prior_on = res.series["forecast.prior"]
    t_h = res.series["t_h"]
    # the forecasts shown until the hand-over (and for a horizon after it) are the prior's
    assert (prior_on[(t_h > 20 / 60 + 0.25 + 3 / 60) & (t_h < 1.0)] == 1.0).all()


def test_prior_margin_shrinks_to_its_own_live_errors_on_a_quiet_site(
    learned_run: tuple[LiveForecaster, SimulationResult],
) -> None:
    prior = learned_run[0].prior
    assert prior is not None  # it kept forecasting beside the learned model
    for kind in ("tank", "cdu", "loop"):
        measured = prior.margin(kind, (5, 15))
        assert (measured < [INITIAL_MARGIN_K[5], INITIAL_MARGIN_K[15]]).all(), kind
    assert prior.scores()["tank"]["coverage_15"] >= 0.9


def test_forecast_cli_on_a_new_site_with_no_model_answers_with_the_prior(step: dict) -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = forecast_cli(argparse.Namespace(db=str(step["path"]), site=None, json=True))
    assert rc == 0
    out = json.loads(buf.getvalue())
    assert out["version"] is None and out["source"] == PRIOR_SOURCE
    assert "no promoted model" in out["reasons"][0]
    cap = {z: p.cap_c for z, p in zone_physics(step["site"]).items()}
    zones = {z["zone"]: z for z in out["zones"]}
    assert set(zones) == set(cap)
    for name, z in zones.items():
        assert all(z["upper_c"][h] <= cap[name] for h in ("5", "15", "30"))
        assert all(z["upper_c"][h] >= z["mean_c"][h] for h in ("5", "15", "30"))
        assert z["headroom"] is not None and z["headroom"]["conservative"] is True
        assert z["headroom"]["extra_kw"] >= 0.0
    buf = io.StringIO()
    with redirect_stdout(buf):
        forecast_cli(argparse.Namespace(db=str(step["path"]), site=None, json=False))
    assert buf.getvalue().startswith(PRIOR_SOURCE)
    # the data time for people: a UTC date and time, not raw epoch seconds
    stamp = datetime.fromtimestamp(out["t"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"from data up to {stamp}" in buf.getvalue().splitlines()[0]
