"""OPC UA methods and setpoint writes: commands on the one command path, given by the
session's user (``opcua:<user>``); refused with a Bad status saying why, never clamped;
anonymous and viewers change nothing."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from opcua_rig import Rig

from thermogate.controller.opcua.methods import METHODS

S, V = ua.StatusCodes, ua.VariantType
NOW = ua.Variant(datetime(1601, 1, 1, tzinfo=UTC), V.DateTime)  # OPC UA's null DateTime


@pytest.fixture(scope="module")
def rig(site, demo_pmap, tmp_path_factory):
    r = Rig(site, demo_pmap, tmp_path_factory.mktemp("methods") / "site.db")
    r.publish()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def fresh_state(rig):
    """Each test starts from the file's state (xdist may split this module's tests)."""
    st = rig.ctrl.state
    st.mode = "auto"
    for kept in (st.curtailments, st.overrides, st.setpoints, st.tunings):
        kept.clear()
    rig.publish()


def _s(text: str) -> ua.Variant:
    return ua.Variant(text, V.String)


def _d(x: float) -> ua.Variant:
    return ua.Variant(x, V.Double)


def _message(res: ua.CallMethodResult) -> str:
    return res.OutputArguments[0].Value


# -- methods -------------------------------------------------------------------------------
def test_an_operator_sets_the_mode_and_the_audit_names_opcua_and_the_user(rig):
    res = rig.call("olive", "SetMode", _s("manual"), _s("pump swap"))
    assert res.StatusCode.is_good(), _message(res)
    assert _message(res) == "mode auto -> manual by opcua:olive"
    assert rig.ctrl.state.mode == "manual"
    a = rig.audits[-1]
    assert (a.who, a.where, a.target, a.ok) == ("olive", "opcua", "mode", True)
    assert "pump swap" in a.why


def test_an_anonymous_call_is_refused_as_access_denied_and_changes_nothing(rig):
    res = rig.call(None, "SetMode", _s("maintenance"), _s(""))
    assert res.StatusCode.value == S.BadUserAccessDenied
    assert "needs role operator" in _message(res)
    assert rig.ctrl.state.mode == "auto"
    a = rig.audits[-1]
    assert (a.who, a.where, a.ok) == ("anonymous", "opcua", False)  # refusals are audited too


def test_a_viewer_call_is_refused_as_access_denied(rig):
    res = rig.call("vic", "RequestCurtailment", _d(2.0), NOW, _d(600))
    assert res.StatusCode.value == S.BadUserAccessDenied
    assert "vic has role viewer" in _message(res)
    assert rig.ctrl.state.curtailments == []


def test_an_operator_may_not_do_what_needs_an_engineer(rig):
    nan = _d(math.nan)
    res = rig.call("olive", "SetTuning", _s("loop1_supply"), _d(2.0), nan, nan)
    assert res.StatusCode.value == S.BadUserAccessDenied
    assert "needs role engineer" in _message(res)


def test_a_curtailment_asked_in_megawatts_starts_when_asked(rig):
    start = datetime.fromtimestamp(time.time() + 3600, UTC)
    res = rig.call("olive", "RequestCurtailment", _d(2.2), ua.Variant(start, V.DateTime), _d(900))
    assert res.StatusCode.is_good(), _message(res)
    c = rig.ctrl.state.curtailments[-1]
    assert c.limit_kw == 2200.0 and c.end - c.start == 900.0
    assert abs(c.start - start.timestamp()) < 1e-3
    res = rig.call("olive", "ClearCurtailment", ua.Variant(c.id, V.UInt32))
    assert res.StatusCode.is_good(), _message(res)
    assert rig.ctrl.state.curtailments == []


def test_a_curtailment_above_the_site_limit_is_out_of_range(rig, site):
    mw = site.import_limit_kw / 1000.0 + 1.0
    res = rig.call("olive", "RequestCurtailment", _d(mw), NOW, _d(60))
    assert res.StatusCode.value == S.BadOutOfRange
    assert "outside" in _message(res)


def test_a_curtailment_shorter_than_a_second_is_out_of_range(rig):
    res = rig.call("olive", "RequestCurtailment", _d(2.0), NOW, _d(0.5))
    assert res.StatusCode.value == S.BadOutOfRange
    assert "must be at least 1 s" in _message(res)


def test_an_override_outside_the_points_range_is_out_of_range(rig):
    res = rig.call("olive", "OverrideActuator", _s("loop1.dc1.fan_cmd"), _d(140.0), _d(60.0))
    assert res.StatusCode.value == S.BadOutOfRange
    assert rig.ctrl.state.overrides == {}


def test_arguments_of_the_wrong_type_or_number_are_refused_before_any_command(rig):
    n = len(rig.audits)
    res = rig.call("olive", "SetMode", _d(1.0))
    assert res.StatusCode.value == S.BadInvalidArgument
    # the argument at fault says so in its own result (they all read Good once)
    assert [r.value for r in res.InputArgumentResults] == [S.BadTypeMismatch]
    res = rig.call("olive", "SetMode", _s("auto"), ua.Variant(7, ua.VariantType.Int32))
    assert [r.value for r in res.InputArgumentResults] == [S.Good, S.BadTypeMismatch]
    res = rig.call("olive", "SetSetpoint", _s("loop1_supply"))
    assert res.StatusCode.value == S.BadArgumentsMissing
    assert len(rig.audits) == n


@pytest.mark.parametrize("method", [m.name for m in METHODS])
def test_every_method_reaches_the_command_path_as_its_command(rig, method):
    args = {
        "SetMode": [_s("manual")],
        "SetSetpoint": [_s("loop1_supply"), _d(31.0)],
        "OverrideActuator": [_s("loop1.dc1.fan_cmd"), _d(50.0), _d(60.0)],
        "ReturnToAuto": [_s("")],
        "AcknowledgeAlarm": [_s("")],
        "ResetInterlock": [_s("")],
        "SetTuning": [_s("loop1_supply"), _d(9.0), _d(math.nan), _d(math.nan)],
        "RequestCurtailment": [_d(2.5), NOW, _d(60.0)],
        "ClearCurtailment": [ua.Variant(0, V.UInt32)],
        "ReleaseUnderFrequency": [],
    }[method]
    n = len(rig.audits)
    res = rig.call("erin", method, *args, _s("test"))
    assert len(rig.audits) == n + 1, _message(res)
    a = rig.audits[-1]
    assert (a.who, a.where) == ("erin", "opcua")
    assert res.StatusCode.is_good() == a.ok
    # an engineer may give every command: a refusal is on its merits, with its reason
    assert res.StatusCode.value != S.BadUserAccessDenied
    assert _message(res)


# -- writable setpoints ----------------------------------------------------------------------
def _write(rig: Rig, user: str | None, name: str, value: ua.Variant) -> ua.StatusCode:
    async def fn(c: Client) -> ua.StatusCode:
        wv = ua.WriteValue(
            NodeId=rig.node_id(name), AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(value)
        )
        try:
            return (await c.uaclient.write(ua.WriteParameters([wv])))[0]
        except UaStatusCodeError as exc:  # anonymous: the whole Write service is refused
            return ua.StatusCode(exc.code)

    return rig.client(user, fn)


def _value(rig: Rig, name: str) -> float:
    async def fn(c: Client) -> float:
        return await c.get_node(rig.node_id(name)).read_value()

    return rig.client(None, fn)


def test_an_out_of_range_setpoint_write_is_refused_and_the_value_stays(rig):
    before = _value(rig, "loop1_supply.setpoint")
    sc = _write(rig, "olive", "loop1_supply.setpoint", _d(80.0))
    assert sc.value == S.BadOutOfRange
    a = rig.audits[-1]
    assert (a.who, a.where, a.ok) == ("olive", "opcua", False) and "outside" in a.why
    rig.publish()
    assert _value(rig, "loop1_supply.setpoint") == before  # not clamped to the limit


def test_a_setpoint_written_in_range_is_a_command_and_shows_after_the_next_scan(rig):
    sc = _write(rig, "olive", "loop1_supply.setpoint", _d(30.5))
    assert sc.is_good()
    assert rig.ctrl.state.setpoints["loop1_supply"] == 30.5
    a = rig.audits[-1]
    assert (a.who, a.where, a.target, a.new) == ("olive", "opcua", "loop1_supply.setpoint", 30.5)
    rig.publish()
    assert _value(rig, "loop1_supply.setpoint") == 30.5


def test_anonymous_and_viewers_never_write(rig, demo_pmap):
    assert _write(rig, None, "ailoop1_supply.setpoint", _d(31.0)).value == S.BadUserAccessDenied
    assert _write(rig, "vic", "ailoop1_supply.setpoint", _d(31.0)).value == S.BadUserAccessDenied
    assert "ailoop1_supply" not in rig.ctrl.state.setpoints
    # a point is the plant's: nobody writes it, whatever the role
    assert _write(rig, None, "tank01.fluid_temp", _d(1.0)).value == S.BadUserAccessDenied
    assert _write(rig, "erin", "tank01.valve_cmd", _d(1.0)).value == S.BadNotWritable


def test_a_write_to_a_node_the_server_does_not_have_is_node_id_unknown(rig):
    # It once answered BadNotWritable, as if the node existed.
    async def fn(c: Client) -> ua.StatusCode:
        wv = ua.WriteValue(
            NodeId=ua.NodeId("nope", rig.node_id("tank01.valve_cmd").NamespaceIndex),
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(_d(1.0)),
        )
        return (await c.uaclient.write(ua.WriteParameters([wv])))[0]

    assert rig.client("erin", fn).value == S.BadNodeIdUnknown


def test_a_write_of_the_wrong_type_is_a_type_mismatch(rig):
    assert _write(rig, "olive", "loop1_supply.setpoint", _s("31")).value == S.BadTypeMismatch


def test_who_may_write_or_call_is_shown_per_user(rig):
    async def fn(c: Client) -> tuple[int, bool]:
        sp = c.get_node(rig.node_id("loop1_supply.setpoint"))
        method = c.get_node(rig.node_id("Site/Controller/SetMode"))
        return await sp.get_user_access_level(), await method.read_attribute(
            ua.AttributeIds.UserExecutable
        )

    anon_access, anon_exec = rig.client(None, fn)
    op_access, op_exec = rig.client("olive", fn)
    assert ua.AccessLevel.CurrentWrite not in anon_access and not anon_exec.Value.Value
    assert ua.AccessLevel.CurrentWrite in op_access and op_exec.Value.Value


def test_a_command_the_controller_does_not_take_is_refused_as_a_timeout(rig):
    rig.serving, rig.face.commands.timeout_s = False, 0.3
    try:
        res = rig.call("olive", "SetMode", _s("manual"))
    finally:
        rig.serving, rig.face.commands.timeout_s = True, 5.0
    assert res.StatusCode.value == S.BadTimeout
    assert "withdrawn" in _message(res)
    time.sleep(0.1)  # the run loop serves again: the withdrawn command is not given
    assert rig.ctrl.state.mode == "auto"


@pytest.mark.parametrize("method", ["ReturnToAuto", "AcknowledgeAlarm", "ResetInterlock"])
def test_all_means_every_one_as_the_console_says_it(rig, method):
    # "all" was taken for a point, alarm or load named all over OPC UA only.
    empty = rig.call("erin", method, _s(""))
    for every in ("all", "ALL"):
        res = rig.call("erin", method, _s(every))
        assert (res.StatusCode.value, _message(res)) == (empty.StatusCode.value, _message(empty))
    assert "all" not in _message(empty)


def _refusals(rig: Rig) -> list:
    """The refusals the face handed the run loop to audit (``Commands.refused``)."""
    deadline = time.monotonic() + 5.0
    got = rig.face.bridge.take_refused()
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
        got = rig.face.bridge.take_refused()
    return got


@pytest.mark.parametrize(
    "value", [ua.Variant(31.0, V.Float), ua.Variant(31, V.Int32), ua.Variant(31, V.UInt16)]
)
def test_a_number_of_another_data_type_written_to_a_double_setpoint_is_a_type_mismatch(rig, value):
    # Part 4 (Write): the value's DataType must be the variable's, no conversion. A
    # Float or an Int32 was taken as a setpoint.
    rig.face.bridge.take_refused()
    before = _value(rig, "loop1_supply.setpoint")
    n = len(rig.audits)
    sc = _write(rig, "olive", "loop1_supply.setpoint", value)
    assert sc.value == S.BadTypeMismatch
    assert "loop1_supply" not in rig.ctrl.state.setpoints and len(rig.audits) == n
    [a] = _refusals(rig)  # audited as the other refused writes are
    assert (a.who, a.where, a.target, a.ok) == ("olive", "opcua", "loop1_supply.setpoint", False)
    assert a.why.startswith("refused: ") and value.VariantType.name in a.why
    rig.publish()
    assert _value(rig, "loop1_supply.setpoint") == before
    # a Double is still a setpoint, end to end
    assert _write(rig, "olive", "loop1_supply.setpoint", _d(31.5)).is_good()
    assert rig.ctrl.state.setpoints["loop1_supply"] == 31.5
    rig.publish()
    assert _value(rig, "loop1_supply.setpoint") == 31.5


def test_a_method_argument_of_another_numeric_data_type_is_a_type_mismatch(rig):
    rig.face.bridge.take_refused()
    n = len(rig.audits)
    res = rig.call("olive", "SetSetpoint", _s("loop1_supply"), ua.Variant(31.0, V.Float))
    assert res.StatusCode.value == S.BadInvalidArgument
    assert [r.value for r in res.InputArgumentResults] == [S.Good, S.BadTypeMismatch]
    assert "Value must be a Double, not a Float" in _message(res)
    res = rig.call("olive", "ClearCurtailment", ua.Variant(0, V.Int32))
    assert [r.value for r in res.InputArgumentResults] == [S.BadTypeMismatch]
    assert "loop1_supply" not in rig.ctrl.state.setpoints and len(rig.audits) == n
    assert [(a.who, a.target, a.ok) for a in _refusals(rig)] == [
        ("olive", "opcua.SetSetpoint", False),
        ("olive", "opcua.ClearCurtailment", False),
    ]


# -- where a method may be called ------------------------------------------------------------
def _call_on(rig: Rig, user: str, object_id: ua.NodeId, method: str, *args: ua.Variant):
    mid = rig.node_id(f"Site/Controller/{method}")

    async def fn(c: Client) -> ua.CallMethodResult:
        return (await c.uaclient.call([ua.CallMethodRequest(object_id, mid, list(args))]))[0]

    return rig.client(user, fn)


def test_a_controller_method_called_on_an_object_that_does_not_have_it_is_method_invalid(rig):
    # Part 4 (5.11.2): the method must be a component of the object. SetSetpoint on
    # the Site object, the Server object or a variable answered Good and set it.
    n = len(rig.audits)
    args = (_s("loop1_supply"), _d(34.0), _s("x"))
    for elsewhere in (
        rig.node_id("Site"),
        ua.NodeId(ua.ObjectIds.Server),
        rig.node_id("tank01.fluid_temp"),
    ):
        res = _call_on(rig, "olive", elsewhere, "SetSetpoint", *args)
        assert res.StatusCode.value == S.BadMethodInvalid, elsewhere
    assert "loop1_supply" not in rig.ctrl.state.setpoints and len(rig.audits) == n
    # on the Controller, its owner, it is still a command
    res = _call_on(rig, "olive", rig.node_id("Site/Controller"), "SetSetpoint", *args)
    assert res.StatusCode.is_good(), _message(res)
    assert rig.ctrl.state.setpoints["loop1_supply"] == 34.0


def _write_dv(rig: Rig, user: str, name: str, dv: ua.DataValue) -> ua.StatusCode:
    async def fn(c: Client) -> ua.StatusCode:
        wv = ua.WriteValue(NodeId=rig.node_id(name), AttributeId=ua.AttributeIds.Value, Value=dv)
        return (await c.uaclient.write(ua.WriteParameters([wv])))[0]

    return rig.client(user, fn)


def test_a_setpoint_written_with_a_status_or_a_timestamp_is_write_not_supported(rig):
    # Part 4 (5.10.4): a server that does not write status or timestamps refuses such
    # a WriteValue. A Bad status or a SourceTimestamp was ignored: Good, value applied.
    rig.face.bridge.take_refused()
    before = _value(rig, "loop1_supply.setpoint")
    n = len(rig.audits)
    now = datetime.now(UTC)
    for dv in (
        ua.DataValue(_d(33.0), StatusCode=ua.StatusCode(S.BadSensorFailure)),
        ua.DataValue(_d(33.0), StatusCode=ua.StatusCode(S.UncertainLastUsableValue)),
        ua.DataValue(_d(33.0), SourceTimestamp=now),
        ua.DataValue(_d(33.0), ServerTimestamp=now),
    ):
        assert _write_dv(rig, "olive", "loop1_supply.setpoint", dv).value == (
            S.BadWriteNotSupported
        ), dv
    assert "loop1_supply" not in rig.ctrl.state.setpoints and len(rig.audits) == n
    refused = _refusals(rig)  # audited as the other refused writes are
    assert len(refused) == 4 and {(a.who, a.where, a.target, a.ok) for a in refused} == {
        ("olive", "opcua", "loop1_supply.setpoint", False)
    }
    assert "BadSensorFailure" in refused[0].why and "SourceTimestamp" in refused[2].why
    rig.publish()
    assert _value(rig, "loop1_supply.setpoint") == before
    # a value alone, with a Good status, is still a setpoint
    good = ua.DataValue(_d(33.0), StatusCode=ua.StatusCode(S.Good))
    assert _write_dv(rig, "olive", "loop1_supply.setpoint", good).is_good()
    assert rig.ctrl.state.setpoints["loop1_supply"] == 33.0


def test_a_setpoint_set_by_the_method_reads_back_at_once_as_a_written_one_does(rig):
    # After a Good SetSetpoint call the variable read the old value until the next
    # scan (up to ~1 s); after a Good Write it read the new one at once.
    async def fn(c: Client) -> tuple[ua.StatusCode, float, ua.StatusCode, float]:
        sp = c.get_node(rig.node_id("loop1_supply.setpoint"))
        ctl, mid = rig.node_id("Site/Controller"), rig.node_id("Site/Controller/SetSetpoint")
        req = ua.CallMethodRequest(ctl, mid, [_s("loop1_supply"), _d(33.5)])
        [called] = await c.uaclient.call([req])
        after_call = await sp.read_value()
        wv = ua.WriteValue(
            NodeId=sp.nodeid, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(_d(34.5))
        )
        [written] = await c.uaclient.write(ua.WriteParameters([wv]))
        return called.StatusCode, after_call, written, await sp.read_value()

    rig.publish_on_serve = False  # no scan comes meanwhile
    try:
        called, after_call, written, after_write = rig.client("olive", fn)
    finally:
        rig.publish_on_serve = True
    assert called.is_good() and written.is_good()
    assert (after_call, after_write) == (33.5, 34.5)
    rig.publish()  # and the next scan keeps it
    assert _value(rig, "loop1_supply.setpoint") == 34.5
