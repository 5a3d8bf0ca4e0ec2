"""`replay`: what a file's lines hand the pipeline — an event a line, or a batch as producers POST it."""

import json
from pathlib import Path
from typing import Any

from builders import JobRun, WorkflowRun

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.dead_letter import DeadLetters, unwrap
from otel_bridge.receivers.replay import BATCH, ReplaySummary, replay
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


def test_a_pretty_printed_document_stops_at_its_first_line_saying_how_to_write_one_per_line(tmp_path):
    # Each of its lines rejected and kept would fill the dead-letter file with fragments of one body.
    run = WorkflowRun("w").started().completed()
    summary, dead = _replayed(tmp_path, [], text=json.dumps({"events": run.events}, indent=2))

    assert (summary.lines, summary.accepted, summary.rejected, dead) == (0, 0, [], [])
    told = summary.render()
    assert "cannot be read from line 1 on (it opens one JSON document spread over lines" in told
    assert "jq -c '.events[]'" in told and told.endswith("nothing of it is stored")


def test_a_truncated_event_on_the_first_line_is_rejected_and_the_lines_after_it_replayed(tmp_path):
    run = WorkflowRun("w").started().completed()
    text = json.dumps(run.events[0])[:40] + "\n" + "".join(json.dumps(e) + "\n" for e in run.events)
    summary, dead = _replayed(tmp_path, [], text=text)
    assert (summary.lines, summary.accepted, len(summary.rejected), len(dead)) == (3, 2, 1, 1)
    assert summary.broken is None
