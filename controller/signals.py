"""What flows through one scan: observations in, qualities, writes and events out.

Every array here is aligned with the site's point map (``pmap.points``): index
``i`` is point ``i``. Values are engineering units as float64; a point that was
not read this scan is NaN with ``fresh[i] = False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from thermogate.plc.points import BAD, GOOD, QUALITY_NAMES, UNCERTAIN

__all__ = [
    "BAD",
    "GOOD",
    "QUALITY_NAMES",
    "UNCERTAIN",
    "Audit",
    "Event",
    "Observation",
    "Write",
]

# -- why a point is not good (bit flags, combinable) ------------------------
FLAG_STALE = 1 << 0  # not read this scan (device timeout, exception, comms loss)
FLAG_NAN = 1 << 1  # NaN, inf or the register's failure sentinel
FLAG_RANGE = 1 << 2  # outside the point's plausible range
FLAG_RATE = 1 << 3  # changed faster than physics allows
FLAG_STUCK = 1 << 4  # an analog that has not moved at all for too long
FLAG_DRIFT = 1 << 5  # walked away from its redundant partner / physical reference
FLAG_DISAGREE = 1 << 6  # redundant sensors disagree now
FLAG_NEVER_READ = 1 << 7  # no good value since start (zones start in fail-safe)
#: every temperature of its equipment reads exactly 0: addresses the PLC answers
#: for but has not been programmed with (or a card not wired), not a hall at 0 °C
FLAG_ZERO = 1 << 8
FLAG_NAMES = {
    FLAG_STALE: "stale",
    FLAG_NAN: "nan",
    FLAG_RANGE: "range",
    FLAG_RATE: "rate",
    FLAG_STUCK: "stuck",
    FLAG_DRIFT: "drift",
    FLAG_DISAGREE: "disagree",
    FLAG_NEVER_READ: "never-read",
    FLAG_ZERO: "all-zero",
}


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


@dataclass
class Observation:
    """One scan's input to the control core."""

    t: float  # seconds (monotonic for the real clock, simulated time in lockstep)
    values: np.ndarray  # float64 per point
    fresh: np.ndarray  # bool per point
    import_limit_kw: float | None = None  # the grid's current limit (DR curtailment)
    price_per_mwh: float | None = None
    #: links of the edges that are not points (the OpenADR VTN): name -> why it
    #: is down now, None while it is up; each is an alarm ``link.<name>``
    links: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Write:
    """A command the core wants on the wire, with its accountability."""

    point: str
    value: float
    why: str
    who: str = "controller"
    where: str = "scan"


@dataclass(frozen=True)
class Event:
    """An alarm, a protective action or a notable state change."""

    t: float
    kind: str  # alarm | clear | ack | shed | restore | failsafe | trip | write-failed | info
    source: str  # the zone, loop or point it is about
    message: str
    severity: int = 500  # OPC UA style 1..1000
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Audit:
    """One accountable change: a command given (accepted or refused) or one the
    controller made on its own (an override expiring). Writes are audited by the
    run loop from their ``Write`` records."""

    t: float
    who: str  # the user, or "controller"
    where: str  # cli | opcua | console | grid | scan
    target: str  # what it is about: a point, "mode", "alarm:<key>", "curtailment:<id>" ...
    old: float | None
    new: float | None
    why: str  # what was asked and the outcome, with the person's reason
    ok: bool  # accepted
