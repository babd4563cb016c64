"""The run's series as the report reads them: checked once, then shared by every part.

``check_series`` turns whatever the simulator handed in into equal-length
float arrays (or says which key is wrong); ``Context`` adds what every figure
and the page need from them: the time axis' range, the equipment present in
both the meta and the series, and the curtailment windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Context", "as_float", "check_series", "spans"]


def check_series(series: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every series as a 1-D float array as long as ``t_h``; ValueError naming the culprit."""
    if "t_h" not in series:
        raise ValueError("report: series has no 't_h' (hours since start)")
    data: dict[str, np.ndarray] = {}
    for key, value in series.items():
        arr = np.asarray(value, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"report: series {key!r} is not one-dimensional (shape {arr.shape})")
        data[str(key)] = arr
    n = len(data["t_h"])
    bad = sorted(k for k, v in data.items() if len(v) != n)
    if bad:
        shown = ", ".join(f"{k} ({len(data[k])})" for k in bad[:5])
        raise ValueError(f"report: series lengths differ from t_h ({n}): {shown}")
    return data


def as_float(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, text, NaN, infinity)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def spans(t: np.ndarray, mask: np.ndarray, xlim: tuple[float, float]) -> list[tuple[float, float]]:
    """Time spans where ``mask`` holds (a sample holds until the next one); close ones merged."""
    if not len(t) or not mask.any():
        return []
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    dt = float(np.nanmedian(np.diff(t))) if len(t) > 1 else 0.0
    out: list[tuple[float, float]] = []
    gap = (xlim[1] - xlim[0]) / 400.0
    for s, e in zip(starts, ends, strict=True):
        a = float(t[s])
        b = float(t[e]) if e < len(t) else float(t[-1]) + (dt if math.isfinite(dt) else 0.0)
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


class Context:
    """Everything the figures and the page share: data, time range, curtailment windows."""

    def __init__(self, data: dict[str, np.ndarray], meta: Mapping, events: list[Mapping]) -> None:
        self.data = data
        self.meta = meta
        self.events = events
        self.t = data["t_h"]
        self.n = len(self.t)
        finite = self.t[np.isfinite(self.t)]
        planned = as_float(meta.get("hours"))
        if finite.size:
            t0, t1 = float(finite.min()), float(finite.max())
            t0 = min(t0, 0.0) if t0 >= -1e-9 else t0
        else:
            t0, t1 = 0.0, planned if planned and planned > 0 else 1.0
        if t1 <= t0:
            t1 = t0 + (planned if planned and planned > 0 else 1.0)
        self.xlim = (t0, t1)
        self.site = str(meta.get("site") or "site")
        self.scenario = str(meta.get("scenario") or "scenario")
        self.curtailment = self._curtailment()

    def get(self, key: str) -> np.ndarray | None:
        """The series, or None when it is absent or holds no finite value."""
        arr = self.data.get(key)
        if arr is None or not np.isfinite(arr).any():
            return None
        return arr

    def names(self, section: str, prefix: str, suffix: str) -> list[str]:
        """Equipment of one type: the meta's order first, then any only in the series."""
        names = [str(k) for k in (self.meta.get(section) or {})]
        for key in self.data:
            if key.startswith(prefix) and key.endswith(suffix):
                name = key[len(prefix) : len(key) - len(suffix)]
                if name and name not in names:
                    names.append(name)
        return [nm for nm in names if self.get(f"{prefix}{nm}{suffix}") is not None]

    def spec(self, section: str, name: str) -> Mapping:
        """The meta's limits of one piece of equipment (empty when it has none)."""
        return (self.meta.get(section) or {}).get(name) or {}

    def title(self, what: str) -> str:
        return f"{self.site} · {self.scenario} — {what}"

    def _curtailment(self) -> list[tuple[float, float]]:
        limit = self.get("import_limit_kw")
        if limit is None:
            return []
        top = float(np.nanmax(limit))
        lowered = np.isfinite(limit) & (limit < top - max(1e-6, 1e-4 * abs(top)))
        return spans(self.t, lowered, self.xlim)
