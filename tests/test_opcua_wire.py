"""The fast DataChangeNotification codec is asyncua's, byte for byte and object for object.

``wire.encode_datachange`` replaces asyncua's encoder in the server's process and
``wire.decode_datachange`` its decoder in ``bench opcua``'s client: over random
notifications of every shape (the common scalar Double with status and both
timestamps, and Booleans, nulls, integers, strings, arrays, missing fields,
picoseconds, extreme times) each must give exactly what asyncua gives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.opcua import wire

V = ua.VariantType
SCAN = datetime(2026, 7, 1, 12, 0, 0, 250_000, tzinfo=UTC)

times = st.one_of(
    st.none(),
    st.just(SCAN),
    st.datetimes(
        min_value=datetime(1500, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
)
variants = st.one_of(
    st.floats().map(lambda x: ua.Variant(x, V.Double)),
    st.booleans().map(lambda x: ua.Variant(x, V.Boolean)),
    st.just(ua.Variant()),
    st.integers(-(2**31), 2**31 - 1).map(lambda x: ua.Variant(x, V.Int32)),
    st.integers(0, 2**32 - 1).map(lambda x: ua.Variant(x, V.UInt32)),
    st.text(max_size=20).map(lambda x: ua.Variant(x, V.String)),
    st.lists(st.floats(), max_size=4).map(lambda x: ua.Variant(x, V.Double, is_array=True)),
    st.integers(-5, 5).map(lambda x: ua.Variant(x, V.Double)),  # an int typed Double
)
common = st.builds(  # the shape a scan publishes: most of every message
    lambda x, c: ua.DataValue(ua.Variant(x, V.Double), ua.StatusCode(c), SCAN, SCAN),
    st.floats(),
    st.sampled_from([0, 0x40000000, 0x80000000, 0x808A0000]),
)
anything = st.builds(
    ua.DataValue,
    Value=st.one_of(st.none(), variants),
    StatusCode=st.one_of(st.none(), st.integers(0, 2**32 - 1).map(ua.StatusCode)),
    SourceTimestamp=times,
    ServerTimestamp=times,
    SourcePicoseconds=st.one_of(st.none(), st.integers(0, 9999)),
    ServerPicoseconds=st.one_of(st.none(), st.integers(0, 9999)),
)
notifications = st.builds(
    lambda items: ua.DataChangeNotification(
        MonitoredItems=[ua.MonitoredItemNotification(h, dv) for h, dv in items]
    ),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.one_of(common, anything)), max_size=30),
)


@settings(max_examples=120, deadline=None)
@given(notifications)
def test_encoding_is_asyncuas_byte_for_byte(dcn):
    assert wire.encode_datachange(dcn) == wire.asyncua_encode(dcn)


@settings(max_examples=120, deadline=None)
@given(notifications)
def test_decoding_gives_asyncuas_objects(dcn):
    raw = wire.asyncua_encode(dcn)
    fast, ref = wire.decode_datachange(raw), wire.asyncua_decode(raw)
    assert repr(fast) == repr(ref)  # repr: NaN compares equal to NaN here
    assert [type(i.Value.Value.Value) for i in fast.MonitoredItems] == [
        type(i.Value.Value.Value) for i in ref.MonitoredItems
    ]


@settings(max_examples=50, deadline=None)
@given(notifications.filter(lambda d: d.MonitoredItems), st.data())
def test_a_truncated_notification_is_an_opc_ua_error(dcn, data):
    raw = wire.asyncua_encode(dcn)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ua.UaError):
        wire.decode_datachange(raw[:cut])


def test_a_scans_changes_share_their_timestamps_when_decoded():
    dcn = ua.DataChangeNotification(
        MonitoredItems=[
            ua.MonitoredItemNotification(
                k, ua.DataValue(ua.Variant(k / 3, V.Double), ua.StatusCode(), SCAN, SCAN)
            )
            for k in range(50)
        ]
    )
    got = wire.decode_datachange(wire.encode_datachange(dcn)).MonitoredItems
    assert [i.ClientHandle for i in got] == list(range(50))
    assert [i.Value.Value.Value for i in got] == [k / 3 for k in range(50)]
    assert {i.Value.SourceTimestamp for i in got} == {SCAN}
    assert SCAN - got[0].Value.ServerTimestamp == timedelta(0)
