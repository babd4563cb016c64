"""The site description: validated before anything connects, never a traceback.

Every user mistake in a site file is a ``ConfigError`` naming the file, the
dotted key and the reason. The built-in demo hall and the generator's output
are checked for physically credible sizing.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import Breaker, Site, demo_site, demo_site_text, load_site
from thermogate.plc.sitegen import SiteSpec, generate_site_toml


# --------------------------------------------------------------------------
# a small valid site, as data, rendered to TOML for each test
# --------------------------------------------------------------------------
def _tank(i: int) -> dict[str, Any]:
    return {
        "name": f"tank{i:02d}",
        "workload": "asic",
        "units": 10,
        "volume_l": 1500.0,
        "hx_ua_kw_k": 20.0,
        "dielectric_flow_l_s": 10.0,
        "design_water_flow_m3h": 20.0,
        "loop": "loop1",
        "pdu": "pdu1",
    }


def small_site() -> dict[str, Any]:
    """A valid site: one feeder, PDU, loop (2 pumps, 1 dry cooler), 4 tanks, a CDU row."""
    return {
        "site": {"name": "Test hall", "import_limit_kw": 1000.0},
        "plc": {"unit_id": 1},
        "feeders": [{"name": "feeder1", "rating_a": 1600.0, "unit_id": 11}],
        "pdus": [{"name": "pdu1", "feeder": "feeder1", "rating_a": 500.0, "unit_id": 12}],
        "loops": [
            {
                "name": "loop1",
                "volume_l": 5000.0,
                "feeder": "feeder1",
                "pumps": [
                    {
                        "name": "pump_a",
                        "rated_flow_m3h": 100.0,
                        "rated_power_kw": 10.0,
                        "unit_id": 13,
                    },
                    {
                        "name": "pump_b",
                        "rated_flow_m3h": 100.0,
                        "rated_power_kw": 10.0,
                        "unit_id": 14,
                    },
                ],
                "dry_coolers": [{"name": "dc1", "capacity_kw": 500.0, "unit_id": 15}],
            }
        ],
        "tanks": [_tank(i) for i in range(1, 5)],
        "cdus": [
            {
                "name": "cdu1",
                "loop": "loop1",
                "hx_ua_kw_k": 50.0,
                "tcs_flow_l_s": 5.0,
                "design_water_flow_m3h": 20.0,
                "unit_id": 16,
            }
        ],
        "rack_rows": [{"name": "row1", "cdu": "cdu1", "pdu": "pdu1", "nodes": 4}],
        "control_loops": [
            *(_fluid_control(f"tank{i:02d}") for i in range(1, 5)),
            {
                "name": "cdu1_supply",
                "measurement": "cdu1.supply_temp",
                "actuators": ["cdu1.valve_cmd"],
                "setpoint": 40.0,
                "kp": 2.0,
            },
            *_loop_controls("loop1", ["dc1"]),
        ],
    }


def _fluid_control(tank: str) -> dict[str, Any]:
    return {
        "name": f"{tank}_fluid",
        "measurement": f"{tank}.fluid_temp",
        "actuators": [f"{tank}.valve_cmd"],
        "setpoint": 50.0,
        "kp": 5.0,
    }


def _loop_controls(loop: str, coolers: list[str]) -> list[dict[str, Any]]:
    """A cooling loop's supply (its dry coolers' fans) and differential pressure (its pumps)."""
    return [
        {
            "name": f"{loop}_supply",
            "measurement": f"{loop}.supply_temp",
            "actuators": [f"{loop}.{d}.fan_cmd" for d in coolers],
            "setpoint": 32.0,
            "kp": 10.0,
        },
        {
            "name": f"{loop}_dp",
            "measurement": f"{loop}.dp",
            "actuators": [f"{loop}.pump_a.speed_cmd", f"{loop}.pump_b.speed_cmd"],
            "setpoint": 80.0,
            "kp": 0.1,
            "action": "reverse",
        },
    ]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return repr(v)


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit_table(out: list[str], header: str, table: dict[str, Any]) -> None:
    out.append(header)
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_tables(v):
            out.append(f"{k} = {_value(v)}")
    name = header.strip("[]")
    for k, v in table.items():
        if isinstance(v, dict):
            _emit_table(out, f"[{name}.{k}]", v)
        elif _is_tables(v):
            for sub in v:
                _emit_table(out, f"[[{name}.{k}]]", sub)


def render(data: dict[str, Any]) -> str:
    """TOML text of ``data`` (enough of TOML for site files)."""
    out = [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for k, v in data.items():
        if isinstance(v, dict):
            _emit_table(out, f"[{k}]", v)
        elif isinstance(v, list):
            if _is_tables(v):
                for t in v:
                    _emit_table(out, f"[[{k}]]", t)
            else:
                out.insert(0, f"{k} = {_value(v)}")
    return "\n".join(out) + "\n"


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else render(data), encoding="utf-8")
    return path


def bad(tmp_path: Path, data: dict[str, Any] | str | bytes, key: str, *words: str) -> ConfigError:
    """Load ``data`` from a real file; assert a ConfigError at ``key`` with ``words``."""
    if isinstance(data, bytes):
        path = tmp_path / "site.toml"
        path.write_bytes(data)
    else:
        path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key, err
    for w in words:
        assert w.lower() in err.reason.lower(), err
    assert str(err) == (f"{path}: {key}: {err.reason}" if key else f"{path}: {err.reason}")
    return err


def test_small_site_is_valid(tmp_path):
    site = load_site(write(tmp_path, small_site()))
    assert [t.name for t in site.tanks] == ["tank01", "tank02", "tank03", "tank04"]
    assert [p.name for p in site.pumps] == ["loop1.pump_a", "loop1.pump_b"]
    assert site.control_loops[0].actuators == ("tank01.valve_cmd",)
    assert site.source == str(tmp_path / "site.toml")


# --------------------------------------------------------------------------
# unknown keys (typos)
# --------------------------------------------------------------------------
def test_unknown_top_level_key_is_rejected(tmp_path):
    d = small_site()
    d["tank"] = [_tank(9)]
    bad(tmp_path, d, "tank", "unknown key")


def test_unknown_key_in_site_section_is_rejected(tmp_path):
    d = small_site()
    d["site"]["import_limt_kw"] = 900.0
    bad(tmp_path, d, "site.import_limt_kw", "unknown key")


def test_unknown_key_in_a_tank_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][3]["volume_litres"] = 1500.0
    bad(tmp_path, d, "tanks[3].volume_litres", "unknown key")


def test_unknown_key_in_a_nested_pump_is_rejected(tmp_path):
    d = small_site()
    d["loops"][0]["pumps"][1]["rated_flow_m3"] = 100.0
    bad(tmp_path, d, "loops[0].pumps[1].rated_flow_m3", "unknown key")


def test_unknown_key_in_a_breaker_subtable_is_rejected(tmp_path):
    d = small_site()
    d["pdus"][0]["breaker"] = {"curve": "iec-vi", "tsm": 0.5}
    bad(tmp_path, d, "pdus[0].breaker.tsm", "unknown key")


# --------------------------------------------------------------------------
# wrong types
# --------------------------------------------------------------------------
def test_string_for_a_number_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][3]["volume_l"] = "1500"
    bad(tmp_path, d, "tanks[3].volume_l", "expected a number", "string")


def test_number_for_a_string_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][1]["loop"] = 1
    bad(tmp_path, d, "tanks[1].loop", "expected a string", "number")


def test_bool_for_an_int_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][0]["units"] = True
    bad(tmp_path, d, "tanks[0].units", "expected an integer", "boolean")


def test_float_for_an_int_is_rejected(tmp_path):
    d = small_site()
    d["feeders"][0]["unit_id"] = 11.0
    bad(tmp_path, d, "feeders[0].unit_id", "expected an integer")


def test_a_scalar_where_a_table_belongs_is_rejected(tmp_path):
    d = small_site()
    d["tanks"] = "tank01"
    bad(tmp_path, d, "tanks", "expected an array of tables")


def _leaf_keys(data: Any, path: str = "") -> list[tuple[str, list[Any]]]:
    """(dotted key, access path) of every scalar or array-of-strings key."""
    out: list[tuple[str, list[Any]]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            sub = f"{path}.{k}" if path else k
            if isinstance(v, dict) or _is_tables(v):
                out += [(key, [k, *acc]) for key, acc in _leaf_keys(v, sub)]
            else:
                out.append((sub, [k]))
    else:
        for i, v in enumerate(data):
            out += [(key, [i, *acc]) for key, acc in _leaf_keys(v, f"{path}[{i}]")]
    return out


@pytest.mark.parametrize("wrong", ["a string", 5, True], ids=["str", "int", "bool"])
def test_every_key_with_a_wrong_type_names_that_key(tmp_path, wrong):
    """No key of the schema lets a wrong-typed value through or crashes on it."""
    base = small_site()
    checked = 0
    for key, acc in _leaf_keys(base):
        d = copy.deepcopy(base)
        parent = d
        for a in acc[:-1]:
            parent = parent[a]
        old = parent[acc[-1]]
        if type(old) is type(wrong) or (isinstance(old, float) and type(wrong) is int):
            continue  # same type (an int is a valid float): not a type error
        parent[acc[-1]] = wrong
        err = bad(tmp_path, d, key)
        assert "expected" in err.reason, err
        checked += 1
    assert checked >= 25


# --------------------------------------------------------------------------
# out of range
# --------------------------------------------------------------------------
def test_negative_tank_volume_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][3]["volume_l"] = -1500.0
    bad(tmp_path, d, "tanks[3].volume_l", "-1500", "below the minimum")


def test_tank_alarm_not_above_setpoint_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][2]["fluid_setpoint_c"] = 50.0
    d["tanks"][2]["fluid_alarm_c"] = 50.0
    bad(tmp_path, d, "tanks[2].fluid_alarm_c", "must be above fluid_setpoint_c (50)")


def test_tank_trip_not_above_alarm_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][2]["fluid_alarm_c"] = 60.0
    d["tanks"][2]["fluid_trip_c"] = 58.0
    bad(tmp_path, d, "tanks[2].fluid_trip_c", "58 must be above fluid_alarm_c (60)")


def test_a_default_that_clashes_with_a_given_value_is_said_to_be_the_default(tmp_path):
    """fluid_alarm_c = 65 was refused as "tanks[0].fluid_trip_c: 65 must be above 65",
    a key the file never set."""
    d = small_site()
    d["tanks"][0]["fluid_alarm_c"] = 65.0
    bad(
        tmp_path,
        d,
        "tanks[0].fluid_trip_c",
        "65 (the default; fluid_trip_c is not set) must be above fluid_alarm_c (65)",
    )


@pytest.mark.parametrize(
    ("where", "key", "value", "words"),
    [
        ("tanks", "fluid_setpoint_c", 58.0, "closer than 2.5 K to fluid_alarm_c (60)"),
        ("cdus", "supply_setpoint_c", 46.0, "closer than 2.5 K to supply_alarm_c (48)"),
        ("loops", "supply_setpoint_c", 40.0, "less than the 6 K trim & respond may add"),
    ],
)
def test_an_equipment_setpoint_obeys_the_rule_a_control_loop_setpoint_does(
    tmp_path, where, key, value, words
):
    """A loop's supply_setpoint_c of 40 under an alarm of 45 loaded, while a control
    loop holding the same 40 was refused: one rule for both."""
    d = small_site()
    d[where][0][key] = value
    bad(tmp_path, d, f"{where}[0].{key}", words)


@pytest.mark.parametrize(
    ("uid", "words"), [(0, ("below the minimum 1",)), (248, ("above the maximum 247",))]
)
def test_unit_id_outside_1_to_247_is_rejected(tmp_path, uid, words):
    d = small_site()
    d["pdus"][0]["unit_id"] = uid
    bad(tmp_path, d, "pdus[0].unit_id", *words)


def test_two_devices_on_one_unit_id_are_refused_naming_both(tmp_path):
    """The prober's typo (a second pump on the first's unit id) loaded, and moved
    the first pump's registers: a shared unit is laid out in slots."""
    d = small_site()
    d["loops"][0]["pumps"][1]["unit_id"] = 13
    bad(tmp_path, d, "loops[0].pumps[1].unit_id", "unit 13 is already used by pump loop1.pump_a")
    d = small_site()
    d["site"]["meter_unit_id"] = 12
    bad(tmp_path, d, "pdus[0].unit_id", "unit 12 is already used by the site meter")


