"""The equipment of a site: immutable records the site description is loaded into.

The plant, the PLC logic, the point map and the controller all read these;
none of them mutates one. Loading and validating a site file is ``site.py``'s
job; deriving points from the records is ``pointmap.py``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .ufls import RelayConfig

#: Power factor assumed when converting a breaker's amps to kW.
DEFAULT_POWER_FACTOR = 0.95
#: Continuous load allowed on a breaker, % of rating (NEC/IEC practice).
DEFAULT_CONTINUOUS_PCT = 80.0


#: the lowest per-GPU power cap as a share of full power (200 W of an H200's 700)
GPU_CAP_MIN_FRAC = 2.0 / 7.0
#: the GPUs' share of a node's power above idle (the rest: CPUs, memory, fans)
GPU_SHARE_OF_NODE_DYNAMIC = 0.7


@dataclass(frozen=True)
class Breaker:
    """An inverse-time overcurrent breaker.

    Trip time for a current ``I`` above pickup ``Is = pickup_pct% * rating``
    follows IEC 60255 curves: ``t = tms * k / ((I/Is)**a - 1)``.
    """

    rating_a: float
    curve: str = "iec-ei"
    pickup_pct: float = 105.0
    tms: float = 1.0
    continuous_pct: float = DEFAULT_CONTINUOUS_PCT

    CURVES = {  # noqa: RUF012 - class constant: (k, a) per IEC 60255-151
        "iec-si": (0.14, 0.02),
        "iec-vi": (13.5, 1.0),
        "iec-ei": (80.0, 2.0),
    }

    def trip_time_s(self, current_a: float) -> float:
        """Seconds to trip at a constant ``current_a``; ``inf`` below pickup."""
        pickup = self.rating_a * self.pickup_pct / 100.0
        if not current_a > pickup:
            return math.inf
        k, a = self.CURVES[self.curve]
        return self.tms * k / ((current_a / pickup) ** a - 1.0)


class _BreakerRated:
    """kW ratings of a three-phase circuit from its breaker's amps."""

    voltage_v: float
    breaker: Breaker
    power_factor: float

    @property
    def rating_kw(self) -> float:
        return _three_phase_kw(self.voltage_v, self.breaker.rating_a, self.power_factor)

    @property
    def continuous_kw(self) -> float:
        return self.rating_kw * self.breaker.continuous_pct / 100.0


@dataclass(frozen=True)
class Feeder(_BreakerRated):
    name: str
    voltage_v: float
    breaker: Breaker
    unit_id: int
    power_factor: float = DEFAULT_POWER_FACTOR


@dataclass(frozen=True)
class Pdu(_BreakerRated):
    name: str
    feeder: str
    voltage_v: float
    breaker: Breaker
    unit_id: int
    power_factor: float = DEFAULT_POWER_FACTOR


@dataclass(frozen=True)
class Pump:
    """A variable-speed pump on a VFD; affinity laws scale from rated values."""

    name: str  # full dotted name: loop.pump
    loop: str
    rated_flow_m3h: float
    rated_head_kpa: float
    rated_power_kw: float
    min_speed_pct: float
    unit_id: int


@dataclass(frozen=True)
class DryCooler:
    """An adiabatic-free dry cooler; duty rated at a design approach."""

    name: str
    loop: str
    capacity_kw: float
    design_approach_k: float
    design_ambient_c: float
    fans: int
    fan_power_kw: float  # per fan at 100 % speed
    unit_id: int


