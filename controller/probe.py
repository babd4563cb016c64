"""``thermogate probe``: commissioning checks, without starting the controller.

What a commissioning engineer asks before the first ``thermogate run`` on a
new site: is the run configuration right, and does every device answer for
every point the site file gives it? The probe

1. loads and validates the run configuration and its site file (every error
   is the same one-line error ``run`` would give) and says what the run would
   use: the site, its points, each endpoint with its units, the database, the
   OPC UA endpoint, the console, and the further PLCs that carry equipment but
   no heartbeat of their own;
2. unless ``--offline``, reads every point once over Modbus, as a scan does,
   and says per unit whether it answered and what it refused (exception 02 at
   an address the PLC has no register for), which equipment reads as all
   zeros (addresses the PLC answers for but was not programmed with), and
   the PLC's own watchdog setting against the site file's.

Nothing is written to the plant or the database. Exit 0 when everything
answered as the site file says, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thermogate.plc.pointmap import PointMap, build_point_map

from .estimate import zero_groups
from .modbus_io import ModbusIO, units_named, unwatched_plcs
from .runconfig import RunConfig, load_run_config

#: one probe read gets this long (a scan's budget is 60 % of its interval)
PROBE_BUDGET_S = 10.0


@dataclass
class UnitReport:
    unit_id: int
    endpoint: str
    points: int
    read: int
    error: str | None


@dataclass
class ProbeReport:
    """What a probe found; ``ok`` when every point was read and nothing is amiss."""

    config: dict[str, Any]
    units: list[UnitReport] = field(default_factory=list)
    all_zero: list[str] = field(default_factory=list)
    #: the PLC's heartbeat timeout as read (None: not read) and what is wrong with it
    watchdog_s: float | None = None
    watchdog: str | None = None

    @property
    def ok(self) -> bool:
        clean = all(u.error is None and u.read == u.points for u in self.units)
        return clean and not self.all_zero and self.watchdog is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config": self.config,
            "units": [u.__dict__ for u in self.units],
            "all_zero": self.all_zero,
            "watchdog_s": self.watchdog_s,
            "watchdog": self.watchdog,
        }


def describe_config(cfg: RunConfig, pmap: PointMap, io: ModbusIO) -> dict[str, Any]:
    """What a run with ``cfg`` would use, as plain data."""
    return {
        "site": cfg.site.name,
        "site_file": cfg.site.source,
        "points": len(pmap),
        "scan_s": cfg.scan_s,
        "timeout_s": cfg.timeout_s,
        "endpoints": io.endpoints(),
        "database": str(cfg.db.resolve()),
        "opcua": None if cfg.opcua is None else cfg.opcua.endpoint,
        "console": None
        if cfg.console is None
        else (cfg.console.device or "a pseudo-terminal") + f" {cfg.console.line}",
        "forecast": cfg.forecast,
        "watchdog": unwatched_plcs(cfg.site),
    }


def all_zero(pmap: PointMap, values: np.ndarray, fresh: np.ndarray) -> list[str]:
    """Equipment whose every temperature was read as exactly 0 (the estimator's rule)."""
    return [
        name
        for name, idx in zero_groups(pmap)
        if fresh[idx].all() and bool((values[idx] == 0.0).all())
    ]


async def probe(cfg: RunConfig, *, offline: bool = False) -> ProbeReport:
    pmap = build_point_map(cfg.site)
    io = ModbusIO(pmap, cfg.endpoints, timeout_s=cfg.timeout_s, scan_budget_s=PROBE_BUDGET_S)
    # the run loop's "lost, retried in 1 s" lines mean nothing in a one-shot read
    quiet = logging.getLogger("thermogate.controller.modbus_io")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        report = ProbeReport(describe_config(cfg, pmap, io))
        if offline:
            return report
        rr = await io.read_all()
        unit_of = np.array([p.unit_id for p in pmap.points])
        where = {u: w for w, units in io.unit_endpoints().items() for u in units}
        for u in pmap.unit_ids():
            mine = unit_of == u
            report.units.append(
                UnitReport(
                    u,
                    where[u],
                    int(mine.sum()),
                    int(rr.fresh[mine].sum()),
                    rr.errors.get(u),
                )
            )
        report.all_zero = all_zero(pmap, rr.values, rr.fresh)
        plc_s = float(rr.values[pmap.index.plc.heartbeat_timeout_s])
        report.watchdog_s = plc_s if np.isfinite(plc_s) else None  # not read: its unit says
        problem = cfg.site.plc.watchdog_problem(plc_s, cfg.scan_s)
        report.watchdog = None if problem is None else problem[0]
        return report
    finally:
        await io.close()
        quiet.setLevel(level)


def render(report: ProbeReport) -> str:
    """The report as a commissioning engineer reads it, one finding a line."""
    c = report.config
    lines = [
        f"site '{c['site']}' ({c['site_file']}): {c['points']} points, scan {c['scan_s']:g} s,"
        f" Modbus timeout {c['timeout_s']:g} s",
        *(f"  endpoint {ep}: {units}" for ep, units in c["endpoints"].items()),
        f"  database: {c['database']}",
        f"  OPC UA:   {c['opcua'] or 'none ([opcua] absent)'}",
        f"  console:  {c['console'] or 'none ([console] absent)'}",
        *([f"  watchdog: {c['watchdog']}"] if c["watchdog"] else []),
    ]
    if not report.units:
        lines.append("configuration valid (offline: no device was asked)")
        return "\n".join(lines)
    bad = [u for u in report.units if u.error is not None or u.read < u.points]
    if not bad:
        lines.append(f"all {len(report.units)} units answered every point")
    for (endpoint, read_none, why), units in _grouped(bad).items():
        ids = units_named([u.unit_id for u in units])
        if read_none:
            n = sum(u.points for u in units)
            lines.append(f"{ids} ({endpoint}): nothing of {n} points read: {why}")
        else:
            for u in units:
                lines.append(
                    f"unit {u.unit_id} ({endpoint}): {u.read} of {u.points} points read: {why}"
                )
    for name in report.all_zero:
        lines.append(
            f"{name}: every temperature reads exactly 0: not programmed in the PLC yet, not"
            " wired, or the PLC runs a site file without equipment before it (its points"
            " shifted); a run holds it in fail-safe"
        )
    if report.watchdog:
        lines.append(report.watchdog)
    n_ok = len(report.units) - len(bad)
    if report.ok:
        lines.append("probe: everything answered as the site file says")
    elif not bad:
        lines.append(f"probe: all {len(report.units)} units answered, but see the findings above")
    else:
        lines.append(f"probe: {n_ok} of {len(report.units)} units answered every point; see above")
    return "\n".join(lines)


def _grouped(units: list[UnitReport]) -> dict[tuple[str, bool, str], list[UnitReport]]:
    """Units by endpoint, whether nothing was read, and why (the unit's own name taken
    out of the reason): a gateway that is down is one line, not one per unit."""
    out: dict[tuple[str, bool, str], list[UnitReport]] = {}
    for u in units:
        why = (u.error or "not read").replace(f"{u.endpoint} (unit {u.unit_id}): ", "")
        out.setdefault((u.endpoint, u.read == 0, why), []).append(u)
    return out


def probe_cli(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, None)
    report = asyncio.run(probe(cfg, offline=args.offline))
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print(render(report))
    return 0 if report.ok else 1
