"""The HTTP endpoints' contract as an OpenAPI 3.1 document, served at `GET /openapi.json`.

What comes in is described by the very models that check it (the durable-effect events, a close's
body); what goes out by the shapes below, which the tests hold to what the endpoints write:
`tests/receivers/test_http_contract.py` has schemathesis make requests from the document to a real
bridge (no 5xx, every answer of a documented status, type and shape). A producer in another
language generates its client from it.

A batch is taken whole or refused whole only for its envelope: inside a valid one, each event
that breaks the event schema is rejected on its own, in a 200 that lists it. The document says so
where OpenAPI cannot (a request body is one schema).
"""

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

import otel_bridge
from otel_bridge import conventions as c
from otel_bridge.config import Settings
from otel_bridge.correlate.overview import DEFAULT_CLOSE_REASON, DURATION
from otel_bridge.sources.durable_effect import TrackingEvent

_REF = "#/components/schemas/{model}"
_STRICT = ConfigDict(extra="forbid")


@with_config(_STRICT)
class Rejection(TypedDict):
    """An event of the batch that was not taken, and why (kept in the dead-letter file)."""

    index: int
    eventId: str | None
    field: str
    error: str


@with_config(_STRICT)
class IngestAnswer(TypedDict):
    """What a valid batch is answered: how its events were taken, one by one."""

    accepted: int
    duplicates: int
    late: int
    rejected: list[Rejection]
    rejectedCount: NotRequired[int]


@with_config(_STRICT)
class Problem(TypedDict):
    """Why a request was refused, in words naming what was wrong."""

    error: str
    # A close that found nothing open: why each run of that id the bridge knows is not open.
    not_open: NotRequired[list[str]]
    # A close by the first characters of an id that begin several: those ids.
    ids: NotRequired[list[str]]


@with_config(_STRICT)
class Run(TypedDict):
    """An open run as `otel-bridge runs --json` lists it."""

    engine: str
    service: str
    env: str
    name: str
    run_id: str
    tenant: str | None
    state: Annotated[str, Field(json_schema_extra={"enum": list(c.RUN_STATES)})]
    since: str
    resume_at: str | None
    overdue_seconds: float | None
    last_event: str
    last_event_at: str
    traceparent: str
    steps_done: int
    machine_state: str | None
    correlation_id: str | None
    trace_url: NotRequired[str]


@with_config(_STRICT)
class Job(TypedDict):
    """A job instance that runs or awaits a run, as `otel-bridge jobs --json` lists it."""

    engine: str
    service: str
    env: str
    name: str
    job_type: str
    instance_id: str
    active: bool
    due: str | None
    overdue_seconds: float | None
    last_ran: str | None
    correlation_id: str | None
    last_failure: str | None


@with_config(_STRICT)
class Runs(TypedDict):
    runs: list[Run]
    count: int
    service: NotRequired[str]


@with_config(_STRICT)
class Jobs(TypedDict):
    jobs: list[Job]
    count: int
    service: NotRequired[str]


@with_config(_STRICT)
class ClosedRun(TypedDict):
    run: Run
    spans_sent: int
    incomplete: bool


@with_config(_STRICT)
class ClosedJob(TypedDict):
    job: Job


@with_config(_STRICT)
class Closed(TypedDict):
    closed: list[ClosedRun | ClosedJob]


