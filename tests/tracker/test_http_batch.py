"""The HTTP batch trackers keep the engine's contract: against a real HTTP server on 127.0.0.1, and the real bridge."""

import asyncio
import decimal
import gzip
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from bridge_process import BridgeProcess, free_port
from builders import WorkflowRun

from otel_bridge import trace_id_for
from otel_bridge.tracker import AsyncHttpBatchTracker, HttpBatchTracker


class _Endpoint:
    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.delay = 0.0  # seconds before each answer
        self.retry_after = ""  # sent with every refusal when set
        self.said = b""  # the body of every refusal
        self.arrived: list[float] = []  # when each POST came (monotonic)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.trackers: list[HttpBatchTracker] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                endpoint.arrived.append(time.monotonic())
                endpoint.bodies.append(self.rfile.read(int(self.headers["content-length"])))
                endpoint.headers.append(dict(self.headers))
                status = endpoint.answers.pop(0) if endpoint.answers else 200
                time.sleep(endpoint.delay)
                self.send_response(status)
                if status >= 400 and endpoint.retry_after:
                    self.send_header("retry-after", endpoint.retry_after)
                said = endpoint.said if status >= 400 else b""
                self.send_header("content-length", str(len(said)))
                self.end_headers()
                self.wfile.write(said)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    e = _Endpoint([])
    yield e
    for tracker in e.trackers:  # closed while their endpoint listens: not at the test process's exit
        tracker.close()
    e.server.shutdown()


def _tracker(endpoint: _Endpoint, **kwargs) -> HttpBatchTracker:
    kwargs.setdefault("flush_interval_seconds", None)
    tracker = HttpBatchTracker(endpoint.url, "staging", "shop", initial_delay_ms=10, **kwargs)
    endpoint.trackers.append(tracker)
    return tracker


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


def test_a_dropped_batch_is_logged_with_where_it_went_and_what_the_last_answer_said(endpoint, caplog):
    endpoint.answers = [503, 404]
    endpoint.said = b'{"error": "no such route"}'
    tracker = _tracker(endpoint, max_attempts=1)
    tracker.emit(WorkflowRun().started().events[0])
    with caplog.at_level(logging.ERROR, logger="otel_bridge.tracker.http_batch"):
        assert not tracker.flush()
    (record,) = caplog.records
    assert endpoint.url in record.getMessage()
    assert '404 Not Found: {"error": "no such route"}' in record.getMessage()


def test_a_batch_dropped_for_want_of_a_bridge_is_logged_with_the_error_and_no_password(caplog):
    tracker = HttpBatchTracker(
        f"http://user:secret@127.0.0.1:{free_port()}/v1/events",  # nothing listens
        "staging",
        "shop",
        max_attempts=0,
        flush_interval_seconds=None,
    )
    tracker.emit(WorkflowRun().started().events[0])
    with caplog.at_level(logging.WARNING, logger="otel_bridge.tracker.http_batch"):
        assert not tracker.flush()
    assert "ConnectError" in caplog.records[-1].getMessage()
    assert all("secret" not in r.getMessage() and "user:***@" in r.getMessage() for r in caplog.records)
    tracker.close()


@pytest.mark.parametrize("flavour", [HttpBatchTracker, AsyncHttpBatchTracker])
@pytest.mark.parametrize(
    ("given", "told"),
    [
        # Every batch re-sent for seconds and dropped, in the producer's log at best:
        ({"endpoint": "127.0.0.1:4380"}, "endpoint '127.0.0.1:4380': is not an http:// or https:// URL"),
        ({"endpoint": "http://user:s3cret@[::1"}, "endpoint 'http://***@[::1': Invalid IPv6 URL"),
        ({"endpoint": "https://"}, "endpoint 'https://': it names no host"),
        ({"timeout_seconds": 0}, "timeout_seconds must be above 0 and at most a day, not 0"),
        ({"headers": {"api key": "s3cret"}}, "header 'api key' is no HTTP header a request can carry"),
        ({"headers": {"x-api-key": "s3cret\n"}}, "header 'x-api-key' is no HTTP header a request can carry"),
        # Every event rejected by the bridge:
        ({"service_key": "shop\tus"}, "service_key 'shop\\tus' is none the bridge takes"),
        # The timer thread died with an OverflowError; a negative backoff failed every re-send's sleep:
        ({"flush_interval_seconds": float("inf")}, "flush_interval_seconds must be at most a day, not inf"),
        ({"initial_delay_ms": -1}, "initial_delay_ms must be 0 or more and at most a day, not -1"),
        # Every batch refused (415) by a bridge that takes gzip alone:
        ({"compression": "br"}, "compression must be 'gzip' or None, not 'br'"),
    ],
)
def test_what_no_bridge_or_clock_could_work_with_is_a_value_error_naming_it(flavour, given, told):
    arguments = {"endpoint": "http://127.0.0.1:4380/v1/events", "env": "staging", "service_key": "shop"} | given
    with pytest.raises(ValueError) as raised:
        flavour(**arguments)
    assert str(raised.value).startswith(told) and "s3cret" not in str(raised.value)


