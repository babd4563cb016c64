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

from thermogate.controller.run import RealTimeController
from thermogate.controller.runconfig import load_run_config
from thermogate.controller.signals import BAD, FLAG_ZERO
from thermogate.plc.site import demo_site_text

#: a tank (with its PDU and feeder) the demo plant's PLC knows nothing of
TANK99 = """
[[feeders]]
name = "feeder_m9"
rating_a = 630.0
unit_id = 17

[[pdus]]
name = "pdu_tank99"
feeder = "feeder_m9"
rating_a = 500.0
unit_id = 99

[[tanks]]
name = "tank99"
workload = "asic"
units = 46
volume_l = 2000.0
hx_ua_kw_k = 30.0
dielectric_flow_l_s = 15.0
design_water_flow_m3h = 36.0
loop = "loop1"
pdu = "pdu_tank99"
unit_id = 1

[[control_loops]]
name = "tank99_fluid"
measurement = "tank99.fluid_temp"
actuators = ["tank99.valve_cmd"]
setpoint = 50.0
kp = 6.0
"""


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_a_tank_the_plc_does_not_serve_is_bad_unbudgeted_and_its_refused_writes_said_once(
    tmp_path,
):
    (tmp_path / "site.toml").write_text(demo_site_text() + TANK99, encoding="utf-8")
    scans = 12

    async def scenario() -> tuple[RealTimeController, list[str]]:
        async with served(speed=1.0) as (_sp, port):
            cfg_file = tmp_path / "controller.toml"
            cfg_file.write_text(
                '[controller]\nsite = "site.toml"\ndb = "site.db"\n\n'
                f'[modbus]\nhost = "127.0.0.1"\nport = {port}\ntimeout_s = 1.0\n\n'
                "[model]\nenabled = false\n",
                encoding="utf-8",
            )
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
