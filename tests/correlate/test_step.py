"""When a run is next due: decided in one place, by `apply` and `settle_run`."""

from datetime import UTC, datetime

import msgspec
from builders import JobRun, WorkflowRun, ns_of
from histories import long_histories
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_bridge import conventions as c
from otel_bridge.correlate import runs
from otel_bridge.correlate.jobs import overdue_since_ns as job_overdue_since_ns
from otel_bridge.correlate.outputs import SpanStatus
from otel_bridge.correlate.runs import Admission, SettlePolicy
from otel_bridge.correlate.step import Policy, Step, apply, close, overdue_at, settle_run
from otel_bridge.sources.durable_effect import decode
from otel_bridge.state import journal

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


def _forgotten(run: WorkflowRun):
    state, _due, _ = _applied(run.events)
    return settle_run(settle_run(state, 60.0, POLICY).state, 160.0, POLICY).state


def test_a_forgotten_run_tells_a_duplicate_from_a_late_event_by_8_bytes_per_event():
    # Closed runs are remembered for dedup_ttl_seconds (a week): on a busy bridge most of the state.
    run = WorkflowRun().started()
    for n in range(15):
        run.after(1).step_started(f"s{n}").after(1).step_completed(f"s{n}")
    run.completed()
    kept = _forgotten(run)
    header = journal.encode_header(kept)
    assert len(kept.seen_digests) == 8 * len(run.events) and kept.seen_ids == []
    # No event id is kept whole, nor what only an open run reads (when it opened, its state's order).
    assert not any(e["eventId"].encode() in header for e in run.events)
    assert msgspec.json.decode(header).keys() == {"run", "closed", "ended", "seen_digests"}
    assert len(header) < 1000  # a row of SQLite's 4 KiB pages without an overflow page
    read_back = journal.decode(kept.run.state_key, header, [])

    assert apply(read_back, 1060.0, decode(run.events[7]), 200.0, POLICY).admission is Admission.REPEATED
    straggler = decode(run.after(1).step_started("late").events[-1])
    assert apply(read_back, 1060.0, straggler, 200.0, POLICY).admission is Admission.LATE
    assert apply(read_back, 1060.0, straggler, 201.0, POLICY).admission is Admission.REPEATED  # late once


def test_a_forgotten_run_stored_with_its_event_ids_still_knows_them_and_keeps_digests_once_changed():
    # A state written before the digests: the ids themselves, in `seen_ids`.
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    ids = [e["eventId"] for e in run.events]
    legacy = msgspec.structs.replace(_forgotten(run), seen_digests=b"", seen_ids=ids)
    old = journal.decode(legacy.run.state_key, journal.encode_header(legacy), [])
    assert apply(old, 1060.0, decode(run.events[2]), 200.0, POLICY).admission is Admission.REPEATED

    step = apply(old, 1060.0, decode(run.after(1).step_started("late").events[-1]), 200.0, POLICY)
    assert step.admission is Admission.LATE
    assert step.state.seen_ids == [] and len(step.state.seen_digests) == 8 * (len(ids) + 1)
    assert apply(step.state, 1060.0, decode(run.events[0]), 201.0, POLICY).admission is Admission.REPEATED


def test_a_digest_is_found_only_where_it_stands_whole():
    digests = bytes(range(16))  # two digests: 0..7 and 8..15
    assert runs._holds(digests, bytes(range(8, 16)))
    assert not runs._holds(digests, bytes(range(4, 12)))  # the end of one and the start of the next


def test_an_open_run_is_next_due_when_it_has_been_open_too_long():
    state, _due, _ = _applied(WorkflowRun().started().events)
    assert settle_run(state, 60.0, POLICY).due == 50.0 + 10_000


def test_a_job_instance_is_remembered_only_while_it_counts():
    _state, due, _ = _applied(JobRun("sync", start=datetime.fromtimestamp(40, UTC)).started().events)
    assert due == 40.0 + 10_000  # counted as active: looked at again once it has said nothing for max_open
    _state, due, _ = _applied(JobRun("t", "task").task_scheduled(10).executed(0).events)
    assert due == 50.0 + 1000


