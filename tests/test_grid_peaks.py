"""Peak windows (4CP-style) and very low prices: the import cut by a set amount
inside a declared window; mining run to the heat headroom when energy is free.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from served import normal_day_with

from thermogate.controller.gating.planner import GatingPlanner
from thermogate.controller.grid.peaks import PeakShaving, PeakWindow, load_peaks_csv
from thermogate.controller.simulate import run_simulation
from thermogate.hil.scenario import load_scenario
from thermogate.plc.errors import DataFileError


def test_a_window_cuts_the_import_it_had_before_by_its_amount_and_no_further():
    ps = PeakShaving([PeakWindow(1000.0, 1900.0, 800.0)], lookback_s=300.0)
    for t in range(0, 1000, 10):  # 2,000 kW, except an older 3,000 kW spell
        assert ps.limit_kw(float(t), 3000.0 if t < 600 else 2000.0) is None
    assert ps.limit_kw(1000.0, 1500.0, keep_kw=400.0) == pytest.approx(1200.0)
    # fixed for the whole window, whatever the import does inside it
    assert ps.limit_kw(1500.0, 1100.0, keep_kw=400.0) == pytest.approx(1200.0)
    assert ps.limit_kw(1900.0, 2000.0) is None


def test_back_to_back_windows_each_cut_from_the_import_before_the_first():
    """Three adjacent windows once compounded (1545, 267, 182 kW): the second
    found no import of its own before it and cut from the first's cut import."""
    wins = [PeakWindow(1000.0 + k * 600.0, 1600.0 + k * 600.0, 1000.0) for k in range(3)]
    ps = PeakShaving(wins, lookback_s=300.0)
    for t in range(0, 1000, 10):
        ps.limit_kw(float(t), 2500.0)
    limits = [ps.limit_kw(w.start_s, 1500.0 - 400.0 * k) for k, w in enumerate(wins)]
    assert limits == [pytest.approx(1500.0)] * 3
    # a window after a gap longer than the lookback cuts from its own import
    late = PeakShaving([wins[0], PeakWindow(2000.0, 2100.0, 100.0)], lookback_s=300.0)
    for t in range(0, 2000, 10):
        late.limit_kw(float(t), 2500.0 if t < 1000 else 1800.0)
    assert late.limit_kw(2000.0, 1800.0) == pytest.approx(1700.0)


def test_a_restarted_controller_keeps_the_window_limit_from_its_history():
    """Restarted inside a window, the controller once cut from the import it had
    already cut (1643 kW became 491): seeded with the import before the window,
    it keeps the window's limit, in a chain of windows too."""
    wins = [PeakWindow(1000.0, 1600.0, 800.0), PeakWindow(1600.0, 2200.0, 800.0)]
    ps = PeakShaving(wins, lookback_s=300.0)
    assert ps.history_from(1800.0) == 700.0  # the chain began at 1000
    assert ps.history_from(500.0) == 200.0  # outside every window: the lookback
    history = [(float(t), 2400.0 if t < 1000 else 1600.0) for t in range(600, 1800, 10)]
    ps.seed(history)
    assert ps.limit_kw(1800.0, 1550.0) == pytest.approx(1600.0)
    bare = PeakShaving(wins, lookback_s=300.0)
    assert bare.limit_kw(1800.0, 1550.0) == pytest.approx(750.0)  # what it did without


def test_a_window_never_cuts_below_what_must_stay_on_nor_from_nothing():
    ps = PeakShaving([PeakWindow(100.0, 200.0, 5000.0), PeakWindow(300.0, 400.0, 10.0)])
    ps.limit_kw(50.0, 2000.0)
    assert ps.limit_kw(100.0, 2000.0, keep_kw=700.0) == 700.0  # inference and cooling stay
    fresh = PeakShaving([PeakWindow(0.0, 100.0, 10.0)])
    assert fresh.limit_kw(0.0, math.nan) is None  # nothing metered to cut from


def test_the_peaks_csv_reads_iso_times_with_offsets(tmp_path):
    f = tmp_path / "peaks.csv"
    f.write_text(
        "# 4CP candidates\nstart,end,reduce_kw\n"
        "2026-08-14T16:00:00-05:00,2026-08-14T16:30:00-05:00,1500\n"
        "2026-08-13T21:00:00Z,2026-08-13T21:15:00Z,1000\n"
    )
    w = load_peaks_csv(f)
    assert [x.reduce_kw for x in w] == [1000.0, 1500.0]  # sorted by start
    assert w[1].start_s == 1786741200.0 and w[1].end_s - w[1].start_s == 1800.0


