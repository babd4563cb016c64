"""Scenario inputs: CSV time series, synthetic generators, TOML scenarios."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import thermogate.hil.scenario.series as series_module
from thermogate.hil.scenario import (
    FAULT_KINDS,
    FaultSpec,
    FaultTarget,
    GridEvent,
    SyntheticPrices,
    SyntheticWeather,
    TimeSeries,
    list_builtin_scenarios,
    load_prices_csv,
    load_scenario,
    load_weather_csv,
    parse_scenario,
)
from thermogate.plc.errors import ConfigError, DataFileError


def write(tmp_path: Path, text: str, name: str = "data.csv", raw: bytes | None = None) -> Path:
    p = tmp_path / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text(text, encoding="utf-8", newline="")
    return p


def bad_csv(tmp_path: Path, text: str, loader=load_weather_csv) -> DataFileError:
    with pytest.raises(DataFileError) as info:
        loader(write(tmp_path, text))
    return info.value


def bad_toml(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, "s.toml")
    return info.value


# -- time column --------------------------------------------------------------


def test_iso_times_parse_to_seconds_from_first_sample_with_start(tmp_path):
    w = load_weather_csv(
        write(tmp_path, "time,ambient_c\n2024-07-15T00:00:00,10\n2024-07-15 01:30,13\n")
    )
    assert w.ambient_c.t_s.tolist() == [0.0, 5400.0]
    assert w.start == datetime(2024, 7, 15)
    assert w.duration == 5400.0


def test_seconds_times_parse_int_and_float_without_start(tmp_path):
    w = load_weather_csv(write(tmp_path, "time,ambient_c\n100,10\n160.5,11\n400,12\n"))
    assert w.ambient_c.t_s.tolist() == [0.0, 60.5, 300.0]
    assert w.start is None


def test_unix_seconds_are_dated_and_hour_numbers_are_refused(tmp_path):
    """Epoch seconds were laid at the run's start (the next day's weather used
    as today's); an hour-ending column 1..24 was taken as a 24-second cycle."""
    w = load_weather_csv(
        write(tmp_path, "time,ambient_c\n1721088000,20\n1721091600,22\n1721095200,25\n")
    )
    assert w.start == datetime(2024, 7, 16, tzinfo=UTC)
    assert w.ambient_c.t_s.tolist() == [0.0, 3600.0, 7200.0]
    hours = "".join(f"{h},{40 + h}\n" for h in range(1, 25))
    err = bad_csv(tmp_path, "time,price_per_mwh\n" + hours, load_prices_csv)
    assert err.column == "time" and "hour numbers" in str(err)


def test_date_only_times_parse_as_midnight(tmp_path):
    p = load_prices_csv(write(tmp_path, "time,price_per_mwh\n2024-01-01,50\n2024-01-02,60\n"))
    assert p.duration == 86400.0
    assert p.start == datetime(2024, 1, 1)


def test_time_zones_are_normalised_to_utc(tmp_path):
    text = (
        "time,ambient_c\n"
        "2024-03-31T00:00:00+01:00,5\n"  # 23:00Z the day before
        "2024-03-30T23:30:00Z,6\n"
        "2024-03-31T02:00:00+02:00,7\n"  # 00:00Z
    )
    w = load_weather_csv(write(tmp_path, text))
    assert w.start == datetime(2024, 3, 30, 23, 0, tzinfo=UTC)
    assert w.ambient_c.t_s.tolist() == [0.0, 1800.0, 3600.0]


def test_hour_24_means_midnight_of_next_day(tmp_path):
    w = load_weather_csv(
        write(tmp_path, "time,ambient_c\n2024-01-01 23:00,1\n2024-01-01 24:00,2\n")
    )
    assert w.ambient_c.t_s.tolist() == [0.0, 3600.0]


# -- interpolation, clamping, wrap --------------------------------------------


def test_interpolates_linearly_between_samples_and_clamps_at_ends():
    s = TimeSeries(np.array([0.0, 100.0, 300.0]), np.array([10.0, 20.0, 0.0]))
    assert s.at(50) == pytest.approx(15.0)
    assert s.at(200) == pytest.approx(10.0)
    assert s.at(-5) == 10.0
    assert s.at(1e6) == 0.0
    x = np.array([-5.0, 0.0, 50.0, 200.0, 300.0, 1e6])
    np.testing.assert_allclose(s.at_many(x), [s.at(v) for v in x])


def test_step_interpolation_holds_each_value_until_the_next_sample():
    s = TimeSeries(
        np.array([0.0, 3600.0, 7200.0]), np.array([50.0, 80.0, -5.0]), interpolation="step"
    )
    assert s.at(3599) == 50.0
    assert s.at(3600) == 80.0
    assert s.at(9000) == -5.0
    np.testing.assert_array_equal(s.at_many([0, 3599, 3600, 9000, -1]), [50, 50, 80, -5, 50])


def test_wrap_repeats_with_period_of_span_plus_last_interval():
    # Hourly 00:00..23:00 -> repeats every 24 h; 23:00..24:00 ramps back to the first value.
    t = np.arange(24) * 3600.0
    v = np.arange(24, dtype=float)
    s = TimeSeries(t, v, wrap=True)
    assert s.period_s == 86400.0
    assert s.at(86400 * 9 + 5 * 3600) == pytest.approx(5.0)  # a 1-day file drives day 10
    assert s.at(23.5 * 3600) == pytest.approx(11.5)  # halfway from 23 back to 0
    assert s.at(-3600) == pytest.approx(23.0)
    x = np.linspace(-1e5, 1e6, 997)
    np.testing.assert_allclose(s.at_many(x), [s.at(float(v)) for v in x], atol=1e-9)


