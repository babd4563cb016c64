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

import numpy as np

from ..signals import BAD, Audit, Write
from .alarms import Alarms
from .topology import Topology
from .view import Cmd, Cmds, ScanView

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


#: below this many commands a scan the write rules run point by point only
#: (the demo hall's ~60: numpy's per-call cost made its actuation 2x slower)
VECTOR_FROM_N = 200


class Actuation:
    """See the module docstring.

    What was last sent to each point and which registers read back our value are
    kept as arrays by point position (not dicts): the scan's ~1,200 commands, most
    of them repeating what was sent, are sorted out in one vector comparison, and
    the ~1,100 verified registers are compared with their read-back in another.
    Per-point Python runs only for the commands that may go on the wire."""

    def __init__(self, topo: Topology, scan_s: float) -> None:
        self.topo = topo
        self.scan_s = scan_s
        self.heartbeat = 0
        #: from this many commands a scan, the vector passes first (``VECTOR_FROM_N``)
        self.vector_from_n = VECTOR_FROM_N
        n = len(topo.pmap.points)
        #: what was last sent per point: value, time, and whether anything was
        #: (cleared: the next command goes out at once)
        self._last_v = np.zeros(n)
        self._last_t = np.zeros(n)
        self._sent = np.zeros(n, dtype=bool)
        self._pending: dict[int, _Pending] = {}
        #: registers and coils that read back our value: the mask, and that value
        self._verified = np.zeros(n, dtype=bool)
        self._verified_v = np.zeros(n)
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
        self._tol_a = np.array(self._tol)
        # ... and the rules of ``actuate`` as arrays (``_to_send``; no bound: +-inf)
        self._scale_a = np.array([sp[1] for sp in self._spec], dtype=float)
        self._lo_a = np.array([-math.inf if sp[2] is None else sp[2] for sp in self._spec])
        self._hi_a = np.array([math.inf if sp[3] is None else sp[3] for sp in self._spec])
        self._rise_a = np.array([sp[5] for sp in self._spec], dtype=float)
        self._dead_a = np.array([sp[6] for sp in self._spec], dtype=float)
        #: per point: where in the refresh period its window starts (golden-ratio
        #: steps: any subset of indices, the command points among them, spreads evenly)
        self._phase = np.array([(i * _GOLDEN % 1.0) * WRITE_REFRESH_S for i in range(n)])
        #: per point: its write alarm's key and the text that clears it (made once,
        #: not twice for each of ~150 writes verified a scan)
        self._write_key = [f"write:{p.name}" for p in topo.pmap.points]
        self._verified_msg = [f"write of {p.name} verified" for p in topo.pmap.points]

    def verify(self, view: ScanView, alarms: Alarms) -> None:
        """A command is verified when its register reads back what was written."""
        t = view.t
        self._view = view
        tols, good, val = self._tol, view.good, view.val
        pending, pulses, foreign_unverified = self._pending, self._pulses, self._foreign_unverified
        keys, cleared = self._write_key, self._verified_msg
        for i, p in list(pending.items()):
            if not good(i):
                continue  # judged when it reads again (see below)
            v = val(i)
            tol = tols[i]
            if abs(v - p.value) <= tol:
                del pending[i]
                foreign_unverified.discard(i)
                if i not in pulses:
                    self._verified[i] = True
                    self._verified_v[i] = p.value
                alarms.alarm(t, keys[i], False, cleared[i])
            elif (
                abs(v - p.before) > tol  # False while ``before`` is unknown
                and not abs(v - p.prev) <= tol
                and i not in pulses
                and i not in foreign_unverified
            ):
                # neither ours nor what it held before: another master wrote it
                # between our write and this read (a hand write in that second
                # was once overwritten without a word)
                del pending[i]
                foreign_unverified.add(i)
                self._foreign[i] = (v, p.value)
                self._sent[i] = False  # the next command goes out at once
            elif t - p.t > WRITE_VERIFY_S:
                # (unreadable, it is judged when it reads again: a lost unit is
                # its own alarm, not one "not read back (reads nan)" per write)
                del pending[i]
                self._sent[i] = False  # resend next scan
                name = self._spec[i][0]
                alarms.alarm(
                    t,
                    keys[i],
                    True,
                    f"write of {name} = {p.value:g} not read back within "
                    f"{WRITE_VERIFY_S:g} s (reads {v:g})",
                    700,
                )
        # Every verified register against its read-back in one pass (vectorises
        # ``good(i) and abs(val(i) - ours) > tol``; NaN compares False, as there).
        ver = np.flatnonzero(self._verified)
        if ver.size:
            ours = self._verified_v[ver]
            read = np.asarray(view.values, dtype=float)[ver]
            moved = (view.quality[ver] != BAD) & (np.abs(read - ours) > self._tol_a[ver])
            for j in np.flatnonzero(moved).tolist():
                i = int(ver[j])
                self._verified[i] = False
                self._foreign[i] = (val(i), float(ours[j]))
                self._sent[i] = False  # the next command goes out at once

    def not_sent(self, points: Iterable[int]) -> None:
        """Writes that never reached their device (a unit lost, a refusal): there
        is nothing to read back, and the next scan sends them again. Expected
        still, each read back as "not read back within 5 s" after the outage (50
        alarms at once) or a value the PLC held as a "foreign write"."""
        for i in points:
            self._pending.pop(i, None)
            self._sent[i] = False

    def take_audit(self) -> list[Audit]:
        """The foreign writes found since the last call, as audit records."""
        out, self._audit = self._audit, []
        return out

    def actuate(self, t: float, cmds: Cmds, alarms: Alarms | None = None) -> list[Write]:
        spec = self._spec
        pending, scan_s = self._pending, self.scan_s
        hb = self.topo.ix.plc.heartbeat
        writes: list[Write] = []
        self.heartbeat = (self.heartbeat + 1) & 0xFFFF
        writes.append(Write(spec[hb][0], float(self.heartbeat), "heartbeat"))
        n = len(cmds)
        if not n:
            return writes
        cl = list(cmds.values())
        ix = np.fromiter(cmds, dtype=np.intp, count=n)
        value_a = np.fromiter([c.value for c in cl], dtype=float, count=n)
        pulses = [c.pulse for c in cl]
        pulse_a = np.array(pulses, dtype=bool) if any(pulses) else np.zeros(n, dtype=bool)
        # when each point's refresh window began: sent since, it is not due again
        window_a = t - (t + self._phase[ix]) % WRITE_REFRESH_S
        sent_a = self._sent[ix]
        last_v_a = self._last_v[ix]
        last_t_a = self._last_t[ix]
        if n < self.vector_from_n:
            # a small hall: numpy's cost per call exceeds what the passes below
            # save; the scalar rules alone decide (they are the passes' reference)
            todo = np.arange(n)
        else:
            # Most of a large hall's commands repeat what was sent (an enable, a
            # steady budget): the value sent is already on the register's grid, in
            # range and within any rate, so it would end in the deadband below; a
            # pulse is always sent. They are skipped here in one vector pass.
            repeat = sent_a & (last_v_a == value_a) & (last_t_a >= window_a) & ~pulse_a
            cand = np.flatnonzero(~repeat)
            if not cand.size:
                return writes
            # The rules below (resolution, range, rate, deadband) for the rest, as
            # arrays: only the decision to skip is taken from them (the same IEEE
            # operations as the scalar rules, so the same values); what is written
            # is worked out by the scalar rules again, one point at a time.
            ix_c = ix[cand]
            todo = cand[self._to_send(t, ix_c, value_a[cand], window_a[cand], cl, cand, pulse_a)]
            if not todo.size:
                return writes
        isfinite = math.isfinite
        last_v, last_t, sent = self._last_v, self._last_t, self._sent
        sent_i: list[int] = []
        sent_v: list[float] = []
        for j, i, window, has_last, lv, lt in zip(
            todo.tolist(),
            ix[todo].tolist(),
            window_a[todo].tolist(),
            sent_a[todo].tolist(),
            last_v_a[todo].tolist(),
            last_t_a[todo].tolist(),
            strict=True,
        ):
            cmd = cl[j]
            value = cmd.value
            if cmd.pulse:
                has_last = False  # a pulse is always sent
                sent[i] = False
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
            if has_last and not cmd.override and rise_per_s < math.inf:
                # Rate limit raises (a load, a valve): lowering a budget or a cap is
                # never delayed, it is how protection acts.
                up = rise_per_s * max(t - lt, scan_s)
                if value > lv + up:
                    value = lv + up
                    if scale:
                        value = math.floor(value / scale) * scale
            if has_last and abs(lv - value) < dead and lt >= window:
                continue  # within the deadband of what was sent, and not due again
            sent_i.append(i)
            sent_v.append(value)
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
            writes.append(_write(name, float(value), cmd.why, cmd.who, cmd.where))
        # what was sent, for the next scan's comparison, set at once
        last_v[sent_i] = sent_v
        last_t[sent_i] = t
        sent[sent_i] = True
        self._verified[sent_i] = False  # judged again once this write reads back
        return writes

    def _to_send(
        self,
        t: float,
        ix: np.ndarray,
        value: np.ndarray,
        window: np.ndarray,
        cl: list[Cmd],
        cand: np.ndarray,
        pulse: np.ndarray,
    ) -> np.ndarray:
        """Which of the commands ``cand`` (to points ``ix``) the rules of ``actuate``
        send: vectorises their resolution, range, rate limit and deadband (``max``,
        ``min`` and the comparisons as ``np.where`` with the same tie-breaks)."""
        finite = np.isfinite(value)
        value = np.where(finite, value, 0.0)
        scale = self._scale_a[ix]
        scaled = scale != 0.0
        value = np.where(scaled, np.rint(value / np.where(scaled, scale, 1.0)) * scale, value)
        lo, hi = self._lo_a[ix], self._hi_a[ix]
        value = np.where(value > lo, value, lo)  # None: -inf, never taken for a finite value
        value = np.where(value < hi, value, hi)
        has_last = self._sent[ix] & ~pulse[cand]
        lv, lt = self._last_v[ix], self._last_t[ix]
        rise = self._rise_a[ix]
        override = np.array([cl[j].override for j in cand.tolist()], dtype=bool)
        limited = has_last & ~override & (rise < math.inf)
        if limited.any():
            since = t - lt
            up = rise * np.where(self.scan_s > since, self.scan_s, since)
            over = limited & (value > lv + up)
            if over.any():
                capped = lv + up
                capped = np.where(
                    scaled, np.floor(capped / np.where(scaled, scale, 1.0)) * scale, capped
                )
                value = np.where(over, capped, value)
        quiet = has_last & (np.abs(lv - value) < self._dead_a[ix]) & (lt >= window)
        return np.flatnonzero(finite & ~quiet | pulse[cand])  # (a pulse: see actuate)

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


_new = object.__new__
_set = object.__setattr__


def _write(point: str, value: float, why: str, who: str, where: str) -> Write:
    """``Write(point, value, why, who, where)``, the same object: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    and ~150 writes a scan are built by filling its ``__dict__`` in one step."""
    w = _new(Write)
    _set(w, "__dict__", {"point": point, "value": value, "why": why, "who": who, "where": where})
    return w


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
