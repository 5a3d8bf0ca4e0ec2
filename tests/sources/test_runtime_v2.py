"""The runtime v2's rows become traces: a span per execution of a step, retries, waits and sleeps,
whatever number of times a row is read."""

import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from fold_harness import comparable, fold_events, fold_more, settle_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_bridge.cli import main
from otel_bridge.correlate.outputs import SpanStatus
from otel_bridge.correlate.overview import overview
from otel_bridge.correlate.runs import SettlePolicy
from otel_bridge.correlate.step import Policy, apply, settle_run
from otel_bridge.ids import run_trace_id, sample_bound, within_ratio
from otel_bridge.lifecycle import JOB_KIND
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder, RuntimeV2Options
from otel_bridge.sources.wire import DecodeError, DecodeOptions

DECODE = RuntimeV2Decoder(RuntimeV2Options(service="psa", env="prod"))
T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    # As PostgreSQL writes a timestamptz in JSON (to_jsonb).
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _ns(seconds: float) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1e9)


class Run:
    """A run's rows as the poller reads them (`to_jsonb` of each, the run's joined with its workflow's name)."""

    def __init__(self, name: str = "ticket-escalation", **columns: Any) -> None:
        self.run_id = str(uuid.uuid4())
        self.row: dict[str, Any] = {
            "run_id": self.run_id,
            "workflow_id": str(uuid.uuid4()),
            "workflow_name": name,
            "workflow_version": 3,
            "tenant_id": "acme",
            "status": "RUNNING",
            "trigger_type": "event",
            "event_type": "TICKET_CREATED",
            "started_at": _at(0),
            "updated_at": _at(0),
            "completed_at": None,
            "error_json": None,
        } | columns
        self.steps: list[dict[str, Any]] = []
        self.waits: list[dict[str, Any]] = []

    def step(self, path: str, step: str, start: float, status: str = "STARTED", end: float | None = None, **more: Any):
        before = max((s for s in self.steps if s["step_path"] == path), key=lambda s: s["attempt"], default=None)
        attempt = 1 + (before["attempt"] if before else 0)
        if before is not None and before["status"] == "STARTED":
            # As the poller joins it: the execution left STARTED, run again now, and the wait between.
            waits = [
                w["created_at"]
                for w in self.waits
                if w["step_path"] == path and w["created_at"] >= before["started_at"]
            ]
            before |= {"next_started_at": _at(start), "waited_at": max(waits, default=None)}
        row = {
            "step_id": str(uuid.uuid4()),
            "run_id": self.run_id,
            "step_path": path,
            "definition_step_id": step,
            "status": status,
            "attempt": attempt,
            "started_at": _at(start),
            "completed_at": _at(end) if end is not None else None,
            "duration_ms": int((end - start) * 1000) if end is not None else None,
            "error_json": None,
        } | more
        self.steps.append(row)
        return row

    def wait(self, path: str, kind: str, created: float, timeout: float | None = None, **more: Any) -> dict[str, Any]:
        parked = max((s for s in self.steps if s["step_path"] == path), key=lambda s: s["attempt"], default=None)
        row = (
            {
                "wait_id": str(uuid.uuid4()),
                "run_id": self.run_id,
                "step_path": path,
                "wait_type": kind,
                "key": None,
                "event_name": None,
                "timeout_at": _at(timeout) if timeout is not None else None,
                "status": "WAITING",
                "created_at": _at(created),
                "resolved_at": None,
            }
            | ({"attempt": parked["attempt"], "definition_step_id": parked["definition_step_id"]} if parked else {})
            | more
        )
        self.waits.append(row)
        return row

    def ended(self, status: str, at: float, error: dict[str, Any] | None = None) -> "Run":
        self.row |= {"status": status, "completed_at": _at(at), "updated_at": _at(at), "error_json": error}
        return self

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [self.row, *self.steps, *self.waits]


def _error(category: str, message: str, path: str) -> dict[str, Any]:
    return {"category": category, "message": message, "nodePath": path, "at": _at(0)}


def _escalation() -> Run:
    """Looked a ticket up (a 503, retried after 5 s), waited for approval (an hour), then notified."""
    run = Run()
    run.step(
        "root.steps[0]",
        "lookup",
        1,
        "RETRY_SCHEDULED",
        2,
        error_json=_error("TransientError", "upstream 503", "root.steps[0]"),
    )
    run.wait("root.steps[0]", "retry", 2, timeout=7, status="RESOLVED", resolved_at=_at(7))
    run.step("root.steps[0]", "lookup", 7.1, "SUCCEEDED", 8)
    run.step("root.steps[1]", "wait-approval", 8.1)  # left STARTED: the run resumes in a new execution
    run.wait(
        "root.steps[1]",
        "event",
        8.2,
        timeout=3608.2,
        event_name="APPROVED",
        key="T-1",
        status="RESOLVED",
        resolved_at=_at(100),
    )
    run.step("root.steps[1]", "wait-approval", 100.1, "SUCCEEDED", 100.2)
    run.step("root.steps[2]", "notify", 100.3, "SUCCEEDED", 101)
    return run.ended("SUCCEEDED", 101)


def test_each_execution_of_a_step_is_a_span_and_a_retry_is_an_event_of_the_one_that_failed():
    run = _escalation()
    folded = fold_events(run.rows, decoder=DECODE)
    root = folded.root
    assert root.name == "workflow ticket-escalation" and root.status is SpanStatus.OK
    assert (root.start_ns, root.end_ns) == (_ns(0), _ns(101))
    assert root.attributes["workflow.execution.id"] == run.run_id
    assert root.attributes["tenant.id"] == "acme" and root.attributes["workflow.definition.version"] == "3"
    assert root.attributes["workflow.definition.id"] == run.row["workflow_id"]
    assert root.attributes["workflow.platform.name"] == "workflow-runtime-v2"
    failed, retried = folded.span("step lookup", 1), folded.span("step lookup", 2)
    assert failed.status is SpanStatus.ERROR and (failed.start_ns, failed.end_ns) == (_ns(1), _ns(2))
    assert failed.attributes["error.type"] == "TransientError"
    events = {e.name: e for e in failed.events}
    assert events["exception"].attributes["exception.message"] == "upstream 503"
    assert events["retry.scheduled"].attributes["workflow.retry.delay_ms"] == 5000
    assert retried.status is SpanStatus.OK and retried.links, "the retry links to the attempt it follows"
    assert folded.metric("workflow.task.retries", **{"workflow.task.name": "lookup"}) == [1]


