"""The simulated plant: thermal, hydraulic and electrical model of a site.

Physically grounded and vectorised with numpy; deterministic for a seed.

Thermal
    Each immersion tank is one well-mixed fluid mass (volume x density x cp)
    heated by its IT load and cooled through a counter-flow plate HX whose
    effectiveness follows from both flows (epsilon-NTU). The HX water side is
    throttled by the tank's valve. Each water loop is two lumps (hot header
    after the HXs, cold header after the dry coolers) so heat takes time to
    travel. Dry coolers are epsilon-NTU coils whose air-side capacity and UA
    follow fan speed (UA ~ airflow^0.6, natural draft ~10 %). CDUs are a
    secondary coolant lump with their own HX. Chip temperatures are the local
    coolant plus a thermal resistance times power (a GPU's die settles within
    a second of a step, see shared/data/gpu_step_h200.csv, so it is algebraic
    at a 1 s step). HX fouling drifts over days.
Hydraulic
    Branch flows follow valve conductances (equal-percentage trim) at the
    loop's differential pressure; parallel pumps follow a quadratic curve
    scaled by affinity laws (flow ~ speed, head ~ speed^2, power ~ speed^3);
    the operating point is solved in closed form.
Electrical
    Miners follow their power target along an efficiency curve (J/TH improves
    when underclocked); GPU nodes follow a power cap and demand; PDUs and
    feeders sum their loads; breakers trip on IEC inverse-time curves; the
    site meter sees IT, cooling and house loads, so PUE is real.

Energy accounting is exact by construction (the same fluxes update state and
ledger), and ``Plant.ledger`` exposes it for the energy-balance test.

The plant's design (capacities, conductances, curves and calibrations derived
from the site) is built once by :func:`~thermogate.hil.plantparams.plant_params`
into ``Plant.params``, read-only; this module holds the state and steps it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from thermogate.plc.equipment import GPU_SHARE_OF_NODE_DYNAMIC
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

from .plantparams import plant_params
from .sensors import SensorModel

# -- physical constants and equipment defaults (units in the names) -------
VALVE_STROKE_PCT_S = 1.5  # ~65 s full stroke, a typical actuator
PUMP_RAMP_PCT_S = 5.0  # VFD acceleration ramp
FAN_RAMP_PCT_S = 5.0
PUMP_EFFICIENCY = 0.70  # wire-to-water, constant so affinity laws hold exactly
VALVE_RANGEABILITY = 30.0  # equal-percentage trim R
DC_NATURAL_DRAFT = 0.10  # fraction of design airflow with fans stopped
MINER_J_PER_TH = 16.5  # at nameplate (the site description's default)
GPU_IDLE_W = 120.0  # H200 idle, measured (the site description's default)
GPU_TDP_W = 700.0  # H200 SXM (the site description's default ``gpu_full_w``)
HOUSE_LOAD_KW = 15.0  # lighting, controls, UPS losses
HOUSE_LOAD_FRACTION = 0.005  # of IT load
FOULING_MAX = 0.15  # UA loss when fully fouled
LEVEL_NOMINAL_PCT = 85.0
LEVEL_EXPANSION_PCT_K = 0.07  # dielectric thermal expansion seen on the level gauge
BREAKER_COOL_TAU_S = 120.0  # thermal memory of a breaker after an overload
#: a shed tank's contactors open this long after the relay trips (3 cycles at 60 Hz)
CONTACTOR_OPEN_S = 0.05


# ndarray.sum()/any() go through Python wrappers; the ufunc reductions are
# several times cheaper on the small arrays a plant step is made of.
_sum = np.add.reduce
_any = np.logical_or.reduce


def _clamp(x: np.ndarray, limit: float) -> np.ndarray:
    """Symmetric clamp; np.clip's dispatch costs more than the math on small arrays."""
    return np.minimum(np.maximum(x, -limit), limit)


