"""When a job last ran: a gauge keeping the latest time each series was given, whatever the order it came in."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.latest import Latest
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.prometheus import OtelCollector

_SYNC = (("job.name", "sync"), ("job.type", "continuous"), ("job.execution.result", "success"))
_SHOP = Resource("shop", "prod")


def test_a_series_keeps_the_latest_time_it_was_given_not_the_last_recorded():
    latest = Latest()
    for at in (1_700_000_060.0, 1_700_000_000.0, 1_700_000_120.0, 1_700_000_090.0):  # a re-sent batch among them
        latest.observe("t", "s", "", _SYNC, at)
    [metric] = latest.metrics()
    assert isinstance(metric.data, Gauge)
    assert [(dict(p.attributes), p.value) for p in metric.data.data_points] == [(dict(_SYNC), 1_700_000_120.0)]


def test_a_jobs_last_run_is_a_gauge_in_seconds_on_metrics_beside_its_counters():
    hub = MetricsHub()
    hub.record(
        [
            Observation(c.M_JOB_EXECUTION_LAST, 1_700_000_120.0, _SYNC, _SHOP),
            Observation(c.M_JOB_EXECUTION_LAST, 1_700_000_060.0, _SYNC, _SHOP),
            Observation(c.M_JOB_EXECUTIONS, 1, _SYNC, _SHOP),
        ]
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtelCollector(hub.collect))
    text = generate_latest(registry).decode()
    assert "# TYPE job_execution_last_timestamp_seconds gauge" in text
    (line,) = [x for x in text.splitlines() if x.startswith("job_execution_last_timestamp_seconds{")]
    assert 'job_name="sync"' in line and 'service_name="shop"' in line and line.endswith(" 1.70000012e+09")
    assert "job_executions_total{" in text


def test_in_an_applications_own_meter_provider_it_is_the_sdks_gauge():
    # The in-process tracker records into the application's provider, which exports it itself.
    reader = InMemoryMetricReader()
    hub = MetricsHub(meter_provider=MeterProvider(metric_readers=[reader]))
    hub.record([Observation(c.M_JOB_EXECUTION_LAST, 1_700_000_120.0, _SYNC, _SHOP)])
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [m for s in data.resource_metrics[0].scope_metrics for m in s.metrics]
    assert (metric.name, metric.unit, isinstance(metric.data, Gauge)) == (c.M_JOB_EXECUTION_LAST, "s", True)
    assert [p.value for p in metric.data.data_points] == [1_700_000_120.0]
