"""Scheduled retraining: train_and_register, reading beside a writer, RetrainScheduler."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from history import simulated_history

from thermogate.controller import retrain
from thermogate.controller.historian import Historian, HistoryReader
from thermogate.controller.retrain import SCHEDULED_BY, RetrainScheduler, history_dataset
from thermogate.models.registry import Registry
from thermogate.models.training import TrainOutcome
from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import Site, demo_site

HOURS = 3.0  # enough for MIN_HOURS plus a held-out tail, short enough to simulate quickly
WAIT_S = 60.0  # upper bound for waits on events; never a timing assertion


class Reports:
    """An on_outcome callback that keeps every report and signals after ``n`` of them."""

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.got: list[tuple[TrainOutcome | None, str | None]] = []
        self.enough = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, outcome: TrainOutcome | None, error: str | None) -> None:
        with self._lock:
            self.got.append((outcome, error))
            if len(self.got) >= self.n:
                self.enough.set()


def _names(site: Site) -> list[str]:
    return [p.name for p in build_point_map(site).points]


def _scan(h: Historian, t: float, value: float) -> None:
    n = len(h.point_names)
    h.record_scan(t, np.full(n, value), np.zeros(n, np.uint8))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sim_db(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A historian with HOURS of a simulated normal day, closed."""
    site = demo_site()
    path = tmp_path_factory.mktemp("retrain") / "hist.db"
    with simulated_history(path, HOURS, columns=_names(site)):
        pass
    return {"site": site, "path": path}


@pytest.fixture(scope="module")
def first_run(sim_db: dict) -> dict:
    """run_once while a 'controller' Historian holds the file open for writing."""
    site, path = sim_db["site"], sim_db["path"]
    reports = Reports()
    # in a process, as the controller trains; not niced: the other test worker
    # would starve it on two cores
    sched = RetrainScheduler(path, site, every_s=3600.0, on_outcome=reports, nice=0)
    writer = Historian(path, _names(site), site_name=site.name)
    try:
        outcome, error = sched.run_once()
        # the controller's historian still records after a training read its file
        with HistoryReader(path) as reader:
            span = reader.span()
        assert span is not None
        t_next = span[1] + 1.0
        _scan(writer, t_next, 20.0)
        writer.flush(timeout=30.0)
        writer_error = writer.error
    finally:
        writer.close()
    return {
        "outcome": outcome,
        "error": error,
        "reports": reports,
        "sched": sched,
        "t_next": t_next,
        "writer_error": writer_error,
    }


def _run_until_reported(sched: RetrainScheduler, reports: Reports) -> None:
    """Start ``sched``, wait for the reports asked for while it stays alive, stop it."""
    sched.start()
    try:
        assert reports.enough.wait(WAIT_S), "the scheduler stopped trying"
        assert sched.alive
    finally:
        assert sched.stop(timeout=WAIT_S)


def test_run_once_registers_and_promotes_the_first_model(sim_db: dict, first_run: dict) -> None:
    out, error = first_run["outcome"], first_run["error"]
    assert error is None
    assert isinstance(out, TrainOutcome)
    assert out.version == 1 and out.promoted is True
    assert out.reason == "no model promoted yet"
    assert out.train_s > 0
    # trained in a process of its own, which sends the outcome back without the
    # model (it is in the registry as the outcome's version)
    assert first_run["sched"].last_pid not in (None, os.getpid())
    assert out.model is None
    t0, t_split = out.window
    assert t_split - t0 >= 0.5 * HOURS * 3600.0
    assert np.isfinite(out.metrics["pooled_mae_15_c"])
    (reported,) = first_run["reports"].got  # run_once reports through on_outcome too
    assert reported[0] is out and reported[1] is None
    with Registry(sim_db["path"]) as reg:
        assert reg.promoted_version() == 1
        v = reg.versions()[0]  # [0]: later tests add versions to the same registry
        d = reg.decisions()[0]
    assert v["created_by"] == SCHEDULED_BY and v["promoted_by"] == SCHEDULED_BY
    assert (v["t0"], v["t1"]) == out.window
    assert d["promoted"] and d["by"] == SCHEDULED_BY


