"""The OPC UA alarm face: events of fitting types, per-alarm variables, acknowledgement
through the command path, ConditionRefresh — a real asyncua server and client over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from asyncua import Client, Node, Server, ua

from thermogate.controller.core import Acknowledge, Controller, Principal
from thermogate.controller.core.commands import CommandResult
from thermogate.controller.opcua.alarms import AlarmFace, kind_of
from thermogate.plc.pointmap import build_point_map
from thermogate.plc.site import demo_site

NS = "urn:thermogate:test"
T = 1_700_000_000.0
OLGA = Principal("olga", "operator", "opcua")
VIC = Principal("vic", "viewer", "opcua")
ALARM_TYPES = [
    ua.ObjectIds.RefreshStartEventType,
    ua.ObjectIds.RefreshEndEventType,
    ua.ObjectIds.AlarmConditionType,
    ua.ObjectIds.ExclusiveLevelAlarmType,  # its LimitState fields
]


@dataclass
class Shared:
    """One server for the module, in its own thread and event loop as the face runs;
    each test gets its own folder, AlarmFace and controller on it."""

    server: Server
    idx: int
    url: str
    loop: asyncio.AbstractEventLoop
    made: int = 0

    async def on_server(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


@dataclass
class Rig:
    """A controller's alarms behind an AlarmFace on the shared server."""

    ctrl: Controller
    face: AlarmFace
    shared: Shared
    base: str  # the folder's NodeId string
    who: Principal | None = None  # the calling session's principal (None: anonymous)
    given: list[tuple[str | None, Principal]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.shared.url

    @property
    def folder(self) -> ua.NodeId:
        return ua.NodeId(self.base, self.shared.idx)

    def node(self, path: str) -> ua.NodeId:
        return ua.NodeId(f"{self.base}/{path}", self.shared.idx)

    async def publish(self, t: float) -> None:
        """The OPC UA thread applying a snapshot's records."""
        await self.shared.on_server(self.face.update(t, self.ctrl.alarms.records()))


class Events:
    """A client's event subscription handler."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.got.append(event)

    async def wait_for(self, n: int, timeout_s: float = 10.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < n:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # and nothing more
        return self.got


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _start(loop: asyncio.AbstractEventLoop) -> Shared:
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/thermogate")
    idx = await server.register_namespace(NS)
    await server.start()
    return Shared(server, idx, f"opc.tcp://127.0.0.1:{server.bserver.port}/thermogate", loop)


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="opcua", daemon=True)
    thread.start()
    try:
        sh = asyncio.run_coroutine_threadsafe(_start(loop), loop).result(120.0)
        try:
            yield sh
        finally:
            asyncio.run_coroutine_threadsafe(sh.server.stop(), loop).result(60.0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()


@contextlib.asynccontextmanager
async def rig(sh: Shared) -> AsyncIterator[Rig]:
    site = demo_site()
    ctrl = Controller(site, build_point_map(site))
    sh.made += 1
    name = f"Site{sh.made}"
    face = AlarmFace()
    r = Rig(ctrl, face, sh, f"{name}/Alarms")

    async def acknowledge(key: str | None, who: Principal) -> CommandResult:
        r.given.append((key, who))
        return ctrl.command(Acknowledge(key), who, T + 50)

    async def setup() -> None:
        idx, server = sh.idx, sh.server
        site_node = await server.nodes.objects.add_object(
            ua.NodeId(name, idx), ua.QualifiedName(name, idx)
        )
        folder = await site_node.add_folder(r.folder, ua.QualifiedName("Alarms", idx))
        anonymous = Principal("anonymous", "viewer", "opcua")
        await face.setup(
            server, idx, folder, acknowledge, principal_for_call=lambda: r.who or anonymous
        )

    await sh.on_server(setup())
    try:
        yield r
    finally:  # nothing of this test stays retained for the next one's ConditionRefresh
        await sh.on_server(face.update(T + 1000, []))


async def subscribe(client: Client) -> tuple[Events, Any]:
    events = Events()
    sub = await client.create_subscription(20, events)
    await sub.subscribe_events(ua.ObjectIds.Server, ALARM_TYPES)
    return events, sub


def alarm_node(client: Client, r: Rig, key: str) -> Node:
    return client.get_node(r.node(key))


async def variables(client: Client, r: Rig, key: str) -> dict[str, Any]:
    names = ("Active", "Acked", "Severity", "Message", "Since", "AckedBy")
    nodes = [client.get_node(r.node(f"{key}/{n}")) for n in names]
    return dict(zip(names, await client.read_values(nodes), strict=True))


def field_of(ev: Any, name: str) -> Any:
    return getattr(ev, name)


def raise_(r: Rig, t: float, key: str, message: str, severity: int) -> None:
    r.ctrl.alarms.alarm(t, key, True, message, severity)


def clear(r: Rig, t: float, key: str) -> None:
    r.ctrl.alarms.alarm(t, key, False, "")


async def call(node: Node, method: ua.NodeId, *args: Any) -> Any:
    return await node.call_method(method, *args)


# -- types -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "type_id", "limit"),
    [
        ("power:site", ua.ObjectIds.ExclusiveLevelAlarmType, "High"),
        ("loop1.supply_high", ua.ObjectIds.ExclusiveLevelAlarmType, "High"),
        ("tank01.fluid_high", ua.ObjectIds.ExclusiveLevelAlarmType, "High"),
        ("loop1.low_flow", ua.ObjectIds.ExclusiveLevelAlarmType, "Low"),
        ("grid.under_frequency", ua.ObjectIds.TripAlarmType, None),
        ("tank01: PLC interlock", ua.ObjectIds.TripAlarmType, None),
        ("loop1_p1.fault", ua.ObjectIds.TripAlarmType, None),
        ("plc.safe_state", ua.ObjectIds.OffNormalAlarmType, None),
        ("loop1.no_pump", ua.ObjectIds.OffNormalAlarmType, None),
        ("write:loop1.pump1_speed", ua.ObjectIds.DiscrepancyAlarmType, None),
        ("grid.inference_floor", ua.ObjectIds.AlarmConditionType, None),
    ],
)
def test_each_family_of_alarm_keys_has_a_fitting_condition_type(key, type_id, limit) -> None:
    kind = kind_of(key)
    assert (kind.type_id, kind.limit_state) == (type_id, limit)


# -- events and variables ----------------------------------------------------------
def test_a_raised_alarm_fires_one_event_of_its_type_with_severity_source_and_message(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "loop1.supply_high", "loop loop1 supply 41.0 degC >= alarm 40", 600)
            raise_(r, T + 1, "grid.under_frequency", "under-frequency trip: shed mining", 850)
            others = ("plc.safe_state", "write:loop1.pump1_speed", "grid.inference_floor")
            for key in others:
                raise_(r, T + 1, key, key, 500)
            await r.publish(T + 1)
            await r.publish(T + 2)  # the same records again: no new events
            got = await events.wait_for(5)
            assert len(got) == 5
            assert {ev.ConditionName: ev.EventType for ev in got} == {
                key: ua.NodeId(kind_of(key).type_id)
                for key in ("loop1.supply_high", "grid.under_frequency", *others)
            }
            by_key = {ev.ConditionName: ev for ev in got}
            hot, trip = by_key["loop1.supply_high"], by_key["grid.under_frequency"]
            assert hot.EventType == ua.NodeId(ua.ObjectIds.ExclusiveLevelAlarmType)
            assert trip.EventType == ua.NodeId(ua.ObjectIds.TripAlarmType)
            assert (hot.Severity, trip.Severity) == (600, 850)
            assert hot.Message.Text == "loop loop1 supply 41.0 degC >= alarm 40"
            assert hot.SourceName == "loop1.supply_high"
            source = alarm_node(client, r, "loop1.supply_high")
            assert hot.SourceNode == source.nodeid == hot.NodeId  # the ConditionId
            assert field_of(hot, "ActiveState/Id") is True
            assert field_of(hot, "AckedState/Id") is False
            assert hot.Retain is True and field_of(hot, "EnabledState/Id") is True
            assert field_of(hot, "LimitState/CurrentState").Text == "High"
            assert hot.Time.timestamp() == T and hot.EventId != trip.EventId

            v = await variables(client, r, "loop1.supply_high")
            assert v["Active"] is True and v["Acked"] is False
            assert v["Severity"] == 600 and v["Message"] == hot.Message.Text
            assert v["Since"].timestamp() == T and v["AckedBy"] == ""
            counts = [client.get_node(r.node(n)) for n in ("ActiveCount", "UnackedCount")]
            assert await client.read_values(counts) == [5, 5]

    run(scenario())


def test_clearing_fires_an_event_with_active_false_and_acknowledging_a_last_one_unretained(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            await r.publish(T)
            clear(r, T + 5, "plc.safe_state")
            await r.publish(T + 5)
            got = await events.wait_for(2)
            cleared = got[1]
            assert cleared.EventType == ua.NodeId(ua.ObjectIds.OffNormalAlarmType)
            assert field_of(cleared, "ActiveState/Id") is False
            assert field_of(cleared, "AckedState/Id") is False
            assert cleared.Retain is True  # returned to normal, not yet acknowledged
            assert cleared.Message.Text.startswith("cleared:")
            v = await variables(client, r, "plc.safe_state")
            assert (v["Active"], v["Acked"]) == (False, False)

            r.who = OLGA
            out = await call(
                client.get_node(r.folder),
                r.node("AcknowledgeAlarm"),
                "",  # every alarm
            )
            assert isinstance(out, str) and out  # the command path's answer
            assert r.given == [(None, OLGA)]
            assert r.ctrl.alarms.records() == []  # cleared and acknowledged: gone
            await r.publish(T + 6)
            got = await events.wait_for(3)
            last = got[2]
            assert field_of(last, "ActiveState/Id") is False
            assert field_of(last, "AckedState/Id") is True
            assert last.Retain is False
            v = await variables(client, r, "plc.safe_state")
            assert (v["Active"], v["Acked"], v["AckedBy"]) == (False, True, "opcua:olga")

    run(scenario())


def test_an_alarm_first_seen_already_cleared_is_said_as_a_clear_not_as_the_alarm(
    shared: Shared,
) -> None:
    """After a restart the alarm list comes back with alarms cleared but not yet
    acknowledged: the face's first event of one says it cleared, retained."""

    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            clear(r, T + 5, "plc.safe_state")
            await r.publish(T + 5)  # the face's first sight of it: cleared, unacknowledged
            [ev] = await events.wait_for(1)
            assert ev.Message.Text == "cleared: PLC is in its watchdog safe state"
            assert field_of(ev, "ActiveState/Id") is False
            assert field_of(ev, "AckedState/Id") is False
            assert ev.Retain is True

    run(scenario())


def test_an_operator_acknowledges_through_the_standard_method_and_the_alarm_shows_acked(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "power:site", "site at 3000 kW over its limit 2870 kW", 800)
            await r.publish(T)
            (raised,) = await events.wait_for(1)
            condition = client.get_node(raised.NodeId)
            ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            comment = ua.LocalizedText("seen, shedding")

            r.who = OLGA
            with pytest.raises(ua.UaStatusCodeError) as info:
                await call(condition, ack, b"no such event", comment)
            assert info.value.code == ua.StatusCodes.BadEventIdUnknown
            await call(condition, ack, raised.EventId, comment)
            assert r.given == [("power:site", OLGA)]
            v = await variables(client, r, "power:site")
            assert v["Acked"] is False  # shows with the next update (the next scan)

            await r.publish(T + 1)
            got = await events.wait_for(2)
            acked = got[1]
            assert field_of(acked, "AckedState/Id") is True
            assert field_of(acked, "ActiveState/Id") is True and acked.Retain is True
            assert acked.ClientUserId == "opcua:olga"
            assert acked.EventId != raised.EventId
            v = await variables(client, r, "power:site")
            assert (v["Active"], v["Acked"], v["AckedBy"]) == (True, True, "opcua:olga")

            with pytest.raises(ua.UaStatusCodeError) as info:
                await call(condition, ack, acked.EventId, comment)
            assert info.value.code == ua.StatusCodes.BadConditionBranchAlreadyAcked

    run(scenario())


def test_an_anonymous_or_viewer_acknowledge_is_refused_with_bad_user_access_denied(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "tank01.fluid_high", "tank01 fluid 56.0 degC >= alarm 55", 700)
            await r.publish(T)
            (raised,) = await events.wait_for(1)
            condition = client.get_node(raised.NodeId)
            ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            by_key = r.node("AcknowledgeAlarm")
            for who in (None, VIC):
                r.who = who
                # the folder's method says it may not be called, as the Controller's do
                exe = await client.get_node(by_key).read_attribute(ua.AttributeIds.UserExecutable)
                assert exe.Value.Value is False
                for node, method, args in (
                    (condition, ack, (raised.EventId, ua.LocalizedText("x"))),
                    (client.get_node(r.folder), by_key, ("tank01.fluid_high",)),
                ):
                    with pytest.raises(ua.UaStatusCodeError) as info:
                        await call(node, method, *args)
                    assert info.value.code == ua.StatusCodes.BadUserAccessDenied
            assert [w.user for _, w in r.given] == ["anonymous"] * 2 + ["vic"] * 2
            await r.publish(T + 1)
            v = await variables(client, r, "tank01.fluid_high")
            assert v["Acked"] is False
            assert not r.ctrl.alarms.record("tank01.fluid_high").acked  # type: ignore[union-attr]
            await asyncio.sleep(0.2)
            assert len(events.got) == 1  # nothing changed, nothing fired

    run(scenario())


def test_condition_refresh_sends_a_new_client_the_retained_alarms_between_start_and_end(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r:
            raise_(r, T, "loop1.supply_high", "loop1 hot", 600)
            raise_(r, T, "plc.safe_state", "PLC safe state", 900)
            raise_(r, T, "grid.inference_floor", "inference held", 600)
            await r.publish(T)
            clear(r, T + 1, "plc.safe_state")  # returned to normal, unacknowledged: retained
            clear(r, T + 1, "grid.inference_floor")
            r.ctrl.alarms.acknowledge("grid.inference_floor", "cli:carol")  # gone
            await r.publish(T + 1)

            async with Client(r.url) as client:  # connects after all of it
                events, sub = await subscribe(client)
                await asyncio.sleep(0.2)
                assert events.got == []
                await call(
                    client.get_node(ua.ObjectIds.ConditionType),
                    ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                    ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
                )
                got = await events.wait_for(4)
                kinds = [ev.EventType for ev in got]
                assert kinds[0] == ua.NodeId(ua.ObjectIds.RefreshStartEventType)
                assert kinds[-1] == ua.NodeId(ua.ObjectIds.RefreshEndEventType)
                middle = {ev.ConditionName: ev for ev in got[1:-1]}
                assert set(middle) == {"loop1.supply_high", "plc.safe_state"}
                assert len(got) == 4
                assert field_of(middle["loop1.supply_high"], "ActiveState/Id") is True
                assert field_of(middle["plc.safe_state"], "ActiveState/Id") is False
                assert all(ev.Retain for ev in middle.values())
                v = await variables(client, r, "grid.inference_floor")
                assert (v["Active"], v["Acked"]) == (False, True)

    run(scenario())


def test_a_re_raised_alarm_is_a_new_occurrence_whose_old_event_ids_no_longer_acknowledge(
    shared: Shared,
) -> None:
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "loop1.no_pump", "loop loop1: no healthy pump", 900)
            await r.publish(T)
            clear(r, T + 1, "loop1.no_pump")
            await r.publish(T + 1)
            raise_(r, T + 2, "loop1.no_pump", "loop loop1: no healthy pump", 900)
            await r.publish(T + 2)
            first, _, again = await events.wait_for(3)
            assert field_of(again, "ActiveState/Id") is True
            assert again.Time.timestamp() == T + 2
            r.who = OLGA
            condition = client.get_node(again.NodeId)
            ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            with pytest.raises(ua.UaStatusCodeError) as info:
                await call(condition, ack, first.EventId, ua.LocalizedText(""))
            assert info.value.code == ua.StatusCodes.BadEventIdUnknown
            await call(condition, ack, again.EventId, ua.LocalizedText(""))
            v = await variables(client, r, "loop1.no_pump")
            assert v["Since"].timestamp() == T + 2

    run(scenario())


def test_an_acknowledge_of_a_state_acknowledged_elsewhere_is_branch_already_acked(
    shared: Shared,
) -> None:
    # Part 9: the EventId no longer refers to a state that needs acknowledgement. It
    # was BadInvalidState while the next scan had not shown the acknowledgement yet,
    # and BadEventIdUnknown once the alarm, cleared and acknowledged, was gone.
    async def scenario() -> list[int]:
        codes = []
        async with rig(shared) as r, Client(r.url) as client:
            events, _ = await subscribe(client)
            raise_(r, T, "power:site", "site over its limit", 800)
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            await r.publish(T)
            by_key = {ev.ConditionName: ev for ev in await events.wait_for(2)}
            ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            r.who = OLGA
            r.ctrl.alarms.acknowledge("power:site", "console:tech")  # not shown yet
            clear(r, T + 1, "plc.safe_state")
            r.ctrl.alarms.acknowledge("plc.safe_state", "console:tech")  # gone
            for _scan in ("before the next scan", "after it"):
                for key in ("power:site", "plc.safe_state"):
                    ev = by_key[key]
                    with pytest.raises(ua.UaStatusCodeError) as info:
                        await call(
                            client.get_node(ev.NodeId), ack, ev.EventId, ua.LocalizedText("")
                        )
                    codes.append(info.value.code)
                await r.publish(T + 1)
            assert r.ctrl.alarms.record("power:site").acked_by == "console:tech"  # type: ignore[union-attr]
        return codes

    assert run(scenario()) == [ua.StatusCodes.BadConditionBranchAlreadyAcked] * 4


# -- event filters and notifiers ---------------------------------------------------
def of_type(type_id: int) -> ua.ContentFilter:
    """A WhereClause ``OfType(type_id)`` as SCADA packages (and node-opcua) send it."""
    el = ua.ContentFilterElement(
        FilterOperator=ua.FilterOperator.OfType,
        FilterOperands=[ua.LiteralOperand(Value=ua.Variant(ua.NodeId(type_id)))],
    )
    return ua.ContentFilter(Elements=[el])


async def subscribe_where(client: Client, where: ua.ContentFilter) -> Events:
    events = Events()
    sub = await client.create_subscription(20, events)
    types = [client.get_node(t) for t in ALARM_TYPES]
    evfilter = await sub._create_eventfilter(types, where_clause_generation=False)
    evfilter.WhereClause = where
    await sub.subscribe_events(ua.ObjectIds.Server, evfilter=evfilter)
    return events


def test_an_of_type_where_clause_selects_events_of_that_type_or_any_subtype(
    shared: Shared,
) -> None:
    # Part 4 §7.7.3: OfType is true for an event of the type or of a subtype of it;
    # asyncua compared the EventType for equality, so OfType(ConditionType) got nothing
    expected = {
        ua.ObjectIds.BaseEventType: {"plc.safe_state", "grid.under_frequency", "power:site"},
        ua.ObjectIds.ConditionType: {"plc.safe_state", "grid.under_frequency", "power:site"},
        ua.ObjectIds.AlarmConditionType: {"plc.safe_state", "grid.under_frequency", "power:site"},
        ua.ObjectIds.LimitAlarmType: {"power:site"},
        ua.ObjectIds.OffNormalAlarmType: {"plc.safe_state", "grid.under_frequency"},
        ua.ObjectIds.TripAlarmType: {"grid.under_frequency"},
        ua.ObjectIds.DiscrepancyAlarmType: set(),
        ua.ObjectIds.RefreshStartEventType: set(),
    }

    async def scenario() -> dict[int, list[str]]:
        async with rig(shared) as r, Client(r.url) as client:
            subs = {t: await subscribe_where(client, of_type(t)) for t in expected}
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            raise_(r, T, "grid.under_frequency", "under-frequency trip: shed mining", 850)
            raise_(r, T, "power:site", "site over its limit", 800)
            await r.publish(T)
            await subs[ua.ObjectIds.BaseEventType].wait_for(3)
            return {t: sorted(ev.ConditionName for ev in e.got) for t, e in subs.items()}

    assert run(scenario()) == {t: sorted(keys) for t, keys in expected.items()}


def test_a_subscription_on_the_alarms_folder_receives_its_alarm_events_and_refresh(
    shared: Shared,
) -> None:
    # Part 9: the Alarms folder is an event notifier area (the Server's HasEventSource);
    # its subscribers get the events of the alarms below it, the Server's still get
    # each one exactly once
    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            on_server, _ = await subscribe(client)
            on_folder = Events()
            sub = await client.create_subscription(20, on_folder)
            await sub.subscribe_events(r.folder, ALARM_TYPES)
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            raise_(r, T, "loop1.supply_high", "loop1 hot", 600)
            await r.publish(T)
            clear(r, T + 1, "plc.safe_state")
            await r.publish(T + 1)
            for events in (on_server, on_folder):
                got = await events.wait_for(3)
                assert len(got) == 3
            ids = [ev.EventId for ev in on_server.got]
            assert len(set(ids)) == 3 and [ev.EventId for ev in on_folder.got] == ids

            # a client that subscribes on the folder alone, after the fact
            async with Client(r.url) as late:
                events = Events()
                sub = await late.create_subscription(20, events)
                await sub.subscribe_events(r.folder, ALARM_TYPES)
                await call(
                    late.get_node(ua.ObjectIds.ConditionType),
                    ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                    ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
                )
                got = await events.wait_for(4)
                kinds = [ev.EventType for ev in got]
                assert kinds[0] == ua.NodeId(ua.ObjectIds.RefreshStartEventType)
                assert kinds[-1] == ua.NodeId(ua.ObjectIds.RefreshEndEventType)
                middle = sorted(ev.ConditionName for ev in got[1:-1])
                assert middle == ["loop1.supply_high", "plc.safe_state"] and len(got) == 4
            await asyncio.sleep(0.2)
            assert len(on_server.got) == len(on_folder.got) == 3  # the refresh was not theirs

    run(scenario())


def test_the_event_hierarchy_browses_from_the_server_through_the_alarms_folder_to_each_alarm(
    shared: Shared,
) -> None:
    # Part 3: HasNotifier between notifiers (Server -> Alarms), HasEventSource to a
    # source (Alarms -> each alarm), each also seen from its target
    async def refs(node: Node, direction: ua.BrowseDirection) -> set[tuple[int, ua.NodeId]]:
        got = await node.get_references(
            ua.ObjectIds.HasEventSource, direction, includesubtypes=True
        )
        return {(r.ReferenceTypeId.Identifier, r.NodeId) for r in got}

    async def scenario() -> None:
        async with rig(shared) as r, Client(r.url) as client:
            raise_(r, T, "plc.safe_state", "PLC is in its watchdog safe state", 900)
            await r.publish(T)
            server, folder = client.get_node(ua.ObjectIds.Server), client.get_node(r.folder)
            source = r.node("plc.safe_state")
            down = await refs(server, ua.BrowseDirection.Forward)
            assert (ua.ObjectIds.HasNotifier, r.folder) in down
            assert await refs(folder, ua.BrowseDirection.Inverse) == {
                (ua.ObjectIds.HasNotifier, ua.NodeId(ua.ObjectIds.Server))
            }
            assert await refs(folder, ua.BrowseDirection.Forward) == {
                (ua.ObjectIds.HasEventSource, source)
            }
            assert await refs(client.get_node(source), ua.BrowseDirection.Inverse) == {
                (ua.ObjectIds.HasEventSource, r.folder)
            }

    run(scenario())


# -- through the whole face: the server's Call service and the command path --------------
@pytest.fixture(scope="module")
def face(site, demo_pmap, tmp_path_factory):
    from opcua_rig import Rig as FaceRig

    r = FaceRig(site, demo_pmap, tmp_path_factory.mktemp("alarms") / "site.db")
    r.ctrl.alarms.alarm(r.t, "loop1.supply_high", True, "loop1 supply 41.0 degC >= alarm 40", 600)
    r.publish()
    yield r
    r.close()


def _face_ack(
    face, user: str | None, object_id: ua.NodeId, method_id: ua.NodeId, event_id: bytes | None
) -> int:
    """Acknowledge as ``user`` through the face; ``event_id`` None: the EventId the
    condition's retained event carries (asked with ConditionRefresh, as a SCADA
    client that connects later does). Returns the Call's status code."""

    async def fn(c: Client) -> int:
        eid = event_id
        if eid is None:
            events, sub = await subscribe(c)
            await c.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(sub.subscription_id, ua.VariantType.UInt32),
            )
            got = await events.wait_for(3)
            eid = next(ev.EventId for ev in got if ev.ConditionName == "loop1.supply_high")
        args = [ua.Variant(eid, ua.VariantType.ByteString), ua.Variant(ua.LocalizedText("seen"))]
        (res,) = await c.uaclient.call([ua.CallMethodRequest(object_id, method_id, args)])
        return res.StatusCode.value

    return face.client(user, fn)


