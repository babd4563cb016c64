"""``thermogate bench faults``: one seeded campaign of the failures a site sees.

Each fault class lives in its own module and returns a
:class:`~.common.ClassResult` (``injected``, ``survived``, ``lost_rows``,
``crashes``, ``worst_detection_s``, ``worst_recovery_s`` and its own counts):

1. ``modbus_server_fuzz`` (``fuzz.py``): malformed, truncated and oversized
   frames and abandoned connections at the plant's Modbus/TCP server;
2. ``modbus_client`` (``client.py`` over ``proxy.py``): a device that answers
   with a wrong transaction id or unit, a short byte count, an exception, 2 s
   late, or resets mid-answer, seen by the controller;
3. ``device_loss`` (``device_loss.py``): one unit id silent for 1-120 s;
4. ``controller_kill9`` (``kill9.py``): the controller process killed with
   SIGKILL ``--runs`` times against a plant in another process;
5. ``sensor_faults`` (``sensor_faults.py``): stuck, drift, spike, NaN and
   out-of-range readings of a tank's fluid temperature;
6. ``clock_step`` (``clock_step.py``): the wall clock stepped +-1 h under
   the running loop;
7. ``disk`` (``disk.py``): the historian's disk refusing every write for a
   while (the process's file-size limit), then taking them again.

Classes 2, 3, 5, 6 and 7 share the rig of ``rig.py``.
Everything random comes from ``--seed``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from thermogate.plc.errors import ThermogateError

from .common import ClassResult

CLASSES = (
    "modbus_server_fuzz",
    "modbus_client",
    "device_loss",
    "controller_kill9",
    "sensor_faults",
    "clock_step",
    "disk",
)


def run_class(name: str, seed: int, runs: int, frames: int) -> ClassResult:
    """One fault class of the full campaign."""
    if name == "modbus_server_fuzz":
        from .fuzz import run_fuzz

        return run_fuzz(seed, frames)
    if name == "modbus_client":
        from .client import run_client_faults

        return run_client_faults(seed, reps=2)
    if name == "device_loss":
        from .device_loss import run_device_loss

        return run_device_loss(seed)
    if name == "controller_kill9":
        from .kill9 import run_kill9

        return run_kill9(seed, runs)
    if name == "sensor_faults":
        from .sensor_faults import run_sensor_faults

        return run_sensor_faults(seed)
    if name == "clock_step":
        from .clock_step import run_clock_steps

        return run_clock_steps(seed)
    if name == "disk":
        from .disk import run_disk_outages

        return run_disk_outages(seed)
    raise ValueError(f"unknown fault class {name!r}")


def bench_faults(args: argparse.Namespace) -> dict[str, Any]:
    """The campaign as JSON; ``ok`` is False if anything was lost, crashed or failed a check."""
    t0 = time.monotonic()
    only = [c.strip() for c in args.only.split(",")] if args.only else list(CLASSES)
    unknown = [c for c in only if c not in CLASSES]
    if unknown:
        raise ThermogateError(
            f"--only: no fault class {', '.join(unknown)} (one of {', '.join(CLASSES)})"
        )
    results = {name: run_class(name, args.seed, args.runs, args.frames) for name in only}
    return {
        "seed": args.seed,
        "runs": args.runs,
        "classes": {name: r.as_json() for name, r in results.items()},
        "lost_rows": sum(r.lost_rows for r in results.values()),
        "crashes": sum(r.crashes for r in results.values()),
        "ok": all(r.ok for r in results.values()),
        "wall_s": round(time.monotonic() - t0, 1),
    }
