"""The one command path, in the pure core: roles, the site's limits, precedence,
overrides that expire, and the audit record every command leaves."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from thermogate.controller.core import (
    Acknowledge,
    ClearCurtailment,
    Controller,
    LoadInfo,
    OverrideActuator,
    Principal,
    RequestCurtailment,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
    SetTuning,
)
from thermogate.controller.core.alarms import Alarms
from thermogate.controller.core.power import GRID_RESTORE_FRAC_S
from thermogate.controller.signals import Observation
from thermogate.hil.runner import ScenarioPlant

ALICE = Principal("alice", "operator", "console")
ERIN = Principal("erin", "engineer", "opcua")
VIC = Principal("vic", "viewer", "opcua")


class Loop:
    """The core in lockstep with the simulated plant (no sensor noise)."""

    def __init__(self, site, planner=None) -> None:
        self.sim = ScenarioPlant(site, "normal-day", sensors=False)
        self.ctrl = Controller(site, self.sim.pmap, planner=planner)
        self.results = []

    @property
    def t(self) -> float:
        return self.sim.plant.t

    def scans(self, n: int) -> None:
        plant = self.sim.plant
        for _ in range(n):
            values = plant.sensors.sample()
            res = self.ctrl.scan(Observation(plant.t, values, np.ones(len(values), bool)))
            for w in res.writes:
                plant.write(w.point, w.value)
            self.results.append(res)
            self.sim.step()

    def writes(self, point: str) -> list:
        return [w for r in self.results for w in r.writes if w.point == point]

    def give(self, cmd, by=ALICE):
        return self.ctrl.command(cmd, by, self.t)


@pytest.fixture
def warm(site) -> Loop:
    """A controller whose zones have left fail-safe."""
    lp = Loop(site)
    lp.scans(5)
    assert not lp.ctrl.failsafe.in_failsafe()
    return lp


# -- roles ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cmd", "least"),
    [
        (SetMode("manual"), "operator"),
        (SetSetpoint("loop1_supply", 33.0), "operator"),
        (Acknowledge(None), "operator"),
        (RequestCurtailment(2000.0, 600.0), "operator"),
        (SetTuning("loop1_supply", kp=2.0), "engineer"),
        (ResetInterlock(None), "engineer"),
    ],
)
def test_each_role_may_give_only_the_commands_it_is_trusted_with(site, cmd, least):
    ranks = ("viewer", "operator", "engineer")
    for role in ranks:
        ctrl = Controller(site, ScenarioPlant(site, "normal-day", sensors=False).pmap)
        res = ctrl.command(cmd, Principal("u", role, "console"), 0.0)
        allowed = ranks.index(role) >= ranks.index(least)
        if not allowed:
            assert not res.accepted
            assert f"needs role {least}" in res.message
            assert res.audit.ok is False and res.audit.who == "u" and res.audit.where == "console"
        elif not res.accepted:  # allowed, but refused on its merits (nothing to ack)
            assert "needs role" not in res.message


def test_the_grid_may_only_curtail(site):
    ctrl = Controller(site, ScenarioPlant(site, "normal-day", sensors=False).pmap)
    grid = Principal.grid()
    assert ctrl.command(RequestCurtailment(2500.0, 900.0), grid, 0.0).accepted
    res = ctrl.command(SetMode("manual"), grid, 0.0)
    assert not res.accepted and "the grid may only request or clear curtailments" in res.message
    assert ctrl.state.mode == "auto"
    assert ctrl.command(ClearCurtailment(None), grid, 0.0).accepted


def test_a_refused_command_changes_nothing_and_is_audited(site):
    ctrl = Controller(site, ScenarioPlant(site, "normal-day", sensors=False).pmap)
    before = ctrl.saved_state()
    version = ctrl.state.version
    res = ctrl.command(SetMode("manual", "lunch"), VIC, 12.0)
    assert not res.accepted
    assert ctrl.saved_state() == before and ctrl.state.version == version
    a = res.audit
    assert (a.t, a.who, a.where, a.target, a.ok) == (12.0, "vic", "opcua", "mode", False)
    assert "lunch" in a.why and "refused" in a.why


# -- the site's limits ------------------------------------------------------------
def test_a_setpoint_is_checked_against_what_its_zone_can_take(warm):
    res = warm.give(SetSetpoint("loop1_supply", 60.0))
    assert not res.accepted and "outside 10..42" in res.message
    res = warm.give(SetSetpoint("tank01_fluid", 59.0))  # the tank's alarm is 60: too close
    assert not res.accepted and "below the tank's fluid_alarm_c 60" in res.message
    res = warm.give(SetSetpoint("nope_loop", 30.0))
    assert not res.accepted and "no control loop 'nope_loop'" in res.message
    # a loop's name alone names each of its control loops, not the closest spelling
    res = warm.give(SetSetpoint("loop1", 30.0))
    assert not res.accepted and "did you mean 'loop1_dp' or 'loop1_supply'?" in res.message
    # by the point it measures, as a technician knows it
    res = warm.give(SetSetpoint("loop1.supply_temp", 34.0, "warmer water"))
    assert res.accepted, res.message
    assert (res.audit.old, res.audit.new) == (32.0, 34.0)
    warm.scans(1)
    loops = [c.name for c in warm.ctrl.site.control_loops]
    sp = warm.results[-1].setpoints[loops.index("loop1_supply")]
    assert sp >= 34.0  # the base moved; trim & respond may add on top


@pytest.mark.parametrize(
    ("point", "value", "duration", "why"),
    [
        ("tank01.valve_cmd", 150.0, 60.0, "outside tank01.valve_cmd's range 0..100"),
        ("tank01.valve_cmd", math.nan, 60.0, "outside"),
        ("tank01.valve_cmd", 50.0, 0.0, "must be at least 1 s"),
        ("tank01.valve_cmd", 50.0, 2 * 86400.0, "at most 24 h"),
        ("tank01.valve_cmd", 50.0, math.inf, "at most 24 h"),
        ("tank01.enable", 0.5, 60.0, "a bit: 0 or 1"),
        ("tank01.fluid_temp", 40.0, 60.0, "not an actuator"),
        ("plc.heartbeat", 1.0, 60.0, "not an actuator"),
        # a held release would release a trip as the frequency recovers, unasked
        ("plc.ufls_release", 1.0, 60.0, "not an actuator"),
        ("plc.reset", 1.0, 60.0, "not an actuator"),
        ("tank01.valv_cmd", 50.0, 60.0, "did you mean 'tank01.valve_cmd'"),
    ],
)
def test_an_override_outside_the_point_or_without_an_end_is_refused(
    warm, point, value, duration, why
):
    res = warm.give(OverrideActuator(point, value, duration))
    assert not res.accepted
    assert why in res.message
    assert not warm.ctrl.state.overrides


# -- overrides, precedence ----------------------------------------------------------
def test_an_override_is_written_as_its_giver_and_expires_by_itself(warm):
    res = warm.give(OverrideActuator("tank01.valve_cmd", 80.0, 30.0, "flush the HX"))
    assert res.accepted, res.message
    warm.scans(3)
    w = warm.writes("tank01.valve_cmd")[-1]
    assert (w.value, w.who, w.where) == (80.0, "alice", "console")
    assert w.why == "manual override by console:alice (flush the HX)"
    assert warm.sim.plant.cmd_valve[0] == 80.0
    warm.scans(35)  # the override ran out after 30 s: the loop has the valve again
    assert "tank01.valve_cmd" not in warm.ctrl.state.overrides
    expired = [a for r in warm.results for a in r.audit if a.target == "tank01.valve_cmd"]
    assert len(expired) == 1 and "expired" in expired[0].why and expired[0].who == "controller"
    warm.scans(60)  # the loop took over bumplessly; its own value is written by the minute
    assert warm.writes("tank01.valve_cmd")[-1].who == "controller"


def test_an_override_that_disarms_the_grid_relay_ends_with_it_armed_as_the_site_says(warm):
    # Once nothing commanded the arming: the override's 0 stayed on the coil for good.
    assert warm.sim.site.grid.under_frequency_armed
    assert warm.give(OverrideActuator("plc.ufls_armed", 0.0, 30.0, "relay test")).accepted
    warm.scans(3)
    assert warm.sim.plant.ufls_armed is False
    assert warm.results[-1].status["under_frequency"]["armed"] is False
    warm.scans(35)
    assert "plc.ufls_armed" not in warm.ctrl.state.overrides
    assert warm.sim.plant.ufls_armed is True
    last = warm.writes("plc.ufls_armed")[-1]
    assert (last.value, last.who) == (1.0, "controller") and "site description" in last.why


def test_return_to_auto_ends_an_override_at_once(warm):
    assert warm.give(OverrideActuator("loop1.dc1.fan_cmd", 100.0, 600.0)).accepted
    warm.scans(2)
    res = warm.give(ReturnToAuto("loop1.dc1.fan_cmd"))
    assert res.accepted and res.audit.old == 100.0
    assert not warm.give(ReturnToAuto("loop1.dc1.fan_cmd")).accepted  # nothing left to end
    warm.scans(2)
    assert warm.writes("loop1.dc1.fan_cmd")[-1].who == "controller"


def test_a_zone_in_fail_safe_beats_an_override(site):
    lp = Loop(site)  # no scan yet: every zone waits in fail-safe for its first reads
    res = lp.give(OverrideActuator("tank01.valve_cmd", 10.0, 600.0))
    assert not res.accepted
    assert "held by protection (fail-safe" in res.message
    assert "interlock beats an override" in res.message


def test_a_latched_trip_beats_an_override_of_its_enable(warm):
    warm.ctrl.state.latched["tank01: PLC interlock"] = "tripped by the PLC at t=3"
    res = warm.give(OverrideActuator("tank01.enable", 1.0, 600.0))
    assert not res.accepted and "latched off by a PLC trip" in res.message


def test_an_override_that_protection_meets_later_yields_to_it(warm):
    """Given while the zone is healthy, the override is written; once the zone's
    inputs go bad, the fail-safe value is written instead, with its reason."""
    assert warm.give(OverrideActuator("tank01.valve_cmd", 30.0, 600.0)).accepted
    warm.scans(2)
    assert warm.sim.plant.cmd_valve[0] == 30.0
    plant = warm.sim.plant
    values = plant.sensors.sample()
    fresh = np.ones(len(values), bool)
    ix = warm.ctrl.pmap.index.tanks[0]
    fresh[[ix.fluid_temp, ix.fluid_temp_b]] = False  # both fluid sensors stop answering
    res = warm.ctrl.scan(Observation(plant.t + 1.0, values, fresh))
    w = next(w for w in res.writes if w.point == "tank01.valve_cmd")
    # the safe value, opening at the valve's rate limit, as the controller's
    assert w.value > 30.0 and w.why.startswith("fail-safe") and w.who == "controller"


def test_an_override_of_a_budget_stays_within_protections_caps(warm):
    # the tank's thermal limit holds it at 50 kW (as if it had been hot a moment ago)
    warm.ctrl.thermal.zone_limits["tank01"].base_kw = {"tank01": 50.0}
    assert warm.give(OverrideActuator("tank01.power_budget_kw", 150.0, 600.0)).accepted
    warm.scans(1)
    w = warm.writes("tank01.power_budget_kw")[-1]
    cap = warm.ctrl.thermal.cap["tank01"]  # cooling: the cap came back a little this scan
    assert 50.0 <= cap < 60.0
    assert w.value <= cap and "capped by protection" in w.why and w.who == "alice"


# -- modes -------------------------------------------------------------------------------
def test_manual_mode_holds_every_loop_and_auto_takes_over_bumplessly(warm):
    warm.scans(20)
    reg = warm.ctrl.regulation
    assert warm.give(SetMode("manual", "tuning by hand")).accepted
    warm.scans(1)
    held = {c.name: reg._pid[c.name].output for c in reg.loops}
    warm.sim.plant.T_tank[0] += 4.0  # a disturbance the loops would answer in auto
    warm.scans(30)
    assert {c.name: reg._pid[c.name].output for c in reg.loops} == held
    assert warm.give(SetMode("auto")).accepted
    warm.scans(1)
    c = reg.loops[0]
    assert abs(reg._pid[c.name].output - held[c.name]) <= c.slew_per_s * 1.0 + 1e-9


class _Stepping:
    """A planner that wants 60 % of every rating (all of it fits the import), then
    30 % after t = 100 s."""

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict, now: object
    ) -> dict[str, float]:
        return {ld.name: ld.rated_kw * (0.6 if t < 100.0 else 0.3) for ld in loads}


def test_maintenance_mode_holds_the_workloads_budgets(site):
    lp = Loop(site, planner=_Stepping())
    lp.scans(10)
    assert lp.give(SetMode("maintenance", "replacing a PSU")).accepted
    lp.scans(200)  # the planner wants half from t = 100 s: not asked in maintenance
    assert lp.sim.plant.cmd_budget[0] == pytest.approx(0.6 * site.tanks[0].rated_kw, abs=0.1)
    assert lp.give(SetMode("auto")).accepted
    lp.scans(3)
    assert lp.sim.plant.cmd_budget[0] == pytest.approx(0.3 * site.tanks[0].rated_kw, abs=0.1)


# -- tunings, resets, curtailments -----------------------------------------------------------
def test_an_engineer_retunes_a_loop_within_the_sites_bounds(warm):
    assert not warm.give(SetTuning("loop1_supply", kp=-1.0), ERIN).accepted
    assert not warm.give(SetTuning("loop1_supply"), ERIN).accepted  # no gain given
    res = warm.give(SetTuning("loop1_supply", kp=3.5, ki=0.01), ERIN)
    assert res.accepted and "kp" in res.message
    warm.scans(1)
    reg = warm.ctrl.regulation
    cfg = reg._config(next(c for c in reg.loops if c.name == "loop1_supply"))
    assert (cfg.kp, cfg.ki) == (3.5, 0.01)


def test_a_reset_names_a_latched_trip_or_all_of_them(warm):
    res = warm.give(ResetInterlock("tank02"), ERIN)
    assert not res.accepted and "no latched trip" in res.message
    assert not warm.give(ResetInterlock("tank99"), ERIN).accepted
    res = warm.give(ResetInterlock(None, "after the leak was fixed"), ERIN)
    assert res.accepted  # pulses the PLC's reset even with nothing latched here
    assert "none latched as last read" in res.message  # and says so
    warm.ctrl.state.latched["tank02: PLC interlock"] = "tripped by the PLC"
    res = warm.give(ResetInterlock(None), ERIN)
    assert res.accepted and "released once its PLC interlock reads clear" in res.message
    warm.scans(1)
    w = warm.writes("plc.reset")[-1]
    assert (w.value, w.who, w.where) == (1.0, "erin", "opcua")


def test_a_reason_is_kept_as_one_plain_line_of_bounded_length(warm):
    """A --why with an ESC sequence and a newline was stored verbatim: whoever read
    the audit log on a terminal had it recoloured, and a fake second row shown."""
    res = warm.give(SetMode("manual", "DR \x1b[2J event\nok 17"))
    assert res.accepted
    assert res.audit.why.endswith("(DR \\x1b[2J event\\x0aok 17)")
    assert "\x1b" not in res.audit.why and "\n" not in res.audit.why
    res = warm.give(SetMode("auto", "x" * 5000))
    assert res.audit.why.endswith("x…)") and len(res.audit.why) < 400


def test_a_curtailment_lowers_the_import_limit_until_it_ends(warm):
    site_kw = warm.ctrl.site.import_limit_kw
    assert not warm.give(RequestCurtailment(site_kw + 1.0, 60.0)).accepted
    assert not warm.give(RequestCurtailment(1000.0, 60.0, start=warm.t - 3600.0)).accepted
    res = warm.give(RequestCurtailment(2000.0, 60.0, why="DR event 17"))
    assert res.accepted and res.audit.new == 2000.0
    warm.scans(2)
    assert warm.results[-1].status["import_limit_kw"] == 2000.0
    warm.scans(62)
    # it ended: the limit in force climbs back at the restore rate, never in one step
    back = [r.status["import_limit_kw"] for r in warm.results[-3:]]
    assert 2000.0 < back[0] < back[-1] < site_kw
    steps = [b - a for a, b in itertools.pairwise(back)]
    rate = GRID_RESTORE_FRAC_S * site_kw * warm.ctrl.scan_s
    assert all(s == pytest.approx(rate) for s in steps)
    warm.scans(round((site_kw - back[-1]) / rate) + 2)
    assert warm.results[-1].status["import_limit_kw"] == site_kw
    ended = [a for r in warm.results for a in r.audit if a.target.startswith("curtailment")]
    assert len(ended) == 1 and "ended" in ended[0].why


def test_a_hold_shorter_than_a_second_is_refused_and_durations_read_to_the_second(warm):
    """`curtail 2000 --for 0.5s` was accepted (it never reached the plant), and a
    start computed from an event's time was said as `in 11.4796 min`."""
    for cmd in (
        RequestCurtailment(2000.0, 0.5),
        OverrideActuator("tank01.valve_cmd", 50.0, 0.5),
    ):
        res = warm.give(cmd)
        assert not res.accepted and "must be at least 1 s" in res.message, res.message
    res = warm.give(RequestCurtailment(2000.0, 5400.0, start=warm.t + 689.4))
    assert res.accepted and "in 11 min 29 s for 1 h 30 min" in res.message, res.message


