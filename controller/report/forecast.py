"""The forecast figure and its skill: forecasts against what happened, and heat headroom.

The run's forecast series (the forecast made ``horizon`` minutes before each
sample, and its upper bound) are scored against the run's own actual series
with ``thermogate.models.scoring``, the one definition of MAE and coverage
the models use too; the figure's footer and the page's caption show the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from thermogate.models.scoring import abs_errors, bound_held

from .draw import (
    FALLBACK_COLOR,
    PRIOR_COLOR,
    band,
    envelope,
    legend_right,
    limit_lines,
    new_figure,
    no_data,
    pad_ylim,
    palette,
    shade,
    time_axis,
)
from .series import Context, as_float, spans

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Forecast", "Skill", "caption", "plot_forecast"]

#: kind (as in the series keys), meta section, actual series prefix and suffix, display name
FORECAST_KINDS = (
    ("loop", "loops", "loop.", ".supply_c", "loop"),
    ("cdu", "cdus", "cdu.", ".supply_c", "CDU"),
    ("tank", "tanks", "tank.", ".fluid_c", "tank"),
)
_MEAN_DASH = (0, (2, 1.5))  # shorter than the limit lines' dash, so the two do not mix up

_CAPTION = (
    "Top: each loop's supply temperature (and the hottest tank's and CDU's "
    "that had a forecast), solid, against the forecast made {h} min before "
    "(dashed) and the band up to its calibrated upper bound; their alarm "
    "limits dashed. Bottom: the extra heat load each loop (CDUs dashed) could "
    "take with its upper-bound forecast staying below its limit for 30 min. "
    "Blue band: no learned model yet, the physics prior (an RC model of each "
    "zone built from the site description) forecast; the dash-dotted line marks "
    "the learned model taking over. Orange bands: the controller did not trust "
    "the learned model and used its fallback ({fallback})."
)


class Skill(NamedTuple):
    """How well one kind of zone was forecast, scored on the run's own series."""

    label: str
    zones: int
    mae_c: float | None  # mean |mean forecast - actual| where both are finite
    n_mae: int
    coverage: float | None  # fraction of samples with actual <= upper bound, both finite
    n_coverage: int


