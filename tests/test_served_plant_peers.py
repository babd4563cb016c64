"""The served plant against rough and independent peers: vanishing clients and
garbage bytes, an RTU master on a pseudo-terminal, and the external ``mbpoll``
against a ``thermogate plant`` process. No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ptys import pty_pair
from served import (
    Heartbeat,
    Master,
    below,
    equals,
    expect_exception,
    run,
    served,
    stepped,
    wait_until,
    within_limits,
)

from thermogate.plc.site import demo_site

# --------------------------------------------------------------------------- #
# robustness: vanishing clients and garbage do not disturb a good client
# --------------------------------------------------------------------------- #


def _mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One MBAP response, or b'' if the server closed the connection."""
    try:
        head = await asyncio.wait_for(reader.readexactly(7), 1.0)
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", exc.partial
        return b""
    length = struct.unpack(">H", head[4:6])[0]
    return head + await asyncio.wait_for(reader.readexactly(length - 1), 1.0)


@pytest.mark.timeout(20)
def test_vanishing_clients_and_garbage_do_not_disturb_another_client() -> None:
    async def scenario() -> None:
        async with served(speed=10.0) as (sp, port):
            pmap = sp.sim.pmap
            unit = sp.sim.site.plc.unit_id
            tank = sp.sim.site.tanks[0].name
            block = [p for p in pmap.for_unit(unit) if p.table == "input"]
            good = Master.tcp(pmap, port, timeout=2.0, retries=0)
            stop = asyncio.Event()
            reads: list[float] = []
            failures: list[BaseException] = []

            async def poll() -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        values = await good.read_points(block)
                        assert len(values) == len(block)
                        assert values[f"{tank}.fluid_temp"] > 0
                    except Exception as exc:  # recorded, asserted below
                        failures.append(exc)
                    reads.append(time.monotonic() - t0)
                    await asyncio.sleep(0.005)

            poller = asyncio.create_task(poll())
            try:
                await asyncio.sleep(0.1)
                valve = pmap[f"{tank}.valve_cmd"]
                read_req = _mbap(1, unit, struct.pack(">BHH", 4, 0, 10))
                write_req = _mbap(2, unit, struct.pack(">BHH", 6, valve.address, 450))
                for frame in (read_req, write_req):
                    # a whole request, then gone before the answer (RST)
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(frame)
                    await w.drain()
                    w.transport.abort()
                    # half a request, then gone
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(frame[: len(frame) // 2])
                    await w.drain()
                    w.transport.abort()
                # connect and vanish without a byte; connect and close politely mid-frame
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.transport.abort()
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(read_req[:5])
                w.close()

                # garbage that cannot be framed: that connection alone is closed
                for junk in (b"\xde\xad\xbe\xef" * 8, struct.pack(">HHHB", 9, 0, 0xFFFF, unit)):
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(junk)
                    await w.drain()
                    assert await _reply(r) == b""
                    w.close()
                # framed garbage: a PDU that does not decode (03), an unknown function (01)
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(_mbap(7, unit, b"\x03") + _mbap(8, unit, b"\x2b\x0e\x01\x00"))
                await w.drain()
                assert (await _reply(r))[7:] == bytes([0x83, 0x03])
                assert (await _reply(r))[7:] == bytes([0xAB, 0x01])
                # and a well-formed request on the same connection still works after it
                w.write(read_req)
                await w.drain()
                reply = await _reply(r)
                assert reply[:2] == b"\x00\x01" and reply[7:9] == bytes([4, 20])
                w.close()
                # random bytes: whatever comes back is whole, well-formed MBAP frames
                # (a reply or an exception), or the server closes that connection
                rng = random.Random(7)
                answered = closed = 0
                for _ in range(20):
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
                    await w.drain()
                    got = b""
                    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                        while chunk := await asyncio.wait_for(r.read(512), 0.3):
                            got += chunk
                        closed += 1
                    answered += bool(got)
                    while got:  # each frame: MBAP header with a length that fits
                        assert len(got) >= 8, got
                        length = struct.unpack(">H", got[4:6])[0]
                        assert got[2:4] == b"\x00\x00" and 2 <= length <= 254, got[:8]
                        frame, got = got[: 6 + length], got[6 + length :]
                        assert len(frame) == 6 + length, "a truncated reply"
                    w.close()
                assert closed + answered > 0  # the junk was dealt with, one way or the other
                await asyncio.sleep(0.1)
            finally:
                stop.set()
                await poller
                good.close()

            # the other client was never held up to its timeout (no wall-clock
            # constant here: a loaded machine may be slow, but not stuck)
            assert not failures, failures[:3]
            assert len(reads) >= 10
            # the server still takes new clients and the clock still runs
            fresh = Master.tcp(pmap, port)
            try:
                t0 = sp.sim.plant.t
                assert await fresh.value("plc.heartbeat_timeout_s") > 0
                await wait_until("clock runs", stepped(sp, t0 + 2.0))
            finally:
                fresh.close()

    run(scenario())


# --------------------------------------------------------------------------- #
# RTU over a pseudo-terminal pair
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_rtu_master_on_a_pty_reads_and_writes_the_served_plant() -> None:
    async def scenario(server_end: str, client_end: str) -> None:
        async with served(speed=50.0, tcp=False, rtu=server_end) as (sp, _):
            pmap = sp.sim.pmap
            plant = sp.sim.plant
            tank = sp.sim.site.tanks[0]
            # 19200 8N1: a Linux pseudo-terminal refuses parity (tcsetattr EINVAL), so the
            # Modbus default 8E1 cannot be used on a pty at either end
            master = Master.rtu(pmap, client_end, parity="N")
            try:
                async with Heartbeat(master, sp):
                    await wait_until("the plant has stepped", stepped(sp, 2.0))
                    values = await master.read_points(pmap.points)
                    assert set(values) == {p.name for p in pmap.points}
                    for p in pmap.points:
                        assert within_limits(p, float(values[p.name])), (p.name, values[p.name])
                    assert values[f"{tank.name}.fluid_temp"] == pytest.approx(
                        plant.T_tank[0], abs=0.5
                    )
                    assert values["plc.safe_state"] is False

                    await master.write(f"{tank.name}.valve_cmd", 35.5)
                    assert await master.value(f"{tank.name}.valve_cmd") == 35.5
                    assert plant.cmd_valve[0] == 35.5
                    await wait_until("valve moving", below(master, f"{tank.name}.valve_pos", 59.0))
                    row = sp.sim.site.rack_rows[0].name
                    await master.write(f"{row}.enable", False)
                    await wait_until(
                        "row power at 0", equals(master, f"{row}.power_kw", lambda: 0.0)
                    )
                    await master.write(f"{row}.enable", True)
                    await expect_exception(
                        3,
                        master.link(tank.unit_id).write_register(
                            pmap[f"{tank.name}.valve_cmd"].address, 1001
                        ),
                    )
                    await expect_exception(
                        2,
                        master.link(tank.unit_id).write_register(
                            pmap[f"{tank.name}.valve_pos"].address, 1
                        ),
                    )
                    assert plant.cmd_valve[0] == 35.5
            finally:
                master.close()

    with pty_pair() as (server_end, client_end):
        run(scenario(server_end, client_end))


# --------------------------------------------------------------------------- #
# an independent peer: mbpoll against the `thermogate plant` command
# --------------------------------------------------------------------------- #

_SCRIPT = Path(sys.executable).with_name("thermogate")
THERMOGATE = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "thermogate.controller.cli"]
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mbpoll(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mbpoll", "-m", "tcp", "-p", str(port), "-1", "-o", "1", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _mbpoll_read(port: int, *args: str) -> dict[int, str]:
    """``{reference: printed value}`` of one mbpoll poll; fails on an mbpoll error."""
    proc = _mbpoll(port, *args, "127.0.0.1")
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return {int(ref): text for ref, text in re.findall(r"^\[(\d+)\]:\s+(\S+)", proc.stdout, re.M)}


def _as_i16(text: str) -> int:
    """mbpoll prints 16-bit registers unsigned (negative ones as ``65236 (-300)``)."""
    return struct.unpack(">h", struct.pack(">H", int(text)))[0]


@pytest.mark.timeout(40)
def test_mbpoll_reads_and_writes_the_thermogate_plant_process() -> None:
    if shutil.which("mbpoll") is None:
        pytest.fail(
            "mbpoll is not on PATH: `apt-get install mbpoll` (CI installs it); this test "
            "checks the plant against an independent Modbus master and must not be skipped"
        )
    listing = subprocess.run(
        [*THERMOGATE, "points", "--format", "csv"], capture_output=True, text=True, timeout=30
    )
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(listing.stdout))}
    order = {
        p["name"]: p["word_order"]
        for p in json.loads(
            subprocess.run(
                [*THERMOGATE, "points", "--format", "json"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        )
    }
    temp = next(
        r
        for n, r in rows.items()
        if n.endswith(".fluid_temp") and r["table"] == "input" and r["type"] == "i16"
    )
    meter = rows["site.power_kw"]
    # a PDU feeding GPUs: still loaded when the watchdog (no heartbeat here) stops mining
    pdu = rows[f"{demo_site().rack_rows[0].pdu}.power_kw"]
    tank = temp["name"].split(".")[0]
    coil = rows[f"{tank}.enable"]
    gpu_tank = next(t.name for t in demo_site().tanks if t.workload != "asic")
    gpu_coil = rows[f"{gpu_tank}.enable"]
    valve = rows[f"{tank}.valve_cmd"]
    valve_pos = rows[f"{tank}.valve_pos"]
    assert (meter["type"], order["site.power_kw"], order[pdu["name"]]) == ("f32", "big", "little")
    assert (coil["table"], valve["table"], valve["access"]) == ("coil", "holding", "rw")

    port = _free_port()
    plant = subprocess.Popen(
        [*THERMOGATE, "plant", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert plant.poll() is None, plant.communicate()[0]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "thermogate plant did not start listening"
            time.sleep(0.1)

        def ref(row: dict[str, str], one_based: bool = False) -> list[str]:
            """-a unit -r address, with -0 for the map's 0-based addresses."""
            address = int(row["address"])
            if one_based:
                return ["-a", row["unit_id"], "-r", str(address + 1)]
            return ["-a", row["unit_id"], "-r", str(address), "-0"]

        def site_kw() -> float:
            reading = _mbpoll_read(port, *ref(meter), "-t", "3:float", "-B")
            return float(reading[int(meter["address"])])

        # the first plant step comes 1 s after start at --speed 1; until then the meters read
        # 0 (see test_a_master_connecting_before_the_first_step_sees_a_running_plant)
        while site_kw() <= 0.0:
            assert time.monotonic() < deadline, "the plant did not step"
            time.sleep(0.1)

        # an i16 temperature in 0.1 degC; 0-based with -0, or the same register 1-based
        address = int(temp["address"])
        zero = _mbpoll_read(port, *ref(temp), "-t", "3")
        one = _mbpoll_read(port, *ref(temp, one_based=True), "-t", "3")
        c0 = _as_i16(zero[address]) * float(temp["scale"])
        c1 = _as_i16(one[address + 1]) * float(temp["scale"])
        assert 20.0 <= c0 <= 70.0, c0
        assert abs(c0 - c1) <= 1.0, (c0, c1)

        # f32 meter values: -B for the high-word-first meters, none for the PDU family
        site = site_kw()
        assert 50.0 <= site <= 6000.0, site
        pdu_kw = float(_mbpoll_read(port, *ref(pdu), "-t", "3:float")[int(pdu["address"])])
        assert 1.0 <= pdu_kw <= 1000.0, pdu_kw
        # -B means high word first: the same two registers as raw hex, decoded that way
        words = _mbpoll_read(port, *ref(meter), "-t", "3:hex", "-c", "2")
        hi, lo = (int(words[int(meter["address"]) + k], 16) for k in (0, 1))
        high_first = struct.unpack(">f", struct.pack(">HH", hi, lo))
        assert high_first[0] == pytest.approx(site, rel=0.05)

        # coils: the plant starts as its PLC holds a hall no controller has run yet,
        # mining off and GPU tanks on (at the safe cap)
        assert next(t for t in demo_site().tanks if t.name == tank).workload == "asic"
        assert _mbpoll_read(port, *ref(coil), "-t", "0")[int(coil["address"])] == "0"
        assert _mbpoll_read(port, *ref(gpu_coil), "-t", "0")[int(gpu_coil["address"])] == "1"

        # write a holding register (valve command 45.5 % = 455 counts) and read it back
        proc = _mbpoll(port, *ref(valve), "-t", "4", "127.0.0.1", "455")
        assert proc.returncode == 0 and "Written 1 references" in proc.stdout, proc
        assert _mbpoll_read(port, *ref(valve), "-t", "4")[int(valve["address"])] == "455"
        assert (
            _mbpoll_read(port, *ref(valve, one_based=True), "-t", "4")[int(valve["address"]) + 1]
            == "455"
        )

        # illegal value (150 %) and illegal address (a read-only register): mbpoll reports
        # the exception and exits non-zero; the command is unchanged
        proc = _mbpoll(port, *ref(valve), "-t", "4", "127.0.0.1", "1500")
        assert proc.returncode != 0, proc
        assert "Illegal data value" in proc.stderr, proc.stderr
        proc = _mbpoll(port, *ref(valve_pos), "-t", "4", "127.0.0.1", "100")
        assert proc.returncode != 0 and "Illegal data address" in proc.stderr, proc
        assert _mbpoll_read(port, *ref(valve), "-t", "4")[int(valve["address"])] == "455"
    finally:
        if plant.poll() is None:
            plant.send_signal(signal.SIGINT)
        try:
            out, _ = plant.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            plant.kill()
            out, _ = plant.communicate()
    assert plant.returncode == 0, out
    assert f"Modbus TCP on 127.0.0.1:{port}" in out and "-0" in out, out
    assert "thermogate plant: stopped" in out, out
