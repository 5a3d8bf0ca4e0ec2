"""The in-process tracker: the bridge's own pipeline inside the producer, no sidecar.

`OtelTracker` decodes, folds, settles and encodes exactly as `otel-bridge serve` does
(it runs the same `Bridge`), so the traces and metrics are the sidecar's. Its state is
in memory by default, in a SQLite file (`state="tracker.db"`) that survives the
producer's restart, or in Redis (`state="redis://…"`), shared by the producer's processes:
one trace per run, whichever process tells its events. Spans go out through the OTLP exporter the standard
`OTEL_EXPORTER_OTLP_*` variables configure (or `otlp=`, in their place), or to an OpenTelemetry SDK exporter
the application gives (`span_exporter=`); metrics through its own MeterProvider and periodic export, or into
the MeterProvider the application passes, next to its own.

`emit` only buffers; the buffer is stored on `flush`, when full, and every
`flush_interval_seconds`; settling and export run in background threads, so nothing in
the workflow waits on a backend. While the store refuses (its export backlog full, its disk full,
Redis away), the events wait in the buffer and a flush tries again only once a backoff is over.
`force_flush()` sends what has ended now and waits for the backend, for a process about to be frozen;
`close()` stores the rest, and (in-memory state has no later) sends every run that has ended, gaps
or not, before it returns.

A child process forked after the tracker was made gets a bridge of its own at its first
flush, in memory: the parent's runs, store and threads stay the parent's (a SQLite file
is one process's, so a tracker with a state file says so, and keeps the child's in memory;
on Redis the child's bridge shares the state, with connections of its own).
"""

import asyncio
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace.export import SpanExporter

from otel_bridge.config import REDIS_SCHEMES, Settings, unknown_settings
from otel_bridge.consumer import Unavailable
from otel_bridge.export.otlp_config import SECONDS, OtlpConfig, OtlpOptions
from otel_bridge.export.sdk_exporter import SdkSpanExporterSender
from otel_bridge.forks import after_fork_in_child, event_like, of_this_process
from otel_bridge.json_text import as_read_back
from otel_bridge.propagation import run_context
from otel_bridge.repeated_failure import Backoff, Cadence
from otel_bridge.runtime import Bridge
from otel_bridge.tracker.contract import AfterClose, at_exit, checked_labels, enriched

log = logging.getLogger(__name__)

_DEAD_LETTER_FILES = ("dead_letter", "span_dead_letter")
# Events held while the store refuses them (the export backlog is full); past it the oldest are dropped.
_MAX_HELD = 100_000
_IN_MEMORY_DEDUP_TTL = 3600.0
# `OTEL_EXPORTER_OTLP_*TIMEOUT` in seconds, as the application's own Python exporters in this process
# read the same variables (the sidecar reads the specification's milliseconds).
_AS_PYTHON_SDK = SECONDS


def _in_memory(given: frozenset[str]) -> dict[str, float]:
    """Defaults of a bridge whose state is the process's memory, but for the settings `given` by keyword
    or by variable.

    An ended run is remembered so that its events told again are duplicates, not a new run: for a
    week on disk, ~0.8 KiB a run (a worker running 100,000 runs a day would hold ~540 MiB of them); an
    hour covers the stragglers a process tells of its own runs. And its facts are kept an hour for
    `otel-bridge show`, which cannot read a tracker's memory: 80,000 runs of four events held 499 MiB,
    not 116."""
    chosen = {"dedup_ttl_seconds": _IN_MEMORY_DEDUP_TTL, "keep_finished_seconds": 0.0}
    return {
        name: value
        for name, value in chosen.items()
        if name not in given and f"OTEL_BRIDGE_{name.upper()}" not in os.environ
    }


