"""Methods on the Controller object and writable setpoints: commands on the one path.

Every method call and every write of a setpoint variable becomes one command
record (``core/commands.py``) given by the session's user, ``opcua:<user>``,
through the ``CommandBridge``: the run loop gives it between two scans, so the
role check, the site's limits, the precedence and the audit are exactly those
of every other face. The answer is the command path's message; a refusal is a
Bad status code carrying that message:

* ``BadUserAccessDenied`` - the role may not (anonymous is a viewer: it may read,
  never change anything);
* ``BadOutOfRange`` - a value outside the site's limits (never a silent clamp);
* ``BadTimeout`` - the controller did not take it (not scanning); it was withdrawn;
* ``BadInvalidArgument`` - any other refusal (unknown loop, nothing to acknowledge ...);
  an argument of the wrong type also has ``BadTypeMismatch`` as its own
  ``InputArgumentResults`` entry;
* ``BadTypeMismatch`` - a setpoint written with a value that is not a Double;
* ``BadWriteNotSupported`` - a setpoint written with a StatusCode other than Good
  or with a timestamp (Part 4: the server writes values only; nothing is applied);
* ``BadNodeIdUnknown`` - a write to a node the server does not have;
* ``BadMethodInvalid`` - a method called on an object other than the Controller
  (``server.strict_call``: Part 4 wants the method to be the object's component).

A value's DataType must be the declared one, as Part 4 wants: a Float or an
Int32 is not converted to a Double, in a write or in an argument. Such a refusal
never becomes a command; it is audited all the same (``Commands.refused``).

A method call returns its message as its output argument, also when refused
(``CallMethodResult.StatusCode`` is then Bad). ``UserExecutable`` of each method
and ``UserAccessLevel`` of each setpoint say, per session, whether its user's
role may use them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User
from asyncua.server.address_space import AttributeService

from ..core.commands import (
    GRID_COMMANDS,
    REQUIRED_ROLE,
    ROLES,
    Acknowledge,
    ClearCurtailment,
    Command,
    CommandResult,
    OverrideActuator,
    Principal,
    ReleaseUnderFrequency,
    RequestCurtailment,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
    SetTuning,
    plain_why,
)
from ..signals import Audit
from .bridge import CommandBridge, give
from .security import ANONYMOUS
from .space import Space
from .typed import node_id, status_code

log = logging.getLogger(__name__)
S, V = ua.StatusCodes, ua.VariantType
#: refusals for being outside a limit (the command path's wording)
_RANGE = re.compile(r"\boutside\b|must be at least .* and at most|within the next 7 days")
_NOT_TAKEN = "did not take the command"
#: DateTime.MinValue (and 1601, OPC UA's null DateTime) ask for "now"
_NULL_DATE = datetime(1601, 1, 2, tzinfo=UTC)


def allowed(by: Principal, kind: type) -> bool:
    """Whether ``by``'s role may give commands of type ``kind`` (``commands.may``'s rule)."""
    if by.role == "grid":
        return kind in GRID_COMMANDS
    return by.role in ROLES and ROLES.index(by.role) >= ROLES.index(REQUIRED_ROLE[kind])


def status_of(res: CommandResult, cmd: Command, by: Principal) -> int:
    """The OPC UA status code of a command's result (see the module docstring)."""
    if res.accepted:
        return S.Good
    if not allowed(by, type(cmd)):
        return S.BadUserAccessDenied
    if _NOT_TAKEN in res.message:
        return S.BadTimeout
    if _RANGE.search(res.message):
        return S.BadOutOfRange
    return S.BadInvalidArgument


@dataclass(frozen=True)
class Method:
    """One method: its command type, arguments (name, type, description) and builder."""

    name: str
    kind: type
    description: str
    args: tuple[tuple[str, ua.VariantType, str], ...]
    build: Callable[..., Command]


def _opt(s: str) -> str | None:
    """Empty or ``all`` (as the console takes it): every one; else the name given."""
    word = s.strip().lower()
    return None if word in ("", "all") else s


def _start(d: datetime) -> float | None:
    if d.tzinfo is None:  # asyncua decodes DateTime as naive UTC
        d = d.replace(tzinfo=UTC)
    return None if d <= _NULL_DATE else d.timestamp()


def _gain(x: float) -> float | None:
    return None if math.isnan(x) else x


