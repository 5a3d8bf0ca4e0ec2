"""The event-flow diagrams of the seed guide, as traces and metrics."""

from builders import WorkflowRun, ns
from fold_harness import fold_events

from otel_bridge.correlate.outputs import SpanKind, SpanStatus
from otel_bridge.ids import attempt_span_id, root_span_id, run_trace_id
from otel_bridge.lifecycle import RunRef


def _ref(run: WorkflowRun) -> RunRef:
    return RunRef(engine="durable-effect", env="production", service="shop", run_id=run.workflow_id, name="x")


def test_successful_workflow_is_one_trace_with_a_root_and_a_span_per_step():
    run = WorkflowRun("orderProcessing")
    run.started()
    t0 = run.now
    run.after(5).step_started("step1").after(100).step_completed("step1", duration_ms=100)
    run.after(3).step_started("step2").after(40).step_completed("step2", duration_ms=40)
    run.after(2).completed(["step1", "step2"], duration_ms=150)

    folded = fold_events(run.events)

    root = folded.root
    identity = _ref(run).identity
    assert root.name == "workflow orderProcessing"
    assert root.kind is SpanKind.SERVER
    assert root.trace_id == run_trace_id(identity)
    assert root.span_id == root_span_id(identity)
    assert root.start_ns == ns(t0)
    assert root.end_ns == ns(run.now)
    assert root.status is SpanStatus.OK
    assert root.attributes["workflow.execution.result"] == "success"
    assert root.attributes["workflow.definition.name"] == "orderProcessing"
    assert root.attributes["workflow.execution.id"] == run.workflow_id
    assert root.attributes["workflow.platform.name"] == "durable-effect"

    step1 = folded.span("step step1")
    assert step1.kind is SpanKind.INTERNAL
    assert step1.parent_span_id == root.span_id
    assert step1.span_id == attempt_span_id(identity, "step1", 1)
    assert step1.start_ns == ns(t0) + 5_000_000
    assert step1.end_ns - step1.start_ns == 100_000_000
    assert step1.status is SpanStatus.OK
    assert step1.attributes["workflow.task.attempt"] == 1
    assert step1.attributes["workflow.task.result"] == "success"
    assert folded.span("step step2").parent_span_id == root.span_id
    assert folded.names() == ["step step1", "step step2", "workflow orderProcessing"]


def test_root_duration_comes_from_timestamps_not_the_segment_duration_ms():
    run = WorkflowRun().started()
    t0 = run.now
    run.after(60_000).completed(duration_ms=3)  # durationMs covers only the last segment
    root = fold_events(run.events).root
    assert root.end_ns - root.start_ns == 60_000 * 1_000_000
    assert root.start_ns == ns(t0)


def test_retry_as_the_guide_draws_it_gives_a_failed_then_a_successful_attempt():
    run = WorkflowRun().started()
    run.after(1).step_started("paymentStep", 1).after(20)
    run.step_failed("paymentStep", 1, message="card declined", will_retry=True)
    run.retry_scheduled("paymentStep", 1, delay_ms=1000).paused("retry", step="paymentStep")
    run.after(1000).resumed().after(1).step_started("paymentStep", 2).after(30).step_completed("paymentStep", 2)
    run.after(1).completed()

    folded = fold_events(run.events)
    first, second = folded.span("step paymentStep", 1), folded.span("step paymentStep", 2)
    assert first.status is SpanStatus.ERROR
    assert first.status_message == "card declined"
    assert sorted(e.name for e in first.events) == ["exception", "retry.scheduled"]
    assert next(e for e in first.events if e.name == "exception").attributes["exception.message"] == "card declined"
    assert second.status is SpanStatus.OK
    assert second.links == [first.span_id]
    assert first.end_ns < second.start_ns
    assert [e.name for e in folded.root.events] == ["retry.scheduled", "workflow.paused", "workflow.resumed"]
    assert folded.metric("workflow.task.retries", **{"workflow.task.name": "paymentStep"}) == [1]
    assert folded.metric("workflow.task.retry.delay", **{"workflow.task.name": "paymentStep"}) == [1.0]
    (backoff,) = [o for o in folded.observations if o.instrument == "workflow.task.retry.delay"]
    assert backoff.span_id == first.span_id  # its exemplar: the attempt the retry follows
    assert sorted(folded.metric("workflow.task.duration")) == [0.02, 0.03]


