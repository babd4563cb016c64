"""An OpenADR event met end to end: a VTN (openleadr's server) on loopback sends
it, thermogate's VEN opts in, the controller (``RealTimeController``, as
``thermogate run`` runs it) meets it over real Modbus TCP against the served
plant, settles it as the grid operator would, and the VTN receives the
telemetry that shows it. What is asserted is the plant's meter.

The plant runs at 30x; the controller's clock is the plant's (as Unix-like
seconds), and so is the VEN's, so the event is timed in plant seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest
from test_grid_openadr import VTN_WARNINGS, Loopback

from thermogate.controller.grid.openadr import CURTAILABLE_RID, IMPORT_RID
from thermogate.controller.modbus_io import Endpoint
from thermogate.controller.run import RealTimeController, grid_telemetry, make_ven
from thermogate.controller.runconfig import RunConfig
from thermogate.hil.runner import ScenarioPlant
from thermogate.hil.serve import ServedPlant
from thermogate.plc.site import demo_site

SPEED = 30.0
INTERVAL_S = 300.0  # settle per 5 min so that the test settles one in seconds of wall time
#: the controller's epoch: interval-aligned, and ahead of the wall clock (the VTN
#: must see the event as upcoming, whatever plant time it falls at)
EPOCH = (math.ceil(datetime.now(UTC).timestamp() / INTERVAL_S) + 2) * INTERVAL_S


def _site():
    base = demo_site()
    grid = dataclasses.replace(base.grid, settlement_interval_s=INTERVAL_S)
    # 10 s of plant time is a third of a second of wall at 30x: a loaded host's
    # stall would take the PLC to its safe state; 60 s is 2 s of wall.
    plc = dataclasses.replace(base.plc, heartbeat_timeout_s=60.0)
    return dataclasses.replace(base, grid=grid, plc=plc)


@VTN_WARNINGS
@pytest.mark.timeout(180)
def test_an_openadr_event_is_met_over_modbus_settled_and_reported(tmp_path) -> None:
    site = _site()
    lb = Loopback()

    async def main() -> dict:
        sim = ScenarioPlant(site, "normal-day")
        sp = ServedPlant(sim, speed=SPEED)
        _, mb_port = await sp.server.start_tcp("127.0.0.1", 0)
        pl = sim.plant
        clock_task = asyncio.create_task(sp.run())
        vtn = lb.vtn_server()
        await vtn.run()
        cfg = RunConfig(
            site,
            tmp_path / "h.db",
            Endpoint("tcp", "127.0.0.1", mb_port),
            site.scan_interval_s,
            0.25,
            built_in_plant=False,
            forecast=False,
            openadr=lb.cfg,
        )
        rt = RealTimeController(cfg, clock=lambda: EPOCH + pl.t)
        ven = make_ven(rt, lb.cfg)
        out: dict = {"site_kw": []}
        try:
            await ven.start()
            await rt.scan_once()  # the VEN registers once the site's import is known
            # registered, and the hall settled under its limit (the plant starts with
            # every load at its rating, more than the grid feeds)
            while not ven.registered or pl.t < 120.0:
                await rt.scan_once()
                await asyncio.sleep(0.02)
            now = grid_telemetry(rt)
            assert now["import_kw"] <= site.import_limit_kw, now
            limit = round(now["import_kw"] - 700.0)
            # the event: from a minute before an interval boundary to just after the
            # next one, so one whole interval lies inside it
            boundary = (math.floor((pl.t + 150.0) / INTERVAL_S) + 1) * INTERVAL_S
            start, end = boundary - 60.0, boundary + INTERVAL_S + 30.0
            eid = str(
                vtn.add_event(
                    "ven-hall",
                    "LOAD_DISPATCH",
                    "setpoint",
                    [
                        {
                            "dtstart": datetime.fromtimestamp(EPOCH + start, UTC),
                            "duration": timedelta(seconds=end - start),
                            "signal_payload": limit,
                        }
                    ],
                    callback=lb.on_opt,
                )
            )
            while pl.t < end + 20.0:
                await rt.scan_once()
                if boundary + 30.0 <= pl.t < boundary + INTERVAL_S:
                    out["site_kw"].append(pl.site_kw)  # the plant's own meter
                await asyncio.sleep(0.01)
            rt.historian.flush()
            out.update(
                eid=eid,
                limit=limit,
                before=now["import_kw"],
                curtailments=list(rt.ctrl.state.curtailments),
                settled=rt.historian.compliance(),
                events=[e["message"] for e in rt.historian.events() if e["source"] == "grid"],
                boundary=boundary,
            )
        finally:
            await ven.stop()
            await rt.close()
            await vtn.stop()
            clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock_task
            await sp.server.stop()
        return out

    out = asyncio.run(main())
    assert lb.opts.get(out["eid"]) == "optIn"
    assert any(f"OpenADR event {out['eid']}" in m and "optIn" in m for m in out["events"])
    # met: the plant's meter stayed under the limit through the settled interval
    assert out["site_kw"] and max(out["site_kw"]) <= out["limit"]
    assert out["before"] - max(out["site_kw"]) >= 700.0
    # settled as the grid operator would: the one whole interval, compliant
    rows = [r for r in out["settled"] if r["instruction"].startswith("curtailment #")]
    assert [r["t"] for r in rows] == [EPOCH + out["boundary"]]
    assert rows[0]["compliant"] is True and rows[0]["metered_kw"] <= out["limit"]
    # reported: the VTN saw the import fall and what could still be curtailed
    imports = lb.reports[IMPORT_RID]
    assert imports and min(imports) <= out["limit"] < max(imports)
    assert lb.reports[CURTAILABLE_RID]
