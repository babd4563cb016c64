"""The demo's simulated plant for ``thermogate run`` without ``--config``: a
``thermogate plant`` child process on loopback Modbus, or one already serving."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from thermogate.plc.errors import ThermogateError

from .runconfig import RunConfig

#: how long the demo's plant process may take to listen, and to stop
PLANT_START_S = 60.0
PLANT_STOP_S = 10.0


class DemoPlant:
    """The demo's simulated plant, in a process of its own as a PLC is on a real site:
    killing the controller leaves it serving, and its PLC logic takes the safe state
    when the heartbeat stops. ``start`` attaches to a plant already serving on the
    demo's address (one a killed run left, or a ``thermogate plant`` started by
    hand), else starts ``thermogate plant`` as a child; ``stop`` ends only a child
    it started."""

    def __init__(
        self,
        cfg: RunConfig,
        proc: subprocess.Popen[bytes] | None,
        price_feed: Callable[[float], float] | None,
    ) -> None:
        self.cfg = cfg
        self.proc = proc
        self.price_feed = price_feed

    @property
    def log_path(self) -> Path:
        return self.cfg.db.with_name(self.cfg.db.stem + ".plant.log")

    @property
    def describe(self) -> str:
        where = f"Modbus TCP {self.cfg.plant_host}:{self.cfg.plant_port}"
        if self.proc is None:
            return (
                f"attached to the plant already serving on {where} (left by a run that was "
                "killed, or started by hand); the site's default energy price"
            )
        return (
            f"built-in demo plant (simulated, scenario {self.cfg.scenario}) on {where}, "
            f"process {self.proc.pid} (log {self.log_path})"
        )

    @classmethod
    async def start(cls, cfg: RunConfig) -> DemoPlant:
        host, port = cfg.plant_host, cfg.plant_port
        if await _listens(host, port):
            return cls(cfg, None, None)
        from thermogate.hil.scenario import load_scenario

        scenario = load_scenario(cfg.scenario)
        log_path = cls(cfg, None, None).log_path
        try:
            log_file = open(log_path, "ab")  # noqa: SIM115  # the child's, from now on
        except OSError as exc:
            raise ThermogateError(
                f"{log_path}: cannot write the plant's log: {exc.strerror}"
            ) from None
        cmd = [sys.executable, "-m", "thermogate.controller.cli", "plant", "--scenario",
               cfg.scenario, "--host", host, "--port", str(port)]  # fmt: skip
        with log_file:
            # a session of its own: Ctrl-C in the terminal stops the controller, which
            # then stops the plant, in that order
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True,
            )  # fmt: skip
        t0 = time.time()  # the plant's clock starts now: its scenario prices follow it
        plant = cls(cfg, proc, lambda t: scenario.price_at(t - t0))
        deadline = time.monotonic() + PLANT_START_S
        while not await _listens(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                plant.stop()
                tail = log_path.read_text("utf-8", "replace").strip().splitlines()[-1:]
                why = tail[0].removeprefix("thermogate: error: ") if tail else "no output"
                raise ThermogateError(
                    f"the built-in plant did not start on {host}:{port}: {why} "
                    "(port in use? stop the other thermogate, or use --config)"
                )
            await asyncio.sleep(0.1)
        return plant

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # it stops as from Ctrl-C
        try:
            self.proc.wait(PLANT_STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _listens(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
