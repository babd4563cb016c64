"""The GPU side of the hall as a scheduler sees it: jobs, GPUs, admission, preemption.

A pure, deterministic state machine (no clock, no I/O): the caller says what
time it is, how many GPUs may be busy (the planner's power and thermal budget
expressed in GPUs) and how fast the running jobs progress (GPUs under a power
cap run slower). The cluster admits, preempts and completes jobs and keeps the
books a facility and its tenants care about.

Order of operations of one :meth:`Cluster.step` (``t`` never goes back):

1. **progress** every running job from the last step to ``t`` at the rate
   in force since then; jobs that finished on the way complete at their
   exact finishing time (not at ``t``), training jobs pass checkpoints;
2. **arrive**: jobs submitted up to ``t`` join the queue; a job larger than
   the whole cluster is rejected and counted, never silently dropped;
3. **preempt** while the running jobs hold more GPUs than ``capacity``:
   training before inference (the precedence of DESIGN.md), and among
   training the job that loses the least work (GPU-seconds since its last
   checkpoint), then the youngest; a preempted training job falls back to
   its last checkpoint (the rest is lost, and counted) and rejoins the queue
   ahead of jobs submitted after it;
4. **admit** within ``capacity``: inference first (it is latency-bound), then
   training in submit order; with ``backfill`` a later job may start ahead of
   a blocked head job when it cannot delay the head's reservation (EASY
   backfilling, as Slurm does it), otherwise strict FIFO.

Work is conserved and checked (:meth:`Cluster.books`): every GPU-second
submitted is done, still to do (queued or running) or rejected; work lost to
preemption is counted apart (it had to be done twice).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from thermogate.hil.scenario.jobs import Job

Admission = Literal["fifo", "backfill"]
_EPS = 1e-9


@dataclass(slots=True)
class _Run:
    """A job's progress: ``done_s`` seconds of work at full rate (of ``duration_s``)."""

    job: Job
    done_s: float = 0.0
    started_s: float = math.nan  # first start (queueing delay ends here)
    running_since: float = math.nan
    preemptions: int = 0

    @property
    def left_s(self) -> float:
        return max(0.0, self.job.duration_s - self.done_s)

    @property
    def checkpoint_done_s(self) -> float:
        """Work kept when preempted now: the last checkpoint (all of it for inference)."""
        ckpt = self.job.checkpoint_s
        if not math.isfinite(ckpt):
            return self.done_s  # stateless service: resumes where it was
        return math.floor(self.done_s / ckpt + _EPS) * ckpt


@dataclass(frozen=True, slots=True)
class Finished:
    job: Job
    submit_s: float
    start_s: float
    end_s: float
    preemptions: int

    @property
    def jct_s(self) -> float:
        """Job completion time: submit to end."""
        return self.end_s - self.submit_s

    @property
    def queue_s(self) -> float:
        """Queueing delay: submit to first start."""
        return self.start_s - self.submit_s


@dataclass(frozen=True, slots=True)
class Books:
    """Work in GPU-seconds; ``submitted == done + pending + rejected`` always."""

    submitted_gpu_s: float
    done_gpu_s: float
    pending_gpu_s: float  # queued or running, still to do
    rejected_gpu_s: float
    lost_gpu_s: float  # undone by preemption (done again later)
    rejected_jobs: int
    preemptions: int

    @property
    def balance_gpu_s(self) -> float:
        """Zero when the books close (up to rounding)."""
        return self.submitted_gpu_s - self.done_gpu_s - self.pending_gpu_s - self.rejected_gpu_s


@dataclass(frozen=True, slots=True)
class StepResult:
    started: tuple[int, ...]  # job ids
    preempted: tuple[int, ...]
    finished: tuple[Finished, ...]
    rejected: tuple[int, ...]


