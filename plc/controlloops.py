"""Control loops: what a site's ``[[control_loops]]`` may drive and hold.

Three rules, each read by every part that needs it, so a site file, an
operator's command and an OPC UA client's EURange can never disagree:

- **What a PID drives**: the regulating actuators -- tank and CDU valves, dry
  cooler fans, pump speeds. The power budgets and GPU caps are the planner's,
  the heartbeat is the watchdog's: a PID on one would fight them.
- **What setpoint it may hold** (``held_quantities``): below the alarm of the
  zone it holds, by the margin protection needs to act before the alarm.
- **That nothing is left unregulated**: every regulating actuator is driven by
  a loop, or listed in ``[site] regulated_elsewhere`` because another
  controller (a CDU's own, the PLC's) runs it. A valve nothing drives stays
  where it was left while its tank heats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Held:
    """A quantity a control loop may hold: what it is, the actuators that move it
    and the setpoints it accepts (``lo``..``hi``, and why)."""

    what: str
    actuators: tuple[str, ...]
    lo: float
    hi: float
    why: str


def held_quantities(site: Site) -> dict[str, Held]:
    """Every quantity a control loop may hold, by its measurement point: a tank's
    fluid (its valve), a cooling loop's supply (its dry coolers' fans) or
    differential pressure (its pumps), a CDU's coolant supply (its valve). Built
    once per site: the site file, the command path and OPC UA look it up."""
    out: dict[str, Held] = {}
    for t in site.tanks:
        alarm = t.limits.fluid_alarm_c
        out[TankPoints.point_name(t.name, "fluid_temp")] = Held(
            f"tank {t.name}'s fluid",
            (TankPoints.point_name(t.name, "valve_cmd"),),
            20.0,
            alarm - THERMAL_SOFT_MARGIN_K,
            f"{THERMAL_SOFT_MARGIN_K:g} K below the tank's fluid_alarm_c {alarm:g}",
        )
    for lp in site.loops:
        out[LoopPoints.point_name(lp.name, "supply_temp")] = Held(
            f"loop {lp.name}'s supply",
            tuple(DryCoolerPoints.point_name(d.name, "fan_cmd") for d in lp.dry_coolers),
            10.0,
            lp.supply_alarm_c - SUPPLY_RESET_MAX_K,
            f"the loop's supply_alarm_c {lp.supply_alarm_c:g} less the"
            f" {SUPPLY_RESET_MAX_K:g} K trim & respond may add",
        )
        out[LoopPoints.point_name(lp.name, "dp")] = Held(
            f"loop {lp.name}'s differential pressure",
            tuple(PumpPoints.point_name(p.name, "speed_cmd") for p in lp.pumps),
            DP_TRIM_MIN_KPA,
            max(p.rated_head_kpa for p in lp.pumps),
            "the pumps' rated head",
        )
    for c in site.cdus:
        alarm = c.supply_alarm_c
        out[CduPoints.point_name(c.name, "supply_temp")] = Held(
            f"CDU {c.name}'s supply",
            (CduPoints.point_name(c.name, "valve_cmd"),),
            15.0,
            alarm - THERMAL_SOFT_MARGIN_K,
            f"{THERMAL_SOFT_MARGIN_K:g} K below the CDU's supply_alarm_c {alarm:g}",
        )
    return out


def regulating_actuators(held: Mapping[str, Held]) -> list[str]:
    """Every actuator a control loop is there to drive: each tank's and CDU's
    valve, each dry cooler's fans, each pump's speed."""
    return [a for h in held.values() for a in h.actuators]


def parse_control_loop(
    sec: Section,
    name: str,
    pmap: PointMap,
    held: Mapping[str, Held],
    regulating: frozenset[str],
    driven: dict[str, str],
) -> ControlLoop:
    """One ``[[control_loops]]`` entry named ``name``, checked against the point
    map, the site's ``held_quantities`` and ``regulating_actuators``, and the
    loops before it (``driven``: actuator -> the loop driving it, filled here)."""
    by_name = pmap.by_name
    meas = sec.get_str("measurement")
    if meas not in by_name:
        raise sec.error("measurement", f"no point named '{meas}' (see `thermogate points`)")
    mp = by_name[meas]
    if mp.is_bit or mp.writable:
        what = "a status bit" if mp.is_bit else "a command the controller writes"
        raise sec.error("measurement", f"'{meas}' is {what}, not a measurement")
    h = held.get(meas)
    if h is None:  # another sensor of a zone, a return, a chip: no limit is defined for it
        raise sec.error(
            "measurement",
            f"'{meas}' is not what a control loop holds: a tank's fluid_temp, a cooling"
            " loop's supply_temp or dp, or a CDU's supply_temp",
        )
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
        if act not in h.actuators:  # another tank's valve: this loop would hold nothing
            raise sec.error(
                "actuators",
                f"'{act}' does not move {h.what} ('{meas}'); what does: {', '.join(h.actuators)}",
            )
        if act in driven:  # two PIDs fighting over one valve, or one listed twice
            other = "this loop" if driven[act] == name else f"loop '{driven[act]}'"
            raise sec.error("actuators", f"'{act}' is already driven by {other}")
        driven[act] = name
    setpoint = sec.get_float("setpoint")
    if not h.lo <= setpoint <= h.hi:
        span = f"{h.lo:g}..{h.hi:g} {mp.unit}".rstrip()
        raise sec.error(
            "setpoint", f"{setpoint:g} is outside what '{meas}' may hold ({span}: {h.why})"
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
    root: Section, regulating: list[str], driven: dict[str, str], elsewhere: list[str]
) -> tuple[str, ...]:
    """Every regulating actuator is driven by a loop or listed as regulated
    elsewhere; ``elsewhere`` (from ``[site] regulated_elsewhere``) names only
    regulating actuators no loop drives. Returns it as a tuple."""
    s = root.get_section("site")
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
