"""How a background task that is retried until it works tells the log it is failing."""

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from otel_bridge.state.store import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backoff:
    """How long a loop waits before trying again: about `least` seconds after its first failure, twice as
    long after each next one, `most` at most; from `least` again once it works.

    Each wait is drawn within `spread` of its time either way (never past `most`), as the Collector's
    exporters draw theirs (`randomization_factor`, 0.5): sidecars that lost one backend, Redis or engine
    together would otherwise come back to it in step, every one at the same instants, for as long as it
    is away and in one burst once it is back."""

    def __init__(self, least: float = 0.5, most: float = 30.0, spread: float = 0.5) -> None:
        self._least, self._most, self._spread = least, most, spread
        self._next = least

    def wait(self, stop: threading.Event, at_least: float = 0.0) -> None:
        """Wait the current time, drawn (less if `stop` is set meanwhile), and `at_least` as long: what the
        other side asked for (a throttling backend's Retry-After), never cut short by the draw. The next
        wait is twice as long as the longer of the two."""
        stop.wait(self.drawn(at_least))

    def drawn(self, at_least: float = 0.0) -> float:
        """The current time, drawn, and `at_least` as long, for a caller that does not sleep it (the next is
        twice as long, as after `wait`)."""
        # Drawn below the most, not cut at it: cut, half the draws at the most would be in step again.
        drawn = random.uniform(self._next * (1 - self._spread), min(self._next * (1 + self._spread), self._most))
        self._next = min(max(self._next, at_least) * 2, self._most)
        return max(drawn, at_least)

    def worked(self) -> None:
        self._next = self._least


class Cadence:
    """When a failure that keeps coming is told: the first, then once per `every_seconds`, and its end."""

    def __init__(self, every_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every_seconds
        self._clock = clock
        self.since: float | None = None  # failing since (the clock's time), None while it works
        self.failures = 0
        self._told = 0.0

    def failed(self) -> bool:
        """One more failure: True when it is to be told now (the first, or `every_seconds` after the last told)."""
        now = self._clock()
        self.failures += 1
        if self.since is None:
            self.since = self._told = now
            return True
        if now - self._told >= self._every:
            self._told = now
            return True
        return False

    def failing_for(self) -> float:
        return self._clock() - self.since if self.since is not None else 0.0

    def recovered(self) -> tuple[float, int] | None:
        """After failures, (seconds failing, failures), and failing no more; None when nothing was failing."""
        if self.since is None:
            return None
        ended = (self.failing_for(), self.failures)
        self.since, self.failures = None, 0
        return ended


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
        self._cadence = Cadence(every_seconds, clock)
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
            if not self._cadence.failed():
                return
            failures = self._cadence.failures
            if failures > 1:
                seconds = self._cadence.failing_for()
                log.error("%s still failing (%d times in %.0f s): %s", self._what, failures, seconds, exc)
            elif isinstance(exc, self._plain):
                log.error("%s failed, retrying: %s", self._what, exc)
            else:
                log.error("%s failed; retrying", self._what, exc_info=exc)

    def succeeded(self) -> None:
        if self._cadence.since is None:  # the common case, without the lock
            return
        with self._lock:
            if (ended := self._cadence.recovered()) is not None:
                log.warning("%s works again, after %d failures", self._what, ended[1])


class Refusals:
    """Refusals that come with every request while their cause lasts (a full backlog, a store away, a producer
    that sends what cannot be read), in the log: the first, then at most a line a minute — the latest reason,
    and how many were refused since the last line —, and one when `what` is taken again. Not a warning a
    request, each producer's re-sends included. A condition of the bridge's, not a bug of it (that is
    `RepeatedFailure`'s, with its traceback). Told in `logger`, the refusing module's."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what, self._log = what, logger
        self._cadence = Cadence(every_seconds, clock)
        self._untold = 0

    def refused(self, line: str) -> None:
        self._untold += 1
        if self._cadence.failed():
            since = f" ({self._untold} {self._what} refused since the last line)" if self._untold > 1 else ""
            self._log.warning("%s%s", line, since)
            self._untold = 0

    def over(self) -> None:
        """One was taken: told once after refusals, with how long they lasted and how many there were."""
        if (ended := self._cadence.recovered()) is not None:
            self._log.info("taking %s again, after %.0f s and %d refused", self._what, *ended)
            self._untold = 0


def told_unreachable(cadence: Cadence, logger: logging.Logger, what: str, exc: BaseException | str) -> None:
    """A follower's failure to reach an engine's stream (the error, or what to say of it), told in its
    `logger` as `cadence` says: the first one, then a line a minute with how many tries and for how long
    (the follower says when it follows again)."""
    if not cadence.failed():
        return
    said = exc if isinstance(exc, str) else str(exc) or type(exc).__name__
    if cadence.failures == 1:
        logger.warning("%s: %s; reconnecting (told again once a minute while it lasts)", what, said)
    else:
        tries, seconds = cadence.failures, cadence.failing_for()
        logger.warning("%s: still not followed (%d tries in %.0f s): %s; reconnecting", what, tries, seconds, said)


def told_followed(cadence: Cadence, logger: logging.Logger, what: str, before: bool) -> bool:
    """A follower that reached its engine's stream after failing to: how long and how many tries it took
    (`before`: it had followed it before, and follows it again), in its `logger`. False when nothing was
    failing."""
    ended = cadence.recovered()
    if ended is None:
        return False
    logger.warning("following %s%s, after %.0f s and %d tries", what, " again" if before else "", *ended)
    return True
