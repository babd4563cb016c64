"""The ``thermogate`` command line, run as a real process.

A user's mistake is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import CSV_HEADER, build_point_map
from thermogate.plc.site import demo_site, demo_site_text, load_site

_SCRIPT = Path(sys.executable).with_name("thermogate")
#: The installed console script when there is one, else the module.
CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "thermogate.controller.cli"]


def run(*args: str, cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CMD, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and no traceback; returns stderr's last line (the error; argparse adds usage)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    return lines[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_names() -> list[str]:
    return [p.name for p in build_point_map(demo_site())]


# --------------------------------------------------------------------------
# points
# --------------------------------------------------------------------------
def test_points_csv_parses_into_every_point(demo_names):
    proc = run("points", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    reader = csv.DictReader(io.StringIO(proc.stdout))
    assert tuple(reader.fieldnames) == CSV_HEADER
    rows = list(reader)
    assert [r["name"] for r in rows] == demo_names
    assert {r["table"] for r in rows} <= {"coil", "discrete", "input", "holding"}


def test_points_default_format_is_csv():
    proc = run("points")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == ",".join(CSV_HEADER)


def test_points_md_lists_every_point(demo_names):
    proc = run("points", "--format", "md")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| name | unit_id | table | address |")
    assert [ln.split(" | ")[0][2:] for ln in lines[2:]] == demo_names


def test_points_json_lists_every_point(demo_names):
    proc = run("points", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert [i["name"] for i in items] == demo_names
    assert all({"unit_id", "table", "address", "type", "scale", "access"} <= set(i) for i in items)


def test_points_of_a_site_file(tmp_path):
    proc = run(
        "site", "--tanks", "3", "--gpu-tanks", "1", "--rows", "1", "-o", str(tmp_path / "s.toml")
    )
    assert proc.returncode == 0, proc.stderr
    proc = run("points", "--site", str(tmp_path / "s.toml"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    names = {i["name"] for i in json.loads(proc.stdout)}
    assert {"tank03.hashrate_ths", "gpu01.fluid_temp", "row1.enable", "plc.heartbeat"} <= names
    assert "gpu01.hashrate_ths" not in names  # the GPU tank
    assert "tank04.fluid_temp" not in names


def _demo_text() -> str:

    return demo_site_text()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("volume_l = 2000.0", "volume_l = -2000.0"), "tanks[0].volume_l"),
        (('loop = "loop1"', 'loop = "loop9"'), "tanks[0].loop"),
        (("scan_interval_s =", "scan_intervall_s ="), "site.scan_intervall_s"),
    ],
    ids=["range", "reference", "typo"],
)
def test_points_with_a_bad_site_is_one_line_and_exit_2(tmp_path, edit, key):
    bad = tmp_path / "bad.toml"
    bad.write_text(_demo_text().replace(*edit, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(bad)
    proc = run("points", "--site", str(bad))
    line = assert_user_error(proc)
    assert proc.stderr == f"thermogate: error: {bad}: {key}: {info.value.reason}\n"
    assert line.startswith(f"thermogate: error: {bad}: {key}: ")
    assert proc.stdout == ""


@pytest.mark.parametrize("case", ["syntax", "missing", "directory", "not-utf8"])
def test_points_with_an_unreadable_site_is_one_line_and_exit_2(tmp_path, case):
    path = tmp_path / "bad.toml"
    if case == "syntax":
        path.write_text('[site]\nname = "x"\nimport_limit_kw = = 5\n', encoding="utf-8")
        words = ("TOML syntax error", "line 3")
    elif case == "missing":
        words = ("not found",)
    elif case == "directory":
        path.mkdir()
        words = ("directory",)
    else:
        path.write_bytes(b'[site]\nname = "Halle \xe9"\n')
        words = ("UTF-8",)
    proc = run("points", "--site", str(path))
    line = assert_user_error(proc, *words)
    assert proc.stderr == line + "\n"
    assert line.startswith(f"thermogate: error: {path}: ")


# --------------------------------------------------------------------------
# site
# --------------------------------------------------------------------------
def test_site_generates_a_large_file_that_checks_with_over_10000_points(tmp_path):
    out = tmp_path / "f.toml"
    proc = run("site", "--tanks", "400", "--tanks-per-plc", "12", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    proc = run("site", "--check", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["points"] >= 10_000
    assert info["tanks_asic"] == 400
    assert info["source"] == str(out)
    # spread over PLCs that get no heartbeat of their own: said on stderr, not refused
    [note] = proc.stderr.splitlines()
    # the further PLCs as ranges, their count beside (a 1,000-tank site has 156)
    assert note.startswith("note: 41 further PLC(s), units 2-9, 11-43, carry tanks or rows")
    assert "no heartbeat of their own" in note
    demo = run("site", "--check", str(Path(__file__).parents[1] / "plc/data/demo_site.toml"))
    assert demo.returncode == 0 and demo.stderr == ""


def test_site_too_large_without_plc_spreading_is_a_user_error():
    proc = run("site", "--tanks", "400")
    assert_user_error(proc, "--tanks-per-plc")


def test_site_needing_more_plcs_than_unit_ids_is_one_line_saying_what_to_raise():
    proc = run("site", "--tanks", "1000", "--tanks-per-plc", "4")
    line = assert_user_error(proc, "313 PLC unit ids", "raise --tanks-per-plc to at least 6")
    assert proc.stderr.strip() == line


def test_site_output_into_a_missing_directory_is_a_user_error(tmp_path):
    proc = run("site", "-o", str(tmp_path / "no" / "such" / "f.toml"))
    assert_user_error(proc, str(tmp_path / "no" / "such" / "f.toml"))


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------
def test_bench_plant_json_reports_a_consistent_speedup():
    proc = run("bench", "plant", "--hours", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["sim_seconds"] == pytest.approx(720.0, abs=1.0)
    assert r["wall_seconds"] > 0
    assert r["speedup"] > 0
    # wall_seconds is rounded to 1 ms: allow for that plus the speedup's rounding
    rel = 0.0005 / r["wall_seconds"] + 0.01
    assert r["sim_seconds"] / r["wall_seconds"] == pytest.approx(r["speedup"], rel=rel)


# --------------------------------------------------------------------------
# bad option values
# --------------------------------------------------------------------------
BAD_OPTIONS = [
    (("plant", "--port", "99999"), ("--port", "99999")),
    (("plant", "--port", "http"), ("--port", "http")),
    (("plant", "--speed", "-1"), ("--speed", "-1")),
    (("plant", "--speed", "nan"), ("--speed",)),
    (("plant", "--duration", "0"), ("--duration",)),
    (("bench", "plant", "--hours", "0"), ("--hours",)),
    (("site", "--tanks", "-1"), ("--tanks",)),
    (("site", "--gpu-tanks", "-3"), ("--gpu-tanks",)),
    (("site", "--rows", "-1"), ("--rows",)),
    (("points", "--format", "xml"), ("--format", "xml")),
]


@pytest.mark.parametrize(("args", "words"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_value_exits_2_with_a_message(args, words):
    proc = run(*args, timeout=30)
    line = assert_user_error(proc, *words)
    assert "error" in line
    assert proc.stdout == ""


# --------------------------------------------------------------------------
# plant
# --------------------------------------------------------------------------
class Lines:
    """Read a child's stdout line by line with a deadline (never hangs a test)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""
        self.seen: list[str] = []
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def until(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self.seen.append(line.decode())
                if text in self.seen[-1]:
                    return self.seen[-1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} within {timeout} s; saw {self.seen}")
            if self.sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"exited before {text!r}; saw {self.seen}")
                self.buf += chunk


