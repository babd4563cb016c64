"""Security of the OPC UA face: endpoints, the server's certificate, client trust, users.

**Endpoints.** Only the policies listed in ``[opcua] policies`` are offered
(asyncua 2.1 offers every policy, None included, until it is told otherwise).
The default is Basic256Sha256 SignAndEncrypt and Sign plus the two newer
policies asyncua 2.1 serves, Aes128Sha256RsaOaep and Aes256Sha256RsaPss
(SignAndEncrypt). Their Sign variants may be listed too; the SHA-1 policies
(Basic128Rsa15, Basic256) are refused: OPC UA deprecated them. ``None`` is
offered only when listed, and serves anonymous reading only: a user-name login
needs a signed channel (otherwise the session could be taken over on the wire
although the password itself travels encrypted), so ``None`` without
``anonymous = "read"`` would offer nothing and is refused as a configuration
mistake.

**Anonymous access** (``anonymous = "read"``) is read-only: browse, read,
subscribe, history. The permission rules refuse an anonymous Write outright;
a method call is let through (ConditionRefresh is a method and read-only
clients need it), and every method that changes something goes through the
one command path, which refuses the anonymous ``viewer``. Anonymous over the
None policy on an endpoint that is not loopback is refused unless
``allow_remote_anonymous = true``: it lets anyone on that network read the
whole plant (process values, alarms, what is shed when: reconnaissance)
without a certificate or a password, and unsigned, so the values a display
shows can be forged in transit. A site with a read-only display that speaks
no security can still have it, but has to say so. Anonymous over a signed
policy needs no such key: the client application then holds a trusted
certificate.

**The server's certificate** lives in ``<pki_dir>/own/``: ``cert.der`` and
``key.pem`` (PKCS#8, mode 0600; the PKI directories are 0700), generated on
the first run (RSA 2048, self-signed, ten years, the application URI and the
host's names and addresses as subject alternative names) and then reused as
they are: never regenerated, since clients have trusted that very
certificate. A file that does not load is an error naming it; a certificate
without its key is an error too (remove both to start afresh).

**Client certificates.** ``<pki_dir>/trusted/`` holds the client certificates
an administrator trusts (drop a ``.der`` or ``.pem`` in; a trusted CA
certificate trusts what it issued). It is read again on every connection, so a
certificate moved there is trusted from the next attempt on, without a
restart. An unknown client certificate is refused with
``BadSecurityChecksFailed`` (the specific reason is logged, not told to the
peer, as OPC UA Part 4 advises) and written to ``<pki_dir>/rejected/`` named
by its SHA-1 thumbprint (OPC UA's thumbprint), for an administrator to move
to ``trusted/``. With ``trust_on_first_use = true`` the first client
certificate is trusted while ``trusted/`` holds none: it is copied there and
a warning is logged. Only the first: trusting every newcomer would make the
trust list meaningless, so TOFU is a pairing step for commissioning, after
which unknown certificates are rejected as usual.

**Users** log in with a user name and password from thermogate's users
(``thermogate users``); the session carries a ``ThermogateUser`` with the
name and role, and ``principal_of`` turns it into the command path's
``Principal`` (re-reading the role, so a user removed or demoted meanwhile
loses the rights at once). Every session gets asyncua's ``UserRole.User``,
never ``Admin`` (which bypasses the address space's access checks); what a
user may do is the command path's decision. X.509 identity tokens
(certificate-only users) are not offered and are refused.

**Two gaps of asyncua 2.1 closed here.** (1) Its certificate validator sees the
certificate the client *names* in CreateSession, not the secure channel's:
a client could open a channel with an untrusted key and name a trusted
(public) certificate, or none. (2) A channel with the None policy is always
accepted (it is needed for GetEndpoints), even when None is not offered, and
a session on it then passes no permission check. Both are closed at session
activation, where asyncua hands the user manager the channel's own
certificate: it must be trusted, and a channel without one (None) gets no
session unless None is offered, and then only an anonymous one.

**Call order** (see ``secure``): ``Server()``, ``await server.init()``,
``await secure(...)``, build the address space, ``await server.start()``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import ipaddress
import logging
import os
import socket
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen, uacrypto
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from thermogate.plc.config import Section
from thermogate.plc.errors import ConfigError, ThermogateError

from ..core.commands import Principal
from ..users import AuthError, UserStore
from .typed import node_id

_log = logging.getLogger("thermogate.opcua.security")

#: the policies a site may list, by their config names; the SHA-1 ones are left out
POLICIES: dict[str, ua.SecurityPolicyType] = {
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Aes128Sha256RsaOaep_SignAndEncrypt": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes128Sha256RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes256Sha256RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    "Aes256Sha256RsaPss_Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "None": ua.SecurityPolicyType.NoSecurity,
}
_DEPRECATED = (
    "Basic128Rsa15_Sign",
    "Basic128Rsa15_SignAndEncrypt",
    "Basic256_Sign",
    "Basic256_SignAndEncrypt",
)
DEFAULT_POLICIES = (
    "Basic256Sha256_SignAndEncrypt",
    "Basic256Sha256_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)
DEMO_POLICIES = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign", "None")
DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/thermogate"
PKI_DIR_NAME = "opcua-pki"  # beside the database unless pki_dir says otherwise
CERT_DAYS = 3650  # never regenerated (clients trust it), so it must outlive a deployment
MAX_REJECTED = 256  # a peer making up certificates must not fill the disk
ANONYMOUS = Principal("anonymous", "viewer", "opcua")


def default_application_uri() -> str:
    return f"urn:thermogate:{socket.gethostname()}"


# -- configuration ---------------------------------------------------------------
@dataclass(frozen=True)
class OpcUaSecurity:
    """The ``[opcua]`` section's security settings (checked on construction).

    ``pki_dir`` None means ``opcua-pki`` beside the database (``pki_path``).
    """

    endpoint: str = DEFAULT_ENDPOINT
    policies: tuple[str, ...] = DEFAULT_POLICIES
    pki_dir: Path | None = None
    trust_on_first_use: bool = False
    anonymous: str = "off"  # off | read
    allow_remote_anonymous: bool = False
    application_uri: str = field(default_factory=default_application_uri)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", tuple(self.policies))
        problem = _problem(self)
        if problem is not None:
            raise ConfigError("[opcua]", f"opcua.{problem[0]}", problem[1])

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    def on_port(self, port: int) -> OpcUaSecurity:
        """These settings with the endpoint's port replaced (host and path kept)."""
        parts = urlsplit(self.endpoint)
        host = parts.netloc.rsplit(":", 1)[0]  # a port is always there (checked)
        return replace(self, endpoint=urlunsplit(parts._replace(netloc=f"{host}:{port}")))

    @property
    def offers_none(self) -> bool:
        return "None" in self.policies

    @property
    def policy_types(self) -> list[ua.SecurityPolicyType]:
        return [POLICIES[name] for name in self.policies]

    def pki_path(self, db: Path) -> Path:
        """Where the certificates live for the database ``db``."""
        return self.pki_dir if self.pki_dir is not None else Path(db).parent / PKI_DIR_NAME


