"""`POST /v1/events` as an ASGI endpoint ahead of Starlette: what it answers beside the routes
Starlette keeps, driven in-process with the messages a server sends it."""

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from builders import JobRun, WorkflowRun
from pydantic import TypeAdapter

from otel_bridge.config import Settings
from otel_bridge.consumer import Backpressure, IngestReport
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.http import create_app
from otel_bridge.receivers.http_contract import Closed, Problem
from otel_bridge.state.sqlite_store import SqliteStore

BATCH = orjson.dumps({"events": []})


class Counting:
    def __init__(self) -> None:
        self.batches: list[Sequence[Any]] = []

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        self.batches.append(events)
        return IngestReport(accepted=len(events))


def _app(tmp_path, consumer: Counting, **values: Any) -> Any:
    settings = Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl", **values)
    return create_app(consumer, settings, metrics=lambda _a: (b"", "text/plain"), readiness=lambda: {"ready": True})


def _request(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _call(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """The endpoint fed `messages` one receive() at a time, as a server would; what it sent back."""
    scope = {"type": "http", "method": "POST", "path": "/v1/events", "headers": headers, "client": ("127.0.0.1", 1)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_body_sent_in_pieces_is_read_whole(tmp_path):
    consumer = Counting()
    body = orjson.dumps({"events": [{"type": "x"}, {"type": "y"}]})
    pieces = [body[:7], body[7:20], body[20:]]
    messages = [{"type": "http.request", "body": p, "more_body": i < 2} for i, p in enumerate(pieces)]
    sent = _call(_app(tmp_path, consumer), messages, [(b"content-type", b"application/json")])
    assert sent[0]["status"] == 200
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"])["accepted"] == 2
    assert len(consumer.batches[0]) == 2


def test_a_client_gone_before_its_body_ends_has_nothing_stored(tmp_path):
    consumer = Counting()
    messages = [{"type": "http.request", "body": BATCH[:5], "more_body": True}, {"type": "http.disconnect"}]
    sent = _call(_app(tmp_path, consumer), messages, [])
    assert sent[0]["status"] == 400
    assert consumer.batches == []


def test_the_first_of_a_repeated_credential_header_counts(tmp_path):
    app = _app(tmp_path, Counting(), api_key="right")
    message = [{"type": "http.request", "body": BATCH, "more_body": False}]
    first_right = [(b"x-api-key", b"right"), (b"x-api-key", b"wrong")]
    first_wrong = [(b"x-api-key", b"wrong"), (b"x-api-key", b"right")]
    assert _call(app, list(message), first_right)[0]["status"] == 200
    refused = _call(app, list(message), first_wrong)
    assert refused[0]["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="otel-bridge"') in refused[0]["headers"]


def test_another_method_on_the_batch_path_is_405_naming_post(tmp_path):
    answer = _request(_app(tmp_path, Counting()), "GET", "/v1/events")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert "POST" in answer.json()["error"]


def test_the_other_endpoints_are_still_served(tmp_path):
    app = _app(tmp_path, Counting())
    assert _request(app, "GET", "/healthz").json() == {"status": "ok"}
    assert _request(app, "GET", "/nowhere").status_code == 404
    assert _request(app, "POST", "/v1/events", content=BATCH, headers={"content-type": "text/plain"}).status_code == 415


def test_a_moved_batch_path_is_the_one_served(tmp_path):
    consumer = Counting()
    app = _app(tmp_path, consumer, path="/ingest")
    assert _request(app, "POST", "/ingest", content=BATCH).json()["accepted"] == 0
    assert _request(app, "POST", "/v1/events", content=BATCH).status_code == 404
    assert len(consumer.batches) == 1


def test_the_batch_path_with_a_trailing_slash_is_the_same_endpoint(tmp_path):
    consumer = Counting()
    app = _app(tmp_path, consumer)
    assert _request(app, "POST", "/v1/events/", content=BATCH).json()["accepted"] == 0
    assert len(consumer.batches) == 1


def test_the_batch_path_after_a_base_url_that_ends_in_a_slash_is_the_same_endpoint(tmp_path):
    # `http://bridge:4380/` + `/v1/events`, as a proxy that merges slashes (nginx's default) would take it.
    consumer = Counting()
    app = _app(tmp_path, consumer)
    assert _request(app, "POST", "http://bridge//v1/events", content=BATCH).json()["accepted"] == 0
    assert len(consumer.batches) == 1


def test_a_batch_posted_to_another_path_is_a_404_naming_the_batch_path_and_told_in_the_log(tmp_path, caplog):
    # A producer pointed at the wrong path loses every batch after three re-sends: nothing else says so.
    app = _app(tmp_path, Counting())
    with caplog.at_level(logging.WARNING, logger="otel_bridge.receivers.http"):
        for _ in range(3):
            answer = _request(app, "POST", "/events", content=BATCH)
            assert answer.status_code == 404
        assert _request(app, "GET", "/nowhere").status_code == 404  # not a batch: not told
    assert answer.json()["error"] == "no endpoint /events: batches are posted to /v1/events"
    (told,) = [r.getMessage() for r in caplog.records]
    assert told == (
        "refused a batch from 127.0.0.1 (404): POST /events is no endpoint: batches are posted to /v1/events; a "
        "producer re-sends it three times, then drops it"
    )


def test_a_body_starting_with_a_byte_order_mark_is_read_as_a_replay_file_is(tmp_path):
    # JSON text must not start with one, but a parser may ignore it (RFC 8259, 8.1); .NET and
    # PowerShell streams write one.
    consumer = Counting()
    body = b"\xef\xbb\xbf" + orjson.dumps({"events": [{"type": "workflow.started"}]})
    headers = {"content-type": "application/json"}
    response = _request(_app(tmp_path, consumer), "POST", "/v1/events", content=body, headers=headers)
    assert response.status_code == 200 and len(consumer.batches) == 1


def _runs_app(tmp_path, asked: list[tuple[Any, int]]) -> Any:
    settings = Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl")

    def runs(query: Any, limit: int) -> tuple[list[Any], int]:
        asked.append((query, limit))
        return [], 0

    return create_app(
        Counting(), settings, metrics=lambda _a: (b"", "text/plain"), readiness=lambda: {"ready": True}, runs=runs
    )


@pytest.mark.parametrize(
    ("params", "told"),
    [
        ({"overdue": "maybe"}, "overdue must be true or false, not 'maybe'"),
        ({"state": "sleeping"}, "state must be one of pending, executing, paused, not 'sleeping'"),
        ({"limit": "-1"}, "limit must be 0 or more, not -1"),
    ],
)
def test_a_run_listing_filter_that_is_none_is_a_400_naming_it(tmp_path, params, told):
    # Taken as no filter, or as one nothing matches, it answered an empty list as if no run were there.
    asked: list[tuple[Any, int]] = []
    response = _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params=params)
    assert response.status_code == 400 and told in response.text and asked == []


def test_run_listing_filters_left_empty_are_no_filters(tmp_path):
    asked: list[tuple[Any, int]] = []
    params = {"overdue": "No", "state": "", "service": "", "env": "", "workflow": ""}
    assert _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params=params).status_code == 200
    ((query, limit),) = asked
    assert (query, limit) == (RunQuery(), 1000)


def test_runs_are_listed_by_the_service_environment_and_workflow_an_alert_names(tmp_path):
    asked: list[tuple[Any, int]] = []
    params = {"overdue": "true", "service": "shop", "env": "production", "workflow": "nightlyReport"}
    assert _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params=params).status_code == 200
    assert asked == [(RunQuery(overdue=True, service="shop", env="production", workflow="nightlyReport"), 1000)]


def test_runs_are_listed_by_how_long_they_have_told_nothing(tmp_path):
    asked: list[tuple[Any, int]] = []
    params = {"state": "executing", "silent_for": "3600"}
    assert _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params=params).status_code == 200
    assert asked == [(RunQuery(state="executing", silent_for=3600.0), 1000)]
    assert _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params={"silent_for": "1h"}).status_code == 200
    assert asked[-1] == (RunQuery(silent_for=3600.0), 1000)  # as the command line writes it
    for silence in ("an hour", "-1", "inf", "nan"):
        refused = _request(_runs_app(tmp_path, asked), "GET", "/v1/runs", params={"silent_for": silence})
        assert refused.status_code == 400 and "silent_for must be a number of seconds" in refused.text


