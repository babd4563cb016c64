"""Power protection: feeders, PDUs and the site import stay inside their limits.

A breaker's limit is its continuous rating (80 % unless the site says
otherwise); the grid's is the site's import limit, lowered by the instruction in force
(the grid's own limit, ``Observation.import_limit_kw``, curtailments from the
command path and peak windows, as the controller resolved them), kept with a
1 % margin. Above 98 % of a limit the loads under it shed — mining first,
then training, then inference — down to 97 %; below 97 % what was shed comes
back in the reverse order at 0.5 % of its rating per second.

Protection is the backstop of the planner, not a second planner: the gating
planner keeps the import at 95 % of the grid's limit (``GatingConfig.margin``),
below protection's restore line (96 % of it) by a margin a meter's ripple does
not cross, so caps left by a transient (a start-up, a load step the planner
had not seen) are handed back while the planner holds the import steady, and
only a real excursion (above 97 % of the grid's limit) sheds. With a planner
that asks for more than fits (``limits``), protection alone keeps a breaker
between 97 % and 98 % of its limit. One event per shedding episode, one when
every load is restored.

Each limit keeps its own caps and restores only what it shed, so a feeder
with room to spare never hands back load the site import is shedding; a
load's cap is the lowest any limit (or a hold, such as the under-frequency
relay's) puts on it.

A lowered grid limit takes effect at once (mining can stop at once); when it
lifts, the limit in force climbs back at ``GRID_RESTORE_FRAC_S`` of the site's
import limit per second, so the load returning after a curtailment is ramped
and cannot rebound over any limit (``grid_limit_kw`` is the limit in force).

One limit, one name: the *import limit* is the site's, lowered by the
instruction in force (``import_limit_kw``; an instruction below what must stay
on is raised to it first: the inference-floor alarm says that); the alarm
``power:site import``, the simulation's summary (``import_over_limit_kw_min``)
and its report's plot all compare the import with it. Protection's own line
(99 % of the limit in force, ramped after a lift) and its shed threshold (98 %
of that line) are where it acts, named as such in its shed events.

Precedence: an operator's override of a load's budget beats the grid's limit
(the load keeps its override and the others shed more) but not a breaker's.

A scan reads every constraint's meter (hundreds of feeders and PDUs at 10,000
points) as one array and steps only those where something can happen: a meter
over its limit or its shed line, an alarm still live, a limit shedding or with
loads to restore. The others would do nothing (``PowerProtection.step_all``
steps them all: the tests show it is the same).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from functools import partial

import numpy as np

from thermogate.plc.points import BAD

from ..signals import Event
from .alarms import Alarms
from .topology import CLASS_ORDER, Load, Topology
from .view import ScanView, nz

POWER_SHED_AT = 0.98  # shed when a measured load exceeds this fraction of its limit
POWER_SHED_TO = 0.97  # ... down to this fraction
POWER_RESTORE_BELOW = POWER_SHED_TO  # restore below this fraction: the band is 98-97 %
# of a limit, above where the gating planner keeps the import (see the docstring)
POWER_RESTORE_FRAC_S = 0.005  # restore rate, fraction of a load's rating per s
#: a load above a cap lowered this long ago is no longer "on its way out": it is
#: not coming down that far (a rack row's draw at a GPU cap is the row's, not
#: the planner's model of it), and protection sheds more
PENDING_S = 10.0
GRID_LIMIT_MARGIN = 0.99  # protection's limit: this far inside the grid's import limit
GRID_RESTORE_FRAC_S = 0.002  # a lifted limit climbs back at this share of the site's per s


class PowerProtection:
    """See the module docstring. ``cap[load]`` is the load's power limit in kW."""

    #: step every constraint each scan, not only those where something can happen
    #: (the tests show both give the same)
    step_all = False

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cap: dict[str, float] = {ld.name: math.inf for ld in topo.loads}
        self.grid_limit_kw = topo.site.import_limit_kw
        #: the import limit (the site's, or the instruction when lower): what the site
        #: import's alarm, the summary and the report compare the import with
        self.import_limit_kw = topo.site.import_limit_kw
        self._shedding: dict[str, bool] = {}
        #: per constraint (or hold source), the loads it holds below their rating
        self._held: dict[str, dict[str, float]] = {}
        #: who holds each load (the sources whose ``_held`` names it), and how many
        #: holds there are in all: a cap is the minimum over a load's own holders,
        #: not over every constraint of the site (hundreds at 10,000 points)
        self._holders: dict[str, set[str]] = {}
        self._n_held = 0
        #: this scan's excess over its cap per load, as ``_pending`` found it
        self._over: dict[str, float] = {}
        #: when each load's cap was last lowered (what is pending has this long)
        self._lowered_t: dict[str, float] = {}
        self._t = -math.inf
        self._ramping: set[str] = set()  # released holds climbing back
        #: each constraint's loads by class (split once: the site does not change)
        self._classes = [_by_class(c.loads) for c in topo.constraints]
        self._alarm_keys = [f"power:{c.name}" for c in topo.constraints]
        #: for the array pass of ``protect``: each constraint's meter and continuous
        #: limit (NaN: the grid's, set each scan), found by name and by alarm key
        self._constraints = list(topo.constraints)
        self._meters = np.array([c.meter for c in topo.constraints], dtype=np.intp)
        self._limit_kw = np.array(
            [math.nan if c.limit_kw is None else c.limit_kw for c in topo.constraints], dtype=float
        )
        self._grid_ix = np.array(
            [i for i, c in enumerate(topo.constraints) if c.limit_kw is None], dtype=np.intp
        )
        self._index: dict[str, list[int]] = {}
        for i, c in enumerate(topo.constraints):
            self._index.setdefault(c.name, []).append(i)
        self._key_index = {key: i for i, key in enumerate(self._alarm_keys)}

    def grid_limit(self, instruction_kw: float | None) -> float:
        """The import limit asked for this scan: the site's, or the instruction in
        force when lower (before the restore ramp; see ``grid_limit_kw``)."""
        grid = self.topo.site.import_limit_kw
        if instruction_kw is not None and math.isfinite(instruction_kw):
            grid = min(grid, instruction_kw)
        return grid

    def protect(
        self,
        view: ScanView,
        alarms: Alarms,
        instruction_kw: float | None = None,
        overridden: Collection[str] = (),
    ) -> None:
        """``instruction_kw``: the lowest import limit the grid and the site's own
        schedule ask for now (the grid's limit, curtailments, peak windows), as the
        controller resolved it (raised where it would cut inference); None: only the
        site's."""
        t, dt = view.t, view.dt
        self._t = t
        grid = self.grid_limit(instruction_kw)
        self.import_limit_kw = import_limit_kw = grid
        if grid > self.grid_limit_kw:  # a lifted limit returns at the restore rate
            step = GRID_RESTORE_FRAC_S * self.topo.site.import_limit_kw * max(dt, 0.0)
            grid = min(grid, self.grid_limit_kw + step)
        # Every constraint's meter and lines in one array pass; one is stepped only
        # where something can happen: its meter over the limit people see (its alarm)
        # or over protection's shed line, its alarm live (``Alarms.live``), or it is
        # shedding or holds loads (what it restores). Any other does nothing this
        # scan: nothing pending can push a meter under the shed line over it.
        p_all = np.where(
            view.quality[self._meters] != BAD,
            np.asarray(view.values, dtype=float)[self._meters],
            math.nan,
        )
        limit_all = self._limit_kw.copy()
        limit_all[self._grid_ix] = GRID_LIMIT_MARGIN * grid
        named_all = self._limit_kw.copy()
        named_all[self._grid_ix] = import_limit_kw
        over = (p_all > named_all) | (p_all > POWER_SHED_AT * limit_all)
        todo = set(np.flatnonzero(over).tolist())
        index = self._index
        for n in [n for n, h in self._held.items() if h] + [
            n for n, on in self._shedding.items() if on
        ]:
            todo.update(index.get(n, ()))
        key_index = self._key_index
        todo.update(key_index[key] for key in alarms.live() if key in key_index)
        p_of = p_all.tolist()
        constraints = []
        if self.step_all:  # (tests: as if nothing were skipped)
            todo.update(range(len(self._constraints)))
        for i in sorted(todo):
            c, classes, key, p = (
                self._constraints[i],
                self._classes[i],
                self._alarm_keys[i],
                p_of[i],
            )
            limit = GRID_LIMIT_MARGIN * grid if c.limit_kw is None else c.limit_kw
            group = c.loads
            if c.limit_kw is None and overridden:  # the operator's hand beats the grid
                group = tuple(ld for ld in group if ld.name not in overridden)
                classes = _by_class(group)
            # the limit people see (alarm, summary, plot): the import limit, a
            # breaker's continuous rating; protection acts inside it
            named = import_limit_kw if c.limit_kw is None else c.limit_kw
            what = "import limit" if c.limit_kw is None else "continuous limit"
            constraints.append((c.name, key, p, limit, classes, c.severity, named, what))
        self.grid_limit_kw = grid
        self._ramp_holds(dt)
        self._over.clear()
        for name, key, p, limit, classes, sev, named, what in constraints:
            if not math.isfinite(p):
                continue
            alarms.alarm(
                t,
                key,
                p > named,
                # formatted only if raised (``alarms.Message``)
                partial("{} at {:.0f} kW over its {} {:.0f} kW".format, name, p, what, named),
                sev,
                hysteresis=not p > POWER_SHED_TO * named,
            )
            shedding = self._shedding.get(name, False)
            held = self._held.setdefault(name, {})
            # what is already on its way out: loads above the caps a scan before
            # set (a meter lags the command): shedding it again would over-shed.
            # A cap is finite only while some limit or hold keeps the load (``_update``):
            # with nothing held anywhere (the rule) there is nothing on its way out.
            # Under the shed line nothing pending can put it over (pending >= 0).
            line = POWER_SHED_AT * limit
            pending = self._pending(view, classes) if self._n_held and p > line else 0
            if p - pending > line:
                excess = p - pending - POWER_SHED_TO * limit
                for wclass in CLASS_ORDER:
                    cls = classes[wclass]
                    have = sum(min(self.cap[ld.name], nz(view.measured(ld.power))) for ld in cls)
                    if have <= 1.0:
                        continue
                    take = min(excess, have)
                    for ld in cls:
                        cur = min(self.cap[ld.name], nz(view.measured(ld.power)), ld.rated_kw)
                        held[ld.name] = max(0.0, cur - take * cur / have)
                        self._update(ld.name, name)
                    if not shedding:  # one event per episode, not one per scan
                        msg = (
                            f"{name} {p:.0f} kW > {POWER_SHED_AT * limit:.0f} kW "
                            f"(protection sheds above {POWER_SHED_AT:.0%} of "
                            f"{_line(limit, named, what)}): shedding {wclass} "
                            f"({take:.0f} kW now)"
                        )
                        data = {"limit": "power", "action": "applied", "zone": name}
                        alarms.events.append(Event(t, "shed", name, msg, sev, data))
                        shedding = True
                    excess -= take
                    if excess <= 1.0:
                        break
            elif p < POWER_RESTORE_BELOW * limit:
                if shedding and not held:
                    data = {"limit": "power", "action": "lifted", "zone": name}
                    msg = f"{name}: all loads restored"
                    alarms.events.append(Event(t, "restore", name, msg, 400, data))
                    shedding = False
                # Restore what this constraint shed, in reverse order: inference
                # first, mining last. What another limit holds stays held there.
                spare = POWER_RESTORE_BELOW * limit - p
                rate = POWER_RESTORE_FRAC_S * dt
                for wclass in reversed(CLASS_ORDER):
                    for ld in classes[wclass]:
                        n = ld.name
                        if n not in held:
                            continue
                        step = min(rate * ld.rated_kw, spare)
                        kw = held[n] = held[n] + step
                        spare -= step
                        if kw >= ld.rated_kw:
                            del held[n]
                        self._update(n, name)
                    if spare <= 0.0:
                        break
            self._shedding[name] = shedding

    def _pending(self, view: ScanView, classes: Mapping[str, list[Load]]) -> float:
        """kW of ``classes``' loads above their caps (what is on its way out).

        A load sits under several constraints (site, feeder, PDU): its excess is
        worked out once a scan and again only after a shed or restore moved its
        cap (``_update`` forgets it)."""
        over = self._over
        total = 0.0
        for members in classes.values():
            for ld in members:
                x = over.get(ld.name)
                if x is None:
                    cap = self.cap[ld.name]
                    settling = self._t - self._lowered_t.get(ld.name, -math.inf) <= PENDING_S
                    x = over[ld.name] = (
                        max(0.0, nz(view.measured(ld.power)) - cap)
                        if math.isfinite(cap) and settling
                        else 0.0
                    )
                total += x
        return total

    def hold(self, source: str, loads: Mapping[str, float]) -> None:
        """Hold each of ``loads`` at its kW for ``source`` (not a metered limit:
        e.g. the under-frequency relay's shed) until :meth:`release`."""
        held = self._held.setdefault(source, {})
        self._ramping.discard(source)
        for name, kw in loads.items():
            held[name] = max(0.0, kw)
            self._update(name, source)

    def release(self, source: str) -> None:
        """Let ``source``'s holds climb back at the restore rate, then go."""
        if self._held.get(source):
            self._ramping.add(source)

    def _ramp_holds(self, dt: float) -> None:
        for source in list(self._ramping):
            held = self._held[source]
            for name in list(held):
                rated = self.topo.load[name].rated_kw
                held[name] += POWER_RESTORE_FRAC_S * max(dt, 0.0) * rated
                if held[name] >= rated:
                    del held[name]
                self._update(name, source)
            if not held:
                self._ramping.discard(source)

    def _update(self, name: str, source: str) -> None:
        """A load's cap after ``source`` changed its hold on it: the lowest any
        constraint or hold puts on it."""
        holders = self._holders.setdefault(name, set())
        if name in self._held[source]:
            if source not in holders:
                holders.add(source)
                self._n_held += 1
        elif source in holders:
            holders.discard(source)
            self._n_held -= 1
        held = self._held
        cap = min((held[s][name] for s in holders), default=math.inf)
        if cap < self.cap[name]:
            self._lowered_t[name] = self._t
        self.cap[name] = cap
        self._over.pop(name, None)


def _line(limit: float, named: float, what: str) -> str:
    """Protection's line, said against the limit people see."""
    if abs(limit - named) < 0.5:
        return f"its {what} {named:.0f} kW"
    if named <= 0.0:  # a curtailment to 0 kW, committed to cut inference too
        return f"{limit:.0f} kW, under its {what} {named:.0f} kW"
    return f"{limit:.0f} kW, {limit / named:.0%} of its {what} {named:.0f} kW"


def _by_class(loads: tuple[Load, ...]) -> dict[str, list[Load]]:
    """Loads by workload class (every class present), each in the group's order."""
    return {wclass: [ld for ld in loads if ld.wclass == wclass] for wclass in CLASS_ORDER}