def parse_opcua(sec: Section, base: Path) -> OpcUaSecurity:
    """The ``[opcua]`` section of a run configuration (``pki_dir`` relative to ``base``)."""
    endpoint = sec.get_str("endpoint", DEFAULT_ENDPOINT)
    policies = tuple(sec.get_str_list("policies", list(DEFAULT_POLICIES)))
    pki = sec.get_str("pki_dir", None)
    if pki is not None and not pki.strip():
        raise sec.error("pki_dir", "must not be empty (leave it out for opcua-pki beside the db)")
    tofu = sec.get_bool("trust_on_first_use", False)
    anonymous = sec.get_str("anonymous", "off", ("off", "read"))
    allow_remote = sec.get_bool("allow_remote_anonymous", False)
    uri = sec.get_str("application_uri", None)
    sec.check_unused()
    try:
        return OpcUaSecurity(
            endpoint=endpoint,
            policies=policies,
            pki_dir=None if pki is None else base / pki,
            trust_on_first_use=tofu,
            anonymous=anonymous,
            allow_remote_anonymous=allow_remote,
            application_uri=default_application_uri() if uri is None else uri,
        )
    except ConfigError as exc:
        raise sec.error(exc.key.removeprefix("opcua."), exc.reason) from None


def demo_security(db_dir: Path) -> OpcUaSecurity:
    """The demo's: Basic256Sha256 Sign and SignAndEncrypt, and None for anonymous
    read-only access on loopback."""
    return OpcUaSecurity(
        policies=DEMO_POLICIES, pki_dir=Path(db_dir) / PKI_DIR_NAME, anonymous="read"
    )


