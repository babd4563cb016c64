"""Who is at the console: login, wrong PIN, lockout and the idle timeout, on a fake clock."""

from __future__ import annotations

import pytest

from thermogate.controller.console.session import Session, SessionConfig
from thermogate.controller.core.commands import Principal
from thermogate.controller.users import AuthError

PINS = {"tech": ("4321", "operator"), "vic": ("9999", "viewer")}


def auth(name: str, pin: str) -> Principal:
    if PINS.get(name, ("", ""))[0] != pin or not pin:
        raise AuthError("login failed")
    return Principal(name, PINS[name][1], "console")


def login(s: Session, name: str, pin: str, now: float) -> str:
    assert s.begin_login(now) == ""
    s.enter_user(name, now)
    assert s.stage == "pin"
    return s.enter_pin(pin, now, auth)


def test_a_login_with_the_right_pin_logs_in_and_is_audited():
    s = Session()
    assert login(s, "tech", "4321", 0.0) == "logged in as tech (role operator)"
    assert (s.user, s.role, s.stage) == ("tech", "operator", "")
    [a] = s.journal
    assert (a.who, a.where, a.target, a.ok) == ("tech", "console", "console.login", True)
    assert s.logout(5.0) == "tech logged out" and s.user is None
    assert s.journal[-1].why == "console session of tech: logged out"


def test_a_wrong_pin_and_an_unknown_user_get_the_same_answer_and_are_audited():
    s = Session()
    assert login(s, "tech", "0000", 0.0) == login(s, "mallory", "4321", 1.0)
    assert s.user is None
    assert [(a.who, a.ok) for a in s.journal] == [("tech", False), ("mallory", False)]
    assert "login failed for 'tech'" in s.journal[0].why


def test_repeated_failures_lock_logins_out_for_a_while_even_with_the_right_pin():
    s = Session(SessionConfig(max_failed=3, lockout_s=300.0))
    for k in range(2):
        assert "login failed" in login(s, "tech", "1111", float(k))
    assert "locked for 5:00 min" in login(s, "tech", "2222", 2.0)
    assert any("console locked" in a.why and not a.ok for a in s.journal)
    assert "try again in 4:50 min" in s.begin_login(12.0)  # not even asked
    s.stage = "pin"  # a PIN typed while the lockout began is not checked
    assert "locked" in s.enter_pin("4321", 20.0, auth) and s.user is None
    assert login(s, "tech", "4321", 302.1).startswith("logged in")


def test_an_idle_session_times_out_with_a_message_and_an_audit_row():
    s = Session(SessionConfig(idle_timeout_s=600.0))
    login(s, "tech", "4321", 0.0)
    s.touch(100.0)
    assert s.expire(699.0) is None
    assert "idle timeout in 0:01 min" in s.whoami(699.0)
    note = s.expire(700.0)
    assert note is not None and "timed out" in note and "10 min idle" in note
    assert s.user is None and "logged out after 10 min idle" in s.journal[-1].why


def test_a_login_left_at_its_prompt_is_abandoned():
    s = Session()
    s.begin_login(0.0)
    assert s.expire(59.0) is None
    assert s.expire(60.0) == "login abandoned (no answer within 60 s)" and s.stage == ""


@pytest.mark.parametrize("who", ["tech", "vic"])
def test_whoami_says_the_role(who):
    s = Session()
    login(s, who, PINS[who][0], 0.0)
    assert s.whoami(0.0).startswith(f"{who} (role {PINS[who][1]})")
