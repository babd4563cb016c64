"""Dataset builder: alignment of features and targets, gaps and bad samples (hand-made arrays)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.models import dataset
from thermogate.models.baselines import RCBaseline, persistence
from thermogate.models.bins import bin_index, bin_means, bin_sums, usual_scans
from thermogate.models.dataset import (
    BAD,
    WINDOW,
    _rolling_mean,
    build_dataset,
    resample,
    zone_specs,
)
from thermogate.plc.site import demo_site

SITE = demo_site()
T0 = 1.7e9 - (1.7e9 % 60)  # a minute boundary
MINUTES = 300
SCAN_S = 10.0
RAMP = 0.01  # K per minute on tank01


def _arrays(minutes: int = MINUTES) -> dict:
    t = T0 + np.arange(0, minutes * 60, SCAN_S)
    names = sorted(
        {
            p
            for s in zone_specs(SITE)
            for p in (*s.temp, *s.power, *(q for g in s.extra.values() for q in g))
        }
    )
    arr: dict = {"t": t}
    for n in names:
        arr[n] = np.full(len(t), 30.0)
    minute = (t - T0) / 60.0
    arr["tank01.fluid_temp"] = 45.0 + RAMP * minute
    arr["tank01.fluid_temp_b"] = 45.0 + RAMP * minute
    arr["tank01.power_kw"] = np.full(len(t), 200.0)
    arr["quality"] = {n: np.zeros(len(t), np.uint8) for n in names}
    return arr


def _tank01_minutes(ds) -> np.ndarray:
    tank = ds["tank"]
    return np.sort((tank.times[tank.zones == "tank01"] - T0) / 60.0).astype(int)


def test_alignment_features_and_targets() -> None:
    ds = build_dataset(_arrays(), SITE, horizons_min=(5, 15, 30))
    tank = ds["tank"]
    assert ds.horizons_min == (5, 15, 30)
    assert set(ds.kinds) == {"tank", "loop", "cdu"}
    assert tank.X.shape == (len(tank.times), len(tank.feature_names))
    m = tank.zones == "tank01"
    mins = _tank01_minutes(ds)
    # first row has a full 15-minute window behind it, last has 30 minutes ahead
    assert mins[0] == WINDOW and mins[-1] == MINUTES - 1 - 30
    assert np.array_equal(mins, np.arange(WINDOW, MINUTES - 30))
    # the value of a minute is the mean of its scans: the ramp at mid-minute (minus half a scan)
    minute = (tank.times[m] - T0) / 60.0
    mid = minute + (60.0 - SCAN_S) / 2 / 60.0
    np.testing.assert_allclose(tank.temp[m], 45.0 + RAMP * mid, atol=1e-9)
    # targets: the change h minutes ahead
    for j, h in enumerate(ds.horizons_min):
        np.testing.assert_allclose(tank.y[m, j], RAMP * h, atol=1e-9)
    np.testing.assert_allclose(tank.feature("d_temp_5")[m], RAMP * 5, atol=1e-9)
    np.testing.assert_allclose(tank.feature("d_temp_15")[m], RAMP * 15, atol=1e-9)
    np.testing.assert_allclose(tank.feature("temp_minus_supply")[m], tank.temp[m] - 30.0)
    np.testing.assert_allclose(tank.feature("load_frac")[m], 200.0 / tank.rated_kw[m])
    # time of day on the unit circle
    np.testing.assert_allclose(tank.feature("tod_sin") ** 2 + tank.feature("tod_cos") ** 2, 1.0)
    # every tank of the site, each loop and CDU
    assert set(tank.zones.tolist()) == {t.name for t in SITE.tanks}
    assert set(ds["loop"].zones.tolist()) == {lp.name for lp in SITE.loops}
    assert set(ds["cdu"].zones.tolist()) == {c.name for c in SITE.cdus}


def test_gap_in_recording_drops_rows_never_interpolates() -> None:
    arr = _arrays()
    minute = (arr["t"] - T0) // 60
    keep = (minute < 100) | (minute > 102)  # three minutes with no scans at all
    arr = {
        k: (v[keep] if k != "quality" else {n: q[keep] for n, q in v.items()})
        for k, v in arr.items()
    }
    ds = build_dataset(arr, SITE)
    mins = set(_tank01_minutes(ds).tolist())
    # a row at i uses [i - 15, i] and its targets [i, i + 30]: all rows touching 100..102 go
    dropped = set(range(100 - 30, 102 + WINDOW + 1))
    expected = set(range(WINDOW, MINUTES - 30)) - dropped
    assert mins == expected
    # the gap is a gap for every zone (it is a gap in the recording)
    assert not np.any(np.isin((ds["loop"].times - T0) // 60, list(dropped)))
    # no row's target spans the gap
    tank = ds["tank"]
    np.testing.assert_allclose(tank.y[tank.zones == "tank01", 1], RAMP * 15, atol=1e-9)


def test_partial_gap_minute_is_invalid() -> None:
    arr = _arrays()
    minute = (arr["t"] - T0) // 60
    sec = (arr["t"] - T0) % 60
    keep = ~((minute == 150) & (sec >= 20))  # 2 of 6 scans left in minute 150
    arr = {
        k: (v[keep] if k != "quality" else {n: q[keep] for n, q in v.items()})
        for k, v in arr.items()
    }
    mins = set(_tank01_minutes(build_dataset(arr, SITE)).tolist())
    assert not mins & set(range(150 - 30, 150 + WINDOW + 1))
    assert 119 in mins and 166 in mins


def test_bad_quality_feature_drops_only_rows_whose_window_touches_it() -> None:
    arr = _arrays()
    minute = (arr["t"] - T0) // 60
    arr["quality"]["tank01.power_kw"][minute == 200] = BAD
    arr["tank01.power_kw"][minute == 200] = 9999.0  # the bad value must never be used
    ds = build_dataset(arr, SITE)
    mins = set(_tank01_minutes(ds).tolist())
    # power is an input, not a target: rows i in [200, 215] see it in their window
    assert not mins & set(range(200, 200 + WINDOW + 1))
    assert {199, 216} <= mins  # before: only its target period spans it, which is fine
    tank = ds["tank"]
    assert np.all(tank.feature("power_kw")[tank.zones == "tank01"] == 200.0)
    # other tanks are unaffected
    other = set(((tank.times[tank.zones == "tank02"] - T0) // 60).astype(int).tolist())
    assert other == set(range(WINDOW, MINUTES - 30))


def test_bad_target_temperature_drops_rows_whose_target_window_touches_it() -> None:
    arr = _arrays()
    minute = (arr["t"] - T0) // 60
    for n in ("tank01.fluid_temp", "tank01.fluid_temp_b"):
        arr["quality"][n][minute == 200] = BAD
        arr[n][minute == 200] = np.nan
    mins = set(_tank01_minutes(build_dataset(arr, SITE)).tolist())
    assert not mins & set(range(200 - 30, 200 + WINDOW + 1))
    assert {169, 216} <= mins


def test_one_bad_redundant_sensor_uses_the_other() -> None:
    arr = _arrays()
    minute = (arr["t"] - T0) // 60
    sel = (minute >= 100) & (minute < 110)
    arr["quality"]["tank01.fluid_temp"][sel] = BAD
    arr["tank01.fluid_temp"][sel] = 99.0
    ds = build_dataset(arr, SITE)
    tank = ds["tank"]
    assert set(_tank01_minutes(ds).tolist()) == set(range(WINDOW, MINUTES - 30))
    assert tank.temp[tank.zones == "tank01"].max() < 50.0


def test_live_rows_without_targets() -> None:
    ds = build_dataset(_arrays(), SITE, require_targets=False)
    tank = ds["tank"]
    m = tank.zones == "tank01"
    mins = ((tank.times[m] - T0) // 60).astype(int)
    assert mins.max() == MINUTES - 1
    last = tank.y[m][np.argmax(mins)]
    assert np.all(np.isnan(last))


def test_split_never_leaks_targets() -> None:
    ds = build_dataset(_arrays(), SITE)
    cut = T0 + 200 * 60
    a, b = ds.split(cut)
    assert np.all(a["tank"].times + 30 * 60 < cut)
    assert np.all(b["tank"].times >= cut)


def test_horizons_must_be_whole_steps() -> None:
    with pytest.raises(ValueError):
        build_dataset(_arrays(), SITE, horizons_min=(0,))


def test_baselines_on_a_ramp() -> None:
    ds = build_dataset(_arrays(), SITE)
    tank = ds["tank"]
    np.testing.assert_allclose(persistence(tank), np.repeat(tank.temp[:, None], 3, axis=1))
    rc = RCBaseline.fit(ds)
    pred = rc.predict(tank)
    m = tank.zones == "tank01"
    # a pure ramp at constant power: the fit reproduces it closely
    np.testing.assert_allclose(pred[m] - tank.temp[m][:, None], tank.y[m], atol=0.02)


def test_a_nan_spoils_only_the_rolling_windows_that_hold_it() -> None:
    x = np.arange(12, dtype=float)
    x[3] = np.nan
    m = _rolling_mean(x, 4)
    assert np.isnan(m[:7]).all()  # the first 3 are short, the next 4 hold x[3]
    np.testing.assert_allclose(m[7:], [5.5, 6.5, 7.5, 8.5, 9.5])


def _resample_one_series_at_a_time(t, values, quality, step_s):
    """The rule of ``resample`` as it was first written, a pass per series."""
    k = bin_index(t, step_s)
    b = k - k.min()
    nb = int(b.max()) + 1
    rows = np.bincount(b, minlength=nb).astype(np.float64)
    usual = usual_scans(rows)
    out = {}
    for n, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ok = np.isfinite(v)
        if quality is not None and n in quality:
            ok &= np.asarray(quality[n]) != BAD
        s, cnt = bin_sums(b, v, ok, nb)
        out[n] = bin_means(s, cnt, rows, usual)
    return out


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_scans=st.integers(1, 300),
    n_series=st.integers(1, 12),
    chunk=st.sampled_from([1, 7, 50, 2_000_000]),
    with_quality=st.booleans(),
)
def test_resampling_many_series_a_pass_gives_the_same_means_to_the_bit(
    seed: int, n_scans: int, n_series: int, chunk: int, with_quality: bool
) -> None:
    rng = np.random.default_rng(seed)
    # scans at irregular times with gaps, several to a bin or none
    t = np.sort(rng.uniform(0.0, 1200.0, n_scans)) + 1.7e9
    values = {}
    for j in range(n_series):
        v = rng.normal(40.0, 7.0, n_scans) * rng.uniform(0.1, 1e3)
        if j % 3 == 0:  # a counter: integers, no NaN
            values[f"p{j}"] = v.round().clip(-999, 999).astype(np.int64)
            continue
        v[rng.random(n_scans) < 0.15] = np.nan
        v[rng.random(n_scans) < 0.05] = np.inf
        values[f"p{j}"] = v
    quality = (
        {f"p{j}": rng.integers(0, 3, n_scans).astype(np.uint8) for j in range(0, n_series, 2)}
        if with_quality
        else None
    )
    want = _resample_one_series_at_a_time(t, values, quality, 60.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "RESAMPLE_CHUNK_VALUES", chunk)  # one series a pass, or all
        got = resample(t, values, quality, step_s=60.0)
    assert list(got.values) == list(want)
    for n in want:
        assert got.values[n].tobytes() == want[n].tobytes(), n  # NaNs included
