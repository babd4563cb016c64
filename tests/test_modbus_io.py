"""The controller's Modbus edge (``controller.modbus_io``) against the served plant.

Every test talks over real TCP sockets on 127.0.0.1 to the simulated plant
(``ServedPlant``: the plant model behind ``PlantModbusServer``) or to a bare
``PlantModbusServer`` with a hand-made map; no mocks. pytest-asyncio is not
used: each test drives its own event loop with ``asyncio.run``.

Wall-clock bounds asserted here are the module's contract (a scan never
outlasts its budget, a skipped unit costs nothing); the durations of a
normal scan are printed, not asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import numpy as np
import pytest
from ptys import pty_pair

from thermogate.controller.modbus_io import Endpoint, ModbusIO, ReadResult
from thermogate.hil.image import SENTINEL
from thermogate.hil.modbus_server import DeviceImage, PlantModbusServer
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.codec import decode, encode
from thermogate.plc.pointmap import PointMap, build_point_map
from thermogate.plc.points import Point
from thermogate.plc.site import Site, demo_site, demo_site_text, parse_site_text
from thermogate.plc.sitegen import SiteSpec, generate_site_toml
from thermogate.plc.transport import ModbusLink

#: Scheduling slack on top of a budget for a loaded CI host (the budget itself is enforced).
SLACK_S = 0.15

# timeouts of 0.15 s with the plant served in this process: the heap as a controller's
pytestmark = pytest.mark.usefixtures("production_heap")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def served(
    site: Site | None = None, speed: float = 1.0
) -> AsyncIterator[tuple[ServedPlant, int]]:
    """A site's plant (exact sensors) served on an ephemeral TCP port, its clock running."""
    sp = ServedPlant(ScenarioPlant(site or demo_site(), "normal-day", sensors=False), speed=speed)
    _, port = await sp.server.start_tcp("127.0.0.1", 0)
    clock = asyncio.create_task(sp.run())
    try:
        yield sp, port
        if clock.done():
            clock.result()  # the serving loop must never end on its own
    finally:
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        await sp.server.stop()


def connections(server: PlantModbusServer) -> int:
    """Open client connections on the server's TCP listener(s) (pymodbus bookkeeping)."""
    return sum(len(s.active_connections) for s in server._servers)


def unit_mask(pmap: PointMap, unit: int) -> np.ndarray:
    return np.array([p.unit_id == unit for p in pmap.points])


def quantum(p: Point, truth: float) -> float:
    """The largest difference the wire encoding of ``truth`` may introduce."""
    if p.type == "bool":
        return 0.0
    if p.type == "f32":
        return abs(truth) * 2.0**-23
    return abs(p.scale) / 2.0 * (1.0 + 1e-9)


async def stable_read(io: ModbusIO, sp: ServedPlant) -> tuple[ReadResult, np.ndarray]:
    """A read_all during which the plant did not step, and the plant's sample at that time."""
    for _ in range(20):
        t0 = sp.sim.plant.t
        result = await io.read_all()
        if sp.sim.plant.t == t0:
            return result, sp.sim.plant.sensors.sample().copy()
        await asyncio.sleep(0.01)
    raise AssertionError("the plant stepped during every read")


async def scan_until(io: ModbusIO, done: Any, timeout: float, period: float = 0.05) -> ReadResult:
    """read_all every ``period`` until ``done(result)``; that result."""
    start = time.monotonic()
    while True:
        result = await io.read_all()
        assert result.duration_s <= io.scan_budget_s + SLACK_S
        if done(result):
            return result
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {result.errors}")
        await asyncio.sleep(period)


async def scan_until_recovered(io: ModbusIO, timeout: float) -> ReadResult:
    """Scan until every point is fresh; every failure on the way must be a backoff skip.

    That pins recovery by order rather than by a clock: once the fault is gone,
    the first probe of each unit succeeds; no unit fails a real try again.
    """
    start = time.monotonic()
    while True:
        result = await io.read_all()
        assert result.duration_s <= io.scan_budget_s + SLACK_S
        tried_and_failed = {u: e for u, e in result.errors.items() if "backoff" not in e}
        assert not tried_and_failed, tried_and_failed
        if result.fresh.all():
            return result
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not recovered within {timeout} s: {result.errors}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- #
# reading and writing the demo hall
# --------------------------------------------------------------------------- #


