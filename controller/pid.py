"""A PID loop as a pure function over plain records.

``pid_step(cfg, state, setpoint, measurement, dt)`` returns the output and
the next state; it reads no clock and keeps nothing hidden, so the same loop
runs in real time and in lockstep with the simulated plant, and property
tests can drive it directly.

What it does, in order:

* **Invalid measurement** (NaN, inf, or ``valid=False``): the output holds
  its last value and the integral is untouched — a NaN never reaches the
  integral (simple-pid's lesson). ``PidResult.held`` says so.
* **Manual** (``manual_output`` given): the output follows the operator's
  value (clamped, slew-limited) and the integral tracks it, so switching back
  to automatic is bumpless.
* **Automatic**: proportional on error, integral with a clamp and
  conditional integration (no integration further into a saturated output:
  anti-windup), derivative on measurement (no kick on setpoint changes),
  feed-forward added before the clamp, output clamp, slew limit.

* **Many loops at once** (``pid_step_many``): the automatic step over numpy
  arrays, one element per loop, for a site's hundreds of loops on the common
  path (automatic, a last output, valid measurement, no feed-forward). The
  same operations in the same order as ``pid_step``: elementwise float64 math
  is IEEE-exact, so every element equals the scalar step's result, bit for bit.

* **Tracking** (``pid_track``, after a step): when something downstream
  changed what the actuator really got (a minimum-flow floor holding a valve
  open), the state takes that output and the integral absorbs the difference
  (external reset feedback), so the next step continues from the actuator's
  real position instead of winding on unseen.

``action = "direct"`` means more output lowers the measurement (a cooling
valve, a fan: error = measurement - setpoint); ``"reverse"`` the opposite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class PidConfig:
    kp: float
    ki: float = 0.0  # output units per (error unit * second)
    kd: float = 0.0  # output units per (error unit / second)
    out_min: float = 0.0
    out_max: float = 100.0
    slew_per_s: float = math.inf  # output units per second
    integral_min: float | None = None  # defaults to the output range
    integral_max: float | None = None
    action: str = "direct"

    def __post_init__(self) -> None:
        for name in ("kp", "ki", "kd"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.out_min) and math.isfinite(self.out_max)):
            raise ValueError("output limits must be finite")
        if self.out_max <= self.out_min:
            raise ValueError(f"out_max {self.out_max} must be above out_min {self.out_min}")
        if not self.slew_per_s > 0.0:
            raise ValueError(f"slew_per_s must be positive, got {self.slew_per_s}")
        if self.action not in ("direct", "reverse"):
            raise ValueError(f"action must be 'direct' or 'reverse', got {self.action!r}")

    # By default the integral may range one output span beyond the output
    # limits: enough to absorb the proportional term for a bumpless transfer,
    # while conditional integration (not the clamp) is what prevents windup.
    @property
    def i_lo(self) -> float:
        span = self.out_max - self.out_min
        return self.out_min - span if self.integral_min is None else self.integral_min

    @property
    def i_hi(self) -> float:
        span = self.out_max - self.out_min
        return self.out_max + span if self.integral_max is None else self.integral_max


# The two records a step makes are NamedTuples: as frozen as a frozen dataclass,
# and built in a quarter of its time (every loop makes two a scan).
class PidState(NamedTuple):
    integral: float = 0.0  # the integral term's contribution, in output units
    last_measurement: float = math.nan
    output: float = math.nan  # the last output; NaN until the first step
    manual: bool = False


class PidResult(NamedTuple):
    output: float
    state: PidState
    held: bool = False  # the measurement was invalid and the output held
    saturated: bool = False


@dataclass(frozen=True)
class PidConfigs:
    """Many loops' ``PidConfig`` as arrays (one element per loop) for ``pid_step_many``.

    The arrays may be changed in place, a loop at a time (``set``: a retuned loop)."""

    kp: np.ndarray
    ki: np.ndarray
    kd: np.ndarray
    out_min: np.ndarray
    out_max: np.ndarray
    slew_per_s: np.ndarray
    i_lo: np.ndarray
    i_hi: np.ndarray
    direct: np.ndarray  # bool: action == "direct"

    @classmethod
    def of(cls, cfgs: Sequence[PidConfig]) -> PidConfigs:
        def arr(name: str) -> np.ndarray:
            return np.array([float(getattr(c, name)) for c in cfgs], dtype=float)

        return cls(
            kp=arr("kp"),
            ki=arr("ki"),
            kd=arr("kd"),
            out_min=arr("out_min"),
            out_max=arr("out_max"),
            slew_per_s=arr("slew_per_s"),
            i_lo=arr("i_lo"),
            i_hi=arr("i_hi"),
            direct=np.array([c.action == "direct" for c in cfgs], dtype=bool),
        )

    def take(self, idx: np.ndarray) -> PidConfigs:
        """The loops ``idx`` only."""
        return PidConfigs(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def set(self, k: int, cfg: PidConfig) -> None:
        """Loop ``k`` takes ``cfg``."""
        for f in fields(self):
            if f.name != "direct":
                getattr(self, f.name)[k] = getattr(cfg, f.name)
        self.direct[k] = cfg.action == "direct"


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def pid_step(
    cfg: PidConfig,
    state: PidState,
    setpoint: float,
    measurement: float,
    dt: float,
    *,
    feed_forward: float = 0.0,
    manual_output: float | None = None,
    valid: bool = True,
) -> PidResult:
    """One step of the loop; see the module docstring."""
    if not (dt > 0.0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt}")
    prev_out = state.output
    first = not math.isfinite(prev_out)

    if manual_output is not None:
        if not math.isfinite(manual_output):
            raise ValueError(f"manual output must be finite, got {manual_output}")
        out = _limit(cfg, manual_output, prev_out, first, dt)
        # Track: the integral absorbs what P and FF would add, so automatic
        # resumes from exactly this output.
        meas_ok = valid and math.isfinite(measurement)
        integral = _tracking_integral(
            cfg, out, setpoint, measurement if meas_ok else math.nan, feed_forward
        )
        new = PidState(integral, measurement if meas_ok else state.last_measurement, out, True)
        return PidResult(out, new)

    if not (valid and math.isfinite(measurement) and math.isfinite(setpoint)):
        held = prev_out if not first else _clamp(state.integral, cfg.out_min, cfg.out_max)
        return PidResult(held, state._replace(output=held, manual=False), held=True)
    if not math.isfinite(feed_forward):
        feed_forward = 0.0

    err = _error(cfg, setpoint, measurement)
    p = cfg.kp * err
    d = 0.0
    if cfg.kd > 0.0 and math.isfinite(state.last_measurement):
        slope = (measurement - state.last_measurement) / dt
        d = cfg.kd * (slope if cfg.action == "direct" else -slope)
    integral = state.integral
    if state.manual and not first:
        # Leaving manual: start from the output the plant already has.
        integral = prev_out - p - d - feed_forward
    unclamped = p + integral + d + feed_forward
    candidate = integral + cfg.ki * err * dt
    # Conditional integration: never wind further into a saturated output.
    if not ((unclamped >= cfg.out_max and err > 0) or (unclamped <= cfg.out_min and err < 0)):
        # The clamp never pulls an integral in (that would bump the output
        # after a manual transfer); it only stops it growing further out.
        if candidate > cfg.i_hi:
            candidate = max(cfg.i_hi, min(integral, candidate))
        elif candidate < cfg.i_lo:
            candidate = min(cfg.i_lo, max(integral, candidate))
        integral = candidate
    target = p + integral + d + feed_forward
    out = _limit(cfg, target, prev_out, first, dt)
    saturated = out != target
    return PidResult(out, PidState(integral, measurement, out, False), saturated=saturated)


def pid_step_many(
    cfg: PidConfigs,
    integral: np.ndarray,
    last_measurement: np.ndarray,
    output: np.ndarray,
    setpoint: np.ndarray,
    measurement: np.ndarray,
    dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``pid_step``'s automatic step for many loops at once: (output, integral).

    For loops with a finite last ``output``, whose state is not manual (not
    leaving manual), with a finite setpoint and a valid, finite measurement,
    and no feed-forward; the caller steps the others with ``pid_step``. The
    next state of loop ``k`` is ``PidState(integral[k], measurement[k],
    output[k], False)``, as ``pid_step`` makes it. Every operation is the
    scalar one in the same order (a Python ``min``/``max``/``_clamp`` as the
    same comparisons), so each element is what ``pid_step`` gives."""
    if not (dt > 0.0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt}")
    where = np.where
    direct = cfg.direct
    err = where(direct, measurement - setpoint, setpoint - measurement)
    p = cfg.kp * err
    # derivative on measurement, where kd > 0 and there is a last measurement
    with np.errstate(invalid="ignore"):
        slope = (measurement - last_measurement) / dt
    d = where(
        (cfg.kd > 0.0) & np.isfinite(last_measurement), cfg.kd * where(direct, slope, -slope), 0.0
    )
    unclamped = p + integral + d + 0.0  # (+ the feed-forward: 0.0, as -0.0 + 0.0 is 0.0)
    candidate = integral + cfg.ki * err * dt
    out_min, out_max, i_lo, i_hi = cfg.out_min, cfg.out_max, cfg.i_lo, cfg.i_hi
    wound = ((unclamped >= out_max) & (err > 0)) | ((unclamped <= out_min) & (err < 0))
    # the integral clamp: max(i_hi, min(integral, candidate)) above, min(i_lo,
    # max(integral, candidate)) below, as Python's min/max (the first unless the
    # second is strictly beyond it)
    lo_in = where(candidate < integral, candidate, integral)
    hi_in = where(candidate > integral, candidate, integral)
    clamped = where(
        candidate > i_hi,
        where(lo_in > i_hi, lo_in, i_hi),
        where(candidate < i_lo, where(hi_in < i_lo, hi_in, i_lo), candidate),
    )
    integral = where(wound, integral, clamped)
    target = p + integral + d + 0.0
    # _limit: the output range, then the slew limit from the last output
    out = where(target < out_min, out_min, where(target > out_max, out_max, target))
    step = cfg.slew_per_s * dt
    lo, hi = output - step, output + step
    out = where(out < lo, lo, where(out > hi, hi, out))
    return out, integral


