"""The console's shell and terminal, pure: the core in lockstep with the simulated
plant gives the snapshot, a fake command path takes the commands."""

from __future__ import annotations

import errno
import termios
import time

import numpy as np
import pytest
from console_rig import until

from thermogate.controller.console import ConsoleConfig, ConsoleFace
from thermogate.controller.console.console import Console
from thermogate.controller.console.port import ConsolePort, Pacer
from thermogate.controller.console.session import Session
from thermogate.controller.console.shell import Seen, Shell, sparkline, wrap
from thermogate.controller.core import Controller, OverrideActuator, ReturnToAuto, SetMode
from thermogate.controller.core.commands import Principal
from thermogate.controller.opcua.snapshot import Snapshot
from thermogate.controller.people import parse_duration
from thermogate.controller.signals import Observation
from thermogate.controller.users import AuthError
from thermogate.hil.runner import ScenarioPlant


@pytest.fixture(scope="module")
def snap(site) -> Snapshot:
    sim = ScenarioPlant(site, "normal-day", sensors=False)
    ctrl = Controller(site, sim.pmap)
    status = {}
    for _ in range(5):
        v = sim.plant.sensors.sample()
        res = ctrl.scan(Observation(sim.plant.t, v, np.ones(len(v), bool)))
        for w in res.writes:
            sim.plant.write(w.point, w.value)
        status = res.status
        sim.step()
    ctrl.command(SetMode("manual"), Principal("tech", "operator", "console"), sim.plant.t)
    return Snapshot.of(ctrl, status={**status, "mode": "manual"}, scans=5)


def test_a_sparkline_has_a_character_per_slot_a_gap_where_no_data_and_min_max_last():
    t = np.arange(0.0, 600.0, 10.0)
    x = np.where(t < 300, 20.0, 30.0)
    x[10:15] = np.nan
    out = sparkline("tank01.fluid_temp", "degC", t, x, 0.0, 600.0, width=60)
    bar = out.splitlines()[1]
    assert bar == "  |" + "_" * 10 + " " * 5 + "_" * 15 + "@" * 30 + "|"
    assert "min 20.00 degC  max 30.00 degC  last 30.00 degC" in out
    assert "no data in the last 10 min" in sparkline("x", "", t, t * np.nan, 0.0, 600.0)


def test_a_trend_of_days_names_its_dates_and_fits_80_columns():
    day = 86400.0
    t1 = 1_764_790_000.0  # 2025-12-03 19:26 UTC
    t = np.arange(t1 - 7 * day, t1, 600.0)
    out = sparkline("tank01.fluid_temp", "degC", t, 40.0 + np.sin(t / day), t1 - 7 * day, t1)
    assert out.splitlines()[0].endswith("samples, 11-26 19:26..12-03 19:26 UTC)"), out
    assert all(len(line) <= 79 for line in out.splitlines())
    short = sparkline("x", "", t[-6:], t[-6:] * 0.0, t1 - 3600.0, t1)
    assert short.splitlines()[0].endswith("samples, 18:26..19:26 UTC)"), short


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("7d", 604800.0),
        ("1d12h", 129600.0),
    ],
)
def test_a_duration_reads_days_hours_minutes_and_seconds(text, seconds):
    # The console's trend window is documented as 1m..7d, but "7d" was refused.
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["nan", "inf", "-5", "", "7x", "d"])
def test_a_duration_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_every_line_fits_80_columns():
    text = "a " * 100 + "\n" + "  indented " + "b" * 120
    assert all(len(line) <= 79 for line in wrap(text).splitlines())


def test_plain_ascii_unless_ansi_is_enabled(site, demo_pmap, snap):
    plain = Shell(site, demo_pmap).status(snap, 12.0)
    assert "\x1b" not in plain and plain.isascii() and "mode MANUAL" in plain
    assert "\x1b[1mMANUAL\x1b[0m" in Shell(site, demo_pmap, ansi=True).status(snap, 12.0)


