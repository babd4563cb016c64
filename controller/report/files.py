"""The report's data files: ``summary.json`` and ``events.csv``.

They are what a script reads back, so they hold plain values: numpy scalars
unwrapped, non-finite numbers as JSON ``null``, nested mappings as JSON in a
CSV cell; the CSV keeps every event's raw text (escaping is the page's job).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EVENT_COLUMNS", "elapsed", "jsonable", "write_events", "write_summary"]

#: The first columns of ``events.csv``; any other key of an event follows them.
#: ``elapsed`` is ``t_h`` as a person reads it (``2:05:30``, ``1d 03:00:00``):
#: the column was a float like 0.16666666666666666 alone.
EVENT_COLUMNS = ("t_h", "elapsed", "kind", "source", "severity", "message")


def elapsed(t_h: float) -> str:
    """Simulated time since the start, ``H:MM:SS`` (``Nd HH:MM:SS`` past a day)."""
    if not math.isfinite(t_h):
        return ""
    s = round(t_h * 3600.0)
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h:02d}:{m:02d}:{s:02d}" if d else f"{h}:{m:02d}:{s:02d}"


def jsonable(value: Any) -> Any:
    """Plain JSON types; numpy scalars unwrapped, NaN and infinities as null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_summary(path: Path, summary: Mapping) -> Path:
    path.write_text(
        json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def write_events(path: Path, events: Sequence[Mapping]) -> Path:
    extra: list[str] = []
    for ev in events:
        for k in ev:
            if k not in EVENT_COLUMNS and k not in extra:
                extra.append(str(k))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*EVENT_COLUMNS, *extra])
        for ev in events:
            t_h = ev.get("t_h")
            row = {**ev}
            if isinstance(t_h, (int, float, np.generic)):
                row["t_h"] = round(float(t_h), 6)  # to ~4 ms
                row["elapsed"] = elapsed(float(t_h))
            w.writerow([_csv_cell(row.get(k)) for k in (*EVENT_COLUMNS, *extra)])
    return path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(jsonable(value))
    return str(value)
