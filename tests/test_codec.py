"""The Modbus value codec: wire images, round trips, ranges and the bulk decoder."""

from __future__ import annotations

import math
import random
import struct
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.plc.codec import (
    F32_MAX,
    RAW_RANGE,
    BlockDecoder,
    decode,
    decode_block,
    encode,
)
from thermogate.plc.errors import CodecError
from thermogate.plc.planning import plan_reads
from thermogate.plc.points import Point

INT_TYPES = ("u16", "i16", "u32", "i32")
WIDE_TYPES = ("u32", "i32", "f32")
REGISTER_TYPES = ("u16", "i16", "u32", "i32", "f32")
WORD_ORDERS = ("big", "little")
SCALES = (1.0, 0.1, 0.01, 0.001, 0.5, 2.0, 10.0, 0.25, -1.0, 1 / 3)

FAST = settings(max_examples=150, deadline=None)


def pt(type_="u16", scale=1.0, word_order="big", table="holding", address=0, name="tank1.level"):
    return Point(
        name=name,
        unit_id=1,
        table=table,
        address=address,
        type=type_,
        scale=scale,
        word_order=word_order,
    )


def same(a, b) -> bool:
    """Equal in value, type, sign of zero; NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, bool):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


# --------------------------------------------------------------------------- wire images

KNOWN = [
    ("u16", 0, [0x0000]),
    ("u16", 65535, [0xFFFF]),
    ("u16", 4660, [0x1234]),
    ("i16", -1, [0xFFFF]),
    ("i16", -32768, [0x8000]),
    ("i16", 32767, [0x7FFF]),
    ("u32", 0x12345678, [0x1234, 0x5678]),
    ("u32", 0xFFFFFFFF, [0xFFFF, 0xFFFF]),
    ("i32", -2, [0xFFFF, 0xFFFE]),
    ("i32", -(2**31), [0x8000, 0x0000]),
    ("i32", 2**31 - 1, [0x7FFF, 0xFFFF]),
    ("f32", 1.0, [0x3F80, 0x0000]),
    ("f32", -2.5, [0xC020, 0x0000]),
    ("f32", 0.0, [0x0000, 0x0000]),
    ("f32", -0.0, [0x8000, 0x0000]),
    ("f32", math.inf, [0x7F80, 0x0000]),
    ("f32", -math.inf, [0xFF80, 0x0000]),
]


@pytest.mark.parametrize(("type_", "value", "wire"), KNOWN)
def test_big_word_order_matches_known_wire_images(type_, value, wire):
    p = pt(type_)
    assert encode(p, value) == wire
    assert same(decode(p, wire), float(value))


@pytest.mark.parametrize(("type_", "value", "wire"), [k for k in KNOWN if len(k[2]) == 2])
def test_little_word_order_puts_low_word_first(type_, value, wire):
    p = pt(type_, word_order="little")
    assert encode(p, value) == wire[::-1]
    assert same(decode(p, wire[::-1]), float(value))


def test_f32_nan_encodes_to_a_nan_image_and_decodes_as_nan():
    p = pt("f32")
    hi, lo = encode(p, math.nan)
    assert (hi & 0x7F80) == 0x7F80 and ((hi & 0x007F) or lo)
    assert math.isnan(decode(p, [hi, lo]))
    # any NaN pattern a sensor sends, signalling or quiet, negative or not
    for wire in ([0x7F80, 0x0001], [0xFFC0, 0x0000], [0x7FFF, 0xFFFF]):
        assert math.isnan(decode(p, wire))


# --------------------------------------------------------------------------- integer round trips


@pytest.mark.parametrize("word_order", WORD_ORDERS)
@pytest.mark.parametrize("type_", INT_TYPES)
def test_integer_limits_round_trip(type_, word_order):
    lo, hi = RAW_RANGE[type_]
    p = pt(type_, word_order=word_order)
    for raw in {lo, hi, 0, 1, hi - 1, lo + 1, -1 if lo < 0 else 0}:
        regs = encode(p, raw)
        assert all(0 <= r <= 0xFFFF for r in regs)
        assert same(decode(p, regs), float(raw))


def test_i16_negative_values_round_trip():
    p = pt("i16", scale=0.1)
    for value in (-0.1, -1.0, -273.1, -3276.8):
        assert decode(p, encode(p, value)) == pytest.approx(value, abs=1e-9)
    assert encode(p, -0.1) == [0xFFFF]
    assert encode(p, -3276.8) == [0x8000]


def test_i32_negative_values_round_trip_in_both_word_orders():
    for wo in WORD_ORDERS:
        p = pt("i32", scale=0.01, word_order=wo)
        for value in (-0.01, -1.0, -21474836.48):
            assert decode(p, encode(p, value)) == pytest.approx(value, abs=1e-9)


@FAST
@given(
    type_=st.sampled_from(INT_TYPES),
    data=st.data(),
    scale=st.sampled_from(SCALES),
    word_order=st.sampled_from(WORD_ORDERS),
)
def test_integer_counts_round_trip_exactly_at_any_scale(type_, data, scale, word_order):
    lo, hi = RAW_RANGE[type_]
    raw = data.draw(st.one_of(st.sampled_from([lo, hi, 0, max(lo, -1)]), st.integers(lo, hi)))
    p = pt(type_, scale=scale, word_order=word_order)
    value = decode(p, encode(replace(p, scale=1.0), raw))
    assert value == raw * scale
    regs = encode(p, value)
    assert len(regs) == p.words and all(0 <= r <= 0xFFFF for r in regs)
    assert decode(replace(p, scale=1.0), regs) == raw  # raw -> value -> raw is exact


@FAST
@given(
    type_=st.sampled_from(INT_TYPES),
    scale=st.sampled_from(SCALES),
    fraction=st.floats(0, 1),
    word_order=st.sampled_from(WORD_ORDERS),
)
def test_any_in_range_value_decodes_within_half_a_count(type_, scale, fraction, word_order):
    lo, hi = RAW_RANGE[type_]
    a, b = sorted((lo * scale, hi * scale))
    value = a + (b - a) * fraction
    p = pt(type_, scale=scale, word_order=word_order)
    back = decode(p, encode(p, value))
    assert abs(back - value) <= abs(scale) / 2 + 1e-9 * max(1.0, abs(value))


@pytest.mark.parametrize(
    ("value", "scale", "raw"),
    [
        (0.35, 0.1, 4),  # binary 0.35/0.1 is 3.4999999999999996: judged as written
        (-0.35, 0.1, -4),
        (0.25, 0.1, 3),
        (-0.25, 0.1, -3),
        (0.24, 0.1, 2),
        (2.5, 1.0, 3),
        (-2.5, 1.0, -3),
        (-0.5, 1.0, -1),
        (0.49999999999999994, 1.0, 0),  # floor(x + 0.5) gets this one wrong
        (1.005, 0.01, 101),
        (7, 0.5, 14),
    ],
)
def test_encode_rounds_to_nearest_count_half_away_from_zero(value, scale, raw):
    p = pt("i32", scale=scale)
    assert decode(pt("i32"), encode(p, value)) == raw


@FAST
@given(
    value=st.one_of(
        st.floats(-1e5, 1e5, allow_nan=False),  # within i32 counts at every scale below
        st.integers(-(10**6), 10**6).map(lambda k: k / 20),  # ties at most scales below
        st.integers(-(10**6), 10**6).map(lambda k: k / 200),
    ),
    scale=st.sampled_from([0.1, 0.01, 0.05, 0.5, 0.2, 0.001, 3.0, 0.3, 1e-4]),
)
def test_encode_counts_are_the_decimal_quotient_rounded_half_away(value, scale):
    """The float quotient decides only away from a tie; at one (0.15 / 0.1 is
    1.4999999999999998 in binary) the decimal quotient of what was written does."""
    exact = Decimal(repr(float(value))) / Decimal(repr(scale))
    raw = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    p = pt("i32", scale=scale)
    assert decode(pt("i32"), encode(p, value)) == raw


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("type_", INT_TYPES)
def test_out_of_range_raises_codec_error_naming_point_value_and_range(type_):
    lo, hi = RAW_RANGE[type_]
    p = pt(type_, name="chiller.setpoint")
    for bad in (lo - 1, hi + 1):
        with pytest.raises(CodecError) as err:
            encode(p, bad)
        msg = str(err.value)
        assert "chiller.setpoint" in msg and str(bad) in msg and f"{lo}..{hi}" in msg


def test_out_of_range_message_gives_the_engineering_range_of_a_scaled_point():
    p = replace(pt("i16", scale=0.1), unit="degC")
    with pytest.raises(CodecError, match=r"-3276\.8\.\.3276\.7 degC"):
        encode(p, 4000.0)
    with pytest.raises(CodecError):
        encode(p, 3276.75)  # rounds to 32768 counts
    assert encode(p, 3276.74) == [0x7FFF]


@FAST
@given(
    type_=st.sampled_from(INT_TYPES),
    scale=st.sampled_from(SCALES),
    beyond=st.integers(1, 2**40),
    above=st.booleans(),
)
def test_any_raw_value_outside_the_type_raises(type_, scale, beyond, above):
    lo, hi = RAW_RANGE[type_]
    raw = hi + beyond if above else lo - beyond
    with pytest.raises(CodecError):
        encode(pt(type_, scale=scale), raw * scale)


@pytest.mark.parametrize("type_", INT_TYPES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_integer_types_reject_nan_and_inf(type_, value):
    with pytest.raises(CodecError, match=r"tank1\.level"):
        encode(pt(type_), value)


def test_huge_python_int_raises_codec_error_not_overflow():
    with pytest.raises(CodecError):
        encode(pt("u32", scale=0.1), 10**400)


def test_f32_beyond_float32_range_raises_but_its_limit_encodes():
    p = pt("f32")
    assert decode(p, encode(p, F32_MAX)) == F32_MAX
    assert decode(p, encode(p, -F32_MAX)) == -F32_MAX
    with pytest.raises(CodecError, match=r"tank1\.level"):
        encode(p, 1e39)


# --------------------------------------------------------------------------- f32


@FAST
@given(value=st.floats(width=32, allow_nan=True), word_order=st.sampled_from(WORD_ORDERS))
def test_f32_round_trips_every_float32_including_nan_inf_and_negative_zero(value, word_order):
    p = pt("f32", word_order=word_order)
    assert same(decode(p, encode(p, value)), value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 0.0])
@pytest.mark.parametrize("word_order", WORD_ORDERS)
def test_f32_special_values_round_trip(value, word_order):
    p = pt("f32", word_order=word_order)
    assert same(decode(p, encode(p, value)), value)


@FAST
@given(bits=st.integers(0, 2**32 - 1), word_order=st.sampled_from(WORD_ORDERS))
def test_f32_every_non_nan_register_image_round_trips(bits, word_order):
    p = pt("f32", word_order=word_order)
    wire = [bits >> 16, bits & 0xFFFF]
    if word_order == "little":
        wire.reverse()
    value = decode(p, wire)
    if math.isnan(value):
        return  # NaN payloads need not survive; NaN-ness does (tested above)
    assert encode(p, value) == wire


def test_f32_rounds_to_nearest_float32():
    p = pt("f32")
    assert decode(p, encode(p, 0.1)) == struct.unpack(">f", struct.pack(">f", 0.1))[0]


def test_f32_scale_is_applied_consistently_if_not_one():
    p = pt("f32", scale=10.0)
    assert encode(p, 25.0) == encode(pt("f32"), 2.5)
    assert decode(p, encode(pt("f32"), 2.5)) == 25.0
    assert math.isnan(decode(p, encode(p, math.nan)))
    assert decode(p, encode(p, math.inf)) == math.inf


# --------------------------------------------------------------------------- word order


@FAST
@given(type_=st.sampled_from(WIDE_TYPES), data=st.data(), scale=st.sampled_from(SCALES))
def test_little_and_big_word_order_produce_swapped_words(type_, data, scale):
    if type_ == "f32":
        value = data.draw(st.floats(width=32, allow_nan=False))
        scale = 1.0
    else:
        lo, hi = RAW_RANGE[type_]
        value = data.draw(st.integers(lo, hi)) * scale
    big = encode(pt(type_, scale=scale), value)
    little = encode(pt(type_, scale=scale, word_order="little"), value)
    assert little == big[::-1]
    assert same(
        decode(pt(type_, scale=scale, word_order="little"), little),
        decode(pt(type_, scale=scale), big),
    )


def test_single_register_types_ignore_word_order():
    for t in ("u16", "i16"):
        assert encode(pt(t, word_order="little"), 258) == encode(pt(t), 258) == [258]


def test_unknown_word_order_raises():
    with pytest.raises(CodecError, match="word_order"):
        encode(pt("u32", word_order="middle"), 1)


# --------------------------------------------------------------------------- bits


@pytest.mark.parametrize("table", ["coil", "discrete"])
def test_bit_points_encode_to_zero_or_one_and_decode_to_bool(table):
    p = pt("bool", table=table)
    assert encode(p, True) == [1]
    assert encode(p, False) == [0]
    assert encode(p, 1) == [1]
    assert encode(p, 0.0) == [0]
    assert decode(p, [1]) is True
    assert decode(p, [False]) is False


@pytest.mark.parametrize("value", [2, -1, 0.5, math.nan, "1", None])
def test_bit_points_reject_non_bit_values(value):
    with pytest.raises(CodecError):
        encode(pt("bool", table="coil"), value)


def test_bool_in_a_register_decodes_any_nonzero_as_true():
    p = pt("bool", table="holding")
    assert encode(p, True) == [1]
    assert decode(p, [0xFFFF]) is True  # a PLC's INT -1 for TRUE
    assert decode(p, [0]) is False


def test_non_bool_type_in_a_bit_table_is_rejected():
    with pytest.raises(CodecError, match="must be bool"):
        encode(pt("u16", table="coil"), 1)


# --------------------------------------------------------------------------- bad input


def test_decode_rejects_wrong_register_count():
    with pytest.raises(CodecError, match="expected 2"):
        decode(pt("f32"), [1])
    with pytest.raises(CodecError, match="expected 1"):
        decode(pt("u16"), [1, 2])


@pytest.mark.parametrize("bad", [-1, 65536, 1.5])
def test_decode_rejects_register_values_outside_16_bits(bad):
    with pytest.raises(CodecError, match=r"outside 0\.\.65535"):
        decode(pt("u32"), [0, bad])


@pytest.mark.parametrize("value", ["12", b"1", None, [1]])
def test_encode_rejects_non_numbers(value):
    with pytest.raises(CodecError, match="not a number"):
        encode(pt("u16"), value)


@pytest.mark.parametrize("scale", [0.0, math.inf, math.nan])
def test_zero_or_non_finite_scale_is_rejected(scale):
    with pytest.raises(CodecError, match="scale"):
        encode(pt("u16", scale=scale), 1)


# --------------------------------------------------------------------------- bulk decoder


@st.composite
def register_blocks(draw):
    """A block with random types, scales, word orders, gaps and a random read image."""
    n = draw(st.integers(1, 40))
    start = draw(st.integers(0, 1000))
    addr = start + draw(st.integers(0, 3))
    points = []
    for i in range(n):
        t = draw(st.sampled_from((*REGISTER_TYPES, "bool")))
        scale = 1.0 if t in ("f32", "bool") else draw(st.sampled_from(SCALES))
        points.append(pt(t, scale, draw(st.sampled_from(WORD_ORDERS)), address=addr, name=f"p{i}"))
        addr += points[-1].words + draw(st.sampled_from((0, 0, 0, 1, 2, 5)))
    count = addr - start
    regs = draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    draw(st.randoms()).shuffle(points)  # the decoder must not rely on input order
    return points, start, regs


@FAST
@given(block=register_blocks())
def test_bulk_decoder_agrees_with_per_point_decode(block):
    points, start, regs = block
    dec = BlockDecoder(points, start, len(regs))
    got = dec.decode(regs)
    assert [p.address for p in dec.points] == sorted(p.address for p in points)
    for p, value in zip(dec.points, got, strict=True):
        o = p.address - start
        assert same(value, decode(p, regs[o : o + p.words])), p


@FAST
@given(
    offsets=st.sets(st.integers(0, 199), min_size=1, max_size=60),
    data=st.data(),
    table=st.sampled_from(["coil", "discrete"]),
)
def test_bulk_bit_decoder_agrees_with_per_point_decode(offsets, data, table):
    start = 37
    count = max(offsets) + 1
    padded = -(-count // 8) * 8  # pymodbus pads bit responses to whole bytes
    bits = data.draw(st.lists(st.booleans(), min_size=padded, max_size=padded))
    points = [pt("bool", table=table, address=start + o, name=f"b{o}") for o in offsets]
    dec = BlockDecoder(points, start, count)
    got = dec.decode(bits)
    for p, value in zip(dec.points, got, strict=True):
        assert same(value, decode(p, [bits[p.address - start]]))


def test_decode_into_fills_a_name_to_value_dict():
    points = [pt("i16", 0.1, address=0, name="t1"), pt("f32", address=1, name="flow")]
    out: dict = {}
    BlockDecoder(points, 0, 3).decode_into([0xFFFF, 0x3F80, 0x0000], out)
    assert out == {"t1": pytest.approx(-0.1), "flow": 1.0}


def test_decode_block_decodes_a_single_read():
    points = [pt("u16", address=10, name="a"), pt("u32", word_order="little", address=12, name="b")]
    assert decode_block(points, 10, [7, 0, 1, 2]) == [7.0, float(2 << 16 | 1)]


def test_bulk_decoder_rejects_a_short_read_and_bad_registers():
    dec = BlockDecoder([pt("u32", address=0)], 0, 2)
    with pytest.raises(CodecError, match="expected 2 registers"):
        dec.decode([1])
    with pytest.raises(CodecError, match="70000"):
        dec.decode([1, 70000])
    bits = BlockDecoder([pt("bool", table="coil", address=5)], 0, 6)
    with pytest.raises(CodecError, match="expected 6 bits"):
        bits.decode([True] * 5)


def test_bulk_decoder_rejects_overlaps_strays_and_mixed_tables():
    with pytest.raises(CodecError, match="overlap"):
        BlockDecoder([pt("f32", address=0, name="a"), pt("u16", address=1, name="b")], 0, 3)
    with pytest.raises(CodecError, match="outside block"):
        BlockDecoder([pt("f32", address=4)], 0, 5)
    with pytest.raises(CodecError, match="a block is one read"):
        BlockDecoder([pt("u16", address=0), pt("u16", table="input", address=1)], 0, 2)


def test_block_decoders_built_from_a_plan_decode_every_point():
    points = [pt("u16", address=a, name=f"r{a}") for a in range(300)]
    points += [pt("bool", table="coil", address=a, name=f"c{a}") for a in range(30)]
    out: dict = {}
    for req in plan_reads(points):
        dec = BlockDecoder.for_request(req)
        data = [True] * req.count if req.is_bit else list(range(req.address, req.end))
        dec.decode_into(data, out)
    assert out == {p.name: (True if p.table == "coil" else float(p.address)) for p in points}


def test_bulk_decode_of_10000_points_matches_per_point_decode():
    # Speed is measured by the benchmarks, not asserted here (shared machines).
    rng = random.Random(7)
    points = []
    addr = 0
    for i in range(10_000):
        t = rng.choice(REGISTER_TYPES)
        scale = 1.0 if t == "f32" else rng.choice(SCALES)
        points.append(pt(t, scale, rng.choice(WORD_ORDERS), address=addr, name=f"p{i}"))
        addr += points[-1].words
    requests = plan_reads(points)
    decoders = [BlockDecoder.for_request(r) for r in requests]
    reads = [[rng.randrange(0x10000) for _ in range(d.count)] for d in decoders]
    out: dict = {}
    for d, regs in zip(decoders, reads, strict=True):
        d.decode_into(regs, out)
    assert len(out) == 10_000
    for req, regs in zip(requests, reads, strict=True):
        for p in req.points:
            want = decode(p, regs[p.address - req.address : p.end - req.address])
            got = out[p.name]
            assert (math.isnan(want) and math.isnan(got)) or got == want, p.name
