"""OTLP senders for traces and metrics, configured the standard way.

Endpoint, headers, TLS and compression come from the standard `OTEL_EXPORTER_OTLP_*`
variables, read by the SDK's own exporters, or from code in their place; what they are
given and how each is checked is `otlp_config.py`'s. The trace outbox already holds encoded spans, so traces go
through a thin shim that hands the SDK exporters a ready `ExportTraceServiceRequest`
instead of SDK spans.
"""

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics.export import MetricsData

from otel_bridge.config import HTTP_SCHEMES
from otel_bridge.export.health import exporting, quieten_sdk_exporters
from otel_bridge.export.otlp_config import (
    FROM_ENVIRONMENT,
    GRPC,
    OtlpConfig,
    exporter_arguments,
    exporter_named,
    first_time,
    parsed_headers,
    told_if_delta_asked,
    told_if_exponential_asked,
)
from otel_bridge.retry_after import seconds_asked
from otel_bridge.urls import without_secrets

log = logging.getLogger(__name__)
T = TypeVar("T")


class Delivery(StrEnum):
    SENT = "sent"
    # The backend could not take it now (down, overloaded, timed out): send it again later.
    RETRY = "retry"
    # The backend refused it for good (HTTP 4xx, a non-retryable gRPC code), or refused some of
    # its spans (OTLP partial_success): sending the same again will not help.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What the backend said of one request: a result, not a bool (the SDK's SpanExportResult, refined)."""

    delivery: Delivery
    reason: str = ""
    # Spans the backend refused while taking the rest (partial_success), 0 when it took all or none.
    rejected_spans: int = 0
    # How long the backend asked to be left before the next request (HTTP `Retry-After`, gRPC
    # `RetryInfo`), when it said so: longer than the exporter's own deadline let it wait.
    wait_seconds: float | None = None
    # Refused for its size (HTTP 413, gRPC's "larger than max"): smaller requests will be taken.
    too_large: bool = False
    # Refused for now for the backend's load or a quota (HTTP 429, gRPC RESOURCE_EXHAUSTED), or with a
    # wait asked: the backend is there and reached.
    throttled: bool = False


SENT = ExportResult(Delivery.SENT)


class TraceSender(Protocol):
    # `request`: a serialized ExportTraceServiceRequest (`span_encoding.export_request`).
    def send(self, request: bytes) -> ExportResult: ...

    def shutdown(self) -> None: ...


class MetricSender(Protocol):
    def send(self, data: MetricsData) -> ExportResult: ...

    def shutdown(self) -> None: ...


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def answered(response: bytes | ExportTraceServiceResponse | None, what: str = "spans") -> ExportResult:
    """A 2xx answer, read for the spans it may have refused (OTLP partial success). Of metrics (`what`
    is not spans), a refusal of some points is no failure: sending them again would not mend it."""
    if what != "spans":
        return SENT
    if isinstance(response, bytes | bytearray):
        try:
            response = ExportTraceServiceResponse.FromString(response)
        except Exception:  # a body that is not the response message: the backend took it all
            return SENT
    if response is None or response.partial_success.rejected_spans <= 0:
        return SENT
    partial = response.partial_success
    reason = partial.error_message or f"{partial.rejected_spans} spans rejected"
    return ExportResult(Delivery.REJECTED, reason, partial.rejected_spans)


# Refusals of the bridge rather than of its spans: a wrong credential or endpoint path. Taken as
# refusals for good, they set every span aside one by one (the drain halves a refused batch down to
# single spans) until someone fixed the configuration; as failures, the spans wait in the outbox, the
# export is told failing (log, /readyz, BridgeExportFailing) and everything goes out once it is fixed.
_HTTP_REFUSES_THE_BRIDGE = frozenset({401, 403, 404, 405, 407})


def not_the(what: str) -> str:
    """Why a refusal of the bridge itself is no refusal of what it sent (`what`: spans, data points)."""
    return f"the backend refuses the bridge, not its {what}: check the endpoint and its credentials"


