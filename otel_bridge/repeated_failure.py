"""How a background task that is retried until it works tells the log it is failing."""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from otel_bridge.state.store import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class RepeatedFailure:
    """The log of a background task retried every few moments: its first failure in full, then a
    line a minute while it goes on, and one when it works again; not a traceback a second for as
    long as a disk stays full or Redis stays down. `plain`: failures that are a condition, not a bug
    (the store down), told in one line without their traceback."""

    def __init__(
        self,
        what: str,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        plain: tuple[type[BaseException], ...] = (StoreUnavailable,),
    ) -> None:
        self._what = what
        self._plain = plain
        self._every = every_seconds
        self._clock = clock
        self._since: float | None = None
        self._told = 0.0
        self._failures = 0
        self._lock = threading.Lock()  # a gauge's reads come from the export thread and from scrapes

    def attempt(self, work: Callable[[], T]) -> T | None:
        """`work()`, or None when it raised (told as above)."""
        try:
            result = work()
        except Exception as exc:
            self.failed(exc)
            return None
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        if self._since is None:
            self._since = self._told = now
            if isinstance(exc, self._plain):
                log.error("%s failed, retrying: %s", self._what, exc)
            else:
                log.error("%s failed; retrying", self._what, exc_info=exc)
        elif now - self._told >= self._every:
            self._told = now
            log.error("%s still failing (%d times in %.0f s): %s", self._what, self._failures, now - self._since, exc)

    def succeeded(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._since is not None:
                log.warning("%s works again, after %d failures", self._what, self._failures)
                self._since, self._failures = None, 0
