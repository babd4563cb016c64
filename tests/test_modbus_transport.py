"""Plant Modbus server and client link over real sockets and pseudo-terminals.

No mocks: every test serves a few hand-built points on 127.0.0.1 (ephemeral
port) or on a socat pty pair and talks to them with ModbusLink, raw sockets
or the external mbpoll binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import struct
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ptys import pty_pair
from pymodbus.pdu import DecodePDU

from thermogate.hil.modbus_server import DeviceImage, PlantModbusServer
from thermogate.plc.errors import ModbusDeviceError
from thermogate.plc.points import Point
from thermogate.plc.transport import ModbusLink

# --------------------------------------------------------------------------- #
# fixtures and helpers
# --------------------------------------------------------------------------- #

#: What a wall-clock bound allows beyond a link's budget: a loaded 2-core CI
#: machine delays the loop, never the link's own deadlines; a hang (TCP's
#: minutes, a missed timeout) is still far outside it. Counts and messages pin
#: the rest.
LOADED_SLACK_S = 1.0


def f32_words(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def words_f32(words: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


def i16_word(value: int) -> int:
    return value & 0xFFFF


def build_points() -> list[Point]:
    """Unit 1: every type and table, a gap and read-only addresses; unit 2: a few."""
    return [
        # unit 1 holding: 0 u16 rw, 1 i16 rw, 2-3 f32 rw, 4 u16 ro, (5 gap), 6 u16 rw
        Point("pump_sp", 1, "holding", 0, "u16", access="rw", min=0, max=1000),
        Point("trim", 1, "holding", 1, "i16", access="rw"),
        Point("flow_sp", 1, "holding", 2, "f32", access="rw"),
        Point("status", 1, "holding", 4, "u16"),
        Point("mode", 1, "holding", 6, "u16", access="rw"),
        # unit 1 input: 0 u16, 1 i16, 2-3 f32
        Point("rpm", 1, "input", 0, "u16"),
        Point("delta", 1, "input", 1, "i16"),
        Point("temp", 1, "input", 2, "f32"),
        # unit 1 coils: 0 rw, 1 ro, (2 gap), 3 rw ; discretes 0..2
        Point("run", 1, "coil", 0, "bool", access="rw"),
        Point("locked", 1, "coil", 1, "bool"),
        Point("reset", 1, "coil", 3, "bool", access="rw"),
        Point("alarm", 1, "discrete", 0, "bool"),
        Point("ready", 1, "discrete", 1, "bool"),
        Point("door", 1, "discrete", 2, "bool"),
        # unit 2
        Point("valve_sp", 2, "holding", 0, "f32", access="rw"),
        Point("level", 2, "input", 10, "u16"),
        Point("open_cmd", 2, "coil", 0, "bool", access="rw"),
        Point("open_fb", 2, "discrete", 0, "bool"),
    ]


def build_images() -> dict[int, DeviceImage]:
    points = build_points()
    images = {u: DeviceImage(u, [p for p in points if p.unit_id == u]) for u in (1, 2)}
    one, two = images[1], images[2]
    one.set_registers("pump_sp", 450)
    one.set_registers("trim", i16_word(-12))
    one.set_registers("flow_sp", f32_words(12.5))
    one.set_registers("status", 0xBEEF)
    one.set_registers("mode", 3)
    one.set_registers("rpm", 1480)
    one.set_registers("delta", i16_word(-300))
    one.set_registers("temp", f32_words(-3.25))
    one.set_registers("run", True)
    one.set_registers("reset", True)
    one.set_registers("ready", True)
    one.set_registers("door", True)
    two.set_registers("valve_sp", f32_words(55.5))
    two.set_registers("level", 777)
    two.set_registers("open_fb", True)
    return images


class Recorder:
    """on_write that records calls and rejects pump_sp values above 1000."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, int, list[int]]] = []

    def __call__(self, unit: int, table: str, address: int, regs: list[int]) -> int | None:
        self.calls.append((unit, table, address, list(regs)))
        if unit == 1 and table == "holding" and address == 0 and regs[0] > 1000:
            return 3
        return None


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def serving(on_write: Recorder | None = None) -> AsyncIterator[tuple[PlantModbusServer, int]]:
    server = PlantModbusServer(build_images(), on_write)
    _, port = await server.start_tcp("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_req(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", fc, address, count))


