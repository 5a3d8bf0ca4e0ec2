"""Who may post and scrape: the credential rules of the endpoint, in-process (httpx's ASGI transport)."""

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from builders import WorkflowRun
from pydantic import ValidationError

from otel_bridge.config import Settings
from otel_bridge.consumer import IngestReport
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.observed import ObservedConsumer
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.http import create_app
from otel_bridge.state.sqlite_store import SqliteStore

UTF8_KEY = "clé-секрет-🔑"


class Counting:
    def __init__(self) -> None:
        self.batches = 0

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        self.batches += 1
        return IngestReport(accepted=len(events))


def _answer(settings: Settings, method: str, path: str, **kwargs: Any) -> httpx.Response:
    app = create_app(Counting(), settings, metrics=lambda _accept: (b"m 1\n", "text/plain"), readiness=dict)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _settings(tmp_path, **values: Any) -> Settings:
    return Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl", **values)


def test_a_non_ascii_api_key_matches_the_utf8_bytes_a_client_sends(tmp_path):
    settings = _settings(tmp_path, api_key=UTF8_KEY)
    right = {"x-api-key": UTF8_KEY.encode()}
    wrong = {"x-api-key": "clé-секрет".encode()}
    assert _answer(settings, "POST", "/v1/events", json={"events": []}, headers=right).status_code == 200
    assert _answer(settings, "POST", "/v1/events", json={"events": []}, headers=wrong).status_code == 401


def test_a_non_ascii_bearer_token_matches_too(tmp_path):
    settings = _settings(tmp_path, bearer_token=UTF8_KEY)
    headers = {"authorization": b"Bearer " + UTF8_KEY.encode()}
    assert _answer(settings, "POST", "/v1/events", json={"events": []}, headers=headers).status_code == 200


@pytest.mark.parametrize("field", ["api_key", "bearer_token"])
def test_an_empty_secret_is_a_configuration_error_not_auth_off(tmp_path, field):
    with pytest.raises(ValidationError, match="empty"):
        _settings(tmp_path, **{field: " "})


def test_metrics_are_open_by_default_and_behind_the_credential_when_asked(tmp_path):
    headers = {"x-api-key": "k"}
    assert _answer(_settings(tmp_path, api_key="k"), "GET", "/metrics").status_code == 200
    guarded = _settings(tmp_path, api_key="k", metrics_auth=True)
    assert _answer(guarded, "GET", "/metrics").status_code == 401
    assert _answer(guarded, "GET", "/metrics", headers=headers).status_code == 200


def _told(settings: Settings, keys: Sequence[str]) -> list[str | None]:
    """The credential named for each POST carrying each of `keys` in `X-API-KEY`."""
    told: list[str | None] = []
    app = create_app(
        Counting(), settings, metrics=lambda _a: (b"", "text/plain"), readiness=dict, credentials=told.append
    )

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            for key in keys:
                await client.post("/v1/events", json={"events": []}, headers={"x-api-key": key})

    asyncio.run(go())
    return told


def test_while_rotating_the_retiring_keys_are_accepted_and_each_request_names_its_key(tmp_path):
    settings = _settings(tmp_path, api_key="new", retiring_api_keys="older, old")
    statuses = [
        _answer(settings, "POST", "/v1/events", json={"events": []}, headers={"x-api-key": key}).status_code
        for key in ("new", "old", "older", "oldest")
    ]
    assert statuses == [200, 200, 200, 401]
    # Named by their place, never by the secret: the operator retires `old` once its count stops growing.
    assert _told(settings, ["new", "old", "older", "oldest", "new"]) == [
        "api_key",
        "retiring_api_keys.2",
        "retiring_api_keys.1",
        None,
        "api_key",
    ]


def test_retiring_bearer_tokens_are_accepted_beside_the_current_one(tmp_path):
    settings = _settings(tmp_path, bearer_token="t2", retiring_bearer_tokens="t1")
    for token, status in (("t2", 200), ("t1", 200), ("t0", 401)):
        headers = {"authorization": f"Bearer {token}"}
        assert _answer(settings, "POST", "/v1/events", json={"events": []}, headers=headers).status_code == status


