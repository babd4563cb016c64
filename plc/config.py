"""Strict reading of TOML tables: every key is typed, range-checked and used.

In the spirit of Klipper's config reader: options are read and validated where
they are used (``sec.get_float("volume_l", minval=100)``), and once a section
has been read, any key nobody asked for is a hard error — a typo in a site
file never passes silently. Every error names the file, the dotted key and the
reason (``ConfigError``); a user never sees a traceback for a mistake.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, overload

from .errors import ConfigError

_MISSING: Any = object()
_HHMM_RE = re.compile(r"^(\d+):([0-5]\d)(?::([0-5]\d(?:\.\d+)?))?$")
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)


class Section:
    """A view of one TOML table that records which keys were read."""

    def __init__(self, file: str, path: str, data: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"expected a table, got {type_name(data)}")
        self.file = file
        self.path = path
        self._data = data
        self._used: set[str] = set()

    # -- helpers -----------------------------------------------------------
    def key(self, name: str) -> str:
        """The dotted path of ``name`` inside this section, for messages."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name) if name else self.path, reason)

    def has(self, name: str) -> bool:
        return name in self._data

    def near(self, name: str) -> str | None:
        """A key of the section spelled close to ``name`` (a typo of it?), or None."""
        found = difflib.get_close_matches(name, [k for k in self._data if k != name], n=1)
        return found[0] if found else None

    def _raw(self, name: str, default: Any) -> Any:
        self._used.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            near = self.near(name)
            hint = f" (found '{near}': a typo?)" if near else ""
            raise self.error(name, f"required key is missing{hint}")
        return default

    # -- typed getters -----------------------------------------------------
    @overload
    def get_str(
        self, name: str, default: None, choices: tuple[str, ...] | None = None
    ) -> str | None: ...
    @overload
    def get_str(
        self, name: str, default: str = ..., choices: tuple[str, ...] | None = None
    ) -> str: ...
    def get_str(
        self, name: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None
    ) -> str | None:
        val = self._raw(name, default)
        if val is None and default is None:
            return None
        if not isinstance(val, str):
            raise self.error(name, f"expected a string, got {type_name(val)}")
        if choices is not None and val not in choices:
            raise self.error(name, f"'{val}' is not one of {', '.join(choices)}")
        return val

    def get_bool(self, name: str, default: Any = _MISSING) -> bool:
        val = self._raw(name, default)
        if not isinstance(val, bool):
            raise self.error(name, f"expected true or false, got {type_name(val)}")
        return val

    @overload
    def get_int(
        self, name: str, default: None, minval: int | None = None, maxval: int | None = None
    ) -> int | None: ...
    @overload
    def get_int(
        self, name: str, default: int = ..., minval: int | None = None, maxval: int | None = None
    ) -> int: ...
    def get_int(
        self,
        name: str,
        default: Any = _MISSING,
        minval: int | None = None,
        maxval: int | None = None,
    ) -> int | None:
        val = self._raw(name, default)
        if val is None and default is None:
            return None
        if isinstance(val, bool) or not isinstance(val, int):
            raise self.error(name, f"expected an integer, got {type_name(val)}")
        _check_range(self, name, val, minval, maxval, None, None)
        return val

    @overload
    def get_float(
        self,
        name: str,
        default: None,
        minval: float | None = None,
        maxval: float | None = None,
        above: float | None = None,
        below: float | None = None,
        *,
        above_key: str = "",
        below_key: str = "",
    ) -> float | None: ...
    @overload
    def get_float(
        self,
        name: str,
        default: float = ...,
        minval: float | None = None,
        maxval: float | None = None,
        above: float | None = None,
        below: float | None = None,
        *,
        above_key: str = "",
        below_key: str = "",
    ) -> float: ...
    def get_float(
        self,
        name: str,
        default: Any = _MISSING,
        minval: float | None = None,
        maxval: float | None = None,
        above: float | None = None,
        below: float | None = None,
        *,
        above_key: str = "",
        below_key: str = "",
    ) -> float | None:
        """A finite number within the bounds; ``above_key`` / ``below_key`` name the
        key an ``above`` / ``below`` bound comes from, for the message."""
        val = self._raw(name, default)
        if val is None and default is None:
            return None
        if isinstance(val, bool) or not isinstance(val, int | float):
            raise self.error(name, f"expected a number, got {type_name(val)}")
        val = float(val)
        if not math.isfinite(val):
            raise self.error(name, f"expected a finite number, got {val}")
        _check_range(self, name, val, minval, maxval, above, below, above_key, below_key)
        return val

    def get_str_list(
        self, name: str, default: Any = _MISSING, *, allow_empty: bool = False
    ) -> list[str]:
        """A non-empty array of strings (``allow_empty``: ``[]`` too)."""
        val = self._raw(name, default)
        ok = isinstance(val, list) and (allow_empty or val)
        if not ok or not all(isinstance(x, str) for x in val):
            what = "an array" if allow_empty else "a non-empty array"
            raise self.error(name, f"expected {what} of strings")
        return val

    def get_int_list(
        self,
        name: str,
        default: Any = _MISSING,
        minval: int | None = None,
        maxval: int | None = None,
    ) -> list[int]:
        """A non-empty array of integers, each within range."""
        val = self._raw(name, default)
        if (
            not isinstance(val, list)
            or not val
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in val)
        ):
            raise self.error(name, "expected a non-empty array of integers")
        for x in val:
            _check_range(self, name, x, minval, maxval, None, None)
        return val

    def get_float_map(self, name: str, default: Any = _MISSING) -> dict[str, float]:
        """A table of finite numbers keyed by names (not options: any name is taken).

        Dotted keys (``tank01.fluid_temp_c = 45``), which TOML nests, come back
        as the dotted names (``{"tank01.fluid_temp_c": 45.0}``).
        """
        sec = self.get_section(name, default)
        out: dict[str, float] = {}
        for key, val in sec._data.items():
            if isinstance(val, dict):
                out.update({f"{key}.{k}": v for k, v in sec.get_float_map(key).items()})
            else:
                out[key] = sec.get_float(key)
        return out

    @overload
    def get_duration(
        self,
        name: str,
        default: None,
        minval: float | None = None,
        above: float | None = None,
    ) -> float | None: ...
    @overload
    def get_duration(
        self,
        name: str,
        default: float = ...,
        minval: float | None = None,
        above: float | None = None,
    ) -> float: ...
    def get_duration(
        self,
        name: str,
        default: Any = _MISSING,
        minval: float | None = None,
        above: float | None = None,
    ) -> float | None:
        """Seconds, written for people: ``'HH:MM[:SS]'``, ISO 8601 ``'PT2H30M'`` or a
        TOML local time (``18:00:00``). A plain number belongs in a ``*_s`` key."""
        val = self._raw(name, default)
        if val is None and default is None:
            return None
        secs = _duration_s(val)
        if secs is None:
            raise self.error(
                name, f"expected 'HH:MM[:SS]' or an ISO 8601 duration, got {type_name(val)}"
            )
        _check_range(self, name, secs, minval, None, above, None)
        return secs

    @overload
    def get_datetime(self, name: str, default: None) -> datetime | None: ...
    @overload
    def get_datetime(self, name: str, default: datetime = ...) -> datetime: ...
    def get_datetime(self, name: str, default: Any = _MISSING) -> datetime | None:
        """A TOML date-time or date (midnight), or the same as an ISO 8601 string.

        With a zone (``Z``, ``+02:00``) it is aware, without one it is local wall
        time (naive); the caller decides what a naive time means.
        """
        val = self._raw(name, default)
        if val is None and default is None:
            return None
        dt = _datetime(val)
        if dt is None:
            raise self.error(
                name, f"expected a date-time such as 2024-07-15T00:00:00Z, got {type_name(val)}"
            )
        return dt

    def get_section(self, name: str, default: Any = _MISSING) -> Section:
        val = self._raw(name, default)
        return Section(self.file, self.key(name), val)

    def get_sections(self, name: str, default: Any = _MISSING) -> list[Section]:
        """An array of tables (``[[name]]``)."""
        val = self._raw(name, default)
        if not isinstance(val, list):
            raise self.error(name, f"expected an array of tables, got {type_name(val)}")
        return [Section(self.file, f"{self.key(name)}[{i}]", v) for i, v in enumerate(val)]

    def check_unused(self) -> None:
        """Raise on the first key nobody read: almost always a typo.

        The message names the closest key the reader asked for (present or
        not), else all of them: what the section may hold.
        """
        for name in self._data:
            if name not in self._used:
                known = sorted(self._used)
                near = difflib.get_close_matches(name, known, n=1)
                hint = (
                    f"; did you mean '{near[0]}'?"
                    if near
                    else f"; known keys: {', '.join(known)}"
                    if known
                    else ""
                )
                raise self.error(name, f"unknown key (check the spelling){hint}")


