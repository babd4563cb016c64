"""Events and alarms of the scan: raised once, cleared once, acknowledged by people.

Every part of the core reports through one ``Alarms``: a notable change is an
``Event`` (the historian journals it, the faces show it); an alarm is a
condition with a key that raises one event when it becomes active and one
when it clears (with hysteresis, so a value hovering at a limit is one alarm,
not a chatter of them).

Acknowledgement follows ISA-18.2: an alarm is unacknowledged until a person
acknowledges it; one that clears while unacknowledged stays listed
("returned to normal, unacknowledged") until it is, and one acknowledged and
cleared is gone. Acknowledging never silences a condition that is still
active: it stays active (and listed) until its cause has cleared.

The list survives a restart (``to_json`` / ``restore``, saved with the
controller's state): an alarm nobody acknowledged before the controller was
restarted is still there to acknowledge after it. An alarm that was active
keeps its ``since`` and acknowledgement if its condition is found active again
within ``CARRY_SCANS`` scans (no second event: the journal has the first);
otherwise it is cleared then, with its clear event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..signals import Event

ALARM_HYSTERESIS_K = 1.0  # a high-temperature alarm clears this far below its limit
#: scans after a restart within which a restored active alarm must be found active
#: again to carry on (every condition is evaluated within a few scans of a start)
CARRY_SCANS = 5

#: an alarm's message, or a function that makes it: the parts check ~60 alarms a
#: scan and almost none changes, so a message with numbers in it is formatted
#: only when it is raised
Message = str | Callable[[], str]


@dataclass(slots=True)
class AlarmRecord:
    """One alarm as a person sees it."""

    key: str
    message: str
    severity: int
    since: float  # when it last became active
    active: bool = True
    acked: bool = False
    acked_by: str = ""


class Alarms:
    """See the module docstring. ``events`` holds the current scan's events."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._queued: list[Event] = []  # raised between scans (commands)
        self._active: dict[str, bool] = {}
        self._records: dict[str, AlarmRecord] = {}
        #: restored alarms that were active, waiting to be found active again
        self._carried: set[str] = set()
        self._carry_left = 0  # scans left to find them

    def begin_scan(self, t: float | None = None) -> None:
        """Start a scan's event list with what was raised since the last scan
        (``t``: the scan's time, when restored alarms may have to be cleared)."""
        self.events, self._queued = self._queued, []
        if self._carried:
            self._carry_left -= 1
            if self._carry_left < 0:  # not found active since the restart: cleared now
                for key in sorted(self._carried):
                    self._clear(t, key)
                self._carried.clear()

    def to_json(self) -> list[dict[str, Any]]:
        """The alarm list (active, and cleared but unacknowledged) for a restart."""
        return [asdict(r) for r in self._records.values()]

    def restore(self, saved: list[dict[str, Any]]) -> int:
        """Take back a ``to_json`` list; returns how many alarms it held."""
        for d in saved:
            rec = AlarmRecord(**d)
            self._records[rec.key] = rec
            if rec.active:
                self._carried.add(rec.key)
        self._carry_left = CARRY_SCANS
        return len(saved)

    def queue(self, event: Event) -> None:
        """An event raised between scans: it is reported with the next scan."""
        self._queued.append(event)

    def event(self, t: float, kind: str, source: str, message: str, severity: int = 500) -> None:
        self.events.append(Event(t, kind, source, message, severity))

    def alarm(
        self,
        t: float,
        key: str,
        active: bool,
        message: Message,
        severity: int = 600,
        hysteresis: bool = True,
        *,
        journal: bool = True,
    ) -> None:
        """Raise once when it becomes active; clear once when it is gone.

        ``hysteresis=False`` keeps an active alarm raised although ``active`` is
        False (the value is back under its limit but not yet by the margin).
        ``journal=False``: no events (what it stands for is journalled otherwise)."""
        was = self._active.get(key, False)
        if self._carried and key in self._carried:
            self._carried.discard(key)
            if active or not hysteresis:  # the same occurrence, carried: no new event
                self._active[key] = True
                return
            self._clear(t, key, journal)
            return
        if active and not was:
            if not isinstance(message, str):
                message = message()
            self._active[key] = True
            if journal:
                self.event(t, "alarm", key, message, severity)
            rec = self._records.get(key)
            if rec is None:
                self._records[key] = AlarmRecord(key, message, severity, t)
            else:  # back before anyone acknowledged its return: a new occurrence
                rec.message, rec.severity, rec.since = message, severity, t
                rec.active, rec.acked, rec.acked_by = True, False, ""
        elif was and not active and hysteresis:
            self._clear(t, key, journal)

    def _clear(self, t: float | None, key: str, journal: bool = True) -> None:
        self._active[key] = False
        if journal and t is not None:
            self.event(t, "clear", key, f"cleared: {key}", 300)
        rec = self._records.get(key)
        if rec is not None:
            rec.active = False
            if rec.acked:
                del self._records[key]

    def high(
        self,
        t: float,
        key: str,
        value: float,
        ok: bool,
        limit: float,
        message: Message,
        severity: int,
    ) -> None:
        """A high-temperature alarm: raised at the limit, cleared 1 K below it."""
        self.alarm(
            t,
            key,
            ok and value >= limit,
            message,
            severity,
            hysteresis=not (ok and value >= limit - ALARM_HYSTERESIS_K),
        )

    def live(self) -> set[str]:
        """Keys an ``alarm(..., active=False)`` call may still change: the alarms
        active now and those restored and not yet found again (``CARRY_SCANS``).

        For any other key such a call does nothing, so a part that checks hundreds
        of conditions a scan may call ``alarm`` only for the keys found here and
        for the conditions it finds active (or near their limit, for ``high``)."""
        return {k for k, a in self._active.items() if a} | self._carried

    def active(self) -> list[str]:
        """Keys of the alarms active now, sorted."""
        return sorted(k for k, a in self._active.items() if a)

    def records(self) -> list[AlarmRecord]:
        """Active alarms and cleared ones not yet acknowledged, most severe first."""
        return sorted(self._records.values(), key=lambda r: (-r.severity, r.since, r.key))

    def record(self, key: str) -> AlarmRecord | None:
        return self._records.get(key)

    def acknowledge(self, key: str | None, by: str) -> list[str]:
        """Acknowledge one alarm (or all with ``None``); returns the keys acknowledged.

        Already acknowledged alarms are not counted again."""
        keys = list(self._records) if key is None else [key]
        done = []
        for k in keys:
            rec = self._records.get(k)
            if rec is None or rec.acked:
                continue
            rec.acked, rec.acked_by = True, by
            done.append(k)
            if not rec.active:
                del self._records[k]
        return done
