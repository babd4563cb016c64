"""thermogate as an OpenADR 2.0b VEN (controller/grid/openadr.py).

The translation is tested on hand-built event dicts (the shape openleadr hands
its ``on_event`` handler); the VEN end to end against a real openleadr VTN on
loopback HTTP (no signatures, no TLS), giving its commands to the real control
core's command path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openleadr import OpenADRServer, objects, utils

from thermogate.controller.core import (
    ClearCurtailment,
    Command,
    CommandResult,
    Controller,
    Principal,
    RequestCurtailment,
)
from thermogate.controller.grid.compliance import Instruction
from thermogate.controller.grid.openadr import (
    CURTAILABLE_RID,
    IMPORT_RID,
    OPT_IN,
    OPT_OUT,
    Ven,
    VenConfig,
    decide,
    parse_openadr,
    translate_event,
)
from thermogate.controller.runconfig import load_run_config
from thermogate.controller.signals import Observation
from thermogate.plc.config import loads_toml
from thermogate.plc.errors import ConfigError
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site, demo_site_text

LIMIT_KW = 2870.0  # the demo site's import limit
T0 = 1_800_000_000.0  # "now" of the pure tests (epoch seconds)
CFG = VenConfig(vtn_url="http://127.0.0.1:1/x", ven_name="hall", max_curtail_kw=1500.0)
SITE_NOW = {"import_kw": 2600.0, "curtailable_kw": 1800.0}


def at(s: float) -> datetime:
    return datetime.fromtimestamp(s, UTC)


def event(*signals: dict[str, Any], status: str = "far", mod: int = 0, eid: str = "e1") -> dict:
    """An event dict as openleadr gives it to ``on_event``."""
    starts = [iv["dtstart"] for s in signals for iv in s.get("intervals", []) if "dtstart" in iv]
    return {
        "event_descriptor": {
            "event_id": eid,
            "modification_number": mod,
            "event_status": status,
            "test_event": False,
        },
        "active_period": {"dtstart": min(starts) if starts else at(T0)},
        "event_signals": list(signals),
        "response_required": "always",
    }


def signal(name: str, kind: str, *values: float, start: float = T0 + 60, dur: float = 900) -> dict:
    return {
        "signal_name": name,
        "signal_type": kind,
        "signal_id": "s",
        "intervals": [
            {
                "dtstart": at(start + k * dur),
                "duration": timedelta(seconds=dur),
                "signal_payload": v,
                "uid": k,
            }
            for k, v in enumerate(values)
        ],
    }


def verdict(ev: dict, site: dict[str, float] = SITE_NOW, cfg: VenConfig = CFG):
    return translate_event(ev, site, cfg, import_limit_kw=LIMIT_KW, now=T0)


# -- the translation ---------------------------------------------------------
def test_a_load_dispatch_setpoint_is_an_import_limit_in_kw() -> None:
    v = verdict(event(signal("LOAD_DISPATCH", "setpoint", 1500.0, 1800.0)))
    assert v.opt == OPT_IN, v.reason
    assert v.instructions == (
        Instruction(T0 + 60, T0 + 960, 1500.0),
        Instruction(T0 + 960, T0 + 1860, 1800.0),
    )
    in_mw = signal("LOAD_DISPATCH", "setpoint", 1.5)
    in_mw["measurement"] = {"name": "powerReal", "unit": "W", "scale": "M", "description": "x"}
    assert verdict(event(in_mw)).instructions == (Instruction(T0 + 60, T0 + 960, 1500.0),)


def test_intervals_without_their_own_start_follow_the_active_period() -> None:
    sig = signal("LOAD_DISPATCH", "setpoint", 2000.0, 2100.0, start=T0 + 300, dur=600)
    for iv in sig["intervals"]:
        del iv["dtstart"]
    ev = event(sig)
    ev["active_period"] = {"dtstart": at(T0 + 300)}
    assert verdict(ev).instructions == (
        Instruction(T0 + 300, T0 + 900, 2000.0),
        Instruction(T0 + 900, T0 + 1500, 2100.0),
    )


def test_simple_levels_are_configured_shares_of_the_import_limit() -> None:
    v = verdict(event(signal("SIMPLE", "level", 0, 1, 2, 3)))
    assert v.opt == OPT_IN, v.reason
    assert [i.limit_kw for i in v.instructions] == pytest.approx(
        [0.9 * LIMIT_KW, 0.75 * LIMIT_KW, 0.5 * LIMIT_KW]
    )
    assert v.instructions[0].start_s == T0 + 60 + 900  # level 0 is normal operation
    normal = verdict(event(signal("SIMPLE", "level", 0)), site={})
    assert normal.opt == OPT_IN and normal.instructions == ()


def test_load_control_capacity_is_a_share_of_the_import_limit() -> None:
    v = verdict(event(signal("LOAD_CONTROL", "x-loadControlCapacity", 0.6)))
    assert v.opt == OPT_IN and v.instructions[0].limit_kw == pytest.approx(0.6 * LIMIT_KW)
    kw = verdict(event(signal("LOAD_CONTROL", "x-loadControlCapacity", 1500.0)))
    assert kw.opt == OPT_OUT and "LOAD_DISPATCH/setpoint" in kw.reason


def test_past_intervals_are_dropped_and_one_under_way_starts_now() -> None:
    v = verdict(event(signal("LOAD_DISPATCH", "setpoint", 1000.0, 2000.0, start=T0 - 1000)))
    assert v.instructions == (Instruction(T0, T0 + 800, 2000.0),)
    over = verdict(event(signal("LOAD_DISPATCH", "setpoint", 1000.0, start=T0 - 1000)))
    assert over.opt == OPT_IN and over.instructions == ()


def test_a_limit_above_the_site_import_limit_binds_nothing() -> None:
    v = verdict(event(signal("LOAD_DISPATCH", "setpoint", 9000.0)))
    assert v.opt == OPT_IN and v.instructions[0].limit_kw == LIMIT_KW


def test_the_opt_decision_weighs_the_commitment_and_what_is_curtailable_now() -> None:
    ins = [Instruction(T0, T0 + 900, 1200.0)]  # 1400 kW of reduction from 2600 kW
    assert decide(ins, SITE_NOW, CFG).opt_in
    beyond = decide([Instruction(T0, T0 + 900, 1000.0)], SITE_NOW, CFG)  # 1600 > 1500
    assert not beyond.opt_in and "beyond the commitment of 1500 kW" in beyond.reason
    short = decide(ins, {"import_kw": 2600.0, "curtailable_kw": 1300.0}, CFG)
    assert not short.opt_in and "only 1300 kW is curtailable" in short.reason
    unknown = decide(ins, {"import_kw": math.nan, "curtailable_kw": 1300.0}, CFG)
    assert not unknown.opt_in and "no telemetry" in unknown.reason
    assert decide(ins, {}, CFG).opt == OPT_OUT


def _no_payload(ev: dict) -> None:
    del ev["event_signals"][0]["intervals"][0]["signal_payload"]


def _open_ended(ev: dict) -> None:
    ev["event_signals"][0]["intervals"][0]["duration"] = timedelta(0)


def test_training_counts_as_curtailable_only_above_what_it_draws_at_its_lowest_cap() -> None:
    """Counted whole, training's 620 kW was offered where only ~310 could go: the
    VEN opted in to an import limit of 400 kW and missed it every interval."""
    import numpy as np

    from thermogate.controller.core import Controller
    from thermogate.controller.grid.openadr import site_telemetry
    from thermogate.plc.pointmap import build_point_map

    site = demo_site()
    ctrl = Controller(site, build_point_map(site))
    values = np.zeros(len(ctrl.pmap))
    for ld in ctrl.topo.loads:
        values[ld.power] = ld.rated_kw * (0.95 if ld.kind == "row" else 0.6)
    ctrl.values = values
    mining = sum(0.6 * ld.rated_kw for ld in ctrl.topo.loads if ld.wclass == "mining")
    rows = [ld for ld in ctrl.topo.loads if ld.kind == "row"]
    floor = sum(r.floor_kw for r in rows)
    # H200 rows busy at 200 W a GPU: idle, the GPUs at the cap, the rest of the node
    assert floor == pytest.approx(sum(0.49 * r.rated_kw for r in rows), rel=0.02)
    spare = sum(0.95 * r.rated_kw for r in rows) - floor
    assert site_telemetry(ctrl)["curtailable_kw"] == pytest.approx(mining + spare)


@pytest.mark.parametrize(
    ("ev", "why"),
    [
        (event(signal("ELECTRICITY_PRICE", "price", 80.0)), "ELECTRICITY_PRICE/price is not"),
        (event(signal("LOAD_DISPATCH", "delta", -500.0)), "LOAD_DISPATCH/delta is not"),
        (event(signal("SIMPLE", "level", 7)), "level 7 is not 0, 1, 2 or 3"),
        (event(signal("LOAD_DISPATCH", "setpoint", -5.0)), "< 0"),
        (event(signal("LOAD_DISPATCH", "setpoint", math.nan)), "not a finite number"),
        (event(), "no event signals"),
        ({"event_signals": "garbage"}, "no event signals"),
        ({"event_signals": [42]}, "not a table"),
        (event(signal("LOAD_DISPATCH", "setpoint")), "no intervals"),
        (
            event(
                signal("LOAD_DISPATCH", "setpoint", 1500.0),
                signal("x-weather", "level", 1),
            ),
            "x-weather/level is not accepted",
        ),
    ],
)
def test_unknown_signals_and_malformed_events_are_opted_out_with_a_reason(
    ev: dict, why: str
) -> None:
    v = verdict(ev)
    assert v.opt == OPT_OUT and v.instructions == ()
    assert why in v.reason


@pytest.mark.parametrize(
    ("spoil", "why"),
    [(_no_payload, "no numeric payload"), (_open_ended, "open-ended")],
)
def test_a_spoilt_interval_is_opted_out(spoil: Callable[[dict], None], why: str) -> None:
    ev = event(signal("LOAD_DISPATCH", "setpoint", 1500.0))
    spoil(ev)
    v = verdict(ev)
    assert v.opt == OPT_OUT and why in v.reason


def test_an_itembase_that_is_not_real_power_is_opted_out() -> None:
    sig = signal("LOAD_DISPATCH", "setpoint", 1.5)
    sig["measurement"] = {"name": "energyReal", "unit": "Wh", "scale": "k"}
    v = verdict(event(sig))
    assert v.opt == OPT_OUT and "not real power" in v.reason


# -- the [openadr] section -------------------------------------------------------
GOOD = """
[openadr]
vtn_url = "https://vtn.example.net/OpenADR2/Simple/2.0b"
ven_name = "hall-7"
max_curtail_kw = 1200
poll_s = 5
report_s = 15
simple_moderate = 0.8
simple_high = 0.6
simple_special = 0.3
"""


def openadr(text: str, base: Path = Path(".")) -> VenConfig:
    return parse_openadr(loads_toml(text, "run.toml").get_section("openadr"), base)


def test_the_openadr_section_is_read() -> None:
    c = openadr(GOOD)
    assert (c.vtn_url, c.ven_name, c.max_curtail_kw) == (
        "https://vtn.example.net/OpenADR2/Simple/2.0b",
        "hall-7",
        1200.0,
    )
    assert (c.poll_s, c.report_s, c.simple_shares) == (5.0, 15.0, (0.8, 0.6, 0.3))
    assert c.ven_id is None and c.cert is None
    least = openadr('[openadr]\nvtn_url = "http://v:8080/x"\nven_name = "a"\nmax_curtail_kw = 1')
    assert least.poll_s is None and least.report_s == 10.0


@pytest.mark.parametrize(
    ("edit", "key", "why"),
    [
        (("vtn_url = ", "vtn_urll = "), "vtn_url", "required key is missing"),
        (("https://vtn.example.net", "ftp://vtn"), "vtn_url", "not an http:// or https://"),
        (("max_curtail_kw = 1200", "max_curtail_kw = -3"), "max_curtail_kw", "must be above 0"),
        (("max_curtail_kw = 1200", 'max_curtail_kw = "1200"'), "max_curtail_kw", "a number"),
        (("report_s = 15", "report_s = 0.5"), "report_s", "below the minimum 1"),
        (("report_s = 15", "report_s = 2.5"), "report_s", "whole seconds"),
        (("poll_s = 5", "poll_s = 0"), "poll_s", "below the minimum"),
        (("simple_high = 0.6", "simple_high = 0.9"), "simple_high", "a higher level sheds more"),
        (("simple_special = 0.3", "simple_special = 1.3"), "simple_special", "above the max"),
        (("poll_s = 5", "pol_s = 5"), "pol_s", "unknown key"),
        (("poll_s = 5", 'cert = "nowhere.pem"'), "cert", "file not found"),
    ],
)
def test_a_bad_openadr_key_is_one_line_naming_it(edit: tuple[str, str], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        openadr(GOOD.replace(*edit))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"run.toml: openadr.{key}: ") and why in msg, msg


def test_a_cert_needs_its_key_and_a_ca_file(tmp_path: Path) -> None:
    for name in ("ven.pem", "ven.key", "ca.pem"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError, match=r"openadr\.key: cert and key come together"):
        openadr(GOOD + 'cert = "ven.pem"\n', tmp_path)
    with pytest.raises(ConfigError, match=r"openadr\.ca_file: required with cert"):
        openadr(GOOD + 'cert = "ven.pem"\nkey = "ven.key"\n', tmp_path)
    tls = openadr(GOOD + 'cert = "ven.pem"\nkey = "ven.key"\nca_file = "ca.pem"\n', tmp_path)
    assert (tls.cert, tls.key, tls.ca_file) == (
        tmp_path / "ven.pem",
        tmp_path / "ven.key",
        tmp_path / "ca.pem",
    )


def test_the_run_config_takes_an_optional_openadr_section(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(demo_site_text())
    base = '[controller]\nsite = "site.toml"\n[modbus]\nhost = "127.0.0.1"\n'
    (tmp_path / "plain.toml").write_text(base)
    (tmp_path / "dr.toml").write_text(base + GOOD)
    assert load_run_config(str(tmp_path / "plain.toml"), None).openadr is None
    cfg = load_run_config(str(tmp_path / "dr.toml"), None).openadr
    assert cfg is not None and cfg.ven_name == "hall-7"
    (tmp_path / "typo.toml").write_text(base + GOOD.replace("ven_name", "ven_nmae"))
    with pytest.raises(ConfigError, match=r"typo\.toml: openadr\.ven_name: required key"):
        load_run_config(str(tmp_path / "typo.toml"), None)


# -- the VEN against a real openleadr VTN on loopback ------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pred: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Loopback:
    """A VTN (openleadr's server) and thermogate's VEN, on the real command path."""

    def __init__(self, cfg_changes: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        site = demo_site()
        self.core = Controller(site, build_point_map(site))
        self.given: list[tuple[Command, Principal, CommandResult]] = []
        self.site = dict(SITE_NOW)
        self.opts: dict[str, str] = {}
        self.reports: dict[str, list[float]] = {IMPORT_RID: [], CURTAILABLE_RID: []}
        self.cfg = VenConfig(
            vtn_url=f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b",
            ven_name="hall",
            max_curtail_kw=1500.0,
            poll_s=0.2,
            report_s=1.0,
            **(cfg_changes or {}),
        )

    def give(self, cmd: Command, by: Principal) -> CommandResult:
        res = self.core.command(cmd, by, time.time())
        self.given.append((cmd, by, res))
        return res

    def on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts[event_id] = opt_type

    def on_register_report(self, report: dict) -> list[tuple]:
        def keep(rid: str) -> Callable[[list], None]:
            return lambda values: self.reports[rid].extend(v for _, v in values)

        return [
            (rd["r_id"], keep(rd["r_id"]), rd["sampling_rate"]["min_period"])
            for rd in report["report_descriptions"]
        ]

    def vtn_server(self) -> OpenADRServer:
        """The VTN on loopback, registering the VEN as ``ven-hall`` and keeping
        its reports; not yet running."""
        vtn = OpenADRServer(
            vtn_id="VTN",
            http_host="127.0.0.1",
            http_port=self.port,
            requested_poll_freq=timedelta(seconds=1),
            show_fingerprint=False,
        )
        vtn.add_handler("on_create_party_registration", lambda p: ("ven-hall", "reg-1"))
        vtn.add_handler("on_register_report", self.on_register_report)
        return vtn

    async def __aenter__(self) -> Loopback:
        self.vtn = self.vtn_server()
        await self.vtn.run()
        self.ven = Ven(
            self.cfg, self.give, lambda: self.site, import_limit_kw=LIMIT_KW, clock=time.time
        )
        await self.ven.start()
        assert await self.ven.wait_registered(15.0), "the VEN did not register"
        assert self.ven.ven_id == "ven-hall"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ven.stop()
        await self.vtn.stop()

    def send(self, name: str, kind: str, value: float, start: datetime, dur_s: float) -> str:
        interval = {"dtstart": start, "duration": timedelta(seconds=dur_s), "signal_payload": value}
        return str(
            self.vtn.add_event(
                "ven-hall", name, kind, [interval], callback=self.on_opt, response_required="always"
            )
        )

    def decisions(self, eid: str) -> list:
        return [d for d in self.ven.decisions if d.event_id == eid]


def loopback(scenario: Callable[[Loopback], Any], **cfg: Any) -> None:
    async def main() -> None:
        async with Loopback(cfg) as lb:
            await scenario(lb)

    asyncio.run(main())


# openleadr's VTN keeps itself in its aiohttp app under a plain string key
VTN_WARNINGS = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")


@VTN_WARNINGS
def test_the_ven_opts_in_curtails_reports_and_a_cancel_clears() -> None:
    async def scenario(lb: Loopback) -> None:
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
        eid = lb.send("LOAD_DISPATCH", "setpoint", 1400.0, start, 1800)
        await until(lambda: eid in lb.opts, "the VTN to hear the VEN's answer")
        assert lb.opts[eid] == OPT_IN, lb.decisions(eid)
        [(cmd, by, res)] = lb.given
        assert isinstance(cmd, RequestCurtailment) and by == Principal.grid()
        assert (cmd.limit_kw, cmd.duration_s) == (1400.0, 1800.0)
        assert cmd.start == pytest.approx(start.timestamp())
        assert cmd.why == f"OpenADR event {eid}" and res.accepted
        [c] = lb.core.state.curtailments
        assert (c.limit_kw, c.start, c.end, c.who) == (1400.0, cmd.start, cmd.start + 1800, "grid")
        [d] = lb.decisions(eid)
        assert d.opt == OPT_IN and d.curtailments == (c.id,) and lb.ven.active == {eid: (c.id,)}

        lb.site.update(import_kw=2500.0, curtailable_kw=1700.0)
        await until(
            lambda: 2500.0 in lb.reports[IMPORT_RID] and 1700.0 in lb.reports[CURTAILABLE_RID],
            "telemetry reports at the VTN",
        )

        lb.vtn.cancel_event("ven-hall", eid)
        await until(lambda: not lb.core.state.curtailments, "the cancel to clear the curtailment")
        clear = lb.given[-1][0]
        assert isinstance(clear, ClearCurtailment) and clear.id == c.id
        assert lb.decisions(eid)[-1].status == "cancelled"
        assert lb.decisions(eid)[-1].curtailments == (c.id,) and lb.ven.active == {}

    loopback(scenario)


@VTN_WARNINGS
def test_the_ven_opts_out_beyond_its_commitment_and_of_what_it_cannot_read() -> None:
    async def scenario(lb: Loopback) -> None:
        start = datetime.now(UTC) + timedelta(minutes=5)
        beyond = lb.send("LOAD_DISPATCH", "setpoint", 900.0, start, 600)  # 1700 kW > 1500
        capacity_in_kw = lb.send("LOAD_CONTROL", "x-loadControlCapacity", 1500.0, start, 600)
        too_long = lb.send("LOAD_DISPATCH", "setpoint", 2000.0, start, 8 * 86_400)
        for eid in (beyond, capacity_in_kw, too_long):
            await until(lambda eid=eid: eid in lb.opts, f"the answer to {eid}")
            assert lb.opts[eid] == OPT_OUT
        assert "beyond the commitment of 1500 kW" in lb.decisions(beyond)[0].reason
        assert "not a share 0..1" in lb.decisions(capacity_in_kw)[0].reason
        # the command path refused it (at most 7 days): audited there, opted out here
        assert "the command path: refused" in lb.decisions(too_long)[0].reason
        assert [r.accepted for _, _, r in lb.given] == [False]
        assert lb.core.state.curtailments == [] and lb.ven.active == {}

    loopback(scenario)


@VTN_WARNINGS
def test_the_ven_waits_for_telemetry_before_it_registers() -> None:
    async def main() -> None:
        lb = Loopback()
        lb.site = {"import_kw": math.nan, "curtailable_kw": math.nan}
        vtn = OpenADRServer(vtn_id="VTN", http_port=lb.port, show_fingerprint=False)
        vtn.add_handler("on_create_party_registration", lambda p: ("ven-hall", "reg-1"))
        await vtn.run()
        ven = Ven(lb.cfg, lb.give, lambda: lb.site, import_limit_kw=LIMIT_KW)
        try:
            await ven.start()
            assert not await ven.wait_registered(0.5)
            lb.site = {"import_kw": 2600.0, "curtailable_kw": math.nan}  # loads not read yet
            assert not await ven.wait_registered(0.5)
            lb.site = dict(SITE_NOW)
            assert await ven.wait_registered(15.0)
        finally:
            await ven.stop()
            await vtn.stop()

    asyncio.run(main())


def test_a_ven_whose_vtn_is_down_keeps_trying_and_stops_cleanly() -> None:
    async def main() -> None:
        cfg = VenConfig(
            vtn_url=f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b",
            ven_name="hall",
            max_curtail_kw=1000.0,
            retry_s=0.1,
        )
        ven = Ven(
            cfg,
            lambda c, b: pytest.fail("nothing to give"),
            lambda: SITE_NOW,
            import_limit_kw=LIMIT_KW,
        )
        await ven.start()
        assert not await ven.wait_registered(0.5)
        await ven.stop()
        assert not ven.registered

    asyncio.run(main())


def ven_on(core: Controller, cfg: VenConfig = CFG) -> Ven:
    """A VEN giving to ``core``'s command path, on the site as ``SITE_NOW`` has it."""
    give = lambda c, b: core.command(c, b, time.time())  # noqa: E731
    return Ven(cfg, give, lambda: SITE_NOW, import_limit_kw=LIMIT_KW)


def test_a_modified_event_is_decided_afresh() -> None:
    """On the command path without the protocol: a modification clears and gives anew."""
    site = demo_site()
    core = Controller(site, build_point_map(site))
    ven = ven_on(core)
    start = time.time() + 600
    first = event(signal("LOAD_DISPATCH", "setpoint", 1500.0, start=start))
    assert ven.handle_event(first) == OPT_IN
    [c1] = core.state.curtailments
    again = event(signal("LOAD_DISPATCH", "setpoint", 1700.0, start=start), mod=1)
    assert ven.handle_event(again) == OPT_IN
    [c2] = core.state.curtailments
    assert c2.id != c1.id and c2.limit_kw == 1700.0
    assert ven.decisions[-1].reason.startswith(f"curtailments #{c1.id} cleared; ")
    worse = event(signal("LOAD_DISPATCH", "setpoint", 100.0, start=start), mod=2)
    assert ven.handle_event(worse) == OPT_OUT
    assert core.state.curtailments == [] and ven.active == {}


def test_a_restart_takes_back_its_events_curtailments_a_resend_replaces_a_cancel_clears() -> None:
    """A VTN sends its events again to a VEN that registers anew after `run`
    restarts; the curtailments restored with the state were the event's, so the
    resend must not add a second set, nor the cancel leave the first in force."""
    site = demo_site()
    before = Controller(site, build_point_map(site))

    start = time.time() + 600
    ev = event(signal("LOAD_DISPATCH", "setpoint", 1500.0, start=start), eid="evt-7")
    assert ven_on(before).handle_event(ev) == OPT_IN
    operator = before.command(
        RequestCurtailment(2000.0, 3600.0, why="OpenADR event evt-7 (by hand)"),
        Principal("ann", "operator", "cli"),
        time.time(),
    )
    assert operator.accepted
    [first, by_hand] = before.state.curtailments

    after = Controller(site, build_point_map(site))
    after.restore_state(json.loads(json.dumps(before.saved_state())))
    ven = ven_on(after)
    assert ven.adopt(after.state.curtailments, time.time()) == {"evt-7": (first.id,)}
    assert ven.handle_event(ev) == OPT_IN
    grid = [c for c in after.state.curtailments if c.who == "grid"]
    assert len(grid) == 1 and grid[0].id != first.id and grid[0].limit_kw == 1500.0
    assert ven.decisions[-1].reason.startswith(f"curtailments #{first.id} cleared; ")
    # a cancel straight after the restart (no resend first) clears the adopted one too
    again = Controller(site, build_point_map(site))
    again.restore_state(json.loads(json.dumps(before.saved_state())))
    ven2 = ven_on(again)
    ven2.adopt(again.state.curtailments, time.time())
    assert (
        ven2.handle_event(
            event(
                signal("LOAD_DISPATCH", "setpoint", 1500.0, start=start),
                eid="evt-7",
                status="cancelled",
            )
        )
        == OPT_IN
    )  # the answer given before the restart stands
    assert [c.id for c in again.state.curtailments] == [by_hand.id]  # a person's stays


def test_an_event_under_objects_round_trips_the_openleadr_shape() -> None:
    """openleadr's own event objects, as dicts, translate the same."""
    now = datetime.now(UTC)
    ivs = [
        objects.Interval(
            dtstart=now + timedelta(minutes=1), duration=timedelta(minutes=15), signal_payload=2.0
        )
    ]
    sig = objects.EventSignal(
        intervals=ivs, signal_name="SIMPLE", signal_type="level", signal_id="s1"
    )
    ev = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="e9",
            modification_number=0,
            market_context="oadr://x",
            event_status="far",
            created_date_time=now,
        ),
        active_period=utils.get_active_period_from_intervals(ivs, False),
        event_signals=[sig],
        targets=[{"ven_id": "ven-hall"}],
    )
    v = translate_event(
        utils.normalize_dict(ev), SITE_NOW, CFG, import_limit_kw=LIMIT_KW, now=now.timestamp()
    )
    assert v.opt == OPT_IN and v.instructions[0].limit_kw == pytest.approx(0.75 * LIMIT_KW)


