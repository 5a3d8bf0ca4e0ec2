"""The Phase-10 workflow engine's telemetry (seed 004): WebSocket messages and execution timelines.

What the engine really sends (issue 7): whole event objects (`event_type`, `timestamp` in
UTC without a zone, `workflow_execution_id`, `workflow_step_id`, `data`, …), not the
document's `{"event", "data"}` envelope (accepted too). Step results carry no
`workflow_id`, only the execution and the step's definition id; nothing on the wire has an
event id, so one is made from what the message says. Retries are only in the timeline's
`retry_count`. The `/ws/stream` channel carries every event type of the platform: what is
not a workflow's is ignored.
"""

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from otel_bridge import conventions as c
from otel_bridge.lifecycle import KIND, OUTCOME, AttributeValue, ErrorInfo, Fact, FactKind, RunRef, WorkflowRecord
from otel_bridge.sources.wire import (
    MAX_TEXT,
    Attempts,
    DecodeError,
    DecodeOptions,
    Identity,
    IsoTime,
    Text,
    attrs,
    cut,
    json_kind,
    ns,
    reason,
    summary,
)

ENGINE = c.PLATFORM_PHASE10
WORKFLOW_EVENTS = frozenset(
    {
        "workflow_started",
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
        "step_started",
        "step_completed",
        "step_failed",
        "step_skipped",
    }
)
_ENDINGS = {
    "workflow_completed": OUTCOME.SUCCESS,
    "workflow_failed": OUTCOME.FAILURE,
    "workflow_cancelled": OUTCOME.CANCELLATION,
}
# Ends the engine tells without stopping the execution (`cancel_workflow_execution`): its steps run on,
# then it is told completed or failed. The run stays open for them (`Fact.carries_on`), and a follower
# keeps catching it up.
_GOES_ON_AFTER = frozenset({"workflow_cancelled"})
_STEP_ENDINGS = {"step_completed": OUTCOME.SUCCESS, "step_failed": OUTCOME.FAILURE, "step_skipped": OUTCOME.SKIPPED}
# The engine's status enums (backend/schemas.py): an execution may also end `timeout` (no message
# tells it), and a step cancelled with its run is set `cancelled` without a completion time or a
# message of its own.
_TIMELINE_ENDINGS = {
    "completed": OUTCOME.SUCCESS,
    "failed": OUTCOME.FAILURE,
    "cancelled": OUTCOME.CANCELLATION,
    "timeout": OUTCOME.TIMEOUT,
}
# What an execution that ended so says when the timeline gives no error message (a failure: `_failure_said`).
_TIMELINE_ERRORS = {OUTCOME.TIMEOUT: "workflow timed out"}
_TIMELINE_STEP_ENDINGS = {
    "completed": OUTCOME.SUCCESS,
    "failed": OUTCOME.FAILURE,
    "skipped": OUTCOME.SKIPPED,
    "cancelled": OUTCOME.CANCELLATION,
}


def _failure_said(failed_steps: object) -> str:
    """A failed run's message where the engine gave none, alike whether a live message or a timeline
    tells the end: the two tellings of one end, at one time, must not differ by which was kept."""
    if isinstance(failed_steps, int) and not isinstance(failed_steps, bool) and failed_steps > 0:
        return f"{failed_steps} step{'' if failed_steps == 1 else 's'} failed"
    return "workflow failed"


class Phase10Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: str
    timestamp: IsoTime
    workspace_id: str | None = None
    workflow_id: str | None = None
    workflow_execution_id: Identity
    workflow_step_id: Identity | None = None
    agent_id: Any = None  # told, never a reason to turn the event away
    data: dict[str, Any] = {}
    message: str | None = None


class StepEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    step_id: Identity
    step_name: Text = ""
    step_order: int | None = None
    status: str = ""
    started_at: IsoTime | None = None
    completed_at: IsoTime | None = None
    duration_seconds: float | None = Field(None, ge=0, le=4e9)
    retry_count: Attempts = 0
    error_message: str | None = None
    input_summary: dict[str, Any] | None = None
    output_summary: dict[str, Any] | None = None


