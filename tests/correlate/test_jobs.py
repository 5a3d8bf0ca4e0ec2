"""Jobs become metrics: the guide's continuous, debounce and task flows."""

import itertools

from builders import JobRun
from fold_harness import fold_events
from histories import job_histories, job_retry_histories
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bridge.correlate.jobs import JobState, last_runs
from otel_bridge.correlate.jobs import overdue_since_ns as job_overdue_since_ns
from otel_bridge.correlate.runs import SettlePolicy
from otel_bridge.correlate.step import Policy, overdue_at
from otel_bridge.producer.events import ns_of


def test_continuous_job_lifecycle_counts_executions_and_the_active_instance():
    job = JobRun("tokenRefresher", "continuous").started()
    for n in (1, 2, 3):
        job.after(60_000).executed(n, duration_ms=120)
    job.after(5).terminated(3, reason="manual")
    folded = fold_events(job.events)
    assert folded.metric("job.executions", **{"job.execution.result": "success", "job.type": "continuous"}) == [1, 1, 1]
    assert folded.metric("job.execution.duration") == [0.12, 0.12, 0.12]
    assert folded.metric("job.instance.active") == [1, -1]
    assert folded.metric("job.terminations", **{"job.name": "tokenRefresher"}) == [1]


def test_debounce_flush_reports_size_reason_and_window_even_after_job_executed():
    job = JobRun("webhookBatcher", "debounce").debounce_started()
    job.after(5000).executed(0, duration_ms=30).debounce_flushed(5, reason="timeout", duration_ms=5000)
    folded = fold_events(job.events)
    assert folded.metric("job.debounce.flush.size", **{"job.debounce.flush.reason": "timeout"}) == [5]
    assert folded.metric("job.debounce.flush.duration") == [5.0]
    assert folded.metric("job.executions") == [1]


def test_task_schedule_counts_by_trigger_and_measures_the_delay():
    job = JobRun("reminder", "task").task_scheduled(in_ms=30_000, trigger="event").executed(0)
    folded = fold_events(job.events)
    assert folded.metric("job.task.scheduled", **{"job.task.trigger": "event"}) == [1]
    assert folded.metric("job.task.schedule.delay") == [30.0]


def test_terminating_a_job_that_never_started_does_not_drive_the_gauge_negative():
    job = JobRun("reminder", "task").terminated(0)
    assert fold_events(job.events).metric("job.instance.active") == []


def test_failures_and_exhaustion_are_counted():
    job = JobRun("sync", "continuous").failed(1, attempt=1).after(1000).failed(1, attempt=2, will_retry=False)
    job.retry_exhausted(attempts=2, reason="max_attempts")
    folded = fold_events(job.events)
    assert folded.metric("job.executions", **{"job.execution.result": "failure"}) == [1, 1]
    assert folded.metric("job.retry.exhausted", **{"job.retry.exhausted.reason": "max_attempts"}) == [1]


def test_metric_attributes_never_carry_instance_or_event_ids():
    job = JobRun("sync").started().executed(1).terminated(1)
    for observation in fold_events(job.events).observations:
        keys = {k for k, _ in observation.attributes}
        assert keys <= {"job.name", "job.type", "job.execution.result"}


def test_exhausted_retries_end_the_instance_and_count_the_untold_last_failure():
    # The engine's real sequence: the last attempt sends no job.failed, only the exhaustion.
    job = JobRun("sync", "continuous").started().after(1000).failed(1, attempt=1)
    job.after(1000).failed(1, attempt=2).after(1000).retry_exhausted(attempts=3)
    folded = fold_events(job.events)
    assert sum(folded.metric("job.executions", **{"job.execution.result": "failure"})) == 3
    assert folded.metric("job.instance.active") == [1, -1]
    assert folded.metric("job.retry.exhausted") == [1]


def test_a_final_failure_that_did_arrive_is_not_counted_twice_in_any_order():
    job = JobRun("sync", "continuous").started().after(1000).failed(1, attempt=1)
    job.after(1000).failed(1, attempt=2, will_retry=False).retry_exhausted(attempts=2)
    for events in (job.events, list(reversed(job.events))):
        folded = fold_events(events)
        assert sum(folded.metric("job.executions", **{"job.execution.result": "failure"})) == 2
        assert sum(folded.metric("job.instance.active")) == 0


