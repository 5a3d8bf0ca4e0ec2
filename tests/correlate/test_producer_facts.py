"""How the real engine emits (PRODUCER_FACTS.md), and the traces that must come out anyway."""

from builders import WorkflowRun, ns, ns_of
from fold_harness import WEEK_NS, fold_events, fold_more, settle_all

from otel_bridge.correlate.outputs import SpanStatus
from otel_bridge.correlate.runs import Admission, SettlePolicy, fold, settle
from otel_bridge.sources.durable_effect import decode


def test_retry_scheduled_without_step_failed_closes_the_attempt_as_an_error():
    run = WorkflowRun().started().step_started("pay", 1).after(20)
    failed_at = run.now
    run.retry_scheduled("pay", 1, delay_ms=987.25).paused("retry", step="pay")
    run.after(1000).resumed().step_started("pay", 2).after(5).step_completed("pay", 2, duration_ms=1025).completed()

    folded = fold_events(run.events)
    first = folded.span("step pay", 1)
    assert first.end_ns == ns(failed_at)
    assert first.status is SpanStatus.ERROR
    assert "exception" in [e.name for e in first.events]
    retry = next(e for e in first.events if e.name == "retry.scheduled")
    assert retry.attributes["workflow.retry.delay_ms"] == 987.25
    assert folded.span("step pay", 2).status is SpanStatus.OK


def test_exhaustion_closes_the_last_attempt_with_the_workflow_error():
    run = WorkflowRun().started()
    for attempt in (1, 2):
        run.step_started("pay", attempt).after(10).retry_scheduled("pay", attempt).after(1000)
    run.step_started("pay", 3).after(10)
    exhausted_at = run.now
    run.retry_exhausted("pay", attempts=3).failed("gateway down", step="pay", attempt=3)

    folded = fold_events(run.events)
    last = folded.span("step pay", 3)
    assert last.end_ns == ns(exhausted_at)
    assert last.status is SpanStatus.ERROR
    assert last.status_message == "gateway down"
    assert len(folded.all("step pay")) == 3
    assert folded.root.status is SpanStatus.ERROR
    assert "retry.exhausted" in [e.name for e in folded.root.events]
    assert folded.metric("workflow.task.retries") == [1, 1]


def test_timeout_exceeded_closes_the_retry_that_started_after_the_deadline():
    run = WorkflowRun().started().step_started("slow", 1).timeout_set("slow", 500)
    run.after(500).retry_scheduled("slow", 1).after(1000).step_started("slow", 2).after(1)
    run.timeout_exceeded("slow", 500).failed("timed out", step="slow")

    folded = fold_events(run.events)
    first, second = folded.span("step slow", 1), folded.span("step slow", 2)
    assert "timeout.set" in [e.name for e in first.events]
    assert second.status is SpanStatus.ERROR
    assert second.attributes["error.type"] == "timeout"
    assert "timeout.exceeded" in [e.name for e in second.events]
    assert folded.root.attributes["workflow.execution.result"] == "timeout"
    assert folded.metric("workflow.task.timeouts", **{"workflow.task.name": "slow"}) == [1]


def test_a_run_first_seen_at_resumed_starts_its_root_there():
    run = WorkflowRun().resumed()
    resumed_at = run.now
    run.sleep_completed(1000).step_started("b").after(3).step_completed("b").completed()
    folded = fold_events(run.events)
    assert folded.root.start_ns == ns(resumed_at)
    assert folded.root.status is SpanStatus.OK


def test_cancel_names_the_step_it_stopped_in_and_interrupts_the_open_attempt():
    run = WorkflowRun().started().step_started("ship").after(50).cancelled(reason="ship")
    folded = fold_events(run.events)
    root = folded.root
    assert root.status is SpanStatus.UNSET
    assert root.attributes["workflow.execution.result"] == "cancellation"
    assert root.attributes["workflow.execution.cancel_reason"] == "ship"
    step = folded.span("step ship")
    assert step.end_ns == root.end_ns
    assert step.status is SpanStatus.UNSET
    assert step.attributes["workflow.task.result"] == "interrupted"
    assert folded.metric("workflow.task.duration") == []


def test_a_repeated_step_started_after_eviction_never_opens_a_second_span():
    run = WorkflowRun().started().step_started("a", 1)
    first_start = run.now
    run.after(30_000).resumed().step_started("a", 1).after(10).step_completed("a", 1).completed()
    folded = fold_events(run.events)
    assert folded.span("step a").start_ns == ns(first_start)
    assert Admission.REPEATED in folded.admissions


