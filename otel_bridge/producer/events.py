"""Event streams for tests, written the way the seed guide draws its event-flow diagrams.

run = WorkflowRun("checkout")
run.started().step_started("pay").after(120).step_completed("pay").after(5).completed()
"""

import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any, Self

_BASE = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
_ids = itertools.count(1)
# UUIDv7 keeps random bits after the counter: events from two processes never collide.
_PROCESS_SALT = os.urandom(4).hex()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1000) * 1_000_000


class _Stream:
    def __init__(self, start: datetime | None) -> None:
        self.now = start or _BASE
        self.events: list[dict[str, Any]] = []
        self.base: dict[str, Any] = {}

    def emit(self, type_: str, **fields: Any) -> Self:
        """Append one event of `type_` at the stream's current time."""
        self.events.append(
            {"eventId": self._event_id(), "timestamp": iso(self.now), "type": type_, **self.base, **fields}
        )
        return self

    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def after(self, ms: float) -> Self:
        self.now += timedelta(milliseconds=ms)
        return self

    def _event_id(self) -> str:
        # UUIDv7-shaped and sortable by emission, like the engine's.
        n = next(_ids)
        millis = int(self.now.timestamp() * 1000)
        return (
            f"{millis:012x}"[:8]
            + "-"
            + f"{millis:012x}"[8:]
            + f"-7{n >> 12 & 0xFFF:03x}-8{n & 0xFFF:03x}-{n & 0xFFFF:04x}{_PROCESS_SALT}"
        )


class WorkflowRun(_Stream):
    def __init__(
        self,
        name: str = "orderProcessing",
        workflow_id: str | None = None,
        env: str = "production",
        service: str = "shop",
        execution_id: str | None = None,
        start: datetime | None = None,
    ) -> None:
        super().__init__(start)
        self.base = {
            "source": "workflow",
            "workflowId": workflow_id or f"{next(_ids):056x}{_PROCESS_SALT}",
            "workflowName": name,
            "env": env,
            "serviceKey": service,
        }
        if execution_id:
            self.base["executionId"] = execution_id

    @property
    def workflow_id(self) -> str:
        return str(self.base["workflowId"])

    def started(self, input: Any = None) -> "WorkflowRun":
        return self.emit("workflow.started", input=input)

    def queued(self, input: Any = None) -> "WorkflowRun":
        return self.emit("workflow.queued", input=input)

    def resumed(self) -> "WorkflowRun":
        return self.emit("workflow.resumed")

    def paused(self, reason: str = "sleep", step: str | None = None, resume_in_ms: float = 1000) -> "WorkflowRun":
        extra = {"stepName": step} if step else {}
        return self.emit(
            "workflow.paused", reason=reason, resumeAt=iso(self.now + timedelta(milliseconds=resume_in_ms)), **extra
        )

    def completed(self, steps: list[str] | None = None, duration_ms: float = 1) -> "WorkflowRun":
        return self.emit("workflow.completed", completedSteps=steps or [], durationMs=duration_ms)

    def failed(
        self, message: str = "boom", step: str | None = None, attempt: int | None = None, stack: str | None = None
    ) -> "WorkflowRun":
        error: dict[str, Any] = {"message": message}
        if step:
            error["stepName"] = step
        if attempt is not None:
            error["attempt"] = attempt
        if stack:
            error["stack"] = stack
        return self.emit("workflow.failed", error=error, completedSteps=[])

    def cancelled(self, reason: str | None = None) -> "WorkflowRun":
        extra = {"reason": reason} if reason else {}
        return self.emit("workflow.cancelled", completedSteps=[], **extra)

    def step_started(self, step: str, attempt: int = 1) -> "WorkflowRun":
        return self.emit("step.started", stepName=step, attempt=attempt)

    def step_completed(
        self, step: str, attempt: int = 1, duration_ms: float = 10, cached: bool = False
    ) -> "WorkflowRun":
        return self.emit("step.completed", stepName=step, attempt=attempt, durationMs=duration_ms, cached=cached)

    def step_failed(
        self,
        step: str,
        attempt: int = 1,
        message: str = "step broke",
        will_retry: bool = False,
        stack: str | None = None,
    ) -> "WorkflowRun":
        error: dict[str, Any] = {"message": message}
        if stack:
            error["stack"] = stack
        return self.emit("step.failed", stepName=step, attempt=attempt, error=error, willRetry=will_retry)

    def retry_scheduled(self, step: str, attempt: int = 1, delay_ms: float = 1000.5) -> "WorkflowRun":
        return self.emit(
            "retry.scheduled",
            stepName=step,
            attempt=attempt,
            delayMs=delay_ms,
            nextAttemptAt=iso(self.now + timedelta(milliseconds=delay_ms)),
        )

    def retry_exhausted(self, step: str, attempts: int) -> "WorkflowRun":
        return self.emit("retry.exhausted", stepName=step, attempts=attempts)

    def sleep_started(self, duration_ms: float) -> "WorkflowRun":
        return self.emit(
            "sleep.started", durationMs=duration_ms, resumeAt=iso(self.now + timedelta(milliseconds=duration_ms))
        )

    def sleep_completed(self, duration_ms: float) -> "WorkflowRun":
        return self.emit("sleep.completed", durationMs=duration_ms)

    def timeout_set(self, step: str, timeout_ms: float) -> "WorkflowRun":
        return self.emit(
            "timeout.set",
            stepName=step,
            timeoutMs=timeout_ms,
            deadline=iso(self.now + timedelta(milliseconds=timeout_ms)),
        )

    def timeout_exceeded(self, step: str, timeout_ms: float) -> "WorkflowRun":
        return self.emit("timeout.exceeded", stepName=step, timeoutMs=timeout_ms)