@dataclass(frozen=True)
class Loop:
    """A water/glycol loop from the heat exchangers to the dry coolers."""

    name: str
    volume_l: float
    glycol_pct: float
    supply_setpoint_c: float
    supply_alarm_c: float
    min_flow_m3h: float
    low_flow_trip_s: float
    feeder: str  # where the pumps' and fans' power comes from
    pumps: tuple[Pump, ...]
    dry_coolers: tuple[DryCooler, ...]
    #: the PLC its skid instruments (temperatures, flow, dp, leak) are wired to:
    #: ``[plc] unit_id`` unless the file names a PLC carrying tanks or rows
    unit_id: int

    @property
    def density_kg_l(self) -> float:
        return 1.0 + 0.0013 * self.glycol_pct  # ~1.04 at 30 % propylene glycol

    @property
    def cp_kj_kgk(self) -> float:
        return 4.18 - 0.0113 * self.glycol_pct  # ~3.84 at 30 % propylene glycol


@dataclass(frozen=True)
class TankLimits:
    fluid_setpoint_c: float
    fluid_alarm_c: float
    fluid_trip_c: float
    chip_throttle_c: float
    chip_trip_c: float
    rate_alarm_c_per_min: float


@dataclass(frozen=True)
class Tank:
    """A single-phase immersion tank with its own plate HX to a loop."""

    name: str
    workload: str  # "asic" (miners) or "gpu" (GPU servers)
    volume_l: float
    fluid_density_kg_l: float
    fluid_cp_kj_kgk: float
    units: int  # miners or 8-GPU nodes
    unit_power_kw: float  # nameplate per unit at 100 % budget
    unit_idle_kw: float
    chip_r_k_per_kw: float  # chip-to-fluid thermal resistance per unit
    hx_ua_kw_k: float  # design UA of the tank's plate HX
    dielectric_flow_l_s: float  # tank-side pump through the HX
    design_water_flow_m3h: float  # water side at 100 % valve
    loop: str
    pdu: str
    unit_id: int
    limits: TankLimits
    workload_class: str  # mining | inference | training
    #: ASIC tanks: the miners' efficiency at nameplate power (J/TH); underclocked
    #: (lower voltage) a miner hashes ``(P / P_nameplate) ** miner_hash_exponent``
    #: of its nameplate hashrate, down to ``miner_min_power_pct`` of its power,
    #: below which it cannot hash (a tank then runs fewer miners at that minimum)
    miner_j_per_th: float = 16.5
    miner_hash_exponent: float = 0.65
    miner_min_power_pct: float = 30.0
    #: GPU tanks: GPUs per node and their power draw idle and at full load (W)
    gpus_per_unit: int = 0
    gpu_idle_w: float = 120.0
    gpu_full_w: float = 700.0

    @property
    def rated_kw(self) -> float:
        return self.units * self.unit_power_kw

    @property
    def gpus(self) -> int:
        """GPUs installed (0 for a mining tank)."""
        return self.units * self.gpus_per_unit

    @property
    def rated_th_s(self) -> float:
        """Hashrate at nameplate power (TH/s; 0 for a GPU tank)."""
        if self.workload != "asic":
            return 0.0
        return self.rated_kw * 1000.0 / self.miner_j_per_th

    @property
    def miner_min_kw(self) -> float:
        """The least the tank's miners draw and still hash: every one at its minimum."""
        return self.miner_min_power_pct / 100.0 * self.rated_kw

    @property
    def miner_best_j_per_th(self) -> float:
        """The miners' efficiency at their minimum power, their most efficient."""
        f_min = self.miner_min_power_pct / 100.0
        return self.miner_j_per_th * f_min ** (1.0 - self.miner_hash_exponent)

    def hashrate_at(self, kw: float) -> float:
        """TH/s of this tank drawing ``kw`` (the miner curve above; 0 for GPUs)."""
        if self.workload != "asic" or kw <= 0:
            return 0.0
        kw = min(kw, self.rated_kw)
        f_min = self.miner_min_power_pct / 100.0
        th_unit = self.unit_power_kw * 1000.0 / self.miner_j_per_th
        if kw >= f_min * self.rated_kw:  # every miner on, underclocked alike
            return self.units * th_unit * (kw / self.rated_kw) ** self.miner_hash_exponent
        # fewer miners, each at its minimum (whole miners: ``floor``)
        on = math.floor(kw / (f_min * self.unit_power_kw) + 1e-9)
        return on * th_unit * f_min**self.miner_hash_exponent

    def economic_power_kw(self, usd_per_th_day: float, price_per_mwh: float) -> float:
        """The power at which this tank's mining margin is largest at an energy price.

        Revenue is concave in power (underclocked miners are more efficient), so
        the best power is where one more kW earns what it costs; below the
        miners' minimum, running earns its average rate there or nothing at all.
        """
        if self.workload != "asic":
            return 0.0
        e = self.miner_hash_exponent
        f_min = self.miner_min_power_pct / 100.0
        # $/kWh at nameplate: TH/s per kW x $/TH/day / 24 h
        nominal = 1000.0 / self.miner_j_per_th * usd_per_th_day / 24.0
        price = price_per_mwh / 1000.0
        if price <= 0:
            return self.rated_kw
        if nominal * f_min ** (e - 1.0) <= price:  # loses money even at its best
            return 0.0
        f = (e * nominal / price) ** (1.0 / (1.0 - e)) if e < 1.0 else 1.0
        return self.rated_kw * min(1.0, max(f_min, f))

    @property
    def heat_capacity_kj_k(self) -> float:
        return self.volume_l * self.fluid_density_kg_l * self.fluid_cp_kj_kgk


