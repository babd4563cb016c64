"""Vectorised encoding of a whole plant sample into the served register images.

Per-point encoding in Python costs ~1 µs a point; a 10,000-point site is
updated every plant step, so every point of a type is encoded in one numpy
pass, whatever its unit, and each (unit, table) gets its words in one scatter.
The results agree with ``plc.codec.encode`` (tested), with one addition a
codec cannot express: a NaN in an integer register is sent as the type's
sentinel (0xFFFF for u16, 0x8000 for i16, 0xFFFFFFFF for u32, 0x80000000 for
i32), the convention PLCs use for a failed input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal

import numpy as np

from thermogate.plc.points import Point

from .modbus_server import DeviceImage

SENTINEL = {"u16": 0xFFFF, "i16": 0x8000, "u32": 0xFFFFFFFF, "i32": 0x80000000}
#: Where a reading beyond its type saturates: one count inside the sentinel, so a
#: reading pegged at the end of its range is never taken for a failed input (a
#: -5000 degC spike once read 0x8000, the i16 NaN)
RAW_LIMITS = {
    "u16": (0, 0xFFFE),
    "i16": (-0x7FFF, 0x7FFF),
    "u32": (0, 0xFFFFFFFE),
    "i32": (-0x7FFFFFFF, 0x7FFFFFFF),
}


#: Quotients this many ulps or fewer from a tie are re-rounded exactly.
_TIE_ULPS = 8.0
#: Beyond this many counts every integer type saturates.
_RAW_ABS_LIMIT = 2.0**33
_ONE = Decimal(1)
_DECIMAL = Context(prec=60, rounding=ROUND_HALF_UP)


def _counts(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Engineering values -> counts, rounded exactly as ``plc.codec`` rounds.

    Nearest count, ties away from zero, computed exactly (``floor(|x| + 0.5)``
    is not: 0.49999999999999994 + 0.5 rounds up to 1.0). The codec judges a
    tie on the decimal values as written (0.35 at scale 0.1 is 3.5 counts ->
    4, not binary 3.4999999999999996 -> 3). A float quotient is within 3 ulps
    of the decimal one, so only quotients that close to a tie can round
    differently; those few are redone in decimal.
    """
    q = values / scale
    a = np.minimum(np.abs(q), _RAW_ABS_LIMIT)  # beyond it every type saturates; no inf - inf
    f = np.floor(a)
    frac = a - f  # exact
    raw = np.copysign(f + (frac >= 0.5), q)
    near = np.abs(frac - 0.5) <= _TIE_ULPS * np.spacing(a)
    if near.any():
        v = np.broadcast_to(values, q.shape)
        s = np.broadcast_to(scale, q.shape)
        for i in zip(*np.nonzero(near), strict=True):
            exact = _DECIMAL.divide(Decimal(repr(float(v[i]))), Decimal(repr(float(s[i]))))
            raw[i] = float(exact.quantize(_ONE, rounding=ROUND_HALF_UP, context=_DECIMAL))
    return raw


def encode_raw(type_: str, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Engineering values → raw words as uint32 (one per point, 16 or 32 bits)."""
    if type_ == "f32":
        return (values / scale).astype(np.float32).view(np.uint32).astype(np.uint32)
    nan = np.isnan(values)
    lo, hi = RAW_LIMITS[type_]
    raw = _counts(np.where(nan, 0.0, values), scale)
    raw = np.clip(raw, lo, hi).astype(np.int64)  # saturate like a PLC's scaling block
    if type_ == "i16":
        raw = raw & 0xFFFF
    elif type_ == "i32":
        raw = raw & 0xFFFFFFFF
    out = raw.astype(np.uint32)
    out[nan] = SENTINEL[type_]
    return out


@dataclass
class _Bits:
    table: np.ndarray  # the image array the points are written into
    src: np.ndarray  # indices into the sample vector
    addr: np.ndarray  # address of each point


@dataclass
class _Encoding:
    type: str
    src: np.ndarray  # indices into the sample vector
    scale: np.ndarray
    at: slice  # where in the words' low (and high) halves its points go


@dataclass
class _Scatter:
    table: np.ndarray  # one unit's register table
    dst: np.ndarray  # register addresses
    word: np.ndarray  # indices into the low halves followed by the high halves


class ImageWriter:
    """Writes sample vectors (aligned with ``points``) into device images.

    A 10,000-point site has ~200 (unit, table, type, word order) groups; a few
    numpy calls for each cost ~5 ms, and the served plant answers no request
    while it publishes. So every point of a type is encoded in one pass, whatever
    its unit, and each (unit, table) gets its words with one scatter.
    """

    def __init__(
        self,
        points: Iterable[Point],
        images: Mapping[int, DeviceImage],
        *,
        include_writable: bool = False,
    ) -> None:
        bits: dict[tuple[int, str], list[tuple[int, Point]]] = {}
        by_type: dict[str, list[tuple[int, Point]]] = {}
        for i, p in enumerate(points):
            if p.writable and not include_writable:
                continue  # commands belong to whoever wrote them
            if p.type == "bool":
                bits.setdefault((p.unit_id, p.table), []).append((i, p))
            else:
                by_type.setdefault(p.type, []).append((i, p))
        self._bits = [
            _Bits(
                images[unit].tables[table],
                np.array([i for i, _ in members], dtype=np.int64),
                np.array([p.address for _, p in members], dtype=np.int64),
            )
            for (unit, table), members in bits.items()
        ]
        self._encodings: list[_Encoding] = []
        # per (unit, table): (address, word index) of every register written
        targets: dict[tuple[int, str], tuple[list[int], list[int]]] = {}
        n = sum(len(members) for members in by_type.values())
        k = 0
        for type_, members in by_type.items():
            self._encodings.append(
                _Encoding(
                    type_,
                    np.array([i for i, _ in members], dtype=np.int64),
                    np.array([p.scale for _, p in members], dtype=float),
                    slice(k, k + len(members)),
                )
            )
            for j, (_, p) in enumerate(members, start=k):
                dst, word = targets.setdefault((p.unit_id, p.table), ([], []))
                if p.type in ("u16", "i16"):
                    dst.append(p.address)
                    word.append(j)
                else:  # 32 bits: the high half first in "big" word order
                    first, second = (n + j, j) if p.word_order == "big" else (j, n + j)
                    dst += [p.address, p.address + 1]
                    word += [first, second]
            k += len(members)
        self._n = n
        self._scatters = [
            _Scatter(
                images[unit].tables[table],
                np.array(dst, dtype=np.int64),
                np.array(word, dtype=np.int64),
            )
            for (unit, table), (dst, word) in targets.items()
        ]

    def write(self, sample: np.ndarray) -> None:
        for b in self._bits:
            b.table[b.addr] = sample[b.src] != 0.0
        if not self._n:
            return
        raw = np.empty(self._n, dtype=np.uint32)
        for e in self._encodings:
            raw[e.at] = encode_raw(e.type, sample[e.src], e.scale)
        words = np.concatenate([raw & 0xFFFF, raw >> 16]).astype(np.uint16)
        for s in self._scatters:
            s.table[s.dst] = words[s.word]


def build_images(points: Iterable[Point]) -> dict[int, DeviceImage]:
    """One image per unit id."""
    by_unit: dict[int, list[Point]] = {}
    for p in points:
        by_unit.setdefault(p.unit_id, []).append(p)
    return {u: DeviceImage(u, pts) for u, pts in sorted(by_unit.items())}
