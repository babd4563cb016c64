"""OPC UA security: a real asyncua server secured by ``secure`` and real asyncua clients
over TCP on 127.0.0.1; certificates generated with asyncua's cert_gen; a real user store.

A server's ``init()`` takes seconds (asyncua builds the standard address space), so
the address space is built once per test run into asyncua's shelf (its start-up cache
for slow devices) and two servers serve the whole module, each in its own thread and
event loop (as the controller runs its OPC UA face): the default configuration, and
the demo's policies with trust on first use, paired once when it starts. A test that
changes trust state uses a client certificate no other test touches.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto import cert_gen, security_policies, uacrypto
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from opcua_rig import ClientKeys, make_client

from thermogate.controller.core.commands import Principal
from thermogate.controller.opcua.security import (
    ANONYMOUS,
    ClientTrust,
    OpcUaSecurity,
    ThermogateUser,
    demo_security,
    own_certificate,
    parse_opcua,
    principal_of,
    secure,
)
from thermogate.controller.users import UserStore
from thermogate.plc.config import loads_toml
from thermogate.plc.errors import ConfigError, ThermogateError

APP_URI = "urn:thermogate:test"
STATE = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)
SECURED = {
    "Basic256Sha256_SignAndEncrypt": (
        security_policies.SecurityPolicyBasic256Sha256,
        ua.MessageSecurityMode.SignAndEncrypt,
    ),
    "Basic256Sha256_Sign": (
        security_policies.SecurityPolicyBasic256Sha256,
        ua.MessageSecurityMode.Sign,
    ),
    "Aes128Sha256RsaOaep_SignAndEncrypt": (
        security_policies.SecurityPolicyAes128Sha256RsaOaep,
        ua.MessageSecurityMode.SignAndEncrypt,
    ),
    "Aes256Sha256RsaPss_SignAndEncrypt": (
        security_policies.SecurityPolicyAes256Sha256RsaPss,
        ua.MessageSecurityMode.SignAndEncrypt,
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One RSA key per role, made once: the server's own pair and the clients'."""
    root = tmp_path_factory.mktemp("keys")
    own_certificate(root / "pki-template", APP_URI, "127.0.0.1")
    out: dict[str, Any] = {"pki": root / "pki-template"}
    for name in ("trusted", "moved", "tofu", "late", "spoof", "stranger"):
        out[name] = make_client(root / "clients", name)
    return out


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("db") / "site.db"
    with UserStore(db) as store:
        store.add("olga", "operator", "olga-secret", by="test")
        store.add("vera", "viewer", "vera-secret", by="test")
    return db


