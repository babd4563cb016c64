"""Settling curtailments as the meter reads, interval by interval.

``compliance`` does the grid operator's arithmetic on finished data; this is
the same arithmetic run live, beside a simulation or ``thermogate run``:

* :meth:`Settlement.meter` takes every import reading (the revenue meter:
  the plant's truth in a simulation, the site meter live). Readings are kept
  only until their interval closes; then the interval's mean (from
  :func:`~.compliance.interval_means`, so held samples and gaps count exactly
  as there) joins the history the baselines draw on, a few days deep.
* :meth:`Settlement.instruct` registers an instruction under a name
  (``curtailment #3``, ``scenario curtail @ 14:00``); giving the same name
  again updates it (an instruction cleared early ends early).
* As each interval closes, every instruction whose window wholly covers it
  is judged for it (:func:`~.compliance.settle`): one
  :class:`~.compliance.IntervalCompliance` per (instruction, interval), in
  the order they closed. The caller stores them (historian) and shows them.

``history=False`` (``thermogate run``, which stores every judgement in its
historian) keeps memory bounded over months: only the last ``JUDGED_KEEP``
judgements, the summary as running totals, and no instruction that ended
before the oldest interval mean the baselines can still draw on. A
simulation keeps everything for its report.

Pure apart from its own memory: time comes in with the readings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass
from typing import Literal, Protocol

from thermogate.plc.equipment import GridConfig

from ..signals import Event
from .compliance import (
    DAY_S,
    BaselineRule,
    Instruction,
    IntervalCompliance,
    interval_means,
    settle,
    summarise,
)

__all__ = ["JUDGED_KEEP", "Judged", "Settlement", "rule_for", "settled_event"]

#: judgements a settlement without ``history`` keeps in memory (the historian has all)
JUDGED_KEEP = 1000


class _Totals:
    """``compliance.summarise``'s figures, kept as running sums."""

    def __init__(self) -> None:
        self.intervals = self.metered = self.compliant = self.both = 0
        self.delivered_kw = self.required_kw = 0.0

    def add(self, r: IntervalCompliance) -> None:
        self.intervals += 1
        if r.compliant is not None:
            self.metered += 1
            self.compliant += bool(r.compliant)
        if r.delivered_kw is not None and r.required_kw is not None:
            self.both += 1
            self.delivered_kw += r.delivered_kw
            self.required_kw += r.required_kw

    def summary(self, interval_s: float) -> dict[str, float | int | None]:
        hours = interval_s / 3600.0
        return {
            "intervals": self.intervals,
            "compliant": self.compliant,
            "not_metered": self.intervals - self.metered,
            "compliance": self.compliant / self.metered if self.metered else None,
            "delivered_kwh": self.delivered_kw * hours if self.both else None,
            "required_kwh": self.required_kw * hours if self.both else None,
        }


def rule_for(grid: GridConfig) -> BaselineRule:
    """The baseline rule the site description asks for (``[grid]``)."""
    like: Literal["day", "preceding"] = "preceding" if grid.baseline_like == "preceding" else "day"
    return BaselineRule(count=grid.baseline_count, like=like, interval_s=grid.settlement_interval_s)


class CurtailmentLike(Protocol):
    """What ``follow`` reads of a curtailment (``core.state.Curtailment``)."""

    @property
    def id(self) -> int: ...
    @property
    def limit_kw(self) -> float: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


@dataclass(frozen=True)
class Judged:
    """One interval of one instruction, settled."""

    instruction: str
    record: IntervalCompliance
    interval_s: float


def settled_event(j: Judged, t: float, when: str) -> Event:
    """A settled interval for the event log at ``t``; ``when`` names the interval's
    start on the caller's clock (hours into a simulation, a UTC time live)."""
    r = j.record
    metered = "not metered" if r.metered_kw is None else f"metered {r.metered_kw:.0f} kW"
    base = "no baseline" if r.baseline_kw is None else f"baseline {r.baseline_kw:.0f} kW"
    verdict = {True: "compliant", False: "NOT compliant", None: "not judged"}[r.compliant]
    return Event(
        t,
        "settled",
        j.instruction,
        f"{j.instruction}: interval {when} {verdict}: {metered} against "
        f"a limit of {r.limit_kw:.0f} kW, {base}",
        700 if r.compliant is False else 300,
    )


