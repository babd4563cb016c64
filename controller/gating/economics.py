"""What the hall earned and paid: mining, AI and energy, interval by interval.

Pure arithmetic over what was metered (no clock, no I/O):

* mining revenue = hashrate (TH/s) x hashprice ($/TH/day) x time;
* AI revenue = GPU-hours delivered x the class's price per GPU-hour, a GPU
  counted in proportion to its power above idle (a GPU capped to half its
  dynamic power delivers about half a GPU-hour per hour;
  ``placement.GpuLoad.busy_at``);
* energy cost = import x energy price x time (a negative price pays the site).

The mining breakeven energy price is shown beside it: above it, a miner of
that efficiency loses money on every joule.
"""

from __future__ import annotations

from dataclasses import dataclass

from thermogate.plc.equipment import Economics


@dataclass
class EconomicsLedger:
    """Running totals in $ (see the module docstring)."""

    econ: Economics
    mining_revenue: float = 0.0
    inference_revenue: float = 0.0
    training_revenue: float = 0.0
    energy_cost: float = 0.0
    energy_mwh: float = 0.0

    def add(
        self,
        dt_s: float,
        hash_th_s: float,
        inference_gpus: float,
        training_gpus: float,
        import_kw: float,
        price_per_mwh: float,
    ) -> None:
        """One interval of ``dt_s`` at these (average) rates."""
        e = self.econ
        self.mining_revenue += hash_th_s * e.hashprice_usd_per_th_day * dt_s / 86400.0
        self.inference_revenue += inference_gpus * e.inference_usd_per_gpu_h * dt_s / 3600.0
        self.training_revenue += training_gpus * e.training_usd_per_gpu_h * dt_s / 3600.0
        mwh = import_kw * dt_s / 3.6e6
        self.energy_mwh += mwh
        self.energy_cost += mwh * price_per_mwh

    @property
    def ai_revenue(self) -> float:
        return self.inference_revenue + self.training_revenue

    @property
    def net_margin(self) -> float:
        return self.mining_revenue + self.ai_revenue - self.energy_cost

    def summary(self) -> dict[str, float]:
        return {
            "mining_revenue": round(self.mining_revenue, 2),
            "ai_revenue": round(self.ai_revenue, 2),
            "energy_cost": round(self.energy_cost, 2),
            "net_margin": round(self.net_margin, 2),
            "avg_energy_price_per_mwh": round(self.energy_cost / self.energy_mwh, 2)
            if self.energy_mwh > 0
            else 0.0,
        }
