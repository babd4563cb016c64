"""HistoryRead raw over OPC UA, served from thermogate's own historian: real scans in a
real SQLite historian, a real asyncua server and client over TCP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, Server, ua

from thermogate.controller.historian import Historian, HistoryReader
from thermogate.controller.opcua.history import HistorianStorage, serve_history

T0 = 1_700_000_000.0
NAMES = ["loop1.supply_temp", "tank01.leak"]
N = 30
QUALITY = [0, 1, 2]  # scan i of the temperature has quality QUALITY[i % 3]
STATUS = {
    0: ua.StatusCodes.Good,
    1: ua.StatusCodes.Uncertain,
    2: ua.StatusCodes.Bad,
}


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N scans, one a second from T0: the temperature 30 + i/10, the leak bit on
    from scan 20."""
    path = tmp_path_factory.mktemp("opcua_history") / "hist.db"
    with Historian(path, NAMES, site_name="Hall A", batch_s=0.05) as h:
        for i in range(N):
            values = np.array([30.0 + i / 10, 1.0 if i >= 20 else 0.0])
            h.record_scan(T0 + i, values, np.array([QUALITY[i % 3], 0], np.uint8))
        h.flush(timeout=30.0)
    return path


@dataclass
class Served:
    """One server for the module, in its own thread and event loop (as the face runs)."""

    url: str
    nodes: dict[str, ua.NodeId]
    server: Server
    storage: HistorianStorage
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60.0)


async def _start(db: Path, loop: asyncio.AbstractEventLoop) -> Served:
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/thermogate")
    idx = await server.register_namespace("urn:thermogate:test")
    folder = await server.nodes.objects.add_folder(ua.NodeId("Site", idx), "Site")
    temp = await folder.add_variable(
        ua.NodeId("loop1.supply_temp", idx), "supply_temp", ua.Variant(0.0, ua.VariantType.Double)
    )
    leak = await folder.add_variable(
        ua.NodeId("tank01.leak", idx), "leak", ua.Variant(False, ua.VariantType.Boolean)
    )
    missing = await folder.add_variable(
        ua.NodeId("not.recorded", idx), "not_recorded", ua.Variant(0.0, ua.VariantType.Double)
    )
    nodes = {
        "temp": temp.nodeid,
        "leak": leak.nodeid,
        "missing": missing.nodeid,
        "site": folder.nodeid,
    }
    serve_history(
        server,
        lambda: HistoryReader(db, "Hall A"),
        {temp.nodeid: NAMES[0], leak.nodeid: NAMES[1], missing.nodeid: "not.recorded"},
    )
    await server.start()
    url = f"opc.tcp://127.0.0.1:{server.bserver.port}/thermogate"
    storage = server.iserver.history_manager.storage
    assert isinstance(storage, HistorianStorage)
    return Served(url, nodes, server, storage, loop)