# -- alarms ----------------------------------------------------------------------------------
def test_acknowledgement_follows_isa_18_2():
    al = Alarms()
    al.alarm(1.0, "tank01.fluid_high", True, "hot", 700)
    al.acknowledge("tank01.fluid_high", "console:alice")
    rec = al.record("tank01.fluid_high")
    assert rec is not None and rec.active and rec.acked  # still active: still listed
    al.alarm(2.0, "tank01.fluid_high", False, "")
    assert al.record("tank01.fluid_high") is None  # acknowledged and cleared: gone
    al.alarm(3.0, "loop1.low_flow", True, "low", 800)
    al.alarm(4.0, "loop1.low_flow", False, "")
    rec = al.record("loop1.low_flow")
    assert rec is not None and not rec.active and not rec.acked  # back to normal, unacked
    assert al.acknowledge(None, "cli:bob") == ["loop1.low_flow"]
    assert al.records() == []
    assert al.acknowledge(None, "cli:bob") == []


def test_acknowledging_through_the_command_path(warm):
    res = warm.give(Acknowledge("no.such_alarm"))
    assert not res.accepted and "no alarm 'no.such_alarm'" in res.message
    warm.ctrl.alarms.alarm(warm.t, "loop1.supply_high", True, "warm", 600)
    res = warm.give(Acknowledge("loop1.supply_high", "seen"))
    assert res.accepted and res.audit.target == "alarm:loop1.supply_high"
    warm.scans(1)
    assert any(e.kind == "ack" for e in warm.results[-1].events)
    assert not warm.give(Acknowledge("loop1.supply_high")).accepted  # already


