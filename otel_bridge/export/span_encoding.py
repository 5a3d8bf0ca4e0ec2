"""Finished spans -> OTLP protobuf, built in place.

The outbox keeps each span already encoded as an OTLP `Span` message: building
the message directly is several times cheaper than going through the SDK's
ReadableSpan and `encode_spans`, and an encoded span survives restarts as bytes.
"""

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.correlate.outputs import SpanEvent, SpanKind, SpanRecord, SpanStatus
from otel_bridge.lifecycle import AttributeValue

_KINDS = {
    SpanKind.SERVER: Span.SPAN_KIND_SERVER,
    SpanKind.INTERNAL: Span.SPAN_KIND_INTERNAL,
    SpanKind.PRODUCER: Span.SPAN_KIND_PRODUCER,
}
_STATUS = {
    SpanStatus.UNSET: Status.STATUS_CODE_UNSET,
    SpanStatus.OK: Status.STATUS_CODE_OK,
    SpanStatus.ERROR: Status.STATUS_CODE_ERROR,
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# W3C trace flags: sampled. Every converted run is kept; sampling is the Collector's job.
_SAMPLED = 0x01


def _number(message: type, field: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[field].number)  # type: ignore[attr-defined]


_SPAN_ATTRIBUTES = _number(Span, "attributes")


def _set_value(target: AnyValue, value: AttributeValue, limit: int) -> None:
    if type(value) is str:  # most values: tested first
        target.string_value = value if len(value) <= limit else value[:limit]
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = value
        else:  # a producer's number OTLP's int64 cannot hold: kept whole as text, not a span lost
            target.string_value = str(value)[:limit]
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list):
        # Set even when empty: a run that completed no steps says so with [], not with no value.
        target.array_value.SetInParent()
        for item in value:
            target.array_value.values.add().string_value = str(item)[:limit]
    else:
        target.string_value = value[:limit]


def _fill(attributes: dict[str, AttributeValue], into: RepeatedCompositeFieldContainer[KeyValue], limit: int) -> None:
    for key, value in attributes.items():
        _set_value(into.add(key=key if len(key) <= limit else key[:limit]).value, value, limit)


# A span's attributes already encoded, each as its field of the span: most come from a small
# vocabulary (a step's name, its attempt, its outcome), and building one as a message costs ~0.5 µs
# where its bytes are a lookup. A run's own values (its id) pass through once each: the table is
# emptied when full rather than kept in order, the vocabulary back within a few spans. (A span
# event's attributes are mostly its own, an event id among them: they are built as messages.)
_ENCODED: dict[tuple[str, type, AttributeValue, int], bytes] = {}
_ENCODED_AT_MOST = 4096
# Kept by value: a list cannot be a key, and a float's -0.0 would find 0.0's bytes.
_KEPT_KINDS = frozenset({str, int, bool})
# A vocabulary's words are short: a longer text (a captured input, up to `max_input_bytes`) is a run's
# own, and 4,096 of them would hold megabytes for nothing.
_KEPT_CHARS = 128


def _attributes(attributes: dict[str, AttributeValue], limit: int) -> bytes:
    """A span's `attributes` as its repeated KeyValue field."""
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind not in _KEPT_KINDS or (type(value) is str and len(value) > _KEPT_CHARS):
            out.append(_attribute(key, value, limit))
            continue
        known = (key, kind, value, limit)
        encoded = _ENCODED.get(known)
        if encoded is None:
            encoded = _attribute(key, value, limit)
            if len(_ENCODED) >= _ENCODED_AT_MOST:
                _ENCODED.clear()
            _ENCODED[known] = encoded
        out.append(encoded)
    return b"".join(out)


def _attribute(key: str, value: AttributeValue, limit: int) -> bytes:
    attribute = KeyValue(key=key if len(key) <= limit else key[:limit])
    _set_value(attribute.value, value, limit)
    return _field(_SPAN_ATTRIBUTES, attribute.SerializeToString())


