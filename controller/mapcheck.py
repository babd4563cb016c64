"""The point map a database last ran with, against the one a run starts with.

Points are derived from the site file, so editing it can move addresses:
removing a tank from the middle of the list moves every tank after it. Against
a PLC still programmed for the old layout the controller would read one tank's
temperature as another's and write one tank's valve into another's register,
and its history would carry the wrong tank under each name. So a run whose
points moved since the last run on the same database is refused, naming what
moved, until someone who has checked the PLC says so (``--accept-new-map``);
points only added or removed move nothing and pass.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import PointMap

from .historian import HistoryReader

#: the state key under which a run stores the layout it ran with
POINT_MAP_KEY = "point_map"

#: what locates a point on the wire and how its registers are read
Layout = dict[str, list[object]]


class PointMapChanged(ThermogateError):
    """Points moved since the last run on this database, and nobody accepted it."""


def layout(pmap: PointMap) -> Layout:
    """name -> [unit id, table, address, type, scale, word order] of every point."""
    return {
        p.name: [p.unit_id, p.table, p.address, p.type, p.scale, p.word_order] for p in pmap.points
    }


def moved(stored: Mapping[str, list[object]], now: Layout) -> list[str]:
    """Points in both layouts whose place or coding differs, in the new map's order."""
    return [n for n, where in now.items() if n in stored and list(stored[n]) != where]


def _where(x: list[object]) -> str:
    unit, table, address, type_, scale, order = x
    coding = (
        f"{type_}"
        + (f" x{scale:g}" if scale != 1 else "")
        + (f", {order} word first" if type_ in ("u32", "i32", "f32") and order != "big" else "")
    )
    return f"unit {unit} {table} {address} ({coding})"


def stored_layout(db: Path, site_name: str) -> dict[str, list[object]] | None:
    """The layout the last run on ``db`` stored, or None (a new database, or one
    no run has stored a layout in yet). A database the historian will refuse
    (another site's, a damaged one) is left to the historian to name."""
    if not db.exists():
        return None
    try:
        with HistoryReader(db, site_name) as r:
            state = r.state(POINT_MAP_KEY)
    except (ThermogateError, sqlite3.Error):
        return None
    return None if state is None else dict(state.get("points", {}))


def check(
    db: Path, site_name: str, pmap: PointMap, *, accept: bool, site_file: str = ""
) -> str | None:
    """Compare ``pmap`` with what the last run on ``db`` ran with.

    Nothing moved: None. Points moved and ``accept``: the event text saying so.
    Points moved otherwise: :class:`PointMapChanged`, naming the first of them.
    """
    stored = stored_layout(db, site_name)
    if not stored:
        return None
    now = layout(pmap)
    shifted = moved(stored, now)
    if not shifted:
        return None
    shown = "; ".join(f"{n} {_where(stored[n])} -> {_where(now[n])}" for n in shifted[:3])
    more = f" and {len(shifted) - 3} more" if len(shifted) > 3 else ""
    n = len(shifted)
    what = f"{n} point{'s' if n > 1 else ''} moved since the last run on {db}"
    # what left the map too: the equipment whose removal shifted the rest, usually
    removed = sorted({name.split(".")[0] for name in stored if name not in now})
    left = f"; gone from the map: {', '.join(removed[:5])}" if removed else ""
    if accept:
        return f"{what}, accepted with --accept-new-map: {shown}{more}{left}"
    source = f" {site_file}" if site_file else ""
    raise PointMapChanged(
        f"{what} ({shown}{more}){left}: the site file{source} changed its point map. If the"
        " PLC's program was changed to match (check with `thermogate points --site FILE`),"
        " start with --accept-new-map; if not, use the site file the PLC runs"
    )
