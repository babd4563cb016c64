"""A fault-injecting Modbus/TCP proxy: real sockets between a master and the plant.

Requests pass through untouched. Each answer is read whole from the plant
(MBAP framed) and, while ``faults[unit]`` names a fault for the unit that
answers, passed on changed:

* ``wrong_tid``: another transaction id (the master's request goes unanswered);
* ``wrong_unit``: another unit id;
* ``short_count``: a read answer two bytes short, byte count and MBAP length
  made consistent with the shortened data (a write's echo loses two bytes);
* ``exception``: exception 04 (SERVER DEVICE FAILURE) instead of the answer;
* ``delay``: the answer held ``delay_s`` (2 s), and those behind it on the
  connection with it, as a TCP stream keeps its order;
* ``reset``: half the answer, then the master's connection reset (RST).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter

KINDS = ("wrong_tid", "wrong_unit", "short_count", "exception", "delay", "reset")
_MBAP = struct.Struct(">HHHB")
_READ_FCS = frozenset({1, 2, 3, 4, 23})


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def corrupt(kind: str, tid: int, unit: int, pdu: bytes) -> bytes:
    """The frame a faulty device or gateway sends instead of ``pdu``'s answer."""
    if kind == "wrong_tid":
        tid ^= 0x5A5A
    elif kind == "wrong_unit":
        unit ^= 0x40
    elif kind == "short_count":
        if pdu[0] in _READ_FCS and len(pdu) >= 4:
            n = max(pdu[1] - 2, 0)
            pdu = pdu[:1] + bytes([n]) + pdu[2 : 2 + n]
        elif len(pdu) > 2:
            pdu = pdu[:-2]
    elif kind == "exception":
        pdu = bytes([(pdu[0] & 0x7F) | 0x80, 0x04])
    return _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


class FaultProxy:
    """Listen on a free port and forward to ``upstream``; see the module docstring."""

    def __init__(self, upstream: tuple[str, int], delay_s: float = 2.0) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        #: unit id -> fault kind applied to its answers now
        self.faults: dict[int, str] = {}
        #: answers changed, by kind
        self.injected: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # end the pumps, not the connection handlers: asyncio's stream callback
        # asks a handler task for its exception and logs a cancelled one
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        ups = asyncio.create_task(self._requests(reader, up_writer))
        downs = asyncio.create_task(self._answers(up_reader, writer))
        self._tasks |= {ups, downs}
        try:
            await asyncio.wait({ups, downs}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (ups, downs):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self._tasks -= {ups, downs}
            up_writer.close()
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            up.write(data)
            await up.drain()

    async def _answers(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await up.readexactly(7)
            tid, _protocol, length, unit = _MBAP.unpack(head)
            pdu = await up.readexactly(length - 1)
            kind = self.faults.get(unit)
            if kind is None:
                writer.write(head + pdu)
            else:
                self.injected[kind] += 1
                frame = corrupt(kind, tid, unit, pdu)
                if kind == "delay":
                    await asyncio.sleep(self.delay_s)
                elif kind == "reset":
                    writer.write(frame[: len(frame) // 2])
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(frame)
            await writer.drain()
