"""Fuzzing the event-sourced runtime's and the Phase-10 engine's decoders, and what the fold, settling and span
encoding make of what they take: a stream entry, a table row, a WebSocket message or a timeline, mutated or
arbitrary, is decoded or rejected with a field and a reason, never an exception of another kind (hypothesis,
bounded; the durable-effect decoder's own are in test_fuzz.py). And all three engines' through the real
pipeline, on SQLite and on a real Redis: stored, settled, sent and read back after a restart without a
fault of the bridge's own (no event "could not be" decoded or stored, no run set aside)."""

import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from histories import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pipelines import decoder_for, store_for
from test_fuzz import VALID, mutated_events

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.correlate.runs import RunState, SettlePolicy, fold, settle
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.lifecycle import WorkflowRecord
from otel_bridge.pipeline import Pipeline
from otel_bridge.producer.event_sourced import Execution, as_row, trigger
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.sources.event_sourced import EventSourcedDecoder
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.sources.wire import DecodeError


def _entries() -> list[dict[str, Any]]:
    run = Execution("onboarding").started({"who": "ada"}).after(5).moved("review", user="u1", note="n")
    run.submitted("comment", user="u2", text="ok").task_created("t1").after(5).task_completed("t1", to="approved")
    run.after(1).ended("completed", result={"ok": True})
    cancelled = Execution("refund").started().moved("checking").ended("cancelled", reason="asked")
    entries: list[dict[str, Any]] = [*run.events, *cancelled.events, trigger("email.received", sender="x@y")]
    return entries + [as_row(entry) for entry in entries]


def _messages() -> list[dict[str, Any]]:
    run = Phase10Run("report", workflow_id="wf-r").started(3, region="eu").step_started("s1", "fetch").after(10)
    run.step_completed("s1", rows=3).step_started("s2", "send").after(5).step_failed("s2", "smtp down")
    run.step_skipped("s3").failed("smtp down", "SMTPError")
    cancelled = Phase10Run("report", workflow_id="wf-r").started(1).step_started("s1", "fetch").cancelled()
    done = Phase10Run("sync", workflow_id="wf-s").started(1).step_started("s1", "pull").after(3)
    done.step_completed("s1").completed()
    timelines = [run.timeline(retries={"s1": 2}), cancelled.timeline(), done.timeline(retries={"s1": 1})]
    enveloped = [{"event": m["event_type"], "data": m} for m in done.events[:2]]
    return [*run.events, *cancelled.events, *done.events, *timelines, *enveloped]


ENTRIES = _entries()
MESSAGES = _messages()


