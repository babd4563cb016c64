"""Model registry (round trip, never promotes a worse model) and `thermogate train/forecast`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from history import simulated_history

from thermogate.controller.historian import Historian
from thermogate.controller.retrain import history_dataset
from thermogate.models.forecast import ThermalModel
from thermogate.models.registry import Registry, pooled_mae
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site

HOURS = 4.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def site_db(tmp_path_factory: pytest.TempPathFactory) -> dict:
    site = demo_site()
    path = tmp_path_factory.mktemp("registry") / "hist.db"
    with simulated_history(path, HOURS) as h:
        ds = history_dataset(h.reader, site)
    train = _cli("train", "--db", str(path), "--days", "1")
    return {"site": site, "path": path, "ds": ds, "train": train}


@pytest.fixture(scope="module")
def good(site_db: dict) -> tuple[int, ThermalModel, object]:
    """The model `thermogate train` promoted, and the held-out tail it was judged on."""
    assert site_db["train"].returncode == 0, site_db["train"].stderr
    with Registry(site_db["path"]) as reg:
        got = reg.promoted()
        assert got is not None
        (v0,) = [v for v in reg.versions() if v["promoted"]]
    t_split = v0["metrics"]["holdout"][0]
    _, holdout = site_db["ds"].split(t_split)
    return got[0], got[1], holdout


def test_train_cli_prints_summary_and_promotes_first_model(site_db: dict) -> None:
    r = site_db["train"]
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] == 1 and out["promoted"] is True
    for kind in ("tank", "loop", "cdu"):
        assert set(out["mae_c"][kind]) == {"5", "15", "30"}
        assert all(0 <= c <= 1 for c in out["coverage"][kind].values())
    assert out["train_s"] > 0


def test_registry_round_trip(tmp_path: Path, good: tuple) -> None:
    _, model, holdout = good
    with Registry(tmp_path / "reg.db") as reg:
        assert reg.promoted() is None
        v = reg.add(model, (1.0, 2.0), {"pooled_mae_15_c": 0.01}, created_by="test")
        assert reg.promoted() is None
        reg.promote(v, by="tester", reason="round trip")
    with Registry(tmp_path / "reg.db") as reg:  # reopened: everything persisted
        got = reg.promoted()
        assert got is not None and got[0] == v
        rows = holdout["tank"]
        np.testing.assert_array_equal(got[1].predict(rows)[1], model.predict(rows)[1])
        (info,) = reg.versions()
        assert info["promoted"] and info["promoted_by"] == "tester"
        assert info["promoted_reason"] == "round trip"
        assert (info["t0"], info["t1"]) == (1.0, 2.0)
        assert info["metrics"] == {"pooled_mae_15_c": 0.01}
        assert "ambient" in info["features"]["tank"]
        assert "model" not in info


def test_maybe_promote_never_promotes_a_worse_model(tmp_path: Path, site_db: dict, good: tuple):
    _, model, holdout = good
    ds = site_db["ds"]
    # a deliberately bad candidate: a short early window with shuffled targets
    t_min = min(float(k.times.min()) for k in ds)
    small, _ = ds.split(t_min + 3600.0)
    rng = np.random.default_rng(1)
    for kd in small:
        kd.y[:] = kd.y[rng.permutation(len(kd))] * 5.0
    bad = ThermalModel(hgb_params={"max_iter": 5, "random_state": 0}).fit(small)
    assert pooled_mae(bad, holdout) > pooled_mae(model, holdout)

    with Registry(tmp_path / "reg.db") as reg:
        v_good = reg.add(model, (0.0, 1.0), {}, created_by="test")
        assert reg.maybe_promote(v_good, holdout, by="test") is True  # nothing promoted yet
        v_bad = reg.add(bad, (0.0, 1.0), {}, created_by="test")
        assert reg.maybe_promote(v_bad, holdout, by="retrain") is False
        assert reg.promoted_version() == v_good
        v_same = reg.add(model, (0.0, 1.0), {}, created_by="test")
        assert reg.maybe_promote(v_same, holdout, by="retrain") is False  # a tie keeps current
        assert reg.promoted_version() == v_good
        d = reg.decisions()
    assert [x["promoted"] for x in d] == [True, False, False]
    assert [x["candidate"] for x in d] == [v_good, v_bad, v_same]
    assert d[1]["current"] == v_good and d[1]["by"] == "retrain"
    assert d[1]["candidate_mae_c"] > d[1]["current_mae_c"]


def test_forecast_cli_json_has_every_zone(site_db: dict) -> None:
    assert site_db["train"].returncode == 0, site_db["train"].stderr
    r = _cli("forecast", "--db", str(site_db["path"]), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] == 1
    zones = {z["zone"]: z for z in out["zones"]}
    site = site_db["site"]
    for name in [t.name for t in site.tanks] + [lp.name for lp in site.loops]:
        z = zones[name]
        assert set(z["mean_c"]) == set(z["upper_c"]) == {"5", "15", "30"}
        for h in ("5", "15", "30"):
            assert z["upper_c"][h] >= z["mean_c"][h]
            assert abs(z["mean_c"][h] - z["temp_c"]) < 5.0
    assert {c.name for c in site.cdus} <= set(zones)
    # headroom for every tank: numeric, or the conservative fallback with its reasons recorded
    assert isinstance(out["trusted"], bool) and isinstance(out["reasons"], list)
    assert out["trusted"] == (not out["reasons"])
    for name in [t.name for t in site.tanks]:
        h = zones[name]["headroom"]
        assert h is not None, name
        assert isinstance(h["extra_kw"], float) and h["extra_kw"] >= 0.0
        assert isinstance(h["limit_c"], float) and h["limit_c"] < zones[name]["alarm_c"]
        assert h["time_to_limit_min"] is None or h["time_to_limit_min"] >= 0.0
        assert h["conservative"] is (not out["trusted"])


def test_forecast_on_empty_db_says_there_is_nothing_to_forecast_from(tmp_path: Path) -> None:
    site = demo_site()
    path = tmp_path / "empty.db"
    with Historian(path, [p.name for p in build_point_map(site).points], site_name=site.name):
        pass
    r = _cli("forecast", "--db", str(path))
    assert r.returncode == 2  # no model is fine (the physics prior forecasts), no data is not
    assert "no telemetry to forecast from" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("train", "--db", str(path))
    assert r.returncode == 2
    assert "need at least 2 hours of telemetry, found 0.0" in r.stderr
