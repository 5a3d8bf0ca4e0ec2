"""The in-process tracker produces exactly what the sidecar produces, through a real OTLP receiver."""

import asyncio
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from bridge_process import BridgeProcess, held_port
from builders import WorkflowRun, ns_of
from faults import BUG, a_bug_for, small_filesystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from pki import make_pki

from otel_bridge import trace_id_for
from otel_bridge.export import otlp
from otel_bridge.json_text import dumps
from otel_bridge.producer.demo import ENV, JOB_SERVICE, SCENARIOS, WORKFLOW_SERVICE
from otel_bridge.tracker import AsyncOtelTracker, OtelTracker, OtlpOptions, in_process

# Nothing settles before every event is in, in both: the comparison is of the same complete fact sets.
SETTLE = "3"


class _NoText:
    """An object a producer's event might hold that will not even be written as text."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


# What a Python producer's events might hold: values JSON has, and values it has not.
_python_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.binary(max_size=4)
    | st.datetimes() | st.decimals() | st.uuids() | st.sets(st.integers(), max_size=2) | st.builds(_NoText),
    lambda children: st.lists(children, max_size=3)
    | st.tuples(children)
    | st.dictionaries(st.text(max_size=5) | st.integers() | st.tuples(st.integers()), children, max_size=3),
    max_leaves=10,
)  # fmt: skip


def _invocations() -> list[list[dict]]:
    rng = random.Random(3)
    start = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    return [batch for name in SCENARIOS for batch in SCENARIOS[name](start, rng)]


# When each bridge last heard from a producer: its own clock's reading, the one producer series two bridges
# given the same events do not share.
_HEARD = "otel_bridge.producer.last_heard_timestamp"


def _without_bridge_telemetry(metrics: dict) -> dict:
    """Producer series only: (name, resource, attributes) -> what a point says, exemplars aside, and the resource
    without the `service.instance.id` of the process that wrote it (the sidecar's, the application's)."""
    return {
        (name, tuple((k, v) for k, v in resource if k != "service.instance.id"), attributes): {
            k: v for k, v in point.items() if k != "exemplars"
        }
        for (name, resource, attributes), point in metrics.items()
        if dict(resource).get("service.name") != "otel-bridge" and name != _HEARD
    }


def _heard(metrics: dict) -> dict[tuple[str, str], float]:
    """When each producer (service, engine) was last heard from."""
    return {
        (dict(resource)["service.name"], dict(attributes)["workflow.platform.name"]): point["value"]
        for (name, resource, attributes), point in metrics.items()
        if name == _HEARD
    }


def test_the_in_process_tracker_and_the_sidecar_produce_identical_spans_and_metrics(tmp_path, monkeypatch):
    sidecar_backend, tracker_backend = OtlpHttpReceiver(), OtlpHttpReceiver()
    sidecar = BridgeProcess(
        tmp_path / "sidecar", sidecar_backend.endpoint, settle_seconds=SETTLE, gap_grace_seconds="1"
    )
    sidecar.workdir.mkdir()
    sidecar.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tracker_backend.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    trackers = {
        service: OtelTracker(ENV, service, settle_seconds=float(SETTLE), flush_interval_seconds=None)
        for service in (WORKFLOW_SERVICE, JOB_SERVICE)
    }
    began = time.time()
    try:
        for batch in _invocations():
            assert sidecar.post(batch).status_code == 200
            tracker = trackers[batch[0]["serviceKey"]]
            for event in batch:
                tracker.emit({k: v for k, v in event.items() if k not in ("env", "serviceKey")})
            tracker.flush()  # one invocation, one store transaction, as one POST is for the sidecar
        for tracker in trackers.values():
            tracker.close()  # sends every ended run, exports the metrics

        expected = tracker_backend.received.unique_spans()
        assert len(expected) > 30
        got = sidecar_backend.received
        got.wait_for(lambda: len(got.unique_spans()) == len(expected), timeout=30)
        got.wait_for(
            lambda: (
                _without_bridge_telemetry(got.metrics) == _without_bridge_telemetry(tracker_backend.received.metrics)
            ),
            timeout=15,
        )
    finally:
        sidecar.close()
        sidecar_backend.close()
        tracker_backend.close()
    assert got.unique_spans() == expected  # ids, times, names, attributes, events, links, resources
    # Each heard from both producers, as each bridge's clock read it while the events came in.
    for heard in (_heard(got.metrics), _heard(tracker_backend.received.metrics)):
        assert set(heard) == {(WORKFLOW_SERVICE, "durable-effect"), (JOB_SERVICE, "durable-effect")}
        assert all(began <= at <= time.time() for at in heard.values())


def test_a_span_exporter_given_gets_the_spans_the_otlp_export_sends(monkeypatch):
    # The application's exporter, here the SDK's own OTLP one (a vendor's that speaks no OTLP takes the same
    # spans): its backend gets what the tracker's own OTLP export gives another, every demo scenario.
    ours, theirs = OtlpHttpReceiver(), OtlpHttpReceiver()
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    exporter = OTLPSpanExporter(endpoint=f"{theirs.endpoint}/v1/traces")
    trackers = [
        {
            service: OtelTracker(ENV, service, settle_seconds=0.5, flush_interval_seconds=None, **export)
            for service in (WORKFLOW_SERVICE, JOB_SERVICE)
        }
        for export in ({"otlp": {"endpoint": ours.endpoint}}, {"span_exporter": exporter})
    ]
    try:
        for batch in _invocations():
            for by_service in trackers:
                tracker = by_service[batch[0]["serviceKey"]]
                for event in batch:
                    tracker.emit({k: v for k, v in event.items() if k not in ("env", "serviceKey")})
                tracker.flush()
        for by_service in trackers:
            for tracker in by_service.values():
                tracker.close()
        expected = ours.received.unique_spans()
        assert len(expected) > 30
        theirs.received.wait_for(lambda: len(theirs.received.unique_spans()) == len(expected), timeout=10)
        assert theirs.received.unique_spans() == expected  # ids, times, names, attributes, events, links, resources
        assert exporter._shutdown  # the tracker's to shut down, as a span processor's is
    finally:
        ours.close()
        theirs.close()


def test_a_span_exporter_that_fails_leaves_the_spans_waiting_until_it_takes_them(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")

    class Refusing(InMemorySpanExporter):
        # The application's exporter while its backend is away: FAILURE, then an error, then it takes them.
        answers = [SpanExportResult.FAILURE, ConnectionError("backend away")]

        def export(self, spans):
            if self.answers:
                answer = self.answers.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                return answer
            return super().export(spans)

    exporter = Refusing()
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    with OtelTracker("production", "shop", span_exporter=exporter, settle_seconds=0.2, export_delay_ms=50) as tracker:
        for event in run.events:
            tracker.emit(event)
        tracker.flush()
        deadline = time.monotonic() + 20
        while len(exporter.get_finished_spans()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["step a", "workflow orderProcessing"]
    assert not exporter.answers
    assert "trace export to Refusing is failing (Refusing answered FAILURE)" in caplog.text


def test_force_flush_sends_what_has_ended_now_and_the_tracker_goes_on(otlp_http):
    # A process about to be frozen (a serverless function between invocations): nothing waits for the settle
    # window (a minute here) or the metric export's interval (an hour).
    spans = InMemorySpanExporter()
    options: OtlpOptions = {"endpoint": otlp_http.endpoint}
    first = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    going_on = WorkflowRun().started().step_started("b").after(1).step_completed("b").sleep_started(3600)
    tracker = OtelTracker(
        "production", "shop", span_exporter=spans, otlp=options, settle_seconds=60, metric_export_interval_ms=3_600_000
    )
    try:
        for event in first.events:
            tracker.emit(event)
        assert tracker.force_flush(timeout_seconds=10)
        assert sorted(span.name for span in spans.get_finished_spans()) == ["step a", "workflow orderProcessing"]
        assert any(name == "workflow.execution.duration" for name, _, _ in otlp_http.received.metrics)
        # Still open for events: a run that goes on has what ended sent, its root when it ends.
        for event in going_on.events:
            tracker.emit(event)
        assert tracker.force_flush(timeout_seconds=10)
        assert sorted(span.name for span in spans.get_finished_spans()) == [
            "step a",
            "step b",
            "workflow orderProcessing",
        ]
    finally:
        tracker.close()


def test_force_flush_says_false_when_the_backend_has_not_taken_the_spans_by_its_timeout(monkeypatch):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")

    class Away(InMemorySpanExporter):
        def export(self, spans):
            return SpanExportResult.FAILURE

    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    with OtelTracker(
        "production", "shop", span_exporter=Away(), settle_seconds=60, drain_timeout_seconds=0.5
    ) as tracker:
        for event in run.events:
            tracker.emit(event)
        started = time.monotonic()
        assert not tracker.force_flush(timeout_seconds=0.5)
        assert time.monotonic() - started < 5  # bounded by its timeout, not the export's backoff
        assert tracker.bridge.store.outbox_depth() == 2  # kept, to be sent once the backend takes them


def test_the_applications_meter_provider_gets_the_metrics(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with OtelTracker("production", "shop", meter_provider=provider, settle_seconds=0) as tracker:
        run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
        for event in run.events:
            tracker.emit(event)
    names = {m.name for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"workflow.execution.duration", "workflow.task.duration"} <= names


def _gauge_points(reader: InMemoryMetricReader, name: str) -> list[float]:
    return [
        point.value
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for point in m.data.data_points
    ]


def test_a_tracker_made_after_another_was_closed_reports_its_own_gauges_to_the_applications_meter_provider(
    monkeypatch, tmp_path, caplog
):
    # The SDK hands the first instrument of a name, with its callback, to whoever asks for it again: the
    # second tracker's gauges read the first one's closed store (an error logged at a collection) and
    # never its own.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with OtelTracker("production", "shop", state=str(tmp_path / "a.db"), meter_provider=provider) as first:
        for n in range(3):
            first.emit(WorkflowRun(f"order{n}").started().events[0])
        first.flush()
        assert _gauge_points(reader, "otel_bridge.state.hot_runs") == [3]

    assert _gauge_points(reader, "otel_bridge.state.hot_runs") == []  # closed: none of its gauges

    with OtelTracker("production", "shop", state=str(tmp_path / "b.db"), meter_provider=provider) as second:
        second.emit(WorkflowRun("refund").started().events[0])
        second.flush()
        assert _gauge_points(reader, "otel_bridge.state.hot_runs") == [1]
    assert "reading the gauge" not in caplog.text


def test_two_trackers_open_at_once_on_the_applications_meter_provider_report_one_value_of_both(monkeypatch, tmp_path):
    # Their points carried the same attributes, and the SDK kept one: one tracker's runs hid the other's.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with (
        OtelTracker("production", "shop", state=str(tmp_path / "a.db"), meter_provider=provider) as shop,
        OtelTracker("production", "billing", state=str(tmp_path / "b.db"), meter_provider=provider) as billing,
    ):
        for n in range(3):
            shop.emit(WorkflowRun(f"order{n}").started().events[0])
        billing.emit(WorkflowRun("invoice").started().events[0])
        shop.flush()
        billing.flush()

        assert _gauge_points(reader, "otel_bridge.state.hot_runs") == [4]  # runs in memory: added up
        assert _gauge_points(reader, "otel_bridge.alive") == [1]  # alive while both are: the least
        assert _gauge_points(reader, "otel_bridge.build.info") == [1]


def test_the_export_timeout_counts_seconds_as_the_applications_own_python_exporters_read_it(monkeypatch, otlp_http):
    # One variable, one process: the sidecar reads the specification's milliseconds, but here `5` is
    # what the application's own OTLP exporters wait (5 s), and the tracker waits as long.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    with OtelTracker("production", "shop") as tracker:
        waits = [sender._client._timeout for sender in tracker.bridge.trace_senders]
        assert waits and set(waits) == {5.0}


@pytest.mark.parametrize(
    ("env", "service_key", "named"), [("prod", "shop\tus", "service_key"), ("p" * 1001, "shop", "env")]
)
def test_an_env_or_service_key_the_bridge_rejects_is_a_value_error_as_the_tracker_is_made(env, service_key, named):
    # Taken, every event the tracker was given was rejected and kept in a dead-letter file.
    with pytest.raises(ValueError, match=f"^{named} .* is none the bridge takes"):
        OtelTracker(env, service_key)


def test_a_setting_misspelt_is_a_type_error_naming_the_one_meant():
    # Settings ignores names it does not know: settle_second=1 left settle_seconds at its default, unsaid.
    with pytest.raises(TypeError) as misspelt:
        OtelTracker("production", "shop", settle_second=1)
    told = "'settle_second' is not a setting of otel-bridge; did you mean 'settle_seconds'?"
    assert str(misspelt.value).endswith(told)
    with pytest.raises(TypeError) as unknown:
        AsyncOtelTracker("production", "shop", colour="blue")
    assert str(unknown.value).endswith("'colour' is not a setting of otel-bridge")


def test_a_setting_given_by_its_variable_is_a_type_error_naming_the_keyword():
    # The variable would be ignored as a keyword (Settings reads its fields by name), the setting left unsaid.
    with pytest.raises(TypeError) as variable:
        OtelTracker("production", "shop", OTEL_BRIDGE_SETTLE_SECONDS=1, OTEL_SPAN_LINK_COUNT_LIMIT=8)
    assert str(variable.value) == (
        "OtelTracker: 'OTEL_BRIDGE_SETTLE_SECONDS' is the environment variable of the setting 'settle_seconds': "
        "pass settle_seconds=…; 'OTEL_SPAN_LINK_COUNT_LIMIT' is the environment variable of the setting "
        "'max_span_links': pass max_span_links=…"
    )


def test_the_otlp_exporter_given_as_a_keyword_is_a_type_error_naming_the_environment_and_the_otlp_option():
    # An application that configures its own SDK in code looks for the endpoint among the keywords.
    with pytest.raises(TypeError) as exporter:
        OtelTracker("production", "shop", OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    assert str(exporter.value) == (
        "OtelTracker: 'OTEL_EXPORTER_OTLP_ENDPOINT' is not a setting of otel-bridge: the OpenTelemetry variables "
        "(the OTLP export's endpoint, headers, TLS files, protocol) are read from the environment as the tracker "
        'is made, or given in code as otlp={"endpoint": …, "headers": {…}}'
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_otlp_export_given_in_code_takes_the_place_of_the_variables(monkeypatch, pki, protocol):
    # An application whose settings live in its own configuration, with the variables set for something
    # else (its own SDK's backend): the tracker's spans and metrics go where the code says, with the code's
    # credential and TLS files, over mutual TLS.
    tls = (pki["backend.pem"], pki["backend.key"], pki["ca.pem"])
    backend = OtlpHttpReceiver(tls=tls) if protocol == "http/protobuf" else OtlpGrpcReceiver(tls=tls)
    backend.credential = "code-key"
    elsewhere = held_port()
    for name, value in {
        "ENDPOINT": f"http://127.0.0.1:{elsewhere.getsockname()[1]}",
        "TRACES_ENDPOINT": f"http://127.0.0.1:{elsewhere.getsockname()[1]}/v1/traces",
        "PROTOCOL": "grpc" if protocol == "http/protobuf" else "http/protobuf",
        "HEADERS": "authorization=Bearer%20env-key,x-honeycomb-team=env-key",
        "TRACES_CERTIFICATE": "/nonexistent/ca.pem",
        "TIMEOUT": "0.001",
    }.items():
        monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{name}", value)
    options: OtlpOptions = {
        "endpoint": backend.endpoint,
        "protocol": "grpc" if protocol == "grpc" else "http/protobuf",
        "headers": {"authorization": "Bearer code-key"},
        "certificate": Path(pki["ca.pem"]),
        "client_key": pki["bridge.key"],
        "client_certificate": pki["bridge.pem"],
        "timeout_seconds": 5,
    }
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    try:
        with OtelTracker("production", "shop", otlp=options, settle_seconds=0.2) as tracker:
            assert otlp.endpoint_of(tracker.bridge.trace_senders[0]) in (
                f"{backend.endpoint}/v1/traces",
                f"127.0.0.1:{backend.port}",  # gRPC's exporter keeps the host and port
            )
            for event in run.events:
                tracker.emit(event)
            # The client certificate given is watched for its end, named by its option.
            scraped = tracker.bridge.exposition("")[0].decode()
            assert re.search(
                r'^otel_bridge_tls_certificate_expiration_timestamp_seconds\{certificate="otlp\[\'client_certificate\'\]"',
                scraped,
                re.M,
            )
        trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
        backend.received.wait_for(lambda: len(backend.received.trace(trace_id)) == 2, timeout=10)
        backend.received.wait_for(lambda: backend.received.metrics, timeout=10)
        assert backend.received.refused == 0
        assert {h.get("authorization") for h in backend.received.headers} == {"Bearer code-key"}
        assert not any("x-honeycomb-team" in h for h in backend.received.headers)  # the application's backend's
    finally:
        backend.close()
        elsewhere.close()


def test_no_headers_given_in_code_is_none_of_the_variables_sent(monkeypatch, otlp):
    # The variables' credential is the application's own backend's: `headers={}` sends it nowhere.
    protocol, backend = otlp
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=env-key")
    options: OtlpOptions = {"endpoint": backend.endpoint, "headers": {}}
    options["protocol"] = "grpc" if protocol == "grpc" else "http/protobuf"
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    with OtelTracker("production", "shop", otlp=options, settle_seconds=0.2) as tracker:
        for event in run.events:
            tracker.emit(event)
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    backend.received.wait_for(lambda: len(backend.received.trace(trace_id)) == 2, timeout=10)
    assert backend.received.headers  # seen, and without it
    assert not any("x-honeycomb-team" in h for h in backend.received.headers)


@pytest.mark.parametrize(
    ("options", "error", "said"),
    [
        ({"endpoint": " "}, ValueError, "otlp['endpoint'] is empty: leave it out for the default"),
        ({"endpoints": "http://c:4318"}, TypeError,
         "otlp: 'endpoints' is no option of the OTLP export; did you mean 'endpoint'?"),
        ({"timeout_seconds": "5"}, TypeError, "otlp['timeout_seconds'] is str: give an int or a float"),
        ({"insecure": "true"}, TypeError, "otlp['insecure'] is str: give a bool"),
        ({"timeout_seconds": True}, TypeError, "otlp['timeout_seconds'] is bool: give an int or a float"),
        ({"headers": {"x-api-key": "k\r\nx-evil: 1"}}, ValueError,
         "otlp['headers']: the value of 'x-api-key' is no header value (printable ASCII); its value is not shown"),
        ({"headers": {"x api key": "k"}}, ValueError, "otlp['headers']: 'x api key' is no header name"),
        ({"endpoint": "collector:4318"}, ValueError,
         "endpoint 'collector:4318/v1/traces' is not an http:// or https:// URL (otlp['endpoint'])"),
        ({"endpoint": "http://collector:99999"}, ValueError,
         "otlp['endpoint']='http://collector:99999': the OTLP/HTTP traces endpoint does not parse"),
        ({"timeout_seconds": 0}, ValueError, "otlp['timeout_seconds']='0.0' must be above 0 and at most a day"),
        ({"compression": "br"}, ValueError, "otlp['compression']='br': OTLP over http/protobuf compresses with"),
        ({"protocol": "http/json"}, ValueError, "unsupported OTLP protocol 'http/json' for traces"),
        ({"certificate": "/nonexistent/ca.pem"}, ValueError,
         "otlp['certificate']='/nonexistent/ca.pem' cannot be read"),
    ],
)  # fmt: skip
def test_an_otlp_option_the_export_cannot_use_is_an_error_naming_it_as_the_tracker_is_made(options, error, said):
    with pytest.raises(error) as refused:
        OtelTracker("production", "shop", otlp=options)
    assert said in str(refused.value)
    assert "x-evil" not in str(refused.value)


def test_an_event_emitted_after_close_is_dropped_counted_and_told_once(monkeypatch, caplog):
    # At shutdown a workflow still running may emit after the application closed its tracker.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    tracker = OtelTracker("production", "shop", flush_interval_seconds=None)
    tracker.close()
    with caplog.at_level(logging.WARNING):
        for event in WorkflowRun().started().step_started("a").events:
            tracker.emit(event)
        tracker.flush()
    assert (tracker.dropped, tracker.pending(), tracker.rejected) == (2, 0, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "OtelTracker: an event emitted after close() is dropped (and every later one, counted): close the "
        "tracker once the workflows that emit to it have ended"
    ]


def test_a_string_sliced_mid_emoji_is_stored_as_the_sidecar_reads_it_and_holds_nothing_up(monkeypatch, otlp_http):
    # A lone surrogate cannot be written as UTF-8: it once failed the whole batch on every flush,
    # holding up every later event. Over HTTP the same event reads back with U+FFFD in its place.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    run = WorkflowRun().started().step_started("chart \ud83d").after(5).step_completed("chart \ud83d").completed()
    with OtelTracker("production", "shop", settle_seconds=0) as tracker:
        for event in run.events:
            tracker.emit(event)
        tracker.flush()
        assert tracker.pending() == 0 and tracker.rejected == 0
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow orderProcessing", "step chart \ufffd"}


def test_python_values_make_the_trace_their_json_text_makes_as_a_producers_http_tracker_sends_them(monkeypatch):
    # A producer swapping its HTTP tracker for this one keeps its events as it made them: an event id that
    # is a UUID was rejected here ("Input should be a valid string"), where the sidecar got it as text.
    run = WorkflowRun().started(input={"order": 42}).step_started("charge").after(5).step_completed("charge")
    run = run.completed()
    as_python = [
        event
        | {"eventId": uuid.UUID(event["eventId"]), "timestamp": datetime.fromisoformat(event["timestamp"])}
        | ({"input": {"order": Decimal(42)}} if "input" in event else {})
        for event in run.events
    ]
    as_sent = [json.loads(dumps(event)) for event in as_python]  # the HTTP tracker's body, as the sidecar reads it
    traces = []
    for events in (as_sent, as_python):
        backend = OtlpHttpReceiver()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", backend.endpoint)
        try:
            with OtelTracker("production", "shop", settle_seconds=0, capture_input=True) as tracker:
                for event in events:
                    tracker.emit(event)
                tracker.flush()
                assert tracker.rejected == 0
            backend.received.wait_for(lambda b=backend: len(b.received.unique_spans()) == 2)
            traces.append(backend.received.unique_spans())
        finally:
            backend.close()
    from_text, from_python = traces
    assert from_python == from_text
    (root,) = [span for span in from_python.values() if span.name.startswith("workflow")]
    assert '{"order":"42"}' in root.attributes.values()  # the Decimal as JSON.stringify writes an object's text


def test_otel_sdk_disabled_turns_the_trackers_export_off_as_it_does_the_sdks(monkeypatch, caplog, otlp_http):
    # An application's tests set it to export nothing: the tracker stored and settled, sent nothing,
    # and said nothing of a backend it was never to reach.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "True")
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    with caplog.at_level(logging.WARNING), OtelTracker("production", "shop", settle_seconds=0) as tracker:
        for event in run.events:
            tracker.emit(event)
        tracker.flush()
        assert tracker.pending() == 0
    assert otlp_http.received.unique_spans() == {} and otlp_http.received.metrics == {}
    assert otlp_http.received.refused == 0
    assert [r.getMessage() for r in caplog.records if "export" in r.getMessage()] == []


def test_an_event_the_pipeline_fails_on_is_dead_lettered_and_holds_up_no_other(tmp_path, monkeypatch, otlp_http):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    poison = WorkflowRun().started()
    good = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    poisoned = poison.events[0]["eventId"]
    a_bug_for(monkeypatch, poisoned)
    with OtelTracker("production", "shop", settle_seconds=0, dead_letter=tmp_path / "dead.jsonl") as tracker:
        for event in poison.events + good.events:
            tracker.emit(event)
        tracker.flush()
        assert tracker.pending() == 0 and tracker.rejected == 1
    (kept,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert kept["eventId"] == poisoned and BUG in kept["error"]
    assert kept["event"]["eventId"] == poisoned  # whole, to be replayed once the bug is fixed
    trace_id = trace_id_for("durable-effect", "production", "shop", good.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow orderProcessing", "step a"}


def test_an_in_memory_tracker_leaves_no_directory_behind_unless_it_kept_dead_letters(
    tmp_path, monkeypatch, otlp_http, caplog
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with OtelTracker("production", "shop", settle_seconds=0, flush_interval_seconds=None) as tracker:
        for event in WorkflowRun().started().completed().events:
            tracker.emit(event)
    assert list(tmp_path.iterdir()) == []

    caplog.set_level(logging.WARNING, "otel_bridge.tracker.in_process")
    with OtelTracker("production", "shop", settle_seconds=0, flush_interval_seconds=None) as tracker:
        tracker.emit({"type": "step.started", "workflowId": "w", "eventId": "e-1"})  # no time, no step
        tracker.flush()
    (kept,) = tmp_path.glob("otel-tracker-*/otel-tracker-dead-letter.jsonl")
    assert [json.loads(line)["event"]["eventId"] for line in kept.read_text().splitlines()] == ["e-1"]
    said = [r.getMessage() for r in caplog.records]
    assert any(str(kept) in line and "1 events rejected" in line for line in said)
    assert any(str(kept.parent) in line and "kept" in line for line in said[1:])  # and again, at close


def test_what_is_no_event_or_holds_itself_raises_nothing_into_the_workflow(tmp_path, monkeypatch, otlp_http):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    loop: dict = {}
    loop["itself"] = loop
    run = WorkflowRun().started().completed()
    with OtelTracker("production", "shop", settle_seconds=0, dead_letter=tmp_path / "dead.jsonl") as tracker:
        tracker.emit(None)  # type: ignore[arg-type]
        for event in run.events:  # Python values, as a producer has them: a time, an input that holds itself
            tracker.emit(event | {"timestamp": datetime.fromisoformat(event["timestamp"]), "input": loop})
        tracker.flush()
        assert tracker.rejected == 1
    (kept,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert kept["event"] is None and kept["error"] == "an event must be a JSON object, not null"
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    otlp_http.received.wait_for(lambda: len(otlp_http.received.trace(trace_id)) == 1)


def test_an_event_that_is_no_json_at_all_is_kept_as_its_repr_and_raises_nothing_into_the_workflow(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    # A key that is a tuple is written by no JSON encoder: its rejection once raised out of `flush`, and the
    # rejections beside it were not kept.
    run = WorkflowRun().started()
    spoilt = [{(1, 2): "a tuple for a key"}, run.events[0] | {"input": {(3,): _NoText()}}, {1: "a number for a key"}]
    with OtelTracker("production", "shop", dead_letter=tmp_path / "dead.jsonl") as tracker:
        for event in spoilt:
            tracker.emit(event)
        tracker.flush()
        assert tracker.rejected == 2
    kept = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    producer = {"env": "production", "serviceKey": "shop"}
    assert [letter["event"] for letter in kept] == [
        "[not kept as JSON, which it is not: {(1, 2): 'a tuple for a key', 'env': 'production', 'serviceKey': 'shop'}]",
        {"1": "a number for a key", **producer},  # as JSON text has such a key: as text
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_python_values, min_size=1, max_size=5), min_size=1, max_size=3))
def test_whatever_a_producer_emits_nothing_is_raised_into_the_workflow_and_every_rejection_is_kept(
    monkeypatch, batches
):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with tempfile.TemporaryDirectory() as directory:
        kept = Path(directory) / "dead.jsonl"
        with OtelTracker("production", "shop", dead_letter=kept) as tracker:
            for batch in batches:
                for event in batch:
                    tracker.emit(event)
                tracker.flush()
            rejected = tracker.rejected
        # A JSON line ends at "\n" alone: U+0085 and the like are text in JSON.
        lines = [line for line in kept.read_text().split("\n") if line] if kept.exists() else []
        assert len(lines) == rejected


def test_the_asyncio_flavour(tmp_path, monkeypatch, otlp_http):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()

    async def produce() -> None:
        async with AsyncOtelTracker("production", "shop", settle_seconds=0, batch_size=3) as tracker:
            for event in run.events:
                await tracker.emit(event)
            assert await tracker.pending() == 1
            assert await tracker.force_flush(timeout_seconds=10)  # sent before it answers, off the event loop
            trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
            assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow orderProcessing", "step a"}

    asyncio.run(produce())
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow orderProcessing", "step a"}


PRODUCER = textwrap.dedent(
    """
    import json, sys, time
    from otel_bridge.tracker import OtelTracker

    events = json.loads(sys.argv[2])
    tracker = OtelTracker("production", "shop", state=sys.argv[1], settle_seconds=0.1)
    for event in events:
        tracker.emit(event)
    tracker.flush()
    print("stored", flush=True)
    if sys.argv[3] == "crash":
        time.sleep(60)  # mid-workflow: killed with -9 here
    tracker.close()
    """
)


def test_a_producer_killed_mid_workflow_finishes_the_run_as_one_trace_after_its_restart(tmp_path, otlp_http):
    run = WorkflowRun("resilient").started().step_started("a").after(5).step_completed("a")
    first = list(run.events)
    run.after(1000).step_started("b").after(5).step_completed("b").completed(["a", "b"])
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    state = str(tmp_path / "tracker.db")

    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, state, json.dumps(first), "crash"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert producer.stdout is not None and producer.stdout.readline().strip() == "stored"
    producer.send_signal(signal.SIGKILL)
    producer.wait(10)
    rest = subprocess.run(
        [sys.executable, "-c", PRODUCER, state, json.dumps(run.events[len(first) :]), "finish"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rest.returncode == 0, rest.stderr
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    got = otlp_http.received
    got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(trace_id)))
    spans = {s.name: s for s in got.unique_spans().values() if s.trace_id == trace_id}
    assert set(spans) == {"workflow resilient", "step a", "step b"}
    assert spans["workflow resilient"].start_ns == ns_of(run.events[0])
    assert spans["workflow resilient"].end_ns == ns_of(run.events[-1])
    assert all(
        s.parent_span_id == spans["workflow resilient"].span_id for n, s in spans.items() if n != "workflow resilient"
    )


def test_a_producers_processes_sharing_redis_build_one_trace_per_run_whichever_tells_its_events(redis_url, otlp_http):
    # gunicorn or Celery workers: a durable workflow resumes in whichever process, its events told from each.
    state = redis_url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(state).flushdb()
    run = WorkflowRun("shared").started().step_started("a").after(5).step_completed("a")
    first = list(run.events)
    run.after(1000).step_started("b").after(5).step_completed("b").completed(["a", "b"])
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    for events in (first, run.events[len(first) :]):
        told = subprocess.run(
            [sys.executable, "-c", PRODUCER, state, json.dumps(events), "finish"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tempfile.gettempdir(),
        )
        assert told.returncode == 0, told.stderr
        assert "Traceback" not in told.stderr and "forked" not in told.stderr
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    got = otlp_http.received
    got.wait_for(lambda: len(got.trace(trace_id)) == 3)
    time.sleep(0.5)  # anything sent twice would be here by now
    spans = {s.name: s for s in got.trace(trace_id)}
    assert len(got.trace(trace_id)) == 3 and set(spans) == {"workflow shared", "step a", "step b"}
    assert spans["step a"].parent_span_id == spans["step b"].parent_span_id == spans["workflow shared"].span_id
    assert not list(Path(tempfile.gettempdir()).glob("redis:*"))  # no folder named after the URL


def test_a_producer_that_exits_without_closing_its_tracker_still_sends_its_runs(otlp_http):
    run = WorkflowRun("forgetful").started().step_started("a").after(5).step_completed("a").completed()
    code = textwrap.dedent(
        """
        import json, sys
        from otel_bridge.tracker import OtelTracker

        tracker = OtelTracker("production", "shop", flush_interval_seconds=None)
        for event in json.loads(sys.argv[1]):
            tracker.emit(event)  # buffered, never flushed, never closed: the interpreter exits
        """
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(run.events)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow forgetful", "step a"}


def test_a_producer_with_trackers_exits_without_a_word_on_stderr(tmp_path, otlp_http):
    # One closed, one left open, one on a state file: each registers for forks, and that must not
    # be heard of at exit ("Exception ignored in ... WeakMethod" came of every tracker alive).
    run = WorkflowRun("quiet").started().step_started("a").after(5).step_completed("a").completed()
    code = textwrap.dedent(
        """
        import json, sys
        from otel_bridge.tracker import HttpBatchTracker, OtelTracker

        events = json.loads(sys.argv[1])
        closed = OtelTracker("production", "shop", flush_interval_seconds=None)
        for event in events:  # a run ended: one going on is told at close, on purpose
            closed.emit(event)
        closed.close()
        open_ = OtelTracker("production", "shop", flush_interval_seconds=None)
        for event in events:
            open_.emit(event)
        on_file = OtelTracker("production", "shop", state=sys.argv[2], flush_interval_seconds=None)
        http = HttpBatchTracker(sys.argv[3], "production", "shop")
        """
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    args = [json.dumps(run.events), str(tmp_path / "tracker.db"), "http://127.0.0.1:9/v1/events"]
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow quiet", "step a"}


def test_at_exit_a_backend_that_is_away_gets_one_attempt_and_the_spans_go_to_a_file_not_with_the_memory(
    tmp_path, otlp_http
):
    otlp_http.up = False  # answers 503 to every export
    run = WorkflowRun("forgetful").started().step_started("a").after(5).step_completed("a").completed()
    code = textwrap.dedent(
        """
        import json, sys
        from otel_bridge.tracker import OtelTracker

        tracker = OtelTracker("production", "shop", flush_interval_seconds=None)
        for event in json.loads(sys.argv[1]):
            tracker.emit(event)
        """
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(run.events)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # What the failing export says of the waiting spans is true of an outbox in memory too.
    assert "spans wait in the outbox, in memory, for as long as this process lives" in done.stderr
    assert "safely" not in done.stderr
    # Tried again every half second until drain_timeout_seconds (10 s), it was ~20 refused requests.
    assert otlp_http.received.refused <= 3
    # They went with the memory ("2 spans still in the outbox at exit: lost with the state"); now a
    # file keeps them, and says how to send them once the backend is back.
    kept = re.search(r"2 spans not sent by exit: the state is in memory, so they are kept in (\S+);", done.stderr)
    assert kept, done.stderr
    assert "could not send by exit, is kept in" in done.stderr  # its directory is left, and named
    otlp_http.up = True
    resend = [sys.executable, "-m", "otel_bridge", "resend-spans", kept[1]]
    sent = subprocess.run(resend, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow forgetful", "step a"}
    shutil.rmtree(Path(kept[1]).parent)


def test_a_producer_that_starves_the_settle_thread_settles_in_its_own_flush_while_settling_is_behind(
    monkeypatch, otlp_http
):
    # A producer busy on the CPU left the settle thread 7.8 s behind after 40,000 runs, their states in
    # memory. Here the settle thread does not run at all: the producer's flushes settle what is overdue.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setattr("otel_bridge.runtime.Bridge._settle_loop", lambda self: None)
    first = WorkflowRun("first").started().step_started("a").after(5).step_completed("a").completed()
    later = WorkflowRun("later").started()
    with OtelTracker("production", "shop", settle_seconds=0, flush_interval_seconds=None) as tracker:
        for event in first.events:
            tracker.emit(event)
        tracker.flush()
        assert tracker.bridge.store.outbox_depth() == 0  # not behind yet: left to the settle thread
        later_on = lambda: time.time() + 2  # noqa: E731 - the producer went on for two seconds
        tracker.bridge._clock = tracker.bridge.pipeline._clock = later_on
        tracker.emit(later.events[0])
        tracker.flush()
        assert tracker.bridge.store.outbox_depth() + len(otlp_http.received.unique_spans()) == 2
    trace_id = trace_id_for("durable-effect", "production", "shop", first.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow first", "step a"}


def test_closing_exports_for_the_drain_timeout_however_long_the_last_settling_took(monkeypatch, otlp_http, caplog):
    # The last settling of 80,000 runs took the whole 10 s, and 148,254 spans were lost with the memory.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    run = WorkflowRun("slow").started().step_started("a").after(5).step_completed("a").completed()
    with caplog.at_level(logging.WARNING), OtelTracker("production", "shop", drain_timeout_seconds=1) as tracker:
        for event in run.events:
            tracker.emit(event)
        real = tracker.bridge.pipeline.settle_due

        def slow(*args, **kwargs):
            time.sleep(1.5)  # longer than the drain timeout: settling's own work, no backend waited on
            return real(*args, **kwargs)

        monkeypatch.setattr(tracker.bridge.pipeline, "settle_due", slow)
    assert tracker.bridge.outbox_at_exit == 0
    assert not [r for r in caplog.records if "still in the outbox" in r.getMessage()]
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow slow", "step a"}


def test_an_in_memory_tracker_keeps_ended_runs_an_hour_not_a_week_and_their_facts_not_at_all(monkeypatch):
    # Its store is the process's memory: a week of ended runs, and their facts kept for a command that
    # cannot read them, grew a worker by hundreds of MiB.
    with OtelTracker("production", "shop") as tracker:
        assert (tracker.bridge.settings.dedup_ttl_seconds, tracker.bridge.settings.keep_finished_seconds) == (3600, 0)
    with OtelTracker("production", "shop", dedup_ttl_seconds=86_400) as tracker:
        assert tracker.bridge.settings.dedup_ttl_seconds == 86_400
    monkeypatch.setenv("OTEL_BRIDGE_KEEP_FINISHED_SECONDS", "60")
    with OtelTracker("production", "shop") as tracker:
        assert tracker.bridge.settings.keep_finished_seconds == 60
    with tempfile.TemporaryDirectory() as state, OtelTracker("production", "shop", state=f"{state}/t.db") as tracker:
        assert tracker.bridge.settings.dedup_ttl_seconds == 7 * 86_400  # on disk, as the sidecar keeps it


def test_closing_an_in_memory_tracker_with_runs_still_going_on_says_their_roots_are_not_sent(
    monkeypatch, otlp_http, caplog
):
    # Durable workflows go on in another process after this one stops: in memory, their roots are lost.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    going_on = WorkflowRun("long").started().step_started("a").after(5).step_completed("a").step_started("b")
    ended = WorkflowRun("short").started().after(1).completed()
    with caplog.at_level(logging.WARNING), OtelTracker("production", "shop") as tracker:
        for event in going_on.events + ended.events:
            tracker.emit(event)
    (told,) = [r.getMessage() for r in caplog.records if "still going on" in r.getMessage()]
    assert told.startswith("1 runs still going on are not sent whole") and "state file" in told
    trace_id = trace_id_for("durable-effect", "production", "shop", going_on.workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"step a"}  # what it ended


def test_the_applications_own_spans_in_a_steps_context_arrive_under_that_attempt_in_the_runs_trace(
    monkeypatch, otlp_http
):
    # The calls a step makes (here one span of the application's own tracer) are drawn under that step.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    application = TracerProvider()
    application.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{otlp_http.endpoint}/v1/traces")))
    run = WorkflowRun("checkout").started().step_started("charge").after(5).step_failed("charge", will_retry=True)
    with OtelTracker("production", "shop", settle_seconds=0) as tracker:
        for event in run.events:
            tracker.emit(event)
        run.after(1000).step_started("charge", 2)
        tracker.emit(run.events[-1])
        with application.get_tracer("shop").start_as_current_span(
            "POST /payments", context=tracker.context(run.workflow_id, "charge", 2)
        ):
            pass
        run.after(20).step_completed("charge", 2).completed(["charge"])
        for event in run.events[-2:]:
            tracker.emit(event)
    application.shutdown()

    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    spans = {s.name: s for s in otlp_http.received.trace(trace_id) if s.name != "step charge"}
    attempts = {
        s.attributes["workflow.task.attempt"]: s for s in otlp_http.received.trace(trace_id) if s.name == "step charge"
    }
    assert set(spans) == {"workflow checkout", "POST /payments"} and set(attempts) == {1, 2}
    assert spans["POST /payments"].parent_span_id == attempts[2].span_id
    assert attempts[2].parent_span_id == spans["workflow checkout"].span_id


def test_a_damaged_state_file_is_one_clear_error_to_the_application_and_salvaged_it_goes_on(tmp_path, monkeypatch):
    # It raised SQLite's own "database disk image is malformed" from inside the tracker's start. Told not to
    # salvage at start, it is one clear error; by default, the start salvages it and the application goes on.
    from faults import broken_page, open_runs

    from otel_bridge.state.store import StoreOpenError

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    state = tmp_path / "tracker.db"
    runs = open_runs(state, 300)
    broken_page(state, "state")
    with pytest.raises(StoreOpenError, match=r"tracker\.db is damaged .*salvage-state"):
        OtelTracker("production", "shop", state=str(state), salvage_at_start=False)
    # The lock the failed start held is let go: the next start takes it, and salvages the file first.
    with OtelTracker("production", "shop", state=str(state), flush_interval_seconds=None) as tracker:
        for event in runs[0].step_completed("pay").completed().events[-2:]:
            tracker.emit(event)
        tracker.flush()
        assert tracker.pending() == 0
    assert len(list(tmp_path.glob("tracker.db.damaged-*[0-9Z]"))) == 1  # kept beside, whole


def _ended_runs(prefix: str, n: int) -> list[WorkflowRun]:
    return [
        WorkflowRun(f"{prefix}-{k}").started().step_started("a").after(5).step_completed("a").completed()
        for k in range(n)
    ]


@contextmanager
def _backlog_full(monkeypatch, otlp_http, caplog, runs: list[WorkflowRun]) -> Iterator[OtelTracker]:
    """A tracker whose outbox (10 spans at most) the first five of `runs` fill, the backend away: its store
    refuses what comes next, until the backend is back (`otlp_http.up`) and the outbox drains."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    otlp_http.up = False
    with (
        caplog.at_level(logging.WARNING, logger="otel_bridge.tracker.in_process"),
        OtelTracker("production", "shop", settle_seconds=0, max_outbox_spans=10, batch_size=10) as tracker,
    ):
        for run in runs[:5]:
            for event in run.events:
                tracker.emit(event)
        tracker.flush()
        otlp_http.received.wait_for(lambda: tracker.bridge.store.outbox_depth() == 10)
        yield tracker


