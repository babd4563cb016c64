"""The point map: one stable, non-overlapping, publishable contract with the PLC."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from sitefiles import TANK99

from thermogate.plc.pointmap import CSV_HEADER, PointMap, build_point_map
from thermogate.plc.points import BIT_TABLES, TABLES, Point
from thermogate.plc.site import demo_site, demo_site_text, load_site
from thermogate.plc.sitegen import SiteSpec, generate_site_toml

NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _generated(tmp_path: Path, spec: SiteSpec, name: str = "site.toml") -> PointMap:
    path = tmp_path / name
    path.write_text(generate_site_toml(spec), encoding="utf-8")
    return build_point_map(load_site(path))


@pytest.fixture(scope="module")
def demo_map() -> PointMap:
    return build_point_map(demo_site())


@pytest.fixture(scope="module", params=["demo", "multi-plc"])
def pmap(request, tmp_path_factory) -> PointMap:
    """The demo map, and a generated one whose devices share several PLC unit ids."""
    if request.param == "demo":
        return build_point_map(demo_site())
    spec = SiteSpec(asic_tanks=40, gpu_tanks=6, rack_rows=4, tanks_per_plc=12)
    return _generated(tmp_path_factory.mktemp("multi"), spec)


def _key(p: Point) -> tuple:
    return (p.unit_id, p.table, p.address, p.type)


# --------------------------------------------------------------------------
# names and addresses
# --------------------------------------------------------------------------
def test_every_point_has_a_unique_dotted_name(pmap):
    names = [p.name for p in pmap]
    assert len(set(names)) == len(names)
    bad = [n for n in names if not NAME.match(n)]
    assert not bad, bad[:5]
    assert set(pmap.by_name) == set(names)


def test_names_and_addresses_are_deterministic(demo_map):
    again = build_point_map(demo_site())
    assert again.points == demo_map.points


def test_addresses_never_overlap_and_follow_the_published_layout(pmap):
    """Dense from 0 on a device's own unit; fixed slots on a shared unit (a PLC)."""
    by_block: dict[tuple[int, str], list[Point]] = defaultdict(list)
    for p in pmap:
        by_block[(p.unit_id, p.table)].append(p)
    devices_on: dict[int, set[str]] = defaultdict(set)
    for p in pmap:
        devices_on[p.unit_id].add(p.name.rsplit(".", 1)[0])  # the equipment
    for (unit, table), pts in by_block.items():
        pts.sort(key=lambda p: p.address)
        for prev, nxt in itertools.pairwise(pts):
            assert nxt.address >= prev.end, (unit, table, prev.name, nxt.name)  # no overlap
        assert pts[-1].end <= 65536
        if len(devices_on[unit]) == 1:  # a meter, VFD or CDU on its own unit id
            assert pts[0].address == 0, (unit, table)
            for prev, nxt in itertools.pairwise(pts):
                assert nxt.address == prev.end, (unit, table, prev.name, nxt.name)
    # On shared units every piece of equipment's points are consecutive inside
    # its slot, and slots of one kind are a fixed stride apart.
    equipment: dict[tuple[int, str, str], list[Point]] = defaultdict(list)
    for p in pmap:
        if len(devices_on[p.unit_id]) > 1:
            equipment[(p.unit_id, p.name.rsplit(".", 1)[0], p.table)].append(p)
    for key, pts in equipment.items():
        for prev, nxt in itertools.pairwise(sorted(pts, key=lambda p: p.address)):
            assert nxt.address == prev.end, key
    starts = sorted(
        pts[0].address
        for (u, eq, t), pts in equipment.items()
        if u == 1 and t == "input" and eq.startswith("tank")
    )
    strides = {b - a for a, b in itertools.pairwise(starts)}
    assert len(strides) <= 1, strides


def test_bits_are_bool_and_bools_are_bits(pmap):
    for p in pmap:
        assert p.table in TABLES
        assert (p.type == "bool") == (p.table in BIT_TABLES), p.name
        assert p.words == (1 if p.type in ("bool", "u16", "i16") else 2)


def test_writable_points_are_only_holding_registers_or_coils(pmap):
    for p in pmap:
        if p.writable:
            assert p.table in ("holding", "coil"), p.name
        if p.table == "coil":
            assert p.writable, p.name  # a coil is the master's output by definition
    assert any(p.table == "holding" and not p.writable for p in pmap)  # e.g. valve_pos


def test_writable_registers_carry_a_range_for_write_checks(pmap):
    for p in pmap.writable():
        if p.table == "holding":
            assert p.min is not None and p.max is not None, p.name
            assert p.min < p.max, p.name


def test_heartbeat_is_holding_zero_of_the_plc(demo_map):
    site = demo_site()
    hb = demo_map["plc.heartbeat"]
    assert (hb.unit_id, hb.table, hb.address, hb.writable) == (site.plc.unit_id, "holding", 0, True)


