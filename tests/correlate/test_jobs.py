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
