"""Thermal protection: alarms, and load caps that act before the PLC's trips.

Never uses the learned model: it acts on the voted, validated measurements.

* **A zone too hot** (a tank's fluid, a CDU's supply within 2.5 K of its
  alarm): its own loads shed their heat, whatever their class, at a rate
  proportional to the excess; they come back slowly once 1.5 K below.
* **A loop at its cooling limit** (fans saturated and a zone on it hot): the
  loop's loads shed in class order — mining, then training, then inference.
* **Lost flow**: a pump fault that drops a loop's flow below 70 % of its
  normal, or flow near the PLC's low-flow trip, cuts mining on the loop to
  40 % until a healthy pump has carried the loop clear of the trip for 30 s.
"""

from __future__ import annotations

import math

from .alarms import Alarms
from .topology import CLASS_ORDER, Load, Topology
from .view import ScanView, nz

THERMAL_SOFT_MARGIN_K = 2.5  # start shedding this far below a zone's alarm limit
THERMAL_SHED_KW_PER_K_S = 0.004  # shed rate: fraction of rated per K above soft limit, per s
THERMAL_RESTORE_FRAC_S = 0.002  # restore rate: fraction of rated per s when cool
THERMAL_RESTORE_BELOW_K = 1.5  # restore only when this far below the soft limit
PUMP_FAULT_SHED_FRAC = 0.4  # mining budget on a loop that lost a pump, until flow recovers
LOST_FLOW_FRAC = 0.7  # a pump fault that dropped flow below this x normal sheds mining
RECOVERED_SPEED_PCT = 20.0  # mining returns once a healthy pump runs at least this fast
RECOVERED_FLOW_S = 30.0  # ... with flow clear of the trip margin for this long
NORMAL_FLOW_TAU_S = 600.0  # how fast "normal flow" follows a healthy loop
LOW_FLOW_PREEMPT_FRAC = 1.2  # pre-empt the PLC's low-flow trip below this x min flow
SATURATED_FAN_PCT = 95.0  # a loop whose slowest fan runs this fast has no cooling left


