"""Runs kept in memory between batches: bounded, and never ahead of the store."""

import pytest
from builders import WorkflowRun

from otel_bridge.config import Settings
from otel_bridge.correlate.jobs import JobState
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
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