def test_failures_before_a_success_are_their_own_run_of_attempts():
    job = JobRun("sync", "continuous").started().failed(1, attempt=1).after(1000).executed(1, attempt=2)
    job.after(60_000).failed(2, attempt=1).after(1000).retry_exhausted(attempts=2)
    folded = fold_events(job.events)
    assert sum(folded.metric("job.executions", **{"job.execution.result": "failure"})) == 3


def _failures(events: list[dict]) -> float:
    return sum(fold_events(events).metric("job.executions", **{"job.execution.result": "failure"}))


def test_an_instance_used_again_after_its_retries_were_exhausted_counts_its_new_failures():
    # A debounce per customer whose webhook is down: each incarnation fails and gives up alike. The
    # attempts told of the first must not hide the second's (its failures were counted as none).
    job = JobRun("webhookBatcher", "debounce").debounce_started()
    for _incarnation in (1, 2):
        job.after(5000).failed(0, attempt=1).after(1000).failed(0, attempt=2).after(2000).retry_exhausted(attempts=3)
        job.after(60_000).debounce_started()
    assert _failures(job.events) == 6


def test_a_failure_not_retried_each_time_is_counted_each_time():
    job = JobRun("sync", "continuous").started()
    for run in (1, 2, 3):
        job.after(60_000).failed(run, attempt=1, will_retry=False)
    assert _failures(job.events) == 3


def test_a_success_told_late_still_parts_the_runs_of_retries_on_either_side_of_it():
    job = JobRun("sync", "continuous").started().after(1000).failed(1, attempt=1).after(1000).executed(1, attempt=2)
    job.after(60_000).failed(2, attempt=1).after(1000).failed(2, attempt=2).after(1000).retry_exhausted(attempts=3)
    success = job.events[2]
    told_late = [e for e in job.events if e is not success] + [success]
    assert _failures(job.events) == _failures(told_late) == 4


@settings(max_examples=300, deadline=None)
@given(history=job_retry_histories(), data=st.data())
def test_every_failed_attempt_is_counted_once_in_any_order(history, data):
    events, failed = history
    assert _failures(events) == failed
    assert _failures(data.draw(st.permutations(events))) == failed


def _active(events: list[dict]) -> float:
    return sum(fold_events(events).metric("job.instance.active"))


def test_an_end_told_after_the_next_start_ends_the_instance_before_it_not_the_new_one():
    job = JobRun("sync", "continuous").started().after(1000).failed(1).after(2000).retry_exhausted(attempts=2)
    job.after(60_000).started()
    ended, restarted = job.events[2], job.events[3]
    assert _active(job.events) == _active([*job.events[:2], restarted, ended]) == 1


@settings(max_examples=300, deadline=None)
@given(history=job_retry_histories(), data=st.data())
def test_an_instance_is_counted_active_in_any_order_as_its_latest_start_and_end_say(history, data):
    events, _failed = history
    ends = [i for i, e in enumerate(events) if e["type"] in ("job.terminated", "job.retryExhausted")]
    starts = [i for i, e in enumerate(events) if e["type"] == "job.started"]
    alive = max(starts, default=-1) > max(ends, default=-1)
    assert _active(events) == _active(data.draw(st.permutations(events))) == (1 if alive else 0)


def test_an_exhaustion_counts_its_attempts_without_listing_them():
    # Each attempt was listed to count it once: an exhaustion telling 2**62 attempts held the fold for
    # good (the decoder now takes at most 10,000); counted, a large one costs what a small one does.
    job = JobRun("sync", "continuous").started().after(1000).failed(1, attempt=1).after(1000).failed(1, attempt=2)
    job.after(1000).retry_exhausted(attempts=10_000)
    assert _failures(job.events) == 10_000


def test_what_is_kept_to_count_failures_stays_small_however_long_an_instance_lives():
    job = JobRun("sync", "continuous").started()
    for run in range(1, 200):
        job.after(60_000).failed(run, attempt=1).after(1000).executed(run, attempt=2)
    (state,) = fold_events(job.events).jobs.values()
    assert len(state.resets) <= 17 and len(state.retried) <= 17
    assert _failures(job.events) == 199


