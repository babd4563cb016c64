"""Scenario files (TOML) and the built-in scenarios, resolved to a ``Scenario``.

A scenario file is read through ``thermogate.plc.config`` like a site file:
every key typed and range-checked, every mistake one ``ConfigError`` line
naming the file, the dotted key (``faults[2].params.p``) and the reason. Each
table is read whole and checked for unknown keys before anything is required
of it or resolved against anything else: a misspelt key is usually why a
key is "missing" or a time "after the end", so the typo is what gets reported.

Times: ``at_s`` counts seconds from the scenario start; ``at`` is an offset
('18:00', 'PT2H', a TOML time) or an absolute date-time, which needs a start:
the file's ``start``, else the first sample of a CSV series with ISO times.
When the scenario start and a CSV series' start are both absolute, the series
is aligned to the scenario by absolute time.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from importlib import resources
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar, cast

from thermogate.plc.config import Section, load_toml, loads_toml
from thermogate.plc.errors import ConfigError, DataFileError

from .csvfiles import CsvSource, load_prices_csv, load_weather_csv
from .events import (
    GRID_EVENT_KINDS,
    GRID_EVENT_PARAMS,
    NAME_RE,
    FaultSpec,
    GridEvent,
    GridEventKind,
)
from .fields import FieldError
from .resolved import Scenario
from .series import DAY_S, TimeSeries, Weather
from .synthetic import SyntheticPrices, SyntheticWeather

__all__ = ["list_builtin_scenarios", "load_scenario", "parse_scenario"]

log = logging.getLogger(__name__)

_SCENARIO_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_BUILTIN_PACKAGE = "thermogate.hil.data"

Moment = float | datetime  # seconds from the start, or an absolute time
_Synthetic = TypeVar("_Synthetic", SyntheticWeather, SyntheticPrices)

#: The longest scenario: a year and the historian's default 400 days of
#: aggregates fit; its weather and prices are generated whole when it loads.
MAX_DURATION_S = 400 * DAY_S


def parse_scenario(
    text: str,
    file: str = "<string>",
    *,
    base_dir: str | PathLike[str] | None = None,
    weather_csv: str | PathLike[str] | None = None,
    prices_csv: str | PathLike[str] | None = None,
    wrap: bool | None = None,
) -> Scenario:
    """Parse scenario TOML ``text`` (``file`` names it in errors).

    Relative CSV paths in the TOML resolve against ``base_dir``.
    ``weather_csv``/``prices_csv`` replace the file's weather/price source;
    ``wrap`` applies to those (None: the file's own ``wrap``, else false).
    """
    base = Path(base_dir) if base_dir is not None else None
    return _scenario(loads_toml(text, file), base, weather_csv, prices_csv, wrap)


def list_builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with thermogate, sorted."""
    names = []
    for entry in resources.files(_BUILTIN_PACKAGE).iterdir():
        n = entry.name
        if n.startswith("scenario_") and n.endswith(".toml"):
            names.append(n.removeprefix("scenario_").removesuffix(".toml"))
    return sorted(names)


def load_scenario(
    path_or_name: str | PathLike[str],
    weather_csv: str | PathLike[str] | None = None,
    prices_csv: str | PathLike[str] | None = None,
    *,
    wrap: bool | None = None,
    duration_s: float | None = None,
    start_at_prices: bool = False,
) -> Scenario:
    """Load a scenario from a TOML file or by built-in name (``"heatwave"``).

    A ``PathLike``, or a string ending in ``.toml`` or containing a path
    separator, is a file; any other string is a built-in name.
    ``weather_csv``/``prices_csv`` replace the scenario's sources (e.g. run the
    heatwave's events against measured weather); ``wrap`` repeats them.
    ``duration_s`` replaces the file's duration (the CSV series must cover it);
    ``start_at_prices`` starts it at the price series' first timestamp.
    Raises ConfigError for scenario mistakes and DataFileError for CSV ones.
    """
    s = str(path_or_name)
    if isinstance(path_or_name, PathLike) or s.endswith(".toml") or "/" in s or "\\" in s:
        path = Path(path_or_name)
        return _scenario(
            load_toml(path), path.parent, weather_csv, prices_csv, wrap, duration_s, start_at_prices
        )
    entry = _builtin_file(s)
    if not entry.is_file():
        raise ConfigError(
            "<scenario>",
            "",
            f"no built-in scenario {s!r}; built-ins: {', '.join(list_builtin_scenarios())} "
            "(or give the path of a .toml file)",
        )
    root = loads_toml(entry.read_text(encoding="utf-8"), f"<built-in {s}>")
    scenario = _scenario(
        root, Path(str(entry)).parent, weather_csv, prices_csv, wrap, duration_s, start_at_prices
    )
    if scenario.name != s:
        raise root.error("name", f"{scenario.name!r} differs from the built-in name {s!r}")
    return scenario


def load_for_run(
    path_or_name: str | PathLike[str],
    weather_csv: str | PathLike[str] | None,
    prices_csv: str | PathLike[str] | None,
    *,
    hours: float | None = None,
    strict: bool = False,
) -> Scenario:
    """The scenario of a run, with measured series given on the command line.

    By default (``simulate``, ``serve``) a measured CSV repeats over a run longer
    than it. ``strict`` (the schedule benchmark) repeats nothing: the run starts
    at the first timestamp of the price series (of the weather without one) and
    lasts ``hours``; a series that does not cover that whole period is an error
    naming the file and how much it covers.
    """
    measured = weather_csv is not None or prices_csv is not None
    if not strict:
        sc = load_scenario(path_or_name, weather_csv, prices_csv, wrap=True if measured else None)
        if hours is not None:
            _say_repeats(sc, hours * 3600.0)
        return sc
    if hours is None:
        raise ValueError("a strict run needs its hours")
    return load_scenario(
        path_or_name,
        weather_csv,
        prices_csv,
        wrap=False if measured else None,
        duration_s=hours * 3600.0,
        start_at_prices=prices_csv is not None,
    )


def _builtin_file(name: str) -> Traversable:
    return resources.files(_BUILTIN_PACKAGE).joinpath(f"scenario_{name}.toml")


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------
def _scenario(
    root: Section,
    base: Path | None,
    weather_csv: str | PathLike[str] | None,
    prices_csv: str | PathLike[str] | None,
    wrap: bool | None,
    run_s: float | None = None,
    start_at_prices: bool = False,
) -> Scenario:
    file = root.file
    default_name = Path(file).stem.removeprefix("scenario_") if file[:1] != "<" else "scenario"
    name = root.get_str("name", default_name)
    description = root.get_str("description", "")
    written = root.get_duration("duration", None, above=0.0)
    duration_s = root.get_float("duration_s", None, above=0.0)
    start_given = root.get_datetime("start", None)
    weather_sec = root.get_section("weather", {})
    prices_sec = root.get_section("prices", {})
    event_secs = root.get_sections("grid_events", [])
    fault_secs = root.get_sections("faults", [])
    initial = root.get_float_map("initial", {})
    root.check_unused()

    if not _SCENARIO_NAME_RE.match(name):
        raise root.error("name", f"{name!r}: use lowercase letters, digits, '-' and '_'")
    if written is not None and duration_s is not None:
        raise root.error("duration", "give duration_s or duration, not both")
    duration = written if written is not None else duration_s if duration_s is not None else DAY_S
    longest = f"the longest scenario is {MAX_DURATION_S / DAY_S:g} days"
    if duration > MAX_DURATION_S:  # its series are generated up front: a unit mistake costs GBs
        key = "duration" if written is not None else "duration_s"
        raise root.error(key, f"{duration / DAY_S:g} days is too long; {longest}")
    if run_s is not None:
        if run_s > MAX_DURATION_S:
            raise ConfigError(file, "", f"a run of {run_s / DAY_S:g} days is too long; {longest}")
        duration = run_s
    for key in initial:
        if not NAME_RE.match(key):
            raise root.error(f"initial.{key}", "invalid name (letters, digits, _ . -)")

    w_override = weather_csv is not None
    p_override = prices_csv is not None
    # The file's sources are validated even when replaced: a typo stays an error.
    wsrc = _source(weather_sec, base, SyntheticWeather, w_override)
    psrc = _source(prices_sec, base, SyntheticPrices, p_override)
    if weather_csv is not None:
        inherit = wsrc.wrap if isinstance(wsrc, CsvSource) else False
        wsrc = CsvSource(Path(weather_csv), inherit if wrap is None else wrap)
    if prices_csv is not None:
        inherit = psrc.wrap if isinstance(psrc, CsvSource) else False
        psrc = CsvSource(Path(prices_csv), inherit if wrap is None else wrap)

    weather: Weather | None = None
    prices: TimeSeries | None = None
    if isinstance(wsrc, CsvSource):
        weather = load_weather_csv(wsrc.path)
        _check_period(weather_sec, wsrc, weather.ambient_c.duration)
        weather = weather.with_wrap(wsrc.wrap, wsrc.period_s)
    if isinstance(psrc, CsvSource):
        prices = load_prices_csv(psrc.path)
        _check_period(prices_sec, psrc, prices.duration)
        prices = prices.with_wrap(psrc.wrap, psrc.period_s)
    # t = 0 is the explicit start, else where measured weather and prices first
    # both run (a year of weather with a July week of prices runs that week), else
    # the first weather sample, else prices'.
    start = start_given
    if start_at_prices and prices is not None and prices.start is not None:
        start = start_given = prices.start  # the market's clock is the run's
    if start is None and weather is not None and prices is not None:
        start = _overlap_start(weather.ambient_c, prices)
    for series in (weather.ambient_c if weather else None, prices):
        if start is None and series is not None and series.start is not None:
            start = series.start
    hour0 = _start_hour(start_given if start_given is not None else start)
    if start is not None:
        start = _norm(start)
    if weather is None:
        assert isinstance(wsrc, SyntheticWeather)
        weather = wsrc.generate(duration, start=start, start_hour=hour0)
    if prices is None:
        assert isinstance(psrc, SyntheticPrices)
        prices = psrc.generate(duration, start=start, start_hour=hour0)

    w_off = _offset_between(root, "weather", start, weather.start, wsrc, w_override)
    p_off = _offset_between(root, "prices", start, prices.start, psrc, p_override)
    for series, off, src, override, key in (
        (weather.ambient_c, w_off, wsrc, w_override, "weather"),
        (prices, p_off, psrc, p_override, "prices"),
    ):
        if run_s is not None:  # a study of a fixed length: nothing repeats
            remedy = "give a file that covers the run, or shorten the run"
        else:
            remedy = f"{'pass' if override else 'set'} wrap to repeat it, or shorten the duration"
        problem = _coverage_problem(series, off, duration, remedy)
        if problem is None:
            if series.wrap and isinstance(src, CsvSource) and not 0.0 <= off < series.covers_s:
                # repeated, as asked, but from another period than the run's
                # (January prices on a July run went without a word)
                log.warning(
                    "%s: its times (from %s) do not overlap the run's (from %s): it is "
                    "repeated over the run as a typical period, not matched by date",
                    src.path,
                    series.start.isoformat() if series.start else "?",
                    start.isoformat() if start else "?",
                )
            continue
        assert isinstance(src, CsvSource)
        if override:
            raise DataFileError(str(src.path), None, None, problem)
        raise root.error(f"{key}.path", f"{src.path.name} {problem}")

    clock = _Clock(start, duration)
    return Scenario(
        name=name,
        description=description,
        duration_s=duration,
        weather=weather,
        prices=prices,
        grid_events=tuple(_grid_event(sec, clock) for sec in event_secs),
        faults=tuple(_fault(sec, clock) for sec in fault_secs),
        initial=initial,
        start=start,
        weather_offset_s=w_off,
        price_offset_s=p_off,
        weather_source=wsrc,
        price_source=psrc,
        source=file,
    )


def _source(
    sec: Section,
    base_dir: Path | None,
    cls: type[_Synthetic],
    overridden: bool,
) -> _Synthetic | CsvSource:
    """``[weather]``/``[prices]``: a synthetic generator's settings, or a CSV file."""
    if sec.get_str("source", "synthetic", choices=("synthetic", "csv")) == "synthetic":
        # named after cls's fields: ``seed`` an int, the others floats
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = sec.get_int(f.name, None) if f.name == "seed" else sec.get_float(f.name, None)
            if value is not None:
                kwargs[f.name] = value
        sec.check_unused()
        try:
            return cls(**kwargs)
        except FieldError as exc:
            raise sec.error(exc.field, exc.reason) from None
    path = sec.get_str("path", None)
    wrap = sec.get_bool("wrap", False)
    period_s = sec.get_float("period_s", None, above=0.0)
    sec.check_unused()
    if path is None:
        raise sec.error("path", "required when source = 'csv'")
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p  # relative to the scenario file, not the working directory
    if not overridden and not p.is_file():
        raise sec.error("path", f"file not found: {p}")
    return CsvSource(p, wrap, period_s)


def _check_period(sec: Section, src: CsvSource, span_s: float) -> None:
    """A series repeats after it ends: its ``period_s`` cannot be shorter than it."""
    if src.period_s is not None and src.period_s < span_s:
        raise sec.error(
            "period_s",
            f"{src.period_s:g} s is shorter than the {span_s:g} s {src.path.name} spans "
            "(a series repeats after its last sample)",
        )


# --------------------------------------------------------------------------
# grid events and faults
# --------------------------------------------------------------------------
class _Clock:
    """Resolves an event's ``at``/``at_s`` to seconds within the scenario."""

    def __init__(self, start: datetime | None, duration_s: float) -> None:
        self.start = start
        self.duration_s = duration_s

    def seconds(self, sec: Section, name: str, at: Moment) -> float:
        start = self.start
        if isinstance(at, datetime):
            if start is None:
                raise sec.error(
                    name,
                    "an absolute time needs a scenario start: set start, use a CSV with "
                    "ISO times, or give an offset such as '18:00' or at_s",
                )
            if _aware(at) != _aware(start):
                raise sec.error(
                    name, "has a time zone and the scenario start does not, or vice versa"
                )
            secs = (_norm(at) - start).total_seconds()
            if secs < 0:
                raise sec.error(
                    name, f"is {-secs:g} s before the scenario start {start.isoformat()}"
                )
        else:
            secs = at
        if secs >= self.duration_s:
            raise sec.error(
                name,
                f"at {secs:g} s it is not before the end of the scenario ({self.duration_s:g} s); "
                "lengthen the duration",
            )
        return secs


def _when(sec: Section) -> tuple[Moment | None, str]:
    """``at_s`` or ``at`` and the key it came from; None when neither is given."""
    at_s = sec.get_float("at_s", None, minval=0.0)
    at = _moment(sec, "at")
    if at_s is not None and at is not None:
        raise sec.error("at", "give at_s or at, not both")
    return (at_s, "at_s") if at is None else (at, "at")


def _moment(sec: Section, name: str) -> Moment | None:
    """An offset from the start ('18:00', 'PT2H', a TOML time), an absolute date-time,
    or None when the key is absent."""
    with contextlib.suppress(ConfigError):  # not an offset: a date-time, or neither
        return sec.get_duration(name, None)
    with contextlib.suppress(ConfigError):
        return sec.get_datetime(name)
    raise sec.error(
        name,
        "expected an offset from the start ('18:00', 'PT2H') or an ISO date-time "
        "(2024-07-15T18:00:00Z); seconds go in at_s",
    )


def _grid_event(sec: Section, clock: _Clock) -> GridEvent:
    kind = sec.get_str("kind", None, choices=GRID_EVENT_KINDS)
    at_s, at_key, duration_s, params = _timing(sec, clock)
    if kind is None:
        raise sec.error("kind", f"required: one of {', '.join(GRID_EVENT_KINDS)}")
    if duration_s is None:
        raise sec.error("duration_s", "required: how long the event lasts")
    allowed = GRID_EVENT_PARAMS[kind]
    for p in params:
        if p not in allowed:
            raise sec.error(
                f"params.{p}",
                f"not a parameter of a {kind} event; parameters: {', '.join(allowed)}",
            )
    event_kind = cast(GridEventKind, kind)  # get_str checked it against GRID_EVENT_KINDS
    try:
        return GridEvent(at_s=at_s, kind=event_kind, duration_s=duration_s, **params)
    except FieldError as exc:
        key = {"at_s": at_key, "kind": "kind", "duration_s": "duration_s"}
        raise sec.error(key.get(exc.field, f"params.{exc.field}"), exc.reason) from None


def _fault(sec: Section, clock: _Clock) -> FaultSpec:
    target = sec.get_str("target", None)
    kind = sec.get_str("kind", None)
    at_s, at_key, duration_s, params = _timing(sec, clock)
    if target is None:
        raise sec.error("target", "required: what fails, as 'category:name'")
    if kind is None:
        raise sec.error("kind", "required: how it fails")
    try:
        # FaultSpec parses a "category:name" target itself (its __post_init__), and
        # says what is wrong with one as a "target" FieldError
        return FaultSpec(at_s, target, kind, duration_s, params)  # type: ignore[arg-type]
    except FieldError as exc:
        raise sec.error(at_key if exc.field == "at_s" else exc.field, exc.reason) from None


def _timing(sec: Section, clock: _Clock) -> tuple[float, str, float | None, dict[str, float]]:
    """What events and faults share: when (seconds, and the key it came from), how long
    (None: not given), the parameters. The table's last read: unknown keys are checked here."""
    at, at_key = _when(sec)
    duration_s = sec.get_float("duration_s", None, above=0.0)
    params = sec.get_float_map("params", {})
    sec.check_unused()
    if at is None:
        raise sec.error("at_s", "required: when it happens (at_s = seconds, or at)")
    return clock.seconds(sec, at_key, at), at_key, duration_s, params


# --------------------------------------------------------------------------
# time alignment
# --------------------------------------------------------------------------
def _say_repeats(sc: Scenario, run_s: float) -> None:
    """A measured series shorter than the run is repeated: said, as the benches
    that refuse it say it (a 24 h file under a 30 h run went without a word)."""
    for series, off, src in (
        (sc.weather.ambient_c, sc.weather_offset_s, sc.weather_source),
        (sc.prices, sc.price_offset_s, sc.price_source),
    ):
        if isinstance(src, CsvSource) and 0.0 <= off < series.covers_s < off + run_s:
            log.warning(
                "%s: covers %.4g h from the run's start, the run lasts %.4g h: it is repeated"
                " over the rest",
                src.path,
                (series.covers_s - off) / 3600.0,
                run_s / 3600.0,
            )


def _overlap_start(a: TimeSeries, b: TimeSeries) -> datetime | None:
    """Where two dated series first both have data (None: undated, or apart)."""
    if a.start is None or b.start is None or _aware(a.start) != _aware(b.start):
        return None
    sa, sb = _norm(a.start), _norm(b.start)
    later = max(sa, sb)
    end_a = sa + timedelta(seconds=a.covers_s)
    end_b = sb + timedelta(seconds=b.covers_s)
    return later if later < min(end_a, end_b) else None


def _norm(dt: datetime) -> datetime:
    return dt.astimezone(UTC) if dt.utcoffset() is not None else dt


def _aware(dt: datetime) -> bool:
    return dt.utcoffset() is not None


def _start_hour(dt: datetime | None) -> float:
    # Wall-clock time of day as written, before any UTC conversion: that is
    # the local time the synthetic diurnal cycle is about.
    if dt is None:
        return 0.0
    return dt.hour + dt.minute / 60.0 + dt.second / 3600.0


def _offset_between(
    root: Section,
    key: str,
    scenario_start: datetime | None,
    series_start: datetime | None,
    src: CsvSource | SyntheticWeather | SyntheticPrices,
    override: bool,
) -> float:
    if scenario_start is None or series_start is None:
        return 0.0
    if _aware(scenario_start) != _aware(series_start):
        zone = "has no time zone" if not _aware(series_start) else "has a time zone"
        other = "has one" if not _aware(series_start) else "has none"
        problem = (
            f"cannot align by absolute time: this series' start ({series_start.isoformat()}) "
            f"{zone} and the run's start ({scenario_start.isoformat()}) {other}; write the "
            "times of every file in UTC ('Z') or with their offset (+02:00)"
        )
        if override and isinstance(src, CsvSource):
            raise DataFileError(str(src.path), None, None, problem)
        raise root.error(key, problem)
    return (_norm(scenario_start) - _norm(series_start)).total_seconds()


def _coverage_problem(
    series: TimeSeries, offset: float, duration: float, remedy: str
) -> str | None:
    if series.wrap:
        return None
    cover = series.covers_s
    if offset < -1e-6:
        first = f" ({series.start.isoformat()})" if series.start is not None else ""
        return (
            f"starts {-offset / 3600:,.1f} h after the scenario start{first}: its times lie"
            f" after the run's; {remedy}"
        )
    if offset >= cover:  # said as a negative coverage once (-8736 h)
        return (
            f"ends {(offset - cover) / 3600:,.1f} h before the scenario starts (its times "
            f"lie before the run's); {remedy}"
        )
    if offset + duration > cover + 1e-6:
        return (
            f"covers {(cover - offset) / 3600:g} h from the scenario start but the scenario "
            f"runs {duration / 3600:g} h; {remedy}"
        )
    return None
