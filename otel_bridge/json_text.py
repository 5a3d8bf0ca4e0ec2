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


def as_read_back(value: Any) -> Any:
    """`value` as it would read back from JSON text: lone surrogates become U+FFFD.

    What a Python producer hands the in-process tracker never went through JSON, and a
    string sliced mid-emoji cannot be written as UTF-8 (the journal's rows are): made
    what the sidecar would have read from the same event, it stores like any other.
    """
    try:
        orjson.dumps(value)  # the common case, checked at C speed
    except (orjson.JSONEncodeError, TypeError):
        return _without_lone_surrogates(value)
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
