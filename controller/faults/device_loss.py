"""Fault class 3: one device silent for 1-120 s, then back.

``PlantModbusServer.set_fault(unit, "timeout")`` makes a unit id that feeds
one zone alone drop every request, for seeded durations (the shortest and
the longest of the range, and log-uniform draws between); then heals it.
The rig's checks hold for every scan (``rig.py``): only that zone fail-safe,
the alarm raised and cleared in the event log, every write to other units
accepted; detection and recovery times are the figures.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from thermogate.plc.site import Site, demo_site

from .common import ClassResult
from .rig import Rig, Target, run_episodes


def loss_durations(seed: int, n: int, lo: float = 1.0, hi: float = 120.0) -> list[float]:
    """``n`` silences: ``lo`` and ``hi`` themselves, then log-uniform draws between."""
    rng = random.Random(seed)
    edge = [lo, hi][:n]
    return edge + [math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(n - len(edge))]


def run_device_loss(
    seed: int, durations: Sequence[float] | None = None, site: Site | None = None
) -> ClassResult:
    """Fault class 3 (module docstring) in its own event loop."""
    site = site or demo_site()
    rng = random.Random(seed)
    silences = list(durations) if durations is not None else loss_durations(seed, 4)
    res = ClassResult()
    t0 = time.monotonic()

    def plan(rig: Rig) -> list[tuple[Target, str, float]]:
        return [(rng.choice(rig.targets), "timeout", s) for s in silences]

    def apply(rig: Rig, target: Target, kind: str | None) -> None:
        rig.sp.server.set_fault(target.unit, "timeout" if kind else None)

    with tempfile.TemporaryDirectory(prefix="thermogate-faults-") as tmp:
        log = asyncio.run(
            run_episodes(
                site, Path(tmp) / "loss.db", seed, proxy=False, scan_s=0.5,
                plan=plan, apply=apply, res=res,
            )
        )  # fmt: skip
    res.crashes = log.crashes
    for p in log.problems:
        res.fail(p)
    res.counts = {
        "silences_s": [round(s, 1) for s in silences],
        "scans": log.scans,
        "deadline_misses": log.deadline_misses,
    }
    res.wall_s = time.monotonic() - t0
    return res