def test_training_beside_a_writing_historian_leaves_the_writer_working(
    sim_db: dict, first_run: dict
) -> None:
    assert first_run["writer_error"] is None
    with HistoryReader(sim_db["path"], sim_db["site"].name) as reader:
        span = reader.span()
    assert span is not None and span[1] == first_run["t_next"]


def test_second_run_on_the_same_data_keeps_the_promoted_model(
    sim_db: dict, first_run: dict
) -> None:
    # the same rows give the same (deterministic) model: a tie, and a tie keeps the current one
    out, error = first_run["sched"].run_once(by="operator retrain")
    assert error is None and out is not None
    assert out.version == 2 and out.promoted is False
    with Registry(sim_db["path"]) as reg:
        assert reg.promoted_version() == 1
        d = reg.decisions()[-1]
    assert d["candidate"] == 2 and d["current"] == 1 and d["promoted"] is False
    assert d["by"] == "operator retrain"
    assert d["candidate_mae_c"] >= d["current_mae_c"]
    assert ">=" in d["reason"] and out.reason == d["reason"]


def test_a_reader_beside_no_writer_reads_what_the_historian_reads_and_never_writes(
    sim_db: dict,
) -> None:
    site, path = sim_db["site"], sim_db["path"]
    with Historian(path, _names(site), site_name=site.name) as h:
        expected = history_dataset(h.reader, site)
    before = _digest(path)
    with HistoryReader(path, site.name) as reader, reader.snapshot():
        got = history_dataset(reader, site)
    assert _digest(path) == before
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert [k.kind for k in got] == [k.kind for k in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.times, b.times)
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)


def test_reader_refuses_another_sites_history(sim_db: dict) -> None:
    with pytest.raises(ThermogateError, match="holds the history of site"):
        HistoryReader(sim_db["path"], "some-other-site")


@pytest.fixture
def short_db(tmp_path: Path) -> tuple[Path, Site]:
    """A historian with ten minutes of scans: too little to train on."""
    site = demo_site()
    path = tmp_path / "short.db"
    with Historian(path, _names(site), site_name=site.name) as h:
        for i in range(600):
            _scan(h, 1.7e9 + i, 20.0)
    return path, site


def test_too_little_telemetry_is_reported_and_the_scheduler_keeps_trying(
    short_db: tuple[Path, Site],
) -> None:
    path, site = short_db
    reports = Reports(n=2)
    _run_until_reported(RetrainScheduler(path, site, every_s=0.2, first_after_s=0.0,
                                         on_outcome=reports, process=False), reports)  # fmt: skip
    for outcome, error in reports.got[:2]:
        assert outcome is None
        assert error is not None
        assert str(path) in error and "need at least 2 hours of telemetry, found 0.2" in error
    with Registry(path) as reg:
        assert reg.versions() == [] and reg.promoted_version() is None


def test_without_a_model_a_failed_attempt_is_retried_soon_not_a_period_later(
    short_db: tuple[Path, Site],
) -> None:
    path, site = short_db
    reports = Reports(n=2)  # a day's period: the second attempt can only be the retry
    sched = RetrainScheduler(path, site, every_s=86400.0, first_after_s=0.0,
                             retry_after_s=0.05, on_outcome=reports)  # fmt: skip
    _run_until_reported(sched, reports)
    assert [outcome for outcome, _ in reports.got[:2]] == [None, None]
    assert sched.retry_after_s == 0.05  # still no model: still retrying soon


