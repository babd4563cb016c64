"""The controller's edge to the plant: every point read, every command written, over Modbus.

No control logic lives here. :class:`ModbusIO` turns the point map into
planned block reads and turns the core's writes into as few legal requests as
possible; what comes back is plain arrays aligned with ``pmap.points`` (the
shape :class:`~thermogate.controller.signals.Observation` wants) and one
:class:`WriteOutcome` per requested write.

Reading
-------
* **One connection per device.** Each unit id has its own
  :class:`~thermogate.plc.transport.ModbusLink` (over TCP a dedicated
  connection, even when several unit ids share one address), and the units
  are polled concurrently. On its connection a unit has up to
  ``Endpoint.in_flight`` requests outstanding (TCP default ``TCP_IN_FLIGHT``,
  sent in address order and matched by transaction id, ``plc/mbap.py``), so a
  scan waits for about one round trip per ``in_flight`` requests rather than
  one per request. Over TCP a unit's reads go as one stream driven by its
  answers (``ModbusLink.read_stream``: no task, future or timer per request;
  ~1.7x less of the controller's CPU at 10,000 points) while every answer is
  usable; from the first that is not (a timeout, a garbled answer, a lost
  connection) what is left goes a request at a time with the link's retries
  and reconnects, the streamed try counted as the first attempt. On an RTU
  line the units necessarily share the line, one request at a time.
* **Planned once.** ``plan_reads(points, max_gap=max_gap)`` and one
  :class:`~thermogate.plc.codec.BlockDecoder` per request are built in the
  constructor. A scan copies each decoded block into one flat list with a
  slice assignment, then converts it to float64 and scatters it into point
  order with one numpy call each; the failure sentinels of integer registers
  (0x8000 i16, 0xFFFF u16, 0xFFFFFFFF u32, 0x80000000 i32, see
  ``hil/image.py``) become NaN with one vectorised comparison. Such a point
  is *fresh* (it was read) but NaN: the device itself reports a failed input.
  Its cost is in the README's Benchmarks section (``thermogate bench scan``).
* **Bounded time.** :meth:`ModbusIO.read_all` returns within
  ``scan_budget_s`` whatever the devices do: every unit runs under one
  deadline. A unit that does not answer (timeout, refused or lost
  connection, garbled answers) stops being polled for its remaining requests
  and is then *skipped* for a backoff period (``backoff_initial_s``, doubling
  per failure up to ``backoff_max_s``), so a dead device costs its timeout
  once per backoff period instead of every scan. While skipped, its points
  are stale (``fresh=False``, value NaN), never frozen at their last value,
  and ``errors[unit]`` says why and until when. The first good answer ends
  the backoff. A unit lost or back is logged once, in one line per endpoint
  after the pass (a gateway that stopped answering is one line naming its
  units, not one per unit). Reconnecting is part of the next attempt (the link's own
  connect backoff is kept negligible so this module's backoff is the one
  policy).
* **An exception is an answer.** A Modbus exception response to one request
  makes only that request's points stale (the error is recorded for the
  unit); the unit's other requests are still made and the unit is not backed
  off.

Writing
-------
:meth:`ModbusIO.write` checks every write before anything goes on the wire:
the point must exist and be writable, the value must be a finite number
inside the point's ``min``/``max`` and encodable
(:func:`~thermogate.plc.codec.encode`). A refused write is a
:class:`WriteOutcome` with ``ok=False`` and the reason; nothing is raised for
a bad value. Accepted writes are grouped per unit and table: adjacent holding
registers go in one FC16 (a lone one-register point uses FC6), adjacent coils
in one FC15 (a lone coil FC5). A request is all or nothing on the device, so
every write of a failed request reports that request's error. Units are
written concurrently, requests to one unit sent in address order with up to
``in_flight`` outstanding, over TCP as one stream as the reads are
(``ModbusLink.write_stream``). A unit in read
backoff is not written (the write fails at once, saying so). If the same
point appears more than once in one call, the last value is the one written
and the earlier entries report ``ok=False`` ("superseded").

:meth:`ModbusIO.read_points` reads a few named points now (the read-back of
a write) with the same planning, deadline and backoff rules.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np

from thermogate.plc.codec import BlockDecoder, encode
from thermogate.plc.errors import CodecError, ModbusDeviceError
from thermogate.plc.planning import plan_reads
from thermogate.plc.pointmap import PointMap
from thermogate.plc.points import Point
from thermogate.plc.site import Site
from thermogate.plc.transport import ModbusLink, StreamEnd, Tried

from .writeruns import WriteRun, write_runs

log = logging.getLogger(__name__)

#: Raw failure sentinel of each integer type, as the codec's struct unpack returns it.
SENTINEL_RAW: dict[str, int] = {
    "u16": 0xFFFF,
    "i16": -0x8000,
    "u32": 0xFFFF_FFFF,
    "i32": -0x8000_0000,
}

#: Requests in flight per TCP connection unless an endpoint says otherwise: one, as
#: every Modbus/TCP device takes; a device or gateway that serves a pipelined stream
#: (most do, in order) is configured with more (``in_flight`` in ``[modbus]``).
TCP_IN_FLIGHT = 1
#: The link's own connect backoff; kept negligible so the unit backoff here governs.
_LINK_BACKOFF_S = 0.01
#: Part of the scan budget kept for decoding and assembling the result.
_ASSEMBLY_RESERVE_S = 0.01
#: Read plans for :meth:`ModbusIO.read_points` kept per distinct set of names.
_POINT_PLAN_CACHE = 64
#: Errors quoted per unit in ``ReadResult.errors``; the rest are counted.
_ERRORS_QUOTED = 3


class _LinkTiming(TypedDict):
    """The timing every link of a ModbusIO shares, TCP or RTU."""

    timeout: float
    retries: int
    connect_timeout: float
    backoff_initial: float
    backoff_max: float


# --------------------------------------------------------------------------- #
# public records
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Endpoint:
    """Where a unit id is reached: a TCP address or a serial line (8 data bits, 1 stop bit)."""

    kind: Literal["tcp", "rtu"]
    host: str = "127.0.0.1"
    port: int = 502
    device: str = ""
    baudrate: int = 19200
    parity: str = "E"
    #: requests outstanding at once on the connection (TCP; a serial line has one)
    in_flight: int = 0  # 0: the kind's default, TCP_IN_FLIGHT or 1

    @property
    def requests_in_flight(self) -> int:
        if self.kind == "rtu":
            return 1
        return self.in_flight or TCP_IN_FLIGHT


@dataclass
class ReadResult:
    """One read of points.

    ``values`` (float64, engineering units; bits as 0.0/1.0) and ``fresh``
    (bool) are aligned with the point map. A point not read this time is NaN
    with ``fresh=False``; a point read as its failure sentinel is NaN with
    ``fresh=True``. ``unit_ok[u]`` is True when every request to unit ``u``
    was answered with data; ``errors[u]`` says what went wrong otherwise.
    """

    values: np.ndarray
    fresh: np.ndarray
    unit_ok: dict[int, bool]
    errors: dict[int, str]
    duration_s: float


@dataclass(frozen=True)
class WriteOutcome:
    """What became of one requested write."""

    point: str
    value: float
    ok: bool
    error: str | None = None


# --------------------------------------------------------------------------- #
# read plans
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, slots=True)
class _Block:
    """One planned read and where its decoded values go in the flat list."""

    table: str
    address: int
    count: int
    decoder: BlockDecoder
    lo: int
    hi: int

    @property
    def what(self) -> str:
        return f"{self.table} {self.address}+{self.count}"


class _Plan:
    """The reads for a set of points, and how their values land in point order.

    ``targets[i]`` is the output position of a point; values are decoded into
    a flat list in request order and scattered with ``perm``.
    """

    def __init__(self, points: Sequence[Point], targets: Mapping[str, int], max_gap: int) -> None:
        self.units: dict[int, list[_Block]] = {}
        perm: list[int] = []
        sentinel: list[float] = []
        for req in plan_reads(points, max_gap=max_gap):
            decoder = BlockDecoder.for_request(req)
            lo = len(perm)
            for p in decoder.points:
                perm.append(targets[p.name])
                raw = SENTINEL_RAW.get(p.type)
                # Same arithmetic as BlockDecoder (int * float scale), so == is exact.
                sentinel.append(math.nan if raw is None else raw * float(p.scale))
            block = _Block(req.table, req.address, req.count, decoder, lo, len(perm))
            self.units.setdefault(req.unit_id, []).append(block)
        #: each unit's reads as a stream takes them: (table, address, count)
        self.reads = {
            u: [(b.table, b.address, b.count) for b in blocks] for u, blocks in self.units.items()
        }
        self.n = len(perm)
        self.perm = np.asarray(perm, dtype=np.intp)
        self.sentinel = np.asarray(sentinel, dtype=np.float64)
        self.nan_list: list[float] = [math.nan] * self.n
        self.requests = sum(len(b) for b in self.units.values())


class _Scan:
    """The mutable state of one pass over a plan."""

    __slots__ = ("flat", "fresh")

    def __init__(self, plan: _Plan) -> None:
        self.flat: list[float | bool] = plan.nan_list.copy()
        self.fresh = np.zeros(plan.n, dtype=bool)


# --------------------------------------------------------------------------- #
# per unit: the link and its backoff
# --------------------------------------------------------------------------- #


class _Unit:
    """One unit id: its link, where it is reached, and whether it is being skipped."""

    def __init__(self, unit_id: int, link: ModbusLink, where: str) -> None:
        self.unit_id = unit_id
        self.link = link
        self.in_flight = link.in_flight
        self.where = where  # the endpoint (shared by units behind one gateway)
        self.delay = 0.0
        self.skip_until = 0.0
        self.last_error = ""

    def skipping(self, now: float) -> str | None:
        """Why the unit is not polled now, or None when it may be."""
        left = self.skip_until - now
        if left <= 0:
            return None
        return f"skipped for {left:.2f} s more (backoff) after: {self.last_error}"

    def failed(self, now: float, reason: str, initial: float, cap: float) -> bool:
        """Back off; True when the unit was answering until now (it is newly lost)."""
        was_up = self.delay == 0.0
        self.delay = min(max(self.delay * 2.0, initial), cap)
        self.skip_until = now + self.delay
        self.last_error = reason
        return was_up

    def answered(self) -> bool:
        """End the backoff; True when the unit was lost until now."""
        was_down = self.delay != 0.0
        self.delay = 0.0
        self.skip_until = 0.0
        return was_down

    @property
    def why(self) -> str:
        """The last error without the link's own prefix (the log line names the endpoint)."""
        return self.last_error.removeprefix(f"{self.link.describe}: ")


