"""Strict TOML reading (plc/config.py): typed getters, unknown keys, one-line errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from thermogate.plc.config import load_toml, loads_toml
from thermogate.plc.errors import ConfigError


def error(text: str, read) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read(loads_toml(text, "c.toml"))
    return info.value


def test_unknown_key_names_the_key_it_resembles():
    def read(sec):
        sec.get_float("volume_l")
        sec.get_str("name", "")
        sec.check_unused()

    err = error("volume_l = 1\nvolme_l = 2", read)
    assert str(err) == "c.toml: volme_l: unknown key (check the spelling); did you mean 'volume_l'?"


def test_unknown_key_without_a_resemblance_lists_the_known_keys():
    def read(sec):
        sec.get_float("volume_l", None)  # asked for, absent: still a key the section may hold
        sec.get_str("name", "")
        sec.check_unused()

    err = error("colour = 'red'", read)
    assert err.key == "colour"
    assert err.reason == "unknown key (check the spelling); known keys: name, volume_l"


def test_float_map_takes_any_names_and_dotted_keys_come_back_dotted():
    sec = loads_toml('[initial]\ntank01.fluid_c = 45\n"loop1.supply_c" = 30.5\npue = 1', "c.toml")
    assert sec.get_float_map("initial") == {
        "tank01.fluid_c": 45.0,
        "loop1.supply_c": 30.5,
        "pue": 1.0,
    }
    sec.check_unused()
    assert loads_toml("", "c.toml").get_float_map("initial", {}) == {}


def test_float_map_names_the_dotted_key_of_a_bad_value():
    err = error("[initial]\ntank01.fluid_c = 'hot'", lambda sec: sec.get_float_map("initial"))
    assert (err.key, err.reason) == (
        "initial.tank01.fluid_c",
        "expected a number, got the string 'hot'",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("'18:30'", 66600.0),
        ("'36:00:30'", 129630.0),  # hours beyond a day
        ("'PT2H30M'", 9000.0),
        ("'P1DT1S'", 86401.0),
        ("'P1W'", 604800.0),
        ("06:00:00", 21600.0),  # a TOML local time
    ],
)
def test_duration_written_for_people(value, seconds):
    assert loads_toml(f"d = {value}", "c.toml").get_duration("d") == seconds


@pytest.mark.parametrize("value", ["5", "'18:75'", "'PT'", "'P'", "'soon'", "2024-07-15"])
def test_duration_rejects_anything_else(value):
    err = error(f"d = {value}", lambda sec: sec.get_duration("d"))
    assert err.key == "d" and err.reason.startswith("expected 'HH:MM[:SS]' or an ISO 8601 duration")


def test_duration_range_and_default():
    err = error("d = 'PT0S'", lambda sec: sec.get_duration("d", above=0.0))
    assert err.reason == "0 must be above 0"
    assert loads_toml("", "c.toml").get_duration("d", None) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-07-15T13:00:00Z", datetime(2024, 7, 15, 13, tzinfo=UTC)),
        (
            "2024-07-15T13:00:00+02:00",
            datetime(2024, 7, 15, 13, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2024-07-15T13:00:00", datetime(2024, 7, 15, 13)),  # local wall time: naive
        ("2024-07-15", datetime(2024, 7, 15)),  # a date: midnight
        ("'2024-07-15 13:00Z'", datetime(2024, 7, 15, 13, tzinfo=UTC)),  # as a string
    ],
)
def test_datetime_from_toml_or_an_iso_string(value, expected):
    got = loads_toml(f"t = {value}", "c.toml").get_datetime("t")
    assert got == expected and got.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("value", ["'18:00'", "'tonight'", "5", "13:00:00"])
def test_datetime_rejects_anything_else(value):
    err = error(f"t = {value}", lambda sec: sec.get_datetime("t"))
    assert err.reason.startswith("expected a date-time such as 2024-07-15T00:00:00Z, got ")


def test_toml_file_with_a_bom_and_unreadable_files(tmp_path):
    path = tmp_path / "site.toml"
    path.write_bytes(b"\xef\xbb\xbfname = 'hall'\n")
    assert load_toml(path).get_str("name") == "hall"
    path.write_bytes(b"name = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"site\.toml: not UTF-8 text"):
        load_toml(path)
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)
    with pytest.raises(ConfigError, match="line 1"):
        loads_toml("name = = 1", "c.toml")
