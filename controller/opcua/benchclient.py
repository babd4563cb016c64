"""The SCADA client of ``thermogate bench opcua``: another process, as a real one is.

``python -m thermogate.controller.opcua.benchclient URL NAMESPACE NODES_FILE``
connects anonymously (the bench's server offers read-only anonymous on
loopback), monitors every point named in ``NODES_FILE`` (one per line; a
point's NodeId is its name in the site's ``NAMESPACE``) in one
subscription at ``--publish-ms``, prints ``subscribed N`` once the items are
created, and on SIGTERM prints ``notifications K`` (data changes received)
and exits. The bench stops it with SIGSTOP to play a client that hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from asyncua import Client, ua

CHUNK = 1000  # monitored items per CreateMonitoredItems request


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.n += 1


async def _main(url: str, namespace: str, nodes_file: str, publish_ms: float) -> int:
    with open(nodes_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    count = _Count()
    client = Client(url, timeout=30)
    async with client:
        idx = await client.get_namespace_index(namespace)
        ids = [ua.NodeId(n, idx) for n in names]
        sub = await client.create_subscription(publish_ms, count)
        made = 0
        for i in range(0, len(ids), CHUNK):
            nodes = [client.get_node(n) for n in ids[i : i + CHUNK]]
            handles = await sub.subscribe_data_change(nodes, queuesize=1)
            made += sum(1 for h in handles if isinstance(h, int))
        print(f"subscribed {made}", flush=True)
        await stop.wait()
    print(f"notifications {count.n}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchclient", description=__doc__)
    ap.add_argument("url")
    ap.add_argument("namespace")
    ap.add_argument("nodes_file")
    ap.add_argument("--publish-ms", type=float, default=250.0)
    a = ap.parse_args(argv)
    return asyncio.run(_main(a.url, a.namespace, a.nodes_file, a.publish_ms))


if __name__ == "__main__":
    sys.exit(main())
