"""The terminal a technician talks to: line discipline, session and shell together.

``Console.feed(bytes, now)`` is everything one read from the serial line
causes: the echo, the answers, the prompt, as the bytes to write back.
Commands that change the plant leave through ``give`` (the face's bridge to
the run loop's one command path, as ``console:<user>``) and the command
path's answer is printed verbatim, accepted or refused. The user's role is
read again before each command, so a demoted or removed user's session does
not keep what it had. Any failure inside answers the line with an error and
is logged: the console never dies of what it was sent.

No I/O of its own: the port thread (``port.py``) reads and writes, the
clock comes in with each call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ..core.commands import Command, CommandResult, Principal
from .line import MAX_LINE, Entry, LineDiscipline
from .session import FACE, Authenticate, Session
from .shell import Seen, Shell, Trend, wrap

log = logging.getLogger(__name__)

Give = Callable[[Command, Principal], CommandResult]
#: a user's role now (None: no such user any more)
RoleOf = Callable[[str], str | None]

#: a line's end, a Ctrl-C or a break: the points where echo and answers interleave
_CUT = re.compile(rb"[\r\n\x03\x00]")


class Console:
    """See the module docstring."""

    def __init__(
        self,
        shell: Shell,
        session: Session,
        *,
        give: Give,
        authenticate: Authenticate,
        role_of: RoleOf,
        seen: Callable[[], Seen],
        trend: Trend | None = None,
    ) -> None:
        self.shell = shell
        self.session = session
        self.line = LineDiscipline()
        self._give = give
        self._auth = authenticate
        self._role_of = role_of
        self._seen = seen
        self._trend = trend
        self._hushed = False  # see ``feed``

    # -- what the port calls --------------------------------------------------
    def greet(self, now: float) -> bytes:
        """The banner when the line opens (or comes back)."""
        self.line.reset()
        site = self.shell.site.name
        text = (
            f"\nthermogate console, site '{site}'. 'help' lists the commands;"
            " reading needs no login, changes need 'login'."
        )
        return self._out(text) + self.prompt().encode("ascii", "replace")

    def prompt(self) -> str:
        s = self.session
        if s.stage == "user":
            return "user: "
        if s.stage == "pin":
            return "PIN: "
        who = f" ({s.user})" if s.user else ""
        return f"{self.shell.site.name}{who}> "

    def feed(self, data: bytes, now: float) -> bytes:
        # lines typed ahead (in this read) of a login that was cancelled or
        # refused are a PIN or a user name: never echoed, never run
        self._hushed = False
        out = bytearray()
        start = 0
        for m in _CUT.finditer(data):
            out += self._segment(data[start : m.end()], now)
            start = m.end()
        if start < len(data):
            out += self._segment(data[start:], now)
        return bytes(out)

    def tick(self, now: float) -> bytes:
        """The idle timeout: a notice and a fresh prompt when it logs someone out."""
        note = self.session.expire(now)
        self.line.echo = self.session.stage != "pin"
        if note is None:
            return b""
        self.line.reset()
        return b"\r\n" + self._out(note) + self.prompt().encode("ascii")

    # -- inside ---------------------------------------------------------------
    def _segment(self, data: bytes, now: float) -> bytes:
        self.line.echo = self.session.stage != "pin" and not self._hushed
        fed = self.line.feed(data)
        out = bytearray(fed.echo)
        for entry in fed.entries:
            try:
                text = self._entry(entry, now)
            except Exception as exc:  # the console answers; it never dies of a line
                log.exception("console: the line %r failed", entry.text[:80])
                text = f"error: {type(exc).__name__}: {exc} (logged)"
            out += self._out(text) + self.prompt().encode("ascii", "replace")
            self.line.echo = self.session.stage != "pin" and not self._hushed
        return bytes(out)

    def _entry(self, entry: Entry, now: float) -> str:
        s = self.session
        if entry.kind != "line" and s.stage == "pin":
            self._hushed = True  # what follows in this read is the rest of a PIN
        if entry.kind == "spoilt":
            if s.stage:
                s.cancel_login()
                return "login cancelled: bytes of that line were lost (noise on the line?)"
            return (
                "refused: bytes of that line were not plain text and were lost (noise on "
                "the line, or a key this console does not take); type it again"
            )
        if entry.kind == "line" and self._hushed:
            return "(typed ahead of a cancelled login: discarded)"
        if entry.kind == "cancel":
            if s.stage:
                s.cancel_login()
                return "login cancelled"
            return ""
        if entry.kind == "overlong":
            if s.stage:
                s.cancel_login()
            return f"line too long (over {MAX_LINE} characters): ignored"
        if entry.kind == "break":
            if s.stage:
                s.cancel_login()
            return "(break on the line: the line in progress was discarded)"
        text = entry.text
        if s.stage == "user":
            if not text.strip():
                s.cancel_login()
                return "login cancelled"
            s.enter_user(text, now)
            return ""
        if s.stage == "pin":
            return s.enter_pin(text, now, self._auth)
        s.touch(now)
        words = text.split()
        if not words:
            return ""
        verb = self._session_verb(words[0])
        if verb == "login":
            if len(words) > 2:  # a PIN typed on the line would be echoed: never taken
                usage = self.shell.verb("login").usage
                return f"usage: {usage} (the PIN is asked for, and not echoed)"
            said = s.begin_login(now)
            if s.stage != "user":  # refused (locked out): a user and PIN may follow
                self._hushed = True
            elif len(words) == 2:  # "login tech": the user given, the PIN asked for
                s.enter_user(words[1], now)
            return said
        if verb == "logout":
            return s.logout(now)
        if verb == "whoami":  # the user store's word, not the role at login
            if s.user is not None:
                role = self._role_of(s.user)
                if role is None:
                    return s.drop(now, "logged out: the user no longer exists")
                s.role = role
            return s.whoami(now)
        reply = self.shell.run(text, self._seen(), now, self._trend)
        if reply.command is None:
            return reply.text
        return self._command(reply.command, now)

    def _session_verb(self, word: str) -> str:
        try:
            name = self.shell.verb(word).name
        except Exception:  # an unknown word: the shell answers it
            return ""
        return name if name in ("login", "logout", "whoami") else ""

    def _command(self, cmd: Command, now: float) -> str:
        s = self.session
        if s.user is None:
            return "refused: log in first ('login'): reading needs no login, changes do"
        role = self._role_of(s.user)
        if role is None:
            return "refused: " + s.drop(now, "logged out: the user no longer exists")
        s.role = role
        res = self._give(cmd, Principal(s.user, role, FACE))
        return res.message

    def _out(self, text: str) -> bytes:
        """Text as the terminal gets it: wrapped, CRLF line ends, ASCII."""
        if not text:
            return b""
        body = wrap(text).replace("\n", "\r\n")
        return body.encode("ascii", "replace") + b"\r\n"
