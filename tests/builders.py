"""Event streams for tests: the producer-side builders, written like the seed guide's flow diagrams; and a
finished span as the correlate stage hands it to export."""

from typing import Any

from otel_bridge.correlate.outputs import SpanEvent, SpanKind, SpanRecord, SpanStatus
from otel_bridge.producer.events import JobRun, WorkflowRun, iso, ns, ns_of

__all__ = ["JobRun", "WorkflowRun", "finished_span", "iso", "ns", "ns_of"]


def finished_span(**changes: Any) -> SpanRecord:
    """A failed step attempt's span, with every kind of attribute value, an event and a link; `changes` override."""
    fields: dict[str, Any] = dict(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        parent_span_id=b"\x03" * 8,
        name="step pay",
        kind=SpanKind.INTERNAL,
        start_ns=10,
        end_ns=20,
        status=SpanStatus.ERROR,
        status_message="declined",
        attributes={"workflow.task.attempt": 2, "workflow.task.cached": False, "x": 1.5, "steps": ["a", "b"]},
        events=[SpanEvent("exception", 20, {"exception.message": "declined"})],
        links=[b"\x04" * 8],
    )
    return SpanRecord(**(fields | changes))
