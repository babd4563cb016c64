"""What is plausible for each point: ranges, rates, sentinels and stuck witnesses.

Built once from the site description and its typed point index, used by the
estimator (``estimate.py``) on every scan. Every bound comes from physics or
from the equipment's nameplate, with its reason beside its constant:

* **ranges**: the point's declared min/max, tightened where physics says so:
  fluid and water temperatures -20..120 °C, die temperatures -20..150 °C,
  flows 0..2x design, loop dp 0..2x the pumps' rated head, IT loads 0..1.5x
  rated, pump/fan motors 0..2x rated, meters 0..10x their breaker (above the
  magnetic trip nothing survives a scan), voltage 0..1.3x nominal, frequency
  nominal ±10 %;
* **rates**: bulk temperatures 3 K/s, heat-exchanger outlets 10 K/s, dies 1.5x
  their full-load rise per second, flows and dp 50 % of design per second,
  positions/speeds/levels 20 %/s, frequency 2 Hz/s; electrical quantities step
  legitimately and have none;
* **sentinels**: an integer register's failure value (0x8000 for i16, 0xFFFF
  for u16, ...), unless the map declares it inside the point's range;
* **witnesses**: for each analog transducer, the physically coupled points
  that must move when it does (its redundant partner, the other temperatures
  of its tank/loop/CDU, a pump's speed for its power and flow, a meter's
  current for its power...). A point with no witness is never judged stuck.
  A *regulated* temperature (a tank's fluid, a loop's or a CDU's supply: what
  a control loop holds at its setpoint) legitimately reads the same count for
  minutes while the heat exchanger's outlets around it move -- that is the
  loop doing its job. For those, only a sensor of the same quantity (a tank's
  redundant partner) is a *fast* witness; the others count only on the slow
  path, whose run of identical samples a healthy sensor does not reach by
  chance (``fast`` per pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thermogate.plc.equipment import Site
from thermogate.plc.pointmap import PointMap

# -- plausible ranges -------------------------------------------------------------
#: Fluid and water/glycol temperatures: below -20 °C a 30 % glycol loop is
#: frozen, above 120 °C a dielectric is past its flash point margin and water
#: boils at loop pressure; an i16 in 0.1 °C can hold far more than either.
FLUID_TEMP_MIN_C = -20.0
FLUID_TEMP_MAX_C = 120.0
#: Semiconductor dies: chips shut themselves down near 105-125 °C.
DIE_TEMP_MIN_C = -20.0
DIE_TEMP_MAX_C = 150.0
#: A pump at run-out (shut-off head 1.3x, valves open) cannot push 2x design.
FLOW_MAX_X_DESIGN = 2.0
#: Loop dp: pumps' shut-off head is ~1.3x rated head.
DP_MAX_X_RATED_HEAD = 2.0
#: IT loads cannot draw much above nameplate (the PDU breaker is sized at 125 %).
LOAD_MAX_X_RATED = 1.5
#: Motors draw at most their rated power at 100 % speed (affinity laws).
MOTOR_MAX_X_RATED = 2.0
#: Above the breaker's magnetic (instantaneous) pickup, 5-10 x In, it trips in
#: tens of ms: no scan can read a load beyond this multiple of its rating.
BREAKER_MAX_X_RATING = 10.0
#: Over-voltage relays trip at 1.1-1.2 x nominal; 0 V (a dead bus) is plausible.
VOLTAGE_MAX_X_NOMINAL = 1.3
#: Grid protection disconnects well inside nominal ±10 %.
FREQUENCY_BAND_FRAC = 0.10


# -- rate of change -----------------------------------------------------------------
#: Temperatures of fluids: the fastest tank moves ~0.1 K/s at full load, a loop
#: lump slower still; 3 K/s is a 30x margin (a thermowell cannot follow faster).
TEMP_RATE_K_S = 3.0
#: Heat-exchanger outlets (a tank's return and water-out, a dry cooler's outlet,
#: a CDU's supply and water-out) follow their flows algebraically: a duty pump
#: trip halves the loop flow within a scan and moves them ~5 K at once. 10 K/s
#: keeps them plausible and still rejects a loose connector's 25 K spike.
HX_OUTLET_RATE_K_S = 10.0
#: Die temperatures are algebraic in power (an H200 settles within a second of
#: a load step, 0.037 K/W x 700 W ~ 26 K; a miner's chips ~27 K above fluid):
#: allow this multiple of the site's full-load die rise per second.
DIE_RATE_X_RISE = 1.5
#: Flows and dp: the fastest actuator (a VFD ramp, ~20 s 0-100 %) moves ~5 %/s
#: of design; 50 % of design per second is only reachable by a fault.
FLOW_RATE_FRAC_S = 0.5
#: Positions, speeds, levels (%): valve actuators stroke in 15-150 s, VFDs ramp
#: in 5 s or more; 20 %/s is a generous bound.
PCT_RATE_S = 20.0
#: Grid frequency: RoCoF withstand requirements are 1-2 Hz/s.
FREQ_RATE_HZ_S = 2.0
#: Quantisation allowance on the rate check: two counts of the register.
RATE_FLOOR_COUNTS = 2.0

#: A reading must span this many counts of its register to be judged: a
#: witness's 5 % move then changes a proportional reading by >= 1 count.
STUCK_MIN_COUNTS = 20.0
#: What counts as a witness moving: well above its own noise (0.05 K for a
#: class A RTD, 0.5 % for flow meters, 0.3 % for power meters).
WITNESS_MOVE_K = 0.5  # degC: 5 counts of 0.1 °C, 10 sigma
WITNESS_MOVE_PCT = 2.0  # % points (speed / position feedback is noise-free)
WITNESS_MOVE_REL = 0.05  # flows, dp, kW, A: 5 % of reading (10 sigma)
WITNESS_MOVE_REL_V = 0.02  # voltage
WITNESS_MOVE_REL_HASH = 0.10  # hashrate (pool-side noise ~1 %)


_STUCK_UNITS = frozenset({"degC", "m3/h", "l/s", "kPa", "kW", "A", "V", "TH/s"})
_SENTINEL_RAW = {"u16": 0xFFFF, "i16": -0x8000, "u32": 0xFFFFFFFF, "i32": -0x80000000}


@dataclass(frozen=True)
class PointRules:
    """Per-point bounds, aligned with ``pmap.points``."""

    lo: np.ndarray  # plausible range, widened by half a count
    hi: np.ndarray
    rate: np.ndarray  # units per second (inf: no rate check)
    floor: np.ndarray  # two counts of the register: quantisation allowance
    zero_ok: np.ndarray  # flows and dp may fall to or rise from zero in one scan
    sentinel: np.ndarray  # the register's failure value (NaN: none)
    sentinel_tol: np.ndarray

    @property
    def has_sentinel(self) -> np.ndarray:
        return ~np.isnan(self.sentinel)

    @property
    def has_rate(self) -> np.ndarray:
        return np.isfinite(self.rate)


@dataclass(frozen=True)
class Witnesses:
    """(point, witness) pairs sorted by point, and the stuck check's thresholds."""

    point: np.ndarray  # position of the judged point, one per pair
    witness: np.ndarray  # position of its witness
    eligible: np.ndarray  # per point: an analog transducer with at least one witness
    starts: np.ndarray  # first pair of each judged point (pairs are sorted by point)
    heads: np.ndarray  # the judged point of each run of pairs
    zero_band: np.ndarray  # per point: a reading this close to zero is not judged
    move_abs: np.ndarray  # per pair: how far the witness must move, absolute ...
    move_rel: np.ndarray  # ... or relative to its value when the point froze
    #: per pair: the witness may judge on the fast path (False: a regulated
    #: point's coupled, not redundant, witness; see the module docstring)
    fast: np.ndarray


