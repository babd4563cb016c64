"""Commands from the command line to a running controller, through its database.

``thermogate command ...`` authenticates its user against the database's users,
writes the command to the ``commands`` table, and waits for the answer;
``thermogate run`` takes queued commands between two scans, gives each to the
core's command path as that user (``cli:<user>``), and writes the answer back.
The database is the one channel both already share; a command nobody picks up
(no controller running on that database) is withdrawn after the wait, never
applied later by surprise.

Commands travel as JSON: ``{"kind": "OverrideActuator", "args": {...}}``; a
row that does not decode is answered as refused, with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from thermogate.plc.errors import ThermogateError

from .core.commands import (
    Acknowledge,
    ClearCurtailment,
    Command,
    CommandResult,
    OverrideActuator,
    Principal,
    ReleaseUnderFrequency,
    RequestCurtailment,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
    SetTuning,
)
from .historian.schema import open_side_db

KINDS: dict[str, type] = {
    c.__name__: c
    for c in (
        SetMode,
        SetSetpoint,
        OverrideActuator,
        ReturnToAuto,
        Acknowledge,
        ResetInterlock,
        SetTuning,
        RequestCurtailment,
        ClearCurtailment,
        ReleaseUnderFrequency,
    )
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS "commands" (
    "id" INTEGER PRIMARY KEY,
    "t" REAL NOT NULL,
    "user" TEXT NOT NULL,
    "role" TEXT NOT NULL,
    "command" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'queued',
    "message" TEXT,
    "done_t" REAL
);
CREATE INDEX IF NOT EXISTS "commands_status" ON "commands" ("status");
"""


def encode(cmd: Command) -> str:
    return json.dumps({"kind": type(cmd).__name__, "args": asdict(cmd)})


def decode(text: str) -> Command:
    """A command from its JSON; ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(text)
        kind, args = data["kind"], data["args"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a command record ({exc})") from None
    cls = KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown command '{kind}'")
    known = {f.name for f in fields(cls)}
    extra = set(args) - known
    if extra:
        raise ValueError(f"{kind} has no argument {', '.join(sorted(extra))}")
    try:
        cmd: Command = cls(**args)
    except TypeError as exc:
        raise ValueError(f"{kind}: {exc}") from None
    return cmd


class Inbox:
    """The ``commands`` table of a site database (created on first use)."""

    def __init__(self, db: str | Path) -> None:
        self.path = Path(db)
        self._conn = open_side_db(self.path, _SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- the command line's side ------------------------------------------------
    def submit(self, by: Principal, cmd: Command) -> int:
        with self._conn:
            cur = self._conn.execute(
                'INSERT INTO "commands" ("t", "user", "role", "command") VALUES (?, ?, ?, ?)',
                (time.time(), by.user, by.role, encode(cmd)),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def wait(self, cid: int, timeout_s: float, poll_s: float = 0.1) -> tuple[bool, str]:
        """(accepted, message) once answered; withdrawn and ThermogateError after timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            row = self._conn.execute(
                'SELECT "status", "message" FROM "commands" WHERE "id" = ?', (cid,)
            ).fetchone()
            if row is not None and row[0] != "queued":
                return row[0] == "accepted", row[1] or ""
            if time.monotonic() >= deadline:
                with self._conn:
                    n = self._conn.execute(
                        'UPDATE "commands" SET "status" = \'withdrawn\', "done_t" = ? '
                        'WHERE "id" = ? AND "status" = \'queued\'',
                        (time.time(), cid),
                    ).rowcount
                if n:
                    raise ThermogateError(
                        f"no controller answered within {timeout_s:g} s (is `thermogate run` "
                        f"going on {self.path}?); the command was withdrawn"
                    )
                continue  # answered just now
            time.sleep(poll_s)

    # -- the controller's side -------------------------------------------------------
    def take(self) -> list[tuple[int, Principal, Command | str]]:
        """Queued commands, oldest first: (id, who, the command or why it does not decode)."""
        rows = self._conn.execute(
            'SELECT "id", "user", "role", "command" FROM "commands" '
            'WHERE "status" = \'queued\' ORDER BY "id"'
        ).fetchall()
        out: list[tuple[int, Principal, Command | str]] = []
        for cid, user, role, text in rows:
            who = Principal(user, role, "cli")
            try:
                out.append((cid, who, decode(text)))
            except ValueError as exc:
                out.append((cid, who, str(exc)))
        return out

    def answer(self, cid: int, result: CommandResult | str) -> None:
        ok = isinstance(result, CommandResult) and result.accepted
        message = result.message if isinstance(result, CommandResult) else f"refused: {result}"
        with self._conn:
            self._conn.execute(
                'UPDATE "commands" SET "status" = ?, "message" = ?, "done_t" = ? '
                'WHERE "id" = ? AND "status" = \'queued\'',
                ("accepted" if ok else "refused", message, time.time(), cid),
            )

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            'SELECT "id", "t", "user", "command", "status", "message" FROM "commands" '
            'ORDER BY "id" DESC LIMIT ?',
            (limit,),
        ).fetchall()
        keys = ("id", "t", "user", "command", "status", "message")
        return [dict(zip(keys, r, strict=True)) for r in rows]
