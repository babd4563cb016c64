"""The technician's console through real pseudo-terminals, pyserial on the far end,
with a real controller scanning the served plant over Modbus TCP.

Every command's happy path, login and its refusals, an override that runs out,
the audit of every change, random bytes on the wire while the scan goes on, and
a serial device that vanishes and comes back.
"""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
from console_rig import PINS, ControllerRig, Term, until

from thermogate.controller.console import ConsoleConfig
from thermogate.controller.historian.reader import HistoryReader
from thermogate.controller.users import UserStore

pytestmark = pytest.mark.timeout(120)

CONSOLES = {
    "main": ConsoleConfig(baudrate=115200, pace=False),
    "strict": ConsoleConfig(
        baudrate=115200, pace=False, idle_timeout_s=1.5, max_failed=2, lockout_s=2.0
    ),
    "fuzz": ConsoleConfig(baudrate=115200, pace=False),
    "flaky": ConsoleConfig(baudrate=115200, pace=False),
}
PUMP = "loop1.pump_a.speed_cmd"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = ControllerRig(tmp_path_factory.mktemp("console"), CONSOLES)
    r.start()
    yield r
    r.close()


@pytest.fixture
def term(rig):
    t = Term(rig.term_path("main"))
    t.sync()
    yield t
    t.cmd("logout")
    t.close()


def audit(rig, since: float, **match) -> list[dict]:
    with HistoryReader(rig.db) as r:  # every row: the reader's default is the newest 1,000
        rows = r.audit(since - 1.0, limit=1_000_000)
        return [a for a in rows if all(a[k] == v for k, v in match.items())]


# -- reading: no login -----------------------------------------------------------
def test_help_lists_every_command_one_line_each_and_help_cmd_gives_usage(term):
    out = term.cmd("help")
    for verb in ("status", "show", "alarms", "ack", "trend", "mode", "set", "override",
                 "auto", "reset", "login", "logout", "whoami"):  # fmt: skip
        assert re.search(rf"^[ *] {verb}\b", out, re.M), verb
    assert all(len(line) < 80 for line in out.splitlines())
    assert "usage: override ACTUATOR VALUE [for 10m]" in term.cmd("help ov")


def test_status_summarises_mode_power_temperatures_alarms_and_workloads(term):
    out = term.cmd("status")
    assert "mode AUTO" in out and "site import" in out and "limit" in out
    assert re.search(r"hottest tanks: tank\d\d \d+\.\d/60", out)
    assert "loop1 supply" in out and "alarms:" in out and "grid:" in out
    assert re.search(r"mining \d+ kW \(\d+/12 enabled\)", out)
    assert all(len(line) < 80 and line.isascii() for line in out.splitlines())
    assert "\x1b" not in out  # no ANSI unless enabled


#: a value's quality as shown (a loaded host may make a read late: stale is shown so)
QUALITY = r"(GOOD|UNCERTAIN \(\w+\)|BAD \(\w+\))"


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("tank01", r"tank01 \(tank, mining, on loop1\): fluid alarm 60 degC"),
        ("loop1", r"cooling loop"),
        ("loop1.pump_a", rf"pump of loop1\)\n  speed_cmd +\d+\.\d %  +{QUALITY}"),
        ("loop1.dc1", r"dry cooler of loop1"),
        ("row1", r"rack row, training"),
        ("feeder_m1", r"feeder\): breaker"),
        ("pdu_tank01", r"PDU on feeder_m"),
        ("cdu1", r"CDU on ailoop1"),
        ("loop1_supply", r"control loop loop1_supply: .* setpoint"),
        ("tank01.fluid_temp", rf"tank01.fluid_temp = \d+\.\d degC +{QUALITY}\n  range"),
        ("tank01.water_o", r"tank01.water_out_temp = "),  # a unique prefix will do
    ],
)
def test_show_gives_values_with_units_and_quality(term, name, expect):
    assert re.search(expect, term.cmd(f"show {name}")), name


