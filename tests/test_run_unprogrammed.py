"""Equipment in the site file that the PLC does not serve yet, met as a run meets it.

The commissioning prober added a tank to its site file before the PLC had been
programmed for it. The PLC answered 0 for the tank's readings (addresses inside
its table) and refused its writes (exception 02). The run read a GOOD tank at
0 degC, budgeted it, and wrote 183 failed-write events a minute. Real parts: the
demo plant served over Modbus TCP, the controller's real run loop, SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from served import served
from sitefiles import TANK99, write_run_config

from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import load_run_config
from thermogate.controller.signals import BAD, FLAG_ZERO
from thermogate.plc.site import demo_site_text


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_a_tank_the_plc_does_not_serve_is_bad_unbudgeted_and_its_refused_writes_said_once(
    tmp_path,
):
    scans = 12

    async def scenario() -> tuple[RealTimeController, list[str]]:
        async with served(speed=1.0) as (_sp, port):
            cfg_file = write_run_config(tmp_path, demo_site_text() + TANK99, port, 1.0)
            rt = RealTimeController(load_run_config(str(cfg_file), None))
            try:
                for _ in range(scans):
                    await rt.scan_once()
                alarms = rt.ctrl.alarms.active()
            finally:
                await rt.close()
            return rt, alarms

    rt, alarms = asyncio.run(scenario())
    i = rt.pmap.position("tank99.fluid_temp")
    assert rt.ctrl.quality[i] == BAD and rt.ctrl.estimator.flags[i] & FLAG_ZERO
    assert "failsafe:tank99" in alarms and "sensors:all-zero" in alarms
    assert "link.writes" in alarms
    # the planner gave it nothing: every budget written to it (and refused) is 0
    budgets = _rows(tmp_path / "site.db", "SELECT new, ok FROM audit WHERE point = ?",
                    ("tank99.power_budget_kw",))  # fmt: skip
    assert budgets and all(new == 0.0 and not ok for new, ok in budgets), budgets
    events = _rows(tmp_path / "site.db", "SELECT kind, source, message FROM events ORDER BY t")
    failed = [src for kind, src, _ in events if kind == "write-failed"]
    # one event per refused point over all the scans, not one per write
    assert failed and len(failed) == len(set(failed)) <= 3, failed
    assert all(src.startswith("tank99.") for src in failed)
    # no other tank was called all-zero
    flagged = [src for kind, src, msg in events if kind == "alarm" and "all-zero" in msg]
    assert flagged and all(src.startswith("tank99.") for src in flagged)
