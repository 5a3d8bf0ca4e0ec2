"""The tracker contract of the engine's `EventTracker` service (seed 001): emit, flush, pending.

The engine emits its *internal* events; a tracker enriches each with the producer's `env`
and `serviceKey` (the wire shape) and decides what happens to it. Trackers never raise
into the workflow that emits: a delivery problem is logged, counted and retried or dropped.
"""

import atexit
import logging
import sys
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol, runtime_checkable

from otel_bridge.forks import after_fork_in_child
from otel_bridge.tokens import label_problem

log = logging.getLogger(__name__)


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


def checked_labels(env: str, service_key: str) -> None:
    """A ValueError naming `env` or `service_key` when the bridge would reject every event that carries it:
    more than 1,000 characters, or a control character. Taken as given, every event of the tracker was
    rejected (kept in a dead-letter file), and the workflow none the wiser."""
    for name, label in (("env", env), ("service_key", service_key)):
        if why := label_problem(label):
            raise ValueError(f"{name} {why}")


def enriched(event: Mapping[str, Any], env: str, service_key: str) -> dict[str, Any]:
    """The wire shape of an internal event: what the HTTP tracker sends and the bridge reads.

    Something that is no mapping is left as it is, not raised into the workflow: the bridge
    rejects it with why (`an event must be a JSON object`) and keeps it in its dead-letter file."""
    if not isinstance(event, Mapping):
        return event
    return {**event, "env": env, "serviceKey": service_key}


class AfterClose:
    """A tracker's events emitted after its `close()`: dropped and counted, told once.

    At shutdown a workflow still running may emit after the application closed its tracker.
    Buffered, such events were never sent (the HTTP tracker's client was closed: each batch went
    through its retries, seconds of the workflow's time, then was dropped; the in-process tracker's
    store was closed: a traceback per event), and a buffer nobody flushes only grows."""

    def __init__(self, tracker: str) -> None:
        self._tracker = tracker
        self._told = False

    def drop(self) -> None:
        """Tell of the first such event; the tracker counts them all, in its own counter of drops."""
        if not self._told:
            self._told = True
            log.warning(
                "%s: an event emitted after close() is dropped (and every later one, counted): close the "
                "tracker once the workflows that emit to it have ended",
                self._tracker,
            )


def at_exit(tracker: object, then: Callable[[Any], None]) -> Callable[[], None]:
    """Call `then(tracker)` when the interpreter exits, unless the returned function was called first.

    As the OpenTelemetry SDK's providers flush at exit, a tracker the application never closed
    still sends what it holds: its last batch is not lost with the process, even when nothing
    refers to the tracker any more (held here until it is closed, as the SDK holds its providers)."""
    return _AtExit(partial(then, tracker)).forget


class _AtExit:
    """One call at the end of this process, whichever way it ends normally.

    A child that `multiprocessing` starts by forking (its default on Linux, and `Pool`'s and
    `ProcessPoolExecutor`'s workers) leaves by `os._exit`, which skips `atexit`: the runs its
    tracker held were lost with it. Such a child runs multiprocessing's exit finalizers instead, so
    the call is registered there too: by a tracker made once multiprocessing is imported (in the
    main process those finalizers run at exit as well, and the call runs once), and, for one made
    before the fork, as the child starts (multiprocessing empties the registry a child inherits,
    then runs its after-fork callbacks). Read from `sys.modules`: a process that never imported
    multiprocessing has no such child, and is spared the import."""

    def __init__(self, call: Callable[[], None]) -> None:
        self._call = call
        self._over = False
        self._finalizer: Any = None
        atexit.register(self.run)
        self._at_multiprocessing_exit()
        after_fork_in_child(self._forked)

    def run(self) -> None:
        if not self._over:
            self._over = True
            self._call()

    def forget(self) -> None:
        self._over = True
        atexit.unregister(self.run)
        if self._finalizer is not None:
            self._finalizer.cancel()

    def _forked(self) -> None:
        if not self._over and (util := sys.modules.get("multiprocessing.util")) is not None:
            util.register_after_fork(self, _AtExit._at_multiprocessing_exit)

    def _at_multiprocessing_exit(self) -> None:
        if not self._over and (util := sys.modules.get("multiprocessing.util")) is not None:
            self._finalizer = util.Finalize(None, self.run, exitpriority=0)
