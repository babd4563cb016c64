"""The served register image agrees with the codec, value for value.

``hil.image`` encodes a whole plant sample with numpy; ``plc.codec`` is the
contract every master decodes with. Every register the image holds must be
exactly what ``codec.encode`` gives for the same point and value, for every
type, word order and scale; the image adds only what a codec cannot express
(NaN in an integer register -> the type's sentinel) and saturation.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from thermogate.hil.image import RAW_LIMITS, SENTINEL, ImageWriter, build_images, encode_raw
from thermogate.plc.codec import F32_MAX, decode, encode
from thermogate.plc.points import Point

INT_TYPES = ("u16", "i16", "u32", "i32")
TYPES = (*INT_TYPES, "f32")
ORDERS = ("big", "little")
# Scales the point maps use, plus a few awkward ones (binary and decimal fractions, > 1).
SCALES = (1.0, 0.1, 0.01, 0.001, 0.5, 0.25, 2.0, 10.0, 0.2, 0.05)

pytestmark = pytest.mark.timeout(60)


def raw_words(type_: str, raw: int, order: str = "big") -> list[int]:
    """encode_raw's one uint32 per point -> the registers a master sees."""
    if type_ in ("u16", "i16"):
        return [raw]
    words = [raw >> 16, raw & 0xFFFF]
    return words if order == "big" else words[::-1]


def image_words(type_: str, value: float, scale: float, order: str = "big") -> list[int]:
    raw = encode_raw(type_, np.array([value]), np.array([scale]))
    assert raw.dtype == np.uint32 and raw.shape == (1,)
    return raw_words(type_, int(raw[0]), order)


@st.composite
def in_range_value(draw: st.DrawFn, type_: str, scale: float) -> float:
    """A finite engineering value the type can carry at this scale."""
    if type_ == "f32":
        limit = F32_MAX * scale * 0.999  # stay clear of the f32 overflow edge
        return draw(st.floats(-limit, limit, allow_nan=False, allow_infinity=False))
    lo, hi = RAW_LIMITS[type_]
    how = draw(st.sampled_from(("any", "tie", "count")))
    if how == "any":
        return draw(st.floats(lo * scale, hi * scale, allow_nan=False, allow_infinity=False))
    count = draw(st.integers(lo, hi - 1))
    # 'tie': a value written as k.5 counts (0.35 at scale 0.1), the codec's decimal rule
    value = float(repr(round((count + 0.5) * scale, 12))) if how == "tie" else count * scale
    assume(lo * scale <= value <= hi * scale)
    return value


@st.composite
def point_and_value(draw: st.DrawFn) -> tuple[str, str, float, float]:
    type_ = draw(st.sampled_from(TYPES))
    order = draw(st.sampled_from(ORDERS))
    scale = draw(st.sampled_from(SCALES))
    return type_, order, scale, draw(in_range_value(type_, scale))


# --------------------------------------------------------------------------- #
# one value at a time
# --------------------------------------------------------------------------- #


@settings(max_examples=1500, deadline=None)
@given(point_and_value())
@example(("u16", "big", 0.1, 0.35))  # 3.4999999999999996 counts in binary, 3.5 as written
@example(("i16", "big", 0.1, -0.35))
@example(("u16", "big", 0.01, 1.005))
@example(("u16", "big", 0.1, 0.15))
@example(("u16", "big", 1.0, 0.49999999999999994))  # floor(x + 0.5) would say 1
@example(("i16", "big", 1.0, -0.49999999999999994))
@example(("i16", "big", 0.1, -3276.7))  # one count inside the sentinel: a value
@example(("i32", "little", 0.01, -21474836.47))
@example(("u32", "little", 1.0, 4294967294.0))
@example(("f32", "little", 1.0, -0.0))
@example(("f32", "big", 0.1, 1e-40))  # subnormal in f32
def test_encode_raw_agrees_with_the_codec_for_every_type_and_word_order(
    case: tuple[str, str, float, float],
) -> None:
    type_, order, scale, value = case
    point = Point("p", 1, "holding", 0, type_, scale=scale, word_order=order)
    assert image_words(type_, value, scale, order) == encode(point, value), case


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from((3, 7)),
            st.sampled_from(("input", "holding")),
            point_and_value(),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_image_writer_puts_the_codec_registers_of_every_point_in_place(
    specs: list[tuple[int, str, tuple[str, str, float, float], int]],
) -> None:
    """A mixed map (two units, two tables, all types and orders, gaps) written in
    one call: each register gets its own point's words, in no other unit's image."""
    points: list[Point] = []
    values: list[float] = []
    next_address = {(u, t): 0 for u in (3, 7) for t in ("input", "holding")}
    for i, (unit, table, (type_, order, scale, value), gap) in enumerate(specs):
        address = next_address[unit, table] + gap
        p = Point(f"p{i}", unit, table, address, type_, scale=scale, word_order=order)
        next_address[unit, table] = p.end
        points.append(p)
        values.append(value)
    images = build_images(points)
    ImageWriter(points, images).write(np.array(values))
    for p, value in zip(points, values, strict=True):
        image = images[p.unit_id]
        assert image.get_registers(p) == encode(p, value), (p, value)
        if p.type != "f32":
            assert decode(p, image.get_registers(p)) == pytest.approx(value, abs=p.scale * 0.51)


