"""Runs kept in memory between batches: bounded, and never ahead of the store."""

import re
import time

import pytest
from builders import WorkflowRun
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge.config import Settings
from otel_bridge.correlate.jobs import JobState
from otel_bridge.correlate.runs import RunState
from otel_bridge.correlate.step import Policy, apply
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import NoSender
from otel_bridge.pipeline import Pipeline
from otel_bridge.runtime import Bridge
from otel_bridge.sources.durable_effect import decode
from otel_bridge.state.hot import HotStates
from otel_bridge.state.sqlite_store import SqliteStore, SqliteTransaction
from otel_bridge.state.store import StoreUnavailable


def test_the_least_recently_used_run_leaves_memory_first():
    hot = HotStates(capacity=2)
    hot.put("a", JobState(), None)
    hot.put("b", JobState(), 1.0)
    assert hot.get("a") is not None  # a is now the most recent
    hot.put("c", JobState(), None)
    assert hot.get("b") is None and hot.get("a") is not None and len(hot) == 2


def test_a_failed_batch_leaves_no_trace_in_memory(tmp_path, monkeypatch):
    settings = Settings(state=str(tmp_path / "s.db"), settle_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    run = WorkflowRun().started()
    pipeline.ingest(run.events)
    (key,) = [k for k, _ in pipeline.store.states()]
    assert pipeline.hot is not None and pipeline.hot.get(key) is not None

    def refuse(*_args):
        raise StoreUnavailable("disk full")

    with monkeypatch.context() as m:
        m.setattr(SqliteTransaction, "save", refuse)  # the last write of a batch, after the fold
        with pytest.raises(StoreUnavailable):
            pipeline.ingest(run.after(5).step_started("a").events)
    assert pipeline.hot.get(key) is None  # read again from the store next time

    report = pipeline.ingest(run.events)  # the producer retries the whole batch
    assert (report.accepted, report.duplicates) == (1, 1)
    state, _due = pipeline.hot.get(key)
    assert [f.name for f in state.facts] == ["workflow.started", "step.started"]


def test_runs_in_memory_are_bounded_by_the_facts_they_hold_too(tmp_path):
    # 20,000 open runs of forty facts each held ~650 MiB with the runs counted alone.
    settings = Settings(state=str(tmp_path / "s.db"), settle_seconds=0, hot_runs=100, hot_facts=50)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    runs = [WorkflowRun(f"w{n}").started() for n in range(5)]
    for run in runs:
        for step in range(9):
            run.after(1).step_started(f"s{step}").after(1).step_completed(f"s{step}")
        pipeline.ingest(run.events)  # 19 facts each
    assert pipeline.hot is not None
    assert len(pipeline.hot) == 2 and pipeline.hot.facts == 40  # the two latest, 19 facts and a header each

    # A run read back from the store is the one that left memory, whole.
    pipeline.ingest(runs[0].after(1).completed().events[-1:])
    pipeline.settle_due(horizon=time.time() + 3600)
    sent = [Span.FromString(row.payload).name for row in pipeline.store.outbox_peek(100)]
    assert sorted(sent) == sorted([f"step s{n}" for n in range(9)] * 5 + ["workflow w0"])


def _run_of(facts: int) -> RunState:
    run = WorkflowRun().started()
    for n in range(facts - 1):
        run.after(1).step_started(f"s{n}")
    state = None
    for raw in run.events:
        state = apply(state, None, decode(raw), 1.0, Policy()).state
    assert isinstance(state, RunState)
    return state


def test_the_run_being_worked_on_stays_in_memory_however_large():
    hot = HotStates(capacity=10, max_facts=5)
    hot.put("small", JobState(), None)
    hot.put("big", _run_of(9), None)
    assert hot.get("small") is None and hot.get("big") is not None and hot.facts == 10
    hot.put("big", None, None)
    assert len(hot) == 0 and hot.facts == 0


def test_the_runs_and_facts_in_memory_are_gauges_on_metrics(tmp_path):
    settings = Settings(
        state=str(tmp_path / "s.db"), dead_letter=tmp_path / "dead.jsonl", span_dead_letter=tmp_path / "spans.jsonl"
    )
    bridge = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())
    bridge.pipeline.ingest(WorkflowRun().started().step_started("a").events)
    body, _ = bridge.exposition("text/plain")
    found = dict(re.findall(r"^(otel_bridge_state_hot_\w+)\{[^}]*\} (\S+)$", body.decode(), re.M))
    assert found == {"otel_bridge_state_hot_runs": "1.0", "otel_bridge_state_hot_facts": "3.0"}
