"""The durable-effect tracking events: wire models and their lifecycle meaning.

The 24 event types of the engine's event guide, validated with pydantic as a
union discriminated by `source`, then by `type`. The engine's real behaviour
(PRODUCER_FACTS.md) shapes the decoding: `source` may be missing on old
deployments, optional fields are absent rather than null, extra fields are
tolerated, `retry.scheduled` replaces `step.failed` for retryable failures.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from otel_bridge import conventions as c
from otel_bridge.lifecycle import (
    JOB_KIND,
    KIND,
    OUTCOME,
    AttributeValue,
    ErrorInfo,
    Fact,
    JobRecord,
    LifecycleRecord,
    RunRef,
    WorkflowRecord,
)
from otel_bridge.sources.wire import (
    Attempts,
    Count,
    DecodeError,
    DecodeOptions,
    EventId,
    Identity,
    IsoTime,
    Label,
    Millis,
    Text,
    attrs,
    cut,
    iso,
    json_kind,
    ns,
    reason,
    summary,
)

__all__ = ["EVENT_TYPES", "DecodeError", "DecodeOptions", "decode", "parse_event"]

ENGINE = c.PLATFORM_DURABLE_EFFECT


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class WireError(_Wire):
    message: str
    stack: str | None = None
    step_name: Text | None = None
    attempt: Count | None = None


class _WorkflowBase(_Wire):
    event_id: EventId
    timestamp: IsoTime
    source: Literal["workflow"] = "workflow"
    workflow_id: Identity
    workflow_name: Text
    execution_id: Text | None = None
    env: Label
    service_key: Label


class WorkflowStarted(_WorkflowBase):
    type: Literal["workflow.started"]
    input: Any = None


class WorkflowQueued(_WorkflowBase):
    type: Literal["workflow.queued"]
    input: Any = None


class WorkflowResumed(_WorkflowBase):
    type: Literal["workflow.resumed"]


class WorkflowPaused(_WorkflowBase):
    type: Literal["workflow.paused"]
    reason: Literal["sleep", "retry"]
    resume_at: IsoTime | None = None
    step_name: Text | None = None


class WorkflowCompleted(_WorkflowBase):
    type: Literal["workflow.completed"]
    completed_steps: list[Text] = []
    duration_ms: Millis | None = None


class WorkflowFailed(_WorkflowBase):
    type: Literal["workflow.failed"]
    error: WireError
    completed_steps: list[Text] = []


class WorkflowCancelled(_WorkflowBase):
    type: Literal["workflow.cancelled"]
    reason: Text | None = None
    completed_steps: list[Text] = []


class StepStarted(_WorkflowBase):
    type: Literal["step.started"]
    step_name: Text
    attempt: Count


class StepCompleted(_WorkflowBase):
    type: Literal["step.completed"]
    step_name: Text
    attempt: Count
    duration_ms: Millis
    cached: bool = False


class StepFailed(_WorkflowBase):
    type: Literal["step.failed"]
    step_name: Text
    attempt: Count
    error: WireError
    will_retry: bool = False


class RetryScheduled(_WorkflowBase):
    type: Literal["retry.scheduled"]
    step_name: Text
    attempt: Count
    next_attempt_at: IsoTime | None = None
    delay_ms: Millis | None = None


class RetryExhausted(_WorkflowBase):
    type: Literal["retry.exhausted"]
    step_name: Text
    attempts: Count


class SleepStarted(_WorkflowBase):
    type: Literal["sleep.started"]
    duration_ms: Millis
    resume_at: IsoTime | None = None


class SleepCompleted(_WorkflowBase):
    type: Literal["sleep.completed"]
    duration_ms: Millis


class TimeoutSet(_WorkflowBase):
    type: Literal["timeout.set"]
    step_name: Text
    deadline: IsoTime | None = None
    timeout_ms: Millis | None = None


class TimeoutExceeded(_WorkflowBase):
    type: Literal["timeout.exceeded"]
    step_name: Text
    timeout_ms: Millis | None = None


class _JobBase(_Wire):
    event_id: EventId
    timestamp: IsoTime
    source: Literal["job"] = "job"
    instance_id: Identity
    job_type: Literal["continuous", "debounce", "task", "workerPool"]
    job_name: Text
    env: Label
    service_key: Label
    id: Text | None = None


class JobStarted(_JobBase):
    type: Literal["job.started"]
    input: Any = None


class JobExecuted(_JobBase):
    type: Literal["job.executed"]
    run_count: Count
    duration_ms: Millis
    attempt: Count = 1


class JobFailed(_JobBase):
    type: Literal["job.failed"]
    error: WireError
    run_count: Count
    attempt: Count = 1
    will_retry: bool = False


class JobRetryExhausted(_JobBase):
    type: Literal["job.retryExhausted"]
    attempts: Attempts
    reason: Literal["max_attempts", "max_duration"]


class JobTerminated(_JobBase):
    type: Literal["job.terminated"]
    reason: Text | None = None
    run_count: Count = 0


class DebounceStarted(_JobBase):
    type: Literal["debounce.started"]
    flush_at: IsoTime | None = None


class DebounceFlushed(_JobBase):
    type: Literal["debounce.flushed"]
    event_count: Count
    reason: Literal["timeout", "maxEvents", "manual"]
    duration_ms: Millis


class TaskScheduled(_JobBase):
    type: Literal["task.scheduled"]
    scheduled_at: IsoTime
    trigger: Literal["event", "execute", "idle", "error"]


WorkflowEvent = Annotated[
    WorkflowStarted
    | WorkflowQueued
    | WorkflowResumed
    | WorkflowPaused
    | WorkflowCompleted
    | WorkflowFailed
    | WorkflowCancelled
    | StepStarted
    | StepCompleted
    | StepFailed
    | RetryScheduled
    | RetryExhausted
    | SleepStarted
    | SleepCompleted
    | TimeoutSet
    | TimeoutExceeded,
    Field(discriminator="type"),
]

JobEvent = Annotated[
    JobStarted
    | JobExecuted
    | JobFailed
    | JobRetryExhausted
    | JobTerminated
    | DebounceStarted
    | DebounceFlushed
    | TaskScheduled,
    Field(discriminator="type"),
]


def _source_of(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    source = value.get("source")
    if source is not None:
        return source if isinstance(source, str) else None
    # Deployments from before the `source` field existed.
    if "workflowId" in value:
        return "workflow"
    if "instanceId" in value:
        return "job"
    return None


TrackingEvent = Annotated[
    Annotated[WorkflowEvent, Tag("workflow")] | Annotated[JobEvent, Tag("job")],
    Discriminator(
        _source_of,
        custom_error_type="unknown_source",
        custom_error_message="must be 'workflow' or 'job' (or, left out, the event carry workflowId or instanceId)",
    ),
]

EVENT_TYPES: tuple[str, ...] = tuple(
    model.model_fields["type"].annotation.__args__[0]
    for union in (WorkflowEvent, JobEvent)
    for model in union.__origin__.__args__  # type: ignore[attr-defined]
)

# The adapter's validator itself, called once per event: TypeAdapter.validate_python only
# forwards its keyword arguments to it.
_validate = TypeAdapter(TrackingEvent).validator.validate_python


def parse_event(raw: Any) -> Any:
    """Validate one wire event, or raise DecodeError naming the first bad field."""
    try:
        return _validate(raw)
    except ValidationError as exc:
        raise _decode_error(raw, exc) from None


def _decode_error(raw: Any, exc: ValidationError) -> DecodeError:
    if not isinstance(raw, dict):
        return DecodeError("", f"an event must be a JSON object, not {json_kind(raw)}")
    problems = [_problem(raw, error) for error in exc.errors(include_url=False)]
    field, reason = problems[0]
    if len(problems) > 1:
        # Name every bad field at once: the producer fixes them in one round.
        reason += "; " + "; ".join(f"{f}: {r}" if f else r for f, r in problems[1:5])
        if len(problems) > 5:
            reason += f"; and {len(problems) - 5} more"
    return DecodeError(field, reason)


def _problem(raw: dict[str, Any], error: Any) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    source = _source_of(raw)
    # Drop the union tags pydantic puts in front of the field path.
    if loc and loc[0] == source:
        loc = loc[1:]
    if loc and loc[0] == raw.get("type"):
        loc = loc[1:]
    if error["type"] == "union_tag_invalid":
        return "type", f"unknown event type {raw.get('type')!r} for source {source!r}"
    if error["type"] == "union_tag_not_found":
        return "type", "Field required"
    if error["type"] == "unknown_source":
        return "source", error["msg"]
    return ".".join(loc), reason(error)


def decode(raw: Any, options: DecodeOptions | None = None) -> LifecycleRecord:
    """One wire event -> one lifecycle record (raises DecodeError)."""
    try:
        return to_lifecycle(parse_event(raw), options or DecodeOptions())
    except DecodeError as exc:
        raise exc.of(raw, "eventId") from None


def _error(wire: WireError, options: DecodeOptions) -> ErrorInfo:
    limit = options.max_text_chars
    return ErrorInfo(
        message=cut(wire.message, limit),
        type=None,
        stacktrace=cut(wire.stack, limit) if wire.stack is not None else None,
        step=wire.step_name,
        attempt=wire.attempt,
    )


def _timed_out(wire: WireError) -> bool:
    # A step timeout that fires mid-step arrives as an ordinary failure whose error is the
    # engine's WorkflowTimeoutError (PRODUCER_FACTS.md); it is a timeout all the same.
    return any(text.lstrip().startswith(_TIMEOUT_ERROR) for text in (wire.stack or "", wire.message))


_TIMEOUT_ERROR = "WorkflowTimeoutError"


def _input_attr(value: Any, options: DecodeOptions) -> dict[str, AttributeValue]:
    if not options.capture_input or value is None:
        return {}
    text = summary(value, options)
    return {c.WORKFLOW_EXECUTION_INPUT: text} if text is not None else {}


def to_lifecycle(event: Any, options: DecodeOptions) -> LifecycleRecord:
    # Dispatched on the event's class: a `match` on pydantic models is an isinstance check per
    # case, each through ABCMeta (~70 ns), and a workflow's end passed seven of them.
    fact_of = _FACT_OF.get(type(event))
    if fact_of is None:
        return _job_record(event)
    fact = fact_of(event, options)
    fact.attributes[c.WORKFLOW_EVENT_ID] = event.event_id
    run = _run_ref(event.env, event.service_key, event.workflow_id, event.workflow_name, event.execution_id)
    return WorkflowRecord(run=run, fact=fact)


@lru_cache(maxsize=4096)
def _run_ref(env: str, service: str, run_id: str, name: str, correlation_id: str | None) -> RunRef:
    # A batch holds several events of each run: one (frozen) RunRef serves them all, which
    # spares a validation per event and lets the fold see at once that the run is the one it knows.
    return RunRef(engine=ENGINE, env=env, service=service, run_id=run_id, name=name, correlation_id=correlation_id)


def _base(e: Any) -> dict[str, Any]:
    """What every fact takes from its event, whatever its type."""
    return {"event_id": e.event_id, "time_ns": ns(e.timestamp), "name": e.type}


def _step_started(e: StepStarted, _options: DecodeOptions) -> Fact:
    return Fact(kind=KIND.ATTEMPT_STARTED, step=e.step_name, attempt=e.attempt, **_base(e))


def _step_completed(e: StepCompleted, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.ATTEMPT_ENDED,
        step=e.step_name,
        attempt=e.attempt,
        outcome=OUTCOME.SUCCESS,
        duration_ms=e.duration_ms,
        cached=e.cached,
        **_base(e),
    )


def _step_failed(e: StepFailed, options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.ATTEMPT_ENDED,
        step=e.step_name,
        attempt=e.attempt,
        outcome=OUTCOME.TIMEOUT if _timed_out(e.error) else OUTCOME.FAILURE,
        error=_error(e.error, options),
        attributes={"workflow.task.will_retry": e.will_retry},
        **_base(e),
    )


def _workflow_started(e: WorkflowStarted, options: DecodeOptions) -> Fact:
    return Fact(kind=KIND.RUN_STARTED, attributes=_input_attr(e.input, options), **_base(e))


def _workflow_queued(e: WorkflowQueued, options: DecodeOptions) -> Fact:
    return Fact(kind=KIND.RUN_QUEUED, attributes=_input_attr(e.input, options), **_base(e))


def _workflow_resumed(e: WorkflowResumed, _options: DecodeOptions) -> Fact:
    return Fact(kind=KIND.RUN_RESUMED, **_base(e))


def _workflow_paused(e: WorkflowPaused, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.RUN_PAUSED,
        step=e.step_name,
        reason=e.reason,
        resume_at_ns=ns(e.resume_at) if e.resume_at is not None else None,
        attributes=attrs(
            **{
                c.WORKFLOW_PAUSE_REASON: e.reason,
                c.WORKFLOW_PAUSE_RESUME_AT: iso(e.resume_at),
                c.WORKFLOW_TASK_NAME: e.step_name,
            }
        ),
        **_base(e),
    )


def _workflow_completed(e: WorkflowCompleted, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.RUN_ENDED,
        outcome=OUTCOME.SUCCESS,
        duration_ms=e.duration_ms,
        attributes={c.WORKFLOW_EXECUTION_COMPLETED_STEPS: list(e.completed_steps)},
        **_base(e),
    )


def _workflow_failed(e: WorkflowFailed, options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.RUN_ENDED,
        outcome=OUTCOME.TIMEOUT if _timed_out(e.error) else OUTCOME.FAILURE,
        error=_error(e.error, options),
        step=e.error.step_name,
        attempt=e.error.attempt,
        attributes={c.WORKFLOW_EXECUTION_COMPLETED_STEPS: list(e.completed_steps)},
        **_base(e),
    )


def _workflow_cancelled(e: WorkflowCancelled, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.RUN_ENDED,
        outcome=OUTCOME.CANCELLATION,
        reason=e.reason,
        attributes={c.WORKFLOW_EXECUTION_COMPLETED_STEPS: list(e.completed_steps)},
        **_base(e),
    )


def _retry_scheduled(e: RetryScheduled, _options: DecodeOptions) -> Fact:
    retry: dict[str, AttributeValue | None] = {
        c.WORKFLOW_TASK_NAME: e.step_name,
        c.WORKFLOW_TASK_ATTEMPT: e.attempt,
        c.WORKFLOW_RETRY_NEXT_ATTEMPT_AT: iso(e.next_attempt_at),
        c.WORKFLOW_RETRY_DELAY_MS: e.delay_ms,
    }
    return Fact(
        kind=KIND.RETRY_SCHEDULED,
        step=e.step_name,
        attempt=e.attempt,
        closes_attempt=OUTCOME.FAILURE,
        attributes=attrs(**retry),
        **_base(e),
    )


def _retry_exhausted(e: RetryExhausted, _options: DecodeOptions) -> Fact:
    # `attempts` counts attempts made; which attempt it closes is decided
    # by time in the fold (the last one started before it).
    return Fact(
        kind=KIND.RETRIES_EXHAUSTED,
        step=e.step_name,
        closes_attempt=OUTCOME.FAILURE,
        attributes={c.WORKFLOW_TASK_NAME: e.step_name, c.WORKFLOW_RETRY_ATTEMPTS: e.attempts},
        **_base(e),
    )


def _sleep_started(e: SleepStarted, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.SLEEP_STARTED,
        duration_ms=e.duration_ms,
        attributes=attrs(
            **{
                c.WORKFLOW_SLEEP_DURATION_MS: e.duration_ms,
                c.WORKFLOW_SLEEP_RESUME_AT: iso(e.resume_at),
            }
        ),
        **_base(e),
    )


def _sleep_completed(e: SleepCompleted, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.SLEEP_ENDED,
        duration_ms=e.duration_ms,
        attributes={c.WORKFLOW_SLEEP_DURATION_MS: e.duration_ms},
        **_base(e),
    )


def _timeout_set(e: TimeoutSet, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.TIMEOUT_SET,
        step=e.step_name,
        attributes=attrs(
            **{
                c.WORKFLOW_TASK_NAME: e.step_name,
                c.WORKFLOW_TIMEOUT_DEADLINE: iso(e.deadline),
                c.WORKFLOW_TIMEOUT_MS: e.timeout_ms,
            }
        ),
        **_base(e),
    )


def _timeout_exceeded(e: TimeoutExceeded, _options: DecodeOptions) -> Fact:
    return Fact(
        kind=KIND.TIMEOUT_EXCEEDED,
        step=e.step_name,
        closes_attempt=OUTCOME.TIMEOUT,
        attributes=attrs(**{c.WORKFLOW_TASK_NAME: e.step_name, c.WORKFLOW_TIMEOUT_MS: e.timeout_ms}),
        **_base(e),
    )


# The fact each workflow event makes, by its wire model (a job's event makes none: `_job_record`).
_FACT_OF: dict[type, Callable[[Any, DecodeOptions], Fact]] = {
    StepStarted: _step_started,
    StepCompleted: _step_completed,
    StepFailed: _step_failed,
    WorkflowStarted: _workflow_started,
    WorkflowQueued: _workflow_queued,
    WorkflowResumed: _workflow_resumed,
    WorkflowPaused: _workflow_paused,
    WorkflowCompleted: _workflow_completed,
    WorkflowFailed: _workflow_failed,
    WorkflowCancelled: _workflow_cancelled,
    RetryScheduled: _retry_scheduled,
    RetryExhausted: _retry_exhausted,
    SleepStarted: _sleep_started,
    SleepCompleted: _sleep_completed,
    TimeoutSet: _timeout_set,
    TimeoutExceeded: _timeout_exceeded,
}


_JOB_KINDS = {
    "job.started": JOB_KIND.STARTED,
    "job.executed": JOB_KIND.EXECUTED,
    "job.failed": JOB_KIND.FAILED,
    "job.retryExhausted": JOB_KIND.RETRY_EXHAUSTED,
    "job.terminated": JOB_KIND.TERMINATED,
    "debounce.started": JOB_KIND.DEBOUNCE_STARTED,
    "debounce.flushed": JOB_KIND.DEBOUNCE_FLUSHED,
    "task.scheduled": JOB_KIND.TASK_SCHEDULED,
}


# What each job event adds to the record besides what every one carries, by its wire model.
_JOB_EXTRA: dict[type, Callable[[Any], dict[str, Any]]] = {
    JobExecuted: lambda e: {"duration_ms": e.duration_ms, "count": e.run_count},
    JobFailed: lambda e: {
        "count": e.run_count,
        "attempt": e.attempt,
        "will_retry": e.will_retry,
        "reason": e.error.message,
    },
    JobRetryExhausted: lambda e: {"count": e.attempts, "reason": e.reason},
    JobTerminated: lambda e: {"count": e.run_count, "reason": e.reason},
    DebounceFlushed: lambda e: {"count": e.event_count, "reason": e.reason, "duration_ms": e.duration_ms},
    TaskScheduled: lambda e: {"trigger": e.trigger, "scheduled_at_ns": ns(e.scheduled_at)},
    DebounceStarted: lambda e: {"scheduled_at_ns": ns(e.flush_at) if e.flush_at is not None else None},
}


def _job_record(e: Any) -> JobRecord:
    extra_of = _JOB_EXTRA.get(type(e))
    extra = extra_of(e) if extra_of is not None else {}
    return JobRecord(
        event_id=e.event_id,
        time_ns=ns(e.timestamp),
        kind=_JOB_KINDS[e.type],
        engine=ENGINE,
        env=e.env,
        service=e.service_key,
        instance_id=e.instance_id,
        job_name=e.job_name,
        job_type=e.job_type,
        correlation_id=e.id or None,
        **extra,
    )


def posted_by(raw: Any, producer: str) -> None:
    """Raise DecodeError unless `raw` is an event of `producer` (its serviceKey): what a producer's own key
    may post (the HTTP endpoint's, `producer_api_keys`). Any other, or one that names none, could be a
    producer writing into another's traces."""
    given = raw.get("serviceKey") if isinstance(raw, dict) else None
    if given != producer:
        told = "names no serviceKey" if given is None else f"is {repr(given)[:200]}'s"
        raise DecodeError("serviceKey", f"this credential posts {producer}'s events only; this event {told}").of(
            raw, "eventId"
        )
