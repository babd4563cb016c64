"""The SCADA client of ``thermogate bench opcua``: another process, as a real one is.

``python -m thermogate.controller.opcua.benchclient URL NAMESPACE NODES_FILE OUT``
connects anonymously (the bench's server offers read-only anonymous on
loopback), monitors every point named in ``NODES_FILE`` (one per line; a
point's NodeId is its name in the site's ``NAMESPACE``) in one
subscription at ``--publish-ms``, prints ``subscribed N`` once the items are
created, and on SIGTERM saves every data change it received to ``OUT`` (numpy
``.npz``: the item's index, the value's SourceTimestamp — the scan that
produced it — and the wall time its PublishResponse arrived, decoded), prints
``notifications K`` and exits. The bench stops it with SIGSTOP to play a
client that hangs.

A change is timed when its PublishResponse has arrived and been decoded, and
each response is read in one pass, as SCADA drivers read them. Data changes
are decoded by ``wire.decode_datachange`` (the objects asyncua's decoder
gives, ~20x faster: asyncua's generic decoder takes ~130 ms of this client's
time for a 10,000-point scan's changes, which a SCADA driver in a compiled
language does not spend; ``--asyncua-decode`` times them with it instead). asyncua's own
client hands every notification to its handler as an asyncio task of its own
(``--per-item``): at 4,000 changes a scan that alone adds ~0.1 s, and its one
outstanding Publish request waits for it — a cost of that client, not of the
server measured here; ``--per-item`` times changes that way instead.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from typing import Any, cast

import numpy as np
from asyncua import Client, ua

from .typed import node_id
from .wire import install_decoder

CHUNK = 1000  # monitored items per CreateMonitoredItems request


class _Record:
    def __init__(self) -> None:
        self.index: dict[Any, int] = {}  # NodeId -> item
        self.by_handle: dict[int, int] = {}  # client handle -> item
        self.item: list[int] = []
        self.source: list[float] = []
        self.arrived: list[float] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        """asyncua's per-notification handler (``--per-item``)."""
        ts = data.monitored_item.Value.SourceTimestamp
        self.item.append(self.index.get(node.nodeid, -1))
        self.source.append(ts.timestamp() if ts is not None else math.nan)
        self.arrived.append(time.time())

    def publish_result(self, result: ua.PublishResult) -> None:
        """A whole PublishResponse, read in one pass."""
        now = time.time()
        for nd in result.NotificationMessage.NotificationData or ():
            if not isinstance(nd, ua.DataChangeNotification):
                continue
            for it in nd.MonitoredItems:
                ts = it.Value.SourceTimestamp if it.Value is not None else None
                self.item.append(self.by_handle.get(it.ClientHandle, -1))
                self.source.append(ts.timestamp() if ts is not None else math.nan)
                self.arrived.append(now)


async def _main(
    url: str, namespace: str, nodes_file: str, out: str, publish_ms: float, per_item: bool
) -> int:
    with open(nodes_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    rec = _Record()
    # asyncua's watchdog gives up on a server that takes over 1 s to read its state;
    # SCADA drivers wait longer (the naive baseline's server is busy for seconds)
    client = Client(url, timeout=30, watchdog_intervall=10.0)
    async with client:
        idx = await client.get_namespace_index(namespace)
        ids = [node_id(n, idx) for n in names]
        rec.index = {nid: i for i, nid in enumerate(ids)}
        sub = await client.create_subscription(publish_ms, rec)
        made = 0
        for i in range(0, len(ids), CHUNK):
            nodes = [client.get_node(n) for n in ids[i : i + CHUNK]]
            handles = await sub.subscribe_data_change(nodes, queuesize=1)
            made += sum(1 for h in handles if isinstance(h, int))
        rec.by_handle = {
            h: rec.index.get(d.node.nodeid, -1)
            for h, d in sub._monitored_items.items()
            if d.node is not None
        }
        if not per_item:  # the session hands this subscription's responses to us whole
            # cast: create_subscription returns the subscription made, its id set
            sid = cast(int, sub.subscription_id)
            client.uaclient.session._subscription_callbacks[sid] = rec.publish_result
        print(f"subscribed {made}", flush=True)
        await stop.wait()
    np.savez(
        out,
        item=np.asarray(rec.item, np.int32),
        source=np.asarray(rec.source),
        arrived=np.asarray(rec.arrived),
    )
    print(f"notifications {len(rec.item)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchclient", description=__doc__)
    ap.add_argument("url")
    ap.add_argument("namespace")
    ap.add_argument("nodes_file")
    ap.add_argument("out")
    ap.add_argument("--publish-ms", type=float, default=250.0)
    ap.add_argument("--per-item", action="store_true", help="asyncua's per-notification handler")
    ap.add_argument("--asyncua-decode", action="store_true", help="asyncua's own decoder")
    a = ap.parse_args(argv)
    if not a.asyncua_decode:
        install_decoder()
    return asyncio.run(_main(a.url, a.namespace, a.nodes_file, a.out, a.publish_ms, a.per_item))


if __name__ == "__main__":
    sys.exit(main())
