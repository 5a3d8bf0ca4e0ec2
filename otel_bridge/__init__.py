"""otel-bridge: durable workflow and job lifecycle events in, OpenTelemetry traces and metrics out."""

from typing import TYPE_CHECKING, Any

from otel_bridge.ids import RunIdentity, root_span_id, trace_id_for, traceparent

if TYPE_CHECKING:
    from otel_bridge.propagation import run_context

__all__ = ["RunIdentity", "__version__", "root_span_id", "run_context", "trace_id_for", "traceparent"]


def __getattr__(name: str) -> Any:
    if name == "run_context":
        # The OpenTelemetry API's context machinery: only for a producer that asks for it.
        from otel_bridge.propagation import run_context

        globals()[name] = run_context
        return run_context
    # Read from the installed package's metadata when first asked for: importlib.metadata costs a
    # producer that imports only a tracker ~30 ms at its start.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("otel-bridge")
    except PackageNotFoundError:  # running from a source tree
        found = "0.0.0"
    globals()["__version__"] = found
    return found
