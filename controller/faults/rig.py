"""The rig of fault classes 2 and 3: the served plant, the real controller, episodes.

The plant (:class:`~thermogate.hil.serve.ServedPlant`, real time) serves
Modbus/TCP on a free port, optionally behind a
:class:`~.proxy.FaultProxy`; a :class:`RealTimeController` with its historian
scans it at ``scan_s``. An *episode* is one fault on one unit id whose points
feed exactly one fail-safe zone: injected between two scans, held for a
while, healed; each scan meanwhile is checked:

* the controller does not raise (a raise is a crash, counted, and the run
  goes on);
* every point of the faulted unit is bad (not fresh) and its zone is in
  fail-safe, from the first scan after the injection to the heal;
* every other unit's points are fresh, no other zone is in fail-safe, and
  every write to another unit succeeded;
* after the heal the zone leaves fail-safe, and the historian holds the
  zone's ``failsafe`` event (the alarm) and its ``restore`` event after it.

Detection is the time from the injection to the first scan that saw the
zone in fail-safe, recovery the time from the heal to the first scan that
saw it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import Site

from ..heap import freeze_startup
from ..modbus_io import Endpoint, ReadResult, WriteOutcome
from ..run import RealTimeController
from ..runconfig import RunConfig
from .common import ClassResult, quiet
from .proxy import FaultProxy

#: how long a healed zone may take to leave fail-safe (the unit backoff caps at 10 s)
RECOVERY_LIMIT_S = 30.0


@dataclass
class Target:
    """A unit id whose points feed one zone alone."""

    unit: int
    zone: str
    points: np.ndarray  # positions of the unit's points


@dataclass
class EpisodeLog:
    scans: int = 0
    deadline_misses: int = 0
    crashes: int = 0
    problems: list[str] = field(default_factory=list)


class Rig:
    """See the module docstring."""

    def __init__(
        self,
        site: Site,
        db: Path,
        *,
        scan_s: float,
        proxy: bool,
        seed: int,
        delay_s: float = 2.0,
        speed: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.site = site
        self.db = db
        self.scan_s = scan_s
        #: wall time between scans: a plant ``speed`` times faster is scanned as often
        #: in its own time, and the controller then lives on the plant's clock
        self.pace_s = scan_s / speed
        self.sp = ServedPlant(ScenarioPlant(site, "normal-day", seed=seed), speed=speed)
        epoch = time.time() - self.sp.sim.plant.t
        self.clock = clock or (time.time if speed == 1.0 else lambda: epoch + self.sp.sim_time())
        self.proxy: FaultProxy | None = None
        self._want_proxy = proxy
        self._delay_s = delay_s
        self._plant_task: asyncio.Task[None] | None = None
        self.rt: RealTimeController | None = None
        self.rr: ReadResult | None = None
        self.outcomes: list[WriteOutcome] = []
        self.done_at = 0.0

    async def __aenter__(self) -> Rig:
        host, port = await self.sp.server.start_tcp("127.0.0.1", 0)
        self._plant_task = asyncio.create_task(self.sp.run())
        if self._want_proxy:
            self.proxy = FaultProxy((host, port), delay_s=self._delay_s)
            port = await self.proxy.start()
        cfg = RunConfig(
            self.site, self.db, Endpoint("tcp", "127.0.0.1", port), self.scan_s, 0.25,
            built_in_plant=False, forecast=False,
        )  # fmt: skip
        rt = self.rt = RealTimeController(cfg, clock=self.clock)
        read, write = rt.io.read_all, rt.io.write

        async def read_all() -> ReadResult:  # keep what the scan read
            self.rr = await read()
            return self.rr

        async def writes(pairs: list[tuple[str, float]]) -> list[WriteOutcome]:
            self.outcomes = await write(pairs)
            return self.outcomes

        rt.io.read_all = read_all  # type: ignore[method-assign]
        rt.io.write = writes  # type: ignore[method-assign,assignment]
        self.targets = self._targets()
        # garbage as the run loop handles it (heap.py): start-up frozen, collections in
        # the slack between scans. Left automatic, a full collection of a fat host
        # process (a test worker's: 0.1-0.8 s) could land inside a scan and starve
        # every unit's read, a stall the real controller does not have.
        freeze_startup()
        rt.gc.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.rt is not None:
            self.rt.gc.uninstall()
            gc.unfreeze()  # the host process's objects back in the collector's sight
            await self.rt.close()
        if self.proxy is not None:
            await self.proxy.stop()
        if self._plant_task is not None:
            self._plant_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._plant_task
        await self.sp.server.stop()

    def _targets(self) -> list[Target]:
        assert self.rt is not None
        pmap = self.rt.pmap
        units = np.array([p.unit_id for p in pmap.points])
        feeds: dict[int, set[str]] = {}
        for name, z in self.rt.ctrl.zones.items():
            for i in z.inputs:
                feeds.setdefault(int(units[i]), set()).add(name)
        return [
            Target(u, next(iter(zs)), np.flatnonzero(units == u))
            for u, zs in sorted(feeds.items())
            if len(zs) == 1 and u != self.site.plc.unit_id
        ]

    # -- scanning -----------------------------------------------------------

    async def scan(self, log: EpisodeLog) -> bool:
        """One paced scan; False if the controller raised."""
        assert self.rt is not None
        t0 = time.monotonic()
        self.outcomes = []
        ok = True
        try:
            await self.rt.scan_once()
        except Exception as exc:
            log.crashes += 1
            log.problems.append(f"scan raised {type(exc).__name__}: {exc}")
            ok = False
        self.done_at = time.monotonic()  # the scan's verdict is known here, before pacing
        took = self.done_at - t0
        log.scans += 1
        if took > self.pace_s:
            log.deadline_misses += 1
        self.rt.gc.collect(self.pace_s - took, self.pace_s)
        await asyncio.sleep(max(0.0, self.pace_s - (time.monotonic() - t0)))
        return ok

    def failsafe(self) -> set[str]:
        assert self.rt is not None
        return set(self.rt.last.get("failsafe_zones", []))  # type: ignore[call-overload]

    async def settle(self, log: EpisodeLog, limit_s: float = RECOVERY_LIMIT_S) -> bool:
        """Scan until no zone is in fail-safe (the start, or after an episode)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            await self.scan(log)
            if not self.failsafe():
                return True
        return False

    def check_others(self, target: Target, log: EpisodeLog) -> None:
        """Nothing but the target unit and its zone was touched by this scan."""
        assert self.rr is not None and self.rt is not None
        fresh = self.rr.fresh.copy()
        fresh[target.points] = True
        if not fresh.all():
            names = [self.rt.pmap.points[i].name for i in np.flatnonzero(~fresh)[:3]]
            why = {u: e for u, e in self.rr.errors.items() if u != target.unit}
            log.problems.append(
                f"unit {target.unit} fault: other points not fresh: {names} ({why})"
            )
        others = self.failsafe() - {target.zone}
        if others:
            log.problems.append(
                f"unit {target.unit} fault: other zones fail-safe: {sorted(others)}"
            )
        by_name = self.rt.pmap.by_name
        bad = [o for o in self.outcomes if not o.ok and by_name[o.point].unit_id != target.unit]
        if bad:
            log.problems.append(f"unit {target.unit} fault: a write elsewhere failed: {bad[0]}")

    async def episode(
        self,
        target: Target,
        inject: Callable[[], None],
        heal: Callable[[], None],
        duration_s: float,
        res: ClassResult,
        log: EpisodeLog,
    ) -> bool:
        """One fault held ``duration_s``; its checks (module docstring). True if all held."""
        assert self.rt is not None
        first = len(log.problems)
        crashes = log.crashes
        wall0 = time.time()
        t_inject = time.monotonic()
        inject()
        seen_at = None
        while time.monotonic() - t_inject < duration_s:
            if not await self.scan(log):
                continue
            assert self.rr is not None
            if self.rr.fresh[target.points].any():
                log.problems.append(f"unit {target.unit} faulted but some of its points fresh")
            if target.zone not in self.failsafe():
                log.problems.append(f"unit {target.unit} faulted but zone {target.zone} not safe")
            elif seen_at is None:
                seen_at = self.done_at
            self.check_others(target, log)
        heal()
        t_heal = time.monotonic()
        if seen_at is None:
            log.problems.append(f"unit {target.unit}: zone {target.zone} never seen fail-safe")
        else:
            res.detected(seen_at - t_inject)
        back = await self._wait_restore(target, log)
        if back is None:
            log.problems.append(f"zone {target.zone} still fail-safe {RECOVERY_LIMIT_S:g} s after")
        else:
            res.recovered(back - t_heal)
        self._check_events(target, wall0, log)
        return len(log.problems) == first and log.crashes == crashes

    async def _wait_restore(self, target: Target, log: EpisodeLog) -> float | None:
        end = time.monotonic() + RECOVERY_LIMIT_S
        while time.monotonic() < end:
            if await self.scan(log) and target.zone not in self.failsafe():
                return self.done_at
        return None

    def _check_events(self, target: Target, since: float, log: EpisodeLog) -> None:
        assert self.rt is not None
        self.rt.historian.flush()
        evs = self.rt.historian.events(since, None, ["failsafe", "restore"], limit=10_000)
        mine = [e for e in evs if e["source"] == target.zone]
        kinds = [e["kind"] for e in sorted(mine, key=lambda e: e["t"])]
        if "failsafe" not in kinds or "restore" not in kinds[kinds.index("failsafe") :]:
            log.problems.append(f"zone {target.zone}: events {kinds}, not an alarm then its clear")


async def run_episodes(
    site: Site,
    db: Path,
    seed: int,
    *,
    proxy: bool,
    scan_s: float,
    plan: Callable[[Rig], list[tuple[Target, str, float]]],
    apply: Callable[[Rig, Target, str | None], None],
    res: ClassResult,
    delay_s: float = 2.0,
) -> EpisodeLog:
    """Every planned ``(target, kind, seconds)`` episode in turn on one rig."""
    log = EpisodeLog()
    with quiet("thermogate.controller.modbus_io", "thermogate.plc.transport"):  # "unit N lost"
        async with Rig(site, db, scan_s=scan_s, proxy=proxy, seed=seed, delay_s=delay_s) as rig:
            if not await rig.settle(log, 60.0):
                res.fail(f"zones never left their start-up fail-safe: {sorted(rig.failsafe())}")
                return log
            for target, kind, seconds in plan(rig):
                res.injected += 1
                inject = functools.partial(apply, rig, target, kind)
                heal = functools.partial(apply, rig, target, None)
                ok = await rig.episode(target, inject, heal, seconds, res, log)
                res.survived += ok
                if not await rig.settle(log):
                    log.problems.append(f"after {kind} on unit {target.unit}: zones stayed safe")
    return log
