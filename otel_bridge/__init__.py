"""otel-bridge: durable workflow and job lifecycle events in, OpenTelemetry traces and metrics out."""

from otel_bridge.ids import RunIdentity, root_span_id, trace_id_for, traceparent

__all__ = ["RunIdentity", "root_span_id", "trace_id_for", "traceparent"]