class Timeline(BaseModel):
    """`GET /api/workflows/executions/{id}/timeline` (WorkflowExecutionTimeline)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    execution_id: Identity
    workflow_id: str = ""
    workflow_name: Text = ""
    status: str = ""
    started_at: IsoTime | None = None
    completed_at: IsoTime | None = None
    step_timeline: list[StepEntry] = []
    error_message: str | None = None
    # Read as anything: a count it cannot read words the failure as a timeline that gives none does.
    failed_step_count: Any = None
    # Not the engine's: the workspace the bridge fetched it in (`timeline_api.in_workspace`), as a live
    # message tells its run's.
    workspace_id: str | None = None


@dataclass(frozen=True)
class Phase10Options:
    service: str = "phase10"
    env: str = "production"
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    # The follower fetches each execution's timeline as it is told ended (`ws_timeline_at_end`): a live end
    # says so (`Fact.summary_follows`), and the run waits for it, for the retries only a timeline tells.
    timeline_at_end: bool = False


def _enveloped(raw: dict[str, Any]) -> dict[str, Any]:
    """The document's `{"event", "data"}` envelope, in the shape the engine really sends."""
    data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
    inner = dict(data)
    if "error" in inner and "error_message" not in inner:
        inner["error_message"] = inner["error"]
    if "duration_seconds" in inner and "duration" not in inner:
        inner["duration"] = inner["duration_seconds"]
    if "output" in inner and "output_data" not in inner:
        inner["output_data"] = inner["output"]
    return {
        "event_type": raw["event"],
        "timestamp": data.get("timestamp"),
        "workflow_id": data.get("workflow_id"),
        "workflow_execution_id": data.get("execution_id"),
        "workflow_step_id": data.get("step_id"),
        "data": inner,
    }


def progress(message: Any) -> tuple[str | None, bool | None]:
    """(execution id, True when the message starts it, False when it ends it), None for neither.

    What a follower of the WebSocket needs to know which executions to catch up on after a
    reconnect: a message, or a timeline document (which ends its execution once finished).
    """
    if not isinstance(message, dict):
        return None, None
    if "step_timeline" in message:
        finished = str(message.get("status", "")).lower() in _TIMELINE_ENDINGS
        return _named(message.get("execution_id")), False if finished else None
    if "event" in message and "event_type" not in message:
        message = _enveloped(message)
    # Read off any message, however it is spoilt (it is rejected when decoded): a list where a name is
    # would be unhashable below, and a follower that raised here would stop following.
    event_type, execution = _named(message.get("event_type")), _named(message.get("workflow_execution_id"))
    if event_type == "workflow_started":
        return execution, True
    if event_type in _ENDINGS and event_type not in _GOES_ON_AFTER:
        return execution, False
    return execution, None


def _named(value: Any) -> str | None:
    """A name or an id as a message tells it: non-empty text, else none."""
    return value if isinstance(value, str) and value else None


def workflow_named(message: Any) -> tuple[str, str] | None:
    """(workflow id, the name of its runs) that a message starting a run tells, or None.

    The name is told only as a run starts, and a timeline carries none: a follower that learns it
    here names a run whose start it missed, fetched from its timeline, as the workflow's other runs."""
    if not isinstance(message, dict):
        return None
    if "event" in message and "event_type" not in message:
        message = _enveloped(message)
    data = message.get("data")
    if message.get("event_type") != "workflow_started" or not isinstance(data, dict):
        return None
    workflow, name = message.get("workflow_id"), data.get("workflow_name")
    return (workflow, name) if isinstance(workflow, str) and isinstance(name, str) and workflow and name else None


def workspace_of(message: Any) -> str | None:
    """The workspace a live message's execution belongs to, or None: the stream carries every workspace
    of the platform, and the engine tells an execution's timeline only in its own workspace's context."""
    if not isinstance(message, dict):
        return None
    if "event" in message and "event_type" not in message:
        message = _enveloped(message)
    return _named(message.get("workspace_id"))


def workspace_in(run: RunRef) -> str | None:
    """The workspace a stored run was told it belongs to (by its live messages), or None."""
    return _named(run.attributes.get(c.WORKSPACE_ID))


def _event_id(*parts: object, prefix: str = "p10-") -> str:
    # Nothing on the wire names an event: the same message told twice (a reconnect's overlap)
    # must be the same event, so its id is what it says.
    return prefix + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def _timeline_event_id(*parts: object) -> str:
    # A fact a timeline tells again at the very time a message told it is ordered by event id, and the
    # fold keeps the telling ordered first: "p10t-" sorts after every message's "p10-", so the engine's
    # own message is kept, whichever came first, and a timeline changes nothing a message told.
    return _event_id("timeline", *parts, prefix="p10t-")


def _problem(exc: ValidationError) -> DecodeError:
    error = exc.errors(include_url=False)[0]
    return DecodeError(".".join(str(p) for p in error["loc"]), reason(error))