def test_read_all_returns_every_point_fresh_and_equal_to_the_plant() -> None:
    async def go() -> None:
        async with served() as (sp, port):
            pmap = sp.sim.pmap
            io = ModbusIO(pmap, Endpoint("tcp", port=port))
            try:
                result, truth = await stable_read(io, sp)
                assert result.fresh.all() and not np.isnan(result.values).any(), result.errors
                assert result.errors == {}
                assert result.unit_ok == dict.fromkeys(pmap.unit_ids(), True)
                assert result.values.dtype == np.float64 and result.values.shape == (len(pmap),)
                for i, p in enumerate(pmap.points):
                    if p.writable:  # commands are what the masters wrote: check the served image
                        image = sp.images[p.unit_id]
                        expected = float(decode(p, image.get_registers(p)))
                        assert result.values[i] == expected, p.name
                    else:
                        err = abs(result.values[i] - truth[i])
                        assert err <= quantum(p, truth[i]), (p.name, result.values[i], truth[i])
                # one TCP connection per unit id, all to the same address
                assert connections(sp.server) == len(pmap.unit_ids())
                durations = sorted([(await io.read_all()).duration_s for _ in range(50)])
                print(
                    f"\ndemo hall: {len(pmap)} points, {io.requests_per_scan} requests, "
                    f"{len(pmap.unit_ids())} units; read_all p50 "
                    f"{statistics.median(durations) * 1e3:.1f} ms, "
                    f"max {durations[-1] * 1e3:.1f} ms"
                )
            finally:
                await io.close()
            await asyncio.sleep(0.05)
            assert connections(sp.server) == 0

    run(go())


def test_writes_are_grouped_range_checked_and_read_back() -> None:
    async def go() -> None:
        async with served() as (sp, port):
            pmap, plant = sp.sim.pmap, sp.sim.plant
            io = ModbusIO(pmap, Endpoint("tcp", port=port))
            try:
                valve, budget = pmap["tank01.valve_cmd"], pmap["tank01.power_budget_kw"]
                assert (valve.unit_id, valve.address + 1) == (budget.unit_id, budget.address)
                before = sp.writes
                out = await io.write(
                    [("tank01.power_budget_kw", 123.4), ("tank01.valve_cmd", 37.5)]
                )
                assert [(o.point, o.value, o.ok, o.error) for o in out] == [
                    ("tank01.power_budget_kw", 123.4, True, None),
                    ("tank01.valve_cmd", 37.5, True, None),
                ]
                assert sp.writes == before + 1  # one FC16 carried both
                assert plant.command_value("tank01.valve_cmd") == pytest.approx(37.5)
                assert plant.command_value("tank01.power_budget_kw") == pytest.approx(123.4)
                back = await io.read_points(["tank01.valve_cmd", "tank01.power_budget_kw"])
                assert back == pytest.approx(
                    {"tank01.valve_cmd": 37.5, "tank01.power_budget_kw": 123.4}
                )

                # a coil (FC5), and two coils that are not adjacent (two requests)
                out = await io.write([("tank01.enable", False), ("tank02.enable", 0)])
                assert all(o.ok for o in out), out
                assert plant.command_value("tank01.enable") == 0.0
                assert (await io.read_points(["tank01.enable"])) == {"tank01.enable": 0.0}
                assert (await io.write([("tank01.enable", True)]))[0].ok
                assert plant.command_value("tank01.enable") == 1.0

                # refused locally: nothing goes on the wire, the good write still does
                writes, rejected = sp.writes, sp.rejected_writes
                too_much = budget.max + 1.0  # type: ignore[operator]
                out = await io.write(
                    [
                        ("tank01.power_budget_kw", too_much),
                        ("tank01.valve_cmd", -0.1),
                        ("tank01.valve_cmd", math.nan),
                        ("tank01.fluid_temp", 20.0),
                        ("no.such_point", 1.0),
                        ("tank01.power_budget_kw", "lots"),  # type: ignore[list-item]
                        ("tank01.enable", 2),
                    ]
                )
                assert not any(o.ok for o in out)
                errors = [o.error or "" for o in out]
                assert "outside its range 0..253" in errors[0] and "kW" in errors[0]
                assert "outside its range 0..100" in errors[1]
                assert "not finite" in errors[2]
                assert "read-only" in errors[3]
                assert "unknown point" in errors[4]
                assert "not a number" in errors[5]
                assert "not a bit" in errors[6]
                assert (sp.writes, sp.rejected_writes) == (writes, rejected)
                assert plant.command_value("tank01.power_budget_kw") == pytest.approx(123.4)

                # a batch with a bad and a good value: only the good one is sent
                out = await io.write([("tank01.valve_cmd", 101.0), ("tank02.valve_cmd", 12.3)])
                assert [o.ok for o in out] == [False, True]
                assert sp.writes == writes + 1
                assert plant.command_value("tank02.valve_cmd") == pytest.approx(12.3)

                # the same point twice in one call: the last value wins, the first says so
                out = await io.write([("tank03.valve_cmd", 10.0), ("tank03.valve_cmd", 20.0)])
                assert [o.ok for o in out] == [False, True] and "superseded" in (out[0].error or "")
                assert plant.command_value("tank03.valve_cmd") == pytest.approx(20.0)

                with pytest.raises(KeyError, match="nope"):
                    await io.read_points(["tank01.valve_cmd", "nope"])
                assert await io.read_points([]) == {}
                assert await io.write([]) == []
            finally:
                await io.close()

    run(go())


