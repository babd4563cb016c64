"""``thermogate bench cooling``: cooling energy against a fixed-setpoint controller.

The same site, weather, prices and planner run twice, side by side in two
worker processes (``side_by_side``), each closed loop through the control
core and the simulated plant (``run_simulation``, the gating planner, no
thermal model so both runs see exactly the same planning inputs):

* ``fixed``: every cooling loop at its design supply setpoint and ΔP, fans
  and pumps by PID, no resets -- what an immersion-tank or CDU vendor's
  controller does (``Regulation(trim_and_respond=False)``);
* ``thermogate``: the same loops with trim & respond (the supply setpoint
  raised and the ΔP trimmed while every valve has room; ``regulation.py``).

Per policy: ``cooling_kwh`` (pumps and dry-cooler fans, the plant's own
meter), ``it_kwh`` (so a saving bought with less IT work would show),
``pue``, ``limit_violation_c_min``, ``trips``, ``max_fluid_temp_c`` and
``max_cdu_supply_c``; ``saving_pct`` is thermogate's cooling energy below
``fixed``'s. Everything is measured on the plant's truth (``simulate``). On a
site the grid limits (the demo imports at most 2,870 kW for 4,015 kW of IT),
the import cooling no longer takes is planned for IT: ``it_kwh`` says how much.
"""

from __future__ import annotations

import argparse
from typing import Any

from thermogate.hil.scenario import load_for_run
from thermogate.plc.errors import DataFileError
from thermogate.plc.site import load_site

from .gating.planner import GatingPlanner
from .side_by_side import run_side_by_side, told
from .simulate import run_simulation

#: the policies, in the order they run: the baseline first
POLICIES = ("fixed", "thermogate")
#: the bench's controller scan (s): a week at 1 s would take an hour; a 5 s scan
#: is what the forecast and headroom studies use (the plant still steps at 1 s)
BENCH_SCAN_S = 5.0


def run_policy(job: dict[str, Any]) -> dict[str, Any]:
    """One policy's run and its figures (see the module docstring); a worker process.

    ``job``: ``site``, ``scenario``, ``weather``, ``hours``, ``policy``, ``scan_s``
    and ``seed`` (the scenario is read again here: it does not pickle).
    """
    policy = job["policy"]
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    hours = job["hours"]
    sc = load_for_run(job["scenario"], job["weather"], None, hours=hours)
    res = run_simulation(
        job["site"],
        sc,
        hours,
        seed=job["seed"],
        planner=GatingPlanner(job["site"]),
        scan_s=job["scan_s"],
        progress=told(job),
        trim_and_respond=policy == "thermogate",
    )
    s = res.summary
    return {
        "cooling_kwh": round(_kwh(s["cooling_energy_mwh"]), 1),
        "it_kwh": round(_kwh(s["it_energy_mwh"]), 1),
        "pue": s["pue"],
        "limit_violation_c_min": s["limit_violation_c_min"],
        "trips": s["trips"],
        "max_fluid_temp_c": s["max_fluid_temp_c"],
        "max_cdu_supply_c": s["max_cdu_supply_c"],
        "thermal_shed": s.get("thermal_shed"),
        "gpu_energy_mwh": s.get("gpu_energy_mwh"),
        "wall_seconds": s["wall_seconds"],
    }


def _kwh(mwh: object) -> float:
    """A summary's MWh figure in kWh."""
    return float(mwh) * 1000.0 if isinstance(mwh, (int, float)) else float("nan")


def bench_cooling(args: argparse.Namespace) -> dict[str, Any]:
    """Entry point of ``thermogate bench cooling``; returns the JSON result."""
    site = load_site(getattr(args, "site", None))
    hours = args.days * 24.0
    sc = load_for_run(args.scenario, args.weather, None, hours=hours)  # a bad file stops here
    if args.weather is not None:
        # a measured week compares the policies on that week: it is not repeated
        cover = sc.weather.ambient_c.covers_s - sc.weather_offset_s
        if cover < hours * 3600.0 - 1e-6:
            raise DataFileError(
                str(args.weather),
                None,
                None,
                f"covers {cover / 3600.0:g} h but the bench runs {hours:g} h "
                f"(--days {args.days:g}); give a file that covers the run, or fewer days",
            )
    common = {
        "site": site,
        "scenario": args.scenario,
        "weather": args.weather,
        "hours": hours,
        "scan_s": args.scan_s,
        "seed": args.seed,
    }
    # the two policies share nothing while they run: side by side, one core each
    out = run_side_by_side(
        run_policy,
        {p: {**common, "policy": p} for p in POLICIES},
        hours,
        show_progress=not args.json,
    )
    fixed, mine = out["fixed"]["cooling_kwh"], out["thermogate"]["cooling_kwh"]
    return {
        "scenario": args.scenario,
        "weather": args.weather or "the scenario's",
        "days": args.days,
        "scan_s": args.scan_s,
        "policies": out,
        "saving_pct": round(100.0 * (1.0 - mine / fixed), 1) if fixed > 0 else None,
    }
