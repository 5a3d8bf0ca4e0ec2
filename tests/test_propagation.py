"""An application's own spans join a run's trace, under its root or under one attempt of a step."""

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from otel_bridge import RunIdentity, root_span_id, run_context, trace_id_for
from otel_bridge.cli import main
from otel_bridge.ids import attempt_span_id

RUN = RunIdentity("durable-effect", "prod", "shop", "wf-1")


def _started_in(context, sampler=None) -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("app").start_as_current_span("charge card", context=context):
        pass
    return list(exporter.get_finished_spans())


def test_a_span_started_in_an_attempts_context_is_its_child_in_the_runs_trace():
    (span,) = _started_in(run_context("prod", "shop", "wf-1", "pay", 2))
    assert span.context.trace_id == int.from_bytes(trace_id_for("durable-effect", "prod", "shop", "wf-1"))
    assert span.parent.span_id == int.from_bytes(attempt_span_id(RUN, "pay", 2))
    assert span.parent.is_remote


def test_without_a_step_the_parent_is_the_runs_root_and_without_an_attempt_the_first():
    (under_root,) = _started_in(run_context("prod", "shop", "wf-1"))
    assert under_root.parent.span_id == int.from_bytes(root_span_id(RUN))
    (under_first,) = _started_in(run_context("prod", "shop", "wf-1", "pay"))
    assert under_first.parent.span_id == int.from_bytes(attempt_span_id(RUN, "pay", 1))


def test_a_run_the_bridge_keeps_back_leaves_the_applications_spans_out_with_it_under_a_parent_based_sampler():
    kept_back = run_context("prod", "shop", "wf-1", "pay", sample_ratio=0.0)
    assert not trace.get_current_span(kept_back).get_span_context().trace_flags.sampled
    assert _started_in(kept_back, ParentBased(TraceIdRatioBased(1.0))) == []
    assert len(_started_in(run_context("prod", "shop", "wf-1", "pay"), ParentBased(TraceIdRatioBased(0.0)))) == 1


def test_trace_id_command_prints_an_attempts_traceparent(capsys):
    assert main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", "wf-1", "--step", "pay"]) == 0
    trace_id = trace_id_for("durable-effect", "prod", "shop", "wf-1").hex()
    assert capsys.readouterr().out.strip() == f"00-{trace_id}-{attempt_span_id(RUN, 'pay', 1).hex()}-01"


def test_every_tracker_gives_a_context_so_that_one_stands_in_for_another():
    from opentelemetry.context import get_current

    from otel_bridge.tracker import AsyncHttpBatchTracker, HttpBatchTracker, InMemoryTracker, NoopTracker

    posting = HttpBatchTracker("http://127.0.0.1:9/v1/events", "prod", "shop", flush_interval_seconds=None)
    asyncio_posting = AsyncHttpBatchTracker("http://127.0.0.1:9/v1/events", "prod", "shop")
    try:
        for tracker in (posting, asyncio_posting):
            (span,) = _started_in(tracker.context("wf-1", "pay", 2))
            assert span.parent.span_id == int.from_bytes(attempt_span_id(RUN, "pay", 2))
        assert (
            not trace.get_current_span(posting.context("wf-1", sample_ratio=0)).get_span_context().trace_flags.sampled
        )
    finally:
        posting.close()
    # Tracking off, or recorded for a test: nothing is sent, the application's spans go on as they were.
    for stand_in in (NoopTracker(), InMemoryTracker()):
        assert stand_in.context("wf-1", "pay") is get_current()


def test_trace_id_command_refuses_an_attempt_without_its_step(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", "wf-1", "--attempt", "2"])
    assert exited.value.code == 2 and "--attempt needs --step" in capsys.readouterr().err


def test_an_in_process_trackers_context_is_sampled_as_the_tracker_samples_its_runs(monkeypatch):
    from otel_bridge.tracker import AsyncOtelTracker, OtelTracker

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # nothing to export: the context is the subject
    sending, keeping_back = OtelTracker("prod", "shop"), AsyncOtelTracker("prod", "shop", trace_sample_ratio=0)
    try:
        for tracker, sampled in ((sending, True), (keeping_back, False)):
            span = trace.get_current_span(tracker.context("wf-1", "pay", 2)).get_span_context()
            assert span.span_id == int.from_bytes(attempt_span_id(RUN, "pay", 2))
            assert span.trace_flags.sampled is sampled
    finally:
        sending.close()
        keeping_back.tracker.close()
