"""The books by the interval and the gating reasons: the pure arithmetic, the
historian's ``economics`` and ``gating`` tables (real SQLite files), what
``thermogate simulate`` records and what ``thermogate run`` says every 10 s."""

from __future__ import annotations

import dataclasses
import math
import sqlite3

import numpy as np
import pytest

from thermogate.controller.core import DefaultPlanner, LoadInfo, SiteNow
from thermogate.controller.gating.economics import (
    ECONOMICS_COLUMNS as ROW_FIELDS,
)
from thermogate.controller.gating.economics import (
    EconomicsIntervals,
    EconomicsLedger,
    EconomicsRow,
)
from thermogate.controller.gating.metered import SiteMeters
from thermogate.controller.gating.placement import gpu_loads
from thermogate.controller.gating.planner import GatingPlanner
from thermogate.controller.gating.reasons import UNBOUND, PlanTap, ReasonLog
from thermogate.controller.historian import Historian, HistoryReader
from thermogate.controller.historian.schema import ECONOMICS_COLUMNS
from thermogate.controller.statusline import economics_line
from thermogate.plc.equipment import Economics
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import Site

ECON = Economics()
MONEY = ("mining_revenue", "inference_revenue", "training_revenue", "energy_cost", "net_margin")


def _rows_total(rows: list[EconomicsRow]) -> dict[str, float]:
    return {
        "mining_revenue": sum(r.mining_usd for r in rows),
        "inference_revenue": sum(r.inference_usd for r in rows),
        "training_revenue": sum(r.training_usd for r in rows),
        "energy_cost": sum(r.energy_usd for r in rows),
        "net_margin": sum(r.net_usd for r in rows),
    }


# --------------------------------------------------------------------------- #
# the arithmetic
# --------------------------------------------------------------------------- #


def test_interval_rows_add_up_to_the_ledger_of_the_same_samples():
    rng = np.random.default_rng(7)
    books = EconomicsIntervals(ECON, 126.0)
    plain = EconomicsLedger(ECON)  # the same samples, never split
    rows: list[EconomicsRow] = []
    t = 1_000.0
    for _ in range(2000):
        dt = float(rng.choice([0.25, 1.0, 5.0, 37.0, 130.0]))  # some span a whole minute
        t += dt
        rates = (
            float(rng.uniform(0, 2e5)),
            float(rng.uniform(0, 256)),
            float(rng.uniform(0, 512)),
            float(rng.uniform(0, 4000)),
            float(rng.uniform(-50, 300)),  # negative prices pay the site
            float(rng.uniform(0, 3000)),
        )
        rows += books.add(t, dt, *rates)
        plain.add(dt, *rates)
    last = books.close()
    assert last is not None
    rows.append(last)
    got = _rows_total(rows)
    for key in MONEY:
        assert got[key] == pytest.approx(getattr(books.total, key), rel=1e-9, abs=1e-9), key
        assert got[key] == pytest.approx(getattr(plain, key), rel=1e-9, abs=1e-9), key
    assert sum(r.import_kwh for r in rows) == pytest.approx(plain.energy_mwh * 1000.0)
    assert sum(r.interval_s for r in rows) == pytest.approx(plain.seconds)
    starts = [r.t for r in rows]
    assert starts == sorted(set(starts))  # one row per interval, oldest first
    assert all(s % 60.0 == 0.0 for s in starts)
    assert all(0 < r.interval_s <= 60.0 + 1e-9 for r in rows)
    assert books.close() is None  # nothing left open