def point_rules(pmap: PointMap, site: Site) -> PointRules:
    """Ranges, rates and sentinels of every point of ``pmap``."""
    pts, ix = pmap.points, pmap.index
    n = len(pts)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    rate = np.full(n, np.inf)
    floor = np.zeros(n)
    sentinel = np.full(n, np.nan)
    scale = np.array([p.scale for p in pts])
    die_rise: dict[int, float] = {}
    for t, tp in zip(site.tanks, ix.tanks, strict=True):
        die_rise[tp.chip_temp_max] = t.chip_r_k_per_kw * t.unit_power_kw
    for r, rp in zip(site.rack_rows, ix.rows, strict=True):
        gpu_w = r.node_power_kw * 1000.0 / r.gpus_per_node
        die_rise[rp.gpu_temp_max] = r.gpu_r_k_per_w * gpu_w
    design = design_values(pmap, site)
    hx_out = {x for tp in ix.tanks for x in (tp.return_temp, tp.water_out_temp)}
    hx_out |= {d.outlet_temp for d in ix.dry_coolers}
    hx_out |= {x for cp in ix.cdus for x in (cp.supply_temp, cp.water_out_temp)}
    for i, p in enumerate(pts):
        if p.min is not None:
            lo[i] = p.min
        if p.max is not None:
            hi[i] = p.max
        if p.is_bit:
            lo[i], hi[i] = 0.0, 1.0
            continue
        if p.type in _SENTINEL_RAW:
            sv = _SENTINEL_RAW[p.type] * p.scale
            declared = p.min is not None and p.max is not None and p.min <= sv <= p.max
            if not declared:  # a sentinel the map declares in range is a value
                sentinel[i] = sv
            floor[i] = RATE_FLOOR_COUNTS * p.scale
        if p.writable:
            continue  # commands read back: range only, no physics
        u = p.unit
        if u == "degC":
            if i in die_rise:
                lo[i] = max(lo[i], DIE_TEMP_MIN_C)
                hi[i] = min(hi[i], DIE_TEMP_MAX_C)
                rate[i] = max(TEMP_RATE_K_S, DIE_RATE_X_RISE * die_rise[i])
            else:
                if i != ix.plc.ambient_temp:  # outdoors is not a fluid
                    lo[i] = max(lo[i], FLUID_TEMP_MIN_C)
                    hi[i] = min(hi[i], FLUID_TEMP_MAX_C)
                rate[i] = HX_OUTLET_RATE_K_S if i in hx_out else TEMP_RATE_K_S
        elif u in ("m3/h", "l/s", "kPa"):
            d = design.get(i)
            if d is not None:
                cap = DP_MAX_X_RATED_HEAD if u == "kPa" else FLOW_MAX_X_DESIGN
                hi[i] = min(hi[i], cap * d)
                rate[i] = FLOW_RATE_FRAC_S * d
        elif u == "%":
            rate[i] = PCT_RATE_S
        elif u == "Hz":
            f0 = site.frequency_hz
            lo[i] = max(lo[i], f0 * (1 - FREQUENCY_BAND_FRAC))
            hi[i] = min(hi[i], f0 * (1 + FREQUENCY_BAND_FRAC))
            rate[i] = FREQ_RATE_HZ_S
        elif u in ("kW", "A", "V"):
            d = design.get(i)
            if d is not None:
                hi[i] = min(hi[i], d)
    # a reading within half a count of a limit rounds onto it (163.2 kW is
    # 163.20000000000002 after 16 x 10.2); f32 gets a few ulps' worth
    tol = np.array([0.5 * p.scale if p.type != "f32" else 0.0 for p in pts])
    tol = np.maximum(tol, 1e-9 * np.maximum(np.abs(np.where(np.isfinite(hi), hi, 0)), 1))
    return PointRules(
        lo=lo - tol,
        hi=hi + tol,
        rate=rate,
        floor=floor,
        zero_ok=np.array([p.unit in ("m3/h", "l/s", "kPa") and not p.writable for p in pts]),
        sentinel=sentinel,
        sentinel_tol=0.5 * scale,
    )


