"""Scenario inputs of the simulated plant: weather, prices, grid events, faults.

A scenario is everything the plant is *given* rather than computes: the
outdoor weather its dry coolers reject heat into, the market price the
controller trades power against, the signals a demand-response program sends,
and the equipment faults to inject. It is independent of the site: fault
targets are parsed to ``(category, name)`` here and checked against the site
by the plant, so a scenario file can be written before the site exists.

Time
    Simulation time ``t`` is seconds from the scenario start (``t = 0``).
    Series loaded from CSV keep seconds relative to their first sample plus the
    absolute ``start`` (``datetime`` or ``None`` when the file counts seconds).
    When both the scenario start and a series' start are absolute, the scenario
    aligns them by absolute time (``weather_offset_s`` / ``price_offset_s``).

Beyond the end of a series
    Without ``wrap`` a series holds its first value before the first sample and
    its last value after the last one (clamped). With ``wrap`` the series
    repeats with period ``period_s``, which defaults to the span of the samples
    plus the last sample interval: an hourly file 00:00 … 23:00 repeats every
    24 h, interpolating from the 23:00 value back to the 00:00 value. If a file
    already closes its cycle (00:00 … 24:00), pass ``period_s`` = its duration.

The parts: ``series`` (TimeSeries, Weather, plausible ranges), ``csvfiles``
(the CSV formats and readers), ``synthetic`` (generated weather and prices),
``events`` (grid events, fault specs), ``resolved`` (the ``Scenario``),
``loader`` (TOML files and built-ins, read through ``thermogate.plc.config``),
``fields`` (how a record reports the field it rejects).

Entry points: :func:`load_scenario`, :func:`parse_scenario`,
:func:`list_builtin_scenarios`, :func:`load_weather_csv`,
:func:`load_prices_csv`, :class:`SyntheticWeather`, :class:`SyntheticPrices`.
"""

from __future__ import annotations

from .csvfiles import CsvSource, load_prices_csv, load_weather_csv
from .events import (
    FAULT_CATEGORIES,
    FAULT_KINDS,
    FREQUENCY_RANGE_HZ,
    GRID_EVENT_KINDS,
    MODBUS_EXCEPTION_CODES,
    FaultCategory,
    FaultSpec,
    FaultTarget,
    GridEvent,
    GridEventKind,
)
from .loader import list_builtin_scenarios, load_for_run, load_scenario, parse_scenario
from .resolved import PriceSource, Scenario, WeatherSource
from .series import (
    AMBIENT_RANGE_C,
    DAY_S,
    GHI_NIGHT_OFFSET_WM2,
    GHI_RANGE_WM2,
    PRICE_ABS_MAX,
    RH_RANGE_PCT,
    Interpolation,
    TimeSeries,
    Weather,
    WeatherSample,
)
from .synthetic import SyntheticPrices, SyntheticWeather

__all__ = [
    "AMBIENT_RANGE_C",
    "DAY_S",
    "FAULT_CATEGORIES",
    "FAULT_KINDS",
    "FREQUENCY_RANGE_HZ",
    "GHI_NIGHT_OFFSET_WM2",
    "GHI_RANGE_WM2",
    "GRID_EVENT_KINDS",
    "MODBUS_EXCEPTION_CODES",
    "PRICE_ABS_MAX",
    "RH_RANGE_PCT",
    "CsvSource",
    "FaultCategory",
    "FaultSpec",
    "FaultTarget",
    "GridEvent",
    "GridEventKind",
    "Interpolation",
    "PriceSource",
    "Scenario",
    "SyntheticPrices",
    "SyntheticWeather",
    "TimeSeries",
    "Weather",
    "WeatherSample",
    "WeatherSource",
    "list_builtin_scenarios",
    "load_for_run",
    "load_prices_csv",
    "load_scenario",
    "load_weather_csv",
    "parse_scenario",
]
