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

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import math
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from ptys import pty_pair

from thermogate.hil.image import SENTINEL
from thermogate.hil.plant import VALVE_STROKE_PCT_S
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import Scenario, load_scenario, parse_scenario
from thermogate.hil.serve import TICK_S, ServedPlant
from thermogate.plc.codec import RAW_RANGE, BlockDecoder, decode, encode
from thermogate.plc.errors import CodecError, ModbusDeviceError
from thermogate.plc.planning import plan_reads
from thermogate.plc.pointmap import (
    STATUS_HEARTBEAT_OK,
    STATUS_SAFE_STATE,
    PointMap,
)
from thermogate.plc.points import TABLES, Point
from thermogate.plc.site import demo_site
from thermogate.plc.transport import ModbusLink

# --------------------------------------------------------------------------- #
# helpers: the plant, a master, a heartbeat
# --------------------------------------------------------------------------- #


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def served(
    scenario: str | Scenario = "normal-day",
    speed: float = 50.0,
    *,
    tcp: bool = True,
    rtu: str | None = None,
) -> AsyncIterator[tuple[ServedPlant, int]]:
    """The demo hall served on an ephemeral TCP port (and/or a pty), clock running."""
    sp = ServedPlant(ScenarioPlant(demo_site(), scenario), speed=speed)
    port = 0
    if tcp:
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
    if rtu is not None:
        await sp.server.start_rtu(rtu, parity="N")
    clock = asyncio.create_task(sp.run())
    try:
        yield sp, port
        if clock.done():
            clock.result()  # the serving loop must never end on its own: re-raise its crash
    finally:
        clock.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await clock
        await sp.server.stop()