@pytest.fixture(scope="module")
def aspace_shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """asyncua's shelf of the standard address space, built once for all xdist workers."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers
    shelf = root / "opcua-aspace"
    with open(root / "opcua-aspace.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shelf.exists():

            async def build() -> None:
                await Server().init(shelf)

            asyncio.run(build())
            # asyncua looks for a file named like the shelf, which dbm.dumb (this
            # Python's dbm) never creates: without it, it would build afresh each time
            shelf.touch()
    return shelf


def pki_from(template: Path, dest: Path, *trusted: ClientKeys) -> Path:
    shutil.copytree(template, dest)
    for k in trusted:
        shutil.copy(k.cert, dest / "trusted" / k.cert.name)
    return dest


class ServedInThread:
    """An asyncua server secured by ``secure``, in its own thread and event loop.

    ``users`` collects the session user of every read (from asyncua's PreRead
    callback), to see what ``principal_of`` makes of them; ``Setpoint`` is a
    writable variable for the write checks.
    """

    def __init__(
        self, sec: OpcUaSecurity, db: Path, shelf: Path, *, secure_first: bool = False
    ) -> None:
        self.url = sec.endpoint
        self.pki = sec.pki_path(db)
        self.users: list[Any] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.lines = self.run(self._start(sec, db, shelf, secure_first))
        except BaseException:
            self.close()
            raise

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(
        self, sec: OpcUaSecurity, db: Path, shelf: Path, secure_first: bool
    ) -> list[str]:
        self.server = Server()
        if secure_first:  # the other call order secure() supports
            lines = await secure(self.server, sec, db)
            await self.server.init(shelf)
        else:
            await self.server.init(shelf)
            lines = await secure(self.server, sec, db)
        idx = await self.server.register_namespace("urn:thermogate:test:space")
        self.setpoint = await self.server.nodes.objects.add_variable(idx, "Setpoint", 1.0)
        await self.setpoint.set_writable()
        self.server.subscribe_server_callback(CallbackType.PreRead, self._seen)
        await self.server.start()
        return lines

    async def _seen(self, event: Any, _dispatcher: Any) -> None:
        if event.is_external:
            self.users.append(event.user)

    def close(self) -> None:
        if getattr(self.server, "bserver", None) is not None:
            self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def served(sec: OpcUaSecurity, db: Path, shelf: Path, **kw: Any) -> Iterator[ServedInThread]:
    srv = ServedInThread(sec, db, shelf, **kw)
    try:
        yield srv
    finally:
        srv.close()


def config(pki: Path, **kw: Any) -> OpcUaSecurity:
    return OpcUaSecurity(
        endpoint=f"opc.tcp://127.0.0.1:{free_port()}/thermogate",
        pki_dir=pki,
        application_uri=APP_URI,
        **kw,
    )


@pytest.fixture(scope="module")
def default_server(keys, users_db, aspace_shelf, tmp_path_factory):
    """Default policies, anonymous off, no TOFU; the "trusted" client is trusted."""
    pki = pki_from(keys["pki"], tmp_path_factory.mktemp("default") / "pki", keys["trusted"])
    with served(config(pki), users_db, aspace_shelf) as srv:
        yield srv


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def demo_server(keys, users_db, aspace_shelf, tmp_path_factory):
    """The demo's policies and anonymous read, with trust on first use and an empty
    trust list, secured before ``init()``; paired with the "tofu" client on start
    (an operator login): ``paired`` is what that logged."""
    pki = pki_from(keys["pki"], tmp_path_factory.mktemp("demo") / "pki")
    demo = demo_security(pki.parent)
    sec = config(pki, policies=demo.policies, anonymous=demo.anonymous, trust_on_first_use=True)
    with served(sec, users_db, aspace_shelf, secure_first=True) as srv:
        log = logging.getLogger("thermogate.opcua.security")
        collect = Collect()
        log.addHandler(collect)
        try:
            asyncio.run(session(srv, keys["tofu"], user="olga", password="olga-secret"))
        finally:
            log.removeHandler(collect)
        srv.paired = collect.messages
        yield srv


async def session(
    srv: ServedInThread,
    client: ClientKeys | None,
    *,
    policy: str = "Basic256Sha256_SignAndEncrypt",
    user: str | None = None,
    password: str | None = None,
    write: float | None = None,
) -> ua.StatusCode | None:
    """Connect, read the server state (and write ``Setpoint`` if asked), disconnect.

    Raises what the connection raised; returns the write's status code."""
    c = Client(srv.url, timeout=10)
    if client is not None:
        c.application_uri = client.uri
        cls, mode = SECURED[policy]
        await c.set_security(
            cls,
            str(client.cert),
            str(client.key),
            server_certificate=str(srv.pki / "own" / "cert.der"),
            mode=mode,
        )
    if user is not None:
        c.set_user(user)
        c.set_password(password or "")
    await c.connect()
    try:
        assert await c.get_node(STATE).read_value() == ua.ServerState.Running
        if write is None:
            return None
        node = c.get_node(srv.setpoint.nodeid)
        dv = ua.DataValue(ua.Variant(write, ua.VariantType.Double))
        result = await c.uaclient.write_attributes([node.nodeid], [dv], ua.AttributeIds.Value)
        return result[0]
    finally:
        await c.disconnect()


def refused(coro: Any) -> int:
    """The status code a connection attempt was refused with."""
    with pytest.raises(ua.UaStatusCodeError) as info:
        asyncio.run(coro)
    return info.value.code


