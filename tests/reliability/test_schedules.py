"""Whatever happens between batches, the same spans leave, each once: a schedule of batches (several runs'
and job instances' events, in any order, some sent again), settlings at any time and restarts at any
point, played on the real pipeline three ways — SQLite with its runs kept in memory, SQLite with a cache
of one run and a restart wherever the schedule says, and a real Redis (nothing kept in memory, restarted
the same) — sends the same spans, byte for byte, and none twice, and counts the same job executions
(hypothesis)."""

import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from fold_harness import fold_events
from histories import executions, job_histories, job_retry_histories, phase10_runs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pipelines import decoder_for, store_for
from test_disorder import histories

from otel_bridge.config import Settings
from otel_bridge.correlate.outputs import Observation
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline

_START = 1_000_000.0
# Bridge-clock seconds a settling may come after the batch before it: within a settle window, past it,
# past the grace for gaps (15 s), and an hour on (a run's sleep).
_PAUSES = st.sampled_from([0.2, 1.5, 4.0, 20.0, 3600.0])


# Each engine's histories (several runs, and job instances for durable-effect's), and its decoder.
_HISTORIES = {
    "durable-effect": st.tuples(
        st.lists(histories(), min_size=1, max_size=3),
        st.lists(job_histories() | job_retry_histories().map(lambda told: told[0]), max_size=2),
    ),
    "event-sourced": st.tuples(st.lists(executions(), min_size=1, max_size=3)),
    "phase10": st.tuples(st.lists(phase10_runs(), min_size=1, max_size=3)),
}


@st.composite
def schedules(draw: st.DrawFn, engine: str) -> list[tuple[Any, ...]]:
    events = [event for kind in draw(_HISTORIES[engine]) for history in kind for event in history]
    repeats = draw(st.lists(st.sampled_from(events), max_size=len(events) // 3))
    delivered = draw(st.permutations(events + repeats))
    steps: list[tuple[Any, ...]] = []
    at = 0
    while at < len(delivered):
        size = draw(st.integers(min_value=1, max_value=8))
        steps.append(("batch", delivered[at : at + size]))
        at += size
        if draw(st.booleans()):
            steps.append(("settle", draw(_PAUSES)))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            steps.append(("restart",))
    return steps


_JOB_COUNTERS = ("job.executions", "job.retry.exhausted", "job.terminations")


class _Counting(MetricsHub):
    """The hub, adding up what the job counters were given (whatever restarts come between)."""

    def __init__(self, counted: Counter) -> None:
        super().__init__()
        self._counted = counted

    def record(self, observations: Iterable[Observation]) -> None:
        observations = list(observations)
        for o in observations:
            if o.instrument in _JOB_COUNTERS:
                self._counted[(o.instrument, o.attributes)] += o.value
        super().record(observations)


class _Played:
    """A schedule played on a pipeline of its own; `restarts`: whether the restarts in it are made."""

    def __init__(self, engine: str, directory: Path, redis_url: str | None, hot_runs: int, restarts: bool) -> None:
        self.now = _START
        self._engine = engine
        self._restarts = restarts
        self._prefix = f"schedule-{uuid.uuid4().hex}:"
        state = redis_url or str(directory / f"{uuid.uuid4().hex}.db")
        self.settings = Settings(state=state, dead_letter=directory / "dead.jsonl", settle_seconds=1, hot_runs=hot_runs)
        self.job_counts: Counter = Counter()
        self.pipeline = self._started()

    def _started(self) -> Pipeline:
        hub = _Counting(self.job_counts)
        pipeline = Pipeline(store_for(self.settings, self._prefix), hub, self.settings, clock=lambda: self.now)
        pipeline.restore_gauges()
        return pipeline

    def play(self, steps: list[tuple[Any, ...]]) -> list[bytes]:
        for step in steps:
            if step[0] == "batch":
                self.now += 0.01
                report = self.pipeline.ingest(step[1], decoder_for(self._engine, self.pipeline))
                assert not report.rejected, report.rejected
            elif step[0] == "settle":
                self.now += step[1]
                self.pipeline.settle_due()
            elif self._restarts:
                self.pipeline.store.close()
                self.pipeline = self._started()
        self.now += 10.0
        self.pipeline.settle_due(horizon=self.now + 10**7, told_all=True)
        sent = [row.payload for row in self.pipeline.store.outbox_peek(10**6)]
        self.open = sorted(r.run_id for r in self.pipeline.list_runs(RunQuery())[0])
        self.pipeline.store.close()
        return sent


def _ids(sent: list[bytes]) -> Counter:
    spans = [Span.FromString(payload) for payload in sent]
    return Counter((s.trace_id, s.span_id) for s in spans)


def _job_counts_of_the_fold(steps: list[tuple[Any, ...]]) -> Counter:
    """The job counters the pure fold gives the events of `steps`, each once, as they were first delivered."""
    told: dict[str, Any] = {}
    for step in steps:
        for event in step[1] if step[0] == "batch" else []:
            told.setdefault(event["eventId"], event)
    counted: Counter = Counter()
    for o in fold_events(list(told.values())).observations:
        if o.instrument in _JOB_COUNTERS:
            counted[(o.instrument, o.attributes)] += o.value
    return counted


def _played_three_ways(engine: str, steps: list[tuple[Any, ...]], redis_url: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        kept = _Played(engine, Path(directory), None, hot_runs=10_000, restarts=False)
        in_memory = kept.play(steps)
        if engine == "durable-effect":  # events sent again are counted once, as the fold counts each
            assert kept.job_counts == _job_counts_of_the_fold(steps)
        for other in (
            _Played(engine, Path(directory), None, hot_runs=1, restarts=True),
            _Played(engine, Path(directory), redis_url, hot_runs=10_000, restarts=True),
        ):
            sent = other.play(steps)
            assert sorted(sent) == sorted(in_memory)
            assert other.open == kept.open
            assert other.job_counts == kept.job_counts
    twice = [key for key, n in _ids(in_memory).items() if n > 1]
    assert not twice, f"{len(twice)} spans sent more than once"


@pytest.mark.parametrize("engine", sorted(_HISTORIES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_schedule_of_batches_settlings_and_restarts_sends_the_same_spans_each_once(redis_url, engine, data):
    _played_three_ways(engine, data.draw(schedules(engine), label="steps"), redis_url)
