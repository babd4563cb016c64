"""Control loops: what a site's ``[[control_loops]]`` may drive and hold.

Three rules, each read by every part that needs it, so a site file, an
operator's command and an OPC UA client's EURange can never disagree:

- **What a PID drives**: the regulating actuators -- tank and CDU valves, dry
  cooler fans, pump speeds. The power budgets and GPU caps are the planner's,
  the heartbeat is the watchdog's: a PID on one would fight them.
- **What setpoint it may hold** (``setpoint_range``): below the alarm of the
  zone it holds, by the margin protection needs to act before the alarm.
- **That nothing is left unregulated**: every regulating actuator is driven by
  a loop, or listed in ``[site] regulated_elsewhere`` because another
  controller (a CDU's own, the PLC's) runs it. A valve nothing drives stays
  where it was left while its tank heats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from .config import Section
from .equipment import ControlLoop, Site
from .pointmap import PointMap
from .pointtable import CduPoints, DryCoolerPoints, LoopPoints, PumpPoints, TankPoints

#: protection starts shedding this far below a zone's alarm, so a setpoint must
#: sit at least this far below it (or the loop would hold the zone in a shed)
THERMAL_SOFT_MARGIN_K = 2.5
#: trim & respond raises a loop's supply setpoint by up to this when far from limits
SUPPLY_RESET_MAX_K = 6.0
#: the lowest differential pressure trim & respond asks of a loop's pumps
DP_TRIM_MIN_KPA = 40.0

#: what each kind of PID-driven actuator is, for messages
_KINDS = (
    ("valve_cmd", "valve"),
    ("fan_cmd", "dry cooler"),
    ("speed_cmd", "pump"),
)


def regulating_actuators(site: Site) -> Iterator[str]:
    """Every actuator a control loop is there to drive, in site order: each
    tank's and CDU's valve, each dry cooler's fans, each pump's speed."""
    for t in site.tanks:
        yield TankPoints.point_name(t.name, "valve_cmd")
    for c in site.cdus:
        yield CduPoints.point_name(c.name, "valve_cmd")
    for d in site.dry_coolers:
        yield DryCoolerPoints.point_name(d.name, "fan_cmd")
    for p in site.pumps:
        yield PumpPoints.point_name(p.name, "speed_cmd")


def held_by(site: Site, measurement: str) -> tuple[str, tuple[str, ...]] | None:
    """What a control loop on ``measurement`` holds, and the actuators that move
    it: a tank's fluid (its valve), a cooling loop's supply (its dry coolers'
    fans) or differential pressure (its pumps), a CDU's coolant supply (its
    valve). None: not a quantity a control loop holds."""
    for t in site.tanks:
        if measurement == TankPoints.point_name(t.name, "fluid_temp"):
            return f"tank {t.name}'s fluid", (TankPoints.point_name(t.name, "valve_cmd"),)
    for lp in site.loops:
        if measurement == LoopPoints.point_name(lp.name, "supply_temp"):
            fans = tuple(DryCoolerPoints.point_name(d.name, "fan_cmd") for d in lp.dry_coolers)
            return f"loop {lp.name}'s supply", fans
        if measurement == LoopPoints.point_name(lp.name, "dp"):
            pumps = tuple(PumpPoints.point_name(p.name, "speed_cmd") for p in lp.pumps)
            return f"loop {lp.name}'s differential pressure", pumps
    for c in site.cdus:
        if measurement == CduPoints.point_name(c.name, "supply_temp"):
            return f"CDU {c.name}'s supply", (CduPoints.point_name(c.name, "valve_cmd"),)
    return None


def setpoint_range(site: Site, pmap: PointMap, measurement: str) -> tuple[float, float, str]:
    """The setpoints a loop on ``measurement`` accepts, and why: below the alarm
    of what it holds (a tank's fluid, a loop's supply, a CDU's coolant), within
    the pumps' head for a differential pressure, else the point's own range."""
    for t in site.tanks:
        if measurement == TankPoints.point_name(t.name, "fluid_temp"):
            alarm = t.limits.fluid_alarm_c
            why = f"{THERMAL_SOFT_MARGIN_K:g} K below the tank's fluid_alarm_c {alarm:g}"
            return 20.0, alarm - THERMAL_SOFT_MARGIN_K, why
    for lp in site.loops:
        if measurement == LoopPoints.point_name(lp.name, "supply_temp"):
            hi = lp.supply_alarm_c - SUPPLY_RESET_MAX_K
            why = (
                f"the loop's supply_alarm_c {lp.supply_alarm_c:g} less the"
                f" {SUPPLY_RESET_MAX_K:g} K trim & respond may add"
            )
            return 10.0, hi, why
        if measurement == LoopPoints.point_name(lp.name, "dp"):
            head = max(p.rated_head_kpa for p in lp.pumps)
            return DP_TRIM_MIN_KPA, head, "the pumps' rated head"
    for cdu in site.cdus:
        if measurement == CduPoints.point_name(cdu.name, "supply_temp"):
            alarm = cdu.supply_alarm_c
            why = f"{THERMAL_SOFT_MARGIN_K:g} K below the CDU's supply_alarm_c {alarm:g}"
            return 15.0, alarm - THERMAL_SOFT_MARGIN_K, why
    p = pmap[measurement]
    lo = -math.inf if p.min is None else p.min
    hi = math.inf if p.max is None else p.max
    return lo, hi, "the measured point's range"


def parse_control_loop(
    sec: Section, name: str, site: Site, pmap: PointMap, driven: dict[str, str]
) -> ControlLoop:
    """One ``[[control_loops]]`` entry named ``name``, checked against the point
    map, the rules above and the loops before it (``driven``: actuator -> the
    loop driving it, filled here)."""
    by_name = pmap.by_name
    meas = sec.get_str("measurement")
    if meas not in by_name:
        raise sec.error("measurement", f"no point named '{meas}' (see `thermogate points`)")
    mp = by_name[meas]
    if mp.is_bit or mp.writable:
        what = "a status bit" if mp.is_bit else "a command the controller writes"
        raise sec.error("measurement", f"'{meas}' is {what}, not a measurement")
    held = held_by(site, meas)
    if held is None:  # another sensor of a zone, a return, a chip: no limit is defined for it
        raise sec.error(
            "measurement",
            f"'{meas}' is not what a control loop holds: a tank's fluid_temp, a cooling"
            " loop's supply_temp or dp, or a CDU's supply_temp",
        )
    what, moves = held
    regulating = set(regulating_actuators(site))
    acts = sec.get_str_list("actuators")
    for act in acts:
        if act not in by_name:
            raise sec.error("actuators", f"no point named '{act}' (see `thermogate points`)")
        p = by_name[act]
        if not p.writable or p.table != "holding":
            raise sec.error("actuators", f"point '{act}' is not a writable holding register")
        if act not in regulating:  # a budget, a GPU cap, the heartbeat
            raise sec.error(
                "actuators",
                f"'{act}' ({p.description}) is not a regulating actuator: the planner or the"
                " watchdog writes it; control loops drive valves, fans and pump speeds",
            )
        if act not in moves:  # another tank's valve: this loop would hold nothing
            raise sec.error(
                "actuators",
                f"'{act}' does not move {what} ('{meas}'); what does: {', '.join(moves)}",
            )
        if act in driven:  # two PIDs fighting over one valve, or one listed twice
            other = "this loop" if driven[act] == name else f"loop '{driven[act]}'"
            raise sec.error("actuators", f"'{act}' is already driven by {other}")
        driven[act] = name
    setpoint = sec.get_float("setpoint")
    lo, hi, why = setpoint_range(site, pmap, meas)
    if not lo <= setpoint <= hi:
        span = f"{lo:g}..{hi:g} {mp.unit}".rstrip()
        raise sec.error(
            "setpoint", f"{setpoint:g} is outside what '{meas}' may hold ({span}: {why})"
        )
    actp = by_name[acts[0]]
    out_min = sec.get_float("out_min", actp.min if actp.min is not None else 0.0)
    out_max = sec.get_float(
        "out_max",
        actp.max if actp.max is not None else 100.0,
        above=out_min,
        above_key="out_min",
    )
    if actp.min is not None and out_min < actp.min:
        raise sec.error("out_min", f"{out_min:g} is below the actuator's range {actp.min:g}")
    if actp.max is not None and out_max > actp.max:
        raise sec.error("out_max", f"{out_max:g} is above the actuator's range {actp.max:g}")
    c = ControlLoop(
        name=name,
        measurement=meas,
        actuators=tuple(acts),
        setpoint=setpoint,
        kp=sec.get_float("kp", minval=0.0, maxval=1e4),
        ki=sec.get_float("ki", 0.0, minval=0.0, maxval=1e4),
        kd=sec.get_float("kd", 0.0, minval=0.0, maxval=1e4),
        out_min=out_min,
        out_max=out_max,
        slew_per_s=sec.get_float("slew_per_s", 5.0, above=0.0),
        action=sec.get_str("action", "direct", ("direct", "reverse")),
    )
    sec.check_unused()
    return c


def check_coverage(
    root: Section, site: Site, driven: dict[str, str], elsewhere: list[str]
) -> tuple[str, ...]:
    """Every regulating actuator is driven by a loop or listed as regulated
    elsewhere; ``elsewhere`` (from ``[site] regulated_elsewhere``) names only
    regulating actuators no loop drives. Returns it as a tuple."""
    s = root.get_section("site")
    regulating = list(regulating_actuators(site))
    for k, act in enumerate(elsewhere):
        if act in elsewhere[:k]:
            raise s.error("regulated_elsewhere", f"'{act}' is listed twice")
        if act not in regulating:
            raise s.error(
                "regulated_elsewhere",
                f"'{act}' is not a regulating actuator of this site (valves, fans and pump"
                f" speeds, e.g. {regulating[0]})",
            )
        if act in driven:
            raise s.error(
                "regulated_elsewhere",
                f"'{act}' is driven by control loop '{driven[act]}' here: it cannot also be"
                " regulated elsewhere",
            )
    missing = [a for a in regulating if a not in driven and a not in elsewhere]
    if missing:
        kinds = ", ".join(
            f"{n} {word}{'s' if n > 1 else ''}"
            for attr, word in _KINDS
            if (n := sum(a.endswith(f".{attr}") for a in missing))
        )
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        shown = ", ".join(missing[:4]) + more
        where = "has no [[control_loops]]" if not driven else "leaves unregulated"
        raise root.error(
            "control_loops",
            f"the site {where}: {kinds} that nothing would drive ({shown}); add a control"
            " loop for each (`thermogate site` writes them), or list in [site]"
            " regulated_elsewhere those another controller runs",
        )
    return tuple(elsewhere)
