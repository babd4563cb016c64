"""Workload gating closed over real Modbus TCP: the controller (``RealTimeController``,
as ``thermogate run`` runs it) against the simulated plant served by pymodbus.

Everything between controller and plant (meters, power budgets and caps, enable
bits, the heartbeat) goes over the wire. The GPU cluster is the hall's
orchestrator, which a real site reaches through its own API rather than Modbus:
here it runs beside the plant on the plant's clock (``ServedPlant.cluster``), and
the planner asks it in-process what the jobs want (``GatingPlanner.gpu_demand``).
What is asserted is measured on the plant: its meters, in plant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass

import pytest

from thermogate.controller.gating.world import ClusterInTheLoop
from thermogate.controller.historian import HistoryReader
from thermogate.controller.modbus_io import Endpoint
from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import RunConfig
from thermogate.controller.statusline import status_line
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.scenario import parse_scenario
from thermogate.hil.scenario.jobs import Job
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site

SPEED = 30.0  # plant seconds per wall second
EPOCH = 1.7e9  # the controller's clock: the plant's, as Unix-like seconds
# plant time (s)
# the hall has started by then: zones out of fail-safe, loads ramped up, caps from
# the start-up's overshoot handed back (at 0.5 %/s of a load's rating)
SETTLED_S = 150.0
SPIKE = (200.0, 350.0)  # the energy price at 3x the mining breakeven
BURST_S = 650.0  # a job burst arrives (mining needs ~250 s after the spike to be back)
END_S = 850.0


@dataclass(frozen=True)
class Sample:
    """The plant's meters after one tick of its clock."""

    t: float
    mining_kw: float
    gpu_kw: float
    site_kw: float
    safe_state: bool


def _site():
    base = demo_site()
    # the import limit binds: the hall cannot run everything at once
    site = dataclasses.replace(base, import_limit_kw=round(base.it_rated_kw / 1.4, 1))
    # A 10 s watchdog is 0.33 s of wall time at 30x: one stall of a loaded CI host
    # and the PLC would take its safe state. 60 s of plant time is 2 s of wall.
    return dataclasses.replace(site, plc=dataclasses.replace(site.plc, heartbeat_timeout_s=60.0))


def _scenario(spike_per_mwh: float):
    return parse_scenario(
        f"""
name = "hil-gating"
duration_s = 7200
[weather]
source = "synthetic"
seed = 1
min_c = 18.0
max_c = 22.0
[prices]
source = "synthetic"
base_per_mwh = 50
morning_peak_per_mwh = 0
evening_peak_per_mwh = 0
noise_per_mwh = 0
[[grid_events]]
at_s = {SPIKE[0]:g}
kind = "price"
duration_s = {SPIKE[1] - SPIKE[0]:g}
params = {{ price_per_mwh = {spike_per_mwh:.0f} }}
""",
        "hil-gating.toml",
    )


def _jobs() -> list[Job]:
    # a service that runs throughout, then a burst: 6 x 64 training GPUs and an
    # inference job of 128 (576 of the 768 GPUs busy)
    jobs = [Job(0, 0.0, 36_000.0, 64, "inference", math.inf)]
    jobs += [Job(1 + i, BURST_S, 4 * 3600.0, 64, "training", 1800.0) for i in range(6)]
    jobs.append(Job(7, BURST_S, 7200.0, 128, "inference", math.inf))
    return jobs


def _runs(flags: list[bool]) -> list[tuple[bool, int]]:
    """Run lengths: (value, count) of each stretch of equal values, in order."""
    return [(v, len(list(g))) for v, g in itertools.groupby(flags)]