class Scratch:
    """A directory for an in-memory tracker's dead-letter files, removed when it is left empty.

    A tracker that rejected nothing leaves nothing behind in the temporary directory, even when
    it is never closed (removed at exit then); one that kept dead letters says where they are.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="otel-tracker-"))
        self._leave = weakref.finalize(self, _leave, self.path, os.getpid())

    def leave(self) -> None:
        self._leave()


def _leave(directory: Path, owner: int) -> None:
    if os.getpid() != owner:  # a forked child's copy of the finalizer: the directory is its parent's
        return
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("what this in-memory tracker rejected, or could not send by exit, is kept in %s", directory)


class OtelTracker:
    def __init__(
        self,
        env: str,
        service_key: str,
        *,
        state: str | Path | None = None,
        meter_provider: MeterProvider | None = None,
        span_exporter: SpanExporter | None = None,
        otlp: OtlpOptions | None = None,
        batch_size: int = 100,
        flush_interval_seconds: float | None = 1.0,
        **settings: Any,
    ) -> None:
        """`span_exporter`: an OpenTelemetry SDK exporter the spans go to instead of OTLP (the tracker owns it, and
        shuts it down as it closes). `otlp`: the OTLP export's endpoint, headers, TLS files, … given in code, each
        in place of its standard `OTEL_EXPORTER_OTLP_*` variables. `settings`: any bridge setting
        (`settle_seconds`, `capture_input`, …), as `otel-bridge serve` takes them.

        A name that is no setting (or no `otlp` option) raises TypeError, as a misspelt keyword argument does."""
        if unknown := unknown_settings(settings):
            raise TypeError(f"OtelTracker: {'; '.join(unknown)}")
        self._export = OtlpConfig.in_code(otlp, _AS_PYTHON_SDK)
        self._span_exporter = span_exporter
        checked_labels(env, service_key)
        self.env, self.service_key = env, service_key
        self._memory = state is None
        shared = isinstance(state, str) and state.startswith(REDIS_SCHEMES)
        # In memory (or Redis, where no file is), the dead-letter files go to a directory of this tracker's,
        # removed if left empty; beside a state file, with it.
        self._scratch: Scratch | None = None
        if state is not None and not shared:
            files = Path(state).parent
        elif all(name in settings for name in _DEAD_LETTER_FILES):
            files = Path()  # both given: no directory of the tracker's is needed
        else:
            self._scratch = Scratch()
            files = self._scratch.path
        defaults: dict[str, Any] = {
            "state": str(state) if state is not None else ":memory:",
            "dead_letter": files / "otel-tracker-dead-letter.jsonl",
            "span_dead_letter": files / "otel-tracker-dead-spans.jsonl",
        }
        # The settings given by keyword: an in-memory default (`_in_memory`) never overrides them.
        self._given = frozenset(settings)
        if state is None:
            defaults |= _in_memory(self._given)
        self._settings = Settings(**(defaults | settings))
        for problem in self._settings.told_at_start(os.environ):
            log.warning(problem)
        self._meter_provider = meter_provider
        self.bridge = self._bridge_on(self._settings)
        # True in a child process forked from the one that started `bridge`, until it has its own.
        self._inherited = False
        # The bridges of the processes this one was forked from: kept, never closed (closing a
        # SQLite connection made before a fork is what SQLite warns against, even to close it).
        self._ancestors: list[Bridge] = []
        self._batch_size = max(batch_size, 1)
        # Past this much lag the producer's flush settles too (`_settle_if_behind`): a few settle windows.
        self._behind = max(4 * self._settings.settle_seconds, 1.0)
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._storing = threading.Lock()
        self._closed = threading.Event()
        self._after_close = AfterClose("OtelTracker")
        self.dropped = 0
        self.rejected = 0
        self._refusing()
        self._interval = flush_interval_seconds if flush_interval_seconds and flush_interval_seconds > 0 else None
        self._start_timer()
        after_fork_in_child(self._forked)
        self._forget_exit = at_exit(self, OtelTracker._close_at_exit)

    def _bridge_on(self, settings: Settings) -> Bridge:
        """A bridge on `settings`, exporting as this tracker was told to."""
        sender = None if self._span_exporter is None else SdkSpanExporterSender(self._span_exporter)
        return Bridge.opened(
            settings, trace_sender=sender, meter_provider=self._meter_provider, export=self._export
        ).start(follow=False)

    def _refusing(self) -> None:
        # While the store refuses: when a flush is to try again. A flush before then stores nothing and takes no
        # time: each emit that found the buffer full (and every flush of the application's) tried every event
        # held again, with a warning each: a producer whose tracker's disk was full took past five minutes to
        # emit 30,000 runs (now 1.7 s).
        self._refused = Backoff()  # 0.5 s doubling to 30 s
        self._refused_until = 0.0
        self._refusals = Cadence()

    def _start_timer(self) -> None:
        if self._interval is not None and not self._closed.is_set():
            threading.Thread(target=self._timer, args=(self._interval,), name="otel-tracker", daemon=True).start()

    def _forked(self) -> None:
        # The parent's bridge is left alone: its threads are gone here, its store may be mid-transaction,
        # and its runs are settled and sent by the parent. The child's starts at its first flush.
        self._inherited = True
        self._buffer = []
        self._lock, self._storing, self._closed = threading.Lock(), threading.Lock(), event_like(self._closed)
        self.dropped = self.rejected = 0
        self._refusing()
        self._after_close = AfterClose("OtelTracker")
        self._start_timer()

    def _own_bridge(self) -> Bridge:
        """The bridge of this process (called under `_storing`): after a fork, a new one, in memory."""
        if self._inherited:
            settings = self._settings
            # A state file is the parent's alone; Redis is everyone's, the child's bridge opens it anew.
            if not settings.in_memory and not settings.shared_state:
                log.error(
                    "OtelTracker: this process was forked from the one that opened the state file %s, which is "
                    "that process's alone: this process's runs are kept in memory (lost if it is killed). Make "
                    "the tracker after the fork (gunicorn post_fork, Celery worker_process_init), with a file "
                    "of its own.",
                    settings.state,
                )
                settings = settings.model_copy(update={"state": ":memory:", **_in_memory(self._given)})
            # Two processes appending to, and rotating, one dead-letter file would tangle it; and the
            # parent's scratch directory goes when the parent closes, so the child makes its own.
            files = {name: Path(getattr(settings, name)) for name in _DEAD_LETTER_FILES}
            if self._scratch is not None:
                parents, self._scratch = self._scratch.path, Scratch()
                files = {name: self._scratch.path / f.name if f.parent == parents else f for name, f in files.items()}
            settings = settings.model_copy(update={name: of_this_process(f) for name, f in files.items()})
            bridge = self._bridge_on(settings)
            self.bridge.metrics.leave_shared_provider()  # the parent's gauges read the parent's store
            self._ancestors.append(self.bridge)
            self.bridge = bridge
            self._memory = settings.in_memory
            self._inherited = False
        return self.bridge

    def emit(self, event: Mapping[str, Any]) -> None:
        if self.buffer(event):
            self.flush()

    def buffer(self, event: Mapping[str, Any]) -> bool:
        """Buffer one event without storing anything; True when the buffer is full (time to flush)."""
        if self._closed.is_set():
            self._after_close.drop()
            self.dropped += 1
            return False
        with self._lock:
            self._buffer.append(as_read_back(enriched(event, self.env, self.service_key)))
            if len(self._buffer) > _MAX_HELD + self._batch_size:  # held for long: the oldest go, a batch at a time
                self._drop_oldest()
            return len(self._buffer) >= self._batch_size and time.monotonic() >= self._refused_until

    def _drop_oldest(self) -> None:
        excess = len(self._buffer) - _MAX_HELD
        if excess > 0:
            del self._buffer[:excess]
            self.dropped += excess

    def context(
        self, workflow_id: str, step: str | None = None, attempt: int | None = None, context: Context | None = None
    ) -> Context:
        """The OpenTelemetry context of one of this tracker's runs: its root span, or `step`'s attempt (the
        first when no `attempt` is given). The application's own spans started in it (`context=` of
        `start_as_current_span`, or `opentelemetry.context.attach`) are children of that span, in the
        run's trace, sampled as the run is."""
        ratio = self._settings.trace_sample_ratio
        return run_context(self.env, self.service_key, workflow_id, step, attempt, sample_ratio=ratio, context=context)

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> None:
        """Store what is buffered (the spans follow in the background). Never raises.

        While the store refuses, what is buffered waits there until a backoff (0.5 s, doubling to 30 s) is
        over: a flush before then does nothing. `close()` tries once more whatever the wait."""
        with self._storing:
            if time.monotonic() < self._refused_until and not self._closed.is_set():
                return
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                bridge = self._own_bridge()
                report = bridge.consumer("tracker").ingest(batch)
            except Exception as exc:  # the store refused (Unavailable), or a bug: never raised into the workflow
                self._hold(batch, exc)
                return
            if self._refused_until:
                self._taken_again(len(batch))
            self._settle_if_behind(bridge)
            if report.rejected:  # each rejected event (a bad one, or one the pipeline failed on) is kept
                self.rejected += len(report.rejected)
                kept = [(r.as_dict(), batch[r.index]) for r in report.rejected]
                bridge.dead_letters.keep("tracker", kept)
                log.warning(
                    "%d events rejected (kept in %s): %s",
                    len(report.rejected),
                    bridge.dead_letters.path,
                    report.rejected[0].error,
                )

    def force_flush(self, timeout_seconds: float = 30.0) -> bool:
        """Store what is buffered, send the spans of what has ended now rather than at the end of its settle
        window, and export the metrics; wait until the backend took them all, for `timeout_seconds` at most.
        True when nothing is left to send (False: the export failed, or took longer). The tracker goes on.

        For a process about to be frozen, as a serverless function is between invocations, where the background
        threads that settle and export stop with it; or a test that looks at the spans. The OpenTelemetry SDK's
        providers have the same (`force_flush`, for the same reasons)."""
        if self._closed.is_set():
            return True
        deadline = time.monotonic() + timeout_seconds
        self.flush()
        if self.pending():  # held: the store refuses them for now (its backlog full, its disk full, Redis away)
            return False
        with self._storing:
            bridge = self._own_bridge()
            try:
                bridge.pipeline.settle_due(horizon=time.time() + self._settings.settle_seconds)
            except Exception:  # the settle thread meets the same and says so; never raised into the workflow
                log.warning("force_flush: settling failed", exc_info=True)
                return False
        bridge.drain.wake()
        while bridge.store.outbox_depth():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return bridge.export_metrics()

    def _settle_if_behind(self, bridge: Bridge) -> None:
        """Settle here, in the producer's thread, what the settle thread has left overdue.

        A producer busy on the CPU starves the settle thread: each of its SQLite calls lets go of the
        interpreter and waits up to the switch interval (5 ms) to take it back. A loop emitting 40,000
        runs left 36,550 of them unsettled, 7.8 s behind, in memory, for `close()` to settle (and with
        80,000, to lose at exit). Settling here only while it is behind, the producer pays for what its
        pace costs, as a bounded queue makes a producer wait; an idle producer's tracker settles
        in the background as before."""
        try:
            if bridge.settle_lag() > self._behind:
                bridge.pipeline.settle_due()
        except Exception:  # the settle thread meets the same and says so; never raised into the workflow
            log.debug("settling in the producer's thread failed", exc_info=True)

    def _hold(self, batch: list[dict[str, Any]], reason: Exception) -> None:
        """The store refused `batch` (`reason`: Unavailable, or a bug's exception): back into the buffer, tried
        again after the backoff; told once (a bug with its traceback), then once a minute, with what is held
        and dropped."""
        with self._lock:
            self._buffer[:0] = batch
            self._drop_oldest()
            held = len(self._buffer)
        self._refused_until = time.monotonic() + self._refused.drawn()
        if not self._refusals.failed():
            return
        if self._refusals.failures == 1:
            log.warning(
                "the store refused %s events (%s): held, and offered again after a wait, 0.5 s doubling to 30 s "
                "(told again once a minute while it lasts; past %s held, the oldest are dropped)",
                f"{held:,}", str(reason) or type(reason).__name__, f"{_MAX_HELD:,}",
                exc_info=None if isinstance(reason, Unavailable) else reason,
            )  # fmt: skip
        else:
            log.warning(
                "the store still refuses events (%d times in %.0f s): %s held, %s dropped; %s",
                self._refusals.failures, self._refusals.failing_for(), f"{held:,}", f"{self.dropped:,}", reason,
            )  # fmt: skip

    def _taken_again(self, taken: int) -> None:
        """The store took a batch after refusing: back to storing at once, and said."""
        self._refused_until = 0.0
        self._refused.worked()
        if (ended := self._refusals.recovered()) is not None:
            seconds, tries = ended
            dropped = f"{self.dropped:,} dropped in all" if self.dropped else "none dropped"
            times = "once" if tries == 1 else f"{tries} times"
            log.warning(
                "the store takes events again, after refusing them %s in %.0f s: %s stored now, %s",
                times, seconds, f"{taken:,}", dropped,
            )  # fmt: skip

    def _timer(self, interval: float) -> None:
        while not self._closed.wait(interval):
            if self.pending():
                self.flush()

    def _close_at_exit(self) -> None:
        # The application exits without having closed it: what has ended is sent, one attempt, as the
        # SDK's exporters give up at exit; a backend that is away does not hold the exit for the drain
        # timeout (10 s), retrying.
        self.close(retry_export=False)

    def close(self, retry_export: bool = True) -> None:
        """Store what is left, send what has ended, export the metrics, and stop.

        `retry_export`: False to give up at the first failed export rather than try again for up to
        `drain_timeout_seconds`."""
        if self._closed.is_set():
            return
        self._forget_exit()
        self._closed.set()
        self.flush()
        self._keep_unstored()
        if not self._inherited:  # a child that stored nothing has no bridge of its own to stop
            try:
                self.bridge.stop(final=self._memory, retry_export=retry_export)
            except Exception:  # never raised into the application, which is closing
                log.exception("closing the in-process tracker failed")
        if self._scratch is not None:
            self._scratch.leave()

    def _keep_unstored(self) -> None:
        """At close, the events the store refused to the last: kept in the dead-letter file with why, for
        `otel-bridge replay --format dead-letter` to offer again, not lost with the buffer."""
        with self._lock:
            left, self._buffer = self._buffer, []
        if not left or self._inherited:
            return
        why = {"error": "not stored: the store refused them until the tracker was closed"}
        dead_letters = self.bridge.dead_letters
        dead_letters.keep("tracker", [(why, event) for event in left])
        log.error(
            "%s events the store refused until the tracker was closed are kept in %s: `otel-bridge replay --format "
            "dead-letter` offers them again",
            f"{len(left):,}", dead_letters.path,
        )  # fmt: skip

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncOtelTracker:
    """`OtelTracker` for asyncio producers: storing runs in a worker thread, never on the event loop."""

    def __init__(self, env: str, service_key: str, **options: Any) -> None:
        self.tracker = OtelTracker(env, service_key, **options)

    async def emit(self, event: Mapping[str, Any]) -> None:
        if self.tracker.buffer(event):
            await asyncio.to_thread(self.tracker.flush)

    async def flush(self) -> None:
        await asyncio.to_thread(self.tracker.flush)

    async def force_flush(self, timeout_seconds: float = 30.0) -> bool:
        return await asyncio.to_thread(self.tracker.force_flush, timeout_seconds)

    async def pending(self) -> int:
        return self.tracker.pending()

    def context(
        self, workflow_id: str, step: str | None = None, attempt: int | None = None, context: Context | None = None
    ) -> Context:
        """As `OtelTracker.context`: no I/O, so not a coroutine."""
        return self.tracker.context(workflow_id, step, attempt, context)

    async def close(self) -> None:
        await asyncio.to_thread(self.tracker.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()
