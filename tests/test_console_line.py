"""The console's line discipline: what a terminal and a noisy cable send, as lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from thermogate.controller.console.line import MAX_LINE, Entry, LineDiscipline


def lines(ld: LineDiscipline, data: bytes) -> list[Entry]:
    return ld.feed(data).entries


def test_cr_lf_and_crlf_each_end_one_line_even_split_across_reads():
    ld = LineDiscipline()
    assert lines(ld, b"a\rb\nc\r\nd\r") == [Entry("line", x) for x in "abcd"]
    assert lines(ld, b"\ne\r") == [Entry("line", "e")]  # the LF of d's CRLF came late
    assert lines(ld, b"\n\n") == [Entry("line", "")]  # a second LF is an empty line


def test_backspace_and_delete_erase_one_character_and_echo_an_erase():
    ld = LineDiscipline()
    fed = ld.feed(b"stxy\x08\x7fatus\r")
    assert fed.entries == [Entry("line", "status")]
    assert fed.echo == b"stxy\b \b\b \batus\r\n"
    assert ld.feed(b"\x08\x08x").echo == b"x"  # nothing to erase: no echo


def test_ctrl_u_kills_the_line_and_ctrl_c_cancels_it():
    ld = LineDiscipline()
    assert lines(ld, b"junk\x15show\r") == [Entry("line", "show")]
    fed = ld.feed(b"override x 5\x03")
    assert fed.entries == [Entry("cancel")] and fed.echo.endswith(b"^C\r\n")
    assert ld.pending == ""


def test_arrow_keys_and_other_escape_sequences_are_swallowed_not_echoed():
    ld = LineDiscipline()
    fed = ld.feed(b"st\x1b[A\x1b[1;5C\x1bOPat\x1b[200~us\r")
    assert fed.entries == [Entry("line", "status")]
    assert b"\x1b" not in fed.echo and fed.echo == b"status\r\n"


def test_an_escape_cut_short_by_enter_still_ends_the_line():
    assert lines(LineDiscipline(), b"help\x1b\r") == [Entry("line", "help")]
    assert lines(LineDiscipline(), b"help\x1b[1\r") == [Entry("line", "help")]


def test_a_line_that_lost_bytes_is_refused_whole_never_run_altered():
    """One corrupted byte turned `override tank03.valve_cmd \xb550` into an
    override to 0 %; an ESC of noise took the key after it (`3\x1b2` -> 3)."""
    ld = LineDiscipline()
    assert lines(ld, b"al\xffar\x01ms\x80\r") == [Entry("spoilt", "alarms")]
    assert ld.dropped == 3
    for spoilt in (
        b"override tank03.valve_cmd \xb50 for 1m\r",
        b"set loop1_supply 3\x1b2\r",  # ESC x: the x lost
        b"override tank03.valve_cmd 7\x1bO5\r",  # ESC O and no key's letter
        b"show t\xc3\xa4nk01\r",
    ):
        [entry] = lines(LineDiscipline(), spoilt)
        assert entry.kind == "spoilt", spoilt
    # the next line is whole again; Ctrl-U and Ctrl-C start a line afresh
    assert lines(ld, b"status\r") == [Entry("line", "status")]
    assert lines(ld, b"x\xff\x15status\r") == [Entry("line", "status")]


def test_a_nul_is_a_break_that_discards_the_line_in_progress():
    ld = LineDiscipline()
    assert lines(ld, b"set loop1_supply 3\x00\x00\x00") == [Entry("break")]
    assert lines(ld, b"status\r") == [Entry("line", "status")]
    assert ld.breaks == 3


def test_an_overlong_line_is_refused_once_at_its_end():
    ld = LineDiscipline()
    fed = ld.feed(b"x" * (MAX_LINE + 50) + b"\r")
    assert fed.entries == [Entry("overlong")]
    assert fed.echo.count(b"x") == MAX_LINE  # the echo stops where the line does
    assert lines(ld, b"help\r") == [Entry("line", "help")]


def test_with_echo_off_a_pin_is_not_echoed():
    ld = LineDiscipline()
    ld.echo = False
    fed = ld.feed(b"12\x0834\r")
    assert fed.entries == [Entry("line", "134")] and fed.echo == b"\r\n"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_any_bytes_give_printable_echo_and_lines_within_the_cap(chunks):
    ld = LineDiscipline()
    for c in chunks:
        fed = ld.feed(c)  # never raises
        assert all(b in b"\r\n\b^C" or 0x20 <= b < 0x7F for b in fed.echo)
        for e in fed.entries:
            assert e.kind in ("line", "cancel", "overlong", "break", "spoilt")
            assert len(e.text) <= MAX_LINE and e.text.isprintable() and e.text.isascii()
    assert len(ld.pending) <= MAX_LINE