def test_wrap_with_explicit_period_for_files_that_close_the_cycle():
    s = TimeSeries(
        np.array([0.0, 43200.0, 86400.0]), np.array([10.0, 20.0, 10.0]), wrap=True, period_s=86400.0
    )
    assert s.at(86400.0 + 21600.0) == pytest.approx(15.0)
    assert s.with_wrap(False).at(2e5) == 10.0


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(0.5, 5000.0), min_size=1, max_size=40),
    values=st.lists(st.floats(-50.0, 50.0), min_size=41, max_size=41),
    wrap=st.booleans(),
    step=st.booleans(),
    xs=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
)
def test_a_long_series_looked_up_in_its_arrays_gives_the_lists_values_to_the_bit(
    steps, values, wrap, step, xs
):
    """A year of minutes is looked up in its arrays (a list costs 40 bytes a sample):
    the same value as the list lookup of a short series, bit for bit."""
    t = np.concatenate([[0.0], np.cumsum(steps)])
    v = np.array(values[: t.size])
    kind = "step" if step else "linear"
    short = TimeSeries(t, v, wrap=wrap, interpolation=kind)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(series_module, "LIST_MAX_SAMPLES", 1)
        long = TimeSeries(t, v, wrap=wrap, interpolation=kind)
    assert isinstance(short._xl, list) and not isinstance(long._xl, list)
    for x in [*xs, *t.tolist()]:
        assert long.at(x) == short.at(x)
        assert type(long.at(x)) is float


def test_time_series_rejects_bad_construction():
    with pytest.raises(ValueError):
        TimeSeries(np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError):
        TimeSeries(np.array([0.0, 0.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        TimeSeries(np.array([5.0, 6.0]), np.array([1.0, 2.0]))


# -- tolerated real-world formatting -------------------------------------------


def test_bom_crlf_comments_blank_lines_trailing_commas_are_tolerated(tmp_path):
    text = (
        "# station: Example AWS, exported 2024-07-16\r\n"
        "\r\n"
        " Time , RH_pct,Ambient_C ,station_id,,\r\n"
        "# sensor cleaned at 01:00\r\n"
        "2024-07-15T00:00:00Z,80,15.5,42,,\r\n"
        "\r\n"
        ",,,\r\n"
        "2024-07-15T01:00:00Z,,16.5,42\r\n"
        "2024-07-15T02:00:00Z,70,17.5,42,,\r\n"
    )
    w = load_weather_csv(write(tmp_path, "", raw=b"\xef\xbb\xbf" + text.encode()))
    assert w.ambient_c.values.tolist() == [15.5, 16.5, 17.5]
    assert w.rh_pct is not None
    assert w.rh_pct.values.tolist() == [80.0, 75.0, 70.0]  # empty cell interpolated
    assert w.ghi_wm2 is None
    assert w.at(1800).ambient_c == pytest.approx(16.0)
    assert w.at(0).ghi_wm2 is None


def test_semicolon_export_with_decimal_commas(tmp_path):
    p = load_prices_csv(write(tmp_path, "time;price_per_mwh\n0;-12,5\n3600;80,25\n"))
    assert p.values.tolist() == [-12.5, 80.25]


def test_pyranometer_night_offset_is_clamped_to_zero(tmp_path):
    w = load_weather_csv(write(tmp_path, "time,ambient_c,ghi_wm2\n0,10,-3.2\n60,10,0\n"))
    assert w.ghi_wm2 is not None
    assert w.ghi_wm2.values.tolist() == [0.0, 0.0]


def test_negative_prices_are_accepted(tmp_path):
    p = load_prices_csv(write(tmp_path, "time,price_per_mwh\n0,-250\n3600,40\n"))
    assert p.at(10) == -250.0  # step: the hour's price holds


# -- bad CSV: the error names line and column --------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("time,ambient_c\n0,10\n60,warm\n", 3, "ambient_c"),  # non-numeric
        ("time,ambient_c\n0,10\n# note\n60,75\n", 4, "ambient_c"),  # °F, not °C
        ("time,ambient_c\n0,-61\n60,1\n", 2, "ambient_c"),
        ("time,ambient_c,ghi_wm2\n0,10,100\n60,10,1600\n", 3, "ghi_wm2"),
        ("time,ambient_c,ghi_wm2\n0,10,-50\n60,10,1\n", 2, "ghi_wm2"),
        ("time,ambient_c,rh_pct\n0,10,50\n60,10,101\n", 3, "rh_pct"),
        ("time,ambient_c,rh_pct\n0,10,dry\n60,10,50\n", 2, "rh_pct"),
        ("time,ambient_c\n0,10\n60,11\n60,12\n", 4, "time"),  # duplicate
        ("time,ambient_c\n0,10\n60,11\n30,12\n", 4, "time"),  # backwards
        ("time,ambient_c\n0,10\n\n,11\n", 4, "time"),  # empty time
        ("time,ambient_c\n2024-01-01T00:00,10\n15/01/2024 10:00,11\n", 3, "time"),
        ("time,ambient_c\n2024-01-01T00:00,10\n3600,11\n", 3, "time"),  # mixed conventions
        ("time,ambient_c\n2024-01-01T00:00Z,10\n2024-01-01T01:00,11\n", 3, "time"),  # tz mixed
        ("time,ambient_c\n0,10\ninf,11\n", 3, "time"),
        ("time,ambient_c\n0,25\n1e308,26\n", 3, "time"),  # finite, but no time
        ("time,ambient_c\n1721001600000,25\n1721005200000,26\n", 2, "time"),  # ms
        ("time,ambient_c\n45488.041667,25\n45488.083333,26\n45488.125,27\n", 3, "time"),
        ("time,ambient_c\n0001-01-01T00:00:00+05:00,25\n0001-01-01T01:00+05:00,26\n", 2, "time"),
        ("time,ambient_c\n9999-12-31T23:00,25\n9999-12-31T24:00,26\n", 2, "time"),
        ("ambient_c,ghi_wm2\n10,0\n11,0\n", 1, "time"),  # missing column: header line
        ("time,temp\n0,10\n60,11\n", 1, "ambient_c"),
    ],
)
def test_bad_weather_csv_names_line_and_column(tmp_path, text, line, column):
    err = bad_csv(tmp_path, text)
    assert (err.line, err.column) == (line, column), str(err)
    assert str(tmp_path / "data.csv") in str(err)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("time,price_per_mwh\n0,50\n3600,100001\n", 3, "price_per_mwh"),
        ("time,price_per_mwh\n0,50\n3600,-1e6\n", 3, "price_per_mwh"),
        ("time,price_per_mwh\n0,50\n3600,inf\n", 3, "price_per_mwh"),
        ('time,price_per_mwh\n0,50\n3600,"1,234"\n', 3, "price_per_mwh"),
    ],
)
def test_bad_price_csv_names_line_and_column(tmp_path, text, line, column):
    err = bad_csv(tmp_path, text, load_prices_csv)
    assert (err.line, err.column) == (line, column), str(err)


