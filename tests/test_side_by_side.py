"""Benchmark policies side by side: real worker processes, results by name, errors raised."""

from __future__ import annotations

import os
import queue
from typing import Any

import pytest

from thermogate.controller.side_by_side import run_side_by_side, told


def _square_in_a_worker(job: dict[str, Any]) -> dict[str, Any]:
    progress = told(job)
    if progress is not None:
        for k in range(1, 11):
            progress.update(k, 10)
    if job["x"] < 0:
        raise ValueError(f"negative x {job['x']}")
    return {"y": job["x"] ** 2, "pid": os.getpid()}


def test_results_come_back_by_name_in_the_order_asked_from_other_processes():
    jobs = {name: {"x": x} for name, x in (("c", 3), ("a", 1), ("b", 2))}
    out = run_side_by_side(_square_in_a_worker, jobs, 1.0, show_progress=True)
    assert list(out) == ["c", "a", "b"]
    assert [r["y"] for r in out.values()] == [9, 1, 4]
    assert all(r["pid"] != os.getpid() for r in out.values())


def test_a_worker_exception_is_raised_in_the_parent_naming_its_cause():
    jobs = {"ok": {"x": 2}, "bad": {"x": -1}}
    with pytest.raises(ValueError, match="negative x -1"):
        run_side_by_side(_square_in_a_worker, jobs, 1.0, show_progress=False)


def test_progress_is_told_about_every_percent_and_always_at_the_end():
    assert told({"_name": "p", "_told": None}) is None
    q: queue.Queue[tuple[str, float]] = queue.Queue()
    progress = told({"_name": "p", "_told": q})
    assert progress is not None
    for k in range(1, 1001):
        progress.update(k, 1000)
    said = []
    while not q.empty():
        said.append(q.get())
    assert {name for name, _ in said} == {"p"}
    fracs = [f for _, f in said]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    assert 90 <= len(fracs) <= 101  # every ~1 %, not every update
