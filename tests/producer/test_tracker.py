"""The Python HttpBatchTracker keeps the engine's contract (a real HTTP server on 127.0.0.1)."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from builders import WorkflowRun

from otel_bridge.producer.tracker import HttpBatchTracker


class _Endpoint:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                endpoint.bodies.append(self.rfile.read(int(self.headers["content-length"])))
                endpoint.headers.append(dict(self.headers))
                status = endpoint.answers.pop(0) if endpoint.answers else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    e = _Endpoint([])
    yield e
    e.server.shutdown()


def _tracker(endpoint: _Endpoint, **kwargs) -> HttpBatchTracker:
    return HttpBatchTracker(endpoint.url, "staging", "shop", initial_delay_ms=10, **kwargs)


def test_flush_posts_the_envelope_enriched_with_env_and_service_key(endpoint):
    tracker = _tracker(endpoint, headers={"X-API-KEY": "k"})
    for event in WorkflowRun(env="x", service="y").started().step_started("a").events:
        tracker.emit(event)
    assert tracker.pending() == 2
    assert tracker.flush()
    body = json.loads(endpoint.bodies[0])
    assert list(body) == ["events"] and len(body["events"]) == 2
    assert {(e["env"], e["serviceKey"]) for e in body["events"]} == {("staging", "shop")}
    assert endpoint.headers[0]["X-API-KEY"] == "k"
    assert tracker.pending() == 0


def test_a_full_buffer_flushes_by_itself(endpoint):
    tracker = _tracker(endpoint, batch_size=3)
    for event in WorkflowRun().started().step_started("a").step_started("b").step_started("c").events:
        tracker.emit(event)
    assert len(endpoint.bodies) == 1 and tracker.pending() == 1


def test_a_failed_post_is_resent_identically_then_the_batch_is_dropped(endpoint):
    endpoint.answers = [503, 400, 500, 502]
    tracker = _tracker(endpoint)
    tracker.emit(WorkflowRun().started().events[0])
    assert not tracker.flush()
    assert len(endpoint.bodies) == 4 and len(set(endpoint.bodies)) == 1
    assert (tracker.stats.retries, tracker.stats.dropped_events) == (3, 1)


def test_a_retry_that_succeeds_delivers_the_batch(endpoint):
    endpoint.answers = [503]
    tracker = _tracker(endpoint)
    tracker.emit(WorkflowRun().started().events[0])
    assert tracker.flush()
    assert (tracker.stats.retries, tracker.stats.events) == (1, 1)