class CloseRequest(BaseModel):
    """What `POST /v1/runs/{id}/close` takes (all of it optional): why, and whose run, where several
    producers have one of that id."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default=DEFAULT_CLOSE_REASON, min_length=1, max_length=1000)
    service: str | None = Field(default=None, min_length=1)


@with_config(_STRICT)
class EventBatch(TypedDict):
    """What a durable-effect HTTP batch tracker POSTs."""

    events: list[Any]


@with_config(ConfigDict(extra="allow"))
class Liveness(TypedDict):
    status: Literal["ok", "stuck"]
    error: NotRequired[str]
    reasons: NotRequired[list[str]]


@with_config(_STRICT)
class Readiness(TypedDict):
    status: Literal["ready", "not ready"]
    ready: bool
    outbox: int | None
    reasons: list[str]
    error: NotRequired[str]
    warnings: NotRequired[list[str]]
    following: NotRequired[dict[str, str]]


def openapi(settings: Settings) -> dict[str, Any]:
    """The document for a bridge with these settings: its batch path, limits and credentials."""
    schemas = _schemas()
    batch = {"items": _ref("TrackingEvent"), "maxItems": settings.max_batch_events}
    schemas["EventBatch"]["properties"]["events"] |= batch
    guarded = _security(settings)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "otel-bridge",
            "version": otel_bridge.__version__,
            "description": "Workflow and job lifecycle events in, OpenTelemetry traces and metrics out. "
            "The batch endpoint is what a durable-effect HTTP batch tracker posts to.",
        },
        # Each operation with the name and group a client generated from the document gives it.
        "paths": {
            settings.path: {"post": _ingest(settings, guarded) | _named("postEvents", "events")},
            "/v1/runs": {"get": _listing("runs", guarded, _RUN_FILTERS) | _named("listRuns", "runs")},
            "/v1/jobs": {"get": _listing("jobs", guarded, _JOB_FILTERS) | _named("listJobs", "jobs")},
            "/v1/runs/{id}/close": {"post": _closing("run", guarded) | _named("closeRun", "runs")},
            "/v1/jobs/{id}/close": {"post": _closing("job instance", guarded) | _named("closeJob", "jobs")},
            "/healthz": {"get": _probe("Liveness", "Alive", "Stuck: a restart would mend it") | _named("liveness")},
            "/readyz": {
                "get": _probe("Readiness", "Ready", "Batches are (or soon would be) refused") | _named("readiness")
            },
            "/metrics": {"get": _metrics(guarded if settings.metrics_auth else []) | _named("metrics")},
        },
        "components": {"schemas": schemas},
    }
    if guarded:
        document["components"]["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": settings.api_key_header},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    return document


def _named(operation: str, tag: str = "operations") -> dict[str, Any]:
    return {"operationId": operation, "tags": [tag]}


def _schemas() -> dict[str, Any]:
    shapes: list[Any] = [
        IngestAnswer,
        Problem,
        Runs,
        Jobs,
        Closed,
        CloseRequest,
        EventBatch,
        Liveness,
        Readiness,
    ]
    _, found = TypeAdapter.json_schemas(
        [(shape, "validation", TypeAdapter(shape)) for shape in shapes], ref_template=_REF
    )
    schemas: dict[str, Any] = found["$defs"]
    event = TypeAdapter(TrackingEvent).json_schema(by_alias=True, ref_template=_REF)
    schemas.update(event.pop("$defs"))
    schemas["TrackingEvent"] = event | {
        "description": "One durable-effect lifecycle event, by `source` (left out: by `workflowId` or "
        "`instanceId`), then by `type`. Fields the bridge does not read are ignored."
    }
    return schemas


def _security(settings: Settings) -> list[dict[str, list[str]]]:
    """Either credential, where the bridge has one (a producer's key is sent as either)."""
    keyed = settings.api_key is not None or settings.producer_api_keys
    bearer = settings.bearer_token is not None or settings.producer_api_keys
    schemes: list[dict[str, list[str]]] = [{"apiKey": []}] * bool(keyed)
    return schemes + [{"bearer": []}] * bool(bearer)


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=model)}