def test_the_earliest_telling_of_a_fact_wins_whatever_order_it_arrives_in():
    run = WorkflowRun().started().step_started("a", 1)
    early = run.events[-1]
    run.after(5_000).step_started("a", 1)
    late = run.events[-1]
    run.after(10).step_completed("a").completed()
    rest = [e for e in run.events if e not in (early, late)]
    folded = fold_events([late, *rest, early])
    assert folded.span("step a").start_ns == fold_events(run.events).span("step a").start_ns


def test_step_completed_before_step_started_gives_the_same_span():
    run = WorkflowRun().started().step_started("a").after(25).step_completed("a", duration_ms=25).completed()
    started, completed = run.events[1], run.events[2]
    reordered = [run.events[0], completed, started, run.events[3]]
    assert fold_events(reordered).span("step a") == fold_events(run.events).span("step a")


def test_a_completion_without_its_start_is_placed_by_duration_ms():
    run = WorkflowRun().started().after(100).step_completed("a", duration_ms=40).completed()
    step = fold_events(run.events).span("step a")
    assert step.end_ns - step.start_ns == 40_000_000


def test_a_late_event_after_the_trace_was_sent_is_counted_not_attached():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    folded = fold_events(run.events)
    run.after(100).step_started("b")
    fold_more(folded, run.events[-1:])
    assert folded.admissions[-1] is Admission.LATE
    settle_all(folded, now_ns=ns(run.now))
    assert folded.names() == ["step a", "workflow orderProcessing"]


def test_a_step_fact_arriving_after_its_span_left_joins_the_open_root():
    run = WorkflowRun().started().step_started("a").after(10).retry_scheduled("a", 1)
    folded = fold_events(run.events)
    assert folded.names() == ["step a"]
    run.step_failed("a", 1, message="late detail")
    run.after(1000).step_started("a", 2).after(1).step_completed("a", 2).completed()
    fold_more(folded, run.events[3:])
    settle_all(folded, now_ns=ns(run.now) + 10**9)
    late = [e for e in folded.root.events if e.name == "step.failed"]
    assert late and late[0].attributes["workflow.event.late"] is True
    assert len(folded.all("step a", 1)) == 1


def test_a_run_that_never_ends_is_closed_as_incomplete_after_max_open():
    run = WorkflowRun().started().step_started("forever")
    folded = fold_events(run.events, settle_at_ns=ns(run.now) + WEEK_NS, max_open_ns=WEEK_NS)
    root = folded.root
    assert root.attributes["workflow.execution.incomplete"] is True
    assert folded.span("step forever").attributes["workflow.task.result"] == "interrupted"
    active = folded.metric("workflow.execution.active")
    assert sum(active) == 0


DAY_MS = 86_400_000


def test_a_run_that_keeps_telling_is_closed_max_open_after_its_latest_event_not_after_it_started():
    # An approval that gathers a comment a day for two weeks: closed a week after it started, its trace
    # went out incomplete and everything it told after was late.
    run = WorkflowRun().started()
    for day in range(14):
        run.after(DAY_MS).step_started(f"comment{day}").after(5).step_completed(f"comment{day}")
    going_on = fold_events(run.events, settle_at_ns=ns(run.now) + WEEK_NS - 10**9, max_open_ns=WEEK_NS)
    assert "workflow orderProcessing" not in going_on.names() and len(going_on.all("step comment13")) == 1
    fold_more(going_on, run.after(DAY_MS).step_started("approve").after(5).step_completed("approve").events[-2:])
    assert set(going_on.admissions) == {Admission.ACCEPTED}

    silent = fold_events(run.events, settle_at_ns=ns(run.now) + WEEK_NS + 10**6, max_open_ns=WEEK_NS)
    assert silent.root.attributes["workflow.execution.incomplete"] is True
    assert silent.root.end_ns == ns(run.now)  # where it was last heard of


def _a_month_asleep() -> tuple[WorkflowRun, int]:
    """A trial that signs up, sleeps thirty days (`Workflow.sleep("30 days")`), then reminds: the events
    and how many of them come before it wakes."""
    run = WorkflowRun().started().step_started("signup").after(5).step_completed("signup")
    run.sleep_started(30 * DAY_MS).paused("sleep", resume_in_ms=30 * DAY_MS)
    asleep = len(run.events)
    run.after(30 * DAY_MS).resumed().sleep_completed(30 * DAY_MS).step_started("remind").after(5)
    run.step_completed("remind").completed(["signup", "remind"])
    return run, asleep


