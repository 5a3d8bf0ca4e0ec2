"""The running bridge: store, pipeline and the background loops that settle and export.

Receivers (HTTP, replay) are given a started Bridge; `stop()` drains it: runs
waiting in their settle window are settled, the outbox is exported and metrics
are pushed one last time.
"""

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider

from otel_bridge import __version__, certificates, keys, liveness
from otel_bridge import conventions as c
from otel_bridge.config import REDIS_SCHEMES, Settings
from otel_bridge.consumer import Backpressure, Unavailable
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export import otlp
from otel_bridge.export.aggregation import Attributes
from otel_bridge.export.health import ExportHealth
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp_config import FROM_ENVIRONMENT, OtlpConfig
from otel_bridge.export.outbox_drain import OutboxDrain
from otel_bridge.export.prometheus import exposition
from otel_bridge.liveness import Passes
from otel_bridge.observed import ObservedConsumer
from otel_bridge.on_loop import OnLoop
from otel_bridge.pipeline import Decoder, Pipeline, here, producers_expected, producers_heard
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.repeated_failure import RepeatedFailure
from otel_bridge.sources import phase10
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder, RuntimeV2Options, levels_from
from otel_bridge.state import hearings
from otel_bridge.state.hearings import Hearings
from otel_bridge.state.salvage import (
    SalvageError,
    cut_copy_swept,
    damage_noted,
    note_met,
    salvage,
    swapping,
    take_again,
)
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import (
    DAMAGED_HELP,
    Checkpointed,
    OnDisk,
    PagesChecked,
    Replicated,
    Store,
    StoreDamaged,
    StoreOpenError,
    StoreUnavailable,
    WithRisks,
    damage_met,
    own_name,
)
from otel_bridge.urls import without_secrets
from otel_bridge.visible import Verbatim

if TYPE_CHECKING:
    from otel_bridge.receivers.postgres_poll import TablePoller
    from otel_bridge.receivers.redis_stream import StreamReceiver
    from otel_bridge.receivers.replay import ReplaySummary
    from otel_bridge.receivers.served_tls import ServedCertificate
    from otel_bridge.receivers.websocket import WebSocketReceiver

log = logging.getLogger(__name__)

_PURGE_EVERY = 60.0
_CHECKPOINT_EVERY = 1.0
# How long the read of every page of the state file after a start may take (a state of many GiB takes
# minutes, while its writes make the log grow): past it, the check stops, and says so.
_PAGES_CHECKED_WITHIN = 120.0
# How often one replica on a shared store counts the open runs from it, at least (`Bridge.count_active`).
_ACTIVE_COUNTED_EVERY = 60.0
# How often the store's risks (its eviction policy, what it keeps on disk) are read again while running.
_RISKS_EVERY = 60.0
# After the store refused a batch, /readyz says so this long (or until a batch gets through).
_REFUSED_UNREADY_SECONDS = 10.0
# How long `replay` waits for room when the backlog is full and the backend failing (or for a store
# that refuses its batch) before it gives up: `export_unready_seconds` when set.
_REPLAY_PATIENCE_SECONDS = 120.0
# The largest batch the HTTP server stores on its event loop: ~6 ms of it at ~50 µs an event.
_INLINE_EVENTS = 128


def state_named(state: str, store: Store | None) -> str:
    """The state as the log and `otel-bridge check` name it, credentials left out: "Redis Cluster
    redis://…", "Redis redis://…", or the SQLite file's path."""
    if not state.startswith(REDIS_SCHEMES):
        return state
    from otel_bridge.state.redis_store import RedisStore

    cluster = isinstance(store, RedisStore) and store.cluster
    return f"{'Redis Cluster' if cluster else 'Redis'} {without_secrets(state)}"


def started(
    settings: Settings, traces: object, metrics: object, waiting: int, follow: bool, store: Store | None = None
) -> str:
    """What a bridge that started (with `store`) is working with, in one line, credentials left out."""
    line = f"otel-bridge {__version__} started: state {state_named(settings.state, store)}"
    if waiting:
        line += f" ({waiting} spans waiting to be sent)"
    line += f"; traces to {otlp.endpoint_of(traces)}, metrics to {otlp.endpoint_of(metrics)}"
    following = []
    if follow and settings.stream_url:
        following.append(f"the Redis stream {settings.stream_key} at {without_secrets(settings.stream_url)}")
    if follow and settings.ws_url:
        following.append(f"the WebSocket {without_secrets(settings.ws_url)}")
    if follow and settings.runtime_v2_url:
        following.append(f"the runtime v2's runs at {without_secrets(settings.runtime_v2_url)}")
    if following:
        line += f"; following {' and '.join(following)}"
    # A rotation is done once the old credential is taken out: said at every start until it is.
    retiring = [
        f"{len(kept)} retiring {name}{'s' if len(kept) > 1 else ''}"
        for name, kept in (("api key", settings.retiring_api_keys), ("bearer token", settings.retiring_bearer_tokens))
        if kept
    ]
    return line + (f"; still accepting {' and '.join(retiring)}" if retiring else "")


def _build_info() -> list[tuple[float, dict[str, str]]]:
    return [(1.0, {"version": __version__})]


def _following(follower: Any) -> str:
    if getattr(follower, "reading", None) is False:
        return "standing by: another replica sharing the state follows it"
    disconnected_since = follower.disconnected_since
    if disconnected_since is None:
        return "connected"
    return f"disconnected for {time.monotonic() - disconnected_since:.0f} s"


def open_store(settings: Settings, read_only: bool = False) -> Store:
    if settings.shared_state:
        from otel_bridge.state.redis_store import RedisStore

        return RedisStore(
            settings.state,
            seen_ttl_seconds=settings.dedup_ttl_seconds,
            claim_after_seconds=settings.claim_after_seconds,
            timeout_seconds=settings.store_timeout_seconds,
            wait_replicas=settings.wait_replicas,
        )
    timeout = settings.store_timeout_seconds
    return SqliteStore(
        settings.state,
        busy_timeout_ms=int(timeout * 1000),
        lock_timeout_seconds=timeout,
        read_only=read_only,
        durability=settings.durability,
        reserve_bytes=int(settings.disk_reserve_mib * 2**20),
    )


def note_damage_met(settings: Settings, met: str) -> None:
    """A damaged state file met (by a running bridge, `check`, a listing), noted beside it for the next start
    to salvage (`Bridge.opened`), whose own reads might not pass through the damaged page; nothing when
    that start will not salvage it (salvage_at_start off), or the state is no file."""
    if settings.salvage_at_start:
        note_met(settings.state, met)


