"""Text from producers made safe to write to a terminal or a text log: its control characters shown as escapes.

What a producer named a run, a step or a job, and the ids and reasons of the events it sent, reach the
on-call's terminal (`runs`, `show`, `jobs`, `close`, `replay`) and the bridge's log; an ESC written raw is
a command to the terminal (clear the screen, retitle the window, a link whose target is hidden), which
rich passes through, and a newline in an event's id would forge a line of the log.
"""

import logging

_ESCAPED = {point: f"\\x{point:02x}" for point in [*range(0x20), *range(0x7F, 0xA0)]}


def visible(text: object) -> str:
    """`text` with every control character (C0, DEL, C1) shown as its escape, as `\\x1b`."""
    return str(text).translate(_ESCAPED)


def visible_lines(text: str) -> str:
    """`visible`, line by line: the line breaks of a report the bridge wrote itself stay breaks."""
    return "\n".join(visible(line) for line in text.split("\n"))


class Verbatim(str):
    """A log argument of the bridge's own that is meant to span lines (a thread's stack): not escaped."""


class TextLog(logging.Formatter):
    """Log lines as text, each argument of a message shown with its control characters escaped (an
    event's id may hold a newline): one line of the log is one thing the bridge said. The JSON format
    escapes them itself; a traceback is the bridge's own, and written as it is."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and any(type(arg) is str for arg in args):
            record.args = tuple(_Shown(arg) if type(arg) is str else arg for arg in args)
        try:
            return super().format(record)
        finally:
            record.args = args


class _Shown(str):
    """A text argument of a log line: escaped where written as text (`%s`); `%r` escapes it already."""

    def __str__(self) -> str:
        return str.translate(self, _ESCAPED)
