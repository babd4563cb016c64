"""Read planning: legal, complete, minimal reads; gaps bridged only where safe."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.plc.errors import CodecError
from thermogate.plc.planning import DEFAULT_MAX_GAP, ReadRequest, coverage_check, plan_reads
from thermogate.plc.points import BIT_TABLES, TABLES, Point

FAST = settings(max_examples=120, deadline=None)


def pt(address, type_="u16", table="holding", unit_id=1, device="", name=None):
    return Point(
        name=name or f"u{unit_id}.{table}.{address}",
        unit_id=unit_id,
        table=table,
        address=address,
        type=type_,
        device=device,
    )


def run(n, type_="u16", table="holding", start=0, unit_id=1, device=""):
    """``n`` contiguous points of one type."""
    out, addr = [], start
    for _ in range(n):
        out.append(pt(addr, type_, table, unit_id, device))
        addr = out[-1].end
    return out


# --------------------------------------------------------------------------- layouts


@st.composite
def layouts(draw, max_points=60, max_gap_in_layout=4):
    """Points on several units and tables, with random types, gaps and device runs."""
    points = []
    for unit_id in draw(st.sets(st.integers(1, 4), min_size=1, max_size=3)):
        for table in draw(st.sets(st.sampled_from(TABLES), min_size=1, max_size=4)):
            addr = draw(st.integers(0, 300))
            device = "a"
            for _ in range(draw(st.integers(1, max_points))):
                if table in BIT_TABLES:
                    t = "bool"
                else:
                    t = draw(st.sampled_from(["u16", "i16", "u32", "i32", "f32", "bool"]))
                if draw(st.integers(0, 9)) == 0:
                    device = draw(st.sampled_from(["a", "b", "c", ""]))
                points.append(pt(addr, t, table, unit_id, device))
                addr = points[-1].end + draw(st.sampled_from([0, 0, 0, 1, 2, max_gap_in_layout]))
    draw(st.randoms()).shuffle(points)
    return points


def _bridgeable(group, gap_start, gap_end, max_gap):
    """Independent statement of the rule: gap small and inside one device's span."""
    if gap_end - gap_start > max_gap:
        return False
    spans = defaultdict(list)
    for p in group:
        spans[p.device].append(p)
    return any(
        min(p.address for p in ps) <= gap_start and gap_end <= max(p.end for p in ps)
        for ps in spans.values()
    )


def brute_force_minimum(points, max_registers, max_bits, max_gap):
    """Fewest requests by exhaustive dynamic programming over every legal split."""
    groups = defaultdict(list)
    for p in points:
        groups[(p.unit_id, p.table)].append(p)
    total = 0
    for (_, table), group in groups.items():
        group.sort(key=lambda p: p.address)
        limit = max_bits if table in BIT_TABLES else max_registers
        n = len(group)
        best = [0] + [math.inf] * n
        for i in range(1, n + 1):
            for j in range(i):
                members = group[j:i]
                if members[-1].end - members[0].address > limit:
                    continue
                if all(
                    a.end == b.address or _bridgeable(group, a.end, b.address, max_gap)
                    for a, b in pairwise(members)
                ):
                    best[i] = min(best[i], best[j] + 1)
        total += best[n]
    return total


LIMITS = st.fixed_dictionaries(
    {
        "max_registers": st.sampled_from([2, 3, 4, 7, 125]),
        "max_bits": st.sampled_from([1, 3, 8, 2000]),
        "max_gap": st.sampled_from([0, 1, 2, 4]),
    }
)


# --------------------------------------------------------------------------- properties


@FAST
@given(points=layouts(), limits=LIMITS)
def test_random_layouts_give_legal_complete_plans(points, limits):
    plan = plan_reads(points, **limits)
    coverage_check(points, plan, limits["max_registers"], limits["max_bits"])
    seen = [p for r in plan for p in r.points]
    assert sorted(seen, key=id) == sorted(points, key=id)  # every point exactly once
    for r in plan:
        limit = limits["max_bits"] if r.is_bit else limits["max_registers"]
        assert 1 <= r.count <= limit
        for p in r.points:
            # a multi-word point lies wholly inside one request: never split
            assert (p.unit_id, p.table) == (r.unit_id, r.table)
            assert r.address <= p.address and p.end <= r.end
        assert r.address == r.points[0].address and r.end == r.points[-1].end
        assert list(r.points) == sorted(r.points, key=lambda p: p.address)