def _active(observations) -> list[float]:
    return [o.value for o in observations if o.instrument == c.M_JOB_INSTANCE_ACTIVE]


def test_a_continuous_job_silent_for_max_open_is_presumed_ended_and_counted_again_if_it_runs():
    # `ctx.terminate()` from its own execute tells nothing: it was counted active, and kept, for ever.
    job = JobRun("poller", start=datetime.fromtimestamp(40, UTC)).started().after(60_000).executed(1)
    state, due, _ = _applied(job.events)
    # Due max_open after it was first counted, not rewritten at each of its runs: looked at then, it is
    # looked at again max_open after the latest thing it told.
    assert due == 40.0 + 10_000
    assert settle_run(state, 5_000.0, POLICY).due == settle_run(state, due, POLICY).due == 100.0 + 10_000

    ended = settle_run(state, 100.0 + 10_000, POLICY)

    assert _active(ended.observations) == [-1] and not ended.state.counted and ended.presumed_ended
    assert ended.due == 100.0 + 10_000 + 1000  # remembered dedup_ttl, then forgotten
    assert settle_run(ended.state, ended.due, POLICY) == Step(None, None)
    # Its schedule was slower than max_open: it runs again, and counts again (once).
    again = apply(ended.state, ended.due, decode(job.after(10_500_000).executed(2).events[-1]), 10_700.0, POLICY)
    assert _active(again.observations) == [1] and again.state.counted
    late = apply(ended.state, ended.due, decode(job.events[1]), 10_700.0, POLICY)  # a repeat from before
    assert _active(late.observations) == [] and not late.state.counted


def test_a_job_terminated_after_it_was_presumed_ended_is_not_counted_down_twice():
    job = JobRun("poller", start=datetime.fromtimestamp(40, UTC)).started()
    state, due, _ = _applied(job.events)
    ended = settle_run(state, due, POLICY)
    step = apply(ended.state, ended.due, decode(job.after(20_000_000).terminated(1).events[-1]), 20_100.0, POLICY)
    assert _active(ended.observations) == [-1] and _active(step.observations) == []


def _paused() -> WorkflowRun:
    # A sleep whose alarm the engine lost: nothing will ever end the run.
    return WorkflowRun().started().step_started("a").after(5).step_completed("a").sleep_started(60_000).paused("sleep")


def test_a_run_asleep_past_max_open_is_looked_at_again_max_open_after_it_is_due_to_wake():
    # Told at 50 s that it sleeps until 20,050 s, twice max_open: waiting, not stuck.
    run = WorkflowRun(start=datetime.fromtimestamp(50, UTC)).started().sleep_started(20_000_000)
    state, _due, _ = _applied(run.paused("sleep", resume_in_ms=20_000_000).events, now=50.0)
    first = settle_run(state, 52.0, POLICY)
    assert first.due == 50.0 + 10_000  # as any run open: its facts not looked through yet
    looked = settle_run(first.state, first.due, POLICY)
    assert not looked.incomplete and looked.spans == []
    assert looked.due == 20_050.0 + 10_000
    closed = settle_run(looked.state, looked.due, POLICY)
    assert closed.incomplete and {s.name for s in closed.spans} == {"sleep", "workflow orderProcessing"}


def test_a_run_closed_by_hand_is_sent_at_once_as_incomplete_with_the_reason():
    state, _due, _ = _applied(_paused().events)
    first = settle_run(state, 60.0, POLICY)  # the step's span left at its settling
    step = close(first.state, "cancelled in the engine", 70.0, POLICY)
    root = next(s for s in step.spans if s.parent_span_id is None)
    assert root.attributes[c.WORKFLOW_EXECUTION_INCOMPLETE] is True
    assert root.attributes[c.WORKFLOW_EXECUTION_CLOSE_REASON] == "cancelled in the engine"
    assert root.end_ns == max(f.time_ns for f in state.facts)  # ends where it was last heard of, as at max_open
    assert {s.name for s in step.spans} == {root.name, "sleep"}  # what had not left yet, and nothing twice
    assert step.incomplete and step.state.closed and step.due == 70.0 + 100  # kept to be shown, as any closed run
    assert ("workflow.execution.active", -1) in [(o.instrument, o.value) for o in step.observations]


