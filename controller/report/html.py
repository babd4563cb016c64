"""``report.html``: what the page shows, in plain rows for the jinja2 template.

Python decides the content (which rows, how a number and its unit read,
which rows need attention); ``report.html.j2`` lays it out. The
template escapes every value (autoescape is on), so an event message such as
``<script>`` is shown as text, never run, and nothing here escapes by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .forecast import caption as forecast_caption
from .series import Context, as_float

if TYPE_CHECKING:
    import jinja2

__all__ = ["IMAGES", "render_html", "unit_for"]

#: The images, in the order the HTML page shows them.
IMAGES = ("temperatures.png", "power.png", "workloads.png", "pue.png", "alarms.png", "forecast.png")
MAX_HTML_EVENTS = 5000

_TITLES = {
    "temperatures.png": "Temperatures",
    "power.png": "Power and the import limit",
    "workloads.png": "Workloads",
    "pue.png": "PUE and cooling",
    "alarms.png": "Alarms, sheds and trips",
    "forecast.png": "Forecast and heat headroom",
}
_CAPTIONS = {
    "temperatures.png": "Tank fluid temperatures against their alarm (dashed) and trip (dotted) "
    "limits per workload class; CDU and loop supply temperatures with "
    "their limits, and the ambient temperature.",
    "power.png": "Site import against its import limit (the site's, or the grid's when "
    "lower; step line); blue bands: "
    "curtailment, red bands: time over the limit. Feeders as a percentage of "
    "their continuous rating.",
    "workloads.png": "IT power per workload class, stacked; energy price on the right axis "
    "when known.",
    "pue.png": "Power usage effectiveness and the cooling power.",
    "alarms.png": "One row per source that raised an alarm, shed, trip, fail-safe or "
    "failed write; bars show how long alarms and sheds stayed active.",
}

_COUNT_KEYS = {
    "trips",
    "sheds",
    "alarms",
    "clears",
    "restores",
    "failsafes",
    "events",
    "write_failures",
    "failsafe_entries",
    "scans",
}
#: A positive value of a summary key containing one of these is highlighted.
_ATTENTION = ("trip", "violation", "failsafe", "write_fail", "over_limit")
_UNIT_SUFFIXES = (
    ("_c_min", "°C·min"),
    ("_kw_min", "kW·min"),
    ("_per_mwh", "per MWh"),
    ("_mwh", "MWh"),
    ("_kwh", "kWh"),
    ("_mw", "MW"),
    ("_kw", "kW"),
    ("_c", "°C"),
    ("_k", "K"),
    ("_pct", "%"),
    ("_percent", "%"),
    ("_seconds", "s"),
    ("_s", "s"),
    ("_min", "min"),
    ("_h", "h"),
    ("_m3h", "m³/h"),
    ("_kpa", "kPa"),
    ("_l", "L"),
)


def unit_for(key: str, units: Mapping | None = None) -> str:
    """The unit of a summary value, from an explicit ``units`` map or the key's suffix."""
    if units and key in units:
        return str(units[key])
    k = key.lower()
    if k in _COUNT_KEYS or k.endswith("_count") or k.startswith("n_"):
        return "count"
    if k == "pue" or k.endswith("_pue"):
        return "ratio"
    if k in ("hours",) or k.endswith("_hours"):
        return "h"
    if k in ("speedup",) or k.endswith("_speedup"):
        return "× real time"
    for suffix, unit in _UNIT_SUFFIXES:
        if k.endswith(suffix):
            return unit
    return ""


def fmt(value: Any) -> str:
    """A value as the page shows it: thousands separated, a dash for nothing."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value == int(value) and abs(value) < 1e12:
            return f"{int(value):,}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:,.4f}".rstrip("0").rstrip(".")
        return f"{value:.3g}"
    return str(value)


def elapsed(t_h: float | None) -> str:
    """Hours since the start as ``[Nd ]HH:MM``."""
    if t_h is None:
        return ""
    minutes = round(t_h * 60.0)
    sign = "-" if minutes < 0 else ""
    d, rem = divmod(abs(minutes), 24 * 60)
    h, m = divmod(rem, 60)
    return f"{sign}{d}d {h:02d}:{m:02d}" if d else f"{sign}{h:02d}:{m:02d}"


def flat(summary: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary entries as dotted rows (``forecast.tank.mae_15_c``)."""
    out: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out += flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


class SummaryRow(NamedTuple):
    key: str
    value: str
    unit: str
    numeric: bool
    attention: bool


class FigureRow(NamedTuple):
    src: str
    title: str
    caption: str


