"""``thermogate plant``: the simulated plant served over real Modbus.

The plant steps on a real-time clock (optionally faster, ``--speed``); after
each tick the whole sample is encoded into the device images the Modbus
server answers from. Writes from any master are decoded per point, checked
against the point's range (exception 03 if outside, nothing applied) and
handed to the plant as commands. The tick re-arms at ``expiry + interval``
so CPU time never stretches the simulated clock; if the host falls behind,
the plant catches up in bounded bursts and says so.

Between ticks the PLC's fast cycle runs every ``FAST_CYCLE_S`` (the
under-frequency relay, the contactors it opens, the site meter's frequency
and power): a relay does not wait for a plant step, nor for a scan.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pymodbus.constants import ExcCodes

from thermogate.plc.codec import decode, encode
from thermogate.plc.errors import CodecError, ThermogateError
from thermogate.plc.points import Point
from thermogate.plc.site import Site, load_site

from .image import ImageWriter, build_images
from .modbus_server import WRITE_SHAPES_KEPT, PlantModbusServer
from .plant import Plant
from .runner import ScenarioPlant
from .scenario import load_for_run

try:  # tcsetattr failures (e.g. parity on a pseudo-terminal) raise termios.error
    from termios import error as _termios_error

    _TERMIOS_ERRORS: tuple[type[Exception], ...] = (_termios_error,)
except ImportError:  # not POSIX
    _TERMIOS_ERRORS = ()

#: Wall-clock period of the serving loop (s); the plant steps dt each sim second.
TICK_S = 0.1
#: At most this many plant steps per tick when catching up after a stall.
MAX_CATCH_UP_STEPS = 2000
#: Wall-clock period of the PLC's fast cycle (s): a protective relay's pace.
FAST_CYCLE_S = 0.005
#: self-clearing coils: the PLC acts on a 1 and drops it
SELF_CLEARING = ("plc.reset", "plc.ufls_release")


def _limit_slack(type_: str, scale: float, value: float) -> float:
    """Rounding slack for a range check of a decoded value (well under one count)."""
    if type_ == "f32":  # the write carried value to 24 bits; its limit may not be an f32
        return abs(value) * 2.0**-23
    return abs(scale) * 1e-6


#: a write request's points: (point, first and end register, a u16's scale or None)
_Layout = list[tuple[Point, int, int, float | None]]


class BesideThePlant(Protocol):
    """Something simulated beside the plant on the plant's clock, e.g. the hall's
    GPU cluster (``controller.gating.world.ClusterInTheLoop``): it runs its jobs
    within ``capacity`` GPUs and sets the plant's GPU utilisation."""

    def step(self, t: float, capacity: int, plant: Plant) -> None: ...


