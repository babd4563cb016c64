"""The demo plant served over real Modbus, driven by a real master.

Each test runs a ``ServedPlant`` (the simulated demo hall stepping on its
accelerated clock) in-process on 127.0.0.1 or on a socat pseudo-terminal
pair, and talks to it the way the controller will: ``ModbusLink`` for the
wire, ``plan_reads`` for the requests and ``plc.codec`` for the values. The
last test needs no thermogate code on the master side at all: the external
``mbpoll`` binary against a ``thermogate plant`` process.

No mocks. Times are simulated seconds (``plant.t``) unless said otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Coroutine
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from served import (
    Heartbeat,
    Master,
    above,
    equals,
    expect_exception,
    normal_day_with,
    run,
    served,
    stepped,
    wait_until,
    within_limits,
)

from thermogate.hil.image import SENTINEL
from thermogate.hil.plant import VALVE_STROKE_PCT_S
from thermogate.hil.scenario import load_scenario
from thermogate.hil.serve import TICK_S, ServedPlant
from thermogate.plc.codec import RAW_RANGE, decode, encode
from thermogate.plc.errors import CodecError, ModbusDeviceError
from thermogate.plc.pointmap import (
    STATUS_HEARTBEAT_OK,
    STATUS_SAFE_STATE,
    PointMap,
)
from thermogate.plc.points import TABLES, Point
from thermogate.plc.site import demo_site

# --------------------------------------------------------------------------- #
# reading the whole map
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_every_point_reads_within_its_range_and_agrees_with_the_plant() -> None:
    site = demo_site()
    tank_b = site.tanks[1].name
    # One NaN sensor of each integer type and an f32: the only places a sentinel may appear.
    nan_points = {
        f"{tank_b}.fluid_temp": "i16",
        f"{site.loops[0].name}.dp": "u16",
        f"{site.feeders[0].name}.energy_kwh": "u32",
        "site.frequency_hz": "f32",
    }
    scenario = normal_day_with(
        "".join(
            f'[[faults]]\nat_s = 0\ntarget = "sensor:{name}"\nkind = "nan"\n' for name in nan_points
        )
    )

    async def scenario_run() -> None:
        async with served(scenario, speed=10.0) as (sp, port):
            pmap = sp.sim.pmap
            for name, type_ in nan_points.items():
                assert pmap[name].type == type_, name
            master = Master.tcp(pmap, port)
            try:
                async with Heartbeat(master, sp):
                    await wait_until("the plant has stepped", stepped(sp, 3.0))
                    values = await master.read_points(pmap.points)
                    plant = sp.sim.plant
                    truth = _truth(sp)
                    raw = {name: await master.raw(name) for name in nan_points}
            finally:
                master.close()

            # every point of every unit id was answered by the planned requests
            assert set(values) == {p.name for p in pmap.points}
            assert {p.unit_id for p in pmap.points} == set(sp.images)

            for p in pmap.points:
                v = values[p.name]
                if p.name in nan_points:
                    continue
                assert not (isinstance(v, float) and math.isnan(v)), p.name
                assert within_limits(p, float(v)), (p.name, v, p.min, p.max)

            # NaN sensors: the type's sentinel on integer registers, NaN on an f32
            for name, type_ in nan_points.items():
                p = pmap[name]
                if type_ == "f32":
                    assert math.isnan(values[name]), name
                    continue
                sentinel = SENTINEL[type_]
                words = [sentinel] if p.words == 1 else [sentinel >> 16, sentinel & 0xFFFF]
                if p.word_order == "little":
                    words.reverse()
                assert raw[name] == words, (name, raw[name])

            # values agree with the plant's truth within sensor noise and one tick of drift
            for i, tank in enumerate(site.tanks):
                if f"{tank.name}.fluid_temp" not in nan_points:
                    assert values[f"{tank.name}.fluid_temp"] == pytest.approx(
                        plant.T_tank[i], abs=0.5
                    )
                assert values[f"{tank.name}.fluid_temp_b"] == pytest.approx(
                    plant.T_tank[i], abs=0.5
                )
                assert values[f"{tank.name}.power_kw"] == pytest.approx(
                    plant.t_power[i], rel=0.03, abs=1.0
                )
            for i, loop in enumerate(site.loops):
                assert values[f"{loop.name}.supply_temp"] == pytest.approx(plant.T_cold[i], abs=0.5)
            assert values["site.power_kw"] == pytest.approx(plant.site_kw, rel=0.03)
            assert values["site.ambient_temp"] == pytest.approx(plant.ambient, abs=0.5)

            # commands read back exactly as the plant holds them (no noise on commands)
            for p in pmap.writable():
                if p.name in ("plc.heartbeat", "plc.reset"):
                    continue
                assert values[p.name] == pytest.approx(truth[p.name], abs=p.scale / 2), p.name

            # the PLC block: heartbeat alive, no safe state, its timeout as configured
            status = int(values["plc.status"])
            assert status & STATUS_HEARTBEAT_OK and not status & STATUS_SAFE_STATE
            assert values["plc.safe_state"] is False
            assert values["plc.heartbeat_timeout_s"] == site.plc.heartbeat_timeout_s

    run(scenario_run())


def _truth(sp: ServedPlant) -> dict[str, float]:
    truth = sp.sim.plant.sensors.truth()
    return {p.name: float(truth[i]) for i, p in enumerate(sp.sim.pmap.points)}


@pytest.mark.timeout(10)
def test_a_master_connecting_before_the_first_step_sees_a_running_plant() -> None:
    async def scenario() -> None:
        async with served(speed=1.0) as (sp, port):
            master = Master.tcp(sp.sim.pmap, port)
            try:
                assert sp.sim.plant.t == 0.0
                loop, tank = sp.sim.site.loops[0].name, sp.sim.site.tanks[0].name
                values = await master.read_points(
                    [sp.sim.pmap[n] for n in ("site.power_kw", f"{loop}.flow", f"{tank}.power_kw")]
                )
            finally:
                master.close()
            assert values["site.power_kw"] > 0, "site meter reads 0 kW with the hall running"
            assert values[f"{loop}.flow"] > 0, "loop flow reads 0 with its pump running"
            assert values[f"{tank}.power_kw"] > 0, "a tank with all miners online draws 0 kW"

    run(scenario())


# --------------------------------------------------------------------------- #
# writes move the plant
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_writes_from_the_master_move_the_plant() -> None:
    async def scenario() -> None:
        async with served(speed=50.0) as (sp, port):
            plant = sp.sim.plant
            tank = sp.sim.site.tanks[0]
            i = 0
            master = Master.tcp(sp.sim.pmap, port)
            try:
                async with Heartbeat(master, sp) as beat:
                    await wait_until("the plant has stepped", stepped(sp, 2.0))
                    # the heartbeat lands: read back, and the PLC's age counter stays young
                    await wait_until(
                        "heartbeat read back",
                        equals(master, "plc.heartbeat", lambda: beat.value, tol=2),
                    )
                    assert await master.value("plc.heartbeat_age_s") < 5.0

                    # --- valve: command 20 %, the position follows at the actuator's rate
                    valve, pos = f"{tank.name}.valve_cmd", f"{tank.name}.valve_pos"
                    pos0 = await master.value(pos)
                    assert pos0 == pytest.approx(60.0, abs=0.1)
                    t_write = plant.t
                    await master.write(valve, 20.0)
                    assert await master.value(valve) == 20.0
                    assert plant.cmd_valve[i] == 20.0
                    trace: list[tuple[float, float]] = []

                    async def closed() -> bool:
                        p = await master.value(pos)
                        trace.append((plant.t, p))
                        return p <= 20.05

                    await wait_until("valve_pos reaches 20 %", closed, timeout=5.0)
                    positions = [p for _, p in trace]
                    assert all(b <= a + 0.05 for a, b in pairwise(positions)), positions
                    assert len(set(positions)) > 3, "the valve jumped instead of stroking"
                    for t, p in trace:  # never faster than the actuator's stroke rate
                        assert p >= pos0 - VALVE_STROKE_PCT_S * (t - t_write) - 0.15, (t, p)
                    assert trace[-1][1] == pytest.approx(20.0, abs=0.05)

                    # --- workload enable coil off: the tank's IT power goes to 0
                    power, online = f"{tank.name}.power_kw", f"{tank.name}.units_online"
                    assert await master.value(power) > 0.5 * tank.units * tank.unit_power_kw
                    await master.write(f"{tank.name}.enable", False)
                    assert await master.value(f"{tank.name}.enable") is False
                    assert not plant.cmd_enable[i]
                    await wait_until("tank power at 0", equals(master, power, lambda: 0.0))
                    assert await master.value(online) == 0
                    await master.write(f"{tank.name}.enable", True)
                    await wait_until("tank back on", above(master, power, 10.0))

                    # --- power budget: the miners follow their target
                    budget = round(0.5 * tank.units * tank.unit_power_kw, 1)
                    await master.write(f"{tank.name}.power_budget_kw", budget)
                    assert plant.cmd_budget[i] == pytest.approx(budget)
                    assert await master.value(f"{tank.name}.power_budget_kw") == pytest.approx(
                        budget
                    )
                    await wait_until(
                        f"tank power follows its {budget} kW budget",
                        equals(master, power, lambda: budget, tol=0.02 * budget),
                    )
                    assert await master.value(online) == tank.units  # underclocked, not off
            finally:
                master.close()
            assert sp.rejected_writes == 0

    run(scenario())


# --------------------------------------------------------------------------- #
# exceptions: 02 illegal address, 03 illegal value; a rejected write changes nothing
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_illegal_addresses_and_values_answer_02_and_03_and_change_nothing() -> None:
    async def scenario() -> None:
        async with served(speed=10.0) as (sp, port):
            pmap = sp.sim.pmap
            site = sp.sim.site
            plc_unit = site.plc.unit_id
            tank, row = site.tanks[0].name, site.rack_rows[0].name
            master = Master.tcp(pmap, port)
            plc = master.link(plc_unit)
            try:
                # 02: past the end of every table, and straddling the end
                image = sp.images[plc_unit]
                for table in TABLES:
                    size = image.size(table)
                    await expect_exception(2, plc.read(table, size, 1))
                    if size:
                        await expect_exception(2, plc.read(table, size - 1, 2))
                holding_end = image.size("holding")
                await expect_exception(2, plc.write_register(holding_end, 1))

                before = await _commands(master, sp)
                writes_before = sp.writes

                # 02: read-only holding registers, alone or inside a multi-register write
                for name in ("plc.heartbeat_timeout_s", f"{tank}.valve_pos"):
                    p = pmap[name]
                    await expect_exception(2, master.link(p.unit_id).write_register(p.address, 500))
                valve = pmap[f"{tank}.valve_cmd"]
                budget = pmap[f"{tank}.power_budget_kw"]
                # the map's layout: the two commands, then the read-only position
                assert budget.address == valve.end
                assert pmap[f"{tank}.valve_pos"].address == budget.end
                tank_link = master.link(valve.unit_id)
                await expect_exception(2, tank_link.write_registers(valve.address, [500, 500, 500]))

                # 03: values outside the point's range (the wire carries them fine)
                await expect_exception(3, tank_link.write_register(valve.address, 1500))  # 150 %
                cap = pmap[f"{row}.gpu_power_cap_w"]
                assert cap.min == 200
                cap_link = master.link(cap.unit_id)
                await expect_exception(3, cap_link.write_register(cap.address, 100))  # W
                await expect_exception(
                    3,
                    master.write(
                        f"{tank}.power_budget_kw", pmap[f"{tank}.power_budget_kw"].max + 1
                    ),
                )
                # a multi-point write with one bad value is refused whole
                first, second = _adjacent_writable_registers(pmap)
                good = encode(first, _midrange(first))
                bad = [RAW_RANGE[second.type][1]] if second.max is not None else None
                assert bad is not None and decode(second, bad) > second.max
                await expect_exception(
                    3, master.link(first.unit_id).write_registers(first.address, good + bad)
                )
                assert sp.rejected_writes == 4

                # nothing changed: not the registers, not the plant's commands
                assert await _commands(master, sp) == before
                assert sp.writes == writes_before

                # an id no device answers to: the server acts as a gateway (0x0B)
                await expect_exception(0x0B, master.link(200).read("holding", 0, 1))
            finally:
                master.close()

    run(scenario())


@pytest.mark.timeout(20)
def test_every_published_limit_is_writable_and_one_count_beyond_is_refused() -> None:
    """A master writing exactly a point's min or max must be obeyed (e.g. 163.2 kW)."""

    async def scenario() -> None:
        async with served(speed=5.0) as (sp, port):
            pmap = sp.sim.pmap
            master = Master.tcp(pmap, port)
            try:
                for p in pmap.writable():
                    if p.table != "holding":
                        continue
                    original = await master.raw(p.name)
                    for limit, step in ((p.min, -1), (p.max, +1)):
                        if limit is None:
                            continue
                        await master.write(p.name, limit)
                        got = await master.value(p.name)
                        assert got == pytest.approx(limit, abs=p.scale / 2), p.name
                        assert sp.sim.plant.command_value(p.name) == pytest.approx(
                            limit, abs=1e-9
                        ), p.name
                        try:
                            beyond = encode(p, limit + step * p.scale)
                        except CodecError:
                            continue  # the type itself ends there (u16 0, 65535)
                        await expect_exception(
                            3, master.link(p.unit_id).write_registers(p.address, beyond)
                        )
                    await master.link(p.unit_id).write_registers(p.address, list(original))
            finally:
                master.close()

    run(scenario())


