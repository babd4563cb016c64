"""The fault campaign (``thermogate bench faults``), each class in a quick version.

Real sockets, real subprocesses and real SQLite as in the full campaign; only
the counts and durations are small. Every assertion is about behaviour:
counts, orders and the controller's own records, never the wall clock.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from thermogate.controller.faults.fuzz import run_fuzz
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site


@pytest.mark.timeout(60)
def test_server_fuzz_crashes_nothing_and_every_correct_read_after_it_is_answered_exactly():
    res = run_fuzz(seed=3, frames=600)
    out = res.as_json()
    assert out["failures"] == [] and res.crashes == 0, out
    assert out["frames"] >= 600 and out["abandoned_connections"] > 0
    assert out["correct_answers_between"] > 0  # streams stayed in step through the garbage
    assert out["closed_on_bad_header"] > 0  # and the hopeless ones were closed
    assert out["answers_after"] == "correct" and res.ok


@pytest.mark.timeout(30)
def test_a_burst_past_the_receive_buffer_closes_that_stream_and_no_other():
    """pymodbus wiped a buffer above 8 KiB silently and went on out of step."""

    async def scenario() -> None:
        sp = ServedPlant(ScenarioPlant(demo_site(), "normal-day"), speed=1.0)
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        try:
            b_reader, bystander = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            noise = bytes([0x12, 0x34, 0x80]) + bytes(range(256)) * 40  # ~10 KiB, one write
            writer.write(noise)
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed, nothing answered
            bystander.write(struct.pack(">HHHBBHH", 7, 0, 6, 1, 4, 0, 2))  # opened before
            async with asyncio.timeout(10):
                head = await b_reader.readexactly(9)
            assert head[:2] == b"\x00\x07" and head[7:9] == b"\x04\x04"
            bystander.close()
        finally:
            await sp.server.stop()

    asyncio.run(scenario())
