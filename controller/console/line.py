"""The console's line discipline: bytes from a serial line in, lines out.

A technician's terminal (screen, minicom, PuTTY) sends what the keys make,
and a serial line adds what a cable makes: noise, a break, half a sequence.
``LineDiscipline.feed`` turns any bytes into the echo to send back, the
completed lines, and what happened on the way, and never raises:

* CR, LF and CRLF each end a line (a CR followed by LF is one line end,
  even when the LF arrives in the next read);
* BS (0x08) and DEL (0x7f) erase one character (echo ``\\b \\b``), Ctrl-U
  kills the line, Ctrl-C cancels it;
* an ESC sequence (the arrow and function keys: ``ESC [ ... final`` or
  ``ESC O x``) is swallowed, never echoed;
* a NUL is what a UART reads during a break condition (and what a pulled
  cable often leaves): the line in progress is discarded;
* any other control or non-ASCII byte is dropped and counted, and the line
  it fell in is refused whole at its end (``spoilt``): one lost byte turned
  ``override tank03.valve_cmd \xb550`` into an override to 0 %. So is a line
  with an ESC that starts no key's sequence (``ESC x``, ``ESC O 5``), whose
  next byte it took;
* a line longer than ``MAX_LINE`` characters is refused once, at its end,
  with a notice; its text never reaches the shell.

With ``echo`` off (a PIN being typed) nothing but the line end is echoed.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LINE = 200  # characters: any command fits in 80; a paste of junk does not
MAX_ESC = 16  # bytes of an ESC sequence at most, then it is given up as junk

NUL, BS, ESC, DEL = 0x00, 0x08, 0x1B, 0x7F
CR, LF, CTRL_C, CTRL_U = 0x0D, 0x0A, 0x03, 0x15
ERASE = b"\b \b"
NEWLINE = b"\r\n"
_ENDS_ESC = frozenset({CR, LF, NUL, CTRL_C, CTRL_U, ESC})


@dataclass(frozen=True)
class Entry:
    """One thing the shell must answer: a ``line`` with its text, a ``cancel``
    (Ctrl-C), an ``overlong`` line refused, a ``break`` on the wire, or a
    ``spoilt`` line refused (bytes of it lost: ``text`` is what was left)."""

    kind: str  # line | cancel | overlong | break | spoilt
    text: str = ""


@dataclass
class Fed:
    """What one ``feed`` produced."""

    echo: bytes = b""
    entries: list[Entry] = field(default_factory=list)


class LineDiscipline:
    """See the module docstring."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.echo = True  # off while a PIN is typed
        self.dropped = 0  # bytes dropped (control, non-ASCII, junk sequences)
        self.breaks = 0
        self._buf = bytearray()
        self._overlong = False
        self._spoilt = False  # a byte of this line was dropped
        self._after_cr = False  # the last byte ended a line with CR: an LF now is its pair
        self._esc = 0  # bytes of an ESC sequence seen so far (0: not in one)
        self._esc_kind = 0  # the byte after ESC ('[' CSI, 'O' SS3) or 0

    @property
    def pending(self) -> str:
        """The line typed so far (not yet ended)."""
        return self._buf.decode("ascii")

    def reset(self) -> None:
        """Forget the line in progress (a reconnect, a break)."""
        self._buf.clear()
        self._overlong = False
        self._spoilt = False
        self._after_cr = False
        self._esc = 0

    def feed(self, data: bytes) -> Fed:
        out = Fed()
        echo = bytearray()
        for b in data:
            after_cr, self._after_cr = self._after_cr, False
            if self._esc:
                if b not in _ENDS_ESC:
                    self._escape(b)
                    continue
                self._esc = 0  # a line end, a break or a new ESC cuts a sequence short
            if b == ESC:
                self._esc, self._esc_kind = 1, 0
            elif b in (CR, LF):
                if b == LF and after_cr:
                    continue  # CRLF: one line end
                self._after_cr = b == CR
                echo += NEWLINE
                out.entries.append(self._end())
            elif b in (BS, DEL):
                if self._buf and not self._overlong:
                    self._buf.pop()
                    if self.echo:
                        echo += ERASE
            elif b == CTRL_U:
                if self.echo and not self._overlong:
                    echo += ERASE * len(self._buf)
                self._buf.clear()
                self._overlong = self._spoilt = False
            elif b == CTRL_C:
                echo += b"^C" + NEWLINE
                self._buf.clear()
                self._overlong = self._spoilt = False
                out.entries.append(Entry("cancel"))
            elif b == NUL:
                self.breaks += 1
                if self._buf or self._overlong:
                    echo += NEWLINE
                    out.entries.append(Entry("break"))
                self._buf.clear()
                self._overlong = self._spoilt = False
            elif 0x20 <= b < 0x7F:
                if self._overlong:
                    continue
                if len(self._buf) >= self.max_line:
                    self._overlong = True
                    continue
                self._buf.append(b)
                if self.echo:
                    echo.append(b)
            else:
                self._drop()
        out.echo = bytes(echo)
        return out

    def _drop(self) -> None:
        self.dropped += 1
        self._spoilt = True

    def _end(self) -> Entry:
        text = self._buf.decode("ascii")
        overlong, spoilt = self._overlong, self._spoilt
        self._buf.clear()
        self._overlong = self._spoilt = False
        if overlong:
            return Entry("overlong")
        return Entry("spoilt", text) if spoilt else Entry("line", text)

    def _escape(self, b: int) -> None:
        """One byte of an ESC sequence: swallowed until the sequence ends."""
        self._esc += 1
        if self._esc > MAX_ESC:
            self._esc = 0
            self._drop()
        elif self._esc == 2:
            if b in (ord("["), ord("O")):
                self._esc_kind = b
            else:
                self._esc = 0  # ESC x (Alt-x, or an ESC of noise): x is lost
                self._drop()
        elif 0x40 <= b <= 0x7E:
            self._esc = 0  # SS3's letter, or CSI's final byte: a key, swallowed
        elif self._esc_kind == ord("O") or not 0x20 <= b <= 0x3F:
            self._esc = 0  # no key's sequence: give it up, and the line with it
            self._drop()
