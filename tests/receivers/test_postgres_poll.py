"""The runtime v2's runs, read from a real PostgreSQL as its runtime writes them, poll by poll."""

import glob
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fold_harness import fold_events, fold_more, settle_all
from runtime_v2_tables import Runtime, at, reader_of

from otel_bridge.config import Settings
from otel_bridge.consumer import IngestReport
from otel_bridge.correlate.outputs import SpanStatus
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.postgres_poll import TablePoller
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder, RuntimeV2Options
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore

DECODE = RuntimeV2Decoder()


class Recorded:
    """The pipeline's consumer, each batch's rows kept to be folded by the test."""

    def __init__(self, tmp_path) -> None:
        state = str(tmp_path / "state.db")
        self.pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
        self._consumer = self.pipeline.consumer(DECODE)
        self.rows: list[dict[str, Any]] = []
        self.batches = 0

    def ingest(self, events: Any, *, producer: str | None = None) -> IngestReport:
        report = self._consumer.ingest(events, producer=producer)
        self.rows += events
        self.batches += 1
        return report


def _poller(url: str, consumer: Any, tmp_path, marks: dict[str, bytes], **settings: Any) -> TablePoller:
    letters = DeadLetters(tmp_path / "dead.jsonl", 1_000_000, 1)
    # The runtime's rows are dated 2026-12-04 09:00 on: a first start reads back far enough.
    settings.setdefault("look_back_seconds", 10**9)
    return TablePoller(url, consumer, letters, marks.get, marks.__setitem__, **settings)


def _runtime(url: str) -> Runtime:
    import psycopg

    return Runtime(psycopg.connect(url, autocommit=True))


