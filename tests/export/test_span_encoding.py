"""Spans are stored as OTLP protobuf and grouped by producer at export."""

from builders import finished_span
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.correlate.outputs import SpanEvent
from otel_bridge.export import span_encoding
from otel_bridge.export.span_encoding import encode_span, export_request, proto_resource


def test_a_span_round_trips_through_protobuf():
    span = Span.FromString(encode_span(finished_span()))
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


def test_an_empty_list_is_an_empty_array_not_a_missing_value():
    # As the SDK encodes it: a run that completed no steps has workflow.execution.completed_steps = [].
    span = Span.FromString(encode_span(finished_span(attributes={"steps": []})))
    assert span.attributes[0].value.WhichOneof("value") == "array_value"
    assert list(span.attributes[0].value.array_value.values) == []


def test_an_integer_beyond_int64_is_sent_as_text_rather_than_failing_the_span():
    # A producer's step order of 2**70 must not make its run's trace unsendable.
    span = Span.FromString(encode_span(finished_span(attributes={"big": 2**70, "low": -(2**63)})))
    values = {kv.key: kv.value for kv in span.attributes}
    assert values["big"].string_value == str(2**70)
    assert values["low"].int_value == -(2**63)


def test_long_strings_are_truncated_to_the_attribute_limit():
    span = Span.FromString(encode_span(finished_span(attributes={"big": "x" * 10_000}), attribute_limit=100))
    assert len(span.attributes[0].value.string_value) == 100


def test_a_span_is_the_bytes_protobuf_would_write_for_it():
    # Its attributes are written from a table of those met before, the rest as messages: in field order all the same.
    span = finished_span(attributes={"workflow.task.name": "pay", "n": 3, "ok": True, "ms": 1.5, "steps": ["a"]})
    span.remote_links.append((b"\x07" * 16, b"\x08" * 8))
    for _ in range(2):  # met for the first time, then from the table
        encoded = encode_span(span)
        assert encoded == Span.FromString(encoded).SerializeToString()


def test_an_attribute_met_before_is_cut_to_the_limit_of_the_span_at_hand():
    span = finished_span(attributes={"big": "x" * 300})
    for limit in (300, 100, 300):
        assert len(Span.FromString(encode_span(span, attribute_limit=limit)).attributes[0].value.string_value) == limit


def test_the_table_of_encoded_attributes_stays_bounded_and_its_emptying_changes_no_span(monkeypatch):
    monkeypatch.setattr(span_encoding, "_ENCODED", {})
    monkeypatch.setattr(span_encoding, "_ENCODED_AT_MOST", 3)
    spans = [finished_span(attributes={"run": f"id-{n}", "step": "pay"}) for n in range(10)]
    first = [encode_span(span) for span in spans]
    assert len(span_encoding._ENCODED) <= 3
    assert [encode_span(span) for span in spans] == first
    for span, encoded in zip(spans, first, strict=True):
        assert {kv.key: kv.value.string_value for kv in Span.FromString(encoded).attributes} == span.attributes


def test_long_texts_are_encoded_each_time_not_kept(monkeypatch):
    # A captured input is a run's own: kept, thousands of them would hold megabytes for nothing.
    monkeypatch.setattr(span_encoding, "_ENCODED", {})
    span = finished_span(attributes={"workflow.execution.input": "x" * 2000, "step": "pay"})
    encoded = encode_span(span)
    assert [key for key, *_ in span_encoding._ENCODED] == ["step"]
    assert Span.FromString(encoded).attributes[0].value.string_value == "x" * 2000


def test_a_span_with_more_events_than_its_limit_keeps_the_first_and_the_last_half_and_counts_the_rest():
    events = [SpanEvent(f"e{n}", n, {"n": n}) for n in range(300)]
    span = Span.FromString(encode_span(finished_span(events=events), event_limit=128))
    assert [e.name for e in span.events] == [f"e{n}" for n in (*range(64), *range(236, 300))]
    assert span.dropped_events_count == 300 - 128
    within = Span.FromString(encode_span(finished_span(events=events[:128]), event_limit=128))
    assert len(within.events) == 128 and within.dropped_events_count == 0


def test_a_span_with_more_links_than_its_limit_keeps_the_first_and_counts_the_rest():
    # A run its engine triggered 300 times follows from 300 runs: the span grew without bound.
    triggers = [(n.to_bytes(16, "big"), n.to_bytes(8, "big")) for n in range(1, 301)]
    span = Span.FromString(encode_span(finished_span(links=[b"\x04" * 8], remote_links=triggers), link_limit=128))
    assert [link.span_id for link in span.links] == [b"\x04" * 8] + [s for _, s in triggers[:127]]
    assert span.links[1].trace_id == triggers[0][0]
    assert span.dropped_links_count == 301 - 128
    within = Span.FromString(encode_span(finished_span(links=[], remote_links=triggers[:128]), link_limit=128))
    assert len(within.links) == 128 and within.dropped_links_count == 0


def test_values_equal_in_python_but_of_other_types_keep_their_type():
    for value, kind in ((1, "int_value"), (True, "bool_value"), (1.0, "double_value"), ("1", "string_value")):
        span = Span.FromString(encode_span(finished_span(attributes={"v": value})))
        assert span.attributes[0].value.WhichOneof("value") == kind


def test_an_export_request_groups_spans_by_producer():
    a, b = keys.resource_key("a", "prod"), keys.resource_key("b", "prod")
    rows = [
        (a, encode_span(finished_span())),
        (b, encode_span(finished_span())),
        (a, encode_span(finished_span())),
    ]
    request = ExportTraceServiceRequest.FromString(export_request(rows, "1"))
    assert len(request.resource_spans) == 2
    counts = {
        rs.resource.attributes[0].value.string_value: len(rs.scope_spans[0].spans) for rs in request.resource_spans
    }
    assert counts == {"a": 2, "b": 1}


def test_an_export_request_is_the_bytes_protobuf_would_write_for_the_same_message():
    a, b = keys.resource_key("a", "prod"), keys.resource_key("b", "prod")
    big = finished_span(attributes={"x": "y" * 300})  # lengths past one varint byte
    rows = [(a, encode_span(finished_span())), (b, encode_span(big)), (a, encode_span(big))]
    expected = ExportTraceServiceRequest()
    for key, payloads in ((a, [rows[0][1], rows[2][1]]), (b, [rows[1][1]])):
        scope = InstrumentationScope(name=c.SCOPE_NAME, version="1.2")
        spans = [Span.FromString(p) for p in payloads]
        expected.resource_spans.append(
            ResourceSpans(resource=proto_resource(key), scope_spans=[ScopeSpans(scope=scope, spans=spans)])
        )
    assert export_request(rows, "1.2") == expected.SerializeToString()
