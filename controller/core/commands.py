"""The one command path: every command from a person or a system comes in here.

A command is a small frozen record (``SetMode``, ``OverrideActuator``, ...)
given by a ``Principal`` — who (a user, or the grid) and from where (``cli``,
``opcua``, ``console``, ``grid``). ``CommandPath.give`` checks it, in order:

1. **Role**: viewers read only; operators set modes and setpoints, override
   actuators, return them to auto, acknowledge alarms and request or clear
   curtailments; engineers also tune loops and reset latched interlocks; the
   grid may only request and clear curtailments and release an
   under-frequency trip (operators may release it too).
2. **The site's limits**: a setpoint within what its zone can take (below
   its alarm, leaving room for trim & respond), an override within the
   point's range and for at most a day, a curtailment between zero and the
   site's import limit.
3. **Precedence**: hard interlocks > operator override > grid > headroom >
   economics. An override of an actuator that a fail-safe zone or a latched
   trip holds is refused (the interlock beats it) and says which; an override
   of a budget is still bounded by thermal and breaker protection at every
   scan.

It then applies the command to the controller's state (it takes effect at
the next scan), and returns a ``CommandResult``: accepted or refused, a
message that says why, and the ``Audit`` record the caller must store.
Refusals are audited too. Pure: the time comes in with the command.
"""

from __future__ import annotations

import difflib
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace

from thermogate.plc.controlloops import held_quantities
from thermogate.plc.equipment import ControlLoop

from ..signals import Audit, Event
from .alarms import Alarms
from .regulation import Regulation
from .state import MODES, ControllerState, Curtailment, Override
from .topology import Topology
from .trips import TripLatch, latch_key
from .underfreq import UnderFrequencyResponse
from .zones import FailSafeZones

ROLES = ("viewer", "operator", "engineer")
FACES = ("cli", "opcua", "console", "grid")
MAX_OVERRIDE_S = 86_400.0  # an override expires within a day at the latest
MAX_CURTAIL_S = 7 * 86_400.0
#: writable points no override may hold: the watchdog's heartbeat and the PLC's
#: self-clearing pulses. ``plc.ufls_release`` held at 1 released a trip the
#: moment the frequency recovered, with nobody deciding it (``release`` checks)
CONTROLLER_OWNED = frozenset({"plc.heartbeat", "plc.reset", "plc.ufls_release"})
#: the shortest override or curtailment: one shorter than a scan never reached the plant
MIN_HOLD_S = 1.0
MAX_GAIN = 1e4  # the site file's bound on kp, ki, kd


@dataclass(frozen=True)
class Principal:
    """Who gives a command, with which role, from where."""

    user: str
    role: str  # viewer | operator | engineer | grid
    face: str  # cli | opcua | console | grid

    @property
    def origin(self) -> str:
        """``opcua:alice``, ``console:bob``, ``cli:carol``, or ``grid``."""
        return "grid" if self.face == "grid" else f"{self.face}:{self.user}"

    @classmethod
    def grid(cls) -> Principal:
        return cls("grid", "grid", "grid")


# -- the commands ----------------------------------------------------------
@dataclass(frozen=True)
class SetMode:
    mode: str  # auto | manual | maintenance
    why: str = ""


@dataclass(frozen=True)
class SetSetpoint:
    loop: str  # a control loop's name, or the point it measures
    value: float
    why: str = ""


@dataclass(frozen=True)
class OverrideActuator:
    point: str
    value: float
    duration_s: float
    why: str = ""


@dataclass(frozen=True)
class ReturnToAuto:
    point: str | None  # None: every override
    why: str = ""


@dataclass(frozen=True)
class Acknowledge:
    alarm: str | None  # None: every unacknowledged alarm
    why: str = ""


@dataclass(frozen=True)
class ResetInterlock:
    load: str | None  # a tank or rack row; None: every latched trip
    why: str = ""


@dataclass(frozen=True)
class SetTuning:
    loop: str
    kp: float | None = None
    ki: float | None = None
    kd: float | None = None
    why: str = ""


@dataclass(frozen=True)
class RequestCurtailment:
    limit_kw: float  # import at most this ...
    duration_s: float  # ... for this long ...
    start: float | None = None  # ... from then (None: now)
    why: str = ""


