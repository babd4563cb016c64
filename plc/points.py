"""The point: one named value in a PLC's Modbus address space.

A point is the unit of the contract between thermogate and the PLC. The site
description generates every point (see ``pointmap.py``); nothing else declares
one. The register map, the OPC UA address space, the console's names and the
historian's columns are all views of the same tuple of points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Table = Literal["coil", "discrete", "input", "holding"]
PointType = Literal["bool", "u16", "i16", "u32", "i32", "f32"]
WordOrder = Literal["big", "little"]
Access = Literal["ro", "rw"]

TABLES: tuple[Table, ...] = ("coil", "discrete", "input", "holding")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})
REGISTER_TABLES: frozenset[str] = frozenset({"input", "holding"})

# -- quality of a value (the controller's estimate; OPC UA status codes mirror it)
GOOD = 0
UNCERTAIN = 1
BAD = 2
QUALITY_NAMES = ("good", "uncertain", "bad")

#: Registers (16-bit words) each type occupies. Bits occupy one bit address.
TYPE_WORDS: dict[str, int] = {"bool": 1, "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}

#: Modbus application protocol limits per request (spec V1.1b3 §6).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968


@dataclass(frozen=True, slots=True)
class Point:
    """One point of the map.

    ``value = raw * scale`` for integer types; ``f32`` points carry
    engineering units directly and use ``scale = 1``. ``address`` is the
    0-based protocol address (what goes on the wire); mbpoll and most HMI
    tools count from 1.
    """

    name: str
    unit_id: int
    table: Table
    address: int
    type: PointType
    scale: float = 1.0
    unit: str = ""
    access: Access = "ro"
    min: float | None = None
    max: float | None = None
    description: str = ""
    word_order: WordOrder = "big"
    device: str = ""

    @property
    def words(self) -> int:
        """Number of 16-bit registers (or bit addresses) this point occupies."""
        return TYPE_WORDS[self.type]

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.words
