"""The control core: one scan as a function of (observation, state, configuration).

No I/O and no clock reads: the time comes in with the observation, the
commands go out as ``Write`` records. The same ``Controller`` runs in real time
over Modbus (``controller.run``) and in lockstep with the simulated plant far
faster than real time (``controller.simulate``).

One scan, part by part (each its own module, its own state)::

    estimate    ../estimate.py      validate every measurement; quality travels
                                    with the value; redundant sensors voted
    verify      actuation.py        earlier writes read back, or an alarm
    zones       zones.py            fail-safe zones from the inputs' quality
    regulate    regulation.py       PID loops, trim & respond, duty/standby pumps
    protect     thermal.py          over-temperature and lost-flow caps (never the model)
                power.py            breakers and the grid's import limit
    plan        planning.py         the planner's budgets within protection's caps
                underfreq.py        the under-frequency relay armed as the site says
    override    (here)              operators' overrides
    interlock   trips.py            latched PLC trips keep their loads off
                zones.py            zones in fail-safe take their safe state
    actuate     actuation.py        resolution, range, rate, deadband, heartbeat

The order *is* the precedence: a later part overrides an earlier one, so hard
interlocks (latched trips, fail-safe) > operator override > protection's caps
and the grid > the planner's economics. Mining is shed first, then training,
then inference. Commands from people and systems come in through
``command`` (``commands.py``: one path, checked and audited).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from thermogate.plc.equipment import Site
from thermogate.plc.pointmap import STATUS_SAFE_STATE, PointMap

from ..estimate import Estimator
from ..signals import (
    BAD,
    FLAG_DISAGREE,
    FLAG_DRIFT,
    FLAG_NAMES,
    FLAG_NAN,
    FLAG_RANGE,
    FLAG_STALE,
    FLAG_STUCK,
    FLAG_ZERO,
    GOOD,
    Audit,
    Event,
    Observation,
    Write,
    flag_names,
)
from .actuation import Actuation
from .alarms import AlarmRecord, Alarms
from .commands import Command, CommandPath, CommandResult, Principal
from .planning import DefaultPlanner, LoadForecast, Planner, Planning, row_cap_w
from .power import PowerProtection
from .regulation import Regulation
from .state import ControllerState, Override
from .thermal import ThermalProtection
from .topology import Topology
from .trips import TripLatch
from .underfreq import UnderFrequencyResponse
from .view import Cmd, Cmds, ScanView, nz
from .zones import FailSafeZones, Zone


@dataclass
class ScanResult:
    writes: list[Write]
    events: list[Event]
    values: np.ndarray
    quality: np.ndarray
    status: dict[str, Any]
    #: planned load per load and horizon (``plc.records.plan_columns`` order): what
    #: each load is set to draw ahead if nothing else changes (NaN: no plan yet)
    plan: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: the working setpoint of every control loop (``setpoint_columns`` order)
    setpoints: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: changes the controller made on its own that need an audit record
    #: (an override that expired, a curtailment that ended)
    audit: list[Audit] = field(default_factory=list)

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


#: raised while an instruction's limit is held up so as not to cut inference
INFERENCE_FLOOR_ALARM = "grid.inference_floor"
#: sensors flagged (or good again) for one reason in one scan beyond this many are
#: one event, naming the first ``SENSOR_EVENTS_NAMED`` of them
SENSOR_EVENTS_SINGLY = 5
#: the reasons a sensor is not good that are an alarm while any sensor has them,
#: with their severity (a rate hold is a scan's doubt; never-read is start-up)
SENSOR_ALARMS = (
    (FLAG_STALE, 600),
    (FLAG_NAN, 600),
    (FLAG_RANGE, 600),
    (FLAG_ZERO, 700),
    (FLAG_STUCK, 500),
    (FLAG_DRIFT, 500),
    (FLAG_DISAGREE, 500),
)
SENSOR_EVENTS_NAMED = 5

#: what must stay on sits at this fraction of the limit it is spared by: under where
#: the gating planner plans (95 %) with room for the cooling to follow, and well
#: under where protection sheds (97 % of 99 %)
INFERENCE_FLOOR_FRAC = 0.92


class PeakLimit(Protocol):
    """Peak windows (``controller.grid.peaks.PeakShaving``): the import limit at
    ``t`` given the import now and what must stay on, or None outside them."""

    def limit_kw(self, t: float, import_kw: float, keep_kw: float = 0.0) -> float | None: ...

    def window_at(self, t: float) -> tuple[int, Any] | None: ...


class Controller:
    """The site controller's core; see the module docstring."""

    def __init__(
        self,
        site: Site,
        pmap: PointMap,
        *,
        planner: Planner | None = None,
        scan_s: float | None = None,
        trim_and_respond: bool = True,
    ) -> None:
        """``trim_and_respond=False``: loops at their design setpoints (``regulation.py``)."""
        self.site = site
        self.pmap = pmap
        self.scan_s = scan_s or site.scan_interval_s
        self.state = ControllerState()
        self.topo = Topology(site, pmap)
        self.estimator = Estimator(pmap, site, scan_s=self.scan_s)
        self.alarms = Alarms()
        self._sensor_alarms_up = False  # any ``sensors:*`` alarm active
        self.failsafe = FailSafeZones(self.topo)
        self.regulation = Regulation(self.topo, self.state, trim_and_respond=trim_and_respond)
        self.thermal = ThermalProtection(self.topo)
        self.power = PowerProtection(self.topo)
        self.planning = Planning(self.topo, planner or DefaultPlanner())
        self.trips = TripLatch(self.topo, self.state)
        self.underfreq = UnderFrequencyResponse(self.topo)
        self.actuation = Actuation(self.topo, self.scan_s)
        self.commands = CommandPath(
            self.topo,
            self.state,
            self.alarms,
            self.failsafe,
            self.trips,
            self.regulation,
            self.underfreq,
        )
        self.t_last: float | None = None
        #: peak windows (``controller.grid.peaks.PeakShaving``), set by the caller
        self.peaks: PeakLimit | None = None
        self.peak_limit_kw: float | None = None
        self._peak_window: int | None = None  # the index of the window in force
        #: the lowest import limit asked this scan (the grid's, a curtailment's, a
        #: peak window's; None: only the site's), before inference is spared
        self.instruction_kw: float | None = None
        #: the highest floor an instruction was held up to since it began to bind
        #: (NaN: none binds); see ``_spare_inference``
        self._spared_kw = math.nan
        n = len(pmap)
        #: the last validated values and quality, for status displays
        self.values: np.ndarray = np.full(n, np.nan)
        self.quality: np.ndarray = np.full(n, BAD, dtype=np.uint8)
        ix = pmap.index
        #: status shows the working supply setpoint of each loop and CDU
        self._supply_of = {lpp.supply_temp: lpp.name for lpp in ix.loops} | {
            cp.supply_temp: cp.name for cp in ix.cdus
        }
        # ... which control loops those are, found once (the site does not change)
        self._status_setpoints = [
            (self._supply_of[i], c)
            for c in self.regulation.loops
            if (i := pmap.position(c.measurement)) in self._supply_of
        ]
        loads = self.topo.loads
        # what must stay on: the loads that are not inference, their power and floor
        flex = [ld for ld in loads if ld.wclass != "inference"]
        self._flex_power = np.array([ld.power for ld in flex], dtype=np.int64)
        self._flex_floor = np.array([ld.floor_kw for ld in flex], dtype=np.float64)
        # status lists every load's class and caps, in order
        self._load_names = [ld.name for ld in loads]
        self._load_classes = [ld.wclass for ld in loads]
        self._load_caps = operator.itemgetter(*self._load_names) if loads else None
        self._thermal_kw, self._power_kw = _CapsMemo(), _CapsMemo()
        self._load_rows: list[dict[str, Any]] | None = None  # the last status's

    # -- what the faces read --------------------------------------------------
    @property
    def import_limit_kw(self) -> float:
        """The import limit asked of the site at the last scan (``power.py``)."""
        return self.power.import_limit_kw

    @property
    def zones(self) -> dict[str, Zone]:
        return self.failsafe.zones

    def active_alarms(self) -> list[str]:
        return self.alarms.active()

    def alarm_records(self) -> list[AlarmRecord]:
        return self.alarms.records()

    # -- what comes in between scans -------------------------------------------
    def set_forecast(self, t: float, loads: dict[str, LoadForecast]) -> None:
        """The thermal model's headroom per load, computed at data time ``t``.

        The planner sees it while fresh; an older forecast (the forecaster
        stopped or fell behind) is withheld rather than trusted."""
        self.planning.set_forecast(t, loads)

    def command(self, cmd: Command, by: Principal, t: float) -> CommandResult:
        """One command from a person or a system (``commands.py``); takes effect
        at the next scan. The caller stores ``result.audit``."""
        return self.commands.give(cmd, by, t)

    def saved_state(self) -> dict[str, Any]:
        """What a restart restores: the decided state, the estimator's slow memory and
        the alarm list (what nobody acknowledged yet is still to acknowledge)."""
        return {
            **self.state.to_json(),
            "estimator": self.estimator.state(),
            "alarms": self.alarms.to_json(),
        }

    def restore_state(self, saved: dict[str, Any]) -> list[str]:
        """Take back a ``saved_state``; returns notes on what no longer applies."""
        loops = {c.name for c in self.site.control_loops}
        st, notes = ControllerState.from_json(saved, set(self.pmap.by_name), loops)
        for name in list(vars(st)):  # the parts hold this object: update it in place
            setattr(self.state, name, getattr(st, name))
        if saved.get("estimator"):
            self.estimator.restore(saved["estimator"])
        if saved.get("alarms"):
            n = self.alarms.restore(saved["alarms"])
            notes.append(f"{n} alarm{'s' if n > 1 else ''} listed again (unacknowledged or active)")
        return notes

    def _sensor_events(self, t: float, alarms: Alarms) -> None:
        """An event per sensor newly flagged or good again; when many go at once
        for one reason (a unit lost: 518 stale, then 518 good again), one event for
        them all, naming the first few: a one-minute outage once wrote 2,600."""
        flagged: dict[str, list[str]] = {}
        for name, flags in self.estimator.newly_flagged():
            flagged.setdefault(f"flagged: {_flags(flags)}", []).append(name)
        for what, names in flagged.items():
            _sensor_event(alarms, t, "alarm", names, what, 600)
        _sensor_event(alarms, t, "clear", self.estimator.newly_cleared(), "good again", 300)

    def _sensor_alarms(self, t: float, alarms: Alarms) -> None:
        """An alarm per reason while any sensor has it (``sensors:stale``, ...): the
        per-sensor events above say which and when, but SCADA's alarm list showed
        nothing while 518 points were stale or a tank sensor read NaN."""
        flags = self.estimator.flags_now  # a sensor back is no alarm for 60 s more
        if not self._sensor_alarms_up and not flags.any():
            return
        up = False
        for bit, severity in SENSOR_ALARMS:
            name = FLAG_NAMES[bit]
            hit = np.flatnonzero(flags & bit)
            up |= hit.size > 0

            def message(hit: np.ndarray = hit, name: str = name) -> str:
                names = [self.pmap.name_of(int(i)) for i in hit]
                return f"{len(names)} sensor(s) {name}: {_some(names)}"

            alarms.alarm(t, f"sensors:{name}", hit.size > 0, message, severity, journal=False)
        self._sensor_alarms_up = up

    def _check_watchdog(self, view: ScanView, alarms: Alarms) -> None:
        """The PLC's own heartbeat timeout (read over Modbus) against the site
        file's, which decided what scan is safe: a PLC set shorter than two scans
        takes its safe state between them and stays there."""
        point = self.pmap.index.plc.heartbeat_timeout_s
        if not view.good(point):
            return
        problem = self.site.plc.watchdog_problem(float(view.val(point)), self.scan_s)
        why, short = problem if problem is not None else ("", False)
        alarms.alarm(
            view.t, "plc.heartbeat_timeout", problem is not None, why, 800 if short else 500
        )

    # -- the scan ----------------------------------------------------------------
    def scan(self, obs: Observation) -> ScanResult:
        t = obs.t
        dt = self.scan_s if self.t_last is None else max(1e-3, min(t - self.t_last, 10.0))
        self.t_last = t
        alarms = self.alarms
        alarms.begin_scan(t)
        est = self.estimator.update(t, obs.values, obs.fresh)
        v, q = est.values, est.quality
        self.values, self.quality = v, q
        self._sensor_events(t, alarms)
        self._sensor_alarms(t, alarms)
        position = self.pmap.position
        # the voted signals by position, (value, usable), as the estimator keeps them
        view = ScanView(t, dt, v, q, est.voted_at, obs.import_limit_kw, obs.price_per_mwh)

        self.actuation.verify(view, alarms)
        self.failsafe.update(t, q, alarms)
        status = self.pmap.index.plc.status
        plc_safe = view.good(status) and int(view.val(status)) & STATUS_SAFE_STATE != 0
        if plc_safe:
            alarms.alarm(t, "plc.safe_state", True, "PLC is in its watchdog safe state")
        else:
            alarms.alarm(t, "plc.safe_state", False, "PLC left its safe state")
        self._check_watchdog(view, alarms)
        for name, down in obs.links.items():
            alarms.alarm(t, f"link.{name}", down is not None, down or "", 600)
        audit = self._expire(t)

        cmds: Cmds = {}
        overrides = {position(n): o for n, o in self.state.overrides.items()}
        self.regulation.regulate(view, cmds, alarms, overrides)
        self.thermal.protect(view, alarms)
        overridden = {
            self.topo.load_of_budget[i].name for i in overrides if i in self.topo.load_of_budget
        }
        keep_kw = self._must_stay_kw(view)
        grid = obs.import_limit_kw
        instruction = self._lowest(
            grid if grid is not None and math.isfinite(grid) else None,
            self.curtail_kw(t),
            self._peak_kw(view, alarms, keep_kw),
        )
        self.instruction_kw = instruction  # as asked, before sparing inference
        # protection holds the site to this one (and its alarm, the summary and the
        # plot name it): an ask below what must stay on is the inference-floor
        # alarm's to say, not a second alarm that could not clear while it held
        instruction = self._spare_inference(view, alarms, instruction, keep_kw)
        self.power.protect(view, alarms, instruction, overridden)
        audit += self.underfreq.observe(view, alarms, self.power)
        hold = self.state.mode == "maintenance"
        grid_kw = self.power.grid_limit_kw  # in force: protect ramps a lifted limit
        self.planning.allocate(view, cmds, self.thermal.cap, self.power.cap, grid_kw, hold=hold)
        self.underfreq.arm(cmds)
        self._apply_overrides(cmds, overrides)
        self.trips.latch(view, cmds, alarms)
        self.failsafe.apply(cmds)
        self.trips.pulse(cmds)
        self.underfreq.pulse(cmds)
        writes = self.actuation.actuate(t, cmds, alarms)
        audit += self.actuation.take_audit()
        return ScanResult(
            writes,
            list(alarms.events),
            v,
            q,
            self._status(view),
            self.planning.plan.copy(),
            # as ``regulation.setpoints()``: nothing moved a setpoint since regulate
            np.array(self.regulation.last_setpoints),
            audit,
        )

    def _apply_overrides(self, cmds: Cmds, overrides: dict[int, Override]) -> None:
        """Operators' values beat regulation and the planner; a budget stays within
        protection's thermal and breaker caps (interlocks come after this)."""
        for i, ov in overrides.items():
            # "manual override by console:tech (pump work)": who, and why when given
            given = f" ({ov.why})" if ov.why and ov.why != "manual" else ""
            value, why = ov.value, f"manual override by {ov.where}:{ov.who}{given}"
            load = self.topo.load_of_budget.get(i)
            if load is not None:
                cap_kw = min(self.thermal.cap[load.name], self.power.cap[load.name], load.rated_kw)
                cap = (
                    cap_kw
                    if load.kind == "tank"
                    else row_cap_w(cap_kw, load.rated_kw, cap_w=load.cap_w)
                )
                if value > cap:
                    value, why = cap, f"{why} (capped by protection at {cap:.0f})"
            cmds[i] = Cmd(value, why, ov.who, ov.where, override=True)

    def _expire(self, t: float) -> list[Audit]:
        """Overrides and curtailments whose time is up end by themselves, audited."""
        st, out = self.state, []
        for name, ov in list(st.overrides.items()):
            if t >= ov.until:
                del st.overrides[name]
                st.changed()
                msg = f"override of {name} by {ov.who} ({ov.where}) expired: back to auto"
                self.alarms.event(t, "info", name, msg, 400)
                out.append(Audit(t, "controller", "scan", name, ov.value, None, msg, True))
        for c in list(st.curtailments):
            if t >= c.end:
                st.curtailments.remove(c)
                st.changed()
                msg = f"curtailment #{c.id} ({c.limit_kw:g} kW) ended"
                self.alarms.event(t, "restore", "grid", msg, 400)
                out.append(
                    Audit(
                        t, "controller", "scan", f"curtailment:{c.id}", c.limit_kw, None, msg, True
                    )
                )
        return out

    @staticmethod
    def _lowest(*limits: float | None) -> float | None:
        given = [x for x in limits if x is not None]
        return min(given) if given else None

    def _must_stay_kw(self, view: ScanView) -> float:
        """The import that is not curtailable now: inference, cooling, the house and
        training at its lowest (the site meter less what mining and training draw
        above their floors; NaN when it is bad). Training's floor counted as
        curtailable held the import under a limit it could never reach: `curtail 0`
        kept the import alarm up for the whole curtailment."""
        # vectorises, over the loads that are not inference, in their order:
        # max(0.0, nz(view.measured(ld.power)) - ld.floor_kw); summed in Python, in order
        at, floor = self._flex_power, self._flex_floor
        x = view.values[at]
        x = np.where((view.quality[at] != BAD) & np.isfinite(x), x, 0.0)
        d = x - floor
        flexible = sum(np.where(d > 0.0, d, 0.0).tolist())
        return view.measured(self.topo.site_meter) - flexible

    def _spare_inference(
        self, view: ScanView, alarms: Alarms, limit_kw: float | None, keep_kw: float
    ) -> float | None:
        """An instruction's limit, raised where it would cut inference: the grid's
        instructions curtail mining and training only, unless the site's commitment
        says otherwise (``[grid] curtail_inference``). The site's own import limit
        and the grid's physical limit are not raised: they protect the connection."""
        if limit_kw is None or self.site.grid.curtail_inference or not math.isfinite(keep_kw):
            alarms.alarm(view.t, INFERENCE_FLOOR_ALARM, False, "")
            self._spared_kw = math.nan
            return limit_kw
        # While it binds the floor only rises: what must stay on is measured, and
        # a transient the floor let through (the planner's non-IT estimate lags a
        # curtailment) would lower it, and with it the room, cut after cut.
        floor = max(keep_kw / INFERENCE_FLOOR_FRAC, nz(self._spared_kw))
        binds = limit_kw < floor
        self._spared_kw = floor if binds else math.nan
        alarms.alarm(
            view.t,
            INFERENCE_FLOOR_ALARM,
            binds,
            f"an import limit of {limit_kw:.0f} kW would cut inference: held at {floor:.0f} kW "
            "(the grid's instructions curtail mining and training only)",
            600,
        )
        return max(limit_kw, floor)

    def _peak_kw(self, view: ScanView, alarms: Alarms, keep_kw: float) -> float | None:
        """The limit a peak window puts on the import now (None: none), and an
        event as a window begins and ends."""
        if self.peaks is None:
            return None
        site_kw = view.measured(self.topo.site_meter)
        kw = self.peaks.limit_kw(view.t, site_kw, keep_kw)
        hit = self.peaks.window_at(view.t) if kw is not None else None
        window = None if hit is None else hit[0]
        if window != self._peak_window:  # a window begins, ends, or the next follows at once
            msg = (
                f"peak window: import <= {kw:.0f} kW (its cut from the import before it)"
                if kw is not None
                else "peak window over: the import limit returns at the restore rate"
            )
            alarms.event(view.t, "info", "grid.peak", msg, 400)
        self._peak_window = window
        self.peak_limit_kw = kw
        return kw

    def curtail_kw(self, t: float) -> float | None:
        """The lowest limit of the curtailments active at ``t`` (None: none)."""
        active = [c.limit_kw for c in self.state.curtailments if c.active(t)]
        return min(active) if active else None

    def _caps_changed(self, caps: dict[str, float], memo: _CapsMemo) -> list[int] | None:
        """Update ``memo.kw``, the ``_kw`` of each load's cap in load order, rounding
        again only the caps that changed since the last scan (most stay put, many at
        inf); returns their indices (None: all may have)."""
        assert self._load_caps is not None  # (called only on a site with loads)
        vals = self._load_caps(caps)
        if not isinstance(vals, tuple):  # (itemgetter of one key returns the value)
            vals = (vals,)
        if set(map(type, vals)) - {float}:  # not plain floats: no memo, as it was
            memo.bits = None
            memo.kw = [_kw(x) for x in vals]
            return None
        bits = np.array(vals, dtype=np.float64).view(np.int64)  # equal bits, equal _kw
        changed = None
        if memo.bits is None:
            memo.kw = [_kw(x) for x in vals]
        else:
            changed = np.flatnonzero(bits != memo.bits).tolist()
            for i in changed:
                memo.kw[i] = _kw(vals[i])
        memo.bits = bits
        return changed

    def _load_status(self) -> list[dict[str, Any]]:
        """Each load's class and caps for ``status["loads"]``, in load order. A load
        whose caps did not change keeps last scan's dict (a status is only read, and
        a changed load gets a new dict, so an earlier status never changes)."""
        ct = self._caps_changed(self.thermal.cap, self._thermal_kw)
        cp = self._caps_changed(self.power.cap, self._power_kw)
        tk, pk, cls = self._thermal_kw.kw, self._power_kw.kw, self._load_classes
        rows = self._load_rows
        if ct is None or cp is None or rows is None:
            rows = [
                {"class": c, "thermal_cap_kw": a, "power_cap_kw": b}
                for c, a, b in zip(cls, tk, pk, strict=True)
            ]
        elif ct or cp:
            rows = rows.copy()
            for i in {*ct, *cp}:
                rows[i] = {"class": cls[i], "thermal_cap_kw": tk[i], "power_cap_kw": pk[i]}
        self._load_rows = rows
        return rows

    def _status(self, view: ScanView) -> dict[str, Any]:
        q = view.quality
        st = self.state
        loads = (
            dict(zip(self._load_names, self._load_status(), strict=True))
            if self._load_names
            else {}
        )
        return {
            "t": view.t,
            "mode": st.mode,
            "alarms": self.alarms.active(),
            "failsafe_zones": self.failsafe.in_failsafe(),
            "bad_points": int(np.count_nonzero(q == BAD)),
            "good_points": int(np.count_nonzero(q == GOOD)),
            # the limit in force: the import limit (``import_limit_asked_kw``, the one
            # its alarm names) as protection holds it, ramped back after a lift and
            # raised where it would cut inference
            "import_limit_kw": self.power.grid_limit_kw,
            "import_limit_asked_kw": self.power.import_limit_kw,
            "peak_limit_kw": self.peak_limit_kw,
            "loads": loads,
            "supply_reset_k": {k: round(x, 2) for k, x in self.regulation.supply_reset.items()},
            "setpoints": {
                name: round(self.regulation.setpoint(c), 2) for name, c in self._status_setpoints
            },
            "overrides": {
                name: {"value": o.value, "by": f"{o.where}:{o.who}", "until": o.until}
                for name, o in st.overrides.items()
            },
            "curtailments": [
                {"id": c.id, "limit_kw": c.limit_kw, "start": c.start, "end": c.end}
                for c in st.curtailments
            ],
            "latched": sorted(st.latched),
            "under_frequency": {
                "tripped": bool(self.underfreq.tripped),
                "release_ready": self.underfreq.recovered,
                "armed": self.underfreq.armed,  # as the PLC's coil reads
            },
        }


class _CapsMemo:
    """The caps one status rounded last, for ``Controller._caps_kw``."""

    __slots__ = ("bits", "kw")

    def __init__(self) -> None:
        self.bits: np.ndarray | None = None  # the caps' float64 bit patterns
        self.kw: list[float | None] = []  # their ``_kw``


def _kw(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 1)


def _sensor_event(
    alarms: Alarms, t: float, kind: str, names: list[str], what: str, severity: int
) -> None:
    """``sensor NAME <what>`` for each of a few sensors, one event for many."""
    if len(names) <= SENSOR_EVENTS_SINGLY:
        for name in names:
            alarms.event(t, kind, name, f"sensor {name} {what}", severity)
    else:
        alarms.event(t, kind, "sensors", f"{len(names)} sensors {what} ({_some(names)})", severity)


def _some(names: list[str]) -> str:
    """The first few of many names, and how many more."""
    shown = ", ".join(names[:SENSOR_EVENTS_NAMED])
    more = len(names) - SENSOR_EVENTS_NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def _flags(flags: int) -> str:
    return ", ".join(flag_names(flags)) or "none"