_WHY = ("Why", V.String, "the reason, for the audit log (may be omitted)")
METHODS = (
    Method(
        "SetMode",
        SetMode,
        "set the controller's mode",
        (
            (
                "Mode",
                V.String,
                "auto | manual (loops hold) | maintenance (loops and workloads hold)",
            ),
        ),
        lambda m, why: SetMode(m, why),
    ),
    Method(
        "SetSetpoint",
        SetSetpoint,
        "set a control loop's setpoint (within its limits)",
        (
            ("Loop", V.String, "a control loop's name, or the point it measures"),
            ("Value", V.Double, "the new setpoint, in the measured point's unit"),
        ),
        lambda loop, x, why: SetSetpoint(loop, x, why),
    ),
    Method(
        "OverrideActuator",
        OverrideActuator,
        "hold an actuator at a value for a while (an interlock still beats it)",
        (
            ("Point", V.String, "the actuator's point name (a writable point)"),
            ("Value", V.Double, "the value, within the point's range"),
            ("DurationS", V.Double, "how long, in seconds (at most a day)"),
        ),
        lambda p, x, d, why: OverrideActuator(p, x, d, why),
    ),
    Method(
        "ReturnToAuto",
        ReturnToAuto,
        "end an override",
        (("Point", V.String, "the overridden point; empty or all: every override"),),
        lambda p, why: ReturnToAuto(_opt(p), why),
    ),
    Method(
        "AcknowledgeAlarm",
        Acknowledge,
        "acknowledge an alarm (ISA-18.2)",
        (("Alarm", V.String, "the alarm's key; empty or all: every unacknowledged alarm"),),
        lambda a, why: Acknowledge(_opt(a), why),
    ),
    Method(
        "ResetInterlock",
        ResetInterlock,
        "release a latched trip once its PLC interlock reads clear (engineers)",
        (("Load", V.String, "the tank or rack row; empty or all: every latched trip"),),
        lambda ld, why: ResetInterlock(_opt(ld), why),
    ),
    Method(
        "SetTuning",
        SetTuning,
        "retune a control loop (engineers)",
        (
            ("Loop", V.String, "the control loop's name"),
            ("Kp", V.Double, "proportional gain (NaN: unchanged)"),
            ("Ki", V.Double, "integral gain (NaN: unchanged)"),
            ("Kd", V.Double, "derivative gain (NaN: unchanged)"),
        ),
        lambda loop, kp, ki, kd, why: SetTuning(loop, _gain(kp), _gain(ki), _gain(kd), why),
    ),
    Method(
        "RequestCurtailment",
        RequestCurtailment,
        "hold the site's import at or below a limit for a while",
        (
            ("LimitMW", V.Double, "import at most this (MW), between 0 and the site's limit"),
            ("Start", V.DateTime, "when (UTC); a null DateTime: now"),
            ("DurationS", V.Double, "how long, in seconds (at most 7 days)"),
        ),
        lambda mw, start, d, why: RequestCurtailment(mw * 1000.0, d, _start(start), why),
    ),
    Method(
        "ClearCurtailment",
        ClearCurtailment,
        "end a curtailment",
        (("Id", V.UInt32, "the curtailment's number; 0: every curtailment"),),
        lambda i, why: ClearCurtailment(i or None, why),
    ),
    Method(
        "ReleaseUnderFrequency",
        ReleaseUnderFrequency,
        "let the load the under-frequency relay shed come back (once recovered)",
        (),
        lambda why: ReleaseUnderFrequency(why),
    ),
)

_PYTYPE: dict[ua.VariantType, type | tuple[type, ...]] = {
    V.String: str,
    V.Double: float,
    V.UInt32: int,
    V.DateTime: datetime,
}