async def _commands(master: Master, sp: ServedPlant) -> dict[str, Any]:
    """Every command as a master reads it and as the plant holds it."""
    pts = [p for p in sp.sim.pmap.writable() if p.name != "plc.reset"]
    wire = await master.read_points(pts)
    truth = _truth(sp)
    return {p.name: (wire[p.name], truth[p.name]) for p in pts}


def _adjacent_writable_registers(pmap: PointMap) -> tuple[Point, Point]:
    regs = sorted(
        (p for p in pmap.writable() if p.table == "holding"), key=lambda p: (p.unit_id, p.address)
    )
    for a, b in pairwise(regs):
        if a.unit_id == b.unit_id and b.address == a.end and b.max is not None:
            return a, b
    raise AssertionError("the demo map has no two adjacent writable registers")


def _midrange(p: Point) -> float:
    lo = p.min if p.min is not None else 0.0
    hi = p.max if p.max is not None else lo + 100.0
    return round((lo + hi) / 2, 1)


# --------------------------------------------------------------------------- #
# the PLC watchdog, over the wire
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_stale_heartbeat_puts_the_plc_in_safe_state_and_a_fresh_one_clears_it() -> None:
    speed = 10.0
    tick_sim = speed * TICK_S  # simulated seconds per serving tick

    async def scenario() -> None:
        async with served(speed=speed) as (sp, port):
            plant = sp.sim.plant
            tank = sp.sim.site.tanks[0]  # a miner tank: mining stops in the safe state
            master = Master.tcp(sp.sim.pmap, port)
            try:
                timeout_s = await master.value("plc.heartbeat_timeout_s")
                assert timeout_s == sp.sim.site.plc.heartbeat_timeout_s
                async with Heartbeat(master, sp) as beat:
                    await wait_until("heartbeat ok", _status(master, STATUS_HEARTBEAT_OK, True))
                    await wait_until("the plant ran past the timeout", stepped(sp, timeout_s + 5))
                    assert not int(await master.value("plc.status")) & STATUS_SAFE_STATE
                    assert await master.value("plc.safe_state") is False
                t_before, t_after = beat.last_write

                # heartbeat frozen: no safe state before the timeout, safe state right after it
                async def safe() -> bool:
                    status = int(await master.value("plc.status"))
                    if not status & STATUS_SAFE_STATE:
                        assert plant.t - t_before < timeout_s + tick_sim + plant.dt + 2.0
                    return bool(status & STATUS_SAFE_STATE)

                await wait_until("safe state", safe, timeout=timeout_s / speed + 2.0)
                t_safe = plant.t
                assert t_safe - t_before >= timeout_s  # not early
                assert t_safe - t_after <= timeout_s + plant.dt + 3 * tick_sim  # nor late
                assert await master.value("plc.safe_state") is True
                assert not int(await master.value("plc.status")) & STATUS_HEARTBEAT_OK
                assert await master.value("plc.heartbeat_age_s") >= timeout_s
                # the safe state acts on the plant: mining off, HX valves driven open
                power = f"{tank.name}.power_kw"
                await wait_until("mining off", equals(master, power, lambda: 0.0))
                await wait_until("valve opening", above(master, f"{tank.name}.valve_pos", 61.0))
                assert await master.value(f"{tank.name}.valve_cmd") == 60.0  # the command stays

                # heartbeat resumes: the controller is back in charge
                async with Heartbeat(master, sp) as beat:
                    beat.value = 1000
                    t_resume = plant.t
                    await wait_until(
                        "safe state cleared", _status(master, STATUS_SAFE_STATE, False)
                    )
                    assert plant.t - t_resume <= plant.dt + 2 * tick_sim + 1.0
                    assert await master.value("plc.safe_state") is False
                    await wait_until("heartbeat ok", _status(master, STATUS_HEARTBEAT_OK, True))
                    await wait_until("mining back", above(master, power, 10.0))
            finally:
                master.close()

    run(scenario())


