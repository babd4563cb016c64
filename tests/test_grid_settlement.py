"""Curtailments settled as the meter reads: the live settlement, a simulation's
grid summary, its historian rows and its report.

The arithmetic itself is pinned on hand-computed intervals in
``test_grid_compliance.py``; here the same numbers must come out of readings
arriving one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from served import normal_day_with

from thermogate.controller.core.commands import Principal, RequestCurtailment
from thermogate.controller.grid.compliance import BaselineRule, Instruction
from thermogate.controller.grid.settlement import Settlement, rule_for
from thermogate.controller.historian import Historian
from thermogate.controller.report import write_report
from thermogate.controller.simulate import HISTORIAN_EPOCH_S, run_simulation
from thermogate.plc.equipment import GridConfig
from thermogate.plc.pointmap import build_point_map

RULE = BaselineRule(count=2, like="day", interval_s=900.0, max_hold_s=60.0)


def feed(s: Settlement, t0: float, t1: float, kw: float, step: float = 30.0) -> list:
    out = []
    t = t0
    while t < t1:
        out += s.meter(t, kw)
        t += step
    return out


def test_each_interval_is_judged_once_when_it_closes_against_like_days():
    s = Settlement(RULE)
    day = 86_400.0
    # two earlier days at 2,000 kW around 10:00, then the event day at 1,200 kW
    for d in range(2):
        feed(s, d * day + 9 * 3600, d * day + 11 * 3600, 2000.0 + 100.0 * d)
    s.instruct("dr 1", Instruction(2 * day + 10 * 3600, 2 * day + 10.5 * 3600, 1500.0))
    judged = feed(s, 2 * day + 9 * 3600, 2 * day + 11 * 3600, 1200.0)
    assert [j.instruction for j in judged] == ["dr 1", "dr 1"]
    r = judged[0].record
    assert r.start_s == 2 * day + 10 * 3600
    assert r.metered_kw == pytest.approx(1200.0)
    assert r.baseline_kw == pytest.approx(2050.0)  # the mean of the two like days
    assert r.required_kw == pytest.approx(550.0) and r.delivered_kw == pytest.approx(850.0)
    assert r.compliant is True
    assert s.summary()["compliant"] == 2 and s.summary()["intervals"] == 2


def test_an_interval_over_the_limit_is_not_compliant_and_a_gap_is_not_metered():
    s = Settlement(RULE)
    s.instruct("dr", Instruction(900.0, 2700.0, 1000.0))
    feed(s, 0.0, 900.0, 900.0)
    feed(s, 900.0, 1800.0, 1100.0)  # over its limit
    judged = s.meter(2700.0 + 30.0, 900.0)  # nothing metered in 1800..2700: a gap
    by_start = {j.record.start_s: j.record for j in s.judged}
    assert by_start[900.0].compliant is False and by_start[900.0].metered_kw == 1100.0
    assert by_start[1800.0].compliant is None and "not metered" in by_start[1800.0].note
    # both closed with the first reading after them
    assert [j.record.start_s for j in judged] == [900.0, 1800.0]


def test_a_curtailment_cleared_early_ends_when_it_leaves_the_controllers_list():
    @dataclass
    class C:
        id: int
        limit_kw: float
        start: float
        end: float

    s = Settlement(RULE)
    s.follow([C(1, 1000.0, 0.0, 3600.0), C(2, 800.0, 7200.0, 9000.0)], t=100.0)
    s.follow([], t=1800.0)  # both cleared: #1 while under way, #2 before it began
    assert s.instructions == {"curtailment #1": Instruction(0.0, 1800.0, 1000.0)}


def test_the_site_description_sets_the_rule():
    rule = rule_for(
        GridConfig(settlement_interval_s=300.0, baseline_count=5, baseline_like="preceding")
    )
    assert (rule.interval_s, rule.count, rule.like) == (300.0, 5, "preceding")


# --------------------------------------------------------------------------------------
# a simulation: a scenario curtailment and one through the command path
# --------------------------------------------------------------------------------------
CURTAIL = """
[[grid_events]]
kind = "curtail"
at_s = 1800
duration_s = 1800
params.limit_kw = 1900
"""


def test_a_simulation_settles_every_instruction_and_books_it(site, tmp_path):
    def operator_curtails(sim, ctrl) -> None:
        if sim.plant.t == 600.0:  # the grid's aggregator, on the command path
            res = ctrl.commands.give(
                RequestCurtailment(2000.0, 900.0, start=3600.0, why="aggregator"),
                Principal.grid(),
                sim.plant.t,
            )
            assert res.accepted

    with Historian.from_point_map(tmp_path / "s.db", build_point_map(site)) as h:
        r = run_simulation(
            site, normal_day_with(CURTAIL), 1.5, scan_s=5.0, historian=h, on_scan=operator_curtails
        )
        h.flush()
        rows = h.compliance()
    grid = r.summary["grid"]
    assert grid["instructions"] == 2
    assert grid["intervals"] == 3 and grid["compliant"] == 3  # two of 30 min, one of 15
    assert [row["instruction"] for row in rows] == [
        "scenario curtail at 0.50 h",
        "scenario curtail at 0.50 h",
        "curtailment #1",
    ]
    assert rows[0]["t"] == HISTORIAN_EPOCH_S + 1800.0
    assert all(row["compliant"] is True and row["metered_kw"] <= row["limit_kw"] for row in rows)
    assert rows[0]["baseline_kw"] is None and "too few like intervals" in rows[0]["note"]
    # the limit asked is recorded, so the report shades both instructions
    limit = r.series["import_limit_kw"]
    assert limit.min() == 1900.0 and (limit == 2000.0).any()
    assert r.summary["import_over_limit_kw_min"] < 50.0  # a few scans at each onset

    out = write_report(r.series, r.meta, r.events, r.summary, tmp_path / "rep")
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Grid instructions and settlement" in html
    assert html.count('class="k-ok"') == 3 and "curtailment #1" in html
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["grid"]["compliant"] == 3
    assert tmp_path / "rep" / "power.png" in out
