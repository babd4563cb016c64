"""The plant's command table: each writable point to the state it sets.

A controller's write (over Modbus or in lockstep) lands in the plant's command
arrays, or in the PLC's heartbeat, reset and UFLS requests. The setters are
closures over one plant's arrays, so a copied plant binds its own table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .plant import Plant


def bind_commands(plant: Plant) -> dict[str, Callable[[float], None]]:
    """Each writable point of ``plant``'s map, by name, to the setter of the state it commands."""
    cmds: dict[str, Callable[[float], None]] = {}

    def arr(
        a: np.ndarray, i: int, conv: Callable[[float], object] = float
    ) -> Callable[[float], None]:
        def set_(v: float) -> None:
            a[i] = conv(v)

        return set_

    ix, name = plant.pmap.index, plant.pmap.name_of
    for i, tp in enumerate(ix.tanks):
        cmds[name(tp.valve_cmd)] = arr(plant.cmd_valve, i)
        cmds[name(tp.power_budget_kw)] = arr(plant.cmd_budget, i)
        cmds[name(tp.enable)] = arr(plant.cmd_enable, i, bool)
    for i, cp in enumerate(ix.cdus):
        cmds[name(cp.valve_cmd)] = arr(plant.cmd_cdu_valve, i)
    for i, rp in enumerate(ix.rows):
        cmds[name(rp.gpu_power_cap_w)] = arr(plant.cmd_gpu_cap, i)
        cmds[name(rp.enable)] = arr(plant.cmd_row_enable, i, bool)
    for i, pp in enumerate(ix.pumps):
        cmds[name(pp.speed_cmd)] = arr(plant.cmd_pump_speed, i)
        cmds[name(pp.run_cmd)] = arr(plant.cmd_pump_run, i, bool)
    for i, dp in enumerate(ix.dry_coolers):
        cmds[name(dp.fan_cmd)] = arr(plant.cmd_fan, i)

    def heartbeat(v: float) -> None:
        plant.heartbeat = int(v)

    def reset(v: float) -> None:
        if v:
            plant.reset_request = True

    def ufls_armed(v: float) -> None:
        plant.ufls_armed = bool(v)

    def ufls_release(v: float) -> None:
        if v:
            plant.ufls_release_request = True

    cmds[name(ix.plc.heartbeat)] = heartbeat
    cmds[name(ix.plc.reset)] = reset
    cmds[name(ix.plc.ufls_armed)] = ufls_armed
    cmds[name(ix.plc.ufls_release)] = ufls_release
    writable = {p.name for p in plant.pmap.writable()}
    missing = writable - cmds.keys()
    if missing:  # the point map and the plant must agree on every command
        raise RuntimeError(f"plant has no actuator for points: {sorted(missing)}")
    return cmds
