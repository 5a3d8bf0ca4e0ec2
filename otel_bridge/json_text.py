"""JSON text as producers really write it: orjson, and the standard parser for what orjson refuses but is valid."""

import json
import re
from typing import Any

import orjson

# How deep orjson writes (and so how deep a copy of a payload is worth making): past it, a payload is
# "too deep" either way, and a copy that went on would near Python's recursion limit, where any
# finalizer the garbage collector runs fails (a structure that holds itself would go all the way).
JSON_DEPTH = 254

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if depth > JSON_DEPTH:  # no JSON text holds it (a structure that holds itself): left as it is
        return value
    if isinstance(value, list):
        return [_without_lone_surrogates(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v, depth + 1) for k, v in value.items()}
    return value


def dumps(value: Any) -> bytes:
    """`value` as JSON text, written as JSON.stringify writes a JavaScript producer's events, for a Python one's:
    times as ISO-8601 text (orjson writes datetime, date, UUID, enums and dataclasses itself), keys that are not
    strings as text, anything else as its str(). Raises orjson.JSONEncodeError for what no JSON text holds (a
    structure that holds itself, a lone surrogate, a key that is a tuple)."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def as_read_back(value: Any) -> Any:
    """`value` as the bridge reads it back from the JSON text a producer's HTTP tracker writes of it (`dumps`).

    What a Python producer hands the in-process tracker never went through JSON: a UUID for an event's id, a
    datetime, a Decimal were taken or refused by the bridge's models as Python objects (a UUID `eventId`
    rejected), where the HTTP tracker sends them as text. Made the values the sidecar would have read from the
    same event, they store as they would there. A string sliced mid-emoji cannot be written as UTF-8 (the
    journal's rows are): its lone surrogate becomes U+FFFD. What no JSON text holds (a structure that holds
    itself) is left as it is, for the bridge to reject and keep.
    """
    try:
        return orjson.loads(dumps(value))  # the common case, at C speed
    except (orjson.JSONEncodeError, TypeError):
        value = _without_lone_surrogates(value)
    try:
        return orjson.loads(dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        return value


# A UTF-8 byte order mark: JSON text must not start with one, but a parser may ignore it (RFC 8259,
# 8.1), and editors on Windows and .NET or PowerShell streams write one.
BOM = b"\xef\xbb\xbf"


def loads(data: bytes) -> Any:
    """Parse `data`; raises ValueError naming what is wrong.

    JavaScript's JSON.stringify writes a sliced emoji as a lone surrogate escape
    ("\\ud83d"): valid JSON that orjson refuses. The standard parser takes it, and
    the lone half becomes U+FFFD. Surrogates encoded as raw bytes are invalid UTF-8
    and stay an error. A leading byte order mark, which orjson refuses, is ignored.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if data.startswith(BOM):  # looked for only once orjson refused: nothing on the common path
            return loads(data[len(BOM) :])
        if "surrogate" not in str(exc):
            raise ValueError(str(exc)) from None
        first = exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # orjson says "str is not valid UTF-8: surrogates not allowed" of any byte that is not UTF-8.
        raise ValueError(f"not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start} ({exc.reason})") from None
    try:
        return _without_lone_surrogates(json.loads(text))
    except (ValueError, RecursionError):
        raise ValueError(str(first)) from None