@dataclass(frozen=True)
class ClearCurtailment:
    id: int | None  # None: every curtailment
    why: str = ""


@dataclass(frozen=True)
class ReleaseUnderFrequency:
    """Let the load the under-frequency relay shed come back (ERCOT's release)."""

    why: str = ""


Command = (
    SetMode
    | SetSetpoint
    | OverrideActuator
    | ReturnToAuto
    | Acknowledge
    | ResetInterlock
    | SetTuning
    | RequestCurtailment
    | ClearCurtailment
    | ReleaseUnderFrequency
)

#: the least role that may give each command (the grid: only curtailments)
REQUIRED_ROLE: dict[type, str] = {
    SetMode: "operator",
    SetSetpoint: "operator",
    OverrideActuator: "operator",
    ReturnToAuto: "operator",
    Acknowledge: "operator",
    RequestCurtailment: "operator",
    ClearCurtailment: "operator",
    ReleaseUnderFrequency: "operator",
    SetTuning: "engineer",
    ResetInterlock: "engineer",
}
GRID_COMMANDS = (RequestCurtailment, ClearCurtailment, ReleaseUnderFrequency)


@dataclass(frozen=True)
class CommandResult:
    accepted: bool
    message: str
    audit: Audit


class Refused(Exception):
    """A command that fails a check; its message says why."""


def may(who: Principal, cmd: Command) -> bool:
    """Whether ``who``'s role allows ``cmd``."""
    if who.role == "grid":
        return isinstance(cmd, GRID_COMMANDS)
    if who.role not in ROLES:
        return False
    return ROLES.index(who.role) >= ROLES.index(REQUIRED_ROLE[type(cmd)])


#: the longest reason kept (the audit log is read on 80-column terminals too)
MAX_WHY_CHARS = 300


def plain_why(why: str) -> str:
    """A reason as the audit log keeps it: one line, control characters (an ESC
    that would recolour or clear the terminal of whoever reads the log, a
    newline that would fake a second row) shown as ``\\xNN``, and at most
    ``MAX_WHY_CHARS`` characters."""
    out = "".join(
        f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in why
    ).strip()
    return out if len(out) <= MAX_WHY_CHARS else out[: MAX_WHY_CHARS - 1] + "…"


