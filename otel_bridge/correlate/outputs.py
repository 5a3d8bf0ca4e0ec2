"""What correlation produces: finished spans and metric observations, as plain data.

msgspec Structs, like the lifecycle vocabulary: settling builds several of each per run,
and a Struct is built in C (a frozen dataclass sets each field through Python).
"""

from enum import StrEnum

from msgspec import Struct

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


class SpanEvent(Struct):
    name: str
    time_ns: int
    attributes: dict[str, AttributeValue] = {}


class SpanRole(StrEnum):
    RUN = "run"
    ATTEMPT = "attempt"
    SLEEP = "sleep"
    STATE = "state"
    TASK = "task"
    TRIGGER = "trigger"


class SpanRecord(Struct, kw_only=True):
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int | None
    status: SpanStatus = SpanStatus.UNSET
    status_message: str = ""
    attributes: dict[str, AttributeValue] = {}
    events: list[SpanEvent] = []
    # Span ids in the same trace that this span follows from (earlier attempts).
    links: list[bytes] = []
    # (trace id, span id) of spans in other traces it follows from (the trigger that started a run).
    remote_links: list[tuple[bytes, bytes]] = []
    # What the span stands for, as the span builder knows it: metrics follow from it, not from its name.
    role: SpanRole = SpanRole.RUN


class Resource(Struct, frozen=True):
    """The producer a span or metric belongs to; None stands for the bridge itself."""

    service: str
    env: str


class Observation(Struct, frozen=True):
    """One metric measurement: `value` added to a counter or recorded in a histogram."""

    instrument: str
    value: float
    attributes: tuple[tuple[str, str], ...]
    resource: Resource
    # The run's span, so a histogram bucket can link to its trace (exemplar).
    trace_id: bytes | None = None
    span_id: bytes | None = None