def _status(master: Master, bit: int, on: bool) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return bool(int(await master.value("plc.status")) & bit) == on

    return check


# --------------------------------------------------------------------------- #
# comms loss: one device goes silent, the others keep answering
# --------------------------------------------------------------------------- #


@pytest.mark.timeout(20)
def test_comms_loss_silences_only_that_device_and_it_answers_again_after() -> None:
    builtin = load_scenario("comms-loss")
    (fault,) = builtin.faults
    assert (fault.category, fault.name, fault.kind) == ("device", "cdu1", "timeout")
    assert (fault.at_s, fault.duration_s) == (3600, 600)
    # the same outage, brought forward and shortened so the test runs in seconds
    start, length, speed = 5.0, 30.0, 20.0
    scenario = dataclasses.replace(
        builtin, faults=(dataclasses.replace(fault, at_s=start, duration_s=length),)
    )

    async def run_it() -> None:
        async with served(scenario, speed=speed) as (sp, port):
            pmap = sp.sim.pmap
            plant = sp.sim.plant
            cdu_unit = pmap["cdu1.supply_temp"].unit_id
            cdu_points = pmap.for_unit(cdu_unit)
            others = [p for p in pmap.points if p.unit_id != cdu_unit]
            # silence is judged on a short timeout; the others' answers get the
            # helper's generous one (a worker's full collection has taken 0.8 s)
            master = Master.tcp(pmap, port, timeout=0.2, retries=0)
            answering = Master.tcp(pmap, port)
            try:
                assert await answering.value("cdu1.supply_temp") > 0
                await wait_until("outage starts", stepped(sp, start + 1.0))
                assert plant.t < start + length - 10, "outage window too short for the test"
                assert cdu_unit in sp.sim.device_faults

                seen = sp.server.requests_seen
                for _ in range(2):
                    before = seen[cdu_unit]
                    with pytest.raises(ModbusDeviceError) as info:
                        await master.value("cdu1.supply_temp")
                    assert info.value.exception_code is None  # silence, not an exception
                    assert info.value.unit_id == cdu_unit
                    # one frame reached the silent device: no retries piled onto it
                    assert seen[cdu_unit] == before + 1
                    # every other device answers at once, on the same connection
                    values = await answering.read_points(others)
                    assert len(values) == len(others)
                # a command sent into the silence is not applied either
                with pytest.raises(ModbusDeviceError):
                    await master.write("cdu1.valve_cmd", 10.0)
                assert plant.cmd_cdu_valve[0] == 60.0
                assert plant.t < start + length, "the outage ended before the checks did"

                await wait_until(
                    "outage over", stepped(sp, start + length + 1.0), timeout=length / speed + 3
                )
                assert cdu_unit not in sp.sim.device_faults
                values = await answering.read_points(cdu_points)
                assert all(within_limits(p, float(values[p.name])) for p in cdu_points)
                assert values["cdu1.valve_cmd"] == 60.0
                assert any("device:cdu1" in msg for _, msg in plant.events)
            finally:
                master.close()
                answering.close()

    run(run_it())


