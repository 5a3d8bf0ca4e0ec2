"""The bridge's own event counts are taken where a receiver hands its batch over, labelled with the receiver."""

import re

import pytest
from builders import WorkflowRun
from prometheus_client import CollectorRegistry, generate_latest

from otel_bridge.config import Settings
from otel_bridge.consumer import Backpressure
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.prometheus import OtelCollector
from otel_bridge.observed import ObservedConsumer
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import StoreUnavailable


def _counts(hub: MetricsHub) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtelCollector(hub.collect))
    text = generate_latest(registry).decode()
    found = re.findall(r'^otel_bridge_events_(\w+)_total\{receiver="([\w-]+)",[^}]*\} ([0-9.]+)$', text, re.M)
    return {(what, receiver): float(value) for what, receiver, value in found}


@pytest.fixture
def pipeline(tmp_path) -> Pipeline:
    return Pipeline(SqliteStore(str(tmp_path / "state.db")), MetricsHub(), Settings(state=str(tmp_path / "state.db")))


def test_each_receivers_events_are_counted_apart_from_the_start(pipeline):
    http = ObservedConsumer("http", pipeline, pipeline.metrics)
    ObservedConsumer("tracker", pipeline, pipeline.metrics)
    run = WorkflowRun().started().step_started("a")
    bad = {**run.events[1], "type": "workflow.exploded"}
    report = http.ingest([run.events[0], run.events[0], bad])
    assert (report.accepted, report.duplicates, len(report.rejected)) == (1, 1, 1)

    counts = _counts(pipeline.metrics)
    assert {what: n for (what, receiver), n in counts.items() if receiver == "http"} == {
        "received": 3,
        "accepted": 1,
        "duplicate": 1,
        "late": 0,
        "rejected": 1,
    }
    # A receiver that handed nothing over yet says 0 for each count: an alert sees "none", not "unknown".
    assert {what: n for (what, receiver), n in counts.items() if receiver == "tracker"} == dict.fromkeys(
        ("received", "accepted", "duplicate", "late", "rejected"), 0
    )


def _refused(hub: MetricsHub) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OtelCollector(hub.collect))
    text = generate_latest(registry).decode()
    found = re.findall(
        r'^otel_bridge_events_refused_total\{reason="(\w+)",receiver="([\w-]+)",[^}]*\} ([0-9.]+)$', text, re.M
    )
    return {(receiver, reason): float(value) for reason, receiver, value in found}


def test_a_batch_refused_for_now_is_not_received_and_is_counted_as_refused_with_why(pipeline, monkeypatch):
    websocket = ObservedConsumer("websocket", pipeline, pipeline.metrics)
    http = ObservedConsumer("http", pipeline, pipeline.metrics)
    # Nothing refused yet is a 0 for each reason: an alert on the counter sees the first refusal.
    assert set(_refused(pipeline.metrics).values()) == {0}
    monkeypatch.setattr(pipeline.store, "outbox_depth", lambda: pipeline.settings.max_outbox_spans)
    with pytest.raises(Backpressure):
        websocket.ingest(WorkflowRun().started().step_started("a").events)
    monkeypatch.undo()
    monkeypatch.setattr(pipeline.store, "refuses_batches", lambda: "the disk of the state file is full")
    with pytest.raises(StoreUnavailable):
        http.ingest(WorkflowRun().started().events)

    # Its sender offers it again: received (and counted so) only once it is stored.
    assert _counts(pipeline.metrics)[("received", "websocket")] == 0
    assert _refused(pipeline.metrics) == {
        ("websocket", "outbox_full"): 2,
        ("websocket", "store_unavailable"): 0,
        ("http", "outbox_full"): 0,
        ("http", "store_unavailable"): 1,
        ("http", "connections_at_limit"): 0,  # the HTTP server's alone: it turns requests away unread
    }


def test_a_batch_the_http_server_turned_away_unread_is_counted_as_one_refused(pipeline):
    http = ObservedConsumer("http", pipeline, pipeline.metrics)
    http.turned_away("connections_at_limit")
    http.turned_away("connections_at_limit")
    assert _refused(pipeline.metrics)[("http", "connections_at_limit")] == 2
    assert _counts(pipeline.metrics)[("received", "http")] == 0


def test_counting_that_fails_does_not_turn_a_stored_batch_into_an_error(pipeline, monkeypatch):
    replay = ObservedConsumer("replay", pipeline, pipeline.metrics)

    def broken(_observations):
        raise RuntimeError("metrics backend bug")

    monkeypatch.setattr(pipeline.metrics, "record", broken)
    assert replay.ingest(WorkflowRun().started().events).accepted == 1