def test_an_event_emitted_after_close_is_dropped_at_once_counted_and_told_once(endpoint, caplog):
    # Buffered, it went through the retries against the closed client at the next flush (7 s of the
    # workflow's time), and a buffer nobody flushed any more only grew.
    tracker = _tracker(endpoint, batch_size=1)
    tracker.close()
    with caplog.at_level(logging.WARNING, logger="otel_bridge.tracker"):
        for event in WorkflowRun().started().step_started("a").events:
            tracker.emit(event)
    assert endpoint.bodies == [] and tracker.pending() == 0
    assert (tracker.stats.dropped_events, tracker.stats.posts) == (2, 0)
    assert len([r for r in caplog.records if "after close()" in r.getMessage()]) == 1


def test_the_asyncio_flavour_drops_an_event_emitted_after_close_and_starts_no_timer(endpoint):
    async def go() -> AsyncHttpBatchTracker:
        tracker = AsyncHttpBatchTracker(endpoint.url, "staging", "shop", flush_interval_seconds=0.05)
        await tracker.close()
        await tracker.emit(WorkflowRun().started().events[0])
        await asyncio.sleep(0.2)  # a timer started again would have posted by now
        return tracker

    tracker = asyncio.run(go())
    assert endpoint.bodies == [] and tracker.stats.dropped_events == 1


def test_a_retry_that_succeeds_delivers_the_batch(endpoint):
    endpoint.answers = [503]
    tracker = _tracker(endpoint)
    tracker.emit(WorkflowRun().started().events[0])
    assert tracker.flush()
    assert (tracker.stats.retries, tracker.stats.events) == (1, 1)


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_a_refusal_asking_to_wait_longer_than_the_backoff_is_waited_for(endpoint, flavour):
    # The bridge answers 503 with Retry-After (2 s when its store is busy, 5 s when its backlog is full).
    endpoint.answers, endpoint.retry_after = [503], "1"
    event = WorkflowRun().started().events[0]
    if flavour == "sync":
        tracker = _tracker(endpoint)  # its own backoff: 10 ms
        tracker.emit(event)
        assert tracker.flush()
    else:

        async def produce() -> None:
            tracker = AsyncHttpBatchTracker(endpoint.url, "staging", "shop", initial_delay_ms=10)
            await tracker.emit(event)
            assert await tracker.flush()

        asyncio.run(produce())
    first, second = endpoint.arrived
    assert second - first >= 1.0


def test_a_timer_flushes_what_is_buffered(endpoint):
    with HttpBatchTracker(endpoint.url, "staging", "shop", flush_interval_seconds=0.1) as tracker:
        tracker.emit(WorkflowRun().started().events[0])
        deadline = time.monotonic() + 10
        while not endpoint.bodies and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(endpoint.bodies) == 1 and tracker.pending() == 0


def test_leaving_the_context_flushes(endpoint):
    with _tracker(endpoint) as tracker:
        tracker.emit(WorkflowRun().started().events[0])
    assert len(endpoint.bodies) == 1


