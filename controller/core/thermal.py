"""Thermal protection: alarms, and load caps that act before the PLC's trips.

Never uses the learned model: it acts on the voted, validated measurements.

* **A zone too hot** (a tank's fluid, a CDU's supply within 2.5 K of its
  alarm, its *soft limit*): its own loads shed their heat, whatever their
  class.
* **A loop at its cooling limit** (fans saturated and a zone on it over its
  soft limit): the loop's loads shed in class order -- mining, then training,
  then inference; they come back in the reverse order.
* **Lost flow**: a pump fault that drops a loop's flow below 70 % of its
  normal, or flow near the PLC's low-flow trip, cuts mining on the loop to
  40 % until a healthy pump has carried the loop clear of the trip for 30 s.

The thermal limiter (``Limiter``, one per zone and one per loop) is a PI on the
excess over the soft limit (K), its output the fraction of its loads' power
shed, taken in class order. ``limiter_step`` is one step (no I/O, no clock:
the time step comes in), in order:

1. proportional: ``LIMIT_KP_PER_K`` of the power per K of excess -- it sheds
   at once and gives back at once as the zone cools, so the limiter does not
   hold a zone far below its limit with power it no longer needs to shed;
2. integral: ``LIMIT_KI_PER_K_S`` per K and second, clamped to [0, 1] and not
   wound further into a full shed (anti-windup): it carries what a sustained
   heat load (the afternoon's ambient) needs shed, with no offset;
3. while nothing is shed and the zone is below its soft limit, the power the
   limit started from climbs back to the loads' ratings at
   ``THERMAL_RESTORE_FRAC_S`` of their rating per second;
4. the limit is lifted once its loads are back at their ratings, nothing is
   shed and the zone is ``THERMAL_LIFT_BELOW_K`` under its soft limit.

A limit applied and a limit lifted are one event each (``shed`` and
``restore``, with ``Event.data`` ``{"limit": "thermal", "action": ...}``), so a
report can pair them and a summary count them.

A scan reads the zones (hundreds of tanks) and loops as arrays, and steps a
zone's alarm and limiter, or a loop's alarms and lost-flow events, only where
one can change (a value at its alarm or over its soft limit, an alarm still
live, a limit applied, a shed starting or ending): the rest would change
nothing, and the scan at 10,000 points has no time for a call per zone.
``ThermalProtection.step_all`` steps them all (the tests show it is the same).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import compress
from operator import attrgetter

import numpy as np

from thermogate.plc.controlloops import THERMAL_SOFT_MARGIN_K
from thermogate.plc.points import BAD

from ..signals import Event
from .alarms import Alarms
from .planning import ROW_CAP_KNEE_FRAC
from .topology import CLASS_ORDER, Load, Topology
from .view import ScanView

#: proportional: fraction of the limit's power shed per K over the soft limit (at
#: 2.5 K over -- the alarm -- 40 % is shed by the proportional term alone)
LIMIT_KP_PER_K = 0.16
#: integral: fraction per K and second (a tank's fluid answers a cut in ~2 min,
#: a CDU's coolant in ~1: integral time Kp/Ki = 80 s)
LIMIT_KI_PER_K_S = 0.002
#: a loop's limiter: its water and dry coolers answer in ~10 min (7-21 m3 of
#: water), so its integral is slower (integral time 400 s) or it rings
LOOP_LIMIT_KI_PER_K_S = 0.0004
THERMAL_RESTORE_FRAC_S = 0.002  # a limit's power climbs back at this share of rating per s
THERMAL_LIFT_BELOW_K = 0.5  # lift a limit only this far below the soft limit (no chatter)
PUMP_FAULT_SHED_FRAC = 0.4  # mining budget on a loop that lost a pump, until flow recovers
LOST_FLOW_FRAC = 0.7  # a pump fault that dropped flow below this x normal sheds mining
RECOVERED_SPEED_PCT = 20.0  # mining returns once a healthy pump runs at least this fast
RECOVERED_FLOW_S = 30.0  # ... with flow clear of the trip margin for this long
NORMAL_FLOW_TAU_S = 600.0  # how fast "normal flow" follows a healthy loop
LOW_FLOW_PREEMPT_FRAC = 1.2  # pre-empt the PLC's low-flow trip below this x min flow
SATURATED_FAN_PCT = 95.0  # a loop whose slowest fan runs this fast has no cooling left


@dataclass(frozen=True, slots=True)
class LimiterGains:
    kp_per_k: float = LIMIT_KP_PER_K
    ki_per_k_s: float = LIMIT_KI_PER_K_S
    restore_frac_s: float = THERMAL_RESTORE_FRAC_S
    lift_below_k: float = THERMAL_LIFT_BELOW_K


@dataclass(slots=True)
class Limiter:
    """One zone's (or loop's) thermal limit over its loads (in class order).

    ``base_kw``: per load, the power the limit sheds from (what it drew when
    the limit began, climbing back to its rating); empty while no limit is
    applied. ``integral`` and ``shed`` are fractions of the total base."""

    name: str
    loads: tuple[Load, ...]
    gains: LimiterGains = LimiterGains()
    #: per load: below this its cap changes nothing (a rack row's GPUs are at their
    #: lowest power cap at 30 % of its rating: ``planning.ROW_CAP_KNEE_FRAC``), so the
    #: shed goes on to the next class instead of integrating through a dead band
    floor_kw: dict[str, float] = field(default_factory=dict)
    base_kw: dict[str, float] = field(default_factory=dict)
    integral: float = 0.0
    shed: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.base_kw)

    def caps(self) -> dict[str, float]:
        """Each load's cap in kW: the shed taken in class order (mining first)."""
        if not self.base_kw:
            return {}
        room = {n: max(0.0, b - self.floor_kw.get(n, 0.0)) for n, b in self.base_kw.items()}
        left = self.shed * sum(room.values())
        out = dict(self.base_kw)
        for wclass in CLASS_ORDER:
            group = [ld.name for ld in self.loads if ld.wclass == wclass]
            have = sum(room[n] for n in group)
            if have <= 0.0 or left <= 0.0:
                continue
            take = min(left, have)
            for n in group:
                out[n] = self.base_kw[n] - take * room[n] / have
            left -= take
        return out