def test_job_listing_answers_the_instances_from_the_store_behind_the_ingest_credential(tmp_path):
    settings = Settings(
        state=str(tmp_path / "s.db"),
        api_key="k",
        dead_letter=tmp_path / "dl.jsonl",
        span_dead_letter=tmp_path / "ds",
        overdue_tasks=["reminder"],
    )
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    missed = JobRun("reminder", "task").task_scheduled(in_ms=60_000)  # in 2025: long past
    pipeline.ingest(missed.events)
    app = create_app(
        Counting(),
        settings,
        metrics=lambda _a: (b"", "text/plain"),
        readiness=lambda: {"ready": True},
        jobs=lambda query, limit: _listed(pipeline.list_jobs(query, limit=limit)),
    )
    key = {"X-API-KEY": "k"}

    answer = _request(app, "GET", "/v1/jobs", params={"overdue": "true"}, headers=key).json()

    assert answer["count"] == 1 and answer["jobs"][0]["instance_id"] == missed.base["instanceId"]
    assert answer["jobs"][0]["overdue_seconds"] > 0
    assert _request(app, "GET", "/v1/jobs", params={"service": "elsewhere"}, headers=key).json() == {
        "jobs": [],
        "count": 0,
    }
    assert (
        _request(app, "GET", "/v1/jobs", params={"env": "production", "job": "reminder"}, headers=key).json()["count"]
        == 1
    )
    assert _request(app, "GET", "/v1/jobs", params={"job": "digest"}, headers=key).json()["count"] == 0
    assert _request(app, "GET", "/v1/jobs").status_code == 401
    bad = _request(app, "GET", "/v1/jobs", params={"limit": "all"}, headers=key)
    assert bad.status_code == 400 and "limit must be a whole number, not 'all'" in bad.text
    # Those whose latest run failed, whatever they await: this one awaits its next run, and never failed.
    assert _request(app, "GET", "/v1/jobs", params={"failing": "yes"}, headers=key).json() == {"jobs": [], "count": 0}
    bad = _request(app, "GET", "/v1/jobs", params={"failing": "maybe"}, headers=key)
    assert bad.status_code == 400 and "failing must be true or false, not 'maybe'" in bad.text


