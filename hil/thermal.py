"""Heat exchange and the thermal lumps' energy balance.

Each immersion tank is one well-mixed fluid mass (volume x density x cp)
heated by its IT load and cooled through a counter-flow plate HX whose
effectiveness follows from both flows (epsilon-NTU). The HX water side is
throttled by the tank's valve. Each water loop is two lumps (hot header after
the HXs, cold header after the dry coolers) so heat takes time to travel. Dry
coolers are epsilon-NTU coils whose air-side capacity and UA follow fan speed
(UA ~ airflow^0.6, natural draft ~10 %). CDUs are a secondary coolant lump
with their own HX. HX fouling drifts over days. Pure functions: the same
fluxes update the temperatures and the energy ledger.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .arrays import fsum
from .plantparams import PlantParams

DC_NATURAL_DRAFT = 0.10  # fraction of design airflow with fans stopped
FOULING_MAX = 0.15  # UA loss when fully fouled


def counterflow_eff(ntu: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Counter-flow effectiveness, stable at Cr -> 1 and NTU -> 0."""
    one_minus = 1.0 - cr
    balanced = np.abs(one_minus) < 1e-6
    e = np.exp(-ntu * one_minus)
    den = 1.0 - cr * e
    # den > 0 whenever Cr < 1 or NTU > 0; the balanced case takes its own limit.
    eff = (1.0 - e) / np.where(balanced | (den <= 0.0), 1.0, den)
    return np.where(balanced, ntu / (1.0 + ntu), eff)


def hx(ua: np.ndarray, c_hot: np.ndarray, c_cold: np.ndarray, dt_in: np.ndarray) -> np.ndarray:
    """Heat (kW) through a counter-flow HX given capacity rates (kW/K)."""
    cmin = np.minimum(c_hot, c_cold)
    cmax = np.maximum(c_hot, c_cold)
    flowing = cmin > 1e-9
    cmin_safe = np.where(flowing, cmin, 1.0)
    cr = cmin_safe / np.where(flowing, cmax, 1.0)
    eff = counterflow_eff(ua / cmin_safe, cr)
    return np.where(flowing, eff * cmin * dt_in, 0.0)


def fouled_ua(ua_clean: np.ndarray, t: float, tau_s: np.ndarray) -> np.ndarray:
    """An HX's UA at ``t`` (s) as fouling (time constant ``tau_s``) drifts it down."""
    return ua_clean * (1.0 - FOULING_MAX * (1.0 - np.exp(-t / tau_s)))


def water_out(t_in: np.ndarray, q_kw: np.ndarray, cw: np.ndarray, still: np.ndarray) -> np.ndarray:
    """An HX water side's outlet: its inlet plus its heat over its capacity rate
    (kW/K); ``still`` where no water flows."""
    ok = cw > 1e-9
    return np.where(ok, t_in + q_kw / np.where(ok, cw, 1.0), still)


class Thermal(NamedTuple):
    """The fluid masses after a step and the fluxes that moved them."""

    T_tank: np.ndarray  # degC per tank
    T_tcs: np.ndarray  # degC per CDU secondary loop
    T_hot: np.ndarray  # degC per loop hot header
    T_cold: np.ndarray  # degC per loop cold header
    q_tank: np.ndarray  # kW through each tank's HX
    q_cdu: np.ndarray  # kW through each CDU's HX
    q_dc: np.ndarray  # kW rejected by each dry cooler
    cw_t: np.ndarray  # water-side capacity rates (kW/K), kept for outlet temperatures
    cw_c: np.ndarray
    cw_d: np.ndarray
    fan_kw: np.ndarray  # per dry cooler
    c_supply: np.ndarray  # CDU supply to the GPUs, degC
    heat_in_kw: float  # IT load, test heat and pump heat into the fluids
    heat_rejected_kw: float  # dry coolers to the air


def thermal_step(
    par: PlantParams,
    dt: float,
    *,
    T_tank: np.ndarray,
    T_tcs: np.ndarray,
    T_hot: np.ndarray,
    T_cold: np.ndarray,
    ambient_c: float,
    ua_t: np.ndarray,
    ua_c: np.ndarray,
    t_flow: np.ndarray,
    c_flow: np.ndarray,
    loop_flow: np.ndarray,
    fan_speed: np.ndarray,
    fans_failed: np.ndarray,
    pump_kw: np.ndarray,
    t_power: np.ndarray,
    r_power: np.ndarray,
    t_heat_extra_kw: np.ndarray,
    c_heat_extra_kw: np.ndarray,
) -> Thermal:
    """Every HX's heat and the fluid masses ``dt`` seconds on (explicit Euler)."""
    cw_t = t_flow * par.t_cw_per_m3h
    cw_c = c_flow * par.c_cw_per_m3h
    # dry coolers: water shared evenly, air side follows the fans
    c_loop = loop_flow * par.l_cw_per_m3h  # kW/K per loop
    cw_d = c_loop[par.d_loop] * par.d_share
    active = (par.d_fans - fans_failed) / par.d_fans
    air = np.maximum(fan_speed * active, DC_NATURAL_DRAFT)
    # One vectorised epsilon-NTU evaluation for every HX of the site.
    q = hx(
        np.concatenate((ua_t, ua_c, par.d_ua_design * air**0.6)),
        np.concatenate((par.t_cd, par.c_ctcs, cw_d)),
        np.concatenate((cw_t, cw_c, par.d_cair_design * air)),
        np.concatenate(
            (
                T_tank - T_cold[par.t_loop],
                T_tcs - T_cold[par.c_loop],
                T_hot[par.d_loop] - ambient_c,
            )
        ),
    )
    n_t, n_c = par.n_t, par.n_c
    q_tank, q_cdu, q_dc = q[:n_t], q[n_t : n_t + n_c], q[n_t + n_c :]
    fan_kw = par.d_fans * active * par.d_fan_kw * fan_speed**3

    q_branch = np.bincount(par.t_loop, weights=q_tank, minlength=par.n_l) + np.bincount(
        par.c_loop, weights=q_cdu, minlength=par.n_l
    )
    q_rej = np.bincount(par.d_loop, weights=q_dc, minlength=par.n_l)
    q_pump = np.bincount(par.p_loop, weights=pump_kw, minlength=par.n_l)
    # row heat goes to its CDU's coolant
    # weighted: float sums (numpy's stubs type every bincount as integer counts)
    q_rows: np.ndarray = np.bincount(par.r_cdu, weights=r_power, minlength=par.n_c)
    q_rows = q_rows + c_heat_extra_kw
    q_tanks = t_power + t_heat_extra_kw

    T_tank = T_tank + dt * (q_tanks - q_tank) / par.t_cap
    T_tcs = T_tcs + dt * (q_rows - q_cdu) / par.c_cap
    mix = c_loop * (T_cold - T_hot)
    T_hot, T_cold = (
        T_hot + dt * (mix + q_branch) / par.l_half_cap,
        T_cold + dt * (-mix - q_rej + q_pump) / par.l_half_cap,
    )
    return Thermal(
        T_tank=T_tank,
        T_tcs=T_tcs,
        T_hot=T_hot,
        T_cold=T_cold,
        q_tank=q_tank,
        q_cdu=q_cdu,
        q_dc=q_dc,
        cw_t=cw_t,
        cw_c=cw_c,
        cw_d=cw_d,
        fan_kw=fan_kw,
        c_supply=T_tcs - q_cdu / par.c_ctcs,  # the GPUs' coolant
        heat_in_kw=float(fsum(q_rows) + fsum(q_tanks) + fsum(q_pump)),
        heat_rejected_kw=float(fsum(q_rej)),
    )
