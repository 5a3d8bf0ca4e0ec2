"""What correlation produces: finished spans and metric observations, as plain data."""

from dataclasses import dataclass, field
from enum import StrEnum

from otel_bridge.lifecycle import AttributeValue


class SpanKind(StrEnum):
    SERVER = "server"
    INTERNAL = "internal"
    # What starts work elsewhere without waiting for it: a trigger.
    PRODUCER = "producer"


class SpanStatus(StrEnum):
    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class SpanRole(StrEnum):
    RUN = "run"
    ATTEMPT = "attempt"
    SLEEP = "sleep"
    STATE = "state"
    TASK = "task"
    TRIGGER = "trigger"


@dataclass(slots=True)
class SpanRecord:
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int | None
    status: SpanStatus = SpanStatus.UNSET
    status_message: str = ""
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    # Span ids in the same trace that this span follows from (earlier attempts).
    links: list[bytes] = field(default_factory=list)
    # (trace id, span id) of spans in other traces it follows from (the trigger that started a run).
    remote_links: list[tuple[bytes, bytes]] = field(default_factory=list)
    # What the span stands for, as the span builder knows it: metrics follow from it, not from its name.
    role: SpanRole = SpanRole.RUN


@dataclass(frozen=True, slots=True)
class Resource:
    """The producer a span or metric belongs to; None stands for the bridge itself."""

    service: str
    env: str


@dataclass(frozen=True, slots=True)
class Observation:
    """One metric measurement: `value` added to a counter or recorded in a histogram."""

    instrument: str
    value: float
    attributes: tuple[tuple[str, str], ...]
    resource: Resource
    # The run's span, so a histogram bucket can link to its trace (exemplar).
    trace_id: bytes | None = None
    span_id: bytes | None = None
