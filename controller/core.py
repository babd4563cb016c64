"""The control core: one scan as a function of (observation, state, configuration).

No I/O and no clock reads: the time comes in with the observation, the
commands go out as ``Write`` records. The same core runs in real time over
Modbus (``controller.run``) and in lockstep with the simulated plant far
faster than real time (``controller.simulate``).

One scan, in the order of ``DESIGN.md``::

    estimate   validate every measurement; quality travels with the value
    protect    fail-safe zones, thermal and power limits, shedding order
               (never uses the learned model)
    regulate   PID loops from the site description, with coordination
    plan       permits and budgets per workload class (the planner seam)
    actuate    range and rate limits, deadband, read-back verification

Precedence is fixed: hard interlocks (the PLC's) > operator manual override >
grid commitments (the import limit) > thermal and power headroom >
economics (the planner). Mining is shed first, then training, then inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from thermogate.plc.pointmap import STATUS_SAFE_STATE, PointMap
from thermogate.plc.records import PLAN_HORIZONS_MIN
from thermogate.plc.site import ControlLoop, Site

from .estimate import Estimator
from .pid import PidConfig, PidState, pid_step
from .signals import BAD, GOOD, Event, Observation, Write

# -- protection constants (units in the names) ------------------------------
THERMAL_SOFT_MARGIN_K = 2.5  # start shedding this far below a zone's alarm limit
THERMAL_SHED_KW_PER_K_S = 0.004  # shed rate: fraction of rated per K above soft limit, per s
THERMAL_RESTORE_FRAC_S = 0.002  # restore rate: fraction of rated per s when cool
THERMAL_RESTORE_BELOW_K = 1.5  # restore only when this far below the soft limit
ALARM_HYSTERESIS_K = 1.0
POWER_SHED_AT = 0.98  # shed when a measured load exceeds this fraction of its limit
POWER_SHED_TO = 0.95  # ... down to this fraction
POWER_RESTORE_BELOW = 0.92  # restore when below this fraction
POWER_RESTORE_FRAC_S = 0.005  # restore rate, fraction of a load's rating per s
GRID_LIMIT_MARGIN = 0.97  # stay this far inside the grid's import limit
PUMP_FAULT_SHED_FRAC = 0.4  # mining budget on a loop that lost a pump, until flow recovers
LOST_FLOW_FRAC = 0.7  # a pump fault that dropped flow below this x normal sheds mining
RECOVERED_SPEED_PCT = 20.0  # mining returns once a healthy pump runs at least this fast
RECOVERED_FLOW_S = 30.0  # ... with flow clear of the trip margin for this long
NORMAL_FLOW_TAU_S = 600.0  # how fast "normal flow" follows a healthy loop
LOW_FLOW_PREEMPT_FRAC = 1.2  # pre-empt the PLC's low-flow trip below this x min flow
MIN_FLOW_GUARD_FRAC = 1.4  # the ΔP loop never lets flow fall below this x min flow
MIN_FLOW_GUARD_PCT_S = 2.0  # how fast the guard raises pump speed (%/s)
STANDBY_START_SAT_S = 60.0  # duty pump saturated this long -> start the standby
STANDBY_STOP_BELOW_PCT = 45.0  # both pumps below this for STANDBY_STOP_S -> stop standby
STANDBY_STOP_S = 300.0
SUPPLY_RESET_MAX_K = 6.0  # raise a loop's supply setpoint up to this when far from limits
SUPPLY_RESET_RATE_K_S = 0.005
DP_TRIM_MIN_KPA = 40.0
DP_TRIM_RATE_KPA_S = 0.05
VALVE_WIDE_OPEN_PCT = 90.0  # trim & respond thresholds on the most-open valve
VALVE_THROTTLED_PCT = 65.0
WRITE_VERIFY_S = 5.0  # a write not read back within this is an alarm
WRITE_REFRESH_S = 60.0  # rewrite an unchanged command this often (PLC restarts)
SAFE_GPU_CAP_FRAC = 0.5
RESET_WINDOW_S = 10.0  # after a reset, latched trips whose interlock clears are released
CLASS_ORDER = ("mining", "training", "inference")  # shed in this order
FORECAST_FRESH_S = 180.0  # a model forecast older than this is not handed to the planner


class Planner(Protocol):
    """The seam where economics and the grid hand in permits and budgets.

    ``plan`` returns, per load (tank or rack row name), the budget in kW the
    planner wants (``None``: no opinion, i.e. rated). Protection always caps
    what the planner asks for; the planner can never raise a load above what
    protection allows.
    """

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict[str, float]
    ) -> dict[str, float]: ...


class PlanAhead(Protocol):
    """A planner that also knows its plan ahead (a job schedule, a day-ahead
    price plan, a notified curtailment) implements ``planned``: the budget in
    kW it intends for each load ``horizon_s`` from now. The core records it
    (``ScanResult.plan``) so the thermal model learns what planned load
    changes do. Without it the plan ahead is today's request."""

    def planned(self, t: float, horizon_s: float, loads: list[LoadInfo]) -> dict[str, float]: ...


@dataclass(frozen=True)
class LoadForecast:
    """The thermal model's word on one load, handed in once a minute (``set_forecast``)."""

    headroom_kw: float  # extra kW this load may add now (its tank, or its share of its CDU)
    loop_headroom_kw: float  # extra kW the load's whole loop may take (shared by its loads)
    time_to_limit_min: float  # first of its zones to reach its limit at current load (inf: > 30)
    trusted: bool  # False: the conservative fallback (model out of range, stale or drifting)


@dataclass(frozen=True)
class LoadInfo:
    name: str
    workload_class: str
    rated_kw: float
    power_kw: float  # measured now (NaN if unknown)
    loop: str
    #: the learned forecast's headroom; None without a model or when its forecast is stale
    forecast: LoadForecast | None = None