def test_names_and_commands_that_do_not_resolve_are_answered_with_help(term):
    assert "did you mean status" in term.cmd("stauts")
    assert "'s' is ambiguous" in term.cmd("s tank01")
    out = " ".join(term.cmd("show tank1").split())  # equipment, not each of its points
    assert out == (
        "'tank1' is ambiguous: tank10, tank10_fluid, tank11, tank11_fluid, tank12, "
        "tank12_fluid (and their points)"
    )
    assert "did you mean" in term.cmd("show tnak01")
    assert "usage: show NAME" in term.cmd("show")


def test_alarms_list_keys_that_ack_accepts(rig, term):
    snap = rig.faces["main"]._seen.snap
    pending = [a.key for a in snap.alarms if not a.acked]
    out = term.cmd("alarms")
    if not pending:  # the plant started within its limits this time
        assert out.startswith("no active or unacknowledged alarms")
        return
    assert pending[0] in out and "UNACKED" in out
    term.login("tech")
    assert f"acknowledged by console:tech: {pending[0]}" in term.cmd(f"ack {pending[0]}")


def test_trend_draws_a_sparkline_from_the_historian(rig, term):
    out = until(lambda: (o := term.cmd("trend site.power_kw 5m")) and "samples" in o and o)
    assert out and "site.power_kw, last 5 min" in out
    spark = out.splitlines()[1]
    assert spark.startswith("  |") and spark.endswith("|") and len(spark) == 64
    assert re.search(r"min \d+\.\d\d kW  max \d+\.\d\d kW  last \d+\.\d\d kW", out)


def test_mode_without_an_argument_shows_it(term):
    assert term.cmd("mode").startswith("mode auto")


# -- changing: login, roles, the command path ---------------------------------------
def test_a_write_without_login_is_refused_and_nothing_reaches_the_core(rig, term):
    t0 = time.time()
    out = term.cmd(f"override {PUMP} 55 for 1m")
    assert out.startswith("refused: log in first")
    assert term.cmd("set loop1_supply 30").startswith("refused: log in first")
    time.sleep(1.2)  # a scan or two: had it been queued, it would be given now
    assert PUMP not in rig.rt.ctrl.state.overrides
    assert not audit(rig, t0, where="console", point=PUMP)


def test_login_whoami_logout_and_a_prompt_with_the_user(rig, term):
    assert term.cmd("whoami").startswith("not logged in")
    assert term.login("tech") == "logged in as tech (role operator)\n"
    term.s.write(b"whoami\r")
    assert "Demo hybrid hall (tech)> " in term.read_until(re.compile(rb"\(tech\)> $"))
    assert term.cmd("logout") == "tech logged out\n"


def test_the_pin_is_not_echoed(term):
    term.cmd("login")
    term.cmd("tech")
    term.s.write(b"4321\r")
    got = term.read_until(re.compile(rb"\(tech\)> $"))
    assert "4321" not in got and "logged in as tech" in got


def test_every_change_goes_through_the_command_path_and_is_audited_as_console_user(rig, term):
    t0 = time.time()
    term.login("tech")
    assert "mode auto -> manual by console:tech" in term.cmd("mode manual # pump work")
    assert "mode manual -> auto by console:tech" in term.cmd("mode auto")
    assert re.search(
        r"loop1_supply setpoint \S+ -> 31 by console:tech", term.cmd("set loop1_sup 31")
    )
    rig.settled()
    assert "overridden to 55 % for 5 min by console:tech" in term.cmd(
        "override loop1.dc1.fan_cmd 55 for 5m"
    )
    assert "loop1.dc1.fan_cmd back to auto by console:tech" in term.cmd("auto loop1.dc1.fan_cmd")
    ack = term.cmd("ack all")
    assert "acknowledged by console:tech" in ack or "no unacknowledged alarms" in ack
    # the core's own refusal, verbatim: a setpoint beyond what the loop may take
    assert term.cmd("set loop1_supply 90").startswith("refused: setpoint 90 of loop1_supply")

    # wait for the last row written (the refusal), not for a count: "ack all" writes one
    # row per alarm it finds, so a count can be reached before the refusal lands
    def through_the_refusal() -> list[dict] | None:
        r = audit(rig, t0, where="console", who="tech")
        return r if any(a["point"].startswith("loop1_supply") and not a["ok"] for a in r) else None

    rows = until(through_the_refusal)
    points = [a["point"] for a in rows]
    assert {"mode", "loop1_supply.setpoint", "loop1.dc1.fan_cmd", "console.login"} <= set(points)
    assert any(a["why"].endswith("(pump work)") for a in rows if a["point"] == "mode")
    setpoints = [a["ok"] for a in rows if a["point"].startswith("loop1_supply")]
    assert setpoints == [True, False]  # the refusal is audited too


