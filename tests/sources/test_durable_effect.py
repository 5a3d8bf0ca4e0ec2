"""The durable-effect wire format: all 24 event types, old and new shapes, clear rejections."""

import pytest
from builders import JobRun, WorkflowRun

from otel_bridge.lifecycle import FactKind, JobKind, JobRecord, Outcome, WorkflowRecord, event_id_of
from otel_bridge.sources.durable_effect import EVENT_TYPES, DecodeError, DecodeOptions, decode


def _every_event_type() -> list[dict]:
    run = WorkflowRun().queued({"a": 1}).started({"a": 1}).paused("retry", step="s").resumed()
    run.step_started("s").step_completed("s").step_failed("s", 2).retry_scheduled("s", 2).retry_exhausted("s", 3)
    run.sleep_started(10).sleep_completed(10).timeout_set("s", 100).timeout_exceeded("s", 100)
    run.completed().failed("x", step="s").cancelled("s")
    job = JobRun().started().executed(1).failed(1).retry_exhausted().terminated(1)
    job.debounce_started().debounce_flushed(3).task_scheduled(100)
    return run.events + job.events


def test_all_24_event_types_decode():
    events = _every_event_type()
    assert sorted({e["type"] for e in events}) == sorted(EVENT_TYPES)
    assert len(EVENT_TYPES) == 24
    for event in events:
        record = decode(event)
        assert isinstance(record, JobRecord if "instanceId" in event else WorkflowRecord), event["type"]
        assert event_id_of(record) == event["eventId"]


def test_workflow_events_become_facts_of_their_run():
    run = WorkflowRun("checkout", execution_id="order-7").step_started("pay", 2)
    record = decode(run.last())
    assert isinstance(record, WorkflowRecord)
    assert record.run.name == "checkout"
    assert record.run.correlation_id == "order-7"
    assert record.fact.kind is FactKind.ATTEMPT_STARTED
    assert (record.fact.step, record.fact.attempt) == ("pay", 2)
    assert record.fact.time_ns == 1_740_830_400_000_000_000


def test_retry_scheduled_closes_its_attempt_and_keeps_a_float_delay():
    fact = decode(WorkflowRun().retry_scheduled("pay", 1, delay_ms=1234.567).last()).fact
    assert fact.closes_attempt is Outcome.FAILURE
    assert fact.attributes["workflow.retry.delay_ms"] == 1234.567


def test_events_without_source_are_routed_by_their_id_field():
    workflow = WorkflowRun().started().last()
    job = JobRun().started().last()
    del workflow["source"], job["source"]
    assert isinstance(decode(workflow), WorkflowRecord)
    assert isinstance(decode(job), JobRecord)


def test_a_jobs_own_id_is_kept_as_the_instances_correlation_id():
    (told, untold) = (
        JobRun("digest", "debounce", job_id=i).debounce_started(flush_in_ms=10).events[0] for i in ("d-7", None)
    )
    assert decode(told).correlation_id == "d-7" and decode(untold).correlation_id is None


def test_unknown_extra_fields_and_null_pre_execution_state_are_tolerated():
    event = JobRun().executed(1).last() | {"preExecutionState": None, "somethingNew": {"x": 1}}
    assert decode(event).kind is JobKind.EXECUTED


def test_empty_error_message_is_valid():
    assert decode(WorkflowRun().step_failed("a", 1, message="").last()).fact.error.message == ""


def test_accepts_every_enum_value_even_those_never_seen():
    assert decode(JobRun(job_type="workerPool").retry_exhausted(reason="max_duration").last()).reason == "max_duration"
    assert decode(JobRun(job_type="task").task_scheduled(1, trigger="error").last()).trigger == "error"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"type": "step.exploded"}, "type", "unknown event type 'step.exploded'"),
        ({"attempt": "first"}, "attempt", "valid integer"),
        ({"timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"source": "cron"}, "source", "must be 'workflow' or 'job'"),
        ({"stepName": None}, "stepName", "valid string"),
    ],
)
def test_bad_events_are_rejected_naming_the_field(change, field, reason):
    event = WorkflowRun().step_started("a").last() | change
    with pytest.raises(DecodeError) as caught:
        decode(event)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_an_exhaustion_of_more_attempts_than_any_engine_gives_is_rejected():
    # Each attempt it tells is a failure counted: 2**62 of them is no count of attempts.
    event = JobRun("sync", "continuous").retry_exhausted(attempts=2**62).last()
    with pytest.raises(DecodeError) as caught:
        decode(event)
    assert caught.value.field == "attempts" and "less than or equal to 10000" in caught.value.reason
    assert decode(event | {"attempts": 10_000}) is not None


def test_a_missing_required_field_is_named():
    event = WorkflowRun().step_started("a").last()
    del event["stepName"]
    with pytest.raises(DecodeError) as caught:
        decode(event)
    assert (caught.value.field, caught.value.reason) == ("stepName", "Field required")


def test_a_non_object_event_is_rejected():
    with pytest.raises(DecodeError, match="JSON object"):
        decode([1, 2])


def test_captured_input_is_redacted_and_truncated():
    event = WorkflowRun().started({"email": "a@b.c", "password": "hunter2", "blob": "x" * 100}).last()
    fact = decode(event, DecodeOptions(capture_input=True, max_input_bytes=60)).fact
    text = fact.attributes["workflow.execution.input"]
    assert "hunter2" not in text and "[REDACTED]" in text
    assert len(text) <= 61


def test_an_errors_message_and_stack_are_kept_to_what_a_span_carries():
    # A stack of megabytes stayed whole in its run's facts (memory, store), to be cut at every export.
    huge = WorkflowRun().step_failed("a", 1, message="m" * 100_000, stack="Error: x\n" + "  at f\n" * 50_000).last()
    error = decode(huge).fact.error
    assert (len(error.message), len(error.stacktrace)) == (4096, 4096)
    assert error.stacktrace.startswith("Error: x\n")
    failed = decode(WorkflowRun().failed("m" * 50, stack="s" * 50).last(), DecodeOptions(max_text_chars=10))
    assert (failed.fact.error.message, failed.fact.error.stacktrace) == ("m" * 10, "s" * 10)


def test_a_name_of_a_megabyte_is_kept_to_what_a_span_attribute_carries_not_refused():
    # Every fact of a step holds its name: cut as it is read, the event and its run's trace still kept.
    step = decode(WorkflowRun().step_started("s" * 1_000_000).last())
    assert step.fact.step == "s" * 4096
    assert decode(WorkflowRun("w" * 1_000_000).started().last()).run.name == "w" * 4096
    assert decode(WorkflowRun().failed(step="s" * 5000).last()).fact.error.step == "s" * 4096
    assert decode(JobRun("j" * 5000).started().last()).job_name == "j" * 4096
    assert decode(WorkflowRun().step_started("s" * 4096).last()).fact.step == "s" * 4096
    ended = decode(WorkflowRun(execution_id="e" * 5000).cancelled(reason="r" * 5000).last())
    assert (ended.run.correlation_id, ended.fact.reason) == ("e" * 4096, "r" * 4096)