def test_steady_rates_give_one_row_a_minute_with_those_means_and_the_metered_breakeven():
    books = EconomicsIntervals(ECON, rated_breakeven_per_mwh=100.0)
    j_per_th = 16.5
    hash_th = 100_000.0
    mining_kw = hash_th * j_per_th / 1000.0  # miners at their nominal efficiency
    rows = []
    for k in range(1, 181):  # three minutes of 1 s scans
        rows += books.add(float(k), 1.0, hash_th, 64.0, 128.0, 2000.0, 80.0, mining_kw)
    assert [r.t for r in rows] == [0.0, 60.0, 120.0]
    r = rows[1]
    assert r.interval_s == 60.0
    assert r.hash_th_s == pytest.approx(hash_th)
    assert (r.inference_gpus, r.training_gpus) == (pytest.approx(64.0), pytest.approx(128.0))
    assert r.price_per_mwh == pytest.approx(80.0)
    assert r.import_kwh == pytest.approx(2000.0 / 60.0)
    assert r.mining_usd == pytest.approx(hash_th * ECON.hashprice_usd_per_th_day / 1440.0)
    assert r.energy_usd == pytest.approx(2000.0 / 60.0 / 1000.0 * 80.0)
    assert r.net_usd == pytest.approx(
        r.mining_usd + r.inference_usd + r.training_usd - r.energy_usd
    )
    # metered: what the miners earned per MWh they drew is their efficiency's breakeven
    assert r.mining_breakeven_per_mwh == pytest.approx(ECON.mining_breakeven_usd_per_mwh(j_per_th))
    # no miner running (or their power not metered): the rated breakeven stands
    idle = EconomicsIntervals(ECON, rated_breakeven_per_mwh=100.0)
    out = []
    for k in range(1, 62):
        out += idle.add(float(k), 1.0, 0.0, 1.0, 1.0, 500.0, 80.0)
    assert out[0].mining_breakeven_per_mwh == 100.0


def test_a_sample_across_a_minute_boundary_is_split_in_proportion_to_time():
    books = EconomicsIntervals(ECON, 126.0)
    assert books.add(50.0, 10.0, 0.0, 0.0, 0.0, 3600.0, 100.0) == []  # (40, 50]
    rows = books.add(70.0, 20.0, 0.0, 0.0, 0.0, 3600.0, 100.0)  # (50, 70]: 10 s each side
    assert len(rows) == 1 and rows[0].t == 0.0 and rows[0].interval_s == pytest.approx(20.0)
    assert rows[0].import_kwh == pytest.approx(20.0)  # 3600 kW for 20 s
    last = books.close()
    assert last is not None and last.t == 60.0 and last.interval_s == pytest.approx(10.0)


def test_a_sample_with_a_bad_number_or_no_duration_is_not_booked():
    books = EconomicsIntervals(ECON, 126.0)
    assert books.add(10.0, 1.0, math.nan, 0.0, 0.0, 100.0, 50.0) == []
    assert books.add(11.0, 0.0, 1.0, 0.0, 0.0, 100.0, 50.0) == []
    assert books.total.seconds == 0.0 and books.close() is None


def test_the_books_rows_have_the_historian_columns():
    assert ROW_FIELDS == ECONOMICS_COLUMNS


# --------------------------------------------------------------------------- #
# why: the tap on the planner and the log of changes
# --------------------------------------------------------------------------- #


def _infos(site: Site) -> list[LoadInfo]:
    loop_of_cdu = {c.name: c.loop for c in site.cdus}
    out = [LoadInfo(t.name, t.workload_class, t.rated_kw, t.rated_kw, t.loop) for t in site.tanks]
    out += [
        LoadInfo(r.name, r.workload_class, r.rated_kw, r.rated_kw, loop_of_cdu[r.cdu])
        for r in site.rack_rows
    ]
    return out


