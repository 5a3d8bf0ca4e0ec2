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
from otel_bridge.correlate.outputs import SpanKind, SpanRecord, SpanStatus
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
# W3C trace flags: sampled. Every converted run is kept; sampling is the Collector's job.
_SAMPLED = 0x01


def _set_value(target: AnyValue, value: AttributeValue, limit: int) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list):
        for item in value:
            target.array_value.values.add().string_value = str(item)[:limit]
    else:
        target.string_value = value[:limit]


def _fill(attributes: dict[str, AttributeValue], into: RepeatedCompositeFieldContainer[KeyValue], limit: int) -> None:
    for key, value in attributes.items():
        kv = into.add()
        kv.key = key[:limit]
        _set_value(kv.value, value, limit)


def encode_span(span: SpanRecord, attribute_limit: int = 4096, name_limit: int = 256) -> bytes:
    """A finished span as a serialized OTLP `Span` message (names cut to `name_limit` characters)."""
    assert span.end_ns is not None, "only finished spans are encoded"
    message = Span(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id or b"",
        name=span.name if len(span.name) <= name_limit else span.name[: name_limit - 1] + "…",
        kind=_KINDS[span.kind],
        start_time_unix_nano=span.start_ns,
        end_time_unix_nano=span.end_ns,
        flags=_SAMPLED | 0x100,  # 0x100: the "has is_remote" bit is known (local parent)
        status=Status(code=_STATUS[span.status], message=span.status_message[:attribute_limit]),
    )
    _fill(span.attributes, message.attributes, attribute_limit)
    for event in span.events:
        e = message.events.add(name=event.name[:attribute_limit], time_unix_nano=event.time_ns)
        _fill(event.attributes, e.attributes, attribute_limit)
    for linked in span.links:
        message.links.add(trace_id=span.trace_id, span_id=linked, flags=_SAMPLED | 0x100)
    for trace_id, linked in span.remote_links:
        message.links.add(trace_id=trace_id, span_id=linked, flags=_SAMPLED | 0x100)
    return message.SerializeToString()


def proto_resource(key: str) -> ProtoResource:
    service, env = keys.resource_of(key)
    return ProtoResource(
        attributes=[
            KeyValue(key=c.SERVICE_NAME, value=AnyValue(string_value=service)),
            KeyValue(key=c.DEPLOYMENT_ENVIRONMENT_NAME, value=AnyValue(string_value=env)),
        ]
    )


def export_request(rows: list[tuple[str, bytes]], scope_version: str) -> ExportTraceServiceRequest:
    """Group encoded spans by producer into one OTLP request."""
    by_resource: dict[str, list[bytes]] = {}
    for key, payload in rows:
        by_resource.setdefault(key, []).append(payload)
    request = ExportTraceServiceRequest()
    scope = InstrumentationScope(name=c.SCOPE_NAME, version=scope_version)
    for key, payloads in by_resource.items():
        scope_spans = ScopeSpans(scope=scope)
        for payload in payloads:
            scope_spans.spans.add().MergeFromString(payload)
        request.resource_spans.append(ResourceSpans(resource=proto_resource(key), scope_spans=[scope_spans]))
    return request