@dataclass
class ServedPlant:
    """A ``ScenarioPlant`` behind a ``PlantModbusServer``.

    With a ``cluster`` (and the ``capacity`` it may use, asked each tick) the
    hall's GPU jobs run beside the plant, stepped at the plant's time before
    each tick's steps: in a real hall they are the orchestrator's (Slurm,
    Kubernetes), reached through its own API rather than Modbus, so nothing of
    them goes over the wire here either; their load does, in the meters.
    """

    sim: ScenarioPlant
    speed: float = 1.0
    cluster: BesideThePlant | None = None
    capacity: Callable[[], int] | None = None
    server: PlantModbusServer = field(init=False)
    writes: int = 0
    rejected_writes: int = 0

    def __post_init__(self) -> None:
        if (self.cluster is None) != (self.capacity is None):
            raise ValueError("a cluster beside the plant needs its capacity, and only it")
        pmap = self.sim.pmap
        self.images = build_images(pmap.points)
        self.writer = ImageWriter(pmap.points, self.images)
        # Commands start as the plant's initial values, then belong to the masters.
        ImageWriter(pmap.points, self.images, include_writable=True).write(
            self.sim.plant.sensors.sample()
        )
        self.server = PlantModbusServer(self.images, on_write=self._on_write)
        self.sim.on_device_fault = self._device_fault
        self._freq_point = pmap.by_name["site.frequency_hz"]
        self._freq_index = pmap.position("site.frequency_hz")
        self._clock: tuple[float, float] | None = None
        #: each write request's shape (unit, table, address, registers) -> its points
        self._layouts: dict[tuple[int, str, int, int], _Layout] = {}
        self._publish()

    # -- Modbus side ---------------------------------------------------
    def _on_write(self, unit: int, table: str, address: int, regs: list[int]) -> int | None:
        """Decode and range-check every point of the request; apply all or none."""
        layout = self._layouts.get((unit, table, address, len(regs)))
        if layout is None:
            layout = self._layout(unit, table, address, regs)
        staged: list[tuple[str, float]] = []
        for point, lo_off, hi_off, scale in layout:
            if scale is not None:  # a u16: decode's raw * scale, without its checks
                value = regs[lo_off] * scale
            else:
                try:
                    value = float(decode(point, regs[lo_off:hi_off]))
                except CodecError:
                    return ExcCodes.ILLEGAL_VALUE
            lo, hi = point.min, point.max
            # raw * scale is inexact (1632 * 0.1 = 163.20000000000002), so a
            # limit written in engineering units must be reachable: allow far
            # less than one count of slack, then clamp what the plant gets.
            tol = _limit_slack(point.type, point.scale, value)
            if (
                math.isnan(value)
                or (lo is not None and value < lo - tol)
                or (hi is not None and value > hi + tol)
            ):
                self.rejected_writes += 1
                return ExcCodes.ILLEGAL_VALUE
            if lo is not None:
                value = max(value, lo)
            if hi is not None:
                value = min(value, hi)
            staged.append((point.name, value))
        for name, value in staged:
            self.sim.plant.write(name, value)
        self.writes += 1
        return None

    def _layout(self, unit: int, table: str, address: int, regs: list[int]) -> _Layout:
        """Where each point of a write request of this shape sits in its registers,
        and a u16's scale (decoded inline); the map is fixed, so kept per shape."""
        layout: _Layout = []
        for point, words in self.images[unit].split(table, address, regs):
            lo_off, hi_off = point.address - address, point.end - address  # split's slice
            if len(words) == len(regs):  # split's one point of the whole request
                lo_off, hi_off = 0, len(regs)
            scale = float(point.scale)
            fast = (
                point.type == "u16"
                and point.table == "holding"
                and len(words) == 1
                and lo_off >= 0
                and scale != 0
                and math.isfinite(scale)
            )
            layout.append((point, lo_off, hi_off, scale if fast else None))
        if len(self._layouts) < WRITE_SHAPES_KEPT:  # bounded, whatever a master writes
            self._layouts[(unit, table, address, len(regs))] = layout
        return layout

    def _device_fault(self, unit: int, kind: str | None, code: int) -> None:
        self.server.set_fault(unit, kind, code)  # type: ignore[arg-type]

    def _publish(self) -> None:
        self.writer.write(self.sim.plant.sensors.sample())
        for name in SELF_CLEARING:
            p = self.sim.pmap.by_name[name]
            self.images[p.unit_id].coils[p.address] = False

    def _publish_fast(self, changed: bool) -> None:
        """After a fast cycle: the meter's frequency always, the rest if the load changed."""
        if changed:
            self._publish()
            return
        p, plant = self._freq_point, self.sim.plant
        f = plant.sensors.measure_one(self._freq_index, plant.site_freq)
        self.images[p.unit_id].set_registers(p, encode(p, f))

    def sim_time(self) -> float:
        """The plant's clock now (between ticks: where the next tick will step to)."""
        if self._clock is None:
            return self.sim.plant.t
        start_wall, start_sim = self._clock
        return start_sim + (time.monotonic() - start_wall) * self.speed

    async def _fast_cycle(self) -> None:
        """The PLC's fast cycle (module docstring), until cancelled."""
        plant = self.sim.plant
        while True:
            await asyncio.sleep(FAST_CYCLE_S)
            t = min(self.sim_time(), plant.t + plant.dt)  # never past the next step
            if t > plant.t:
                self._publish_fast(plant.fast_cycle(t))

    # -- clock -----------------------------------------------------------
    async def run(
        self,
        duration_s: float | None = None,
        on_tick: Callable[[ServedPlant], None] | None = None,
    ) -> None:
        """Step in real time x ``speed`` until cancelled or ``duration_s`` passes."""
        plant = self.sim.plant
        loop = asyncio.get_running_loop()
        start_wall = loop.time()
        start_sim = plant.t
        self._clock = (time.monotonic(), start_sim)
        fast = asyncio.create_task(self._fast_cycle())
        try:
            await self._run(duration_s, on_tick, start_wall, start_sim)
        finally:
            fast.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fast
            self._clock = None

    async def _run(
        self,
        duration_s: float | None,
        on_tick: Callable[[ServedPlant], None] | None,
        start_wall: float,
        start_sim: float,
    ) -> None:
        plant = self.sim.plant
        loop = asyncio.get_running_loop()
        next_tick = start_wall + TICK_S
        while duration_s is None or loop.time() - start_wall < duration_s:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += TICK_S  # expiry + interval: CPU time does not stretch it
            target_sim = start_sim + (loop.time() - start_wall) * self.speed
            steps = int((target_sim - plant.t) / plant.dt)
            if steps > MAX_CATCH_UP_STEPS:
                print(
                    f"plant: {steps} steps behind real time x{self.speed:g}, catching up in bursts",
                    file=sys.stderr,
                )
                steps = MAX_CATCH_UP_STEPS
            if steps > 0:
                if self.cluster is not None and self.capacity is not None:
                    self.cluster.step(plant.t, self.capacity(), plant)
                self.sim.step(steps)
                self._publish()
            if on_tick is not None:
                on_tick(self)
            if loop.time() > next_tick + 1.0:  # a long stall: don't try to replay it
                next_tick = loop.time() + TICK_S