def test_a_run_closed_by_hand_after_its_end_came_is_closed_as_it_ended_waiting_for_no_straggler():
    # A lost step start is a gap: the run would wait gap_grace for it. Closed by hand, it does not.
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").after(1).completed(["a", "b"])
    state, _due, _ = _applied(run.events)
    step = close(state, "no more to come", 51.0, POLICY)
    root = next(s for s in step.spans if s.parent_span_id is None)
    assert not step.incomplete and c.WORKFLOW_EXECUTION_CLOSE_REASON not in root.attributes
    assert root.status is SpanStatus.OK and step.state.closed


def test_nothing_is_closed_of_a_run_already_closed():
    state, _due, _ = _applied(WorkflowRun().started().step_started("a").after(5).step_completed("a").completed().events)
    assert close(settle_run(state, 60.0, POLICY).state, "again", 61.0, POLICY) is None


def test_an_event_of_a_run_closed_by_hand_comes_late_as_one_after_max_open_would():
    run = _paused()
    state, _due, _ = _applied(run.events)
    closed = close(state, "gone", 60.0, POLICY)
    step = apply(closed.state, closed.due, decode(run.after(10).resumed().events[-1]), 61.0, POLICY)
    assert step.admission is Admission.LATE


def test_a_task_scheduled_past_the_memory_of_ids_is_remembered_until_a_while_after_its_time():
    # A reminder a month ahead: forgotten at dedup_ttl, nothing could tell the day it does not run.
    task = JobRun("trialReminder", "task", start=datetime.fromtimestamp(50, UTC))
    task.task_scheduled(in_ms=30 * 86_400_000)
    state, due, _ = _applied(task.events, now=50.0)
    assert job_overdue_since_ns(state) == (50 + 30 * 86_400) * 10**9
    assert due == 50 + 30 * 86_400 + 300 + 1000  # overdue once the grace has passed, and remembered a while so
    ran = apply(state, due, decode(task.after(30 * 86_400_000).executed(5).events[-1]), 50 + 30 * 86_400, POLICY)
    assert ran.due == 50 + 30 * 86_400 + 1000  # ran: remembered for its events' ids alone


def test_a_job_instance_closed_by_hand_awaits_its_run_no_more_and_counts_active_no_more():
    state, _due, _ = _applied(JobRun("sync").started().task_scheduled(in_ms=30_000).events)
    step = close(state, "purged", 60.0, POLICY)
    assert job_overdue_since_ns(step.state) is None and not step.state.counted
    assert [(o.instrument, o.value) for o in step.observations] == [("job.instance.active", -1)]
    assert step.due == 60.0 + 1000  # remembered for its events' ids, as any instance that no longer counts
    assert close(step.state, "again", 61.0, POLICY) is None  # nothing left open


