"""The point map: every Modbus point of a site, derived from its description.

This is the one place a point is declared. Names are stable and dotted
(``tank03.fluid_temp``); each device answers on its own unit id as on a real
site (PLC, site and feeder meters, PDU meters, pump and fan VFDs, CDUs);
addresses are 0-based and allocated in file order per unit and table, so a
PLC programmer can implement the map from ``thermogate points --format csv``.

Types and scales follow common field practice so the codec is exercised the
way real devices use it: temperatures as i16 in 0.1 °C, percentages as u16 in
0.1 %, meter quantities as IEEE-754 f32 (energy counters as u32, one meter
family with low word first).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from .equipment import Site
from .points import BIT_TABLES, TYPE_WORDS, Point
from .pointtable import (
    CduPoints,
    DryCoolerPoints,
    FeederPoints,
    G,
    GroupPoints,
    LoopPoints,
    PduPoints,
    PlcPoints,
    PointIndex,
    PumpPoints,
    RowPoints,
    SiteMeterPoints,
    TankPoints,
)

#: Header of the published CSV; integrators' tooling keys on it, keep it exact.
CSV_HEADER = (
    "name",
    "unit_id",
    "table",
    "address",
    "type",
    "word_order",
    "scale",
    "unit",
    "access",
    "min",
    "max",
    "device",
    "description",
)

#: PLC status register bits (``plc.status``).
STATUS_SAFE_STATE = 1 << 0  # watchdog fallback active
STATUS_INTERLOCK = 1 << 1  # at least one hard interlock latched
STATUS_HEARTBEAT_OK = 1 << 2  # heartbeat changed within the timeout
STATUS_LEAK = 1 << 3  # any leak detected
STATUS_UFLS_TRIPPED = 1 << 4  # the under-frequency relay has shed its load


@dataclass
class PointMap:
    """The ordered points of a site with lookups by name, position and unit.

    Position ``i`` is point ``i`` in every per-scan array (values, quality,
    fresh bits). A map built from a site description also carries its typed
    index (``index``); code asks it for positions instead of spelling names.
    """

    points: tuple[Point, ...]
    _index: PointIndex | None = field(default=None, repr=False)
    by_name: dict[str, Point] = field(init=False, repr=False)
    _position: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.points}
        if len(self.by_name) != len(self.points):
            seen: set[str] = set()
            for p in self.points:
                if p.name in seen:
                    raise ValueError(f"duplicate point name '{p.name}'")
                seen.add(p.name)
        self._position = {p.name: i for i, p in enumerate(self.points)}

    @property
    def index(self) -> PointIndex:
        """Positions of every point by equipment and attribute (``pointtable.py``)."""
        if self._index is None:
            raise ValueError("this point map was not built from a site description: no index")
        return self._index

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __getitem__(self, name: str) -> Point:
        return self.points[self.position(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._position

    def position(self, name: str) -> int:
        """Where point ``name`` is in the map; an unknown name raises, with a hint."""
        try:
            return self._position[name]
        except KeyError:
            near = difflib.get_close_matches(name, self._position, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else " (see `thermogate points`)"
            raise KeyError(f"no point named '{name}'{hint}") from None

    def name_of(self, i: int) -> str:
        return self.points[i].name

    def unit_ids(self) -> list[int]:
        return sorted({p.unit_id for p in self.points})

    def for_unit(self, unit_id: int) -> list[Point]:
        return [p for p in self.points if p.unit_id == unit_id]

    def writable(self) -> list[Point]:
        return [p for p in self.points if p.writable]

    # -- publication -------------------------------------------------------
    def rows(self) -> list[dict[str, object]]:
        return [
            {
                "name": p.name,
                "unit_id": p.unit_id,
                "table": p.table,
                "address": p.address,
                "type": p.type,
                # which register holds the high word: a two-register type only
                "word_order": p.word_order if p.words == 2 else "",
                "scale": p.scale,
                "unit": p.unit,
                "access": p.access,
                "min": None if p.min is None else float(p.min),  # 0.0, never 0 beside 0.5
                "max": None if p.max is None else float(p.max),
                # the Modbus device answering for it: its own, or the PLC it is wired to
                "device": p.device,
                "description": p.description,
            }
            for p in self.points
        ]

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for row in self.rows():
            w.writerow([_fmt(row[k]) for k in CSV_HEADER])
        return buf.getvalue()

    def to_json(self) -> str:
        """The rows of the CSV and Markdown maps, as JSON (absent bounds: null)."""
        rows = [{**r, "word_order": r["word_order"] or None} for r in self.rows()]
        return json.dumps(rows, indent=1)

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(CSV_HEADER) + " |",
            "|" + "---|" * len(CSV_HEADER),
        ]
        for row in self.rows():
            lines.append(
                "| " + " | ".join(_fmt(row[k]).replace("|", "\\|") for k in CSV_HEADER) + " |"
            )
        return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def build_point_map(site: Site) -> PointMap:
    """Derive every point of ``site`` from the table (``pointtable.py``); pure and
    deterministic. The map carries the typed index of what it built."""
    points: list[Point] = []

    def emit(
        cls: type[G],
        record: object,
        name: str,
        device: str,
        unit_id: int,
        what: str = "",
        units: str = "",
    ) -> G:
        """One piece of equipment's points, in the table's order; its index entry."""
        text = {"n": name, "what": what, "units": units}
        pos: dict[str, int | None] = {}
        for attr, spec in cls.specs():
            if spec.only is not None and not spec.only(record):
                pos[attr] = None
                continue
            pos[attr] = len(points)
            points.append(
                Point(
                    name=f"{spec.prefix or name}.{attr}",
                    unit_id=unit_id,
                    table=spec.table,
                    address=0,  # _layout places it
                    type="bool" if spec.table in BIT_TABLES else spec.type,
                    scale=spec.scale,
                    unit=spec.unit,
                    access=spec.access,
                    min=spec.lo(record) if callable(spec.lo) else spec.lo,
                    max=spec.hi(record) if callable(spec.hi) else spec.hi,
                    description=spec.description.format(**text),
                    # the kind's word order is about its two-register values
                    word_order=cls.word_order if TYPE_WORDS[spec.type] == 2 else "big",
                    device=device,
                )
            )
        return cls(name, **pos)

    plc = emit(PlcPoints, site.plc, "plc", "plc", site.plc.unit_id)
    meter = emit(
        SiteMeterPoints, site, "site", "site_meter", site.meter_unit_id, SiteMeterPoints.label
    )
    feeders = tuple(
        emit(FeederPoints, f, f.name, f.name, f.unit_id, f"feeder {f.name}") for f in site.feeders
    )
    pdus = tuple(emit(PduPoints, d, d.name, d.name, d.unit_id, f"PDU {d.name}") for d in site.pdus)
    loops: list[LoopPoints] = []
    pumps: list[PumpPoints] = []
    coolers: list[DryCoolerPoints] = []
    for lp in site.loops:  # a loop's skid, then its pumps and dry coolers
        loops.append(emit(LoopPoints, lp, lp.name, lp.name, lp.unit_id))
        pumps += [emit(PumpPoints, p, p.name, p.name, p.unit_id) for p in lp.pumps]
        coolers += [emit(DryCoolerPoints, d, d.name, d.name, d.unit_id) for d in lp.dry_coolers]
    tanks = tuple(
        emit(
            TankPoints,
            t,
            t.name,
            t.name,
            t.unit_id,
            units="miners" if t.workload == "asic" else "GPU nodes",
        )
        for t in site.tanks
    )
    cdus = tuple(emit(CduPoints, c, c.name, c.name, c.unit_id) for c in site.cdus)
    rows = tuple(emit(RowPoints, r, r.name, r.name, r.unit_id) for r in site.rack_rows)
    index = PointIndex(
        plc, meter, feeders, pdus, tuple(loops), tuple(pumps), tuple(coolers), tanks, cdus, rows
    )
    return PointMap(tuple(_layout(points, site)), index)


# --------------------------------------------------------------------------
# address layout
# --------------------------------------------------------------------------
#: Regions of a unit shared by several pieces of equipment (a PLC or gateway):
#: category -> (base address, stride per table). Every piece of equipment gets
#: a fixed slot ``base + index * stride`` where ``index`` counts the earlier
#: equipment of its category on that unit, so appending equipment never moves
#: an existing point. Unused addresses inside a slot are reserved and read 0.
REGIONS: dict[str, tuple[int, dict[str, int]]] = {
    "system": (0, {"coil": 16, "discrete": 16, "input": 16, "holding": 16}),
    "loop": (100, {"coil": 2, "discrete": 2, "input": 8, "holding": 2}),
    "tank": (1000, {"coil": 2, "discrete": 4, "input": 16, "holding": 4}),
    "gpu_tank": (15000, {"coil": 2, "discrete": 4, "input": 16, "holding": 4}),
    "rack_row": (20000, {"coil": 2, "discrete": 2, "input": 8, "holding": 2}),
    "cdu": (30000, {"coil": 1, "discrete": 2, "input": 4, "holding": 2}),
    "pump": (32000, {"coil": 1, "discrete": 2, "input": 2, "holding": 1}),
    "dry_cooler": (34000, {"coil": 1, "discrete": 1, "input": 4, "holding": 1}),
    "feeder": (40000, {"coil": 1, "discrete": 2, "input": 8, "holding": 1}),
    "pdu": (44000, {"coil": 1, "discrete": 2, "input": 8, "holding": 1}),
    "site_meter": (60000, {"coil": 1, "discrete": 1, "input": 12, "holding": 1}),
}
_REGION_ORDER = list(REGIONS)
#: what each category's slots hold (their tables)
_KIND_POINTS: dict[str, type[GroupPoints]] = {
    "loop": LoopPoints,
    "tank": TankPoints,
    "gpu_tank": TankPoints,
    "rack_row": RowPoints,
    "cdu": CduPoints,
    "pump": PumpPoints,
    "dry_cooler": DryCoolerPoints,
    "feeder": FeederPoints,
    "pdu": PduPoints,
}


def region_span(category: str) -> tuple[int, int]:
    """The first and last address of a category's region on a shared unit."""
    base = REGIONS[category][0]
    following = _REGION_ORDER.index(category) + 1
    limit = REGIONS[_REGION_ORDER[following]][0] if following < len(_REGION_ORDER) else 65536
    return base, limit - 1


