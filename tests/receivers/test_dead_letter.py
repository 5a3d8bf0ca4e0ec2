"""Rejected events are kept with why, one JSON line each, whatever they hold, and can be offered again."""

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import small_filesystem

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.dead_letter import DeadLetters, DeadLetterUnwritable, NotReplayable, unwrap
from otel_bridge.receivers.replay import replay
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.state.sqlite_store import SqliteStore


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
    # Deeper than any interpreter's encoder goes (3.11 stops near 1,000 levels, 3.13 past 5,000).
    letters.keep("http", [({"index": 3, "eventId": "e9", "error": "why"}, {"input": _nested(100_000)})])
    letters.close()
    (kept,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert (kept["index"], kept["eventId"], kept["error"]) == (3, "e9", "why")
    assert kept["event"].startswith("[not kept")


def test_a_dead_letter_file_that_is_no_file_is_refused_saying_so():
    # /dev/null, to keep nothing, was said to be read-only; its rotation renames the file (as root, the device).
    with pytest.raises(DeadLetterUnwritable, match=r"/dev/null: it is no file \(a device, a pipe or a socket\)"):
        DeadLetters(Path("/dev/null"), 1_000_000, 1)


def test_a_dead_letters_event_goes_back_in_the_format_of_the_receiver_that_kept_it():
    event = {"type": "workflow.started"}
    assert unwrap({"receiver": "http", "event": event}) == ("durable-effect", event)
    assert unwrap({"receiver": "tracker", "event": event}) == ("durable-effect", event)
    assert unwrap({"receiver": "redis-stream:workflow-events", "event": event}) == ("event-sourced", event)
    assert unwrap({"receiver": "websocket", "event": event}) == ("phase10", event)
    assert unwrap({"receiver": "import-timeline", "event": event}) == ("phase10", event)
    assert unwrap({"receiver": "replay:old.jsonl", "event": event}) == ("durable-effect", event)


def test_an_event_a_replay_rejects_again_keeps_its_format_for_the_next_replay(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"event_id": "e1", "workflow_id": "w1"}) + "\n")  # no state: still not usable
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    consumer = Pipeline(SqliteStore(":memory:"), MetricsHub(), Settings(state=":memory:")).consumer(
        EventSourcedDecoder(EventSourcedOptions())
    )
    summary = replay({"event-sourced": consumer}, str(rows), letters, False, source_format="event-sourced")
    letters.close()
    assert len(summary.rejected) == 1
    (letter,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert unwrap(letter) == ("event-sourced", {"event_id": "e1", "workflow_id": "w1"})


@pytest.mark.parametrize(
    ("letter", "why"),
    [
        ({"receiver": "http", "omitted": 3, "error": "over the batch's dead-letter budget"}, "holds no event"),
        ({"receiver": "websocket", "error": "message is not valid JSON: x", "event": "{"}, "not kept as JSON"),
        ({"receiver": "http", "error": "why", "event": "[not kept: nested too deeply to write out]"}, "not kept as"),
        ({"receiver": "somewhere", "event": {}}, "'somewhere' is not one whose events can be told apart"),
        ({"workflowId": "w1", "type": "workflow.started"}, "not a dead letter"),
        (["a list"], "not a dead letter"),
    ],
)
def test_a_line_with_no_event_to_offer_again_says_why(letter, why):
    with pytest.raises(NotReplayable, match=why):
        unwrap(letter)


def test_a_dead_letter_the_disk_cannot_take_is_told_once_in_the_log_not_as_a_traceback_each(tmp_path, caplog, capsys):
    with small_filesystem(tmp_path / "disk", 1) as disk:
        letters = DeadLetters(disk / "dead.jsonl", 10**7, 1)
        (disk / "other.log").write_bytes(bytes(1023 * 1024))  # the disk fills
        letter = ({"index": 0, "eventId": "e1", "error": "type: Field required"}, {"eventId": "e1", "x": "y" * 8000})
        with caplog.at_level(logging.WARNING):
            assert letters.keep("http", [letter] * 3) is False
        assert "--- Logging error ---" not in capsys.readouterr().err
        told = [r.getMessage() for r in caplog.records if "could not keep a dead letter" in r.getMessage()]
        assert len(told) == 1 and str(disk / "dead.jsonl") in told[0] and "No space left" in told[0]

        (disk / "other.log").unlink()
        with caplog.at_level(logging.WARNING):
            assert letters.keep("http", [letter]) is True
        assert any("dead letters are kept in" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
        letters.close()


def _offered(lines: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """What a replay of dead-letter `lines` offers again: each event with its format (none where there is none)."""
    for line in lines:
        try:
            yield unwrap(json.loads(line))
        except NotReplayable:
            continue


def test_the_events_a_damaged_state_file_rejected_are_found_in_every_rotated_file_oldest_first_and_no_other():
    import datetime as dt
    import tempfile
    from pathlib import Path

    from otel_bridge.receivers.replay import rejected_for_damage
    from otel_bridge.state.store import DAMAGE_REJECTED

    damage = f"{DAMAGE_REJECTED} (database disk image is malformed): salvage-state"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dead.jsonl"
        letters = DeadLetters(path, 400, 3)  # rotated at every line or two
        for n in range(4):
            letters.keep("http", [({"index": 0, "error": damage}, {"eventId": f"e{n}"})])
            letters.keep("http", [({"index": 0, "error": "type: Field required"}, {"eventId": f"bad{n}"})])
        letters.keep("redis-stream:workflow:events", [({"error": damage}, {"event_id": "s1"})])
        letters.keep("http", [({"error": damage}, "[not kept as JSON, which it is not: b'x']")])
        letters.close()
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat(timespec="milliseconds")

        found = list(_offered(rejected_for_damage(path, 3, "2000-01-01T00:00:00.000+00:00")))
        none_since = list(_offered(rejected_for_damage(path, 3, later)))

    # The oldest rotated away past the 3 files kept; the rest in the order they were rejected, each in its
    # format; neither those rejected for another reason nor one not kept as JSON.
    assert found == [
        ("durable-effect", {"eventId": "e2"}),
        ("durable-effect", {"eventId": "e3"}),
        ("event-sourced", {"event_id": "s1"}),
    ]
    assert none_since == []  # older than the memory of duplicates: taken again, they would count twice


def test_an_event_rejected_again_as_the_damages_rejections_are_offered_is_not_read_back(tmp_path):
    # Were the fresh file damaged too, each event offered would be kept again at the end, read, offered…
    from otel_bridge.receivers.replay import rejected_for_damage
    from otel_bridge.state.store import DAMAGE_REJECTED

    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    for n in range(3):
        letters.keep("http", [({"error": f"{DAMAGE_REJECTED} (malformed)"}, {"eventId": f"e{n}"})])
    found = _offered(rejected_for_damage(tmp_path / "dead.jsonl", 1, "2000"))
    offered = [next(found)]
    # Rejected again as it is offered, kept with its format (as a replay's rejections are): replayable.
    again = {"format": "durable-effect", "error": f"{DAMAGE_REJECTED} (malformed)"}
    letters.keep("salvage", [(again, {"eventId": "e0"})])
    offered += list(found)
    letters.close()

    assert [event["eventId"] for _format, event in offered] == ["e0", "e1", "e2"]
    assert [event["eventId"] for _format, event in _offered(rejected_for_damage(tmp_path / "dead.jsonl", 1, "2000"))][
        -1
    ] == "e0"
