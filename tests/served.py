"""Helpers of the served-plant tests: the plant in-process, a master, a heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib import resources
from typing import Any

import pytest

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import Scenario, parse_scenario
from thermogate.hil.serve import ServedPlant
from thermogate.plc.codec import BlockDecoder, decode, encode
from thermogate.plc.errors import ModbusDeviceError
from thermogate.plc.planning import plan_reads
from thermogate.plc.pointmap import (
    PointMap,
)
from thermogate.plc.points import Point
from thermogate.plc.site import demo_site
from thermogate.plc.transport import ModbusLink

# --------------------------------------------------------------------------- #
# helpers: the plant, a master, a heartbeat
# --------------------------------------------------------------------------- #


#: how long a test's master waits for an answer it expects (s)
ANSWER_TIMEOUT_S = 5.0


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

    # A master that expects answers waits for them generously: the plant shares this
    # process's event loop, and 0.5 s once timed out a plain write under a loaded CI
    # machine. A test that expects silence passes its own short timeout.
    @classmethod
    def tcp(cls, pmap: PointMap, port: int, **kw: Any) -> Master:
        kw.setdefault("timeout", ANSWER_TIMEOUT_S)
        kw.setdefault("retries", 0)
        return cls(pmap, lambda unit: ModbusLink.tcp("127.0.0.1", port, unit, **kw))

    @classmethod
    def rtu(cls, pmap: PointMap, path: str, **kw: Any) -> Master:
        kw.setdefault("timeout", ANSWER_TIMEOUT_S)
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


def stepped(sp: ServedPlant, t: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return sp.sim.plant.t >= t

    return check


def equals(
    master: Master, name: str, target: Callable[[], float], tol: float = 1e-9
) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return abs(float(await master.value(name)) - target()) <= tol

    return check


def above(master: Master, name: str, floor: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return float(await master.value(name)) > floor

    return check


def below(master: Master, name: str, ceiling: float) -> Callable[[], Coroutine[Any, Any, bool]]:
    async def check() -> bool:
        return float(await master.value(name)) < ceiling

    return check