class Settlement:
    """See the module docstring."""

    def __init__(
        self, rule: BaselineRule, tolerance_kw: float = 0.0, *, history: bool = True
    ) -> None:
        self.rule = rule
        self.tolerance_kw = tolerance_kw
        self.history = history
        self.means: dict[int, float] = {}
        self.instructions: dict[str, Instruction] = {}
        self.judged: MutableSequence[Judged] = [] if history else deque(maxlen=JUDGED_KEEP)
        self._totals = _Totals()
        self._t: list[float] = []
        self._kw: list[float] = []
        self._open: int | None = None  # the interval being metered
        # history the baselines can reach: count like intervals, one day apart
        # at most, plus the longest instruction (its own intervals are skipped)
        self._keep = round((rule.count + 8) * DAY_S / rule.interval_s)

    def instruct(self, name: str, instruction: Instruction) -> None:
        self.instructions[name] = instruction

    def follow(self, curtailments: Iterable[CurtailmentLike], t: float) -> None:
        """Track the controller's curtailments (``ControllerState.curtailments``)
        as instructions named ``curtailment #<id>``: new ones are registered, and
        one cleared before its end (gone from the list) ends at ``t``."""
        seen = set()
        for c in curtailments:
            name = f"curtailment #{c.id}"
            seen.add(name)
            if name not in self.instructions and c.end > c.start:
                self.instructions[name] = Instruction(c.start, c.end, c.limit_kw)
        for name, ins in list(self.instructions.items()):
            if name.startswith("curtailment #") and name not in seen and ins.end_s > t:
                if t > ins.start_s:
                    self.instructions[name] = Instruction(ins.start_s, t, ins.limit_kw)
                else:  # withdrawn before it began
                    del self.instructions[name]

    def meter(self, t: float, import_kw: float) -> list[Judged]:
        """One reading; the judgements of any interval it closed."""
        size = self.rule.interval_s
        k = math.floor(t / size)
        if self._t and t <= self._t[-1]:
            return []  # a reading out of order is not metered twice
        out: list[Judged] = []
        if self._open is not None and k > self._open:
            out = self._close(k)
        self._open = k
        self._t.append(float(t))
        self._kw.append(float(import_kw))
        return out

    def _close(self, k_now: int) -> list[Judged]:
        """Every interval before ``k_now`` is complete: mean it, judge it."""
        means = interval_means(self._t, self._kw, self.rule)
        done = [k for k in sorted(means) if k < k_now]
        for k in done:
            self.means[k] = means[k]
        # the last reading carries into the next interval (it is held)
        self._t, self._kw = self._t[-1:], self._kw[-1:]
        assert self._open is not None
        out = []
        for k in range(self._open, k_now):
            out += self._judge(k)
        if len(self.means) > self._keep:
            for old in sorted(self.means)[: len(self.means) - self._keep]:
                del self.means[old]
        if not self.history and self.means:  # beyond every baseline's reach: forgotten
            reach = min(self.means) * self.rule.interval_s
            for name in [n for n, ins in self.instructions.items() if ins.end_s < reach]:
                del self.instructions[name]
        return out

    def _judge(self, k: int) -> list[Judged]:
        size = self.rule.interval_s
        out = []
        for name, ins in self.instructions.items():
            if k not in ins.intervals(size):
                continue
            others = [o for n, o in self.instructions.items() if n != name]
            for rec in settle(
                self.means, ins, self.rule, past_events=others, tolerance_kw=self.tolerance_kw
            ):
                if rec.start_s == k * size:
                    j = Judged(name, rec, size)
                    self.judged.append(j)
                    self._totals.add(rec)
                    out.append(j)
        return out

    def summary(self) -> dict[str, float | int | None]:
        """Over every interval judged so far (``compliance.summarise``; without
        ``history`` from running totals, the same figures)."""
        if self.history:
            return summarise([j.record for j in self.judged], self.rule.interval_s)
        return self._totals.summary(self.rule.interval_s)

    def latest(self) -> Judged | None:
        return self.judged[-1] if self.judged else None