def test_a_run_is_read_as_it_goes_and_its_rows_make_the_trace_read_once_would(database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    poller = _poller(database, recorded, tmp_path, marks)
    run = runtime.start_run(at(0))
    lookup = runtime.step_started(run, "root.steps[0]", "lookup", at(1))
    runtime.retry_scheduled(run, lookup, "root.steps[0]", at(1), at(2), backoff=5)
    assert poller.poll_once() == 1
    assert poller.poll_once() == 0, "a run not changed since is not read again"
    runtime.due_waits_resolved(run, "retry", at(7))
    again = runtime.step_started(run, "root.steps[0]", "lookup", at(7.1))
    runtime.step_succeeded(run, again, at(7.1), at(8), "root.steps[1]")
    runtime.step_started(run, "root.steps[1]", "wait-approval", at(8.1))
    runtime.event_wait(run, "root.steps[1]", at(8.2), "APPROVED", "T-1", timeout=3600)
    assert poller.poll_once() == 1
    runtime.event_arrived(run, "APPROVED", at(100))
    resumed = runtime.step_started(run, "root.steps[1]", "wait-approval", at(100.1))
    runtime.step_succeeded(run, resumed, at(100.1), at(100.2), None)
    assert poller.poll_once() == 1
    assert marks["runtime-v2 runs updated_at"].decode().startswith("2026-12-04T09:01:40.2")

    folded = fold_events(recorded.rows, decoder=DECODE)
    assert folded.root.name == "workflow ticket-escalation" and folded.root.status is SpanStatus.OK
    assert folded.root.attributes["tenant.id"] == "acme"
    assert [s.status for s in folded.all("step lookup")] == [SpanStatus.ERROR, SpanStatus.OK]
    (retry,) = [e for e in folded.span("step lookup", 1).events if e.name == "retry.scheduled"]
    assert retry.attributes["workflow.retry.delay_ms"] == 5000
    assert len(folded.all("step wait-approval")) == 2
    assert {"event.wait.created", "event.wait.resolved"} <= {e.name for e in folded.root.events}
    # The same rows read once, at the end (as `import-runtime-v2` reads them), tell the same spans.
    once = Recorded(tmp_path / "once") if (tmp_path / "once").mkdir() is None else None
    assert once is not None
    _poller(database, once, tmp_path, {}, overlap_seconds=0).poll_once()
    assert _spans(fold_events(once.rows, decoder=DECODE)) == _spans(folded)
    parked = folded.span("step wait-approval", 1)
    assert (parked.start_ns, parked.end_ns) == (_ns(at(8.1)), _ns(at(8.2))), "ended as its wait began"


def _spans(folded) -> list[tuple]:
    return sorted((s.name, s.start_ns, s.end_ns, s.status) for s in folded.spans)


def _ns(moment) -> int:
    """Nanoseconds since the epoch, exactly (a float's product drifts by some hundred ns)."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def test_an_execution_left_waiting_is_ended_when_the_run_resumes_however_long_after(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {}, overlap_seconds=15)
    run = runtime.start_run(at(0))
    runtime.step_started(run, "root.steps[0]", "wait-approval", at(1))
    runtime.event_wait(run, "root.steps[0]", at(2), "APPROVED", "T-1", timeout=None)
    poller.poll_once()
    runtime.event_arrived(run, "APPROVED", at(7200))  # two hours later: far past the overlap
    resumed = runtime.step_started(run, "root.steps[0]", "wait-approval", at(7200.5))
    runtime.step_succeeded(run, resumed, at(7200.5), at(7201), None)
    poller.poll_once()
    folded = fold_events(recorded.rows, decoder=DECODE)
    parked, done = folded.span("step wait-approval", 1), folded.span("step wait-approval", 2)
    assert (parked.start_ns, parked.end_ns) == (_ns(at(1)), _ns(at(2)))
    assert (done.start_ns, done.end_ns) == (_ns(at(7200.5)), _ns(at(7201)))


def test_a_restarted_poller_goes_on_from_its_mark_and_reads_a_run_first_met_whole(database, tmp_path):
    runtime, marks = _runtime(database), {}
    first = Recorded(tmp_path)
    runs = []
    for began in (0, 100):
        run = runtime.start_run(at(began))
        step = runtime.step_started(run, "root.steps[0]", "lookup", at(began + 1))
        runtime.step_succeeded(run, step, at(began + 1), at(began + 2), None)
        runs.append(run)
    _poller(database, first, tmp_path, marks, overlap_seconds=15).poll_once()
    assert {r["run_id"] for r in first.rows} == set(runs)
    # Meanwhile, long after: a run the first poller never saw.
    later = runtime.start_run(at(600))
    step = runtime.step_started(later, "root.steps[0]", "lookup", at(601))
    runtime.step_succeeded(later, step, at(601), at(602), None)
    (tmp_path / "again").mkdir()
    second = Recorded(tmp_path / "again")
    _poller(database, second, tmp_path, marks, overlap_seconds=15).poll_once()
    # Read again: only what changed within the overlap before the mark (the second run), whole.
    assert {r["run_id"] for r in second.rows} == {runs[1], later}
    assert len(fold_events([r for r in second.rows if r["run_id"] == later], decoder=DECODE).spans) == 2


def test_a_change_dated_before_the_mark_and_committed_after_it_is_still_read(database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    poller = _poller(database, recorded, tmp_path, marks, overlap_seconds=15)
    fast = runtime.start_run(at(10))
    poller.poll_once()
    # Another worker's clock is 5 s behind: its run is dated before what was read already.
    slow = runtime.start_run(at(5))
    assert poller.poll_once() == 1
    assert {r["run_id"] for r in recorded.rows if "workflow_id" in r} == {fast, slow}


def test_a_row_it_cannot_read_is_kept_as_a_dead_letter_and_the_rest_of_the_run_is_read(database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    run = runtime.start_run(at(0))
    step = runtime.step_started(run, "root.steps[0]", "lookup", at(1))
    runtime.step_succeeded(run, step, at(1), at(2), None)
    runtime.db.execute("UPDATE workflow_run_steps SET attempt = 99999 WHERE step_id = %s", (step,))
    runtime.db.execute("UPDATE workflow_runs SET updated_at = updated_at + interval '1 ms' WHERE run_id = %s", (run,))
    poller = _poller(database, recorded, tmp_path, marks)
    poller.poll_once()
    (letter,) = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["receiver"] == "runtime-v2" and letter["event"]["step_id"] == step
    assert "attempt" in letter["error"]
    root = fold_events(recorded.rows, decoder=lambda row: [] if row.get("attempt") == 99999 else DECODE(row)).root
    assert root.status is SpanStatus.OK


def test_while_postgres_is_down_it_says_so_and_then_reads_what_changed_meanwhile(postgres, database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    poller = _poller(database, recorded, tmp_path, marks, poll_seconds=0.1)
    with _running(poller):
        first = runtime.start_run(at(0))
        _until(lambda: any(r.get("run_id") == first for r in recorded.rows))
        assert poller.disconnected_since is None
        runtime.db.close()
        postgres.stop()
        _until(lambda: poller.disconnected_since is not None)
        postgres.start()
        runtime = _runtime(database)
        second = runtime.start_run(at(30))
        _until(lambda: any(r.get("run_id") == second for r in recorded.rows))
        # Followed again once the poll that handed the row over has ended (a moment after the row is recorded).
        _until(lambda: poller.disconnected_since is None, timeout=5)


@contextmanager
def _running(poller: TablePoller) -> Iterator[None]:
    """The poller following the tables in a thread of its own, as `serve` runs it, until the block ends."""
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not met in time"
        time.sleep(0.05)


def test_first_start_reads_only_the_runs_changed_within_its_look_back(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    now = runtime.db.execute("SELECT now()").fetchone()[0]
    runtime.start_run(now - timedelta(days=2))
    recent = runtime.start_run(now - timedelta(minutes=5))
    _poller(database, recorded, tmp_path, {}, look_back_seconds=3600).poll_once()
    assert {r["run_id"] for r in recorded.rows} == {recent}


def test_a_second_update_in_the_same_millisecond_as_the_one_read_is_not_missed(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0))
    step = runtime.step_started(run, "root.steps[0]", "check", at(1), temporal=True)
    poller.poll_once()
    # The control step ends and the run with it, in the millisecond of the run's last update.
    runtime.step_succeeded(run, step, at(1), at(1), None)
    assert poller.poll_once() == 1
    assert fold_events(recorded.rows, decoder=DECODE).root.status is SpanStatus.OK


def test_a_long_run_is_read_whole_once_then_only_what_changed(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0))
    for i in range(200):
        step = runtime.step_started(run, f"root.steps[{i}]", f"s{i}", at(i))
        runtime.step_succeeded(run, step, at(i), at(i + 0.5), f"root.steps[{i + 1}]")
    poller.poll_once()
    assert len(recorded.rows) == 201
    runtime.start_run(at(500))  # others' runs go on meanwhile, long past the overlap
    poller.poll_once()
    del recorded.rows[201:]
    step = runtime.step_started(run, "root.steps[200]", "last", at(1000))
    runtime.step_succeeded(run, step, at(1000), at(1001), None)
    poller.poll_once()
    again = {r.get("definition_step_id") for r in recorded.rows[201:]}
    # Its row, its new step, and those that changed in the overlap (15 s) before its last read: not all 200.
    assert again == {None, "last", *(f"s{i}" for i in range(184, 200))}
    assert len(fold_events(recorded.rows, decoder=DECODE).spans) == 202


def test_a_wait_written_without_an_update_of_its_run_is_met_while_it_waits(database, tmp_path):
    """As the Temporal projection writes a run: the step's start updates the run, its wait does not."""
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0))
    step = runtime.step_started(run, "root.steps[0]", "wait-approval", at(1), temporal=True)
    poller.poll_once()
    runtime.db.execute(
        "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, event_name, key, status, created_at) "
        "VALUES (%s, 'root.steps[0]', 'event', 'APPROVED', 'T-1', 'WAITING', %s)",
        (run, at(2)),
    )
    assert poller.poll_once() == 0, "the run's row did not change"
    poller.poll_once()  # the same wait, still waiting, is not handed over again
    (state,) = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    assert state.counted_state == "paused"
    assert sum(1 for r in recorded.rows if "wait_id" in r) == 1
    runtime.db.execute("UPDATE workflow_run_waits SET status = 'RESOLVED', resolved_at = %s", (at(60),))
    runtime.step_succeeded(run, step, at(1), at(61), None)  # the same execution ends, after its wait
    poller.poll_once()
    folded = fold_events(recorded.rows, decoder=DECODE)
    (only,) = folded.all("step wait-approval")
    assert (only.start_ns, only.end_ns) == (_ns(at(1)), _ns(at(61)))
    assert {"event.wait.created", "event.wait.resolved"} <= {e.name for e in folded.root.events}


