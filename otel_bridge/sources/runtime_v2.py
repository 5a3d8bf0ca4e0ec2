"""The event-sourced runtime's successor (Alga PSA's `WorkflowRuntimeV2`): its PostgreSQL rows.

The runtime keeps each run in tables it updates in place, and publishes nothing: a row of
`workflow_runs` (status RUNNING, WAITING, SUCCEEDED, FAILED or CANCELED), a row of
`workflow_run_steps` for every execution of a step (`attempt` counts executions at its path,
so a step resumed after a wait or run again by a loop counts one more, as a retry does; status
STARTED, SUCCEEDED, FAILED, RETRY_SCHEDULED or CANCELED) and a row of `workflow_run_waits` for
each wait (`wait_type` retry, time, event or human; status WAITING, RESOLVED or CANCELED). A
step that waits stays STARTED for good in the runtime's interpreter: its run resumes in a new
execution of the step (the poller tells when it began, and when the wait did); a run that
Temporal drives ends the same execution once the wait is over.

A row read again, as it was or since updated, tells the same facts under the same event ids
(made from the row's own id), so the poller may read a row any number of times.

Since June 2026 the runtime's Temporal workflow runs every run (`engine` temporal) and projects it into
the same tables: the run's row written as it is launched (queued until its first step: one no worker
takes stays so), a failed step marking its run FAILED before a catch block may go on (only
`completed_at` ends a run), a failed action called again within its step's execution in the same
row, a tenant past its step quota parked on a `quota` wait.

An operator of the runtime's interpreter before it (`engine` db) may retry a failed run
(`retryWorkflowRunAction`): its row goes back to RUNNING and its failed step runs again. The failed
run's trace was sent, so each retry is a trace of its own (`<run_id>/retry-<n>`, its root linked to
the one before): every row is read with how many retries were asked for before it (`retries`,
counted in `workflow_run_logs`), which names the trace it belongs to. A run's log lines
(`workflow_run_logs`, at the levels asked for) are span events, each named by its message.

A workflow's schedule (`tenant_workflow_schedule`, in the runtime's enterprise edition) is a job: its
row, written at each occurrence, tells that occurrence (a run launched, a launch that failed, one let
pass) and the next one awaited, which a job runner that lost the schedule never writes. An event the
runtime took in (`workflow_runtime_events`) is a job's run, read with the workflows it did not launch for
it (`workflow_event_launch_skips`), which say whether it was delivered.
"""

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from msgspec.structs import replace
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from otel_bridge import conventions as c
from otel_bridge.lifecycle import (
    JOB_KIND,
    KIND,
    OUTCOME,
    AttributeValue,
    ErrorInfo,
    Fact,
    FactKind,
    JobRecord,
    LifecycleRecord,
    RunRef,
    WorkflowRecord,
)
from otel_bridge.sources.wire import (
    MAX_TEXT,
    Attempts,
    DecodeError,
    DecodeOptions,
    Identity,
    IsoTime,
    Label,
    Text,
    attrs,
    cut,
    iso,
    json_kind,
    ns,
    reason,
    summary,
)
from otel_bridge.tokens import MAX_IDENTITY

ENGINE = c.PLATFORM_RUNTIME_V2
_RUN_ENDINGS = {"SUCCEEDED": OUTCOME.SUCCESS, "FAILED": OUTCOME.FAILURE, "CANCELED": OUTCOME.CANCELLATION}
_STEP_ENDINGS = {
    "SUCCEEDED": OUTCOME.SUCCESS,
    "FAILED": OUTCOME.FAILURE,
    "RETRY_SCHEDULED": OUTCOME.FAILURE,
    "CANCELED": OUTCOME.CANCELLATION,
}
_ABANDONED = "its execution stopped without an end (a worker that stopped): the step was run again"


def _json_column(value: Any) -> Any:
    # A json(b) column exported as text (psql's CSV, a text column in an older schema): the same JSON, quoted.
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


class _TableRow(BaseModel):
    """A row of one of the runtime's tables, as `to_jsonb` writes it: the columns the bridge reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class _Row(_TableRow):
    run_id: Identity
    # Joined: how many retries of the failed run its operator asked for before the row was written.
    retries: Attempts = 0


class RunRow(_Row):
    """A row of `workflow_runs`, with its workflow's name (`workflow_definitions.name`) when joined."""

    workflow_id: Identity
    workflow_name: Text = ""
    workflow_version: int | None = None
    status: Label
    tenant_id: Label | None = None
    tenant: Label | None = None
    trigger_type: Label | None = None
    event_type: Label | None = None
    input_json: Any = None
    error_json: Any = None
    started_at: IsoTime
    completed_at: IsoTime | None = None
    updated_at: IsoTime | None = None
    # The run that called this one (a child workflow, in the runtime's newer schema), and the run its family began
    # with (the parent's root, or the parent).
    parent_run_id: Identity | None = None
    root_run_id: Identity | None = None
    # Temporal's ids of the run, once the runtime launched it there (not a child run's).
    temporal_workflow_id: Text | None = None
    temporal_run_id: Text | None = None
    # Joined: when its operator asked for its latest retry; why they cancelled it; the schedule whose occurrence
    # launched it, and the time that occurrence was for.
    retried_at: IsoTime | None = None
    cancel_reason: Text | None = None
    schedule_id: Text | None = None
    schedule_name: Text | None = None
    scheduled_for: Text | None = None

    json_columns = field_validator("input_json", "error_json", mode="before")(_json_column)


