"""Metric instruments, one MeterProvider per producer.

Each producer (serviceKey, env) is its own OTLP resource, so it gets its own
MeterProvider. Every provider has a pull reader that both the periodic OTLP export
and the Prometheus endpoint collect from, so one thread serves any number of
producers. Gauges are the SDK's; histograms (recorded once per span sent), counters
(moved by every batch) and the times things last happened are aggregated here, in
`histograms.py`, `sums.py` and `latest.py`, and joined to the SDK's data at collection.
"""

# Before any MeterProvider is made: the SDK's hook in a forked child submits to a ThreadPoolExecutor
# (its resource detectors), and that module's own hook frees, in the child, the lock the fork held.
# Hooks run in the order they were registered: a provider made first (its resource given, so nothing
# had yet imported the executor) left every forked child waiting on that lock for good.
import concurrent.futures.thread  # noqa: F401
import math
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions
from opentelemetry.metrics import Observation as ApiObservation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.resources import OTELResourceDetector
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.util.types import Attributes, AttributeValue

from otel_bridge import __version__
from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.histograms import Histograms
from otel_bridge.export.latest import Latest
from otel_bridge.export.sums import Sums
from otel_bridge.repeated_failure import RepeatedFailure

# 5 ms to 30 days: workflows sleep for days (a trial's end, a month), and the SDK default stops at 10 s.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
    1800, 3600, 7200, 21600, 43200, 86400, 172800, 345600, 604800, 1209600, 2592000,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# The HTTP semantic conventions' advice for `http.server.request.duration` (5 ms to 10 s), with what a bridge
# answers in below it (a 6-event POST: under a millisecond) and the request timeouts above.
HTTP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60,
)  # fmt: skip
# Attribute sets whose limited names are remembered (`MetricsHub._named`).
_NAMED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    kind: str  # counter | updowncounter | histogram | latest (a gauge keeping the largest value given)
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None


