"""Spans sent through an OpenTelemetry SDK `SpanExporter` the application gives (the in-process tracker's
`span_exporter=`): a vendor's exporter that speaks no OTLP (Azure Monitor's, Google Cloud Trace's, AWS
X-Ray's through its own), or the SDK's `InMemorySpanExporter` in the application's tests.

The outbox holds OTLP requests already encoded; each is read back into the SDK's `ReadableSpan`s, whole:
ids, parents, kinds, times, attributes, events, links, status, resource, scope, and what the bridge's
limits dropped. The SDK's own OTLP encoding of them is the request the bridge would have sent, but for
the span flags, which the SDK writes itself (tests/export/test_sdk_exporter.py).
"""

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from otel_bridge.export.otlp import SENT, Delivery, ExportResult

log = logging.getLogger(__name__)

# OTLP's span kinds are the SDK's, one up (OTLP's 0 is "unspecified", read as internal).
_KINDS = {kind.value + 1: kind for kind in SpanKind} | {0: SpanKind.INTERNAL}
_STATUS = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}
# The low byte of a span's `flags` is its W3C trace flags.
_TRACE_FLAGS = 0xFF
_IS_REMOTE = 0x200


class SdkSpanExporterSender:
    """A `TraceSender` handing each request's spans to an SDK `SpanExporter`: SUCCESS is sent; FAILURE,
    or an exception, a failure to send again later (an SDK exporter says no more), the spans waiting in
    the outbox."""

    def __init__(self, exporter: SpanExporter) -> None:
        # Named as the bridge's own senders name theirs: an SDK OTLP exporter given has its retries stopped and
        # its timeouts shortened for the exports at exit (`otlp.stop_retrying`, `limit_timeouts`) as they do.
        self._exporter = exporter
        # Where it exports to, for the log (`otlp.endpoint_of`): the exporter's own, else what it is.
        self._endpoint = str(getattr(exporter, "_endpoint", "") or type(exporter).__name__)

    def send(self, request: bytes) -> ExportResult:
        spans = readable_spans(ExportTraceServiceRequest.FromString(request))
        if not spans:
            return SENT  # an empty request (a probe): nothing to hand over
        try:
            result = self._exporter.export(spans)
        except Exception as exc:  # the application's exporter: whatever it raises, the spans wait
            return ExportResult(Delivery.RETRY, f"{type(self._exporter).__name__} raised {exc!r}")
        if result is SpanExportResult.SUCCESS:
            return SENT
        return ExportResult(Delivery.RETRY, f"{type(self._exporter).__name__} answered {result.name}")

    def shutdown(self) -> None:
        self._exporter.shutdown()


def readable_spans(request: ExportTraceServiceRequest) -> list[ReadableSpan]:
    """The spans of an OTLP request, as the SDK's `ReadableSpan`s its exporters take."""
    spans: list[ReadableSpan] = []
    for resource_spans in request.resource_spans:
        resource = Resource(_attributes(resource_spans.resource.attributes), resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            scope = InstrumentationScope(
                scope_spans.scope.name,
                scope_spans.scope.version or None,
                scope_spans.schema_url or None,
                _attributes(scope_spans.scope.attributes) or None,
            )
            spans.extend(_readable(span, resource, scope) for span in scope_spans.spans)
    return spans


def _readable(span: Span, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    trace_id = int.from_bytes(span.trace_id, "big")
    flags = TraceFlags(span.flags & _TRACE_FLAGS)
    state = TraceState.from_header([span.trace_state]) if span.trace_state else None
    context = SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False, flags, state)
    parent = None
    if span.parent_span_id:
        remote = bool(span.flags & _IS_REMOTE)
        parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), remote, flags, state)
    attributes = _bounded(span.attributes, span.dropped_attributes_count)
    events = _dropped(
        (Event(e.name, _bounded(e.attributes, e.dropped_attributes_count), e.time_unix_nano) for e in span.events),
        span.dropped_events_count,
    )
    links = _dropped((_link(link) for link in span.links), span.dropped_links_count)
    code = _STATUS.get(span.status.code, StatusCode.UNSET)
    # The SDK takes a description for an error alone (and warns of one given otherwise).
    status = Status(code, (span.status.message or None) if code is StatusCode.ERROR else None)
    return ReadableSpan(
        span.name,
        context,
        parent,
        resource,
        attributes,
        events,
        links,
        _KINDS.get(span.kind, SpanKind.INTERNAL),
        status=status,
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=scope,
    )


def _link(link: Span.Link) -> Link:
    state = TraceState.from_header([link.trace_state]) if link.trace_state else None
    flags = TraceFlags(link.flags & _TRACE_FLAGS)
    context = SpanContext(
        int.from_bytes(link.trace_id, "big"), int.from_bytes(link.span_id, "big"), False, flags, state
    )
    return Link(context, _bounded(link.attributes, link.dropped_attributes_count))


def _bounded(attributes: Sequence[KeyValue], dropped: int) -> BoundedAttributes:
    """Attributes as the SDK keeps them, with how many the bridge's limits left out (its `dropped`)."""
    bounded = BoundedAttributes(
        maxlen=None, attributes=_attributes(attributes), immutable=True, extended_attributes=True
    )
    bounded.dropped = dropped
    return bounded


def _dropped(kept: Iterable[Any], dropped: int) -> BoundedList:  # type: ignore[type-arg]
    """Events or links as the SDK keeps them, with how many the bridge's limits left out."""
    bounded = BoundedList.from_seq(None, list(kept))
    bounded.dropped = dropped
    return bounded


def _attributes(attributes: Sequence[KeyValue]) -> dict[str, Any]:
    return {attribute.key: _value(attribute.value) for attribute in attributes}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)