@settings(max_examples=200, deadline=None)
@given(st.lists(point_and_value(), min_size=1, max_size=50))
def test_encode_raw_on_a_vector_matches_element_by_element(
    cases: list[tuple[str, str, float, float]],
) -> None:
    """Vectorised encoding does not depend on the neighbours in the batch."""
    for type_ in TYPES:
        same = [(s, v) for t, _, s, v in cases if t == type_]
        if not same:
            continue
        scales = np.array([s for s, _ in same])
        values = np.array([v for _, v in same])
        batch = encode_raw(type_, values, scales).tolist()
        single = [int(encode_raw(type_, np.array([v]), np.array([s]))[0]) for s, v in same]
        assert batch == single


def test_a_bare_float_scale_broadcasts_like_a_scale_per_point() -> None:
    values = np.array([0.35, -0.35, 12.34, 0.05, -0.15])
    per_point = encode_raw("i16", values, np.full(5, 0.1))
    assert encode_raw("i16", values, np.float64(0.1)).tolist() == per_point.tolist()
    p = Point("t", 1, "input", 0, "i16", scale=0.1)
    assert [[w] for w in per_point.tolist()] == [encode(p, v) for v in values]


# --------------------------------------------------------------------------- #
# what the codec cannot express: NaN sentinels and saturation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("type_", "sentinel"),
    [("i16", 0x8000), ("u16", 0xFFFF), ("u32", 0xFFFFFFFF), ("i32", 0x80000000)],
)
@pytest.mark.parametrize("order", ORDERS)
def test_nan_in_an_integer_point_is_served_as_the_types_sentinel(
    type_: str, sentinel: int, order: str
) -> None:
    assert SENTINEL[type_] == sentinel
    assert encode_raw(type_, np.array([math.nan]), np.array([0.1])).tolist() == [sentinel]
    p = Point("t", 1, "input", 0, type_, scale=0.1, word_order=order)
    q = Point("u", 1, "input", p.end, type_, scale=0.1, word_order=order)
    images = build_images([p, q])
    ImageWriter([p, q], images).write(np.array([math.nan, 12.3]))
    assert images[1].get_registers(p) == raw_words(type_, sentinel, order)
    # the NaN does not leak into its neighbour of the same group
    assert images[1].get_registers(q) == encode(q, 12.3)


@pytest.mark.parametrize("order", ORDERS)
def test_nan_in_an_f32_point_stays_nan(order: str) -> None:
    p = Point("f", 1, "input", 0, "f32", word_order=order)
    q = Point("g", 1, "input", 2, "f32", word_order=order)
    images = build_images([p, q])
    ImageWriter([p, q], images).write(np.array([math.nan, -1.5]))
    assert math.isnan(decode(p, images[1].get_registers(p)))
    assert decode(q, images[1].get_registers(q)) == -1.5
    hi, lo = struct.unpack(">HH", struct.pack(">f", math.nan))
    assert images[1].get_registers(p) == ([hi, lo] if order == "big" else [lo, hi])
    # infinities pass through like the codec's
    ImageWriter([p], images).write(np.array([-math.inf]))
    assert images[1].get_registers(p) == encode(p, -math.inf)