@pytest.mark.parametrize(
    ("rows", "expect"),
    [
        (
            "2026-08-14T16:00:00,2026-08-14T16:30:00,1500",
            ":3: column 'start': '2026-08-14T16:00:00' has no UTC offset",
        ),
        ("2026-08-14T16:00Z,2026-08-14T15:30Z,1500", ":3: column 'end': is not after start"),
        ("yesterday,2026-08-14T15:30Z,1500", ":3: column 'start': not an ISO 8601 time"),
        ("2026-08-14T16:00Z,2026-08-14T16:30Z,-5", ":3: column 'reduce_kw'"),
        (
            "2026-08-14T16:00Z,2026-08-14T16:30Z,5\n2026-08-14T16:15Z,2026-08-14T16:45Z,5",
            ":4: column 'start': overlaps the window before it",
        ),
        ("", "no peak windows"),
    ],
)
def test_a_bad_peaks_csv_names_file_line_and_column(tmp_path, rows, expect):
    f = tmp_path / "p.csv"
    f.write_text("# peaks\nstart,end,reduce_kw\n" + rows + "\n")
    with pytest.raises(DataFileError) as exc:
        load_peaks_csv(f)
    assert expect in str(exc.value) and str(f) in str(exc.value)
    assert "\n" not in str(exc.value)


PEAK = """
[[grid_events]]
kind = "peak"
at_s = 2700
duration_s = 900
params.reduce_kw = 900
"""


def test_a_simulated_peak_window_cuts_mining_by_its_amount_and_spares_inference(site):
    res = run_simulation(site, normal_day_with(PEAK), 1.25, scan_s=5.0, planner=GatingPlanner(site))
    t = res.series["t_h"] * 3600.0
    kw, inference = res.series["site_kw"], res.series["class.inference_kw"]
    before = kw[(t >= 1800) & (t < 2700)].mean()
    inside = (t >= 2700 + 60) & (t < 3600)  # a minute in: the miners have stepped down
    # cut by at least its amount, and not much more than the planner's usual
    # margins (IT planned to 95 % of a limit less the cooling, whole miners)
    assert kw[inside].max() <= before - 900.0 + 1.0
    assert kw[inside].mean() >= 0.8 * (before - 900.0)
    assert inference[inside].min() >= 0.95 * inference[(t >= 1800) & (t < 2700)].mean()
    assert res.summary["limit_violation_c_min"] == 0.0
    peak_events = [e for e in res.events if e["source"] == "grid.peak"]
    assert len(peak_events) == 2 and "import <=" in str(peak_events[0]["message"])


def test_negative_prices_run_mining_to_its_heat_headroom_and_no_further(site, tmp_path):
    prices = tmp_path / "neg.csv"
    prices.write_text("time,price_per_mwh\n0,-40\n86400,-40\n")
    sc = load_scenario("heatwave", prices_csv=prices)
    planner = GatingPlanner(site)
    res = run_simulation(site, sc, 2.0, scan_s=5.0, planner=planner)
    assert res.summary["limit_violation_c_min"] == 0.0 and res.summary["trips"] == 0
    why = planner.why()
    mining = [t.name for t in site.tanks if t.workload_class == "mining"]
    # every miner runs: at its rating, or where heat, power or the grid bind it
    assert all(why.get(n) != "price above mining breakeven" for n in mining)
    assert res.series["class.mining_kw"][-1] > 0.5 * sum(
        t.rated_kw for t in site.tanks if t.workload_class == "mining"
    )
    assert np.isfinite(res.series["price_per_mwh"]).all()
    assert res.series["price_per_mwh"].max() < 0.0