def test_a_task_for_a_person_is_read_with_its_kind(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    run = runtime.start_run(at(0))
    runtime.step_started(run, "root.steps[0]", "approve", at(1))
    task = runtime.human_task(run, "root.steps[0]", at(2), "escalationApproval")
    runtime.event_arrived(run, "HUMAN_TASK_COMPLETED", at(90))
    step = runtime.step_started(run, "root.steps[0]", "approve", at(90.1))
    runtime.step_succeeded(run, step, at(90.1), at(90.2), None)
    _poller(database, recorded, tmp_path, {}).poll_once()
    span = fold_events(recorded.rows, decoder=DECODE).span("task escalationApproval")
    assert (span.start_ns, span.end_ns) == (_ns(at(2)), _ns(at(90)))
    assert span.attributes["workflow.human_task.id"] == task


def test_tables_not_there_yet_are_told_in_postgresqls_words_then_followed_once_made(database, tmp_path, caplog):
    recorded = Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {}, poll_seconds=0.1)
    with caplog.at_level("INFO", logger="otel_bridge.receivers.postgres_poll"), _running(poller):
        _until(lambda: "does not exist" in caplog.text)
        run = _runtime(database).start_run(at(0))  # the runtime's migration ran: its tables are there
        _until(lambda: any(r.get("run_id") == run for r in recorded.rows))
    told = caplog.text
    assert 'relation "workflow_runs" does not exist; reconnecting' in told and "LINE" not in told, told
    assert "following runs at" in told and " again" not in told.split("following runs at", 1)[1].split("\n")[0]


def test_of_replicas_sharing_a_redis_state_one_reads_the_tables_and_another_takes_over_when_it_stops(
    database, tmp_path, redis_url
):
    prefix = f"otel-bridge-test:{uuid.uuid4().hex[:8]}:"
    runtime = _runtime(database)
    replicas, marks = [], {}  # the mark, kept with the state they share
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        store = RedisStore(redis_url, 3600, prefix)
        recorded = Recorded(tmp_path / name)
        holder = f"replica-{name}"
        poller = _poller(
            database,
            recorded,
            tmp_path / name,
            marks,
            poll_seconds=0.1,
            lease=lambda seconds, store=store, holder=holder: store.lease("runtime-v2", holder, seconds),
            lease_seconds=1.0,
        )
        replicas.append((poller, recorded))
    (first, first_rows), (second, second_rows) = replicas
    first_run = runtime.start_run(at(0))
    with _running(first):
        _until(lambda: any(r.get("run_id") == first_run for r in first_rows.rows))
        with _running(second):
            time.sleep(0.5)
            assert second.reading is False and second_rows.rows == [], "the other stands by"
        second_run = runtime.start_run(at(30))
        _until(lambda: any(r.get("run_id") == second_run for r in first_rows.rows))
        # An event its worker is still at as the first stops: held by it, then read again by the other.
        held = runtime.event_taken("TICKET_CREATED", datetime.now(UTC) - timedelta(seconds=40))
        time.sleep(0.5)
    with _running(second):  # the first stopped: its lease lapses within a second
        third_run = runtime.start_run(at(60))
        _until(lambda: any(r.get("run_id") == third_run for r in second_rows.rows))
        assert second.reading is True
        runtime._update("workflow_runtime_events", "event_id", held, matched_run_id=third_run)
        _until(lambda: any(r.get("event_id") == held for r in second_rows.rows))
    read_by_second = {r["run_id"] for r in second_rows.rows if "workflow_id" in r}
    assert first_run not in read_by_second, "it went on from the mark the first kept, not its own start"
    assert not any(r.get("event_id") == held for r in first_rows.rows)


def test_a_failed_run_its_operator_retries_is_a_second_trace_following_the_first(database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    poller = _poller(database, recorded, tmp_path, marks)
    run = runtime.start_run(at(0))
    lookup = runtime.step_started(run, "root.steps[0]", "lookup", at(1))
    runtime.step_failed(run, lookup, "root.steps[0]", at(1), at(2))
    poller.poll_once()
    failed = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=None)
    runtime.retried(run, "root.steps[0]", at(600), "the ticket was restored")
    again = runtime.step_started(run, "root.steps[0]", "lookup", at(601))
    runtime.step_succeeded(run, again, at(601), at(602), None)
    poller.poll_once()

    folded = fold_events(recorded.rows, decoder=DECODE)
    first, retry = sorted((s for s in folded.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    assert first.status is SpanStatus.ERROR and first.status_message == "ticket not found", "as read when it failed"
    assert retry.status is SpanStatus.OK and retry.start_ns == _ns(at(600)) and retry.trace_id != first.trace_id
    assert retry.remote_links == [(first.trace_id, first.span_id)]
    assert retry.attributes["workflow.execution.id"] == run and retry.attributes["workflow.execution.retry"] == 1
    asked = next(e for e in retry.events if e.name == "Run retry requested")
    assert '"reason":"the ticket was restored"' in asked.attributes["workflow.log.context"]
    assert [s.name for s in folded.spans if s.trace_id == retry.trace_id and s.parent_span_id] == ["step lookup"]
    assert all(a.value != "late" for a in folded.admissions), "nothing after the failed run's end is late"
    assert len(failed.runs) == 1


def test_an_operators_cancel_written_after_the_runs_end_is_still_read_with_its_reason(database, tmp_path):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    poller = _poller(database, recorded, tmp_path, marks)
    run = runtime.start_run(at(0))
    runtime.step_started(run, "root.steps[0]", "wait-approval", at(1))
    runtime.event_wait(run, "root.steps[0]", at(2), "APPROVED", "T-1", timeout=3600)
    runtime._run(run, at(50), status="CANCELED", node_path=None, completed_at=at(50))
    assert poller.poll_once() == 1
    # The runtime's cancel action logs the operator's reason just after it updated the run, never again.
    runtime.log(run, at(50.01), "WARN", "Run canceled by operator", context={"reason": "duplicate"}, source="api")
    assert poller.poll_once() == 0
    folded = fold_events(recorded.rows, decoder=DECODE)
    canceled = next(e for e in folded.root.events if e.name == "Run canceled by operator")
    assert (
        canceled.attributes["workflow.log.level"] == "WARN"
        and "duplicate" in canceled.attributes["workflow.log.context"]
    )


def test_a_run_that_has_just_ended_is_read_at_the_next_poll_with_the_lines_its_log_writes_after_its_end(
    database, tmp_path
):
    """Read in the moment between the cancel's update of the run and its log line, the run was sent (a settle
    window later) before the next poll read the line: a "late event", its reason lost."""
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {}, overlap_seconds=0)
    now = datetime.now(UTC)
    run = runtime.start_run(now - timedelta(seconds=5))
    runtime.step_started(run, "root.steps[0]", "wait-approval", now - timedelta(seconds=4))
    runtime.event_wait(run, "root.steps[0]", now - timedelta(seconds=3), "APPROVED", "T-1", timeout=3600)
    poller.poll_once()
    other = runtime.start_run(now - timedelta(seconds=2))
    runtime._run(run, now, status="CANCELED", node_path=None, completed_at=now)
    runtime._run(other, now + timedelta(milliseconds=5), status="RUNNING")  # the mark would move past the first
    assert poller.poll_once() == 1, "the run that has just ended is left to the next poll"
    runtime.log(run, now + timedelta(milliseconds=10), "WARN", "Run canceled by operator",
                context={"reason": "duplicate"}, source="api")  # fmt: skip
    live = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=_ns(now + timedelta(seconds=1.5)))
    assert not [s for s in live.spans if s.parent_span_id is None and run in str(s.attributes)], "not sent"
    before = len(recorded.rows)
    assert poller.poll_once() == 1, "read again though the overlap is none: the mark stopped at it"
    fold_more(live, recorded.rows[before:], decoder=DECODE)
    settle_all(live, _ns(now + timedelta(seconds=4)))
    assert "late" not in {a.value for a in live.admissions}
    (root,) = [s for s in live.spans if s.parent_span_id is None and s.attributes.get("workflow.execution.id") == run]
    assert root.attributes["workflow.execution.cancel_reason"] == "duplicate"
    assert "Run canceled by operator" in {e.name for e in root.events}
    assert poller.poll_once() == 0, "and left once only"


