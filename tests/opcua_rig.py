"""A running OPC UA face on the demo site, with a run loop that serves its commands.

The face is the real one (its own thread, asyncua over TCP on a free loopback
port, secured as ``thermogate run``'s demo: Basic256Sha256 for user logins with
a trusted client certificate, None for anonymous reading); the "run loop" is a
thread that gives queued commands to a real ``Controller`` and publishes a
snapshot after each, as ``thermogate run`` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from thermogate.controller.core import Controller
from thermogate.controller.core.commands import Command, CommandResult, Principal
from thermogate.controller.opcua.security import OpcUaSecurity, thumbprint
from thermogate.controller.opcua.server import OpcUaFace, free_endpoint
from thermogate.controller.opcua.snapshot import Snapshot
from thermogate.controller.signals import Audit
from thermogate.controller.users import UserStore
from thermogate.plc.points import GOOD

T = TypeVar("T")
USERS = {
    "olive": ("operator", "olive-pw"),
    "vic": ("viewer", "vic-pw"),
    "erin": ("engineer", "erin-pw"),
}


@dataclass(frozen=True)
class ClientKeys:
    uri: str
    cert: Path
    key: Path
    thumb: str


def make_client(folder: Path, name: str) -> ClientKeys:
    """A client application's certificate and key (as UaExpert makes its own)."""
    key = cert_gen.generate_private_key()
    uri = f"urn:test:{name}"
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (folder / f"{name}.pem").write_bytes(cert_gen.dump_private_key_as_pem(key))
    return ClientKeys(uri, folder / f"{name}.der", folder / f"{name}.pem", thumbprint(cert))


async def login(c: Client, keys: ClientKeys, pki: Path, user: str) -> None:
    """Set ``c`` up to log in as ``user`` (of ``USERS``): a login needs a signed
    channel and a trusted client certificate (``keys``; the server's PKI ``pki``)."""
    c.application_uri = keys.uri
    await c.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        str(keys.cert),
        str(keys.key),
        server_certificate=str(pki / "own" / "cert.der"),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    c.set_user(user)
    c.set_password(USERS[user][1])


class Rig:
    def __init__(self, site, pmap, db) -> None:
        with UserStore(db) as users:
            for name, (role, pw) in USERS.items():
                users.add(name, role, pw, by="test")
        self.ctrl = Controller(site, pmap)
        self.pmap = pmap
        self.audits: list[Audit] = []
        self.values = np.full(len(pmap), 20.0)
        self.quality = np.full(len(pmap), GOOD, np.uint8)
        self.flags = np.zeros(len(pmap), np.uint16)
        self.t = 1_700_000_000.0
        pki = Path(db).parent / "pki"
        self.keys = make_client(Path(db).parent / "client", "scada")
        (pki / "trusted").mkdir(parents=True)
        (pki / "trusted" / "scada.der").write_bytes(self.keys.cert.read_bytes())
        self.pki = pki
        sec = OpcUaSecurity(
            endpoint=free_endpoint(),
            policies=("Basic256Sha256_SignAndEncrypt", "None"),
            pki_dir=pki,
            anonymous="read",
        )
        self.face = OpcUaFace(site, pmap, self.ctrl.topo, sec, db, None, command_timeout_s=5.0)
        self.lines = self.face.start()
        self.url = self.face.endpoint
        self._stop = threading.Event()
        self.serving = True
        #: publish a snapshot after serving commands (False: as if the next scan is late)
        self.publish_on_serve = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.face.stop()

    # -- the run loop ---------------------------------------------------------------
    def _give(self, cmd: Command, by: Principal) -> CommandResult:
        res = self.ctrl.command(cmd, by, time.time())
        self.audits.append(res.audit)
        return res

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.serving and self.face.serve(self._give) and self.publish_on_serve:
                self.publish()
            time.sleep(0.01)

    def snapshot(self) -> Snapshot:
        base = Snapshot.of(self.ctrl, self.t)
        return Snapshot(
            t=self.t,
            values=self.values.copy(),
            quality=self.quality.copy(),
            flags=self.flags.copy(),
            mode=base.mode,
            setpoints=base.setpoints,
            working=base.working,
            alarms=base.alarms,
            status={
                "overrides": {
                    n: {"value": o.value, "by": f"{o.where}:{o.who}"}
                    for n, o in self.ctrl.state.overrides.items()
                }
            },
        )

    def publish(self, wait: bool = True) -> None:
        """Publish the rig's arrays; ``wait``: until the face applied them."""
        self.t += 1.0
        before = self.face.applied
        self.face.publish(self.snapshot())
        deadline = time.monotonic() + 10.0
        while wait and self.face.applied <= before:
            assert time.monotonic() < deadline, "the face did not apply the snapshot"
            time.sleep(0.005)

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.face.space.idx)

    # -- a client ---------------------------------------------------------------------
    def client(
        self, user: str | None = None, fn: Callable[[Client], Awaitable[T]] | None = None
    ) -> T:
        """Run ``fn(client)`` with a client connected as ``user`` (None: anonymous)."""

        async def go() -> T:
            c = Client(self.url, timeout=10)
            if user is not None:
                await login(c, self.keys, self.pki, user)
            async with c:
                assert fn is not None
                return await fn(c)

        return asyncio.run(go())

    def call(self, user: str | None, method: str, *args: Any) -> ua.CallMethodResult:
        """Call a method of the Controller object; the raw result (status and output)."""
        ctl = ua.NodeId("Site/Controller", self.face.space.idx)
        mid = ua.NodeId(f"Site/Controller/{method}", self.face.space.idx)

        async def fn(c: Client) -> ua.CallMethodResult:
            req = ua.CallMethodRequest(ctl, mid, list(args))
            return (await c.uaclient.call([req]))[0]

        return self.client(user, fn)