@dataclass
class Cluster:
    """See the module docstring. ``gpus``: the GPUs installed."""

    gpus: int
    admission: Admission = "backfill"
    t: float = 0.0
    # not yet submitted, latest first (the next to arrive is popped off the end)
    _future: list[Job] = field(default_factory=list)
    _queue: list[_Run] = field(default_factory=list)  # waiting, in queue order
    #: GPUs the waiting jobs of each kind ask for (kept as the queue changes: a
    #: trace of 50,000 jobs once summed its queue twice a scan)
    _queued_gpus: dict[str, int] = field(default_factory=lambda: {"training": 0, "inference": 0})
    _running: list[_Run] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    _rate: float = 1.0
    _submitted_gpu_s: float = 0.0
    _done_gpu_s: float = 0.0
    _rejected_gpu_s: float = 0.0
    _lost_gpu_s: float = 0.0
    _rejected: list[int] = field(default_factory=list)
    _preemptions: int = 0

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"gpus {self.gpus} must be >= 0")
        if self.admission not in ("fifo", "backfill"):
            raise ValueError(f"admission {self.admission!r} is not 'fifo' or 'backfill'")

    # -- inputs ------------------------------------------------------------------

    def submit(self, jobs: Iterable[Job]) -> None:
        """Hand in jobs (any order, any time); each arrives at its submit time."""
        for j in jobs:
            self._submitted_gpu_s += j.gpu_s
            self._future.append(j)
        self._future.sort(key=lambda j: (j.submit_s, j.id), reverse=True)

    # -- views -------------------------------------------------------------------

    @property
    def busy_gpus(self) -> int:
        return sum(r.job.gpus for r in self._running)

    def busy_by_kind(self) -> dict[str, int]:
        out = {"training": 0, "inference": 0}
        for r in self._running:
            out[r.job.kind] += r.job.gpus
        return out

    def wanted_by_kind(self) -> dict[str, int]:
        """GPUs each kind would keep busy now: running plus queued (capped at the cluster)."""
        out = self.busy_by_kind()
        for kind, gpus in self._queued_gpus.items():
            out[kind] += gpus
        return {k: min(v, self.gpus) for k, v in out.items()}

    def later(self) -> list[Job]:
        """Jobs handed in whose submit time has not come yet."""
        return self._future[::-1]

    def arrive_before(self, t: float) -> None:
        """Jobs submitted before ``t`` join the queue (or are rejected) without a
        step: a run that ends at ``t`` owes them their time so far."""
        while self._future and self._future[-1].submit_s < t:
            self._arrive(self._future[-1].submit_s)
        self.t = max(self.t, t)

    def queued(self) -> list[Job]:
        return [r.job for r in self._queue]

    def running(self) -> list[Job]:
        return [r.job for r in self._running]

    def unfinished(self) -> list[tuple[Job, float, float]]:
        """Jobs submitted and not finished at ``t``, with their completion and queueing
        times so far (``t - submit``; the queueing up to the first start): what a
        run that ends now owes them, a lower bound on their final times."""
        out = []
        for r in (*self._queue, *self._running):
            started = r.started_s if math.isfinite(r.started_s) else self.t
            out.append((r.job, self.t - r.job.submit_s, started - r.job.submit_s))
        return out

    def next_event_s(self) -> float:
        """The next time something happens by itself: a job arrives or one ends."""
        nxt = self._future[-1].submit_s if self._future else math.inf
        if self._rate > 0:
            for r in self._running:
                nxt = min(nxt, self.t + r.left_s / self._rate)
        return nxt

    def books(self) -> Books:
        pending = sum(r.left_s * r.job.gpus for r in (*self._queue, *self._running))
        pending += sum(j.gpu_s for j in self._future)
        return Books(
            self._submitted_gpu_s,
            self._done_gpu_s,
            pending,
            self._rejected_gpu_s,
            self._lost_gpu_s,
            len(self._rejected),
            self._preemptions,
        )

    # -- the step ----------------------------------------------------------------

    def step(self, t: float, capacity: int, rate: float = 1.0) -> StepResult:
        """Advance to ``t``; then at most ``capacity`` GPUs busy, progressing at ``rate``.

        ``rate`` (0..1) is the speed of the running jobs from now to the next
        step (1: full power; GPUs under a power cap are slower).
        """
        if t < self.t - _EPS:
            raise ValueError(f"time goes back: {t} < {self.t}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} outside 0..1")
        capacity = max(0, min(int(capacity), self.gpus))
        finished = self._progress(t)
        self._rate = rate  # from here on (backfill estimates use it)
        rejected = self._arrive(t)
        preempted = self._preempt(t, capacity)
        started = self._admit(t, capacity)
        return StepResult(tuple(started), tuple(preempted), tuple(finished), tuple(rejected))

    def _progress(self, t: float) -> list[Finished]:
        done: list[Finished] = []
        dt = max(0.0, t - self.t)
        keep: list[_Run] = []
        for r in self._running:
            work = min(r.left_s, dt * self._rate)
            self._done_gpu_s += work * r.job.gpus
            r.done_s += work
            if r.left_s <= _EPS:
                end = self.t + (work / self._rate if self._rate > 0 else dt)
                done.append(Finished(r.job, r.job.submit_s, r.started_s, end, r.preemptions))
            else:
                keep.append(r)
        self._running = keep
        self.t = max(self.t, t)
        done.sort(key=lambda f: (f.end_s, f.job.id))
        self.finished.extend(done)
        return done

    def _arrive(self, t: float) -> list[int]:
        rejected: list[int] = []
        while self._future and self._future[-1].submit_s <= t:
            j = self._future.pop()
            if j.gpus > self.gpus:
                self._rejected.append(j.id)
                self._rejected_gpu_s += j.gpu_s
                rejected.append(j.id)
            else:
                self._queue.append(_Run(j))
                self._queued_gpus[j.kind] += j.gpus
        return rejected

    def _preempt(self, t: float, capacity: int) -> list[int]:
        out: list[int] = []
        busy = self.busy_gpus
        if busy <= capacity:
            return out

        def cost(r: _Run) -> tuple[int, float, float]:
            lost = (r.done_s - r.checkpoint_done_s) * r.job.gpus
            return (0 if r.job.kind == "training" else 1, lost, -r.running_since)

        for r in sorted(self._running, key=cost):
            if busy <= capacity:
                break
            kept = r.checkpoint_done_s
            self._lost_gpu_s += (r.done_s - kept) * r.job.gpus
            self._done_gpu_s -= (r.done_s - kept) * r.job.gpus
            r.done_s = kept
            r.preemptions += 1
            self._preemptions += 1
            self._running.remove(r)
            busy -= r.job.gpus
            out.append(r.job.id)
            self._requeue(r)
        return out

    def _requeue(self, r: _Run) -> None:
        """Back in the queue ahead of every job submitted after it."""
        at = next(
            (i for i, q in enumerate(self._queue) if q.job.submit_s > r.job.submit_s),
            len(self._queue),
        )
        self._queue.insert(at, r)
        self._queued_gpus[r.job.kind] += r.job.gpus

    def _admit(self, t: float, capacity: int) -> list[int]:
        started: list[int] = []
        free = capacity - self.busy_gpus
        if free <= 0 or not self._queue:
            return started
        # inference first, then training; each in queue order
        waiting = [r for r in self._queue if r.job.kind == "inference"]
        waiting += [r for r in self._queue if r.job.kind != "inference"]
        blocked: _Run | None = None
        shadow = math.inf  # when the blocked head job can start at the latest
        extra = 0  # GPUs free at the shadow time beyond what the head needs
        for r in waiting:
            if free <= 0:
                break  # every job needs a GPU: nothing further can start
            if blocked is None:
                if r.job.gpus <= free:
                    self._start(r, t)
                    started.append(r.job.id)
                    free -= r.job.gpus
                    continue
                if self.admission == "fifo":
                    break
                blocked = r
                shadow, extra = self._reservation(r, free, capacity)
                continue
            # EASY backfill: start only what cannot delay the blocked head job
            if r.job.gpus > free:
                continue
            ends_by = t + r.left_s / max(self._rate, _EPS)
            if ends_by <= shadow + _EPS or r.job.gpus <= extra:
                self._start(r, t)
                started.append(r.job.id)
                free -= r.job.gpus
                if ends_by > shadow + _EPS:
                    extra -= r.job.gpus
        if started:  # out of the queue in one pass (not a list.remove per start)
            running = {id(r) for r in self._running}
            self._queue = [r for r in self._queue if id(r) not in running]
        return started

    def _reservation(self, head: _Run, free: int, capacity: int) -> tuple[float, int]:
        """When ``head`` can start as running jobs end (their estimate: time left), and
        the GPUs spare at that moment."""
        if head.job.gpus > capacity:
            return math.inf, 0  # cannot start under this capacity at all
        rate = max(self._rate, _EPS)
        ends = sorted((self.t + r.left_s / rate, r.job.gpus) for r in self._running)
        avail = free
        for when, g in ends:
            avail += g
            if avail >= head.job.gpus:
                return when, avail - head.job.gpus
        return math.inf, 0

    def _start(self, r: _Run, t: float) -> None:
        """``r`` runs from ``t`` (the caller takes it out of the queue)."""
        self._queued_gpus[r.job.kind] -= r.job.gpus
        if math.isnan(r.started_s):
            r.started_s = t
        r.running_since = t
        self._running.append(r)


def run_queue(
    cluster: Cluster, capacity: Sequence[tuple[float, int]], until: float
) -> list[StepResult]:
    """Drive ``cluster`` through a capacity schedule ``[(from_t, gpus), ...]`` to ``until``,
    stepping at every arrival, completion and capacity change (an event-driven run).
    Before the schedule's first entry the cluster holds what runs and admits nothing."""
    results: list[StepResult] = []
    sched = sorted(capacity)
    k = 0
    cap = cluster.busy_gpus
    t = cluster.t
    while True:
        while k < len(sched) and sched[k][0] <= t + _EPS:
            cap = sched[k][1]
            k += 1
        results.append(cluster.step(t, cap))
        if t >= until:
            break
        # arrivals are in the future and finished jobs are gone: nxt > t
        t = min(cluster.next_event_s(), sched[k][0] if k < len(sched) else math.inf, until)
    return results
