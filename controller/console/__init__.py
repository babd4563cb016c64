"""The technician's console on a local serial port (issue 13).

A technician plugs a laptop into the controller's serial port (RS-232 or
USB-serial) and opens screen, minicom or PuTTY; the demo opens a
pseudo-terminal instead and ``thermogate run`` prints its path. The console
shows what the controller sees and, after a login with a PIN, changes the
plant through the controller's one command path as ``console:<user>``.

Pure parts: ``line`` (bytes -> echo and lines), ``session`` (login, lockout,
idle timeout), ``shell`` (a line and the latest snapshot -> text and a
command), ``console`` (the three together); the edges: ``port`` (the serial
line in its own thread, paced output, reopened when it comes back) and
``face`` (the run loop's ``Face``: snapshots in, commands out).
"""

from .config import ConsoleConfig, parse_console
from .face import ConsoleFace

__all__ = ["ConsoleConfig", "ConsoleFace", "parse_console"]