class StepRow(_Row):
    """A row of `workflow_run_steps`: one execution of the step at `step_path`."""

    step_id: Identity
    step_path: Identity
    definition_step_id: Text = ""
    status: Label
    attempt: Attempts = 1
    duration_ms: int | None = None
    error_json: Any = None
    started_at: IsoTime
    completed_at: IsoTime | None = None
    # Joined, for an execution left STARTED: when the step's next execution began, and the wait between.
    next_started_at: IsoTime | None = None
    waited_at: IsoTime | None = None

    json_columns = field_validator("error_json", mode="before")(_json_column)


class WaitRow(_Row):
    """A row of `workflow_run_waits`, with the execution it parked (`attempt`, `definition_step_id`) when joined."""

    wait_id: Identity
    step_path: Identity
    wait_type: Label
    status: Label = "WAITING"
    key: Text | None = None
    event_name: Text | None = None
    timeout_at: IsoTime | None = None
    created_at: IsoTime
    resolved_at: IsoTime | None = None
    attempt: Attempts | None = None
    definition_step_id: Text = ""
    # A human task's kind (its payload's `taskType`), when joined; a quota wait's steps used of its limit.
    task_type: Text | None = None
    quota_used: Text | None = None
    quota_limit: Text | None = None


class ActionRow(_Row):
    """A row of `workflow_action_invocations`: an action a step called, with its step's execution (`attempt`)
    when joined."""

    invocation_id: Identity
    step_path: Identity
    action_id: Text
    action_version: int | None = None
    status: Label
    error_message: Text | None = None
    error_json: Any = None
    started_at: IsoTime | None = None
    completed_at: IsoTime | None = None
    attempt: Attempts | None = None
    # Which call of the action this row holds: a failed call retried is called again in the same row.
    invocation_attempt: Attempts = 1

    json_columns = field_validator("error_json", mode="before")(_json_column)


class LogRow(_Row):
    """A line of `workflow_run_logs`, with the execution of its step it was written in (`attempt`) and, for a
    retry its operator asked for, its run's row, when the run retried did its last (`ended_at`) and the error
    its failed step ended with (`failed_error`), when joined."""

    log_id: Identity
    step_id: Identity | None = None
    step_path: Text | None = None
    level: Label
    message: Text
    context_json: Any = None
    correlation_key: Text | None = None
    event_name: Text | None = None
    source: Label | None = None
    created_at: IsoTime
    attempt: Attempts | None = None
    ended_at: IsoTime | None = None
    run: RunRow | None = None
    failed_error: Any = None

    json_columns = field_validator("context_json", "failed_error", mode="before")(_json_column)


class ScheduleRow(_TableRow):
    """A row of `tenant_workflow_schedule`: a workflow's schedule (cron, or once at a time), as the runtime's
    scheduled-run handler last wrote it at an occurrence, with its workflow's name when joined."""

    id: Identity
    workflow_id: Identity
    workflow_name: Text = ""
    name: Text = ""
    trigger_type: Label
    enabled: bool = True
    status: Label = "scheduled"
    next_fire_at: IsoTime | None = None
    last_fire_at: IsoTime | None = None
    last_run_status: Label | None = None
    last_error: Text | None = None
    last_fire_key: Text | None = None
    updated_at: IsoTime


class LaunchSkipRow(_TableRow):
    """A row of `workflow_event_launch_skips` (the runtime's since October 2026), read with its event's: a
    workflow that starts on the event was not launched for it, and why (`reason`, `message`) — `intentional`
    as the runtime marks it (paused, its trigger loops' guards: meant, never alarming)."""

    workflow_id: Identity
    workflow_name: Text = ""
    reason: Label
    intentional: bool
    message: Text = ""


class RuntimeEventRow(_TableRow):
    """A row of `workflow_runtime_events`: an event the runtime's event worker took in (or its API was given), and
    what came of it — the run it started or resumed (`matched_run_id`), or why it failed (`error_message`) —,
    with the workflows it did not launch (`launch_skips`; None where the runtime writes none, or the bridge may
    not read them)."""

    event_id: Identity
    event_name: Identity
    tenant: Label | None = None
    tenant_id: Label | None = None
    correlation_key: Text | None = None
    created_at: IsoTime
    matched_run_id: Identity | None = None
    matched_step_path: Text | None = None
    error_message: Text | None = None
    launch_skips: tuple[LaunchSkipRow, ...] | None = None