def _problem(s: OpcUaSecurity) -> tuple[str, str] | None:
    """The first (key, reason) wrong with ``s``, or None."""
    parts = urlsplit(s.endpoint)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        return "endpoint", f"'{s.endpoint}' is not an opc.tcp://host:port/path URL"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not port:
        return "endpoint", f"'{s.endpoint}' needs a port in 1..65535 (OPC UA's is 4840)"
    if not s.policies:
        return "policies", "expected a non-empty array of strings"
    for i, name in enumerate(s.policies):
        if name in _DEPRECATED:
            newer = name.split("_")[-1]
            return "policies", (
                f"'{name}' is deprecated by OPC UA (SHA-1); use Basic256Sha256_{newer}"
            )
        if name not in POLICIES:
            lower = {k.lower(): k for k in (*POLICIES, *_DEPRECATED)}
            near = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
            hint = f"; did you mean '{lower[near[0]]}'?" if near else ""
            return "policies", f"unknown policy '{name}'{hint} (known: {', '.join(POLICIES)})"
        if name in s.policies[:i]:
            return "policies", f"'{name}' is listed twice"
    if s.anonymous not in ("off", "read"):
        return "anonymous", f"'{s.anonymous}' is not one of off, read"
    if s.offers_none and s.anonymous != "read":
        return "policies", (
            "'None' serves anonymous reading only (a login needs a signed channel): "
            'set anonymous = "read" or drop None'
        )
    remote = not _is_loopback(s.host)
    if s.offers_none and s.anonymous == "read" and remote and not s.allow_remote_anonymous:
        return "anonymous", (
            f"anonymous reading over the None policy on {s.host}, not loopback, lets "
            "anyone on that network read the plant without a certificate or password; "
            "set allow_remote_anonymous = true if that is meant"
        )
    uri = s.application_uri
    if not uri or ":" not in uri or any(c.isspace() for c in uri):
        return "application_uri", f"'{uri}' is not a URI such as urn:thermogate:hall-1"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- users -----------------------------------------------------------------------
@dataclass
class ThermogateUser(User):
    """asyncua's session user, with thermogate's role (asyncua's role is always User)."""

    role: UserRole = UserRole.User  # never Admin: that bypasses the access checks
    thermogate_role: str = "viewer"
    anonymous: bool = False
    db: Path | None = None  # where principal_of re-reads the role; None: keep the login's


def principal_of(user: User | None) -> Principal:
    """The command path's ``Principal`` for an OPC UA session's user.

    Anonymous, None or a user this module did not make: ``anonymous``/``viewer``.
    A logged-in user: the name and its role now in the user store (a user removed
    since the login is a ``viewer``; so is every user if the store cannot be read:
    fail safe).
    """
    if not isinstance(user, ThermogateUser) or user.anonymous or not user.name:
        return ANONYMOUS
    role = user.thermogate_role
    if user.db is not None:
        try:
            with UserStore(user.db) as store:
                now = store.get(user.name)
        except (ThermogateError, sqlite3.Error) as exc:
            _log.error(
                "OPC UA user %s taken as a viewer: the user store failed (%s)", user.name, exc
            )
            return Principal(user.name, "viewer", "opcua")
        if now is None:
            _log.warning("OPC UA user %s was removed since the login: a viewer now", user.name)
            role = "viewer"
        else:
            role = now.role
    return Principal(user.name, role, "opcua")


class ThermogateRules(SimpleRoleRuleset):
    """asyncua's per-request permission check: only this module's users get anything,
    and an anonymous one never writes (see the module docstring for method calls)."""

    def __init__(self) -> None:
        super().__init__()
        # (BrowseNext, which asyncua does not serve, is served by ``browse``)
        browse_next = ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary
        self._user = frozenset(node_id(t) for t in (*USER_TYPES, browse_next))
        self._anonymous = self._user - {node_id(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)}

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        if not isinstance(user, ThermogateUser):
            return False
        return action_type_id in (self._anonymous if user.anonymous else self._user)


