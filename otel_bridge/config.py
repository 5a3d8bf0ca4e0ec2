"""Every setting of otel-bridge, declared once.

The CLI flags (`--settle-seconds`), the environment variables
(`OTEL_BRIDGE_SETTLE_SECONDS`) and README's configuration table are all made
from this model. Standard OpenTelemetry variables (`OTEL_EXPORTER_OTLP_*`,
`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL`) are read where the
SDK defines them, and two of them are mirrored here for their defaults.
"""

import difflib
import os
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from otel_bridge.correlate.overview import seconds_of
from otel_bridge.tokens import HEADER_NAME
from otel_bridge.urls import encrypted_key_unsaid, parse_error, sentinels_of, without_secrets

DAY = 86_400.0


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What an HTTP URL starts with (the engine's API, an OTLP/HTTP endpoint, a tracker endpoint).
HTTP_SCHEMES = ("http://", "https://")
# A Redis whose primary Sentinels watch (redis_client.py reads the URL).
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
# A state that names Redis rather than a SQLite file, and what a Redis stream's URL starts with.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES)
# Each URL setting, the schemes it may start with: unchecked, a wrong one failed at start-up as a
# traceback (the stream) or was logged and never followed (the WebSocket) while the bridge ran on.
_URL_SCHEMES = {
    "stream_url": REDIS_SCHEMES,
    "ws_url": ("ws://", "wss://"),
    "ws_api_url": HTTP_SCHEMES,
    "runtime_v2_url": ("postgresql://", "postgres://"),
}


# The paths the bridge answers on besides the tracker endpoint's (`receivers/http.py`): a `path` among
# them would take their requests (a GET of `/metrics` answered 405, and Prometheus scraped nothing).
OWN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/runs", "/v1/jobs")

# The longest time a setting may give (a century: nanoseconds since 1970 plus it still fit in 63 bits).
_CENTURY_SECONDS = 100 * 365 * 86_400


class Settings(BaseSettings):
    # `inf` and `nan` are no settings: an infinite time failed the start as a traceback where the bridge
    # counts it in nanoseconds (a run that should never close takes a long time, not an infinite one).
    model_config = SettingsConfigDict(
        env_prefix="OTEL_BRIDGE_", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP receiver listens on: `0.0.0.0` every IPv4 address, `::` every IPv6 and "
        "IPv4 address (dual stack), empty every address of both families, one socket each.",
    )
    port: int = Field(4380, ge=0, le=65535, description="Port of the HTTP receiver.")
    path: str = Field(
        "/v1/events",
        description="Path of the tracker endpoint producers POST batches to (with or without a trailing slash; a "
        "leading one is added when missing).",
    )
    state: str = Field(
        "otel-bridge.db",
        description="State store: a SQLite file path (embedded; a file, not a device: `:memory:` keeps nothing, "
        "in a temporary file SQLite removes as it makes it), "
        "or a `redis://` URL shared by several replicas (`redis+sentinel://host:26379/SERVICE` for a primary "
        "Sentinels watch).",
    )
    durability: Literal["process", "full"] = Field(
        "process",
        description="SQLite state: `process` keeps every answered batch through a crash of the bridge (WAL, "
        "synchronous=NORMAL); `full` also through power loss, at an fsync per batch.",
    )
    hot_runs: int = Field(
        20_000,
        ge=0,
        description="SQLite state: runs kept in memory between batches (least recently used out); "
        "the rest are read from the store when their next event comes.",
    )
    hot_facts: int = Field(
        150_000,
        gt=0,
        description="SQLite state: most facts (events) the runs kept in memory hold together, ~0.8 KiB each "
        "(least recently used out; the run being worked on stays, however large).",
    )
    wait_replicas: int = Field(
        0,
        ge=0,
        description="Redis state: replicas of the Redis primary that must hold a batch before it is answered "
        "(Redis WAIT, at most half of store_timeout_seconds; else 503, and the producer sends it again), so "
        "that a failover cannot lose it; 0 answers once the primary has it.",
    )
    claim_after_seconds: float = Field(
        60.0,
        gt=0,
        description="Redis state: spans another replica took for export but never acknowledged are claimed after this.",
    )
    settle_seconds: float = Field(
        1.0,
        ge=0,
        description="Seconds after a run's first unsent event before its ended spans are sent (lets stragglers join).",
    )
    gap_grace_seconds: float = Field(
        15.0,
        ge=0,
        description="An ended run whose events show gaps (a listed step never seen, an attempt missing, "
        "a completed run's step without its end) "
        "waits this long for them before its trace is sent.",
    )
    cancel_grace_seconds: float = Field(
        3600.0,
        ge=0,
        description="A run its engine told cancelled without stopping it (Phase-10: its steps go on, then it is "
        "told completed or failed) stays open this long for what follows; if nothing ends it, "
        "it ends at its cancellation.",
    )
    max_open_seconds: float = Field(
        7 * DAY,
        gt=0,
        description="A run open this long (since the latest of: the bridge first heard of it, its latest event, "
        "a pause of it was told to end — a run that keeps telling, or asleep for a month, is going on, not stuck) "
        "is closed as incomplete; a job instance counted active that has told nothing this long is presumed ended.",
    )
    overdue_grace_seconds: float = Field(
        300.0,
        ge=0,
        description="A paused run whose resumeAt passed this long ago (or queued and not started as long) is overdue.",
    )
    overdue_tasks: Annotated[list[str], NoDecode] = Field(
        [],
        description="Task jobs, by name (`*`: all), that turn overdue as a debounce does when their `scheduledAt` "
        "passes with no run told (the same grace): name those whose every alarm tells its run. Unnamed, a task "
        "is not: one that ends itself at its alarm (`ctx.clear()`, `ctx.terminate()`) tells nothing, as a lost "
        "alarm (comma-separated in the environment).",
    )
    cleared_debounces: Annotated[list[str], NoDecode] = Field(
        [],
        description="Debounce jobs, by name (`*`: all), whose clients `clear()` them: a `flushAt` passing with no "
        "flush told is no lost alarm for them, as a cleared debounce tells nothing (comma-separated in the "
        "environment). Unnamed, a debounce is judged: its flush always tells.",
    )
    silent_executing: Annotated[dict[str, float], NoDecode] = Field(
        {},
        description="Workflows, by name (`*`: every other), and how long a run of each may execute telling "
        "nothing (`checkout=15m,*=2h`: `90s`, `15m`, `2h`, `3d` or seconds): a run executing and silent past it "
        "(its Durable Object or worker died mid-step) is overdue once `overdue_grace_seconds` has passed too, "
        "as a paused run past its resumeAt. Unnamed, an executing run never is: a step may run for hours.",
    )
    silent_continuous: Annotated[dict[str, float], NoDecode] = Field(
        {},
        description="Continuous jobs, by name (`*`: every other), and how long an instance of each may go without "
        "a run (`tokenRefresher=15m`, in the same forms): an instance counted active that has not run (or started) "
        "for that long (its alarm lost) is overdue once `overdue_grace_seconds` has passed too, as a debounce past "
        "its flushAt. Unnamed, a continuous job never is: it tells no next run.",
    )
    expected_producers: Annotated[dict[str, float], NoDecode] = Field(
        {},
        description="Producers, as serviceKey@env, and how long each may go without an event reaching the bridge "
        "(`billing@production=15m,shop@production=1h`, in the same forms): one silent past it, or never heard from "
        "that long since it was first expected (both kept in the store across restarts), raises ProducerNotHeard. "
        "Unnamed, a producer is judged against its own past week alone (ProducerSilent), so one that never sends is "
        "never told.",
    )
    keep_finished_seconds: float = Field(
        3600.0, ge=0, description="How long a finished run stays in the store with its events, for `otel-bridge show`."
    )
    dedup_ttl_seconds: float = Field(
        7 * DAY, gt=0, description="How long event ids (and closed runs) are remembered to drop duplicates."
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest request body, also enforced after gzip decompression."
    )
    max_batch_events: int = Field(
        10_000, gt=0, description="Most events in one batch; a larger batch gets 413 (the engine sends 100)."
    )
    max_rejections_listed: int = Field(
        100, ge=0, description="Rejected events listed one by one in an answer; the rest are counted."
    )
    max_dead_letter_bytes_per_batch: int = Field(
        1024 * 1024,
        gt=0,
        description="Most bytes one batch may write to the dead-letter file; past it, one line counts the rest.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="Largest request head (request line and headers), and trailers after a chunked body; past it, 431.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A connection whose request head is not complete in this time is closed (serving HTTPS, one not "
        "through its TLS handshake too).",
    )
    api_key: SecretStr | None = Field(
        None, description="Shared secret producers must send in the `api_key_header` header (off when unset)."
    )
    api_key_header: str = Field("X-API-KEY", description="Header that carries `api_key`.")
    retiring_api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],
        description="While rotating `api_key`: earlier keys still accepted until every producer sends the new "
        "one (comma-separated); `otel_bridge_requests_authenticated_total` counts the requests of each.",
    )
    producer_api_keys: Annotated[list[tuple[str, SecretStr]], NoDecode] = Field(
        [],
        description="Keys that each let one producer post its own events only (`serviceKey=key`, comma-separated; "
        "a serviceKey named twice has two, for rotating): an event of another serviceKey is rejected. Sent as "
        "`api_key` is, or as a bearer token; it lists and closes that producer's runs alone, and `/metrics` takes "
        "the bridge's own credential.",
    )
    metrics_auth: bool = Field(
        False, description="Put `/metrics` behind the same credential as ingest (open by default, for scrapers)."
    )
    bearer_token: SecretStr | None = Field(
        None, description="Token accepted as `Authorization: Bearer …` (off when unset)."
    )
    retiring_bearer_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        [], description="While rotating `bearer_token`: earlier tokens still accepted (comma-separated)."
    )
    sleep_spans: bool = Field(True, description="Show each sleep as a `sleep` span (besides the root's sleep events).")
    capture_input: bool = Field(False, description="Record workflow inputs on the root span (may hold personal data).")
    max_input_bytes: int = Field(2048, gt=0, description="Captured input JSON is truncated to this many characters.")
    redact_keys: Annotated[list[str], NoDecode] = Field(
        ["password", "secret", "token", "authorization", "apiKey"],
        description="Input keys whose values are replaced by [REDACTED] (comma-separated in the environment).",
    )
    attribute_value_limit: int = Field(
        4096,
        gt=0,
        # The bridge's own variable first, then the specification's for spans, then for every signal.
        validation_alias=AliasChoices(
            "OTEL_BRIDGE_ATTRIBUTE_VALUE_LIMIT",
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "attribute_value_limit",
        ),
        description="String span attributes are truncated to this length (unset, the SDK's "
        "`OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` or `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` is read).",
    )
    max_name_chars: int = Field(
        256, gt=1, description="Span names and metric label values (names, service, env) are cut to this length."
    )
    max_span_events: int = Field(
        128,
        gt=1,
        # The bridge's own variable first, then the specification's.
        validation_alias=AliasChoices("OTEL_BRIDGE_MAX_SPAN_EVENTS", "OTEL_SPAN_EVENT_COUNT_LIMIT", "max_span_events"),
        description="Most events a span carries (a run's pauses, cached steps, late events): past it, the first "
        "and the last half are kept and the rest counted as dropped (unset, `OTEL_SPAN_EVENT_COUNT_LIMIT` is read).",
    )
    max_span_links: int = Field(
        128,
        gt=0,
        validation_alias=AliasChoices("OTEL_BRIDGE_MAX_SPAN_LINKS", "OTEL_SPAN_LINK_COUNT_LIMIT", "max_span_links"),
        description="Most links a span carries (the attempt a retry follows, the triggers a run follows from): "
        "past it, the first are kept and the rest counted as dropped (unset, `OTEL_SPAN_LINK_COUNT_LIMIT` is read).",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of runs sent as they go, chosen by trace id as the SDK's `traceidratio` sampler "
        "chooses; the others are sent whole at their end when any span of them failed or they never ended "
        "(`max_open_seconds`), else not at all, and "
        "counted in the metrics all the same (unset, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` are read).",
    )
    max_names: int = Field(
        200, gt=0, description="Distinct workflow/step/job names per metric attribute before `_OTHER` is used."
    )
    max_producers: int = Field(
        100, gt=0, description="Distinct (serviceKey, env) metric resources before `_OTHER` is used."
    )
    dead_letter: Path = Field(
        Path("dead-letter.jsonl"),
        description="JSONL file that keeps rejected events (a file: rotated by renaming it, not a device such as "
        "/dev/null, which is refused).",
    )
    dead_letter_max_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Dead-letter file size before rotation.")
    dead_letter_backups: int = Field(5, ge=1, description="Rotated dead-letter files kept.")
    span_dead_letter: Path = Field(
        Path("dead-spans.jsonl"),
        description="JSONL file that keeps spans the OTLP backend refused for good, with its reason (and, "
        "with the state in memory, those not sent by exit).",
    )
    max_outbox_spans: int = Field(
        1_000_000,
        gt=0,
        description="Spans waiting for export before new batches are refused with 503 + Retry-After (backpressure).",
    )
    store_timeout_seconds: float = Field(
        5.0, gt=0, description="Longest wait for the store on ingest before answering 503."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request body not fully received in this time gets 408 (slow clients)."
    )
    limit_concurrency: int = Field(
        1000,
        gt=0,
        description="Open connections (idle ones kept alive too) and requests at once; past it, a request is answered "
        "503 + Retry-After unread, its connection closed (counted as refused, reason connections_at_limit).",
    )
    keep_alive_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a connection is kept open, idle, for the client's next request (uvicorn's default). "
        "Behind a load balancer that keeps its connections to the bridge longer (AWS's ALB 60 s, Google's 600 s, an "
        "nginx ingress 60 s), set it above the balancer's: it otherwise now and then sends a batch down a connection "
        "the bridge is closing, and answers the producer 502. An idle connection counts in limit_concurrency.",
    )
    tls_certfile: Path | None = Field(None, description="Serve HTTPS with this PEM certificate (chain).")
    tls_keyfile: Path | None = Field(None, description="Private key of `tls_certfile`.")
    tls_keyfile_password: SecretStr | None = Field(
        None,
        description="Pass phrase of `tls_keyfile` when it is encrypted (best in the environment: a flag shows in "
        "the process list). Without it an encrypted key is refused saying so, not asked for on the terminal.",
    )
    tls_reload_seconds: float = Field(
        30.0,
        gt=0,
        description="Look at `tls_certfile` and `tls_keyfile` this often: once renewed (cert-manager, certbot), new "
        "connections are served the new certificate, without a restart.",
    )
    # Bounded as SQLite's LIMIT takes it, and far past what any backend takes in one request.
    export_batch_size: int = Field(
        512,
        gt=0,
        le=1_000_000,
        # The bridge's own variable first, then the specification's.
        validation_alias=AliasChoices(
            "OTEL_BRIDGE_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "export_batch_size"
        ),
        description="Spans per OTLP export request (unset, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` is read).",
    )
    export_concurrency: int = Field(
        2, ge=1, le=16, description="OTLP export requests in flight at once (a distant backend drains faster)."
    )
    max_export_bytes: int = Field(
        3_500_000, gt=0, description="Bytes per OTLP export request (below gRPC's default 4 MiB message limit)."
    )
    export_unready_seconds: float | None = Field(
        None,
        gt=0,
        description="Set, `/readyz` says not ready once trace export has failed for this long (a load balancer "
        "then sends producers to a replica whose export works). Unset, a failing export is told under `/readyz`'s "
        "`warnings` only: batches are still taken and wait in the outbox, where a readiness probe that followed "
        "the backend took the bridge (a sidecar: the whole pod) out of service in the very outage the outbox is for.",
    )
    disk_reserve_mib: float = Field(
        16.0,
        ge=0,
        le=1024 * 1024,
        description="SQLite state: room kept beside the state file (STATE.reserve), given back when its disk is "
        "full so that what waits for export can still leave; kept again once there is room (0: none).",
    )
    salvage_at_start: bool = Field(
        True,
        description="SQLite state: a state file found damaged (a page SQLite cannot read) at start, or by a "
        "bridge, `check` or a listing before it (STATE.needs-salvage), is salvaged before the bridge serves: what "
        "reads is copied into a fresh file, the damaged one kept beside, and the events the damage rejected are "
        "taken again from the dead-letter file. Off, such a start refuses and names `salvage-state`.",
    )
    salvage_keep_damaged: int = Field(
        2,
        ge=1,
        description="SQLite state: damaged state files a salvage keeps beside the state (STATE.damaged-<UTC "
        "time>), the latest: each as large as the state was, the oldest deleted as a salvage keeps another, so "
        "that a disk that damages the file again and again does not fill with them.",
    )
    stuck_after_seconds: float = Field(
        300.0,
        gt=0,
        description="`/healthz` says not alive once one of the bridge's own loops has been in one pass this long "
        "(a settle slice, an export, a checkpoint): what a restart would mend.",
    )
    export_log_interval_seconds: float = Field(
        60.0, gt=0, description="While export fails, how often the log says so again (once at first, once on recovery)."
    )
    settle_attempts: int = Field(
        5, gt=0, description="A run that cannot be settled after this many tries is set aside (kept, counted)."
    )
    export_delay_ms: float = Field(
        5000,
        ge=0,
        validation_alias=AliasChoices("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BRIDGE_EXPORT_DELAY_MS", "export_delay_ms"),
        description="Longest wait between outbox polls in ms (`OTEL_BSP_SCHEDULE_DELAY`); new spans wake it at once.",
    )
    metric_export_interval_ms: float = Field(
        60000,
        gt=0,
        validation_alias=AliasChoices(
            "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_BRIDGE_METRIC_EXPORT_INTERVAL_MS", "metric_export_interval_ms"
        ),
        description="Interval of the periodic OTLP metric export in ms (`OTEL_METRIC_EXPORT_INTERVAL`).",
    )
    drain_timeout_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM (or a tracker's close), how long to keep exporting before exiting, "
        "once the last settling is done.",
    )
    log_level: str = Field(
        "INFO",
        description="Log level of the bridge: DEBUG, INFO, WARNING, ERROR or CRITICAL (each HTTP request "
        "the bridge makes is logged at DEBUG only).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as JSON objects, one a line (`time`, `level`, `logger`, `message`, "
        "`exception`), for a log pipeline.",
    )
    trace_url: str | None = Field(
        None,
        description="A run's trace in the tracing UI, `{trace_id}` replaced (Jaeger: "
        "`http://localhost:16686/trace/{trace_id}`): linked from `runs`, `show` and `GET /v1/runs`.",
    )
    stream_url: str | None = Field(
        None,
        description="Consume the event-sourced runtime's Redis stream at this `redis://` URL (beside HTTP).",
    )
    stream_key: str = Field("workflow:events:global", description="The runtime's stream key.")
    stream_group: str = Field("otel-bridge", description="Consumer group the bridges share on the stream.")
    stream_consumer: str | None = Field(
        None,
        description="This bridge's consumer name in the group (default: `host:port`, the host's name and the "
        "bridge's port; one name per bridge).",
    )
    stream_claim_after_seconds: float = Field(
        10.0,
        gt=0,
        description="Stream entries another consumer read but never acknowledged are claimed after this "
        "(below gap_grace_seconds, so a dead bridge's entries still join their runs).",
    )
    stream_service_name: str = Field(
        "event-sourced", min_length=1, description="`service.name` of the stream's runs (the stream does not say)."
    )
    stream_env: str = Field(
        "production", min_length=1, description="`deployment.environment.name` of the stream's runs."
    )
    stream_terminal_states: Annotated[list[str], NoDecode] = Field(
        ["completed", "failed", "cancelled", "terminated"],
        description="States that end an execution (case-insensitive; comma-separated in the environment).",
    )
    ws_url: str | None = Field(
        None, description="Follow the Phase-10 engine's WebSocket at this URL (`ws://HOST:PORT/ws/stream`)."
    )
    ws_api_url: str | None = Field(
        None,
        description="The Phase-10 REST API (`http://HOST:PORT`): timelines of runs a disconnection interrupted.",
    )
    ws_workspace_id: str | None = Field(None, description="`X-Workspace-Id` sent to the Phase-10 engine.")
    ws_timeline_at_end: bool = Field(
        True,
        description="With ws_api_url: fetch each execution's timeline as the WebSocket tells it completed or failed,"
        " for the retries only a timeline tells (counted in workflow.task.retries); the run waits for it up to"
        " gap_grace_seconds. One GET per execution.",
    )
    ws_service_name: str = Field(
        "phase10", min_length=1, description="`service.name` of the WebSocket's runs (the engine does not say)."
    )
    ws_env: str = Field("production", min_length=1, description="`deployment.environment.name` of its runs.")
    runtime_v2_url: str | None = Field(
        None,
        description="Follow the runtime v2's runs in its PostgreSQL tables at this `postgresql://` URL "
        "(read only: `workflow_runs`, `workflow_run_steps`, `workflow_run_waits`, `workflow_action_invocations`, "
        "`workflow_run_logs`, `workflow_definitions`; TLS and credentials as libpq reads them: "
        "`?sslmode=verify-full&sslrootcert=…`, or `PGPASSWORD`, `PGSSLMODE`…).",
    )
    runtime_v2_poll_seconds: float = Field(2.0, gt=0, description="How often the runtime v2's tables are read.")
    runtime_v2_overlap_seconds: float = Field(
        15.0,
        ge=0,
        description="Each read goes back this far past the last change read: a row its writer dated earlier "
        "than it committed (clocks of several workers) is still met.",
    )
    runtime_v2_look_back_seconds: float = Field(
        3600.0,
        ge=0,
        description="At the first start (no mark kept with the state yet): the runs changed this long ago are read.",
    )
    runtime_v2_log_level: Literal["debug", "info", "warn", "error", "none"] = Field(
        "warn",
        description="The lines of a run's log (`workflow_run_logs`) shown as events of its spans, from this level "
        "up; at `warn`, also what its operators did (a cancel, a resume, a retry, with their reason), which the "
        "runtime logs at INFO. At `info`, also the runtime's line at every step's start and end.",
    )
    runtime_v2_service_name: str = Field(
        "workflow-runtime-v2", min_length=1, description="`service.name` of the runtime v2's runs."
    )
    runtime_v2_env: str = Field("production", min_length=1, description="`deployment.environment.name` of its runs.")

    @property
    def in_memory(self) -> bool:
        """State that goes with the process (SQLite's `:memory:`, the in-process tracker's default)."""
        return self.state == ":memory:"

    @property
    def shared_state(self) -> bool:
        """State in Redis, shared by every process given it (otherwise a SQLite file, one process's)."""
        return self.state.startswith(REDIS_SCHEMES)

    @model_validator(mode="after")
    def _sampler_of_the_sdk(self) -> "Settings":
        if "trace_sample_ratio" not in self.model_fields_set:
            ratio = sampler_ratio(os.environ)
            # Through __dict__: assigning would validate the whole model again.
            self.__dict__["trace_sample_ratio"] = 1.0 if ratio is None else ratio
        return self

    def told_at_start(self, environ: Mapping[str, str]) -> list[str]:
        """What to tell once logging is set up: `OTEL_BRIDGE_*` variables that are no setting, and the SDK's
        sampler variables asking for what the bridge cannot follow (read only when `trace_sample_ratio`
        was not given: then every run is sent)."""
        told = unknown_variables(environ)
        if "trace_sample_ratio" not in self.model_fields_set and sampler_ratio(environ) is None:
            sampler, arg = environ.get("OTEL_TRACES_SAMPLER", ""), environ.get("OTEL_TRACES_SAMPLER_ARG", "")
            asked = f"{sampler} (OTEL_TRACES_SAMPLER_ARG={arg})" if arg else sampler
            told.append(
                f"OTEL_TRACES_SAMPLER={asked}: otel-bridge follows always_on, always_off and traceidratio with a "
                "ratio from 0 to 1 (and their parentbased_ forms), so it sends every run; set "
                "OTEL_BRIDGE_TRACE_SAMPLE_RATIO"
            )
        return told

    @model_validator(mode="after")
    def _replicas_of_redis(self) -> "Settings":
        # Asked of SQLite, it would read as a promise kept: no replica holds a SQLite file.
        if self.wait_replicas and not self.shared_state:
            raise ValueError("wait_replicas is for a Redis state (its replicas); a SQLite state has none")
        return self

    @field_validator("api_key", "bearer_token")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty secret would silently turn authentication off: a deployment mistake, not a choice.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty: unset it to turn authentication off, or give a secret")
        return value

    @field_validator("retiring_api_keys", "retiring_bearer_tokens", mode="before")
    @classmethod
    def _comma_separated_secrets(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("silent_executing", "silent_continuous", "expected_producers", mode="before")
    @classmethod
    def _name_and_duration_pairs(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        kind, example = {
            "silent_continuous": ("job", "tokenRefresher=15m"),
            "expected_producers": ("serviceKey@env", "billing@production=15m"),
        }.get(info.field_name or "", ("workflow", "checkout=15m,*=2h"))
        pairs = {}
        for part in filter(None, (part.strip() for part in value.split(","))):
            name, equals, duration = (text.strip() for text in part.rpartition("="))
            if not equals or not name:
                raise ValueError(f"{part!r} is not {kind}=duration (comma-separated: {example})")
            seconds = pairs[name] = seconds_of(duration)
            if seconds > _CENTURY_SECONDS:  # as every time a setting gives (`_a_time_it_can_count`)
                raise ValueError(f"{part!r}: must be at most a century ({_CENTURY_SECONDS:,} s)")
        return pairs

    @field_validator("expected_producers")
    @classmethod
    def _producers_named(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            service, at, env = name.rpartition("@")
            if not (at and service.strip() and env.strip()):
                raise ValueError(f"{name!r}: name the producer as serviceKey@env (billing@production=15m)")
            if "*" in (service.strip(), env.strip()):
                # Which producers a wildcard stands for, the bridge learns only from their events: one that never
                # sends, what this setting is for, it would never name.
                raise ValueError(f"{name!r}: name each producer (a wildcard cannot say which one never sent)")
        return value

    @field_validator("producer_api_keys", mode="before")
    @classmethod
    def _producer_and_key_pairs(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        pairs = []
        for part in filter(None, (part.strip() for part in value.split(","))):
            # The first `=`: a key in base64 may end in `=`, a serviceKey does not hold one.
            service, equals, key = part.partition("=")
            if not equals or not service.strip() or not key.strip():
                raise ValueError("is not serviceKey=key pairs (comma-separated)")
            pairs.append((service.strip(), key.strip()))
        return pairs

    @model_validator(mode="after")
    def _rotating_to_a_credential(self) -> "Settings":
        # Keys being retired with none to move to: producers could not rotate, and a reader would think
        # authentication is on the way it is with `api_key`.
        for retiring, current in (("retiring_api_keys", "api_key"), ("retiring_bearer_tokens", "bearer_token")):
            kept = getattr(self, retiring)
            if kept and getattr(self, current) is None:
                raise ValueError(f"{retiring} is set without {current}: give the credential producers move to")
            if any(not secret.get_secret_value() for secret in kept):
                raise ValueError(f"{retiring} holds an empty secret")
        return self

    @field_validator("log_level")
    @classmethod
    def _a_level(cls, value: str) -> str:
        # Unchecked, a typo reached logging at start-up as a traceback.
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}, not {value!r}")
        return level

    @field_validator(*_URL_SCHEMES)
    @classmethod
    def _a_url_it_can_follow(cls, value: str | None, info: ValidationInfo) -> str | None:
        schemes = _URL_SCHEMES[str(info.field_name)]
        if value and not value.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}, not {without_secrets(value)!r}")
        return value or None

    @field_validator("state", *_URL_SCHEMES)
    @classmethod
    def _a_url_it_can_read(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Read now, a start that fails on it says so in one line: unchecked, a bracket not closed or a
        # port that is no number failed the start as a traceback (the stream, the WebSocket) or as a bare
        # "Invalid IPv6 URL" (the state). A state that is not a URL is a SQLite file.
        if not value or (info.field_name == "state" and not value.startswith(REDIS_SCHEMES)):
            return value
        if value.startswith(SENTINEL_SCHEMES):
            sentinels_of(value)  # several hosts: it names what it cannot read
        elif why := parse_error(value):
            raise ValueError(f"{without_secrets(value)!r} is not a URL: {why}")
        if unsaid := encrypted_key_unsaid(value):
            raise ValueError(unsaid)
        return value

    @field_validator("*")
    @classmethod
    def _a_time_it_can_count(cls, value: object, info: ValidationInfo) -> object:
        # Times are counted in nanoseconds beside today's date (int64 in SQLite, Redis and OTLP), and
        # waited for by threads: a larger one failed the start as a traceback (an OverflowError).
        name = str(info.field_name)
        if isinstance(value, float) and name.endswith(("_seconds", "_ms")):
            unit, longest = ("ms", _CENTURY_SECONDS * 1000) if name.endswith("_ms") else ("s", _CENTURY_SECONDS)
            if value > longest:
                raise ValueError(f"must be at most a century ({longest:,} {unit}), not {value:g}")
        return value

    @field_validator("api_key_header")
    @classmethod
    def _a_header_a_request_can_carry(cls, value: str) -> str:
        # Any other name no client can send: with an api_key set, every batch was answered 401.
        if not HEADER_NAME.fullmatch(value):
            raise ValueError(f"must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), not {value!r}")
        return value

    @field_validator("path")
    @classmethod
    def _a_path_producers_can_post_to(cls, value: str) -> str:
        # A request's path always begins with "/": `events` was an endpoint no POST could reach.
        path = value if value.startswith("/") else f"/{value}"
        trimmed = path.rstrip("/")
        if trimmed in OWN_PATHS or trimmed.startswith(("/v1/runs/", "/v1/jobs/")):
            raise ValueError(f"{path!r} is one of the bridge's own paths ({', '.join(OWN_PATHS)}): choose another")
        return path

    @field_validator("trace_url")
    @classmethod
    def _names_the_trace(cls, value: str | None) -> str | None:
        if value and "{trace_id}" not in value:
            raise ValueError("must hold {trace_id}, where the run's trace id goes")
        return value or None

    @field_validator("redact_keys", "stream_terminal_states", "overdue_tasks", "cleared_debounces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def settings_table() -> str:
    """README's configuration table, made from the model."""
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        env = f"OTEL_BRIDGE_{name.upper()}"
        if isinstance(field.validation_alias, AliasChoices):
            env = ", ".join(str(choice) for choice in field.validation_alias.choices if str(choice).isupper())
        default = field.default
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, dict):
            default = ",".join(f"{key}={value}" for key, value in default.items())
        shown = f"`{default}`" if default != "" else "(none)"  # an empty code span shows as two backticks
        rows.append(f"| {name} | `--{name.replace('_', '-')}` | `{env}` | {shown} | {field.description} |")
    return "\n".join(rows)


def sampler_ratio(environ: Mapping[str, str]) -> float | None:
    """The share of runs `OTEL_TRACES_SAMPLER` (and its `…_ARG`) asks for, or None for a sampler the bridge
    cannot follow (then every run is sent). A run's root has no parent, so `parentbased_X` samples as X;
    an argument that is no ratio is None, where the SDK warns and samples everything."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    base = name.removeprefix("parentbased_")
    if base in ("always_on", "always_off"):
        return 1.0 if base == "always_on" else 0.0
    if base != "traceidratio":
        return None
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or 1.0)
    except ValueError:
        return None
    return ratio if 0.0 <= ratio <= 1.0 else None


_PREFIX = "OTEL_BRIDGE_"


@cache
def _variables() -> dict[str, str]:
    """Every environment variable a setting is read from, and that setting."""
    names: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            names.update((str(choice), name) for choice in field.validation_alias.choices if str(choice).isupper())
        else:
            names[f"{_PREFIX}{name.upper()}"] = name
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """What to tell about `OTEL_BRIDGE_*` variables that are no setting: a misspelt one is
    otherwise ignored without a word, and its setting left at its default."""
    known = _variables()
    told = []
    for variable in sorted(environ):
        upper = variable.upper()  # read regardless of case, as pydantic-settings reads them
        if not upper.startswith(_PREFIX) or upper in known:
            continue
        close = _meant(upper, known)
        hint = f"; did you mean {close}?" if close else " (otel-bridge config lists the settings)"
        told.append(f"{variable} is not a setting of otel-bridge and is ignored{hint}")
    return told


def unknown_settings(names: Iterable[str]) -> list[str]:
    """What to tell about keyword settings (the in-process tracker's `**settings`) that are no setting:
    Settings ignores names it does not know, so a misspelt one left its setting at its default unsaid."""
    known = list(Settings.model_fields)
    told = []
    for name in names:
        if name in known:
            continue
        if setting := _variables().get(name.upper()):
            told.append(f"{name!r} is the environment variable of the setting {setting!r}: pass {setting}=…")
        elif name.upper().startswith("OTEL_"):
            # An application that configures its own SDK in code looks for the OTLP endpoint here.
            told.append(
                f"{name!r} is not a setting of otel-bridge: the OpenTelemetry variables (the OTLP export's "
                "endpoint, headers, TLS files, protocol) are read from the environment as the tracker is made, "
                'or given in code as otlp={"endpoint": …, "headers": {…}}'
            )
        else:
            close = _meant(name, known)
            told.append(f"{name!r} is not a setting of otel-bridge" + (f"; did you mean {close!r}?" if close else ""))
    return told


def _meant(name: str, known: Iterable[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, if any is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return close[0] if close else None


def setting_named(loc: str) -> str:
    """How a configuration error names its setting: pydantic names a setting read from one of several
    variables by the first of them (`OTEL_BSP_SCHEDULE_DELAY`), whichever was given; so the setting and
    every variable it is read from (`export_delay_ms (OTEL_BSP_SCHEDULE_DELAY or
    OTEL_BRIDGE_EXPORT_DELAY_MS)`)."""
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and loc in alias.choices:
            variables = [str(choice) for choice in alias.choices if str(choice).isupper()]
            return f"{name} ({' or '.join(variables)})"
    return loc
