"""A historian filled by a simulated normal day, as the model tests train on it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from thermogate.controller.historian import Historian
from thermogate.controller.simulate import run_simulation
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site

#: the controller's scan and the plant's step of a simulated history (s)
STUDY_S = 5.0


@contextmanager
def simulated_history(
    path: Path, hours: float, *, columns: Sequence[str] | None = None
) -> Iterator[Historian]:
    """The demo site's controller and plant for ``hours`` of a normal day, every
    scan recorded in a historian at ``path`` (``columns``: the point map's by
    default); yields it open and flushed, closes it after.

    The hall's grid connection is widened to 5 MW for it: the model learns the
    thermal response to everything the plant does, not a planner's choices under
    a binding import (the demo's own 2,870 kW would have protection cutting
    mining every scan under the every-load-at-rating planner).

    It runs at the studies' pace (``STUDY_S``: the controller scans and the plant
    steps every 5 s, see ``run_simulation``): the model learns from minutes, and
    hours of history cost a fifth of the time they would at the demo's 1 s scan."""
    site = replace(demo_site(), import_limit_kw=5000.0)
    cols = list(columns) if columns is not None else [p.name for p in build_point_map(site).points]
    with Historian(path, cols, site_name=site.name) as h:
        run_simulation(site, "normal-day", hours, historian=h, scan_s=STUDY_S, plant_dt=STUDY_S)
        h.flush(timeout=120.0)
        yield h
