"""``thermogate simulate``: the control core in lockstep with the simulated plant.

No sockets: each scan the plant's sensor sample is the observation (devices
with an injected comms fault are stale, exactly as the Modbus edge would
report them), the core's writes are applied to the plant as commands, and the
plant advances one scan. The same ``Controller`` runs in ``thermogate run``
against real Modbus.

The summary is measured on the plant's truth, not on what the controller
believed: ``max_fluid_temp_c`` is the hottest any tank really got,
``limit_violation_c_min`` integrates °C·minutes above any alarm limit (tank
fluid, CDU coolant supply, loop water supply), ``trips`` counts the PLC's hard interlocks and
breaker trips.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import Scenario, load_for_run, load_scenario
from thermogate.hil.scenario.jobs import Job, load_jobs_csv
from thermogate.plc.errors import DataFileError, ThermogateError
from thermogate.plc.records import record_columns
from thermogate.plc.site import Site

from .core import Controller, Planner, ScanResult
from .core.commands import Principal, ReleaseUnderFrequency
from .forecasting import ModelRuntime
from .gating.cluster import Admission
from .gating.economics import EconomicsIntervals
from .gating.placement import gpu_loads
from .gating.planner import GatingPlanner
from .gating.reasons import PlanTap, ReasonLog
from .gating.world import ClusterInTheLoop, GpuGate
from .grid.compliance import Instruction
from .grid.peaks import (
    PeakShaving,
    PeakWindow,
    describe_windows,
    load_peaks_csv,
    windows_within,
)
from .grid.settlement import Judged, Settlement, rule_for, settled_event
from .historian import Historian
from .signals import Event, Observation
from .stopwatch import Stopwatch, no_lap

if TYPE_CHECKING:  # the model (scikit-learn) loads only when a run forecasts
    from thermogate.models.headroom import Headroom
    from thermogate.models.live import LiveForecaster


SAMPLE_S = 60.0  # report series resolution (simulated seconds)
#: added to the simulated time of scans recorded in a historian (2023-11-14, Unix seconds)
HISTORIAN_EPOCH_S = 1.7e9


class Progress(Protocol):
    """Told how far a run is: ``done`` of ``total`` scans (``report.ProgressBar``)."""

    def update(self, done: float, total: float) -> None: ...


#: the simulated grid operator releases an under-frequency trip this long after
#: the relay reports the frequency recovered (an ERCOT release takes minutes)
UFLS_RELEASE_AFTER_S = 300.0


@dataclass
class SimulationResult:
    summary: dict[str, object]
    series: dict[str, np.ndarray]
    meta: dict[str, object]
    events: list[dict[str, object]]
    controller: Controller = field(repr=False)
    sim: ScenarioPlant = field(repr=False)


class Lockstep:
    """One scan of controller and plant in lockstep: what ``run_simulation`` does
    every scan, and what a study continuing a copied plant and controller does.

    Each scan, in order: :meth:`observe` (the plant's sensor sample; devices
    with an injected comms fault are stale, as the Modbus edge reports them),
    the caller's ``ctrl.scan``, :meth:`apply` (the writes, lost for a device
    that does not answer) and :meth:`advance` (the plant steps one scan).
    """

    def __init__(self, sim: ScenarioPlant, ctrl: Controller) -> None:
        self.sim = sim
        self.ctrl = ctrl
        pmap = sim.pmap
        self.steps_per_scan = max(1, round(ctrl.scan_s / sim.plant.dt))
        self.unit_of = np.array([p.unit_id for p in pmap.points])
        self.unit_mask = {u: self.unit_of == u for u in set(self.unit_of.tolist())}

    def observe(self) -> Observation:
        sim = self.sim
        values = sim.plant.sensors.sample()
        fresh = np.ones(len(values), dtype=bool)
        for unit in sim.device_faults:
            m = self.unit_mask.get(unit)
            if m is not None:
                fresh[m] = False
                values[m] = np.nan
        return Observation(
            sim.plant.t,
            values,
            fresh,
            import_limit_kw=sim.import_limit_kw(),
            price_per_mwh=sim.price_per_mwh(),
        )

    def apply(self, res: ScanResult) -> tuple[int, list[Event]]:
        """Write the scan's commands: (writes lost, an event per write the plant refused)."""
        sim, plant = self.sim, self.sim.plant
        lost, failed, unsent = 0, [], []
        for w in res.writes:
            i = sim.pmap.position(w.point)
            if int(self.unit_of[i]) in sim.device_faults:
                lost += 1  # the device does not answer: the write is lost
                unsent.append(i)
                continue
            try:
                plant.write(w.point, w.value)
            except (KeyError, ValueError) as exc:
                lost += 1
                unsent.append(i)
                failed.append(Event(plant.t, "write-failed", w.point, str(exc), 700))
        self.ctrl.actuation.not_sent(unsent)  # as ``run`` tells it its failed writes
        return lost, failed

    def advance(self) -> None:
        self.sim.step(self.steps_per_scan)

    def scan(self) -> ScanResult:
        """observe, scan, apply, advance: a scan with nothing recorded."""
        res = self.ctrl.scan(self.observe())
        self.apply(res)
        self.advance()
        return res