def test_an_import_reads_a_run_that_has_just_ended_at_once(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    now = datetime.now(UTC)
    run = runtime.start_run(now - timedelta(seconds=2))
    step = runtime.step_started(run, "root.steps[0]", "lookup", now - timedelta(seconds=1))
    runtime.step_succeeded(run, step, now - timedelta(seconds=1), now, None)
    assert _poller(database, recorded, tmp_path, {}, overlap_seconds=0, follows=False).poll_once() == 1
    assert fold_events(recorded.rows, decoder=DECODE).root.end_ns == _ns(now)


def test_a_runs_log_is_read_from_the_level_asked_for_on_the_execution_it_was_written_in(database, tmp_path):
    runtime = _runtime(database)
    run = runtime.start_run(at(0))
    lookup = runtime.step_started(run, "root.steps[0]", "lookup", at(1))
    runtime.action_called(run, "root.steps[0]", "tickets.find", at(1.1), at(1.9), "upstream 503")
    runtime.retry_scheduled(run, lookup, "root.steps[0]", at(1), at(2), backoff=5)
    told = {}
    for level in ("warn", "info", "none"):
        recorded = Recorded(tmp_path / level)
        levels = {"warn": ("WARN", "ERROR"), "info": ("INFO", "WARN", "ERROR"), "none": ()}[level]
        _poller(database, recorded, tmp_path / level, {}, log_levels=levels).poll_once()
        decoded = RuntimeV2Decoder(RuntimeV2Options(log_levels=levels))
        told[level] = [e.name for e in fold_events(recorded.rows, decoder=decoded).span("step lookup").events]
    # The runtime's own warnings and errors, in its words, beside what its rows tell.
    assert told["warn"] == [
        "action.failed",
        "Action invocation failed",
        "retry.scheduled",
        "Retry scheduled",
        "exception",
    ]
    assert told["info"][:2] == ["Step started", "Action invocation started"] and len(told["info"]) == 7
    assert told["none"] == ["action.failed", "retry.scheduled", "exception"]


def test_an_event_wait_its_operator_requeues_pauses_the_run_again_until_its_event_comes_again(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0))
    runtime.step_started(run, "root.steps[0]", "wait-approval", at(1))
    runtime.event_wait(run, "root.steps[0]", at(2), "APPROVED", "T-1", timeout=None)
    runtime.event_arrived(run, "APPROVED", at(100))
    poller.poll_once()
    runtime.requeued(run, at(200), "approved by mistake")
    poller.poll_once()
    (state,) = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    assert state.counted_state == "paused", "waiting again, not running"
    runtime.event_arrived(run, "APPROVED", at(300))
    resumed = runtime.step_started(run, "root.steps[0]", "wait-approval", at(300.1))
    runtime.step_succeeded(run, resumed, at(300.1), at(301), None)
    poller.poll_once()
    folded = fold_events(recorded.rows, decoder=DECODE)
    told = [(e.name, e.time_ns) for e in folded.root.events if e.name.startswith("event.wait")]
    assert told == [
        ("event.wait.created", _ns(at(2))),
        ("event.wait.resolved", _ns(at(100))),
        ("event.wait.requeued", _ns(at(200))),
        ("event.wait.resolved", _ns(at(300))),
    ]
    assert folded.root.status is SpanStatus.OK and folded.root.end_ns == _ns(at(301))
    (line,) = [e for e in folded.root.events if e.name == "Event wait requeued by operator"]
    assert "approved by mistake" in line.attributes["workflow.log.context"]


def test_a_long_run_read_whole_is_handed_over_in_batches_that_make_its_trace(database, tmp_path, monkeypatch):
    import otel_bridge.receivers.postgres_poll as poll

    monkeypatch.setattr(poll, "_BATCH", 50)
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    run = runtime.start_run(at(0))
    for i in range(120):
        step = runtime.step_started(run, f"root.steps[{i}]", f"s{i}", at(i))
        runtime.step_succeeded(run, step, at(i), at(i + 0.5), None if i == 119 else f"root.steps[{i + 1}]")
    _poller(database, recorded, tmp_path, {}).poll_once()
    assert len(recorded.rows) == 121 and recorded.batches == 3
    folded = fold_events(recorded.rows, decoder=DECODE)
    assert len(folded.spans) == 121 and folded.root.status is SpanStatus.OK