INSTRUMENTS: dict[str, InstrumentSpec] = {
    c.M_WORKFLOW_EXECUTION_DURATION: InstrumentSpec(
        "histogram",
        "s",
        "Workflow run time, by state: queue wait (pending) and start to end (executing)",
        DURATION_BUCKETS,
    ),
    c.M_WORKFLOW_EXECUTION_ACTIVE: InstrumentSpec("updowncounter", "{execution}", "Workflow runs now open, by state"),
    c.M_WORKFLOW_EXECUTION_ERRORS: InstrumentSpec("counter", "{error}", "Workflow runs that failed, by failing step"),
    c.M_WORKFLOW_TASK_DURATION: InstrumentSpec(
        "histogram", "s", "Step attempt duration (cached replays excluded)", DURATION_BUCKETS
    ),
    c.M_WORKFLOW_TASK_RETRIES: InstrumentSpec("counter", "{retry}", "Step retries scheduled"),
    c.M_WORKFLOW_TASK_RETRY_DELAY: InstrumentSpec(
        "histogram", "s", "Backoff before a step's retry, as the engine scheduled it", DURATION_BUCKETS
    ),
    c.M_WORKFLOW_TASK_EXHAUSTED: InstrumentSpec("counter", "{step}", "Steps whose retries were exhausted"),
    c.M_WORKFLOW_TASK_TIMEOUTS: InstrumentSpec("counter", "{timeout}", "Step timeouts exceeded"),
    c.M_WORKFLOW_SLEEP_DURATION: InstrumentSpec("histogram", "s", "Workflow sleep duration", DURATION_BUCKETS),
    c.M_WORKFLOW_STATE_DURATION: InstrumentSpec(
        "histogram", "s", "Time a workflow execution sat in one of its states", DURATION_BUCKETS
    ),
    c.M_WORKFLOW_STATE_TRANSITIONS: InstrumentSpec("counter", "{transition}", "Workflow state transitions"),
    c.M_JOB_EXECUTIONS: InstrumentSpec("counter", "{execution}", "Job executions, by result"),
    c.M_JOB_EXECUTION_DURATION: InstrumentSpec("histogram", "s", "Job execution duration", DURATION_BUCKETS),
    c.M_JOB_EXECUTION_LAST: InstrumentSpec(
        "latest", "s", "When the job last ran (Unix time), by result: the time since is how long it has not"
    ),
    c.M_JOB_RETRY_EXHAUSTED: InstrumentSpec("counter", "{job}", "Jobs whose retries were exhausted"),
    c.M_JOB_TERMINATIONS: InstrumentSpec("counter", "{job}", "Job instances terminated"),
    c.M_JOB_INSTANCE_ACTIVE: InstrumentSpec("updowncounter", "{instance}", "Continuous job instances running"),
    c.M_JOB_DEBOUNCE_FLUSH_SIZE: InstrumentSpec("histogram", "{event}", "Events per debounce flush", SIZE_BUCKETS),
    c.M_JOB_DEBOUNCE_FLUSH_DURATION: InstrumentSpec("histogram", "s", "Debounce collection window", DURATION_BUCKETS),
    c.M_JOB_TASK_SCHEDULED: InstrumentSpec("counter", "{schedule}", "Task executions scheduled, by trigger"),
    c.M_JOB_TASK_SCHEDULE_DELAY: InstrumentSpec(
        "histogram", "s", "Time from scheduling to the scheduled execution", DURATION_BUCKETS
    ),
    # The bridge's own telemetry
    c.M_BRIDGE_EVENTS_RECEIVED: InstrumentSpec("counter", "{event}", "Events received"),
    c.M_BRIDGE_EVENTS_ACCEPTED: InstrumentSpec("counter", "{event}", "Events accepted into the store"),
    c.M_BRIDGE_EVENTS_REJECTED: InstrumentSpec("counter", "{event}", "Events rejected as invalid (dead-lettered)"),
    c.M_PRODUCER_EVENTS: InstrumentSpec(
        "counter", "{event}", "This producer's events accepted into the store, by engine (duplicates not counted)"
    ),
    c.M_PRODUCER_EVENTS_AHEAD: InstrumentSpec(
        "counter",
        "{event}",
        "This producer's events accepted timestamped more than a minute ahead of the bridge's clock: one of the "
        "two clocks is wrong",
    ),
    c.M_PRODUCER_LAST_HEARD: InstrumentSpec(
        "latest",
        "s",
        "When this bridge last took an event of this producer (Unix time, the bridge's clock, kept across "
        "restarts); for a producer it expects and has never heard from, since when it has expected it",
    ),
    c.M_PRODUCER_EXPECTED_WITHIN: InstrumentSpec(
        "latest", "s", "How long this producer may go without an event reaching the bridge (expected_producers)"
    ),
    c.M_BRIDGE_EVENTS_REFUSED: InstrumentSpec(
        "counter",
        "{event}",
        "Events of batches refused for now (503 over HTTP), by reason: their sender offers them again",
    ),
    c.M_BRIDGE_EVENTS_DUPLICATE: InstrumentSpec(
        "counter", "{event}", "Events ignored as duplicates (same event id, or the same fact re-emitted)"
    ),
    c.M_BRIDGE_EVENTS_LATE: InstrumentSpec(
        "counter", "{event}", "Events that arrived after their run's trace was sent"
    ),
    c.M_BRIDGE_RUNS_INCOMPLETE: InstrumentSpec(
        "counter", "{run}", "Runs closed as incomplete: open max_open_seconds, or closed by hand (otel-bridge close)"
    ),
    c.M_BRIDGE_JOBS_PRESUMED_ENDED: InstrumentSpec(
        "counter",
        "{instance}",
        "Job instances counted active that told nothing for max_open_seconds, presumed ended (a continuous job "
        "that ends itself tells nothing)",
    ),
    c.M_BRIDGE_RUNS_KEPT_BACK: InstrumentSpec(
        "counter", "{run}", "Runs ended and never sent: left out by trace_sample_ratio, no span of them failed"
    ),
    c.M_BRIDGE_SPANS_EXPORTED: InstrumentSpec("counter", "{span}", "Spans acknowledged by the OTLP backend"),
    c.M_BRIDGE_SPANS_REJECTED: InstrumentSpec(
        "counter", "{span}", "Spans the OTLP backend refused for good (kept in the span dead-letter file)"
    ),
    c.M_BRIDGE_STREAM_ENTRIES_LOST: InstrumentSpec(
        "counter", "{entry}", "Stream entries trimmed by the producer before the bridge read them"
    ),
    c.M_BRIDGE_RUNS_SET_ASIDE: InstrumentSpec(
        "counter", "{run}", "Runs that could not be settled after several tries (kept aside with the reason)"
    ),
    c.M_BRIDGE_RUNS_UNREADABLE: InstrumentSpec(
        "counter", "{run}", "Run states this version could not read (kept aside whole, the run started afresh)"
    ),
    c.M_BRIDGE_EXPORT_FAILURES: InstrumentSpec("counter", "{failure}", "Failed OTLP export attempts"),
    c.M_BRIDGE_REQUESTS_AUTHENTICATED: InstrumentSpec(
        "counter", "{request}", "Requests by the credential they carried (its setting and place, not the secret)"
    ),
    c.M_BRIDGE_REQUESTS_UNAUTHORIZED: InstrumentSpec(
        "counter", "{request}", "Requests refused with 401: credential missing or wrong (their events not taken)"
    ),
    c.M_BRIDGE_TLS_HANDSHAKES_FAILED: InstrumentSpec(
        "counter",
        "{handshake}",
        "TLS handshakes that failed, by what it means for the producer (and TLS to a plain port)",
    ),
    c.M_BRIDGE_INGEST_DURATION: InstrumentSpec(
        "histogram", "s", "Time to decode and store one batch", DURATION_BUCKETS
    ),
    c.M_HTTP_SERVER_REQUEST_DURATION: InstrumentSpec(
        "histogram", "s", "Duration of HTTP server requests (the bridge's endpoints)", HTTP_BUCKETS
    ),
}