# -- state ------------------------------------------------------------------------------
def test_the_decided_state_round_trips_and_drops_what_no_longer_exists(warm, site):
    assert warm.give(OverrideActuator("tank01.valve_cmd", 70.0, 900.0)).accepted
    assert warm.give(SetSetpoint("cdu1_supply", 38.0)).accepted
    assert warm.give(RequestCurtailment(2300.0, 600.0)).accepted
    warm.ctrl.state.latched["tank02: PLC interlock"] = "tripped"
    saved = warm.ctrl.saved_state()
    saved["overrides"]["gone01.valve_cmd"] = dict(saved["overrides"]["tank01.valve_cmd"])
    fresh = Controller(site, warm.ctrl.pmap)
    notes = fresh.restore_state(saved)
    st = fresh.state
    assert st.overrides["tank01.valve_cmd"].value == 70.0
    assert (
        st.overrides["tank01.valve_cmd"].until
        == warm.ctrl.state.overrides["tank01.valve_cmd"].until
    )
    assert "gone01.valve_cmd" not in st.overrides
    assert any("gone01.valve_cmd" in n for n in notes)
    assert st.setpoints == {"cdu1_supply": 38.0}
    assert [c.limit_kw for c in st.curtailments] == [2300.0]
    assert st.latched == {"tank02: PLC interlock": "tripped"}
    assert saved["estimator"] and fresh.estimator.state() == warm.ctrl.estimator.state()


def test_a_refused_value_is_said_with_the_digits_that_put_it_outside(warm):
    """57.50001 was refused as "setpoint 57.5 ... is outside 20..57.5"."""
    c = warm.ctrl.site.control_loops[0]
    hi = float(warm.give(SetSetpoint(c.name, 1e9)).message.split("..")[1].split()[0])
    res = warm.give(SetSetpoint(c.name, hi + 1e-5))
    assert not res.accepted and f"setpoint {hi + 1e-5!r} of" in res.message, res.message
