"""Trackers for Python producers: the engine's `EventTracker` contract (emit, flush, pending).

- `HttpBatchTracker` / `AsyncHttpBatchTracker`: POST batches to an otel-bridge (or any tracker endpoint).
- `OtelTracker` / `AsyncOtelTracker`: the bridge's pipeline in-process: traces and metrics with no sidecar.
- `NoopTracker`, `InMemoryTracker` (and async flavours): tracking off, and tracking for tests.
- `WorkflowEvents`, `JobEvents`: typed builders of the 24 events, checked as the bridge checks them.
"""

from otel_bridge.tracker.contract import AsyncTracker, Tracker
from otel_bridge.tracker.events import JobEvents, WorkflowEvents
from otel_bridge.tracker.http_batch import AsyncHttpBatchTracker, HttpBatchTracker, TrackerStats
from otel_bridge.tracker.in_process import AsyncOtelTracker, OtelTracker
from otel_bridge.tracker.testing import (
    AsyncInMemoryTracker,
    AsyncNoopTracker,
    InMemoryTracker,
    InMemoryTrackerHandle,
    NoopTracker,
    create_in_memory_tracker,
)

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
    "Tracker",
    "TrackerStats",
    "WorkflowEvents",
    "create_in_memory_tracker",
]
