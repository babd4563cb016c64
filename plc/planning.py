"""Read planning: the fewest legal Modbus reads that fetch a set of points.

A scan cycle's cost is dominated by round trips, not bytes: one read of 125
registers takes about as long as one read of 1. So points are grouped per
(unit_id, table), sorted by address and packed greedily into requests of at
most 125 registers (input/holding) or 2000 bits (coil/discrete), the limits
of Modbus application protocol V1.1b3 §6. A multi-register point is never
split across two requests: half of an f32 is not a value.

Greedy packing (extend each request as far as it can go) is minimal: by
induction, after k requests greedy has covered at least as many points
(in address order) as any other legal plan's first k requests, so no plan
uses fewer requests. The tests check this against a brute-force optimum.

Gap bridging (``max_gap``)
--------------------------
Two points separated by unused addresses may share one request by reading
the unused addresses too. That is only safe when the device answers for
those addresses: many PLCs and gateways answer a read that touches any
unmapped address with exception 02 (Illegal Data Address), which loses every
point of that request for the cycle. So the default is ``max_gap=0``:
merge only exactly contiguous points, always safe, on any device.

A caller that knows its device answers for unused addresses opts in with
``max_gap=N`` (addresses). Even then a gap is bridged only when it lies
inside one device's defined block, i.e. between the first and last address
of points that share the same ``unit_id``, ``table`` and ``device`` field:
thermogate's plant server defines every address in that span, but not the
space between two devices. This is deliberately the narrower reading: it is
safe whether a server defines one block per unit or one per device.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from thermogate.plc.errors import CodecError
from thermogate.plc.points import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    TABLES,
    TYPE_WORDS,
    Point,
    Table,
)

#: Unused addresses a request may bridge between two points; 0 = contiguous only.
DEFAULT_MAX_GAP: Final = 0

#: Modbus addresses are 16 bits: 0..65535 on the wire.
ADDRESS_SPACE: Final = 0x1_0000

_TABLE_ORDER: Final[dict[str, int]] = {t: i for i, t in enumerate(TABLES)}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` registers/bits from ``address`` on ``unit_id``/``table``.

    ``points`` are the points it carries, in address order; any address in
    ``address .. address+count-1`` not covered by a point is a bridged gap.
    """

    unit_id: int
    table: Table
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.address + self.count

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def unused(self) -> int:
        """Addresses read only to bridge gaps."""
        return self.count - sum(p.words for p in self.points)


def _where(p: Point) -> str:
    last = p.end - 1
    span = f"{p.address}" if last == p.address else f"{p.address}..{last}"
    return f"{p.name!r} (unit {p.unit_id} {p.table} {span})"


def _validate(p: Point, limit: int) -> None:
    if p.table not in _TABLE_ORDER:
        raise CodecError(f"point {p.name!r}: unknown table {p.table!r}")
    if p.type not in TYPE_WORDS:
        raise CodecError(f"point {p.name!r}: unknown type {p.type!r}")
    if p.table in BIT_TABLES and p.type != "bool":
        raise CodecError(f"point {p.name!r}: a {p.table} point must be bool, not {p.type}")
    if isinstance(p.address, bool) or not isinstance(p.address, int):
        raise CodecError(f"point {p.name!r}: address {p.address!r} is not an integer")
    if p.address < 0 or p.end > ADDRESS_SPACE:
        raise CodecError(f"point {_where(p)}: outside the address space 0..65535")
    if p.words > limit:
        raise CodecError(f"point {_where(p)}: {p.words} registers exceed a {limit}-register read")


def _check_limits(max_registers: int, max_bits: int, max_gap: int) -> None:
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers {max_registers} must be 1..{MAX_READ_REGISTERS}")
    if not 1 <= max_bits <= MAX_READ_BITS:
        raise ValueError(f"max_bits {max_bits} must be 1..{MAX_READ_BITS}")
    if max_gap < 0:
        raise ValueError(f"max_gap {max_gap} must be >= 0")