class Recorder:
    """Stands in front of the exporter's client to keep the backend's last answer (the SDK keeps a bool)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RecordingTransport(Recorder):
    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.last = self._inner.request(*args, **kwargs)
        return self.last


class _SendsEncoded:
    """Makes an SDK OTLP/HTTP exporter send requests already encoded, keeping the backend's last answer."""

    _client: Any  # the exporter's HTTP client: endpoint, headers, TLS, compression, retries
    _what = "spans"  # what its requests carry, as its answers are told

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._recorder = _RecordingTransport(self._client._transport)
        self._client._transport = self._recorder  # the transport, duck-typed

    def send(self, request: bytes) -> ExportResult:
        return _sent_over_http(self._client, self._recorder, request, self._what)


class _HttpTraces(_SendsEncoded, HttpSpanExporter):
    def shutdown(self) -> None:
        with exporting():
            super().shutdown()  # type: ignore[no-untyped-call]


def _sent_over_http(client: Any, recorder: Recorder, request: bytes, what: str = "spans") -> ExportResult:
    """`request` sent by an SDK exporter's HTTP client (it owns endpoint, headers, TLS, compression and
    retries), and what the backend said of it, read from the answer `recorder` kept."""
    recorder.last = None
    with exporting():
        result = client.export(request)
    last = recorder.last
    if result.success:
        return answered(last.content() if last is not None else None, what)
    code = result.status_code
    if code in _HTTP_REFUSES_THE_BRIDGE:
        return ExportResult(Delivery.RETRY, f"HTTP {code} {result.reason or ''} ({not_the(what)})")
    if code is not None and 400 <= code < 500 and code not in (408, 429):
        content = _content(last)
        body = content[:500].decode("utf-8", "replace")
        too_large = code == 413 or (code == 400 and _TOO_LARGE in content)
        return ExportResult(Delivery.REJECTED, f"HTTP {code} {result.reason or ''} {body}".strip(), too_large=too_large)
    # Given up on at shutdown, the exporter's result says nothing: its last attempt does.
    error = result.error or (last.error if last is not None else None)
    if not code:
        return ExportResult(Delivery.RETRY, _plainly(error))
    asked = seconds_asked(_header(last, "retry-after"))
    return throttled(ExportResult(Delivery.RETRY, f"HTTP {code}"), asked, said=code == 429)


# What the OpenTelemetry Collector's OTLP/HTTP receiver says of a body over its `max_request_body_size`
# (Go's `http.MaxBytesReader`), in the google.rpc.Status of a 400, not a 413.
_TOO_LARGE = b"http: request body too large"


def _content(answer: Any) -> bytes:
    try:
        content = answer.content() if answer is not None else b""
    except Exception:  # a body that cannot be read: as if none
        return b""
    return content if isinstance(content, bytes) else b""


def _header(answer: Any, name: str) -> str | None:
    try:
        return answer.headers().get(name) if answer is not None else None
    except Exception:  # headers that do not parse: as if not given
        return None


# The longest wait a backend's throttling is taken at its word for: past it, the export is asked
# again and told failing (the OpenTelemetry Collector gives up retrying after five minutes in all).
LONGEST_WAIT_ASKED = 300.0


def throttled(result: ExportResult, seconds: float | None, *, said: bool = False) -> ExportResult:
    """`result` with the wait the backend asked for (`Retry-After`, `RetryInfo`: seconds), at most
    `LONGEST_WAIT_ASKED`, said in its reason, and told throttled; `said`: throttled by its code alone
    (HTTP 429, gRPC RESOURCE_EXHAUSTED), no wait asked. As it was otherwise."""
    if seconds is None:
        return replace(result, throttled=True) if said else result
    seconds = min(seconds, LONGEST_WAIT_ASKED)
    reason = f"{result.reason}, the backend asks to wait {seconds:.3g} s"
    return replace(result, reason=reason, wait_seconds=seconds, throttled=True)


