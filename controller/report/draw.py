"""What every figure of the report shares: style, figure set-up, data reduction, legends.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly:
no pyplot, no global backend switch, no display needed, nothing left open.
Long runs are drawn from a min/max envelope (peaks are kept) so a week at one
sample per second renders as fast as a day at one per minute.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .series import Context

if TYPE_CHECKING:  # matplotlib is imported lazily: the progress bar does not need it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

DPI = 150
WIDTH_IN = 11.0
MAX_LINE_POINTS = 4000  # above this a trace is drawn as a min/max envelope

CLASSES = ("mining", "training", "inference")
CLASS_COLORS = {"mining": "#d95f02", "training": "#7570b3", "inference": "#1b9e77"}
OTHER_COLOR = "#7f7f7f"
LIMIT_COLOR = "#444444"
CURTAIL_COLOR = "#9ecae1"
OVER_COLOR = "#d62728"
FALLBACK_COLOR = "#f4a261"
PRIOR_COLOR = "#a6cee3"
#: the label matplotlib leaves out of a legend (a second artist of a labelled kind)
NO_LEGEND = "_nolegend_"

#: matplotlib settings for every figure (applied with ``rc_context``, never globally).
RC: dict[RcKeyType, Any] = {
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

_PALETTE = (
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


def palette() -> Iterator[str]:
    """Distinct line colours, repeating after ten."""
    while True:
        yield from _PALETTE


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------
def new_figure(
    height_in: float,
    nrows: int = 1,
    height_ratios: Sequence[float] | None = None,
) -> tuple[Figure, list[Axes]]:
    """A report-wide figure with ``nrows`` panels sharing the time axis."""
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


def save(fig: Figure, path: Path) -> None:
    """Write the PNG without a timestamp or version, so equal plots are equal files."""
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    fig.clear()


def time_axis(ax: Axes, ctx: Context, label: bool = True) -> None:
    """The run's time range with ticks at round hours (a dozen at most)."""
    from matplotlib.ticker import AutoMinorLocator, MultipleLocator

    ax.set_xlim(*ctx.xlim)
    span = ctx.xlim[1] - ctx.xlim[0]
    for step in (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720, 1440):
        if span / step <= 12:
            ax.xaxis.set_major_locator(MultipleLocator(step))
            ax.xaxis.set_minor_locator(AutoMinorLocator())
            break
    if label:
        ax.set_xlabel("time since start (h)")


def shade(
    ax: Axes,
    windows: Iterable[tuple[float, float]],
    color: str,
    label: str | None,
    alpha: float = 0.25,
    zorder: float = 0,
) -> None:
    """Vertical bands over time windows, labelled once."""
    for i, (a, b) in enumerate(windows):
        ax.axvspan(
            a, b, color=color, alpha=alpha, lw=0, zorder=zorder, label=label if i == 0 else None
        )


def shade_curtailment(ax: Axes, ctx: Context, label: bool) -> None:
    shade(
        ax,
        ctx.curtailment,
        CURTAIL_COLOR,
        "curtailment (import limit lowered)" if label else None,
    )


def legend_right(ax: Axes) -> None:
    """A legend outside the plot on the right, so it never covers data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def legend_figure(fig: Figure, axes: Iterable[Axes]) -> None:
    """One legend for the figure, right of everything (twin axes' labels included)."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        h, lb = ax.get_legend_handles_labels()
        handles += h
        labels += lb
    if handles:
        fig.legend(handles, labels, loc="outside right upper")


def no_data(ax: Axes, text: str = "no data") -> None:
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


def limit_lines(
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


def pad_ylim(ax: Axes, values: Iterable[float], pad_frac: float = 0.06) -> None:
    """Make sure limit lines are visible, with a little room."""
    lo, hi = ax.get_ylim()
    for v in values:
        lo, hi = min(lo, v), max(hi, v)
    pad = (hi - lo) * pad_frac or 1.0
    ax.set_ylim(lo - pad, hi + pad)


# --------------------------------------------------------------------------
# data reduction for long runs
# --------------------------------------------------------------------------
def envelope(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def band(
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


def bucket_mean(t: np.ndarray, ys: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Means over ~MAX_LINE_POINTS buckets (for stacked areas, where an envelope would lie)."""
    n = len(t)
    if n <= MAX_LINE_POINTS:
        return t, ys
    starts = np.linspace(0, n, MAX_LINE_POINTS, endpoint=False).astype(np.intp)
    counts = np.diff(np.append(starts, n))
    return t[starts], [np.add.reduceat(y, starts) / counts for y in ys]


def change_points(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant trace reduced to where it changes (exact for a step plot)."""
    if len(y) < 3:
        return t, y
    same = np.isclose(y[1:], y[:-1], equal_nan=True)
    keep = np.ones(len(y), dtype=bool)
    keep[1:] = ~same
    keep[-1] = True
    return t[keep], y[keep]