# -- wired into `thermogate run`: the real-time controller over real Modbus ------
@VTN_WARNINGS
@pytest.mark.timeout(120)
def test_run_wiring_opts_in_on_the_controllers_telemetry_and_reports_it(tmp_path: Path) -> None:
    from thermogate.controller.modbus_io import Endpoint
    from thermogate.controller.run import RealTimeController, grid_telemetry, make_ven
    from thermogate.controller.runconfig import RunConfig
    from thermogate.hil.runner import ScenarioPlant
    from thermogate.hil.serve import ServedPlant

    async def main() -> None:
        site = demo_site()
        sp = ServedPlant(ScenarioPlant(site, "normal-day"), speed=1.0)
        _, mb_port = await sp.server.start_tcp("127.0.0.1", 0)
        plant = asyncio.create_task(sp.run())
        lb = Loopback()
        vtn = lb.vtn_server()
        await vtn.run()
        cfg = RunConfig(
            site,
            tmp_path / "h.db",
            Endpoint("tcp", "127.0.0.1", mb_port),
            0.2,
            0.25,
            built_in_plant=False,
            forecast=False,
            openadr=lb.cfg,
        )
        rt = RealTimeController(cfg)
        ven = make_ven(rt, lb.cfg)
        stop = asyncio.Event()
        try:
            await ven.start()  # as `thermogate run` does: before the first scan
            loop = asyncio.create_task(rt.run(stop))
            assert await ven.wait_registered(30.0), "no registration after the first scans"
            now = grid_telemetry(rt)
            assert math.isfinite(now["import_kw"]) and now["curtailable_kw"] > 100.0, now
            limit = round(now["import_kw"] - min(now["curtailable_kw"], 1500.0) / 2)
            start = datetime.now(UTC) + timedelta(minutes=10)
            eid = str(
                vtn.add_event(
                    "ven-hall",
                    "LOAD_DISPATCH",
                    "setpoint",
                    [{"dtstart": start, "duration": timedelta(hours=1), "signal_payload": limit}],
                    callback=lb.on_opt,
                )
            )
            await until(lambda: eid in lb.opts, "the VEN's answer", 30.0)
            assert lb.opts[eid] == OPT_IN, ven.decisions
            [c] = rt.ctrl.state.curtailments
            # a limit above the site's own (the plant starts above it) binds nothing more
            assert c.limit_kw == min(float(limit), LIMIT_KW)
            assert (c.who, c.why) == ("grid", f"OpenADR event {eid}")
            await until(lambda: lb.reports[IMPORT_RID], "telemetry at the VTN", 30.0)
            rt.historian.flush()
            audit = [a for a in rt.historian.audit() if a["point"] == f"curtailment:{c.id}"]
            assert audit and audit[0]["who"] == "grid" and audit[0]["ok"]
            journal = [e["message"] for e in rt.historian.events() if e["source"] == "grid"]
            assert any(f"OpenADR event {eid}" in m and "optIn" in m for m in journal), journal
            answered = [a for a in rt.historian.audit() if a["point"] == f"openadr:{eid}"]
            assert answered and answered[0]["who"] == "grid" and answered[0]["ok"]
        finally:
            stop.set()
            if "loop" in locals():
                await loop
            await ven.stop()
            await rt.close()
            await vtn.stop()
            plant.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await plant
            await sp.server.stop()

    asyncio.run(main())