def test_the_asyncio_flavour_batches_retries_and_drops_the_same_way(endpoint):
    endpoint.answers = [503, 200, 500, 500, 500, 500]

    async def produce() -> AsyncHttpBatchTracker:
        async with AsyncHttpBatchTracker(
            endpoint.url, "staging", "shop", initial_delay_ms=10, batch_size=2, flush_interval_seconds=None
        ) as tracker:
            for event in WorkflowRun().started().step_started("a").step_started("b").events:
                await tracker.emit(event)
            assert await tracker.pending() == 1
        return tracker

    tracker = asyncio.run(produce())
    assert json.loads(endpoint.bodies[0]) == json.loads(endpoint.bodies[1])  # the identical re-send
    assert (tracker.stats.events, tracker.stats.dropped_events, tracker.stats.retries) == (2, 1, 4)


def test_the_asyncio_flavour_closed_while_its_timer_waits_for_an_answer_loses_nothing(endpoint):
    endpoint.delay = 0.5

    async def produce() -> AsyncHttpBatchTracker:
        tracker = AsyncHttpBatchTracker(endpoint.url, "staging", "shop", flush_interval_seconds=0.05)
        await tracker.emit(WorkflowRun().started().events[0])
        await asyncio.sleep(0.2)  # the timer took the batch out of the buffer; its POST is out
        await tracker.close()
        return tracker

    tracker = asyncio.run(produce())
    assert (tracker.stats.posts, tracker.stats.events, len(endpoint.bodies)) == (1, 1, 1)


