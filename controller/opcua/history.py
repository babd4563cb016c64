"""HistoryRead (raw) of historized variables, served from thermogate's own historian.

The historian already records every scan (``controller/historian``); the OPC
UA server stores nothing. :class:`HistorianStorage` is asyncua's history
storage interface backed by a :class:`HistoryReader`: ``save_node_value`` is a
no-op and ``read_node_history`` reads the point's raw scans, each value with
the status code of its recorded quality (good / uncertain / bad -> Good /
Uncertain / Bad) and the scan's time as its source and server timestamp.

Reads follow OPC UA Part 11's ReadRawModifiedDetails: StartTime <= EndTime
reads forward, StartTime > EndTime backward (newest first), no EndTime reads
forward from StartTime, no StartTime backward from EndTime; neither is refused
(BadHistoryOperationInvalid), as are the reads not served (``_guard_reads``).
A page holds at most NumValuesPerNode values (and never more than
``max_history_data_response_size``); when more remain, the answer carries a
continuation point — asyncua's: the timestamp of the next value, which the next
request reads from (so a read backward from EndTime alone, which asyncua would
continue forward, ends at its first page), with a tag that lets only the points
this server handed out for the node back in (BadContinuationPointInvalid
otherwise; see ``_guard_reads``). ReturnBounds is not honoured:
asyncua 2.1 does not hand it to the storage. A node not served, a point the
historian does not have and a range without scans all read as no values here
(GoodNoData to the client).

SQLite is read in a worker thread (``asyncio.to_thread``), a window at a time
that grows until a page is full, so a week-long request neither blocks the
server's event loop nor reads a week to send one page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server.history import HistoryStorageInterface

from thermogate.plc.errors import ThermogateError
from thermogate.plc.points import GOOD, UNCERTAIN

from ..historian.reader import HistoryReader
from ..historian.schema import HistorianError
from .typed import data_value, status_code

__all__ = ["HistorianStorage", "serve_history"]

log = logging.getLogger(__name__)

FIRST_WINDOW_S = 3600.0  # the first window read; each next one is 4 times as long
_MARGIN_S = 1e-3  # read a little wider than asked: bounds are compared as UA DateTimes
_TAG_BYTES = 8  # a continuation point's tag (see _guard_reads)
_INTEGERS = {
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}

#: (time, value, quality) of one recorded scan
Sample = tuple[float, float, int]


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _given(d: datetime | None) -> datetime | None:
    """A request's time, or None when unspecified (null, or DateTime's minimum)."""
    if d is None:
        return None
    if d.tzinfo is None:  # asyncua hands out UTC, naive or not
        d = d.replace(tzinfo=UTC)
    return None if d <= ua.get_win_epoch() else d


class HistorianStorage(HistoryStorageInterface):
    """asyncua's history storage, reading thermogate's historian (see the module
    docstring). ``nodes`` maps a historized variable to its historian point and
    the variant type its values are sent as."""

    def __init__(
        self,
        reader_factory: Callable[[], HistoryReader],
        max_history_data_response_size: int = 10_000,
    ) -> None:
        super().__init__(max_history_data_response_size)
        self.reader_factory = reader_factory
        self.nodes: dict[ua.NodeId, tuple[str, ua.VariantType]] = {}
        self._reader: HistoryReader | None = None
        self._reader_lock = threading.Lock()
        self._known: set[str] = set()  # points the open reader has

    # -- what asyncua calls to store: nothing to do, the historian records every scan
    async def init(self) -> None:
        pass

    async def new_historized_node(
        self, node_id: ua.NodeId, period: timedelta | None, count: int = 0
    ) -> None:
        pass

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        pass

    async def new_historized_event(
        self, source_id: ua.NodeId, evtypes: list[Any], period: timedelta | None, count: int = 0
    ) -> None:
        pass

    async def save_event(self, event: Any) -> None:
        pass

    async def read_event_history(
        self,
        source_id: ua.NodeId,
        start: datetime | None,
        end: datetime | None,
        nb_values: int,
        evfilter: ua.EventFilter,
    ) -> tuple[list[Any], datetime | None]:
        return [], None  # events are the historian's too, but not served over OPC UA (yet)

    async def stop(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
                self._known.clear()

    # -- HistoryRead raw -------------------------------------------------------
    async def read_node_history(
        self,
        node_id: ua.NodeId,
        start: datetime | None,
        end: datetime | None,
        nb_values: int,
    ) -> tuple[list[ua.DataValue], datetime | None]:
        """Up to a page of ``node_id``'s values between ``start`` and ``end``
        (inclusive), and the time to continue from when more remain (else None)."""
        entry = self.nodes.get(node_id)
        t0, t1 = _given(start), _given(end)
        if entry is None or (t0 is None and t1 is None):
            return [], None
        name, vtype = entry
        page = self.max_history_data_response_size
        limit = min(nb_values, page) if nb_values > 0 else page
        if t0 is None:  # backward from EndTime: [-inf, end], newest first
            lo, hi, reverse = None, t1, True
        elif t1 is None:  # forward from StartTime
            lo, hi, reverse = t0, None, False
        elif t0 > t1:
            lo, hi, reverse = t1, t0, True
        else:
            lo, hi, reverse = t0, t1, False
        samples = await asyncio.to_thread(self._samples, name, lo, hi, reverse, limit + 1)
        more = len(samples) > limit
        # asyncua continues with StartTime = the continuation point and the request's
        # EndTime: right for every read except one backward from EndTime alone, which
        # would then read forward; that one ends at its page.
        cont = _utc(samples[limit][0]) if more and t0 is not None else None
        return [_data_value(s, vtype) for s in samples[:limit]], cont

    def _samples(
        self, name: str, lo: datetime | None, hi: datetime | None, reverse: bool, want: int
    ) -> list[Sample]:
        """Up to ``want`` scans of ``name`` with lo <= time <= hi (None: open),
        oldest first or newest first; read in growing windows (a worker thread)."""
        try:
            span = self._reader_for(name).span()
        except ThermogateError as exc:
            log.warning("history of %s: %s", name, exc)
            return []
        if span is None:
            return []
        a = span[0] if lo is None else max(span[0], lo.timestamp() - _MARGIN_S)
        b = span[1] if hi is None else min(span[1], hi.timestamp() + _MARGIN_S)
        out: list[Sample] = []
        window, first = FIRST_WINDOW_S, True
        cur = b if reverse else a
        while a <= b and len(out) < want:
            w0, w1 = (max(a, cur - window), cur) if reverse else (cur, min(b, cur + window))
            try:
                t, values, quality = self._reader_for(name).scans([name], w0, w1)
            except ThermogateError as exc:
                log.warning("history of %s: %s", name, exc)
                return []
            v, q = values[name], quality[name]
            keep = np.ones(len(t), bool)
            if not first:  # a window starts where the last one ended: drop that edge
                keep &= (t < w1) if reverse else (t > w0)
            rows = [
                (float(ti), float(vi), int(qi))
                for ti, vi, qi in zip(t[keep], v[keep], q[keep], strict=True)
                if (lo is None or _utc(ti) >= lo) and (hi is None or _utc(ti) <= hi)
            ]
            out.extend(reversed(rows) if reverse else rows)
            if (w0 <= a) if reverse else (w1 >= b):
                break
            cur, window, first = (w0 if reverse else w1), window * 4, False
        return out[:want]

    def _reader_for(self, name: str) -> HistoryReader:
        """The reader, opened once; opened again when ``name`` is not among its
        points (a reader knows the points that existed when it was opened).
        Raises ``HistorianError`` for a point the historian does not have."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = self.reader_factory()
            if name in self._known:
                return self._reader
            if not self._has(self._reader, name):
                self._reader.close()
                self._reader = self.reader_factory()
                if not self._has(self._reader, name):
                    raise HistorianError(f"{self._reader.path}: no point {name!r} in the historian")
            self._known.add(name)
            return self._reader

    @staticmethod
    def _has(reader: HistoryReader, name: str) -> bool:
        try:
            reader.quality([name], math.inf, math.inf)  # reads no rows; checks the name
        except KeyError:
            return False
        return True