def demo_pmap() -> PointMap:
    return build_point_map(demo_site())


def test_a_point_the_device_refuses_does_not_take_its_neighbours_in_the_same_request() -> None:
    """A PLC whose tank01 is smaller than the controller's map says refuses the
    budget (exception 03) of the FC16 that carried the cooling valve beside it:
    the valve once went down with it (4 of 10 valve writes lost). Each point of a
    refused request is now sent again alone."""
    text = demo_site_text().replace("units = 46\n", "units = 24\n", 1)  # tank01: 132 kW
    plc_site = parse_site_text(text, "<plc>")

    async def go() -> None:
        async with served(plc_site) as (sp, port):
            plant = sp.sim.plant
            io = ModbusIO(demo_pmap(), Endpoint("tcp", port=port))
            try:
                out = await io.write(
                    [("tank01.power_budget_kw", 200.0), ("tank01.valve_cmd", 47.4)]
                )
                assert [o.point for o in out] == ["tank01.power_budget_kw", "tank01.valve_cmd"]
                assert not out[0].ok and "illegal data value" in (out[0].error or "")
                assert out[1].ok, out[1].error
                assert plant.command_value("tank01.valve_cmd") == pytest.approx(47.4)
                # a run the device takes whole is still one request
                before = sp.writes
                out = await io.write(
                    [("tank01.power_budget_kw", 100.0), ("tank01.valve_cmd", 50.0)]
                )
                assert all(o.ok for o in out) and sp.writes == before + 1
            finally:
                await io.close()

    run(go())


# --------------------------------------------------------------------------- #
# failures: a silent unit, an answering-but-failing unit, the server gone
# --------------------------------------------------------------------------- #


async def _all_fresh(io: ModbusIO, tries: int = 20, wait_s: float = 0.35) -> bool:
    """Read until every point is fresh, waiting out the reconnect backoff between."""
    for _ in range(tries):
        if (await io.read_all()).fresh.all():
            return True
        await asyncio.sleep(wait_s)
    return False


