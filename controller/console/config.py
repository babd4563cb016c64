"""The ``[console]`` section of a controller configuration.

```toml
[console]
device = "/dev/ttyUSB0"   # the serial device (RS-232 or USB-serial)
baudrate = 9600           # 8N1
idle_timeout_min = 10     # a session idle this long is logged out
max_failed_logins = 5     # failed logins in a row before the lockout ...
lockout_min = 5           # ... of this long
ansi = false              # bold for alarms and BAD values (plain ASCII otherwise)
pace = true               # output no faster than the line carries it
```

Without a configuration (the demo), ``thermogate run`` opens a
pseudo-terminal instead of a device and prints its path. Read and checked
with the typed getters of ``plc/config.py``; an unknown key is an error
with a spelling hint.
"""

from __future__ import annotations

from dataclasses import dataclass

from thermogate.plc.config import Section

from .session import IDLE_TIMEOUT_S, LOCKOUT_S, MAX_FAILED

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
DEFAULT_BAUD = 9600


@dataclass(frozen=True)
class ConsoleConfig:
    device: str | None = None  # None: a pseudo-terminal (the demo)
    baudrate: int = DEFAULT_BAUD
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_failed: int = MAX_FAILED
    lockout_s: float = LOCKOUT_S
    ansi: bool = False
    pace: bool = True

    @property
    def line(self) -> str:
        """``9600 8N1``"""
        return f"{self.baudrate} 8N1"


def parse_console(sec: Section) -> ConsoleConfig:
    device = sec.get_str("device")
    if not device.startswith("/"):
        raise sec.error("device", f"'{device}' is not a device path (e.g. /dev/ttyUSB0)")
    baud = sec.get_int("baudrate", DEFAULT_BAUD, 1200, 115200)
    if baud not in BAUDRATES:
        raise sec.error(
            "baudrate", f"{baud} is not a standard rate ({', '.join(map(str, BAUDRATES))})"
        )
    cfg = ConsoleConfig(
        device=device,
        baudrate=baud,
        idle_timeout_s=60.0 * sec.get_float("idle_timeout_min", IDLE_TIMEOUT_S / 60, 0.5, 1440.0),
        max_failed=sec.get_int("max_failed_logins", MAX_FAILED, 1, 100),
        lockout_s=60.0 * sec.get_float("lockout_min", LOCKOUT_S / 60, 0.5, 1440.0),
        ansi=sec.get_bool("ansi", False),
        pace=sec.get_bool("pace", True),
    )
    sec.check_unused()
    return cfg
