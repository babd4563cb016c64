"""End to end: simulate 8 h with a historian, train on 6 h, forecast the last 2 h."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from history import STUDY_S, simulated_history
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.retrain import history_dataset
from thermogate.controller.simulate import HISTORIAN_EPOCH_S
from thermogate.models.baselines import RCBaseline
from thermogate.models.forecast import ThermalModel, _conformal_q, evaluate
from thermogate.plc.site import demo_site

HOURS = 8.0
TRAIN_H = 6.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    site = demo_site()
    path = tmp_path_factory.mktemp("models") / "hist.db"
    with simulated_history(path, HOURS) as h:
        t = h.telemetry(["site.ambient_temp"], 0.0, 1e18, resolution="raw")["t"]
        ds = history_dataset(h.reader, site)
    train, test = ds.split(HISTORIAN_EPOCH_S + TRAIN_H * 3600.0)
    model = ThermalModel().fit(train)
    rc = RCBaseline.fit(train)
    metrics = evaluate(model, rc, test)
    print(json.dumps({"train_s": round(model.train_s, 2), **metrics}, indent=1))
    return {"site": site, "t": t, "ds": ds, "train": train, "test": test, "model": model,
            "rc": rc, "metrics": metrics}  # fmt: skip


def test_historian_gets_every_scan_at_epoch_times(trained: dict) -> None:
    t = trained["t"]
    scan_s = STUDY_S
    assert len(t) == round(HOURS * 3600 / scan_s)
    assert t[0] == pytest.approx(HISTORIAN_EPOCH_S, abs=scan_s)
    np.testing.assert_allclose(np.diff(t), scan_s, atol=1e-6)


def test_dataset_from_the_historian(trained: dict) -> None:
    ds = trained["ds"]
    tank = ds["tank"]
    assert set(tank.zones.tolist()) == {t.name for t in trained["site"].tanks}
    # 480 minutes, minus a 15-minute window behind and 30 minutes ahead, per tank
    assert len(tank) == len(trained["site"].tanks) * (480 - 15 - 30)
    assert np.isfinite(tank.X).all() and np.isfinite(tank.y).all()


def test_model_beats_persistence_at_15_min(trained: dict) -> None:
    m = trained["metrics"]
    for kind in ("tank", "cdu"):
        assert m[kind]["mae_c"]["15"] < m[kind]["persistence_mae_c"]["15"], kind
    # loops: shrunk toward persistence where the regressor does not help on held-out data
    assert m["loop"]["mae_c"]["15"] < 1.1 * m["loop"]["persistence_mae_c"]["15"]
    # pooled over every zone, as the test asks
    n = {k: len(trained["test"][k]) for k in m}
    pooled = sum(m[k]["mae_c"]["15"] * n[k] for k in m) / sum(n.values())
    pooled_p = sum(m[k]["persistence_mae_c"]["15"] * n[k] for k in m) / sum(n.values())
    assert pooled < pooled_p


def test_upper_bound_coverage_measured(trained: dict) -> None:
    for kind, res in trained["metrics"].items():
        for h, cov in res["coverage"].items():
            assert cov >= 0.8, (kind, h, cov)
        assert all(w > 0 for w in res["bound_width_c"].values())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-5.0, 5.0, allow_nan=False), min_size=1, max_size=400),
    st.floats(0.01, 0.5),
)
def test_the_conformal_offset_covers_enough_scores_and_at_most_one_more(scores, alpha):
    """The offset is a calibration score with at least k = ceil((n + 1)(1 - alpha))
    scores at or below it. numpy's "higher" quantile at level k/n may pick the
    next score up (k = 2 of [0, 0, 1] gives 1): conservative by at most one."""
    s = np.asarray(scores)
    q = _conformal_q(s, alpha)
    need = math.ceil((len(s) + 1) * (1.0 - alpha))
    if need > len(s):  # too few rows to promise 1 - alpha: the largest score
        assert q == s.max()
        return
    assert q in s
    assert (s <= q).sum() >= need
    assert (s < q).sum() <= need


def test_the_conformal_bound_covers_fresh_draws_at_its_level():
    """Split-conformal on exchangeable residuals: over many calibrations, the bound
    holds for fresh residuals at least 1 - alpha of the time (a lower quantile,
    or a level without the +1, would fall short of it)."""
    rng = np.random.default_rng(3)
    alpha, n = 0.05, 60
    held = []
    for _ in range(2000):
        q = _conformal_q(rng.standard_t(4, n), alpha)  # heavy tails, as regulated loops have
        held.append((rng.standard_t(4, 200) <= q).mean())
    assert np.mean(held) >= 1.0 - alpha


def test_upper_is_above_mean_and_grows_away_from_data(trained: dict) -> None:
    model, test = trained["model"], trained["test"]
    rows = test["tank"]
    mean, upper = model.predict(rows)
    assert mean.shape == upper.shape == (len(rows), 3)
    assert np.all(upper >= mean)
    X = rows.X.copy()
    X[:, rows.col("ambient")] += 20.0
    _, up_far = model.predict(rows, X)
    assert np.mean(up_far - mean) > np.mean(upper - mean)


def test_ood_flags_ambient_far_outside_training(trained: dict) -> None:
    model, train = trained["model"], trained["train"]
    for kind in ("tank", "loop", "cdu"):
        rows = train[kind]
        assert not model.ood(rows).any(), kind  # training rows are in range by definition
        X = rows.X[:5].copy()
        X[:, rows.col("ambient")] = 45.0  # a heatwave the model never saw
        assert model.ood(rows.take(np.arange(5)), X).all(), kind
    rows = train["tank"].take(np.arange(3))
    lo, hi = model.kinds["tank"].lo, model.kinds["tank"].hi
    j = rows.col("ambient")
    X = rows.X.copy()
    X[:, j] = hi[j] + 0.05 * (hi[j] - lo[j])  # within the 10 % margin
    assert not model.ood(rows, X).any()
