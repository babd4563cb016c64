"""Benchmarks of the simulated plant (``thermogate bench plant``).

Speed is reported as a ratio against a baseline measured in the same run, as
these machines are shared and noisy: for the plant the baseline is the wall
clock itself (``speedup = sim_seconds / wall_seconds``). A heartbeat is
toggled every step, as a running controller would, so the PLC logic stays on
its normal path instead of the watchdog's safe state.
"""

from __future__ import annotations

import argparse
import time

from thermogate.plc.errors import ThermogateError
from thermogate.plc.site import load_site

from .runner import ScenarioPlant


def bench_plant(site_file: str | None, hours: float, scenario: str = "normal-day") -> dict:
    site = load_site(site_file)
    sim = ScenarioPlant(site, scenario, seed=0)
    plant = sim.plant
    steps = round(hours * 3600.0 / plant.dt)
    # Warm-up (first-call costs of numpy kernels are not the plant's speed).
    for _ in range(200):
        plant.heartbeat = (plant.heartbeat + 1) & 0xFFFF
        sim.step()
    t_start = plant.t
    wall0 = time.perf_counter()
    for _ in range(steps):
        plant.heartbeat = (plant.heartbeat + 1) & 0xFFFF
        sim.step()
    wall = time.perf_counter() - wall0
    sim_s = plant.t - t_start
    return {
        "sim_seconds": round(sim_s, 1),
        "wall_seconds": round(wall, 3),
        "speedup": round(sim_s / wall, 1),
        "dt_s": plant.dt,
        "steps": steps,
        "step_us": round(wall / steps * 1e6, 1),
        "points": len(sim.pmap),
        "tanks": len(site.tanks),
        "site": site.name,
        "scenario": scenario,
        "final_max_tank_c": round(float(plant.T_tank.max()), 2) if len(site.tanks) else None,
    }


def run_bench(args: argparse.Namespace) -> dict:
    if args.bench == "plant":
        return bench_plant(args.site, args.hours)
    raise ThermogateError(f"unknown benchmark '{args.bench}'")
