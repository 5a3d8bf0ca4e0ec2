"""Fuzzing the decoder, the fold and span encoding: arbitrary JSON and mutated events never crash them (hypothesis,
bounded)."""

from typing import Any

from builders import JobRun, WorkflowRun
from histories import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge.correlate.jobs import fold_job
from otel_bridge.correlate.runs import SettlePolicy, fold, settle
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.lifecycle import JobRecord, WorkflowRecord
from otel_bridge.sources.durable_effect import DecodeError, decode


def _valid_events() -> list[dict]:
    run = WorkflowRun().queued().started().step_started("a").timeout_set("a", 10).retry_scheduled("a", 1)
    run.paused("retry", step="a").resumed().step_started("a", 2).step_failed("a", 2).retry_exhausted("a", 2)
    run.sleep_started(5).sleep_completed(5).timeout_exceeded("a", 10).completed().failed().cancelled()
    job = JobRun().started().executed(1).failed(1).retry_exhausted().terminated(1).debounce_started()
    return run.events + job.debounce_flushed(2).task_scheduled(10).events


VALID = _valid_events()


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    event = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from(sorted(event)))
        if draw(st.booleans()):
            del event[key]
        else:
            event[key] = draw(json_values)
        if not event:
            break
    return event


def _decode_and_fold(batch: list[Any]) -> None:
    runs: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    for raw in batch:
        try:
            record = decode(raw)
        except DecodeError as exc:
            assert isinstance(exc.reason, str) and exc.reason
            continue
        if isinstance(record, WorkflowRecord):
            runs[record.run.state_key] = fold(runs.get(record.run.state_key), record.run, record.fact, 0).state
        else:
            assert isinstance(record, JobRecord)
            jobs[record.state_key] = fold_job(jobs.get(record.state_key), record)[0]
    for state in runs.values():
        for span in settle(state, 10**19, SettlePolicy(gap_grace_ns=0)).spans:
            encoded = encode_span(span)  # what a fuzzed run's spans hold is sent as protobuf writes it
            assert encoded == Span.FromString(encoded).SerializeToString()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=5))
def test_arbitrary_json_never_crashes_the_decoder(batch):
    _decode_and_fold(batch)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_events() | st.sampled_from(VALID), min_size=1, max_size=12))
def test_mutated_events_never_crash_the_decoder_or_the_fold(batch):
    _decode_and_fold(batch)
