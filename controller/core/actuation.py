"""Actuation: what the scan's commands become on the wire.

In order, for every command: to the register's resolution, into the point's
range, rate-limited on the way up (a valve or a speed 10 %/s, a load 5 % of
its rating per second; lowering a budget or a cap is never delayed: it is how
protection acts; an operator's override is not limited either), and skipped
when within a deadband of what was last sent — unless its refresh window has
turned (a PLC that restarted gets its commands again). The heartbeat goes
first, changed every scan.

Every point has its own refresh window, ``WRITE_REFRESH_S`` long, its phase
spread over the period by the point's index: an unchanged command is resent
once per window, at most ``WRITE_REFRESH_S`` after it was last sent. Windows
shared by every point would resend a large hall's ~800 steady commands in one
scan a minute, the slowest scan of all; spread, each scan resends its share.

Every holding register and coil written is verified: it must read back what
was written within ``WRITE_VERIFY_S``, or an alarm says so and it is resent.
Coils too: a pump's run command or a tank's enable stopped by hand at another
master is as much a foreign write as a valve moved by hand.

A register verified once keeps being compared with what was written: when it
reads back something else (beyond half a count) while nothing of ours is on
its way, another Modbus master wrote it. So did one when a write of ours not
yet verified reads back neither our value nor what the register held when we
wrote (once until one of ours reads back: a PLC clamping our value is the
unverified-write alarm's, not a foreign write every scan). The next command to that point is
sent at once (no deadband, no rate limit) and an event names the point, the
value found and the value restored; the foreign write is audited (who:
``unknown``, where: ``modbus``). Pulses (a reset the PLC clears itself) and
the heartbeat are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..signals import Audit, Write
from .alarms import Alarms
from .topology import Topology
from .view import Cmds, ScanView

WRITE_VERIFY_S = 5.0  # a write not read back within this is an alarm
WRITE_REFRESH_S = 60.0  # rewrite an unchanged command this often (PLC restarts)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(slots=True)
class _Pending:
    value: float
    t: float
    why: str
    #: what the register read back when the first unverified write went out, and
    #: the value of ours sent before this one, unverified (NaN: unknown, none): a
    #: device that applies writes a scan late reads back one of these
    before: float = math.nan
    prev: float = math.nan


class Actuation:
    """See the module docstring."""

    def __init__(self, topo: Topology, scan_s: float) -> None:
        self.topo = topo
        self.scan_s = scan_s
        self.heartbeat = 0
        self._last_sent: dict[int, tuple[float, float]] = {}  # point -> (value, t)
        self._pending: dict[int, _Pending] = {}
        #: registers and coils that read back our value: point -> that value
        self._verified: dict[int, float] = {}
        #: foreign writes seen, not yet restored: point -> (value found, ours)
        self._foreign: dict[int, tuple[float, float]] = {}
        self._pulses: set[int] = set()  # points written as pulses: never judged
        #: points whose unverified write read back a third value, taken for a foreign
        #: write: not again until one of ours reads back (a PLC that clamps our value
        #: would otherwise be "foreign" every scan; the unverified-write alarm says it)
        self._foreign_unverified: set[int] = set()
        self._view: ScanView | None = None  # the scan's view, from verify to actuate
        #: foreign writes found this scan, for the audit log (``take_audit``)
        self._audit: list[Audit] = []
        # What actuate needs of each point, looked up once (the map does not
        # change): name, resolution (0: written as is), min, max, read back
        # (a holding register or a coil)?, rise per second, deadband.
        self._spec: list[tuple[str, float, float | None, float | None, bool, float, float]] = [
            (
                p.name,
                p.scale if p.scale and p.type != "f32" else 0.0,
                p.min,
                p.max,
                p.table in ("holding", "coil"),
                _max_rise_per_s(p.unit, p.max),
                _deadband(p.unit, p.scale),
            )
            for p in topo.pmap.points
        ]
        #: per point: how far a read-back may be from what was written (half a count)
        self._tol = [max(abs(p.scale) * 0.51, 1e-9) for p in topo.pmap.points]
        #: per point: where in the refresh period its window starts (golden-ratio
        #: steps: any subset of indices, the command points among them, spreads evenly)
        self._phase = [(i * _GOLDEN % 1.0) * WRITE_REFRESH_S for i in range(len(topo.pmap.points))]

    def verify(self, view: ScanView, alarms: Alarms) -> None:
        """A command is verified when its register reads back what was written."""
        t = view.t
        self._view = view
        pts = self.topo.pmap.points
        tols, good, val = self._tol, view.good, view.val
        for i, p in list(self._pending.items()):
            point = pts[i]
            if good(i) and abs(val(i) - p.value) <= tols[i]:
                del self._pending[i]
                self._foreign_unverified.discard(i)
                if i not in self._pulses:
                    self._verified[i] = p.value
                alarms.alarm(t, f"write:{point.name}", False, f"write of {point.name} verified")
            elif (
                good(i)
                and abs(val(i) - p.before) > tols[i]  # False while ``before`` is unknown
                and not abs(val(i) - p.prev) <= tols[i]
                and i not in self._pulses
                and i not in self._foreign_unverified
            ):
                # neither ours nor what it held before: another master wrote it
                # between our write and this read (a hand write in that second
                # was once overwritten without a word)
                del self._pending[i]
                self._foreign_unverified.add(i)
                self._foreign[i] = (val(i), p.value)
                self._last_sent.pop(i, None)  # the next command goes out at once
            elif good(i) and t - p.t > WRITE_VERIFY_S:
                # (unreadable, it is judged when it reads again: a lost unit is
                # its own alarm, not one "not read back (reads nan)" per write)
                del self._pending[i]
                self._last_sent.pop(i, None)  # resend next scan
                alarms.alarm(
                    t,
                    f"write:{point.name}",
                    True,
                    f"write of {point.name} = {p.value:g} not read back within "
                    f"{WRITE_VERIFY_S:g} s (reads {view.val(i):g})",
                    700,
                )
        foreign = [
            (i, ours)
            for i, ours in self._verified.items()
            if good(i) and abs(val(i) - ours) > tols[i]
        ]
        for i, ours in foreign:
            del self._verified[i]
            self._foreign[i] = (val(i), ours)
            self._last_sent.pop(i, None)  # the next command goes out at once

    def not_sent(self, points: Iterable[int]) -> None:
        """Writes that never reached their device (a unit lost, a refusal): there
        is nothing to read back, and the next scan sends them again. Expected
        still, each read back as "not read back within 5 s" after the outage (50
        alarms at once) or a value the PLC held as a "foreign write"."""
        for i in points:
            self._pending.pop(i, None)
            self._last_sent.pop(i, None)

    def take_audit(self) -> list[Audit]:
        """The foreign writes found since the last call, as audit records."""
        out, self._audit = self._audit, []
        return out

    def actuate(self, t: float, cmds: Cmds, alarms: Alarms | None = None) -> list[Write]:
        spec = self._spec
        last_sent, pending, scan_s = self._last_sent, self._pending, self.scan_s
        hb = self.topo.ix.plc.heartbeat
        writes: list[Write] = []
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        writes.append(Write(spec[hb][0], float(self.heartbeat), "heartbeat"))
        isfinite = math.isfinite
        get_last = last_sent.get
        phase = self._phase
        for i, cmd in cmds.items():
            value = cmd.value
            # when this point's refresh window began: sent since, it is not due again
            window = t - (t + phase[i]) % WRITE_REFRESH_S
            if cmd.pulse:
                last_sent.pop(i, None)  # a pulse is always sent
            else:
                # Most of a large hall's commands repeat what was sent (an enable,
                # a steady budget): the value sent is already on the register's
                # grid, in range and within any rate, so it ends in the deadband
                # below. Skipped here without the arithmetic.
                last = get_last(i)
                if last is not None and last[0] == value and last[1] >= window:
                    continue
            name, scale, lo, hi, read_back, rise_per_s, dead = spec[i]
            if not isfinite(value):
                continue
            if scale:  # to the register's resolution, then the range
                value = round(value / scale) * scale
            # max(lo, value) and min(hi, value) as comparisons (no builtin call for
            # each of ~100 commands a scan), keeping the bound unless strictly beyond it
            if lo is not None and not value > lo:
                value = lo
            if hi is not None and not value < hi:
                value = hi
            last = last_sent.get(i)
            if last is not None and not cmd.override and rise_per_s < math.inf:
                # Rate limit raises (a load, a valve): lowering a budget or a cap is
                # never delayed, it is how protection acts.
                up = rise_per_s * max(t - last[1], scan_s)
                if value > last[0] + up:
                    value = last[0] + up
                    if scale:
                        value = math.floor(value / scale) * scale
            if last is not None and abs(last[0] - value) < dead and last[1] >= window:
                continue  # within the deadband of what was sent, and not due again
            last_sent[i] = (value, t)
            self._verified.pop(i, None)  # judged again once this write reads back
            if cmd.pulse:
                self._pulses.add(i)
            foreign = self._foreign.pop(i, None)
            if foreign is not None:
                self._restored(t, name, foreign, value, cmd.why, alarms)
            if read_back and not cmd.pulse:
                # (a pulse is cleared by the PLC itself: it never reads back, and
                # once alarmed "not read back" after every reset)
                # A register that keeps being rewritten is still unverified since
                # the first write that did not read back: keep that time (and what
                # it held then).
                was = pending.get(i)
                if was is not None:
                    pending[i] = _Pending(value, was.t, cmd.why, was.before, was.value)
                else:
                    view = self._view
                    before = view.val(i) if view is not None and view.good(i) else math.nan
                    pending[i] = _Pending(value, t, cmd.why, before)
            writes.append(Write(name, float(value), cmd.why, cmd.who, cmd.where))
        return writes

    def _restored(
        self,
        t: float,
        name: str,
        foreign: tuple[float, float],
        value: float,
        why: str,
        alarms: Alarms | None,
    ) -> None:
        """A foreign write is being overwritten: say so, and audit it."""
        found, ours = foreign
        msg = (
            f"foreign write on {name}: read back {found:g} where the controller had "
            f"written {ours:g}; restored to {value:g} ({why})"
        )
        if alarms is not None:
            alarms.event(t, "info", name, msg, 600)
        self._audit.append(Audit(t, "unknown", "modbus", name, found, value, msg, False))


def _deadband(unit: str, scale: float) -> float:
    """Smallest change worth a write: below this the plant would not notice."""
    if unit == "%":
        return 0.5
    if unit == "kW":
        return 1.0
    if unit == "W":
        return 5.0
    return max(abs(scale), 1e-9) * 0.5


def _max_rise_per_s(unit: str, full: float | None) -> float:
    """How fast a command may rise: valves and speeds 10 %/s, loads 5 % of rating/s."""
    if unit == "%":
        return 10.0
    if unit in ("kW", "W") and full:
        return 0.05 * full
    return math.inf