def test_the_plan_tap_keeps_the_budgets_and_shows_the_core_the_planner_it_wraps(site: Site):
    now = SiteNow(1000.0, 1100.0, 1000.0, 40.0)
    inner, twin = GatingPlanner(site), GatingPlanner(site)
    tap = PlanTap(inner)
    out = tap.plan(0.0, _infos(site), {}, now)
    assert out == twin.plan(0.0, _infos(site), {}, now)
    assert tap.budgets == out  # every load has a budget
    assert tap.why() == twin.why() and "grid limit" in tap.why().values()
    assert tap.gpu_capacity == inner.gpu_capacity  # its other attributes, forwarded
    assert tap.planned(0.0, 300.0, _infos(site)) == twin.planned(0.0, 300.0, _infos(site))
    # a planner without reasons or a plan ahead: the tap has neither either
    plain = PlanTap(DefaultPlanner())
    assert getattr(plain, "planned", None) is None and plain.why() == {}
    plain.plan(0.0, _infos(site), {}, now)
    assert plain.budgets == {ld.name: ld.rated_kw for ld in _infos(site)}


def test_a_reason_is_logged_when_it_or_the_budget_changes_not_every_scan():
    log = ReasonLog({"tank01": 250.0, "row1": 300.0})
    budgets = {"tank01": 200.0, "row1": 300.0}
    first = log.observe(0.0, budgets, {"tank01": "grid limit"})
    assert [(g.load, g.budget_kw, g.why) for g in first] == [
        ("tank01", 200.0, "grid limit"),
        ("row1", 300.0, UNBOUND),
    ]
    for k in range(1, 100):  # the same, and jitter inside the deadband: nothing
        jitter = {"tank01": 200.0 + (k % 3), "row1": 300.0}
        assert log.observe(float(k), jitter, {"tank01": "grid limit"}) == []
    moved = log.observe(100.0, {"tank01": 150.0, "row1": 300.0}, {"tank01": "grid limit"})
    assert [(g.t, g.load, g.budget_kw) for g in moved] == [(100.0, "tank01", 150.0)]
    off = log.observe(101.0, {"tank01": 0.0, "row1": 300.0}, {"tank01": "price above"})
    assert [(g.load, g.why) for g in off] == [("tank01", "price above")]
    same_kw = log.observe(102.0, {"tank01": 0.0, "row1": 300.0}, {"tank01": "protection"})
    assert [(g.load, g.why) for g in same_kw] == [("tank01", "protection")]


# --------------------------------------------------------------------------- #
# the meters as ``thermogate run`` reads them
# --------------------------------------------------------------------------- #


def test_the_meters_give_hashrate_busy_gpus_mining_power_and_import(site: Site):
    pmap = build_point_map(site)
    ix = pmap.index
    meters = SiteMeters(site, pmap)
    v = np.full(len(pmap), np.nan)
    asic = [t.name for t in site.tanks if t.workload == "asic"]
    for name in asic:
        v[ix.tank[name].hashrate_ths] = 1000.0
        v[ix.tank[name].power_kw] = 20.0
    loads = gpu_loads(site)
    for ld in loads:  # every GPU load at half its dynamic power: half its GPUs busy
        at = ix.tank[ld.name].power_kw if ld.name in ix.tank else ix.row[ld.name].power_kw
        v[at] = ld.kw_at(0.5)
    v[ix.site.power_kw] = 1234.0
    m = meters.read(v)
    assert m.hash_th_s == 1000.0 * len(asic) and m.mining_kw == 20.0 * len(asic)
    for kind, busy in (("inference", m.inference_gpus), ("training", m.training_gpus)):
        assert busy == pytest.approx(0.5 * sum(ld.gpus for ld in loads if ld.wclass == kind))
    assert m.import_kw == 1234.0
    # a bad site meter: the import it last read stands in (energy is paid regardless)
    v[ix.site.power_kw] = np.nan
    v[ix.tank[asic[0]].hashrate_ths] = np.nan  # a bad hashrate counts nothing
    m = meters.read(v)
    assert m.import_kw == 1234.0 and m.hash_th_s == 1000.0 * (len(asic) - 1)