def test_commands_become_records_for_the_command_path(site, demo_pmap, snap):
    sh = Shell(site, demo_pmap)
    seen = Seen(snap)
    r = sh.run("ov loop1.pump_a.speed_cmd 60 for 1m # seal", seen, 0.0)
    assert r.command == OverrideActuator("loop1.pump_a.speed_cmd", 60.0, 60.0, "seal")
    assert sh.run("override loop1.pump_a.spe 60", seen, 0.0).command == OverrideActuator(
        "loop1.pump_a.speed_cmd", 60.0, 600.0, ""
    )  # a unique prefix, the default 10 minutes
    assert sh.run("auto all", seen, 0.0).command == ReturnToAuto(None, "")
    assert sh.run("override loop1.pump_a.speed_cmd sixty", seen, 0.0).text == (
        "'sixty' is not a number"
    )
    assert "not a duration" in sh.run("override loop1.pump_a.speed_cmd 6 for ever", seen, 0.0).text
    typo = sh.run("override loop1.pump_a.speed_cnd 60", seen, 0.0)
    assert typo.command is None
    assert typo.text.startswith(
        "no actuator 'loop1.pump_a.speed_cnd' (did you mean loop1.pump_a.speed_cmd"
    )


def _console(site, pmap, snap, give) -> Console:
    def auth(name: str, pin: str) -> Principal:
        if (name, pin) != ("tech", "4321"):
            raise AuthError("no")
        return Principal("tech", "operator", "console")

    return Console(
        Shell(site, pmap), Session(), give=give, authenticate=auth,
        role_of=lambda name: "operator", seen=lambda: Seen(snap),
    )  # fmt: skip


class _Line:
    """A serial line that keeps what was written to it."""

    def __init__(self) -> None:
        self.closed = False
        self.out = bytearray()

    def read(self, n: int) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        self.out.extend(data)

    def close(self) -> None:
        self.closed = True


class _PulledLine(_Line):
    """A line whose adapter is pulled: pyserial's flush drains with tcdrain,
    which raises termios.error (not an OSError) on a vanished device."""

    def write(self, data: bytes) -> None:
        raise termios.error(errno.EIO, "Input/output error")


def test_a_line_lost_with_a_termios_error_is_counted_closed_and_reopened(site, demo_pmap, snap):
    pulled, good = _PulledLine(), _Line()
    lines = iter([pulled, good])
    port = ConsolePort(
        "usb0", lambda: next(lines), lambda: _console(site, demo_pmap, snap, lambda c, b: None),
        Pacer(9600, enabled=False),
    )  # fmt: skip
    port.start()
    try:
        assert until(lambda: port.opened == 2 and b"login" in bytes(good.out), 10.0, 0.02)
        assert port.errors == 1 and pulled.closed
        assert port.alive  # the port lives on: the lost line did not stop it
    finally:
        port.stop()
    assert not port.alive


def test_a_command_path_that_fails_is_answered_and_the_console_goes_on(site, demo_pmap, snap):
    def give(cmd, by):
        raise RuntimeError("database is locked")

    c = _console(site, demo_pmap, snap, give)
    c.feed(b"login\rtech\r4321\r", 0.0)
    out = c.feed(b"mode auto\r", 1.0).decode()
    assert "error: RuntimeError: database is locked (logged)" in out
    assert out.endswith("Demo hybrid hall (tech)> ")
    assert "mode MANUAL" in c.feed(b"status\r", 2.0).decode()


def test_a_command_the_controller_does_not_take_in_time_is_withdrawn(tmp_path, site, demo_pmap):
    face = ConsoleFace(
        site, demo_pmap, ConsoleConfig(), tmp_path / "h.db",
        audit=lambda a: None, give_timeout_s=0.2,
    )  # fmt: skip
    try:
        by = Principal("tech", "operator", "console")
        res = face.give(SetMode("manual"), by)  # no run loop serves it
        assert not res.accepted and "did not take the command within 0.2 s" in res.message
        given = []
        assert face.serve(lambda cmd, who: given.append(cmd)) == 0 and not given  # never late
    finally:
        face.stop()


