"""Heat headroom and the trust checks on a model trained on a 4 h normal-day run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from history import simulated_history

from thermogate.models.dataset import KindData
from thermogate.models.forecast import ThermalModel
from thermogate.models.headroom import headroom, latest_rows, time_to_limit
from thermogate.models.trust import LiveErrors, Trust
from thermogate.plc.site import demo_site

HOURS = 4.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    site = demo_site()
    path = tmp_path_factory.mktemp("headroom") / "hist.db"
    with simulated_history(path, HOURS) as h:
        from thermogate.controller.retrain import history_dataset

        ds = history_dataset(h.reader, site, kinds=("tank", "cdu"))
        live = history_dataset(h.reader, site, kinds=("tank", "cdu"), require_targets=False)
    model = ThermalModel().fit(ds)
    return {"site": site, "ds": ds, "live": live, "model": model}


def _tanks(trained: dict) -> KindData:
    return latest_rows(trained["live"]["tank"])[0]


def _with(
    rows: KindData, *, load_frac: float | None = None, dtemp: float | np.ndarray = 0.0
) -> KindData:
    X = rows.X.copy()
    if load_frac is not None:
        p = load_frac * rows.rated_kw
        X[:, rows.col("power_kw")] = p
        X[:, rows.col("load_frac")] = load_frac
    for f in ("temp", "temp_minus_supply"):
        X[:, rows.col(f)] += dtemp
    return KindData(rows.kind, rows.feature_names, rows.horizons_min, X, rows.y, rows.times,
                    rows.zones, rows.rated_kw, rows.alarm_c)  # fmt: skip


def test_compiled_forest_matches_sklearn(trained: dict) -> None:
    for km in trained["model"].kinds.values():
        cf = km.compiled()
        assert cf is not None
        X = trained["ds"][km.kind].X[::50]
        ref = np.column_stack([r.predict(X) for r in km.regressors])
        np.testing.assert_allclose(cf.predict(X), ref, atol=1e-9)


def test_full_site_headroom_covers_every_zone_within_limits(trained: dict) -> None:
    model, live, site = trained["model"], trained["live"], trained["site"]
    hr = headroom(model, live, site)
    zones = {t.name for t in site.tanks} | {c.name for c in site.cdus}
    assert set(hr) == zones
    assert all(h.extra_kw >= 0 and h.bound_c < h.limit_c for h in hr.values())


def test_headroom_monotone_in_load(trained: dict) -> None:
    model, site = trained["model"], trained["site"]
    rows = _tanks(trained)
    loads = np.linspace(0.1, 1.0, 7)
    per_load = [headroom(model, _with(rows, load_frac=f), site) for f in loads]
    for z in rows.zones:
        extra = [hr[str(z)].extra_kw for hr in per_load]
        assert all(b <= a + 1e-6 for a, b in itertools.pairwise(extra)), (z, extra)
        assert extra[0] > extra[-1]


def test_headroom_shrinks_as_the_tank_gets_hotter(trained: dict) -> None:
    model, site = trained["model"], trained["site"]
    rows = _tanks(trained)
    limit = rows.alarm_c - 2.0
    steps = [0.0, 2.0, 4.0, 6.0]
    per_t = [headroom(model, _with(rows, load_frac=0.5, dtemp=d), site) for d in steps]
    for i, z in enumerate(rows.zones):
        extra = [hr[str(z)].extra_kw for hr in per_t]
        assert all(b <= a + 1e-6 for a, b in itertools.pairwise(extra)), (z, extra)
        if rows.temp[i] + steps[-1] >= limit[i]:
            assert extra[-1] == 0.0


def test_trust_ood_stale_and_fallback(trained: dict) -> None:
    model, live, site = trained["model"], trained["live"], trained["site"]
    trust = Trust(model)
    # the training window's rows: the live rows of a 4 h run sit at a time of
    # day the model never saw (tod_sin/tod_cos out of range), rightly flagged
    seen = trained["ds"]
    now = float(live["tank"].times.max())
    ok = trust.check(seen, now, now - 3600.0)
    assert ok.ok, ok.reasons

    rows = _tanks(trained)
    X = rows.X.copy()
    X[:, rows.col("ambient")] = 45.0
    hot_day = KindData(rows.kind, rows.feature_names, rows.horizons_min, X, rows.y, rows.times,
                       rows.zones, rows.rated_kw, rows.alarm_c)  # fmt: skip
    v = trust.check(hot_day, now, now - 3600.0)
    assert not v.ok and set(v.ood_zones) == set(rows.zones.tolist())
    assert any("out of distribution" in r and "ambient" in r for r in v.reasons)
    assert trust.log and trust.log[-1][1] == v.reasons

    stale = trust.check(seen, now + 15 * 86400.0, now)
    assert not stale.ok and any("stale" in r for r in stale.reasons)

    low = _with(rows, load_frac=0.3)
    normal = headroom(model, low, site)
    fallback = trust.conservative_headroom(low, site)
    for z, h in normal.items():
        assert fallback[z].extra_kw <= h.extra_kw + 1e-6
    near = trust.conservative_headroom(_with(rows, load_frac=0.3, dtemp=4.0), site)
    for i, z in enumerate(rows.zones):
        if rows.temp[i] + 4.0 >= rows.alarm_c[i] - 5.0:
            assert near[str(z)].extra_kw == 0.0


def test_live_error_check_trips_when_errors_inflate(trained: dict) -> None:
    model, live, seen = trained["model"], trained["live"], trained["ds"]
    now = float(live["tank"].times.max())
    rng = np.random.default_rng(0)
    for floor in (0.0, 0.1):  # without and with the sensor-resolution floor
        trust = Trust(model, min_error_c=floor)
        errs = LiveErrors()
        q = max(trust.calibration_quantile("tank", 15), floor)
        errs.add("tank", 15, rng.uniform(0, 0.8 * q, 200), 0.0)
        assert trust.check(seen, now, now, errs).ok
        errs.add("tank", 15, rng.uniform(2 * q, 4 * q, 200), 0.0)
        v = trust.check(seen, now, now, errs)
        assert not v.ok and any("live error" in r and "tank 15" in r for r in v.reasons)


def test_live_errors_below_a_sensor_resolution_never_distrust(trained: dict) -> None:
    model, live, seen = trained["model"], trained["live"], trained["ds"]
    trust = Trust(model, min_error_c=0.1)
    now = float(live["tank"].times.max())
    errs = LiveErrors()
    q = trust.calibration_quantile("tank", 15)
    errs.add("tank", 15, np.full(200, min(0.09, 10 * q)), 0.0)  # many times q, under 0.1 °C
    assert trust.check(seen, now, now, errs).ok


def test_time_to_limit_edge_cases() -> None:
    h = (5, 15, 30)
    limit = np.full(5, 50.0)
    temp = np.array([51.0, 50.0, 40.0, 40.0, 40.0])
    upper = np.array(
        [
            [45.0, 45.0, 45.0],  # already over now: 0, even if the forecast says it cools
            [49.0, 49.0, 49.0],  # exactly at the limit now counts as reached
            [45.0, 55.0, 60.0],  # crosses between 5 and 15 min: 5 + 10 * (50 - 45) / 10
            [44.0, 49.9, 49.99],  # never reaches it within the last horizon
            [52.0, 48.0, 40.0],  # crosses before 5 min and then falls back: the first crossing
        ]
    )
    got = time_to_limit(temp, upper, h, limit)
    np.testing.assert_allclose(got[[0, 1, 2, 4]], [0.0, 0.0, 10.0, 5 * 10 / 12])
    assert math.isinf(got[3])
