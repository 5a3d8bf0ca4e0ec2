"""The ingest pipeline: decode -> one store transaction of folds -> outputs.

Receivers hand raw events here; nothing here knows about HTTP or files. One
batch is one transaction: drop event ids already seen, fold the rest into run
state, commit; only then are metric observations recorded and the batch answered.
"""

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from otel_bridge import conventions as c
from otel_bridge.config import Settings
from otel_bridge.consumer import Backpressure, EventConsumer, IngestReport, Rejection, Unavailable
from otel_bridge.correlate.jobs import JobState, active_instance, fold_job
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.correlate.overview import RunOverview, overview
from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy, SettleResult, fold, forget_facts, settle
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.span_encoding import encode_span, resource_key
from otel_bridge.lifecycle import LifecycleRecord, WorkflowRecord, event_id_of, state_key_of
from otel_bridge.sources.durable_effect import decode
from otel_bridge.sources.wire import DecodeError, DecodeOptions
from otel_bridge.state.store import Store, Transaction

log = logging.getLogger(__name__)

_SETTLE_CHUNK = 256
_QUARANTINE = "unreadable\x1f"
_SET_ASIDE = "unsettled\x1f"


@dataclass(slots=True)
class _Ingested:
    report: IngestReport = field(default_factory=IngestReport)
    observations: list[Observation] = field(default_factory=list)
    late: list[str] = field(default_factory=list)


def _blob(state: RunState | JobState) -> bytes:
    # Defaults left out: most facts use few of their fields, and a third less JSON is a third
    # less to parse on every load of the run (missing fields read back as their defaults).
    return state.model_dump_json(exclude_defaults=True).encode()


def _is_job(key: str) -> bool:
    return key.startswith("job\x1f")


# A source's decoder: one raw event -> its lifecycle record(s), None when it is not a run's
# event (ignored), or DecodeError naming what is wrong.
Decoder = Callable[[Any], LifecycleRecord | list[LifecycleRecord] | None]