def test_equipment_wired_into_the_plc_shares_its_unit(tmp_path):
    """A pump whose drive the PLC runs sits in the PLC's slots: not a clash."""
    d = small_site()
    d["loops"][0]["pumps"][1]["unit_id"] = 1
    site = load_site(write(tmp_path, d))
    pmap = build_point_map(site)
    assert pmap["loop1.pump_b.speed_cmd"].unit_id == 1
    assert pmap["loop1.pump_b.speed_cmd"].device == "plc"


def test_a_loops_skid_may_be_wired_to_a_further_plc_but_not_to_a_device(tmp_path):
    """A loop's skid instruments sit on the main PLC unless its unit_id names a
    further PLC (one carrying tanks or rows); a meter's or drive's unit is refused."""
    d = small_site()
    d["tanks"][3]["unit_id"] = 5
    d["loops"][0]["unit_id"] = 5
    pmap = build_point_map(load_site(write(tmp_path, d)))
    assert pmap["loop1.supply_temp"].unit_id == 5
    assert pmap["loop1.supply_temp"].device == "plc5"
    d["loops"][0]["unit_id"] = 13  # pump_a's drive
    bad(tmp_path, d, "loops[0].unit_id", "unit 13 is no PLC's")


def test_plc_unit_id_zero_broadcast_is_rejected(tmp_path):
    d = small_site()
    d["plc"]["unit_id"] = 0
    bad(tmp_path, d, "plc.unit_id", "minimum 1")