def _plainly(error: object) -> str:
    """An HTTP client's error as the cause it wraps: "cannot connect: [Errno 111] Connection refused",
    not four nested reprs (`HTTPConnectionPool(…): Max retries exceeded … NewConnectionError(…)`)."""
    if not isinstance(error, BaseException):
        return str(error or "")
    cause: BaseException = error
    for _ in range(8):  # requests' error holds urllib3's, whose `reason` was caused by the socket's
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException):
            inner = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else cause.__cause__
        if inner is None:
            break
        cause = inner
    if cause is error:
        return str(error)
    told = str(cause) or type(cause).__name__
    return f"cannot connect: {told}" if "connect" in type(error).__name__.lower() else f"{type(error).__name__}: {told}"


class _MetricSender:
    """The SDK's OTLP metric exporter given the request encoded as it would encode it (`encode_metrics`),
    so that a failing export says why, as a trace export does: the SDK's `export` says only that it failed,
    and the gRPC core's own lines on stderr (outside the log, `--log-format json` too) were all that told."""

    def __init__(self, exporter: TraceSender) -> None:
        self._exporter = exporter  # the metrics' exporter of requests already encoded (`_encoded_sender`)

    def send(self, data: MetricsData) -> ExportResult:
        return self._exporter.send(encode_metrics(data).SerializeToString())

    def shutdown(self) -> None:
        with exporting():
            self._exporter.shutdown()


class NoSender:
    """OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER = none, or OTEL_SDK_DISABLED=true: accept and discard."""

    _endpoint = "nowhere (turned off)"

    def send(self, _request: object) -> Any:
        return SENT

    def shutdown(self) -> None:
        pass


def endpoint_of(sender: object) -> str:
    """Where a sender exports to, for messages and logs, without the credentials its URL may hold (the SDK
    exporters keep it as `_endpoint`, and so do ours; the gRPC one as `host:port`, its user info kept)."""
    endpoint = str(getattr(sender, "_endpoint", None) or getattr(getattr(sender, "_exporter", None), "_endpoint", "-"))
    return without_secrets(endpoint) if "://" in endpoint else re.sub(r"^[^/@]*@", "***@", endpoint)


