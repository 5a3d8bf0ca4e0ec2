"""The tracker contract of the engine's `EventTracker` service (seed 001): emit, flush, pending.

The engine emits its *internal* events; a tracker enriches each with the producer's `env`
and `serviceKey` (the wire shape) and decides what happens to it. Trackers never raise
into the workflow that emits: a delivery problem is logged, counted and retried or dropped.
"""

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    def emit(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (flushing by itself when the buffer is full)."""
        ...

    def flush(self) -> None:
        """Deliver what is buffered."""
        ...

    def pending(self) -> int:
        """How many events are buffered."""
        ...


@runtime_checkable
class AsyncTracker(Protocol):
    async def emit(self, event: Mapping[str, Any]) -> None: ...

    async def flush(self) -> None: ...

    async def pending(self) -> int: ...


def enriched(event: Mapping[str, Any], env: str, service_key: str) -> dict[str, Any]:
    """The wire shape of an internal event: what the HTTP tracker sends and the bridge reads."""
    return {**event, "env": env, "serviceKey": service_key}
