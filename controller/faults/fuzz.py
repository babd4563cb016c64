"""Fault class 1: the plant's Modbus/TCP server fed malformed frames and abandoned connections.

A seeded generator opens connections to a :class:`PlantModbusServer` and
sends each a few frames that are well framed (MBAP length true) but whose PDU
is wrong — random function codes and bytes, quantities of 0 or past the
limit, addresses past the end, writes whose byte count lies, PDUs cut short —
mixed with a few correct requests, split into random chunks. Each connection
then ends in one of these ways:

* ``sentinel``: a correct read of known registers (the device image's input
  table, which no Modbus write can change); its answer must come back, by
  transaction id, with exactly the image's values — the stream stayed in step
  through the garbage before it;
* ``truncated`` / ``lying_length``: a frame cut short, or whose length field
  promises more than comes, then the connection is closed;
* ``bad_protocol`` / ``oversized``: a header no stream can be resynchronised
  after (protocol id not 0, length past 254, or kilobytes of noise): the
  server must close that connection;
* ``rst`` / ``abandon``: the client vanishes (reset or plain close) without
  reading.

Some connections are abandoned before sending anything. The server runs in
this process with its clock stopped, so the known registers cannot move;
a crash is an exception nobody awaited on the loop, or an ERROR its handlers
had to log. Afterwards every unit's input and discrete tables are read
whole over a fresh connection and compared with the images, and a written
register reads back what was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time

import numpy as np

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.points import MAX_READ_REGISTERS
from thermogate.plc.site import Site, demo_site
from thermogate.plc.transport import ModbusLink

from .common import ClassResult, errors_logged, loop_exceptions, quiet

_MBAP = struct.Struct(">HHHB")
_SENTINEL_TID = 0xFFFF
#: connections in flight at once
_CONCURRENCY = 8
#: how long a correct answer (or the server closing a connection) may take
_ANSWER_TIMEOUT_S = 5.0
_BODIES = ("random_pdu", "bad_quantity", "bad_address", "bad_write", "short_pdu", "valid", "write")
_ENDINGS = (
    ("sentinel", 50),
    ("truncated", 10),
    ("lying_length", 8),
    ("bad_protocol", 8),
    ("oversized", 8),
    ("rst", 8),
    ("abandon", 8),
)


def _frame(
    tid: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None
) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return _MBAP.pack(tid, protocol, size, unit) + pdu


class FrameGenerator:
    """Seeded malformed (and a few correct) Modbus/TCP request frames for one site."""

    def __init__(self, rng: random.Random, units: dict[int, dict[str, int]]) -> None:
        self.rng = rng
        self.units = units  # unit id -> table sizes
        self.unit_ids = sorted(units)

    def unit(self) -> int:
        r = self.rng
        return r.choice(self.unit_ids) if r.random() < 0.85 else r.choice((0, 2, 99, 248, 255))

    def tid(self) -> int:
        return self.rng.randrange(0, _SENTINEL_TID)

    def body(self) -> tuple[str, bytes]:
        """One well-framed request: a kind and its bytes."""
        r = self.rng
        unit = self.unit()
        kind = r.choice(
            (
                "random_pdu",
                "bad_quantity",
                "bad_address",
                "bad_write",
                "short_pdu",
                "valid",
                "write",
            )
        )
        if kind == "random_pdu":
            pdu = bytes([r.randrange(256)]) + r.randbytes(r.randrange(0, 252))
        elif kind == "bad_quantity":
            fc = r.choice((1, 2, 3, 4))
            count = r.choice((0, 126, 2001, 65535, r.randrange(126, 65536)))
            pdu = struct.pack(">BHH", fc, r.randrange(0, 64), count)
        elif kind == "bad_address":
            fc = r.choice((1, 2, 3, 4))
            pdu = struct.pack(">BHH", fc, r.choice((65535, 65000, r.randrange(60, 65536))), 4)
        elif kind == "bad_write":
            fc = r.choice((5, 15, 16, 23))
            if fc == 5:
                pdu = struct.pack(">BHH", 5, r.randrange(0, 8), r.choice((1, 0x00FF, 0xFFFF)))
            elif fc == 15:
                count = r.randrange(0, 2000)
                pdu = struct.pack(">BHHB", 15, r.randrange(0, 8), count, r.randrange(256))
                pdu += r.randbytes(r.randrange(0, 40))
            elif fc == 16:
                count = r.randrange(0, 130)
                pdu = struct.pack(">BHHB", 16, r.randrange(0, 16), count, r.randrange(256))
                pdu += r.randbytes(r.randrange(0, 60))
            else:
                pdu = struct.pack(">BHHHHB", 23, 0, r.randrange(0, 200), 0, r.randrange(0, 200), 7)
                pdu += r.randbytes(r.randrange(0, 40))
        elif kind == "short_pdu":
            fc = r.choice((1, 2, 3, 4, 5, 6, 15, 16, 23))
            full = struct.pack(">BHH", fc, 0, 1) + b"\x02\x00\x01"
            pdu = full[: r.randrange(1, 5)]
        elif kind == "valid":
            sizes = self.units.get(unit, {})
            table, fc = r.choice((("holding", 3), ("input", 4), ("coil", 1), ("discrete", 2)))
            n = sizes.get(table, 0)
            if n:
                address = r.randrange(n)
                pdu = struct.pack(">BHH", fc, address, r.randrange(1, min(n - address, 125) + 1))
            else:
                pdu = struct.pack(">BHH", fc, 0, 1)
        else:  # a write of random values, mostly refused (read-only, out of range, torn)
            address, count = r.randrange(0, 32), r.randrange(1, 4)
            pdu = struct.pack(">BHHB", 16, address, count, 2 * count) + r.randbytes(2 * count)
        return kind, _frame(self.tid(), unit, pdu)

    def ending(self) -> str:
        kinds, weights = zip(*_ENDINGS, strict=True)
        return self.rng.choices(kinds, weights)[0]

    def sentinel(self) -> tuple[int, int, int, bytes]:
        """A correct read of a unit's input registers: unit, address, count, frame."""
        r = self.rng
        unit = r.choice([u for u in self.unit_ids if self.units[u].get("input", 0)])
        n = self.units[unit]["input"]
        address = r.randrange(n)
        count = r.randrange(1, min(n - address, MAX_READ_REGISTERS) + 1)
        return (
            unit,
            address,
            count,
            _frame(_SENTINEL_TID, unit, struct.pack(">BHH", 4, address, count)),
        )

    def chunks(self, data: bytes) -> list[bytes]:
        """``data`` split at random places (frames arrive in pieces, or several at once)."""
        r = self.rng
        if r.random() < 0.5 or len(data) < 2:
            return [data]
        cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randrange(1, 6))))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    head = await reader.readexactly(7)
    tid, _protocol, length, unit = _MBAP.unpack(head)
    return tid, unit, await reader.readexactly(length - 1)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Tally:
    def __init__(self) -> None:
        self.frames = 0
        self.connections = 0
        self.abandoned = 0
        self.sentinels_ok = 0
        self.closed_on_bad_header = 0
        self.wrong: list[str] = []


