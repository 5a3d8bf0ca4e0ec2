"""What producers said is shown, never obeyed: control characters as escapes, on a terminal and in a text log."""

import logging
import sys

from otel_bridge.visible import TextLog, Verbatim, visible, visible_lines


def test_control_characters_are_shown_as_escapes_and_the_rest_as_it_is():
    assert visible("a\x1b[2Jb\x07\x7f\x9b é ☾ [/bold]") == "a\\x1b[2Jb\\x07\\x7f\\x9b é ☾ [/bold]"
    assert visible_lines("line 1: id\x1b\nline 2") == "line 1: id\\x1b\nline 2"


def _line(message: str, *args: object, exc_info: object = None) -> str:
    record = logging.LogRecord("otel_bridge.pipeline", logging.WARNING, __file__, 1, message, args, exc_info)
    return TextLog("%(levelname)s %(name)s: %(message)s").format(record)


def test_an_event_id_holding_a_newline_cannot_forge_a_line_of_the_text_log():
    forged = "e-1\n2026-12-03 00:00:00 INFO otel_bridge: all good"
    written = _line("late event %s: its run's trace was already sent", forged)
    assert written.count("\n") == 0 and "e-1\\x0a2026-12-03" in written


def test_the_bridges_own_lines_and_tracebacks_are_written_as_they_are():
    assert _line("not alive: %s%s", "settling", Verbatim("; where it is:\n  File x")).endswith("where it is:\n  File x")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        written = _line("settling %r failed", "k\n", exc_info=sys.exc_info())
    assert "settling 'k\\n' failed\nTraceback (most recent call last):" in written
