"""The event-sourced workflow runtime (seed 003): its Redis stream entries and `workflow_events` rows.

What the runtime really publishes (issue 7), not what its guide says: one stream of flat
string fields, an empty string meaning absent, `payload_json` holding the payload as JSON
text. No completion event exists: an execution has ended when it moves into a terminal
state (or its payload says `isComplete`). Events whose to_state equals their from_state
were submitted asynchronously: not transitions. Human tasks are `Task:<id>:Created` /
`Task:<id>:Complete`. Any other event type is a trigger from outside, not an execution's
event; the executions it started name it in `initial_data.eventId`.
"""

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from otel_bridge import conventions as c
from otel_bridge.lifecycle import KIND, OUTCOME, AttributeValue, ErrorInfo, Fact, RunKind, RunRef, WorkflowRecord
from otel_bridge.sources.wire import (
    MAX_TEXT,
    DecodeError,
    DecodeOptions,
    Identity,
    IsoTime,
    Label,
    Text,
    attrs,
    cut,
    ns,
    reason,
    summary,
)

ENGINE = c.PLATFORM_EVENT_SOURCED
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled", "terminated"})
_OUTCOMES = {"completed": OUTCOME.SUCCESS, "failed": OUTCOME.FAILURE}
_TASK = re.compile(r"^Task:(?P<id>.+):(?P<step>Created|Complete)$")
_EXECUTION_TYPES = frozenset({"system", "workflow", "task_created"})
_DONE_FLAGS = ("isComplete", "workflowComplete")
_TASK_TYPE_KEYS = ("taskType", "task_type", "type", "title", "name")