def shortened(value: str, max_chars: int) -> str:
    """`value` cut to `max_chars` characters, the cut marked with an ellipsis."""
    return value if len(value) <= max_chars else value[: max_chars - 1] + "…"


class NameLimiter:
    """A bounded allow-list of producer-given names: past `limit` values per key, `_OTHER`.

    Values are also bounded in length: a name is a label value on every series it
    appears on, so eight 1 MB names would make `/metrics` hundreds of megabytes.
    """

    def __init__(self, limit: int, max_chars: int = 256) -> None:
        self._limit = limit
        self._max_chars = max_chars
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, value: str) -> str:
        value = shortened(value, self._max_chars)
        known = self._seen.get(key)
        if known is not None and value in known:
            return value
        with self._lock:
            known = self._seen.setdefault(key, set())
            if value in known:
                return value
            if len(known) >= self._limit:
                return c.OVERFLOW_VALUE
            known.add(value)
            return value


@dataclass(slots=True)
class _Producer:
    provider: MeterProvider
    # None for a provider the application owns (it reads and exports it itself, histograms
    # and counters included: they go through its instruments).
    reader: InMemoryMetricReader | None
    instruments: dict[str, object]
    histograms: Histograms | None = None
    sums: Sums | None = None
    latest: Latest | None = None
    resource: SdkResource | None = None


# The gauges of the bridges that report to an application's MeterProvider (in-process trackers), by provider
# and name, each bridge's reading by its hub: the SDK hands the first instrument of a name, with its callback,
# to whoever asks for that name again, so a tracker made after another was closed reported the closed one's
# store (an error at every collection), and never its own. One instrument a name reads the hubs there now.
_SHARED_GAUGES: "weakref.WeakKeyDictionary[MeterProvider, dict[str, dict[int, Callable[[], list[ApiObservation]]]]]" = (
    weakref.WeakKeyDictionary()
)
_SHARED_GAUGES_LOCK = threading.Lock()