def test_a_run_another_called_is_read_with_its_parent_and_links_to_it(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    parent = runtime.start_run(at(0))
    child = runtime.start_run(at(1), parent=parent)
    step = runtime.step_started(child, "root.steps[0]", "notify", at(1.1))
    runtime.step_succeeded(child, step, at(1.1), at(1.5), None)
    grandchild = runtime.start_run(at(1.2), parent=child)
    step = runtime.step_started(grandchild, "root.steps[0]", "page", at(1.3))
    runtime.step_succeeded(grandchild, step, at(1.3), at(1.4), None)
    runtime.canceled(parent, at(2))
    _poller(database, recorded, tmp_path, {}).poll_once()
    spans = fold_events(recorded.rows, decoder=DECODE).spans
    roots = {s.attributes["workflow.execution.id"]: s for s in spans if s.parent_span_id is None}
    assert roots[child].remote_links == [(roots[parent].trace_id, roots[parent].span_id)]
    assert roots[child].attributes["workflow.execution.parent_id"] == parent
    # The run its family began with, as the row names it (`root_run_id`): what the family is sampled by, and
    # found by in one search.
    assert roots[grandchild].remote_links == [(roots[child].trace_id, roots[child].span_id)]
    assert roots[grandchild].attributes["workflow.execution.root_id"] == parent
    assert roots[child].attributes["workflow.execution.root_id"] == parent
    assert "workflow.execution.root_id" not in roots[parent].attributes


def test_a_run_its_operator_cancelled_carries_their_reason(database, tmp_path):
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    run = runtime.start_run(at(0))
    runtime.step_started(run, "root.steps[0]", "wait-approval", at(1))
    runtime.event_wait(run, "root.steps[0]", at(2), "APPROVED", "T-1", timeout=3600)
    runtime.canceled(run, at(50), "duplicate ticket")
    _poller(database, recorded, tmp_path, {}).poll_once()
    root = fold_events(recorded.rows, decoder=DECODE).root
    assert root.attributes["workflow.execution.cancel_reason"] == "duplicate ticket"
    assert root.attributes["workflow.execution.result"] == "cancellation"


def test_a_temporal_run_a_catch_block_took_on_is_one_trace_however_its_reads_fell(database, tmp_path):
    """As the runtime's Temporal workflow projects a run: a failed step marks the run FAILED a moment before a
    catch block's first step makes it RUNNING again; its action retried within the step, in the same row."""
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0), temporal=True)
    lookup = runtime.step_started(run, "root.steps[0].try.steps[0]", "lookup", at(1), temporal=True)
    lookup_path = "root.steps[0].try.steps[0]"
    call = runtime.action_called(run, lookup_path, "tickets.find", at(1.1), at(1.5), "upstream 503", temporal=True)
    runtime.action_called_again(call, at(2.5), at(2.9), "ticket not found")
    runtime.temporal_step_ended(run, lookup, "root.steps[0].try.steps[0]", at(1), at(3), "ticket not found")
    assert poller.poll_once() == 1, "read while the run is marked FAILED"
    first = list(recorded.rows)
    notify = runtime.step_started(run, "root.steps[0].catch.steps[0]", "notify-owner", at(3.1), temporal=True)
    runtime.temporal_step_ended(run, notify, "root.steps[0].catch.steps[0]", at(3.1), at(3.5))
    runtime.quota_paused(run, "root.steps[1]", at(3.6), 100, 100, at(86_400))
    assert poller.poll_once() == 1
    runtime.db.execute("UPDATE workflow_run_waits SET status = 'RESOLVED', resolved_at = %s", (at(4000),))
    last = runtime.step_started(run, "root.steps[1]", "close-ticket", at(4000.1), temporal=True)
    runtime.temporal_step_ended(run, last, "root.steps[1]", at(4000.1), at(4000.2))
    runtime.temporal_run_completed(run, at(4000.3), "SUCCEEDED")
    assert poller.poll_once() == 1

    live = fold_events(first, decoder=DECODE, settle_at_ns=_ns(at(3.05)))
    assert [s.name for s in live.spans] == ["step lookup"], "its root waits for the run's end"
    fold_more(live, recorded.rows[len(first) :], decoder=DECODE)
    settle_all(live, _ns(at(5000)))
    assert "late" not in {a.value for a in live.admissions}
    assert (live.root.status, live.root.end_ns) == (SpanStatus.OK, _ns(at(4000.3)))
    assert live.root.attributes["temporalWorkflowID"] == f"workflow-runtime-v2:run:{run}"
    lookup_span = live.span("step lookup")
    assert lookup_span.status is SpanStatus.ERROR and lookup_span.status_message == "ticket not found"
    called = [(e.name, e.attributes.get("workflow.action.attempt")) for e in lookup_span.events if "action" in e.name]
    assert called == [("action.failed", 2)], "the row holds its last call: the second"
    assert {"quota.wait.created", "quota.wait.resolved"} <= {e.name for e in live.root.events}
    paused = next(e for e in live.root.events if e.name == "quota.wait.created")
    assert paused.attributes["workflow.pause.reason"] == "step quota exceeded (100 of 100)"


def test_a_run_that_ends_as_its_waits_are_read_is_handed_over_with_the_rows_that_ended_it(database, tmp_path):
    """A run Temporal drives, cancelled while its step waits for a person, in the moment between a poll's read
    of the runs and its read of the waits: the wait read as cancelled came with its run's row, which already
    told the run's end, and not the step's, which the run's next read brought after the run was sent (a
    "late event", met in a ten-minute run of the demo)."""
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0), temporal=True)
    approval = runtime.step_started(run, "root.steps[0]", "awaitApproval", at(1), temporal=True)
    runtime.human_task(run, "root.steps[0]", at(1.1), "escalationApproval", temporal=True)
    poller.poll_once()
    read_waits = poller._take_waiting

    def cancelled_meanwhile(db) -> None:
        runtime.temporal_canceled(run, approval, at(1), at(30))
        runtime.temporal_run_completed(run, at(31), "CANCELED")
        read_waits(db)

    poller._take_waiting = cancelled_meanwhile  # type: ignore[method-assign]
    poller.poll_once()
    poller._take_waiting = read_waits  # type: ignore[method-assign]
    live = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=_ns(at(33)))  # sent a settle window after
    assert live.root.end_ns == _ns(at(31)), "the run was sent as it ended"
    before = len(recorded.rows)
    poller.poll_once()
    fold_more(live, recorded.rows[before:], decoder=DECODE)
    assert "late" not in {a.value for a in live.admissions}
    waited = live.span("step awaitApproval")
    assert (waited.end_ns, waited.status) == (_ns(at(30)), SpanStatus.UNSET)


def test_a_quota_wait_the_runtimes_scan_resolves_is_read_as_it_is_though_the_runs_row_is_not_touched(
    database, tmp_path
):
    # The scan sets the run RUNNING without its `updated_at`: the run was shown paused until its next change,
    # which for a run Temporal drives comes only once the runtime brings it back.
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    run = runtime.start_run(at(0), temporal=True)
    first = runtime.step_started(run, "root.steps[0]", "lookup", at(1), temporal=True)
    runtime.temporal_step_ended(run, first, "root.steps[0]", at(1), at(2))
    runtime.quota_paused(run, "root.steps[1]", at(2.1), 100, 100, at(86_400))
    poller.poll_once()
    runtime.start_run(at(500))  # other runs go on: the mark moves past the paused run's row
    poller.poll_once()
    runtime.quota_resumed(run, "root.steps[1]", at(600))
    poller.poll_once()

    from otel_bridge.correlate.overview import RunQuery

    listed, _count = recorded.pipeline.list_runs(RunQuery(), now=at(601).timestamp())
    assert [(r.run_id, r.state) for r in listed if r.run_id == run] == [(run, "executing")]
    folded = fold_events(recorded.rows, decoder=DECODE, settle_at_ns=None)
    assert folded.runs[DECODE.state_key(run)].counted_state == "executing"


