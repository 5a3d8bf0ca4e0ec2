"""A batch is stored on the server's event loop when the bridge says so, otherwise in a worker
thread while the loop goes on answering (in-process, httpx's ASGI transport)."""

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from otel_bridge.config import Settings
from otel_bridge.consumer import IngestReport
from otel_bridge.receivers.http import create_app

BATCH = {"events": [{"type": "x"}] * 6}


class Recording:
    def __init__(self, release: threading.Event | None = None) -> None:
        self.on_loop: list[bool] = []
        self.release = release

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        if self.release is not None:
            assert self.release.wait(10)
        return IngestReport(accepted=len(events))


def _app(tmp_path, consumer: Recording, inline) -> Any:
    settings = Settings(dead_letter=tmp_path / "dl.jsonl", span_dead_letter=tmp_path / "ds.jsonl")
    return create_app(
        consumer,
        settings,
        metrics=lambda _a: (b"", "text/plain"),
        readiness=lambda: {"ready": True},
        ingest_inline=inline,
    )


async def _post(app: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
        return await client.post("/v1/events", json=BATCH)


def test_a_batch_the_bridge_takes_inline_is_stored_on_the_event_loop(tmp_path):
    consumer = Recording()
    asked: list[int] = []
    app = _app(tmp_path, consumer, lambda n: asked.append(n) or True)
    answer = asyncio.run(_post(app))
    assert answer.json()["accepted"] == 6
    assert asked == [6]
    assert consumer.on_loop == [True]


def test_any_other_batch_is_stored_in_a_worker_while_the_loop_answers_others(tmp_path):
    release = threading.Event()
    consumer = Recording(release)
    app = _app(tmp_path, consumer, lambda _n: False)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            storing = asyncio.create_task(client.post("/v1/events", json=BATCH))
            health = await asyncio.wait_for(client.get("/readyz"), 10)  # answered while the batch waits
            release.set()
            return await storing, health

    stored, health = asyncio.run(scenario())
    assert health.status_code == 200
    assert stored.json()["accepted"] == 6
    assert consumer.on_loop == [False]