def test_a_workflow_asleep_longer_than_max_open_is_waiting_not_stuck_and_ends_whole_when_it_wakes():
    run, asleep = _a_month_asleep()
    week_later = ns_of(run.events[0]) + WEEK_NS + 86_400 * 10**9
    folded = fold_events(run.events[:asleep], settle_at_ns=week_later, max_open_ns=WEEK_NS)
    assert "workflow orderProcessing" not in folded.names()  # still open: no root, nor one marked incomplete
    assert folded.metric("workflow.execution.active", **{"workflow.execution.state": "paused"}) == [1]

    fold_more(folded, run.events[asleep:])
    settle_all(folded, ns(run.now) + 10**9, max_open_ns=WEEK_NS)
    assert set(folded.admissions) == {Admission.ACCEPTED}  # nothing it told on waking was late
    root = folded.root
    assert root.status is SpanStatus.OK
    assert "workflow.execution.incomplete" not in root.attributes
    assert root.end_ns - root.start_ns >= 30 * DAY_MS * 10**6
    assert folded.span("sleep").end_ns - folded.span("sleep").start_ns == 30 * DAY_MS * 10**6
    assert folded.span("step remind").status is SpanStatus.OK
    assert sum(folded.metric("workflow.execution.active")) == 0


def test_a_workflow_that_does_not_wake_is_closed_max_open_after_it_was_due_not_before():
    run, asleep = _a_month_asleep()
    due_ns = ns_of(run.events[asleep - 1]) + 30 * DAY_MS * 10**6
    before = fold_events(run.events[:asleep], settle_at_ns=due_ns + WEEK_NS - 10**9, max_open_ns=WEEK_NS)
    assert before.spans == [s for s in before.spans if s.parent_span_id is not None]  # the root not sent
    after = fold_events(run.events[:asleep], settle_at_ns=due_ns + WEEK_NS + 10**6, max_open_ns=WEEK_NS)
    assert after.root.attributes["workflow.execution.incomplete"] is True
    assert after.root.end_ns == ns_of(run.events[asleep - 1])  # where it was last heard of


def test_older_engines_cached_completions_from_attempt_zero_are_not_attempts():
    run = WorkflowRun().started().step_started("a", 1).after(4).step_completed("a", 1)
    run.after(100).resumed().step_completed("a", attempt=0, duration_ms=0, cached=True).completed()
    folded = fold_events(run.events)
    assert len(folded.all("step a")) == 1
    assert [e.name for e in folded.root.events].count("step.cached") == 1


def test_empty_error_message_still_gives_a_readable_status():
    run = WorkflowRun().started().step_started("a").after(1).step_failed("a", 1, message="").failed("", step="a")
    folded = fold_events(run.events)
    assert folded.span("step a").status_message == "step failed"
    assert folded.root.status_message == "workflow failed"


def test_active_gauge_follows_pauses_and_returns_to_zero():
    run = WorkflowRun().started().sleep_started(10).paused("sleep").after(10).resumed().sleep_completed(10).completed()
    folded = fold_events(run.events)
    paused = folded.metric("workflow.execution.active", **{"workflow.execution.state": "paused"})
    assert paused == [1, -1]
    assert sum(folded.metric("workflow.execution.active")) == 0


def test_an_ended_run_with_a_listed_step_never_seen_waits_for_it():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed(["a"])
    ending = [run.events[0], run.events[3]]
    state = fold_events(ending, settle_at_ns=None).runs
    (only,) = state.values()
    policy = SettlePolicy(gap_grace_ns=10 * 10**9)
    held = settle(only, only.ended_seen_ns + 10**9, policy)
    assert held.held and held.spans == []
    for event in run.events[1:3]:
        record = decode(event)
        fold(only, record.run, record.fact, only.ended_seen_ns + 2 * 10**9)
    done = settle(only, only.ended_seen_ns + 3 * 10**9, policy)
    assert sorted(s.name for s in done.spans) == ["step a", "workflow orderProcessing"]


