"""The historian's record of a scan: every point, then the controller's own series.

Beside the points, the controller records with every scan what it intends to
do (the planned load of each tank and rack row 5, 15 and 30 minutes ahead)
and the working setpoint of every control loop (after trim & respond). The
learned model trains on both and reports plot them, so their names are made
here, from the site description, like the point names: nothing else spells
``plan.<load>.kw_<h>m`` or ``sp.<measured point>``.
"""

from __future__ import annotations

from .equipment import Site
from .pointmap import PointMap

#: The planned load is recorded this far ahead (minutes): the model's horizons.
PLAN_HORIZONS_MIN = (5, 15, 30)


def load_names(site: Site) -> list[str]:
    """Tanks then rack rows: the order of every per-load series."""
    return [t.name for t in site.tanks] + [r.name for r in site.rack_rows]


def plan_column(load: str, horizon_min: int) -> str:
    """The planned-load series of ``load`` at ``horizon_min`` ahead."""
    if horizon_min not in PLAN_HORIZONS_MIN:
        raise ValueError(f"no planned-load series {horizon_min} min ahead ({PLAN_HORIZONS_MIN})")
    return f"plan.{load}.kw_{horizon_min}m"


def setpoint_column(measurement: str) -> str:
    """The working-setpoint series of the control loop measuring ``measurement``."""
    return f"sp.{measurement}"


def plan_columns(site: Site) -> list[str]:
    """Every planned-load series, load-major (``ScanResult.plan`` order)."""
    return [plan_column(ld, h) for ld in load_names(site) for h in PLAN_HORIZONS_MIN]


def setpoint_columns(site: Site) -> list[str]:
    """Every working-setpoint series, in the site's control-loop order."""
    return [setpoint_column(c.measurement) for c in site.control_loops]


def record_columns(pmap: PointMap, site: Site) -> list[str]:
    """A historian's columns for a scan record: every point, the plan, the setpoints."""
    return [p.name for p in pmap.points] + plan_columns(site) + setpoint_columns(site)