def test_a_store_that_refuses_holds_the_events_asks_again_after_a_wait_and_loses_none(monkeypatch, otlp_http, caplog):
    # The export backlog full (the backend away): each emit that found the buffer full offered every event
    # held again, a warning each. Now the store is asked again once a backoff is over; the events wait in the
    # buffer meanwhile.
    runs = _ended_runs("held", 400)
    with _backlog_full(monkeypatch, otlp_http, caplog, runs) as tracker:
        consumer, offered = tracker.bridge.consumer("tracker"), []  # the one every flush hands its batch to
        real = consumer.ingest
        monkeypatch.setattr(consumer, "ingest", lambda batch: offered.append(len(batch)) or real(batch))
        for run in runs[5:]:
            for event in run.events:
                tracker.emit(event)
        assert tracker.pending() > 1000 and tracker.dropped == 0  # held, none lost
        assert len(offered) <= 3  # asked again after 0.5 s, 1 s…, not at each of the ~150 full buffers
        assert caplog.text.count("the store refused") == 1
        assert "spans wait for export (max_outbox_spans 10)" in caplog.text  # why
        started = time.monotonic()
        assert not tracker.force_flush(timeout_seconds=30)  # events held: nothing to wait for, said at once
        assert time.monotonic() - started < 5
        otlp_http.up = True  # the backend is back: the outbox drains, and the store takes the held events
        otlp_http.received.wait_for(lambda: "the store takes events again" in caplog.text, timeout=30)
        assert tracker.pending() == 0 and "1,580 stored now, none dropped" in caplog.text
    ids = {trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex() for run in runs}
    assert {s.trace_id for s in otlp_http.received.unique_spans().values()} == ids
    assert len(otlp_http.received.unique_spans()) == 2 * len(runs) and tracker.dropped == 0


