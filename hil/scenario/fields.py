"""How the scenario's records report an invalid field, so the loader can name its key.

The records (``SyntheticWeather``, ``GridEvent``, ``FaultSpec``, ...) check
themselves when built from code too; the TOML loader catches ``FieldError``
and reports it at the file's dotted key (``faults[2].params.p``).
"""

from __future__ import annotations

__all__ = ["FieldError", "require"]


class FieldError(ValueError):
    """A dataclass field is invalid; the TOML reader maps ``field`` to its key."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field = field_name
        self.reason = reason
        super().__init__(f"{field_name}: {reason}")


def require(ok: bool, field_name: str, reason: str) -> None:
    if not ok:
        raise FieldError(field_name, reason)