def test_the_run_status_says_margin_so_far_rate_now_and_price_against_breakeven():
    books = EconomicsIntervals(ECON, rated_breakeven_per_mwh=126.0)
    assert economics_line(books) == "economics: margin $+0.00 so far (no meters read yet)"
    # an hour at 100,000 TH/s, 64 inference GPUs, 2 MW at 80 $/MWh, miners unmetered
    for k in range(1, 61):
        books.add(60.0 * k, 60.0, 100_000.0, 64.0, 0.0, 2000.0, 80.0)
    mining_h = 100_000 * ECON.hashprice_usd_per_th_day / 24
    ai_h = 64 * ECON.inference_usd_per_gpu_h
    net_h = mining_h + ai_h - 160.0
    assert economics_line(books) == (
        f"economics: margin ${net_h:+,.2f} so far, ${net_h:+,.0f}/h now "
        f"(mining {mining_h:,.0f}, AI {ai_h:,.0f}, energy -160 $/h); "
        "energy 80 $/MWh vs mining breakeven 126 $/MWh rated: mining pays"
    )
    books.add(3660.0, 60.0, 0.0, 64.0, 0.0, 2000.0, 300.0)
    assert economics_line(books).endswith(
        "energy 300 $/MWh vs mining breakeven 126 $/MWh rated: mining loses money"
    )


# --------------------------------------------------------------------------- #
# the historian's tables
# --------------------------------------------------------------------------- #


def _row(t: float, **kw: float) -> EconomicsRow:
    base = dict.fromkeys(ECONOMICS_COLUMNS, 1.0)
    base.update(t=t, **kw)
    return EconomicsRow(**base)


def test_economics_and_gating_rows_ride_the_telemetry_batch_and_read_back(tmp_path):
    db = tmp_path / "h.db"
    with Historian(db, ["a"], batch_s=3600.0) as h, HistoryReader(db) as other:
        h.record_scan(0.0, np.array([1.0]), np.zeros(1, np.uint8))
        for k in range(5):
            h.record_economics(_row(60.0 * k, net_usd=float(k)))
        no_price = dict.fromkeys(ECONOMICS_COLUMNS, 2.0) | {"t": 300.0, "price_per_mwh": math.nan}
        h.record_economics(no_price)  # a mapping will do too
        h.record_gating(10.0, "tank01", 200.0, "grid limit")
        h.record_gating(20.0, "row1", 51.2, "job demand")
        h.record_gating(30.0, "tank01", 0.0, "price above mining breakeven")
        # not committed one by one: the batch (an hour away) has not come yet
        assert other.economics() == [] and other.gating() == []
        h.flush()
        rows = other.economics()
        assert [r["t"] for r in rows] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
        assert [r["net_usd"] for r in rows[:5]] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert set(rows[0]) == set(ECONOMICS_COLUMNS)
        assert math.isnan(rows[-1]["price_per_mwh"])  # NULL reads back as NaN
        assert [r["t"] for r in h.economics(60.0, 180.0)] == [60.0, 120.0, 180.0]
        assert h.economics()[:5] == rows[:5]  # the Historian reads the same rows
        tank = h.gating(loads=["tank01"])
        assert [(g["t"], g["budget_kw"], g["why"]) for g in tank] == [
            (10.0, 200.0, "grid limit"),
            (30.0, 0.0, "price above mining breakeven"),
        ]
        assert [g["load"] for g in other.gating(15.0, 25.0)] == ["row1"]
        with pytest.raises(ValueError, match="not an economics row"):
            h.record_economics({"t": 1.0})


def test_rows_recorded_before_close_are_committed_by_close(tmp_path):
    db = tmp_path / "h.db"
    h = Historian(db, ["a"], batch_s=3600.0)
    h.record_economics(_row(0.0))
    h.record_gating(1.0, "gpu01", 25.6, "job demand")
    h.close()
    with HistoryReader(db) as r:
        assert len(r.economics()) == 1 and len(r.gating()) == 1