class StreamEvent(BaseModel):
    """One event, as a stream entry (flat strings) or a table row (nested payload, created_at)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Identity
    execution_id: Label = ""  # required of execution events only (below); never a control character
    event_name: Text = ""
    event_type: str = Field(min_length=1)
    tenant: Label = Field(min_length=1)
    timestamp: IsoTime
    user_id: str = ""
    from_state: Text = ""
    to_state: Text = ""
    payload: dict[str, Any] = {}
    workflow_correlation_key: str = ""

    @model_validator(mode="before")
    @classmethod
    def _flat_or_row(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        event = {k: ("" if v is None else v) for k, v in raw.items()}
        if not event.get("timestamp") and event.get("created_at"):
            event["timestamp"] = event["created_at"]
        text = event.pop("payload_json", "")
        if text and "payload" not in raw:
            event["payload"] = _parsed(text, "payload_json")
        elif isinstance(event.get("payload"), str) and event["payload"]:
            # A row of a table whose payload column is text, not json(b): the same JSON, quoted.
            event["payload"] = _parsed(event["payload"], "payload")
        if event.get("payload") in ("", None):
            event["payload"] = {}
        return event


def _parsed(text: str, name: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class EventSourcedOptions:
    """What the stream does not say: whose service and environment it is, and which states end a run."""

    service: str = "event-sourced"
    env: str = "production"
    terminal_states: frozenset[str] = TERMINAL_STATES
    decode: DecodeOptions = field(default_factory=DecodeOptions)


class EventSourcedDecoder:
    """A stream entry or table row -> one lifecycle record (raises DecodeError)."""

    def __init__(self, options: EventSourcedOptions | None = None) -> None:
        self.options = options or EventSourcedOptions()
        self._terminal = frozenset(s.lower() for s in self.options.terminal_states)

    def __call__(self, raw: Any) -> WorkflowRecord:
        try:
            return self._decode(raw)
        except DecodeError as exc:
            raise exc.of(raw, "event_id") from None

    def _decode(self, raw: Any) -> WorkflowRecord:
        if isinstance(raw, dict) and raw and all(isinstance(k, bytes) for k in raw):
            # As JSON text is read: a byte that is not UTF-8 made U+FFFD, in a field's name too.
            raw = {
                k.decode(errors="replace"): v.decode(errors="replace") if isinstance(v, bytes) else v
                for k, v in raw.items()
            }
        try:
            event = StreamEvent.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            raise DecodeError(".".join(str(p) for p in error["loc"]), reason(error)) from None
        if event.event_type not in _EXECUTION_TYPES:
            return self._trigger(event)
        if not event.execution_id:
            raise DecodeError("execution_id", f"a {event.event_type!r} event must name its execution")
        return WorkflowRecord(run=self._run(event), fact=self._fact(event))

    def _run(self, e: StreamEvent, kind: RunKind = RunKind.WORKFLOW) -> RunRef:
        started = e.event_type == "system" and e.event_name == "workflow.started"
        name = cut(str(e.payload.get("workflow_name") or ""), MAX_TEXT) if started else ""
        attributes: dict[str, AttributeValue] = {}
        if started and e.payload.get("workflow_version") not in (None, ""):
            attributes[c.WORKFLOW_DEFINITION_VERSION] = str(e.payload["workflow_version"])
        return RunRef(
            engine=ENGINE,
            env=self.options.env,
            service=self.options.service,
            run_id=e.execution_id if kind is RunKind.WORKFLOW else e.event_id,
            name=name if kind is RunKind.WORKFLOW else e.event_type,
            correlation_id=e.workflow_correlation_key or None,
            tenant=e.tenant,
            kind=kind,
            attributes=attributes,
        )

    def _trigger(self, e: StreamEvent) -> WorkflowRecord:
        fact = Fact(
            event_id=e.event_id,
            time_ns=ns(e.timestamp),
            kind=KIND.TRIGGER,
            name=e.event_type,
            attributes=self._described(e),
        )
        return WorkflowRecord(run=self._run(e, RunKind.TRIGGER), fact=fact)

    def _described(self, e: StreamEvent) -> dict[str, Any]:
        return attrs(
            **{
                c.WORKFLOW_EVENT_ID: e.event_id,
                c.WORKFLOW_EVENT_NAME: e.event_name or None,
                c.WORKFLOW_EVENT_TYPE: e.event_type,
                c.ENDUSER_ID: e.user_id or None,
                c.WORKFLOW_EVENT_PAYLOAD: summary(e.payload, self.options.decode) if e.payload else None,
            }
        )

    def _fact(self, e: StreamEvent) -> Fact:
        base: dict[str, Any] = {"event_id": e.event_id, "time_ns": ns(e.timestamp), "name": e.event_name}
        described = self._described(e)
        moved = bool(e.to_state) and e.to_state != e.from_state
        move = {c.WORKFLOW_STATE_FROM: e.from_state} if moved and e.from_state else {}
        if e.event_type == "system" and e.event_name == "workflow.started":
            initial = e.payload.get("initial_data")
            trigger = initial.get("eventId") if isinstance(initial, dict) else None
            extra = {}
            if self.options.decode.capture_input and initial is not None:
                extra[c.WORKFLOW_EXECUTION_INPUT] = summary(initial, self.options.decode)
            return Fact(
                kind=KIND.RUN_STARTED,
                entered_state=e.to_state or "initial",
                links=(str(trigger),) if trigger else (),
                attributes=described | extra,
                **base,
            )
        task = _TASK.match(e.event_name)
        if e.event_type == "task_created" or (task and task["step"] == "Created"):
            task_id = task["id"] if task else e.event_name
            return Fact(kind=KIND.TASK_OPENED, step=task_id, label=_task_type(e.payload), attributes=described, **base)
        done = any(e.payload.get(flag) is True for flag in _DONE_FLAGS)
        if (moved and e.to_state.lower() in self._terminal) or done:
            state = e.to_state if moved else None
            outcome = _OUTCOMES.get((state or "completed").lower(), OUTCOME.CANCELLATION)
            return Fact(
                kind=KIND.RUN_ENDED,
                outcome=outcome,
                error=_error(e, self.options.decode.max_text_chars) if outcome is OUTCOME.FAILURE else None,
                reason=state if outcome is OUTCOME.CANCELLATION else None,
                entered_state=state,
                attributes=described | move,
                **base,
            )
        if task and task["step"] == "Complete":
            return Fact(
                kind=KIND.TASK_CLOSED,
                step=task["id"],
                entered_state=e.to_state if moved else None,
                attributes=described | move,
                **base,
            )
        if moved:
            return Fact(kind=KIND.STATE_ENTERED, entered_state=e.to_state, attributes=described | move, **base)
        # Submitted asynchronously, it names the state it happened in (to_state == from_state).
        within = e.to_state or None if e.to_state == e.from_state else None
        return Fact(kind=KIND.ANNOTATION, in_state=within, attributes=described, **base)


def _task_type(payload: dict[str, Any]) -> str | None:
    for key in _TASK_TYPE_KEYS:
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _error(e: StreamEvent, limit: int) -> ErrorInfo:
    error = e.payload.get("error")
    if isinstance(error, dict):
        message = cut(str(error.get("message") or ""), limit)
        kind = error.get("name") or error.get("type")
        return ErrorInfo(message=message or "workflow failed", type=cut(str(kind), limit) if kind else None)
    message = cut(str(error or e.payload.get("errorMessage") or e.payload.get("message") or ""), limit)
    return ErrorInfo(message=message or f"moved to {e.to_state}")
