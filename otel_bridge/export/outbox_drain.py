"""Drains the span outbox over OTLP: a span leaves only once the backend acknowledged it."""

import logging
import threading
import time

from otel_bridge import conventions as c
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import TraceSender
from otel_bridge.export.span_encoding import export_request
from otel_bridge.state.store import Store

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
    ) -> None:
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll = poll_seconds
        self._version = version
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def export_once(self) -> int | None:
        """Send one batch. Returns spans sent, 0 when the outbox is empty, None on failure."""
        rows = self._store.outbox_peek(self._batch_size)
        if not rows:
            return 0
        request = export_request([(row.resource, row.payload) for row in rows], self._version)
        try:
            ok = self._sender.send(request)
        except Exception:  # an exporter bug must not kill the drain: the spans stay queued
            log.exception("OTLP trace export raised")
            ok = False
        if not ok:
            self._metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="traces")
            return None
        self._store.outbox_ack([row.id for row in rows])
        self._metrics.bridge(c.M_BRIDGE_SPANS_EXPORTED, len(rows))
        return len(rows)

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                sent = self.export_once()
            except Exception:
                log.exception("outbox drain failed")
                sent = None
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