def test_non_grid_frequency_is_rejected(tmp_path):
    d = small_site()
    d["site"]["frequency_hz"] = 55.0
    bad(tmp_path, d, "site.frequency_hz", "50 or 60")


def test_enum_value_outside_its_choices_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][0]["workload"] = "fpga"
    bad(tmp_path, d, "tanks[0].workload", "'fpga'", "asic", "gpu")


def test_invalid_equipment_name_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][0]["name"] = "Tank 1"
    bad(tmp_path, d, "tanks[0].name", "not a valid name")


# --------------------------------------------------------------------------
# duplicate names
# --------------------------------------------------------------------------
def test_two_tanks_with_one_name_are_rejected(tmp_path):
    d = small_site()
    d["tanks"][3]["name"] = "tank02"
    err = bad(tmp_path, d, "tanks[3].name", "duplicate name", "tank02")
    assert "tanks[1].name" in err.reason  # says where the first one is


def test_pump_name_duplicated_within_a_loop_is_rejected(tmp_path):
    d = small_site()
    d["loops"][0]["pumps"][1]["name"] = "pump_a"
    bad(tmp_path, d, "loops[0].pumps[1].name", "duplicate name", "loop1.pump_a")


def test_same_pump_name_in_two_loops_is_allowed(tmp_path):
    d = small_site()
    loop2 = copy.deepcopy(d["loops"][0])
    loop2["name"] = "loop2"
    for i, eq in enumerate([*loop2["pumps"], *loop2["dry_coolers"]]):
        eq["unit_id"] = 20 + i
    d["loops"].append(loop2)
    d["control_loops"] += _loop_controls("loop2", ["dc1"])
    site = load_site(write(tmp_path, d))
    assert {p.name for p in site.pumps} >= {"loop1.pump_a", "loop2.pump_a"}


def test_same_name_for_a_tank_and_a_pdu_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][0]["name"] = "pdu1"
    bad(tmp_path, d, "tanks[0].name", "duplicate name", "pdu1")


@pytest.mark.parametrize("reserved", ["site", "plc"])
def test_names_of_the_sites_own_points_are_reserved(tmp_path, reserved):
    """A tank named 'site' would collide with site.power_kw: refused, not a crash."""
    d = small_site()
    d["tanks"][3]["name"] = reserved
    bad(tmp_path, d, "tanks[3].name", reserved, "reserved")


# --------------------------------------------------------------------------
# dangling references and missing equipment
# --------------------------------------------------------------------------
def test_tank_on_an_unknown_loop_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][2]["loop"] = "loop9"
    bad(tmp_path, d, "tanks[2].loop", "no loop named 'loop9'", "loop1")


def test_pdu_on_an_unknown_feeder_is_rejected(tmp_path):
    d = small_site()
    d["pdus"][0]["feeder"] = "feeder2"
    bad(tmp_path, d, "pdus[0].feeder", "no feeder named 'feeder2'")


