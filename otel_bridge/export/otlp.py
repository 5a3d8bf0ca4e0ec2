"""OTLP senders for traces and metrics, configured the standard way.

Endpoint, headers, TLS, compression and timeout come from the standard
`OTEL_EXPORTER_OTLP_*` variables, read by the SDK's own exporters. The trace
outbox already holds encoded spans, so traces go through a thin shim that hands
the SDK exporters a ready `ExportTraceServiceRequest` instead of SDK spans.
"""

import logging
import os
from collections.abc import Sequence
from typing import Protocol

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)


class TraceSender(Protocol):
    def send(self, request: ExportTraceServiceRequest) -> bool: ...

    def shutdown(self) -> None: ...


class MetricSender(Protocol):
    def send(self, data: MetricsData) -> bool: ...

    def shutdown(self) -> None: ...


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


class _GrpcTraces(GrpcSpanExporter):
    # The mixin translates SDK spans into a request right before sending: our
    # requests are already built.
    def _translate_data(self, data: ExportTraceServiceRequest) -> ExportTraceServiceRequest:  # type: ignore[override]
        return data

    def _count_data(self, data: ExportTraceServiceRequest) -> int:  # type: ignore[override]
        return _span_count(data)

    def send(self, request: ExportTraceServiceRequest) -> bool:
        return self._export(request) == SpanExportResult.SUCCESS  # type: ignore[arg-type]


class _HttpTraces(HttpSpanExporter):
    def send(self, request: ExportTraceServiceRequest) -> bool:
        # The exporter's HTTP client owns endpoint, headers, TLS, compression and retries.
        return bool(self._client.export(request.SerializeToString()).success)


class _MetricSender:
    def __init__(self, exporter: MetricExporter) -> None:
        self._exporter = exporter

    def send(self, data: MetricsData) -> bool:
        return self._exporter.export(data) == MetricExportResult.SUCCESS

    def shutdown(self) -> None:
        self._exporter.shutdown()


class NoSender:
    """OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER = none: accept and discard."""

    def send(self, _request: object) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def protocol_for(signal: str) -> str:
    """The OTLP protocol for `signal` ("traces", "metrics"), as the SDK variables say."""
    value = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or HTTP_PROTOBUF
    ).strip()
    if value not in PROTOCOLS:
        raise ValueError(f"unsupported OTLP protocol {value!r} for {signal}: use one of {', '.join(PROTOCOLS)}")
    return value


def _disabled(signal: str) -> bool:
    return os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none"


def trace_sender() -> TraceSender:
    if _disabled("traces"):
        return NoSender()
    return _GrpcTraces() if protocol_for("traces") == GRPC else _HttpTraces()


def metric_sender() -> MetricSender:
    if _disabled("metrics"):
        return NoSender()  # type: ignore[return-value]
    exporter = GrpcMetricExporter() if protocol_for("metrics") == GRPC else HttpMetricExporter()
    return _MetricSender(exporter)


def merge_metrics(parts: Sequence[MetricsData | None]) -> MetricsData | None:
    resource_metrics = [rm for part in parts if part is not None for rm in part.resource_metrics]
    return MetricsData(resource_metrics=resource_metrics) if resource_metrics else None
