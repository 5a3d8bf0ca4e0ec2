"""Counters summed in the bridge agree with the SDK's, stay cumulative across collections, and join its collection."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, Sum

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.sums import Sums

_OPEN = (("workflow.definition.name", "w"), ("workflow.execution.state", "executing"))
_PAUSED = (("workflow.definition.name", "w"), ("workflow.execution.state", "paused"))


def _sdk_points(adds: list[tuple[tuple[tuple[str, str], ...], int]]) -> dict:
    reader = InMemoryMetricReader()
    counter = MeterProvider(metric_readers=[reader]).get_meter("t").create_up_down_counter("u")
    for attributes, value in adds:
        counter.add(value, dict(attributes))
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = data.resource_metrics[0].scope_metrics[0].metrics
    return {tuple(p.attributes.items()): p.value for p in metric.data.data_points}


def test_the_same_additions_give_the_sdks_values_per_series():
    adds = [(_OPEN, 1), (_OPEN, 1), (_PAUSED, 1), (_OPEN, -1), (_PAUSED, -1), (_OPEN, 3)]
    sums = Sums()
    for attributes, value in adds:
        sums.add("u", "{execution}", "", False, attributes, value)
    [metric] = sums.metrics()
    assert isinstance(metric.data, Sum)
    assert (metric.data.is_monotonic, metric.data.aggregation_temporality) == (False, AggregationTemporality.CUMULATIVE)
    assert {tuple(p.attributes.items()): p.value for p in metric.data.data_points} == _sdk_points(adds)


def test_a_series_stays_cumulative_and_keeps_its_start_across_collections():
    sums = Sums()
    sums.add("n", "{event}", "", True, (), 2)
    [first] = sums.metrics()[0].data.data_points
    sums.add("n", "{event}", "", True, (), 3)
    [second] = sums.metrics()[0].data.data_points
    assert (first.value, second.value) == (2, 5)
    assert second.start_time_unix_nano == first.start_time_unix_nano <= first.time_unix_nano <= second.time_unix_nano


def test_a_producers_counters_join_its_histograms_and_the_bridges_start_at_zero():
    hub = MetricsHub()
    resource = Resource("shop", "prod")
    hub.record(
        [
            Observation(c.M_WORKFLOW_TASK_RETRIES, 1, _OPEN[:1], resource),
            Observation(c.M_WORKFLOW_TASK_RETRIES, 1, _OPEN[:1], resource),
            Observation(c.M_WORKFLOW_EXECUTION_ACTIVE, 1, _OPEN, resource),
            Observation(c.M_WORKFLOW_SLEEP_DURATION, 60.0, _OPEN[:1], resource),
        ]
    )
    hub.start_bridge_counters([c.M_BRIDGE_EXPORT_FAILURES])
    by_resource = {
        data.resource_metrics[0].resource.attributes["service.name"]: {
            m.name: m for scope in data.resource_metrics[0].scope_metrics for m in scope.metrics
        }
        for data in hub.collect()
    }
    shop = by_resource["shop"]
    assert set(shop) == {c.M_WORKFLOW_TASK_RETRIES, c.M_WORKFLOW_EXECUTION_ACTIVE, c.M_WORKFLOW_SLEEP_DURATION}
    retries, active = shop[c.M_WORKFLOW_TASK_RETRIES].data, shop[c.M_WORKFLOW_EXECUTION_ACTIVE].data
    assert (retries.is_monotonic, [p.value for p in retries.data_points]) == (True, [2])
    assert (active.is_monotonic, [p.value for p in active.data_points]) == (False, [1])
    [failures] = by_resource[c.BRIDGE_SERVICE_NAME][c.M_BRIDGE_EXPORT_FAILURES].data.data_points
    assert (failures.value, failures.attributes) == (0, {})


def test_the_bridges_own_metrics_are_named_as_the_standard_variables_name_the_service(monkeypatch):
    def own_name() -> str:
        hub = MetricsHub()
        hub.start_bridge_counters([c.M_BRIDGE_EXPORT_FAILURES])
        (data,) = hub.collect()
        return data.resource_metrics[0].resource.attributes["service.name"]

    assert own_name() == c.BRIDGE_SERVICE_NAME
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=bridge-eu,team=platform")
    assert own_name() == "bridge-eu"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "bridge-us")  # wins over the attributes, as the SDK has it
    assert own_name() == "bridge-us"
