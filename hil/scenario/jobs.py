"""GPU-cluster job traces: what the AI side of the hall is asked to run.

Format (read through :func:`thermogate.plc.csvtable.read_table`, so the usual
tolerances apply: comments, BOM, ``;`` files with decimal commas, extra
columns ignored)::

    submit_time_s,duration_s,gpus,kind[,checkpoint_s]

``submit_time_s`` counts from the start of the run (the first price
timestamp), ``duration_s`` is the job's run time on its GPUs at full power,
``gpus`` a whole number of GPUs, ``kind`` ``training`` or ``inference``.
``checkpoint_s`` (optional) is a training job's checkpoint interval; without
it, training jobs checkpoint every ``DEFAULT_CHECKPOINT_S``. Rows need not be
in submit order (exports of several queues often are not); jobs are sorted,
ties keeping file order. A job with ``duration_s`` 0 (one that failed at
once, as public traces hold many) or ``gpus`` 0 (a CPU-only job) is skipped,
each kind with one warning. A bad row is a
``DataFileError`` naming the file, the line and the column.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from typing import Literal

import numpy as np

from thermogate.plc.csvtable import read_table
from thermogate.plc.errors import DataFileError

__all__ = ["DEFAULT_CHECKPOINT_S", "KINDS", "Job", "JobKind", "load_jobs_csv"]

log = logging.getLogger(__name__)

JobKind = Literal["training", "inference"]
KINDS: tuple[JobKind, ...] = ("training", "inference")

#: A training job's checkpoint interval when the trace does not give one (30 min,
#: a common choice for multi-hour jobs on large models).
DEFAULT_CHECKPOINT_S = 1800.0
#: A job longer than this is a unit mistake (ms for s), not a real job.
MAX_DURATION_S = 90 * 86400.0
#: public traces' median job runs minutes to hours (Philly ~1 h, Helios less); a
#: median above this is most likely milliseconds written as seconds
_LONG_MEDIAN_S = 2 * 86400.0
#: Larger than any single cluster a hall would serve: a typo, not a job.
MAX_GPUS = 100_000


@dataclass(frozen=True, slots=True)
class Job:
    """One job of a trace. ``id`` is its position in submit order (0-based)."""

    id: int
    submit_s: float
    duration_s: float
    gpus: int
    kind: JobKind
    checkpoint_s: float  # inf for inference (nothing to checkpoint: it restarts stateless)
    line: int = 0  # where it came from (0: generated)

    @property
    def gpu_s(self) -> float:
        """The work the job asks for, in GPU-seconds."""
        return self.duration_s * self.gpus


def _ordered(jobs: Iterable[Job]) -> tuple[Job, ...]:
    ranked = sorted(jobs, key=lambda j: j.submit_s)  # stable: ties keep file order
    return tuple(
        Job(i, j.submit_s, j.duration_s, j.gpus, j.kind, j.checkpoint_s, j.line)
        for i, j in enumerate(ranked)
    )


def load_jobs_csv(path: str | PathLike[str]) -> tuple[Job, ...]:
    """Read a job trace (see the module docstring); the jobs in submit order."""
    table = read_table(path, ("submit_time_s", "duration_s", "gpus", "kind"), ("checkpoint_s",))
    jobs: list[Job] = []
    # public traces (Philly, Helios) hold jobs that failed at once, with a run
    # time of 0: one refused a 500,000-row trace
    zero: list[int] = []
    cpu: list[int] = []
    for row in table:
        submit = row.number("submit_time_s", lo=0.0, unit=" s")
        duration = row.number("duration_s", lo=0.0, hi=MAX_DURATION_S, unit=" s")
        if duration <= 0:  # asks for no GPU time: skipped, counted, said once
            zero.append(row.line)
            continue
        gpus_f = row.number("gpus", lo=0, hi=MAX_GPUS)
        if gpus_f == 0:  # a CPU-only job (Helios, Philly hold them): no GPU time either
            cpu.append(row.line)
            continue
        if gpus_f != int(gpus_f):
            raise row.error("gpus", f"{row.text('gpus')!r} is not a whole number of GPUs")
        kind: JobKind
        match row.text("kind").lower():
            case "training":
                kind = "training"
            case "inference":
                kind = "inference"
            case _:
                raise row.error("kind", f"{row.text('kind')!r} is not one of {', '.join(KINDS)}")
        ckpt = math.inf
        if kind == "training":
            given = row.number("checkpoint_s", lo=0.0, unit=" s", required=False)
            if given == 0:
                raise row.error("checkpoint_s", "must be above 0 s (or empty for the default)")
            ckpt = DEFAULT_CHECKPOINT_S if math.isnan(given) else given
        jobs.append(Job(0, submit, duration, int(gpus_f), kind, ckpt, row.line))
    if zero:
        log.warning(
            "%s: %d job(s) with duration_s 0 skipped (they ask no GPU time; first at line %d)",
            table.label,
            len(zero),
            zero[0],
        )
    if cpu:
        log.warning(
            "%s: %d CPU-only job(s) (gpus 0) skipped (first at line %d)",
            table.label,
            len(cpu),
            cpu[0],
        )
    if jobs:
        median = float(np.median([j.duration_s for j in jobs]))
        if median > _LONG_MEDIAN_S:  # said, not refused: a trace of long trainings exists
            log.warning(
                "%s: the median job runs %.1f days: durations in milliseconds?"
                " duration_s is in seconds",
                table.label,
                median / 86400.0,
            )
    if not jobs:
        why = "every job asks no GPU time" if zero or cpu else "no jobs after the header"
        raise DataFileError(table.label, table.header_line, None, why)
    return _ordered(jobs)