# -- endpoints ---------------------------------------------------------------------
def test_default_policies_offer_no_none_endpoint_and_a_none_client_is_refused(default_server):
    async def endpoints() -> list[ua.EndpointDescription]:
        return await Client(default_server.url, timeout=10).connect_and_get_server_endpoints()

    offered = {(e.SecurityPolicyUri, e.SecurityMode) for e in asyncio.run(endpoints())}
    assert offered == {(cls.URI, mode) for cls, mode in SECURED.values()}
    with pytest.raises(ua.UaError, match="No matching endpoints"):
        asyncio.run(session(default_server, None))


def test_a_client_ignoring_the_endpoints_gets_no_session_on_a_none_channel(
    default_server, monkeypatch
):
    # asyncua accepts a None channel always (for discovery); a client that then
    # creates a session on it anyway, even with a valid login, is refused at activation
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, mode, uri: eps[0]))
    code = refused(session(default_server, None, user="olga", password="olga-secret"))
    assert code == ua.StatusCodes.BadSecurityPolicyRejected


# -- trusted clients and users ---------------------------------------------------------
@pytest.mark.parametrize("policy", sorted(SECURED))
def test_trusted_client_logs_in_as_operator_on_every_default_policy(default_server, keys, policy):
    default_server.users.clear()
    status = asyncio.run(
        session(
            default_server,
            keys["trusted"],
            policy=policy,
            user="olga",
            password="olga-secret",
            write=2.0,
        )
    )
    assert status is not None and status.is_good()  # asyncua's rules let a user write
    assert default_server.users
    for user in default_server.users:
        assert isinstance(user, ThermogateUser)
        assert principal_of(user) == Principal("olga", "operator", "opcua")


def login_refusals(users_db) -> list[tuple]:
    """The audit's refused OPC UA logins: (who, where, point, ok, why), oldest first."""
    with sqlite3.connect(users_db) as conn:
        return conn.execute(
            "SELECT who, \"where\", point, ok, why FROM audit WHERE point = 'opcua.login'"
        ).fetchall()


def test_wrong_password_and_unknown_user_are_refused_and_audited(default_server, keys, users_db):
    before = len(login_refusals(users_db))
    for name, secret in (("olga", "not-her-secret"), ("nobody", "olga-secret")):
        code = refused(session(default_server, keys["trusted"], user=name, password=secret))
        assert code == ua.StatusCodes.BadUserAccessDenied
    new = [r[:4] for r in login_refusals(users_db)[before:]]
    assert new == [("olga", "opcua", "opcua.login", 0), ("nobody", "opcua", "opcua.login", 0)]


def test_anonymous_is_refused_when_anonymous_is_off(default_server, keys):
    async def tokens() -> set[ua.UserTokenType]:
        eps = await Client(default_server.url, timeout=10).connect_and_get_server_endpoints()
        return {t.TokenType for e in eps for t in e.UserIdentityTokens}

    assert asyncio.run(tokens()) == {ua.UserTokenType.UserName}  # nor X.509 users
    # asyncua's client sends an anonymous token all the same: the server refuses it
    code = refused(session(default_server, keys["trusted"]))
    assert code == ua.StatusCodes.BadIdentityTokenRejected


def test_principal_of_rereads_the_role_and_a_removed_user_is_a_viewer(tmp_path):
    db = tmp_path / "roles.db"
    with UserStore(db) as store:
        store.add("otto", "engineer", "otto-secret", by="test")
    user = ThermogateUser(name="otto", thermogate_role="engineer", db=db)
    assert principal_of(user) == Principal("otto", "engineer", "opcua")
    with UserStore(db) as store:
        store.remove("otto", by="test")
    assert principal_of(user) == Principal("otto", "viewer", "opcua")
    assert principal_of(None) == ANONYMOUS
    assert principal_of(ThermogateUser(anonymous=True)) == ANONYMOUS


