"""Every attribute, span and metric name otel-bridge writes, in one place.

Names follow the OpenTelemetry workflow conventions proposal (semantic-conventions
issue 1688 / PR 2387) where it covers us; the rest are coined here under
`workflow.*` and `job.*` so they can be read at a glance.
"""

from typing import Final

# Resource
SERVICE_NAME: Final = "service.name"
SERVICE_VERSION: Final = "service.version"
SERVICE_INSTANCE_ID: Final = "service.instance.id"
DEPLOYMENT_ENVIRONMENT_NAME: Final = "deployment.environment.name"
BRIDGE_SERVICE_NAME: Final = "otel-bridge"
SCOPE_NAME: Final = "otel_bridge"

# Workflow spans
WORKFLOW_DEFINITION_NAME: Final = "workflow.definition.name"
WORKFLOW_EXECUTION_ID: Final = "workflow.execution.id"
WORKFLOW_EXECUTION_CORRELATION_ID: Final = "workflow.execution.correlation_id"
WORKFLOW_EXECUTION_RESULT: Final = "workflow.execution.result"
WORKFLOW_EXECUTION_STATE: Final = "workflow.execution.state"
WORKFLOW_EXECUTION_INCOMPLETE: Final = "workflow.execution.incomplete"
WORKFLOW_EXECUTION_CANCEL_REASON: Final = "workflow.execution.cancel_reason"
# Why a run was closed by hand (`otel-bridge close`), on its root span with workflow.execution.incomplete.
WORKFLOW_EXECUTION_CLOSE_REASON: Final = "workflow.execution.close_reason"
WORKFLOW_EXECUTION_COMPLETED_STEPS: Final = "workflow.execution.completed_steps"
WORKFLOW_EXECUTION_INPUT: Final = "workflow.execution.input"
# Which retry of a failed run by its operator a trace is (1, 2…): each is a trace of its own, linked to the one before.
WORKFLOW_EXECUTION_RETRY: Final = "workflow.execution.retry"
# The run that started this one as a child (the runtime v2's `parent_run_id`): its root is linked too.
WORKFLOW_EXECUTION_PARENT_ID: Final = "workflow.execution.parent_id"
# The run a child's family began with (the runtime v2's `root_run_id`; the parent when that is all its row says):
# one search finds a family's runs below its first. The family is sampled by it (`correlate/runs.family_root`).
WORKFLOW_EXECUTION_ROOT_ID: Final = "workflow.execution.root_id"
WORKFLOW_PLATFORM_NAME: Final = "workflow.platform.name"
WORKFLOW_TASK_NAME: Final = "workflow.task.name"
WORKFLOW_TASK_ATTEMPT: Final = "workflow.task.attempt"
WORKFLOW_TASK_CACHED: Final = "workflow.task.cached"
WORKFLOW_TASK_RESULT: Final = "workflow.task.result"
WORKFLOW_TASK_DURATION_MS: Final = "workflow.task.duration_ms"
WORKFLOW_EVENT_ID: Final = "workflow.event.id"
WORKFLOW_PAUSE_REASON: Final = "workflow.pause.reason"
WORKFLOW_PAUSE_RESUME_AT: Final = "workflow.pause.resume_at"
WORKFLOW_RETRY_NEXT_ATTEMPT_AT: Final = "workflow.retry.next_attempt_at"
WORKFLOW_RETRY_DELAY_MS: Final = "workflow.retry.delay_ms"
WORKFLOW_RETRY_ATTEMPTS: Final = "workflow.retry.attempts"
WORKFLOW_SLEEP_DURATION_MS: Final = "workflow.sleep.duration_ms"
WORKFLOW_SLEEP_RESUME_AT: Final = "workflow.sleep.resume_at"
WORKFLOW_TIMEOUT_DEADLINE: Final = "workflow.timeout.deadline"
WORKFLOW_TIMEOUT_MS: Final = "workflow.timeout.ms"
WORKFLOW_LATE_EVENT: Final = "workflow.event.late"
WORKFLOW_OVERDUE_EVENT: Final = "workflow.overdue"
WORKFLOW_OVERDUE_SECONDS: Final = "workflow.overdue.seconds"
WORKFLOW_OVERDUE_DUE_AT: Final = "workflow.overdue.due_at"
WORKFLOW_STATE_NAME: Final = "workflow.state.name"
WORKFLOW_STATE_FROM: Final = "workflow.state.from"
WORKFLOW_STATE_TO: Final = "workflow.state.to"
WORKFLOW_TASK_TYPE: Final = "workflow.task.type"
# The agent instance that runs a step (OpenTelemetry GenAI conventions, in development).
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
WORKFLOW_TASK_ORDER: Final = "workflow.task.order"
WORKFLOW_HUMAN_TASK_ID: Final = "workflow.human_task.id"
WORKFLOW_HUMAN_TASK_TYPE: Final = "workflow.human_task.type"
WORKFLOW_EVENT_NAME: Final = "workflow.event.name"
WORKFLOW_EVENT_TYPE: Final = "workflow.event.type"
WORKFLOW_EVENT_PAYLOAD: Final = "workflow.event.payload"
# An action a step called (the runtime v2's registry of actions: `tickets.create`), its version, how long it took.
WORKFLOW_ACTION_ID: Final = "workflow.action.id"
WORKFLOW_ACTION_VERSION: Final = "workflow.action.version"
WORKFLOW_ACTION_DURATION_MS: Final = "workflow.action.duration_ms"
# Which call of it this was, when it was called again (a failed call its step retried): from 2 on.
WORKFLOW_ACTION_ATTEMPT: Final = "workflow.action.attempt"
# The Temporal workflow that runs a run, and its run, as Temporal's own tracing interceptors name them (the
# Go, .NET and Python SDKs): a search by either finds the bridge's trace beside Temporal's spans.
TEMPORAL_WORKFLOW_ID: Final = "temporalWorkflowID"
TEMPORAL_RUN_ID: Final = "temporalRunID"
# What started a run (event, schedule, recurring), as its engine names it.
WORKFLOW_TRIGGER_TYPE: Final = "workflow.trigger.type"
# The schedule whose occurrence launched a run (the runtime v2's: the job its occurrences are), and the time
# that occurrence was for.
WORKFLOW_SCHEDULE_ID: Final = "workflow.schedule.id"
WORKFLOW_SCHEDULE_NAME: Final = "workflow.schedule.name"
WORKFLOW_SCHEDULE_OCCURRENCE: Final = "workflow.schedule.occurrence"
# A line of a run's log (the runtime v2's `workflow_run_logs`), as a span event named by its message.
WORKFLOW_LOG_LEVEL: Final = "workflow.log.level"
WORKFLOW_LOG_SOURCE: Final = "workflow.log.source"
WORKFLOW_LOG_CONTEXT: Final = "workflow.log.context"
WORKFLOW_DEFINITION_ID: Final = "workflow.definition.id"
WORKFLOW_DEFINITION_VERSION: Final = "workflow.definition.version"
WORKFLOW_TASK_OUTPUT: Final = "workflow.task.output"
WORKFLOW_TASK_INPUT: Final = "workflow.task.input"
ENDUSER_ID: Final = "enduser.id"
TENANT_ID: Final = "tenant.id"
WORKSPACE_ID: Final = "workspace.id"

