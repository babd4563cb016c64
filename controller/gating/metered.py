"""The books' inputs as ``thermogate run`` has them: the site's meters over Modbus.

Per scan, from the validated point values: the hashrate of the ASIC tanks
(``tankNN.hashrate_ths``), their power (the miners' energy, for the metered
breakeven), the busy GPUs of each GPU tank and rack row from its metered
power (``placement.GpuLoad.busy_at``, the rule the planner budgets with)
and the site's import at the point of common coupling.

A bad meter counts nothing (no hash, no busy GPU) rather than a guess,
except the import: energy is paid whether or not the meter answers, so
the last good import stands in (the loads' own meters before the first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thermogate.plc.pointmap import PointMap
from thermogate.plc.site import Site

from .placement import GpuLoad, gpu_loads


@dataclass(frozen=True)
class MeteredSample:
    hash_th_s: float
    inference_gpus: float
    training_gpus: float
    import_kw: float
    mining_kw: float


def _good(x: float) -> float:
    return x if math.isfinite(x) else 0.0


class SiteMeters:
    """See the module docstring."""

    def __init__(self, site: Site, pmap: PointMap) -> None:
        ix = pmap.index
        self.import_at = ix.site.power_kw
        asic = [ix.tank[t.name] for t in site.tanks if t.workload == "asic"]
        self.hash_at = [tp.hashrate_ths for tp in asic if tp.hashrate_ths is not None]
        self.mining_at = [tp.power_kw for tp in asic]
        self.gpus: list[tuple[GpuLoad, int]] = [
            (ld, ix.tank[ld.name].power_kw if ld.name in ix.tank else ix.row[ld.name].power_kw)
            for ld in gpu_loads(site)
        ]
        self._import_kw = math.nan

    def read(self, values: np.ndarray) -> MeteredSample:
        """One scan's sample from its validated values (NaN where a point is bad)."""
        hash_th = sum(_good(float(values[i])) for i in self.hash_at)
        mining_kw = sum(_good(float(values[i])) for i in self.mining_at)
        busy = {"inference": 0.0, "training": 0.0}
        gpu_kw = 0.0
        for ld, i in self.gpus:
            kw = float(values[i])
            if math.isfinite(kw):
                busy[ld.wclass] = busy.get(ld.wclass, 0.0) + ld.busy_at(kw)
                gpu_kw += kw
        site_kw = float(values[self.import_at])
        if math.isfinite(site_kw):
            self._import_kw = site_kw
        import_kw = self._import_kw if math.isfinite(self._import_kw) else mining_kw + gpu_kw
        return MeteredSample(hash_th, busy["inference"], busy["training"], import_kw, mining_kw)