@dataclass(frozen=True)
class Cdu:
    """A coolant distribution unit for direct-to-chip racks."""

    name: str
    loop: str
    tcs_volume_l: float  # technology cooling system (secondary) volume
    hx_ua_kw_k: float
    tcs_flow_l_s: float
    design_water_flow_m3h: float
    supply_setpoint_c: float
    supply_alarm_c: float
    supply_trip_c: float
    unit_id: int


@dataclass(frozen=True)
class RackRow:
    """A row of direct-to-chip GPU racks behind one CDU."""

    name: str
    cdu: str
    pdu: str
    nodes: int
    node_power_kw: float
    node_idle_kw: float
    gpus_per_node: int
    gpu_r_k_per_w: float  # die-to-coolant resistance, ~0.037 K/W on an H200
    chip_throttle_c: float
    chip_trip_c: float
    unit_id: int
    workload_class: str
    gpu_idle_w: float = 120.0
    gpu_full_w: float = 700.0

    @property
    def rated_kw(self) -> float:
        return self.nodes * self.node_power_kw

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cap_range_w(self) -> tuple[float, float]:
        """The per-GPU power cap its PLC takes (``gpu_power_cap_w``): from
        ``GPU_CAP_MIN_FRAC`` of full power (200 W on a 700 W H200, its lowest
        settable limit) to full power. Fixed at 200..700 W, a 1,000 W GPU's row
        once capped could never be given its full power back."""
        return float(round(GPU_CAP_MIN_FRAC * self.gpu_full_w)), self.gpu_full_w

    @property
    def floor_kw(self) -> float:
        """What the row draws busy at its lowest cap: its idle, the GPUs at that cap
        and the rest of each node still at work (~49 % of its rating on H200s)."""
        idle = self.nodes * self.node_idle_kw
        gpu = (self.cap_range_w[0] - self.gpu_idle_w) / (self.gpu_full_w - self.gpu_idle_w)
        share = GPU_SHARE_OF_NODE_DYNAMIC
        return idle + (self.rated_kw - idle) * ((1.0 - share) + share * max(0.0, gpu))


@dataclass(frozen=True)
class ControlLoop:
    """A PID loop declared by the site: measurement point → actuator point."""

    name: str
    measurement: str
    actuators: tuple[str, ...]  # parallel equipment driven with one output
    setpoint: float
    kp: float
    ki: float
    kd: float
    out_min: float
    out_max: float
    slew_per_s: float
    action: str  # "direct": more output lowers the measurement (cooling)


