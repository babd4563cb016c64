"""The simulated plant: thermal, hydraulic and electrical model of a site.

Physically grounded and vectorised with numpy; deterministic for a seed. The
physics lives beside this module, as pure functions of the design and the
state this module passes them:

``thermal``      heat exchangers (epsilon-NTU), fluid lumps, fouling
``hydraulics``   valves, pumps and the loops' operating point
``loads``        miners, GPU tanks and rack rows answering their commands
``electrical``   feeds, breakers, the site meter, the UFLS contactors

The plant's design (capacities, conductances, curves and calibrations derived
from the site) is built once by :func:`~thermogate.hil.plantparams.plant_params`
into ``Plant.params``, read-only. This module holds the state, applies the
PLC's overrides and the actuators' rates, and steps the parts in order: PLC,
actuators, hydraulics, loads, thermal, electrical.

Energy accounting is exact by construction (the same fluxes update state and
ledger), and ``Plant.ledger`` exposes it for the energy-balance test.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from thermogate.plc.logic import PlcInputs, PlcLogic
from thermogate.plc.pointmap import (
    STATUS_HEARTBEAT_OK,
    STATUS_INTERLOCK,
    STATUS_LEAK,
    STATUS_SAFE_STATE,
    STATUS_UFLS_TRIPPED,
    PointMap,
    build_point_map,
)
from thermogate.plc.site import Site

from .arrays import clamp, fany
from .commands import bind_commands
from .electrical import CONTACTOR_OPEN_S as CONTACTOR_OPEN_S
from .electrical import breaker_name, breakers, contactors_open, feeds, site_meter
from .hydraulics import solve_flows
from .loads import row_loads, tank_loads
from .plantparams import plant_params
from .sensors import SensorModel
from .thermal import fouled_ua, thermal_step, water_out
from .thermal import hx as _hx  # noqa: F401  (re-exported: the physics tests import it)

# -- physical constants and equipment defaults (units in the names) -------
VALVE_STROKE_PCT_S = 1.5  # ~65 s full stroke, a typical actuator
PUMP_RAMP_PCT_S = 5.0  # VFD acceleration ramp
FAN_RAMP_PCT_S = 5.0
MINER_J_PER_TH = 16.5  # at nameplate (the site description's default)
GPU_IDLE_W = 120.0  # H200 idle, measured (the site description's default)
GPU_TDP_W = 700.0  # H200 SXM (the site description's default ``gpu_full_w``)
LEVEL_NOMINAL_PCT = 85.0
LEVEL_EXPANSION_PCT_K = 0.07  # dielectric thermal expansion seen on the level gauge


@dataclass
class Ledger:
    """Cumulative energy flows (kJ) for the energy-balance check."""

    heat_in_kj: float = 0.0  # IT load + pump heat
    heat_rejected_kj: float = 0.0  # dry coolers
    it_kwh: float = 0.0
    cooling_kwh: float = 0.0
    site_kwh: float = 0.0


@dataclass
class Environment:
    """What the outside world does to the plant at time ``t`` (seconds)."""

    ambient_c: Callable[[float], float] = lambda t: 25.0
    rh_pct: Callable[[float], float] = lambda t: 50.0
    gpu_demand: Callable[[float], float] = field(
        default=lambda t: 0.65 + 0.25 * math.sin(2 * math.pi * (t / 86400.0 - 0.375))
    )
    training_demand: float = 0.95
    grid_frequency_hz: Callable[[float], float | None] = lambda t: None


class Plant:
    """The whole site, stepped with a fixed ``dt``; commands arrive as writes."""

    def __init__(
        self,
        site: Site,
        pmap: PointMap | None = None,
        *,
        seed: int = 0,
        dt: float = 1.0,
        env: Environment | None = None,
        initial_temp_c: float | None = None,
        sensors: bool = True,
    ) -> None:
        self.site = site
        self.pmap = pmap or build_point_map(site)
        self.dt = float(dt)
        self.t = 0.0
        self.env = env or Environment()
        self.rng = np.random.default_rng(seed)
        self.ledger = Ledger()
        self.plc = PlcLogic(site)
        self.events: list[tuple[float, str]] = []
        self.params = plant_params(site, self.rng)
        self._build_state(initial_temp_c)
        self.sensors = SensorModel(self, seed=seed + 1, enabled=sensors)
        self._commands = bind_commands(self)
        self.sensors.bind()
        self._evaluate()

    def start_idle(self) -> None:
        """Start as a PLC holds a hall no controller has run yet: its safe-state
        outputs as the commands (mining tanks disabled, GPU tanks' budgets and
        rack rows' caps at the PLC's safe GPU cap), the loads evaluated anew.

        The served plant starts so, as a real hall meets a controller that
        starts after it. With every load at its rating (the lockstep studies'
        start) the demo hall stood over its grid import limit before the
        controller's first scan, and ``thermogate run`` opened on an import alarm."""
        # in place: the command table is bound to these arrays
        self.cmd_enable[:], self.cmd_budget[:], self.cmd_gpu_cap[:] = self._safe_loads()
        self._evaluate()

    def _safe_loads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The PLC's safe-state limits on the loads: (tanks that may run, tank
        budgets in kW, rack rows' GPU caps in W): mining off, GPUs at the safe cap."""
        par = self.params
        frac = self.site.plc.safe_gpu_cap_pct / 100.0
        return ~par.t_asic, np.where(par.t_asic, 0.0, frac * par.t_rated), frac * par.r_gpu_full_w

    def __deepcopy__(self, memo: dict[int, object]) -> Plant:
        """A plant that runs on from this one's state, apart from it (a study's what-if).

        The command table and the sensors' bindings are closures over this
        plant's arrays: copied as they are, the copy's writes and readings would
        reach this plant. They are bound anew to the copy's own arrays."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "_commands":
                new.__dict__[k] = copy.deepcopy(v, memo)
        new._commands = bind_commands(new)
        new.sensors.groups = []
        new.sensors.bind()
        return new

    def _evaluate(self) -> None:
        """Compute flows, loads and meters for the initial state without advancing time,
        so a master that connects before the first step sees a running hall."""
        par = self.params
        no_trip_t = np.zeros(par.n_t, dtype=bool)
        no_trip_r = np.zeros(par.n_r, dtype=bool)
        self._hydraulics()
        self._loads(
            self.t, self.cmd_enable, self.cmd_budget, self.cmd_gpu_cap, no_trip_t, no_trip_r
        )
        self._thermal(self.t, 0.0)
        self._electrical(0.0)

    # ==================================================================
    # state (the design is ``self.params``, see plantparams.py)
    # ==================================================================
    def _build_state(self, initial_temp_c: float | None) -> None:
        par = self.params
        amb = self.env.ambient_c(0.0)
        loop_sp = np.array([lp.supply_setpoint_c for lp in self.site.loops])
        t0_loop = loop_sp if initial_temp_c is None else np.full(par.n_l, initial_temp_c)
        self.T_cold = t0_loop.copy()
        self.T_hot = t0_loop + 4.0
        t_sp = np.array([t.limits.fluid_setpoint_c for t in self.site.tanks])
        self.T_tank = t_sp - 3.0 if initial_temp_c is None else np.full(par.n_t, initial_temp_c)
        c_sp = np.array([c.supply_setpoint_c for c in self.site.cdus])
        self.T_tcs = c_sp + 5.0 if initial_temp_c is None else np.full(par.n_c, initial_temp_c)
        self.ambient = amb
        self.rh = float(self.env.rh_pct(0.0))

        # commands as written by the controller (engineering units)
        self.cmd_valve = np.full(par.n_t, 60.0)
        self.cmd_budget = par.t_rated.copy()
        self.cmd_enable = np.ones(par.n_t, dtype=bool)
        self.cmd_cdu_valve = np.full(par.n_c, 60.0)
        self.cmd_gpu_cap = par.r_gpu_full_w.copy()
        self.cmd_row_enable = np.ones(par.n_r, dtype=bool)
        n_p, n_d = len(par.p_loop), len(par.d_loop)
        # Duty/standby: the first pump of each loop runs, the others stand by.
        first = np.zeros(n_p, dtype=bool)
        first[np.unique(par.p_loop, return_index=True)[1]] = True
        self.cmd_pump_run = first.copy()
        self.cmd_pump_speed = np.full(n_p, 70.0)
        self.cmd_fan = np.full(n_d, 50.0)
        self.heartbeat = 0
        self.heartbeat_timeout_s = self.site.plc.heartbeat_timeout_s
        self.reset_request = False
        self.ufls_armed = self.site.grid.under_frequency_armed
        self.ufls_release_request = False

        # actuator states
        self.valve_pos = self.cmd_valve.copy()
        self.cdu_valve_pos = self.cmd_cdu_valve.copy()
        self.pump_speed = np.where(first, 0.7, 0.0)
        self.fan_speed = np.full(n_d, 0.5)
        self.pump_fault = np.zeros(n_p, dtype=bool)
        self.fan_fault = np.zeros(n_d, dtype=bool)  # whole unit tripped
        self.fans_failed = np.zeros(n_d)  # individual fans out of service
        self.tank_leak = np.zeros(par.n_t, dtype=bool)
        # A GPU scheduler in the loop (``set_gpu_utilisation``) replaces the
        # environment's demand per tank and row; NaN: the environment's.
        self.t_util_override = np.full(par.n_t, np.nan)
        self.r_util_override = np.full(par.n_r, np.nan)
        # heat a test adds to a tank's fluid or a CDU's coolant (kW), beside the IT
        # load: no meter sees it and no command sheds it, only the cooling answers it
        self.t_heat_extra_kw = np.zeros(par.n_t)
        self.pump_head_frac = np.ones(len(par.p_loop))  # 1 = as new; a worn impeller less
        self.c_heat_extra_kw = np.zeros(par.n_c)
        self.loop_leak = np.zeros(par.n_l, dtype=bool)
        self.cdu_leak = np.zeros(par.n_c, dtype=bool)

        # derived quantities (filled by step)
        self.flow = np.zeros(par.n_l)
        self.dp = np.zeros(par.n_l)
        self.t_flow = np.zeros(par.n_t)
        self.c_flow = np.zeros(par.n_c)
        self.q_tank = np.zeros(par.n_t)
        self.q_cdu = np.zeros(par.n_c)
        self.q_dc = np.zeros(n_d)
        self._cw_t = np.zeros(par.n_t)
        self._cw_c = np.zeros(par.n_c)
        self._cw_d = np.zeros(n_d)
        self.pump_kw = np.zeros(n_p)
        self.fan_kw = np.zeros(n_d)
        self.t_power = np.zeros(par.n_t)
        self.t_units_on = par.t_units.copy()
        self.t_throttled = np.zeros(par.n_t)
        self.t_chip = self.T_tank.copy()
        self.t_p_unit = par.t_unit_kw.copy()
        self.t_hw_off = np.zeros(par.n_t, dtype=bool)  # chips' own thermal shutdown
        self.t_power_on = np.ones(par.n_t, dtype=bool)
        self.r_power = np.zeros(par.n_r)
        self.r_gpu_temp = np.zeros(par.n_r)
        self.r_throttled = np.zeros(par.n_r)
        self.r_nodes_on = par.r_nodes.copy()
        self.r_hw_off = np.zeros(par.n_r, dtype=bool)
        self.r_power_on = np.ones(par.n_r, dtype=bool)
        self.c_supply = self.T_tcs.copy()
        self.b_closed = np.ones(par.n_pdu + par.n_f, dtype=bool)
        self.b_heat = np.zeros(par.n_pdu + par.n_f)  # inverse-time integral, trips at 1
        self.b_current = np.zeros(par.n_pdu + par.n_f)
        self.b_power = np.zeros(par.n_pdu + par.n_f)
        self.b_energy = np.zeros(par.n_pdu + par.n_f)
        self.site_kw = 0.0
        self.site_kwh = 0.0
        self.site_current = 0.0
        self.site_voltage = self.site.meter_voltage_v
        self.site_freq = self.site.frequency_hz
        self.it_kw = 0.0
        self.cooling_kw = 0.0
        self.grid_request_kw = 0.0
        self._foul_next_t = -1.0
        self._hydraulics_stale = True
        self._ua_t = par.t_ua
        self._ua_c = par.c_ua
        self.price = 0.0

    # ==================================================================
    # commands (writes from the controller, via Modbus or lockstep)
    # ==================================================================
    def write(self, name: str, value: float) -> None:
        """Apply a command in engineering units; range-checked against the map."""
        p = self.pmap.by_name.get(name)
        if p is None or not p.writable:
            raise KeyError(f"'{name}' is not a writable point")
        v = float(value)
        if math.isnan(v) or (p.min is not None and v < p.min) or (p.max is not None and v > p.max):
            raise ValueError(f"{name}: {value} is outside {p.min}..{p.max} {p.unit}")
        self._commands[name](v)

    def command_value(self, name: str) -> float:
        """The current value of a command point (what a read-back returns)."""
        return float(self.sensors.truth_of(name))

    # ==================================================================
    # stepping
    # ==================================================================
    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._step_once()

    def _step_once(self) -> None:
        par = self.params
        dt = self.dt
        t = self.t + dt
        self.ambient = float(self.env.ambient_c(t))
        self.rh = float(self.env.rh_pct(t))

        # ---- PLC: reads its own I/O (the measured, possibly faulty values)
        meas = self.sensors.plc_view()
        inp = PlcInputs(
            heartbeat=self.heartbeat,
            reset=self.reset_request,
            tank_temp_a=meas["tank_a"],
            tank_temp_b=meas["tank_b"],
            tank_leak=self.tank_leak,
            loop_flow=meas["loop_flow"],
            loop_leak=self.loop_leak,
            cdu_supply=meas["cdu_supply"],
            cdu_leak=self.cdu_leak,
            frequency_hz=self.grid_frequency(t),
            ufls_armed=self.ufls_armed,
            ufls_release=self.ufls_release_request,
        )
        pumps_cmd = np.bincount(par.p_loop, weights=self.cmd_pump_run, minlength=par.n_l) > 0
        self.plc.step(t, inp, pumps_cmd)
        self.reset_request = self.ufls_release_request = False
        if self.plc.events:
            self.events.extend(self.plc.events)
            self.plc.events.clear()
        safe = self.plc.safe_state
        tank_trip = self.plc.tank_tripped() | contactors_open(self.plc, t, self.params.n_t)
        row_trip = self.plc.row_tripped()
        if inp.reset:
            closed_before = self.b_closed.copy()
            self.b_closed[:] = True  # remote reclose of tripped breakers with the reset
            self.b_heat[~closed_before] = 0.0

        # ---- effective commands after the PLC's overrides
        if safe:
            valve_cmd = np.full(par.n_t, 100.0)
            cdu_valve_cmd = np.full(par.n_c, 100.0)
            pump_run = np.ones_like(self.cmd_pump_run)
            pump_sp = np.full(len(par.p_loop), 100.0)
            fan_cmd = np.full(len(par.d_loop), 100.0)
            safe_enable, safe_budget, safe_gpu_cap = self._safe_loads()
            enable = self.cmd_enable & safe_enable
            budget = np.minimum(self.cmd_budget, safe_budget)
            gpu_cap = np.minimum(self.cmd_gpu_cap, safe_gpu_cap)
        else:
            valve_cmd, cdu_valve_cmd = self.cmd_valve, self.cmd_cdu_valve
            pump_run, pump_sp, fan_cmd = self.cmd_pump_run, self.cmd_pump_speed, self.cmd_fan
            enable, budget, gpu_cap = self.cmd_enable, self.cmd_budget, self.cmd_gpu_cap
        if fany(self.plc.tank_isolated):
            valve_cmd = np.where(self.plc.tank_isolated, 0.0, valve_cmd)
        if fany(self.plc.loop_isolated):
            pump_run = pump_run & ~self.plc.loop_isolated[par.p_loop]

        # ---- actuators move at their physical rates
        step_v = VALVE_STROKE_PCT_S * dt
        dv = clamp(valve_cmd - self.valve_pos, step_v)
        dcv = clamp(cdu_valve_cmd - self.cdu_valve_pos, step_v)
        running = pump_run & ~self.pump_fault & self.b_closed[par.p_breaker]
        target = np.where(running, np.maximum(pump_sp / 100.0, par.p_min_speed), 0.0)
        dps = clamp(target - self.pump_speed, PUMP_RAMP_PCT_S / 100.0 * dt)
        fans_ok = ~self.fan_fault & self.b_closed[par.d_breaker]
        ftarget = np.where(fans_ok, fan_cmd / 100.0, 0.0)
        self.fan_speed += clamp(ftarget - self.fan_speed, FAN_RAMP_PCT_S / 100.0 * dt)
        # Flows depend only on valve positions and pump speeds: when none of
        # them moved (most steps once a loop has settled) they are unchanged.
        if self._hydraulics_stale or fany(dv) or fany(dcv) or fany(dps):
            self.valve_pos += dv
            self.cdu_valve_pos += dcv
            self.pump_speed += dps
            self._hydraulics()
            self._hydraulics_stale = False
        self._loads(t, enable, budget, gpu_cap, tank_trip, row_trip)
        self._thermal(t, dt)
        self._electrical(dt)
        self.t = t

    def grid_frequency(self, t: float) -> float:
        """The grid's frequency at ``t`` (the scenario's, else nominal)."""
        f = self.env.grid_frequency_hz(t)
        return self.site.frequency_hz if f is None else float(f)

    def fast_cycle(self, t: float) -> bool:
        """The PLC's fast cycle at ``t`` (between two plant steps, ``t`` at most
        one step ahead): the under-frequency relay and the contactors it opens,
        and the meter that sees them. Returns whether the relay or the load changed.

        The served plant runs this every few milliseconds, so a shed does not
        wait for the next plant step, as a relay does not wait for a scan."""
        f = self.grid_frequency(t)
        self.site_freq = f
        release, self.ufls_release_request = self.ufls_release_request, False
        was = self.plc.relay.state.tripped
        relay_changed = self.plc.relay_step(t, f, self.ufls_armed, release) != was
        if self.plc.events:
            self.events.extend(self.plc.events)
            self.plc.events.clear()
        off = contactors_open(self.plc, t, self.params.n_t) & (self.t_power > 0.0)
        if not fany(off):
            return relay_changed
        self.t_power_on &= ~off
        self.t_units_on = np.where(off, 0.0, self.t_units_on)
        self.t_power = np.where(off, 0.0, self.t_power)
        self.t_throttled = np.where(off, 0.0, self.t_throttled)
        self._electrical(0.0)  # the meters see it now; no time passes
        self.site_freq = f
        return True

    def _hydraulics(self) -> None:
        self.dp, self.flow, self.t_flow, self.c_flow, self.pump_kw = solve_flows(
            self.params, self.valve_pos, self.cdu_valve_pos, self.pump_speed, self.pump_head_frac
        )

    def _loads(
        self,
        t: float,
        enable: np.ndarray,
        budget: np.ndarray,
        gpu_cap: np.ndarray,
        tank_trip: np.ndarray,
        row_trip: np.ndarray,
    ) -> None:
        par = self.params
        pdu_ok = self.b_closed[: par.n_pdu] & self.b_closed[par.n_pdu + par.pdu_feeder]
        demand_inf = min(max(float(self.env.gpu_demand(t)), 0.0), 1.0)
        tl = tank_loads(
            par,
            power_on=~tank_trip & pdu_ok[par.t_pdu],
            enable=enable,
            budget=budget,
            hw_off=self.t_hw_off,
            fluid_c=self.T_tank,
            demand_inf=demand_inf,
            training_demand=self.env.training_demand,
            util_override=self.t_util_override,
        )
        self.t_power_on, self.t_hw_off, self.t_units_on, self.t_p_unit = tl[:4]
        self.t_power, self.t_throttled, self.t_chip = tl[4:]
        rl = row_loads(
            par,
            power_on=~row_trip & pdu_ok[par.r_pdu],
            enable=self.cmd_row_enable,
            gpu_cap=gpu_cap,
            hw_off=self.r_hw_off,
            coolant_c=self.c_supply[par.r_cdu],
            demand_inf=demand_inf,
            training_demand=self.env.training_demand,
            util_override=self.r_util_override,
        )
        self.r_power_on, self.r_hw_off, self.r_nodes_on = rl[:3]
        self.r_power, self.r_throttled, self.r_gpu_temp = rl[3:]

    def _thermal(self, t: float, dt: float) -> None:
        par = self.params
        if t >= self._foul_next_t:  # fouling drifts over days: refresh once a minute
            self._ua_t = fouled_ua(par.t_ua, t, par.t_foul_tau_s)
            self._ua_c = fouled_ua(par.c_ua, t, par.c_foul_tau_s)
            self._foul_next_t = t + 60.0
        th = thermal_step(
            par,
            dt,
            T_tank=self.T_tank,
            T_tcs=self.T_tcs,
            T_hot=self.T_hot,
            T_cold=self.T_cold,
            ambient_c=self.ambient,
            ua_t=self._ua_t,
            ua_c=self._ua_c,
            t_flow=self.t_flow,
            c_flow=self.c_flow,
            loop_flow=self.flow,
            fan_speed=self.fan_speed,
            fans_failed=self.fans_failed,
            pump_kw=self.pump_kw,
            t_power=self.t_power,
            r_power=self.r_power,
            t_heat_extra_kw=self.t_heat_extra_kw,
            c_heat_extra_kw=self.c_heat_extra_kw,
        )
        self.T_tank, self.T_tcs, self.T_hot, self.T_cold = th[:4]
        self.q_tank, self.q_cdu, self.q_dc = th.q_tank, th.q_cdu, th.q_dc
        self._cw_t, self._cw_c, self._cw_d = th.cw_t, th.cw_c, th.cw_d
        self.fan_kw, self.c_supply = th.fan_kw, th.c_supply
        self.ledger.heat_in_kj += dt * th.heat_in_kw
        self.ledger.heat_rejected_kj += dt * th.heat_rejected_kw

    # Values only sensors need: computed when sampled, not every step.
    @property
    def t_hash(self) -> np.ndarray:
        """Hashrate (TH/s) per tank: J/TH improves as a miner is underclocked."""
        par = self.params
        frac = self.t_p_unit / par.t_unit_kw
        return np.where(par.t_asic, self.t_units_on * par.t_th_nom * frac**par.t_hash_exp, 0.0)

    @property
    def t_return(self) -> np.ndarray:
        return self.T_tank - self.q_tank / self.params.t_cd

    @property
    def t_water_out(self) -> np.ndarray:
        return water_out(self.T_cold[self.params.t_loop], self.q_tank, self._cw_t, self.T_tank)

    @property
    def c_water_out(self) -> np.ndarray:
        return water_out(self.T_cold[self.params.c_loop], self.q_cdu, self._cw_c, self.T_tcs)

    @property
    def dc_out(self) -> np.ndarray:
        cw = self._cw_d
        ok = cw > 1e-9
        hot = self.T_hot[self.params.d_loop]
        return np.where(ok, hot - self.q_dc / np.where(ok, cw, 1.0), hot)

    def _electrical(self, dt: float) -> None:
        par = self.params
        f = feeds(par, self.t_power, self.r_power, self.pump_kw, self.fan_kw)
        br = breakers(par, f.breaker_kw, self.b_heat, self.b_closed, dt)
        self.b_heat = br.heat
        if br.tripping is not None:
            for i in np.flatnonzero(br.tripping).tolist():
                name = breaker_name(self.site, par, i)
                msg = f"breaker {name} tripped at {br.current_a[i]:.0f} A"
                self.events.append((self.t + dt, msg))
            self.b_closed &= ~br.tripping
        self.b_power = f.breaker_kw
        self.b_current = br.current_a
        self.b_energy += f.breaker_kw * dt / 3600.0

        m = site_meter(self.site, self.t_power, self.r_power, f)
        self.it_kw, self.cooling_kw, self.site_kw = m.it_kw, m.cooling_kw, m.site_kw
        self.site_kwh += self.site_kw * dt / 3600.0
        self.site_voltage, self.site_current = m.voltage_v, m.current_a
        self.site_freq = self.grid_frequency(self.t + dt)
        self.ledger.it_kwh += self.it_kw * dt / 3600.0
        self.ledger.cooling_kwh += self.cooling_kw * dt / 3600.0
        self.ledger.site_kwh = self.site_kwh

    # ==================================================================
    # views
    # ==================================================================
    def stored_heat_kj(self) -> float:
        """Heat stored above 0 degC in every fluid mass (for the energy balance)."""
        par = self.params
        return float(
            (par.t_cap * self.T_tank).sum()
            + (par.c_cap * self.T_tcs).sum()
            + (par.l_half_cap * (self.T_hot + self.T_cold)).sum()
        )

    def plc_status_word(self) -> int:
        w = 0
        if self.plc.safe_state:
            w |= STATUS_SAFE_STATE
        if self.plc.any_interlock():
            w |= STATUS_INTERLOCK
        if self.plc.heartbeat_age_s < self.heartbeat_timeout_s:
            w |= STATUS_HEARTBEAT_OK
        if fany(self.tank_leak) or fany(self.loop_leak) or fany(self.cdu_leak):
            w |= STATUS_LEAK
        if self.plc.relay.state.tripped:
            w |= STATUS_UFLS_TRIPPED
        return w

    @property
    def pue(self) -> float:
        return self.site_kw / self.it_kw if self.it_kw > 1.0 else float("nan")

    def status(self) -> dict[str, object]:
        """A plain-dict snapshot for reports and the console."""
        return {
            "t_s": self.t,
            "ambient_c": round(self.ambient, 2),
            "site_kw": round(self.site_kw, 1),
            "it_kw": round(self.it_kw, 1),
            "cooling_kw": round(self.cooling_kw, 1),
            "pue": round(self.pue, 3) if self.it_kw > 1.0 else None,
            "max_tank_c": round(float(self.T_tank.max()), 2) if self.params.n_t else None,
            "loops": {
                lp.name: {
                    "supply_c": round(float(self.T_cold[i]), 2),
                    "return_c": round(float(self.T_hot[i]), 2),
                    "flow_m3h": round(float(self.flow[i]), 1),
                    "dp_kpa": round(float(self.dp[i]), 1),
                }
                for i, lp in enumerate(self.site.loops)
            },
            "plc": self.plc.status(),
        }

    # ==================================================================
    # faults (driven by scenarios)
    # ==================================================================
    def set_gpu_utilisation(self, name: str, util: float | None) -> None:
        """A GPU scheduler's word on a GPU tank or rack row: the busy fraction of its
        GPUs (0..1) from now on; ``None`` hands it back to the environment's demand."""
        u = math.nan if util is None else min(max(float(util), 0.0), 1.0)
        tanks = [t.name for t in self.site.tanks]
        if name in tanks and self.site.tanks[tanks.index(name)].workload == "gpu":
            self.t_util_override[tanks.index(name)] = u
            return
        rows = [r.name for r in self.site.rack_rows]
        self.r_util_override[self._index(rows, name, "GPU tank or rack row")] = u

    def add_heat(self, zone: str, kw: float) -> None:
        """Heat ``kw`` (>= 0) into a tank's fluid or a CDU's coolant from now on, on
        top of its IT load; 0 removes it. A test disturbance: no power meter sees
        it and no command sheds it (``thermogate bench headroom`` steps zones
        with it to find how much heat they really take)."""
        if not (math.isfinite(kw) and kw >= 0.0):
            raise ValueError(f"heat for {zone} must be a finite kW >= 0, got {kw!r}")
        tanks = [t.name for t in self.site.tanks]
        if zone in tanks:
            self.t_heat_extra_kw[tanks.index(zone)] = kw
            return
        cdus = [c.name for c in self.site.cdus]
        self.c_heat_extra_kw[self._index(cdus, zone, "tank or CDU")] = kw

    def degrade_pump(self, name: str, head_frac: float) -> None:
        """A worn pump: from now on it delivers ``head_frac`` (0 < x <= 1) of its
        design head at any speed (the controller sees less flow and speeds up)."""
        if not (math.isfinite(head_frac) and 0.0 < head_frac <= 1.0):
            raise ValueError(f"pump {name}: head fraction must be in (0, 1], got {head_frac!r}")
        i = self._index([p.name for p in self.site.pumps], name, "pump")
        self.pump_head_frac[i] = head_frac
        self.events.append((self.t, f"pump {name} degraded to {head_frac:.0%} of its head"))

    def set_equipment_fault(self, category: str, name: str, kind: str, active: bool) -> None:
        """Trip or restore a pump or fan, start or stop a leak."""
        if category == "pump":
            i = self._index([p.name for p in self.site.pumps], name, "pump")
            self.pump_fault[i] = active
        elif category == "fan":
            i = self._index([d.name for d in self.site.dry_coolers], name, "dry cooler")
            self.fan_fault[i] = active
        elif category == "leak":
            names_t = [t.name for t in self.site.tanks]
            names_l = [lp.name for lp in self.site.loops]
            names_c = [c.name for c in self.site.cdus]
            if name in names_t:
                self.tank_leak[names_t.index(name)] = active
            elif name in names_l:
                self.loop_leak[names_l.index(name)] = active
            elif name in names_c:
                self.cdu_leak[names_c.index(name)] = active
            else:
                raise KeyError(f"leak target '{name}' is not a tank, loop or CDU of this site")
        else:
            raise KeyError(f"unknown equipment fault category '{category}'")
        self.events.append(
            (self.t, f"fault {'injected' if active else 'cleared'}: {category}:{name} {kind}")
        )

    @staticmethod
    def _index(names: list[str], name: str, what: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise KeyError(f"no {what} named '{name}' on this site") from None