def load_toml(path: str | Path) -> Section:
    """Parse a TOML file into a root ``Section``; syntax errors name the line."""
    file = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(file, "", "permission denied") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text ({exc.reason})") from None
    return loads_toml(text, file)


def loads_toml(text: str, file: str) -> Section:
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))  # Notepad starts UTF-8 with a BOM
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"TOML syntax error: {exc}") from None
    return Section(file, "", data)


def type_name(val: Any) -> str:
    """How a TOML value is named in an error message."""
    if isinstance(val, bool):
        return "a boolean"
    if isinstance(val, int | float):
        return f"the number {val}"
    if isinstance(val, str):
        return f"the string '{val}'"
    if isinstance(val, list):
        return "an array"
    if isinstance(val, dict):
        return "a table"
    return type(val).__name__


def _duration_s(val: Any) -> float | None:
    """Seconds of ``'HH:MM[:SS]'``, an ISO 8601 duration or a TOML time; None if neither."""
    if isinstance(val, time):
        return val.hour * 3600.0 + val.minute * 60.0 + val.second + val.microsecond / 1e6
    if not isinstance(val, str):
        return None
    s = val.strip()
    m = _HHMM_RE.match(s)
    if m:
        return int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0 + float(m.group(3) or 0)
    m = _ISO_DURATION_RE.match(s)
    if m and any(m.groupdict().values()) and not s.upper().endswith("T"):
        g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        return g["w"] * 604800 + g["d"] * 86400 + g["h"] * 3600 + g["m"] * 60 + g["s"]
    return None


