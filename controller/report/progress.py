"""The terminal progress bar of long runs: tqdm, told simulated hours and speed.

``thermogate simulate`` and the forecast study call ``update`` every scan, so
a disabled bar returns at once and an enabled one leaves throttling to tqdm
(a clock read per call). The bar is off unless stderr is a terminal, so CI
logs, pipes and ``--json`` output stay clean.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["ProgressBar"]

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} h sim, {speed} real time, {eta}"


class _SimHours(tqdm):
    """tqdm counting simulated hours; adds ``{speed}`` (x real time) and ``{eta}`` to the line.

    The speed is the average since the first update (tqdm's smoothing is off),
    the ETA assumes the rest runs at that speed, and a finished run says "done".
    """

    monitor_interval = 0  # no background thread: every scan calls update anyway

    @property
    def format_dict(self) -> dict[str, Any]:
        # tqdm's dynamic_ncols, except for a terminal that reports no size: tqdm
        # would take it as -1 columns and rows and hide the bar
        self.ncols, self.nrows = _screen_shape(self.fp)
        d = super().format_dict
        sim_h, wall_s = d["n"] - d["initial"], d["elapsed"]
        speed = sim_h * 3600.0 / wall_s if wall_s > 0 and sim_h > 0 else None
        left_h = (d["total"] or 0.0) - d["n"]
        if left_h <= 0:
            eta = "done"
        elif speed:
            eta = "ETA " + self.format_interval(left_h * 3600.0 / speed)
        else:
            eta = "ETA --:--"
        if speed is None:
            text = "--x"
        elif speed >= 100:
            text = f"{speed:,.0f}x"
        else:
            text = f"{speed:.1f}x"
        return {**d, "speed": text, "eta": eta}


def _screen_shape(stream: Any) -> tuple[int | None, int | None]:
    """tqdm's (columns - 1, rows - 1) of the stream's terminal; 80x24 when it reports
    none (``script`` writing to a file, some serial consoles); no limit off a terminal."""
    try:
        columns, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return None, None
    if columns <= 0 or rows <= 0:
        columns, rows = 80, 24
    return columns - 1, rows - 1


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class ProgressBar:
    """A one-line progress bar on stderr: %, simulated time, speed (x real time), ETA.

    Only drawn when the stream is a terminal (``enabled=None``), so CI logs and
    redirected output stay clean; ``enabled=True``/``False`` forces it.

    ``update(done, total)``: without ``sim_hours`` the two are simulated hours;
    with ``sim_hours`` (the run's planned simulated hours) they may be any
    progress unit, e.g. scans, and the simulated time is
    ``done / total * sim_hours``. Redraws are throttled to ``min_interval_s``.
    ``close()`` draws the final state and ends the line; it is idempotent, and
    the bar is a context manager. ``clock`` replaces tqdm's wall clock (tests).
    """

    def __init__(
        self,
        label: str = "simulate",
        *,
        enabled: bool | None = None,
        sim_hours: float | None = None,
        stream: IO[str] | None = None,
        min_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else bool(enabled)
        self.label = label
        self.sim_hours = sim_hours
        self.min_interval_s = min_interval_s
        self._clock = clock
        # Made at the first update: only then is the total known (without sim_hours)
        # and the speed is measured from there, not from when the run was set up.
        self._bar: _SimHours | None = None
        self._closed = False

    def update(self, done: float, total: float) -> None:
        if not self.enabled or self._closed:
            return
        sim_h = self._sim_h(done, total)
        try:
            if self._bar is None:
                self._bar = self._start(sim_h, total)
            self._bar.update(sim_h - self._bar.n)
        except (OSError, ValueError):  # a closed or broken stderr must not stop a run
            self.enabled = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            try:
                self._bar.close()
            except (OSError, ValueError):
                self.enabled = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sim_h(self, done: float, total: float) -> float:
        if self.sim_hours is None:
            return float(done)
        return self.sim_hours * (done / total if total > 0 else 1.0)

    def _start(self, sim_h: float, total: float) -> _SimHours:
        ncols, nrows = _screen_shape(self.stream)
        bar = _SimHours(
            total=float(self.sim_hours if self.sim_hours is not None else total),
            initial=sim_h,
            desc=self.label,
            file=self.stream,
            bar_format=_FORMAT,
            mininterval=self.min_interval_s,
            miniters=0,  # throttle by time only; tqdm's adaptive count skips late redraws
            smoothing=0.0,
            ncols=ncols,
            nrows=nrows,  # and then followed on every redraw (format_dict)
            leave=True,
            delay=0.0,
        )
        bar._time = self._clock  # tqdm's own tests swap its clock the same way
        bar.start_t = bar.last_print_t = self._clock()
        return bar
