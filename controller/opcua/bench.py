"""``thermogate bench opcua``: the scan and SCADA's view of it, with 10,000 items.

A site of about ``--points`` points is generated and served by a separate
``thermogate plant`` process (as ``bench scan``). The controller scans it every
second (``PERIOD_S``), in one run:

1. ``without``: no OPC UA server (the scan's baseline);
2. ``subscribed``: the OPC UA server (its own process) publishing every scan,
   and a client in another process monitoring ``--items`` points (10,000 by
   default) in one subscription at a 250 ms publishing interval;
3. ``stuck``: the same client frozen with SIGSTOP: it reads nothing, so the
   server's notifications pile up on a socket nobody drains;
4. ``naive_baseline``: the same as 2 with a server that writes every point
   through asyncua's public ``write_attribute_value``, one by one.

A scan is timed as ``thermogate run`` runs it (read, decide, write, historian,
then the hand-over to the faces, ``RealTimeController.after_scan``): what the
server costs the scan is each phase's p99 over the baseline's. What SCADA gets
is measured against what was published: every change of every scan of a
monitored item (value or status) must reach the client (``delivered``, a
share), ``latency`` from the scan that produced a value (its SourceTimestamp)
to the client receiving it, and ``notifications_per_s``. ``cpu_cores`` is each
process's CPU time over the phase's wall time (1.0 = one core busy): with two
cores, a total near 2 means the processes queue for CPU and the latency's tail
is that queue, not any one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from thermogate.plc.errors import ThermogateError

from ..bench import pct, served_site
from ..heap import freeze_startup
from ..modbus_io import Endpoint
from ..run import RealTimeController
from ..runconfig import RunConfig
from .process import OpcUaProcess
from .security import OpcUaSecurity
from .server import free_endpoint
from .snapshot import Snapshot
from .space import changed_points, namespace_uri, status_codes

PERIOD_S = 1.0  # the scan period of every phase (the site's)
WARMUP_SCANS = 5

#: a ``_metered`` phase: each scan's time (ms), the scans late, each process's CPU share
_Metered = tuple[list[float], int, dict[str, float]]


class _Served(TypedDict, total=False):
    """What ``_served`` measured (``stuck``: bulk only), or why it could not."""

    subscribed: int
    live: _Metered
    stuck: _Metered
    delivery: dict[str, Any]
    error: str  # the naive baseline failed outright


def bench_opcua(args: argparse.Namespace) -> dict:
    with served_site(args.points) as (site, port, tmp):
        cfg = RunConfig(
            site,
            tmp / "bench.db",
            Endpoint("tcp", "127.0.0.1", port, in_flight=4),  # as bench scan
            PERIOD_S,
            0.5,
            built_in_plant=False,
            forecast=False,
        )
        return asyncio.run(_measure(cfg, args.scans, args.items, tmp))


async def _paced(rt: RealTimeController, scans: int) -> tuple[list[float], int]:
    """``scans`` scans at ``PERIOD_S``: each one's time in ms, and the scans that
    missed their period."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    late = 0
    next_t = loop.time()
    for _ in range(scans):
        t0 = time.perf_counter()
        await rt.scan_once()
        rt.after_scan()
        times.append((time.perf_counter() - t0) * 1000.0)
        next_t += PERIOD_S
        rt.gc.collect(next_t - loop.time(), PERIOD_S)  # as the run loop does
        delay = next_t - loop.time()
        if delay < 0:
            late += 1
            next_t = loop.time()
        await asyncio.sleep(max(delay, 0.0))
    return times, late


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far; None where /proc has none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _plant_pid() -> int | None:
    """The served plant: this process's child running ``thermogate ... plant``."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == me and b"plant" in argv:
            return int(stat.parent.name)
    return None


class _CpuMeter:
    """Each named process's share of a core between ``__init__`` and ``shares``."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.t0 = time.perf_counter()
        self.c0 = {k: _cpu_s(v) for k, v in self.pids.items()}

    def shares(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        out: dict[str, float] = {}
        for k, pid in self.pids.items():
            c0, c1 = self.c0[k], _cpu_s(pid)
            if c0 is not None and c1 is not None:
                out[k] = round((c1 - c0) / wall, 3)
        out["total"] = round(sum(out.values()), 3)
        return out


async def _metered(rt: RealTimeController, scans: int, pids: dict[str, int | None]) -> _Metered:
    """``_paced`` with each process's CPU share over the phase appended."""
    meter = _CpuMeter(pids)
    times, late = await _paced(rt, scans)
    return times, late, meter.shares()


def _phase(times: list[float], late: int, base_p99: float | None = None) -> dict:
    p99 = pct(times, 99)
    out = {
        "scan_p50_ms": round(pct(times, 50), 2),
        "scan_p99_ms": round(p99, 2),
        "scans_late": late,
    }
    if base_p99:
        out["p99_over_without"] = round(p99 / base_p99, 2)
    return out


class _Published:
    """A face that keeps what each scan published for the monitored items: the
    ground truth of what a client must receive (every change of every scan)."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.scans: list[tuple[float, np.ndarray, np.ndarray]] = []

    def publish(self, snap: Snapshot) -> None:
        n = self.items
        codes = status_codes(snap.quality[:n], snap.flags[:n], snap.values[:n])
        self.scans.append((snap.t, codes, snap.values[:n].copy()))

    def serve(self, give: object) -> int:
        return 0

    def expected(self) -> set[tuple[int, float]]:
        """(item, scan time) of every change a client must be told of."""
        out: set[tuple[int, float]] = set()
        for (_, c0, v0), (t, c, v) in itertools.pairwise(self.scans):
            out.update((int(i), round(t, 3)) for i in changed_points(c0, v0, c, v))
        return out


async def _measure(cfg: RunConfig, scans: int, items: int, tmp: Path) -> dict:
    rt = RealTimeController(cfg)
    names = [p.name for p in rt.pmap.points][:items]
    if len(names) < items:
        raise ThermogateError(
            f"bench opcua: the site has {len(names)} points, fewer than --items {items} "
            "(raise --points)"
        )
    nodes_file = tmp / "nodes.txt"
    nodes_file.write_text("".join(n + "\n" for n in names), encoding="utf-8")
    try:
        for _ in range(WARMUP_SCANS):
            await rt.scan_once()
        freeze_startup()  # as ``RealTimeController.run`` does
        rt.gc.install()
        without = await _metered(rt, scans, {"controller": os.getpid(), "plant": _plant_pid()})
        bulk = await _served(rt, cfg, tmp, nodes_file, items, scans, naive=False)
        try:
            naive = await _served(rt, cfg, tmp, nodes_file, items, scans, naive=True)
        except ThermogateError as exc:  # the baseline may fail outright: say how
            naive = {"error": str(exc)}
    finally:
        rt.gc.uninstall()
        await rt.close()
    base = pct(without[0], 99)
    return {
        "points": len(rt.pmap),
        "items": items,
        "scans_per_phase": scans,
        "period_s": PERIOD_S,
        "without": {**_phase(*without[:2]), "cpu_cores": without[2]},
        "subscribed": {
            **_phase(*bulk["live"][:2], base),
            **bulk["delivery"],
            "cpu_cores": bulk["live"][2],
        },
        "stuck_client": {**_phase(*bulk["stuck"][:2], base), "cpu_cores": bulk["stuck"][2]},
        "naive_baseline": (
            {**_phase(*naive["live"][:2], base), **naive["delivery"], "cpu_cores": naive["live"][2]}
            if "live" in naive
            else naive
        ),
        "items_subscribed": bulk["subscribed"],
        "targets": {"delivered": 1.0, "latency_p99_ms": 250.0},
    }


async def _served(
    rt: RealTimeController,
    cfg: RunConfig,
    tmp: Path,
    nodes_file: Path,
    items: int,
    scans: int,
    *,
    naive: bool,
) -> _Served:
    """One server (bulk or naive) and one client: a live phase, then (bulk) a stuck one."""
    sec = OpcUaSecurity(
        endpoint=free_endpoint(), policies=("None",), anonymous="read", pki_dir=tmp / "pki"
    )
    face = OpcUaProcess(cfg.site, sec, cfg.db, history=False, naive=naive)
    await asyncio.to_thread(face.start)
    rt.faces.append(face)
    out_file = tmp / f"client-{'naive' if naive else 'bulk'}.npz"
    client = subprocess.Popen(
        [sys.executable, "-m", "thermogate.controller.opcua.benchclient",
         face.endpoint, namespace_uri(cfg.site), str(nodes_file), str(out_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    published = _Published(items)
    result: _Served = {}
    try:
        # keep scanning while the client subscribes: the face must not stall meanwhile
        result["subscribed"] = await _until_subscribed(rt, client)
        await _paced(rt, 3)  # the initial values are in
        rt.faces.append(published)
        pids = {"controller": os.getpid(), "plant": _plant_pid(), "server": face.pid}
        result["live"] = await _metered(rt, scans, {**pids, "client": client.pid})
        rt.faces.remove(published)
        await _paced(rt, 3)  # the last scan's changes travel
        if not naive:
            client.send_signal(signal.SIGSTOP)
            result["stuck"] = await _metered(rt, scans, pids)
            client.send_signal(signal.SIGCONT)
        client.send_signal(signal.SIGTERM)
        await asyncio.to_thread(client.communicate, timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
        rt.faces.remove(face)
        await asyncio.to_thread(face.stop)
    result["delivery"] = _delivery(published, np.load(out_file), face.timings, flushes=not naive)
    if face.gc_runs:
        result["delivery"]["server_gc_ms"] = _gc_summary(face.gc_runs)
    return result


def _gc_summary(runs: list[tuple[int, float]]) -> dict[str, float | int]:
    """The server's collections between snapshots: how many, and how long (ms)."""
    young = [ms for gen, ms in runs if gen < 2]
    full = [ms for gen, ms in runs if gen == 2]
    out: dict[str, float | int] = {"young": len(young), "full": len(full)}
    if young:
        out["young_p50"] = round(pct(young, 50), 1)
        out["young_max"] = round(max(young), 1)
    if full:
        out["full_max"] = round(max(full), 1)
    return out


def _delivery(
    published: _Published,
    got: Any,
    timings: list[tuple[float, float, float]],
    *,
    flushes: bool = True,
) -> dict:
    """What share of the published changes reached the client, how late, and where
    the time went (the server's ``timings``: scan time, apply started, flushed;
    ``flushes``: see :func:`_latency_parts`)."""
    want = published.expected()
    t0, t1 = published.scans[1][0], published.scans[-1][0]
    src = np.round(got["source"], 3)
    inside = (src >= round(t0, 3)) & (src <= round(t1, 3)) & (got["item"] >= 0)
    pairs = set(zip(got["item"][inside].tolist(), src[inside].tolist(), strict=True))
    latency = (got["arrived"][inside] - got["source"][inside]) * 1000.0
    span = max(t1 - t0, 1e-9)
    return {
        "changes_published": len(want),
        "delivered": round(len(want & pairs) / len(want), 4) if want else None,
        "notifications_per_s": round(int(inside.sum()) / span, 1),
        "latency_p50_ms": round(pct(latency.tolist(), 50), 1) if latency.size else None,
        "latency_p99_ms": round(pct(latency.tolist(), 99), 1) if latency.size else None,
        "latency_parts_ms": _latency_parts(
            timings, t0, t1, src[inside], got["arrived"][inside], flushes=flushes
        ),
    }


def _latency_parts(
    timings: list[tuple[float, float, float]],
    t0: float,
    t1: float,
    src: np.ndarray,
    arrived: np.ndarray,
    *,
    flushes: bool = True,
) -> dict[str, dict[str, float]]:
    """p50 and p99 of each leg of a change's way: the scan's decision and hand-over
    to the server process (``to_server``, from the scan's SourceTimestamp), the
    server writing and queueing it (``apply``), and publishing, the wire and the
    client's decoding (``to_client``, per notification, from the apply's end).

    ``flushes=False`` (the naive server): asyncua publishes each value as its write
    lands, before the apply ends, so there is no point to count ``to_client`` from
    (counted from the end, it came out negative); it is left out."""
    rows = [r for r in timings if round(t0, 3) <= round(r[0], 3) <= round(t1, 3)]
    if not rows:
        return {}
    flushed = {round(t, 3): done for t, _, done in rows}
    legs = {
        "to_server": [(start - t) * 1000.0 for t, start, _ in rows],
        "apply": [(done - start) * 1000.0 for _, start, done in rows],
        "to_client": [
            (a - flushed[s]) * 1000.0
            for s, a in zip(src.tolist(), arrived.tolist(), strict=True)
            if s in flushed
        ]
        if flushes
        else [],
    }
    return {
        k: {"p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)} for k, v in legs.items() if v
    }


async def _until_subscribed(rt: RealTimeController, client: subprocess.Popen[str]) -> int:
    """Scan on until the client says how many items it monitors."""
    assert client.stdout is not None
    line_task = asyncio.ensure_future(asyncio.to_thread(client.stdout.readline))
    deadline = time.monotonic() + 300.0
    while not line_task.done():
        if time.monotonic() > deadline:
            raise ThermogateError("bench opcua: the client did not subscribe within 300 s")
        await _paced(rt, 1)
    line = line_task.result()
    if not line.startswith("subscribed"):
        err = client.stderr.read() if client.stderr else ""
        last = [x for x in (line + err).strip().splitlines() if x.strip()][-3:]
        raise ThermogateError(f"bench opcua: the client failed: {' | '.join(last)}")
    return int(line.split()[1])
