"""Rejected events, kept with the reason so nothing is silently lost, and read back to be offered again.

A JSONL file rotated by size with the standard library's RotatingFileHandler.
"""

import datetime as dt
import json
import logging
import logging.handlers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson


class DeadLetters:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._logger = logging.Logger(f"otel_bridge.dead_letter.{path}")
        self._logger.propagate = False
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def keep(self, receiver: str, rejected: Iterable[tuple[dict[str, Any], Any]], max_bytes: int | None = None) -> None:
        """Append each (rejection, original event) pair as one JSON line, at most `max_bytes` of them.

        One client's batch must not rotate everybody's older dead letters away: past the
        budget, one line says how many more were rejected and not kept.
        """
        at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        written = omitted = 0
        for rejection, event in rejected:
            if max_bytes is not None and written >= max_bytes:
                omitted += 1
                continue
            text = _line({"at": at, "receiver": receiver, **rejection, "event": event})
            written += len(text)
            self._logger.error(text)
        if omitted:
            line = {"at": at, "receiver": receiver, "omitted": omitted, "error": "over the batch's dead-letter budget"}
            self._logger.error(orjson.dumps(line).decode())

    def close(self) -> None:
        for handler in self._logger.handlers:
            handler.close()


def _line(letter: dict[str, Any]) -> str:
    try:
        return orjson.dumps(letter, default=repr).decode()
    except orjson.JSONEncodeError:
        # An event nested deeper than orjson writes (254 levels) is valid JSON all the same: the
        # standard encoder goes as deep as Python recurses, and past that the event is named only.
        try:
            return json.dumps(letter, default=repr)  # ASCII escapes: a lone surrogate too
        except (RecursionError, ValueError):
            named = {**letter, "event": "[not kept: nested too deeply to write out]"}
            return orjson.dumps(named, default=repr).decode()


# The events each receiver keeps are in its engine's format; a dead letter saying its own
# `format` (the replay's) is taken at its word.
FORMATS = ("durable-effect", "event-sourced", "phase10")
_FORMAT_OF = {
    "http": "durable-effect",
    "tracker": "durable-effect",
    "websocket": "phase10",
    "import-timeline": "phase10",
}
_FORMAT_OF_PREFIX = {"redis-stream:": "event-sourced", "replay:": "durable-effect"}


class NotReplayable(ValueError):
    """A dead-letter line that holds no event to offer again; the message says why."""


def unwrap(letter: Any) -> tuple[str, Any]:
    """A dead letter's event and the format it is in, to be offered to the bridge again."""
    if not isinstance(letter, dict) or "receiver" not in letter:
        raise NotReplayable("not a dead letter: a JSON object with a 'receiver' and an 'event'")
    if "event" not in letter:
        raise NotReplayable(f"holds no event ({letter.get('error') or 'a count of events not kept'})")
    event = letter["event"]
    receiver = str(letter["receiver"])
    if isinstance(event, str) and ("not valid JSON" in str(letter.get("error")) or event.startswith("[not kept")):
        raise NotReplayable("the event was not kept as JSON: there is nothing to offer again")
    source_format = letter.get("format") or _FORMAT_OF.get(receiver)
    if source_format is None:
        source_format = next((f for prefix, f in _FORMAT_OF_PREFIX.items() if receiver.startswith(prefix)), None)
    if source_format not in FORMATS:
        raise NotReplayable(f"receiver {receiver!r} is not one whose events can be told apart")
    return source_format, event