def test_a_pin_after_a_break_or_typed_ahead_of_a_refused_login_is_never_echoed_nor_run(
    site, demo_pmap, snap
):
    """A break in the middle of a PIN echoed the rest of it at the command prompt
    (`no command '99'`); typed ahead of a locked-out login, the PIN was run as a
    command and shown."""
    given: list = []
    c = _console(site, demo_pmap, snap, lambda cmd, by: given.append(cmd))
    c.feed(b"login\rtech\r", 0.0)
    out = c.feed(b"43\x0021\r", 1.0).decode()
    assert "21" not in out and "no command" not in out, out
    assert "discarded" in out and c.session.user is None
    for k in range(5):  # lock the console out
        c.feed(b"login\rtech\r0000\r", 10.0 + k)
    out = c.feed(b"login\rtech\r4321\r", 20.0).decode()
    assert "locked" in out and "4321" not in out and "no command" not in out, out
    assert c.session.user is None and given == []


def test_a_line_with_lost_bytes_is_refused_never_run_altered(site, demo_pmap, snap):
    given: list = []
    c = _console(site, demo_pmap, snap, lambda cmd, by: given.append(cmd))
    c.feed(b"login\rtech\r4321\r", 0.0)
    out = c.feed(b"override tank03.valve_cmd \xb50 for 1m\r", 1.0).decode()
    assert "refused: bytes of that line were not plain text" in out
    assert given == []


def test_closing_the_demo_terminal_ends_the_session_and_the_next_one_is_greeted(
    site, demo_pmap, snap
):
    """The demo's pty held its own slave open, so a closed terminal went
    unseen: the next person to open it inherited `eng`'s session, unasked."""
    import serial

    from thermogate.controller.console.port import PtyLink

    c = _console(site, demo_pmap, snap, lambda cmd, by: None)
    pty = PtyLink()
    port = ConsolePort("pty", lambda: pty, lambda: c, Pacer(115200, enabled=False))
    port.start()

    def answer(t: serial.Serial, until_text: bytes, within: float = 10.0) -> bytes:
        got = b""
        end = time.monotonic() + within
        while until_text not in got and time.monotonic() < end:
            got += t.read(4096)
        assert until_text in got, got
        return got

    try:
        first = serial.Serial(pty.path, 115200, timeout=0.05)
        answer(first, b"'help' lists the commands")  # greeted as it opens
        first.write(b"login\rtech\r4321\r")
        answer(first, b"(tech)> ")
        first.close()
        time.sleep(1.0)  # a person: the next terminal opens later
        second = serial.Serial(pty.path, 115200, timeout=0.05)
        answer(second, b"'help' lists the commands")
        second.write(b"whoami\r")
        assert b"not logged in" in answer(second, b"> ")
        second.close()
    finally:
        port.stop()
    ended = [a.why for a in c.session.journal]
    assert any("tech" in w and "the terminal was closed" in w for w in ended), ended


def test_values_as_a_technician_types_them(site, demo_pmap, snap):
    """`60 %` after a value was taken for a duration, `off` for a bit was not a
    number, `3_2` was 32 (Python's digit grouping), `mode maint` was unknown."""
    sh, seen = Shell(site, demo_pmap), Seen(snap)
    cmd = sh.run("override tank01.valve_cmd 60 % for 2m", seen, 0.0).command
    assert isinstance(cmd, OverrideActuator) and (cmd.value, cmd.duration_s) == (60.0, 120.0)
    cmd = sh.run("override tank05.enable off", seen, 0.0).command
    assert isinstance(cmd, OverrideActuator) and cmd.value == 0.0
    bad = sh.run("set loop1_supply 3_2", seen, 0.0)
    assert bad.command is None and "'3_2' is not a number" in bad.text
    mode = sh.run("mode maint", seen, 0.0).command
    assert isinstance(mode, SetMode) and mode.mode == "maintenance"


def test_login_with_the_user_on_the_line_asks_only_for_the_pin(site, demo_pmap, snap):
    """`login tech` asked for the user again and took the next line, the PIN, as
    the user name: the PIN was echoed and the login failed."""
    c = _console(site, demo_pmap, snap, lambda cmd, by: None)
    out = c.feed(b"login tech\r", 0.0).decode()
    assert out.endswith("PIN: "), out
    out = c.feed(b"4321\r", 1.0).decode()
    assert "4321" not in out and "logged in as tech" in out
    assert c.session.user == "tech"
    # a PIN on the command line would be shown: refused, nothing asked
    c.feed(b"logout\r", 2.0)
    out = c.feed(b"login tech 4321\r", 3.0).decode()
    assert "usage: login [USER]" in out and c.session.user is None
    assert c.session.stage == ""
