"""The controller against the simulated plant over real Modbus TCP.

Communication loss, the PLC's own fallback when the controller dies, and
configuration mistakes, as an operator would meet them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from served import served

from thermogate.controller.modbus_io import Endpoint
from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import RunConfig
from thermogate.hil.modbus_server import PlantModbusServer
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site, demo_site_text


def _site_file(tmp_path: Path) -> Path:

    text = demo_site_text()
    p = tmp_path / "site.toml"
    p.write_text(text, encoding="utf-8")
    return p


async def _until(pred, timeout: float, step: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


@pytest.mark.timeout(60)
def test_faces_get_each_scans_picture_before_its_writes_go_out(tmp_path):
    """SCADA sees a scan without waiting for its Modbus writes; the picture is the
    scan's own (its time, counters and status), and a copy."""
    site = demo_site()

    async def scenario() -> None:
        sp = ServedPlant(ScenarioPlant(site, "normal-day"), speed=1.0)
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        plant_task = asyncio.create_task(sp.run())
        cfg = RunConfig(
            site, tmp_path / "h.db", Endpoint("tcp", "127.0.0.1", port), 0.2, 0.1,
            built_in_plant=False, forecast=False,
        )  # fmt: skip
        rt = RealTimeController(cfg)
        order: list[tuple[str, object]] = []
        write = rt.io.write

        async def writes(pairs):
            order.append(("write", len(pairs)))
            return await write(pairs)

        class Face:
            def publish(self, snap) -> None:
                order.append(("publish", snap))

            def serve(self, give) -> int:
                return 0

        rt.io.write = writes
        rt.faces.append(Face())
        try:
            for _ in range(6):
                order.clear()
                await rt.scan_once()
                rt.after_scan()
                kinds = [k for k, _ in order]
                assert kinds[0] == "publish" and kinds.count("publish") == 1, kinds
                snap = order[0][1]
                assert snap.t == rt.ctrl.t_last and snap.scans == rt.scans
                assert dict(snap.status) == rt.last and snap.status is not rt.last
                await asyncio.sleep(0.2)
            assert any(k == "write" for k, _ in order), "the scans wrote nothing"
        finally:
            await rt.close()
            plant_task.cancel()
            await sp.server.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_losing_the_plant_mid_run_alarms_goes_fail_safe_plc_falls_back_and_recovers(tmp_path):
    site = demo_site()

    async def scenario() -> None:
        sim = ScenarioPlant(site, "normal-day")
        sp = ServedPlant(sim, speed=5.0)  # 10 s watchdog = 2 s of wall time
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        plant_task = asyncio.create_task(sp.run())
        cfg = RunConfig(
            site,
            tmp_path / "h.db",
            Endpoint("tcp", "127.0.0.1", port),
            0.2,
            0.1,
            built_in_plant=False,
        )
        rt = RealTimeController(cfg)
        rt.io.backoff_max_s = 2.0  # keep the reconnect wait of the test short
        try:

            async def scans(n: int) -> None:
                for _ in range(n):
                    await rt.scan_once()
                    await asyncio.sleep(0.2)

            # on a loaded machine the first reads can miss the 0.1 s budget and back
            # the unit off: wait (counted in scans) until every zone has its data
            for _ in range(80):
                await scans(1)
                if rt.scans >= 15 and not rt.last["failsafe_zones"]:
                    break
            assert rt.last["failsafe_zones"] == [], rt.last["failsafe_zones"]
            assert not sim.plant.plc.safe_state

            await sp.server.stop()  # the network to the plant is gone
            await scans(8)
            assert set(rt.last["failsafe_zones"]) == set(rt.ctrl.zones)
            rt.historian.flush()
            kinds = {e["kind"] for e in rt.historian.events()}
            assert "failsafe" in kinds
            # The controller's heartbeat cannot reach the PLC: it falls back on its own.
            assert await _until(lambda: sim.plant.plc.safe_state, 6.0)

            sp.server = PlantModbusServer(sp.images, on_write=sp._on_write)
            await sp.server.start_tcp("127.0.0.1", port)
            for _ in range(80):
                await scans(1)
                if not rt.last["failsafe_zones"] and not sim.plant.plc.safe_state:
                    break
            assert rt.last["failsafe_zones"] == []
            assert not sim.plant.plc.safe_state  # heartbeat resumed: control handed back
            rt.historian.flush()
            assert any(e["kind"] == "restore" for e in rt.historian.events())
        finally:
            await rt.close()
            plant_task.cancel()
            await sp.server.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(120)
