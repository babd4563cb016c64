"""What people and the PLC's trips have set, and what a restart must restore.

The controller's own working memory (PID integrators, filters, sheds in
progress) is rebuilt by the scans; this is the part that is *decided*: the
mode, overrides with their expiry, setpoints and tunings from the command
path, curtailments the grid asked for, and trips latched until a person
resets them. Every change bumps ``version`` so the run loop saves it at once
(``thermogate run`` keeps it in the historian's ``state`` table); it is plain
JSON so a restarted controller, or a person with ``sqlite3``, can read it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("auto", "manual", "maintenance")


@dataclass
class Override:
    """An operator's hand on one actuator, until ``until`` (controller time, s)."""

    value: float
    who: str
    where: str
    why: str
    since: float = 0.0
    until: float = math.inf


@dataclass
class Curtailment:
    """The grid's (or an operator's) request: import at most ``limit_kw`` in [start, end)."""

    id: int
    limit_kw: float
    start: float
    end: float
    who: str
    where: str
    why: str

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class ControllerState:
    """See the module docstring."""

    mode: str = "auto"  # auto | manual (loops hold) | maintenance (loops and workloads hold)
    overrides: dict[str, Override] = field(default_factory=dict)  # by point name
    latched: dict[str, str] = field(default_factory=dict)  # trip -> reason, until reset
    setpoints: dict[str, float] = field(default_factory=dict)  # control loop -> setpoint
    tunings: dict[str, dict[str, float]] = field(default_factory=dict)  # loop -> kp/ki/kd
    curtailments: list[Curtailment] = field(default_factory=list)
    next_curtailment: int = 1
    version: int = 0  # bumped on every change: the run loop saves when it moves

    def changed(self) -> None:
        self.version += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "overrides": {k: _finite(asdict(o)) for k, o in self.overrides.items()},
            "latched": dict(self.latched),
            "setpoints": dict(self.setpoints),
            "tunings": {k: dict(v) for k, v in self.tunings.items()},
            "curtailments": [asdict(c) for c in self.curtailments],
            "next_curtailment": self.next_curtailment,
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], points: set[str], loops: set[str]
    ) -> tuple[ControllerState, list[str]]:
        """A saved state, keeping only what still exists; notes say what was dropped."""
        notes: list[str] = []
        st = cls(mode=data.get("mode", "auto"))
        if st.mode not in MODES:
            notes.append(f"unknown mode '{st.mode}' ignored: auto")
            st.mode = "auto"
        for name, o in data.get("overrides", {}).items():
            if name not in points:
                notes.append(f"override of '{name}' dropped: no such point any more")
                continue
            until = o.get("until")
            st.overrides[name] = Override(
                float(o["value"]),
                o["who"],
                o["where"],
                o["why"],
                float(o.get("since", 0.0)),
                math.inf if until is None else float(until),
            )
        st.latched = {str(k): str(v) for k, v in data.get("latched", {}).items()}
        for loop, sp in data.get("setpoints", {}).items():
            if loop in loops:
                st.setpoints[loop] = float(sp)
            else:
                notes.append(f"setpoint of '{loop}' dropped: no such control loop any more")
        for loop, g in data.get("tunings", {}).items():
            if loop in loops:
                st.tunings[loop] = {k: float(v) for k, v in g.items()}
            else:
                notes.append(f"tuning of '{loop}' dropped: no such control loop any more")
        st.curtailments = [Curtailment(**c) for c in data.get("curtailments", [])]
        st.next_curtailment = int(
            data.get("next_curtailment", 1 + max((c.id for c in st.curtailments), default=0))
        )
        return st, notes


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an override without expiry is saved with ``until`` null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
