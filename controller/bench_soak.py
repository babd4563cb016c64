"""``thermogate bench soak``: does a long run's memory level off?

The demo site's controller and simulated plant in lockstep (no sockets) for
``--days`` of data time, with everything a long ``thermogate run`` keeps
alive, driven the way :class:`~thermogate.controller.run.RealTimeController`
drives it (on a data clock instead of the wall clock):

* the historian on a temporary file: every scan recorded (values, quality
  and planned load) at epoch-like times, 1-minute aggregates, retention
  deleting raw scans older than ``--raw-days`` (7, as ``run``) once an hour of
  data time; an audit row per write, every event, the books (an economics
  row a minute, a gating row per change) and the settlement of curtailments;
* the live forecaster (:class:`~thermogate.controller.forecasting.ModelRuntime`):
  the physics prior from the first minutes, then a model trained from the
  historian in a process of its own, as ``run``'s retrainer does, first after
  ``MIN_HOURS`` of data and then every ``--retrain-days``, handed over to the
  scan through ``on_retrain``;
* the gating planner behind the plan tap;
* alarms and events flowing every day: the scenario is ``normal-day``'s
  synthetic weather and prices generated over the whole span (each day its
  own noise and clouds), plus at 03:00 every day CDU 1's Modbus device silent
  for 10 minutes (its zone fail-safe, alarms raised and cleared), and at
  14:00 an operator's 2-hour curtailment through the command path (audited,
  settled), acknowledged alarms after it.

Every ``sample`` (a simulated day; a tenth of a run shorter than ten days)
the process's resident set (``/proc/self/statm``, after a ``gc.collect()`` and
glibc's ``malloc_trim``: what the process keeps, see ``heap.release_freed_heap``)
is sampled and, with ``--trace``, tracemalloc's total (with ``--json``, each
sample is also a line on stderr as it is taken). The result: RSS per
sample, the least-squares growth in MB/day over the first and second half,
``levels_off`` (peaks by thirds, see :func:`levels_off`), with ``--trace`` the
allocation sites that grew most between day 2 (or the run's middle) and the
end, the database's size, raw scans kept and deleted by retention, scans and
speed-up.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import Scenario, load_scenario
from thermogate.plc.errors import ThermogateError
from thermogate.plc.records import record_columns
from thermogate.plc.site import Site, load_site

from .core import Controller, ScanResult
from .core.commands import Acknowledge, Principal, RequestCurtailment
from .forecasting import ModelRuntime
from .gating.economics import EconomicsIntervals
from .gating.metered import SiteMeters
from .gating.planner import GatingPlanner
from .gating.reasons import PlanTap, ReasonLog
from .grid.settlement import Settlement, rule_for, settled_event
from .heap import release_freed_heap
from .historian import Historian
from .recorder import Recorder
from .retrain import MIN_HOURS, RetrainScheduler
from .run import BOOKS_MAX_DT_S
from .signals import Audit, Observation
from .simulate import HISTORIAN_EPOCH_S, Lockstep

DAY_S = 86400.0
#: a run levels off when its second half grows less than this (MB per simulated
#: day: 3.6 MB a year at most) and no faster than its first half did (or both
#: are within the noise of page-granular RSS)
LEVEL_MB_PER_DAY = 0.1
#: the site's daily life: CDU 1's device silent this long at 03:00 ...
SILENT_AT_S, SILENT_S = 3 * 3600.0, 600.0
#: ... and an operator's curtailment at 14:00 for 2 h
CURTAIL_AT_S, CURTAIL_S, CURTAIL_KW = 14 * 3600.0, 7200.0, 2000.0
#: the soak's operator (the command path checks the role)
OPERATOR = Principal("soak", "operator", "cli")
#: top allocation sites reported with --trace
TOP_SITES = 15


def soak_scenario(days: float, directory: Path) -> Scenario:
    """``normal-day``'s weather and prices over ``days``, CDU 1 silent 10 min a day."""
    n = max(1, math.ceil(days))
    faults = "".join(
        f'\n[[faults]]\nat_s = {d * DAY_S + SILENT_AT_S:.0f}\ntarget = "device:cdu1"\n'
        f'kind = "timeout"\nduration_s = {SILENT_S:.0f}\n'
        for d in range(n)
        if d * DAY_S + SILENT_AT_S < days * DAY_S
    )
    text = (
        'name = "soak"\n'
        'description = "normal-day over the soak; CDU 1 silent 10 min at 03:00 daily"\n'
        f"duration_s = {days * DAY_S:.0f}\n\n"
        '[weather]\nsource = "synthetic"\nseed = 1\nmin_c = 12.0\nmax_c = 24.0\n'
        "noise_c = 0.4\ncloudiness = 0.3\n\n"
        '[prices]\nsource = "synthetic"\nseed = 1\nbase_per_mwh = 60.0\n'
        "morning_peak_per_mwh = 25.0\nevening_peak_per_mwh = 50.0\n" + faults
    )
    path = directory / "scenario_soak.toml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


