"""The ingest pipeline: a transaction script around `correlate.step`.

Receivers hand raw events here; nothing here knows about HTTP or files, and
nothing here decides what an event means (`apply` and `settle_run` do). One batch
is one transaction (shared with batches arriving at the same time): drop event
ids already seen, load each touched run (from memory when it is hot), apply the
records, write what the steps say changed, commit; only then are metric
observations recorded and the batch answered. Settling is the same script around
`settle_run`, with the spans going into the outbox in the same transaction.
"""

import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial, wraps
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.config import Settings
from otel_bridge.consumer import AmbiguousId, Backpressure, EventConsumer, IngestReport, Rejection, Unavailable
from otel_bridge.correlate.jobs import JobState, active_instance, last_runs
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.correlate.overview import (
    Closed,
    JobOverview,
    JobQuery,
    RunOverview,
    RunQuery,
    job_overview,
    not_open_in_words,
    overview,
)
from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy, active_run, counted_under
from otel_bridge.correlate.step import Policy, Step, apply, job_kept_until, overdue_at, settle_run
from otel_bridge.correlate.step import close as close_by_hand
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.ids import sample_bound
from otel_bridge.keys import SET_ASIDE
from otel_bridge.lifecycle import (
    CONTINUOUS_JOB_TYPE,
    JobRecord,
    LifecycleRecord,
    RunRef,
    WorkflowRecord,
    event_id_of,
    state_key_of,
)
from otel_bridge.repeated_failure import Cadence
from otel_bridge.sources.durable_effect import decode, posted_by
from otel_bridge.sources.wire import DecodeError, DecodeOptions
from otel_bridge.state import journal
from otel_bridge.state.group_commit import GroupCommit, GroupStore
from otel_bridge.state.hot import HotStates
from otel_bridge.state.journal import State
from otel_bridge.state.store import (
    DAMAGE_REJECTED,
    DAMAGED_HELP,
    Store,
    StoreUnavailable,
    Transaction,
    damage_met,
    damaged_said,
)

log = logging.getLogger(__name__)

_SETTLE_CHUNK = 256
# A grace no wait outlasts: "not overdue".
_NEVER = 1 << 62
# Observations of open runs recorded together when the gauges are restored at start-up.
_RESTORED_AT_ONCE = 5000
# The bookmark the settings the overdue index was written by are kept under (`index_by_these_settings`).
_INDEXED_BY = "overdue-index-settings"
# Settling commits after this much work (seconds; at least one run per commit) when another transaction waits to
# begin (`Store.awaited`): ingest waits for the store while a settle transaction holds it, and producers wait on ingest.
# A slice on the HTTP server's event loop ends at this time whatever the store says: requests wait on it unseen.
_SETTLE_SLICE = 0.001
# Runs read ahead at a time while settling (a slice may end before it reaches them all).
_READ_AHEAD = 32
# A slice run where requests wait on it (`shared`: on the HTTP server's event loop) leaves a run with more
# facts new since it was last settled than this to a slice of the settling thread: settling costs ~10-20 µs
# a new fact (a run of 10,000 attempts settled the first time: 0.4 s), and the loop answers nobody meanwhile.
_SHARED_NEW_FACTS = 256
T = TypeVar("T")
P = ParamSpec("P")


