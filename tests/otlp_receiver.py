"""A real OTLP receiver (HTTP and gRPC) that decodes what the bridge sends with opentelemetry-proto.

It can be switched to refuse (HTTP 503 / gRPC UNAVAILABLE) to play a backend outage, and to throttle
(HTTP 429 with Retry-After / gRPC UNAVAILABLE or RESOURCE_EXHAUSTED with RetryInfo) as the OTLP
specification has an overloaded backend do.
"""

import gzip
import ssl
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attributes_of(kvs) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str]]
    resource: dict[str, Any]


@dataclass
class Received:
    spans: list[ReceivedSpan] = field(default_factory=list)
    # (metric name, resource, attributes) -> latest data point, as dict
    metrics: dict[tuple[str, tuple, tuple], dict[str, Any]] = field(default_factory=dict)
    trace_requests: int = 0
    refused: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    # Each request's target: its path and query, as the request line gave them.
    targets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # A backend that refuses some spans for good: those whose name holds `poison`, either the
    # whole request (HTTP 400, gRPC INVALID_ARGUMENT) or just them (OTLP partial_success).
    poison: str = ""
    partial: bool = False
    refused_for_good: int = 0
    # A backend throttling trace requests until `throttled_until` (monotonic), asking for `asks` seconds
    # (HTTP Retry-After, gRPC RetryInfo; none when None) with `code` (gRPC); when each was refused.
    throttled_until: float = 0.0
    asks: float | None = None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    throttled_at: list[float] = field(default_factory=list)
    throttles_metrics: bool = False  # metric requests too, not only trace ones

    def throttling(self) -> bool:
        """True when this request is throttled (and noted so)."""
        now = time.monotonic()
        with self.lock:
            if now >= self.throttled_until:
                return False
            self.throttled_at.append(now)
            return True

    def take_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            self.trace_requests += 1
            for rs in request.resource_spans:
                resource = attributes_of(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            ReceivedSpan(
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_span_id=s.parent_span_id.hex(),
                                name=s.name,
                                kind=s.kind,
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                status_code=s.status.code,
                                status_message=s.status.message,
                                attributes=attributes_of(s.attributes),
                                events=[(e.name, e.time_unix_nano, attributes_of(e.attributes)) for e in s.events],
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                resource=resource,
                            )
                        )

    def take_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            for rm in request.resource_metrics:
                resource = tuple(sorted(attributes_of(rm.resource.attributes).items()))
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        for p in data.data_points:
                            attrs = tuple(sorted(attributes_of(p.attributes).items()))
                            point: dict[str, Any] = {"kind": kind, "unit": m.unit}
                            if kind == "histogram":
                                point |= {
                                    "count": p.count,
                                    "sum": p.sum,
                                    "bounds": list(p.explicit_bounds),
                                    "exemplars": [(e.trace_id.hex(), e.span_id.hex()) for e in p.exemplars],
                                }
                            else:
                                point["value"] = p.as_double if p.HasField("as_double") else p.as_int
                            self.metrics[(m.name, resource, attrs)] = point

    def sift(
        self, request: trace_service_pb2.ExportTraceServiceRequest
    ) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int]:
        """The request without the spans a refusing backend refuses (names holding `poison`), and how many."""
        if not self.poison:
            return request, 0
        kept = trace_service_pb2.ExportTraceServiceRequest()
        kept.CopyFrom(request)
        refused = 0
        for rs in kept.resource_spans:
            for ss in rs.scope_spans:
                good = [s for s in ss.spans if self.poison not in s.name]
                refused += len(ss.spans) - len(good)
                del ss.spans[:]
                ss.spans.extend(good)
        return kept, refused

    def metric(self, name: str, **attributes: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [
                point
                for (n, _resource, attrs), point in self.metrics.items()
                if n == name and all(dict(attrs).get(k) == v for k, v in attributes.items())
            ]

    def metric_resources(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(resource) for (n, resource, _a) in self.metrics if n == name]

    def unique_spans(self) -> dict[str, ReceivedSpan]:
        """Spans by id. At-least-once delivery may repeat a span; a repeat must be identical."""
        with self.lock:
            spans = list(self.spans)
        unique: dict[str, ReceivedSpan] = {}
        for span in spans:
            known = unique.setdefault(span.span_id, span)
            assert known == span, f"span {span.span_id} received twice with different content"
        return unique

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s; received {len(self.spans)} spans")


class OtlpHttpReceiver:
    def __init__(
        self, port: int = 0, received: Received | None = None, tls: tuple[str, str, str | None] | None = None
    ) -> None:
        """`tls`: (certificate, key, the CA client certificates must be signed by, or None): served over
        HTTPS, as a Collector behind TLS (mutual TLS with a CA)."""
        self.received = received or Received()
        self.up = True
        # When set, requests must carry `authorization: Bearer <credential>` (401 otherwise), as a SaaS backend's.
        self.credential: str | None = None
        # Where the signals' paths begin, as behind a gateway that serves OTLP under a path of its own.
        self.prefix = ""
        # The largest body taken, as a proxy's (nginx's client_max_body_size): 413 past it; with
        # `too_large_as_collector`, as the Collector's own receiver answers (its max_request_body_size): a 400
        # whose google.rpc.Status says "http: request body too large".
        self.max_body_bytes: int | None = None
        self.too_large_as_collector = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if receiver.max_body_bytes is not None and len(body) > receiver.max_body_bytes:
                    receiver.received.refused += 1
                    said = b""
                    if receiver.too_large_as_collector:
                        said = Status(code=3, message="http: request body too large").SerializeToString()
                    self.send_response(400 if receiver.too_large_as_collector else 413)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", str(len(said)))
                    self.end_headers()
                    self.wfile.write(said)
                    return
                if self.headers.get("content-encoding") == "gzip":  # OTEL_EXPORTER_OTLP_COMPRESSION=gzip
                    body = gzip.decompress(body)
                receiver.received.headers.append({k.lower(): v for k, v in self.headers.items()})
                receiver.received.targets.append(self.path)
                path = self.path.partition("?")[0].removeprefix(receiver.prefix)
                if not receiver.up or (
                    receiver.credential and self.headers.get("authorization") != f"Bearer {receiver.credential}"
                ):
                    receiver.received.refused += 1
                    self.send_response(503 if not receiver.up else 401)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                got = receiver.received
                if (path == "/v1/traces" or (path == "/v1/metrics" and got.throttles_metrics)) and got.throttling():
                    self.send_response(429)
                    if got.asks is not None:
                        self.send_header("retry-after", f"{got.asks:g}")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if path == "/v1/traces":
                    kept, refused = got.sift(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                    answer = trace_service_pb2.ExportTraceServiceResponse()
                    if refused and not got.partial:
                        got.refused_for_good += 1
                        message = b"span name refused by policy"
                        self.send_response(400)
                        self.send_header("content-length", str(len(message)))
                        self.end_headers()
                        self.wfile.write(message)
                        return
                    if refused:
                        answer.partial_success.rejected_spans = refused
                        answer.partial_success.error_message = "span name refused by policy"
                    got.take_traces(kept)
                    reply = answer.SerializeToString()
                elif path == "/v1/metrics":
                    receiver.received.take_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            cert, key, client_ca = tls
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            if client_ca is not None:
                context.load_verify_locations(client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.endpoint = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OtlpGrpcReceiver:
    def __init__(
        self,
        port: int = 0,
        received: Received | None = None,
        tls: tuple[str, str, str | None] | None = None,
        max_receive_bytes: int | None = None,
    ) -> None:
        """`tls`: as OtlpHttpReceiver's; `max_receive_bytes`: the server's limit on a message (gRPC's
        default 4 MiB), past which it answers RESOURCE_EXHAUSTED."""
        self.received = received or Received()
        self.up = True
        self.credential: str | None = None  # as OtlpHttpReceiver's: UNAUTHENTICATED without it
        receiver = self

        def refuse_unless_allowed(context) -> None:
            if not receiver.up:
                receiver.received.refused += 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "down for the test")
            given = dict(context.invocation_metadata()).get("authorization")
            if receiver.credential and given != f"Bearer {receiver.credential}":
                receiver.received.refused += 1
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 - gRPC's name
                receiver.received.headers.append(dict(context.invocation_metadata()))
                refuse_unless_allowed(context)
                got = receiver.received
                if got.throttling():
                    if got.asks is not None:
                        delay = RetryInfo(retry_delay=Duration(seconds=int(got.asks), nanos=int(got.asks % 1 * 1e9)))
                        context.set_trailing_metadata((("google.rpc.retryinfo-bin", delay.SerializeToString()),))
                    context.abort(got.code, "throttled for the test")
                kept, refused = got.sift(request)
                answer = trace_service_pb2.ExportTraceServiceResponse()
                if refused and not got.partial:
                    got.refused_for_good += 1
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "span name refused by policy")
                if refused:
                    answer.partial_success.rejected_spans = refused
                    answer.partial_success.error_message = "span name refused by policy"
                got.take_traces(kept)
                return answer

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802 - gRPC's name
                refuse_unless_allowed(context)
                receiver.received.take_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        options = [("grpc.max_receive_message_length", max_receive_bytes)] if max_receive_bytes else []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        if tls is None:
            self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
            self.endpoint = f"http://127.0.0.1:{self.port}"
        else:
            cert, key, client_ca = (Path(p).read_bytes() if p else None for p in tls)
            assert cert is not None and key is not None
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            self.port = self._server.add_secure_port(f"127.0.0.1:{port}", credentials)
            self.endpoint = f"https://127.0.0.1:{self.port}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(0)
