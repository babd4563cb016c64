"""The historian as the run loop uses it: a commit that fails is an alarm, never a stop.

:class:`~thermogate.controller.historian.Historian` re-raises a failed commit
(a full or read-only disk, an I/O error) from the next ``record_*`` call, and
keeps the records in memory meanwhile (bounded), committing them once the
disk takes writes again. A controller must not stop controlling because its
history cannot be written: :class:`Recorder` hands every call through, turns
that one raise into an alarm (logged, in the scan's status for the faces,
and queued as an event with the time it began, so the history itself says
so), and records when the historian commits again and how long it could not.
Nothing is lost by the raise itself: the record of the call that raised was
queued.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from .historian import Historian
from .historian.schema import HistorianError

log = logging.getLogger(__name__)

#: calls whose HistorianError is an alarm rather than a stop
_GUARDED = frozenset(
    {
        "record_scan",
        "record_event",
        "record_audit",
        "record_economics",
        "record_gating",
        "record_compliance",
        "save_state",
    }
)


class Recorder:
    """A :class:`Historian` whose commit failures are alarms; see the module docstring."""

    def __init__(self, historian: Historian, clock: Callable[[], float]) -> None:
        self.raw = historian
        self.clock = clock
        #: (since, why) while the historian cannot commit; None while it can
        self.down: tuple[float, str] | None = None
        #: calls that raised a commit failure (each one an outage noticed again)
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if name not in _GUARDED:
            return attr

        @functools.wraps(attr)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except HistorianError as exc:
                self.failed(exc)
                return None

        return guarded

    def failed(self, exc: BaseException) -> None:
        """A commit failed: the first time, raise the alarm."""
        self.failures += 1
        if self.down is not None:
            return
        now = self.clock()
        why = str(exc.__cause__ or exc)
        self.down = (now, why)
        log.error(
            "historian cannot commit (%s): control goes on; records wait in memory "
            "and are committed when the disk takes writes again",
            why,
        )
        with contextlib.suppress(HistorianError):  # queued: committed when it can be
            self.raw.record_event(
                now,
                "alarm",
                "historian",
                f"historian cannot commit ({why}): control goes on, records wait in memory",
                800,
            )

    def poll(self) -> str | None:
        """Once a scan: the alarm's text while the historian cannot commit, else None
        (the first call after it commits again records how long it could not)."""
        if self.down is None:
            if not self.raw.failing:
                return None
            self.failed(self.raw.error or HistorianError("commit failed"))
        assert self.down is not None
        since, why = self.down
        if self.raw.failing:
            return f"historian cannot commit since {since:.0f} ({why})"
        self.down = None
        now = self.clock()
        log.warning("historian commits again after %.1f s", now - since)
        with contextlib.suppress(HistorianError):
            self.raw.record_event(
                now,
                "restore",
                "historian",
                f"historian commits again after {now - since:.1f} s ({why}); "
                "the records kept meanwhile are committed",
                400,
            )
        return None
