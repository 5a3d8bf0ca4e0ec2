"""Drive the pure fold with event streams: decode, fold in a given order, settle."""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from otel_bridge.correlate.jobs import JobState
from otel_bridge.correlate.outputs import Observation, SpanRecord
from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy
from otel_bridge.correlate.step import Policy, apply, settle_run
from otel_bridge.lifecycle import JobRecord, WorkflowRecord
from otel_bridge.sources.durable_effect import decode
from otel_bridge.state import journal
from otel_bridge.state.sqlite_store import SqliteStore

FAR_FUTURE_NS = 4_000_000_000 * 10**9
WEEK_NS = 7 * 86_400 * 10**9


@dataclass
class Folded:
    spans: list[SpanRecord] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    admissions: list[Admission] = field(default_factory=list)
    runs: dict[str, RunState] = field(default_factory=dict)
    jobs: dict[str, JobState] = field(default_factory=dict)

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
    for record in (r for raw in events for r in _records(raw, decoder)):
        _apply(out, out.jobs, record)
    if settle_at_ns is not None:
        settle_all(out, settle_at_ns, max_open_ns, sleep_spans)
    return out


def _apply(out: Folded, jobs: dict[str, JobState], record: Any) -> None:
    """The product's own `apply`, received at the record's own time."""
    now = record.fact.time_ns / 1e9 if isinstance(record, WorkflowRecord) else record.time_ns / 1e9
    if isinstance(record, JobRecord):
        step = apply(jobs.get(record.state_key), None, record, now, Policy())
        jobs[record.state_key] = step.state  # type: ignore[assignment]
        out.observations += step.observations
        return
    step = apply(out.runs.get(record.run.state_key), None, record, now, Policy())
    out.runs[record.run.state_key] = step.state  # type: ignore[assignment]
    out.admissions.append(step.admission)
    out.observations += step.observations


def settle_all(out: Folded, now_ns: int, max_open_ns: int = FAR_FUTURE_NS, sleep_spans: bool = True) -> None:
    settle = SettlePolicy(max_open_ns=max_open_ns, gap_grace_ns=0, sleep_spans=sleep_spans)
    policy = Policy(settle=settle)
    for state in out.runs.values():
        step = settle_run(state, now_ns / 1e9, policy)
        out.spans += step.spans
        out.observations += step.observations


def fold_more(out: Folded, events: list[Any], decoder: Callable[[Any], Any] = decode) -> None:
    """Fold more events into `out`, received after what it holds (settle it again with `settle_all`)."""
    for record in (r for raw in events for r in _records(raw, decoder)):
        assert isinstance(record, WorkflowRecord)
        _apply(out, out.jobs, record)


def comparable(spans: Iterable[SpanRecord]) -> list[tuple]:
    """Spans as sorted tuples of everything a backend shows (ids, names, times, statuses, attributes,
    events, links): two traces compare equal only if they would look the same."""
    return sorted(
        (
            s.trace_id,
            s.span_id,
            s.parent_span_id,
            s.name,
            s.kind,
            s.start_ns,
            s.end_ns,
            s.status,
            s.status_message,
            tuple(sorted((k, str(v)) for k, v in s.attributes.items())),
            tuple(sorted((e.name, e.time_ns, tuple(sorted(e.attributes.items(), key=str))) for e in s.events)),
            tuple(s.links),
        )
        for s in spans
    )


def net_metrics(observations: Iterable[Observation]) -> Counter:
    """Each series' total: what every counter, histogram sum and up-down count comes to."""
    totals: Counter = Counter()
    for o in observations:
        totals[(o.instrument, o.attributes)] += round(o.value, 9)
    return totals


def read_back(state: RunState, store: SqliteStore) -> RunState:
    """The run as the store gives it back (header, fact rows, sent span ids), nothing kept in memory."""
    key = state.run.state_key

    def write_and_load(tx):
        journal.delete(tx, key)
        whole = journal.Changes(state, None, added={f.seq: f for f in state.facts}, sent=dict(state.emitted))
        journal.write(tx, key, whole, None)
        return journal.load(tx, key)[0]

    return store.run(write_and_load)
