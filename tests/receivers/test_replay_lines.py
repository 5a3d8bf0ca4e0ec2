"""`replay`: what a file hands the pipeline — an event a line, a batch as producers POST it, or the items of
one JSON document."""

import itertools
import json
from pathlib import Path
from typing import Any

from builders import JobRun, WorkflowRun
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.dead_letter import DeadLetters, unwrap
from otel_bridge.receivers.replay import BATCH, DEAD_LETTER, ReplaySummary, _items, replay
from otel_bridge.state.sqlite_store import SqliteStore


def _replayed(tmp_path: Path, lines: list[Any], text: str | None = None) -> tuple[ReplaySummary, list[dict]]:
    """The summary of a durable-effect replay of `lines` (each written as one JSON line, or `text` as it is),
    and the dead letters it kept."""
    source = tmp_path / "events.jsonl"
    source.write_text(text if text is not None else "".join(json.dumps(line) + "\n" for line in lines))
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    pipeline = Pipeline(SqliteStore(":memory:"), MetricsHub(), Settings(state=":memory:"))
    summary = replay({"durable-effect": pipeline.consumer(pipeline.durable_effect)}, str(source), letters, False)
    letters.close()
    dead = tmp_path / "dead.jsonl"
    return summary, [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []


def test_a_line_that_is_a_posted_batch_is_replayed_as_its_events(tmp_path):
    # Bodies a proxy or a tracking service of one's own logged, one per line, as producers posted them.
    run = WorkflowRun("import").started().step_started("load").after(50).step_completed("load").completed()
    job = JobRun().started().executed(1)
    summary, dead = _replayed(tmp_path, [{"events": run.events[:2]}, {"events": run.events[2:]}, *job.events])
    assert (summary.lines, summary.accepted, summary.rejected, dead) == (2 + len(job.events), 6, [], [])
    assert summary.render().startswith(f"lines: {2 + len(job.events)}  events: 6  accepted: 6  ")

    again, _ = _replayed(tmp_path, [{"events": run.events}])
    assert again.accepted == 4


def test_a_bad_event_of_a_batch_is_named_by_its_line_and_index_and_kept_the_others_stored(tmp_path):
    run = WorkflowRun("import").started().step_started("load").step_completed("load").completed()
    bad = {"type": "step.started", "eventId": "e-bad"}  # names no run
    summary, dead = _replayed(tmp_path, [run.events[0], {"events": [run.events[1], bad, *run.events[2:]]}])

    assert summary.accepted == 4
    (told,) = summary.render().splitlines()[1:]
    assert told.startswith("  line 2 events[1]: ") and told.endswith("(eventId e-bad)")
    (letter,) = dead
    assert (letter["line"], letter["within"]) == (2, 1)
    assert unwrap(letter) == ("durable-effect", bad)  # offered again by `replay --format dead-letter`


def test_a_batch_whose_events_are_no_array_is_refused_in_the_endpoints_words_and_an_empty_one_holds_nothing(tmp_path):
    summary, dead = _replayed(tmp_path, [{"events": {"type": "workflow.started"}}, {"events": []}])
    assert (summary.lines, summary.accepted) == (2, 0)
    assert [(str(at), r.error) for at, r in summary.rejected] == [
        ("line 1", '"events" must be an array, not an object')
    ]
    assert dead[0]["event"] == {"events": {"type": "workflow.started"}}


def test_a_line_with_more_events_than_a_batch_holds_is_stored_whole(tmp_path):
    runs = [WorkflowRun("w").started().completed() for _ in range(BATCH // 2 + 1)]
    summary, _ = _replayed(tmp_path, [{"events": [e for run in runs for e in run.events]}])
    assert (summary.lines, summary.accepted, summary.rejected) == (1, len(runs) * 2, [])


def test_an_event_is_never_taken_for_a_batch(tmp_path):
    # An event always has its type: one that also carries `events` (a field of its own) is still an event.
    run = WorkflowRun("w").started()
    (started,) = run.events
    summary, _ = _replayed(tmp_path, [started | {"events": ["not", "a", "batch"]}])
    assert (summary.accepted, summary.rejected) == (1, [])


def test_a_pretty_printed_batch_is_read_as_one_document_its_events_named_by_item_and_index(tmp_path):
    run = WorkflowRun("w").started().step_started("s").step_completed("s").completed()
    bad = {"type": "step.started", "eventId": "e-bad"}  # names no run
    body = {"events": [run.events[0], bad, *run.events[1:]]}
    summary, dead = _replayed(tmp_path, [], text=json.dumps(body, indent=2))

    assert (summary.unit, summary.lines, summary.accepted, summary.broken) == ("item", 1, 4, None)
    told = summary.render().splitlines()
    assert told[0].startswith("items: 1  events: 5  accepted: 4  ")
    assert told[1].startswith("  item 1 events[1]: ") and told[1].endswith("(eventId e-bad)")
    (letter,) = dead
    assert (letter["item"], letter["within"]) == (1, 1)
    assert unwrap(letter) == ("durable-effect", bad)


def test_an_exported_array_of_events_and_batches_is_read_item_by_item_as_they_are_parsed(tmp_path):
    """An array of any length in flat memory: its first events are stored before the parser has seen its end."""
    runs = [WorkflowRun(f"w{i}").started().completed() for i in range(BATCH)]
    items: list[Any] = [e for run in runs for e in run.events]
    items.append({"events": WorkflowRun("batched").started().completed().events})
    text = json.dumps(items, indent=2)
    stored_before_the_end: list[int] = []
    pipeline = Pipeline(SqliteStore(":memory:"), MetricsHub(), Settings(state=":memory:"))
    consumer = pipeline.consumer(pipeline.durable_effect)
    ingested: list[int] = []

    class Counting:
        def ingest(self, events):
            ingested.append(len(events))
            return consumer.ingest(events)

    def lines():
        *body, closing = text.encode().splitlines(keepends=True)
        yield from body
        stored_before_the_end.append(sum(ingested))
        yield closing

    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    summary = replay({"durable-effect": Counting()}, "export", letters, False, lines=lines())
    assert (summary.unit, summary.lines, summary.accepted, summary.rejected) == (
        "item",
        2 * BATCH + 1,
        2 * BATCH + 2,
        [],
    )
    assert stored_before_the_end[0] >= BATCH
    assert summary.render().startswith(f"items: {2 * BATCH + 1}  events: {2 * BATCH + 2}  accepted: {2 * BATCH + 2}  ")


def test_values_one_after_another_as_jq_prints_them_are_each_an_item(tmp_path):
    run = WorkflowRun("w").started().step_started("s").step_completed("s").completed()
    summary, _ = _replayed(tmp_path, [], text="\n".join(json.dumps(e, indent=2) for e in run.events) + "\n")
    assert (summary.unit, summary.lines, summary.accepted, summary.rejected) == ("item", 4, 4, [])


def test_a_line_that_is_an_array_holds_events_as_a_batch_does(tmp_path):
    run = WorkflowRun("w").started().step_started("s").completed()
    summary, _ = _replayed(tmp_path, [run.events[0], run.events[1:], {"events": []}])
    assert (summary.unit, summary.lines, summary.batched, summary.accepted) == ("line", 3, 2, 3)


def test_an_export_on_one_line_is_read_item_by_item_and_what_follows_its_array_is_not_passed_over(tmp_path):
    # `json.dump(events, f)`: the whole export one line, which was read and parsed whole.
    runs = [WorkflowRun(f"w{i}").started().completed() for i in range(3)]
    lines = [[e for run in runs[:2] for e in run.events], *runs[2].events]
    summary, _ = _replayed(tmp_path, lines)
    assert (summary.unit, summary.lines, summary.accepted, summary.rejected) == ("item", 6, 6, [])


def test_a_document_cut_short_is_stored_up_to_its_last_whole_item_and_says_where_it_breaks(tmp_path):
    runs = [WorkflowRun(f"w{i}").started().completed() for i in range(3)]
    text = json.dumps([e for run in runs for e in run.events], indent=2)
    summary, dead = _replayed(tmp_path, [], text=text[: text.index(runs[2].events[1]["eventId"])])
    assert (summary.lines, summary.accepted, dead) == (5, 5, [])
    told = summary.render().splitlines()[-1]
    assert told.startswith("the file cannot be read from item 6 on (not JSON: parse error: premature EOF)")
    assert told.endswith("; the items before it are stored")


def test_a_document_with_what_is_not_json_in_it_is_stored_up_to_there_and_says_what_and_where(tmp_path):
    run = WorkflowRun("w").started().completed()
    text = "[" + json.dumps(run.events[0]) + ",\n  {x: 1},\n" + json.dumps(run.events[1]) + "]\n"
    summary, _ = _replayed(tmp_path, [], text=text)
    assert (summary.lines, summary.accepted) == (1, 1)
    told = summary.render().splitlines()[-1]
    assert told.startswith(
        "the file cannot be read from item 2 on (not JSON: lexical error: invalid char in json text."
    )
    assert "{x: 1}" in told


def test_a_pretty_printed_dead_letter_file_stops_at_its_first_line_saying_how_to_write_one_per_line(tmp_path):
    # The bridge writes a letter a line: each of this one's lines rejected and kept would do no good.
    source = tmp_path / "dead-letter.json"
    source.write_text(json.dumps([{"format": "durable-effect", "event": {"type": "x"}}], indent=2))
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    summary = replay({}, str(source), letters, False, source_format=DEAD_LETTER)

    assert (summary.lines, summary.accepted, summary.rejected) == (0, 0, [])
    told = summary.render()
    assert "cannot be read from line 1 on (it opens one JSON document spread over lines" in told
    assert "jq -c '.[]'" in told and told.endswith("nothing of it is stored")


def test_a_truncated_event_on_the_first_line_is_rejected_and_the_lines_after_it_replayed(tmp_path):
    run = WorkflowRun("w").started().completed()
    text = json.dumps(run.events[0])[:40] + "\n" + "".join(json.dumps(e) + "\n" for e in run.events)
    summary, dead = _replayed(tmp_path, [], text=text)
    assert (summary.lines, summary.accepted, len(summary.rejected), len(dead)) == (3, 2, 1, 1)
    assert summary.broken is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)  # fmt: skip


_top = st.lists(_json, max_size=4) | _json.filter(lambda v: not isinstance(v, list))  # an array's items are the values


@settings(max_examples=200, deadline=None)
@given(tops=st.lists(_top, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_a_documents_items_are_its_arrays_items_and_its_other_values_however_its_bytes_come(tops, cuts):
    # Arrays and values one after another, read in chunks cut anywhere: every item, in order, none passed over.
    text = "\n".join(json.dumps(top) for top in tops).encode()
    bounds = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    chunks = iter([text[a:b] for a, b in itertools.pairwise(bounds)])
    expected = [item for top in tops for item in (top if isinstance(top, list) else [top])]
    got = [value for _number, value in _items(chunks)]
    assert got == json.loads(json.dumps(expected))
