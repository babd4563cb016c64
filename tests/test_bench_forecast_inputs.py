"""The forecast study's measured weather: it must cover the study."""

from __future__ import annotations

import pytest

from thermogate.controller.bench_forecast import bench_scenario
from thermogate.plc.errors import DataFileError


def _weather(tmp_path, hours: int):
    f = tmp_path / "w.csv"
    rows = "".join(f"{h * 3600},{25 + (h % 24) / 3}\n" for h in range(hours))  # covers `hours`
    f.write_text("time,ambient_c\n" + rows, encoding="utf-8")
    return f


def test_short_measured_weather_is_refused_not_repeated(tmp_path):
    """Two days of weather for a ten-day study were repeated without a word: the
    held-out days were then the training days' weather, and the study's bound
    on new weather meant nothing."""
    with pytest.raises(DataFileError, match=r"covers 48 h but the study runs 240 h"):
        bench_scenario(10.0, 7.0, str(_weather(tmp_path, 48)))


def test_measured_weather_that_covers_the_study_is_used_as_measured(tmp_path):
    sc = bench_scenario(2.0, 1.0, str(_weather(tmp_path, 48)))
    assert sc.weather.ambient_c.covers_s == 48 * 3600.0
    assert not sc.weather.ambient_c.wrap