def test_a_semicolon_file_takes_a_decimal_comma_in_its_seconds_too(tmp_path):
    w = load_weather_csv(write(tmp_path, "time;ambient_c\n0;10,5\n1800,5;11\n3600;12\n"))
    assert list(w.ambient_c.t_s) == [0.0, 1800.5, 3600.0]


def test_a_missing_reading_is_a_missing_sample_filled_as_a_missing_row_would_be(tmp_path):
    """A blank ambient cell was refused while eight hours of missing rows were
    interpolated: station exports leave cells empty (or NA, NaN) routinely."""
    w = load_weather_csv(write(tmp_path, "time,ambient_c\n0,10\n3600,\n7200,NaN\n10800,16\n"))
    assert w.ambient_c.values.tolist() == [10.0, 12.0, 14.0, 16.0]
    # a market price holds for its interval: a missing one is the one before
    p = load_prices_csv(write(tmp_path, "time,price_per_mwh\n0,\n3600,40\n7200,NA\n10800,90\n"))
    assert p.values.tolist() == [40.0, 40.0, 40.0, 90.0]


def test_a_required_column_with_no_reading_at_all_is_refused(tmp_path):
    err = bad_csv(tmp_path, "time,ambient_c\n0,\n3600,NA\n")
    assert err.column == "ambient_c" and "no ambient_c reading" in err.reason


def test_a_long_stretch_without_a_reading_is_filled_and_said_once(tmp_path, caplog):
    rows = [f"{3600 * k},{20 + k % 3}" for k in range(48)]
    rows[10:19] = [f"{3600 * k}," for k in range(10, 19)]  # 9 empty cells: 10 h unread
    del rows[30:38]  # and 8 missing rows (9 h between readings): shorter, not said
    with caplog.at_level("WARNING"):
        w = load_weather_csv(write(tmp_path, "time,ambient_c\n" + "\n".join(rows) + "\n"))
    assert np.isfinite(w.ambient_c.values).all()
    [msg] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "ambient_c has no reading for 10.0 h, from 32400 (line 11) to 68400 (line 21)" in msg
    assert "9 of them empty" in msg


def test_humidity_given_as_a_fraction_is_refused(tmp_path):
    rows = "".join(f"{3600 * k},20,{0.3 + 0.01 * k:.2f}\n" for k in range(24))
    err = bad_csv(tmp_path, "time,ambient_c,rh_pct\n" + rows)
    assert err.column == "rh_pct" and "fraction" in err.reason


@pytest.mark.parametrize("column", ["ambient_c", "note"])
def test_a_stray_quote_is_an_error_on_its_own_line_not_a_swallowed_row(tmp_path, column):
    # In an ignored column too: the quote would otherwise join the next row to it.
    rows = [f"{3600 * k},{20 + k},ok" for k in range(6)]
    rows[2] = rows[2].replace(",ok", ',"ok') if column == "note" else rows[2].replace(",2", ',"2')
    err = bad_csv(tmp_path, "time,ambient_c,note\n" + "\n".join(rows) + "\n")
    assert err.line == 4, str(err)
    assert "quote" in err.reason and "runs on to line 7" in err.reason  # the last line


def test_a_stray_quote_in_a_large_file_names_its_line(tmp_path):
    # Left open, the quote runs to the csv module's field limit: still one line.
    rows = [f"{300 * k},{40 + k % 7}" for k in range(20_000)]
    rows[10] = rows[10].replace(",", ',"', 1)
    err = bad_csv(tmp_path, "time,price_per_mwh\n" + "\n".join(rows) + "\n", load_prices_csv)
    assert err.line == 12, str(err)
    assert "quote" in err.reason


def test_missing_column_error_lists_the_header_found(tmp_path):
    err = bad_csv(tmp_path, "# c\nTime,Temp_C\n0,1\n1,2\n")
    assert err.line == 2
    assert err.column == "ambient_c"
    assert "'Time', 'Temp_C'" in err.reason


def test_an_exports_metadata_lines_above_the_header_are_named_with_the_line_to_keep(tmp_path):
    # Open-Meteo's CSV: two lines of station metadata and a blank one above the header
    err = bad_csv(
        tmp_path,
        "latitude,longitude,elevation,utc_offset_seconds,timezone\n52.52,13.41,38.0,0,GMT\n\n"
        '"time","ambient_c"\n2024-07-01T00:00,21.2\n2024-07-01T01:00,20.5\n',
    )
    assert err.line == 1
    assert "line 4 has the columns: delete the lines above it or begin them with '#'" in (
        err.reason
    )
    assert "line 4" not in bad_csv(tmp_path, "Time,Temp_C\n0,1\n1,2\n").reason


