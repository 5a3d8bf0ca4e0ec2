"""Trackers for tests and for turning tracking off: the seed's no-op and in-memory trackers."""

import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from opentelemetry.context import Context


class InMemoryTrackerHandle:
    """What a test asks of the in-memory tracker (the seed's InMemoryTrackerHandle)."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _record(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            self._events.append(dict(event))

    def events(self) -> list[dict[str, Any]]:
        """Every recorded event, in emission order."""
        with self._lock:
            return list(self._events)

    def events_by_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("type") == event_type]

    def has_event(self, event_type: str) -> bool:
        return any(e.get("type") == event_type for e in self.events())

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


class _Context:
    def context(
        self, workflow_id: str, step: str | None = None, attempt: int | None = None, context: "Context | None" = None
    ) -> "Context":
        """The context given, or the current one, unchanged: these trackers send nothing, so the application's
        spans go on in their own traces. There so that one can stand in for a tracker whose `context` is called."""
        from opentelemetry.context import get_current

        return get_current() if context is None else context

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.flush()  # type: ignore[attr-defined]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.flush()  # type: ignore[attr-defined]


class NoopTracker(_Context):
    """Discards every event: what the engine uses when no tracker is configured."""

    def emit(self, event: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def pending(self) -> int:
        return 0


class AsyncNoopTracker(_Context):
    async def emit(self, event: Mapping[str, Any]) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def pending(self) -> int:
        return 0


class InMemoryTracker(_Context):
    """Records every event for a test to inspect through `handle`; delivers nothing."""

    def __init__(self) -> None:
        self.handle = InMemoryTrackerHandle()

    def emit(self, event: Mapping[str, Any]) -> None:
        self.handle._record(event)

    def flush(self) -> None:
        pass

    def pending(self) -> int:
        return 0


class AsyncInMemoryTracker(_Context):
    def __init__(self) -> None:
        self.handle = InMemoryTrackerHandle()

    async def emit(self, event: Mapping[str, Any]) -> None:
        self.handle._record(event)

    async def flush(self) -> None:
        pass

    async def pending(self) -> int:
        return 0


def create_in_memory_tracker() -> tuple[InMemoryTracker, InMemoryTrackerHandle]:
    """The seed's `createInMemoryTracker`: the tracker to hand the engine, and the handle to assert on."""
    tracker = InMemoryTracker()
    return tracker, tracker.handle
