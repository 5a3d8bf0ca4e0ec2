"""How export failures are told: once clearly, then at most once a minute, and once when it recovers.

Without a Collector (the first thing a newcomer tries), the SDK exporters would log a warning
every one to four seconds for as long as the bridge runs. Their loggers are quietened and
this says instead what matters: where export goes, that spans wait safely in the outbox, and
how many.
"""

import logging
import time
from collections.abc import Callable

from otel_bridge.repeated_failure import Cadence

log = logging.getLogger("otel_bridge.export")

# The SDK exporters' own loggers: every retry of theirs would be a line.
SDK_LOGGERS = ("opentelemetry.exporter.otlp", "opentelemetry.exporter.http")


def quieten_sdk_exporters() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


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