def design_values(pmap: PointMap, site: Site) -> dict[int, float]:
    """Upper bounds / design values by point position, from the site description."""
    ix = pmap.index
    d: dict[int, float] = {}
    feeder_kw = 0.0
    for f, fp in zip(site.feeders, ix.feeders, strict=True):
        kw = BREAKER_MAX_X_RATING * f.rating_kw
        feeder_kw += f.rating_kw
        d[fp.power_kw] = kw
        d[fp.current_a] = BREAKER_MAX_X_RATING * f.breaker.rating_a
        d[fp.voltage_v] = VOLTAGE_MAX_X_NOMINAL * f.voltage_v
    for x, xp in zip(site.pdus, ix.pdus, strict=True):
        d[xp.power_kw] = BREAKER_MAX_X_RATING * x.rating_kw
        d[xp.current_a] = BREAKER_MAX_X_RATING * x.breaker.rating_a
        d[xp.voltage_v] = VOLTAGE_MAX_X_NOMINAL * x.voltage_v
    site_a = feeder_kw * 1000.0 / (math.sqrt(3.0) * site.meter_voltage_v * 0.5)
    d[ix.site.power_kw] = BREAKER_MAX_X_RATING * feeder_kw
    d[ix.site.current_a] = BREAKER_MAX_X_RATING * site_a
    d[ix.site.voltage_v] = VOLTAGE_MAX_X_NOMINAL * site.meter_voltage_v
    for lp in site.loops:
        lpp = ix.loop[lp.name]
        d[lpp.flow] = sum(p.rated_flow_m3h for p in lp.pumps)
        d[lpp.dp] = max(p.rated_head_kpa for p in lp.pumps)
        for p in lp.pumps:
            d[ix.pump[p.name].power_kw] = MOTOR_MAX_X_RATED * p.rated_power_kw
        for dc in lp.dry_coolers:
            d[ix.dry_cooler[dc.name].power_kw] = MOTOR_MAX_X_RATED * dc.fans * dc.fan_power_kw
    for t, tp in zip(site.tanks, ix.tanks, strict=True):
        d[tp.water_flow] = t.design_water_flow_m3h
        d[tp.dielectric_flow] = t.dielectric_flow_l_s
        d[tp.power_kw] = LOAD_MAX_X_RATED * t.rated_kw
    for c, cp in zip(site.cdus, ix.cdus, strict=True):
        d[cp.tcs_flow] = c.tcs_flow_l_s
    for r, rp in zip(site.rack_rows, ix.rows, strict=True):
        d[rp.power_kw] = LOAD_MAX_X_RATED * r.rated_kw
    return d