class ThermogateUserManager(UserManager):
    """Session activation: the channel's certificate and the user's login.

    asyncua calls ``get_user`` with the secure channel's certificate (DER; empty on
    a None channel), never the one named in CreateSession: the check that counts.
    It runs in the OPC UA event loop and blocks it for one scrypt (tens of ms) per
    login: logins are rare.
    """

    def __init__(self, db: Path, trust: ClientTrust, *, anonymous: bool, offers_none: bool) -> None:
        self.db = Path(db)
        self.trust = trust
        self.anonymous = anonymous
        self.offers_none = offers_none

    def _refuse(self, username: str, reason: str) -> None:
        """A login refused before its password was checked, audited as every refused
        login is (``opcua.login``): a guesser leaves a trace whichever way he tries."""
        try:
            with UserStore(self.db) as store:
                store.refuse_login(username, "opcua", reason)
        except (ThermogateError, sqlite3.Error) as exc:
            _log.error("refused OPC UA login of %r not audited: %s", username, exc)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not certificate:  # b"" from asyncua on a None channel
            if not self.offers_none:
                _log.warning("session on an unsecured channel refused: None is not offered")
                raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
            if username is not None:
                _log.warning(
                    "login of %r over the None policy refused: needs a signed channel", username
                )
                self._refuse(username, "a user name needs a signed channel, not the None policy")
                raise ServiceError(ua.StatusCodes.BadSecurityModeInsufficient)
        else:
            cert = certificate
            if not isinstance(cert, x509.Certificate):
                cert = uacrypto.x509_from_der(bytes(certificate))
            self.trust.check(cert)
        if username is None:
            if not self.anonymous:
                _log.warning("anonymous session refused: anonymous access is off")
                return None
            return ThermogateUser(role=UserRole.User, name=None, anonymous=True)
        try:
            with UserStore(self.db) as store:
                who = store.login(username, password or "", "opcua")
        except AuthError:
            _log.warning("OPC UA login refused for %r: unknown user or wrong password", username)
            return None
        except (ThermogateError, sqlite3.Error) as exc:
            _log.error("OPC UA login refused for %r: the user store failed (%s)", username, exc)
            return None
        _log.info("OPC UA login: %s (%s)", who.user, who.role)
        return ThermogateUser(
            role=UserRole.User, name=who.user, thermogate_role=who.role, db=self.db
        )


# -- client certificates ------------------------------------------------------------
def thumbprint(cert: x509.Certificate) -> str:
    """OPC UA's thumbprint: SHA-1 of the DER certificate, lower-case hex."""
    return cert.fingerprint(hashes.SHA1()).hex()  # the spec's choice (not a MAC)


def describe(cert: x509.Certificate) -> str:
    """``'UaExpert' urn:host:UaExpert (SHA-1 3f2a…)`` for log lines."""
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else cert.subject.rfc4514_string()
    return f"'{name}' {' '.join(_san_uris(cert)) or '(no URI)'} (SHA-1 {thumbprint(cert)})"


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _time_problem(cert: x509.Certificate) -> str | None:
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    return None