class DefaultPlanner:
    """Until the gating planner exists: everything allowed within the limits."""

    def plan(self, t: float, loads: list[LoadInfo], headroom: dict[str, float]) -> dict[str, float]:
        return {ld.name: ld.rated_kw for ld in loads}


@dataclass
class ScanResult:
    writes: list[Write]
    events: list[Event]
    values: np.ndarray
    quality: np.ndarray
    status: dict[str, object]
    #: planned load per load and horizon (``plan_columns`` order): what each
    #: load is set to draw ahead if nothing else changes (NaN: no plan yet)
    plan: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the working setpoint of every control loop (``setpoint_columns`` order)
    setpoints: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @cached_property
    def record(self) -> tuple[np.ndarray, np.ndarray]:
        """Values and quality of the points, then the plan and the setpoints, as a
        historian opened with ``record_columns`` stores them (the controller's own
        numbers are good). Built once: the historian and the forecaster both take it."""
        n = len(self.plan) + len(self.setpoints)
        return (
            np.concatenate([self.values, self.plan, self.setpoints]),
            np.concatenate([self.quality, np.zeros(n, self.quality.dtype)]),
        )


@dataclass
class _Load:
    """A tank or rack row as the core sees it."""

    name: str
    kind: str  # "tank" | "row"
    workload: str  # asic | gpu
    wclass: str
    rated_kw: float
    loop: int
    pdu: int
    feeder: int
    i_power: int
    i_budget: int  # tank: power_budget_kw; row: gpu_power_cap_w
    i_enable: int
    thermal_cap: float = math.inf
    power_cap: float = math.inf


@dataclass
class _Zone:
    """A fail-safe zone: a tank, a loop or a CDU with the inputs it needs."""

    name: str
    inputs: list[int]
    units: set[int]
    failsafe: bool = True  # zones start in fail-safe until every input was read once
    reason: str = "starting: inputs not read yet"


@dataclass
class _Pending:
    value: float
    t: float
    why: str


@dataclass
class Override:
    value: float
    who: str
    where: str
    why: str


@dataclass
class ControllerState:
    """What a restart must restore (persisted by the historian)."""

    mode: str = "auto"  # auto | manual (all loops hold) | failsafe
    overrides: dict[str, Override] = field(default_factory=dict)
    latched: dict[str, str] = field(default_factory=dict)  # fault -> reason, until reset