def test_an_instance_started_again_after_its_purge_is_counted_again():
    job = JobRun("sync", "continuous").started().after(1000).retry_exhausted(attempts=1)
    job.after(5000).started()
    assert fold_events(job.events).metric("job.instance.active") == [1, -1, 1]


# Overdue: the job's lost alarm. When an instance is next to run is what the engine told (a task's
# scheduledAt, a debounce's flushAt); it is overdue from then on until a run comes.


def _last_runs(events: list[dict]) -> dict[str, float]:
    """job.execution.last_timestamp by result, as a gauge keeping the latest time given would hold it."""
    told: dict[str, float] = {}
    for o in fold_events(events).observations:
        if o.instrument == "job.execution.last_timestamp":
            result = dict(o.attributes)["job.execution.result"]
            told[result] = max(told.get(result, 0.0), o.value)
    return told


def test_when_a_job_last_ran_is_told_by_result_the_latest_in_any_order():
    job = JobRun("sync").started().after(60_000).executed(1).after(60_000).failed(2).after(1000).executed(2)
    job.after(60_000).executed(3)
    last = {"success": ns_of(job.events[-1]) / 1e9, "failure": ns_of(job.events[2]) / 1e9}
    assert _last_runs(job.events) == last
    assert {tuple(sorted(_last_runs(list(order)).items())) for order in itertools.permutations(job.events[1:])} == {
        tuple(sorted(last.items()))
    }
    (state,) = fold_events(job.events).jobs.values()
    assert {dict(o.attributes)["job.execution.result"]: o.value for o in last_runs(state)} == last  # after a restart


def _overdue_since(events: list[dict]) -> int | None:
    (state,) = fold_events(events).jobs.values()
    return job_overdue_since_ns(state)


def test_a_task_whose_scheduled_time_passed_without_a_run_is_overdue_from_that_time():
    job = JobRun("reminder", "task").task_scheduled(in_ms=30_000)
    assert _overdue_since(job.events) == ns_of(job.events[0]) + 30_000 * 10**6


def test_a_task_that_ran_at_its_scheduled_time_is_not_overdue():
    job = JobRun("reminder", "task").task_scheduled(in_ms=30_000).after(30_000).executed(0)
    assert _overdue_since(job.events) is None


def test_a_run_that_fails_is_a_run_not_a_missed_one():
    job = JobRun("reminder", "task").task_scheduled(in_ms=30_000).after(30_000).failed(0, will_retry=False)
    assert _overdue_since(job.events) is None


def test_a_task_scheduling_its_next_run_before_its_current_one_ends_awaits_the_next_one():
    # The engine's order within one execution: task.scheduled (the next), then job.executed (this one).
    job = JobRun("poller", "task").task_scheduled(in_ms=1000).after(1000)
    job.task_scheduled(in_ms=60_000).after(20).executed(0)
    next_run = ns_of(job.events[1]) + 60_000 * 10**6
    assert _overdue_since(job.events) == next_run
    assert _overdue_since(job.after(60_000).executed(0).events) is None


def test_whether_a_task_is_overdue_does_not_depend_on_the_order_its_events_came_in():
    job = JobRun("poller", "task").task_scheduled(in_ms=1000).after(1000)
    job.task_scheduled(in_ms=60_000).after(20).executed(0)
    told = {_overdue_since(list(order)) for order in itertools.permutations(job.events)}
    assert told == {ns_of(job.events[1]) + 60_000 * 10**6}


def test_a_debounce_whose_flush_time_passed_without_a_flush_is_overdue():
    job = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    assert _overdue_since(job.events) == ns_of(job.events[0]) + 5000 * 10**6


def test_a_debounce_flushed_on_time_or_early_is_not_overdue():
    on_time = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    on_time.after(5000).executed(0).debounce_flushed(3, reason="timeout")
    early = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    early.after(100).executed(0).debounce_flushed(100, reason="maxEvents")
    assert _overdue_since(on_time.events) is None and _overdue_since(early.events) is None


def test_a_new_collection_after_a_flush_awaits_its_own_flush():
    job = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    job.after(5000).executed(0).debounce_flushed(3).after(60_000).debounce_started(flush_in_ms=5000)
    assert _overdue_since(job.events) == ns_of(job.events[-1]) + 5000 * 10**6


