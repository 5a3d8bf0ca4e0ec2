"""JSON text as producers write it, and Python values as they would read back from it."""

import pytest

from otel_bridge.json_text import JSON_DEPTH, as_read_back, loads


def test_a_lone_surrogate_escape_reads_as_a_replacement_character():
    assert loads(b'{"name": "chart \\ud83d"}') == {"name": "chart \ufffd"}


def test_invalid_utf8_stays_an_error_naming_the_byte_and_where():
    with pytest.raises(ValueError, match=r"^not UTF-8: byte 0xed at offset 10 \(invalid continuation byte\)$"):
        loads(b'{"name": "\xed\xa0\xbd"}')  # a surrogate encoded as raw bytes
    with pytest.raises(ValueError, match=r"^not UTF-8: byte 0xff at offset 2 \(invalid start byte\)$"):
        loads(b'["\xff"]')  # orjson said "surrogates not allowed" of it


def test_a_value_that_needs_nothing_is_returned_as_it_is():
    event = {"type": "step.started", "stepName": "render 📊", "input": {"n": [1, 2.5, None]}}
    assert as_read_back(event) is event


def test_lone_surrogates_anywhere_in_a_value_become_replacement_characters():
    event = {"stepName": "chart \ud83d", "input": {"k\udc00": ["x\ud800", 3]}, "other": {1, 2}}
    assert as_read_back(event) == {"stepName": "chart \ufffd", "input": {"k\ufffd": ["x\ufffd", 3]}, "other": {1, 2}}


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
