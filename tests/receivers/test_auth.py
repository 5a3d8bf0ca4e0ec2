"""Who may post and scrape: the credential rules of the endpoint, in-process (httpx's ASGI transport)."""

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from otel_bridge.config import Settings
from otel_bridge.consumer import IngestReport
from otel_bridge.receivers.http import create_app

UTF8_KEY = "clé-секрет-🔑"


class Counting:
    def __init__(self) -> None:
        self.batches = 0

    def ingest(self, events: Sequence[Any]) -> IngestReport:
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