# Values
PLATFORM_DURABLE_EFFECT: Final = "durable-effect"
PLATFORM_EVENT_SOURCED: Final = "event-sourced"
PLATFORM_PHASE10: Final = "phase10"
PLATFORM_RUNTIME_V2: Final = "workflow-runtime-v2"
RESULT_SUCCESS: Final = "success"
RESULT_FAILURE: Final = "failure"
RESULT_CANCELLATION: Final = "cancellation"
RESULT_TIMEOUT: Final = "timeout"
TASK_RESULT_INTERRUPTED: Final = "interrupted"
TASK_RESULT_SKIPPED: Final = "skipped"
STATE_PENDING: Final = "pending"
STATE_EXECUTING: Final = "executing"
STATE_PAUSED: Final = "paused"
# The states a run is listed in (`otel-bridge runs --run-state`, `GET /v1/runs?state=`).
RUN_STATES: Final = (STATE_PENDING, STATE_EXECUTING, STATE_PAUSED)
OVERFLOW_VALUE: Final = "_OTHER"

# General semantic conventions
ERROR_TYPE: Final = "error.type"
# The HTTP server's own requests (the bridge's endpoints), as the HTTP semantic conventions time them.
M_HTTP_SERVER_REQUEST_DURATION: Final = "http.server.request.duration"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_SCHEME: Final = "url.scheme"
EXCEPTION_EVENT: Final = "exception"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EXCEPTION_TYPE: Final = "exception.type"

# Span and span-event names
ROOT_SPAN_PREFIX: Final = "workflow "
STEP_SPAN_PREFIX: Final = "step "
SLEEP_SPAN_NAME: Final = "sleep"
STATE_SPAN_PREFIX: Final = "state "
TASK_SPAN_PREFIX: Final = "task "
TRIGGER_SPAN_PREFIX: Final = "trigger "
SLEEP_RESTARTED_EVENT: Final = "sleep.restarted"
STEP_CACHED_EVENT: Final = "step.cached"

