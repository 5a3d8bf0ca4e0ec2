"""OTLP senders for traces and metrics, configured the standard way.

Endpoint, headers, TLS and compression come from the standard `OTEL_EXPORTER_OTLP_*`
variables, read by the SDK's own exporters, or from code in their place (`OtlpConfig`: the
in-process tracker's `otlp=`), given to them; the timeout is read here (`export_timeout`),
checked, and given to them. The trace outbox already holds encoded spans, so traces go
through a thin shim that hands the SDK exporters a ready `ExportTraceServiceRequest`
instead of SDK spans.
"""

import difflib
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.util.re import parse_env_headers

from otel_bridge import pem
from otel_bridge.config import HTTP_SCHEMES
from otel_bridge.export.health import exporting, quieten_sdk_exporters
from otel_bridge.retry_after import seconds_asked
from otel_bridge.tokens import HEADER_NAME, TOKEN
from otel_bridge.urls import host_problem, without_secrets

log = logging.getLogger(__name__)
T = TypeVar("T")

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)


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


def protocol_for(signal: str, config: "OtlpConfig | None" = None) -> str:
    """The OTLP protocol for `signal` ("traces", "metrics"), as the SDK variables (or `config`) say."""
    value = (config or FROM_ENVIRONMENT).variable(signal, "PROTOCOL")[1] or HTTP_PROTOBUF
    if value not in PROTOCOLS:
        raise ValueError(f"unsupported OTLP protocol {value!r} for {signal}: use one of {', '.join(PROTOCOLS)}")
    return value


def sdk_disabled() -> bool:
    """`OTEL_SDK_DISABLED`, read as the specification reads a boolean: only "true", in any case, is
    true; another value than "false" or empty is told (once) and read as false."""
    raw = os.environ.get("OTEL_SDK_DISABLED", "").strip()
    if raw.lower() == "true":
        return True
    if raw and raw.lower() != "false" and _first_time("OTEL_SDK_DISABLED", raw):
        log.warning("OTEL_SDK_DISABLED=%s is neither true nor false: read as false, telemetry is exported", raw)
    return False


def _exporter(signal: str) -> str:
    """`OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` (a comma-separated list in the specification):
    otlp, the default and the first choice; console; none. `OTEL_SDK_DISABLED=true` turns both off, as
    it turns off the SDK's own providers (an application's tests set it to export nothing)."""
    if sdk_disabled():
        return "none"
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    raw = os.environ.get(variable, "")
    named = {value.strip().lower() for value in raw.split(",") if value.strip()} or {"otlp"}
    if named == {"none"}:
        return "none"
    for exporter in ("otlp", "console"):
        if exporter in named:
            return exporter
    # An application's own value (zipkin, prometheus) must not stop the in-process tracker. Told once
    # (a bridge makes a trace sender per concurrent export).
    if _first_time("exporter", variable, raw):
        log.warning("%s=%s: otel-bridge exports its %s over otlp (or console, none); using otlp", variable, raw, signal)
    return "otlp"


# What has been told once per process (a bridge makes a sender per concurrent export, a tracker a bridge).
_TOLD: set[tuple[str, ...]] = set()


def _first_time(*what: str) -> bool:
    """True the first time `what` is asked about in this process."""
    if what in _TOLD:
        return False
    _TOLD.add(what)
    return True


# How an `OTEL_EXPORTER_OTLP_*TIMEOUT` value is counted, in seconds a unit. The specification counts
# milliseconds, as the Collector and the other languages' SDKs do; the Python SDK's exporters read
# seconds (open-telemetry/opentelemetry-python#4044), so an operator's `10000` (ten seconds
# everywhere else) held each export request of the bridge up to 2.8 hours on a backend that took
# the connection and never answered. The sidecar reads milliseconds; the in-process tracker reads
# seconds, as the application's own Python exporters in its process read the same variable.
MILLISECONDS = 1e-3
SECONDS = 1.0

# The endpoint every signal's path is added to (a signal's own is used as it is given).
_BASE_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