def test_rack_row_on_an_unknown_cdu_is_rejected(tmp_path):
    d = small_site()
    d["rack_rows"][0]["cdu"] = "cdu7"
    bad(tmp_path, d, "rack_rows[0].cdu", "no CDU named 'cdu7'", "cdu1")


def test_tank_on_an_unknown_pdu_is_rejected(tmp_path):
    d = small_site()
    d["tanks"][0]["pdu"] = "pdu9"
    bad(tmp_path, d, "tanks[0].pdu", "no PDU named 'pdu9'")


def test_loop_with_no_pump_is_rejected(tmp_path):
    """Pumps nest under loops, so the dangling case is a loop nothing circulates."""
    d = small_site()
    del d["loops"][0]["pumps"]
    bad(tmp_path, d, "loops[0].pumps", "no pump", "loop1")


def test_loop_with_no_dry_cooler_is_rejected(tmp_path):
    d = small_site()
    del d["loops"][0]["dry_coolers"]
    bad(tmp_path, d, "loops[0].dry_coolers", "no dry cooler", "loop1")


def test_site_without_feeders_is_rejected(tmp_path):
    d = small_site()
    del d["feeders"]
    bad(tmp_path, d, "feeders", "required key is missing")


# --------------------------------------------------------------------------
# electrical
# --------------------------------------------------------------------------
def test_pdu_whose_rated_load_exceeds_its_breaker_is_rejected(tmp_path):
    d = small_site()
    d["pdus"][0]["rating_a"] = 250.0  # 171 kW for 4 x 55 kW tanks + a 41 kW row
    err = bad(tmp_path, d, "pdus[0].rating_a", "pdu1", "breaker")
    assert "261 kW" in err.reason


def test_feeder_whose_rated_load_exceeds_its_breaker_is_rejected(tmp_path):
    d = small_site()
    d["feeders"][0]["rating_a"] = 250.0  # 171 kW for its PDU's 261 kW and the loop's 40 kW
    err = bad(tmp_path, d, "feeders[0].rating_a", "feeder1", "breaker")
    assert "301 kW" in err.reason


@pytest.mark.parametrize("curve", sorted(Breaker.CURVES))
def test_breaker_trip_time_falls_monotonically_with_current(curve):
    b = Breaker(rating_a=400.0, curve=curve)
    pickup = 400.0 * b.pickup_pct / 100.0
    assert b.trip_time_s(0.0) == math.inf
    assert b.trip_time_s(400.0) == math.inf
    assert b.trip_time_s(pickup) == math.inf
    currents = [pickup * (1.0 + k / 50.0) for k in range(1, 1000)]
    times = [b.trip_time_s(i) for i in currents]
    assert all(0.0 < t < math.inf for t in times)
    assert all(t2 < t1 for t1, t2 in itertools.pairwise(times))


def test_breaker_curve_matches_iec_60255_reference_point():
    # IEC extremely inverse, TMS 1: t = 80 / ((I/Is)^2 - 1); at 2 x Is -> 26.7 s
    b = Breaker(rating_a=100.0, pickup_pct=100.0)
    assert b.trip_time_s(200.0) == pytest.approx(80.0 / 3.0)


# --------------------------------------------------------------------------
# control loops
# --------------------------------------------------------------------------
def test_a_heartbeat_timeout_its_register_cannot_hold_is_rejected(tmp_path):
    """2.5 s was taken; its u16 register read 2 and the PLC tripped at 3.0 s."""
    d = small_site()
    d["plc"]["heartbeat_timeout_s"] = 2.5
    bad(tmp_path, d, "plc.heartbeat_timeout_s", "2.5 is not a whole number of seconds")


def test_control_loop_on_an_unknown_point_is_rejected(tmp_path):
    d = small_site()
    d["control_loops"][0]["measurement"] = "tank01.fluid_tmp"
    bad(tmp_path, d, "control_loops[0].measurement", "no point named 'tank01.fluid_tmp'")


def test_control_loop_driving_an_unknown_point_is_rejected(tmp_path):
    d = small_site()
    d["control_loops"][0]["actuators"] = ["tank01.valve_cmd", "tank09.valve_cmd"]
    bad(tmp_path, d, "control_loops[0].actuators", "no point named 'tank09.valve_cmd'")


@pytest.mark.parametrize("act", ["tank01.valve_pos", "tank01.fluid_temp", "tank01.enable"])
def test_control_loop_driving_a_read_only_or_bit_point_is_rejected(tmp_path, act):
    d = small_site()
    d["control_loops"][0]["actuators"] = [act]
    bad(tmp_path, d, "control_loops[0].actuators", act, "not a writable holding register")


@pytest.mark.parametrize(
    ("meas", "why"),
    [
        ("tank01.leak", "is a status bit, not a measurement"),
        ("tank01.valve_cmd", "is a command the controller writes, not a measurement"),
    ],
)
def test_control_loop_measuring_a_bit_or_its_own_command_is_rejected(tmp_path, meas, why):
    d = small_site()
    d["control_loops"][0]["measurement"] = meas
    bad(tmp_path, d, "control_loops[0].measurement", meas, why)


def test_two_control_loops_on_one_actuator_are_rejected(tmp_path):
    """A copy-paste error once passed: two PIDs fought over tank01's valve."""
    d = small_site()
    d["control_loops"].append({**d["control_loops"][0], "name": "tank01_fluid_b"})
    last = len(d["control_loops"]) - 1
    bad(tmp_path, d, f"control_loops[{last}].actuators", "already driven by loop 'tank01_fluid'")
    d = small_site()
    d["control_loops"][0]["actuators"] = ["tank01.valve_cmd", "tank01.valve_cmd"]
    bad(tmp_path, d, "control_loops[0].actuators", "already driven by this loop")