def test_a_historian_file_from_before_the_books_opens_and_gains_the_tables(tmp_path):
    db = tmp_path / "old.db"
    with Historian(db, ["a", "b"], site_name="hall") as h:
        h.record_scan(100.0, np.array([1.0, 2.0]), np.zeros(2, np.uint8))
        h.record_event(100.0, "info", "test", "before the books")
    # the same file as schema 1 wrote it before the books: without their tables
    with sqlite3.connect(db) as c:
        c.execute('DROP TABLE "economics"')
        c.execute('DROP TABLE "gating"')
    with HistoryReader(db, "hall") as r:  # read-only: it cannot add them, it has none
        assert r.economics() == [] and r.gating() == []
        assert r.telemetry(["a"], 0, 200)["a"].tolist() == [1.0]
    with Historian(db, ["a", "b"], site_name="hall") as h:
        h.record_economics(_row(120.0))
        h.record_gating(120.0, "tank01", 100.0, "grid limit")
        h.flush()
        assert len(h.economics()) == 1 and len(h.gating()) == 1
        assert h.telemetry(["a", "b"], 0, 200)["b"].tolist() == [2.0]  # history kept
        assert [e["message"] for e in h.events()] == ["before the books"]


# --------------------------------------------------------------------------- #
# thermogate simulate
# --------------------------------------------------------------------------- #


def test_a_simulation_with_a_historian_books_every_minute_and_says_why_each_budget(
    site: Site, tmp_path
):
    from thermogate.controller.simulate import HISTORIAN_EPOCH_S, run_simulation
    from thermogate.hil.scenario import load_scenario

    tight = dataclasses.replace(site, import_limit_kw=round(site.it_rated_kw / 1.4, 1))
    be = max(tight.mining_breakeven().values())
    prices = tmp_path / "spike.csv"
    prices.write_text(f"time,price_per_mwh\n0,50\n600,{3 * be:.2f}\n900,50\n86400,50\n")
    sc = load_scenario("normal-day", prices_csv=prices)
    with Historian.from_point_map(tmp_path / "s.db", build_point_map(tight)) as h:
        r = run_simulation(tight, sc, 0.5, scan_s=5.0, planner=GatingPlanner(tight), historian=h)
        h.flush()
        rows, why = h.economics(), h.gating()
    econ = r.summary["economics"]
    assert len(rows) == 31  # 30 minutes, the first and the last partial
    assert sum(x["interval_s"] for x in rows) == pytest.approx(1800.0)
    assert sum(x["net_usd"] for x in rows) == pytest.approx(econ["net_margin"], abs=0.01)
    assert sum(x["energy_usd"] for x in rows) == pytest.approx(econ["energy_cost"], abs=0.01)
    spike = [x for x in rows if HISTORIAN_EPOCH_S + 600 <= x["t"] < HISTORIAN_EPOCH_S + 840]
    assert spike and all(x["mining_usd"] == 0.0 for x in spike)
    stopped = [g for g in why if g["why"] == "price above mining breakeven"]
    assert {g["load"] for g in stopped} == set(tight.mining_breakeven())
    assert all(
        HISTORIAN_EPOCH_S + 600 <= g["t"] <= HISTORIAN_EPOCH_S + 610 for g in stopped
    )  # when it happened, once per tank
    assert ("tank01", "grid limit") in {(g["load"], g["why"]) for g in why}
    assert len(why) < 0.1 * 360 * len(_infos(tight))  # changes, not a row per scan


def test_the_run_status_names_the_breakeven_it_shows_metered_or_rated():
    books = EconomicsIntervals(ECON, rated_breakeven_per_mwh=126.0)
    for k in range(1, 61):  # the miners metered: 1.5 MW for 100,000 TH/s
        books.add(60.0 * k, 60.0, 100_000.0, 0.0, 0.0, 2000.0, 80.0, 1500.0)
    metered = 100_000 * ECON.hashprice_usd_per_th_day / 24 / 1.5  # $/h over MW
    assert economics_line(books).endswith(
        f"vs mining breakeven {metered:.0f} $/MWh as metered: mining pays"
    )
