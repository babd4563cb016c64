"""The operator report (plots, summary, event log, HTML) and the progress bar."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import select
import struct
import termios
from html.parser import HTMLParser

import numpy as np
import pytest

from thermogate.controller.report import IMAGES, ProgressBar, unit_for, write_report
from thermogate.controller.report.draw import MAX_LINE_POINTS
from thermogate.controller.report.forecast import plot_forecast
from thermogate.controller.report.plots import plot_temperatures
from thermogate.controller.report.series import Context, check_series

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


def figure_texts(plot, series: dict, meta: dict) -> list[str]:
    """The texts drawn on a figure's panels (what the operator reads)."""
    fig = plot(Context(check_series(series), meta, []))
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def forecast_texts(series: dict, meta: dict) -> list[str]:
    return figure_texts(plot_forecast, series, meta)


class Page(HTMLParser):
    """What report.html shows, read back with the standard library's HTML parser.

    ``tables``: rows of (the row's class, [(cell class, cell text)]) per table;
    ``figures``: (img src, caption); ``tags``: every start tag seen; ``text``:
    the visible text with entities decoded.
    """

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[tuple[str, list[tuple[str, str]]]]] = []
        self.figures: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.title = ""
        self._parts: list[str] = []
        self._cell: list[str] | None = None
        self._in: list[str] = []
        self.feed(source)
        self.close()
        self.text = " ".join("".join(self._parts).split())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self._in.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append((a.get("class") or "", []))
        elif tag == "td":
            self._cell = []
            self.tables[-1][-1][1].append((a.get("class") or "", ""))
        elif tag == "img":
            self.figures.append((a["src"], ""))

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag == "td" and self._cell is not None:
            cls, _ = self.tables[-1][-1][1][-1]
            self.tables[-1][-1][1][-1] = (cls, "".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if "style" in self._in:
            return
        if "title" in self._in:
            self.title += data
        self._parts.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if "figcaption" in self._in:
            src, text = self.figures[-1]
            self.figures[-1] = (src, text + data)

    def summary(self) -> dict[str, tuple[str, str, str]]:
        """Summary key -> (value, unit, row class)."""
        return {cells[0][1]: (cells[1][1], cells[2][1], cls) for cls, cells in self.tables[0][1:]}

    def events(self) -> list[dict[str, str]]:
        """The event log's rows, by column name, plus the row's class."""
        if len(self.tables) < 2:
            return []
        names = ("t_h", "elapsed", "kind", "source", "severity", "message")
        return [
            {"class": cls, **dict(zip(names, (text for _, text in cells), strict=True))}
            for cls, cells in self.tables[1][1:]
        ]

    def caption(self, image: str) -> str:
        return next(" ".join(text.split()) for src, text in self.figures if src == image)


def read_page(out) -> Page:
    return Page((out / "report.html").read_text(encoding="utf-8"))


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
    assert rows[0]["elapsed"] == "12:54:00"

    page = read_page(out)
    assert [src for src, _ in page.figures] == list(IMAGES)
    assert page.title == "thermogate report — demo-hall — hot-day"
    assert "thermogate simulation report: demo-hall" in page.text
    assert "scenario hot-day · 24 h simulated · 1,441 samples · 9 events" in page.text
    rows = page.summary()
    assert list(rows) == list(summary)  # every entry, in the summary's order
    assert rows["limit_violation_c_min"] == ("123.5", "°C·min", "attention")
    assert rows["energy_mwh"] == ("52.125", "MWh", "")
    assert rows["trips"] == ("1", "count", "attention")  # a trip needs attention
    assert rows["import_over_limit_kw_min"] == ("9,000", "kW·min", "attention")
    assert rows["sheds"][2] == "" and rows["site"] == ("demo-hall", "", "")
    assert "shed: 2 · alarm: 1 · trip: 1 · write-failed: 1" in page.text  # most frequent first
    logged = page.events()
    assert [e["message"] for e in logged] == [e["message"] for e in events]
    assert logged[0] == {
        "class": "k-alarm",
        "t_h": "12.900",
        "elapsed": "12:54",
        "kind": "alarm",
        "source": "tank02",
        "severity": "700",
        "message": "tank02 fluid 60.2 °C",
    }
    assert logged[4]["class"] == "k-write-failed"
    assert logged[8]["message"] == "price high & rising"


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
    assert (tmp_path / "events.csv").read_text().strip() == (
        "t_h,elapsed,kind,source,severity,message"
    )
    page = read_page(tmp_path)
    assert "No events." in page.text and page.events() == []
    assert page.summary()["max_cdu_supply_c"] == ("—", "°C", "")
    assert "no immersion tanks" in figure_texts(plot_temperatures, series, meta)
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
    assert header == "t_h,elapsed,kind,source,severity,message,extra"
    page = read_page(tmp_path)
    assert page.summary()["trips"] == ("0", "count", "")  # zero trips need no attention
    assert [(e["kind"], e["class"], e["severity"]) for e in page.events()] == [
        ("mystery", "k-mystery", "—"),
        ("trip", "k-trip", "900"),
    ]


def test_long_run_is_drawn_from_an_envelope_that_keeps_a_one_sample_spike(tmp_path):
    """Three days at 10 s samples: drawn from few points, and a lone spike still shows."""
    series, meta, events, summary = fake_day(hours=72.0, step_min=10 / 60)
    add_forecast(series, meta)
    n = len(series["t_h"])
    assert n > 25_000
    series["tank.gpu01.fluid_c"][n // 3] = 71.5  # one sample, far above everything else
    write_report(series, meta, events, summary, tmp_path)
    for name in IMAGES:
        _png_ok(tmp_path / name)

    fig = plot_temperatures(Context(check_series(series), meta, []))
    tanks = fig.axes[0]
    (gpu01,) = [ln for ln in tanks.get_lines() if ln.get_label().startswith("inference")]
    assert len(gpu01.get_ydata()) <= MAX_LINE_POINTS
    assert np.nanmax(gpu01.get_ydata()) == 71.5
    assert tanks.get_ylim()[1] > 71.5
    assert any(ln.get_label() == "peak gpu01 71.5 °C at 24.0 h" for ln in tanks.get_lines())


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

    page = read_page(tmp_path)
    assert "Forecast and heat headroom" in page.text
    caption = page.caption("forecast.png")
    per_loop = len(series["t_h"]) - FIRST_FORECAST
    misses = 2 * 60  # two loops, 60 samples each above the upper bound
    coverage = 100.0 * (1 - misses / (2 * per_loop))
    assert (
        f"loops (2): mean abs. error 0.50 °C over {2 * per_loop:,} samples, "
        f"actual ≤ upper bound in {coverage:.1f} % of {2 * per_loop:,} samples"
    ) in caption
    assert (
        f"tanks (5): mean abs. error 1.00 °C over {5 * per_loop:,} samples, "
        f"actual ≤ upper bound in 100.0 % of {5 * per_loop:,} samples"
    ) in caption
    assert "CDUs (2): mean abs. error 0.25 °C" in caption
    assert caption.endswith("; model: learned in-run from the first 6 h.")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary  # not extended


def test_forecast_plot_shows_the_physics_prior_period_and_the_hand_over(tmp_path):
    series, meta, events, summary = fake_day()
    add_forecast(series, meta)
    n = len(series["t_h"])
    prior = (np.arange(n) >= 100) & (np.arange(n) < FIRST_FORECAST)  # before the model
    for key in [k for k in series if k.startswith("forecast.") and k.endswith("15_c")]:
        series[key] = np.where(prior, series[key][FIRST_FORECAST], series[key])
    series["forecast.prior"] = prior.astype(float)
    series["forecast.trusted"] = np.where(prior, 0.0, series["forecast.trusted"])
    meta["forecast"] |= {"handover_h": 6.25, "first_forecast_h": 1.6, "fallback": "physics prior"}
    fig = plot_forecast(Context(check_series(series), meta, []))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "physics prior (no learned model yet)" in legend
    assert "learned model takes over (6.25 h)" in legend
    assert "model not trusted: physics prior" in legend  # the fallback apart from the prior
    write_report(series, meta, events, summary, tmp_path)
    caption = read_page(tmp_path).caption("forecast.png")
    assert "of which the physics prior's (before a learned model): loops" in caption
    assert "fallback (physics prior)" in caption


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
    assert read_page(tmp_path).caption("forecast.png") == (
        "No forecast: this run had no forecasting."
    )
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
    assert read_page(tmp_path).caption("forecast.png") == (
        "No forecast: no model was ready before the run ended (e.g. the run was shorter "
        "than the model's learning period). Model: no model."
    )
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
    caption = read_page(tmp_path).caption("forecast.png")
    per_loop = len(series["t_h"]) - FIRST_FORECAST
    assert f"loops (2): mean abs. error 0.50 °C over {2 * per_loop:,} samples;" in caption
    assert "upper bound in" not in caption


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


class Terminal:
    """A real pseudo-terminal of a given width: the bar's stream, and what it showed."""

    def __init__(self, columns: int) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.stream = open(slave, "w", encoding="utf-8")  # noqa: SIM115  (closed in close())

    def shown(self) -> str:
        """Everything written so far, as the terminal received it."""
        self.stream.flush()
        chunks = []
        while select.select([self.master], [], [], 0.2)[0]:
            chunks.append(os.read(self.master, 65536))
        return b"".join(chunks).decode("utf-8").replace("\r\n", "\n")  # the tty's ONLCR

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def terminal():
    made: list[Terminal] = []

    def make(columns: int = 80) -> Terminal:
        made.append(Terminal(columns))
        return made[-1]

    yield make
    for t in made:
        t.close()


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
    assert "simulate: " in err and " 50%" in err and "12.0/24.0 h sim" in err
    assert "4,320x real time" in err
    assert "ETA 00:10" in err  # the other 12 h at the same speed


def test_progress_bar_auto_detects_a_terminal_and_counts_scans(terminal):
    tty, clock = terminal(), FakeClock()
    with ProgressBar(stream=tty.stream, sim_hours=2.0, clock=clock) as bar:
        assert bar.enabled
        bar.update(1, 7200)
        clock.now += 1.0
        bar.update(3600, 7200)  # scans of 1 s: half of the 2 simulated hours
        clock.now += 0.01
        bar.update(3601, 7200)  # throttled: not redrawn
        clock.now += 1.0
        bar.update(7200, 7200)
    text = tty.shown()
    drawn = text.split("\r")[1:]
    assert len(drawn) == 4  # first, half, done (not the throttled one), and on close
    # the speed counts from the first update (after one scan): 3,599 s simulated in 1 s
    assert " 50%" in drawn[1] and "1.0/2.0 h sim" in drawn[1] and "3,599x real time" in drawn[1]
    assert "100%" in drawn[2] and "2.0/2.0 h sim" in drawn[2] and drawn[2].rstrip().endswith("done")
    assert text.endswith("\n")
    bar.close()  # idempotent
    assert tty.shown() == ""


@pytest.mark.parametrize("columns", [40, 200])
def test_progress_bar_line_fits_the_terminal(terminal, columns):
    tty, clock = terminal(columns), FakeClock()
    with ProgressBar(stream=tty.stream, clock=clock) as bar:
        bar.update(0.0, 4.0)
        clock.now += 2.0
        bar.update(1.0, 4.0)
    lines = [ln.rstrip() for ln in tty.shown().strip().split("\r") if ln.strip()]
    assert lines and all(len(ln) < columns for ln in lines)
    assert "25%" in lines[-1]
    if columns >= 100:  # room for everything: nothing cut off
        assert lines[-1].endswith("1.0/4.0 h sim, 1,800x real time, ETA 00:06")


def test_progress_bar_on_a_terminal_that_reports_no_size_draws_for_80_columns(terminal):
    tty, clock = terminal(0), FakeClock()  # as under `script` writing to a file
    with ProgressBar(stream=tty.stream, clock=clock) as bar:
        bar.update(0.0, 4.0)
        clock.now += 2.0
        bar.update(1.0, 4.0)
    lines = [ln.rstrip() for ln in tty.shown().strip().split("\r") if ln.strip()]
    assert lines and all(len(ln) < 80 for ln in lines)
    assert lines[-1].endswith("1.0/4.0 h sim, 1,800x real time, ETA 00:06")


def test_progress_bar_on_a_closed_stream_does_not_stop_the_run(terminal):
    tty = terminal()
    bar = ProgressBar(stream=tty.stream)
    assert bar.enabled
    tty.stream.close()  # e.g. the terminal went away mid-run
    for k in range(1, 5):
        bar.update(k, 4.0)
    bar.close()


def test_nested_summary_entries_are_dotted_rows_of_the_table(tmp_path):
    series, meta, events, summary = fake_day(hours=2.0)
    summary = {**summary, "forecast": {"source": "learned", "tank": {"mae_15_c": 0.0425}}}
    write_report(series, meta, events, summary, tmp_path)
    rows = read_page(tmp_path).summary()
    assert rows["forecast.source"] == ("learned", "", "")
    assert rows["forecast.tank.mae_15_c"] == ("0.0425", "°C", "")
    assert not any(value.startswith("{") for value, _, _ in rows.values())  # no raw dict


def test_event_text_is_escaped_in_the_page_and_raw_in_the_csv(tmp_path):
    """Names and messages come from site files and devices: the page shows them as text."""
    series, meta, _, summary = fake_day(hours=2.0)
    meta["site"] = "hall <b>7</b>"
    events = [
        {
            "t_h": 0.5,
            "kind": "alarm",
            "source": "<img src=x onerror=alert(1)>",
            "message": "<script>alert('x')</script> & \"more\"",
            "severity": 700,
        },
        {"t_h": 0.6, "kind": "<i>odd</i>", "source": "s", "message": "m"},
    ]
    write_report(series, meta, events, {**summary, "<key>": "<value>"}, tmp_path)
    source = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in source and "<b>" not in source and "<i>" not in source
    assert "&lt;script&gt;" in source

    page = read_page(tmp_path)
    assert set(page.tags) <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong", "a",
        "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption",
    }  # fmt: skip
    assert page.title == "thermogate report — hall <b>7</b> — hot-day"
    logged = page.events()
    assert logged[0]["source"] == "<img src=x onerror=alert(1)>"
    assert logged[0]["message"] == "<script>alert('x')</script> & \"more\""
    assert logged[1]["kind"] == "<i>odd</i>" and logged[1]["class"] == "k-_i_odd__i_"
    assert page.summary()["<key>"] == ("<value>", "", "")

    with (tmp_path / "events.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["message"] == events[0]["message"]


def test_event_times_read_as_elapsed_time_to_the_second():
    from thermogate.controller.report.files import elapsed

    assert [elapsed(x) for x in (0.0, 1 / 6, 2.0 + 5.5 / 60, 27.0, float("nan"))] == [
        "0:00:00",
        "0:10:00",
        "2:05:30",
        "1d 03:00:00",
        "",
    ]