# The job type of the events the runtime took in: each a job's run, its outcome the run's result.
EVENT_JOB_TYPE = "event"
# How the runtime's event worker begins the error it writes of an event it found no correlation key for.
NO_CORRELATION_KEY = "Missing workflow correlation key"
# How it begins the error of a run whose wait it could not resume (Temporal out of reach): no launch skip tells it.
SIGNAL_FAILED = "Failed to signal Temporal "


# The line the runtime writes as its operator asks for a failed run to be retried (`retryWorkflowRunAction`).
RETRY_REQUESTED = "Run retry requested"
# The line it writes as its operator puts a resolved event wait back to waiting (`requeueWorkflowRunEventWaitAction`).
REQUEUED = "Event wait requeued by operator"
# Lines read whatever the level asked for: what the rows alone do not tell of the run.
ALWAYS_READ = (RETRY_REQUESTED, REQUEUED)
# A run's log levels, least first: lines at the level asked for and above are read.
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR")
# The line a run its operator replayed from another run's input starts with, naming that run (`sourceRunId`).
REPLAYED = "Run replayed from previous run"
# The line its cancel action writes, with the operator's reason, just after the run's row says CANCELED.
CANCELED_BY_OPERATOR = "Run canceled by operator"
# What its operators did, as its admin actions log it (at INFO, with the reason they gave): read from WARN up.
OPERATOR_LINES = (
    CANCELED_BY_OPERATOR,
    "Run resumed by operator",
    REPLAYED,
    "Run replay created",
    *ALWAYS_READ,
)
# A span event's name is the line's message, cut to this.
_MESSAGE_CHARS = 200


def levels_from(level: str) -> tuple[str, ...]:
    """The log levels read when asked for `level` and above (`none`: no line but those `ALWAYS_READ`)."""
    wanted = level.upper()
    return () if wanted == "NONE" else LOG_LEVELS[LOG_LEVELS.index(wanted) :]


def log_is_read(row_level: str, message: str, levels: tuple[str, ...]) -> bool:
    """Whether a log line is told: at a level asked for, an operator's (from INFO when WARN is), or one
    `ALWAYS_READ`."""
    level = row_level.upper()
    if level in levels or message in ALWAYS_READ:
        return True
    return level == "INFO" and "WARN" in levels and message in OPERATOR_LINES


@dataclass(frozen=True)
class RuntimeV2Options:
    """What the rows do not say: whose service and environment the runs are."""

    service: str = "workflow-runtime-v2"
    env: str = "production"
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    # The run's log lines told, by level (`levels_from`): warnings and errors, and what operators did.
    log_levels: tuple[str, ...] = ("WARN", "ERROR")


def _not_launched(skip: LaunchSkipRow) -> str:
    """A workflow not launched for an event, in the runtime's own words: which, and why."""
    named = f"{skip.workflow_name} ({skip.workflow_id})" if skip.workflow_name else skip.workflow_id
    return f"workflow {named} not launched ({skip.reason}): {skip.message}"


def table_of(raw: Any) -> str:
    """Which of the runtime's tables a row is from, by the columns only that table has."""
    if not isinstance(raw, dict):
        raise DecodeError("", f"a row must be a JSON object, not {json_kind(raw)}")
    if "next_fire_at" in raw:
        return "tenant_workflow_schedule"
    if "event_id" in raw and "event_name" in raw and "run_id" not in raw:
        return "workflow_runtime_events"
    if "wait_id" in raw:
        return "workflow_run_waits"
    if "invocation_id" in raw:
        return "workflow_action_invocations"
    if "log_id" in raw:
        return "workflow_run_logs"
    if "step_id" in raw and "attempt" in raw:
        return "workflow_run_steps"
    if "workflow_id" in raw and "status" in raw:
        return "workflow_runs"
    raise DecodeError(
        "",
        "not a row of workflow_runs (workflow_id, status), workflow_run_steps (step_id, attempt), "
        "workflow_run_waits (wait_id), workflow_action_invocations (invocation_id), workflow_run_logs (log_id), "
        "tenant_workflow_schedule (next_fire_at) or workflow_runtime_events (event_id, event_name)",
    )