def _damage_told(method: "Callable[Concatenate[Pipeline, P], T]") -> "Callable[Concatenate[Pipeline, P], T]":
    """A read a person asked for (a listing, a close) that meets a damaged store: said as the store
    unavailable for it, naming the file and how to mend it (503, one line), not as a server's error."""

    @wraps(method)
    def reading(pipeline: "Pipeline", /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(pipeline, *args, **kwargs)
        except Exception as exc:
            if not pipeline.store.damaged(exc):
                raise
            # Told by readiness too, and noted for the next start to salvage (`Bridge.note_damage`).
            pipeline.damage = pipeline.damage or damage_met(exc)
            raise StoreUnavailable(damaged_said(pipeline.settings.state, exc)) from exc

    return reading


class Slices(Protocol):
    """Where settling's slices run. `work(shared)` is one slice (one transaction): `shared` when it runs
    where others wait on it, e.g. an event loop reading requests. `movable` false: run it here."""

    def __call__(self, work: Callable[[bool], T], movable: bool = True) -> T: ...


def here(work: Callable[[bool], T], movable: bool = True) -> T:
    """Every slice in the thread that settles."""
    return work(False)


class _Touched(set[str]):
    """The keys one transaction touched (they leave memory if it fails), and those it found this
    version cannot read and kept aside (counted once it commits; a set, for a transaction run again)."""

    def __init__(self) -> None:
        super().__init__()
        self.unreadable: set[str] = set()


class _TooBig(Exception):
    """A run with more to settle than a shared slice takes."""


def _new_facts(state: State) -> int:
    """The facts a run took in since it was last settled (a job has none to settle)."""
    return state.seq - state.settled_seq if isinstance(state, RunState) else 0


class _Slice(NamedTuple):
    settled: list[str]  # the due runs this slice took (settled, or found no longer due)
    steps: list[Step]
    handed_back: bool  # it stopped at a run too big to settle where others wait: the next slice is the thread's


@dataclass(slots=True)
class _Ingested:
    report: IngestReport = field(default_factory=IngestReport)
    observations: list[Observation] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    # The state key of each event accepted: whose it was, counted once a batch (keys.producer_of).
    accepted_keys: list[str] = field(default_factory=list)
    # Those of the events accepted that were timestamped further ahead of this host's clock than
    # `AHEAD_NS`, and the latest time of them (ns).
    ahead_keys: list[str] = field(default_factory=list)
    latest_ahead_ns: int = 0
    heard: list[tuple[str, str, str]] = field(default_factory=list)  # the producers of the events accepted


def _by_producer(state_keys: list[str]) -> dict[tuple[str, str, str], int]:
    """How many of these events' state keys are each producer's ((engine, env, service): count)."""
    counts: dict[tuple[str, str, str], int] = {}
    for key, count in Counter(state_keys).items():  # counted in C; split once a run of the batch
        producer = keys.producer_of(key)
        counts[producer] = counts.get(producer, 0) + count
    return counts


def _producer_events(
    by_producer: dict[tuple[str, str, str], int], name: str = c.M_PRODUCER_EVENTS, heard_at: float | None = None
) -> list[Observation]:
    """A batch's accepted events counted by producer and engine (`_by_producer`): an observation for each, not
    for each event; and with `heard_at`, when each producer was last heard from."""
    observations = []
    for producer, count in by_producer.items():
        engine, env, service = producer
        observations.append(Observation(name, count, ((c.WORKFLOW_PLATFORM_NAME, engine),), Resource(service, env)))
        if heard_at is not None:
            observations.append(_last_heard(producer, heard_at))
    return observations


def _last_heard(producer: tuple[str, str, str], at: float) -> Observation:
    """When a producer ((engine, env, service)) was last heard from, by the engine its events came by."""
    engine, env, service = producer
    return Observation(c.M_PRODUCER_LAST_HEARD, at, ((c.WORKFLOW_PLATFORM_NAME, engine),), Resource(service, env))


def producers_expected(expected: dict[str, float], since: dict[str, float]) -> list[Observation]:
    """The producers a bridge is told to expect (`serviceKey@env`: seconds they may go without an event), each
    as heard from when it was first expected (`since`, kept across restarts: `Hearings.expecting`): one that
    never sends is then as silent as it has been expected."""
    observations = []
    for producer, seconds in expected.items():
        service, _, env = producer.rpartition("@")
        resource = Resource(service, env)
        observations.append(Observation(c.M_PRODUCER_EXPECTED_WITHIN, seconds, (), resource))
        observations.append(Observation(c.M_PRODUCER_LAST_HEARD, since[producer], (), resource))
    return observations


def producers_heard(heard: dict[tuple[str, str, str], float]) -> list[Observation]:
    """When each producer was last heard from ((engine, env, service): Unix time), as its batches tell it:
    read back at a start from what the store kept."""
    return [_last_heard(producer, at) for producer, at in heard.items()]


def _counted_open(state: State | None) -> Observation | None:
    """The +1 a stored run or continuous job instance adds to the active gauges, from its header alone."""
    if isinstance(state, JobState):
        return active_instance(state) if state.counted else None
    if isinstance(state, RunState) and (under := counted_under(state)) is not None:
        return active_run(state, under)
    return None


# The gauges of what is open now: on a shared store counted from the store by one replica, not each from its
# changes (`Pipeline.open_counts`).
COUNTED_FROM_STORE = frozenset({c.M_WORKFLOW_EXECUTION_ACTIVE, c.M_JOB_INSTANCE_ACTIVE})


# How far ahead of this host's clock an event may be timestamped before one of the two clocks is taken to
# be wrong: clocks kept by NTP differ by milliseconds, a producer's POST takes seconds at most.
AHEAD_NS = 60 * 1_000_000_000


def _time_of(record: LifecycleRecord) -> int:
    return record.fact.time_ns if isinstance(record, WorkflowRecord) else record.time_ns


def _service_of(head: State) -> str:
    return head.service if isinstance(head, JobState) else head.run.service


def policy_of(settings: Settings) -> Policy:
    settle = SettlePolicy(
        max_open_ns=int(settings.max_open_seconds * 1e9),
        gap_grace_ns=int(settings.gap_grace_seconds * 1e9),
        cancel_grace_ns=int(settings.cancel_grace_seconds * 1e9),
        sleep_spans=settings.sleep_spans,
        overdue_grace_ns=int(settings.overdue_grace_seconds * 1e9),
        sample_bound=sample_bound(settings.trace_sample_ratio),
    )
    return Policy(
        settle=settle,
        settle_seconds=settings.settle_seconds,
        dedup_ttl_seconds=settings.dedup_ttl_seconds,
        keep_finished_seconds=settings.keep_finished_seconds,
        overdue_tasks=frozenset(settings.overdue_tasks),
        cleared_debounces=frozenset(settings.cleared_debounces),
        silent_executing={name: int(seconds * 1e9) for name, seconds in settings.silent_executing.items()},
        silent_continuous={name: int(seconds * 1e9) for name, seconds in settings.silent_continuous.items()},
    )


# A source's decoder: one raw event -> its lifecycle record(s), None when it is not a run's
# event (ignored), or DecodeError naming what is wrong.
Decoder = Callable[[Any], LifecycleRecord | Sequence[LifecycleRecord] | None]


@dataclass(frozen=True, slots=True)
class _AsIndexed:
    """What the store's overdue index holds as overdue now, and the settings that wrote it (`Pipeline._as_indexed`)."""

    overdue: set[str]
    policy: Policy

    def grace_ns(self, key: str) -> int:
        """No grace for one the index holds, as the bridge that wrote it put it there by its own; never for
        one it does not."""
        return 0 if key in self.overdue else _NEVER

    def run(self, key: str, run: RunState, now_ns: int) -> RunOverview | None:
        """`overview` by the index's `silent_executing`; a run it holds that they do not name (an index of an
        earlier version, which kept no settings), as silent from its latest event."""
        silence, grace = self.policy.silence_ns(run.run.name), self.grace_ns(key)
        return overview(run, now_ns, grace, 0 if silence is None and grace == 0 else silence)

    def job(self, key: str, job: JobState, now_ns: int) -> JobOverview:
        """`job_overview` by the index's settings; a continuous instance it holds that they do not name, as due
        when it last ran (as `run`)."""
        silence, grace = self.policy.job_silence_ns(job), self.grace_ns(key)
        if silence is None and grace == 0 and job.job_type == CONTINUOUS_JOB_TYPE:
            silence = 0
        return job_overview(key, job, now_ns, grace, self.policy.judges(job), silence)


class _SourceConsumer:
    def __init__(self, pipeline: "Pipeline", decoder: Decoder) -> None:
        self._pipeline = pipeline
        self._decoder = decoder

    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        return self._pipeline.ingest(events, self._decoder, producer=producer)


class Pipeline:
    def __init__(
        self,
        store: Store,
        metrics: MetricsHub,
        settings: Settings,
        on_spans: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self._on_spans = on_spans
        self._clock = clock
        # When the store last refused a batch, and why (None once a batch got through): readiness says so.
        self.refused: tuple[float, str] | None = None
        # When each producer's latest event was taken, (engine, env, service): its store's copy is a bookmark.
        self.heard: dict[tuple[str, str, str], float] = {}
        # Whether an event taken is its producer heard from: not when it is history replayed or imported (a
        # replay of last week's file told a producer gone silent as heard now, and kept it so in the store).
        self.hears_producers = True
        self._ahead_told = Cadence()  # events timestamped ahead of this host's clock: once a minute
        # A damaged store (a page of the SQLite file that no longer reads): what was met, told once a
        # minute; the runs whose settling meets it, left out of settling for this process's life.
        self.damage: str | None = None
        self._damage_said = Cadence()
        self._damaged_runs: set[str] = set()
        # Runs whose settling failed, with how many times: retried with backoff, then set aside.
        self._settle_failures: dict[str, int] = {}
        self.set_aside = 0
        # Runs this process knows held open after a cancellation that goes on (`held_open`): due only
        # when their grace ends, so a stop told that nothing more will come ends them by name.
        self._held: set[str] = set()
        # Called after each settle transaction: a settling of many runs moves on slice by slice.
        self.settled_slice: Callable[[], None] = lambda: None
        # Where those transactions run: the HTTP server's event loop takes them when it can (`OnLoop`).
        self.slices: Slices = here
        self.policy = policy_of(settings)
        # A store of our own is written by this process only: its states can stay in memory.
        hot = not store.shared and settings.hot_runs
        self.hot = HotStates(settings.hot_runs, settings.hot_facts) if hot else None
        # Concurrent batches share a commit where the store can keep them apart (savepoints).
        grouping = isinstance(store, GroupStore) and not store.shared
        self._commits = GroupCommit(store, settings.store_timeout_seconds) if grouping else None  # type: ignore[arg-type]
        self.decode_options = DecodeOptions(
            capture_input=settings.capture_input,
            max_input_bytes=settings.max_input_bytes,
            redact_keys=frozenset(settings.redact_keys),
            max_text_chars=settings.attribute_value_limit,
        )

    def durable_effect(self, raw: Any) -> LifecycleRecord:
        """The default source: the durable-effect tracker's events."""
        return decode(raw, self.decode_options)

    def consumer(self, decoder: Decoder) -> EventConsumer:
        """What a receiver of another source's events hands its batches to."""
        return _SourceConsumer(self, decoder)

    def decode(
        self, events: Sequence[Any], decoder: Decoder | None = None, producer: str | None = None
    ) -> tuple[list[LifecycleRecord], list[Rejection]]:
        """`producer`: the one serviceKey the events may name (a producer's own key posted them)."""
        decoder = decoder or self.durable_effect
        records: list[LifecycleRecord] = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(events):
            try:
                if producer is not None:
                    posted_by(raw, producer)
                decoded = decoder(raw)
                if isinstance(decoded, (WorkflowRecord, JobRecord)):
                    records.append(decoded)
                elif decoded is not None:  # several records; None: not an event of this source's runs (ignored)
                    records.extend(decoded)
            except DecodeError as exc:
                rejected.append(Rejection(index, exc.event_id, exc.field, exc.reason))
            except Exception as exc:  # one event the decoder trips on must not sink its batch
                log.exception("decoding event %d failed", index)
                rejected.append(Rejection(index, None, "", f"could not be decoded: {exc!r}"[:300]))
        return records, rejected

    def ingest(
        self, events: Sequence[Any], decoder: Decoder | None = None, *, producer: str | None = None
    ) -> IngestReport:
        """Decode and store one batch. Raises StoreUnavailable when nothing could be stored."""
        depth = self.store.outbox_depth()
        if depth >= self.settings.max_outbox_spans:
            raise Backpressure(f"{depth} spans wait for export (max_outbox_spans {self.settings.max_outbox_spans})")
        records, rejected = self.decode(events, decoder, producer)
        try:
            report = self.ingest_records(records)
        except Unavailable:
            raise
        except Exception as exc:
            if self.store.damaged(exc):
                self._met_damage(exc, "storing a batch")
            else:
                log.exception("storing a batch of %d events failed; storing them event by event", len(events))
            report = self._event_by_event(events, decoder, {r.index for r in rejected})
        report.rejected = sorted(rejected + report.rejected, key=lambda r: r.index)
        return report

    def _event_by_event(self, events: Sequence[Any], decoder: Decoder | None, rejected: set[int]) -> IngestReport:
        """A batch whose transaction failed (not for want of a store), one event at a time: the
        event the pipeline fails on is rejected, with why, and holds up none of the others.

        Each event is decoded again (decoding is pure) rather than every batch noting which
        event each record came from, for a path taken only when the bridge has a bug."""
        total = IngestReport()
        for index, raw in enumerate(events):
            own = [] if index in rejected else self.decode([raw], decoder)[0]
            if not own:
                continue
            try:
                report = self.ingest_records(own)
            except Unavailable:
                raise
            except Exception as exc:
                if self.store.damaged(exc):  # kept in the dead-letter file: replayed once the file is salvaged
                    reason = f"{DAMAGE_REJECTED} ({exc}): salvage-state"
                else:
                    log.exception("event %d of the batch could not be stored", index)
                    reason = f"could not be stored: {exc!r}"[:300]
                total.rejected.append(Rejection(index, event_id_of(own[0]), "", reason))
                continue
            total.add(report)
        return total

    def ingest_records(self, records: Sequence[LifecycleRecord]) -> IngestReport:
        unique: dict[str, LifecycleRecord] = {}
        for record in records:
            unique.setdefault(event_id_of(record), record)
        now = self._clock()
        # A skewed clock skews every event of its producer, and a batch is one producer's: its first and
        # last events tell whether each is looked at (looked at always, it cost 0.8 % of an event's
        # instructions). Decided once, outside the transaction, which may run more than once.
        ahead_from = int(now * 1e9) + AHEAD_NS
        looked = ahead_from if records and max(_time_of(records[0]), _time_of(records[-1])) > ahead_from else None
        try:
            if (full := self.store.refuses_batches()) is not None:
                raise StoreUnavailable(full)
            outcome = self._transaction(
                lambda tx, touched: self._ingest(tx, unique, now, touched, looked), grouped=True
            )
            for producer in outcome.heard:  # kept in the store now and then (`Bridge.keep_hearings`)
                self.heard[producer] = now
            try:  # the producers' metrics; the bridge's own counts are its receivers' (observed.py)
                self._record(outcome.observations)
            except Exception:  # committed already: a metrics fault must not fail the batch
                log.exception("recording metrics failed")
            # Committed, and counted as such; answered only once kept as asked (on Redis's replicas). A
            # batch refused here is sent again and taken as duplicates: its metrics are not counted twice.
            try:
                self.store.confirm()
            except StoreUnavailable as exc:
                raise StoreUnavailable(f"{exc}: the batch is kept, and taken as duplicates when sent again") from exc
        except Unavailable as exc:
            self.refused = (time.monotonic(), str(exc))
            raise
        self.refused = None
        outcome.report.duplicates += len(records) - len(unique)
        report = outcome.report
        report.late = len(outcome.late)
        if outcome.ahead_keys and self._ahead_told.failed():
            producers = _by_producer(outcome.ahead_keys)
            whose = ", ".join(f"{n} of {service} ({env}, {engine})" for (engine, env, service), n in producers.items())
            log.warning(
                "events timestamped up to %.0f s ahead of this host's clock: %s; one of the two clocks is wrong — "
                "their spans show in the future, and when runs turn overdue or are closed is judged off by as "
                "much (told once a minute while it lasts; otel_bridge_producer_events_ahead_total)",
                outcome.latest_ahead_ns / 1e9 - now, whose,
            )  # fmt: skip
        for event_id in outcome.late:
            log.warning("late event %s: its run's trace was already sent; counted, not attached", event_id)
        return report

    def _transaction(self, work: Callable[[Transaction, _Touched], T], grouped: bool = False) -> T:
        """`work` as one store transaction (shared with concurrent batches when `grouped`);
        the states it touched leave memory if it fails."""
        touched = _Touched()

        # Both guards are needed: inside, so that the next batch of the same group commit does
        # not read what a batch rolled back to its savepoint left in memory; outside, for a
        # commit that fails after every batch succeeded.
        def guarded(tx: Transaction) -> T:
            try:
                return work(tx, touched)
            except BaseException:
                self._forget(touched)
                raise

        run = self._commits.run if grouped and self._commits is not None else self.store.run
        try:
            result = run(guarded)
        except BaseException:
            self._forget(touched)
            raise
        if touched.unreadable:
            self.metrics.bridge(c.M_BRIDGE_RUNS_UNREADABLE, len(touched.unreadable))
        return result

    def _forget(self, keys_: set[str]) -> None:
        if self.hot is not None:
            self.hot.discard(keys_)

    def _state(self, tx: Transaction, key: str, touched: _Touched) -> tuple[State | None, float | None]:
        touched.add(key)
        if self.hot is not None and (found := self.hot.get(key)) is not None:
            return found
        return journal.load(tx, key, touched.unreadable.add)

    def _save(self, tx: Transaction, key: str, changes: journal.Changes) -> None:
        state = changes.state
        journal.write(tx, key, changes, overdue_at(state, self.policy) if state is not None else None)
        if self.hot is not None:
            # A closed run is touched again only by a late event or to be forgotten: not worth memory.
            closed = isinstance(state, RunState) and state.closed
            self.hot.put(key, None if closed else state, changes.due)

    def _ingest(
        self,
        tx: Transaction,
        unique: dict[str, LifecycleRecord],
        now: float,
        touched: _Touched,
        ahead_from: int | None = None,
    ) -> _Ingested:
        """The transaction of one batch; may run more than once on a shared store. `ahead_from`: the time
        (ns) past which an accepted event is noted as timestamped ahead of this host's clock; None: none is."""
        out = _Ingested()
        # A workflow event is known again by its run (its facts' event ids); a job's, which leaves
        # no facts, by the store's table of seen ids.
        jobs = [event_id for event_id, record in unique.items() if not isinstance(record, WorkflowRecord)]
        seen = set(jobs) - tx.unseen(jobs) if jobs else set()
        out.report.duplicates = len(seen)
        runs: dict[str, journal.Changes] = {}
        fresh = [(event_id, r, state_key_of(r)) for event_id, r in unique.items() if event_id not in seen]
        journal.prefetch(tx, [key for _, _, key in fresh])  # one round trip to a store across a network
        for event_id, record, key in fresh:
            changes = runs.get(key)
            if changes is None:
                changes = runs[key] = journal.Changes(*self._state(tx, key, touched))
            step = apply(changes.state, changes.due, record, now, self.policy)
            changes.state, changes.due = step.state, step.due
            changes.rewritten = changes.rewritten or bool(step.dropped)
            for fact in step.added:
                changes.added[fact.seq] = fact
            out.observations += step.observations
            if step.admission is Admission.ACCEPTED:
                out.report.accepted += 1
                out.accepted_keys.append(key)
                if ahead_from is not None and (told := _time_of(record)) > ahead_from:
                    out.ahead_keys.append(key)
                    out.latest_ahead_ns = max(out.latest_ahead_ns, told)
            elif step.admission is Admission.REPEATED:
                out.report.duplicates += 1
            else:
                out.late.append(event_id)
        for key, changes in runs.items():
            self._save(tx, key, changes)
        if jobs:
            tx.mark_seen([event_id for event_id in jobs if event_id not in seen], now)
        by_producer = _by_producer(out.accepted_keys)
        out.observations += _producer_events(by_producer, heard_at=now if self.hears_producers else None)
        out.heard = list(by_producer) if self.hears_producers else []
        if out.ahead_keys:
            out.observations += _producer_events(_by_producer(out.ahead_keys), c.M_PRODUCER_EVENTS_AHEAD)
        return out

    def settle_due(self, horizon: float | None = None, told_all: bool = False) -> int:
        """Send the spans of every run whose settle window ended by `horizon` (default: now).

        `told_all`: nothing more will come of the runs stored, so an ended run waits for no
        straggler (gaps) and no step that goes on after its cancellation."""
        # Asked first: the store's own answer, no I/O (Redis's outbox depth is a round trip).
        if self.store.refuses_batches() is not None and self.store.outbox_depth():
            # The disk is full: what room there is goes first to what frees it (acknowledging sent
            # spans, checkpointing). Settling adds spans to the outbox, and waits until it is empty;
            # what it would send stays in the state meanwhile.
            return 0
        now = self._clock()
        horizon = now if horizon is None else horizon
        policy = self.policy
        if told_all:
            policy = replace(policy, settle=replace(policy.settle, gap_grace_ns=0, cancel_grace_ns=0))
        done: set[str] = set()
        forced = set(self._held) if told_all else set()
        # The due runs read from the store and not yet settled: a chunk of them serves several
        # slices, instead of each millisecond's slice reading 256 keys to settle a handful.
        pending: list[str] = sorted(forced)
        # Where the last read of the due index ended (due, key): the next reads on from there.
        cursor: list[tuple[float, str]] = []
        sent = 0
        handed_back = False
        while True:
            try:
                keys_, steps, handed_back = self.slices(
                    lambda shared: self._transaction(
                        lambda tx, touched: self._settle_chunk(
                            tx, horizon, now, policy, done, pending, cursor, touched, forced, shared
                        )
                    ),
                    movable=not handed_back,
                )
            except Exception as exc:
                pending[:] = self._without_damaged(exc, pending)  # the slice again without the run met
                continue
            done.update(keys_)
            del pending[: len(keys_)]
            sent += sum(len(s.spans) for s in steps)
            self._record(o for s in steps for o in s.observations)
            self.metrics.bridge(c.M_BRIDGE_RUNS_INCOMPLETE, sum(s.incomplete for s in steps))
            self.metrics.bridge(c.M_BRIDGE_JOBS_PRESUMED_ENDED, sum(s.presumed_ended for s in steps))
            self.metrics.bridge(c.M_BRIDGE_RUNS_KEPT_BACK, sum(s.kept_back for s in steps))
            self.metrics.bridge(c.M_BRIDGE_RUNS_SET_ASIDE, self.set_aside)
            self.set_aside = 0
            self.settled_slice()
            if not keys_ and not handed_back:
                break
        if sent:
            self._on_spans()
        return sent

    def _settle_chunk(
        self,
        tx: Transaction,
        horizon: float,
        now: float,
        policy: Policy,
        done: set[str],
        pending: list[str],
        cursor: list[tuple[float, str]],
        touched: _Touched,
        forced: set[str],
        shared: bool = False,
    ) -> _Slice:
        """Settle due runs until the slice's time is up (`shared`: whether or not a transaction waits)."""
        # Read on from where the last chunk ended, not from the front: a run settled in this pass may be
        # due again by `horizon` (ended and kept no time, or any at a final settling's infinite one), and
        # a front of 256 such runs, each skipped as done, read as nothing left and ended the pass. An
        # in-memory tracker closed so lost its last runs (keep_finished_seconds 0).
        while not pending:
            entries = tx.due_after(horizon, _SETTLE_CHUNK, cursor[0] if cursor else None)
            if not entries:
                break
            cursor[:] = entries[-1:]
            pending.extend(k for _due, k in entries if k not in done and k not in self._damaged_runs)
        due = pending[:]
        steps: list[Step] = []
        until = time.perf_counter() + _SETTLE_SLICE
        for n, key in enumerate(due):
            if n and time.perf_counter() > until and (shared or self.store.awaited()):
                del due[n:]  # still due: the next chunk takes them
                break
            if n % _READ_AHEAD == 0:
                journal.prefetch(tx, [k for k in due[n : n + _READ_AHEAD] if not keys.is_kept_aside(k)])
            try:
                limit = float("inf") if key in forced else horizon
                step = self._settle_one(tx, key, limit, now, policy, touched, _SHARED_NEW_FACTS if shared else None)
            except _TooBig:
                del due[n:]
                return _Slice(due, steps, handed_back=True)
            except Exception as exc:
                if self.store.damaged(exc):
                    # No retry mends it, and setting it aside would read it again: left out of settling. The
                    # slice is rolled back (what it wrote beside the broken page may not commit) and made
                    # again without the run (`settle_due`).
                    self._met_damaged_run(exc, key, "settling", "left unsettled")
                    raise
                # The store's own refusal (a full disk) is not this run's fault: none is set aside for it.
                if (refused := self.store.refusal(exc)) is not None:
                    raise refused from exc
                # One run that cannot be settled must not stop every other run from settling.
                self._settle_failed(tx, key, now, exc)
                continue
            self._settle_failures.pop(key, None)
            if step is not None:
                steps.append(step)
        return _Slice(due, steps, handed_back=False)

    def _met_damaged_run(self, exc: Exception, key: str, doing: str, left: str) -> None:
        """A run whose state or facts are on a damaged page: out of settling and indexing from now on."""
        self._damaged_runs.add(key)
        self._met_damage(exc, f"{doing} {keys.readable(key)} ({left})")

    def _without_damaged(self, exc: Exception, keys_: list[str]) -> list[str]:
        """After a transaction over `keys_` failed, those to try again: all but the runs a damaged page was
        met in (`_met_damaged_run`). Raises `exc` when it was no such page, or met in none of them (it would
        be met again)."""
        left = [key for key in keys_ if key not in self._damaged_runs]
        if not self.store.damaged(exc) or len(left) == len(keys_):
            raise exc
        return left

    def _met_damage(self, exc: Exception, where: str) -> None:
        """The store is damaged where this went: said once a minute, and kept for readiness's warnings."""
        self.damage = damage_met(exc)
        if self._damage_said.failed():
            log.error(
                "%s, met %s: the events that need the damaged part are rejected and kept in the dead-letter file, "
                "the runs in it are not settled; %s",
                self.damage, where, DAMAGED_HELP,
            )  # fmt: skip

    def _settle_failed(self, tx: Transaction, key: str, now: float, exc: Exception) -> None:
        """Try a run that failed to settle again with backoff; after `settle_attempts` tries, set it aside."""
        if self.hot is not None:
            self.hot.discard([key])  # settling may have changed it before it failed: read it again
        failures = self._settle_failures.get(key, 0) + 1
        self._settle_failures[key] = failures
        loaded = tx.load(key)
        if loaded is None:
            return
        if failures < self.settings.settle_attempts:
            log.warning("settling %r failed (try %d): %r; trying again", key, failures, exc)
            tx.reschedule(key, now + min(2.0 ** (failures - 1), 60.0))
            return
        log.error(
            "settling %r failed %d times: %r; its state is set aside as %r (`otel-bridge settle-again` puts it "
            "back once the cause is mended)",
            key, failures, exc, SET_ASIDE + key,
        )  # fmt: skip
        journal.set_aside(tx, key, loaded[0], repr(exc)[:2000], now)
        self._settle_failures.pop(key, None)
        self.set_aside += 1

    def _settle_one(
        self,
        tx: Transaction,
        key: str,
        horizon: float,
        now: float,
        policy: Policy,
        touched: _Touched,
        new_facts_at_most: int | None = None,
    ) -> Step | None:
        if keys.is_kept_aside(key):
            return None
        state, due = self._state(tx, key, touched)
        # Read as due in an earlier transaction (a slice ago): it may no longer be.
        if state is None or due is None or due > horizon:
            return None
        if new_facts_at_most is not None and _new_facts(state) > new_facts_at_most:
            raise _TooBig
        step = settle_run(state, now, policy)
        self._keep_settled(tx, key, step)
        return step

    def _keep_settled(self, tx: Transaction, key: str, step: Step) -> None:
        """Write what a settling did: its spans into the outbox, the run as it now stands."""
        if isinstance(step.state, RunState) and step.state.held_open:
            self._held.add(key)
        else:
            self._held.discard(key)
        # Everything that can fail is computed before the first write, so a failure leaves this run as it was.
        rows = []
        if step.spans:
            run = step.state
            assert isinstance(run, RunState)
            rk = keys.resource_key(run.run.service, run.run.env)
            s = self.settings
            limits = (s.attribute_value_limit, s.max_name_chars, s.max_span_events, s.max_span_links)
            rows = [(rk, encode_span(span, *limits)) for span in step.spans]
        tx.outbox_add(rows)
        self._save(tx, key, journal.Changes(step.state, step.due, sent=step.sent, forgotten=step.facts_forgotten))

    @_damage_told
    def close(self, instance_id: str, reason: str, jobs: bool = False, service: str | None = None) -> list[Closed]:
        """Close by hand the open runs (`jobs`: the job instances) with this id, of `service` or of any
        producer: what the engine will never end (`otel-bridge close`). A run's spans go out now, its root
        marked incomplete with `reason`; a job instance awaits its run no more. [] when none is open."""
        now = self._clock()
        now_ns, judged = int(now * 1e9), self._as_indexed(now)
        named = self._states_named(instance_id, keys.JOBS if jobs else "")
        found = [key for key, head in self._headers(named, jobs) if service in (None, _service_of(head))]

        def closing(tx: Transaction, touched: _Touched) -> list[tuple[Closed, Step]]:
            done = []
            for key in found:
                state, _due = self._state(tx, key, touched)
                if state is None:
                    continue
                if isinstance(state, JobState):
                    was: RunOverview | JobOverview | None = judged.job(key, state, now_ns)
                else:  # one whose end came closes by itself, within its settle window
                    was = judged.run(key, state, now_ns)
                step = close_by_hand(state, reason, now, self.policy) if was is not None else None
                if step is None or was is None:
                    continue
                if isinstance(state, RunState):
                    self._keep_settled(tx, key, step)
                else:
                    self._save(tx, key, journal.Changes(step.state, step.due))
                done.append((Closed(was, len(step.spans), step.incomplete), step))
            return done

        closed = self._transaction(closing) if found else []
        steps = [step for _closed, step in closed]
        self._record(o for s in steps for o in s.observations)
        self.metrics.bridge(c.M_BRIDGE_RUNS_INCOMPLETE, sum(s.incomplete for s in steps))
        for done, _step in closed:
            log.info("closed %s by hand (%s)", done.what, reason)
        if any(s.spans for s in steps):
            self._on_spans()
        if closed:
            try:  # kept as a batch is before it is answered: on the replicas asked for (`wait_replicas`)
                self.store.confirm()
            except StoreUnavailable as exc:
                raise StoreUnavailable(
                    f"closed, but not yet held by the replicas asked for: a failover now would open it again"
                    f" (close it again then; until then it is closed): {exc}"
                ) from exc
        return [done for done, _step in closed]

    def summary_not_coming(self, key: str) -> bool:
        """The summary an ended run awaits (`RunState.awaits_summary`: a Phase-10 timeline) will not come,
        the engine having none: the run waits for it no more and is due now, to be sent as its messages
        told it, not at the end of `gap_grace_seconds`. False when that run awaits none."""
        now = self._clock()

        def forgo(tx: Transaction, touched: _Touched) -> bool:
            state, _due = self._state(tx, key, touched)
            if not isinstance(state, RunState) or not state.awaits_summary or state.summarised or state.closed:
                return False
            state.awaits_summary = False
            self._save(tx, key, journal.Changes(state, now))
            return True

        return self._transaction(forgo)

    @_damage_told
    def not_open(self, instance_id: str, service: str | None = None) -> list[str]:
        """Why each run with this id, of `service` or any producer, is not open (closed already, or ended):
        what a close that closed nothing answers, where "no open run" alone sent the one who asked
        looking for a run that is closed already — after a close answered 503, say, and sent again."""
        runs = self._run_headers(self._states_named(instance_id))
        said = (not_open_in_words(head) for _key, head in runs if service in (None, _service_of(head)))
        return [why for why in said if why is not None]

    def runs_named(self, run_id: str) -> list[RunState]:
        """The runs (of any producer) with this id: known by their keys' last field, the facts
        read only of those."""
        named = self._run_headers(self._states_named(run_id))
        return [run for key, head in named if (run := self._whole(key, head)) is not None]

    def jobs_named(self, instance_id: str, now: float | None = None) -> list[JobOverview]:
        """The job instances (of any producer) with this id, as `otel-bridge jobs` lists them (those that
        neither run nor await a run too)."""
        now = self._clock() if now is None else now
        now_ns, judged = int(now * 1e9), self._as_indexed(now)
        pairs = self._states_named(instance_id, keys.JOBS)
        return [judged.job(key, state, now_ns) for key, state in self._job_states(pairs)]

    def runs_set_aside(self, run_id: str) -> list[tuple[RunState, str]]:
        """The runs with this id set aside (after failing to settle, or unreadable by a version that
        met them), whole, and why each is out of play; none so named, those with it as the application's
        own id (as `_states_named`: a handful, all read)."""
        named: list[tuple[RunState, str]] = []
        correlated: list[tuple[RunState, str]] = []
        for key, blob in journal.kept_aside(self.store).items():
            try:
                aside = journal.read_aside(key, blob)
            except ValueError:
                if keys.id_of(key) == run_id:
                    log.warning("run state %r is not readable; skipped", key)
                continue
            if isinstance(aside.state, RunState):
                unreadable = key.startswith(keys.UNREADABLE)
                why = aside.reason if unreadable else f"failed to settle: {aside.reason}"
                if keys.id_of(key) == run_id:
                    named.append((aside.state, why))
                elif aside.state.run.correlation_id == run_id:
                    correlated.append((aside.state, why))
        return named or correlated

    def _states_named(self, instance_id: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The stored states under `prefix` (runs and job instances, or `keys.JOBS`) whose id is `instance_id`:
        known by their keys' last field, every key read, no state decoded. None so named: those the
        application gave that id of its own (durable-effect's `executionId`, a job's `id`), which its logs
        name them by, where the engine's id is a Durable Object's hex — every state decoded, then; and
        none of those either, the runs (or job instances) whose id begins with it, as `runs` and `jobs`
        show a Durable Object's hex id by its first characters (as docker shows a container's): raises
        `AmbiguousId` when it begins more than one id."""
        named = [(key, header) for key, header in self.store.states(prefix) if keys.id_of(key) == instance_id]
        return named or self._states_otherwise_named(instance_id, prefix)

    def _states_otherwise_named(self, instance_id: str, prefix: str) -> list[tuple[str, bytes]]:
        correlated: list[tuple[str, bytes]] = []
        begun: dict[str, list[tuple[str, bytes]]] = {}  # by the id `instance_id` begins
        kind = keys.JOBS if prefix == keys.JOBS else keys.RUNS
        abbreviated = len(instance_id) >= keys.ABBREVIATION_MIN
        for key, header in self.store.states(prefix):
            if keys.is_kept_aside(key):
                continue
            if abbreviated and key.startswith(kind) and (whole := keys.id_of(key)).startswith(instance_id):
                begun.setdefault(whole, []).append((key, header))
            try:
                head = journal.decode(key, header, [])
            except ValueError:
                continue  # said when it is met in play
            told = head.correlation_id if isinstance(head, JobState) else head.run.correlation_id
            if told == instance_id:
                correlated.append((key, header))
        if correlated or not begun:
            return correlated
        if len(begun) > 1:
            raise AmbiguousId(instance_id, sorted(begun), "job instances" if kind == keys.JOBS else "runs")
        (found,) = begun.values()
        return found

    def _run_headers(self, pairs: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, RunState]]:
        """The runs' headers among these (key, header) pairs, decoded; outside a transaction, for looking only."""
        for key, head in self._headers(pairs, jobs=False):
            assert isinstance(head, RunState)
            yield key, head

    def _job_states(self, pairs: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, JobState]]:
        """The job instances' states among these pairs, decoded (a job's state is its header)."""
        for key, state in self._headers(pairs, jobs=True):
            assert isinstance(state, JobState)
            yield key, state

    def _headers(self, pairs: Iterable[tuple[str, bytes]], jobs: bool) -> Iterator[tuple[str, State]]:
        """The runs' (or job instances') headers among these pairs, those in play, decoded; one that cannot
        be is skipped, and said."""
        for key, header in pairs:
            if keys.is_kept_aside(key) or keys.is_job(key) != jobs:
                continue
            try:
                head = journal.decode(key, header, [])
            except ValueError:
                log.warning("%s state %r is not readable; skipped", "job" if jobs else "run", key)
                continue
            yield key, head

    def _whole(self, key: str, head: RunState) -> RunState | None:
        """A run read from its header, with its facts."""
        try:
            return journal.with_facts(head, self.store.facts(key))
        except ValueError:
            log.warning("run state %r is not readable; skipped", key)
            return None
        except Exception as exc:
            if not self.store.damaged(exc):
                raise
            self._met_damage(exc, f"reading {keys.readable(key)} (left out of listings and counts)")
            return None

    def open_runs(self, now: float | None = None) -> list[RunOverview]:
        """The open runs as an on-call engineer asks for them: state, since, due, overdue by."""
        return self.list_runs(RunQuery(), now)[0]

    def overdue_runs(self, now: float | None = None) -> list[RunOverview]:
        """The overdue runs only, found through the store's index: the cost is theirs, not every open run's."""
        return self.overdue(now)[0]

    def overdue(self, now: float | None = None) -> tuple[list[RunOverview], list[JobState]]:
        """The overdue runs and job instances (past their time to run with no run: their lost alarms),
        from one reading of the store's index: the cost is theirs, not every open run's."""
        now = self._clock() if now is None else now
        found = self.store.overdue(now)
        runs = self.list_runs(RunQuery(overdue=True), now, indexed=found)[0]
        return runs, [state for _key, state in self._job_states(found)]

    @_damage_told
    def list_jobs(
        self, query: JobQuery | None = None, now: float | None = None, limit: int | None = None
    ) -> tuple[list[JobOverview], int]:
        """The job instances `query` asks for (all, unsaid) that run (continuous, started) or await a run,
        the most pressing first (at most `limit`), and how many there are; overdue ones through the index."""
        query = query or JobQuery()
        now = self._clock() if now is None else now
        indexed = self.store.overdue(now) if query.overdue else None
        now_ns, judged = int(now * 1e9), self._as_indexed(now, indexed)
        pairs = indexed if indexed is not None else self.store.states(keys.JOBS)
        listed = []
        for key, state in self._job_states(pairs):
            if not query.may_hold(state):
                continue
            job = judged.job(key, state, now_ns)
            if query.holds(job):
                listed.append(job)
        if query.failing:  # the latest failed first
            listed.sort(key=lambda j: -(j.last_ran_ns or 0))
        else:  # most pressing first: overdue longest, then due soonest, then those running with nothing told
            listed.sort(key=lambda j: (j.overdue_ns is None, -(j.overdue_ns or 0), j.due_ns is None, j.due_ns or 0))
        return (listed if limit is None else listed[:limit]), len(listed)

    @_damage_told
    def list_runs(
        self,
        query: RunQuery,
        now: float | None = None,
        limit: int | None = None,
        indexed: list[tuple[str, bytes]] | None = None,
    ) -> tuple[list[RunOverview], int]:
        """The open runs `query` asks for, the oldest first (at most `limit`), and how many there are.

        Overdue runs are found through the store's index and read whole. Otherwise every header is
        read, in chunks: it tells a run's state, service and since when (the time of the fact that
        set its state), which is all a listing sorts and filters on, so the facts are read only of
        the `limit` oldest kept: a million open runs are listed in flat memory, and in the time
        their headers take. Runs asked for by their silence (`silent_for`) are read whole, one at a time:
        the time their facts take, in the same flat memory. `indexed`: what the overdue index already
        answered, not asked again.
        """
        now = self._clock() if now is None else now
        headers: Iterable[tuple[str, bytes]] = self.store.states()
        if query.overdue:
            headers = indexed = self.store.overdue(now) if indexed is None else indexed
        now_ns, judged = int(now * 1e9), self._as_indexed(now, indexed)
        # A heap of the runs kept, the newest on top to leave first: (-since, -order read, run or
        # its key and header, to be read whole once kept to the end).
        oldest: list[tuple[int, int, RunOverview | tuple[str, RunState]]] = []
        count = 0
        for n, (key, head) in enumerate(self._run_headers(headers)):
            if not query.may_hold(head, now_ns):
                continue
            kept: RunOverview | tuple[str, RunState]
            if query.overdue or query.silent_for is not None or head.state_order is None:  # told by its facts
                run = self._overview(key, head, now_ns, judged)
                if run is None or not query.holds(run, now_ns):
                    continue
                since, kept = run.since_ns, run
            else:
                since, kept = head.state_order[0], (key, head)
            count += 1
            heapq.heappush(oldest, (-since, -n, kept))
            if limit is not None and len(oldest) > limit:
                heapq.heappop(oldest)  # the newest of those kept
        listed = []
        for _since, _n, kept in sorted(oldest, key=lambda entry: (-entry[0], -entry[1])):
            run = self._overview(*kept, now_ns, judged) if isinstance(kept, tuple) else kept
            if run is None:  # a header without facts: nothing to tell
                count -= 1
                continue
            listed.append(run)
        return listed, count

    def _as_indexed(self, now: float, indexed: list[tuple[str, bytes]] | None = None) -> "_AsIndexed":
        """How a listing judges what is overdue: as the store's overdue index says (`indexed`: what it
        answered already), by the settings that wrote it (`index_by_these_settings` keeps them), else these.
        A command run with other settings than the bridge's (on another machine, without its environment)
        lists what its gauge counts, overdue by as much as the bridge says."""
        overdue = self.store.overdue_keys(now) if indexed is None else {key for key, _blob in indexed}
        told = self.store.bookmark(_INDEXED_BY)
        return _AsIndexed(overdue, self.policy if told is None else self.policy.judging_as(told))

    def _overview(self, key: str, head: RunState, now_ns: int, judged: "_AsIndexed") -> RunOverview | None:
        run = self._whole(key, head)
        return judged.run(key, run, now_ns) if run is not None else None

    def standing(self, run: RunState) -> RunOverview | None:
        """An open run as `runs` lists it now (overdue as the store's index says), for `show`; None once ended."""
        now = self._clock()
        return self._as_indexed(now).run(run.run.state_key, run, int(now * 1e9))

    def open_runs_of(self, engine: str, env: str, service: str) -> list[RunRef]:
        """One producer's runs still open, from the states' headers (not their facts)."""
        heads = self._run_headers(self.store.states(keys.runs_of(engine, env, service)))
        return [head.run for _key, head in heads if not head.closed]

    def restore_gauges(self) -> None:
        """After a restart, count the runs and job instances that are still open in the active gauges, and
        tell when each job last ran (job.execution.last_timestamp).

        Only for a store of our own: on a shared store one replica counts the open runs from the store
        (`open_counts`), and each reads back when the jobs last ran in the background (`restore_last_runs`).
        Reads the states' headers only (not their facts): once per start, over every open run. The
        runs held open after a cancellation that goes on are noted on the way, for a stop told all.
        """
        if self.store.shared:
            return
        observations = []
        unreadable = []
        counted_jobs = []
        for key, state in journal.headers(self.store):
            if state is None:
                unreadable.append(key)
                continue
            if (counted := _counted_open(state)) is not None:
                observations.append(counted)
            if isinstance(state, JobState):
                counted_jobs += [key] if counted is not None else []
                observations += last_runs(state)
            elif state.held_open:
                self._held.add(key)
            if len(observations) >= _RESTORED_AT_ONCE:  # a million open runs are not held at once
                self.metrics.record(observations)
                observations.clear()
        self.metrics.record(observations)
        if unreadable:  # set aside now, by the one loader's policy, rather than at their next event
            self._transaction(lambda tx, touched: [self._state(tx, key, touched) for key in unreadable])
        if counted_jobs:
            self.store.run(lambda tx: self._due_counted(tx, counted_jobs))

    def _record(self, observations: Iterable[Observation]) -> None:
        """The producers' measurements of a change this process made; on a shared store but the open runs' and
        instances' gauges, which one replica counts from the store (`open_counts`, `Bridge.count_active`)."""
        if self.store.shared:
            observations = [o for o in observations if o.instrument not in COUNTED_FROM_STORE]
        self.metrics.record(observations)

    def open_counts(self) -> dict[tuple[Resource, str, tuple[tuple[str, str], ...]], int]:
        """The runs and continuous job instances open now, counted from every state's header as the active
        gauges count them: (producer, gauge, attributes) -> how many. On a shared store each replica had counted
        its share of the changes it saw, and a replica started again had lost its share while the runs it had
        counted were ended by others: the sum drifted, below zero after a deploy of every replica."""
        counts: dict[tuple[Resource, str, tuple[tuple[str, str], ...]], int] = {}
        for _key, state in journal.headers(self.store):
            if (counted := _counted_open(state)) is None:
                continue
            series = (counted.resource, counted.instrument, counted.attributes)
            counts[series] = counts.get(series, 0) + 1
        return counts

    def restore_last_runs(self) -> int:
        """On a shared store, when each job instance last ran (job.execution.last_timestamp), read back from the
        store: the latest time is the same told by every replica, unlike the counts `restore_gauges` leaves to
        each (a restart of every replica left the jobs' "since the last successful run" empty until each ran
        again: a day, for a daily job). Read in the background (`Bridge._overdue_loop`): the job instances'
        headers alone, found by their keys. How many instances were read."""
        instances = 0
        observations: list[Observation] = []
        for _key, state in journal.headers(self.store, keys.JOBS):
            if isinstance(state, JobState):
                instances += 1
                observations += last_runs(state)
                if len(observations) >= _RESTORED_AT_ONCE:
                    self.metrics.record(observations)
                    observations.clear()
        self.metrics.record(observations)
        return instances

    def index_by_these_settings(self) -> int:
        """Write the overdue index again by these settings where others wrote it (`Policy.overdue_judged_by`,
        kept in the store): a task named in `overdue_tasks` since, a workflow's `silent_executing`, a job's
        `silent_continuous` or the grace changed. The job instances and executing runs these settings judge,
        or the index holds, are indexed again — and, when the grace changed, every paused or queued run —,
        found from every state's header, in the background as the bridge starts (`Bridge._overdue_loop`), once
        for each change of the settings, on a store of its own as on a shared one. Without it a stuck run,
        which no later event saves again, stayed as other settings had judged it. How many were indexed again."""
        judged_by = self.policy.overdue_judged_by()
        told = self.store.bookmark(_INDEXED_BY)
        if told == judged_by and not self.store.overdue_index_new:
            return 0
        # Written by an earlier version (no settings kept), the paused runs were indexed by the grace then: as now,
        # most likely, and reading every paused run's facts at an upgrade is not worth the doubt. Stored before
        # the index existed (`overdue_index_new`), they are in it by no grace at all.
        before = self.policy if told is None else self.policy.judging_as(told)
        waits_otherwise = (
            self.store.overdue_index_new or before.settle.overdue_grace_ns != self.policy.settle.overdue_grace_ns
        )
        indexed = self.store.overdue_keys(math.inf)
        again = []
        for key, state in journal.headers(self.store):
            if state is None:  # set aside at start (`restore_gauges`), or at its next event
                continue
            if isinstance(state, JobState):
                judged_again = overdue_at(state, self.policy) is not None or key in indexed
            elif (counted := counted_under(state)) == c.STATE_EXECUTING:
                judged_again = self.policy.silence_ns(state.run.name) is not None or key in indexed
            else:  # paused or queued: due at its resumeAt (or its queueing) and the grace, whatever else is set
                judged_again = waits_otherwise and counted in (c.STATE_PAUSED, c.STATE_PENDING)
            if judged_again:
                again.append(key)
        for start in range(0, len(again), _RESTORED_AT_ONCE):
            chunk = again[start : start + _RESTORED_AT_ONCE]
            while chunk:
                try:
                    self.store.run(partial(self._index_overdue, keys_=chunk))
                    break
                except Exception as exc:
                    chunk = self._without_damaged(exc, chunk)
        self.store.set_bookmark(_INDEXED_BY, judged_by)
        return len(again)

    def _index_overdue(self, tx: Transaction, keys_: list[str]) -> None:
        """Tell the overdue index when each of these turns overdue, by this bridge's settings."""
        for key in keys_:
            try:
                state, due = journal.load(tx, key)
            except Exception as exc:
                if self.store.damaged(exc):
                    self._met_damaged_run(exc, key, "indexing", "left as it was")
                raise
            if state is not None:
                tx.save(key, journal.encode_header(state), due, overdue_at(state, self.policy))

    def _due_counted(self, tx: Transaction, keys_: list[str]) -> None:
        """Job instances counted active with no due, as a version that kept them for ever stored them: due when
        they would be presumed ended, or they never would be (the silent ones are those no event wakes)."""
        now = self._clock()
        for key in keys_:
            state, due = journal.load(tx, key)
            if isinstance(state, JobState) and due is None:
                due = job_kept_until(state, now, self.policy)
                tx.save(key, journal.encode_header(state), due, overdue_at(state, self.policy))