# --------------------------------------------------------------------------- #
# a write request's decoding, kept per request shape
# --------------------------------------------------------------------------- #

_INLINE_SP: list[ServedPlant] = []


def _inline_plant() -> ServedPlant:
    if not _INLINE_SP:
        from thermogate.hil.runner import ScenarioPlant

        _INLINE_SP.append(ServedPlant(ScenarioPlant(demo_site(), load_scenario("normal-day"))))
    return _INLINE_SP[0]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_write_request_lands_as_the_codec_decodes_and_checks_it(data: st.DataObject) -> None:
    """The plant keeps each request shape's points (and decodes a u16 inline): the
    verdict and the values the plant gets are those of decode and the range check."""
    sp = _inline_plant()
    pmap = sp.sim.pmap
    regs_points = sorted(
        (p for p in pmap.writable() if p.table == "holding"), key=lambda p: (p.unit_id, p.address)
    )
    first = data.draw(st.sampled_from(regs_points))
    run_ = [first]  # a run of adjacent writable registers, as a master's FC16 makes
    for p in regs_points:
        adjacent = p.unit_id == first.unit_id and p.address == run_[-1].end
        if adjacent and len(run_) < 3 and data.draw(st.booleans()):
            run_.append(p)
    regs = [data.draw(st.integers(0, 0xFFFF)) for p in run_ for _ in range(p.words)]
    got: list[tuple[str, float]] = []
    write = sp.sim.plant.write
    sp.sim.plant.write = lambda name, value: got.append((name, value))  # type: ignore[method-assign]
    try:
        for _ in range(2):  # the shape's first request, then its kept layout
            got.clear()
            verdict = sp._on_write(first.unit_id, "holding", first.address, regs)
            want: list[tuple[str, float]] | None = []
            offset = 0
            for p in run_:
                value = float(decode(p, regs[offset : offset + p.words]))
                offset += p.words
                slack = abs(value) * 2.0**-23 if p.type == "f32" else abs(p.scale) * 1e-6
                if (
                    math.isnan(value)
                    or (p.min is not None and value < p.min - slack)
                    or (p.max is not None and value > p.max + slack)
                ):
                    want = None
                    break
                lo = -math.inf if p.min is None else p.min
                hi = math.inf if p.max is None else p.max
                assert want is not None
                want.append((p.name, min(max(value, lo), hi)))
            if want is None:
                assert verdict == 3 and got == []
            else:
                assert verdict is None and got == want
    finally:
        sp.sim.plant.write = write  # type: ignore[method-assign]