def test_a_step_that_waits_ends_as_its_wait_begins_and_the_run_pauses_until_the_event():
    folded = fold_events(_escalation().rows, decoder=DECODE)
    parked, resumed = folded.span("step wait-approval", 1), folded.span("step wait-approval", 2)
    assert (parked.start_ns, parked.end_ns) == (_ns(8.1), _ns(8.2)) and parked.status is SpanStatus.OK
    assert (resumed.start_ns, resumed.end_ns) == (_ns(100.1), _ns(100.2))
    told = {e.name: e for e in folded.root.events}
    assert told["event.wait.created"].time_ns == _ns(8.2)
    assert told["event.wait.created"].attributes["workflow.pause.reason"] == "waiting for APPROVED (T-1)"
    assert told["event.wait.resolved"].time_ns == _ns(100)
    waiting = Run()
    waiting.step("root.steps[0]", "wait-approval", 1)
    waiting.wait("root.steps[0]", "event", 1.1, event_name="APPROVED")
    (state,) = fold_events(waiting.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    assert state.counted_state == "paused", "the execution ends, then the run pauses: both at the wait's creation"


def test_rows_read_as_they_changed_and_read_again_tell_the_same_trace_as_read_once():
    run = _escalation()
    once = fold_events(run.rows, decoder=DECODE)
    # What a poller meets: each row as it was at an earlier read (STARTED, WAITING), then as it is, some twice.
    earlier = [
        {**row, "status": "STARTED", "completed_at": None, "duration_ms": None} if "step_id" in row else
        {**row, "status": "WAITING", "resolved_at": None} if "wait_id" in row else
        {**row, "status": "RUNNING", "completed_at": None}
        for row in run.rows
    ]  # fmt: skip
    again = fold_events([*earlier, *run.rows, *reversed(run.rows)], decoder=DECODE)
    assert comparable(again.spans) == comparable(once.spans)


def test_a_failed_run_carries_the_runtimes_error_and_its_category():
    run = Run("payout")
    error = _error("ActionError", "ticket not found", "root.steps[0]")
    run.step("root.steps[0]", "lookup", 1, "FAILED", 2, error_json=error)
    folded = fold_events(run.ended("FAILED", 2, error).rows, decoder=DECODE)
    assert folded.root.status is SpanStatus.ERROR and folded.root.attributes["error.type"] == "ActionError"
    assert folded.root.status_message == "ticket not found"
    step = folded.span("step lookup")
    assert step.status is SpanStatus.ERROR and step.attributes["error.type"] == "ActionError"


def test_a_run_canceled_while_it_waited_is_cancelled_without_a_resume():
    run = Run()
    run.step("root.steps[0]", "wait-approval", 1)
    run.wait("root.steps[0]", "event", 1.1, event_name="APPROVED", status="CANCELED", resolved_at=_at(50))
    folded = fold_events(run.ended("CANCELED", 50).rows, decoder=DECODE)
    assert folded.root.attributes["workflow.execution.result"] == "cancellation"
    assert "event.wait.resolved" not in {e.name for e in folded.root.events}


def test_a_time_wait_is_a_sleep_span_until_the_worker_resolves_it():
    run = Run()
    run.step("root.steps[0]", "delay", 1)
    run.wait("root.steps[0]", "time", 1.5, timeout=61.5, status="RESOLVED", resolved_at=_at(62))
    run.step("root.steps[0]", "delay", 62.1, "SUCCEEDED", 62.2)
    folded = fold_events(run.ended("SUCCEEDED", 63).rows, decoder=DECODE)
    sleep = folded.span("sleep")
    assert (sleep.start_ns, sleep.end_ns) == (_ns(1.5), _ns(62))
    asleep = Run()
    asleep.step("root.steps[0]", "delay", 1)
    asleep.wait("root.steps[0]", "time", 1.5, timeout=61.5)
    (state,) = fold_events(asleep.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    paused = next(f for f in state.facts if f.kind.value == "run.paused")
    assert state.counted_state == "paused" and paused.resume_at_ns == _ns(61.5), "asleep: overdue once its time passed"


def test_a_run_no_worker_has_taken_is_queued_and_overdue_once_the_grace_has_passed():
    # As the runtime's page warns of a run RUNNING with no step: no worker consumes its task queue.
    stranded = Run(started_at=_at(0))
    (state,) = fold_events(stranded.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    assert state.counted_state == "pending"
    assert overview(state, _ns(299), grace_ns=300 * 10**9).overdue_ns is None
    assert overview(state, _ns(400), grace_ns=300 * 10**9).overdue_ns == 400 * 10**9, "since it was launched"
    taken = Run(started_at=_at(0))
    taken.step("root.steps[0]", "lookup", 0.25, "SUCCEEDED", 1)
    folded = fold_events(taken.ended("SUCCEEDED", 1).rows, decoder=DECODE)
    assert folded.metric("workflow.execution.duration", **{"workflow.execution.state": "pending"}) == [0.25]
    assert folded.metric("workflow.execution.duration", **{"workflow.execution.state": "executing"}) == [0.75]
    assert (folded.root.start_ns, folded.root.events[0].name) == (_ns(0), "run.queued")


def test_a_run_still_waiting_is_paused_with_its_timeout_as_its_resume_time():
    run = Run()
    run.step("root.steps[0]", "wait-approval", 1)
    run.wait("root.steps[0]", "human", 2, timeout=86_402, event_name="APPROVAL", key="T-1")
    folded = fold_events(run.rows, decoder=DECODE, settle_at_ns=None)
    (state,) = folded.runs.values()
    paused = [f for f in state.facts if f.kind.value == "run.paused"]
    assert paused and paused[0].resume_at_ns == _ns(86_402) and paused[0].name == "human.task.created"


def test_an_error_the_step_continued_past_is_an_event_of_a_step_that_succeeded():
    run = Run()
    error = _error("ActionError", "mailbox full", "root.steps[0]")
    run.step("root.steps[0]", "notify", 1, "SUCCEEDED", 2, error_json=error)
    step = fold_events(run.ended("SUCCEEDED", 2).rows, decoder=DECODE).span("step notify")
    assert step.status is SpanStatus.OK
    (continued,) = [e for e in step.events if e.name == "step.error_continued"]
    assert continued.attributes["exception.message"] == "mailbox full"


def test_the_input_is_shown_only_when_asked_for():
    run = Run(input_json={"ticketId": "T-1", "token": "s3cret"}).ended("SUCCEEDED", 1)
    hidden = fold_events(run.rows, decoder=DECODE).root.attributes
    assert "workflow.execution.input" not in hidden
    shown = RuntimeV2Decoder(RuntimeV2Options(decode=DecodeOptions(capture_input=True)))
    text = fold_events(run.rows, decoder=shown).root.attributes["workflow.execution.input"]
    assert "T-1" in text and "s3cret" not in text


def test_a_json_column_exported_as_text_is_read_as_json():
    run = Run()
    error = _error("ActionError", "ticket not found", "root.steps[0]")
    run.step("root.steps[0]", "lookup", 1, "FAILED", 2, error_json=__import__("json").dumps(error))
    step = fold_events(run.rows, decoder=DECODE).span("step lookup")
    assert step.attributes["error.type"] == "ActionError"


@pytest.mark.parametrize(
    ("row", "said"),
    [
        ([1, 2], "a row must be a JSON object, not an array"),
        ({"snapshot_id": "x", "envelope_json": {}}, "not a row of workflow_runs"),
        (
            {"run_id": "r", "workflow_id": "w", "status": "RUNNING"},
            "started_at: Field required (a row of workflow_runs)",
        ),
        (
            {"run_id": "r", "step_id": "s", "step_path": "p", "status": "STARTED", "attempt": 1, "started_at": "soon"},
            "started_at: Input should be a valid datetime or date, input is too short (a row of workflow_run_steps)",
        ),
    ],
)
def test_a_row_it_cannot_read_is_refused_naming_what_is_wrong(row, said):
    with pytest.raises(DecodeError, match=__import__("re").escape(said)):
        DECODE(row)


def test_an_execution_run_again_with_no_wait_between_was_abandoned_and_fails_as_the_next_begins():
    run = Run()
    run.step("root.steps[0]", "import", 1)  # its worker died: the lease ran out, another ran the step again
    run.step("root.steps[0]", "import", 40, "SUCCEEDED", 41)
    folded = fold_events(run.ended("SUCCEEDED", 41).rows, decoder=DECODE)
    abandoned = folded.span("step import", 1)
    assert (abandoned.start_ns, abandoned.end_ns) == (_ns(1), _ns(40)) and abandoned.status is SpanStatus.ERROR
    assert "the step was run again" in abandoned.status_message
    assert folded.span("step import", 2).status is SpanStatus.OK


def test_a_step_that_temporal_drives_is_one_execution_across_its_wait():
    run = Run()
    run.step("root.steps[0]", "delay", 1, "SUCCEEDED", 62.2)  # the same row, ended once the wait is over
    run.wait("root.steps[0]", "time", 1.5, timeout=61.5, status="RESOLVED", resolved_at=_at(62))
    folded = fold_events(run.ended("SUCCEEDED", 63).rows, decoder=DECODE)
    (step,) = folded.all("step delay")
    assert (step.start_ns, step.end_ns) == (_ns(1), _ns(62.2)) and step.status is SpanStatus.OK
    assert (folded.span("sleep").start_ns, folded.span("sleep").end_ns) == (_ns(1.5), _ns(62))


def test_a_human_wait_is_a_task_span_from_its_creation_to_its_answer_and_pauses_the_run():
    run = Run()
    run.step("root.steps[0]", "approve", 1)
    run.wait("root.steps[0]", "human", 2, event_name="HUMAN_TASK_COMPLETED", key="task-9", task_type="approval",
             status="RESOLVED", resolved_at=_at(300))  # fmt: skip
    run.step("root.steps[0]", "approve", 300.1, "SUCCEEDED", 300.2)
    folded = fold_events(run.ended("SUCCEEDED", 301).rows, decoder=DECODE)
    task = folded.span("task approval")
    assert (task.start_ns, task.end_ns) == (_ns(2), _ns(300))
    assert task.attributes["workflow.human_task.id"] == "task-9"
    assert {"human.task.created", "event.wait.resolved"} <= {e.name for e in folded.root.events}


def test_of_one_instant_a_run_starts_then_its_step_then_the_step_waits():
    run = Run(started_at=_at(1))
    run.step("root.steps[0]", "pause", 1)
    run.wait("root.steps[0]", "time", 1, timeout=3601)
    for order in (run.rows, list(reversed(run.rows))):
        (state,) = fold_events(order, decoder=DECODE, settle_at_ns=None).runs.values()
        assert state.counted_state == "paused"


def test_trace_id_names_the_root_and_an_executions_span_as_the_bridge_sends_them(capsys):
    run = _escalation()
    folded = fold_events(run.rows, decoder=DECODE)
    asked = ["trace-id", "--engine", "workflow-runtime-v2", "--env", "prod", "--service", "psa"]
    assert main([*asked, "--workflow-id", run.run_id]) == 0
    root = capsys.readouterr().out.split()[0].split("-")
    assert (root[1], root[2]) == (folded.root.trace_id.hex(), folded.root.span_id.hex())
    assert main([*asked, "--workflow-id", run.run_id, "--step", "root.steps[0]", "--attempt", "2"]) == 0
    retried = capsys.readouterr().out.split()[0].split("-")
    assert retried[2] == folded.span("step lookup", 2).span_id.hex()


@pytest.mark.parametrize(
    ("life", "sampled"),
    [
        ("{run}", "00"),
        ("{run}/retry-1", "01"),
        ("{run}/retry-12", "01"),
        ("{run}/retry-0", "00"),
        ("{run}/retry-x", "00"),
    ],
)
def test_trace_id_flags_a_retry_of_a_failed_run_sampled_whatever_the_ratio(capsys, monkeypatch, life, sampled):
    monkeypatch.setenv("OTEL_BRIDGE_TRACE_SAMPLE_RATIO", "0")
    asked = ["trace-id", "--engine", "workflow-runtime-v2", "--env", "prod", "--service", "psa"]
    run = str(uuid.uuid4())
    assert main([*asked, "--workflow-id", life.format(run=run)]) == 0
    assert capsys.readouterr().out.split()[0].endswith(f"-{sampled}")


def test_each_action_a_step_called_is_an_event_of_the_execution_that_called_it():
    run = Run()
    lookup = run.step("root.steps[0]", "lookup", 1, "SUCCEEDED", 3)
    actions = [
        {"invocation_id": str(uuid.uuid4()), "run_id": run.run_id, "step_path": "root.steps[0]",
         "action_id": "tickets.find", "action_version": 1, "status": status, "error_message": error,
         "started_at": _at(began), "completed_at": _at(began + 0.5), "attempt": lookup["attempt"]}
        for began, status, error in ((1.1, "FAILED", "upstream 503"), (1.7, "SUCCEEDED", None))
    ]  # fmt: skip
    step = fold_events([*run.ended("SUCCEEDED", 3).rows, *actions], decoder=DECODE).span("step lookup")
    told = [(e.name, e.time_ns, e.attributes) for e in step.events]
    assert [(name, at) for name, at, _a in told] == [("action.failed", _ns(1.6)), ("action.succeeded", _ns(2.2))]
    assert told[0][2]["exception.message"] == "upstream 503" and told[0][2]["workflow.action.id"] == "tickets.find"
    assert told[1][2]["workflow.action.duration_ms"] == 500 and told[1][2]["workflow.action.version"] == 1


def _log(of: Run, at: float, level: str, message: str, **more: Any) -> dict[str, Any]:
    return {
        "log_id": str(uuid.uuid4()),
        "run_id": of.run_id,
        "level": level,
        "message": message,
        "source": "runtime",
        "created_at": _at(at),
    } | more


def _retried() -> tuple[Run, list[dict[str, Any]], list[dict[str, Any]]]:
    """A run failed at 2 and retried by its operator at 10, which succeeded at 11: its rows as read before the
    retry, and as read after it."""
    run = Run("payout")
    error = _error("ActionError", "ticket not found", "root.steps[0]")
    run.step("root.steps[0]", "lookup", 1, "FAILED", 2, error_json=error)
    before = [dict(row) for row in run.ended("FAILED", 2, error).rows]
    run.row |= {"retries": 1, "retried_at": _at(10)}
    run.step("root.steps[0]", "lookup", 10.1, "SUCCEEDED", 11, retries=1)
    after = run.ended("SUCCEEDED", 11).rows
    # As the poller joins it: the run's row as it is now, when the failed run did its last, and with what error.
    asked = _log(
        run,
        10,
        "INFO",
        "Run retry requested",
        source="api",
        context_json={"reason": "restored", "nodePath": "root.steps[0]"},
        retries=1,
        ended_at=_at(2),
        run=dict(run.row),
        failed_error=error,
    )
    return run, before, [*after, asked]


def _shape(spans) -> list[tuple]:
    return sorted((s.name, s.start_ns, s.end_ns, s.status, s.attributes.get("workflow.execution.retry")) for s in spans)


def test_a_failed_run_retried_by_its_operator_is_a_second_trace_linked_to_the_first_however_read():
    run, before, after = _retried()
    live = fold_events(before, decoder=DECODE, settle_at_ns=_ns(5))
    fold_more(live, after, decoder=DECODE)
    settle_all(live, _ns(20))
    once = fold_events(after, decoder=DECODE)
    assert comparable(live.spans) == comparable(once.spans), "the failed run's row is gone: its failed step tells it"
    assert _shape(once.spans) == [
        ("step lookup", _ns(1), _ns(2), SpanStatus.ERROR, None),
        ("step lookup", _ns(10.1), _ns(11), SpanStatus.OK, None),
        ("workflow payout", _ns(0), _ns(2), SpanStatus.ERROR, None),
        ("workflow payout", _ns(10), _ns(11), SpanStatus.OK, 1),
    ]
    for folded in (live, once):
        first, retry = sorted((s for s in folded.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
        assert retry.remote_links == [(first.trace_id, first.span_id)] and retry.trace_id != first.trace_id
        assert retry.attributes["workflow.execution.id"] == first.attributes["workflow.execution.id"] == run.run_id
        failed, again = sorted((s for s in folded.spans if s.name == "step lookup"), key=lambda s: s.start_ns)
        assert again.links == [] and again.remote_links == [(failed.trace_id, failed.span_id)], "where it failed"
    assert "late" not in {a.value for a in live.admissions}


def test_a_retry_of_a_failed_run_is_sent_whatever_the_ratio_with_its_links_to_the_run_it_retries():
    # The failed run is sent whole (it failed); left out as every successful run is at a ratio of 0, the retry
    # that mended it was missing beside it, and its links dropped as if they led nowhere.
    from otel_bridge.correlate.runs import SettlePolicy
    from otel_bridge.correlate.step import Policy, apply, settle_run

    _run, before, after = _retried()
    other = Run("payout")
    other.step("root.steps[0]", "lookup", 1, "SUCCEEDED", 2)
    policy = Policy(settle=SettlePolicy(gap_grace_ns=0, sample_bound=0))  # no run chosen by its trace id
    states: dict[str, Any] = {}
    for raw in [*before, *after, *other.ended("SUCCEEDED", 2).rows]:
        for record in DECODE(raw):
            key = record.run.state_key
            states[key] = apply(states.get(key), None, record, record.fact.time_ns / 1e9, policy).state
    sent = [span for state in states.values() for span in settle_run(state, _ns(30) / 1e9, policy).spans]

    assert _shape(sent) == [
        ("step lookup", _ns(1), _ns(2), SpanStatus.ERROR, None),
        ("step lookup", _ns(10.1), _ns(11), SpanStatus.OK, None),
        ("workflow payout", _ns(0), _ns(2), SpanStatus.ERROR, None),
        ("workflow payout", _ns(10), _ns(11), SpanStatus.OK, 1),
    ], "the other run, which succeeded, is left out"
    first, retry = sorted((s for s in sent if s.parent_span_id is None), key=lambda s: s.start_ns)
    assert retry.remote_links == [(first.trace_id, first.span_id)]
    failed, again = sorted((s for s in sent if s.name == "step lookup"), key=lambda s: s.start_ns)
    assert again.remote_links == [(failed.trace_id, failed.span_id)]


def test_a_child_run_follows_the_run_that_called_it():
    parent = Run("escalation")
    child = Run("notify", parent_run_id=parent.run_id)
    folded = fold_events([*parent.ended("SUCCEEDED", 5).rows, *child.ended("SUCCEEDED", 3).rows], decoder=DECODE)
    roots = {s.name: s for s in folded.spans}
    notify, escalation = roots["workflow notify"], roots["workflow escalation"]
    assert notify.remote_links == [(escalation.trace_id, escalation.span_id)]
    assert notify.attributes["workflow.execution.parent_id"] == parent.run_id


_AT_HALF = Policy(settle=SettlePolicy(gap_grace_ns=0, sample_bound=sample_bound(0.5)))


def _sent_at_half(rows: list[dict[str, Any]], settled_after: Collection[int] = ()) -> list[Any]:
    """The spans sent of these rows, taken in this order at a ratio of one half: settled after each row whose
    place `settled_after` names, and once all are read."""
    states: dict[str, tuple[Any, float | None]] = {}  # each run's state, and when it is next due
    sent = []

    def settle(now: float) -> None:
        for key, (state, due) in list(states.items()):
            if due is not None and due > now:
                continue  # as the bridge settles: a run when it is due (a closed one, once it is forgotten)
            step = settle_run(state, now, _AT_HALF)
            sent.extend(step.spans)
            if step.state is None:
                del states[key]
            else:
                states[key] = (step.state, step.due)

    for n, raw in enumerate(rows, 1):
        for record in DECODE(raw):
            key = record.run.state_key
            state, due = states.get(key, (None, None))
            step = apply(state, due, record, record.fact.time_ns / 1e9, _AT_HALF)
            states[key] = (step.state, step.due)
        if n in settled_after:
            settle(_ns(5) / 1e9)  # as the rows come, before the others are read
    settle(_ns(60) / 1e9)
    return sent


def _taken(run: "Run") -> bool:
    (record, *_) = DECODE(run.row)
    return within_ratio(run_trace_id(record.run.identity), sample_bound(0.5))


def _taken_by_its_id(taken: bool, name: str, **columns: Any) -> Run:
    """A run that a ratio of one half takes by its own trace id, or leaves out."""
    while True:
        run = Run(name, **columns)
        if _taken(run) is taken:
            return run


@pytest.mark.parametrize("order", ["as the runtime writes them", "each run's row last"])
def test_a_family_of_runs_is_sent_whole_when_the_ratio_takes_the_run_it_began_with(order):
    # The escalation the ratio takes called `notify`, which called `page`: both left out by their own ids, and
    # sent with it, each linked to its caller. Another family, whose first run the ratio leaves out, is not sent.
    escalation = _taken_by_its_id(True, "escalation")
    notify = _taken_by_its_id(False, "notify", parent_run_id=escalation.run_id)
    page = _taken_by_its_id(False, "page", parent_run_id=notify.run_id, root_run_id=escalation.run_id)
    audit = _taken_by_its_id(False, "audit")
    archive = _taken_by_its_id(False, "archive", parent_run_id=audit.run_id)
    for run, end in ((escalation, 9), (notify, 6), (page, 4), (audit, 3), (archive, 2)):
        run.step("root.steps[0]", "act", 1, "SUCCEEDED", end - 0.5)
        run.ended("SUCCEEDED", end)
    families = [escalation, notify, page, audit, archive]
    rows = [row for run in families for row in (run.rows if order.startswith("as") else run.rows[::-1])]

    sent = _sent_at_half(rows)

    assert sorted(s.name for s in sent) == sorted(
        ["workflow escalation", "workflow notify", "workflow page", "step act", "step act", "step act"]
    )
    roots = {s.name: s for s in sent if s.parent_span_id is None}
    assert roots["workflow page"].remote_links == [
        (roots["workflow notify"].trace_id, roots["workflow notify"].span_id)
    ]
    assert roots["workflow notify"].remote_links == [
        (roots["workflow escalation"].trace_id, roots["workflow escalation"].span_id)
    ]
    assert roots["workflow page"].attributes["workflow.execution.root_id"] == escalation.run_id
    assert roots["workflow notify"].attributes["workflow.execution.root_id"] == escalation.run_id  # its parent
    assert "workflow.execution.root_id" not in roots["workflow escalation"].attributes  # called by none


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_family_is_sent_when_its_first_run_is_taken_whatever_the_order_its_rows_are_read_in(data):
    # Families of any shape: each run a child of one before it, or of none. A run is sent when the ratio takes
    # it by its own id or takes the run its family began with; which, and every span, whatever order the runs
    # are read in (each run's rows in any order, but together, as the poller hands a run over), read again,
    # and however often settled in between.
    runs: list[Run] = []
    for n in range(data.draw(st.integers(min_value=1, max_value=6), label="runs")):
        caller = data.draw(st.sampled_from([None, *runs]), label="called by") if runs else None
        columns = {}
        if caller is not None:
            columns = {"parent_run_id": caller.run_id, "root_run_id": caller.row.get("root_run_id") or caller.run_id}
        run = Run(f"w{n}", **columns)
        run.run_id = run.row["run_id"] = str(data.draw(st.uuids(), label="run id"))
        for k in range(data.draw(st.integers(min_value=0, max_value=2), label="steps")):
            run.step(f"root.steps[{k}]", f"s{k}", 1 + k, "SUCCEEDED", 1.5 + k)
        runs.append(run.ended("SUCCEEDED", 4))
    by_id = {run.run_id: run for run in runs}
    rows = [row for run in runs for row in run.rows]
    batches = data.draw(st.permutations(runs + data.draw(st.lists(st.sampled_from(runs), max_size=2))), label="runs")
    read, settled_after = [], set()
    for run in batches:
        read += data.draw(st.permutations(run.rows), label="its rows")
        if data.draw(st.booleans(), label="settled"):
            settled_after.add(len(read))

    sent = _sent_at_half(read, settled_after)

    taken = {
        run.row["workflow_name"] for run in runs if _taken(run) or _taken(by_id.get(run.row.get("root_run_id"), run))
    }
    assert {s.name.removeprefix("workflow ") for s in sent if s.parent_span_id is None} == taken
    assert sorted(msgspec.json.encode(s) for s in sent) == sorted(msgspec.json.encode(s) for s in _sent_at_half(rows))


def test_a_child_the_ratio_takes_by_its_own_id_is_sent_without_a_link_to_a_parent_left_out():
    audit = _taken_by_its_id(False, "audit")
    archive = _taken_by_its_id(True, "archive", parent_run_id=audit.run_id)
    for run in (audit, archive):
        run.ended("SUCCEEDED", 3)

    (root,) = _sent_at_half([*audit.rows, *archive.rows])

    assert root.name == "workflow archive" and root.remote_links == []
    assert root.attributes["workflow.execution.parent_id"] == audit.run_id  # still found by a search


@pytest.mark.parametrize(
    ("levels", "told"),
    [
        (("WARN", "ERROR"), ["Run canceled by operator", "Step failed (caught)"]),
        (("INFO", "WARN", "ERROR"), ["Run canceled by operator", "Step failed (caught)", "Step started"]),
        ((), []),
    ],
)
def test_a_runs_log_lines_are_told_from_the_level_asked_for_and_an_operators_from_info(levels, told):
    run = Run()
    run.step("root.steps[0]", "lookup", 1, "FAILED", 2)
    lines = [
        _log(run, 1, "INFO", "Step started", step_path="root.steps[0]", attempt=1),
        _log(run, 2, "ERROR", "Step failed (caught)", step_path="root.steps[0]", context_json={"password": "x"}),
        _log(run, 3, "DEBUG", "Lease renewed"),
        _log(run, 4, "INFO", "Run canceled by operator", source="api", context_json={"reason": "duplicate"}),
    ]
    decode = RuntimeV2Decoder(RuntimeV2Options(log_levels=levels))
    folded = fold_events([*run.ended("CANCELED", 4).rows, *lines], decoder=decode)
    assert sorted({e.name for s in folded.spans for e in s.events} & {line["message"] for line in lines}) == told
    caught = [e for e in folded.span("step lookup").events if e.name == "Step failed (caught)"]
    if caught:
        assert caught[0].attributes["workflow.log.context"] == '{"password":"[REDACTED]"}'


def test_a_run_retried_twice_is_three_traces_each_following_the_one_before():
    run = Run("payout")
    error = _error("ActionError", "ticket not found", "root.steps[0]")
    asks = []
    # Each retry asked for half a second before it begins; the run it retries ended with its step.
    for retries, begins, retried_ended in ((0, 1, None), (1, 10, 2), (2, 20, 11)):
        status = "SUCCEEDED" if retries == 2 else "FAILED"
        run.step("root.steps[0]", "lookup", begins, status, begins + 1, retries=retries, error_json=error)
        if retries:
            asks.append(_log(run, begins - 0.5, "INFO", "Run retry requested", source="api", retries=retries))
            asks[-1] |= {"ended_at": _at(retried_ended), "failed_error": error}
    run.row |= {"retries": 2, "retried_at": _at(19.5)}
    run.ended("SUCCEEDED", 21)
    for asked in asks:
        asked["run"] = dict(run.row)
    folded = fold_events([*run.rows, *asks], decoder=DECODE)
    roots = sorted((s for s in folded.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    assert [(r.start_ns, r.end_ns, r.status) for r in roots] == [
        (_ns(0), _ns(2), SpanStatus.ERROR),
        (_ns(9.5), _ns(11), SpanStatus.ERROR),
        (_ns(19.5), _ns(21), SpanStatus.OK),
    ]
    assert [r.remote_links for r in roots] == [[], *([(a.trace_id, a.span_id)] for a in roots[:2])]
    assert {r.name for r in roots} == {"workflow payout"} and roots[1].status_message == "ticket not found"
    lookups = sorted((s for s in folded.spans if s.name == "step lookup"), key=lambda s: s.start_ns)
    assert [s.remote_links for s in lookups] == [[], *([(a.trace_id, a.span_id)] for a in lookups[:2])]


def test_a_run_its_operator_replayed_from_another_follows_it():
    first = Run("payout").ended("FAILED", 2)
    replay = Run("payout", started_at=_at(50), updated_at=_at(50))
    said = {"sourceRunId": first.run_id, "reason": "fixed input"}
    line = _log(replay, 50, "INFO", "Run replayed from previous run", source="api", context_json=said)
    folded = fold_events([*first.rows, *replay.ended("SUCCEEDED", 51).rows, line], decoder=DECODE)
    old, new = sorted((s for s in folded.spans if s.parent_span_id is None), key=lambda s: s.start_ns)
    assert new.remote_links == [(old.trace_id, old.span_id)] and old.remote_links == []


# Since June 2026 Temporal runs every run: its workflow projects each step into the tables (a step's row as it
# starts, its end, then the run's row), retries a failed action within the step's execution, and writes the
# run's end with `completed_at`.
def _temporal(**columns: Any) -> Run:
    run = Run(engine="temporal", temporal_run_id="0193-temporal-run", **columns)
    run.row["temporal_workflow_id"] = f"workflow-runtime-v2:run:{run.run_id}"
    return run


def test_a_temporal_run_marked_failed_by_a_step_a_catch_block_takes_goes_on_in_one_trace():
    run = _temporal()
    error = {"message": "ticket not found", "nodePath": "root.steps[0].try.steps[0]"}
    run.step("root.steps[0].try.steps[0]", "lookup", 1, "FAILED", 2, error_json={"message": "ticket not found"})
    # Read between the step's end, which marks the run FAILED, and the catch block's first step.
    marked = dict(run.row) | {"status": "FAILED", "error_json": error, "updated_at": _at(2)}
    live = fold_events([marked, *run.steps], decoder=DECODE, settle_at_ns=_ns(5))
    assert [s.name for s in live.spans] == ["step lookup"], "the run has not ended: its root is not sent"
    run.step("root.steps[0].catch.steps[0]", "notify-owner", 2.1, "SUCCEEDED", 2.5)
    fold_more(live, [*run.ended("SUCCEEDED", 2.6).rows], decoder=DECODE)
    settle_all(live, _ns(20))
    assert "late" not in {a.value for a in live.admissions}
    root = next(s for s in live.spans if s.parent_span_id is None)
    assert (root.status, root.end_ns) == (SpanStatus.OK, _ns(2.6))
    assert sorted(s.name for s in live.spans) == ["step lookup", "step notify-owner", "workflow ticket-escalation"]
    assert root.attributes["temporalWorkflowID"] == f"workflow-runtime-v2:run:{run.run_id}"
    assert root.attributes["temporalRunID"] == "0193-temporal-run"


def test_a_run_has_ended_once_the_runtime_wrote_when_whatever_its_engine():
    failed = _temporal()
    failed.step("root.steps[0]", "lookup", 1, "FAILED", 2, error_json={"message": "ticket not found"})
    folded = fold_events(failed.ended("FAILED", 2.1, {"message": "ticket not found"}).rows, decoder=DECODE)
    assert (folded.root.status, folded.root.end_ns) == (SpanStatus.ERROR, _ns(2.1))
    assert folded.root.status_message == "ticket not found"
    # A child run Temporal drives is told no engine: marked FAILED by a step a catch block takes, it goes on.
    child = Run(parent_run_id=str(uuid.uuid4()))
    child.step("root.steps[0].try.steps[0]", "lookup", 1, "FAILED", 2, error_json={"message": "ticket not found"})
    marked = dict(child.row) | {"status": "FAILED", "updated_at": _at(2)}
    (state,) = fold_events([marked, *child.steps], decoder=DECODE, settle_at_ns=None).runs.values()
    assert not state.ended


def test_a_run_its_tenant_quota_stopped_is_paused_until_the_period_ends():
    run = _temporal(status="WAITING")
    run.step("root.steps[0]", "lookup", 1, "SUCCEEDED", 2)
    run.wait("root.steps[1]", "quota", 2.1, timeout=86_400 * 20, quota_used="10000", quota_limit="10000")
    (state,) = fold_events(run.rows, decoder=DECODE, settle_at_ns=None).runs.values()
    paused = next(f for f in state.facts if f.kind.value == "run.paused")
    assert (paused.name, paused.reason) == ("quota.wait.created", "step quota exceeded (10000 of 10000)")
    assert state.counted_state == "paused" and paused.resume_at_ns == _ns(86_400 * 20)


def test_an_action_its_step_called_again_in_the_same_row_is_an_event_for_each_call_read():
    run = _temporal()
    lookup = run.step("root.steps[0]", "lookup", 1, "SUCCEEDED", 5)
    call = {"invocation_id": str(uuid.uuid4()), "run_id": run.run_id, "step_path": "root.steps[0]",
            "action_id": "tickets.find", "action_version": 1, "attempt": lookup["attempt"]}  # fmt: skip
    first = call | {"status": "FAILED", "error_message": "upstream 503", "invocation_attempt": 1,
                    "error_json": {"category": "TransientError", "message": "upstream 503"},
                    "started_at": _at(1.1), "completed_at": _at(1.6)}  # fmt: skip
    again = call | {"status": "SUCCEEDED", "invocation_attempt": 2, "started_at": _at(3.6), "completed_at": _at(4)}
    rows = run.ended("SUCCEEDED", 5).rows
    both = fold_events([*rows, first, again], decoder=DECODE).span("step lookup")
    told = [
        (e.name, e.attributes.get("workflow.action.attempt"), e.attributes.get("exception.type")) for e in both.events
    ]
    assert told == [("action.failed", None, "TransientError"), ("action.succeeded", 2, None)]
    last = fold_events([*rows, again], decoder=DECODE).span("step lookup")
    assert [(e.name, e.attributes["workflow.action.attempt"]) for e in last.events] == [("action.succeeded", 2)]


def test_a_run_cancelled_by_no_operator_carries_the_reason_its_row_gives():
    # As the runtime's migration to Temporal alone ended the runs its interpreter before had left running.
    said = {"category": "Canceled", "message": "Run canceled by the temporal-only cutover"}
    stranded = Run(status="CANCELED", completed_at=_at(9), updated_at=_at(9), error_json=said)
    folded = fold_events(stranded.rows, decoder=DECODE)
    assert folded.root.attributes["workflow.execution.cancel_reason"] == "Run canceled by the temporal-only cutover"
    assert folded.root.status is SpanStatus.UNSET


SCHEDULE = {"id": str(uuid.uuid4()), "tenant": "acme", "workflow_id": str(uuid.uuid4()), "workflow_version": 3,
            "workflow_name": "ticket-escalation", "name": "Nightly digest", "trigger_type": "recurring",
            "cron": "*/5 * * * *", "timezone": "UTC", "enabled": True, "status": "scheduled",
            "next_fire_at": _at(300), "last_fire_at": None, "last_run_status": None, "last_error": None,
            "last_fire_key": None, "created_at": _at(0), "updated_at": _at(0)}  # fmt: skip


def _fired(at: float, result: str = "success", error: str | None = None, key: str = "job-1", **more: Any) -> dict:
    """The schedule's row as the runtime's scheduled-run handler writes it at an occurrence: its next one's time
    written in the same update (`computeNextFireAtForSchedule`)."""
    occurrence = {"last_fire_at": _at(at), "last_run_status": result, "last_error": error,
                  "last_fire_key": f"workflow-schedule-fire:{SCHEDULE['id']}:{key}", "next_fire_at": _at(at + 300),
                  "updated_at": _at(at + 0.2)}  # fmt: skip
    return SCHEDULE | occurrence | more


def _schedule_job(rows: list[dict]) -> tuple[Any, Any]:
    folded = fold_events(rows, settle_at_ns=None, decoder=DECODE)
    (state,) = folded.jobs.values()
    return folded, state


def test_a_schedules_occurrences_are_a_jobs_executions_and_its_next_is_awaited():
    from otel_bridge.correlate.jobs import overdue_since_ns
    from otel_bridge.correlate.step import Policy

    rows = [SCHEDULE, _fired(300), _fired(600, "error", "workflow version 3 is not published", "job-2"),
            _fired(900, "skipped", key="job-3")]  # fmt: skip
    assert [DECODE(row) for row in rows] == [DECODE(row) for row in rows]  # read again: the same ids
    folded, state = _schedule_job(rows)

    job = {"job.name": "Nightly digest", "job.type": "recurring"}
    assert folded.metric("job.executions", **job, **{"job.execution.result": "success"}) == [1]
    assert folded.metric("job.executions", **job, **{"job.execution.result": "failure"}) == [1]
    assert folded.metric("job.executions", **job, **{"job.execution.result": "skipped"}) == [1]
    assert folded.metric("job.task.scheduled", **{"job.name": "Nightly digest"}) == [1, 1, 1, 1]
    # Awaited at its next occurrence, which no run has come for: overdue once the grace passes, always judged.
    assert overdue_since_ns(state) == _ns(1200) and Policy().judges(state)
    assert overdue_since_ns(_schedule_job([*rows, _fired(1200, key="job-4")])[1]) == _ns(1500)


def test_a_schedule_disabled_or_done_is_awaited_no_more_and_enabled_again_it_is():
    from otel_bridge.correlate.jobs import overdue_since_ns

    disabled = SCHEDULE | {"enabled": False, "status": "disabled", "updated_at": _at(100)}
    assert overdue_since_ns(_schedule_job([SCHEDULE, disabled])[1]) is None
    enabled = SCHEDULE | {"next_fire_at": _at(600), "updated_at": _at(200)}
    assert overdue_since_ns(_schedule_job([SCHEDULE, disabled, enabled])[1]) == _ns(600)
    # Once at a time: fired, it is done.
    once = SCHEDULE | {"trigger_type": "schedule", "cron": None, "next_fire_at": _at(300)}
    done = _fired(300, enabled=False, status="completed", next_fire_at=None) | {"trigger_type": "schedule"}
    folded, state = _schedule_job([once, done])
    assert overdue_since_ns(state) is None
    assert folded.metric("job.executions", **{"job.type": "schedule", "job.execution.result": "success"}) == [1]


def test_a_run_a_schedules_occurrence_launched_names_the_schedule_and_the_occurrences_time():
    launched = Run(trigger_type="recurring", event_type=None, schedule_id=SCHEDULE["id"],
                   schedule_name="Nightly digest", scheduled_for=_at(300), started_at=_at(300.2))  # fmt: skip
    launched.step("root.steps[0]", "digest", 301, "SUCCEEDED", 302)
    root = fold_events(launched.ended("SUCCEEDED", 303).rows, decoder=DECODE).root
    assert root.attributes["workflow.schedule.id"] == SCHEDULE["id"]
    assert root.attributes["workflow.schedule.name"] == "Nightly digest"
    assert root.attributes["workflow.schedule.occurrence"] == _at(300)


def test_a_run_whose_launch_failed_is_a_failed_root_of_the_launchs_error():
    # `recordFailedWorkflowRunLaunch`: written FAILED, ended as it is written, with no step.
    said = {"message": "Workflow payload failed validation", "stage": "launch", "details": {"issues": []}}
    failed = Run(status="FAILED", completed_at=_at(0), error_json=said)
    root = fold_events(failed.rows, decoder=DECODE).root
    assert (root.status, root.status_message) == (SpanStatus.ERROR, "Workflow payload failed validation")
    assert root.attributes["error.type"] == "launch"


def test_a_schedule_row_it_cannot_read_is_refused_naming_the_schedule():
    with pytest.raises(DecodeError, match=r"trigger_type: Field required \(a row of tenant_workflow_schedule\)") as e:
        DECODE({k: v for k, v in SCHEDULE.items() if k != "trigger_type"})
    assert e.value.event_id == SCHEDULE["id"]


def _event(seconds: float, name: str = "TICKET_CREATED", **columns: Any) -> dict[str, Any]:
    """A row of `workflow_runtime_events` as the poller reads it (its payload left out)."""
    row = {"event_id": str(uuid.uuid4()), "tenant": "acme", "event_name": name, "correlation_key": "T-1",
           "payload_schema_ref": None, "created_at": _at(seconds), "processed_at": _at(seconds),
           "matched_run_id": None, "matched_wait_id": None, "matched_step_path": None,
           "error_message": None}  # fmt: skip
    return row | columns


def test_the_events_the_runtime_took_in_are_runs_of_a_job_of_each_events_name_by_what_came_of_them():
    run = str(uuid.uuid4())
    rows = [
        _event(1, matched_run_id=run),  # it started a run
        _event(2, "TICKET_UPDATED", matched_run_id=run, matched_step_path="root.steps[1]"),  # it resumed one
        _event(3),  # no run took it
        _event(4, error_message="Payload validation failed for workflow escalate (w-1) using ticket.v1: [...]"),
        _event(5, matched_run_id=run, error_message="Failed to signal Temporal event wait for run x: timeout"),
        # The runtime writes it as an error; most events no workflow waits for nor starts on have no key.
        _event(6, correlation_key=None, error_message="Missing workflow correlation key (no explicit key)"),
    ]
    assert [DECODE(row) for row in rows] == [DECODE(row) for row in rows]  # read again: the same ids
    folded = fold_events(rows, settle_at_ns=None, decoder=DECODE)
    created = {"job.name": "TICKET_CREATED", "job.type": "event"}
    assert folded.metric("job.executions", **created, **{"job.execution.result": "success"}) == [1]
    assert folded.metric("job.executions", **created, **{"job.execution.result": "skipped"}) == [1, 1]
    # As the runtime's own list of events has it: an error wins over a run it signalled.
    assert folded.metric("job.executions", **created, **{"job.execution.result": "failure"}) == [1, 1]
    updated = {"job.name": "TICKET_UPDATED", "job.type": "event", "job.execution.result": "success"}
    assert folded.metric("job.executions", **updated) == [1]
    from otel_bridge.correlate.jobs import last_failure, overdue_since_ns

    states = {state.job_name: state for state in folded.jobs.values()}
    assert last_failure(states["TICKET_CREATED"]) == "Failed to signal Temporal event wait for run x: timeout"
    assert last_failure(states["TICKET_UPDATED"]) is None
    assert overdue_since_ns(states["TICKET_CREATED"]) is None  # nothing awaited of an event


def _skip(reason: str, message: str, intentional: bool = False, name: str = "notify-owner") -> dict[str, Any]:
    """A workflow not launched for an event, as the poller reads it with the event's row."""
    return {"workflow_id": "w-2", "workflow_name": name, "reason": reason, "intentional": intentional,
            "message": message}  # fmt: skip


def test_a_workflow_not_launched_for_an_event_fails_it_though_another_launched_unless_the_runtime_meant_it():
    run = str(uuid.uuid4())
    invalid = _skip("payload_validation_failed", "Payload validation failed using ticket.v1: [...]")
    rows = [
        # One workflow started, another refused the payload: the runtime writes no error, only the skip.
        _event(1, matched_run_id=run, launch_skips=[invalid]),
        # Nothing launched but a trigger loop guarded: an error in the row, which the runtime means.
        _event(2, error_message="Skipped workflow notify-owner (w-2): workflow is already in the event lineage",
               launch_skips=[_skip("lineage_loop_guard", "Workflow is already in the event lineage", True)]),
        _event(3, launch_skips=[_skip("paused", "Workflow is paused", True)]),
        # A wait not resumed is told by the error alone; the workflow paused beside it is not.
        _event(4, matched_run_id=run, error_message="Failed to signal Temporal event wait for run x: timeout",
               launch_skips=[_skip("paused", "Workflow is paused", True)]),
    ]  # fmt: skip
    folded = fold_events(rows, settle_at_ns=None, decoder=DECODE)
    created = {"job.name": "TICKET_CREATED", "job.type": "event"}
    assert folded.metric("job.executions", **created, **{"job.execution.result": "failure"}) == [1, 1]
    assert folded.metric("job.executions", **created, **{"job.execution.result": "skipped"}) == [1, 1]
    (first,) = DECODE(rows[0])
    assert first.reason == (
        "workflow notify-owner (w-2) not launched (payload_validation_failed): "
        "Payload validation failed using ticket.v1: [...]"
    )
    (fourth,) = DECODE(rows[3])
    assert fourth.reason == "Failed to signal Temporal event wait for run x: timeout"


def test_an_event_with_no_launch_skip_written_is_read_by_its_error_as_before():
    # A runtime older than their table, or an event taken before it: an empty list, or none at all.
    error = "Payload validation failed for workflow escalate (w-1) using ticket.v1: [...]"
    for skips in ([], None):
        (record,) = DECODE(_event(1, error_message=error, launch_skips=skips))
        assert (record.kind, record.reason) == (JOB_KIND.FAILED, error)


def test_each_tenants_events_of_a_name_are_an_instance_of_their_own_so_one_delivered_hides_no_other_not():
    # Each tenant has workflows of its own: acme's refuses the payload, globex's starts; globex's event came
    # last, and with one instance per name, acme's not delivered was listed by `jobs --failing` no more.
    from otel_bridge import keys
    from otel_bridge.correlate.jobs import last_failure

    refused = "Payload validation failed for workflow escalate (w-1) using ticket.v1: [...]"
    rows = [
        _event(1, error_message=refused),
        _event(2, tenant="globex", matched_run_id=str(uuid.uuid4())),
        {k: v for k, v in _event(3, "TICKET_UPDATED").items() if k != "tenant"},  # a row that names none
    ]
    folded = fold_events(rows, settle_at_ns=None, decoder=DECODE)
    failures = {keys.job_fields(key)[3]: last_failure(state) for key, state in folded.jobs.items()}
    assert failures == {"TICKET_CREATED@acme": refused, "TICKET_CREATED@globex": None, "TICKET_UPDATED": None}
    created = {"job.name": "TICKET_CREATED", "job.type": "event"}  # the metrics by name, as before
    assert folded.metric("job.executions", **created, **{"job.execution.result": "failure"}) == [1]
    assert folded.metric("job.executions", **created, **{"job.execution.result": "success"}) == [1]


def test_an_event_row_it_cannot_read_is_refused_naming_the_event():
    row = _event(1)
    with pytest.raises(DecodeError, match=r"created_at: Field required \(a row of workflow_runtime_events\)") as e:
        DECODE({k: v for k, v in row.items() if k != "created_at"})
    assert e.value.event_id == row["event_id"]
