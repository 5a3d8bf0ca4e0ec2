"""Rejected events, kept with the reason so nothing is silently lost, and read back to be offered again.

A JSONL file rotated by size with the standard library's RotatingFileHandler.
"""

import datetime as dt
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from otel_bridge.files import NO_FILE, special
from otel_bridge.repeated_failure import Cadence

log = logging.getLogger(__name__)


class DeadLetterUnwritable(ValueError):
    """The dead-letter file cannot be written where it is set (a read-only directory or mount)."""


class _Handler(logging.handlers.RotatingFileHandler):
    """A dead letter that cannot be written is told in the bridge's log, the first time and then once a
    minute, not as the standard library's "--- Logging error ---" and its traceback for each one."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.failing = Cadence()
        self.lost = 0  # dead letters that could not be written, since the start

    def emit(self, record: logging.LogRecord) -> None:
        failures = self.failing.failures
        super().emit(record)
        if self.failing.failures == failures and (ended := self.failing.recovered()) is not None:
            log.warning("dead letters are kept in %s again, after %d could not be", self.baseFilename, ended[1])

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - the standard library's name
        self.lost += 1
        if self.failing.failed():
            log.error(
                "could not keep a dead letter in %s (%s): they are lost until it can be written (%d so far)",
                self.baseFilename,
                sys.exc_info()[1],
                self.failing.failures,
            )


def can_be_written(path: Path) -> bool:
    """Whether this process can write the file at `path`, or make it with the folders it needs (in the
    nearest folder that exists): what a dead-letter file's place must allow, asked without making anything."""
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


class DeadLetters:
    def __init__(self, path: Path, max_bytes: int, backups: int, setting: str = "dead_letter") -> None:
        """`setting`: the setting that names `path`, for the error that says it cannot be written.

        The file is made at the first dead letter, but its place is checked now: in a read-only
        working directory (a container's read-only root) every dead letter was lost, each with a
        traceback on stderr."""
        if not can_be_written(path):
            flag, variable = "--" + setting.replace("_", "-"), "OTEL_BRIDGE_" + setting.upper()
            if path.is_dir():
                why = f"it is a directory; set {setting} ({flag}, {variable}) to a file in it"
            elif special(path):
                # /dev/null to keep nothing: its rotation renames the file, and as root would take the device's name.
                why = f"{NO_FILE}; set {setting} ({flag}, {variable}) to a file"
            else:
                why = (
                    f"its directory or mount is read-only to this process; set {setting} ({flag}, {variable}) "
                    "to a writable place"
                )
            raise DeadLetterUnwritable(f"cannot write the dead-letter file {path}: {why}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._logger = logging.Logger(f"otel_bridge.dead_letter.{path}")
        self._logger.propagate = False
        self._handler = _Handler(path, max_bytes, backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def keep(self, receiver: str, rejected: Iterable[tuple[dict[str, Any], Any]], max_bytes: int | None = None) -> bool:
        """Append each (rejection, original event) pair as one JSON line, at most `max_bytes` of them;
        False when some could not be written (told in the log).

        One client's batch must not rotate everybody's older dead letters away: past the
        budget, one line says how many more were rejected and not kept.
        """
        lost = self._handler.lost
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
        return self._handler.lost == lost

    def close(self) -> None:
        self._handler.close()


def _line(letter: dict[str, Any]) -> str:
    # Keys that are not text (a Python producer's `{1: ...}`) as JSON text would have them: as text.
    try:
        return orjson.dumps(letter, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        pass
    # An event nested deeper than orjson writes (254 levels) is valid JSON all the same: the standard
    # encoder goes as deep as Python recurses, and past that the event is named only. So is one that is
    # no JSON at all (a key that is a tuple, an object whose repr fails): it is kept as its repr, if any.
    try:
        return json.dumps(letter, default=repr)  # ASCII escapes: a lone surrogate too
    except RecursionError:
        told = "[not kept: nested too deeply to write out]"
    except Exception:
        told = _as_repr(letter["event"])
    return orjson.dumps({**letter, "event": told}, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _as_repr(event: Any) -> str:
    try:
        return f"[not kept as JSON, which it is not: {repr(event)[:2000]}]"
    except Exception:
        return "[not kept: it is not JSON, and has no repr]"


# The events each receiver keeps are in its engine's format; a dead letter saying its own
# `format` (the replay's) is taken at its word.
FORMATS = ("durable-effect", "event-sourced", "phase10", "runtime-v2")
_FORMAT_OF = {
    "http": "durable-effect",
    "tracker": "durable-effect",
    "websocket": "phase10",
    "import-timeline": "phase10",
    "runtime-v2": "runtime-v2",
}
_FORMAT_OF_PREFIX = {"redis-stream:": "event-sourced", "replay:": "durable-effect"}
# The format of what producers POST to the HTTP endpoint, in batches.
POSTED = _FORMAT_OF["http"]


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