def run_simulation(
    site: Site,
    scenario: Scenario | str,
    hours: float,
    *,
    seed: int = 0,
    planner: Planner | None = None,
    progress: Progress | None = None,
    sample_s: float = SAMPLE_S,
    historian: Historian | None = None,
    scan_s: float | None = None,
    forecaster: LiveForecaster | None = None,
    jobs: Sequence[Job] | None = None,
    admission: Admission = "backfill",
    plant_dt: float = 1.0,
    on_scan: Callable[[ScenarioPlant, Controller], None] | None = None,
    peaks: Sequence[PeakWindow] = (),
    ufls_release_after_s: float | None = UFLS_RELEASE_AFTER_S,
    trim_and_respond: bool = True,
    stopwatch: Stopwatch | None = None,
) -> SimulationResult:
    """Run controller + plant for ``hours`` of simulated time; see the module docstring.

    With a ``historian``, every scan's validated values and quality (and the
    planned load, if it was opened with ``record_columns``) are recorded
    there at ``HISTORIAN_EPOCH_S`` + the scan's simulated time (Unix-like seconds),
    as ``thermogate run`` records them, with the books (an ``economics`` row a
    minute, from the plant's truth) and a ``gating`` row whenever a load's budget
    or its reason changes; the caller opens, flushes and closes it.

    With a ``forecaster`` (:class:`~thermogate.models.live.LiveForecaster`) the
    thermal model runs beside the core as in ``thermogate run``: it sees every
    scan, its headroom reaches the planner once a minute, its events are
    logged, and its 15-minute forecasts and headroom join the report series.

    With ``jobs`` (a GPU-cluster trace) a simulated cluster runs them on the
    plant's GPUs (:class:`~thermogate.controller.gating.world.ClusterInTheLoop`):
    the gating planner tells it how many GPUs it may keep busy and learns what
    the jobs want; any other planner lets it use every GPU.

    ``on_scan(sim, ctrl)`` is called after every scan's plant step (a study
    takes its snapshots there).

    ``peaks`` (in scenario seconds) join the scenario's ``peak`` grid events as
    the controller's peak windows (``controller.grid.peaks``).

    An under-frequency trip is released by the simulated grid operator
    ``ufls_release_after_s`` after the relay reports the frequency recovered
    (through the command path, as the grid; None: never, the load stays shed).

    ``trim_and_respond=False`` keeps every cooling loop at its design supply
    setpoint and ΔP (the fixed-setpoint baseline of ``thermogate bench cooling``).

    A ``stopwatch`` is told the wall time of every stage of every scan, and of
    the core's parts (``thermogate bench lockstep``).
    """
    sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
    sim = ScenarioPlant(site, sc, seed=seed, dt=plant_dt)
    plant, pmap = sim.plant, sim.pmap
    # A longer controller scan trades control resolution for speed in long
    # studies; the default is the site's scan. The plant steps at ``plant_dt``
    # (1 s; studies of days step it at their 5 s scan: its fastest zone, a
    # CDU's coolant, has a time constant of ~40 s, and the summaries of a
    # gating heatwave at 1, 2.5 and 5 s agree to 0.1 %).
    problem = None if scan_s is None else site.plc.scan_problem(scan_s)
    if problem is not None:
        raise ThermogateError(f"scan_s: {problem}")
    # with a historian, a tap on the planner keeps its budgets for the gating rows
    tap = PlanTap(planner) if planner is not None and historian is not None else None
    ctrl = Controller(
        site, pmap, planner=tap or planner, scan_s=scan_s, trim_and_respond=trim_and_respond
    )
    world = ClusterInTheLoop(site, jobs, admission) if jobs is not None else None
    # checked once: a Protocol check inspects the class
    gate_of = planner if isinstance(planner, GpuGate) else None
    if world is not None and isinstance(planner, GatingPlanner) and planner.gpu_demand is None:
        planner.gpu_demand = world.demand
    if isinstance(planner, GatingPlanner) and planner.price_ahead is None:
        planner.price_ahead = sc.price_at  # the scenario's prices are day-ahead prices
    model = ModelRuntime(ctrl, forecaster) if forecaster is not None else None
    # a historian opened with ``record_columns`` also gets the planned load
    with_plan = historian is not None and list(historian.point_names) == record_columns(pmap, site)
    scan_s = ctrl.scan_s
    step = Lockstep(sim, ctrl)
    n_scans = max(1, round(hours * 3600.0 / scan_s))
    tank_alarm = np.array([t.limits.fluid_alarm_c for t in site.tanks])
    cdu_alarm = np.array([c.supply_alarm_c for c in site.cdus])
    loop_alarm = np.array([lp.supply_alarm_c for lp in site.loops])
    classes = ("mining", "training", "inference")
    # dtype=bool: a site without rack rows (or tanks) has an empty mask, which
    # numpy makes float and then refuses as an index
    t_class = {c: np.array([t.workload_class == c for t in site.tanks], bool) for c in classes}
    r_class = {c: np.array([r.workload_class == c for r in site.rack_rows], bool) for c in classes}

    # each GPU load and its place in the plant's power arrays (a tank's or a row's)
    tank_at = {t.name: i for i, t in enumerate(site.tanks)}
    row_at = {r.name: i for i, r in enumerate(site.rack_rows)}
    gpu_meters = [
        (ld, ld.name in tank_at, tank_at[ld.name] if ld.name in tank_at else row_at[ld.name])
        for ld in gpu_loads(site)
    ]
    # the books by the minute (historian rows) and in total (the summary)
    books = EconomicsIntervals.for_site(site)
    ledger = books.total
    reasons = ReasonLog({ld.name: ld.rated_kw for ld in ctrl.topo.loads})

    # curtailments settled as the grid operator would: the scenario's and the
    # command path's (an operator, the OpenADR VEN), against the plant's meter
    settlement = Settlement(rule_for(site.grid))
    for e in sc.grid_events:
        # one the run ends before is no instruction of this run (a 6 h heatwave
        # counted the scenario's 18:00 curtailment)
        if e.kind == "curtail" and e.at_s < hours * 3600.0:
            settlement.instruct(
                f"scenario curtail at {e.at_s / 3600.0:.2f} h",
                Instruction(e.at_s, e.end_s, e.import_limit_kw(site.import_limit_kw)),
            )
    ufls_trips = 0
    windows = [*peaks] + [
        PeakWindow(e.at_s, e.end_s, e.reduce_kw)
        for e in sc.grid_events
        if e.kind == "peak" and e.reduce_kw is not None
    ]
    if windows:
        ctrl.peaks = PeakShaving(windows)

    rec: dict[str, list[float]] = {}
    events: list[dict[str, object]] = []
    #: per kind of limit (thermal, power, flow): how many were applied and lifted
    limits: dict[str, dict[str, int]] = {}
    withheld_kwh = dict.fromkeys(classes, 0.0)
    gpu_kwh = 0.0  # the GPU loads' energy, metered by the plant (tanks and rack rows)
    violation_c_min = 0.0
    over_import_kw_min = 0.0
    max_fluid = -math.inf
    max_cdu = -math.inf
    trips = 0
    write_failures = 0
    kwh0, it0, cool0 = plant.site_kwh, plant.ledger.it_kwh, plant.ledger.cooling_kwh
    next_sample = plant.t
    fc_zones: dict[str, Headroom] = {}
    fc_trusted: bool | None = None
    if stopwatch is not None:
        stopwatch.instrument(ctrl)
    lap = no_lap if stopwatch is None else stopwatch.lap
    wall0 = time.perf_counter()
    if stopwatch is not None:
        stopwatch.start()

    def log(ev: Event | tuple[float, str], kind: str | None = None) -> None:
        if isinstance(ev, Event):
            events.append(
                {
                    "t_h": ev.t / 3600.0,
                    "kind": ev.kind,
                    "source": ev.source,
                    "message": ev.message,
                    "severity": ev.severity,
                }
            )
        else:
            t_ev, msg = ev
            k = kind or ("trip" if ("interlock:" in msg or "tripped" in msg) else "info")
            events.append(
                {
                    "t_h": t_ev / 3600.0,
                    "kind": k,
                    "source": "plant",
                    "message": msg,
                    "severity": 900 if k == "trip" else 300,
                }
            )

    recovered_at: float | None = None
    for k in range(n_scans):
        obs = step.observe()
        lap("observe")
        res = ctrl.scan(obs)
        lap("scan")
        if ufls_release_after_s is not None:
            recovered_at = _grid_operator_release(ctrl, obs.t, recovered_at, ufls_release_after_s)
        # the import limit asked of the site this scan: the one its alarm names
        limit = ctrl.import_limit_kw
        if historian is not None:
            if with_plan:
                historian.record_scan(HISTORIAN_EPOCH_S + obs.t, *res.record)
            else:
                historian.record_scan(HISTORIAN_EPOCH_S + obs.t, res.values, res.quality)
            if tap is not None:
                for g in reasons.observe(HISTORIAN_EPOCH_S + obs.t, tap.budgets, tap.why()):
                    historian.record_gating(g.t, g.load, g.budget_kw, g.why)
        lap("record")
        lost, failed = step.apply(res)
        lap("apply")
        write_failures += lost
        for ev in failed:
            log(ev)
        for ev in res.events:
            log(ev)
            if "limit" in ev.data:  # a protective limit applied or lifted
                counts = limits.setdefault(ev.data["limit"], {"applied": 0, "lifted": 0})
                counts[ev.data["action"]] += 1
        th = ctrl.thermal
        for ld in ctrl.topo.loads:  # what the thermal limit withheld from the planner
            kw = ctrl.planning.thermal_withheld_kw[ld.name]
            # the limiters', not the low-flow shed's (a pump failure counted there)
            if kw > 0.0 and th.limiter_cap.get(ld.name, math.inf) <= th.cap[ld.name] + 1e-6:
                withheld_kwh[ld.wclass] += kw * scan_s / 3600.0
        lap("record")
        if model is not None:
            for ev in model.step(obs.t, res):
                log(ev)
            if model.last is not None:
                fc_zones, fc_trusted = model.last.zones, model.last.trusted
        lap("forecast")
        if world is not None:
            gate = gate_of.gpu_capacity if gate_of is not None else None
            world.step(plant.t, world.cluster.gpus if gate is None else gate, plant)
            lap("cluster")
        step.advance()
        lap("advance")
        if on_scan is not None:
            on_scan(sim, ctrl)
            lap("on_scan")
        for pev in plant.events:  # (t, message) from the plant and its PLC
            if "interlock:" in pev[1] or "tripped" in pev[1]:
                trips += 1
            if pev[1].startswith("under-frequency trip:"):
                ufls_trips += 1
            log(pev)
        plant.events.clear()
        settlement.follow(ctrl.state.curtailments, plant.t)
        for j in settlement.meter(plant.t, plant.site_kw):
            # logged when settled, as ``run`` does: stamped with the interval's start it
            # came after later events in the log, and before it could have been metered
            log(settled_event(j, plant.t, f"{j.record.start_s / 3600.0:.2f} h"))
            if historian is not None:
                historian.record_compliance(j, HISTORIAN_EPOCH_S)

        # ---- truth-based metrics
        if len(site.tanks):
            over = np.maximum(plant.T_tank - tank_alarm, 0.0)
            violation_c_min += float(over.sum()) * scan_s / 60.0
            max_fluid = max(max_fluid, float(plant.T_tank.max()))
        if len(site.cdus):
            over_c = np.maximum(plant.c_supply - cdu_alarm, 0.0)
            violation_c_min += float(over_c.sum()) * scan_s / 60.0
            max_cdu = max(max_cdu, float(plant.c_supply.max()))
        over_loop = np.maximum(plant.T_cold - loop_alarm, 0.0)
        violation_c_min += float(over_loop.sum()) * scan_s / 60.0
        over_import_kw_min += max(0.0, plant.site_kw - limit) * scan_s / 60.0
        gpus = {"inference": 0.0, "training": 0.0}
        for gl, in_tank, i in gpu_meters:  # the plant replaces its arrays every step
            power = plant.t_power if in_tank else plant.r_power
            gpus[gl.wclass] += gl.busy_at(float(power[i]))
            gpu_kwh += float(power[i]) * scan_s / 3600.0
        price = sim.price_per_mwh()
        for row in books.add(
            HISTORIAN_EPOCH_S + plant.t,
            scan_s,
            float(plant.t_hash.sum()),
            gpus["inference"],
            gpus["training"],
            plant.site_kw,
            price if math.isfinite(price) else site.economics.energy_usd_per_mwh,
            float(plant.t_power[plant.params.t_asic].sum()),
        ):
            if historian is not None:
                historian.record_economics(row)

        if plant.t >= next_sample:
            next_sample += sample_s
            _record(rec, sim, limit, t_class, r_class)
            for key, usd in (
                ("econ.margin_usd", ledger.net_margin),
                ("econ.mining_usd", ledger.mining_revenue),
                ("econ.ai_usd", ledger.ai_revenue),
                ("econ.energy_usd", ledger.energy_cost),
            ):  # running totals since the start of the run
                rec.setdefault(key, []).append(usd)
            if forecaster is not None:
                _record_forecast(rec, forecaster, sim, fc_zones, fc_trusted)
        if progress is not None:
            progress.update(k + 1, n_scans)
        lap("record")

    last_row = books.close()
    if historian is not None and last_row is not None:
        historian.record_economics(last_row)
    wall = time.perf_counter() - wall0
    site_kwh = plant.site_kwh - kwh0
    it_kwh = plant.ledger.it_kwh - it0
    summary: dict[str, object] = {
        "site": site.name,
        "scenario": sc.name,
        "hours": hours,
        "max_fluid_temp_c": round(max_fluid, 2) if math.isfinite(max_fluid) else None,
        "max_cdu_supply_c": round(max_cdu, 2) if math.isfinite(max_cdu) else None,
        "limit_violation_c_min": round(violation_c_min, 2),
        "trips": trips,
        "sheds": sum(1 for e in events if e["kind"] == "shed"),
        # every protective limit applied and lifted, by kind (each one an event)
        "limits": {k: dict(v) for k, v in sorted(limits.items())},
        # what the thermal limiter took off the loads' ratings (within their power
        # caps), by class; gpu: training and inference together
        "thermal_shed": {
            **{f"{c}_kwh": round(kwh, 1) for c, kwh in withheld_kwh.items()},
            "gpu_kwh": round(withheld_kwh["training"] + withheld_kwh["inference"], 1),
        },
        "gpu_energy_mwh": round(gpu_kwh / 1000.0, 3),
        "alarms": sum(1 for e in events if e["kind"] == "alarm"),
        "failsafe_entries": sum(1 for e in events if e["kind"] == "failsafe"),
        "write_failures": write_failures,
        "energy_mwh": round(site_kwh / 1000.0, 3),
        "it_energy_mwh": round(it_kwh / 1000.0, 3),
        "cooling_energy_mwh": round((plant.ledger.cooling_kwh - cool0) / 1000.0, 3),
        "pue": round(site_kwh / it_kwh, 4) if it_kwh > 0 else None,
        "import_over_limit_kw_min": round(over_import_kw_min, 1),
        "wall_seconds": round(wall, 2),
        "speedup": round(hours * 3600.0 / wall, 1) if wall > 0 else None,
    }
    summary["economics"] = {
        **ledger.summary(),
        "mining_breakeven_per_mwh": {
            name: round(usd, 2) for name, usd in site.mining_breakeven().items()
        },
    }
    summary["grid"] = {
        "instructions": len(settlement.instructions),
        **settlement.summary(),
        "under_frequency_trips": ufls_trips,
    }
    if world is not None:
        summary["jobs"] = world.summary(end_s=plant.t)
    if forecaster is not None:
        summary["forecast"] = {
            "source": forecaster.source,
            **forecaster.scores(),
            **_forecast_timeline(forecaster),
        }
    series = {k_: np.asarray(v_, dtype=float) for k_, v_ in rec.items()}
    meta = {
        "site": site.name,
        "scenario": sc.name,
        "hours": hours,
        "tanks": {
            t.name: {
                "alarm_c": t.limits.fluid_alarm_c,
                "trip_c": t.limits.fluid_trip_c,
                "workload_class": t.workload_class,
            }
            for t in site.tanks
        },
        "cdus": {
            c.name: {"alarm_c": c.supply_alarm_c, "trip_c": c.supply_trip_c} for c in site.cdus
        },
        "loops": {lp.name: {"alarm_c": lp.supply_alarm_c} for lp in site.loops},
        "feeders": {f.name: {"continuous_kw": f.continuous_kw} for f in site.feeders},
        "instructions": [
            {
                "name": n,
                "start_h": i.start_s / 3600.0,
                "end_h": i.end_s / 3600.0,
                "limit_kw": i.limit_kw,
            }
            for n, i in settlement.instructions.items()
        ],
        "compliance": [_judged_row(j) for j in settlement.judged],
        "settlement_interval_s": settlement.rule.interval_s,
    }
    if forecaster is not None:
        meta["forecast"] = {
            "source": forecaster.source,
            "learned_at_h": None
            if forecaster.learned_at is None
            else round(forecaster.learned_at / 3600.0, 3),
            "horizon_min": forecaster.archive_horizon_min,
            **_forecast_timeline(forecaster),
        }
    return SimulationResult(summary, series, meta, events, ctrl, sim)


