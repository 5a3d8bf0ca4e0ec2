"""What each receiver handed the pipeline, counted where it hands it over (the Collector's obsreport).

Every receiver gets its consumer through this wrapper, so the bridge's own event counts and
batch durations carry a `receiver` attribute (`http`, `redis-stream`, `websocket`, `replay`,
`import-timeline`, `tracker`): an alert on rejected events names the engine that sends them,
and no stage records them itself.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

from otel_bridge import conventions as c
from otel_bridge.consumer import Backpressure, EventConsumer, IngestReport, Unavailable
from otel_bridge.correlate.outputs import Observation
from otel_bridge.export.metrics import MetricsHub

log = logging.getLogger(__name__)

COUNTERS = (
    c.M_BRIDGE_EVENTS_RECEIVED,
    c.M_BRIDGE_EVENTS_ACCEPTED,
    c.M_BRIDGE_EVENTS_DUPLICATE,
    c.M_BRIDGE_EVENTS_LATE,
    c.M_BRIDGE_EVENTS_REJECTED,
)


class ObservedConsumer:
    def __init__(self, receiver: str, consumer: EventConsumer, metrics: MetricsHub) -> None:
        self.receiver = receiver
        self._consumer = consumer
        self._metrics = metrics
        self._attributes = ((c.BRIDGE_RECEIVER, receiver),)
        # "Nothing rejected yet" is a 0 from the start, not a series that appears at the first one.
        metrics.start_bridge_counters(COUNTERS, receiver=receiver)
        # Only the HTTP server turns requests away before their body is read (`turned_away`).
        reasons = [c.REFUSED_OUTBOX_FULL, c.REFUSED_STORE_UNAVAILABLE]
        if receiver == "http":
            reasons.append(c.REFUSED_CONNECTIONS_AT_LIMIT)
        self._refused = {reason: (*self._attributes, (c.BRIDGE_REFUSAL_REASON, reason)) for reason in reasons}
        for attributes in self._refused.values():
            metrics.start_bridge_counters([c.M_BRIDGE_EVENTS_REFUSED], **dict(attributes))

    def turned_away(self, reason: str) -> None:
        """A batch refused for now before its body was read (its events unknown): counted as one event refused."""
        try:
            self._metrics.record([Observation(c.M_BRIDGE_EVENTS_REFUSED, 1, self._refused[reason], None)])  # type: ignore[arg-type]
        except Exception:
            log.exception("counting the %s receiver's refused batch failed", self.receiver)

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        """The batch as the consumer stores it. A batch refused for now (Unavailable) is not received:
        its sender offers it again. It is counted apart, as refused: an HTTP producer drops a batch
        after three re-sends, so refusals that last are data lost upstream."""
        started = time.perf_counter()
        try:
            report = self._consumer.ingest(events, producer=producer)
        except Unavailable as exc:
            reason = c.REFUSED_OUTBOX_FULL if isinstance(exc, Backpressure) else c.REFUSED_STORE_UNAVAILABLE
            try:
                refused = Observation(c.M_BRIDGE_EVENTS_REFUSED, len(events), self._refused[reason], None)  # type: ignore[arg-type]
                self._metrics.record([refused])
            except Exception:
                log.exception("counting the %s receiver's refused batch failed", self.receiver)
            raise
        counts = (len(events), report.accepted, report.duplicates, report.late, len(report.rejected))
        observations = [
            Observation(name, count, self._attributes, None)  # type: ignore[arg-type]
            for name, count in zip(COUNTERS, counts, strict=True)
            if count
        ]
        observations.append(
            Observation(c.M_BRIDGE_INGEST_DURATION, time.perf_counter() - started, self._attributes, None)  # type: ignore[arg-type]
        )
        try:  # the batch is committed: nothing may turn the answer into an error now
            self._metrics.record(observations)
        except Exception:
            log.exception("recording the %s receiver's counts failed", self.receiver)
        return report