def test_a_schedules_occurrences_are_its_jobs_runs_and_one_that_never_comes_is_overdue(database, tmp_path):
    from otel_bridge.correlate.overview import JobQuery

    runtime, recorded = _runtime(database), Recorded(tmp_path)
    poller = _poller(database, recorded, tmp_path, {})
    every = timedelta(minutes=5)
    nightly = runtime.schedule("Nightly digest", at(0), every)
    kickoff = runtime.schedule("Quarterly kickoff", at(0))  # once, at once
    paused = runtime.schedule("Weekly report", at(0), every)
    poller.poll_once()
    launched = runtime.start_run(at(300), temporal=True, schedule=(nightly, "Nightly digest", at(300)))
    runtime.schedule_fired(nightly, at(300), then=at(600))
    runtime.schedule_fired(nightly, at(600), "error", "workflow version 3 is not published", then=at(900))
    runtime.schedule_fired(kickoff, at(1))
    runtime.schedule_disabled(paused, at(2))
    poller.poll_once()
    read = len(recorded.rows)
    poller.poll_once()
    assert len(recorded.rows) == read, "a schedule not changed since is not read again"

    pipeline = recorded.pipeline
    jobs, _count = pipeline.list_jobs(now=at(900).timestamp())
    assert [(j.name, j.job_type, j.due_ns) for j in jobs] == [("Nightly digest", "recurring", _ns(at(900)))]
    late = at(900 + 301).timestamp()  # past the default grace (300 s): the occurrence at 900 never came
    (overdue,), _count = pipeline.list_jobs(JobQuery(overdue=True), now=late)
    assert (overdue.name, overdue.due_ns, overdue.overdue_ns) == ("Nightly digest", _ns(at(900)), 301 * 10**9)
    # The runs the schedule launched are traces of their own, which name it; its failure names why it launched none.
    (run_row,) = [r for r in recorded.rows if r.get("run_id") == launched and "status" in r and "step_id" not in r]
    (queued, *_rest) = DECODE(run_row)
    assert queued.run.attributes["workflow.schedule.id"] == nightly
    assert queued.run.attributes["workflow.schedule.name"] == "Nightly digest"
    (failed,) = [r for r in recorded.rows if r.get("last_run_status") == "error"]
    assert failed["last_error"] == "workflow version 3 is not published" and "payload_json" not in failed

    runtime.schedule_deleted(nightly)  # its workflow deleted: awaited no more
    poller.poll_once()
    assert pipeline.list_jobs(JobQuery(overdue=True), now=late)[0] == []


def test_a_schedule_deleted_while_no_bridge_read_the_tables_is_awaited_no_more_from_the_next_start(database, tmp_path):
    # Deleted meanwhile, its row was gone from the table the next start read: it stayed awaited, and overdue.
    from otel_bridge.correlate.overview import JobQuery

    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    every = timedelta(minutes=5)
    nightly = runtime.schedule("Nightly digest", at(0), every)
    weekly = runtime.schedule("Weekly report", at(0), every)
    _poller(database, recorded, tmp_path, marks).poll_once()
    runtime.schedule_deleted(nightly)  # the bridge stopped meanwhile
    _poller(database, recorded, tmp_path, marks).poll_once()
    jobs, _count = recorded.pipeline.list_jobs(JobQuery(), now=at(301).timestamp())
    assert [j.name for j in jobs] == ["Weekly report"]
    marks["runtime-v2 schedules read"] = b"not what a bridge keeps"  # unreadable: read as if none were kept
    runtime.schedule_deleted(weekly)
    _poller(database, recorded, tmp_path, marks).poll_once()
    assert [j.name for j in recorded.pipeline.list_jobs(JobQuery(), now=at(301).timestamp())[0]] == ["Weekly report"]


def test_a_schedule_last_written_before_the_bridge_looked_tells_its_next_occurrence_not_its_last(database, tmp_path):
    # Its last occurrence is history the bridge did not follow: counted at every start whose seen ids had
    # forgotten it, it would be one execution counted again and again.
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    nightly = runtime.schedule("Nightly digest", at(0), timedelta(minutes=5))
    runtime.schedule_fired(nightly, at(300), then=at(600))
    poller = _poller(database, recorded, tmp_path, {"runtime-v2 runs updated_at": at(3600).isoformat().encode()})
    poller.poll_once()
    (row,) = [r for r in recorded.rows if "next_fire_at" in r]
    assert "last_fire_at" not in row and row["next_fire_at"].startswith("2026-12-04T09:10:00")


def test_a_database_without_schedules_or_the_right_to_read_them_is_read_as_before(database, tmp_path, caplog):
    # The runtime's community edition has no schedules' table; a user granted the six tables alone may not
    # read it: each read failed on it, and no run was followed.
    import psycopg

    runtime = _runtime(database)
    runtime.schedule("Nightly digest", at(0), timedelta(minutes=5))
    runtime.start_run(at(0))
    reader = reader_of(database, "otel_bridge_runs")
    assert _poller(reader, Recorded(tmp_path / "a"), tmp_path, {}).poll_once() == 1
    assert "may not read tenant_workflow_schedule (GRANT SELECT ON tenant_workflow_schedule" in caplog.text
    # The right given, then taken back while the poller reads: its runs are followed all the same.
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("GRANT SELECT ON tenant_workflow_schedule TO otel_bridge_runs")
    poller = _poller(reader, Recorded(tmp_path / "c"), tmp_path, {})
    assert poller.poll_once() == 1
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("REVOKE SELECT ON tenant_workflow_schedule FROM otel_bridge_runs")
        runtime.start_run(at(10))
    assert poller.poll_once() == 1
    assert "schedules are not followed: permission denied for table tenant_workflow_schedule" in caplog.text
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("DROP TABLE tenant_workflow_schedule")
    assert _poller(database, Recorded(tmp_path / "b"), tmp_path, {}).poll_once() == 2


