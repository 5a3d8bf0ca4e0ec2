"""The OTLP/gRPC trace sender: imported only by a bridge whose traces go over gRPC (grpc's own
modules take ~40 ms to import, at every start of the sidecar and of an in-process tracker)."""

from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.export.health import exporting
from otel_bridge.export.otlp import NOT_THE_SPANS, Delivery, ExportResult, Recorder, answered, span_count

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


class GrpcTraces(OTLPSpanExporter):
    # The mixin translates SDK spans into a request right before sending: our
    # requests are already built.
    def _translate_data(self, data: ExportTraceServiceRequest) -> ExportTraceServiceRequest:  # type: ignore[override]
        return data

    def _count_data(self, data: ExportTraceServiceRequest) -> int:  # type: ignore[override]
        return span_count(data)

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._recorder = _RecordingStub(self._client)
        self._client = self._recorder  # type: ignore[assignment]  # the stub, duck-typed

    def send(self, request: bytes) -> ExportResult:
        self._recorder.last = None
        # The gRPC stub serializes a message itself.
        message = ExportTraceServiceRequest.FromString(request)
        with exporting():
            ok = self._export(message) == SpanExportResult.SUCCESS  # type: ignore[arg-type]
        last = self._recorder.last
        if ok:
            return answered(last)
        if not isinstance(last, grpc.RpcError):
            return ExportResult(Delivery.RETRY, "")
        code, details = last.code(), last.details()
        if code in _REFUSES_THE_BRIDGE:
            return ExportResult(Delivery.RETRY, f"gRPC {code.name}: {details} ({NOT_THE_SPANS})")
        if code not in self._retryable_error_codes:  # type: ignore[operator]
            return ExportResult(Delivery.REJECTED, f"gRPC {code.name}: {details}")
        return ExportResult(Delivery.RETRY, f"gRPC {code.name}")

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with exporting():
            super().shutdown(timeout_millis, **kwargs)