@pytest.mark.timeout(120)
def test_over_modbus_a_price_spike_stops_mining_and_a_job_burst_moves_power_to_the_gpus(
    tmp_path, capsys
):
    site = _site()
    breakeven = max(site.mining_breakeven().values())
    limit = site.import_limit_kw
    samples: list[Sample] = []

    async def scenario() -> RealTimeController:
        sim = ScenarioPlant(site, _scenario(3.0 * breakeven))
        world = ClusterInTheLoop(site, _jobs())
        gate: list[RealTimeController] = []
        sp = ServedPlant(
            sim, speed=SPEED, cluster=world, capacity=lambda: gate[0].gating.gpu_capacity
        )
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        pl = sim.plant

        def meters(_: ServedPlant) -> None:
            asic = pl.params.t_asic
            gpu = float(pl.t_power[~asic].sum() + pl.r_power.sum())
            samples.append(
                Sample(pl.t, float(pl.t_power[asic].sum()), gpu, pl.site_kw, pl.plc.safe_state)
            )

        cfg = RunConfig(
            site,
            tmp_path / "h.db",
            Endpoint("tcp", "127.0.0.1", port),
            site.scan_interval_s,
            0.2,
            built_in_plant=False,
            forecast=False,
        )
        # the plant is the clock (30x); the scenario's prices are the market feed
        rt = RealTimeController(
            cfg, clock=lambda: EPOCH + pl.t, price_feed=lambda t: sim.price_per_mwh()
        )
        assert rt.gating is not None
        rt.gating.gpu_demand = world.demand  # the orchestrator's API, in-process
        gate.append(rt)
        # the link up before the plant's clock runs: a first connect lost on a
        # loaded machine backs off in wall seconds, 30 plant seconds each
        for _ in range(100):
            await rt.io.read_all()
            if not rt.io.lost():
                break
            await asyncio.sleep(0.1)
        clock = asyncio.create_task(sp.run(on_tick=meters))
        try:
            while pl.t < END_S:
                await rt.scan_once()
                await asyncio.sleep(0.02)
            status_line(rt)
            rt.historian.flush()
            assert not clock.done()  # the serving loop never ends on its own
        finally:
            await rt.close()
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
            await sp.server.stop()
        return rt

    rt = asyncio.run(scenario())

    # the controller kept the plant: the PLC never fell back to its safe state
    assert samples and not any(s.safe_state for s in samples)

    def window(t0: float, t1: float) -> list[Sample]:
        got = [s for s in samples if t0 <= s.t < t1]
        assert len(got) >= 5, (t0, t1, len(got))
        return got

    before = window(SETTLED_S, SPIKE[0])
    mining_before = min(s.mining_kw for s in before)
    gpu_before = min(s.gpu_kw for s in before)
    assert mining_before > 0.5 * sum(t.rated_kw for t in site.tanks if t.workload == "asic")

    # the spike: mining off (after the scan that sees it) and on again after it,
    # in that order, once; the GPUs' service keeps running meanwhile
    settled = [s for s in samples if SETTLED_S <= s.t < BURST_S]
    on_off = _runs([s.mining_kw > 0.02 * mining_before for s in settled])
    assert [v for v, _ in on_off] == [True, False, True], on_off
    off = [s.t for s in settled if s.mining_kw <= 0.02 * mining_before]
    assert SPIKE[0] <= off[0] < SPIKE[0] + 10.0 and SPIKE[1] - 10.0 <= off[-1] < SPIKE[1] + 10.0
    assert min(s.gpu_kw for s in window(SPIKE[0], SPIKE[1])) > 0.95 * gpu_before
    back = window(BURST_S - 50.0, BURST_S)
    assert min(s.mining_kw for s in back) > 0.9 * mining_before

    # the burst: the GPUs draw more and mining makes room for them under the limit
    after = window(BURST_S + 100.0, END_S)
    gpu_rise = min(s.gpu_kw for s in after) - max(s.gpu_kw for s in back)
    assert gpu_rise > 2.0 * gpu_before
    mining_fall = min(s.mining_kw for s in back) - max(s.mining_kw for s in after)
    assert mining_fall > 0.5 * gpu_rise
    # the import stays under the limit throughout (2 % for a scan's ramping)
    assert max(s.site_kw for s in samples if s.t >= SETTLED_S) <= 1.02 * limit

    # the books, from the meters as the controller read them over Modbus
    with HistoryReader(rt.cfg.db) as h:
        econ = h.economics()
        gating = h.gating()
    dark = [r for r in econ if EPOCH + SPIKE[0] + 10 <= r["t"] and r["t"] + 60 <= EPOCH + SPIKE[1]]
    assert dark and all(r["mining_usd"] == 0.0 for r in dark)
    assert all(r["price_per_mwh"] > r["mining_breakeven_per_mwh"] for r in dark)
    busy = [r for r in econ if r["t"] >= EPOCH + BURST_S + 60 and r["interval_s"] == 60.0]
    calm = [r for r in econ if r["t"] + 60 <= EPOCH + SPIKE[0] and r["interval_s"] == 60.0]
    assert busy and calm
    assert min(r["training_usd"] for r in busy) > 10 * max(r["training_usd"] for r in calm)
    why = {(g["load"], g["why"]) for g in gating}
    assert ("tank01", "price above mining breakeven") in why
    assert ("row1", "job demand") in why and ("tank01", "grid limit") in why
    stopped = [g for g in gating if g["why"] == "price above mining breakeven"]
    assert {g["load"] for g in stopped} == set(site.mining_breakeven())
    assert all(EPOCH + SPIKE[0] <= g["t"] < EPOCH + SPIKE[1] for g in stopped)

    out = capsys.readouterr().out
    assert "  economics: margin $" in out and "vs mining breakeven" in out
