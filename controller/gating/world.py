"""A GPU cluster in the loop of a simulation: jobs run on the plant's GPUs.

The cluster (``cluster.Cluster``) admits and runs a trace's jobs within the
GPUs the controller lets it use; where they run (``placement``) sets each GPU
tank's and rack row's utilisation in the simulated plant, so the plant's
meters and temperatures carry the jobs. The other way, the planner learns
what the jobs want (``demand``) as a busy fraction per GPU load.

In a real hall the cluster is the site's orchestrator (Slurm, Kubernetes),
told the GPU capacity through its API; here it is simulated beside the plant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from thermogate.hil.plant import Plant
from thermogate.hil.scenario.jobs import Job
from thermogate.plc.site import Site

from .cluster import Admission, Cluster
from .placement import Placement


@runtime_checkable
class GpuGate(Protocol):
    """A planner that gates the cluster: at most ``gpu_capacity`` GPUs busy."""

    gpu_capacity: int


SLO_QUEUE_S = 60.0  # an inference job that waits longer than this missed its objective


class ClusterInTheLoop:
    """See the module docstring."""

    def __init__(self, site: Site, jobs: Sequence[Job], admission: Admission = "backfill") -> None:
        self.placement = Placement(site)
        self.cluster = Cluster(self.placement.gpus, admission)
        self.cluster.submit(jobs)

    def demand(self, t: float) -> dict[str, float]:
        """Per GPU load, the busy fraction its share of the wanted GPUs would be."""
        used = self.placement.spread(self.cluster.wanted_by_kind())
        return {ld.name: used[ld.name] / ld.gpus for ld in self.placement.loads if ld.gpus}

    def step(self, t: float, capacity: int, plant: Plant) -> None:
        """Advance the cluster to ``t`` within ``capacity`` GPUs; the plant follows."""
        self.cluster.step(t, capacity)
        for name, u in self.placement.utilisation(self.cluster.busy_by_kind()).items():
            plant.set_gpu_utilisation(name, u)

    def summary(self, end_s: float | None = None) -> dict[str, float | int]:
        """What the jobs saw: completion and queueing times (of every job submitted,
        the unfinished ones with their times so far), preemptions, lost work.

        ``end_s``: when the run ended. Jobs submitted after the last step but before
        it count as pending (they arrived; no scan was left to start them); the
        trace's jobs after it are ``after_run_jobs``, in no other figure."""
        if end_s is not None:
            self.cluster.arrive_before(end_s)
        later = self.cluster.later()
        fin = self.cluster.finished
        left = self.cluster.unfinished()
        b = self.cluster.books()
        # A job still waiting or running at the end counts with its time so far: a
        # policy that leaves work stuck in its queue must not look faster for it.
        jct = np.array([f.jct_s for f in fin] + [jct for _, jct, _ in left])
        queue = np.array([f.queue_s for f in fin] + [q for _, _, q in left])
        return {
            "finished": len(fin),
            "pending": len(left),
            "rejected_jobs": b.rejected_jobs,
            "mean_jct_s": round(float(jct.mean()), 1) if jct.size else 0.0,
            "p95_jct_s": round(float(np.percentile(jct, 95)), 1) if jct.size else 0.0,
            "mean_queue_s": round(float(queue.mean()), 1) if queue.size else 0.0,
            "slo_violations": sum(
                1
                for f in fin
                if f.job.kind == "inference" and (f.queue_s > SLO_QUEUE_S or f.preemptions)
            )
            + sum(1 for j, _, q in left if j.kind == "inference" and q > SLO_QUEUE_S),
            "preemptions": b.preemptions,
            "lost_gpu_h": round(b.lost_gpu_s / 3600.0, 2),
            "done_gpu_h": round(b.done_gpu_s / 3600.0, 2),
            "submitted_gpu_h": round((b.submitted_gpu_s - sum(j.gpu_s for j in later)) / 3600.0, 2),
            "after_run_jobs": len(later),
        }
