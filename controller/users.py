"""Users and their roles, in the site's database; secrets stored as slow salted hashes.

Who may give which command is decided by the core's command path
(``core/commands.py``) from a user's role: ``viewer`` (read), ``operator``
(modes, setpoints, overrides, acknowledge, curtailments), ``engineer`` (also
loop tunings and interlock resets). The faces (the CLI, the serial console,
OPC UA) authenticate a user here and hand the core a ``Principal``.

A password or a console PIN is never stored: only ``scrypt`` (RFC 7914) of it
with a random 16-byte salt, at n = 2^14, r = 8, p = 1 (~16 MiB and tens of ms
per check: cheap for a login, expensive for a guesser); the parameters are
stored with each hash so they can be raised later without breaking old
entries. A wrong user and a wrong secret take the same time and give the same
answer. Adding, removing and changing a user is recorded in the audit table.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from thermogate.plc.errors import ThermogateError

from .core.commands import ROLES, Principal, plain_why
from .historian.schema import open_side_db

NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
MIN_SECRET_LEN = 4  # a 4-digit console PIN is the shortest secret accepted
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS "users" (
    "name" TEXT PRIMARY KEY,
    "role" TEXT NOT NULL,
    "salt" BLOB NOT NULL,
    "hash" BLOB NOT NULL,
    "n" INTEGER NOT NULL,
    "r" INTEGER NOT NULL,
    "p" INTEGER NOT NULL,
    "created" REAL NOT NULL,
    "updated" REAL NOT NULL
);
"""


class AuthError(ThermogateError):
    """A user name and secret that do not match (deliberately says no more)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created: float
    updated: float


def _hash(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=HASH_BYTES
    )


#: compared against when the user does not exist, so that case costs the same
_DUMMY_SALT = bytes(SALT_BYTES)


class UserStore:
    """The ``users`` table of a site database (created on first use)."""

    def __init__(self, db: str | Path) -> None:
        self.path = Path(db)
        self._conn = open_side_db(self.path, _SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- management -----------------------------------------------------------
    def add(self, name: str, role: str, secret: str, *, by: str, where: str = "cli") -> User:
        _check_name(name)
        _check_role(role)
        _check_secret(secret)
        if self.get(name) is not None:
            raise ThermogateError(f"user '{name}' exists already (remove it first, or passwd)")
        now = time.time()
        salt = secrets.token_bytes(SALT_BYTES)
        digest = _hash(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        with self._conn:
            self._conn.execute(
                'INSERT INTO "users" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
                (name, role, salt, digest, SCRYPT_N, SCRYPT_R, SCRYPT_P, now, now),
            )
            self._audit(now, by, where, f"user:{name}", f"user {name} added with role {role}")
        return User(name, role, now, now)

    def set_secret(self, name: str, secret: str, *, by: str, where: str = "cli") -> None:
        _check_secret(secret)
        if self.get(name) is None:
            raise ThermogateError(f"no user '{name}'")
        now = time.time()
        salt = secrets.token_bytes(SALT_BYTES)
        digest = _hash(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        with self._conn:
            self._conn.execute(
                'UPDATE "users" SET "salt" = ?, "hash" = ?, "n" = ?, "r" = ?, "p" = ?, '
                '"updated" = ? WHERE "name" = ?',
                (salt, digest, SCRYPT_N, SCRYPT_R, SCRYPT_P, now, name),
            )
            self._audit(now, by, where, f"user:{name}", f"password/PIN of {name} changed")

    def remove(self, name: str, *, by: str, where: str = "cli") -> None:
        user = self.get(name)
        if user is None:
            known = ", ".join(u.name for u in self.list()) or "none"
            raise ThermogateError(f"no user '{name}' (users: {known})")
        now = time.time()
        with self._conn:
            self._conn.execute('DELETE FROM "users" WHERE "name" = ?', (name,))
            self._audit(now, by, where, f"user:{name}", f"user {name} (role {user.role}) removed")

    def get(self, name: str) -> User | None:
        row = self._conn.execute(
            'SELECT "name", "role", "created", "updated" FROM "users" WHERE "name" = ?', (name,)
        ).fetchone()
        return None if row is None else User(*row)

    def list(self) -> list[User]:
        rows = self._conn.execute(
            'SELECT "name", "role", "created", "updated" FROM "users" ORDER BY "name"'
        ).fetchall()
        return [User(*r) for r in rows]

    # -- authentication ------------------------------------------------------------
    def authenticate(self, name: str, secret: str, face: str) -> Principal:
        """The user's ``Principal`` for ``face`` if the secret matches; else ``AuthError``."""
        row = self._conn.execute(
            'SELECT "role", "salt", "hash", "n", "r", "p" FROM "users" WHERE "name" = ?', (name,)
        ).fetchone()
        if row is None:
            _hash(secret, _DUMMY_SALT, SCRYPT_N, SCRYPT_R, SCRYPT_P)  # same time either way
            raise AuthError("unknown user or wrong password/PIN")
        role, salt, digest, n, r, p = row
        if not hmac.compare_digest(_hash(secret, salt, n, r, p), digest):
            raise AuthError("unknown user or wrong password/PIN")
        return Principal(name, role, face)

    def login(self, name: str, secret: str, face: str) -> Principal:
        """``authenticate``, and a refusal in the audit log (``<face>.login``, not
        ok), as the console keeps its own: a guesser at the command line or over
        OPC UA left no trace but a log line."""
        try:
            return self.authenticate(name, secret, face)
        except AuthError:
            self.refuse_login(name, face, "unknown user or wrong password")
            raise

    def refuse_login(self, name: str, face: str, reason: str) -> None:
        """A refused login in the audit log (``<face>.login``, not ok), with why."""
        shown = plain_why(name[:32]) or "(empty)"
        why = f"{face} login failed for '{shown}' ({reason})"
        with self._conn:
            self._audit(time.time(), shown, face, f"{face}.login", why, ok=False)

    def _audit(
        self, t: float, by: str, where: str, point: str, why: str, *, ok: bool = True
    ) -> None:
        self._conn.execute(
            'INSERT INTO "audit" ("t", "who", "where", "point", "old", "new", "why", "ok") '
            "VALUES (?, ?, ?, ?, NULL, NULL, ?, ?)",
            (t, by, where, point, why, int(ok)),
        )


def check_new_user(name: str, role: str) -> None:
    """A user name and role ``add`` would take (checked before asking for a secret)."""
    _check_name(name)
    _check_role(role)


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ThermogateError(
            f"'{name}' is not a valid user name (lower-case letter first, then a-z, 0-9, "
            "_ . -; at most 32 characters)"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ThermogateError(f"'{role}' is not a role (one of {', '.join(ROLES)})")


def _check_secret(secret: str) -> None:
    if len(secret) < MIN_SECRET_LEN:
        raise ThermogateError(f"a password or PIN needs at least {MIN_SECRET_LEN} characters")