def test_past_the_most_held_the_oldest_events_are_dropped_counted_and_said(monkeypatch, otlp_http, caplog):
    monkeypatch.setattr(in_process, "_MAX_HELD", 100)
    runs = _ended_runs("many", 105)
    with _backlog_full(monkeypatch, otlp_http, caplog, runs) as tracker:
        for run in runs[5:]:  # 400 events, while the store holds at most 100
            for event in run.events:
                tracker.emit(event)
        assert 100 <= tracker.pending() <= 110 and tracker.dropped == 400 - tracker.pending()
        otlp_http.up = True
        otlp_http.received.wait_for(lambda: "the store takes events again" in caplog.text, timeout=30)
        assert f"{tracker.dropped} dropped in all" in caplog.text
    # The newest were kept: the last runs' traces are whole.
    last = trace_id_for("durable-effect", "production", "shop", runs[-1].workflow_id).hex()
    assert {s.name for s in otlp_http.received.trace(last)} == {"workflow many-104", "step a"}


def test_a_tracker_whose_disk_is_full_goes_on_without_slowing_the_workflow_and_keeps_what_it_held(tmp_path, otlp_http):
    # Its state (a temporary file of SQLite's) on a disk truly full, the backend away. Each emit offered
    # every event held again: 30,000 runs took past five minutes; and `close()` raised the store's error into
    # the application, the events it held lost.
    script = textwrap.dedent(
        """
        import sys, time
        from otel_bridge.tracker import OtelTracker, WorkflowEvents, in_process
        in_process._MAX_HELD = 2000
        tracker = OtelTracker("production", "shop", dead_letter=sys.argv[1], span_dead_letter=sys.argv[2])
        for n in range(10_000):
            run = WorkflowEvents(workflow_id=f"full-{n}", workflow_name="invoice")
            for event in (run.started(), run.step_started("a", 1), run.step_completed("a", 1, 5), run.completed(["a"])):
                tracker.emit(event)
        print("emitted", tracker.dropped, tracker.pending(), flush=True)
        tracker.close(retry_export=False)
        print("closed", flush=True)
        """
    )
    dead, spans = tmp_path / "dead.jsonl", tmp_path / "dead-spans.jsonl"
    otlp_http.up = False
    with small_filesystem(tmp_path / "disk", 4) as disk:
        env = {**os.environ, "SQLITE_TMPDIR": str(disk), "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint}
        done = subprocess.run(
            [sys.executable, "-c", script, str(dead), str(spans)], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    emitted, dropped, held = done.stdout.split("\n")[0].split()
    assert emitted == "emitted" and int(held) >= 2000 and int(dropped) > 0 and done.stdout.endswith("closed\n")
    assert "the store refused" in done.stderr and "database or disk is full" in done.stderr
    assert f"events the store refused until the tracker was closed are kept in {dead}" in done.stderr
    assert "the last settling could not write to the store" in done.stderr  # said, and the stop went on
    assert "Traceback" not in done.stderr  # a full disk is a condition, told in lines, not a bug
    kept = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(kept) == 2000 and {k["error"] for k in kept} == {  # the newest, as many as are held at most
        "not stored: the store refused them until the tracker was closed"
    }
    # Offered again once there is room: the last runs' traces are whole.
    otlp_http.up = True
    replay = [
        sys.executable,
        "-m",
        "otel_bridge",
        "replay",
        "--format",
        "dead-letter",
        "--state",
        ":memory:",
        str(dead),
    ]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BRIDGE_SETTLE_SECONDS": "0"}
    replayed = subprocess.run(replay, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    last = trace_id_for("durable-effect", "production", "shop", "full-9999").hex()
    assert {s.name for s in otlp_http.received.trace(last)} == {"workflow invoice", "step a"}