@st.composite
def _mutated(draw: st.DrawFn, valid: list[dict[str, Any]], flat: bool) -> Any:
    """A valid event with a few fields dropped or changed: to any JSON, or (`flat`: a stream entry's fields
    are text) to any text, JSON text included (`payload_json`); one level down too (a payload, a step)."""
    event = dict(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if not event:
            break
        key = draw(st.sampled_from(sorted(event)))
        nested = event[key]
        if isinstance(nested, dict) and nested and draw(st.booleans()):
            inner = dict(nested)
            inner[draw(st.sampled_from(sorted(inner)))] = draw(json_values)
            event[key] = inner
        elif isinstance(nested, list) and nested and all(isinstance(x, dict) for x in nested) and draw(st.booleans()):
            items = [dict(x) for x in nested]
            chosen = items[draw(st.integers(min_value=0, max_value=len(items) - 1))]
            if chosen:
                changed = draw(st.sampled_from(sorted(chosen)))
                if draw(st.booleans()):
                    del chosen[changed]
                else:
                    chosen[changed] = draw(json_values)
            event[key] = items
        elif draw(st.booleans()):
            del event[key]
        elif flat and isinstance(nested, str):
            event[key] = draw(st.text(max_size=30) | json_values.map(json.dumps))
        else:
            event[key] = draw(json_values)
    return event


def _decode_and_fold(decoder: Any, batch: list[Any]) -> None:
    runs: dict[str, RunState] = {}
    for raw in batch:
        try:
            decoded = decoder(raw)
        except DecodeError as exc:
            assert isinstance(exc.reason, str) and exc.reason, exc
            continue
        records = [] if decoded is None else [decoded] if isinstance(decoded, WorkflowRecord) else decoded
        for record in records:
            assert isinstance(record, WorkflowRecord)
            key = record.run.state_key
            runs[key] = fold(runs.get(key), record.run, record.fact, 0).state
    for state in runs.values():
        for span in settle(state, 10**19, SettlePolicy(gap_grace_ns=0)).spans:
            encoded = encode_span(span)
            assert encoded == Span.FromString(encoded).SerializeToString()


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _as_redis_hands_it(entry: Any) -> Any:
    """A stream entry's fields as redis-py hands them: bytes, names and values."""
    if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
        return entry
    return {k.encode(errors="surrogatepass"): v.encode(errors="surrogatepass") for k, v in entry.items()}


# Entries as Redis hands them, spoilt or not, and fields of any bytes at all.
_ENTRIES_IN_BYTES = _mutated(ENTRIES, flat=True).map(_as_redis_hands_it) | st.dictionaries(
    st.binary(min_size=1, max_size=12), st.binary(max_size=24), min_size=1, max_size=10
)


@_FUZZ
@given(
    st.lists(
        _mutated(ENTRIES, flat=True) | st.sampled_from(ENTRIES) | _ENTRIES_IN_BYTES | json_values,
        min_size=1,
        max_size=10,
    )
)
def test_mutated_event_sourced_entries_and_rows_never_crash_the_decoder_or_the_fold(batch):
    _decode_and_fold(EventSourcedDecoder(), batch)


@_FUZZ
@given(st.lists(_mutated(MESSAGES, flat=False) | st.sampled_from(MESSAGES) | json_values, min_size=1, max_size=10))
def test_mutated_phase10_messages_and_timelines_never_crash_the_decoder_or_the_fold(batch):
    _decode_and_fold(Phase10Decoder(Phase10Options(timeline_at_end=True)), batch)


def _through_the_pipeline(engine: str, batches: list[list[Any]], redis_url: str | None = None) -> None:
    """Each batch stored by a real pipeline, every run then settled and sent, and the state read back by a
    restarted one: whatever was rejected was rejected for what it is, not for a fault of the bridge. On
    SQLite, or on the Redis at `redis_url` (each time under a prefix of its own)."""
    prefix = f"fuzz-{uuid.uuid4().hex}:"
    with tempfile.TemporaryDirectory() as directory:
        state = redis_url or str(Path(directory) / "s.db")
        settings = Settings(state=state, dead_letter=Path(directory) / "dead.jsonl")

        pipeline = Pipeline(store_for(settings, prefix), MetricsHub(), settings, clock=lambda: 1_000_000.0)

        def settle_failed(_tx: Any, key: str, _now: float, exc: Exception) -> None:
            raise AssertionError(f"settling {key!r} failed: {exc!r}") from exc

        pipeline._settle_failed = settle_failed  # type: ignore[method-assign]
        decoder = decoder_for(engine, pipeline, timeline_at_end=True)
        for batch in batches:
            report = pipeline.ingest(batch, decoder)
            faults = [r for r in report.rejected if r.reason.startswith("could not be")]
            assert not faults, faults
        pipeline.settle_due(horizon=10**10, told_all=True)
        for row in pipeline.store.outbox_peek(10**6):
            Span.FromString(row.payload)
        still_open = pipeline.list_runs(RunQuery())[0]
        pipeline.store.close()
        restarted = Pipeline(store_for(settings, prefix), MetricsHub(), settings, clock=lambda: 1_000_000.0)
        restarted.restore_gauges()
        assert restarted.list_runs(RunQuery())[0] == still_open  # runs never told ended: the same, read back
        restarted.store.close()


_THROUGH = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _batches(events: Any) -> Any:
    return st.lists(st.lists(events, min_size=1, max_size=8), min_size=1, max_size=3)


_EVENTS = {
    "durable-effect": mutated_events() | st.sampled_from(VALID) | json_values,
    "event-sourced": _mutated(ENTRIES, flat=True) | st.sampled_from(ENTRIES) | _ENTRIES_IN_BYTES | json_values,
    "phase10": _mutated(MESSAGES, flat=False) | st.sampled_from(MESSAGES) | json_values,
}


@pytest.mark.parametrize("engine", sorted(_EVENTS))
@_THROUGH
@given(data=st.data())
def test_an_engines_events_spoilt_or_not_go_through_the_pipeline_without_a_fault_of_its_own(engine, data):
    _through_the_pipeline(engine, data.draw(_batches(_EVENTS[engine]), label="batches"))


@pytest.mark.parametrize("engine", sorted(_EVENTS))
@_THROUGH
@given(data=st.data())
def test_an_engines_events_spoilt_or_not_go_through_the_pipeline_on_redis_without_a_fault_of_its_own(
    redis_url, engine, data
):
    _through_the_pipeline(engine, data.draw(_batches(_EVENTS[engine]), label="batches"), redis_url)
