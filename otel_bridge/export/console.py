"""`OTEL_TRACES_EXPORTER=console` / `OTEL_METRICS_EXPORTER=console`: telemetry as OTLP JSON lines on stdout.

The standard variables' `console` value, for a look without a backend and for files a
Collector's `otlpjsonfile` receiver reads: each export request is one line of OTLP/JSON as
the specification encodes it — trace and span ids in hex, enums as integers — not
protobuf's own JSON mapping (ids in base64). Logs stay on stderr.
"""

import base64
import sys
import threading
from typing import Any, TextIO

import orjson
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import MetricsData

from otel_bridge.export.otlp import SENT, ExportResult

_IDS = frozenset({"traceId", "spanId", "parentSpanId"})


def otlp_json(message: Message) -> str:
    """A request message as one line of OTLP/JSON."""
    return orjson.dumps(_hex_ids(MessageToDict(message, use_integers_for_enums=True))).decode()


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: base64.b64decode(v).hex() if k in _IDS else _hex_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


class _Lines:
    _endpoint = "stdout (OTLP/JSON)"

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self._lock = threading.Lock()  # requests are sent side by side (export_concurrency)

    def write(self, message: Message) -> None:
        line = otlp_json(message)
        out = self._out or sys.stdout
        with self._lock:
            out.write(line + "\n")
            out.flush()

    def shutdown(self) -> None:
        pass


class ConsoleTraces(_Lines):
    def send(self, request: bytes) -> ExportResult:
        self.write(ExportTraceServiceRequest.FromString(request))
        return SENT


class ConsoleMetrics(_Lines):
    def send(self, data: MetricsData) -> ExportResult:
        self.write(encode_metrics(data))
        return SENT