class RuntimeV2Decoder:
    """A row of one of the runtime's tables -> the facts it tells (raises DecodeError)."""

    def __init__(self, options: RuntimeV2Options | None = None) -> None:
        self.options = options or RuntimeV2Options()
        # Each table's row model, what its rows tell, and the column that names a row it cannot read.
        self._tables: dict[str, tuple[type[_TableRow], Callable[[Any], Sequence[LifecycleRecord]], str]] = {
            "workflow_runs": (RunRow, self._run, "run_id"),
            "workflow_run_steps": (StepRow, self._step, "run_id"),
            "workflow_run_waits": (WaitRow, self._wait, "run_id"),
            "workflow_action_invocations": (ActionRow, self._action, "run_id"),
            "workflow_run_logs": (LogRow, self._log, "run_id"),
            "tenant_workflow_schedule": (ScheduleRow, self._schedule, "id"),
            "workflow_runtime_events": (RuntimeEventRow, self._event, "event_id"),
        }
        # A log line's context is the runtime's own, redacted by it for its run's page: shown as JSON.
        self._context = self.options.decode.model_copy(update={"capture_input": True})

    def __call__(self, raw: Any) -> Sequence[LifecycleRecord]:
        table = table_of(raw)
        model, told, key = self._tables[table]
        try:
            row = model.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"])
            raise DecodeError(where, f"{reason(error)} (a row of {table})").of(raw, key) from None
        return told(row)

    def state_key(self, run_id: str) -> str:
        return self._ref(run_id).state_key

    def _ref(
        self, run_id: str, retries: int = 0, name: str = "", attributes: dict[str, AttributeValue] | None = None
    ) -> RunRef:
        # The run's id alone names it (a UUID): its tenant is shown, not part of its identity, since the
        # steps' and waits' rows of older schemas do not carry it. A retry its operator asked for is a trace
        # of its own, which shows the runtime's id all the same.
        shown = attributes or {}
        if retries:
            shown = shown | {c.WORKFLOW_EXECUTION_ID: run_id, c.WORKFLOW_EXECUTION_RETRY: retries}
        return RunRef(
            engine=ENGINE,
            env=self.options.env,
            service=self.options.service,
            run_id=life_of(run_id, retries),
            name=name,
            attributes=shown,
        )

    def _life(self, row: RunRow, retries: int) -> "_Told":
        """The run of this row, or its `retries`-th retry: its facts told under the ids its row tells them by."""
        version = str(row.workflow_version) if row.workflow_version is not None else None
        run = self._ref(
            row.run_id,
            retries,
            cut(row.workflow_name, MAX_TEXT) or row.workflow_id,
            attrs(
                **{
                    c.WORKFLOW_DEFINITION_ID: row.workflow_id,
                    c.WORKFLOW_DEFINITION_VERSION: version,
                    c.TENANT_ID: row.tenant_id or row.tenant,
                    c.WORKFLOW_EXECUTION_PARENT_ID: row.parent_run_id,
                    c.WORKFLOW_EXECUTION_ROOT_ID: (row.root_run_id or row.parent_run_id) if row.parent_run_id else None,
                    c.TEMPORAL_WORKFLOW_ID: row.temporal_workflow_id,
                    c.TEMPORAL_RUN_ID: row.temporal_run_id,
                    c.WORKFLOW_SCHEDULE_ID: row.schedule_id,
                    c.WORKFLOW_SCHEDULE_NAME: row.schedule_name,
                    c.WORKFLOW_SCHEDULE_OCCURRENCE: row.scheduled_for,
                }
            ),
        )
        return _Told("run", row.run_id, run, life=retries)

    def _started(self, told: "_Told", row: RunRow, retries: int, at: datetime) -> None:
        # The row is written as the run is launched, RUNNING, before any worker takes it: it is queued until
        # its first step begins. One no worker takes (none running, or none on its task queue) stays so, and is
        # overdue once the grace has passed, as the runtime's own page warns of a run RUNNING with no step.
        # A retry starts as its operator asked for it, and follows the run it retries; a child follows its parent.
        links = [life_of(row.run_id, retries - 1)] if retries else []
        links += [row.parent_run_id] if row.parent_run_id else []
        started = attrs(
            **{
                c.WORKFLOW_EVENT_TYPE: row.event_type,
                c.WORKFLOW_TRIGGER_TYPE: row.trigger_type,
                c.WORKFLOW_EXECUTION_INPUT: summary(row.input_json, self.options.decode)
                if isinstance(row.input_json, dict) and self.options.decode.capture_input
                else None,
            }
        )
        told(KIND.RUN_QUEUED, at, "queued", name="run.queued", attributes=started, links=tuple(links))

    def _run(self, row: RunRow) -> list[WorkflowRecord]:
        told = self._life(row, row.retries)
        self._started(told, row, row.retries, (row.retried_at or row.started_at) if row.retries else row.started_at)
        # A run ends as the runtime writes `completed_at`, in every mode. Its Temporal workflow marks the run
        # FAILED (CANCELED) as a step fails (is cancelled), a moment before that and without it, and a catch
        # block that takes the failure runs on: RUNNING again at its first step. Not by `engine`: a child run
        # has none (only a run launched from the runtime's API is told `temporal`, after it was started).
        if row.status.upper() in _RUN_ENDINGS and row.completed_at is not None:
            self._ended(told, row.status, row.completed_at, row.error_json, row.cancel_reason)
        return told.records

    def _ended(self, told: "_Told", status: str, at: datetime, error_json: Any, cancel_reason: str | None) -> None:
        """The run's end, as its row says it (`status`), or as a retry of it tells it once its row no longer does."""
        ending = _RUN_ENDINGS[status.upper()]
        failed = ending is OUTCOME.FAILURE
        error = self._error(error_json)
        if ending is OUTCOME.CANCELLATION and not cancel_reason and error is not None:
            # Cancelled by no operator's hand: its row says why (Temporal's cancellation, or the migration that
            # ended the runs the interpreter before it stranded, "temporal-only cutover").
            cancel_reason = error.message
        told(
            KIND.RUN_ENDED,
            at,
            "ended",
            name=f"run.{status.lower()}",
            outcome=ending,
            error=(error or ErrorInfo(message="run failed")) if failed else None,
            reason=(cancel_reason or "canceled") if ending is OUTCOME.CANCELLATION else None,
        )

    def _step(self, row: StepRow) -> list[WorkflowRecord]:
        told = _Told("step", row.step_id, self._ref(row.run_id, row.retries))
        step: dict[str, Any] = {"step": row.step_path, "attempt": row.attempt, "label": row.definition_step_id or None}
        # In a retry's trace, the execution before this one may have run in the trace before: its link goes there.
        followed = (life_of(row.run_id, row.retries - 1),) if row.retries and row.attempt > 1 else ()
        told(KIND.ATTEMPT_STARTED, row.started_at, "started", name="step.started", links=followed, **step)
        outcome = _STEP_ENDINGS.get(row.status.upper())
        if outcome is None and row.next_started_at is not None:
            # Left STARTED and run again: it ended as its wait began (the run resumes in the next), or,
            # with no wait, it was abandoned (a worker that stopped) and is failed as the next one begins.
            told(
                KIND.ATTEMPT_ENDED,
                row.waited_at or row.next_started_at,
                "closed",
                name="step.waiting" if row.waited_at else "step.abandoned",
                outcome=OUTCOME.SUCCESS if row.waited_at else OUTCOME.FAILURE,
                error=None if row.waited_at else ErrorInfo(message=_ABANDONED),
                **step,
            )
        if outcome is not None:
            ended_at = row.completed_at
            if ended_at is None:
                ended_at = row.started_at + timedelta(milliseconds=row.duration_ms or 0)
            error = self._error(row.error_json)
            told(
                KIND.ATTEMPT_ENDED,
                ended_at,
                "ended",
                name=f"step.{row.status.lower()}",
                outcome=outcome,
                error=(error or ErrorInfo(message="step failed")) if outcome is OUTCOME.FAILURE else None,
                duration_ms=float(row.duration_ms) if row.duration_ms is not None else None,
                **step,
            )
            if outcome is OUTCOME.SUCCESS and error is not None:
                # `onError: continue`: the step failed and the run went on as if it had not.
                told(
                    KIND.ANNOTATION,
                    ended_at,
                    "continued",
                    name="step.error_continued",
                    attributes=attrs(**{c.EXCEPTION_MESSAGE: error.message, c.EXCEPTION_TYPE: error.type}),
                    **step,
                )
        return told.records

    def _wait(self, row: WaitRow) -> list[WorkflowRecord]:
        told = _Told("wait", row.wait_id, self._ref(row.run_id, row.retries))
        kind = row.wait_type.lower()
        status = row.status.upper()
        resume_at = ns(row.timeout_at) if row.timeout_at is not None else None
        step: dict[str, Any] = {"step": row.step_path, "attempt": row.attempt, "label": row.definition_step_id or None}
        if kind == "retry":
            delay = _ms(row.timeout_at - row.created_at) if row.timeout_at is not None else None
            told(
                KIND.RETRY_SCHEDULED,
                row.created_at,
                "created",
                name="retry.scheduled",
                closes_attempt=OUTCOME.FAILURE,
                resume_at_ns=resume_at,
                attributes=attrs(
                    **{c.WORKFLOW_RETRY_DELAY_MS: delay, c.WORKFLOW_RETRY_NEXT_ATTEMPT_AT: iso(row.timeout_at)}
                ),
                **step,
            )
            return told.records
        if kind == "time":
            # Asleep: paused until its time (past it, overdue: the worker's tick that wakes it lost).
            until = iso(row.timeout_at)
            told(
                KIND.RUN_PAUSED,
                row.created_at,
                "paused",
                name="time.wait.created",
                reason=f"sleeping until {until}" if until else "sleeping",
                resume_at_ns=resume_at,
                attributes=attrs(**{c.WORKFLOW_PAUSE_REASON: "sleep", c.WORKFLOW_PAUSE_RESUME_AT: until}),
            )
            told(
                KIND.SLEEP_STARTED,
                row.created_at,
                "created",
                name="sleep.started",
                step=row.step_path,
                resume_at_ns=resume_at,
                attributes=attrs(**{c.WORKFLOW_SLEEP_RESUME_AT: until}),
            )
            if status != "WAITING" and row.resolved_at is not None:
                told(KIND.SLEEP_ENDED, row.resolved_at, "resolved", name="sleep.completed", step=row.step_path)
                if status != "CANCELED":
                    told(KIND.RUN_RESUMED, row.resolved_at, "resumed", name="time.wait.resolved")
            return told.records
        if kind == "quota":
            # Its tenant used the steps its plan allows this period: paused until the period ends, or an operator
            # resumes it.
            used = f" ({row.quota_used} of {row.quota_limit})" if row.quota_limit is not None else ""
            said = f"step quota exceeded{used}"
        else:
            said = f"waiting for {row.event_name or kind}" + (f" ({row.key})" if row.key else "")
        told(
            KIND.RUN_PAUSED,
            row.created_at,
            "created",
            name=_WAIT_CREATED.get(kind, "event.wait.created"),
            reason=cut(said, MAX_TEXT),
            resume_at_ns=resume_at,
            attributes=attrs(
                **{
                    c.WORKFLOW_PAUSE_REASON: cut(said, MAX_TEXT),
                    c.WORKFLOW_EVENT_NAME: row.event_name,
                    c.WORKFLOW_EXECUTION_CORRELATION_ID: row.key,
                    c.WORKFLOW_TIMEOUT_DEADLINE: iso(row.timeout_at),
                }
            ),
        )
        if kind == "human":
            # The person's task, as the event-sourced runtime's tasks are: a span from its creation to its answer.
            task = {"step": row.key or row.wait_id, "label": row.task_type or None}
            told(KIND.TASK_OPENED, row.created_at, "task-opened", name="human.task.opened", **task)
            if status == "RESOLVED" and row.resolved_at is not None:
                told(KIND.TASK_CLOSED, row.resolved_at, "task-closed", name="human.task.completed", **task)
        if status == "CANCELED" or row.resolved_at is None or status == "WAITING":
            return told.records  # a run canceled while it waited: its end tells it
        timed_out = (row.timeout_at is not None and row.resolved_at >= row.timeout_at) or "TIMEOUT" in status
        # An event wait its operator requeued is resolved again later: each resolution a fact of its own.
        again = f"@{iso(row.resolved_at)}" if kind == "event" else ""
        if timed_out:
            told(KIND.TIMEOUT_EXCEEDED, row.resolved_at, "timeout" + again, name="wait.timed_out", **step)
        told(
            KIND.RUN_RESUMED, row.resolved_at, "resolved" + again, name=_WAIT_RESOLVED.get(kind, "event.wait.resolved")
        )
        return told.records

    def _action(self, row: ActionRow) -> list[WorkflowRecord]:
        """An action the step called, once it ended: an event on the execution that called it. A failed call its
        step retries is called again in the same row (the runtime's Temporal workflow retries within the step's
        execution): each call's end is an event of its own, those read."""
        told = _Told("action", row.invocation_id, self._ref(row.run_id, row.retries))
        if row.completed_at is None or row.status.upper() not in ("SUCCEEDED", "FAILED"):
            return told.records
        took = _ms(row.completed_at - row.started_at) if row.started_at is not None else None
        failed = row.status.upper() == "FAILED"
        call = row.invocation_attempt
        # The first call under the ids it always had; each call after it under its own.
        again = f":{call}" if call > 1 else ""
        error = self._error(row.error_json) if failed else None
        told(
            KIND.ANNOTATION,
            row.completed_at,
            "ended" + again,
            name=f"action.{row.status.lower()}",
            step=row.step_path,
            attempt=row.attempt,
            # Two calls in one execution are two events (a note is known by its ordinal).
            ordinal=zlib.crc32((row.invocation_id + again).encode()),
            attributes=attrs(
                **{
                    c.WORKFLOW_ACTION_ID: row.action_id,
                    c.WORKFLOW_ACTION_VERSION: row.action_version,
                    c.WORKFLOW_ACTION_ATTEMPT: call if again else None,
                    c.WORKFLOW_ACTION_DURATION_MS: took,
                    c.EXCEPTION_MESSAGE: cut(row.error_message or "action failed", self.options.decode.max_text_chars)
                    if failed
                    else None,
                    c.EXCEPTION_TYPE: error.type if error is not None else None,
                }
            ),
        )
        return told.records

    def _log(self, row: LogRow) -> list[WorkflowRecord]:
        """A line of the run's log: an event of the execution it was written in, or of the run. A retry its
        operator asked for also starts the retry, and ends the run it retries (as failed, when it did its
        last) — its row, which the retry overwrote, may never have been read failed — under the ids the
        run's row tells them by."""
        told = _Told("log", row.log_id, self._ref(row.run_id, row.retries))
        if not log_is_read(row.level, row.message, self.options.log_levels):
            return told.records
        if row.message == RETRY_REQUESTED and row.retries and row.run is not None:
            # The run's row, which the retry overwrote, tells the failed run as its failed step does.
            retried = self._life(row.run, row.retries - 1)
            if row.retries == 1:
                self._started(retried, row.run, 0, row.run.started_at)
            self._ended(retried, "FAILED", row.ended_at or row.created_at, row.failed_error, None)
            retry = self._life(row.run, row.retries)
            self._started(retry, row.run, row.retries, row.created_at)
            told.records[:0] = retried.records + retry.records
        if row.message == REQUEUED:
            # Waiting again: the wait's row, back to WAITING, tells nothing new until its event comes again.
            said = "waiting again for its event (requeued by its operator)"
            told(KIND.RUN_PAUSED, row.created_at, "paused", name="event.wait.requeued", reason=said)
        told(
            KIND.ANNOTATION,
            row.created_at,
            "logged",
            name=cut(row.message, _MESSAGE_CHARS) or row.level.lower(),
            # Not joined to its execution (an export without it): the latest at its path by then.
            step=row.step_path,
            attempt=row.attempt,
            attributes=attrs(
                **{
                    c.WORKFLOW_LOG_LEVEL: row.level.upper(),
                    c.WORKFLOW_LOG_SOURCE: row.source,
                    c.WORKFLOW_LOG_CONTEXT: summary(row.context_json, self._context) if row.context_json else None,
                    c.WORKFLOW_EVENT_NAME: row.event_name,
                    c.WORKFLOW_EXECUTION_CORRELATION_ID: row.correlation_key,
                }
            ),
            links=self._replayed_from(row),
        )
        return told.records

    def _schedule(self, row: ScheduleRow) -> list[JobRecord]:
        """A schedule's row: its last occurrence (fired, failed to launch its run, or let pass), and the next
        it awaits, or, disabled, paused or done, none. A job instance of its own, named by the schedule (or
        its workflow), of the type its trigger is."""
        job = self._job(
            event_id=f"v2:schedule:{row.id}:",
            time_ns=ns(row.updated_at),
            kind=JOB_KIND.TASK_SCHEDULED,
            instance_id=row.id,
            job_name=cut(row.name or row.workflow_name, MAX_TEXT) or row.workflow_id,
            job_type=row.trigger_type,
        )
        out: list[JobRecord] = []
        if row.last_fire_at is not None and (kind := _OCCURRENCES.get(row.last_run_status or "")) is not None:
            # The occurrence's key (the job runner's execution of it) names it: a retried one's end is told too.
            occurrence = row.last_fire_key or iso(row.last_fire_at)
            failed = kind is JOB_KIND.FAILED
            out.append(
                replace(
                    job,
                    event_id=f"{job.event_id}{occurrence}:{row.last_run_status}",
                    time_ns=ns(row.last_fire_at),
                    kind=kind,
                    reason=cut(row.last_error, self.options.decode.max_text_chars)
                    if failed and row.last_error
                    else None,
                    attempt=1 if failed else None,
                )
            )
        if row.enabled and row.status == "scheduled":
            if row.next_fire_at is not None:
                at = ns(row.next_fire_at)
                out.append(
                    replace(job, event_id=f"{job.event_id}next:{at}", scheduled_at_ns=at, trigger=row.trigger_type)
                )
        else:  # awaited no more, until enabled again with an occurrence of its own
            out.append(replace(job, event_id=f"{job.event_id}{row.status}:{job.time_ns}", kind=JOB_KIND.TERMINATED))
        return out

    def _event(self, row: RuntimeEventRow) -> list[JobRecord]:
        """An event the runtime took in: a run of the job named by the event's name (an instance per name and
        tenant, `<name>@<tenant>`: each tenant has workflows of its own, and one tenant's event delivered hid
        another's not delivered from `jobs --failing`), a failure with why (as the runtime's own event list
        has it, an error wins: a run signalled, another not), a success when it started or resumed a run,
        skipped when no run took it — with no correlation key too, which the runtime writes as an error:
        most events no workflow waits for nor starts on have none, and a wait it left waiting shows as its
        run paused (overdue past the wait's timeout).
        With the workflows it did not launch (`launch_skips`), those the runtime did not mean to skip fail it,
        whether another workflow launched or not (the runtime writes no error then), and those it meant (a
        workflow paused, a trigger loop guarded) do not (it writes a loop guard's as an error when nothing
        launched)."""
        error = row.error_message or ""
        if row.launch_skips:
            # A launch that failed is a skip too: of the error, only a wait not resumed is told by nothing else.
            told = [line for line in error.splitlines() if line.startswith(SIGNAL_FAILED)]
            told += [_not_launched(skip) for skip in row.launch_skips if not skip.intentional]
            error = "\n".join(told)
            failed = bool(told)
        else:  # no skip written (older runtimes, or events taken before their table): its error alone says
            failed = bool(error) and not error.startswith(NO_CORRELATION_KEY)
        kind = JOB_KIND.FAILED if failed else JOB_KIND.EXECUTED if row.matched_run_id else JOB_KIND.SKIPPED
        return [
            self._job(
                event_id=f"v2:event:{row.event_id}",
                time_ns=ns(row.created_at),
                kind=kind,
                instance_id=f"{row.event_name}@{tenant}" if (tenant := row.tenant or row.tenant_id) else row.event_name,
                job_name=row.event_name,
                job_type=EVENT_JOB_TYPE,
                attempt=1 if failed else None,
                reason=cut(error, self.options.decode.max_text_chars) if failed else None,
            )
        ]

    def _job(self, **told: Any) -> JobRecord:
        """A record of a job of the runtime's (a schedule's, an event name's), of these options' service."""
        return JobRecord(engine=ENGINE, env=self.options.env, service=self.options.service, **told)

    @staticmethod
    def _replayed_from(row: LogRow) -> tuple[str, ...]:
        """A run its operator started again from another's input (`replayWorkflowRunAction`) follows it."""
        source = row.context_json.get("sourceRunId") if isinstance(row.context_json, dict) else None
        if row.message != REPLAYED or not isinstance(source, str) or not 0 < len(source) <= MAX_IDENTITY:
            return ()
        return (source,)

    def _error(self, value: Any) -> ErrorInfo | None:
        if not isinstance(value, dict) or not value:
            return None
        limit = self.options.decode.max_text_chars
        message = value.get("message")
        # A launch that failed says so by its stage (its input failed validation, Temporal was out of reach).
        kind = value.get("category") or value.get("name") or value.get("code") or value.get("stage")
        step = value.get("nodePath")
        return ErrorInfo(
            message=cut(str(message) if message not in (None, "") else "step failed", limit),
            type=cut(str(kind), limit) if kind else None,
            stacktrace=cut(str(value["stack"]), limit) if value.get("stack") else None,
            step=cut(str(step), limit) if step else None,
        )


