"""The operator report (plots, summary, event log, HTML) and the progress bar."""

from __future__ import annotations

import csv
import html
import io
import json
import math

import numpy as np
import pytest

from thermogate.controller.report import IMAGES, ProgressBar, unit_for, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("error")  # no matplotlib or numpy warnings either


def fake_day(
    hours: float = 24.0, step_min: float = 1.0, *, cdus: bool = True, price: bool = True
) -> tuple[dict, dict, list, dict]:
    """A small site over a day: a hot afternoon, a curtailment 14-16 h, one tank tripping."""
    t = np.arange(0.0, hours + 1e-9, step_min / 60.0)
    rng = np.random.default_rng(7)
    ambient = 18.0 + 9.0 * np.sin((t - 9.0) / 24.0 * 2 * np.pi)
    curtail = (t % 24 >= 14.0) & (t % 24 < 16.0)
    limit = np.where(curtail, 1500.0, 2600.0)
    mining = np.where(curtail, 600.0, 1500.0) + 20 * rng.standard_normal(len(t))
    training = np.full(len(t), 420.0)
    inference = 250.0 + 80.0 * np.sin(t / 24.0 * 2 * np.pi) ** 2
    it = mining + training + inference
    cooling = 0.06 * it + 4.0 * np.maximum(ambient - 15.0, 0.0)
    site = it + cooling
    site[(t > 14.0) & (t < 14.2)] += 900.0  # the controller took a while to shed
    series: dict[str, np.ndarray] = {
        "t_h": t,
        "ambient_c": ambient,
        "site_kw": site,
        "import_limit_kw": limit,
        "it_kw": it,
        "cooling_kw": cooling,
        "pue": site / it,
        "class.mining_kw": mining,
        "class.training_kw": training,
        "class.inference_kw": inference,
    }
    tanks = {
        "tank01": ("mining", 60.0, 65.0),
        "tank02": ("mining", 60.0, 65.0),
        "tank03": ("mining", 60.0, 65.0),
        "gpu01": ("inference", 57.0, 62.0),
        "gpu02": ("training", 57.0, 62.0),
    }
    for i, name in enumerate(tanks):
        y = 48.0 + 0.3 * i + 0.35 * (ambient - 18.0) + 0.3 * rng.standard_normal(len(t))
        if name == "tank02":
            y = y + np.clip((t - 11.0) * 6.0, 0.0, 18.0) * (t < 14.0)  # runs hot, trips
        y[100:103] = np.nan  # a sensor that was not read
        series[f"tank.{name}.fluid_c"] = y
    meta: dict = {
        "site": "demo-hall",
        "scenario": "hot-day",
        "hours": hours,
        "tanks": {
            n: {"alarm_c": a, "trip_c": tr, "workload_class": c} for n, (c, a, tr) in tanks.items()
        },
        "cdus": {},
        "loops": {"loop1": {"alarm_c": 44.0}, "ailoop1": {"alarm_c": 42.0}},
        "feeders": {
            "feeder_m1": {"continuous_kw": 1750.0},
            "feeder_ai1": {"continuous_kw": 1090.0},
            "feeder_mech": {"continuous_kw": 170.0},
        },
    }
    if cdus:
        meta["cdus"] = {
            "cdu1": {"alarm_c": 48.0, "trip_c": 55.0},
            "cdu2": {"alarm_c": 48.0, "trip_c": 55.0},
        }
        series["cdu.cdu1.supply_c"] = 40.0 + 0.2 * (ambient - 18.0)
        series["cdu.cdu2.supply_c"] = 40.5 + 0.25 * (ambient - 18.0)
    series["loop.loop1.supply_c"] = 32.0 + 0.4 * np.maximum(ambient - 18.0, 0.0)
    series["loop.ailoop1.supply_c"] = 30.0 + 0.4 * np.maximum(ambient - 18.0, 0.0)
    series["feeder.feeder_m1.kw"] = mining * 0.55
    series["feeder.feeder_ai1.kw"] = training + inference
    series["feeder.feeder_mech.kw"] = cooling * 0.8
    if price:
        series["price_per_mwh"] = np.where((t % 24 >= 17) & (t % 24 < 21), 180.0, 55.0)
    events = [
        {
            "t_h": 12.9,
            "kind": "alarm",
            "source": "tank02",
            "message": "tank02 fluid 60.2 °C",
            "severity": 700,
        },
        {
            "t_h": 13.1,
            "kind": "shed",
            "source": "tank02",
            "message": "tank02 budget -40 %",
            "severity": 600,
        },
        {
            "t_h": 13.95,
            "kind": "trip",
            "source": "plant",
            "message": "interlock: tank02 trip",
            "severity": 900,
        },
        {
            "t_h": 14.0,
            "kind": "shed",
            "source": "grid",
            "message": "curtailment to 1500 kW",
            "severity": 600,
        },
        {
            "t_h": 14.5,
            "kind": "write-failed",
            "source": "cdu1.sp",
            "message": "timeout",
            "severity": 700,
        },
        {
            "t_h": 15.2,
            "kind": "clear",
            "source": "tank02",
            "message": "cleared: tank02",
            "severity": 300,
        },
        {
            "t_h": 16.0,
            "kind": "restore",
            "source": "grid",
            "message": "curtailment over",
            "severity": 300,
        },
        {
            "t_h": 18.0,
            "kind": "failsafe",
            "source": "zone.gpu",
            "message": "<script>alert(1)</script>",
            "severity": 800,
        },
        {
            "t_h": 19.0,
            "kind": "info",
            "source": "planner",
            "message": "price high & rising",
            "severity": 200,
        },
    ]
    summary = {
        "site": "demo-hall",
        "scenario": "hot-day",
        "hours": hours,
        "max_fluid_temp_c": 66.4,
        "max_cdu_supply_c": None if not cdus else 42.1,
        "limit_violation_c_min": 123.5,
        "trips": 1,
        "sheds": 2,
        "alarms": 1,
        "energy_mwh": 52.125,
        "pue": 1.0812,
        "import_over_limit_kw_min": 9000.0,
        "wall_seconds": 3.2,
        "speedup": 27000.0,
    }
    return series, meta, events, summary


