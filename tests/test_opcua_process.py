"""The OPC UA server in its own process, as ``thermogate run`` starts it.

The run loop's side (``OpcUaProcess``) publishes snapshots and serves commands
between scans; the server is a real asyncua server in a spawned process; the
clients are real asyncua clients over TCP.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asyncua import Client, ua
from opcua_rig import USERS, login, make_client

from thermogate.controller.core import Controller
from thermogate.controller.core.commands import Command, CommandResult, Principal
from thermogate.controller.opcua.process import OpcUaProcess
from thermogate.controller.opcua.security import OpcUaSecurity
from thermogate.controller.opcua.server import free_endpoint
from thermogate.controller.opcua.snapshot import Snapshot
from thermogate.controller.opcua.space import namespace_uri
from thermogate.controller.users import UserStore


@pytest.fixture(scope="module")
def served(site, demo_pmap, tmp_path_factory):
    yield from _served(site, demo_pmap, tmp_path_factory, 10.0)


@pytest.fixture(scope="module")
def impatient(site, demo_pmap, tmp_path_factory):
    """Commands withdrawn after 1 s (a run loop that is not scanning)."""
    yield from _served(site, demo_pmap, tmp_path_factory, 1.0)


def _served(site, demo_pmap, tmp_path_factory, command_timeout_s: float):
    root = tmp_path_factory.mktemp("process")
    db = root / "site.db"
    with UserStore(db) as users:
        for name, (role, pw) in USERS.items():
            users.add(name, role, pw, by="test")
    keys = make_client(root / "client", "scada")
    (root / "pki" / "trusted").mkdir(parents=True)
    (root / "pki" / "trusted" / "scada.der").write_bytes(keys.cert.read_bytes())
    sec = OpcUaSecurity(
        endpoint=free_endpoint(),
        policies=("Basic256Sha256_SignAndEncrypt", "None"),
        pki_dir=root / "pki",
        anonymous="read",
    )
    face = OpcUaProcess(site, sec, db, history=False, command_timeout_s=command_timeout_s)
    lines = face.start()
    ctrl = Controller(site, demo_pmap)
    yield face, ctrl, keys, root, lines
    face.stop()


async def _connected(face, keys, root, user: str | None) -> Client:
    """A client connected to ``face``: anonymous over None, or ``user`` logged in."""
    c = Client(face.endpoint, timeout=10)
    if user is not None:
        await login(c, keys, root / "pki", user)
    await c.connect()
    return c


def _set_mode(idx: int, mode: str, why: str) -> ua.CallMethodRequest:
    return ua.CallMethodRequest(
        ua.NodeId("Site/Controller", idx),
        ua.NodeId("Site/Controller/SetMode", idx),
        [ua.Variant(mode, ua.VariantType.String), ua.Variant(why)],
    )


def test_it_prints_its_endpoint_and_shows_what_the_run_loop_publishes(served, site):
    face, ctrl, keys, root, lines = served
    assert face.endpoint in lines[0]
    snap = Snapshot.of(ctrl, 1_700_000_000.0)
    values = snap.values.copy()
    i = ctrl.pmap.position("tank01.fluid_temp")
    values[i] = 41.5
    quality = snap.quality.copy()
    quality[i] = 0
    face.publish(Snapshot(**{**snap.__dict__, "values": values, "quality": quality}))

    async def read() -> tuple[float, bool]:
        c = await _connected(face, keys, root, None)
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            node = c.get_node(ua.NodeId("tank01.fluid_temp", idx))
            for _ in range(200):  # the server applies it in its own time
                dv = await node.read_data_value()
                if dv.Value.Value == 41.5:
                    return dv.Value.Value, dv.StatusCode.is_good()
                await asyncio.sleep(0.05)
            return dv.Value.Value, dv.StatusCode.is_good()
        finally:
            await c.disconnect()

    assert asyncio.run(read()) == (41.5, True)


def test_a_method_call_waits_for_the_run_loop_and_is_given_as_opcua_user(served, site):
    face, ctrl, keys, root, _ = served
    given: list[tuple[Command, Principal]] = []

    def give(cmd: Command, by: Principal) -> CommandResult:
        given.append((cmd, by))
        return ctrl.command(cmd, by, time.time())

    stop = threading.Event()

    def run_loop() -> None:  # serves between "scans", as RealTimeController.after_scan
        while not stop.is_set():
            face.serve(give)
            time.sleep(0.02)

    loop = threading.Thread(target=run_loop, daemon=True)
    loop.start()

    async def call() -> ua.CallMethodResult:
        c = await _connected(face, keys, root, "olive")
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            return (await c.uaclient.call([_set_mode(idx, "manual", "pump swap")]))[0]
        finally:
            await c.disconnect()

    try:
        res = asyncio.run(call())
    finally:
        stop.set()
        loop.join(5)
    assert res.StatusCode.is_good(), res
    assert ctrl.state.mode == "manual"
    assert [(type(c).__name__, p.origin) for c, p in given] == [("SetMode", "opcua:olive")]


def test_values_no_scan_refreshes_go_bad_and_come_back_with_the_next_scan(served, site):
    """With the controller frozen (SIGSTOP), SCADA read 2.5 MW of Good load for
    36 s while the plant sat in its safe state at 0.6 MW."""
    from thermogate.controller.opcua.process import STALE_MIN_S

    face, ctrl, keys, root, _ = served
    i = ctrl.pmap.position("site.power_kw")

    def publish(kw: float) -> None:
        snap = Snapshot.of(ctrl, time.time())
        values, quality = snap.values.copy(), snap.quality.copy()
        values[i], quality[i] = kw, 0
        face.publish(Snapshot(**{**snap.__dict__, "values": values, "quality": quality}))

    async def watch() -> list[tuple[float | None, str]]:
        c = await _connected(face, keys, root, None)
        seen: list[tuple[float | None, str]] = []
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            node = c.get_node(ua.NodeId("site.power_kw", idx))

            async def until(good: bool, value: float | None, within: float) -> None:
                t0 = time.monotonic()
                while time.monotonic() - t0 < within:
                    dv = await node.read_data_value(raise_on_bad_status=False)
                    same = value is None or dv.Value.Value == value
                    if dv.StatusCode.is_good() == good and same:
                        seen.append((dv.Value.Value, dv.StatusCode.name))
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"not {'Good' if good else 'Bad'} within {within} s")

            publish(2477.8)
            await until(True, 2477.8, 10.0)
            await until(False, None, STALE_MIN_S + 5.0)  # no scan: stale, not Good
            publish(610.0)
            await until(True, 610.0, 10.0)
        finally:
            await c.disconnect()
        return seen

    seen = asyncio.run(watch())
    assert seen == [(2477.8, "Good"), (None, "BadCommunicationError"), (610.0, "Good")]


def test_a_command_not_taken_in_time_is_refused_and_never_applied_when_the_loop_wakes(
    impatient, site
):
    """A SetMode sent while the controller was frozen answered Good 43 s later and
    was applied; a write timed out at the client and was applied 20 s after."""
    face, ctrl, keys, root, _ = impatient
    audits: list = []
    face.audit = audits.append

    async def call() -> tuple[ua.CallMethodResult, float]:
        c = await _connected(face, keys, root, "olive")
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            t0 = time.monotonic()
            res = (await c.uaclient.call([_set_mode(idx, "maintenance", "frozen")]))[0]
            return res, time.monotonic() - t0
        finally:
            await c.disconnect()

    res, waited = asyncio.run(call())  # nobody serves: the run loop is "frozen"
    assert res.StatusCode.value == ua.StatusCodes.BadTimeout, res
    assert waited < 10.0  # the command's 1 s and the answer's grace, not for ever
    given: list = []
    for _ in range(50):  # the run loop wakes: the command is there, past its deadline
        face.serve(lambda cmd, by: given.append(cmd) or ctrl.command(cmd, by, time.time()))
        if audits:
            break
        time.sleep(0.05)
    assert given == [] and ctrl.state.mode == "auto"
    [a] = audits
    assert (a.who, a.where, a.ok) == ("olive", "opcua", False) and "withdrawn" in a.why


def test_a_write_of_many_setpoints_is_given_at_one_scan_and_reads_back_at_once(served, site):
    """One Write of 20 setpoints took 20 scans (19 s); a read right after a Good
    write showed the old value until the next scan."""
    face, ctrl, keys, root, _ = served
    loops = [c for c in site.control_loops if c.name.endswith("_fluid")][:3] or list(
        site.control_loops[:3]
    )
    per_serve: list[int] = []
    stop = threading.Event()

    def run_loop() -> None:  # a slow scan: commands are served once a second
        while not stop.is_set():
            n = face.serve(lambda cmd, by: ctrl.command(cmd, by, time.time()))
            if n:
                per_serve.append(n)
            time.sleep(1.0)

    loop = threading.Thread(target=run_loop, daemon=True)
    loop.start()

    async def write_and_read() -> tuple[list, list]:
        c = await _connected(face, keys, root, "olive")
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            nodes = [ua.NodeId(f"{lp.name}.setpoint", idx) for lp in loops]
            params = ua.WriteParameters()
            for nid, lp in zip(nodes, loops, strict=True):
                wv = ua.WriteValue()
                wv.NodeId, wv.AttributeId = nid, ua.AttributeIds.Value
                wv.Value = ua.DataValue(ua.Variant(lp.setpoint - 1.0, ua.VariantType.Double))
                params.NodesToWrite.append(wv)
            codes = await c.uaclient.write(params)
            read = [await c.get_node(n).read_value() for n in nodes]
            return codes, read
        finally:
            await c.disconnect()

    try:
        codes, read = asyncio.run(write_and_read())
    finally:
        stop.set()
        loop.join(5)
    assert all(cd.is_good() for cd in codes), codes
    assert per_serve == [len(loops)]  # all given at the same scan, in one go
    assert read == [lp.setpoint - 1.0 for lp in loops]


def test_stopping_ends_the_server_process(site, tmp_path):
    sec = OpcUaSecurity(
        endpoint=free_endpoint(), policies=("None",), pki_dir=tmp_path / "pki", anonymous="read"
    )
    face = OpcUaProcess(site, sec, tmp_path / "site.db", history=False)
    face.start()
    proc = face._proc
    assert proc is not None and proc.is_alive()
    face.stop()
    assert not proc.is_alive()


def test_a_port_in_use_is_one_line_naming_the_endpoint_and_its_key(site, tmp_path, capfd):
    # It said "did not start: the OPC UA server did not start: [Errno 98] ..." after
    # asyncua's own traceback, naming neither the endpoint nor the key.
    import socket
    from urllib.parse import urlsplit

    from thermogate.plc.errors import ThermogateError

    endpoint = free_endpoint()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", urlsplit(endpoint).port))
    holder.listen()
    try:
        sec = OpcUaSecurity(
            endpoint=endpoint, policies=("None",), pki_dir=tmp_path / "pki", anonymous="read"
        )
        face = OpcUaProcess(site, sec, tmp_path / "site.db", history=False)
        with pytest.raises(ThermogateError) as info:
            face.start()
    finally:
        holder.close()
    said = str(info.value)
    assert said.count("did not start") == 1 and "\n" not in said, said
    assert f"cannot listen on {endpoint}" in said and "[opcua] endpoint" in said
    assert "Traceback" not in capfd.readouterr().err


def test_a_wrong_typed_write_or_argument_is_refused_and_audited(served, site):
    """Refusals made before a command could be built (a String written to a
    setpoint, a str argument for a Double) left no trace; the command path's own
    refusals are audited."""
    face, ctrl, keys, root, _ = served
    audits: list = []
    face.audit = audits.append
    lp = site.control_loops[0]
    stop = threading.Event()

    def run_loop() -> None:
        while not stop.is_set():
            face.serve(lambda cmd, by: ctrl.command(cmd, by, time.time()))
            time.sleep(0.05)

    loop = threading.Thread(target=run_loop, daemon=True)
    loop.start()

    async def refused() -> tuple[ua.StatusCode, ua.StatusCode, ua.StatusCode]:
        c = await _connected(face, keys, root, "olive")
        try:
            idx = await c.get_namespace_index(namespace_uri(site))
            wv = ua.WriteValue()
            wv.NodeId, wv.AttributeId = ua.NodeId(f"{lp.name}.setpoint", idx), 13
            wv.Value = ua.DataValue(ua.Variant("hot", ua.VariantType.String))
            [written] = await c.uaclient.write(ua.WriteParameters(NodesToWrite=[wv]))
            # a number, but a Float: not the variable's Double (no conversion, Part 4)
            wv.Value = ua.DataValue(ua.Variant(31.0, ua.VariantType.Float))
            [floated] = await c.uaclient.write(ua.WriteParameters(NodesToWrite=[wv]))
            req = ua.CallMethodRequest(
                ua.NodeId("Site/Controller", idx),
                ua.NodeId("Site/Controller/OverrideActuator", idx),
                [ua.Variant("tank01.valve_cmd"), ua.Variant("half"), ua.Variant(60.0)],
            )
            [called] = await c.uaclient.call([req])
            return written, floated, called.StatusCode
        finally:
            await c.disconnect()

    held = ctrl.state.setpoints.get(lp.name)  # another test may have set it
    try:
        written, floated, called = asyncio.run(refused())
        for _ in range(100):
            if len(audits) >= 3:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(5)
    assert written.value == floated.value == ua.StatusCodes.BadTypeMismatch
    assert called.value == ua.StatusCodes.BadInvalidArgument
    got = sorted((a.who, a.target, a.ok) for a in audits)
    assert got == sorted(
        [
            ("olive", f"{lp.name}.setpoint", False),
            ("olive", f"{lp.name}.setpoint", False),
            ("olive", "opcua.OverrideActuator", False),
        ]
    ), audits
    assert any("a Float written where a Double is wanted" in a.why for a in audits)
    assert ctrl.state.setpoints.get(lp.name) == held
    assert all(a.why.startswith("refused: ") for a in audits)
