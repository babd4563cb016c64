"""Modbus value codec: engineering values <-> 16-bit registers and bits.

Written on :mod:`struct` rather than pymodbus' payload helpers because those
helpers change between pymodbus minor releases, and because the scan decodes
every point of the site every cycle: the bulk path (:class:`BlockDecoder`)
turns a whole read response into values with a handful of C-level calls.

Conventions (the contract with the PLC, see :class:`~thermogate.plc.points.Point`):

* Integer types carry ``raw`` counts; the engineering value is
  ``raw * scale``. Encoding divides by ``scale`` and rounds to the nearest
  count, ties away from zero. Ties are judged on the decimal values as
  written (``repr``), so ``0.35`` at scale ``0.1`` is 3.5 counts -> 4, not
  binary floating point's 3.4999999999999996 -> 3: an operator typing
  ``0.35`` expects what a calculator gives.
* ``f32`` carries engineering units directly (``scale`` is normally 1; if it
  is not, it is applied the same way: wire = value / scale). NaN and +-inf
  pass through in both directions: a sensor may report NaN and it is the
  consumer's job, not the codec's, to judge it.
* 32-bit values: ``word_order="big"`` puts the high word first (Modbus
  convention), ``"little"`` the low word first. Bytes within a word are
  always big-endian, as the Modbus spec requires.
* Bits (coil/discrete tables, and ``bool`` points in register tables) decode
  any non-zero value as ``True``: PLCs that store a BOOL in a register
  commonly write 0xFFFF (an INT of -1) for TRUE.

The codec enforces only what the *type* can represent. A point's engineering
``min``/``max`` are operating limits, checked by whoever decides to write.
"""

from __future__ import annotations

import math
import numbers
import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Final, Protocol

from thermogate.plc.errors import CodecError
from thermogate.plc.points import BIT_TABLES, REGISTER_TABLES, TYPE_WORDS, Point

#: A Modbus register is 16 bits and unsigned on the wire (counts).
REGISTER_MIN: Final = 0
REGISTER_MAX: Final = 0xFFFF

#: Raw range (inclusive, in counts before ``scale``) each integer type can carry.
RAW_RANGE: Final[dict[str, tuple[int, int]]] = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
}

#: Largest finite IEEE-754 binary32 value (wire units; engineering = wire * scale).
F32_MAX: Final = 3.4028234663852886e38

Value = float | bool

# struct codes for a big-endian (high word first) value of each register type.
_CODE: Final[dict[str, str]] = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f"}
_TYPE_STRUCT: Final[dict[str, struct.Struct]] = {
    t: struct.Struct(">" + c) for t, c in _CODE.items()
}
_WORDS_STRUCT: Final[dict[int, struct.Struct]] = {1: struct.Struct(">H"), 2: struct.Struct(">HH")}
_WORD_ORDERS: Final = frozenset({"big", "little"})

# Beyond this many counts no integer type fits; checked in float before the
# exact decimal rounding so huge values never reach Decimal.
_RAW_ABS_LIMIT: Final = 2.0**33
_ONE: Final = Decimal(1)
# Precision far beyond what a float quotient of <= 2**33 counts needs, so the
# tie decision is made on the exact decimal quotient.
_DECIMAL: Final = Context(prec=60, rounding=ROUND_HALF_UP)


# --------------------------------------------------------------------------- helpers


def _describe(point: Point) -> str:
    return (
        f"point {point.name!r} (unit {point.unit_id} {point.table} {point.address}, {point.type})"
    )


def _fmt(x: float, scale: float) -> str:
    if scale == 1 and float(x).is_integer():
        return str(int(x))
    return f"{x:.10g}"


def _representable(point: Point) -> str:
    """The engineering range the point's type can carry, for error messages."""
    scale = float(point.scale)
    if point.type == "f32":
        lo, hi = -F32_MAX * scale, F32_MAX * scale
        text = f"{min(lo, hi):.8g}..{max(lo, hi):.8g} (or nan/inf)"
    else:
        rlo, rhi = RAW_RANGE[point.type]
        lo, hi = sorted((rlo * scale, rhi * scale))
        text = f"{_fmt(lo, scale)}..{_fmt(hi, scale)}"
    return f"{text} {point.unit}".rstrip()