def test_a_job_instance_closed_by_hand_awaits_the_next_run_it_is_told_of():
    job = JobRun("reminder", "task").after(60_000).task_scheduled(in_ms=30_000)
    state, _due, _ = _applied(job.events)
    closed = close(state, "lost alarm", 60.0, POLICY).state
    # One told before the one closed, come late, is not awaited either: the latest told is what counts.
    earlier = JobRun("reminder", "task", instance_id=job.base["instanceId"]).task_scheduled(in_ms=10_000)
    assert job_overdue_since_ns(apply(closed, None, decode(earlier.events[0]), 61.0, POLICY).state) is None
    later = apply(closed, None, decode(job.after(60_000).task_scheduled(in_ms=30_000).events[-1]), 61.0, POLICY)
    assert job_overdue_since_ns(later.state) == ns_of(job.events[-1]) + 30_000 * 10**6


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=long_histories(), data=st.data())
def test_a_run_closed_by_hand_at_any_point_sends_each_span_once_and_takes_nothing_in_after(history, data):
    # Any order, repeats, settled after any event, closed by hand after any event: the root leaves once,
    # at the close unless the run had ended and left before; what comes after the close is late or a repeat.
    repeats = data.draw(st.lists(st.sampled_from(history), max_size=len(history) // 3))
    delivered = data.draw(st.permutations(history + repeats))
    at = data.draw(st.integers(min_value=1, max_value=len(delivered)))
    settled_after = set(data.draw(st.lists(st.integers(min_value=1, max_value=len(delivered)), max_size=5)))
    state, due, now = None, None, 100.0
    sent: list[str] = []
    roots: list[dict] = []
    closed = None
    for n, raw in enumerate(delivered, 1):
        now += 1
        step = apply(state, due, decode(raw), now, POLICY)
        if closed is not None:
            assert step.admission in (Admission.LATE, Admission.REPEATED), raw["type"]
        state, due = step.state, step.due
        settling = None
        if n == at:
            closed = settling = close(state, "gone", now, POLICY)
            if closed is None:  # closed before: it had ended and been settled
                assert state.closed and roots
                closed = settle_run(state, now, POLICY)
        elif n in settled_after and closed is None and due is not None and due <= now:
            settling = settle_run(state, now, POLICY)  # when due, as the pipeline settles
        if settling is not None:
            state, due = settling.state, settling.due
            sent += [span.span_id.hex() for span in settling.spans]
            roots += [span.attributes for span in settling.spans if span.parent_span_id is None]
    assert len(sent) == len(set(sent))
    assert len(roots) == 1
    if not any(raw["type"] in ("workflow.completed", "workflow.failed") for raw in delivered[:at]):
        assert roots[0][c.WORKFLOW_EXECUTION_CLOSE_REASON] == "gone"
        assert roots[0][c.WORKFLOW_EXECUTION_INCOMPLETE] is True


def test_a_workflows_own_silence_is_taken_before_every_others():
    policy = Policy(silent_executing={"checkout": 900 * 10**9, "*": 7_200 * 10**9})
    assert policy.silence_ns("checkout") == 900 * 10**9 and policy.silence_ns("report") == 7_200 * 10**9
    assert Policy(silent_executing={"checkout": 10**9}).silence_ns("report") is None
    assert Policy().silence_ns("checkout") is None


def test_an_executing_run_is_stored_to_turn_overdue_its_silence_and_the_grace_after_its_latest_event():
    run = WorkflowRun("checkout").started().step_started("charge")
    policy = Policy(silent_executing={"checkout": 900 * 10**9})
    state, _due, _steps = _applied(run.events)
    assert overdue_at(state, policy) == (ns_of(run.events[-1]) + (900 + 300) * 10**9) / 1e9
    assert overdue_at(state, Policy()) is None
    ended, _due, _steps = _applied(run.after(5).step_completed("charge").completed().events)
    assert overdue_at(ended, policy) is None


def test_the_settings_that_judge_overdue_are_read_back_as_written_and_garbage_leaves_these():
    written = Policy(
        settle=SettlePolicy(overdue_grace_ns=60 * 10**9),
        overdue_tasks=frozenset({"reminder"}),
        cleared_debounces=frozenset({"*"}),
        silent_executing={"checkout": 900 * 10**9},
        silent_continuous={"tokenRefresher": 300 * 10**9},
    )
    read = POLICY.judging_as(written.overdue_judged_by())
    assert read.overdue_judged_by() == written.overdue_judged_by()
    assert read.silence_ns("checkout") == 900 * 10**9 and read.settle.overdue_grace_ns == 60 * 10**9
    assert read.dedup_ttl_seconds == POLICY.dedup_ttl_seconds  # the rest are these settings'
    assert POLICY.judging_as(b'{"not": "these"}') is POLICY
