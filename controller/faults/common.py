"""What every fault class reports, and the watchers the classes share."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClassResult:
    """One fault class of the campaign: the issue's five figures and the class's own counts.

    ``survived`` counts injections after which nothing was lost or crashed and
    every check of the class held; ``failures`` quotes the first few checks
    that did not.
    """

    injected: int = 0
    survived: int = 0
    lost_rows: int = 0
    crashes: int = 0
    worst_detection_s: float | None = None
    worst_recovery_s: float | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def detected(self, seconds: float) -> None:
        if math.isfinite(seconds):
            self.worst_detection_s = max(self.worst_detection_s or 0.0, seconds)

    def recovered(self, seconds: float) -> None:
        if math.isfinite(seconds):
            self.worst_recovery_s = max(self.worst_recovery_s or 0.0, seconds)

    def fail(self, what: str) -> None:
        self.failures.append(what)

    @property
    def ok(self) -> bool:
        return (
            self.lost_rows == 0
            and self.crashes == 0
            and self.survived == self.injected
            and not self.failures
        )

    def as_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)

        return {
            "injected": self.injected,
            "survived": self.survived,
            "lost_rows": self.lost_rows,
            "crashes": self.crashes,
            "worst_detection_s": r(self.worst_detection_s),
            "worst_recovery_s": r(self.worst_recovery_s),
            **self.counts,
            "failures": self.failures[:5],
            "failures_total": len(self.failures),
            "wall_s": round(self.wall_s, 1),
            "ok": self.ok,
        }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:200])


@contextmanager
def errors_logged(*names: str) -> Iterator[list[str]]:
    """Every ERROR (or worse) record the named loggers emit meanwhile: a handler
    that had to catch an exception says so there, so it is counted, not missed."""
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """The named loggers at ERROR meanwhile: a campaign injects thousands of
    faults, each of which they would rightly warn about; errors still show."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def loop_exceptions(loop: asyncio.AbstractEventLoop) -> Iterator[list[str]]:
    """Exceptions nobody awaited (a task or callback that died) on ``loop``."""
    seen: list[str] = []
    previous = loop.get_exception_handler()

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        seen.append(f"{context.get('message', '')}: {exc!r}"[:200])

    loop.set_exception_handler(handler)
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)
