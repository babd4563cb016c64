"""``thermogate users`` and ``thermogate command``: people and the command path.

``users add|remove|passwd|list`` manage who may command the site and with
which role (``users.py``); ``command ...`` gives one command to the
controller running on the same database, as an authenticated user, through
the core's one command path (``inbox.py``), and prints its answer. Secrets
are asked on the terminal without echo, or read from standard input with
``--password-stdin`` (for scripts); they never appear in arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from thermogate.plc.durations import parse_duration
from thermogate.plc.errors import ThermogateError

from .core.commands import (
    Acknowledge,
    ClearCurtailment,
    Command,
    OverrideActuator,
    ReleaseUnderFrequency,
    RequestCurtailment,
    ResetInterlock,
    ReturnToAuto,
    SetMode,
    SetSetpoint,
    SetTuning,
)
from .inbox import Inbox
from .users import ROLES, AuthError, UserStore, check_new_user

DEFAULT_DB = "thermogate.db"
EXIT_REFUSED = 1


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _secret(args: argparse.Namespace, prompt: str, confirm: bool = False) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ThermogateError("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ThermogateError("no terminal to ask the password on: use --password-stdin")
    secret = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != secret:
        raise ThermogateError("the two entries differ")
    return secret


def _db(args: argparse.Namespace) -> Path:
    return Path(args.db or DEFAULT_DB)


def _wait_arg(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not (math.isfinite(s) and 0.0 < s <= 3600.0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds in (0, 3600]")
    return s


@contextlib.contextmanager
def _database_errors(db: Path) -> Iterator[None]:
    """A database that cannot be written (full disk, read-only file) in one line."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise ThermogateError(f"{db}: the database cannot be written now ({exc})") from None


# -- thermogate users -----------------------------------------------------------
def users_cli(args: argparse.Namespace) -> int:
    me = getpass.getuser()
    db = _db(args)
    if args.action != "add" and not db.exists():  # only adding the first user makes one
        raise ThermogateError(f"{db}: no such database (the controller's --db)")
    with _database_errors(db), UserStore(db) as store:
        if args.action == "add":
            check_new_user(args.name, args.role)
            if store.get(args.name) is not None:
                raise ThermogateError(f"user '{args.name}' exists already")
            secret = _secret(args, f"password/PIN for {args.name}: ", confirm=True)
            store.add(args.name, args.role, secret, by=me)
            print(f"user {args.name} added with role {args.role}")
        elif args.action == "passwd":
            secret = _secret(args, f"new password/PIN for {args.name}: ", confirm=True)
            store.set_secret(args.name, secret, by=me)
            print(f"password/PIN of {args.name} changed")
        elif args.action == "remove":
            store.remove(args.name, by=me)
            print(f"user {args.name} removed")
        else:
            users = store.list()
            if args.json:
                print(json.dumps([{"name": u.name, "role": u.role} for u in users]))
            elif not users:
                print(
                    f"no users in {_db(args)} (add one: thermogate users add NAME --role operator)"
                )
            else:
                for u in users:
                    print(f"{u.name:<20} {u.role}")
    return 0


# -- thermogate command -------------------------------------------------------------
def _command(args: argparse.Namespace) -> Command:
    why = args.why or ""
    what = args.what
    if what == "mode":
        return SetMode(args.mode, why)
    if what == "setpoint":
        return SetSetpoint(args.loop, args.value, why)
    if what == "override":
        return OverrideActuator(args.point, args.value, args.duration, why)
    if what == "auto":
        return ReturnToAuto(None if args.point == "all" else args.point, why)
    if what == "ack":
        return Acknowledge(None if args.alarm == "all" else args.alarm, why)
    if what == "reset":
        return ResetInterlock(None if args.load == "all" else args.load, why)
    if what == "tune":
        return SetTuning(args.loop, args.kp, args.ki, args.kd, why)
    if what == "curtail":
        return RequestCurtailment(args.limit_kw, args.duration, None, why)
    if what == "release":
        return ReleaseUnderFrequency(why)
    if args.id == "all":
        return ClearCurtailment(None, why)
    try:
        return ClearCurtailment(int(args.id), why)
    except ValueError:
        raise ThermogateError(f"'{args.id}' is not a curtailment number (or all)") from None