@pytest.mark.parametrize("sp", [500.0, -100.0])
def test_a_setpoint_its_measurement_cannot_read_is_rejected(tmp_path, sp):
    d = small_site()
    d["control_loops"][0]["setpoint"] = sp
    bad(tmp_path, d, "control_loops[0].setpoint", "outside what 'tank01.fluid_temp' may hold")


@pytest.mark.parametrize(
    ("k", "sp", "range_", "why"),
    [
        # tank01 alarms at 60 degC (ASIC default): 57.5 is the highest it may hold
        (0, 57.6, "20..57.5 degC", "2.5 K below the tank's fluid_alarm_c 60"),
        # loop1 alarms at 45 degC: trim & respond may raise its supply 6 K
        (5, 39.5, "10..39 degC", "the loop's supply_alarm_c 45 less the 6 K trim & respond"),
        (6, 300.0, "40..250 kPa", "the pumps' rated head"),
    ],
)
def test_a_file_setpoint_the_command_path_would_refuse_is_refused_at_load(
    tmp_path, k, sp, range_, why
):
    """The prober's site took 95 degC for a tank and a loop setpoint above its alarm:
    accepted at load, refused when an operator asked for the same value."""
    d = small_site()
    d["control_loops"][k]["setpoint"] = sp
    err = bad(tmp_path, d, f"control_loops[{k}].setpoint", f"{sp:g} is outside", range_, why)
    # at the edge of the range: taken
    d["control_loops"][k]["setpoint"] = float(range_.split("..")[1].split()[0])
    assert load_site(write(tmp_path, d)).control_loops[k].setpoint < sp, err


@pytest.mark.parametrize("act", ["tank01.power_budget_kw", "row1.gpu_power_cap_w", "plc.heartbeat"])
def test_a_pid_on_a_register_the_planner_or_watchdog_owns_is_refused(tmp_path, act):
    d = small_site()
    d["control_loops"][0]["actuators"] = [act]
    err = bad(tmp_path, d, "control_loops[0].actuators", act, "not a regulating actuator")
    assert err.reason.startswith("loop 'tank01_fluid': ")  # not only its index


def test_a_site_with_no_control_loops_is_refused_naming_what_nothing_would_drive(tmp_path):
    """The prober's site had none: it passed --check and ran a heatwave with every valve,
    fan and pump where it was left (1,303 degC*min over the limits, 0 with loops)."""
    d = small_site()
    del d["control_loops"]
    err = bad(tmp_path, d, "control_loops", "has no [[control_loops]]", "regulated_elsewhere")
    # tank01-04 and cdu1; loop1's dry cooler; its two pumps
    assert "5 valves, 1 dry cooler, 2 pumps that nothing would drive" in err.reason


def test_an_actuator_no_loop_drives_is_refused_unless_another_controller_runs_it(tmp_path):
    d = small_site()
    d["control_loops"] = [c for c in d["control_loops"] if c["name"] != "cdu1_supply"]
    bad(tmp_path, d, "control_loops", "leaves unregulated: 1 valve", "cdu1.valve_cmd")
    # the CDU's own controller holds its supply: said so, the site loads
    d["site"]["regulated_elsewhere"] = ["cdu1.valve_cmd"]
    site = load_site(write(tmp_path, d))
    assert site.regulated_elsewhere == ("cdu1.valve_cmd",)
    assert all("cdu1.valve_cmd" not in c.actuators for c in site.control_loops)


@pytest.mark.parametrize(
    "meas", ["tank01.fluid_temp_b", "tank01.return_temp", "cdu1.return_temp", "row1.gpu_temp_max"]
)
def test_a_loop_on_a_quantity_no_limit_is_defined_for_is_refused(tmp_path, meas):
    """tank01.fluid_temp_b held at 70 degC (its tank alarms at 60) passed: only the
    quantities a control loop holds have setpoint limits, so only they are taken."""
    d = small_site()
    d["control_loops"][0]["measurement"] = meas
    d["control_loops"][0]["setpoint"] = 50.0
    bad(tmp_path, d, "control_loops[0].measurement", meas, "not what a control loop holds")


def test_a_loop_moving_another_tanks_valve_is_refused(tmp_path):
    """Measuring tank02 while driving tank01's valve passed: tank01 went unregulated."""
    d = small_site()
    d["control_loops"][0]["measurement"] = "tank02.fluid_temp"
    bad(
        tmp_path,
        d,
        "control_loops[0].actuators",
        "'tank01.valve_cmd' does not move tank tank02's fluid",
        "what does: tank02.valve_cmd",
    )


def test_an_actuator_listed_twice_as_regulated_elsewhere_is_refused(tmp_path):
    d = small_site()
    d["control_loops"] = [c for c in d["control_loops"] if c["name"] != "cdu1_supply"]
    d["site"]["regulated_elsewhere"] = ["cdu1.valve_cmd", "cdu1.valve_cmd"]
    bad(tmp_path, d, "site.regulated_elsewhere", "'cdu1.valve_cmd' is listed twice")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tank01.valve_cmd", "driven by control loop 'tank01_fluid' here"),
        ("tank01.power_budget_kw", "not a regulating actuator"),
        ("cdu1.valve_cm", "not a regulating actuator"),
    ],
)
def test_regulated_elsewhere_names_only_actuators_no_loop_drives(tmp_path, name, why):
    d = small_site()
    d["site"]["regulated_elsewhere"] = [name]
    bad(tmp_path, d, "site.regulated_elsewhere", name, why)


def test_control_loop_output_beyond_the_actuator_range_is_rejected(tmp_path):
    d = small_site()
    d["control_loops"][0]["out_max"] = 120.0
    bad(tmp_path, d, "control_loops[0].out_max", "above the actuator's range 100")


