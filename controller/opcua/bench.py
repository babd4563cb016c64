"""``thermogate bench opcua``: the scan with and without SCADA subscribed to it.

A site of about ``--points`` points is generated and served by a separate
``thermogate plant`` process (as ``bench scan``). The controller scans it at a
fixed period in three phases of ``--scans`` scans each, in one run:

1. ``without``: no OPC UA server (the baseline);
2. ``subscribed``: the OPC UA face running, publishing every scan, and a
   client in another process monitoring ``--items`` variables (10,000 by
   default) in one subscription;
3. ``stuck``: the same client frozen with SIGSTOP: it reads nothing, so the
   server's notifications pile up on a socket nobody drains.

A scan is timed as ``thermogate run`` runs it: read, decide, write, historian,
then the hand-over to the faces (``RealTimeController.after_scan``). What the
face costs the scan is the ratio of each phase's p99 to the baseline's; the
client's notification count shows the items were live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from thermogate.plc.errors import ThermogateError

from ..bench import pct, served_site
from ..modbus_io import Endpoint
from ..run import RealTimeController, RunConfig
from .process import OpcUaProcess
from .security import OpcUaSecurity
from .server import free_endpoint
from .space import namespace_uri

PERIOD_S = 0.5  # the scan period of every phase (10,000 points scan in ~50-90 ms)
WARMUP_SCANS = 5


def bench_opcua(args: argparse.Namespace) -> dict:
    with served_site(args.points) as (site, port, tmp):
        cfg = RunConfig(
            site,
            tmp / "bench.db",
            Endpoint("tcp", "127.0.0.1", port),
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
        delay = next_t - loop.time()
        if delay < 0:
            late += 1
            next_t = loop.time()
        await asyncio.sleep(max(delay, 0.0))
    return times, late


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


async def _measure(cfg: RunConfig, scans: int, items: int, tmp: Path) -> dict:
    rt = RealTimeController(cfg)
    face: OpcUaProcess | None = None
    client: subprocess.Popen[str] | None = None
    try:
        for _ in range(WARMUP_SCANS):
            await rt.scan_once()
        without = await _paced(rt, scans)
        sec = OpcUaSecurity(
            endpoint=free_endpoint(), policies=("None",), anonymous="read", pki_dir=tmp / "pki"
        )
        face = OpcUaProcess(cfg.site, sec, cfg.db, history=False)
        await asyncio.to_thread(face.start)
        rt.faces.append(face)
        names = [p.name for p in rt.pmap.points][:items]
        if len(names) < items:
            raise ThermogateError(
                f"bench opcua: the site has {len(names)} points, fewer than --items {items} "
                "(raise --points)"
            )
        nodes_file = tmp / "nodes.txt"
        nodes_file.write_text("".join(n + "\n" for n in names), encoding="utf-8")
        client = subprocess.Popen(
            [sys.executable, "-m", "thermogate.controller.opcua.benchclient",
             face.endpoint, namespace_uri(cfg.site), str(nodes_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
        )  # fmt: skip
        # keep scanning while the client subscribes: the face must not stall meanwhile
        subscribed = await _until_subscribed(rt, client)
        live = await _paced(rt, scans)
        client.send_signal(signal.SIGSTOP)
        stuck = await _paced(rt, scans)
        client.send_signal(signal.SIGCONT)
        client.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(client.communicate, timeout=60)
        notifications = _last_int(out, "notifications")
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        if face is not None:
            await asyncio.to_thread(face.stop)
        await rt.close()
    base = pct(without[0], 99)
    return {
        "points": len(rt.pmap),
        "monitored_items": subscribed,
        "scans_per_phase": scans,
        "period_s": PERIOD_S,
        "without": _phase(*without),
        "subscribed": _phase(*live, base),
        "stuck_client": _phase(*stuck, base),
        "notifications_received": notifications,
        "snapshots_sent": face.sent if face is not None else 0,
        "snapshots_applied": face.applied if face is not None else 0,
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
        raise ThermogateError(f"bench opcua: the client failed: {(line + err).strip()[-400:]}")
    return int(line.split()[1])


def _last_int(text: str, key: str) -> int | None:
    for line in reversed(text.splitlines()):
        if line.startswith(key):
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split()[1])
    return None