def _json(model: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


_INTEGER = {"type": "integer"}


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending it again", "schema": _INTEGER}}


def _refused(*statuses: int, guarded: list[dict[str, list[str]]]) -> dict[str, Any]:
    words = {
        400: "Not a request this endpoint takes; the error names what is wrong",
        401: "Missing or wrong credential",
        403: "This producer's key lists and closes its own runs and jobs only",
        404: "Nothing of that kind here",
        408: "The request did not arrive in time",
        409: "The id's first characters begin several ids",
        413: "Body or batch over the limit",
        415: "Not JSON in UTF-8, or an encoding other than gzip",
        503: "The state store is unavailable or the export backlog full: send it again later",
    }
    answers = {str(s): _json("Problem", words[s]) for s in statuses if s != 401 or guarded}
    if "503" in answers:
        answers["503"]["headers"] = _RETRY_AFTER
    return answers


def _ingest(settings: Settings, guarded: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "summary": "Take a batch of lifecycle events",
        "description": "A body that is not the envelope is refused whole (4xx). Inside a valid envelope each "
        "event is checked on its own: those that are not a `TrackingEvent` are listed in `rejected` (index, "
        "field, reason) and kept in the dead-letter file, the rest taken — still a 200, as a tracker sends a "
        f"refused batch again and then drops it. The body may be gzip (`Content-Encoding: gzip`), at most "
        f"{settings.max_body_bytes} bytes either way.",
        "security": guarded,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EventBatch")}}},
        "responses": {
            "200": _json("IngestAnswer", "The batch was read: each event taken, a duplicate, late, or rejected"),
            **_refused(400, 401, 408, 413, 415, 503, guarded=guarded),
        },
    }


_TEXT = {"type": "string"}
_Filter = tuple[str, dict[str, Any], str]
_RUN_FILTERS: list[_Filter] = [
    ("state", {"type": "string", "enum": ["", *c.RUN_STATES]}, "Runs in this state only (empty: any)"),
    ("workflow", _TEXT, "Runs of this workflow only"),
    (
        "silent_for",
        {"type": "string", "pattern": f"({DURATION})|^$"},
        "Runs told nothing for this long (seconds, or 90s, 15m, 2h, 3d; empty: any)",
    ),
]
_JOB_FILTERS: list[_Filter] = [
    ("job", _TEXT, "Instances of this job only"),
    (
        "failing",
        {"type": "boolean"},
        "Only those whose latest run failed, whatever they await, the latest failed first (also 1/0, yes/no)",
    ),
]
_COMMON: list[_Filter] = [
    ("overdue", {"type": "boolean"}, "Overdue ones only (also 1/0, yes/no)"),
    ("service", _TEXT, "Of this producer (serviceKey) only"),
    ("env", _TEXT, "Of this environment only"),
    ("limit", {"type": "integer", "minimum": 0, "default": 1000}, "At most this many; `count` tells all"),
]
# What each listing (`GET /v1/runs`, `GET /v1/jobs`) is asked by: any other is a 400 naming it.
LISTING_PARAMETERS: dict[str, tuple[str, ...]] = {
    name: tuple(n for n, _, _ in _COMMON + filters)
    for name, filters in (("runs", _RUN_FILTERS), ("jobs", _JOB_FILTERS))
}


def _listing(name: str, guarded: list[dict[str, list[str]]], filters: list[_Filter]) -> dict[str, Any]:
    return {
        "summary": f"The open {name}" if name == "runs" else "The job instances that run or await a run",
        "security": guarded,
        "parameters": [
            {"name": n, "in": "query", "required": False, "schema": s, "description": d}
            for n, s, d in _COMMON + filters
        ],
        "responses": {
            "200": _json(name.capitalize(), f"The {name}, oldest (most pressing) first"),
            **_refused(400, 401, 403, 503, guarded=guarded),
        },
        "description": "A parameter of another name is a 400 naming it: a filter mistyped would list everything.",
    }


def _closing(what: str, guarded: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "summary": f"Close by hand a {what} the engine will never end",
        "security": guarded,
        "parameters": [
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
                "description": "The engine's id, the application's own, or the first six or more characters of one",
            }
        ],
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _ref("CloseRequest")}},
        },
        "responses": {
            "200": _json("Closed", "What was closed, as it stood, and what that sent"),
            **_refused(400, 401, 403, 404, 408, 409, 413, 503, guarded=guarded),
        },
    }


def _probe(model: str, yes: str, no: str) -> dict[str, Any]:
    return {"security": [], "responses": {"200": _json(model, yes), "503": _json(model, no)}}


def _metrics(guarded: list[dict[str, list[str]]]) -> dict[str, Any]:
    text = {"schema": {"type": "string"}}
    answers = {
        "200": {
            "description": "The bridge's own metrics, Prometheus text (OpenMetrics when asked)",
            "content": {"text/plain": text, "application/openmetrics-text": text},
        }
    }
    return {"security": guarded, "responses": answers | _refused(401, guarded=guarded)}