def _a_url(sender: T, signal: str, config: OtlpConfig) -> T:
    """`sender`, once its OTLP/HTTP endpoint is a URL: without a scheme (`::1`, `collector:4318` read
    as a path) every export failed, told as a failing backend, never as the setting it is."""
    endpoint = endpoint_of(sender)
    if not endpoint.startswith(HTTP_SCHEMES):
        variable = config.given.get("ENDPOINT", ("",))[0] or (
            f"OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        )
        raise ValueError(
            f"the OTLP/HTTP {signal} endpoint {without_secrets(endpoint)!r} is not an http:// or https:// URL "
            f"({variable})"
        )
    _told_if_path_misplaced(signal, endpoint, config)
    return sender


def _told_if_path_misplaced(signal: str, endpoint: str, config: OtlpConfig) -> None:
    """A path the Collector answers 404 at, told once at start: a base URL ending with a signal's path
    (each signal's is added to it), or a signal's own URL without one (used as it is given). Every
    export was refused, told only as "check the endpoint and its credentials"."""
    variable, given = config.variable(signal, "ENDPOINT")
    base, own = (given, "") if config.is_base(variable) else ("", given)
    if base.rstrip("/").endswith(("/v1/traces", "/v1/metrics", "/v1/logs")) and first_time("path", base):
        log.warning(
            "%s=%s ends with a signal's path: it is the base URL, and each signal's path is added to it (%s); write %s",
            variable,
            without_secrets(base),
            without_secrets(endpoint),
            without_secrets(base.rstrip("/").rsplit("/v1/", 1)[0]),
        )
    if own and urlsplit(endpoint).path in ("", "/") and first_time("path", variable, endpoint):
        log.warning(
            "%s=%s has no path: a signal's own endpoint is used as it is given, so the %s go to its root; "
            "write %s/v1/%s (or give the base URL as OTEL_EXPORTER_OTLP_ENDPOINT)",
            variable,
            without_secrets(endpoint),
            signal,
            without_secrets(endpoint.rstrip("/")),
            signal,
        )


def _verify_as_configured(exporter: T) -> T:
    """`exporter` (an SDK OTLP/HTTP one), verifying the backend with the CA it was given.

    The SDK gives its requests session the `OTEL_EXPORTER_OTLP_*CERTIFICATE` file as the session's own
    `verify`; requests lets `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` take over from a session's `verify`
    (psf/requests#3829), and images with a corporate CA bundle set them. The backend's private CA was then
    never asked, and every export failed its certificate check. Proxies and the rest still come from
    the environment."""
    client = getattr(exporter, "_client", None)
    transport = getattr(client, "_transport", None)
    session = getattr(getattr(transport, "_inner", transport), "_session", None)
    if session is None or not isinstance(session.verify, str):
        return exporter  # no CA file given: the environment's bundle is as good as the default
    merge = session.merge_environment_settings

    def as_configured(url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        settings = dict(merge(url, proxies, stream, verify, cert))
        if verify is None:  # not asked for by the request: the session's own, the CA configured
            settings["verify"] = session.verify
        return settings

    session.merge_environment_settings = as_configured
    return exporter


def trace_sender(config: OtlpConfig = FROM_ENVIRONMENT) -> TraceSender:
    """What sends the spans, as the standard variables (and code in their place) say."""
    exporter = exporter_named("traces")
    if exporter == "none":
        return NoSender()
    if exporter == "console":
        from otel_bridge.export.console import ConsoleTraces

        return ConsoleTraces(None)
    return _quiet(_encoded_sender("traces", config))


def metric_sender(config: OtlpConfig = FROM_ENVIRONMENT) -> MetricSender:
    """What sends the metrics, as the standard variables (and code in their place) say."""
    exporter = exporter_named("metrics")
    if exporter == "none":
        return NoSender()  # its answer is truthy: success
    told_if_delta_asked()
    told_if_exponential_asked()
    if exporter == "console":
        from otel_bridge.export.console import ConsoleMetrics

        return ConsoleMetrics(None)
    return _quiet(_MetricSender(_encoded_sender("metrics", config)))


def _encoded_sender(signal: str, config: OtlpConfig) -> TraceSender:
    """The SDK's OTLP exporter of `signal` ("traces" or "metrics") for the protocol the variables say,
    sending requests already encoded and telling what the backend answered: a TraceSender's `send`, of
    an ExportMetricsServiceRequest for the metrics."""
    protocol, given = exporter_arguments(signal, config)
    if protocol == GRPC:
        from otel_bridge.export import otlp_grpc  # gRPC's own modules: only when asked for

        grpc_exporter = otlp_grpc.GrpcTraces if signal == "traces" else otlp_grpc.GrpcMetrics
        return _told_if_tls_unasked(grpc_exporter(**given), signal, config)
    http_exporter = _HttpTraces if signal == "traces" else _HttpMetrics
    return _a_url(_verify_as_configured(_headers_in_place(http_exporter(**given), signal, config)), signal, config)


# What the SDK's OTLP/HTTP client sends of its own, whatever the variables say.
_ITS_OWN_HEADERS = frozenset({"content-type", "user-agent", "content-encoding"})


def _headers_in_place(exporter: T, signal: str, config: OtlpConfig) -> T:
    """`exporter` (an SDK OTLP/HTTP one) sending the headers code gave in place of the variables', as its
    gRPC twin does: it adds those it is given to the variables', and an application's own backend's
    credential (its SDK's `OTEL_EXPORTER_OTLP_HEADERS`) went to the backend code named."""
    if (coded := config.coded("HEADERS")) is None:
        return exporter
    theirs = (
        set(parsed_headers(FROM_ENVIRONMENT.variable(signal, "HEADERS")[1]))
        - set(parsed_headers(coded))
        - _ITS_OWN_HEADERS
    )
    client: Any = getattr(exporter, "_client", None)
    client._headers = {name: value for name, value in client._headers.items() if name.lower() not in theirs}
    return exporter


def _quiet(sender: T) -> T:
    """`sender`, its SDK exporter's loggers (imported by now) filtered during its exports (`exporting`)."""
    quieten_sdk_exporters()
    return sender


def _told_if_tls_unasked(exporter: T, signal: str, config: OtlpConfig) -> T:
    """The gRPC exporter, after a warning when it will speak TLS to an endpoint nobody said was TLS.

    The SDK reads an endpoint without a scheme (`collector:4317`, the form gRPC docs use) as TLS
    unless `OTEL_EXPORTER_OTLP_INSECURE` says otherwise; a plain-text Collector then fails every
    handshake, and the export log says only that the backend is unavailable.
    """
    if getattr(exporter, "_insecure", True):
        return exporter
    endpoint = config.variable(signal, "ENDPOINT")[1]
    if (
        endpoint.lower().startswith("https://")
        or config.variable(signal, "INSECURE")[1]
        or config.variable(signal, "CERTIFICATE")[1]
    ):
        return exporter  # TLS asked for: a scheme, a certificate, or INSECURE=false said so
    if not first_time("tls", signal, endpoint):  # once, however many exporters a signal has
        return exporter
    plain = "otlp['insecure']=True" if config.coded("ENDPOINT") is not None else "OTEL_EXPORTER_OTLP_INSECURE=true"
    log.warning(
        "OTLP/gRPC %s endpoint %r has no scheme, so it is reached with TLS; for a plain-text Collector "
        "write http://%s (or set %s)",
        signal,
        endpoint,
        endpoint,
        plain,
    )
    return exporter


def stop_retrying(*senders: object) -> None:
    """A retry an SDK exporter is waiting out gives up now, and every export after makes one
    attempt only: its own shutdown signal, set without closing it. For the exports at exit,
    which `drain_timeout_seconds` bounds."""
    for sender in senders:
        exporter = getattr(sender, "_exporter", sender)
        for event in (
            getattr(getattr(exporter, "_client", None), "_shutdown_event", None),  # OTLP/HTTP
            getattr(exporter, "_shutdown_in_progress", None),  # OTLP/gRPC
        ):
            if isinstance(event, threading.Event):
                event.set()


def limit_timeouts(seconds: float, *senders: object) -> None:
    """Each export request from now on waits `seconds` at most for the backend (the SDK's own
    per-request timeout, `OTEL_EXPORTER_OTLP_TIMEOUT`, lowered): for the exports at exit, whose
    whole time `drain_timeout_seconds` bounds, when a backend takes connections and never answers."""
    for sender in senders:
        exporter = getattr(sender, "_exporter", sender)
        # OTLP/HTTP keeps it on its client, OTLP/gRPC on the exporter (its `_client` is the stub).
        for holder in (getattr(exporter, "_client", None), exporter):
            timeout = getattr(holder, "_timeout", None)
            if isinstance(timeout, int | float):
                holder._timeout = max(min(timeout, seconds), 0.1)  # type: ignore[union-attr]


def merge_metrics(parts: Sequence[MetricsData | None]) -> MetricsData | None:
    resource_metrics = [rm for part in parts if part is not None for rm in part.resource_metrics]
    return MetricsData(resource_metrics=resource_metrics) if resource_metrics else None


def probe(
    signal: str, timeout_seconds: float, config: OtlpConfig = FROM_ENVIRONMENT
) -> tuple[str, ExportResult] | None:
    """One empty export request of `signal` ("traces" or "metrics"), made as the bridge makes its
    exports (the standard variables: endpoint, protocol, headers, TLS, compression), with one attempt
    and at most `timeout_seconds`: (where it went, what the backend said). None when that export is off
    or goes to the console. An empty request is a valid one: a backend takes it and stores nothing."""
    if exporter_named(signal) in ("none", "console"):
        return None
    sender = _quiet(_encoded_sender(signal, config))
    stop_retrying(sender)
    limit_timeouts(timeout_seconds, sender)
    try:
        return endpoint_of(sender), sender.send(b"")
    finally:
        sender.shutdown()


class _HttpMetrics(_SendsEncoded, HttpMetricExporter):
    """The SDK's OTLP/HTTP metric exporter, sending a request already encoded, as `_HttpTraces` does."""

    _what = "data points"
