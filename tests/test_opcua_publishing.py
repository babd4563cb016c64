"""A scan's changes into the subscriptions in bulk, and published at once.

Against a real asyncua server (the face) and real asyncua clients over TCP:
every change of every scan reaches every subscription once; an item with a
filter keeps asyncua's own rule; a scan's changes leave in the cycle they
woke, never two messages within one publishing interval. Times are taken on
the server's side and asserted as bounds load cannot break (a send is never
earlier than the interval allows) or with margins of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from asyncua import Client, ua
from opcua_rig import Rig

from thermogate.controller.opcua.space import namespace_uri
from thermogate.plc.points import GOOD

NAMES = [f"tank{k:02d}.fluid_temp" for k in range(1, 9)]


@pytest.fixture(scope="module")
def rig(site, demo_pmap, tmp_path_factory):
    r = Rig(site, demo_pmap, tmp_path_factory.mktemp("pub") / "site.db")
    r.values[:] = np.where([p.is_bit for p in r.pmap.points], 0.0, 20.0)
    r.quality[:] = GOOD
    r.publish()
    yield r
    r.close()


class Got:
    """Every data change a subscription delivered: (name, value, source time)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float, float]] = []
        self.new = asyncio.Event()

    def datachange_notification(self, node, val, data) -> None:
        dv = data.monitored_item.Value
        self.items.append((node.nodeid.Identifier, val, dv.SourceTimestamp.timestamp()))
        self.new.set()

    async def until(self, n: int, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while len(self.items) < n:
            assert time.monotonic() < end, f"{len(self.items)} of {n} changes arrived"
            self.new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.new.wait(), 0.5)


def _sends(rig: Rig, sid: int) -> list[float]:
    """Wrap the server side of subscription ``sid``: the monotonic time of each
    NotificationMessage it sends that carries data changes."""
    isub = rig.face.server.iserver.subscription_service.subscriptions[sid]
    times: list[float] = []
    cb = isub.pub_result_callback

    async def sent(result, *rest):
        data = result.NotificationMessage.NotificationData
        if any(isinstance(n, ua.DataChangeNotification) for n in data):
            times.append(time.monotonic())
        return await cb(result, *rest)

    isub.pub_result_callback = sent
    return times


async def _one_item_at_rest(
    rig: Rig, c: Client, name: str, period: float
) -> tuple[Got, list[float]]:
    """A subscription at ``period`` s monitoring ``name``, its first value in, the
    times its server side sends, and one whole interval gone by (the cycle is free)."""
    got = Got()
    sub = await c.create_subscription(period * 1000, got)
    await sub.subscribe_data_change(c.get_node(rig.node_id(name)))
    await got.until(1)
    sends = _sends(rig, sub.subscription_id)
    await asyncio.sleep(period + 0.3)
    return got, sends


def test_every_change_of_each_scan_reaches_every_subscription_once(rig, demo_pmap):
    pos = [demo_pmap.position(n) for n in NAMES]

    async def fn(c: Client) -> tuple[list, list, list[float]]:
        a, b = Got(), Got()
        for got in (a, b):
            sub = await c.create_subscription(100, got)
            await sub.subscribe_data_change([c.get_node(rig.node_id(n)) for n in NAMES])
        await a.until(len(NAMES))
        await b.until(len(NAMES))
        a.items.clear(), b.items.clear()
        scans = []
        for k in range(5):
            rig.values[pos] = 30.0 + k + np.arange(len(pos)) / 10
            await asyncio.to_thread(rig.publish)
            scans.append(rig.t)
        await a.until(5 * len(NAMES))
        await b.until(5 * len(NAMES))
        await asyncio.sleep(0.5)  # nothing more may come
        return a.items, b.items, scans

    a, b, scans = rig.client(None, fn)
    want = {(n, 30.0 + k + j / 10, scans[k]) for k in range(5) for j, n in enumerate(NAMES)}
    for got in (a, b):
        assert len(got) == len(want)
        assert {(n, round(v, 6), t) for n, v, t in got} == {(n, round(v, 6), t) for n, v, t in want}


def test_an_item_with_an_absolute_deadband_keeps_asyncuas_rule(rig, demo_pmap):
    i = demo_pmap.position("tank03.fluid_temp")

    async def fn(c: Client) -> list[float]:
        got = Got()
        sub = await c.create_subscription(50, got)
        flt = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute,
            DeadbandValue=1.0,
        )
        node = c.get_node(rig.node_id("tank03.fluid_temp"))
        await sub._subscribe(node, ua.AttributeIds.Value, flt, queuesize=1)
        await got.until(1)
        base = got.items[-1][1]
        for dx in (0.4, 0.8, 2.5):  # 0.4 and 0.8 within the deadband of the last sent
            rig.values[i] = base + dx
            await asyncio.to_thread(rig.publish)
        await got.until(2)
        await asyncio.sleep(0.5)
        return [v for _, v, _ in got.items]

    values = rig.client(None, fn)
    assert len(values) == 2 and values[1] == pytest.approx(values[0] + 2.5)