def test_unit_ids_are_valid_modbus_slaves(pmap):
    assert all(1 <= u <= 247 for u in pmap.unit_ids())


def test_every_equipment_has_its_points(demo_map):
    site = demo_site()
    for t in site.tanks:
        for s in ("fluid_temp", "valve_cmd", "power_budget_kw", "enable", "interlock"):
            assert f"{t.name}.{s}" in demo_map.by_name
        assert (f"{t.name}.hashrate_ths" in demo_map.by_name) == (t.workload == "asic")
    for pump in site.pumps:
        assert demo_map[f"{pump.name}.speed_cmd"].unit_id == pump.unit_id
    for dc in site.dry_coolers:
        assert demo_map[f"{dc.name}.fan_cmd"].unit_id == dc.unit_id
    for r in site.rack_rows:
        assert demo_map[f"{r.name}.gpu_power_cap_w"].writable


# --------------------------------------------------------------------------
# publication
# --------------------------------------------------------------------------
def test_csv_header_is_exact(demo_map):
    first = demo_map.to_csv().splitlines()[0]
    assert first == (
        "name,unit_id,table,address,type,word_order,scale,unit,access,min,max,device,description"
    )
    assert tuple(first.split(",")) == CSV_HEADER


def test_the_json_and_csv_maps_say_the_same_of_every_point(demo_map):
    """The prober found them disagreeing: the JSON gave every f32 and u16 a word
    order ("big" for a one-register point) and a device; the CSV had no device."""
    as_json = {r["name"]: r for r in json.loads(demo_map.to_json())}
    for row in csv.DictReader(io.StringIO(demo_map.to_csv())):
        j = as_json[row["name"]]
        assert set(j) == set(row) == set(CSV_HEADER)
        for k in CSV_HEADER:
            want = "" if j[k] is None else (f"{j[k]:g}" if isinstance(j[k], float) else str(j[k]))
            assert row[k] == want, (row["name"], k)
    assert as_json["tank01.fluid_temp"]["word_order"] is None  # one register: no order
    assert as_json["pdu_tank01.power_kw"]["device"] == "pdu_tank01"


def test_the_csv_and_markdown_maps_say_which_word_comes_first(demo_map):
    """Only the JSON carried the word order: from the CSV, the PDU meters' floats
    (low word first) looked like the site meter's (high word first)."""
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(demo_map.to_csv()))}
    assert rows["site.power_kw"]["word_order"] == "big"
    assert rows["pdu_tank01.power_kw"]["word_order"] == "little"
    assert rows["tank01.fluid_temp"]["word_order"] == ""  # one register: no order
    md = demo_map.to_markdown()
    assert "| word_order |" in md.splitlines()[0]
    assert any(line.startswith("| pdu_tank01.power_kw |") and "| little |" in line
               for line in md.splitlines())  # fmt: skip


def test_csv_round_trips_through_dictreader(pmap):
    rows = list(csv.DictReader(io.StringIO(pmap.to_csv())))
    assert len(rows) == len(pmap)
    for row, p in zip(rows, pmap, strict=True):
        assert row["table"] in ("coil", "discrete", "input", "holding")
        assert row["name"] == p.name
        assert int(row["unit_id"]) == p.unit_id
        assert row["table"] == p.table
        assert int(row["address"]) == p.address
        assert row["type"] == p.type
        assert float(row["scale"]) == pytest.approx(p.scale, rel=1e-6)
        assert row["access"] == p.access
        assert row["unit"] == p.unit
        assert row["description"] == p.description
        for col, val in (("min", p.min), ("max", p.max)):
            if val is None:
                assert row[col] == "", (p.name, col)
            else:
                assert float(row[col]) == pytest.approx(val, rel=1e-6), (p.name, col)


def test_markdown_lists_every_point(demo_map):
    md = demo_map.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| " + " | ".join(CSV_HEADER) + " |"
    body = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert [ln.split(" | ")[0][2:] for ln in body] == [p.name for p in demo_map]
    # every row has the same number of cells (pipes in descriptions are escaped)
    cells = {len(re.split(r"(?<!\\)\|", ln)) for ln in body}
    assert cells == {len(CSV_HEADER) + 2}


def test_json_lists_every_point_with_its_fields(pmap):
    items = json.loads(pmap.to_json())
    assert [i["name"] for i in items] == [p.name for p in pmap]
    for i, p in zip(items, pmap, strict=True):
        assert (i["unit_id"], i["table"], i["address"], i["type"]) == _key(p)
        assert i["access"] == p.access
        assert i["scale"] == p.scale
        assert i["word_order"] == (p.word_order if p.words == 2 else None)
        assert (i["min"], i["max"]) == (p.min, p.max)
        assert i["device"] == p.device


