"""The site description: one TOML file from which every point is derived.

A site is its equipment (tanks, rack rows, CDUs, loops with pumps and dry
coolers, feeders, PDUs), the limits that protect it and the control loops that
regulate it. ``load_site`` validates the whole file before anything connects:
unknown keys, wrong types, out-of-range values, duplicate names and dangling
references (a tank on a loop that does not exist, a loop with no pump) are
each a ``ConfigError`` naming the file, the key and the reason.

Physical defaults are typical of single-phase immersion and direct-to-chip
halls: dielectric fluid ~0.8 kg/L with cp ~2.1 kJ/(kg·K), tanks of
1,000-2,500 L carrying 100-300 kW, miner fluid 40-55 °C in normal running with
an alarm near 60 °C and a trip near 65 °C, continuous load at most 80 % of a
breaker's rating.
"""

from __future__ import annotations

import re
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from .config import _MISSING, Section, load_toml, loads_toml
from .controlloops import (
    SUPPLY_RESET_MAX_K,
    THERMAL_SOFT_MARGIN_K,
    check_coverage,
    held_quantities,
    parse_control_loop,
    regulating_actuators,
)
from .equipment import (
    DEFAULT_CONTINUOUS_PCT,
    DEFAULT_POWER_FACTOR,
    Breaker,
    Cdu,
    ControlLoop,
    DryCooler,
    Economics,
    Feeder,
    GridConfig,
    Loop,
    Pdu,
    PlcConfig,
    Pump,
    RackRow,
    Site,
    Tank,
    TankLimits,
)
from .errors import ConfigError
from .pointmap import build_point_map
from .ufls import RelayConfig, RelaySettingError

