"""When a run is next due: decided in one place, by `apply` and `settle_run`."""

from builders import JobRun, WorkflowRun

from otel_bridge.correlate.runs import Admission, SettlePolicy
from otel_bridge.correlate.step import Policy, apply, settle_run
from otel_bridge.sources.durable_effect import decode

POLICY = Policy(
    settle=SettlePolicy(max_open_ns=10_000 * 10**9), settle_seconds=2, dedup_ttl_seconds=1000, keep_finished_seconds=100
)


def _applied(events, now=50.0):
    state, due, steps = None, None, []
    for raw in events:
        step = apply(state, due, decode(raw), now, POLICY)
        state, due = step.state, step.due
        steps.append(step)
    return state, due, steps


def test_a_run_is_due_one_settle_window_after_the_first_event_that_ends_a_span():
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a")
    state, due, _ = _applied(run.events, now=50.0)
    assert due == 52.0
    step = apply(
        state, due, decode(run.after(1).step_started("b").after(1).step_completed("b").events[-1]), 51.5, POLICY
    )
    assert step.due == 52.0  # not pushed back by a busy run


def test_a_run_that_only_started_is_not_due_until_it_has_been_open_too_long():
    # Nothing of it can be sent yet: a million runs waiting on people cost the settle loop nothing.
    _state, due, _ = _applied(WorkflowRun().started().step_started("approve").events, now=50.0)
    assert due == 50.0 + 10_000


def test_an_event_told_twice_is_a_repeat_and_changes_nothing_to_write():
    run = WorkflowRun().started()
    state, due, _ = _applied(run.events)
    again = dict(run.events[0], eventId="0195aaaa-0000-7000-8000-000000000000")
    step = apply(state, due, decode(again), 60.0, POLICY)
    assert step.admission is Admission.REPEATED and step.added == [] and step.due == due


def test_a_settled_run_is_kept_to_be_shown_then_remembered_then_forgotten():
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    state, _due, _ = _applied(run.events)
    sent = settle_run(state, 60.0, POLICY)
    assert len(sent.spans) == 2 and sent.due == 160.0  # kept keep_finished_seconds for `show`
    kept = settle_run(sent.state, 160.0, POLICY)
    assert kept.facts_forgotten and kept.state.facts == [] and kept.due == 1060.0  # closed + dedup ttl
    assert settle_run(kept.state, 1060.0, POLICY).state is None


def test_an_open_run_is_next_due_when_it_has_been_open_too_long():
    state, _due, _ = _applied(WorkflowRun().started().events)
    assert settle_run(state, 60.0, POLICY).due == 50.0 + 10_000


def test_a_job_instance_is_remembered_only_while_it_counts():
    _state, due, _ = _applied(JobRun("sync").started().events)
    assert due is None  # counted as active: kept until it ends
    _state, due, _ = _applied(JobRun("t", "task").task_scheduled(10).executed(0).events)
    assert due == 50.0 + 1000
