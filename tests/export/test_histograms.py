"""Histograms aggregated in the bridge agree with the SDK's, exemplars included, and join its collection."""

import random

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader

from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.histograms import Histograms
from otel_bridge.export.metrics import DURATION_BUCKETS, MetricsHub

_TASK = (("workflow.definition.name", "w"), ("workflow.task.name", "s"), ("workflow.task.result", "success"))


def _sdk_point(values: list[float]):
    reader = InMemoryMetricReader()
    histogram = (
        MeterProvider(metric_readers=[reader])
        .get_meter("t")
        .create_histogram("h", "s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
    )
    for value in values:
        histogram.record(value, dict(_TASK))
    data = reader.get_metrics_data()
    assert data is not None
    return data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]


def test_the_same_measurements_give_the_sdks_buckets_count_sum_min_and_max():
    rng = random.Random(3)
    # Boundary values too: an upper bound is inclusive, in both.
    values = [rng.choice([0.005, 1, 3600, 0.0, 1e7]) if i % 5 == 0 else rng.expovariate(0.01) for i in range(500)]
    histograms = Histograms()
    for value in values:
        histograms.record("h", "s", "", DURATION_BUCKETS, _TASK, value)
    [metric] = histograms.metrics()
    [ours] = metric.data.data_points
    sdk = _sdk_point(values)
    assert list(ours.bucket_counts) == list(sdk.bucket_counts)
    assert list(ours.explicit_bounds) == list(sdk.explicit_bounds)
    assert (ours.count, ours.min, ours.max) == (sdk.count, sdk.min, sdk.max)
    assert abs(ours.sum - sdk.sum) < 1e-6
    assert ours.attributes == dict(_TASK)


def test_each_bucket_keeps_its_latest_exemplar_and_keeps_it_across_collections():
    histograms = Histograms()
    for value, n in ((0.2, 1), (0.22, 2), (40.0, 3)):
        histograms.record("h", "s", "", DURATION_BUCKETS, _TASK, value, bytes([n]) * 16, bytes([n]) * 8)
    histograms.record("h", "s", "", DURATION_BUCKETS, _TASK, 0.21)  # no span: no exemplar
    for _ in range(2):  # a scrape and an OTLP export both see them
        [point] = histograms.metrics()[0].data.data_points
        assert [(e.value, e.trace_id) for e in point.exemplars] == [
            (0.22, int.from_bytes(bytes([2]) * 16)),
            (40.0, int.from_bytes(bytes([3]) * 16)),
        ]
        assert point.count == 4


def test_a_producers_histograms_join_its_counters_in_one_resource():
    hub = MetricsHub()
    resource = Resource("shop", "prod")
    trace_id, span_id = bytes(range(16)), bytes(range(8))
    hub.record(
        [
            Observation("workflow.task.duration", 0.2, _TASK, resource, trace_id, span_id),
            Observation("workflow.task.retries", 1, _TASK[:2], resource),
        ]
    )
    [data] = hub.collect()
    [resource_metrics] = data.resource_metrics
    assert resource_metrics.resource.attributes["service.name"] == "shop"
    metrics = {m.name: m for scope in resource_metrics.scope_metrics for m in scope.metrics}
    assert set(metrics) == {"workflow.task.duration", "workflow.task.retries"}
    duration = metrics["workflow.task.duration"]
    assert isinstance(duration.data, Histogram) and duration.unit == "s"
    [exemplar] = duration.data.data_points[0].exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (int.from_bytes(trace_id), int.from_bytes(span_id))


def test_a_producer_with_only_histograms_is_collected_with_its_resource():
    hub = MetricsHub()
    hub.record([Observation("workflow.sleep.duration", 60.0, _TASK[:2], Resource("shop", "prod"))])
    [data] = hub.collect()
    [resource_metrics] = data.resource_metrics
    assert resource_metrics.resource.attributes["deployment.environment.name"] == "prod"
    assert [m.name for s in resource_metrics.scope_metrics for m in s.metrics] == ["workflow.sleep.duration"]