class Master:
    """What a controller does on the wire: one link per unit id, planned block reads."""

    def __init__(self, pmap: PointMap, make_link: Callable[[int], ModbusLink]) -> None:
        self.pmap = pmap
        self._make_link = make_link
        self._links: dict[int, ModbusLink] = {}

    @classmethod
    def tcp(cls, pmap: PointMap, port: int, **kw: Any) -> Master:
        kw.setdefault("timeout", 0.5)
        kw.setdefault("retries", 0)
        return cls(pmap, lambda unit: ModbusLink.tcp("127.0.0.1", port, unit, **kw))

    @classmethod
    def rtu(cls, pmap: PointMap, path: str, **kw: Any) -> Master:
        kw.setdefault("timeout", 0.5)
        kw.setdefault("retries", 0)
        return cls(pmap, lambda unit: ModbusLink.rtu(path, unit, **kw))

    def link(self, unit: int) -> ModbusLink:
        if unit not in self._links:
            self._links[unit] = self._make_link(unit)
        return self._links[unit]

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    async def read_points(self, points: list[Point] | tuple[Point, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for request in plan_reads(points):
            data = await self.link(request.unit_id).read(
                request.table, request.address, request.count
            )
            BlockDecoder.for_request(request).decode_into(data, values)
        return values

    async def raw(self, name: str) -> list[int] | list[bool]:
        p = self.pmap[name]
        return await self.link(p.unit_id).read(p.table, p.address, p.words)

    async def value(self, name: str) -> Any:
        return decode(self.pmap[name], await self.raw(name))

    async def write(self, name: str, value: float | bool) -> None:
        p = self.pmap[name]
        link = self.link(p.unit_id)
        if p.table == "coil":
            await link.write_coil(p.address, bool(value))
        elif p.words == 1:
            await link.write_register(p.address, encode(p, value)[0])
        else:
            await link.write_registers(p.address, encode(p, value))


class Heartbeat:
    """The controller's heartbeat: a new value every ``period`` wall seconds."""

    def __init__(self, master: Master, sp: ServedPlant, period: float = 0.05) -> None:
        self.master, self.sp, self.period = master, sp, period
        self.value = 0
        #: plant.t just before and just after the last accepted heartbeat write
        self.last_write: tuple[float, float] = (math.nan, math.nan)
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            self.value = (self.value + 1) & 0xFFFF
            before = self.sp.sim.plant.t
            await self.master.write("plc.heartbeat", self.value)
            self.last_write = (before, self.sp.sim.plant.t)
            await asyncio.sleep(self.period)

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task  # re-raises a failed heartbeat write


async def wait_until(
    what: str, check: Callable[[], Coroutine[Any, Any, bool]], timeout: float = 3.0
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` wall seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s (wall): {what}")
        await asyncio.sleep(0.01)


async def expect_exception(code: int, coro: Coroutine[Any, Any, Any]) -> None:
    with pytest.raises(ModbusDeviceError) as info:
        await coro
    assert info.value.exception_code == code, info.value


def within_limits(p: Point, value: float) -> bool:
    """In [min, max], allowing for raw * scale rounding (1632 * 0.1 = 163.20000000000002)."""
    slack = 1e-9 * max(1.0, abs(p.min or 0.0), abs(p.max or 0.0))
    return (p.min is None or value >= p.min - slack) and (p.max is None or value <= p.max + slack)


def normal_day_with(faults_toml: str) -> Scenario:
    """The built-in normal day with extra ``[[faults]]`` (parsed like any scenario file)."""
    text = (resources.files("thermogate.hil.data") / "scenario_normal-day.toml").read_text()
    return parse_scenario(text + "\n" + faults_toml, file="normal-day+faults.toml")


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
                    await wait_until("the plant has stepped", _stepped(sp, 3.0))
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


def _stepped(sp: ServedPlant, t: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return sp.sim.plant.t >= t

    return check


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
                    await wait_until("the plant has stepped", _stepped(sp, 2.0))
                    # the heartbeat lands: read back, and the PLC's age counter stays young
                    await wait_until(
                        "heartbeat read back",
                        _equals(master, "plc.heartbeat", lambda: beat.value, tol=2),
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
                    await wait_until("tank power at 0", _equals(master, power, lambda: 0.0))
                    assert await master.value(online) == 0
                    await master.write(f"{tank.name}.enable", True)
                    await wait_until("tank back on", _above(master, power, 10.0))

                    # --- power budget: the miners follow their target
                    budget = round(0.5 * tank.units * tank.unit_power_kw, 1)
                    await master.write(f"{tank.name}.power_budget_kw", budget)
                    assert plant.cmd_budget[i] == pytest.approx(budget)
                    assert await master.value(f"{tank.name}.power_budget_kw") == pytest.approx(
                        budget
                    )
                    await wait_until(
                        f"tank power follows its {budget} kW budget",
                        _equals(master, power, lambda: budget, tol=0.02 * budget),
                    )
                    assert await master.value(online) == tank.units  # underclocked, not off
            finally:
                master.close()
            assert sp.rejected_writes == 0

    run(scenario())


def _equals(
    master: Master, name: str, target: Callable[[], float], tol: float = 1e-9
) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return abs(float(await master.value(name)) - target()) <= tol

    return check


def _above(master: Master, name: str, floor: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return float(await master.value(name)) > floor

    return check


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
                    await wait_until("the plant ran past the timeout", _stepped(sp, timeout_s + 5))
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
                await wait_until("mining off", _equals(master, power, lambda: 0.0))
                await wait_until("valve opening", _above(master, f"{tank.name}.valve_pos", 61.0))
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
                    await wait_until("mining back", _above(master, power, 10.0))
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
            master = Master.tcp(pmap, port, timeout=0.2, retries=0)
            try:
                assert await master.value("cdu1.supply_temp") > 0
                await wait_until("outage starts", _stepped(sp, start + 1.0))
                assert plant.t < start + length - 10, "outage window too short for the test"
                assert cdu_unit in sp.sim.device_faults

                for _ in range(2):
                    t0 = time.monotonic()
                    with pytest.raises(ModbusDeviceError) as info:
                        await master.value("cdu1.supply_temp")
                    assert info.value.exception_code is None  # silence, not an exception
                    assert info.value.unit_id == cdu_unit
                    assert time.monotonic() - t0 <= master.link(cdu_unit).budget + 0.15
                    # every other device answers at once, on the same connection
                    values = await master.read_points(others)
                    assert len(values) == len(others)
                # a command sent into the silence is not applied either
                with pytest.raises(ModbusDeviceError):
                    await master.write("cdu1.valve_cmd", 10.0)
                assert plant.cmd_cdu_valve[0] == 60.0
                assert plant.t < start + length, "the outage ended before the checks did"

                await wait_until(
                    "outage over", _stepped(sp, start + length + 1.0), timeout=length / speed + 3
                )
                assert cdu_unit not in sp.sim.device_faults
                values = await master.read_points(cdu_points)
                assert all(within_limits(p, float(values[p.name])) for p in cdu_points)
                assert values["cdu1.valve_cmd"] == 60.0
                assert any("device:cdu1" in msg for _, msg in plant.events)
            finally:
                master.close()

    run(run_it())


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
                await wait_until("clock runs", _stepped(sp, t0 + 2.0))
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
                    await wait_until("the plant has stepped", _stepped(sp, 2.0))
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
                    await wait_until("valve moving", _below(master, f"{tank.name}.valve_pos", 59.0))
                    row = sp.sim.site.rack_rows[0].name
                    await master.write(f"{row}.enable", False)
                    await wait_until(
                        "row power at 0", _equals(master, f"{row}.power_kw", lambda: 0.0)
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


def _below(master: Master, name: str, ceiling: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return float(await master.value(name)) < ceiling

    return check


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

        # a coil
        assert _mbpoll_read(port, *ref(coil), "-t", "0")[int(coil["address"])] == "1"

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