def test_sleep_is_a_span_and_root_events():
    run = WorkflowRun().started().step_started("processOrder").after(10).step_completed("processOrder")
    run.after(1).sleep_started(3_600_000)
    slept_at = run.now
    run.paused("sleep", resume_in_ms=3_600_000).after(3_600_000).resumed().sleep_completed(3_600_000)
    woke_at = run.now
    run.step_started("sendConfirmation").after(5).step_completed("sendConfirmation").completed()

    folded = fold_events(run.events)
    sleep = folded.span("sleep")
    assert (sleep.start_ns, sleep.end_ns) == (ns(slept_at), ns(woke_at))
    assert sleep.parent_span_id == folded.root.span_id
    assert [e.name for e in folded.root.events] == [
        "sleep.started",
        "workflow.paused",
        "workflow.resumed",
        "sleep.completed",
    ]
    sleep_started = folded.root.events[0]
    assert sleep_started.attributes["workflow.sleep.duration_ms"] == 3_600_000
    assert folded.metric("workflow.sleep.duration") == [3600.0]


def test_every_sleep_is_its_own_span():
    run = WorkflowRun().started().sleep_started(10).after(10).sleep_completed(10)
    run.sleep_started(10).after(10).sleep_completed(10).completed()
    sleeps = fold_events(run.events).all("sleep")
    assert len(sleeps) == 2
    assert sleeps[0].span_id != sleeps[1].span_id


def test_failed_workflow_is_an_error_root_with_the_exception():
    run = WorkflowRun().started().step_started("charge").after(5)
    run.step_failed("charge", 1, message="insufficient funds", stack="PaymentError: insufficient funds\n  at charge")
    run.failed("insufficient funds", step="charge", attempt=1, stack="PaymentError: insufficient funds\n  at charge")

    folded = fold_events(run.events)
    root = folded.root
    assert root.status is SpanStatus.ERROR
    assert root.status_message == "insufficient funds"
    assert root.attributes["workflow.execution.result"] == "failure"
    assert root.attributes["error.type"] == "PaymentError"
    exception = next(e for e in root.events if e.name == "exception")
    assert exception.attributes["exception.stacktrace"].startswith("PaymentError")
    step = folded.span("step charge")
    assert step.status is SpanStatus.ERROR
    assert step.attributes["workflow.task.result"] == "failure"
    assert folded.metric("workflow.execution.errors", **{"workflow.task.name": "charge"}) == [1]
    assert folded.metric("workflow.task.duration", **{"workflow.task.result": "failure"}) == [0.005]


def test_failures_are_counted_and_timed_by_the_class_of_their_error():
    run = WorkflowRun().started().step_started("reserve").after(3).step_completed("reserve")
    run.step_started("charge").after(5)
    run.step_failed("charge", 1, message="insufficient funds", stack="PaymentError: insufficient funds\n  at charge")
    run.failed("insufficient funds", step="charge", attempt=1, stack="PaymentError: insufficient funds\n  at charge")

    folded = fold_events(run.events)
    # The workflow conventions require error.type on the errors counter, and on a duration if and only if
    # what it measures failed: "failures by error" is one query, and a success never carries one.
    assert folded.metric("workflow.execution.errors", **{"error.type": "PaymentError"}) == [1]
    assert folded.metric("workflow.task.duration", **{"workflow.task.result": "failure", "error.type": "PaymentError"})
    executing = {"workflow.execution.state": "executing", "workflow.execution.result": "failure"}
    assert folded.metric("workflow.execution.duration", **executing, **{"error.type": "PaymentError"}) == [0.008]
    succeeded = [o for o in folded.observations if dict(o.attributes).get("workflow.task.result") == "success"]
    assert succeeded and all("error.type" not in dict(o.attributes) for o in succeeded)