def _shared_gauges_lock_afresh() -> None:
    # A child forked while a parent's thread held it would wait for it for ever (its tracker's first bridge).
    global _SHARED_GAUGES_LOCK
    _SHARED_GAUGES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_shared_gauges_lock_afresh)


def _shared_gauge(
    provider: MeterProvider,
    hub: int,
    name: str,
    unit: str,
    description: str,
    observe: Callable[[], list[ApiObservation]],
) -> None:
    """`observe` as `hub`'s reading of the gauge `name` of the application's `provider`, made there once."""
    with _SHARED_GAUGES_LOCK:
        gauges = _SHARED_GAUGES.setdefault(provider, {})
        readings = gauges.get(name)
        if readings is None:
            readings = gauges[name] = {}

            def observed(
                _options: CallbackOptions, readings: dict[int, Callable[[], list[ApiObservation]]] = readings
            ) -> list[ApiObservation]:
                return _combined(name, [point for read in list(readings.values()) for point in read()])

            provider.get_meter(c.SCOPE_NAME).create_observable_gauge(name, [observed], unit, description)
        readings[hub] = observe


# How the readings of several trackers open at once on one provider make one value, by gauge (the others
# count things, and add up): two points of one attribute set, and the SDK keeps one of them.
_COMBINED: dict[str, Callable[[float, float], float]] = {
    c.M_BRIDGE_SETTLE_LAG: max,
    c.M_BRIDGE_ALIVE: min,
    c.M_BRIDGE_STATE_DISK_FREE: min,
    c.M_BRIDGE_FOLLOWER_CONNECTED: min,
    c.M_BRIDGE_BUILD_INFO: max,
    c.M_BRIDGE_STATE_SALVAGED: max,
    c.M_BRIDGE_TLS_CERTIFICATE_EXPIRATION: min,
}


def _added(one: float, other: float) -> float:
    return one + other


def _combined(name: str, points: list[ApiObservation]) -> list[ApiObservation]:
    """`points` of the gauge `name`, one per attribute set, those alike made one as `_COMBINED` says."""
    combine = _COMBINED.get(name, _added)
    values: dict[frozenset[tuple[str, AttributeValue]], tuple[float, Attributes]] = {}
    for point in points:
        key = frozenset((point.attributes or {}).items())
        known = values.get(key)
        values[key] = (point.value if known is None else combine(known[0], point.value), point.attributes)
    return [ApiObservation(value, attributes) for value, attributes in values.values()]


def _shared_gauges_gone(provider: MeterProvider, hub: int) -> None:
    """`hub`'s gauges read no more from the application's `provider` (its bridge stopped)."""
    with _SHARED_GAUGES_LOCK:
        for readings in _SHARED_GAUGES.get(provider, {}).values():
            readings.pop(hub, None)


def _with_own(data: MetricsData | None, producer: _Producer) -> MetricsData | None:
    """The SDK's collection of one producer with the bridge's own sums, histograms and latest times added (in
    its scope)."""
    own = producer.sums.metrics() if producer.sums is not None else []
    if producer.histograms is not None:
        own += producer.histograms.metrics()
    if producer.latest is not None:
        own += producer.latest.metrics()
    if not own:
        return data
    resource_metrics = list(data.resource_metrics) if data is not None else []
    if not resource_metrics:
        resource_metrics = [ResourceMetrics(producer.resource, [], "")]  # type: ignore[arg-type]
    first = resource_metrics[0]
    scopes = list(first.scope_metrics)
    at = next((i for i, s in enumerate(scopes) if s.scope.name == c.SCOPE_NAME), None)
    if at is None:
        scopes.append(ScopeMetrics(InstrumentationScope(c.SCOPE_NAME), own, ""))
    else:
        scopes[at] = ScopeMetrics(scopes[at].scope, [*scopes[at].metrics, *own], scopes[at].schema_url)
    resource_metrics[0] = ResourceMetrics(first.resource, scopes, first.schema_url)
    return MetricsData(resource_metrics)


