"""JSON text as producers write it, and Python values as they would read back from it."""

import enum
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from otel_bridge.json_text import JSON_DEPTH, as_read_back, dumps, loads


def test_a_lone_surrogate_escape_reads_as_a_replacement_character():
    assert loads(b'{"name": "chart \\ud83d"}') == {"name": "chart \ufffd"}


def test_invalid_utf8_stays_an_error_naming_the_byte_and_where():
    with pytest.raises(ValueError, match=r"^not UTF-8: byte 0xed at offset 10 \(invalid continuation byte\)$"):
        loads(b'{"name": "\xed\xa0\xbd"}')  # a surrogate encoded as raw bytes
    with pytest.raises(ValueError, match=r"^not UTF-8: byte 0xff at offset 2 \(invalid start byte\)$"):
        loads(b'["\xff"]')  # orjson said "surrogates not allowed" of it


def test_a_value_json_holds_reads_back_as_it_is():
    event = {"type": "step.started", "stepName": "render 📊", "input": {"n": [1, 2.5, None]}}
    assert as_read_back(event) == event


def test_python_values_read_back_as_a_producers_http_tracker_writes_them():
    # The in-process tracker stores what the sidecar would have read from the HTTP tracker's POST of the
    # same event: a UUID for an event id was rejected in-process ("Input should be a valid string") and
    # taken through the sidecar.
    class Size(enum.Enum):
        LARGE = "L"

    event_id = uuid.UUID("0195e8a4-2b6c-7c3e-9f1a-3b5d7e9f1a2c")
    event = {
        "eventId": event_id,
        "timestamp": datetime(2026, 12, 6, 9, 30, 0, 250_000, tzinfo=UTC),
        "input": {"amount": Decimal("10.50"), "size": Size.LARGE, "tags": ("a", "b"), 7: "seven", "ratio": math.nan},
    }
    read = as_read_back(event)
    assert read == {
        "eventId": str(event_id),
        "timestamp": "2026-12-06T09:30:00.250000+00:00",
        "input": {"amount": "10.50", "size": "L", "tags": ["a", "b"], "7": "seven", "ratio": None},
    }
    assert read == loads(dumps(event))  # the HTTP tracker's body, as the bridge parses it


def test_lone_surrogates_anywhere_in_a_value_become_replacement_characters():
    event = {"stepName": "chart \ud83d", "input": {"k\udc00": ["x\ud800", 3]}, "other": {1, 2}}
    read = as_read_back(event)
    # A set, which JSON has no word for, as the HTTP tracker writes it: its text.
    assert read == {"stepName": "chart \ufffd", "input": {"k\ufffd": ["x\ufffd", 3]}, "other": "{1, 2}"}


def test_a_leading_byte_order_mark_is_ignored_as_rfc_8259_allows():
    assert loads(b'\xef\xbb\xbf{"events": []}') == {"events": []}
    with pytest.raises(ValueError):
        loads(b'{"events": []}\xef\xbb\xbf')  # only where text starts


def test_a_structure_that_holds_itself_is_read_back_only_as_deep_as_json_goes():
    # Copied all the way down, it neared the recursion limit, where any finalizer the garbage
    # collector ran at that moment failed ("unraisable"): the copy stops where orjson stops writing.
    loop: dict = {"name": "\ud83d"}
    loop["itself"] = loop
    read, depth = as_read_back(loop), 0
    while read is not loop:
        assert read["name"] == "\ufffd"
        read, depth = read["itself"], depth + 1
    assert depth == JSON_DEPTH + 1