async def exchange(port: int, frame: bytes, timeout: float = 1.0) -> bytes:
    """Send one frame on a fresh connection and return one MBAP response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame)
        await writer.drain()
        head = await asyncio.wait_for(reader.readexactly(6), timeout)
        rest = await asyncio.wait_for(reader.readexactly(struct.unpack(">H", head[4:6])[0]), 1)
        return head + rest
    finally:
        writer.close()


def link(port: int, unit: int = 1, **kw: Any) -> ModbusLink:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("retries", 1)
    return ModbusLink.tcp("127.0.0.1", port, unit, **kw)


async def expect_exception(code: int, coro: Coroutine[Any, Any, Any]) -> ModbusDeviceError:
    with pytest.raises(ModbusDeviceError) as info:
        await coro
    assert info.value.exception_code == code, info.value
    return info.value


# --------------------------------------------------------------------------- #
# TCP: reads and writes
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(10)
def test_reads_serve_the_image_values() -> None:
    async def scenario() -> None:
        async with serving() as (_server, port):
            a, b = link(port, 1), link(port, 2)
            try:
                assert await a.read("holding", 0, 2) == [450, i16_word(-12)]
                assert words_f32(await a.read("holding", 2, 2)) == 12.5
                # bridging the gap at holding 5 reads 0
                assert await a.read("holding", 4, 3) == [0xBEEF, 0, 3]
                assert await a.read("input", 0, 2) == [1480, i16_word(-300)]
                assert words_f32(await a.read("input", 2, 2)) == -3.25
                assert await a.read("coil", 0, 4) == [True, False, False, True]
                assert await a.read("discrete", 0, 3) == [False, True, True]
                assert words_f32(await b.read("holding", 0, 2)) == 55.5
                assert await b.read("input", 10) == [777]
                assert await b.read("input", 0, 11) == [0] * 10 + [777]
                assert await b.read("discrete", 0) == [True]
                # both unit ids share one TCP connection
                assert a._endpoint is b._endpoint and a.connected and b.connected
            finally:
                a.close()
                b.close()

    run(scenario())


def _full_path(server: PlantModbusServer, unit: int, pdu: bytes) -> bytes | None:
    """What the full path (pymodbus's decoder and datastore, ``respond``) answers."""

    async def full() -> bytes | None:
        decoded = DecodePDU(True).decode(pdu)
        response = await server.respond(unit, pdu, decoded, server._servers[0].context, False)
        return None if response is None else bytes([response.function_code]) + response.encode()

    return asyncio.get_event_loop().run_until_complete(full())


def _fast_path(server: PlantModbusServer, unit: int, pdu: bytes) -> bytes | None:
    return server.answer_now(unit, pdu, DecodePDU(True).decode)


@contextlib.contextmanager
def two_servers() -> Iterator[tuple[PlantModbusServer, PlantModbusServer, Recorder, Recorder]]:
    """Two servers over equal images, each with its own on_write recorder."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    rec_a, rec_b = Recorder(), Recorder()
    a, b = PlantModbusServer(build_images(), rec_a), PlantModbusServer(build_images(), rec_b)
    try:
        for s in (a, b):
            loop.run_until_complete(s.start_tcp("127.0.0.1", 0))
        yield a, b, rec_a, rec_b
    finally:
        for s in (a, b):
            loop.run_until_complete(s.stop())
        loop.close()
        asyncio.set_event_loop(None)


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from([1, 2, 3]),
    fc=st.integers(1, 4),
    address=st.integers(0, 40),
    count=st.integers(0, 130),
)
def test_reads_answered_from_the_image_match_the_full_path(
    unit: int, fc: int, address: int, count: int
) -> None:
    """A read answered at once is answered byte for byte as the full path answers
    it (values, exception codes); an unknown unit or a PDU that does not decode
    (a zero count) is left to the full path."""
    pdu = struct.pack(">BHH", fc, address, count)
    with two_servers() as (server, _, _, _):
        fast, full = _fast_path(server, unit, pdu), _full_path(server, unit, pdu)
        if unit == 3 or DecodePDU(True).decode(pdu) is None:
            assert fast is None
        else:
            assert fast is not None and fast == full


_write_pdus = st.one_of(
    st.builds(
        lambda a, on: struct.pack(">BHH", 5, a, 0xFF00 if on else 0),
        st.integers(0, 6),
        st.booleans(),
    ),
    st.builds(lambda a, v: struct.pack(">BHH", 6, a, v), st.integers(0, 8), st.integers(0, 0xFFFF)),
    st.builds(
        lambda a, bits: (
            struct.pack(">BHHB", 15, a, len(bits), (len(bits) + 7) // 8)
            + sum(int(b) << i for i, b in enumerate(bits)).to_bytes((len(bits) + 7) // 8, "little")
        ),
        st.integers(0, 6),
        st.lists(st.booleans(), min_size=1, max_size=10),
    ),
    st.builds(
        lambda a, regs: struct.pack(f">BHHB{len(regs)}H", 16, a, len(regs), 2 * len(regs), *regs),
        st.integers(0, 8),
        st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=6),
    ),
)


@settings(max_examples=300, deadline=None)
@given(unit=st.sampled_from([1, 2]), pdus=st.lists(_write_pdus, min_size=1, max_size=5))
def test_writes_answered_from_the_image_match_the_full_path(unit: int, pdus: list[bytes]) -> None:
    """Writes answered at once (legal, illegal, torn, vetoed by on_write) give the
    full path's answers, the same images and the same on_write calls."""
    with two_servers() as (fast_server, full_server, rec_fast, rec_full):
        for pdu in pdus:
            assert _fast_path(fast_server, unit, pdu) == _full_path(full_server, unit, pdu)
        assert rec_fast.calls == rec_full.calls
        for u, image in fast_server.images.items():
            for table, values in image.tables.items():
                assert values.tolist() == full_server.images[u].tables[table].tolist(), (u, table)


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from([1, 2]),
    table=st.sampled_from(["coil", "holding", "input", "discrete"]),
    address=st.integers(-1, 12),
    count=st.integers(1, 6),
)
def test_a_write_of_exactly_one_point_is_judged_and_split_as_the_address_map_would(
    unit: int, table: str, address: int, count: int
) -> None:
    """The look-up by start address (a write of one whole ``rw`` point) gives the
    same verdict and the same split as the map of every address: a gap, a
    read-only point, a torn f32 or a range over two points is still refused."""
    image = build_images()[unit]
    by_map = build_images()[unit]
    by_map._rw_at = {"coil": {}, "holding": {}}  # only the address map
    assert image.check_write(table, address, count) == by_map.check_write(table, address, count)
    if address >= 0 and image.check_write(table, address, count) is None:
        regs = list(range(100, 100 + count))
        assert image.split(table, address, regs) == by_map.split(table, address, regs)