# -- the link to the VTN -----------------------------------------------------------
def test_a_link_said_down_is_an_alarm_until_it_is_up() -> None:
    """The edges' links that are not points (the VTN) are alarms of the core."""
    from thermogate.hil.runner import ScenarioPlant

    site = demo_site()
    sim = ScenarioPlant(site, "normal-day", sensors=False)
    core = Controller(site, sim.pmap)

    def scan(why: str | None) -> list:
        v = sim.plant.sensors.sample()
        res = core.scan(Observation(sim.plant.t, v, np.ones(len(v), bool), links={"openadr": why}))
        sim.step()
        return [e for e in res.events if e.source == "link.openadr"]

    assert scan(None) == []
    [raised] = scan("OpenADR: VTN x not answering")
    assert (raised.kind, raised.message) == ("alarm", "OpenADR: VTN x not answering")
    assert scan("OpenADR: VTN x not answering") == []  # raised once
    assert "link.openadr" in core.alarms.active()
    [cleared] = scan(None)
    assert cleared.kind == "clear" and "link.openadr" not in core.alarms.active()


@VTN_WARNINGS
@pytest.mark.timeout(120)
def test_a_lost_vtn_is_said_and_a_restarted_one_registers_the_ven_again_and_is_answered() -> None:
    """`thermogate vtn` stopped: the VEN says the link is down (the run's alarm);
    started again it knows no VEN and asks it to register again, as a real VTN
    does, and its event reaches the site."""
    from thermogate.hil.vtn import VtnEvent, make_vtn

    async def main() -> None:
        port = free_port()
        cfg = VenConfig(
            vtn_url=f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b",
            ven_name="hall",
            max_curtail_kw=1500.0,
            poll_s=0.2,
            report_s=1.0,
        )
        site = demo_site()
        core = Controller(site, build_point_map(site))
        ven = ven_on(core, cfg)

        def vtn(limit_kw: float, said: list[str]) -> Any:  # an event 10 min ahead, for 1 h
            start = datetime.now(UTC) + timedelta(minutes=10)
            event = VtnEvent(start, timedelta(hours=1), limit_kw)
            return make_vtn("127.0.0.1", port, [event], poll_s=0.2, say=said.append)

        first_said: list[str] = []
        first = vtn(1500.0, first_said)
        await first.run()
        await ven.start()
        try:
            assert await ven.wait_registered(15.0)
            await until(lambda: any("optIn" in s for s in first_said), "the first answer")
            assert ven.link_down() is None
            await first.stop()
            await until(lambda: ven.link_down() is not None, "the VTN said lost")
            down = ven.link_down() or ""
            assert down.startswith(f"OpenADR: VTN {cfg.vtn_url} not answering since ")
            assert "grid events cannot reach the site" in down

            said: list[str] = []
            again = vtn(1400.0, said)
            await again.run()
            try:
                await until(lambda: "vtn: registered hall as ven-hall" in said, "re-registration")
                await until(lambda: any("optIn" in s for s in said), "the new VTN's answer")
                await until(lambda: ven.link_down() is None, "the link back")
                assert sorted(c.limit_kw for c in core.state.curtailments) == [1400.0, 1500.0]
            finally:
                await again.stop()
        finally:
            await ven.stop()

    asyncio.run(main())