def _data_value(s: Sample, vtype: ua.VariantType) -> ua.DataValue:
    t, v, q = s
    if q == GOOD:
        status = status_code(ua.StatusCodes.Good)
    elif q == UNCERTAIN:
        status = status_code(ua.StatusCodes.Uncertain)
    else:
        status = status_code(ua.StatusCodes.Bad)
    if math.isnan(v):  # nothing recorded: never a Good value
        variant = ua.Variant()
        if status.is_good():
            status = status_code(ua.StatusCodes.Bad)
    elif vtype == ua.VariantType.Boolean:
        variant = ua.Variant(v >= 0.5, vtype)
    elif vtype in _INTEGERS:
        variant = ua.Variant(round(v), vtype)
    elif vtype == ua.VariantType.Float:
        variant = ua.Variant(v, vtype)
    else:
        variant = ua.Variant(v, ua.VariantType.Double)
    when = _utc(t)
    return data_value(variant, StatusCode=status, SourceTimestamp=when, ServerTimestamp=when)


def _details_problem(details: Any) -> int | None:
    """Why a HistoryRead's details cannot be served (a status code), or None.

    Only raw reads are served: a processed, at-time, annotation or event read, or a
    modified read (history is never modified: HistoryUpdate is refused), is
    BadHistoryOperationUnsupported; no details, or a raw read giving neither a
    start nor an end (Part 11: two of start, end and count), BadHistoryOperationInvalid.
    """
    if isinstance(details, ua.ReadRawModifiedDetails):
        if details.IsReadModified:
            return ua.StatusCodes.BadHistoryOperationUnsupported
        if _given(details.StartTime) is None and _given(details.EndTime) is None:
            return ua.StatusCodes.BadHistoryOperationInvalid
        return None
    if isinstance(details, ua.HistoryReadDetails):  # processed, at time, annotations, events
        return ua.StatusCodes.BadHistoryOperationUnsupported
    return ua.StatusCodes.BadHistoryOperationInvalid


