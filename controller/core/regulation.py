"""Regulation: the site's PID loops, trim & respond, duty/standby pumps.

Each control loop of the site description drives its actuators from its
measurement (``pid.py``: a pure step). Around them:

* **Trim & respond** (ASHRAE Guideline 36): the most-open valve on a cooling
  loop says whether the loop could run warmer and with less differential
  pressure (less fan and pump energy): below 65 % the loop's supply setpoint
  is raised (up to +6 K) and its ΔP setpoint trimmed (down to 40 kPa, never
  wound further: a respond acts at once); above 90 %, or with any zone near
  its alarm, both return four times as fast. A dry cooler cannot bring its
  water below the air: while the valves are throttled (below 65 %) and no
  zone is near its alarm, the supply setpoint is also raised, at the same
  rate, to at least
  ``SUPPLY_MIN_APPROACH_K`` above the measured ambient (a hot night with the
  design setpoint under the ambient would otherwise run every fan flat out
  for nothing).
* **Duty/standby pumps**: one pump regulates ΔP; the standby starts when the
  duty pump faults or stays saturated for a minute short of the ΔP setpoint,
  and stops after five minutes of both running below 45 %. A minimum-flow
  guard acts before the PLC's low-flow trip can: when the zones need so
  little cooling that the loop's valves close (mining stopped on price, say),
  it stops them closing further and opens them; it raises pump speed only
  where that adds flow (the ΔP short of its setpoint, or every valve open),
  never dead-heading a pump against throttled valves.
* **Operator**: a loop whose first actuator is overridden follows the
  operator's value bumplessly; in manual and maintenance modes every loop
  holds its output and trim & respond stands still. Setpoints and tunings
  set through the command path replace the site file's.

``trim_and_respond=False`` runs every loop at its design supply setpoint and
ΔP (fans and pumps still by PID): what an immersion-tank or CDU vendor's
controller does, the baseline of ``thermogate bench cooling``.

A large hall has ~400 loops: their states and settings are arrays, and a scan
steps every loop on the common path (automatic, valid measurement, no
operator's value) in one ``pid_step_many``; only the others go through
``pid_step`` one by one. Measurements, setpoints and trim & respond's valves
and zones are gathered as arrays too, and a loop's usual reason is formatted
only for the commands actuation writes (``_LoopCmd``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields

import numpy as np

from thermogate.plc.controlloops import (
    DP_TRIM_MIN_KPA,
    SUPPLY_RESET_MAX_K,
    THERMAL_SOFT_MARGIN_K,
)
from thermogate.plc.equipment import ControlLoop, Loop, Pump
from thermogate.plc.pointtable import LoopPoints, PumpPoints

from ..pid import PidConfig, PidConfigs, PidState, pid_step, pid_step_many, pid_track
from .alarms import Alarms
from .state import ControllerState, Override
from .topology import Topology
from .view import Cmd, Cmds, ScanView

SUPPLY_RESET_RATE_K_S = 0.005
#: the closest a loop's supply is asked to come to the ambient while nothing is
#: hot: the dry coolers' design approach is 6 K at full duty; at 3 K their fans
#: already run hard, and closer they spend energy for almost no heat
SUPPLY_MIN_APPROACH_K = 3.0
DP_TRIM_RATE_KPA_S = 0.05
VALVE_WIDE_OPEN_PCT = 90.0  # trim & respond thresholds on the most-open valve
VALVE_THROTTLED_PCT = 65.0
MIN_FLOW_GUARD_FRAC = 1.4  # the ΔP loop never lets flow fall below this x min flow
MIN_FLOW_GUARD_PCT_S = 2.0  # how fast the guard raises pump speed (%/s)
VALVE_FLOOR_PCT_S = 1.0  # how fast the guard opens a loop's closed valves (%/s)
STANDBY_START_SAT_S = 60.0  # duty pump saturated this long, ΔP short -> start the standby
DP_SHORT_FRAC = 0.05  # ΔP this far (of its setpoint) below it: the pumps are short
STANDBY_STOP_BELOW_PCT = 45.0  # both pumps below this for STANDBY_STOP_S -> stop standby
STANDBY_STOP_S = 300.0


def pid_config(c: ControlLoop, tuning: Mapping[str, float] | None = None) -> PidConfig:
    """A control loop's PID settings: the site file's, or an engineer's tuning."""
    g = tuning or {}
    return PidConfig(
        kp=g.get("kp", c.kp),
        ki=g.get("ki", c.ki),
        kd=g.get("kd", c.kd),
        out_min=c.out_min,
        out_max=c.out_max,
        slew_per_s=c.slew_per_s,
        action=c.action,
    )