FIRST_FORECAST = 375  # index of the first sample with a forecast (model learned at 6 h, +15 min)


def add_forecast(series: dict, meta: dict, *, cdus: bool = True) -> None:
    """Forecasts with known errors: loops 0.5 °C high, tanks 1 °C low, CDUs 0.25 °C either way.

    The loops' upper bound is below the actual for 60 samples from index 720; everything else
    stays within its upper bound. Trust drops to the fallback for samples 900-959.
    """
    n = len(series["t_h"])
    before = np.arange(n) < FIRST_FORECAST

    def forecast(
        kind: str, zone: str, actual: np.ndarray, off: np.ndarray | float, above: float
    ) -> None:
        mean = np.where(before, np.nan, actual + off)
        upper = np.where(before, np.nan, actual + above)
        series[f"forecast.{kind}.{zone}.mean15_c"] = mean
        series[f"forecast.{kind}.{zone}.upper15_c"] = upper
        series[f"headroom.{kind}.{zone}.kw"] = np.where(before, np.nan, 400.0 - 5.0 * actual)
        series[f"headroom.{kind}.{zone}.ttl_min"] = np.full(n, np.nan)

    for zone in meta["loops"]:
        forecast("loop", zone, series[f"loop.{zone}.supply_c"], 0.5, 1.0)
        series[f"forecast.loop.{zone}.upper15_c"][720:780] -= 1.1
    for zone in meta["tanks"]:
        forecast("tank", zone, series[f"tank.{zone}.fluid_c"], -1.0, 2.0)
    if cdus:
        for zone in meta["cdus"]:
            sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
            forecast("cdu", zone, series[f"cdu.{zone}.supply_c"], 0.25 * sign, 1.0)
    trusted = np.where(before, np.nan, 1.0)
    trusted[900:960] = 0.0
    series["forecast.trusted"] = trusted
    meta["forecast"] = {
        "source": "learned in-run from the first 6 h",
        "learned_at_h": 6.0,
        "horizon_min": 15,
    }


