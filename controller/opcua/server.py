"""``OpcUaFace``: the asyncua server in its own thread and event loop.

The scan must never wait on OPC UA: ``publish`` only stores the snapshot and,
if none is pending, schedules its application on the server's loop (latest
wins: a server that falls behind skips to the newest scan instead of queueing
old ones). Commands from clients wait in the ``CommandBridge`` until the run
loop calls ``serve`` after its scan.

asyncua gives method callbacks no session; each external session's ``read``,
``write``, ``call`` and ``history_read`` are wrapped here to run with the
session's user in a context variable (``current_user``), so a method knows who
called it and ``UserExecutable`` / ``UserAccessLevel`` can answer per user.

Security (endpoint, policies, certificates, users) is ``security.secure``; alarm
events and variables ``alarms.AlarmFace``; history reads from thermogate's own
historian ``history.serve_history``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User
from asyncua.server.internal_server import InternalServer

from thermogate.plc.equipment import Site
from thermogate.plc.errors import ThermogateError
from thermogate.plc.pointmap import PointMap

from ..core.commands import Acknowledge, Command, CommandResult, Principal
from ..core.topology import Topology
from ..heap import freeze_startup
from ..historian import HistoryReader
from ..signals import FLAG_STALE
from .alarms import AlarmFace
from .bridge import CommandBridge, give
from .browse import MAX_CONTINUATION_POINTS, BrowsePages, install_browse_next
from .history import serve_history
from .idlegc import IdleCollector
from .methods import Commands
from .publishing import lock_publishing_to_scans
from .security import OpcUaSecurity, principal_of, secure
from .snapshot import Snapshot
from .space import Space, namespace_uri, status_codes
from .typed import data_value, node_id, status_code
from .wire import install_encoder

log = logging.getLogger(__name__)
T = TypeVar("T")

_user: ContextVar[User | None] = ContextVar("opcua_user", default=None)


def current_user() -> User | None:
    """The user of the OPC UA request being served (None outside a client's request)."""
    return _user.get()


def install_session_users(iserver: InternalServer) -> None:
    """Make every external session serve its requests with its user in ``current_user``,
    its Reads with the timestamps asked for, and its Browse in pages (``browse``)."""
    create = iserver.create_session

    def create_session(name: str, user: User = User(), external: bool = False) -> Any:  # noqa: B008
        session = create(name, user, external)
        if external:
            for attr in ("read", "write", "call", "history_read"):
                setattr(session, attr, _as_user(session, getattr(session, attr)))
            pages = BrowsePages(session.browse)
            for attr, serve in (
                ("read", _timestamps_as_asked(session.read)),
                ("browse", pages.browse),
                ("browse_next", pages.browse_next),
            ):
                setattr(session, attr, serve)
        return session

    iserver.create_session = create_session  # type: ignore[method-assign]


def _as_user(session: Any, service: Callable[[Any], Awaitable[T]]) -> Callable[[Any], Awaitable[T]]:
    async def serve(params: Any) -> T:
        token = _user.set(session.user)  # read now: activation may have changed it
        try:
            return await service(params)
        finally:
            _user.reset(token)

    return serve


def _timestamps_as_asked(
    read: Callable[[ua.ReadParameters], Awaitable[list[ua.DataValue]]],
) -> Callable[[ua.ReadParameters], Awaitable[list[ua.DataValue]]]:
    """A Read answers the timestamps the client asked for (Part 4, 5.10.2):
    Source, Server, Both or Neither, and a source timestamp only with the Value
    attribute. asyncua sends both with every attribute, whatever was asked."""

    async def serve(params: ua.ReadParameters) -> list[ua.DataValue]:
        results = await read(params)
        ask = params.TimestampsToReturn
        keep_server = ask in (ua.TimestampsToReturn.Server, ua.TimestampsToReturn.Both)
        keep_source = ask in (ua.TimestampsToReturn.Source, ua.TimestampsToReturn.Both)
        out = []
        for rv, dv in zip(params.NodesToRead, results, strict=True):
            source = keep_source and rv.AttributeId == ua.AttributeIds.Value
            if (dv.SourceTimestamp is None or source) and (
                dv.ServerTimestamp is None or keep_server
            ):
                out.append(dv)  # as stored: nothing to take off
                continue
            # a copy: the DataValue read is the address space's own
            out.append(
                dataclasses.replace(
                    dv,
                    SourceTimestamp=dv.SourceTimestamp if source else None,
                    SourcePicoseconds=dv.SourcePicoseconds if source else None,
                    ServerTimestamp=dv.ServerTimestamp if keep_server else None,
                    ServerPicoseconds=dv.ServerPicoseconds if keep_server else None,
                )
            )
        return out

    return serve


#: what the server object's ServerCapabilities say, where asyncua leaves them null;
#: 0 is Part 5's "no limit" (asyncua sets none but the message size)
_CAPABILITIES: tuple[tuple[int, object, ua.VariantType], ...] = (
    (ua.ObjectIds.Server_ServerCapabilities_LocaleIdArray, ["en"], ua.VariantType.String),
    # no conformance profile is claimed (asyncua 2.1's gaps: see the README)
    (ua.ObjectIds.Server_ServerCapabilities_ServerProfileArray, [], ua.VariantType.String),
    (ua.ObjectIds.Server_ServerCapabilities_MaxBrowseContinuationPoints, MAX_CONTINUATION_POINTS,
     ua.VariantType.UInt16),
    # history's continuation points are stateless (a time and a tag): any number
    (ua.ObjectIds.Server_ServerCapabilities_MaxHistoryContinuationPoints, 0, ua.VariantType.UInt16),
    (ua.ObjectIds.Server_ServerCapabilities_MaxArrayLength, 0, ua.VariantType.UInt32),
    (ua.ObjectIds.Server_ServerCapabilities_MaxStringLength, 0, ua.VariantType.UInt32),
    (ua.ObjectIds.Server_ServerCapabilities_MaxByteStringLength, 0, ua.VariantType.UInt32),
    *(
        (getattr(ua.ObjectIds, f"Server_ServerCapabilities_OperationLimits_{name}"), 0,
         ua.VariantType.UInt32)
        for name in (
            "MaxNodesPerRead", "MaxNodesPerWrite", "MaxNodesPerBrowse", "MaxNodesPerMethodCall",
            "MaxNodesPerHistoryReadData", "MaxNodesPerTranslateBrowsePathsToNodeIds",
            "MaxNodesPerRegisterNodes", "MaxMonitoredItemsPerCall",
        )
    ),
)  # fmt: skip


async def declare_capabilities(server: Server) -> None:
    """Fill in the ServerCapabilities asyncua leaves null (a client reading
    them, as a SCADA driver sizing its requests does, found no value)."""
    for oid, value, vtype in _CAPABILITIES:
        node = server.get_node(node_id(oid))
        await node.write_value(
            ua.DataValue(ua.Variant(value, vtype, is_array=isinstance(value, list)))
        )


# -- the face ------------------------------------------------------------------------------
class OpcUaFace:
    """See the module docstring."""

    def __init__(
        self,
        site: Site,
        pmap: PointMap,
        topo: Topology,
        sec: OpcUaSecurity,
        users_db: Path | str,
        reader_factory: Callable[[], HistoryReader] | None,
        *,
        command_timeout_s: float = 10.0,
        naive: bool = False,
        shutdown_notice_s: float = 0.0,
    ) -> None:
        """``sec``: endpoint and security; ``users_db``: the
        database with the users (and, beside it by default, the PKI);
        ``reader_factory``: opens the historian for history reads (None: none);
        ``shutdown_notice_s``: how long ServerState shows Shutdown before the
        server stops (0: it stops at once)."""
        self.shutdown_notice_s = shutdown_notice_s
        self.site, self.pmap, self.topo = site, pmap, topo
        self.sec, self.endpoint = sec, sec.endpoint
        self.users_db = Path(users_db)
        self.reader_factory = reader_factory
        #: apply snapshots the naive way, one ``write_attribute_value`` per point
        #: (``bench opcua``'s baseline; never in a run)
        self.naive = naive
        self.bridge = CommandBridge()
        self.command_timeout_s = command_timeout_s
        self.server: Server | None = None
        self.space: Space | None = None
        self.commands: Commands | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lines: list[str] = []
        self._error: BaseException | None = None
        self._latest: Snapshot | None = None
        self._scheduled = False
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._alarms: AlarmFace | None = None
        self._service_level = SERVICE_HEALTHY  # asyncua starts the node at 255
        self._gc: IdleCollector | None = None

    @property
    def applied(self) -> int:
        """Snapshots applied to the address space so far."""
        return 0 if self.space is None else self.space.applied

    @property
    def timings(self) -> list[tuple[float, float, float]]:
        """(scan time, apply started, changes flushed) of the latest applies."""
        return [] if self.space is None else list(self.space.timings)

    @property
    def gc_runs(self) -> list[tuple[int, float]]:
        """(generation, ms) of the latest collections run between snapshots."""
        return [] if self._gc is None else list(self._gc.runs)

    def start(self, timeout_s: float = 120.0) -> list[str]:
        """Start the server's thread; returns lines describing the endpoint to print."""
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ThermogateError(f"the OPC UA server did not start within {timeout_s:g} s")
        if self._error is not None:
            raise ThermogateError(f"the OPC UA server did not start: {self._error}")
        return list(self._lines)

    def publish(self, snapshot: Snapshot) -> None:
        """Hand a scan's snapshot over (O(1), never blocks; the latest wins)."""
        self._latest = snapshot
        loop, wake = self._loop, self._wake
        if self._scheduled or loop is None or wake is None:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the face is stopping
            loop.call_soon_threadsafe(wake.set)

    def serve(self, give: Callable[[Command, Principal], CommandResult]) -> int:
        """Run-loop side: give the commands clients sent (see ``CommandBridge.serve``)."""
        return self.bridge.serve(give)

    def run(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the server's loop (for integration and tests)."""
        if self._loop is None:
            raise ThermogateError("the OPC UA server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the server's thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(); logged once running
            if self._ready.is_set():
                log.exception("the OPC UA server failed")
            self._error = exc
        finally:
            self._loop = None
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        server = self.server = Server()
        await server.init()
        server.set_server_name(f"thermogate: {self.site.name}")
        server.product_uri = "urn:thermogate"
        await server.set_build_info(
            "urn:thermogate", "thermogate", "thermogate", _version(), _version(), datetime.now(UTC)
        )
        strict_republish(server.iserver)
        strict_call(server.iserver)
        install_browse_next()
        await declare_capabilities(server)
        if not self.naive:  # the baseline runs asyncua's own cycle and encoder
            lock_publishing_to_scans()
            install_encoder()
        # asyncua logs a warning per sample per item for a percent deadband it ignores
        logging.getLogger("asyncua.server.monitored_item_service").setLevel(logging.ERROR)
        lines = await secure(server, self.sec, self.users_db)
        install_session_users(server.iserver)
        space = self.space = Space(server, self.site, self.pmap, self.topo)
        await space.build()
        self.commands = Commands(self.bridge, principal_of, current_user, self.command_timeout_s)
        await self.commands.setup(server, space)
        self._alarms = AlarmFace()
        await self._alarms.setup(
            server,
            space.idx,
            server.get_node(space.alarms),
            self._acknowledge,
            principal_for_call=lambda: principal_of(current_user()),
        )
        if self.reader_factory is not None:
            serve_history(server, self.reader_factory, space.historized)
        # asyncua logs its own traceback before raising (a port in use, say): the
        # error is said once, in one line naming the endpoint and its key
        quiet = logging.getLogger("asyncua.server.server")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await server.start()
        except OSError as exc:
            raise ThermogateError(
                f"cannot listen on {self.sec.endpoint} ({exc.strerror or exc}): "
                "[opcua] endpoint in the run configuration"
            ) from None
        finally:
            quiet.setLevel(level)
        # the address space lives as long as the server: out of the collector's sight,
        # or each full collection walks its million objects again (~1 s, a scan's
        # changes held up meanwhile; bench opcua's worst latency)
        freeze_startup()
        if not self.naive:  # the baseline keeps asyncua's (and CPython's) own ways
            self._gc = IdleCollector(self._loop, lambda: self._scheduled)
            self._gc.install()
        try:
            n = len(self.pmap)
            self._lines = [
                f"OPC UA:   {self.endpoint} ({n} points, namespace {namespace_uri(self.site)})",
                *(f"          {x.strip()}" for x in lines),
            ]
            self._ready.set()
            consumer = asyncio.create_task(self._consume())
            await self._stop.wait()
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        finally:
            if self._gc is not None:
                self._gc.uninstall()
            if self.shutdown_notice_s > 0:
                with contextlib.suppress(Exception):  # the stop must never fail on it
                    await announce_shutdown(server, self.shutdown_notice_s)
            await server.stop()

    async def _acknowledge(self, key: str | None, by: Principal) -> CommandResult:
        cmd = Acknowledge(key, "OPC UA acknowledge")
        return await give(self.bridge, cmd, by, self.command_timeout_s)

    async def _apply_naively(self, snap: Snapshot) -> None:
        """Every point through asyncua's public write, one by one (the baseline)."""
        assert self.server is not None and self.space is not None
        t_start = time.time()
        ts = datetime.fromtimestamp(snap.t, UTC)
        codes = status_codes(snap.quality, snap.flags, snap.values)
        for k, (nid, x, c, bit) in enumerate(
            zip(
                self.space.point_nodes,
                snap.values.tolist(),
                codes.tolist(),
                self.space.bits,
                strict=True,
            )
        ):
            if k % 1000 == 999:
                await asyncio.sleep(0)  # let clients be served meanwhile
            if c >= 0x80000000:
                var = ua.Variant(None)
            elif bit:
                var = ua.Variant(x >= 0.5, ua.VariantType.Boolean)
            else:
                var = ua.Variant(float(x), ua.VariantType.Double)
            dv = data_value(var, ua.StatusCode(c), SourceTimestamp=ts)
            await self.server.write_attribute_value(nid, dv)
        self.space.applied += 1
        self.space.timings.append((snap.t, t_start, time.time()))

    async def _say_service_level(self, level: int) -> None:
        """Server.ServiceLevel, written when it changes (see :func:`service_level`)."""
        if level == self._service_level or self.server is None:
            return
        self._service_level = level
        await self.server.write_attribute_value(
            node_id(ua.ObjectIds.Server_ServiceLevel),
            data_value(ua.Variant(level, ua.VariantType.Byte)),
        )

    async def _consume(self) -> None:
        """Apply the newest snapshot whenever one was published."""
        assert self._wake is not None and self.space is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._scheduled = False  # before taking it: a newer one schedules again
            snap = self._latest
            if snap is None:
                continue
            try:
                # before the values: once a snapshot counts as applied, so is its level
                await self._say_service_level(service_level(snap))
                if self.naive:
                    await self._apply_naively(snap)
                else:
                    await self.space.apply(snap)
                if self._alarms is not None:
                    await self._alarms.update(snap.t, snap.alarms)
                if self._gc is not None:
                    self._gc.applied()
            except Exception:  # one bad snapshot must not end the face
                log.exception("applying a snapshot to the OPC UA address space failed")


#: Server.ServiceLevel's ranges (OPC UA Part 4 §6.6.2.4.2): healthy, degraded
#: (some data unavailable), no data (the server cannot give what it serves)
SERVICE_HEALTHY, SERVICE_DEGRADED, SERVICE_NO_DATA = 255, 100, 1


def service_level(snap: Snapshot) -> int:
    """How much of what it serves the server can give: no data when no point was
    read (every device silent, or the controller not scanning: its last snapshot
    is shown stale), degraded when some were not, healthy otherwise. A client
    (or a redundant pair's failover) reads it without browsing 500 statuses."""
    stale = (snap.flags & FLAG_STALE) != 0
    if stale.all():
        return SERVICE_NO_DATA
    return SERVICE_DEGRADED if stale.any() else SERVICE_HEALTHY


async def announce_shutdown(server: Server, notice_s: float) -> None:
    """ServerState Shutdown, SecondsTillShutdown and ShutdownReason (Part 5
    ServerStatus), held for ``notice_s``: a client sees the server going, in a
    read or its subscription's next cycle, before the connection drops."""
    status = copy.copy(
        await server.get_node(node_id(ua.ObjectIds.Server_ServerStatus)).read_value()
    )
    status.State = ua.ServerState.Shutdown
    status.SecondsTillShutdown = math.ceil(notice_s)
    status.ShutdownReason = ua.LocalizedText("the controller is stopping")
    parts: list[tuple[int, ua.Variant]] = [
        (ua.ObjectIds.Server_ServerStatus, ua.Variant(status, ua.VariantType.ExtensionObject)),
        (
            ua.ObjectIds.Server_ServerStatus_State,
            ua.Variant(ua.ServerState.Shutdown, ua.VariantType.Int32),
        ),
        (
            ua.ObjectIds.Server_ServerStatus_SecondsTillShutdown,
            ua.Variant(status.SecondsTillShutdown, ua.VariantType.UInt32),
        ),
        (
            ua.ObjectIds.Server_ServerStatus_ShutdownReason,
            ua.Variant(status.ShutdownReason, ua.VariantType.LocalizedText),
        ),
    ]
    for oid, variant in parts:
        await server.write_attribute_value(node_id(oid), data_value(variant))
    await asyncio.sleep(notice_s)


def strict_republish(iserver: InternalServer) -> None:
    """Answer a Republish asyncua cannot serve as the spec says (asyncua answers an
    empty Good message, and a client such as node-opcua then asks again, ~1,000
    times a second, instead of recreating its subscription after a restart)."""
    subs = iserver.subscription_service

    def republish(params: ua.RepublishParameters) -> ua.NotificationMessage:
        sub = subs.subscriptions.get(params.SubscriptionId)
        if sub is None:
            raise ServiceError(ua.StatusCodes.BadSubscriptionIdInvalid)
        if params.RetransmitSequenceNumber not in sub._not_acknowledged_results:
            raise ServiceError(ua.StatusCodes.BadMessageNotAvailable)
        return sub.republish(params.RetransmitSequenceNumber)

    subs.republish = republish  # type: ignore[method-assign]


def strict_call(iserver: InternalServer) -> None:
    """Answer a Call on a node or method the server does not have as Part 4 says:
    BadNodeIdUnknown for the object, BadMethodInvalid for the method. asyncua
    answers BadNodeIdInvalid to both (the NodeId is well formed, only unknown), and
    BadNothingToDo to a Method it has no implementation of (Confirm on an alarm,
    whose objects are not instances of the condition types).

    asyncua also calls a method on any object at all (SetSetpoint on the Site
    object, the Server object or a variable ran and changed the setpoint). Part 4
    (5.11.2): the method must be a component of the object; a method that is not
    is BadMethodInvalid. A method an ObjectType defines (Acknowledge on a condition,
    ConditionRefresh on the Server object) is left to its own implementation, which
    checks the object itself."""
    service, aspace = iserver.method_service, iserver.aspace
    call = service._call

    async def call_one(method: ua.CallMethodRequest) -> ua.CallMethodResult:
        if method.ObjectId not in aspace:
            code = ua.StatusCodes.BadNodeIdUnknown
        elif not _callable_on(aspace, method.ObjectId, method.MethodId):
            code = ua.StatusCodes.BadMethodInvalid
        else:
            return await call(method)
        return ua.CallMethodResult(StatusCode=status_code(code))

    service._call = call_one  # type: ignore[method-assign]


#: HasComponent and its subtype HasOrderedComponent
_COMPONENT = (node_id(ua.ObjectIds.HasComponent), node_id(ua.ObjectIds.HasOrderedComponent))


def _callable_on(aspace: Any, obj: ua.NodeId, method: ua.NodeId) -> bool:
    """Whether ``method`` is there, implemented, and ``obj``'s (or a type's) to call."""
    if method not in aspace or aspace[method].call is None:
        return False
    return _of_a_type(aspace, method) or _has_component(aspace, obj, method)


def _has_component(aspace: Any, source: ua.NodeId, target: ua.NodeId) -> bool:
    """Whether ``source`` references ``target`` with HasComponent (forward)."""
    return any(
        r.IsForward and r.ReferenceTypeId in _COMPONENT and r.NodeId == target
        for r in aspace[source].references
    )


def _of_a_type(aspace: Any, method: ua.NodeId) -> bool:
    """Whether ``method`` is a component of an ObjectType (a type-level method)."""
    for r in aspace[method].references:
        if r.IsForward or r.ReferenceTypeId not in _COMPONENT or r.NodeId not in aspace:
            continue
        cls = aspace[r.NodeId].attributes.get(ua.AttributeIds.NodeClass)
        if cls is not None and cls.value.Value.Value == ua.NodeClass.ObjectType:
            return True
    return False


def _version() -> str:
    try:
        return metadata.version("thermogate")
    except metadata.PackageNotFoundError:
        return "unknown"


def free_endpoint(host: str = "127.0.0.1") -> str:
    """An endpoint URL on a free port of ``host`` (tests and benches: endpoint
    descriptions must carry the port clients connect to, known before binding)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"opc.tcp://{host}:{port}/thermogate/"
