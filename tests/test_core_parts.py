"""Each part of the control core on its own, fed hand-made scan views (no plant).

The closed-loop tests (``test_controller_closed_loop.py``) show the parts
working together on the simulated plant; these pin each part's rules.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from thermogate.controller.core.actuation import (
    WRITE_REFRESH_S,
    WRITE_VERIFY_S,
    Actuation,
    _write,
)
from thermogate.controller.core.alarms import Alarms
from thermogate.controller.core.planning import (
    DefaultPlanner,
    LoadInfo,
    Planning,
    SiteNow,
    asked_all,
    row_cap_w,
)
from thermogate.controller.core.power import GRID_LIMIT_MARGIN, PowerProtection
from thermogate.controller.core.regulation import (
    DP_TRIM_MIN_KPA,
    SUPPLY_MIN_APPROACH_K,
    Regulation,
)
from thermogate.controller.core.state import ControllerState
from thermogate.controller.core.thermal import (
    LIMIT_KI_PER_K_S,
    LIMIT_KP_PER_K,
    THERMAL_RESTORE_FRAC_S,
    THERMAL_SOFT_MARGIN_K,
    ThermalProtection,
)
from thermogate.controller.core.topology import Topology
from thermogate.controller.core.trips import TripLatch, latch_key
from thermogate.controller.core.view import Cmd, ScanView
from thermogate.controller.core.zones import FailSafeZones
from thermogate.controller.signals import Write
from thermogate.plc.points import BAD, GOOD


@pytest.fixture(scope="module")
def topo(site, demo_pmap) -> Topology:
    return Topology(site, demo_pmap)


def view(topo: Topology, t: float = 100.0, dt: float = 1.0, bad=(), **values) -> ScanView:
    """A scan view: every point GOOD at a plausible value, some set, some BAD.

    Keyword names are point names with ``__`` for the dot (``tank01__fluid_temp``)."""
    pts = topo.pmap.points
    v = np.array([(p.min if p.min is not None else 0.0) for p in pts], dtype=float)
    ix = topo.ix
    for tp in ix.tanks:
        v[[tp.fluid_temp, tp.fluid_temp_b]] = 45.0
    for lp in ix.loops:
        v[lp.supply_temp] = 30.0
        v[lp.flow] = 300.0
    for cp in ix.cdus:
        v[cp.supply_temp] = 38.0
    for dp in ix.dry_coolers:
        v[dp.fan_speed] = 50.0
    for name, x in values.items():
        v[topo.pmap.position(name.replace("__", "."))] = x
    q = np.full(len(pts), GOOD, dtype=np.uint8)
    for name in bad:
        q[topo.pmap.position(name)] = BAD
    return ScanView(t, dt, v, q, {}, None)


# -- fail-safe zones ------------------------------------------------------------------
def test_a_zone_needs_its_inputs_but_one_good_fluid_sensor_of_two_will_do(topo):
    zones, al = FailSafeZones(topo), Alarms()
    zones.update(1.0, view(topo).quality, al)
    assert zones.in_failsafe() == []
    # the start-up fail-safe left by every zone at once: one event, not one "left" each
    [ready] = al.events
    assert (ready.kind, ready.source) == ("restore", "zones")
    assert ready.message.startswith(f"{len(zones.zones)} zones ready: inputs read")
    al.begin_scan()
    zones.update(2.0, view(topo, bad=["tank01.fluid_temp"]).quality, al)
    assert zones.in_failsafe() == []  # sensor B carries the tank
    zones.update(3.0, view(topo, bad=["tank01.fluid_temp", "tank01.fluid_temp_b"]).quality, al)
    assert zones.in_failsafe() == ["tank01"]
    z = zones.zones["tank01"]
    assert z.reason == "bad inputs: tank01.fluid_temp, tank01.fluid_temp_b"
    assert [(e.kind, e.source) for e in al.events] == [("failsafe", "tank01")]
    # and an alarm SCADA lists and a person acknowledges (an event alone was not)
    rec = al.record("failsafe:tank01")
    assert rec is not None and rec.active and rec.severity == 800
    assert rec.message.startswith("zone tank01 in fail-safe: bad inputs")
    al.begin_scan()
    zones.update(4.0, view(topo).quality, al)
    assert [(e.kind, e.source) for e in al.events] == [("restore", "tank01")]
    assert not al.record("failsafe:tank01").active  # cleared, kept until acknowledged


def test_a_zone_still_in_start_up_fail_safe_is_an_event_then_and_leaves_with_one(topo):
    """A tank the PLC did not serve was in fail-safe with nothing in the event log:
    the start-up state had no event, and its "ready" never came."""
    from thermogate.controller.core.zones import STARTUP_SCANS

    zones, al = FailSafeZones(topo), Alarms()
    bad = ["tank03.fluid_temp", "tank03.fluid_temp_b"]
    seen = []
    for k in range(STARTUP_SCANS):
        al.begin_scan()
        zones.update(float(k), view(topo, bad=bad).quality, al)
        seen += [(e.kind, e.source) for e in al.events]
    assert seen[0] == ("restore", "zones")  # every other zone was ready at once
    assert seen[1:] == [("failsafe", "tank03")]  # then tank03, once start-up was over
    al.begin_scan()
    zones.update(9.0, view(topo).quality, al)
    assert [(e.kind, e.source, e.message) for e in al.events] == [
        ("restore", "tank03", "zone tank03 left fail-safe")
    ]


def test_a_zone_in_fail_safe_takes_its_safe_state(topo, site):
    zones = FailSafeZones(topo)  # every zone starts in fail-safe
    ix = topo.ix
    cmds = {ix.tanks[0].valve_cmd: Cmd(20.0, "loop"), ix.tanks[0].power_budget_kw: Cmd(90.0, "")}
    zones.apply(cmds)
    assert cmds[ix.tanks[0].valve_cmd].value == 100.0
    assert cmds[ix.tanks[0].enable].value == 0.0  # mining: off
    gpu = next(i for i, t in enumerate(site.tanks) if t.workload == "gpu")
    assert cmds[ix.tanks[gpu].power_budget_kw].value == round(0.5 * site.tanks[gpu].rated_kw, 1)
    assert all(cmds[p.speed_cmd].value == 100.0 for p in ix.pumps)
    assert all(cmds[d.fan_cmd].value == 100.0 for d in ix.dry_coolers)
    assert all(c.why.startswith("fail-safe: ") for c in cmds.values())


# -- actuation -----------------------------------------------------------------------
def test_actuation_limits_raises_not_cuts_and_skips_what_the_plant_would_not_notice(topo):
    act = Actuation(topo, scan_s=1.0)
    tp = topo.ix.tanks[0]
    name = topo.pmap.name_of(tp.valve_cmd)

    def sent(t: float, value: float, **kw) -> list:
        return [w for w in act.actuate(t, {tp.valve_cmd: Cmd(value, "x", **kw)}) if w.point == name]

    assert [w.value for w in sent(0.0, 20.0)] == [20.0]
    assert [w.value for w in sent(1.0, 90.0)] == [30.0]  # up at 10 %/s
    assert [w.value for w in sent(2.0, 5.0)] == [5.0]  # down at once
    assert sent(3.0, 5.3) == []  # inside the 0.5 % deadband
    assert [w.value for w in sent(3.0 + WRITE_REFRESH_S, 5.3)] == [pytest.approx(5.3)]  # again
    assert [w.value for w in sent(70.0, 80.0, override=True)] == [80.0]  # a person: not limited
    assert [w.value for w in sent(71.0, 250.0, override=True)] == [100.0]  # into its range


def test_a_command_repeating_what_was_sent_waits_for_the_refresh_but_a_pulse_never_waits(topo):
    act = Actuation(topo, scan_s=1.0)
    tp = topo.ix.tanks[0]
    valve, reset = topo.pmap.name_of(tp.valve_cmd), topo.pmap.name_of(topo.ix.plc.reset)

    def sent(t: float, **cmds: Cmd) -> list[str]:
        by_name = {"valve": tp.valve_cmd, "reset": topo.ix.plc.reset}
        return [w.point for w in act.actuate(t, {by_name[k]: c for k, c in cmds.items()})]

    # the same value every scan: on the wire at first, then once per refresh window
    on_wire = [t for t in range(0, 200) if valve in sent(float(t), valve=Cmd(42.0, "x"))]
    assert on_wire[0] == 0
    assert 0 < on_wire[1] <= WRITE_REFRESH_S  # a restarted PLC gets it within the period
    gaps = [b - a for a, b in itertools.pairwise(on_wire[1:])]
    assert gaps == [WRITE_REFRESH_S] * len(gaps)
    assert len(on_wire) >= 4
    for t in (201.0, 202.0):
        assert reset in sent(t, reset=Cmd(1.0, "reset", pulse=True))


def test_the_refreshes_of_steady_commands_are_spread_over_the_period_not_sent_in_one_scan(topo):
    act = Actuation(topo, scan_s=1.0)
    # every command point of the site held at its minimum: nothing changes, so
    # after the first scan only refreshes go out
    cmds = {
        i: Cmd(p.min if p.min is not None else 0.0, "steady")
        for i, p in enumerate(topo.pmap.points)
        if p.writable and p.table == "holding" and i != topo.ix.plc.heartbeat
    }
    scans = range(0, 1 + 2 * int(WRITE_REFRESH_S))
    per_scan = [len(act.actuate(float(t), cmds)) - 1 for t in scans]  # less the heartbeat
    assert per_scan[0] == len(cmds) > 20
    window = per_scan[1 + int(WRITE_REFRESH_S) :]  # one whole period after the first
    assert sum(window) == len(cmds)  # each command once per period...
    assert max(window) <= math.ceil(len(cmds) / WRITE_REFRESH_S) + 2  # ...a share a scan


def test_the_heartbeat_changes_every_scan_and_wraps(topo):
    act = Actuation(topo, scan_s=1.0)
    act.heartbeat = 65534
    beats = [act.actuate(float(k), {})[0] for k in range(3)]
    assert [(w.point, w.value) for w in beats] == [
        ("plc.heartbeat", 65535.0),
        ("plc.heartbeat", 0.0),
        ("plc.heartbeat", 1.0),
    ]


def test_a_write_that_does_not_read_back_is_an_alarm_and_is_sent_again(topo):
    act, al = Actuation(topo, scan_s=1.0), Alarms()
    tp = topo.ix.tanks[0]
    act.actuate(0.0, {tp.valve_cmd: Cmd(60.0, "x")})
    act.verify(view(topo, t=WRITE_VERIFY_S + 1.0, tank01__valve_cmd=20.0), al)
    assert al.active() == ["write:tank01.valve_cmd"]
    again = act.actuate(WRITE_VERIFY_S + 1.0, {tp.valve_cmd: Cmd(60.0, "x")})
    assert any(w.point == "tank01.valve_cmd" for w in again)
    act.verify(view(topo, t=WRITE_VERIFY_S + 2.0, tank01__valve_cmd=60.0), al)
    assert al.active() == []


_cmd_value = st.one_of(
    st.floats(-20.0, 1500.0, allow_nan=False),
    st.sampled_from(
        [0.0, -0.0, 20.0, 20.2, 20.5, 21.0, 50.0, 51.0, 100.0, 700.0, math.nan, math.inf]
    ),
    st.integers(-5, 800),
)
_scan = st.tuples(
    st.floats(0.05, 70.0),  # time since the last scan
    st.lists(st.tuples(st.integers(0, 5), _cmd_value, st.booleans(), st.booleans()), max_size=6),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scans=st.lists(_scan, min_size=1, max_size=25))
@example(  # a deadband's edge: a valve 0.5 %, a budget 1 kW from what was sent
    scans=[
        (1.0, [(0, 20.0, False, False), (1, 50.0, False, False)]),
        (1.0, [(0, 20.5, False, False), (1, 51.0, False, False)]),
    ]
)
def test_the_vector_write_rules_send_exactly_what_the_scalar_rules_send(topo, scans):
    """The vector passes (repeats, then resolution, range, rate and deadband as
    arrays) only decide what to skip: the same commands through the scalar rules
    alone (a small hall's path) give the same writes, value for value."""
    ix = topo.ix
    points = [
        ix.tanks[0].valve_cmd,  # %: 10 %/s, 0.5 % deadband
        ix.tanks[0].power_budget_kw,  # kW: 5 % of its rating a second
        ix.rows[0].gpu_power_cap_w,  # W
        ix.pumps[0].speed_cmd,
        ix.tanks[1].enable,  # a coil
        ix.plc.reset,  # a pulse, as the trips send it
    ]
    vec, ref = Actuation(topo, scan_s=1.0), Actuation(topo, scan_s=1.0)
    vec.vector_from_n = 0  # the vector passes however few the commands
    ref.vector_from_n = 1 << 30  # the scalar rules alone
    t = 100.0
    for dt, given_cmds in scans:
        t += dt
        cmds = {
            points[k]: Cmd(value, "x", override=override, pulse=pulse or points[k] == ix.plc.reset)
            for k, value, override, pulse in given_cmds
        }
        got, want = vec.actuate(t, dict(cmds)), ref.actuate(t, dict(cmds))
        assert [(w.point, repr(w.value), w.why) for w in got] == [
            (w.point, repr(w.value), w.why) for w in want
        ]


def test_a_write_built_in_one_step_is_the_same_write():
    fast, made = _write("a.b", 1.5, "why", "who", "where"), Write("a.b", 1.5, "why", "who", "where")
    assert fast == made and repr(fast) == repr(made) and hash(fast) == hash(made)
    assert vars(fast) == vars(made)


# -- protection ------------------------------------------------------------------------
def test_a_hot_tank_sheds_in_proportion_at_once_and_its_limit_is_lifted_once_cool(topo, site):
    th, al = ThermalProtection(topo), Alarms()
    t01 = site.tanks[0]
    soft = t01.limits.fluid_alarm_c - THERMAL_SOFT_MARGIN_K
    kp, ki = LIMIT_KP_PER_K, LIMIT_KI_PER_K_S

    def at(t: float, temp: float) -> float:
        v = view(
            topo, t=t, tank01__fluid_temp=temp, tank01__fluid_temp_b=temp, tank01__power_kw=100.0
        )
        th.protect(v, al)
        return th.cap["tank01"]

    # 1 K over: the proportional term sheds its share at once (and a second's integral)
    assert at(100.0, soft + 1.0) == pytest.approx(100.0 * (1 - kp - ki))
    assert math.isinf(th.cap["tank02"])
    assert [(e.kind, e.source, e.data["action"]) for e in al.events] == [
        ("shed", "tank01", "applied")
    ]
    for k in range(1, 11):  # held 1 K over: the integral sheds more every second
        at(100.0 + k, soft + 1.0)
    # back at the soft limit: the proportional part returns at once, the integral holds
    assert at(111.0, soft) == pytest.approx(100.0 * (1 - 11 * ki))
    al.begin_scan()
    lifted_at = None
    for k in range(1, 1000):  # cool: back to the rating at the restore rate, then lifted
        if math.isinf(at(111.0 + k, soft - 3.0)):
            lifted_at = k
            break
    climb_s = (t01.rated_kw - 100.0) / (THERMAL_RESTORE_FRAC_S * t01.rated_kw)
    assert lifted_at is not None and climb_s <= lifted_at <= climb_s + 2
    assert [(e.kind, e.source, e.data["action"]) for e in al.events] == [
        ("restore", "tank01", "lifted")
    ]


def test_a_loop_out_of_cooling_sheds_training_before_inference(topo, site):
    th, al = ThermalProtection(topo), Alarms()
    cdu = site.cdus[0]
    loop = next(lp for lp in topo.ix.loops if lp.name == cdu.loop)
    v = {  # every fan of the CDU's loop flat out: no cooling left
        topo.pmap.name_of(dc.fan_speed).replace(".", "__"): 100.0
        for d, dc in zip(site.dry_coolers, topo.ix.dry_coolers, strict=True)
        if d.loop == cdu.loop
    }
    hot = cdu.supply_alarm_c - THERMAL_SOFT_MARGIN_K + 1.0
    loads = {f"{ld.name}__power_kw": 0.9 * ld.rated_kw for ld in topo.loads}
    th.protect(view(topo, **{f"{cdu.name}__supply_temp": hot}, **v, **loads), al)
    on_loop = [ld for ld in topo.loads if topo.site.loops[ld.loop].name == loop.name]
    capped = {ld.wclass for ld in on_loop if th.cap[ld.name] < 0.9 * ld.rated_kw - 1e-6}
    assert capped == {"training"}  # the rows go first, inference keeps its power
    assert {(e.source, e.data["action"]) for e in al.events} >= {(loop.name, "applied")}


def test_power_protection_sheds_mining_before_training_before_inference(topo, site):
    pw, al = PowerProtection(topo), Alarms()
    limit = GRID_LIMIT_MARGIN * site.import_limit_kw
    loads = {
        f"{ld.name}__power_kw": 0.9 * ld.rated_kw for ld in topo.loads
    }  # everything near full power
    v = view(topo, site__power_kw=limit * 1.05, **loads)
    pw.protect(v, al)
    shed = {ld.wclass for ld in topo.loads if math.isfinite(pw.cap[ld.name])}
    assert shed == {"mining"}  # 5 % over: mining alone can carry it
    assert any(e.kind == "shed" and "mining" in e.message for e in al.events)


def test_the_grid_limit_spares_an_overridden_load_but_not_the_others(topo, site):
    pw, al = PowerProtection(topo), Alarms()
    loads = {f"{ld.name}__power_kw": 0.9 * ld.rated_kw for ld in topo.loads}
    v = view(topo, site__power_kw=site.import_limit_kw, **loads)
    pw.protect(v, al, overridden={"tank01"})
    assert math.isinf(pw.cap["tank01"]) and math.isfinite(pw.cap["tank02"])


def test_an_instruction_lowers_the_limit_and_never_raises_it(topo, site):
    pw = PowerProtection(topo)
    assert pw.grid_limit(None) == site.import_limit_kw
    assert pw.grid_limit(2000.0) == 2000.0
    assert pw.grid_limit(site.import_limit_kw + 500.0) == site.import_limit_kw
    assert pw.grid_limit(float("nan")) == site.import_limit_kw


# -- planning ---------------------------------------------------------------------------
class _Half:
    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict, now: SiteNow
    ) -> dict[str, float]:
        return {ld.name: ld.rated_kw / 2 for ld in loads}