def _grid_operator_release(
    ctrl: Controller, t: float, recovered_at: float | None, after_s: float
) -> float | None:
    """The simulated grid operator: releases an under-frequency trip ``after_s``
    after the relay reported the frequency recovered; when it saw that first."""
    if not ctrl.underfreq.recovered:
        return None
    if recovered_at is None:
        return t
    if t - recovered_at >= after_s:
        ctrl.commands.give(ReleaseUnderFrequency("simulated grid operator"), Principal.grid(), t)
        return None
    return recovered_at


def _judged_row(j: Judged) -> dict[str, object]:
    r = j.record
    return {
        "instruction": j.instruction,
        "start_h": r.start_s / 3600.0,
        "limit_kw": r.limit_kw,
        "metered_kw": r.metered_kw,
        "baseline_kw": r.baseline_kw,
        "required_kw": r.required_kw,
        "delivered_kw": r.delivered_kw,
        "compliant": r.compliant,
        "note": r.note,
    }


def _record(
    rec: dict[str, list[float]],
    sim: ScenarioPlant,
    limit: float,
    t_class: dict[str, np.ndarray],
    r_class: dict[str, np.ndarray],
) -> None:
    pl = sim.plant

    def put(key: str, value: float) -> None:
        rec.setdefault(key, []).append(float(value))

    put("t_h", pl.t / 3600.0)
    put("ambient_c", pl.ambient)
    put("site_kw", pl.site_kw)
    put("import_limit_kw", limit)
    put("it_kw", pl.it_kw)
    put("cooling_kw", pl.cooling_kw)
    put("pue", pl.pue)
    put("price_per_mwh", sim.price_per_mwh())
    for cls in t_class:
        put(
            f"class.{cls}_kw",
            float(pl.t_power[t_class[cls]].sum() + pl.r_power[r_class[cls]].sum()),
        )
    for i, t in enumerate(sim.site.tanks):
        put(f"tank.{t.name}.fluid_c", pl.T_tank[i])
    for i, c in enumerate(sim.site.cdus):
        put(f"cdu.{c.name}.supply_c", pl.c_supply[i])
    for i, lp in enumerate(sim.site.loops):
        put(f"loop.{lp.name}.supply_c", pl.T_cold[i])
    for i, f in enumerate(sim.site.feeders):
        put(f"feeder.{f.name}.kw", pl.b_power[pl.params.n_pdu + i])