def test_when_the_controller_process_dies_the_plc_takes_its_safe_state_by_itself(tmp_path):
    site_file = _site_file(tmp_path)
    site = demo_site()

    async def scenario() -> None:
        sim = ScenarioPlant(site, "normal-day")
        sp = ServedPlant(sim, speed=2.0)
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        plant_task = asyncio.create_task(sp.run())
        cfg = tmp_path / "controller.toml"
        cfg.write_text(
            f'[controller]\nsite = "{site_file.name}"\ndb = "c.db"\n\n'
            f'[modbus]\nhost = "127.0.0.1"\nport = {port}\n',
            encoding="utf-8",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "thermogate.controller.cli",
            "run",
            "--config",
            str(cfg),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ},
        )
        try:
            hb0 = sim.plant.heartbeat
            assert await _until(lambda: sim.plant.heartbeat != hb0, 30.0), "controller never ran"
            assert await _until(lambda: not sim.plant.plc.safe_state, 10.0)
            await asyncio.sleep(2.0)
            assert not sim.plant.plc.safe_state  # the running controller keeps it out
            proc.send_signal(signal.SIGKILL)  # no goodbye, no last write
            await proc.wait()
            timeout_wall = site.plc.heartbeat_timeout_s / sp.speed
            assert await _until(lambda: sim.plant.plc.safe_state, timeout_wall + 3.0)
            assert (
                not sim.plant.cmd_enable.all()
                or sim.plant.t_power[sim.plant.params.t_asic].sum() == 0
            )
            assert (sim.plant.t_power[sim.plant.params.t_asic] == 0).all()  # mining off
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            plant_task.cancel()
            await sp.server.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        (
            '[controller]\nsite = "site.toml"\nscan_z = 1\n[modbus]\nhost = "h"\n',
            "controller.scan_z",
            "unknown key",
        ),
        (
            '[controller]\nsite = "nope.toml"\n[modbus]\nhost = "h"\n',
            "controller.site",
            "file not found",
        ),
        (
            '[controller]\nsite = "site.toml"\n[modbus]\nhost = "h"\nport = "502"\n',
            "modbus.port",
            "expected an integer",
        ),
        (
            '[controller]\nsite = "site.toml"\nscan_s = 0.0\n[modbus]\nhost = "h"\n',
            "controller.scan_s",
            "below the minimum",
        ),
        (
            '[controller]\nsite = "site.toml"\n[modbus]\nhost = "h"\n[[modbus.units]]\n'
            'unit_ids = [99]\nhost = "g"\n',
            "modbus.units[0].unit_ids",
            "not used by site",
        ),
        ('[controller]\nsite = "site.toml"\n', "modbus", "required key is missing"),
        ("[controller\n", "", "TOML syntax error"),
    ],
)
def test_a_bad_controller_configuration_is_one_clear_line_naming_key_and_reason(
    tmp_path, body, key, reason
):
    _site_file(tmp_path)
    cfg = tmp_path / "controller.toml"
    cfg.write_text(body, encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thermogate.controller.cli",
            "run",
            "--config",
            str(cfg),
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("thermogate: error: ")
    assert key in line and reason in line, line


@pytest.mark.timeout(120)
def _fast_cfg(pl, port: int, tmp_path: Path) -> RunConfig:
    """A run of the served plant's site, scanning every 0.05 s (the plant, at 120x, is
    the clock: minutes pass in seconds)."""
    return RunConfig(
        pl.site, tmp_path / "h.db", Endpoint("tcp", "127.0.0.1", port), 0.05, 0.5,
        built_in_plant=False,
    )  # fmt: skip


def test_the_models_minute_update_runs_between_scans_and_never_inside_one(tmp_path):
    """The minute's forecast (~150 ms at 10,000 points) is worked out after the scan,
    so it never holds a scan's timing; the next scan plans with it, as before."""

    async def scenario() -> None:
        async with served("normal-day", speed=120.0) as (sp, port):
            pl = sp.sim.plant
            rt = RealTimeController(_fast_cfg(pl, port, tmp_path), clock=lambda: 1.8e9 + pl.t)
            assert rt.model is not None  # a fresh historian: the physics prior forecasts
            inside, between = 0, 0
            try:
                for _ in range(2000):
                    before = rt.model.last
                    await rt.scan_once()
                    inside += rt.model.last is not before
                    after_scan = rt.model.last
                    rt.after_scan()
                    if rt.model.last is not after_scan:
                        between += 1
                        assert rt.model.last is not None
                        assert rt.model.last.t <= rt.ctrl.t_last  # this scan's minute
                    if between >= 3:
                        break
                    await asyncio.sleep(0.02)
            finally:
                await rt.close()
        assert inside == 0
        assert between == 3 and len(rt.model.update_s) == 3
        assert rt.model.last.zones  # headroom per zone, for the next scan's planning

    asyncio.run(scenario())


@pytest.mark.parametrize("step_s", [1_800_000_000.0 - 86_400.0, -3_600.0])
def test_a_clock_stepping_decades_ahead_or_back_keeps_the_run_scanning(tmp_path, step_s):
    """A PLC-side box whose dead RTC said 1970 until NTP put it right (or an operator
    setting it back an hour): the scans go on, the step is an event, and the thermal
    model's minute history starts again rather than spanning the step (bins across
    56 years once asked numpy for terabytes and stopped the run)."""

    async def scenario() -> None:
        async with served("normal-day", speed=120.0) as (sp, port):
            pl = sp.sim.plant
            offset = [86_400.0]
            rt = RealTimeController(_fast_cfg(pl, port, tmp_path), clock=lambda: offset[0] + pl.t)
            assert rt.model is not None
            bins = rt.model.forecaster.bins
            try:
                t_step = None
                for _ in range(4000):
                    await rt.scan_once()
                    rt.after_scan()
                    if t_step is None and len(bins.t) >= 3:
                        offset[0] += step_s  # the clock steps between two scans
                        t_step = rt.clock()
                    elif t_step is not None and len(bins.t) >= 2:
                        break
                    await asyncio.sleep(0.01)
                assert t_step is not None and len(bins.t) >= 2
                assert all(t >= t_step - 60.0 for t in bins.t)  # only minutes after it
                rt.historian.flush()
                events = rt.historian.reader.events(kinds=["clock", "info"], limit=100_000)
            finally:
                await rt.close()
        kinds = [(e["kind"], e["message"]) for e in events]
        assert any(k == "clock" and "stepped" in m for k, m in kinds)
        assert any("minute history starts again" in m for _, m in kinds)

    asyncio.run(scenario())
