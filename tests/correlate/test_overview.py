"""Which open runs are stuck, and since when: a paused run past its resumeAt, a queued run never started."""

from datetime import datetime

import pytest
from builders import JobRun, WorkflowRun, ns, ns_of
from fold_harness import fold_events
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import JobOverview, RunOverview, RunQuery, overdue_since_ns, overview, seconds_of
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.producer.event_sourced import Execution
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.terminal import runs_table

GRACE = 300 * 10**9
EVENT_SOURCED = EventSourcedDecoder(EventSourcedOptions(service="crm", env="prod"))


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
    told = late.as_dict()  # as runs --json and GET /v1/runs say it
    assert (told["last_event"], told["last_event_at"]) == ("workflow.paused", run.events[-1]["timestamp"])


def test_an_open_run_tells_its_progress_as_the_steps_that_succeeded_so_far():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    run.step_started("b").after(5).retry_scheduled("b", 1).step_started("b", 2).after(5).step_completed("b", 2)
    run.step_started("c")
    progress = overview(_state(run), ns(run.now), GRACE)
    assert progress is not None and progress.steps_done == 2  # a, and b at its second attempt; c still running
    assert progress.as_dict()["steps_done"] == 2


def test_a_state_machines_run_tells_the_state_it_sits_in_and_since_when():
    # The event-sourced runtime's runs move through states of their own: `executing` alone does not
    # tell an on-call engineer that one waits in `review`.
    run = Execution("approval").started().after(10).moved("review").after(2000).submitted("comment_added")
    (state,) = fold_events(run.events, settle_at_ns=None, decoder=EVENT_SOURCED).runs.values()
    told = overview(state, ns_of(run.events[-1]), GRACE)
    assert told is not None and (told.state, told.machine_state) == ("executing", "review")
    assert told.since_ns == ns_of(run.events[1]) and told.last_event == "comment_added"
    assert told.as_dict()["machine_state"] == "review"
    console = Console(record=True, width=300)
    console.print(runs_table([told]))
    assert "│ executing: review │" in console.export_text()  # as `otel-bridge runs` shows it


def test_a_run_of_steps_has_no_machine_state():
    told = overview(_state(WorkflowRun().started().step_started("a")), 0, GRACE)
    assert told is not None and told.machine_state is None


def test_a_queued_run_not_started_within_the_grace_is_overdue():
    run = WorkflowRun().queued()
    late = overview(_state(run), ns(run.now) + GRACE + 1, GRACE)
    assert late is not None and late.state == "pending" and late.overdue_ns == GRACE + 1


def test_a_running_or_ended_run_is_never_overdue():
    running = WorkflowRun().started().step_started("a")
    assert overview(_state(running), ns(running.now) + 10 * GRACE, GRACE).overdue_ns is None
    ended = WorkflowRun().started().after(1).completed()
    assert overview(_state(ended), ns(ended.now) + 10 * GRACE, GRACE) is None


def test_an_executing_run_silent_past_its_workflows_silence_is_overdue_once_the_grace_has_passed_too():
    # Its Durable Object died mid-step: nothing more comes, and nothing it said tells when it is late.
    run = WorkflowRun().started().step_started("charge")
    state, silence, last = _state(run), 3_600 * 10**9, ns(run.now)
    assert (
        overview(state, last + 10 * silence, GRACE).overdue_ns is None
    )  # its workflow unnamed: a step may run for hours
    on_time = overview(state, last + silence + GRACE, GRACE, silence)
    assert on_time is not None and on_time.state == "executing" and on_time.overdue_ns is None
    late = overview(state, last + silence + GRACE + 10**9, GRACE, silence)
    assert late is not None and late.overdue_ns == GRACE + 10**9 and late.resume_at_ns is None
    assert overdue_since_ns(state, silence) == last + silence


def test_an_executing_run_is_judged_silent_from_its_latest_event_whatever_order_its_events_came_in():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").after(60_000).step_started("b")
    late_first = _state_of(run.events[-1:] + run.events[:-1])
    assert late_first.last_told_ns == ns(run.now)
    assert overdue_since_ns(late_first, 10**9) == ns(run.now) + 10**9


