"""Sensors of the simulated plant: truth → what a PLC register would show.

Every point of the map is bound once to a piece of plant state. A sample is
truth + noise, quantised to the point's resolution, with injectable faults:

``stuck``    the reading freezes at its value when the fault starts
``drift``    the reading walks away from truth at ``rate_per_h`` units/hour
``spike``    random single-sample spikes of ``magnitude`` (probability ``p``)
``dropout``  the signal is intermittently lost (probability ``p``): NaN
``nan``      the reading is NaN (an f32 carries it; integer registers carry
             the type's sentinel, e.g. 0x8000 for i16, see ``hil.image``)

The PLC's own logic reads the same physical sensors (``plc_view``), faults
included: a stuck over-temperature sensor hides a hot tank from the PLC too,
which is why the controller votes redundant sensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from thermogate.plc.pointtable import GroupPoints

if TYPE_CHECKING:
    from .plant import Plant

SENSOR_FAULT_KINDS = ("stuck", "drift", "spike", "dropout", "nan")

#: Noise (1 sigma) by engineering unit: absolute, or relative when ``rel``.
NOISE = {
    "degC": (0.05, False),
    "m3/h": (0.005, True),
    "l/s": (0.005, True),
    "kPa": (0.005, True),
    "kW": (0.003, True),
    "A": (0.003, True),
    "V": (0.001, True),
    "TH/s": (0.01, True),
}


@dataclass
class SensorFault:
    kind: str
    start_t: float
    params: dict[str, float] = field(default_factory=dict)
    frozen: float = math.nan


class SensorModel:
    """Binds points to plant state and produces measured samples."""

    def __init__(self, plant: Plant, seed: int = 1, enabled: bool = True) -> None:
        self.plant = plant
        self.rng = np.random.default_rng(seed)
        # The PLC's view draws its own random faults so sample() stays reproducible.
        self._plc_rng = np.random.default_rng(seed + 1_000_003)
        self.enabled = enabled
        pts = plant.pmap.points
        self.n = len(pts)
        self.index = {p.name: i for i, p in enumerate(pts)}
        self.groups: list[tuple[np.ndarray, Callable[[], np.ndarray]]] = []
        sigma = np.zeros(self.n)
        rel = np.zeros(self.n, dtype=bool)
        quant = np.zeros(self.n)
        for i, p in enumerate(pts):
            s, r = NOISE.get(p.unit, (0.0, False))
            if p.access == "rw" or p.is_bit:
                s = 0.0  # commands and states read back exactly
            sigma[i], rel[i] = s, r
            quant[i] = p.scale if p.type != "f32" else 0.0
        self.sigma, self.rel, self.quant = sigma, rel, quant
        self._quantised = np.flatnonzero(quant > 0)  # points with an integer register
        self._quant = quant[self._quantised]
        self.faults: dict[int, SensorFault] = {}
        self._truth = np.zeros(self.n)
        #: every group's positions, concatenated in group order (set by ``bind``)
        self._bound = np.zeros(0, dtype=np.intp)

    # ------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every point to plant state; a point left unbound is a bug."""
        pl = self.plant
        site = pl.site
        g = self._group
        ix = pl.pmap.index
        tanks = ix.tanks
        g(tanks, "fluid_temp", lambda: pl.T_tank)
        g(tanks, "fluid_temp_b", lambda: pl.T_tank)
        g(tanks, "return_temp", lambda: pl.t_return)
        g(tanks, "water_out_temp", lambda: pl.t_water_out)
        g(tanks, "chip_temp_max", lambda: pl.t_chip)
        dflow = np.array([t.dielectric_flow_l_s for t in site.tanks])
        g(tanks, "dielectric_flow", lambda: np.where(pl.t_power_on, dflow, 0.0))
        g(tanks, "water_flow", lambda: pl.t_flow)
        g(tanks, "level", lambda: 85.0 + 0.07 * (pl.T_tank - 40.0))
        g(tanks, "power_kw", lambda: pl.t_power)
        g(tanks, "units_online", lambda: pl.t_units_on)
        g(tanks, "units_throttled", lambda: pl.t_throttled)
        asic = np.flatnonzero(pl.params.t_asic)
        g([tanks[i] for i in asic], "hashrate_ths", lambda: pl.t_hash[asic])
        g(tanks, "valve_cmd", lambda: pl.cmd_valve)
        g(tanks, "valve_pos", lambda: pl.valve_pos)
        g(tanks, "power_budget_kw", lambda: pl.cmd_budget)
        g(tanks, "enable", lambda: pl.cmd_enable)
        g(tanks, "leak", lambda: pl.tank_leak)
        g(tanks, "interlock", lambda: pl.plc.tank_tripped())
        g(tanks, "power_on", lambda: pl.t_power_on)

        cdus = ix.cdus
        g(cdus, "supply_temp", lambda: pl.c_supply)
        g(cdus, "return_temp", lambda: pl.T_tcs)
        g(cdus, "water_out_temp", lambda: pl.c_water_out)
        ctcs = np.array([c.tcs_flow_l_s for c in site.cdus])
        g(cdus, "tcs_flow", lambda: ctcs)
        g(cdus, "valve_cmd", lambda: pl.cmd_cdu_valve)
        g(cdus, "valve_pos", lambda: pl.cdu_valve_pos)
        g(cdus, "leak", lambda: pl.cdu_leak)
        g(cdus, "fault", lambda: pl.plc.cdu_latched)

        rows = ix.rows
        g(rows, "power_kw", lambda: pl.r_power)
        g(rows, "gpu_temp_max", lambda: pl.r_gpu_temp)
        g(rows, "nodes_online", lambda: pl.r_nodes_on)
        g(rows, "nodes_throttled", lambda: pl.r_throttled)
        g(rows, "gpu_power_cap_w", lambda: pl.cmd_gpu_cap)
        g(rows, "enable", lambda: pl.cmd_row_enable)
        g(rows, "interlock", lambda: pl.plc.row_tripped())
        g(rows, "power_on", lambda: pl.r_power_on)

        loops = ix.loops
        g(loops, "supply_temp", lambda: pl.T_cold)
        g(loops, "return_temp", lambda: pl.T_hot)
        g(loops, "flow", lambda: pl.flow)
        g(loops, "dp", lambda: pl.dp)
        g(loops, "leak", lambda: pl.loop_leak)
        g(loops, "low_flow", lambda: pl.plc.loop_low_flow)

        pumps = ix.pumps
        g(pumps, "speed_cmd", lambda: pl.cmd_pump_speed)
        g(pumps, "run_cmd", lambda: pl.cmd_pump_run)
        g(pumps, "speed", lambda: pl.pump_speed * 100.0)
        g(pumps, "power_kw", lambda: pl.pump_kw)
        g(pumps, "running", lambda: pl.pump_speed > 0.02)
        g(pumps, "fault", lambda: pl.pump_fault)

        dcs = ix.dry_coolers
        g(dcs, "fan_cmd", lambda: pl.cmd_fan)
        g(dcs, "fan_speed", lambda: pl.fan_speed * 100.0)
        g(dcs, "power_kw", lambda: pl.fan_kw)
        g(dcs, "outlet_temp", lambda: pl.dc_out)
        g(
            dcs,
            "fans_running",
            lambda: np.where(pl.fan_speed > 0.02, pl.params.d_fans - pl.fans_failed, 0),
        )
        g(dcs, "fault", lambda: pl.fan_fault)

        def branches(names: Sequence[GroupPoints], sl: slice) -> None:
            g(names, "power_kw", lambda: pl.b_power[sl])
            g(names, "current_a", lambda: pl.b_current[sl])
            g(
                names,
                "voltage_v",
                lambda: (
                    pl.params.b_volts[sl] * (1 - 0.02 * pl.b_current[sl] / pl.params.b_pickup[sl])
                ),
            )
            g(names, "energy_kwh", lambda: np.floor(pl.b_energy[sl]))
            g(names, "breaker_closed", lambda: pl.b_closed[sl])
            g(names, "breaker_tripped", lambda: ~pl.b_closed[sl])

        n_pdu = pl.params.n_pdu
        pdus, feeders = ix.pdus, ix.feeders
        for names, sl in ((pdus, slice(0, n_pdu)), (feeders, slice(n_pdu, None))):
            branches(names, sl)

        one = (ix.site,)
        g(one, "power_kw", lambda: np.array([pl.site_kw]))
        g(one, "current_a", lambda: np.array([pl.site_current]))
        g(one, "voltage_v", lambda: np.array([pl.site_voltage]))
        g(one, "energy_kwh", lambda: np.array([math.floor(pl.site_kwh)]))
        g(one, "frequency_hz", lambda: np.array([pl.site_freq]))
        g(one, "power_factor", lambda: np.array([0.97]))
        plc = (ix.plc,)
        g(plc, "ambient_temp", lambda: np.array([pl.ambient]))
        g(plc, "ambient_rh", lambda: np.array([pl.rh]))
        g(plc, "heartbeat", lambda: np.array([pl.heartbeat]))
        g(plc, "heartbeat_timeout_s", lambda: np.array([pl.heartbeat_timeout_s]))
        g(plc, "status", lambda: np.array([pl.plc_status_word()]))
        # saturates one count below 0xFFFF, the u16 failure sentinel
        g(plc, "heartbeat_age_s", lambda: np.array([min(pl.plc.heartbeat_age_s, 6553.4)]))
        g(plc, "reset", lambda: np.array([0.0]))
        g(plc, "safe_state", lambda: np.array([pl.plc.safe_state]))
        g(plc, "ufls_armed", lambda: np.array([pl.ufls_armed]))
        g(plc, "ufls_release", lambda: np.array([0.0]))
        g(plc, "ufls_tripped", lambda: np.array([pl.plc.relay.state.tripped]))
        g(plc, "ufls_recovered", lambda: np.array([pl.plc.ufls_recovered()]))

        bound = np.zeros(self.n, dtype=bool)
        for idx, _ in self.groups:
            bound[idx] = True
        if not bound.all():
            missing = [self.plant.pmap.points[i].name for i in np.flatnonzero(~bound)][:5]
            raise RuntimeError(f"points with no plant signal: {missing}")
        self._bound = np.concatenate([idx for idx, _ in self.groups])
        if len(self._bound) != self.n:  # truth() writes each point once, in one go
            raise RuntimeError("a point is bound to more than one plant signal")
        self._i_tank_a = self._idx(tanks, "fluid_temp")
        self._i_tank_b = self._idx(tanks, "fluid_temp_b")
        self._i_loop_flow = self._idx(loops, "flow")
        self._i_cdu_supply = self._idx(cdus, "supply_temp")

    @staticmethod
    def _idx(groups: Sequence[GroupPoints], attr: str) -> np.ndarray:
        """Positions of point ``attr`` of every piece of equipment in ``groups``."""
        return np.array([getattr(gp, attr) for gp in groups], dtype=int)

    def _group(
        self, groups: Sequence[GroupPoints], attr: str, getter: Callable[[], np.ndarray]
    ) -> None:
        if groups:
            self.groups.append((self._idx(groups, attr), getter))

    # ------------------------------------------------------------------
    def truth(self) -> np.ndarray:
        out = self._truth
        if self.groups:  # one scatter of every group's values (bools and counts become floats)
            out[self._bound] = np.concatenate([get() for _, get in self.groups], dtype=float)
        return out

    def truth_of(self, name: str) -> float:
        return float(self.truth()[self.index[name]])

    def sample(self) -> np.ndarray:
        """Measured values of every point, aligned with ``pmap.points``."""
        v = self.truth().copy()
        if self.enabled:
            noise = self.rng.standard_normal(self.n) * self.sigma
            v += np.where(self.rel, noise * np.abs(v), noise)
            nz, q = self._quantised, self._quant
            v[nz] = np.round(v[nz] / q) * q
        for i, f in self.faults.items():
            v[i] = self._apply(f, v[i])
        return v

    def measure_one(self, i: int, value: float) -> float:
        """What point ``i`` reads when its true value is ``value``: noise,
        quantisation and its fault as in :meth:`sample` (a fast path for one point)."""
        v = float(value)
        if self.enabled:
            noise = float(self.rng.standard_normal()) * float(self.sigma[i])
            v += noise * abs(v) if self.rel[i] else noise
            q = float(self.quant[i])
            if q > 0:
                v = round(v / q) * q
        f = self.faults.get(i)
        return v if f is None else self._apply(f, v)

    def plc_view(self) -> dict[str, np.ndarray]:
        """The few signals the PLC's interlocks read, faults applied (no noise)."""
        pl = self.plant
        if not self.faults:  # the PLC only reads these; no copies needed
            return {
                "tank_a": pl.T_tank,
                "tank_b": pl.T_tank,
                "loop_flow": pl.flow,
                "cdu_supply": pl.c_supply,
            }
        out = {
            "tank_a": pl.T_tank.copy(),
            "tank_b": pl.T_tank.copy(),
            "loop_flow": pl.flow.copy(),
            "cdu_supply": pl.c_supply.copy(),
        }
        if self.faults:
            for key, idx in (
                ("tank_a", self._i_tank_a),
                ("tank_b", self._i_tank_b),
                ("loop_flow", self._i_loop_flow),
                ("cdu_supply", self._i_cdu_supply),
            ):
                for j, i in enumerate(idx):
                    f = self.faults.get(int(i))
                    if f is not None:
                        out[key][j] = self._apply(f, out[key][j], peek=True)
        return out

    # ------------------------------------------------------------------
    def inject(self, name: str, kind: str, params: dict[str, float] | None = None) -> None:
        if name not in self.index:
            raise KeyError(f"no point named '{name}' on this site")
        if kind not in SENSOR_FAULT_KINDS:
            raise KeyError(
                f"unknown sensor fault '{kind}' (one of {', '.join(SENSOR_FAULT_KINDS)})"
            )
        i = self.index[name]
        f = SensorFault(kind, self.plant.t, dict(params or {}))
        if kind == "stuck":
            f.frozen = float(self.truth()[i])
        self.faults[i] = f

    def clear(self, name: str) -> None:
        self.faults.pop(self.index[name], None)

    def _apply(self, f: SensorFault, value: float, peek: bool = False) -> float:
        k = f.kind
        if k == "stuck":
            return f.frozen
        if k == "drift":
            return value + f.params.get("rate_per_h", 2.0) * (self.plant.t - f.start_t) / 3600.0
        if k == "nan":
            return math.nan
        rng = self._plc_rng if peek else self.rng
        if k == "spike":
            if rng.random() < f.params.get("p", 0.02):
                return value + f.params.get("magnitude", 25.0)
            return value
        if k == "dropout":
            return math.nan if rng.random() < f.params.get("p", 0.3) else value
        return value