def _zone_keys(site: Site) -> list[tuple[str, str]]:
    """(kind, zone) of every forecast zone, in report order."""
    return (
        [("tank", t.name) for t in site.tanks]
        + [("cdu", c.name) for c in site.cdus]
        + [("loop", lp.name) for lp in site.loops]
    )


def _record_forecast(
    rec: dict[str, list[float]],
    fc: LiveForecaster,
    sim: ScenarioPlant,
    zones: dict[str, Headroom],
    trusted: bool | None,
) -> None:
    """Per sample: for a recent minute, the 15-min forecast made for it and the mean
    the sensors measured over it (what the model forecasts); headroom now.

    The minute is the one before last: the last one closes (and is scored) only at
    the first scan after the sample."""
    minute = (math.floor(sim.plant.t / fc.step_s) - 2) * fc.step_s
    h = fc.archive_horizon_min
    for kind, zone in _zone_keys(sim.site):
        mean, upper = fc.archive.pop((minute, zone), (math.nan, math.nan))
        rec.setdefault(f"forecast.{kind}.{zone}.mean{h}_c", []).append(mean)
        rec.setdefault(f"forecast.{kind}.{zone}.upper{h}_c", []).append(upper)
        measured = fc.measured.pop((minute, zone), math.nan)
        rec.setdefault(f"forecast.{kind}.{zone}.measured_c", []).append(measured)
        hz = zones.get(zone)
        ttl = hz.time_to_limit_min if hz is not None else math.nan
        rec.setdefault(f"headroom.{kind}.{zone}.kw", []).append(
            math.nan if hz is None else hz.extra_kw
        )
        rec.setdefault(f"headroom.{kind}.{zone}.ttl_min", []).append(
            ttl if math.isfinite(ttl) else math.nan
        )
    for store in (fc.archive, fc.measured):  # minutes that were never sampled
        for key in [k for k in store if k[0] < minute]:
            del store[key]
    rec.setdefault("forecast.trusted", []).append(math.nan if trusted is None else float(trusted))
    # 1 where the forecast shown was made by the physics prior for want of a learned model
    rec.setdefault("forecast.prior", []).append(float(minute in fc.prior_made))