__all__ = [
    "Breaker",
    "Cdu",
    "ControlLoop",
    "DryCooler",
    "Economics",
    "Feeder",
    "Loop",
    "Pdu",
    "PlcConfig",
    "Pump",
    "RackRow",
    "Site",
    "Tank",
    "TankLimits",
    "demo_site",
    "demo_site_text",
    "load_site",
    "parse_site",
    "parse_site_text",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: Prefixes of the PLC's and the site meter's own points (``site.power_kw``).
RESERVED_NAMES = frozenset({"plc", "site"})
#: The built-in demo hall, shipped beside this module.
DEMO_SITE_FILE = "demo_site.toml"


# --------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------
def load_site(path: str | Path | None = None) -> Site:
    """Load and validate a site file; ``None`` gives the built-in demo site."""
    if path is None:
        return demo_site()
    return parse_site(load_toml(path))


def demo_site_text() -> str:
    """The built-in demo site's TOML text (``plc/data/demo_site.toml``)."""
    return resources.files("thermogate.plc.data").joinpath(DEMO_SITE_FILE).read_text("utf-8")


def demo_site() -> Site:
    return parse_site(loads_toml(demo_site_text(), "<built-in demo site>"))


def parse_site_text(text: str, file: str = "<string>") -> Site:
    return parse_site(loads_toml(text, file))


def parse_site(root: Section) -> Site:
    """Build a ``Site`` from a root section, validating everything."""
    names = _Names(root.file)
    s = root.get_section("site")
    site_name = s.get_str("name")
    import_limit = s.get_float("import_limit_kw", minval=10.0, maxval=500_000.0)
    meter_v = s.get_float("meter_voltage_v", 11_000.0, minval=100.0, maxval=400_000.0)
    freq = s.get_float("frequency_hz", 50.0)
    if freq not in (50.0, 60.0):
        raise s.error("frequency_hz", f"{freq:g} is not a grid frequency (50 or 60)")
    meter_unit = _unit_id(s, "meter_unit_id", 10)
    design_ambient = s.get_float("design_ambient_c", 35.0, minval=-10.0, maxval=55.0)
    scan = s.get_float("scan_interval_s", 1.0, minval=0.05, maxval=60.0)
    elsewhere = s.get_str_list("regulated_elsewhere", [], allow_empty=True)
    s.check_unused()

    p = root.get_section("plc", {})
    timeout = p.get_float("heartbeat_timeout_s", 10.0, minval=1.0, maxval=600.0)
    if not timeout.is_integer():  # its register (plc.heartbeat_timeout_s) holds whole seconds
        raise p.error("heartbeat_timeout_s", f"{timeout:g} is not a whole number of seconds")
    plc = PlcConfig(
        unit_id=_unit_id(p, "unit_id", 1),
        heartbeat_timeout_s=timeout,
        safe_gpu_cap_pct=p.get_float("safe_gpu_cap_pct", 50.0, minval=0.0, maxval=100.0),
        leak_isolates_loop=p.get_bool("leak_isolates_loop", True),
    )
    p.check_unused()
    problem = plc.scan_problem(scan)
    if problem is not None:
        raise s.error("scan_interval_s", problem)

    feeders = tuple(_feeder(sec, names) for sec in root.get_sections("feeders"))
    if not feeders:
        raise root.error("feeders", "a site needs at least one feeder")
    feeder_names = {f.name for f in feeders}
    pdus = tuple(_pdu(sec, names, feeder_names) for sec in root.get_sections("pdus"))
    pdu_names = {d.name for d in pdus}
    loops = tuple(
        _loop(sec, names, feeder_names, design_ambient, plc.unit_id)
        for sec in root.get_sections("loops")
    )
    if not loops:
        raise root.error("loops", "a site needs at least one cooling loop")
    loop_names = {lp.name for lp in loops}
    tanks = tuple(
        _tank(sec, names, loop_names, pdu_names) for sec in root.get_sections("tanks", [])
    )
    cdus = tuple(_cdu(sec, names, loop_names) for sec in root.get_sections("cdus", []))
    cdu_names = {c.name for c in cdus}
    rows = tuple(
        _rack_row(sec, names, cdu_names, pdu_names) for sec in root.get_sections("rack_rows", [])
    )
    if not tanks and not rows:
        raise root.error("tanks", "a site needs at least one tank or rack row")

    site = Site(
        name=site_name,
        source=root.file,
        import_limit_kw=import_limit,
        meter_voltage_v=meter_v,
        frequency_hz=freq,
        meter_unit_id=meter_unit,
        design_ambient_c=design_ambient,
        scan_interval_s=scan,
        plc=plc,
        feeders=feeders,
        pdus=pdus,
        loops=loops,
        tanks=tanks,
        cdus=cdus,
        rack_rows=rows,
        control_loops=(),
        economics=_economics(root),
        grid=_grid(root, freq, tanks),
    )
    _check_units(root, site)
    # Control loops name points, so they are checked against the point map.
    try:
        pmap = build_point_map(site)
    except ValueError as exc:  # an address region of a shared unit is full
        raise ConfigError(root.file, "tanks", str(exc)) from None
    driven: dict[str, str] = {}  # actuator -> the loop that drives it
    held = held_quantities(site)  # once: a loop looks its measurement up in it
    regulating = regulating_actuators(held)
    drivable = frozenset(regulating)
    loops_ctl: list[ControlLoop] = []
    for sec in root.get_sections("control_loops", []):
        name = names.claim(sec)
        try:
            loops_ctl.append(parse_control_loop(sec, name, pmap, held, drivable, driven))
        except ConfigError as exc:  # "control_loops[5]" alone sends a person counting
            raise ConfigError(exc.file, exc.key, f"loop '{name}': {exc.reason}") from None
    root.check_unused()
    _check_electrical(root, site)
    regulated_elsewhere = check_coverage(root, regulating, driven, elsewhere)
    return replace(site, control_loops=tuple(loops_ctl), regulated_elsewhere=regulated_elsewhere)


class _Names:
    """Every equipment name is unique across the site: it is a point prefix."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.seen: dict[str, str] = {}

    def claim(self, sec: Section, key: str = "name", prefix: str = "") -> str:
        name = sec.get_str(key)
        if not NAME_RE.match(name):
            raise sec.error(
                key,
                f"'{name}' is not a valid name (lower-case letter first, then a-z, 0-9 or _,"
                " at most 32 characters)",
            )
        if not prefix and name in RESERVED_NAMES:
            raise sec.error(
                key, f"'{name}' is reserved for the site's own points; choose another name"
            )
        full = f"{prefix}.{name}" if prefix else name
        if full in self.seen:
            raise sec.error(key, f"duplicate name '{full}' (also at {self.seen[full]})")
        self.seen[full] = sec.key(key)
        return full


def _ref(sec: Section, key: str, valid: set[str], what: str) -> str:
    val = sec.get_str(key)
    if val not in valid:
        known = ", ".join(sorted(valid)) or "none defined"
        raise sec.error(key, f"no {what} named '{val}' (known: {known})")
    return val


def _unit_id(sec: Section, key: str, default: int = _MISSING) -> int:
    """A Modbus unit id: 1-247 (0 is broadcast, 248-255 are reserved)."""
    return sec.get_int(key, default, 1, 247)


def _breaker(sec: Section) -> Breaker:
    rating = sec.get_float("rating_a", minval=1.0, maxval=10_000.0)
    b = sec.get_section("breaker", {})
    curve = b.get_str("curve", "iec-ei", choices=tuple(Breaker.CURVES))
    brk = Breaker(
        rating_a=rating,
        curve=curve,
        pickup_pct=b.get_float("pickup_pct", 105.0, minval=100.0, maxval=200.0),
        tms=b.get_float("tms", 1.0, above=0.0, maxval=10.0),
        continuous_pct=b.get_float("continuous_pct", DEFAULT_CONTINUOUS_PCT, 10.0, 100.0),
    )
    b.check_unused()
    return brk


def _feeder(sec: Section, names: _Names) -> Feeder:
    name = names.claim(sec)
    f = Feeder(
        name=name,
        voltage_v=sec.get_float("voltage_v", 415.0, minval=100.0, maxval=36_000.0),
        breaker=_breaker(sec),
        unit_id=_unit_id(sec, "unit_id"),
        power_factor=sec.get_float("power_factor", DEFAULT_POWER_FACTOR, 0.5, 1.0),
    )
    sec.check_unused()
    return f


def _pdu(sec: Section, names: _Names, feeders: set[str]) -> Pdu:
    name = names.claim(sec)
    d = Pdu(
        name=name,
        feeder=_ref(sec, "feeder", feeders, "feeder"),
        voltage_v=sec.get_float("voltage_v", 415.0, minval=100.0, maxval=36_000.0),
        breaker=_breaker(sec),
        unit_id=_unit_id(sec, "unit_id"),
        power_factor=sec.get_float("power_factor", DEFAULT_POWER_FACTOR, 0.5, 1.0),
    )
    sec.check_unused()
    return d


def _loop(
    sec: Section, names: _Names, feeders: set[str], design_ambient: float, plc_unit: int
) -> Loop:
    name = names.claim(sec)
    volume = sec.get_float("volume_l", minval=200.0, maxval=2_000_000.0)
    glycol = sec.get_float("glycol_pct", 30.0, minval=0.0, maxval=60.0)
    setpoint = sec.get_float("supply_setpoint_c", 32.0, minval=10.0, maxval=50.0)
    alarm = sec.get_float(
        "supply_alarm_c", 45.0, above=setpoint, maxval=65.0, above_key="supply_setpoint_c"
    )
    if setpoint > alarm - SUPPLY_RESET_MAX_K:  # the rule a control loop's setpoint obeys
        raise sec.error(
            "supply_setpoint_c",
            f"{setpoint:g} leaves less than the {SUPPLY_RESET_MAX_K:g} K trim & respond may"
            f" add below supply_alarm_c ({alarm:g}): at most {alarm - SUPPLY_RESET_MAX_K:g}",
        )
    feeder = _ref(sec, "feeder", feeders, "feeder")
    pumps = []
    for ps in sec.get_sections("pumps", []):
        pname = names.claim(ps, prefix=name)
        pumps.append(
            Pump(
                name=pname,
                loop=name,
                rated_flow_m3h=ps.get_float("rated_flow_m3h", minval=1.0, maxval=20_000.0),
                rated_head_kpa=ps.get_float("rated_head_kpa", 250.0, minval=10.0, maxval=2_000.0),
                rated_power_kw=ps.get_float("rated_power_kw", minval=0.1, maxval=2_000.0),
                min_speed_pct=ps.get_float("min_speed_pct", 20.0, minval=0.0, maxval=90.0),
                unit_id=_unit_id(ps, "unit_id"),
            )
        )
        ps.check_unused()
    if not pumps:
        raise sec.error("pumps", f"loop '{name}' has no pump: nothing would circulate it")
    coolers = []
    for ds in sec.get_sections("dry_coolers", []):
        dname = names.claim(ds, prefix=name)
        approach = ds.get_float("design_approach_k", 6.0, minval=2.0, maxval=25.0)
        coolers.append(
            DryCooler(
                name=dname,
                loop=name,
                capacity_kw=ds.get_float("capacity_kw", minval=10.0, maxval=50_000.0),
                design_approach_k=approach,
                design_ambient_c=ds.get_float(
                    "design_ambient_c", design_ambient, minval=-10.0, maxval=55.0
                ),
                fans=ds.get_int("fans", 8, minval=1, maxval=64),
                fan_power_kw=ds.get_float("fan_power_kw", 2.5, minval=0.1, maxval=50.0),
                unit_id=_unit_id(ds, "unit_id"),
            )
        )
        ds.check_unused()
    if not coolers:
        raise sec.error("dry_coolers", f"loop '{name}' has no dry cooler: heat has nowhere to go")
    total_flow = sum(p.rated_flow_m3h for p in pumps)
    min_flow = sec.get_float("min_flow_m3h", 0.25 * total_flow / len(pumps), minval=0.0)
    if min_flow >= total_flow:
        raise sec.error(
            "min_flow_m3h",
            f"{min_flow:g} m3/h is not below the pumps' combined rated flow {total_flow:g} m3/h",
        )
    lp = Loop(
        name=name,
        volume_l=volume,
        glycol_pct=glycol,
        supply_setpoint_c=setpoint,
        supply_alarm_c=alarm,
        min_flow_m3h=min_flow,
        low_flow_trip_s=sec.get_float("low_flow_trip_s", 10.0, minval=1.0, maxval=600.0),
        feeder=feeder,
        pumps=tuple(pumps),
        dry_coolers=tuple(coolers),
        unit_id=_unit_id(sec, "unit_id", plc_unit),
    )
    sec.check_unused()
    return lp


_WORKLOAD_DEFAULTS = {
    # unit_power_kw, unit_idle_kw, chip_r (K/kW), chip throttle, chip trip, fluid sp/alarm/trip
    # ASIC: ~27 K chip-to-fluid at 5.5 kW, so chips reach their 88 degC throttle
    # just above the 60 degC fluid alarm. GPU node: the die sits ~21 K above its
    # local fluid at 700 W (0.037 K/W per GPU, H200 measurement), ~2.5 K per node kW.
    "asic": (5.5, 0.15, 5.0, 88.0, 95.0, 50.0, 60.0, 65.0),
    "gpu": (10.2, 1.6, 2.5, 87.0, 95.0, 45.0, 57.0, 62.0),
}


def _tank(sec: Section, names: _Names, loops: set[str], pdus: set[str]) -> Tank:
    name = names.claim(sec)
    workload = sec.get_str("workload", choices=("asic", "gpu"))
    d = _WORKLOAD_DEFAULTS[workload]
    volume = sec.get_float("volume_l", minval=100.0, maxval=10_000.0)
    units = sec.get_int("units", minval=1, maxval=500)
    unit_kw = sec.get_float("unit_power_kw", d[0], minval=0.1, maxval=50.0)
    sp = sec.get_float("fluid_setpoint_c", d[5], minval=20.0, maxval=70.0)
    alarm = sec.get_float(
        "fluid_alarm_c", d[6], above=sp, maxval=80.0, above_key="fluid_setpoint_c"
    )
    _within_margin(sec, "fluid_setpoint_c", sp, "fluid_alarm_c", alarm)
    trip = sec.get_float("fluid_trip_c", d[7], above=alarm, maxval=90.0, above_key="fluid_alarm_c")
    throttle = sec.get_float(
        "chip_throttle_c", d[3], above=trip, maxval=110.0, above_key="fluid_trip_c"
    )
    chip_trip = sec.get_float(
        "chip_trip_c", d[4], above=throttle, maxval=125.0, above_key="chip_throttle_c"
    )
    default_class = "mining" if workload == "asic" else "inference"
    wclass = sec.get_str(
        "workload_class", default_class, choices=("mining", "inference", "training")
    )
    if workload == "asic" and wclass != "mining":
        raise sec.error("workload_class", "ASIC miners can only run the 'mining' class")
    if workload == "gpu" and wclass == "mining":
        raise sec.error("workload_class", "GPU tanks run 'inference' or 'training'")
    t = Tank(
        name=name,
        workload=workload,
        volume_l=volume,
        fluid_density_kg_l=sec.get_float("fluid_density_kg_l", 0.80, minval=0.6, maxval=1.9),
        fluid_cp_kj_kgk=sec.get_float("fluid_cp_kj_kgk", 2.1, minval=1.0, maxval=4.2),
        units=units,
        unit_power_kw=unit_kw,
        unit_idle_kw=sec.get_float(
            "unit_idle_kw", d[1], minval=0.0, below=unit_kw, below_key="unit_power_kw"
        ),
        chip_r_k_per_kw=sec.get_float("chip_r_k_per_kw", d[2], above=0.0, maxval=50.0),
        hx_ua_kw_k=sec.get_float("hx_ua_kw_k", minval=1.0, maxval=1_000.0),
        dielectric_flow_l_s=sec.get_float("dielectric_flow_l_s", minval=0.5, maxval=100.0),
        design_water_flow_m3h=sec.get_float("design_water_flow_m3h", minval=1.0, maxval=500.0),
        loop=_ref(sec, "loop", loops, "loop"),
        pdu=_ref(sec, "pdu", pdus, "PDU"),
        unit_id=_unit_id(sec, "unit_id", 1),
        limits=TankLimits(
            fluid_setpoint_c=sp,
            fluid_alarm_c=alarm,
            fluid_trip_c=trip,
            chip_throttle_c=throttle,
            chip_trip_c=chip_trip,
            rate_alarm_c_per_min=sec.get_float("rate_alarm_c_per_min", 1.0, above=0.0),
        ),
        workload_class=wclass,
        **_workload_fields(sec, workload),
    )
    kw = t.rated_kw
    if not 20.0 <= kw <= 600.0:
        raise sec.error(
            "units", f"{units} x {unit_kw:g} kW = {kw:g} kW is not a credible tank load"
        )
    sec.check_unused()
    return t


def _within_margin(sec: Section, key: str, sp: float, alarm_key: str, alarm: float) -> None:
    """A zone's setpoint leaves protection its margin below the alarm (the rule a
    control loop's setpoint obeys: protection starts shedding there)."""
    if sp > alarm - THERMAL_SOFT_MARGIN_K:
        raise sec.error(
            key,
            f"{sp:g} is closer than {THERMAL_SOFT_MARGIN_K:g} K to {alarm_key} ({alarm:g}),"
            f" where protection starts shedding: at most {alarm - THERMAL_SOFT_MARGIN_K:g}",
        )


def _gpu_power(sec: Section) -> dict[str, float]:
    idle = sec.get_float("gpu_idle_w", 120.0, minval=0.0, maxval=2_000.0)
    full = sec.get_float("gpu_full_w", 700.0, above=idle, maxval=3_000.0, above_key="gpu_idle_w")
    return {"gpu_idle_w": idle, "gpu_full_w": full}


def _workload_fields(sec: Section, workload: str) -> dict[str, Any]:
    """What a tank's workload adds: the miners' efficiency, or the GPUs per node."""
    if workload == "asic":
        for key in ("gpus_per_unit", "gpu_idle_w", "gpu_full_w"):
            if sec.has(key):
                raise sec.error(key, 'only GPU tanks (workload = "gpu") have GPUs')
        return {
            "miner_j_per_th": sec.get_float("miner_j_per_th", 16.5, minval=5.0, maxval=200.0),
            "miner_hash_exponent": sec.get_float(
                "miner_hash_exponent", 0.65, minval=0.3, maxval=1.0
            ),
            "miner_min_power_pct": sec.get_float(
                "miner_min_power_pct", 30.0, minval=0.0, maxval=100.0
            ),
        }
    for key in ("miner_j_per_th", "miner_hash_exponent", "miner_min_power_pct"):
        if sec.has(key):
            raise sec.error(key, 'only ASIC tanks (workload = "asic") mine')
    return {
        "gpus_per_unit": sec.get_int("gpus_per_unit", 8, minval=1, maxval=16),
        **_gpu_power(sec),
    }


def _economics(root: Section) -> Economics:
    e = root.get_section("economics", {})
    d = Economics()
    econ = Economics(
        hashprice_usd_per_th_day=e.get_float(
            "hashprice_usd_per_th_day", d.hashprice_usd_per_th_day, minval=0.0, maxval=10.0
        ),
        inference_usd_per_gpu_h=e.get_float(
            "inference_usd_per_gpu_h", d.inference_usd_per_gpu_h, minval=0.0, maxval=100.0
        ),
        training_usd_per_gpu_h=e.get_float(
            "training_usd_per_gpu_h", d.training_usd_per_gpu_h, minval=0.0, maxval=100.0
        ),
        energy_usd_per_mwh=e.get_float(
            "energy_usd_per_mwh", d.energy_usd_per_mwh, minval=-10_000.0, maxval=20_000.0
        ),
    )
    e.check_unused()
    return econ


def _grid(root: Section, nominal_hz: float, tanks: tuple[Tank, ...]) -> GridConfig:
    g = root.get_section("grid", {})
    d = GridConfig()
    armed = g.get_bool("under_frequency_armed", d.under_frequency_armed)
    # ERCOT's Load Resource relay: 59.7 Hz at 60 Hz nominal, i.e. 0.3 Hz under
    trip = g.get_float("under_frequency_trip_hz", nominal_hz - 0.3)
    recover = g.get_float("under_frequency_recover_hz", nominal_hz - 0.05)
    delay = g.get_float("under_frequency_delay_s", RelayConfig.delay_s, minval=0.0, maxval=10.0)
    recover_s = g.get_float("under_frequency_recover_s", 600.0, minval=0.0, maxval=86_400.0)
    try:
        relay = RelayConfig(nominal_hz, trip, delay, recover, recover_s)
    except RelaySettingError as exc:
        raise g.error(f"under_frequency_{exc.field}", str(exc)) from None
    mining = [t.name for t in tanks if t.workload_class == "mining"]
    # a hall without mining tanks (DLC-only AI) has nothing for the relay to
    # shed: an empty list, refused below only if the relay is armed
    shed = g.get_str_list("under_frequency_shed", mining, allow_empty=True)
    for name in shed:
        if name not in mining:
            other = {t.name: t.workload_class for t in tanks}
            why = f"{name} runs {other[name]}" if name in other else f"{name} is not a tank"
            raise g.error(
                "under_frequency_shed",
                f"{why}; the relay sheds mining tanks only ({', '.join(mining) or 'none'})",
            )
    if armed and not shed:
        raise g.error("under_frequency_shed", "armed with nothing to shed")
    grid = GridConfig(
        under_frequency_armed=armed,
        relay=relay,
        under_frequency_shed=tuple(shed),
        settlement_interval_s=g.get_float(
            "settlement_interval_s", d.settlement_interval_s, minval=60.0, maxval=3600.0
        ),
        baseline_count=g.get_int("baseline_count", d.baseline_count, minval=1, maxval=90),
        baseline_like=g.get_str("baseline_like", d.baseline_like, choices=("day", "preceding")),
        curtail_inference=g.get_bool("curtail_inference", d.curtail_inference),
    )
    if 86_400.0 % grid.settlement_interval_s:
        raise g.error(
            "settlement_interval_s", f"{grid.settlement_interval_s:g} s does not divide a day"
        )
    g.check_unused()
    return grid


def _cdu(sec: Section, names: _Names, loops: set[str]) -> Cdu:
    name = names.claim(sec)
    sp = sec.get_float("supply_setpoint_c", 40.0, minval=15.0, maxval=50.0)
    alarm = sec.get_float(
        "supply_alarm_c", 48.0, above=sp, maxval=60.0, above_key="supply_setpoint_c"
    )
    _within_margin(sec, "supply_setpoint_c", sp, "supply_alarm_c", alarm)
    c = Cdu(
        name=name,
        loop=_ref(sec, "loop", loops, "loop"),
        tcs_volume_l=sec.get_float("tcs_volume_l", 400.0, minval=20.0, maxval=20_000.0),
        hx_ua_kw_k=sec.get_float("hx_ua_kw_k", minval=1.0, maxval=2_000.0),
        tcs_flow_l_s=sec.get_float("tcs_flow_l_s", minval=0.5, maxval=200.0),
        design_water_flow_m3h=sec.get_float("design_water_flow_m3h", minval=1.0, maxval=1_000.0),
        supply_setpoint_c=sp,
        supply_alarm_c=alarm,
        supply_trip_c=sec.get_float(
            "supply_trip_c", 55.0, above=alarm, maxval=70.0, above_key="supply_alarm_c"
        ),
        unit_id=_unit_id(sec, "unit_id"),
    )
    sec.check_unused()
    return c


def _rack_row(sec: Section, names: _Names, cdus: set[str], pdus: set[str]) -> RackRow:
    name = names.claim(sec)
    node_kw = sec.get_float("node_power_kw", 10.2, minval=0.5, maxval=150.0)
    throttle = sec.get_float("chip_throttle_c", 87.0, minval=60.0, maxval=105.0)
    r = RackRow(
        name=name,
        cdu=_ref(sec, "cdu", cdus, "CDU"),
        pdu=_ref(sec, "pdu", pdus, "PDU"),
        nodes=sec.get_int("nodes", minval=1, maxval=2_000),
        node_power_kw=node_kw,
        node_idle_kw=sec.get_float(
            "node_idle_kw", 1.6, minval=0.0, below=node_kw, below_key="node_power_kw"
        ),
        gpus_per_node=sec.get_int("gpus_per_node", 8, minval=1, maxval=16),
        # 22 K rise for 573 W on the measured H200 (shared/data/gpu_step_h200.csv).
        gpu_r_k_per_w=sec.get_float("gpu_r_k_per_w", 0.037, above=0.0, maxval=1.0),
        chip_throttle_c=throttle,
        chip_trip_c=sec.get_float(
            "chip_trip_c", 95.0, above=throttle, maxval=120.0, above_key="chip_throttle_c"
        ),
        unit_id=_unit_id(sec, "unit_id", 1),
        workload_class=sec.get_str("workload_class", "training", ("inference", "training")),
        **_gpu_power(sec),
    )
    sec.check_unused()
    return r


def _check_units(root: Section, site: Site) -> None:
    """Meters, pump drives, dry coolers and CDUs each answer on a unit id of their
    own. Two of them on one id is a typo that would move the first one's registers
    (a shared unit is laid out in slots): only a PLC's unit serves several pieces
    of equipment -- ``[plc] unit_id``, or a further PLC carrying tanks or rows."""
    plcs = site.plc_units
    for i, lp in enumerate(site.loops):
        if lp.unit_id not in plcs:  # a skid's instruments are wired to a PLC, not a device
            raise ConfigError(
                root.file,
                f"loops[{i}].unit_id",
                f"unit {lp.unit_id} is no PLC's: a loop's skid instruments are wired to a PLC,"
                f" the [plc] unit_id ({site.plc.unit_id}) or one carrying tanks or rack rows",
            )
    devices: list[tuple[int, str, str]] = [
        (site.meter_unit_id, "the site meter", "site.meter_unit_id")
    ]
    devices += [
        (f.unit_id, f"feeder {f.name}", f"feeders[{i}].unit_id") for i, f in enumerate(site.feeders)
    ]
    devices += [(d.unit_id, f"PDU {d.name}", f"pdus[{i}].unit_id") for i, d in enumerate(site.pdus)]
    for i, lp in enumerate(site.loops):
        devices += [
            (p.unit_id, f"pump {p.name}", f"loops[{i}].pumps[{j}].unit_id")
            for j, p in enumerate(lp.pumps)
        ]
        devices += [
            (d.unit_id, f"dry cooler {d.name}", f"loops[{i}].dry_coolers[{j}].unit_id")
            for j, d in enumerate(lp.dry_coolers)
        ]
    devices += [(c.unit_id, f"CDU {c.name}", f"cdus[{i}].unit_id") for i, c in enumerate(site.cdus)]
    first: dict[int, str] = {}
    for unit, what, key in devices:
        if unit in plcs:
            continue  # wired into a PLC: its points sit in that PLC's slots
        if unit in first:
            raise ConfigError(
                root.file,
                key,
                f"unit {unit} is already used by {first[unit]}: two devices cannot answer one unit"
                " id (give each its own; only a PLC's unit serves several)",
            )
        first[unit] = what


def _check_electrical(root: Section, site: Site) -> None:
    """A PDU's or feeder's rated load stays within its breaker's continuous rating
    (80 % unless the file says otherwise); feeders fit the import."""
    load: dict[str, float] = {d.name: 0.0 for d in site.pdus}
    for t in site.tanks:
        load[t.pdu] += t.rated_kw
    for r in site.rack_rows:
        load[r.pdu] += r.rated_kw
    for i, d in enumerate(site.pdus):
        if load[d.name] > d.continuous_kw + 1e-6:
            raise ConfigError(
                root.file,
                f"pdus[{i}].rating_a",
                f"PDU '{d.name}' carries {load[d.name]:.0f} kW of rated load, more than its"
                f" breaker allows continuously ({d.breaker.continuous_pct:g} % of"
                f" {d.rating_kw:.0f} kW = {d.continuous_kw:.0f} kW at {d.voltage_v:g} V)",
            )
    feeder_load: dict[str, float] = {f.name: 0.0 for f in site.feeders}
    for d in site.pdus:
        feeder_load[d.feeder] += load[d.name]
    for lp in site.loops:
        feeder_load[lp.feeder] += sum(p.rated_power_kw for p in lp.pumps) + sum(
            dc.fans * dc.fan_power_kw for dc in lp.dry_coolers
        )
    for i, f in enumerate(site.feeders):
        if feeder_load[f.name] > f.continuous_kw + 1e-6:
            raise ConfigError(
                root.file,
                f"feeders[{i}].rating_a",
                f"feeder '{f.name}' carries {feeder_load[f.name]:.0f} kW of rated load (its PDUs,"
                f" pumps and fans), more than its breaker allows continuously"
                f" ({f.breaker.continuous_pct:g} % of {f.rating_kw:.0f} kW ="
                f" {f.continuous_kw:.0f} kW at {f.voltage_v:g} V)",
            )
        if f.rating_kw > 4.0 * site.import_limit_kw:
            raise ConfigError(
                root.file,
                f"feeders[{i}].rating_a",
                f"feeder '{f.name}' ({f.rating_kw:.0f} kW) is implausibly large for a site"
                f" importing at most {site.import_limit_kw:g} kW",
            )
