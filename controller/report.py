"""The operator's report of a simulated run, and the terminal progress bar.

``write_report`` turns what ``thermogate simulate`` recorded into a directory
an operator can open in a browser::

    temperatures.png  tank fluid vs alarm/trip limits per workload class;
                      CDU and loop supplies vs their limits, ambient for context
    power.png         site import vs the grid's import limit (a step line),
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
                      images, the event log (all text escaped)

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

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly:
no pyplot, no global backend switch, no display needed, nothing left open.
Long runs are drawn from a min/max envelope (peaks are kept) so a week at one
sample per second renders as fast as a day at one per minute.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported lazily: the progress bar does not need it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["IMAGES", "ProgressBar", "write_report"]

#: The images, in the order the HTML page shows them.
IMAGES = ("temperatures.png", "power.png", "workloads.png", "pue.png", "alarms.png", "forecast.png")

DPI = 150
WIDTH_IN = 11.0
MAX_LINE_POINTS = 4000  # above this a trace is drawn as a min/max envelope
MAX_TIMELINE_ROWS = 40
MAX_HTML_EVENTS = 5000

CLASSES = ("mining", "training", "inference")
CLASS_COLORS = {"mining": "#d95f02", "training": "#7570b3", "inference": "#1b9e77"}
OTHER_COLOR = "#7f7f7f"
LIMIT_COLOR = "#444444"
CURTAIL_COLOR = "#9ecae1"
OVER_COLOR = "#d62728"
FALLBACK_COLOR = "#f4a261"

#: Event kinds that give a source its own row in the alarm timeline.
RAISING_KINDS = ("alarm", "shed", "trip", "failsafe", "write-failed")
#: marker, colour, filled, size, legend text; in legend order.
KIND_STYLE: dict[str, tuple[str, str, bool, float, str]] = {
    "trip": ("X", "#000000", True, 90.0, "trip"),
    "alarm": ("^", "#e69f00", True, 50.0, "alarm"),
    "clear": ("o", "#2ca02c", False, 40.0, "clear"),
    "shed": ("v", "#d62728", True, 50.0, "shed"),
    "restore": ("s", "#1f77b4", False, 36.0, "restore"),
    "failsafe": ("D", "#9467bd", True, 40.0, "fail-safe"),
    "write-failed": ("d", "#7f7f7f", True, 44.0, "write failed"),
    "info": (".", "#999999", True, 30.0, "info"),
}

_RC = {
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.1,
    "figure.titlesize": 12.0,
    "figure.titleweight": "bold",
}


# ==========================================================================
# write_report
# ==========================================================================
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
    data = _check_series(series)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = list(events)

    data_files = [
        _write_summary(out / "summary.json", summary),
        _write_events(out / "events.csv", events),
    ]

    import matplotlib

    ctx = _Context(data, meta, events)
    images: list[Path] = []
    with matplotlib.rc_context(_RC):
        for name, draw in zip(IMAGES, _PLOTS, strict=True):
            images.append(out / name)
            _save(draw(ctx), images[-1])
    html_path = out / "report.html"
    html_path.write_text(_render_html(meta, events, summary, ctx), encoding="utf-8")
    return [*images, *data_files, html_path]


def _check_series(series: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if "t_h" not in series:
        raise ValueError("report: series has no 't_h' (hours since start)")
    data: dict[str, np.ndarray] = {}
    for key, value in series.items():
        arr = np.asarray(value, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"report: series {key!r} is not one-dimensional (shape {arr.shape})")
        data[str(key)] = arr
    n = len(data["t_h"])
    bad = sorted(k for k, v in data.items() if len(v) != n)
    if bad:
        shown = ", ".join(f"{k} ({len(data[k])})" for k in bad[:5])
        raise ValueError(f"report: series lengths differ from t_h ({n}): {shown}")
    return data


# --------------------------------------------------------------------------
# data files
# --------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Plain JSON types; numpy scalars unwrapped, NaN and infinities as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _write_summary(path: Path, summary: Mapping) -> Path:
    path.write_text(
        json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


EVENT_COLUMNS = ("t_h", "kind", "source", "severity", "message")


def _write_events(path: Path, events: Sequence[Mapping]) -> Path:
    extra: list[str] = []
    for ev in events:
        for k in ev:
            if k not in EVENT_COLUMNS and k not in extra:
                extra.append(str(k))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*EVENT_COLUMNS, *extra])
        for ev in events:
            w.writerow([_csv_cell(ev.get(k)) for k in (*EVENT_COLUMNS, *extra)])
    return path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_jsonable(value))
    return str(value)


# --------------------------------------------------------------------------
# shared plotting helpers
# --------------------------------------------------------------------------
class _Context:
    """Everything the plots share: data, time axis, curtailment windows."""

    def __init__(self, data: dict[str, np.ndarray], meta: Mapping, events: list[Mapping]) -> None:
        self.data = data
        self.meta = meta
        self.events = events
        self.t = data["t_h"]
        self.n = len(self.t)
        finite = self.t[np.isfinite(self.t)]
        planned = _float(meta.get("hours"))
        if finite.size:
            t0, t1 = float(finite.min()), float(finite.max())
            t0 = min(t0, 0.0) if t0 >= -1e-9 else t0
        else:
            t0, t1 = 0.0, planned if planned and planned > 0 else 1.0
        if t1 <= t0:
            t1 = t0 + (planned if planned and planned > 0 else 1.0)
        self.xlim = (t0, t1)
        self.site = str(meta.get("site") or "site")
        self.scenario = str(meta.get("scenario") or "scenario")
        self.curtailment = self._curtailment()

    def get(self, key: str) -> np.ndarray | None:
        arr = self.data.get(key)
        if arr is None or not np.isfinite(arr).any():
            return None
        return arr

    def names(self, section: str, prefix: str, suffix: str) -> list[str]:
        """Equipment of one type: the meta's order first, then any only in the series."""
        names = [str(k) for k in (self.meta.get(section) or {})]
        for key in self.data:
            if key.startswith(prefix) and key.endswith(suffix):
                name = key[len(prefix) : len(key) - len(suffix)]
                if name and name not in names:
                    names.append(name)
        return [nm for nm in names if self.get(f"{prefix}{nm}{suffix}") is not None]

    def spec(self, section: str, name: str) -> Mapping:
        return (self.meta.get(section) or {}).get(name) or {}

    def _curtailment(self) -> list[tuple[float, float]]:
        limit = self.get("import_limit_kw")
        if limit is None:
            return []
        top = float(np.nanmax(limit))
        lowered = np.isfinite(limit) & (limit < top - max(1e-6, 1e-4 * abs(top)))
        return _spans(self.t, lowered, self.xlim)

    def title(self, what: str) -> str:
        return f"{self.site} · {self.scenario} — {what}"

    def time_axis(self, ax: Axes, label: bool = True) -> None:
        from matplotlib.ticker import AutoMinorLocator, MultipleLocator

        ax.set_xlim(*self.xlim)
        span = self.xlim[1] - self.xlim[0]
        for step in (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720, 1440):
            if span / step <= 12:
                ax.xaxis.set_major_locator(MultipleLocator(step))
                ax.xaxis.set_minor_locator(AutoMinorLocator())
                break
        if label:
            ax.set_xlabel("time since start (h)")

    def shade_curtailment(self, ax: Axes, label: bool) -> None:
        for i, (a, b) in enumerate(self.curtailment):
            ax.axvspan(
                a,
                b,
                color=CURTAIL_COLOR,
                alpha=0.25,
                lw=0,
                zorder=0,
                label="curtailment (import limit lowered)" if label and i == 0 else None,
            )


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _new_figure(
    height_in: float,
    nrows: int = 1,
    height_ratios: Sequence[float] | None = None,
) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        nrows,
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": height_ratios} if height_ratios else None,
    )
    return fig, [a for row in axes for a in row]


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    fig.clear()