# -- client certificates -----------------------------------------------------------------
def test_unknown_certificate_is_rejected_kept_and_trusted_once_moved(default_server, keys):
    moved = keys["moved"]
    code = refused(session(default_server, moved, user="olga", password="olga-secret"))
    assert code == ua.StatusCodes.BadSecurityChecksFailed
    kept = default_server.pki / "rejected" / f"{moved.thumb}.der"
    assert kept.read_bytes() == moved.cert.read_bytes()
    kept.rename(default_server.pki / "trusted" / kept.name)  # what an administrator does
    asyncio.run(session(default_server, moved, user="olga", password="olga-secret"))


def test_a_session_naming_a_trusted_certificate_over_an_untrusted_channel_is_refused(
    default_server, keys
):
    # the channel is opened with "spoof"'s key; CreateSession names the trusted
    # client's (public) certificate, which asyncua's validator alone would accept
    spoof, trusted = keys["spoof"], keys["trusted"]

    async def attempt() -> None:
        c = Client(default_server.url, timeout=10)
        c.application_uri = trusted.uri
        await c.set_security(
            security_policies.SecurityPolicyBasic256Sha256,
            str(spoof.cert),
            str(spoof.key),
            server_certificate=str(default_server.pki / "own" / "cert.der"),
        )
        c.set_user("olga")
        c.set_password("olga-secret")
        await c.connect_socket()
        try:
            await c.send_hello()
            await c.open_secure_channel()
            c.security_policy.host_certificate = trusted.cert.read_bytes()
            # the server signs for the channel's certificate: skip the client's check
            c.security_policy.asymmetric_cryptography.verify = lambda data, sig: None
            await c.create_session()
            await c.activate_session(username="olga", password="olga-secret")
        finally:
            c.disconnect_socket()

    assert refused(attempt()) == ua.StatusCodes.BadSecurityChecksFailed
    assert (default_server.pki / "rejected" / f"{spoof.thumb}.der").exists()


def test_trust_on_first_use_trusts_the_first_certificate_only(demo_server, keys):
    tofu, late = keys["tofu"], keys["late"]
    assert any("trust on first use: ON" in line for line in demo_server.lines)
    assert any(m.startswith("trust on first use: client certificate") for m in demo_server.paired)
    trusted = demo_server.pki / "trusted" / f"{tofu.thumb}.der"
    assert trusted.read_bytes() == tofu.cert.read_bytes()
    asyncio.run(session(demo_server, tofu, user="olga", password="olga-secret"))  # and stays
    code = refused(session(demo_server, late, user="olga", password="olga-secret"))
    assert code == ua.StatusCodes.BadSecurityChecksFailed
    assert (demo_server.pki / "rejected" / f"{late.thumb}.der").exists()
    assert not (demo_server.pki / "trusted" / f"{late.thumb}.der").exists()


