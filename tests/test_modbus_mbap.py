"""Modbus/TCP with several requests in flight (plc/mbap.py), over real sockets.

A scripted device (an asyncio TCP server on loopback) holds requests, answers
them out of order, late, split across segments or wrongly, so each check of
the client is seen from the wire: answers are matched by transaction id, an
answer that does not fit its request fails that request alone, an out-of-step
stream drops the connection and fails everything pending. Against the real
plant server (pymodbus), a link with requests in flight reads what a link
with one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ConnectionException

from thermogate.plc.errors import ModbusDeviceError
from thermogate.plc.mbap import Answer, MalformedAnswer, MbapClient
from thermogate.plc.transport import ModbusLink

MBAP = struct.Struct(">HHHB")

Frame = tuple[int, int, bytes]  # transaction id, unit, pdu


def frame(tid: int, unit: int, pdu: bytes, proto: int = 0) -> bytes:
    return MBAP.pack(tid, proto, len(pdu) + 1, unit) + pdu


def registers(values: list[int]) -> bytes:
    return bytes((3, 2 * len(values))) + struct.pack(f">{len(values)}H", *values)


class Device:
    """A scripted Modbus/TCP device: it collects requests and answers as told."""

    def __init__(self) -> None:
        self.requests: list[Frame] = []
        self.arrived = asyncio.Condition()
        self.writer: asyncio.StreamWriter | None = None
        self.served: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        task = asyncio.current_task()
        assert task is not None
        self.served.add(task)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    tid, _, length, unit = MBAP.unpack(await reader.readexactly(7))
                    pdu = await reader.readexactly(length - 1)
                    async with self.arrived:
                        self.requests.append((tid, unit, pdu))
                        self.arrived.notify_all()
        finally:
            writer.close()  # the device's end too: nothing left for the collector

    async def stop(self, server: asyncio.Server) -> None:
        """Stop listening and end every connection's handler, inside the test's loop
        (a socket left to the garbage collector warns in whatever test runs next)."""
        server.close()
        for task in self.served:
            task.cancel()
        await asyncio.gather(*self.served, return_exceptions=True)
        await server.wait_closed()

    async def until(self, n: int) -> list[Frame]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests) >= n), 10)
        return self.requests[:n]

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()


@contextlib.asynccontextmanager
async def scripted() -> AsyncIterator[tuple[Device, MbapClient, list[bool]]]:
    dev = Device()
    server = await asyncio.start_server(dev.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    trace: list[bool] = []
    client = MbapClient("127.0.0.1", port, trace_connect=trace.append)
    assert await client.connect()
    try:
        yield dev, client, trace
    finally:
        client.close()
        await dev.stop(server)


def run(fn: Callable[[], object]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


def test_requests_go_out_before_answers_and_answers_are_matched_by_transaction_id():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            tasks = [
                asyncio.ensure_future(client.read_holding_registers(100 * k, count=2, device_id=7))
                for k in range(4)
            ]
            reqs = await dev.until(4)  # all four sent, none answered yet
            assert not any(t.done() for t in tasks)
            assert len({tid for tid, _, _ in reqs}) == 4
            for tid, unit, pdu in reversed(reqs):  # answered last first
                address = struct.unpack_from(">H", pdu, 1)[0]
                await dev.send(frame(tid, unit, registers([address, address + 1])))
            got = [(await t).registers for t in tasks]
            assert got == [[100 * k, 100 * k + 1] for k in range(4)]

    run(go)


def test_an_answer_split_across_segments_is_taken_whole():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            task = asyncio.ensure_future(client.read_input_registers(0, count=3, device_id=1))
            ((tid, unit, _),) = await dev.until(1)
            raw = frame(tid, unit, bytes((4, 6)) + struct.pack(">3H", 1, 2, 3))
            for i in range(len(raw)):  # one byte at a time
                await dev.send(raw[i : i + 1])
                await asyncio.sleep(0)
            assert (await task).registers == [1, 2, 3]

    run(go)


@pytest.mark.parametrize("timed_by", ["caller", "client"])
def test_a_late_answer_is_counted_and_given_to_no_one(timed_by):
    """The caller may time the request (a timeout block) or the client (``timeout=``,
    as the link does): either way the request fails and its late answer is dropped."""

    async def go() -> None:
        async with scripted() as (dev, client, _):
            with pytest.raises(TimeoutError):
                if timed_by == "caller":
                    async with asyncio.timeout(0.2):
                        await client.read_holding_registers(0, count=1, device_id=1)
                else:
                    await client.read_holding_registers(0, count=1, device_id=1, timeout=0.2)
            assert client._pending == {}  # nothing waits for the first answer any more
            second = asyncio.ensure_future(client.read_holding_registers(5, count=1, device_id=1))
            (old, new) = await dev.until(2)
            await dev.send(frame(old[0], 1, registers([111])))  # the first's, too late
            await dev.send(frame(new[0], 1, registers([222])))
            assert (await second).registers == [222]
            assert client.late == 1

    run(go)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda tid: frame(tid, 9, registers([1, 2])), "unit 9"),
        (lambda tid: frame(tid, 1, bytes((4, 4, 0, 1, 0, 2))), "function 4"),
        (lambda tid: frame(tid, 1, bytes((3, 2, 0, 1))), "2 data bytes"),
        (lambda tid: frame(tid, 1, bytes((3, 4, 0, 1))), "4 expected"),
        (lambda tid: frame(tid, 1, bytes((0x83, 2, 0))), "exception answer of 3 bytes"),
    ],
)
def test_an_answer_that_does_not_fit_its_request_fails_that_request_alone(answer, why):
    async def go() -> None:
        async with scripted() as (dev, client, trace):
            bad = asyncio.ensure_future(client.read_holding_registers(0, count=2, device_id=1))
            good = asyncio.ensure_future(client.read_holding_registers(8, count=2, device_id=1))
            (a, b) = await dev.until(2)
            await dev.send(answer(a[0]))
            await dev.send(frame(b[0], 1, registers([8, 9])))
            with pytest.raises(MalformedAnswer, match=why):
                await bad
            assert (await good).registers == [8, 9]
            assert client.connected and trace == [True]

    run(go)


def test_an_exception_reply_is_an_answer_with_its_code():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            task = asyncio.ensure_future(client.write_register(40, 7, device_id=3))
            ((tid, unit, pdu),) = await dev.until(1)
            assert pdu == struct.pack(">BHH", 6, 40, 7)
            await dev.send(frame(tid, unit, bytes((0x86, 0x02))))
            ans = await task
            assert ans.isError() and ans.exception_code == 2

    run(go)


def test_a_stream_out_of_step_drops_the_connection_and_fails_everything_pending():
    async def go() -> None:
        async with scripted() as (dev, client, trace):
            tasks = [
                asyncio.ensure_future(client.read_coils(k, count=9, device_id=1)) for k in range(3)
            ]
            reqs = await dev.until(3)
            await dev.send(frame(reqs[0][0], 1, bytes((1, 2, 0xFF, 0x01)), proto=7))
            for t in tasks:
                with pytest.raises(ConnectionException):
                    await t
            assert not client.connected and trace == [True, False]

    run(go)


def test_a_peer_closing_fails_the_pending_requests_at_once():
    async def go() -> None:
        async with scripted() as (dev, client, trace):
            task = asyncio.ensure_future(client.read_coils(0, count=1, device_id=1))
            await dev.until(1)
            assert dev.writer is not None
            dev.writer.close()
            with pytest.raises(ConnectionException):
                await asyncio.wait_for(task, 10)
            assert trace == [True, False]
            with pytest.raises(ConnectionException, match="not connected"):
                await client.read_coils(0, count=1, device_id=1)

    run(go)


def test_writes_are_framed_as_the_spec_says_and_their_echo_is_checked():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            calls = [
                client.write_coil(3, True, device_id=2),
                client.write_coils(
                    10, [True, False, True, True, False, False, False, False, True], device_id=2
                ),
                client.write_registers(20, [0x4120, 0x0000], device_id=2),
            ]
            tasks = [asyncio.ensure_future(c) for c in calls]
            reqs = await dev.until(3)
            assert [pdu for _, _, pdu in reqs] == [
                bytes.fromhex("050003ff00"),
                bytes.fromhex("0f000a0009020d01"),
                bytes.fromhex("10001400020441200000"),
            ]
            await dev.send(frame(reqs[0][0], 2, reqs[0][2]))  # fc 5 echoes the request
            await dev.send(frame(reqs[1][0], 2, reqs[1][2][:5]))  # fc 15: address, quantity
            await dev.send(frame(reqs[2][0], 2, bytes.fromhex("1000140003")))  # wrong quantity
            assert not (await tasks[0]).isError()
            assert not (await tasks[1]).isError()
            with pytest.raises(MalformedAnswer, match="does not echo"):
                await tasks[2]

    run(go)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    st.lists(st.booleans(), min_size=1, max_size=2000),
    st.integers(1, 40),
)
def test_any_read_answer_in_any_segmentation_decodes_to_its_values(regs, bits, chunk):
    async def go() -> None:
        async with scripted() as (dev, client, _):
            r = asyncio.ensure_future(client.read_input_registers(0, count=len(regs), device_id=1))
            b = asyncio.ensure_future(client.read_discrete_inputs(0, count=len(bits), device_id=1))
            (rq, bq) = await dev.until(2)
            packed = bytearray((len(bits) + 7) // 8)
            for i, v in enumerate(bits):
                packed[i >> 3] |= v << (i & 7)
            raw = frame(bq[0], 1, bytes((2, len(packed))) + packed) + frame(
                rq[0], 1, bytes((4, 2 * len(regs))) + struct.pack(f">{len(regs)}H", *regs)
            )
            for i in range(0, len(raw), chunk):
                await dev.send(raw[i : i + chunk])
            assert (await r).registers == regs
            assert (await b).bits == bits

    run(go)


# --------------------------------------------------------------------------- #
# Streams: a unit's reads driven by their answers (a scan's fast path)
# --------------------------------------------------------------------------- #


def collected() -> tuple[dict[int, object], Callable[[int, object, float], bool]]:
    """What a stream hands over, by request index, and the callback that keeps it."""
    got: dict[int, object] = {}

    def on_result(k: int, result: object, sent_at: float) -> bool:
        got[k] = result
        return True

    return got, on_result


@contextlib.asynccontextmanager
async def scripted_link(unit: int) -> AsyncIterator[tuple[Device, ModbusLink]]:
    """A scripted device and a connected link to it (timeout 0.3 s, one retry)."""
    dev = Device()
    server = await asyncio.start_server(dev.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = ModbusLink.tcp("127.0.0.1", port, unit, timeout=0.3, retries=1, in_flight=4)
    try:
        assert await link.connect()
        yield dev, link
    finally:
        link.close()
        await dev.stop(server)


def read_pdus(n: int) -> list[bytes]:
    return [struct.pack(">BHH", 3, 10 * k, 1) for k in range(n)]


def address_of(pdu: bytes) -> int:
    return struct.unpack_from(">H", pdu, 1)[0]


def test_a_stream_keeps_in_flight_outstanding_and_hands_each_answer_over_as_it_comes():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            got: list[tuple[int, object]] = []

            def on_result(k: int, result: object, sent_at: float) -> bool:
                got.append((k, result.registers if isinstance(result, Answer) else result))
                return True

            stream = client.stream(1, read_pdus(5), in_flight=2, timeout=10, on_result=on_result)
            first = await dev.until(2)
            await asyncio.sleep(0.05)
            assert len(dev.requests) == 2  # no third before an answer frees a slot
            await dev.send(frame(first[1][0], 1, registers([11])))  # the second, first
            third = (await dev.until(3))[2]
            assert got == [(1, [11])]
            for tid, _, pdu in [first[0], third]:
                await dev.send(frame(tid, 1, registers([address_of(pdu)])))
            rest = await dev.until(5)
            for tid, _, pdu in rest[3:]:
                await dev.send(frame(tid, 1, registers([address_of(pdu)])))
            assert await asyncio.wait_for(stream.finished, 10) == []
            assert [address_of(pdu) for _, _, pdu in dev.requests] == [0, 10, 20, 30, 40]
            assert sorted(got) == [(0, [0]), (1, [11]), (2, [20]), (3, [30]), (4, [40])]
            assert client._pending == {}

    run(go)


def test_a_streamed_request_left_unanswered_times_out_alone_and_its_late_answer_is_dropped():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            got, on_result = collected()
            stream = client.stream(1, read_pdus(3), in_flight=3, timeout=0.3, on_result=on_result)
            reqs = await dev.until(3)
            for tid, _, pdu in (reqs[0], reqs[2]):
                await dev.send(frame(tid, 1, registers([address_of(pdu)])))
            assert await asyncio.wait_for(stream.finished, 10) == []
            assert isinstance(got[1], TimeoutError)
            assert [got[0].registers, got[2].registers] == [[0], [20]]  # type: ignore[attr-defined]
            await dev.send(frame(reqs[1][0], 1, registers([10])))  # too late
            await asyncio.sleep(0.05)
            assert client.late == 1 and len(got) == 3

    run(go)


def test_a_stopped_stream_sends_no_more_and_names_what_it_never_sent():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            stream = client.stream(
                1, read_pdus(6), in_flight=2, timeout=0.3, on_result=lambda k, r, t: False
            )
            reqs = await dev.until(2)
            await dev.send(frame(reqs[0][0], 1, registers([0])))  # answered: still stops
            assert await asyncio.wait_for(stream.finished, 10) == [2, 3, 4, 5]
            assert len(dev.requests) == 2

    run(go)


def test_a_peer_closing_mid_stream_fails_every_outstanding_request_at_once():
    async def go() -> None:
        async with scripted() as (dev, client, _):
            got, on_result = collected()  # (it goes on: a lost connection sends no more)
            stream = client.stream(1, read_pdus(5), in_flight=3, timeout=10, on_result=on_result)
            await dev.until(3)
            assert dev.writer is not None
            dev.writer.close()
            assert await asyncio.wait_for(stream.finished, 10) == [3, 4]
            assert sorted(got) == [0, 1, 2]
            assert all(isinstance(r, ConnectionException) for r in got.values())

    run(go)


def test_an_error_in_the_streams_caller_ends_it_loudly_and_forgets_its_requests():
    async def go() -> None:
        async with scripted() as (dev, client, _):

            def on_result(k: int, result: object, sent_at: float) -> bool:
                raise KeyError("a bug in the caller")

            stream = client.stream(1, read_pdus(4), in_flight=2, timeout=10, on_result=on_result)
            reqs = await dev.until(2)
            await dev.send(frame(reqs[0][0], 1, registers([0])))
            with pytest.raises(KeyError, match="a bug in the caller"):
                await asyncio.wait_for(stream.finished, 10)
            assert client._pending == {} and len(dev.requests) == 2

    run(go)


def test_a_links_stream_leaves_a_failed_read_to_read_whose_retries_count_the_streamed_try():
    """retries=1: two attempts in all, the streamed one included; an exception reply
    costs only its own read and is no reason to stop."""

    async def go() -> None:
        async with scripted_link(5) as (dev, link):
            values: dict[int, list[int]] = {}
            refused: dict[int, ModbusDeviceError] = {}
            reads = [("holding", 10 * k, 1) for k in range(4)]
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(
                link.read_stream(reads, loop.time() + 10, values.__setitem__, refused.__setitem__)
            )
            reqs = await dev.until(4)
            await dev.send(frame(reqs[0][0], 5, registers([100])))
            await dev.send(frame(reqs[1][0], 5, bytes((0x83, 0x02))))  # refused
            await dev.send(frame(reqs[3][0], 5, registers([103])))  # reqs[2]: never
            end = await asyncio.wait_for(task, 10)
            assert end is not None and end.timed_out is None
            assert values == {0: [100], 3: [103]}
            assert refused[1].exception_code == 2 and "illegal data address" in refused[1].reason
            ((k, tried),) = end.rest
            assert k == 2 and tried is not None and "no response within 0.3 s" in tried.reason
            with pytest.raises(ModbusDeviceError, match=r"no response within 0.3 s \(2 attempt"):
                await link.read("holding", 20, 1, tried=tried)
            assert [address_of(pdu) for _, _, pdu in dev.requests].count(20) == 2

    run(go)


def test_a_links_write_stream_frames_each_write_as_its_request_would_and_hands_on_the_rest():
    """The stream writes what write_coil/coils/register/registers would send; an
    exception reply refuses its write alone, named as the per-request path names it;
    a write left unanswered is retried by write_register, its streamed try counted."""

    async def go() -> None:
        async with scripted_link(4) as (dev, link):
            writes = [("coil", 3, [1]), ("coil", 10, [1, 0, 1]), ("holding", 20, [7]),
                      ("holding", 30, [0x4120, 0])]  # fmt: skip
            done: list[int] = []
            refused: dict[int, ModbusDeviceError] = {}
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(
                link.write_stream(writes, loop.time() + 10, done.append, refused.__setitem__)
            )
            reqs = await dev.until(4)
            assert [pdu for _, _, pdu in reqs] == [
                bytes.fromhex("050003ff00"),
                bytes.fromhex("0f000a00030105"),
                bytes.fromhex("0600140007"),
                bytes.fromhex("10001e00020441200000"),
            ]
            await dev.send(frame(reqs[0][0], 4, reqs[0][2]))  # echoed
            await dev.send(frame(reqs[1][0], 4, bytes((0x8F, 0x02))))  # refused
            await dev.send(frame(reqs[3][0], 4, reqs[3][2][:5]))  # echoed; reqs[2]: never
            end = await asyncio.wait_for(task, 10)
            assert end is not None and sorted(done) == [0, 3]
            assert refused[1].exception_code == 2
            assert refused[1].reason.endswith(
                "write coil 10+3: exception 0x02 (illegal data address)"
            )
            ((k, tried),) = end.rest
            assert k == 2 and tried is not None
            with pytest.raises(
                ModbusDeviceError, match=r"write holding 20: no response .*\(2 attempt"
            ):
                await link.write_register(20, 7, tried=tried)
            assert [pdu for _, _, pdu in dev.requests].count(reqs[2][2]) == 2

    run(go)
