"""`thermogate run` and its thermal model: scheduled retraining hands a promoted model
to the scan loop, never a worse one, and the forecast reaches the planning seam."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from history import simulated_history

from thermogate.controller.historian import HistoryReader
from thermogate.controller.modbus_io import Endpoint
from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import RunConfig, load_run_config
from thermogate.controller.signals import Observation
from thermogate.hil.runner import ScenarioPlant
from thermogate.models.registry import Registry
from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.records import record_columns
from thermogate.plc.site import demo_site, demo_site_text

HOURS = 3.0


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A historian holding 3 h of a controlled run, as `thermogate run` records it."""
    site = demo_site()
    path = tmp_path_factory.mktemp("run-model") / "site.db"
    with simulated_history(path, HOURS, columns=record_columns(build_point_map(site), site)):
        pass
    return path


@pytest.fixture
def db(history: Path, tmp_path: Path) -> Path:
    """This test's own copy of the recorded run: a test neither sees nor leaves models
    of another, so each passes alone and in any order."""
    dst = tmp_path / "site.db"
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{history}{suffix}")
        if src.exists():
            shutil.copy(src, f"{dst}{suffix}")
    return dst


def _forecast_cli(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", "forecast", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scan(rt: RealTimeController, sim: ScenarioPlant, t: float) -> None:
    values = sim.plant.sensors.sample()
    res = rt.ctrl.scan(Observation(t, values, np.ones(len(values), bool)))
    assert rt.model is not None
    res.events.extend(rt.model.step(t, res))
    rt.events_seen.extend(res.events)  # type: ignore[attr-defined]


def test_scheduled_retrain_promotes_into_the_running_loop_and_never_a_worse_one(
    db: Path,
) -> None:
    site = demo_site()
    cfg = RunConfig(site, db, Endpoint("tcp", "127.0.0.1", 1), 1.0, 0.1, False)
    rt = RealTimeController(cfg)
    rt.events_seen = []  # type: ignore[attr-defined]
    sim = ScenarioPlant(site, "normal-day")
    try:
        assert rt.model.forecaster is not None and rt.model.forecaster.model is None
        assert rt.model.retrainer is not None
        rt.model.retrainer.nice = 0  # the other test worker would starve a niced child
        outcome, error = rt.model.retrainer.run_once()
        assert error is None and outcome is not None and outcome.promoted
        _scan(rt, sim, 1000.0)
        assert rt.model.forecaster.version == outcome.version
        # the training process sent no model back: the scan loop loaded the
        # registry's, between scans, not the retrain thread
        assert outcome.model is None and rt.model.forecaster.model is not None
        with Registry(db) as reg:
            stored = reg.load(outcome.version)
        assert _fingerprint(stored) == _fingerprint(rt.model.forecaster.model)
        msgs = [e.message for e in rt.events_seen if e.source == "model"]
        assert any(f"version {outcome.version} promoted" in m for m in msgs)

        again, error = rt.model.retrainer.run_once()  # same data: not better, so kept out
        assert error is None and again is not None and not again.promoted
        _scan(rt, sim, 1001.0)
        assert rt.model.forecaster.version == outcome.version
        with Registry(db) as reg:
            assert reg.promoted_version() == outcome.version
            refused = [d for d in reg.decisions() if d["candidate"] == again.version]
            assert len(refused) == 1 and not refused[0]["promoted"]
        assert any(f"version {again.version} not promoted" in e.message for e in rt.events_seen)
    finally:
        asyncio.run(rt.close())


def test_a_restarted_controller_forecasts_with_the_promoted_model(db: Path) -> None:
    from thermogate.controller.retrain import train_and_register

    site = demo_site()
    promoted = train_and_register(db, site, days=1.0, by="test").version
    with Registry(db) as reg:
        assert reg.promoted_version() == promoted
    cfg = RunConfig(site, db, Endpoint("tcp", "127.0.0.1", 1), 1.0, 0.1, False)
    rt = RealTimeController(cfg)
    rt.events_seen = []  # type: ignore[attr-defined]
    sim = ScenarioPlant(site, "normal-day")
    try:
        assert rt.model.forecaster is not None and rt.model.forecaster.version == promoted
        # 40 minutes of scans: the forecaster's window fills, then headroom reaches the core
        for k in range(40 * 60 // 5):
            sim.step(5)
            _scan(rt, sim, 2000.0 + 5.0 * k)
        assert rt.model.last is not None and rt.model.last.zones
        loads = rt.ctrl.planning.forecast(rt.ctrl.t_last)
        assert loads and all(f.headroom_kw >= 0.0 for f in loads.values())
    finally:
        asyncio.run(rt.close())


def test_a_new_site_is_forecast_by_the_physics_prior_until_its_first_model(db: Path) -> None:
    site = demo_site()
    cfg = RunConfig(site, db, Endpoint("tcp", "127.0.0.1", 1), 1.0, 0.1, False)
    rt = RealTimeController(cfg)
    rt.events_seen = []  # type: ignore[attr-defined]
    sim = ScenarioPlant(site, "normal-day")
    try:
        assert rt.model.forecaster is not None and rt.model.forecaster.model is None
        # no model yet: retrained within the hour after a failure, not a day later
        assert rt.model.retrainer is not None and rt.model.retrainer.retry_after_s == 3600.0
        for k in range(25 * 60 // 5):
            sim.step(5)
            _scan(rt, sim, 2000.0 + 5.0 * k)
        loads = rt.ctrl.planning.forecast(rt.ctrl.t_last)
        assert loads and {f.source for f in loads.values()} == {"prior"}
        assert not any(f.trusted for f in loads.values())
        assert all(f.headroom_kw >= 0.0 for f in loads.values())
        msgs = [e.message for e in rt.events_seen if e.source == "model"]
        assert any("physics prior" in m for m in msgs)
    finally:
        asyncio.run(rt.close())


def test_model_section_of_the_run_config_is_checked(tmp_path: Path) -> None:
    text = demo_site_text()
    (tmp_path / "site.toml").write_text(text, encoding="utf-8")
    cfg = tmp_path / "ctl.toml"
    base = '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\n'
    cfg.write_text(base + "[model]\nretrain_every_h = 6\ntrain_days = 3\n")
    rc = load_run_config(str(cfg), None)
    assert (rc.forecast, rc.retrain_every_h, rc.train_days) == (True, 6.0, 3.0)
    cfg.write_text(base + "[model]\nretrain_every_hours = 6\n")
    with pytest.raises(ConfigError, match="retrain_every_hours"):
        load_run_config(str(cfg), None)
    cfg.write_text(base + "[model]\nretrain_every_h = 0.1\n")
    with pytest.raises(ConfigError, match="retrain_every_h"):
        load_run_config(str(cfg), None)


def test_a_restart_seeds_the_forecaster_from_the_historian_and_forecasts_at_once(
    db: Path,
) -> None:
    from thermogate.controller.core import Controller
    from thermogate.controller.forecasting import ModelRuntime
    from thermogate.controller.retrain import train_and_register
    from thermogate.controller.simulate import HISTORIAN_EPOCH_S
    from thermogate.models.live import LIVE_STEPS, LiveForecaster

    site = demo_site()
    pmap = build_point_map(site)
    cols = record_columns(pmap, site)
    outcome = train_and_register(db, site, days=1.0, by="test")
    now = HISTORIAN_EPOCH_S + HOURS * 3600.0  # the end of the recorded run
    ctrl = Controller(site, pmap)
    cold = LiveForecaster(site, cols, outcome.model)
    seeded = LiveForecaster(site, cols, outcome.model)
    with HistoryReader(db, site.name) as reader:
        assert ModelRuntime(ctrl, seeded).seed(reader, now) == LIVE_STEPS
        # a day later the history is not recent: nothing is seeded
        later = ModelRuntime(ctrl, LiveForecaster(site, cols, outcome.model))
        assert later.seed(reader, now + 86400.0) == 0
    assert cold.update(now) is None  # nothing to forecast from yet
    upd = seeded.update(now)
    assert upd is not None and set(upd.zones) >= {t.name for t in site.tanks}


@pytest.mark.parametrize(
    ("left", "said"),
    [("older features", "other features"), ("damaged blob", "cannot be loaded")],
)
def test_a_promoted_model_that_cannot_be_used_is_not_used_and_the_next_retrain_replaces_it(
    db: Path, left: str, said: str
) -> None:
    import copy

    from thermogate.controller.retrain import train_and_register

    site = demo_site()
    outcome = train_and_register(db, site, days=1.0, by="test")
    old = copy.deepcopy(outcome.model)
    if left == "older features":  # as stored by an older version: one feature fewer
        old.kinds = {
            k: replace(km, feature_names=km.feature_names[:-1]) for k, km in old.kinds.items()
        }
        assert sorted(old.incompatible()) == sorted(old.kinds)
    with Registry(db) as reg:
        v_old = reg.add(old, (0.0, 1.0), {}, created_by="thermogate 0.x")
        reg.promote(v_old, "test", "as an older version left it")
    if left == "damaged blob":  # a damaged file: the blob no longer unpickles
        with sqlite3.connect(db) as conn:
            conn.execute('UPDATE "model_versions" SET "model" = ? WHERE "id" = ?',
                         (b"\x80\x05 truncated", v_old))  # fmt: skip
    refused = _forecast_cli(db)  # not used: the physics prior answers, and says why
    assert refused.returncode == 0, refused.stderr
    answer = json.loads(refused.stdout)
    assert answer["version"] is None and "physics prior" in answer["source"]
    assert said in answer["reasons"][0] and "thermogate train" in answer["reasons"][0]
    cfg = RunConfig(site, db, Endpoint("tcp", "127.0.0.1", 1), 1.0, 0.1, False)
    rt = RealTimeController(cfg)
    rt.events_seen = []  # type: ignore[attr-defined]
    try:
        assert rt.model.forecaster is not None and rt.model.forecaster.model is None
        _scan(rt, ScenarioPlant(site, "normal-day"), 1000.0)
        assert any(
            e.kind == "alarm" and f"version {v_old}" in e.message and said in e.message
            for e in rt.events_seen
        )
        assert rt.model.retrainer is not None
        rt.model.retrainer.nice = 0  # the other test worker would starve a niced child
        new, error = rt.model.retrainer.run_once()
        assert error is None and new is not None and new.promoted  # the old one scores inf
    finally:
        asyncio.run(rt.close())
    assert _forecast_cli(db).returncode == 0  # with the retrained model


def test_a_promoted_version_the_registry_cannot_give_is_an_alarm_and_the_model_stays(
    db: Path,
) -> None:
    from thermogate.controller.core import Controller
    from thermogate.controller.forecasting import ModelRuntime
    from thermogate.controller.retrain import train_and_register
    from thermogate.models.live import LiveForecaster
    from thermogate.models.training import TrainOutcome

    site = demo_site()
    pmap = build_point_map(site)
    first = train_and_register(db, site, days=1.0, by="test")
    assert first.model is not None  # trained on this thread: the model is at hand
    fc = LiveForecaster(site, record_columns(pmap, site), first.model)
    rt = ModelRuntime(Controller(site, pmap), fc, db=db)
    gone = TrainOutcome(first.version + 7, True, "better", first.window, {}, 1.0, None)
    rt.on_retrain(gone, None)
    sim = ScenarioPlant(site, "normal-day")
    values = sim.plant.sensors.sample()
    res = rt.ctrl.scan(Observation(2000.0, values, np.ones(len(values), bool)))
    events = rt.observe(2000.0, res)
    alarms = [e.message for e in events if e.kind == "alarm"]
    assert len(alarms) == 1 and f"version {first.version + 7} could not be loaded" in alarms[0]
    assert fc.model is first.model  # the model in use stays
    # and a version the registry holds is loaded from it, off the retrain thread
    rt.on_retrain(replace(first, model=None), None)
    assert rt.observe(2005.0, res) and fc.model is not first.model
    loaded = fc.model
    # a blob that is no model (a damaged file) is one alarm too: the scans go on
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE "model_versions" SET "model" = ? WHERE "id" = ?',
                     (b"\x00 not a pickle", first.version))  # fmt: skip
    rt.on_retrain(replace(first, model=None), None)
    alarms = [e.message for e in rt.observe(2010.0, res) if e.kind == "alarm"]
    assert len(alarms) == 1 and "UnpicklingError" in alarms[0], alarms
    assert fc.model is loaded
    assert _fingerprint(fc.model) == _fingerprint(first.model)


def _fingerprint(model: object) -> tuple:
    """What tells one trained model from another: its fit's own duration, to the
    bit, with its horizons and kinds."""
    return (model.train_s, model.horizons_min, sorted(model.kinds))  # type: ignore[attr-defined]
