"""The operator's report of a simulated run, and the terminal progress bar.

``write_report`` turns what ``thermogate simulate`` recorded into a directory
an operator can open in a browser::

    temperatures.png  tank fluid vs alarm/trip limits per workload class;
                      CDU and loop supplies vs their limits, ambient for context
    power.png         site import vs its import limit (a step line),
                      curtailment windows and time over the limit shaded;
                      feeders as % of their continuous rating
    workloads.png     stacked mining / training / inference kW, price if known
    pue.png           PUE and cooling kW
    alarms.png        one row per source that raised an alarm, shed, trip,
                      fail-safe or failed write; markers by kind, active spans
    forecast.png      loop supplies (and the hottest forecast tank and CDU) vs
                      the forecast made 15 min earlier and its upper bound;
                      heat headroom per loop and CDU; MAE and upper-bound
                      coverage computed from these series
    summary.json      the summary (non-finite numbers become null)
    events.csv        the event log
    report.html       one plain page: summary table with units, the six
                      images, the event log (all text escaped by the template)

The parts: ``series`` (checking the series, the shared ``Context``),
``files`` (summary.json, events.csv), ``draw`` (what all figures share),
``plots`` (temperatures, power, workloads, PUE), ``alarms`` (the event
timeline), ``forecast`` (the forecast figure and its skill), ``html`` and
``report.html.j2`` (the page), ``progress`` (the tqdm bar).

Data contract (what the simulator hands in)
-------------------------------------------
``series``: equal-length 1-D arrays; ``t_h`` (hours since start) is required,
everything else is optional and simply left out of the plots when absent:
``ambient_c``, ``site_kw``, ``import_limit_kw``, ``it_kw``, ``cooling_kw``,
``pue``, ``class.{mining,training,inference}_kw``, ``price_per_mwh``,
``tank.<name>.fluid_c``, ``cdu.<name>.supply_c``, ``loop.<name>.supply_c``,
``feeder.<name>.kw``. NaN is a gap (a value not measured).
Forecasting runs add, per zone (``<kind>`` ``tank``/``cdu``/``loop``):
``forecast.<kind>.<zone>.mean15_c`` and ``.upper15_c`` (the forecast made 15 min
before the sample, for the sample's time; NaN before there is one),
``headroom.<kind>.<zone>.kw`` and ``forecast.trusted`` (1 trusted, 0 conservative
fallback, NaN no model).

``meta``: ``site``, ``scenario``, ``hours`` and the limits per equipment
(``tanks``: ``alarm_c``, ``trip_c``, ``workload_class``; ``cdus``: ``alarm_c``,
``trip_c``; ``loops``: ``alarm_c``; ``feeders``: ``continuous_kw``). An
optional ``units`` mapping (summary key -> unit text) overrides the units the
report infers from the key names (``_c`` °C, ``_mwh`` MWh, ``_c_min`` °C·min...).
An optional ``forecast`` mapping (``source``, ``learned_at_h``, ``horizon_min``;
the horizon names the series, ``mean<horizon_min>_c``) describes the model.

``events``: mappings with ``t_h``, ``kind``, ``source``, ``message``,
``severity``; extra keys are kept as extra CSV columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .alarms import plot_alarms
from .draw import RC, save
from .files import write_events, write_summary
from .forecast import plot_forecast
from .html import IMAGES, render_html, unit_for
from .plots import plot_power, plot_pue, plot_temperatures, plot_workloads
from .progress import ProgressBar
from .series import Context, check_series

__all__ = ["IMAGES", "ProgressBar", "unit_for", "write_report"]

#: One drawing function per image, in the order of ``IMAGES``.
_PLOTS = (plot_temperatures, plot_power, plot_workloads, plot_pue, plot_alarms, plot_forecast)


def write_report(
    series: Mapping[str, np.ndarray],
    meta: Mapping,
    events: Sequence[Mapping],
    summary: Mapping,
    out_dir: str | Path,
) -> list[Path]:
    """Write the report files into ``out_dir`` (created if missing); return their paths.

    The data files (``summary.json``, ``events.csv``) are written first, so a
    plotting problem never loses what a long run measured. Raises
    ``ValueError`` when ``t_h`` is missing or the series differ in length.
    """
    data = check_series(series)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = list(events)

    data_files = [
        write_summary(out / "summary.json", summary),
        write_events(out / "events.csv", events),
    ]

    import matplotlib

    ctx = Context(data, meta, events)
    images: list[Path] = []
    with matplotlib.rc_context(RC):
        for name, draw in zip(IMAGES, _PLOTS, strict=True):
            images.append(out / name)
            save(draw(ctx), images[-1])
    html_path = out / "report.html"
    html_path.write_text(render_html(meta, events, summary, ctx), encoding="utf-8")
    return [*images, *data_files, html_path]