# Jobs
JOB_NAME: Final = "job.name"
JOB_TYPE: Final = "job.type"
JOB_EXECUTION_RESULT: Final = "job.execution.result"
JOB_RETRY_EXHAUSTED_REASON: Final = "job.retry.exhausted.reason"
JOB_DEBOUNCE_FLUSH_REASON: Final = "job.debounce.flush.reason"
JOB_TASK_TRIGGER: Final = "job.task.trigger"

# Metric instruments (DESIGN.md section 4)
M_WORKFLOW_EXECUTION_DURATION: Final = "workflow.execution.duration"
M_WORKFLOW_EXECUTION_ACTIVE: Final = "workflow.execution.active"
M_WORKFLOW_EXECUTION_ERRORS: Final = "workflow.execution.errors"
M_WORKFLOW_TASK_DURATION: Final = "workflow.task.duration"
M_WORKFLOW_TASK_RETRIES: Final = "workflow.task.retries"
M_WORKFLOW_TASK_RETRY_DELAY: Final = "workflow.task.retry.delay"
M_WORKFLOW_TASK_TIMEOUTS: Final = "workflow.task.timeouts"
M_WORKFLOW_SLEEP_DURATION: Final = "workflow.sleep.duration"
M_WORKFLOW_STATE_DURATION: Final = "workflow.state.duration"
M_WORKFLOW_EXECUTION_OVERDUE: Final = "workflow.execution.overdue"
M_JOB_INSTANCE_OVERDUE: Final = "job.instance.overdue"
M_WORKFLOW_TASK_EXHAUSTED: Final = "workflow.task.exhausted"
M_WORKFLOW_STATE_TRANSITIONS: Final = "workflow.state.transitions"
M_JOB_EXECUTIONS: Final = "job.executions"
M_JOB_EXECUTION_DURATION: Final = "job.execution.duration"
# When a job last ran, by result (Unix time): `time() - …` is how long it has not (the seed's "last execution").
M_JOB_EXECUTION_LAST: Final = "job.execution.last_timestamp"
M_JOB_RETRY_EXHAUSTED: Final = "job.retry.exhausted"
M_JOB_TERMINATIONS: Final = "job.terminations"
M_JOB_INSTANCE_ACTIVE: Final = "job.instance.active"
M_JOB_DEBOUNCE_FLUSH_SIZE: Final = "job.debounce.flush.size"
M_JOB_DEBOUNCE_FLUSH_DURATION: Final = "job.debounce.flush.duration"
M_JOB_TASK_SCHEDULED: Final = "job.task.scheduled"
M_JOB_TASK_SCHEDULE_DELAY: Final = "job.task.schedule.delay"