@dataclass(frozen=True)
class PlcConfig:
    unit_id: int
    heartbeat_timeout_s: float
    safe_gpu_cap_pct: float
    leak_isolates_loop: bool

    @property
    def max_scan_s(self) -> float:
        """The slowest controller scan that keeps the heartbeat alive: half the
        watchdog's timeout, so one late or lost heartbeat write still leaves the
        next scan time to land before the PLC takes its safe state."""
        return self.heartbeat_timeout_s / 2.0

    def scan_problem(self, scan_s: float) -> str | None:
        """Why a controller scanning every ``scan_s`` seconds cannot keep this PLC's
        heartbeat alive, or None when it can. The one rule every command that
        chooses a scan (``run``, ``simulate``, the site file) applies."""
        if not (math.isfinite(scan_s) and scan_s > 0.0):
            return f"{scan_s:g} s is not a positive number of seconds"
        if scan_s > self.max_scan_s:
            return (
                f"{scan_s:g} s cannot keep the PLC heartbeat alive: the PLC takes its safe "
                f"state when the heartbeat has not changed for {self.heartbeat_timeout_s:g} s "
                f"(the site's [plc] heartbeat_timeout_s), so a scan must be at most half of "
                f"that ({self.max_scan_s:g} s)"
            )
        return None

    def watchdog_problem(self, plc_s: float, scan_s: float) -> tuple[str, bool] | None:
        """What is wrong with the timeout the PLC itself reports (``plc_s``, read over
        Modbus) against this file's and the scan, and whether it is too short to
        survive (True: the PLC takes its safe state between two heartbeats); None:
        it agrees. One rule for the run's alarm and ``thermogate probe``."""
        if not math.isfinite(plc_s):
            return None
        site_s = self.heartbeat_timeout_s
        if plc_s < 2.0 * scan_s:
            return (
                f"the PLC's watchdog times out after {plc_s:g} s, shorter than two"
                f" {scan_s:g} s scans: it takes its safe state between heartbeats (the site"
                f" file's [plc] heartbeat_timeout_s says {site_s:g} s)",
                True,
            )
        if abs(plc_s - site_s) >= 0.5:  # a whole-second register
            return (
                f"the PLC's watchdog times out after {plc_s:g} s, the site file's [plc]"
                f" heartbeat_timeout_s says {site_s:g} s: correct one of them",
                False,
            )
        return None


@dataclass(frozen=True)
class GridConfig:
    """The site as a load the grid counts on (``[grid]``): its under-frequency
    relay and the loads it sheds, and how curtailments are settled."""

    under_frequency_armed: bool = False
    #: None: the relay's defaults relative to the site's nominal frequency
    relay: RelayConfig | None = None
    #: the loads the relay sheds: mining tanks only (never inference)
    under_frequency_shed: tuple[str, ...] = ()
    settlement_interval_s: float = 900.0
    baseline_count: int = 10
    baseline_like: str = "day"  # "day" | "preceding"
    #: the commitment: may the grid's instructions cut inference? (no: mining
    #: and training only; a lower limit is held up where it would)
    curtail_inference: bool = False


@dataclass(frozen=True)
class Economics:
    """What the hall earns and pays, as the planner weighs it (``[economics]``).

    Constants here; scenarios and benchmarks may give series (prices by the
    hour, hashprice by the day) that replace them.
    """

    hashprice_usd_per_th_day: float = 0.05  # mining revenue per TH/s for a day
    inference_usd_per_gpu_h: float = 2.50  # what an inference GPU-hour sells for
    training_usd_per_gpu_h: float = 1.80
    energy_usd_per_mwh: float = 60.0  # without a price series

    def mining_breakeven_usd_per_mwh(self, j_per_th: float) -> float:
        """The energy price above which a miner of ``j_per_th`` loses money.

        One TH/s for a day uses ``j_per_th`` W x 24 h = ``j_per_th`` x 24e-6 MWh
        and earns the hashprice."""
        return self.hashprice_usd_per_th_day / (j_per_th * 24e-6)