def _check_scale(point: Point) -> float:
    scale = point.scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise CodecError(f"{_describe(point)}: scale {scale!r} is not a number")
    scale = float(scale)
    if scale == 0 or not math.isfinite(scale):
        raise CodecError(f"{_describe(point)}: scale {scale!r} must be finite and non-zero")
    return scale


def _check_word_order(point: Point) -> None:
    if point.word_order not in _WORD_ORDERS:
        raise CodecError(f"{_describe(point)}: word_order {point.word_order!r} is not big|little")


def _check_kind(point: Point) -> None:
    if point.type not in TYPE_WORDS:
        raise CodecError(f"{_describe(point)}: unknown type {point.type!r}")
    if point.table in BIT_TABLES:
        if point.type != "bool":
            raise CodecError(f"{_describe(point)}: a {point.table} point must be bool")
    elif point.table not in REGISTER_TABLES:
        raise CodecError(f"{_describe(point)}: unknown table {point.table!r}")


def _as_real(point: Point, value: object) -> numbers.Real:
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, numbers.Real):
        raise CodecError(f"{_describe(point)}: value {value!r} is not a number")
    return value


#: how near a tie (relative to the quotient) the decimal division decides
_TIE_BAND = 1e-12


def _round_half_away(x: float) -> int:
    """Nearest integer, ties away from zero; exact for every finite float.

    ``floor(abs(x) + 0.5)`` is wrong for 0.49999999999999994 (the sum rounds
    up to 1.0); ``a - floor(a)`` is exact, so compare that instead.
    """
    a = abs(x)
    f = math.floor(a)
    n = f + 1 if a - f >= 0.5 else f
    return -n if x < 0 else n


def _to_raw(point: Point, value: numbers.Real, scale: float) -> int:
    """Engineering value -> counts, or CodecError if no integer type could carry it."""
    if scale == 1 and isinstance(value, numbers.Integral):
        return int(value)
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range is beyond every type too
        raise CodecError(
            f"{_describe(point)}: value {value!r} out of range; "
            f"representable {_representable(point)}"
        ) from None
    if not math.isfinite(x):
        raise CodecError(
            f"{_describe(point)}: value {x!r} is not finite; an integer type cannot carry "
            f"nan/inf (representable {_representable(point)})"
        )
    q = x if scale == 1 else x / scale
    if not abs(q) <= _RAW_ABS_LIMIT:  # also catches q overflowing to inf
        raise CodecError(
            f"{_describe(point)}: value {value!r} out of range; "
            f"representable {_representable(point)}"
        )
    if scale == 1:
        return _round_half_away(x)
    # The float quotient is within ~3e-16 of the decimal one (each repr is the
    # float's shortest decimal): away from a tie both round to the same count.
    n = round(q)
    if abs(abs(q - n) - 0.5) > _TIE_BAND * max(1.0, abs(q)):
        return int(n)
    exact = _DECIMAL.divide(Decimal(repr(x)), Decimal(repr(scale)))
    return int(exact.quantize(_ONE, rounding=ROUND_HALF_UP, context=_DECIMAL))


def _encode_bit(point: Point, value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, str) and value in (0, 1):
        return 1 if value else 0
    raise CodecError(f"{_describe(point)}: value {value!r} is not a bit (True/False/0/1)")


# --------------------------------------------------------------------------- per point