def _exemplar_context(trace_id: bytes, span_id: bytes) -> Context:
    span_context = SpanContext(
        int.from_bytes(trace_id), int.from_bytes(span_id), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


class MetricsHub:
    """Records observations into per-producer MeterProviders and collects them all."""

    def __init__(
        self,
        max_names: int = 200,
        bridge_env: str = "",
        max_producers: int = 100,
        max_name_chars: int = 256,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        # An application's own MeterProvider (the in-process tracker): every measurement joins its metrics.
        self._shared = _Producer(meter_provider, None, {}) if meter_provider is not None else None
        # Gauges every producer reports, read per producer at collection: name -> (unit, description, read).
        self._producer_gauges: dict[str, tuple[str, str, Callable[[Resource], list[tuple[float, dict[str, str]]]]]] = {}
        self._names = NameLimiter(max_names, max_name_chars)
        # Attributes as given -> as recorded (names limited): the limiter's answer for a name never
        # changes once given, and a batch records the same few attribute sets many times.
        self._named: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
        self._max_name_chars = max_name_chars
        self._max_producers = max_producers
        self._producers: dict[Resource | None, _Producer] = {}
        self._lock = threading.Lock()
        self._bridge_env = bridge_env
        # The writer of every series this hub exports: the SDK's id of this process (a random UUID a process, or
        # OTEL_RESOURCE_ATTRIBUTES' `service.instance.id`), the one its own telemetry carries.
        self._instance_id = str(SdkResource.create({}).attributes.get(c.SERVICE_INSTANCE_ID) or uuid.uuid4())

    def _producer(self, resource: Resource | None) -> _Producer:
        if self._shared is not None:
            return self._shared
        producer = self._producers.get(resource)
        if producer is not None:
            return producer
        if resource is not None:
            limit = self._max_name_chars
            resource = Resource(shortened(resource.service, limit), shortened(resource.env, limit))
        with self._lock:
            if resource is not None and resource not in self._producers and len(self._producers) > self._max_producers:
                # Each producer is a MeterProvider: random serviceKeys must not grow them without end.
                resource = Resource(c.OVERFLOW_VALUE, c.OVERFLOW_VALUE)
            producer = self._producers.get(resource)
            if producer is None:
                producer = self._producers[resource] = self._new_producer(resource)
        return producer

    def _new_producer(self, resource: Resource | None) -> _Producer:
        if resource is None:
            # The bridge's own telemetry: standard detection (OTEL_RESOURCE_ATTRIBUTES, SDK info), and
            # the service's name from OTEL_SERVICE_NAME (or the attributes) when one is given, as the SDK
            # names an application: two bridges (regions, a tracker in an application) can be told apart.
            named = OTELResourceDetector().detect().attributes.get(c.SERVICE_NAME)
            attributes = {c.SERVICE_NAME: str(named or c.BRIDGE_SERVICE_NAME), c.SERVICE_VERSION: __version__}
            if self._bridge_env:
                attributes[c.DEPLOYMENT_ENVIRONMENT_NAME] = self._bridge_env
            sdk_resource = SdkResource.create(attributes)
        else:
            # A producer's resource says what its spans say, and which process wrote its series (OTLP's single
            # writer): the sidecars of one service's pods, replicas, or the service's processes each with an
            # in-process tracker all tell the same producer, and streams alike, each cumulative, were read by a
            # backend as one going up and down (the Collector's Prometheus exporter turns the id into `instance`,
            # as a scrape of each bridge's /metrics labels it).
            sdk_resource = SdkResource(
                {
                    c.SERVICE_NAME: resource.service,
                    c.DEPLOYMENT_ENVIRONMENT_NAME: resource.env,
                    c.SERVICE_INSTANCE_ID: self._instance_id,
                }
            )
        reader = InMemoryMetricReader()
        provider = MeterProvider(resource=sdk_resource, metric_readers=[reader])
        producer = _Producer(provider, reader, {}, Histograms(), Sums(), Latest(), sdk_resource)
        if resource is not None:
            for name, spec in self._producer_gauges.items():
                self._observe(producer, resource, name, *spec)
        return producer

    def _observe(
        self,
        producer: _Producer,
        resource: Resource,
        name: str,
        unit: str,
        description: str,
        read: Callable[[Resource], list[tuple[float, dict[str, str]]]],
    ) -> None:
        def observe(_options: CallbackOptions) -> list[ApiObservation]:
            return [ApiObservation(value, attributes) for value, attributes in read(resource)]

        producer.provider.get_meter(c.SCOPE_NAME).create_observable_gauge(name, [observe], unit, description)

    def producer_gauge(
        self, name: str, unit: str, description: str, read: Callable[[Resource], list[tuple[float, dict[str, str]]]]
    ) -> None:
        """A gauge each producer reports about itself, read at collection (`read(producer)` -> values)."""
        self._producer_gauges[name] = (unit, description, read)
        with self._lock:
            known = [(r, p) for r, p in self._producers.items() if r is not None]
        for resource, producer in known:
            self._observe(producer, resource, name, unit, description, read)

    def ensure_producer(self, resource: Resource) -> None:
        """Make sure a producer reports its gauges even before it records anything (after a restart)."""
        self._producer(resource)

    def _instrument(self, producer: _Producer, name: str) -> object:
        instrument = producer.instruments.get(name)
        if instrument is not None:
            return instrument
        # Ingest threads and the settle thread record at once: create each instrument exactly once.
        with self._lock:
            instrument = producer.instruments.get(name)
            if instrument is not None:
                return instrument
            spec = INSTRUMENTS[name]
            meter = producer.provider.get_meter(c.SCOPE_NAME)
            if spec.kind == "counter":
                instrument = meter.create_counter(name, spec.unit, spec.description)
            elif spec.kind == "updowncounter":
                instrument = meter.create_up_down_counter(name, spec.unit, spec.description)
            elif spec.kind == "latest":  # an application's provider: its own gauge, the last value recorded
                instrument = meter.create_gauge(name, spec.unit, spec.description)
            else:
                instrument = meter.create_histogram(
                    name, spec.unit, spec.description, explicit_bucket_boundaries_advisory=spec.buckets
                )
            producer.instruments[name] = instrument
        return instrument

    def record(self, observations: Iterable[Observation]) -> None:
        # A batch's additions to one series are summed first: a batch moves the same few series many
        # times (a +1 and a -1 of the active gauge for every run that starts and ends in it), and
        # each record costs a lookup and a lock in `Sums`, or ~10 µs in the SDK's instruments of an
        # application's own MeterProvider.
        sums: dict[tuple[Resource | None, str, tuple[tuple[str, str], ...]], float] = {}
        latest: dict[tuple[Resource | None, str, tuple[tuple[str, str], ...]], float] = {}
        for o in observations:
            kind = INSTRUMENTS[o.instrument].kind
            if kind == "histogram" or (o.trace_id and o.span_id):
                self._record(o.resource, o.instrument, o.attributes, o.value, o.trace_id, o.span_id)
            elif kind == "latest":  # the latest time: only the largest of the batch can count
                series = (o.resource, o.instrument, o.attributes)
                if o.value > latest.get(series, -math.inf):
                    latest[series] = o.value
            else:
                series = (o.resource, o.instrument, o.attributes)
                sums[series] = sums.get(series, 0) + o.value
        for (resource, name, attributes), value in (*sums.items(), *latest.items()):
            self._record(resource, name, attributes, value, None, None)

    def _record(
        self,
        resource: Resource | None,
        name: str,
        attributes: tuple[tuple[str, str], ...],
        value: float,
        trace_id: bytes | None,
        span_id: bytes | None,
    ) -> None:
        producer = self._producer(resource)
        named = self._named.get(attributes)
        if named is None:
            bounded = c.BOUNDED_NAME_ATTRIBUTES
            named = tuple((key, self._names(key, v) if key in bounded else v) for key, v in attributes)
            if len(self._named) >= _NAMED_KEPT:
                self._named.clear()  # unbounded names from a producer must not grow it without end
            self._named[attributes] = named
        spec = INSTRUMENTS[name]
        if spec.kind == "histogram" and producer.histograms is not None:
            assert spec.buckets is not None
            producer.histograms.record(name, spec.unit, spec.description, spec.buckets, named, value, trace_id, span_id)
            return
        if spec.kind == "latest" and producer.latest is not None:
            producer.latest.observe(name, spec.unit, spec.description, named, value)
            return
        if spec.kind not in ("histogram", "latest") and producer.sums is not None:
            # Counters keep no exemplars: only histograms (durations, one per span) link to traces.
            producer.sums.add(name, spec.unit, spec.description, spec.kind == "counter", named, value)
            return
        instrument = self._instrument(producer, name)
        context = _exemplar_context(trace_id, span_id) if trace_id and span_id else None
        if spec.kind == "histogram":
            instrument.record(value, dict(named), context=context)  # type: ignore[attr-defined]
        elif spec.kind == "latest":
            instrument.set(value, dict(named))  # type: ignore[attr-defined]
        else:
            instrument.add(value, dict(named), context=context)  # type: ignore[attr-defined]

    def bridge(self, instrument: str, value: float = 1, **attributes: str) -> None:
        """Record one of the bridge's own measurements."""
        if value:
            self.record([Observation(instrument, value, tuple(attributes.items()), None)])  # type: ignore[arg-type]

    def bridge_histogram(self, instrument: str, value: float, attributes: tuple[tuple[str, str], ...]) -> None:
        """Record one of the bridge's own durations, its attributes made once by the caller: once a request, so
        without the batch's summing that `record` does."""
        self._record(None, instrument, attributes, value, None, None)

    def start_bridge_counters(self, names: Iterable[str], **attributes: str) -> None:
        """Create the bridge's own counters at zero, so "no failures yet" is a 0, not a missing series."""
        for name in names:
            self._record(None, name, tuple(attributes.items()), 0, None, None)

    def gauge(self, name: str, unit: str, description: str, read: Callable[[], float]) -> None:
        """An observable gauge of the bridge itself, read at each collection.

        A read that fails (the store it asks is down) gives no point this time, told once in the
        log rather than by the SDK's traceback at every collection and scrape.
        """
        self.gauges(name, unit, description, lambda: [(read(), {})])

    def gauges(
        self, name: str, unit: str, description: str, read: Callable[[], list[tuple[float, dict[str, str]]]]
    ) -> None:
        """An observable gauge of the bridge itself, a series per attribute set: `read()` -> [(value, attributes)]."""
        failures = RepeatedFailure(f"reading the gauge {name}")

        def observe() -> list[ApiObservation]:
            points = failures.attempt(read)
            return [] if points is None else [ApiObservation(value, attributes) for value, attributes in points]

        if self._shared is not None:
            _shared_gauge(self._shared.provider, id(self), name, unit, description, observe)
            return
        meter = self._producer(None).provider.get_meter(c.SCOPE_NAME)
        meter.create_observable_gauge(name, [lambda _options: observe()], unit, description)

    def collect(self) -> list[MetricsData]:
        with self._lock:
            producers = list(self._producers.values())
        out = []
        for producer in producers:
            if producer.reader is None:
                continue
            data = _with_own(producer.reader.get_metrics_data(), producer)
            if data is not None and data.resource_metrics:
                out.append(data)
        return out

    def shutdown(self) -> None:
        with self._lock:
            producers = list(self._producers.values())
        for producer in producers:
            producer.provider.shutdown()
        self.leave_shared_provider()

    def leave_shared_provider(self) -> None:
        """The application's own provider goes on, without this hub's gauges (its bridge stopped, or left
        behind in a forked child: its store is the parent's)."""
        if self._shared is not None:
            _shared_gauges_gone(self._shared.provider, id(self))