def test_the_events_the_runtime_took_in_are_read_once_each_once_settled_and_after_a_restart_not_again(
    database, tmp_path
):
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    run = runtime.start_run(at(0))
    runtime.event_taken("TICKET_CREATED", at(0), started=run)
    runtime.event_taken("TICKET_CREATED", at(1))  # no workflow took it
    runtime.event_taken("TICKET_UPDATED", at(2), error="Failed to launch Temporal workflow for workflow w: down")
    young = runtime.event_taken("TICKET_UPDATED", None, started=run)  # just taken: what comes of it is not yet written
    poller = _poller(database, recorded, tmp_path, marks)
    poller.poll_once()

    def counted(name: str, result: str) -> list[float]:
        # Read again, a row tells the same event ids, which the pipeline takes once: folded here once each.
        rows = {row.get("event_id") or orjson.dumps(row, option=orjson.OPT_SORT_KEYS): row for row in recorded.rows}
        folded = fold_events(list(rows.values()), decoder=DECODE, settle_at_ns=None)
        return folded.metric("job.executions", **{"job.name": name, "job.execution.result": result})

    assert counted("TICKET_CREATED", "success") == [1] and counted("TICKET_CREATED", "skipped") == [1]
    assert counted("TICKET_UPDATED", "failure") == [1]
    assert all(row.get("event_id") != young for row in recorded.rows)
    assert all("payload" not in row for row in recorded.rows if "event_name" in row)
    read = len(recorded.rows)
    poller.poll_once()
    assert len(recorded.rows) == read, "an event read is not handed over again"
    runtime.event_taken("TICKET_CREATED", at(3), started=run)
    _poller(database, recorded, tmp_path, marks).poll_once()  # restarted: from its mark, less the overlap
    assert counted("TICKET_CREATED", "success") == [1, 1]
    (failed,) = {row["event_id"]: row for row in recorded.rows if row.get("error_message")}.values()
    assert failed["error_message"] == "Failed to launch Temporal workflow for workflow w: down"


def test_a_first_start_reads_the_look_backs_events_though_the_runs_it_reads_move_its_mark_past_them(database, tmp_path):
    # The events' read began where the runs' read had just moved the mark: past every event of the look-back.
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    runtime.event_taken("TICKET_CREATED", at(0))
    runtime.start_run(at(600))
    _poller(database, recorded, tmp_path, {}).poll_once()
    assert [row["event_name"] for row in _event_rows(recorded.rows)] == ["TICKET_CREATED"]


def test_the_events_table_unreadable_is_told_once_and_the_runs_are_followed_all_the_same(database, tmp_path, caplog):

    runtime = _runtime(database)
    runtime.start_run(at(0))
    runtime.event_taken("TICKET_CREATED", at(0))
    reader = reader_of(database, "otel_bridge_events", "tenant_workflow_schedule")
    recorded = Recorded(tmp_path)
    poller = _poller(reader, recorded, tmp_path, {})
    assert poller.poll_once() == 1 and poller.poll_once() == 0
    said = "may not read workflow_runtime_events (GRANT SELECT ON workflow_runtime_events TO it)"
    assert caplog.text.count(said) == 1
    assert not _event_rows(recorded.rows)


def test_the_workflows_not_launched_for_an_event_are_read_with_it_and_those_not_meant_fail_it(database, tmp_path):
    # The runtime writes them since October 2026 (`workflow_event_launch_skips`), its tenants uuids: an event
    # that launched one workflow and not another, which refused its payload, has no error in its row.
    runtime, other = _with_a_second_workflow(database)
    run = runtime.start_run(at(0))
    partly = runtime.event_taken("TICKET_CREATED", at(1), started=run, skipped=[_refused(other)])
    guarded = (other, "lineage_loop_guard", "Workflow is already in the event lineage (trigger loop guard)")
    looped = runtime.event_taken("TICKET_CREATED", at(2), skipped=[guarded])
    recorded = Recorded(tmp_path)
    _poller(database, recorded, tmp_path, {}).poll_once()
    rows = _events_of(recorded.rows)
    assert rows[partly]["error_message"] is None
    assert [skip["workflow_name"] for skip in rows[partly]["launch_skips"]] == ["notify-owner"]
    assert rows[looped]["error_message"].startswith(f"Skipped workflow {other} ({other}): workflow is already")
    folded = fold_events(list(rows.values()), decoder=DECODE, settle_at_ns=None)
    created = {"job.name": "TICKET_CREATED", "job.type": "event"}
    assert folded.metric("job.executions", **created, **{"job.execution.result": "failure"}) == [1]
    assert folded.metric("job.executions", **created, **{"job.execution.result": "skipped"}) == [1]
    (failed,) = [r for row in rows.values() for r in DECODE(row) if r.reason]
    assert failed.reason == (
        f"workflow notify-owner ({other}) not launched (payload_validation_failed): "
        "Payload validation failed using ticket.v1: [...]"
    )


def test_the_export_reads_the_events_with_their_launch_skips_where_it_may_as_the_poller_reads_them(database, tmp_path):
    # `--export-sql` read the events by their errors alone: replayed, an event that launched one workflow and
    # not another, which refused its payload, was a success.
    import psycopg

    from otel_bridge.receivers.postgres_poll import export_sql

    runtime, other = _with_a_second_workflow(database)
    run = runtime.start_run(at(0))
    runtime.event_taken("TICKET_CREATED", at(1), started=run, skipped=[_refused(other)])
    runtime.event_taken("TICKET_CREATED", at(2), started=run)
    recorded = Recorded(tmp_path)
    _poller(database, recorded, tmp_path, {}).poll_once()
    polled = _events_of(recorded.rows)
    query = export_sql(capture_input=False, log_levels=("WARN", "ERROR"))

    def exported(url: str) -> dict[str, dict[str, Any]]:
        psql = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]
        printed = subprocess.run(
            [psql, url, "-At", "-v", "ON_ERROR_STOP=1"], input=query, capture_output=True, text=True, timeout=60
        )
        assert printed.returncode == 0 and not printed.stderr, printed.stderr
        return _events_of([orjson.loads(line) for line in printed.stdout.splitlines()])

    assert exported(database) == polled and [len(row["launch_skips"]) for row in polled.values()] == [1, 0]
    # A user who may not read the table, or a runtime without it: the events by their errors, as the poller.
    without_the_right = exported(reader_of(database, "otel_bridge_export", "workflow_runtime_events"))
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("DROP TABLE workflow_event_launch_skips")
    assert without_the_right == exported(database) == {key: _without_skips(row) for key, row in polled.items()}


def _with_a_second_workflow(database: str) -> tuple[Runtime, str]:
    """The runtime of a tenant (a uuid, as the runtime's tenants are), and the id of a second workflow
    (`notify-owner`) that starts on its events."""
    import psycopg

    tenant = str(uuid.uuid4())
    runtime = Runtime(psycopg.connect(database, autocommit=True), tenant=tenant)
    return runtime, Runtime(psycopg.connect(database, autocommit=True), "notify-owner", tenant=tenant).workflow_id


