"""Rejected events are kept with why, one JSON line each, whatever they hold."""

import json

from otel_bridge.receivers.dead_letter import DeadLetters


def _nested(depth: int) -> dict:
    deep: dict = {}
    inner = deep
    for _ in range(depth):
        inner["a"] = inner = {}
    return deep


def test_an_event_nested_deeper_than_orjson_writes_is_kept_whole(tmp_path):
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    event = {"eventId": "e1", "input": _nested(300)}  # valid JSON the bridge parsed; orjson writes 254 levels
    letters.keep("http", [({"index": 0, "eventId": "e1", "error": "type: Field required"}, event)])
    letters.close()
    (kept,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert kept["event"] == event and kept["error"] == "type: Field required"


def test_an_event_too_deep_even_for_that_is_named_rather_than_lost_with_its_reason(tmp_path):
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    letters.keep("http", [({"index": 3, "eventId": "e9", "error": "why"}, {"input": _nested(5000)})])
    letters.close()
    (kept,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (kept["index"], kept["eventId"], kept["error"]) == (3, "e9", "why")
    assert kept["event"].startswith("[not kept")