def encode(point: Point, value: float | bool) -> list[int]:
    """Engineering value -> the registers (or ``[bit]``) to write for ``point``.

    Returns one int per register, each 0..65535, in wire order; for coil,
    discrete and ``bool`` points ``[0]`` or ``[1]``. Raises :class:`CodecError`
    naming the point, the value and the representable range when the type
    cannot carry the value (including NaN/inf for integer types).
    """
    _check_kind(point)
    if point.type == "bool":
        return [_encode_bit(point, value)]
    scale = _check_scale(point)
    number = _as_real(point, value)
    ptype = point.type
    if ptype == "f32":
        x = float(number)
        if scale != 1:
            x = x / scale
        try:
            packed = _TYPE_STRUCT["f32"].pack(x)
        except OverflowError:
            raise CodecError(
                f"{_describe(point)}: value {value!r} out of range; "
                f"representable {_representable(point)}"
            ) from None
    else:
        raw = _to_raw(point, number, scale)
        lo, hi = RAW_RANGE[ptype]
        if not lo <= raw <= hi:
            raise CodecError(
                f"{_describe(point)}: value {value!r} ({raw} counts) out of range; "
                f"representable {_representable(point)}"
            )
        packed = _TYPE_STRUCT[ptype].pack(raw)
    words = list(_WORDS_STRUCT[len(packed) // 2].unpack(packed))
    if len(words) == 2:
        _check_word_order(point)
        if point.word_order == "little":
            words.reverse()
    return words


def decode(point: Point, registers: Sequence[int]) -> float | bool:
    """The registers (or ``[bit]``) read for ``point`` -> its engineering value.

    Integer and f32 points decode to ``float`` (``raw * scale``); bit and
    ``bool`` points to ``bool``. f32 NaN/inf come back as float nan/inf.
    Raises :class:`CodecError` for the wrong number of registers or a
    register outside 0..65535. Use :class:`BlockDecoder` on the scan path.
    """
    _check_kind(point)
    n = TYPE_WORDS[point.type]
    if len(registers) != n:
        raise CodecError(f"{_describe(point)}: expected {n} value(s), got {len(registers)}")
    if point.type == "bool":
        bit = registers[0]
        if point.table in REGISTER_TABLES and not REGISTER_MIN <= bit <= REGISTER_MAX:
            raise CodecError(f"{_describe(point)}: register value {bit!r} outside 0..65535")
        return bool(bit)
    scale = _check_scale(point)
    words = registers
    if n == 2:
        _check_word_order(point)
        if point.word_order == "little":
            words = (registers[1], registers[0])
    try:
        packed = _WORDS_STRUCT[n].pack(*words)
    except struct.error:
        raise CodecError(
            f"{_describe(point)}: register values {list(registers)!r} outside 0..65535"
        ) from None
    (raw,) = _TYPE_STRUCT[point.type].unpack(packed)
    return raw * scale


# --------------------------------------------------------------------------- bulk


class _RequestLike(Protocol):
    """What :meth:`BlockDecoder.for_request` needs (``planning.ReadRequest`` fits)."""

    @property
    def address(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def points(self) -> Sequence[Point]: ...


def _single_getter(offset: int) -> Callable[[Sequence[object]], tuple[object, ...]]:
    def get(data: Sequence[object]) -> tuple[object, ...]:
        return (data[offset],)

    return get


class BlockDecoder:
    """Decodes every point of one contiguous read in a few C-level calls.

    Build one per read request when the scan plan is made and reuse it every
    cycle; all per-point work (offsets, struct format, word swaps, scales) is
    done here once. ``decode`` then costs, per block: one ``struct.pack`` of
    the registers (which also validates them as 0..65535), one
    ``operator.itemgetter`` permutation if any point is little word order,
    one ``struct.unpack`` with gaps as pad bytes, and one
    ``map(operator.mul, raw, scales)``. Bit blocks are one ``itemgetter`` and
    ``map(bool, ...)``.

    What that costs is in the README's Benchmarks section.

    Values come back in ``self.points`` order, which is address order.
    """

    __slots__ = (
        "_bool_idx",
        "_getter",
        "_pack",
        "_reorder",
        "_scales",
        "_unpack",
        "count",
        "is_bit",
        "names",
        "points",
        "start",
        "table",
        "unit_id",
    )
    # set by _init_bits (bits: _getter) or _init_registers (registers: the rest)
    _getter: Callable[[Sequence[Any]], tuple[Any, ...]] | None
    _pack: struct.Struct | None
    _unpack: struct.Struct | None
    _reorder: Callable[[Sequence[Any]], Any] | None
    _scales: tuple[float, ...]
    _bool_idx: tuple[int, ...]

    def __init__(self, points: Iterable[Point], start: int, count: int) -> None:
        pts = tuple(sorted(points, key=operator.attrgetter("address")))
        if not pts:
            raise CodecError("a block decoder needs at least one point")
        if count < 1:
            raise CodecError(f"block count {count} must be >= 1")
        first = pts[0]
        self.points: tuple[Point, ...] = pts
        self.names: tuple[str, ...] = tuple(p.name for p in pts)
        self.start: int = start
        self.count: int = count
        self.unit_id: int = first.unit_id
        self.table: str = first.table
        self.is_bit: bool = first.table in BIT_TABLES
        end = start + count
        pos = start
        prev: Point | None = None
        for p in pts:
            _check_kind(p)
            if (p.unit_id, p.table) != (self.unit_id, self.table):
                raise CodecError(
                    f"{_describe(p)} is not on unit {self.unit_id} {self.table} "
                    f"like {_describe(first)}; a block is one read"
                )
            if p.address < start or p.end > end:
                raise CodecError(f"{_describe(p)} lies outside block {start}..{end - 1}")
            if prev is not None and p.address < pos:
                raise CodecError(f"{_describe(prev)} and {_describe(p)} overlap")
            pos, prev = p.end, p
        if self.is_bit:
            self._init_bits()
        else:
            self._init_registers()

    @classmethod
    def for_request(cls, request: _RequestLike) -> BlockDecoder:
        """Decoder for a planned read (``planning.ReadRequest``)."""
        return cls(request.points, request.address, request.count)

    def _init_bits(self) -> None:
        offsets = [p.address - self.start for p in self.points]
        self._getter = (
            operator.itemgetter(*offsets) if len(offsets) > 1 else _single_getter(offsets[0])
        )
        self._pack = self._unpack = self._reorder = None
        self._scales = ()
        self._bool_idx = ()

    def _init_registers(self) -> None:
        parts: list[str] = []
        perm = list(range(self.count))
        swapped = False
        pos = self.start
        for p in self.points:
            gap = p.address - pos
            if gap:
                parts.append(f"{2 * gap}x")
            if p.type == "bool":
                parts.append("H")
            else:
                parts.append(_CODE[p.type])
                _check_scale(p)
                if p.words == 2:
                    _check_word_order(p)
                    if p.word_order == "little":
                        o = p.address - self.start
                        perm[o], perm[o + 1] = o + 1, o
                        swapped = True
            pos = p.end
        tail = self.start + self.count - pos
        if tail:
            parts.append(f"{2 * tail}x")
        self._pack = struct.Struct(f">{self.count}H")
        self._unpack = struct.Struct(">" + "".join(parts))
        # count >= 2 whenever a swap exists, so itemgetter returns a tuple.
        self._reorder = operator.itemgetter(*perm) if swapped else None
        self._scales = tuple(1.0 if p.type == "bool" else float(p.scale) for p in self.points)
        self._bool_idx = tuple(i for i, p in enumerate(self.points) if p.type == "bool")
        self._getter = None

    def decode(self, data: Sequence[int] | Sequence[bool]) -> list[float | bool]:
        """Values of ``self.points`` from one read response.

        ``data`` is the registers (exactly ``count`` of them) or the bits (at
        least ``count``: pymodbus pads bit responses to a multiple of 8).
        """
        if self.is_bit:
            if len(data) < self.count:
                raise CodecError(
                    f"unit {self.unit_id} {self.table} {self.start}: "
                    f"expected {self.count} bits, got {len(data)}"
                )
            getter = self._getter
            assert getter is not None  # a bit block has a getter (_init_bits)
            return list(map(bool, getter(data)))
        if len(data) != self.count:
            raise CodecError(
                f"unit {self.unit_id} {self.table} {self.start}: "
                f"expected {self.count} registers, got {len(data)}"
            )
        pack, unpack = self._pack, self._unpack
        assert pack is not None and unpack is not None  # a register block (_init_registers)
        regs = data if self._reorder is None else self._reorder(data)
        try:
            buf = pack.pack(*regs)
        except struct.error:
            bad = next(
                (r for r in data if not (isinstance(r, int) and REGISTER_MIN <= r <= REGISTER_MAX)),
                None,
            )
            raise CodecError(
                f"unit {self.unit_id} {self.table} {self.start}: "
                f"register value {bad!r} outside 0..65535"
            ) from None
        raw = unpack.unpack(buf)
        values: list[float | bool] = list(map(operator.mul, raw, self._scales))
        for i in self._bool_idx:
            values[i] = raw[i] != 0
        return values

    def decode_into(self, data: Sequence[int] | Sequence[bool], out: dict[str, Value]) -> None:
        """Like :meth:`decode`, storing ``name -> value`` into ``out``."""
        out.update(zip(self.names, self.decode(data), strict=True))


def decode_block(
    points: Iterable[Point], start: int, data: Sequence[int] | Sequence[bool]
) -> list[float | bool]:
    """One-off bulk decode of ``points`` from a block read at ``start``.

    Builds a :class:`BlockDecoder` each call; on the scan path build the
    decoders once per plan instead. Returns values in address order.
    """
    return BlockDecoder(points, start, len(data)).decode(data)
