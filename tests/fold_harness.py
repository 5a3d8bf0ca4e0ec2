"""Drive the pure fold with event streams: decode, fold in a given order, settle."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from otel_bridge.correlate.jobs import JobState, fold_job
from otel_bridge.correlate.outputs import Observation, SpanRecord
from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy, fold, settle
from otel_bridge.lifecycle import JobRecord, WorkflowRecord
from otel_bridge.sources.durable_effect import decode

FAR_FUTURE_NS = 4_000_000_000 * 10**9
WEEK_NS = 7 * 86_400 * 10**9


@dataclass
class Folded:
    spans: list[SpanRecord] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    runs: dict[str, RunState] = field(default_factory=dict)

    def span(self, name: str, attempt: int | None = None) -> SpanRecord:
        found = self.all(name, attempt)
        assert len(found) == 1, f"expected one span {name!r} (attempt {attempt}), found {len(found)}: {self.names()}"
        return found[0]

    def all(self, name: str, attempt: int | None = None) -> list[SpanRecord]:
        return [
            s
            for s in self.spans
            if s.name == name and (attempt is None or s.attributes.get("workflow.task.attempt") == attempt)
        ]

    @property
    def root(self) -> SpanRecord:
        roots = [s for s in self.spans if s.parent_span_id is None]
        assert len(roots) == 1, self.names()
        return roots[0]

    def names(self) -> list[str]:
        return sorted(s.name for s in self.spans)

    def metric(self, instrument: str, **attributes: str) -> list[float]:
        return [
            o.value
            for o in self.observations
            if o.instrument == instrument and all(dict(o.attributes).get(k) == v for k, v in attributes.items())
        ]


def _records(raw: Any, decoder: Callable[[Any], Any]) -> list[Any]:
    decoded = decoder(raw)
    return decoded if isinstance(decoded, list) else [] if decoded is None else [decoded]


def fold_events(
    events: list[Any],
    settle_at_ns: int | None = FAR_FUTURE_NS,
    max_open_ns: int = FAR_FUTURE_NS,
    sleep_spans: bool = True,
    decoder: Callable[[Any], Any] = decode,
) -> Folded:
    """Fold events (decoded by `decoder`, durable-effect's by default) in the given order, then settle
    every run once at `settle_at_ns`."""
    out = Folded()
    jobs: dict[str, JobState] = {}
    for record in (r for raw in events for r in _records(raw, decoder)):
        if isinstance(record, JobRecord):
            state, obs = fold_job(jobs.get(record.state_key), record)
            jobs[record.state_key] = state
            out.observations += obs
            continue
        assert isinstance(record, WorkflowRecord)
        result = fold(out.runs.get(record.run.state_key), record.run, record.fact, record.fact.time_ns)
        out.runs[record.run.state_key] = result.state
        out.admissions.append(result.admission)
        out.observations += result.observations
    if settle_at_ns is not None:
        settle_all(out, settle_at_ns, max_open_ns, sleep_spans)
    return out


def settle_all(out: Folded, now_ns: int, max_open_ns: int = FAR_FUTURE_NS, sleep_spans: bool = True) -> None:
    for state in out.runs.values():
        result = settle(state, now_ns, SettlePolicy(max_open_ns=max_open_ns, gap_grace_ns=0, sleep_spans=sleep_spans))
        out.spans += result.spans
        out.observations += result.observations


def fold_more(out: Folded, events: list[dict[str, Any]]) -> None:
    for raw in events:
        record = decode(raw)
        assert isinstance(record, WorkflowRecord)
        result = fold(out.runs.get(record.run.state_key), record.run, record.fact, record.fact.time_ns)
        out.runs[record.run.state_key] = result.state
        out.admissions.append(result.admission)
        out.observations += result.observations
