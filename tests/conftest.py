"""Fixtures every test module may use."""

from __future__ import annotations

import pytest

from thermogate.plc.equipment import Site
from thermogate.plc.pointmap import PointMap, build_point_map
from thermogate.plc.site import demo_site


@pytest.fixture(scope="session")
def site() -> Site:
    """The built-in demo hall (immutable: safe to share between tests)."""
    return demo_site()


@pytest.fixture(scope="session")
def demo_pmap(site: Site) -> PointMap:
    """The demo hall's point map (immutable)."""
    return build_point_map(site)
