"""Modbus/TCP client framing (MBAP), with several requests in flight on one connection.

pymodbus's client (pinned in pyproject) sends one request at a time per
connection (a lock around each transaction) and costs ~100 us of Python per
request; a 10,000-point scan makes ~500 reads and ~200 writes. Modbus/TCP
itself allows several outstanding transactions per connection, matched by
their transaction id (Modbus Messaging on TCP/IP Implementation Guide V1.0b,
4.2: "the client can send several requests without waiting"). A device that
handles requests strictly one after another still serves a pipelined stream
in order; one that cannot is configured with ``in_flight = 1``.

:class:`MbapClient` is what :class:`~thermogate.plc.transport.ModbusLink`
drives for TCP: the calls it uses of pymodbus's client (``connect``,
``connected``, ``close``, ``read_*``/``write_*`` with ``device_id=``), each
answer a :class:`Answer` with the fields the link checks. It checks every
answer before the link sees it:

* the MBAP header: protocol id 0, a length that fits the PDU limits; anything
  else means the stream is out of step, so the connection is dropped and every
  pending request fails (a partial frame is never taken for a whole one);
* the transaction id: an answer to a request no longer waited for (it timed
  out) is dropped and counted (``late``), never given to another request;
* the unit id and function code (or its exception reply);
* reads: the byte count against the quantity asked for, and the PDU's length
  against the byte count; writes: the echo of address and quantity or value.

A failed check is a :class:`MalformedAnswer` for that request alone (the
stream itself is intact); a lost connection fails every pending request at
once with ``ConnectionException``, as the link expects of pymodbus.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from itertools import chain

from pymodbus.exceptions import ConnectionException, ModbusException

log = logging.getLogger(__name__)

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_READ = struct.Struct(">BHH")  # function, address, quantity (also fc 5, 6 and echoes)
_MAX_PDU = 253  # Modbus Application Protocol V1.1b3, 4.1
_READ_FCS = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


class MalformedAnswer(ModbusException):
    """An answer that does not fit its request (the connection stays up)."""


class Answer:
    """An answer as the link reads it (the fields of pymodbus's ``ModbusPDU`` it uses)."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(
        self,
        function_code: int,
        registers: list[int] | None = None,
        bits: list[bool] | None = None,
        exception_code: int = 0,
    ) -> None:
        self.function_code = function_code
        self.registers = registers or []
        self.bits = bits or []
        self.exception_code = exception_code

    def isError(self) -> bool:  # pymodbus's name: the link calls it
        return bool(self.function_code & 0x80)


class _Protocol(asyncio.Protocol):
    def __init__(self, client: MbapClient) -> None:
        self.client = client
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; the requests made in one turn of the event loop leave in one
        write. A send costs ~0.1 ms of system time on this kind of VM, and a pipelined
        scan makes several requests per turn (each answer batch frees as many slots)."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(frame)

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            tid, proto, length, unit = _MBAP.unpack_from(buf)
            if proto != 0 or not 2 <= length <= _MAX_PDU + 1:
                self.client._garbled(f"bad MBAP header (protocol {proto}, length {length})")
                return
            end = 6 + length
            if len(buf) < end:
                return  # the rest of the frame is still on its way
            pdu = bytes(buf[7:end])
            del buf[:end]
            self.client._answer(tid, unit, pdu)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self, f"connection lost ({exc})" if exc else "connection closed by peer")