def test_the_planner_is_bounded_by_protection_and_says_which_limit(topo, site):
    pl = Planning(topo, _Half())
    thermal = {ld.name: math.inf for ld in topo.loads}
    power = dict(thermal)
    thermal["tank01"] = 10.0
    cmds: dict = {}
    pl.allocate(view(topo), cmds, thermal, power, topo.site.import_limit_kw)
    t01, t02 = topo.load["tank01"], topo.load["tank02"]
    assert (cmds[t01.budget].value, cmds[t01.budget].why) == (10.0, "thermal limit")
    assert cmds[t02.budget].value == round(t02.rated_kw / 2, 1)
    assert cmds[t02.budget].why == "planner"
    row = topo.loads[-1]
    assert cmds[row.budget].value == round(row_cap_w(row.rated_kw / 2, row.rated_kw))


def test_a_stale_forecast_is_withheld_from_the_planner(topo):
    from thermogate.controller.core import FORECAST_FRESH_S, LoadForecast

    pl = Planning(topo, _Half())
    pl.set_forecast(0.0, {"tank01": LoadForecast(5.0, 20.0, 30.0, True)})
    assert pl.forecast(FORECAST_FRESH_S)["tank01"].headroom_kw == 5.0
    assert pl.forecast(FORECAST_FRESH_S + 1.0) == {}