async def _session(
    gen: FrameGenerator, sp: ServedPlant, port: int, tally: _Tally, frames: int
) -> None:
    """One connection: ``frames`` fuzz frames, then its ending (module docstring)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tally.connections += 1
    try:
        if frames == 0:  # abandoned before a byte
            tally.abandoned += 1
            _rst(writer) if gen.rng.random() < 0.5 else writer.close()
            return
        data = b"".join(gen.body()[1] for _ in range(frames))
        tally.frames += frames
        ending = gen.ending()
        if ending == "sentinel":
            unit, address, count, tail = gen.sentinel()
        else:
            tally.frames += 1
            tail = _ending_bytes(gen, ending)
        for chunk in gen.chunks(data + tail):
            if writer.transport.is_closing():  # the server gave up on this stream
                break
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        if ending == "sentinel":
            await _expect_sentinel(reader, sp, unit, address, count, tally)
        elif ending in ("bad_protocol", "oversized"):
            await _expect_close(reader, tally, ending)
        elif ending == "rst":
            tally.abandoned += 1
            _rst(writer)
        else:
            tally.abandoned += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


def _ending_bytes(gen: FrameGenerator, ending: str) -> bytes:
    r = gen.rng
    if ending == "truncated":
        _, whole = gen.body()
        return whole[: r.randrange(1, len(whole))]
    if ending == "lying_length":
        pdu = struct.pack(">BHH", 3, 0, 1)
        return _frame(gen.tid(), gen.unit(), pdu, length=r.randrange(len(pdu) + 2, 255))
    if ending == "bad_protocol":
        return _frame(
            gen.tid(), gen.unit(), struct.pack(">BHH", 3, 0, 1), protocol=r.randrange(1, 65536)
        )
    if ending == "oversized":
        if r.random() < 0.5:
            pdu = r.randbytes(r.randrange(254, 600))
            return _frame(gen.tid(), gen.unit(), pdu, length=r.randrange(255, 65536))
        noise = bytearray(r.randbytes(r.randrange(9000, 20000)))
        noise[2] |= 0x80  # a protocol id that cannot be 0: the server must give up on it
        return bytes(noise)
    return gen.body()[1]  # rst / abandon: a last ordinary frame, never read


async def _expect_sentinel(
    reader: asyncio.StreamReader, sp: ServedPlant, unit: int, address: int, count: int, t: _Tally
) -> None:
    try:
        async with asyncio.timeout(_ANSWER_TIMEOUT_S):
            while True:
                tid, got_unit, pdu = await _read_frame(reader)
                if tid == _SENTINEL_TID:
                    break
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        t.wrong.append(f"unit {unit}: the correct read after fuzz got no answer ({exc!r})")
        return
    want = sp.images[unit].input[address : address + count]
    got = np.frombuffer(pdu[2:], dtype=">u2") if pdu[:2] == bytes([4, 2 * count]) else None
    if got_unit != unit or got is None or len(got) != count or not (got == want).all():
        t.wrong.append(f"unit {unit}: input {address}+{count} answered {pdu[:12].hex()}...")
        return
    t.sentinels_ok += 1


async def _expect_close(reader: asyncio.StreamReader, t: _Tally, ending: str) -> None:
    try:
        async with asyncio.timeout(_ANSWER_TIMEOUT_S):
            while await reader.read(4096):
                pass
    except TimeoutError:
        t.wrong.append(f"{ending}: the server kept a stream it cannot resynchronise open")
        return
    except ConnectionError:
        pass
    t.closed_on_bad_header += 1


async def _read_back(sp: ServedPlant, port: int) -> list[str]:
    """Every unit's read-only tables equal its image over a fresh connection; a write lands."""
    wrong: list[str] = []
    for unit, image in sp.images.items():
        link = ModbusLink.tcp("127.0.0.1", port, unit, timeout=2.0, retries=0)
        try:
            for table in ("input", "discrete"):
                n = image.size(table)
                for a in range(0, n, 100):
                    c = min(100, n - a)
                    got = await link.read(table, a, c)
                    if list(got) != image.tables[table][a : a + c].tolist():
                        wrong.append(f"unit {unit}: {table} {a}+{c} differs from the image")
            rw = [p for p in image.points if p.table == "holding" and p.writable and p.words == 1]
            if rw:
                p = rw[0]
                value = p.min if p.min is not None else 0
                raw = round(value / p.scale) & 0xFFFF
                await link.write_register(p.address, raw)
                if (await link.read("holding", p.address, 1))[0] != raw:
                    wrong.append(f"unit {unit}: {p.name} did not read back what was written")
        except Exception as exc:
            wrong.append(f"unit {unit}: read-back failed: {exc}")
        finally:
            link.close()
    return wrong


