"""The alarm list survives a restart of the controller.

An operator's alarm list once emptied with every restart of ``thermogate run``:
an unacknowledged trip alarm raised before it was gone after it, from the
console and from OPC UA alike (both list ``Alarms.records()``).
"""

from __future__ import annotations

import json

from thermogate.controller.core.alarms import CARRY_SCANS, Alarms


def _restarted(before: Alarms) -> Alarms:
    after = Alarms()
    after.restore(json.loads(json.dumps(before.to_json())))  # as the state table keeps it
    return after


def test_an_unacknowledged_alarm_that_cleared_is_still_listed_after_a_restart():
    a = Alarms()
    a.begin_scan(1.0)
    a.alarm(1.0, "tank01.trip", True, "tank01 tripped", 900)
    a.begin_scan(2.0)
    a.alarm(2.0, "tank01.trip", False, "")
    b = _restarted(a)
    [rec] = b.records()
    assert (rec.key, rec.active, rec.acked, rec.since) == ("tank01.trip", False, False, 1.0)
    assert b.acknowledge("tank01.trip", "console:tech") == ["tank01.trip"]
    assert b.records() == []


def test_an_alarm_still_active_after_a_restart_carries_on_with_its_since_and_no_second_event():
    a = Alarms()
    a.begin_scan(1.0)
    a.alarm(1.0, "loop1.no_pump", True, "loop loop1: no healthy pump", 900)
    a.acknowledge("loop1.no_pump", "opcua:olga")
    b = _restarted(a)
    for k in range(CARRY_SCANS + 3):
        b.begin_scan(10.0 + k)
        b.alarm(10.0 + k, "loop1.no_pump", True, "loop loop1: no healthy pump", 900)
        assert b.events == [], b.events  # the journal has the raise of before the restart
    [rec] = b.records()
    assert (rec.active, rec.since, rec.acked, rec.acked_by) == (True, 1.0, True, "opcua:olga")
    assert b.active() == ["loop1.no_pump"]


def test_an_alarm_active_before_a_restart_and_not_since_is_cleared_with_its_event():
    a = Alarms()
    a.begin_scan(1.0)
    a.alarm(1.0, "sensors:stale", True, "3 sensor(s) stale", 600)
    a.alarm(1.0, "failsafe:tank01", True, "zone tank01 in fail-safe", 800)
    b = _restarted(a)
    cleared = []
    for k in range(CARRY_SCANS + 2):
        b.begin_scan(10.0 + k)
        # fail-safe is evaluated every scan and is gone; nothing evaluates the sensors
        # alarm while no sensor is flagged: it must not stay active for ever
        b.alarm(10.0 + k, "failsafe:tank01", False, "")
        cleared += [e.source for e in b.events if e.kind == "clear"]
    assert cleared == ["failsafe:tank01", "sensors:stale"]
    assert b.active() == []
    assert {r.key: r.active for r in b.records()} == {
        "failsafe:tank01": False,
        "sensors:stale": False,
    }  # still unacknowledged: listed until someone does


def test_a_restarted_run_lists_the_alarms_of_the_last_run_with_their_first_since(tmp_path):
    """Through the real run loop and its SQLite state, against a plant that is not
    there: every zone is in fail-safe and every sensor stale before and after."""
    import asyncio
    import sqlite3

    from sitefiles import write_run_config

    from thermogate.controller.run import RealTimeController
    from thermogate.controller.runconfig import load_run_config
    from thermogate.plc.site import demo_site_text

    cfg = write_run_config(tmp_path, demo_site_text())

    async def run(scans: int) -> dict[str, float]:
        rt = RealTimeController(load_run_config(str(cfg), None))
        try:
            for _ in range(scans):
                await rt.scan_once()
            return {r.key: r.since for r in rt.ctrl.alarms.records()}
        finally:
            await rt.close()

    first = asyncio.run(run(3))
    assert "failsafe:tank01" in first
    second = asyncio.run(run(CARRY_SCANS + 2))
    assert {k: second[k] for k in first} == first  # the same occurrences, same since
    con = sqlite3.connect(tmp_path / "site.db")
    try:
        [(note,)] = con.execute(
            "SELECT message FROM events WHERE message LIKE 'state restored%'"
        ).fetchall()
    finally:
        con.close()
    assert f"{len(first)} alarms listed again" in note
