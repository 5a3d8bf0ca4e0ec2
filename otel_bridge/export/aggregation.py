"""What the bridge's own aggregations share (`histograms.py`, `sums.py`, `latest.py`): instruments by name, each
with its series by attributes, behind one lock, handed out at collection as the SDK's data classes."""

import threading
import time
from typing import Generic, Protocol, TypeVar

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, Sum

Attributes = tuple[tuple[str, str], ...]


class Described(Protocol):
    unit: str
    description: str


I = TypeVar("I", bound=Described)  # noqa: E741 - the usual name of an instrument type


class Aggregation(Generic[I]):
    def __init__(self) -> None:
        self._instruments: dict[str, I] = {}
        # Ingest threads and the settle thread record while a scrape collects.
        self._lock = threading.Lock()

    def metrics(self) -> list[Metric]:
        """Every instrument's series as they stand (cumulative), stamped now."""
        now = time.time_ns()
        with self._lock:
            return [
                Metric(
                    name=name,
                    description=instrument.description,
                    unit=instrument.unit,
                    data=self._data(instrument, now),
                )
                for name, instrument in self._instruments.items()
            ]

    def _data(self, instrument: I, now: int) -> Histogram | Sum | Gauge:
        raise NotImplementedError