class Controller:
    """The site controller's core; see the module docstring."""

    def __init__(
        self,
        site: Site,
        pmap: PointMap,
        *,
        planner: Planner | None = None,
        scan_s: float | None = None,
    ) -> None:
        self.site = site
        self.pmap = pmap
        self.scan_s = scan_s or site.scan_interval_s
        self.planner: Planner = planner or DefaultPlanner()
        self.idx = {p.name: i for i, p in enumerate(pmap.points)}
        self.estimator = Estimator(pmap, site, scan_s=self.scan_s)
        self.state = ControllerState()
        self.heartbeat = 0
        self.t_last: float | None = None
        self._alarms: dict[str, bool] = {}
        self._pending: dict[str, _Pending] = {}
        self._last_sent: dict[str, tuple[float, float]] = {}  # point -> (value, t)
        self._loops_cfg = list(site.control_loops)
        self._pid: dict[str, PidState] = {c.name: PidState() for c in self._loops_cfg}
        self._pid_cfg: dict[str, PidConfig] = {c.name: _pid_cfg(c) for c in self._loops_cfg}
        self._supply_reset = {lp.name: 0.0 for lp in site.loops}
        self._dp_trim = {lp.name: 0.0 for lp in site.loops}
        self._standby_sat_s = {lp.name: 0.0 for lp in site.loops}
        self._standby_low_s = {lp.name: 0.0 for lp in site.loops}
        self._standby_on = {lp.name: False for lp in site.loops}
        self._normal_flow: dict[str, float] = {}
        self._flow_guard: dict[str, float] = {}
        self._flow_shed: dict[str, bool] = {}
        self._flow_ok_s: dict[str, float] = {}
        self._pump_episode: dict[str, bool] = {}
        self._fault_seen: dict[str, bool] = {}
        self._power_shedding: dict[str, bool] = {}
        self._build_loads()
        self._build_zones()
        self.events: list[Event] = []
        self._queued_events: list[Event] = []  # raised between scans (operator actions)
        self._reset_requested: tuple[str, str, str] | None = None
        self._reset_by: tuple[str, str] | None = None
        self._reset_window_until = -math.inf
        self._values: np.ndarray | None = None
        self._quality: np.ndarray | None = None
        self._forecast: tuple[float, dict[str, LoadForecast]] = (-math.inf, {})
        self._plan = np.full(len(self.loads) * len(PLAN_HORIZONS_MIN), np.nan)

    # ==================================================================
    # configuration derived once from the site
    # ==================================================================
    def _i(self, name: str) -> int:
        return self.idx[name]

    def _build_loads(self) -> None:
        site = self.site
        loops = [lp.name for lp in site.loops]
        pdus = [d.name for d in site.pdus]
        feeders = [f.name for f in site.feeders]
        cdu_loop = {c.name: c.loop for c in site.cdus}
        self.loads: list[_Load] = []
        for t in site.tanks:
            pdu = pdus.index(t.pdu)
            self.loads.append(
                _Load(
                    t.name,
                    "tank",
                    t.workload,
                    t.workload_class,
                    t.rated_kw,
                    loops.index(t.loop),
                    pdu,
                    feeders.index(site.pdus[pdu].feeder),
                    self._i(f"{t.name}.power_kw"),
                    self._i(f"{t.name}.power_budget_kw"),
                    self._i(f"{t.name}.enable"),
                )
            )
        for r in site.rack_rows:
            pdu = pdus.index(r.pdu)
            self.loads.append(
                _Load(
                    r.name,
                    "row",
                    "gpu",
                    r.workload_class,
                    r.rated_kw,
                    loops.index(cdu_loop[r.cdu]),
                    pdu,
                    feeders.index(site.pdus[pdu].feeder),
                    self._i(f"{r.name}.power_kw"),
                    self._i(f"{r.name}.gpu_power_cap_w"),
                    self._i(f"{r.name}.enable"),
                )
            )
        # Power constraints with the loads under each, derived once:
        # (name, meter point, continuous limit or None for the grid, loads, severity).
        self._power_constraints: list[tuple[str, str, float | None, list[_Load], int]] = [
            ("site import", "site.power_kw", None, list(self.loads), 800)
        ]
        for j, f in enumerate(site.feeders):
            self._power_constraints.append(
                (
                    f"feeder {f.name}",
                    f"{f.name}.power_kw",
                    f.continuous_kw,
                    [ld for ld in self.loads if ld.feeder == j],
                    700,
                )
            )
        for j, d in enumerate(site.pdus):
            self._power_constraints.append(
                (
                    f"PDU {d.name}",
                    f"{d.name}.power_kw",
                    d.continuous_kw,
                    [ld for ld in self.loads if ld.pdu == j],
                    700,
                )
            )
        # Valve positions and setpoint kinds per loop, for trim & respond.
        self._loop_valves = {
            lp.name: [f"{t.name}.valve_pos" for t in site.tanks if t.loop == lp.name]
            + [f"{c.name}.valve_pos" for c in site.cdus if c.loop == lp.name]
            for lp in site.loops
        }
        self._sp_kind: dict[str, tuple[str, str]] = {}
        for lp in site.loops:
            self._sp_kind[f"{lp.name}.supply_temp"] = ("supply", lp.name)
            self._sp_kind[f"{lp.name}.dp"] = ("dp", lp.name)
        self._loop_tanks = {
            lp.name: [t for t in site.tanks if t.loop == lp.name] for lp in site.loops
        }
        self._loop_cdus = {
            lp.name: [c for c in site.cdus if c.loop == lp.name] for lp in site.loops
        }
        self._load_by_name = {ld.name: ld for ld in self.loads}

    def _build_zones(self) -> None:
        site = self.site
        self.zones: dict[str, _Zone] = {}

        def zone(name: str, points: list[str]) -> None:
            idx = [self._i(p) for p in points]
            units = {self.pmap.points[i].unit_id for i in idx}
            self.zones[name] = _Zone(name, idx, units)

        for t in site.tanks:
            zone(
                t.name,
                [
                    f"{t.name}.fluid_temp",
                    f"{t.name}.fluid_temp_b",
                    f"{t.name}.valve_pos",
                    f"{t.name}.power_kw",
                ],
            )
        for lp in site.loops:
            zone(lp.name, [f"{lp.name}.supply_temp", f"{lp.name}.flow", f"{lp.name}.dp"])
        for c in site.cdus:
            zone(c.name, [f"{c.name}.supply_temp", f"{c.name}.valve_pos"])

    # ==================================================================
    # the scan
    # ==================================================================
    def set_forecast(self, t: float, loads: dict[str, LoadForecast]) -> None:
        """The thermal model's headroom per load, computed at data time ``t``.

        The planner sees it for ``FORECAST_FRESH_S``; an older forecast (the
        forecaster stopped or fell behind) is withheld rather than trusted.
        """
        self._forecast = (t, dict(loads))

    def scan(self, obs: Observation) -> ScanResult:
        t = obs.t
        dt = self.scan_s if self.t_last is None else max(1e-3, min(t - self.t_last, 10.0))
        self.t_last = t
        self.events = self._queued_events
        self._queued_events = []
        est = self.estimator.update(t, obs.values, obs.fresh)
        v, q = est.values, est.quality
        self._values, self._quality = v, q
        self.values, self.quality = v, q  # the last validated values, for status displays
        for name, flags in self.estimator.newly_flagged():
            self._event(t, "alarm", name, f"sensor {name} flagged: {_flags(flags)}", 600)
        for name in self.estimator.newly_cleared():
            self._event(t, "clear", name, f"sensor {name} good again", 300)

        def val(name: str) -> float:
            return float(v[self.idx[name]])

        def good(name: str) -> bool:
            return bool(q[self.idx[name]] != BAD)

        def voted(name: str) -> tuple[float, bool]:
            if name in est.voted:
                value, qual = est.voted[name]
                return value, qual != BAD
            return val(name), good(name)

        self._verify_writes(t, v, q)
        self._update_zones(t, q)
        plc_status = val("plc.status")
        plc_safe = good("plc.status") and int(plc_status) & STATUS_SAFE_STATE != 0
        if plc_safe:
            self._alarm(t, "plc.safe_state", True, "PLC is in its watchdog safe state")
        else:
            self._alarm(t, "plc.safe_state", False, "PLC left its safe state")

        cmds: dict[str, tuple[float, str]] = {}
        self._regulate(t, dt, voted, val, good, cmds)
        self._protect_thermal(t, dt, voted, val, good)
        self._protect_power(t, dt, obs, val, good)
        self._allocate(t, val, good, cmds)
        self._latch_trips(t, val, good, cmds)
        self._failsafe_overrides(cmds)
        if self._reset_requested is not None:
            who, where, why = self._reset_requested
            self._reset_requested = None
            cmds["plc.reset"] = (1.0, f"reset by {who}: {why}")
            self._reset_by = (who, where)
        writes = self._actuate(t, v, cmds)
        status = self._status(t, v, q, voted, obs)
        sps = np.array([self._setpoint(c) for c in self._loops_cfg])
        return ScanResult(writes, list(self.events), v, q, status, self._plan.copy(), sps)

    # ==================================================================
    # zones and verification
    # ==================================================================
    def _update_zones(self, t: float, q: np.ndarray) -> None:
        for z in self.zones.values():
            bad = [self.pmap.points[i].name for i in z.inputs if q[i] == BAD]
            # a tank with one good fluid sensor of two is not in fail-safe
            name = z.name
            if f"{name}.fluid_temp" in self.idx:
                a, b = f"{name}.fluid_temp", f"{name}.fluid_temp_b"
                if (a in bad) != (b in bad):
                    bad = [x for x in bad if x not in (a, b)]
            if bad and not z.failsafe:
                z.failsafe, z.reason = True, f"bad inputs: {', '.join(bad)}"
                self._event(t, "failsafe", name, f"zone {name} in fail-safe: {z.reason}", 800)
            elif not bad and z.failsafe:
                z.failsafe, z.reason = False, ""
                self._event(t, "restore", name, f"zone {name} left fail-safe", 400)
            elif bad:
                z.reason = f"bad inputs: {', '.join(bad)}"

    def _verify_writes(self, t: float, v: np.ndarray, q: np.ndarray) -> None:
        """A command is verified when its register reads back what was written."""
        for name, p in list(self._pending.items()):
            i = self.idx[name]
            point = self.pmap.points[i]
            tol = max(abs(point.scale) * 0.51, 1e-9)
            if q[i] != BAD and abs(float(v[i]) - p.value) <= tol:
                del self._pending[name]
                self._alarm(t, f"write:{name}", False, f"write of {name} verified")
            elif t - p.t > WRITE_VERIFY_S:
                del self._pending[name]
                self._last_sent.pop(name, None)  # resend next scan
                self._alarm(
                    t,
                    f"write:{name}",
                    True,
                    f"write of {name} = {p.value:g} not read back within {WRITE_VERIFY_S:g} s "
                    f"(reads {float(v[i]):g})",
                    700,
                )

    # ==================================================================
    # regulation
    # ==================================================================
    def _regulate(
        self,
        t: float,
        dt: float,
        voted: Callable,
        val: Callable,
        good: Callable,
        cmds: dict[str, tuple[float, str]],
    ) -> None:
        site = self.site
        # Trim & respond: the most-open valve on a loop tells whether the loop
        # could run warmer (less fan energy) and with less differential pressure.
        for lp in site.loops:
            valves = [x for x in map(val, self._loop_valves[lp.name]) if math.isfinite(x)]
            vmax = max(valves) if valves else 100.0
            hot = self._loop_hot(lp.name, voted)
            if vmax > VALVE_WIDE_OPEN_PCT or hot:
                self._supply_reset[lp.name] = max(
                    0.0, self._supply_reset[lp.name] - 4 * SUPPLY_RESET_RATE_K_S * dt
                )
                self._dp_trim[lp.name] = max(
                    0.0, self._dp_trim[lp.name] - 4 * DP_TRIM_RATE_KPA_S * dt
                )
            elif vmax < VALVE_THROTTLED_PCT:
                self._supply_reset[lp.name] = min(
                    SUPPLY_RESET_MAX_K, self._supply_reset[lp.name] + SUPPLY_RESET_RATE_K_S * dt
                )
                self._dp_trim[lp.name] = self._dp_trim[lp.name] + DP_TRIM_RATE_KPA_S * dt

        for c in self._loops_cfg:
            meas, ok = voted(c.measurement)
            sp = self._setpoint(c)
            manual = None
            ov = [self.state.overrides.get(a) for a in c.actuators]
            if ov[0] is not None:
                manual = ov[0].value
            elif not math.isfinite(self._pid[c.name].output):
                # Bumpless start: take over from where the plant is now.
                now = self._actuator_position(c, val, good)
                if now is not None:
                    self._pid[c.name] = pid_step(
                        self._pid_cfg[c.name], PidState(), sp, meas, dt, manual_output=now
                    ).state
            res = pid_step(
                self._pid_cfg[c.name],
                self._pid[c.name],
                sp,
                meas,
                dt,
                manual_output=manual,
                valid=ok,
            )
            self._pid[c.name] = res.state
            out = res.output
            why = f"loop {c.name}: {c.measurement} {meas:.2f} -> setpoint {sp:.2f}"
            if res.held:
                why = f"loop {c.name}: measurement bad, holding output"
            if c.name.endswith("_dp"):
                self._pumps(t, dt, c, out, why, val, good, cmds)
                continue
            for a in c.actuators:
                cmds[a] = (out, why)

    def _actuator_position(self, c: ControlLoop, val: Callable, good: Callable) -> float | None:
        """Where the loop's actuators are now (the highest of them), if known."""
        readback = {"valve_cmd": "valve_pos", "fan_cmd": "fan_speed", "speed_cmd": "speed"}
        found = []
        for a in c.actuators:
            base, _, suffix = a.rpartition(".")
            name = f"{base}.{readback.get(suffix, suffix)}"
            if name in self.idx and good(name) and math.isfinite(val(name)):
                found.append(val(name))
        return max(found) if found else None

    def _setpoint(self, c: ControlLoop) -> float:
        kind = self._sp_kind.get(c.measurement)
        if kind is None:
            return c.setpoint
        if kind[0] == "supply":
            return c.setpoint + self._supply_reset[kind[1]]
        return max(DP_TRIM_MIN_KPA, c.setpoint - self._dp_trim[kind[1]])

    def _loop_hot(self, loop: str, voted: Callable) -> bool:
        """Any zone on the loop within its soft margin: cooling energy no longer matters."""
        for t_ in self._loop_tanks[loop]:
            temp, ok = voted(f"{t_.name}.fluid_temp")
            if not ok or temp > t_.limits.fluid_alarm_c - THERMAL_SOFT_MARGIN_K - 1.0:
                return True
        for c in self._loop_cdus[loop]:
            temp, ok = voted(f"{c.name}.supply_temp")
            if not ok or temp > c.supply_alarm_c - THERMAL_SOFT_MARGIN_K - 1.0:
                return True
        return False

    def _pumps(
        self,
        t: float,
        dt: float,
        c: ControlLoop,
        out: float,
        why: str,
        val: Callable,
        good: Callable,
        cmds: dict[str, tuple[float, str]],
    ) -> None:
        """Duty/standby: one pump regulates ΔP; the standby starts when the duty
        pump faults or saturates (fans and valves have already had their go)."""
        loop = c.actuators[0].rsplit(".", 2)[0]
        pumps = [a.rsplit(".", 1)[0] for a in c.actuators]
        lp = next(x for x in self.site.loops if x.name == loop)
        flow = val(f"{loop}.flow")
        guard = self._flow_guard.get(loop, 0.0)
        if good(f"{loop}.flow") and flow < MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h:
            guard = min(100.0, max(guard, out) + MIN_FLOW_GUARD_PCT_S * dt)
        elif good(f"{loop}.flow") and flow > 1.5 * MIN_FLOW_GUARD_FRAC * lp.min_flow_m3h:
            guard = max(0.0, guard - 0.1 * MIN_FLOW_GUARD_PCT_S * dt)
        self._flow_guard[loop] = guard
        if guard > out:
            out = guard
            why = f"loop {loop}: holding minimum flow ({flow:.0f} m3/h)"
        faulted = [bool(val(f"{p}.fault") >= 0.5) if good(f"{p}.fault") else False for p in pumps]
        healthy = [p for p, f in zip(pumps, faulted, strict=True) if not f]
        if out >= 99.0:
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
        if self._standby_low_s[loop] >= STANDBY_STOP_S:
            want_two = False
        self._standby_on[loop] = want_two
        running = healthy[: 2 if want_two else 1]
        for p, f in zip(pumps, faulted, strict=True):
            run = p in running
            reason = why
            if f:
                reason = f"pump {p} faulted: standby takes over"
                self._alarm(t, f"{p}.fault", True, f"pump {p} faulted", 700)
            else:
                self._alarm(t, f"{p}.fault", False, f"pump {p} fault cleared")
            cmds[f"{p}.run_cmd"] = (1.0 if run else 0.0, reason)
            cmds[f"{p}.speed_cmd"] = (out if run else 0.0, reason)
        if not healthy:
            self._alarm(t, f"{loop}.no_pump", True, f"loop {loop}: no healthy pump", 900)
        else:
            self._alarm(t, f"{loop}.no_pump", False, f"loop {loop}: a pump is available")

    # ==================================================================
    # protection
    # ==================================================================
    def _protect_thermal(
        self, t: float, dt: float, voted: Callable, val: Callable, good: Callable
    ) -> None:
        """Alarms, and caps on load budgets that act before the PLC's trips."""
        site = self.site
        loop_stress = dict.fromkeys(range(len(site.loops)), -math.inf)
        loop_saturated: dict[int, bool] = {}
        loops = [lp.name for lp in site.loops]
        for k, lp in enumerate(site.loops):
            fans = [val(f"{d.name}.fan_speed") for d in lp.dry_coolers]
            fans = [x for x in fans if math.isfinite(x)]
            loop_saturated[k] = (min(fans) if fans else 100.0) >= 95.0
            sup, ok = voted(f"{lp.name}.supply_temp")
            self._high_alarm(
                t,
                f"{lp.name}.supply_high",
                sup,
                ok,
                lp.supply_alarm_c,
                f"loop {lp.name} supply {sup:.1f} degC >= alarm {lp.supply_alarm_c:g}",
                600,
            )
            # Lost flow: shed mining on the loop before the PLC's low-flow trip.
            flow, fok = val(f"{lp.name}.flow"), good(f"{lp.name}.flow")
            low = fok and flow < LOW_FLOW_PREEMPT_FRAC * lp.min_flow_m3h
            pump_fault = any(
                good(f"{p.name}.fault") and val(f"{p.name}.fault") >= 0.5 for p in lp.pumps
            )
            normal = self._normal_flow.get(lp.name, math.nan)
            lost = fok and math.isfinite(normal) and flow < LOST_FLOW_FRAC * normal
            if fok and not pump_fault and not low:  # learn what normal looks like
                a_ = min(1.0, dt / NORMAL_FLOW_TAU_S)
                self._normal_flow[lp.name] = (
                    flow if not math.isfinite(normal) else (normal + a_ * (flow - normal))
                )
            self._alarm(
                t,
                f"{lp.name}.low_flow",
                low,
                f"loop {lp.name} flow {flow:.0f} m3/h near its trip ({lp.min_flow_m3h:g})",
                800,
            )
            was = self._flow_shed.get(lp.name, False)
            # A pump fault opens an episode; the episode sheds mining once flow
            # drops, and ends when a healthy pump carries the loop again.
            episode = self._pump_episode.get(lp.name, False) or (
                pump_fault and not self._fault_seen.get(lp.name, False)
            )
            self._fault_seen[lp.name] = pump_fault
            carried = any(
                not (good(f"{p.name}.fault") and val(f"{p.name}.fault") >= 0.5)
                and good(f"{p.name}.speed")
                and val(f"{p.name}.speed") >= RECOVERED_SPEED_PCT
                for p in lp.pumps
            )
            # Recovered: not "normal flow" again (with mining shed, valves close
            # and flow is legitimately lower) but a healthy pump carrying the loop
            # with flow clear of the trip margin, for a while.
            back = fok and carried and flow >= LOW_FLOW_PREEMPT_FRAC * lp.min_flow_m3h
            self._flow_ok_s[lp.name] = self._flow_ok_s.get(lp.name, 0.0) + dt if back else 0.0
            recovered = self._flow_ok_s[lp.name] >= RECOVERED_FLOW_S
            if low or (episode and lost):
                shedding = True
            elif was:
                shedding = not recovered
            else:
                shedding = False
            if episode and recovered and not low:
                episode = False
            self._pump_episode[lp.name] = episode
            if shedding:
                for ld in self.loads:
                    if ld.loop == k and ld.wclass == "mining":
                        ld.thermal_cap = min(ld.thermal_cap, PUMP_FAULT_SHED_FRAC * ld.rated_kw)
                if not was:
                    self._event(
                        t,
                        "shed",
                        lp.name,
                        f"loop {lp.name} {'lost flow' if low else 'lost a pump'}: mining "
                        f"on it cut to {PUMP_FAULT_SHED_FRAC:.0%} until flow recovers",
                        700,
                    )
            elif was:
                self._event(
                    t,
                    "restore",
                    lp.name,
                    f"loop {lp.name} flow recovered ({flow:.0f} m3/h): mining ramps back",
                    400,
                )
            self._flow_shed[lp.name] = shedding

        for t_ in site.tanks:
            temp, ok = voted(f"{t_.name}.fluid_temp")
            lim = t_.limits
            self._high_alarm(
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
                k = loops.index(t_.loop)
                loop_stress[k] = max(loop_stress[k], temp - soft)
                self._limit_load(t, dt, t_.name, temp - soft)
        for c in site.cdus:
            temp, ok = voted(f"{c.name}.supply_temp")
            self._high_alarm(
                t,
                f"{c.name}.supply_high",
                temp,
                ok,
                c.supply_alarm_c,
                f"CDU {c.name} supply {temp:.1f} degC >= alarm {c.supply_alarm_c:g}",
                700,
            )
            if ok:
                k = loops.index(c.loop)
                excess = temp - (c.supply_alarm_c - THERMAL_SOFT_MARGIN_K)
                loop_stress[k] = max(loop_stress[k], excess)
                for r in site.rack_rows:
                    if r.cdu == c.name:
                        self._limit_load(t, dt, r.name, excess)
        # A loop whose cooling is at its limit: shed by class order on the loop.
        for k, stress in loop_stress.items():
            if stress > 0.0 and loop_saturated[k]:
                self._shed_loop(t, dt, k, stress)

    def _limit_load(self, t: float, dt: float, name: str, excess_k: float) -> None:
        """A load whose own zone is too hot sheds its own heat, whatever its class."""
        ld = self._load_by_name[name]
        if excess_k > 0.0:
            cut = THERMAL_SHED_KW_PER_K_S * excess_k * dt * ld.rated_kw
            start = min(ld.thermal_cap, _nz(self._measured(ld)), ld.rated_kw)
            ld.thermal_cap = max(0.0, start - cut)
        elif (
            excess_k < -THERMAL_RESTORE_BELOW_K
            and math.isfinite(ld.thermal_cap)
            and not self._flow_shed.get(self.site.loops[ld.loop].name, False)
        ):
            ld.thermal_cap += THERMAL_RESTORE_FRAC_S * dt * ld.rated_kw
            if ld.thermal_cap >= ld.rated_kw:
                ld.thermal_cap = math.inf
                self._event(t, "restore", name, f"{name}: thermal limit lifted", 300)

    def _shed_loop(self, t: float, dt: float, loop: int, stress_k: float) -> None:
        """Shed heat from a loop in class order: mining, then training, then inference."""
        need = THERMAL_SHED_KW_PER_K_S * stress_k * dt
        for wclass in CLASS_ORDER:
            group = [ld for ld in self.loads if ld.loop == loop and ld.wclass == wclass]
            room = sum(min(ld.thermal_cap, _nz(self._measured(ld))) for ld in group)
            if room <= 1.0:
                continue
            for ld in group:
                cur = min(ld.thermal_cap, _nz(self._measured(ld)), ld.rated_kw)
                ld.thermal_cap = max(0.0, cur - need * ld.rated_kw)
            return

    def _protect_power(
        self, t: float, dt: float, obs: Observation, val: Callable, good: Callable
    ) -> None:
        """Feeders, PDUs and the site import stay inside their limits (80 % continuous)."""
        site = self.site
        grid = site.import_limit_kw
        if obs.import_limit_kw is not None and math.isfinite(obs.import_limit_kw):
            grid = min(grid, obs.import_limit_kw)
        constraints = []
        for name, point, limit, group, sev in self._power_constraints:
            p = val(point) if good(point) else math.nan
            constraints.append(
                (name, p, GRID_LIMIT_MARGIN * grid if limit is None else limit, group, sev)
            )
        self._grid_limit_kw = grid
        for name, p, limit, group, sev in constraints:
            if not math.isfinite(p):
                continue
            self._alarm(
                t,
                f"power:{name}",
                p > limit,
                f"{name} at {p:.0f} kW over its limit {limit:.0f} kW",
                sev,
                hysteresis=not p > POWER_SHED_TO * limit,
            )
            shedding = self._power_shedding.get(name, False)
            if p > POWER_SHED_AT * limit:
                excess = p - POWER_SHED_TO * limit
                for wclass in CLASS_ORDER:
                    cls = [ld for ld in group if ld.wclass == wclass]
                    have = sum(min(ld.power_cap, _nz(self._measured(ld))) for ld in cls)
                    if have <= 1.0:
                        continue
                    take = min(excess, have)
                    for ld in cls:
                        cur = min(ld.power_cap, _nz(self._measured(ld)), ld.rated_kw)
                        ld.power_cap = max(0.0, cur - take * cur / have)
                    if not shedding:  # one event per episode, not one per scan
                        self._event(
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
                if shedding and all(not math.isfinite(ld.power_cap) for ld in group):
                    self._event(t, "restore", name, f"{name}: all loads restored", 400)
                    shedding = False
                # Restore in reverse order: inference first, mining last.
                spare = POWER_RESTORE_BELOW * limit - p
                for wclass in reversed(CLASS_ORDER):
                    for ld in group:
                        if ld.wclass != wclass or not math.isfinite(ld.power_cap):
                            continue
                        step = min(POWER_RESTORE_FRAC_S * dt * ld.rated_kw, spare)
                        ld.power_cap += step
                        spare -= step
                        if ld.power_cap >= ld.rated_kw:
                            ld.power_cap = math.inf
                    if spare <= 0.0:
                        break
            self._power_shedding[name] = shedding

    def _measured(self, ld: _Load) -> float:
        """The load's measured power this scan (NaN when its meter is bad)."""
        return float(self._values[ld.i_power]) if self._quality[ld.i_power] != BAD else math.nan

    # ==================================================================
    # allocation (planner seam) and fail-safe
    # ==================================================================
    def _allocate(
        self, t: float, val: Callable, good: Callable, cmds: dict[str, tuple[float, str]]
    ) -> None:
        t_fc, forecast = self._forecast
        if t - t_fc > FORECAST_FRESH_S:
            forecast = {}
        infos = [
            LoadInfo(
                ld.name,
                ld.wclass,
                ld.rated_kw,
                val(f"{ld.name}.power_kw"),
                self.site.loops[ld.loop].name,
                forecast.get(ld.name),
            )
            for ld in self.loads
        ]
        headroom = {ld.name: min(ld.thermal_cap, ld.power_cap, ld.rated_kw) for ld in self.loads}
        wanted = self.planner.plan(t, infos, headroom)
        ahead = getattr(self.planner, "planned", None)
        for j, h in enumerate(PLAN_HORIZONS_MIN):
            later = wanted if ahead is None else ahead(t, h * 60.0, infos)
            for i, ld in enumerate(self.loads):
                # protection caps persist unless something changes: part of the plan
                self._plan[i * len(PLAN_HORIZONS_MIN) + j] = min(
                    _asked(later, ld), ld.rated_kw, ld.thermal_cap, ld.power_cap
                )
        for ld in self.loads:
            budget = _asked(wanted, ld)
            limits = {"thermal": ld.thermal_cap, "power": ld.power_cap}
            budget_final = min(budget, ld.rated_kw, *limits.values())
            reason = "planner"
            if budget_final < budget - 1e-6:
                reason = min(limits, key=lambda k: limits[k]) + " limit"
            if ld.kind == "tank":
                cmds[f"{ld.name}.power_budget_kw"] = (round(budget_final, 1), reason)
                cmds[f"{ld.name}.enable"] = (1.0, "workload permitted")
            else:
                frac = budget_final / ld.rated_kw if ld.rated_kw else 0.0
                cap_w = 200.0 + (700.0 - 200.0) * max(0.0, min(1.0, (frac - 0.3) / 0.7))
                cmds[f"{ld.name}.gpu_power_cap_w"] = (round(cap_w), reason)
                # Protection lowers the GPUs' power cap (down to its 200 W floor) but
                # never stops a row: stopping and restarting training jobs costs
                # more than running capped.
                cmds[f"{ld.name}.enable"] = (1.0, "workload permitted")

    def _latch_trips(
        self, t: float, val: Callable, good: Callable, cmds: dict[str, tuple[float, str]]
    ) -> None:
        """A load the PLC tripped stays off until someone resets it, even if the
        PLC's own latch clears: a hard trip means a person should look first."""
        for ld in self.loads:
            point = f"{ld.name}.interlock"
            key = f"{ld.name}: PLC interlock"
            if good(point) and val(point) >= 0.5 and key not in self.state.latched:
                self.state.latched[key] = f"tripped by the PLC at t={t:.0f}"
                self._event(
                    t,
                    "trip",
                    ld.name,
                    f"{ld.name} tripped by the PLC's hard interlock; latched until reset",
                    900,
                )
            if key in self.state.latched:
                clear = good(point) and val(point) < 0.5
                if clear and t <= self._reset_window_until:
                    del self.state.latched[key]
                    self._event(t, "restore", ld.name, f"{ld.name}: trip reset, load released", 500)
                    continue
                cmds[f"{ld.name}.enable"] = (0.0, f"latched: {key} (needs a reset)")

    def request_reset(self, who: str, where: str, why: str) -> None:
        """An operator's reset: pulses the PLC's reset on the next scan; each
        latched trip clears once its PLC interlock reads back clear within
        RESET_WINDOW_S (a cause still present keeps it latched, and says so)."""
        self._reset_requested = (who, where, why)
        self._reset_window_until = (self.t_last or 0.0) + RESET_WINDOW_S
        self._queued_events.append(
            Event(
                self.t_last or 0.0,
                "info",
                "controller",
                f"reset requested by {who} ({where}): {why}",
                500,
            )
        )

    def _failsafe_overrides(self, cmds: dict[str, tuple[float, str]]) -> None:
        """Zones in fail-safe take their safe state, whatever regulation wanted."""
        site = self.site
        for t_ in site.tanks:
            z = self.zones[t_.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                cmds[f"{t_.name}.valve_cmd"] = (100.0, why)
                if t_.workload_class == "mining":
                    cmds[f"{t_.name}.enable"] = (0.0, why)
                    cmds[f"{t_.name}.power_budget_kw"] = (0.0, why)
                else:
                    cap = SAFE_GPU_CAP_FRAC * t_.rated_kw
                    cur = cmds.get(f"{t_.name}.power_budget_kw", (cap, ""))[0]
                    cmds[f"{t_.name}.power_budget_kw"] = (min(cur, round(cap, 1)), why)
        for lp in site.loops:
            z = self.zones[lp.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                for d in lp.dry_coolers:
                    cmds[f"{d.name}.fan_cmd"] = (100.0, why)
                for p in lp.pumps:
                    cmds[f"{p.name}.run_cmd"] = (1.0, why)
                    cmds[f"{p.name}.speed_cmd"] = (100.0, why)
        for c in site.cdus:
            z = self.zones[c.name]
            if z.failsafe:
                why = f"fail-safe: {z.reason}"
                cmds[f"{c.name}.valve_cmd"] = (100.0, why)
                for r in site.rack_rows:
                    if r.cdu == c.name:
                        cur = cmds.get(f"{r.name}.gpu_power_cap_w", (350.0, ""))[0]
                        cmds[f"{r.name}.gpu_power_cap_w"] = (min(cur, 350.0), why)

    # ==================================================================
    # actuation
    # ==================================================================
    def _actuate(self, t: float, v: np.ndarray, cmds: dict[str, tuple[float, str]]) -> list[Write]:
        writes: list[Write] = []
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        writes.append(Write("plc.heartbeat", float(self.heartbeat), "heartbeat"))
        for name, (value, why) in cmds.items():
            ov = self.state.overrides.get(name)
            who, where = "controller", "scan"
            if name == "plc.reset" and self._reset_by is not None:
                who, where = self._reset_by
                self._reset_by = None
                self._last_sent.pop(name, None)  # a pulse is always sent
            if ov is not None:  # operator manual override beats everything but the PLC
                value, why, who, where = ov.value, f"manual override: {ov.why}", ov.who, ov.where
            p = self.pmap.points[self.idx[name]]
            if not math.isfinite(value):
                continue
            if p.scale and p.type != "f32":  # to the register's resolution, then the range
                value = round(value / p.scale) * p.scale
            if p.min is not None:
                value = max(p.min, value)
            if p.max is not None:
                value = min(p.max, value)
            last = self._last_sent.get(name)
            if last is not None and ov is None and p.table == "holding":
                # Rate limit raises (a load, a valve): lowering a budget or a cap is
                # never delayed, it is how protection acts.
                up = _max_rise_per_s(p.unit, p.max) * max(t - last[1], self.scan_s)
                if value > last[0] + up:
                    value = last[0] + up
                    if p.scale and p.type != "f32":
                        value = math.floor(value / p.scale) * p.scale
            if last is not None:
                dead = _deadband(p.unit, p.scale)
                if abs(last[0] - value) < dead and t - last[1] < WRITE_REFRESH_S:
                    continue
            self._last_sent[name] = (value, t)
            if p.table == "holding":
                # A register that keeps being rewritten is still unverified since
                # the first write that did not read back: keep that time.
                since = self._pending[name].t if name in self._pending else t
                self._pending[name] = _Pending(value, since, why)
            writes.append(Write(name, float(value), why, who, where))
        return writes

    # ==================================================================
    # events, alarms and status
    # ==================================================================
    def _event(self, t: float, kind: str, source: str, message: str, severity: int = 500) -> None:
        self.events.append(Event(t, kind, source, message, severity))

    def _alarm(
        self,
        t: float,
        key: str,
        active: bool,
        message: str,
        severity: int = 600,
        hysteresis: bool = True,
    ) -> None:
        """Raise once when it becomes active; clear once when it is gone (with hysteresis)."""
        was = self._alarms.get(key, False)
        if active and not was:
            self._alarms[key] = True
            self._event(t, "alarm", key, message, severity)
        elif was and not active and hysteresis:
            self._alarms[key] = False
            self._event(t, "clear", key, f"cleared: {key}", 300)

    def _high_alarm(
        self,
        t: float,
        key: str,
        value: float,
        ok: bool,
        limit: float,
        message: str,
        severity: int,
    ) -> None:
        """A high-temperature alarm: raised at the limit, cleared 1 K below it."""
        self._alarm(
            t,
            key,
            ok and value >= limit,
            message,
            severity,
            hysteresis=not (ok and value >= limit - ALARM_HYSTERESIS_K),
        )

    def active_alarms(self) -> list[str]:
        return sorted(k for k, a in self._alarms.items() if a)

    def _status(
        self, t: float, v: np.ndarray, q: np.ndarray, voted: Callable, obs: Observation
    ) -> dict[str, object]:
        return {
            "t": t,
            "mode": self.state.mode,
            "alarms": self.active_alarms(),
            "failsafe_zones": sorted(n for n, z in self.zones.items() if z.failsafe),
            "bad_points": int((q == BAD).sum()),
            "good_points": int((q == GOOD).sum()),
            "import_limit_kw": getattr(self, "_grid_limit_kw", self.site.import_limit_kw),
            "loads": {
                ld.name: {
                    "class": ld.wclass,
                    "thermal_cap_kw": None
                    if math.isinf(ld.thermal_cap)
                    else round(ld.thermal_cap, 1),
                    "power_cap_kw": None if math.isinf(ld.power_cap) else round(ld.power_cap, 1),
                }
                for ld in self.loads
            },
            "supply_reset_k": {k: round(x, 2) for k, x in self._supply_reset.items()},
            "setpoints": {
                c.measurement.rsplit(".", 1)[0]: round(self._setpoint(c), 2)
                for c in self._loops_cfg
                if c.measurement.endswith(".supply_temp")
            },
        }


def _asked(wanted: dict[str, float], ld: _Load) -> float:
    """The budget a planner asked for a load (no or no finite answer: its rating)."""
    want = wanted.get(ld.name)
    return ld.rated_kw if want is None or not math.isfinite(want) else max(0.0, want)


def _pid_cfg(c: ControlLoop) -> PidConfig:
    return PidConfig(
        kp=c.kp,
        ki=c.ki,
        kd=c.kd,
        out_min=c.out_min,
        out_max=c.out_max,
        slew_per_s=c.slew_per_s,
        action=c.action,
    )


def _deadband(unit: str, scale: float) -> float:
    """Smallest change worth a write: below this the plant would not notice."""
    if unit == "%":
        return 0.5
    if unit == "kW":
        return 1.0
    if unit == "W":
        return 5.0
    return max(abs(scale), 1e-9) * 0.5


def _max_rise_per_s(unit: str, full: float | None) -> float:
    """How fast a command may rise: valves and speeds 10 %/s, loads 5 % of rating/s."""
    if unit == "%":
        return 10.0
    if unit in ("kW", "W") and full:
        return 0.05 * full
    return math.inf


def _nz(x: float) -> float:
    return 0.0 if not math.isfinite(x) else x


def _flags(flags: int) -> str:
    from .signals import flag_names

    return ", ".join(flag_names(flags)) or "none"