# --------------------------------------------------------------------------
# the file itself
# --------------------------------------------------------------------------
def test_toml_syntax_error_names_the_line(tmp_path):
    text = render(small_site()).replace('name = "tank03"', "name = tank03")
    line = text.splitlines().index("name = tank03") + 1
    err = bad(tmp_path, text, "", "TOML syntax error")
    assert f"line {line}" in err.reason


def test_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_site(path)
    assert info.value.file == str(path)
    assert "not found" in info.value.reason


def test_non_utf8_file_is_a_config_error(tmp_path):
    raw = render(small_site()).replace("Test hall", "Halle \xe9").encode("latin-1")
    bad(tmp_path, raw, "", "not UTF-8")


def test_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_site(tmp_path)
    assert info.value.file == str(tmp_path)
    assert "directory" in info.value.reason


def test_empty_file_reports_the_missing_site_table(tmp_path):
    bad(tmp_path, "", "site", "required key is missing")


# --------------------------------------------------------------------------
# the built-in demo site
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo() -> Site:
    return demo_site()


def _loads(site: Site) -> tuple[dict[str, float], dict[str, float]]:
    """Rated load of every PDU and feeder (IT via PDUs, pumps and fans direct)."""
    pdu = {d.name: 0.0 for d in site.pdus}
    for t in site.tanks:
        pdu[t.pdu] += t.rated_kw
    for r in site.rack_rows:
        pdu[r.pdu] += r.rated_kw
    feeder = {f.name: 0.0 for f in site.feeders}
    for d in site.pdus:
        feeder[d.feeder] += pdu[d.name]
    for lp in site.loops:
        feeder[lp.feeder] += sum(p.rated_power_kw for p in lp.pumps)
        feeder[lp.feeder] += sum(dc.fans * dc.fan_power_kw for dc in lp.dry_coolers)
    return pdu, feeder


def test_demo_site_has_a_hybrid_hall(demo):
    assert sum(t.workload == "asic" for t in demo.tanks) >= 10
    assert sum(t.workload == "gpu" for t in demo.tanks) >= 2
    assert len(demo.rack_rows) >= 2
    cdus = {c.name for c in demo.cdus}
    assert all(r.cdu in cdus for r in demo.rack_rows)
    assert len({r.cdu for r in demo.rack_rows}) >= 2
    assert len(demo.dry_coolers) >= 3
    assert demo.source == "<built-in demo site>"


def test_the_demo_hall_is_oversubscribed_as_hybrid_halls_are(demo):
    assert 3000.0 <= demo.it_rated_kw <= 5000.0
    # more IT installed than the grid connection feeds: something must be chosen
    assert demo.oversubscription == pytest.approx(1.4, abs=0.01)
    # the GPUs alone fit with room to spare (they come first); the miners alone do not
    gpu_kw = sum(t.rated_kw for t in demo.tanks if t.workload == "gpu")
    gpu_kw += sum(r.rated_kw for r in demo.rack_rows)
    mining_kw = demo.it_rated_kw - gpu_kw
    assert gpu_kw < 0.5 * demo.import_limit_kw < demo.import_limit_kw < mining_kw


def test_demo_loops_have_redundant_pumps_and_enough_dry_coolers(demo):
    for lp in demo.loops:
        heat = sum(t.rated_kw for t in demo.tanks if t.loop == lp.name)
        cdus = {c.name for c in demo.cdus if c.loop == lp.name}
        heat += sum(r.rated_kw for r in demo.rack_rows if r.cdu in cdus)
        assert heat > 0, lp.name
        assert len(lp.pumps) >= 2, lp.name
        # N+1: any one pump alone carries the rated heat within a 10 K water rise.
        one = min(p.rated_flow_m3h for p in lp.pumps)
        rise = heat / (one / 3.6 * lp.density_kg_l * lp.cp_kj_kgk)
        assert rise <= 10.0, (lp.name, rise)
        assert sum(dc.capacity_kw for dc in lp.dry_coolers) >= heat, lp.name


def test_demo_tanks_are_credible(demo):
    for t in demo.tanks:
        assert 1000.0 <= t.volume_l <= 2500.0, t.name
        assert 100.0 <= t.rated_kw <= 300.0, t.name
        assert t.fluid_density_kg_l == pytest.approx(0.8)
        assert t.fluid_cp_kj_kgk == pytest.approx(2.1)
        lim = t.limits
        assert lim.fluid_setpoint_c < lim.fluid_alarm_c < lim.fluid_trip_c
        assert lim.fluid_trip_c < lim.chip_throttle_c < lim.chip_trip_c
        if t.workload == "asic":
            assert 40.0 <= lim.fluid_setpoint_c <= 55.0, t.name
            assert lim.fluid_alarm_c == pytest.approx(60.0, abs=2.0)
            assert lim.fluid_trip_c == pytest.approx(65.0, abs=2.0)
            assert 85.0 <= lim.chip_throttle_c <= 95.0
        else:
            assert lim.chip_throttle_c == pytest.approx(87.0, abs=1.0)
    for r in demo.rack_rows:
        assert r.chip_throttle_c == pytest.approx(87.0, abs=1.0)


def test_demo_cdus_supply_within_ashrae_w45(demo):
    """W45: facility water to the CDUs at most 45 degC; racks supplied at or below it."""
    for c in demo.cdus:
        assert c.supply_setpoint_c <= 45.0, c.name
        facility = demo.loop(c.loop)
        assert facility.supply_setpoint_c < facility.supply_alarm_c <= 45.0, c.loop
        assert facility.supply_setpoint_c < c.supply_setpoint_c


