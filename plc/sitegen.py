"""Generate credible site descriptions: the built-in demo and large test sites.

The generator sizes equipment the way a design engineer would: PDU and feeder
breakers so the rated load stays within 80 % of the rating, water flow for an
8 K rise across the heat exchangers, N+1 pumps that each carry the design flow,
and dry coolers with ~20 % spare capacity at the design ambient. Its output is
ordinary TOML that ``load_site`` validates like any hand-written file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .pointmap import region_span, slots_per_unit
from .pointtable import CduPoints, DryCoolerPoints, LoopPoints, PumpPoints, TankPoints

#: IEC standard breaker frame sizes (A).
BREAKER_SIZES_A = (
    100,
    125,
    160,
    200,
    250,
    315,
    400,
    500,
    630,
    800,
    1000,
    1250,
    1600,
    2000,
    2500,
    3200,
    4000,
    5000,
    6300,
)
LV_VOLTAGE_V = 415.0
POWER_FACTOR = 0.95
WATER_CP = 3.84  # kJ/(kg K), 30 % propylene glycol
WATER_RHO = 1.04  # kg/L
DESIGN_RISE_K = 8.0  # water temperature rise across the HXs at design load

MINER_KW = 5.5  # immersion-cooled SHA-256 miner, ~16.5 J/TH at nameplate
MINERS_PER_TANK = 46
GPU_NODE_KW = 10.2  # 8x H200 HGX node
GPU_NODES_PER_TANK = 16
NODES_PER_ROW = 32
ASIC_PER_LOOP = 12  # ~3 MW of mining per water loop
AI_PER_LOOP = 8  # GPU tanks and rack rows per water loop


@dataclass(frozen=True)
class SiteSpec:
    """What to generate: counts, and how many tanks share one PLC."""

    name: str = "Demo hybrid hall"
    asic_tanks: int = 12
    gpu_tanks: int = 2
    rack_rows: int = 2
    tanks_per_plc: int = 0  # 0: every tank and rack row on the main PLC
    tanks_per_feeder: int = 6
    #: installed IT over the grid import limit: hybrid halls install more miners
    #: and GPUs than their connection feeds at once, and choose what runs
    oversubscription: float = 1.4
    #: the first this many mining tanks are a Load Resource: the PLC's
    #: under-frequency relay sheds them (0: no [grid] section)
    ufls_shed_tanks: int = 8


def breaker_for(load_kw: float, voltage_v: float = LV_VOLTAGE_V) -> int:
    """Smallest standard breaker that carries ``load_kw`` within 80 % continuous."""
    amps = load_kw * 1000.0 / (math.sqrt(3.0) * voltage_v * POWER_FACTOR)
    need = amps / 0.8
    for size in BREAKER_SIZES_A:
        if size >= need:
            return size
    raise ValueError(f"{load_kw:.0f} kW at {voltage_v:g} V needs more than one feeder")


#: Unit-id blocks per kind of device on sites where every meter, VFD and CDU
#: has its own unit id: a site that grows by a tank (or a loop) keeps every
#: existing device on its unit id.
UNIT_BLOCKS: dict[str, range] = {
    "feeder_m": range(11, 18),
    "feeder_ai": range(18, 22),
    "feeder_mech_m": range(22, 26),
    "feeder_mech_ai": range(26, 30),
    "pdu_m": range(30, 130),
    "pdu_gpu": range(130, 140),
    "pdu_row": range(140, 150),
    "pump_m": range(150, 170),
    "pump_ai": range(170, 180),
    "dc_m": range(180, 220),
    "dc_ai": range(220, 230),
    "cdu": range(230, 248),
}


#: The unit ids PLCs may take on large sites: 1..247 less 10, the site meter.
PLC_UNIT_IDS = (*range(1, 10), *range(11, 248))

#: What a ``_Units`` kind is on a shared unit (its region), and in messages.
_CATEGORY = {
    "feeder_m": "feeder",
    "feeder_ai": "feeder",
    "feeder_mech_m": "feeder",
    "feeder_mech_ai": "feeder",
    "pdu_m": "pdu",
    "pdu_gpu": "pdu",
    "pdu_row": "pdu",
    "pump_m": "pump",
    "pump_ai": "pump",
    "dc_m": "dry_cooler",
    "dc_ai": "dry_cooler",
    "cdu": "cdu",
}
_PLURAL = {
    "loop": "cooling loops' skids",
    "tank": "ASIC tanks",
    "gpu_tank": "GPU tanks",
    "rack_row": "rack rows",
    "cdu": "CDUs",
    "pump": "pumps",
    "dry_cooler": "dry coolers",
    "feeder": "feeder meters",
    "pdu": "PDU meters",
}


class _Units:
    """Hands out unit ids: per-kind blocks on small sites, PLCs on large ones.

    Every piece of equipment on a PLC's unit takes a slot of that unit's region
    for its kind (``pointmap.REGIONS``); ``place`` counts them and refuses the
    first that would not fit, naming the limit and what to change."""

    def __init__(self, spec: SiteSpec) -> None:
        self.spec = spec
        self.used: dict[str, int] = {}
        self.loads = spec.asic_tanks + spec.gpu_tanks + spec.rack_rows
        self.n_plcs = max(1, math.ceil(self.loads / max(1, spec.tanks_per_plc)))
        if spec.tanks_per_plc > 0 and self.n_plcs > len(PLC_UNIT_IDS):
            raise ValueError(
                f"{self.loads:,} tanks and rack rows at {spec.tanks_per_plc} per PLC need"
                f" {self.n_plcs} PLC unit ids, more than the {len(PLC_UNIT_IDS)} Modbus leaves"
                f" them (1..247 less the site meter's 10): raise --tanks-per-plc to at least"
                f" {self.min_tanks_per_plc}"
            )
        self.rr = 0
        self.on_unit: dict[tuple[int, str], int] = {}  # (unit, category) -> slots taken

    @property
    def min_tanks_per_plc(self) -> int:
        """The fewest tanks per PLC that keep within the PLC unit ids."""
        return math.ceil(self.loads / len(PLC_UNIT_IDS))

    def plc_of(self, i: int) -> int:
        """The PLC carrying load ``i`` (ASIC tanks, GPU tanks, then rows)."""
        if self.spec.tanks_per_plc <= 0:
            return 1
        return PLC_UNIT_IDS[i // self.spec.tanks_per_plc]

    def take(self, kind: str) -> int:
        if self.spec.tanks_per_plc > 0:
            # Large sites: devices sit behind the PLCs (gateways), spread evenly.
            uid = self.plc_of((self.rr % self.n_plcs) * self.spec.tanks_per_plc)
            self.rr += 1
            return self.place(uid, _CATEGORY[kind])
        block = UNIT_BLOCKS[kind]
        k = self.used.get(kind, 0)
        if k >= len(block):
            raise ValueError(
                f"more than {len(block)} devices of kind '{kind}' for their unit-id block"
                f" ({block.start}..{block.stop - 1}): spread the site over PLCs"
                " (--tanks-per-plc)"
            )
        self.used[kind] = k + 1
        return block[k]

    def place(self, unit: int, category: str) -> int:
        """Count one more ``category`` slot on PLC ``unit``; refuse one that would not fit."""
        n = self.on_unit.get((unit, category), 0) + 1
        cap = slots_per_unit(category)
        if n > cap:
            first, last = region_span(category)
            what = f"{_PLURAL[category]} on unit {unit} outgrow its region"
            where = f"({cap} slots, addresses {first:,}..{last:,})"
            tpp = self.spec.tanks_per_plc
            if tpp <= 0:
                fix = "spread the site over PLCs (--tanks-per-plc)"
            elif self.min_tanks_per_plc < tpp:
                lo = self.min_tanks_per_plc
                fix = f"lower --tanks-per-plc (from {tpp}; at least {lo} keeps within the unit ids)"
            else:
                fix = "no --tanks-per-plc fits both the unit ids and the regions: split the hall"
            raise ValueError(f"{what} {where}: {fix}")
        self.on_unit[(unit, category)] = n
        return unit


def generate_site_toml(spec: SiteSpec) -> str:
    """Return the TOML text of a site sized from ``spec``.

    Names and unit ids are stable as a site grows: ASIC tanks are
    ``tank01..``, GPU tanks ``gpu01..``, rack rows ``row1..`` behind
    ``cdu1..``, mining loops ``loop1..`` and AI loops ``ailoop1..``.
    """
    for what in ("asic_tanks", "gpu_tanks", "rack_rows", "tanks_per_plc"):
        if getattr(spec, what) < 0:
            raise ValueError(f"{what} must not be negative")
    if spec.asic_tanks + spec.gpu_tanks + spec.rack_rows == 0:
        raise ValueError("a site needs at least one tank or rack row")
    out: list[str] = []
    emit = out.append
    units = _Units(spec)
    tank_kw = MINERS_PER_TANK * MINER_KW
    gtank_kw = GPU_NODES_PER_TANK * GPU_NODE_KW
    row_kw = NODES_PER_ROW * GPU_NODE_KW
    asic = [f"tank{i + 1:02d}" for i in range(spec.asic_tanks)]
    gpus = [f"gpu{i + 1:02d}" for i in range(spec.gpu_tanks)]
    rows = [f"row{i + 1}" for i in range(spec.rack_rows)]
    ai = gpus + rows  # AI equipment in a fixed order: GPU tanks, then rows
    kw_of = {
        **dict.fromkeys(asic, tank_kw),
        **dict.fromkeys(gpus, gtank_kw),
        **dict.fromkeys(rows, row_kw),
    }

    # Cooling loops of at most ~3 MW; mining and AI apart, as their fluid
    # temperatures differ. AI loops get more dry-cooler margin: inference is
    # the last load shed.
    loops: list[dict] = []
    for k in range(0, len(asic), ASIC_PER_LOOP):
        loops.append(
            {
                "name": f"loop{k // ASIC_PER_LOOP + 1}",
                "members": asic[k : k + ASIC_PER_LOOP],
                "ai": False,
                "dc_kw": 1200.0,
                "sp": 32.0,
                "min_dc": 3,
                "margin": 1.2,
            }
        )
    for k in range(0, len(ai), AI_PER_LOOP):
        loops.append(
            {
                "name": f"ailoop{k // AI_PER_LOOP + 1}",
                "members": ai[k : k + AI_PER_LOOP],
                "ai": True,
                "dc_kw": 700.0,
                "sp": 30.0,
                "min_dc": 3,
                "margin": 2.0,
            }
        )
    # PLC assignment order for large sites
    order = {m: i for i, m in enumerate(asic + gpus + rows)}
    main_loops = slots_per_unit("loop")  # skids the main PLC's loop region holds
    loop_of: dict[str, str] = {}
    for k, lp in enumerate(loops):
        # A skid is wired to the main PLC while its region holds them; later ones
        # to the PLC carrying the loop's first tank or row (None: the main PLC).
        lp["unit"] = None if k < main_loops else units.plc_of(order[lp["members"][0]])
        units.place(1 if lp["unit"] is None else lp["unit"], "loop")
        lp["kw"] = sum(kw_of[m] for m in lp["members"])
        lp["flow"] = _flow_m3h(lp["kw"])
        lp["pump_kw"] = _pump_kw(lp["flow"])
        lp["n_dc"] = max(lp["min_dc"], math.ceil(lp["kw"] * lp["margin"] / lp["dc_kw"]))
        lp["cooling_kw"] = 2 * lp["pump_kw"] + lp["n_dc"] * 10 * 2.2
        for m in lp["members"]:
            loop_of[m] = lp["name"]
    it_kw = sum(kw_of.values())
    import_kw = _round_to(it_kw / spec.oversubscription, 10.0)
    gpu_kw = sum(kw_of[m] for m in ai)

    emit("# thermogate site description (generated by `thermogate site`; edit freely,")
    emit("# `thermogate site --check FILE` validates it). Append new equipment at the")
    emit("# end of its list: the addresses of existing points then never move.")
    emit("[site]")
    emit(f'name = "{spec.name}"')
    mining_kw = it_kw - gpu_kw
    emit(f"# Oversubscribed as hybrid halls are built: {it_kw:,.0f} kW of IT ({mining_kw:,.0f} kW")
    emit(f"# of miners, {gpu_kw:,.0f} kW of GPUs) behind a {import_kw:,.0f} kW grid connection")
    emit(f"# ({it_kw / import_kw:.1f}x): not everything can run at once, so the gating planner")
    emit("# chooses what does.")
    emit(f"import_limit_kw = {import_kw:.0f}")
    emit("meter_voltage_v = 11000.0")
    emit("frequency_hz = 50.0")
    emit("meter_unit_id = 10")
    emit("design_ambient_c = 35.0")
    emit("scan_interval_s = 1.0")
    emit("")
    emit("[plc]")
    emit("unit_id = 1")
    emit("heartbeat_timeout_s = 10.0")
    emit("safe_gpu_cap_pct = 50.0")
    emit("leak_isolates_loop = true")

    # Feeders: IT feeders of `tanks_per_feeder` loads each, one mechanical
    # feeder per cooling loop.
    feeder_of: dict[str, str] = {}
    for kind, group in (("feeder_m", asic), ("feeder_ai", ai)):
        for k in range(0, len(group), spec.tanks_per_feeder):
            members = group[k : k + spec.tanks_per_feeder]
            name = f"{kind}{k // spec.tanks_per_feeder + 1}"
            _feeder(emit, name, sum(kw_of[m] for m in members), units.take(kind))
            for m in members:
                feeder_of[m] = name
    for lp in loops:
        lp["feeder"] = f"feeder_mech_{lp['name']}"
        kind = "feeder_mech_ai" if lp["ai"] else "feeder_mech_m"
        _feeder(emit, lp["feeder"], lp["cooling_kw"], units.take(kind))

    pdu_of: dict[str, str] = {}
    for group, kind in ((asic, "pdu_m"), (gpus, "pdu_gpu"), (rows, "pdu_row")):
        for m in group:
            pdu_of[m] = f"pdu_{m}"
            _pdu(emit, pdu_of[m], feeder_of[m], kw_of[m], units.take(kind))

    for lp in loops:
        flow, ai_loop = lp["flow"], lp["ai"]
        emit("")
        emit("[[loops]]")
        emit(f'name = "{lp["name"]}"')
        emit(f"volume_l = {_round_to(max(4000.0, flow * 60.0), 500.0):.0f}")
        emit("glycol_pct = 30.0")
        emit(f"supply_setpoint_c = {lp['sp']}")
        # Alarm where the tanks lose their margin at full load, not at the design
        # point: on a 42 degC afternoon the supply legitimately runs 12-14 K above it.
        # (AI loops feed CDUs: ASHRAE W45 caps facility water at 45 degC.)
        emit(f"supply_alarm_c = {min(lp['sp'] + 16.0, 45.0) if ai_loop else lp['sp'] + 16.0}")
        emit(f"min_flow_m3h = {_round_to(0.2 * flow, 1.0):.0f}")
        emit("low_flow_trip_s = 10.0")
        emit(f'feeder = "{lp["feeder"]}"')
        if lp["unit"] is not None:
            emit(f"unit_id = {lp['unit']}")
        for p in ("pump_a", "pump_b"):
            emit("[[loops.pumps]]")
            emit(f'name = "{p}"')
            emit(f"rated_flow_m3h = {_round_to(1.1 * flow, 5.0):.0f}")
            emit("rated_head_kpa = 250.0")
            emit(f"rated_power_kw = {lp['pump_kw']:.1f}")
            emit("min_speed_pct = 20.0")
            emit(f"unit_id = {units.take('pump_ai' if ai_loop else 'pump_m')}")
        for k in range(lp["n_dc"]):
            emit("[[loops.dry_coolers]]")
            emit(f'name = "dc{k + 1}"')
            emit(f"capacity_kw = {lp['dc_kw']:.0f}")
            emit("design_approach_k = 6.0")
            emit("fans = 10")
            emit("fan_power_kw = 2.2")
            emit(f"unit_id = {units.take('dc_ai' if ai_loop else 'dc_m')}")

    for t in asic + gpus:
        is_asic = t in asic
        emit("")
        emit("[[tanks]]")
        emit(f'name = "{t}"')
        emit(f'workload = "{"asic" if is_asic else "gpu"}"')
        emit(f'workload_class = "{"mining" if is_asic else "inference"}"')
        emit(f"units = {MINERS_PER_TANK if is_asic else GPU_NODES_PER_TANK}")
        emit(f"unit_power_kw = {MINER_KW if is_asic else GPU_NODE_KW}")
        emit(f"volume_l = {2000.0 if is_asic else 1600.0}")
        emit("hx_ua_kw_k = 30.0" if is_asic else "hx_ua_kw_k = 40.0")
        emit("dielectric_flow_l_s = 15.0" if is_asic else "dielectric_flow_l_s = 16.0")
        emit(f"design_water_flow_m3h = {36.0 if is_asic else 32.0}")
        emit(f'loop = "{loop_of[t]}"')
        emit(f'pdu = "{pdu_of[t]}"')
        plc = units.plc_of(order[t])
        emit(f"unit_id = {units.place(plc, 'tank' if is_asic else 'gpu_tank')}")

    cdu_of = {r: f"cdu{r[3:]}" for r in rows}
    for r in rows:
        emit("")
        emit("[[cdus]]")
        emit(f'name = "{cdu_of[r]}"')
        emit(f'loop = "{loop_of[r]}"')
        emit("tcs_volume_l = 400.0")
        emit("hx_ua_kw_k = 80.0")
        emit("tcs_flow_l_s = 9.0")
        emit("design_water_flow_m3h = 40.0")
        emit("supply_setpoint_c = 40.0")
        emit("supply_alarm_c = 48.0")
        emit("supply_trip_c = 55.0")
        emit(f"unit_id = {units.take('cdu')}")
    for r in rows:
        emit("")
        emit("[[rack_rows]]")
        emit(f'name = "{r}"')
        emit(f'cdu = "{cdu_of[r]}"')
        emit(f'pdu = "{pdu_of[r]}"')
        emit(f"nodes = {NODES_PER_ROW}")
        emit(f"node_power_kw = {GPU_NODE_KW}")
        emit("node_idle_kw = 1.6")
        emit('workload_class = "training"')
        emit(f"unit_id = {units.place(units.plc_of(order[r]), 'rack_row')}")

    # -- control loops: thermal loops produce actuator commands -------------
    for t in asic + gpus:
        _control(
            emit,
            f"{t}_fluid",
            TankPoints.point_name(t, "fluid_temp"),
            [TankPoints.point_name(t, "valve_cmd")],
            50.0 if t in asic else 45.0,
            kp=6.0,
            ki=0.02,
            out_min=5.0,
            slew=2.0,
        )
    for lp in loops:
        name = lp["name"]
        _control(
            emit,
            f"{name}_supply",
            LoopPoints.point_name(name, "supply_temp"),
            [DryCoolerPoints.point_name(f"{name}.dc{k + 1}", "fan_cmd") for k in range(lp["n_dc"])],
            lp["sp"],
            kp=10.0,
            ki=0.02,
            out_min=0.0,
            slew=1.0,
        )
        _control(
            emit,
            f"{name}_dp",
            LoopPoints.point_name(name, "dp"),
            [PumpPoints.point_name(f"{name}.{p}", "speed_cmd") for p in ("pump_a", "pump_b")],
            80.0,
            kp=0.1,
            ki=0.03,
            out_min=20.0,
            slew=2.0,
            action="reverse",  # more pump speed raises the differential pressure
        )
    for r in rows:
        c = cdu_of[r]
        _control(
            emit,
            f"{c}_supply",
            CduPoints.point_name(c, "supply_temp"),
            [CduPoints.point_name(c, "valve_cmd")],
            40.0,
            kp=2.0,
            ki=0.1,
            out_min=5.0,
            slew=3.0,
        )
    _grid(emit, asic[: spec.ufls_shed_tanks], sum(1 for _ in asic))
    return "\n".join(out) + "\n"


def _grid(emit: Callable[[str], None], shed: list[str], mining: int) -> None:
    if not shed:
        return
    mw = len(shed) * MINERS_PER_TANK * MINER_KW / 1000.0
    n, of = _count(len(shed)), _count(mining)
    emit("")
    emit("[grid]")
    emit(f"# A Load Resource: the PLC's own under-frequency relay sheds {n} of the")
    emit(f"# {of} mining tanks (about {mw:.0f} MW) when the grid sags to 49.7 Hz for 3")
    emit("# cycles, and holds them off until the frequency has stayed above 49.95 Hz")
    emit("# for 10 minutes and the grid operator releases them. GPU work is never shed.")
    emit("under_frequency_armed = true")
    emit("under_frequency_shed = [")
    for i in range(0, len(shed), 8):
        emit("    " + " ".join(f'"{n}",' for n in shed[i : i + 8]))
    emit("]")
    emit("# Curtailments are settled per 15-minute interval against the mean of the")
    emit("# same interval on the last 10 days.")
    emit("settlement_interval_s = 900")
    emit("baseline_count = 10")
    emit('baseline_like = "day"')


def _count(n: int) -> str:
    return _WORDS[n] if n < len(_WORDS) else str(n)


_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven")
_WORDS += ("eight", "nine", "ten", "eleven", "twelve")


def _feeder(emit: Callable[[str], None], name: str, kw: float, unit_id: int) -> str:
    emit("")
    emit("[[feeders]]")
    emit(f'name = "{name}"')
    emit(f"voltage_v = {LV_VOLTAGE_V}")
    emit(f"rating_a = {breaker_for(kw):.1f}")
    emit(f"unit_id = {unit_id}")
    return name


def _pdu(emit: Callable[[str], None], name: str, feeder: str, kw: float, unit_id: int) -> None:
    emit("")
    emit("[[pdus]]")
    emit(f'name = "{name}"')
    emit(f'feeder = "{feeder}"')
    emit(f"voltage_v = {LV_VOLTAGE_V}")
    emit(f"rating_a = {breaker_for(kw):.1f}")
    emit(f"unit_id = {unit_id}")


def _control(
    emit: Callable[[str], None],
    name: str,
    meas: str,
    acts: list[str],
    sp: float,
    *,
    kp: float,
    ki: float,
    out_min: float,
    slew: float,
    action: str = "direct",
) -> None:
    emit("")
    emit("[[control_loops]]")
    emit(f'name = "{name}"')
    emit(f'measurement = "{meas}"')
    emit("actuators = [" + ", ".join(f'"{a}"' for a in acts) + "]")
    emit(f"setpoint = {sp}")
    emit(f"kp = {kp}")
    emit(f"ki = {ki}")
    emit(f"out_min = {out_min}")
    emit("out_max = 100.0")
    emit(f"slew_per_s = {slew}")
    emit(f'action = "{action}"')


def _flow_m3h(kw: float) -> float:
    kg_s = kw / (WATER_CP * DESIGN_RISE_K)
    return kg_s / WATER_RHO * 3.6


def _pump_kw(flow_m3h: float, head_kpa: float = 250.0, eff: float = 0.7) -> float:
    return max(0.5, flow_m3h / 3600.0 * head_kpa / eff * 1.1)


def _round_to(x: float, step: float) -> float:
    return math.ceil(x / step) * step
