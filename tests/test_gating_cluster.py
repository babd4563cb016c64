"""The GPU cluster as the gating planner drives it: traces in, jobs admitted,
preempted from checkpoints and completed, with books that always close."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.gating.cluster import Cluster, run_queue
from thermogate.hil.scenario.jobs import DEFAULT_CHECKPOINT_S, Job, load_jobs_csv
from thermogate.plc.errors import DataFileError


def job(
    i: int, submit: float, duration: float, gpus: int, kind: str = "training", ckpt: float = 600.0
) -> Job:
    return Job(i, submit, duration, gpus, kind, ckpt if kind == "training" else math.inf)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# the trace file
# --------------------------------------------------------------------------- #


def test_a_trace_is_read_in_submit_order_with_defaults_and_extra_columns_ignored(tmp_path: Path):
    f = tmp_path / "trace.csv"
    f.write_text(
        "# a week of cluster A\n"
        "submit_time_s,duration_s,gpus,kind,user,checkpoint_s\n"
        "600,3600,8,training,alice,\n"
        "0,120,1,Inference,bob,\n"
        "600,7200,64,training,carol,900\n"
    )
    jobs = load_jobs_csv(f)
    assert [(j.submit_s, j.gpus, j.kind) for j in jobs] == [
        (0.0, 1, "inference"),
        (600.0, 8, "training"),
        (600.0, 64, "training"),  # a tie keeps file order
    ]
    assert [j.id for j in jobs] == [0, 1, 2]
    assert [j.line for j in jobs] == [4, 3, 5]
    assert math.isinf(jobs[0].checkpoint_s)
    assert jobs[1].checkpoint_s == DEFAULT_CHECKPOINT_S and jobs[2].checkpoint_s == 900.0
    assert jobs[2].gpu_s == 7200 * 64


def test_a_semicolon_export_with_decimal_commas_reads_the_same(tmp_path: Path):
    f = tmp_path / "trace.csv"
    f.write_bytes("\ufeffsubmit_time_s;duration_s;gpus;kind\r\n0,5;60,25;2;training\r\n".encode())
    (j,) = load_jobs_csv(f)
    assert (j.submit_s, j.duration_s, j.gpus) == (0.5, 60.25, 2)


@pytest.mark.parametrize(
    ("row", "column", "words"),
    [
        ("x,60,1,training", "submit_time_s", "not a number"),
        ("-5,60,1,training", "submit_time_s", "outside the plausible range"),
        ("0,-1,1,training", "duration_s", "outside the plausible range"),
        ("0,inf,1,training", "duration_s", "not a finite number"),
        ("0,60,-1,training", "gpus", "outside the plausible range"),
        ("0,60,1.5,training", "gpus", "whole number"),
        ("0,60,,training", "gpus", "empty cell"),
        ("0,60,1,mining", "kind", "not one of training, inference"),
    ],
)
def test_a_bad_row_names_file_line_and_column(tmp_path: Path, row: str, column: str, words: str):
    f = tmp_path / "jobs.csv"
    f.write_text(f"submit_time_s,duration_s,gpus,kind\n0,60,1,training\n{row}\n")
    with pytest.raises(DataFileError) as info:
        load_jobs_csv(f)
    err = info.value
    assert (err.file, err.line, err.column) == (str(f), 3, column)
    assert words in str(err) and str(err).startswith(f"{f}:3: column '{column}'")


def test_a_trace_without_a_required_column_or_without_jobs_is_refused(tmp_path: Path):
    f = tmp_path / "jobs.csv"
    f.write_text("submit_time_s,duration_s,kind\n0,60,training\n")
    with pytest.raises(DataFileError, match="missing required column 'gpus'"):
        load_jobs_csv(f)
    f.write_text("# nothing yet\nsubmit_time_s,duration_s,gpus,kind\n")
    with pytest.raises(DataFileError, match="no jobs after the header"):
        load_jobs_csv(f)
    with pytest.raises(DataFileError, match="file not found"):
        load_jobs_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- #
# admission
# --------------------------------------------------------------------------- #


def test_fifo_holds_small_jobs_behind_a_blocked_head_and_backfill_starts_them_without_delaying_it():
    jobs = [
        job(0, 0, 1000, 6),  # runs 0..1000 on 6 of 8 GPUs
        job(1, 10, 500, 8),  # the head: needs all 8, can start at 1000
        job(2, 20, 900, 2),  # fits in the 2 free GPUs and ends (920) before 1000
        job(3, 30, 2000, 2),  # fits too, but would hold 2 GPUs past 1000
    ]
    starts = {}
    for admission in ("fifo", "backfill"):
        c = Cluster(8, admission)  # type: ignore[arg-type]
        c.submit(jobs)
        run_queue(c, [(0, 8)], until=10_000)
        starts[admission] = {f.job.id: f.start_s for f in c.finished}
    assert starts["fifo"] == {0: 0, 1: 1000, 2: 1500, 3: 1500}
    # job 2 backfilled at once; the head still starts at 1000; job 3 waits for it
    assert starts["backfill"] == {0: 0, 1: 1000, 2: 20, 3: 1500}


def test_inference_is_admitted_before_training_that_queued_earlier():
    c = Cluster(8, "fifo")
    c.submit([job(0, 0, 100, 8), job(1, 1, 100, 4), job(2, 2, 100, 4, "inference")])
    run_queue(c, [(0, 8)], until=1000)
    start = {f.job.id: f.start_s for f in c.finished}
    assert start[2] == 100 and start[1] == 100  # both fit after job 0; inference not behind it
    c = Cluster(8, "fifo")
    c.submit([job(0, 0, 100, 8), job(1, 1, 100, 6), job(2, 2, 100, 4, "inference")])
    run_queue(c, [(0, 8)], until=1000)
    start = {f.job.id: f.start_s for f in c.finished}
    assert start[2] == 100 and start[1] == 200


def test_a_job_larger_than_the_cluster_is_rejected_and_counted_never_dropped():
    c = Cluster(16)
    c.submit([job(0, 0, 100, 32), job(1, 0, 100, 16)])
    res = c.step(0, 16)
    assert res.rejected == (0,) and res.started == (1,)
    b = c.books()
    assert b.rejected_jobs == 1 and b.rejected_gpu_s == 3200
    assert b.balance_gpu_s == pytest.approx(0.0)


# --------------------------------------------------------------------------- #
# preemption
# --------------------------------------------------------------------------- #


def test_training_is_preempted_before_inference_and_resumes_from_its_checkpoint():
    c = Cluster(8)
    c.submit([job(0, 0, 3000, 4, ckpt=600), job(1, 0, 5000, 4, "inference")])
    assert set(c.step(0, 8).started) == {0, 1}
    res = c.step(1500, 4)  # capacity halves: the training job goes, inference stays
    assert res.preempted == (0,) and c.running()[0].id == 1
    b = c.books()
    # 1500 s done, last checkpoint at 1200 s: 300 s x 4 GPUs lost
    assert b.lost_gpu_s == pytest.approx(300 * 4) and b.preemptions == 1
    assert b.balance_gpu_s == pytest.approx(0.0, abs=1e-6)
    c.step(2000, 8)  # back: it restarts from 1200 s, so 1800 s are left
    run_queue(c, [(2000, 8)], until=100_000)
    done = {f.job.id: f for f in c.finished}
    assert done[0].end_s == pytest.approx(2000 + 1800) and done[0].preemptions == 1
    assert done[0].start_s == 0  # its queueing delay is to its first start
    assert done[1].end_s == pytest.approx(5000) and done[1].preemptions == 0


def test_among_training_jobs_the_one_losing_least_work_goes_first():
    c = Cluster(8)
    c.submit([job(0, 0, 9000, 4, ckpt=1000), job(1, 0, 9000, 4, ckpt=700)])
    c.step(0, 8)
    # at 1400 s: job 0 is 400 s past its checkpoint, job 1 is 0 s past its (1400)
    res = c.step(1400, 4)
    assert res.preempted == (1,)
    assert c.books().lost_gpu_s == pytest.approx(0.0)


def test_an_inference_job_preempted_last_keeps_its_progress():
    c = Cluster(4)
    c.submit([job(0, 0, 1000, 4, "inference")])
    c.step(0, 4)
    assert c.step(400, 0).preempted == (0,)
    assert c.books().lost_gpu_s == 0.0
    run_queue(c, [(500, 4)], until=10_000)
    assert c.finished[0].end_s == pytest.approx(500 + 600)


def test_a_capped_rate_slows_jobs_and_their_completion_is_exact():
    c = Cluster(4)
    c.submit([job(0, 0, 1000, 4)])
    c.step(0, 4, rate=0.5)
    c.step(1000, 4, rate=1.0)  # 500 s of work done, 500 left at full rate
    c.step(5000, 4)
    assert c.finished[0].end_s == pytest.approx(1500)


# --------------------------------------------------------------------------- #
# the books close, whatever happens
# --------------------------------------------------------------------------- #

_jobs = st.lists(
    st.tuples(
        st.floats(0, 5000),
        st.floats(1, 4000),
        st.integers(1, 40),
        st.sampled_from(["training", "inference"]),
        st.floats(50, 2000),
    ),
    min_size=1,
    max_size=25,
)
_caps = st.lists(st.tuples(st.floats(0, 20_000), st.integers(0, 32)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(_jobs, _caps, st.sampled_from(["fifo", "backfill"]), st.floats(0.2, 1.0))
def test_every_gpu_second_submitted_is_done_pending_or_rejected(spec, caps, admission, rate):
    jobs = [job(i, *row) for i, row in enumerate(spec)]
    c = Cluster(32, admission)
    c.submit(jobs)
    t = 0.0
    for when, cap in [*sorted(caps), (25_000.0, 32)]:
        while t < when:
            t = min(when, c.next_event_s())
            c.step(t, cap if t >= when else c.busy_gpus, rate)
            b = c.books()
            assert b.balance_gpu_s == pytest.approx(0.0, abs=1e-6 * b.submitted_gpu_s + 1e-6)
            assert c.busy_gpus <= 32
            # what the planner is told is wanted: running plus queued, kept as it changes
            want = {k: 0 for k in ("training", "inference")}
            for j in (*c.running(), *c.queued()):
                want[j.kind] += j.gpus
            assert c.wanted_by_kind() == {k: min(v, 32) for k, v in want.items()}
        c.step(when, cap, rate)
        assert c.busy_gpus <= cap
    run_queue(c, [(t, 32)], until=t + 1e7)
    b = c.books()
    # with the whole cluster and time enough, everything admissible ran to the end
    assert b.pending_gpu_s == pytest.approx(0.0, abs=1e-6)
    # absolute tolerance too: when nothing was admissible the difference is ~1e-12
    assert b.done_gpu_s == pytest.approx(b.submitted_gpu_s - b.rejected_gpu_s, abs=1e-6)
    assert len(c.finished) + b.rejected_jobs == len(jobs)
    for f in c.finished:
        assert f.submit_s <= f.start_s < f.end_s
        assert f.end_s - f.start_s >= f.job.duration_s - 1e-6  # never faster than full rate


# --------------------------------------------------------------------------- #
# the cluster in the loop of a simulation, and the command line
# --------------------------------------------------------------------------- #


def test_a_job_burst_moves_power_to_the_gpus_in_the_plant(tmp_path: Path):
    from thermogate.controller.gating.planner import GatingPlanner
    from thermogate.controller.simulate import run_simulation
    from thermogate.plc.site import demo_site

    site = demo_site()
    rows = ["submit_time_s,duration_s,gpus,kind"]
    rows += [f"{1800 + i},{4 * 3600},64,training" for i in range(8)]  # 512 GPUs at 30 min
    rows += ["1800,7200,128,inference"]
    f = tmp_path / "burst.csv"
    f.write_text("\n".join(rows) + "\n")
    r = run_simulation(
        site, "normal-day", 1.0, scan_s=5.0, planner=GatingPlanner(site), jobs=load_jobs_csv(f)
    )
    s = r.series
    before = s["t_h"] < 0.45
    after = s["t_h"] > 0.6
    for c in ("training", "inference"):  # idle GPUs before the burst, busy after it
        assert s[f"class.{c}_kw"][after].mean() > 2.0 * s[f"class.{c}_kw"][before].mean(), c
    jobs = r.summary["jobs"]
    assert jobs["rejected_jobs"] == 0 and jobs["finished"] + jobs["pending"] == 9
    assert jobs["preemptions"] == 0 and r.summary["trips"] == 0


def test_a_bad_trace_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path):
    import subprocess
    import sys

    f = tmp_path / "t.csv"
    f.write_text("submit_time_s,duration_s,gpus,kind\n0,60,4,training\n10,60,2.5,training\n")
    cmd = [sys.executable, "-m", "thermogate.controller.cli", "simulate", "--hours", "0.1"]
    out = subprocess.run(
        [*cmd, "--jobs", str(f), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        f"thermogate: error: {f}:3: column 'gpus': '2.5' is not a whole number of GPUs"
    )
    assert out.stdout == ""


def test_jobs_submitted_in_the_last_scan_count_and_jobs_after_the_run_are_told_apart(
    tmp_path: Path,
):
    # The 7199 s job once counted nowhere (no step after it), and the 7200 s one's
    # GPU-hours were in submitted_gpu_h although it never came.
    from thermogate.controller.simulate import run_simulation
    from thermogate.plc.site import demo_site

    f = tmp_path / "ends.csv"
    f.write_text(
        "submit_time_s,duration_s,gpus,kind\n0,600,1,training\n7190,600,1,inference\n"
        "7199,600,1,inference\n7200,3600,1,inference\n"
    )
    r = run_simulation(demo_site(), "normal-day", 2.0, scan_s=5.0, jobs=load_jobs_csv(f))
    jobs = r.summary["jobs"]
    assert (jobs["finished"], jobs["pending"], jobs["after_run_jobs"]) == (1, 2, 1)
    assert jobs["submitted_gpu_h"] == round(3 * 600 / 3600, 2)


def test_a_trace_whose_jobs_all_come_after_the_run_is_refused_naming_its_first_row(
    tmp_path: Path,
):
    # An epoch-time trace (seconds since 1970) ran no job and said nothing.
    import subprocess
    import sys

    f = tmp_path / "epoch.csv"
    f.write_text(
        "submit_time_s,duration_s,gpus,kind\n1721005200,60,2,training\n1721001600,60,4,training\n"
    )
    cmd = [sys.executable, "-m", "thermogate.controller.cli", "simulate", "--hours", "0.1"]
    out = subprocess.run(
        [*cmd, "--jobs", str(f), "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"thermogate: error: {f}:3: column 'submit_time_s': no job")
    assert "not from 1970" in out.stderr and out.stdout == ""


def test_jobs_that_ask_no_gpu_time_are_skipped_with_one_warning(tmp_path: Path, caplog):
    """Public traces hold jobs that failed at once (run time 0): one such row
    refused a 500,000-row trace."""
    f = tmp_path / "jobs.csv"
    f.write_text("submit_time_s,duration_s,gpus,kind\n0,60,1,training\n5,0,8,training\n"
                 "9,0,2,inference\n10,30,2,inference\n")  # fmt: skip
    with caplog.at_level("WARNING"):
        jobs = load_jobs_csv(f)
    assert [(j.submit_s, j.duration_s) for j in jobs] == [(0.0, 60.0), (10.0, 30.0)]
    [said] = [r.getMessage() for r in caplog.records]
    assert said == (
        f"{f}: 2 job(s) with duration_s 0 skipped (they ask no GPU time; first at line 3)"
    )
    f.write_text("submit_time_s,duration_s,gpus,kind\n5,0,8,training\n")
    with pytest.raises(DataFileError, match="every job asks no GPU time"):
        load_jobs_csv(f)


def test_cpu_only_jobs_are_skipped_with_one_warning(tmp_path: Path, caplog):
    """Helios-style traces list CPU jobs (gpus 0): they stopped the whole run."""
    f = tmp_path / "jobs.csv"
    f.write_text("submit_time_s,duration_s,gpus,kind\n0,60,1,training\n5,600,0,training\n"
                 "7,60,0,inference\n")  # fmt: skip
    with caplog.at_level("WARNING"):
        jobs = load_jobs_csv(f)
    assert [(j.submit_s, j.gpus) for j in jobs] == [(0.0, 1)]
    [said] = [r.getMessage() for r in caplog.records]
    assert said == f"{f}: 2 CPU-only job(s) (gpus 0) skipped (first at line 3)"


def test_durations_in_milliseconds_are_said(tmp_path: Path, caplog):
    """A trace in ms under 90 days passed as seconds: 200 jobs pending, none finished."""
    f = tmp_path / "jobs.csv"
    rows = "".join(f"{60 * k},{3_600_000 + 1000 * k},8,training\n" for k in range(10))
    f.write_text("submit_time_s,duration_s,gpus,kind\n" + rows)
    with caplog.at_level("WARNING"):
        load_jobs_csv(f)
    [said] = [r.getMessage() for r in caplog.records]
    assert "the median job runs 41.7 days: durations in milliseconds?" in said