def test_pipelined_reads_and_writes_are_answered_in_request_order() -> None:
    """Reads answered at once and requests served by a task (a write, a faulted
    unit's exception) share a connection: every answer comes back in the order
    the requests were sent, each with its own transaction id."""

    async def scenario() -> None:
        async with serving() as (server, port):
            server.set_fault(2, "exception", 6)
            frames = [
                read_req(1, 1, 3, 0, 2),
                mbap(2, 1, struct.pack(">BHH", 6, 0, 500)),  # a write: the task path
                read_req(3, 1, 4, 0, 2),
                read_req(4, 2, 4, 10, 1),  # faulted unit: exception 06 from a task
                read_req(5, 1, 1, 0, 4),
                read_req(6, 1, 3, 0, 1),  # reads the write above
            ]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"".join(frames))  # one chunk: all in flight at once
                await writer.drain()
                answers = []
                for _ in frames:
                    head = await asyncio.wait_for(reader.readexactly(7), 2)
                    body = await asyncio.wait_for(
                        reader.readexactly(struct.unpack(">H", head[4:6])[0] - 1), 2
                    )
                    answers.append((struct.unpack(">H", head[:2])[0], body))
            finally:
                writer.close()
            assert [tid for tid, _ in answers] == [1, 2, 3, 4, 5, 6]
            assert answers[0][1] == bytes([3, 4]) + struct.pack(">HH", 450, i16_word(-12))
            assert answers[1][1] == struct.pack(">BHH", 6, 0, 500)
            assert answers[2][1] == bytes([4, 4]) + struct.pack(">HH", 1480, i16_word(-300))
            assert answers[3][1] == bytes([0x84, 6])
            assert answers[4][1] == bytes([1, 1, 0b1001])
            assert answers[5][1] == bytes([3, 2]) + struct.pack(">H", 500)

    run(scenario())


