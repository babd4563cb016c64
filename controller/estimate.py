"""Step 2 of the scan: validate, filter and flag every measurement.

Nothing downstream sees a raw reading. ``Estimator.update`` turns one scan's
raw values (engineering units, aligned with ``pmap.points``) and their
``fresh`` bits into an ``Estimate``: a validated value, a quality
(``GOOD`` / ``UNCERTAIN`` / ``BAD``) and the ``FLAG_*`` reasons for every
point, plus the voted value of every redundant or cross-checked signal.

**The core uses ``Estimate.values`` with ``Estimate.quality``, and
``Estimate.voted`` for tank fluid temperatures and loop supply temperatures —
never the raw observation.** Quality travels with the value: a BAD value is
not a number to act on (fail-safe), an UNCERTAIN value may be used with care,
and protection acts on the *voted* tank temperature, never on sensor A alone.

Pure and vectorised: no I/O, no clock reads (``t`` comes in), deterministic;
every per-point rule is a handful of numpy operations over all points, the
redundancy rules are numpy operations over tanks and loops.

Its cost is measured by ``thermogate bench scan`` (the README's Benchmarks
section); the tests assert behaviour, not speed.

The checks, in order (constants here and in ``plausibility.py``, units in names)
--------------------------------------------------------------------------------
1. **Not fresh** (the read failed: timeout, exception, comms loss):
   ``BAD + FLAG_STALE`` immediately.
2. **NaN / inf, or an integer register's failure sentinel** (0x8000 for i16,
   0xFFFF for u16, 0xFFFFFFFF for u32, 0x80000000 for i32, scaled — what a
   PLC sends for a failed input): ``BAD + FLAG_NAN``. A sentinel inside a
   range the point map declares with both bounds (``plc.heartbeat`` and
   ``plc.status``, 0..65535) is a value; an open-ended point (a u16 flow
   with no max, ``plc.heartbeat_age_s`` saturating at 6553.5 s) is not.
3. **Plausible range**: the point's min/max, tightened where physics says so:
   fluid and water temperatures -20..120 °C, die temperatures -20..150 °C,
   flows 0..2x design, loop dp 0..2x the pumps' rated head, IT loads
   0..1.5x rated, pump/fan motors 0..2x rated, meters 0..10x their breaker
   (above the magnetic trip nothing survives a scan), voltage 0..1.3x
   nominal, frequency nominal ±10 %. Outside (by more than half a count):
   ``BAD + FLAG_RANGE``.
4. **Never read**: until a point has had one valid reading since start it is
   ``BAD + FLAG_NEVER_READ`` (zones start in fail-safe).
   **All zero**: a tank, CDU or loop whose every fluid and water temperature
   reads exactly 0 is equipment the site file has and the PLC does not
   answer for yet (a PLC answers 0 for any unprogrammed address inside its
   table; a real 0.0 on four sensors of a heated tank at once is not
   physics): those temperatures are ``BAD + FLAG_ZERO``, so its zone stays in
   fail-safe and the planner budgets nothing to it.
5. **Rate of change** against the last accepted value, allowing ``rate x``
   the time since the point's last valid reading (a point that was away for
   a while may come back changed; a step while observed may not):
   bulk temperatures (tank fluid, loop lumps, CDU coolant, ambient) 3 K/s,
   heat-exchanger outlets (which follow a flow step at once) 10 K/s, die
   temperatures 1.5x their full-load rise per second,
   flows and dp 50 % of design per second, positions/speeds/levels 20 %/s,
   frequency 2 Hz/s; electrical quantities step legitimately (a breaker, a
   miner) and have no rate limit. A violation holds the last accepted value
   (a spike never reaches ``values``) with ``UNCERTAIN + FLAG_RATE``; from the
   third consecutive violating scan (``RATE_BAD_AFTER_S``) it is ``BAD``. A
   new level that stays self-consistent for ``RATE_RECOVER_S`` is accepted
   (the sensor came back; the redundancy checks judge it from then on).
   A flow or dp falling to or rising from zero is exempt: a trip, an opened
   contactor or an isolation stops a pump within a scan, and a direct-on-line
   pump (a tank's dielectric pump) is at full flow within one.
6. **Stuck**: an analog transducer (temperature, flow, pressure, power,
   current, voltage, hashrate) whose raw value has not changed at all while
   a physically coupled *witness* moved significantly (its redundant partner,
   the other temperatures of its tank/loop/CDU, a pump's speed for its power
   and flow, a fan's speed for its power, a meter's current for its power…):
   ``UNCERTAIN + FLAG_STUCK`` after ``STUCK_S`` (or ``STUCK_FAST_S`` when the
   witness moved ``STUCK_FAST_X`` times as far), ``BAD`` after
   ``STUCK_BAD_S`` (the rule and its constants in ``stuck.py``). A regulated
   temperature (tank fluid, loop or CDU supply) is held at its setpoint while
   its heat exchanger's outlets move, so only its redundant partner judges it
   on the fast path (``plausibility.py``). Quantised, quiet signals (a fan's
   power at constant speed reads the same 0.1 kW for hours) are therefore never stuck while
   the plant is steady; commands read back, bits, counters, percentages and
   a reading within ``STUCK_MIN_COUNTS`` counts of zero (equipment off, a fan
   idling at 0.3 kW in 0.1 kW counts) never count as stuck. A point with no
   witness (the ambient, a constant-speed dielectric pump's flow) is not
   checked for stuck.
7. **Redundancy, tank fluid temperature** (sensor A ``fluid_temp`` and B
   ``fluid_temp_b``) voted into ``voted["<tank>.fluid_temp"]``:
   both GOOD and within ``VOTE_AGREE_K`` → mean, GOOD; both GOOD but
   disagreeing → the higher (conservative for over-temperature),
   UNCERTAIN, ``FLAG_DISAGREE`` on the vote and on both sensors (hysteresis
   down to ``VOTE_AGREE_CLEAR_K``); only one GOOD → that one, UNCERTAIN;
   neither GOOD but not both BAD → the higher non-BAD one, UNCERTAIN; both
   BAD → NaN, BAD.
   **Drift**: the low-pass filtered A-B difference exceeding ``DRIFT_K`` for
   ``DRIFT_CONFIRM_S`` while both pass every other test identifies a drifting
   sensor against the tank's physical reference — the HX energy balance
   ``T_fluid = T_return + Cw (T_water_out - T_loop_supply) / Cd`` (water-side
   heat over the dielectric's capacity rate, all measured) or, when that is
   unavailable, ``return_temp < fluid_temp`` — and flags ``FLAG_DRIFT`` on
   the sensor the reference disagrees with; the vote uses the other. When no
   reference can decide, both get ``FLAG_DRIFT`` and the vote takes the
   higher.
8. **Loop supply temperature** (one sensor) is cross-checked against its dry
   coolers: the water leaving them mixes into the supply side of the loop,
   so the supply follows the mean of the GOOD ``outlet_temp`` points through
   a first-order lag ``tau = V_supply_side / Q`` (``LOOP_SUPPLY_VOLUME_FRAC``
   of the loop volume over the measured flow). A disagreement beyond
   ``LOOP_DRIFT_K`` sustained ``LOOP_DRIFT_CONFIRM_S`` → ``UNCERTAIN +
   FLAG_DRIFT``; ``voted["<loop>.supply_temp"]`` then carries the
   dry-cooler estimate (UNCERTAIN) instead of the drifted reading, and so
   it does while the supply sensor is BAD. With no flow or no GOOD outlet
   there is nothing to compare: the estimate follows the sensor.

Values and hold policy
----------------------
``values[i]`` is the reading when GOOD or UNCERTAIN, except during a rate
violation, when it is the last accepted value. When a point goes BAD its
last non-BAD value is held for at most ``hold_s`` (``HOLD_S`` = 10 s: the
fastest tank moves ~0.1 K/s, so a held temperature is within ~1 K of the
truth) so displays and bumpless transfers have a number, then it is NaN. A
BAD value is never a measurement to act on; decide on the quality.

Alarms and clearing
-------------------
Flags are sticky: once a point is flagged for a reason (other than
never-read), it stays flagged — and at least UNCERTAIN — until it has been
clean for ``CLEAR_S``. A loose connector that spikes every few seconds or a
signal that drops out one read in three is one alarm, not one per scan.
``newly_flagged()`` lists the points that turned non-good, or gained a
reason, on the last update; ``newly_cleared()`` those that became GOOD.

Restart
-------
``state()`` returns the slow knowledge (the drift filters, identified
drifting sensors, the loop supply estimates) as plain JSON-able data keyed by
names; ``restore()`` applies it to a new estimator. Everything fast (holds,
rate references, stuck timers, never-read) deliberately starts afresh: after
a restart every input must be read once again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from thermogate.plc.pointmap import PointMap
from thermogate.plc.site import Site

from .plausibility import point_rules
from .signals import (
    BAD,
    FLAG_DISAGREE,
    FLAG_DRIFT,
    FLAG_NAN,
    FLAG_NEVER_READ,
    FLAG_RANGE,
    FLAG_RATE,
    FLAG_STALE,
    FLAG_STUCK,
    FLAG_ZERO,
    GOOD,
    UNCERTAIN,
)
from .stuck import StuckDetector

# -- hold and clear -------------------------------------------------------------
#: A BAD point shows its last good value this long, then NaN. The fastest tank
#: (300 kW into 2,000 L of dielectric, ~3,400 kJ/K) moves ~0.1 K/s: 10 s ~ 1 K.
HOLD_S = 10.0
#: A flag stays (and the point stays at least UNCERTAIN) until the point has
#: been clean this long: intermittent faults raise one alarm, not one a scan
#: (the off-delay ISA-18.2 recommends against chattering alarms, 15-60 s).
CLEAR_S = 60.0

# -- rate of change -----------------------------------------------------------------
#: A rate violation lasting this long (the third consecutive scan at 1 s) is BAD.
RATE_BAD_AFTER_S = 2.0
#: A new level that stays self-consistent this long is accepted as the value.
RATE_RECOVER_S = 60.0

# -- redundancy ---------------------------------------------------------------------
#: A and B agree within this: far beyond two healthy class A RTDs' combined
#: tolerance (±0.27 K each at 60 °C), so a larger spread is a fault.
VOTE_AGREE_K = 2.0
VOTE_AGREE_CLEAR_K = 1.5  # disagreement ends below this (hysteresis)
#: Sustained filtered A-B difference that starts a drift diagnosis. Healthy
#: sensors in one well-mixed tank differ by at most ~0.5 K (both tolerances);
#: 1.0 K keeps the mean within ~0.5 K of the truth until the culprit is known.
DRIFT_K = 1.0
DRIFT_CLEAR_K = 0.5
#: Low-pass filter of the A-B difference and of the residuals to the physical
#: reference: removes 0.1 °C quantisation and noise (0.07 K -> ~0.01 K).
DRIFT_FILTER_S = 30.0
#: The difference must last this long ("sustained over minutes").
DRIFT_CONFIRM_S = 120.0
#: The sensor within this of the physical reference is the healthy one
#: (flow meters ±1-2 % put the energy-balance reference within ~0.3 K).
DRIFT_REF_TOL_K = 0.5
#: The energy-balance reference needs real flow on both sides of the HX.
REF_MIN_FLOW_FRAC = 0.2
#: A fluid reading this far below the return (HX outlet) is the wrong one.
RETURN_MARGIN_K = 0.5

# -- loop supply cross-check ------------------------------------------------------------
#: Supply disagreeing with the dry-cooler estimate by more than this ...
LOOP_DRIFT_K = 2.0
LOOP_DRIFT_CLEAR_K = 1.0
#: ... for this long is drift.
LOOP_DRIFT_CONFIRM_S = 120.0
#: Share of the loop volume between the dry coolers and the supply sensor (the
#: supply header and the cold half of the piping).
LOOP_SUPPLY_VOLUME_FRAC = 0.5
#: Below this fraction of design flow there is no transport to compare.
LOOP_MIN_FLOW_FRAC = 0.1

#: Flags that stay for CLEAR_S after their cause has gone.
LATCHED_FLAGS = 0xFFFF & ~FLAG_NEVER_READ
#: each of them, timed on its own: with one time per point, a stale flag from a
#: comms loss was kept alive by a NaN that followed (shown as a comms error)
_LATCH_BITS = tuple(1 << k for k in range(16) if LATCHED_FLAGS & (1 << k))


def zero_groups(pmap: PointMap) -> list[tuple[str, np.ndarray]]:
    """(equipment, positions of its fluid and water temperatures) of every tank,
    CDU and loop: all of them reading exactly 0 is the all-zero rule (check 4)."""
    ix = pmap.index
    out = [
        (tp.name, [tp.fluid_temp, tp.fluid_temp_b, tp.return_temp, tp.water_out_temp])
        for tp in ix.tanks
    ]
    out += [(cp.name, [cp.supply_temp, cp.return_temp, cp.water_out_temp]) for cp in ix.cdus]
    out += [(lpp.name, [lpp.supply_temp, lpp.return_temp]) for lpp in ix.loops]
    return [(name, np.array(idx, dtype=np.int64)) for name, idx in out]


@dataclass
class Estimate:
    """The validated picture of one scan (arrays aligned with ``pmap.points``)."""

    values: np.ndarray  # float64: validated value (held <= hold_s when BAD, then NaN)
    quality: np.ndarray  # uint8: GOOD / UNCERTAIN / BAD
    flags: np.ndarray  # uint16: FLAG_* bits, why a point is not GOOD
    #: redundant / cross-checked signals: "tank01.fluid_temp" -> (value, quality)
    voted: dict[str, tuple[float, int]]
    #: the FLAG_* bits behind each voted value (0 when GOOD)
    voted_flags: dict[str, int] = field(default_factory=dict)
    #: ``voted`` by the position of the point it stands for, as the core's
    #: ``ScanView.voted`` takes it: position -> (value, usable: not BAD)
    voted_at: dict[int, tuple[float, bool]] = field(default_factory=dict)


class Estimator:
    """Validates every point each scan; holds the memory the checks need."""

    def __init__(
        self, pmap: PointMap, site: Site, *, scan_s: float = 1.0, hold_s: float = HOLD_S
    ) -> None:
        self.pmap = pmap
        self.site = site
        self.scan_s = float(scan_s)
        self.hold_s = float(hold_s)
        pts = pmap.points
        self.names = [p.name for p in pts]
        self.n = n = len(pts)
        rules = point_rules(pmap, site)
        self._lo, self._hi = rules.lo, rules.hi
        self._floor, self._zero_ok = rules.floor, rules.zero_ok
        self._sentinel, self._sentinel_tol = rules.sentinel, rules.sentinel_tol
        self._has_sentinel = rules.has_sentinel
        self._has_rate = rules.has_rate
        self._rate_fin = np.where(self._has_rate, rules.rate, 0.0)
        self._stuck = StuckDetector(pmap, site)  # check 6, with its own memory
        self._build_tanks()
        self._build_loops()
        self._build_zero_groups()

        nan = np.full(n, np.nan)
        self._last_t = math.nan
        self._ever = np.zeros(n, dtype=bool)
        self._ref = nan.copy()  # last accepted value
        self._prev = nan.copy()  # last valid raw reading
        self._prev_t = nan.copy()
        self._rate_since = nan.copy()
        self._consist_since = nan.copy()
        self._held = nan.copy()  # last non-BAD output
        self._held_t = nan.copy()
        self._latched = np.zeros(n, dtype=np.uint16)
        self._latch_t = np.full((len(_LATCH_BITS), n), np.nan)  # per bit, per point
        self._reported = np.zeros(n, dtype=np.uint16)
        self._new_flagged = np.zeros(0, dtype=np.int64)
        self._new_cleared = np.zeros(0, dtype=np.int64)
        # What the common scan skips (every point read, valid, calm; nothing
        # latched or reported): each a Python bool kept with the arrays it sums up.
        self._all_ever = n == 0  # every point has had a valid reading
        self._rate_open = False  # some point is in a rate-violation episode
        self._latched_any = False
        self._now = np.zeros(n, dtype=np.uint16)
        self._reported_any = False

        nt, nl = len(self._tank_names), len(self._loop_names)
        self._t_diff = np.full(nt, np.nan)  # filtered A - B
        self._t_res_a = np.full(nt, np.nan)  # filtered A - reference
        self._t_res_b = np.full(nt, np.nan)
        self._t_ref_since = np.full(nt, np.nan)  # reference continuously available since
        self._t_over_since = np.full(nt, np.nan)
        self._t_drift_a = np.zeros(nt, dtype=bool)
        self._t_drift_b = np.zeros(nt, dtype=bool)
        self._t_disagree = np.zeros(nt, dtype=bool)
        # per loop, plain lists: ``_loops`` walks them one loop at a time
        self._l_ref = [math.nan] * nl  # dry-cooler estimate of the supply
        self._l_over_since = [math.nan] * nl
        self._l_drift = [False] * nl

    # ==================================================================
    # configuration derived once from the site
    # ==================================================================
    def _build_tanks(self) -> None:
        site, ix = self.site, self.pmap.index
        loops = {lp.name: lp for lp in site.loops}
        tanks = list(site.tanks)
        self._tank_names = [t.name for t in tanks]

        def col(attr: str) -> np.ndarray:
            return np.array([getattr(tp, attr) for tp in ix.tanks], dtype=np.int64)

        self._ti_a = col("fluid_temp")
        self._ti_b = col("fluid_temp_b")
        self._ti_ret = col("return_temp")
        self._ti_wout = col("water_out_temp")
        self._ti_wflow = col("water_flow")
        self._ti_dflow = col("dielectric_flow")
        self._t_loop = np.array([self._loop_pos(t.loop) for t in tanks], dtype=np.int64)
        # capacity rates: water kW/K per m3/h, dielectric kW/K per l/s
        self._t_cw = np.array(
            [loops[t.loop].density_kg_l * loops[t.loop].cp_kj_kgk / 3.6 for t in tanks]
        )
        self._t_cd = np.array([t.fluid_density_kg_l * t.fluid_cp_kj_kgk for t in tanks])
        self._t_wmin = np.array([REF_MIN_FLOW_FRAC * t.design_water_flow_m3h for t in tanks])
        self._t_dmin = np.array([REF_MIN_FLOW_FRAC * t.dielectric_flow_l_s for t in tanks])
        self._t_voted_keys = [self.names[tp.fluid_temp] for tp in ix.tanks]

    def _loop_pos(self, name: str) -> int:
        return [lp.name for lp in self.site.loops].index(name)

    def _build_loops(self) -> None:
        site, ix = self.site, self.pmap.index
        loops = site.loops
        self._loop_names = [lp.name for lp in loops]
        self._li_sup = np.array([lpp.supply_temp for lpp in ix.loops], dtype=np.int64)
        self._li_flow = np.array([lpp.flow for lpp in ix.loops], dtype=np.int64)
        dcs = [(k, d) for k, lp in enumerate(loops) for d in lp.dry_coolers]
        self._di_out = np.array([ix.dry_cooler[d.name].outlet_temp for _, d in dcs], dtype=np.int64)
        self._d_loop = np.array([k for k, _ in dcs], dtype=np.int64)
        self._d_loop_list = self._d_loop.tolist()
        self._l_vol = np.array([LOOP_SUPPLY_VOLUME_FRAC * lp.volume_l for lp in loops])
        self._l_qmin = np.array(
            [LOOP_MIN_FLOW_FRAC * sum(p.rated_flow_m3h for p in lp.pumps) for lp in loops]
        )
        self._l_qmin_list = self._l_qmin.tolist()
        self._l_voted_keys = [self.names[lpp.supply_temp] for lpp in ix.loops]
        # every voted signal, tanks then loops: its name and its point's position
        self._voted_keys = self._t_voted_keys + self._l_voted_keys
        self._voted_at = [tp.fluid_temp for tp in ix.tanks] + [lpp.supply_temp for lpp in ix.loops]

    def _build_zero_groups(self) -> None:
        """The temperatures of each tank, CDU and loop, one group after another."""
        groups = [idx for _, idx in zero_groups(self.pmap)]
        self._zg_idx = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        self._zg_sizes = np.array([len(g) for g in groups], dtype=np.int64)
        self._zg_starts = np.concatenate(([0], np.cumsum(self._zg_sizes)[:-1])).astype(np.int64)

    def _all_zero(self, v: np.ndarray) -> np.ndarray | None:
        """Points of the groups whose every temperature reads exactly 0 (None: none)."""
        if not self._zg_idx.size:
            return None
        whole = np.logical_and.reduceat(v[self._zg_idx] == 0.0, self._zg_starts)
        if not whole.any():
            return None
        zero = np.zeros(self.n, dtype=bool)
        zero[self._zg_idx[np.repeat(whole, self._zg_sizes)]] = True
        return zero

    # ==================================================================
    # the update
    # ==================================================================
    def update(self, t: float, values: np.ndarray, fresh: np.ndarray) -> Estimate:
        """Validate one scan. ``values``: float per point (NaN allowed), ``fresh``: bool."""
        n = self.n
        v = np.asarray(values, dtype=np.float64)
        fr = np.asarray(fresh, dtype=bool)
        if v.shape != (n,) or fr.shape != (n,):
            raise ValueError(f"expected {n} values and fresh bits, got {v.shape} and {fr.shape}")
        # NaN and inf are inputs here, not accidents: every comparison below is
        # written so that NaN fails it; numpy need not warn about them
        with np.errstate(all="ignore"):
            return self._update(float(t), v, fr)

    def _update(self, t: float, v: np.ndarray, fr: np.ndarray) -> Estimate:
        n = self.n
        dt = self.scan_s if math.isnan(self._last_t) else max(t - self._last_t, 0.0)
        self._last_t = t

        # ---- 1-4: stale, NaN / sentinel, range, never read ----------------------
        sent = self._has_sentinel & (np.abs(v - self._sentinel) <= self._sentinel_tol)
        finite = np.isfinite(v)
        nan = fr & (~finite | sent)
        num = fr & ~nan
        out = num & ((v < self._lo) | (v > self._hi))
        valid = num & ~out
        zero = self._all_zero(v)
        if zero is not None:
            valid &= ~zero
        all_valid = bool(valid.all())
        if not self._all_ever:
            self._ever |= valid
            self._all_ever = bool(self._ever.all())
        flags = np.zeros(n, dtype=np.uint16)
        if all_valid and self._all_ever:  # the rule: nothing stale, NaN, out of range or new
            bad = np.zeros(n, dtype=bool)
        else:
            flags[~fr] |= FLAG_STALE
            flags[nan] |= FLAG_NAN
            flags[out] |= FLAG_RANGE
            flags[~self._ever] |= FLAG_NEVER_READ
            if zero is not None:
                flags[zero] |= FLAG_ZERO
            bad = ~valid | ~self._ever

        # ---- 5: rate of change against the last accepted value ---------------------
        # a flow or dp falling to or rising from zero is a pump stopping or
        # starting (a trip, a contactor, a direct-on-line start): real within a scan
        stop = self._zero_ok & ((np.abs(v) <= self._floor) | (np.abs(self._ref) <= self._floor))
        rated = valid & self._has_rate & ~np.isnan(self._ref) & ~stop
        # physics may have moved the value for as long as it was not observed
        step = self._rate_fin * np.maximum(t - self._prev_t, self.scan_s) + self._floor
        viol = rated & ~(np.abs(v - self._ref) <= step)
        calm = not self._rate_open and not viol.any()  # no episode to start, go on or end
        if not calm:
            new_ep = viol & np.isnan(self._rate_since)
            self._rate_since[new_ep] = t
            self._consist_since[new_ep] = t
            jumpy = viol & ~new_ep & ~(np.abs(v - self._prev) <= step)
            self._consist_since[jumpy] = t
            viol &= ~(t - self._consist_since >= RATE_RECOVER_S)  # a new, steady level
            ended = valid & ~viol & ~np.isnan(self._rate_since)
            self._rate_since[ended] = np.nan
            self._consist_since[ended] = np.nan
            self._rate_open = not np.isnan(self._rate_since).all()
            flags[viol] |= FLAG_RATE
            bad |= viol & (t - self._rate_since >= RATE_BAD_AFTER_S)
        if calm and all_valid:  # every reading accepted
            np.copyto(self._ref, v)
            np.copyto(self._prev, v)
            self._prev_t.fill(t)
            accept = valid
            cur = v  # this scan's accepted readings (read only below)
        else:
            accept = valid & ~viol
            # np.putmask(a, m, b) is a[m] = b[m] without fancy indexing's gather/scatter
            # (and several times faster than np.copyto(a, b, where=m))
            np.putmask(self._ref, accept, v)
            np.putmask(self._prev, valid, v)
            np.putmask(self._prev_t, valid, t)
            cur = np.where(accept, v, np.nan)  # this scan's accepted readings

        # ---- 6: stuck while a physically coupled witness moves -----------------------
        stuck, stuck_bad = self._stuck.step(t, v, accept, cur)
        flags[stuck] |= FLAG_STUCK
        bad |= stuck_bad

        # ---- values before redundancy (hold policy for BAD applied at the end) ------
        val = v if calm else np.where(viol, self._ref, v)
        indiv = flags.copy()
        latched = self._latched.copy()
        if self._latched_any:
            for bit, since in zip(_LATCH_BITS, self._latch_t, strict=True):
                gone = ((latched & bit) != 0) & (t - since >= CLEAR_S)
                if gone.any():
                    latched[gone] &= ~bit & 0xFFFF
        pre_q = np.where(bad, BAD, np.where((indiv | latched) != 0, UNCERTAIN, GOOD))

        # ---- 7-8: loops first (the tanks' reference uses the supply) ---------------
        sup_val, sup_q = self._loops(t, dt, val, pre_q, indiv, flags)
        tank_val, tank_q, tank_dis = self._tanks(t, dt, val, pre_q, indiv, flags, sup_val, sup_q)

        # ---- sticky flags, quality, hold policy -------------------------------------
        active = flags & LATCHED_FLAGS
        on = active != 0
        if on.any():
            latched |= active
            for bit, since in zip(_LATCH_BITS, self._latch_t, strict=True):
                since[(active & bit) != 0] = t
        self._latched = latched
        self._latched_any = bool(latched.any())
        self._now = flags
        rep = flags | latched
        quality = np.where(bad, BAD, np.where(rep != 0, UNCERTAIN, GOOD)).astype(np.uint8)
        if not bad.any():  # nothing BAD: every value is this scan's, and the one to hold
            np.copyto(self._held, val)
            self._held_t.fill(t)
            values_out = val.copy()
        else:
            keep = quality != BAD
            np.putmask(self._held, keep, val)
            np.putmask(self._held_t, keep, t)
            fresh_hold = t - self._held_t <= self.hold_s
            values_out = np.where(keep, val, np.where(fresh_hold, self._held, np.nan))

        prev = self._reported
        rep_any = bool(rep.any())
        if rep_any or self._reported_any:
            self._new_flagged = np.flatnonzero((rep != 0) & ((rep & ~prev) != 0))
            self._new_cleared = np.flatnonzero((prev != 0) & (rep == 0))
        else:  # nothing flagged then or now
            self._new_flagged = self._new_cleared = np.zeros(0, dtype=np.int64)
        self._reported = rep
        self._reported_any = rep_any
        # the voted signals, tanks then loops; each dict built in one pass of zips
        # (tolist gives the same Python floats and ints as float()/int() per element)
        keys, xs, qs, fs = self._voted_keys, [], [], []
        if len(tank_q):
            fv = rep[self._ti_a] | rep[self._ti_b] | np.where(tank_dis, FLAG_DISAGREE, 0)
            xs += tank_val.tolist()
            qs += tank_q.tolist()
            fs += np.where(tank_q == GOOD, 0, fv).tolist()
        if len(sup_q):
            xs += sup_val.tolist()
            qs += sup_q.tolist()
            fs += np.where(sup_q == GOOD, 0, rep[self._li_sup]).tolist()
        voted = dict(zip(keys, zip(xs, qs, strict=True), strict=True))
        vflags = dict(zip(keys, fs, strict=True))
        usable = [q != BAD for q in qs]
        voted_at = dict(zip(self._voted_at, zip(xs, usable, strict=True), strict=True))
        return Estimate(values_out, quality, rep.copy(), voted, vflags, voted_at)

    # ------------------------------------------------------------------
    def _loops(
        self,
        t: float,
        dt: float,
        val: np.ndarray,
        pre_q: np.ndarray,
        indiv: np.ndarray,
        flags: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Loop supply vs the dry coolers' outlets through the mixing lag.

        A site has few cooling loops (2 on the demo, 30 at 10,000 points): one pass
        over them in plain Python costs less than ~45 numpy calls on arrays that
        short. The filter's ``exp`` stays numpy's (the one the vectorised rule used)."""
        nl = len(self._loop_names)
        if nl == 0:
            return np.zeros(0), np.zeros(0, dtype=np.uint8)
        isup = self._li_sup
        # the dry coolers' outlets summed per loop, in order (as np.bincount adds them)
        cnt = [0.0] * nl
        tot = [0.0] * nl
        for k, x, q in zip(
            self._d_loop_list, val[self._di_out].tolist(), pre_q[self._di_out].tolist(), strict=True
        ):
            if q == GOOD:
                cnt[k] += 1.0
                tot[k] += x
        flow_a = val[self._li_flow]
        tau = self._l_vol / np.maximum(flow_a, 1e-9) * 3.6  # litres / (l/s) = s
        alpha = (1.0 - np.exp(-dt / tau)).tolist()
        flow_q = pre_q[self._li_flow].tolist()
        sup_v, sup_q = val[isup].tolist(), pre_q[isup].tolist()
        sup_indiv = indiv[isup].tolist()
        refs, over_since, drifts = self._l_ref, self._l_over_since, self._l_drift
        out_v, out_q = [], []
        for k, (flow, fq, qmin, a, sup, sq, si) in enumerate(
            zip(
                flow_a.tolist(),
                flow_q,
                self._l_qmin_list,
                alpha,
                sup_v,
                sup_q,
                sup_indiv,
                strict=True,
            )
        ):
            mean_out = tot[k] / max(cnt[k], 1.0) if cnt[k] > 0 else math.nan
            ok = fq == GOOD and flow >= qmin and cnt[k] > 0
            sup_clean = si == 0
            sup_ok = sq != BAD
            drift = drifts[k]
            ref = refs[k]
            if math.isnan(ref) and sup_ok and not drift:
                ref = sup
            if math.isnan(ref) and ok:
                ref = mean_out
            if ok and not math.isnan(ref):
                ref += a * (mean_out - ref)
            # no transport to compare: follow the sensor (unless it is known to drift)
            if not ok and sup_ok and sup_clean and not drift:
                ref = sup
            refs[k] = ref
            since = math.nan if not ok else over_since[k]
            res = abs(sup - ref)
            over = ok and sup_clean and res > LOOP_DRIFT_K
            if over and math.isnan(since):
                since = t
            if ok and sup_clean and not over:
                since = math.nan
            over_since[k] = since
            drift = drift or (over and t - since >= LOOP_DRIFT_CONFIRM_S)
            drift = drift and not (ok and sup_clean and res < LOOP_DRIFT_CLEAR_K)
            drifts[k] = drift
            if drift:
                flags[isup[k]] |= FLAG_DRIFT
                if sq == GOOD:
                    sq = UNCERTAIN
            use_ref = (drift or sq == BAD) and ok and not math.isnan(ref)
            q = UNCERTAIN if use_ref else sq
            out_v.append(math.nan if q == BAD else ref if use_ref else sup)
            out_q.append(q)
        return np.array(out_v, dtype=np.float64), np.array(out_q, dtype=np.uint8)

    # ------------------------------------------------------------------
    def _tanks(
        self,
        t: float,
        dt: float,
        val: np.ndarray,
        pre_q: np.ndarray,
        indiv: np.ndarray,
        flags: np.ndarray,
        sup_val: np.ndarray,
        sup_q: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vote sensors A and B of every tank; diagnose drift against the HX balance."""
        nt = len(self._tank_names)
        if nt == 0:
            return np.zeros(0), np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=bool)
        ia, ib = self._ti_a, self._ti_b
        va, vb = val[ia], val[ib]
        clean = (indiv[ia] == 0) & (indiv[ib] == 0)  # both pass every other test
        alpha = 1.0 - math.exp(-dt / DRIFT_FILTER_S) if dt > 0 else 0.0

        # physical reference: T = T_return + Cw (T_wout - T_supply) / Cd
        ir, iw, iwf, idf = self._ti_ret, self._ti_wout, self._ti_wflow, self._ti_dflow
        wflow, dflow = val[iwf], val[idf]
        tsup = sup_val[self._t_loop]
        ref_ok = (
            (pre_q[ir] == GOOD)
            & (pre_q[iw] == GOOD)
            & (pre_q[iwf] == GOOD)
            & (pre_q[idf] == GOOD)
            & (wflow >= self._t_wmin)
            & (dflow >= self._t_dmin)
            & (sup_q[self._t_loop] != BAD)
        )
        tref = val[ir] + self._t_cw * wflow * (val[iw] - tsup) / (self._t_cd * dflow)
        ref_ok &= np.isfinite(tref)

        diff = va - vb
        d = self._t_diff
        init = clean & np.isnan(d)
        d[init] = diff[init]
        upd = clean & ~init
        d[upd] += alpha * (diff[upd] - d[upd])
        ra, rb = self._t_res_a, self._t_res_b
        r_upd = clean & ref_ok
        r_init = r_upd & (np.isnan(ra) | np.isnan(self._t_ref_since))
        ra[r_init] = (va - tref)[r_init]
        rb[r_init] = (vb - tref)[r_init]
        self._t_ref_since[r_init] = t
        r_step = r_upd & ~r_init
        ra[r_step] += alpha * ((va - tref)[r_step] - ra[r_step])
        rb[r_step] += alpha * ((vb - tref)[r_step] - rb[r_step])
        self._t_ref_since[~ref_ok] = np.nan

        ad = np.abs(d)
        over = clean & (ad > DRIFT_K)
        since = self._t_over_since
        since[over & np.isnan(since)] = t
        since[clean & ~over] = np.nan
        confirmed = over & (t - since >= DRIFT_CONFIRM_S)
        healed = clean & (ad < DRIFT_CLEAR_K)
        self._t_drift_a &= ~healed
        self._t_drift_b &= ~healed
        # identify (again while still ambiguous) against the physical reference
        ambiguous = self._t_drift_a == self._t_drift_b
        ident = confirmed & ambiguous
        if ident.any():
            settled = ref_ok & (t - self._t_ref_since >= DRIFT_FILTER_S)
            aa, ab = np.abs(ra), np.abs(rb)
            a_bad = settled & (ab < aa) & (ab <= DRIFT_REF_TOL_K)
            b_bad = settled & (aa < ab) & (aa <= DRIFT_REF_TOL_K)
            # fallback: the hot fluid is never cooler than the HX outlet
            ret_ok = (pre_q[ir] == GOOD) & ~settled
            ret = val[ir] - RETURN_MARGIN_K
            a_low = ret_ok & (va < ret) & ~(vb < ret)
            b_low = ret_ok & (vb < ret) & ~(va < ret)
            a_bad |= a_low
            b_bad |= b_low
            decided = a_bad | b_bad
            self._t_drift_a[ident] = (a_bad | ~decided)[ident]
            self._t_drift_b[ident] = (b_bad | ~decided)[ident]
        dra, drb = self._t_drift_a, self._t_drift_b
        flags[ia[dra]] |= FLAG_DRIFT
        flags[ib[drb]] |= FLAG_DRIFT

        # ---- the vote ---------------------------------------------------------------
        qa = np.where(dra & (pre_q[ia] == GOOD), UNCERTAIN, pre_q[ia])
        qb = np.where(drb & (pre_q[ib] == GOOD), UNCERTAIN, pre_q[ib])
        ga, gb = qa == GOOD, qb == GOOD
        both = ga & gb
        spread = np.abs(va - vb)
        dis = self._t_disagree
        dis[both & (spread > VOTE_AGREE_K)] = True
        dis[~both | (spread < VOTE_AGREE_CLEAR_K)] = False
        agree = both & ~dis
        if np.count_nonzero(agree) == nt:
            # every tank's two sensors good and agreeing (the rule): the mean, GOOD;
            # what follows would change nothing
            return 0.5 * (va + vb), np.full(nt, GOOD, dtype=np.uint8), np.zeros(nt, dtype=bool)
        hi_ab = np.fmax(va, vb)
        value = np.full(nt, np.nan)
        q = np.full(nt, BAD, dtype=np.uint8)
        value[agree] = 0.5 * (va + vb)[agree]
        q[agree] = GOOD
        dsg = both & dis
        value[dsg] = hi_ab[dsg]
        q[dsg] = UNCERTAIN
        flags[ia[dsg]] |= FLAG_DISAGREE
        flags[ib[dsg]] |= FLAG_DISAGREE
        only_a, only_b = ga & ~gb, gb & ~ga
        value[only_a] = va[only_a]
        value[only_b] = vb[only_b]
        q[only_a | only_b] = UNCERTAIN
        neither = ~ga & ~gb
        nb_a, nb_b = neither & (qa != BAD), neither & (qb != BAD)
        some = nb_a | nb_b
        value[some] = np.fmax(np.where(nb_a, va, np.nan), np.where(nb_b, vb, np.nan))[some]
        q[some] = UNCERTAIN
        return value, q, dsg

    # ==================================================================
    # alarms
    # ==================================================================
    @property
    def flags(self) -> np.ndarray:
        """Why each point is not GOOD after the last update (``FLAG_*`` bits,
        latched ones included)."""
        return self._reported

    @property
    def flags_now(self) -> np.ndarray:
        """The reasons the last update found, without the latched ones."""
        return self._now

    def newly_flagged(self) -> list[tuple[str, int]]:
        """(point, flags) that turned non-good or gained a reason on the last update."""
        rep = self._reported
        return [(self.names[i], int(rep[i])) for i in self._new_flagged]

    def newly_cleared(self) -> list[str]:
        """Points that became GOOD on the last update."""
        return [self.names[i] for i in self._new_cleared]

    # ==================================================================
    # restart
    # ==================================================================
    def state(self) -> dict:
        """The slow knowledge worth keeping over a controller restart (JSON-able)."""

        def f(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "version": 1,
            "points": self.n,
            "tanks": {
                name: {
                    "diff_k": f(self._t_diff[k]),
                    "res_a_k": f(self._t_res_a[k]),
                    "res_b_k": f(self._t_res_b[k]),
                    "drift_a": bool(self._t_drift_a[k]),
                    "drift_b": bool(self._t_drift_b[k]),
                }
                for k, name in enumerate(self._tank_names)
            },
            # (a loop's reference is fast state, not kept: see ``restore``)
            "loops": {
                name: {"drift": bool(self._l_drift[k])} for k, name in enumerate(self._loop_names)
            },
        }

    def restore(self, state: dict) -> None:
        """Apply ``state()`` of an earlier estimator of the same site.

        Equipment is matched by name (added or removed equipment is skipped);
        a state of another version is rejected with ``ValueError``.
        """
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("not an estimator state of version 1")

        def g(x: object) -> float:
            return math.nan if x is None else float(x)  # type: ignore[arg-type]

        tanks = state.get("tanks", {})
        for k, name in enumerate(self._tank_names):
            s = tanks.get(name)
            if s is None:
                continue
            self._t_diff[k] = g(s.get("diff_k"))
            self._t_res_a[k] = g(s.get("res_a_k"))
            self._t_res_b[k] = g(s.get("res_b_k"))
            self._t_drift_a[k] = bool(s.get("drift_a", False))
            self._t_drift_b[k] = bool(s.get("drift_b", False))
        loops = state.get("loops", {})
        for k, name in enumerate(self._loop_names):
            s = loops.get(name)
            if s is None:
                continue
            # The loop's reference is fast state (its time constant is the loop's
            # volume over its flow, minutes): stale after any gap, it is seeded
            # again at the first scan, from the sensor or, for a sensor known to
            # drift, from the heat balance. Restored, a loop that cooled 5 K
            # while the controller was down had its healthy sensor called drifting.
            self._l_drift[k] = bool(s.get("drift", False))
