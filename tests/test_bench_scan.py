"""``thermogate bench scan``: the generated site it scans and the JSON it prints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from thermogate.controller.bench import _site_text_for
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import parse_site_text


@pytest.mark.parametrize("points", [500, 2000, 3500])
def test_the_bench_site_is_the_smallest_generated_one_with_the_points_asked(points: int) -> None:
    # 2,000 points once failed: a kind outgrew its unit-id block below the PLC threshold
    site = parse_site_text(_site_text_for(points), "<bench>")
    n = len(build_point_map(site))
    assert points <= n < points * 1.1


def test_bench_scan_prints_the_scan_beside_its_floor_in_one_run() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", "bench", "scan",
         "--points", "300", "--scans", "8", "--speed", "10", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["points"] >= 300 and r["scans"] == 8 and r["in_flight"] == 4
    # run's own loop at the site's interval, plant and clock 10x as asked
    assert r["speed"] == 10.0 and r["scan_interval_s"] == 1.0 and r["overruns"] >= 0
    assert r["stale_points_last_read"] == 0  # every point read
    for k in ("floor_read", "read", "scan"):
        assert 0 < r[f"{k}_p50_ms"] <= r[f"{k}_p99_ms"], k
    # the ratios are of the figures printed beside them
    assert r["scan_over_floor_p99"] == pytest.approx(
        r["scan_p99_ms"] / r["floor_read_p99_ms"], rel=0.02
    )
    assert r["targets"] == {"scan_p99_ms": 50.0, "scan_over_floor_p99": 2.0}