def test_without_a_credential_configured_nothing_is_told():
    assert _told(Settings(), ["anything"]) == []


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"retiring_api_keys": "old"}, "retiring_api_keys is set without api_key"),
        ({"retiring_bearer_tokens": "old"}, "retiring_bearer_tokens is set without bearer_token"),
    ],
)
def test_retiring_credentials_need_one_to_move_to(tmp_path, values, error):
    with pytest.raises(ValidationError, match=error):
        _settings(tmp_path, **values)


def test_retiring_keys_come_from_the_environment_comma_separated(monkeypatch):
    monkeypatch.setenv("OTEL_BRIDGE_API_KEY", "new")
    monkeypatch.setenv("OTEL_BRIDGE_RETIRING_API_KEYS", "old1,old2")
    assert [k.get_secret_value() for k in Settings().retiring_api_keys] == ["old1", "old2"]
    assert "old1" not in repr(Settings())  # secrets, as the current key is


def _producer_app(tmp_path, **values: Any) -> tuple[Any, Pipeline]:
    """The endpoint in front of a real pipeline, with the bridge's own key and a key for `shop` alone."""
    settings = _settings(
        tmp_path, state=str(tmp_path / "s.db"), api_key="bridge-key", producer_api_keys="shop=shop-key", **values
    )
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    app = create_app(
        ObservedConsumer("http", pipeline, pipeline.metrics),
        settings,
        metrics=lambda _a: (b"m 1\n", "text/plain"),
        readiness=dict,
        runs=lambda query, limit: ([r.as_dict() for r in pipeline.list_runs(query, limit=limit)[0]], 0),
        close=lambda id_, reason, jobs, service: [c.as_dict() for c in pipeline.close(id_, reason, jobs, service)],
        not_open=pipeline.not_open,
    )
    return app, pipeline