def read_heartbeat(port: int) -> int:
    """One raw Modbus TCP request: read holding register 0 (plc.heartbeat) of unit 1.

    The answer comes from the plant's event loop, so once it arrives the plant
    is past its start-up and running (a TCP connect alone would be accepted by
    the kernel's backlog before that).
    """
    request = struct.pack(">HHHBBHH", 7, 0, 6, 1, 3, 0, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        reply = b""
        while len(reply) < 11:
            chunk = s.recv(64)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    tid, proto, length, unit, func, count, value = struct.unpack(">HHHBBBH", reply[:11])
    assert (tid, proto, length, unit, func, count) == (7, 0, 5, 1, 3, 2), reply
    return value


def _start_plant(*args: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([*CMD, "plant", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, Lines(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_plant_with_duration_serves_then_exits_by_itself():
    port = free_port()
    proc, out = _start_plant("--duration", "3", "--port", str(port))
    try:
        where = out.until("serving")
        assert f"127.0.0.1:{port}" in where
        read_heartbeat(port)  # it really serves Modbus where it says
        out.until("stopped", timeout=20)
        assert proc.wait(20) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err
    finally:
        _stop(proc)


def test_plant_stops_cleanly_on_sigint():
    port = free_port()
    proc, out = _start_plant("--port", str(port))
    try:
        out.until("Ctrl-C to stop")
        read_heartbeat(port)
        proc.send_signal(signal.SIGINT)
        line = out.until("stopped", timeout=10)
        assert "thermogate plant: stopped" in line
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        _stop(proc)


def test_plant_on_a_busy_port_is_a_user_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run("plant", "--port", str(port), "--duration", "2", timeout=30)
    line = assert_user_error(proc, str(port))
    assert line.startswith("thermogate: error: cannot serve the plant: "), line