def test_against_the_real_bridge_retries_deliver_when_it_comes_up_in_time(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    tracker = HttpBatchTracker(
        f"{bridge.url}/v1/events", "staging", "shop", initial_delay_ms=500, flush_interval_seconds=None
    )
    run = WorkflowRun().started().step_started("a").after(2).step_completed("a").completed()
    for event in run.events:
        tracker.emit(event)
    starter = threading.Timer(0.3, bridge.start)  # down for the first attempts (0 s, 0.5 s), up for a later one
    starter.start()
    try:
        assert tracker.flush()
        assert tracker.stats.retries >= 1 and tracker.stats.events == 4
        trace_id = trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
        otlp_http.received.wait_for(lambda: len(otlp_http.received.trace(trace_id)) == 2)
    finally:
        starter.join()
        tracker.close()
        bridge.close()


def test_a_compressed_batch_is_the_same_envelope_gzipped_and_says_so_in_both_flavours(endpoint):
    events = WorkflowRun().started().step_started("a").events
    tracker = _tracker(endpoint, compression="gzip")
    for event in events:
        tracker.emit(event)
    assert tracker.flush()

    async def produce() -> None:
        async with AsyncHttpBatchTracker(
            endpoint.url, "staging", "shop", flush_interval_seconds=None, compression="gzip"
        ) as tracker:
            for event in events:
                await tracker.emit(event)

    asyncio.run(produce())
    for body, headers in zip(endpoint.bodies, endpoint.headers, strict=True):
        assert headers["content-encoding"] == "gzip" and headers["content-type"] == "application/json"
        sent = json.loads(gzip.decompress(body))
        assert [e["eventId"] for e in sent["events"]] == [e["eventId"] for e in events]
    assert len(endpoint.bodies) == 2


def test_against_the_real_bridge_a_compressed_batch_is_taken_and_its_run_exported(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    run = WorkflowRun().started().step_started("a").after(2).step_completed("a").completed()
    try:
        with HttpBatchTracker(
            f"{bridge.url}/v1/events", "staging", "shop", flush_interval_seconds=None, compression="gzip"
        ) as tracker:
            for event in run.events:
                tracker.emit(event)
            assert tracker.flush()
            assert (tracker.stats.events, tracker.stats.retries, tracker.stats.dropped_events) == (4, 0, 0)
        trace_id = trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
        otlp_http.received.wait_for(lambda: len(otlp_http.received.trace(trace_id)) == 2)
    finally:
        bridge.close()


def test_against_a_bridge_down_for_longer_the_batch_is_dropped_counted_and_flush_returns(tmp_path):
    bridge_url = f"http://127.0.0.1:{free_port()}/v1/events"  # nothing listens
    tracker = HttpBatchTracker(
        bridge_url,
        "staging",
        "shop",
        max_attempts=2,
        initial_delay_ms=50,
        timeout_seconds=1,
        flush_interval_seconds=None,
    )
    tracker.emit(WorkflowRun().started().events[0])
    assert not tracker.flush()  # returns (bounded: 3 attempts of at most 1 s, 50 + 100 ms of backoff)
    assert (tracker.stats.posts, tracker.stats.retries) == (3, 2)
    assert (tracker.stats.dropped_batches, tracker.stats.dropped_events) == (1, 1)
    tracker.close()


def test_python_values_are_written_as_json_stringify_writes_a_javascript_producers(endpoint):
    tracker = _tracker(endpoint)
    started = WorkflowRun().started().events[0]
    at = datetime.fromisoformat(started["timestamp"])
    order = uuid.UUID(int=7)
    tracker.emit(started | {"timestamp": at, "input": {"amount": decimal.Decimal("1.50"), 3: "three", "order": order}})
    assert tracker.flush()
    (sent,) = json.loads(endpoint.bodies[0])["events"]
    assert datetime.fromisoformat(sent["timestamp"]) == at  # text the bridge reads, not a batch lost
    assert sent["input"] == {"amount": "1.50", "3": "three", "order": str(order)}


def test_an_event_that_cannot_be_written_as_json_is_dropped_alone_and_told(endpoint, caplog):
    tracker = _tracker(endpoint)
    loop: dict = {}
    loop["itself"] = loop
    first, second, third = WorkflowRun().started().step_started("a").step_started("b").events
    for event in (first, second | {"input": loop}, third | {"stepName": "b\ud83d"}):
        tracker.emit(event)
    assert not tracker.flush()  # not every event went
    assert len(endpoint.bodies) == 1 and tracker.stats.retries == 0  # no POST re-sent for what no POST mends
    sent = json.loads(endpoint.bodies[0])["events"]
    assert [e["eventId"] for e in sent] == [first["eventId"], third["eventId"]]
    assert sent[1]["stepName"] == "b\ufffd"  # a string sliced mid-emoji: as the in-process tracker stores it
    assert (tracker.stats.events, tracker.stats.dropped_events) == (2, 1)
    (told,) = [r.getMessage() for r in caplog.records if "cannot be written as JSON" in r.getMessage()]
    assert second["eventId"] in told


def test_what_the_real_bridge_rejects_is_logged_and_counted_and_nothing_is_raised_into_the_workflow(
    tmp_path, otlp_http, caplog
):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    tracker = HttpBatchTracker(f"{bridge.url}/v1/events", "staging", "shop", flush_interval_seconds=None)
    run = WorkflowRun().started().step_started("a").after(2).step_completed("a").completed()
    try:
        tracker.emit(None)  # type: ignore[arg-type]  # a producer's bug, not the workflow's failure
        for event in run.events:
            tracker.emit(event | {"timestamp": datetime.fromisoformat(event["timestamp"])})
        assert tracker.flush()
        tracker.emit(42)  # type: ignore[arg-type]
        assert tracker.flush()
        assert (tracker.stats.events, tracker.stats.rejected_events) == (6, 2)
        # One line for the first, then at most one a minute: a producer whose every event is rejected is not a flood.
        (told,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert "1 of 5 events" in told and "event 0" in told and "must be a JSON object, not null" in told
        trace_id = trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
        otlp_http.received.wait_for(lambda: len(otlp_http.received.trace(trace_id)) == 2)
    finally:
        tracker.close()
        bridge.close()


_UNCLOSED = textwrap.dedent(
    """
        import asyncio, json, sys
        from otel_bridge.tracker import AsyncHttpBatchTracker, HttpBatchTracker

        url, flavour, events = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        if flavour == "threads":
            tracker = HttpBatchTracker(url, "staging", "shop", flush_interval_seconds=None)
            for event in events:
                tracker.emit(event)
        else:
            async def main():
                tracker = AsyncHttpBatchTracker(url, "staging", "shop", flush_interval_seconds=None)
                for event in events:
                    await tracker.emit(event)
                # never closed, and nothing refers to it once the event loop has ended

            asyncio.run(main())
    """
)


def _exit_unclosed(url: str, flavour: str, events: list[dict]) -> subprocess.CompletedProcess[str]:
    """A producer that emits `events` to a tracker of `url` and exits without closing it."""
    command = [sys.executable, "-c", _UNCLOSED, url, flavour, json.dumps(events)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flavour", ["threads", "asyncio"])
def test_a_producer_that_exits_without_closing_its_tracker_still_sends_what_it_buffered(endpoint, flavour):
    run = WorkflowRun().started().step_started("a")
    done = _exit_unclosed(endpoint.url, flavour, run.events)
    assert done.returncode == 0, done.stderr
    (body,) = endpoint.bodies
    assert [e["eventId"] for e in json.loads(body)["events"]] == [e["eventId"] for e in run.events]


@pytest.mark.parametrize("flavour", ["threads", "asyncio"])
def test_at_exit_a_bridge_that_is_away_gets_one_attempt_not_the_backoffs(flavour):
    done = _exit_unclosed(f"http://127.0.0.1:{free_port()}/v1/events", flavour, WorkflowRun().started().events)
    assert done.returncode == 0, done.stderr
    assert "dropped a batch of 1 events after 1 attempts" in done.stderr  # not 4, 1 + 2 + 4 s of the exit


@pytest.mark.parametrize("flavour", ["threads", "asyncio"])
def test_a_batch_too_large_for_the_bridge_is_sent_in_halves_and_only_the_event_too_large_alone_is_dropped(
    tmp_path, otlp_http, caplog, flavour
):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, max_body_bytes="20000").start()
    url = f"{bridge.url}/v1/events"
    runs = [WorkflowRun().started().step_started("a").after(2).step_completed("a").completed() for _ in range(3)]
    events = [event for run in runs for event in run.events]
    events[5] = events[5] | {"input": "x" * 30_000}  # the second run's step start, larger than the bridge takes
    try:
        if flavour == "threads":
            tracker = HttpBatchTracker(url, "staging", "shop", initial_delay_ms=10, flush_interval_seconds=None)
            for event in events:
                tracker.emit(event)
            assert not tracker.flush()
            tracker.close()
        else:

            async def produce() -> AsyncHttpBatchTracker:
                tracker = AsyncHttpBatchTracker(
                    url, "staging", "shop", initial_delay_ms=10, flush_interval_seconds=None
                )
                for event in events:
                    await tracker.emit(event)
                assert not await tracker.flush()
                await tracker.close()
                return tracker

            tracker = asyncio.run(produce())
        assert (tracker.stats.events, tracker.stats.dropped_events, tracker.stats.retries) == (11, 1, 0)
        (told,) = [r.getMessage() for r in caplog.records if "dropped a batch" in r.getMessage()]
        assert "of 1 events after 1 attempts" in told and "413" in told
        for run in (runs[0], runs[2]):
            trace_id = trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
            otlp_http.received.wait_for(lambda trace_id=trace_id: len(otlp_http.received.trace(trace_id)) == 2)
    finally:
        bridge.close()


def test_a_producer_that_only_posts_does_not_load_the_bridge_with_its_tracker():
    # The in-process tracker is the whole bridge (its pipeline, the SDK, gRPC, pydantic, Redis):
    # importing the package for HttpBatchTracker took ~0.5 s of a producer's start, ~0.12 s now.
    code = """
import sys
from otel_bridge.tracker import HttpBatchTracker
heavy = ("otel_bridge.runtime", "opentelemetry.sdk", "grpc", "pydantic", "pydantic_settings", "redis",
         "importlib.metadata")
print(sorted(name for name in heavy if name in sys.modules))
from otel_bridge.tracker import OtelTracker, WorkflowEvents  # still there when asked for
print(OtelTracker.__module__, WorkflowEvents.__module__)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded, modules = done.stdout.splitlines()
    assert loaded == "[]"
    assert modules == "otel_bridge.tracker.in_process otel_bridge.tracker.events"


def test_the_wait_a_refusal_asks_for_is_drawn_up_to_half_as_long_again_the_engines_backoff_as_it_is():
    # Every producer the bridge refuses is asked for the same wait: kept to the letter, they all came back at once.
    tracker = HttpBatchTracker("http://127.0.0.1:9/v1/events", "staging", "shop", flush_interval_seconds=None)
    config = tracker._c
    tracker.close()
    asked = [config.delay(1, asked=5.0) for _ in range(200)]
    assert min(asked) >= 5.0 and max(asked) <= 7.5 and len(set(asked)) > 150
    assert [config.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]  # the engine's own, to the letter
    assert config.delay(3, asked=2.0) == 4.0  # a shorter wait asked: the backoff, as the engine's