class EventRow(NamedTuple):
    t: str
    elapsed: str
    kind: str
    css: str  # the kind as a class name: letters, digits, '-' and '_'
    source: str
    severity: str
    message: str


def _summary_rows(summary: Mapping, units: Mapping | None) -> list[SummaryRow]:
    rows = []
    for key, value in flat(summary):
        k = str(key)
        v = value.item() if isinstance(value, np.generic) else value
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        attention = (
            numeric and math.isfinite(v) and v > 0 and any(a in k.lower() for a in _ATTENTION)
        )
        unit = unit_for(k, units) if v is not None else ""
        rows.append(SummaryRow(k, fmt(v), unit, numeric, attention))
    return rows


def _event_row(ev: Mapping) -> EventRow:
    t = as_float(ev.get("t_h"))
    kind = str(ev.get("kind") or "")
    return EventRow(
        t=f"{t:.3f}" if t is not None else "",
        elapsed=elapsed(t),
        kind=kind,
        css="".join(ch if ch.isalnum() or ch == "-" else "_" for ch in kind),
        source=str(ev.get("source") or ""),
        severity=fmt(ev.get("severity")),
        message=str(ev.get("message") or ""),
    )


def _kind_counts(events: Sequence[Mapping]) -> list[tuple[str, int]]:
    """Events per kind, most frequent first (``?`` for events without a kind)."""
    kinds: dict[str, int] = {}
    for ev in events:
        k = str(ev.get("kind") or "")
        kinds[k] = kinds.get(k, 0) + 1
    return [(k or "?", n) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])]


@cache
class SettledRow(NamedTuple):
    instruction: str
    start: str  # the interval's start (h)
    limit: str
    metered: str
    baseline: str
    required: str
    delivered: str
    verdict: str
    css: str
    note: str


class InstructionRow(NamedTuple):
    name: str
    start: str
    end: str
    limit: str


def _kw_text(x: Any) -> str:
    v = as_float(x)
    return "—" if v is None else f"{v:,.0f}"


def _settled_rows(meta: Mapping) -> list[SettledRow]:
    """One row per settled interval of a curtailment (the grid operator's view)."""
    rows = []
    for r in meta.get("compliance") or []:
        verdict = r.get("compliant")
        text, css = {True: ("compliant", "ok"), False: ("NOT compliant", "trip")}.get(
            verdict, ("not metered", "alarm")
        )
        rows.append(
            SettledRow(
                str(r.get("instruction", "")),
                fmt(round(float(r.get("start_h", math.nan)), 2)),
                _kw_text(r.get("limit_kw")),
                _kw_text(r.get("metered_kw")),
                _kw_text(r.get("baseline_kw")),
                _kw_text(r.get("required_kw")),
                _kw_text(r.get("delivered_kw")),
                text,
                css,
                str(r.get("note") or ""),
            )
        )
    return rows


def _instruction_rows(meta: Mapping) -> list[InstructionRow]:
    return [
        InstructionRow(
            str(i.get("name", "")),
            fmt(round(float(i.get("start_h", math.nan)), 2)),
            fmt(round(float(i.get("end_h", math.nan)), 2)),
            _kw_text(i.get("limit_kw")),
        )
        for i in meta.get("instructions") or []
    ]


def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelled name in the template fails, loudly
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["count"] = lambda n: f"{n:,}"
    return env.get_template("report.html.j2")


def render_html(meta: Mapping, events: Sequence[Mapping], summary: Mapping, ctx: Context) -> str:
    """The page: summary table with units, the images with captions, the event log."""
    units = meta.get("units") if isinstance(meta.get("units"), Mapping) else None
    planned = as_float(meta.get("hours"))
    reached = ctx.xlim[1] if ctx.n else 0.0
    ends_early = planned is not None and ctx.n > 0 and reached < planned * 0.99
    figures = [
        FigureRow(
            name,
            _TITLES[name],
            forecast_caption(ctx) if name == "forecast.png" else _CAPTIONS[name],
        )
        for name in IMAGES
    ]
    return _template().render(
        site=ctx.site,
        scenario=ctx.scenario,
        planned_h=fmt(planned) if planned is not None else None,
        ends_at_h=fmt(round(reached, 2)) if ends_early else None,
        samples=len(ctx.t),
        summary=_summary_rows(summary, units),
        instructions=_instruction_rows(meta),
        settled=_settled_rows(meta),
        interval_min=fmt((as_float(meta.get("settlement_interval_s")) or 900.0) / 60.0),
        figures=figures,
        n_events=len(events),
        kinds=_kind_counts(events),
        events=[_event_row(ev) for ev in events[:MAX_HTML_EVENTS]],
        max_events=MAX_HTML_EVENTS,
    )