def test_a_silent_unit_is_stale_within_budget_then_skipped_then_recovers() -> None:
    async def go() -> None:
        async with served(speed=20.0) as (sp, port):
            pmap = sp.sim.pmap
            unit = pmap["loop1.pump_a.speed"].unit_id
            mine = unit_mask(pmap, unit)
            io = ModbusIO(
                pmap,
                Endpoint("tcp", port=port),
                timeout_s=0.15,
                retries=1,
                # the two tries (0.3 s) end well inside the budget even on a loaded
                # machine, so the unit's error is the timeouts', not the budget's
                scan_budget_s=0.6,
                backoff_initial_s=0.3,
                backoff_max_s=1.0,
            )
            try:
                # connected first: on a loaded machine a 0.15 s connect may take a retry
                assert await _all_fresh(io)
                sp.server.set_fault(unit, "timeout")

                first = await io.read_all()
                assert first.duration_s <= io.scan_budget_s + SLACK_S
                assert not first.fresh[mine].any() and np.isnan(first.values[mine]).all()
                # the other units have their own connections: not held up by the silent one
                assert first.fresh[~mine].all(), first.errors
                assert first.unit_ok[unit] is False and set(first.errors) == {unit}
                assert "no response" in first.errors[unit]
                assert io.backoff_s(unit) > 0

                seen = sp.server.requests_seen
                skipped = 0
                periods = [io.backoff_period_s(unit)]  # after each failed probe
                deadline = time.monotonic() + 30.0  # only against a hang
                while len(periods) < 5:
                    assert time.monotonic() < deadline, (skipped, periods)
                    before = seen[unit]
                    r = await io.read_all()
                    assert r.duration_s <= io.scan_budget_s + SLACK_S
                    assert not r.fresh[mine].any() and np.isnan(r.values[mine]).all()
                    assert r.fresh[~mine].all(), r.errors
                    if "backoff" in r.errors[unit]:
                        skipped += 1
                        # skipped means not asked at all: nothing reached the silent unit
                        assert seen[unit] == before, r.errors[unit]
                    else:
                        assert seen[unit] > before  # a probe, and it failed again
                        periods.append(io.backoff_period_s(unit))
                    await asyncio.sleep(0.05)
                # one timeout per backoff period, the period doubling up to its cap:
                # 0.3, 0.6, 1.0, 1.0 s, and every scan between probes skipped it
                assert periods == [0.3, 0.6, 1.0, 1.0, 1.0], periods
                assert skipped >= 1

                # a write to the skipped unit fails at once, without a request to it
                await scan_until(io, lambda r: io.backoff_s(unit) > 0.1, timeout=2.0)
                before = seen[unit]
                (out,) = await io.write([("loop1.pump_a.speed_cmd", 50.0)])
                assert not out.ok and f"unit {unit} skipped" in (out.error or ""), out
                assert seen[unit] == before

                # healed: skipped until its backoff ends, then the first probe succeeds
                sp.server.set_fault(unit, None)
                back = await scan_until_recovered(io, timeout=3.0)
                assert back.unit_ok[unit] and back.errors == {} and io.backoff_s(unit) == 0
            finally:
                await io.close()

    run(go())


def test_server_stopped_mid_scan_then_restarted_on_the_same_port() -> None:
    async def go() -> None:
        async with served(speed=20.0) as (sp, port):
            pmap = sp.sim.pmap
            io = ModbusIO(
                pmap,
                Endpoint("tcp", port=port),
                timeout_s=0.15,
                scan_budget_s=0.4,
                backoff_initial_s=0.2,
                backoff_max_s=0.8,
            )
            try:
                assert (await io.read_all()).fresh.all()
                scan = asyncio.create_task(io.read_all())
                await asyncio.sleep(0.003)
                await sp.server.stop()
                r = await scan  # no exception escapes
                assert r.duration_s <= io.scan_budget_s + SLACK_S
                everything_stale = await scan_until(io, lambda r: not r.fresh.any(), timeout=1.0)
                assert np.isnan(everything_stale.values).all()
                assert set(everything_stale.errors) == set(pmap.unit_ids())
                for _ in range(10):  # down: every scan stays inside its budget
                    r = await io.read_all()
                    assert not r.fresh.any() and r.duration_s <= io.scan_budget_s + SLACK_S
                    await asyncio.sleep(0.05)
                (out,) = await io.write([("tank01.valve_cmd", 30.0)])
                assert not out.ok
                assert await io.read_points(["tank01.valve_cmd"]) == {
                    "tank01.valve_cmd": pytest.approx(math.nan, nan_ok=True)
                }

                await sp.server.start_tcp("127.0.0.1", port)
                back = await scan_until_recovered(io, timeout=3.0)
                assert back.errors == {} and all(back.unit_ok.values())
                assert connections(sp.server) == len(pmap.unit_ids())
                assert (await io.write([("tank01.valve_cmd", 30.0)]))[0].ok
            finally:
                await io.close()

    run(go())


