"""A run that cannot be settled is tried a few times, then set aside with its reason and counted: never a loop."""

import time

import orjson
from builders import WorkflowRun

from otel_bridge import pipeline as pipeline_module
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.sqlite_store import SqliteStore


def _bridge_counter(metrics: MetricsHub, name: str) -> float:
    total = 0.0
    for data in metrics.collect():
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        total += sum(p.value for p in metric.data.data_points)
    return total


def test_a_run_that_never_settles_is_set_aside_after_the_configured_tries(tmp_path, monkeypatch):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, settle_attempts=3, gap_grace_seconds=0)
    metrics = MetricsHub()
    now = [1_000_000.0]
    pipeline = Pipeline(SqliteStore(settings.state), metrics, settings, clock=lambda: now[0])

    tries = []
    real_encode = pipeline_module.encode_span

    def encode(span, *args):
        if span.name == "workflow poisoned":
            tries.append(span.name)
            raise OverflowError("a value OTLP cannot carry")
        return real_encode(span, *args)

    monkeypatch.setattr(pipeline_module, "encode_span", encode)
    good = WorkflowRun("healthy").started().step_started("a").after(1).step_completed("a").completed()
    bad = WorkflowRun("poisoned").started().step_started("a").after(1).step_completed("a").completed()
    pipeline.ingest(good.events + bad.events)

    for _ in range(20):  # twenty minutes of the settle loop
        now[0] += 60
        pipeline.settle_due()

    assert pipeline.store.outbox_depth() == 2  # the healthy run, untouched by its neighbour
    assert len(tries) == 3
    kept = {key: blob for key, blob in pipeline.store.states() if bad.workflow_id in key}
    (key,) = kept
    assert key.startswith("unsettled\x1f")
    aside = orjson.loads(kept[key])
    assert "OverflowError" in aside["reason"] and bad.workflow_id in aside["state"]
    assert _bridge_counter(metrics, "otel_bridge.runs.set_aside") == 1


def test_a_stuck_run_that_fails_to_settle_is_still_listed_as_overdue_while_it_is_tried_again(tmp_path, monkeypatch):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, settle_attempts=5, gap_grace_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)

    def encode(span, *args):
        raise OverflowError("a value OTLP cannot carry")

    monkeypatch.setattr(pipeline_module, "encode_span", encode)
    # Due back in 2025: overdue now, with a step span to send at its first settling.
    stuck = WorkflowRun().started().step_started("a").after(1).step_completed("a").paused("sleep", resume_in_ms=1000)
    pipeline.ingest(stuck.events)
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]

    pipeline.settle_due(horizon=time.time() + 10)  # fails, and is to be tried again

    assert pipeline.store.run(lambda tx: tx.due_keys(time.time() + 10, 10)) != []
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]
