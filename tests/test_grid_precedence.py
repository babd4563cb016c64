"""Grid instructions within the safety precedence, on the plant's truth.

hard interlocks > operator override > grid > headroom > economics: an
instruction from the grid may lower the import, never re-enable a load an
interlock holds; and when it ends the load returns ramped, never as a spike
over the site's limit.
"""

from __future__ import annotations

import numpy as np
from served import normal_day_with

from thermogate.controller.core import Controller, Principal
from thermogate.controller.core.commands import ClearCurtailment, RequestCurtailment
from thermogate.controller.core.power import GRID_RESTORE_FRAC_S
from thermogate.controller.gating.planner import GatingPlanner
from thermogate.controller.signals import Observation
from thermogate.controller.simulate import run_simulation
from thermogate.hil.runner import ScenarioPlant


def test_an_instruction_during_an_interlock_never_brings_the_tripped_tank_back(site):
    sim = ScenarioPlant(site, "normal-day", sensors=False)
    ctrl = Controller(site, sim.pmap, planner=GatingPlanner(site))
    plant = sim.plant
    on: list[float] = []

    def scans(n: int) -> None:
        for _ in range(n):
            v = plant.sensors.sample()
            res = ctrl.scan(Observation(plant.t, v, np.ones(len(v), dtype=bool)))
            for w in res.writes:
                plant.write(w.point, w.value)
            sim.step()
            on.append(plant.t_power[0])

    scans(30)
    plant.T_tank[0] = site.tanks[0].limits.fluid_trip_c + 3.0  # tank01 overheats: PLC trips it
    scans(8)
    assert plant.plc.tank_latched[0]
    plant.T_tank[0] = 45.0  # cool again; the latch holds
    on.clear()
    grid = Principal.grid()
    assert ctrl.commands.give(RequestCurtailment(1500.0, 120.0), grid, plant.t).accepted
    scans(30)
    assert ctrl.commands.give(ClearCurtailment(None, "event over"), grid, plant.t).accepted
    scans(200)  # the limit climbs back; every other tank is restored
    assert max(on) == 0.0 and not plant.cmd_enable[0]
    assert "tank01: PLC interlock" in ctrl.state.latched
    assert plant.t_power[1:12].min() > 0.0  # the others came back


CURTAIL = """
[[grid_events]]
kind = "curtail"
at_s = 900
duration_s = 900
params.limit_kw = 1500
"""


def test_when_a_curtailment_ends_the_import_climbs_back_ramped_never_over_the_limit(site):
    r = run_simulation(site, normal_day_with(CURTAIL), 1.0, scan_s=1.0, planner=GatingPlanner(site))
    t = r.series["t_h"] * 3600.0
    kw = r.series["site_kw"]
    assert (kw[t >= 960] <= site.import_limit_kw).all()
    after = (t >= 1800) & (t < 2400)
    rise = np.diff(kw[after]) / np.diff(t[after])  # kW per s between samples
    # the limit in force climbs at the restore rate; the import follows it
    assert rise.max() <= 2.0 * GRID_RESTORE_FRAC_S * site.import_limit_kw
    assert kw[(t >= 1700) & (t < 1800)].max() <= 1500.0
    assert kw[t >= 3000].mean() > 2000.0  # and it does come back


DEEP = """
[[grid_events]]
kind = "curtail"
at_s = 600
duration_s = 900
params.limit_kw = 100
"""


def test_a_grid_limit_below_what_must_stay_on_never_cuts_inference_unless_committed(site):
    import dataclasses

    from thermogate.controller.core.controller import INFERENCE_FLOOR_ALARM

    def run(curtail_inference: bool):
        s = dataclasses.replace(
            site, grid=dataclasses.replace(site.grid, curtail_inference=curtail_inference)
        )
        return run_simulation(s, normal_day_with(DEEP), 0.45, scan_s=5.0, planner=GatingPlanner(s))

    kept, cut = run(False), run(True)
    t = kept.series["t_h"] * 3600.0
    before, during = (t >= 300) & (t < 600), (t >= 700) & (t < 1500)
    inf_before = kept.series["class.inference_kw"][before].mean()
    # a scenario's curtail event is an instruction like any other: inference spared
    assert kept.series["class.inference_kw"][during].min() >= 0.95 * inf_before
    assert INFERENCE_FLOOR_ALARM in {e["source"] for e in kept.events if e["kind"] == "alarm"}
    assert cut.series["class.inference_kw"][during].min() < 0.5 * inf_before


def test_an_instruction_below_what_must_stay_on_is_held_up_to_spare_inference(site):
    import dataclasses

    from thermogate.controller.core.controller import INFERENCE_FLOOR_ALARM

    def run(curtail_inference: bool):
        s = dataclasses.replace(
            site, grid=dataclasses.replace(site.grid, curtail_inference=curtail_inference)
        )

        def instruct(sim, ctrl) -> None:
            if sim.plant.t == 600.0:
                cmd = RequestCurtailment(100.0, 900.0, why="deep DR event")
                assert ctrl.commands.give(cmd, Principal.grid(), sim.plant.t).accepted

        return run_simulation(
            s, "normal-day", 0.45, scan_s=5.0, planner=GatingPlanner(s), on_scan=instruct
        )

    kept, cut = run(False), run(True)
    t = kept.series["t_h"] * 3600.0
    before, during = (t >= 300) & (t < 600), (t >= 700) & (t < 1500)
    inf = kept.series["class.inference_kw"]
    assert inf[during].min() >= 0.95 * inf[before].mean()  # inference kept ...
    assert kept.series["class.mining_kw"][during].max() < 1.0  # ... mining went to zero
    assert INFERENCE_FLOOR_ALARM in {e["source"] for e in kept.events if e["kind"] == "alarm"}
    # committed to it, the same instruction does cut inference
    assert cut.series["class.inference_kw"][during].min() < 0.5 * inf[before].mean()


def test_a_curtailment_to_zero_is_one_alarm_for_the_floor_and_the_import_is_held_under_it(site):
    """`curtail 0` kept the import alarm up for the whole curtailment, naming 0 kW:
    the floor counted training as wholly curtailable (a rack row at its lowest cap
    still draws about half its rating), and protection counted a row above its cap
    as "on its way out" for ever, so it never shed the rest. Now the ask below
    the floor is the floor's alarm alone, and the import is held under the floor."""
    from thermogate.controller.core.controller import INFERENCE_FLOOR_ALARM

    def instruct(sim, ctrl) -> None:
        if sim.plant.t == 600.0:
            cmd = RequestCurtailment(0.0, 900.0, why="deep DR event")
            assert ctrl.commands.give(cmd, Principal.grid(), sim.plant.t).accepted

    res = run_simulation(
        site, "normal-day", 0.45, scan_s=5.0, planner=GatingPlanner(site), on_scan=instruct
    )
    t = res.series["t_h"] * 3600.0
    held = (t >= 700) & (t < 1500)
    limit = res.series["import_limit_kw"][held]
    assert limit.min() > 100.0  # held at the floor, not at the 0 kW asked
    assert (res.series["site_kw"][held] <= limit).all()
    during = [
        (e["t_h"] * 3600.0, e["kind"])
        for e in res.events
        if e["source"] == "power:site import" and 600.0 <= e["t_h"] * 3600.0 < 1500.0
    ]
    assert during == [] or during[-1][1] == "clear"  # none left standing
    assert res.summary["import_over_limit_kw_min"] < 50.0
    assert INFERENCE_FLOOR_ALARM in {e["source"] for e in res.events if e["kind"] == "alarm"}
