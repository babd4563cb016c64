"""The serial edge of the console: a daemon thread that owns the line.

``ConsolePort`` opens the line (a serial device with pyserial at its baud
rate, 8N1, or the demo's pseudo-terminal), reads with a short timeout,
feeds the ``Console`` and writes its answers *paced* at the line's rate
(baud / 10 bytes a second, in small chunks with sleeps), so a long listing
is never dumped faster than a 9600-baud line carries it. It never runs on the
scan's event loop, and a scan never waits on it.

A cable pulled, a USB-serial adapter unplugged, a device that is not there
at start: the error closes the line, is logged once, and the port tries to
open it again every ``RETRY_S``; when it comes back the console greets again
(a session is logged out when its line is lost). A break condition reads as
NULs on most UARTs: the line discipline discards the line in progress.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Protocol

import serial

from .console import Console

log = logging.getLogger(__name__)

READ_S = 0.1  # a read waits at most this long: the idle timeout and stop are checked between
RETRY_S = 1.0  # a lost or missing device is tried again this often
WRITE_S = 2.0  # a write that cannot drain this long counts as a lost line
CHUNK_S = 0.05  # pacing granularity: 48 bytes a chunk at 9600 baud
READ_MAX = 256
#: a terminal that opens the pty sets its line up first (pyserial flushes its
#: input as it opens): the greeting waits this long, not to be flushed away
GREET_AFTER_S = 0.3

# What a lost line raises: pyserial's own error, the OS's, and termios' (pyserial's
# flush drains with tcdrain, which raises termios.error, not an OSError, when a
# USB-serial adapter is pulled mid-write).
LINE_ERRORS = (serial.SerialException, OSError, termios.error)


class Link(Protocol):
    """One open line: ``read`` waits at most READ_S and returns b"" when nothing came."""

    def read(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SerialLink:
    """A serial device through pyserial (8N1, no flow control)."""

    def __init__(self, device: str, baudrate: int) -> None:
        self.s = serial.Serial(
            device,
            baudrate,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=READ_S,
            write_timeout=WRITE_S,
            exclusive=True,  # a second program on the port would steal half the keystrokes
        )

    def read(self, n: int) -> bytes:
        first = self.s.read(1)
        if not first:
            return b""
        more = min(self.s.in_waiting, n - 1)
        return first + (self.s.read(more) if more > 0 else b"")

    def write(self, data: bytes) -> None:
        self.s.write(data)
        self.s.flush()

    def close(self) -> None:
        self.s.close()


class PtyLink:
    """The master side of a pseudo-terminal (the demo): the technician opens the
    slave path with screen or socat. The slave is set raw (like a serial line)
    and not held open here, so the master sees a terminal come and go: reads
    fail with EIO while nobody has the slave open. Holding it open once hid a
    closed terminal, and the next person inherited the session. ``events``
    says ``connected`` and ``hangup`` as they happen; nothing is written while
    nobody is connected (output nobody reads would greet the next one stale)."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)  # kept while the master is open
        self.path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.connected = False
        self._events: list[str] = []

    def take_events(self) -> list[str]:
        out, self._events = self._events, []
        return out

    def _now(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._events.append("connected" if connected else "hangup")

    def read(self, n: int) -> bytes:
        ready, _, _ = select.select([self.master], [], [], READ_S)
        if not ready:  # idle but open: someone is there
            self._now(True)
            return b""
        try:
            data = os.read(self.master, n)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # no one on the slave side right now
                self._now(False)
                time.sleep(READ_S)
                return b""
            raise
        self._now(True)
        return data

    def write(self, data: bytes) -> None:
        if not self.connected:
            return
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_S
        while view:
            try:
                k = os.write(self.master, view)
            except BlockingIOError:
                k = 0
            except OSError as exc:
                if exc.errno == errno.EIO:  # the terminal went away mid-write
                    self._now(False)
                    return
                raise
            view = view[k:]
            if view and time.monotonic() > deadline:
                return  # nobody reads the terminal: forget what is left
            if view:
                select.select([], [self.master], [], 0.05)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.master)


class Pacer:
    """Writes at most ``baudrate / 10`` bytes a second (start, 8 data, stop bits)."""

    def __init__(
        self, baudrate: int, *, enabled: bool = True, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.bytes_per_s = baudrate / 10.0
        self.chunk = max(1, int(self.bytes_per_s * CHUNK_S))
        self.enabled = enabled
        self.sleep = sleep

    def write(self, link: Link, data: bytes) -> None:
        if not self.enabled:
            link.write(data)
            return
        for k in range(0, len(data), self.chunk):
            part = data[k : k + self.chunk]
            link.write(part)
            self.sleep(len(part) / self.bytes_per_s)


class ConsolePort:
    """See the module docstring. ``opener`` opens the line (raises OSError or
    ``serial.SerialException`` when it cannot); ``make_console`` builds the
    console inside the thread (its database connections belong to it)."""

    def __init__(
        self,
        name: str,
        opener: Callable[[], Link],
        make_console: Callable[[], Console],
        pacer: Pacer,
        *,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.opener = opener
        self.make_console = make_console
        self.pacer = pacer
        self.clock = clock
        self.on_close = on_close
        self.opened = 0  # how many times the line was opened (tests watch it)
        self.errors = 0  # lines lost or not opened
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"console {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        console: Console | None = None
        try:
            console = self.make_console()
            self._serve(console)
        except Exception:  # the port's own failure: logged; the controller runs on
            log.exception("console %s: stopped by an error", self.name)
        finally:
            if self.on_close is not None:
                with contextlib.suppress(Exception):
                    self.on_close()

    def _serve(self, console: Console) -> None:
        missing = False
        while not self._stop.is_set():
            try:
                link = self.opener()
            except LINE_ERRORS as exc:
                self.errors += 1
                if not missing:
                    log.warning("console %s: cannot open (%s); retrying every %g s",
                                self.name, exc, RETRY_S)  # fmt: skip
                    missing = True
                self._stop.wait(RETRY_S)
                continue
            if missing:
                log.warning("console %s: open again", self.name)
            missing = False
            self.opened += 1
            try:
                self._talk(console, link)
            except LINE_ERRORS as exc:
                self.errors += 1
                log.warning("console %s: line lost (%s); reopening", self.name, exc)
                console.session.drop(self.clock(), "logged out: the serial line was lost")
                missing = True
            finally:
                with contextlib.suppress(Exception):
                    link.close()
            self._stop.wait(RETRY_S if missing else 0.0)

    def _talk(self, console: Console, link: Link) -> None:
        events = getattr(link, "take_events", None)  # a pty: terminals come and go
        if events is None:
            self.pacer.write(link, console.greet(self.clock()))
        greet_at: float | None = None
        while not self._stop.is_set():
            data = link.read(READ_MAX)
            now = self.clock()
            for what in events() if events is not None else ():
                if what == "hangup":
                    console.session.drop(now, "logged out: the terminal was closed")
                    console.line.reset()
                    greet_at = None
                else:  # a terminal opened the pty: greet it once it has settled
                    greet_at = time.monotonic() + GREET_AFTER_S
            if greet_at is not None and time.monotonic() >= greet_at:
                greet_at = None
                self.pacer.write(link, console.greet(now))
            try:
                out = console.feed(data, now) if data else b""
                out += console.tick(now)
            except Exception:  # never die of what came down the wire
                log.exception("console %s: input failed", self.name)
                console.line.reset()
                out = b"\r\nerror (logged); line discarded\r\n"
            if out:
                self.pacer.write(link, out)
