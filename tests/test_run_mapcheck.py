"""A site file edited between two runs on one database: what moved is refused.

The commissioning prober removed a tank from the middle of its site file and
restarted against a PLC still on the old layout: the next tank's history then
recorded the removed one's temperature, and its valve command went into the
removed tank's register. Real parts: real SQLite files, the real run entry
point (one line on stderr, exit 2), a loopback port nobody answers on.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sitefiles import write_run_config

from thermogate.controller.mapcheck import POINT_MAP_KEY, PointMapChanged
from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import load_run_config
from thermogate.plc.site import demo_site_text

CLI = [sys.executable, "-m", "thermogate.controller.cli"]


def _without(text: str, header: str, name: str) -> str:
    """``text`` less the ``[[header]]`` block named ``name`` (blocks end at a blank line)."""
    blocks = re.split(r"\n(?=\n)", text)
    keep = [b for b in blocks if not (f"[[{header}]]" in b and f'name = "{name}"' in b)]
    assert len(keep) == len(blocks) - 1, f"no [[{header}]] named {name}"
    return "\n".join(keep)


def _demo_less_tank10() -> str:
    """The demo with tank10 (a mining tank the relay does not shed) removed:
    tank11 and tank12 take its place on the PLC."""
    return _without(_without(demo_site_text(), "tanks", "tank10"), "control_loops", "tank10_fluid")


def _start_and_stop(cfg: Path, *, accept: bool = False) -> None:
    async def run() -> None:
        config = load_run_config(str(cfg), None)
        if accept:
            from dataclasses import replace

            config = replace(config, accept_new_map=True)
        rt = RealTimeController(config)
        try:
            await rt.scan_once()
        finally:
            await rt.close()

    asyncio.run(run())


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _counts(db: Path) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        _rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("events", "audit", "telemetry_0")
    )


def test_a_tank_removed_from_the_middle_is_refused_naming_what_moved_and_nothing_is_written(
    tmp_path,
):
    cfg = write_run_config(tmp_path, demo_site_text())
    _start_and_stop(cfg)
    db = tmp_path / "site.db"
    before = _counts(db)
    (tmp_path / "site.toml").write_text(_demo_less_tank10(), encoding="utf-8")
    with pytest.raises(PointMapChanged) as info:
        _start_and_stop(cfg)
    text = str(info.value)
    assert "moved since the last run on" in text and "--accept-new-map" in text
    assert "gone from the map: tank10" in text  # what shifted the rest
    assert f"the site file {tmp_path / 'site.toml'} changed its point map" in text
    # the first point that moved is tank11's, now where tank10's was
    assert re.search(r"tank11\.\w+ unit 1 \w+ \d+ .*-> unit 1 \w+ \d+", text), text
    assert _counts(db) == before  # refused before the historian opened: nothing written
    # the PLC was reprogrammed to match: accepted, said in the event log, stored
    _start_and_stop(cfg, accept=True)
    [(message,)] = _rows(db, "SELECT message FROM events WHERE kind = 'point-map'")
    assert "accepted with --accept-new-map" in message and "tank11." in message
    _start_and_stop(cfg)  # the new layout is the stored one now: no refusal
    stored = _rows(db, f"SELECT value FROM state WHERE key = '{POINT_MAP_KEY}'")
    assert '"tank10.' not in stored[0][0] and '"tank11.fluid_temp"' in stored[0][0]


def test_a_tank_appended_at_the_end_moves_nothing_and_starts(tmp_path):
    cfg = write_run_config(tmp_path, _demo_less_tank10())
    _start_and_stop(cfg)
    # tank10 back, at the end of the tanks: every other point keeps its address
    tanks10 = demo_site_text().split('[[tanks]]\nname = "tank10"', 1)[1].split("\n\n", 1)[0]
    loop10 = demo_site_text().split('[[control_loops]]\nname = "tank10_fluid"', 1)[1]
    loop10 = loop10.split("\n\n", 1)[0]
    grown = (
        _demo_less_tank10()
        + f'\n[[tanks]]\nname = "tank10"{tanks10}\n'
        + f'\n[[control_loops]]\nname = "tank10_fluid"{loop10}\n'
    )
    (tmp_path / "site.toml").write_text(grown, encoding="utf-8")
    _start_and_stop(cfg)
    assert _rows(tmp_path / "site.db", "SELECT * FROM events WHERE kind = 'point-map'") == []


def test_run_says_it_in_one_line_and_exits_2(tmp_path):
    cfg = write_run_config(tmp_path, demo_site_text())
    _start_and_stop(cfg)
    (tmp_path / "site.toml").write_text(_demo_less_tank10(), encoding="utf-8")
    proc = subprocess.run(
        [*CLI, "run", "--config", str(cfg), "--no-opcua", "--no-console"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "points moved since the last run" in line and "--accept-new-map" in line
