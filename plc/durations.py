"""Durations as people type them, one grammar for every face and tool.

``90``, ``90s``, ``10m``, ``10min``, ``2h``, ``1h30m``, ``7d``: the command
line, the console and ``thermogate vtn`` read the same text the same way (the
VTN's own parser once took ``90m`` but not ``1h30m``).
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_DURATION = re.compile(
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?$"
)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h``, ``1h30m``, ``7d``; ValueError otherwise
    (also for a negative, infinite or NaN number of seconds)."""
    t = text.strip().lower()
    try:
        x = float(t)
    except ValueError:
        pass
    else:
        if math.isfinite(x) and x >= 0.0:
            return x
        raise ValueError(f"'{text}' is not a duration (a number of seconds must be 0 or more)")
    m = _DURATION.match(t)
    if not t or m is None or not any(m.groups()):
        raise ValueError(f"'{text}' is not a duration (e.g. 90s, 10m, 2h, 1h30m, 7d)")
    d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return d * 86400.0 + h * 3600.0 + mi * 60.0 + s