class CommandPath:
    """See the module docstring."""

    def __init__(
        self,
        topo: Topology,
        state: ControllerState,
        alarms: Alarms,
        zones: FailSafeZones,
        trips: TripLatch,
        regulation: Regulation,
        underfreq: UnderFrequencyResponse,
    ) -> None:
        self.topo = topo
        self.state = state
        self.alarms = alarms
        self.zones = zones
        self.trips = trips
        self.regulation = regulation
        self.underfreq = underfreq
        self._loops = {c.name: c for c in topo.site.control_loops}
        #: what each loop may hold, its setpoint range among it (the site file's rule)
        self._held = held_quantities(topo.site)
        self._loop_of_point = {c.measurement: c for c in topo.site.control_loops}

    def give(self, cmd: Command, by: Principal, t: float) -> CommandResult:
        if cmd.why:
            cmd = replace(cmd, why=plain_why(cmd.why))
        if not may(by, cmd):
            if by.role == "grid":
                why = (
                    "refused: the grid may only request or clear curtailments and release "
                    f"an under-frequency trip, not {_name(cmd)}"
                )
            elif by.role not in ROLES:
                why = f"refused: {by.origin} has no known role ('{by.role}')"
            else:
                need = REQUIRED_ROLE[type(cmd)]
                why = f"refused: {by.origin} has role {by.role}; {_name(cmd)} needs role {need}"
            return self._result(t, by, cmd, _target(cmd), None, None, False, why)
        try:
            target, old, new, message = self._apply(cmd, by, t)
        except Refused as exc:
            return self._result(t, by, cmd, _target(cmd), None, None, False, f"refused: {exc}")
        self.state.changed()
        self.alarms.queue(
            Event(t, "ack" if isinstance(cmd, Acknowledge) else "info", by.origin, message, 400)
        )
        return self._result(t, by, cmd, target, old, new, True, message)

    def _result(
        self,
        t: float,
        by: Principal,
        cmd: Command,
        target: str,
        old: float | None,
        new: float | None,
        ok: bool,
        message: str,
    ) -> CommandResult:
        why = f"{message} ({cmd.why})" if cmd.why else message
        return CommandResult(ok, message, Audit(t, by.user, by.face, target, old, new, why, ok))

    # -- one method per command: (target, old, new, message) or Refused ----------
    def _apply(
        self, cmd: Command, by: Principal, t: float
    ) -> tuple[str, float | None, float | None, str]:
        st = self.state
        if isinstance(cmd, SetMode):
            if cmd.mode not in MODES:
                raise Refused(f"unknown mode '{cmd.mode}' (one of {', '.join(MODES)})")
            if cmd.mode == st.mode:
                raise Refused(f"already in {st.mode} mode")
            was, st.mode = st.mode, cmd.mode
            return "mode", None, None, f"mode {was} -> {cmd.mode} by {by.origin}"
        if isinstance(cmd, SetSetpoint):
            c = self._loop(cmd.loop)
            lo, hi, what = self.setpoint_limits(c)
            if not (math.isfinite(cmd.value) and lo <= cmd.value <= hi):
                raise Refused(
                    f"setpoint {_beside(cmd.value, lo, hi)} of {c.name} is outside "
                    f"{lo:g}..{hi:g} ({what})"
                )
            old = self.regulation.base_setpoint(c)
            st.setpoints[c.name] = float(cmd.value)
            return (
                f"{c.name}.setpoint",
                old,
                float(cmd.value),
                f"{c.name} setpoint {old:g} -> {cmd.value:g} by {by.origin}",
            )
        if isinstance(cmd, OverrideActuator):
            return self._override(cmd, by, t)
        if isinstance(cmd, ReturnToAuto):
            if cmd.point is None:
                if not st.overrides:
                    raise Refused("no actuator is overridden")
                names = sorted(st.overrides)
                st.overrides.clear()
                return "overrides", None, None, f"{', '.join(names)} back to auto by {by.origin}"
            ov = st.overrides.pop(cmd.point, None)
            if ov is None:
                listed = ", ".join(sorted(st.overrides)) or "none"
                raise Refused(f"{cmd.point} is not overridden (overridden: {listed})")
            return cmd.point, ov.value, None, f"{cmd.point} back to auto by {by.origin}"
        if isinstance(cmd, Acknowledge):
            if cmd.alarm is not None and self.alarms.record(cmd.alarm) is None:
                pending = [r.key for r in self.alarms.records() if not r.acked]
                raise Refused(
                    f"no alarm '{cmd.alarm}' to acknowledge"
                    f" (unacknowledged: {', '.join(pending) or 'none'})"
                )
            done = self.alarms.acknowledge(cmd.alarm, by.origin)
            if not done:
                raise Refused(
                    f"{cmd.alarm} is already acknowledged"
                    if cmd.alarm
                    else "no unacknowledged alarms"
                )
            target = f"alarm:{cmd.alarm}" if cmd.alarm else "alarms"
            return target, None, None, f"acknowledged by {by.origin}: {', '.join(done)}"
        if isinstance(cmd, ResetInterlock):
            if cmd.load is not None:
                if cmd.load not in self.topo.load:
                    raise Refused(
                        f"no tank or rack row named '{cmd.load}'{_hint(cmd.load, self.topo.load)}"
                    )
                if latch_key(cmd.load) not in st.latched:
                    listed = ", ".join(sorted(st.latched)) or "none"
                    raise Refused(f"{cmd.load} has no latched trip (latched: {listed})")
            self.trips.request_reset(t, by.user, by.face, cmd.why or "reset", cmd.load)
            if cmd.load is None and not st.latched:
                # the PLC's reset is pulsed all the same (a latch the controller has
                # not read yet is cleared too), but nobody is told a trip is waiting
                outcome = "none latched as last read; the PLC's reset is pulsed anyway"
            else:
                outcome = "released once its PLC interlock reads clear"
            what = cmd.load or "every latched trip"
            return (
                f"interlock:{cmd.load or 'all'}",
                None,
                None,
                f"reset requested by {by.origin} ({by.face}) for {what}: {outcome}",
            )
        if isinstance(cmd, SetTuning):
            c = self._loop(cmd.loop)
            gains = {"kp": cmd.kp, "ki": cmd.ki, "kd": cmd.kd}
            given = {k: v for k, v in gains.items() if v is not None}
            if not given:
                raise Refused("no gain given (kp, ki, kd)")
            for k, v in given.items():
                if not (math.isfinite(v) and 0.0 <= v <= MAX_GAIN):
                    raise Refused(f"{k} {v:g} is outside 0..{MAX_GAIN:g}")
            now = st.tunings.get(c.name, {"kp": c.kp, "ki": c.ki, "kd": c.kd})
            st.tunings[c.name] = {**now, **{k: float(v) for k, v in given.items()}}
            text = ", ".join(f"{k} {now[k]:g} -> {v:g}" for k, v in given.items())
            return f"{c.name}.tuning", None, None, f"{c.name} tuned by {by.origin}: {text}"
        if isinstance(cmd, RequestCurtailment):
            return self._curtail(cmd, by, t)
        if isinstance(cmd, ReleaseUnderFrequency):
            why = self.underfreq.refusal()
            if why is not None:
                raise Refused(why)
            self.underfreq.request_release(by.user, by.face, cmd.why or "release")
            return (
                "grid.under_frequency",
                None,
                None,
                f"under-frequency release by {by.origin}: the PLC releases the shed load "
                "at the next scan",
            )
        if isinstance(cmd, ClearCurtailment):
            if not st.curtailments:
                raise Refused("no curtailment to clear")
            if cmd.id is None:
                gone = st.curtailments
                st.curtailments = []
            else:
                gone = [c for c in st.curtailments if c.id == cmd.id]
                if not gone:
                    ids = ", ".join(f"#{c.id}" for c in st.curtailments)
                    raise Refused(f"no curtailment #{cmd.id} (current: {ids})")
                st.curtailments = [c for c in st.curtailments if c.id != cmd.id]
            ids = ", ".join(f"#{c.id}" for c in gone)
            return (
                f"curtailment:{cmd.id or 'all'}",
                None,
                None,
                f"curtailment {ids} cleared by {by.origin}",
            )
        raise Refused(f"unknown command {type(cmd).__name__}")

    def _override(
        self, cmd: OverrideActuator, by: Principal, t: float
    ) -> tuple[str, float | None, float | None, str]:
        pmap = self.topo.pmap
        try:
            i = pmap.position(cmd.point)
        except KeyError as exc:
            raise Refused(str(exc.args[0])) from None
        p = pmap.points[i]
        if not p.writable or p.name in CONTROLLER_OWNED:
            raise Refused(f"{p.name} is not an actuator (writable commands only)")
        lo = 0.0 if p.is_bit else (p.min if p.min is not None else -math.inf)
        hi = 1.0 if p.is_bit else (p.max if p.max is not None else math.inf)
        if not (math.isfinite(cmd.value) and lo <= cmd.value <= hi):
            raise Refused(
                f"{_beside(cmd.value, lo, hi)} is outside {p.name}'s range {lo:g}..{hi:g} {p.unit}"
            )
        if p.is_bit and cmd.value not in (0.0, 1.0):
            raise Refused(f"{p.name} is a bit: 0 or 1")
        if not (math.isfinite(cmd.duration_s) and MIN_HOLD_S <= cmd.duration_s <= MAX_OVERRIDE_S):
            raise Refused(
                f"duration {cmd.duration_s:g} s must be at least {MIN_HOLD_S:g} s and at most "
                f"{MAX_OVERRIDE_S / 3600:g} h (an override always expires)"
            )
        held = self.zones.holds(i)
        if held is not None:
            raise Refused(
                f"{p.name} is held by protection ({held}): the interlock beats an override"
            )
        load = next((ld for ld in self.topo.loads if ld.enable == i), None)
        if load is not None and latch_key(load.name) in self.state.latched:
            raise Refused(
                f"{load.name} is latched off by a PLC trip: an engineer must reset it first"
            )
        old = self.state.overrides.get(p.name)
        self.state.overrides[p.name] = Override(
            float(cmd.value), by.user, by.face, cmd.why or "manual", t, t + cmd.duration_s
        )
        return (
            p.name,
            None if old is None else old.value,
            float(cmd.value),
            f"{p.name} overridden to {cmd.value:g}{' ' + p.unit if p.unit else ''} for "
            f"{_duration(cmd.duration_s)} by {by.origin}",
        )

    def _curtail(
        self, cmd: RequestCurtailment, by: Principal, t: float
    ) -> tuple[str, float | None, float | None, str]:
        site_kw = self.topo.site.import_limit_kw
        if not (math.isfinite(cmd.limit_kw) and 0.0 <= cmd.limit_kw <= site_kw):
            raise Refused(
                f"limit {_beside(cmd.limit_kw, 0.0, site_kw)} kW is outside 0..{site_kw:g} kW "
                "(the site's import limit)"
            )
        if not (math.isfinite(cmd.duration_s) and MIN_HOLD_S <= cmd.duration_s <= MAX_CURTAIL_S):
            raise Refused(
                f"duration {cmd.duration_s:g} s must be at least {MIN_HOLD_S:g} s "
                "and at most 7 days"
            )
        start = t if cmd.start is None else float(cmd.start)
        if not math.isfinite(start) or start < t - 60.0 or start > t + MAX_CURTAIL_S:
            raise Refused("start must be now or within the next 7 days")
        st = self.state
        c = Curtailment(
            st.next_curtailment,
            float(cmd.limit_kw),
            start,
            start + cmd.duration_s,
            by.user,
            by.face,
            cmd.why,
        )
        st.next_curtailment += 1
        st.curtailments.append(c)
        when = "now" if start <= t else f"in {_duration(start - t)}"
        return (
            f"curtailment:{c.id}",
            None,
            c.limit_kw,
            f"curtailment #{c.id}: import <= {c.limit_kw:g} kW {when} for "
            f"{_duration(cmd.duration_s)}, by {by.origin}",
        )

    # -- helpers ------------------------------------------------------------
    def _loop(self, name: str) -> ControlLoop:
        c = self._loops.get(name) or self._loop_of_point.get(name)
        if c is None:
            raise Refused(
                f"no control loop '{name}'"
                + (_hint(name, self._loops) or _hint(name, self._loop_of_point))
            )
        return c

    def setpoint_limits(self, c: ControlLoop) -> tuple[float, float, str]:
        """The setpoints a loop accepts, and why: the site's one rule (also what a
        site file's setpoint is checked against at load)."""
        h = self._held[c.measurement]
        return h.lo, h.hi, h.why