def _forecast_timeline(fc: LiveForecaster) -> dict[str, object]:
    """When forecasts began and the learned model took over from the physics prior
    (hours of the run), and the prior's own scores (all its forecasts, whoever
    gave the headroom: it forecasts every minute to keep its margin measured)."""

    def hours(t: float | None) -> float | None:
        return None if t is None else round(t / 3600.0, 3)

    out: dict[str, object] = {
        "first_forecast_h": hours(fc.first_forecast_t),
        "handover_h": hours(fc.handover_t),
        "fallback": "physics prior" if fc.prior is not None else "conservative headroom",
    }
    if fc.prior is not None and fc.prior.scores():
        out["prior"] = fc.prior.scores()
    return out


def default_learn_h(hours: float) -> float | None:
    """Hours of a run's own history the in-run model learns from (None: too short a run).

    A third of the run, at most 6 h: the rest is forecast on unseen hours."""
    return None if hours < 3.0 else min(6.0, hours / 3.0)


def _forecaster(site: Site, args: argparse.Namespace) -> LiveForecaster | None:
    """The run's thermal model: the promoted one of ``--model DB``, else one learned
    from the run's first hours (``--learn-h``, 0 = no forecasting)."""
    db = getattr(args, "model", None)
    learn_h = getattr(args, "learn_h", None)
    if not db and learn_h == 0:
        return None  # before importing the model: scikit-learn takes seconds to load
    from thermogate.models.live import LiveForecaster
    from thermogate.plc.pointmap import build_point_map

    names = record_columns(build_point_map(site), site)
    if db:
        from thermogate.models.registry import Registry

        if not Path(db).exists():
            raise ThermogateError(f"{db}: no such database (--model takes a historian/registry)")
        with Registry(db) as reg:
            version, model = reg.promoted_usable()
        # no trained_t: the model's window is on another clock than this run's
        # simulated one, so its age cannot be judged here
        fc = LiveForecaster(site, names, model, version=version)
        fc.source = f"model version {version} from {db}"
        return fc
    hours = float(args.hours)
    learn_h = default_learn_h(hours) if learn_h is None else learn_h
    if learn_h is None:  # too short a run to learn from: the physics prior alone
        return LiveForecaster(site, names)
    return LiveForecaster(site, names, learn_after_s=learn_h * 3600.0)


