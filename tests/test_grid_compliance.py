"""Demand-response settlement arithmetic on hand-computed intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.grid.compliance import (
    DAY_S,
    BaselineRule,
    Instruction,
    baseline_kw,
    interval_means,
    settle,
    summarise,
)

I = 900.0  # noqa: E741 - the interval, as the operator writes it


def test_interval_mean_is_time_weighted_over_held_samples() -> None:
    # 100 kW for 300 s, 200 kW for 300 s, 400 kW for 300 s: (30+60+120)/900 kWs/s
    means = interval_means([0.0, 300.0, 600.0], [100.0, 200.0, 400.0], BaselineRule(max_hold_s=300))
    assert means == {0: pytest.approx((100 + 200 + 400) / 3)}


def test_a_sample_held_across_a_boundary_is_split_between_intervals() -> None:
    rule = BaselineRule(max_hold_s=600.0)
    # 10 kW over [0, 600), 50 kW over [600, 1200): interval 0 = (600*10 + 300*50)/900
    t = np.arange(0.0, 1800.0, 600.0)
    means = interval_means(t, [10.0, 50.0, 20.0], rule)
    assert means[0] == pytest.approx((600 * 10 + 300 * 50) / 900)
    # interval 1: 300 s at 50, 600 s at 20
    assert means[1] == pytest.approx((300 * 50 + 600 * 20) / 900)


def test_a_communication_gap_leaves_the_interval_missing_not_guessed() -> None:
    rule = BaselineRule(max_hold_s=60.0, min_coverage=0.9)
    t = np.concatenate([np.arange(0.0, 900.0, 10.0), np.arange(1500.0, 2700.0, 10.0)])
    p = np.full(len(t), 1000.0)
    means = interval_means(t, p, rule)
    # interval 1 ([900, 1800)) was metered for 300 s of 900: missing
    assert set(means) == {0, 2}
    assert means[0] == pytest.approx(1000.0)


def test_a_nan_sample_covers_nothing() -> None:
    rule = BaselineRule(max_hold_s=10.0, min_coverage=0.5)
    t = np.arange(0.0, 900.0, 10.0)
    p = np.where(t < 300.0, np.nan, 500.0)
    assert interval_means(t, p, rule) == {0: pytest.approx(500.0)}
    assert interval_means(t, p, BaselineRule(max_hold_s=10.0, min_coverage=0.9)) == {}


def test_interval_means_refuses_samples_out_of_order() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        interval_means([0.0, 10.0, 5.0], [1.0, 2.0, 3.0])


def _days(values: list[float], k_of_day: int) -> dict[int, float]:
    """One metered interval per day at index ``k_of_day`` of each day."""
    per_day = round(DAY_S / I)
    return {d * per_day + k_of_day: v for d, v in enumerate(values)}


def test_day_baseline_averages_the_same_interval_on_the_last_n_days() -> None:
    per_day = round(DAY_S / I)
    means = _days([1000.0, 2000.0, 3000.0, 500.0], k_of_day=60)
    k = 3 * per_day + 60  # day 3's interval: the event
    assert baseline_kw(means, k, BaselineRule(count=2)) == pytest.approx(2500.0)
    assert baseline_kw(means, k, BaselineRule(count=10)) == pytest.approx(2000.0)
    # an earlier event day is no like day: days 0 and 1 instead of 1 and 2
    excluded = {2 * per_day + 60}
    assert baseline_kw(means, k, BaselineRule(count=2), excluded) == pytest.approx(1500.0)


def test_no_baseline_with_too_few_like_intervals() -> None:
    means = _days([1000.0, 2000.0], k_of_day=4)
    k = 2 * round(DAY_S / I) + 4
    assert baseline_kw(means, k, BaselineRule(count=5, min_count=3)) is None
    assert baseline_kw(means, k, BaselineRule(count=5, min_count=2)) == pytest.approx(1500.0)


def test_settlement_of_a_curtailment_on_hand_computed_intervals() -> None:
    # 4 intervals before the event at 2,000 kW; during it 1,200, 800, 900 kW
    means = {0: 2000.0, 1: 2000.0, 2: 2100.0, 3: 1900.0, 4: 1200.0, 5: 800.0, 6: 900.0}
    rule = BaselineRule(count=4, like="preceding")
    # 4 * 900 + 100 s: interval 4 is the ramp, judged are 5 and 6 (7 is cut short)
    ins = Instruction(start_s=3700.0, end_s=7 * I + 400.0, limit_kw=850.0)
    got = settle(means, ins, rule)
    assert [r.start_s for r in got] == [5 * I, 6 * I]
    # baseline: the 4 intervals before the event, its ramp-in (4) excluded
    b = (2000.0 + 2000.0 + 2100.0 + 1900.0) / 4
    assert got[0].baseline_kw == pytest.approx(b)
    assert got[0].required_kw == pytest.approx(b - 850.0)
    assert got[0].delivered_kw == pytest.approx(b - 800.0)
    assert got[0].compliant is True
    assert got[1].compliant is False  # 900 > 850
    assert settle(means, ins, rule, tolerance_kw=60.0)[1].compliant is True
    s = summarise(got, I)
    assert (s["intervals"], s["compliant"], s["not_metered"]) == (2, 1, 0)
    assert s["compliance"] == pytest.approx(0.5)
    # (b - 800 + b - 900) kW x 0.25 h
    assert s["delivered_kwh"] == pytest.approx((2 * b - 1700.0) * 0.25)


def test_past_events_are_excluded_from_the_baseline_with_their_ramps() -> None:
    means = {k: 1000.0 for k in range(8)} | {2: 100.0, 3: 100.0}
    past = Instruction(start_s=2 * I + 10.0, end_s=3 * I + 10.0, limit_kw=0.0)
    ins = Instruction(start_s=6 * I, end_s=7 * I, limit_kw=500.0)
    got = settle(means, ins, BaselineRule(count=6, like="preceding"), past_events=[past])
    # 2 and 3 (the ramp-out interval) are the past event's: 0, 1, 4, 5 remain
    assert got[0].baseline_kw == pytest.approx(1000.0)


def test_an_interval_not_metered_is_unknown_not_a_breach() -> None:
    means = {0: 1000.0, 1: 1000.0}
    got = settle(means, Instruction(2 * I, 3 * I, 500.0), BaselineRule(like="preceding"))
    assert got[0].compliant is None and got[0].delivered_kw is None
    assert "not metered" in got[0].note
    assert summarise(got, I)["compliance"] is None


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"like": "week"}, "like must be"),
        ({"count": 2, "min_count": 3}, "min_count"),
        ({"interval_s": 700.0}, "divide a day"),
        ({"min_coverage": 0.0}, "min_coverage"),
    ],
)
def test_a_bad_baseline_rule_names_its_field(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        BaselineRule(**kwargs)


def test_an_instruction_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        Instruction(100.0, 50.0, 10.0)
    with pytest.raises(ValueError, match="limit_kw"):
        Instruction(0.0, 50.0, math.nan)


@settings(max_examples=100, deadline=None)
@given(
    level=st.floats(0.0, 1e5),
    dt=st.sampled_from([1.0, 5.0, 10.0, 60.0]),
    n_int=st.integers(1, 6),
)
def test_constant_import_meters_and_baselines_to_itself(
    level: float, dt: float, n_int: int
) -> None:
    rule = BaselineRule(count=3, like="preceding", max_hold_s=dt)
    t = np.arange(0.0, n_int * I, dt)
    means = interval_means(t, np.full(len(t), level), rule)
    assert set(means) == set(range(n_int))
    assert all(v == pytest.approx(level, rel=1e-9, abs=1e-9) for v in means.values())
    base = baseline_kw(means, n_int, rule)
    assert base == pytest.approx(level, rel=1e-9, abs=1e-9)
