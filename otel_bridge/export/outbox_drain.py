"""Drains the span outbox over OTLP: a span leaves only once the backend took it, or refused it for good.

A request the backend refuses for good (HTTP 4xx, a non-retryable gRPC code, or a
partial success naming refused spans) is split in halves and each half sent again,
down to single spans: what the backend still refuses alone is set aside in the
span dead-letter file with its reason and counted, and the spans behind it go on.
Requests are bounded in bytes as well as spans, below gRPC's default 4 MiB limit.
"""

import logging
import threading
import time
from collections.abc import Callable

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import Delivery, ExportResult, TraceSender
from otel_bridge.export.span_encoding import export_request
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.repeated_failure import RepeatedFailure
from otel_bridge.state.store import OutboxRow, Store

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0


class OutboxDrain:
    def __init__(
        self,
        store: Store,
        sender: TraceSender,
        metrics: MetricsHub,
        batch_size: int,
        poll_seconds: float,
        version: str,
        max_request_bytes: int = 3_500_000,
        dead_spans: DeadLetters | None = None,
        on_result: Callable[[bool, str], None] = lambda ok, reason: None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll = poll_seconds
        self._version = version
        self._max_bytes = max_request_bytes
        self._dead_spans = dead_spans
        self._on_result = on_result
        self._wake = threading.Event()
        self._last_reason = ""

    def wake(self) -> None:
        self._wake.set()

    def _bounded(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The first rows that fit in one request (always at least one)."""
        size = 0
        for i, row in enumerate(rows):
            size += len(row.payload) + len(row.resource) + 16
            if size > self._max_bytes and i > 0:
                return rows[:i]
        return rows

    def export_once(self) -> int | None:
        """Send one batch. Returns spans taken off the outbox, 0 when it is empty, None on failure."""
        rows = self._store.outbox_peek(self._batch_size)
        if not rows:
            return 0
        rows = self._bounded(rows)
        self._last_reason = ""
        done = self._deliver(rows)
        self._on_result(done == len(rows), self._last_reason)
        if done == 0:
            self._metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="traces")
            return None
        return done

    def _send(self, rows: list[OutboxRow]) -> ExportResult:
        if len(rows) == 1 and len(rows[0].payload) > self._max_bytes:
            return ExportResult(Delivery.REJECTED, f"span of {len(rows[0].payload)} bytes is over max_export_bytes")
        request = export_request([(row.resource, row.payload) for row in rows], self._version)
        try:
            return self._sender.send(request)
        except Exception:  # an exporter bug must not kill the drain: the spans stay queued
            log.exception("OTLP trace export raised")
            return ExportResult(Delivery.RETRY, "exporter raised")

    def _deliver(self, rows: list[OutboxRow]) -> int:
        """Send `rows`, splitting what the backend refuses; returns how many left the outbox."""
        result = self._send(rows)
        if result.delivery is Delivery.RETRY:
            self._last_reason = result.reason
            return 0
        if result.delivery is Delivery.SENT:
            self._store.outbox_ack([row.id for row in rows])
            self._metrics.bridge(c.M_BRIDGE_SPANS_EXPORTED, len(rows))
            return len(rows)
        if len(rows) == 1:
            self._set_aside(rows[0], result.reason)
            return 1
        # Some span in here is refused: halve until it stands alone. A partial success
        # re-sends spans the backend took already; their ids are deterministic, so the
        # backend sees the identical span again (at-least-once, as after a crash).
        half = len(rows) // 2
        first = self._deliver(rows[:half])
        if first < half:
            return first
        return first + self._deliver(rows[half:])

    def _set_aside(self, row: OutboxRow, reason: str) -> None:
        span = Span.FromString(row.payload)
        log.error(
            "the OTLP backend refused span %s %r of trace %s for good (%s): kept in the span dead-letter file",
            span.span_id.hex(),
            span.name[:200],
            span.trace_id.hex(),
            reason,
        )
        if self._dead_spans is not None:
            service, env = keys.resource_of(row.resource)
            record = {"reason": reason, "service.name": service, "deployment.environment.name": env}
            self._dead_spans.keep("otlp", [(record, MessageToDict(span))])
        self._store.outbox_ack([row.id])
        self._metrics.bridge(c.M_BRIDGE_SPANS_REJECTED, 1)

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        failures = RepeatedFailure("draining the outbox")
        while not stop.is_set():
            sent = failures.attempt(self.export_once)
            if sent is None:
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.5
            if sent == 0:
                self._wake.wait(self._poll)
                self._wake.clear()

    def drain(self, timeout: float) -> bool:
        """Export until the outbox is empty or `timeout` passes; True when empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = self.export_once()
            if sent == 0:
                return True
            if sent is None:
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        return self._store.outbox_depth() == 0
