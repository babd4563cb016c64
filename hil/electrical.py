"""The electrical side: feeds, breakers, the site meter and the UFLS contactors.

PDUs and feeders sum their loads; breakers trip on IEC inverse-time curves
with a thermal memory; the site meter sees IT, cooling and house loads, so
PUE is real. A tank shed by the PLC's under-frequency relay loses its supply
when its contactors open, a few cycles after the relay trips. Pure functions
of the design and the loads.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from thermogate.plc.logic import PlcLogic
from thermogate.plc.site import Site

from .arrays import fany, fsum
from .plantparams import PlantParams

HOUSE_LOAD_KW = 15.0  # lighting, controls, UPS losses
HOUSE_LOAD_FRACTION = 0.005  # of IT load
BREAKER_COOL_TAU_S = 120.0  # thermal memory of a breaker after an overload
#: a shed tank's contactors open this long after the relay trips (3 cycles at 60 Hz)
CONTACTOR_OPEN_S = 0.05


class Feeds(NamedTuple):
    """Where the power flows (kW)."""

    breaker_kw: np.ndarray  # through each breaker: PDUs first, then feeders
    feeder_kw: np.ndarray  # per feeder, IT and mechanical
    mech_kw: np.ndarray  # pumps and fans per loop


def feeds(
    par: PlantParams,
    t_power: np.ndarray,
    r_power: np.ndarray,
    pump_kw: np.ndarray,
    fan_kw: np.ndarray,
) -> Feeds:
    """Sum the loads up the distribution: PDUs, then feeders."""
    it_pdu = np.bincount(par.t_pdu, weights=t_power, minlength=par.n_pdu) + np.bincount(
        par.r_pdu, weights=r_power, minlength=par.n_pdu
    )
    feeder = np.bincount(par.pdu_feeder, weights=it_pdu, minlength=par.n_f)
    mech = np.bincount(par.p_loop, weights=pump_kw, minlength=par.n_l) + np.bincount(
        par.d_loop, weights=fan_kw, minlength=par.n_l
    )
    feeder += np.bincount(par.l_feeder, weights=mech, minlength=par.n_f)
    return Feeds(np.concatenate([it_pdu, feeder]), feeder, mech)


class Breakers(NamedTuple):
    current_a: np.ndarray
    heat: np.ndarray  # inverse-time integral, trips at 1
    tripping: np.ndarray | None  # closed breakers that trip now; None: none overloaded


def breakers(
    par: PlantParams, power_kw: np.ndarray, heat: np.ndarray, closed: np.ndarray, dt: float
) -> Breakers:
    """Each breaker's current and thermal integral ``dt`` seconds on, and which trip."""
    current = power_kw / par.b_kw_per_a
    ratio = current / par.b_pickup
    over = ratio > 1.0
    cooled = heat * math.exp(-dt / BREAKER_COOL_TAU_S)
    if not fany(over):
        return Breakers(current, cooled, None)
    t_trip = par.b_k / (np.where(over, ratio, 2.0) ** par.b_a - 1.0)
    heat = np.where(over, heat + dt / t_trip, cooled)
    return Breakers(current, heat, closed & (heat >= 1.0))


def breaker_name(site: Site, par: PlantParams, i: int) -> str:
    """Breaker ``i``'s name (PDUs first, then feeders)."""
    return site.pdus[i].name if i < par.n_pdu else site.feeders[i - par.n_pdu].name


class Meter(NamedTuple):
    it_kw: float
    cooling_kw: float
    site_kw: float
    voltage_v: float
    current_a: float


def site_meter(site: Site, t_power: np.ndarray, r_power: np.ndarray, f: Feeds) -> Meter:
    """What the site meter reads: feeders plus house load, and the voltage it sags to."""
    it_kw = float(fsum(t_power) + fsum(r_power))
    house = HOUSE_LOAD_KW + HOUSE_LOAD_FRACTION * it_kw
    site_kw = float(fsum(f.feeder_kw)) + house
    v = site.meter_voltage_v * (1.0 - 0.01 * site_kw / site.import_limit_kw)
    return Meter(
        it_kw=it_kw,
        cooling_kw=float(fsum(f.mech_kw)),
        site_kw=site_kw,
        voltage_v=v,
        current_a=site_kw * 1000.0 / (math.sqrt(3.0) * v * 0.97),
    )


def contactors_open(plc: PlcLogic, t: float, n_t: int) -> np.ndarray:
    """Tanks the under-frequency relay has shed, once their contactors opened."""
    trip_t = plc.relay.state.trip_t
    if trip_t is None or t - trip_t < CONTACTOR_OPEN_S - 1e-9:
        return np.zeros(n_t, dtype=bool)
    return plc.tank_shed()