def witnesses(pmap: PointMap, site: Site) -> Witnesses:
    """Stuck eligibility and the physically coupled witnesses of each point."""
    pts, ix = pmap.points, pmap.index
    rel: list[tuple[int, int]] = []

    def mutual(points: list[int]) -> None:
        for a in points:
            for b in points:
                if a != b:
                    rel.append((a, b))

    def by(point: int, witness: list[int]) -> None:
        rel.extend((point, w) for w in witness)

    for t, tp in zip(site.tanks, ix.tanks, strict=True):
        mutual([tp.fluid_temp, tp.fluid_temp_b, tp.return_temp, tp.water_out_temp])
        by(tp.chip_temp_max, [tp.fluid_temp, tp.fluid_temp_b, tp.power_kw])
        by(tp.water_flow, [tp.valve_pos, ix.loop[t.loop].dp])
        elec = [tp.power_kw, ix.pdu[t.pdu].power_kw]
        if tp.hashrate_ths is not None:
            elec.append(tp.hashrate_ths)
        mutual(elec)
    # regulated temperatures, and the redundant partner of each (the fast witness)
    regulated = {lpp.supply_temp for lpp in ix.loops} | {cp.supply_temp for cp in ix.cdus}
    partner: set[tuple[int, int]] = set()
    for tp in ix.tanks:
        regulated |= {tp.fluid_temp, tp.fluid_temp_b}
        partner |= {(tp.fluid_temp, tp.fluid_temp_b), (tp.fluid_temp_b, tp.fluid_temp)}
    for lp in site.loops:
        lpp = ix.loop[lp.name]
        outs = [ix.dry_cooler[d.name].outlet_temp for d in lp.dry_coolers]
        mutual([lpp.supply_temp, lpp.return_temp, *outs])
        speeds = [ix.pump[p.name].speed for p in lp.pumps]
        mutual([lpp.flow, lpp.dp])
        by(lpp.flow, speeds)
        by(lpp.dp, speeds)
        for p in lp.pumps:
            by(ix.pump[p.name].power_kw, [ix.pump[p.name].speed])
        for d in lp.dry_coolers:
            by(ix.dry_cooler[d.name].power_kw, [ix.dry_cooler[d.name].fan_speed])
    for cp in ix.cdus:
        mutual([cp.supply_temp, cp.return_temp, cp.water_out_temp])
    for r, rp in zip(site.rack_rows, ix.rows, strict=True):
        by(rp.gpu_temp_max, [ix.cdu[r.cdu].supply_temp, rp.power_kw])
        mutual([rp.power_kw, ix.pdu[r.pdu].power_kw])
    for m in (ix.site, *ix.feeders, *ix.pdus):
        mutual([m.power_kw, m.current_a])
        by(m.voltage_v, [m.power_kw, m.current_a])

    pairs = sorted(set(rel))
    pp = np.array([a for a, _ in pairs], dtype=np.int64)
    pw = np.array([b for _, b in pairs], dtype=np.int64)
    n = len(pts)
    elig = np.array([(not p.is_bit) and (not p.writable) and p.unit in _STUCK_UNITS for p in pts])
    has_w = np.zeros(n, dtype=bool)
    has_w[pp] = True
    # a point with a witness is the head of a run of pairs (sorted by point)
    if len(pp):
        starts = np.flatnonzero(np.r_[True, pp[1:] != pp[:-1]])
    else:
        starts = np.zeros(0, dtype=np.int64)
    # a reading within STUCK_MIN_COUNTS of zero (equipment off, a fan idling at
    # 0.3 kW in 0.1 kW counts) cannot show a witness's 5 % move: not judged
    # (temperatures have absolute witnesses and no such floor)
    scale = np.array([p.scale if p.type != "f32" else 1e-3 for p in pts])
    zero_band = np.where(
        np.array([p.unit == "degC" for p in pts]), -np.inf, STUCK_MIN_COUNTS * scale
    )
    # witness movement thresholds: max(absolute, relative * |value at freeze|)
    w_abs = np.zeros(n)
    w_rel = np.zeros(n)
    for i, pt in enumerate(pts):
        u = pt.unit
        if u == "degC":
            w_abs[i] = WITNESS_MOVE_K
        elif u == "%":
            w_abs[i] = WITNESS_MOVE_PCT
        elif u == "V":
            w_rel[i] = WITNESS_MOVE_REL_V
        elif u == "TH/s":
            w_rel[i] = WITNESS_MOVE_REL_HASH
        else:
            w_rel[i] = WITNESS_MOVE_REL
        w_abs[i] = max(w_abs[i], 5.0 * pt.scale if pt.type != "f32" else 1e-6)
    return Witnesses(
        point=pp,
        witness=pw,
        eligible=elig & has_w,
        starts=starts,
        heads=pp[starts] if len(starts) else starts,
        zero_band=zero_band,
        move_abs=w_abs[pw],
        move_rel=w_rel[pw],
        fast=np.array([a not in regulated or (a, b) in partner for a, b in pairs], dtype=bool),
    )