def _listed(listed: tuple[list[Any], int]) -> tuple[list[dict[str, Any]], int]:
    return [job.as_dict() for job in listed[0]], listed[1]


def _closing_app(tmp_path) -> tuple[Any, Pipeline]:
    settings = Settings(
        state=str(tmp_path / "s.db"), api_key="k", dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds"
    )
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)

    def close(instance_id: str, reason: str, jobs: bool, service: str | None) -> list[dict[str, Any]]:
        return [closed.as_dict() for closed in pipeline.close(instance_id, reason, jobs, service)]

    app = create_app(
        Counting(),
        settings,
        metrics=lambda _a: (b"", "text/plain"),
        readiness=lambda: {"ready": True},
        close=close,
        not_open=pipeline.not_open,
    )
    return app, pipeline


def test_closing_a_run_by_hand_answers_what_it_closed_behind_the_ingest_credential(tmp_path):
    app, pipeline = _closing_app(tmp_path)
    stuck = WorkflowRun("nightly").started().step_started("a").sleep_started(60_000).paused("sleep")
    pipeline.ingest(stuck.events)
    path = f"/v1/runs/{stuck.workflow_id}/close"
    key = {"X-API-KEY": "k"}

    assert _request(app, "POST", path).status_code == 401
    answer = _request(app, "POST", path, json={"reason": "INC-42"}, headers=key)

    assert answer.status_code == 200, answer.text
    (closed,) = answer.json()["closed"]
    assert closed["run"]["run_id"] == stuck.workflow_id and closed["run"]["state"] == "paused"
    assert (closed["spans_sent"], closed["incomplete"]) == (3, True)  # the step's, the sleep's and the root
    again = _request(app, "POST", path, headers=key)
    assert again.status_code == 404, again.text
    said = f"run {stuck.workflow_id} of nightly (shop/production) is closed already, by hand (INC-42)"
    assert again.json() == {"error": f"no open run {stuck.workflow_id}; {said}", "not_open": [said]}
    TypeAdapter(Closed).validate_python(answer.json())  # each as the OpenAPI document has it
    TypeAdapter(Problem).validate_python(again.json())
    unknown = _request(app, "POST", "/v1/runs/no-such-run/close", headers=key)
    assert unknown.status_code == 404 and unknown.json() == {"error": "no open run no-such-run"}