def _legend_right(ax: Axes) -> None:
    """A legend outside the plot on the right, so it never covers data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _legend_figure(fig: Figure, axes: Iterable[Axes]) -> None:
    """One legend for the figure, right of everything (twin axes' labels included)."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        h, lb = ax.get_legend_handles_labels()
        handles += h
        labels += lb
    if handles:
        fig.legend(handles, labels, loc="outside right upper")


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.set_yticks([])  # an empty axis' 0..1 scale means nothing
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="#777777",
        fontsize=11,
    )


def _envelope(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ~MAX_LINE_POINTS points that keep every bucket's min and max."""
    n = len(t)
    if n <= MAX_LINE_POINTS:
        return t, y
    buckets = MAX_LINE_POINTS // 2
    starts = np.linspace(0, n, buckets, endpoint=False).astype(np.intp)
    lo = np.fmin.reduceat(y, starts)  # fmin/fmax skip NaN; an all-NaN bucket stays a gap
    hi = np.fmax.reduceat(y, starts)
    x = np.repeat(t[starts], 2)
    yy = np.empty(2 * buckets)
    yy[0::2], yy[1::2] = lo, hi
    return x, yy


def _band(
    t: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A band over ~MAX_LINE_POINTS buckets that still covers every sample's band."""
    n = len(t)
    if n <= MAX_LINE_POINTS:
        return t, lo, hi
    starts = np.linspace(0, n, MAX_LINE_POINTS, endpoint=False).astype(np.intp)
    return t[starts], np.fmin.reduceat(lo, starts), np.fmax.reduceat(hi, starts)


def _bucket_mean(t: np.ndarray, ys: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Means over ~MAX_LINE_POINTS buckets (for stacked areas, where an envelope would lie)."""
    n = len(t)
    if n <= MAX_LINE_POINTS:
        return t, ys
    starts = np.linspace(0, n, MAX_LINE_POINTS, endpoint=False).astype(np.intp)
    counts = np.diff(np.append(starts, n))
    return t[starts], [np.add.reduceat(y, starts) / counts for y in ys]


def _change_points(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant trace reduced to where it changes (exact for a step plot)."""
    if len(y) < 3:
        return t, y
    same = np.isclose(y[1:], y[:-1], equal_nan=True)
    keep = np.ones(len(y), dtype=bool)
    keep[1:] = ~same
    keep[-1] = True
    return t[keep], y[keep]


def _spans(t: np.ndarray, mask: np.ndarray, xlim: tuple[float, float]) -> list[tuple[float, float]]:
    """Time spans where ``mask`` holds (a sample holds until the next one); close ones merged."""
    if not len(t) or not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    dt = float(np.nanmedian(np.diff(t))) if len(t) > 1 else 0.0
    spans: list[tuple[float, float]] = []
    gap = (xlim[1] - xlim[0]) / 400.0
    for s, e in zip(starts, ends, strict=True):
        a = float(t[s])
        b = float(t[e]) if e < len(t) else float(t[-1]) + (dt if math.isfinite(dt) else 0.0)
        if spans and a - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def _limit_lines(
    ax: Axes, limits: dict[tuple[str, float], list[str]], colors: dict[str, str], what: str
) -> None:
    """Horizontal limit lines; one per distinct (kind, value), named by who has it."""
    styles = {"alarm": (0, (5, 3)), "trip": (0, (1, 1.5))}
    for (kind, value), owners in sorted(limits.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        distinct = sorted(set(owners))
        color = colors.get(distinct[0], LIMIT_COLOR) if len(distinct) == 1 else LIMIT_COLOR
        who = ", ".join(distinct) if len(distinct) <= 3 else f"{len(distinct)} {what}"
        ax.axhline(
            value,
            color=color,
            ls=styles.get(kind, "--"),
            lw=1.6 if kind == "trip" else 1.2,
            zorder=1,
            label=f"{kind} {value:g} °C ({who})",
        )


def _pad_ylim(ax: Axes, values: Iterable[float], pad_frac: float = 0.06) -> None:
    """Make sure limit lines are visible, with a little room."""
    lo, hi = ax.get_ylim()
    for v in values:
        lo, hi = min(lo, v), max(hi, v)
    pad = (hi - lo) * pad_frac or 1.0
    ax.set_ylim(lo - pad, hi + pad)


# --------------------------------------------------------------------------
# temperatures.png
# --------------------------------------------------------------------------
def _plot_temperatures(ctx: _Context) -> Figure:
    fig, (ax1, ax2) = _new_figure(8.0, 2, height_ratios=(3, 2))
    fig.suptitle(ctx.title("temperatures"))
    t = ctx.t

    # ---- immersion tanks, coloured by workload class
    tanks = ctx.names("tanks", "tank.", ".fluid_c")
    limits: dict[tuple[str, float], list[str]] = {}
    by_class: dict[str, int] = {}
    hottest: tuple[float, float, str] | None = None
    for name in tanks:
        spec = ctx.spec("tanks", name)
        cls = str(spec.get("workload_class") or "other")
        y = ctx.data[f"tank.{name}.fluid_c"]
        first = cls not in by_class
        by_class[cls] = by_class.get(cls, 0) + 1
        x, yy = _envelope(t, y)
        ax1.plot(
            x,
            yy,
            color=CLASS_COLORS.get(cls, OTHER_COLOR),
            lw=0.9,
            alpha=0.85,
            label=f"_{cls}" if not first else f"{cls} tank",
            zorder=3,
        )
        i = int(np.nanargmax(y))
        if hottest is None or y[i] > hottest[0]:
            hottest = (float(y[i]), float(t[i]), name)
        for kind in ("alarm", "trip"):
            v = _float(spec.get(f"{kind}_c"))
            if v is not None:
                limits.setdefault((kind, v), []).append(cls)
    # class labels with counts
    for line in ax1.get_lines():
        cls = line.get_label().removesuffix(" tank")
        if cls in by_class:
            n = by_class[cls]
            line.set_label(f"{cls} tank{'s' if n != 1 else ''} ({n})")
    if tanks:
        _limit_lines(ax1, limits, CLASS_COLORS, "classes")
        _pad_ylim(ax1, [v for _, v in limits])
        assert hottest is not None
        ax1.plot(
            [hottest[1]],
            [hottest[0]],
            marker="o",
            ms=6,
            mfc="none",
            mec="#000000",
            ls="none",
            zorder=4,
            label=f"peak {hottest[2]} {hottest[0]:.1f} °C at {hottest[1]:.1f} h",
        )
    else:
        _no_data(ax1, "no immersion tanks")
    ax1.set_title("Immersion tank fluid")
    ax1.set_ylabel("fluid temperature (°C)")
    ctx.time_axis(ax1, label=False)
    _legend_right(ax1)

    # ---- CDU supplies, loop supplies, ambient
    palette = _palette()
    colors: dict[str, str] = {}
    limits = {}
    drawn = False
    for section, prefix, kinds in (
        ("cdus", "cdu.", ("alarm", "trip")),
        ("loops", "loop.", ("alarm",)),
    ):
        for name in ctx.names(section, prefix, ".supply_c"):
            spec = ctx.spec(section, name)
            color = colors[name] = next(palette)
            x, yy = _envelope(t, ctx.data[f"{prefix}{name}.supply_c"])
            label = f"{'CDU' if section == 'cdus' else 'loop'} {name} supply"
            ax2.plot(x, yy, color=color, label=label, zorder=3)
            drawn = True
            for kind in kinds:
                v = _float(spec.get(f"{kind}_c"))
                if v is not None:
                    limits.setdefault((kind, v), []).append(name)
    _limit_lines(ax2, limits, colors, "units")
    amb = ctx.get("ambient_c")
    if amb is not None:
        x, yy = _envelope(t, amb)
        ax2.plot(x, yy, color="#888888", lw=1.0, ls=(0, (1, 1)), label="ambient", zorder=2)
        drawn = True
    if drawn:
        _pad_ylim(ax2, [v for _, v in limits])
    else:
        _no_data(ax2, "no CDUs, loops or ambient recorded")
    ax2.set_title("Coolant supply (CDUs, loops) and ambient")
    ax2.set_ylabel("temperature (°C)")
    ctx.time_axis(ax2)
    _legend_right(ax2)
    return fig


def _palette() -> Iterable[str]:
    colors = (
        "#1f77b4",
        "#2ca02c",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
        "#ff7f0e",
        "#d62728",
        "#7f7f7f",
    )
    while True:
        yield from colors


# --------------------------------------------------------------------------
# power.png
# --------------------------------------------------------------------------
def _plot_power(ctx: _Context) -> Figure:
    fig, (ax1, ax2) = _new_figure(7.0, 2, height_ratios=(1, 1))
    fig.suptitle(ctx.title("power"))
    t = ctx.t

    site = ctx.get("site_kw")
    limit = ctx.get("import_limit_kw")
    ctx.shade_curtailment(ax1, label=True)
    if site is not None:
        x, yy = _envelope(t, site)
        ax1.plot(x, yy, color="#1f77b4", lw=1.2, label="site import", zorder=3)
    if limit is not None:
        x, yy = _change_points(t, limit)
        ax1.step(
            x, yy, where="post", color="#000000", lw=1.6, label="import limit (grid)", zorder=4
        )
    if site is not None and limit is not None:
        over = np.isfinite(site) & np.isfinite(limit) & (site > limit)
        for i, (a, b) in enumerate(_spans(t, over, ctx.xlim)):
            ax1.axvspan(
                a,
                b,
                color=OVER_COLOR,
                alpha=0.18,
                lw=0,
                zorder=1,
                label="over the limit" if i == 0 else None,
            )
    if site is None and limit is None:
        _no_data(ax1)
    else:
        ax1.set_ylim(bottom=0.0)
    ax1.set_title("Site import vs the grid's import limit")
    ax1.set_ylabel("power (kW)")
    ctx.time_axis(ax1, label=False)
    _legend_right(ax1)

    # feeders: as % of continuous rating when every feeder has one (they differ ~10x in size)
    feeders = ctx.names("feeders", "feeder.", ".kw")
    ratings = {f: _float(ctx.spec("feeders", f).get("continuous_kw")) for f in feeders}
    percent = bool(feeders) and all(r is not None and r > 0 for r in ratings.values())
    palette = _palette()
    for name in feeders:
        color = next(palette)
        y = ctx.data[f"feeder.{name}.kw"]
        rating = ratings[name]
        if percent:
            assert rating is not None
            x, yy = _envelope(t, y / rating * 100.0)
            ax2.plot(x, yy, color=color, label=f"{name} ({rating:,.0f} kW cont.)", zorder=3)
        else:
            x, yy = _envelope(t, y)
            ax2.plot(x, yy, color=color, label=name, zorder=3)
            if rating is not None:
                ax2.axhline(
                    rating,
                    color=color,
                    ls=(0, (5, 3)),
                    lw=1.1,
                    label=f"{name} continuous {rating:,.0f} kW",
                )
    if percent:
        ax2.axhline(
            100.0, color=OVER_COLOR, ls=(0, (5, 3)), lw=1.4, label="continuous rating (100 %)"
        )
        ax2.set_ylabel("load (% of continuous rating)")
        _pad_ylim(ax2, [0.0, 100.0], pad_frac=0.04)
        ax2.set_ylim(bottom=0.0)
        ax2.set_title("Feeders vs their continuous ratings")
    else:
        ax2.set_ylabel("power (kW)")
        ax2.set_title("Feeders vs their continuous ratings")
        if not feeders:
            _no_data(ax2, "no feeders recorded")
    ctx.time_axis(ax2)
    _legend_right(ax2)
    return fig


# --------------------------------------------------------------------------
# workloads.png
# --------------------------------------------------------------------------
def _plot_workloads(ctx: _Context) -> Figure:
    fig, (ax,) = _new_figure(4.8)
    fig.suptitle(ctx.title("workloads"))
    present = [(c, ctx.get(f"class.{c}_kw")) for c in CLASSES]
    present = [(c, y) for c, y in present if y is not None]
    ctx.shade_curtailment(ax, label=True)
    if present:
        x, ys = _bucket_mean(ctx.t, [np.nan_to_num(y, nan=0.0) for _, y in present])
        ax.stackplot(
            x,
            *ys,
            colors=[CLASS_COLORS[c] for c, _ in present],
            alpha=0.8,
            labels=[f"{c} (kW)" for c, _ in present],
            lw=0,
            zorder=2,
        )
        ax.set_ylim(bottom=0.0)
    else:
        _no_data(ax, "no workload power recorded")
    ax.set_title("IT power by workload class (stacked)")
    ax.set_ylabel("IT power (kW)")
    ctx.time_axis(ax)

    price = ctx.get("price_per_mwh")
    extra = []
    if price is not None:
        ax2 = ax.twinx()
        ax2.grid(False)
        x, yy = _change_points(ctx.t, price)
        ax2.step(
            x, yy, where="post", color="#000000", lw=1.1, label="energy price (right)", zorder=5
        )
        ax2.set_ylabel("energy price (per MWh)")
        extra.append(ax2)
    _legend_figure(fig, [ax, *extra])
    return fig


# --------------------------------------------------------------------------
# pue.png
# --------------------------------------------------------------------------
def _plot_pue(ctx: _Context) -> Figure:
    fig, (ax1, ax2) = _new_figure(5.6, 2, height_ratios=(1, 1))
    fig.suptitle(ctx.title("PUE and cooling"))
    pue = ctx.get("pue")
    if pue is not None:
        clean = np.where(np.isfinite(pue), pue, np.nan)
        x, yy = _envelope(ctx.t, clean)
        ax1.plot(x, yy, color="#1f77b4", lw=1.2, label="PUE", zorder=3)
        mean = float(np.nanmean(clean))
        ax1.axhline(
            mean, color=LIMIT_COLOR, ls=(0, (5, 3)), lw=1.0, label=f"mean of samples {mean:.3f}"
        )
        lo, hi = float(np.nanmin(clean)), float(np.nanmax(clean))
        p99 = float(np.nanpercentile(clean, 99.5))
        title = "Power usage effectiveness (site ÷ IT)"
        if hi > 1.0 and (hi - 1.0) > 2.0 * max(p99 - 1.0, 1e-3) and hi > p99 * 1.2:
            hi = p99 * 1.1  # a near-idle IT load makes PUE spike; keep the usual range readable
            title += f" — spikes above {hi:.2f} clipped"
        pad = max((hi - min(lo, 1.0)) * 0.08, 0.01)
        ax1.set_ylim(min(lo, 1.0) - pad, hi + pad)
        ax1.set_title(title)
    else:
        _no_data(ax1, "no PUE recorded")
        ax1.set_title("Power usage effectiveness")
    ax1.set_ylabel("PUE (ratio)")
    ctx.time_axis(ax1, label=False)

    cool = ctx.get("cooling_kw")
    if cool is not None:
        x, yy = _envelope(ctx.t, cool)
        ax2.plot(x, yy, color="#17becf", lw=1.2, label="cooling", zorder=3)
        ax2.set_ylim(bottom=0.0)
    else:
        _no_data(ax2, "no cooling power recorded")
    amb = ctx.get("ambient_c")
    extra = []
    if amb is not None and cool is not None:
        ax3 = ax2.twinx()
        ax3.grid(False)
        x, yy = _envelope(ctx.t, amb)
        ax3.plot(x, yy, color="#888888", lw=1.0, ls=(0, (1, 1)), label="ambient (right)")
        ax3.set_ylabel("ambient (°C)")
        extra.append(ax3)
    ax2.set_title("Cooling power (pumps, fans, CDUs)")
    ax2.set_ylabel("cooling power (kW)")
    ctx.time_axis(ax2)
    _legend_figure(fig, [ax1, ax2, *extra])
    return fig


# --------------------------------------------------------------------------
# alarms.png
# --------------------------------------------------------------------------
def _plot_alarms(ctx: _Context) -> Figure:
    evs = []
    for ev in ctx.events:
        t = _float(ev.get("t_h"))
        if t is not None:
            evs.append((t, str(ev.get("kind") or "info"), str(ev.get("source") or "?")))
    evs.sort(key=lambda e: e[0])
    first: dict[str, float] = {}
    counts: dict[str, int] = {}
    for t, kind, src in evs:
        if kind in RAISING_KINDS:
            first.setdefault(src, t)
            counts[src] = counts.get(src, 0) + 1
    rows = sorted(first, key=lambda s: (first[s], s))
    hidden = 0
    if len(rows) > MAX_TIMELINE_ROWS:  # keep the busiest, still in order of appearance
        keep = set(sorted(rows, key=lambda s: -counts[s])[:MAX_TIMELINE_ROWS])
        hidden = len(rows) - len(keep)
        rows = [s for s in rows if s in keep]
    row_of = {s: i for i, s in enumerate(rows)}

    height = max(2.6, 1.3 + 0.3 * len(rows))
    fig, (ax,) = _new_figure(height)
    fig.suptitle(ctx.title("alarms, sheds and trips"))
    ctx.shade_curtailment(ax, label=bool(rows))
    ctx.time_axis(ax)
    ax.set_title("Event timeline (one row per source; bars: alarm / shed active)")
    if not rows:
        ax.set_yticks([])
        _no_data(ax, "no alarms, sheds or trips")
        _legend_right(ax)
        return fig

    # active spans: alarm -> clear, shed -> restore (open ones run to the end)
    end = ctx.xlim[1]
    open_alarm: dict[str, float] = {}
    open_shed: dict[str, float] = {}
    alarm_spans: list[tuple[int, float, float]] = []
    shed_spans: list[tuple[int, float, float]] = []
    for t, kind, src in evs:
        if src not in row_of:
            continue
        r = row_of[src]
        if kind == "alarm":
            open_alarm.setdefault(src, t)
        elif kind == "clear" and src in open_alarm:
            alarm_spans.append((r, open_alarm.pop(src), t))
        elif kind == "shed":
            open_shed.setdefault(src, t)
        elif kind == "restore" and src in open_shed:
            shed_spans.append((r, open_shed.pop(src), t))
    alarm_spans += [(row_of[s], a, end) for s, a in open_alarm.items()]
    shed_spans += [(row_of[s], a, end) for s, a in open_shed.items()]
    min_w = (ctx.xlim[1] - ctx.xlim[0]) / 600.0  # a span that cleared at once stays visible
    for spans, color, h, label in (
        (alarm_spans, "#e69f00", 0.56, "alarm active"),
        (shed_spans, "#d62728", 0.28, "shed active"),
    ):
        if spans:
            ax.barh(
                [r for r, _, _ in spans],
                [max(b - a, min_w) for _, a, b in spans],
                left=[a for _, a, _ in spans],
                height=h,
                color=color,
                alpha=0.28,
                lw=0,
                zorder=1,
                label=label,
            )

    # one marker per pixel column at most: a shed logged every scan is a row of marks,
    # not 20,000 scatter points
    cell = (ctx.xlim[1] - ctx.xlim[0]) / 2000.0
    by_kind: dict[str, set[tuple[int, int]]] = {}
    for t, kind, src in evs:
        if src in row_of:
            key = kind if kind in KIND_STYLE else "other"
            by_kind.setdefault(key, set()).add((row_of[src], math.floor(t / cell)))
    styles = {**KIND_STYLE, "other": ("*", "#555555", True, 50.0, "other")}
    for kind, (marker, color, filled, size, label) in styles.items():
        pts = sorted(by_kind.get(kind, ()))
        if not pts:
            continue
        ax.scatter(
            [(b + 0.5) * cell for _, b in pts],
            [r for r, _ in pts],
            marker=marker,
            s=size,
            c=color if filled else "none",
            edgecolors=color,
            linewidths=1.2 if not filled else 0.5,
            zorder=3,
            label=label,
        )

    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first to raise on top
    ax.grid(True, axis="x")
    ax.grid(False, axis="y")
    ax.set_ylabel("source")
    if hidden:
        ax.set_title(f"Event timeline — {hidden} quieter sources not shown (see events.csv)")
    _legend_right(ax)
    return fig


# --------------------------------------------------------------------------
# forecast.png
# --------------------------------------------------------------------------
#: kind (as in the series keys), meta section, actual series prefix and suffix, display name
_FORECAST_KINDS = (
    ("loop", "loops", "loop.", ".supply_c", "loop"),
    ("cdu", "cdus", "cdu.", ".supply_c", "CDU"),
    ("tank", "tanks", "tank.", ".fluid_c", "tank"),
)
_MEAN_DASH = (0, (2, 1.5))  # shorter than the limit lines' dash, so the two do not mix up


class _Skill(NamedTuple):
    """How well one kind of zone was forecast, scored on the run's own series."""

    label: str
    zones: int
    mae_c: float | None  # mean |mean forecast - actual| where both are finite
    n_mae: int
    coverage: float | None  # fraction of samples with actual <= upper bound, both finite
    n_coverage: int


class _Forecast:
    """A run's forecast series and model facts, found once for the plot and the caption."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        info = ctx.meta.get("forecast")
        self.info: Mapping = info if isinstance(info, Mapping) else {}
        horizon = _float(self.info.get("horizon_min"))
        # the horizon names the series (mean15_c); 15 min is what the simulator archives
        self.horizon = int(horizon) if horizon and horizon > 0 and horizon == int(horizon) else 15
        self.learned_at_h = _float(self.info.get("learned_at_h"))
        self.source = str(self.info.get("source") or "")
        self.zones: dict[str, list[str]] = {}
        for kind, section, *_ in _FORECAST_KINDS:
            names = ctx.names(section, f"forecast.{kind}.", f".mean{self.horizon}_c")
            names += [
                n
                for n in ctx.names(section, f"forecast.{kind}.", f".upper{self.horizon}_c")
                if n not in names
            ]
            self.zones[kind] = names
        self.any = any(self.zones.values())
        self.configured = bool(self.info) or any(
            k.startswith(("forecast.", "headroom.")) for k in ctx.data
        )
        trusted = ctx.get("forecast.trusted")
        self.fallback = (
            []
            if trusted is None
            else _spans(ctx.t, np.isfinite(trusted) & (trusted < 0.5), ctx.xlim)
        )
        self.skill = self._score()

    def actual(self, kind: str, zone: str, prefix: str, suffix: str) -> np.ndarray | None:
        """What the forecast is scored against: the minute mean the sensors measured
        (``forecast.<kind>.<zone>.measured_c``, what the model forecasts) when the run
        recorded it, else the plant's temperature at the sample instant."""
        measured = self.ctx.get(f"forecast.{kind}.{zone}.measured_c")
        return measured if measured is not None else self.ctx.get(f"{prefix}{zone}{suffix}")

    def series(self, kind: str, zone: str, which: str) -> np.ndarray | None:
        """``which``: ``mean`` or ``upper``; None when absent or all NaN."""
        return self.ctx.get(f"forecast.{kind}.{zone}.{which}{self.horizon}_c")

    def _score(self) -> list[_Skill]:
        out: list[_Skill] = []
        for kind, _, prefix, suffix, label in _FORECAST_KINDS:
            errors: list[np.ndarray] = []
            held: list[np.ndarray] = []
            zones = 0
            for zone in self.zones[kind]:
                actual = self.actual(kind, zone, prefix, suffix)
                if actual is None:
                    continue
                zones += 1
                mean, upper = self.series(kind, zone, "mean"), self.series(kind, zone, "upper")
                if mean is not None:
                    ok = np.isfinite(mean) & np.isfinite(actual)
                    errors.append(np.abs(mean[ok] - actual[ok]))
                if upper is not None:
                    ok = np.isfinite(upper) & np.isfinite(actual)
                    held.append(actual[ok] <= upper[ok])
            err = np.concatenate(errors) if errors else np.zeros(0)
            cov = np.concatenate(held) if held else np.zeros(0, dtype=bool)
            if err.size or cov.size:
                out.append(
                    _Skill(
                        label,
                        zones,
                        float(err.mean()) if err.size else None,
                        int(err.size),
                        float(cov.mean()) if cov.size else None,
                        int(cov.size),
                    )
                )
        return out

    def missing(self) -> str:
        """Why there is no forecast to show."""
        if not self.configured:
            return "no forecast: this run had no forecasting"
        if self.learned_at_h is not None:
            return (
                "no forecast: the run ended before the first forecast came due\n"
                f"(model learned at {self.learned_at_h:g} h)"
            )
        return (
            "no forecast: no model was ready before the run ended\n"
            "(e.g. the run was shorter than the model's learning period)"
        )

    def skill_lines(self) -> list[str]:
        """MAE and upper-bound coverage per kind, then the model's source."""
        lines = []
        for q in self.skill:
            parts = []
            if q.mae_c is not None:
                parts.append(f"mean abs. error {q.mae_c:.2f} °C over {q.n_mae:,} samples")
            if q.coverage is not None:
                parts.append(
                    f"actual ≤ upper bound in {q.coverage * 100:.1f} % of {q.n_coverage:,} samples"
                )
            lines.append(f"{q.label}s ({q.zones}): {', '.join(parts)}")
        if not lines:
            lines.append("no actual temperatures to score the forecast against")
        if self.source:
            lines.append(f"model: {self.source}")
        return lines


def _plot_forecast(ctx: _Context) -> Figure:
    fc = _Forecast(ctx)
    fig, (ax1, ax2) = _new_figure(8.0, 2, height_ratios=(3, 2))
    fig.suptitle(ctx.title("forecast and heat headroom"))
    t, h = ctx.t, fc.horizon
    palette = _palette()
    colors: dict[str, str] = {}  # one colour per zone in both panels

    def color(zone: str) -> str:
        if zone not in colors:
            colors[zone] = next(palette)
        return colors[zone]

    def peak(key: str) -> float:
        y = ctx.get(key)
        return -math.inf if y is None else float(np.nanmax(y))

    # ---- forecast vs actual: every loop, the hottest tank and CDU that have a forecast
    ax1.set_title(f"Forecast vs actual, {h} min ahead")
    for a in (ax1, ax2):
        for i, (x0, x1) in enumerate(fc.fallback):
            a.axvspan(
                x0,
                x1,
                color=FALLBACK_COLOR,
                alpha=0.25,
                lw=0,
                zorder=0,
                label="conservative fallback (model not trusted)" if i == 0 else None,
            )
    if fc.any:
        grey = "#555555"
        ax1.plot([], [], color=grey, label="actual")
        ax1.plot([], [], color=grey, ls=_MEAN_DASH, label=f"forecast made {h} min before")
        ax1.fill_between([], [], [], color=grey, alpha=0.18, lw=0, label="up to its upper bound")
    limits: dict[tuple[str, float], list[str]] = {}
    for kind, section, prefix, suffix, label in _FORECAST_KINDS:
        zones = fc.zones[kind]
        hottest = kind != "loop" and bool(zones)
        if hottest:  # the one that came closest to trouble; all of them would be a tangle
            zones = [max(zones, key=lambda z, p=prefix, s=suffix: peak(f"{p}{z}{s}"))]
        for zone in zones:
            c = color(zone)
            name = f"{label} {zone}" + (" (hottest)" if hottest else "")
            actual = fc.actual(kind, zone, prefix, suffix)
            mean, upper = fc.series(kind, zone, "mean"), fc.series(kind, zone, "upper")
            if actual is not None:
                ax1.plot(*_envelope(t, actual), color=c, lw=1.1, zorder=3, label=name)
                name = "_"  # labelled once per zone
            if mean is not None:
                ax1.plot(*_envelope(t, mean), color=c, lw=1.0, ls=_MEAN_DASH, zorder=3, label=name)
                name = "_"
                if upper is not None:
                    ax1.fill_between(*_band(t, mean, upper), color=c, alpha=0.18, lw=0, zorder=2)
            elif upper is not None:
                ax1.plot(
                    *_envelope(t, upper), color=c, lw=0.9, ls=(0, (1, 1)), zorder=3, label=name
                )
            alarm = _float(ctx.spec(section, zone).get("alarm_c"))
            if alarm is not None:
                limits.setdefault(("alarm", alarm), []).append(zone)
    if fc.any:
        _limit_lines(ax1, limits, colors, "zones")
        _pad_ylim(ax1, [v for _, v in limits])
    else:
        _no_data(ax1, fc.missing())
    learned = fc.learned_at_h
    if learned is not None and ctx.xlim[0] <= learned <= ctx.xlim[1]:
        for a, lab in ((ax1, f"model learned ({learned:g} h)"), (ax2, None)):
            a.axvline(learned, color="#000000", lw=1.0, ls="-.", zorder=4, label=lab)
    ax1.set_ylabel("temperature (°C)")
    ctx.time_axis(ax1, label=False)
    _legend_right(ax1)

    # ---- heat headroom
    low, drawn = 0.0, False
    for kind, section, ls, label in (
        ("loop", "loops", "-", "loop"),
        ("cdu", "cdus", (0, (5, 2)), "CDU"),
    ):
        for zone in ctx.names(section, f"headroom.{kind}.", ".kw"):
            y = ctx.data[f"headroom.{kind}.{zone}.kw"]
            ax2.plot(*_envelope(t, y), color=color(zone), ls=ls, zorder=3, label=f"{label} {zone}")
            low, drawn = min(low, float(np.nanmin(y))), True
    if drawn:
        ax2.set_ylim(bottom=low)
    else:
        _no_data(ax2, "no heat headroom recorded")
    # the search stops at the installed nameplate (trees do not extrapolate beyond
    # the loads they saw): a loop whose loads all run flat out shows ~0 by design
    ax2.set_title(
        "Heat headroom per loop (CDUs dashed): extra heat load for the next "
        "30 min, up to the installed nameplate"
    )
    ax2.set_ylabel("headroom (kW)")
    ctx.time_axis(ax2)
    _legend_right(ax2)

    if fc.any:
        fig.supxlabel(
            "\n".join(
                [
                    f"Forecast {h} min ahead, scored on these series (all zones of each kind):",
                    *fc.skill_lines(),
                ]
            ),
            x=0.01,
            ha="left",
            fontsize=8.5,
        )
    return fig


_PLOTS = (_plot_temperatures, _plot_power, _plot_workloads, _plot_pue, _plot_alarms, _plot_forecast)


# --------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------
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
_ATTENTION = ("trip", "violation", "failsafe", "write_fail", "over_limit")


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
    for suffix, unit in (
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
    ):
        if k.endswith(suffix):
            return unit
    return ""


def _fmt(value: Any) -> str:
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


def _elapsed(t_h: float | None) -> str:
    if t_h is None:
        return ""
    minutes = round(t_h * 60.0)
    sign = "-" if minutes < 0 else ""
    d, rem = divmod(abs(minutes), 24 * 60)
    h, m = divmod(rem, 60)
    return f"{sign}{d}d {h:02d}:{m:02d}" if d else f"{sign}{h:02d}:{m:02d}"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1700px; margin: 1.5em auto; padding: 0 1.5em; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #eee; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.key { font-family: ui-monospace, Menlo, Consolas, monospace; }
tr.attention td { background: #fdecea; font-weight: 600; }
tr.k-trip td { background: #fdecea; }
tr.k-alarm td, tr.k-failsafe td, tr.k-write-failed td { background: #fff6e0; }
tr.k-shed td { background: #fff0f0; }
figure { margin: 0.5em 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""

_CAPTIONS = {
    "temperatures.png": "Tank fluid temperatures against their alarm (dashed) and trip (dotted) "
    "limits per workload class; CDU and loop supply temperatures with "
    "their limits, and the ambient temperature.",
    "power.png": "Site import against the grid's import limit (step line); blue bands: "
    "curtailment, red bands: time over the limit. Feeders as a percentage of "
    "their continuous rating.",
    "workloads.png": "IT power per workload class, stacked; energy price on the right axis "
    "when known.",
    "pue.png": "Power usage effectiveness and the cooling power.",
    "alarms.png": "One row per source that raised an alarm, shed, trip, fail-safe or "
    "failed write; bars show how long alarms and sheds stayed active.",
    "forecast.png": "Top: each loop's supply temperature (and the hottest tank's and CDU's "
    "that had a forecast), solid, against the forecast made {h} min before "
    "(dashed) and the band up to its calibrated upper bound; their alarm "
    "limits dashed. Bottom: the extra heat load each loop (CDUs dashed) could "
    "take with its upper-bound forecast staying below its limit for 30 min. "
    "Orange bands: the controller did not trust the model and used a "
    "conservative fallback.",
}


def _forecast_caption(ctx: _Context) -> str:
    """The fixed explanation plus this run's forecast error and upper-bound coverage."""
    fc = _Forecast(ctx)
    if not fc.any:
        text = fc.missing().replace("\n", " ")
        text = text[:1].upper() + text[1:] + "."
        return f"{text} Model: {fc.source}." if fc.source else text
    return (
        _CAPTIONS["forecast.png"].format(h=fc.horizon)
        + f" Forecast quality {fc.horizon} min ahead, scored on these series (all zones "
        "of each kind): " + "; ".join(fc.skill_lines()) + "."
    )


def _flat(summary: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested summary entries as dotted rows (``forecast.tank.mae_15_c``)."""
    out: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _render_html(meta: Mapping, events: Sequence[Mapping], summary: Mapping, ctx: _Context) -> str:
    e = html.escape
    site, scenario = ctx.site, ctx.scenario
    units = meta.get("units") if isinstance(meta.get("units"), Mapping) else None
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(f'thermogate report — {site} — {scenario}')}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(f'thermogate simulation report: {site}')}</h1>",
    ]
    planned = _float(meta.get("hours"))
    reached = ctx.xlim[1] if ctx.n else 0.0
    sub = [f"scenario <strong>{e(scenario)}</strong>"]
    if planned is not None:
        sub.append(f"{e(_fmt(planned))} h simulated")
        if ctx.n and reached < planned * 0.99:
            sub.append(f"data ends at {e(_fmt(round(reached, 2)))} h")
    sub.append(f"{len(ctx.t):,} samples")
    sub.append(f"{len(events):,} events")
    out.append(f'<p class="sub">{" · ".join(sub)}</p>')
    out.append(
        '<p class="sub">Data: <a href="summary.json">summary.json</a> · '
        '<a href="events.csv">events.csv</a></p>'
    )

    # ---- summary
    out += [
        "<h2>Summary</h2>",
        "<table>",
        "<thead><tr><th>quantity</th><th>value</th><th>unit</th></tr></thead>",
        "<tbody>",
    ]
    for key, value in _flat(summary):
        k = str(key)
        v = value.item() if isinstance(value, np.generic) else value
        attention = (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and v > 0
            and any(a in k.lower() for a in _ATTENTION)
        )
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        tr = '<tr class="attention">' if attention else "<tr>"
        td = '<td class="num">' if numeric else "<td>"
        out.append(
            f'{tr}<td class="key">{e(k)}</td>{td}{e(_fmt(v))}</td>'
            f"<td>{e(unit_for(k, units) if v is not None else '')}</td></tr>"
        )
    out += ["</tbody>", "</table>"]

    # ---- figures
    titles = {
        "temperatures.png": "Temperatures",
        "power.png": "Power and the import limit",
        "workloads.png": "Workloads",
        "pue.png": "PUE and cooling",
        "alarms.png": "Alarms, sheds and trips",
        "forecast.png": "Forecast and heat headroom",
    }
    for name in IMAGES:
        caption = _forecast_caption(ctx) if name == "forecast.png" else _CAPTIONS[name]
        out += [
            f"<h2>{e(titles[name])}</h2>",
            "<figure>",
            f'<a href="{e(name)}"><img src="{e(name)}" alt="{e(titles[name])}"></a>',
            f"<figcaption>{e(caption)}</figcaption>",
            "</figure>",
        ]

    # ---- events
    out.append("<h2>Event log</h2>")
    if not events:
        out.append("<p>No events.</p>")
    else:
        kinds: dict[str, int] = {}
        for ev in events:
            k = str(ev.get("kind") or "")
            kinds[k] = kinds.get(k, 0) + 1
        out.append(
            "<p>"
            + " · ".join(
                f"{e(k or '?')}: {n:,}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])
            )
            + "</p>"
        )
        if len(events) > MAX_HTML_EVENTS:
            out.append(
                f"<p>The first {MAX_HTML_EVENTS:,} of {len(events):,} events; all of "
                'them are in <a href="events.csv">events.csv</a>.</p>'
            )
        out += [
            "<table>",
            "<thead><tr><th>t (h)</th><th>elapsed</th><th>kind</th>"
            "<th>source</th><th>severity</th><th>message</th></tr></thead>",
            "<tbody>",
        ]
        for ev in events[:MAX_HTML_EVENTS]:
            t = _float(ev.get("t_h"))
            kind = str(ev.get("kind") or "")
            css = "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in kind)
            out.append(
                f'<tr class="k-{e(css)}">'
                f'<td class="num">{e(f"{t:.3f}" if t is not None else "")}</td>'
                f'<td class="num">{e(_elapsed(t))}</td>'
                f"<td>{e(kind)}</td>"
                f"<td>{e(str(ev.get('source') or ''))}</td>"
                f'<td class="num">{e(_fmt(ev.get("severity")))}</td>'
                f"<td>{e(str(ev.get('message') or ''))}</td></tr>"
            )
        out += ["</tbody>", "</table>"]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# ==========================================================================
# ProgressBar
# ==========================================================================
def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressBar:
    """A one-line progress bar on stderr: %, simulated time, speed (x real time), ETA.

    Only drawn when the stream is a terminal (``enabled=None``), so CI logs and
    redirected output stay clean; ``enabled=True``/``False`` forces it.

    ``update(done, total)``: without ``sim_hours`` the two are simulated hours;
    with ``sim_hours`` (the run's planned simulated hours) they may be any
    progress unit, e.g. scans, and the simulated time is
    ``done / total * sim_hours``. Redraws are throttled to ``min_interval_s``,
    so calling ``update`` every scan costs a clock read. ``close()`` draws
    the final state and ends the line; it is idempotent, and the bar is a
    context manager.
    """

    def __init__(
        self,
        label: str = "simulate",
        *,
        enabled: bool | None = None,
        sim_hours: float | None = None,
        stream: IO[str] | None = None,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else bool(enabled)
        self.label = label
        self.sim_hours = sim_hours
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._start: tuple[float, float] | None = None  # (wall, sim hours) at first update
        self._last_draw = -math.inf
        self._state: tuple[float, float] | None = None
        self._width = 0
        self._closed = False

    # -- public
    def update(self, done: float, total: float) -> None:
        if not self.enabled or self._closed:
            return
        now = self._clock()
        self._state = (float(done), float(total))
        if self._start is None:
            self._start = (now, self._sim_h(done, total))
        if now - self._last_draw >= self.min_interval_s or done >= total:
            self._draw(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self._state is not None:
            self._draw(self._clock())
            self._write("\n")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- drawing
    def _sim_h(self, done: float, total: float) -> float:
        if self.sim_hours is None:
            return done
        return self.sim_hours * (done / total if total > 0 else 1.0)

    def line(self, now: float, columns: int = 80) -> str:
        """The bar's text at wall time ``now`` (no carriage return)."""
        assert self._state is not None and self._start is not None
        done, total = self._state
        frac = 1.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        sim_now = self._sim_h(done, total)
        sim_total = self.sim_hours if self.sim_hours is not None else total
        wall = now - self._start[0]
        sim_s = (sim_now - self._start[1]) * 3600.0
        speed = sim_s / wall if wall > 0 and sim_s > 0 else None
        if frac >= 1.0:
            eta = "done"
        elif speed:
            eta = "ETA " + _fmt_duration((sim_total - sim_now) * 3600.0 / speed)
        else:
            eta = "ETA --:--"
        if speed is None:
            spd = "--x"
        elif speed >= 100:
            spd = f"{speed:,.0f}x"
        else:
            spd = f"{speed:.1f}x"
        head = f"{self.label} {frac * 100:3.0f}% "
        tail = f" {sim_now:.1f}/{sim_total:.1f} h sim  {spd} real time  {eta}"
        room = columns - 1 - len(head) - len(tail) - 2
        width = max(0, min(40, room))
        if width >= 8:
            fill = round(frac * width)
            bar = "[" + "#" * fill + "." * (width - fill) + "]"
        else:
            bar = ""
        return (head + bar + tail)[: max(columns - 1, 20)]

    def _draw(self, now: float) -> None:
        self._last_draw = now
        columns = shutil.get_terminal_size((80, 24)).columns
        text = self.line(now, columns)
        pad = " " * max(0, self._width - len(text))
        self._width = len(text)
        self._write("\r" + text + pad)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop a run
            self.enabled = False