def command_cli(args: argparse.Namespace) -> int:
    cmd = _command(args)
    db = _db(args)
    if not db.exists():
        raise ThermogateError(f"{db}: no such database (the controller's --db)")
    user = args.user or getpass.getuser()
    with _database_errors(db):
        with UserStore(db) as store:
            if not store.list():
                raise ThermogateError(
                    f"{db} has no users yet: add one with "
                    "`thermogate users add NAME --role operator`"
                )
            try:
                who = store.login(user, _secret(args, f"password for {user}: "), "cli")
            except AuthError as exc:  # a refusal like any other (exit 1), saying no more
                print(f"refused: {exc}", file=sys.stderr)
                return EXIT_REFUSED
        inbox = Inbox(db)
        try:
            accepted, message = inbox.wait(inbox.submit(who, cmd), args.wait)
        finally:
            inbox.close()
    print(message)
    return 0 if accepted else EXIT_REFUSED


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``users`` and ``command`` on the ``thermogate`` parser."""
    up = sub.add_parser("users", help="people who may command the site, and their roles")
    usub = up.add_subparsers(dest="action", metavar="ACTION")
    usub.required = True
    for name, text in (
        ("add", "add a user with a role (asks the password/PIN twice)"),
        ("passwd", "change a user's password/PIN"),
        ("remove", "remove a user"),
        ("list", "list users and roles"),
    ):
        p = usub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("name")
        if name == "add":
            p.add_argument("--role", required=True, choices=ROLES)
        if name in ("add", "passwd"):
            p.add_argument("--password-stdin", action="store_true", help="read it from stdin")
        if name == "list":
            p.add_argument("--json", action="store_true")
        p.add_argument("--db", metavar="FILE", help=f"site database (default {DEFAULT_DB})")
        p.set_defaults(func=users_cli)

    cp = sub.add_parser(
        "command", help="give a command to the running controller (as a user, audited)"
    )
    csub = cp.add_subparsers(dest="what", metavar="WHAT")
    csub.required = True

    def add(name: str, text: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=text)
        p.add_argument("--db", metavar="FILE", help=f"site database (default {DEFAULT_DB})")
        p.add_argument("--user", help="who gives it (default: your login name)")
        p.add_argument("--why", help="the reason, for the audit log")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        p.add_argument(
            "--wait",
            type=_wait_arg,
            default=10.0,
            metavar="S",
            help="seconds to wait for the answer",
        )
        p.set_defaults(func=command_cli)
        return p

    add("mode", "set the mode").add_argument("mode", choices=("auto", "manual", "maintenance"))
    p = add("setpoint", "set a control loop's setpoint")
    p.add_argument("loop", help="control loop name, or the point it measures")
    p.add_argument("value", type=float)
    p = add("override", "hold an actuator at a value for a while (it expires by itself)")
    p.add_argument("point")
    p.add_argument("value", type=float)
    p.add_argument(
        "--for",
        dest="duration",
        type=_duration_arg,
        default=600.0,
        metavar="DURATION",
        help="how long (default 10m; at most 24h)",
    )
    add("auto", "return an overridden actuator to auto").add_argument("point", help="POINT or all")
    add("ack", "acknowledge an alarm").add_argument("alarm", help="ALARM key or all")
    add("reset", "reset a latched trip (engineer)").add_argument("load", help="LOAD or all")
    p = add("tune", "change a loop's PID gains (engineer)")
    p.add_argument("loop")
    for g in ("kp", "ki", "kd"):
        p.add_argument(f"--{g}", type=float)
    p = add("curtail", "limit the site's import for a while")
    p.add_argument("limit_kw", type=float)
    p.add_argument("--for", dest="duration", type=_duration_arg, required=True, metavar="DURATION")
    add("clear-curtailment", "end a curtailment").add_argument("id", help="its number, or all")
    add("release", "release the load an under-frequency trip shed (once the grid has recovered)")
