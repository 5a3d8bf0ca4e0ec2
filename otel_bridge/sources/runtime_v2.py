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
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from otel_bridge import conventions as c
from otel_bridge.lifecycle import KIND, OUTCOME, AttributeValue, ErrorInfo, Fact, FactKind, RunRef, WorkflowRecord
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


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: Identity


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
    # A human task's kind (its payload's `taskType`), when joined.
    task_type: Text | None = None


class ActionRow(_Row):
    """A row of `workflow_action_invocations`: an action a step called, with its step's execution (`attempt`)
    when joined."""

    invocation_id: Identity
    step_path: Identity
    action_id: Text
    action_version: int | None = None
    status: Label
    error_message: Text | None = None
    started_at: IsoTime | None = None
    completed_at: IsoTime | None = None
    attempt: Attempts | None = None


@dataclass(frozen=True)
class RuntimeV2Options:
    """What the rows do not say: whose service and environment the runs are."""

    service: str = "workflow-runtime-v2"
    env: str = "production"
    decode: DecodeOptions = field(default_factory=DecodeOptions)


def table_of(raw: Any) -> str:
    """Which of the runtime's tables a row is from, by the columns only that table has."""
    if not isinstance(raw, dict):
        raise DecodeError("", f"a row must be a JSON object, not {json_kind(raw)}")
    if "wait_id" in raw:
        return "workflow_run_waits"
    if "invocation_id" in raw:
        return "workflow_action_invocations"
    if "step_id" in raw and "attempt" in raw:
        return "workflow_run_steps"
    if "workflow_id" in raw and "status" in raw:
        return "workflow_runs"
    raise DecodeError(
        "",
        "not a row of workflow_runs (workflow_id, status), workflow_run_steps (step_id, attempt), "
        "workflow_run_waits (wait_id) or workflow_action_invocations (invocation_id)",
    )


