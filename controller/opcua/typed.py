"""asyncua's NodeId, StatusCode and DataValue, typed for the plain values they take.

asyncua annotates a NodeId's identifier and namespace index, a StatusCode's value
and a DataValue's timestamps with the marker classes of its encoding (``ua.Int32``,
``ua.String``, ``ua.Int16``, ``ua.UInt32``, ``ua.DateTime``: subclasses of ``int``,
``str`` and ``datetime``), yet takes plain ints, strs and datetimes, as its own code
passes them (``ua.StatusCode``'s default value is a plain int). mypy would reject
every such call. The names here are asyncua's classes themselves, not wrappers
(``node_id is ua.NodeId``: nothing changes at run time), declared with the
signatures they are called with in this package.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from asyncua import ua

__all__ = ["data_value", "node_id", "status_code"]


class _NodeIdOf(Protocol):
    def __call__(self, identifier: int | str, namespace: int = 0, /) -> ua.NodeId: ...


class _StatusCodeOf(Protocol):
    def __call__(self, value: int, /) -> ua.StatusCode: ...


class _DataValueOf(Protocol):
    def __call__(
        self,
        Value: ua.Variant | None = None,
        StatusCode: ua.StatusCode | None = ...,
        SourceTimestamp: datetime | None = None,
        ServerTimestamp: datetime | None = None,
    ) -> ua.DataValue: ...


# the classes' own annotations want the marker classes (see the module docstring)
node_id: _NodeIdOf = ua.NodeId  # type: ignore[assignment]
status_code: _StatusCodeOf = ua.StatusCode  # type: ignore[assignment]
data_value: _DataValueOf = ua.DataValue  # type: ignore[assignment]
