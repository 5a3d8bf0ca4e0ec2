"""The HTTP endpoints' OpenAPI document (`GET /openapi.json`): it holds what the producers really
send, and a real bridge answers every request made from it as it documents — schemathesis drives
the requests (valid ones, and ones that break the document) and checks each answer."""

import asyncio
import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from bridge_process import BridgeProcess
from builders import WorkflowRun
from hypothesis import HealthCheck, settings
from otlp_receiver import OtlpHttpReceiver
from pydantic import TypeAdapter
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import JobOverview, RunOverview
from otel_bridge.producer import demo
from otel_bridge.receivers.http import create_app
from otel_bridge.receivers.http_contract import Job, Run, openapi
from otel_bridge.sources.durable_effect import EVENT_TYPES

KEY = "contract-key"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> Iterator[BridgeProcess]:
    receiver = OtlpHttpReceiver()
    process = BridgeProcess(tmp_path_factory.mktemp("contract"), receiver.endpoint, api_key=KEY).start()
    # A run to list and close (schemathesis's own events are mostly rejected: random text is no time).
    run = WorkflowRun().started().step_started("charge")
    process.post(run.events, headers={"x-api-key": KEY}).raise_for_status()
    yield process
    process.close()
    receiver.close()


# The document of a bridge with this key, made here as the bridge makes it (that it serves the same is
# checked below): the requests are made from it before the bridge runs.
CONTRACT = openapi(Settings(api_key=KEY))
# Every boundary of every schema valid (the coverage phase); the invalid ones drawn at random with the
# rest (fuzzing): each of the 24 event types' invalid boundaries, a 200 rejecting it, was 3,000 requests.
_PHASES = {"coverage": {"generation": {"mode": "positive"}}}
fuzzed = schemathesis.openapi.from_dict(
    CONTRACT,
    config=SchemathesisConfig.from_dict({"auth": {"openapi": {"apiKey": {"api_key": KEY}}}, "phases": _PHASES}),
)


@fuzzed.hook
def map_body(_context: Any, body: Any) -> Any:
    """Most events drawn from the schema carry a time OTLP cannot (the year 0001, 9999) and ids of their
    own: some are given a time of this year and one of a few runs, steps and attempts, so that runs are
    folded, settled and exported from them. From what each event holds, not at random: a failure
    found is found again."""
    if not (isinstance(body, dict) and isinstance(body.get("events"), list)):
        return body
    for index, event in enumerate(body["events"]):
        if not isinstance(event, dict) or (seed := zlib.crc32(str(event.get("eventId")).encode())) % 4 == 0:
            continue
        event["timestamp"] = f"2026-12-04T10:{index % 60:02d}:{seed % 60:02d}.{seed % 1000:03d}Z"
        for field, few in (("workflowId", "w"), ("instanceId", "j"), ("stepName", "s")):
            if field in event:
                event[field] = f"{few}{seed % 3}"
        if "attempt" in event:
            event["attempt"] = seed % 4
    return body


def test_a_real_bridge_serves_the_document_its_settings_make(bridge):
    assert bridge.client.get(f"{bridge.url}/openapi.json").json() == CONTRACT


@fuzzed.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_of_a_real_bridge_is_one_its_document_gives(case, bridge):
    # No 5xx, each status, content type and body as documented, a valid request taken, an invalid one
    # refused, the credential required. But a valid batch holding events the schema refuses is taken:
    # those events are rejected one by one in its 200, as the document says, not the batch.
    excluded = [negative_data_rejection] if case.operation.path == "/v1/events" else []
    case.call_and_validate(base_url=bridge.url, excluded_checks=excluded)