def test_a_viewers_write_is_refused_by_the_cores_role_check(rig, term):
    t0 = time.time()
    assert term.login("vic") == "logged in as vic (role viewer)\n"
    out = term.cmd(f"override {PUMP} 50 for 1m")
    assert out == "refused: console:vic has role viewer; OverrideActuator needs role operator\n"
    rows = until(lambda: audit(rig, t0, who="vic", point=PUMP))
    assert rows and rows[0]["where"] == "console" and not rows[0]["ok"]


def test_an_engineer_resets_the_interlocks(rig, term):
    term.login("erin")
    assert "reset requested by console:erin (console) for every latched trip" in term.cmd(
        "reset all"
    )
    assert "no tank or rack row 'tank99'" in term.cmd("reset tank99")


def _logged_in_then_removed(rig, term, name: str, pin: str) -> None:
    """``name`` logs in at the terminal, then an engineer removes the user."""
    with UserStore(rig.db) as users:
        users.add(name, "operator", pin, by="test")
    PINS[name] = (pin, "operator")
    term.login(name)
    with UserStore(rig.db) as users:
        users.remove(name, by="test")


def test_a_removed_users_session_loses_its_role_at_the_next_command(rig, term):
    _logged_in_then_removed(rig, term, "temp", "5555")
    out = term.cmd("mode manual")
    assert out.startswith("refused: temp logged out: the user no longer exists")
    assert rig.rt.ctrl.state.mode == "auto"


def test_whoami_asks_the_user_store_not_the_role_given_at_login(rig, term):
    """whoami once said "temp (role operator)" after temp had been removed."""
    _logged_in_then_removed(rig, term, "temp2", "6666")
    assert term.cmd("whoami").startswith("temp2 logged out: the user no longer exists")
    assert term.cmd("whoami").startswith("not logged in")


def test_an_override_expires_by_itself_and_the_pump_returns_to_auto_all_audited(rig, term):
    t0 = time.time()
    term.login("tech")
    rig.settled()
    # a value below the pump's command now: written at once (a raise is rate-limited),
    # and never the value it already has (nothing to write then)
    now = float(rig.rt.ctrl.values[rig.rt.pmap.position(PUMP)])
    x = round(max(40.0, now - 8.0) * 2.0) / 2.0
    # 8 s: several scans in hand even if a late read on a loaded host makes the
    # loop's zone fail-safe for one (protection then holds the pump, as it must)
    out = term.cmd(f"override {PUMP} {x:g} for 8s # seal check")
    assert out == f"{PUMP} overridden to {x:g} % for 8 s by console:tech\n"
    assert until(lambda: f"HAND {x:g} by console:tech" in term.cmd(f"show {PUMP}"), 8.0)
    assert until(lambda: PUMP not in rig.rt.ctrl.state.overrides, 15.0)
    assert "HAND" not in until(lambda: (o := term.cmd(f"show {PUMP}")) and "HAND" not in o and o)
    rows = until(
        lambda: (r := audit(rig, t0, point=PUMP)) and any("expired" in a["why"] for a in r) and r
    )
    mine = [a for a in rows if a["who"] == "tech"]
    assert mine[0]["where"] == "console" and mine[0]["new"] == x and "seal check" in mine[0]["why"]
    seen = [(round(a["t"] - t0, 2), a["who"], a["old"], a["new"], a["why"]) for a in rows]
    assert any(a["new"] == x for a in mine[1:]), seen  # the write, as tech
    gone = [a for a in rows if "expired" in a["why"]]
    assert gone[0]["who"] == "controller"


