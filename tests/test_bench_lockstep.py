"""``thermogate bench lockstep``: a few simulated minutes, the JSON's keys and how
its figures relate (never wall-clock constants: the machines are shared)."""

from __future__ import annotations

import argparse
import math

from thermogate.controller.bench_lockstep import bench_lockstep
from thermogate.controller.stopwatch import CORE_STAGES

KEYS = {
    "site",
    "scenario",
    "hours",
    "scan_s",
    "scans",
    "forecast",
    "wall_seconds",
    "speedup",
    "scan_us",
    "plant_only_speedup",
    "over_plant_only",
    "stages",
    "core",
    "summary",
}


def test_bench_lockstep_reports_speed_stage_shares_and_the_plant_only_floor():
    args = argparse.Namespace(
        site=None, scenario="heatwave", hours=5.0 / 60, scan_s=5.0, learn_h=None, json=True
    )
    out = bench_lockstep(args)
    assert set(out) == KEYS
    assert out["scan_s"] == 5.0 and out["scans"] == 60
    assert out["forecast"] is not None  # the physics prior, as simulate runs a short run
    assert out["speedup"] > 0 and out["plant_only_speedup"] > 0
    # the controller costs something: the lockstep is slower than the plant alone
    assert out["over_plant_only"] < 1.0
    assert math.isclose(
        out["over_plant_only"], out["speedup"] / out["plant_only_speedup"], rel_tol=0.02
    )
    stages = out["stages"]
    assert {"observe", "scan", "apply", "advance", "forecast", "record"} <= set(stages)
    assert math.isclose(sum(stages.values()), 1.0, abs_tol=0.01)
    # the core's parts are inside the scan stage
    assert set(out["core"]) == {s for s, _, _ in CORE_STAGES} | {"other"}
    assert sum(out["core"].values()) <= stages["scan"] + 0.01
    assert out["summary"]["trips"] == 0


def test_bench_lockstep_without_forecasting_has_no_forecast_time_to_speak_of():
    args = argparse.Namespace(
        site=None, scenario="normal-day", hours=2.0 / 60, scan_s=None, learn_h=0.0, json=True
    )
    out = bench_lockstep(args)
    assert out["forecast"] is None
    assert out["scan_s"] == 1.0 and out["scans"] == 120
    assert out["stages"].get("forecast", 0.0) < out["stages"]["scan"]
