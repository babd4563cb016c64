"""``thermogate run`` killed with SIGKILL and restarted: what people decided is back.

Real processes over real sockets: the simulated plant served by ``thermogate
plant``, the controller by ``thermogate run --config``, commands given with
``thermogate command`` as an authenticated user through the shared database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thermogate.controller.bench import listens, reap
from thermogate.controller.users import UserStore
from thermogate.plc.site import demo_site_text

CLI = [sys.executable, "-m", "thermogate.controller.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _command(tmp: Path, *args: str, user: str = "olga", secret: str = "op-secret"):
    cmd = [*CLI, "command", *args, "--db", str(tmp / "site.db"), "--user", user]
    return subprocess.run(
        [*cmd, "--password-stdin", "--wait", "60"],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )


def _saved(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT value FROM state WHERE key = 'controller'").fetchone()
    finally:
        con.close()
    return json.loads(row[0]) if row else {}


def _events(db: Path, like: str) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT message FROM events WHERE message LIKE ?", (like,)).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


@pytest.fixture
def site_dir(tmp_path: Path):
    """A served demo plant and a controller configuration pointing at it."""
    port = _free_port()
    (tmp_path / "site.toml").write_text(demo_site_text(), encoding="utf-8")
    (tmp_path / "controller.toml").write_text(
        f"""
[controller]
site = "site.toml"
db = "site.db"
scan_s = 0.5

[modbus]
host = "127.0.0.1"
port = {port}

[model]
enabled = false
""",
        encoding="utf-8",
    )
    plant = subprocess.Popen(
        [*CLI, "plant", "--site", str(tmp_path / "site.toml"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait("the plant to listen", lambda: listens(port))
    with UserStore(tmp_path / "site.db") as users:
        users.add("olga", "operator", "op-secret", by="test")
    try:
        yield tmp_path
    finally:
        plant.terminate()
        plant.wait(10)


def _start_run(tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "run", "--config", str(tmp / "controller.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp,
    )


@pytest.mark.timeout(600)
def test_state_given_through_the_command_path_survives_a_kill_minus_9(site_dir: Path):
    tmp = site_dir
    db = tmp / "site.db"
    run = _start_run(tmp)
    try:
        r = _command(tmp, "override", "tank01.valve_cmd", "70", "--for", "1h", "--why", "HX check")
        assert r.returncode == 0, r.stdout + r.stderr
        for args in (
            ("setpoint", "loop1_supply", "33.5"),
            ("curtail", "2000", "--for", "2h"),
            ("mode", "manual"),
        ):
            r = _command(tmp, *args)
            assert r.returncode == 0, r.stdout + r.stderr
        until = _saved(db)["overrides"]["tank01.valve_cmd"]["until"]
        # the estimator's slow memory is saved on the run's own schedule (10 s)
        _wait("the estimator's state to be saved", lambda: _saved(db).get("estimator"))
    finally:
        os.kill(run.pid, signal.SIGKILL)  # no goodbye: nothing gets saved on the way out
        reap(run, 10)

    run = _start_run(tmp)
    try:
        _wait("the state to be restored", lambda: _events(db, "state restored:%"))
        restored = _events(db, "state restored:%")[-1]
        assert "mode manual, 1 overrides" in restored and "1 curtailments" in restored
        saved = _saved(db)
        assert saved["overrides"]["tank01.valve_cmd"]["until"] == until  # expiry kept
        assert saved["setpoints"] == {"loop1_supply": 33.5}
        assert [c["limit_kw"] for c in saved["curtailments"]] == [2000.0]
        # the override is live again: ending it finds it, with its value
        r = _command(tmp, "auto", "tank01.valve_cmd")
        assert r.returncode == 0 and "back to auto" in r.stdout, r.stdout + r.stderr
        back = "SELECT old FROM audit WHERE point = ? AND why LIKE '%back to auto%'"
        audit = sqlite3.connect(db).execute(back, ("tank01.valve_cmd",)).fetchall()
        assert audit == [(70.0,)]
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
        reap(run)
    assert "stopped after" in out, out


def test_a_second_run_on_the_same_database_is_refused_naming_the_first(tmp_path):
    """Two controllers on one database fought over the plant (374 foreign-write
    events in 30 s) and the second recorded the first as an unclean stop."""

    from thermogate.controller.runlock import DatabaseInUse, RunLock

    db = tmp_path / "thermogate.db"
    first = RunLock(db)
    with pytest.raises(
        DatabaseInUse, match=rf"in use by another thermogate run \(pid {os.getpid()}\)"
    ):
        RunLock(db)
    first.release()
    first.release()  # idempotent
    again = RunLock(db)  # released: the next run may have it
    again.release()


def test_an_override_that_ran_out_while_the_controller_was_down_is_not_counted_restored(
    tmp_path,
):
    """An override whose expiry passed while the controller was down was counted
    as restored ('1 overrides'), then ended at the restart's first scan."""
    from thermogate.controller.core.state import Override
    from thermogate.controller.modbus_io import Endpoint
    from thermogate.controller.run import RealTimeController
    from thermogate.controller.runconfig import RunConfig
    from thermogate.plc.site import demo_site

    cfg = RunConfig(demo_site(), tmp_path / "h.db", Endpoint("tcp", "127.0.0.1", 1), 1.0, 0.25,
                    built_in_plant=False, forecast=False)  # fmt: skip
    t0 = 1_800_000_000.0

    def close(rt: RealTimeController) -> None:
        rt.historian.close()
        rt.inbox.close()
        rt.users.close()
        rt.lock.release()

    first = RealTimeController(cfg, clock=lambda: t0)
    # (an override given before the restart, as the state file keeps it)
    first.ctrl.state.overrides["tank01.valve_cmd"] = Override(
        80.0, "olga", "cli", "HX check", t0, t0 + 600.0
    )
    first.save_state()
    close(first)
    again = RealTimeController(cfg, clock=lambda: t0 + 3600.0)
    try:
        again.historian.flush()
        [msg] = [e["message"] for e in again.historian.events() if e["kind"] == "info"
                 and e["message"].startswith("state restored:")]  # fmt: skip
        assert "0 overrides" in msg and "1 overrides ran out while it was down" in msg, msg
    finally:
        close(again)
