"""The under-frequency relay in the PLC's logic: pickup, latch, recovery, release."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.plc.ufls import RelayConfig, UnderFrequencyRelay

CFG = RelayConfig(nominal_hz=60.0, trip_hz=59.7, delay_s=0.1, recover_hz=59.95, recover_s=60.0)
DT = 1 / 60  # one cycle at 60 Hz: the PLC sampling as often as a relay would


def run(relay: UnderFrequencyRelay, t0: float, t1: float, f: float, **kw: bool) -> float:
    """Step every cycle from t0 to t1 at frequency f; returns the time reached."""
    t = t0
    while t < t1 - 1e-9:
        t += DT
        relay.step(t, f, armed=kw.get("armed", True))
    return t


def test_trips_after_the_pickup_delay_not_before() -> None:
    r = UnderFrequencyRelay(CFG)
    t = run(r, 0.0, 1.0, 60.0)
    assert not r.state.tripped
    dip = t
    t = run(r, t, t + 0.05, 59.6)  # under for 3 cycles: not yet
    assert not r.state.tripped
    t = run(r, t, t + 0.1, 59.6)
    assert r.state.tripped and r.state.trip_t is not None
    # tripped within delay + one cycle of the first sample under
    assert CFG.delay_s <= r.state.trip_t - dip <= CFG.delay_s + 2 * DT
    assert any("under-frequency trip" in m for _, m in r.events)


def test_a_dip_shorter_than_the_delay_resets_the_pickup() -> None:
    r = UnderFrequencyRelay(CFG)
    t = 0.0
    for _ in range(20):  # 4 cycles under, 1 above, many times over
        t = run(r, t, t + 4 * DT, 59.5)
        t = run(r, t, t + DT, 59.8)
    assert not r.state.tripped


def test_a_disarmed_relay_never_trips_and_disarming_does_not_untrip() -> None:
    r = UnderFrequencyRelay(CFG)
    run(r, 0.0, 1.0, 59.0, armed=False)
    assert not r.state.tripped
    t = run(r, 1.0, 1.5, 59.0)
    assert r.state.tripped
    run(r, t, t + 1.0, 60.0, armed=False)
    assert r.state.tripped  # latched


def test_the_trip_stays_until_recovered_for_the_set_time_and_released() -> None:
    r = UnderFrequencyRelay(CFG)
    t = run(r, 0.0, 0.5, 59.5)
    assert r.state.tripped
    t = run(r, t, t + 30.0, 60.0)  # recovered, but only for 30 s of 60
    assert r.step(t, 60.0, armed=True, release=True) is True
    assert "release refused" in r.events[-1][1] and "of the 60 s" in r.events[-1][1]
    t = run(r, t, t + 20.0, 59.9)  # a sag below recover_hz restarts the count
    t = run(r, t, t + 40.0, 60.0)
    assert r.step(t, 60.0, armed=True, release=True) is True  # 40 s since the sag
    t = run(r, t, t + 25.0, 60.0)
    assert r.step(t, 60.0, armed=True, release=False) is True  # recovered, not released
    assert r.step(t + DT, 60.0, armed=True, release=True) is False
    assert r.events[-1][1] == "under-frequency trip released"


def test_a_failed_measurement_neither_trips_nor_releases() -> None:
    r = UnderFrequencyRelay(CFG)
    t = run(r, 0.0, 0.05, 59.5)  # pickup started
    for bad in (math.nan, 0.0, -1.0, math.inf):
        t += DT
        assert r.step(t, bad, armed=True) is False
    assert not r.state.measurement_ok
    assert any("measurement failed" in m for _, m in r.events)
    t = run(r, t, t + 1.0, 60.0)
    assert r.state.measurement_ok and not r.state.tripped
    assert any("measurement restored" in m for _, m in r.events)


def test_release_without_a_trip_is_refused_and_said() -> None:
    r = UnderFrequencyRelay(CFG)
    assert r.step(0.0, 60.0, armed=True, release=True) is False
    assert r.events[-1][1].startswith("release refused: no under-frequency trip")


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"nominal_hz": 55.0}, "nominal_hz"),
        ({"trip_hz": 60.0}, "trip_hz"),
        ({"nominal_hz": 50.0, "trip_hz": 59.7, "recover_hz": 59.9}, "trip_hz"),
        ({"recover_hz": 59.6}, "recover_hz"),
        ({"delay_s": -0.1}, "delay_s"),
        ({"recover_s": math.nan}, "recover_s"),
    ],
)
def test_a_bad_relay_setting_names_its_field(kwargs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        RelayConfig(**kwargs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(59.71, 61.0), min_size=1, max_size=200))
def test_never_trips_above_the_threshold(freqs: list[float]) -> None:
    r = UnderFrequencyRelay(CFG)
    for i, f in enumerate(freqs):
        assert r.step(i * 0.5, f, armed=True) is False