_WHY = Cmd.__dict__["why"]  # ``Cmd``'s own storage of ``why`` (a slot)
if [f.name for f in fields(Cmd)] != ["value", "why", "who", "where", "override", "pulse"]:
    raise TypeError("Cmd changed: _LoopCmd.__init__ must set its new fields")


class _LoopCmd(Cmd):
    """A loop's command whose reason is formatted when first read.

    Actuation reads ``why`` only for the commands it writes (~90 a scan) of the
    ~400 the loops set; formatting every reason cost more than the PID steps.
    ``why`` is a ``str`` whenever read (a property over ``Cmd``'s slot): the text
    ``loop {name}: {measurement} {meas:.2f} -> setpoint {sp:.2f}``, formatted from
    this scan's values, or what was assigned to it since."""

    __slots__ = ("_of",)

    def __init__(self, value: float, of: tuple[str, str, float, float]) -> None:
        # (Cmd's fields as its __init__ sets them, with no reason yet: checked above)
        self.value = value
        self.who = "controller"
        self.where = "scan"
        self.override = False
        self.pulse = False
        self._of: tuple[str, str, float, float] | None = of

    @property
    def why(self) -> str:
        of = self._of
        if of is not None:
            name, measurement, meas, sp = of
            _WHY.__set__(self, f"loop {name}: {measurement} {meas:.2f} -> setpoint {sp:.2f}")
            self._of = None
        why: str = _WHY.__get__(self, Cmd)
        return why

    @why.setter
    def why(self, why: str) -> None:
        _WHY.__set__(self, why)
        self._of = None


def _loop_cmd(value: float, why: str | None, of: tuple[str, str, float, float]) -> Cmd:
    """A loop's command: with ``why``, or (None) the common reason of ``of``,
    formatted if read (``_LoopCmd``)."""
    return _LoopCmd(value, of) if why is None else Cmd(value, why)


