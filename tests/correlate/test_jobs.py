"""Jobs become metrics: the guide's continuous, debounce and task flows."""

from builders import JobRun
from fold_harness import fold_events


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


def test_an_instance_started_again_after_its_purge_is_counted_again():
    job = JobRun("sync", "continuous").started().after(1000).retry_exhausted(attempts=1)
    job.after(5000).started()
    assert fold_events(job.events).metric("job.instance.active") == [1, -1, 1]