def pid_track(
    cfg: PidConfig, state: PidState, setpoint: float, measurement: float, applied: float
) -> PidState:
    """The state after the actuator got ``applied`` instead of this step's output.

    The integral becomes what, with this step's proportional term, gives the
    applied output (clamped to the output range), as in manual: the next
    automatic step moves from where the actuator is. A non-finite ``applied``
    leaves the state as it is."""
    if not math.isfinite(applied):
        return state
    out = _clamp(applied, cfg.out_min, cfg.out_max)
    integral = _tracking_integral(cfg, out, setpoint, measurement)
    return PidState(integral, state.last_measurement, out, state.manual)


def _tracking_integral(
    cfg: PidConfig, out: float, setpoint: float, measurement: float, feed_forward: float = 0.0
) -> float:
    """The integral that, with this step's P (none without a finite measurement and
    setpoint) and feed-forward, gives ``out``. Tracking is not windup: no clamp."""
    ok = math.isfinite(measurement) and math.isfinite(setpoint)
    p = cfg.kp * _error(cfg, setpoint, measurement) if ok else 0.0
    return out - p - feed_forward


def _limit(cfg: PidConfig, target: float, prev_out: float, first: bool, dt: float) -> float:
    """The output range, then the slew limit from the last output (none on the first step).

    A module function rather than a closure in ``pid_step``: it runs for every
    loop every scan, and building a closure each call costs more than the math."""
    target = _clamp(target, cfg.out_min, cfg.out_max)
    if first:
        return target
    step = cfg.slew_per_s * dt
    return _clamp(target, prev_out - step, prev_out + step)


def _error(cfg: PidConfig, setpoint: float, measurement: float) -> float:
    return measurement - setpoint if cfg.action == "direct" else setpoint - measurement
