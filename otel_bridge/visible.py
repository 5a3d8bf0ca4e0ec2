"""Text from producers made safe to write to a terminal: its control characters shown as escapes.

What a producer named a run, a step or a job, and the ids and reasons of the events it sent, reach the
on-call's terminal (`runs`, `show`, `jobs`, `close`, `replay`); an ESC written raw is a command to the
terminal (clear the screen, retitle the window, a link whose target is hidden), and rich passes it through.
"""

_ESCAPED = {point: f"\\x{point:02x}" for point in [*range(0x20), *range(0x7F, 0xA0)]}


def visible(text: object) -> str:
    """`text` with every control character (C0, DEL, C1) shown as its escape, as `\\x1b`."""
    return str(text).translate(_ESCAPED)


def visible_lines(text: str) -> str:
    """`visible`, line by line: the line breaks of a report the bridge wrote itself stay breaks."""
    return "\n".join(visible(line) for line in text.split("\n"))
