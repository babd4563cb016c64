"""Typed errors, so callers can tell a user's mistake from a fault.

Every error a user can cause (a config file, a CSV file, a command-line value)
is one of these and carries enough to find and fix the mistake: the file, the
key or line/column, and the reason. The CLI prints them as one line and exits
with status 2; it never shows a traceback for them.
"""

from __future__ import annotations

# What would break the one line a message is: control characters (a key or a
# value quoted from a file may hold them) and the line breaks str.splitlines knows.
_BREAKERS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


class ThermogateError(Exception):
    """Base of every error thermogate raises on purpose.

    Its text is always one line: whatever a message quotes from a file,
    control characters and line breaks come out escaped (``\\n``, ``\\x00``)."""

    def __str__(self) -> str:
        return super().__str__().translate(_BREAKERS)


class ConfigError(ThermogateError, ValueError):
    """A site description or configuration is invalid.

    ``file`` is the path (or ``<built-in demo>``), ``key`` the dotted key in
    that file (``tanks[3].volume_l``) and ``reason`` what is wrong with it.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class DataFileError(ThermogateError, ValueError):
    """A data file (CSV) is invalid: names the file, line (1-based) and column."""

    def __init__(self, file: str, line: int | None, column: str | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason
        where = file
        if line is not None:
            where += f":{line}"
        if column:
            where += f": column '{column}'"
        super().__init__(f"{where}: {reason}")


class CodecError(ThermogateError, ValueError):
    """A value cannot be encoded to or decoded from registers for its point."""


class ModbusDeviceError(ThermogateError):
    """A Modbus device did not answer, or answered with an exception."""

    def __init__(self, unit_id: int, reason: str, exception_code: int | None = None) -> None:
        self.unit_id = unit_id
        self.exception_code = exception_code
        self.reason = reason
        super().__init__(f"unit {unit_id}: {reason}")
