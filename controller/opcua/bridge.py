"""Commands from the OPC UA thread to the run loop, which gives them between scans.

The OPC UA server runs in its own thread; the controller's state belongs to
the run loop. A method call or a setpoint write is therefore *submitted* here
and answered through a future once the run loop has *served* it after its
scan (``face.serve(rt.command)``): the command then takes the same path as
every other face's, with its audit, and is never applied half-way through a
scan. A command the run loop has not taken within the caller's timeout is
withdrawn, so it can never be applied later by surprise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from ..core.commands import Command, CommandResult, Principal, _target
from ..signals import Audit

log = logging.getLogger(__name__)

Future = concurrent.futures.Future
#: how long an answer is awaited past a command's deadline: giving is quick
ANSWER_GRACE_S = 2.0


class CommandBridge:
    """Thread-safe queue of (command, who, future); see the module docstring."""

    def __init__(self) -> None:
        # deque's append and popleft are atomic: no lock between the two threads
        self._queue: deque[tuple[Command, Principal, Future[CommandResult], float]] = deque()
        self._queued = threading.Event()  # set by submit: a waiting server wakes at once
        #: refusals made before any command could be built (an argument of the wrong
        #: type): audited by the run loop like the command path's own refusals
        self._refused: deque[Audit] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(
        self, cmd: Command, by: Principal, deadline: float = math.inf
    ) -> Future[CommandResult]:
        """Queue ``cmd`` for the run loop; the future resolves once it is given.
        ``deadline`` (``time.monotonic()``, one clock for every process of the
        host): after it the command is withdrawn, never given."""
        fut: Future[CommandResult] = Future()
        self._queue.append((cmd, by, fut, deadline))
        self._queued.set()
        return fut

    def refuse(self, audit: Audit) -> None:
        """A refusal to audit that never became a command (see ``_refused``)."""
        self._refused.append(audit)
        self._queued.set()

    def take_refused(self) -> list[Audit]:
        out = []
        while self._refused:
            out.append(self._refused.popleft())
        return out

    def take(self) -> list[tuple[Command, Principal, Future[CommandResult], float]]:
        """The queued commands not withdrawn, each now running (it cannot be
        cancelled any more): for a server that hands them to a run loop in
        another process, which enforces each one's deadline itself."""
        out = []
        while self._queue:
            item = self._queue.popleft()
            if item[2].set_running_or_notify_cancel():
                out.append(item)
        return out

    def wait(self, timeout_s: float) -> bool:
        """Block until a command is queued (True) or ``timeout_s`` passed (False).

        For a thread that serves the bridge: it sleeps instead of polling, which in
        the server process would take the GIL from the address space's apply
        every few milliseconds. Cleared before returning, so a command submitted
        while the caller serves wakes the next wait."""
        if not self._queued.wait(timeout_s):
            return False
        self._queued.clear()
        return True

    def serve(self, give: Callable[[Command, Principal], CommandResult]) -> int:
        """Run-loop side, after each scan: give every queued command, resolve its future
        (an exception in give resolves it with set_exception; never raises). One
        found past its deadline is answered withdrawn, and its refusal joins
        :meth:`take_refused` for the run loop to audit.

        Returns how many commands were given (withdrawn ones are not counted)."""
        n = 0
        while self._queue:
            cmd, by, fut, deadline = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue  # withdrawn by its caller's timeout: never applied late
            if time.monotonic() > deadline:  # its caller is about to give up on it
                res = not_taken(cmd, by, None)
                self._refused.append(res.audit)  # audited like any refusal, never silent
                fut.set_result(res)
                continue
            try:
                res = give(cmd, by)
            except Exception as exc:  # a failed command must never stop the scan loop
                log.exception("OPC UA command %s from %s failed", type(cmd).__name__, by.origin)
                fut.set_exception(exc)
            else:
                fut.set_result(res)
            n += 1
        return n


def not_taken(cmd: Command, by: Principal, timeout_s: float | None) -> CommandResult:
    """The answer to a command the controller did not take in time (it was
    withdrawn); ``timeout_s`` None: found past its deadline by the run loop."""
    within = "before its deadline" if timeout_s is None else f"within {timeout_s:g} s"
    why = (
        f"refused: the controller did not take the command {within} "
        "(is it scanning?); it was withdrawn and will not be applied"
    )
    return CommandResult(
        False, why, Audit(time.time(), by.user, by.face, _target(cmd), None, None, why, False)
    )


def give_blocking(
    bridge: CommandBridge, cmd: Command, by: Principal, timeout_s: float
) -> tuple[CommandResult, bool]:
    """``give``'s twin for a thread of its own (the console): submit ``cmd`` and wait
    for its result; returns it and whether the command was withdrawn (not taken in
    ``timeout_s``; its refusal is then the caller's to audit)."""
    fut = bridge.submit(cmd, by)
    try:
        return fut.result(timeout_s), False
    except concurrent.futures.TimeoutError:
        if fut.cancel():
            return not_taken(cmd, by, timeout_s), True
        return fut.result(), False  # being given this very moment: the true answer


async def give(
    bridge: CommandBridge, cmd: Command, by: Principal, timeout_s: float = 10.0
) -> CommandResult:
    """Submit ``cmd`` and await its result on the OPC UA loop.

    A timeout withdraws the command and returns a refusal saying the controller
    is not scanning. One already handed on (to a run loop in another process)
    carries its deadline: the run loop gives it before then or answers it
    withdrawn, and is awaited ``ANSWER_GRACE_S`` more for that answer; past
    that it is past its deadline, never given, and refused here too. The
    answer always tells the truth, and never waits on a frozen controller."""
    cf = bridge.submit(cmd, by, time.monotonic() + timeout_s)
    af = asyncio.wrap_future(cf)
    done, _ = await asyncio.wait({af}, timeout=timeout_s)
    if not done and cf.cancel():
        af.cancel()
        res = not_taken(cmd, by, timeout_s)
        bridge.refuse(res.audit)  # nobody gave it, so nobody else audits its refusal
        return res
    if not done:
        done, _ = await asyncio.wait({af}, timeout=ANSWER_GRACE_S)
        if not done:
            return not_taken(cmd, by, timeout_s)
    return await af
