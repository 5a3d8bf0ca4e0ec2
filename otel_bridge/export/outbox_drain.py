"""Drains the span outbox over OTLP: a span leaves only once the backend took it, or refused it for good.

A request the backend refuses for good (HTTP 4xx, a non-retryable gRPC code, or a
partial success naming refused spans) is split in halves and each half sent again,
down to single spans: what the backend still refuses alone is set aside in the
span dead-letter file with its reason and counted, and the spans behind it go on.
Requests are bounded in bytes as well as spans, below gRPC's default 4 MiB limit.
With several senders (`export_concurrency`), that many requests are in flight at once, each
over consecutive rows of its own: against a backend far away, a request's round trip, not
the bridge, bounds how fast the outbox drains. Rows the backend took whose acknowledgement the
store refused (a full disk) are acknowledged before anything more is sent, never sent again while
this process lives: at-least-once only across a crash.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import SENT, Delivery, ExportResult, TraceSender
from otel_bridge.export.span_encoding import export_request, shrunk
from otel_bridge.liveness import Passes
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.repeated_failure import Backoff, RepeatedFailure
from otel_bridge.state.store import OutboxRow, Store, StoreUnavailable, damage_met

log = logging.getLogger(__name__)

# What an export request holds besides its one span (its resource and scope), kept free when a span too
# big to send is made smaller.
_REQUEST_OVERHEAD = 4096

# Below it, a backend refusing requests for their size is not taken at its word any further: single
# spans are sent, and what it refuses alone is set aside.
_SMALLEST_BOUND = 16 * 1024


class OutboxDrain:
    def __init__(
        self,
        store: Store,
        sender: TraceSender | Sequence[TraceSender],
        metrics: MetricsHub,
        batch_size: int,
        poll_seconds: float,
        version: str,
        max_request_bytes: int = 3_500_000,
        dead_spans: DeadLetters | None = None,
        on_result: Callable[[bool, str], None] = lambda ok, reason: None,
    ) -> None:
        self._store = store
        # One exporter per request in flight: each keeps its own connection and its last answer.
        self._senders = list(sender) if isinstance(sender, Sequence) else [sender]
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll = poll_seconds
        self._version = version
        self._max_bytes = max_request_bytes
        self._dead_spans = dead_spans
        self._on_result = on_result
        self._wake = threading.Event()
        # Spans the backend took, and spans set aside, since this drain began: what a command says it did.
        self.exported = self.set_aside = 0
        self._counting = threading.Lock()  # chunks are delivered by threads side by side
        # Rows the backend took (or that were set aside) whose acknowledgement the store refused (a full
        # disk, without its reserve after a restart): acknowledged first at the next round, never sent
        # again meanwhile — every drain sent them to the backend once more.
        self._unacked: dict[int | str, None] = {}
        # Until when (the clock's) a throttling backend asked to be left after the last round (Retry-After,
        # RetryInfo): the export loop and the drain at a stop keep to it.
        self._quiet_until = 0.0
        # A damaged state file met reading the outbox (a page of it that no longer reads), for the bridge's
        # risks: which spans it keeps from being sent until the file is salvaged.
        self.damage: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def quiet_for(self) -> float:
        """Seconds left of the wait a throttling backend asked for, 0 when none is."""
        return max(self._quiet_until - time.monotonic(), 0.0)

    def _chunks(self, rows: list[OutboxRow]) -> list[list[OutboxRow]]:
        """`rows` in consecutive requests, each of `batch_size` spans and `max_request_bytes` at most
        (and at least one span), one per sender."""
        chunks: list[list[OutboxRow]] = []
        chunk: list[OutboxRow] = []
        size = 0
        for row in rows:
            weight = len(row.payload) + len(row.resource) + 16
            if chunk and (len(chunk) == self._batch_size or size + weight > self._max_bytes):
                chunks.append(chunk)
                if len(chunks) == len(self._senders):
                    return chunks
                chunk, size = [], 0
            chunk.append(row)
            size += weight
        return [*chunks, chunk] if chunk else chunks

    def export_once(self) -> int | None:
        """Send one round of requests. Returns spans taken off the outbox, 0 when it is empty, None on failure."""
        if self._unacked:
            self._store.outbox_ack(list(self._unacked))  # raises while the store still cannot: nothing is sent
            self._unacked.clear()
        rows = self._store.outbox_peek(self._batch_size * len(self._senders))
        if not rows:
            return 0
        chunks = self._chunks(rows)
        results = self._deliver_all(chunks)
        done = sum(sent for sent, _why in results)
        stopped = [why for (sent, why), chunk in zip(results, chunks, strict=True) if sent < len(chunk)]
        # The longest wait a throttling backend asked for holds every sender: they share its limit.
        self._quiet_until = time.monotonic() + max((why.wait_seconds or 0.0 for why in stopped), default=0.0)
        self._on_result(not stopped, stopped[0].reason if stopped else "")
        if done == 0:
            self._metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="traces")
            return None
        return done

    def _deliver_all(self, chunks: list[list[OutboxRow]]) -> list[tuple[int, ExportResult]]:
        """Each chunk by a sender of its own, at once; the first in this thread."""
        results: list[tuple[int, ExportResult]] = [(0, SENT)] * len(chunks)
        errors: list[Exception] = []

        def deliver(n: int) -> None:
            try:
                results[n] = self._deliver(self._senders[n], chunks[n])
            except Exception as exc:  # the store's (an ack): raised below, as from a single request
                errors.append(exc)

        # Daemon threads, joined here: a request hung on the backend must not hold up the exit.
        others = [threading.Thread(target=deliver, args=(n,), daemon=True) for n in range(1, len(chunks))]
        for thread in others:
            thread.start()
        deliver(0)
        for thread in others:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def _send(self, sender: TraceSender, rows: list[OutboxRow]) -> ExportResult:
        if len(rows) == 1 and len(rows[0].payload) > self._max_bytes:
            # Set aside whole, a run lost its span (a root listing ~300,000 completed steps): what a
            # backend shows of it is worth more than the attributes that made it too big to send.
            smaller = shrunk(rows[0].payload, self._max_bytes - _REQUEST_OVERHEAD)
            if smaller is None:
                return ExportResult(Delivery.REJECTED, f"span of {len(rows[0].payload)} bytes is over max_export_bytes")
            log.warning(
                "span %s of %d bytes is over max_export_bytes: sent in %d bytes, without its largest attributes "
                "and events (counted as dropped on it)",
                Span.FromString(smaller).span_id.hex(), len(rows[0].payload), len(smaller),
            )  # fmt: skip
            rows = [OutboxRow(rows[0].id, rows[0].resource, smaller)]
        request = export_request([(row.resource, row.payload) for row in rows], self._version)
        try:
            result = sender.send(request)
        except Exception:  # an exporter bug must not kill the drain: the spans stay queued
            log.exception("OTLP trace export raised")
            return ExportResult(Delivery.RETRY, "exporter raised")
        if result.too_large:
            self._take_smaller(len(request), result.reason)
        return result

    def _take_smaller(self, refused: int, reason: str) -> None:
        """Requests from now on at most half of `refused` bytes: the backend (or a proxy before it) takes
        less than `max_export_bytes`. The refused one is halved too, but without this every round
        would begin again at the size refused, each paying its refusal."""
        with self._counting:
            bound = max(refused // 2, _SMALLEST_BOUND)
            if bound >= self._max_bytes:
                return
            self._max_bytes = bound
        log.warning(
            "the OTLP backend refused a request of %d bytes for its size (%s): requests are at most %d bytes "
            "from now on; set max_export_bytes to what it takes",
            refused, reason, bound,
        )  # fmt: skip

    def _deliver(self, sender: TraceSender, rows: list[OutboxRow]) -> tuple[int, ExportResult]:
        """Send `rows`, splitting what the backend refuses: how many left the outbox, and what the
        backend said of the rest when not all did."""
        result = self._send(sender, rows)
        if result.delivery is Delivery.RETRY:
            return 0, result
        if result.delivery is Delivery.SENT:
            # Counted as the backend took them, whether or not the store can acknowledge them now.
            self._metrics.bridge(c.M_BRIDGE_SPANS_EXPORTED, len(rows))
            with self._counting:
                self.exported += len(rows)
            self._ack([row.id for row in rows])
            return len(rows), SENT
        if len(rows) == 1:
            self._set_aside(rows[0], result.reason)
            return 1, SENT
        # Some span in here is refused: halve until it stands alone. A partial success
        # re-sends spans the backend took already; their ids are deterministic, so the
        # backend sees the identical span again (at-least-once, as after a crash).
        half = len(rows) // 2
        first, why = self._deliver(sender, rows[:half])
        if first < half:
            return first, why
        second, why = self._deliver(sender, rows[half:])
        return first + second, why

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
            self._dead_spans.keep("otlp", [_letter(row, span, reason)])
        self._metrics.bridge(c.M_BRIDGE_SPANS_REJECTED, 1)
        with self._counting:
            self.set_aside += 1
        self._ack([row.id])

    def _ack(self, ids: list[int | str]) -> None:
        try:
            self._store.outbox_ack(ids)
        except Exception:
            with self._counting:
                self._unacked.update(dict.fromkeys(ids))
            raise

    def run(self, stop: threading.Event, passes: Passes | None = None) -> None:
        backoff = Backoff()  # 0.5 s doubling to 30 s, the Collector's exporters' most
        failures = RepeatedFailure("draining the outbox")
        passes = passes or Passes()
        while not stop.is_set():
            with passes.running("trace-export"):
                sent = failures.attempt(self._exporting)
            if sent is None:
                # Exponential from what a throttling backend asked for, as its RetryInfo's own
                # documentation has a client do when the retry fails again.
                backoff.wait(stop, at_least=self.quiet_for())
                continue
            backoff.worked()
            stop.wait(self.quiet_for())  # some requests went, another was asked to wait: so do they all
            if sent == 0:
                self._wake.wait(self._poll)
                self._wake.clear()

    def _exporting(self) -> int | None:
        try:
            sent = self.export_once()
        except Exception as exc:
            if self._store.damaged(exc):
                self.damage = f"{damage_met(exc)} where its outbox is: the spans from there on are not sent"
            raise
        if (passed := self._store.outbox_passed) is not None:
            self.damage = (
                f"{damage_met(passed.found)} where its outbox holds spans {passed.first} to {passed.last}: those "
                "are not sent, the spans after them are"
            )
        return sent

    def keep_the_rest(self, reason: str) -> int:
        """Every span still in the outbox into the span dead-letter file, for `otel-bridge
        resend-spans` to send once the backend is back: what an outbox in memory would lose with its
        process at exit. How many."""
        if self._dead_spans is None:
            return 0
        kept = 0
        while rows := self._store.outbox_peek(1000):
            if not self._dead_spans.keep(
                "outbox", [_letter(row, Span.FromString(row.payload), reason) for row in rows]
            ):
                return kept  # the file cannot take them (told in the log): what is left stays, and is told as such
            self._store.outbox_ack([row.id for row in rows])
            kept += len(rows)
        return kept

    def drain(self, timeout: float, retry: bool = True) -> bool:
        """Export until the outbox is empty or `timeout` passes (or an export fails, without `retry`);
        True when empty."""
        deadline = time.monotonic() + timeout
        failed = False
        while (now := time.monotonic()) < deadline:
            if (quiet := self.quiet_for()) > 0:
                if quiet >= deadline - now:
                    break  # asked to wait past the timeout: what is left stays on disk for the next start
                time.sleep(quiet)
            try:
                sent = self.export_once()
            except Exception as exc:  # the store's (an acknowledgement on a full disk): a stop must still end
                if not failed:  # once, not every half second until the timeout
                    log.warning("draining the outbox failed: %s (tried again until the drain timeout)", exc)
                failed = True
                sent = None
            if sent == 0:
                return True
            if sent is None:
                if not retry:
                    break
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        try:
            return self._store.outbox_depth() == 0
        except StoreUnavailable:  # a Redis gone as the bridge stops: what waits in it stays there
            return False


def _letter(row: OutboxRow, span: Span, reason: str) -> tuple[dict[str, str], dict[str, object]]:
    """A span as a dead letter: what `dead_spans.outbox_row` reads back, to send it again as it was."""
    service, env = keys.resource_of(row.resource)
    # The ids as Jaeger and a traceparent write them: OTLP JSON's `event` has them in base64.
    record = {
        "reason": reason,
        "service.name": service,
        "deployment.environment.name": env,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
    }
    return record, MessageToDict(span)