_want = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-1000, 1000),
)


@given(wants=st.lists(_want, min_size=1, max_size=8), rated=st.floats(0.0, 2000.0))
def test_the_budget_asked_of_each_load_is_its_finite_want_above_zero_else_its_rating(wants, rated):
    names = [f"l{k}" for k in range(len(wants))]
    wanted = {n: w for n, w in zip(names, wants, strict=True) if w is not None}
    got = asked_all(wanted, names, [rated] * len(names))
    # the rule as it read before it ran over every load at once (Python's max: 0.0
    # unless the want is strictly above it, a -0.0 want included)
    want = [
        rated if (w := wanted.get(n)) is None or not math.isfinite(w) else max(0.0, w)
        for n in names
    ]
    assert [repr(x) for x in got] == [repr(x) for x in want]


class _Given:
    """A planner that asks what it is told to (``wanted`` set before each scan)."""

    def __init__(self) -> None:
        self.wanted: dict[str, float] = {}

    def plan(
        self, t: float, loads: list[LoadInfo], headroom: dict, now: SiteNow
    ) -> dict[str, float]:
        return self.wanted


_budget = st.one_of(
    st.floats(-10.0, 400.0, allow_nan=False),
    st.sampled_from([0.0, -0.0, 50.0, 50.04, math.nan]),
    st.integers(0, 300),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scans=st.lists(st.tuples(_budget, _budget, st.booleans()), min_size=1, max_size=12))
