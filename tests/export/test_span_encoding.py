"""Spans are stored as OTLP protobuf and grouped by producer at export."""

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import keys
from otel_bridge.correlate.outputs import SpanEvent, SpanKind, SpanRecord, SpanStatus
from otel_bridge.export.span_encoding import encode_span, export_request


def _span(**changes) -> SpanRecord:
    fields = dict(
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


def test_a_span_round_trips_through_protobuf():
    span = Span.FromString(encode_span(_span()))
    assert (span.name, span.kind, span.start_time_unix_nano, span.end_time_unix_nano) == (
        "step pay",
        Span.SPAN_KIND_INTERNAL,
        10,
        20,
    )
    assert span.status.code == 2 and span.status.message == "declined"
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert attributes["workflow.task.attempt"].int_value == 2
    assert attributes["workflow.task.cached"].bool_value is False
    assert [v.string_value for v in attributes["steps"].array_value.values] == ["a", "b"]
    assert span.links[0].span_id == b"\x04" * 8 and span.links[0].trace_id == b"\x01" * 16
    assert span.events[0].name == "exception"


def test_long_strings_are_truncated_to_the_attribute_limit():
    span = Span.FromString(encode_span(_span(attributes={"big": "x" * 10_000}), attribute_limit=100))
    assert len(span.attributes[0].value.string_value) == 100


def test_an_export_request_groups_spans_by_producer():
    a, b = keys.resource_key("a", "prod"), keys.resource_key("b", "prod")
    request = export_request([(a, encode_span(_span())), (b, encode_span(_span())), (a, encode_span(_span()))], "1")
    assert len(request.resource_spans) == 2
    counts = {
        rs.resource.attributes[0].value.string_value: len(rs.scope_spans[0].spans) for rs in request.resource_spans
    }
    assert counts == {"a": 2, "b": 1}