def test_fewer_than_two_samples_is_an_error(tmp_path):
    err = bad_csv(tmp_path, "time,ambient_c\n0,10\n")
    assert "at least 2 samples" in err.reason
    assert "found 0" in bad_csv(tmp_path, "time,ambient_c\n# no data\n").reason


def test_empty_file_and_missing_file_are_data_file_errors(tmp_path):
    assert "no header" in bad_csv(tmp_path, "# only a comment\n\n").reason
    with pytest.raises(DataFileError, match="file not found"):
        load_weather_csv(tmp_path / "nope.csv")


def test_extra_fields_beyond_the_header_are_an_error(tmp_path):
    err = bad_csv(tmp_path, "time,ambient_c\n0,12\n60,12,5\n")  # decimal comma
    assert err.line == 3
    assert "decimal comma" in err.reason


def test_repeated_local_hour_hints_at_daylight_saving(tmp_path):
    err = bad_csv(
        tmp_path, "time,ambient_c\n2024-10-27 02:00,5\n2024-10-27 03:00,5\n2024-10-27 03:00,5\n"
    )
    assert err.line == 4
    assert "daylight-saving" in err.reason


def test_hourly_tmy_file_of_8760_rows_loads_quickly(tmp_path):
    t0 = datetime(2023, 1, 1)
    rows = ["# TMY-style hourly file, one year", "time,ambient_c,ghi_wm2,rh_pct,wind_ms"]
    for h in range(8760):
        amb = (
            10
            + 12 * math.sin(2 * math.pi * (h / 8760 - 0.3))
            + 5 * math.sin(2 * math.pi * (h % 24 - 9) / 24)
        )
        ghi = max(0.0, 700 * math.sin(math.pi * (h % 24 - 6) / 14)) if 6 < h % 24 < 20 else 0.0
        rows.append(f"{(t0 + timedelta(hours=h)).isoformat()},{amb:.1f},{ghi:.0f},{60:.0f},3.2")
    p = write(tmp_path, "\r\n".join(rows) + "\r\n")
    w = load_weather_csv(p, wrap=True)
    assert len(w.ambient_c) == 8760
    assert w.ambient_c.period_s == 8760 * 3600.0
    grid = np.arange(0, 8760 * 3600, 60.0)  # a year at 1 min, vectorised
    amb = w.ambient_c.at_many(grid)
    assert amb.shape == grid.shape and np.all(np.isfinite(amb))
    assert w.at(8760 * 3600 + 3600).ambient_c == pytest.approx(w.at(3600).ambient_c)


# -- synthetic generators ----------------------------------------------------------


def test_synthetic_weather_is_deterministic_for_a_seed_and_within_bounds():
    gen = SyntheticWeather(seed=5, min_c=12, max_c=24, noise_c=1.0, cloudiness=0.5)
    a = gen.generate(3 * 86400)
    b = SyntheticWeather(seed=5, min_c=12, max_c=24, noise_c=1.0, cloudiness=0.5).generate(
        3 * 86400
    )
    c = SyntheticWeather(seed=6, min_c=12, max_c=24, noise_c=1.0, cloudiness=0.5).generate(
        3 * 86400
    )
    np.testing.assert_array_equal(a.ambient_c.values, b.ambient_c.values)
    assert not np.array_equal(a.ambient_c.values, c.ambient_c.values)
    assert a.ambient_c.values.min() >= 12 and a.ambient_c.values.max() <= 24
    assert a.ghi_wm2 is not None and a.rh_pct is not None
    assert a.ghi_wm2.values.min() >= 0 and a.ghi_wm2.values.max() <= 800
    assert a.at(2 * 3600).ghi_wm2 == 0.0  # night
    assert a.rh_pct.values.min() >= 0 and a.rh_pct.values.max() <= 100


def test_synthetic_weather_peaks_in_the_afternoon_and_wraps_daily():
    w = SyntheticWeather(seed=1, noise_c=0.0, peak_hour=15).generate(86400)
    t = np.arange(0, 86400, 300.0)
    assert t[np.argmax(w.ambient_c.at_many(t))] == 15 * 3600
    assert w.at(5 * 86400 + 15 * 3600).ambient_c == pytest.approx(24.0)


def test_synthetic_prices_deterministic_with_evening_peak_and_optional_negative_dip():
    gen = SyntheticPrices(seed=2, solar_dip_per_mwh=120, noise_per_mwh=0, spikes_per_day=0)
    p = gen.generate(86400)
    assert np.array_equal(p.values, gen.generate(86400).values)
    hourly = p.at_many(np.arange(24) * 3600.0)
    assert int(np.argmax(hourly)) in (18, 19)
    assert hourly.min() < 0  # the midday solar dip goes negative
    spiky = SyntheticPrices(seed=2, spikes_per_day=4, spike_per_mwh=500).generate(5 * 86400)
    assert spiky.values.max() > 400


def test_synthetic_generator_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="max_c"):
        SyntheticWeather(min_c=30, max_c=20)


# -- grid events and faults ------------------------------------------------------


def test_fault_target_parses_to_category_and_name():
    f = FaultSpec(7200, "pump:loop1.pump_a", "trip")
    assert f.target == ("pump", "loop1.pump_a")
    assert (f.category, f.name) == ("pump", "loop1.pump_a")
    assert f.permanent and f.active(1e9) and not f.active(7199)
    assert FaultTarget.parse("sensor:tank03.fluid_temp") == ("sensor", "tank03.fluid_temp")
    assert "nan" in FAULT_KINDS["sensor"]


def test_fault_kind_must_match_the_target_category():
    with pytest.raises(ValueError, match="not a pump fault"):
        FaultSpec(0, "pump:loop1.pump_a", "stuck")


def test_curtail_fraction_resolves_against_the_site_import_limit():
    e = GridEvent(at_s=100, kind="curtail", duration_s=50, limit_fraction=0.6)
    assert e.import_limit_kw(2000) == pytest.approx(1200)
    assert e.active(100) and e.active(149.9) and not e.active(150)