def test_a_close_by_the_beginning_of_an_id_that_begins_several_closes_none_and_names_them(tmp_path):
    app, pipeline = _closing_app(tmp_path)
    ids = ["ab12cd34" + "0" * 56, "ab12cd99" + "1" * 56]
    for object_id in ids:
        pipeline.ingest(WorkflowRun("nightly", workflow_id=object_id).started().step_started("export").events)

    answer = _request(app, "POST", "/v1/runs/ab12cd/close", headers={"X-API-KEY": "k"})

    assert answer.status_code == 409 and answer.json()["ids"] == ids
    assert "ab12cd begins the ids of 2 runs" in answer.json()["error"]
    TypeAdapter(Problem).validate_python(answer.json())
    assert len(pipeline.list_runs(RunQuery())[0]) == 2  # both still open
    closed = _request(app, "POST", "/v1/runs/ab12cd34/close", headers={"X-API-KEY": "k"})
    assert closed.status_code == 200 and closed.json()["closed"][0]["run"]["run_id"] == ids[0]


def test_a_run_whose_id_holds_a_slash_or_a_space_is_closed_by_its_id_escaped_in_the_path(tmp_path):
    app, pipeline = _closing_app(tmp_path)
    stuck = WorkflowRun("nightly", workflow_id="tenant/42 night ☾").started().step_started("a")
    pipeline.ingest(stuck.events)
    answer = _request(app, "POST", f"/v1/runs/{quote(stuck.workflow_id, safe='')}/close", headers={"X-API-KEY": "k"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["closed"][0]["run"]["run_id"] == "tenant/42 night ☾"


def test_closing_a_job_instances_wait_by_hand_needs_no_body(tmp_path):
    app, pipeline = _closing_app(tmp_path)
    lost = JobRun("reminder", "task").task_scheduled(in_ms=60_000)
    pipeline.ingest(lost.events)

    answer = _request(app, "POST", f"/v1/jobs/{lost.base['instanceId']}/close", headers={"X-API-KEY": "k"})

    assert answer.status_code == 200, answer.text
    assert answer.json()["closed"][0]["job"]["instance_id"] == lost.base["instanceId"]


@pytest.mark.parametrize(
    ("body", "told"),
    [
        (b"{not json", "not a close request (body: Invalid JSON"),
        (b'{"reason": 5}', "not a close request (reason: Input should be a valid string)"),
        (b'{"reason": ""}', "not a close request (reason: String should have at least 1 character)"),
        (b'{"why": "x"}', "not a close request (why: Extra inputs are not permitted)"),
    ],
)
def test_a_close_request_that_is_none_is_a_400_naming_what_is_wrong(tmp_path, body, told):
    app, _pipeline = _closing_app(tmp_path)
    answer = _request(app, "POST", "/v1/runs/r1/close", content=body, headers={"X-API-KEY": "k"})
    assert answer.status_code == 400 and answer.json()["error"].startswith(told), answer.text


@pytest.mark.parametrize("name", ["runs", "jobs"])
def test_a_close_without_an_id_is_a_400_saying_what_the_path_names(tmp_path, name):
    app, _pipeline = _closing_app(tmp_path)
    answer = _request(app, "POST", f"/v1/{name}//close", headers={"X-API-KEY": "k"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(f"no id: POST /v1/{name}/{{id}}/close names the")


def test_a_bridge_that_keeps_no_runs_has_nothing_to_close(tmp_path):
    answer = _request(_app(tmp_path, Counting()), "POST", "/v1/runs/r1/close")
    assert answer.status_code == 404 and "nothing to close here" in answer.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json; charset=utf-8", 200),
        ("application/json;charset=UTF-8", 200),
        ('application/json; charset="us-ascii"', 200),  # a subset of UTF-8
        ("application/json; charset=utf-16", 415),
        ("application/json; charset=iso-8859-1", 415),
        ("application/vnd.durable-effect.events+json", 200),  # JSON by its suffix (RFC 6839)
        ("application/problem+json; charset=utf-16", 415),
    ],
)
def test_a_batch_in_another_charset_than_utf8_is_a_415_naming_it(tmp_path, content_type, status):
    # Read as UTF-8 anyway, a UTF-16 body was "not valid JSON: str is not valid UTF-8".
    body = BATCH.decode().encode("utf-16") if "utf-16" in content_type else BATCH
    headers = {"content-type": content_type}
    response = _request(_app(tmp_path, Counting()), "POST", "/v1/events", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert "charset" in response.json()["error"] and "UTF-8" in response.json()["error"]


def _timed_app(tmp_path, told: list[tuple[dict[str, str], float]], **values: Any) -> Any:
    settings = Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl", **values)

    def answered(attributes: tuple[tuple[str, str], ...], seconds: float) -> None:
        told.append((dict(attributes), seconds))

    def boom(_accept: str) -> tuple[bytes, str]:
        raise RuntimeError("the exposition failed")

    return create_app(Counting(), settings, metrics=boom, readiness=lambda: {"ready": True}, answered=answered)


@pytest.mark.parametrize(
    ("method", "path", "body", "attributes"),
    [
        ("POST", "/v1/events", BATCH, {"http.route": "/v1/events", "http.response.status_code": "200"}),
        ("POST", "/v1/events/", BATCH, {"http.route": "/v1/events", "http.response.status_code": "200"}),
        ("POST", "/v1/events", b"{not json", {"http.route": "/v1/events", "http.response.status_code": "400"}),
        ("GET", "/v1/events", b"", {"http.route": "/v1/events", "http.response.status_code": "405"}),
        ("GET", "/healthz", b"", {"http.route": "/healthz", "http.response.status_code": "200"}),
        ("POST", "/v1/runs/r1/close", b"", {"http.route": "/v1/runs/{id}/close", "http.response.status_code": "404"}),
        ("GET", "/nothing/here", b"", {"http.response.status_code": "404"}),
        (
            "PURGE",
            "/healthz",
            b"",
            {"http.request.method": "_OTHER", "http.route": "/healthz", "http.response.status_code": "405"},
        ),
    ],
)
def test_every_request_is_timed_by_its_method_route_and_status(tmp_path, method, path, body, attributes):
    told: list[tuple[dict[str, str], float]] = []
    app = _timed_app(tmp_path, told)
    _request(app, method, path, content=body, headers={"content-type": "application/json"})
    ((described, seconds),) = told
    assert described == {"http.request.method": method, "url.scheme": "http"} | attributes
    assert seconds > 0


def test_a_request_a_route_failed_on_is_timed_with_what_it_raised(tmp_path):
    told: list[tuple[dict[str, str], float]] = []
    app = _timed_app(tmp_path, told)
    with pytest.raises(RuntimeError):  # Starlette answers 500 and raises on, for the server to log
        _request(app, "GET", "/metrics")
    ((described, _seconds),) = told
    assert described == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.route": "/metrics",
        "http.response.status_code": "500",
        "error.type": "RuntimeError",
    }


def test_a_producer_gone_before_its_batch_was_whole_is_timed_without_an_answer(tmp_path):
    told: list[tuple[dict[str, str], float]] = []
    messages = [{"type": "http.request", "body": BATCH[:5], "more_body": True}, {"type": "http.disconnect"}]
    _call(_timed_app(tmp_path, told), messages, [])
    ((described, _seconds),) = told
    assert described == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "http.route": "/v1/events",
        "error.type": "client_disconnected",
    }


def test_a_batch_path_of_its_own_is_the_route_the_requests_are_timed_by(tmp_path):
    told: list[tuple[dict[str, str], float]] = []
    app = _timed_app(tmp_path, told, path="/api/events/")
    _request(app, "POST", "/api/events", content=BATCH, headers={"content-type": "application/json"})
    assert told[0][0]["http.route"] == "/api/events"


def test_a_batch_refused_whole_is_told_in_the_log_at_most_once_a_minute(tmp_path, caplog):
    app = _app(tmp_path, Counting(), max_batch_events=1)
    too_many = orjson.dumps({"events": [{}, {}]})
    with caplog.at_level(logging.WARNING, logger="otel_bridge.receivers.http"):
        for body in (too_many, b"{not json", too_many):
            _request(app, "POST", "/v1/events", content=body, headers={"content-type": "application/json"})
        _request(app, "POST", "/v1/events", content=BATCH, headers={"content-type": "application/json"})
    (told,) = [r.getMessage() for r in caplog.records]
    assert told.startswith("refused a batch from 127.0.0.1 (413): batch of 2 events is over the limit of 1")
    assert "re-sends it three times, then drops it" in told


@pytest.mark.parametrize(
    ("headers", "offered"),
    [
        ({}, "no credential"),
        ({"x-api-key": "guess"}, "a key in X-API-KEY that matches none"),
        ({"authorization": "Bearer guess"}, "a bearer token that matches none"),
        ({"authorization": "Basic Z3Vlc3M="}, "an Authorization that is no bearer token"),
    ],
)
def test_a_batch_refused_for_its_credential_is_told_with_what_it_offered_never_the_secret(
    tmp_path, caplog, headers, offered
):
    # A producer whose credential is missing or wrong loses its batches: the runbook asks from where.
    app = _app(tmp_path, Counting(), api_key="s3cret")
    with caplog.at_level(logging.WARNING, logger="otel_bridge.receivers.http"):
        for _ in range(3):  # a producer's re-sends, or a scanner: told once a minute at most
            answer = _request(app, "POST", "/v1/events", content=BATCH, headers=headers)
            assert answer.status_code == 401
        _request(app, "POST", "/v1/events", content=BATCH, headers={"x-api-key": "s3cret"})
    (told,) = [r.getMessage() for r in caplog.records]
    assert told == f"refused a batch from 127.0.0.1 (401): {offered}; a producer re-sends it three times, then drops it"
    assert "guess" not in told


def test_a_batch_refused_whole_through_a_proxy_is_told_with_the_producer_it_forwarded_for(tmp_path, caplog):
    app = _app(tmp_path, Counting())
    headers = {"content-type": "application/json", "x-forwarded-for": "203.0.113.7, 10.0.0.2"}
    with caplog.at_level(logging.WARNING, logger="otel_bridge.receivers.http"):
        _request(app, "POST", "/v1/events", content=b"{not json", headers=headers)
    (told,) = [r.getMessage() for r in caplog.records]
    assert told.startswith("refused a batch from 203.0.113.7 through 127.0.0.1 (400): body is not valid JSON")


class Raising(Counting):
    """A consumer that raises `error` for its first `times` batches, then takes them."""

    def __init__(self, times: int, error: Exception) -> None:
        super().__init__()
        self.times, self.error = times, error

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        if self.times:
            self.times -= 1
            raise self.error
        return super().ingest(events, producer=producer)


def _posted(tmp_path, consumer: Counting, batches: int) -> list[int]:
    """`batches` empty batches POSTed to an app in front of `consumer`: the status of each answer."""
    settings = Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl")
    app = create_app(consumer, settings, metrics=lambda _a: (b"", "text/plain"), readiness=dict)
    headers = {"content-type": "application/json"}
    return [_request(app, "POST", "/v1/events", content=BATCH, headers=headers).status_code for _ in range(batches)]


def test_batches_refused_for_now_are_told_once_not_at_every_request_and_then_when_they_are_taken_again(
    tmp_path, caplog
):
    # Producers re-send every refused batch three times: one warning a request was a line a second per
    # producer for as long as the backend was away.
    with caplog.at_level(logging.INFO, logger="otel_bridge.receivers.http"):
        answers = _posted(tmp_path, Raising(5, Backpressure("1000000 spans wait for export")), 7)
    assert answers == [503] * 5 + [200] * 2
    told = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert told[0] == ("WARNING", "export backlog full, asking the producer to retry: 1000000 spans wait for export")
    assert told[1][0] == "INFO" and told[1][1].startswith("taking batches again, after 0 s and 5 refused")
    assert len(told) == 2


def test_a_fault_while_storing_is_told_with_its_traceback_once_not_at_every_request(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="otel_bridge.receivers.http"):
        answers = _posted(tmp_path, Raising(4, KeyError("a bug")), 5)
    assert answers == [503] * 4 + [200]  # nothing was stored: the producer's re-send is safe
    first, then = caplog.records
    assert (first.levelname, first.getMessage()) == ("ERROR", "storing a batch failed; retrying")
    assert first.exc_info is not None and first.exc_info[0] is KeyError
    assert then.getMessage() == "storing a batch works again, after 4 failures"


def test_the_thread_pools_backend_is_imported_as_the_app_starts_not_at_its_first_batch(tmp_path):
    # anyio imports its asyncio backend at the first hand-over to a thread: an import opens files, and a bridge
    # out of file descriptors failed there the first batch, dead letter or scrape it handed over.
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from otel_bridge.config import Settings
        from otel_bridge.receivers.http import create_app
        settings = Settings(dead_letter={str(tmp_path / "dl.jsonl")!r}, span_dead_letter={str(tmp_path / "ds.jsonl")!r})
        app = create_app(None, settings, metrics=lambda _a: (b"", "text/plain"), readiness=lambda: {{"ready": True}})

        async def started():
            async with app.app.router.lifespan_context(app.app):
                return "anyio._backends._asyncio" in sys.modules

        print(asyncio.run(started()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "True", done.stderr
