"""One scan as the OPC UA face sees it: a frozen copy the scan hands over.

The scan loop builds a ``Snapshot`` after each scan (copies of a few arrays and
of the alarm records: microseconds, no node work) and publishes it; the OPC UA
thread applies it to the address space whenever it gets to it. Nothing in a
snapshot is shared with the controller, so neither side can see the other
half-way through a change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..core.alarms import AlarmRecord
from ..core.controller import Controller


def _frozen(a: ArrayLike, dtype: type | np.dtype) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Snapshot:
    """See the module docstring. Arrays are aligned with the point map's positions
    (``values``, ``quality``, ``flags``) or the site's control loops (``setpoints``,
    ``working``); all are read-only copies."""

    t: float  # the scan's time (epoch seconds in ``thermogate run``)
    values: np.ndarray  # float64 validated values (NaN: none)
    quality: np.ndarray  # uint8 GOOD / UNCERTAIN / BAD
    flags: np.ndarray  # uint16 FLAG_* bits: why a point is not GOOD
    mode: str  # auto | manual | maintenance
    setpoints: np.ndarray  # each control loop's setpoint (the command path's, else the file's)
    working: np.ndarray  # each control loop's working setpoint (trim & respond applied)
    alarms: tuple[AlarmRecord, ...] = ()  # copies of ``Alarms.records()``
    status: Mapping[str, Any] = field(default_factory=dict)  # ``ScanResult.status``
    instruction_kw: float | None = None  # the lowest import limit asked this scan
    scans: int = 0
    overruns: int = 0
    scan_ms: float = math.nan  # how long the scan took

    @classmethod
    def of(
        cls,
        ctrl: Controller,
        t: float | None = None,
        *,
        status: Mapping[str, Any] | None = None,
        scans: int = 0,
        overruns: int = 0,
        scan_ms: float = math.nan,
    ) -> Snapshot:
        """The controller's picture after its last scan (``t``: that scan's time).

        ``status`` is the scan's ``ScanResult.status``; it is copied one level deep."""
        if t is None:
            t = ctrl.t_last if ctrl.t_last is not None else math.nan
        reg = ctrl.regulation
        return cls(
            t=float(t),
            values=_frozen(ctrl.values, np.float64),
            quality=_frozen(ctrl.quality, np.uint8),
            flags=_frozen(_flags(ctrl), np.uint16),
            mode=ctrl.state.mode,
            setpoints=_frozen([reg.base_setpoint(c) for c in reg.loops], np.float64),
            working=_frozen(reg.setpoints(), np.float64),
            alarms=tuple(copy.copy(r) for r in ctrl.alarms.records()),
            status=MappingProxyType(dict(status or {})),
            instruction_kw=ctrl.instruction_kw,
            scans=scans,
            overruns=overruns,
            scan_ms=scan_ms,
        )


def _flags(ctrl: Controller) -> np.ndarray:
    """Why each point is not GOOD. The core keeps only quality; the estimator holds
    the flags of its last update (an integration may give ``Controller`` a public
    ``flags`` array: it is preferred when present)."""
    flags = getattr(ctrl, "flags", None)
    if flags is None:
        flags = ctrl.estimator.flags
    if flags is None or len(flags) != len(ctrl.quality):
        return np.zeros(len(ctrl.quality), np.uint16)
    return np.asarray(flags)
