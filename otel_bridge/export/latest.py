"""Gauges of when something last happened, kept here: the latest value each series was given.

A job's last run (`job.execution.last_timestamp`) is told by events that may come out of order and
again (a producer's re-sent batch, a replay): the series keeps the largest time it was given, where the
SDK's synchronous gauge keeps the last one recorded. Handed out at collection as the SDK's own data
classes, beside the sums and histograms.
"""

from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import Gauge, NumberDataPoint

from otel_bridge.export.aggregation import Aggregation, Attributes


@dataclass(slots=True)
class _Instrument:
    unit: str
    description: str
    # attributes -> the largest value given
    series: dict[Attributes, float] = field(default_factory=dict)


class Latest(Aggregation[_Instrument]):
    """One producer's gauges of the latest time: `observe` a series, `metrics()` at each collection."""

    def observe(self, name: str, unit: str, description: str, attributes: Attributes, value: float) -> None:
        with self._lock:
            instrument = self._instruments.get(name)
            if instrument is None:
                instrument = self._instruments[name] = _Instrument(unit, description)
            if value > instrument.series.get(attributes, float("-inf")):
                instrument.series[attributes] = value

    def _data(self, instrument: _Instrument, now: int) -> Gauge:
        return Gauge(
            data_points=[
                NumberDataPoint(attributes=dict(attributes), start_time_unix_nano=0, time_unix_nano=now, value=value)
                for attributes, value in instrument.series.items()
            ]
        )