def test_a_tank_budget_command_kept_from_the_last_scan_is_the_one_made_anew(topo, scans):
    """``allocate`` keeps a tank's budget command while its budget and reason hold:
    every scan's commands equal those of a planning that makes them all anew."""
    planner = _Given()
    kept = Planning(topo, planner)
    t01 = topo.load["tank01"]
    for want, cap, by_power in scans:
        planner.wanted = {"tank01": want, "tank02": want}
        thermal = {ld.name: math.inf for ld in topo.loads}
        power = dict(thermal)
        (power if by_power else thermal)["tank01"] = cap
        got: dict = {}
        anew: dict = {}
        kept.allocate(view(topo), got, thermal, power, topo.site.import_limit_kw)
        Planning(topo, planner).allocate(view(topo), anew, thermal, power, 1e6)
        assert list(got) == list(anew)
        assert [(repr(c.value), c.why) for c in got.values()] == [
            (repr(c.value), c.why) for c in anew.values()
        ]
        assert repr(got[t01.budget].value) == repr(anew[t01.budget].value)
    assert isinstance(kept.planner, _Given) and not isinstance(kept.planner, DefaultPlanner)


def test_row_caps_span_200_to_700_watts_per_gpu():
    assert row_cap_w(0.0, 100.0) == 200.0
    assert row_cap_w(30.0, 100.0) == 200.0
    assert row_cap_w(100.0, 100.0) == 700.0
    assert row_cap_w(65.0, 100.0) == pytest.approx(450.0)