def test_an_unexpected_error_and_a_failing_callback_do_not_end_the_thread(
    monkeypatch: pytest.MonkeyPatch, short_db: tuple[Path, Site]
) -> None:
    path, site = short_db

    def broken(*args: object, **kw: object) -> TrainOutcome:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(retrain, "train_and_register", broken)
    reports = Reports(n=2)

    def callback(outcome: TrainOutcome | None, error: str | None) -> None:
        reports(outcome, error)
        if len(reports.got) == 1:
            raise ValueError("a bug in the controller's callback")

    _run_until_reported(RetrainScheduler(path, site, every_s=0.2, first_after_s=0.0,
                                         on_outcome=callback, process=False), reports)  # fmt: skip
    for outcome, error in reports.got[:2]:
        assert outcome is None and error is not None
        assert "unexpectedly" in error and "RuntimeError: disk on fire" in error
        assert str(path) in error


def test_stop_ends_a_waiting_scheduler_without_an_attempt(short_db: tuple[Path, Site]) -> None:
    path, site = short_db
    reports = Reports()
    # an hour until the first attempt: only an Event wait lets stop() end this within WAIT_S
    sched = RetrainScheduler(path, site, every_s=3600.0, on_outcome=reports)
    sched.start()
    assert sched.alive
    assert sched.stop(timeout=WAIT_S) is True
    assert not sched.alive
    assert reports.got == [] and sched.attempts == 0


def test_only_one_training_runs_at_a_time_and_run_once_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, short_db: tuple[Path, Site]
) -> None:
    path, site = short_db
    entered = threading.Event()
    release = threading.Event()
    lock = threading.Lock()
    state = {"running": 0, "max_running": 0, "calls": 0}

    def slow(*args: object, by: str, **kw: object) -> TrainOutcome:
        with lock:
            state["running"] += 1
            state["calls"] += 1
            state["max_running"] = max(state["max_running"], state["running"])
        entered.set()
        release.wait(WAIT_S)
        with lock:
            state["running"] -= 1
        raise ThermogateError(f"fake training by {by}")

    monkeypatch.setattr(retrain, "train_and_register", slow)
    reports = Reports(n=2)
    sched = RetrainScheduler(
        path, site, every_s=3600.0, first_after_s=0.0, on_outcome=reports, process=False
    )
    blocked = threading.Event()
    real_lock = sched._lock

    class SignallingLock:
        """The scheduler's lock, telling the test when someone has to wait for it."""

        def __enter__(self) -> None:
            if real_lock.locked():
                blocked.set()
            real_lock.acquire()

        def __exit__(self, *exc: object) -> None:
            real_lock.release()

    sched._lock = SignallingLock()  # type: ignore[assignment]
    sched.start()
    try:
        assert entered.wait(WAIT_S)  # the scheduled attempt is training
        results: list[tuple[TrainOutcome | None, str | None]] = []
        op = threading.Thread(target=lambda: results.append(sched.run_once(by="operator")))
        op.start()
        assert blocked.wait(WAIT_S)  # run_once is waiting, not training alongside
        assert state["calls"] == 1
        release.set()
        op.join(WAIT_S)
        assert not op.is_alive()
    finally:
        assert sched.stop(timeout=WAIT_S)
    assert state["calls"] == 2 and state["max_running"] == 1
    assert results == [(None, "retrain failed: fake training by operator")]
    assert [e for _, e in reports.got] == [
        f"retrain failed: fake training by {SCHEDULED_BY}",
        "retrain failed: fake training by operator",
    ]


def test_stop_ends_a_training_process_at_once(sim_db: dict) -> None:
    reports = Reports()
    sched = RetrainScheduler(sim_db["path"], sim_db["site"], every_s=3600.0, on_outcome=reports)
    results: list[tuple[TrainOutcome | None, str | None]] = []
    op = threading.Thread(target=lambda: results.append(sched.run_once()))
    op.start()
    deadline = time.monotonic() + WAIT_S
    while sched.last_pid is None:
        assert time.monotonic() < deadline, "no training process started"
        time.sleep(0.01)
    pid = sched.last_pid
    assert sched.stop(timeout=WAIT_S)
    op.join(WAIT_S)
    assert not op.is_alive() and results == [(None, None)]  # stopped: no outcome, no report
    assert reports.got == []
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)
