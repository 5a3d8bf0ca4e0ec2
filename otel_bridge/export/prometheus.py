"""Prometheus exposition of every producer's metrics, resource attributes as labels.

A stock PrometheusMetricReader puts the resource into `target_info`, so two
services' `job_executions_total` could only be told apart with a join. Here every
series carries `service_name` and `deployment_environment_name` itself.
Names follow the OpenTelemetry-to-Prometheus compatibility rules: dots become
underscores, the unit becomes a suffix (`s` -> `_seconds`, `{annotations}` are
dropped), counters get `_total`.
"""

import math
import re
from collections.abc import Callable, Iterable, Iterator

from opentelemetry.sdk.metrics.export import Gauge as OtelGauge
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    MetricsData,
    Sum,
)
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from otel_bridge import conventions as c

_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "ratio"}
_RESOURCE_LABELS = {
    c.SERVICE_NAME: "service_name",
    c.DEPLOYMENT_ENVIRONMENT_NAME: "deployment_environment_name",
}


def label_name(key: str) -> str:
    return _INVALID.sub("_", key)


def metric_name(name: str, unit: str) -> str:
    base = _INVALID.sub("_", name)
    suffix = _UNIT_SUFFIX.get(unit, "" if unit.startswith("{") or not unit else _INVALID.sub("_", unit))
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return base


def _fmt(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _exemplar(point: HistogramDataPoint, upper: float, lower: float) -> Exemplar | None:
    for exemplar in reversed(point.exemplars or ()):
        if lower < exemplar.value <= upper and exemplar.trace_id:
            return Exemplar(
                {"trace_id": f"{exemplar.trace_id:032x}", "span_id": f"{exemplar.span_id:016x}"},
                exemplar.value,
                exemplar.time_unix_nano / 1e9,
            )
    return None


class OtelCollector(Collector):
    """Turns the MetricsData of every MeterProvider into Prometheus metric families."""

    def __init__(self, collect: Callable[[], Iterable[MetricsData]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for data in self._collect():
            for resource_metrics in data.resource_metrics:
                resource = {
                    label: str(resource_metrics.resource.attributes[key])
                    for key, label in _RESOURCE_LABELS.items()
                    if key in resource_metrics.resource.attributes
                }
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        unit, doc = metric.unit or "", metric.description or ""
                        self._add(families, metric.name, unit, doc, metric.data, resource)
        yield from families.values()

    def _add(
        self, families: dict[str, Metric], name: str, unit: str, doc: str, data: object, resource: dict[str, str]
    ) -> None:
        base = metric_name(name, unit)
        if isinstance(data, Histogram):
            kind = "histogram"
        elif isinstance(data, Sum) and data.is_monotonic:
            kind = "counter"
            base = base.removesuffix("_total")
        elif isinstance(data, Sum | OtelGauge):
            kind = "gauge"
        else:
            return
        family = families.get(base)
        if family is None:
            family = families[base] = Metric(base, doc, kind)
        for point in data.data_points:
            labels = {label_name(k): str(v) for k, v in (point.attributes or {}).items()} | resource
            if isinstance(point, HistogramDataPoint):
                _add_histogram(family, base, labels, point)
            else:
                family.add_sample(base + "_total" if kind == "counter" else base, labels, point.value)


def _add_histogram(family: Metric, base: str, labels: dict[str, str], point: HistogramDataPoint) -> None:
    cumulative = 0
    lower = -math.inf
    for bound, count in zip([*point.explicit_bounds, math.inf], point.bucket_counts, strict=True):
        cumulative += count
        exemplar = _exemplar(point, bound, lower)
        family.add_sample(base + "_bucket", labels | {"le": _fmt(bound)}, cumulative, exemplar=exemplar)
        lower = bound
    family.add_sample(base + "_count", labels, point.count)
    family.add_sample(base + "_sum", labels, point.sum)


def exposition(collect: Callable[[], Iterable[MetricsData]]) -> Callable[[str], tuple[bytes, str]]:
    """A function from a scrape's Accept header to (body, content type): OpenMetrics when asked for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtelCollector(collect))
    # The process's CPU, memory and open files (`process_*`, from /proc), as every Prometheus client library
    # exposes them: what a sidecar costs its pod, and how near the bridge is to its limit of open files.
    ProcessCollector(registry=registry)

    def render(accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    return render