@FAST
@given(points=layouts(max_points=25), limits=LIMITS)
def test_request_count_equals_the_brute_force_minimum(points, limits):
    assert len(plan_reads(points, **limits)) == brute_force_minimum(points, **limits)


@FAST
@given(points=layouts(), limits=LIMITS)
def test_bridged_gaps_are_small_and_inside_one_device_block(points, limits):
    max_gap = limits["max_gap"]
    groups = defaultdict(list)
    for p in points:
        groups[(p.unit_id, p.table)].append(p)
    for r in plan_reads(points, **limits):
        for a, b in pairwise(r.points):
            if a.end != b.address:
                assert _bridgeable(groups[(r.unit_id, r.table)], a.end, b.address, max_gap)
        if max_gap == 0:
            assert r.unused == 0


@FAST
@given(n=st.integers(1, 1000))
def test_contiguous_u16_need_ceil_n_over_125_requests(n):
    plan = plan_reads(run(n))
    assert len(plan) == -(-n // 125)
    assert all(r.unused == 0 for r in plan)


@FAST
@given(points=layouts(max_points=30), data=st.data())
def test_any_overlapping_point_is_rejected(points, data):
    victim = data.draw(st.sampled_from(points))
    shift = data.draw(st.integers(0, victim.words - 1))
    intruder = replace(victim, name="intruder", address=victim.address + shift, type="u16")
    if victim.table in BIT_TABLES:
        intruder = replace(intruder, type="bool")
    with pytest.raises(CodecError, match="intruder"):
        plan_reads([*points, intruder])


# --------------------------------------------------------------------------- limits


def test_no_request_exceeds_125_registers():
    plan = plan_reads(run(250))
    assert [(r.address, r.count) for r in plan] == [(0, 125), (125, 125)]


def test_125_contiguous_u16_are_one_request_and_126_are_two():
    assert len(plan_reads(run(125))) == 1
    assert len(plan_reads(run(126))) == 2


def test_62_f32_fit_one_request_of_124_registers():
    (r,) = plan_reads(run(62, "f32"))
    assert (r.address, r.count, len(r.points)) == (0, 124, 62)


def test_f32_spanning_126_registers_needs_two_requests_without_splitting_a_point():
    plan = plan_reads(run(63, "f32"))
    assert [(r.address, r.count) for r in plan] == [(0, 124), (124, 2)]


def test_an_f32_that_would_straddle_register_125_starts_the_next_request():
    points = [*run(124), pt(124, "f32")]
    plan = plan_reads(points)
    assert [(r.address, r.count) for r in plan] == [(0, 124), (124, 2)]


def test_no_request_exceeds_2000_bits():
    assert len(plan_reads(run(2000, "bool", "coil"))) == 1
    plan = plan_reads(run(2001, "bool", "discrete"))
    assert [(r.address, r.count) for r in plan] == [(0, 2000), (2000, 1)]


def test_lower_device_limits_are_respected():
    plan = plan_reads(run(10, "u32"), max_registers=5)
    assert all(r.count <= 5 for r in plan) and len(plan) == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"max_registers": 126}, {"max_registers": 0}, {"max_bits": 2001}, {"max_gap": -1}],
)
def test_limits_beyond_the_protocol_are_refused(kwargs):
    with pytest.raises(ValueError):
        plan_reads(run(3), **kwargs)


def test_a_point_wider_than_the_read_limit_is_refused():
    with pytest.raises(CodecError, match="exceed"):
        plan_reads(run(1, "f32"), max_registers=1)


# --------------------------------------------------------------------------- gaps