def test_a_gap_that_never_fills_delays_the_trace_only_by_the_grace():
    run = WorkflowRun().started().after(5).step_completed("a", attempt=2).completed(["a"])
    (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
    result = settle(state, state.ended_seen_ns + 11 * 10**9, SettlePolicy(gap_grace_ns=10 * 10**9))
    assert not result.held
    assert sorted(s.name for s in result.spans) == ["step a", "workflow orderProcessing"]


def test_sleep_until_reports_zero_duration_but_the_span_and_metric_use_timestamps():
    run = WorkflowRun().started().sleep_started(0).paused("sleep").after(90_000).resumed().sleep_completed(0)
    folded = fold_events(run.completed().events)
    sleep = folded.span("sleep")
    assert sleep.end_ns - sleep.start_ns == 90_000 * 1_000_000
    assert folded.metric("workflow.sleep.duration") == [90.0]


TIMEOUT_STACK = "WorkflowTimeoutError: Step 'slow' timed out after 500ms\n    at Timeout._onTimeout (executor.js:88:19)"


def _exhausting_run() -> WorkflowRun:
    run = WorkflowRun().started().step_started("reserve").after(5).step_completed("reserve")
    for attempt in (1, 2):
        run.step_started("charge", attempt).after(10).retry_scheduled("charge", attempt).after(1000)
    run.step_started("charge", 3).after(10).retry_exhausted("charge", attempts=3)
    # The engine's workflow.failed never names the step.
    return run.failed("gateway down")


def test_a_failed_run_names_its_failing_step_from_its_facts():
    folded = fold_events(_exhausting_run().events)
    assert folded.metric("workflow.execution.errors", **{"workflow.task.name": "charge"}) == [1]
    assert folded.metric("workflow.execution.errors", **{"workflow.task.name": ""}) == []
    assert folded.root.attributes["workflow.task.name"] == "charge"


def test_the_failing_step_is_named_whatever_order_the_facts_arrive_in():
    events = _exhausting_run().events
    folded = fold_events([events[-1], *reversed(events[:-1])])
    assert folded.metric("workflow.execution.errors", **{"workflow.task.name": "charge"}) == [1]


def test_a_step_failed_without_retry_names_the_failing_step():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    run.step_started("b").after(5).step_failed("b", 1, message="invalid input").failed("invalid input")
    folded = fold_events(run.events)
    assert folded.root.attributes["workflow.task.name"] == "b"
    assert folded.metric("workflow.execution.errors", **{"workflow.task.name": "b"}) == [1]


def _restarted_sleep() -> tuple[WorkflowRun, int, int, int]:
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    slept_at = ns(run.now)
    run.sleep_started(60_000).paused("sleep", resume_in_ms=60_000)
    # Evicted and woken early: the engine starts the same sleep again with a later resumeAt.
    run.after(10_000).resumed()
    restarted_at = ns(run.now)
    run.sleep_started(55_000).paused("sleep", resume_in_ms=55_000)
    run.after(55_000).resumed().sleep_completed(60_000)
    woke_at = ns(run.now)
    run.step_started("b").after(5).step_completed("b").completed(["a", "b"])
    return run, slept_at, restarted_at, woke_at


def test_a_restarted_sleep_is_one_sleep_span_with_the_restart_as_an_event():
    run, slept_at, restarted_at, woke_at = _restarted_sleep()
    folded = fold_events(run.events)
    sleep = folded.span("sleep")
    assert (sleep.start_ns, sleep.end_ns) == (slept_at, woke_at)
    restarts = [e for e in sleep.events if e.name == "sleep.restarted"]
    assert [e.time_ns for e in restarts] == [restarted_at]
    assert restarts[0].attributes["workflow.sleep.resume_at"] == run.events[6]["resumeAt"]
    assert folded.metric("workflow.sleep.duration") == [65.0]
    assert folded.span("step b").start_ns >= sleep.end_ns


def test_a_restarted_sleep_is_one_sleep_whatever_the_arrival_order():
    run, slept_at, _restarted_at, woke_at = _restarted_sleep()
    folded = fold_events(list(reversed(run.events)))
    assert (folded.span("sleep").start_ns, folded.span("sleep").end_ns) == (slept_at, woke_at)
    assert folded.metric("workflow.sleep.duration") == [65.0]


def test_a_timeout_fired_mid_step_is_a_timeout_like_timeout_exceeded():
    run = WorkflowRun().started().step_started("slow", 1).timeout_set("slow", 500).after(500)
    run.step_failed("slow", 1, message="Step 'slow' timed out after 500ms", stack=TIMEOUT_STACK)
    run.failed("Step 'slow' timed out after 500ms", stack=TIMEOUT_STACK)
    mid_step = fold_events(run.events)

    told = WorkflowRun().started().step_started("slow", 1).timeout_set("slow", 500)
    told.after(500).retry_scheduled("slow", 1).after(1000).step_started("slow", 2).after(1)
    told.timeout_exceeded("slow", 500).failed("timed out")
    exceeded = fold_events(told.events)

    for folded in (mid_step, exceeded):
        assert folded.root.attributes["workflow.execution.result"] == "timeout"
        assert folded.root.attributes["error.type"] == "timeout"
        assert folded.metric("workflow.task.timeouts", **{"workflow.task.name": "slow"}) == [1]
        assert folded.metric("workflow.execution.duration", **{"workflow.execution.result": "timeout"})
        assert folded.metric("workflow.execution.errors", **{"workflow.task.name": "slow"}) == [1]
    attempt = mid_step.span("step slow", 1)
    assert attempt.status is SpanStatus.ERROR
    assert attempt.attributes["error.type"] == "timeout"
    assert exceeded.span("step slow", 2).attributes["error.type"] == "timeout"


def test_a_run_missing_its_start_waits_for_it_and_starts_at_it():
    run = WorkflowRun().started()
    started_at = ns(run.now)
    run.after(2).step_started("a").after(5).step_completed("a").completed(["a"])
    without_start = run.events[1:]
    (state,) = fold_events(without_start, settle_at_ns=None).runs.values()
    policy = SettlePolicy(gap_grace_ns=15 * 10**9)
    held = settle(state, state.ended_seen_ns + 10**9, policy)
    assert held.held and held.spans == []

    record = decode(run.events[0])
    fold(state, record.run, record.fact, state.ended_seen_ns + 2 * 10**9)
    done = settle(state, state.ended_seen_ns + 3 * 10**9, policy)
    root = next(s for s in done.spans if s.parent_span_id is None)
    assert root.start_ns == started_at


def test_a_run_first_seen_at_a_resume_is_not_waiting_for_a_start():
    run = WorkflowRun().resumed().after(1).step_started("b").after(3).step_completed("b").completed()
    (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
    result = settle(state, state.ended_seen_ns + 10**9, SettlePolicy(gap_grace_ns=15 * 10**9))
    assert not result.held


def test_a_completed_run_whose_step_end_is_still_in_flight_waits_for_it_and_shows_its_real_end():
    # workflow.completed before the step.completed of an earlier POST that failed and is being sent
    # again by the tracker (1, 2, 4 s later): a completed run has no interrupted step.
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    in_flight = run.events[2]
    (state,) = fold_events([e for e in run.events if e is not in_flight], settle_at_ns=None).runs.values()
    policy = SettlePolicy(gap_grace_ns=10 * 10**9)
    held = settle(state, state.ended_seen_ns + 10**9, policy)
    assert held.held and held.spans == []
    record = decode(in_flight)
    fold(state, record.run, record.fact, state.ended_seen_ns + 3 * 10**9)  # the tracker's re-send
    step = next(s for s in settle(state, state.ended_seen_ns + 4 * 10**9, policy).spans if s.name == "step a")
    assert step.end_ns == ns_of(in_flight) and step.attributes["workflow.task.result"] == "success"


def test_a_failed_or_cancelled_run_does_not_wait_for_the_end_of_the_step_it_stopped_in():
    # The engine says nothing more of a step a cancellation or an eviction interrupted.
    for ended in ("cancelled", "failed"):
        run = WorkflowRun().started().step_started("a").after(5)
        run = run.cancelled(reason="a") if ended == "cancelled" else run.failed("boom", step="a")
        (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
        done = settle(state, state.ended_seen_ns + 10**9, SettlePolicy(gap_grace_ns=10 * 10**9))
        assert not done.held
        step = next(s for s in done.spans if s.name == "step a")
        assert step.attributes["workflow.task.result"] == "interrupted"


def test_a_failure_told_after_exhaustion_gives_the_exhausted_attempt_its_error():
    # The engine's workflow-v2 package (and its npm release): retry.exhausted, then step.failed for the
    # same attempt with the real error, and a workflow.failed that names no step.
    stack = "GatewayError: gateway down\n    at charge (pay.ts:10)"
    run = WorkflowRun().started().step_started("pay", 1).after(10).retry_scheduled("pay", 1).after(1000)
    run.step_started("pay", 2).after(10)
    exhausted_at = run.now
    run.retry_exhausted("pay", attempts=2).after(1).step_failed("pay", 2, message="gateway down", stack=stack)
    run.failed('Step "pay" failed after 2 attempts: gateway down')

    folded = fold_events(run.events)
    last = folded.span("step pay", 2)
    assert last.end_ns == ns(exhausted_at)
    assert (last.status, last.status_message) == (SpanStatus.ERROR, "gateway down")
    assert last.attributes["error.type"] == "GatewayError"
    (exception,) = [e for e in last.events if e.name == "exception"]
    assert exception.attributes["exception.stacktrace"] == stack
    assert "retry.exhausted" in [e.name for e in last.events]
    assert len(folded.all("step pay")) == 2
    assert folded.admissions.count(Admission.LATE) == 0