class ThermalProtection:
    """See the module docstring. ``cap[load]`` is the load's thermal limit in kW."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.cap: dict[str, float] = {ld.name: math.inf for ld in topo.loads}
        self.flow_shed: dict[str, bool] = {}
        self._normal_flow: dict[str, float] = {}
        self._flow_ok_s: dict[str, float] = {}
        self._pump_episode: dict[str, bool] = {}
        self._fault_seen: dict[str, bool] = {}
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
        #: per tank: its fluid point and the position of its loop
        self._tank_points = [
            (t_, tp.fluid_temp, loops.index(t_.loop))
            for t_, tp in zip(site.tanks, ix.tanks, strict=True)
        ]
        #: per CDU: its supply point, the position of its loop and its rack rows
        self._cdu_points = [
            (
                c,
                cp.supply_temp,
                loops.index(c.loop),
                [r.name for r in site.rack_rows if r.cdu == c.name],
            )
            for c, cp in zip(site.cdus, ix.cdus, strict=True)
        ]
        #: per loop: its pumps' points and its mining loads (lost flow sheds them)
        self._loop_pumps = [[ix.pump[p.name] for p in lp.pumps] for lp in site.loops]
        self._loop_mining = [
            [ld for ld in topo.loads if ld.loop == k and ld.wclass == "mining"]
            for k in range(len(site.loops))
        ]

    def protect(self, view: ScanView, alarms: Alarms) -> None:
        t = view.t
        val, vote = view.val, view.vote
        loop_stress = dict.fromkeys(range(len(self._loop_points)), -math.inf)
        loop_saturated: dict[int, bool] = {}
        for k, (lp, supply_temp, fan_speeds) in enumerate(self._loop_points):
            fans = [x for x in map(val, fan_speeds) if math.isfinite(x)]
            loop_saturated[k] = (min(fans) if fans else 100.0) >= SATURATED_FAN_PCT
            sup, ok = vote(supply_temp)
            alarms.high(
                t,
                f"{lp.name}.supply_high",
                sup,
                ok,
                lp.supply_alarm_c,
                f"loop {lp.name} supply {sup:.1f} degC >= alarm {lp.supply_alarm_c:g}",
                600,
            )
            self._flow(view, alarms, k, lp.name)
        for t_, fluid_temp, k in self._tank_points:
            temp, ok = vote(fluid_temp)
            lim = t_.limits
            alarms.high(
                t,
                f"{t_.name}.fluid_high",
                temp,
                ok,
                lim.fluid_alarm_c,
                f"{t_.name} fluid {temp:.1f} degC >= alarm {lim.fluid_alarm_c:g}",
                700,
            )
            soft = lim.fluid_alarm_c - THERMAL_SOFT_MARGIN_K
            if ok:
                loop_stress[k] = max(loop_stress[k], temp - soft)
                self._limit_load(view, alarms, t_.name, temp - soft)
        for c, supply_temp, k, rows in self._cdu_points:
            temp, ok = vote(supply_temp)
            alarms.high(
                t,
                f"{c.name}.supply_high",
                temp,
                ok,
                c.supply_alarm_c,
                f"CDU {c.name} supply {temp:.1f} degC >= alarm {c.supply_alarm_c:g}",
                700,
            )
            if ok:
                excess = temp - (c.supply_alarm_c - THERMAL_SOFT_MARGIN_K)
                loop_stress[k] = max(loop_stress[k], excess)
                for row in rows:
                    self._limit_load(view, alarms, row, excess)
        # A loop whose cooling is at its limit: shed by class order on the loop.
        for k, stress in loop_stress.items():
            if stress > 0.0 and loop_saturated[k]:
                self._shed_loop(view, k, stress)

    def _flow(self, view: ScanView, alarms: Alarms, k: int, loop: str) -> None:
        """Lost flow: shed mining on the loop before the PLC's low-flow trip."""
        lp = self.topo.site.loops[k]
        t, dt = view.t, view.dt
        lpp = self.topo.ix.loop[loop]
        pumps = self._loop_pumps[k]
        flow, fok = view.val(lpp.flow), view.good(lpp.flow)
        low = fok and flow < LOW_FLOW_PREEMPT_FRAC * lp.min_flow_m3h
        pump_fault = any(view.good(pp.fault) and view.val(pp.fault) >= 0.5 for pp in pumps)
        normal = self._normal_flow.get(loop, math.nan)
        lost = fok and math.isfinite(normal) and flow < LOST_FLOW_FRAC * normal
        if fok and not pump_fault and not low:  # learn what normal looks like
            a_ = min(1.0, dt / NORMAL_FLOW_TAU_S)
            self._normal_flow[loop] = (
                flow if not math.isfinite(normal) else (normal + a_ * (flow - normal))
            )
        alarms.alarm(
            t,
            f"{loop}.low_flow",
            low,
            f"loop {loop} flow {flow:.0f} m3/h near its trip ({lp.min_flow_m3h:g})",
            800,
        )
        was = self.flow_shed.get(loop, False)
        # A pump fault opens an episode; the episode sheds mining once flow
        # drops, and ends when a healthy pump carries the loop again.
        episode = self._pump_episode.get(loop, False) or (
            pump_fault and not self._fault_seen.get(loop, False)
        )
        self._fault_seen[loop] = pump_fault
        carried = any(
            not (view.good(pp.fault) and view.val(pp.fault) >= 0.5)
            and view.good(pp.speed)
            and view.val(pp.speed) >= RECOVERED_SPEED_PCT
            for pp in pumps
        )
        # Recovered: not "normal flow" again (with mining shed, valves close
        # and flow is legitimately lower) but a healthy pump carrying the loop
        # with flow clear of the trip margin, for a while.
        back = fok and carried and flow >= LOW_FLOW_PREEMPT_FRAC * lp.min_flow_m3h
        self._flow_ok_s[loop] = self._flow_ok_s.get(loop, 0.0) + dt if back else 0.0
        recovered = self._flow_ok_s[loop] >= RECOVERED_FLOW_S
        if low or (episode and lost):
            shedding = True
        elif was:
            shedding = not recovered
        else:
            shedding = False
        if episode and recovered and not low:
            episode = False
        self._pump_episode[loop] = episode
        if shedding:
            for ld in self._loop_mining[k]:
                self.cap[ld.name] = min(self.cap[ld.name], PUMP_FAULT_SHED_FRAC * ld.rated_kw)
            if not was:
                alarms.event(
                    t,
                    "shed",
                    loop,
                    f"loop {loop} {'lost flow' if low else 'lost a pump'}: mining "
                    f"on it cut to {PUMP_FAULT_SHED_FRAC:.0%} until flow recovers",
                    700,
                )
        elif was:
            alarms.event(
                t,
                "restore",
                loop,
                f"loop {loop} flow recovered ({flow:.0f} m3/h): mining ramps back",
                400,
            )
        self.flow_shed[loop] = shedding

    def _limit_load(self, view: ScanView, alarms: Alarms, name: str, excess_k: float) -> None:
        """A load whose own zone is too hot sheds its own heat, whatever its class."""
        ld = self.topo.load[name]
        dt = view.dt
        if excess_k > 0.0:
            cut = THERMAL_SHED_KW_PER_K_S * excess_k * dt * ld.rated_kw
            start = min(self.cap[name], nz(view.measured(ld.power)), ld.rated_kw)
            self.cap[name] = max(0.0, start - cut)
        elif (
            excess_k < -THERMAL_RESTORE_BELOW_K
            and math.isfinite(self.cap[name])
            and not self.flow_shed.get(self.topo.site.loops[ld.loop].name, False)
        ):
            self.cap[name] += THERMAL_RESTORE_FRAC_S * dt * ld.rated_kw
            if self.cap[name] >= ld.rated_kw:
                self.cap[name] = math.inf
                alarms.event(view.t, "restore", name, f"{name}: thermal limit lifted", 300)

    def _shed_loop(self, view: ScanView, loop: int, stress_k: float) -> None:
        """Shed heat from a loop in class order: mining, then training, then inference."""
        need = THERMAL_SHED_KW_PER_K_S * stress_k * view.dt
        for wclass in CLASS_ORDER:
            group: list[Load] = [
                ld for ld in self.topo.loads if ld.loop == loop and ld.wclass == wclass
            ]
            room = sum(min(self.cap[ld.name], nz(view.measured(ld.power))) for ld in group)
            if room <= 1.0:
                continue
            for ld in group:
                cur = min(self.cap[ld.name], nz(view.measured(ld.power)), ld.rated_kw)
                self.cap[ld.name] = max(0.0, cur - need * ld.rated_kw)
            return