def test_rtu_line_shared_by_every_unit_and_a_silent_station_on_it() -> None:
    async def go(server_end: str, client_end: str) -> None:
        sp = ServedPlant(ScenarioPlant(demo_site(), "normal-day", sensors=False), speed=20.0)
        # a Linux pseudo-terminal refuses parity: 8N1 at both ends
        await sp.server.start_rtu(server_end, parity="N")
        clock = asyncio.create_task(sp.run())
        pmap = sp.sim.pmap
        io = ModbusIO(
            pmap,
            Endpoint("rtu", device=client_end, parity="N"),
            timeout_s=0.15,
            scan_budget_s=1.0,
            backoff_initial_s=2.0,
        )
        try:
            r = await io.read_all()
            assert r.fresh.all(), r.errors
            assert (await io.write([("tank01.valve_cmd", 44.4)]))[0].ok
            assert await io.read_points(["tank01.valve_cmd"]) == {
                "tank01.valve_cmd": pytest.approx(44.4)
            }
            unit = pmap["loop1.dc1.fan_speed"].unit_id
            mine = unit_mask(pmap, unit)
            sp.server.set_fault(unit, "timeout")  # on RTU: a station that stays silent
            r = await io.read_all()
            assert r.duration_s <= io.scan_budget_s + SLACK_S
            assert not r.fresh[mine].any() and r.fresh[~mine].all(), r.errors
            before = sp.server.requests_seen[unit]
            r = await io.read_all()  # skipped now: the line is not held up by it
            assert "backoff" in r.errors[unit] and r.fresh[~mine].all()
            assert sp.server.requests_seen[unit] == before  # no frame for it on the line
        finally:
            await io.close()
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
            await sp.server.stop()

    with pty_pair() as (server_end, client_end):
        run(go(server_end, client_end))


# --------------------------------------------------------------------------- #
# decoding: sentinels, a request the device refuses, 32-bit word orders
# --------------------------------------------------------------------------- #


def _pt(name: str, address: int, type_: str, **kw: Any) -> Point:
    return Point(name, kw.pop("unit_id", 7), kw.pop("table", "input"), address, type_, **kw)  # type: ignore[arg-type]


def test_sentinels_decode_to_nan_and_a_refused_request_stales_only_its_points() -> None:
    served_points = (
        _pt("a.i16", 0, "i16", scale=0.1),
        _pt("a.u16", 1, "u16", scale=0.1),
        _pt("a.u32", 2, "u32", scale=0.01),
        _pt("a.i32", 4, "i32"),
        _pt("a.i32le", 6, "i32", scale=0.5, word_order="little"),
        _pt("a.f32", 8, "f32"),
        _pt("a.flag", 10, "bool"),
        _pt("a.ok_i16", 11, "i16"),
        _pt("a.ok_u16", 12, "u16"),
        _pt("a.coil", 0, "bool", table="coil", access="rw"),
        _pt("a.set", 0, "i32", table="holding", access="rw", scale=0.1, min=-1e6, max=1e6),
    )
    # the controller's map also has a point the device does not serve: exception 02
    extra = _pt("a.beyond", 900, "u16")
    pmap = PointMap((*served_points, extra))

    async def go() -> None:
        image = DeviceImage(7, served_points)
        server = PlantModbusServer({7: image})
        _, port = await server.start_tcp("127.0.0.1", 0)
        io = ModbusIO(pmap, {7: Endpoint("tcp", port=port)})
        try:
            hi_lo = [SENTINEL["u32"] >> 16, SENTINEL["u32"] & 0xFFFF]
            image.set_registers("a.i16", SENTINEL["i16"])
            image.set_registers("a.u16", SENTINEL["u16"])
            image.set_registers("a.u32", hi_lo)
            image.set_registers("a.i32", [0x8000, 0x0000])
            image.set_registers("a.i32le", [0x0000, 0x8000])  # low word first
            image.set_registers("a.f32", [0x7FC0, 0x0000])  # f32 NaN
            image.set_registers("a.flag", 0xFFFF)  # a BOOL register: true, not a sentinel
            image.set_registers("a.ok_i16", 0x8001)  # one count above the sentinel: a value
            image.set_registers("a.ok_u16", 0xFFFE)
            r = await io.read_all()
            got = dict(zip((p.name for p in pmap.points), r.values.tolist(), strict=True))
            fresh = dict(zip((p.name for p in pmap.points), r.fresh.tolist(), strict=True))
            for name in ("a.i16", "a.u16", "a.u32", "a.i32", "a.i32le", "a.f32"):
                assert math.isnan(got[name]) and fresh[name], name  # read, and reported failed
            assert got["a.flag"] == 1.0 and got["a.ok_i16"] == -32767 and got["a.ok_u16"] == 65534
            assert not fresh["a.beyond"] and math.isnan(got["a.beyond"])
            assert r.unit_ok[7] is False and "exception 0x02" in r.errors[7]
            assert all(fresh[p.name] for p in served_points)

            image.set_registers("a.i32le", encode(served_points[4], -12.5))
            image.set_registers("a.u32", encode(served_points[2], 42949672.9))
            back = await io.read_points(["a.i32le", "a.u32", "a.beyond"])
            assert back["a.i32le"] == -12.5 and back["a.u32"] == pytest.approx(42949672.9)
            assert math.isnan(back["a.beyond"])

            out = await io.write([("a.set", -1234.5), ("a.coil", True)])
            assert all(o.ok for o in out), out
            assert image.get_registers("a.set") == encode(served_points[10], -1234.5)
            assert image.get_registers("a.coil") == [True]
            assert await io.read_points(["a.set", "a.coil"]) == {"a.set": -1234.5, "a.coil": 1.0}
        finally:
            await io.close()
            await server.stop()

    run(go())


