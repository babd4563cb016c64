"""Write grouping for ``ModbusIO.write``: adjacent points of one unit and table
become one request (FC16 for registers, FC15 for coils), within the protocol's
per-request limits; a run a device refuses is split back into its points."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from thermogate.plc.points import MAX_WRITE_BITS, MAX_WRITE_REGISTERS, Point
from thermogate.plc.transport import ModbusLink, Tried


@dataclass
class WriteRun:
    """Adjacent points of one unit and table written in one request."""

    table: str
    address: int
    words: list[int]
    members: list[tuple[int, Point]]  # (index into the caller's writes, point)

    @property
    def what(self) -> str:
        return f"{self.table} {self.address}+{len(self.words)}"

    def split(self) -> list[WriteRun]:
        """Each member point as a run of its own."""
        out: list[WriteRun] = []
        offset = 0
        for i, point in self.members:
            n = point.words if self.table != "coil" else 1
            out.append(
                WriteRun(self.table, point.address, self.words[offset : offset + n], [(i, point)])
            )
            offset += n
        return out

    async def send(self, link: ModbusLink, tried: Tried | None = None) -> None:
        """One request (``ModbusLink.write_stream`` makes the same one)."""
        await link.write(self.table, self.address, self.words, tried=tried)


def write_runs(staged: Iterable[tuple[int, Point, list[int]]]) -> dict[int, list[WriteRun]]:
    """Group ``(index, point, words)`` into runs of adjacent addresses per unit and table."""
    by_key: dict[tuple[int, str], list[tuple[int, Point, list[int]]]] = {}
    for item in staged:
        by_key.setdefault((item[1].unit_id, item[1].table), []).append(item)
    out: dict[int, list[WriteRun]] = {}
    for (unit_id, table), items in sorted(by_key.items()):
        items.sort(key=lambda it: it[1].address)
        limit = MAX_WRITE_BITS if table == "coil" else MAX_WRITE_REGISTERS
        runs = out.setdefault(unit_id, [])
        run: WriteRun | None = None
        for i, point, words in items:
            if (
                run is not None
                and point.address == run.address + len(run.words)
                and len(run.words) + len(words) <= limit
            ):
                run.words.extend(words)
                run.members.append((i, point))
            else:
                run = WriteRun(table, point.address, list(words), [(i, point)])
                runs.append(run)
    return out