# -- TOML scenarios ------------------------------------------------------------------

FULL = """
name = "my-test"
description = "all features"
duration = "PT12H"

[weather]
source = "synthetic"
seed = 3
min_c = 10
max_c = 20

[prices]
seed = 4
solar_dip_per_mwh = 80

[[grid_events]]
at = "06:30"
kind = "frequency"
duration_s = 60
params = { frequency_hz = 49.8 }

[[grid_events]]
at_s = 3600
kind = "curtail"
duration_s = 1800
params = { limit_kw = 500 }

[[grid_events]]
at = "PT2H"
kind = "price"
duration_s = 900
params = { price_per_mwh = 3000 }

[[faults]]
at_s = 600
target = "device:cdu1"
kind = "exception"
duration_s = 120
params = { code = 6 }

[[faults]]
at = "01:00"
target = "leak:tank04"
kind = "leak"

[initial]
tank01.fluid_temp_c = 45.0
"loop1.supply_temp_c" = 30
"""


def test_toml_scenario_with_every_feature_parses():
    s = parse_scenario(FULL, "full.toml")
    assert s.name == "my-test" and s.duration_s == 12 * 3600
    assert [e.kind for e in s.grid_events] == ["curtail", "price", "frequency"]  # sorted by time
    assert s.grid_events[2].at_s == 6.5 * 3600
    assert s.frequency_hz_at(6.5 * 3600 + 10) == 49.8
    assert s.frequency_hz_at(0, nominal_hz=60) == 60
    assert s.import_limit_kw_at(3700, 2000) == 500
    assert s.price_at(7300) == 3000 and s.market_price_at(7300) != 3000
    assert s.faults[0].params == {"code": 6} and s.faults[1].permanent
    assert dict(s.initial) == {"tank01.fluid_temp_c": 45.0, "loop1.supply_temp_c": 30.0}


def test_absolute_event_times_resolve_against_the_scenario_start():
    s = parse_scenario(
        """
        start = 2024-07-15T00:00:00+02:00
        [[grid_events]]
        at = "2024-07-15T20:00:00+02:00"
        kind = "curtail"
        duration_s = 3600
        params = { limit_fraction = 0.5 }
        """
    )
    assert s.start == datetime(2024, 7, 14, 22, tzinfo=UTC)
    assert s.grid_events[0].at_s == 20 * 3600


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("nmae = 'x'", "nmae"),
        ("duration_s = -5", "duration_s"),
        ("duration_s = 'long'", "duration_s"),
        ("[weather]\nmax_c = 70", "weather.max_c"),
        ("[weather]\nmin_c = 20\nmax_c = 10", "weather.max_c"),
        ("[weather]\nseed = 1.5", "weather.seed"),
        ("[weather]\nsource = 'api'", "weather.source"),
        ("[weather]\nsource = 'csv'", "weather.path"),
        ("[weather]\nsource = 'csv'\npath = 'missing.csv'", "weather.path"),
        ("[prices]\nspikes = 3", "prices.spikes"),
        ("[[grid_events]]\nat_s = 10\nkind = 'outage'\nduration_s = 5", "grid_events[0].kind"),
        (
            "[[grid_events]]\nat_s = 10\nkind = 'curtail'\nduration_s = -5\n"
            "params = {limit_kw = 1}",
            "grid_events[0].duration_s",
        ),
        (
            "[[grid_events]]\nat_s = 10\nkind = 'curtail'\nduration_s = 5",
            "grid_events[0].params.limit_kw",
        ),
        (
            "[[grid_events]]\nat_s = 10\nkind = 'curtail'\nduration_s = 5\n"
            "params = {limit_fraction = 1.5}",
            "grid_events[0].params.limit_fraction",
        ),
        (
            "[[grid_events]]\nat_s = 10\nkind = 'frequency'\nduration_s = 5\n"
            "params = {limit_kw = 1}",
            "grid_events[0].params.limit_kw",
        ),
        (
            "[[grid_events]]\nat_s = 10\nkind = 'frequency'\nduration_s = 5\n"
            "params = {frequency_hz = 80}",
            "grid_events[0].params.frequency_hz",
        ),
        ("[[grid_events]]\nat = 'tonight'\nkind = 'price'\nduration_s = 5", "grid_events[0].at"),
        (
            "[[grid_events]]\nat = '2024-07-15T18:00:00'\nkind = 'price'\nduration_s = 5\n"
            "params = {price_per_mwh = 1}",
            "grid_events[0].at",
        ),  # absolute, but no start
        ("[[faults]]\nat_s = 10\ntarget = 'pump:p1'\nkind = 'trip'\nextra = 1", "faults[0].extra"),
        ("[[faults]]\nat_s = -1\ntarget = 'pump:p1'\nkind = 'trip'", "faults[0].at_s"),
        ("[[faults]]\nat_s = 90000\ntarget = 'pump:p1'\nkind = 'trip'", "faults[0].at_s"),
        ("[[faults]]\nat_s = 1\ntarget = 'valve:v1'\nkind = 'trip'", "faults[0].target"),
        ("[[faults]]\nat_s = 1\ntarget = 'pump1'\nkind = 'trip'", "faults[0].target"),
        ("[[faults]]\nat_s = 1\ntarget = 'pump:p1'\nkind = 'drift'", "faults[0].kind"),
        (
            "[[faults]]\nat_s = 1\ntarget = 'sensor:t1.temp'\nkind = 'drift'",
            "faults[0].params.rate_per_h",
        ),
        (
            "[[faults]]\nat_s = 1\ntarget = 'sensor:t1.temp'\nkind = 'spike'\n"
            "params = {magnitude = 5, p = 1.5}",
            "faults[0].params.p",
        ),
        (
            "[[faults]]\nat_s = 1\ntarget = 'device:cdu1'\nkind = 'exception'\nparams = {code = 7}",
            "faults[0].params.code",
        ),
        (
            "[[faults]]\nat_s = 1\ntarget = 'device:cdu1'\nkind = 'timeout'\nparams = {code = 4}",
            "faults[0].params.code",
        ),
        (
            "[[faults]]\nat_s = 1\ntarget = 'fan:dc1'\nkind = 'trip'\nduration_s = 0",
            "faults[0].duration_s",
        ),
        ("faults = 3", "faults"),
        ("[initial]\ntank01 = 'hot'", "initial.tank01"),
        (
            "[[faults]]\nat_s = 1\ntarget = 'sensor:t1.temp'\nkind = 'stuck'\nparams = {value = 5}",
            "faults[0].params.value",
        ),
    ],
)
def test_toml_validation_errors_name_the_key(text, key):
    err = bad_toml(text)
    assert err.key == key, str(err)
    assert err.file == "s.toml"


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        # the typo, not the fault "after the end" of a day-long default duration
        (
            "duraton_s = 200000\n[[faults]]\nat_s = 90000\ntarget = 'pump:p1'\nkind = 'trip'",
            "duraton_s",
            "did you mean 'duration_s'?",
        ),
        # the typo, not "kind is required"
        (
            "[[grid_events]]\nat_s = 1\nknd = 'curtail'\nduration_s = 5",
            "grid_events[0].knd",
            "did you mean 'kind'?",
        ),
        ("[weather]\nsource = 'csv'\npth = 'w.csv'", "weather.pth", "did you mean 'path'?"),
        (
            "[[faults]]\nat_s = 1\ntarget = 'pump:p1'\nkind = 'trip'\nextra = 1",
            "faults[0].extra",
            "known keys: at, at_s, duration_s, kind, params, target",
        ),
    ],
)
def test_a_misspelt_key_is_reported_first_with_the_key_it_resembles(text, key, hint):
    err = bad_toml(text)
    assert (err.key, err.reason) == (key, f"unknown key (check the spelling); {hint}")
    assert str(err) == f"s.toml: {key}: {err.reason}"  # one line: file, dotted key, reason


