"""Linked pseudo-terminal pairs for the RTU tests (socat, a real serial peer)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from thermogate.controller.bench import stop_process


@contextlib.contextmanager
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat; the paths come from its stderr."""
    if shutil.which("socat") is None:
        pytest.fail("socat is not on PATH: `apt-get install socat` (CI installs it)")
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        paths: list[str] = []
        deadline = time.monotonic() + 5
        while len(paths) < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline() if proc.stderr else ""
            if not line and proc.poll() is not None:
                break
            if match := re.search(r"PTY is (/dev/\S+)", line):
                paths.append(match.group(1))
        assert len(paths) == 2, "socat did not report two ptys"
        yield paths[0], paths[1]
    finally:
        stop_process(proc, grace_s=3)  # its pipe closed too: left open, a later test warns