def test_a_row_of_other_gpus_is_capped_within_its_own_range():
    """A row of 1,000 W GPUs had its cap fixed at 200..700 W: once capped, neither
    the controller nor an integrator could give it its full power back."""
    from thermogate.plc.pointmap import build_point_map
    from thermogate.plc.site import demo_site_text, parse_site_text

    text = demo_site_text()
    at = text.index("[[rack_rows]]") + len("[[rack_rows]]\n")
    site = parse_site_text(text[:at] + "gpu_full_w = 1000.0\n" + text[at:], "<1kW>")
    pmap = build_point_map(site)
    row = site.rack_rows[0]
    cap = pmap[f"{row.name}.gpu_power_cap_w"]
    assert (cap.min, cap.max) == (286.0, 1000.0)  # 2/7 of full, as 200 W of an H200's 700
    assert pmap[f"{site.rack_rows[1].name}.gpu_power_cap_w"].max == 700.0
    load = next(ld for ld in Topology(site, pmap).loads if ld.name == row.name)
    assert load.cap_w == (286.0, 1000.0)
    assert row_cap_w(load.rated_kw, load.rated_kw, cap_w=load.cap_w) == 1000.0
    assert row_cap_w(0.0, load.rated_kw, cap_w=load.cap_w) == 286.0


# -- latched trips ------------------------------------------------------------------------
def test_a_trip_stays_latched_until_a_reset_finds_its_interlock_clear(topo):
    st = ControllerState()
    trips, al = TripLatch(topo, st), Alarms()
    cmds: dict = {}
    trips.latch(view(topo, t=1.0, tank01__interlock=1.0), cmds, al)
    assert latch_key("tank01") in st.latched and st.version == 1
    en = topo.load["tank01"].enable
    assert cmds[en].value == 0.0
    cmds = {}
    trips.latch(view(topo, t=2.0), cmds, al)  # the PLC's latch cleared: still off here
    assert cmds[en].value == 0.0
    trips.request_reset(3.0, "erin", "console", "checked", "tank02")  # not this one
    trips.latch(view(topo, t=4.0), {}, al)
    assert latch_key("tank01") in st.latched
    trips.request_reset(5.0, "erin", "console", "checked", None)
    cmds = {}
    trips.pulse(cmds)
    assert cmds[topo.ix.plc.reset].pulse and cmds[topo.ix.plc.reset].who == "erin"
    trips.latch(view(topo, t=6.0), cmds, al)
    assert st.latched == {}
    trips.latch(view(topo, t=6.0 + 60.0, tank01__interlock=1.0), {}, al)
    assert latch_key("tank01") in st.latched  # a new trip after the window latches again


# -- regulation: trim & respond ------------------------------------------------------
def _supply_and_dp(reg: Regulation, loop: str) -> tuple[float, float]:
    by_meas = {c.measurement: c for c in reg.loops}
    return (
        reg.setpoint(by_meas[f"{loop}.supply_temp"]),
        reg.setpoint(by_meas[f"{loop}.dp"]),
    )


def test_trim_and_respond_does_not_chase_a_supply_below_the_ambient_and_fixed_holds_design(
    topo, site
):
    lp = site.loops[0]
    trim, fixed = (
        Regulation(topo, ControllerState()),
        Regulation(topo, ControllerState(), trim_and_respond=False),
    )
    ambient = lp.supply_setpoint_c + 8.0  # a hot night: the design supply is under the air
    for k in range(1400):  # valves throttled (the view's 0 %), nothing hot
        v = view(topo, t=2.0 * k, dt=2.0, site__ambient_temp=ambient)
        for reg in (trim, fixed):
            reg.regulate(v, {}, Alarms(), {})
    supply, dp = _supply_and_dp(trim, lp.name)
    assert supply == pytest.approx(ambient + SUPPLY_MIN_APPROACH_K)  # past the +6 K reset
    assert dp == DP_TRIM_MIN_KPA
    assert _supply_and_dp(fixed, lp.name)[0] == lp.supply_setpoint_c  # the vendor's way
    # a valve wide open: the ΔP comes back at once (the trim never wound past its floor)
    valve = topo.pmap.name_of(topo.loop_valves[lp.name][0]).replace(".", "__")
    trim.regulate(
        view(topo, t=2800.0, site__ambient_temp=ambient, **{valve: 95.0}), {}, Alarms(), {}
    )
    assert _supply_and_dp(trim, lp.name)[1] > DP_TRIM_MIN_KPA


