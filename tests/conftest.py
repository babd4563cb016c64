"""Fixtures every test module may use."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from thermogate.controller.heap import freeze_startup
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


@pytest.fixture(scope="module")
def production_heap() -> Iterator[None]:
    """The run loop's heap (``controller/heap.py``) for tests that time answers in
    tenths of a second: what earlier modules left is frozen, as a controller freezes
    its start-up, so a full collection of a test worker's heap (0.1-0.8 s) cannot land
    inside a 0.15 s timeout and fail every unit at once. Once per module: freezing
    walks the whole heap, and a module's own tests leave little behind."""
    freeze_startup()
    try:
        yield
    finally:
        gc.unfreeze()
