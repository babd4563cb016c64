"""The plant's figures: temperatures, power and the import limit, workloads, PUE.

Each ``plot_*`` takes the run's ``Context`` and returns a figure; a series
that is absent leaves its trace out, and a panel with nothing to show says so
instead of drawing an empty 0..1 scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .draw import (
    CLASS_COLORS,
    CLASSES,
    LIMIT_COLOR,
    NO_LEGEND,
    OTHER_COLOR,
    OVER_COLOR,
    bucket_mean,
    change_points,
    envelope,
    legend_figure,
    legend_right,
    limit_lines,
    new_figure,
    no_data,
    pad_ylim,
    palette,
    shade,
    shade_curtailment,
    time_axis,
)
from .series import Context, as_float, spans

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_power", "plot_pue", "plot_temperatures", "plot_workloads"]


# --------------------------------------------------------------------------
# temperatures.png
# --------------------------------------------------------------------------
def plot_temperatures(ctx: Context) -> Figure:
    """Tank fluid per workload class against alarm/trip; CDU and loop supplies, ambient."""
    fig, (ax1, ax2) = new_figure(8.0, 2, height_ratios=(3, 2))
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
        x, yy = envelope(t, y)
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
            v = as_float(spec.get(f"{kind}_c"))
            if v is not None:
                limits.setdefault((kind, v), []).append(cls)
    # class labels with counts
    for line in ax1.get_lines():
        cls = str(line.get_label()).removesuffix(" tank")
        if cls in by_class:
            n = by_class[cls]
            line.set_label(f"{cls} tank{'s' if n != 1 else ''} ({n})")
    if tanks:
        limit_lines(ax1, limits, CLASS_COLORS, "classes")
        pad_ylim(ax1, [v for _, v in limits])
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
        no_data(ax1, "no immersion tanks")
    ax1.set_title("Immersion tank fluid")
    ax1.set_ylabel("fluid temperature (°C)")
    time_axis(ax1, ctx, label=False)
    legend_right(ax1)

    # ---- CDU supplies, loop supplies, ambient
    colours = palette()
    colors: dict[str, str] = {}
    limits = {}
    drawn = False
    for section, prefix, kinds in (
        ("cdus", "cdu.", ("alarm", "trip")),
        ("loops", "loop.", ("alarm",)),
    ):
        for name in ctx.names(section, prefix, ".supply_c"):
            spec = ctx.spec(section, name)
            color = colors[name] = next(colours)
            x, yy = envelope(t, ctx.data[f"{prefix}{name}.supply_c"])
            label = f"{'CDU' if section == 'cdus' else 'loop'} {name} supply"
            ax2.plot(x, yy, color=color, label=label, zorder=3)
            drawn = True
            for kind in kinds:
                v = as_float(spec.get(f"{kind}_c"))
                if v is not None:
                    limits.setdefault((kind, v), []).append(name)
    limit_lines(ax2, limits, colors, "units")
    amb = ctx.get("ambient_c")
    if amb is not None:
        x, yy = envelope(t, amb)
        ax2.plot(x, yy, color="#888888", lw=1.0, ls=(0, (1, 1)), label="ambient", zorder=2)
        drawn = True
    if drawn:
        pad_ylim(ax2, [v for _, v in limits])
    else:
        no_data(ax2, "no CDUs, loops or ambient recorded")
    ax2.set_title("Coolant supply (CDUs, loops) and ambient")
    ax2.set_ylabel("temperature (°C)")
    time_axis(ax2, ctx)
    legend_right(ax2)
    return fig


# --------------------------------------------------------------------------
# power.png
# --------------------------------------------------------------------------
#: a settled interval's metered mean: compliant, not compliant, not metered
_VERDICT_STYLE = {
    True: ("#2ca02c", "interval mean, compliant"),
    False: ("#d62728", "interval mean, NOT compliant"),
    None: ("#7f7f7f", "interval not metered"),
}


def _settled_intervals(ax: Axes, ctx: Context) -> None:
    """Each settled interval of a curtailment: its metered mean (coloured by the
    verdict) and its baseline (dashed) over the interval."""
    rows = ctx.meta.get("compliance") or []
    size_h = (as_float(ctx.meta.get("settlement_interval_s")) or 900.0) / 3600.0
    labelled: set[object] = set()
    for r in rows:
        a = as_float(r.get("start_h"))
        if a is None:
            continue
        verdict = r.get("compliant")
        color, label = _VERDICT_STYLE.get(verdict, _VERDICT_STYLE[None])
        metered = as_float(r.get("metered_kw"))
        if metered is not None:
            ax.hlines(
                metered,
                a,
                a + size_h,
                color=color,
                lw=3.0,
                zorder=5,
                label=NO_LEGEND if verdict in labelled else label,
            )
            labelled.add(verdict)
        base = as_float(r.get("baseline_kw"))
        if base is not None:
            ax.hlines(
                base,
                a,
                a + size_h,
                color="#9467bd",
                lw=1.4,
                ls=(0, (3, 2)),
                zorder=5,
                label=NO_LEGEND if "base" in labelled else "baseline (like intervals)",
            )
            labelled.add("base")


def plot_power(ctx: Context) -> Figure:
    """Site import against the grid's limit, time over it shaded; feeders against ratings."""
    fig, (ax1, ax2) = new_figure(7.0, 2, height_ratios=(1, 1))
    fig.suptitle(ctx.title("power"))
    t = ctx.t

    site = ctx.get("site_kw")
    limit = ctx.get("import_limit_kw")
    shade_curtailment(ax1, ctx, label=True)
    if site is not None:
        x, yy = envelope(t, site)
        ax1.plot(x, yy, color="#1f77b4", lw=1.2, label="site import", zorder=3)
    if limit is not None:
        x, yy = change_points(t, limit)
        ax1.step(x, yy, where="post", color="#000000", lw=1.6, label="import limit", zorder=4)
    if site is not None and limit is not None:
        over = np.isfinite(site) & np.isfinite(limit) & (site > limit)
        shade(ax1, spans(t, over, ctx.xlim), OVER_COLOR, "over the limit", alpha=0.18, zorder=1)
    _settled_intervals(ax1, ctx)
    if site is None and limit is None:
        no_data(ax1)
    else:
        ax1.set_ylim(bottom=0.0)
    ax1.set_title("Site import vs its import limit (the site's, or the grid's when lower)")
    ax1.set_ylabel("power (kW)")
    time_axis(ax1, ctx, label=False)
    legend_right(ax1)

    # feeders: as % of continuous rating when every feeder has one (they differ ~10x in size)
    feeders = ctx.names("feeders", "feeder.", ".kw")
    ratings = {f: as_float(ctx.spec("feeders", f).get("continuous_kw")) for f in feeders}
    percent = bool(feeders) and all(r is not None and r > 0 for r in ratings.values())
    colours = palette()
    for name in feeders:
        color = next(colours)
        y = ctx.data[f"feeder.{name}.kw"]
        rating = ratings[name]
        if percent:
            assert rating is not None
            x, yy = envelope(t, y / rating * 100.0)
            ax2.plot(x, yy, color=color, label=f"{name} ({rating:,.0f} kW cont.)", zorder=3)
        else:
            x, yy = envelope(t, y)
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
        pad_ylim(ax2, [0.0, 100.0], pad_frac=0.04)
        ax2.set_ylim(bottom=0.0)
    else:
        ax2.set_ylabel("power (kW)")
        if not feeders:
            no_data(ax2, "no feeders recorded")
    ax2.set_title("Feeders vs their continuous ratings")
    time_axis(ax2, ctx)
    legend_right(ax2)
    return fig


