"""thermogate's alarms as OPC UA Alarms & Conditions, and as plain variables.

Every alarm of the core (``controller/core/alarms.py``: an ``AlarmRecord`` per
key) becomes a condition of a standard type chosen from its key — a limit on
a temperature, a power or a flow is an ``ExclusiveLevelAlarmType`` in its High
(or Low) state, a relay or pump trip a ``TripAlarmType``, the PLC's safe state
an ``OffNormalAlarmType``, a write that did not read back a
``DiscrepancyAlarmType``, anything else an ``AlarmConditionType``. Its events
go out from the Server object (the event notifier clients subscribe to) and,
the same events, from the Alarms folder, an event notifier area below it
(``events.notify_through``), one per change: raised, cleared, acknowledged,
raised again; an alarm gone from the records (cleared and acknowledged) fires
a last event with Retain false. A WhereClause ``OfType`` selects subtypes too
(``events.install``).

The condition's ConditionId is the object ``Alarms/<key>`` under the site's
Alarms folder, which also holds the alarm as plain variables — Active, Acked,
Severity, Message, Since, AckedBy — for SCADA packages that do not consume
events. An alarm gone from the records keeps its object, shown inactive and
acknowledged: a tag bound to it stays valid (the keys come from the site
description, so they are few and fixed).

asyncua 2.1 has no acknowledge: the standard method
``AcknowledgeableConditionType.Acknowledge`` (i=9111, called on a ConditionId
with an EventId and a Comment) and the folder's ``AcknowledgeAlarm(key)``
("" = every alarm) both go through the ``acknowledge`` callable, i.e. the one
command path, as the caller's ``Principal``; a refused acknowledge answers
with a Bad status code. ``Acknowledge`` answers as Part 9 says:
BadEventIdUnknown for an EventId never sent or of an earlier occurrence,
BadConditionBranchAlreadyAcked for a state acknowledged already (through any
face, or cleared and acknowledged and so gone), BadNodeIdInvalid for an object
that is no condition, BadUserAccessDenied for a role that may not, BadTimeout
for a controller that did not take it (withdrawn); a ConditionId or Method the
server does not have is the Call service's (``server.strict_call``:
BadNodeIdUnknown, BadMethodInvalid). The acknowledged state shows with the
next ``update`` (the next scan's records). ConditionRefresh (i=3875) and
ConditionRefresh2 (i=12912) are asyncua's own, bound here: they resend the
retained conditions between a RefreshStartEvent and a RefreshEndEvent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from asyncua import Node, Server, ua
from asyncua.server.event_generator import EventGenerator

from ..core.alarms import AlarmRecord
from ..core.commands import Acknowledge, CommandResult, Principal, may
from ..core.trips import latch_key
from ..core.underfreq import ALARM_KEY as UNDER_FREQUENCY_KEY
from . import events
from .methods import status_of
from .typed import data_value, node_id, status_code

__all__ = ["ANONYMOUS", "AlarmFace", "AlarmKind", "kind_of"]

log = logging.getLogger(__name__)

ANONYMOUS = Principal("anonymous", "viewer", "opcua")
SERVER = node_id(ua.ObjectIds.Server)
ACKNOWLEDGE_METHOD = node_id(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
VARIABLES = ("Active", "Acked", "Severity", "Message", "Since", "AckedBy")

AcknowledgeFn = Callable[[str | None, Principal], Awaitable[CommandResult]]


@dataclass(frozen=True)
class AlarmKind:
    """How an alarm key shows in OPC UA: its event type, its condition class and,
    for a level alarm, the limit state it is in while active."""

    type_id: int  # ua.ObjectIds.*AlarmType
    class_id: int  # ua.ObjectIds.*ConditionClassType
    limit_state: str | None = None  # "High" | "Low"


_PROCESS = ua.ObjectIds.ProcessConditionClassType
_LEVEL_HIGH = AlarmKind(ua.ObjectIds.ExclusiveLevelAlarmType, _PROCESS, "High")
_LEVEL_LOW = AlarmKind(ua.ObjectIds.ExclusiveLevelAlarmType, _PROCESS, "Low")
_TRIP = AlarmKind(ua.ObjectIds.TripAlarmType, _PROCESS)
_OFF_NORMAL = AlarmKind(ua.ObjectIds.OffNormalAlarmType, _PROCESS)
_OTHER = AlarmKind(ua.ObjectIds.AlarmConditionType, _PROCESS)
_LATCH_SUFFIX = latch_key("")  # a latched trip's key is "<load>: PLC interlock"

#: (test on the key, kind): the first match wins. The keys are made in controller/core.
_RULES: tuple[tuple[Callable[[str], bool], AlarmKind], ...] = (
    # power.py: a feeder's, a PDU's or the site's import over its limit
    (lambda k: k.startswith("power:"), _LEVEL_HIGH),
    # thermal.py: supplies and tank fluid at their high alarm (1 K hysteresis)
    (lambda k: k.endswith((".supply_high", ".fluid_high")), _LEVEL_HIGH),
    # thermal.py: a loop's flow near its low-flow trip
    (lambda k: k.endswith(".low_flow"), _LEVEL_LOW),
    # underfreq.py: the PLC's under-frequency relay shed load
    (lambda k: k == UNDER_FREQUENCY_KEY, _TRIP),
    # trips.py: a load the PLC's hard interlock tripped (latched until reset)
    (lambda k: k.endswith(_LATCH_SUFFIX), _TRIP),
    # regulation.py: a pump that reports a fault has tripped: the equipment's matter
    (
        lambda k: k.endswith(".fault"),
        AlarmKind(ua.ObjectIds.TripAlarmType, ua.ObjectIds.MaintenanceConditionClassType),
    ),
    # controller.py: the PLC in its watchdog safe state — the controller's own link
    (
        lambda k: k == "plc.safe_state",
        AlarmKind(ua.ObjectIds.OffNormalAlarmType, ua.ObjectIds.SystemConditionClassType),
    ),
    # regulation.py: a loop without a healthy pump
    (lambda k: k.endswith(".no_pump"), _OFF_NORMAL),
    # zones.py: a zone in its safe state for want of good inputs
    (lambda k: k.startswith("failsafe:"), _OFF_NORMAL),
    # controller.py: sensors stale, failed, out of range, stuck, drifting, disagreeing;
    # a link that is not a point (the OpenADR VTN) down
    (
        lambda k: k.startswith(("sensors:", "link.")),
        AlarmKind(ua.ObjectIds.OffNormalAlarmType, ua.ObjectIds.SystemConditionClassType),
    ),
    # actuation.py: a write not read back in time — what DiscrepancyAlarmType is for
    (
        lambda k: k.startswith("write:"),
        AlarmKind(ua.ObjectIds.DiscrepancyAlarmType, ua.ObjectIds.SystemConditionClassType),
    ),
)

_CLASS_NAMES = {
    ua.ObjectIds.ProcessConditionClassType: "Process",
    ua.ObjectIds.MaintenanceConditionClassType: "Maintenance",
    ua.ObjectIds.SystemConditionClassType: "System",
}
_LIMIT_STATES = {
    "High": ua.ObjectIds.ExclusiveLimitStateMachineType_High,
    "Low": ua.ObjectIds.ExclusiveLimitStateMachineType_Low,
}


def kind_of(key: str) -> AlarmKind:
    """The OPC UA kind of the alarm with this key (AlarmConditionType if none fits)."""
    for test, kind in _RULES:
        if test(key):
            return kind
    return _OTHER


class _State(NamedTuple):
    """A copy of an ``AlarmRecord`` (the core's records are mutable and another
    thread's)."""

    message: str
    severity: int
    since: float
    active: bool
    acked: bool
    acked_by: str

    @classmethod
    def of(cls, r: AlarmRecord) -> _State:
        return cls(r.message, r.severity, r.since, r.active, r.acked, r.acked_by)


@dataclass
class _Condition:
    key: str
    kind: AlarmKind
    node: Node
    variables: dict[str, ua.NodeId]
    gen: EventGenerator
    state: _State | None = None  # None: not in the records (never raised, or gone)
    event_ids: set[bytes] = field(default_factory=set)  # of the current occurrence


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _severity(s: int) -> int:
    return max(1, min(1000, int(s)))  # thermogate's 1..1000 is OPC UA's range


class AlarmFace:
    """See the module docstring: ``setup`` once, then ``update`` with each snapshot's
    alarm records, from the server's event loop."""

    def __init__(self) -> None:
        self._server: Server | None = None
        self._idx = 0
        self._parent: Node | None = None
        self._base = "Alarms"
        self._acknowledge: AcknowledgeFn | None = None
        self._principal: Callable[[], Principal] = lambda: ANONYMOUS
        self._conds: dict[str, _Condition] = {}
        self._by_node: dict[ua.NodeId, _Condition] = {}
        self._counts: dict[str, ua.NodeId] = {}
        self._counted = (0, 0)
        # who acknowledged through this face, until the records show it: an alarm
        # cleared and then acknowledged leaves the records without saying by whom
        self._acked_here: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # -- setup -----------------------------------------------------------------
    async def setup(
        self,
        server: Server,
        idx: int,
        parent: Node,
        acknowledge: AcknowledgeFn,
        *,
        principal_for_call: Callable[[], Principal] | None = None,
    ) -> None:
        """Bind the alarm methods and make ``parent`` (the site's Alarms folder) hold
        the alarms. ``principal_for_call`` gives the Principal of the session calling
        a method (anonymous viewer when not given). Call after ``server.init()``."""
        self._server, self._idx, self._parent = server, idx, parent
        self._acknowledge = acknowledge
        if principal_for_call is not None:
            self._principal = principal_for_call
        ident = parent.nodeid.Identifier
        self._base = ident if isinstance(ident, str) else "Alarms"
        isession = server.iserver.isession

        events.install()  # OfType with subtypes; events through notifier areas
        server_node = server.get_node(SERVER)
        await server_node.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        # the folder is the alarms' notifier area: its subscribers get their events
        await parent.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        # Server GeneratesEvent each type used (once, not per alarm) and has the
        # Alarms folder, a notifier itself, as its HasNotifier (a HasEventSource),
        # for clients that browse the event hierarchy: Server -> Alarms -> each alarm.
        types = {kind.type_id for _, kind in _RULES} | {_OTHER.type_id}
        refs = [
            ua.AddReferencesItem(
                SourceNodeId=SERVER,
                ReferenceTypeId=node_id(ua.ObjectIds.GeneratesEvent),
                IsForward=True,
                TargetNodeId=node_id(t),
                TargetNodeClass=ua.NodeClass.ObjectType,
            )
            for t in sorted(types)
        ]
        refs += _both_ways(SERVER, ua.ObjectIds.HasNotifier, parent.nodeid)
        for res in await isession.add_references(refs):
            res.check()

        # asyncua implements ConditionRefresh but binds it only when asked before
        # init(); bind it now unless the server already did.
        bound = server.iserver.subscription_service.standard_events
        if ua.ObjectIds.RefreshStartEventType not in bound:
            await server.iserver.setup_condition_methods()
        for marker in (ua.ObjectIds.RefreshStartEventType, ua.ObjectIds.RefreshEndEventType):
            # a ConditionRefresh brackets the resent conditions on the folder's items too
            events.notify_through(bound[marker].event, parent.nodeid)
        server.link_method(server.get_node(ACKNOWLEDGE_METHOD), self._acknowledge_condition)

        ack = await parent.add_method(
            node_id(f"{self._base}/AcknowledgeAlarm", idx),
            ua.QualifiedName("AcknowledgeAlarm", idx),
            self._acknowledge_alarm,
            [_argument("Key", ua.VariantType.String, 'the alarm\'s key; "" = every alarm')],
            [_argument("Message", ua.VariantType.String, "what the command path answered")],
        )

        def user_executable(nodeid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
            # per session, as Controller/AcknowledgeAlarm says (true for anyone once)
            who = self._principal()
            yes = may(who, Acknowledge(None, ""))
            return ua.DataValue(ua.Variant(yes, ua.VariantType.Boolean))

        server.iserver.aspace.set_attribute_value_callback(
            ack.nodeid, ua.AttributeIds.UserExecutable, user_executable
        )
        for name, what in (
            ("ActiveCount", "alarms active now"),
            ("UnackedCount", "alarms not yet acknowledged"),
        ):
            var = await parent.add_variable(
                node_id(f"{self._base}/{name}", idx),
                ua.QualifiedName(name, idx),
                ua.Variant(0, ua.VariantType.UInt32),
            )
            await var.write_attribute(
                ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(what)))
            )
            self._counts[name] = var.nodeid

    # -- per scan --------------------------------------------------------------
    async def update(self, t: float, records: Sequence[AlarmRecord]) -> None:
        """Fire an event for each alarm that changed since the last update (raised,
        cleared, acknowledged, raised again, or gone) and refresh its variables."""
        if self._server is None:
            raise RuntimeError("AlarmFace.update before setup")
        now = {r.key: _State.of(r) for r in records}
        async with self._lock:
            for key, st in now.items():
                cond = self._conds.get(key) or await self._condition(key)
                if st != cond.state:
                    await self._change(cond, cond.state, st, t)
            for cond in self._conds.values():
                if cond.key not in now and cond.state is not None:
                    await self._change(cond, cond.state, None, t)
            active = sum(s.active for s in now.values())
            unacked = sum(not s.acked for s in now.values())
            if (active, unacked) != self._counted:  # written on change: no notification a scan
                self._counted = (active, unacked)
                for name, n in (("ActiveCount", active), ("UnackedCount", unacked)):
                    v = ua.Variant(n, ua.VariantType.UInt32)
                    await self._write(self._counts[name], v, t)

    async def _condition(self, key: str) -> _Condition:
        """The object Alarms/<key> with its variables, and its event generator."""
        assert self._server is not None and self._parent is not None
        idx, base = self._idx, f"{self._base}/{key}"
        node = await self._parent.add_object(node_id(base, idx), ua.QualifiedName(key, idx))
        initial: dict[str, ua.Variant] = {
            "Active": ua.Variant(False, ua.VariantType.Boolean),
            "Acked": ua.Variant(True, ua.VariantType.Boolean),
            "Severity": ua.Variant(0, ua.VariantType.UInt16),
            "Message": ua.Variant("", ua.VariantType.String),
            "Since": ua.Variant(None, ua.VariantType.DateTime),
            "AckedBy": ua.Variant("", ua.VariantType.String),
        }
        variables = {}
        for name in VARIABLES:
            var = await node.add_variable(
                node_id(f"{base}/{name}", idx), ua.QualifiedName(name, idx), initial[name]
            )
            variables[name] = var.nodeid

        isession = self._server.iserver.isession
        for res in await isession.add_references(
            _both_ways(self._parent.nodeid, ua.ObjectIds.HasEventSource, node.nodeid)
        ):
            res.check()
        kind = kind_of(key)
        gen = EventGenerator(isession)
        await gen.init(kind.type_id, emitting_node=SERVER, add_generates_event=False)
        ev = gen.event
        events.notify_through(ev, self._parent.nodeid)  # the Server's and the folder's
        ev.SourceNode, ev.SourceName = node.nodeid, key
        ev.NodeId = node.nodeid  # the ConditionId
        ev.ConditionName = key
        ev.ConditionClassId = node_id(kind.class_id)
        ev.ConditionClassName = ua.LocalizedText(_CLASS_NAMES[kind.class_id])
        ev.add_property("EnabledState", ua.LocalizedText("Enabled"), ua.VariantType.LocalizedText)
        ev.add_property("EnabledState/Id", True, ua.VariantType.Boolean)
        ev.add_property("SuppressedOrShelved", False, ua.VariantType.Boolean)
        ev.add_property("Quality", ua.StatusCode(), ua.VariantType.StatusCode)
        # asyncua types these as NodeId(UtcTime), which a Variant cannot encode
        for name in ("ActiveState/TransitionTime", "AckedState/TransitionTime"):
            ev.add_property(name, None, ua.VariantType.DateTime)
        if kind.limit_state is not None:
            ev.add_property("LimitState/CurrentState", None, ua.VariantType.LocalizedText)
            ev.add_property("LimitState/CurrentState/Id", None, ua.VariantType.NodeId)
        cond = _Condition(key, kind, node, variables, gen)
        self._conds[key] = cond
        self._by_node[node.nodeid] = cond
        return cond

    async def _change(
        self, cond: _Condition, old: _State | None, new: _State | None, t: float
    ) -> None:
        """One event for the change from ``old`` to ``new`` (None: gone, i.e. cleared
        and acknowledged), then the variables."""
        gone = new is None
        if new is None:
            assert old is not None
            by = old.acked_by or self._acked_here.get(cond.key, "")
            new = old._replace(active=False, acked=True, acked_by=by)
        if new.acked:
            self._acked_here.pop(cond.key, None)
        retain = new.active or not new.acked
        raised = new.active and (old is None or not old.active or new.since != old.since)
        if raised:
            cond.event_ids.clear()  # a new occurrence: older EventIds no longer acknowledge it
            text, when = new.message, new.since
        elif not new.active and (old is None or old.active):
            # old None: first seen already cleared (the list restored after a restart,
            # its clear not yet acknowledged): said as a clear, not as the alarm
            text, when = f"cleared: {new.message}", t
        elif new.acked and (old is None or not old.acked):
            text, when = f"acknowledged by {new.acked_by or 'someone'}: {new.message}", t
        else:
            text, when = new.message, t

        ev = cond.gen.event
        ev.LastSeverity = ev.Severity if old is not None else None
        ev.Severity = _severity(new.severity)
        ev.Retain = retain
        ev.ActiveState = ua.LocalizedText("Active" if new.active else "Inactive")
        setattr(ev, "ActiveState/Id", new.active)
        if old is None or new.active != old.active or raised:
            setattr(ev, "ActiveState/TransitionTime", _utc(new.since if new.active else t))
        ev.AckedState = ua.LocalizedText("Acknowledged" if new.acked else "Unacknowledged")
        setattr(ev, "AckedState/Id", new.acked)
        if old is None or new.acked != old.acked:
            setattr(ev, "AckedState/TransitionTime", _utc(t))
        ev.ClientUserId = new.acked_by if new.acked else None
        if cond.kind.limit_state is not None:
            state = cond.kind.limit_state if new.active else None
            setattr(ev, "LimitState/CurrentState", state and ua.LocalizedText(state))
            setattr(ev, "LimitState/CurrentState/Id", state and node_id(_LIMIT_STATES[state]))
        await cond.gen.trigger(_utc(when), text)
        cond.event_ids.add(ev.EventId.Value)
        cond.state = None if gone else new

        values = {
            "Active": ua.Variant(new.active, ua.VariantType.Boolean),
            "Acked": ua.Variant(new.acked, ua.VariantType.Boolean),
            "Severity": ua.Variant(_severity(new.severity), ua.VariantType.UInt16),
            "Message": ua.Variant(new.message, ua.VariantType.String),
            "Since": ua.Variant(_utc(new.since), ua.VariantType.DateTime),
            "AckedBy": ua.Variant(new.acked_by, ua.VariantType.String),
        }
        for name, var in values.items():
            await self._write(cond.variables[name], var, t)

    async def _write(self, nodeid: ua.NodeId, value: ua.Variant, t: float) -> None:
        assert self._server is not None
        await self._server.write_attribute_value(
            nodeid, data_value(value, SourceTimestamp=_utc(t), ServerTimestamp=_utc(t))
        )

    # -- acknowledgement ---------------------------------------------------------
    async def _acknowledge_condition(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        """AcknowledgeableConditionType.Acknowledge(EventId, Comment) on a ConditionId."""
        if len(args) < 2:
            return status_code(ua.StatusCodes.BadArgumentsMissing)
        if len(args) > 2:
            return status_code(ua.StatusCodes.BadTooManyArguments)
        cond = self._by_node.get(parent)
        if cond is None:
            return status_code(ua.StatusCodes.BadNodeIdInvalid)
        event_id = args[0].Value
        if event_id not in cond.event_ids:  # never sent, or of an earlier occurrence
            return status_code(ua.StatusCodes.BadEventIdUnknown)
        if cond.state is None or cond.state.acked:  # None: cleared and acknowledged
            return status_code(ua.StatusCodes.BadConditionBranchAlreadyAcked)
        # the Comment has no place in the command path's Acknowledge(alarm): the
        # audit records who acknowledged which alarm
        status, _ = await self._give(cond.key)
        if status.value == ua.StatusCodes.BadInvalidState:
            # acknowledged already through another face, shown with the next scan
            return status_code(ua.StatusCodes.BadConditionBranchAlreadyAcked)
        return [] if status.is_good() else status

    async def _acknowledge_alarm(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        """AcknowledgeAlarm(Key) on the Alarms folder: "" acknowledges every alarm."""
        if not args:
            return status_code(ua.StatusCodes.BadArgumentsMissing)
        if len(args) > 1:
            return status_code(ua.StatusCodes.BadTooManyArguments)
        key = args[0].Value
        if not isinstance(key, str):
            return status_code(ua.StatusCodes.BadTypeMismatch)
        status, message = await self._give(key or None)
        # the command path's answer either way, as the Controller's methods give it
        return ua.CallMethodResult(
            StatusCode=status, OutputArguments=[ua.Variant(message, ua.VariantType.String)]
        )

    async def _give(self, key: str | None) -> tuple[ua.StatusCode, str]:
        """Acknowledge through the command path as the calling session's principal."""
        assert self._acknowledge is not None
        who = self._principal()
        try:
            res = await self._acknowledge(key, who)
        except TimeoutError:
            log.warning("acknowledge %s by %s: the controller did not answer", key, who.origin)
            return status_code(ua.StatusCodes.BadTimeout), ""
        if res.accepted:
            keys = [key] if key is not None else [c.key for c in self._conds.values()]
            for k in keys:
                st = self._conds[k].state if k in self._conds else None
                if st is not None and not st.acked:
                    self._acked_here[k] = who.origin
            return ua.StatusCode(), res.message
        log.info("acknowledge %s by %s %s", key, who.origin, res.message)
        code = status_of(res, Acknowledge(key), who)
        if code in (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadTimeout):
            return status_code(code), res.message  # the role may not; not taken: withdrawn
        if key is not None and key not in self._conds:
            return status_code(ua.StatusCodes.BadInvalidArgument), res.message
        return status_code(ua.StatusCodes.BadInvalidState), res.message


def _argument(name: str, vtype: ua.VariantType, description: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = node_id(vtype.value)
    arg.ValueRank = -1
    arg.Description = ua.LocalizedText(description)
    return arg


def _both_ways(source: ua.NodeId, ref_type: int, target: ua.NodeId) -> list[ua.AddReferencesItem]:
    """A reference between two objects and its inverse (asyncua's AddReferences adds
    only the one asked for, so a browse from the target would not see it)."""
    return [
        ua.AddReferencesItem(
            SourceNodeId=a,
            ReferenceTypeId=node_id(ref_type),
            IsForward=forward,
            TargetNodeId=b,
            TargetNodeClass=ua.NodeClass.Object,
        )
        for a, b, forward in ((source, target, True), (target, source, False))
    ]