def slots_per_unit(category: str) -> int:
    """How many pieces of equipment of ``category`` one shared unit (a PLC) holds:
    its region's addresses over its slot's stride, in the tightest table it uses."""
    first, last = region_span(category)
    strides = REGIONS[category][1]
    tables = {spec.table for _, spec in _KIND_POINTS[category].specs()}
    return min((last + 1 - first) // strides[t] for t in tables)


def _categories(site: Site) -> dict[str, str]:
    cat = {"plc": "system", "site_meter": "site_meter"}
    cat.update({f.name: "feeder" for f in site.feeders})
    cat.update({d.name: "pdu" for d in site.pdus})
    cat.update({lp.name: "loop" for lp in site.loops})
    cat.update({p.name: "pump" for p in site.pumps})
    cat.update({d.name: "dry_cooler" for d in site.dry_coolers})
    # ASIC and GPU tanks in separate regions: either list can grow on its own.
    cat.update({t.name: "tank" if t.workload == "asic" else "gpu_tank" for t in site.tanks})
    cat.update({c.name: "cdu" for c in site.cdus})
    cat.update({r.name: "rack_row" for r in site.rack_rows})
    return cat


def _layout(points: list[Point], site: Site) -> list[Point]:
    """Final addresses: dense from 0 on a device's own unit, slotted on shared units.

    ``device`` becomes the Modbus device answering for the point: the
    equipment itself on its own unit id, the PLC (``plc``, or ``plc<unit>``
    for further PLCs) where several pieces of equipment share one.
    """
    from dataclasses import replace

    cat = _categories(site)
    owners: dict[int, list[str]] = {}
    for p in points:
        devs = owners.setdefault(p.unit_id, [])
        if p.device not in devs:
            devs.append(p.device)
    out: list[Point] = []
    slot_base: dict[tuple[int, str], int] = {}  # (unit, device) -> slot index
    seen_in_cat: dict[tuple[int, str], int] = {}
    nxt: dict[tuple[int, str, str], int] = {}  # (unit, device, table) -> next address
    for p in points:
        shared = len(owners[p.unit_id]) > 1
        if not shared:
            key = (p.unit_id, p.device, p.table)
            addr = nxt.get(key, 0)
            nxt[key] = addr + p.words
            out.append(replace(p, address=addr))
            continue
        c = cat[p.device]
        if (p.unit_id, p.device) not in slot_base:
            idx = seen_in_cat.get((p.unit_id, c), 0)
            seen_in_cat[(p.unit_id, c)] = idx + 1
            slot_base[(p.unit_id, p.device)] = idx
        idx = slot_base[(p.unit_id, p.device)]
        base, strides = REGIONS[c]
        stride = strides[p.table]
        start = base + idx * stride
        key = (p.unit_id, p.device, p.table)
        addr = nxt.get(key, start)
        nxt[key] = addr + p.words
        if addr + p.words > start + stride:
            raise AssertionError(f"slot of {p.device} overflows its {p.table} stride")
        last = region_span(c)[1]
        if addr + p.words > last + 1:
            raise ValueError(
                f"too many {c.replace('_', ' ')}s on unit {p.unit_id} for its address region "
                f"({base}..{last}): spread them over more PLCs (unit ids)"
            )
        device = "plc" if p.unit_id == site.plc.unit_id else f"plc{p.unit_id}"
        out.append(replace(p, address=addr, device=device))
    return out
