"""How export failures are told: once clearly, then at most once a minute, and once when it recovers.

Without a Collector (the first thing a newcomer tries), the SDK exporters would log a warning
every one to four seconds for as long as the bridge runs. What their loggers say while the
bridge's own senders export is dropped, and this says instead what matters: where export goes,
that spans wait safely in the outbox, and how many.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from otel_bridge.repeated_failure import Cadence

log = logging.getLogger("otel_bridge.export")

# The SDK exporters' loggers, all under this name: every retry of theirs would be a line.
SDK_LOGGERS = "opentelemetry.exporter"
_ours = threading.local()


class _NotDuringOurExports(logging.Filter):
    """Drops a record made while this thread runs one of the bridge's own exports (`exporting`).

    A filter, not the loggers' level: an application with the in-process tracker may export its
    own telemetry through the same SDK exporters, and their warnings are its to hear."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_ours, "exporting", False)


_FILTER = _NotDuringOurExports()


def quieten_sdk_exporters() -> None:
    """Filter what the SDK exporters' loggers say during the bridge's exports. A logger's filter sees
    only the records made on it, so each is given it: call once the senders' modules are imported."""
    for name in list(logging.root.manager.loggerDict):
        if name == SDK_LOGGERS or name.startswith(SDK_LOGGERS + "."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


@contextmanager
def exporting() -> Iterator[None]:
    """One of the bridge's own exports runs in this thread (what the SDK's loggers say meanwhile is dropped)."""
    before = getattr(_ours, "exporting", False)
    _ours.exporting = True
    try:
        yield
    finally:
        _ours.exporting = before


class ExportHealth:
    def __init__(
        self,
        signal: str,
        endpoint: str,
        waiting: Callable[[], str],
        repeat_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._signal = signal
        self._endpoint = endpoint
        self._waiting = waiting
        self._cadence = Cadence(repeat_seconds, clock)

    @property
    def failing_since(self) -> float | None:
        return self._cadence.since

    def failed(self, reason: str = "") -> None:
        if not self._cadence.failed():
            return
        why = f" ({reason})" if reason else ""
        if self._cadence.failures == 1:
            log.warning(
                "%s export to %s is failing%s; %s, and go out when it is back",
                self._signal,
                self._endpoint,
                why,
                self._waiting(),
            )
        else:
            log.warning(
                "%s export to %s still failing after %.0f s%s; %s",
                self._signal,
                self._endpoint,
                self._cadence.failing_for(),
                why,
                self._waiting(),
            )

    def succeeded(self) -> None:
        if (ended := self._cadence.recovered()) is None:
            return
        seconds, failures = ended
        log.info(
            "%s export to %s recovered after %.0f s (%d failed attempts)",
            self._signal,
            self._endpoint,
            seconds,
            failures,
        )