class Regulation:
    """See the module docstring."""

    def __init__(
        self, topo: Topology, state: ControllerState, *, trim_and_respond: bool = True
    ) -> None:
        self.topo = topo
        self.state = state
        self.trim_and_respond = trim_and_respond
        site, pmap, ix = topo.site, topo.pmap, topo.ix
        self.loops: list[ControlLoop] = list(site.control_loops)
        self._meas = {c.name: pmap.position(c.measurement) for c in self.loops}
        self._acts = {c.name: [pmap.position(a) for a in c.actuators] for c in self.loops}
        self._pump_loop = {c.name: topo.is_pump_loop(c) for c in self.loops}
        self._tuned: dict[str, dict[str, float]] = {}
        self._cfg: dict[str, PidConfig] = {c.name: pid_config(c) for c in self.loops}
        # Every loop's PID state and settings as arrays, in ``self.loops`` order: the
        # common path steps them in one ``pid_step_many`` (``_pid``: as records).
        n = len(self.loops)
        self._k_of = {c.name: k for k, c in enumerate(self.loops)}
        self._cfgs = PidConfigs.of([self._cfg[c.name] for c in self.loops])
        self._integral = np.zeros(n)
        self._last_meas = np.full(n, math.nan)
        self._out = np.full(n, math.nan)
        self._manual = np.zeros(n, dtype=bool)
        self._meas_pts = [self._meas[c.name] for c in self.loops]
        self._act0 = [self._acts[c.name][0] for c in self.loops]
        self._file_sp = np.array([float(c.setpoint) for c in self.loops])
        # which measurements trim & respond moves: a loop's supply and its ΔP
        self._sp_kind: dict[int, tuple[str, str]] = {}
        for lpp in ix.loops:
            self._sp_kind[lpp.supply_temp] = ("supply", lpp.name)
            self._sp_kind[lpp.dp] = ("dp", lpp.name)
        self.supply_reset = {lp.name: 0.0 for lp in site.loops}
        self.dp_trim = {lp.name: 0.0 for lp in site.loops}
        #: per cooling loop: the control loop of its supply temperature (fans)
        self._supply_loop = {
            lpp.name: c
            for lpp in ix.loops
            for c in self.loops
            if self._meas[c.name] == lpp.supply_temp
        }
        #: each loop's ΔP trim stops where its setpoint reaches DP_TRIM_MIN_KPA
        self._dp_trim_max = {
            lpp.name: max(0.0, self._dp_base(lpp.dp) - DP_TRIM_MIN_KPA) for lpp in ix.loops
        }
        self._standby_sat_s = {lp.name: 0.0 for lp in site.loops}
        self._standby_low_s = {lp.name: 0.0 for lp in site.loops}
        self._standby_on = {lp.name: False for lp in site.loops}
        self._flow_guard: dict[str, float] = {}
        self._valve_floor: dict[str, float] = {}
        self._pump_of = {ix.pump[p.name].speed_cmd: p for p in site.pumps}
        self._pump_wiring: dict[str, tuple[list[Pump], Loop, LoopPoints, list[PumpPoints]]] = {}
        #: per pump loop, the texts it says every scan, made once: per pump its fault
        #: alarm's key, raised and cleared messages and its command's reason when
        #: faulted; the loop's no-pump alarm key, raised and cleared messages
        self._pump_texts: dict[
            str, tuple[list[tuple[str, str, str, str]], tuple[str, str, str]]
        ] = {}
        for c in self.loops:
            if self._pump_loop[c.name]:
                pumps = [self._pump_of[a] for a in self._acts[c.name]]
                loop = pumps[0].loop
                self._pump_texts[c.name] = (
                    [
                        (
                            f"{p.name}.fault",
                            f"pump {p.name} faulted",
                            f"pump {p.name} fault cleared",
                            f"pump {p.name} faulted: standby takes over",
                        )
                        for p in pumps
                    ],
                    (
                        f"{loop}.no_pump",
                        f"loop {loop}: no healthy pump",
                        f"loop {loop}: a pump is available",
                    ),
                )
        # The wiring each scan walks, looked up once (the site does not change).
        #: per control loop: its measurement, its actuators, drives pumps?
        self._wiring = [
            (c, self._meas[c.name], self._acts[c.name], self._pump_loop[c.name]) for c in self.loops
        ]
        #: per control loop: what trim & respond moves of its setpoint (None: nothing)
        self._trim_of = {c.name: self._sp_kind.get(self._meas[c.name]) for c in self.loops}
        #: the loops whose setpoint trim & respond raises (supply) or trims (ΔP), by
        #: index, with their cooling loop
        trims = [(k, self._trim_of[c.name]) for k, c in enumerate(self.loops)]
        self._sup_k = np.array(
            [k for k, kind in trims if kind is not None and kind[0] == "supply"], dtype=np.intp
        )
        self._sup_loop = [kind[1] for _, kind in trims if kind is not None and kind[0] == "supply"]
        self._dp_k = np.array(
            [k for k, kind in trims if kind is not None and kind[0] == "dp"], dtype=np.intp
        )
        self._dp_loop = [kind[1] for _, kind in trims if kind is not None and kind[0] == "dp"]
        #: the working setpoints of the last ``regulate``, in ``self.loops`` order:
        #: what ``setpoints()`` returns until a command or the next scan moves one
        self.last_setpoints: list[float] = []
        #: per cooling loop: its zones' (point, hot above) for ``loop_hot``
        self._hot_at: dict[str, list[tuple[int, float]]] = {
            lp.name: [
                (ix.tank[t_.name].fluid_temp, t_.limits.fluid_alarm_c - THERMAL_SOFT_MARGIN_K - 1.0)
                for t_ in topo.loop_tanks[lp.name]
            ]
            + [
                (ix.cdu[c.name].supply_temp, c.supply_alarm_c - THERMAL_SOFT_MARGIN_K - 1.0)
                for c in topo.loop_cdus[lp.name]
            ]
            for lp in site.loops
        }
        # The same for trim & respond's array passes, the loops' groups end to end
        # (each group's start; an empty group starts at a sentinel, masked out).
        loops = site.loops
        valves = [topo.loop_valves[lp.name] for lp in loops]
        self._tr_valves = np.array([i for vs in valves for i in vs], dtype=np.intp)
        self._tr_valve_at = _group_starts([len(vs) for vs in valves])
        self._tr_any = np.array([bool(vs) for vs in valves], dtype=bool)
        hot_at = [self._hot_at[lp.name] for lp in loops]
        self._hot_pts = [i for zs in hot_at for i, _ in zs]
        self._hot_above = np.array([h for zs in hot_at for _, h in zs], dtype=float)
        self._hot_at_k = _group_starts([len(zs) for zs in hot_at])
        self._hot_any = np.array([bool(zs) for zs in hot_at], dtype=bool)
        #: per cooling loop: its flow point, minimum-flow guard bands and valve commands
        self._floor_wiring = [
            (
                lp.name,
                ix.loop[lp.name].flow,
                MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h,
                1.5 * MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h,
                [ix.tank[t.name].valve_cmd for t in topo.loop_tanks[lp.name]]
                + [ix.cdu[c.name].valve_cmd for c in topo.loop_cdus[lp.name]],
            )
            for lp in site.loops
        ]

    def _supply_base(self, lp: Loop) -> float:
        """A cooling loop's supply setpoint before trim & respond."""
        c = self._supply_loop.get(lp.name)
        return lp.supply_setpoint_c if c is None else self.base_setpoint(c)

    def _dp_base(self, dp_point: int) -> float:
        """The site file's ΔP setpoint of the control loop measuring ``dp_point``."""
        for c in self.loops:
            if self._meas[c.name] == dp_point:
                return c.setpoint
        return DP_TRIM_MIN_KPA

    # -- setpoints ------------------------------------------------------------
    def base_setpoint(self, c: ControlLoop) -> float:
        """The loop's setpoint before trim & respond: the command path's, else the file's."""
        return self.state.setpoints.get(c.name, c.setpoint)

    def setpoint(self, c: ControlLoop) -> float:
        """The working setpoint (trim & respond applied)."""
        base = self.base_setpoint(c)
        kind = self._trim_of[c.name]
        if kind is None:
            return base
        if kind[0] == "supply":
            return base + self.supply_reset[kind[1]]
        return max(DP_TRIM_MIN_KPA, base - self.dp_trim[kind[1]])

    def setpoints(self) -> np.ndarray:
        """Every loop's working setpoint, in the site's control-loop order."""
        return np.array([self.setpoint(c) for c in self.loops])

    def _config(self, c: ControlLoop) -> PidConfig:
        if not self.state.tunings and not self._tuned:  # nobody retuned a loop (the rule)
            return self._cfg[c.name]
        tuning = self.state.tunings.get(c.name)
        if tuning != self._tuned.get(c.name):  # an engineer retuned it: rebuild once
            self._cfg[c.name] = pid_config(c, tuning)
            self._cfgs.set(self._k_of[c.name], self._cfg[c.name])
            if tuning is None:
                self._tuned.pop(c.name, None)
            else:
                self._tuned[c.name] = dict(tuning)
        return self._cfg[c.name]

    # -- the step ---------------------------------------------------------------
    def regulate(
        self, view: ScanView, cmds: Cmds, alarms: Alarms, overrides: Mapping[int, Override]
    ) -> None:
        t, dt = view.t, view.dt
        auto = self.state.mode == "auto"
        if auto and self.trim_and_respond:
            self._trim_and_respond(view)
        if self.state.tunings or self._tuned:  # an engineer retuned a loop: its config
            for c in self.loops:
                self._config(c)
        meas_a, ok_a = self._votes(view, self._meas_pts)
        sp_a = self._setpoints()
        meas_l, ok_l, sp_l = meas_a.tolist(), ok_a.tolist(), sp_a.tolist()
        self.last_setpoints = sp_l
        integral, last_meas, output, manual_st = (
            self._integral,
            self._last_meas,
            self._out,
            self._manual,
        )
        # The common path as one array step: automatic, a last output, not leaving
        # manual, a valid measurement and setpoint, no operator's value.
        common = ok_a & np.isfinite(meas_a) & np.isfinite(sp_a) & np.isfinite(output) & ~manual_st
        rare: list[int] = []
        if not auto:
            common[:] = False
        elif overrides:
            for k, a0 in enumerate(self._act0):
                if a0 in overrides:
                    common[k] = False
        if common.all():
            out_a, integral[:] = pid_step_many(
                self._cfgs, integral, last_meas, output, sp_a, meas_a, dt
            )
            last_meas[:] = meas_a
            output[:] = out_a
            outs = out_a.tolist()
        else:
            sel = np.flatnonzero(common)
            out_s, integral[sel] = pid_step_many(
                self._cfgs.take(sel),
                integral[sel],
                last_meas[sel],
                output[sel],
                sp_a[sel],
                meas_a[sel],
                dt,
            )
            last_meas[sel] = meas_a[sel]
            output[sel] = out_s
            rare = np.flatnonzero(~common).tolist()
            outs = output.tolist()
        rare_why: dict[int, str] = {}
        for k in rare:  # the loops off the common path, one by one with ``pid_step``
            outs[k], why = self._step_one(k, view, overrides, auto, meas_l[k], ok_l[k], sp_l[k])
            if why is not None:
                rare_why[k] = why
        pumps = self._pumps
        for k, (c, _, acts, pump_loop) in enumerate(self._wiring):
            out = outs[k]
            why = rare_why.get(k) if rare else None
            meas, sp = meas_l[k], sp_l[k]
            of = (c.name, c.measurement, meas, sp)
            if pump_loop:
                short = not ok_l[k] or meas < sp - DP_SHORT_FRAC * sp
                pumps(t, dt, c, out, why, of, short, view, cmds, alarms)
            else:
                for a in acts:
                    cmds[a] = _loop_cmd(out, why, of)
        floored = self._valve_floors(view, cmds)
        if floored:
            # the zone loops whose valves a floor holds open continue from there
            for k, (c, _, acts, _) in enumerate(self._wiring):
                if acts[0] in floored and overrides.get(acts[0]) is None:
                    meas = meas_l[k] if ok_l[k] else math.nan
                    st = pid_track(self._config(c), self._state(k), sp_l[k], meas, floored[acts[0]])
                    self._set_state(k, st)

    def _step_one(
        self,
        k: int,
        view: ScanView,
        overrides: Mapping[int, Override],
        auto: bool,
        meas: float,
        ok: bool,
        sp: float,
    ) -> tuple[float, str | None]:
        """Loop ``k``'s step off the common path (an operator's value, a bumpless
        start, manual mode, an invalid measurement): its output, and its reason
        where it is not the common one."""
        c, _, acts, _ = self._wiring[k]
        cfg, dt = self._config(c), view.dt
        st = self._state(k)
        manual = None
        ov = overrides.get(acts[0])
        if ov is not None:
            manual = ov.value
        elif not math.isfinite(st.output):
            # Bumpless start: take over from where the plant is now.
            now = self._actuator_position(c, view)
            if now is not None:
                st = pid_step(cfg, PidState(), sp, meas, dt, manual_output=now).state
        if manual is None and not auto and math.isfinite(st.output):
            manual = st.output  # manual/maintenance: hold where it is
        res = pid_step(cfg, st, sp, meas, dt, manual_output=manual, valid=ok)
        self._set_state(k, res.state)
        if res.held:
            return res.output, f"loop {c.name}: measurement bad, holding output"
        if manual is not None and ov is None:
            return res.output, f"loop {c.name}: holding output ({self.state.mode} mode)"
        return res.output, None

    @staticmethod
    def _votes(view: ScanView, points: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``view.vote`` of each of ``points``: (values, usable) arrays."""
        values, usable = view.votes(points)
        return np.array(values, dtype=float), np.array(usable, dtype=bool)

    def _setpoints(self) -> np.ndarray:
        """Every loop's working setpoint (``setpoint``, as an array pass)."""
        sp = self._file_sp.copy()
        for name, v in self.state.setpoints.items():  # the command path's
            k = self._k_of.get(name)
            if k is not None:
                sp[k] = v
        if len(self._sup_k):
            ks = self._sup_k
            sp[ks] = sp[ks] + np.array([self.supply_reset[n] for n in self._sup_loop])
        if len(self._dp_k):
            ks = self._dp_k
            x = sp[ks] - np.array([self.dp_trim[n] for n in self._dp_loop])
            sp[ks] = np.where(x > DP_TRIM_MIN_KPA, x, DP_TRIM_MIN_KPA)  # max(DP_TRIM_MIN_KPA, x)
        return sp

    def _state(self, k: int) -> PidState:
        return PidState(
            float(self._integral[k]),
            float(self._last_meas[k]),
            float(self._out[k]),
            bool(self._manual[k]),
        )

    def _set_state(self, k: int, st: PidState) -> None:
        self._integral[k], self._last_meas[k], self._out[k], self._manual[k] = st

    @property
    def _pid(self) -> dict[str, PidState]:
        """Every loop's PID state by name (the arrays, as records)."""
        return {c.name: self._state(k) for k, c in enumerate(self.loops)}

    def _valve_floors(self, view: ScanView, cmds: Cmds) -> dict[int, float]:
        """Keep a loop's valves open enough for its minimum flow (see the module
        docstring); the valves this raised, with the value they got."""
        floored: dict[int, float] = {}
        for loop, flow_i, guard_below, release_above, valves in self._floor_wiring:
            if not view.good(flow_i):
                continue
            flow = view.val(flow_i)
            floor = self._valve_floor.get(loop, 0.0)
            if flow < guard_below:
                # from where the valves are: a floor that first had to climb to
                # them would let them close for minutes more
                now = [c.value for v in valves if (c := cmds.get(v)) is not None]
                floor = max(floor, min(now, default=0.0))
                floor = min(100.0, floor + VALVE_FLOOR_PCT_S * view.dt)
            elif flow > release_above:
                floor = max(0.0, floor - 0.1 * VALVE_FLOOR_PCT_S * view.dt)
            self._valve_floor[loop] = floor
            if floor <= 0.0:
                continue
            for v in valves:
                cmd = cmds.get(v)
                if cmd is not None and cmd.value < floor:
                    cmd.value = floored[v] = floor
                    cmd.why = f"loop {loop}: valves held at {floor:.0f} % for minimum flow"
        return floored

    def _trim_and_respond(self, view: ScanView) -> None:
        dt = view.dt
        isfinite = math.isfinite
        amb_i = self.topo.ix.plc.ambient_temp
        ambient = view.val(amb_i) if view.good(amb_i) else math.nan
        # every loop's most-open valve (the finite ones; none: 100 %) and whether any
        # of its zones is hot (``loop_hot``), as two grouped array passes
        v = view.values[self._tr_valves].astype(float)
        v = np.append(np.where(np.isfinite(v), v, -math.inf), -math.inf)
        vmax_a = np.maximum.reduceat(v, self._tr_valve_at)
        vmax_l = np.where(self._tr_any & (vmax_a != -math.inf), vmax_a, 100.0).tolist()
        temps, ok = self._votes(view, self._hot_pts)
        hot_a = np.append(~ok | (temps > self._hot_above), False)
        hot_l = (np.logical_or.reduceat(hot_a, self._hot_at_k) & self._hot_any).tolist()
        for lp, vmax, hot in zip(self.topo.site.loops, vmax_l, hot_l, strict=True):
            if vmax > VALVE_WIDE_OPEN_PCT or hot:
                self.supply_reset[lp.name] = max(
                    0.0, self.supply_reset[lp.name] - 4 * SUPPLY_RESET_RATE_K_S * dt
                )
                self.dp_trim[lp.name] = max(
                    0.0, self.dp_trim[lp.name] - 4 * DP_TRIM_RATE_KPA_S * dt
                )
            else:
                reset = self.supply_reset[lp.name]
                up = reset + SUPPLY_RESET_RATE_K_S * dt
                # between the two thresholds nothing moves: the dead band that keeps
                # trim and respond from cycling the valves around 90 %
                if vmax < VALVE_THROTTLED_PCT:
                    reset = max(reset, min(SUPPLY_RESET_MAX_K, up))
                    self.dp_trim[lp.name] = min(
                        self._dp_trim_max[lp.name],
                        self.dp_trim[lp.name] + DP_TRIM_RATE_KPA_S * dt,
                    )
                # not below what the air allows, in the dead band too: a supply
                # setpoint under ambient + approach ran every fan flat out for
                # nothing (12x the cooling energy of a small hall in a heatwave).
                # Wide open or hot, the fans may chase it: every kelvin helps then.
                if isfinite(ambient):
                    floor = ambient + SUPPLY_MIN_APPROACH_K - self._supply_base(lp)
                    reset = max(reset, min(floor, up))
                self.supply_reset[lp.name] = reset

    def _actuator_position(self, c: ControlLoop, view: ScanView) -> float | None:
        """Where the loop's actuators are now (the highest of them), if known."""
        found = []
        for a in self._acts[c.name]:
            rb = self.topo.readback.get(a, a)
            if view.good(rb) and math.isfinite(view.val(rb)):
                found.append(view.val(rb))
        return max(found) if found else None

    def loop_hot(self, loop: str, view: ScanView) -> bool:
        """Any zone on the loop within its soft margin: cooling energy no longer matters."""
        for i, hot_above in self._hot_at[loop]:  # tanks, then CDUs
            temp, ok = view.vote(i)
            if not ok or temp > hot_above:
                return True
        return False

    def _pumps_of(self, c: ControlLoop) -> tuple[list[Pump], Loop, LoopPoints, list[PumpPoints]]:
        """A pump loop's pumps, its cooling loop and their points (found once)."""
        got = self._pump_wiring.get(c.name)
        if got is None:
            ix = self.topo.ix
            pumps = [self._pump_of[a] for a in self._acts[c.name]]
            loop = pumps[0].loop
            got = (
                pumps,
                self.topo.site.loop(loop),
                ix.loop[loop],
                [ix.pump[p.name] for p in pumps],
            )
            self._pump_wiring[c.name] = got
        return got

    def _pumps(
        self,
        t: float,
        dt: float,
        c: ControlLoop,
        out: float,
        why: str | None,
        of: tuple[str, str, float, float],
        short: bool,
        view: ScanView,
        cmds: Cmds,
        alarms: Alarms,
    ) -> None:
        """Duty/standby: one pump regulates ΔP; the standby starts when the duty
        pump faults, or saturates while the loop is ``short`` of its ΔP (fans
        and valves have already had their go). ``why``: the reason of the loop's
        step, None for the common one (``_LoopCmd``, of ``of``)."""
        pumps, lp, lpp, points = self._pumps_of(c)
        texts, (no_pump, none_msg, one_msg) = self._pump_texts[c.name]
        loop = lp.name
        flow = view.val(lpp.flow)
        guard = self._flow_guard.get(loop, 0.0)
        # Low flow with the ΔP made means throttled valves: the valve floor opens
        # them. More speed would only dead-head the pump against them (and push
        # the zone loops to close further), until every valve is floored open.
        pump_helps = short or self._valve_floor.get(loop, 0.0) >= 100.0
        if view.good(lpp.flow) and flow < MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h and pump_helps:
            guard = min(100.0, max(guard, out) + MIN_FLOW_GUARD_PCT_S * dt)
        elif view.good(lpp.flow) and flow > 1.5 * MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h:
            guard = max(0.0, guard - 0.1 * MIN_FLOW_GUARD_PCT_S * dt)
        self._flow_guard[loop] = guard
        if guard > out:
            out = guard
            why = f"loop {loop}: holding minimum flow ({flow:.0f} m3/h)"
        faulted = [
            bool(view.val(pp.fault) >= 0.5) if view.good(pp.fault) else False for pp in points
        ]
        healthy = [p.name for p, f in zip(pumps, faulted, strict=True) if not f]
        # a second pump adds head: worth its start (a dip in flow while it spins
        # up) only where the first cannot make the ΔP
        if out >= 99.0 and short:
            self._standby_sat_s[loop] += dt
        else:
            self._standby_sat_s[loop] = 0.0
        if self._standby_on[loop] and out < STANDBY_STOP_BELOW_PCT:
            self._standby_low_s[loop] += dt
        else:
            self._standby_low_s[loop] = 0.0
        want_two = self._standby_on[loop]
        if self._standby_sat_s[loop] >= STANDBY_START_SAT_S:
            want_two = True
        # stopping one of two pumps about halves the flow: not while that would
        # take the loop into its minimum-flow guard (a sudden load drop closes
        # every valve at once, and the PLC trips the loop on low flow)
        one_pump_ok = view.good(lpp.flow) and flow > 2.0 * MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h
        if self._standby_low_s[loop] >= STANDBY_STOP_S and one_pump_ok:
            want_two = False
        self._standby_on[loop] = want_two
        running = healthy[: 2 if want_two else 1]
        for p, pp, f, (key, raised, cleared, took_over) in zip(
            pumps, points, faulted, texts, strict=True
        ):
            run = p.name in running
            reason = why
            if f:
                reason = took_over
                alarms.alarm(t, key, True, raised, 700)
            else:
                alarms.alarm(t, key, False, cleared)
            cmds[pp.run_cmd] = _loop_cmd(1.0 if run else 0.0, reason, of)
            cmds[pp.speed_cmd] = _loop_cmd(out if run else 0.0, reason, of)
        if not healthy:
            alarms.alarm(t, no_pump, True, none_msg, 900)
        else:
            alarms.alarm(t, no_pump, False, one_msg)


def _group_starts(sizes: list[int]) -> np.ndarray:
    """Where each group of a concatenation starts, for ``ufunc.reduceat`` over it
    with one sentinel element appended (an empty last group starts there). An
    empty group's result is an element of the next: the caller masks it out."""
    return np.cumsum([0, *sizes[:-1]] if sizes else [], dtype=np.intp)