def test_a_task_terminated_after_being_scheduled_awaits_nothing_until_it_is_scheduled_again():
    job = JobRun("reminder", "task").task_scheduled(in_ms=30_000).after(10).terminated(0)
    assert _overdue_since(job.events) is None
    job.after(10).task_scheduled(in_ms=30_000)
    assert _overdue_since(job.events) == ns_of(job.events[-1]) + 30_000 * 10**6


def test_a_continuous_job_is_never_overdue_nothing_tells_when_it_runs_next():
    job = JobRun("tokenRefresher", "continuous").started().after(60_000).executed(1)
    assert _overdue_since(job.events) is None


def test_a_continuous_job_given_a_silence_is_due_that_long_after_it_last_ran_while_it_is_active():
    # `Continuous.every("5 minutes")`: its alarm lost, it runs no more, and tells nothing of it.
    minutes = 15 * 60 * 10**9
    job = JobRun("tokenRefresher", "continuous").started()
    (started,) = fold_events(job.events).jobs.values()
    assert job_overdue_since_ns(started, minutes) == ns_of(job.events[0]) + minutes  # never ran: from its start
    job.after(300_000).executed(1).after(300_000).executed(2)
    told = {job_overdue_since_ns(_state_of(list(order)), minutes) for order in itertools.permutations(job.events)}
    assert told == {ns_of(job.events[-1]) + minutes}
    (ended,) = fold_events(job.after(5).terminated(2).events).jobs.values()
    assert job_overdue_since_ns(ended, minutes) is None  # it ended itself: awaited no more


def _state_of(events: list[dict]) -> "JobState":
    (state,) = fold_events(events).jobs.values()
    return state


def test_a_continuous_job_is_overdue_only_where_the_settings_name_it():
    job = JobRun("tokenRefresher", "continuous").started().after(300_000).executed(1)
    (state,) = fold_events(job.events).jobs.values()
    grace = SettlePolicy(overdue_grace_ns=300 * 10**9)
    named = Policy(settle=grace, silent_continuous={"tokenRefresher": 900 * 10**9, "*": 60 * 10**9})
    assert overdue_at(state, named) == (ns_of(job.events[-1]) + (900 + 300) * 10**9) / 1e9
    every_other = Policy(settle=grace, silent_continuous={"*": 60 * 10**9})
    assert overdue_at(state, every_other) == (ns_of(job.events[-1]) + (60 + 300) * 10**9) / 1e9
    assert overdue_at(state, Policy(settle=grace, silent_continuous={"ledgerReconcile": 60 * 10**9})) is None
    assert overdue_at(state, Policy(settle=grace)) is None
    batcher = JobRun("tokenRefresher", "debounce").debounce_started(flush_in_ms=1000)
    (debounce,) = fold_events(batcher.events).jobs.values()
    assert named.job_silence_ns(debounce) is None  # a debounce tells when it is due


def test_the_instance_turns_overdue_once_the_grace_has_passed_too():
    job = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=30_000)
    (state,) = fold_events(job.events).jobs.values()
    policy = Policy(settle=SettlePolicy(overdue_grace_ns=300 * 10**9))
    assert overdue_at(state, policy) == (ns_of(job.events[0]) + (30 + 300) * 10**9) / 1e9


# A task's code sets its own schedule, and may end without a word: `ctx.clear()` or `ctx.terminate()` at
# its alarm (the engine's own one-shot reminder) purges it and tells nothing, exactly as a lost alarm.


def test_a_task_is_overdue_only_where_the_settings_name_it_a_debounce_always():
    reminder = JobRun("reminder", "task").task_scheduled(in_ms=30_000)
    (state,) = fold_events(reminder.events).jobs.values()
    (flush,) = fold_events(JobRun("batcher", "debounce").debounce_started(flush_in_ms=30_000).events).jobs.values()
    judged = (ns_of(reminder.events[0]) + 30 * 10**9) / 1e9
    grace = SettlePolicy(overdue_grace_ns=0)

    assert overdue_at(state, Policy(settle=grace)) is None  # by default: it may have ended itself at its time
    assert overdue_at(state, Policy(settle=grace, overdue_tasks=frozenset({"reminder"}))) == judged
    assert overdue_at(state, Policy(settle=grace, overdue_tasks=frozenset({"*"}))) == judged
    assert overdue_at(state, Policy(settle=grace, overdue_tasks=frozenset({"invoiceReminder"}))) is None
    assert overdue_at(flush, Policy(settle=grace)) is not None