class RuntimeV2Decoder:
    """A row of one of the runtime's tables -> the facts it tells (raises DecodeError)."""

    def __init__(self, options: RuntimeV2Options | None = None) -> None:
        self.options = options or RuntimeV2Options()
        # Each table's row model, and what its rows tell.
        self._tables: dict[str, tuple[type[_Row], Callable[[Any], tuple[RunRef, list[Fact]]]]] = {
            "workflow_runs": (RunRow, self._run),
            "workflow_run_steps": (StepRow, self._step),
            "workflow_run_waits": (WaitRow, self._wait),
            "workflow_action_invocations": (ActionRow, self._action),
        }

    def __call__(self, raw: Any) -> list[WorkflowRecord]:
        table = table_of(raw)
        model, told = self._tables[table]
        try:
            row = model.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"])
            raise DecodeError(where, f"{reason(error)} (a row of {table})").of(raw, "run_id") from None
        run, facts = told(row)
        return [WorkflowRecord(run=run, fact=f) for f in facts]

    def state_key(self, run_id: str) -> str:
        return self._ref(run_id).state_key

    def _ref(self, run_id: str, name: str = "", attributes: dict[str, AttributeValue] | None = None) -> RunRef:
        # The run's id alone names it (a UUID): its tenant is shown, not part of its identity, since the
        # steps' and waits' rows of older schemas do not carry it.
        return RunRef(
            engine=ENGINE,
            env=self.options.env,
            service=self.options.service,
            run_id=run_id,
            name=name,
            attributes=attributes or {},
        )

    def _run(self, row: RunRow) -> tuple[RunRef, list[Fact]]:
        tenant = row.tenant_id or row.tenant
        version = str(row.workflow_version) if row.workflow_version is not None else None
        run = self._ref(
            row.run_id,
            cut(row.workflow_name, MAX_TEXT) or row.workflow_id,
            attrs(
                **{
                    c.WORKFLOW_DEFINITION_ID: row.workflow_id,
                    c.WORKFLOW_DEFINITION_VERSION: version,
                    c.TENANT_ID: tenant,
                }
            ),
        )
        told = _Told("run", row.run_id)
        started = attrs(
            **{
                c.WORKFLOW_EVENT_TYPE: row.event_type,
                c.WORKFLOW_TRIGGER_TYPE: row.trigger_type,
                c.WORKFLOW_EXECUTION_INPUT: summary(row.input_json, self.options.decode)
                if isinstance(row.input_json, dict) and self.options.decode.capture_input
                else None,
            }
        )
        told(KIND.RUN_STARTED, row.started_at, "started", name="run.started", attributes=started)
        ending = _RUN_ENDINGS.get(row.status.upper())
        ended_at = row.completed_at or row.updated_at
        if ending is not None and ended_at is not None:
            error = self._error(row.error_json) if ending is OUTCOME.FAILURE else None
            told(
                KIND.RUN_ENDED,
                ended_at,
                "ended",
                name=f"run.{row.status.lower()}",
                outcome=ending,
                error=error or (ErrorInfo(message="run failed") if ending is OUTCOME.FAILURE else None),
                reason="canceled" if ending is OUTCOME.CANCELLATION else None,
            )
        return run, told.facts

    def _step(self, row: StepRow) -> tuple[RunRef, list[Fact]]:
        told = _Told("step", row.step_id)
        step: dict[str, Any] = {"step": row.step_path, "attempt": row.attempt, "label": row.definition_step_id or None}
        told(KIND.ATTEMPT_STARTED, row.started_at, "started", name="step.started", **step)
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
        return self._ref(row.run_id), told.facts

    def _wait(self, row: WaitRow) -> tuple[RunRef, list[Fact]]:
        told = _Told("wait", row.wait_id)
        kind = row.wait_type.lower()
        status = row.status.upper()
        resume_at = ns(row.timeout_at) if row.timeout_at is not None else None
        step: dict[str, Any] = {"step": row.step_path, "attempt": row.attempt, "label": row.definition_step_id or None}
        if kind == "retry":
            delay = (row.timeout_at - row.created_at).total_seconds() * 1000 if row.timeout_at is not None else None
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
            return self._ref(row.run_id), told.facts
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
            return self._ref(row.run_id), told.facts
        waiting_for = row.event_name or kind
        said = f"waiting for {waiting_for}" + (f" ({row.key})" if row.key else "")
        told(
            KIND.RUN_PAUSED,
            row.created_at,
            "created",
            name="human.task.created" if kind == "human" else "event.wait.created",
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
            return self._ref(row.run_id), told.facts  # a run canceled while it waited: its end tells it
        timed_out = (row.timeout_at is not None and row.resolved_at >= row.timeout_at) or "TIMEOUT" in status
        if timed_out:
            told(KIND.TIMEOUT_EXCEEDED, row.resolved_at, "timeout", name="wait.timed_out", **step)
        told(KIND.RUN_RESUMED, row.resolved_at, "resolved", name="event.wait.resolved")
        return self._ref(row.run_id), told.facts

    def _action(self, row: ActionRow) -> tuple[RunRef, list[Fact]]:
        """An action the step called, once it ended: an event on the execution that called it."""
        told = _Told("action", row.invocation_id)
        if row.completed_at is None or row.status.upper() not in ("SUCCEEDED", "FAILED"):
            return self._ref(row.run_id), told.facts
        took = (row.completed_at - row.started_at).total_seconds() * 1000 if row.started_at is not None else None
        failed = row.status.upper() == "FAILED"
        told(
            KIND.ANNOTATION,
            row.completed_at,
            "ended",
            name=f"action.{row.status.lower()}",
            step=row.step_path,
            attempt=row.attempt,
            # Two calls of one action in one execution are two events (a note is known by its ordinal).
            ordinal=zlib.crc32(row.invocation_id.encode()),
            attributes=attrs(
                **{
                    c.WORKFLOW_ACTION_ID: row.action_id,
                    c.WORKFLOW_ACTION_VERSION: row.action_version,
                    c.WORKFLOW_ACTION_DURATION_MS: took,
                    c.EXCEPTION_MESSAGE: cut(row.error_message or "action failed", self.options.decode.max_text_chars)
                    if failed
                    else None,
                }
            ),
        )
        return self._ref(row.run_id), told.facts

    def _error(self, value: Any) -> ErrorInfo | None:
        if not isinstance(value, dict) or not value:
            return None
        limit = self.options.decode.max_text_chars
        message = value.get("message")
        kind = value.get("category") or value.get("name") or value.get("code")
        step = value.get("nodePath")
        return ErrorInfo(
            message=cut(str(message) if message not in (None, "") else "step failed", limit),
            type=cut(str(kind), limit) if kind else None,
            stacktrace=cut(str(value["stack"]), limit) if value.get("stack") else None,
            step=cut(str(step), limit) if step else None,
        )


# Facts of one instant are in the order of their ids (`Fact.order`), and the rows' ids are random: their
# table's rank first puts a run's start before its step's, and a step's start before the wait it publishes
# (the runtime writes them in that order, often within a millisecond).
_RANKS = {"run": "0", "step": "1", "wait": "2", "action": "3"}


class _Told:
    """The facts of one row, each under an event id made from the row's table and id, and what the fact is:
    the same at every read of the row."""

    def __init__(self, table: str, row_id: str) -> None:
        self.prefix = f"v2:{_RANKS[table]}{table}:{row_id}:"
        self.facts: list[Fact] = []

    def __call__(self, kind: FactKind, at: datetime, what: str, **fields: Any) -> None:
        event_id = self.prefix + what
        attributes = {c.WORKFLOW_EVENT_ID: event_id, **fields.pop("attributes", {})}
        self.facts.append(Fact(event_id=event_id, time_ns=ns(at), kind=kind, attributes=attributes, **fields))