class Commands:
    """Installs the methods, the setpoint writes and the per-user access attributes.

    ``principal_of`` maps a session's user to a Principal (``security.principal_of``);
    ``current_user`` is the user of the request being served (``server.current_user``)."""

    def __init__(
        self,
        bridge: CommandBridge,
        principal_of: Callable[[User | None], Principal],
        current_user: Callable[[], User | None],
        timeout_s: float = 10.0,
    ) -> None:
        self.bridge, self.principal_of, self.current_user = bridge, principal_of, current_user
        self.timeout_s = timeout_s
        self.space: Space | None = None

    def who(self) -> Principal:
        return self.principal_of(self.current_user())

    def refused(self, target: str, why: str, by: Principal | None = None) -> None:
        """Audit a refusal that never became a command (the command path audits its
        own): a user's wrong-typed write or argument left no trace. Anonymous
        attempts are not audited (anyone may make them)."""
        by = by or self.who()
        if by == ANONYMOUS:
            return
        why = f"refused: {plain_why(why)}"
        self.bridge.refuse(Audit(time.time(), by.user, by.face, target, None, None, why, False))

    async def give(self, cmd: Command, by: Principal) -> tuple[int, CommandResult]:
        res = await give(self.bridge, cmd, by, self.timeout_s)
        return status_of(res, cmd, by), res

    async def show_setpoint(self, res: CommandResult) -> None:
        """An accepted SetSetpoint (written or called) shown on its variable at once,
        not with the next scan: the same value and time the command path audited."""
        a = res.audit
        if self.space is None or a.new is None or not a.target.endswith(".setpoint"):
            return
        await self.space.show_written(a.target.removesuffix(".setpoint"), float(a.new), a.t)

    async def setup(self, server: Server, space: Space) -> None:
        self.space = space
        parent = server.get_node(space.controller)
        aspace = server.iserver.aspace
        for m in METHODS:
            args = [*m.args, _WHY]
            inputs = [_argument(n, t, d) for n, t, d in args]
            out = [_argument("Message", V.String, "what the command path answered")]
            nid = node_id(f"Site/Controller/{m.name}", space.idx)
            qn = ua.QualifiedName(m.name, space.idx)
            node = await parent.add_method(nid, qn, self._callback(m), inputs, out)
            desc = f"{m.description}; needs role {REQUIRED_ROLE[m.kind]}"
            aspace[node.nodeid].attributes[ua.AttributeIds.Description].value = ua.DataValue(
                ua.Variant(ua.LocalizedText(desc), V.LocalizedText)
            )
            aspace.set_attribute_value_callback(
                node.nodeid, ua.AttributeIds.UserExecutable, self._may_call(m.kind)
            )
        for nid in space.setpoints:
            aspace.set_attribute_value_callback(nid, ua.AttributeIds.UserAccessLevel, self._rw)
        server.iserver.attribute_service = SetpointWrites(self, space, server)

    def _may_call(self, kind: type) -> Callable[..., ua.DataValue]:
        def user_executable(nodeid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
            return ua.DataValue(ua.Variant(allowed(self.who(), kind), V.Boolean))

        return user_executable

    def _rw(self, nodeid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
        write = ua.AccessLevel.CurrentWrite.mask if allowed(self.who(), SetSetpoint) else 0
        return ua.DataValue(ua.Variant(ua.AccessLevel.CurrentRead.mask | write, V.Byte))

    def _callback(self, m: Method) -> Callable[..., Any]:
        async def call(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            given = [a if isinstance(a, ua.Variant) else ua.Variant(a) for a in args]
            if len(given) == len(m.args):  # Why omitted
                given.append(ua.Variant("", V.String))
            bad = _check(given, [*m.args, _WHY])
            if bad is not None:
                self.refused(f"opcua.{m.name}", bad[1])
                refused = _result(bad[0], bad[1])
                if bad[2] is not None:  # that argument's own result says which and why
                    refused.InputArgumentResults = [
                        status_code(S.BadTypeMismatch if k == bad[2] else S.Good)
                        for k in range(len(args))
                    ]
                return refused
            cmd = m.build(*(a.Value for a in given))
            code, res = await self.give(cmd, self.who())
            if code == S.Good and isinstance(cmd, SetSetpoint):
                # as a write does: a read right after the Good call sees it
                await self.show_setpoint(res)
            return _result(code, res.message)

        return call


def _status_or_timestamps(dv: ua.DataValue | None) -> str | None:
    """What a written DataValue carries besides its value ("a status code BadX", "a
    SourceTimestamp" ...), None when only a value: the server writes nothing else."""
    if dv is None:
        return None
    code = dv.StatusCode
    if code is not None and code.value != S.Good:
        return f"a status code {code.name}"
    for field in ("SourceTimestamp", "ServerTimestamp", "SourcePicoseconds", "ServerPicoseconds"):
        if getattr(dv, field, None):
            return f"a {field}"
    return None


def _check(
    given: list[ua.Variant], args: list[tuple[str, ua.VariantType, str]]
) -> tuple[int, str, int | None] | None:
    """A status, a message and the argument at fault (None: the count) for arguments
    that do not fit the method; None when they fit."""
    if len(given) < len(args):
        return S.BadArgumentsMissing, f"expected {', '.join(a[0] for a in args)}", None
    if len(given) > len(args):
        return S.BadTooManyArguments, f"expected {', '.join(a[0] for a in args)}", None
    for k, (a, (name, vt, _)) in enumerate(zip(given, args, strict=True)):
        if not _fits(a, vt):
            return S.BadInvalidArgument, f"{name} must be a {vt.name}, not {_what(a)}", k
    return None


def _fits(a: ua.Variant, vt: ua.VariantType) -> bool:
    """Whether ``a`` is a scalar of exactly ``vt``: Part 4 converts no DataType into
    another (a Float or an Int32 is not a Double, however the value reads)."""
    x = a.Value
    return a.VariantType == vt and isinstance(x, _PYTYPE[vt]) and not isinstance(x, bool)


def _what(a: ua.Variant) -> str:
    """What a client sent, for a refusal: 'a Float', 'an array of Double', 'nothing'."""
    if a.Value is None:
        return "nothing"
    if a.is_array or isinstance(a.Value, list):
        return f"an array of {a.VariantType.name}"
    return f"a {a.VariantType.name}"


def _result(code: int, message: str) -> ua.CallMethodResult:
    return ua.CallMethodResult(
        StatusCode=status_code(code), OutputArguments=[ua.Variant(message, V.String)]
    )


def _argument(name: str, vt: ua.VariantType, desc: str) -> ua.Argument:
    return ua.Argument(
        Name=name, DataType=node_id(vt.value), ValueRank=-1, Description=ua.LocalizedText(desc)
    )


class SetpointWrites(AttributeService):
    """The server's write service with setpoint variables routed to the command path.

    A write of a setpoint's Value is a SetSetpoint by the session's user: refused ->
    its Bad status (the value stays what the controller holds), accepted -> Good, and
    the variable shows the new setpoint at once (as after a SetSetpoint call). Any
    other external write into the site's namespace is refused; the server's own
    writes pass untouched."""

    def __init__(self, commands: Commands, space: Space, server: Server) -> None:
        super().__init__(server.iserver.aspace)
        self.commands, self.space = commands, space
        self._internal = server.iserver.isession.user

    async def write(
        self, params: ua.WriteParameters, user: User | None = None
    ) -> list[ua.StatusCode]:
        if user is None:  # called directly, as the server itself
            return await super().write(params)
        if user is self._internal:  # the server's own writes (its internal session)
            return await super().write(params, user)

        async def one(wv: ua.WriteValue) -> ua.StatusCode:
            if wv.NodeId.NamespaceIndex != self.space.idx:
                [code] = await super(SetpointWrites, self).write(
                    ua.WriteParameters(NodesToWrite=[wv]), user
                )
                return code
            return status_code(await self._write(wv, user))

        # all at once, given in their order at the same scan: one after the other,
        # a Write of 20 setpoints took 20 scans, past a client's 15 s timeout
        return list(await asyncio.gather(*(one(wv) for wv in params.NodesToWrite)))

    async def _write(self, wv: ua.WriteValue, user: User) -> int:
        by = self.commands.principal_of(user)
        loop = self.space.setpoints.get(wv.NodeId)
        if loop is None and wv.NodeId not in self._aspace:
            return S.BadNodeIdUnknown
        if loop is None or wv.AttributeId != ua.AttributeIds.Value:
            return S.BadNotWritable if allowed(by, SetSetpoint) else S.BadUserAccessDenied
        extra = _status_or_timestamps(wv.Value)
        if extra is not None:
            # Part 4 (5.10.4): a server that does not write status or timestamps
            # refuses such a WriteValue; it was taken as a good value
            self.commands.refused(
                f"{loop.name}.setpoint", f"{extra} written; only a value may be", by
            )
            return S.BadWriteNotSupported
        given = wv.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
        # a setpoint is a Double: a Float or an Int32 is refused, not converted (Part 4)
        if given is None or not _fits(given, V.Double):
            what = "nothing" if given is None else _what(given)
            self.commands.refused(
                f"{loop.name}.setpoint", f"{what} written where a Double is wanted", by
            )
            return S.BadTypeMismatch
        cmd = SetSetpoint(loop.name, given.Value, "written over OPC UA")
        code, res = await self.commands.give(cmd, by)
        if code != S.Good:
            log.info("OPC UA write of %s by %s refused: %s", loop.name, by.origin, res.message)
        else:
            await self.commands.show_setpoint(res)
        return code
