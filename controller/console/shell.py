"""The console's commands: one line and the latest scan in, text (and a command) out.

``Shell.run(line, seen, now)`` reads what the technician typed against the
last published ``Snapshot`` and answers with plain ASCII text for an
80-column terminal (``degC``, never a degree sign; ANSI only when the
console's configuration enables it). A line that changes the plant does not
change it here: the ``Reply`` carries the ``Command`` for the console to give
through the controller's one command path, which checks role, range and
precedence and says what it did.

Names are the point names of the site description (``tank01.fluid_temp``),
their equipment (``tank01``, ``loop1.pump_a``) and the control loops
(``loop1_supply``): an exact name, or a prefix only one name starts with
(``tank01.fl`` is ambiguous, ``tank01.wat`` is not); otherwise the answer
lists the candidates or says "did you mean". Commands match by prefix too.

Pure: the time and the historian (``Trend``) come in; no I/O.
"""

from __future__ import annotations

import difflib
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from thermogate.plc.pointmap import PointMap
from thermogate.plc.points import BAD, GOOD, QUALITY_NAMES
from thermogate.plc.site import Site

from ..core.commands import (
    CONTROLLER_OWNED,
    Acknowledge,
    Command,
    OverrideActuator,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
)
from ..core.state import MODES
from ..opcua.snapshot import Snapshot
from ..people import parse_duration
from ..signals import flag_names

WIDTH = 80  # columns of the terminal; lines are wrapped to WIDTH - 1
DEFAULT_OVERRIDE_S = 600.0  # `override X V` without `for`: 10 min, as `thermogate command`
DEFAULT_TREND_S = 1800.0
MAX_TREND_S = 7 * 86_400.0
SPARK_WIDTH = 60  # characters of a sparkline: 30 s a character over 30 min
SPARK_LEVELS = "_.:-=+*#%@"  # lowest to highest; a blank is a gap without data
LIST_MAX = 8  # candidates named in an ambiguity before "... N more"

