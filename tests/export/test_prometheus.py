"""Prometheus exposition: producer resources become labels, names follow the OTel→Prometheus rules."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.prometheus import OtelCollector, exposition, metric_name


def _exposition(hub: MetricsHub, openmetrics: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtelCollector(hub.collect))
    return (generate_openmetrics if openmetrics else generate_latest)(registry).decode()


def test_names_get_unit_suffixes_and_lose_curly_annotations():
    assert metric_name("workflow.execution.duration", "s") == "workflow_execution_duration_seconds"
    assert metric_name("job.debounce.flush.size", "{event}") == "job_debounce_flush_size"


def test_two_producers_with_the_same_job_are_two_labelled_series():
    hub = MetricsHub()
    attrs = (("job.name", "sync"), ("job.type", "continuous"), ("job.execution.result", "success"))
    hub.record([Observation("job.executions", 1, attrs, Resource("a", "prod"))])
    hub.record([Observation("job.executions", 2, attrs, Resource("b", "prod"))])
    text = _exposition(hub)
    assert 'service_name="a"' in text and 'service_name="b"' in text
    assert "# TYPE job_executions_total counter" in text
    assert text.count("job_executions_total{") == 2
    assert "target_info" not in text


def test_histograms_carry_trace_exemplars_in_openmetrics():
    hub = MetricsHub()
    trace_id, span_id = bytes(range(16)), bytes(range(8))
    hub.record(
        [
            Observation(
                "workflow.task.duration",
                0.2,
                (("workflow.definition.name", "w"), ("workflow.task.name", "s"), ("workflow.task.result", "success")),
                Resource("svc", "prod"),
                trace_id,
                span_id,
            )
        ]
    )
    text = _exposition(hub, openmetrics=True)
    assert "workflow_task_duration_seconds_bucket{" in text
    assert f'# {{span_id="{span_id.hex()}",trace_id="{trace_id.hex()}"}} 0.2' in text
    assert 'le="2592000.0"' in text


def test_names_past_the_allow_list_become_other():
    hub = MetricsHub(max_names=2)
    for name in ("a", "b", "c", "d"):
        hub.record([Observation("job.terminations", 1, (("job.name", name), ("job.type", "task")), Resource("s", "e"))])
    text = _exposition(hub)
    assert 'job_name="_OTHER"' in text
    assert (
        'job_terminations_total{deployment_environment_name="e",job_name="_OTHER",job_type="task",service_name="s"} 2.0'
        in text
    )


def test_error_types_past_the_allow_list_become_other_as_names_do():
    # A producer's error classes are its own (a class per customer id would be a series each): bounded alike.
    hub = MetricsHub(max_names=2)
    for error_type in ("PaymentError", "GatewayError", "Error_4711", "Error_4712"):
        attrs = (("workflow.definition.name", "checkout"), ("workflow.task.name", "charge"), ("error.type", error_type))
        hub.record([Observation("workflow.execution.errors", 1, attrs, Resource("s", "e"))])
    text = _exposition(hub)
    assert 'error_type="PaymentError"' in text and 'error_type="GatewayError"' in text
    assert 'error_type="Error_4711"' not in text
    assert (
        'error_type="_OTHER",service_name="s",workflow_definition_name="checkout",workflow_task_name="charge"} 2.0'
        in (text)
    )


def test_a_name_keeps_its_answer_when_recorded_again_and_unbounded_names_keep_memory_bounded(monkeypatch):
    monkeypatch.setattr("otel_bridge.export.metrics._NAMED_KEPT", 3)
    hub = MetricsHub(max_names=2)
    names = ["a", "b", "c", "a", "c", "d", "b", "e", "c"]  # a and b allowed, the rest past the list
    for name in names:
        hub.record([Observation("job.terminations", 1, (("job.name", name), ("job.type", "task")), Resource("s", "e"))])
    text = _exposition(hub)
    series = 'job_terminations_total{{deployment_environment_name="e",job_name="{}",job_type="task",service_name="s"}}'
    assert series.format("a") + " 2.0" in text
    assert series.format("b") + " 2.0" in text
    assert series.format("_OTHER") + " 5.0" in text
    assert len(hub._named) <= 3


def test_producers_past_the_bound_share_one_overflow_resource():
    hub = MetricsHub(max_producers=3)
    attrs = (("job.name", "j"), ("job.type", "task"))
    for i in range(10):
        hub.record([Observation("job.terminations", 1, attrs, Resource(f"svc{i}", "prod"))])
    text = _exposition(hub)
    assert text.count("job_terminations_total{") <= 5
    assert 'service_name="_OTHER"' in text


def test_the_process_series_every_client_library_exposes_are_served_beside_the_producers():
    # What a sidecar costs its pod, and how near the bridge is to its limit of open files.
    render = exposition(MetricsHub().collect)
    text = render("")[0].decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"):
        assert f"\n{name} " in text, name