def test_a_debounce_is_judged_unless_the_settings_say_its_clients_clear_it():
    # A client's `clear()` purges a debounce and tells nothing: its flushAt passing looks like a lost alarm,
    # and an application that clears as a matter of course had JobsOverdue firing for each one it cleared.
    batcher = JobRun("batcher", "debounce").debounce_started(flush_in_ms=30_000)
    (state,) = fold_events(batcher.events).jobs.values()
    judged = (ns_of(batcher.events[0]) + 30 * 10**9) / 1e9
    grace = SettlePolicy(overdue_grace_ns=0)

    assert overdue_at(state, Policy(settle=grace)) == judged
    assert overdue_at(state, Policy(settle=grace, cleared_debounces=frozenset({"batcher"}))) is None
    assert overdue_at(state, Policy(settle=grace, cleared_debounces=frozenset({"*"}))) is None
    assert overdue_at(state, Policy(settle=grace, cleared_debounces=frozenset({"digest"}))) == judged
    assert overdue_at(state, Policy(settle=grace, overdue_tasks=frozenset({"*"}))) == judged  # tasks' alone


def test_a_task_whose_later_run_cancelled_its_schedule_awaits_nothing():
    # The engine's order example: created (a reminder in an hour), then paid — `ctx.cancelSchedule()` in
    # that event's run, which tells its run (job.executed) and nothing of the schedule.
    order = JobRun("orderTimeout", "task").task_scheduled(in_ms=3_600_000).after(2).executed(0, duration_ms=4)
    assert _overdue_since(order.events) == ns_of(order.events[0]) + 3_600_000 * 10**6
    order.after(600_000).executed(0, duration_ms=30)

    assert _overdue_since(order.events) is None
    assert {_overdue_since(list(o)) for o in itertools.permutations(order.events)} == {None}
    order.after(60_000).task_scheduled(in_ms=86_400_000)  # shipped: a check in a day, told
    assert _overdue_since(order.events) == ns_of(order.events[-1]) + 86_400_000 * 10**6


def test_the_run_that_told_a_schedule_does_not_cancel_it_though_its_clock_was_read_a_moment_apart():
    # durationMs is read before the end is stamped: the run's start comes out a millisecond late.
    job = JobRun("reminder", "task").task_scheduled(in_ms=60_000).after(2).executed(0, duration_ms=1)
    assert _overdue_since(job.events) == ns_of(job.events[0]) + 60_000 * 10**6


@settings(max_examples=150, deadline=None)
@given(history=job_histories(), data=st.data())
def test_whether_and_since_when_an_instance_is_overdue_is_the_same_in_any_order_and_with_repeats(history, data):
    told = _overdue_since(history)
    shuffled = data.draw(st.permutations(history))
    repeated = shuffled + data.draw(st.lists(st.sampled_from(history), max_size=5))
    assert _overdue_since(repeated) == told
    # And it is what the history says: awaited since the latest schedule, unless a run came for it.
    latest = max(
        (e for e in history if e["type"] in ("task.scheduled", "debounce.started")),
        key=lambda e: (e["timestamp"], e["eventId"]),
    )
    due = latest.get("scheduledAt") or latest["flushAt"]
    if told is not None:
        assert told == ns_of({"timestamp": due})


def test_an_instance_whose_latest_run_failed_says_why_until_a_run_succeeds():
    from otel_bridge.correlate.jobs import last_failure

    job = JobRun("invoiceSync", "continuous").started().after(10).failed(1, will_retry=False)
    (state,) = fold_events(job.events).jobs.values()
    assert last_failure(state) == "Retry scheduled for attempt 2"  # the builder's error message
    job.after(60_000).executed(2)
    (state,) = fold_events(job.events).jobs.values()
    assert last_failure(state) is None, "its latest run succeeded"
    # Told late, an older failure does not hide the latest one's message.
    both = JobRun("invoiceSync", "continuous").started().after(10).failed(1, will_retry=False)
    both.after(60_000).failed(2, will_retry=False).events[-1]["error"]["message"] = "the ledger refused the invoice"
    started, older, newer = both.events
    (state,) = fold_events([started, newer, older]).jobs.values()
    assert last_failure(state) == "the ledger refused the invoice"