def limiter_step(
    lim: Limiter,
    excess_k: float,
    dt: float,
    measured_kw: Mapping[str, float],
    *,
    hold: bool = False,
) -> str | None:
    """One step of a limiter (see the module docstring); returns "applied",
    "lifted" or None. ``hold``: nothing comes back this step (the loop lost a pump).
    A NaN excess (no valid measurement) changes nothing."""
    if not math.isfinite(excess_k):
        return None
    event, gains = None, lim.gains
    if not lim.active:
        if excess_k <= 0.0:
            return None
        # from what each load draws now; a bad meter (NaN) starts from its rating
        # rather than cutting the load to nothing
        lim.base_kw = {}
        for ld in lim.loads:
            kw = measured_kw.get(ld.name, math.nan)
            lim.base_kw[ld.name] = (
                ld.rated_kw if not math.isfinite(kw) else max(0.0, min(kw, ld.rated_kw))
            )
        lim.integral, lim.shed = 0.0, 0.0
        event = "applied"
    p = gains.kp_per_k * excess_k
    saturated = (p + lim.integral >= 1.0 and excess_k > 0.0) or (
        lim.integral <= 0.0 and excess_k < 0.0
    )
    if not saturated and not (hold and excess_k < 0.0):
        lim.integral = min(1.0, max(0.0, lim.integral + gains.ki_per_k_s * excess_k * dt))
    shed = min(1.0, max(0.0, p + lim.integral))
    lim.shed = max(shed, lim.shed) if hold else shed
    if lim.shed <= 0.0 and excess_k < 0.0 and not hold:
        back = True
        for ld in lim.loads:
            b = min(ld.rated_kw, lim.base_kw[ld.name] + gains.restore_frac_s * dt * ld.rated_kw)
            lim.base_kw[ld.name] = b
            back = back and b >= ld.rated_kw
        if back and excess_k < -gains.lift_below_k:
            lim.base_kw = {}
            lim.integral = 0.0
            return "lifted"
    return event


#: a limiter's ``base_kw``: not empty while its limit is applied (``Limiter.active``)
_BASE_KW = attrgetter("base_kw")