def _target(cmd: Command) -> str:
    """What a refused command was about, for the audit log."""
    if isinstance(cmd, SetMode):
        return "mode"
    if isinstance(cmd, Acknowledge):
        return f"alarm:{cmd.alarm}" if cmd.alarm else "alarms"
    if isinstance(cmd, ResetInterlock):
        return f"interlock:{cmd.load or 'all'}"
    if isinstance(cmd, RequestCurtailment):
        return "curtailment"
    if isinstance(cmd, ClearCurtailment):
        return f"curtailment:{cmd.id or 'all'}"
    if isinstance(cmd, ReleaseUnderFrequency):
        return "grid.under_frequency"
    if isinstance(cmd, ReturnToAuto):
        return cmd.point or "overrides"
    return cmd.point if isinstance(cmd, OverrideActuator) else cmd.loop


def _name(cmd: Command) -> str:
    return type(cmd).__name__


def _hint(name: str, known: Iterable[str]) -> str:
    """' (did you mean ...?)': every name ``name`` begins (``loop1`` names both
    ``loop1_dp`` and ``loop1_supply``: the closest spelling alone picked one), else
    the closest spelling."""
    names = list(known)
    near = sorted(k for k in names if k.startswith(name))[:3] if name else []
    if not near:
        near = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {' or '.join(repr(k) for k in near)}?)" if near else ""


def _beside(x: float, lo: float, hi: float) -> str:
    """``x`` refused against ``lo..hi``, with the digits that show it is outside:
    57.50001 was said as "57.5 is outside 20..57.5"."""
    text = f"{x:g}"
    if text in (f"{lo:g}", f"{hi:g}"):
        text = repr(float(x))
    return text


def _duration(s: float) -> str:
    """``2 h``, ``1 h 30 min``, ``11 min 29 s``, ``45 s``: to the second (a
    start computed from an event's time printed as ``in 11.4796 min``)."""
    s = round(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{v} {u}" for v, u in ((h, "h"), (m, "min"), (sec, "s")) if v]
    return " ".join(parts) if parts else "0 s"