def test_with_valves_in_the_dead_band_the_supply_still_never_chases_below_the_air(topo, site):
    """Valves at 76-80 % (between throttled and wide open) held the reset where it
    was: a supply setpoint under the air ran every dry-cooler fan flat out for
    nothing (a small hall's cooling energy 12x in a heatwave)."""
    lp = site.loops[0]
    reg = Regulation(topo, ControllerState())
    valve = topo.pmap.name_of(topo.loop_valves[lp.name][0]).replace(".", "__")
    ambient = lp.supply_setpoint_c + 5.0
    for k in range(1400):  # the reset climbs at its rate
        v = view(topo, t=2.0 * k, dt=2.0, site__ambient_temp=ambient, **{valve: 78.0})
        reg.regulate(v, {}, Alarms(), {})
    assert _supply_and_dp(reg, lp.name)[0] == pytest.approx(ambient + SUPPLY_MIN_APPROACH_K)


def test_the_loops_read_each_measurement_as_the_views_vote_whichever_points_are_voted(topo):
    """Regulation gathers the loops' measurements as arrays (``ScanView.votes``,
    whichever points the scan's votes stand for): each as ``view.vote`` gives it."""
    reg = Regulation(topo, ControllerState())
    pts = reg._meas_pts
    base = view(topo, t=1.0, tank02__fluid_temp=47.5, bad=["tank03.fluid_temp"])
    votes = [
        {},
        {pts[0]: (41.0, True), pts[2]: (math.nan, False)},
        {pts[0]: (42.0, True), pts[2]: (43.0, True)},  # the same points voted
        {pts[1]: (44.0, False)},  # others: found again
        {pts[1]: (45.0, True), pts[3]: (46.0, True), 10**6: (0.0, True)},
        {pts[1]: (47.0, True)},
    ]
    for voted in votes:
        v = ScanView(base.t, base.dt, base.values, base.quality, voted, None)
        vals, ok = reg._votes(v, reg._meas_pts)
        want = [(float(x).hex(), g) for x, g in map(v.vote, pts)]  # (hex: NaN == NaN)
        assert [(float(x).hex(), bool(g)) for x, g in zip(vals, ok, strict=True)] == want


def test_the_working_setpoints_of_a_scan_are_each_loops_setpoint(topo, site):
    """``regulate`` works out every setpoint as one array pass: each is what
    ``setpoint`` says, trim & respond and the command path's setpoints applied."""
    st = ControllerState()
    reg = Regulation(topo, st)
    lp = site.loops[0]
    st.setpoints[reg.loops[-1].name] = reg.loops[-1].setpoint + 1.5
    for k in range(300):  # throttled valves: supply raised, ΔP trimmed to its floor
        reg.regulate(
            view(topo, t=2.0 * k, dt=2.0, site__ambient_temp=lp.supply_setpoint_c + 8.0),
            {},
            Alarms(),
            {},
        )
        assert reg.last_setpoints == [reg.setpoint(c) for c in reg.loops]
    assert reg.last_setpoints != [c.setpoint for c in reg.loops]


def test_a_loops_reason_reads_as_formatted_at_once_and_takes_what_is_assigned(topo):
    reg = Regulation(topo, ControllerState())
    cmds: dict[int, Cmd] = {}
    reg.regulate(view(topo, t=1.0), cmds, Alarms(), {})  # the bumpless start
    reg.regulate(view(topo, t=2.0, tank01__fluid_temp=47.123), cmds, Alarms(), {})
    c = reg.loops[0]
    cmd = cmds[topo.pmap.position(c.actuators[0])]
    sp = reg.setpoint(c)
    assert isinstance(cmd.why, str)
    assert cmd.why == f"loop {c.name}: {c.measurement} 47.12 -> setpoint {sp:.2f}"
    assert cmd.who == "controller" and cmd.where == "scan" and not cmd.override
    cmd.why = "held for minimum flow"
    assert cmd.why == "held for minimum flow"


def test_a_low_flow_alarm_says_below_the_trip_once_the_flow_is_below_it():
    # It read "flow 51 m3/h near its trip (69)" with the flow already below the trip.
    from thermogate.controller.core.thermal import _low_flow_message

    assert _low_flow_message("loop1", 51.0, 69.0, 10.0) == (
        "loop loop1 flow 51 m3/h below its trip flow 69 m3/h (the PLC trips its loads after 10 s)"
    )
    assert _low_flow_message("loop1", 80.0, 69.0, 10.0) == (
        "loop loop1 flow 80 m3/h near its trip flow 69 m3/h"
    )


def test_sensors_stale_or_failed_are_an_alarm_per_reason_while_any_has_it(site):
    """518 stale points (a lost PLC) or a tank sensor reading NaN were events
    only: SCADA's alarm list stayed empty."""
    from thermogate.controller.core import Controller
    from thermogate.controller.signals import Observation
    from thermogate.hil.runner import ScenarioPlant

    sim = ScenarioPlant(site, "normal-day", sensors=False)
    ctrl = Controller(site, sim.pmap)
    stale = np.ones(len(sim.pmap), bool)

    def scan(fresh: np.ndarray, nan: str | None = None) -> list[str]:
        v = sim.plant.sensors.sample()
        if nan is not None:
            v[sim.pmap.position(nan)] = np.nan
        ctrl.scan(Observation(sim.plant.t, v, fresh))
        sim.step()
        return [k for k in ctrl.alarms.active() if k.startswith("sensors:")]

    for _ in range(5):
        assert scan(stale) == []
    lost = stale.copy()
    lost[[sim.pmap.position(p.name) for p in sim.pmap.points if p.unit_id == 1]] = False
    assert scan(lost) == ["sensors:stale"]
    rec = ctrl.alarms.record("sensors:stale")
    assert rec is not None and "sensor(s) stale" in rec.message
    for _ in range(3):
        scan(stale)
    assert scan(stale, nan="tank03.fluid_temp") == ["sensors:nan"]
    assert scan(stale) == []