def test_a_run_told_a_fact_again_later_is_silent_from_its_latest_kept_fact_in_either_order():
    # A re-executed invocation tells `step.started` of the same attempt again: the earliest telling is kept.
    run = WorkflowRun().started().step_started("a").after(5_000).step_started("a")
    first_telling = ns_of(run.events[1])
    in_order, told_again_first = _state_of(run.events), _state_of([run.events[0], run.events[2], run.events[1]])
    assert in_order.last_told_ns == told_again_first.last_told_ns == first_telling


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
    assert [r.run_id for r in runs if RunQuery(overdue=True).holds(r, now)] == [paused.workflow_id]
    assert [r.run_id for r in runs if RunQuery(state="executing").holds(r, now)] == [running.workflow_id]
    assert [r.run_id for r in runs if RunQuery(service="a").holds(r, now)] == [paused.workflow_id]


@st.composite
def waiting_runs(draw: st.DrawFn) -> list[dict]:
    """Runs queued or started, pausing and resuming between steps, often left paused or queued."""
    run = WorkflowRun()
    gap = st.integers(min_value=0, max_value=5000)
    if draw(st.booleans()):
        run.queued().after(draw(gap))
        if draw(st.booleans()):
            return run.events
    run.started()
    for n in range(draw(st.integers(min_value=0, max_value=6))):
        run.after(draw(gap)).step_started(f"s{n}").after(draw(gap)).step_failed(f"s{n}", will_retry=True)
        run.paused("retry", step=f"s{n}", resume_in_ms=draw(st.integers(min_value=0, max_value=60_000)))
        if draw(st.booleans()):
            run.after(draw(gap)).resumed()
    return run.events


@settings(max_examples=150, deadline=None)
@given(history=waiting_runs(), data=st.data())
def test_the_time_a_run_turns_overdue_is_stored_as_the_overview_tells_it_in_any_order_of_arrival(history, data):
    # Kept on every save (the overdue index) without sorting the run: the same time `overview` finds,
    # and the one the history says, whatever order its events arrived in.
    state = _state_of(data.draw(st.permutations(history)))
    told = overview(state, 0, GRACE)
    due = None if told is None else {"paused": told.resume_at_ns, "pending": told.since_ns}.get(told.state)
    assert overdue_since_ns(state) == due
    assert overdue_since_ns(state) == _due_as_the_history_tells(history)
    assert state.last_told_ns == max(ns_of(event) for event in history)


def _due_as_the_history_tells(history: list[dict]) -> int | None:
    """The last pause's resumeAt, or when a run never started was queued; None for a run at work."""
    due = None
    for event in history:  # in the order the engine emitted them
        if event["type"] == "workflow.paused":
            due = ns(datetime.fromisoformat(event["resumeAt"]))
        elif event["type"] == "workflow.queued":
            due = ns_of(event)
        elif event["type"] in ("workflow.started", "workflow.resumed") or event["type"].startswith("step."):
            due = None  # at work again
    return due


def _state_of(events: list[dict]):
    (state,) = fold_events(events, settle_at_ns=None).runs.values()
    return state


def test_a_listing_read_back_from_its_json_says_what_the_json_said():
    # `runs --url` and `jobs --url` draw a running bridge's GET /v1/runs|jobs as the store's own listing.
    pipeline = Pipeline(SqliteStore(":memory:"), MetricsHub(), Settings(state=":memory:"))
    paused = WorkflowRun("nightly", execution_id="order-7").started().step_started("a").sleep_started(60_000)
    pipeline.ingest(paused.paused("sleep").events + JobRun("batcher", "debounce").debounce_started().events)
    (run,), _count = pipeline.list_runs(RunQuery())
    (job,), _count = pipeline.list_jobs()

    told = run.as_dict("http://jaeger/trace/{trace_id}")
    assert RunOverview.from_dict(told).as_dict() == {k: v for k, v in told.items() if k != "trace_url"}
    assert JobOverview.from_dict(job.as_dict()).as_dict() == job.as_dict()


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 259_200), ("1.5h", 5400), (".5m", 30), ("5400", 5400)],
)
def test_a_duration_is_read_as_a_person_writes_it(written, seconds):
    assert seconds_of(written) == seconds


@pytest.mark.parametrize("written", ["1e3", "1_000", " 5", "5 s", "inf", "nan", "-1", "", "5x", "5\n", "9" * 21])
def test_what_no_one_writes_for_a_duration_is_refused_not_guessed(written):
    # float() read `1e3`, `1_000`, ` 5`, `5 s` and `5\n`: the HTTP API's document could not have said so.
    with pytest.raises(ValueError, match="not a duration"):
        seconds_of(written)