# -- the strict console: wrong PIN, lockout, idle timeout -----------------------------
def test_wrong_pins_lock_the_console_out_then_it_lets_the_right_pin_in(rig):
    t = Term(rig.term_path("strict"))
    t0 = time.time()
    try:
        t.sync()
        assert t.login.__self__ is t
        t.cmd("login"), t.cmd("tech")
        assert t.cmd("0000") == "login failed (unknown user or wrong PIN)\n"
        t.cmd("login"), t.cmd("nobody")
        assert "logins locked for 0:02 min" in t.cmd("1234")
        assert "login locked after 2 failed logins" in t.cmd("login")
        time.sleep(2.1)
        assert t.login("tech") == "logged in as tech (role operator)\n"
        rows = until(lambda: (r := audit(rig, t0, point="console.login")) and len(r) >= 4 and r)
        whys = [a["why"] for a in rows]
        assert any("login failed for 'tech'" in w for w in whys)
        assert any("console locked for 0:02 min after 2 failed logins" in w for w in whys)
        # idle: the session logs itself out with a message, on the line, unasked
        got = t.read_until(re.compile(rb"session timed out.*\r\nDemo hybrid hall> $"), 5.0)
        assert "logged out after" in got
        assert t.cmd("whoami").startswith("not logged in")
    finally:
        t.close()


# -- the wire: noise, and a device that goes away -------------------------------------
def test_random_bytes_on_the_wire_never_stop_the_console_or_the_scan(rig):
    rng = random.Random(13)
    junk = [b"\x1b[A", b"\x1b[1;5C", b"\x1bOP", b"\x00\x00", b"\xff\xfe", b"\x03", b"\x08\x7f"]
    seqs = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.5:
            seqs.append(rng.randbytes(rng.randint(1, 48)))
        elif kind < 0.7:
            seqs.append(
                bytes(rng.choice(range(32, 127)) for _ in range(rng.randint(1, 40))) + b"\r"
            )
        elif kind < 0.8:
            seqs.append(b"A" * rng.randint(150, 400) + rng.choice([b"\r", b"\n", b""]))
        else:
            seqs.append(b"".join(rng.choice(junk) for _ in range(rng.randint(1, 6))))
    t = Term(rig.term_path("fuzz"))
    stop = threading.Event()
    got = bytearray()

    def drain() -> None:  # the far end reads all along, as a terminal does
        while not stop.is_set():
            got.extend(t.s.read(4096))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    scans0 = rig.rt.scans
    try:
        for k in range(0, len(seqs), 50):
            t.s.write(b"".join(seqs[k : k + 50]))
            time.sleep(0.01)
        time.sleep(1.0)
        assert until(lambda: rig.rt.scans > scans0 + 5, 10.0), "the scan stopped"
    finally:
        stop.set()
        reader.join(2.0)
    assert rig.faces["fuzz"].port.alive
    assert got and all(b < 0x80 for b in got)  # answered in plain ASCII, whatever came in
    t.buf = b""
    t.s.write(b"\x15\r")
    t.sync()
    assert "mode AUTO" in t.cmd("status")
    scans1 = rig.rt.scans
    assert until(lambda: rig.rt.scans > scans1 + 2, 5.0)
    t.close()


def test_a_device_that_vanishes_and_returns_is_reopened_and_answers(rig):
    face = rig.faces["flaky"]
    t = Term(rig.term_path("flaky"))
    t.sync()
    t0 = time.time()
    assert t.login("tech").startswith("logged in")
    opened = face.port.opened
    t.close()
    rig.socats["flaky"].stop()  # the USB-serial adapter is pulled
    assert until(lambda: face.port.errors > 0, 5.0)
    time.sleep(1.5)  # at least one failed reopen while it is gone
    scans = rig.rt.scans
    rig.socats["flaky"].start()  # ... and plugged in again
    assert until(lambda: face.port.opened > opened, 10.0), "not reopened"
    t = Term(rig.term_path("flaky"))
    try:
        t.sync()
        assert t.cmd("whoami").startswith("not logged in")  # a lost line ends the session
        assert "mode AUTO" in t.cmd("status")
    finally:
        t.close()
    assert rig.rt.scans > scans  # the scan went on throughout
    rows = until(lambda: audit(rig, t0, who="tech", point="console.login"))
    assert any("the serial line was lost" in a["why"] for a in rows)
