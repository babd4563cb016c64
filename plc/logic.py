"""The PLC's own local logic, which the controller relies on but never replaces.

It runs inside the PLC (here: inside the simulated plant, every plant step)
and trusts nothing upstream:

* **Heartbeat watchdog.** The controller must change ``plc.heartbeat`` every
  scan. If the value has not changed for ``heartbeat_timeout_s`` the PLC goes
  to its safe state on its own: valves open, pumps and dry-cooler fans to
  full, mining disabled, GPU power capped. It leaves the safe state as soon
  as the heartbeat moves again (the controller is back in charge).
* **Hard interlocks, latched until reset.** Tank fluid over-temperature (the
  hotter of its two sensors, debounced) trips that tank's power; a leak at a
  tank isolates that tank's HX and trips it, a leak at a loop's skid stops
  the loop's pumps and trips every load on it; low loop flow for longer than
  the loop's ``low_flow_trip_s`` trips every load on the loop; CDU coolant
  over-temperature trips its rack row. A latch clears only on an explicit
  reset (``plc.reset``) and only if its cause has cleared.
* **Under-frequency relay (81U, ``plc/ufls.py``).** Armed, it sheds the
  site description's designated mining tanks when the grid frequency sags,
  and holds them off until the frequency has recovered and a release
  (``plc.ufls_release``) comes. It is not an interlock (no reset clears it)
  and it needs no controller: a controller that is down must not keep load
  on a collapsing grid. :meth:`PlcLogic.relay_step` may run more often than
  :meth:`PlcLogic.step` (the served plant runs it every fast PLC cycle).

The logic is a pure step over arrays (no I/O, no clock reads): the plant
passes ``t`` and the inputs it measured, and applies the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .site import Site
from .ufls import RelayConfig, UnderFrequencyRelay

#: An over-temperature must persist this long before it trips (filters spikes).
TRIP_DEBOUNCE_S = 3.0


@dataclass
class PlcInputs:
    """What the PLC reads from its own I/O in one step (engineering units)."""

    heartbeat: int
    reset: bool
    tank_temp_a: np.ndarray
    tank_temp_b: np.ndarray
    tank_leak: np.ndarray
    loop_flow: np.ndarray
    loop_leak: np.ndarray
    cdu_supply: np.ndarray
    cdu_leak: np.ndarray
    #: the relay's own measurement (NaN: failed; None: no relay cycle in this step)
    frequency_hz: float | None = None
    ufls_armed: bool = False
    ufls_release: bool = False


_any = np.logical_or.reduce  # cheaper than ndarray.any() on small arrays


def _where(mask: np.ndarray) -> list[int]:
    """Indices of True entries; cheap when there are none (every scan)."""
    return np.flatnonzero(mask).tolist() if _any(mask) else []


class PlcLogic:
    """Watchdog and interlocks for one site; state lives in plain arrays."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.timeout_s = site.plc.heartbeat_timeout_s
        loops = [lp.name for lp in site.loops]
        self.tank_loop = np.array([loops.index(t.loop) for t in site.tanks], dtype=int)
        cdus = [c.name for c in site.cdus]
        self.cdu_loop = np.array([loops.index(c.loop) for c in site.cdus], dtype=int)
        self.row_cdu = np.array([cdus.index(r.cdu) for r in site.rack_rows], dtype=int)
        self.tank_trip_c = np.array([t.limits.fluid_trip_c for t in site.tanks])
        self.cdu_trip_c = np.array([c.supply_trip_c for c in site.cdus])
        self.loop_min_flow = np.array([lp.min_flow_m3h for lp in site.loops])
        self.loop_low_flow_s = np.array([lp.low_flow_trip_s for lp in site.loops])
        self.leak_isolates_loop = site.plc.leak_isolates_loop

        n_t, n_l, n_c = len(site.tanks), len(site.loops), len(site.cdus)
        self.last_heartbeat: int | None = None
        self.last_change_t: float | None = None
        self.heartbeat_age_s = 0.0
        self.safe_state = False
        # Latches: the cause that set them, and whether the cause is still there.
        self.tank_latched = np.zeros(n_t, dtype=bool)
        self.tank_isolated = np.zeros(n_t, dtype=bool)  # leak at the tank HX
        self.loop_low_flow = np.zeros(n_l, dtype=bool)
        self.loop_isolated = np.zeros(n_l, dtype=bool)  # leak at the loop skid
        self.cdu_latched = np.zeros(n_c, dtype=bool)
        self._tank_hot_since = np.full(n_t, np.nan)
        self._cdu_hot_since = np.full(n_c, np.nan)
        self._low_flow_since = np.full(n_l, np.nan)
        self.events: list[tuple[float, str]] = []  # (t, message) for the plant's log
        f0 = site.frequency_hz
        relay_cfg = site.grid.relay or RelayConfig(f0, f0 - 0.3, recover_hz=f0 - 0.05)
        self.relay = UnderFrequencyRelay(relay_cfg)
        self.ufls_designated = np.array(
            [t.name in site.grid.under_frequency_shed for t in site.tanks], dtype=bool
        )
        self._relay_t = -np.inf

    # ------------------------------------------------------------------
    def step(self, t: float, inp: PlcInputs, loop_pumps_commanded: np.ndarray) -> None:
        """Advance the logic to time ``t``.

        ``loop_pumps_commanded`` tells, per loop, whether any pump is asked to
        run: low flow with no pump commanded is a controlled stop, not a fault.
        """
        self._watchdog(t, inp.heartbeat)
        if inp.frequency_hz is not None:
            self.relay_step(t, inp.frequency_hz, inp.ufls_armed, inp.ufls_release)
        # In its safe state the PLC runs every pump itself: no flow is then a fault.
        loop_pumps_commanded = loop_pumps_commanded | self.safe_state

        # Over-temperature: the hotter valid sensor; a NaN or open sensor
        # counts as hot only if both are bad (fail safe, but one bad sensor
        # alone must not trip a running tank).
        a, b = inp.tank_temp_a, inp.tank_temp_b
        hot = np.fmax(a, b)  # fmax ignores a single NaN
        both_bad = np.isnan(a) & np.isnan(b)
        over = (hot >= self.tank_trip_c) | both_bad
        new_tank = self._debounce(t, over, self._tank_hot_since)
        if _any(new_tank):
            new_tank &= ~self.tank_latched
            for i in _where(new_tank):
                self._log(
                    t,
                    f"interlock: {self.site.tanks[i].name} fluid over-temperature "
                    f"({hot[i]:.1f} >= {self.tank_trip_c[i]:.1f} degC)",
                )
            self.tank_latched |= new_tank

        if _any(inp.tank_leak):
            new_leak = inp.tank_leak & ~self.tank_isolated
            for i in _where(new_leak):
                self._log(t, f"interlock: leak at {self.site.tanks[i].name}, HX isolated")
            self.tank_isolated |= inp.tank_leak
            self.tank_latched |= inp.tank_leak

        if self.leak_isolates_loop and _any(inp.loop_leak):
            new_loop_leak = inp.loop_leak & ~self.loop_isolated
            for i in _where(new_loop_leak):
                self._log(t, f"interlock: leak at {self.site.loops[i].name} skid, loop stopped")
            self.loop_isolated |= inp.loop_leak

        low = (inp.loop_flow < self.loop_min_flow) & loop_pumps_commanded & ~self.loop_isolated
        since = self._low_flow_since
        if _any(low):
            since[~low] = np.nan
            since[low & np.isnan(since)] = t
            new_low = low & (t - since >= self.loop_low_flow_s) & ~self.loop_low_flow
        else:
            since.fill(np.nan)
            new_low = low
        for i in _where(new_low):
            self._log(
                t,
                f"interlock: {self.site.loops[i].name} low flow "
                f"({inp.loop_flow[i]:.0f} < {self.loop_min_flow[i]:.0f} m3/h)",
            )
        self.loop_low_flow |= new_low

        cdu_over = (inp.cdu_supply >= self.cdu_trip_c) | np.isnan(inp.cdu_supply) | inp.cdu_leak
        new_cdu = self._debounce(t, cdu_over, self._cdu_hot_since)
        if _any(new_cdu):
            new_cdu &= ~self.cdu_latched
            for i in _where(new_cdu):
                self._log(
                    t, f"interlock: {self.site.cdus[i].name} coolant over-temperature or leak"
                )
            self.cdu_latched |= new_cdu

        if inp.reset:
            self._reset(t, over, inp, cdu_over, low)

    def relay_step(self, t: float, frequency_hz: float, armed: bool, release: bool) -> bool:
        """One cycle of the under-frequency relay; returns whether it sheds.

        A cycle at or before the last one's time is skipped (the fast cycle
        may have run ahead of the plant step), except to carry a release."""
        if t > self._relay_t:
            self._relay_t = t
            self.relay.step(t, frequency_hz, armed=armed, release=release)
        elif release:
            self.relay.step(self._relay_t, frequency_hz, armed=armed, release=True)
        if self.relay.events:
            self.events.extend(self.relay.events)
            self.relay.events.clear()
        return self.relay.state.tripped

    # ------------------------------------------------------------------
    def _watchdog(self, t: float, heartbeat: int) -> None:
        if self.last_heartbeat is None or heartbeat != self.last_heartbeat:
            if self.last_heartbeat is not None and self.safe_state:
                self._log(t, "watchdog: heartbeat resumed, leaving safe state")
                self.safe_state = False
            self.last_heartbeat = heartbeat
            # The first value seen starts the clock: a PLC that has never
            # heard from a controller goes to its safe state after timeout.
            self.last_change_t = t
        assert self.last_change_t is not None
        self.heartbeat_age_s = t - self.last_change_t
        if not self.safe_state and self.heartbeat_age_s >= self.timeout_s:
            self.safe_state = True
            self._log(
                t,
                f"watchdog: heartbeat stale for {self.heartbeat_age_s:.1f} s, entering safe state",
            )

    def _debounce(self, t: float, cond: np.ndarray, since: np.ndarray) -> np.ndarray:
        if not _any(cond):  # the common case, kept cheap for accelerated runs
            since.fill(np.nan)
            return cond
        since[~cond] = np.nan
        since[cond & np.isnan(since)] = t
        return cond & (t - since >= TRIP_DEBOUNCE_S)  # a new array: callers may modify it

    def _reset(
        self, t: float, over: np.ndarray, inp: PlcInputs, cdu_over: np.ndarray, low: np.ndarray
    ) -> None:
        clear_tank = self.tank_latched & ~over & ~inp.tank_leak
        self.tank_latched &= ~clear_tank
        self.tank_isolated &= inp.tank_leak
        self.loop_isolated &= inp.loop_leak
        self.loop_low_flow &= low  # a loop whose flow is still low stays tripped
        clear_cdu = self.cdu_latched & ~cdu_over
        self.cdu_latched &= ~clear_cdu
        self._log(
            t,
            f"reset: cleared {int(clear_tank.sum())} tank and {int(clear_cdu.sum())} "
            f"CDU interlocks; {int(self.tank_latched.sum() + self.cdu_latched.sum())} "
            "remain (cause still present)",
        )

    def _log(self, t: float, msg: str) -> None:
        self.events.append((t, msg))
        if len(self.events) > 1000:  # the plant drains it; cap if nobody does
            del self.events[:500]

    # -- derived outputs -------------------------------------------------
    def tank_tripped(self) -> np.ndarray:
        """Tanks whose power the PLC holds off (own latch, loop leak or low flow)."""
        return (
            self.tank_latched
            | self.loop_isolated[self.tank_loop]
            | self.loop_low_flow[self.tank_loop]
        )

    def tank_shed(self) -> np.ndarray:
        """Tanks the under-frequency relay holds off (its designated ones, while tripped)."""
        return self.ufls_designated & self.relay.state.tripped

    def ufls_recovered(self) -> bool:
        """Tripped, and recovered long enough that a release would be accepted."""
        return self.relay.release_ready(self._relay_t)

    def row_tripped(self) -> np.ndarray:
        loop_of_row = self.cdu_loop[self.row_cdu]
        return (
            self.cdu_latched[self.row_cdu]
            | self.loop_isolated[loop_of_row]
            | self.loop_low_flow[loop_of_row]
        )

    def any_interlock(self) -> bool:
        return bool(
            _any(self.tank_latched)
            or _any(self.cdu_latched)
            or _any(self.loop_low_flow)
            or _any(self.loop_isolated)
        )

    def status(self) -> dict[str, object]:
        return {
            "safe_state": self.safe_state,
            "heartbeat_age_s": round(self.heartbeat_age_s, 1),
            "tanks_tripped": [
                t.name for t, x in zip(self.site.tanks, self.tank_tripped(), strict=True) if x
            ],
            "loops_low_flow": [
                lp.name for lp, x in zip(self.site.loops, self.loop_low_flow, strict=True) if x
            ],
            "loops_isolated": [
                lp.name for lp, x in zip(self.site.loops, self.loop_isolated, strict=True) if x
            ],
            "cdus_tripped": [
                c.name for c, x in zip(self.site.cdus, self.cdu_latched, strict=True) if x
            ],
            "ufls_tripped": self.relay.state.tripped,
            "ufls_recovered": self.ufls_recovered(),
        }
