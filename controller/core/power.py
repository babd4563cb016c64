"""Power protection: feeders, PDUs and the site import stay inside their limits.

A breaker's limit is its continuous rating (80 % unless the site says
otherwise); the grid's is the site's import limit, lowered by the grid or the
scenario (``Observation.import_limit_kw``) and by curtailments requested
through the command path, kept with a 3 % margin. Above 98 % of a limit the
loads under it shed — mining first, then training, then inference — down to
95 %; below 92 % they come back in the reverse order at 0.5 % of their rating
per second. One event per shedding episode, one when every load is restored.

A lowered grid limit takes effect at once (mining can stop at once); when it
lifts, the limit in force climbs back at ``GRID_RESTORE_FRAC_S`` of the site's
import limit per second, so the load returning after a curtailment is ramped
and cannot rebound over any limit (``grid_limit_kw`` is the limit in force).

Precedence: an operator's override of a load's budget beats the grid's limit
(the load keeps its override and the others shed more) but not a breaker's.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from .alarms import Alarms
from .topology import CLASS_ORDER, Load, Topology
from .view import ScanView, nz

POWER_SHED_AT = 0.98  # shed when a measured load exceeds this fraction of its limit
POWER_SHED_TO = 0.95  # ... down to this fraction
POWER_RESTORE_BELOW = 0.92  # restore when below this fraction
POWER_RESTORE_FRAC_S = 0.005  # restore rate, fraction of a load's rating per s
GRID_LIMIT_MARGIN = 0.97  # stay this far inside the grid's import limit
GRID_RESTORE_FRAC_S = 0.002  # a lifted limit climbs back at this share of the site's per s


class PowerProtection:
    """See the module docstring. ``cap[load]`` is the load's power limit in kW."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cap: dict[str, float] = {ld.name: math.inf for ld in topo.loads}
        self.grid_limit_kw = topo.site.import_limit_kw
        self._shedding: dict[str, bool] = {}
        #: each constraint's loads by class (split once: the site does not change)
        self._classes = [_by_class(c.loads) for c in topo.constraints]

    def grid_limit(self, view: ScanView, curtail_kw: float | None) -> float:
        """The import limit asked for this scan: the site's, the grid's, a
        curtailment's, lowest (before the restore ramp; see ``grid_limit_kw``)."""
        grid = self.topo.site.import_limit_kw
        if view.import_limit_kw is not None and math.isfinite(view.import_limit_kw):
            grid = min(grid, view.import_limit_kw)
        if curtail_kw is not None:
            grid = min(grid, curtail_kw)
        return grid

    def protect(
        self,
        view: ScanView,
        alarms: Alarms,
        curtail_kw: float | None = None,
        overridden: Collection[str] = (),
    ) -> None:
        t, dt = view.t, view.dt
        grid = self.grid_limit(view, curtail_kw)
        if grid > self.grid_limit_kw:  # a lifted limit returns at the restore rate
            step = GRID_RESTORE_FRAC_S * self.topo.site.import_limit_kw * max(dt, 0.0)
            grid = min(grid, self.grid_limit_kw + step)
        constraints = []
        for c, classes in zip(self.topo.constraints, self._classes, strict=True):
            p = view.val(c.meter) if view.good(c.meter) else math.nan
            limit = GRID_LIMIT_MARGIN * grid if c.limit_kw is None else c.limit_kw
            group = c.loads
            if c.limit_kw is None and overridden:  # the operator's hand beats the grid
                group = tuple(ld for ld in group if ld.name not in overridden)
                classes = _by_class(group)
            constraints.append((c.name, p, limit, group, classes, c.severity))
        self.grid_limit_kw = grid
        cap = self.cap
        for name, p, limit, group, classes, sev in constraints:
            if not math.isfinite(p):
                continue
            alarms.alarm(
                t,
                f"power:{name}",
                p > limit,
                f"{name} at {p:.0f} kW over its limit {limit:.0f} kW",
                sev,
                hysteresis=not p > POWER_SHED_TO * limit,
            )
            shedding = self._shedding.get(name, False)
            if p > POWER_SHED_AT * limit:
                excess = p - POWER_SHED_TO * limit
                for wclass in CLASS_ORDER:
                    cls = classes[wclass]
                    have = sum(min(self.cap[ld.name], nz(view.measured(ld.power))) for ld in cls)
                    if have <= 1.0:
                        continue
                    take = min(excess, have)
                    for ld in cls:
                        cur = min(self.cap[ld.name], nz(view.measured(ld.power)), ld.rated_kw)
                        self.cap[ld.name] = max(0.0, cur - take * cur / have)
                    if not shedding:  # one event per episode, not one per scan
                        alarms.event(
                            t,
                            "shed",
                            name,
                            f"{name} {p:.0f} kW > {POWER_SHED_AT * limit:.0f} kW: shedding "
                            f"{wclass} ({take:.0f} kW now)",
                            sev,
                        )
                        shedding = True
                    excess -= take
                    if excess <= 1.0:
                        break
            elif p < POWER_RESTORE_BELOW * limit:
                if shedding and all(not math.isfinite(cap[ld.name]) for ld in group):
                    alarms.event(t, "restore", name, f"{name}: all loads restored", 400)
                    shedding = False
                # Restore in reverse order: inference first, mining last.
                spare = POWER_RESTORE_BELOW * limit - p
                for wclass in reversed(CLASS_ORDER):
                    for ld in classes[wclass]:
                        if not math.isfinite(cap[ld.name]):
                            continue
                        step = min(POWER_RESTORE_FRAC_S * dt * ld.rated_kw, spare)
                        cap[ld.name] += step
                        spare -= step
                        if cap[ld.name] >= ld.rated_kw:
                            cap[ld.name] = math.inf
                    if spare <= 0.0:
                        break
            self._shedding[name] = shedding


def _by_class(loads: tuple[Load, ...]) -> dict[str, list[Load]]:
    """Loads by workload class (every class present), each in the group's order."""
    return {wclass: [ld for ld in loads if ld.wclass == wclass] for wclass in CLASS_ORDER}
