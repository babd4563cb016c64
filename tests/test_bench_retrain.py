"""``thermogate bench retrain``: the scan loop's wake-ups beside a retrain, by phase."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_retrain_prints_each_phase_against_idle_and_the_models_handover() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", "bench", "retrain",
         "--hours", "3", "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["history_h"] == 3.0 and r["period_ms"] == 50.0
    for phase in ("idle", "thread", "process"):
        p = r[phase]
        assert p["ticks"] > 0, phase
        assert 0 <= p["late_p50_ms"] <= p["late_p99_ms"] <= p["late_max_ms"], phase
    for phase in ("thread", "process"):  # each against the idle phase's p99
        assert r[phase]["p99_over_idle"] > 0 and r[phase]["fit_s"] > 0
    # the process trained (the same data as the thread's model: kept out, not promoted)
    assert "TrainOutcome(version=2, promoted=False" in r["process"]["outcome"]
    # the promoted model, loaded from the registry as run loads it between scans
    assert r["process"]["handover_load_ms"] > 0 and r["process"]["handover_load_again_ms"] > 0
