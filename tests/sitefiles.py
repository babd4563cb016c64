"""Site and run-configuration files the run-level tests share."""

from __future__ import annotations

import socket
from pathlib import Path

#: a tank (with its PDU, feeder and control loop) appended to the demo site: the
#: hand-edited growth of a site file, and equipment a PLC may not serve yet
TANK99 = """
[[feeders]]
name = "feeder_m9"
rating_a = 630.0
unit_id = 17

[[pdus]]
name = "pdu_tank99"
feeder = "feeder_m9"
rating_a = 500.0
unit_id = 99

[[tanks]]
name = "tank99"
workload = "asic"
units = 46
volume_l = 2000.0
hx_ua_kw_k = 30.0
dielectric_flow_l_s = 15.0
design_water_flow_m3h = 36.0
loop = "loop1"
pdu = "pdu_tank99"
unit_id = 1

[[control_loops]]
name = "tank99_fluid"
measurement = "tank99.fluid_temp"
actuators = ["tank99.valve_cmd"]
setpoint = 50.0
kp = 6.0
"""


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_run_config(
    tmp: Path, site_text: str, port: int | None = None, timeout_s: float = 0.2
) -> Path:
    """``site.toml`` and a ``controller.toml`` running it against 127.0.0.1:``port``
    (default: a port nobody answers on), database ``site.db``, model off."""
    (tmp / "site.toml").write_text(site_text, encoding="utf-8")
    cfg = tmp / "controller.toml"
    cfg.write_text(
        '[controller]\nsite = "site.toml"\ndb = "site.db"\n\n'
        f'[modbus]\nhost = "127.0.0.1"\nport = {port or closed_port()}\n'
        f"timeout_s = {timeout_s}\n\n[model]\nenabled = false\n",
        encoding="utf-8",
    )
    return cfg
