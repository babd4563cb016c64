"""One controller per database: ``thermogate run`` holds a lock beside it.

Two controllers on one database fought over the plant (each restored the
other's writes as foreign: 374 events in 30 s), and the second one's start
recorded the first as an unclean stop and its clean stop hid a later real
crash. The lock is an advisory ``flock`` on ``<db>.lock``, released by the
kernel when the process dies however it dies, so a killed run never leaves a
stale lock behind; the file keeps the holder's pid for the refusal's message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from thermogate.plc.errors import ThermogateError


class DatabaseInUse(ThermogateError):
    """Another ``thermogate run`` holds the database."""


class RunLock:
    """Held from construction until :meth:`release` (or the process's end)."""

    def __init__(self, db: str | Path) -> None:
        self.path = Path(f"{db}.lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ThermogateError(
                f"{self.path}: cannot create the run lock ({exc.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DatabaseInUse(
                f"{db} is in use by another thermogate run (pid {holder}): one controller "
                "per database (stop it first, or give this one its own --db)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd: int | None = fd

    def release(self) -> None:
        """Let the next run have the database (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock
