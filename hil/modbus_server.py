"""Modbus server for the simulated plant: one process answering for many devices.

The plant owns one :class:`DeviceImage` per unit id and writes the live
values of its four tables into plain numpy arrays every step. The
:class:`PlantModbusServer` serves those images over Modbus/TCP and/or
Modbus/RTU (a serial port or pseudo-terminal), enforces the register map
(served ranges, read-only addresses, multi-register points), lets the plant
veto written values, and lets scenarios make a device stop answering or
answer every request with an exception.

Behaviour on the wire
---------------------
* Every address from 0 to the last address of a table's last point is
  served, so a read may bridge small gaps (unused addresses read 0). An
  address past the end answers exception 02 (ILLEGAL DATA ADDRESS).
* Writing an address that no ``rw`` point occupies answers 02; so does a
  write that covers only part of a multi-register point (a torn ``f32``).
* Before a write is accepted ``on_write(unit_id, table, address, registers)``
  is called once with the whole request (``registers`` are the raw 16-bit
  words, or 0/1 for coils; the range may span several points, see
  :meth:`DeviceImage.split`). It returns ``None`` to accept or an exception
  code (normally 3, ILLEGAL DATA VALUE) to reject the whole request: a
  request is applied entirely or not at all. Accepted values land in the
  image.
* Quantity out of the spec's range, an inconsistent byte count or a coil
  value other than 0x0000/0xFF00 answers 03; an unsupported function code
  answers 01. Supported: 1, 2, 3, 4, 5, 6, 15, 16, 23.
* A unit id with no image: over TCP the server acts as a gateway whose
  target does not answer and replies exception 0x0B (GATEWAY TARGET DEVICE
  FAILED TO RESPOND), so a client learns at once rather than after its
  timeout. Over RTU it stays silent, which is what an RS-485 line with no
  such station does; the client times out. Unit id 0 (RTU broadcast) is not
  supported and is treated like any unknown unit.
* ``set_fault(unit, "timeout")``: requests to that unit are dropped when
  they are handled, so no reply is ever sent for them, not even late.
  ``set_fault(unit, "exception", code)`` answers every request to the unit
  with ``code`` (04 SERVER DEVICE FAILURE, 06 BUSY, ...).
  ``requests_seen[unit]`` counts the requests that reached the unit,
  faulted or not, as a bus analyser would.
* Robustness: a TCP stream whose MBAP header is invalid (protocol id not 0,
  length outside 2..254) cannot be resynchronised, so that connection is
  closed; other connections are unaffected. On RTU a silence of more than
  max(3.5 characters, 20 ms) discards a partial frame, as a real station
  does, so garbage on the line costs at most the frame it corrupts.
  Requests are answered in order per connection. Accepted TCP sockets use
  keepalive, so a client that vanished without closing is reaped.

pymodbus 3.16 specifics this module relies on (pinned ``pymodbus==3.16.1``)
---------------------------------------------------------------------------
* The datastore is the new ``SimDevice``/``SimData`` API with an ``action``
  hook; the deprecated ``ModbusServerContext`` family is not used.
* pymodbus's own request handler reads the request from a per-connection
  ``last_pdu`` attribute after a task switch, answers an unknown unit with
  04 (``SimCore`` raises ``KeyError`` unless a device 0 exists), cannot drop
  a request silently, stalls a TCP connection forever on a bad protocol id,
  handles one frame per received chunk and wipes the buffer above 264
  bytes. The server therefore installs its own handler (a subclass of
  ``ServerRequestHandler`` returned from ``callback_new_connection``) that
  frames, checks and answers the requests and calls pymodbus only to run
  the request against the ``SimDevice`` (``pdu.datastore_update``).
* For coils/discrete inputs the action receives the bit address but the
  count in 16-bit registers, so exact bit-range checks are done in the
  handler before the datastore is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from time import monotonic
from typing import Any, Literal

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.transport import CommType

from thermogate.plc.points import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
    TABLES,
    Point,
)
from thermogate.plc.transport import quiet_pymodbus_logging

log = logging.getLogger(__name__)

#: ``on_write(unit_id, table, address, registers) -> None | exception code``
OnWrite = Callable[[int, str, int, list[int]], int | None]
Fault = Literal["timeout", "exception"]

#: Table each supported function code addresses.
_FC_TABLE: dict[int, str] = {
    1: "coil",
    2: "discrete",
    3: "holding",
    4: "input",
    5: "coil",
    6: "holding",
    15: "coil",
    16: "holding",
    23: "holding",
}
_READ_FCS = frozenset({1, 2, 3, 4})
#: Answered at once from the image over TCP (``PlantModbusServer.answer_now``).
_FAST_FCS = frozenset({1, 2, 3, 4, 5, 6, 15, 16})
#: fc 23 (read/write multiple) limits, spec §6.17.
_MAX_RW_READ = 125
_MAX_RW_WRITE = 121
_COIL_ON = 0xFF00
#: Largest MBAP length field: unit id + a 253-byte PDU.
_MAX_MBAP_LENGTH = 254
#: Receive buffer per connection; frames are consumed as soon as complete.
_RX_BUFFER = 8192
#: TCP bytes handed to the framer at once (well under _RX_BUFFER minus one frame)
_TCP_SLICE = 4096
#: MBAP header: transaction id, protocol id 0, length, unit id.
_MBAP = struct.Struct(">HHHB")
#: A read request's address and quantity (fc 1-4).
_ADDRESS_COUNT = struct.Struct(">HH")
#: Shortest RTU inter-frame silence honoured on a pty/USB line.
_RTU_MIN_GAP_S = 0.020


def _registers_written(fc: int, frame: bytes) -> tuple[int, list[int]] | None:
    """The address and registers of a well-formed fc 6 or fc 16 request (``frame``
    from the function code on), or None: anything else goes through pymodbus's
    decoder (which also formats every PDU it decodes for a debug line: ~12 us a write)."""
    if len(frame) < 5 or fc not in (6, 16):
        return None
    address, word = _ADDRESS_COUNT.unpack_from(frame, 1)  # fc 16: the word is the count
    if fc == 6:
        return (address, [word]) if len(frame) == 5 else None
    if len(frame) < 6:
        return None
    nbytes = frame[5]
    if not 1 <= word <= MAX_WRITE_REGISTERS or nbytes != 2 * word or len(frame) != 6 + nbytes:
        return None
    return address, list(struct.unpack_from(f">{word}H", frame, 6))


#: write request shapes remembered per image or plant (``DeviceImage.check_write``'s
#: verdicts, the served plant's layouts): a controller writes a few hundred distinct
#: ranges; a master probing every range is not remembered past this
WRITE_SHAPES_KEPT = 4096
_UNCHECKED = object()

#: what ``DeviceImage._rw_at`` gives a table without writable points
_NONE_AT: dict[int, Point] = {}


class DeviceImage:
    """The live values and the map of one device (one unit id).

    ``coils`` and ``discretes`` are ``bool`` arrays, ``input`` and
    ``holding`` ``uint16`` arrays, each sized to the table's last point end
    (empty when the device has no point in that table). The plant writes
    them directly (``image.holding[12] = 0x4120``) or through
    :meth:`set_registers`; writes must come from the event loop's thread so
    a request never sees half of a two-register value.
    """

    def __init__(self, unit_id: int, points: Iterable[Point]) -> None:
        if not 1 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} outside 1..255")
        self.unit_id = unit_id
        self.points: tuple[Point, ...] = tuple(points)
        self._by_name: dict[str, Point] = {}
        sizes = dict.fromkeys(TABLES, 0)
        for point in self.points:
            if point.unit_id != unit_id:
                raise ValueError(f"point {point.name!r} has unit id {point.unit_id}, not {unit_id}")
            if point.table not in sizes:
                raise ValueError(f"point {point.name!r}: unknown table {point.table!r}")
            if point.is_bit and point.type != "bool":
                raise ValueError(f"point {point.name!r}: a {point.table} point must be bool")
            if point.address < 0 or point.end > 0x10000:
                raise ValueError(f"point {point.name!r}: address {point.address} out of range")
            if point.name in self._by_name:
                raise ValueError(f"duplicate point name {point.name!r} on unit {unit_id}")
            self._by_name[point.name] = point
            sizes[point.table] = max(sizes[point.table], point.end)

        self.coils = np.zeros(sizes["coil"], dtype=bool)
        self.discretes = np.zeros(sizes["discrete"], dtype=bool)
        self.input = np.zeros(sizes["input"], dtype=np.uint16)
        self.holding = np.zeros(sizes["holding"], dtype=np.uint16)
        self.tables: dict[str, np.ndarray] = {
            "coil": self.coils,
            "discrete": self.discretes,
            "input": self.input,
            "holding": self.holding,
        }
        #: Index into ``points`` of the point occupying each address, -1 for a gap.
        self.owner: dict[str, np.ndarray] = {
            t: np.full(sizes[t], -1, dtype=np.int32) for t in TABLES
        }
        #: True where a ``rw`` point occupies the address.
        self.writable: dict[str, np.ndarray] = {t: np.zeros(sizes[t], dtype=bool) for t in TABLES}
        #: The ``rw`` points by the address they start at: a write of exactly one
        #: point (nearly every write a controller makes) is checked and split
        #: without the arrays (the plant answered a write in ~65 us, mostly these)
        self._rw_at: dict[str, dict[int, Point]] = {"coil": {}, "holding": {}}
        #: check_write's verdict on each range of several points asked so far
        self._write_checked: dict[tuple[str, int, int], int | None] = {}
        for index, point in enumerate(self.points):
            span = slice(point.address, point.end)
            taken = self.owner[point.table][span]
            if (taken >= 0).any():
                other = self.points[int(taken[taken >= 0][0])]
                raise ValueError(
                    f"unit {unit_id}: point {point.name!r} overlaps {other.name!r} "
                    f"in the {point.table} table"
                )
            taken[:] = index
            if point.writable and point.table in ("coil", "holding"):
                self.writable[point.table][span] = True
                self._rw_at[point.table][point.address] = point

    # -- map queries ---------------------------------------------------------

    def size(self, table: str) -> int:
        """Number of served addresses (0 .. size-1) in ``table``."""
        return len(self.tables[table])

    def point(self, name: str) -> Point:
        return self._by_name[name]

    def points_in(self, table: str, address: int, count: int) -> list[Point]:
        """Points of ``table`` that overlap ``[address, address + count)``."""
        owners = self.owner[table][max(address, 0) : address + count]
        return [self.points[i] for i in dict.fromkeys(int(i) for i in owners if i >= 0)]

    def split(self, table: str, address: int, values: list[int]) -> list[tuple[Point, list[int]]]:
        """Split a write request into ``(point, its registers)`` pairs (gaps dropped)."""
        one = self._rw_at.get(table, _NONE_AT).get(address)
        if one is not None and one.words == len(values):
            return [(one, values[:])]
        return [
            (p, values[p.address - address : p.end - address])
            for p in self.points_in(table, address, len(values))
        ]

    def check_read(self, table: str, address: int, count: int) -> int | None:
        """Exception code for reading ``count`` addresses, None when allowed."""
        if address < 0 or address + count > self.size(table):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def check_write(self, table: str, address: int, count: int) -> int | None:
        """Exception code for writing ``count`` addresses, None when allowed.

        Every address must be served and belong to a ``rw`` point, and the
        range must not cut a multi-register point.
        """
        if table not in ("coil", "holding"):
            return ExcCodes.ILLEGAL_ADDRESS
        one = self._rw_at[table].get(address)
        if one is not None and one.words == count:  # exactly one rw point: allowed
            return None
        key = (table, address, count)
        verdict = self._write_checked.get(key, _UNCHECKED)
        if verdict is _UNCHECKED:  # the map is fixed: so is a range's verdict
            verdict = self._check_range(table, address, count)
            if len(self._write_checked) < WRITE_SHAPES_KEPT:  # bounded, whatever is asked
                self._write_checked[key] = verdict
        return verdict  # type: ignore[return-value]

    def _check_range(self, table: str, address: int, count: int) -> int | None:
        end = address + count
        if address < 0 or end > self.size(table):
            return ExcCodes.ILLEGAL_ADDRESS
        if not self.writable[table][address:end].all():
            return ExcCodes.ILLEGAL_ADDRESS
        for point in self.points_in(table, address, count):
            if point.address < address or point.end > end:
                return ExcCodes.ILLEGAL_ADDRESS
        return None

    # -- values --------------------------------------------------------------

    def set_registers(self, point: Point | str, values: Iterable[int] | int | bool) -> None:
        """Store a point's raw value: its registers (or one bool for a bit point)."""
        p = self.point(point) if isinstance(point, str) else point
        raw = [values] if isinstance(values, int | bool) else list(values)
        if len(raw) != p.words:
            raise ValueError(f"point {p.name!r} takes {p.words} value(s), got {len(raw)}")
        self.tables[p.table][p.address : p.end] = raw

    def get_registers(self, point: Point | str) -> list[int] | list[bool]:
        """A point's raw value as served: its registers, or ``[bool]``."""
        p = self.point(point) if isinstance(point, str) else point
        return self.tables[p.table][p.address : p.end].tolist()

    # -- pymodbus datastore --------------------------------------------------

    def sim_device(self) -> SimDevice:
        """A pymodbus ``SimDevice`` backed by this image.

        The SimDevice only stores what pymodbus needs to build responses; the
        ``action`` hook copies the image into it on every read and the written
        values into the image on every accepted write.
        """
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete", "holding", "input"):  # pymodbus tuple order
            n = self.size(table)
            if table in BIT_TABLES:
                padded = max(16, -(-n // 16) * 16)
                blocks.append([SimData(0, values=[False] * padded, datatype=DataType.BITS)])
            elif n:
                blocks.append([SimData(0, count=n, values=0, datatype=DataType.REGISTERS)])
            else:
                blocks.append([SimData(0, count=1, datatype=DataType.INVALID)])
        return SimDevice(
            id=self.unit_id,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            use_bit_addressing=True,
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """SimDevice hook: move data between the image and pymodbus.

        Called after the handler validated the request. For bit tables
        ``address`` is the bit address, ``count`` and ``start_address`` are in
        16-bit registers and the registers hold 16 bits each, LSB first.
        """
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = self.tables[table]
        if set_values is not None:
            end = address + len(set_values)
            if end > len(values):  # the handler checked; never trust twice-removed code
                return ExcCodes.ILLEGAL_ADDRESS
            values[address:end] = set_values
            return None
        if table in BIT_TABLES:
            first = address // 16
            bits = np.zeros(count * 16, dtype=bool)
            part = values[first * 16 : (first + count) * 16]
            bits[: len(part)] = part
            packed = np.packbits(bits, bitorder="little").view("<u2")
            lo = first - start_address
            current_registers[lo : lo + count] = packed.tolist()
        else:
            lo = address - start_address
            current_registers[lo : lo + count] = values[address : address + count].tolist()
        return None


class PlantModbusServer:
    """Serve several :class:`DeviceImage` over Modbus/TCP and/or Modbus/RTU.

    ``start_tcp`` and ``start_rtu`` may each be called (once or more); every
    listener serves the same images and faults. ``stop`` closes them all.
    """

    def __init__(self, images: Mapping[int, DeviceImage], on_write: OnWrite | None = None) -> None:
        for unit_id, image in images.items():
            if unit_id != image.unit_id:
                raise ValueError(f"image for unit {image.unit_id} registered as unit {unit_id}")
        if not images:
            raise ValueError("a plant server needs at least one device image")
        quiet_pymodbus_logging()
        self.images: dict[int, DeviceImage] = dict(images)
        self.on_write = on_write
        self._faults: dict[int, tuple[Fault, int]] = {}
        #: requests received per unit (answered or not): what a bus analyser
        #: would count, so a test can tell "skipped" from "tried" without a clock
        self.requests_seen: Counter[int] = Counter()
        self._servers: list[ModbusTcpServer | ModbusSerialServer] = []
        self.tcp_address: tuple[str, int] | None = None

    # -- lifecycle -----------------------------------------------------------

    def _devices(self) -> list[SimDevice]:
        return [image.sim_device() for image in self.images.values()]

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 502) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks a free one); return the bound address."""
        server = _PlantTcpServer(self, self._devices(), address=(host, port))
        await server.serve_forever(background=True)  # raises RuntimeError if bind fails
        self._servers.append(server)
        sockname = server.transport.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.tcp_address = (sockname[0], sockname[1])
        log.info("plant Modbus/TCP server on %s:%d", *self.tcp_address)
        return self.tcp_address

    async def start_rtu(
        self,
        device_path: str,
        baudrate: int = 19200,
        parity: Literal["N", "E", "O"] = "E",
        stopbits: int = 1,
    ) -> None:
        """Serve Modbus/RTU on a serial port or pseudo-terminal (8E1 is the Modbus default)."""
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, not {stopbits!r}")
        server = _PlantSerialServer(
            self,
            self._devices(),
            port=device_path,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            bytesize=8,
        )
        await server.serve_forever(background=True)
        self._servers.append(server)
        log.info(
            "plant Modbus/RTU server on %s (%d %s %d)", device_path, baudrate, parity, stopbits
        )

    async def stop(self) -> None:
        """Close every listener and connection; safe to call twice."""
        servers, self._servers = self._servers, []
        for server in servers:
            await server.shutdown()
        # Let transports run their connection_lost callbacks before returning.
        await asyncio.sleep(0)

    async def __aenter__(self) -> PlantModbusServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- fault hooks ---------------------------------------------------------

    def set_fault(self, unit_id: int, fault: Fault | None, code: int = 4) -> None:
        """Make ``unit_id`` silent (``"timeout"``), answer ``code`` (``"exception"``) or heal."""
        if unit_id not in self.images:
            raise KeyError(f"no device image for unit {unit_id}")
        if fault is None:
            self._faults.pop(unit_id, None)
            return
        if fault not in ("timeout", "exception"):
            raise ValueError(f"fault must be None, 'timeout' or 'exception', not {fault!r}")
        if not 1 <= code <= 255:
            raise ValueError(f"exception code {code} outside 1..255")
        self._faults[unit_id] = (fault, code)

    def fault(self, unit_id: int) -> tuple[Fault, int] | None:
        return self._faults.get(unit_id)

    # -- request processing (called by the connection handlers) ----------------

    async def respond(
        self, unit_id: int, frame: bytes, pdu: ModbusPDU | None, context: Any, rtu: bool
    ) -> ModbusPDU | None:
        """The response to one request, or None to stay silent."""
        self.requests_seen[unit_id] += 1
        fc = frame[0] & 0x7F
        image = self.images.get(unit_id)
        if image is None:
            return None if rtu else ExceptionResponse(fc, ExcCodes.GATEWAY_NO_RESPONSE)
        if (fault := self._faults.get(unit_id)) is not None:
            kind, code = fault
            return None if kind == "timeout" else ExceptionResponse(fc, code)
        if frame[0] & 0x80 or fc not in _FC_TABLE:
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_FUNCTION)
        if pdu is None:  # a supported function whose PDU does not decode
            return ExceptionResponse(fc, ExcCodes.ILLEGAL_VALUE)
        refused = self._check(image, fc, frame, pdu)
        if refused:
            return ExceptionResponse(fc, refused)
        try:
            return await pdu.datastore_update(context, unit_id)
        except Exception:
            log.exception("unit %d: fc %d failed in the datastore", unit_id, fc)
            return ExceptionResponse(fc, ExcCodes.DEVICE_FAILURE)

    def answer_now(
        self, unit_id: int, frame: bytes, decode: Callable[[bytes], ModbusPDU | None]
    ) -> bytes | None:
        """The response PDU to a plain read (fc 1-4) or write (fc 5, 6, 15, 16) of a
        healthy unit, served straight from and into its image; None sends the
        request down the full path (``respond``).

        The fast path of a TCP scan: a 10,000-point site is ~500 reads and ~370
        writes a scan, and pymodbus's datastore, PDU encoder and a task per request
        cost ~0.1 ms each, which a PLC answering from its process image does not
        spend. The checks are the full path's (``on_write`` called once) and so are
        the answers, byte for byte; a fault, an unknown unit or a PDU that does not
        decode takes the full path. A read is parsed here (pymodbus's decoder
        would cost more than the answer); a write is decoded with ``decode``.
        """
        fc = frame[0]
        if fc not in _FAST_FCS or unit_id in self._faults:
            return None
        image = self.images.get(unit_id)
        if image is None:
            return None
        table = _FC_TABLE[fc]
        values = image.tables[table]
        if fc in _READ_FCS:
            if len(frame) != 5:
                return None
            address, count = _ADDRESS_COUNT.unpack_from(frame, 1)
            bits = table in BIT_TABLES
            if not 1 <= count <= (MAX_READ_BITS if bits else MAX_READ_REGISTERS):
                return None  # the decoder refuses it: the full path answers
            self.requests_seen[unit_id] += 1
            if code := image.check_read(table, address, count):
                return bytes((fc | 0x80, code))
            part = values[address : address + count]
            data = (np.packbits(part, bitorder="little") if bits else part.astype(">u2")).tobytes()
            return bytes((fc, len(data))) + data
        written = _registers_written(fc, frame)
        if written is not None:  # a well-formed fc 6 or 16, parsed here as a read is
            address, regs = written
            self.requests_seen[unit_id] += 1
            if code := self._check_write(image, table, address, regs):
                return bytes((fc | 0x80, code))
            values[address : address + len(regs)] = regs
            return frame[:5]
        pdu: Any = decode(frame)
        if pdu is None:
            return None
        self.requests_seen[unit_id] += 1
        if code := self._check(image, fc, frame, pdu):
            return bytes((fc | 0x80, code))
        if fc == 5:
            values[pdu.address] = bool(pdu.bits[0])
        elif fc == 6:
            values[pdu.address] = pdu.registers[0]
        elif fc == 15:
            values[pdu.address : pdu.address + pdu.count] = pdu.bits[: pdu.count]
        else:
            values[pdu.address : pdu.address + pdu.count] = pdu.registers
        return frame[:5]  # fc 5 and 6 echo the request; 15 and 16 its address and quantity

    def _check(self, image: DeviceImage, fc: int, frame: bytes, pdu: Any) -> int | None:
        """Validate a decoded request; call on_write for writes. Exception code or None."""
        table = _FC_TABLE[fc]
        if fc in _READ_FCS:
            limit = MAX_READ_BITS if table in BIT_TABLES else MAX_READ_REGISTERS
            if not 1 <= pdu.count <= limit:
                return ExcCodes.ILLEGAL_VALUE
            return image.check_read(table, pdu.address, pdu.count)
        if fc == 5:
            if len(frame) < 5 or int.from_bytes(frame[3:5], "big") not in (0, _COIL_ON):
                return ExcCodes.ILLEGAL_VALUE
            return self._check_write(image, table, pdu.address, [int(bool(pdu.bits[0]))])
        if fc == 6:
            return self._check_write(image, table, pdu.address, [int(pdu.registers[0])])
        if fc == 15:
            if (
                not 1 <= pdu.count <= MAX_WRITE_BITS
                or pdu.byte_count != (pdu.count + 7) // 8
                or pdu.data_byte_count != pdu.byte_count
                or len(pdu.bits) != pdu.count
            ):
                return ExcCodes.ILLEGAL_VALUE
            return self._check_write(image, table, pdu.address, [int(b) for b in pdu.bits])
        if fc == 16:
            if (
                not 1 <= pdu.count <= MAX_WRITE_REGISTERS
                or pdu.byte_count != pdu.count * 2
                or pdu._payload_byte_count != pdu.byte_count
                or len(pdu.registers) != pdu.count
            ):
                return ExcCodes.ILLEGAL_VALUE
            return self._check_write(image, table, pdu.address, list(pdu.registers))
        # fc 23: the write is performed before the read (spec §6.17)
        if (
            not 1 <= pdu.read_count <= _MAX_RW_READ
            or not 1 <= pdu.write_count <= _MAX_RW_WRITE
            or pdu.write_byte_count != pdu.write_count * 2
            or pdu._payload_byte_count != pdu.write_byte_count
            or len(pdu.write_registers) != pdu.write_count
        ):
            return ExcCodes.ILLEGAL_VALUE
        if code := image.check_read(table, pdu.read_address, pdu.read_count):
            return code
        return self._check_write(image, table, pdu.write_address, list(pdu.write_registers))

    def _check_write(
        self, image: DeviceImage, table: str, address: int, values: list[int]
    ) -> int | None:
        if code := image.check_write(table, address, len(values)):
            return code
        if self.on_write is None:
            return None
        try:
            verdict = self.on_write(image.unit_id, table, address, values)
        except Exception:
            log.exception("unit %d: on_write failed for %s %d", image.unit_id, table, address)
            return ExcCodes.DEVICE_FAILURE
        if verdict:
            return int(verdict)
        return None


class _PlantRequestHandler(ServerRequestHandler):
    """One client connection (TCP) or the serial line (RTU).

    Replaces pymodbus's per-connection request handling; see the module
    docstring for why.
    """

    def __init__(self, owner: _PlantTcpServer | _PlantSerialServer) -> None:
        super().__init__(owner, None, None, None)
        self.plant: PlantModbusServer = owner.plant
        self.rtu = owner.comm_params.comm_type == CommType.SERIAL
        self.max_buffer_size = _RX_BUFFER
        self._serve_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_rx = 0.0
        self._rtu_gap = _RTU_MIN_GAP_S
        if self.rtu and owner.comm_params.baudrate > 0:
            self._rtu_gap = max(3.5 * 11 / owner.comm_params.baudrate, _RTU_MIN_GAP_S)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.rtu:
            _enable_keepalive(transport)

    def datagram_received(self, data: bytes, addr: tuple | None) -> None:
        if self.rtu:
            now = monotonic()
            if self.recv_buffer and now - self._last_rx > self._rtu_gap:
                log.debug("RTU: dropping %d stale byte(s) after a silence", len(self.recv_buffer))
                self.recv_buffer = b""
            self._last_rx = now
            super().datagram_received(data, addr)
            return
        # pymodbus wipes a buffer that would pass max_buffer_size, silently, and the
        # stream goes on out of step (bench faults found it with an 9 KiB burst).
        # Over TCP every complete frame is consumed and a header that cannot frame
        # closes the connection, so feeding the bytes in slices keeps the buffer
        # under one slice plus one frame, and nothing is ever dropped unseen.
        for i in range(0, len(data), _TCP_SLICE):
            if self.transport is None or self.transport.is_closing():
                return
            super().datagram_received(data[i : i + _TCP_SLICE], addr)

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        """Consume every complete frame in ``data``; return the bytes used.

        Over TCP, plain reads and writes answered from the image (``answer_now``) while no
        request of this connection is still being served are answered here and
        sent together, one write for the chunk: answers stay in request order.
        """
        answers: list[bytes] = []
        try:
            return self._consume(data, addr, answers)
        finally:
            self._send_answers(answers)

    def _send_answers(self, answers: list[bytes]) -> None:
        if answers and self.transport is not None and not self.transport.is_closing():
            # pymodbus types its transport as BaseTransport; it is a TCP or serial (write) one
            self.transport.write(b"".join(answers))  # type: ignore[attr-defined]
        answers.clear()

    def _consume(self, data: bytes, addr: tuple | None, answers: list[bytes]) -> int:
        used = 0
        while used < len(data):
            chunk = data[used:]
            if not self.rtu and len(chunk) >= 7:
                protocol_id = int.from_bytes(chunk[2:4], "big")
                length = int.from_bytes(chunk[4:6], "big")
                if protocol_id or not 2 <= length <= _MAX_MBAP_LENGTH:
                    log.warning(
                        "Modbus/TCP: invalid MBAP header (protocol id %d, length %d); "
                        "closing the connection",
                        protocol_id,
                        length,
                    )
                    self.recv_buffer = b""
                    if self.transport:
                        self.transport.close()
                    return len(data)
            size, unit_id, tid, frame = self.framer.decode(chunk)
            if not size:
                break
            used += size
            if not frame:
                continue
            if not self.rtu and not self._tasks:
                try:
                    answer = self.plant.answer_now(unit_id, frame, self.framer.decoder.decode)
                except Exception:  # as the full path: the device fails, the server goes on
                    log.exception("unit %d: request handling failed", unit_id)
                    answer = bytes((frame[0] | 0x80, ExcCodes.DEVICE_FAILURE))
                if answer is not None:
                    answers.append(_MBAP.pack(tid, 0, len(answer) + 1, unit_id) + answer)
                    continue
            self._send_answers(answers)  # before anything a task answers
            self._schedule(unit_id, tid, frame, addr)
        return used

    def _schedule(self, unit_id: int, tid: int, frame: bytes, addr: tuple | None) -> None:
        pdu = None if frame[0] & 0x80 else self.framer.decoder.decode(frame)
        task = self.loop.create_task(self._serve(unit_id, tid, frame, pdu, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, unit_id: int, tid: int, frame: bytes, pdu: ModbusPDU | None, addr: tuple | None
    ) -> None:
        async with self._serve_lock:
            try:
                response = await self.plant.respond(
                    unit_id, frame, pdu, self.server.context, self.rtu
                )
            except Exception:
                log.exception("unit %d: request handling failed", unit_id)
                response = ExceptionResponse(frame[0] & 0x7F, ExcCodes.DEVICE_FAILURE)
            # a client that vanished (reset) with requests queued: asyncio would log
            # a warning per answer written into the dead socket
            if response is None or not self.transport or self.transport.is_closing():
                return
            response.dev_id = unit_id
            response.transaction_id = tid
            self.pdu_send(response, addr)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()


def _enable_keepalive(transport: asyncio.BaseTransport) -> None:
    """Reap connections of clients that vanished without a FIN (~90 s on Linux)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _PlantTcpServer(ModbusTcpServer):
    def __init__(self, plant: PlantModbusServer, devices: list[SimDevice], **kwargs: Any) -> None:
        self.plant = plant
        super().__init__(devices, **kwargs)

    def callback_new_connection(self) -> _PlantRequestHandler:
        return _PlantRequestHandler(self)


class _PlantSerialServer(ModbusSerialServer):
    def __init__(self, plant: PlantModbusServer, devices: list[SimDevice], **kwargs: Any) -> None:
        self.plant = plant
        super().__init__(devices, **kwargs)

    def callback_new_connection(self) -> _PlantRequestHandler:
        return _PlantRequestHandler(self)