def test_event_parameters_are_those_of_its_kind():
    err = bad_toml(
        "[[grid_events]]\nat_s = 10\nkind = 'price'\nduration_s = 5\nparams = {price = 3}"
    )
    assert err.key == "grid_events[0].params.price"
    assert err.reason == "not a parameter of a price event; parameters: price_per_mwh"


@pytest.mark.parametrize(
    ("at", "seconds"),
    [
        ("'18:30'", 18.5 * 3600),
        ("'PT2H15M'", 2.25 * 3600),
        ("06:00:30", 6 * 3600 + 30),  # a TOML local time
        ("2024-07-15T03:00:00Z", 5 * 3600),  # absolute, against the start
        ("'2024-07-15 05:00+02:00'", 5 * 3600),
    ],
)
def test_at_is_an_offset_or_an_absolute_time(at, seconds):
    s = parse_scenario(
        f"start = 2024-07-14T22:00:00Z\n[[faults]]\nat = {at}\ntarget = 'pump:p1'\nkind = 'trip'"
    )
    assert s.faults[0].at_s == seconds


def test_at_that_is_neither_an_offset_nor_a_date_time_says_where_seconds_go():
    err = bad_toml("[[faults]]\nat = 18\ntarget = 'pump:p1'\nkind = 'trip'")
    assert err.key == "faults[0].at"
    assert "'18:00'" in err.reason and "seconds go in at_s" in err.reason


