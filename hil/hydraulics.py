"""Hydraulics of the plant's water loops: valve conductances, pumps, flows.

Branch flows follow valve conductances (equal-percentage trim) at the loop's
differential pressure; parallel pumps follow a quadratic curve scaled by
affinity laws (flow ~ speed, head ~ speed^2, power ~ speed^3); the operating
point is solved in closed form, or by bisection when running pumps turn at
different speeds. Pure functions of the design and the actuator positions.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .plantparams import PlantParams

PUMP_EFFICIENCY = 0.70  # wire-to-water, constant so affinity laws hold exactly
VALVE_RANGEABILITY = 30.0  # equal-percentage trim R


class Flows(NamedTuple):
    """The loops' operating point."""

    dp: np.ndarray  # kPa across each loop's branches
    flow: np.ndarray  # m3/h per loop
    t_flow: np.ndarray  # m3/h through each tank's HX
    c_flow: np.ndarray  # m3/h through each CDU's HX
    pump_kw: np.ndarray  # electrical power per pump


def solve_flows(
    par: PlantParams,
    valve_pos: np.ndarray,
    cdu_valve_pos: np.ndarray,
    pump_speed: np.ndarray,
    pump_head_frac: np.ndarray,
) -> Flows:
    """Flows, ΔP and pump power for valve positions (%), pump speeds (0..1) and
    each pump's remaining head (1 = as new)."""
    # Equal-percentage valves: Kv = Kvs * R^(x-1), closed at 0.
    x_t = valve_pos / 100.0
    kv_t = np.where(x_t > 0.005, par.t_kv * VALVE_RANGEABILITY ** (x_t - 1.0), 0.0)
    x_c = cdu_valve_pos / 100.0
    kv_c = np.where(x_c > 0.005, par.c_kv * VALVE_RANGEABILITY ** (x_c - 1.0), 0.0)
    k = (
        np.bincount(par.t_loop, weights=kv_t, minlength=par.n_l)
        + np.bincount(par.c_loop, weights=kv_c, minlength=par.n_l)
        + par.l_k_bypass
    )
    on = pump_speed > 0.02
    n = np.bincount(par.p_loop, weights=on, minlength=par.n_l)
    # a worn pump's head falls as speed squared would: its speed counts as sqrt(head) less
    s_eff = np.where(on, pump_speed * np.sqrt(pump_head_frac), 0.0)
    s_sum = np.bincount(par.p_loop, weights=s_eff, minlength=par.n_l)
    s = np.divide(s_sum, n, out=np.zeros(par.n_l), where=n > 0)
    n_safe = np.maximum(n, 1.0)
    dp = par.l_hmax * s**2 / (1.0 + par.l_r_main * k**2 + par.l_a * k**2 / n_safe**2)
    dp = np.where(n > 0, dp, 0.0)
    # Running pumps at one speed (the common case) share the flow equally: the
    # closed form above. At different speeds (a standby spinning up beside the
    # duty pump) each delivers what its curve gives at the common head, and one
    # whose shut-off head is below it delivers nothing (its check valve shuts);
    # the mean speed above once let a standby at 5 % drag a duty pump at 100 %
    # down to half its head.
    s_sq = np.bincount(par.p_loop, weights=s_eff**2, minlength=par.n_l)
    uneven = (n > 1) & (s_sq * n - s_sum**2 > 1e-9)
    q_pump = None
    if uneven.any():
        dp, q_pump = uneven_pumps(par, k, dp, s_eff, uneven)
    sq = np.sqrt(dp)
    flow = k * sq
    t_flow = kv_t * sq[par.t_loop]
    c_flow = kv_c * sq[par.c_loop]
    head = dp + par.l_r_main * flow**2
    hyd_kw = flow / 3600.0 * head  # m3/s * kPa = kW
    share = np.where(on, 1.0 / n_safe[par.p_loop], 0.0)
    if q_pump is not None:  # each pump's share of the flow at the common head
        total = np.bincount(par.p_loop, weights=q_pump, minlength=par.n_l)
        mine = np.divide(q_pump, total[par.p_loop], out=np.zeros_like(q_pump),
                         where=total[par.p_loop] > 0)  # fmt: skip
        share = np.where(uneven[par.p_loop], mine, share)
    pump_kw = hyd_kw[par.p_loop] * share / PUMP_EFFICIENCY
    return Flows(dp, flow, t_flow, c_flow, pump_kw)


def uneven_pumps(
    par: PlantParams, k: np.ndarray, dp: np.ndarray, s_eff: np.ndarray, uneven: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ΔP of the loops marked ``uneven`` whose running pumps turn at different
    speeds, and every pump's flow at its loop's head (m3/h).

    Pump i gives H = hmax s_i^2 - a Q_i^2; the loop takes Q = c sqrt(H) with
    c = k / sqrt(1 + r_main k^2). The head where the pumps' flows add up to
    the loop's is found by bisection (the pumps' sum falls with H, the
    loop's rises): 50 halvings of the shut-off head."""
    lp = par.p_loop
    shut = par.l_hmax[lp] * s_eff**2  # each pump's shut-off head
    a = np.maximum(par.l_a[lp], 1e-12)
    c = k / np.sqrt(1.0 + par.l_r_main * k**2)
    lo = np.zeros(par.n_l)
    hi = np.zeros(par.n_l)
    np.maximum.at(hi, lp, shut)
    for _ in range(50):
        h = 0.5 * (lo + hi)
        q = np.sqrt(np.maximum(shut - h[lp], 0.0) / a)
        over = np.bincount(lp, weights=q, minlength=par.n_l) > c * np.sqrt(h)
        lo = np.where(over, h, lo)
        hi = np.where(over, hi, h)
    h = 0.5 * (lo + hi)
    q_pump = np.where(uneven[lp], np.sqrt(np.maximum(shut - h[lp], 0.0) / a), 0.0)
    dp = np.where(uneven, h / (1.0 + par.l_r_main * k**2), dp)
    return dp, q_pump
