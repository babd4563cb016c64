"""The event timeline figure: one row per source that raised something, markers by kind.

A source gets a row when it raised an alarm, shed, trip, fail-safe or failed
write; its other events (clears, restores) are drawn on that row too, and
bars show how long alarms and sheds stayed active. A busy run keeps the
busiest sources and says how many quieter ones are left to ``events.csv``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .draw import legend_right, new_figure, no_data, shade_curtailment, time_axis
from .series import Context, as_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["KIND_STYLE", "RAISING_KINDS", "plot_alarms"]

MAX_TIMELINE_ROWS = 40

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

Event = tuple[float, str, str]  # t_h, kind, source
Span = tuple[int, float, float]  # row, from, to


def plot_alarms(ctx: Context) -> Figure:
    """The timeline of alarms, sheds and trips, one row per raising source."""
    evs: list[Event] = []
    for ev in ctx.events:
        t = as_float(ev.get("t_h"))
        if t is not None:
            evs.append((t, str(ev.get("kind") or "info"), str(ev.get("source") or "?")))
    evs.sort(key=lambda e: e[0])
    rows, hidden = _rows(evs)
    row_of = {s: i for i, s in enumerate(rows)}

    height = max(2.6, 1.3 + 0.3 * len(rows))
    fig, (ax,) = new_figure(height)
    fig.suptitle(ctx.title("alarms, sheds and trips"))
    shade_curtailment(ax, ctx, label=bool(rows))
    time_axis(ax, ctx)
    ax.set_title("Event timeline (one row per source; bars: alarm / shed active)")
    if not rows:
        ax.set_yticks([])
        no_data(ax, "no alarms, sheds or trips")
        legend_right(ax)
        return fig

    alarm_spans, shed_spans = _active_spans(evs, row_of, ctx.xlim[1])
    min_w = (ctx.xlim[1] - ctx.xlim[0]) / 600.0  # a span that cleared at once stays visible
    for active, color, h, label in (
        (alarm_spans, "#e69f00", 0.56, "alarm active"),
        (shed_spans, "#d62728", 0.28, "shed active"),
    ):
        if active:
            ax.barh(
                [r for r, _, _ in active],
                [max(b - a, min_w) for _, a, b in active],
                left=[a for _, a, _ in active],
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
    legend_right(ax)
    return fig


def _rows(evs: list[Event]) -> tuple[list[str], int]:
    """The sources that raised something, in order of appearance; and how many were left out."""
    first: dict[str, float] = {}
    counts: dict[str, int] = {}
    for t, kind, src in evs:
        if kind in RAISING_KINDS:
            first.setdefault(src, t)
            counts[src] = counts.get(src, 0) + 1
    rows = sorted(first, key=lambda s: (first[s], s))
    if len(rows) <= MAX_TIMELINE_ROWS:
        return rows, 0
    keep = set(sorted(rows, key=lambda s: -counts[s])[:MAX_TIMELINE_ROWS])  # the busiest
    return [s for s in rows if s in keep], len(rows) - len(keep)


def _active_spans(
    evs: list[Event], row_of: dict[str, int], end: float
) -> tuple[list[Span], list[Span]]:
    """Alarm -> clear and shed -> restore spans per row; open ones run to ``end``."""
    open_alarm: dict[str, float] = {}
    open_shed: dict[str, float] = {}
    alarm_spans: list[Span] = []
    shed_spans: list[Span] = []
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
    return alarm_spans, shed_spans
