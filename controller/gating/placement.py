"""Where the cluster's GPUs are: jobs' GPUs onto GPU tanks and rack rows, and back.

The cluster schedules GPUs as one pool; the hall has them in GPU tanks and
rack rows, each with its own power budget and cooling. This module maps
between the two, the same way in both directions:

* **placement**: inference GPUs go to the loads whose class is inference
  first and overflow to the others; training the other way round. Within a
  group, GPUs are spread in proportion to each load's GPUs, so every tank
  and row runs at the same utilisation (the even spread a topology-aware
  scheduler aims for to keep hot spots down);
* **capacity**: the GPUs the controller lets run, from each load's power
  budget: a load at ``idle + f x (rated - idle)`` kW can run ``f`` of its
  GPUs at full power.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from thermogate.plc.site import Site


@dataclass(frozen=True)
class GpuLoad:
    """A GPU tank or rack row as the scheduler and the books see it.

    Its power is ``idle + f x (rated - idle)`` kW with ``f`` of its GPUs busy
    at full power: one rule, read both ways (``kw_at`` and ``busy_at``)."""

    name: str
    wclass: str  # inference | training
    gpus: int
    idle_kw: float
    rated_kw: float

    def kw_at(self, frac: float) -> float:
        """The power with ``frac`` of its GPUs busy at full power."""
        return self.idle_kw + frac * (self.rated_kw - self.idle_kw)

    def busy_at(self, kw: float) -> float:
        """GPUs' worth of work at ``kw`` (0 at idle, all of them at the rating)."""
        if self.rated_kw <= self.idle_kw or self.gpus <= 0:
            return 0.0
        return self.gpus * min(max((kw - self.idle_kw) / (self.rated_kw - self.idle_kw), 0.0), 1.0)


def gpu_loads(site: Site) -> tuple[GpuLoad, ...]:
    out = [
        GpuLoad(t.name, t.workload_class, t.gpus, t.units * t.unit_idle_kw, t.rated_kw)
        for t in site.tanks
        if t.workload == "gpu"
    ]
    out += [
        GpuLoad(r.name, r.workload_class, r.gpus, r.nodes * r.node_idle_kw, r.rated_kw)
        for r in site.rack_rows
    ]
    return tuple(out)


class Placement:
    """See the module docstring."""

    def __init__(self, site: Site) -> None:
        self.loads = gpu_loads(site)
        self.gpus = sum(ld.gpus for ld in self.loads)

    def spread(self, busy: Mapping[str, float]) -> dict[str, float]:
        """Busy GPUs per kind (``inference``, ``training``) -> GPUs busy per load."""
        used = dict.fromkeys((ld.name for ld in self.loads), 0.0)
        for kind in ("inference", "training"):
            left = max(0.0, float(busy.get(kind, 0.0)))
            own = [ld for ld in self.loads if ld.wclass == kind]
            other = [ld for ld in self.loads if ld.wclass != kind]
            for group in (own, other):
                free = {ld.name: ld.gpus - used[ld.name] for ld in group}
                room = sum(free.values())
                if left <= 0 or room <= 0:
                    continue
                take = min(left, room)
                for ld in group:
                    used[ld.name] += take * free[ld.name] / room
                left -= take
        return used

    def utilisation(self, busy: Mapping[str, float]) -> dict[str, float]:
        """Busy GPUs per kind -> the busy fraction of each load's GPUs."""
        used = self.spread(busy)
        return {ld.name: used[ld.name] / ld.gpus if ld.gpus else 0.0 for ld in self.loads}

    def capacity(self, budget_kw: Mapping[str, float]) -> int:
        """The GPUs that can run at full power within these budgets (absent: rated)."""
        total = 0.0
        for ld in self.loads:
            b = budget_kw.get(ld.name, ld.rated_kw)
            if math.isfinite(b):
                total += ld.busy_at(b)
        return math.floor(total + 1e-9)
