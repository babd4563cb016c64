"""Benchmark policies run side by side, one worker process each, under one progress bar.

A study compares policies that share nothing while they run (each is its own
closed loop of control core and simulated plant), so they run in parallel: on
the two cores of a CI machine a week-long two-policy study takes the wall time
of one policy instead of two. Results come back in the order asked, whatever
order the workers finish in, and a worker's exception is raised here.

A worker reports its progress through ``told(job)`` (a ``Progress`` for
``run_simulation``); the parent draws one bar over every policy in simulated
hours, on a terminal only (``ProgressBar``).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import Manager
from typing import Any

from .report import ProgressBar

#: a policy's progress is told to the parent at most every this fraction of its run
_TELL_EVERY = 0.01


class _Told:
    """A policy's progress, told to the parent through a queue every ~1 %."""

    def __init__(self, q: Any, name: str) -> None:
        self.queue, self.name, self._last = q, name, -1.0

    def update(self, done: float, total: float) -> None:
        frac = done / total if total else 1.0
        if frac - self._last >= _TELL_EVERY or frac >= 1.0:
            self._last = frac
            self.queue.put((self.name, frac))


def told(job: dict[str, Any]) -> _Told | None:
    """The progress a worker hands to ``run_simulation`` (None when nobody watches)."""
    q = job.get("_told")
    return None if q is None else _Told(q, job["_name"])


def run_side_by_side(
    work: Callable[[dict[str, Any]], dict[str, Any]],
    jobs: dict[str, dict[str, Any]],
    hours: float,
    *,
    show_progress: bool,
) -> dict[str, dict[str, Any]]:
    """``work(job)`` for every named job, in worker processes; results by name, in order.

    ``work`` must be a module-level function and each job picklable. At most one
    worker per core; ``hours`` is each job's simulated span (for the bar).
    """
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool, Manager() as mgr:
        q = mgr.Queue() if show_progress else None
        futs = {
            name: pool.submit(work, {**job, "_name": name, "_told": q})
            for name, job in jobs.items()
        }
        if q is not None:
            _show(q, list(futs.values()), hours)
        return {name: fut.result() for name, fut in futs.items()}


def _show(q: Any, futures: list[Future[dict[str, Any]]], hours: float) -> None:
    """One bar in simulated hours over every job, until all of them are done."""
    done: dict[str, float] = {}
    n = len(futures)
    with ProgressBar("policies", sim_hours=n * hours) as bar:
        while not all(f.done() for f in futures):
            try:
                name, frac = q.get(timeout=0.5)
            except queue.Empty:
                continue
            done[name] = frac
            bar.update(sum(done.values()), n)
