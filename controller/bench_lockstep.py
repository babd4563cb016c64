"""``thermogate bench lockstep``: how fast controller and plant run in lockstep.

What ``thermogate simulate`` does (the demo site, the gating planner, the
thermal model beside the core as ``--learn-h`` says), timed stage by stage
with a :class:`~thermogate.controller.stopwatch.Stopwatch`:

* ``speedup``: simulated seconds per wall second of the run;
* ``stages``: each stage's share of the wall time (observe: the plant's
  sensor sample; scan: the control core, split into its parts under
  ``core``; apply: the writes; advance: the plant's step; forecast: the
  thermal model; record: the summary's books and series; cluster: a job
  trace's cluster, with ``--jobs`` only);
* the floor, measured in the same run: the plant alone, sampled and stepped
  for the same scans with the controller's writes held
  (``plant_only_speedup``), so ``over_plant_only`` (speedup over that floor)
  compares machines and loads that ``speedup`` alone cannot.

The machines are shared and noisy: compare figures of one run, not of two.
"""

from __future__ import annotations

import argparse
import time

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import load_scenario
from thermogate.plc.site import Site, load_site

from .gating.planner import GatingPlanner
from .simulate import Lockstep, _forecaster, run_simulation
from .stopwatch import Stopwatch


def bench_lockstep(args: argparse.Namespace) -> dict:
    site = load_site(getattr(args, "site", None))
    sc = load_scenario(args.scenario)
    forecaster = _forecaster(site, args)
    watch = Stopwatch()
    result = run_simulation(
        site,
        sc,
        args.hours,
        scan_s=args.scan_s,
        planner=GatingPlanner(site),
        forecaster=forecaster,
        stopwatch=watch,
    )
    sim_s = args.hours * 3600.0
    wall = sum(watch.seconds.values())
    scan_s = result.controller.scan_s
    n_scans = max(1, round(sim_s / scan_s))
    floor_wall = _plant_only(site, sc, scan_s, n_scans)
    speedup = sim_s / wall
    floor = sim_s / floor_wall
    core_other = watch.seconds.get("scan", 0.0) - sum(watch.core.values())
    return {
        "site": site.name,
        "scenario": sc.name,
        "hours": args.hours,
        "scan_s": scan_s,
        "scans": n_scans,
        "forecast": None if forecaster is None else forecaster.source,
        "wall_seconds": round(wall, 2),
        "speedup": round(speedup, 1),
        "scan_us": round(wall / n_scans * 1e6, 1),
        "plant_only_speedup": round(floor, 1),
        "over_plant_only": round(speedup / floor, 4),
        "stages": _shares(watch.seconds, wall),
        "core": _shares({**watch.core, "other": core_other}, wall),
        "summary": {
            k: result.summary[k]
            for k in ("max_fluid_temp_c", "limit_violation_c_min", "trips", "energy_mwh", "pue")
        },
    }


def _plant_only(site: Site, sc: object, scan_s: float, n_scans: int) -> float:
    """Wall seconds of the plant alone for ``n_scans`` scans: each scan its sensor
    sample and its step, as the lockstep makes them, with no controller (its
    writes held where they are, the heartbeat kept alive as a controller would)."""
    from .core import Controller

    sim = ScenarioPlant(site, sc, seed=0)  # type: ignore[arg-type]
    step = Lockstep(sim, Controller(site, sim.pmap, scan_s=scan_s))
    plant = sim.plant
    wall0 = time.perf_counter()
    for _ in range(n_scans):
        step.observe()
        plant.heartbeat = (plant.heartbeat + 1) & 0xFFFF
        step.advance()
    return time.perf_counter() - wall0


def _shares(seconds: dict[str, float], wall: float) -> dict[str, float]:
    """Each stage's share of ``wall``, largest first."""
    return {
        k: round(v / wall, 4) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]) if wall > 0
    }