def encode_span(
    span: SpanRecord, attribute_limit: int = 4096, name_limit: int = 256, event_limit: int = 128, link_limit: int = 128
) -> bytes:
    """A finished span as a serialized OTLP `Span` message (names cut to `name_limit` characters, at
    most `event_limit` events and `link_limit` links).

    Written in field order, as protobuf writes it: the fields before the attributes, the
    attributes (their bytes, `_attributes`), then the fields after them.
    """
    assert span.end_ns is not None, "only finished spans are encoded"
    head = Span(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id or b"",
        name=span.name if len(span.name) <= name_limit else span.name[: name_limit - 1] + "…",
        kind=_KINDS[span.kind],
        start_time_unix_nano=span.start_ns,
        end_time_unix_nano=span.end_ns,
    )
    tail = Span(flags=_SAMPLED | 0x100)  # 0x100: the "has is_remote" bit is known (local parent)
    events = span.events
    if len(events) > event_limit:
        tail.dropped_events_count = len(events) - event_limit
        events = _kept_events(events, event_limit)
    for event in events:
        e = tail.events.add(name=event.name[:attribute_limit], time_unix_nano=event.time_ns)
        _fill(event.attributes, e.attributes, attribute_limit)
    # The first, as the SDK keeps them: the attempt a retry follows, then the triggers in the order told.
    # No list is made for the span without local links, most of them (encoded at every settling).
    links = span.remote_links
    if span.links:
        links = [(span.trace_id, linked) for linked in span.links] + links
    if len(links) > link_limit:
        tail.dropped_links_count = len(links) - link_limit
        links = links[:link_limit]
    for trace_id, linked in links:
        tail.links.add(trace_id=trace_id, span_id=linked, flags=_SAMPLED | 0x100)
    status = tail.status
    status.code = _STATUS[span.status]
    if span.status_message:
        status.message = span.status_message[:attribute_limit]
    attributes = _attributes(span.attributes, attribute_limit)
    return head.SerializeToString() + attributes + tail.SerializeToString()


def _kept_events(events: list[SpanEvent], limit: int) -> list[SpanEvent]:
    """The first and the last half of a span's events past its limit. A run that slept every minute for
    a month told ~170,000 of them (four a sleep): a root span of megabytes, which a backend refuses
    (Jaeger takes 4 MB a request) and nobody reads. How it began is in the first half, how it came to
    end in the last (late events come last)."""
    last = limit // 2
    return events[: limit - last] + events[len(events) - last :]


def proto_resource(key: str) -> ProtoResource:
    service, env = keys.resource_of(key)
    return ProtoResource(
        attributes=[
            KeyValue(key=c.SERVICE_NAME, value=AnyValue(string_value=service)),
            KeyValue(key=c.DEPLOYMENT_ENVIRONMENT_NAME, value=AnyValue(string_value=env)),
        ]
    )


_RESOURCE_SPANS = _number(ExportTraceServiceRequest, "resource_spans")
_RESOURCE = _number(ResourceSpans, "resource")
_SCOPE_SPANS = _number(ResourceSpans, "scope_spans")
_SCOPE = _number(ScopeSpans, "scope")
_SPANS = _number(ScopeSpans, "spans")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: its tag (wire type 2), its length, its bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def export_request(rows: list[tuple[str, bytes]], scope_version: str) -> bytes:
    """Group encoded spans by producer into one serialized OTLP `ExportTraceServiceRequest`.

    Written as protobuf bytes around the stored spans, not parsed into messages and
    serialized again: a repeated message field is its elements' bytes, each behind
    its tag and length, so the spans in the outbox go out as they are.
    """
    by_resource: dict[str, list[bytes]] = {}
    for key, payload in rows:
        by_resource.setdefault(key, []).append(payload)
    scope = _field(_SCOPE, InstrumentationScope(name=c.SCOPE_NAME, version=scope_version).SerializeToString())
    request = bytearray()
    for key, payloads in by_resource.items():
        scope_spans = scope + b"".join(_field(_SPANS, payload) for payload in payloads)
        resource = _field(_RESOURCE, proto_resource(key).SerializeToString())
        request += _field(_RESOURCE_SPANS, resource + _field(_SCOPE_SPANS, scope_spans))
    return bytes(request)


def shrunk(payload: bytes, max_bytes: int) -> bytes | None:
    """An encoded span made to take at most `max_bytes`: its largest attributes left out first, then
    its largest events, then its links, each counted in the span's `dropped_*_count` as an SDK's limits
    count what they drop; None when its ids, name and times alone take more."""
    span = Span.FromString(payload)
    for kept in ("attributes", "events", "links"):
        items, dropped = getattr(span, kept), f"dropped_{kept}_count"
        while span.ByteSize() > max_bytes and len(items):
            del items[max(range(len(items)), key=lambda i: items[i].ByteSize())]
            setattr(span, dropped, getattr(span, dropped) + 1)
    return span.SerializeToString() if span.ByteSize() <= max_bytes else None
