"""otel-bridge: durable workflow and job lifecycle events in, OpenTelemetry traces and metrics out."""

from importlib.metadata import PackageNotFoundError, version

from otel_bridge.ids import RunIdentity, root_span_id, trace_id_for, traceparent

try:
    __version__ = version("otel-bridge")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["RunIdentity", "__version__", "root_span_id", "trace_id_for", "traceparent"]