@pytest.mark.timeout(10)
def test_plant_updates_are_served_live() -> None:
    async def scenario() -> None:
        async with serving() as (server, port):
            a = link(port)
            try:
                server.images[1].input[0] = 1500
                server.images[1].set_registers("temp", f32_words(21.75))
                server.images[1].discretes[0] = True
                assert await a.read("input", 0) == [1500]
                assert words_f32(await a.read("input", 2, 2)) == 21.75
                assert await a.read("discrete", 0) == [True]
            finally:
                a.close()

    run(scenario())


@pytest.mark.timeout(10)
def test_writes_call_on_write_and_update_the_image() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with serving(recorder) as (server, port):
            a, b = link(port, 1), link(port, 2)
            img1, img2 = server.images[1], server.images[2]
            try:
                await a.write_register(0, 700)
                assert recorder.calls[-1] == (1, "holding", 0, [700])
                assert img1.get_registers("pump_sp") == [700]
                assert await a.read("holding", 0) == [700]

                await a.write_registers(2, f32_words(-8.5))
                assert recorder.calls[-1] == (1, "holding", 2, f32_words(-8.5))
                assert words_f32(img1.get_registers("flow_sp")) == -8.5

                # one request spanning several points: one on_write call, all applied
                await a.write_registers(0, [10, i16_word(-1), *f32_words(1.0)])
                assert recorder.calls[-1] == (1, "holding", 0, [10, 0xFFFF, *f32_words(1.0)])
                assert img1.holding[:4].tolist() == [10, 0xFFFF, *f32_words(1.0)]
                assert [p.name for p, _ in img1.split("holding", 0, [0] * 4)] == [
                    "pump_sp",
                    "trim",
                    "flow_sp",
                ]

                await a.write_coil(0, False)
                assert recorder.calls[-1] == (1, "coil", 0, [0])
                assert img1.get_registers("run") == [False]
                await b.write_coils(0, [True])
                assert recorder.calls[-1] == (2, "coil", 0, [1])
                assert img2.get_registers("open_cmd") == [True]
                assert await b.read("coil", 0) == [True]
                await b.write_registers(0, f32_words(60.0))
                assert words_f32(await b.read("holding", 0, 2)) == 60.0
            finally:
                a.close()
                b.close()

    run(scenario())


@pytest.mark.timeout(10)
def test_illegal_addresses_and_read_only_answer_02() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with serving(recorder) as (server, port):
            a = link(port)
            try:
                await expect_exception(2, a.read("holding", 6, 2))  # past the end
                await expect_exception(2, a.read("holding", 7))
                await expect_exception(2, a.read("input", 3, 2))
                await expect_exception(2, a.read("coil", 3, 2))  # bit-exact end
                await expect_exception(2, a.read("discrete", 3))
                await expect_exception(2, a.write_register(4, 1))  # read-only holding
                await expect_exception(2, a.write_register(5, 1))  # gap
                await expect_exception(2, a.write_register(2, 1))  # half of an f32
                await expect_exception(2, a.write_registers(3, [1, 2]))  # straddles f32
                await expect_exception(2, a.write_coil(1, True))  # read-only coil
                await expect_exception(2, a.write_coils(0, [True, True]))  # covers ro coil
                err = await expect_exception(2, a.write_registers(3, [1]))
                assert "illegal data address" in str(err)
                assert recorder.calls == []  # rejected before on_write
                assert server.images[1].get_registers("status") == [0xBEEF]
            finally:
                a.close()

    run(scenario())