def test_configuration_mistakes_are_refused_up_front() -> None:
    pmap = PointMap((_pt("a.x", 0, "u16"), _pt("b.y", 0, "u16", unit_id=8)))
    with pytest.raises(ValueError, match=r"no endpoint for unit id\(s\) \[8\]"):
        ModbusIO(pmap, {7: Endpoint("tcp")})
    with pytest.raises(ValueError, match="device path"):
        ModbusIO(pmap, Endpoint("rtu"))
    with pytest.raises(ValueError, match="backoff"):
        ModbusIO(pmap, Endpoint("tcp"), backoff_initial_s=2.0, backoff_max_s=1.0)
    with pytest.raises(ValueError, match="dedicated"):
        ModbusLink(1, kind="rtu", target=("/dev/null", 9600, "E", 1, 8), dedicated=True)


def test_nothing_listening_costs_at_most_the_budget() -> None:
    async def go() -> None:
        pmap = PointMap((_pt("a.x", 0, "u16"), _pt("b.y", 0, "u16", unit_id=8)))
        io = ModbusIO(pmap, Endpoint("tcp", host="127.0.0.1", port=1), scan_budget_s=0.3)
        try:
            for _ in range(3):
                r = await io.read_all()
                assert not r.fresh.any() and r.duration_s <= io.scan_budget_s + SLACK_S
                assert set(r.errors) == {7, 8}
        finally:
            await io.close()

    run(go())


# --------------------------------------------------------------------------- #
# a large site
# --------------------------------------------------------------------------- #


def test_a_ten_thousand_point_site_reads_completely() -> None:
    spec = SiteSpec(asic_tanks=330, gpu_tanks=30, rack_rows=15, tanks_per_plc=12)
    site = parse_site_text(generate_site_toml(spec), "generated.toml")

    async def go() -> None:
        async with served(site) as (sp, port):
            pmap = sp.sim.pmap
            assert len(pmap) >= 10_000
            # generous budget: plant server and controller share one CPU and one event loop here
            io = ModbusIO(pmap, Endpoint("tcp", port=port), scan_budget_s=5.0)
            try:
                result, truth = await stable_read(io, sp)
                assert result.fresh.all() and not result.errors
                ro = np.array([not p.writable for p in pmap.points])
                tol = np.array([quantum(p, t) for p, t in zip(pmap.points, truth, strict=True)])
                assert (np.abs(result.values - truth)[ro] <= tol[ro]).all()
                durations = []
                for _ in range(50):
                    r = await io.read_all()
                    assert r.fresh.all(), r.errors
                    durations.append(r.duration_s)
                durations.sort()
                print(
                    f"\nlarge site: {len(pmap)} points, {io.requests_per_scan} requests, "
                    f"{len(pmap.unit_ids())} units; read_all p50 "
                    f"{statistics.median(durations) * 1e3:.1f} ms, "
                    f"max {durations[-1] * 1e3:.1f} ms (server in the same process)"
                )
            finally:
                await io.close()

    run(go())