class Phase10Decoder:
    """A WebSocket message -> a lifecycle record, or None for what is not a workflow's event."""

    def __init__(self, options: Phase10Options | None = None) -> None:
        self.options = options or Phase10Options()

    def __call__(self, raw: Any) -> WorkflowRecord | list[WorkflowRecord] | None:
        if not isinstance(raw, dict):
            raise DecodeError("", f"a message must be a JSON object, not {json_kind(raw)}")
        if "step_timeline" in raw:
            return self.timeline(raw)
        if "event" in raw and "event_type" not in raw:
            raw = _enveloped(raw)
        told = raw.get("event_type")
        if told is not None and not isinstance(told, str):
            raise DecodeError("event_type", f"must be text, not {json_kind(told)}")
        if raw.get("type") == "heartbeat" or told not in WORKFLOW_EVENTS:
            return None
        try:
            event = Phase10Event.model_validate(raw)
        except ValidationError as exc:
            raise _problem(exc) from None
        return WorkflowRecord(run=self._run(event), fact=self._fact(event))

    def timeline_document(self, raw: Any) -> list[WorkflowRecord]:
        """`import-timeline`'s: every document is a timeline, and one that is not is rejected naming what it
        lacks. Taken as a WebSocket message (`__call__`), a JSON object of no message type was ignored: a
        wrong file, or an error body where a timeline was fetched, was "1 timeline, 0 events", exit 0."""
        if not isinstance(raw, dict):
            raise DecodeError("", f"a timeline must be a JSON object, not {json_kind(raw)}")
        return self.timeline(raw)

    def state_key(self, execution_id: str) -> str:
        """Where the run of this execution is kept (its messages' and its timeline's run)."""
        return RunRef(
            engine=ENGINE, env=self.options.env, service=self.options.service, run_id=execution_id, name=""
        ).state_key

    def _run(self, e: Phase10Event) -> RunRef:
        attributes = attrs(**{c.WORKSPACE_ID: e.workspace_id, c.WORKFLOW_DEFINITION_ID: e.workflow_id})
        name = cut(str(e.data.get("workflow_name") or ""), MAX_TEXT) if e.event_type == "workflow_started" else ""
        return RunRef(
            engine=ENGINE,
            env=self.options.env,
            service=self.options.service,
            run_id=e.workflow_execution_id,
            name=name,
            attributes=attributes,
        )

    def _fact(self, e: Phase10Event) -> Fact:
        event_id = _event_id(e.event_type, e.workflow_execution_id, e.workflow_step_id, e.timestamp.isoformat())
        base: dict[str, Any] = {"event_id": event_id, "time_ns": ns(e.timestamp), "name": e.event_type}
        d = e.data
        described: dict[str, AttributeValue] = {c.WORKFLOW_EVENT_ID: event_id}
        if e.event_type == "workflow_started":
            extra = attrs(**{c.WORKFLOW_EXECUTION_INPUT: self._captured(d.get("input_variables"))})
            return Fact(kind=KIND.RUN_STARTED, attributes=described | extra, **base)
        if e.event_type in _ENDINGS:
            outcome = _ENDINGS[e.event_type]
            error = None
            if outcome is OUTCOME.FAILURE:
                message = d.get("error_message") or _failure_said(d.get("failed_steps"))
                error = ErrorInfo(
                    message=self._text(message), type=self._text(d["error_type"]) if d.get("error_type") else None
                )
            goes_on = e.event_type in _GOES_ON_AFTER
            return Fact(
                kind=KIND.RUN_ENDED,
                outcome=outcome,
                error=error,
                carries_on=goes_on,
                # Not after a cancellation: the execution goes on, and so does the stream's telling of it.
                summary_follows=self.options.timeline_at_end and not goes_on,
                attributes=described,
                **base,
            )
        if e.workflow_step_id is None:
            raise DecodeError("workflow_step_id", f"a {e.event_type} message must name its step")
        step: dict[str, Any] = {
            "step": e.workflow_step_id,
            "attempt": 1,
            "label": cut(str(d.get("step_name") or ""), MAX_TEXT) or None,
        }
        if e.event_type == "step_started":
            told = attrs(
                **{
                    # Text, bounded as every text: anything else the engine never sends (a span with an
                    # object for a value could not be written, and its run would be set aside).
                    c.WORKFLOW_TASK_TYPE: cut(t, MAX_TEXT) if isinstance(t := d.get("step_type"), str) and t else None,
                    c.GEN_AI_AGENT_ID: str(e.agent_id) if e.agent_id not in (None, "") else None,
                    # `true` is no order, though Python counts a bool as an int.
                    c.WORKFLOW_TASK_ORDER: d.get("step_order") if type(d.get("step_order")) is int else None,
                    c.WORKFLOW_TASK_INPUT: self._captured(d.get("config")),
                }
            )
            return Fact(kind=KIND.ATTEMPT_STARTED, attributes=described | told, **step, **base)
        outcome = _STEP_ENDINGS[e.event_type]
        duration = d.get("duration")
        error = (
            ErrorInfo(message=self._text(d.get("error_message") or "step failed"))
            if outcome is OUTCOME.FAILURE
            else None
        )
        told = attrs(**{c.WORKFLOW_TASK_OUTPUT: self._captured(d.get("output_data"))})
        return Fact(
            kind=KIND.ATTEMPT_ENDED,
            outcome=outcome,
            error=error,
            duration_ms=float(duration) * 1000 if isinstance(duration, int | float) else None,
            attributes=described | told,
            **step,
            **base,
        )

    def _captured(self, value: Any) -> str | None:
        return summary(value, self.options.decode) if self.options.decode.capture_input and value else None

    def _text(self, value: Any) -> str:
        """An error's message or type as the run keeps it: bounded as a span attribute is."""
        return cut(str(value), self.options.decode.max_text_chars)

    def timeline(self, raw: Any) -> list[WorkflowRecord]:
        """A whole execution from its timeline document: what the WebSocket told, and the retries it did not."""
        try:
            doc = Timeline.model_validate(raw)
        except ValidationError as exc:
            raise _problem(exc) from None
        run = RunRef(
            engine=ENGINE,
            env=self.options.env,
            service=self.options.service,
            run_id=doc.execution_id,
            name=doc.workflow_name or doc.workflow_id,
            attributes=attrs(
                **{c.WORKSPACE_ID: doc.workspace_id or None, c.WORKFLOW_DEFINITION_ID: doc.workflow_id or None}
            ),
        )
        facts: list[Fact] = []

        def told(kind: FactKind, at: Any, *key: object, **fields: Any) -> None:
            event_id = _timeline_event_id(doc.execution_id, kind, *key)
            facts.append(
                Fact(event_id=event_id, time_ns=ns(at), kind=kind, attributes={c.WORKFLOW_EVENT_ID: event_id}, **fields)
            )

        if doc.started_at is not None:
            told(KIND.RUN_STARTED, doc.started_at, name="workflow_started")
        for entry in doc.step_timeline:
            if entry.status.lower() == "pending":
                # Never run: the engine makes a step's row, `started_at` set, when its level comes,
                # and one whose dependencies are not met stays pending.
                continue
            step: dict[str, Any] = {"step": entry.step_id, "attempt": 1, "label": entry.step_name or None}
            begun = entry.started_at or entry.completed_at
            if entry.started_at is not None:
                facts.append(self._step_started(doc, entry, step))
            for n in range(1, entry.retry_count + 1):
                told(
                    KIND.RETRY_SCHEDULED,
                    begun,
                    entry.step_id,
                    n,
                    name="retry.scheduled",
                    step=entry.step_id,
                    label=entry.step_name or None,
                    ordinal=n,
                )
            outcome = _TIMELINE_STEP_ENDINGS.get(entry.status.lower())
            # Without its own time: a skipped step ends where it began, one cancelled with its run with it.
            ended_at = entry.completed_at or {OUTCOME.SKIPPED: begun, OUTCOME.CANCELLATION: doc.completed_at}.get(
                outcome
            )
            if outcome is not None and ended_at is not None:
                error = (
                    ErrorInfo(message=self._text(entry.error_message or "step failed"))
                    if outcome is OUTCOME.FAILURE
                    else None
                )
                duration = entry.duration_seconds * 1000 if entry.duration_seconds is not None else None
                told(
                    KIND.ATTEMPT_ENDED,
                    ended_at,
                    entry.step_id,
                    name=f"step_{entry.status.lower()}",
                    outcome=outcome,
                    error=error,
                    duration_ms=duration,
                    **step,
                )
        ending = _TIMELINE_ENDINGS.get(doc.status.lower())
        if ending is not None and doc.completed_at is not None:
            said = _failure_said(doc.failed_step_count) if ending is OUTCOME.FAILURE else _TIMELINE_ERRORS.get(ending)
            error = ErrorInfo(message=self._text(doc.error_message or said)) if said else None
            told(
                KIND.RUN_ENDED,
                doc.completed_at,
                name=f"workflow_{doc.status.lower()}",
                outcome=ending,
                error=error,
                summary=True,
            )
        return [WorkflowRecord(run=run, fact=f) for f in facts]

    def _step_started(self, doc: Timeline, entry: StepEntry, step: dict[str, Any]) -> Fact:
        assert entry.started_at is not None  # asked only of steps that started
        event_id = _timeline_event_id(doc.execution_id, KIND.ATTEMPT_STARTED, entry.step_id)
        told = attrs(
            **{
                c.WORKFLOW_EVENT_ID: event_id,
                c.WORKFLOW_TASK_ORDER: entry.step_order,
                c.WORKFLOW_TASK_INPUT: self._captured(entry.input_summary),
            }
        )
        return Fact(
            event_id=event_id,
            time_ns=ns(entry.started_at),
            kind=KIND.ATTEMPT_STARTED,
            name="step_started",
            attributes=told,
            **step,
        )