# -- protection's array passes ----------------------------------------------------------
def _random_scans(topo: Topology, seed: int, n: int):
    """``n`` scan views of a plant wandering about its limits: zones and loops around
    their alarms, fans near saturation, pump faults, flows near their trips, meters
    about their breakers' lines, BAD points, a NaN or an infinity, voted signals."""
    rng = np.random.default_rng(seed)
    site, ix, pts = topo.site, topo.ix, topo.pmap.points
    v = np.array([(p.min if p.min is not None else 0.0) for p in pts], dtype=float)
    tanks = list(zip(site.tanks, ix.tanks, strict=True))
    for t_, tp in tanks:
        v[[tp.fluid_temp, tp.fluid_temp_b]] = t_.limits.fluid_alarm_c - 4.0
    for c, cp in zip(site.cdus, ix.cdus, strict=True):
        v[cp.supply_temp] = c.supply_alarm_c - 4.0
    for lp in ix.loops:
        v[lp.supply_temp], v[lp.flow] = 30.0, 300.0
    for pp in ix.pumps:
        v[pp.speed], v[pp.fault] = 60.0, 0.0
    for dp in ix.dry_coolers:
        v[dp.fan_speed] = 80.0
    for ld in topo.loads:
        v[ld.power] = 0.8 * ld.rated_kw
    zone_pts = [tp.fluid_temp for _, tp in tanks] + [cp.supply_temp for cp in ix.cdus]
    alarm_c = [t_.limits.fluid_alarm_c for t_, _ in tanks] + [c.supply_alarm_c for c in site.cdus]
    t = 0.0
    for _ in range(n):
        dt = float(rng.choice([1.0, 1.0, 0.5, 2.0, 10.0, 1e-3]))
        t += dt
        for i, a in zip(zone_pts, alarm_c, strict=True):
            if rng.random() < 0.3:
                v[i] = min(max(v[i] + rng.normal(0.0, 1.0), a - 8.0), a + 3.0)
        for tp in ix.tanks:
            v[tp.fluid_temp_b] = v[tp.fluid_temp]
        for lp, lpp in zip(site.loops, ix.loops, strict=True):
            if rng.random() < 0.3:
                x = v[lpp.supply_temp] + rng.normal(0.0, 1.0)
                v[lpp.supply_temp] = min(max(x, lp.supply_alarm_c - 6.0), lp.supply_alarm_c + 2.0)
            if rng.random() < 0.2:
                v[lpp.flow] = rng.choice(
                    [
                        300.0,
                        250.0,
                        1.1 * lp.min_flow_m3h,
                        1.3 * lp.min_flow_m3h,
                        0.5 * lp.min_flow_m3h,
                    ]
                )
        for dp in ix.dry_coolers:
            if rng.random() < 0.2:
                v[dp.fan_speed] = rng.choice([50.0, 94.9, 95.0, 100.0, math.nan])
        for pp in ix.pumps:
            if rng.random() < 0.03:
                v[pp.fault] = 1.0 - v[pp.fault]
            if rng.random() < 0.1:
                v[pp.speed] = rng.choice([0.0, 19.9, 20.0, 60.0])
        for ld in topo.loads:
            if rng.random() < 0.3:
                x = v[ld.power] + rng.normal(0.0, 0.1 * ld.rated_kw)
                v[ld.power] = min(max(x, 0.0), 1.1 * ld.rated_kw)
            if rng.random() < 0.02:
                v[ld.interlock] = 1.0 - v[ld.interlock]
        for c in topo.constraints:
            if rng.random() < 0.5:
                lim = site.import_limit_kw if c.limit_kw is None else c.limit_kw
                x = rng.choice([0.5, 0.96, 0.97, 0.975, 0.98, 0.99, 1.0, 1.02, 1.1])
                v[c.meter] = lim * x * (1.0 + rng.normal(0.0, 0.003))
        vals = v.copy()
        q = np.full(len(pts), GOOD, dtype=np.uint8)
        q[rng.integers(0, len(pts), int(rng.choice([0, 0, 3, 30])))] = BAD
        if rng.random() < 0.05:
            vals[rng.integers(0, len(pts), 3)] = rng.choice([math.nan, math.inf])
        voted = {
            i: (float(vals[i]), bool(rng.random() > 0.05))
            for i in [*zone_pts[: len(tanks)], *(lp.supply_temp for lp in ix.loops)]
            if rng.random() < 0.5
        }
        yield ScanView(t, dt, vals, q, voted, None)