# The bridge's own telemetry
M_BRIDGE_EVENTS_RECEIVED: Final = "otel_bridge.events.received"
M_BRIDGE_EVENTS_ACCEPTED: Final = "otel_bridge.events.accepted"
M_BRIDGE_EVENTS_REJECTED: Final = "otel_bridge.events.rejected"
M_BRIDGE_EVENTS_DUPLICATE: Final = "otel_bridge.events.duplicate"
M_BRIDGE_EVENTS_LATE: Final = "otel_bridge.events.late"
M_BRIDGE_EVENTS_REFUSED: Final = "otel_bridge.events.refused"
# A producer's events taken into the store, counted under that producer's resource (by engine): the one
# sign of a producer whose tracker stopped delivering (a wrong endpoint after a deploy drops every batch
# after three re-sends, and the bridge, hearing nothing, has nothing else to count).
M_PRODUCER_EVENTS: Final = "otel_bridge.producer.events"
# Those of them timestamped more than a minute ahead of the bridge's clock: the producer's clock, or the
# bridge's, is wrong (spans in the future; overdue and max_open judged off).
M_PRODUCER_EVENTS_AHEAD: Final = "otel_bridge.producer.events_ahead"
# When this bridge last took an event of the producer (its own clock), and how long a producer it is told to
# expect (`expected_producers`) may go without: one that never sends has no past to be judged silent against.
M_PRODUCER_LAST_HEARD: Final = "otel_bridge.producer.last_heard_timestamp"
M_PRODUCER_EXPECTED_WITHIN: Final = "otel_bridge.producer.expected_within"
M_BRIDGE_RUNS_INCOMPLETE: Final = "otel_bridge.runs.incomplete"
M_BRIDGE_JOBS_PRESUMED_ENDED: Final = "otel_bridge.jobs.presumed_ended"
M_BRIDGE_RUNS_KEPT_BACK: Final = "otel_bridge.runs.kept_back"
M_BRIDGE_SPANS_EXPORTED: Final = "otel_bridge.spans.exported"
M_BRIDGE_SPANS_REJECTED: Final = "otel_bridge.spans.rejected"
M_BRIDGE_RUNS_SET_ASIDE: Final = "otel_bridge.runs.set_aside"
M_BRIDGE_RUNS_UNREADABLE: Final = "otel_bridge.runs.unreadable"
M_BRIDGE_EXPORT_FAILURES: Final = "otel_bridge.export.failures"
M_BRIDGE_OUTBOX_DEPTH: Final = "otel_bridge.outbox.depth"
M_BRIDGE_SETTLE_LAG: Final = "otel_bridge.settle.lag"
M_BRIDGE_INGEST_DURATION: Final = "otel_bridge.ingest.duration"
M_BRIDGE_STREAM_ENTRIES_LOST: Final = "otel_bridge.stream.entries_lost"
M_BRIDGE_STREAM_LAG: Final = "otel_bridge.stream.lag"
M_BRIDGE_FOLLOWER_CONNECTED: Final = "otel_bridge.follower.connected"
M_BRIDGE_ALIVE: Final = "otel_bridge.alive"
M_BRIDGE_STATE_RISKS: Final = "otel_bridge.state.risks"
M_BRIDGE_STATE_SALVAGED: Final = "otel_bridge.state.salvaged_timestamp"
M_BRIDGE_TLS_CERTIFICATE_EXPIRATION: Final = "otel_bridge.tls.certificate_expiration_timestamp"
# Which certificate a series is of: the setting or variable that names its file (`tls_certfile`,
# `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
BRIDGE_CERTIFICATE: Final = "certificate"
M_BRIDGE_STATE_SIZE: Final = "otel_bridge.state.size"
M_BRIDGE_STATE_DISK_FREE: Final = "otel_bridge.state.disk_free"
M_BRIDGE_STATE_HOT_RUNS: Final = "otel_bridge.state.hot_runs"
M_BRIDGE_STATE_HOT_FACTS: Final = "otel_bridge.state.hot_facts"
M_BRIDGE_BUILD_INFO: Final = "otel_bridge.build.info"
# Requests by the credential they carried (`api_key`, `retiring_api_keys.1`, …: its place, never the
# secret), and those whose credential was missing or wrong (answered 401: their events are not taken).
M_BRIDGE_REQUESTS_AUTHENTICATED: Final = "otel_bridge.requests.authenticated"
M_BRIDGE_REQUESTS_UNAUTHORIZED: Final = "otel_bridge.requests.unauthorized"
BRIDGE_CREDENTIAL: Final = "credential"
# Which receiver handed the events over (`http`, `redis-stream`, …), as the Collector labels its own.
BRIDGE_RECEIVER: Final = "receiver"
# Why a batch was refused for now: its sender offers it again.
BRIDGE_REFUSAL_REASON: Final = "reason"
REFUSED_OUTBOX_FULL: Final = "outbox_full"  # max_outbox_spans wait for export
REFUSED_STORE_UNAVAILABLE: Final = "store_unavailable"  # the store is down, locked or on a full disk
# limit_concurrency connections open, or requests under way: turned away unread, one counted a batch.
REFUSED_CONNECTIONS_AT_LIMIT: Final = "connections_at_limit"
# TLS handshakes that failed, by what that means for a producer (`reason`): on the HTTPS port, its client refused
# the bridge's certificate (every batch of it lost), it offers no TLS version or cipher the bridge takes, other;
# on a plain-HTTP port (no `tls_certfile`), the bridge has no certificate to answer one with (every batch lost).
M_BRIDGE_TLS_HANDSHAKES_FAILED: Final = "otel_bridge.tls.handshakes.failed"
HANDSHAKE_CERTIFICATE_REFUSED: Final = "certificate_refused"
HANDSHAKE_NO_CERTIFICATE: Final = "no_certificate"
HANDSHAKE_VERSION_OR_CIPHER: Final = "version_or_cipher"
HANDSHAKE_OTHER: Final = "other"

# Metric attributes whose values the producer chooses (names, and the error classes its code throws):
# bounded per key by `max_names` (`_OTHER` past it) and in length, so that a producer's names cannot
# make the series without end. The other metric attributes take values of the bridge's own vocabulary.
BOUNDED_NAME_ATTRIBUTES: Final = frozenset(
    {
        ERROR_TYPE,
        WORKFLOW_DEFINITION_NAME,
        WORKFLOW_TASK_NAME,
        JOB_NAME,
        WORKFLOW_STATE_NAME,
        WORKFLOW_STATE_FROM,
        WORKFLOW_STATE_TO,
    }
)