def _guard_reads(manager: Any, storage: HistorianStorage, aspace: Any) -> None:
    """What asyncua's history manager lets through, refused with the spec's codes.

    * A node that has no history: BadHistoryOperationUnsupported (BadNodeIdUnknown
      when there is no such node); asyncua answers Good with no values.
    * Details not served (``_details_problem``): BadHistoryOperationUnsupported or
      BadHistoryOperationInvalid; asyncua answered BadNotImplemented, an event read
      Good with no events, and a modified read with the raw values.
    * A raw read that finds no value: GoodNoData (Part 11), not Good.
    * TimestampsToReturn Neither: the whole request BadTimestampsToReturnInvalid
      (Part 4); asyncua read it.
    * A continuation point this server did not hand out for this node:
      BadContinuationPointInvalid. asyncua's point is the bare next timestamp, so
      any 8 bytes read on from some time and anything else failed the whole
      service (BadInternalError, with a traceback in the log). The points handed
      out carry a tag (keyed HMAC of the time and the node, key per server
      process: a restarted server's points are invalid, as the spec allows).
    * ReleaseContinuationPoints: no data, Good (the points are stateless: there
      is nothing to free); asyncua read a page.
    """
    read, read_all = manager._read_history, manager.read_history
    key = secrets.token_bytes(16)

    def tag(node: ua.NodeId, point: bytes) -> bytes:
        msg = node.to_string().encode() + b"|" + point
        return hmac.new(key, msg, hashlib.sha256).digest()[:_TAG_BYTES]

    async def read_history(details: Any, rv: ua.HistoryReadValueId) -> ua.HistoryReadResult:
        result = ua.HistoryReadResult()
        if rv.NodeId not in storage.nodes:
            code = (
                ua.StatusCodes.BadHistoryOperationUnsupported
                if rv.NodeId in aspace
                else ua.StatusCodes.BadNodeIdUnknown
            )
            result.StatusCode = status_code(code)
            return result
        problem = _details_problem(details)
        if problem is not None:
            result.StatusCode = status_code(problem)
            return result
        cp = rv.ContinuationPoint
        if cp:
            point, given = cp[:-_TAG_BYTES], cp[-_TAG_BYTES:]
            if len(cp) != 8 + _TAG_BYTES or not hmac.compare_digest(given, tag(rv.NodeId, point)):
                result.StatusCode = status_code(ua.StatusCodes.BadContinuationPointInvalid)
                return result
            rv.ContinuationPoint = point
        result = await read(details, rv)
        if result.ContinuationPoint:
            result.ContinuationPoint += tag(rv.NodeId, result.ContinuationPoint)
        elif result.StatusCode.is_good() and not result.HistoryData.DataValues:
            result.StatusCode = status_code(ua.StatusCodes.GoodNoData)
        return result

    async def read_all_history(params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        if params.TimestampsToReturn == ua.TimestampsToReturn.Neither:
            raise ServiceError(ua.StatusCodes.BadTimestampsToReturnInvalid)
        if params.ReleaseContinuationPoints:
            return [ua.HistoryReadResult() for _ in params.NodesToRead]
        return await read_all(params)

    manager._read_history = read_history
    manager.read_history = read_all_history


def serve_history(
    server: Server,
    reader_factory: Callable[[], HistoryReader],
    nodes: Mapping[ua.NodeId, str],
) -> None:
    """Serve HistoryRead raw for ``nodes`` (NodeId of a historized variable ->
    historian point name) from the historian ``reader_factory`` opens.

    Marks each node Historizing with HistoryRead in its (user) access level and
    installs :class:`HistorianStorage` as the server's history storage (a second
    call adds its nodes to it). Synchronous: the attributes are set in the address
    space directly. Raises ``ValueError`` for a node that is not a variable."""
    aspace = server.iserver.aspace
    for nodeid, name in nodes.items():  # every node checked before anything changes
        data = aspace.get(nodeid)
        if data is None or data.attributes.get(ua.AttributeIds.Historizing) is None:
            raise ValueError(f"history for {name!r}: {nodeid.to_string()} is not a variable")
    manager = server.iserver.history_manager
    storage = manager.storage
    if not isinstance(storage, HistorianStorage):
        storage = HistorianStorage(reader_factory)
        manager.set_storage(storage)
        _guard_reads(manager, storage, aspace)
    storage.reader_factory = reader_factory
    bit = 1 << ua.AccessLevel.HistoryRead
    for nodeid, name in nodes.items():
        attrs = aspace[nodeid].attributes
        attrs[ua.AttributeIds.Historizing].value = ua.DataValue(
            ua.Variant(True, ua.VariantType.Boolean)
        )
        for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
            dv = attrs[attr].value
            level = dv.Value.Value if dv is not None and dv.Value is not None else 0
            attrs[attr].value = ua.DataValue(ua.Variant(level | bit, ua.VariantType.Byte))
        storage.nodes[nodeid] = (name, _variant_type(server, nodeid))


def _variant_type(server: Server, nodeid: ua.NodeId) -> ua.VariantType:
    """How the node's values are sent: its DataType when a built-in number or
    Boolean, else Double."""
    dv = server.read_attribute_value(nodeid, ua.AttributeIds.DataType)
    dt = dv.Value.Value if dv.Value is not None else None
    if not isinstance(dt, ua.NodeId) or dt.NamespaceIndex != 0:
        return ua.VariantType.Double
    ident = dt.Identifier
    if isinstance(ident, int) and 1 <= ident <= 11:
        return ua.VariantType(ident)  # Boolean (1) .. Double (11): ids as variant types
    return ua.VariantType.Double