class Bridge:
    @classmethod
    def opened(
        cls,
        settings: Settings,
        while_salvaging: Callable[[], AbstractContextManager[None]] = nullcontext,
        **kwargs: Any,
    ) -> "Bridge":
        """A bridge on `settings` (`kwargs` as `Bridge` takes them), what its gauges count read back
        (`restore`). A SQLite state file found damaged, opening it or reading it back, or noted damaged by
        a bridge, `check` or a listing before (`note_damage`), is salvaged first with `salvage_at_start`, and
        the events the damage rejected are taken again (`take_again_what_damage_rejected`); without
        it, a damage met raises StoreDamaged (one line naming `salvage-state`). A salvage cut short as its
        fresh file took the name (`swapping`) is finished first, whatever the settings. `while_salvaging`: what
        goes on meanwhile (`serve`'s port answering, `while_starting.py`)."""
        file = None if settings.in_memory or settings.shared_state else Path(settings.state)
        # A note beside no file (the state moved away by hand) asks nothing: the start makes a fresh one.
        met = damage_noted(file) if file is not None and file.is_file() and settings.salvage_at_start else None
        if file is not None and file.is_file() and swapping(file).exists():  # it may be the damaged one: always
            met = f"a salvage of the state file {file} was cut short as its fresh file took the name"
        if met is None:
            try:
                return cls(settings, **kwargs).restored().after_salvages(file)
            except StoreDamaged as exc:
                if file is None or not settings.salvage_at_start:
                    raise
                met = exc.met
        assert file is not None
        # Before serving, not beside it: the salvage reads the file whole and puts a fresh one in its place.
        log.warning("%s: salvaging it before the bridge starts (salvage_at_start; ~20 s a GiB)", met)
        try:
            with while_salvaging():
                done = salvage(file, settings.salvage_keep_damaged)
        except SalvageError as exc:
            raise StoreOpenError(f"{met}; its salvage at start could not be made: {exc}") from None
        if done is None:
            log.warning("SQLite finds nothing damaged in %s (PRAGMA quick_check): started on it as it is", file)
        else:
            log.warning("the state file %s is salvaged: %s", file, "; ".join(done.told()))
        bridge = cls(settings, **kwargs).restored()
        bridge.salvaged_at = None if done is None else time.time()
        return bridge.after_salvages(file)

    def __init__(
        self,
        settings: Settings,
        trace_sender: otlp.TraceSender | None = None,
        metric_sender: otlp.MetricSender | None = None,
        clock: Callable[[], float] = time.time,
        meter_provider: MeterProvider | None = None,
        export: OtlpConfig = FROM_ENVIRONMENT,
    ) -> None:
        """`export`: what configures the OTLP export (the standard variables, as the specification reads
        them; in a Python application's process, as its own exporters read them, and code's `otlp=`)."""
        self.settings = settings
        self._clock = clock
        # First: a dead-letter file that cannot be written is said before the state is opened (and claimed).
        self.dead_letters = DeadLetters(
            settings.dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups
        )
        self.dead_spans = DeadLetters(
            settings.span_dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups, "span_dead_letter"
        )
        self.store = open_store(settings)
        self.metrics = MetricsHub(
            settings.max_names,
            max_producers=settings.max_producers,
            max_name_chars=settings.max_name_chars,
            meter_provider=meter_provider,
        )
        self.exposition = exposition(self.metrics.collect)
        # One exporter per export request in flight (`export_concurrency`); a sender handed in is the only one.
        self.trace_senders = (
            [trace_sender] if trace_sender else [otlp.trace_sender(export) for _ in range(settings.export_concurrency)]
        )
        self.metric_sender = metric_sender or otlp.metric_sender(export)
        self.drain = OutboxDrain(
            self.store,
            self.trace_senders,
            self.metrics,
            settings.export_batch_size,
            settings.export_delay_ms / 1000,
            __version__,
            max_request_bytes=settings.max_export_bytes,
            dead_spans=self.dead_spans,
            on_result=self._export_result,
        )
        self.trace_health = ExportHealth(
            "trace",
            otlp.endpoint_of(self.trace_senders[0]),
            self._outbox_waiting,
            settings.export_log_interval_seconds,
        )
        self.metric_health = ExportHealth(
            "metric",
            otlp.endpoint_of(self.metric_sender),
            lambda: "the counts go on accumulating and are sent whole",
            settings.export_log_interval_seconds,
        )
        self._metrics_quiet_until = 0.0  # the clock's time a throttling backend asked metrics to wait for
        self.pipeline = Pipeline(self.store, self.metrics, settings, on_spans=self.drain.wake, clock=clock)
        # On a shared store, the replica that counts what is open tells how many spans wait (`count_active`): each
        # told the one outbox's depth, and a backend's sum over replicas counted it once a replica.
        self._counts_held = not self.store.shared
        self.metrics.gauges(
            c.M_BRIDGE_OUTBOX_DEPTH,
            "{span}",
            "Spans waiting for export",
            lambda: [(float(self.store.outbox_depth()), {})] if self._counts_held else [],
        )
        if (hot := self.pipeline.hot) is not None:
            # Whether `hot_facts` is what holds runs back in memory: at it, runs leave for the store and are
            # read back (parsed again) at their next event.
            self.metrics.gauge(
                c.M_BRIDGE_STATE_HOT_RUNS,
                "{run}",
                "Runs kept in memory between batches (at most hot_runs)",
                hot.__len__,
            )
            self.metrics.gauge(
                c.M_BRIDGE_STATE_HOT_FACTS,
                "{fact}",
                "Facts the runs kept in memory hold together (at most hot_facts, beyond the run being worked on)",
                lambda: hot.facts,
            )
        self.metrics.gauge(
            c.M_BRIDGE_SETTLE_LAG,
            "s",
            "How long the run due soonest has waited past its due time to be settled (0: settling keeps up)",
            self.settle_lag,
        )
        # Prometheus' convention for which build runs where (`max by (version) (..._build_info)`).
        self.metrics.gauges(c.M_BRIDGE_BUILD_INFO, "", "Always 1, labelled with the bridge's version", _build_info)
        self.metrics.start_bridge_counters(
            [
                c.M_BRIDGE_RUNS_INCOMPLETE,
                c.M_BRIDGE_JOBS_PRESUMED_ENDED,
                c.M_BRIDGE_RUNS_KEPT_BACK,
                c.M_BRIDGE_SPANS_EXPORTED,
                c.M_BRIDGE_SPANS_REJECTED,
                c.M_BRIDGE_RUNS_SET_ASIDE,
                c.M_BRIDGE_RUNS_UNREADABLE,
                c.M_BRIDGE_EXPORT_FAILURES,
            ]
        )
        if settings.api_key is not None or settings.bearer_token is not None:
            # At zero from the start: a producer's wrong credential is then an increase an alert sees.
            self.metrics.start_bridge_counters([c.M_BRIDGE_REQUESTS_UNAUTHORIZED])
        # Overdue open runs, counted from the store by a background scan: producer -> [(count, attributes)].
        self._overdue: dict[Resource, list[tuple[float, dict[str, str]]]] = {}
        self.metrics.producer_gauge(
            c.M_WORKFLOW_EXECUTION_OVERDUE,
            "{execution}",
            "Open runs past their resumeAt (paused), not started (queued), or executing and silent past "
            "silent_executing, by more than overdue_grace_seconds",
            lambda resource: self._overdue.get(resource, []),
        )
        self._overdue_jobs: dict[Resource, list[tuple[float, dict[str, str]]]] = {}
        self.metrics.producer_gauge(
            c.M_JOB_INSTANCE_OVERDUE,
            "{instance}",
            "Job instances past their time to run (a debounce's flushAt; the scheduledAt of a task overdue_tasks "
            "names) by more than overdue_grace_seconds with no run",
            lambda resource: self._overdue_jobs.get(resource, []),
        )
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self.passes = Passes()
        self._told_stuck: set[str] = set()
        self.pipeline.settled_slice = lambda: self.passes.progressed("settle")
        self.metrics.gauge(
            c.M_BRIDGE_ALIVE,
            "",  # a state, not a ratio
            "1 while every loop of the bridge comes round, 0 while /healthz says a restart would mend one",
            lambda: 1.0 if self.liveness()["alive"] else 0.0,
        )
        if isinstance(self.store, WithRisks):
            self.metrics.gauge(
                c.M_BRIDGE_STATE_RISKS,
                "{risk}",
                "Settings of the state store that can lose or count again events already answered (an eviction"
                " policy, too little kept on disk, a network filesystem), read every minute, and a damaged state"
                " file met: /readyz says which",
                lambda: float(len(self.at_risk())),
            )
        if isinstance(self.store, OnDisk):
            self._disk_gauges(self.store)
        # When this process salvaged its damaged state file at start (`opened`), rows on the broken pages lost:
        # what BridgeStateSalvaged tells for an hour, the log saying what was met and where the file is kept.
        self.salvaged_at: float | None = None
        self.metrics.gauges(
            c.M_BRIDGE_STATE_SALVAGED,
            "s",
            "Unix time this bridge salvaged its damaged state file at start (salvage_at_start): what still read was "
            "kept, the rows on broken pages lost; absent when it did not",
            lambda: [] if self.salvaged_at is None else [(self.salvaged_at, {})],
        )
        # The certificate `serve` serves HTTPS with (set by it), and the OTLP export's client certificates: when
        # each ends, read as renewed on disk, for an alert before a renewal that did not come stops them.
        self.served_certificate: ServedCertificate | None = None
        self.metrics.gauges(
            c.M_BRIDGE_TLS_CERTIFICATE_EXPIRATION,
            "s",
            "Unix time each certificate the bridge presents ends, as renewed on disk: the one it serves HTTPS with "
            "(certificate=tls_certfile), its OTLP client certificate (the variable that names it)",
            self._certificates_end(certificates.otlp_client_certificates(export)),
        )
        # The engines' streams this bridge follows, by name: each says since when it is not followed.
        self.followers: dict[str, StreamReceiver | WebSocketReceiver | TablePoller] = {}
        self._consumers: dict[str, ObservedConsumer] = {}
        self.ready = False
        self._restored = False
        # When each producer was last heard from, as last written to the store (`keep_hearings`), and since when
        # each expected producer has been.
        self._hearings_written: dict[tuple[str, str, str], float] = {}
        self._hearings_written_at = -math.inf  # time.monotonic()
        self._expected_since: dict[str, float] = {}
        self._hearings_kept = RepeatedFailure("keeping when the producers were last heard from in the store")
        # On a shared store, the open runs this replica told it counted from the store (`count_active`).
        self._active_told: dict[tuple[Resource, str, tuple[tuple[str, str], ...]], int] = {}
        self._active_holder = own_name()
        self._active_counting_took = 0.0
        # The spans still in the outbox once `stop` had drained it (None before): what a command that
        # stops the bridge tells as left, whichever runs they came of.
        self.outbox_at_exit: int | None = None
        # Spans an in-memory state had not sent by its stop, kept in the span dead-letter file instead.
        self.kept_at_exit = 0
        # What the operator should mend that does not stop batches (told by `/readyz` and the log).
        self.warnings: list[str] = []
        # A damaged state file the read of every page after the start found (`_check_pages`).
        self.pages_damage: str | None = None
        self._damage_noted = False  # beside the state file, for the next start (`note_damage`)

    def _disk_gauges(self, store: OnDisk) -> None:
        # A full disk makes the bridge refuse batches (503), and producers drop a batch after three
        # re-sends: the disk is watched by its own gauges, from inside a container too.
        def reading(pick: int) -> list[tuple[float, dict[str, str]]]:
            usage = store.disk_usage()
            return [] if usage is None else [(float(usage[pick]), {})]

        self.metrics.gauges(
            c.M_BRIDGE_STATE_SIZE, "By", "Bytes of the state file and its write-ahead log", lambda: reading(0)
        )
        self.metrics.gauges(
            c.M_BRIDGE_STATE_DISK_FREE,
            "By",
            "Bytes free to the bridge on the state file's filesystem; when none are, batches are refused (503)",
            lambda: reading(1),
        )

    def _export_result(self, ok: bool, reason: str = "") -> None:
        if ok:
            self.trace_health.succeeded()
        else:
            self.trace_health.failed(reason)

    def readiness(self) -> dict[str, object]:
        """What `/readyz` reports: `ready`, and while not, each reason batches are (or soon would be) refused."""
        reasons = []
        depth = None
        if not self.ready:
            reasons.append("starting or stopping")
        try:
            depth = self.store.outbox_depth()
        except Exception as exc:
            reasons.append(f"state store unavailable: {exc}")
        refused = self.pipeline.refused
        if refused is not None and time.monotonic() - refused[0] < _REFUSED_UNREADY_SECONDS:
            reasons.append(f"state store refused a batch {time.monotonic() - refused[0]:.0f} s ago: {refused[1]}")
        if depth is not None and depth >= self.settings.max_outbox_spans:
            reasons.append(
                f"export backlog full: {depth} spans wait (max_outbox_spans {self.settings.max_outbox_spans})"
            )
        warnings = self.at_risk()
        since = self.trace_health.failing_since
        if since is not None:
            failing = f"trace export failing for {time.monotonic() - since:.0f} s"
            unready_after = self.settings.export_unready_seconds
            if unready_after is not None and time.monotonic() - since >= unready_after:
                reasons.append(failing)
            else:  # batches are still taken, and wait in the outbox until the backend is back
                warnings.append(f"{failing}: spans wait in the outbox ({depth if depth is not None else '?'})")
        status: dict[str, object] = {"ready": not reasons, "outbox": depth, "reasons": reasons}
        if warnings:
            status["warnings"] = warnings  # told, not reasons: batches are taken
        if self.followers:
            # Told, not a reason: the endpoint still takes batches while a followed engine is away.
            status["following"] = {name: _following(f) for name, f in self.followers.items()}
        return status

    def liveness(self) -> dict[str, object]:
        """What `/healthz` reports: `alive`, and while not, what a restart would mend (`liveness.py`).

        The first time a loop is found stuck, the log tells where its thread is: what to read (or
        file) before the restart that mends it wipes that out.
        """
        threads = self._threads if self.ready else {}  # before start and while stopping, none is to run
        told = liveness.reasons(threads, self.passes, self.settings.stuck_after_seconds)
        for name in told.keys() - self._told_stuck:
            thread = self._threads.get(name)
            where = liveness.stack_of(thread) if thread is not None and thread.is_alive() else ""
            log.error("not alive: %s%s", told[name], Verbatim(f"; where it is:\n{where}") if where else "")
        self._told_stuck = set(told)
        return {"alive": not told, "reasons": list(told.values())}

    def waited_for_room(self, refused: Unavailable, waited: float) -> bool:
        """For a tool that stores batches one after another (replay), refused one for now: wait a
        little and say True (offer it again), or say False — waiting is not worth it: the backlog
        is full and the backend has been failing for `export_unready_seconds` (else two minutes), or
        the store has refused this batch for as long."""
        patience = self.settings.export_unready_seconds or _REPLAY_PATIENCE_SECONDS
        if isinstance(refused, Backpressure):
            since = self.trace_health.failing_since
            if since is not None and time.monotonic() - since >= patience:
                return False
            if waited == 0:
                log.warning("%s: waiting for the backend to take them", refused)
            self.drain.wake()
            self._stop.wait(0.5)
            return True
        if waited >= patience:
            return False
        if waited == 0:
            log.warning("the state store refused a batch (%s): trying again for %.0f s", refused, patience)
        self._stop.wait(min(1.0 + waited / 4, 5.0))
        return True

    def consumer(self, receiver: str, decoder: Decoder | None = None) -> ObservedConsumer:
        """What `receiver` hands its batches to: the pipeline (with `decoder` for another engine's
        events than the durable-effect tracker's), its counts labelled with the receiver's name."""
        if decoder is not None:
            return ObservedConsumer(receiver, self.pipeline.consumer(decoder), self.metrics)
        if receiver not in self._consumers:  # asked for at every flush of the in-process tracker
            self._consumers[receiver] = ObservedConsumer(receiver, self.pipeline, self.metrics)
        return self._consumers[receiver]

    def after_salvages(self, file: Path | None) -> "Bridge":
        """This bridge, once what salvages of its state file (at start, or by hand) left beside it is dealt with:
        the fresh file of one killed while it copied deleted (`cut_copy_swept`: this bridge holds the file's
        lock, so no salvage is making one), and the events the damage rejected taken again where one noted that
        they should be (the note stays for the next start while some could not be)."""
        if file is None:
            return self
        if swept := cut_copy_swept(file):
            log.warning(
                "a salvage of %s killed while it copied left its fresh file (%.1f MiB): deleted", file, swept / 2**20
            )
        if not (note := take_again(file)).exists():
            return self
        try:
            summary = self.take_again_what_damage_rejected()
        except Exception:  # they wait in the dead-letter file, and the next start tries again: no reason not to serve
            log.exception("taking again the events the damage rejected, from %s, failed", self.settings.dead_letter)
            return self
        if summary.stopped is None:
            note.unlink(missing_ok=True)
        return self

    def take_again_what_damage_rejected(self) -> "ReplaySummary":
        """The events rejected because the state file was damaged where they went, kept in the dead-letter
        file within the memory of duplicates (`dedup_ttl_seconds`), offered again once it is salvaged, as
        `replay --format dead-letter` offers them: no producer offers them again, and a replay of them by
        hand needed the bridge stopped a second time. Taken already (a salvage before), they are
        duplicates; refused for now, they wait in the file."""
        from otel_bridge.receivers.replay import DEAD_LETTER, rejected_for_damage, replay  # its progress bar

        since = datetime.fromtimestamp(time.time() - self.settings.dedup_ttl_seconds, UTC)
        path = self.dead_letters.path
        lines = rejected_for_damage(path, self.settings.dead_letter_backups, since.isoformat(timespec="milliseconds"))
        consumers = self.consumers_by_format("salvage")
        summary = replay(consumers, "salvage", self.dead_letters, False, source_format=DEAD_LETTER, lines=lines)
        if summary.stopped is not None:
            log.warning(
                "the events the damage rejected, in %s, could not all be taken again: %s", path, summary.stopped[1]
            )
        if summary.lines:
            log.warning(
                "events the damage rejected before the salvage, taken again from %s: %d accepted, %d duplicates, "
                "%d rejected again",
                path, summary.accepted, summary.duplicates, len(summary.rejected),
            )  # fmt: skip
        return summary

    def consumers_by_format(self, receiver: str) -> dict[str, ObservedConsumer]:
        """A consumer for the events of each engine's format (`replay.FORMATS`), counted as `receiver`'s."""
        return {
            "durable-effect": self.consumer(receiver),
            "event-sourced": self.consumer(receiver, self.event_sourced_decoder()),
            "phase10": self.consumer(receiver, self.phase10_decoder()),
            "runtime-v2": self.consumer(receiver, self.runtime_v2_decoder()),
        }

    def credential_used(self, name: str | None) -> None:
        """A request the HTTP receiver checked, with the name of the credential it carried (None: refused)."""
        if name is None:
            self.metrics.bridge(c.M_BRIDGE_REQUESTS_UNAUTHORIZED)
        else:
            self.metrics.bridge(c.M_BRIDGE_REQUESTS_AUTHENTICATED, 1, **{c.BRIDGE_CREDENTIAL: name})

    def serving_http(self, tls: bool) -> None:
        """The HTTP server is to run (`serve`), over TLS or not: the handshakes that lose a producer's every batch
        counted from zero, so that the first is an increase an alert sees — one refusing the certificate, or one
        speaking TLS to the plain-HTTP port."""
        lost = c.HANDSHAKE_CERTIFICATE_REFUSED if tls else c.HANDSHAKE_NO_CERTIFICATE
        self.metrics.start_bridge_counters([c.M_BRIDGE_TLS_HANDSHAKES_FAILED], **{c.BRIDGE_REFUSAL_REASON: lost})

    def handshake_failed(self, reason: str) -> None:
        """A TLS handshake that failed, by what it means for the producer: on the HTTPS port (`https_port`), or met
        on the plain-HTTP port (`http_protocol`, no_certificate)."""
        self.metrics.bridge(c.M_BRIDGE_TLS_HANDSHAKES_FAILED, 1, **{c.BRIDGE_REFUSAL_REASON: reason})

    def request_answered(self, attributes: Attributes, seconds: float) -> None:
        """A request the HTTP server answered, described as the HTTP semantic conventions describe one."""
        self.metrics.bridge_histogram(c.M_HTTP_SERVER_REQUEST_DURATION, seconds, attributes)

    def ingests_inline(self, events: int) -> bool:
        """Whether the HTTP server stores a batch of `events` on its event loop, not in a worker thread.

        The hop to a worker and back (two thread wake-ups, two hand-overs of the interpreter, and
        under load a wait for other threads' 5 ms switch interval) took more of a 6-event POST's
        answer than storing it (~0.3 ms): benchmarks/post_latency.py, p50 3.0 → 2.0 ms, p99 9.4 →
        5.9 ms. Only where storing cannot hold the loop (and every request on it) for long: a
        small batch, on a store that says a transaction now would be quick (a local file without
        an fsync per batch, nobody else in a transaction). Redis, `durability full` and large
        batches keep the worker.
        """
        return events <= _INLINE_EVENTS and self.store.quick_now()

    def event_sourced_decoder(self) -> EventSourcedDecoder:
        s = self.settings
        return EventSourcedDecoder(
            EventSourcedOptions(
                service=s.stream_service_name,
                env=s.stream_env,
                terminal_states=frozenset(s.stream_terminal_states),
                decode=self.pipeline.decode_options,
            )
        )

    def phase10_decoder(self, following: bool = False) -> Phase10Decoder:
        """`following`: the WebSocket's, whose live ends await the timeline its follower fetches at each end."""
        s = self.settings
        at_end = following and s.ws_timeline_at_end and s.ws_api_url is not None
        return Phase10Decoder(
            Phase10Options(
                service=s.ws_service_name, env=s.ws_env, decode=self.pipeline.decode_options, timeline_at_end=at_end
            )
        )

    def runtime_v2_decoder(self) -> RuntimeV2Decoder:
        s = self.settings
        return RuntimeV2Decoder(
            RuntimeV2Options(
                service=s.runtime_v2_service_name,
                env=s.runtime_v2_env,
                decode=self.pipeline.decode_options,
                log_levels=levels_from(s.runtime_v2_log_level),
            )
        )

    def _receivers(self) -> list[tuple[str, Callable[[], None]]]:
        """The engines' own transports this bridge follows besides its HTTP endpoint."""
        s = self.settings
        out: list[tuple[str, Callable[[], None]]] = []
        if s.stream_url:
            from otel_bridge.receivers.redis_stream import StreamReceiver  # redis-py: only for a bridge that follows

            stream = StreamReceiver(
                s.stream_url,
                s.stream_key,
                s.stream_group,
                # The host's name and the bridge's port by default: a bridge started again (on its port) reads its
                # own unacknowledged entries at once, and two on one host are two consumers — one name, each read
                # as its own the entries the other had just read, and both stored them.
                s.stream_consumer or f"{socket.gethostname()}:{s.port}",
                self.consumer("redis-stream", self.event_sourced_decoder()),
                self.dead_letters,
                claim_after_seconds=s.stream_claim_after_seconds,
                on_lost=lambda n: self.metrics.bridge(c.M_BRIDGE_STREAM_ENTRIES_LOST, n),
            )
            self.metrics.gauge(
                c.M_BRIDGE_STREAM_LAG, "{entry}", "Stream entries not yet read by the group", lambda: stream.lag or 0
            )
            # At zero from the start: the first loss is then an increase an alert sees, not a new series.
            self.metrics.start_bridge_counters([c.M_BRIDGE_STREAM_ENTRIES_LOST])
            out.append(("redis-stream", lambda: stream.run(self._stop)))
            self.followers["redis-stream"] = stream
        # Of replicas sharing a state, the one that follows an engine's stream or reads its tables, alone.
        holder = own_name()
        if s.ws_url:
            from otel_bridge.receivers.websocket import WebSocketReceiver

            following = self.phase10_decoder(following=True)
            websocket = WebSocketReceiver(
                s.ws_url,
                self.consumer("websocket", following),
                self.dead_letters,
                progress=phase10.progress,
                named=phase10.workflow_named,
                api_url=s.ws_api_url,
                workspace_id=s.ws_workspace_id,
                workspace_of=phase10.workspace_of,
                open_at_start=lambda: [
                    (run.run_id, phase10.workspace_in(run))
                    for run in self.pipeline.open_runs_of(phase10.ENGINE, s.ws_env, s.ws_service_name)
                ],
                max_message_bytes=s.max_body_bytes,
                # Kept with the state, one set per engine followed: a restart looks for what began meanwhile.
                recall=lambda name: self.store.bookmark(f"websocket {without_secrets(s.ws_url or '')} {name}"),
                note=lambda name, value: self.store.set_bookmark(
                    f"websocket {without_secrets(s.ws_url or '')} {name}", value
                ),
                max_look_back_seconds=s.dedup_ttl_seconds,
                # As long as a run told ended waits for it (then it is sent without what it would add).
                timeline_at_end_seconds=s.gap_grace_seconds if s.ws_timeline_at_end else None,
                no_timeline=lambda execution: self.pipeline.summary_not_coming(following.state_key(execution)),
                # Replicas on one Redis store: one follows the stream, the others stand by.
                lease=(
                    (
                        lambda seconds: self.store.lease(
                            keys.websocket_lease(without_secrets(s.ws_url or "")), holder, seconds
                        )
                    )
                    if self.store.shared
                    else None
                ),
            )
            out.append(("websocket", lambda: websocket.run(self._stop)))
            self.followers["websocket"] = websocket
        if s.runtime_v2_url:
            from otel_bridge.receivers.postgres_poll import TablePoller  # psycopg: only for a bridge that follows

            poller = TablePoller(
                s.runtime_v2_url,
                self.consumer("runtime-v2", self.runtime_v2_decoder()),
                self.dead_letters,
                # Kept with the state: a restart reads on from the last change it read.
                recall=self.store.bookmark,
                note=self.store.set_bookmark,
                poll_seconds=s.runtime_v2_poll_seconds,
                overlap_seconds=s.runtime_v2_overlap_seconds,
                look_back_seconds=s.runtime_v2_look_back_seconds,
                capture_input=s.capture_input,
                log_levels=levels_from(s.runtime_v2_log_level),
                # Replicas on one Redis store: one reads the tables, the others stand by.
                lease=(lambda seconds: self.store.lease(keys.RUNTIME_V2_LEASE, holder, seconds))
                if self.store.shared
                else None,
            )
            out.append(("runtime-v2", lambda: poller.run(self._stop)))
            self.followers["runtime-v2"] = poller
        if self.followers:
            self.metrics.gauges(
                c.M_BRIDGE_FOLLOWER_CONNECTED,
                "",  # a state, not a ratio: no `_ratio` suffix in Prometheus
                "1 while the engine's stream is followed, 0 while the bridge cannot reach it",
                lambda: [
                    (0.0 if follower.disconnected_since is not None else 1.0, {"follower": name})
                    for name, follower in self.followers.items()
                ],
            )
        return out

    def restore(self) -> None:
        """Read back from the store what the gauges count (once): `serve` does it before its server starts,
        where what it meets (a damaged state file) is told in one line, not among the server's."""
        if self._restored:
            return
        try:
            self.pipeline.restore_gauges()
        except Exception as exc:
            if not self.store.damaged(exc):
                raise
            self.store.close()  # its lock let go: the salvage (`opened`, `salvage-state`) takes it
            # Not to be used: an application's MeterProvider reads the bridge made after the salvage instead.
            self.metrics.shutdown()
            raise StoreDamaged(self.settings.state, exc) from exc
        self._restored = True

    def restored(self) -> "Bridge":
        self.restore()
        return self

    def note_damage(self) -> None:
        """Leave a note beside the state file of a damage met while running (once), for the next start to
        salvage it (`opened`): its own reads might not pass through the damaged page."""
        met = self.pipeline.damage or self.drain.damage or self.pages_damage
        if met is not None and not self._damage_noted:
            note_damage_met(self.settings, met)
            self._damage_noted = True

    def start(self, follow: bool = True, history: bool = False) -> "Bridge":
        """Start settling and exporting; with `follow`, also the engines' own transports (stream, WebSocket).
        `history`: the events it is to take are a replay's or an import's, no producer heard from."""
        self.pipeline.hears_producers = not history
        self.restore()
        self._read_back_hearings()
        for name, target in (
            ("settle", self._settle_loop),
            ("trace-export", lambda: self.drain.run(self._stop, self.passes)),
            ("metric-export", self._metric_loop),
            ("overdue", self._overdue_loop),
            *([("checkpoint", self._checkpoint_loop)] if isinstance(self.store, Checkpointed) else []),
            *(self._receivers() if follow else []),
        ):
            thread = threading.Thread(target=target, name=f"otel-bridge-{name}", daemon=True)
            thread.start()
            self._threads[name] = thread
        if isinstance(self.store, PagesChecked):
            # Once, apart from the loops (`/healthz` watches theirs): a damaged page nothing has needed yet.
            threading.Thread(target=self._check_pages, name="otel-bridge-page-check", daemon=True).start()
        self.ready = True
        try:
            waiting = self.store.outbox_depth()
        except Exception:  # a store down at this moment is told by the tasks that use it
            waiting = 0
        log.info("%s", started(self.settings, self.trace_senders[0], self.metric_sender, waiting, follow, self.store))
        self.read_risks()
        if isinstance(self.store, Replicated):
            # Told once, not kept among the health's warnings: a replica may connect the moment after,
            # and a batch refused meanwhile makes the bridge unready by itself (`pipeline.refused`).
            try:
                short = self.store.replicas()[1]
            except Exception:  # a store down at this moment is told by the tasks that use it
                short = None
            if short is not None:
                log.warning("%s", short)
        return self

    def settle_lag(self) -> float:
        """Seconds the run due soonest has waited past its due time: a settle pass comes every quarter
        second or so, so more than a few seconds means settling does not keep up (or does not run)."""
        due = self.store.earliest_due()
        return 0.0 if due is None else max(self._clock() - due, 0.0)

    def _certificates_end(self, clients: dict[str, Path]) -> Callable[[], list[tuple[float, dict[str, str]]]]:
        def read() -> list[tuple[float, dict[str, str]]]:
            ends = []
            if self.served_certificate is not None:
                ends.append((self.served_certificate.expires_at, {c.BRIDGE_CERTIFICATE: "tls_certfile"}))
            for variable, path in clients.items():
                try:
                    ends.append((certificates.expiration(path), {c.BRIDGE_CERTIFICATE: variable}))
                except certificates.TlsFilesError:
                    continue  # mid-renewal, or not there: no point this time (the export says what fails)
            return ends

        return read

    def settle_on_loop(self) -> None:
        """Hand settling's slices to the running event loop (the HTTP server's) where it can take them
        (on_loop.py: a producer's answer then does not wait for the settling thread to let go of the
        interpreter)."""
        if self.store.shared or self.settings.durability == "full":
            return  # never quick (round trips, a sync per commit): no slice would be taken, each asked in vain
        self.pipeline.slices = OnLoop(asyncio.get_running_loop(), self.store.quick_now)

    def index_by_these_settings(self) -> int:
        """The overdue index written again where other settings wrote it (`Pipeline.index_by_these_settings`):
        as the bridge starts, before its first count."""
        again = self.pipeline.index_by_these_settings()
        if again:
            log.info("overdue index: %d job instances and executing runs judged again by these settings", again)
        return again

    def count_overdue(self) -> None:
        """Count the overdue runs and job instances from the store: right after a restart too.

        The store finds them by an index of when each open run (or job instance) turns overdue, read
        once a count, so the count costs what the overdue ones cost, not every open run. On a shared store the
        replica that counts the open runs (`count_active`) tells them, the others none: a backend sums one
        count a store, as it sums the sidecars' each of their own (a max over them told the busiest alone).
        """
        if not self._counts_held:
            self._overdue, self._overdue_jobs = {}, {}
            return
        overdue_runs, overdue_jobs = self.pipeline.overdue()
        counts: dict[Resource, dict[tuple[str, str, str], int]] = {}
        for run in overdue_runs:
            per = counts.setdefault(Resource(run.service, run.env), {})
            key = (run.engine, run.name, run.state)
            per[key] = per.get(key, 0) + 1
        overdue: dict[Resource, list[tuple[float, dict[str, str]]]] = {}
        for resource, per in counts.items():
            self.metrics.ensure_producer(resource)
            overdue[resource] = [
                (
                    float(n),
                    {
                        c.WORKFLOW_PLATFORM_NAME: engine,
                        c.WORKFLOW_DEFINITION_NAME: name,
                        c.WORKFLOW_EXECUTION_STATE: state,
                    },
                )
                for (engine, name, state), n in per.items()
            ]
        self._overdue = overdue
        jobs: dict[Resource, dict[tuple[str, str], int]] = {}
        for job in overdue_jobs:
            named = jobs.setdefault(Resource(job.service, job.env), {})
            named[(job.job_name, job.job_type)] = named.get((job.job_name, job.job_type), 0) + 1
        for resource in jobs:
            self.metrics.ensure_producer(resource)
        self._overdue_jobs = {
            resource: [(float(n), {c.JOB_NAME: name, c.JOB_TYPE: kind}) for (name, kind), n in named.items()]
            for resource, named in jobs.items()
        }

    def at_risk(self) -> list[str]:
        """What can lose or has lost what the bridge answered: the store's settings read last (`read_risks`),
        and a damaged state file the pipeline met, until the bridge runs on a salvaged one."""
        told = list(self.warnings)
        if (damage := self.pipeline.damage) is not None:
            told.append(
                f"{damage}: the events that need the damaged part are rejected (kept in the dead-letter file), "
                f"the runs in it not settled; {DAMAGED_HELP}"
            )
        if (damage := self.drain.damage) is not None:
            told.append(f"{damage}; {DAMAGED_HELP}")
        if (damage := self.pages_damage) is not None and self.pipeline.damage is None and self.drain.damage is None:
            told.append(f"{damage}, found reading every page after the start (nothing met it yet); {DAMAGED_HELP}")
        return told

    def read_risks(self) -> None:
        """Read again what the store's setting-up can cost (`WithRisks`), for `/readyz` and the log: a Redis
        restarted without its disk (a container recreated without its volume) or set otherwise (CONFIG SET,
        a managed service's change) while the bridge runs is told, and one mended stops being told. A risk
        is logged when it appears, and once more when it is gone."""
        if not isinstance(self.store, WithRisks):
            return
        try:
            risks = self.store.risks()
        except Exception:  # a store down at this moment is told by the tasks that use it; what was read stays
            return
        for risk in risks:
            if risk not in self.warnings:
                log.warning("%s", risk)
        for gone in self.warnings:
            if gone not in risks:
                log.info("no longer so, the state store's settings read again: %s", gone)
        self.warnings = risks

    def _overdue_loop(self) -> None:
        # Also where the store's risks are read again: both are a few reads of the store, at a slow pace.
        interval = min(max(self.settings.overdue_grace_seconds / 4, 1.0), 15.0)
        failures = RepeatedFailure("counting overdue runs")
        reading_back = RepeatedFailure("reading back when each job last ran")
        counting_active = RepeatedFailure("counting the open runs")
        next_count = time.monotonic()  # of the open runs from the store, by one replica (`count_active`)
        risks_read = time.monotonic()
        indexed = False  # by these settings (`index_by_these_settings`): tried again at each pass until done
        read_back = not self.store.shared  # each job's last run (`restore_last_runs`): likewise, until done
        while True:
            if not indexed:  # outside a pass: read from every state's header, it takes what the store's size takes
                indexed = failures.attempt(self.index_by_these_settings) is not None
            if not read_back:
                read_back = reading_back.attempt(self._last_runs_read_back) is not None
            if self.store.shared:  # outside a pass too: a count reads every header
                began = time.monotonic()
                if counting_active.attempt(partial(self.count_active, count=began >= next_count)):
                    next_count = time.monotonic() + max(_ACTIVE_COUNTED_EVERY, 20 * (time.monotonic() - began))
            with self.passes.running("overdue"):
                failures.attempt(self.count_overdue)
                self.note_damage()
                if time.monotonic() - risks_read >= _RISKS_EVERY:
                    risks_read = time.monotonic()
                    self.read_risks()
            if self._stop.wait(interval):
                return

    def count_active(self, count: bool = True) -> bool:
        """On a shared store, the open runs and continuous job instances counted from the store (`open_counts`)
        by the replica that holds the lease for it, and told as the change since its last count; one that no
        longer holds it takes back what it told. The holder tells the outbox's depth and the overdue gauges too.

        Asked at each pass of the overdue loop, which renews the lease (or takes it, one that lapsed: a holder
        killed is replaced within its 45 s, not the minutes its counts' pace would give it); `count` when a
        count is due — every minute, or less often as the store grows (twenty times what a count takes: a
        million open runs are read in seconds) — and at once by a replica that has just taken the lease.
        Whether it counted."""
        try:
            began = time.monotonic()
            held = self.store.lease(keys.COUNTS_LEASE, self._active_holder, 45 + 3 * self._active_counting_took)
            if held and self._counts_held and not count:
                return False  # renewed
            counts = self.pipeline.open_counts() if held else {}
            if held:
                self._active_counting_took = time.monotonic() - began
        except StoreUnavailable:  # the store away is told by settling, once: what was told stays
            return False
        self._counts_held = held
        self._tell_active(counts)
        return held

    def _tell_active(self, counts: dict[tuple[Resource, str, tuple[tuple[str, str], ...]], int]) -> None:
        """The active gauges moved from what this replica told last to `counts` (none: all it told taken back)."""
        told = self._active_told
        changes = [
            Observation(name, n - told.get((resource, name, attributes), 0), attributes, resource)
            for (resource, name, attributes), n in counts.items()
        ] + [
            Observation(name, -n, attributes, resource)
            for (resource, name, attributes), n in told.items()
            if (resource, name, attributes) not in counts
        ]
        self.metrics.record(change for change in changes if change.value)
        self._active_told = counts

    def let_counts_go(self) -> None:
        """At the stop, the lease of counting for the replicas let go: another takes it at the next pass of its
        overdue loop (15 s at most), not once it lapses; what this one told is taken back, as a replica that no
        longer holds it does, so that its last export (the drain may outlast the other's count) is not summed
        beside the new holder's."""
        if self.store.shared and self._counts_held:
            with contextlib.suppress(StoreUnavailable):  # it lapses
                self.store.release(keys.COUNTS_LEASE, self._active_holder)
            self._counts_held = False
            self._tell_active({})

    def _last_runs_read_back(self) -> int | None:
        try:
            return self.pipeline.restore_last_runs()
        except StoreUnavailable:  # the store away is told by settling, once: read at a later pass
            return None

    def _settle_loop(self) -> None:
        tick = min(max(self.settings.settle_seconds / 4, 0.05), 0.25)
        last_purge = 0.0
        failures = RepeatedFailure("settling")

        def settle() -> None:
            nonlocal last_purge
            self.pipeline.settle_due()
            if time.monotonic() - last_purge > min(_PURGE_EVERY, self.settings.dedup_ttl_seconds / 2):
                last_purge = time.monotonic()
                self.store.purge_seen(time.time() - self.settings.dedup_ttl_seconds)

        while not self._stop.wait(tick):
            with self.passes.running("settle"):
                failures.attempt(settle)

    def _check_pages(self) -> None:
        """Read every page of the state file once after the start (SQLite's `quick_check`), beside the bridge:
        a page damaged where no event or run has gone yet is told (`at_risk`) before one meets it, when a
        salvage can be planned (before, `check` alone found it)."""
        assert isinstance(self.store, PagesChecked)
        try:
            found = self.store.damage_found(_PAGES_CHECKED_WITHIN)
        except TimeoutError as exc:
            log.info("the state file's pages were not all checked after the start: %s", exc)
            return
        except Exception:  # a file gone or locked away: what uses it says so
            log.debug("checking the state file's pages after the start failed", exc_info=True)
            return
        if found is not None:
            self.pages_damage = damage_met(found, self.settings.state)
            log.error("%s, found reading every page after the start; %s", self.pages_damage, DAMAGED_HELP)
            self.note_damage()

    def _checkpoint_loop(self) -> None:
        assert isinstance(self.store, Checkpointed)
        failures = RepeatedFailure("checkpointing the state file")
        while not self._stop.wait(_CHECKPOINT_EVERY):
            with self.passes.running("checkpoint"):
                failures.attempt(self.store.checkpoint)

    def _tell_open_runs_left(self) -> None:
        """Runs still going on when an in-memory state stops: what they ended is sent, their roots never
        are (no later start reads this state). Said, so that one who needs them whole knows how."""
        try:
            _runs, still_open = self.pipeline.list_runs(RunQuery(), limit=0)
        except Exception:  # a count for the log must not hold up the stop
            log.debug("counting the open runs at stop failed", exc_info=True)
            return
        if still_open:
            log.warning(
                "%d runs still going on are not sent whole: what they ended is, their roots are not, as the "
                "state is in memory; with a state file (a tracker's `state=`, `--state`) a run goes on after "
                "a restart as one trace",
                still_open,
            )

    def _tell_unsent(self, waiting: str) -> None:
        """What the stop's drain left: kept in the span dead-letter file, in the outbox for the next start,
        or, in memory with a file that could not take them, lost."""
        if self.kept_at_exit:
            log.warning(
                "%d spans not sent by exit%s: the state is in memory, so they are kept in %s; "
                "`otel-bridge resend-spans %s` sends them once the backend is back",
                self.kept_at_exit,
                waiting,
                self.settings.span_dead_letter,
                self.settings.span_dead_letter,
            )
        if not self.outbox_at_exit:
            return
        if self.settings.in_memory:
            log.error(
                "%d spans not sent by exit%s, and the span dead-letter file %s could not take them: "
                "lost with the state, which is in memory",
                self.outbox_at_exit,
                waiting,
                self.settings.span_dead_letter,
            )
        else:
            log.warning(
                "%d spans still in the outbox at exit%s: they are kept and sent on the next start",
                self.outbox_at_exit,
                waiting,
            )

    def export_metrics(self) -> bool:
        data = otlp.merge_metrics(self.metrics.collect())
        if data is None:
            return True
        try:
            result = self.metric_sender.send(data)
        except Exception:
            log.exception("OTLP metric export raised")
            result = otlp.ExportResult(otlp.Delivery.RETRY, "exporter raised")
        ok = result.delivery is otlp.Delivery.SENT
        if ok:
            self.metric_health.succeeded()
        else:
            self.metric_health.failed(result.reason)
            self.metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="metrics")
        # A throttling backend's wait, kept to by the next push (the counts are cumulative: nothing is
        # lost by a push made later).
        self._metrics_quiet_until = time.monotonic() + (result.wait_seconds or 0.0)
        return ok

    def _metric_loop(self) -> None:
        interval = self.settings.metric_export_interval_ms / 1000
        wait = interval
        while not self._stop.wait(wait):
            with self.passes.running("metric-export"):
                self.export_metrics()
                self.keep_hearings()
            wait = max(interval, self._metrics_quiet_until - time.monotonic())

    def _read_back_hearings(self) -> None:
        """As the bridge starts: when each producer was last heard from, and since when each expected producer
        has been, read back from the store (`hearings`) and told as the producers' gauges, so a restart does not
        start `ProducerNotHeard`'s count again; an expected producer new to the store is expected from now."""
        now = self._clock()
        kept = Hearings()
        if not self.settings.in_memory:
            try:
                kept = hearings.decoded(self.store.bookmark(hearings.BOOKMARK))
            except Exception as exc:  # a store away or damaged: counted from now, as before they were kept
                log.warning("when the producers were last heard from could not be read (%s): counted from now", exc)
        expected = self.settings.expected_producers
        kept = kept.expecting(expected, now)
        self._expected_since = kept.expected_since
        self.metrics.record(producers_heard(kept.told_again(expected, self.settings.max_producers)))
        self.metrics.record(producers_expected(expected, kept.expected_since))
        self.keep_hearings(changed=True)  # since when a producer newly expected is, and those forgotten

    def keep_hearings(self, changed: bool = False) -> None:
        """Write to the store when each producer was last heard from, when this bridge heard from one since it
        last did (with the metrics' export, and at the stop): merged with what is there, the later of each, as
        replicas sharing the store each write theirs. A store that cannot take it now is asked again next time."""
        heard = self.pipeline.heard.copy()  # taken whole under the GIL while batches add to it
        # Written again now and then unchanged too: two replicas that read and wrote at once each wrote what
        # the other had not, and the one that heard nothing since would never have written its own again.
        due = time.monotonic() - self._hearings_written_at >= hearings.REWRITTEN_AFTER_SECONDS
        if self.settings.in_memory or (heard == self._hearings_written and not changed and not (heard and due)):
            return

        def write() -> bool:
            try:
                stored = hearings.decoded(self.store.bookmark(hearings.BOOKMARK))
                kept = stored.merged(Hearings(heard, self._expected_since))
                expecting = kept.expecting(self.settings.expected_producers, self._clock())
                self.store.set_bookmark(hearings.BOOKMARK, expecting.encoded())
            except StoreUnavailable:  # the store away is told by settling and the export, once: not again here
                return False
            return True

        if self._hearings_kept.attempt(write):
            self._hearings_written, self._hearings_written_at = heard, time.monotonic()

    def _outbox_waiting(self) -> str:
        # "Safely" only where the outbox is on disk: an in-memory one goes with the process.
        depth = self.store.outbox_depth()
        if self.settings.in_memory:
            return f"{depth} spans wait in the outbox, in memory, for as long as this process lives"
        return f"{depth} spans wait safely in the outbox"

    def stop(self, final: bool = False, told_all: bool = False, retry_export: bool = True) -> None:
        """Settle what is waiting, export it and the metrics, then close.

        `final`: no later start will come (in-memory state): every ended run is sent now, gaps or not.
        `told_all`: what was stored is all there is to tell of its runs (a file replayed, timelines
        imported): an ended run is sent, gaps or not, as no straggler will fill them.
        `retry_export`: False to stop at the first failed export rather than try again until the drain
        timeout (an application exiting without having closed its tracker, as the SDK gives up at exit).
        """
        self.ready = False
        self._stop.set()
        deadline = time.monotonic() + self.settings.drain_timeout_seconds
        # From now on each export makes one attempt: the exporters' own retries (for up to
        # OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) held the exit past the drain timeout while a backend
        # was down — in the export thread being joined, and again for the metrics. The drain
        # below still tries again until its timeout; what is left stays in the outbox.
        otlp.stop_retrying(*self.trace_senders, self.metric_sender)
        # And no request waits past the drain timeout for a backend that took the connection and
        # never answers: that held the exit three request timeouts (27 s).
        otlp.limit_timeouts(self.settings.drain_timeout_seconds, *self.trace_senders, self.metric_sender)
        self.drain.wake()
        exporting = ("trace-export", "metric-export")
        for name, thread in self._threads.items():
            # An export in flight may wait on the backend for its whole request timeout: the drain
            # timeout bounds that wait, the rest of the work here is the store's and is waited for.
            thread.join(timeout=max(deadline - time.monotonic(), 0) if name in exporting else 30)
        stuck = {name for name in exporting if name in self._threads and self._threads[name].is_alive()}
        self.pipeline.slices = here  # the last settling is this thread's, whatever the loop does meanwhile
        # Nothing more is taken in: what was heard, and the counting, are handed over now, not after the drain,
        # which may last its whole timeout — a supervisor's kill within it lost the hearings since the last
        # metrics export, and another replica waited out the lease.
        self.keep_hearings()
        self.let_counts_go()
        try:
            settling = time.monotonic()
            try:
                if final:
                    self.pipeline.settle_due(horizon=float("inf"), told_all=True)
                else:
                    horizon = time.time() + self.settings.settle_seconds
                    self.pipeline.settle_due(horizon=horizon, told_all=told_all)
            except StoreUnavailable as exc:
                # A full disk: what the outbox holds is still sent (or kept) below, where the stop ended here
                # with a traceback, and an in-memory state's spans went with it.
                log.error("the last settling could not write to the store (%s): the runs it was to end stay in it", exc)
            if self.settings.in_memory:
                self._tell_open_runs_left()
            # The drain timeout bounds the time spent exporting, not settling's own work: an in-memory
            # tracker closed with 80,000 runs still to settle spent the whole 10 s settling them, and
            # its 148,254 spans were lost with its state, though nothing waited on a backend.
            deadline += time.monotonic() - settling
            remaining = max(deadline - time.monotonic(), 0)
            otlp.limit_timeouts(remaining, *self.trace_senders, self.metric_sender)
            # A request still in flight holds its spans: sending them again beside it could send them twice.
            drained = "trace-export" not in stuck and self.drain.drain(remaining, retry=retry_export)
            if not drained and self.settings.in_memory:
                # The outbox goes with the process: its spans go to a file, not with it. One in flight
                # may reach the backend too; sent again, it is the identical span (ids are derived).
                self.kept_at_exit = self.drain.keep_the_rest("not sent by exit: the state was in memory")
            try:
                self.outbox_at_exit = self.store.outbox_depth()
            except StoreUnavailable as exc:  # Redis gone as the bridge stops: it ended here with a traceback
                log.error("the store is unavailable as the bridge stops (%s): what waits in it stays there", exc)
            if not drained:
                self._tell_unsent(" (an export was still waiting on the backend)" if stuck else "")
            if "metric-export" not in stuck:
                otlp.limit_timeouts(max(deadline - time.monotonic(), 0.5), self.metric_sender)
                self.export_metrics()
        finally:
            self.note_damage()  # what the stop met too
            self.dead_letters.close()
            self.dead_spans.close()
            for sender in self.trace_senders:
                sender.shutdown()
            self.metric_sender.shutdown()
            self.metrics.shutdown()
            self.store.close()