def test_default_does_not_bridge_gaps():
    assert DEFAULT_MAX_GAP == 0
    plan = plan_reads([pt(0), pt(2)])
    assert [(r.address, r.count) for r in plan] == [(0, 1), (2, 1)]


def test_gaps_up_to_max_gap_inside_a_device_are_bridged():
    points = [pt(0, device="chiller"), pt(3, device="chiller"), pt(7, device="chiller")]
    plan = plan_reads(points, max_gap=3)
    assert [(r.address, r.count, r.unused) for r in plan] == [(0, 8, 5)]
    plan = plan_reads(points, max_gap=2)
    assert [(r.address, r.count) for r in plan] == [(0, 4), (7, 1)]


def test_gaps_between_devices_are_never_bridged():
    points = [pt(0, device="pump1"), pt(1, device="pump1"), pt(3, device="pump2")]
    plan = plan_reads(points, max_gap=10)
    assert [(r.address, r.count) for r in plan] == [(0, 2), (3, 1)]


def test_contiguous_points_of_different_devices_still_merge():
    points = [pt(0, device="pump1"), pt(1, device="pump2")]
    assert [(r.address, r.count) for r in plan_reads(points)] == [(0, 2)]


def test_gaps_in_bit_tables_follow_the_same_rule():
    points = [pt(0, "bool", "coil"), pt(5, "bool", "coil")]
    assert len(plan_reads(points)) == 2
    assert [(r.address, r.count) for r in plan_reads(points, max_gap=4)] == [(0, 6)]


# --------------------------------------------------------------------------- grouping


def test_units_and_tables_are_planned_separately_and_in_order():
    points = [
        pt(0, unit_id=2),
        pt(0, "bool", "coil", unit_id=2),
        pt(0, table="input"),
        pt(0, "bool", "discrete"),
        pt(1),
        pt(0),
    ]
    plan = plan_reads(points)
    assert [(r.unit_id, r.table, r.address, r.count) for r in plan] == [
        (1, "discrete", 0, 1),
        (1, "input", 0, 1),
        (1, "holding", 0, 2),
        (2, "coil", 0, 1),
        (2, "holding", 0, 1),
    ]


def test_same_address_on_another_unit_or_table_is_not_an_overlap():
    assert len(plan_reads([pt(5), pt(5, unit_id=2), pt(5, table="input")])) == 3


def test_overlapping_points_are_rejected_naming_both():
    with pytest.raises(CodecError, match=r"'flow'.*'level'|'level'.*'flow'"):
        plan_reads([pt(10, "f32", name="flow"), pt(11, name="level")])


def test_the_same_point_twice_is_an_overlap():
    p = pt(4, name="twice")
    with pytest.raises(CodecError, match="overlap"):
        plan_reads([p, p])


def test_empty_input_gives_empty_plan():
    assert plan_reads([]) == []


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        (pt(0, "u16", "coil"), "must be bool"),
        (pt(65535, "f32"), "address space"),
        (pt(-1), "address space"),
        (pt(0, table="memory"), "unknown table"),
    ],
)
def test_malformed_points_are_refused(point, reason):
    with pytest.raises(CodecError, match=reason):
        plan_reads([point])


def test_read_request_is_frozen():
    (r,) = plan_reads(run(2))
    with pytest.raises(AttributeError):
        r.count = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- coverage_check


def test_coverage_check_catches_a_missing_or_doubled_point_and_an_oversize_read():
    points = run(3)
    plan = plan_reads(points)
    coverage_check(points, plan)
    with pytest.raises(CodecError, match="read 0 times"):
        coverage_check([*points, pt(9)], plan)
    with pytest.raises(CodecError, match="read 2 times"):
        coverage_check(points, [*plan, ReadRequest(1, "holding", 0, 1, (points[0],))])
    with pytest.raises(CodecError, match="exceeds"):
        coverage_check(points, [ReadRequest(1, "holding", 0, 126, tuple(points))])
    with pytest.raises(CodecError, match="not inside"):
        coverage_check(points, [ReadRequest(1, "holding", 1, 2, tuple(points))])
