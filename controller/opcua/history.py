"""HistoryRead (raw) of historized variables, served from thermogate's own historian.

The historian already records every scan (``controller/historian``); the OPC
UA server stores nothing. :class:`HistorianStorage` is asyncua's history
storage interface backed by a :class:`HistoryReader`: ``save_node_value`` is a
no-op and ``read_node_history`` reads the point's raw scans, each value with
the status code of its recorded quality (good / uncertain / bad -> Good /
Uncertain / Bad) and the scan's time as its source and server timestamp.

Reads follow OPC UA Part 11's ReadRawModifiedDetails and its time domains
(4.4, Table 1): StartTime <= EndTime reads forward, StartTime > EndTime backward
(newest first), the start time included and the end time not (identical times
read the one value there); no EndTime reads forward from StartTime, no StartTime
backward from EndTime, the time given included; neither is refused
(BadHistoryOperationInvalid), as are the reads not served (``_guard_reads``).
With ReturnBounds the bounding values come first and last: the value at the
start time or the one before it (after it, reading backward), and the value at
the end time or the one after it (before it, reading backward); a bound that
does not exist is a null value at that time with BadBoundNotFound. Bounds
count in NumValuesPerNode.
A page holds at most NumValuesPerNode values (and never more than
``max_history_data_response_size``); when more remain, the answer carries a
continuation point — asyncua's: the timestamp of the next value, which the next
request reads from, with a tag that lets only the points this server handed
out for the node back in (BadContinuationPointInvalid otherwise; see
``_guard_reads``). asyncua hands the storage neither ReturnBounds nor whether a
request continues: ``_guard_reads`` passes the request as it came
(``_REQUEST``), so a continued read keeps its direction and its bounds.
A node not served, a point the historian does not have and a range without
scans all read as no values here (GoodNoData to the client).

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
from contextvars import ContextVar
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Request:
    """A raw read as the client sent it (asyncua replaces StartTime by a
    continuation point's time and drops ReturnBounds before the storage)."""

    start: datetime | None
    end: datetime | None
    bounds: bool
    continued: bool


_REQUEST: ContextVar[_Request | None] = ContextVar("thermogate_history_request", default=None)


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
        """Up to a page of ``node_id``'s values in the request's time domain (see the
        module docstring), and the time to continue from when more remain (else None)."""
        entry = self.nodes.get(node_id)
        req = _REQUEST.get()
        if req is None:  # called directly: a first page, no bounds
            req = _Request(_given(start), _given(end), False, False)
        t0, t1 = req.start, req.end
        if entry is None or (t0 is None and t1 is None):
            return [], None
        name, vtype = entry
        page = self.max_history_data_response_size
        limit = min(nb_values, page) if nb_values > 0 else page
        resume = _given(start) if req.continued else None
        items = await asyncio.to_thread(self._domain, name, req, resume, limit + 1)
        more = len(items) > limit
        # asyncua continues with StartTime = the continuation point (``resume``
        # above). A read backward from EndTime alone, which asyncua would then
        # send as a forward read, ends at its page.
        nxt = items[limit][0] if more else None
        cont = _utc(nxt) if nxt is not None and t0 is not None else None
        return [_data_value(s, vtype) for s in items[:limit]], cont

    def _domain(self, name: str, req: _Request, resume: datetime | None, want: int) -> list[Sample]:
        """Up to ``want`` values of ``req``'s time domain (Part 11, 4.4) in the order
        read, from ``resume`` on when it continues; a bound not found is a sample
        with a NaN value and ``_NO_BOUND`` quality."""
        t0, t1 = req.start, req.end
        forward = t1 is None or (t0 is not None and t0 <= t1)
        first: Sample | None = None  # a bound that was not found, first or last
        last: Sample | None = None
        if forward:
            lo, hi = t0, t1
            hi_open = t0 is not None and t1 is not None and t0 != t1
            if req.bounds:
                if t0 is not None:
                    lo, first = self._bounding(name, t0, after=False)
                if t1 is not None and hi_open:
                    hi, last = self._bounding(name, t1, after=True)
                    hi_open = last is not None
            if resume is not None:
                lo, first = resume, None
            rows = self._samples(name, lo, hi, False, want + 1)
            if hi_open and hi is not None:
                rows = [r for r in rows if _utc(r[0]) < hi]
        else:  # newest first
            assert t1 is not None  # (a read without an end time is forward)
            # from the start time, or back from EndTime alone: the time given starts it
            begin = t1 if t0 is None else t0
            lo, hi, lo_open = (None if t0 is None else t1), begin, t0 is not None
            if req.bounds:
                hi, first = self._bounding(name, begin, after=True)
                if lo_open:
                    lo, last = self._bounding(name, t1, after=False)
                    lo_open = last is not None
            if resume is not None:
                hi, first = resume, None
            rows = self._samples(name, lo, hi, True, want + 1)
            if lo_open and lo is not None:
                rows = [r for r in rows if _utc(r[0]) > lo]
        out = ([first] if first is not None else []) + rows
        if last is not None and len(out) < want:  # the last bound once every value is out
            out.append(last)
        return out[:want]

    def _bounding(self, name: str, t: datetime, *, after: bool) -> tuple[datetime, Sample | None]:
        """A bounding value of ``name`` at ``t``: the time of the value at ``t`` or the
        nearest one after it (``after``) or before it, and None; where there is
        none, ``t`` and the bound not found there (Part 11's FIRST or LAST)."""
        at = (
            self._samples(name, t, None, False, 1)
            if after
            else self._samples(name, None, t, True, 1)
        )
        return (_utc(at[0][0]), None) if at else (t, _bound(t))

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


#: the quality of a bound not found (a null value with BadBoundNotFound)
_NO_BOUND = -1


def _bound(t: datetime) -> Sample:
    """A bound not found at ``t`` (Part 11's FIRST or LAST)."""
    return (t.timestamp(), math.nan, _NO_BOUND)


def _data_value(s: Sample, vtype: ua.VariantType) -> ua.DataValue:
    t, v, q = s
    if q == _NO_BOUND:
        when = _utc(t)
        return data_value(
            ua.Variant(),
            StatusCode=status_code(ua.StatusCodes.BadBoundNotFound),
            SourceTimestamp=when,
            ServerTimestamp=when,
        )
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
        token = _REQUEST.set(
            _Request(
                _given(details.StartTime),
                _given(details.EndTime),
                bool(details.ReturnBounds),
                bool(cp),
            )
        )
        try:
            result = await read(details, rv)
        finally:
            _REQUEST.reset(token)
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
