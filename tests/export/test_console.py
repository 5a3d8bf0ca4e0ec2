"""`OTEL_TRACES_EXPORTER=console` / `OTEL_METRICS_EXPORTER=console`: each request one line of OTLP/JSON on stdout."""

import io
import json
import logging

import pytest
from builders import finished_span

from otel_bridge import keys
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export import otlp
from otel_bridge.export.console import ConsoleMetrics, ConsoleTraces
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.span_encoding import encode_span, export_request


def test_spans_are_written_as_the_otlp_json_encoding_says_ids_in_hex_enums_as_integers():
    span = finished_span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        parent_span_id=bytes(range(8, 16)),
        links=[bytes(range(16, 24))],
    )
    out = io.StringIO()
    sent = ConsoleTraces(out).send(export_request([(keys.resource_key("shop", "prod"), encode_span(span))], "1.0"))
    assert sent.delivery is otlp.Delivery.SENT
    (line,) = out.getvalue().splitlines()
    (resource_spans,) = json.loads(line)["resourceSpans"]
    assert {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}["service.name"] == {
        "stringValue": "shop"
    }
    (written,) = resource_spans["scopeSpans"][0]["spans"]
    assert written["traceId"] == "000102030405060708090a0b0c0d0e0f"
    assert (written["spanId"], written["parentSpanId"]) == ("0001020304050607", "08090a0b0c0d0e0f")
    assert written["links"][0]["spanId"] == "1011121314151617"
    assert (written["kind"], written["status"]["code"]) == (1, 2)


def test_metrics_are_written_as_otlp_json_too():
    hub = MetricsHub()
    attrs = (("job.name", "sync"), ("job.type", "continuous"), ("job.execution.result", "success"))
    hub.record([Observation("job.executions", 3, attrs, Resource("jobs", "prod"))])
    out = io.StringIO()
    for data in hub.collect():
        assert ConsoleMetrics(out).send(data)
    names = {
        metric["name"]
        for line in out.getvalue().splitlines()
        for resource in json.loads(line)["resourceMetrics"]
        for scope in resource["scopeMetrics"]
        for metric in scope["metrics"]
    }
    assert "job.executions" in names


@pytest.mark.parametrize(
    ("value", "sender"),
    [
        ("console", ConsoleTraces),
        ("otlp,console", otlp._HttpTraces),  # a list, as the specification allows: OTLP first
        ("none", otlp.NoSender),
        ("", otlp._HttpTraces),
    ],
)
def test_the_standard_variable_chooses_the_exporter(monkeypatch, value, sender):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    assert type(otlp.trace_sender()) is sender


def test_an_exporter_the_bridge_does_not_have_is_told_and_otlp_used(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with caplog.at_level(logging.WARNING):
        assert type(otlp.trace_sender()) is otlp._HttpTraces
    assert "OTEL_TRACES_EXPORTER=zipkin: otel-bridge exports its traces over otlp" in caplog.text