async def _campaign(site: Site, seed: int, frames: int) -> ClassResult:
    res = ClassResult()
    t0 = time.monotonic()
    sp = ServedPlant(ScenarioPlant(site, "normal-day", seed=seed), speed=1.0)
    _, port = await sp.server.start_tcp("127.0.0.1", 0)
    sizes = {u: {t: im.size(t) for t in im.tables} for u, im in sp.images.items()}
    gen = FrameGenerator(random.Random(seed), sizes)
    tally = _Tally()
    gate = asyncio.Semaphore(_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def one(n: int) -> None:
        async with gate:
            try:
                await _session(gen, sp, port, tally, n)
            except OSError as exc:  # refused or reset on connect: the listener is gone
                tally.wrong.append(f"connect/send failed: {exc!r}")

    try:
        with (
            quiet("pymodbus", "thermogate.hil"),
            errors_logged("thermogate.hil", "pymodbus") as logged,
            loop_exceptions(loop) as unawaited,
        ):
            plans: list[int] = []
            budget = frames
            while budget > 0:
                n = 0 if gen.rng.random() < 0.08 else min(budget, gen.rng.randrange(1, 20))
                plans.append(n)
                budget -= n
            await asyncio.gather(*(one(n) for n in plans))
            after = await _read_back(sp, port)
    finally:
        await sp.server.stop()
    res.injected = tally.frames + tally.abandoned
    res.crashes = len(unawaited)
    bad = tally.wrong + after + logged + unawaited
    for what in bad:
        res.fail(what)
    res.survived = res.injected if not bad else 0
    res.counts = {
        "frames": tally.frames,
        "connections": tally.connections,
        "abandoned_connections": tally.abandoned,
        "correct_answers_between": tally.sentinels_ok,
        "closed_on_bad_header": tally.closed_on_bad_header,
        "server_errors_logged": len(logged),
        "answers_after": "correct" if not after else "WRONG",
    }
    res.wall_s = time.monotonic() - t0
    return res


def run_fuzz(seed: int, frames: int = 10_000, site: Site | None = None) -> ClassResult:
    """Fault class 1 (module docstring), ``frames`` fuzz frames, in its own event loop."""
    return asyncio.run(_campaign(site or demo_site(), seed, frames))