def _request(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _post(app: Any, events: list[dict[str, Any]], headers: dict[str, str]) -> httpx.Response:
    return _request(app, "POST", "/v1/events", json={"events": events}, headers=headers)


def test_a_producers_own_key_posts_its_events_and_no_other_producers(tmp_path):
    # One bridge for several teams: a key given to shop cannot write into billing's traces.
    app, pipeline = _producer_app(tmp_path)
    own = WorkflowRun("checkout", service="shop").started().step_started("pay").events
    forged = WorkflowRun("invoice", service="billing").started().events
    nameless = {k: v for k, v in WorkflowRun("x", service="shop").started().events[0].items() if k != "serviceKey"}

    answer = _post(app, [own[0], *forged, own[1], nameless], {"x-api-key": "shop-key"})

    assert answer.status_code == 200, answer.text
    told = answer.json()
    assert told["accepted"] == 2
    assert [(r["index"], r["eventId"], r["field"]) for r in told["rejected"]] == [
        (1, forged[0]["eventId"], "serviceKey"),
        (3, nameless["eventId"], "serviceKey"),
    ]
    assert told["rejected"][0]["error"] == (
        "serviceKey: this credential posts shop's events only; this event is 'billing''s"
    )
    assert "this event names no serviceKey" in told["rejected"][1]["error"]
    kept = [json.loads(line) for line in (tmp_path / "dl.jsonl").read_text().splitlines()]
    assert [letter["event"] for letter in kept] == [forged[0], nameless]  # offered again once mended
    assert {r.service for r in pipeline.list_runs(RunQuery())[0]} == {"shop"}


def test_the_bridges_own_key_posts_any_producers_events(tmp_path):
    app, _pipeline = _producer_app(tmp_path)
    events = [*WorkflowRun("a", service="shop").started().events, *WorkflowRun("b", service="billing").started().events]
    assert _post(app, events, {"x-api-key": "bridge-key"}).json()["accepted"] == 2
    # shop's key as a bearer token is taken too: its own event again (a duplicate), billing's not.
    told = _post(app, events, {"authorization": "Bearer shop-key"}).json()
    assert (told["duplicates"], [r["index"] for r in told["rejected"]]) == (1, [1])


def test_a_producers_key_lists_and_closes_its_own_runs_only_and_never_opens_guarded_metrics(tmp_path):
    # A team's on-call engineer closes its own stuck runs with its own key; another team's stay out of reach.
    app, pipeline = _producer_app(tmp_path, metrics_auth=True)
    shop = WorkflowRun("checkout", service="shop", workflow_id="wf-same").started().step_started("pay")
    billing = WorkflowRun("invoice", service="billing", workflow_id="wf-same").started().step_started("bill")
    pipeline.ingest([*shop.events, *billing.events])
    key = {"x-api-key": "shop-key"}

    listed = _request(app, "GET", "/v1/runs", headers=key).json()
    assert [run["service"] for run in listed["runs"]] == ["shop"] and listed["service"] == "shop"  # whose alone
    assert _request(app, "GET", "/v1/runs", params={"service": "billing"}, headers=key).status_code == 403
    refused = _request(app, "POST", "/v1/runs/wf-same/close", json={"service": "billing"}, headers=key)
    assert refused.status_code == 403 and "closes shop's runs only" in refused.json()["error"]
    closed = _request(app, "POST", "/v1/runs/wf-same/close", headers=key)  # the id is both's: shop's alone
    assert closed.status_code == 200, closed.text
    assert [c["run"]["service"] for c in closed.json()["closed"]] == ["shop"]
    assert [r.service for r in pipeline.list_runs(RunQuery())[0]] == ["billing"]

    assert _request(app, "GET", "/metrics", headers=key).status_code == 401
    assert _request(app, "GET", "/metrics", headers={"x-api-key": "bridge-key"}).status_code == 200
    both = _request(app, "GET", "/v1/runs", headers={"x-api-key": "bridge-key"}).json()
    assert [run["service"] for run in both["runs"]] == ["billing"] and "service" not in both


def test_each_producer_key_is_told_by_its_producer_a_second_one_while_rotating_by_its_place(tmp_path):
    settings = _settings(tmp_path, producer_api_keys="shop=old, billing=b, shop=new")
    assert _told(settings, ["old", "new", "b", "nope"]) == [
        "producer_api_keys.shop",
        "producer_api_keys.shop.1",
        "producer_api_keys.billing",
        None,
    ]


@pytest.mark.parametrize("given", ["shop", "=key", "shop=", "shop=k,billing"])
def test_producer_keys_that_are_not_pairs_are_a_configuration_error(tmp_path, given):
    with pytest.raises(ValidationError, match="is not serviceKey=key pairs"):
        _settings(tmp_path, producer_api_keys=given)


def test_with_a_credential_set_a_path_that_is_no_endpoint_is_401_to_a_stranger_and_404_to_a_producer(tmp_path, caplog):
    # An endpoint the internet reaches (a Worker's) meets scanners: their POSTs to paths of their own raised
    # BridgeBatchesRejected (404) as if a producer lost batches. A producer sends its key, and still hears where
    # batches go.
    told: list[str | None] = []
    answered: list[dict[str, str]] = []
    app = create_app(
        Counting(),
        _settings(tmp_path, api_key="k"),
        metrics=lambda _accept: (b"m 1\n", "text/plain"),
        readiness=dict,
        credentials=told.append,
        answered=lambda attributes, _seconds: answered.append(dict(attributes)),
    )

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            return [
                await client.post("/wp-login.php", content=b"log=admin"),
                await client.get("/.env"),
                await client.post("/events", json={"events": []}, headers={"x-api-key": "wrong"}),
                await client.post("/events", json={"events": []}, headers={"x-api-key": "k"}),
                await client.get("/healthz"),  # probes carry no credential, and are answered
            ]

    with caplog.at_level("WARNING", logger="otel_bridge.receivers.http"):
        stranger, dotenv, wrong_key, producer, health = asyncio.run(go())
    for answer in (stranger, dotenv, wrong_key):
        assert answer.status_code == 401 and answer.json() == {"error": "missing or wrong credential"}
    assert producer.status_code == 404
    assert producer.json() == {"error": "no endpoint /events: batches are posted to /v1/events"}
    assert health.status_code == 200
    assert told == []  # no producer's request was refused: BridgeRequestsUnauthorized counts none of these
    assert [a.get("http.response.status_code") for a in answered] == ["401", "401", "401", "404", "200"]
    (line,) = [r.getMessage() for r in caplog.records]  # the producer's lost batch alone is told
    assert line.startswith("refused a batch from 127.0.0.1 (404): POST /events is no endpoint")
