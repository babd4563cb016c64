"""Users and roles: slow salted hashes in the site database, one answer for every failure."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from thermogate.controller.core import Principal
from thermogate.controller.users import AuthError, UserStore
from thermogate.plc.errors import ThermogateError


def test_a_user_authenticates_with_the_right_secret_only(tmp_path):
    db = tmp_path / "site.db"
    with UserStore(db) as users:
        users.add("alice", "operator", "correct horse", by="root")
        assert users.authenticate("alice", "correct horse", "console") == Principal(
            "alice", "operator", "console"
        )
        with pytest.raises(AuthError) as wrong:
            users.authenticate("alice", "correct hors", "console")
        with pytest.raises(AuthError) as nobody:
            users.authenticate("mallory", "correct horse", "console")
    # the same words for a wrong secret and an unknown user: nothing to probe with
    assert str(wrong.value) == str(nobody.value)


def test_no_secret_is_stored_and_equal_secrets_hash_apart(tmp_path):
    db = tmp_path / "site.db"
    with UserStore(db) as users:
        users.add("alice", "operator", "hunter22", by="root")
        users.add("bob", "viewer", "hunter22", by="root")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"hunter22" not in raw
    rows = sqlite3.connect(db).execute('SELECT "salt", "hash", "n" FROM "users"').fetchall()
    assert rows[0][0] != rows[1][0] and rows[0][1] != rows[1][1]
    assert all(n >= 2**14 for _, _, n in rows)


@pytest.mark.parametrize(
    ("name", "role", "secret", "why"),
    [
        ("Alice", "operator", "secret", "not a valid user name"),
        ("alice", "admin", "secret", "not a role"),
        ("alice", "operator", "123", "at least 4 characters"),
    ],
)
def test_a_bad_user_is_refused_with_the_reason(tmp_path, name, role, secret, why):
    with UserStore(tmp_path / "site.db") as users, pytest.raises(ThermogateError, match=why):
        users.add(name, role, secret, by="root")


def test_managing_users_is_audited_and_a_removed_user_cannot_log_in(tmp_path):
    db = tmp_path / "site.db"
    with UserStore(db) as users:
        users.add("carol", "engineer", "s3cret!", by="root")
        with pytest.raises(ThermogateError, match="exists already"):
            users.add("carol", "viewer", "other", by="root")
        users.set_secret("carol", "n3w-s3cret", by="root")
        users.authenticate("carol", "n3w-s3cret", "cli")
        users.remove("carol", by="root")
        with pytest.raises(AuthError):
            users.authenticate("carol", "n3w-s3cret", "cli")
        with pytest.raises(ThermogateError, match="no user 'carol'"):
            users.remove("carol", by="root")
        assert users.list() == []
    audit = sqlite3.connect(db).execute('SELECT "who", "point", "why" FROM "audit"').fetchall()
    assert [a[1] for a in audit] == ["user:carol"] * 3
    assert "added with role engineer" in audit[0][2] and "removed" in audit[2][2]


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "thermogate.controller.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_users_command_takes_secrets_only_from_stdin_or_a_terminal(tmp_path):
    db = str(tmp_path / "site.db")
    add = ("users", "add", "dave", "--role", "operator", "--db", db, "--password-stdin")
    r = _cli(*add, stdin="pa55word\n")
    assert r.returncode == 0, r.stderr
    r = _cli("users", "list", "--db", db, "--json")
    assert r.returncode == 0 and '"role": "operator"' in r.stdout
    # no terminal and no --password-stdin: refused, not read from anywhere else
    r = _cli("users", "add", "erin", "--role", "viewer", "--db", db)
    assert r.returncode == 2 and "use --password-stdin" in r.stderr
    r = _cli("users", "add", "BAD", "--role", "viewer", "--db", db, "--password-stdin")
    assert r.returncode == 2 and "not a valid user name" in r.stderr


def test_the_command_line_refuses_a_wrong_password_with_exit_1_and_never_makes_a_database(
    tmp_path,
):
    """A wrong password exited 2 (a usage error) where every refusal exits 1;
    `users list` on a mistyped path made an empty database; `--wait -1` was
    taken and then reported as 'no answer within -1 s'."""
    db = str(tmp_path / "site.db")
    r = _cli("users", "add", "dave", "--role", "operator", "--db", db, "--password-stdin",
             stdin="pa55word\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cli("command", "mode", "manual", "--user", "dave", "--db", db, "--password-stdin",
             stdin="wrong\n")  # fmt: skip
    assert r.returncode == 1 and r.stderr.strip() == "refused: unknown user or wrong password/PIN"
    with sqlite3.connect(db) as conn:  # a guesser leaves a trace, as at the console
        sql = 'SELECT who, "where", point, ok, why FROM audit WHERE ok = 0'
        rows = conn.execute(sql).fetchall()
    assert rows == [("dave", "cli", "cli.login", 0, "cli login failed for 'dave' "
                     "(unknown user or wrong password)")]  # fmt: skip
    typo = tmp_path / "typo.db"
    r = _cli("users", "list", "--db", str(typo))
    assert r.returncode == 2 and "no such database" in r.stderr and not typo.exists()
    for wait in ("-1", "0", "nan"):
        r = _cli("command", "mode", "auto", "--db", db, "--wait", wait, "--password-stdin")
        assert r.returncode == 2 and "not a number of seconds" in r.stderr, (wait, r.stderr)
