"""The console as ``thermogate run`` starts it: the demo's pseudo-terminal, a
configured device that is missing at start, the ``[console]`` section, and the
pacing of what it writes."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_rig import Socat, Term

from thermogate.controller.bench import listens, reap
from thermogate.controller.console import ConsoleConfig, ConsoleFace
from thermogate.controller.console.port import Pacer
from thermogate.controller.historian.reader import HistoryReader
from thermogate.controller.runconfig import load_run_config
from thermogate.controller.users import UserStore
from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site, demo_site_text

CLI = [sys.executable, "-m", "thermogate.controller.cli"]


class Recorder:
    """A line that records what was written to it, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def read(self, n: int) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        pass


def test_output_is_paced_no_faster_than_9600_baud_carries_it():
    slept: list[float] = []
    pacer = Pacer(9600, sleep=slept.append)
    data = bytes(range(32, 127)) * 40  # 3,800 bytes: four seconds of a 9600-baud line
    line = Recorder()
    pacer.write(line, data)
    assert b"".join(line.chunks) == data  # in order, all of it
    assert max(len(c) for c in line.chunks) <= 48  # 50 ms of the line at a time
    assert sum(slept) >= len(data) / 960.0 - 1e-9
    assert len(slept) == len(line.chunks)  # a pause after every chunk


def test_pacing_off_writes_at_once():
    slept: list[float] = []
    line = Recorder()
    Pacer(9600, enabled=False, sleep=slept.append).write(line, b"x" * 5000)
    assert line.chunks == [b"x" * 5000] and not slept


def test_the_demo_console_is_a_pty_that_screen_or_pyserial_opens(tmp_path):
    site = demo_site()
    with UserStore(tmp_path / "h.db"):
        pass
    slept: list[float] = []
    face = ConsoleFace(
        site, build_point_map(site), ConsoleConfig(), tmp_path / "h.db",
        audit=lambda a: None, sleep=slept.append,
    )  # fmt: skip
    [line] = face.start()
    try:
        assert re.fullmatch(r"console:  (/dev/pts/\d+) \(9600 8N1; screen \1 9600\)", line), line
        t = Term(face.path, 9600)
        t.sync()
        before = sum(slept)
        out = t.cmd("help")
        assert "override ACTUATOR VALUE [for 10m]" in out
        # the help went out at 9600 baud: at least its length / 960 s of pauses
        assert sum(slept) - before >= len(out) / 960.0
        assert t.cmd("status") == "no scan yet: the controller has not published a picture\n"
        t.close()
    finally:
        face.stop()


def test_a_console_section_is_checked_like_every_other(tmp_path):
    (tmp_path / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    base = '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\n'

    def load(console: str):
        (tmp_path / "c.toml").write_text(base + "[console]\n" + console, encoding="utf-8")
        return load_run_config(str(tmp_path / "c.toml"), None)

    cfg = load('device = "/dev/ttyUSB0"\nidle_timeout_min = 2\nansi = true\n').console
    assert cfg == ConsoleConfig("/dev/ttyUSB0", 9600, 120.0, 5, 300.0, True, True)
    with pytest.raises(ConfigError, match=r"console.baudrate.*9601 is not a standard rate"):
        load('device = "/dev/ttyS0"\nbaudrate = 9601\n')
    with pytest.raises(ConfigError, match=r"idle_timeout"):
        load('device = "/dev/ttyS0"\nidle_timout_min = 5\n')
    with pytest.raises(ConfigError, match=r"not a device path"):
        load('device = "ttyS0"\n')
    no_console = tmp_path / "n.toml"
    no_console.write_text(base, encoding="utf-8")
    assert load_run_config(str(no_console), None).console is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_thermogate_run_opens_a_device_missing_at_start_once_it_appears(tmp_path: Path):
    """Done means: `thermogate run` says where the console is; a technician logs in,
    sees the status, overrides a pump for a while and watches it go back to auto,
    all audited."""
    port = _free_port()
    (tmp_path / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    line = Socat(tmp_path / "ttyCONSOLE", tmp_path / "ttyLAPTOP")
    (tmp_path / "controller.toml").write_text(
        f'[controller]\nsite = "site.toml"\ndb = "site.db"\nscan_s = 0.5\n'
        f'[modbus]\nhost = "127.0.0.1"\nport = {port}\n[model]\nenabled = false\n'
        f'[console]\ndevice = "{line.a}"\nbaudrate = 115200\n',
        encoding="utf-8",
    )
    with UserStore(tmp_path / "site.db") as users:
        users.add("tech", "operator", "4321", by="test")
    plant = subprocess.Popen(
        [*CLI, "plant", "--site", str(tmp_path / "site.toml"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run = None
    try:
        end = time.monotonic() + 30
        while not listens(port):
            assert time.monotonic() < end, "the plant does not listen"
            time.sleep(0.1)
        run = subprocess.Popen(
            [*CLI, "run", "--config", str(tmp_path / "controller.toml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert run.stdout is not None
        head = [run.stdout.readline() for _ in range(4)]
        assert any(f"console:  {line.a} (115200 8N1" in h for h in head), head
        time.sleep(1.5)  # the device is not there yet: a warning and a retry, not a stop
        assert run.poll() is None
        line.start()  # the USB-serial adapter is plugged in
        t = Term(str(line.b))
        t.sync()
        assert t.login("tech") == "logged in as tech (role operator)\n"
        assert "mode AUTO" in t.cmd("status")
        assert "pump of loop1" in t.cmd("show loop1.pump_b")
        out = t.cmd("override loop1.pump_b.speed_cmd 60 for 3s")
        assert out == "loop1.pump_b.speed_cmd overridden to 60 % for 3 s by console:tech\n"
        end = time.monotonic() + 20
        while "HAND" in t.cmd("show loop1.pump_b.speed_cmd") or time.monotonic() < end - 16:
            assert time.monotonic() < end, "the override did not end"
            time.sleep(0.5)
        assert t.cmd("logout") == "tech logged out\n"
        t.close()
        time.sleep(1.5)  # the run loop stores the console's audit rows between scans
        with HistoryReader(tmp_path / "site.db") as r:
            rows = [
                a
                for a in r.audit(limit=1_000_000)
                if a["point"] in ("loop1.pump_b.speed_cmd", "console.login")
            ]
        mine = [(a["who"], a["where"], a["point"]) for a in rows if a["who"] == "tech"]
        assert ("tech", "console", "console.login") in mine
        assert ("tech", "console", "loop1.pump_b.speed_cmd") in mine
        assert any("expired" in a["why"] and a["who"] == "controller" for a in rows)
        assert any("logged out" in a["why"] for a in rows if a["point"] == "console.login")
    finally:
        if run is not None:
            run.terminate()
            reap(run, 20)
        plant.terminate()
        reap(plant, 10)
        line.stop()
