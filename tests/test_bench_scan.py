"""``thermogate bench scan``: the generated site it scans and the JSON it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from thermogate.controller.bench import _cores_apart, _site_text_for, cpu_split, stop_process
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
    for k in ("floor_read", "floor_read_back_to_back", "read", "scan"):
        assert 0 < r[f"{k}_p50_ms"] <= r[f"{k}_p99_ms"], k
    # the floor's paced passes fell between the scans, one an interval
    assert r["scans"] - 1 <= r["floor_read_passes"] <= r["scans"] + 1
    # the ratios are of the figures printed beside them
    assert r["scan_over_floor_p99"] == pytest.approx(
        r["scan_p99_ms"] / r["floor_read_p99_ms"], rel=0.02
    )
    assert r["scan_over_floor_back_to_back_p99"] == pytest.approx(
        r["scan_p99_ms"] / r["floor_read_back_to_back_p99_ms"], rel=0.02
    )
    assert r["targets"] == {"scan_p99_ms": 50.0, "scan_over_floor_p99": 2.0}
    assert r["met"] == {  # each target against the figure printed beside it
        "scan_p99_ms": r["scan_p99_ms"] <= 50.0,
        "scan_over_floor_p99": r["scan_p99_ms"] / r["floor_read_p99_ms"] <= 2.0,
    }
    # where the plant ran: a core of its own (or null where there is no second one)
    split = cpu_split()
    assert r["cpus"] == (None if split is None else {"controller": split[0], "plant": split[1]})


def test_the_served_plant_gets_a_core_of_its_own_and_the_caller_its_cores_back() -> None:
    # Left to the scheduler, controller and plant share one core after every idle
    # second on this kind of VM: the paced read took 19 ms where back to back it took 10.
    before = os.sched_getaffinity(0)
    split = cpu_split()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with _cores_apart(child, own_core=True):
            if split is None:  # one CPU: nothing to split, nothing moved
                assert os.sched_getaffinity(0) == before
            else:
                assert os.sched_getaffinity(0) == set(split[0])
                assert os.sched_getaffinity(child.pid) == set(split[1])
                assert not set(split[0]) & set(split[1])
        assert os.sched_getaffinity(0) == before
        with _cores_apart(child, own_core=False):  # --share-cores: the scheduler's choice
            assert os.sched_getaffinity(0) == before
    finally:
        stop_process(child)
    assert os.sched_getaffinity(0) == before