def test_demo_pdus_and_feeders_stay_within_80_percent_of_their_breakers(demo):
    pdu, feeder = _loads(demo)
    for d in demo.pdus:
        assert d.breaker.continuous_pct == 80.0
        assert 0.0 < pdu[d.name] <= d.continuous_kw, d.name
    for f in demo.feeders:
        assert 0.0 < feeder[f.name] <= f.continuous_kw, f.name


def test_demo_file_is_what_the_generator_produces():

    text = demo_site_text()
    assert text == generate_site_toml(SiteSpec())


# --------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------
def test_generated_large_site_validates_with_over_10000_points(tmp_path):
    spec = SiteSpec(asic_tanks=400, gpu_tanks=66, rack_rows=33, tanks_per_plc=12)
    site = load_site(write(tmp_path, generate_site_toml(spec), "big.toml"))
    assert len(site.tanks) == 466
    assert len(site.rack_rows) == 33
    pmap = build_point_map(site)
    assert len(pmap) >= 10_000
    assert all(1 <= p.unit_id <= 247 for p in pmap)
    pdu, feeder = _loads(site)
    assert all(pdu[d.name] <= d.continuous_kw for d in site.pdus)
    assert all(feeder[f.name] <= f.continuous_kw for f in site.feeders)


def test_generated_small_site_gives_every_meter_vfd_and_cdu_its_own_unit_id(tmp_path):
    site = load_site(write(tmp_path, generate_site_toml(SiteSpec(asic_tanks=6)), "s.toml"))
    devices = [*site.feeders, *site.pdus, *site.pumps, *site.dry_coolers, *site.cdus]
    ids = [d.unit_id for d in devices]
    assert len(set(ids)) == len(ids)
    assert site.plc.unit_id not in ids
    assert site.meter_unit_id not in ids
    assert all(1 <= u <= 247 for u in ids)


def test_generator_refuses_more_devices_than_unit_ids_without_plc_spreading():
    with pytest.raises(ValueError, match="--tanks-per-plc"):
        generate_site_toml(SiteSpec(asic_tanks=400))