class MbapClient:
    """One Modbus/TCP connection to ``host:port``, up to ``in_flight`` requests at once.

    ``trace_connect(bool)`` is called on connect and loss (as pymodbus's). The
    caller bounds how many requests it has outstanding (the link's semaphore)
    and how long it waits for each (a request cancelled while waiting is
    forgotten; its answer, if it comes, is counted in ``late``).
    """

    def __init__(
        self, host: str, port: int, *, trace_connect: Callable[[bool], None] | None = None
    ) -> None:
        self.host, self.port = host, int(port)
        self._trace = trace_connect
        self._proto: _Protocol | None = None
        self._pending: dict[int, tuple[asyncio.Future[Answer], int, bytes]] = {}
        # the last transaction id (1..65535, then 1 again); not itertools.cycle, which
        # keeps a copy of all 65,535 ids it has handed out: ~2.4 MB per connection
        self._tid = 0
        self.late = 0  # answers that came after their request was given up
        self.sent = 0

    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and p.transport is not None and not p.transport.is_closing()

    async def connect(self) -> bool:
        if self.connected:
            return True
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        self._proto = proto
        if self._trace is not None:
            self._trace(True)
        return True

    def close(self) -> None:
        p, self._proto = self._proto, None
        if p is not None and p.transport is not None:
            p.transport.close()
        self._fail_all("connection closed")

    def fail_pending(self, why: str) -> None:
        """Fail every request waiting for an answer (the link's connection handling)."""
        self._fail_all(why)

    # -- requests (pymodbus's client signatures, as the link calls them) -------
    # ``timeout``: seconds to wait for the answer, then ``TimeoutError`` (None: no limit).
    # The link passes its per-try timeout here: one timer handle per request, where an
    # ``asyncio.timeout`` block around the call cost ~12 % of a 10,000-point read.
    async def read_coils(
        self, address: int, *, count: int, device_id: int, timeout: float | None = None
    ) -> Answer:
        return await self._request(device_id, _READ.pack(1, address, count), timeout)

    async def read_discrete_inputs(
        self, address: int, *, count: int, device_id: int, timeout: float | None = None
    ) -> Answer:
        return await self._request(device_id, _READ.pack(2, address, count), timeout)

    async def read_holding_registers(
        self, address: int, *, count: int, device_id: int, timeout: float | None = None
    ) -> Answer:
        return await self._request(device_id, _READ.pack(3, address, count), timeout)

    async def read_input_registers(
        self, address: int, *, count: int, device_id: int, timeout: float | None = None
    ) -> Answer:
        return await self._request(device_id, _READ.pack(4, address, count), timeout)

    async def write_register(
        self, address: int, value: int, *, device_id: int, timeout: float | None = None
    ) -> Answer:
        return await self._request(device_id, _READ.pack(6, address, value), timeout)

    async def write_coil(
        self, address: int, value: bool, *, device_id: int, timeout: float | None = None
    ) -> Answer:
        pdu = _READ.pack(5, address, 0xFF00 if value else 0)
        return await self._request(device_id, pdu, timeout)

    async def write_registers(
        self, address: int, values: Sequence[int], *, device_id: int, timeout: float | None = None
    ) -> Answer:
        n = len(values)
        pdu = _READ.pack(16, address, n) + struct.pack(f">B{n}H", 2 * n, *values)
        return await self._request(device_id, pdu, timeout)

    async def write_coils(
        self, address: int, values: Sequence[bool], *, device_id: int, timeout: float | None = None
    ) -> Answer:
        n = len(values)
        packed = bytearray((n + 7) // 8)
        for i, v in enumerate(values):
            if v:
                packed[i >> 3] |= 1 << (i & 7)
        pdu = _READ.pack(15, address, n) + bytes((len(packed),)) + bytes(packed)
        return await self._request(device_id, pdu, timeout)

    async def _request(self, unit: int, pdu: bytes, timeout: float | None) -> Answer:
        p = self._proto
        if p is None or p.transport is None or p.transport.is_closing():
            raise ConnectionException(f"{self.host}:{self.port}: not connected")
        tid = self._next_tid()
        while tid in self._pending:  # 65,535 outstanding is far beyond any in_flight
            tid = self._next_tid()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        self._pending[tid] = (fut, unit, pdu)
        p.send(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        self.sent += 1
        timer = None if timeout is None else loop.call_at(loop.time() + timeout, _expire, fut)
        try:
            return await fut
        finally:
            self._pending.pop(tid, None)
            if timer is not None:
                timer.cancel()

    def _next_tid(self) -> int:
        self._tid = self._tid % 0xFFFF + 1
        return self._tid

    # -- answers -----------------------------------------------------------------
    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        entry = self._pending.pop(tid, None)
        if entry is None:
            self.late += 1
            return
        fut, want_unit, req = entry
        if fut.done():
            return
        try:
            fut.set_result(_check(req, want_unit, unit, pdu))
        except MalformedAnswer as exc:
            fut.set_exception(exc)

    def _garbled(self, why: str) -> None:
        log.warning("Modbus tcp %s:%d: %s; dropping the connection", self.host, self.port, why)
        p = self._proto
        if p is not None and p.transport is not None:
            p.transport.abort()  # connection_lost fails the pending requests

    def _lost(self, proto: _Protocol, why: str) -> None:
        if proto is not self._proto:
            return  # an old connection, already replaced or closed
        self._proto = None
        self._fail_all(why)
        if self._trace is not None:
            self._trace(False)

    def _fail_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionException(why))


def _expire(fut: asyncio.Future[Answer]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


#: each byte value's 8 bits, least significant first (the order bits travel in)
_BYTE_BITS: tuple[tuple[bool, ...], ...] = tuple(
    tuple(bool(b >> i & 1) for i in range(8)) for b in range(256)
)


def _check(req: bytes, want_unit: int, unit: int, pdu: bytes) -> Answer:
    """The answer ``pdu`` to request ``req``, checked field by field."""
    fc = req[0]
    if unit != want_unit:
        raise MalformedAnswer(f"answer from unit {unit}, asked unit {want_unit}")
    if not pdu:
        raise MalformedAnswer("empty answer")
    got = pdu[0]
    if got == fc | 0x80:
        if len(pdu) != 2:
            raise MalformedAnswer(f"exception answer of {len(pdu)} bytes")
        return Answer(got, exception_code=pdu[1])
    if got != fc:
        raise MalformedAnswer(f"answer for function {got}, asked {fc}")
    if fc in _READ_FCS:
        _, _, count = _READ.unpack_from(req)
        want = 2 * count if fc >= 3 else (count + 7) // 8
        if len(pdu) < 2 or pdu[1] != want or len(pdu) != 2 + want:
            have = pdu[1] if len(pdu) > 1 else None
            raise MalformedAnswer(
                f"{_READ_FCS[fc]} answer of {have} data bytes in {len(pdu)}, "
                f"{want} expected for {count}"
            )
        if fc >= 3:
            return Answer(fc, registers=list(struct.unpack_from(f">{count}H", pdu, 2)))
        # LSB first in each byte (V1.1b3 §6.1), unpacked a byte at a time: a PLC's
        # 1,000-bit read is 125 table lookups, not 1,000 shifts
        bits = list(chain.from_iterable(map(_BYTE_BITS.__getitem__, pdu[2:])))
        del bits[count:]
        return Answer(fc, bits=bits)
    if pdu[:5] != req[:5] or len(pdu) != 5:  # fc 5, 6, 15, 16 echo address and value/quantity
        raise MalformedAnswer(f"write answer {pdu[:8].hex()} does not echo {req[:5].hex()}")
    return Answer(fc)
