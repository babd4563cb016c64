"""Latched trips: a load the PLC tripped stays off until a person resets it.

The PLC's hard interlock (over-temperature, leak, low flow) trips a load on
its own; the controller latches what it saw, so the load stays off even when
the PLC's own latch clears: a hard trip means a person should look first.

A reset (engineer, through the command path) pulses the PLC's reset coil at
the next scan; within ``RESET_WINDOW_S`` each latched trip whose PLC interlock
reads back clear is released. A cause still present keeps it latched.
"""

from __future__ import annotations

import math

import numpy as np

from thermogate.plc.points import BAD

from .alarms import Alarms
from .state import ControllerState
from .topology import Topology
from .view import Cmd, Cmds, ScanView

RESET_WINDOW_S = 10.0


def latch_key(load: str) -> str:
    """The key of a load's latched trip in ``ControllerState.latched``."""
    return f"{load}: PLC interlock"


class TripLatch:
    """See the module docstring."""

    #: look at every load each scan, not only the tripped and latched ones (the
    #: tests show both give the same)
    step_all = False

    def __init__(self, topo: Topology, state: ControllerState) -> None:
        self.topo = topo
        self.state = state
        self._reset: tuple[str, str, str] | None = None  # who, where, why of a pending reset
        self._targets: set[str] | None = None  # loads a pending reset may release (None: all)
        self._window_until = -math.inf
        self._window_targets: set[str] | None = None
        #: per load (in order): its interlock's point and its latch's key
        self._interlock = np.array([ld.interlock for ld in topo.loads], dtype=np.intp)
        self._keys = [latch_key(ld.name) for ld in topo.loads]
        self._load_of_key = {key: j for j, key in enumerate(self._keys)}

    def request_reset(self, t: float, who: str, where: str, why: str, load: str | None) -> None:
        """Pulse the PLC's reset at the next scan; release ``load`` (or every
        latched load) once its interlock reads back clear within the window."""
        self._reset = (who, where, why)
        self._targets = None if load is None else {load}
        self._window_until = t + RESET_WINDOW_S
        self._window_targets = self._targets

    def latch(self, view: ScanView, cmds: Cmds, alarms: Alarms) -> None:
        t = view.t
        latched = self.state.latched
        # One array pass over the loads' interlocks; a load is looked at only if
        # its interlock reads tripped or a trip of it is latched (any other has
        # nothing to latch, release or keep off), in the loads' order.
        tripped_all = (view.quality[self._interlock] != BAD) & (
            np.asarray(view.values, dtype=float)[self._interlock] >= 0.5
        )
        todo = set(np.flatnonzero(tripped_all).tolist())
        load_of_key = self._load_of_key
        todo.update(load_of_key[key] for key in latched if key in load_of_key)
        loads = self.topo.loads
        if self.step_all:  # (tests: as if nothing were skipped)
            todo.update(range(len(self.topo.loads)))
        for j in sorted(todo):
            ld = loads[j]
            key = self._keys[j]
            tripped = view.good(ld.interlock) and view.val(ld.interlock) >= 0.5
            if tripped and key not in latched:
                latched[key] = f"tripped by the PLC at t={t:.0f}"
                self.state.changed()
                alarms.event(
                    t,
                    "trip",
                    ld.name,
                    f"{ld.name} tripped by the PLC's hard interlock; latched until reset",
                    900,
                )
            if key in latched:
                clear = view.good(ld.interlock) and view.val(ld.interlock) < 0.5
                may = self._window_targets is None or ld.name in self._window_targets
                if clear and t <= self._window_until and may:
                    del latched[key]
                    self.state.changed()
                    alarms.event(
                        t, "restore", ld.name, f"{ld.name}: trip reset, load released", 500
                    )
                    continue
                cmds[ld.enable] = Cmd(0.0, f"latched: {key} (needs a reset)")

    def pulse(self, cmds: Cmds) -> None:
        """The PLC reset requested since the last scan, if any."""
        if self._reset is None:
            return
        who, where, why = self._reset
        self._reset = None
        cmds[self.topo.ix.plc.reset] = Cmd(
            1.0, f"reset by {who}: {why}", who, where, override=False, pulse=True
        )
