"""One Modbus connection (a TCP endpoint or a serial line), shared by the links using it.

:class:`SharedConnection` is the half of ``transport.py`` that owns the
connection itself, whatever unit ids use it: connecting lazily with capped
exponential backoff, reconnecting at once after a loss if the connection had
carried a good answer, dropping a TCP peer that left ``DROP_AFTER_TIMEOUTS``
rounds of requests unanswered, failing what waits on a lost connection, and
saying why a serial port cannot be opened (pymodbus answers only False).
The guarantees are stated in ``transport.py``'s docstring, which links make.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections.abc import Callable
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException

from thermogate.plc.errors import ModbusDeviceError
from thermogate.plc.mbap import MbapClient

__all__ = ["DROP_AFTER_TIMEOUTS", "SharedConnection", "serial_problem"]

# the links' own logger: their connection's lines are theirs (the fault campaign
# quiets "thermogate.plc.transport" to keep a lost unit's lines out of its output)
log = logging.getLogger("thermogate.plc.transport")

#: TCP: consecutive unanswered requests on an endpoint before the connection is dropped.
DROP_AFTER_TIMEOUTS = 3


class SharedConnection:
    """One connection (TCP endpoint or serial line) shared by the links using it."""

    def __init__(
        self,
        key: tuple,
        describe: str,
        factory: Callable[[Callable[[bool], None]], Any],
        *,
        serial: bool,
        connect_timeout: float,
        backoff_initial: float,
        backoff_max: float,
        in_flight: int = 1,
    ) -> None:
        self.key = key
        self.describe = describe
        self.serial = serial
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # requests outstanding at once: one (a lock) unless the TCP device takes more
        self.in_flight = in_flight
        self.lock: asyncio.Lock | asyncio.Semaphore = (
            asyncio.Lock() if in_flight == 1 else asyncio.Semaphore(in_flight)
        )
        self._connecting = asyncio.Lock()
        self.users = 0
        self.client = factory(self._on_connect_change)
        self._delay = 0.0
        self._next_connect_at = 0.0
        self._answered_since_connect = False
        self._timeouts_in_row = 0
        self._closed = False

    @property
    def connected(self) -> bool:
        return bool(self.client.connected)

    # -- events --------------------------------------------------------------

    def _on_connect_change(self, connected: bool) -> None:
        if connected:
            self._answered_since_connect = False
            self._timeouts_in_row = 0
            return
        log.info("Modbus %s: connection lost", self.describe)
        self._fail_pending("connection lost")
        self._after_loss()

    def _after_loss(self) -> None:
        if self._answered_since_connect:
            self._delay = 0.0
            self._next_connect_at = 0.0
        else:
            self._escalate()

    def _escalate(self) -> None:
        loop = asyncio.get_running_loop()
        self._delay = min(max(self._delay * 2, self.backoff_initial), self.backoff_max)
        self._next_connect_at = loop.time() + self._delay

    def _fail_pending(self, why: str) -> None:
        """Fail a request pymodbus is waiting on (it would otherwise wait out its timeout)."""
        if isinstance(self.client, MbapClient):
            self.client.fail_pending(why)
            return
        future = getattr(self.client.ctx, "response_future", None)
        if future is not None and not future.done():
            future.set_exception(ConnectionException(why))
            future.exception()  # mark retrieved: nobody may be awaiting a stale future

    def note_answer(self) -> None:
        self._answered_since_connect = True
        self._timeouts_in_row = 0
        self._delay = 0.0

    def note_timeout(self) -> None:
        self._timeouts_in_row += 1
        # with requests in flight their timeouts come together: three rounds of them
        drop_after = DROP_AFTER_TIMEOUTS * self.in_flight
        if not self.serial and self._timeouts_in_row >= drop_after and self.connected:
            log.warning(
                "Modbus %s: %d requests in a row unanswered; dropping the connection",
                self.describe,
                self._timeouts_in_row,
            )
            self.client.close()
            self._timeouts_in_row = 0
            self._after_loss()

    # -- connecting ----------------------------------------------------------

    async def ensure_connected(self, unit_id: int) -> None:
        """Connect if needed, honouring the backoff; raise ModbusDeviceError if down."""
        if self._closed:
            raise ModbusDeviceError(unit_id, f"{self.describe}: link closed")
        if self.connected:
            return
        async with self._connecting:  # several requests in flight: one connects
            await self._connect(unit_id)

    async def _connect(self, unit_id: int) -> None:
        if self.connected:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_connect_at - loop.time()
        if wait > 0:
            raise ModbusDeviceError(
                unit_id, f"{self.describe}: not connected; next attempt in {wait:.1f} s"
            )
        why = ""
        try:
            async with asyncio.timeout(self.connect_timeout):
                ok = await self.client.connect()
        except TimeoutError:
            ok, why = False, f"no connection within {self.connect_timeout:g} s"
        # termios.error: a port (e.g. a pty) refusing the line settings.
        except (OSError, ModbusException, termios.error) as exc:
            log.debug("Modbus %s: connect failed: %s", self.describe, exc)
            ok, why = False, str(exc)
        if ok and self.connected:
            log.info("Modbus %s: connected", self.describe)
            return
        self.client.close()
        self._escalate()
        if not why and self.serial:  # pymodbus says False for a port it cannot open
            why = serial_problem(str(self.key[1]))
        # no "next attempt in" here: callers with their own retry policy (the
        # controller's unit backoff) would quote the link's, which is not theirs
        raise ModbusDeviceError(
            unit_id, f"{self.describe}: cannot connect" + (f" ({why})" if why else "")
        )

    def close(self) -> None:
        self._closed = True
        self._fail_pending("link closed")
        self.client.close()


def serial_problem(path: str) -> str:
    """Why the serial port ``path`` cannot be opened as one ('' when it can): the
    OS's reason, or that it is no terminal (a regular file, say)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    try:
        termios.tcgetattr(fd)
    except termios.error:
        return f"{path}: not a serial port"
    finally:
        os.close(fd)
    return ""