@pytest.mark.timeout(10)
def test_on_write_veto_answers_03_and_keeps_the_image() -> None:
    recorder = Recorder()

    async def scenario() -> None:
        async with serving(recorder) as (server, port):
            a = link(port)
            try:
                await expect_exception(3, a.write_register(0, 5000))
                await expect_exception(3, a.write_registers(0, [5000, 1]))
                assert recorder.calls[-1] == (1, "holding", 0, [5000, 1])
                assert server.images[1].holding[:2].tolist() == [450, i16_word(-12)]
                assert await a.read("holding", 0) == [450]
            finally:
                a.close()

    run(scenario())


# --------------------------------------------------------------------------- #
# faults and unknown units
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(10)
def test_fault_timeout_fails_within_budget_and_never_replies_late() -> None:
    async def scenario() -> None:
        async with serving() as (server, port):
            a = link(port, 1, timeout=0.2, retries=1)
            b = link(port, 2, timeout=0.2, retries=1)
            try:
                assert await a.read("input", 0) == [1480]
                server.set_fault(1, "timeout")
                start = time.monotonic()
                with pytest.raises(ModbusDeviceError) as info:
                    await a.read("input", 0)
                elapsed = time.monotonic() - start
                assert info.value.exception_code is None
                assert info.value.unit_id == 1
                assert "no response" in info.value.reason
                assert 0.35 < elapsed <= a.budget + LOADED_SLACK_S
                # the other unit behind the same connection still answers
                assert await b.read("input", 10) == [777]

                # raw socket: no reply at all, not even after the fault clears
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(read_req(7, 1, 4, 0, 1))
                await writer.drain()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(100), 0.3)
                server.set_fault(1, None)
                writer.write(read_req(8, 1, 4, 0, 1))
                await writer.drain()
                reply = await asyncio.wait_for(reader.readexactly(11), 1)
                assert struct.unpack(">H", reply[:2])[0] == 8
                assert reply[7:] == bytes([4, 2]) + (1480).to_bytes(2, "big")
                with pytest.raises(TimeoutError):  # nothing else queued behind it
                    await asyncio.wait_for(reader.read(100), 0.2)
                writer.close()

                assert await a.read("input", 0) == [1480]
            finally:
                a.close()
                b.close()

    run(scenario())


@pytest.mark.timeout(10)
def test_fault_exception_answers_the_given_code() -> None:
    async def scenario() -> None:
        async with serving() as (server, port):
            a = link(port)
            try:
                server.set_fault(1, "exception", code=6)
                await expect_exception(6, a.read("holding", 0))
                await expect_exception(6, a.write_register(0, 1))
                server.set_fault(1, "exception")
                err = await expect_exception(4, a.read("coil", 0))
                assert "server device failure" in str(err)
                server.set_fault(1, None)
                assert await a.read("holding", 0) == [450]
            finally:
                a.close()

    run(scenario())


@pytest.mark.timeout(10)
def test_unknown_unit_answers_gateway_0b_on_tcp() -> None:
    async def scenario() -> None:
        async with serving() as (_server, port):
            ghost = link(port, 9)
            try:
                await expect_exception(0x0B, ghost.read("holding", 0))
                await expect_exception(0x0B, ghost.write_coil(0, True))
            finally:
                ghost.close()
            reply = await exchange(port, read_req(3, 9, 3, 0, 1))
            assert reply == struct.pack(">HHHB", 3, 0, 3, 9) + bytes([0x83, 0x0B])

    run(scenario())


