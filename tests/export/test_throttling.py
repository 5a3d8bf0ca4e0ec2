"""A backend that throttles is left for as long as it asks (OTLP: HTTP `Retry-After`, gRPC `RetryInfo`),
one whose quota is exhausted is waited for, and one that takes smaller requests than the bridge makes
gets smaller ones: nothing is asked again too soon, nothing waits for ever, nothing is set aside."""

import logging
import threading
import time

import grpc
import pytest
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

from otel_bridge.correlate.outputs import SpanKind, SpanRecord
from otel_bridge.export import otlp
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.outbox_drain import OutboxDrain
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.state.sqlite_store import SqliteStore


def _span(n: int, payload_chars: int = 10) -> bytes:
    record = SpanRecord(
        trace_id=b"\x01" * 16,
        span_id=n.to_bytes(8, "big"),
        parent_span_id=None,
        name=f"s{n}",
        kind=SpanKind.INTERNAL,
        start_ns=1,
        end_ns=2,
        attributes={f"a{i}": "x" * 1000 for i in range(payload_chars // 1000)},
    )
    return encode_span(record, attribute_limit=4096)


class Draining:
    """An outbox of `spans` drained by the bridge's own loop, over a real OTLP sender to `endpoint`."""

    def __init__(self, tmp_path, monkeypatch, protocol: str, endpoint: str, spans: list[bytes]) -> None:
        for name in ("ENDPOINT", "TIMEOUT", "HEADERS", "COMPRESSION"):
            for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_"):
                monkeypatch.delenv(prefix + name, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        # Shorter than the waits asked: the exporter gives up on the request at once, the drain waits.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
        self.store = SqliteStore(tmp_path / "s.db")
        self.store.run(lambda tx: tx.outbox_add(("svc\x1fenv", span) for span in spans))
        self.sender = otlp.trace_sender()
        self.told: list[tuple[bool, str]] = []
        self.dead = tmp_path / "dead-spans.jsonl"
        self.drain = OutboxDrain(
            self.store, self.sender, MetricsHub(), 512, 0.05, "t",
            dead_spans=DeadLetters(self.dead, 10**7, 2), on_result=lambda ok, why: self.told.append((ok, why)),
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.drain.run, args=(self._stop,), daemon=True)

    def __enter__(self) -> "Draining":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sender.shutdown()
        self.store.close()

    def until_empty(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.store.outbox_depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.store.outbox_depth() == 0


def _each_sent_once(got, draining: Draining) -> bool:
    """Every span delivered, each once, but after a request that failed otherwise than by the throttling
    (its answer later than the exporter's 1 s, on a loaded machine): taken, and sent again, the same spans
    (at least once, the same ids: a backend keeps one)."""
    other = [why for ok, why in draining.told if not ok and not why.startswith(("gRPC UNAVAILABLE", "HTTP 429"))]
    return len(got.unique_spans()) == 20 and (len(got.spans) == 20 or bool(other))


def _as_sent(got, draining: Draining) -> str:
    """What a failed `_each_sent_once` met: the spans received, once and in all, and each request's result."""
    return f"{len(got.unique_spans())} spans, {len(got.spans)} received; told {draining.told}"


def test_a_backend_asking_to_wait_is_asked_again_once_the_wait_is_over(tmp_path, monkeypatch, otlp):
    protocol, receiver = otlp
    got = receiver.received
    # Throttled for a little less than it asks: a request made when asked is taken; one made sooner,
    # as the drain's own backoff did (0.5, 1, 2 s), is refused again.
    got.asks, got.throttled_until = 3.0, time.monotonic() + 2.9
    with Draining(tmp_path, monkeypatch, protocol, receiver.endpoint, [_span(n) for n in range(20)]) as draining:
        draining.until_empty()
    assert _each_sent_once(got, draining), _as_sent(got, draining)
    assert len(got.throttled_at) == 1
    (ok, why), *_ = draining.told
    assert not ok and why.endswith(", the backend asks to wait 3 s")
    assert why.startswith("HTTP 429" if protocol == "http/protobuf" else "gRPC UNAVAILABLE")


def test_a_stop_keeps_to_the_wait_asked_and_leaves_the_spans_for_the_next_start(tmp_path, monkeypatch, otlp_http):
    got = otlp_http.received
    got.asks, got.throttled_until = 30.0, time.monotonic() + 60
    draining = Draining(tmp_path, monkeypatch, "http/protobuf", otlp_http.endpoint, [_span(n) for n in range(5)])
    assert draining.drain.export_once() is None  # the export loop's last round: asked to wait 30 s
    assert draining.drain.drain(timeout=5) is False  # the stop's drain: the wait is past its timeout
    assert len(got.throttled_at) == 1 and draining.store.outbox_depth() == 5
    draining.sender.shutdown()
    draining.store.close()


def test_a_backend_throttling_without_saying_how_long_is_asked_again_with_backoff(tmp_path, monkeypatch, otlp):
    protocol, receiver = otlp
    got = receiver.received
    got.throttled_until = time.monotonic() + 1.0
    with Draining(tmp_path, monkeypatch, protocol, receiver.endpoint, [_span(n) for n in range(20)]) as draining:
        draining.until_empty()
    assert _each_sent_once(got, draining), _as_sent(got, draining)
    assert len(got.throttled_at) >= 1
    assert not any("asks to wait" in why for _ok, why in draining.told)


def test_an_exhausted_quota_is_waited_for_and_no_span_is_set_aside(tmp_path, monkeypatch, otlp_grpc):
    # The specification calls RESOURCE_EXHAUSTED without RetryInfo final: taken so, every span was set
    # aside, one request each, for as long as the quota lasted.
    got = otlp_grpc.received
    got.code, got.throttled_until = grpc.StatusCode.RESOURCE_EXHAUSTED, time.monotonic() + 1.0
    with Draining(tmp_path, monkeypatch, "grpc", otlp_grpc.endpoint, [_span(n) for n in range(20)]) as draining:
        draining.until_empty()
    assert len(got.spans) == 20 and got.throttled_at
    assert draining.drain.set_aside == 0 and not draining.dead.exists()


def test_an_exhausted_quota_with_retry_info_is_left_as_long_as_it_asks(tmp_path, monkeypatch, otlp_grpc):
    got = otlp_grpc.received
    got.code, got.asks, got.throttled_until = grpc.StatusCode.RESOURCE_EXHAUSTED, 2.5, time.monotonic() + 2.4
    with Draining(tmp_path, monkeypatch, "grpc", otlp_grpc.endpoint, [_span(n) for n in range(5)]) as draining:
        draining.until_empty()
    assert len(got.spans) == 5 and len(got.throttled_at) == 1
    assert draining.told[0] == (
        False,
        "gRPC RESOURCE_EXHAUSTED: throttled for the test, the backend asks to wait 2.5 s",
    )


@pytest.mark.parametrize("protocol", ["http/protobuf", "collector's http/protobuf", "grpc"])
def test_a_backend_taking_smaller_requests_gets_smaller_ones_and_every_span(tmp_path, monkeypatch, caplog, protocol):
    # A proxy's body limit (nginx's 1 MiB: a 413), the Collector's max_request_body_size (a 400 that says why)
    # or a gRPC server's message limit below the bridge's 3.5 MB: refused for ever as the same request, or
    # halved anew at every round.
    limit = 64 * 1024
    if protocol == "grpc":
        receiver: OtlpHttpReceiver | OtlpGrpcReceiver = OtlpGrpcReceiver(max_receive_bytes=limit)
    else:
        receiver = OtlpHttpReceiver()
        receiver.max_body_bytes = limit
        receiver.too_large_as_collector = protocol.startswith("collector")
        protocol = "http/protobuf"
    spans = [_span(n, payload_chars=4000) for n in range(100)]  # ~400 KB in all
    try:
        with (
            caplog.at_level(logging.WARNING, logger="otel_bridge.export.outbox_drain"),
            Draining(tmp_path, monkeypatch, protocol, receiver.endpoint, spans) as draining,
        ):
            draining.until_empty(timeout=60)
    finally:
        receiver.close()
    assert sorted(s.name for s in receiver.received.spans) == sorted(f"s{n}" for n in range(100))
    assert draining.drain.set_aside == 0 and not draining.dead.exists()
    told = [r.getMessage() for r in caplog.records if "for its size" in r.getMessage()]
    assert told and "set max_export_bytes to what it takes" in told[0]
    # Learnt once: the requests after it are made small enough, not refused and halved anew each round.
    assert len(told) <= 4