@pytest.mark.parametrize("type_", INT_TYPES)
@pytest.mark.parametrize("scale", [1.0, 0.1, 0.01])
def test_out_of_range_values_saturate_at_the_types_limits(type_: str, scale: float) -> None:
    lo, hi = RAW_LIMITS[type_]
    values = np.array(
        [hi * scale * 1.5 + 1, lo * scale * 1.5 - 1, 1e300, -1e300, math.inf, -math.inf]
    )
    raw = encode_raw(type_, values, np.full(len(values), scale)).tolist()
    mask = 0xFFFF if type_ in ("u16", "i16") else 0xFFFFFFFF
    assert raw == [hi & mask, lo & mask, hi & mask, lo & mask, hi & mask, lo & mask]
    # one count past the end saturates to the end, not a wrap-around
    assert encode_raw(type_, np.array([(hi + 1) * scale]), np.array([scale])).tolist() == [
        hi & mask
    ]
    assert encode_raw(type_, np.array([(lo - 1) * scale]), np.array([scale])).tolist() == [
        lo & mask
    ]
    # the ends are one count inside the failure sentinel: a pegged reading is a value
    assert SENTINEL[type_] not in raw


def test_a_reading_below_the_i16_range_is_pegged_not_sent_as_a_failed_input() -> None:
    """A -5000 degC spike on an i16 0.1 degC register read 0x8000, the i16 NaN."""
    assert encode_raw("i16", np.array([-5000.0]), np.array([0.1])).tolist() == [0x8001]
    assert encode_raw("u16", np.array([1e6]), np.array([0.1])).tolist() == [0xFFFE]


def test_a_saturated_reading_decodes_to_the_types_extreme() -> None:
    """A hot sensor pinned at the top of an i16 still reads hot, never wraps negative."""
    p = Point("t", 1, "input", 0, "i16", scale=0.1)
    images = build_images([p])
    ImageWriter([p], images).write(np.array([5000.0]))
    assert decode(p, images[1].get_registers(p)) == pytest.approx(3276.7)


# --------------------------------------------------------------------------- #
# commands belong to the masters
# --------------------------------------------------------------------------- #


def test_writable_points_are_left_to_the_masters_unless_include_writable() -> None:
    points = [
        Point("temp", 1, "input", 0, "i16", scale=0.1),
        Point("valve_cmd", 1, "holding", 0, "u16", scale=0.1, access="rw", min=0, max=100),
        Point("valve_pos", 1, "holding", 1, "u16", scale=0.1),
        Point("setpoint", 1, "holding", 2, "f32", access="rw"),
        Point("enable", 1, "coil", 0, "bool", access="rw"),
        Point("running", 1, "discrete", 0, "bool"),
    ]
    images = build_images(points)
    image = images[1]
    # what a master wrote
    image.set_registers("valve_cmd", [455])
    image.set_registers("setpoint", encode(points[3], 21.5))
    image.set_registers("enable", False)
    sample = np.array([48.2, 80.0, 62.5, 30.0, 1.0, 1.0])

    ImageWriter(points, images).write(sample)
    assert image.get_registers("temp") == [482]
    assert image.get_registers("valve_pos") == [625]
    assert image.get_registers("running") == [True]
    assert image.get_registers("valve_cmd") == [455]  # untouched
    assert decode(points[3], image.get_registers("setpoint")) == 21.5
    assert image.get_registers("enable") == [False]

    ImageWriter(points, images, include_writable=True).write(sample)
    assert image.get_registers("valve_cmd") == [800]
    assert decode(points[3], image.get_registers("setpoint")) == 30.0
    assert image.get_registers("enable") == [True]


def test_bool_points_in_a_register_table_read_as_0_or_1() -> None:
    points = [
        Point("flag", 2, "holding", 0, "bool"),
        Point("other", 2, "holding", 1, "bool"),
        Point("bit", 2, "discrete", 3, "bool"),
    ]
    images = build_images(points)
    ImageWriter(points, images).write(np.array([2.0, 0.0, 1.0]))
    assert images[2].get_registers("flag") == encode(points[0], True) == [1]
    assert images[2].get_registers("other") == [0]
    assert images[2].get_registers("bit") == [True]
    assert images[2].discretes.tolist() == [False, False, False, True]