def _where(ep: Endpoint) -> str:
    return f"tcp {ep.host}:{ep.port}" if ep.kind == "tcp" else f"rtu {ep.device}"


def units_named(ids: Sequence[int]) -> str:
    """``unit 7`` or ``units 1, 10-12``."""
    return f"unit {ids[0]}" if len(ids) == 1 else f"units {id_ranges(ids)}"


def unwatched_plcs(site: Site) -> str | None:
    """The further PLCs that carry equipment but no heartbeat, as one finding (None:
    there are none). Said wherever a site is taken into use (``site --check``,
    ``probe``, ``run``), never refused: their programs may watch the main PLC's."""
    further = sorted(site.plc_units - {site.plc.unit_id})
    if not further:
        return None
    return (
        f"{len(further)} further PLC(s), {units_named(further)}, carry tanks or rows but no"
        f" heartbeat of their own (only unit {site.plc.unit_id}'s): program their watchdog on"
        " the main PLC's heartbeat, or they keep running when the controller stops"
    )


def id_ranges(ids: Iterable[int]) -> str:
    """``1, 10-12, 18``: unit ids as a person reads them."""
    out: list[str] = []
    for u in sorted(ids):
        if out and out[-1].split("-")[-1] == str(u - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{u}"
        else:
            out.append(str(u))
    return ", ".join(out)


# --------------------------------------------------------------------------- #
# the edge
# --------------------------------------------------------------------------- #


class ModbusIO:
    """Reads and writes a site's points over Modbus; see the module docstring.

    ``endpoints`` maps every unit id of ``pmap`` to its :class:`Endpoint`, or
    is one endpoint for all of them (a gateway or the simulated plant).
    ``timeout_s`` bounds each attempt of a request (and a connect),
    ``retries`` the further attempts after a timeout, ``max_gap`` the unused
    addresses a read may bridge inside one device's block (the simulated
    plant and most PLCs answer for them; 0 reads contiguous points only), and
    ``scan_budget_s`` the wall time of one :meth:`read_all`, :meth:`write` or
    :meth:`read_points`. ``backoff_initial_s``/``backoff_max_s`` bound how
    long a unit that stopped answering is skipped.
    """

    def __init__(
        self,
        pmap: PointMap,
        endpoints: Mapping[int, Endpoint] | Endpoint,
        *,
        timeout_s: float = 0.25,
        retries: int = 1,
        max_gap: int = 32,
        scan_budget_s: float = 0.5,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 10.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries!r}")
        if not scan_budget_s > 0:
            raise ValueError(f"scan_budget_s must be > 0, not {scan_budget_s!r}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.pmap = pmap
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.max_gap = int(max_gap)
        self.scan_budget_s = float(scan_budget_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.index: dict[str, int] = {p.name: i for i, p in enumerate(pmap.points)}

        unit_ids = pmap.unit_ids()
        if isinstance(endpoints, Endpoint):
            where = dict.fromkeys(unit_ids, endpoints)
        else:
            missing = [u for u in unit_ids if u not in endpoints]
            if missing:
                raise ValueError(f"no endpoint for unit id(s) {missing}")
            where = {u: endpoints[u] for u in unit_ids}
        self._units: dict[int, _Unit] = {
            u: _Unit(u, self._link(u, ep), _where(ep)) for u, ep in where.items()
        }
        #: a serial line's settings, by where (the banner says them)
        self._line = {
            _where(ep): f"{ep.baudrate} 8{ep.parity}1" for ep in where.values() if ep.kind == "rtu"
        }
        # units that went down / came back during the current pass, reported
        # after it as one line per endpoint (a gateway down is one line, not 36)
        self._lost_now: list[_Unit] = []
        self._back_now: list[_Unit] = []

        self._plan = _Plan(pmap.points, self.index, self.max_gap)
        self._point_plans: OrderedDict[tuple[str, ...], _Plan] = OrderedDict()
        self._closed = False

    def _link(self, unit_id: int, ep: Endpoint) -> ModbusLink:
        common: _LinkTiming = {
            "timeout": self.timeout_s,
            "retries": self.retries,
            "connect_timeout": self.timeout_s,
            "backoff_initial": _LINK_BACKOFF_S,
            "backoff_max": _LINK_BACKOFF_S,
        }
        if ep.kind == "tcp":
            return ModbusLink.tcp(
                ep.host,
                ep.port,
                unit_id,
                dedicated=True,
                in_flight=ep.requests_in_flight,
                **common,
            )
        if ep.kind == "rtu":
            if not ep.device:
                raise ValueError(f"unit {unit_id}: an RTU endpoint needs a device path")
            return ModbusLink.rtu(
                ep.device,
                unit_id,
                baudrate=ep.baudrate,
                parity=ep.parity,  # type: ignore[arg-type]  # checked by the link
                **common,
            )
        raise ValueError(f"unit {unit_id}: endpoint kind must be tcp or rtu, not {ep.kind!r}")

    # -- facts ---------------------------------------------------------------

    @property
    def requests_per_scan(self) -> int:
        """Read requests one :meth:`read_all` makes when every unit answers."""
        return self._plan.requests

    def backoff_s(self, unit_id: int) -> float:
        """Seconds unit ``unit_id`` will still be skipped (0 when it is polled)."""
        unit = self._units[unit_id]
        return max(0.0, unit.skip_until - asyncio.get_running_loop().time())

    def backoff_period_s(self, unit_id: int) -> float:
        """The unit's current backoff period: 0 while it answers, doubling per failed
        probe from ``backoff_initial_s`` up to ``backoff_max_s``."""
        return self._units[unit_id].delay

    def endpoints(self) -> dict[str, str]:
        """Every endpoint and the units behind it, as the banner says them:
        ``{"tcp 10.0.0.5:502 (in flight 4)": "36 units: 1, 10-12, ..."}``."""
        out: dict[str, str] = {}
        for where, us in _by_endpoint(self._units.values()).items():
            flight = us[0].in_flight
            label = f"{where} (in flight {flight})" if flight > 1 else where
            if where in self._line:
                label = f"{where} ({self._line[where]})"
            out[label] = _units_text(us)
        return out

    def unit_endpoints(self) -> dict[str, list[int]]:
        """Every endpoint and the unit ids behind it."""
        return {w: [u.unit_id for u in us] for w, us in _by_endpoint(self._units.values()).items()}

    def lost(self) -> dict[str, str]:
        """The units being skipped now, per endpoint: ``{"tcp 10.0.0.5:502": "3 units: 1-3"}``."""
        down = [u for u in self._units.values() if u.delay]
        return {w: _units_text(us) for w, us in _by_endpoint(down).items()}

    # -- lost and found ------------------------------------------------------

    def _fail(self, unit: _Unit, now: float, reason: str) -> None:
        if unit.failed(now, reason, self.backoff_initial_s, self.backoff_max_s):
            self._lost_now.append(unit)

    def _report(self) -> None:
        """One log line per endpoint for the units lost (or back) in the last pass."""
        lost, self._lost_now = self._lost_now, []
        back, self._back_now = self._back_now, []
        for where, units in _by_endpoint(lost).items():
            reasons = list(dict.fromkeys(u.why for u in units))
            why = "; ".join(reasons[:2]) + (
                f" (+{len(reasons) - 2} more)" if len(reasons) > 2 else ""
            )
            log.warning(
                "Modbus %s lost (%s): %s; its points are stale, retried in %g s, "
                "the wait doubling up to %g s while it stays lost",
                where,
                _units_text(units),
                why,
                min(u.delay for u in units),
                self.backoff_max_s,
            )
        for where, units in _by_endpoint(back).items():
            log.warning("Modbus %s answers again (%s)", where, _units_text(units))

    # -- reading -------------------------------------------------------------

    async def read_all(self) -> ReadResult:
        """Every point of the map, within ``scan_budget_s``; never raises for the plant."""
        started = time.perf_counter()
        plan = self._plan
        scan, unit_ok, errors = await self._run_plan(plan)
        values = np.full(len(self.index), np.nan)
        fresh = np.zeros(len(self.index), dtype=bool)
        values[plan.perm] = self._assemble(plan, scan)
        fresh[plan.perm] = scan.fresh
        return ReadResult(values, fresh, unit_ok, errors, time.perf_counter() - started)

    async def read_points(self, names: Sequence[str]) -> dict[str, float]:
        """The current values of ``names`` (NaN where not read); for read-back checks.

        Raises ``KeyError`` for a name that is not in the point map.
        """
        key = tuple(dict.fromkeys(names))
        if not key:
            return {}
        plan = self._point_plans.get(key)
        if plan is None:
            unknown = [n for n in key if n not in self.index]
            if unknown:
                raise KeyError(f"unknown point(s): {', '.join(map(repr, unknown))}")
            by_name = self.pmap.by_name
            plan = _Plan([by_name[n] for n in key], {n: i for i, n in enumerate(key)}, self.max_gap)
            self._point_plans[key] = plan
            if len(self._point_plans) > _POINT_PLAN_CACHE:
                self._point_plans.popitem(last=False)
        else:
            self._point_plans.move_to_end(key)
        scan, _, _ = await self._run_plan(plan)
        out = np.full(len(key), np.nan)
        out[plan.perm] = self._assemble(plan, scan)
        return dict(zip(key, out.tolist(), strict=True))

    @staticmethod
    def _assemble(plan: _Plan, scan: _Scan) -> np.ndarray:
        """The flat decoded values as float64 with sentinels (and unread points) NaN."""
        flat = np.array(scan.flat, dtype=np.float64)
        flat[flat == plan.sentinel] = np.nan
        return flat

    async def _run_plan(self, plan: _Plan) -> tuple[_Scan, dict[int, bool], dict[int, str]]:
        loop = asyncio.get_running_loop()
        reserve = min(_ASSEMBLY_RESERVE_S, self.scan_budget_s / 10.0)
        deadline = loop.time() + self.scan_budget_s - reserve
        scan = _Scan(plan)
        units = list(plan.units)
        results = await asyncio.gather(
            *(self._read_unit(u, plan.units[u], plan.reads[u], scan, deadline) for u in units)
        )
        self._report()
        unit_ok: dict[int, bool] = {}
        errors: dict[int, str] = {}
        for u, error in zip(units, results, strict=True):
            unit_ok[u] = error is None
            if error is not None:
                errors[u] = error
        return scan, unit_ok, errors

    @staticmethod
    async def _stream_unit(
        unit: _Unit,
        n: int,
        deadline: float,
        stream: Callable[[], Awaitable[StreamEnd | None]],
        one: Callable[[int, Tried | None], Awaitable[None]],
        refused: Callable[[int, ModbusDeviceError], None],
    ) -> _Pass:
        """One pass over a unit's ``n`` requests: as a stream (``stream()``, the link's
        ``read_stream`` or ``write_stream``) while every answer is usable, then what
        is left a request at a time (``one(k, tried)``) with the link's retries and
        reconnects (``_pipelined``); or all of it a request at a time where the link
        cannot stream (a serial line, not connected yet)."""
        try:
            end = await stream()
        except Exception as exc:  # the scan must go on; the caller says what broke
            return _Pass(sent={}, crashed=exc)
        if end is None:
            return await _pipelined(unit, n, deadline, lambda k: one(k, None), refused)
        if end.timed_out is not None:
            return _Pass(sent=end.timed_out, timed_out=True)
        rest = end.rest
        if not rest:
            return _Pass(sent={})
        done = await _pipelined(
            unit,
            len(rest),
            deadline,
            lambda i: one(*rest[i]),
            lambda i, exc: refused(rest[i][0], exc),
        )
        done.sent = {rest[i][0]: at for i, at in done.sent.items()}
        return done

    async def _read_unit(
        self,
        unit_id: int,
        blocks: list[_Block],
        reads: list[tuple[str, int, int]],
        scan: _Scan,
        deadline: float,
    ) -> str | None:
        """Read one unit's blocks in order into ``scan``; the error text, or None."""
        unit = self._units[unit_id]
        loop = asyncio.get_running_loop()
        skip = unit.skipping(loop.time())
        if skip is not None:
            return skip
        flat, fresh = scan.flat, scan.fresh
        problems: list[str] = []

        def store(k: int, data: list[int] | list[bool]) -> None:
            block = blocks[k]
            try:
                flat[block.lo : block.hi] = block.decoder.decode(data)
            except CodecError as exc:
                problems.append(f"read {block.what}: {exc}")
                return
            fresh[block.lo : block.hi] = True

        def refused(k: int, exc: ModbusDeviceError) -> None:
            if exc.exception_code is not None:  # an answer: only this block is lost
                problems.append(exc.reason)

        async def read(k: int, tried: Tried | None) -> None:
            block = blocks[k]
            store(k, await unit.link.read(block.table, block.address, block.count, tried=tried))

        done = await self._stream_unit(
            unit,
            len(blocks),
            deadline,
            lambda: unit.link.read_stream(reads, deadline, store, refused),
            read,
            refused,
        )
        if done.timed_out:
            now = loop.time()
            if not done.sent:
                return _summary([*problems, "scan budget spent before the last reads"])
            k, sent_at = min(done.sent.items(), key=lambda kv: kv[1])
            waited = now - sent_at
            reason = f"read {blocks[k].what}: no answer within the scan budget ({waited:.3f} s)"
            if waited >= self.timeout_s:  # it had its timeout: the unit is not answering
                self._fail(unit, now, reason)
            return _summary([*problems, reason])
        if done.crashed is not None:  # the scan must go on; say what broke
            err = done.crashed
            log.error("Modbus unit %d: unexpected failure while reading", unit_id, exc_info=err)
            return _summary([*problems, f"unexpected {type(err).__name__}: {err}"])
        if done.down is not None:
            self._fail(unit, loop.time(), done.down)
            return _summary([*problems, done.down])
        if unit.answered():
            self._back_now.append(unit)
        return _summary(problems) if problems else None

    # -- writing -------------------------------------------------------------

    async def write(self, writes: Sequence[tuple[str, float]]) -> list[WriteOutcome]:
        """Write ``(point name, engineering value)`` pairs; one outcome per pair, in order."""
        outcomes: list[WriteOutcome | None] = [None] * len(writes)
        staged: dict[str, tuple[int, Point, list[int]]] = {}
        for i, (name, value) in enumerate(writes):
            fvalue = _as_float(value)
            checked = self._check_write(name, value)
            if isinstance(checked, str):
                outcomes[i] = WriteOutcome(name, fvalue, False, checked)
                continue
            point, words = checked
            earlier = staged.get(name)
            if earlier is not None:
                j = earlier[0]
                outcomes[j] = WriteOutcome(
                    name, _as_float(writes[j][1]), False, "superseded by a later write of the point"
                )
            staged[name] = (i, point, words)

        groups = write_runs(staged.values())
        if groups:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.scan_budget_s
            units = list(groups)
            results = await asyncio.gather(
                *(self._write_unit(u, groups[u], deadline) for u in units)
            )
            # A device that refuses a run of several points (exception 02/03: one
            # of them out of its range, say) has applied none of them: each is
            # sent again alone, so one refused point does not take its neighbours
            # (a budget refused once took a tank's cooling valve with it).
            alone: dict[int, list[WriteRun]] = {}
            for u, (_, refused) in zip(units, results, strict=True):
                for k in sorted(refused):
                    run = groups[u][k]
                    if len(run.members) > 1:
                        alone.setdefault(u, []).extend(run.split())
            retried = await asyncio.gather(
                *(self._write_unit(u, alone[u], deadline) for u in alone)
            )
            self._report()
            # the runs as first sent, then those resent alone (their outcome wins)
            sent = [
                *zip(groups.values(), results, strict=True),
                *zip(alone.values(), retried, strict=True),
            ]
            for runs, (errors, _) in sent:
                for run, error in zip(runs, errors, strict=True):
                    for i, point in run.members:
                        outcomes[i] = WriteOutcome(
                            point.name, _as_float(writes[i][1]), error is None, error
                        )
        return [o for o in outcomes if o is not None]

    def _check_write(self, name: str, value: object) -> tuple[Point, list[int]] | str:
        """The point and its encoded registers, or why the write is refused."""
        point = self.pmap.by_name.get(name)
        if point is None:
            return f"unknown point {name!r}"
        if not point.writable or point.table not in ("holding", "coil"):
            return f"{name} is read-only"
        # a float (every write the core makes) is a number: no ABC check for it
        if type(value) is not float and (
            isinstance(value, str | bytes) or not isinstance(value, numbers.Real)
        ):
            return f"{name}: value {value!r} is not a number"
        x = float(value)
        if not math.isfinite(x):
            return f"{name}: value {x!r} is not finite"
        lo, hi = point.min, point.max
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            span = f"{'-inf' if lo is None else f'{lo:g}'}..{'inf' if hi is None else f'{hi:g}'}"
            return f"{name}: value {x:g} outside its range {span} {point.unit}".rstrip()
        try:
            words = encode(point, value if isinstance(value, bool) else x)
        except CodecError as exc:
            return str(exc)
        return point, words

    async def _write_unit(
        self, unit_id: int, runs: list[WriteRun], deadline: float
    ) -> tuple[list[str | None], set[int]]:
        """Send one unit's runs in order; one error text (or None) per run, and
        the runs the device refused with an exception (it applied none of them)."""
        unit = self._units[unit_id]
        loop = asyncio.get_running_loop()
        skip = unit.skipping(loop.time())
        refusals: set[int] = set()
        if skip is not None:
            return [f"not sent: unit {unit_id} {skip}"] * len(runs), refusals
        errors: list[str | None] = [f"not sent: unit {unit_id} stopped answering"] * len(runs)

        def sent(k: int) -> None:
            errors[k] = None

        async def send(k: int, tried: Tried | None) -> None:
            await runs[k].send(unit.link, tried)
            errors[k] = None

        def refused(k: int, exc: ModbusDeviceError) -> None:
            if exc.exception_code is None:  # no answer: the write may have landed
                errors[k] = f"{exc.reason} (the device may or may not have applied it)"
            else:
                errors[k] = exc.reason
                refusals.add(k)

        writes = [(run.table, run.address, run.words) for run in runs]
        done = await self._stream_unit(
            unit,
            len(runs),
            deadline,
            lambda: unit.link.write_stream(writes, deadline, sent, refused),
            send,
            refused,
        )
        if done.timed_out:
            for k in done.sent:
                errors[k] = (
                    f"write {runs[k].what}: no answer within the write budget "
                    f"({self.scan_budget_s:g} s); the device may or may not have applied it"
                )
            first = errors[min(done.sent)] if done.sent else "write budget spent"
            self._fail(unit, loop.time(), str(first))
            return errors, refusals
        if done.crashed is not None:
            err = done.crashed
            log.error("Modbus unit %d: unexpected failure while writing", unit_id, exc_info=err)
            for k in done.sent:
                errors[k] = f"unexpected {type(err).__name__}: {err}"
            return errors, refusals
        if done.down is not None:
            self._fail(unit, loop.time(), done.down)
            return errors, refusals
        if unit.answered():
            self._back_now.append(unit)
        return errors, refusals

    # -- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        """Close every connection; the object is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        for unit in self._units.values():
            unit.link.close()
        await asyncio.sleep(0)  # let the transports run their connection_lost callbacks

    async def __aenter__(self) -> ModbusIO:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _by_endpoint(units: Iterable[_Unit]) -> dict[str, list[_Unit]]:
    out: dict[str, list[_Unit]] = {}
    for u in units:
        out.setdefault(u.where, []).append(u)
    return out


def _units_text(units: Sequence[_Unit]) -> str:
    ids = id_ranges(u.unit_id for u in units)
    return f"unit {ids}" if len(units) == 1 else f"{len(units)} units: {ids}"


def _summary(problems: list[str]) -> str:
    more = len(problems) - _ERRORS_QUOTED
    text = "; ".join(problems[:_ERRORS_QUOTED])
    return f"{text} (+{more} more)" if more > 0 else text


@dataclass
class _Pass:
    """How one pipelined pass over a unit's requests ended."""

    sent: dict[int, float]  # still unanswered when it ended: request -> loop time sent
    down: str | None = None  # why the unit stopped answering, if it did
    timed_out: bool = False  # the deadline came first
    crashed: BaseException | None = None  # an unexpected error ended it


async def _pipelined(
    unit: _Unit,
    n: int,
    deadline: float,
    request: Callable[[int], Awaitable[None]],
    refused: Callable[[int, ModbusDeviceError], None],
) -> _Pass:
    """``request(k)`` for k in 0..n-1 in order, up to the unit's ``in_flight`` at once.

    ``refused(k, exc)`` hears of every request that failed; one without a usable
    answer (no ``exception_code``: a timeout, a dropped connection) marks the
    unit down, and a down unit is not asked again this pass. An exception reply
    costs only its own request."""
    loop = asyncio.get_running_loop()
    todo = iter(range(n))
    out = _Pass(sent={})

    async def worker() -> None:  # the workers share ``todo``: each takes the next request
        for k in todo:
            if out.down is not None:
                return
            out.sent[k] = loop.time()
            try:
                await request(k)
            except ModbusDeviceError as exc:
                del out.sent[k]
                refused(k, exc)
                if exc.exception_code is None and out.down is None:
                    out.down = exc.reason
                continue
            del out.sent[k]

    try:
        async with asyncio.timeout_at(deadline), asyncio.TaskGroup() as tg:
            for _ in range(min(unit.in_flight, n)):
                tg.create_task(worker())
    except TimeoutError:
        out.timed_out = True
    except Exception as exc:
        out.crashed = _first(exc)
    return out


def _first(exc: BaseException) -> BaseException:
    """The first exception a task group gathered (the exception itself otherwise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
