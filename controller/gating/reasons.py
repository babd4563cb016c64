"""Why each load got its budget, kept for the operator: a tap on the planning seam
and a log that only speaks when something changed.

:class:`PlanTap` sits between the core and a planner and keeps the budgets
of the last plan (the core does not hand them back); everything else goes to
the planner it wraps. :class:`ReasonLog` turns the budgets and reasons of
every scan into rows for the historian's ``gating`` table, one per load
when its reason changes or its budget moves by more than a deadband, so an
operator sees what bound each load and since when without a row per scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core import Explains, LoadInfo, Planner, SiteNow
from ..core.planning import asked_all

#: a budget change smaller than this fraction of the load's rating is not logged...
REASON_DEADBAND_FRAC = 0.05
#: ...nor one under this many kW
REASON_DEADBAND_KW = 1.0
#: the reason of a load that got all it asked for within its rating
UNBOUND = "unbound"


class PlanTap:
    """A planner that is another planner, keeping its last budgets (``budgets``).

    Forwards ``why`` and every other attribute (``planned``, ``gpu_capacity``,
    ...), so the core sees the wrapped planner's seams exactly as before.
    """

    def __init__(self, inner: Planner) -> None:
        self.inner = inner
        #: per load, the budget in kW of the last plan (absent: no opinion, i.e. rated)
        self.budgets: dict[str, float] = {}

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float], now: SiteNow
    ) -> dict[str, float]:
        out = self.inner.plan(t, loads, headroom, now)
        # what the core makes of the answer, within the rating
        names = [ld.name for ld in loads]
        rated = [ld.rated_kw for ld in loads]
        self.budgets = dict(zip(names, map(min, asked_all(out, names, rated), rated), strict=True))
        return out

    def why(self) -> Mapping[str, str]:
        return self.inner.why() if isinstance(self.inner, Explains) else {}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass(frozen=True)
class GatingRow:
    """A load's budget and what bound it, from ``t`` on (a historian ``gating`` row)."""

    t: float
    load: str
    budget_kw: float
    why: str


class ReasonLog:
    """Rows only for loads whose reason changed or whose budget moved (see the module
    docstring); every load once at the first observation."""

    def __init__(
        self,
        rated_kw: Mapping[str, float],
        deadband_frac: float = REASON_DEADBAND_FRAC,
        deadband_kw: float = REASON_DEADBAND_KW,
    ) -> None:
        self.deadband = {
            name: max(deadband_kw, deadband_frac * kw) for name, kw in rated_kw.items()
        }
        self._last: dict[str, tuple[float, str]] = {}

    def observe(
        self, t: float, budgets: Mapping[str, float], why: Mapping[str, str]
    ) -> list[GatingRow]:
        out: list[GatingRow] = []
        for name, kw in budgets.items():
            reason = why.get(name) or UNBOUND
            last = self._last.get(name)
            band = self.deadband.get(name, REASON_DEADBAND_KW)
            if last is not None and last[1] == reason and abs(kw - last[0]) <= band:
                continue
            self._last[name] = (kw, reason)
            out.append(GatingRow(t, name, kw, reason))
        return out