def test_a_scans_changes_leave_at_once_not_at_the_next_cycle(rig, demo_pmap):
    period = 4.0
    i = demo_pmap.position("tank05.fluid_temp")

    async def fn(c: Client) -> tuple[float, float]:
        got, sends = await _one_item_at_rest(rig, c, "tank05.fluid_temp", period)
        rig.values[i] += 3.0
        t_apply = time.monotonic()
        await asyncio.to_thread(rig.publish)
        await got.until(2)
        assert len(sends) == 1
        return t_apply, sends[0]

    t_apply, t_sent = rig.client(None, fn)
    # asyncua's own cycle would hold it until its timer, up to 4 s later
    assert t_sent - t_apply < period / 2


def test_never_two_messages_within_one_publishing_interval(rig, demo_pmap):
    period = 1.5
    i = demo_pmap.position("tank06.fluid_temp")

    async def fn(c: Client) -> list[float]:
        got, sends = await _one_item_at_rest(rig, c, "tank06.fluid_temp", period)
        for k in range(2):  # a scan, and the next one right after its message left
            rig.values[i] = 40.0 + k
            await asyncio.to_thread(rig.publish)
            end = time.monotonic() + 20.0
            while len(sends) <= k:
                assert time.monotonic() < end, "the change was not sent"
                await asyncio.sleep(0.01)
        await got.until(3)
        return sends

    sent = rig.client(None, fn)
    assert len(sent) == 2 and sent[1] - sent[0] >= period - 0.01, sent


def test_the_bench_client_records_every_change_with_its_scan(rig, demo_pmap, site, tmp_path):
    """``bench opcua``'s client (another process, its own fast decoder) against the
    server's fast encoder: every change of each scan, with its scan's time."""
    pos = [demo_pmap.position(n) for n in NAMES]
    (tmp_path / "nodes.txt").write_text("".join(n + "\n" for n in NAMES), encoding="utf-8")
    out = tmp_path / "got.npz"
    client = subprocess.Popen(
        [sys.executable, "-m", "thermogate.controller.opcua.benchclient", rig.url,
         namespace_uri(site), str(tmp_path / "nodes.txt"), str(out), "--publish-ms", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdout.readline().split() == ["subscribed", str(len(NAMES))]

        async def fn(c: Client) -> list[float]:
            seen = Got()  # a barrier: the last scan has been sent to subscribers
            sub = await c.create_subscription(100, seen)
            await sub.subscribe_data_change(c.get_node(rig.node_id(NAMES[-1])))
            await seen.until(1)
            scans = []
            for k in range(3):  # a scan each time the last one has left (queue size 1)
                rig.values[pos] = 50.0 + k + np.arange(len(pos)) / 10
                await asyncio.to_thread(rig.publish)
                scans.append(rig.t)
                await seen.until(2 + k)
                await asyncio.sleep(0.5)  # five publishing intervals
            await asyncio.sleep(1.5)  # the other process's copy travels as fast
            return scans

        scans = rig.client(None, fn)
    finally:
        client.send_signal(signal.SIGTERM)
        _, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    got = np.load(out)
    pairs = set(zip(got["item"].tolist(), np.round(got["source"], 3).tolist(), strict=True))
    want = {(j, round(t, 3)) for t in scans for j in range(len(NAMES))}
    assert want <= pairs
    assert (got["arrived"] >= got["source"]).all()


def test_the_bench_splits_each_changes_latency_into_its_legs() -> None:
    from thermogate.controller.opcua.bench import _latency_parts

    # two scans inside the window, one outside; the server applied each 10 ms after
    # its scan and flushed 5 ms later; the client got the changes 3 and 7 ms after that
    timings = [(100.0, 100.010, 100.015), (101.0, 101.010, 101.015), (99.0, 99.5, 99.6)]
    src = np.array([100.0, 100.0, 101.0])
    arrived = np.array([100.018, 100.022, 101.018])
    parts = _latency_parts(timings, 100.0, 101.0, src, arrived)
    assert parts["to_server"]["p99"] == pytest.approx(10.0, abs=0.05)
    assert parts["apply"]["p50"] == pytest.approx(5.0, abs=0.05)
    assert parts["to_client"]["p50"] == pytest.approx(3.0, abs=0.05)
    assert parts["to_client"]["p99"] == pytest.approx(7.0, abs=0.1)
    assert _latency_parts([], 100.0, 101.0, src, arrived) == {}


def test_the_naive_servers_latency_has_no_leg_after_its_apply() -> None:
    """asyncua publishes the naive server's values while its apply runs: a change
    may reach the client before the apply ends, so no ``to_client`` leg is given."""
    from thermogate.controller.opcua.bench import _latency_parts

    timings = [(100.0, 100.010, 100.900)]  # a slow apply, point by point
    src = np.array([100.0, 100.0])
    arrived = np.array([100.100, 100.950])  # the first before the apply ended
    parts = _latency_parts(timings, 100.0, 100.0, src, arrived, flushes=False)
    assert set(parts) == {"to_server", "apply"}
    assert parts["apply"]["p50"] == pytest.approx(890.0, abs=0.5)
    assert "to_client" in _latency_parts(timings, 100.0, 100.0, src, arrived)