def test_acknowledge_on_a_node_or_method_the_server_does_not_have_says_which(face) -> None:
    # asyncua answered BadNodeIdInvalid to both, and BadNothingToDo to a Method of the
    # condition types that the alarm objects do not have (Confirm).
    idx = face.face.space.idx
    condition = ua.NodeId("Site/Alarms/loop1.supply_high", idx)
    ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
    confirm = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Confirm)
    eid = b"\x00" * 16
    assert _face_ack(face, "olive", ua.NodeId("Site/Alarms/no.such", idx), ack, eid) == (
        ua.StatusCodes.BadNodeIdUnknown
    )
    assert _face_ack(face, "olive", condition, ua.NodeId("no.such", idx), eid) == (
        ua.StatusCodes.BadMethodInvalid
    )
    assert _face_ack(face, "olive", condition, confirm, eid) == ua.StatusCodes.BadMethodInvalid
    # a node that is there but no condition, as Part 9 says (the type node itself too)
    for not_a_condition in (
        ua.NodeId("Site/Alarms", idx),
        ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType),
    ):
        assert _face_ack(face, "olive", not_a_condition, ack, eid) == (
            ua.StatusCodes.BadNodeIdInvalid
        )
    assert _face_ack(face, "olive", condition, ack, eid) == ua.StatusCodes.BadEventIdUnknown
    assert not face.ctrl.alarms.record("loop1.supply_high").acked


def test_acknowledge_through_the_face_refuses_a_viewer_and_a_controller_not_scanning(
    face,
) -> None:
    condition = ua.NodeId("Site/Alarms/loop1.supply_high", face.face.space.idx)
    ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
    n = len(face.audits)
    assert _face_ack(face, "vic", condition, ack, None) == ua.StatusCodes.BadUserAccessDenied
    assert [(a.who, a.ok) for a in face.audits[n:]] == [("vic", False)]
    # It was BadInvalidState: the command not taken in time is withdrawn, as a
    # Controller method's is.
    face.serving, face.face.command_timeout_s = False, 0.3
    try:
        code = _face_ack(face, "olive", condition, ack, None)
    finally:
        face.serving, face.face.command_timeout_s = True, 5.0
    assert code == ua.StatusCodes.BadTimeout
    time.sleep(0.1)  # the run loop serves again: the withdrawn command is not given
    assert not face.ctrl.alarms.record("loop1.supply_high").acked
    assert _face_ack(face, "olive", condition, ack, None) == ua.StatusCodes.Good
    assert face.ctrl.alarms.record("loop1.supply_high").acked_by == "opcua:olive"
