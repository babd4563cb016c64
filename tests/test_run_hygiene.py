"""What a new user of ``thermogate run`` ran into (issue 15, section 3), pinned.

* a ``scan_s`` that cannot keep the PLC heartbeat alive is refused at load time,
  by the one rule ``simulate`` and the site file use too;
* ``thermogate --version``;
* no plant reachable: one log line per lost endpoint with a real (growing)
  backoff, no pymodbus chatter, no numpy warning and no NaN in the status;
* a restart after ``kill -9`` records the unclean stop and its gap, a clean
  stop is marked as one.

Real parts only: real sockets (a port nobody listens on), real subprocesses,
real SQLite files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest
from sitefiles import write_run_config

from thermogate.controller.bench import reap
from thermogate.controller.cli import main
from thermogate.controller.demoplant import DemoPlant
from thermogate.controller.modbus_io import Endpoint, ModbusIO
from thermogate.controller.run import (
    CLEAN_STOP,
    RUN_STATE_KEY,
    UNCLEAN_STOP,
    RealTimeController,
)
from thermogate.controller.runconfig import load_run_config
from thermogate.controller.statusline import status_line
from thermogate.plc.errors import ConfigError, ThermogateError
from thermogate.plc.pointmap import PointMap
from thermogate.plc.site import Site, demo_site_text, parse_site_text
from thermogate.plc.sitegen import SiteSpec, generate_site_toml

CLI = [sys.executable, "-m", "thermogate.controller.cli"]


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(tmp: Path, *, scan_s: float | None = None, port: int | None = None) -> Path:
    (tmp / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    scan = f"scan_s = {scan_s}\n" if scan_s is not None else ""
    cfg = tmp / "controller.toml"
    cfg.write_text(
        f'[controller]\nsite = "site.toml"\ndb = "site.db"\n{scan}\n'
        f'[modbus]\nhost = "127.0.0.1"\nport = {port or _closed_port()}\ntimeout_s = 0.2\n\n'
        "[model]\nenabled = false\n",
        encoding="utf-8",
    )
    return cfg


def _wait(what: str, ok, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------
# scan_s against the PLC heartbeat
# --------------------------------------------------------------------------
def test_run_refuses_a_scan_the_plc_heartbeat_cannot_survive_in_one_line_exit_2(tmp_path):
    cfg = _write_config(tmp_path, scan_s=30)
    proc = subprocess.run(
        [*CLI, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert str(cfg) in line and "controller.scan_s" in line and "30 s" in line
    assert "heartbeat" in line and "10 s" in line  # the reason: the demo's 10 s watchdog
    assert not (tmp_path / "site.db").exists()  # refused before anything was opened


def test_one_rule_decides_the_slowest_scan_half_the_heartbeat_timeout(site: Site, tmp_path):
    plc = site.plc
    assert plc.max_scan_s == plc.heartbeat_timeout_s / 2
    assert plc.scan_problem(plc.max_scan_s) is None
    slow = plc.max_scan_s + 0.5
    reason = plc.scan_problem(slow)
    assert reason is not None and "heartbeat" in reason
    # run (its config key), the site file and simulate all give that same reason
    with pytest.raises(ConfigError) as run_err:
        load_run_config(str(_write_config(tmp_path, scan_s=slow)), None)
    assert run_err.value.key == "controller.scan_s" and run_err.value.reason == reason
    text = demo_site_text().replace("scan_interval_s = 1.0", f"scan_interval_s = {slow}")
    with pytest.raises(ConfigError) as site_err:
        parse_site_text(text, "hall.toml")
    assert site_err.value.key == "site.scan_interval_s" and site_err.value.reason == reason

    from thermogate.controller.simulate import run_simulation

    with pytest.raises(ThermogateError) as sim_err:
        run_simulation(site, "normal-day", 0.01, scan_s=slow)
    assert reason in str(sim_err.value)


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        # a typo of device was reported as a missing host
        ('devcie = "/dev/ttyUSB0"', "modbus.device: required key is missing (found 'devcie'"),
        ('hots = "10.0.0.5"', "modbus.host: required key is missing (found 'hots'"),
        ("in_flight = 2", "modbus.host: required: 'host' (Modbus TCP) or 'device'"),
        ('device = ""', "modbus.device: is empty: give the serial port"),  # was a traceback
        ('host = " "', "modbus.host: is empty: give the gateway's or PLC's address"),
    ],
)
def test_a_modbus_endpoint_without_its_address_is_one_line_naming_the_key(tmp_path, endpoint, says):
    from thermogate.plc.errors import ConfigError

    cfg = _write_config(tmp_path)
    text = cfg.read_text(encoding="utf-8")
    text = text.replace('host = "127.0.0.1"\n', endpoint + "\n")
    if endpoint.startswith(("devcie", "device")):
        text = "\n".join(line for line in text.splitlines() if not line.startswith("port ="))
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_run_config(str(cfg), None)
    assert says in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_half_the_heartbeat_timeout_exactly_is_still_accepted(tmp_path):
    assert load_run_config(str(_write_config(tmp_path, scan_s=5.0)), None).scan_s == 5.0


# --------------------------------------------------------------------------
# --version
# --------------------------------------------------------------------------
def test_version_prints_the_installed_distributions_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"thermogate {metadata.version('thermogate')}"


# --------------------------------------------------------------------------
# no plant reachable
# --------------------------------------------------------------------------
def test_a_lost_endpoint_is_one_log_line_naming_its_units_and_its_backoff_grows(
    demo_pmap: PointMap, caplog
):
    units = demo_pmap.unit_ids()
    assert len(units) > 10  # the demo: many unit ids behind one address

    async def scenario() -> list[float]:
        io = ModbusIO(
            demo_pmap,
            Endpoint("tcp", "127.0.0.1", _closed_port()),
            timeout_s=0.2,
            scan_budget_s=0.5,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
        periods = []
        try:
            for _ in range(5):
                r = await io.read_all()
                assert not any(r.unit_ok.values()) and not r.fresh.any()
                periods.append(io.backoff_period_s(units[0]))
                await asyncio.sleep(0.25)  # past the backoff: the next read probes again
            assert set(io.lost()) == {next(iter(io.lost()))}  # one endpoint
        finally:
            await io.close()
        return periods

    with caplog.at_level(logging.DEBUG, logger="thermogate"):
        periods = asyncio.run(scenario())
    # a real backoff: never 0 s, doubling from its initial value up to its cap
    assert periods[0] == 0.05 and periods[-1] == 0.2
    assert all(b >= a > 0 for a, b in itertools.pairwise(periods))
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    line = warned[0].getMessage()
    assert "\n" not in line and "cannot connect" in line
    assert f"{len(units)} units" in line and "retried in 0.05 s" in line
    assert "0.0 s" not in line and "Repeating" not in caplog.text


def test_status_with_no_plant_shows_no_nan_and_raises_no_numpy_warning(tmp_path, capsys):
    cfg = load_run_config(str(_write_config(tmp_path)), str(tmp_path / "site.db"))

    async def scenario() -> None:
        rt = RealTimeController(cfg)
        try:
            for _ in range(2):
                await rt.scan_once()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "Mean of empty slice" would fail here
                status_line(rt)
        finally:
            await rt.close()

    asyncio.run(scenario())
    out = capsys.readouterr().out
    assert "nan" not in out.lower(), out
    assert "site n/a" in out and "not answering: tcp 127.0.0.1:" in out


def test_an_endpoint_not_answering_is_an_alarm_naming_it_not_only_a_log_line(tmp_path):
    """The prober put the site meter behind a dead gateway: the log said so, the
    alarm list had only "sensors:stale"."""
    port = _closed_port()
    cfg = load_run_config(str(_write_config(tmp_path, port=port)), str(tmp_path / "site.db"))

    async def scenario() -> str:
        rt = RealTimeController(cfg)
        try:
            for _ in range(2):
                await rt.scan_once()
            rec = rt.ctrl.alarms.record("link.modbus")
            assert rec is not None and rec.active
            return rec.message
        finally:
            await rt.close()

    message = asyncio.run(scenario())
    assert message.startswith(f"Modbus not answering: tcp 127.0.0.1:{port} (36 units: 1, 10-12")


# --------------------------------------------------------------------------
# clean and unclean stops
# --------------------------------------------------------------------------
def _events(db: Path, kind: str) -> list[dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT t, message, data FROM events WHERE kind = ?", (kind,))
        return [{"t": t, "message": m, "data": json.loads(d or "{}")} for t, m, d in rows]
    finally:
        con.close()


def _newest_row_t(db: Path) -> float:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        q = "SELECT max(t) FROM (SELECT t FROM telemetry_0 UNION ALL SELECT t FROM events"
        return con.execute(q + " UNION ALL SELECT t FROM audit)").fetchone()[0]
    finally:
        con.close()


def _telemetry_rows(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM telemetry_0").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        con.close()


def test_a_start_after_a_clean_stop_records_no_unclean_stop(tmp_path):
    cfg = load_run_config(str(_write_config(tmp_path)), str(tmp_path / "site.db"))

    async def start_and_stop() -> None:
        rt = RealTimeController(cfg)
        await rt.scan_once()
        await rt.close()

    asyncio.run(start_and_stop())
    asyncio.run(start_and_stop())
    db = tmp_path / "site.db"
    assert len(_events(db, CLEAN_STOP)) == 2
    assert _events(db, UNCLEAN_STOP) == []


# --------------------------------------------------------------------------
# the demo's plant lives in a process of its own
# --------------------------------------------------------------------------
def _plant_line(run: subprocess.Popen) -> str:
    for line in run.stdout:
        if line.strip().startswith("plant:"):
            return line
    raise AssertionError("run printed no plant line")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _heartbeat(port: int, pmap: PointMap) -> float:
    async with ModbusIO(pmap, Endpoint("tcp", "127.0.0.1", port), timeout_s=1.0) as io:
        return (await io.read_points(["plc.heartbeat"]))["plc.heartbeat"]


@pytest.mark.timeout(240)
def test_kill_minus_9_leaves_the_demo_plant_serving_and_the_restart_records_the_gap(
    tmp_path, demo_pmap: PointMap
):
    port = _closed_port()
    db = tmp_path / "demo.db"

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*CLI, "run", "--db", str(db), *args, "--no-opcua", "--no-console"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )

    plant_pid = None
    run = start("--plant-port", str(port))  # the demo: it starts its plant
    try:
        plant_pid = int(_plant_line(run).split("process ")[1].split()[0])
        _wait("the controller to scan the plant", lambda: _telemetry_rows(db) >= 2)
        os.kill(run.pid, signal.SIGKILL)  # no goodbye: nothing is marked on the way out
        reap(run, 10)
        last_row_t = _newest_row_t(db)  # what the killed run left committed
        assert _events(db, CLEAN_STOP) == [] and _events(db, UNCLEAN_STOP) == []
        # the plant (the PLC) goes on serving on its own and nobody beats its heart: its
        # watchdog takes the safe state (test_controller_realtime pins that part)
        assert _alive(plant_pid)
        first = asyncio.run(_heartbeat(port, demo_pmap))
        time.sleep(1.5)
        assert asyncio.run(_heartbeat(port, demo_pmap)) == first

        # the restart (configured for that plant, without the model: a quicker start;
        # the demo's attaching is pinned below) finds the unclean stop
        run = start("--config", str(_write_config(tmp_path, port=port)))
        _wait("the unclean stop to be recorded", lambda: _events(db, UNCLEAN_STOP))
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out
        assert _alive(plant_pid)  # not its plant: a clean stop leaves it serving
    finally:
        if run.poll() is None:
            run.kill()
        reap(run, 10)
        if plant_pid is not None and _alive(plant_pid):
            os.kill(plant_pid, signal.SIGINT)
            _wait("the plant to stop", lambda: not _alive(plant_pid), 30)
    [unclean] = _events(db, UNCLEAN_STOP)
    gap = unclean["data"]["gap_s"]
    assert unclean["data"]["last_row_t"] == last_row_t
    assert gap > 0 and gap == pytest.approx(unclean["t"] - last_row_t)
    assert "did not stop cleanly" in unclean["message"]
    assert f"{gap:.1f} s before this start" in unclean["message"]
    # the restart stopped cleanly: marked so, after everything else it recorded
    [clean] = _events(db, CLEAN_STOP)
    assert clean["t"] == _newest_row_t(db)
    con = sqlite3.connect(db)
    try:
        (marker,) = con.execute(
            "SELECT value FROM state WHERE key = ?", (RUN_STATE_KEY,)
        ).fetchone()
    finally:
        con.close()
    assert json.loads(marker)["running"] is False


def test_the_demo_plant_runs_as_a_child_stopped_by_the_run_that_started_it(tmp_path):
    cfg = replace(
        load_run_config(None, str(tmp_path / "d.db")), plant_port=_closed_port()
    )  # fmt: skip

    async def scenario() -> None:
        own = await DemoPlant.start(cfg)
        try:
            assert own.proc is not None and own.proc.poll() is None
            assert own.price_feed is not None and math.isfinite(own.price_feed(time.time()))
            other = await DemoPlant.start(cfg)  # a second run attaches ...
            assert other.proc is None and "attached" in other.describe
            other.stop()  # ... and its stop leaves the plant alone
            assert own.proc.poll() is None
        finally:
            own.stop()
        assert own.proc.returncode == 0  # stopped as from Ctrl-C, cleanly

    asyncio.run(scenario())
    assert "thermogate plant: stopped" in (tmp_path / "d.plant.log").read_text()


def test_the_demo_hall_starts_under_its_import_limit_so_run_opens_on_no_power_alarm(
    tmp_path, demo_pmap: PointMap
):
    # The demo plant starts as its PLC holds a hall no controller has run yet (mining
    # off, GPUs at the safe cap). At every load's rating it stood at ~3,900 kW over
    # the demo's 2,870 kW import limit, and the run's first scan raised an alarm
    # and shed mining for a state no controller had made.
    port = _closed_port()
    cfg = replace(
        load_run_config(None, str(tmp_path / "d.db")),
        plant_port=port,
        endpoints=Endpoint("tcp", "127.0.0.1", port),
    )

    async def site_kw() -> float:
        async with ModbusIO(demo_pmap, cfg.endpoints, timeout_s=1.0) as io:
            return (await io.read_points(["site.power_kw"]))["site.power_kw"]

    async def scenario() -> float:
        plant = await DemoPlant.start(cfg)
        try:
            before = await site_kw()
            rt = RealTimeController(cfg)
            try:
                for _ in range(5):
                    await rt.scan_once()
            finally:
                await rt.close()
        finally:
            plant.stop()
        return before

    before_kw = asyncio.run(scenario())
    assert 0.0 < before_kw < cfg.site.import_limit_kw
    db = tmp_path / "d.db"
    assert [e for e in _events(db, "alarm") if "import" in e["message"]] == []
    assert _events(db, "shed") == []


def _config_banner(cfg: Path) -> list[str]:
    """What ``run --config`` prints before it scans (then it is stopped)."""
    run = subprocess.Popen(
        [*CLI, "run", "--config", str(cfg), "--no-opcua", "--no-console"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cfg.parent,
    )
    banner: list[str] = []
    try:
        for line in run.stdout:
            banner.append(line.rstrip("\n"))
            if "Ctrl-C to stop" in line:
                break
    finally:
        run.send_signal(signal.SIGINT)
        reap(run, 60)
    return banner


def test_with_a_configuration_the_banner_says_where_every_unit_is_reached(
    tmp_path, demo_pmap: PointMap
):
    """It said "configured devices": a commissioning engineer could not see which
    gateway or serial line each unit was expected on."""
    port = _closed_port()
    banner = _config_banner(_write_config(tmp_path, port=port))
    [line] = [ln for ln in banner if "plant:" in ln]
    n = len(demo_pmap.unit_ids())
    assert f"plant:    tcp 127.0.0.1:{port}: {n} units: 1, 10-12, " in line, line
    assert not [ln for ln in banner if "watchdog:" in ln]  # one PLC: its heartbeat is all


def test_the_banner_names_further_plcs_that_have_no_heartbeat_of_their_own(tmp_path):
    """Only ``site --check`` said it: a run on a site spread over PLCs started without
    a word that two of them would keep running if the controller stopped."""
    spread = SiteSpec(asic_tanks=30, gpu_tanks=2, rack_rows=2, tanks_per_plc=12)
    banner = _config_banner(write_run_config(tmp_path, generate_site_toml(spread)))
    [said] = [ln for ln in banner if ln.startswith("  watchdog: ")]
    assert said.startswith("  watchdog: 2 further PLC(s), units 2-3, carry tanks or rows"), said
    assert "(only unit 1's)" in said and "keep running when the controller stops" in said


def test_a_run_that_cannot_start_its_opc_ua_server_stops_the_demo_plant_it_started(tmp_path):
    # The demo serves OPC UA on 4840: held here (or already held by someone else),
    # the face cannot start. The plant the run started went on serving, and the next
    # run attached to it instead of starting its own.
    port = _closed_port()
    holder = socket.socket()
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # in use already: the face cannot have it either
            holder.bind(("127.0.0.1", 4840))
            holder.listen()
        run = subprocess.run(
            [*CLI, "run", "--db", str(tmp_path / "d.db"), "--plant-port", str(port),
             "--no-console"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
    finally:
        holder.close()
    assert run.returncode == 2, run.stdout + run.stderr
    assert "the OPC UA server did not start" in run.stderr and "--no-opcua" in run.stderr
    plant_pid = int(run.stdout.split("process ")[1].split()[0])  # it had started one
    _wait("the demo plant to stop", lambda: not _alive(plant_pid), 30)
    assert not asyncio.run(_listening(port))  # nothing left serving the demo's port
    assert "thermogate plant: stopped" in (tmp_path / "d.plant.log").read_text()


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def test_the_demo_serves_opc_ua_on_the_port_asked_when_4840_is_taken(tmp_path):
    # A SCADA integrator's machine often has its own server on 4840: the demo's was
    # fixed there, and the only way past was --no-opcua (no OPC UA at all).
    from asyncua import Client

    port, ua_port = _closed_port(), _closed_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(OSError):  # in use already: as good for this test
        holder.bind(("127.0.0.1", 4840))
        holder.listen()
    run = subprocess.Popen(
        [*CLI, "run", "--db", str(tmp_path / "d.db"), "--plant-port", str(port),
         "--opcua-port", str(ua_port), "--no-console"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        banner = _line_with(run, "OPC UA:")
        assert f"opc.tcp://127.0.0.1:{ua_port}/thermogate" in banner, banner

        async def namespaces() -> list[str]:
            async with Client(f"opc.tcp://127.0.0.1:{ua_port}/thermogate", timeout=30) as c:
                return await c.get_namespace_array()  # anonymous, read-only, on loopback

        assert "urn:thermogate:site:demo-hybrid-hall" in asyncio.run(namespaces())
    finally:
        holder.close()
        run.send_signal(signal.SIGINT)
        reap(run, 60)
    assert run.returncode == 0


def test_opcua_port_is_refused_with_a_configuration_naming_its_endpoint_key(tmp_path):
    cfg = _write_config(tmp_path, port=_closed_port())
    run = subprocess.run(
        [*CLI, "run", "--config", str(cfg), "--opcua-port", "4841", "--no-console"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--opcua-port" in run.stderr and "[opcua] endpoint" in run.stderr


def _line_with(run: subprocess.Popen, text: str) -> str:
    assert run.stdout is not None
    for line in run.stdout:
        if text in line:
            return line
    raise AssertionError(f"run printed no line with {text!r}")
