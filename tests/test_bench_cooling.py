"""``thermogate bench cooling``: fixed design setpoints against thermogate, one run.

A short window of the heatwave's first hour (a hot night: the design supply
setpoints sit under the air) on the real plant model, so the test stays cheap;
the README's figures come from the full day and from a measured week.
"""

from __future__ import annotations

import argparse

import pytest

from thermogate.controller.bench_cooling import POLICIES, bench_cooling
from thermogate.plc.errors import DataFileError

KEYS = {
    "cooling_kwh",
    "it_kwh",
    "pue",
    "limit_violation_c_min",
    "trips",
    "max_fluid_temp_c",
    "max_cdu_supply_c",
    "thermal_shed",
    "gpu_energy_mwh",
    "wall_seconds",
}


def test_bench_cooling_runs_both_policies_on_the_same_load_and_reports_the_saving():
    args = argparse.Namespace(
        site=None, scenario="heatwave", weather=None, days=0.5 / 24, scan_s=5.0, seed=0, json=True
    )
    out = bench_cooling(args)
    assert set(out["policies"]) == set(POLICIES)
    fixed, mine = out["policies"]["fixed"], out["policies"]["thermogate"]
    for p in (fixed, mine):
        assert set(p) >= KEYS
        assert p["trips"] == 0 and p["limit_violation_c_min"] == 0.0
    # the saving is not bought with less IT work (on a site the grid limits, the
    # import cooling no longer takes goes to IT: thermogate does a little more)
    assert mine["it_kwh"] >= fixed["it_kwh"]
    assert mine["cooling_kwh"] < fixed["cooling_kwh"]  # fans no longer chase the air
    saving = round(100.0 * (1.0 - mine["cooling_kwh"] / fixed["cooling_kwh"]), 1)
    assert out["saving_pct"] == saving


def test_measured_weather_shorter_than_the_bench_is_refused_not_repeated(tmp_path):
    # A 3 h file once ran a day's bench on the same 3 h over and over, without a word.
    f = tmp_path / "short.csv"
    f.write_text("time,ambient_c\n0,30\n3600,31\n7200,32\n")
    args = argparse.Namespace(
        site=None, scenario="heatwave", weather=str(f), days=1.0, scan_s=5.0, seed=0, json=True
    )
    with pytest.raises(DataFileError, match=r"covers 3 h but the bench runs 24 h \(--days 1\)"):
        bench_cooling(args)
