"""``thermogate run``: the controller in real time against a plant over Modbus.

With no configuration it starts the built-in demo site as a simulated plant on
loopback Modbus (127.0.0.1:5020): ``thermogate plant`` in a child process, so
that killing the controller leaves the plant's PLC to take its safe state as on
a real site (:class:`~.demoplant.DemoPlant`); with ``--config FILE`` it connects to the
configured devices (``runconfig``). What it prints every 10 s is ``statusline``'s.

The scan is paced by ``expiry + interval`` (CPU time never stretches the
cycle); a scan that overruns is counted and reported, never silently absorbed.
Every write is audited (who, from where, old -> new, why) and every event
journaled before the next scan; controller state is saved for restarts.

The books are kept from what the meters say over Modbus (``gating.metered``):
one ``economics`` row per minute (mining, inference and training revenue,
energy cost, net margin, price, import, hashrate, busy GPUs, the mining
breakeven) and one ``gating`` row whenever a load's budget or the reason
that bound it changes; the status every 10 s says the margin so far, the
$/h now and the energy price against the mining breakeven.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import numpy as np

from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.records import record_columns

from . import mapcheck
from .clockwatch import ClockWatch
from .console import ConsoleConfig, ConsoleFace
from .core import Command, CommandResult, Controller, Principal, ScanResult
from .demoplant import DemoPlant
from .forecasting import ModelRuntime
from .gating.economics import EconomicsIntervals
from .gating.metered import SiteMeters
from .gating.planner import GatingPlanner
from .gating.reasons import PlanTap, ReasonLog
from .grid.openadr import Decision, Ven, VenConfig, site_telemetry
from .grid.peaks import PeakShaving, describe_windows
from .grid.settlement import Settlement, rule_for, settled_event
from .heap import REFREEZE_S, BetweenScans, freeze_startup
from .historian import Historian
from .historian.schema import HistorianError
from .inbox import Inbox
from .modbus_io import Endpoint, ModbusIO, WriteOutcome, unwatched_plcs
from .opcua.snapshot import Snapshot
from .recorder import Recorder
from .runconfig import RunConfig, load_run_config
from .runlock import RunLock
from .signals import Audit, Event, Observation
from .statusline import shown, status_line
from .users import UserStore

if TYPE_CHECKING:  # imported when the face starts (asyncua is a heavy import)
    from .opcua.process import OpcUaProcess

log = logging.getLogger(__name__)

STATE_SAVE_S = 10.0
STATUS_EVERY_S = 10.0
#: the books count at most this long between two scans (a stalled controller's
#: gap is not booked at the rates of the scan after it)
BOOKS_MAX_DT_S = 10.0
#: the state key marking a run as running (cleared by a clean stop) and the
#: event kinds of a clean stop and of a start that finds the last run unclean
RUN_STATE_KEY = "run"
CLEAN_STOP = "stop"
UNCLEAN_STOP = "unclean-stop"


# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Scanned:
    """What a scan leaves for :meth:`RealTimeController._record`."""

    now: float
    values: np.ndarray  # as read (the old value of each write's audit row)
    res: ScanResult
    price: float | None
    outcomes: list[WriteOutcome]  # one per ``res.writes``


class Face(Protocol):
    """A face of the controller (OPC UA, the console): it shows each scan's
    snapshot and queues commands for the run loop to give between scans."""

    def publish(self, snapshot: Snapshot) -> None: ...

    def serve(self, give: Callable[[Command, Principal], CommandResult]) -> int: ...


class RealTimeController:
    """The controller's adapters around the core: Modbus, historian, clock.

    ``clock`` is the time the controller lives in (the wall clock; a plant run
    faster than real time in a HIL rig is its own clock). ``price_feed(t)``
    is the energy market's price ($/MWh) at ``t``: a site's market interface,
    or the built-in plant's scenario prices; without one the site's default
    price (``[economics] energy_usd_per_mwh``) stands.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Callable[[], float] = time.time,
        price_feed: Callable[[float], float] | None = None,
        speed: float = 1.0,
    ) -> None:
        self.lock = RunLock(cfg.db)  # before anything reads or writes the database
        try:
            self._start(cfg, clock, price_feed, speed)
        except BaseException:
            self.lock.release()
            raise

    def _start(
        self,
        cfg: RunConfig,
        clock: Callable[[], float],
        price_feed: Callable[[float], float] | None,
        speed: float,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        #: how fast ``clock`` runs (a HIL rig's faster plant and clock): ``run`` paces
        #: its scans every ``cfg.scan_s`` of the clock, ``cfg.scan_s / speed`` wall seconds
        self.pace_s = cfg.scan_s / speed
        self.price_feed = price_feed
        self.pmap = build_point_map(cfg.site)
        self.gating = GatingPlanner(cfg.site) if cfg.planner == "gating" else None
        # the tap keeps the budgets of each plan for the gating rows
        self.plan_tap = PlanTap(self.gating) if self.gating is not None else None
        self.ctrl = Controller(cfg.site, self.pmap, planner=self.plan_tap, scan_s=cfg.scan_s)
        if cfg.peaks:
            self.ctrl.peaks = PeakShaving(cfg.peaks)
        #: every curtailment settled as the grid operator would, on the site meter
        self.settlement = Settlement(rule_for(cfg.site.grid), history=False)
        site = cfg.site
        self.meters = SiteMeters(site, self.pmap)
        self.books = EconomicsIntervals.for_site(site)
        self.reasons = ReasonLog({ld.name: ld.rated_kw for ld in self.ctrl.topo.loads})
        self._t_books = math.nan
        self.columns = record_columns(self.pmap, cfg.site)
        self._saved_version = 0
        # before the historian opens: a refusal leaves the database as it was
        map_change = mapcheck.check(
            cfg.db, site.name, self.pmap, accept=cfg.accept_new_map, site_file=site.source
        )
        #: the historian; a commit that fails (full or read-only disk) is an alarm here
        self.historian = Recorder(
            Historian(
                cfg.db,
                self.columns,
                site_name=cfg.site.name,
                raw_days=cfg.raw_days,
                agg_days=cfg.agg_days,
                audit_days=cfg.audit_days,
            ),
            self.clock,
        )
        self._run_marker = self._check_last_stop()
        if map_change is not None:
            log.warning("%s", map_change)
            self.historian.record_event(self.clock(), "point-map", "controller", map_change, 700)
        self.historian.save_state(mapcheck.POINT_MAP_KEY, {"points": mapcheck.layout(self.pmap)})
        self._restore_state()
        if isinstance(self.ctrl.peaks, PeakShaving):
            self._seed_peaks(self.ctrl.peaks)
        self.inbox = Inbox(cfg.db)
        self.users = UserStore(cfg.db)
        self.io = ModbusIO(
            self.pmap, cfg.endpoints, timeout_s=cfg.timeout_s, scan_budget_s=0.6 * cfg.scan_s
        )
        #: faces people and systems use the controller through (OPC UA, the console)
        self.faces: list[Face] = []
        #: links that are not points, each an alarm ``link.<name>`` while it says
        #: why it is down (the OpenADR VEN's VTN)
        self.links: dict[str, Callable[[], str | None]] = {
            "modbus": self._modbus_lost,
            "writes": self._writes_refused,
        }
        self.scan_ms: deque[float] = deque(maxlen=3600)  # the last hour at 1 s
        #: steps of ``clock`` (NTP, an operator) told from its rate; recorded as events
        self.clock_watch = ClockWatch()
        self.overruns = 0
        self._unsent_units: set[int] = set()  # lost units whose unsent writes were told
        #: points whose device refuses their writes (an exception answer), with why
        self._refusing: dict[str, str] = {}
        self.gc = BetweenScans()  # the run loop's garbage collection (heap.py)
        self.scans = 0
        self.last: dict[str, object] = {}
        #: the thermal model and its retraining (None: forecasting is off)
        self.model: ModelRuntime | None = None
        if cfg.forecast:
            self.model = ModelRuntime.for_run(
                self.ctrl, cfg.site, self.columns, cfg.db, self.historian.reader,
                retrain_every_h=cfg.retrain_every_h, train_days=cfg.train_days,
            )  # fmt: skip

    def _modbus_lost(self) -> str | None:
        """Why ``link.modbus`` is an alarm: the endpoints with units not answering
        (the log says so too, but an operator looks at the alarm list)."""
        lost = self.io.lost()
        if not lost:
            return None
        return "Modbus not answering: " + "; ".join(f"{w} ({u})" for w, u in lost.items())

    def _writes_refused(self) -> str | None:
        """Why ``link.writes`` is an alarm: the points whose writes a device refuses."""
        if not self._refusing:
            return None
        names = list(self._refusing)
        point, why = names[0], self._refusing[names[0]]
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        return f"{len(names)} point(s) refuse writes: {point} ({why}){more}"

    def _check_last_stop(self) -> dict[str, object]:
        """Say so in the event log when the last run on this database did not stop
        cleanly (killed, crashed, power lost), with the gap since its last committed
        row; then mark this run as running until :meth:`close` marks its clean stop.

        Read before anything of this run is recorded: the gap is the last run's."""
        now = self.clock()
        last = self.historian.load_state(RUN_STATE_KEY)
        if last is not None and last.get("running"):
            started = float(last.get("started", math.nan))
            newest = self.historian.reader.last_row_t()
            known = [x for x in (started, newest) if x is not None and math.isfinite(x)]
            seen = max(known, default=math.nan)
            gap = now - seen
            text = (
                f"the last run (started {_utc(started)}) did not stop cleanly: killed, crashed "
                f"or power lost; its last committed row is of {_utc(seen)}, "
                f"{shown(gap, '.1f', ' s')} before this start (no telemetry in that gap)"
            )
            log.warning("%s", text)
            finite = {
                k: v if v is not None and math.isfinite(v) else None
                for k, v in (("gap_s", gap), ("last_row_t", newest), ("last_started", started))
            }
            self.historian.record_event(now, UNCLEAN_STOP, "controller", text, 600, finite)
        marker: dict[str, object] = {"running": True, "started": now}
        self.historian.save_state(RUN_STATE_KEY, marker)
        return marker

    def _restore_state(self) -> None:
        """Latched trips, overrides (with their expiry), setpoints, tunings,
        curtailments and the estimator's slow memory, as the last run left them."""
        saved = self.historian.load_state("controller")
        if not saved:
            return
        notes = self.ctrl.restore_state(saved)
        st = self.ctrl.state
        self._saved_version = st.version
        now = self.clock()
        # what still holds: an override or curtailment that ran out while the
        # controller was down ends at the first scan, and is not counted as restored
        overrides = sum(1 for o in st.overrides.values() if o.until > now)
        ran_out = len(st.overrides) - overrides
        curtailments = sum(1 for c in st.curtailments if c.end > now)
        self.historian.record_event(
            now,
            "info",
            "controller",
            f"state restored: mode {st.mode}, {overrides} overrides, "
            f"{len(st.latched)} latched trips, {curtailments} curtailments"
            + (f"; {ran_out} overrides ran out while it was down" if ran_out else "")
            + "".join(f"; {n}" for n in notes),
            300,
        )

    def _seed_peaks(self, peaks: PeakShaving) -> None:
        """The import before a peak window the last run was inside, as the
        historian kept it: restarted inside the window, the controller cuts from
        that import, not from the one the window had already cut."""
        now = self.clock()
        name = self.pmap.points[self.ctrl.topo.site_meter].name
        try:
            got = self.historian.reader.telemetry(
                [name], peaks.history_from(now), now, resolution="raw"
            )
        except HistorianError as exc:  # the window then cuts from the import it finds
            log.warning("peak windows: the import before now is not readable: %s", exc)
            return
        if name in got:
            peaks.seed(zip(got["t"].tolist(), got[name].tolist(), strict=True))

    def save_state(self) -> None:
        if self.historian.failing:
            return  # it would wait for a commit that cannot happen now; saved once it can
        version = self.ctrl.state.version
        try:
            self.historian.raw.save_state("controller", self.ctrl.saved_state())
        except HistorianError as exc:
            self.historian.failed(exc)
            return
        self._saved_version = version

    def command(self, cmd: Command, by: Principal) -> CommandResult:
        """One command through the core's command path, audited and saved at once."""
        res = self.ctrl.command(cmd, by, self.clock())
        self._audit(res.audit)
        if res.accepted:
            self.save_state()
        return res

    def serve_inbox(self) -> int:
        """Give the commands queued by ``thermogate command`` to the core, answer each.

        The role is the user's role now (a removed user's queued command is refused)."""
        taken = self.inbox.take()
        for cid, who, cmd in taken:
            user = self.users.get(who.user)
            if isinstance(cmd, str) or user is None:
                why = cmd if isinstance(cmd, str) else f"user '{who.user}' does not exist any more"
                self._audit(Audit(self.clock(), who.user, "cli", "command", None, None, why, False))
                self.inbox.answer(cid, why)
                continue
            try:
                res: CommandResult | str = self.command(cmd, Principal(user.name, user.role, "cli"))
            except Exception as exc:  # a failed command must never stop the scan loop
                log.exception("command %d from %s failed", cid, who.user)
                res = f"the controller failed on it ({type(exc).__name__}: {exc}); see its log"
                self.historian.record_event(self.clock(), "alarm", "controller", res, 700)
            self.inbox.answer(cid, res)
        return len(taken)

    def _record_events(self, events: Iterable[Event]) -> None:
        for ev in events:  # (data: a limit's kind and action, so the journal pairs them)
            self.historian.record_event(
                ev.t, ev.kind, ev.source, ev.message, ev.severity, ev.data or None
            )

    def after_scan(self) -> None:
        """Between two scans: the thermal model's minute update (forecasts and
        headroom for the next scan, which is when a scan's forecast always took
        effect: off the scan, it no longer holds the scan's timing, ~150 ms at
        10,000 points), then the commands the CLI's inbox and the faces queued
        (they act at the next scan)."""
        if self.model is not None and self.ctrl.t_last is not None:
            self._record_events(self.model.update(self.ctrl.t_last))
        try:
            self.serve_inbox()
        except sqlite3.Error as exc:  # the database cannot be written now: the CLI waits
            log.error("cannot answer queued commands now (%s); they wait for the next scan", exc)
        for face in self.faces:
            face.serve(self.command)

    def _publish(self, now: float, status: dict[str, object]) -> None:
        """Hand the faces this scan's picture as soon as it is decided, before its
        writes go out: SCADA sees a scan without waiting for Modbus, and no face ever
        holds the scan up (a copy, handed over in O(1); each applies it in its own time)."""
        snap = Snapshot.of(
            self.ctrl,
            now,
            status=status,
            scans=self.scans + 1,
            overruns=self.overruns,
            scan_ms=self.scan_ms[-1] if self.scan_ms else math.nan,
        )
        for face in self.faces:
            face.publish(snap)

    def _audit(self, a: Audit) -> None:
        self.historian.record_audit(a.t, a.who, a.where, a.target, a.old, a.new, a.why, ok=a.ok)

    async def scan_once(self) -> None:
        """One scan: read, decide and write (:meth:`_scan`, the time ``scan_ms``
        counts), then what the scan leaves to the historian (:meth:`_record`: the
        audit row of each write, the events, the scan's telemetry, the books),
        before the next scan and in the order it always was, but off the scan's
        clock: none of it decides this scan's writes. The historian's telemetry
        batch waits for the end of both (``hold_batches``): the writer's commit
        takes the slack, not the cores the scan's read shares with it."""
        self.historian.hold_batches()
        try:
            self._record(await self._scan())
        finally:
            self.historian.release_batches()

    async def _scan(self) -> _Scanned:
        t0 = time.perf_counter()
        rr = await self.io.read_all()
        now = self.clock()
        step = self.clock_watch.observe(now, time.monotonic())
        if step is not None:  # the history must say where its timestamps jump
            back = step < 0
            self.historian.record_event(
                now,
                "clock",
                "controller",
                f"the clock stepped {step:+.1f} s between two scans: timestamps "
                + ("go back here (rows before and after overlap)" if back else "jump here"),
                600 if back else 500,
            )
        price = self.price_feed(now) if self.price_feed is not None else None
        links = {name: down() for name, down in self.links.items()}
        obs = Observation(now, rr.values, rr.fresh, price_per_mwh=price, links=links)
        res = self.ctrl.scan(obs)
        if (down := self.historian.poll()) is not None:  # the faces show it with the rest
            alarms = res.status.get("alarms")
            res.status["alarms"] = [*(alarms if isinstance(alarms, list) else []), "historian"]
            res.status["historian"] = down
        if self.faces:
            self._publish(now, res.status)
        outcomes: list[WriteOutcome] = []
        if res.writes:
            outcomes = await self.io.write([(w.point, w.value) for w in res.writes])
            self._outcomes(now, res, outcomes)
        self.scan_ms.append((time.perf_counter() - t0) * 1000.0)
        return _Scanned(now, rr.values, res, price, outcomes)

    def _outcomes(self, now: float, res: ScanResult, outcomes: list[WriteOutcome]) -> None:
        """What the writes' outcomes change before the next scan decides: the writes
        that never reached a device (``actuation.not_sent``) and the events of a
        point that starts (or stops) refusing its writes, or a unit's writes held."""
        unsent: dict[int, tuple[str, list[str]]] = {}  # unit -> (why, the points)
        failed: list[int] = []  # positions of the writes that never reached a device
        position, points = self.pmap.position, self.pmap
        for w, o in zip(res.writes, outcomes, strict=True):
            unit = points[w.point].unit_id
            if o.ok:
                self._unsent_units.discard(unit)
                if self._refusing and self._refusing.pop(w.point, None) is not None:
                    res.events.append(
                        Event(now, "restore", w.point, f"writes to {w.point} succeed again")
                    )
                continue
            failed.append(position(w.point))
            if (o.error or "").startswith("not sent:"):
                unsent.setdefault(unit, (o.error or "", []))[1].append(w.point)
            elif self._refusing.get(w.point) != o.error:
                # one event when a point starts refusing (or its reason changes),
                # none while it goes on: a tank the PLC was not programmed for
                # wrote 183 a minute; the alarm link.writes stands meanwhile
                self._refusing[w.point] = o.error or ""
                res.events.append(
                    Event(
                        now,
                        "write-failed",
                        w.point,
                        f"write {w.point} = {w.value:g} failed: {o.error} (said once"
                        " until a write to it succeeds)",
                        700,
                    )
                )
        self.ctrl.actuation.not_sent(failed)
        # Writes held back from a unit that is lost (its loss is already an
        # alarm): one event when a unit's writes first go unsent, none more
        # until one reaches it again (a one-minute outage once wrote ~14 a
        # second). Each write is still audited as failed.
        for unit, (why, names) in unsent.items():
            if unit in self._unsent_units:
                continue
            self._unsent_units.add(unit)
            n = len(names)
            shown = ", ".join(names[:5]) + (f" and {n - 5} more" if n > 5 else "")
            res.events.append(
                Event(now, "write-failed", f"unit {unit}",
                      f"{n} write{'s' if n > 1 else ''} {why} ({shown}); "
                      "writes to it are held until it answers", 700)
            )  # fmt: skip

    def _record(self, scan: _Scanned) -> None:
        """The scan's records, in this order: each write's audit row (old -> new, ok),
        the core's audit, the state if it changed, the events, the telemetry, the
        books and the settlement."""
        now, res = scan.now, scan.res
        if scan.outcomes:
            audit = self.historian.record_audit  # the Recorder's guard, made once
            values = scan.values
            position = self.pmap.position
            for w, o in zip(res.writes, scan.outcomes, strict=True):
                if w.point == "plc.heartbeat":
                    continue
                old = float(values[position(w.point)])
                audit(
                    now,
                    w.who,
                    w.where,
                    w.point,
                    None if math.isnan(old) else old,
                    w.value,
                    w.why,
                    ok=o.ok,
                )
        for a in res.audit:
            self._audit(a)
        if self.ctrl.state.version != self._saved_version:  # a trip latched, an override ended
            self.save_state()
        if self.model is not None:  # its minute's update comes after the scan (after_scan)
            res.events.extend(self.model.observe(now, res))
        self._record_events(res.events)
        self.historian.record_scan(now, *res.record)
        self._keep_books(now, scan.price)
        self._settle(now)
        self.last = res.status
        self.scans += 1

    def _settle(self, now: float) -> None:
        """The site meter into the settlement; settled intervals into the historian."""
        self.settlement.follow(self.ctrl.state.curtailments, now)
        kw = float(self.ctrl.values[self.pmap.index.site.power_kw])
        if not math.isfinite(kw):
            return  # not metered: the interval's coverage says so when it closes
        for j in self.settlement.meter(now, kw):
            self.historian.record_compliance(j)
            when = datetime.fromtimestamp(j.record.start_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
            ev = settled_event(j, now, when)
            self.historian.record_event(ev.t, ev.kind, ev.source, ev.message, ev.severity)

    def _keep_books(self, now: float, price: float | None) -> None:
        """This scan's meters into the books; closed intervals and changed reasons
        into the historian."""
        m = self.meters.read(self.ctrl.values)
        if price is None or not math.isfinite(price):
            price = self.cfg.site.economics.energy_usd_per_mwh
        dt = now - self._t_books if math.isfinite(self._t_books) else 0.0
        self._t_books = now
        for row in self.books.add(
            now,
            min(dt, BOOKS_MAX_DT_S),
            m.hash_th_s,
            m.inference_gpus,
            m.training_gpus,
            m.import_kw,
            price,
            m.mining_kw,
        ):
            self.historian.record_economics(row)
        if self.plan_tap is not None:
            for g in self.reasons.observe(now, self.plan_tap.budgets, self.plan_tap.why()):
                self.historian.record_gating(g.t, g.load, g.budget_kw, g.why)

    async def run(
        self, stop: asyncio.Event, on_status: Callable[[RealTimeController], None] | None = None
    ) -> None:
        if self.model is not None:
            self.model.start()
        freeze_startup()  # the run's lasting objects: full collections stay short
        self.gc.install()
        try:
            await self._loop(stop, on_status)
        finally:
            self.gc.uninstall()

    async def _loop(
        self, stop: asyncio.Event, on_status: Callable[[RealTimeController], None] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        last_save = last_status = last_freeze = loop.time()
        while not stop.is_set():
            await self.scan_once()
            self.after_scan()
            # the scan's garbage, collected in the slack rather than inside the next scan
            self.gc.collect(next_t + self.pace_s - loop.time(), self.pace_s)
            now = loop.time()
            if now - last_save >= STATE_SAVE_S:
                self.save_state()
                last_save = now
            if now - last_freeze >= REFREEZE_S:  # in the slack before the next scan
                freeze_startup()
                last_freeze = now
            if on_status and now - last_status >= STATUS_EVERY_S:
                on_status(self)
                last_status = now
            next_t += self.pace_s
            delay = next_t - loop.time()
            if delay < 0:
                self.overruns += 1
                next_t = loop.time()  # don't try to replay missed scans
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def close(self) -> None:
        if self.model is not None:
            self.model.close()  # a fit in progress finishes on its own
        self.save_state()
        last = self.books.close()  # the minute in progress: money is never left out
        if last is not None:
            self.historian.record_economics(last)
        await self.io.close()
        self.inbox.close()
        self.users.close()
        # the clean stop is marked last: a crash anywhere above leaves the run
        # "running", and the next start reports it with its gap
        now = self.clock()
        self.historian.record_event(
            now, CLEAN_STOP, "controller", f"clean stop after {self.scans} scans", 200
        )
        self.historian.save_state(
            RUN_STATE_KEY, {**self._run_marker, "running": False, "stopped": now}
        )
        self.historian.close()
        self.lock.release()


def _utc(t: float) -> str:
    if not math.isfinite(t):
        return "unknown"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def grid_telemetry(rt: RealTimeController) -> dict[str, float]:
    """What the OpenADR VEN reports and decides on, from the last scan's validated
    values: the site's import and what it can shed now (measured mining and
    training power; a bad meter counts nothing; NaN: nothing known yet)."""
    return site_telemetry(rt.ctrl)


def make_ven(rt: RealTimeController, cfg: VenConfig) -> Ven:
    """The VEN on the controller's command path; its decisions in the event log."""

    def journal(d: Decision) -> None:
        # every answer to the grid is accountable, an opt-out given before any
        # command as much as the curtailments an opt-in gave (audited on their own)
        rt.historian.record_event(d.t, "info", "grid", d.text, 400 if d.opt == "optIn" else 500)
        rt.historian.record_audit(
            d.t, "grid", "grid", f"openadr:{d.event_id}", None, None, d.text, ok=d.opt == "optIn"
        )

    ven = Ven(
        cfg,
        rt.command,
        lambda: grid_telemetry(rt),
        import_limit_kw=rt.cfg.site.import_limit_kw,
        clock=rt.clock,
        on_decision=journal,
    )
    now = rt.clock()
    for eid, ids in ven.adopt(rt.ctrl.state.curtailments, now).items():
        held = ", ".join(f"#{i}" for i in ids)
        rt.historian.record_event(
            now,
            "info",
            "grid",
            f"OpenADR event {eid}: curtailments {held} restored from the last run; "
            "the event sent again replaces them, its cancel clears them",
            300,
        )
    return ven


def console_face(rt: RealTimeController, cfg: ConsoleConfig) -> ConsoleFace:
    """The technician's console on the controller's command path; its logins,
    failures and lockouts audited in the historian like every command."""
    return ConsoleFace(rt.cfg.site, rt.pmap, cfg, rt.cfg.db, audit=rt._audit)


async def _main(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.db)
    if getattr(args, "accept_new_map", False):
        cfg = replace(cfg, accept_new_map=True)
    port = getattr(args, "plant_port", None)
    if port is not None:
        if not cfg.built_in_plant:
            raise ThermogateError("--plant-port is the demo plant's (without --config)")
        cfg = replace(cfg, plant_port=port, endpoints=Endpoint("tcp", cfg.plant_host, port))
    ua_port = getattr(args, "opcua_port", None)
    if ua_port is not None:
        if not cfg.built_in_plant:
            raise ThermogateError(
                "--opcua-port is the demo's OPC UA port (without --config); with a"
                " configuration, its [opcua] endpoint says where the server listens"
            )
        if cfg.opcua is not None:
            cfg = replace(cfg, opcua=cfg.opcua.on_port(ua_port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    plant = await DemoPlant.start(cfg) if cfg.built_in_plant else None
    try:
        rt = await _serve(args, cfg, plant, stop)
    finally:
        # a plant this run started stops with it, however the run ends: a start that
        # failed (the OPC UA port in use) left it serving, and the next run attached
        if plant is not None:
            await asyncio.to_thread(plant.stop)
    print(
        f"thermogate run: stopped after {rt.scans} scans ({rt.overruns} overruns); "
        f"state saved to {cfg.db}",
        flush=True,
    )
    return 0


async def _serve(
    args: argparse.Namespace, cfg: RunConfig, plant: DemoPlant | None, stop: asyncio.Event
) -> RealTimeController:
    """The controller and its faces until ``stop``; every one of them is stopped
    again on the way out, a start that failed half way included."""
    # the built-in plant's scenario prices stand in for a market feed
    feed = None if plant is None else plant.price_feed
    rt = RealTimeController(cfg, price_feed=feed)
    face: OpcUaProcess | None = None
    console = None
    ven = None
    try:
        where = (
            plant.describe
            if plant is not None
            else "; ".join(f"{ep}: {units}" for ep, units in rt.io.endpoints().items())
        )
        print(
            f"thermogate run: site '{cfg.site.name}', {len(rt.pmap)} points, scan {cfg.scan_s:g} s",
            flush=True,
        )
        print(f"  plant:    {where}", flush=True)
        print(f"  database: {cfg.db.resolve()} (telemetry, events, audit, state)", flush=True)
        if (note := unwatched_plcs(cfg.site)) is not None:
            print(f"  watchdog: {note}", flush=True)
        if cfg.peaks:
            print(f"  peaks:    {describe_windows(cfg.peaks, rt.clock(), math.inf)}", flush=True)
        if cfg.opcua is not None and not getattr(args, "no_opcua", False):
            from .opcua.process import OpcUaProcess

            face = OpcUaProcess(cfg.site, cfg.opcua, cfg.db)
            face.audit = rt._audit  # commands withdrawn past their deadline
            try:
                for line in await asyncio.to_thread(face.start):  # the plant serves meanwhile
                    print(f"  {line}", flush=True)
            except ThermogateError as exc:
                raise ThermogateError(
                    f"{exc} (port in use? another thermogate runs; "
                    + (
                        "use --opcua-port P or --no-opcua)"
                        if cfg.built_in_plant
                        else "change [opcua] endpoint, or use --no-opcua)"
                    )
                ) from None
            rt.faces.append(face)
        if cfg.console is not None and not getattr(args, "no_console", False):
            console = console_face(rt, cfg.console)
            # The banner first: the port's thread may warn at once of a missing device
            # (a warning and a retry, not a stop), and that reads better after it.
            for line in console.describe():
                print(f"  {line}", flush=True)
            console.start()
            rt.faces.append(console)
        ven = None if cfg.openadr is None else make_ven(rt, cfg.openadr)
        if ven is not None:
            rt.links["openadr"] = ven.link_down
            print(
                f"  OpenADR:  VEN '{ven.cfg.ven_name}' of VTN {ven.cfg.vtn_url} (registers "
                "after the first scan; decisions in the event log)",
                flush=True,
            )
        print("  Ctrl-C to stop", flush=True)
        if ven is not None:
            await ven.start()
        await rt.run(stop, on_status=status_line)
    finally:
        if ven is not None:
            await ven.stop()
        if face is not None:
            await asyncio.to_thread(face.stop)
        if console is not None:
            await asyncio.to_thread(console.stop)
        await rt.close()
    return rt


def run_cli(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