class ClientTrust:
    """The trust list in ``<pki>/trusted``, the ``rejected`` store and TOFU.

    Used from the OPC UA event loop only. ``trusted/`` is listed on every check
    (a few small files; a file is parsed again only when its size or mtime changed),
    so moving a certificate there takes effect on the next connection.
    """

    def __init__(self, pki: Path, *, tofu: bool, max_rejected: int = MAX_REJECTED) -> None:
        self.trusted_dir = Path(pki) / "trusted"
        self.rejected_dir = Path(pki) / "rejected"
        self.tofu = tofu
        self.max_rejected = max_rejected
        self._files: dict[str, tuple[tuple[int, int], x509.Certificate | None]] = {}
        # asyncua's TrustStore policy for certificates issued by a trusted CA
        self._policy = TrustStore([], []).policy_builder

    def trusted(self) -> dict[str, x509.Certificate]:
        """Thumbprint -> certificate of every readable certificate in ``trusted/``."""
        try:
            entries = [e for e in os.scandir(self.trusted_dir) if e.is_file()]
        except FileNotFoundError:
            entries = []
        out: dict[str, x509.Certificate] = {}
        seen: set[str] = set()
        for entry in entries:
            if not entry.name.lower().endswith((".der", ".pem", ".crt", ".cer")):
                continue
            seen.add(entry.name)
            st = entry.stat()
            key = (st.st_mtime_ns, st.st_size)
            cached = self._files.get(entry.name)
            if cached is None or cached[0] != key:
                cached = (key, _read_cert_quiet(Path(entry.path)))
                self._files[entry.name] = cached
            if cached[1] is not None:
                out[thumbprint(cached[1])] = cached[1]
        for gone in set(self._files) - seen:
            del self._files[gone]
        return out

    def is_trusted(self, cert: x509.Certificate) -> bool:
        trusted = self.trusted()
        return thumbprint(cert) in trusted or self._issued_by(cert, trusted)

    def check(self, cert: x509.Certificate) -> None:
        """Return if ``cert`` may connect; else log why, keep it in ``rejected/`` if it
        is unknown, and raise ``ServiceError(BadSecurityChecksFailed)``."""
        trusted = self.trusted()
        if thumbprint(cert) in trusted or self._issued_by(cert, trusted):
            problem = _time_problem(cert)
            if problem is None:
                return
            _log.warning("trusted client certificate %s refused: %s", describe(cert), problem)
            raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        if self.tofu and not trusted and _time_problem(cert) is None:
            path = self._save(self.trusted_dir, cert)
            _log.warning(
                "trust on first use: client certificate %s trusted (saved as %s); further "
                "unknown certificates are rejected",
                describe(cert),
                path,
            )
            return
        saved = self._save_rejected(cert)
        where = f"; saved as {saved}: move it to {self.trusted_dir} to trust it" if saved else ""
        _log.warning("unknown client certificate %s rejected%s", describe(cert), where)
        raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)

    def _issued_by(self, cert: x509.Certificate, trusted: dict[str, x509.Certificate]) -> bool:
        cas = [c for c in trusted.values() if _is_ca(c) and c.subject == cert.issuer]
        if not cas:
            return False
        try:
            verifier = self._policy.store(x509.verification.Store(cas)).build_client_verifier()
            verifier.verify(cert, [])
        except (x509.verification.VerificationError, ValueError):
            return False
        return True

    def _save_rejected(self, cert: x509.Certificate) -> Path | None:
        path = self.rejected_dir / f"{thumbprint(cert)}.der"
        if path.exists():
            return path
        try:
            count = sum(1 for e in os.scandir(self.rejected_dir) if e.is_file())
        except FileNotFoundError:
            count = 0
        if count >= self.max_rejected:
            _log.warning(
                "%s holds %d certificates: not keeping more (clear it)", self.rejected_dir, count
            )
            return None
        return self._save(self.rejected_dir, cert)

    def _save(self, folder: Path, cert: x509.Certificate) -> Path | None:
        path = folder / f"{thumbprint(cert)}.der"
        try:
            _private_dir(folder)
            _write_file(path, cert.public_bytes(serialization.Encoding.DER), 0o644)
        except (OSError, ThermogateError) as exc:
            _log.error("cannot keep client certificate in %s: %s", folder, exc)
            return None
        return path


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _read_cert_quiet(path: Path) -> x509.Certificate | None:
    """A certificate file in ``trusted/``; a bad one is logged and skipped, never fatal."""
    try:
        return _load_cert(path)
    except ThermogateError as exc:
        _log.warning("%s (ignored)", exc)
        return None


class ClientCertificateValidator:
    """asyncua's CreateSession hook (``server.set_certificate_validator``).

    It checks the certificate the client names in CreateSession: its application
    URI against the client's description, then the trust list. With the None
    policy offered it decides nothing: it cannot tell a None channel (where OPC UA
    says the server shall ignore that certificate) from a signed one, so the
    decision is left to session activation, which knows the channel.
    """

    def __init__(self, trust: ClientTrust, *, offers_none: bool) -> None:
        self.trust = trust
        self.offers_none = offers_none

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if self.offers_none:
            return
        if app.ApplicationUri not in _san_uris(cert):
            _log.warning(
                "client certificate %s refused: it does not name the client's application URI %s",
                describe(cert),
                app.ApplicationUri,
            )
            raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
        self.trust.check(cert)