def rss_mb() -> float:
    """The process's resident set now, MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def slope_mb_per_day(days: list[float], mb: list[float]) -> float | None:
    """Least-squares growth (MB per day) of ``mb`` over ``days``; None under 2 samples."""
    if len(days) < 2 or max(days) - min(days) <= 0:
        return None
    return float(np.polyfit(np.asarray(days), np.asarray(mb), 1)[0])


def levels_off(days: list[float], mb: list[float], span: float) -> bool:
    """Memory levels off when the last third's peak is no higher than the middle
    third's by more than :data:`LEVEL_MB_PER_DAY` over a third of ``span``.

    Peaks, not a fitted slope: a model hand-over is a step (both models alive for a
    moment), and a least-squares slope over a half that starts just before one
    reads a single step as growth. Repeated steps, or any steady climb, raise the
    last third's peak above the middle's; one step does not. False without a
    sample in each of the two thirds."""
    third = span / 3.0
    mid = [y for x, y in zip(days, mb, strict=True) if third - 1e-9 <= x < 2 * third - 1e-9]
    last = [y for x, y in zip(days, mb, strict=True) if x >= 2 * third - 1e-9]
    if not mid or not last:
        return False
    return max(last) - max(mid) < LEVEL_MB_PER_DAY * third


class SoakSite:
    """Controller, plant, historian, forecaster and planner of one soak, scanned in
    lockstep as :class:`~thermogate.controller.run.RealTimeController` scans in real
    time (the same records, on a data clock: ``HISTORIAN_EPOCH_S`` + plant time).

    Kept apart from the bench's measuring so a test can scan it and look at what
    it holds."""

    def __init__(
        self,
        site: Site,
        scenario: Scenario,
        db: Path,
        *,
        scan_s: float = 5.0,
        seed: int = 0,
        raw_days: float = 7.0,
        forecast: bool = True,
        retrain_every_s: float | None = 7 * DAY_S,
        train_days: float = 7.0,
    ) -> None:
        problem = site.plc.scan_problem(scan_s)
        if problem is not None:
            raise ThermogateError(f"--scan-s: {problem}")
        self.site = site
        self.sim = ScenarioPlant(site, scenario, seed=seed, dt=min(1.0, scan_s))
        self.pmap = self.sim.pmap
        self.gating = GatingPlanner(site)
        self.tap = PlanTap(self.gating)
        self.ctrl = Controller(site, self.pmap, planner=self.tap, scan_s=scan_s)
        self.step = Lockstep(self.sim, self.ctrl)
        self.columns = record_columns(self.pmap, site)
        self.historian = Recorder(
            Historian(db, self.columns, site_name=site.name, raw_days=raw_days), self.now
        )
        self.meters = SiteMeters(site, self.pmap)
        self.books = EconomicsIntervals.for_site(site)
        self.reasons = ReasonLog({ld.name: ld.rated_kw for ld in self.ctrl.topo.loads})
        self.settlement = Settlement(rule_for(site.grid), history=False)
        self._t_books = math.nan
        self.scans = 0
        self.events = 0
        self.retrains = 0
        self.model: ModelRuntime | None = None
        self._retrain_every_s = retrain_every_s
        self._next_retrain = math.inf
        self._training: threading.Thread | None = None
        if forecast:
            from thermogate.models.live import LiveForecaster

            self.model = ModelRuntime(self.ctrl, LiveForecaster(site, self.columns), db=db)
            if retrain_every_s is not None:
                # run's retrainer, on the data clock: the first attempt once a model
                # can be learned, then one every retrain_every_s
                self.model.retrainer = RetrainScheduler(
                    db, site, every_s=retrain_every_s, days=train_days,
                    on_outcome=self.model.on_retrain,
                )  # fmt: skip
                self._next_retrain = (MIN_HOURS + 0.25) * 3600.0

    def now(self) -> float:
        """The data clock (epoch-like seconds)."""
        return HISTORIAN_EPOCH_S + self.sim.plant.t

    def scan(self) -> ScanResult:
        """One scan, recorded as ``run`` records it; the day's commands at their hour."""
        t_plant = self.sim.plant.t
        self._daily_commands(t_plant)
        raw = self.step.observe()
        now = HISTORIAN_EPOCH_S + raw.t
        obs = Observation(now, raw.values, raw.fresh, raw.import_limit_kw, raw.price_per_mwh)
        res = self.ctrl.scan(obs)
        hist = self.historian
        _lost, failed = self.step.apply(res)
        res.events.extend(failed)
        for w in res.writes:
            if w.point != "plc.heartbeat":  # as run: every write but the heartbeat audited
                old = float(raw.values[self.pmap.position(w.point)])
                hist.record_audit(
                    now, w.who, w.where, w.point, None if np.isnan(old) else old, w.value, w.why
                )
        for a in res.audit:
            self._audit(a)
        if self.model is not None:
            res.events.extend(self.model.step(now, res))
        for ev in res.events:
            hist.record_event(ev.t, ev.kind, ev.source, ev.message, ev.severity, ev.data or None)
        self.events += len(res.events)
        hist.record_scan(now, *res.record)
        self._keep_books(now, raw.price_per_mwh)
        self._settle(now)
        self._retrain(t_plant)
        self.step.advance()
        self.sim.plant.events.clear()  # the plant's own log (a served plant prints it)
        self.scans += 1
        return res

    def _daily_commands(self, t_plant: float) -> None:
        """At 14:00 a 2-hour curtailment; at its end every alarm acknowledged."""
        scan_s = self.ctrl.scan_s
        day_t = t_plant % DAY_S
        for at, cmd in (
            (
                CURTAIL_AT_S,
                RequestCurtailment(CURTAIL_KW, CURTAIL_S, why="soak: daily curtailment"),
            ),
            (CURTAIL_AT_S + CURTAIL_S, Acknowledge(None, why="soak: daily acknowledge")),
        ):
            if at <= day_t < at + scan_s:
                self._audit(self.ctrl.command(cmd, OPERATOR, self.now()).audit)

    def _audit(self, a: Audit) -> None:
        self.historian.record_audit(a.t, a.who, a.where, a.target, a.old, a.new, a.why, ok=a.ok)

    def _keep_books(self, now: float, price: float | None) -> None:
        """As ``RealTimeController._keep_books``: meters into the books, reasons into rows."""
        m = self.meters.read(self.ctrl.values)
        if price is None or not math.isfinite(price):
            price = self.site.economics.energy_usd_per_mwh
        dt = now - self._t_books if math.isfinite(self._t_books) else 0.0
        self._t_books = now
        for row in self.books.add(
            now, min(dt, BOOKS_MAX_DT_S), m.hash_th_s, m.inference_gpus, m.training_gpus,
            m.import_kw, price, m.mining_kw,
        ):  # fmt: skip
            self.historian.record_economics(row)
        for g in self.reasons.observe(now, self.tap.budgets, self.tap.why()):
            self.historian.record_gating(g.t, g.load, g.budget_kw, g.why)

    def _settle(self, now: float) -> None:
        """As ``RealTimeController._settle``: the site meter into the settlement."""
        self.settlement.follow(self.ctrl.state.curtailments, now)
        kw = float(self.ctrl.values[self.pmap.index.site.power_kw])
        if not math.isfinite(kw):
            return
        for j in self.settlement.meter(now, kw):
            self.historian.record_compliance(j)
            when = datetime.fromtimestamp(j.record.start_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
            ev = settled_event(j, now, when)
            self.historian.record_event(ev.t, ev.kind, ev.source, ev.message, ev.severity)

    def _retrain(self, t_plant: float) -> None:
        """Start a retrain (its own process, as run's) when it is due on the data clock."""
        rt = self.model
        if rt is None or rt.retrainer is None or t_plant < self._next_retrain:
            return
        if self._training is not None and self._training.is_alive():
            return  # one at a time, as run's scheduler
        assert self._retrain_every_s is not None
        self._next_retrain = t_plant + self._retrain_every_s
        self.historian.raw.flush(timeout=60.0)  # what the scans so far recorded
        retrainer = rt.retrainer
        self._training = threading.Thread(
            target=retrainer.run_once, name="soak-retrain", daemon=True
        )
        self._training.start()
        self.retrains += 1

    def close(self) -> None:
        """Wait for a retrain in progress, commit everything, close the historian."""
        if self._training is not None:
            self._training.join()
        last = self.books.close()
        if last is not None:
            self.historian.record_economics(last)
        self.historian.raw.close(timeout=600.0)


def run_soak(
    *,
    days: float = 30.0,
    scan_s: float = 5.0,
    seed: int = 0,
    trace: bool = False,
    raw_days: float = 7.0,
    retrain_days: float | None = 7.0,
    site_file: str | None = None,
    directory: Path | None = None,
    sample_s: float | None = None,
    progress: Any = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """The soak and its figures (see the module docstring)."""
    if not days > 0:
        raise ThermogateError(f"--days must be positive, not {days:g}")
    span_s = days * DAY_S
    every = sample_s if sample_s is not None else (DAY_S if days >= 10 else span_s / 10.0)
    with tempfile.TemporaryDirectory(prefix="thermogate-soak-", dir=directory) as tmp:
        db = Path(tmp) / "soak.db"
        site = load_site(site_file)
        s = SoakSite(
            site, soak_scenario(days, Path(tmp)), db, scan_s=scan_s, seed=seed,
            raw_days=raw_days,
            retrain_every_s=None if retrain_days is None else retrain_days * DAY_S,
        )  # fmt: skip
        n_scans = max(1, round(span_s / s.ctrl.scan_s))
        samples: list[dict[str, float]] = []
        snaps: dict[str, Any] = {}
        # the allocation sites are compared from day 2 (after the first model and the
        # caches filled) or from the middle of a shorter run
        base_day = 2.0 if days >= 4 else days / 2.0
        if trace:
            tracemalloc.start()

        def db_mb() -> float:  # freed pages are reused: the file levels off, never shrinks
            return sum(p.stat().st_size for p in Path(tmp).glob("soak.db*")) / 1e6

        def sample() -> None:
            s.historian.raw.flush(timeout=120.0)  # a backlog is not a leak
            gc.collect()
            release_freed_heap()  # what the process keeps, not glibc's high-water mark
            day = s.sim.plant.t / DAY_S
            row = {"day": round(day, 3), "rss_mb": round(rss_mb(), 2), "db_mb": round(db_mb(), 1)}
            if trace:
                row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 2)
                if "base" not in snaps and day >= base_day - 1e-9:
                    snaps["base"] = tracemalloc.take_snapshot()
            samples.append(row)
            if log is not None:  # a month takes hours: what it found so far
                print(
                    "soak: " + ", ".join(f"{k} {v}" for k, v in row.items()), file=log, flush=True
                )

        wall0 = time.perf_counter()
        next_sample = 0.0
        try:
            for k in range(n_scans):
                if s.sim.plant.t >= next_sample - 1e-9:
                    sample()
                    next_sample += every
                s.scan()
                if progress is not None:
                    progress.update(k + 1, n_scans)
            wall = time.perf_counter() - wall0
            sample()
            top = []
            if trace:
                end = tracemalloc.take_snapshot()
                base = snaps.get("base", end)
                for st in end.compare_to(base, "lineno")[:TOP_SITES]:
                    fr = st.traceback[0]
                    top.append(
                        {
                            "site": f"{_short(fr.filename)}:{fr.lineno}",
                            "growth_mb": round(st.size_diff / 1e6, 3),
                            "count_growth": st.count_diff,
                            "size_mb": round(st.size / 1e6, 3),
                        }
                    )
                tracemalloc.stop()
        finally:
            s.close()
        kept = _count(db, 'SELECT count(*) FROM "telemetry_0"')
        runs, deleted = s.historian.raw.retention_counts
        n_events = _count(db, 'SELECT count(*) FROM "events"')
        n_audit = _count(db, 'SELECT count(*) FROM "audit"')
        dropped = s.historian.raw.dropped_scans
        audit_deleted = s.historian.raw.audit_deleted
        final_db_mb = db_mb()
    d = [r["day"] for r in samples]
    mb = [r["rss_mb"] for r in samples]
    half = days / 2.0
    first = [(x, y) for x, y in zip(d, mb, strict=True) if x <= half + 1e-9]
    second = [(x, y) for x, y in zip(d, mb, strict=True) if x >= half - 1e-9]
    s1 = slope_mb_per_day([x for x, _ in first], [y for _, y in first])
    s2 = slope_mb_per_day([x for x, _ in second], [y for _, y in second])
    out: dict[str, Any] = {
        "days": days,
        "scan_s": s.ctrl.scan_s,
        "seed": seed,
        "scenario": "normal-day weather and prices over the span; CDU 1 silent 10 min at "
        "03:00 and a 2 h curtailment at 14:00 daily",
        "scans": s.scans,
        "wall_seconds": round(wall, 1),
        "speedup": round(span_s / wall, 1) if wall > 0 else None,
        "rss_mb_per_day": samples,
        "rss_start_mb": mb[0],
        "rss_end_mb": mb[-1],
        "growth_mb_per_day_first_half": None if s1 is None else round(s1, 3),
        "growth_mb_per_day": None if s2 is None else round(s2, 3),
        "levels_off": levels_off(d, mb, days),
        "criterion": f"the last third's peak RSS above the middle third's by less than "
        f"{LEVEL_MB_PER_DAY} MB/day over a third of the run",
        "db_mb": round(final_db_mb, 1),
        "raw_days": raw_days,
        "raw_scans_kept": kept,
        "raw_scans_deleted": deleted,
        "retention_runs": runs,
        "dropped_scans": dropped,
        "events": n_events,
        "audit_rows": n_audit,
        "audit_rows_deleted": audit_deleted,
        "retrains": s.retrains,
        "model": None if s.model is None else s.model.forecaster.source,
    }
    if trace:
        out["top_growth_sites"] = top
    return out


def _count(db: Path, sql: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return int(c.execute(sql).fetchone()[0])


def _short(filename: str) -> str:
    """A traced file's path from the repository (or the library) on."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    if filename.startswith(root):
        return filename[len(root) :]
    for mark in ("/site-packages/", "/lib/python"):
        if mark in filename:
            return filename.split(mark, 1)[1]
    return "/".join(Path(filename).parts[-2:])


def bench_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Entry point of ``thermogate bench soak``; returns the JSON result."""
    from .report import ProgressBar

    bar = ProgressBar("soak", enabled=False if args.json else None, sim_hours=args.days * 24.0)
    # a month runs for hours and is often stopped with kill: end as Ctrl-C does, so
    # the historian closes and the scratch directory (a gigabyte by then) is removed
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return run_soak(
            days=args.days,
            scan_s=args.scan_s,
            seed=args.seed,
            trace=args.trace,
            raw_days=args.raw_days,
            retrain_days=args.retrain_days if args.retrain_days > 0 else None,
            site_file=getattr(args, "site", None),
            progress=bar,
            log=sys.stderr if args.json else None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("bench soak: stopped by SIGTERM")
