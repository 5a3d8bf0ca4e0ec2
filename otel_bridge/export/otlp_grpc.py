"""The OTLP/gRPC trace sender: imported only by a bridge whose traces go over gRPC (grpc's own
modules take ~40 ms to import, at every start of the sidecar and of an in-process tracker)."""

from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.export.health import exporting
from otel_bridge.export.otlp import Delivery, ExportResult, Recorder, answered, not_the, span_count

# Refusals of the bridge rather than of its spans (see otlp.py's HTTP ones): the spans wait in the
# outbox and the export is told failing until the configuration is mended.
_REFUSES_THE_BRIDGE = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
     grpc.StatusCode.UNIMPLEMENTED}
)  # fmt: skip


class _RecordingStub(Recorder):
    def Export(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - the gRPC method's name
        try:
            self.last = self._inner.Export(*args, **kwargs)
        except grpc.RpcError as error:
            self.last = error
            raise
        return self.last


class _SendsEncoded:
    """Makes an SDK OTLP/gRPC exporter send requests already built, keeping the backend's last answer or
    error. The SDK's mixin translates SDK spans (or metrics) into a request right before sending: ours are
    built, and the stub serializes a message itself."""

    _client: Any  # the exporter's stub
    _request: Any  # the request message, read from the encoded bytes `send` is given

    def _translate_data(self, data: Any) -> Any:
        return data

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[misc]
        self._recorder = _RecordingStub(self._client)
        self._client = self._recorder  # the stub, duck-typed

    _what = "spans"  # what its requests carry, as its answers are told

    def send(self, request: bytes) -> ExportResult:
        return _sent_over_grpc(self, self._recorder, self._request.FromString(request), self._what)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with exporting():
            super().shutdown(timeout_millis, **kwargs)  # type: ignore[misc]


class GrpcTraces(_SendsEncoded, OTLPSpanExporter):
    _request = ExportTraceServiceRequest

    def _count_data(self, data: ExportTraceServiceRequest) -> int:  # type: ignore[override]
        return span_count(data)


def _sent_over_grpc(exporter: Any, recorder: Recorder, message: Any, what: str = "spans") -> ExportResult:
    """`message` sent by an SDK gRPC exporter (its `_export`: channel, metadata, retries), and what the
    backend said of it, read from the answer or error `recorder` kept."""
    recorder.last = None
    with exporting():
        # SpanExportResult and MetricExportResult alike: SUCCESS is the first member of both.
        ok = exporter._export(message).value == SpanExportResult.SUCCESS.value
    last = recorder.last
    if ok:
        return answered(last if isinstance(last, ExportTraceServiceResponse) else None, what)
    if not isinstance(last, grpc.RpcError):
        return ExportResult(Delivery.RETRY, "")
    code, details = last.code(), last.details()
    if code in _REFUSES_THE_BRIDGE:
        return ExportResult(Delivery.RETRY, f"gRPC {code.name}: {details} ({not_the(what)})")
    if code not in exporter._retryable_error_codes:
        return ExportResult(Delivery.REJECTED, f"gRPC {code.name}: {details}")
    # The details say what a code alone does not ("failed to connect to all addresses", a DNS name).
    return ExportResult(Delivery.RETRY, f"gRPC {code.name}: {details}" if details else f"gRPC {code.name}")


class GrpcMetrics(_SendsEncoded, OTLPMetricExporter):
    """The SDK's OTLP/gRPC metric exporter, sending a request already encoded."""

    _request = ExportMetricsServiceRequest
    _what = "data points"

    def _count_data(self, data: ExportMetricsServiceRequest) -> int:  # type: ignore[override]
        return 0
