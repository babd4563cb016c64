"""The simulated plant's parameters: everything derived once from the site description.

``plant_params(site, rng)`` turns the site's equipment into the arrays the
plant's physics steps over (capacities, conductances, pump curves, dry-cooler
calibration, breaker curves, who feeds whom) and returns them as one frozen
record whose arrays are read-only: a step can change the plant's state, never
its design. A plant copied for a what-if shares the record.

Array names carry their kind (``t_`` tanks, ``c_`` CDUs, ``r_`` rack rows,
``l_`` loops, ``p_`` pumps, ``d_`` dry coolers, ``b_`` breakers: PDUs first,
then feeders) and their units where a unit is not obvious.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from thermogate.plc.site import Site

# -- design constants of the equipment the site description leaves out ----
WATER_CP_KJ_KGK_TCS = 3.9  # PG25 coolant in CDU secondary loops
PUMP_SHUTOFF_HEAD_RATIO = 1.3  # shut-off head / rated head
BRANCH_DESIGN_DP_KPA = 100.0  # branch flows are rated at this differential pressure
MAIN_LOSS_AT_RATED_KPA = 100.0  # piping + dry-cooler loss at rated pump flow
BYPASS_FLOW_FRACTION = 0.08  # minimum-flow bypass, of rated pump flow at design dp
DC_AIR_CAPACITY_RATIO = 2.5  # air-side capacity rate / water-side at design
CHIP_RECOVER_MARGIN_K = 10.0  # auto-restart after a thermal shutdown
FOULING_TAU_DAYS = (8.0, 30.0)  # range of per-HX fouling time constants


@dataclass(frozen=True, slots=True)
class PlantParams:
    """See the module docstring; built by :func:`plant_params`."""

    # counts
    n_t: int
    n_l: int
    n_c: int
    n_r: int
    n_pdu: int
    n_f: int
    # tanks (per tank)
    t_loop: np.ndarray
    t_cap: np.ndarray
    t_units: np.ndarray
    t_unit_kw: np.ndarray
    t_idle_kw: np.ndarray
    t_rated: np.ndarray
    t_r: np.ndarray
    t_throttle: np.ndarray
    t_chip_trip: np.ndarray
    t_asic: np.ndarray
    t_train_f: np.ndarray
    t_min_kw: np.ndarray
    t_hash_exp: np.ndarray
    t_dyn_kw: np.ndarray
    t_floor_kw: np.ndarray
    t_recover_c: np.ndarray
    t_th_nom: np.ndarray
    t_ua: np.ndarray
    t_cd: np.ndarray
    t_kv: np.ndarray
    t_foul_tau_s: np.ndarray
    t_cw_per_m3h: np.ndarray
    t_pdu: np.ndarray
    # CDUs (per CDU)
    c_loop: np.ndarray
    c_cap: np.ndarray
    c_ctcs: np.ndarray
    c_ua: np.ndarray
    c_kv: np.ndarray
    c_foul_tau_s: np.ndarray
    c_cw_per_m3h: np.ndarray
    # rack rows (per row)
    r_cdu: np.ndarray
    r_nodes: np.ndarray
    r_node_kw: np.ndarray
    r_idle_kw: np.ndarray
    r_gpu_r: np.ndarray
    r_throttle: np.ndarray
    r_chip_trip: np.ndarray
    r_train: np.ndarray
    r_gpu_idle_w: np.ndarray
    r_gpu_full_w: np.ndarray
    r_recover_c: np.ndarray
    r_pdu: np.ndarray
    # water loops (per loop)
    l_half_cap: np.ndarray
    l_hmax: np.ndarray
    l_a: np.ndarray
    l_r_main: np.ndarray
    l_k_bypass: np.ndarray
    l_cw_per_m3h: np.ndarray
    l_feeder: np.ndarray
    # pumps (per pump)
    p_loop: np.ndarray
    p_min_speed: np.ndarray
    p_breaker: np.ndarray
    # dry coolers (per dry cooler)
    d_loop: np.ndarray
    d_fans: np.ndarray
    d_fan_kw: np.ndarray
    d_ua_design: np.ndarray
    d_cair_design: np.ndarray
    d_share: np.ndarray
    d_breaker: np.ndarray
    # PDUs
    pdu_feeder: np.ndarray
    # breakers (PDUs first, then feeders)
    b_pickup: np.ndarray
    b_k: np.ndarray
    b_a: np.ndarray
    b_kw_per_a: np.ndarray
    b_volts: np.ndarray

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v.flags.writeable = False  # the design is not state: no step may change it

    def __deepcopy__(self, memo: dict[int, object]) -> PlantParams:
        return self  # immutable: a copied plant shares its design


def plant_params(site: Site, rng: np.random.Generator) -> PlantParams:
    """The arrays of ``site``'s plant; ``rng`` draws each heat exchanger's fouling
    time constant (tanks first, then CDUs: the draw order is part of the seed)."""
    tanks, loops, cdus, rows = site.tanks, site.loops, site.cdus, site.rack_rows
    loop_names = [lp.name for lp in loops]
    n_t, n_l, n_c, n_r = len(tanks), len(loops), len(cdus), len(rows)

    # tanks
    t_loop = np.array([loop_names.index(t.loop) for t in tanks], dtype=int)
    t_cap = np.array([t.heat_capacity_kj_k for t in tanks])
    t_units = np.array([t.units for t in tanks], dtype=float)
    t_unit_kw = np.array([t.unit_power_kw for t in tanks])
    t_idle_kw = np.array([t.unit_idle_kw for t in tanks])
    t_rated = t_units * t_unit_kw
    t_r = np.array([t.chip_r_k_per_kw for t in tanks])
    t_throttle = np.array([t.limits.chip_throttle_c for t in tanks])
    t_chip_trip = np.array([t.limits.chip_trip_c for t in tanks])
    t_asic = np.array([t.workload == "asic" for t in tanks], dtype=bool)
    t_train = np.array([t.workload_class == "training" for t in tanks], dtype=bool)
    t_train_f = t_train.astype(float)
    # the miners' curve, from the site (``Tank.hashrate_at`` is the same curve)
    t_min_kw = np.array([t.miner_min_power_pct / 100.0 for t in tanks]) * t_unit_kw
    t_hash_exp = np.array([t.miner_hash_exponent for t in tanks])
    t_dyn_kw = t_unit_kw - t_idle_kw
    # The least a running unit draws: a miner's minimum clock, a GPU node's idle.
    t_floor_kw = np.where(t_asic, t_min_kw, t_idle_kw)
    # A unit that shut itself down restarts once its fluid is this cool.
    t_recover_c = t_throttle - CHIP_RECOVER_MARGIN_K - t_r * t_floor_kw
    j_per_th = np.array([t.miner_j_per_th for t in tanks])
    t_th_nom = t_unit_kw / j_per_th * 1000.0  # TH/s at nameplate
    t_ua = np.array([t.hx_ua_kw_k for t in tanks])
    t_cd = np.array(
        [t.dielectric_flow_l_s * t.fluid_density_kg_l * t.fluid_cp_kj_kgk for t in tanks]
    )
    t_kv = np.array([t.design_water_flow_m3h for t in tanks]) / math.sqrt(BRANCH_DESIGN_DP_KPA)
    lo, hi = FOULING_TAU_DAYS
    t_foul_tau_s = rng.uniform(lo, hi, n_t) * 86400.0

    # CDUs and rows
    c_loop = np.array([loop_names.index(c.loop) for c in cdus], dtype=int)
    c_cap = np.array([c.tcs_volume_l * 1.03 * WATER_CP_KJ_KGK_TCS for c in cdus])
    c_ctcs = np.array([c.tcs_flow_l_s * 1.03 * WATER_CP_KJ_KGK_TCS for c in cdus])
    c_ua = np.array([c.hx_ua_kw_k for c in cdus])
    c_kv = np.array([c.design_water_flow_m3h for c in cdus]) / math.sqrt(BRANCH_DESIGN_DP_KPA)
    c_foul_tau_s = rng.uniform(lo, hi, n_c) * 86400.0
    cdu_names = [c.name for c in cdus]
    r_cdu = np.array([cdu_names.index(r.cdu) for r in rows], dtype=int)
    r_nodes = np.array([r.nodes for r in rows], dtype=float)
    r_node_kw = np.array([r.node_power_kw for r in rows])
    r_idle_kw = np.array([r.node_idle_kw for r in rows])
    r_gpu_r = np.array([r.gpu_r_k_per_w for r in rows])
    r_throttle = np.array([r.chip_throttle_c for r in rows])
    r_chip_trip = np.array([r.chip_trip_c for r in rows])
    r_train = np.array([r.workload_class == "training" for r in rows], dtype=bool)
    r_gpu_idle_w = np.array([r.gpu_idle_w for r in rows])
    r_gpu_full_w = np.array([r.gpu_full_w for r in rows])
    r_recover_c = r_throttle - CHIP_RECOVER_MARGIN_K - r_gpu_r * r_gpu_idle_w
    # A GPU scheduler in the loop (``set_gpu_utilisation``) replaces the
    # environment's demand per tank and row; NaN: the environment's.

    # loops
    l_rho = np.array([lp.density_kg_l for lp in loops])
    l_cp = np.array([lp.cp_kj_kgk for lp in loops])
    l_half_cap = np.array([lp.volume_l * lp.density_kg_l * lp.cp_kj_kgk / 2 for lp in loops])
    pumps = site.pumps
    p_loop = np.array([loop_names.index(p.loop) for p in pumps], dtype=int)
    p_min_speed = np.array([p.min_speed_pct for p in pumps]) / 100.0
    # Per loop pump curve from its (identical) pumps: H = Hmax s^2 - a (Q/n)^2
    l_hmax = np.zeros(n_l)
    l_a = np.zeros(n_l)
    l_r_main = np.zeros(n_l)
    l_k_bypass = np.zeros(n_l)
    for i, lp in enumerate(loops):
        q0 = max(p.rated_flow_m3h for p in lp.pumps)
        h0 = max(p.rated_head_kpa for p in lp.pumps)
        l_hmax[i] = PUMP_SHUTOFF_HEAD_RATIO * h0
        l_a[i] = (PUMP_SHUTOFF_HEAD_RATIO - 1.0) * h0 / q0**2
        l_r_main[i] = MAIN_LOSS_AT_RATED_KPA / q0**2
        l_k_bypass[i] = BYPASS_FLOW_FRACTION * q0 / math.sqrt(BRANCH_DESIGN_DP_KPA)

    dcs = site.dry_coolers
    d_loop = np.array([loop_names.index(d.loop) for d in dcs], dtype=int)
    d_fans = np.array([d.fans for d in dcs], dtype=float)
    d_fan_kw = np.array([d.fan_power_kw for d in dcs])
    l_n_dc = np.bincount(d_loop, minlength=n_l).astype(float)
    # Calibrate each dry cooler at its design point: capacity at design
    # approach and ambient with the loop's design flow shared evenly.
    design_flow = np.array(
        [sum(p.rated_flow_m3h for p in lp.pumps) / len(lp.pumps) for lp in loops]
    )
    cw = design_flow[d_loop] / 3.6 * l_rho[d_loop] * l_cp[d_loop]
    cw = cw / l_n_dc[d_loop]
    cap = np.array([d.capacity_kw for d in dcs])
    approach = np.array([d.design_approach_k for d in dcs])
    eff = cap / (cw * approach + cap)  # Q = eff*Cw*(Tin-Tamb), Tin = Tamb+approach+Q/Cw
    cr = 1.0 / DC_AIR_CAPACITY_RATIO
    ntu = np.log((1.0 - eff * cr) / (1.0 - eff)) / (1.0 - cr)
    d_ua_design = ntu * cw
    d_cair_design = DC_AIR_CAPACITY_RATIO * cw

    # electrical
    # Capacity rate (kW/K) of 1 m3/h of each loop's water, per consumer.
    l_cw_per_m3h = l_rho * l_cp / 3.6
    t_cw_per_m3h = l_cw_per_m3h[t_loop]
    c_cw_per_m3h = l_cw_per_m3h[c_loop]
    d_share = 1.0 / l_n_dc[d_loop]
    pdu_names = [d.name for d in site.pdus]
    feeder_names = [f.name for f in site.feeders]
    t_pdu = np.array([pdu_names.index(t.pdu) for t in tanks], dtype=int)
    r_pdu = np.array([pdu_names.index(r.pdu) for r in rows], dtype=int)
    pdu_feeder = np.array([feeder_names.index(d.feeder) for d in site.pdus], dtype=int)
    l_feeder = np.array([feeder_names.index(lp.feeder) for lp in loops], dtype=int)
    n_pdu, n_f = len(site.pdus), len(site.feeders)
    breakers = [*(d.breaker for d in site.pdus), *(f.breaker for f in site.feeders)]
    b_pickup = np.array([b.rating_a * b.pickup_pct / 100.0 for b in breakers])
    b_k = np.array([b.CURVES[b.curve][0] * b.tms for b in breakers])
    b_a = np.array([b.CURVES[b.curve][1] for b in breakers])
    pf = np.array([*(d.power_factor for d in site.pdus), *(f.power_factor for f in site.feeders)])
    volts = np.array([*(d.voltage_v for d in site.pdus), *(f.voltage_v for f in site.feeders)])
    b_kw_per_a = math.sqrt(3.0) * volts * pf / 1000.0
    b_volts = volts
    p_breaker = n_pdu + l_feeder[p_loop]  # feeder of each pump
    d_breaker = n_pdu + l_feeder[d_loop]

    return PlantParams(
        n_t=n_t,
        n_l=n_l,
        n_c=n_c,
        n_r=n_r,
        n_pdu=n_pdu,
        n_f=n_f,
        t_loop=t_loop,
        t_cap=t_cap,
        t_units=t_units,
        t_unit_kw=t_unit_kw,
        t_idle_kw=t_idle_kw,
        t_rated=t_rated,
        t_r=t_r,
        t_throttle=t_throttle,
        t_chip_trip=t_chip_trip,
        t_asic=t_asic,
        t_train_f=t_train_f,
        t_min_kw=t_min_kw,
        t_hash_exp=t_hash_exp,
        t_dyn_kw=t_dyn_kw,
        t_floor_kw=t_floor_kw,
        t_recover_c=t_recover_c,
        t_th_nom=t_th_nom,
        t_ua=t_ua,
        t_cd=t_cd,
        t_kv=t_kv,
        t_foul_tau_s=t_foul_tau_s,
        c_loop=c_loop,
        c_cap=c_cap,
        c_ctcs=c_ctcs,
        c_ua=c_ua,
        c_kv=c_kv,
        c_foul_tau_s=c_foul_tau_s,
        r_cdu=r_cdu,
        r_nodes=r_nodes,
        r_node_kw=r_node_kw,
        r_idle_kw=r_idle_kw,
        r_gpu_r=r_gpu_r,
        r_throttle=r_throttle,
        r_chip_trip=r_chip_trip,
        r_train=r_train,
        r_gpu_idle_w=r_gpu_idle_w,
        r_gpu_full_w=r_gpu_full_w,
        r_recover_c=r_recover_c,
        l_half_cap=l_half_cap,
        p_loop=p_loop,
        p_min_speed=p_min_speed,
        l_hmax=l_hmax,
        l_a=l_a,
        l_r_main=l_r_main,
        l_k_bypass=l_k_bypass,
        d_loop=d_loop,
        d_fans=d_fans,
        d_fan_kw=d_fan_kw,
        d_ua_design=d_ua_design,
        d_cair_design=d_cair_design,
        l_cw_per_m3h=l_cw_per_m3h,
        t_cw_per_m3h=t_cw_per_m3h,
        c_cw_per_m3h=c_cw_per_m3h,
        d_share=d_share,
        t_pdu=t_pdu,
        r_pdu=r_pdu,
        pdu_feeder=pdu_feeder,
        l_feeder=l_feeder,
        b_pickup=b_pickup,
        b_k=b_k,
        b_a=b_a,
        b_kw_per_a=b_kw_per_a,
        b_volts=b_volts,
        p_breaker=p_breaker,
        d_breaker=d_breaker,
    )