def _print_events(sp: ServedPlant) -> None:
    ev = sp.sim.plant.events
    for t, msg in ev:
        print(f"[t={t:9.0f}s] {msg}", flush=True)
    ev.clear()


def serve_plant_cli(args: argparse.Namespace) -> int:
    """Entry point of ``thermogate plant``."""
    site: Site = load_site(args.site)
    scenario = load_for_run(args.scenario, args.weather, args.prices)
    sim = ScenarioPlant(site, scenario, seed=args.seed)
    if args.start == "idle":
        sim.plant.start_idle()  # as the PLC holds it before any controller has run it
    sp = ServedPlant(sim, speed=args.speed)
    return asyncio.run(_serve(sp, args))


async def _serve(sp: ServedPlant, args: argparse.Namespace) -> int:
    site = sp.sim.site
    # Signal handlers first: a Ctrl-C during start-up still stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # pymodbus logs a failed bind itself before raising; we report it once, below.
    server_log = logging.getLogger("pymodbus")
    level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    try:
        if args.rtu:
            await sp.server.start_rtu(args.rtu, baudrate=args.baudrate, parity=args.parity)
            where = f"Modbus RTU on {args.rtu} ({args.baudrate} 8{args.parity}1)"
        else:
            host, port = await sp.server.start_tcp(args.host, args.port)
            where = f"Modbus TCP on {host}:{port}"
    except OSError as exc:
        raise ThermogateError(f"cannot serve the plant: {exc.strerror or exc}") from None
    except RuntimeError:  # pymodbus logs the OSError of a failed bind/open and raises this
        what = args.rtu or f"{args.host}:{args.port}"
        raise ThermogateError(
            f"cannot serve the plant: cannot listen on {what} (in use, or no such address/device)"
        ) from None
    except _TERMIOS_ERRORS as exc:  # not an OSError: pyserial lets it through
        hint = " (a pseudo-terminal takes no parity: --parity N)" if args.parity != "N" else ""
        raise ThermogateError(
            f"cannot serve the plant: {args.rtu} refuses {args.baudrate} 8{args.parity}1: "
            f"{exc.args[-1] if exc.args else exc}{hint}"
        ) from None
    finally:
        server_log.setLevel(level)
    units = sorted(sp.images)
    # measured series replace the scenario's own: say whose weather and prices run
    measured = [f"{what} from {path}" for what, path in (("weather", args.weather),
                ("prices", args.prices)) if path]  # fmt: skip
    print(
        f"thermogate plant: site '{site.name}' ({len(sp.sim.pmap)} points, "
        f"{len(units)} unit ids {units[0]}..{units[-1]}), scenario "
        f"'{sp.sim.scenario.name}'{' with ' + ' and '.join(measured) if measured else ''},"
        f" speed x{sp.speed:g}, started {args.start}",
        flush=True,
    )
    print(
        f"serving {where}; point map: `thermogate points"
        f"{' --site ' + args.site if args.site else ''} --format csv` "
        "(0-based addresses; mbpoll counts from 1, use its -0 flag)",
        flush=True,
    )
    print("Ctrl-C to stop", flush=True)
    last_status = [time.monotonic()]

    def on_tick(s: ServedPlant) -> None:
        _print_events(s)
        now = time.monotonic()
        if now - last_status[0] >= 10.0:
            last_status[0] = now
            st = s.sim.plant.status()
            plc = st["plc"]
            print(
                f"[t={st['t_s']:9.0f}s] site {st['site_kw']:.0f} kW, IT {st['it_kw']:.0f} kW, "
                f"PUE {st['pue']}, hottest tank {st['max_tank_c']} degC, ambient "
                f"{st['ambient_c']} degC, safe state {plc['safe_state']}, "  # type: ignore[index]
                f"writes {s.writes}",
                flush=True,
            )

    runner = asyncio.create_task(sp.run(args.duration, on_tick))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await sp.server.stop()
    print("thermogate plant: stopped", flush=True)
    return 0
