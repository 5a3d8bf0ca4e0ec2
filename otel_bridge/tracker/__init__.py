"""Trackers for Python producers: the engine's `EventTracker` contract (emit, flush, pending).

- `HttpBatchTracker` / `AsyncHttpBatchTracker`: POST batches to an otel-bridge (or any tracker endpoint).
- `OtelTracker` / `AsyncOtelTracker`: the bridge's pipeline in-process: traces and metrics with no sidecar.
- `NoopTracker`, `InMemoryTracker` (and async flavours): tracking off, and tracking for tests.
- `WorkflowEvents`, `JobEvents`: typed builders of the 24 events, checked as the bridge checks them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from otel_bridge.tracker.contract import AsyncTracker, Tracker
from otel_bridge.tracker.http_batch import AsyncHttpBatchTracker, HttpBatchTracker, TrackerStats
from otel_bridge.tracker.testing import (
    AsyncInMemoryTracker,
    AsyncNoopTracker,
    InMemoryTracker,
    InMemoryTrackerHandle,
    NoopTracker,
    create_in_memory_tracker,
)

if TYPE_CHECKING:
    from otel_bridge.export.otlp_config import OtlpOptions
    from otel_bridge.tracker.events import JobEvents, WorkflowEvents
    from otel_bridge.tracker.in_process import AsyncOtelTracker, OtelTracker

# The in-process tracker is the whole bridge (its pipeline, the OpenTelemetry SDK and exporters) and
# the event builders are the wire models: each is imported when first asked for, so a producer that
# only POSTs to a sidecar does not pay for them at its start.
_ON_FIRST_USE = {
    "OtelTracker": "in_process",
    "OtlpOptions": "in_process",
    "AsyncOtelTracker": "in_process",
    "JobEvents": "events",
    "WorkflowEvents": "events",
}


def __getattr__(name: str) -> Any:
    if (module := _ON_FIRST_USE.get(name)) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})


__all__ = [
    "AsyncHttpBatchTracker",
    "AsyncInMemoryTracker",
    "AsyncNoopTracker",
    "AsyncOtelTracker",
    "AsyncTracker",
    "HttpBatchTracker",
    "InMemoryTracker",
    "InMemoryTrackerHandle",
    "JobEvents",
    "NoopTracker",
    "OtelTracker",
    "OtlpOptions",
    "Tracker",
    "TrackerStats",
    "WorkflowEvents",
    "create_in_memory_tracker",
]