# --------------------------------------------------------------------------
# workloads.png
# --------------------------------------------------------------------------
def plot_workloads(ctx: Context) -> Figure:
    """IT power per workload class, stacked; the energy price on a second axis; below,
    when the run kept the books, the cumulative margin and what made it."""
    books = [
        (key, label, color)
        for key, label, color in (
            ("econ.margin_usd", "net margin", "#000000"),
            ("econ.mining_usd", "mining revenue", CLASS_COLORS["mining"]),
            ("econ.ai_usd", "AI revenue", CLASS_COLORS["inference"]),
            ("econ.energy_usd", "energy cost", OVER_COLOR),
        )
        if ctx.get(key) is not None
    ]
    if books:
        fig, (ax, ax_m) = new_figure(7.6, 2, height_ratios=(3, 2))
    else:
        fig, (ax,) = new_figure(4.8)
    fig.suptitle(ctx.title("workloads"))
    present = [(c, y) for c in CLASSES if (y := ctx.get(f"class.{c}_kw")) is not None]
    shade_curtailment(ax, ctx, label=True)
    if present:
        x, ys = bucket_mean(ctx.t, [np.nan_to_num(y, nan=0.0) for _, y in present])
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
        no_data(ax, "no workload power recorded")
    ax.set_title("IT power by workload class (stacked)")
    ax.set_ylabel("IT power (kW)")
    time_axis(ax, ctx, label=not books)

    price = ctx.get("price_per_mwh")
    extra = []
    if price is not None:
        ax2 = ax.twinx()
        ax2.grid(False)
        x, yy = change_points(ctx.t, price)
        ax2.step(
            x, yy, where="post", color="#000000", lw=1.1, label="energy price (right)", zorder=5
        )
        ax2.set_ylabel("energy price (per MWh)")
        extra.append(ax2)
    legend_figure(fig, [ax, *extra])
    if books:
        for key, label, color in books:
            y = ctx.get(key)
            assert y is not None
            ax_m.plot(
                ctx.t,
                y,
                color=color,
                lw=1.6 if key == "econ.margin_usd" else 1.0,
                label=label,
                zorder=3,
            )
        ax_m.axhline(0.0, color=LIMIT_COLOR, lw=0.8)
        ax_m.set_title("Cumulative margin and what made it")
        ax_m.set_ylabel("since the start ($)")
        time_axis(ax_m, ctx)
        legend_right(ax_m)
    return fig