def _counterflow_eff(ntu: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Counter-flow effectiveness, stable at Cr -> 1 and NTU -> 0."""
    one_minus = 1.0 - cr
    balanced = np.abs(one_minus) < 1e-6
    e = np.exp(-ntu * one_minus)
    den = 1.0 - cr * e
    # den > 0 whenever Cr < 1 or NTU > 0; the balanced case takes its own limit.
    eff = (1.0 - e) / np.where(balanced | (den <= 0.0), 1.0, den)
    return np.where(balanced, ntu / (1.0 + ntu), eff)


def _hx(ua: np.ndarray, c_hot: np.ndarray, c_cold: np.ndarray, dt_in: np.ndarray) -> np.ndarray:
    """Heat (kW) through a counter-flow HX given capacity rates (kW/K)."""
    cmin = np.minimum(c_hot, c_cold)
    cmax = np.maximum(c_hot, c_cold)
    flowing = cmin > 1e-9
    cmin_safe = np.where(flowing, cmin, 1.0)
    cr = cmin_safe / np.where(flowing, cmax, 1.0)
    eff = _counterflow_eff(ua / cmin_safe, cr)
    return np.where(flowing, eff * cmin * dt_in, 0.0)


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
        self._commands = self._bind_commands()
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
        new._commands = new._bind_commands()
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
    def _bind_commands(self) -> dict[str, Callable[[float], None]]:
        cmds: dict[str, Callable[[float], None]] = {}

        def arr(
            a: np.ndarray, i: int, conv: Callable[[float], object] = float
        ) -> Callable[[float], None]:
            def set_(v: float) -> None:
                a[i] = conv(v)

            return set_

        ix, name = self.pmap.index, self.pmap.name_of
        for i, tp in enumerate(ix.tanks):
            cmds[name(tp.valve_cmd)] = arr(self.cmd_valve, i)
            cmds[name(tp.power_budget_kw)] = arr(self.cmd_budget, i)
            cmds[name(tp.enable)] = arr(self.cmd_enable, i, bool)
        for i, cp in enumerate(ix.cdus):
            cmds[name(cp.valve_cmd)] = arr(self.cmd_cdu_valve, i)
        for i, rp in enumerate(ix.rows):
            cmds[name(rp.gpu_power_cap_w)] = arr(self.cmd_gpu_cap, i)
            cmds[name(rp.enable)] = arr(self.cmd_row_enable, i, bool)
        for i, pp in enumerate(ix.pumps):
            cmds[name(pp.speed_cmd)] = arr(self.cmd_pump_speed, i)
            cmds[name(pp.run_cmd)] = arr(self.cmd_pump_run, i, bool)
        for i, dp in enumerate(ix.dry_coolers):
            cmds[name(dp.fan_cmd)] = arr(self.cmd_fan, i)

        def heartbeat(v: float) -> None:
            self.heartbeat = int(v)

        def reset(v: float) -> None:
            if v:
                self.reset_request = True

        def ufls_armed(v: float) -> None:
            self.ufls_armed = bool(v)

        def ufls_release(v: float) -> None:
            if v:
                self.ufls_release_request = True

        cmds[name(ix.plc.heartbeat)] = heartbeat
        cmds[name(ix.plc.reset)] = reset
        cmds[name(ix.plc.ufls_armed)] = ufls_armed
        cmds[name(ix.plc.ufls_release)] = ufls_release
        writable = {p.name for p in self.pmap.writable()}
        missing = writable - cmds.keys()
        if missing:  # the point map and the plant must agree on every command
            raise RuntimeError(f"plant has no actuator for points: {sorted(missing)}")
        return cmds

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
        tank_trip = self.plc.tank_tripped() | self._contactors_open(t)
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
        if _any(self.plc.tank_isolated):
            valve_cmd = np.where(self.plc.tank_isolated, 0.0, valve_cmd)
        if _any(self.plc.loop_isolated):
            pump_run = pump_run & ~self.plc.loop_isolated[par.p_loop]

        # ---- actuators move at their physical rates
        step_v = VALVE_STROKE_PCT_S * dt
        dv = _clamp(valve_cmd - self.valve_pos, step_v)
        dcv = _clamp(cdu_valve_cmd - self.cdu_valve_pos, step_v)
        running = pump_run & ~self.pump_fault & self.b_closed[par.p_breaker]
        target = np.where(running, np.maximum(pump_sp / 100.0, par.p_min_speed), 0.0)
        dps = _clamp(target - self.pump_speed, PUMP_RAMP_PCT_S / 100.0 * dt)
        fans_ok = ~self.fan_fault & self.b_closed[par.d_breaker]
        ftarget = np.where(fans_ok, fan_cmd / 100.0, 0.0)
        self.fan_speed += _clamp(ftarget - self.fan_speed, FAN_RAMP_PCT_S / 100.0 * dt)
        # Flows depend only on valve positions and pump speeds: when none of
        # them moved (most steps once a loop has settled) they are unchanged.
        if self._hydraulics_stale or _any(dv) or _any(dcv) or _any(dps):
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

    def _contactors_open(self, t: float) -> np.ndarray:
        """Tanks the under-frequency relay has shed, once their contactors opened."""
        trip_t = self.plc.relay.state.trip_t
        if trip_t is None or t - trip_t < CONTACTOR_OPEN_S - 1e-9:
            return np.zeros(self.params.n_t, dtype=bool)
        return self.plc.tank_shed()

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
        off = self._contactors_open(t) & (self.t_power > 0.0)
        if not _any(off):
            return relay_changed
        self.t_power_on &= ~off
        self.t_units_on = np.where(off, 0.0, self.t_units_on)
        self.t_power = np.where(off, 0.0, self.t_power)
        self.t_throttled = np.where(off, 0.0, self.t_throttled)
        self._electrical(0.0)  # the meters see it now; no time passes
        self.site_freq = f
        return True

    def _hydraulics(self) -> None:
        # Equal-percentage valves: Kv = Kvs * R^(x-1), closed at 0.
        par = self.params
        x_t = self.valve_pos / 100.0
        kv_t = np.where(x_t > 0.005, par.t_kv * VALVE_RANGEABILITY ** (x_t - 1.0), 0.0)
        x_c = self.cdu_valve_pos / 100.0
        kv_c = np.where(x_c > 0.005, par.c_kv * VALVE_RANGEABILITY ** (x_c - 1.0), 0.0)
        k = (
            np.bincount(par.t_loop, weights=kv_t, minlength=par.n_l)
            + np.bincount(par.c_loop, weights=kv_c, minlength=par.n_l)
            + par.l_k_bypass
        )
        on = self.pump_speed > 0.02
        n = np.bincount(par.p_loop, weights=on, minlength=par.n_l)
        # a worn pump's head falls as speed squared would: its speed counts as sqrt(head) less
        s_eff = np.where(on, self.pump_speed * np.sqrt(self.pump_head_frac), 0.0)
        s_sum = np.bincount(par.p_loop, weights=s_eff, minlength=par.n_l)
        s = np.divide(s_sum, n, out=np.zeros(par.n_l), where=n > 0)
        n_safe = np.maximum(n, 1.0)
        dp = par.l_hmax * s**2 / (1.0 + par.l_r_main * k**2 + par.l_a * k**2 / n_safe**2)
        dp = np.where(n > 0, dp, 0.0)
        # Running pumps at one speed (the common case) share the flow equally: the
        # closed form above. At different speeds (a standby spinning up beside the
        # duty pump) each delivers what its curve gives at the common head, and one
        # whose shut-off head is below it delivers nothing (its check valve shuts);
        # the mean speed above once let a standby at 5 % drag a duty pump at 100 %
        # down to half its head.
        s_sq = np.bincount(par.p_loop, weights=s_eff**2, minlength=par.n_l)
        uneven = (n > 1) & (s_sq * n - s_sum**2 > 1e-9)
        q_pump = None
        if uneven.any():
            dp, q_pump = self._uneven_pumps(k, dp, s_eff, uneven)
        self.dp = dp
        sq = np.sqrt(dp)
        self.flow = k * sq
        self.t_flow = kv_t * sq[par.t_loop]
        self.c_flow = kv_c * sq[par.c_loop]
        head = dp + par.l_r_main * self.flow**2
        hyd_kw = self.flow / 3600.0 * head  # m3/s * kPa = kW
        share = np.where(on, 1.0 / n_safe[par.p_loop], 0.0)
        if q_pump is not None:  # each pump's share of the flow at the common head
            total = np.bincount(par.p_loop, weights=q_pump, minlength=par.n_l)
            mine = np.divide(q_pump, total[par.p_loop], out=np.zeros_like(q_pump),
                             where=total[par.p_loop] > 0)  # fmt: skip
            share = np.where(uneven[par.p_loop], mine, share)
        self.pump_kw = hyd_kw[par.p_loop] * share / PUMP_EFFICIENCY

    def _uneven_pumps(
        self, k: np.ndarray, dp: np.ndarray, s_eff: np.ndarray, uneven: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """ΔP of the loops marked ``uneven`` whose running pumps turn at different
        speeds, and every pump's flow at its loop's head (m3/h).

        Pump i gives H = hmax s_i^2 - a Q_i^2; the loop takes Q = c sqrt(H) with
        c = k / sqrt(1 + r_main k^2). The head where the pumps' flows add up to
        the loop's is found by bisection (the pumps' sum falls with H, the
        loop's rises): 50 halvings of the shut-off head."""
        par = self.params
        lp = par.p_loop
        shut = par.l_hmax[lp] * s_eff**2  # each pump's shut-off head
        a = np.maximum(par.l_a[lp], 1e-12)
        c = k / np.sqrt(1.0 + par.l_r_main * k**2)
        lo = np.zeros(par.n_l)
        hi = np.zeros(par.n_l)
        np.maximum.at(hi, lp, shut)
        for _ in range(50):
            h = 0.5 * (lo + hi)
            q = np.sqrt(np.maximum(shut - h[lp], 0.0) / a)
            over = np.bincount(lp, weights=q, minlength=par.n_l) > c * np.sqrt(h)
            lo = np.where(over, h, lo)
            hi = np.where(over, hi, h)
        h = 0.5 * (lo + hi)
        q_pump = np.where(uneven[lp], np.sqrt(np.maximum(shut - h[lp], 0.0) / a), 0.0)
        dp = np.where(uneven, h / (1.0 + par.l_r_main * k**2), dp)
        return dp, q_pump

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
        self.t_power_on = ~tank_trip & pdu_ok[par.t_pdu]
        run = self.t_power_on & enable & ~self.t_hw_off
        demand_inf = min(max(float(self.env.gpu_demand(t)), 0.0), 1.0)
        # ---- ASIC tanks: per-miner target from the tank budget
        per_unit = budget / par.t_units
        min_kw = par.t_min_kw
        units_on = np.where(per_unit >= min_kw, par.t_units, np.floor(budget / min_kw))
        p_req = np.minimum(np.maximum(per_unit, min_kw), par.t_unit_kw)
        # ---- GPU tanks: the budget caps what the demand would draw
        util = par.t_train_f * (self.env.training_demand - demand_inf) + demand_inf
        util = np.where(np.isnan(self.t_util_override), util, self.t_util_override)
        gpu_node = np.minimum(
            par.t_idle_kw + par.t_dyn_kw * util, np.maximum(per_unit, par.t_idle_kw)
        )
        p_req = np.where(par.t_asic, p_req, gpu_node)
        units_on = np.where(par.t_asic, units_on, par.t_units)
        # Thermal throttling: chips hold their throttle temperature by shedding power.
        p_thermal = (par.t_throttle - self.T_tank) / par.t_r
        p_unit = np.maximum(np.minimum(p_req, p_thermal), par.t_floor_kw)
        chip = self.T_tank + par.t_r * p_unit
        # Hardware self-protection: shut down above the chip trip, restart when cool.
        self.t_hw_off |= run & (chip >= par.t_chip_trip)
        self.t_hw_off &= self.T_tank >= par.t_recover_c
        units_on = np.where(run & ~self.t_hw_off, units_on, 0.0)
        self.t_units_on = units_on
        self.t_p_unit = p_unit
        self.t_power = units_on * p_unit
        self.t_throttled = np.where(p_unit < p_req - 1e-9, units_on, 0.0)
        self.t_chip = np.where(units_on > 0, chip, self.T_tank)

        # ---- direct-to-chip rows
        self.r_power_on = ~row_trip & pdu_ok[par.r_pdu]
        rrun = self.r_power_on & self.cmd_row_enable & ~self.r_hw_off
        rutil = np.where(par.r_train, self.env.training_demand, demand_inf)
        rutil = np.where(np.isnan(self.r_util_override), rutil, self.r_util_override)
        coolant = self.c_supply[par.r_cdu]
        cap = gpu_cap.astype(float)
        idle_w, full_w = par.r_gpu_idle_w, par.r_gpu_full_w
        gpu_w = idle_w + rutil * (np.minimum(cap, full_w) - idle_w)
        # Throttle: a GPU holds its slowdown temperature by lowering power.
        gpu_w_thermal = (par.r_throttle - coolant) / par.r_gpu_r
        gpu_w_eff = np.maximum(np.minimum(gpu_w, gpu_w_thermal), idle_w)
        die = coolant + par.r_gpu_r * gpu_w_eff
        self.r_hw_off |= rrun & (die >= par.r_chip_trip)
        self.r_hw_off &= coolant >= par.r_recover_c
        rrun = rrun & ~self.r_hw_off
        gpu_frac = (gpu_w_eff - idle_w) / (full_w - idle_w)
        other = (1.0 - GPU_SHARE_OF_NODE_DYNAMIC) * rutil + GPU_SHARE_OF_NODE_DYNAMIC * gpu_frac
        node_kw = par.r_idle_kw + (par.r_node_kw - par.r_idle_kw) * other
        self.r_nodes_on = np.where(rrun, par.r_nodes, 0.0)
        self.r_power = self.r_nodes_on * node_kw
        self.r_throttled = np.where(rrun & (gpu_w_eff < gpu_w - 1e-9), par.r_nodes, 0.0)
        self.r_gpu_temp = np.where(rrun, die, coolant)

    def _thermal(self, t: float, dt: float) -> None:
        par = self.params
        t_cold = self.T_cold
        # Fouling drifts the HX UA down over days (the controller must live with it).
        if t >= self._foul_next_t:  # fouling drifts over days: refresh once a minute
            self._ua_t = par.t_ua * (1.0 - FOULING_MAX * (1.0 - np.exp(-t / par.t_foul_tau_s)))
            self._ua_c = par.c_ua * (1.0 - FOULING_MAX * (1.0 - np.exp(-t / par.c_foul_tau_s)))
            self._foul_next_t = t + 60.0
        ua_t, ua_c = self._ua_t, self._ua_c
        cw_t = self.t_flow * par.t_cw_per_m3h
        cw_c = self.c_flow * par.c_cw_per_m3h
        # dry coolers: water shared evenly, air side follows the fans
        c_flow = self.flow * par.l_cw_per_m3h  # kW/K per loop
        cw_d = c_flow[par.d_loop] * par.d_share
        active = (par.d_fans - self.fans_failed) / par.d_fans
        air = np.maximum(self.fan_speed * active, DC_NATURAL_DRAFT)
        # One vectorised epsilon-NTU evaluation for every HX of the site.
        q = _hx(
            np.concatenate((ua_t, ua_c, par.d_ua_design * air**0.6)),
            np.concatenate((par.t_cd, par.c_ctcs, cw_d)),
            np.concatenate((cw_t, cw_c, par.d_cair_design * air)),
            np.concatenate(
                (
                    self.T_tank - t_cold[par.t_loop],
                    self.T_tcs - t_cold[par.c_loop],
                    self.T_hot[par.d_loop] - self.ambient,
                )
            ),
        )
        n_t, n_c = par.n_t, par.n_c
        self.q_tank, self.q_cdu, self.q_dc = q[:n_t], q[n_t : n_t + n_c], q[n_t + n_c :]
        self._cw_t, self._cw_c, self._cw_d = cw_t, cw_c, cw_d
        self.fan_kw = par.d_fans * active * par.d_fan_kw * self.fan_speed**3

        q_branch = np.bincount(par.t_loop, weights=self.q_tank, minlength=par.n_l) + np.bincount(
            par.c_loop, weights=self.q_cdu, minlength=par.n_l
        )
        q_rej = np.bincount(par.d_loop, weights=self.q_dc, minlength=par.n_l)
        q_pump = np.bincount(par.p_loop, weights=self.pump_kw, minlength=par.n_l)
        # row heat goes to its CDU's coolant
        # weighted: float sums (numpy's stubs type every bincount as integer counts)
        q_rows: np.ndarray = np.bincount(par.r_cdu, weights=self.r_power, minlength=par.n_c)
        q_rows = q_rows + self.c_heat_extra_kw
        q_tanks = self.t_power + self.t_heat_extra_kw

        self.T_tank = self.T_tank + dt * (q_tanks - self.q_tank) / par.t_cap
        self.T_tcs = self.T_tcs + dt * (q_rows - self.q_cdu) / par.c_cap
        hot, cold = self.T_hot, self.T_cold
        mix = c_flow * (cold - hot)
        self.T_hot = hot + dt * (mix + q_branch) / par.l_half_cap
        self.T_cold = cold + dt * (-mix - q_rej + q_pump) / par.l_half_cap

        self.c_supply = self.T_tcs - self.q_cdu / par.c_ctcs  # the GPUs' coolant
        self.ledger.heat_in_kj += dt * float(_sum(q_rows) + _sum(q_tanks) + _sum(q_pump))
        self.ledger.heat_rejected_kj += dt * float(_sum(q_rej))

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
        cw = self._cw_t
        ok = cw > 1e-9
        return np.where(
            ok, self.T_cold[self.params.t_loop] + self.q_tank / np.where(ok, cw, 1.0), self.T_tank
        )

    @property
    def c_water_out(self) -> np.ndarray:
        cw = self._cw_c
        ok = cw > 1e-9
        return np.where(
            ok, self.T_cold[self.params.c_loop] + self.q_cdu / np.where(ok, cw, 1.0), self.T_tcs
        )

    @property
    def dc_out(self) -> np.ndarray:
        cw = self._cw_d
        ok = cw > 1e-9
        hot = self.T_hot[self.params.d_loop]
        return np.where(ok, hot - self.q_dc / np.where(ok, cw, 1.0), hot)

    def _electrical(self, dt: float) -> None:
        par = self.params
        it_pdu = np.bincount(par.t_pdu, weights=self.t_power, minlength=par.n_pdu) + np.bincount(
            par.r_pdu, weights=self.r_power, minlength=par.n_pdu
        )
        feeder = np.bincount(par.pdu_feeder, weights=it_pdu, minlength=par.n_f)
        mech = np.bincount(par.p_loop, weights=self.pump_kw, minlength=par.n_l) + np.bincount(
            par.d_loop, weights=self.fan_kw, minlength=par.n_l
        )
        feeder += np.bincount(par.l_feeder, weights=mech, minlength=par.n_f)
        power = np.concatenate([it_pdu, feeder])
        current = power / par.b_kw_per_a
        ratio = current / par.b_pickup
        over = ratio > 1.0
        cooled = self.b_heat * math.exp(-dt / BREAKER_COOL_TAU_S)
        if _any(over):
            t_trip = par.b_k / (np.where(over, ratio, 2.0) ** par.b_a - 1.0)
            self.b_heat = np.where(over, self.b_heat + dt / t_trip, cooled)
            tripping = self.b_closed & (self.b_heat >= 1.0)
            for i in np.flatnonzero(tripping).tolist():
                name = (
                    self.site.pdus[i].name
                    if i < par.n_pdu
                    else self.site.feeders[i - par.n_pdu].name
                )
                self.events.append((self.t + dt, f"breaker {name} tripped at {current[i]:.0f} A"))
            self.b_closed &= ~tripping
        else:
            self.b_heat = cooled
        self.b_power = power
        self.b_current = current
        self.b_energy += power * dt / 3600.0

        self.it_kw = float(_sum(self.t_power) + _sum(self.r_power))
        self.cooling_kw = float(_sum(mech))
        house = HOUSE_LOAD_KW + HOUSE_LOAD_FRACTION * self.it_kw
        self.site_kw = float(_sum(feeder)) + house
        self.site_kwh += self.site_kw * dt / 3600.0
        v = self.site.meter_voltage_v * (1.0 - 0.01 * self.site_kw / self.site.import_limit_kw)
        self.site_voltage = v
        self.site_current = self.site_kw * 1000.0 / (math.sqrt(3.0) * v * 0.97)
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
        if _any(self.tank_leak) or _any(self.loop_leak) or _any(self.cdu_leak):
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
