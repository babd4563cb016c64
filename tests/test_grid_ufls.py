"""Under-frequency response: the PLC's relay in the plant, and the controller around it.

The relay alone is pinned in ``test_plc_ufls.py``; here it acts on a plant
(what it sheds, when, and what brings the load back) and the controller
watches it (alarm, audit, the release through the command path, no rebound).
Its timing over real Modbus is ``thermogate bench dr`` (``test_bench_dr.py``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from served import normal_day_with

from thermogate.controller.core.commands import Principal, ReleaseUnderFrequency
from thermogate.controller.core.underfreq import ALARM_KEY
from thermogate.controller.simulate import run_simulation
from thermogate.hil.plant import CONTACTOR_OPEN_S, Environment, Plant
from thermogate.hil.runner import ScenarioPlant
from thermogate.plc.equipment import GridConfig
from thermogate.plc.pointmap import STATUS_UFLS_TRIPPED
from thermogate.plc.site import Site
from thermogate.plc.ufls import RelayConfig

NOMINAL = 50.0


def with_relay(site: Site, *, armed: bool = True, recover_s: float = 5.0) -> Site:
    """The demo site with a quick-recovering relay (tests cannot wait 10 minutes)."""
    relay = RelayConfig(NOMINAL, 49.7, 0.05, 49.95, recover_s)
    return replace(site, grid=replace(site.grid, under_frequency_armed=armed, relay=relay))


def dip(start: float, end: float, hz: float = 49.5):
    return lambda t: hz if start <= t < end else NOMINAL


def plant_with(site: Site, freq) -> Plant:
    env = Environment(ambient_c=lambda t: 25.0, gpu_demand=lambda t: 0.65, grid_frequency_hz=freq)
    return Plant(site, env=env, sensors=False)


def run(plant: Plant, seconds: float) -> None:
    for _ in range(round(seconds / plant.dt)):
        plant.heartbeat = (plant.heartbeat + 1) % 65536
        plant.step()


def designated(site: Site) -> np.ndarray:
    return np.array([t.name in site.grid.under_frequency_shed for t in site.tanks])


def test_an_armed_relay_sheds_only_the_designated_mining_tanks(site):
    s = with_relay(site)
    plant = plant_with(s, dip(10.0, 12.0))
    run(plant, 9)
    before = plant.t_power.copy()
    assert (before[designated(s)] > 0).all()
    run(plant, 5)
    d = designated(s)
    assert plant.plc.relay.state.tripped
    assert (plant.t_power[d] == 0).all()
    # everything else runs on: the other mining tanks and every GPU tank and row
    assert (plant.t_power[~d] > 0.9 * before[~d]).all()
    assert (plant.r_power > 0).all()
    assert plant.plc_status_word() & STATUS_UFLS_TRIPPED
    assert not plant.plc.any_interlock()  # a grid trip, not an interlock
    assert any("under-frequency trip" in m for _, m in plant.events)


def test_a_disarmed_relay_sheds_nothing_however_low_the_frequency(site):
    plant = plant_with(with_relay(site, armed=False), dip(5.0, 60.0, 47.0))
    run(plant, 30)
    assert not plant.plc.relay.state.tripped and (plant.t_power > 0).all()


def test_a_dip_shorter_than_the_pickup_delay_sheds_nothing_on_the_fast_cycle(site):
    s = with_relay(site)
    plant = plant_with(s, dip(5.0, 5.04))  # 40 ms under 49.7 Hz: below the 50 ms pickup
    run(plant, 5)
    for k in range(1, 100):  # the served plant's fast cycle, 5 ms apart
        plant.fast_cycle(5.0 + k * 0.005 - 0.5)
    run(plant, 3)
    assert not plant.plc.relay.state.tripped and (plant.t_power > 0).all()


def test_the_fast_cycle_sheds_between_plant_steps_after_pickup_and_contactors(site):
    s = with_relay(site)
    plant = plant_with(s, dip(10.2, 20.0))
    run(plant, 10)
    site_kw = plant.site_kw
    d = designated(s)
    shed_kw = plant.t_power[d].sum()
    times = [10.0 + k * 0.005 for k in range(1, 150)]
    off_at = None
    for t in times:
        plant.fast_cycle(t)
        if plant.site_kw < site_kw - 0.5 * shed_kw:
            off_at = t
            break
    assert off_at is not None and plant.t == 10.0  # no plant step was needed
    assert plant.plc.relay.state.trip_t == pytest.approx(10.2 + 0.05, abs=0.006)
    assert off_at == pytest.approx(10.25 + CONTACTOR_OPEN_S, abs=0.006)
    # the meter sees the shed load gone at once
    assert plant.site_kw == pytest.approx(site_kw - shed_kw, rel=0.02)


def test_the_shed_load_returns_only_after_recovery_and_a_release(site):
    s = with_relay(site, recover_s=5.0)
    plant = plant_with(s, dip(10.0, 12.0))
    d = designated(s)
    run(plant, 13)
    assert plant.plc.relay.state.tripped
    plant.write("plc.ufls_release", 1)  # 1 s after the recovery: too early
    run(plant, 1)
    assert plant.plc.relay.state.tripped and (plant.t_power[d] == 0).all()
    assert any("release refused" in m for _, m in plant.events)
    run(plant, 30)  # recovered long ago, but nobody released: still shed
    assert plant.plc.relay.state.tripped and plant.plc.ufls_recovered()
    plant.write("plc.ufls_release", 1)
    run(plant, 2)
    assert not plant.plc.relay.state.tripped and (plant.t_power[d] > 0).all()
    assert any("released" in m and "refused" not in m for _, m in plant.events)


def test_a_failed_frequency_measurement_neither_trips_nor_releases(site):
    s = with_relay(site)
    plant = plant_with(s, lambda t: float("nan") if t >= 5 else NOMINAL)
    run(plant, 20)
    assert not plant.plc.relay.state.tripped
    assert any("measurement failed" in m for _, m in plant.events)


# ======================================================================================
# the controller around the relay
# ======================================================================================

DIP_SCENARIO = """
[[grid_events]]
kind = "frequency"
at_s = 300
duration_s = 2
params.frequency_hz = 49.4
"""


def test_controller_alarms_audits_holds_and_releases_through_the_command_path(site):
    s = with_relay(site, recover_s=60.0)
    d = [t.name for t in s.tanks if t.name in s.grid.under_frequency_shed]
    seen: dict[str, object] = {"refused": None, "accepted": None, "audit": [], "max_kw": 0.0}

    others = ~designated(s) & np.array([t.workload_class == "mining" for t in s.tanks])
    other_kw: dict[str, list[float]] = {"before": [], "during": []}

    def on_scan(sim: ScenarioPlant, ctrl) -> None:
        t = sim.plant.t
        seen["max_kw"] = max(float(seen["max_kw"]), sim.plant.site_kw)  # type: ignore[arg-type]
        if 250.0 <= t < 300.0 or 310.0 <= t < 400.0:
            other_kw["before" if t < 300.0 else "during"].append(
                float(sim.plant.t_power[others].sum())
            )
        if t == 320.0:  # tripped, not yet recovered for 60 s: refused
            seen["refused"] = ctrl.commands.give(
                ReleaseUnderFrequency("too soon"), Principal.grid(), t
            )
            assert ctrl.power.cap[d[0]] == 0.0
        if t == 400.0:
            seen["accepted"] = ctrl.commands.give(
                ReleaseUnderFrequency("ERCOT release"), Principal.grid(), t
            )

    sc = normal_day_with(DIP_SCENARIO)
    res = run_simulation(s, sc, 0.25, on_scan=on_scan)
    refused, accepted = seen["refused"], seen["accepted"]
    assert refused is not None and not refused.accepted  # type: ignore[attr-defined]
    assert "not yet been above 49.95 Hz for 60 s" in refused.message  # type: ignore[attr-defined]
    assert accepted is not None and accepted.accepted  # type: ignore[attr-defined]
    msgs = [(e["source"], e["message"]) for e in res.events]
    raised = [m for src, m in msgs if src == ALARM_KEY and "shed" in str(m)]
    assert raised and all(n in raised[0] for n in d)
    assert any("released" in str(m) for src, m in msgs if src == ALARM_KEY)
    # the room the shed left is the grid's: the other miners did not fill it
    assert max(other_kw["during"]) <= 1.02 * max(other_kw["before"])
    ctrl = res.controller
    assert ALARM_KEY not in ctrl.active_alarms()
    assert not ctrl.underfreq.tripped
    # the shed tanks came back at protection's restore rate: still climbing
    # a minute after the release, and the site never went over its limit
    assert 0.0 < ctrl.power.cap[d[0]] < s.tanks[0].rated_kw
    assert float(seen["max_kw"]) <= s.import_limit_kw  # type: ignore[arg-type]


def test_a_viewer_cannot_release_and_nothing_to_release_is_refused(site):
    from thermogate.controller.core.controller import Controller
    from thermogate.plc.pointmap import build_point_map

    ctrl = Controller(site, build_point_map(site))
    res = ctrl.commands.give(ReleaseUnderFrequency(), Principal("v", "viewer", "cli"), 0.0)
    assert not res.accepted and "needs role operator" in res.message
    res = ctrl.commands.give(ReleaseUnderFrequency(), Principal("o", "operator", "cli"), 0.0)
    assert not res.accepted and "no under-frequency trip to release" in res.message
    assert res.audit.target == "grid.under_frequency" and not res.audit.ok


def test_site_grid_default_relay_is_relative_to_nominal():
    g = GridConfig()
    assert g.relay is None  # the PLC then takes nominal - 0.3 / - 0.05


@pytest.mark.parametrize(
    ("armed", "says"),
    [
        (True, "under-frequency relay armed"),
        (False, "under-frequency relay DISARMED (the site description arms it)"),
        (None, None),  # the coil unread: the line claims nothing
    ],
)
def test_the_status_line_shows_the_relay_as_the_plcs_coil_reads(site, armed, says):
    # It once printed the site file's arming while the coil, disarmed by hand, read 0.
    from types import SimpleNamespace

    from thermogate.controller.statusline import grid_line

    rt = SimpleNamespace(
        last={"import_limit_kw": 3000.0, "under_frequency": {"tripped": False, "armed": armed}},
        cfg=SimpleNamespace(site=with_relay(site)),
        settlement=SimpleNamespace(summary=lambda: {"intervals": 0}),
    )
    line = grid_line(rt)  # type: ignore[arg-type]
    if says is None:
        assert "relay" not in line, line
    else:
        assert says in line, line