class JobRun(_Stream):
    def __init__(
        self,
        name: str = "tokenRefresher",
        job_type: str = "continuous",
        instance_id: str | None = None,
        env: str = "production",
        service: str = "jobs",
        start: datetime | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(start)
        self.base = {
            "source": "job",
            "instanceId": instance_id or f"{next(_ids):056x}{_PROCESS_SALT}",
            "jobType": job_type,
            "jobName": name,
            "env": env,
            "serviceKey": service,
        }
        if job_id is not None:  # the application's own id of the instance (`id` in `send`, `add`, `start`)
            self.base["id"] = job_id

    def started(self) -> "JobRun":
        return self.emit("job.started", input={"n": 1})

    def executed(self, run_count: int, duration_ms: float = 50, attempt: int = 1) -> "JobRun":
        return self.emit("job.executed", runCount=run_count, durationMs=duration_ms, attempt=attempt)

    def failed(self, run_count: int, attempt: int = 1, will_retry: bool = True) -> "JobRun":
        return self.emit(
            "job.failed",
            error={"message": f"Retry scheduled for attempt {attempt + 1}"},
            runCount=run_count,
            attempt=attempt,
            willRetry=will_retry,
        )

    def retry_exhausted(self, attempts: int = 3, reason: str = "max_attempts") -> "JobRun":
        return self.emit("job.retryExhausted", attempts=attempts, reason=reason)

    def terminated(self, run_count: int, reason: str | None = "manual") -> "JobRun":
        extra = {"reason": reason} if reason else {}
        return self.emit("job.terminated", runCount=run_count, **extra)

    def debounce_started(self, flush_in_ms: float = 5000) -> "JobRun":
        return self.emit("debounce.started", flushAt=iso(self.now + timedelta(milliseconds=flush_in_ms)))

    def debounce_flushed(self, event_count: int, reason: str = "timeout", duration_ms: float = 5000) -> "JobRun":
        return self.emit("debounce.flushed", eventCount=event_count, reason=reason, durationMs=duration_ms)

    def task_scheduled(self, in_ms: float, trigger: str = "event") -> "JobRun":
        return self.emit("task.scheduled", scheduledAt=iso(self.now + timedelta(milliseconds=in_ms)), trigger=trigger)


def ns_of(event: dict[str, Any]) -> int:
    """The event's timestamp in Unix nanoseconds."""
    return ns(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")))
