"""``thermogate bench dr``: under-frequency shed timing over real Modbus.

One short real run (a plant process, a master polling it over TCP) pins the
order of what the master sees and the counts; the analysis is pinned on
hand-made traces, where the right answers are known.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from thermogate.controller.grid.bench_dr import (
    DIP_S,
    NEAR_MISS_EVERY,
    SHORT_BLIP_S,
    Trace,
    analyse,
    bench_dr,
    bench_site_text,
    dip_plan,
)
from thermogate.plc.site import demo_site_text, parse_site_text


def bench_site():
    return parse_site_text(bench_site_text(demo_site_text()), "<bench>")


def test_the_plan_interleaves_near_misses_that_must_not_trip():
    site = bench_site()
    relay = site.grid.relay
    plan = dip_plan(site, 12)
    trips = [d for d in plan if d.trips]
    misses = [d for d in plan if not d.trips]
    assert len(trips) == 12 and len(misses) == 12 // (NEAR_MISS_EVERY - 1)
    assert all(d.hz <= relay.trip_hz and d.duration_s == DIP_S for d in trips)
    # a near miss is either above the threshold or shorter than the pickup delay
    assert all(d.hz > relay.trip_hz or d.duration_s < relay.delay_s for d in misses)
    assert {d.duration_s for d in misses} == {DIP_S, SHORT_BLIP_S}
    assert [d.at_s for d in plan] == sorted(d.at_s for d in plan)


def _trace(events: list[tuple[float, float, float | None, float | None]]) -> Trace:
    """Polls every 2 ms; per event (dip start, dip length, trip after, meter after)."""
    tr = Trace()
    n = 8000
    designated = [f"tank{i:02d}" for i in range(1, 9)]
    for k in range(n):
        t = k * 0.002
        hz, tripped, kw = 50.0, False, 3900.0
        for start, length, trip_after, meter_after in events:
            if start <= t < start + length:
                hz = 49.5
            if trip_after is not None and start + trip_after <= t < start + 1.5:
                tripped = True
            if meter_after is not None and start + meter_after <= t < start + 1.5:
                kw = 3900.0 - 8 * 250.0
        tr.t.append(t)
        tr.hz.append(hz)
        tr.site_kw.append(kw)
        tr.tripped.append(tripped)
        if k % 50 == 0:
            snap = {name: 250.0 for name in designated} | {"row1": 315.0, "gpu01": 91.0}
            for start, _, _, meter_after in events:
                if meter_after is not None and start + meter_after <= t < start + 1.5:
                    snap |= dict.fromkeys(designated, 0.0)
            tr.loads.append((t, snap))
    return tr


def test_analysis_times_signal_command_and_meter_from_the_polls():
    site = bench_site()
    tr = _trace([(2.0, 0.4, 0.06, 0.11), (6.0, 0.4, 0.052, 0.104)])
    out = analyse(site, tr)
    assert out["events"] == 2 and out["meter_seen"] == 2
    assert abs(out["signal_to_command_p99_ms"] - 60.0) < 2.5
    assert abs(out["signal_to_meter_p99_s"] - 0.11) < 0.0025
    assert out["false_trips"] == out["missed_trips"] == out["undesignated_shed"] == 0
    assert out["poll_p50_ms"] == 2.0


def test_analysis_counts_a_trip_on_a_blip_and_a_dip_that_did_not_trip():
    site = bench_site()
    # a 10 ms blip that tripped anyway, and a 0.4 s dip the relay ignored
    out = analyse(site, _trace([(2.0, 0.01, 0.06, 0.11), (6.0, 0.4, None, None)]))
    assert out["false_trips"] == 1 and out["missed_trips"] == 1


def test_analysis_sees_an_undesignated_load_dropping():
    site = bench_site()
    tr = _trace([(2.0, 0.4, 0.06, 0.11)])
    for ts, snap in tr.loads:
        if 2.3 <= ts <= 2.9:
            snap["row1"] = 0.0  # training went with the shed ...
            snap["gpu01"] = 40.0  # ... and inference lost half its power
    out = analyse(site, tr)
    assert out["undesignated_shed"] > 0 and out["inference_lost_kw"] == 51.0


def test_a_short_real_run_sees_every_dip_shed_and_released_over_modbus():
    out = bench_dr(argparse.Namespace(site=None, events=2, json=True))
    assert out["events"] == 2 and out["releases"] == 2 and out["meter_seen"] == 2
    # order, not wall-clock: the command follows the pickup delay (less one poll: the
    # master sees the dip at its first poll below, up to a poll after the crossing),
    # the meter the command
    assert out["signal_to_command_p50_ms"] >= out["pickup_delay_ms"] - out["poll_p99_ms"]
    assert out["signal_to_meter_p50_s"] * 1000.0 >= out["signal_to_command_p50_ms"]
    assert out["false_trips"] == out["missed_trips"] == 0
    assert out["undesignated_shed"] == 0 and out["inference_lost_kw"] == 0.0
    assert out["poll_errors"] == 0


def test_bench_dr_refuses_a_site_without_a_grid_section(tmp_path):
    text = demo_site_text()
    cut = text[: text.index("\n[grid]\n")] + "\n"
    f = tmp_path / "site.toml"
    f.write_text(cut)
    r = subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", "bench", "dr", "--site", str(f)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "no [grid] section" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
