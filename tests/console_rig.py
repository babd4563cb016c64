"""A running controller with consoles on real pseudo-terminals, and a terminal for tests.

``ControllerRig`` runs a ``RealTimeController`` against the served demo plant
over Modbus TCP in a thread of its own (its asyncio loop), with one
``ConsoleFace`` per named configuration, each on a socat pty pair (the
console opens one end as a serial device, the test the other with pyserial).
``Term`` is the technician: it types lines and reads up to the next prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import serial

from thermogate.controller.console import ConsoleConfig, ConsoleFace
from thermogate.controller.modbus_io import Endpoint
from thermogate.controller.run import RealTimeController, console_face
from thermogate.controller.runconfig import RunConfig
from thermogate.controller.users import UserStore
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site

PINS = {"tech": ("4321", "operator"), "vic": ("9999", "viewer"), "erin": ("2468", "engineer")}
PROMPT = re.compile(rb"(Demo hybrid hall( \(\w+\))?> |user: |PIN: )$")


def until(pred, timeout: float = 15.0, step: float = 0.1):
    """``pred()`` once it is truthy, polled every ``step`` s; its last value after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()


class Socat:
    """A linked pty pair at fixed paths (``link=``), so it can vanish and return."""

    def __init__(self, a: Path, b: Path) -> None:
        if shutil.which("socat") is None:
            pytest.fail("socat is not on PATH: `apt-get install socat` (CI installs it)")
        self.a, self.b = a, b
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 5.0
        while not (self.a.exists() and self.b.exists()):
            assert time.monotonic() < end, "socat made no ptys"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        end = time.monotonic() + 3.0
        while (self.a.exists() or self.b.exists()) and time.monotonic() < end:
            time.sleep(0.02)


class ControllerRig:
    def __init__(self, tmp: Path, consoles: dict[str, ConsoleConfig]) -> None:
        self.tmp = tmp
        self.db = tmp / "h.db"
        with UserStore(self.db) as users:
            for name, (pin, role) in PINS.items():
                users.add(name, role, pin, by="test")
        self.socats = {n: Socat(tmp / f"{n}.console", tmp / f"{n}.term") for n in consoles}
        for s in self.socats.values():
            s.start()
        self.cfgs = {
            n: ConsoleConfig(**{**c.__dict__, "device": str(self.socats[n].a)})
            for n, c in consoles.items()
        }
        self.faces: dict[str, ConsoleFace] = {}
        self.rt: RealTimeController | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="rig", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(60.0), f"the rig did not start: {self._error!r}"
        assert self._error is None, self._error

    def term_path(self, name: str) -> str:
        return str(self.socats[name].b)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # seen by start() and close()
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        site = demo_site()
        sp = ServedPlant(ScenarioPlant(site, "normal-day"), speed=1.0)
        _, port = await sp.server.start_tcp("127.0.0.1", 0)
        plant = asyncio.create_task(sp.run())
        cfg = RunConfig(
            site, self.db, Endpoint("tcp", "127.0.0.1", port), 0.5, 1.0,
            built_in_plant=False, forecast=False,
        )  # fmt: skip
        rt = RealTimeController(cfg)
        self.rt = rt
        for n, c in self.cfgs.items():
            face = console_face(rt, c)
            face.start()
            rt.faces.append(face)
            self.faces[n] = face
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        run = asyncio.create_task(rt.run(self._stop))
        try:
            end = time.monotonic() + 30.0
            while rt.scans < 5 or rt.last.get("failsafe_zones"):
                assert time.monotonic() < end, f"no clean scans: {rt.last.get('failsafe_zones')}"
                await asyncio.sleep(0.1)
            self._ready.set()
            await run
        finally:
            self._stop.set()
            for face in self.faces.values():
                await asyncio.to_thread(face.stop)
            await rt.close()
            plant.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plant
            await sp.server.stop()

    def settled(self, timeout: float = 30.0) -> None:
        """Until no zone is fail-safe (on a loaded host a late read can make one so
        for a scan; protection then rightly refuses an override in that zone)."""
        assert self.rt is not None
        end = time.monotonic() + timeout
        while self.rt.last.get("failsafe_zones"):
            assert time.monotonic() < end, f"zones fail-safe: {self.rt.last['failsafe_zones']}"
            time.sleep(0.05)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30.0)
        for s in self.socats.values():
            s.stop()
        if self._error is not None:
            raise self._error


class Term:
    """The technician's end of the line, through pyserial."""

    def __init__(self, path: str, baudrate: int = 115200) -> None:
        self.s = serial.Serial(path, baudrate, timeout=0.05)
        self.buf = b""

    def close(self) -> None:
        self.s.close()

    def read_until(self, pattern: re.Pattern[bytes], timeout: float = 15.0) -> str:
        end = time.monotonic() + timeout
        while not pattern.search(self.buf):
            if time.monotonic() > end:
                raise AssertionError(f"no {pattern.pattern!r} in {self.buf[-400:]!r}")
            self.buf += self.s.read(4096)
        m = pattern.search(self.buf)
        assert m is not None
        text, self.buf = self.buf[: m.end()], self.buf[m.end() :]
        return text.decode("ascii")

    def sync(self, tries: int = 10) -> None:
        """Forget what came before: a known command's answer, then its prompt. Asked
        again until answered (a console opening its line forgets what waited there)."""
        for _ in range(tries):
            self.s.write(b"\x15help whoami\r")
            try:
                self.read_until(re.compile(rb"usage: whoami"), 2.0)
            except AssertionError:
                continue
            self.read_until(PROMPT)
            self.buf = b""
            return
        raise AssertionError(f"the console does not answer: {self.buf[-400:]!r}")

    def cmd(self, line: str, timeout: float = 15.0) -> str:
        """Type ``line`` and Enter; the answer (without the echo and the next prompt)."""
        self.s.write(line.encode("ascii") + b"\r")
        text = self.read_until(PROMPT, timeout).replace("\r\n", "\n")
        _echo, _, rest = text.partition("\n")
        return PROMPT.sub(b"", rest.encode()).decode()

    def login(self, user: str) -> str:
        assert self.cmd("login") == ""
        assert self.cmd(user) == ""
        return self.cmd(PINS[user][0])
