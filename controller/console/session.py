"""Who is at the console: login, logout, lockout and the idle timeout.

Reading needs no login; a change to the plant needs a user of the site's
database (``thermogate users add``) logged in with their PIN. ``login`` asks
for the user, then for the PIN without echo. After ``max_failed`` failed
logins in a row the console refuses logins for ``lockout_s`` (a guesser at
the port gets five tries per five minutes, not scrypt's speed); a session
idle for ``idle_timeout_s`` is logged out with a message, as is one whose
user was removed. Every login, failed login, lockout, logout and timeout
leaves an ``Audit`` record in ``journal`` (from where: ``console``) for the
face to store on the run loop.

Pure: the time comes in with each call and authentication is injected, so
tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..core.commands import Principal
from ..signals import Audit
from ..users import AuthError

FACE = "console"
TARGET = "console.login"
IDLE_TIMEOUT_S = 600.0  # a console left logged in on a laptop logs itself out in 10 min
MAX_FAILED = 5  # failed logins in a row before the lockout
LOCKOUT_S = 300.0
LOGIN_PROMPT_S = 60.0  # a login left at its prompt this long is abandoned

Authenticate = Callable[[str, str], Principal]


@dataclass(frozen=True)
class SessionConfig:
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_failed: int = MAX_FAILED
    lockout_s: float = LOCKOUT_S


class Session:
    """See the module docstring. ``stage`` is ``""`` (a command line), ``"user"``
    (the login asked for a user name) or ``"pin"`` (it asked for the PIN)."""

    def __init__(
        self, cfg: SessionConfig | None = None, journal: deque[Audit] | None = None
    ) -> None:
        self.cfg = cfg or SessionConfig()
        self.user: str | None = None
        self.role: str | None = None
        self.stage = ""
        #: audit rows for the face to store (appended here, taken by the run loop)
        self.journal: deque[Audit] = deque() if journal is None else journal
        self._pending_user = ""
        self._last = -math.inf  # the last keystroke line (idle timeout)
        self._prompted = -math.inf  # when the login prompt was shown
        self._failed = 0
        self._locked_until = -math.inf

    @property
    def logged_in(self) -> bool:
        return self.user is not None

    def locked(self, now: float) -> float:
        """Seconds the lockout still lasts (0: not locked)."""
        return max(0.0, self._locked_until - now)

    def touch(self, now: float) -> None:
        self._last = now

    # -- login ----------------------------------------------------------------
    def begin_login(self, now: float) -> str:
        """``login``: the prompt for the user name, or why not."""
        left = self.locked(now)
        if left > 0.0:
            n = self.cfg.max_failed
            return f"login locked after {n} failed logins: try again in {_mmss(left)}"
        self.stage = "user"
        self._prompted = now
        return ""

    def enter_user(self, name: str, now: float) -> None:
        self._pending_user = name.strip()
        self.stage = "pin"
        self._prompted = now

    def enter_pin(self, pin: str, now: float, auth: Authenticate) -> str:
        """Check the PIN of the pending user; the answer to print."""
        name, self._pending_user, self.stage = self._pending_user, "", ""
        left = self.locked(now)
        if left > 0.0:  # locked while the PIN was typed: not even checked
            return f"login locked: try again in {_mmss(left)}"
        try:
            who = auth(name, pin)
        except AuthError:
            return self._failed_login(name, now)
        was = self.user
        self.user, self.role = who.user, who.role
        self._failed = 0
        self._last = now
        self._audit(now, who.user, True, f"console login of {who.user} (role {who.role})")
        if was is not None and was != who.user:
            self._audit(now, was, True, f"console session of {was} ended by a login of {who.user}")
        return f"logged in as {who.user} (role {who.role})"

    def cancel_login(self) -> None:
        self.stage, self._pending_user = "", ""

    def _failed_login(self, name: str, now: float) -> str:
        self._failed += 1
        shown = name[:32] or "(empty)"
        self._audit(
            now, shown, False, f"console login failed for '{shown}' (unknown user or wrong PIN)"
        )
        if self._failed >= self.cfg.max_failed:
            self._failed = 0
            self._locked_until = now + self.cfg.lockout_s
            span = _mmss(self.cfg.lockout_s)
            self._audit(
                now,
                shown,
                False,
                f"console locked for {span} after {self.cfg.max_failed} failed logins "
                f"(last tried: '{shown}')",
            )
            return f"login failed; {self.cfg.max_failed} failures: logins locked for {span}"
        return "login failed (unknown user or wrong PIN)"

    # -- logout ---------------------------------------------------------------
    def logout(self, now: float, why: str = "logged out") -> str:
        if self.user is None:
            return "not logged in"
        user, self.user, self.role = self.user, None, None
        self._audit(now, user, True, f"console session of {user}: {why}")
        return f"{user} {why}"

    def expire(self, now: float) -> str | None:
        """Log out an idle session, abandon a stale login prompt; the notice, if any."""
        if self.stage and now - self._prompted >= LOGIN_PROMPT_S:
            self.cancel_login()
            return "login abandoned (no answer within 60 s)"
        if self.user is not None and now - self._last >= self.cfg.idle_timeout_s:
            mins = f"{self.cfg.idle_timeout_s / 60.0:g} min"
            return "session timed out: " + self.logout(now, f"logged out after {mins} idle")
        return None

    def drop(self, now: float, why: str) -> str:
        """End the session for a reason outside it (a removed user, a lost line)."""
        self.cancel_login()
        return self.logout(now, why)

    def whoami(self, now: float) -> str:
        if self.user is None:
            return "not logged in (reading needs no login; 'login' to change anything)"
        left = self.cfg.idle_timeout_s - (now - self._last)
        return f"{self.user} (role {self.role}); idle timeout in {_mmss(max(0.0, left))}"

    def _audit(self, now: float, who: str, ok: bool, why: str) -> None:
        self.journal.append(Audit(now, who, FACE, TARGET, None, None, why, ok))


def _mmss(s: float) -> str:
    s = math.ceil(s)
    return f"{s // 60}:{s % 60:02d} min"
