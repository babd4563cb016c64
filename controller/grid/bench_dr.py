"""``thermogate bench dr``: the under-frequency shed, timed over real Modbus.

The plant runs in its own process (``thermogate plant``, a PLC is another
box) with a scenario of frequency dips; this process is the master beside
it, as the controller would be: it keeps the heartbeat, polls the site
meter and the PLC's relay bits as fast as they answer, and releases each trip
once the relay reports the frequency recovered (the grid operator's release).

Per dip that crosses the trip threshold, from what the master saw:

* ``signal`` — the first poll with the meter's frequency at or below
  ``trip_hz`` (the meter crossing the threshold);
* ``command`` — the first poll with ``plc.ufls_tripped`` set (the relay's
  shed command: pickup delay, PLC cycle, publication, one poll);
* ``meter`` — the first poll with the site import down by 90 % of the
  designated tanks' power (the contactors open and the meter sees it).

Some dips are near misses on purpose: just above the threshold, or deep but
shorter than the pickup delay. They must not trip (``false_trips``). Every
tank and rack row is read between polls: a load that was not designated
must not drop (``undesignated_shed``), inference least of all
(``inference_lost_kw``).

The baseline measured in the same run is the master's own poll interval
(``poll_p50_ms``/``poll_p99_ms``): the resolution of every time above. The
relay's recovery time is shortened to ``RECOVER_S`` so that dips can follow
each other (a real site waits 10 minutes); the pickup delay and everything
else are the site's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from thermogate.plc.codec import decode, encode
from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import PointMap, build_point_map
from thermogate.plc.points import Point
from thermogate.plc.site import Site, demo_site_text, parse_site_text
from thermogate.plc.transport import ModbusLink

from ..bench import _free_port, _wait_port, pct, stop_process

RECOVER_S = 1.0  # the bench relay's recovery time (the site's is minutes)
FIRST_DIP_S = 12.0  # plant time of the first dip: the plant settles, the master connects
DIP_PERIOD_S = 3.5  # a dip, its recovery, the release and the load back, then the next
DIP_S = 0.4  # how long a tripping dip stays under the threshold
NEAR_MISS_EVERY = 6  # every 6th dip is a near miss (alternately shallow and short)
SHORT_BLIP_S = 0.02  # a near miss: deep, but shorter than the pickup delay
#: an inference load below this fraction of its pre-dip power has lost work (its
#: own demand moves a little between snapshots; a shed would take all of it)
INFERENCE_TOLERANCE = 0.95
SIGNAL_TO_COMMAND_TARGET_MS = 100.0
SIGNAL_TO_METER_TARGET_S = 0.5


@dataclass(frozen=True)
class Dip:
    at_s: float
    duration_s: float
    hz: float
    trips: bool  # what the relay should do


def dip_plan(site: Site, events: int) -> list[Dip]:
    """``events`` tripping dips, with near misses between them."""
    relay = site.grid.relay
    if relay is None or not site.grid.under_frequency_armed:
        raise ThermogateError(f"site '{site.name}': the under-frequency relay is not armed")
    if relay.delay_s <= SHORT_BLIP_S:
        raise ThermogateError(
            f"the relay's pickup delay {relay.delay_s:g} s is too short for the bench's "
            f"{SHORT_BLIP_S:g} s near misses"
        )
    deep = relay.trip_hz - 0.3
    shallow = relay.trip_hz + 0.05
    plan: list[Dip] = []
    k, t = 0, FIRST_DIP_S
    while sum(d.trips for d in plan) < events:
        k += 1
        if k % NEAR_MISS_EVERY == 0:
            short = (k // NEAR_MISS_EVERY) % 2 == 0
            plan.append(
                Dip(t, SHORT_BLIP_S, deep, False) if short else Dip(t, DIP_S, shallow, False)
            )
        else:
            # alternate depths: just under the threshold, and a deep sag
            hz = relay.trip_hz - (0.05 if k % 2 else 0.5)
            plan.append(Dip(t, DIP_S, hz, True))
        t += DIP_PERIOD_S
    return plan


def scenario_text(plan: list[Dip]) -> str:
    """The built-in normal day with the dips as frequency grid events."""
    base = (resources.files("thermogate.hil.data") / "scenario_normal-day.toml").read_text()
    events = "".join(
        f'\n[[grid_events]]\nkind = "frequency"\nat_s = {d.at_s:.3f}\n'
        f"duration_s = {d.duration_s:.3f}\nparams.frequency_hz = {d.hz:.3f}\n"
        for d in plan
    )
    return base + events


def bench_site_text(text: str) -> str:
    """The site with the relay's recovery shortened to ``RECOVER_S``."""
    line = f"under_frequency_recover_s = {RECOVER_S}\n"
    if "\n[grid]\n" not in text:
        raise ThermogateError("the site has no [grid] section: nothing armed to bench")
    return text.replace("\n[grid]\n", "\n[grid]\n" + line, 1)