# -- the server's own certificate ---------------------------------------------------
@dataclass(frozen=True)
class OwnCertificate:
    cert_path: Path
    key_path: Path
    cert: x509.Certificate
    generated: bool
    warnings: tuple[str, ...]


def own_certificate(pki: Path, application_uri: str, host: str = "") -> OwnCertificate:
    """Load ``<pki>/own/{cert.der,key.pem}``, generating them on the first run.

    Creates ``own``, ``trusted`` and ``rejected`` (0700). Never regenerates an
    existing certificate or key (clients trust them); a file that does not load,
    or a certificate without its key, is a ``ThermogateError`` naming it.
    ``host`` (the endpoint's) is added to the names of a new certificate.
    """
    warnings: list[str] = []
    for folder in (pki, pki / "own", pki / "trusted", pki / "rejected"):
        note = _private_dir(folder)
        if note:
            warnings.append(note)
    cert_path, key_path = pki / "own" / "cert.der", pki / "own" / "key.pem"
    if key_path.exists():
        key = _load_key(key_path)
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            key_path.chmod(0o600)
            warnings.append(f"{key_path} was readable by others (mode {mode:04o}): set to 0600")
    elif cert_path.exists():
        raise ThermogateError(
            f"{cert_path}: the server certificate's key {key_path.name} is missing; restore "
            f"it, or remove {cert_path.name} to generate a new pair (clients must trust it anew)"
        )
    else:
        key = cert_gen.generate_private_key()
        _write_file(key_path, cert_gen.dump_private_key_as_pem(key), 0o600)
    generated = not cert_path.exists()
    if generated:
        cert = _new_certificate(key, application_uri, host)
        _write_file(cert_path, cert.public_bytes(serialization.Encoding.DER), 0o644)
    else:
        cert = _load_cert(cert_path)
        if cert.public_key() != key.public_key():
            raise ThermogateError(
                f"{cert_path}: does not belong to {key_path} (a different key); restore the "
                "pair, or remove both to generate a new one"
            )
    if application_uri not in _san_uris(cert):
        warnings.append(
            f"{cert_path} names {', '.join(_san_uris(cert)) or 'no URI'}, not the application "
            f"URI {application_uri}: clients will refuse it (remove {pki / 'own'} to "
            "generate a new certificate)"
        )
    problem = _time_problem(cert)
    if problem is not None:
        warnings.append(
            f"{cert_path} is {problem}: clients will refuse it (remove {pki / 'own'} to "
            "generate a new certificate)"
        )
    return OwnCertificate(cert_path, key_path, cert, generated, tuple(warnings))


