"""The IT loads' response: miners, GPU tanks and direct-to-chip rack rows.

Miners follow their power target along an efficiency curve (J/TH improves
when underclocked); GPU nodes follow a power cap and demand. Chips shed power
to hold their throttle temperature and shut themselves down above their trip
temperature until the coolant has cooled. Chip temperature is the local
coolant plus a thermal resistance times power (a GPU's die settles within a
second of a step, see shared/data/gpu_step_h200.csv, so it is algebraic at a
1 s step). Pure functions of the design, the commands and the coolant.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from thermogate.plc.equipment import GPU_SHARE_OF_NODE_DYNAMIC

from .plantparams import PlantParams


class TankLoads(NamedTuple):
    """Each immersion tank's load after a step (per tank)."""

    power_on: np.ndarray  # the tank's supply is live
    hw_off: np.ndarray  # chips in their own thermal shutdown
    units_on: np.ndarray  # miners / nodes running
    p_unit: np.ndarray  # kW per running unit
    power: np.ndarray  # kW
    throttled: np.ndarray  # units held below their request by temperature
    chip: np.ndarray  # hottest chip, degC


class RowLoads(NamedTuple):
    """Each direct-to-chip rack row's load after a step (per row)."""

    power_on: np.ndarray
    hw_off: np.ndarray
    nodes_on: np.ndarray
    power: np.ndarray  # kW
    throttled: np.ndarray  # nodes whose GPUs are held below their cap
    gpu_temp: np.ndarray  # GPU die, degC


def tank_loads(
    par: PlantParams,
    *,
    power_on: np.ndarray,
    enable: np.ndarray,
    budget: np.ndarray,
    hw_off: np.ndarray,
    fluid_c: np.ndarray,
    demand_inf: float,
    training_demand: float,
    util_override: np.ndarray,
) -> TankLoads:
    """Tanks' loads for their commands (``enable``, ``budget`` kW) and fluid
    temperature; ``util_override`` (NaN: none) replaces the GPU demand."""
    run = power_on & enable & ~hw_off
    # ---- ASIC tanks: per-miner target from the tank budget
    per_unit = budget / par.t_units
    min_kw = par.t_min_kw
    units_on = np.where(per_unit >= min_kw, par.t_units, np.floor(budget / min_kw))
    p_req = np.minimum(np.maximum(per_unit, min_kw), par.t_unit_kw)
    # ---- GPU tanks: the budget caps what the demand would draw
    util = par.t_train_f * (training_demand - demand_inf) + demand_inf
    util = np.where(np.isnan(util_override), util, util_override)
    gpu_node = np.minimum(par.t_idle_kw + par.t_dyn_kw * util, np.maximum(per_unit, par.t_idle_kw))
    p_req = np.where(par.t_asic, p_req, gpu_node)
    units_on = np.where(par.t_asic, units_on, par.t_units)
    # Thermal throttling: chips hold their throttle temperature by shedding power.
    p_thermal = (par.t_throttle - fluid_c) / par.t_r
    p_unit = np.maximum(np.minimum(p_req, p_thermal), par.t_floor_kw)
    chip = fluid_c + par.t_r * p_unit
    # Hardware self-protection: shut down above the chip trip, restart when cool.
    hw_off = (hw_off | (run & (chip >= par.t_chip_trip))) & (fluid_c >= par.t_recover_c)
    units_on = np.where(run & ~hw_off, units_on, 0.0)
    return TankLoads(
        power_on=power_on,
        hw_off=hw_off,
        units_on=units_on,
        p_unit=p_unit,
        power=units_on * p_unit,
        throttled=np.where(p_unit < p_req - 1e-9, units_on, 0.0),
        chip=np.where(units_on > 0, chip, fluid_c),
    )


def row_loads(
    par: PlantParams,
    *,
    power_on: np.ndarray,
    enable: np.ndarray,
    gpu_cap: np.ndarray,
    hw_off: np.ndarray,
    coolant_c: np.ndarray,
    demand_inf: float,
    training_demand: float,
    util_override: np.ndarray,
) -> RowLoads:
    """Rack rows' loads for their commands (``enable``, ``gpu_cap`` W) and their
    CDU's supply temperature ``coolant_c`` (per row)."""
    rrun = power_on & enable & ~hw_off
    rutil = np.where(par.r_train, training_demand, demand_inf)
    rutil = np.where(np.isnan(util_override), rutil, util_override)
    cap = gpu_cap.astype(float)
    idle_w, full_w = par.r_gpu_idle_w, par.r_gpu_full_w
    gpu_w = idle_w + rutil * (np.minimum(cap, full_w) - idle_w)
    # Throttle: a GPU holds its slowdown temperature by lowering power.
    gpu_w_thermal = (par.r_throttle - coolant_c) / par.r_gpu_r
    gpu_w_eff = np.maximum(np.minimum(gpu_w, gpu_w_thermal), idle_w)
    die = coolant_c + par.r_gpu_r * gpu_w_eff
    hw_off = (hw_off | (rrun & (die >= par.r_chip_trip))) & (coolant_c >= par.r_recover_c)
    rrun = rrun & ~hw_off
    gpu_frac = (gpu_w_eff - idle_w) / (full_w - idle_w)
    other = (1.0 - GPU_SHARE_OF_NODE_DYNAMIC) * rutil + GPU_SHARE_OF_NODE_DYNAMIC * gpu_frac
    node_kw = par.r_idle_kw + (par.r_node_kw - par.r_idle_kw) * other
    nodes_on = np.where(rrun, par.r_nodes, 0.0)
    return RowLoads(
        power_on=power_on,
        hw_off=hw_off,
        nodes_on=nodes_on,
        power=nodes_on * node_kw,
        throttled=np.where(rrun & (gpu_w_eff < gpu_w - 1e-9), par.r_nodes, 0.0),
        gpu_temp=np.where(rrun, die, coolant_c),
    )