# What a schedule's occurrence was, by the status its handler wrote of it (`last_run_status`).
_OCCURRENCES = {"success": JOB_KIND.EXECUTED, "error": JOB_KIND.FAILED, "skipped": JOB_KIND.SKIPPED}

# What a wait's start and end are named by its type (`event` and any other: event.wait.*).
_WAIT_CREATED = {"human": "human.task.created", "quota": "quota.wait.created"}
_WAIT_RESOLVED = {"quota": "quota.wait.resolved"}

# Facts of one instant are in the order of their ids (`Fact.order`), and the rows' ids are random: their
# table's rank first puts a run's start before its step's, and a step's start before the wait it publishes
# (the runtime writes them in that order, often within a millisecond).
_RANKS = {"run": "0", "step": "1", "wait": "2", "action": "3", "log": "4"}


def _ms(span: timedelta) -> float:
    # To the microsecond the runtime's times carry: a float of milliseconds read 61.178000000000004 otherwise.
    return round(span.total_seconds() * 1000, 3)


def life_of(run_id: str, retries: int) -> str:
    """The bridge's id of a run (its trace), or of the `retries`-th retry of it its operator asked for."""
    return f"{run_id}{_RETRY_MARK}{retries}" if retries else run_id


def is_a_retry(life: str) -> bool:
    """Whether `life` (a `life_of`) names a retry of a failed run, not the run itself."""
    _run_id, mark, retries = life.rpartition(_RETRY_MARK)
    return bool(mark) and retries.isdecimal() and int(retries) > 0


_RETRY_MARK = "/retry-"


class _Told:
    """The facts of one row about `run`, each under an event id made from the row's table and id, and what
    the fact is: the same at every read of the row. A run's own facts are told apart by its retry (`life`)."""

    def __init__(self, table: str, row_id: str, run: RunRef, life: int = 0) -> None:
        self.prefix = f"v2:{_RANKS[table]}{table}:{row_id}:"
        self.suffix = f":{life}" if life else ""
        self.run = run
        self.records: list[WorkflowRecord] = []

    def __call__(self, kind: FactKind, at: datetime, what: str, **fields: Any) -> None:
        event_id = self.prefix + what + self.suffix
        attributes = {c.WORKFLOW_EVENT_ID: event_id, **fields.pop("attributes", {})}
        fact = Fact(event_id=event_id, time_ns=ns(at), kind=kind, attributes=attributes, **fields)
        self.records.append(WorkflowRecord(run=self.run, fact=fact))