class OtlpOptions(TypedDict, total=False):
    """The OTLP export's settings given in code (the in-process tracker's `otlp=`), each in place of its
    standard variables (`endpoint`: `OTEL_EXPORTER_OTLP_ENDPOINT` and each signal's own), read as they are."""

    endpoint: str  # the base URL: each signal's path is added (`/v1/traces`); gRPC's `http://host:4317`
    protocol: Literal["http/protobuf", "grpc"]
    headers: Mapping[str, str]
    timeout_seconds: float
    compression: Literal["gzip", "deflate", "none"]
    certificate: str | Path  # the CA the backend's certificate is checked against
    client_key: str | Path  # mutual TLS: the exporter's own key and certificate
    client_certificate: str | Path
    insecure: bool  # gRPC without a scheme in the endpoint: plain text


# Each option's standard variable name (OTEL_EXPORTER_OTLP_{NAME}) and the types it may be given as.
_OPTIONS: dict[str, tuple[str, tuple[type, ...]]] = {
    "endpoint": ("ENDPOINT", (str,)),
    "protocol": ("PROTOCOL", (str,)),
    "headers": ("HEADERS", (Mapping,)),
    "timeout_seconds": ("TIMEOUT", (int, float)),
    "compression": ("COMPRESSION", (str,)),
    "certificate": ("CERTIFICATE", (str, Path)),
    "client_key": ("CLIENT_KEY", (str, Path)),
    "client_certificate": ("CLIENT_CERTIFICATE", (str, Path)),
    "insecure": ("INSECURE", (bool,)),
}
# A header's value as HTTP carries it: printable ASCII, spaces and tabs (a line break in one split the
# request, and what is not Latin-1 failed every export, told as a backend away).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """What configures the OTLP export: the standard variables, under what code gave in their place.

    `given`: by standard name (ENDPOINT, HEADERS, …), how it was given (for messages) and its value
    written as its variable would hold it, so that it is read and checked as the variable is.
    `timeout_unit`: how a timeout counts (`MILLISECONDS`, the specification's; `SECONDS` in a Python
    application's process, as its own exporters read the variables)."""

    given: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    timeout_unit: float = MILLISECONDS

    @classmethod
    def in_code(cls, options: Mapping[str, Any] | None, timeout_unit: float) -> "OtlpConfig":
        """The configuration `options` (an `OtlpOptions`) gives over the variables; TypeError for a key that
        is no option or a value of the wrong type, ValueError for a header HTTP cannot carry."""
        given: dict[str, tuple[str, str]] = {}
        for key, value in (options or {}).items():
            if key not in _OPTIONS:
                close = difflib.get_close_matches(str(key), list(_OPTIONS), n=1, cutoff=0.6)
                meant = f"; did you mean {close[0]!r}?" if close else f" (the options: {', '.join(_OPTIONS)})"
                raise TypeError(f"otlp: {key!r} is no option of the OTLP export{meant}")
            name, types = _OPTIONS[key]
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                kinds = " or ".join(f"{'an' if t.__name__[0] in 'aeiou' else 'a'} {t.__name__}" for t in types)
                raise TypeError(f"otlp[{key!r}] is {type(value).__name__}: give {kinds}")
            given[name] = (f"otlp[{key!r}]", _as_variable(key, value))
        return cls(given, timeout_unit)

    def variable(self, signal: str, name: str) -> tuple[str, str]:
        """What gives `name` (ENDPOINT, TIMEOUT, …) to `signal`'s export, and its value: code's, else the
        signal's own variable, then the one for every signal, as the SDK and the specification read them
        (an empty value is unset); the latter's name and "" when nothing gives it."""
        if (given := self.given.get(name)) is not None:
            return given
        for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
            if value := os.environ.get(variable, "").strip():
                return variable, value
        return f"OTEL_EXPORTER_OTLP_{name}", ""

    def coded(self, name: str) -> str | None:
        """`name`'s value when code gave it (the SDK's exporter must then be given it: it reads the variables)."""
        given = self.given.get(name)
        return None if given is None else given[1]

    def is_base(self, variable: str) -> bool:
        """Whether the endpoint given by `variable` is a base URL, each signal's path added to it."""
        return variable in (_BASE_ENDPOINT, self.given.get("ENDPOINT", ("", ""))[0])


def _as_variable(key: str, value: Any) -> str:
    """An option's value written as its standard variable holds it."""
    if key == "insecure":
        return "true" if value else "false"
    if key == "timeout_seconds":
        return repr(float(value))
    if key != "headers":
        return str(value).strip()
    written = []
    for name, text in value.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ValueError(f"otlp['headers']: {name!r} is no header name")
        if not isinstance(text, str) or not _HEADER_VALUE.fullmatch(text):
            raise ValueError(
                f"otlp['headers']: the value of {name!r} is no header value (printable ASCII); its value is not shown"
            )
        written.append(f"{name}={quote(text.strip(), safe='')}")
    return ",".join(written)


FROM_ENVIRONMENT = OtlpConfig()


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
    if base.rstrip("/").endswith(("/v1/traces", "/v1/metrics", "/v1/logs")) and _first_time("path", base):
        log.warning(
            "%s=%s ends with a signal's path: it is the base URL, and each signal's path is added to it (%s); write %s",
            variable,
            without_secrets(base),
            without_secrets(endpoint),
            without_secrets(base.rstrip("/").rsplit("/v1/", 1)[0]),
        )
    if own and urlsplit(endpoint).path in ("", "/") and _first_time("path", variable, endpoint):
        log.warning(
            "%s=%s has no path: a signal's own endpoint is used as it is given, so the %s go to its root; "
            "write %s/v1/%s (or give the base URL as OTEL_EXPORTER_OTLP_ENDPOINT)",
            variable,
            without_secrets(endpoint),
            signal,
            without_secrets(endpoint.rstrip("/")),
            signal,
        )


def _readable(protocol: str, signal: str, config: OtlpConfig) -> None:
    """The endpoint variable `signal` is exported by, once it reads as a host and a port: with a
    bracket not closed, a port that is no number or past 65535, or no host at all, every export
    failed as if the backend were away (or the gRPC exporter failed the start: "Invalid IPv6 URL")."""
    variable, endpoint = config.variable(signal, "ENDPOINT")
    if "://" not in endpoint:
        return  # unset, or gRPC's `host:port`, which the SDK reads as TLS (`_told_if_tls_unasked`)
    why = host_problem(endpoint)
    if not why and protocol == "OTLP/gRPC" and urlsplit(endpoint).username is not None:
        # gRPC sends no user info: the channel took `user:password@host` for a host name, and every
        # export failed "resolving" it, the password in each failure told.
        why = "gRPC sends no user and password in the URL: give them as a header, OTEL_EXPORTER_OTLP_HEADERS"
    if why:
        shown = without_secrets(endpoint)
        raise ValueError(f"{variable}={shown!r}: the {protocol} {signal} endpoint does not parse ({why})")


# The TLS files the standard variables may name, and what each is to the export.
# In the order gRPC's channel credentials take them (root certificates, private key, certificate chain).
TLS_FILES = {
    "CERTIFICATE": "the CA the backend's certificate is checked against",
    "CLIENT_KEY": "the bridge's own key, for mutual TLS",
    "CLIENT_CERTIFICATE": "the bridge's own certificate, for mutual TLS",
}


def _tls_files_readable(signal: str, config: OtlpConfig) -> None:
    """Each TLS file the variables name for `signal`, once it is a file the bridge can read: a CA file
    that was not there failed every OTLP/HTTP export ("Could not find a suitable TLS CA certificate
    bundle"), told as a backend away, and the gRPC exporter logged a traceback and went on without it."""
    for name, what in TLS_FILES.items():
        variable, path = config.variable(signal, name)
        try:
            if path:
                with open(path, "rb"):
                    pass
        except OSError as exc:
            raise ValueError(f"{variable}={path!r} cannot be read ({exc.strerror}): it is {what}") from None
        if name == "CLIENT_KEY" and path and pem.encrypted(path):
            # The standard variables give no pass phrase: OpenSSL asked for it on the terminal (OTLP/HTTP), and
            # gRPC refused the key.
            raise ValueError(
                f"{variable}={path!r} is encrypted: the OTLP exporters take no pass phrase; give the key decrypted"
            )


# A header of `OTEL_EXPORTER_OTLP_HEADERS`: `name=value`, the name a token, the value printable ASCII
# without `"`, `,`, `;` or `\` (URL-encoded, or with spaces, as the SDK's liberal reading takes it).
_HEADER = re.compile(rf"[ \t]*{TOKEN}[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")
# Its name, where one stands before an `=` or a `:` (a lone token might be the credential itself).
_HEADER_NAME = re.compile(rf"[ \t]*({TOKEN})[ \t]*[=:]")


def _headers_readable(signal: str, config: OtlpConfig) -> None:
    """The headers the variables give `signal`'s export, once each is a `name=value` the SDK takes: it
    dropped one that was not (`x-api-key:…`, a colon for the `=`) and wrote it whole in its warning,
    the credential in it too, three times at every start — then every export was refused."""
    variable, raw = config.variable(signal, "HEADERS")
    for place, header in enumerate(re.split(r"[ \t]*,[ \t]*", raw), 1):
        if header and not _HEADER.fullmatch(header.strip()):
            named = _HEADER_NAME.match(header)
            which = f"the header {named.group(1)!r}" if named else f"its header number {place}"
            raise ValueError(
                f"{variable}: {which} is no name=value (comma-separated, the value URL-encoded where it "
                "holds a comma, a semicolon, a quote, a backslash or what is not ASCII); its value is not shown"
            )


def _can_read(signal: str, protocol: str, config: OtlpConfig) -> None:
    """What the SDK's exporter of `signal` will read, checked before it is made: its endpoint, its TLS
    files, and for gRPC its signal's timeout variable, which that exporter reads whatever timeout it is
    given (set but empty, it failed the start with a bare "could not convert string to float")."""
    _readable("OTLP/gRPC" if protocol == GRPC else "OTLP/HTTP", signal, config)
    _tls_files_readable(signal, config)
    _headers_readable(signal, config)
    timeout = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
    if protocol == GRPC and timeout in os.environ and not os.environ[timeout].strip():
        raise ValueError(f"{timeout} is set but empty, which the OTLP/gRPC exporter cannot read: unset it")


_DEFAULT_TIMEOUT_SECONDS = 10.0
# Longer than any export request should wait; past it, the SDK's deadline overflowed a time_t.
_LONGEST_TIMEOUT_SECONDS = 86_400.0
# A timeout no backend across a network meets: most likely seconds meant, as the Python SDK reads them.
_SHORTEST_LIKELY_SECONDS = 0.1


def export_timeout(signal: str, config: OtlpConfig = FROM_ENVIRONMENT) -> float:
    """Seconds each export request of `signal` may take, from `OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT`, else
    `OTEL_EXPORTER_OTLP_TIMEOUT`, counted in `config`'s `timeout_unit` (its `timeout_seconds` in seconds;
    10 s when none is set). A value that is no number, not above 0 or past a day is a ValueError naming
    the variable: the SDK read `-5` and every export failed, `1e300` and every export failed, and its gRPC
    exporter failed the start on `abc` with a bare "could not convert string to float"."""
    variable, raw = config.variable(signal, "TIMEOUT")
    if not raw:
        return _DEFAULT_TIMEOUT_SECONDS
    unit = SECONDS if config.coded("TIMEOUT") is not None else config.timeout_unit  # `timeout_seconds`
    counted = "milliseconds" if unit == MILLISECONDS else "seconds"
    try:
        seconds = float(raw) * unit
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is no number of {counted}") from None
    if not 0 < seconds <= _LONGEST_TIMEOUT_SECONDS:
        longest = _LONGEST_TIMEOUT_SECONDS / unit
        raise ValueError(f"{variable}={raw!r} must be above 0 and at most a day ({longest:,.0f} {counted})")
    if unit == MILLISECONDS and seconds < _SHORTEST_LIKELY_SECONDS and _first_time("timeout", variable, raw):
        log.warning(
            "%s=%s is %g ms for each export request: the specification's unit, milliseconds, which "
            "otel-bridge reads (the Python SDK reads seconds); for %s seconds write %s",
            variable,
            raw,
            seconds * 1000,
            raw,
            f"{float(raw) * 1000:g}",
        )
    return seconds


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


def export_compression(signal: str, protocol: str, config: OtlpConfig = FROM_ENVIRONMENT) -> str:
    """How `signal`'s export requests are compressed, from `OTEL_EXPORTER_OTLP_{SIGNAL}_COMPRESSION`, else
    `OTEL_EXPORTER_OTLP_COMPRESSION`: gzip or none, as the specification has them (and deflate over
    OTLP/HTTP). Another value is a ValueError naming the variable: the SDK's HTTP exporter warned and sent
    uncompressed, its gRPC exporter failed the start with a traceback — on `none` too."""
    variable, raw = config.variable(signal, "COMPRESSION")
    if not raw:
        return "none"
    kinds = ("gzip", "none") if protocol == GRPC else ("gzip", "deflate", "none")
    if raw.lower() not in kinds:
        raise ValueError(f"{variable}={raw!r}: OTLP over {protocol} compresses with {', '.join(kinds)}")
    return raw.lower()


def _grpc_insecure(signal: str, config: OtlpConfig) -> bool:
    """Whether `signal`'s OTLP/gRPC export speaks plain text, as the specification decides it: by the
    endpoint's scheme when it has one (`http://` plain, `https://` TLS), else by
    `OTEL_EXPORTER_OTLP_{SIGNAL}_INSECURE` or `OTEL_EXPORTER_OTLP_INSECURE` (`true`: plain; else TLS).
    The SDK let any INSECURE value but `true` turn `http://collector:4317` into TLS, and every export
    failed its handshake with a plain-text Collector; a value neither true nor false is told (once)."""
    endpoint = config.variable(signal, "ENDPOINT")[1] or "http://localhost:4317"
    scheme = urlsplit(endpoint).scheme.lower() if "://" in endpoint else ""
    if scheme in ("http", "https"):
        return scheme == "http"
    variable, raw = config.variable(signal, "INSECURE")
    if raw and raw.lower() not in ("true", "false") and _first_time(variable, raw):
        log.warning("%s=%s is neither true nor false: read as false, so %s go over TLS", variable, raw, signal)
    return raw.lower() == "true"


def _exporter_arguments(signal: str, config: OtlpConfig) -> tuple[str, dict[str, Any]]:
    """The protocol of `signal`'s export, and what its SDK exporter is given rather than left to read from
    the variables (its timeout and compression, read and checked here, and what code gave in the
    variables' place); what it still reads is checked before it is made (`_can_read`)."""
    protocol = protocol_for(signal, config)
    timeout = export_timeout(signal, config)
    _can_read(signal, protocol, config)
    compression = export_compression(signal, protocol, config)
    headers = config.coded("HEADERS")
    given: dict[str, Any] = {"timeout": timeout} | ({} if headers is None else {"headers": _parsed(headers)})
    if protocol == GRPC:
        import grpc  # gRPC's own modules: only when asked for

        kinds: dict[str, Any] = {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}
        insecure = _grpc_insecure(signal, config)
        given |= {"compression": kinds[compression], "insecure": insecure, "config": config}
        if (endpoint := config.coded("ENDPOINT")) is not None:
            given["endpoint"] = endpoint
        return protocol, given
    kinds = {"gzip": Compression.Gzip, "deflate": Compression.Deflate, "none": Compression.NoCompression}
    given["compression"] = kinds[compression]
    if endpoint := _joined_to_the_base(signal, config):
        given["endpoint"] = endpoint
    for name, keyword in zip(
        TLS_FILES, ("certificate_file", "client_key_file", "client_certificate_file"), strict=True
    ):
        if (path := config.coded(name)) is not None:
            given[keyword] = path
    return protocol, given


def _parsed(headers: str) -> dict[str, str]:
    """Headers written as `OTEL_EXPORTER_OTLP_HEADERS` holds them, read as the SDK reads that variable."""
    return dict(parse_env_headers(headers, liberal=True))


def _joined_to_the_base(signal: str, config: OtlpConfig) -> str | None:
    """`signal`'s OTLP/HTTP URL where the SDK would not make it right, or does not know the base: the
    signal's path added to the base's path. Where the base endpoint has a query (a gateway's
    `?api-key=…`) or a fragment, the SDK adds it to the end of the text, so `http://gw:4318/?key=k` sent
    every export to `/` with the query `key=k/v1/traces`: the gateway's 404. A base given in code the
    SDK's exporter never reads: it is given the URL."""
    variable, given = config.variable(signal, "ENDPOINT")
    if not config.is_base(variable) or not given:
        return None  # unset, or a signal's own endpoint, used as it is given
    base = urlsplit(given)
    if not (base.query or base.fragment) and variable == _BASE_ENDPOINT:
        return None
    return urlunsplit(base._replace(path=f"{base.path.rstrip('/')}/v1/{signal}", fragment=""))


def trace_sender(config: OtlpConfig = FROM_ENVIRONMENT) -> TraceSender:
    """What sends the spans, as the standard variables (and code in their place) say."""
    exporter = _exporter("traces")
    if exporter == "none":
        return NoSender()
    if exporter == "console":
        from otel_bridge.export.console import ConsoleTraces

        return ConsoleTraces(None)
    return _quiet(_encoded_sender("traces", config))


def metric_sender(config: OtlpConfig = FROM_ENVIRONMENT) -> MetricSender:
    """What sends the metrics, as the standard variables (and code in their place) say."""
    exporter = _exporter("metrics")
    if exporter == "none":
        return NoSender()  # its answer is truthy: success
    _told_if_delta_asked()
    _told_if_exponential_asked()
    if exporter == "console":
        from otel_bridge.export.console import ConsoleMetrics

        return ConsoleMetrics(None)
    return _quiet(_MetricSender(_encoded_sender("metrics", config)))


def _encoded_sender(signal: str, config: OtlpConfig) -> TraceSender:
    """The SDK's OTLP exporter of `signal` ("traces" or "metrics") for the protocol the variables say,
    sending requests already encoded and telling what the backend answered: a TraceSender's `send`, of
    an ExportMetricsServiceRequest for the metrics."""
    protocol, given = _exporter_arguments(signal, config)
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
    theirs = set(_parsed(FROM_ENVIRONMENT.variable(signal, "HEADERS")[1])) - set(_parsed(coded)) - _ITS_OWN_HEADERS
    client: Any = getattr(exporter, "_client", None)
    client._headers = {name: value for name, value in client._headers.items() if name.lower() not in theirs}
    return exporter


def _quiet(sender: T) -> T:
    """`sender`, its SDK exporter's loggers (imported by now) filtered during its exports (`exporting`)."""
    quieten_sdk_exporters()
    return sender


def _told_if_asked_otherwise(variable: str, meant: tuple[str, ...], what: str) -> None:
    """`variable` asks for what the bridge does not do (a value not in `meant`, "" being unset): told
    once, with what it does instead, not silently ignored."""
    raw = os.environ.get(variable, "").strip()
    if raw.lower() not in meant and _first_time(variable, raw):
        log.warning("%s=%s: %s", variable, raw, what)


def _told_if_delta_asked() -> None:
    # Cumulative, so that what a failed export did not send goes out whole with the next.
    _told_if_asked_otherwise(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ("", "cumulative"),
        "otel-bridge exports its metrics cumulative; a backend that takes delta only gets them through the "
        "Collector's cumulativetodelta processor",
    )


def _told_if_exponential_asked() -> None:
    # Explicit buckets from 5 ms to 30 days, as Prometheus, Grafana's panels and the alert rules read them.
    _told_if_asked_otherwise(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        ("", "explicit_bucket_histogram"),
        "otel-bridge exports its histograms with explicit buckets, from 5 ms to 30 days (workflows sleep for "
        "days), which its dashboards and alert rules read",
    )


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
    if not _first_time("tls", signal, endpoint):  # once, however many exporters a signal has
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
    if _exporter(signal) in ("none", "console"):
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