# --------------------------------------------------------------------------
# pue.png
# --------------------------------------------------------------------------
def plot_pue(ctx: Context) -> Figure:
    """PUE with its mean (spikes of a near-idle IT load clipped); cooling power, ambient."""
    fig, (ax1, ax2) = new_figure(5.6, 2, height_ratios=(1, 1))
    fig.suptitle(ctx.title("PUE and cooling"))
    pue = ctx.get("pue")
    if pue is not None:
        clean = np.where(np.isfinite(pue), pue, np.nan)
        x, yy = envelope(ctx.t, clean)
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
        no_data(ax1, "no PUE recorded")
        ax1.set_title("Power usage effectiveness")
    ax1.set_ylabel("PUE (ratio)")
    time_axis(ax1, ctx, label=False)

    cool = ctx.get("cooling_kw")
    if cool is not None:
        x, yy = envelope(ctx.t, cool)
        ax2.plot(x, yy, color="#17becf", lw=1.2, label="cooling", zorder=3)
        ax2.set_ylim(bottom=0.0)
    else:
        no_data(ax2, "no cooling power recorded")
    amb = ctx.get("ambient_c")
    extra = []
    if amb is not None and cool is not None:
        ax3 = ax2.twinx()
        ax3.grid(False)
        x, yy = envelope(ctx.t, amb)
        ax3.plot(x, yy, color="#888888", lw=1.0, ls=(0, (1, 1)), label="ambient (right)")
        ax3.set_ylabel("ambient (°C)")
        extra.append(ax3)
    ax2.set_title("Cooling power (pumps, fans, CDUs)")
    ax2.set_ylabel("cooling power (kW)")
    time_axis(ax2, ctx)
    legend_figure(fig, [ax1, ax2, *extra])
    return fig
