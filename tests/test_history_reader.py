"""HistoryReader, the one read path: read-only for real, one site's file only, snapshots."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from thermogate.controller.cli import main
from thermogate.controller.historian import (
    Historian,
    HistorianError,
    HistoryReader,
    WrongSiteError,
)
from thermogate.plc.errors import ThermogateError

T0 = 1_700_000_000.0
NAMES = ["a.x", "a.y"]


def _fill(h: Historian, n: int, start: float = T0) -> None:
    for i in range(n):
        h.record_scan(start + i, np.array([float(i), -float(i)]), np.array([0, 2], np.uint8))
    h.flush(timeout=30.0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A closed historian of site "Hall A": 120 scans, one event."""
    path = tmp_path / "hist.db"
    with Historian(path, NAMES, site_name="Hall A", batch_s=0.05) as h:
        _fill(h, 120)
        h.record_event(T0, "alarm", "a", "hot", 700)
    return path


def test_the_reader_refuses_every_write_and_the_rows_stay(db: Path) -> None:
    with HistoryReader(db, "Hall A") as reader:
        for sql in ('DELETE FROM "events"', "INSERT INTO \"meta\" VALUES ('k', 'v')"):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.query(sql)
        assert [e["message"] for e in reader.events()] == ["hot"]
        assert reader.query('SELECT count(*) AS n FROM "telemetry_0"') == [{"n": 120}]


def test_another_sites_history_is_refused_in_one_clear_line(db: Path) -> None:
    with pytest.raises(WrongSiteError) as info:
        HistoryReader(db, "Hall B")
    msg = str(info.value)
    assert isinstance(info.value, ThermogateError)
    assert str(db) in msg and "'Hall A'" in msg and "'Hall B'" in msg and "\n" not in msg
    with HistoryReader(db) as reader:  # no site asked: any history is readable
        assert reader.site_name == "Hall A"


def test_training_on_another_sites_history_is_a_one_line_error(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--db", str(db)]) == 2  # the built-in demo site is not "Hall A"
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("thermogate: error:") and "holds the history of site 'Hall A'" in err


def test_a_file_that_is_not_a_historian_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(HistorianError, match="not a thermogate historian database"):
        HistoryReader(other)
    text = tmp_path / "notes.db"
    text.write_text("not SQLite at all, long enough to fill a header page " * 20)
    with pytest.raises(HistorianError, match="not a readable historian database"):
        HistoryReader(text)
    with pytest.raises(HistorianError, match="no such historian database"):
        HistoryReader(tmp_path / "missing.db")


def test_a_snapshot_sees_one_state_while_the_writer_commits(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    with Historian(path, NAMES, batch_s=0.05) as h:
        _fill(h, 60)
        reader = HistoryReader(path)
        try:
            with reader.snapshot():
                span = reader.span()
                _fill(h, 60, start=T0 + 60)  # committed while the snapshot is open
                tel = reader.telemetry(NAMES, -1e18, 1e18, resolution="raw")
                t, values, quality = reader.scans(NAMES, -1e18, 1e18)
            assert span == (T0, T0 + 59)
            assert len(tel["t"]) == 60 and tel["t"][-1] == span[1]
            np.testing.assert_array_equal(t, tel["t"])
            np.testing.assert_array_equal(values["a.y"], -np.arange(60.0))
            assert set(quality["a.y"].tolist()) == {2}
            assert reader.span() == (T0, T0 + 119)  # a new read sees the new scans
        finally:
            reader.close()