class _SourceConsumer:
    def __init__(self, pipeline: "Pipeline", decoder: Decoder) -> None:
        self._pipeline = pipeline
        self._decoder = decoder

    def ingest(self, events: Sequence[Any]) -> IngestReport:
        return self._pipeline.ingest(events, self._decoder)


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
        # Runs whose settling failed, with how many times: retried with backoff, then set aside.
        self._settle_failures: dict[str, int] = {}
        self.set_aside = 0
        self.decode_options = DecodeOptions(
            capture_input=settings.capture_input,
            max_input_bytes=settings.max_input_bytes,
            redact_keys=frozenset(settings.redact_keys),
        )

    def durable_effect(self, raw: Any) -> LifecycleRecord:
        """The default source: the durable-effect tracker's events."""
        return decode(raw, self.decode_options)

    def consumer(self, decoder: Decoder) -> EventConsumer:
        """What a receiver of another source's events hands its batches to."""
        return _SourceConsumer(self, decoder)

    def decode(
        self, events: Sequence[Any], decoder: Decoder | None = None
    ) -> tuple[list[LifecycleRecord], list[Rejection]]:
        decoder = decoder or self.durable_effect
        records: list[LifecycleRecord] = []
        rejected: list[Rejection] = []
        for index, raw in enumerate(events):
            try:
                decoded = decoder(raw)
                if isinstance(decoded, list):
                    records.extend(decoded)
                elif decoded is not None:  # None: not an event of this source's runs (ignored)
                    records.append(decoded)
            except DecodeError as exc:
                rejected.append(Rejection(index, exc.event_id, exc.field, exc.reason))
            except Exception as exc:  # one event the decoder trips on must not sink its batch
                log.exception("decoding event %d failed", index)
                rejected.append(Rejection(index, None, "", f"could not be decoded: {exc!r}"[:300]))
        return records, rejected

    def ingest(self, events: Sequence[Any], decoder: Decoder | None = None) -> IngestReport:
        """Decode and store one batch. Raises StoreUnavailable when nothing could be stored."""
        started = time.perf_counter()
        depth = self.store.outbox_depth()
        if depth >= self.settings.max_outbox_spans:
            raise Backpressure(f"{depth} spans wait for export (max_outbox_spans {self.settings.max_outbox_spans})")
        records, rejected = self.decode(events, decoder)
        report = self.ingest_records(records)
        report.rejected = rejected
        # The batch is committed: from here on nothing may turn the answer into an error.
        try:
            self.metrics.bridge(c.M_BRIDGE_EVENTS_RECEIVED, len(events))
            self.metrics.bridge(c.M_BRIDGE_EVENTS_REJECTED, len(rejected))
            self.metrics.bridge(c.M_BRIDGE_INGEST_DURATION, time.perf_counter() - started)
        except Exception:
            log.exception("recording ingest metrics failed")
        return report

    def ingest_records(self, records: Sequence[LifecycleRecord]) -> IngestReport:
        unique: dict[str, LifecycleRecord] = {}
        for record in records:
            unique.setdefault(event_id_of(record), record)
        now = self._clock()
        try:
            outcome = self.store.run(lambda tx: self._ingest(tx, unique, now))
        except Unavailable as exc:
            self.refused = (time.monotonic(), str(exc))
            raise
        self.refused = None
        outcome.report.duplicates += len(records) - len(unique)
        report = outcome.report
        report.late = len(outcome.late)
        for event_id in outcome.late:
            log.warning("late event %s: its run's trace was already sent; counted, not attached", event_id)
        try:
            self.metrics.record(outcome.observations)
            self.metrics.bridge(c.M_BRIDGE_EVENTS_ACCEPTED, report.accepted)
            self.metrics.bridge(c.M_BRIDGE_EVENTS_DUPLICATE, report.duplicates)
            self.metrics.bridge(c.M_BRIDGE_EVENTS_LATE, report.late)
        except Exception:  # committed already: a metrics fault must not fail the batch
            log.exception("recording metrics failed")
        return report

    def _ingest(self, tx: Transaction, unique: dict[str, LifecycleRecord], now: float) -> _Ingested:
        """The transaction of one batch; may run more than once on a shared store."""
        out = _Ingested()
        now_ns = int(now * 1e9)
        fresh = tx.unseen(list(unique))
        out.report.duplicates = len(unique) - len(fresh)
        states: dict[str, tuple[RunState | JobState | None, float | None]] = {}
        for event_id, record in unique.items():
            if event_id not in fresh:
                continue
            key = state_key_of(record)
            if key not in states:
                states[key] = self._load(tx, key)
            state, due = states[key]
            if isinstance(record, WorkflowRecord):
                result = fold(state, record.run, record.fact, now_ns)  # type: ignore[arg-type]
                state = result.state
                out.observations += result.observations
                if result.admission is Admission.ACCEPTED:
                    due = self._run_due(due, now)
                    out.report.accepted += 1
                elif result.admission is Admission.REPEATED:
                    out.report.duplicates += 1
                else:
                    out.late.append(event_id)
            else:
                state, job_observations = fold_job(state, record)  # type: ignore[arg-type]
                out.observations += job_observations
                # Only an instance counted as active needs remembering indefinitely.
                due = None if state.counted else now + self.settings.dedup_ttl_seconds
                out.report.accepted += 1
            states[key] = (state, due)
        for key, (state, due) in states.items():
            if state is not None:
                tx.save(key, _blob(state), due)
        tx.mark_seen(fresh, now)
        return out

    @staticmethod
    def _load(tx: Transaction, key: str) -> tuple[RunState | JobState | None, float | None]:
        loaded = tx.load(key)
        if loaded is None:
            return None, None
        blob, due = loaded
        model = JobState if _is_job(key) else RunState
        try:
            return model.model_validate_json(blob), due
        except ValueError:
            # A state this version cannot read must not refuse every later event of the run:
            # keep the blob aside for a human, and start the run afresh.
            log.exception("unreadable state for %r; kept as %r and started afresh", key, _QUARANTINE + key)
            tx.save(_QUARANTINE + key, blob, None)
            return None, None

    def _run_due(self, due: float | None, now: float) -> float:
        # Settle after the first unsettled event, not the last: a busy run still
        # gets its spans out every settle window.
        candidate = now + self.settings.settle_seconds
        return due if due is not None and due <= candidate else candidate

    def settle_due(self, horizon: float | None = None, gap_grace_seconds: float | None = None) -> int:
        """Send the spans of every run whose settle window ended by `horizon` (default: now)."""
        now = self._clock()
        horizon = now if horizon is None else horizon
        grace = self.settings.gap_grace_seconds if gap_grace_seconds is None else gap_grace_seconds
        policy = SettlePolicy(
            max_open_ns=int(self.settings.max_open_seconds * 1e9),
            gap_grace_ns=int(grace * 1e9),
            sleep_spans=self.settings.sleep_spans,
            overdue_grace_ns=int(self.settings.overdue_grace_seconds * 1e9),
        )
        done: set[str] = set()
        sent = 0
        while True:
            keys, results = self.store.run(lambda tx: self._settle_chunk(tx, horizon, now, policy, done))
            done.update(keys)
            sent += sum(len(r.spans) for r in results)
            self.metrics.record(o for r in results for o in r.observations)
            self.metrics.bridge(c.M_BRIDGE_RUNS_INCOMPLETE, sum(r.incomplete for r in results))
            self.metrics.bridge(c.M_BRIDGE_RUNS_SET_ASIDE, self.set_aside)
            self.set_aside = 0
            if not keys:
                break
        if sent:
            self._on_spans()
        return sent

    def _settle_chunk(
        self, tx: Transaction, horizon: float, now: float, policy: SettlePolicy, done: set[str]
    ) -> tuple[list[str], list[SettleResult]]:
        keys = [k for k in tx.due_keys(horizon, _SETTLE_CHUNK) if k not in done]
        results = []
        for key in keys:
            try:
                result = self._settle_one(tx, key, now, policy)
            except Exception as exc:
                # One run that cannot be settled must not stop every other run from settling.
                self._settle_failed(tx, key, now, exc)
                continue
            self._settle_failures.pop(key, None)
            if result is not None:
                results.append(result)
        return keys, results

    def _settle_failed(self, tx: Transaction, key: str, now: float, exc: Exception) -> None:
        """Try a run that failed to settle again with backoff; after `settle_attempts` tries, set it aside."""
        failures = self._settle_failures.get(key, 0) + 1
        self._settle_failures[key] = failures
        loaded = tx.load(key)
        if loaded is None:
            return
        if failures < self.settings.settle_attempts:
            log.warning("settling %r failed (try %d): %r; trying again", key, failures, exc)
            tx.save(key, loaded[0], now + min(2.0 ** (failures - 1), 60.0))
            return
        log.error("settling %r failed %d times: %r; its state is set aside as %r", key, failures, exc, _SET_ASIDE + key)
        kept = {"reason": repr(exc)[:2000], "at": now, "state": loaded[0].decode(errors="replace")}
        tx.save(_SET_ASIDE + key, orjson.dumps(kept), None)
        tx.delete(key)
        self._settle_failures.pop(key, None)
        self.set_aside += 1

    def _settle_one(self, tx: Transaction, key: str, now: float, policy: SettlePolicy) -> SettleResult | None:
        if key.startswith((_QUARANTINE, _SET_ASIDE)):
            return None
        loaded = tx.load(key)
        if loaded is None:
            return None
        if _is_job(key):
            tx.delete(key)  # a job instance's state is due only once it no longer matters
            return None
        state = RunState.model_validate_json(loaded[0])
        if state.closed:
            if state.facts:
                # Kept to be shown (`otel-bridge show`) for a while; now only remembered for late events.
                forget_facts(state)
                closed = state.closed_ns / 1e9 or now
                tx.save(key, _blob(state), max(closed + self.settings.dedup_ttl_seconds, now))
            else:
                tx.delete(key)  # remembered for late events long enough
            return None
        result = settle(state, int(now * 1e9), policy)
        # Everything that can fail is computed before the first write, so a failure leaves this run as it was.
        rk = resource_key(Resource(state.run.service, state.run.env))
        rows = [
            (rk, encode_span(span, self.settings.attribute_value_limit, self.settings.max_name_chars))
            for span in result.spans
        ]
        if result.held:
            due = now + max(self.settings.settle_seconds, 0.2)
        elif state.closed:
            due = now + min(self.settings.keep_finished_seconds, self.settings.dedup_ttl_seconds)
        else:
            due = max(state.opened_ns / 1e9 + self.settings.max_open_seconds, now)
        blob = _blob(state)
        tx.outbox_add(rows)
        tx.save(key, blob, due)
        return result

    def run_states(self) -> Iterator[RunState]:
        """Every run the store holds (open, or finished and still kept), readable ones only."""
        for key, blob in self.store.states():
            if key.startswith((_QUARANTINE, _SET_ASIDE)) or _is_job(key):
                continue
            try:
                yield RunState.model_validate_json(blob)
            except ValueError:
                log.warning("run state %r is not readable; skipped", key)

    def open_runs(self, now: float | None = None) -> list[RunOverview]:
        """The open runs as an on-call engineer asks for them: state, since, due, overdue by."""
        now_ns = int((self._clock() if now is None else now) * 1e9)
        grace_ns = int(self.settings.overdue_grace_seconds * 1e9)
        runs = (overview(state, now_ns, grace_ns) for state in self.run_states())
        return sorted((r for r in runs if r is not None), key=lambda r: r.since_ns)

    def restore_gauges(self) -> None:
        """After a restart, count the runs and job instances that are still open in the active gauges.

        Only for a store of our own: with a shared store every replica's gauge is its share of
        the changes it saw, and recounting everything on each replica would count runs twice.
        """
        if self.store.shared:
            return
        observations = []
        for key, blob in self.store.states():
            if key.startswith((_QUARANTINE, _SET_ASIDE)):
                continue
            if _is_job(key):
                job = JobState.model_validate_json(blob)
                if job.counted:
                    observations.append(active_instance(job))
                continue
            state = RunState.model_validate_json(blob)
            if state.counted_state is not None:
                observations.append(
                    Observation(
                        c.M_WORKFLOW_EXECUTION_ACTIVE,
                        1,
                        (
                            (c.WORKFLOW_PLATFORM_NAME, state.run.engine),
                            (c.WORKFLOW_DEFINITION_NAME, state.metric_name),
                            (c.WORKFLOW_EXECUTION_STATE, state.counted_state),
                        ),
                        Resource(state.run.service, state.run.env),
                    )
                )
        self.metrics.record(observations)