def _epoch(sc: Scenario, what: str) -> float:
    """The scenario's start on the grid's clock (Unix seconds), for ``what``."""
    if sc.start is None or sc.start.utcoffset() is None:
        raise ThermogateError(
            f"{what} are moments on the grid's clock; the scenario needs an absolute start "
            "with a UTC offset (a weather or price CSV with zoned times, or start = ... in "
            "the scenario)"
        )
    return sc.start.timestamp()


def _peaks_for(sc: Scenario, path: str) -> list[PeakWindow]:
    """A peaks CSV's windows (Unix seconds) on the scenario's clock; none in the
    simulated span is an error (they were dropped without a word), some
    outside it a warning."""
    import sys

    t0 = _epoch(sc, f"{path}: peak windows")
    windows = load_peaks_csv(path)
    said = describe_windows(windows, t0, t0 + sc.duration_s)
    inside = windows_within(windows, t0, t0 + sc.duration_s)
    if not inside:
        raise ThermogateError(f"--peaks {path}: {said}")
    if len(inside) < len(windows):
        print(f"warning: --peaks {path}: {said}", file=sys.stderr)
    return [PeakWindow(w.start_s - t0, w.end_s - t0, w.reduce_kw) for w in inside]


def simulate_cli(args: argparse.Namespace) -> dict[str, object]:
    """Entry point of ``thermogate simulate``; returns the JSON summary."""
    import sys

    from thermogate.plc.site import load_site

    from .report import ProgressBar, write_report

    site = load_site(args.site)
    sc = load_for_run(args.scenario, args.weather, args.prices, hours=args.hours)
    forecaster = _forecaster(site, args)
    ven = None
    if args.openadr:
        from thermogate.plc.config import load_toml

        from .grid.openadr import parse_openadr
        from .grid.simven import VenBeside

        root = load_toml(args.openadr)
        cfg = parse_openadr(root.get_section("openadr"), Path(args.openadr).parent)
        root.check_unused()
        ven = VenBeside(cfg, _epoch(sc, "OpenADR events"), site.import_limit_kw)
        ven.start()
    jobs = load_jobs_csv(args.jobs) if args.jobs else None
    if jobs and jobs[0].submit_s >= args.hours * 3600.0:
        # an absolute (epoch) trace ran nothing without a word
        raise DataFileError(
            args.jobs,
            jobs[0].line or None,
            "submit_time_s",
            f"no job is submitted during the {args.hours:g} h run: the first at "
            f"{jobs[0].submit_s:g} s ({jobs[0].submit_s / 3600.0:,.1f} h); submit times "
            "count seconds from the run's start, not from 1970",
        )
    bar = ProgressBar(enabled=False if args.json else None, sim_hours=args.hours)
    try:
        result = run_simulation(
            site,
            sc,
            args.hours,
            seed=args.seed,
            planner=GatingPlanner(site) if args.planner == "gating" else None,
            jobs=jobs,
            progress=bar,
            scan_s=args.scan_s,
            forecaster=forecaster,
            peaks=_peaks_for(sc, args.peaks) if args.peaks else (),
            on_scan=None if ven is None else (lambda sim, ctrl: ven.on_scan(sim.plant.t, ctrl)),
        )
    finally:
        bar.close()
        if ven is not None:
            ven.stop()
    if ven is not None:
        grid = result.summary["grid"]
        assert isinstance(grid, dict)  # run_simulation's summary always has its grid section
        grid["openadr"] = [d.text for d in ven.decisions]
    if args.report:
        paths = write_report(
            result.series, result.meta, result.events, result.summary, Path(args.report)
        )
        print(f"report: {paths[0].parent}/report.html", file=sys.stderr)
    return result.summary
