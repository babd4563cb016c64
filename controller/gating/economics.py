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

:class:`EconomicsLedger` keeps running totals; :class:`EconomicsIntervals`
cuts the same samples into fixed intervals (rows for the historian) with one
ledger per interval and one for the whole run, so the rows add up to the
totals exactly: the arithmetic is the ledger's, written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from thermogate.plc.equipment import Economics, Site

#: length of one economics row (s): one per minute, aligned to the minute like
#: the historian's 1-minute aggregates
ECONOMICS_INTERVAL_S = 60.0


@dataclass
class EconomicsLedger:
    """Running totals in $ (see the module docstring), and the integrals behind them."""

    econ: Economics
    mining_revenue: float = 0.0
    inference_revenue: float = 0.0
    training_revenue: float = 0.0
    energy_cost: float = 0.0
    energy_mwh: float = 0.0
    #: energy the miners drew (for the metered breakeven); 0 when not metered
    mining_mwh: float = 0.0
    seconds: float = 0.0
    th: float = 0.0  # TH/s x s
    inference_gpu_s: float = 0.0
    training_gpu_s: float = 0.0
    price_s: float = 0.0  # $/MWh x s

    def add(
        self,
        dt_s: float,
        hash_th_s: float,
        inference_gpus: float,
        training_gpus: float,
        import_kw: float,
        price_per_mwh: float,
        mining_kw: float = 0.0,
    ) -> None:
        """One interval of ``dt_s`` at these (average) rates."""
        e = self.econ
        self.mining_revenue += hash_th_s * e.hashprice_usd_per_th_day * dt_s / 86400.0
        self.inference_revenue += inference_gpus * e.inference_usd_per_gpu_h * dt_s / 3600.0
        self.training_revenue += training_gpus * e.training_usd_per_gpu_h * dt_s / 3600.0
        mwh = import_kw * dt_s / 3.6e6
        self.energy_mwh += mwh
        self.energy_cost += mwh * price_per_mwh
        self.mining_mwh += mining_kw * dt_s / 3.6e6
        self.seconds += dt_s
        self.th += hash_th_s * dt_s
        self.inference_gpu_s += inference_gpus * dt_s
        self.training_gpu_s += training_gpus * dt_s
        self.price_s += price_per_mwh * dt_s

    @property
    def ai_revenue(self) -> float:
        return self.inference_revenue + self.training_revenue

    @property
    def net_margin(self) -> float:
        return self.mining_revenue + self.ai_revenue - self.energy_cost

    def mining_breakeven(self, rated: float) -> float:
        """The energy price at which the miners' metered revenue paid exactly for
        their metered energy; ``rated`` (the breakeven of their efficiency) when
        they drew nothing or their power was not metered."""
        if self.mining_mwh > 1e-12:
            return self.mining_revenue / self.mining_mwh
        return rated

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


@dataclass(frozen=True)
class EconomicsRow:
    """One interval of the books (a historian ``economics`` row).

    ``t`` is the interval's start (a multiple of its length), ``interval_s``
    the seconds of it that were metered (less than the length at the start and
    end of a run, or across a gap). Money in $, means over the metered seconds.
    """

    t: float
    interval_s: float
    mining_usd: float
    inference_usd: float
    training_usd: float
    energy_usd: float
    net_usd: float
    price_per_mwh: float  # time-weighted mean energy price
    import_kwh: float
    hash_th_s: float  # mean hashrate
    inference_gpus: float  # mean busy GPUs
    training_gpus: float
    mining_breakeven_per_mwh: float  # EconomicsLedger.mining_breakeven

    @classmethod
    def of(cls, t: float, led: EconomicsLedger, rated_breakeven: float) -> EconomicsRow:
        s = led.seconds
        return cls(
            t=t,
            interval_s=s,
            mining_usd=led.mining_revenue,
            inference_usd=led.inference_revenue,
            training_usd=led.training_revenue,
            energy_usd=led.energy_cost,
            net_usd=led.net_margin,
            price_per_mwh=led.price_s / s if s > 0 else math.nan,
            import_kwh=led.energy_mwh * 1000.0,
            hash_th_s=led.th / s if s > 0 else 0.0,
            inference_gpus=led.inference_gpu_s / s if s > 0 else 0.0,
            training_gpus=led.training_gpu_s / s if s > 0 else 0.0,
            mining_breakeven_per_mwh=led.mining_breakeven(rated_breakeven),
        )

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, f.name)) for f in fields(self))


#: the historian's ``economics`` columns, in :class:`EconomicsRow` order
ECONOMICS_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EconomicsRow))


class EconomicsIntervals:
    """Per-scan samples in, one :class:`EconomicsRow` per closed interval out.

    A sample at ``t`` covers ``(t - dt_s, t]``; one that spans an interval
    boundary is split at it (in proportion to time), so every second lands in
    exactly one interval. ``total`` is the ledger of everything added:
    the rows emitted plus :meth:`close` add up to it.
    """

    def __init__(
        self,
        econ: Economics,
        rated_breakeven_per_mwh: float,
        interval_s: float = ECONOMICS_INTERVAL_S,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.econ = econ
        self.rated_breakeven = rated_breakeven_per_mwh
        self.interval_s = float(interval_s)
        self.total = EconomicsLedger(econ)
        self._open = EconomicsLedger(econ)
        self._start = math.nan  # the open interval's start
        #: one hour at the last sample's rates: $/h now by part (None before a sample)
        self.rates: EconomicsLedger | None = None
        #: energy price of the last sample
        self.price_now = math.nan

    @classmethod
    def for_site(cls, site: Site) -> EconomicsIntervals:
        """The books of a site: its prices, its miners' breakeven (the lowest)."""
        return cls(site.economics, min(site.mining_breakeven().values(), default=math.nan))

    def add(
        self,
        t: float,
        dt_s: float,
        hash_th_s: float,
        inference_gpus: float,
        training_gpus: float,
        import_kw: float,
        price_per_mwh: float,
        mining_kw: float = 0.0,
    ) -> list[EconomicsRow]:
        """Account one sample; returns the rows of the intervals it closed (oldest first)."""
        rates = (hash_th_s, inference_gpus, training_gpus, import_kw, price_per_mwh, mining_kw)
        if not (dt_s > 0 and all(math.isfinite(x) for x in (t, *rates))):
            return []
        self.rates = EconomicsLedger(self.econ)
        self.rates.add(3600.0, *rates)
        self.price_now = price_per_mwh
        out: list[EconomicsRow] = []
        t0 = t - dt_s
        while t0 < t:
            start = math.floor(t0 / self.interval_s) * self.interval_s
            if start != self._start:
                if self._open.seconds > 0:
                    out.append(self._take())
                self._start = start
            end = min(t, start + self.interval_s)
            part = end - t0
            if part <= 0:  # float rounding at a boundary
                t0 = start + self.interval_s
                continue
            self._open.add(part, *rates)
            self.total.add(part, *rates)
            t0 = end
        if t >= self._start + self.interval_s and self._open.seconds > 0:
            out.append(self._take())  # the sample ended exactly on the boundary
            self._start = math.nan
        return out

    def close(self) -> EconomicsRow | None:
        """The open (partial) interval's row, e.g. at shutdown; None when it is empty."""
        if self._open.seconds <= 0:
            return None
        return self._take()

    def _take(self) -> EconomicsRow:
        row = EconomicsRow.of(self._start, self._open, self.rated_breakeven)
        self._open = EconomicsLedger(self.econ)
        return row