#: (history, window s) -> ``{"t": times, name: values}``: the historian's telemetry
Trend = Callable[[str, float, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Seen:
    """What the console knows of the plant: the last snapshot and the scan times."""

    snap: Snapshot | None
    scan_p99_ms: float = math.nan


@dataclass(frozen=True)
class Reply:
    text: str
    command: Command | None = None


@dataclass(frozen=True)
class Verb:
    name: str
    usage: str
    summary: str
    writes: bool = False  # needs a login


VERBS = (
    Verb("help", "help [COMMAND]", "the commands, or one command's usage"),
    Verb("status", "status", "site summary: mode, power, temperatures, alarms, workloads"),
    Verb("show", "show NAME", "a tank, loop, pump, rack row, feeder, PDU or point, with quality"),
    Verb("alarms", "alarms", "active and unacknowledged alarms, with the keys for ack"),
    Verb("trend", "trend POINT [30m]", "a sparkline of a point from the historian"),
    Verb("mode", "mode [auto|manual|maintenance]", "show the mode, or set it", True),
    Verb("set", "set LOOP|POINT VALUE", "a control loop's setpoint", True),
    Verb(
        "override",
        "override ACTUATOR VALUE [for 10m]",
        "hand mode on an actuator; it expires by itself",
        True,
    ),
    Verb("auto", "auto ACTUATOR|all", "end an override: back to the controller", True),
    Verb("ack", "ack ALARM|all", "acknowledge an alarm", True),
    Verb("reset", "reset TANK|ROW|all", "reset a latched interlock (engineer)", True),
    Verb("login", "login [USER]", "log in with your user and PIN (to change anything)"),
    Verb("logout", "logout", "log out"),
    Verb("whoami", "whoami", "who is logged in, and the idle timeout"),
)
VERB = {v.name: v for v in VERBS}


class Unknown(Exception):
    """A name or an argument that does not resolve; its message says why."""


class Shell:
    """See the module docstring."""

    def __init__(self, site: Site, pmap: PointMap, *, ansi: bool = False) -> None:
        self.site = site
        self.pmap = pmap
        self.ansi = ansi
        self.names = [p.name for p in pmap.points]
        parts: dict[str, list[int]] = {}
        for i, p in enumerate(pmap.points):
            bits = p.name.split(".")
            for k in range(1, len(bits)):
                parts.setdefault(".".join(bits[:k]), []).append(i)
        #: equipment name -> positions of every point under it
        self.equipment = parts
        self.loops = {c.name: c for c in site.control_loops}
        self.loop_index = {c.name: k for k, c in enumerate(site.control_loops)}
        self.actuators = [
            p.name for p in pmap.points if p.writable and p.name not in CONTROLLER_OWNED
        ]
        self.loads = [t.name for t in site.tanks] + [r.name for r in site.rack_rows]
        self._setpoint_names = [*self.loops, *(c.measurement for c in site.control_loops)]
        self._show_names = sorted({*self.equipment, *self.names, *self.loops})

    # -- dispatch -------------------------------------------------------------
    def verb(self, word: str) -> Verb:
        """The command a word names (an exact name or a unique prefix)."""
        return VERB[resolve(word.lower(), list(VERB), "command", hint="type help")]

    def run(self, line: str, seen: Seen, now: float, trend: Trend | None = None) -> Reply:
        words = line.split("#", 1)[0].split()
        why = line.split("#", 1)[1].strip() if "#" in line else ""
        if not words:
            return Reply("")
        try:
            v = self.verb(words[0])
            args = words[1:]
            if v.name == "help":
                return Reply(self.help(args))
            if v.name in ("login", "logout", "whoami"):
                return Reply("")  # the console's own (session)
            if v.name == "mode":
                if not args:
                    return Reply(self.mode(seen.snap))
                # a unique prefix, as for commands and names ("mode maint")
                mode = resolve(self._one(args, v).lower(), MODES, "mode")
                return Reply("", SetMode(mode, why))
            snap = seen.snap
            if snap is None:
                return Reply("no scan yet: the controller has not published a picture")
            if v.name == "status":
                return Reply(self.status(snap, seen.scan_p99_ms))
            if v.name == "show":
                return Reply(self.show(self._one(args, v), snap))
            if v.name == "alarms":
                return Reply(self.alarms(snap))
            if v.name == "trend":
                return Reply(self.trend(args, snap, now, trend))
            return Reply("", self._command(v, args, snap, why))
        except Unknown as exc:
            return Reply(str(exc))

    def _one(self, args: list[str], v: Verb) -> str:
        if len(args) != 1:
            raise Unknown(f"usage: {v.usage}")
        return args[0]

    def _command(self, v: Verb, args: list[str], snap: Snapshot, why: str) -> Command:
        if v.name == "set":
            if len(args) != 2:
                raise Unknown(f"usage: {v.usage}")
            name = resolve(args[0], self._setpoint_names, "control loop")
            return SetSetpoint(name, _number(args[1]), why)
        if v.name == "override" and len(args) >= 3 and args[2] == self._unit_of(args[0]):
            del args[2]  # "override tank01.valve_cmd 60 %": the point's own unit
        if v.name == "override":
            if len(args) not in (2, 3, 4) or (len(args) == 4 and args[2].lower() != "for"):
                raise Unknown(f"usage: {v.usage}")
            name = resolve(args[0], self.actuators, "actuator")
            dur = DEFAULT_OVERRIDE_S
            if len(args) > 2:
                try:
                    dur = parse_duration(args[-1])
                except ValueError as exc:
                    raise Unknown(str(exc)) from None
            value = _ON_OFF.get(args[1].lower()) if self.pmap[name].is_bit else None
            return OverrideActuator(name, _number(args[1]) if value is None else value, dur, why)
        # an alarm's key may hold a space ("power:site import"): the rest of the line
        arg = " ".join(args) if v.name == "ack" and args else self._one(args, v)
        every = arg.lower() == "all"
        if v.name == "auto":
            overridden = list(snap.status.get("overrides", {}) or {})
            point = None if every else resolve(arg, overridden or self.actuators, "override")
            return ReturnToAuto(point, why)
        if v.name == "ack":
            keys = [a.key for a in snap.alarms]
            return Acknowledge(None if every else resolve(arg, keys, "alarm"), why)
        return ResetInterlock(None if every else resolve(arg, self.loads, "tank or rack row"), why)

    # -- help -----------------------------------------------------------------
    def help(self, args: list[str]) -> str:
        if args:
            v = self.verb(args[0])
            login = " (needs login)" if v.writes else ""
            return f"usage: {v.usage}\n  {v.summary}{login}" + _HELP_MORE.get(v.name, "")
        lines = [f"  {v.usage:<36} {v.summary}" for v in VERBS]
        return (
            "commands (a unique prefix will do; * needs login):\n"
            + "\n".join(
                ("*" + ln[1:]) if v.writes else ln for ln, v in zip(lines, VERBS, strict=True)
            )
            + "\nnames are the site's point names; 'show tank01', 'show loop1.pump_a'."
            + " '# why' after a command is audited."
        )

    # -- mode and status ------------------------------------------------------
    def mode(self, snap: Snapshot | None) -> str:
        if snap is None:
            return "mode: not known yet (no scan)"
        return f"mode {snap.mode} (one of {', '.join(MODES)}; 'mode NAME' sets it, login)"

    def status(self, snap: Snapshot, p99_ms: float) -> str:
        st, v, ix = snap.status, snap.values, self.pmap.index
        mode = self._hi(snap.mode.upper(), snap.mode != "auto")
        out = [
            f"{self.site.name}  {_utc(snap.t)} UTC  mode {mode}",
            f"scan {snap.scans}: {_num(snap.scan_ms)} ms (p99 {_num(p99_ms)} ms), "
            f"overruns {snap.overruns}, bad points {st.get('bad_points', '?')}",
        ]
        limit = st.get("import_limit_kw")
        lim = f"{limit:.0f}" if isinstance(limit, float) else "?"
        out.append(
            f"power: site import {_num(v[ix.site.power_kw], 0)} kW, limit {lim} kW now "
            f"(connection {self.site.import_limit_kw:.0f} kW), "
            f"{_num(v[ix.site.frequency_hz], 2)} Hz"
        )
        out.append("temperatures (value / alarm, degC):")
        temps: list[tuple[float, str]] = []
        for t in self.site.tanks:
            x = float(v[ix.tank[t.name].fluid_temp])
            temps.append(
                (x - t.limits.fluid_alarm_c, f"{t.name} {_num(x)}/{t.limits.fluid_alarm_c:g}")
            )
        temps.sort(key=lambda e: -e[0] if math.isfinite(e[0]) else math.inf)
        hot = ", ".join(e[1] for e in temps[:4])
        out.append(f"  hottest tanks: {hot}")
        loops = []
        for lp in self.site.loops:
            x = float(v[ix.loop[lp.name].supply_temp])
            loops.append(f"{lp.name} supply {_num(x)}/{lp.supply_alarm_c:g}")
        out.append("  " + ", ".join(loops))
        cdus = []
        for c in self.site.cdus:
            x = float(v[ix.cdu[c.name].supply_temp])
            cdus.append(f"{c.name} supply {_num(x)}/{c.supply_alarm_c:g}")
        if cdus:
            out.append("  " + ", ".join(cdus))
        alarms = snap.alarms
        active = sum(1 for a in alarms if a.active)
        unacked = sum(1 for a in alarms if not a.acked)
        out.append(
            self._hi(f"alarms: {active} active, {unacked} unacknowledged", bool(active or unacked))
            + ("  ('alarms' lists them)" if alarms else "")
        )
        out.append("workloads: " + self._workloads(snap))
        ov = st.get("overrides") or {}
        for name, o in sorted(ov.items()):
            left = max(0.0, float(o["until"]) - snap.t)
            out.append(f"override: {name} = {o['value']:g} by {o['by']}, {_mmss(left)} left")
        latched, fs = st.get("latched") or [], st.get("failsafe_zones") or []
        if latched:
            out.append(self._hi("latched trips: " + ", ".join(latched), True))
        if fs:
            out.append(self._hi("fail-safe zones: " + ", ".join(map(str, fs)), True))
        out.append(self._grid(snap))
        return "\n".join(out)

    def _workloads(self, snap: Snapshot) -> str:
        loads = snap.status.get("loads") or {}
        by: dict[str, list[float]] = {}
        on: dict[str, int] = {}
        for name, info in loads.items():
            cls = str(info.get("class", "?"))
            kw = self._value(f"{name}.power_kw", snap)
            by.setdefault(cls, []).append(kw)
            on[cls] = on.get(cls, 0) + (self._value(f"{name}.enable", snap) == 1.0)
        parts = []
        for cls in ("mining", "inference", "training"):
            if cls in by:
                kw = float(np.nansum(by[cls]))
                parts.append(f"{cls} {kw:.0f} kW ({on[cls]}/{len(by[cls])} enabled)")
        return ", ".join(parts) or "none known"

    def _grid(self, snap: Snapshot) -> str:
        st = snap.status
        parts = ["grid:"]
        curt = st.get("curtailments") or []
        parts.append(
            ", ".join(f"curtailment #{c['id']} <= {c['limit_kw']:.0f} kW" for c in curt)
            if curt
            else "no curtailment"
        )
        peak = st.get("peak_limit_kw")
        if isinstance(peak, float):
            parts.append(f"; peak window <= {peak:.0f} kW")
        uf = st.get("under_frequency") or {}
        if uf.get("tripped"):
            ready = "release ready" if uf.get("release_ready") else "waiting for recovery"
            parts.append(self._hi(f"; UNDER-FREQUENCY TRIP ({ready})", True))
        return " ".join(parts).replace(" ;", ";")

    # -- show -----------------------------------------------------------------
    def show(self, word: str, snap: Snapshot) -> str:
        name = resolve(word, self._show_names, "name", hint="try 'show tank01' or 'help show'")
        if name in self.loops:
            return self._show_loop(name, snap)
        if name in self.equipment:
            return self._show_equipment(name, snap)
        return self._show_point(name, snap)

    def _show_point(self, name: str, snap: Snapshot) -> str:
        i = self.pmap.position(name)
        p = self.pmap.points[i]
        rng = f"{_g(p.min)}..{_g(p.max)} {p.unit}".strip()
        out = [
            f"{name} = {self._value_text(i, snap)}",
            f"  range {rng}, {'writable' if p.writable else 'read-only'}"
            f"{self._override_text(name, snap)}",
        ]
        if p.description:
            out.append(f"  {p.description}")
        return "\n".join(out)

    def _show_equipment(self, name: str, snap: Snapshot) -> str:
        out = [f"{name}{self._about(name, snap)}"]
        depth = name.count(".") + 1
        parts: list[str] = []
        for i in self.equipment[name]:
            p = self.pmap.points[i]
            bits = p.name.split(".")
            if len(bits) > depth + 1:
                sub = bits[depth]
                if sub not in parts:
                    parts.append(sub)
                continue
            out.append(
                f"  {bits[-1]:<22} {self._value_text(i, snap)}{self._override_text(p.name, snap)}"
            )
        if parts:
            out.append(f"  parts: {', '.join(parts)} ('show {name}.{parts[0]}')")
        for c in self.site.control_loops:
            if c.measurement.startswith(name + ".") or any(
                a.startswith(name + ".") for a in c.actuators
            ):
                out.append("  " + self._loop_line(c.name, snap))
        return "\n".join(out)

    def _show_loop(self, name: str, snap: Snapshot) -> str:
        c = self.loops[name]
        i = self.pmap.position(c.measurement)
        out = [
            f"control loop {name}: {self._loop_line(name, snap)}",
            f"  measures {c.measurement} = {self._value_text(i, snap)}",
        ]
        for a in c.actuators:
            out.append(
                f"  drives   {a} = {self._value_text(self.pmap.position(a), snap)}"
                f"{self._override_text(a, snap)}"
            )
        out.append(
            f"  gains kp {c.kp:g} ki {c.ki:g} kd {c.kd:g}, output {c.out_min:g}..{c.out_max:g}"
        )
        return "\n".join(out)

    def _loop_line(self, name: str, snap: Snapshot) -> str:
        k = self.loop_index[name]
        c = self.loops[name]
        unit = self.pmap[c.measurement].unit
        return (
            f"{name} setpoint {_num(float(snap.setpoints[k]), 2)} {unit} "
            f"(working {_num(float(snap.working[k]), 2)})"
        )

    def _about(self, name: str, snap: Snapshot) -> str:
        """What kind of equipment, and its limits."""
        site = self.site
        for t in site.tanks:
            if t.name == name:
                cls = (snap.status.get("loads") or {}).get(name, {}).get("class", t.workload)
                return (
                    f" (tank, {cls}, on {t.loop}): fluid alarm {t.limits.fluid_alarm_c:g} "
                    f"degC, trip {t.limits.fluid_trip_c:g} degC"
                )
        for r in site.rack_rows:
            if r.name == name:
                return (
                    f" (rack row, {r.workload_class}, on {r.cdu}): GPU throttle "
                    f"{r.chip_throttle_c:g} degC, trip {r.chip_trip_c:g} degC"
                )
        for lp in site.loops:
            if lp.name == name:
                return f" (cooling loop): supply alarm {lp.supply_alarm_c:g} degC"
            if name in {p.name for p in lp.pumps}:
                return f" (pump of {lp.name})"
            if name in {d.name for d in lp.dry_coolers}:
                return f" (dry cooler of {lp.name})"
        for c in site.cdus:
            if c.name == name:
                return f" (CDU on {c.loop}): supply alarm {c.supply_alarm_c:g} degC"
        for f in site.feeders:
            if f.name == name:
                return f" (feeder): breaker {f.breaker.rating_a:g} A at {f.voltage_v:g} V"
        for d in site.pdus:
            if d.name == name:
                return f" (PDU on {d.feeder})"
        return ""

    def _unit_of(self, name: str) -> str | None:
        """The unit of the actuator ``name`` resolves to (None: none resolves)."""
        try:
            return self.pmap[resolve(name, self.actuators, "actuator")].unit or None
        except Unknown:
            return None

    def _value(self, name: str, snap: Snapshot) -> float:
        if name not in self.pmap:
            return math.nan
        return float(snap.values[self.pmap.position(name)])

    def _value_text(self, i: int, snap: Snapshot) -> str:
        p = self.pmap.points[i]
        x = float(snap.values[i])
        q = int(snap.quality[i])
        if not math.isfinite(x):
            val = "--"
        elif p.is_bit:
            val = "on" if x else "off"
        else:
            val = f"{_num(x, 2 if abs(x) < 10 else 1)} {p.unit}".rstrip()
        qual = QUALITY_NAMES[q].upper() if 0 <= q < len(QUALITY_NAMES) else "?"
        why = ", ".join(flag_names(int(snap.flags[i])))
        text = f"{val:<14} {qual}" + (f" ({why})" if why and q != GOOD else "")
        return self._hi(text, q == BAD)

    def _override_text(self, name: str, snap: Snapshot) -> str:
        o = (snap.status.get("overrides") or {}).get(name)
        if not o:
            return ""
        left = max(0.0, float(o["until"]) - snap.t)
        return self._hi(f"  HAND {o['value']:g} by {o['by']}, {_mmss(left)} left", True)

    # -- alarms and trends ----------------------------------------------------
    def alarms(self, snap: Snapshot) -> str:
        shown = [a for a in snap.alarms if a.active or not a.acked]
        if not shown:
            return "no active or unacknowledged alarms"
        out = [f"{len(shown)} alarms ('ack KEY' or 'ack all'):"]
        for a in sorted(shown, key=lambda a: (-a.severity, a.since)):
            state = ("ACTIVE" if a.active else "cleared") + (" acked" if a.acked else " UNACKED")
            ago = _mmss(max(0.0, snap.t - a.since)).replace(" min", "")
            out.append(self._hi(f"  {a.key}  [{a.severity}] {state}, {ago} ago", a.active))
            out.append(f"      {a.message}")
        return "\n".join(out)

    def trend(self, args: list[str], snap: Snapshot, now: float, trend: Trend | None) -> str:
        if not args or len(args) > 2:
            raise Unknown(f"usage: {VERB['trend'].usage}")
        name = resolve(args[0], self.names, "point")
        window = DEFAULT_TREND_S
        if len(args) == 2:
            try:
                window = parse_duration(args[1])
            except ValueError as exc:
                raise Unknown(str(exc)) from None
            if not 60.0 <= window <= MAX_TREND_S:
                raise Unknown("a trend's window is 1m to 7 days")
        if trend is None:
            return "no historian to read trends from"
        t1 = snap.t if math.isfinite(snap.t) else now
        try:
            t, x = trend(name, t1 - window, t1)
        except Exception as exc:  # no historian yet, a locked file: said, never fatal
            return f"no trend of {name}: the historian cannot be read ({exc})"
        unit = self.pmap[name].unit
        return sparkline(name, unit, t, x, t1 - window, t1)

    def _hi(self, text: str, on: bool) -> str:
        """Bold (ANSI) when enabled; plain text otherwise."""
        return f"\x1b[1m{text}\x1b[0m" if self.ansi and on else text


_HELP_MORE = {
    "override": (
        "\n  e.g. override loop1.pump_a.speed_cmd 60 for 1m  (default 10m, at most 24h);"
        "\n  the controller's protection still beats an override"
    ),
    "trend": "\n  e.g. trend tank01.fluid_temp 2h  (window 1m..7d, default 30m)",
    "set": "\n  e.g. set loop1_supply 31  (or the point it measures: set loop1.supply_temp 31)",
    "ack": "\n  the keys are those 'alarms' lists",
    "show": "\n  e.g. show tank01, show loop1.pump_a, show row1, show loop1_supply",
}


def sparkline(
    name: str,
    unit: str,
    t: np.ndarray,
    x: np.ndarray,
    t0: float,
    t1: float,
    width: int = SPARK_WIDTH,
) -> str:
    """``name`` over [t0, t1] as ``width`` characters of SPARK_LEVELS, with min/max/last."""
    t = np.asarray(t, float)
    x = np.asarray(x, float)
    ok = np.isfinite(x) & np.isfinite(t)
    span = _span(t1 - t0)
    if not ok.any():
        return f"{name}: no data in the last {span}"
    t, x = t[ok], x[ok]
    lo, hi = float(x.min()), float(x.max())
    bins = np.clip(((t - t0) / max(t1 - t0, 1e-9) * width).astype(int), 0, width - 1)
    chars = []
    top = len(SPARK_LEVELS) - 1
    for b in range(width):
        sel = x[bins == b]
        if sel.size == 0:
            chars.append(" ")
            continue
        frac = 0.0 if hi == lo else (float(sel.mean()) - lo) / (hi - lo)
        chars.append(SPARK_LEVELS[round(frac * top)])
    u = f" {unit}" if unit else ""
    return (
        f"{name}, last {span} ({len(x)} samples, {_when(t0, t1)})\n"
        f"  |{''.join(chars)}|\n"
        f"  min {_num(lo, 2)}{u}  max {_num(hi, 2)}{u}  last {_num(float(x[-1]), 2)}{u}"
    )


def _when(t0: float, t1: float) -> str:
    """A trend's window in UTC: hours and minutes, with the month and day when the
    window spans more than one day (a 7-day trend read "19:06..19:06")."""
    a, b = _utc(t0), _utc(t1)
    if a[:10] == b[:10]:
        return f"{a[11:16]}..{b[11:16]} UTC"
    return f"{a[5:16]}..{b[5:16]} UTC"


def resolve(word: str, candidates: Sequence[str], what: str, *, hint: str = "") -> str:
    """An exact name, or the one candidate ``word`` is a prefix of; else ``Unknown``
    that lists the candidates or says "did you mean"."""
    if word in candidates:
        return word
    found = [c for c in candidates if c.startswith(word)]
    if len(found) == 1:
        return found[0]
    if found:
        # equipment stands for its points: tank10, not tank10.enable, tank10.level, ...
        top = sorted(c for c in found if not any(c.startswith(o + ".") for o in found))
        more = f", ... {len(top) - LIST_MAX} more" if len(top) > LIST_MAX else ""
        points = " (and their points)" if len(top) < len(found) else ""
        raise Unknown(f"'{word}' is ambiguous: {', '.join(top[:LIST_MAX])}{more}{points}")
    near = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if near:
        raise Unknown(f"no {what} '{word}' (did you mean {' or '.join(near)}?)")
    return _no(word, what, hint or ("none known" if not candidates else ""))


def _no(word: str, what: str, hint: str) -> str:
    raise Unknown(f"no {what} '{word}'" + (f" ({hint})" if hint else ""))


#: a bit's words, as ``show`` prints them
_ON_OFF = {"on": 1.0, "off": 0.0}


def _number(text: str) -> float:
    """A number as a person types it: ``3_2`` (Python's digit grouping) is not 32."""
    try:
        if "_" in text:
            raise ValueError(text)
        return float(text)
    except ValueError:
        raise Unknown(f"'{text}' is not a number") from None


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "--"


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _mmss(s: float) -> str:
    s = math.ceil(s)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d} h"
    return f"{s // 60}:{s % 60:02d} min"


def _span(s: float) -> str:
    return f"{s / 3600:g} h" if s >= 3600 else f"{s / 60:g} min"


def _utc(t: float) -> str:
    if not math.isfinite(t):
        return "----------T--:--:--"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def wrap(text: str, width: int = WIDTH - 1) -> str:
    """Every line at most ``width`` characters (continuations indented)."""
    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * min(len(line) - len(line.lstrip()) + 4, 20)
        out.extend(
            textwrap.wrap(
                line, width, subsequent_indent=indent, break_long_words=True, drop_whitespace=True
            )
        )
    return "\n".join(out)
