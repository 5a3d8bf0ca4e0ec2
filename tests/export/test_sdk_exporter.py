"""Spans handed to an OpenTelemetry SDK exporter are the bridge's spans, whole: read back from the requests
the real pipeline makes of every demo scenario, the SDK's own OTLP encoding of them is those requests."""

import random
from datetime import UTC, datetime

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_bridge.export import sdk_exporter
from otel_bridge.export.otlp import SENT, Delivery
from otel_bridge.export.sdk_exporter import SdkSpanExporterSender, readable_spans
from otel_bridge.producer.demo import ENV, JOB_SERVICE, SCENARIOS, WORKFLOW_SERVICE
from otel_bridge.tracker import OtelTracker


class _Recording(SdkSpanExporterSender):
    """The tracker's sender, keeping each request it is handed as the outbox encoded it."""

    requests: list[bytes] = []

    def send(self, request: bytes) -> object:
        _Recording.requests.append(request)
        return super().send(request)


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    """Each span of `request` in order, with its resource and scope set on it for comparison, its flags
    (and its links') left out: the SDK writes its own."""
    spans = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.ClearField("flags")
                for link in span.links:
                    link.ClearField("flags")
                spans.append((resource_spans.resource, scope_spans.scope, span))
    return spans


@pytest.fixture(scope="module")
def requests(tmp_path_factory) -> list[bytes]:
    """The requests the in-process tracker's real pipeline hands its sender, for every demo scenario."""
    _Recording.requests = []
    original = sdk_exporter.SdkSpanExporterSender
    from otel_bridge.tracker import in_process

    in_process.SdkSpanExporterSender = _Recording  # type: ignore[misc]
    metrics_off = pytest.MonkeyPatch()
    metrics_off.setenv("OTEL_METRICS_EXPORTER", "none")
    try:
        rng = random.Random(7)
        start = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
        exporter = InMemorySpanExporter()
        trackers = {
            service: OtelTracker(ENV, service, span_exporter=exporter, settle_seconds=0.2, flush_interval_seconds=None)
            for service in (WORKFLOW_SERVICE, JOB_SERVICE)
        }
        for name in SCENARIOS:
            for batch in SCENARIOS[name](start, rng):
                tracker = trackers[batch[0]["serviceKey"]]
                for event in batch:
                    tracker.emit({k: v for k, v in event.items() if k not in ("env", "serviceKey")})
                tracker.flush()
        for tracker in trackers.values():
            tracker.close()
    finally:
        in_process.SdkSpanExporterSender = original  # type: ignore[misc]
        metrics_off.undo()
    return list(_Recording.requests)


def test_the_sdks_encoding_of_the_spans_read_back_is_the_request_the_bridge_sent(requests):
    kinds, links, errors, events = set(), 0, 0, 0
    for request in requests:
        sent = ExportTraceServiceRequest.FromString(request)
        again = encode_spans(readable_spans(sent))
        assert _spans(again) == _spans(sent)
        for _, _, span in _spans(sent):
            kinds.add(span.kind)
            links += len(span.links)
            errors += span.status.code == 2
            events += len(span.events)
    # What was compared holds every part of a span: kinds, links, errors, events, parents and roots.
    assert len(kinds) >= 2 and links and errors and events
    assert sum(len(_spans(ExportTraceServiceRequest.FromString(r))) for r in requests) > 30


def test_what_the_bridges_limits_dropped_is_counted_by_the_sdks_spans_as_its_own_limits_count():
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="step a", start_time_unix_nano=1, end_time_unix_nano=2)
    span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count = 3, 4, 5
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    (read,) = readable_spans(request)
    assert (read.dropped_attributes, read.dropped_events, read.dropped_links) == (3, 4, 5)


class _Failing(InMemorySpanExporter):
    def __init__(self, answer: SpanExportResult | Exception) -> None:
        super().__init__()
        self.answer = answer

    def export(self, spans):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (SpanExportResult.FAILURE, "_Failing answered FAILURE"),
        (ConnectionError("backend away"), "_Failing raised ConnectionError('backend away')"),
    ],
)
def test_an_exporter_that_fails_or_raises_leaves_the_spans_to_be_sent_again(requests, answer, why):
    result = SdkSpanExporterSender(_Failing(answer)).send(requests[0])
    assert (result.delivery, result.reason) == (Delivery.RETRY, why)


def test_an_empty_request_is_sent_without_troubling_the_exporter():
    exporter = _Failing(SpanExportResult.FAILURE)
    assert SdkSpanExporterSender(exporter).send(b"") == SENT