# --------------------------------------------------------------------------- #
# robustness over raw sockets
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(10)
def test_garbage_truncated_and_vanishing_clients_do_not_hurt_the_server() -> None:
    async def scenario() -> None:
        async with serving() as (_server, port):
            # garbage: invalid MBAP header -> that connection is closed
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\xde\xad\xbe\xef" * 20)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(100), 1) == b""
            writer.close()

            # truncated MBAP header, then gone
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"\x00\x01\x00")
            await w.drain()
            w.close()

            # a header announcing more than is sent, then gone mid-request
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(read_req(1, 1, 3, 0, 1)[:9])
            await w.drain()
            w.transport.abort()

            # connect and vanish without a byte
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.transport.abort()

            # malformed PDU of a supported function (fc 3 without address/count) -> 03
            reply = await exchange(port, mbap(5, 1, b"\x03"))
            assert reply[7:] == bytes([0x83, 0x03])
            # unsupported function code -> 01
            reply = await exchange(port, mbap(6, 1, b"\x2b\x0e\x01\x00"))
            assert reply[7:] == bytes([0xAB, 0x01])
            # coil value other than 0x0000 / 0xFF00 -> 03
            reply = await exchange(port, mbap(7, 1, struct.pack(">BHH", 5, 0, 0x1234)))
            assert reply[7:] == bytes([0x85, 0x03])
            # quantity 0 -> 03
            reply = await exchange(port, read_req(8, 1, 3, 0, 0))
            assert reply[7:] == bytes([0x83, 0x03])
            # fc 16 whose byte count disagrees with the quantity -> 03
            bad16 = struct.pack(">BHHB", 16, 0, 2, 2) + b"\x00\x01"
            reply = await exchange(port, mbap(9, 1, bad16))
            assert reply[7:] == bytes([0x90, 0x03])

            # two requests in one segment are both answered, in order
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(read_req(21, 1, 3, 0, 1) + read_req(22, 2, 4, 10, 1))
            await writer.drain()
            first = await asyncio.wait_for(reader.readexactly(11), 1)
            second = await asyncio.wait_for(reader.readexactly(11), 1)
            writer.close()
            assert struct.unpack(">H", first[:2])[0] == 21 and first[9:] == (450).to_bytes(2)
            assert struct.unpack(">H", second[:2])[0] == 22 and second[9:] == (777).to_bytes(2)

            # fc 23 read/write multiple registers
            rw = struct.pack(">BHHHHB", 23, 0, 2, 6, 1, 2) + (9).to_bytes(2, "big")
            reply = await exchange(port, mbap(10, 1, rw))
            assert reply[7:] == bytes([23, 4]) + (450).to_bytes(2) + i16_word(-12).to_bytes(2)

            # and the next well-behaved client is served
            a = link(port)
            try:
                assert await a.read("holding", 6) == [9]
            finally:
                a.close()

    run(scenario())


@pytest.mark.timeout(15)
def test_fifty_clients_at_once() -> None:
    async def client(port: int, i: int) -> bytes:
        unit, fc, address, expected = (1, 4, 0, 1480) if i % 2 else (2, 4, 10, 777)
        reply = await exchange(port, read_req(i, unit, fc, address, 1), timeout=3)
        assert struct.unpack(">H", reply[:2])[0] == i
        assert reply[9:] == expected.to_bytes(2, "big")
        return reply

    async def vandal(port: int, i: int) -> None:
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(read_req(i, 1, 3, 0, 1)[: i % 11])
        await w.drain()
        w.transport.abort()

    async def scenario() -> None:
        async with serving() as (_server, port):
            results = await asyncio.gather(
                *(client(port, i) for i in range(1, 51)),
                *(vandal(port, i) for i in range(20)),
            )
            assert len([r for r in results if r]) == 50
            a = link(port)
            try:
                assert await a.read("input", 0) == [1480]
            finally:
                a.close()

    run(scenario())


