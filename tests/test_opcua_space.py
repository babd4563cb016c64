"""The OPC UA address space: generated from the site, units and ranges, status codes
that follow quality, subscriptions at scan rate; the snapshot and the command bridge."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import UaStatusCodeError
from opcua_rig import Rig

from thermogate.controller.core import Controller, Principal, SetMode
from thermogate.controller.opcua.bridge import CommandBridge, give
from thermogate.controller.opcua.browse import MAX_CONTINUATION_POINTS
from thermogate.controller.opcua.nodes import UNECE_URI, unit_id
from thermogate.controller.opcua.snapshot import Snapshot
from thermogate.controller.opcua.space import (
    CHECK_FUNCTION,
    FAILURE,
    MAINTENANCE_REQUIRED,
    NORMAL,
    OFF_SPEC,
    status_codes,
)
from thermogate.controller.signals import (
    FLAG_DRIFT,
    FLAG_NAN,
    FLAG_NEVER_READ,
    FLAG_RANGE,
    FLAG_RATE,
    FLAG_STALE,
)
from thermogate.plc.points import BAD, GOOD, UNCERTAIN

S = ua.StatusCodes
OLIVE = Principal("olive", "operator", "opcua")


@pytest.fixture(scope="module")
def rig(site, demo_pmap, tmp_path_factory):
    r = Rig(site, demo_pmap, tmp_path_factory.mktemp("space") / "site.db")
    yield r
    r.close()


def _good(rig: Rig) -> None:
    """Every analog at 20, every bit (faults, trips) clear, all good."""
    rig.values[:] = np.where([p.is_bit for p in rig.pmap.points], 0.0, 20.0)
    rig.quality[:] = GOOD
    rig.flags[:] = 0


# -- the tree -------------------------------------------------------------------------
def test_the_tree_holds_every_loop_tank_rack_feeder_and_workload_of_the_site(rig, site):
    idx = rig.face.space.idx

    async def names(node) -> set[str]:
        return {(await n.read_browse_name()).Name for n in await node.get_children()}

    async def fn(c: Client) -> dict[str, set[str]]:
        root = await c.nodes.objects.get_child(f"{idx}:{site.name}")
        out = {}
        for folder in await root.get_children():
            out[(await folder.read_browse_name()).Name] = await names(folder)
        out["loop1"] = await names(await root.get_child([f"{idx}:Loops", f"{idx}:loop1"]))
        return out

    tree = rig.client(None, fn)
    assert {
        "PLC",
        "SiteMeter",
        "Loops",
        "Tanks",
        "Racks",
        "Feeders",
        "Workloads",
        "Controller",
        "Alarms",
    } <= set(tree)
    assert {t.name for t in site.tanks} <= tree["Tanks"]
    assert {r.name for r in site.rack_rows} <= tree["Racks"]
    assert {f.name for f in site.feeders} <= tree["Feeders"]
    assert {lp.name for lp in site.loops} <= tree["Loops"]
    assert {"mining", "training", "inference"} <= tree["Workloads"]
    # a loop holds its instruments, pumps and dry coolers, identification and health
    assert {
        "supply_temp",
        "flow",
        "dp",
        "pump_a",
        "pump_b",
        "dc1",
        "Identification",
        "DeviceHealth",
        "loop1_supply_setpoint",
    } <= tree["loop1"]
    assert {"SetMode", "SetSetpoint", "AcknowledgeAlarm", "RequestCurtailment", "Mode"} <= tree[
        "Controller"
    ]


def test_every_point_is_a_variable_named_by_the_point(rig, demo_pmap):
    names = [p.name for p in demo_pmap.points]

    async def fn(c: Client) -> list[str]:
        nodes = [c.get_node(rig.node_id(n)) for n in names]
        got = await c.read_attributes(nodes, ua.AttributeIds.BrowseName)
        return [dv.Value.Value.Name for dv in got]

    assert rig.client(None, fn) == [n.rsplit(".", 1)[1] for n in names]


def test_a_temperature_is_an_analog_item_with_celsius_and_its_range(rig, demo_pmap):
    p = demo_pmap["tank01.fluid_temp"]

    async def fn(c: Client):
        node = c.get_node(rig.node_id(p.name))
        eu = await (await node.get_child("0:EngineeringUnits")).read_value()
        rng = await (await node.get_child("0:EURange")).read_value()
        return eu, rng, await node.read_type_definition(), await node.read_data_type()

    eu, rng, tdef, dtype = rig.client(None, fn)
    assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (UNECE_URI, unit_id("CEL"), "°C")
    assert unit_id("CEL") == 4408652  # Part 8's own example
    assert (rng.Low, rng.High) == (p.min, p.max)
    assert tdef == ua.NodeId(ua.ObjectIds.AnalogItemType)
    assert dtype == ua.NodeId(ua.ObjectIds.Double)


def test_a_device_has_identification_from_the_site(rig, site):
    async def fn(c: Client):
        idx = rig.face.space.idx
        ident = await c.nodes.objects.get_child(
            [f"{idx}:{site.name}", f"{idx}:Tanks", f"{idx}:tank01", f"{idx}:Identification"]
        )
        return {
            (await n.read_browse_name()).Name: await n.read_value()
            for n in await ident.get_children()
        }

    ident = rig.client(None, fn)
    assert ident["SerialNumber"] == "tank01" and ident["DeviceClass"] == "tank"
    assert "46 miners" in ident["Model"].Text


# -- values and their status -------------------------------------------------------------
def test_a_published_value_reaches_a_subscription_with_good_status(rig, demo_pmap):
    _good(rig)
    rig.publish()
    i = demo_pmap.position("tank01.fluid_temp")

    async def fn(c: Client):
        got: asyncio.Queue = asyncio.Queue()

        class Handler:
            def datachange_notification(self, node, val, data) -> None:
                got.put_nowait(data.monitored_item.Value)

        sub = await c.create_subscription(50, Handler())
        await sub.subscribe_data_change(c.get_node(rig.node_id("tank01.fluid_temp")))
        first = await asyncio.wait_for(got.get(), 10)
        rig.values[i] = 47.5
        await asyncio.to_thread(rig.publish)
        while True:
            dv = await asyncio.wait_for(got.get(), 10)
            if dv.Value.Value == 47.5:
                return first, dv, rig.t

    first, dv, t = rig.client(None, fn)
    assert first.Value.Value == 20.0
    assert dv.StatusCode.is_good()
    assert dv.SourceTimestamp == datetime.fromtimestamp(t, UTC)  # the scan's time


def _read(rig: Rig, name: str) -> ua.DataValue:
    async def fn(c: Client) -> ua.DataValue:
        return await c.get_node(rig.node_id(name)).read_data_value(raise_on_bad_status=False)

    return rig.client(None, fn)


def test_a_stale_point_reads_bad_never_good(rig, demo_pmap):
    _good(rig)
    i = demo_pmap.position("loop1.supply_temp")
    rig.values[i] = 31.0
    rig.quality[i], rig.flags[i] = BAD, FLAG_STALE  # held value: still a number
    rig.publish()
    dv = _read(rig, "loop1.supply_temp")
    assert dv.StatusCode.value == S.BadCommunicationError
    assert dv.Value.Value is None  # Part 4: a Bad result carries no value


def test_service_level_says_healthy_degraded_or_no_data_as_the_points_are_read(rig, demo_pmap):
    """Server.ServiceLevel (Part 4): 255 with every point read, degraded (100) with
    some not read (a device silent), no data (1) with none (every device silent, or
    the controller not scanning: its last snapshot is shown stale)."""

    def level() -> int:
        async def fn(c: Client) -> int:
            return await c.get_node(ua.ObjectIds.Server_ServiceLevel).read_value()

        return rig.client(None, fn)

    seen = []
    _good(rig)
    rig.publish()
    seen.append(level())
    rig.quality[demo_pmap.position("tank01.fluid_temp")] = BAD
    rig.flags[demo_pmap.position("tank01.fluid_temp")] = FLAG_STALE
    rig.publish()
    seen.append(level())
    rig.quality[:], rig.flags[:] = BAD, FLAG_STALE
    rig.publish()
    seen.append(level())
    _good(rig)
    rig.publish()
    seen.append(level())
    assert seen == [255, 100, 1, 255]


def test_an_uncertain_point_reads_uncertain_with_its_value(rig, demo_pmap):
    _good(rig)
    i = demo_pmap.position("loop1.return_temp")
    rig.values[i], rig.quality[i], rig.flags[i] = 36.5, UNCERTAIN, FLAG_DRIFT
    rig.publish()
    dv = _read(rig, "loop1.return_temp")
    assert dv.StatusCode.is_uncertain() and dv.StatusCode.value == S.UncertainSensorNotAccurate
    assert dv.Value.Value == 36.5


def test_status_codes_follow_quality_and_why():
    q = np.array([GOOD, UNCERTAIN, UNCERTAIN, BAD, BAD, BAD, BAD, BAD, GOOD], np.uint8)
    f = np.array(
        [
            0,
            FLAG_RATE,
            0,
            FLAG_STALE | FLAG_NEVER_READ,
            FLAG_NAN,
            FLAG_RANGE,
            FLAG_NEVER_READ,
            0,
            0,
        ],
        np.uint16,
    )
    v = np.array([1.0, 2.0, 3.0, np.nan, np.nan, 99.0, np.nan, 1.0, np.nan])
    assert status_codes(q, f, v).tolist() == [
        S.Good,
        S.UncertainLastUsableValue,
        S.Uncertain,
        S.BadCommunicationError,
        S.BadSensorFailure,
        S.BadOutOfRange,
        S.BadWaitingForInitialData,
        S.BadSensorFailure,
        S.BadSensorFailure,  # "good" but not a number: never shown usable
    ]


def test_device_health_follows_its_points_faults_overrides_and_mode(rig, demo_pmap):
    def health(name: str) -> tuple[int, str]:
        async def fn(c: Client):
            base = f"Site/Tanks/{name}"
            h = await c.get_node(rig.node_id(f"{base}/DeviceHealth")).read_value()
            why = await c.get_node(rig.node_id(f"{base}/DeviceHealthReason")).read_value()
            return h, why

        return rig.client(None, fn)

    _good(rig)
    rig.publish()
    assert health("tank02") == (NORMAL, "")
    i = demo_pmap.position("tank02.level")
    rig.quality[i], rig.flags[i] = UNCERTAIN, FLAG_DRIFT
    rig.publish()
    assert health("tank02")[0] == MAINTENANCE_REQUIRED
    rig.flags[i] = FLAG_RATE
    rig.publish()
    assert health("tank02")[0] == OFF_SPEC
    rig.quality[i], rig.flags[i] = BAD, FLAG_STALE
    rig.publish()
    state, why = health("tank02")
    assert state == FAILURE and "tank02.level bad (stale)" in why
    _good(rig)
    rig.values[demo_pmap.position("tank02.interlock")] = 1.0
    rig.publish()
    assert health("tank02")[0] == FAILURE
    rig.values[demo_pmap.position("tank02.interlock")] = 0.0
    rig.ctrl.state.mode = "maintenance"
    rig.publish()
    assert health("tank02") == (CHECK_FUNCTION, "CHECK_FUNCTION: maintenance mode")
    rig.ctrl.state.mode = "auto"
    rig.publish()
    assert health("tank02")[0] == NORMAL


# -- applying snapshots ---------------------------------------------------------------------
def test_applying_the_same_snapshot_again_writes_nothing(rig):
    _good(rig)
    rig.publish()
    snap = rig.snapshot()
    first = rig.face.run(rig.face.space.apply(snap)).result(10)
    again = rig.face.run(rig.face.space.apply(snap)).result(10)
    assert first == 0 and again == 0  # same values and status as the last publish
    rig.values[3] += 1.0
    assert rig.face.run(rig.face.space.apply(rig.snapshot())).result(10) == 1


def test_the_latest_published_snapshot_wins(rig, demo_pmap):
    _good(rig)
    i = demo_pmap.position("site.power_kw")
    for k in range(50):  # far faster than the face applies: most are skipped
        rig.values[i] = 1000.0 + k
        rig.publish(wait=False)
    rig.publish()
    assert _read(rig, "site.power_kw").Value.Value == 1049.0


def test_publishing_never_waits_for_a_busy_server(rig, demo_pmap):
    _good(rig)
    rig.publish()
    release = threading.Event()

    async def busy() -> None:
        release.wait(30)  # blocks the server's loop, as a stuck client's work would

    blocked = rig.face.run(busy())
    i = demo_pmap.position("site.power_kw")
    before = rig.face.applied
    for k in range(100):  # the scan side goes on while the server cannot move
        rig.values[i] = 2000.0 + k
        rig.publish(wait=False)
    assert rig.face.applied == before
    release.set()
    blocked.result(10)
    rig.publish()
    assert _read(rig, "site.power_kw").Value.Value == 2099.0


def test_a_snapshot_is_a_read_only_copy(site, demo_pmap):
    ctrl = Controller(site, demo_pmap)
    snap = Snapshot.of(ctrl, 5.0)
    ctrl.values[0] = 123.0
    ctrl.state.mode = "manual"
    assert math.isnan(snap.values[0]) and snap.mode == "auto"
    with pytest.raises(ValueError):
        snap.values[0] = 1.0
    assert len(snap.setpoints) == len(site.control_loops) == len(snap.working)


# -- the command bridge ---------------------------------------------------------------------
def test_the_bridge_gives_commands_in_order_and_resolves_each():
    bridge = CommandBridge()
    futs = [bridge.submit(SetMode(m), OLIVE) for m in ("manual", "auto")]
    seen = []

    def giver(cmd, by):
        seen.append(cmd.mode)
        if cmd.mode == "auto":
            raise RuntimeError("boom")
        return "ok"

    assert bridge.serve(giver) == 2
    assert seen == ["manual", "auto"]
    assert futs[0].result() == "ok"
    with pytest.raises(RuntimeError):
        futs[1].result()


def test_a_command_not_taken_in_time_is_withdrawn_and_never_applied():
    bridge = CommandBridge()
    res = asyncio.run(give(bridge, SetMode("manual"), OLIVE, timeout_s=0.05))
    assert not res.accepted and "did not take the command" in res.message
    assert res.audit.who == "olive" and res.audit.where == "opcua"
    assert bridge.serve(lambda cmd, by: pytest.fail("a withdrawn command was given")) == 0
    # nobody gave it, so the bridge holds its refusal for the run loop to audit
    assert [(a.who, a.ok) for a in bridge.take_refused()] == [("olive", False)]


def test_a_command_found_past_its_deadline_is_answered_withdrawn_and_its_refusal_audited():
    bridge = CommandBridge()
    fut = bridge.submit(SetMode("manual"), OLIVE, deadline=time.monotonic() - 1.0)
    assert bridge.serve(lambda cmd, by: pytest.fail("a command past its deadline was given")) == 0
    res = fut.result(0)
    assert not res.accepted and "before its deadline" in res.message
    refused = bridge.take_refused()
    assert [(a.who, a.where, a.why) for a in refused] == [("olive", "opcua", res.message)]
    assert bridge.take_refused() == []  # audited once


def test_a_command_is_answered_once_the_run_loop_serves_it():
    bridge = CommandBridge()
    ready = threading.Event()

    def run_loop() -> None:
        ready.wait(5)
        while not bridge.serve(lambda cmd, by: f"{by.origin} {cmd.mode}"):
            pass

    threading.Thread(target=run_loop, daemon=True).start()

    async def go():
        task = asyncio.ensure_future(give(bridge, SetMode("manual"), OLIVE, 5.0))
        await asyncio.sleep(0)
        ready.set()
        return await task

    assert asyncio.run(go()) == "opcua:olive manual"


def test_a_serving_thread_sleeps_until_a_command_comes_and_misses_none():
    bridge = CommandBridge()
    assert bridge.wait(0.01) is False  # nothing queued: it times out
    given: list[str] = []
    done = threading.Event()

    def server() -> None:  # as the server process's pump: wait, then serve
        while len(given) < 3:
            if bridge.wait(5.0):
                bridge.serve(lambda cmd, by: given.append(cmd.mode) or "ok")
        done.set()

    threading.Thread(target=server, daemon=True).start()
    futs = [bridge.submit(SetMode(m), OLIVE) for m in ("manual", "auto", "maintenance")]
    assert done.wait(10) and given == ["manual", "auto", "maintenance"]
    assert [f.result(5) for f in futs] == ["ok"] * 3


def test_a_republish_the_server_cannot_serve_gets_the_specs_answer_not_an_empty_good(rig):
    # an empty Good answer keeps a reconnecting client (node-opcua) asking forever
    async def fn(c: Client) -> tuple[int, int]:
        sub = await c.create_subscription(500, None)
        codes = []
        for sid in (sub.subscription_id, 123_456_789):
            request = ua.RepublishRequest()
            request.Parameters = ua.RepublishParameters(sid, 999_999)
            try:
                data = await c.uaclient.protocol.send_request(request)
                response = struct_from_binary(ua.RepublishResponse, data)
                codes.append(response.ResponseHeader.ServiceResult.value)
            except UaStatusCodeError as exc:  # a ServiceFault
                codes.append(exc.code)
        return tuple(codes)

    assert rig.client(None, fn) == (
        ua.StatusCodes.BadMessageNotAvailable,
        ua.StatusCodes.BadSubscriptionIdInvalid,
    )


def test_a_stopping_server_shows_shutdown_state_before_the_connection_drops(
    site, demo_pmap, tmp_path
):
    """ServerStatus says Shutdown, with SecondsTillShutdown and a reason, for the
    notice before the server stops: a client sees it going, not only a dropped link."""
    r = Rig(site, demo_pmap, tmp_path / "site.db")
    r.face.shutdown_notice_s = 3.0
    seen: list[tuple[int, int | None, str | None]] = []

    async def watch() -> None:
        async with Client(r.url) as c:
            state = c.get_node(ua.ObjectIds.Server_ServerStatus_State)
            secs = c.get_node(ua.ObjectIds.Server_ServerStatus_SecondsTillShutdown)
            why = c.get_node(ua.ObjectIds.Server_ServerStatus_ShutdownReason)
            stopping = asyncio.create_task(asyncio.to_thread(r.close))
            try:
                while not stopping.done():
                    s = await state.read_value()
                    if s != ua.ServerState.Running:
                        seen.append((s, await secs.read_value(), (await why.read_value()).Text))
                        break
                    seen.append((s, None, None))
                    await asyncio.sleep(0.05)
            finally:
                await stopping

    with contextlib.suppress(Exception):  # the server goes away under the client
        asyncio.run(watch())
    assert seen[0][0] == ua.ServerState.Running
    assert seen[-1] == (ua.ServerState.Shutdown, 3, "the controller is stopping")


def _read_as(rig: Rig, name: str, ask: ua.TimestampsToReturn, attr: int) -> ua.DataValue:
    async def fn(c: Client) -> ua.DataValue:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ask
        params.NodesToRead = [ua.ReadValueId(NodeId=rig.node_id(name), AttributeId=attr)]
        return (await c.uaclient.read(params))[0]

    return rig.client(None, fn)


@pytest.mark.parametrize(
    ("ask", "source", "server"),
    [
        (ua.TimestampsToReturn.Both, True, True),
        (ua.TimestampsToReturn.Source, True, False),
        (ua.TimestampsToReturn.Server, False, True),
        (ua.TimestampsToReturn.Neither, False, False),
    ],
)
def test_a_read_returns_the_timestamps_asked_for(rig, ask, source, server):
    _good(rig)
    rig.publish()
    dv = _read_as(rig, "loop1.supply_temp", ask, ua.AttributeIds.Value)
    assert dv.Value.Value == pytest.approx(20.0)
    assert (dv.SourceTimestamp is not None, dv.ServerTimestamp is not None) == (source, server)
    # the address space keeps its own timestamps: the next read asking for both has them
    both = _read_as(rig, "loop1.supply_temp", ua.TimestampsToReturn.Both, ua.AttributeIds.Value)
    assert both.SourceTimestamp is not None and both.ServerTimestamp is not None


def test_a_source_timestamp_comes_only_with_the_value_attribute(rig):
    dv = _read_as(rig, "loop1.supply_temp", ua.TimestampsToReturn.Both, ua.AttributeIds.DisplayName)
    assert dv.Value.Value.Text == "supply_temp"
    assert dv.SourceTimestamp is None


def test_server_capabilities_have_values_not_nulls(rig):
    caps = {
        "LocaleIdArray": ["en"],
        "ServerProfileArray": [],
        "MaxHistoryContinuationPoints": 0,
        "MaxArrayLength": 0,
        "OperationLimits_MaxNodesPerRead": 0,
        "OperationLimits_MaxNodesPerBrowse": 0,
        "OperationLimits_MaxMonitoredItemsPerCall": 0,
    }

    async def fn(c: Client) -> dict[str, object]:
        out = {}
        for name in caps:
            oid = getattr(ua.ObjectIds, f"Server_ServerCapabilities_{name}")
            out[name] = await c.get_node(ua.NodeId(oid)).read_value()
        return out

    assert rig.client(None, fn) == caps


# -- Browse in pages and BrowseNext (asyncua 2.1 had neither) ---------------------------
def _browse_params(node: ua.NodeId, max_refs: int) -> ua.BrowseParameters:
    desc = ua.BrowseDescription(
        NodeId=node,
        BrowseDirection=ua.BrowseDirection.Forward,
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
        IncludeSubtypes=True,
        ResultMask=ua.BrowseResultMask.All,
    )
    params = ua.BrowseParameters(NodesToBrowse=[desc])
    params.RequestedMaxReferencesPerNode = max_refs
    return params


async def _tanks_folder(c: Client, site, idx: int) -> ua.NodeId:
    root = await c.nodes.objects.get_child(f"{idx}:{site.name}")
    return (await root.get_child(f"{idx}:Tanks")).nodeid


def _next(release: bool, *points: bytes | None) -> ua.BrowseNextParameters:
    return ua.BrowseNextParameters(
        ReleaseContinuationPoints=release, ContinuationPoints=list(points)
    )


def test_a_browse_comes_in_pages_of_the_size_asked_and_browse_next_gives_the_rest(rig, site):
    async def fn(c: Client) -> tuple[list[str], list[list[str]], list[bool]]:
        folder = await _tanks_folder(c, site, rig.face.space.idx)
        whole = (await c.uaclient.browse(_browse_params(folder, 0)))[0]
        assert whole.ContinuationPoint is None
        first = (await c.uaclient.browse(_browse_params(folder, 5)))[0]
        pages, cps = [first.References], [first.ContinuationPoint]
        while cps[-1] is not None:
            page = (await c.uaclient.browse_next(_next(False, cps[-1])))[0]
            page.StatusCode.check()
            pages.append(page.References)
            cps.append(page.ContinuationPoint)
        names = [[r.BrowseName.Name for r in p] for p in pages]
        return [r.BrowseName.Name for r in whole.References], names, [cp is None for cp in cps]

    whole, pages, done = rig.client(None, fn)
    assert {t.name for t in site.tanks} <= set(whole) and len(whole) > 10  # pages to follow
    assert [n for p in pages for n in p] == whole  # every reference once, in order
    assert all(len(p) == 5 for p in pages[:-1]) and 0 < len(pages[-1]) <= 5
    assert done == [False] * (len(pages) - 1) + [True]  # the last page has no point


def test_a_released_made_up_or_used_up_continuation_point_is_invalid(rig, site):
    invalid = ua.StatusCodes.BadContinuationPointInvalid

    async def fn(c: Client) -> list[int]:
        folder = await _tanks_folder(c, site, rig.face.space.idx)
        cp = (await c.uaclient.browse(_browse_params(folder, 1)))[0].ContinuationPoint
        assert cp is not None
        released = (await c.uaclient.browse_next(_next(True, cp)))[0]
        assert released.References == []
        again = (await c.uaclient.browse_next(_next(False, cp)))[0]
        made_up = (await c.uaclient.browse_next(_next(False, b"\x00" * 16)))[0]
        return [released.StatusCode.value, again.StatusCode.value, made_up.StatusCode.value]

    assert rig.client(None, fn) == [ua.StatusCodes.Good, invalid, invalid]


def test_another_sessions_continuation_point_is_invalid(rig, site):
    async def take(c: Client) -> bytes:
        folder = await _tanks_folder(c, site, rig.face.space.idx)
        return (await c.uaclient.browse(_browse_params(folder, 1)))[0].ContinuationPoint

    cp = rig.client(None, take)

    async def use(c: Client) -> int:
        return (await c.uaclient.browse_next(_next(False, cp)))[0].StatusCode.value

    assert rig.client(None, use) == ua.StatusCodes.BadContinuationPointInvalid


def test_a_session_holds_at_most_its_continuation_points_until_it_releases_one(rig, site):
    async def fn(c: Client) -> tuple[list[bool], int, int, bool, int]:
        folder = await _tanks_folder(c, site, rig.face.space.idx)
        cps = []
        for _ in range(MAX_CONTINUATION_POINTS):
            cps.append((await c.uaclient.browse(_browse_params(folder, 1)))[0].ContinuationPoint)
        one_more = (await c.uaclient.browse(_browse_params(folder, 1)))[0]
        await c.uaclient.browse_next(_next(True, cps[0]))
        after = (await c.uaclient.browse(_browse_params(folder, 1)))[0]
        held = await c.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_MaxBrowseContinuationPoints)
        ).read_value()
        return (
            [cp is not None for cp in cps],
            one_more.StatusCode.value,
            len(one_more.References),
            after.ContinuationPoint is not None,
            held,
        )

    got, code, refs, after, declared = rig.client(None, fn)
    assert got == [True] * MAX_CONTINUATION_POINTS
    assert (code, refs) == (ua.StatusCodes.BadNoContinuationPoints, 0)
    assert after  # a released point makes room
    assert declared == MAX_CONTINUATION_POINTS  # as ServerCapabilities say