def _cli_spec(tanks: int, per_plc: int, gpu: int | None = None, rows: int | None = None):
    """What `thermogate site --tanks N [--gpu-tanks M] [--rows R] --tanks-per-plc K` asks for."""
    return SiteSpec(
        name="Generated hall",
        asic_tanks=tanks,
        gpu_tanks=gpu if gpu is not None else max(1, tanks // 6),
        rack_rows=rows if rows is not None else max(1, tanks // 12),
        tanks_per_plc=per_plc,
    )


@pytest.mark.parametrize(
    ("tanks", "per_plc", "gpu", "rows"),
    [(600, 8, None, None), (1000, 8, None, None), (2000, 16, None, None), (1000, 10, 200, 100)],
)
def test_sites_with_more_loops_than_the_main_plcs_skid_slots_generate_and_load(
    tanks, per_plc, gpu, rows
):
    """Above 112 cooling loops every skid sat on the main PLC's loop region
    (100..999, 8 inputs each) and `thermogate site --tanks 1000 --tanks-per-plc 8`
    failed whatever --tanks-per-plc said: later skids go to their first tank's PLC."""
    from thermogate.plc.pointmap import slots_per_unit
    from thermogate.plc.site import parse_site_text

    site = parse_site_text(generate_site_toml(_cli_spec(tanks, per_plc, gpu, rows)))
    assert len(site.tanks) == tanks + (gpu if gpu is not None else max(1, tanks // 6))
    on_main = [lp for lp in site.loops if lp.unit_id == site.plc.unit_id]
    assert len(on_main) <= slots_per_unit("loop")
    assert all(lp.unit_id in site.plc_units for lp in site.loops)
    first: dict[str, int] = {}  # loop -> the PLC of its first tank or row
    for t in site.tanks:
        first.setdefault(t.loop, t.unit_id)
    cdu_loop = {c.name: c.loop for c in site.cdus}
    for r in site.rack_rows:
        first.setdefault(cdu_loop[r.cdu], r.unit_id)
    moved = site.loops[slots_per_unit("loop") :]
    assert all(lp.unit_id == first[lp.name] for lp in moved)
    pmap = build_point_map(site)
    assert all(1 <= p.unit_id <= 247 and 0 <= p.address < 65536 for p in pmap)


def test_a_site_needing_more_plcs_than_unit_ids_is_refused_saying_what_to_raise():
    with pytest.raises(ValueError) as exc:
        generate_site_toml(_cli_spec(1000, 4))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == (
        "1,249 tanks and rack rows at 4 per PLC need 313 PLC unit ids, more than the 246"
        " Modbus leaves them (1..247 less the site meter's 10): raise --tanks-per-plc to"
        " at least 6"
    )
    generate_site_toml(_cli_spec(1000, 6))  # the advice holds


def test_more_of_a_kind_on_one_plc_than_its_region_holds_is_refused_saying_what_to_lower():
    with pytest.raises(
        ValueError,
        match=r"^ASIC tanks on unit 1 outgrow its region \(875 slots,"
        r" addresses 1,000..14,999\): lower --tanks-per-plc \(from 1000; at least"
        r" 16 keeps within the unit ids\)$",
    ):
        generate_site_toml(_cli_spec(3000, 1000))
    with pytest.raises(ValueError, match=r"GPU tanks on unit 1 outgrow .* lower --tanks-per-plc"):
        generate_site_toml(_cli_spec(0, 400, gpu=400, rows=0))
    # At the fewest tanks per PLC the unit ids allow, nothing is left to lower.
    from thermogate.plc.sitegen import _Units

    units = _Units(SiteSpec(asic_tanks=246 * 876, gpu_tanks=0, rack_rows=0, tanks_per_plc=876))
    for _ in range(875):
        units.place(1, "tank")
    with pytest.raises(ValueError, match=r"no --tanks-per-plc fits both .*: split the hall$"):
        units.place(1, "tank")


@settings(max_examples=20, deadline=None)
@given(
    tanks=st.integers(0, 1500),
    gpu=st.integers(0, 300),
    rows=st.integers(0, 150),
    per_plc=st.one_of(st.just(0), st.integers(1, 1200)),
)
def test_any_size_either_loads_or_is_refused_in_one_line_naming_the_option(
    tanks, gpu, rows, per_plc
):
    from thermogate.plc.site import parse_site_text

    spec = _cli_spec(tanks, per_plc, gpu, rows)
    try:
        text = generate_site_toml(spec)
    except ValueError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert "a site needs at least one" in msg or "--tanks-per-plc" in msg or "split" in msg
        return
    site = parse_site_text(text)
    assert len(site.tanks) + len(site.rack_rows) == tanks + gpu + rows


# --------------------------------------------------------------------------
# workloads and economics (what the gating planner weighs)
# --------------------------------------------------------------------------
def test_the_demo_describes_its_gpus_miners_and_economics():
    site = demo_site()
    assert site.gpus == sum(t.units * 8 for t in site.tanks if t.workload == "gpu") + sum(
        r.nodes * r.gpus_per_node for r in site.rack_rows
    )
    miner = site.tanks[0]
    assert miner.workload == "asic" and miner.gpus == 0
    assert miner.rated_th_s == pytest.approx(miner.rated_kw * 1000 / miner.miner_j_per_th)
    assert site.summary()["oversubscription"] == round(site.it_rated_kw / site.import_limit_kw, 2)


def test_breakeven_energy_price_of_a_miner():
    econ = demo_site().economics
    # 0.05 $/TH/day at 20 J/TH: a TH/s uses 0.48 kWh a day, so 104.17 $/MWh
    assert econ.mining_breakeven_usd_per_mwh(20.0) == pytest.approx(0.05 / 0.00048)


def test_economics_section_is_read_and_its_typos_are_named(tmp_path):
    d = small_site()
    d["economics"] = {"hashprice_usd_per_th_day": 0.04, "training_usd_per_gpu_h": 2.2}
    site = load_site(write(tmp_path, d))
    assert site.economics.hashprice_usd_per_th_day == 0.04
    assert site.economics.training_usd_per_gpu_h == 2.2
    assert site.economics.inference_usd_per_gpu_h == 2.5  # the default
    d["economics"] = {"hashprice_usd_per_th": 0.04}
    bad(tmp_path, d, "economics.hashprice_usd_per_th", "unknown key")


def test_gpu_keys_on_a_mining_tank_and_miner_keys_on_a_gpu_tank_are_refused(tmp_path):
    d = small_site()
    asic = next(i for i, t in enumerate(d["tanks"]) if t.get("workload") == "asic")
    d["tanks"][asic]["gpus_per_unit"] = 8
    bad(tmp_path, d, f"tanks[{asic}].gpus_per_unit", "only GPU tanks")
    d = small_site()
    d["tanks"][asic]["miner_j_per_th"] = 21.5
    site = load_site(write(tmp_path, d))
    assert site.tanks[asic].miner_j_per_th == 21.5
    d["tanks"][asic]["workload"] = "gpu"
    d["tanks"][asic]["workload_class"] = "inference"
    bad(tmp_path, d, f"tanks[{asic}].miner_j_per_th", "only ASIC tanks")


def test_gpu_full_power_must_be_above_idle(tmp_path):
    d = small_site()
    d["rack_rows"][0]["gpu_idle_w"] = 300.0
    d["rack_rows"][0]["gpu_full_w"] = 250.0
    bad(tmp_path, d, "rack_rows[0].gpu_full_w", "above")


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        (SiteSpec(asic_tanks=0, gpu_tanks=0, rack_rows=3), {"training", "inference"}),
        (SiteSpec(asic_tanks=0, gpu_tanks=2, rack_rows=0), {"training", "inference"}),
        (SiteSpec(asic_tanks=5, gpu_tanks=0, rack_rows=0), {"mining"}),
        (SiteSpec(asic_tanks=1, gpu_tanks=0, rack_rows=0), {"mining"}),
    ],
)
def test_halls_unlike_the_demo_load_and_simulate(tmp_path, spec, kinds):
    """A DLC-only AI hall could not be loaded (the relay's shed list defaulted to
    its mining tanks: none, and an empty list was refused) and a hall without
    rack rows crashed `simulate` (an empty mask of float dtype as an index)."""
    from thermogate.controller.simulate import run_simulation

    f = tmp_path / "site.toml"
    f.write_text(generate_site_toml(spec), encoding="utf-8")
    site = load_site(f)
    loads = [*site.tanks, *site.rack_rows]
    assert {ld.workload_class for ld in loads} <= kinds | {"inference", "training"}
    assert (
        site.grid.under_frequency_shed
        == tuple(t.name for t in site.tanks if t.workload_class == "mining")[
            : len(site.grid.under_frequency_shed)
        ]
    )
    res = run_simulation(site, "heatwave", 0.1, scan_s=5.0)
    assert res.summary["trips"] == 0 and res.summary["limit_violation_c_min"] == 0.0
    assert res.summary["energy_mwh"] > 0.0


def test_an_armed_relay_still_needs_something_to_shed(tmp_path):
    f = tmp_path / "site.toml"
    text = generate_site_toml(SiteSpec(asic_tanks=0, gpu_tanks=0, rack_rows=2))
    f.write_text(text + "\n[grid]\nunder_frequency_armed = true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="under_frequency_shed: armed with nothing to shed"):
        load_site(f)