def _datetime(val: Any) -> datetime | None:
    """A TOML date-time, a date (midnight) or an ISO 8601 string; None if neither."""
    if isinstance(val, str):
        try:
            return datetime.fromisoformat(val.strip())
        except ValueError:
            return None
    if isinstance(val, datetime):
        return val
    if isinstance(val, date):
        return datetime(val.year, val.month, val.day)
    return None


def _check_range(
    sec: Section,
    name: str,
    val: float,
    minval: float | None,
    maxval: float | None,
    above: float | None,
    below: float | None,
    above_key: str = "",
    below_key: str = "",
) -> None:
    if minval is not None and val < minval:
        raise sec.error(name, f"{val:g} is below the minimum {minval:g}")
    if maxval is not None and val > maxval:
        raise sec.error(name, f"{val:g} is above the maximum {maxval:g}")
    # a default that clashes with a value the file gave: say it is the default
    said = f"{val:g}" if sec.has(name) else f"{val:g} (the default; {name} is not set)"
    if above is not None and val <= above:
        bound = f"{above_key} ({above:g})" if above_key else f"{above:g}"
        raise sec.error(name, f"{said} must be above {bound}")
    if below is not None and val >= below:
        bound = f"{below_key} ({below:g})" if below_key else f"{below:g}"
        raise sec.error(name, f"{said} must be below {bound}")