class Forecast:
    """A run's forecast series and model facts, found once for the figure and the caption."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        info = ctx.meta.get("forecast")
        self.info: Mapping = info if isinstance(info, Mapping) else {}
        horizon = as_float(self.info.get("horizon_min"))
        # the horizon names the series (mean15_c); 15 min is what the simulator archives
        self.horizon = int(horizon) if horizon and horizon > 0 and horizon == int(horizon) else 15
        self.learned_at_h = as_float(self.info.get("learned_at_h"))
        self.handover_h = as_float(self.info.get("handover_h"))
        self.first_forecast_h = as_float(self.info.get("first_forecast_h"))
        self.fallback_name = str(self.info.get("fallback") or "conservative headroom")
        self.source = str(self.info.get("source") or "")
        self.zones: dict[str, list[str]] = {}
        for kind, section, *_ in FORECAST_KINDS:
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
        prior = ctx.get("forecast.prior")
        #: samples forecast by the physics prior for want of a learned model
        self.prior_mask = (
            np.zeros(len(ctx.t), bool) if prior is None else np.isfinite(prior) & (prior > 0.5)
        )
        self.prior = spans(ctx.t, self.prior_mask, ctx.xlim)
        # a fallback needs a learned model to fall back from: none before it took over
        # (learned in the run), none at all in a run the physics prior alone forecast
        since = self.handover_h if self.handover_h is not None else self.learned_at_h
        if since is None:
            since = math.inf if self.source.startswith("physics prior") else -math.inf
        self.fallback = (
            []
            if trusted is None
            else spans(
                ctx.t,
                np.isfinite(trusted) & (trusted < 0.5) & ~self.prior_mask & (ctx.t >= since),
                ctx.xlim,
            )
        )
        self.skill = self._score()
        #: the same skill over the physics prior's samples alone, if it forecast any
        self.skill_prior = self._score(self.prior_mask) if self.prior_mask.any() else []

    def actual(self, kind: str, zone: str, prefix: str, suffix: str) -> np.ndarray | None:
        """What the forecast is scored against: the minute mean the sensors measured
        (``forecast.<kind>.<zone>.measured_c``, what the model forecasts) when the run
        recorded it, else the plant's temperature at the sample instant."""
        measured = self.ctx.get(f"forecast.{kind}.{zone}.measured_c")
        return measured if measured is not None else self.ctx.get(f"{prefix}{zone}{suffix}")

    def series(self, kind: str, zone: str, which: str) -> np.ndarray | None:
        """``which``: ``mean`` or ``upper``; None when absent or all NaN."""
        return self.ctx.get(f"forecast.{kind}.{zone}.{which}{self.horizon}_c")

    def _score(self, mask: np.ndarray | None = None) -> list[Skill]:
        """MAE and coverage per kind over all its zones' samples pooled (those of
        ``mask`` only, if given)."""
        out: list[Skill] = []
        for kind, _, prefix, suffix, label in FORECAST_KINDS:
            errors: list[np.ndarray] = []
            held: list[np.ndarray] = []
            zones = 0
            for zone in self.zones[kind]:
                actual = self.actual(kind, zone, prefix, suffix)
                if actual is None:
                    continue
                zones += 1
                mean, upper = self.series(kind, zone, "mean"), self.series(kind, zone, "upper")
                if mask is not None:
                    actual = actual[mask]
                    mean = None if mean is None else mean[mask]
                    upper = None if upper is None else upper[mask]
                if mean is not None:
                    errors.append(abs_errors(mean, actual))
                if upper is not None:
                    held.append(bound_held(upper, actual))
            # pooled before averaging (not a mean of zone means): every sample weighs the same
            err = np.concatenate(errors) if errors else np.zeros(0)
            cov = np.concatenate(held) if held else np.zeros(0, dtype=bool)
            if err.size or cov.size:
                out.append(
                    Skill(
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
        if self.skill_prior:
            part = "; ".join(
                f"{q.label}s {q.mae_c:.2f} °C, ≤ bound {q.coverage * 100:.1f} %"
                for q in self.skill_prior
                if q.mae_c is not None and q.coverage is not None
            )
            lines.append(f"of which the physics prior's (before a learned model): {part}")
        if self.source:
            lines.append(f"model: {self.source}")
        return lines


def caption(ctx: Context) -> str:
    """The figure's explanation plus this run's forecast error and upper-bound coverage."""
    fc = Forecast(ctx)
    if not fc.any:
        text = fc.missing().replace("\n", " ")
        text = text[:1].upper() + text[1:] + "."
        return f"{text} Model: {fc.source}." if fc.source else text
    return (
        _CAPTION.format(h=fc.horizon, fallback=fc.fallback_name)
        + f" Forecast quality {fc.horizon} min ahead, scored on these series (all zones "
        "of each kind): " + "; ".join(fc.skill_lines()) + "."
    )


def plot_forecast(ctx: Context) -> Figure:
    """Forecast vs actual per loop (and the hottest tank and CDU); heat headroom below."""
    fc = Forecast(ctx)
    fig, (ax1, ax2) = new_figure(8.0, 2, height_ratios=(3, 2))
    fig.suptitle(ctx.title("forecast and heat headroom"))
    t, h = ctx.t, fc.horizon
    colours = palette()
    colors: dict[str, str] = {}  # one colour per zone in both panels

    def color(zone: str) -> str:
        if zone not in colors:
            colors[zone] = next(colours)
        return colors[zone]

    def peak(key: str) -> float:
        y = ctx.get(key)
        return -math.inf if y is None else float(np.nanmax(y))

    # ---- forecast vs actual: every loop, the hottest tank and CDU that have a forecast
    ax1.set_title(f"Forecast vs actual, {h} min ahead")
    for a in (ax1, ax2):
        shade(a, fc.prior, PRIOR_COLOR, "physics prior (no learned model yet)")
        shade(a, fc.fallback, FALLBACK_COLOR, f"model not trusted: {fc.fallback_name}")
    if fc.any:
        grey = "#555555"
        ax1.plot([], [], color=grey, label="actual")
        ax1.plot([], [], color=grey, ls=_MEAN_DASH, label=f"forecast made {h} min before")
        ax1.fill_between([], [], [], color=grey, alpha=0.18, lw=0, label="up to its upper bound")
    limits: dict[tuple[str, float], list[str]] = {}
    for kind, section, prefix, suffix, label in FORECAST_KINDS:
        zones = fc.zones[kind]
        hottest = kind != "loop" and bool(zones)
        if hottest:  # the one that came closest to trouble; all of them would be a tangle
            peaks = {z: peak(f"{prefix}{z}{suffix}") for z in zones}
            zones = [max(peaks, key=peaks.__getitem__)]
        for zone in zones:
            c = color(zone)
            name = f"{label} {zone}" + (" (hottest)" if hottest else "")
            actual = fc.actual(kind, zone, prefix, suffix)
            mean, upper = fc.series(kind, zone, "mean"), fc.series(kind, zone, "upper")
            if actual is not None:
                ax1.plot(*envelope(t, actual), color=c, lw=1.1, zorder=3, label=name)
                name = "_"  # labelled once per zone
            if mean is not None:
                ax1.plot(*envelope(t, mean), color=c, lw=1.0, ls=_MEAN_DASH, zorder=3, label=name)
                name = "_"
                if upper is not None:
                    ax1.fill_between(*band(t, mean, upper), color=c, alpha=0.18, lw=0, zorder=2)
            elif upper is not None:
                ax1.plot(*envelope(t, upper), color=c, lw=0.9, ls=(0, (1, 1)), zorder=3, label=name)
            alarm = as_float(ctx.spec(section, zone).get("alarm_c"))
            if alarm is not None:
                limits.setdefault(("alarm", alarm), []).append(zone)
    if fc.any:
        limit_lines(ax1, limits, colors, "zones")
        pad_ylim(ax1, [v for _, v in limits])
    else:
        no_data(ax1, fc.missing())
    learned = fc.learned_at_h
    if fc.handover_h is not None:  # the moment the learned model took over from the prior
        learned, what = fc.handover_h, "learned model takes over"
    else:
        what = "model learned"
    if learned is not None and ctx.xlim[0] <= learned <= ctx.xlim[1]:
        for a, lab in ((ax1, f"{what} ({learned:g} h)"), (ax2, None)):
            a.axvline(learned, color="#000000", lw=1.0, ls="-.", zorder=4, label=lab)
    ax1.set_ylabel("temperature (°C)")
    time_axis(ax1, ctx, label=False)
    legend_right(ax1)

    # ---- heat headroom
    low, drawn = 0.0, False
    for kind, section, ls, label in (
        ("loop", "loops", "-", "loop"),
        ("cdu", "cdus", (0, (5, 2)), "CDU"),
    ):
        for zone in ctx.names(section, f"headroom.{kind}.", ".kw"):
            y = ctx.data[f"headroom.{kind}.{zone}.kw"]
            ax2.plot(*envelope(t, y), color=color(zone), ls=ls, zorder=3, label=f"{label} {zone}")
            low, drawn = min(low, float(np.nanmin(y))), True
    if drawn:
        ax2.set_ylim(bottom=low)
    else:
        no_data(ax2, "no heat headroom recorded")
    # the search stops at the installed nameplate (trees do not extrapolate beyond
    # the loads they saw): a loop whose loads all run flat out shows ~0 by design
    ax2.set_title(
        "Heat headroom per loop (CDUs dashed): extra heat load for the next "
        "30 min, up to the installed nameplate"
    )
    ax2.set_ylabel("headroom (kW)")
    time_axis(ax2, ctx)
    legend_right(ax2)

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