def test_the_test_vtn_reads_durations_as_thermogate_command_does() -> None:
    from thermogate.hil.vtn import parse_event
    from thermogate.plc.errors import ThermogateError

    ev = parse_event("2026-08-14T16:00:00-05:00,1h30m,1500")
    assert ev.duration == timedelta(minutes=90) and ev.limit_kw == 1500.0
    for bad, why in (("0.5s", "at least 1 s"), ("2 weeks", "is not a duration")):
        with pytest.raises(ThermogateError, match=why):
            parse_event(f"2026-08-14T16:00:00-05:00,{bad},1500")


def test_openleadrs_repeated_errors_are_logged_once_per_ten_minutes() -> None:
    from thermogate.controller.grid.openadr import _OncePer

    f = _OncePer(600.0)

    def rec(msg: str, t: float, level: int = logging.ERROR) -> logging.LogRecord:
        r = logging.LogRecord("openleadr", level, __file__, 1, msg, None, None)
        r.created = t
        return r

    down = "Could not connect to server with URL http://vtn:"
    passed = [f.filter(rec(down, t)) for t in (0.0, 2.0, 4.0, 599.0, 601.0)]
    assert passed == [True, False, False, False, True]
    assert f.filter(rec("something else", 3.0))
    assert all(f.filter(rec("a poll", t, logging.INFO)) for t in (0.0, 1.0))
