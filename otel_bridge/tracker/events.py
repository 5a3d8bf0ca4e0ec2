"""Typed builders of the engine's 24 internal events (UUIDv7 ids, ISO-8601 timestamps).

Each event is checked against the very models the bridge decodes with, so a producer
cannot emit what the bridge would reject:

    run = WorkflowEvents("wf-8f2c", "checkout")
    tracker.emit(run.started(input={"order": 42}))
    tracker.emit(run.step_started("charge", attempt=1))
"""

from datetime import UTC, datetime
from typing import Any

import uuid6
from pydantic import ValidationError

from otel_bridge.sources.durable_effect import parse_event
from otel_bridge.sources.wire import DecodeError, iso

# Stand-ins for what a tracker adds on sending: the check is of the event's own fields.
_CHECK_ENV, _CHECK_SERVICE = "check", "check"


def _event(source: str, type_: str, base: dict[str, Any], at: datetime | None, **fields: Any) -> dict[str, Any]:
    event = {
        "eventId": str(uuid6.uuid7()),
        "timestamp": iso(at or datetime.now(UTC)),
        "source": source,
        "type": type_,
        **base,
        **{k: v for k, v in fields.items() if v is not None},
    }
    try:
        parse_event({**event, "env": _CHECK_ENV, "serviceKey": _CHECK_SERVICE})
    except (DecodeError, ValidationError) as exc:
        raise ValueError(f"{type_} would be rejected by the bridge: {exc}") from None
    return event


def _error(
    message: str, stack: str | None = None, step: str | None = None, attempt: int | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    for key, value in (("stack", stack), ("stepName", step), ("attempt", attempt)):
        if value is not None:
            error[key] = value
    return error


class WorkflowEvents:
    """The 16 workflow events of one workflow instance."""

    def __init__(self, workflow_id: str, workflow_name: str, execution_id: str | None = None) -> None:
        self._base: dict[str, Any] = {"workflowId": workflow_id, "workflowName": workflow_name}
        if execution_id is not None:
            self._base["executionId"] = execution_id

    def _e(self, type_: str, at: datetime | None, **fields: Any) -> dict[str, Any]:
        return _event("workflow", type_, self._base, at, **fields)

    def started(self, input: Any = None, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("workflow.started", at, input=input)

    def queued(self, input: Any = None, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("workflow.queued", at, input=input)

    def resumed(self, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("workflow.resumed", at)

    def paused(
        self,
        reason: str,
        resume_at: datetime | None = None,
        step_name: str | None = None,
        *,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        return self._e("workflow.paused", at, reason=reason, resumeAt=resume_at and iso(resume_at), stepName=step_name)

    def completed(
        self, completed_steps: list[str], duration_ms: float | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("workflow.completed", at, completedSteps=completed_steps, durationMs=duration_ms)

    def failed(
        self,
        message: str,
        completed_steps: list[str] | None = None,
        stack: str | None = None,
        *,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        return self._e("workflow.failed", at, error=_error(message, stack), completedSteps=completed_steps or [])

    def cancelled(
        self, reason: str | None = None, completed_steps: list[str] | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("workflow.cancelled", at, reason=reason, completedSteps=completed_steps or [])

    def step_started(self, step_name: str, attempt: int = 1, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("step.started", at, stepName=step_name, attempt=attempt)

    def step_completed(
        self, step_name: str, attempt: int, duration_ms: float, cached: bool = False, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("step.completed", at, stepName=step_name, attempt=attempt, durationMs=duration_ms, cached=cached)

    def step_failed(
        self,
        step_name: str,
        attempt: int,
        message: str,
        stack: str | None = None,
        will_retry: bool = False,
        *,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        error = _error(message, stack)
        return self._e("step.failed", at, stepName=step_name, attempt=attempt, error=error, willRetry=will_retry)

    def retry_scheduled(
        self,
        step_name: str,
        attempt: int,
        delay_ms: float,
        next_attempt_at: datetime | None = None,
        *,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        next_at = next_attempt_at and iso(next_attempt_at)
        return self._e(
            "retry.scheduled", at, stepName=step_name, attempt=attempt, delayMs=delay_ms, nextAttemptAt=next_at
        )

    def retry_exhausted(self, step_name: str, attempts: int, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("retry.exhausted", at, stepName=step_name, attempts=attempts)

    def sleep_started(
        self, duration_ms: float, resume_at: datetime | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("sleep.started", at, durationMs=duration_ms, resumeAt=resume_at and iso(resume_at))

    def sleep_completed(self, duration_ms: float, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("sleep.completed", at, durationMs=duration_ms)

    def timeout_set(
        self, step_name: str, timeout_ms: float, deadline: datetime | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("timeout.set", at, stepName=step_name, timeoutMs=timeout_ms, deadline=deadline and iso(deadline))

    def timeout_exceeded(
        self, step_name: str, timeout_ms: float | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("timeout.exceeded", at, stepName=step_name, timeoutMs=timeout_ms)


class JobEvents:
    """The 8 job events of one job instance (`job_type`: continuous, debounce, task, workerPool)."""

    def __init__(self, instance_id: str, job_type: str, job_name: str, id: str | None = None) -> None:
        self._base: dict[str, Any] = {"instanceId": instance_id, "jobType": job_type, "jobName": job_name}
        if id is not None:
            self._base["id"] = id

    def _e(self, type_: str, at: datetime | None, **fields: Any) -> dict[str, Any]:
        return _event("job", type_, self._base, at, **fields)

    def started(self, input: Any = None, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("job.started", at, input=input)

    def executed(
        self, run_count: int, duration_ms: float, attempt: int = 1, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("job.executed", at, runCount=run_count, durationMs=duration_ms, attempt=attempt)

    def failed(
        self, run_count: int, message: str, attempt: int = 1, will_retry: bool = False, *, at: datetime | None = None
    ) -> dict[str, Any]:
        error = _error(message)
        return self._e("job.failed", at, error=error, runCount=run_count, attempt=attempt, willRetry=will_retry)

    def retry_exhausted(
        self, attempts: int, reason: str = "max_attempts", *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("job.retryExhausted", at, attempts=attempts, reason=reason)

    def terminated(
        self, run_count: int = 0, reason: str | None = None, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("job.terminated", at, runCount=run_count, reason=reason)

    def debounce_started(self, flush_at: datetime | None = None, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("debounce.started", at, flushAt=flush_at and iso(flush_at))

    def debounce_flushed(
        self, event_count: int, reason: str, duration_ms: float, *, at: datetime | None = None
    ) -> dict[str, Any]:
        return self._e("debounce.flushed", at, eventCount=event_count, reason=reason, durationMs=duration_ms)

    def task_scheduled(self, scheduled_at: datetime, trigger: str, *, at: datetime | None = None) -> dict[str, Any]:
        return self._e("task.scheduled", at, scheduledAt=iso(scheduled_at), trigger=trigger)