# --------------------------------------------------------------------------
# control loops reference the map
# --------------------------------------------------------------------------
def test_every_demo_control_loop_references_existing_points(demo_map):
    site = demo_site()
    assert site.control_loops
    for cl in site.control_loops:
        assert cl.measurement in demo_map.by_name, cl.name
        assert not demo_map[cl.measurement].is_bit
        for act in cl.actuators:
            p = demo_map[act]
            assert p.writable and p.table == "holding", (cl.name, act)
            assert p.min <= cl.out_min < cl.out_max <= p.max, (cl.name, act)
    # every regulated actuator kind is under a loop
    driven = {a for cl in site.control_loops for a in cl.actuators}
    for t in site.tanks:
        assert f"{t.name}.valve_cmd" in driven
    for pump in site.pumps:
        assert f"{pump.name}.speed_cmd" in driven
    for dc in site.dry_coolers:
        assert f"{dc.name}.fan_cmd" in driven


# --------------------------------------------------------------------------
# stability for integrators: growing a site never moves an existing point
# --------------------------------------------------------------------------
def _moved(before: PointMap, after: PointMap) -> list[str]:
    out = []
    for p in before:
        q = after.by_name.get(p.name)
        if q is None or _key(q) != _key(p) or q.description != p.description:
            out.append(p.name)
    return out


def test_adding_a_tank_to_a_generated_site_moves_no_existing_point(tmp_path):
    """10 vs 11 ASIC tanks (same loops): every point keeps its name and address.

    (A generated site that grows a whole new cooling loop adds that loop's
    slot on the PLC before the AI loops' slots; a hand-edited file that
    appends equipment at the end of its list moves nothing, tested below.)

    Integrators program PLCs and SCADA from the published map; a site that
    grows by one tank must not invalidate their work.
    """
    before = _generated(tmp_path, SiteSpec(asic_tanks=10), "a.toml")
    after = _generated(tmp_path, SiteSpec(asic_tanks=11), "b.toml")
    assert len(after) > len(before)
    moved = _moved(before, after)
    assert not moved, f"{len(moved)} of {len(before)} points moved, e.g. {moved[:6]}"


def test_appending_a_tank_to_a_site_file_moves_no_existing_point(tmp_path):
    """The hand-edited case: a tank (with its PDU and feeder) appended at the end of the file."""
    text = demo_site_text()
    extra = TANK99
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(text, encoding="utf-8")
    b.write_text(text + extra, encoding="utf-8")
    before, after = build_point_map(load_site(a)), build_point_map(load_site(b))
    assert "tank99.fluid_temp" in after.by_name
    moved = _moved(before, after)
    assert not moved, f"{len(moved)} of {len(before)} points moved, e.g. {moved[:6]}"


# -- the typed index -----------------------------------------------------------
def test_the_index_names_every_point_exactly_once(pmap):
    """Every point is reachable through the index, under its equipment and attribute,
    and nothing in the index points anywhere else."""
    seen: dict[int, str] = {}
    for group in pmap.index.groups():
        for attr, pos in group.items():
            assert pos not in seen, f"{pmap.name_of(pos)} indexed twice"
            seen[pos] = attr
            assert pmap.name_of(pos) == type(group).point_name(group.name, attr)
    assert sorted(seen) == list(range(len(pmap)))


def test_the_index_lines_up_with_the_site_description():
    site = demo_site()
    ix = build_point_map(site).index
    assert [tp.name for tp in ix.tanks] == [t.name for t in site.tanks]
    assert [rp.name for rp in ix.rows] == [r.name for r in site.rack_rows]
    assert [p.name for p in ix.pumps] == [p.name for p in site.pumps]
    assert ix.tank["tank01"] is ix.tanks[0]
    # a miner tank reports its hashrate; a GPU tank has no such point
    gpu = next(t for t in site.tanks if t.workload == "gpu")
    assert ix.tanks[0].hashrate_ths is not None
    assert ix.tank[gpu.name].hashrate_ths is None


def test_the_site_ambient_is_indexed_under_the_plc_that_reads_it(demo_map):
    assert demo_map.name_of(demo_map.index.plc.ambient_temp) == "site.ambient_temp"
    assert demo_map.name_of(demo_map.index.plc.heartbeat) == "plc.heartbeat"


def test_a_misspelled_point_fails_with_a_hint(demo_map):
    from thermogate.plc.pointtable import TankPoints

    with pytest.raises(KeyError, match=r"did you mean 'tank01\.fluid_temp'"):
        demo_map.position("tank01.fluid_tmp")
    with pytest.raises(KeyError, match="tank has no point 'fluid_tmp'"):
        TankPoints.point_name("tank01", "fluid_tmp")
    with pytest.raises(AttributeError):
        demo_map.index.tanks[0].fluid_tmp  # noqa: B018 - the access itself is the test


def test_a_map_of_loose_points_has_no_index():
    pm = PointMap((Point("a.x", 1, "input", 0, "u16"),))
    assert pm.position("a.x") == 0
    with pytest.raises(ValueError, match="not built from a site description"):
        pm.index  # noqa: B018