# --------------------------------------------------------------------------- #
# client side: reconnect, backoff, argument checks
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(10)
def test_link_reconnects_with_backoff_after_server_restart() -> None:
    async def scenario() -> None:
        server = PlantModbusServer(build_images())
        _, port = await server.start_tcp("127.0.0.1", 0)
        a = link(port, timeout=0.3, retries=0, backoff_initial=0.2, backoff_max=0.4)
        try:
            assert await a.read("input", 0) == [1480]
            await server.stop()
            await asyncio.sleep(0.05)
            assert not a.connected
            start = time.monotonic()
            with pytest.raises(ModbusDeviceError) as info:
                await a.read("input", 0)  # reconnect refused
            assert "cannot connect" in info.value.reason
            with pytest.raises(ModbusDeviceError) as info:
                await a.read("input", 0)  # inside the backoff window: fails at once
            assert "next attempt" in info.value.reason
            assert time.monotonic() - start < a.budget + LOADED_SLACK_S

            server = PlantModbusServer(build_images())
            await server.start_tcp("127.0.0.1", port)
            await asyncio.sleep(0.45)  # > the capped backoff
            assert await a.read("input", 0) == [1480]
            assert a.connected
        finally:
            a.close()
            await server.stop()

    run(scenario())


@pytest.mark.timeout(10)
def test_dead_endpoint_fails_within_budget() -> None:
    async def scenario() -> None:
        # a listening socket that never answers Modbus; it keeps its connections to
        # close them (a dropped writer leaves its socket to the garbage collector)
        accepted: list[asyncio.StreamWriter] = []
        silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        a = link(port, timeout=0.15, retries=2)
        try:
            start = time.monotonic()
            with pytest.raises(ModbusDeviceError) as info:
                await a.read("holding", 0)
            assert time.monotonic() - start <= a.budget + LOADED_SLACK_S
            assert "3 attempt(s)" in info.value.reason
            with pytest.raises(ValueError):
                await a.read("holding", 0, 126)
            with pytest.raises(ValueError):
                await a.write_registers(0, [70000])
            with pytest.raises(ValueError):
                await a.read("bogus", 0)
        finally:
            a.close()
            silent.close()
            for w in accepted:
                w.close()
            await silent.wait_closed()
        with pytest.raises(ModbusDeviceError, match="link closed"):
            await a.read("holding", 0)

    run(scenario())


# --------------------------------------------------------------------------- #
# RTU over a socat pty pair
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(10)
def test_rtu_over_pty() -> None:
    recorder = Recorder()

    async def scenario(server_end: str, client_end: str) -> None:
        server = PlantModbusServer(build_images(), recorder)
        await server.start_rtu(server_end, baudrate=19200, parity="N", stopbits=1)
        a = ModbusLink.rtu(client_end, 1, parity="N", timeout=0.3, retries=0)
        b = ModbusLink.rtu(client_end, 2, parity="N", timeout=0.3, retries=0)
        try:
            assert await a.read("holding", 0, 2) == [450, i16_word(-12)]
            assert words_f32(await a.read("input", 2, 2)) == -3.25
            assert await a.read("coil", 0, 4) == [True, False, False, True]
            await a.write_registers(2, f32_words(33.0))
            assert words_f32(server.images[1].get_registers("flow_sp")) == 33.0
            assert recorder.calls[-1] == (1, "holding", 2, f32_words(33.0))
            await a.write_coil(3, False)
            assert server.images[1].get_registers("reset") == [False]
            await expect_exception(2, a.write_register(4, 1))
            await expect_exception(3, a.write_register(0, 5000))
            # the second station shares the serial port
            assert await b.read("input", 10) == [777]
            assert a._endpoint is b._endpoint

            # garbage on the line costs nothing once the line has been quiet
            fd = os.open(client_end, os.O_RDWR | os.O_NOCTTY)
            try:
                os.write(fd, b"\x01\x10\xff\xff\x00\x00\x7f")
            finally:
                os.close(fd)
            await asyncio.sleep(0.05)
            assert await a.read("holding", 0) == [450]

            # a station that is not on the line: silence, the client times out
            ghost = ModbusLink.rtu(client_end, 9, parity="N", timeout=0.2, retries=0)
            try:
                start = time.monotonic()
                with pytest.raises(ModbusDeviceError) as info:
                    await ghost.read("holding", 0)
                assert info.value.exception_code is None
                assert time.monotonic() - start <= ghost.budget + LOADED_SLACK_S
            finally:
                ghost.close()
            # a timeout fault on RTU is silence too; exception faults answer
            server.set_fault(1, "timeout")
            with pytest.raises(ModbusDeviceError) as info:
                await a.read("holding", 0)
            assert info.value.exception_code is None
            server.set_fault(1, "exception", code=6)
            await expect_exception(6, a.read("holding", 0))
            server.set_fault(1, None)
            assert await a.read("holding", 0) == [450]
        finally:
            a.close()
            b.close()
            await server.stop()

    with pty_pair() as (server_end, client_end):
        run(scenario(server_end, client_end))