def test_a_certificate_issued_by_a_trusted_ca_is_trusted_and_a_bad_file_is_skipped(tmp_path):
    ca_key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(
        ca_key, "site CA", {}, [x509.UniformResourceIdentifier("urn:test:ca")], [], days=30
    )
    leaf_key = cert_gen.generate_private_key()
    csr = cert_gen.generate_app_certificate_signing_request(
        leaf_key,
        "scada",
        {},
        [x509.UniformResourceIdentifier("urn:test:scada")],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    leaf = cert_gen.sign_certificate_request(csr, ca, ca_key, days=30)
    trust = ClientTrust(tmp_path, tofu=False)
    assert not trust.is_trusted(leaf)
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "broken.der").write_bytes(b"not a certificate")
    (tmp_path / "trusted" / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    assert trust.is_trusted(leaf)
    assert len(trust.trusted()) == 1


# -- anonymous ------------------------------------------------------------------------------
def test_demo_anonymous_reads_over_none_but_never_writes(demo_server):
    demo_server.users.clear()
    asyncio.run(session(demo_server, None))
    assert demo_server.users
    assert all(principal_of(u) == ANONYMOUS for u in demo_server.users)
    # the permission rules refuse the whole Write request, before any node sees it
    assert refused(session(demo_server, None, write=5.0)) == ua.StatusCodes.BadUserAccessDenied
    assert any("anonymous read-only access (loopback only)" in line for line in demo_server.lines)
    # secured before init(): init() wrote the application URI where OPC UA wants it
    assert demo_server.run(demo_server.server.get_namespace_array())[1] == APP_URI


def test_demo_login_over_none_is_refused_and_audited_but_works_on_a_signed_channel(
    demo_server, keys, users_db
):
    before = len(login_refusals(users_db))
    code = refused(session(demo_server, None, user="olga", password="olga-secret"))
    assert code == ua.StatusCodes.BadSecurityModeInsufficient
    # refused before the password was checked, and audited as every refused login is
    [(who, where, point, ok, why)] = login_refusals(users_db)[before:]
    assert (who, where, point, ok) == ("olga", "opcua", "opcua.login", 0)
    assert "needs a signed channel" in why
    demo_server.users.clear()
    asyncio.run(
        session(
            demo_server,
            keys["tofu"],  # trusted when the fixture paired it
            policy="Basic256Sha256_Sign",
            user="vera",
            password="vera-secret",
        )
    )
    assert principal_of(demo_server.users[0]) == Principal("vera", "viewer", "opcua")


def test_demo_still_rejects_an_unknown_certificate_on_a_signed_channel(demo_server, keys):
    stranger = keys["stranger"]
    code = refused(session(demo_server, stranger, user="olga", password="olga-secret"))
    assert code == ua.StatusCodes.BadSecurityChecksFailed
    assert (demo_server.pki / "rejected" / f"{stranger.thumb}.der").exists()


# -- the server's own certificate --------------------------------------------------------------
def test_own_key_is_0600_and_the_certificate_is_reused_across_two_starts(
    default_server, users_db, tmp_path
):
    pki = tmp_path / "pki"
    sec = config(pki)

    async def secure_once() -> tuple[list[str], bytes]:
        server = Server()  # secure() needs no init(); start() is not what reuses the pair
        lines = await secure(server, sec, users_db)
        return lines, uacrypto.der_from_x509(server.iserver.certificate)

    first, cert1 = asyncio.run(secure_once())
    assert stat.S_IMODE((pki / "own" / "key.pem").stat().st_mode) == 0o600
    for folder in (pki, pki / "own", pki / "trusted", pki / "rejected"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert any("generated now" in line for line in first)
    second, cert2 = asyncio.run(secure_once())
    assert any("reused" in line for line in second)
    assert cert1 == cert2 == (pki / "own" / "cert.der").read_bytes()
    san = x509.load_der_x509_certificate(cert1).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert APP_URI in san.value.get_values_for_type(x509.UniformResourceIdentifier)
    # a started server offers the certificate on disk on every endpoint
    eps = default_server.run(default_server.server.get_endpoints())
    own = (default_server.pki / "own" / "cert.der").read_bytes()
    assert eps and all(e.ServerCertificate == own for e in eps)


def test_corrupt_or_lone_own_files_are_one_line_errors_naming_them(keys, tmp_path):
    pki = pki_from(keys["pki"], tmp_path / "pki")
    cert = pki / "own" / "cert.der"
    cert.write_bytes(b"garbage")
    with pytest.raises(ThermogateError, match=r"cert\.der: not a DER or PEM certificate") as e:
        own_certificate(pki, APP_URI)
    assert "\n" not in str(e.value)
    shutil.copy(keys["pki"] / "own" / "cert.der", cert)
    (pki / "own" / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n")
    with pytest.raises(ThermogateError, match=r"key\.pem: not an unencrypted PEM private key") as e:
        own_certificate(pki, APP_URI)
    assert "\n" not in str(e.value)
    (pki / "own" / "key.pem").unlink()
    with pytest.raises(ThermogateError, match=r"cert\.der: the server certificate's key key\.pem"):
        own_certificate(pki, APP_URI)
    assert cert.read_bytes() == (keys["pki"] / "own" / "cert.der").read_bytes()  # not replaced


def test_a_loose_key_mode_is_tightened_and_said(keys, tmp_path):
    pki = pki_from(keys["pki"], tmp_path / "pki")
    (pki / "own" / "key.pem").chmod(0o644)
    own = own_certificate(pki, APP_URI)
    assert stat.S_IMODE((pki / "own" / "key.pem").stat().st_mode) == 0o600
    assert any("key.pem was readable by others" in w for w in own.warnings)
    assert not own.generated


# -- configuration ---------------------------------------------------------------------------
def parse(body: str, base: Path = Path("/site")) -> OpcUaSecurity:
    return parse_opcua(loads_toml(f"[opcua]\n{body}", "run.toml").get_section("opcua"), base)


@pytest.mark.parametrize(
    "endpoint, moved",
    [
        ("opc.tcp://127.0.0.1:4840/thermogate", "opc.tcp://127.0.0.1:4841/thermogate"),
        ("opc.tcp://[::1]:4840/ua/site", "opc.tcp://[::1]:4841/ua/site"),
        ("opc.tcp://scada-gw.local:48400", "opc.tcp://scada-gw.local:4841"),
    ],
)
def test_on_port_moves_only_the_endpoints_port(endpoint: str, moved: str):
    sec = parse(f'endpoint = "{endpoint}"\nanonymous = "read"')
    on = sec.on_port(4841)
    assert on.endpoint == moved
    assert (on.policies, on.anonymous, on.host) == (sec.policies, sec.anonymous, sec.host)


def test_defaults_and_the_demo():
    sec = parse("")
    assert sec.endpoint == "opc.tcp://127.0.0.1:4840/thermogate"
    assert sec.policies[:2] == ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign")
    assert not sec.offers_none and sec.anonymous == "off" and not sec.trust_on_first_use
    assert sec.application_uri == f"urn:thermogate:{socket.gethostname()}"
    assert sec.pki_path(Path("/var/lib/tg/site.db")) == Path("/var/lib/tg/opcua-pki")
    assert parse('pki_dir = "pki"').pki_path(Path("/x/site.db")) == Path("/site/pki")
    demo = demo_security(Path("/tmp/demo"))
    assert demo.offers_none and demo.anonymous == "read"
    assert set(demo.policies) == {"Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign", "None"}
    assert demo.pki_path(Path("ignored.db")) == Path("/tmp/demo/opcua-pki")
    remote = parse(
        'endpoint = "opc.tcp://0.0.0.0:4840/tg"\npolicies = ["None"]\n'
        'anonymous = "read"\nallow_remote_anonymous = true'
    )
    assert remote.offers_none


@pytest.mark.parametrize(
    ("body", "key", "says"),
    [
        ('policies = ["Basic256Sha256_Sing"]', "policies", "did you mean 'Basic256Sha256_Sign'"),
        ('policies = ["basic256sha256_signandencrypt"]', "policies", "did you mean"),
        ('policies = ["Basic256_Sign"]', "policies", "deprecated by OPC UA (SHA-1)"),
        ('policies = ["None"]', "policies", 'set anonymous = "read"'),
        ("policies = []", "policies", "non-empty array"),
        ('policies = ["None", "None"]\nanonymous = "read"', "policies", "listed twice"),
        ('anonymous = "write"', "anonymous", "not one of off, read"),
        (
            'endpoint = "opc.tcp://0.0.0.0:4840/tg"\npolicies = ["None"]\nanonymous = "read"',
            "anonymous",
            "allow_remote_anonymous = true",
        ),
        ('endpoint = "http://127.0.0.1:4840/"', "endpoint", "not an opc.tcp://"),
        ('endpoint = "opc.tcp://127.0.0.1/tg"', "endpoint", "needs a port"),
        ('application_uri = "thermogate hall"', "application_uri", "is not a URI"),
        ("trust_on_first_use = 1", "trust_on_first_use", "expected true or false"),
        ('pki_dir = ""', "pki_dir", "must not be empty"),
        ("trust_on_first_us = true", "trust_on_first_us", "did you mean 'trust_on_first_use'"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(body, key, says):
    with pytest.raises(ConfigError) as info:
        parse(body)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"run.toml: opcua.{key}: ")
    assert says in message