def _events_of(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """The document's event schema on its own, as a JSON Schema validator."""
    schemas = schema["components"]["schemas"]
    events = _local_refs({**schemas["TrackingEvent"], "$defs": schemas}, "#/components/schemas/", "#/$defs/")
    return jsonschema.Draft202012Validator(events)


def _local_refs(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: (v.replace(old, new) if k == "$ref" else _local_refs(v, old, new)) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_refs(v, old, new) for v in value]
    return value


def test_every_event_the_demo_producer_sends_is_one_the_document_describes():
    validator = _events_of(openapi(Settings()))
    rng = random.Random(3)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    sent = [
        event
        for scenario in {**demo.SCENARIOS, **demo.INCIDENTS}.values()
        for batch in scenario(now, rng)
        for event in batch
    ]
    assert {e["type"] for e in sent} == set(EVENT_TYPES)
    for event in sent:
        validator.validate(event)


def test_the_document_names_every_event_type_the_bridge_reads():
    schemas = openapi(Settings())["components"]["schemas"]
    told = {
        schema["properties"]["type"]["const"]
        for name, schema in schemas.items()
        if "type" in schema.get("properties", {}) and "const" in schema["properties"]["type"]
    }
    assert told == set(EVENT_TYPES)


def test_the_batch_path_limits_and_credentials_are_the_bridges_own():
    bare = openapi(Settings(path="/ingest", max_batch_events=100))
    assert "/ingest" in bare["paths"] and "/v1/events" not in bare["paths"]
    assert bare["components"]["schemas"]["EventBatch"]["properties"]["events"]["maxItems"] == 100
    assert "securitySchemes" not in bare["components"]
    assert bare["paths"]["/ingest"]["post"]["security"] == []
    keyed = openapi(Settings(api_key="k", api_key_header="X-Token"))
    assert keyed["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-Token"}
    assert keyed["paths"]["/v1/runs"]["get"]["security"] == [{"apiKey": []}]
    assert keyed["paths"]["/metrics"]["get"]["security"] == []  # open to scrapers unless metrics_auth
    assert openapi(Settings(api_key="k", metrics_auth=True))["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}]


def test_a_listed_run_and_job_are_what_the_document_says_they_are():
    run = RunOverview(
        engine="durable-effect",
        service="shop",
        env="prod",
        name="order",
        run_id="r1",
        tenant=None,
        state="paused",
        since_ns=1,
        resume_at_ns=2,
        overdue_ns=3_000_000,
        last_event="workflow.paused",
        last_event_ns=1,
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        correlation_id="order-7",
    )
    TypeAdapter(Run).validate_python(run.as_dict("http://jaeger/trace/{trace_id}"))
    job = JobOverview("durable-effect", "jobs", "prod", "sync", "task", "i1", False, 5, None, 4, None)
    TypeAdapter(Job).validate_python(job.as_dict())


def _get(path: str, method: str = "GET", **settings: Any) -> httpx.Response:
    app = create_app(
        _Consumer(),
        Settings(**settings),
        metrics=lambda _a: (b"", "text/plain"),
        readiness=lambda: {"ready": True},
        runs=lambda _query, _limit: ([], 0),
    )

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            return await client.request(method, path)

    return asyncio.run(go())


class _Consumer:
    def ingest(self, events: Any, *, producer: str | None = None) -> Any:
        raise AssertionError("no batch is posted here")


def test_the_document_is_served_open_and_whole(tmp_path):
    answer = _get("/openapi.json", api_key="k", dead_letter=tmp_path / "dl.jsonl")
    assert answer.status_code == 200
    assert answer.json()["paths"].keys() == openapi(Settings(api_key="k"))["paths"].keys()


def test_a_listing_asked_by_a_parameter_it_does_not_know_says_so(tmp_path):
    answer = _get("/v1/runs?overdu=true", dead_letter=tmp_path / "dl.jsonl")
    assert answer.status_code == 400
    assert "unknown parameter 'overdu'" in answer.json()["error"]
    assert "overdue" in answer.json()["error"]


def test_a_path_no_endpoint_answers_is_a_json_404(tmp_path):
    answer = _get("/v1/nothing", dead_letter=tmp_path / "dl.jsonl")
    assert answer.status_code == 404
    assert answer.json() == {"error": "no endpoint /v1/nothing"}


@pytest.mark.parametrize(
    "values", [{}, {"api_key": "k", "metrics_auth": True}, {"producer_api_keys": "shop=k", "path": "/ingest"}]
)
def test_the_document_is_valid_openapi_3_1_with_an_operation_id_for_each_operation(values):
    document = openapi(Settings(**values))
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 schema itself
    ids = [operation["operationId"] for path in document["paths"].values() for operation in path.values()]
    assert len(ids) == len(set(ids)) == 8


def test_a_method_an_endpoint_does_not_take_is_a_json_405_naming_those_it_does(tmp_path):
    answer = _get("/v1/runs", "DELETE", dead_letter=tmp_path / "dl.jsonl")
    assert answer.status_code == 405
    assert answer.json() == {"error": "DELETE is not allowed here"}
    assert set(answer.headers["allow"].split(", ")) == {"GET", "HEAD"}  # in no set order
