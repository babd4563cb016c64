"""The controller's side of the PLC's under-frequency relay.

The relay itself is PLC-local (``plc/ufls.py``): it sheds the designated
mining tanks without waiting for a scan and holds them off whatever the
controller does. The controller's part, every scan, in order:

1. **Watch.** ``plc.ufls_tripped`` rising raises the alarm
   ``grid.under_frequency`` and writes an audit record (the PLC acted, on the
   grid's behalf); falling clears it with another record. ``plc.ufls_recovered``
   rising says a release would now be accepted (an event).
2. **Hold.** While tripped, the designated loads' power caps are 0 and every
   other load but inference is held at what it drew when the trip was seen:
   the room the shed load leaves is the grid's, not the planner's to fill.
   After the release they climb at protection's restore rate, so the
   returning load cannot rebound over a limit.
3. **Release.** A release (operator or grid, through the command path; ERCOT
   requires one) pulses ``plc.ufls_release`` at the next scan. The command is
   refused while the relay is not tripped or the frequency has not recovered
   for long enough; the relay refuses it too, whatever the controller thinks.
4. **Keep it armed as the site says.** ``plc.ufls_armed`` is commanded every
   scan to the site description's ``under_frequency_armed`` (sent when it
   differs and at each refresh, as every command). An operator's override
   beats it and, when it expires, the relay goes back to the site's arming;
   a relay disarmed by hand at another master is a foreign write, restored
   and named in an event like any other.
"""

from __future__ import annotations

from ..signals import Audit
from .alarms import Alarms
from .power import PowerProtection
from .topology import Topology
from .view import Cmd, Cmds, ScanView

ALARM_KEY = "grid.under_frequency"


class UnderFrequencyResponse:
    """See the module docstring."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        ix = topo.ix.plc
        self._tripped_pt, self._recovered_pt = ix.ufls_tripped, ix.ufls_recovered
        self._release_pt = ix.ufls_release
        self._armed_pt = ix.ufls_armed
        self._armed = 1.0 if topo.site.grid.under_frequency_armed else 0.0
        self._armed_why = (
            "under-frequency relay armed as the site description says"
            if self._armed
            else "under-frequency relay disarmed as the site description says"
        )
        shed = set(topo.site.grid.under_frequency_shed)
        self.designated = tuple(ld for ld in topo.loads if ld.name in shed)
        #: what the PLC said at the last scan (None: not known yet, or unreadable)
        self.tripped: bool | None = None
        self.recovered = False
        #: what the PLC's ``plc.ufls_armed`` read at the last scan (None: unreadable)
        self.armed: bool | None = None
        self._release: tuple[str, str, str] | None = None  # who, where, why

    def _bit(self, view: ScanView, i: int) -> bool | None:
        return bool(view.val(i) >= 0.5) if view.good(i) else None

    def observe(self, view: ScanView, alarms: Alarms, power: PowerProtection) -> list[Audit]:
        """Watch and hold (module docstring); the audit records of what changed."""
        t, audit = view.t, []
        tripped = self._bit(view, self._tripped_pt)
        recovered = bool(self._bit(view, self._recovered_pt))
        self.armed = self._bit(view, self._armed_pt)
        if tripped is not None and tripped != self.tripped:
            if tripped:
                names = ", ".join(ld.name for ld in self.designated) or "nothing designated"
                msg = f"under-frequency trip: the PLC relay shed {names}; needs a release"
            else:
                msg = "under-frequency trip released: shed load returns at the restore rate"
            if tripped or self.tripped is not None:  # not at start-up with no trip
                alarms.alarm(t, ALARM_KEY, tripped, msg, 850)
                if not tripped:
                    alarms.event(t, "restore", ALARM_KEY, msg, 500)
                audit.append(Audit(t, "plc", "plc", ALARM_KEY, None, None, msg, True))
            if tripped:
                power.hold(ALARM_KEY, {ld.name: 0.0 for ld in self.designated})
                power.hold(ALARM_KEY + ":others", self._others_now(view))
            else:
                power.release(ALARM_KEY)
                power.release(ALARM_KEY + ":others")
            self.tripped = tripped
        if tripped and recovered and not self.recovered:
            alarms.event(t, "info", ALARM_KEY, "frequency recovered: a release may be given", 500)
        self.recovered = bool(tripped) and recovered
        return audit

    def _others_now(self, view: ScanView) -> dict[str, float]:
        """What the loads that are neither designated nor inference draw now."""
        shed = {ld.name for ld in self.designated}
        out = {}
        for ld in self.topo.loads:
            if ld.name in shed or ld.wclass == "inference":
                continue
            kw = view.measured(ld.power)
            if kw == kw:  # an unmetered load has nothing to hold it at; the import limit binds
                out[ld.name] = kw
        return out

    def request_release(self, who: str, where: str, why: str) -> None:
        """Pulse the relay's release at the next scan (the command path checked it)."""
        self._release = (who, where, why)

    def refusal(self) -> str | None:
        """Why a release now would be refused, or None."""
        if not self.tripped:
            return "no under-frequency trip to release"
        if not self.recovered:
            cfg = self.topo.site.grid.relay
            need = (
                f"above {cfg.recover_hz:g} Hz for {cfg.recover_s:g} s"
                if cfg is not None
                else "recovered"
            )
            return f"the grid frequency has not yet been {need} (plc.ufls_recovered is off)"
        return None

    def arm(self, cmds: Cmds) -> None:
        """The relay's arming as the site description says (step 4; overrides come after)."""
        cmds[self._armed_pt] = Cmd(self._armed, self._armed_why)

    def pulse(self, cmds: Cmds) -> None:
        if self._release is None:
            return
        who, where, why = self._release
        self._release = None
        cmds[self._release_pt] = Cmd(
            1.0, f"under-frequency release by {who}: {why}", who, where, override=False, pulse=True
        )