def _new_certificate(key: rsa.RSAPrivateKey, uri: str, host: str) -> x509.Certificate:
    hostname = socket.gethostname()
    dns = {hostname, "localhost"}
    ips = {ipaddress.ip_address("127.0.0.1")}
    if host:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            dns.add(host)
        else:
            if not ip.is_unspecified:
                ips.add(ip)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    names += [x509.DNSName(d) for d in sorted(dns)]
    names += [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    return cert_gen.generate_self_signed_app_certificate(
        key,
        f"thermogate@{hostname}",
        {"organizationName": "thermogate"},
        names,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=CERT_DAYS,
    )


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ThermogateError(f"{path}: cannot read the server key ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise ThermogateError(
            f"{path}: not an unencrypted PEM private key ({_one_line(exc)}); restore it, or "
            "remove it and cert.der to generate a new pair"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ThermogateError(f"{path}: OPC UA's policies need an RSA key of 2048 bits or more")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ThermogateError(f"{path}: cannot read the certificate ({exc.strerror})") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ThermogateError(f"{path}: not a DER or PEM certificate ({_one_line(exc)})") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())  # cryptography's messages may span lines


def _private_dir(path: Path) -> str | None:
    """Create ``path`` (0700) or tighten it; a note if it had to be tightened."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(0o700)
            return f"{path} was open to others (mode {mode:04o}): set to 0700"
    except OSError as exc:
        raise ThermogateError(f"{path}: cannot create the PKI directory ({exc.strerror})") from None
    return None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the first byte on, atomically (a crash
    leaves the old file or none, never half a key)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a left-over tmp file keeps its old mode otherwise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- wiring --------------------------------------------------------------------------
async def secure(server: Server, sec: OpcUaSecurity, users_db: Path) -> list[str]:
    """Secure ``server`` as ``sec`` says; the lines ``thermogate run`` prints.

    Sets the endpoint URL and the application URI, loads (or first creates) the
    server certificate and key, restricts the policies, installs the permission
    rules, the certificate validator, the identity tokens (user name; anonymous
    only with ``anonymous = "read"``; never X.509) and the user manager.

    Call order, from asyncua 2.1's source: ``Server()``, ``await server.init()``,
    ``await secure(server, sec, db)``, build the address space, ``await
    server.start()``. ``start()`` is what turns the policies, certificate and
    tokens into endpoints (``_setup_server_nodes``), so ``secure`` must come before
    it (it refuses to run after). It may also come before ``init()``: the
    application URI is then handed to ``init()``, which writes it to the
    namespace and server arrays; after ``init()`` it is written directly. The
    validator and user manager are looked up per connection.
    """
    if server.bserver is not None:
        raise ThermogateError("secure() must run before server.start(): endpoints are fixed there")
    pki = sec.pki_path(users_db)
    # key generation takes a moment: keep the event loop free
    own = await asyncio.to_thread(own_certificate, pki, sec.application_uri, sec.host)
    for note in own.warnings:
        _log.warning("%s", note)
    server.set_endpoint(sec.endpoint)
    if node_id(ua.ObjectIds.Server_NamespaceArray) in server.iserver.aspace:
        await server.set_application_uri(sec.application_uri)
    else:
        # before init() the arrays do not exist yet; init() writes this value to them
        server._application_uri = sec.application_uri
    await server.load_certificate(own.cert_path)
    await server.load_private_key(own.key_path)
    trust = ClientTrust(pki, tofu=sec.trust_on_first_use)
    server.set_security_policy(sec.policy_types, permission_ruleset=ThermogateRules())
    server.set_certificate_validator(ClientCertificateValidator(trust, offers_none=sec.offers_none))
    tokens: list[type] = [ua.UserNameIdentityToken]
    if sec.anonymous == "read":
        tokens.append(ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    server.iserver.set_user_manager(
        ThermogateUserManager(
            Path(users_db), trust, anonymous=sec.anonymous == "read", offers_none=sec.offers_none
        )
    )
    server.allow_remote_admin(False)
    return _describe(sec, own, trust)


def _describe(sec: OpcUaSecurity, own: OwnCertificate, trust: ClientTrust) -> list[str]:
    secured = [p.replace("_", " ") for p in sec.policies if p != "None"]
    lines = [f"application {sec.application_uri}"]  # the endpoint heads the banner
    if secured:
        lines.append(f"  policies: {', '.join(secured)}; user-name logins with thermogate users")
    if sec.offers_none:
        where = "loopback only" if _is_loopback(sec.host) else f"{sec.host}, NOT loopback"
        lines.append(f"  policy None: anonymous read-only access ({where}), no logins")
    elif sec.anonymous == "read":
        lines.append("  anonymous read-only access for trusted client applications")
    lines.append(
        f"  server certificate {own.cert_path} (SHA-1 {thumbprint(own.cert)}, "
        f"{'generated now' if own.generated else 'reused'}, valid until "
        f"{own.cert.not_valid_after_utc:%Y-%m-%d})"
    )
    tofu = "; trust on first use: ON until one is trusted" if sec.trust_on_first_use else ""
    lines.append(
        f"  client certificates: {len(trust.trusted())} trusted in {trust.trusted_dir}; "
        f"unknown ones are refused and kept in {trust.rejected_dir}{tofu}"
    )
    lines += [f"  warning: {note}" for note in own.warnings]
    return lines
