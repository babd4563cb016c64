"""``thermogate bench historian``: what the historian costs the scan, and how fast it writes.

Measures, for a synthetic point list of ``--points`` points (a fifth of them
booleans) and ``--scans`` scans per phase:

* ``record_scan`` on the caller's thread, back to back and paced (one every
  5 ms while the writer commits once a second), next to a bare copy of the same
  arrays after the same sleep (the floor a paced call cannot go below: waking
  up with cold caches costs as much as the copy);
* the writer's throughput on a backlog of scans 1 s apart in data time (so the
  minute aggregates are part of the work), 10 scans per transaction;
* ``record_event`` on the caller's thread, and how long after it returned the
  event is committed (fsynced) and visible to another connection;
* bytes on disk per scan, aggregates included.

Results for this repository's reference machine are in README.md ("Benchmarks").
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from .writer import Historian

__all__ = ["bench_historian", "measure"]

PACE_S = 0.005


def measure(directory: str | Path, points: int = 10_000, scans: int = 300) -> dict[str, float]:
    """Run the benchmark in ``directory``; see the module docstring."""
    directory = Path(directory)
    names = [f"dev{i // 20:04d}.p{i % 20:02d}" for i in range(points)]
    rng = np.random.default_rng(0)
    values = rng.normal(50.0, 10.0, (scans, points))
    values[:, ::5] = np.round(values[:, ::5] > 50.0)  # a fifth are booleans
    qual = np.zeros(points, np.uint8)
    out: dict[str, float] = {}
    path = directory / f"bench_{points}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with Historian(path, names, batch_s=1.0) as h:
        for i in range(scans):  # warm up: the writer hands the buffers back
            h.record_scan(1e9 + i, values[i], qual)
        h.flush(timeout=600.0)

        def cost(pace: float, t0: float) -> list[float]:
            out = []
            for i in range(scans):
                start = time.perf_counter()
                h.record_scan(t0 + i, values[i], qual)
                out.append(time.perf_counter() - start)
                time.sleep(pace)
            return out

        hot = cost(0.0, 1e9 + scans)
        h.flush(timeout=600.0)
        paced = cost(PACE_S, 1e9 + 2 * scans)  # the writer commits once a second meanwhile
        h.flush(timeout=600.0)
        out["record_scan_us_median"] = float(np.median(hot)) * 1e6
        out["record_scan_us_p99"] = float(np.percentile(hot, 99)) * 1e6
        out["record_scan_paced_us_median"] = float(np.median(paced)) * 1e6
        out["record_scan_paced_us_p99"] = float(np.percentile(paced, 99)) * 1e6
        # the floor for the paced figure: a bare copy of the same arrays after the same sleep
        vb, qb = np.empty(points), np.empty(points, np.uint8)
        bare = []
        for i in range(scans):
            start = time.perf_counter()
            np.copyto(vb, values[i])
            np.copyto(qb, qual)
            bare.append(time.perf_counter() - start)
            time.sleep(PACE_S)
        out["bare_copy_paced_us_median"] = float(np.median(bare)) * 1e6
        # writer throughput: a backlog of scans committed 10 per transaction
        h.batch_s = 3600.0
        h._max_tx_scans = 10
        for i in range(scans):
            h.record_scan(1e9 + 3 * scans + i, values[i], qual)
        t0 = time.perf_counter()
        h.flush(timeout=600.0)
        out["writer_scans_per_s"] = scans / (time.perf_counter() - t0)
        out["writer_values_per_s"] = out["writer_scans_per_s"] * points
        n = 200
        t0 = time.perf_counter()
        for i in range(n):
            h.record_event(1e9 + i, "info", "bench", "x")
        out["record_event_us"] = (time.perf_counter() - t0) / n * 1e6
        h.flush()
        lat = []
        probe = sqlite3.connect(str(path))  # another connection, as any reader is
        try:
            for i in range(20):
                t0 = time.perf_counter()
                h.record_event(3e9 + i, "info", "bench", "latency")
                while not probe.execute(
                    'SELECT 1 FROM "events" WHERE "t" = ?', (3e9 + i,)
                ).fetchone():
                    time.sleep(0.0002)
                lat.append(time.perf_counter() - t0)
        finally:
            probe.close()
        out["event_committed_ms_median"] = float(np.median(lat)) * 1e3
        out["event_committed_ms_max"] = float(np.max(lat)) * 1e3
    out["bytes_per_scan"] = path.stat().st_size / (4 * scans)
    return out


def bench_historian(args: argparse.Namespace) -> dict[str, object]:
    """Entry point of ``thermogate bench historian``."""
    points, scans = int(args.points), int(args.scans)
    with tempfile.TemporaryDirectory(prefix="thermogate-bench-") as tmp:
        res = measure(tmp, points, scans)
    return {"points": points, "scans": scans, **{k: round(v, 2) for k, v in res.items()}}