def forecast_texts(series: dict, meta: dict) -> list[str]:
    """The texts drawn on the forecast figure's panels (what the operator reads)."""
    from thermogate.controller import report

    ctx = report._Context(report._check_series(series), meta, [])
    fig = report._plot_forecast(ctx)
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _png_ok(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path.name
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 1500 and 300 <= height <= 2000, (path.name, width, height)  # 150 dpi
    assert 15_000 < len(data) < 3_000_000, (path.name, len(data))


def test_full_report(tmp_path):
    series, meta, events, summary = fake_day()
    out = tmp_path / "new" / "report"  # created, parents too
    paths = write_report(series, meta, events, summary, out)

    names = [p.name for p in paths]
    assert names == [*IMAGES, "summary.json", "events.csv", "report.html"]
    for p in paths:
        assert p.parent == out and p.is_file()
    for name in IMAGES:
        _png_ok(out / name)

    assert json.loads((out / "summary.json").read_text()) == summary

    with (out / "events.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(events)
    assert rows[7]["message"] == "<script>alert(1)</script>"  # the CSV keeps the raw text
    assert float(rows[0]["t_h"]) == 12.9 and rows[0]["kind"] == "alarm"

    page = (out / "report.html").read_text(encoding="utf-8")
    for name in IMAGES:
        assert f'src="{name}"' in page
    for key in summary:
        assert f">{key}<" in page
    assert "<script>" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert "price high &amp; rising" in page
    assert "demo-hall" in page and "hot-day" in page
    assert ">°C·min<" in page and ">MWh<" in page and ">count<" in page
    assert '<tr class="attention"><td class="key">trips<' in page


def test_equipment_less_site_and_no_events(tmp_path):
    series, meta, _, summary = fake_day(hours=6.0, cdus=False, price=False)
    for key in [k for k in series if k.startswith(("loop.", "feeder.", "tank."))]:
        del series[key]
    meta = {"site": "shed", "scenario": "quiet", "hours": 6.0}  # no equipment sections at all
    summary["max_cdu_supply_c"] = float("nan")  # not finite: written as null, shown as a dash
    paths = write_report(series, meta, [], summary, tmp_path)
    for name in IMAGES:
        _png_ok(tmp_path / name)
    assert json.loads((tmp_path / "summary.json").read_text())["max_cdu_supply_c"] is None
    assert (tmp_path / "events.csv").read_text().strip() == "t_h,kind,source,severity,message"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No events." in page
    assert len(paths) == len(IMAGES) + 3


def test_only_time_and_strange_values(tmp_path):
    """A run stopped at once: one sample, numpy scalars, unknown event kinds."""
    series = {"t_h": np.array([0.0]), "pue": np.array([np.inf]), "site_kw": [np.nan]}
    summary = {"trips": np.int64(0), "energy_mwh": np.float64(0.0), "note": "stopped"}
    events = [
        {"t_h": 0.0, "kind": "mystery", "source": "x", "message": "m", "extra": 1},
        {"t_h": 0.0, "kind": "trip", "source": "x", "message": "m", "severity": 900},
    ]
    write_report(series, {"hours": 24.0}, events, summary, tmp_path)
    for name in IMAGES:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "trips": 0,
        "energy_mwh": 0.0,
        "note": "stopped",
    }
    header = (tmp_path / "events.csv").read_text().splitlines()[0]
    assert header == "t_h,kind,source,severity,message,extra"


def test_long_run_is_drawn_from_an_envelope(tmp_path):
    """Three days at 10 s samples: fast, and a one-sample spike still shows in the data range."""
    series, meta, events, summary = fake_day(hours=72.0, step_min=10 / 60)
    add_forecast(series, meta)
    assert len(series["t_h"]) > 25_000
    write_report(series, meta, events, summary, tmp_path)
    for name in IMAGES:
        _png_ok(tmp_path / name)


def test_series_must_line_up(tmp_path):
    series, meta, events, summary = fake_day(hours=2.0)
    series["site_kw"] = series["site_kw"][:-1]
    with pytest.raises(ValueError, match="site_kw"):
        write_report(series, meta, events, summary, tmp_path)
    with pytest.raises(ValueError, match="t_h"):
        write_report({"site_kw": np.zeros(3)}, meta, events, summary, tmp_path)


def test_forecast_plot_and_caption_score_the_forecast_on_the_series(tmp_path):
    series, meta, events, summary = fake_day()
    add_forecast(series, meta)
    write_report(series, meta, events, summary, tmp_path)
    _png_ok(tmp_path / "forecast.png")

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'src="forecast.png"' in page and "Forecast and heat headroom" in page
    per_loop = len(series["t_h"]) - FIRST_FORECAST
    misses = 2 * 60  # two loops, 60 samples each above the upper bound
    coverage = 100.0 * (1 - misses / (2 * per_loop))
    assert (
        f"loops (2): mean abs. error 0.50 °C over {2 * per_loop:,} samples, "
        f"actual ≤ upper bound in {coverage:.1f} % of {2 * per_loop:,} samples"
    ) in page
    assert (
        f"tanks (5): mean abs. error 1.00 °C over {5 * per_loop:,} samples, "
        f"actual ≤ upper bound in 100.0 % of {5 * per_loop:,} samples"
    ) in page
    assert "CDUs (2): mean abs. error 0.25 °C" in page
    assert "model: learned in-run from the first 6 h" in page
    assert json.loads((tmp_path / "summary.json").read_text()) == summary  # not extended


def test_forecast_series_leave_the_other_plots_unchanged(tmp_path):
    series, meta, events, summary = fake_day(hours=8.0)
    write_report(series, meta, events, summary, tmp_path / "plain")
    add_forecast(series, meta)
    write_report(series, meta, events, summary, tmp_path / "forecast")
    for name in IMAGES:
        plain, forecast = (tmp_path / d / name for d in ("plain", "forecast"))
        assert (plain.read_bytes() == forecast.read_bytes()) == (name != "forecast.png"), name


def test_report_without_forecast_says_there_is_none(tmp_path):
    series, meta, events, summary = fake_day(hours=6.0)
    paths = write_report(series, meta, events, summary, tmp_path)
    assert tmp_path / "forecast.png" in paths
    for name in IMAGES:
        _png_ok(tmp_path / name)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'src="forecast.png"' in page
    assert "No forecast: this run had no forecasting." in page
    texts = forecast_texts(series, meta)
    assert "no forecast: this run had no forecasting" in texts
    assert "no heat headroom recorded" in texts


def test_nan_only_forecast_series_are_no_forecast(tmp_path):
    """A run that ended before the model was learned: the series exist but hold only NaN."""
    series, meta, events, summary = fake_day(hours=2.0)
    add_forecast(series, meta)
    for key in series:
        if key.startswith(("forecast.", "headroom.")):
            series[key] = np.full(len(series["t_h"]), np.nan)
    meta["forecast"] = {"source": "no model", "learned_at_h": None, "horizon_min": 15}
    write_report(series, meta, events, summary, tmp_path)
    _png_ok(tmp_path / "forecast.png")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert (
        "No forecast: no model was ready before the run ended (e.g. the run was shorter "
        "than the model&#x27;s learning period)."
    ) in page
    texts = forecast_texts(series, meta)
    assert any(t.startswith("no forecast: no model was ready") for t in texts)

    meta["forecast"]["learned_at_h"] = 1.9  # learned, but no forecast came due before the end
    assert any("model learned at 1.9 h" in t for t in forecast_texts(series, meta))


def test_forecast_without_upper_bound_is_scored_on_its_mean(tmp_path):
    series, meta, events, summary = fake_day(hours=8.0, cdus=False)
    add_forecast(series, meta, cdus=False)
    for key in [k for k in series if k.endswith(".upper15_c")]:
        series[key][:] = np.nan
    del series["forecast.trusted"]
    write_report(series, meta, events, summary, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    per_loop = len(series["t_h"]) - FIRST_FORECAST
    assert f"loops (2): mean abs. error 0.50 °C over {2 * per_loop:,} samples;" in page
    assert "upper bound in" not in page


def test_units_from_key_names():
    assert unit_for("max_fluid_temp_c") == "°C"
    assert unit_for("limit_violation_c_min") == "°C·min"
    assert unit_for("energy_mwh") == "MWh"
    assert unit_for("import_over_limit_kw_min") == "kW·min"
    assert unit_for("price_per_mwh") == "per MWh"
    assert unit_for("trips") == "count"
    assert unit_for("pue") == "ratio"
    assert unit_for("wall_seconds") == "s"
    assert unit_for("hours") == "h"
    assert unit_for("site") == ""
    assert unit_for("cost", {"cost": "EUR"}) == "EUR"


# -- progress bar -----------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_silent_when_stderr_is_not_a_tty(capsys):
    bar = ProgressBar()  # auto: pytest's captured stderr is not a terminal
    assert not bar.enabled
    for k in range(1, 101):
        bar.update(k, 100)
    bar.close()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_forced_on_writes_percent(capsys):
    clock = FakeClock()
    bar = ProgressBar(enabled=True, clock=clock)
    bar.update(0.0, 24.0)
    clock.now += 10.0
    bar.update(12.0, 24.0)  # 12 simulated hours in 10 wall seconds: 4,320x real time
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("\r") and err.endswith("\n")
    assert "50%" in err and "12.0/24.0 h" in err
    assert "4,320x real time" in err
    assert "ETA 0:10" in err  # the other 12 h at the same speed
    assert "#" in err


def test_progress_bar_auto_detects_a_terminal_and_counts_scans():
    stream, clock = FakeTty(), FakeClock()
    with ProgressBar(stream=stream, sim_hours=2.0, clock=clock) as bar:
        assert bar.enabled
        bar.update(1, 7200)
        clock.now += 1.0
        bar.update(3600, 7200)  # scans of 1 s: half of the 2 simulated hours
        clock.now += 0.01
        bar.update(3601, 7200)  # throttled: not redrawn
        clock.now += 1.0
        bar.update(7200, 7200)
    text = stream.getvalue()
    assert text.count("\r") == 4  # first, half, done, and the final redraw on close
    assert "50%" in text and "1.0/2.0 h" in text and "100%" in text and "done" in text
    assert text.endswith("\n")
    bar.close()  # idempotent
    assert stream.getvalue() == text


def test_progress_bar_line_fits_a_narrow_terminal():
    clock = FakeClock()
    bar = ProgressBar(enabled=True, stream=io.StringIO(), clock=clock)
    bar.update(1.0, 4.0)
    line = bar.line(clock.now, columns=40)
    assert len(line) <= 39 and "25%" in line
    assert math.isfinite(len(bar.line(clock.now, columns=200)))


def test_nested_summary_entries_are_dotted_rows_of_the_table(tmp_path):
    series, meta, events, summary = fake_day(hours=2.0)
    summary = {**summary, "forecast": {"source": "learned", "tank": {"mae_15_c": 0.0425}}}
    write_report(series, meta, events, summary, tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "forecast.tank.mae_15_c" in page and "0.0425" in page
    assert "{&#x27;" not in page and "{'" not in page  # no raw dict in a cell