class ThermalProtection:
    """See the module docstring. ``cap[load]`` is the load's thermal limit in kW."""

    #: step every zone and loop each scan, not only those where something can
    #: change (the tests show both give the same)
    step_all = False

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cap: dict[str, float] = {ld.name: math.inf for ld in topo.loads}
        self.limiter_cap: dict[str, float] = dict(self.cap)
        self.flow_shed: dict[str, bool] = {}
        # Where each zone's signals are, looked up once (the site does not change).
        site, ix = topo.site, topo.ix
        loops = [lp.name for lp in site.loops]
        #: per loop: its supply point and its fans' speeds
        self._loop_points = [
            (
                lp,
                ix.loop[lp.name].supply_temp,
                [ix.dry_cooler[d.name].fan_speed for d in lp.dry_coolers],
            )
            for lp in site.loops
        ]
        #: per tank: its fluid point, the position of its loop and its alarm's key
        self._tank_points = [
            (t_, tp.fluid_temp, loops.index(t_.loop), f"{t_.name}.fluid_high")
            for t_, tp in zip(site.tanks, ix.tanks, strict=True)
        ]
        #: per CDU: its supply point, the position of its loop and its rack rows
        self._cdu_points = [
            (
                c,
                cp.supply_temp,
                loops.index(c.loop),
                [r.name for r in site.rack_rows if r.cdu == c.name],
                f"{c.name}.supply_high",
            )
            for c, cp in zip(site.cdus, ix.cdus, strict=True)
        ]
        #: per loop: its pumps' points and its mining loads (lost flow sheds them)
        self._loop_pumps = [[ix.pump[p.name] for p in lp.pumps] for lp in site.loops]
        self._loop_mining = [
            [ld for ld in topo.loads if ld.loop == k and ld.wclass == "mining"]
            for k in range(len(site.loops))
        ]
        #: the thermal limiters: one per zone (its own loads), one per loop (in class order)
        floors = {ld.name: ROW_CAP_KNEE_FRAC * ld.rated_kw for ld in topo.loads if ld.kind == "row"}
        loop_gains = LimiterGains(ki_per_k_s=LOOP_LIMIT_KI_PER_K_S)
        self.zone_limits: dict[str, Limiter] = {
            t_.name: Limiter(t_.name, (topo.load[t_.name],)) for t_ in site.tanks
        } | {
            c.name: Limiter(c.name, tuple(topo.load[r] for r in rows), floor_kw=floors)
            for c, _, _, rows, _ in self._cdu_points
        }
        self.loop_limits: list[Limiter] = [
            Limiter(
                lp.name,
                tuple(
                    ld
                    for wc in CLASS_ORDER
                    for ld in topo.loads
                    if ld.loop == k and ld.wclass == wc
                ),
                loop_gains,
                floors,
            )
            for k, lp in enumerate(site.loops)
        ]
        #: the zones (tanks, then CDUs) for the array pass of ``protect``: per zone its
        #: voted point, alarm limit, soft limit and loop, and what its alarm says
        zones = [
            (t_.name, key, t_.limits.fluid_alarm_c, k, "{} fluid {:.1f} degC >= alarm {:g}", 700)
            for t_, _, k, key in self._tank_points
        ] + [
            (c.name, key, c.supply_alarm_c, k, "CDU {} supply {:.1f} degC >= alarm {:g}", 700)
            for c, _, k, _, key in self._cdu_points
        ]
        self._zones = [
            (name, key, alarm_c, alarm_c - THERMAL_SOFT_MARGIN_K, k, text.format, sev)
            for name, key, alarm_c, k, text, sev in zones
        ]
        self._zone_pts = [p for _, p, _, _ in self._tank_points] + [
            p for _, p, _, _, _ in self._cdu_points
        ]
        self._zone_alarm = np.array([z[2] for z in self._zones], dtype=float)
        self._zone_soft = np.array([z[3] for z in self._zones], dtype=float)
        #: per loop, its zones' positions, padded with one past the last (-inf)
        members = [[j for j, z in enumerate(self._zones) if z[4] == k] for k in range(len(loops))]
        width = max([1, *map(len, members)])
        self._loop_zones = np.array(
            [m + [len(self._zones)] * (width - len(m)) for m in members], dtype=np.intp
        )
        self._zone_of_key = {z[1]: j for j, z in enumerate(self._zones)}
        self._loop_names = loops
        self._no_cap = {ld.name: math.inf for ld in topo.loads}
        #: the loops for the array pass of ``_loops``: fans and pumps padded to the
        #: widest loop (a mask marks the real ones), lost-flow state per loop
        n_loops = len(site.loops)
        self._loop_supply = [supply for _, supply, _ in self._loop_points]
        self._loop_alarm = np.array([lp.supply_alarm_c for lp in site.loops], dtype=float)
        self._loop_flow = np.array([ix.loop[lp.name].flow for lp in site.loops], dtype=np.intp)
        self._low_line = np.array(
            [LOW_FLOW_PREEMPT_FRAC * lp.min_flow_m3h for lp in site.loops], dtype=float
        )
        self._fan_pad, self._fan_mask = _padded([f for _, _, f in self._loop_points])
        self._pump_fault, self._pump_mask = _padded(
            [[pp.fault for pp in pumps] for pumps in self._loop_pumps]
        )
        self._pump_speed, _ = _padded([[pp.speed for pp in pumps] for pumps in self._loop_pumps])
        self._loop_of_key = {
            f"{lp.name}.{what}": k
            for k, lp in enumerate(site.loops)
            for what in ("supply_high", "low_flow")
        }
        #: what "normal flow" looks like per loop (NaN: not learned yet)
        self._normal_flow = np.full(n_loops, math.nan)
        self._flow_ok_s = np.zeros(n_loops)  # how long a healthy pump has carried it
        self._pump_episode = np.zeros(n_loops, dtype=bool)
        self._fault_seen = np.zeros(n_loops, dtype=bool)
        self._flow_shed = np.zeros(n_loops, dtype=bool)  # ``flow_shed`` by position
        #: per load: the limiters that cap it
        self._limits_of: dict[str, list[Limiter]] = {ld.name: [] for ld in topo.loads}
        for lim in [*self.zone_limits.values(), *self.loop_limits]:
            for ld in lim.loads:
                self._limits_of[ld.name].append(lim)

    def protect(self, view: ScanView, alarms: Alarms) -> None:
        t = view.t
        live = alarms.live()
        loop_saturated = self._loops(view, alarms, live)
        # The zones (tanks, then CDUs) as arrays: each zone's excess over its soft
        # limit and its loop's stress (the highest excess of a usable zone on it)
        # in one pass; the per-zone alarm and limiter are stepped only where one
        # can change: a zone at its alarm or over its soft limit, an alarm live, a
        # limit applied (see ``Alarms.live``; a limiter off and under its soft
        # limit stays off).
        temps, oks = view.votes(self._zone_pts)
        temp = np.array(temps, dtype=float)
        ok = np.array(oks, dtype=bool)
        excess = temp - self._zone_soft
        # Python's max over the zones in order ignores a NaN excess: so does this
        usable = np.append(np.where(ok & ~np.isnan(excess), excess, -math.inf), -math.inf)
        stress = usable[self._loop_zones].max(axis=1)
        # (a usable zone with no finite temperature steps as ``_limit`` has it)
        step = ok & ((temp >= self._zone_alarm) | (excess > 0.0) | ~np.isfinite(temp))
        todo = set(np.flatnonzero(step).tolist())
        zone_limits = self.zone_limits.values()
        todo.update(compress(range(len(zone_limits)), map(_BASE_KW, zone_limits)))
        zone_of_key = self._zone_of_key
        todo.update(zone_of_key[key] for key in live if key in zone_of_key)
        if self.step_all:  # (tests: as if nothing were skipped)
            todo.update(range(len(self._zones)))
        for j in sorted(todo):
            name, key, alarm_c, soft, k, text, severity = self._zones[j]
            temp_j, ok_j = temps[j], oks[j]
            alarms.high(
                t, key, temp_j, ok_j, alarm_c, partial(text, name, temp_j, alarm_c), severity
            )
            if ok_j:
                self._limit(view, alarms, self.zone_limits[name], temp_j, soft, k)
        # A loop whose cooling is at its limit: shed by class order on the loop. Its
        # fans no longer saturated, it has cooling to spare: its limit comes back.
        for k, loop_stress in enumerate(stress.tolist()):
            if not math.isfinite(loop_stress):
                continue
            loop_excess = loop_stress if loop_saturated[k] else min(loop_stress, 0.0)
            self._limit(view, alarms, self.loop_limits[k], math.nan, loop_excess, k)
        self._caps()

    def _limit(
        self,
        view: ScanView,
        alarms: Alarms,
        lim: Limiter,
        temp: float,
        soft: float,
        loop: int,
    ) -> None:
        """Step one limiter: a zone's (``temp`` over ``soft``) or a loop's (``temp``
        NaN, ``soft`` its stress in K), with an event when it is applied or lifted."""
        zone = math.isfinite(temp)
        excess = temp - soft if zone else soft
        if not lim.base_kw and not excess > 0.0:  # off and not over: stays off
            return
        hold = self.flow_shed.get(self._loop_names[loop], False)
        # what its loads draw now: read only when a limit may begin from it
        measured = {} if lim.base_kw else {ld.name: view.measured(ld.power) for ld in lim.loads}
        what = limiter_step(lim, excess, view.dt, measured, hold=hold)
        if what is None:
            return
        data = {"limit": "thermal", "action": what, "zone": lim.name}
        if what == "applied":
            if zone:
                msg = (
                    f"{lim.name}: thermal limit applied ({temp:.1f} degC over its soft limit "
                    f"{soft:.1f} degC): its loads' power capped"
                )
            else:
                classes = sorted({ld.wclass for ld in lim.loads}, key=CLASS_ORDER.index)
                msg = (
                    f"loop {lim.name}: thermal limit applied (fans saturated, a zone "
                    f"{excess:.1f} K over its soft limit): shedding {', then '.join(classes)}"
                )
            alarms.events.append(Event(view.t, "shed", lim.name, msg, 600, data))
        else:
            where = f"{temp:.1f} degC" if zone else "cooling to spare"
            msg = f"{lim.name}: thermal limit lifted ({where}): its loads back at their ratings"
            alarms.events.append(Event(view.t, "restore", lim.name, msg, 300, data))

    def _caps(self) -> None:
        """Each load's thermal cap: the lowest its limiters and a lost pump put on it."""
        cap = dict(self._no_cap)
        limits = [*self.zone_limits.values(), *self.loop_limits]
        for lim in compress(limits, map(_BASE_KW, limits)):  # one off caps nothing
            for name, kw in lim.caps().items():
                cap[name] = min(cap[name], kw)
        # the limiters' caps alone (what the summary's ``thermal_shed`` counts;
        # the low-flow shed below is a limit of its own)
        self.limiter_cap = dict(cap)
        for k, lp in enumerate(self.topo.site.loops):
            if self.flow_shed.get(lp.name, False):
                for ld in self._loop_mining[k]:
                    cap[ld.name] = min(cap[ld.name], PUMP_FAULT_SHED_FRAC * ld.rated_kw)
        self.cap.update(cap)

    def _loops(self, view: ScanView, alarms: Alarms, live: set[str]) -> list[bool]:
        """Each loop's supply alarm and lost flow (mining shed before the PLC's
        low-flow trip); returns, per loop, whether its fans are saturated.

        One array pass over the loops (their fans, flows and pumps, padded to the
        widest loop); a loop's alarms and events are stepped only where one can
        change (its supply at its alarm, its flow low, an alarm live, its shed
        applied or lifted)."""
        t, dt = view.t, view.dt
        values, quality = np.asarray(view.values, dtype=float), view.quality
        # fans: the slowest with a finite speed (none: not saturated)
        fans = values[self._fan_pad]
        fans[~(self._fan_mask & np.isfinite(fans))] = math.nan
        slowest = np.fmin.reduce(fans, axis=1)
        saturated = np.where(np.isnan(slowest), 100.0, slowest) >= SATURATED_FAN_PCT
        sups, sup_oks = view.votes(self._loop_supply)
        sup = np.array(sups, dtype=float)
        sup_ok = np.array(sup_oks, dtype=bool)
        # Lost flow (the module docstring), elementwise over the loops
        flow, fok = values[self._loop_flow], quality[self._loop_flow] != BAD
        faulted = (
            (quality[self._pump_fault] != BAD) & (values[self._pump_fault] >= 0.5) & self._pump_mask
        )
        pump_fault = faulted.any(axis=1)
        low = fok & (flow < self._low_line)
        normal = self._normal_flow
        lost = fok & np.isfinite(normal) & (flow < LOST_FLOW_FRAC * normal)
        learn = fok & ~pump_fault & ~low  # learn what normal looks like
        a_ = min(1.0, dt / NORMAL_FLOW_TAU_S)
        with np.errstate(invalid="ignore"):  # an infinite flow learns NaN, as in Python
            learned = np.where(np.isfinite(normal), normal + a_ * (flow - normal), flow)
        self._normal_flow = np.where(learn, learned, normal)
        was = self._flow_shed
        # A pump fault opens an episode; the episode sheds mining once flow
        # drops, and ends when a healthy pump carries the loop again.
        episode = self._pump_episode | (pump_fault & ~self._fault_seen)
        self._fault_seen = pump_fault
        carried = (
            ~faulted
            & (quality[self._pump_speed] != BAD)
            & (values[self._pump_speed] >= RECOVERED_SPEED_PCT)
            & self._pump_mask
        ).any(axis=1)
        # Recovered: not "normal flow" again (with mining shed, valves close
        # and flow is legitimately lower) but a healthy pump carrying the loop
        # with flow clear of the trip margin, for a while.
        back = fok & carried & (flow >= self._low_line)
        self._flow_ok_s = np.where(back, self._flow_ok_s + dt, 0.0)
        recovered = self._flow_ok_s >= RECOVERED_FLOW_S
        shedding = low | (episode & lost) | (was & ~recovered)
        self._pump_episode = episode & ~(recovered & ~low)
        self._flow_shed = shedding
        step = (sup_ok & (sup >= self._loop_alarm)) | low | (shedding != was)
        todo = set(np.flatnonzero(step).tolist())
        loop_of_key = self._loop_of_key
        todo.update(loop_of_key[key] for key in live if key in loop_of_key)
        flows, lows, sheds = flow.tolist(), low.tolist(), shedding.tolist()
        if self.step_all:  # (tests: as if nothing were skipped)
            todo.update(range(len(self._loop_names)))
        for k in sorted(todo):
            lp = self.topo.site.loops[k]
            loop, f = lp.name, flows[k]
            alarms.high(
                t,
                f"{loop}.supply_high",
                sups[k],
                sup_oks[k],
                lp.supply_alarm_c,
                # formatted only if raised (``alarms.Message``)
                partial(
                    "loop {} supply {:.1f} degC >= alarm {:g}".format,
                    loop,
                    sups[k],
                    lp.supply_alarm_c,
                ),
                600,
            )
            alarms.alarm(
                t,
                f"{loop}.low_flow",
                lows[k],
                partial(_low_flow_message, loop, f, lp.min_flow_m3h, lp.low_flow_trip_s),
                800,
            )
            if sheds[k] and not was[k]:
                msg = (
                    f"loop {loop} {'lost flow' if lows[k] else 'lost a pump'}: mining "
                    f"on it cut to {PUMP_FAULT_SHED_FRAC:.0%} until flow recovers"
                )
                data = {"limit": "flow", "action": "applied", "zone": loop}
                alarms.events.append(Event(t, "shed", loop, msg, 700, data))
            elif was[k] and not sheds[k]:
                msg = f"loop {loop} flow recovered ({f:.0f} m3/h): mining ramps back"
                data = {"limit": "flow", "action": "lifted", "zone": loop}
                alarms.events.append(Event(t, "restore", loop, msg, 400, data))
        self.flow_shed.update(zip(self._loop_names, sheds, strict=True))
        return saturated.tolist()


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Point positions per row, padded to the widest row (with point 0), and a mask
    of the real ones."""
    width = max([1, *map(len, rows)])
    pad = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.intp).reshape(-1, width)
    mask = np.array(
        [[True] * len(r) + [False] * (width - len(r)) for r in rows], dtype=bool
    ).reshape(-1, width)
    return pad, mask


def _low_flow_message(loop: str, flow: float, trip: float, after_s: float) -> str:
    """What a low-flow alarm says: near the PLC's trip flow, or already below it
    (it read "51 m3/h near its trip (69)" once the flow was below it)."""
    if flow < trip:
        return (
            f"loop {loop} flow {flow:.0f} m3/h below its trip flow {trip:g} m3/h "
            f"(the PLC trips its loads after {after_s:g} s)"
        )
    return f"loop {loop} flow {flow:.0f} m3/h near its trip flow {trip:g} m3/h"