def _refused(workflow_id: str) -> tuple[str, str, str]:
    """A launch skip of the workflow `workflow_id`, whose schema refused the event's payload."""
    return (workflow_id, "payload_validation_failed", "Payload validation failed using ticket.v1: [...]")


def _events_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The events the runtime took in among rows read, by id."""
    return {row["event_id"]: row for row in _event_rows(rows)}


def _event_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the events the runtime took in among rows read (a run's row names its event too), in order."""
    return [row for row in rows if "event_name" in row and "run_id" not in row]


def _without_skips(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "launch_skips"}


def test_without_the_right_to_read_the_launch_skips_the_events_are_read_by_their_errors(database, tmp_path, caplog):
    import psycopg

    tenant = str(uuid.uuid4())
    runtime = Runtime(psycopg.connect(database, autocommit=True), tenant=tenant)
    skipped = [(runtime.workflow_id, "schema_mismatch", "Event payload schema a differs from workflow schema b")]
    runtime.event_taken("TICKET_CREATED", at(0), skipped=skipped)
    reader = reader_of(database, "otel_bridge_skips", "workflow_runtime_events")
    recorded = Recorded(tmp_path)
    poller = _poller(reader, recorded, tmp_path, {})
    poller.poll_once()
    said = "may not read workflow_event_launch_skips (GRANT SELECT ON workflow_event_launch_skips TO it)"
    assert caplog.text.count(said) == 1
    (row,) = _events_of(recorded.rows).values()
    assert "launch_skips" not in row and row["error_message"].startswith("Skipped workflow")
    # The right given, then taken back between two reads: the events are read all the same.
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("GRANT SELECT ON workflow_event_launch_skips TO otel_bridge_skips")
    poller = _poller(reader, recorded := Recorded(tmp_path / "b"), tmp_path, {})
    poller.poll_once()
    assert [len(row["launch_skips"]) for row in recorded.rows if "launch_skips" in row] == [1]
    runtime.event_taken("TICKET_UPDATED", at(5), skipped=skipped)
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("REVOKE SELECT ON workflow_event_launch_skips FROM otel_bridge_skips")
    poller.poll_once()
    assert "workflows not launched for an event are not followed: permission denied" in caplog.text
    assert [row["event_name"] for row in _event_rows(recorded.rows)] == [
        "TICKET_CREATED",
        "TICKET_UPDATED",
    ]


def test_an_event_that_tells_nothing_yet_is_held_until_it_does_or_is_five_minutes_old_and_a_restart_reads_it_again(
    database, tmp_path
):
    # Its worker writes what came of an event once every launch and signal is made, each waiting out Temporal's
    # 10 s connection timeout while it is out of reach: read at 30 s, one not delivered was counted as one that
    # no run took, and WorkflowEventsNotDelivered did not fire.
    runtime, recorded, marks = _runtime(database), Recorded(tmp_path), {}
    now = datetime.now(UTC)
    slow = runtime.event_taken("TICKET_CREATED", now - timedelta(seconds=40))  # its worker still at it
    quiet = runtime.event_taken("TICKET_UPDATED", now - timedelta(minutes=6))  # nothing took it, long ago
    told = runtime.event_taken("TICKET_CREATED", now - timedelta(seconds=40), error="Failed to signal Temporal x")
    poller = _poller(database, recorded, tmp_path, marks)
    poller.poll_once()

    def events() -> dict[str, dict[str, Any]]:
        return _events_of(recorded.rows)

    assert set(events()) == {quiet, told}
    poller.poll_once()
    assert set(events()) == {quiet, told}, "held while it tells nothing"
    # Restarted meanwhile: the mark kept is the held event's, which the next start reads again.
    restarted = Recorded(tmp_path / "again")
    second = _poller(database, restarted, tmp_path, dict(marks))
    second.poll_once()
    assert slow not in {row.get("event_id") for row in restarted.rows}
    failure = "Failed to launch Temporal workflow for workflow w: 14 UNAVAILABLE: No connection established"
    runtime._update("workflow_runtime_events", "event_id", slow, error_message=failure)
    second.poll_once()
    assert slow in {row.get("event_id") for row in restarted.rows}
    poller.poll_once()
    assert events()[slow]["error_message"] == failure
    (record,) = DECODE(events()[slow])
    assert record.reason == failure  # counted not delivered, not as an event no run took
    poller.poll_once()
    assert [row.get("event_id") for row in recorded.rows].count(slow) == 1, "handed over once"


def test_past_so_many_events_held_the_oldest_are_handed_over_as_they_are(database, tmp_path, monkeypatch):
    # Most events start nothing and tell nothing ever: at a high rate, those held would grow without bound.
    from otel_bridge.receivers import postgres_poll

    monkeypatch.setattr(postgres_poll, "_HELD_AT_MOST", 2)
    runtime, recorded = _runtime(database), Recorded(tmp_path)
    now = datetime.now(UTC)
    taken = [runtime.event_taken("TICKET_UPDATED", now - timedelta(seconds=60 - n)) for n in range(3)]
    _poller(database, recorded, tmp_path, {}).poll_once()
    assert [row["event_id"] for row in recorded.rows if "event_name" in row] == taken[:1]


def test_events_a_poll_could_not_hand_over_are_handed_over_by_the_next_held_or_not(database, tmp_path):
    # The pipeline refusing a batch for now (its store busy, its disk full): the poll fails, and the next one
    # hands over the same events — marked read before they were taken, they were lost.
    from otel_bridge.consumer import Unavailable

    class Refusing(Recorded):
        refuse = True

        def ingest(self, events: Any, *, producer: str | None = None) -> IngestReport:
            if self.refuse:
                raise Unavailable("the state is busy")
            return super().ingest(events, producer=producer)

    runtime, recorded = _runtime(database), Refusing(tmp_path)
    now = datetime.now(UTC)
    at_once = runtime.event_taken("TICKET_CREATED", now - timedelta(seconds=40), error="Failed to signal Temporal x")
    held = runtime.event_taken("TICKET_UPDATED", now - timedelta(seconds=40))
    poller = _poller(database, recorded, tmp_path, {})
    with pytest.raises(Unavailable):
        poller.poll_once()
    recorded.refuse = False
    poller.poll_once()
    assert [row["event_id"] for row in _event_rows(recorded.rows)] == [at_once]
    runtime._update("workflow_runtime_events", "event_id", held, matched_run_id=str(uuid.uuid4()))
    recorded.refuse = True
    with pytest.raises(Unavailable):
        poller.poll_once()
    recorded.refuse = False
    poller.poll_once()
    assert [row["event_id"] for row in _event_rows(recorded.rows)] == [at_once, held]