def test_a_run_that_timed_out_counts_its_error_as_a_timeout_and_one_without_a_stack_as_other():
    timed_out = WorkflowRun().started().step_started("charge", 1).timeout_set("charge", 1000).after(2000)
    timed_out.timeout_exceeded("charge", 1000).failed("timed out", step="charge")
    assert fold_events(timed_out.events).metric("workflow.execution.errors", **{"error.type": "timeout"}) == [1]

    unknown = WorkflowRun().started().step_started("charge").after(5).step_failed("charge", 1).failed("boom")
    assert fold_events(unknown.events).metric("workflow.execution.errors", **{"error.type": "_OTHER"}) == [1]


def test_an_exception_names_its_class_only_when_one_is_told():
    stack = "CardDeclinedError: declined\n  at charge"
    told = WorkflowRun().started().step_started("charge").after(5)
    told.step_failed("charge", 1, message="declined", stack=stack).failed("declined", stack=stack)
    exceptions = [e for s in fold_events(told.events).spans for e in s.events if e.name == "exception"]
    assert [e.attributes["exception.type"] for e in exceptions] == ["CardDeclinedError"] * 2

    # error.type's `_OTHER` is no class: Jaeger showed `exception.type=_OTHER` on every such failure.
    unknown = WorkflowRun().started().step_started("charge").after(5).step_failed("charge", 1).failed("boom")
    folded = fold_events(unknown.events)
    exceptions = [e for s in folded.spans for e in s.events if e.name == "exception"]
    assert len(exceptions) == 2 and all("exception.type" not in e.attributes for e in exceptions)
    assert all(e.attributes["exception.message"] for e in exceptions)
    assert folded.root.attributes["error.type"] == "_OTHER"


def test_a_completed_run_carries_no_error_type_on_any_metric():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed(["a"])
    folded = fold_events(run.events)
    assert folded.metric("workflow.execution.duration")
    assert all("error.type" not in dict(o.attributes) for o in folded.observations)


def test_queued_workflow_starts_its_root_at_the_queue_and_measures_the_wait():
    run = WorkflowRun().queued(input={"order": 1})
    queued_at = run.now
    run.after(250).started().after(100).completed()
    folded = fold_events(run.events)
    assert folded.root.start_ns == ns(queued_at)
    assert [e.name for e in folded.root.events] == ["workflow.queued"]
    assert folded.metric("workflow.execution.duration", **{"workflow.execution.state": "pending"}) == [0.25]
    assert folded.metric("workflow.execution.duration", **{"workflow.execution.state": "executing"}) == [0.1]


def test_cached_replay_is_a_root_event_and_never_an_attempt():
    run = WorkflowRun().started().step_started("a").after(10).step_completed("a")
    run.after(500).resumed().step_completed("a", attempt=1, duration_ms=0, cached=True).completed()
    folded = fold_events(run.events)
    step = folded.span("step a")
    assert step.end_ns - step.start_ns == 10_000_000
    assert [e.name for e in folded.root.events] == ["workflow.resumed", "step.cached"]
    assert folded.root.events[1].attributes["workflow.task.cached"] is True
    assert folded.metric("workflow.task.duration") == [0.01]


def test_inputs_are_not_recorded_by_default():
    run = WorkflowRun().started(input={"email": "a@b.c"}).completed()
    assert "workflow.execution.input" not in fold_events(run.events).root.attributes


def test_a_run_in_progress_sends_finished_steps_but_keeps_its_root_open():
    run = WorkflowRun().started().step_started("a").after(10).step_completed("a").step_started("b")
    folded = fold_events(run.events)
    assert folded.names() == ["step a"]
    assert folded.metric("workflow.execution.active", **{"workflow.execution.state": "executing"}) == [1]


def test_sleep_spans_can_be_turned_off_leaving_the_root_events():
    run = WorkflowRun().started().sleep_started(10).after(10).sleep_completed(10).completed()
    folded = fold_events(run.events, sleep_spans=False)
    assert folded.names() == ["workflow orderProcessing"]
    assert [e.name for e in folded.root.events] == ["sleep.started", "sleep.completed"]
