"""``Scenario``: everything the plant is given, resolved to seconds from the start.

The loader builds one from a TOML file (or code builds one directly); the
plant and the runner only ask it what holds at time ``t``: weather, price,
import limit, grid frequency, active faults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from .csvfiles import CsvSource
from .events import FaultSpec, GridEvent
from .fields import require
from .series import DAY_S, TimeSeries, Weather, WeatherSample
from .synthetic import SyntheticPrices, SyntheticWeather

__all__ = ["PriceSource", "Scenario", "WeatherSource"]

WeatherSource = SyntheticWeather | CsvSource
PriceSource = SyntheticPrices | CsvSource


@dataclass(frozen=True, eq=False)
class Scenario:
    """A resolved scenario: series loaded, times in seconds from the start.

    ``weather_offset_s``/``price_offset_s`` map scenario time to series time
    (non-zero only when both have absolute starts that differ).
    ``initial`` maps dotted names (``tank01.fluid_temp_c``) to starting values;
    the plant checks the names against its site.
    """

    name: str
    weather: Weather
    prices: TimeSeries
    duration_s: float = DAY_S
    description: str = ""
    grid_events: tuple[GridEvent, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    initial: Mapping[str, float] = field(default_factory=dict)
    start: datetime | None = None
    weather_offset_s: float = 0.0
    price_offset_s: float = 0.0
    weather_source: WeatherSource | None = None
    price_source: PriceSource | None = None
    source: str = ""

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.duration_s) and self.duration_s > 0,
            "duration_s",
            "must be a positive number of seconds",
        )
        # Sorted so the plant can walk events in order with one cursor.
        object.__setattr__(
            self, "grid_events", tuple(sorted(self.grid_events, key=lambda e: e.at_s))
        )
        object.__setattr__(self, "faults", tuple(sorted(self.faults, key=lambda f: f.at_s)))
        object.__setattr__(self, "initial", MappingProxyType(dict(self.initial)))

    def weather_at(self, t_seconds: float) -> WeatherSample:
        return self.weather.at(t_seconds + self.weather_offset_s)

    def market_price_at(self, t_seconds: float) -> float:
        """The market series' price per MWh, ignoring price events."""
        return self.prices.at(t_seconds + self.price_offset_s)

    def price_at(self, t_seconds: float) -> float:
        """Price per MWh: an active price event (the latest started) else market."""
        for ev in reversed(self.grid_events):
            if ev.kind == "price" and ev.active(t_seconds):
                assert ev.price_per_mwh is not None
                return ev.price_per_mwh
        return self.market_price_at(t_seconds)

    def grid_events_at(self, t_seconds: float) -> tuple[GridEvent, ...]:
        return tuple(e for e in self.grid_events if e.active(t_seconds))

    def faults_at(self, t_seconds: float) -> tuple[FaultSpec, ...]:
        return tuple(f for f in self.faults if f.active(t_seconds))

    def import_limit_kw_at(self, t_seconds: float, site_import_limit_kw: float) -> float:
        """The site's import limit, lowered by any active curtail events."""
        limit = site_import_limit_kw
        for e in self.grid_events:
            if e.kind == "curtail" and e.active(t_seconds):
                limit = min(limit, e.import_limit_kw(site_import_limit_kw))
        return limit

    def frequency_hz_at(self, t_seconds: float, nominal_hz: float = 50.0) -> float:
        """Grid frequency: an active frequency event's value else nominal."""
        for e in reversed(self.grid_events):
            if e.kind == "frequency" and e.active(t_seconds):
                assert e.frequency_hz is not None
                return e.frequency_hz
        return nominal_hz