@settings(max_examples=300, deadline=None)
@given(
    table=st.sampled_from(["coil", "holding"]),
    address=st.integers(0, 140),
    count=st.integers(1, 12),
)
def test_a_write_ranges_verdict_kept_is_the_verdict_worked_out(
    table: str, address: int, count: int
) -> None:
    """check_write keeps its verdict per range (the map is fixed): asked again, or
    of another image, it says what the arrays and points say."""
    for image in _inline_plant().images.values():
        fresh = image._check_range(table, address, count)
        one = image._rw_at[table].get(address)
        want = None if one is not None and one.words == count else fresh
        assert image.check_write(table, address, count) == want
        assert image.check_write(table, address, count) == want


def test_the_write_shapes_kept_are_bounded_and_one_past_the_bound_is_served_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master writing ever new ranges (a probe, a fuzzer) does not grow what the
    plant keeps per request shape: past the bound a shape is worked out each time."""
    from thermogate.hil import modbus_server, serve

    monkeypatch.setattr(serve, "WRITE_SHAPES_KEPT", 2)
    monkeypatch.setattr(modbus_server, "WRITE_SHAPES_KEPT", 2)
    sp = _inline_plant()
    monkeypatch.setattr(sp, "_layouts", {})
    pts = [p for p in sp.sim.pmap.writable() if p.table == "holding" and p.type == "u16"][:5]
    got: list[tuple[str, float]] = []
    monkeypatch.setattr(sp.sim.plant, "write", lambda name, value: got.append((name, value)))
    for _ in range(2):  # each shape twice: kept or not, the same verdict and value
        for p in pts:
            regs = encode(p, p.min if p.min is not None else 0.0)
            assert sp._on_write(p.unit_id, "holding", p.address, regs) is None
    assert [n for n, _ in got] == [p.name for p in pts] * 2
    assert got[: len(pts)] == got[len(pts) :]
    assert len(sp._layouts) == 2
    image = sp.images[pts[0].unit_id]
    monkeypatch.setattr(image, "_write_checked", {})
    for address in range(10):  # ranges over several points: each verdict worked out
        want = image._check_range("holding", address, 3)
        assert image.check_write("holding", address, 3) == want
        assert image.check_write("holding", address, 3) == want
    assert len(image._write_checked) <= 2
