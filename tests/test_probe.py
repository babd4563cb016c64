"""``thermogate probe``: a run configuration checked and every point read once.

Real parts: the demo plant served over Modbus TCP in-process, the probe's real
Modbus reads, the CLI in a subprocess against a port nobody answers on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from served import served
from sitefiles import TANK99, closed_port, write_run_config

from thermogate.controller.probe import probe, render
from thermogate.controller.runconfig import load_run_config
from thermogate.plc.site import demo_site_text
from thermogate.plc.sitegen import SiteSpec, generate_site_toml

CLI = [sys.executable, "-m", "thermogate.controller.cli"]


def _probe_served(tmp: Path, site_text: str, watchdog_s: float | None = None):
    async def go():
        async with served(speed=1.0) as (sp, port):
            if watchdog_s is not None:
                sp.sim.plant.heartbeat_timeout_s = watchdog_s
                t0 = sp.sim.t
                while sp.sim.t < t0 + 2.0:  # served from the next image on
                    await asyncio.sleep(0.1)
            cfg = load_run_config(str(write_run_config(tmp, site_text, port, 1.0)), None)
            return await probe(cfg), port

    return asyncio.run(go())


def test_a_plant_that_serves_the_site_file_answers_every_point(tmp_path):
    report, port = _probe_served(tmp_path, demo_site_text())
    assert report.ok, render(report)
    assert all(u.read == u.points and u.error is None for u in report.units)
    assert sum(u.points for u in report.units) == report.config["points"]
    assert report.all_zero == [] and report.watchdog is None
    assert list(report.config["endpoints"]) == [f"tcp 127.0.0.1:{port}"]
    assert render(report).endswith("probe: everything answered as the site file says")
    assert not (tmp_path / "site.db").exists()  # a probe opens no database


def test_equipment_the_plc_does_not_serve_is_named_by_unit_and_as_all_zero(tmp_path):
    report, _ = _probe_served(tmp_path, demo_site_text() + TANK99)
    assert not report.ok
    refused = {u.unit_id: u for u in report.units if u.read < u.points}
    assert set(refused) == {17, 99}  # tank99's feeder and PDU meters
    assert all("exception" in (u.error or "") for u in refused.values())
    assert report.all_zero == ["tank99"]  # its addresses inside the PLC's table read 0
    text = render(report)
    assert "tank99: every temperature reads exactly 0" in text
    assert text.splitlines()[-1].startswith(f"probe: {len(report.units) - 2} of")


def test_a_plc_watchdog_other_than_the_site_files_is_named(tmp_path):
    report, _ = _probe_served(tmp_path, demo_site_text(), watchdog_s=6.0)
    assert not report.ok
    assert report.watchdog == (
        "the PLC's watchdog times out after 6 s, the site file's [plc] heartbeat_timeout_s"
        " says 10 s: correct one of them"
    )
    assert report.watchdog_s == 6.0
    assert render(report).splitlines()[-1] == (
        f"probe: all {len(report.units)} units answered, but see the findings above"
    )


def test_offline_validates_without_asking_any_device_and_the_cli_exits_1_on_silence(tmp_path):
    port = closed_port()
    cfg = write_run_config(tmp_path, demo_site_text(), port, 1.0)
    off = subprocess.run(
        [*CLI, "probe", "--config", str(cfg), "--offline"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip().endswith("configuration valid (offline: no device was asked)")
    assert f"endpoint tcp 127.0.0.1:{port}: 36 units: 1, 10-12" in off.stdout
    on = subprocess.run(
        [*CLI, "probe", "--config", str(cfg), "--json"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert on.returncode == 1, on.stderr
    report = json.loads(on.stdout)
    assert not report["ok"] and all(u["read"] == 0 for u in report["units"])
    assert all("cannot connect" in u["error"] or "refused" in u["error"] for u in report["units"])
    assert report["watchdog_s"] is None  # not read: no verdict on it
    assert not (tmp_path / "site.db").exists()
    # a gateway that is down is one line, and the run loop's retry chatter is not printed
    text = subprocess.run(
        [*CLI, "probe", "--config", str(cfg)], capture_output=True, text=True, timeout=120
    )
    found = [ln for ln in text.stdout.splitlines() if "nothing of" in ln]
    assert len(found) == 1 and found[0].startswith("units 1, 10-12, "), text.stdout
    assert f"(tcp 127.0.0.1:{port}): nothing of 518 points read: cannot connect" in found[0]
    assert "retried in" not in text.stderr, text.stderr


def test_further_plcs_without_a_heartbeat_of_their_own_are_named_offline(tmp_path):
    # a site spread over three PLCs: only unit 1 has the system block (heartbeat,
    # watchdog); the probe says so before the first run, as site --check does
    spread = SiteSpec(asic_tanks=30, gpu_tanks=2, rack_rows=2, tanks_per_plc=12)
    cfg = write_run_config(tmp_path, generate_site_toml(spread), closed_port(), 1.0)
    off = subprocess.run(
        [*CLI, "probe", "--config", str(cfg), "--offline", "--json"], capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["config"]["watchdog"].startswith(
        "2 further PLC(s), units 2-3, carry tanks or rows but no heartbeat of their own"
        " (only unit 1's)"
    )
    text = subprocess.run(
        [*CLI, "probe", "--config", str(cfg), "--offline"], capture_output=True, text=True,
        timeout=120,
    ).stdout  # fmt: skip
    [line] = [ln for ln in text.splitlines() if ln.startswith("  watchdog: ")]
    assert "units 2-3" in line and "program their watchdog on the main PLC's heartbeat" in line
    # one PLC (the demo): nothing to say
    demo = load_run_config(str(write_run_config(tmp_path, demo_site_text())), None)
    assert asyncio.run(probe(demo, offline=True)).config["watchdog"] is None
