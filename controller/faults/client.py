"""Fault class 2: a lying, slow or vanishing Modbus device, seen from the controller.

The controller reads the plant through a :class:`~.proxy.FaultProxy`. A
seeded schedule takes every fault kind in turn (wrong transaction id, wrong
unit, short byte count, exception code, a 2 s delay, a reset mid-answer),
``reps`` times each, on a unit id that feeds one zone alone, held 2-5 s; the
checks of each episode are the rig's (``rig.py``): no crash, the unit's
points bad and its zone fail-safe, every other unit and zone undisturbed,
alarm and clear in the event log. Scans that missed their deadline are
counted.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from thermogate.plc.site import Site, demo_site

from .common import ClassResult
from .proxy import KINDS
from .rig import Rig, Target, run_episodes


def run_client_faults(
    seed: int,
    reps: int = 2,
    *,
    kinds: Sequence[str] = KINDS,
    hold_s: tuple[float, float] = (2.0, 5.0),
    delay_s: float = 2.0,
    site: Site | None = None,
) -> ClassResult:
    """Fault class 2 (module docstring) in its own event loop."""
    site = site or demo_site()
    rng = random.Random(seed)
    res = ClassResult()
    t0 = time.monotonic()
    corrupted: Counter[str] = Counter()

    def plan(rig: Rig) -> list[tuple[Target, str, float]]:
        return [
            (rng.choice(rig.targets), k, rng.uniform(*hold_s)) for _ in range(reps) for k in kinds
        ]

    def apply(rig: Rig, target: Target, kind: str | None) -> None:
        assert rig.proxy is not None
        if kind is None:
            rig.proxy.faults.pop(target.unit, None)
            corrupted.update(rig.proxy.injected)
            rig.proxy.injected.clear()
        else:
            rig.proxy.faults[target.unit] = kind

    with tempfile.TemporaryDirectory(prefix="thermogate-faults-") as tmp:
        log = asyncio.run(
            run_episodes(
                site, Path(tmp) / "client.db", seed, proxy=True, scan_s=0.5,
                plan=plan, apply=apply, res=res, delay_s=delay_s,
            )
        )  # fmt: skip
    res.crashes = log.crashes
    for p in log.problems:
        res.fail(p)
    res.counts = {
        "answers_corrupted": dict(sorted(corrupted.items())),
        "scans": log.scans,
        "deadline_misses": log.deadline_misses,
    }
    res.wall_s = time.monotonic() - t0
    return res