def test_the_run_config_takes_peak_windows_from_a_csv(tmp_path):
    from thermogate.controller.run import RealTimeController
    from thermogate.controller.runconfig import load_run_config
    from thermogate.plc.errors import ConfigError
    from thermogate.plc.site import demo_site_text

    (tmp_path / "site.toml").write_text(demo_site_text())
    (tmp_path / "peaks.csv").write_text(
        "start,end,reduce_kw\n2026-08-14T21:00Z,2026-08-14T21:15Z,700\n"
    )
    base = '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\n'
    (tmp_path / "run.toml").write_text(base + '[grid]\npeaks = "peaks.csv"\n')
    cfg = load_run_config(str(tmp_path / "run.toml"), str(tmp_path / "h.db"))
    assert [w.reduce_kw for w in cfg.peaks] == [700.0]
    rt = RealTimeController(cfg)
    try:
        assert rt.ctrl.peaks is not None
    finally:
        rt.historian.close()
        rt.inbox.close()
        rt.users.close()
    (tmp_path / "typo.toml").write_text(base + '[grid]\npeak = "peaks.csv"\n')
    with pytest.raises(ConfigError, match=r"grid\.peaks: required key"):
        load_run_config(str(tmp_path / "typo.toml"), None)
    (tmp_path / "gone.toml").write_text(base + '[grid]\npeaks = "nope.csv"\n')
    with pytest.raises(ConfigError, match=r"gone\.toml: grid\.peaks: file not found: .*nope\.csv"):
        load_run_config(str(tmp_path / "gone.toml"), None)


def test_run_restarted_inside_a_window_cuts_from_the_import_its_history_kept(tmp_path):
    """``run`` restarted inside a peak window once cut from the import the window
    had already cut (1643 kW became 491 kW): it now reads the import before the
    window back from its historian."""
    from thermogate.controller.run import RealTimeController
    from thermogate.controller.runconfig import load_run_config
    from thermogate.plc.site import demo_site_text

    t_start = 1_786_741_200.0  # 2026-08-14T21:00Z
    (tmp_path / "site.toml").write_text(demo_site_text())
    (tmp_path / "peaks.csv").write_text(
        "start,end,reduce_kw\n2026-08-14T21:00Z,2026-08-14T21:30Z,800\n"
    )
    (tmp_path / "run.toml").write_text(
        '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\n'
        '[grid]\npeaks = "peaks.csv"\n'
    )
    cfg = load_run_config(str(tmp_path / "run.toml"), str(tmp_path / "h.db"))

    def controller(now: float) -> RealTimeController:
        return RealTimeController(cfg, clock=lambda: now)

    def close(rt: RealTimeController) -> None:
        rt.historian.close()
        rt.inbox.close()
        rt.users.close()
        rt.lock.release()

    first = controller(t_start - 1200.0)
    meter = first.pmap.position(first.pmap.points[first.ctrl.topo.site_meter].name)
    n = len(first.columns)
    for k in range(0, 1500, 10):  # 2,450 kW before the window, 1,650 inside it
        values = np.zeros(n)
        values[meter] = 2450.0 if k < 1200 else 1650.0
        first.historian.record_scan(t_start - 1200.0 + k, values, np.zeros(n, np.uint8))
    close(first)
    again = controller(t_start + 300.0)
    try:
        assert again.ctrl.peaks is not None
        limit = again.ctrl.peaks.limit_kw(t_start + 300.0, 1650.0)
        assert limit == pytest.approx(2450.0 - 800.0)
    finally:
        close(again)


def test_windows_outside_a_run_are_said_not_dropped_without_a_word(tmp_path):
    """A peaks file whose windows all lay outside the run acted on nothing and
    said nothing: `run` now says so in its banner, `simulate` refuses it."""
    from thermogate.controller.grid.peaks import describe_windows

    w = [
        PeakWindow(1786741200.0, 1786743000.0, 1500.0),
        PeakWindow(1786827600.0, 1786829400.0, 900.0),
    ]
    assert describe_windows(w, 1786700000.0, math.inf) == (
        "2 windows, next 2026-08-14 21:00 UTC (import cut by 1500 kW)"
    )
    assert describe_windows(w, 1786742000.0, math.inf).startswith(
        "2 windows, now (import cut by 1500"
    )
    assert describe_windows(w, 1786800000.0, math.inf) == (
        "1 window, next 2026-08-15 21:00 UTC (import cut by 900 kW); 1 outside this run, ignored"
    )
    assert describe_windows(w, 1790000000.0, math.inf) == (
        "none of its 2 windows (2026-08-14 21:00 UTC .. 2026-08-15 21:30 UTC) falls in this run: "
        "none will act"
    )
    assert describe_windows([], 0.0, 1.0) is None
