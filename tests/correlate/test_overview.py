"""Which open runs are stuck, and since when: a paused run past its resumeAt, a queued run never started."""

from builders import WorkflowRun, ns
from fold_harness import fold_events

from otel_bridge.correlate.overview import RunQuery, overview

GRACE = 300 * 10**9


def _state(run: WorkflowRun):
    (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
    return state


def test_a_paused_run_past_its_resume_at_by_more_than_the_grace_is_overdue():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").sleep_started(60_000)
    run.paused("sleep", resume_in_ms=60_000)
    due = ns(run.now) + 60_000 * 10**6
    state = _state(run)
    on_time = overview(state, due + GRACE, GRACE)
    assert on_time is not None and on_time.state == "paused" and on_time.overdue_ns is None
    late = overview(state, due + GRACE + 10**9, GRACE)
    assert late is not None and late.overdue_ns == GRACE + 10**9
    assert late.resume_at_ns == due and late.last_event == "workflow.paused"
    assert late.traceparent.startswith("00-") and late.since_ns == ns(run.now)


def test_a_queued_run_not_started_within_the_grace_is_overdue():
    run = WorkflowRun().queued()
    late = overview(_state(run), ns(run.now) + GRACE + 1, GRACE)
    assert late is not None and late.state == "pending" and late.overdue_ns == GRACE + 1


def test_a_running_or_ended_run_is_never_overdue():
    running = WorkflowRun().started().step_started("a")
    assert overview(_state(running), ns(running.now) + 10 * GRACE, GRACE).overdue_ns is None
    ended = WorkflowRun().started().after(1).completed()
    assert overview(_state(ended), ns(ended.now) + 10 * GRACE, GRACE) is None


def test_a_run_that_woke_up_late_carries_a_workflow_overdue_event_with_how_late():
    run = WorkflowRun().started().sleep_started(1000).paused("sleep", resume_in_ms=1000)
    run.after(1000 + 600_000).resumed().sleep_completed(1000).completed()
    events = [e for e in fold_events(run.events).root.events if e.name == "workflow.overdue"]
    assert len(events) == 1 and events[0].attributes["workflow.overdue.seconds"] == 600.0
    assert events[0].time_ns == ns(run.now)


def test_a_run_woken_on_time_has_no_overdue_event():
    run = WorkflowRun().started().sleep_started(1000).paused("sleep", resume_in_ms=1000)
    run.after(1200).resumed().sleep_completed(1000).completed()
    assert "workflow.overdue" not in [e.name for e in fold_events(run.events).root.events]


def test_select_filters_by_state_overdue_and_service():
    paused = WorkflowRun(service="a").started().paused("sleep", resume_in_ms=1)
    running = WorkflowRun(service="b").started().step_started("x")
    now = max(ns(paused.now), ns(running.now)) + 2 * GRACE
    runs = [overview(_state(r), now, GRACE) for r in (paused, running)]
    assert [r.run_id for r in runs if RunQuery(overdue=True).holds(r)] == [paused.workflow_id]
    assert [r.run_id for r in runs if RunQuery(state="executing").holds(r)] == [running.workflow_id]
    assert [r.run_id for r in runs if RunQuery(service="a").holds(r)] == [paused.workflow_id]
