"""An under-frequency relay (ANSI 81U) in the PLC's own logic.

A Load Resource must drop its designated load when the grid frequency sags
(ERCOT: at 59.7 Hz, within 30 cycles), and come back only when the grid
operator releases it. That is a protective relay's job, not a supervisory
scan's: it runs here, beside the interlocks, every PLC cycle, and needs
nothing from the controller (a controller that is down must not keep load on
a collapsing grid). The controller learns of the trip from the relay's
status points and plans around the shed load; it cannot hold the load on.

What :meth:`UnderFrequencyRelay.step` does, in order:

1. **Measurement.** A NaN or non-positive frequency is a failed measurement,
   not an under-frequency: it neither picks up nor resets the pickup timer
   (fail safe for the grid would be to trip; fail safe for the hall is not
   to drop inference on a broken transducer — the relay reports
   ``measurement_ok = False`` and the site alarms on it).
2. **Pickup.** Armed and at or below ``trip_hz`` for ``delay_s``
   (continuously) -> tripped: the designated load is shed, and stays shed
   whatever the frequency does next (latched). Disarming does not un-trip.
3. **Recovery.** Tripped and at or above ``recover_hz`` for ``recover_s``
   (continuously) -> recovered; a dip below resets that timer.
4. **Release.** Recovered and released (``release`` true in this cycle,
   from the grid operator through the controller's command path) -> the trip
   clears. A release before recovery is refused and says so.

Pure: the caller passes ``t`` and the measurement; no clock reads, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RelayConfig", "RelaySettingError", "RelayState", "UnderFrequencyRelay"]


class RelaySettingError(ValueError):
    """A relay setting out of range; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field


@dataclass(frozen=True)
class RelayConfig:
    nominal_hz: float = 60.0
    trip_hz: float = 59.7
    #: pickup time: 3 cycles at 60 Hz; with the contactors' few cycles it stays
    #: well inside ERCOT's 30 (0.5 s)
    delay_s: float = 0.05
    recover_hz: float = 59.95
    recover_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nominal_hz not in (50.0, 60.0):
            raise RelaySettingError("nominal_hz", f"must be 50 or 60, got {self.nominal_hz}")
        if not self.nominal_hz * 0.9 <= self.trip_hz < self.nominal_hz:
            raise RelaySettingError(
                "trip_hz",
                f"must be below nominal {self.nominal_hz:g} Hz and within 10 % of it, "
                f"got {self.trip_hz}",
            )
        if not self.trip_hz < self.recover_hz <= self.nominal_hz:
            raise RelaySettingError(
                "recover_hz",
                f"must be above trip_hz ({self.trip_hz:g}) and at most nominal, "
                f"got {self.recover_hz}",
            )
        for name in ("delay_s", "recover_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise RelaySettingError(name, f"must be >= 0, got {v}")


@dataclass
class RelayState:
    tripped: bool = False
    trip_t: float | None = None
    pickup_since: float | None = None
    recovered_since: float | None = None
    measurement_ok: bool = True


class UnderFrequencyRelay:
    """See the module docstring. ``events`` collects (t, message) for the log."""

    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.state = RelayState()
        self.events: list[tuple[float, str]] = []

    def step(self, t: float, freq_hz: float, *, armed: bool, release: bool = False) -> bool:
        """Advance to ``t`` with the measured frequency; returns whether the
        designated load is to be shed."""
        st = self.state
        ok = math.isfinite(freq_hz) and freq_hz > 0.0
        if ok != st.measurement_ok:
            st.measurement_ok = ok
            self._log(t, "frequency measurement " + ("restored" if ok else f"failed ({freq_hz})"))
        if ok:
            if not st.tripped:
                self._pickup(t, freq_hz, armed)
            else:
                self._recover(t, freq_hz)
        if release:
            self._release(t)
        return st.tripped

    def release_ready(self, t: float) -> bool:
        """Tripped, and above ``recover_hz`` for ``recover_s`` by ``t``: a release
        now would be accepted."""
        st = self.state
        since = st.recovered_since
        return st.tripped and since is not None and t - since >= self.cfg.recover_s

    def _pickup(self, t: float, f: float, armed: bool) -> None:
        st = self.state
        if not (armed and f <= self.cfg.trip_hz):
            st.pickup_since = None
            return
        if st.pickup_since is None:
            st.pickup_since = t
        if t - st.pickup_since >= self.cfg.delay_s:
            st.tripped, st.trip_t, st.pickup_since, st.recovered_since = True, t, None, None
            self._log(t, f"under-frequency trip: {f:.3f} Hz <= {self.cfg.trip_hz:g} Hz")

    def _recover(self, t: float, f: float) -> None:
        st = self.state
        if f < self.cfg.recover_hz:
            st.recovered_since = None
        elif st.recovered_since is None:
            st.recovered_since = t

    def _release(self, t: float) -> None:
        st, cfg = self.state, self.cfg
        if not st.tripped:
            self._log(t, "release refused: no under-frequency trip to release")
            return
        since = st.recovered_since
        if not self.release_ready(t):
            held = 0.0 if since is None else t - since
            self._log(
                t,
                f"release refused: frequency above {cfg.recover_hz:g} Hz for {held:.0f} s "
                f"of the {cfg.recover_s:g} s required",
            )
            return
        st.tripped, st.trip_t, st.recovered_since = False, None, None
        self._log(t, "under-frequency trip released")

    def _log(self, t: float, msg: str) -> None:
        self.events.append((t, msg))
        if len(self.events) > 1000:  # the plant drains it; cap if nobody does
            del self.events[:500]