@dataclass
class Trace:
    """What the master saw, poll by poll (monotonic seconds)."""

    t: list[float] = field(default_factory=list)
    hz: list[float] = field(default_factory=list)
    site_kw: list[float] = field(default_factory=list)
    tripped: list[bool] = field(default_factory=list)
    #: (t, {load name: kW}) snapshots of every tank and rack row
    loads: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    releases: int = 0
    errors: int = 0


class _Master:
    def __init__(self, pmap: PointMap, port: int) -> None:
        self.pmap = pmap
        self.port = port
        self.links: dict[int, ModbusLink] = {}

    def link(self, unit: int) -> ModbusLink:
        if unit not in self.links:
            self.links[unit] = ModbusLink.tcp(
                "127.0.0.1", self.port, unit, timeout=0.5, retries=0, dedicated=True
            )
        return self.links[unit]

    async def block(self, points: list[Point]) -> dict[str, float]:
        """Read points of one unit and table in one request."""
        first = min(p.address for p in points)
        end = max(p.address + p.words for p in points)
        unit, table = points[0].unit_id, points[0].table
        raw = await self.link(unit).read(table, first, end - first)
        return {
            p.name: float(decode(p, raw[p.address - first : p.address - first + p.words]))
            for p in points
        }

    async def write(self, name: str, value: float) -> None:
        p = self.pmap[name]
        if p.table == "coil":
            await self.link(p.unit_id).write_coil(p.address, bool(value))
        else:
            await self.link(p.unit_id).write_register(p.address, encode(p, value)[0])

    def close(self) -> None:
        for link in self.links.values():
            link.close()


async def _watch(site: Site, pmap: PointMap, port: int, until_s: float) -> Trace:
    m = _Master(pmap, port)
    meter = [pmap["site.power_kw"], pmap["site.frequency_hz"]]
    relay = [pmap["plc.ufls_tripped"], pmap["plc.ufls_recovered"]]
    load_points = [pmap[f"{t.name}.power_kw"] for t in site.tanks] + [
        pmap[f"{r.name}.power_kw"] for r in site.rack_rows
    ]
    tr = Trace()
    stop = asyncio.Event()

    async def heartbeat() -> None:
        beat = 0
        while not stop.is_set():
            beat = (beat + 1) % 65536
            with contextlib.suppress(Exception):
                await m.write("plc.heartbeat", beat)
            await asyncio.sleep(0.5)

    async def snapshots() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            got: dict[str, float] = {}
            for p in load_points:
                with contextlib.suppress(Exception):
                    got[p.name.removesuffix(".power_kw")] = (await m.block([p]))[p.name]
            tr.loads.append((t0, got))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(heartbeat()), asyncio.create_task(snapshots())]
    released_for: float | None = None
    start = time.monotonic()
    try:
        while time.monotonic() - start < until_s:
            try:
                mv, rv = await asyncio.gather(m.block(meter), m.block(relay))
            except Exception:
                tr.errors += 1
                await asyncio.sleep(0.01)
                continue
            now = time.monotonic()
            tripped = rv["plc.ufls_tripped"] >= 0.5
            tr.t.append(now)
            tr.hz.append(mv["site.frequency_hz"])
            tr.site_kw.append(mv["site.power_kw"])
            tr.tripped.append(tripped)
            if tripped and rv["plc.ufls_recovered"] >= 0.5 and released_for is None:
                await m.write("plc.ufls_release", 1)  # the grid operator's release
                tr.releases += 1
                released_for = now
            if not tripped:
                released_for = None
            await asyncio.sleep(0)  # let the heartbeat and snapshots in
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        m.close()
    return tr