def _plan_group(
    unit_id: int, table: Table, pts: list[Point], limit: int, max_gap: int
) -> list[ReadRequest]:
    pts.sort(key=lambda p: p.address)
    for a, b in pairwise(pts):
        # Sorted by address: if a overlaps any later point, it overlaps its
        # next neighbour too, so checking neighbours finds every overlap.
        if b.address < a.end:
            raise CodecError(f"points {_where(a)} and {_where(b)} overlap")

    spans: dict[str, tuple[int, int]] = {}
    if max_gap:
        for p in pts:
            lo, hi = spans.get(p.device, (p.address, p.end))
            spans[p.device] = (min(lo, p.address), max(hi, p.end))

    def bridgeable(gap_start: int, gap_end: int) -> bool:
        if gap_end - gap_start > max_gap:
            return False
        return any(lo <= gap_start and gap_end <= hi for lo, hi in spans.values())

    requests: list[ReadRequest] = []
    start = pts[0].address
    members = [pts[0]]
    end = pts[0].end
    for p in pts[1:]:
        joins = p.end - start <= limit and (p.address == end or bridgeable(end, p.address))
        if joins:
            members.append(p)
        else:
            requests.append(ReadRequest(unit_id, table, start, end - start, tuple(members)))
            start, members = p.address, [p]
        end = p.end
    requests.append(ReadRequest(unit_id, table, start, end - start, tuple(members)))
    return requests


def plan_reads(
    points: Iterable[Point],
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = DEFAULT_MAX_GAP,
) -> list[ReadRequest]:
    """The fewest reads that fetch every point exactly once.

    ``max_registers``/``max_bits`` may be lowered for devices with smaller
    buffers (never raised past the protocol's 125/2000). ``max_gap`` is the
    most unused addresses one request may bridge; see the module docstring
    for why it defaults to 0. Requests come back ordered by unit_id, table
    (coil, discrete, input, holding) and address.

    Raises :class:`CodecError` naming both points when two points on the
    same unit and table overlap, or naming the point when it is malformed;
    ``ValueError`` for limits outside the protocol's.
    """
    _check_limits(max_registers, max_bits, max_gap)
    groups: dict[tuple[int, Table], list[Point]] = defaultdict(list)
    for p in points:
        _validate(p, max_bits if p.table in BIT_TABLES else max_registers)
        groups[(p.unit_id, p.table)].append(p)
    plan: list[ReadRequest] = []
    for unit_id, table in sorted(groups, key=lambda k: (k[0], _TABLE_ORDER[k[1]])):
        limit = max_bits if table in BIT_TABLES else max_registers
        plan.extend(_plan_group(unit_id, table, groups[(unit_id, table)], limit, max_gap))
    return plan


def coverage_check(
    points: Iterable[Point],
    plan: Sequence[ReadRequest],
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> None:
    """Raise :class:`CodecError` unless ``plan`` reads every point exactly once, legally.

    Checks: each point of ``points`` is carried by exactly one request and
    none else; it lies wholly inside its request's address range on the same
    unit and table; no request exceeds the read limits. Cheap enough to run
    once at start-up on the plan the scan will use.
    """
    wanted = Counter(points)
    carried: Counter[Point] = Counter()
    problems: list[str] = []
    for r in plan:
        limit = max_bits if r.is_bit else max_registers
        if not 1 <= r.count <= limit:
            problems.append(
                f"read unit {r.unit_id} {r.table} {r.address} count {r.count} exceeds 1..{limit}"
            )
        if r.address < 0 or r.end > ADDRESS_SPACE:
            problems.append(f"read unit {r.unit_id} {r.table} {r.address} leaves 0..65535")
        for p in r.points:
            carried[p] += 1
            if (p.unit_id, p.table) != (r.unit_id, r.table) or not (
                r.address <= p.address and p.end <= r.end
            ):
                problems.append(
                    f"point {_where(p)} not inside read unit {r.unit_id} {r.table} "
                    f"{r.address}..{r.end - 1}"
                )
    for p in wanted.keys() | carried.keys():
        if carried[p] != wanted[p]:
            problems.append(f"point {_where(p)} read {carried[p]} times, wanted {wanted[p]}")
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CodecError("read plan invalid: " + "; ".join(problems[:5]) + more)
