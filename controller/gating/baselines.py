"""The planners a hall would run without thermogate, for the schedule benchmark.

* ``static``: a fixed split of the import limit. AI gets the power of the
  trace's mean GPU demand (its GPU loads budgeted for that many GPUs at full
  power, the cluster gated at that many GPUs), mining the rest of the room,
  always at full.
* ``price_threshold``: the same split, mining off above its breakeven price
  (the simplest economic rule an operator would add).

Both still sit behind protection, which caps whatever they ask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from thermogate.plc.site import Site

from ..core import LoadInfo, SiteNow
from .placement import Placement

NON_IT_FRAC = 0.10  # room kept for cooling and house load (a fixed split cannot measure it)


class StaticPlanner:
    """See the module docstring. ``ai_gpus``: the GPUs AI is given, for good."""

    def __init__(self, site: Site, ai_gpus: int, *, price_threshold: bool = False) -> None:
        self.site = site
        self.placement = Placement(site)
        self.gpu_capacity = max(0, min(int(ai_gpus), self.placement.gpus))
        self.price_threshold = price_threshold
        share = self.gpu_capacity / self.placement.gpus if self.placement.gpus else 0.0
        # every GPU load gets its share of the AI GPUs at full power
        self.ai_kw = {ld.name: ld.kw_at(share) for ld in self.placement.loads}
        self._share = dict.fromkeys(self.ai_kw, share)
        self.breakeven = site.mining_breakeven(nameplate=True)  # these mine at full power
        self._why: dict[str, str] = {}

    def why(self) -> Mapping[str, str]:
        return self._why

    def busy_shares(self) -> Mapping[str, float]:
        """Every GPU load budgeted for its share of the AI GPUs, busy at full power."""
        return self._share

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        why: dict[str, str] = {}
        for ld in loads:
            if ld.workload_class != "mining":
                out[ld.name] = self.ai_kw.get(ld.name, ld.rated_kw)
                why[ld.name] = "static AI share"
        # mining: the rest of the site's own import limit, split by rating
        room = (1.0 - NON_IT_FRAC) * self.site.import_limit_kw - sum(out.values())
        miners = [ld for ld in loads if ld.workload_class == "mining"]
        rated = sum(ld.rated_kw for ld in miners)
        price = now.price_per_mwh
        for ld in miners:
            share = max(0.0, room) * ld.rated_kw / rated if rated else 0.0
            off = (
                self.price_threshold
                and math.isfinite(price)
                and price > self.breakeven.get(ld.name, math.inf)
            )
            out[ld.name] = 0.0 if off else min(ld.rated_kw, share)
            why[ld.name] = "price above mining breakeven" if off else "static mining share"
        self._why = why
        return out