def analyse(site: Site, tr: Trace) -> dict:
    """The bench's numbers from what the master saw (module docstring)."""
    relay = site.grid.relay
    assert relay is not None
    t = np.asarray(tr.t)
    hz = np.asarray(tr.hz)
    kw = np.asarray(tr.site_kw)
    trip = np.asarray(tr.tripped, dtype=bool)
    below = hz <= relay.trip_hz
    starts = np.flatnonzero(below & ~np.r_[False, below[:-1]])
    ends = np.flatnonzero(below & ~np.r_[below[1:], False])
    designated = set(site.grid.under_frequency_shed)
    inference = {t_.name for t_ in site.tanks if t_.workload_class == "inference"} | {
        r.name for r in site.rack_rows if r.workload_class == "inference"
    }
    snap_t = np.asarray([s[0] for s in tr.loads])
    cmd_ms, meter_s = [], []
    false_trips = missed = undesignated = 0
    inference_lost = 0.0
    for s, e in zip(starts, ends, strict=True):
        t0 = t[s]
        under_s = t[e] - t0
        prior = trip[:s]
        if prior.size and prior[-1]:
            continue  # still tripped from the last dip: not a new signal
        after = np.flatnonzero(trip[s:] & (t[s:] <= t0 + 2.0))
        if after.size == 0:
            # a dip shorter than the pickup delay is right not to trip
            if under_s >= relay.delay_s + 0.05:
                missed += 1
            continue
        if under_s + 0.02 < relay.delay_s and t[s + after[0]] > t[e] + 0.05:
            false_trips += 1
        cmd_ms.append((t[s + after[0]] - t0) * 1000.0)
        # the load before the dip, from the last snapshot, and at the meter
        k = int(np.searchsorted(snap_t, t0)) - 1
        if k < 0:
            continue
        before = tr.loads[k][1]
        shed_kw = sum(v for n, v in before.items() if n in designated)
        pre = kw[max(0, s - 20) : s + 1]
        target = float(np.median(pre)) - 0.9 * shed_kw
        off = np.flatnonzero((kw[s:] <= target) & (t[s:] <= t0 + 3.0))
        if off.size:
            meter_s.append(float(t[s + off[0]] - t0))
        # every load while tripped: the designated ones off, the others on
        during = [
            snap for ts, snap in tr.loads if t0 + 0.2 <= ts <= t0 + DIP_S + RECOVER_S * 0.8 and snap
        ]
        for snap in during:
            for name, v in snap.items():
                was = before.get(name, math.nan)
                if name in designated or not math.isfinite(was) or was < 1.0:
                    continue
                if v < 0.5 * was:
                    undesignated += 1
                if name in inference and v < INFERENCE_TOLERANCE * was:
                    inference_lost = max(inference_lost, was - v)
    poll = np.diff(t) * 1000.0 if len(t) > 1 else np.zeros(0)
    c99, m99 = pct(cmd_ms, 99), pct(meter_s, 99)
    return {
        "events": len(cmd_ms),
        "signal_to_command_p50_ms": round(pct(cmd_ms, 50), 1),
        "signal_to_command_p99_ms": round(c99, 1),
        "signal_to_meter_p50_s": round(pct(meter_s, 50), 3),
        "signal_to_meter_p99_s": round(m99, 3),
        "meter_seen": len(meter_s),
        "pickup_delay_ms": round(relay.delay_s * 1000.0, 1),
        "poll_p50_ms": round(pct(list(poll), 50), 2),
        "poll_p99_ms": round(pct(list(poll), 99), 2),
        "polls": len(t),
        "poll_errors": tr.errors,
        "releases": tr.releases,
        "false_trips": false_trips,
        "missed_trips": missed,
        "undesignated_shed": undesignated,
        "inference_lost_kw": round(inference_lost, 1),
    }


def bench_dr(args: argparse.Namespace) -> dict:
    text = Path(args.site).read_text("utf-8") if args.site else demo_site_text()
    text = bench_site_text(text)
    site = parse_site_text(text, args.site or "<demo>")
    pmap = build_point_map(site)
    plan = dip_plan(site, args.events)
    with tempfile.TemporaryDirectory(prefix="thermogate-bench-dr-") as tmp:
        site_file = Path(tmp) / "site.toml"
        site_file.write_text(text, encoding="utf-8")
        scen_file = Path(tmp) / "dips.toml"
        scen_file.write_text(scenario_text(plan), encoding="utf-8")
        port = _free_port()
        cmd = [sys.executable, "-m", "thermogate.controller.cli", "plant"]
        cmd += ["--site", str(site_file), "--scenario", str(scen_file), "--port", str(port)]
        cmd += ["--start", "rated"]  # a hall already running: the relay has mining to shed
        plant = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
        )
        try:
            _wait_port(port, plant)
            # the plant's clock started as it began listening: watch to the last dip
            until = plan[-1].at_s + DIP_PERIOD_S
            trace = asyncio.run(_watch(site, pmap, port, until))
        finally:
            stop_process(plant)
    out = analyse(site, trace)
    out["dips"] = len(plan)
    out["near_misses"] = sum(not d.trips for d in plan)
    out["targets"] = {
        "events_min": 50,
        "signal_to_command_p99_ms": SIGNAL_TO_COMMAND_TARGET_MS,
        "signal_to_meter_p99_s": SIGNAL_TO_METER_TARGET_S,
    }
    out["met"] = bool(
        out["events"] >= min(50, args.events)
        and out["signal_to_command_p99_ms"] <= SIGNAL_TO_COMMAND_TARGET_MS
        and out["signal_to_meter_p99_s"] <= SIGNAL_TO_METER_TARGET_S
        and out["false_trips"] == 0
        and out["missed_trips"] == 0
        and out["undesignated_shed"] == 0
        and out["inference_lost_kw"] == 0.0
        and out["meter_seen"] == out["events"]
    )
    return out