@dataclass(frozen=True)
class Site:
    name: str
    source: str
    import_limit_kw: float
    meter_voltage_v: float
    frequency_hz: float
    meter_unit_id: int
    design_ambient_c: float
    scan_interval_s: float
    plc: PlcConfig
    feeders: tuple[Feeder, ...]
    pdus: tuple[Pdu, ...]
    loops: tuple[Loop, ...]
    tanks: tuple[Tank, ...]
    cdus: tuple[Cdu, ...]
    rack_rows: tuple[RackRow, ...]
    control_loops: tuple[ControlLoop, ...]
    economics: Economics = Economics()
    grid: GridConfig = GridConfig()
    #: regulating actuators no control loop drives, on purpose: another
    #: controller (a CDU's own, the PLC's) runs them; thermogate writes them
    #: only to fail safe (full cooling)
    regulated_elsewhere: tuple[str, ...] = ()

    @property
    def plc_units(self) -> set[int]:
        """The unit ids PLCs answer on: ``[plc] unit_id`` and every unit carrying
        tanks or rack rows (a further PLC); only these serve several devices."""
        return (
            {self.plc.unit_id}
            | {t.unit_id for t in self.tanks}
            | {r.unit_id for r in self.rack_rows}
        )

    @property
    def pumps(self) -> tuple[Pump, ...]:
        return tuple(p for lp in self.loops for p in lp.pumps)

    @property
    def dry_coolers(self) -> tuple[DryCooler, ...]:
        return tuple(d for lp in self.loops for d in lp.dry_coolers)

    @property
    def gpus(self) -> int:
        """GPUs installed in GPU tanks and rack rows."""
        return sum(t.gpus for t in self.tanks) + sum(r.gpus for r in self.rack_rows)

    def mining_breakeven(self, *, nameplate: bool = False) -> dict[str, float]:
        """Per ASIC tank, the energy price ($/MWh) above which its miners lose money
        even at their most efficient (their minimum power; ``Tank.hashrate_at``);
        ``nameplate``: run at full power, as a fixed split runs them."""
        return {
            t.name: self.economics.mining_breakeven_usd_per_mwh(
                t.miner_j_per_th if nameplate else t.miner_best_j_per_th
            )
            for t in self.tanks
            if t.workload == "asic"
        }

    @property
    def oversubscription(self) -> float:
        """Installed IT power over the grid import limit (above 1: not all can run at once)."""
        return self.it_rated_kw / self.import_limit_kw

    @property
    def it_rated_kw(self) -> float:
        return sum(t.rated_kw for t in self.tanks) + sum(r.rated_kw for r in self.rack_rows)

    def loop(self, name: str) -> Loop:
        return next(lp for lp in self.loops if lp.name == name)

    def summary(self) -> dict[str, object]:
        """A plain dict for reports and ``--json`` output."""
        return {
            "name": self.name,
            "source": self.source,
            "tanks_asic": sum(t.workload == "asic" for t in self.tanks),
            "tanks_gpu": sum(t.workload == "gpu" for t in self.tanks),
            "rack_rows": len(self.rack_rows),
            "cdus": len(self.cdus),
            "loops": len(self.loops),
            "pumps": len(self.pumps),
            "dry_coolers": len(self.dry_coolers),
            "feeders": len(self.feeders),
            "pdus": len(self.pdus),
            "it_rated_kw": round(self.it_rated_kw, 1),
            "import_limit_kw": self.import_limit_kw,
            "oversubscription": round(self.oversubscription, 2),
            "gpus": self.gpus,
        }


def _three_phase_kw(voltage_v: float, current_a: float, pf: float) -> float:
    return math.sqrt(3.0) * voltage_v * current_a * pf / 1000.0