# --------------------------------------------------------------------------- #
# an independent client: mbpoll
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(15)
def test_mbpoll_reads_the_image() -> None:
    if shutil.which("mbpoll") is None:  # an independent peer: never skipped silently
        pytest.fail("mbpoll is not on PATH: `apt-get install mbpoll` (CI installs it)")

    async def mbpoll(port: int, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "mbpoll",
            "-m",
            "tcp",
            "-p",
            str(port),
            "-0",
            "-1",
            "-o",
            "1",
            *args,
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 5)
        return out.decode()

    async def scenario() -> None:
        async with serving() as (_server, port):
            out = await mbpoll(port, "-a", "1", "-t", "4:float", "-B", "-r", "2", "-c", "1")
            assert re.search(r"\[2\]:\s+12\.5", out), out
            out = await mbpoll(port, "-a", "1", "-t", "3", "-r", "0", "-c", "2")
            assert re.search(r"\[0\]:\s+1480", out), out
            assert re.search(r"\[1\]:\s+65236 \(-300\)", out), out
            out = await mbpoll(port, "-a", "2", "-t", "1", "-r", "0", "-c", "1")
            assert re.search(r"\[0\]:\s+1", out), out
            out = await mbpoll(port, "-a", "1", "-t", "0", "-r", "0", "-c", "4")
            assert re.findall(r"\[\d\]:\s+(\d)", out) == ["1", "0", "0", "1"], out

    run(scenario())


# --------------------------------------------------------------------------- #
# the image itself
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(5)
def test_device_image_rejects_a_bad_map() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        DeviceImage(1, [Point("a", 1, "holding", 0, "f32"), Point("b", 1, "holding", 1, "u16")])
    with pytest.raises(ValueError, match="unit id"):
        DeviceImage(1, [Point("a", 2, "holding", 0, "u16")])
    with pytest.raises(ValueError, match="bool"):
        DeviceImage(1, [Point("a", 1, "coil", 0, "u16")])
    image = DeviceImage(3, [Point("x", 3, "input", 4, "u16")])
    assert image.size("input") == 5 and image.size("holding") == 0
    assert image.check_read("holding", 0, 1) == 2


@pytest.mark.parametrize(
    ("where", "says"), [("missing", "No such file or directory"), ("file", "not a serial port")]
)
def test_a_serial_port_that_cannot_be_opened_says_why(tmp_path, where, says) -> None:
    # pymodbus answers False, and the reason was lost: "cannot connect" and nothing more.
    path = tmp_path / "ttyNOPE"
    if where == "file":
        path.write_text("not a tty")

    async def scenario() -> str:
        a = ModbusLink.rtu(str(path), 1, parity="N", timeout=0.2, retries=0)
        try:
            with pytest.raises(ModbusDeviceError) as info:
                await a.read("holding", 0)
            return info.value.reason
        finally:
            a.close()

    reason = run(scenario())
    assert "cannot connect" in reason and f"{path}: {says}" in reason, reason