@contextlib.contextmanager
def _serving(db: Path) -> Iterator[Served]:
    """A server of ``db``'s history in its own thread and loop, stopped after."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="opcua", daemon=True)
    thread.start()
    try:
        s = asyncio.run_coroutine_threadsafe(_start(db, loop), loop).result(120.0)
        try:
            yield s
        finally:
            s.call(s.server.stop())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        loop.close()


@pytest.fixture(scope="module")
def served(db: Path) -> Iterator[Served]:
    with _serving(db) as s:
        yield s


async def read_page(
    client: Client,
    nodeid: ua.NodeId,
    start: datetime | None,
    end: datetime | None,
    n: int,
    cont: bytes | None = None,
    bounds: bool = False,
) -> tuple[list[ua.DataValue], bytes | None]:
    """One HistoryRead raw page (None: the time not specified)."""
    details = ua.ReadRawModifiedDetails(
        IsReadModified=False,
        StartTime=start or ua.get_win_epoch(),
        EndTime=end or ua.get_win_epoch(),
        NumValuesPerNode=n,
        ReturnBounds=bounds,
    )
    res = await client.get_node(nodeid).history_read(details, cont)
    res.StatusCode.check()
    return res.HistoryData.DataValues, res.ContinuationPoint


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_raw_history_returns_the_historians_scans_in_order_with_their_quality(
    served: Served,
) -> None:
    async def scenario() -> None:
        nodes = served.nodes
        async with Client(served.url) as client:
            temp = client.get_node(nodes["temp"])
            assert await temp.read_attribute(ua.AttributeIds.Historizing) is not None
            assert (await temp.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
            level = (await temp.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
            assert level & (1 << ua.AccessLevel.HistoryRead)
            assert level & (1 << ua.AccessLevel.CurrentRead)  # what it had stays

            # (asyncua's client asks for the bounds: here the values at both times)
            got = await temp.read_raw_history(utc(T0 + 5), utc(T0 + 14))
            assert [dv.SourceTimestamp.timestamp() for dv in got] == [T0 + i for i in range(5, 15)]
            assert [dv.Value.Value for dv in got] == pytest.approx(
                [30 + i / 10 for i in range(5, 15)]
            )
            assert [dv.StatusCode.value for dv in got] == [
                STATUS[QUALITY[i % 3]] for i in range(5, 15)
            ]

            leak = await client.get_node(nodes["leak"]).read_raw_history(utc(T0 + 18), utc(T0 + 21))
            assert [dv.Value.Value for dv in leak] == [False, False, True, True]
            assert {dv.Value.VariantType for dv in leak} == {ua.VariantType.Boolean}

            back = await temp.read_raw_history(utc(T0 + 14), utc(T0 + 5))  # start > end
            assert [dv.SourceTimestamp.timestamp() for dv in back] == [
                T0 + i for i in range(14, 4, -1)
            ]

    run(scenario())


def test_num_values_limits_a_page_and_its_continuation_point_reads_the_rest(
    served: Served,
) -> None:
    async def scenario() -> None:
        nodes = served.nodes
        async with Client(served.url) as client:
            node = nodes["temp"]
            for start, end, want in (  # (the end time is not part of the read)
                (T0 + 3, T0 + 14, list(range(3, 14))),
                (T0 + 13, T0 + 2, list(range(13, 2, -1))),  # backward, newest first
            ):
                seen: list[float] = []
                values, cont = await read_page(client, node, utc(start), utc(end), 4)
                pages = 1
                seen += [dv.SourceTimestamp.timestamp() for dv in values]
                assert len(values) == 4 and cont is not None
                while cont is not None:
                    values, cont = await read_page(client, node, utc(start), utc(end), 4, cont)
                    seen += [dv.SourceTimestamp.timestamp() for dv in values]
                    pages += 1
                assert seen == [T0 + i for i in want]
                assert pages == 3  # 4 + 4 + 3

            # the client's own read: the first NumValuesPerNode only
            got = await client.get_node(node).read_raw_history(utc(T0), utc(T0 + N), numvalues=7)
            assert [dv.SourceTimestamp.timestamp() for dv in got] == [T0 + i for i in range(7)]

    run(scenario())


def test_a_long_read_comes_in_pages_the_client_follows(served: Served) -> None:
    async def scenario() -> None:
        nodes = served.nodes
        async with Client(served.url) as client:
            node = nodes["temp"]
            values, cont = await read_page(client, node, utc(T0), utc(T0 + N), 0)
            assert len(values) == 8 and cont is not None  # the server's page size
            got = await client.get_node(node).read_raw_history(
                utc(T0 - 60), utc(T0 + 3600), return_bounds=False
            )
            assert [dv.SourceTimestamp.timestamp() for dv in got] == [T0 + i for i in range(N)]

    served.storage.max_history_data_response_size = 8  # the server's page size
    try:
        run(scenario())
    finally:
        served.storage.max_history_data_response_size = 10_000


def test_a_time_range_without_scans_or_a_point_never_recorded_reads_empty(
    served: Served,
) -> None:
    async def scenario() -> None:
        nodes = served.nodes
        async with Client(served.url) as client:
            temp = client.get_node(nodes["temp"])
            for a, b in ((T0 - 3600, T0 - 1), (T0 + N + 1, T0 + N + 3600)):
                assert await temp.read_raw_history(utc(a), utc(b), return_bounds=False) == []
            missing = client.get_node(nodes["missing"])
            assert await missing.read_raw_history(utc(T0), utc(T0 + N), return_bounds=False) == []

    run(scenario())


def test_the_storage_stores_nothing_and_refuses_a_node_that_is_not_a_variable(
    served: Served, db: Path
) -> None:
    with pytest.raises(ValueError, match="is not a variable"):
        serve_history(served.server, lambda: HistoryReader(db), {served.nodes["site"]: NAMES[0]})
    served.call(served.storage.save_node_value(served.nodes["temp"], ua.DataValue(ua.Variant(1.0))))
    with HistoryReader(db) as reader:
        assert reader.query('SELECT count(*) AS n FROM "telemetry_0"') == [{"n": N}]


def test_a_point_the_historian_gains_later_is_read_through_a_reopened_reader(
    tmp_path: Path,
) -> None:
    path = tmp_path / "grows.db"
    with Historian(path, ["a"], batch_s=0.05) as h:
        h.record_scan(T0, np.array([1.0]), np.array([0], np.uint8))
        h.flush(timeout=30.0)
    storage = HistorianStorage(lambda: HistoryReader(path))
    node = ua.NodeId("b", 2)
    storage.nodes[node] = ("b", ua.VariantType.Double)

    async def read() -> list[ua.DataValue]:
        values, cont = await storage.read_node_history(node, utc(T0), utc(T0 + 10), 0)
        assert cont is None
        return values

    assert run(read()) == []  # not (yet) a point of the historian
    with Historian(path, ["a", "b"], batch_s=0.05) as h:  # a new point: the schema grows
        h.record_scan(T0 + 1, np.array([2.0, 20.0]), np.array([0, 1], np.uint8))
        h.flush(timeout=30.0)
    before, got = run(read())
    assert (got.Value.Value, got.StatusCode.value) == (20.0, ua.StatusCodes.Uncertain)
    # the scan before the point existed: no value, never Good
    assert (before.Value.Value, before.StatusCode.value) == (None, ua.StatusCodes.Bad)
    run(storage.stop())


def test_a_node_without_history_is_refused_with_the_specs_code_not_an_empty_good(
    served: Served,
) -> None:
    async def scenario() -> tuple[int, int]:
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False, StartTime=utc(T0), EndTime=utc(T0 + N), NumValuesPerNode=0
        )
        async with Client(served.url) as client:
            server_state = client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State))
            plain = await server_state.history_read(details)
            unknown = await client.get_node(ua.NodeId("no.such.point", 7)).history_read(details)
            return plain.StatusCode.value, unknown.StatusCode.value

    assert run(scenario()) == (
        ua.StatusCodes.BadHistoryOperationUnsupported,
        ua.StatusCodes.BadNodeIdUnknown,
    )


def test_a_continuation_point_not_handed_out_for_the_node_is_invalid(served: Served) -> None:
    # asyncua took any 8 bytes as a time to read on from, and failed the whole
    # service on anything shorter (BadInternalError, a traceback in the log).
    async def scenario() -> list[int]:
        nodes = served.nodes
        async with Client(served.url) as client:
            _, cont = await read_page(client, nodes["temp"], utc(T0), utc(T0 + N), 4)
            assert cont is not None
            codes = []
            for bad in (
                b"x",
                b"\x00" * 8,
                b"\xff" * 8,
                cont[:8],  # the bare time, as asyncua's own point
                cont[:-1] + bytes([cont[-1] ^ 1]),
                cont + b"\x00",
            ):
                res = await client.get_node(nodes["temp"]).history_read(
                    ua.ReadRawModifiedDetails(
                        IsReadModified=False,
                        StartTime=utc(T0),
                        EndTime=utc(T0 + N),
                        NumValuesPerNode=4,
                    ),
                    bad,
                )
                assert not res.HistoryData or not res.HistoryData.DataValues
                codes.append(res.StatusCode.value)
            # another node's point is not this node's either
            other = next(n for k, n in nodes.items() if k != "temp")
            res = await client.get_node(other).history_read(
                ua.ReadRawModifiedDetails(
                    IsReadModified=False, StartTime=utc(T0), EndTime=utc(T0 + N)
                ),
                cont,
            )
            codes.append(res.StatusCode.value)
            # the genuine one still reads on
            values, _ = await read_page(client, nodes["temp"], utc(T0), utc(T0 + N), 4, cont)
            assert [dv.SourceTimestamp.timestamp() for dv in values] == [
                T0 + i for i in range(4, 8)
            ]
            return codes

    assert set(run(scenario())) == {ua.StatusCodes.BadContinuationPointInvalid}


def test_releasing_continuation_points_returns_no_data(served: Served) -> None:
    async def scenario() -> list[ua.HistoryReadResult]:
        nodes = served.nodes
        async with Client(served.url) as client:
            _, cont = await read_page(client, nodes["temp"], utc(T0), utc(T0 + N), 4)
            params = ua.HistoryReadParameters()
            params.HistoryReadDetails = ua.ReadRawModifiedDetails(
                IsReadModified=False, StartTime=utc(T0), EndTime=utc(T0 + N), NumValuesPerNode=4
            )
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.ReleaseContinuationPoints = True
            params.NodesToRead = [
                ua.HistoryReadValueId(NodeId=nodes["temp"], ContinuationPoint=cont)
            ]
            return await client.uaclient.history_read(params)

    (res,) = run(scenario())
    assert res.StatusCode.is_good()
    assert not res.HistoryData or not res.HistoryData.DataValues


async def history_read(
    client: Client,
    nodeid: ua.NodeId,
    details: Any,
    ts: ua.TimestampsToReturn = ua.TimestampsToReturn.Both,
) -> ua.HistoryReadResult:
    """One HistoryRead of one node as any client sends it (asyncua's parameters
    default to releasing the continuation points)."""
    params = ua.HistoryReadParameters()
    params.HistoryReadDetails = details
    params.TimestampsToReturn = ts
    params.ReleaseContinuationPoints = False
    params.NodesToRead = [ua.HistoryReadValueId(NodeId=nodeid)]
    (res,) = await client.uaclient.history_read(params)
    return res


def test_a_kind_of_history_read_not_served_is_refused_with_the_specs_code(
    served: Served,
) -> None:
    # asyncua answered BadNotImplemented to processed and at-time reads, Good with no
    # events to an event read, and raw values as modified ones to a modified read.
    never = ua.get_win_epoch()  # DateTime.MinValue: not specified
    kinds = {
        "processed": ua.ReadProcessedDetails(
            StartTime=utc(T0),
            EndTime=utc(T0 + N),
            ProcessingInterval=1000.0,
            AggregateType=[ua.NodeId(ua.ObjectIds.AggregateFunction_Average)],
        ),
        "at time": ua.ReadAtTimeDetails(ReqTimes=[utc(T0 + 1)]),
        "events": ua.ReadEventDetails(
            StartTime=utc(T0), EndTime=utc(T0 + N), Filter=ua.EventFilter()
        ),
        "modified": ua.ReadRawModifiedDetails(
            IsReadModified=True, StartTime=utc(T0), EndTime=utc(T0 + N)
        ),
        "annotations": ua.ReadAnnotationDataDetails(ReqTimes=[utc(T0 + 1)]),
        "no details": None,
        "no time": ua.ReadRawModifiedDetails(
            IsReadModified=False, StartTime=never, EndTime=never, NumValuesPerNode=5
        ),
    }

    async def scenario() -> dict[str, int]:
        async with Client(served.url) as client:
            return {
                name: (await history_read(client, served.nodes["temp"], d)).StatusCode.value
                for name, d in kinds.items()
            }

    unsupported, invalid = (
        ua.StatusCodes.BadHistoryOperationUnsupported,
        ua.StatusCodes.BadHistoryOperationInvalid,
    )
    assert run(scenario()) == {
        "processed": unsupported,
        "at time": unsupported,
        "events": unsupported,
        "modified": unsupported,  # never modified: HistoryUpdate is refused
        "annotations": unsupported,
        "no details": invalid,
        "no time": invalid,  # Part 11: two of start, end and count
    }


def test_a_range_without_data_reads_good_no_data_and_a_range_with_data_good(
    served: Served,
) -> None:
    # Part 11: "for an interval in which no data exists ... Good_NoData"; it was Good.
    def raw(a: float, b: float) -> ua.ReadRawModifiedDetails:
        return ua.ReadRawModifiedDetails(
            IsReadModified=False, StartTime=utc(a), EndTime=utc(b), ReturnBounds=False
        )

    async def scenario() -> list[tuple[int, int]]:
        out = []
        async with Client(served.url) as client:
            for node, a, b in (
                ("temp", T0 - 3600, T0 - 1),
                ("temp", T0 + N + 1, T0 + N + 3600),
                ("missing", T0, T0 + N),  # a point the historian never recorded
                ("temp", T0, T0 + 3),  # the end time is not part of the read
            ):
                res = await history_read(client, served.nodes[node], raw(a, b))
                out.append((res.StatusCode.value, len(res.HistoryData.DataValues)))
        return out

    no_data = ua.StatusCodes.GoodNoData
    assert run(scenario()) == [(no_data, 0), (no_data, 0), (no_data, 0), (ua.StatusCodes.Good, 3)]


def test_timestamps_to_return_neither_is_refused_for_the_whole_request(served: Served) -> None:
    # Part 4 (HistoryRead): Neither is not a valid TimestampsToReturn; it was read.
    async def scenario() -> int:
        details = ua.ReadRawModifiedDetails(
            IsReadModified=False, StartTime=utc(T0), EndTime=utc(T0 + N)
        )
        async with Client(served.url) as client:
            with pytest.raises(ua.UaStatusCodeError) as info:
                await history_read(
                    client, served.nodes["temp"], details, ua.TimestampsToReturn.Neither
                )
            return info.value.code

    assert run(scenario()) == ua.StatusCodes.BadTimestampsToReturnInvalid


# -- Part 11's time domains and bounding values ---------------------------------------
#: Part 11 (4.4, Table 1): a historian with values at 5:00, 5:02, 5:03, 5:05 and 5:06
#: (minutes after T1; the value is the minute)
T1 = T0 + 86_400.0
TABLE_MIN = [0, 2, 3, 5, 6]
FIRST, LAST = "FIRST", "LAST"  # a bound not found at the start time / at the end time


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("opcua_history_table") / "hist.db"
    with Historian(path, NAMES, site_name="Hall A", batch_s=0.05) as h:
        for m in TABLE_MIN:
            h.record_scan(T1 + 60 * m, np.array([float(m), 0.0]), np.array([0, 0], np.uint8))
        h.flush(timeout=30.0)
    with _serving(path) as s:
        yield s


def _at(m: float | None) -> datetime | None:
    return None if m is None else utc(T1 + 60 * m)


def _marks(values: list[ua.DataValue]) -> list[object]:
    """Each value as its minute, or FIRST / LAST for a bound not found."""
    out: list[object] = []
    for k, dv in enumerate(values):
        if dv.StatusCode.value == ua.StatusCodes.BadBoundNotFound:
            assert dv.Value.Value is None  # a null value at the requested time
            out.append(FIRST if k == 0 else LAST)
        else:
            assert dv.StatusCode.value == ua.StatusCodes.Good
            assert dv.SourceTimestamp.timestamp() == T1 + 60 * dv.Value.Value
            out.append(round(dv.Value.Value))
    return out


#: (start, end, NumValuesPerNode, ReturnBounds) -> the values of one page, as Table 1
#: lists them (start and end in minutes after 5:00; None: not specified)
TABLE_1 = [
    (0, 5, 0, True, [0, 2, 3, 5]),
    (0, 5, 0, False, [0, 2, 3]),
    (1, 4, 0, True, [0, 2, 3, 5]),
    (1, 4, 0, False, [2, 3]),
    (5, 0, 0, True, [5, 3, 2, 0]),
    (5, 0, 0, False, [5, 3, 2]),
    (4, 1, 0, True, [5, 3, 2, 0]),
    (4, 1, 0, False, [3, 2]),
    (-1, 5, 0, True, [FIRST, 0, 2, 3, 5]),
    (-1, 5, 0, False, [0, 2, 3]),
    (1, None, 3, True, [0, 2, 3]),
    (1, None, 3, False, [2, 3, 5]),
    (0, None, 3, True, [0, 2, 3]),
    (0, None, 3, False, [0, 2, 3]),
    (None, 4, 3, True, [5, 3, 2]),
    (None, 4, 3, False, [3, 2, 0]),
    (None, 6, 3, True, [6, 5, 3]),
    (None, 6, 3, False, [6, 5, 3]),
    (0, 5, 3, True, [0, 2, 3]),
    (0, 5, 3, False, [0, 2, 3]),
    (1, 4, 3, True, [0, 2, 3]),
    (1, 4, 3, False, [2, 3]),
    (4, 1, 3, True, [5, 3, 2]),
    (4, 1, 3, False, [3, 2]),
    (-1, 5, 3, True, [FIRST, 0, 2]),
    (-1, 5, 3, False, [0, 2, 3]),
    # beyond the table: no value at or after the end time, and identical times
    (4, 9, 0, True, [3, 5, 6, LAST]),
    (9, 4, 0, True, [FIRST, 6, 5, 3]),
    (3, 3, 0, False, [3]),
]


def test_raw_reads_return_part_11s_time_domains_and_bounding_values(table: Served) -> None:
    async def scenario() -> list[list[object]]:
        out = []
        async with Client(table.url) as client:
            for start, end, n, bounds, _ in TABLE_1:
                values, _cont = await read_page(
                    client, table.nodes["temp"], _at(start), _at(end), n, bounds=bounds
                )
                out.append(_marks(values))
        return out

    assert run(scenario()) == [want for *_, want in TABLE_1]


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (-1, 9, [FIRST, 0, 2, 3, 5, 6, LAST]),
        (9, -1, [FIRST, 6, 5, 3, 2, 0, LAST]),  # backward: the first bound is the start's
        (1, 4, [0, 2, 3, 5]),
    ],
)
def test_bounds_come_once_at_each_end_of_a_read_followed_page_by_page(
    table: Served, start: float, end: float, want: list[object]
) -> None:
    async def scenario() -> tuple[list[object], int]:
        seen: list[object] = []
        pages, cont = 0, None
        async with Client(table.url) as client:
            while pages == 0 or cont is not None:
                values, cont = await read_page(
                    client, table.nodes["temp"], _at(start), _at(end), 2, cont, bounds=True
                )
                assert len(values) <= 2  # a bound counts in NumValuesPerNode
                seen += _marks(values) if values else []
                pages += 1
        # (a LAST only where it is the read's last value: _marks names a bound by place)
        return [LAST if m == FIRST and k else m for k, m in enumerate(seen)], pages

    seen, pages = run(scenario())
    assert seen == want
    assert pages == -(-len(want) // 2)
