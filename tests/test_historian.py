"""The historian: real SQLite files, real threads, a real kill -9."""

from __future__ import annotations

import json
import math
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from thermogate.controller.historian import (
    MAX_POINTS_PER_SHARD,
    Historian,
    HistorianError,
    column_name,
)

DAY = 86400.0
T0 = 1_700_000_000.0


def _m(t: float) -> float:
    return math.floor(t / 60.0) * 60.0


START = _m(T0)


def _names(n: int) -> list[str]:
    return [f"dev{i // 10:04d}.p{i % 10}" for i in range(n)]


def _sql(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(str(path))
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _integrity(path: Path) -> str:
    return _sql(path, "PRAGMA integrity_check")[0][0]


def _good(n: int) -> np.ndarray:
    return np.zeros(n, np.uint8)


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------
def test_telemetry_round_trips_values_nan_as_null_and_quality(tmp_path):
    path = tmp_path / "h.db"
    names = ["tank01.fluid_temp", "tank01.level", "pump1.speed"]
    rows = [
        (START + 0.0, [40.0, np.nan, 1.0], [0, 2, 0]),
        (START + 1.5, [40.5, 0.75, 0.0], [0, 0, 0]),
        (START + 3.0, [np.nan, np.nan, np.nan], [2, 2, 1]),
    ]
    with Historian(path, names, batch_s=0.05) as h:
        for t, v, q in rows:
            h.record_scan(t, np.array(v), np.array(q, np.uint8))
        h.flush()
        got = h.telemetry(names, START - 1, START + 10, resolution="raw")
        qual = h.quality(names, START - 1, START + 10)
    assert got["t"].tolist() == [r[0] for r in rows]
    for j, name in enumerate(names):
        np.testing.assert_array_equal(got[name], np.array([r[1][j] for r in rows]))
        assert qual[name].tolist() == [r[2][j] for r in rows]
        assert qual[name].dtype == np.uint8
    # NaN is stored as SQL NULL, not as a float NaN or a sentinel
    types = _sql(path, 'SELECT typeof("tank01__level") FROM "telemetry_0" ORDER BY "t"')
    assert [t[0] for t in types] == ["null", "real", "null"]
    # an all-good scan stores no quality bytes at all
    blobs = _sql(path, 'SELECT "quality" FROM "telemetry_0" ORDER BY "t"')
    assert blobs[1][0] is None and bytes(blobs[0][0]) == bytes([0, 2, 0])
    assert _sql(path, "PRAGMA journal_mode")[0][0] == "wal"
    assert _integrity(path) == "ok"


def test_events_audit_and_state_round_trip_and_survive_reopening(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, ["a.x"]) as h:
        h.record_event(T0 + 1, "alarm", "tank03", "fluid hot", 800, {"temp": np.float64(61.5)})
        h.record_event(T0 + 2, "shed", "tank03", "mining shed", data={"kw": np.int64(250)})
        h.record_event(T0 + 3, "clear", "tank03", "fluid ok")
        h.record_audit(T0 + 4, "console:ana", "ttyUSB0", "cdu1.valve", 40.0, 55.0, "manual")
        h.record_audit(T0 + 5, "opcua:scada", "10.0.0.7", "tank03.budget", None, 80.0, "DR", False)
        h.save_state("modes", {"tank03": "manual", "latched": ["leak"]})
        h.save_state("modes", {"tank03": "auto", "latched": []})  # replaces
        h.flush()
        assert [e["kind"] for e in h.events()] == ["alarm", "shed", "clear"]
    with Historian(path, ["a.x"]) as h:
        ev = h.events()
        assert ev[0] | {"id": 0} == {
            "id": 0,
            "t": T0 + 1,
            "kind": "alarm",
            "source": "tank03",
            "message": "fluid hot",
            "severity": 800,
            "data": {"temp": 61.5},
        }
        assert ev[1]["data"] == {"kw": 250} and ev[1]["severity"] == 500
        assert [e["kind"] for e in h.events(kinds=["alarm", "clear"])] == ["alarm", "clear"]
        assert [e["message"] for e in h.events(t0=T0 + 2, t1=T0 + 2)] == ["mining shed"]
        assert [e["kind"] for e in h.events(limit=2)] == ["shed", "clear"]  # the newest two
        au = h.audit()
        assert [
            (a["who"], a["where"], a["point"], a["old"], a["new"], a["why"], a["ok"]) for a in au
        ] == [
            ("console:ana", "ttyUSB0", "cdu1.valve", 40.0, 55.0, "manual", True),
            ("opcua:scada", "10.0.0.7", "tank03.budget", None, 80.0, "DR", False),
        ]
        assert [a["t"] for a in h.audit(t0=T0 + 5)] == [T0 + 5]
        assert h.load_state("modes") == {"tank03": "auto", "latched": []}
        assert h.load_state("nothing") is None
    assert _integrity(path) == "ok"


def test_state_is_committed_when_save_state_returns(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, ["a.x"], batch_s=60.0) as h:
        h.save_state("overrides", {"pump1.speed": 70.0})
        # another connection (another process after a crash) sees it at once
        row = _sql(path, 'SELECT "value" FROM "state" WHERE "key" = ?', ("overrides",))
        assert json.loads(row[0][0]) == {"pump1.speed": 70.0}


def test_events_and_audit_are_committed_without_waiting_for_the_telemetry_batch(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, _names(50), batch_s=60.0) as h:
        h.record_scan(T0, np.ones(50), _good(50))  # telemetry waits for its batch...
        probe = sqlite3.connect(str(path))
        try:
            for i in range(5):
                t_start = time.monotonic()
                h.record_event(T0 + i, "alarm", "loop1", f"e{i}")
                h.record_audit(T0 + i, "controller", "scan", "pump1.speed", 1.0, 2.0, "pid")
                while not probe.execute(
                    'SELECT 1 FROM "audit" a, "events" e WHERE a."t" = ? AND e."t" = ?',
                    (T0 + i, T0 + i),
                ).fetchone():
                    # the bound only keeps a broken writer from hanging the suite; the
                    # claim is the order: committed while telemetry waits for its batch
                    assert time.monotonic() - t_start < 10, "event/audit not committed"
                    time.sleep(0.001)
            # ...while the event went straight through
            assert probe.execute('SELECT count(*) FROM "telemetry_0"').fetchone()[0] == 0
        finally:
            probe.close()


def test_duplicate_timestamps_keep_the_stored_scan_and_say_so(tmp_path):
    with Historian(tmp_path / "h.db", ["a.x"], batch_s=0.05) as h:
        h.record_scan(T0, np.array([1.0]), _good(1))
        h.flush()
        h.record_scan(T0, np.array([2.0]), _good(1))
        h.flush()
        assert h.telemetry(["a.x"], T0, T0, resolution="raw")["a.x"].tolist() == [1.0]
        assert any("already stored" in e["message"] for e in h.events(kinds=["info"]))


# --------------------------------------------------------------------------
# bad input and failures
# --------------------------------------------------------------------------
def test_wrong_length_raises_naming_the_lengths_and_loses_nothing(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, _names(5), batch_s=0.05) as h:
        h.record_scan(T0, np.arange(5.0), _good(5))
        h.flush()
        with pytest.raises(ValueError, match=r"values has 4 entries.*expected 5"):
            h.record_scan(T0 + 1, np.arange(4.0), _good(5))
        with pytest.raises(ValueError, match=r"quality 6.*expected 5"):
            h.record_scan(T0 + 1, np.arange(5.0), _good(6))
        with pytest.raises(ValueError, match="finite"):
            h.record_scan(math.nan, np.arange(5.0), _good(5))
        h.record_scan(T0 + 2, np.arange(5.0) + 10, _good(5))
        h.flush()
        got = h.telemetry(_names(5), T0 - 1, T0 + 9, resolution="raw")
    assert got["t"].tolist() == [T0, T0 + 2]
    assert got["dev0000.p4"].tolist() == [4.0, 14.0]
    assert _integrity(path) == "ok"


def _flush_until_ok(h: Historian, within: float = 5.0) -> None:
    """Flush, accepting failures while the writer waits to retry a failed commit."""
    deadline = time.monotonic() + within
    while True:
        try:
            h.flush()
            return
        except HistorianError:
            assert time.monotonic() < deadline, "the writer never recovered"
            time.sleep(0.1)


def test_a_writer_failure_is_recorded_reraised_and_the_rows_are_retried(tmp_path):
    path = tmp_path / "h.db"
    h = Historian(path, ["a.x"], batch_s=0.05)
    real = h._write_scans
    calls = []

    def broken(scans):
        calls.append(len(scans))
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        real(scans)

    h._write_scans = broken
    h.record_scan(T0, np.array([7.0]), _good(1))
    with pytest.raises(HistorianError, match="injected") as info:
        h.flush()
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert isinstance(h.error, sqlite3.OperationalError)
    # reported once; the writer retries the same scan and goes on
    _flush_until_ok(h)
    assert h.telemetry(["a.x"], T0, T0, resolution="raw")["a.x"].tolist() == [7.0]
    h.record_event(T0, "info", "test", "still alive")
    h.close()
    assert _integrity(path) == "ok"


def test_a_writer_error_is_raised_by_the_next_record_call(tmp_path):
    h = Historian(tmp_path / "h.db", ["a.x"], batch_s=0.05)
    fail = [True]

    def write_urgent(items):
        if fail[0]:
            fail[0] = False
            raise sqlite3.OperationalError("database is locked (injected)")
        Historian._write_urgent(h, items)

    h._write_urgent = write_urgent
    h.record_event(T0, "alarm", "x", "first")
    deadline = time.monotonic() + 5
    while h.error is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(HistorianError, match="locked"):
        h.record_event(T0 + 1, "alarm", "x", "second")  # queued, then the error is raised
    _flush_until_ok(h)
    assert [e["message"] for e in h.events()] == ["first", "second"]
    h.close()


def test_a_dead_writer_makes_every_call_raise(tmp_path):
    h = Historian(tmp_path / "h.db", ["a.x"], batch_s=0.05)

    def fatal(batch_due):
        raise MemoryError("writer killed (injected)")

    h._service = fatal
    h.record_event(T0, "info", "x", "wake the writer")
    h._thread.join(5)
    assert not h._thread.is_alive()
    for _ in range(2):
        with pytest.raises(HistorianError):
            h.record_scan(T0, np.array([1.0]), _good(1))
    with pytest.raises(HistorianError):
        h.flush()
    assert isinstance(h.error, MemoryError)
    h.close()


def test_an_overrun_drops_scans_counts_them_and_raises_an_alarm(tmp_path):
    with Historian(tmp_path / "h.db", ["a.x"], batch_s=60.0) as h:
        h._max_backlog = 3
        for i in range(10):
            h.record_scan(T0 + i, np.array([float(i)]), _good(1))
        assert h.dropped_scans == 7
        h.flush()
        assert h.telemetry(["a.x"], T0, T0 + 10, resolution="raw")["a.x"].tolist() == [0, 1, 2]
        alarms = h.events(kinds=["alarm"])
        assert alarms[-1]["source"] == "historian" and "7 scans dropped" in alarms[-1]["message"]


def test_another_sites_database_is_refused(tmp_path):
    path = tmp_path / "h.db"
    Historian(path, ["a.x"], site_name="Hall A").close()
    with pytest.raises(ValueError, match="Hall A"):
        Historian(path, ["a.x"], site_name="Hall B")
    Historian(path, ["a.x"], site_name="Hall A").close()
    Historian(path, ["a.x"]).close()


# --------------------------------------------------------------------------
# aggregates, resolution, retention
# --------------------------------------------------------------------------
def _synthetic(n_scans: int, n_points: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = START + np.arange(n_scans) * 1.0 + 0.25
    v = rng.normal(40.0, 5.0, (n_scans, n_points))
    v[rng.random(v.shape) < 0.1] = np.nan
    v[(t >= START + 120) & (t < START + 180), 1] = np.nan  # a whole minute without point 1
    return t, v


def _expected(t: np.ndarray, v: np.ndarray, minute: float, j: int) -> tuple[float, float, float]:
    sel = v[(t >= minute) & (t < minute + 60), j]
    sel = sel[~np.isnan(sel)]
    if not len(sel):
        return (math.nan, math.nan, math.nan)
    return (sel.mean(), sel.min(), sel.max())


@pytest.mark.parametrize("restart_at", [None, 150])
def test_minute_aggregates_hold_mean_min_max_of_completed_minutes(tmp_path, restart_at):
    """Live minutes come from the writer's accumulators, minutes that straddle a
    restart from the raw rows; both must give the same numbers."""
    path = tmp_path / "h.db"
    names = _names(4)
    t, v = _synthetic(5 * 60 + 30, 4)  # 5 whole minutes and half of the 6th
    cut = len(t) if restart_at is None else restart_at
    with Historian(path, names, batch_s=0.05) as h:
        for i in range(cut):
            h.record_scan(t[i], v[i], _good(4))
    with Historian(path, names, batch_s=0.05) as h:
        for i in range(cut, len(t)):
            h.record_scan(t[i], v[i], _good(4))
        h.flush()
        agg = {
            s: h.telemetry(names, START, START + 1000, resolution="1m", stat=s)
            for s in ("mean", "min", "max")
        }
    minutes = [START + 60 * k for k in range(5)]
    assert agg["mean"]["t"].tolist() == minutes  # the 6th minute is not complete
    for k, minute in enumerate(minutes):
        for j, name in enumerate(names):
            want = _expected(t, v, minute, j)
            got = (agg["mean"][name][k], agg["min"][name][k], agg["max"][name][k])
            np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"{name} minute {k}")
    assert np.isnan(agg["mean"]["dev0000.p1"][2])  # the all-NaN minute is NULL
    counts = _sql(path, 'SELECT "n" FROM "agg_mean_0" ORDER BY "t"')
    assert [c[0] for c in counts] == [60] * 5


def test_late_scans_are_folded_into_already_written_minutes(tmp_path):
    with Historian(tmp_path / "h.db", ["a.x"], batch_s=0.05) as h:
        for i in range(130):
            h.record_scan(START + i, np.array([1.0]), _good(1))
        h.flush()
        h.record_scan(START + 59.5, np.array([62.0]), _good(1))  # late, for minute 0
        h.record_scan(START + 131, np.array([1.0]), _good(1))
        h.flush()
        mean = h.telemetry(["a.x"], START, START, resolution="1m")["a.x"]
        top = h.telemetry(["a.x"], START, START, resolution="1m", stat="max")["a.x"]
    assert mean.tolist() == [pytest.approx((60 + 62) / 61)] and top.tolist() == [62.0]


def test_telemetry_auto_reads_raw_while_raw_exists_then_the_minute_means(tmp_path):
    path = tmp_path / "h.db"
    t, v = _synthetic(30 * 60, 2)
    with Historian(path, _names(2), raw_days=10 * 60 / DAY, batch_s=0.05) as h:
        for i in range(len(t)):
            h.record_scan(t[i], v[i], _good(2))
        h.flush()
        # young enough: raw, one row per scan
        recent = h.telemetry(["dev0000.p0"], t[-1] - 120, t[-1])
        assert len(recent["t"]) == 121 and np.array_equal(recent["t"], t[-121:])
        h.retention(now=t[-1])
        raw_start = _sql(path, 'SELECT min("t") FROM "telemetry_0"')[0][0]
        assert t[-1] - 11 * 60 < raw_start <= t[-1] - 10 * 60 + 1
        # older than the raw rows: 1-minute means
        old = h.telemetry(["dev0000.p0"], START, START + 600)
        assert old["t"].tolist() == [START + 60 * k for k in range(11)]
        np.testing.assert_allclose(old["dev0000.p0"][3], _expected(t, v, START + 180, 0)[0])
        # asking explicitly still works both ways
        assert len(h.telemetry(["dev0000.p0"], START, START + 600, resolution="raw")["t"]) == 0
        assert len(h.telemetry(["dev0000.p0"], t[-1] - 120, t[-1], resolution="1m")["t"]) == 2


def test_retention_deletes_raw_only_once_aggregated_and_old_aggregates(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, _names(3), raw_days=60 / DAY, agg_days=300 / DAY, batch_s=60) as h:
        for i in range(600):  # minutes 0..9; minute 9 is not complete, so not aggregated
            h.record_scan(START + i, np.full(3, float(i)), _good(3))
        h.flush()
        done = h.retention(now=START + 700)
        # raw: older than 700-60=640 is due, but only below the aggregated 540
        assert done["raw_rows"] == 540 and done["raw_cutoff"] == START + 540
        assert _sql(path, 'SELECT min("t"), count(*) FROM "telemetry_0"')[0] == (START + 540, 60)
        # aggregates whose minute ended before 700-300=400 are gone: minutes 0..5
        assert done["agg_rows"] == 6
        kept = h.telemetry(["dev0000.p0"], START, START + 1000, resolution="1m")
        assert kept["t"].tolist() == [START + 360, START + 420, START + 480]
        # later, once minute 9 is complete, its raw rows may go too
        h.record_scan(START + 600, np.zeros(3), _good(3))
        h.flush()
        assert h.retention(now=START + 700)["raw_rows"] == 60
    assert _integrity(path) == "ok"


def test_retention_retires_only_the_controllers_old_regulation_writes_from_the_audit(
    tmp_path, monkeypatch
):
    import thermogate.controller.historian.aggregate as aggregate

    monkeypatch.setattr(aggregate, "AUDIT_CHUNK", 7)  # several chunks, urgent rows between
    path = tmp_path / "h.db"
    with Historian(path, _names(1), raw_days=1.0, audit_days=100 / DAY, batch_s=60) as h:
        for i in range(30):  # old regulation writes: retired
            h.record_audit(START + i, "controller", "scan", "loop1.pump.speed_cmd", 40.0, 41.0 + i,
                           "pid", ok=True)  # fmt: skip
        kept = [  # old, but not the controller regulating: kept for good
            (START + 1, "op", "opcua", "mode", None, 2.0, "by hand", True),
            (START + 2, "controller", "scan", "loop1.pump", 60.0, None, "override expired", True),
            (START + 3, "unknown", "modbus", "loop1.pump.speed_cmd", 55.0, 41.0, "foreign", False),
            (START + 4, "plc", "plc", "plc.underfreq", None, None, "trip", True),
            (START + 5, "tech", "console", "console.login", None, None, "logged in", True),
        ]
        for row in kept:
            h.record_audit(*row[:7], ok=row[7])
        h.record_audit(
            START + 150, "controller", "scan", "loop1.fan.speed_cmd", 10.0, 11.0, "pid", ok=True
        )  # fmt: skip  (young: kept)
        h.flush()
        done = h.retention(now=START + 200)
        assert done["audit_rows"] == 30 and h.audit_deleted == 30
        left = [(a["who"], a["why"]) for a in h.audit(limit=100)]
        assert left == [(r[1], r[6]) for r in kept] + [("controller", "pid")]
        assert h.retention(now=START + 200)["audit_rows"] == 0
    assert _integrity(path) == "ok"


def test_a_non_positive_audit_days_is_refused(tmp_path):
    with pytest.raises(ValueError, match="audit_days"):
        Historian(tmp_path / "h.db", ["a.x"], audit_days=0.0)


def test_the_writer_applies_retention_by_itself(tmp_path):
    path = tmp_path / "h.db"
    with Historian(path, ["a.x"], raw_days=600 / DAY, batch_s=0.05) as h:
        for i in range(0, 3 * 3600, 10):
            h.record_scan(START + i, np.array([1.0]), _good(1))
        h.flush()
        # it ran at least once an hour (of data time) in: raw older than that went
        oldest = _sql(path, 'SELECT min("t") FROM "telemetry_0"')[0][0]
        assert oldest >= START + 3600 - 600 - 60
        assert len(h.telemetry(["a.x"], START, START + 3599, resolution="1m")["t"]) == 60


# --------------------------------------------------------------------------
# one source of truth for points: columns, shards, extension
# --------------------------------------------------------------------------
def test_column_names_are_safe_identifiers_derived_from_point_names():
    taken: set[str] = set()
    assert column_name("tank03.fluid_temp", taken) == "tank03__fluid_temp"
    assert column_name("TANK03.fluid_temp", taken) == "TANK03__fluid_temp_2"  # SQLite ignores case
    assert column_name("t", taken) == "p_t"
    assert column_name("quality", taken) == "p_quality"
    assert column_name("3phase.kw", taken) == "p_3phase__kw"
    assert column_name('odd "name"; drop', taken) == "odd_20__22_name_22__3b__20_drop"


def test_a_2500_point_site_is_sharded_in_tables_of_at_most_1000_columns(tmp_path):
    path = tmp_path / "h.db"
    names = _names(2500)
    rng = np.random.default_rng(3)
    vals = rng.normal(size=(130, 2500))
    qual = np.zeros(2500, np.uint8)
    qual[1999] = 1
    with Historian(path, names, batch_s=0.05) as h:
        for i in range(130):
            h.record_scan(START + i, vals[i], qual)
        h.flush()
        pick = [names[0], names[999], names[1000], names[1999], names[2499]]
        got = h.telemetry(pick, START, START + 200, resolution="raw")
        agg = h.telemetry(pick, START, START + 200, resolution="1m")
        q = h.quality(pick, START, START)
    for name in pick:
        j = names.index(name)
        np.testing.assert_array_equal(got[name], vals[:, j])
        np.testing.assert_allclose(agg[name], [vals[:60, j].mean(), vals[60:120, j].mean()])
    assert [q[n][0] for n in pick] == [0, 0, 0, 1, 0]
    shards = _sql(path, 'SELECT "shard", count(*), max("slot") FROM "points" GROUP BY "shard"')
    assert shards == [(0, 1000, 999), (1, 1000, 999), (2, 500, 499)]
    for k, n in enumerate((1000, 1000, 500)):
        cols = _sql(path, f'PRAGMA table_info("telemetry_{k}")')
        assert len(cols) == n + 2 <= MAX_POINTS_PER_SHARD + 2
        assert _sql(path, f'SELECT count(*) FROM "telemetry_{k}"')[0][0] == 130
        for stat in ("mean", "min", "max"):
            assert _sql(path, f'SELECT count(*) FROM "agg_{stat}_{k}"')[0][0] == 2
    assert _sql(
        path, 'SELECT "shard", "col", "idx" FROM "points" WHERE "name" = ?', (names[1500],)
    ) == [(1, "dev0150__p0", 1500)]


def test_reopening_with_an_extended_point_list_keeps_old_data_and_adds_columns(tmp_path):
    path = tmp_path / "h.db"
    old = _names(998)
    with Historian(path, old, batch_s=0.05) as h:
        for i in range(3):
            h.record_scan(START + i, np.arange(998.0) + i, _good(998))
    # two points dropped from the map, four added (shard 0 fills up, shard 1 starts)
    new = ["new.a", *old[2:], "new.b", "new.c", "new.d"]
    with Historian(path, new, batch_s=0.05) as h:
        for i in range(3, 5):
            v = np.full(len(new), -1.0)
            v[1:997] = np.arange(2.0, 998.0) + i
            v[0], v[-3], v[-2], v[-1] = 100 + i, 200 + i, 300 + i, 400 + i
            h.record_scan(START + i, v, _good(len(new)))
        h.flush()
        got = h.telemetry(
            [old[0], old[5], "new.a", "new.b", "new.d"], START, START + 10, resolution="raw"
        )
        q = h.quality([old[0], "new.d"], START, START + 10)
    assert got["t"].tolist() == [START + i for i in range(5)]
    np.testing.assert_array_equal(got[old[0]], [0, 1, 2, np.nan, np.nan])  # left the map
    np.testing.assert_array_equal(got[old[5]], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(got["new.a"], [np.nan] * 3 + [103, 104])
    np.testing.assert_array_equal(got["new.b"], [np.nan] * 3 + [203, 204])
    np.testing.assert_array_equal(got["new.d"], [np.nan] * 3 + [403, 404])  # in shard 1
    assert q[old[0]].tolist() == [0, 0, 0, 2, 2] and q["new.d"].tolist() == [2, 2, 2, 0, 0]
    points = dict(
        (r[0], r[1:]) for r in _sql(path, 'SELECT "name", "shard", "slot", "idx" FROM "points"')
    )
    assert points["new.a"] == (0, 998, 998) and points["new.b"] == (0, 999, 999)
    assert points["new.c"] == (1, 0, 1000) and points["new.d"] == (1, 1, 1001)
    cols = {r[1] for r in _sql(path, 'PRAGMA table_info("agg_max_0")')}
    assert {"new__a", "new__b", old[0].replace(".", "__")} <= cols
    # and it keeps working after a further reopen with the original list
    with Historian(path, old, batch_s=0.05) as h:
        h.record_scan(START + 9, np.arange(998.0), _good(998))
        h.flush()
        assert h.telemetry([old[0]], START + 9, START + 9)[old[0]].tolist() == [0.0]
    assert _integrity(path) == "ok"


def test_the_point_map_supplies_names_units_and_ranges(tmp_path):
    from thermogate.plc.pointmap import build_point_map
    from thermogate.plc.site import demo_site

    pmap = build_point_map(demo_site())
    with Historian.from_point_map(tmp_path / "h.db", pmap, batch_s=0.05) as h:
        rows = {p["name"]: p for p in h.points()}
        h.record_scan(T0, np.zeros(len(pmap)), _good(len(pmap)))
        h.flush()
    assert list(rows) == [p.name for p in pmap.points]
    p = next(p for p in pmap.points if p.unit == "degC")
    assert (rows[p.name]["unit"], rows[p.name]["lo"], rows[p.name]["hi"]) == (p.unit, p.min, p.max)


# --------------------------------------------------------------------------
# crash consistency: kill -9 at random moments
# --------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from thermogate.controller.historian import Historian

    path, run, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    names = [f"dev{i // 10:04d}.p{i % 10}" for i in range(n)]
    print("opening", flush=True)
    h = Historian(path, names, batch_s=0.05)
    print("ready", flush=True)
    v = np.random.default_rng(run).normal(size=n)
    q = np.zeros(n, np.uint8)
    i = 0
    while True:
        seq = run * 1_000_000 + i
        v[0] = seq
        v[1] = np.nan if i % 7 == 0 else i
        h.record_scan(time.time(), v, q)
        h.record_event(time.time(), "info", "crash", f"ev {seq}", data={"seq": seq})
        print(f"E {seq}", flush=True)
        h.record_audit(time.time(), "test", "child", names[0], seq - 1, seq, f"au {seq}")
        if i % 10 == 9:
            h.flush()
            print(f"F {seq}", flush=True)
        if i % 25 == 12:
            h.save_state("child", {"seq": seq})
            print(f"S {seq}", flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def _run_and_kill(script: Path, db: Path, run: int, n: int, delay: float) -> tuple[list, float]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(run), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    opened = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.endswith("\n"):
                lines.append((time.monotonic(), line.strip()))
                opened.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert opened.wait(30), "child did not start"
        time.sleep(delay)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    err = proc.stderr.read() if proc.stderr else ""
    for pipe in (proc.stdout, proc.stderr):  # closed here, not by a later test's collector
        if pipe is not None:
            pipe.close()
    assert "Traceback" not in err, err
    return lines, killed_at


def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path):
    db = tmp_path / "crash.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    n = 2500  # three shards: one scan is three rows in one transaction
    rng = random.Random(20240611)
    flushed: dict[int, int] = {}
    events_due: set[int] = set()
    saved: list[int] = []
    for run in range(1, 16):
        lines, killed_at = _run_and_kill(script, db, run, n, rng.uniform(0.05, 0.6))
        for at, line in lines:
            kind, _, seq = line.partition(" ")
            if kind == "F":
                flushed[run] = int(seq)
            elif kind == "E" and at <= killed_at - 0.5:  # promised within ~0.2 s
                events_due.add(int(seq))
            elif kind == "S":
                saved.append(int(seq))
        assert _integrity(db) == "ok", f"run {run}"
        if saved:  # the newest acknowledged state is what a restart would load
            state = _sql(db, 'SELECT "value" FROM "state" WHERE "key" = ?', ("child",))
            assert json.loads(state[0][0])["seq"] >= saved[-1]
    assert len(flushed) >= 5, "too few runs got as far as a flush"

    col = "dev0000__p0"
    stored = {r[0] for r in _sql(db, f'SELECT "{col}" FROM "telemetry_0"')}
    events = {
        r[0] for r in _sql(db, 'SELECT "message" FROM "events" WHERE "source" = ?', ("crash",))
    }
    audits = {r[0] for r in _sql(db, 'SELECT "why" FROM "audit"')}
    for run, last in flushed.items():
        for seq in range(run * 1_000_000, last + 1):
            assert seq in stored, f"flushed scan {seq} lost"
            assert f"ev {seq}" in events, f"flushed event {seq} lost"
            assert f"au {seq}" in audits, f"flushed audit {seq} lost"
    for seq in events_due:
        assert f"ev {seq}" in events, f"event {seq} acknowledged >0.5 s before the kill lost"

    # every scan is in all three shards (one transaction), and the aggregates
    # up to the watermark equal what the raw rows say, whatever was killed when
    ts = [{r[0] for r in _sql(db, f'SELECT "t" FROM "telemetry_{k}"')} for k in range(3)]
    assert ts[0] == ts[1] == ts[2]
    until = _sql(db, 'SELECT min("until") FROM "agg_progress"')[0][0]
    if until is not None:
        minute = '(CAST("t" / 60 AS INTEGER) * 60)'
        for c in ("dev0000__p1", "dev0249__p9"):
            k = 0 if c.startswith("dev0000") else 2
            want = _sql(
                db,
                f'SELECT {minute} AS m, count(*), avg("{c}"), min("{c}"), max("{c}") '
                f'FROM "telemetry_{k}" WHERE "t" < ? GROUP BY m ORDER BY m',
                (until,),
            )
            got = _sql(
                db,
                f'SELECT a."t", a."n", a."{c}", b."{c}", x."{c}" FROM "agg_mean_{k}" a '
                f'JOIN "agg_min_{k}" b USING ("t") JOIN "agg_max_{k}" x USING ("t") '
                'WHERE a."t" < ? ORDER BY a."t"',
                (until,),
            )
            assert [g[:2] for g in got] == [w[:2] for w in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(
                    np.array(g[2:], float), np.array(w[2:], float), rtol=1e-9, equal_nan=True
                )

    # the survivor reopens and accepts writes
    names = _names(n)
    with Historian(db, names, batch_s=0.05) as h:
        t_new = time.time() + 1000
        h.record_scan(t_new, np.full(n, 4.5), _good(n))
        h.record_event(time.time(), "info", "after", "reopened")
        h.flush()
        assert h.events(kinds=["info"], limit=1)[0]["message"] == "reopened"
        last = h.telemetry([names[-1]], t_new - 1, t_new + 1, resolution="raw")
        assert last[names[-1]].tolist() == [4.5]
    assert _integrity(db) == "ok"


# --------------------------------------------------------------------------
# out of the scan's way
# --------------------------------------------------------------------------
def _until(pred, what: str) -> None:
    """Poll ``pred``; the bound only keeps a broken writer from hanging the suite."""
    t_start = time.monotonic()
    while not pred():
        assert time.monotonic() - t_start < 20, what
        time.sleep(0.005)


def _rows(path: Path) -> int:
    return _sql(path, 'SELECT count(*) FROM "telemetry_0"')[0][0]


def test_a_batch_falling_due_during_a_scan_waits_for_its_end_and_events_do_not(
    tmp_path, monkeypatch
):
    """The scan holds the batches (``hold_batches``): the writer's commit takes the
    slack after it, not the cores its read needs; an event still goes at once."""
    from thermogate.controller.historian import committer

    monkeypatch.setattr(committer, "HOLD_MAX_S", 3600.0)  # the order alone is the claim
    path = tmp_path / "h.db"
    with Historian(path, _names(20), batch_s=0.02) as h:
        h.record_scan(T0, np.ones(20), _good(20))
        _until(lambda: _rows(path) == 1, "a batch with no scan running")
        h.hold_batches()  # a scan starts
        h.record_scan(T0 + 1, np.ones(20), _good(20))
        h.record_event(T0 + 1, "alarm", "loop1", "during the scan")
        _until(lambda: _sql(path, 'SELECT count(*) FROM "events"')[0][0] == 1, "event")
        time.sleep(0.2)  # ten batch periods: every one of them due
        assert _rows(path) == 1  # held while the scan runs
        h.release_batches()  # the scan ends: the held batch runs in the slack
        _until(lambda: _rows(path) == 2, "the held batch after the scan")


def test_a_scan_that_never_ends_holds_a_batch_no_longer_than_the_bound(tmp_path, monkeypatch):
    from thermogate.controller.historian import committer

    monkeypatch.setattr(committer, "HOLD_MAX_S", 0.1)
    path = tmp_path / "h.db"
    with Historian(path, _names(20), batch_s=0.02) as h:
        h.hold_batches()  # and never released: a loop with no gap between scans
        h.record_scan(T0, np.ones(20), _good(20))
        _until(lambda: _rows(path) == 1, "telemetry committed despite the hold")


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_a_database_path_that_cannot_be_one_is_a_historian_error_naming_it(tmp_path, where):
    # Both ended in a traceback (FileExistsError, sqlite3.OperationalError).
    (tmp_path / "afile").write_text("x")
    path = tmp_path if where == "a directory" else tmp_path / "afile" / "x.db"
    with pytest.raises(HistorianError, match=str(path).replace(".", r"\.")):
        Historian(path, ["a.x"])
