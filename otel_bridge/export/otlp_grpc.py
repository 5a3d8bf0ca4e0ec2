"""The OTLP/gRPC trace sender: imported only by a bridge whose traces go over gRPC (grpc's own
modules take ~40 ms to import, at every start of the sidecar and of an in-process tracker)."""

import logging
import os
from typing import Any

import grpc
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_bridge.export.health import exporting
from otel_bridge.export.otlp import (
    Delivery,
    ExportResult,
    Recorder,
    answered,
    not_the,
    span_count,
    throttled,
)
from otel_bridge.export.otlp_config import TLS_FILES, OtlpConfig, parsed_headers

log = logging.getLogger(__name__)

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
    _carries: str  # its signal, "traces" or "metrics"

    def __init__(self, config: OtlpConfig, **kwargs: Any) -> None:
        self._config = config
        # TLS files given in code, which the SDK never reads (it reads the variables): credentials made of them.
        coded = any(config.coded(name) is not None for name in TLS_FILES)
        if coded and not kwargs["insecure"] and (held := _tls_files_held(self._carries, config)) is not None:
            kwargs["credentials"] = grpc.ssl_channel_credentials(*held)
        super().__init__(**kwargs)
        exporter: Any = self  # the SDK's attributes, typed as their first assignments guessed
        if (headers := config.coded("HEADERS")) is not None:
            # None given in code (`{}`) is none sent: the SDK's exporter read the variable for an empty mapping.
            exporter._headers = tuple(parsed_headers(headers).items())
        # The exporter's own retries of RESOURCE_EXHAUSTED (1, 2, 4 s within its timeout) are the
        # bridge's to make: a request too large is halved at once, a quota waited for by the outbox.
        exporter._retryable_error_codes = frozenset(exporter._retryable_error_codes) - {
            grpc.StatusCode.RESOURCE_EXHAUSTED
        }

    def _translate_data(self, data: Any) -> Any:
        return data

    def _initialize_channel_and_stub(self) -> None:
        # At start, and again each time an export meets UNAVAILABLE (the SDK's reconnection): a client
        # certificate renewed on disk since (cert-manager's, in place) is presented from this connection
        # on. The SDK reads the files once, and presented the old one at every reconnection after it ended.
        exporter: Any = self
        provider = (
            f"OTEL_PYTHON_EXPORTER_OTLP_GRPC_{exporter._signal.upper()}_CREDENTIAL_PROVIDER",
            _CREDENTIAL_PROVIDER,
        )
        if not exporter._insecure and not any(os.environ.get(variable) for variable in provider):
            held = _tls_files_held(exporter._signal, self._config)
            if held is not None:
                before = getattr(self, "_tls_held", None)
                if before is not None and held != before:
                    exporter._credentials = grpc.ssl_channel_credentials(*held)
                    log.info(
                        "the OTLP/gRPC %s export's TLS files changed: taken for its connections from now on",
                        exporter._signal,
                    )
                self._tls_held = held
        super()._initialize_channel_and_stub()  # type: ignore[misc]
        self._recorder = _RecordingStub(self._client)
        self._client = self._recorder  # the stub, duck-typed

    _what = "spans"  # what its requests carry, as its answers are told

    def send(self, request: bytes) -> ExportResult:
        return _sent_over_grpc(self, self._recorder, self._request.FromString(request), self._what)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with exporting():
            super().shutdown(timeout_millis, **kwargs)  # type: ignore[misc]


# The SDK's own way to credentials (an entry point): left as it made them.
_CREDENTIAL_PROVIDER = "OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER"


def _tls_files_held(signal: str, config: OtlpConfig) -> tuple[bytes | None, ...] | None:
    """What the TLS files the standard variables (or `config`) name for `signal` hold now (None for one not
    named); None when one named cannot be read (mid-renewal): the credentials then stay as they were, looked
    at again at the next reconnection."""
    held: list[bytes | None] = []
    for name in TLS_FILES:  # in the order the credentials take them
        path = config.variable(signal, name)[1]
        try:
            held.append(open(path, "rb").read() if path else None)  # noqa: SIM115 - a few KB, read whole
        except OSError:
            return None
    return tuple(held)


class GrpcTraces(_SendsEncoded, OTLPSpanExporter):
    _request = ExportTraceServiceRequest
    _carries = "traces"

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
    told = f"gRPC {code.name}: {details}" if details else f"gRPC {code.name}"
    if code in _REFUSES_THE_BRIDGE:
        return ExportResult(Delivery.RETRY, f"{told} ({not_the(what)})")
    wait = _retry_delay(last)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if wait is None and _TOO_LARGE in (details or ""):
            # A backend taking smaller messages than `max_export_bytes` makes (its receiver's own
            # limit): the same request would be refused for ever, halves are taken.
            return ExportResult(Delivery.REJECTED, told, too_large=True)
        # A quota, waited out though the specification calls one without RetryInfo final: refused,
        # every span would be set aside, one request each, for as long as the quota lasted.
        return throttled(ExportResult(Delivery.RETRY, told), wait, said=True)
    if code not in exporter._retryable_error_codes:
        return ExportResult(Delivery.REJECTED, told)
    # The details say what a code alone does not ("failed to connect to all addresses", a DNS name).
    return throttled(ExportResult(Delivery.RETRY, told), wait)


# What gRPC says of a message past the receiving end's `max_receive_message_length`.
_TOO_LARGE = "larger than max"


def _retry_delay(error: grpc.RpcError) -> float | None:
    """The wait a backend's RetryInfo asks for (trailing metadata `google.rpc.retryinfo-bin`, as the
    OTLP specification has a throttling server send it), in seconds; None when it sent none."""
    metadata: Any = error.trailing_metadata() or ()
    for key, sent in metadata:
        if key == "google.rpc.retryinfo-bin" and isinstance(sent, bytes):
            try:
                delay = RetryInfo.FromString(sent).retry_delay
            except Exception:  # what does not parse: as if none were sent
                return None
            seconds: float = delay.seconds + delay.nanos / 1e9
            return max(seconds, 0.0)
    return None


class GrpcMetrics(_SendsEncoded, OTLPMetricExporter):
    """The SDK's OTLP/gRPC metric exporter, sending a request already encoded."""

    _request = ExportMetricsServiceRequest
    _what = "data points"
    _carries = "metrics"

    def _count_data(self, data: ExportMetricsServiceRequest) -> int:  # type: ignore[override]
        return 0
