"""``thermogate bench retrain``: what a retrain in progress costs the scan loop.

A historian is filled with ``--hours`` of the demo site (controller and plant in
lockstep), then an asyncio loop paced like ``thermogate run``'s (a tick every
``PERIOD_S``, each doing a scan's worth of numpy work) measures how late each
tick wakes, in three phases of the same length:

1. ``idle``: nothing else running (the baseline);
2. ``thread``: a retrain on a thread of the same process (how it ran before:
   a fit holds the interpreter for tens of milliseconds at a time);
3. ``process``: a retrain as ``thermogate run`` does it now, in a process of its
   own at a lower priority (``RetrainScheduler``), which sends its outcome back
   without the model; ``handover_load_ms`` is what loading a promoted model
   from the registry then costs the loop, between two scans (``run`` does it
   with a scan's records, off the scan's clock): the first load in a process
   (a new site's first model; ~0.1 s of it is one-off) and
   ``handover_load_again_ms``, a later one.

Each phase reports the wake-up lateness p50/p99/max (ms) and the fit's own
time; the comparison that matters is each phase's p99 against ``idle``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from thermogate.models.registry import Registry, load_version
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import Site, demo_site

from .bench import pct
from .heap import freeze_startup
from .historian import Historian
from .retrain import RetrainScheduler, train_and_register
from .simulate import run_simulation

PERIOD_S = 0.05  # ticks 20 times a second: lateness is seen at a fine grain
WORK = 20_000  # the numpy work of one tick: a scan's arrays over ~10,000 points


def bench_retrain(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="thermogate-bench-retrain-") as tmp:
        db = Path(tmp) / "history.db"
        site = replace(demo_site(), import_limit_kw=5000.0)  # as the model tests learn
        cols = [p.name for p in build_point_map(site).points]
        with Historian(db, cols, site_name=site.name) as h:
            run_simulation(site, "normal-day", args.hours, historian=h, scan_s=5.0)
            h.flush(timeout=300.0)
        return asyncio.run(_measure(db, site, args.hours))


async def _measure(db: Path, site: Site, hours: float) -> dict:
    freeze_startup()  # as ``run`` starts: the history's simulation is not the loop's heap
    # the thread phase first: its fit's duration sets every phase's length
    fit_s: list[float] = []

    def fit() -> None:
        t0 = time.perf_counter()
        train_and_register(db, site, days=hours / 24.0 + 1.0, by="bench retrain (thread)")
        fit_s.append(time.perf_counter() - t0)

    worker = threading.Thread(target=fit, name="bench-retrain", daemon=True)
    worker.start()
    threaded = await _ticks(lambda: worker.is_alive())
    span = max(fit_s[0] if fit_s else 10.0, 5.0)

    done = threading.Event()
    outcome: list[object] = []
    sched = RetrainScheduler(
        db,
        site,
        every_s=1e9,
        days=hours / 24.0 + 1.0,
        by="bench retrain (process)",
        on_outcome=lambda out, err: outcome.append(out or err),
    )

    def in_process() -> None:
        t0 = time.perf_counter()
        sched.run_once()
        fit_s.append(time.perf_counter() - t0)
        done.set()

    threading.Thread(target=in_process, name="bench-retrain-process", daemon=True).start()
    isolated = await _ticks(lambda: not done.is_set())
    with Registry(db) as reg:
        promoted = reg.promoted_version()
    # run's heap is frozen at its start and hourly (heap.freeze_startup): a full
    # collection during the load would otherwise walk everything this bench made
    freeze_startup()
    load_ms: list[float] = []
    while promoted is not None and len(load_ms) < 2:  # the first in a process costs most
        t0 = time.perf_counter()
        load_version(db, promoted)
        load_ms.append((time.perf_counter() - t0) * 1000.0)
    t_end = time.monotonic() + span
    idle = await _ticks(lambda: time.monotonic() < t_end)
    base = pct(idle, 99)
    return {
        "history_h": hours,
        "period_ms": PERIOD_S * 1000.0,
        "idle": _phase(idle, None),
        "thread": {**_phase(threaded, base), "fit_s": round(fit_s[0], 1) if fit_s else None},
        "process": {
            **_phase(isolated, base),
            "fit_s": round(fit_s[1], 1) if len(fit_s) > 1 else None,
            "outcome": str(outcome[0])[:120] if outcome else None,
            "handover_load_ms": round(load_ms[0], 1) if load_ms else None,
            "handover_load_again_ms": round(load_ms[1], 1) if load_ms else None,
        },
    }


def _phase(late: list[float], base_p99: float | None) -> dict:
    out = {
        "ticks": len(late),
        "late_p50_ms": round(pct(late, 50), 2),
        "late_p99_ms": round(pct(late, 99), 2),
        "late_max_ms": round(max(late), 2) if late else None,
    }
    if base_p99:
        out["p99_over_idle"] = round(pct(late, 99) / base_p99, 2)
    return out


async def _ticks(going: Callable[[], bool]) -> list[float]:
    """Paced ticks while ``going()`` is true: how late each woke, in ms."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)
    a = rng.random(WORK)
    late: list[float] = []
    next_t = loop.time() + PERIOD_S
    while going():
        await asyncio.sleep(max(next_t - loop.time(), 0.0))
        late.append((loop.time() - next_t) * 1000.0)
        np.sort(a)  # a scan's share of the core
        next_t += PERIOD_S
        if loop.time() > next_t:  # a late tick is counted once, not as a burst
            next_t = loop.time() + PERIOD_S
    return late