def test_scenario_file_saved_with_a_bom_loads(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_bytes(b"\xef\xbb\xbf" + b"name = 'bom'\nduration = '06:00'\n")
    s = load_scenario(toml)
    assert (s.name, s.duration_s, s.source) == ("bom", 6 * 3600.0, str(toml))


def test_unreadable_scenario_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_scenario(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b"description = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_scenario(tmp_path / "latin1.toml")


def test_toml_syntax_error_reports_the_line():
    err = bad_toml("name = 'x'\nduration_s = = 5\n")
    assert "line 2" in err.reason


def test_csv_sources_resolve_relative_to_the_scenario_file_and_must_cover_it(tmp_path):
    write(tmp_path, "time,ambient_c\n0,10\n3600,12\n", name="short.csv")
    toml = tmp_path / "s.toml"
    toml.write_text("duration_s = 7200\n[weather]\nsource = 'csv'\npath = 'short.csv'\n")
    s = load_scenario(toml)  # 2 samples cover 0..2 h (the last stands for one interval)
    assert s.weather_at(1800).ambient_c == pytest.approx(11.0)
    toml.write_text("duration_s = 36000\n[weather]\nsource = 'csv'\npath = 'short.csv'\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(toml)
    assert info.value.key == "weather.path" and "wrap" in info.value.reason
    toml.write_text(
        "duration_s = 36000\n[weather]\nsource = 'csv'\npath = 'short.csv'\nwrap = true\n"
    )
    assert load_scenario(toml).weather_at(7200 + 1800).ambient_c == pytest.approx(11.0)


def test_csv_overrides_replace_a_builtin_source(tmp_path):
    day = "\n".join(f"{h * 3600},{20 + h % 3}" for h in range(12))  # half a day
    weather = write(tmp_path, "time,ambient_c\n" + day + "\n", name="w.csv")
    prices = write(
        tmp_path, "time,price_per_mwh\n2024-07-15T00:00Z,10\n2024-07-16T00:00Z,20\n", name="p.csv"
    )
    with pytest.raises(DataFileError, match="wrap"):
        load_scenario("heatwave", weather_csv=tmp_path / "w.csv", prices_csv=prices)
    s = load_scenario("heatwave", weather_csv=weather, prices_csv=prices, wrap=True)
    assert s.weather_at(86400 * 3 + 3600).ambient_c == 21.0
    assert s.start == datetime(2024, 7, 15, tzinfo=UTC)
    assert s.price_at(3600) == 10.0 and s.grid_events[0].kind == "curtail"


# -- built-ins --------------------------------------------------------------------------


def test_builtin_scenarios_all_load():
    names = list_builtin_scenarios()
    for required in (
        "normal-day",
        "heatwave",
        "pump-failure",
        "grid-curtailment",
        "sensor-faults",
        "comms-loss",
    ):
        assert required in names
    for name in names:
        s = load_scenario(name)
        assert s.name == name and s.description
        assert np.isfinite(s.weather_at(s.duration_s / 2).ambient_c)


def test_heatwave_peaks_at_40_c_or_more_with_an_evening_curtail():
    s = load_scenario("heatwave")
    t = np.arange(0, s.duration_s, 60.0)
    amb = s.weather.ambient_c.at_many(t)
    assert amb.max() >= 40.0
    assert 12 <= t[np.argmax(amb)] / 3600 <= 18  # afternoon
    assert amb.min() >= 27.0
    (curtail,) = [e for e in s.grid_events if e.kind == "curtail"]
    assert 17 * 3600 <= curtail.at_s <= 20 * 3600
    evening = s.prices.at_many(np.arange(18, 21) * 3600.0).mean()
    night = s.prices.at_many(np.arange(1, 4) * 3600.0).mean()
    assert evening > 2 * night


def test_pump_failure_trips_loop1_pump_a_at_two_hours():
    (f,) = load_scenario("pump-failure").faults
    assert (f.target, f.kind, f.at_s, f.permanent) == (("pump", "loop1.pump_a"), "trip", 7200, True)


def test_grid_curtailment_is_60_percent_for_two_hours():
    (e,) = load_scenario("grid-curtailment").grid_events
    assert (e.kind, e.limit_fraction, e.duration_s) == ("curtail", 0.6, 7200)


def test_sensor_faults_and_comms_loss_contents():
    kinds = {f.kind for f in load_scenario("sensor-faults").faults}
    assert {"stuck", "drift", "nan", "dropout"} <= kinds
    (f,) = load_scenario("comms-loss").faults
    assert (f.target, f.kind, f.duration_s) == (("device", "cdu1"), "timeout", 600)


def test_a_device_lost_and_back_is_no_foreign_write_and_no_unread_write_alarm(site):
    """After cdu1's ten minutes of silence its unsent writes were still expected:
    what the PLC held read back as a "foreign write" (a second Modbus master,
    kept in the audit for good) and, in `run`, ~50 "not read back" alarms."""
    from thermogate.controller.simulate import run_simulation

    res = run_simulation(site, "comms-loss", 1.6, scan_s=5.0)
    assert res.summary["write_failures"] > 0  # writes to cdu1 were lost ...
    said = [e["message"] for e in res.events]
    assert not [m for m in said if "foreign write" in m or "not read back" in m], said


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(ConfigError, match="heatwave"):
        load_scenario("heat-wave")


# --------------------------------------------------------------------------- #
# a study over measured series: starts at the prices, nothing repeats
# --------------------------------------------------------------------------- #


def _hourly(path: Path, header: str, start: datetime, hours: int, value: float) -> Path:
    rows = [header] + [f"{(start + timedelta(hours=h)).isoformat()},{value}" for h in range(hours)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_strict_study_starts_at_the_first_price_and_needs_weather_for_all_of_it(tmp_path):
    from thermogate.hil.scenario import load_for_run

    t0 = datetime(2025, 8, 4, tzinfo=UTC)
    prices = _hourly(tmp_path / "p.csv", "time,price_per_mwh", t0 + timedelta(hours=2), 30, 50.0)
    weather = _hourly(tmp_path / "w.csv", "time,ambient_c", t0, 40, 30.0)
    sc = load_for_run("normal-day", weather, prices, hours=24.0, strict=True)
    assert sc.start == t0 + timedelta(hours=2)  # the market's clock, not the weather's
    assert sc.duration_s == 24 * 3600.0
    assert sc.weather_offset_s == 2 * 3600.0 and sc.price_offset_s == 0.0
    # longer than the weather covers from the prices' start: named, with what it covers
    with pytest.raises(DataFileError, match=r"w\.csv: covers 38 h .* runs 39 h; give a file"):
        load_for_run("normal-day", weather, prices, hours=39.0, strict=True)
    # weather that begins after the prices do
    late = _hourly(tmp_path / "late.csv", "time,ambient_c", t0 + timedelta(hours=5), 60, 30.0)
    with pytest.raises(
        DataFileError, match=r"late\.csv.*starts 3.0 h after the scenario start \(20"
    ):
        load_for_run("normal-day", late, prices, hours=12.0, strict=True)
    # the same files repeat in an open-ended simulation
    assert load_for_run("normal-day", weather, prices).weather.ambient_c.wrap
    # weather of the year before: it ends before the run begins (once "covers -8736 h")
    old = _hourly(tmp_path / "old.csv", "time,ambient_c", t0 - timedelta(days=365), 40, 30.0)
    with pytest.raises(DataFileError, match=r"old\.csv: ends 8,722\.0 h before the scenario"):
        load_for_run("normal-day", old, prices, hours=12.0, strict=True)


def test_weather_without_a_time_zone_beside_prices_with_one_names_the_file(tmp_path):
    from thermogate.hil.scenario import load_for_run

    t0 = datetime(2025, 8, 4, tzinfo=UTC)
    prices = _hourly(tmp_path / "p.csv", "time,price_per_mwh", t0, 30, 50.0)
    naive = _hourly(tmp_path / "w.csv", "time,ambient_c", t0.replace(tzinfo=None), 30, 30.0)
    with pytest.raises(DataFileError, match=r"w\.csv: .* has no time zone .* UTC \('Z'\)"):
        load_for_run("normal-day", naive, prices, hours=12.0, strict=True)


def test_series_from_another_period_than_the_run_are_repeated_with_a_warning(tmp_path, caplog):
    """January prices on a July run were repeated without a word; they still
    are (a typical period, as asked), but it is said."""
    from thermogate.hil.scenario.loader import load_for_run

    w = tmp_path / "w.csv"
    w.write_text(
        "time,ambient_c\n2024-07-15T00:00Z,25\n2024-07-15T12:00Z,35\n2024-07-16T00:00Z,25\n"
    )
    p = tmp_path / "p.csv"
    p.write_text("time,price_per_mwh\n2023-01-10T00:00Z,300\n2023-01-10T12:00Z,300\n")
    with caplog.at_level("WARNING"):
        sc = load_for_run("normal-day", w, p, hours=6)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"{p}: its times (from 2023-01-10T00:00:00+00:00)")
    assert "not matched by date" in said[0]
    assert sc.prices is not None
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_for_run("normal-day", w, None, hours=6)  # one file: the run's own period
    assert caplog.records == []


def test_measured_weather_and_prices_run_where_both_have_data(tmp_path):
    """A year of weather with a July weekend of prices ran on 1 January, the prices
    repeated as a "typical period": the run starts where both first have data."""
    t0 = datetime(2023, 1, 1, tzinfo=UTC)
    w_rows = [
        f"{(t0 + timedelta(hours=k)).isoformat()},{10.0 + (k // 24) * 0.05:.2f}"
        for k in range(24 * 365)
    ]
    (tmp_path / "w.csv").write_text("time,ambient_c\n" + "\n".join(w_rows) + "\n")
    p0 = datetime(2023, 7, 15, tzinfo=UTC)
    p_rows = [
        f"{(p0 + timedelta(hours=k)).isoformat()},{5000 if k == 2 else 40}" for k in range(48)
    ]
    (tmp_path / "p.csv").write_text("time,price_per_mwh\n" + "\n".join(p_rows) + "\n")
    from thermogate.hil.scenario import load_for_run

    sc = load_for_run("heatwave", tmp_path / "w.csv", tmp_path / "p.csv")
    assert sc.start == p0
    assert sc.price_at(2.5 * 3600) == 5000.0  # the spike at its hour
    day = (p0 - t0).days  # 195: the weather of 15 July, not of 1 January
    assert sc.weather_at(0.0).ambient_c == pytest.approx(10.0 + day * 0.05, abs=0.01)


def test_prices_per_kwh_are_refused_naming_the_unit(tmp_path):
    rows = "".join(f"{3600 * k},{0.03 + 0.001 * (k % 5):.3f}\n" for k in range(24))
    err = bad_csv(tmp_path, "time,price_per_mwh\n" + rows, load_prices_csv)
    assert err.column == "price_per_mwh" and "prices per kWh?" in err.reason


def test_noaa_missing_marker_is_a_missing_sample_and_a_bad_cell_lists_the_markers(tmp_path):
    w = load_weather_csv(write(tmp_path, "time,ambient_c\n0,20\n3600,M\n7200,22\n"))
    assert w.ambient_c.values.tolist() == [20.0, 21.0, 22.0]
    err = bad_csv(tmp_path, "time,ambient_c\n0,20\n3600,29.2s\n7200,22\n")
    assert (err.line, err.column) == (3, "ambient_c") and "NA, NaN, M, null" in err.reason


def test_quarter_hours_back_across_the_dst_change_get_the_dst_hint(tmp_path):
    text = "time,price_per_mwh\n2023-11-05 01:30,30\n2023-11-05 01:45,31\n2023-11-05 01:00,32\n"
    err = bad_csv(tmp_path, text, load_prices_csv)
    assert err.line == 4 and "daylight-saving" in err.reason


def test_a_measured_series_shorter_than_the_run_is_repeated_and_said(tmp_path, caplog):
    from thermogate.hil.scenario import load_for_run

    rows = "".join(f"{3600 * k},{25 + k % 5}\n" for k in range(24))
    path = write(tmp_path, "time,ambient_c\n" + rows)
    with caplog.at_level("WARNING"):
        load_for_run("heatwave", path, None, hours=20)
        assert not caplog.records  # within the file: nothing to say
        load_for_run("heatwave", path, None, hours=30)
    [msg] = [r.getMessage() for r in caplog.records]
    assert msg.endswith(
        "covers 24 h from the run's start, the run lasts 30 h: it is repeated over the rest"
    )


def test_a_weather_file_in_fahrenheit_that_passes_as_celsius_is_said(tmp_path, caplog):
    """Spring in °F (39-57) reads as a plausible, if hot, °C: only the median says it."""
    rows = "".join(f"{3600 * k},{39 + 18 * (k % 24) / 23:.1f}\n" for k in range(48))
    with caplog.at_level("WARNING"):
        load_weather_csv(write(tmp_path, "time,ambient_c\n" + rows))
    [msg] = [r.getMessage() for r in caplog.records]
    assert "median of 48.0 °C" in msg and "Fahrenheit?" in msg
    caplog.clear()
    hot = "".join(f"{3600 * k},{30 + 15 * (k % 24) / 23:.1f}\n" for k in range(48))
    with caplog.at_level("WARNING"):  # a desert summer day (30-45 °C): nothing said
        load_weather_csv(write(tmp_path, "time,ambient_c\n" + hot))
    assert not caplog.records


def test_a_semicolon_file_whose_header_names_a_column_with_a_comma_is_read(tmp_path):
    text = "time;price_per_mwh;Bemerkung (EUR/MWh, DE-LU)\n0;40,5;a\n3600;-12,25;b\n"
    p = load_prices_csv(write(tmp_path, text))
    assert p.values.tolist() == [40.5, -12.25]
