"""The OpenADR VEN beside a lockstep simulation (``thermogate simulate --openadr``).

A simulation runs much faster than the wall clock, an OpenADR VTN speaks HTTP
on the wall clock. The VEN therefore runs on a thread of its own with its own
event loop, on the *simulation's* clock (``epoch`` + plant seconds), and
everything it gives waits in a queue for the simulation's next scan, where it
goes through the controller's command path at that scan's time. Nothing
touches the controller from the VEN's thread.

The VEN hears the site's telemetry from ``SETTLED_S`` of simulated time on (a
simulated plant starts with every load at its rating, more than the grid
feeds, until the controller's first budgets land: no site would report that);
it registers then, and the simulation waits (wall time, bounded) until it has
polled the VTN a few times, so the events the VTN already holds are decided
before the simulated week runs past them. Events the VTN
adds later arrive whenever the VEN next polls: late, in simulated time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import queue
import threading
import time
from typing import Any

from thermogate.plc.errors import ThermogateError

from ..core import Controller
from ..core.commands import Command, CommandResult, Principal, RequestCurtailment
from .openadr import Decision, Ven, VenConfig, site_telemetry

__all__ = ["VenBeside"]

#: the site's telemetry is reported from this simulated time on (plant seconds)
SETTLED_S = 300.0
#: how long the first scan waits for the VEN to register and hear the VTN (wall s)
REGISTER_WAIT_S = 60.0
#: polls the VEN makes after registering before the simulation moves on
POLLS_BEFORE_START = 3


class VenBeside:
    """See the module docstring. ``on_scan(t, ctrl)`` is the simulation's hook."""

    def __init__(self, cfg: VenConfig, epoch: float, import_limit_kw: float) -> None:
        self.cfg = cfg
        self.epoch = epoch
        self.import_limit_kw = import_limit_kw
        self.t = 0.0  # the simulation's plant seconds
        self.telemetry: dict[str, float] = {"import_kw": math.nan, "curtailable_kw": math.nan}
        self.decisions: list[Decision] = []
        self._q: queue.Queue[tuple[Command, Principal, concurrent.futures.Future[Any]]] = (
            queue.Queue()
        )
        self._stop = threading.Event()
        self._ven: Ven | None = None
        self._thread = threading.Thread(target=self._main, name="openadr-ven", daemon=True)
        self._error: BaseException | None = None
        self._first = True

    # -- the VEN's thread --------------------------------------------------
    def _give(self, cmd: Command, by: Principal) -> CommandResult:
        fut: concurrent.futures.Future[CommandResult] = concurrent.futures.Future()
        self._q.put((cmd, by, fut))
        return fut.result(timeout=REGISTER_WAIT_S)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._error = exc

    async def _run(self) -> None:
        self._ven = Ven(
            self.cfg,
            self._give,
            lambda: dict(self.telemetry),
            import_limit_kw=self.import_limit_kw,
            clock=lambda: self.epoch + self.t,
            on_decision=self.decisions.append,
        )
        await self._ven.start()
        try:
            while not self._stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            await self._ven.stop()

    # -- the simulation's side ----------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._drain(None, math.nan)  # nothing may wait on a scan that never comes
        self._thread.join(timeout=30.0)

    def on_scan(self, t: float, ctrl: Controller) -> None:
        """Once per scan, after the plant stepped: the clock, the telemetry, then
        whatever the VEN gave, through the command path at ``t``."""
        self.t = t
        if t < SETTLED_S:
            self._drain(ctrl, t)
            return
        self.telemetry = site_telemetry(ctrl)
        if self._first:
            self._first = False
            self._wait_for_vtn(ctrl)
        self._drain(ctrl, t)

    def _wait_for_vtn(self, ctrl: Controller) -> None:
        deadline = time.monotonic() + REGISTER_WAIT_S
        registered_at: float | None = None
        poll = self.cfg.poll_s or 10.0
        while time.monotonic() < deadline:
            self._drain(ctrl, self.t)
            if self._error is not None:
                raise self._error
            ven = self._ven
            if ven is not None and ven.registered and registered_at is None:
                registered_at = time.monotonic()
            if registered_at is not None and time.monotonic() - registered_at > (
                POLLS_BEFORE_START * poll
            ):
                return
            time.sleep(0.02)
        raise ThermogateError(
            f"--openadr: the VEN did not register with {self.cfg.vtn_url} within "
            f"{REGISTER_WAIT_S:g} s (is the VTN running there?)"
        )

    def _drain(self, ctrl: Controller | None, t: float) -> None:
        while True:
            try:
                cmd, by, fut = self._q.get_nowait()
            except queue.Empty:
                return
            if ctrl is None:
                fut.set_exception(RuntimeError("the simulation ended"))
                continue
            if isinstance(cmd, RequestCurtailment) and cmd.start is not None:
                cmd = dataclasses.replace(cmd, start=cmd.start - self.epoch)  # plant seconds
            fut.set_result(ctrl.commands.give(cmd, by, t))