def _events(al: Alarms) -> list[tuple]:
    return [(e.kind, e.source, e.message, e.severity, e.data) for e in al.events]


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_protection_stepping_only_what_can_change_is_stepping_everything(topo, seed):
    # The array passes step a zone, loop, constraint or load only where something
    # can change; stepped everywhere (as the scalar scan did), the same scans give
    # the same events, alarms, caps and latched trips -- across a restart too.
    def parts(alarms=None):
        out = []
        for step_all in (False, True):
            th, pw = ThermalProtection(topo), PowerProtection(topo)
            trips = TripLatch(topo, ControllerState())
            th.step_all = pw.step_all = trips.step_all = step_all
            al = Alarms()
            if alarms is not None:
                al.restore(alarms)
            out.append((th, pw, trips, al))
        return out

    sides = parts()
    asks = np.random.default_rng(seed).choice([math.nan, 0.9 * topo.site.import_limit_kw], 100)
    for k, v in enumerate(_random_scans(topo, seed, 100)):
        seen = []
        for th, pw, trips, al in sides:
            al.begin_scan(v.t)
            th.protect(v, al)
            pw.protect(v, al, float(asks[k]))
            if k % 40 == 0:
                trips.request_reset(v.t, "bob", "console", "checked", None)
            cmds: dict = {}
            trips.latch(v, cmds, al)
            seen.append(
                (
                    _events(al),
                    al.to_json(),
                    al.active(),
                    th.cap,
                    th.limiter_cap,
                    th.flow_shed,
                    pw.cap,
                    [(c.value, c.why) for c in cmds.values()],
                    list(cmds),
                    dict(trips.state.latched),
                )
            )
        assert seen[0] == seen[1], k
        if k % 50 == 49:  # a restart: fresh parts, the alarm list restored
            sides = parts(sides[0][3].to_json())


def _flow_scalar(lp, lpp, pumps, dt, view, st_: dict, events: list) -> bool:
    """The lost-flow rule for one loop, one scan, as it was written per loop."""
    flow, fok = view.val(lpp.flow), view.good(lpp.flow)
    low = fok and flow < 1.2 * lp.min_flow_m3h
    pump_fault = any(view.good(pp.fault) and view.val(pp.fault) >= 0.5 for pp in pumps)
    normal = st_.get("normal", math.nan)
    lost = fok and math.isfinite(normal) and flow < 0.7 * normal
    if fok and not pump_fault and not low:
        a_ = min(1.0, dt / 600.0)
        st_["normal"] = flow if not math.isfinite(normal) else (normal + a_ * (flow - normal))
    was = st_.get("shed", False)
    episode = st_.get("episode", False) or (pump_fault and not st_.get("seen", False))
    st_["seen"] = pump_fault
    carried = any(
        not (view.good(pp.fault) and view.val(pp.fault) >= 0.5)
        and view.good(pp.speed)
        and view.val(pp.speed) >= 20.0
        for pp in pumps
    )
    back = fok and carried and flow >= 1.2 * lp.min_flow_m3h
    st_["ok_s"] = st_.get("ok_s", 0.0) + dt if back else 0.0
    recovered = st_["ok_s"] >= 30.0
    if low or (episode and lost):
        shedding = True
    elif was:
        shedding = not recovered
    else:
        shedding = False
    if episode and recovered and not low:
        episode = False
    st_["episode"] = episode
    if shedding != was:
        events.append((lp.name, shedding, low))
    st_["shed"] = shedding
    return low


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_lost_flow_over_the_loops_as_arrays_follows_the_scalar_rule(topo, seed):
    th, al = ThermalProtection(topo), Alarms()
    site, ix = topo.site, topo.ix
    state: list[dict] = [{} for _ in site.loops]
    for v in _random_scans(topo, seed, 100):
        al.begin_scan(v.t)
        th.protect(v, al)
        want: list = []
        lows = [
            _flow_scalar(
                lp, ix.loop[lp.name], [ix.pump[p.name] for p in lp.pumps], v.dt, v, s, want
            )
            for lp, s in zip(site.loops, state, strict=True)
        ]
        assert th.flow_shed == {lp.name: s["shed"] for lp, s in zip(site.loops, state, strict=True)}
        got = [e for e in al.events if e.data and e.data.get("limit") == "flow"]
        assert [(e.source, e.kind == "shed") for e in got] == [(n, s) for n, s, _ in want]
        low_alarms = {k for k in al.active() if k.endswith(".low_flow")}
        assert low_alarms == {
            f"{lp.name}.low_flow" for lp, lo in zip(site.loops, lows, strict=True) if lo
        }


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_votes_over_many_points_are_each_points_vote(topo, seed):
    v = next(_random_scans(topo, seed, 1))
    points = [tp.fluid_temp for tp in topo.ix.tanks] + [lp.supply_temp for lp in topo.ix.loops]
    values, usable = v.votes(points)
    want = [v.vote(i) for i in points]
    got = list(zip(values, usable, strict=True))
    assert all(
        (x == y or (x != x and y != y)) and u == w  # NaN is NaN
        for (x, u), (y, w) in zip(got, want, strict=True)
    )


@settings(max_examples=30, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.sampled_from("abcd"), st.booleans(), st.booleans(), st.integers(0, 3)),
        max_size=40,
    )
)
def test_an_alarm_call_for_a_key_not_live_changes_nothing(calls):
    # what lets the parts skip ``alarm(key, False)`` for keys ``Alarms.live`` does not
    # name: such a call raises nothing, clears nothing and keeps the list as it was
    al, t = Alarms(), 0.0
    for key, active, hysteresis, what in calls:
        t += 1.0
        if what == 0:  # a restart: the list restored, its active alarms carried
            saved, al = al.to_json(), Alarms()
            al.restore(saved)
        elif what == 1:
            al.begin_scan(t)
        for k in "abcd":
            if k not in al.live():
                before = (al.to_json(), al.active(), len(al.events), set(al.live()))
                al.alarm(t, k, False, "m", hysteresis=hysteresis)
                assert (al.to_json(), al.active(), len(al.events), set(al.live())) == before
        al.alarm(t, key, active, f"{key} up", hysteresis=hysteresis)
        assert set(al.live()) >= set(al.active())
