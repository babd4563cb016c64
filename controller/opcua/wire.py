"""DataChangeNotification to and from OPC UA binary, fast and byte for byte asyncua's.

asyncua (pinned in pyproject) encodes and decodes every structure through a
generic, per-field interpreter: about 15 us of Python per monitored item each
way, so a 10,000-point scan's ~4,300 changes cost the server ~60 ms to encode
and an asyncua client ~130 ms to decode (``thermogate bench opcua`` latency).
A data change is almost always the same few shapes (a scalar Double or
Boolean, a status code, two timestamps), so this module packs and unpacks those
with one ``struct`` call each and hands every other shape to asyncua's own
codec, field by field:

* ``encode_datachange``: the bytes asyncua's ``struct_to_binary`` gives for the
  same notification, always (tests/test_opcua_wire.py checks it over random
  notifications with hypothesis);
* ``decode_datachange``: the objects asyncua's decoder gives for the same
  bytes (compared the same way);
* ``install_encoder`` / ``install_decoder``: make asyncua use them, process-wide
  (the server's process encodes, ``bench opcua``'s client decodes).

Timestamps are converted once per distinct value in a message: a scan's changes
share two (the scan that produced them, the server's clock when applied).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import ua_binary

from .typed import data_value

_V = ua.VariantType
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_HANDLE_MASK = struct.Struct("<IB")
_DOUBLE = struct.Struct("<d")
# the common shape: handle, mask (value, status, both timestamps), Double, status, times
_COMMON = struct.Struct("<IBBdIqq")
_COMMON_MASK = 0x0F
_PICOS = 0x30  # asyncua orders picoseconds its own way: those go to its codec whole
_TRUE, _FALSE, _NULL = b"\x01\x01", b"\x01\x00", b"\x00"


def encode_datachange(dcn: ua.DataChangeNotification) -> bytes:
    """``dcn`` in OPC UA binary, exactly as asyncua encodes it."""
    items = dcn.MonitoredItems
    if items is None:
        parts = [_I32.pack(-1)]
    else:
        parts = [_I32.pack(len(items))]
        times: dict[int, int] = {}  # id(datetime) -> Int64; items keep them alive
        common = _COMMON.pack
        for it in items:
            dv = it.Value
            var, sc = dv.Value, dv.StatusCode
            src, srv = dv.SourceTimestamp, dv.ServerTimestamp
            if (
                var is not None
                and var.VariantType is _V.Double
                and type(var.Value) is float
                and not var.is_array
                and sc is not None
                and src is not None
                and srv is not None
                and dv.SourcePicoseconds is None
                and dv.ServerPicoseconds is None
            ):
                a = times.get(id(src))
                if a is None:
                    a = times[id(src)] = ua.datetime_to_win_epoch(src)
                b = times.get(id(srv))
                if b is None:
                    b = times[id(srv)] = ua.datetime_to_win_epoch(srv)
                parts.append(common(it.ClientHandle, _COMMON_MASK, 11, var.Value, sc.value, a, b))
            else:
                parts.append(_U32.pack(it.ClientHandle))
                parts.append(_datavalue_bytes(dv))
    parts.append(_diagnostics(dcn.DiagnosticInfos))
    return b"".join(parts)


def _datavalue_bytes(dv: ua.DataValue) -> bytes:
    """One DataValue of any other shape: the plain ones here, the rest by asyncua."""
    if dv.SourcePicoseconds is not None or dv.ServerPicoseconds is not None:
        return _dv_serializer()(dv)
    var, sc = dv.Value, dv.StatusCode
    src, srv = dv.SourceTimestamp, dv.ServerTimestamp
    mask = (
        (var is not None) | (sc is not None) << 1 | (src is not None) << 2 | (srv is not None) << 3
    )
    out = [bytes((mask,))]
    if var is not None:
        out.append(_variant_bytes(var))
    if sc is not None:
        out.append(_U32.pack(sc.value))
    for t in (src, srv):
        if t is not None:
            out.append(_I64.pack(ua.datetime_to_win_epoch(t)))
    return b"".join(out)


def _variant_bytes(var: ua.Variant) -> bytes:
    x = var.Value
    if not var.is_array:
        if var.VariantType is _V.Double and type(x) is float:
            return b"\x0b" + _DOUBLE.pack(x)
        if var.VariantType is _V.Boolean and type(x) is bool:
            return _TRUE if x else _FALSE
        if var.VariantType is _V.Null and x is None:
            return _NULL
    return ua_binary.variant_to_binary(var)


def decode_datachange(data: Buffer | bytes) -> ua.DataChangeNotification:
    """A DataChangeNotification's body, decoded to what asyncua's decoder gives."""
    raw = bytes(data.read(len(data))) if isinstance(data, Buffer) else bytes(data)
    try:
        return _decode(raw)
    except (struct.error, IndexError) as exc:  # as asyncua's decoder says a message is short
        raise ua.UaError(f"DataChangeNotification truncated: {exc}") from exc


def _decode(raw: bytes) -> ua.DataChangeNotification:
    (n,) = _I32.unpack_from(raw, 0)
    off = 4
    items: list[ua.MonitoredItemNotification] = []
    times: dict[int, datetime] = {}
    codes: dict[int, ua.StatusCode] = {}
    to_time, common = ua.win_epoch_to_datetime, _COMMON.unpack_from
    size = len(raw)
    for _ in range(n):
        handle, mask = _HANDLE_MASK.unpack_from(raw, off)
        if mask == _COMMON_MASK and raw[off + 5] == 11 and off + _COMMON.size <= size:
            _, _, _, x, c, a, b = common(raw, off)
            off += _COMMON.size
            sc = codes.get(c)
            if sc is None:
                sc = codes[c] = ua.StatusCode(c)
            src = times.get(a)
            if src is None:
                src = times[a] = to_time(a)
            srv = times.get(b)
            if srv is None:
                srv = times[b] = to_time(b)
            dv = datavalue(ua.DataValue, double(x), sc, src, srv)
        else:
            off += 4
            buf = Buffer(raw, off)
            dv = _dv_deserializer()(buf)
            off = size - len(buf)
        items.append(notification(handle, dv))
    buf = Buffer(raw, off)
    diags = _diag_deserializer()(buf)
    return ua.DataChangeNotification(MonitoredItems=items, DiagnosticInfos=diags)


# Variant, DataValue and MonitoredItemNotification are slotted dataclasses whose
# constructors check and guess types: most of a decode. A decoded value has its
# type by construction, so the slots are filled directly, when asyncua's layout is
# the one this was written against (else the ordinary constructors).
_new = object.__new__
_ITEM = ua.MonitoredItemNotification
_V_SLOTS = ("Value", "VariantType", "Dimensions", "is_array")
_DV_SLOTS = ("Encoding", "Value", "StatusCode", "SourceTimestamp", "ServerTimestamp",
             "SourcePicoseconds", "ServerPicoseconds")  # fmt: skip
_ITEM_SLOTS = ("ClientHandle", "Value")


def _double_fast(x: float) -> ua.Variant:
    var = _new(ua.Variant)
    var.Value, var.VariantType, var.Dimensions, var.is_array = x, _V.Double, None, False
    return var


def _datavalue_fast(
    cls: type[ua.DataValue], var: ua.Variant, sc: ua.StatusCode, source: datetime, server: datetime
) -> Any:
    dv = _new(cls)
    # asyncua annotates Encoding and the timestamps with its marker classes ua.Byte and
    # ua.DateTime, yet holds plain ints and datetimes there (see typed.py)
    dv.Encoding, dv.Value, dv.StatusCode = 0, var, sc  # type: ignore[assignment]
    dv.SourceTimestamp, dv.ServerTimestamp = source, server  # type: ignore[assignment]
    dv.SourcePicoseconds = dv.ServerPicoseconds = None
    return dv


def _notification_fast(handle: int, dv: ua.DataValue) -> ua.MonitoredItemNotification:
    item = _new(_ITEM)
    item.ClientHandle, item.Value = handle, dv
    return item


def _double_std(x: float) -> ua.Variant:
    return ua.Variant(x, _V.Double)


def _datavalue_std(
    cls: type[ua.DataValue], var: ua.Variant, sc: ua.StatusCode, source: datetime, server: datetime
) -> Any:
    # the timestamps: asyncua annotates them ua.DateTime, takes any datetime (typed.py)
    return cls(var, sc, source, server)  # type: ignore[arg-type]


def _notification_std(handle: int, dv: ua.DataValue) -> ua.MonitoredItemNotification:
    return _ITEM(ClientHandle=handle, Value=dv)


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAST_LAYOUT = (
    _names(ua.Variant) == _V_SLOTS
    and _names(ua.DataValue) == _DV_SLOTS
    and _names(_ITEM) == _ITEM_SLOTS
    and _datavalue_fast(ua.DataValue, _double_fast(1.0), ua.StatusCode(), _EPOCH, _EPOCH)
    == data_value(ua.Variant(1.0, _V.Double), ua.StatusCode(), _EPOCH, _EPOCH)
)
#: a scalar Double Variant, and a DataValue of class ``cls`` (asyncua's or a subclass)
double: Callable[[float], ua.Variant] = _double_fast if FAST_LAYOUT else _double_std
datavalue: Callable[..., Any] = _datavalue_fast if FAST_LAYOUT else _datavalue_std
notification: Callable[[int, ua.DataValue], ua.MonitoredItemNotification] = (
    _notification_fast if FAST_LAYOUT else _notification_std
)


def _dv_serializer() -> Callable[[Any], bytes]:
    return _ORIGINAL_SERIALIZER(ua.DataValue)


def _dv_deserializer() -> Callable[[Buffer], ua.DataValue]:
    return _ORIGINAL_DESERIALIZER(ua.DataValue, type(None))


def _diag_deserializer() -> Callable[[Buffer], list[ua.DiagnosticInfo]]:
    return _ORIGINAL_DESERIALIZER(list[ua.DiagnosticInfo], type(None))


def _diagnostics(diags: list[ua.DiagnosticInfo] | None) -> bytes:
    if not diags:
        return _I32.pack(-1 if diags is None else 0)
    return ua_binary.create_list_serializer(ua.DiagnosticInfo)(diags)


_ORIGINAL_SERIALIZER: Callable[[type], Callable[[Any], bytes]] = (
    ua_binary.create_dataclass_serializer
)
_ORIGINAL_DESERIALIZER: Callable[..., Callable[[Buffer], Any]] = ua_binary._create_type_deserializer


def asyncua_encode(dcn: ua.DataChangeNotification) -> bytes:
    """asyncua's own encoding of ``dcn`` (installed or not): the reference."""
    return _ORIGINAL_SERIALIZER(ua.DataChangeNotification)(dcn)


def asyncua_decode(data: bytes) -> ua.DataChangeNotification:
    """asyncua's own decoding of a DataChangeNotification body: the reference."""
    return _ORIGINAL_DESERIALIZER(ua.DataChangeNotification, type(None))(Buffer(data))


def _serializer(cls: type) -> Callable[[Any], bytes]:
    if cls is ua.DataChangeNotification:
        return encode_datachange
    return _ORIGINAL_SERIALIZER(cls)


def _deserializer(uatype: Any, dataclazz: type) -> Callable[[Buffer], Any]:
    if uatype is ua.DataChangeNotification:
        return decode_datachange
    return _ORIGINAL_DESERIALIZER(uatype, dataclazz)


def install_encoder() -> None:
    """asyncua encodes every DataChangeNotification with ``encode_datachange``
    (process-wide; asyncua finds a structure's encoder by this name at each call)."""
    ua_binary.create_dataclass_serializer = _serializer  # type: ignore[assignment]


def install_decoder() -> None:
    """asyncua decodes every DataChangeNotification with ``decode_datachange``."""
    ua_binary._create_type_deserializer = _deserializer  # type: ignore[assignment]
