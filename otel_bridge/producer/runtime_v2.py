"""The runtime v2's tables, and its writes to them in the order `WorkflowRuntimeV2` makes them.

The tables as the runtime's migration creates them (uuid keys, timestamptz, jsonb), and a
`Runtime` that writes a run's rows as `executeRun`, the worker's tick (due retries, time
waits), `submitWorkflowEventAction` (an event that resumes a wait) and the operators' actions
(cancel, retry a failed run) do: each row updated in place, every change followed by the run's
`updated_at`, and the lines of the run's log the runtime writes beside them. Times are the
writer's clock, given by the caller. The tests write runs with it, and `otel-bridge demo
--runtime-v2-url` plays the runtime with it (`scenario`), in a database of its own.
"""

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflow_definitions (
  workflow_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  payload_schema_ref text NOT NULL DEFAULT '',
  draft_definition jsonb NOT NULL DEFAULT '{}',
  status text NOT NULL DEFAULT 'draft',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS workflow_runs (
  run_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  workflow_id uuid NOT NULL REFERENCES workflow_definitions ON DELETE CASCADE,
  workflow_version integer NOT NULL,
  tenant_id text,
  status text NOT NULL,
  node_path text,
  trigger_type text,
  event_type text,
  input_json jsonb,
  resume_event_payload jsonb,
  resume_event_name text,
  resume_error jsonb,
  error_json jsonb,
  lease_owner text,
  lease_expires_at timestamptz,
  parent_run_id uuid,
  root_run_id uuid,
  started_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_workflow_runs_status ON workflow_runs (status);
-- The runtime's Temporal mode (its only one since June 2026): what runs a run, and Temporal's ids of it.
ALTER TABLE workflow_runs ADD COLUMN IF NOT EXISTS engine text;
ALTER TABLE workflow_runs ADD COLUMN IF NOT EXISTS temporal_workflow_id text;
ALTER TABLE workflow_runs ADD COLUMN IF NOT EXISTS temporal_run_id text;
-- What launched a run, as its launcher writes it (a schedule's occurrence: its id, name and time).
ALTER TABLE workflow_runs ADD COLUMN IF NOT EXISTS trigger_metadata_json jsonb;
ALTER TABLE workflow_runs ADD COLUMN IF NOT EXISTS trigger_fire_key text;
CREATE TABLE IF NOT EXISTS workflow_run_steps (
  step_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  run_id uuid NOT NULL REFERENCES workflow_runs ON DELETE CASCADE,
  step_path text NOT NULL,
  definition_step_id text NOT NULL,
  status text NOT NULL,
  attempt integer NOT NULL DEFAULT 1,
  duration_ms integer,
  error_json jsonb,
  snapshot_id uuid,
  started_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
);
CREATE INDEX IF NOT EXISTS idx_workflow_run_steps_run_path ON workflow_run_steps (run_id, step_path);
CREATE TABLE IF NOT EXISTS workflow_action_invocations (
  invocation_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  run_id uuid NOT NULL REFERENCES workflow_runs ON DELETE CASCADE,
  step_path text NOT NULL,
  action_id text NOT NULL,
  action_version integer NOT NULL,
  idempotency_key text NOT NULL,
  status text NOT NULL,
  attempt integer NOT NULL DEFAULT 1,
  lease_owner text,
  lease_expires_at timestamptz,
  input_json jsonb,
  output_json jsonb,
  error_message text,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  completed_at timestamptz,
  UNIQUE (action_id, action_version, idempotency_key)
);
CREATE INDEX IF NOT EXISTS idx_workflow_action_invocations_run_path ON workflow_action_invocations (run_id, step_path);
ALTER TABLE workflow_action_invocations ADD COLUMN IF NOT EXISTS error_json jsonb;
CREATE TABLE IF NOT EXISTS workflow_run_waits (
  wait_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  run_id uuid NOT NULL REFERENCES workflow_runs ON DELETE CASCADE,
  step_path text NOT NULL,
  wait_type text NOT NULL,
  key text,
  event_name text,
  timeout_at timestamptz,
  status text NOT NULL DEFAULT 'WAITING',
  payload jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz
);
CREATE INDEX IF NOT EXISTS idx_workflow_run_waits_type_status ON workflow_run_waits (wait_type, status);
CREATE INDEX IF NOT EXISTS idx_workflow_run_waits_event_key ON workflow_run_waits (event_name, key, status);
CREATE TABLE IF NOT EXISTS workflow_run_logs (
  log_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  run_id uuid NOT NULL REFERENCES workflow_runs ON DELETE CASCADE,
  tenant_id text,
  step_id uuid,
  step_path text,
  level text NOT NULL,
  message text NOT NULL,
  context_json jsonb,
  correlation_key text,
  event_name text,
  source text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_workflow_run_logs_run_created ON workflow_run_logs (run_id, created_at);
-- A workflow's schedule (the runtime's enterprise edition; the community one has no such table), as its
-- migrations leave it: written at its creation and by its scheduled-run handler at each occurrence.
CREATE TABLE IF NOT EXISTS tenant_workflow_schedule (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant text NOT NULL,
  workflow_id uuid NOT NULL,
  workflow_version integer NOT NULL,
  name text NOT NULL,
  trigger_type varchar(32) NOT NULL,
  day_type_filter varchar(32) NOT NULL DEFAULT 'any',
  business_hours_schedule_id uuid,
  run_at timestamptz,
  cron text,
  timezone varchar(64),
  payload_json jsonb,
  enabled boolean NOT NULL DEFAULT true,
  status varchar(32) NOT NULL DEFAULT 'scheduled',
  job_id uuid,
  runner_schedule_id varchar(255),
  last_fire_at timestamptz,
  next_fire_at timestamptz,
  last_run_status varchar(32),
  last_error text,
  last_fire_key text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- The events the runtime took in, as its migrations leave the table: its event worker writes an event's row as
-- it takes it, then the run it started or resumed and what failed.
CREATE TABLE IF NOT EXISTS workflow_runtime_events (
  event_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant text,
  event_name text NOT NULL,
  correlation_key text,
  payload jsonb,
  payload_schema_ref text,
  schema_ref_conflict jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  processed_at timestamptz,
  matched_run_id uuid,
  matched_wait_id uuid,
  matched_step_path text,
  error_message text
);
CREATE INDEX IF NOT EXISTS idx_workflow_runtime_events_created_at ON workflow_runtime_events (created_at);
-- The workflows its event worker did not launch for an event, and why (since October 2026), as its migration
-- makes the table: one row per event and workflow, written once the event's workflows are all tried.
CREATE TABLE IF NOT EXISTS workflow_event_launch_skips (
  tenant uuid NOT NULL,
  skip_id uuid NOT NULL DEFAULT gen_random_uuid(),
  event_id uuid NOT NULL,
  workflow_id uuid NOT NULL,
  workflow_version integer NULL,
  event_name text NOT NULL,
  reason text NOT NULL,
  intentional boolean NOT NULL,
  message text NOT NULL,
  details jsonb NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT workflow_event_launch_skips_pkey PRIMARY KEY (tenant, skip_id),
  CONSTRAINT workflow_event_launch_skips_event_workflow_unique UNIQUE (tenant, event_id, workflow_id),
  CONSTRAINT workflow_event_launch_skips_reason_check CHECK (reason IN (
    'missing_schema_ref', 'unknown_schema_ref', 'missing_source_schema', 'schema_mismatch', 'payload_mapping_failed',
    'payload_validation_failed', 'launch_failed', 'paused', 'lineage_loop_guard', 'self_trigger_guard',
    'causation_depth_exceeded'))
);
"""
_LAUNCH_FAILED = "Failed to launch Temporal workflow: "
# The reasons the runtime means (`WORKFLOW_LAUNCH_SKIP_INTENTIONAL`): a workflow paused, its trigger loops' guards.
INTENTIONAL_SKIPS = ("paused", "lineage_loop_guard", "self_trigger_guard", "causation_depth_exceeded")
# Those it writes into the event's error when nothing launched, validation's first, then the rest in turn;
# a launch that failed it writes there whatever else launched (`processEvent`).
_VALIDATION = ("payload_validation_failed",)
_DIAGNOSTIC = (
    "missing_schema_ref", "unknown_schema_ref", "missing_source_schema", "schema_mismatch",
    "payload_mapping_failed", "lineage_loop_guard",
)  # fmt: skip


class Runtime:
    """One workflow's runs, written as the runtime writes them."""

    def __init__(self, db: psycopg.Connection[Any], name: str = "ticket-escalation", tenant: str = "acme") -> None:
        db.execute(SCHEMA)
        self.db = db
        self.tenant = tenant
        self.workflow_id = self.published(name)

    def published(self, name: str) -> str:
        """A workflow of its tenant's published (its id): this one's, or another beside it (one that starts on
        the same events, say)."""
        row = self.db.execute(
            "INSERT INTO workflow_definitions (name) VALUES (%s) RETURNING workflow_id", (name,)
        ).fetchone()
        assert row is not None
        return str(row[0])

    def start_run(
        self,
        when: datetime,
        payload: dict[str, Any] | None = None,
        parent: str | None = None,
        temporal: bool = False,
        schedule: tuple[str, str, datetime] | None = None,
    ) -> str:
        """A run, of a workflow started by an event, called by the run `parent` (a child workflow), or launched
        by an occurrence of a `schedule` (its id, name, and the time the occurrence was for), as the scheduled-run
        handler writes its trigger; with `temporal`, launched on Temporal (`launchPublishedWorkflowRun`), which
        the caller then projects."""
        run_id = str(uuid.uuid4())
        engine = ("temporal", f"workflow-runtime-v2:run:{run_id}", str(uuid.uuid4())) if temporal else (None,) * 3
        trigger: tuple[str, str | None, Jsonb | None] = ("event", "TICKET_CREATED", None)
        if schedule is not None:
            schedule_id, name, occurrence = schedule
            said = {"triggerType": "recurring", "scheduleId": schedule_id, "scheduleName": name,
                    "scheduledFor": occurrence.isoformat(), "firedAt": when.isoformat()}  # fmt: skip
            trigger = ("recurring", None, Jsonb(said))
        self.db.execute(
            "INSERT INTO workflow_runs (run_id, workflow_id, workflow_version, tenant_id, status, node_path, "
            "trigger_type, event_type, trigger_metadata_json, input_json, parent_run_id, root_run_id, engine, "
            "temporal_workflow_id, temporal_run_id, started_at, updated_at) "
            # root_run_id: the run the family began with, the parent's own or the parent.
            "VALUES (%s, %s, 3, %s, 'RUNNING', 'root.steps[0]', %s, %s, %s, %s, %s, "
            "(SELECT coalesce(root_run_id, run_id) FROM workflow_runs WHERE run_id = %s), %s, %s, %s, %s, %s)",
            (run_id, self.workflow_id, self.tenant, *trigger, Jsonb(payload or {"ticketId": "T-1"}), parent, parent,
             *engine, when, when),
        )  # fmt: skip
        self.log(run_id, when, "INFO", "Run started", context={"workflowVersion": 3})
        return run_id

    def log(
        self,
        run_id: str,
        when: datetime,
        level: str,
        message: str,
        step_id: str | None = None,
        path: str | None = None,
        context: dict[str, Any] | None = None,
        source: str = "runtime",
        event: str | None = None,
        key: str | None = None,
    ) -> None:
        """A line of the run's log (`logRunEvent`)."""
        self.db.execute(
            "INSERT INTO workflow_run_logs (run_id, tenant_id, step_id, step_path, level, message, context_json, "
            "correlation_key, event_name, source, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, self.tenant, step_id, path, level, message, Jsonb(context) if context else None, key, event,
             source, when),
        )  # fmt: skip

    def _update(self, table: str, key: str, row_id: str, **columns: Any) -> None:
        """Columns of one row of `table` (by its `key`) set as the runtime sets them: a dict a jsonb column's."""
        sets = ", ".join(f"{name} = %s" for name in columns)
        values = [Jsonb(v) if isinstance(v, dict) else v for v in columns.values()]
        self.db.execute(f"UPDATE {table} SET {sets} WHERE {key} = %s", (*values, row_id))

    def _run(self, run_id: str, when: datetime, **columns: Any) -> None:
        self._update("workflow_runs", "run_id", run_id, **columns, updated_at=when)

    def step_started(self, run_id: str, path: str, step: str, when: datetime, temporal: bool = False) -> str:
        """An execution of the step at `path` begins; with `temporal`, as the Temporal projection begins it
        (`projectWorkflowRuntimeV2StepStart`), the run's row updated too."""
        last = self.db.execute(
            "SELECT max(attempt) FROM workflow_run_steps WHERE run_id = %s AND step_path = %s", (run_id, path)
        ).fetchone()
        attempt = (last[0] or 0) + 1 if last else 1
        row = self.db.execute(
            "INSERT INTO workflow_run_steps (run_id, step_path, definition_step_id, status, attempt, started_at) "
            "VALUES (%s, %s, %s, 'STARTED', %s, %s) RETURNING step_id",
            (run_id, path, step, attempt, when),
        ).fetchone()
        assert row is not None
        if temporal:  # which writes no log line
            self._run(run_id, when, node_path=path, status="RUNNING")
        else:
            context = {"definitionStepId": step, "attempt": attempt}
            self.log(run_id, when, "INFO", "Step started", str(row[0]), path, context)
        return str(row[0])

    def _step(self, step_id: str, **columns: Any) -> None:
        self._update("workflow_run_steps", "step_id", step_id, **columns)

    def action_called(
        self,
        run_id: str,
        path: str,
        action: str,
        began: datetime,
        ended: datetime,
        error: str | None = None,
        temporal: bool = False,
    ) -> str:
        """An action a step calls (`executeAction`): its invocation STARTED, then SUCCEEDED or FAILED; its id.
        With `temporal`, as the Temporal workflow's activity calls it, which writes no log line."""
        said = {"actionId": action, "actionVersion": 1, "attempt": 1}
        if not temporal:
            self.log(run_id, began, "INFO", "Action invocation started", path=path, context=said)
        row = self.db.execute(
            "INSERT INTO workflow_action_invocations (run_id, step_path, action_id, action_version, idempotency_key, "
            "status, input_json, created_at, started_at) VALUES (%s, %s, %s, 1, %s, 'STARTED', %s, %s, %s) "
            "RETURNING invocation_id",
            (run_id, path, action, str(uuid.uuid4()), Jsonb({"ticketId": "T-1"}), began, began),
        ).fetchone()
        assert row is not None
        self.db.execute(
            "UPDATE workflow_action_invocations SET status = %s, error_message = %s, completed_at = %s "
            "WHERE invocation_id = %s",
            ("FAILED" if error else "SUCCEEDED", error, ended, row[0]),
        )
        if temporal:
            return str(row[0])
        if error:
            self.log(run_id, ended, "ERROR", "Action invocation failed", path=path, context=said | {"error": error})
        else:
            self.log(run_id, ended, "INFO", "Action invocation succeeded", path=path, context=said)
        return str(row[0])

    def action_called_again(self, invocation_id: str, began: datetime, ended: datetime, error: str | None) -> None:
        """A failed call its step retries, in the same row (the Temporal workflow's `executeActionInvocation`
        claims the failed invocation: one more attempt), then its end."""
        self.db.execute(
            "UPDATE workflow_action_invocations SET status = 'STARTED', attempt = attempt + 1, started_at = %s, "
            "completed_at = NULL WHERE invocation_id = %s AND status = 'FAILED'",
            (began, invocation_id),
        )
        failure = Jsonb({"category": "ActionError", "message": error}) if error else None
        self.db.execute(
            "UPDATE workflow_action_invocations SET status = %s, error_message = %s, error_json = %s, "
            "completed_at = %s WHERE invocation_id = %s",
            ("FAILED" if error else "SUCCEEDED", error, failure, ended, invocation_id),
        )

    def step_succeeded(
        self, run_id: str, step_id: str, started: datetime, when: datetime, next_path: str | None
    ) -> None:
        ms = int((when - started).total_seconds() * 1000)
        self._step(step_id, status="SUCCEEDED", duration_ms=ms, completed_at=when)
        status = "RUNNING" if next_path else "SUCCEEDED"
        self._run(run_id, when, node_path=next_path, status=status, completed_at=None if next_path else when)
        self.log(run_id, when, "INFO", "Step succeeded", step_id, context={"durationMs": ms})
        if not next_path:
            self.log(run_id, when, "INFO", "Run completed", context={"status": "SUCCEEDED"})

    def retry_scheduled(
        self, run_id: str, step_id: str, path: str, started: datetime, when: datetime, backoff: float
    ) -> None:
        error = {"category": "TransientError", "message": "upstream 503", "nodePath": path, "at": when.isoformat()}
        ms = int((when - started).total_seconds() * 1000)
        self._step(step_id, status="RETRY_SCHEDULED", duration_ms=ms, completed_at=when, error_json=error)
        self.db.execute(
            "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, timeout_at, status, created_at) "
            "VALUES (%s, %s, 'retry', %s, 'WAITING', %s)",
            (run_id, path, when + timedelta(seconds=backoff), when),
        )
        self._run(run_id, when, status="WAITING", node_path=path, error_json=error)
        context = {"error": error, "timeoutAt": (when + timedelta(seconds=backoff)).isoformat()}
        self.log(run_id, when, "WARN", "Retry scheduled", step_id, path, context)

    def due_waits_resolved(self, run_id: str, kind: str, when: datetime) -> None:
        """The worker's tick: a due retry or time wait resolved, the run runnable again."""
        self.db.execute(
            "UPDATE workflow_run_waits SET status = 'RESOLVED', resolved_at = %s "
            "WHERE run_id = %s AND wait_type = %s AND status = 'WAITING'",
            (when, run_id, kind),
        )
        self._run(run_id, when, status="RUNNING")

    def event_wait(
        self,
        run_id: str,
        path: str,
        when: datetime,
        event: str,
        key: str,
        timeout: float | None,
        temporal: bool = False,
    ) -> None:
        """A node that waits (`publishWait`): the wait, the step left STARTED, the run WAITING; with `temporal`,
        the wait alone (`projectWorkflowRuntimeV2EventWaitStart`), its run left RUNNING."""
        timeout_at = when + timedelta(seconds=timeout) if timeout is not None else None
        self.db.execute(
            "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, key, event_name, timeout_at, status, "
            "created_at) VALUES (%s, %s, 'event', %s, %s, %s, 'WAITING', %s)",
            (run_id, path, key, event, timeout_at, when),
        )
        if not temporal:
            self._run(run_id, when, status="WAITING")

    def human_task(self, run_id: str, path: str, when: datetime, task_type: str, temporal: bool = False) -> str:
        """A task for a person (`startWorkflowRuntimeV2HumanTaskWait`): a wait keyed by the task's id, answered
        by the event `HUMAN_TASK_COMPLETED`; the task's id. With `temporal`, the run's row is left as it was."""
        task_id = str(uuid.uuid4())
        self.db.execute(
            "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, key, event_name, status, payload, "
            "created_at) VALUES (%s, %s, 'human', %s, 'HUMAN_TASK_COMPLETED', 'WAITING', %s, %s)",
            (run_id, path, task_id, Jsonb({"taskId": task_id, "taskType": task_type}), when),
        )
        if not temporal:
            self._run(run_id, when, status="WAITING")
        return task_id

    def time_wait(self, run_id: str, path: str, when: datetime, seconds: float) -> None:
        self.db.execute(
            "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, timeout_at, status, created_at) "
            "VALUES (%s, %s, 'time', %s, 'WAITING', %s)",
            (run_id, path, when + timedelta(seconds=seconds), when),
        )
        self._run(run_id, when, status="WAITING")

    def event_arrived(self, run_id: str, event: str, when: datetime, temporal: bool = False) -> None:
        """The event a wait waits for: the wait resolved, the run RUNNING again; with `temporal`, the wait alone
        (`projectWorkflowRuntimeV2EventWaitResolved`): the step's end, which the caller writes, updates the run."""
        self.db.execute(
            "UPDATE workflow_run_waits SET status = 'RESOLVED', resolved_at = %s "
            "WHERE run_id = %s AND event_name = %s AND status = 'WAITING'",
            (when, run_id, event),
        )
        if not temporal:
            self._run(run_id, when, status="RUNNING", resume_event_name=event)

    def step_failed(self, run_id: str, step_id: str, path: str, started: datetime, when: datetime) -> None:
        error = {"category": "ActionError", "message": "ticket not found", "nodePath": path, "at": when.isoformat()}
        ms = int((when - started).total_seconds() * 1000)
        self._step(step_id, status="FAILED", duration_ms=ms, completed_at=when, error_json=error)
        self._run(run_id, when, status="FAILED", node_path=None, error_json=error, completed_at=when)
        self.log(run_id, when, "ERROR", "Run failed", step_id, path, error)

    def canceled(self, run_id: str, when: datetime, reason: str | None = None) -> None:
        """The run cancelled: by its operator when a `reason` is given (`cancelWorkflowRunAction`, which logs it)."""
        self._run(run_id, when, status="CANCELED", node_path=None, completed_at=when)
        self.db.execute(
            "UPDATE workflow_run_waits SET status = 'CANCELED', resolved_at = %s "
            "WHERE run_id = %s AND status = 'WAITING'",
            (when, run_id),
        )
        if reason is not None:
            self.log(run_id, when, "WARN", "Run canceled by operator", context={"reason": reason}, source="api")

    def requeued(self, run_id: str, when: datetime, reason: str) -> None:
        """Its latest event wait put back to waiting by its operator (`requeueWorkflowRunEventWaitAction`)."""
        row = self.db.execute(
            "SELECT wait_id, step_path FROM workflow_run_waits WHERE run_id = %s AND wait_type = 'event' "
            "ORDER BY created_at DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        assert row is not None
        self.db.execute(
            "UPDATE workflow_run_waits SET status = 'WAITING', resolved_at = NULL WHERE wait_id = %s", (row[0],)
        )
        self._run(run_id, when, status="WAITING", node_path=row[1], completed_at=None, error_json=None)
        context = {"reason": reason, "waitId": str(row[0])}
        self.log(run_id, when, "INFO", "Event wait requeued by operator", context=context, source="api")

    def temporal_step_ended(
        self, run_id: str, step_id: str, path: str, started: datetime, when: datetime, error: str | None = None
    ) -> None:
        """A step's end as the Temporal workflow projects it (`projectWorkflowRuntimeV2StepCompletion`): a failed
        step marks its run FAILED, without `completed_at` — a catch block may yet take the failure."""
        ms = int((when - started).total_seconds() * 1000)
        said = {"message": error} if error else None
        self._step(
            step_id, status="FAILED" if error else "SUCCEEDED", duration_ms=ms, completed_at=when, error_json=said
        )
        if said:
            self._run(run_id, when, status="FAILED", error_json=said | {"nodePath": path})
        else:
            self._run(run_id, when, status="RUNNING", error_json=None)

    def temporal_canceled(self, run_id: str, step_id: str, started: datetime, when: datetime) -> None:
        """Its Temporal workflow cancelled while a step waited: the wait, the step and the run CANCELED, the run
        without `completed_at` until `temporal_run_completed`."""
        self.db.execute(
            "UPDATE workflow_run_waits SET status = 'CANCELED', resolved_at = %s "
            "WHERE run_id = %s AND status = 'WAITING'",
            (when, run_id),
        )
        ms = int((when - started).total_seconds() * 1000)
        self._step(step_id, status="CANCELED", duration_ms=ms, completed_at=when)
        self._run(run_id, when, status="CANCELED")

    def temporal_run_completed(self, run_id: str, when: datetime, status: str) -> None:
        """The run's end as the Temporal workflow writes it (`completeWorkflowRuntimeV2Run`)."""
        self._run(run_id, when, status=status, node_path=None, completed_at=when)

    def quota_paused(self, run_id: str, path: str, when: datetime, used: int, limit: int, until: datetime) -> None:
        """Its tenant's step quota for the period used up as a step was to start (`reserveStepStart`): a quota
        wait until the period ends, the run WAITING."""
        said = {"reason": "workflow_step_quota_exceeded", "usedCount": used, "effectiveLimit": limit,
                "periodEnd": until.isoformat()}  # fmt: skip
        self.db.execute(
            "INSERT INTO workflow_run_waits (run_id, step_path, wait_type, timeout_at, status, payload, created_at) "
            "VALUES (%s, %s, 'quota', %s, 'WAITING', %s, %s)",
            (run_id, path, until, Jsonb(said), when),
        )
        quota = {"category": "QuotaExceeded", "message": "Workflow step quota exceeded for current billing period"}
        self._run(run_id, when, node_path=path, status="WAITING", error_json=quota | {"nodePath": path})

    def quota_resumed(self, run_id: str, path: str, when: datetime) -> None:
        """Its tenant has steps to run again: the runtime's scheduled scan (`workflowQuotaResumeScanHandler`)
        resolves the quota wait and sets the run RUNNING, leaving the run's `updated_at` as it was."""
        wait = self.db.execute(
            "UPDATE workflow_run_waits SET status = 'RESOLVED', resolved_at = %s "
            "WHERE run_id = %s AND wait_type = 'quota' AND status = 'WAITING' RETURNING wait_id",
            (when, run_id),
        ).fetchone()
        self.db.execute(
            "UPDATE workflow_runs SET status = 'RUNNING', resume_event_name = NULL, resume_event_payload = NULL, "
            "resume_error = NULL WHERE run_id = %s AND status = 'WAITING'",
            (run_id,),
        )
        context = {"waitId": str(wait[0]) if wait else None, "resumedBy": "job:workflow-quota-resume-scan"}
        self.log(run_id, when, "INFO", "Quota wait resolved by scheduled scan", path=path, context=context,
                 source="worker")  # fmt: skip

    def retried(self, run_id: str, path: str, when: datetime, reason: str) -> None:
        """A failed run retried by its operator (`retryWorkflowRunAction`): RUNNING again from its failed step,
        which the caller then runs again."""
        self._run(run_id, when, status="RUNNING", node_path=path, completed_at=None, error_json=None)
        context = {"reason": reason, "nodePath": path}
        self.log(run_id, when, "INFO", "Run retry requested", context=context, source="api")

    def event_taken(
        self,
        name: str,
        when: datetime | None,
        key: str | None = "T-1",
        started: str | None = None,
        resumed: tuple[str, str] | None = None,
        error: str | None = None,
        skipped: Sequence[tuple[str, str, str]] = (),
    ) -> str:
        """An event the event worker takes in (`WorkflowRuntimeV2EventStreamWorker.processEvent`), at `when` (None:
        the database's now): its row, written as it takes it, then the workflows it did not launch (`skipped`:
        each one's id, reason and message, its tenant a uuid), the run it `started`, or the run and step whose
        wait it `resumed`, and the error that came of it — by default as the worker writes it of the skips, and
        of no correlation `key`; its id."""
        event_id = str(uuid.uuid4())
        self.db.execute(
            "INSERT INTO workflow_runtime_events (event_id, tenant, event_name, correlation_key, payload, "
            "created_at, processed_at) VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()), coalesce(%s, now()))",
            (event_id, self.tenant, name, key, Jsonb({"ticketId": key}), when, when),
        )
        for workflow_id, why, message in skipped:
            self.db.execute(
                "INSERT INTO workflow_event_launch_skips (tenant, event_id, workflow_id, event_name, reason, "
                "intentional, message, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, coalesce(%s, now()))",
                (self.tenant, event_id, workflow_id, name, why, why in INTENTIONAL_SKIPS, message, when),
            )
        if error is None:
            error = _error_of(skipped, launched=started is not None or resumed is not None)
        if error is None and key is None:
            error = (
                "Missing workflow correlation key (no explicit key and no configured derivation path produced a value)"
            )
        matched = resumed[0] if resumed is not None else started
        if matched is not None:
            step = resumed[1] if resumed is not None else None
            self._update(
                "workflow_runtime_events", "event_id", event_id, matched_run_id=matched, matched_step_path=step
            )
        if error is not None:
            self._update("workflow_runtime_events", "event_id", event_id, error_message=error)
        return event_id

    def schedule(self, name: str, when: datetime, every: timedelta | None = None) -> str:
        """A schedule of this workflow (`createWorkflowScheduleAction`): `every` so long (a cron), or once, `when`
        and its first occurrence `every` later (or at once)."""
        schedule_id = str(uuid.uuid4())
        kind, cron = ("recurring", f"every {every.total_seconds():g}s") if every else ("schedule", None)
        first = when + (every or timedelta(0))
        self.db.execute(
            "INSERT INTO tenant_workflow_schedule (id, tenant, workflow_id, workflow_version, name, trigger_type, "
            "run_at, cron, timezone, payload_json, next_fire_at, created_at, updated_at) "
            "VALUES (%s, %s, %s, 3, %s, %s, %s, %s, 'UTC', '{}', %s, %s, %s)",
            (schedule_id, self.tenant, self.workflow_id, name, kind, None if every else first, cron, first, when,
             when),
        )  # fmt: skip
        return schedule_id

    def schedule_fired(
        self,
        schedule_id: str,
        when: datetime,
        result: str = "success",
        error: str | None = None,
        then: datetime | None = None,
    ) -> None:
        """An occurrence, as the scheduled-run handler writes it (`runScheduledWorkflow`) once it launched its run
        (`result` success, the run the caller's; `error`: its launch failed; `skipped`: not a business day),
        with the next occurrence `then` in the same update (none: a one-time schedule, done)."""
        fire_key = f"workflow-schedule-fire:{schedule_id}:{uuid.uuid4()}"
        done = {} if then else {"enabled": False, "status": "completed", "next_fire_at": None}
        columns = {"last_fire_at": when, "last_run_status": result, "last_error": error, "last_fire_key": fire_key,
                   "next_fire_at": then, **done}  # fmt: skip
        self._schedule(schedule_id, when + timedelta(milliseconds=40), **columns)

    def schedule_disabled(self, schedule_id: str, when: datetime) -> None:
        """Its operator turned it off (`updateWorkflowScheduleAction`, enabled false)."""
        self._schedule(schedule_id, when, enabled=False, status="disabled", next_fire_at=None)

    def schedule_deleted(self, schedule_id: str) -> None:
        self.db.execute("DELETE FROM tenant_workflow_schedule WHERE id = %s", (schedule_id,))

    def _schedule(self, schedule_id: str, when: datetime, **columns: Any) -> None:
        self._update("tenant_workflow_schedule", "id", schedule_id, **columns, updated_at=when)


Scheduled = list[tuple[float, Callable[[datetime], None]]]  # (Unix time to write at, the write, given that time)


def _error_of(skipped: Sequence[tuple[str, str, str]], launched: bool) -> str | None:
    """The error the event worker writes of the workflows it did not launch for an event: the launches that
    failed, or, when nothing launched, its validation's and its diagnostics' (paused and guarded: none)."""
    failed = [
        f"Failed to launch Temporal workflow for workflow {w}: {m.removeprefix(_LAUNCH_FAILED)}"
        for w, why, m in skipped
        if why == "launch_failed"
    ]
    if failed:
        return "\n".join(failed)
    if launched:
        return None
    told = [
        f"Skipped workflow {w} ({w}): {m[:1].lower()}{m[1:]}"
        if why in _DIAGNOSTIC
        else m.replace("Payload validation failed", f"Payload validation failed for workflow {w} ({w})", 1)
        for section in (_VALIDATION, _DIAGNOSTIC)
        for w, why, m in skipped
        if why in section
    ]
    return "\n".join(told) or None


def _due_in_turn(writes: Scheduled, start: float) -> Callable[[float, Callable[[datetime], None]], None]:
    """`then(delay_ms, write)`: puts `write` in `writes`, due `delay_ms` after the one before (the first, after
    `start`)."""
    clock = start

    def then(delay_ms: float, write: Callable[[datetime], None]) -> None:
        nonlocal clock
        clock += delay_ms / 1000
        writes.append((clock, write))

    return then


def _event_taken(
    runtime: Runtime,
    run: dict[str, Any],
    name: str,
    key: str,
    resumed: str | None = None,
    skipped: Sequence[tuple[str, str, str]] = (),
) -> Callable[[datetime], None]:
    """The write of the event that started `run` (and not the workflows `skipped`), or, `resumed` (a step's
    path), resumed its wait there."""

    def write(when: datetime) -> None:
        if resumed is None:
            runtime.event_taken(name, when, key, started=run["id"], skipped=skipped)
        else:
            runtime.event_taken(name, when, key, resumed=(run["id"], resumed))

    return write


def scenario(
    runtime: Runtime,
    now: float,
    rng: random.Random,
    stranded: bool = False,
    skipped: Sequence[tuple[str, str, str]] = (),
) -> Scheduled:
    """One ticket escalation, its writes due at their times (waits compressed to seconds): looks the ticket
    up (one time in four a 503, retried after a backoff), waits for a manager's approval, notifies; one
    time in eight the lookup fails, and half of those runs its operator retries a few seconds later; one in
    ten is cancelled by its operator while it waits. `stranded`: launched on Temporal, and no worker takes
    it (none consumes its task queue): RUNNING with no step, for good. `skipped`: the workflows the event that
    launched it did not launch beside it (their ids, reasons and messages)."""
    run: dict[str, Any] = {}
    writes: Scheduled = []
    then = _due_in_turn(writes, now)

    def started(path: str, step: str) -> Callable[[datetime], None]:
        return lambda when: run.update(step=runtime.step_started(run["id"], path, step, when), began=when, path=path)

    def calling(action: str, ends: Callable[[datetime], None], error: str | None = None) -> Callable[[datetime], None]:
        """The step's action, called as it began and returning (or failing) as it ends, then the step's end."""

        def write(when: datetime) -> None:
            runtime.action_called(run["id"], run["path"], action, run["began"] + timedelta(milliseconds=2), when, error)
            ends(when)

        return write

    ticket = {"ticketId": f"T-{rng.randint(1, 99_999)}"}
    then(0, lambda when: run.update(id=runtime.start_run(when, ticket, temporal=stranded)))
    then(0, _event_taken(runtime, run, "TICKET_CREATED", ticket["ticketId"], skipped=skipped))
    if stranded:
        return writes
    then(rng.randint(20, 120), started("root.steps[0]", "lookupTicket"))
    if rng.random() < 0.25:
        backoff = rng.uniform(1, 3)
        then(
            rng.randint(100, 500),
            calling(
                "tickets.find",
                lambda when: runtime.retry_scheduled(
                    run["id"], run["step"], "root.steps[0]", run["began"], when, backoff
                ),
                error="upstream 503",
            ),
        )
        then(backoff * 1000, lambda when: runtime.due_waits_resolved(run["id"], "retry", when))
        then(20, started("root.steps[0]", "lookupTicket"))
    if rng.random() < 0.125:
        then(
            rng.randint(100, 600),
            calling(
                "tickets.find",
                lambda when: runtime.step_failed(run["id"], run["step"], "root.steps[0]", run["began"], when),
                error="ticket not found",
            ),
        )
        if rng.random() < 0.5:
            return writes
        restored = "the ticket was restored"
        then(rng.randint(2000, 5000), lambda when: runtime.retried(run["id"], "root.steps[0]", when, restored))
        then(20, started("root.steps[0]", "lookupTicket"))
    then(
        rng.randint(100, 600),
        calling(
            "tickets.find",
            lambda when: runtime.step_succeeded(run["id"], run["step"], run["began"], when, "root.steps[1]"),
        ),
    )
    then(10, started("root.steps[1]", "awaitApproval"))
    # A manager's approval: half the time a task in the inbox, else an event from the ticketing system.
    answer = "HUMAN_TASK_COMPLETED" if rng.random() < 0.5 else "TICKET_APPROVED"
    if answer == "TICKET_APPROVED":
        key = f"T-{rng.randint(1, 99_999)}"
        then(30, lambda when: runtime.event_wait(run["id"], "root.steps[1]", when, answer, key, timeout=3600))
    else:
        then(
            30, lambda when: run.update(task=runtime.human_task(run["id"], "root.steps[1]", when, "escalationApproval"))
        )
    if rng.random() < 0.1:
        then(rng.randint(1000, 4000), lambda when: runtime.canceled(run["id"], when, "duplicate ticket"))
        return writes
    then(rng.randint(1000, 5000), lambda when: runtime.event_arrived(run["id"], answer, when))
    then(0, _event_taken(runtime, run, answer, ticket["ticketId"], resumed="root.steps[1]"))
    then(20, started("root.steps[1]", "awaitApproval"))
    then(5, lambda when: runtime.step_succeeded(run["id"], run["step"], run["began"], when, "root.steps[2]"))
    then(10, started("root.steps[2]", "notifyRequester"))
    then(
        rng.randint(50, 400),
        calling("email.send", lambda when: runtime.step_succeeded(run["id"], run["step"], run["began"], when, None)),
    )
    return writes


def temporal_scenario(
    runtime: Runtime,
    now: float,
    rng: random.Random,
    schedule: tuple[str, str, datetime] | None = None,
    skipped: Sequence[tuple[str, str, str]] = (),
) -> Scheduled:
    """One ticket escalation as the runtime's Temporal workflow runs it (its only mode since June 2026), its
    writes due at their times: the lookup in a try block, its call retried within the step after a 503 one
    time in four; one time in eight the ticket is not found and the catch block tells its owner; a manager's
    approval — a task or an event, the run left RUNNING meanwhile (the workflow projects its waits without
    its run) —, and a notification. One in ten is cancelled while it waits. Launched by an occurrence of a
    `schedule` (its id, name and the occurrence's time) when given; else by an event, which did not launch
    the workflows `skipped`."""
    run: dict[str, Any] = {}
    writes: Scheduled = []
    then = _due_in_turn(writes, now)

    def started(path: str, step: str) -> Callable[[datetime], None]:
        return lambda when: run.update(
            step=runtime.step_started(run["id"], path, step, when, temporal=True), began=when, path=path
        )

    def ended(error: str | None = None) -> Callable[[datetime], None]:
        return lambda when: runtime.temporal_step_ended(run["id"], run["step"], run["path"], run["began"], when, error)

    def call(action: str, error: str | None = None) -> Callable[[datetime], None]:
        return lambda when: run.update(
            call=runtime.action_called(run["id"], run["path"], action, run["began"], when, error, temporal=True)
        )

    ticket = {"ticketId": f"T-{rng.randint(1, 99_999)}"}
    then(0, lambda when: run.update(id=runtime.start_run(when, ticket, temporal=True, schedule=schedule)))
    if schedule is None:
        then(0, _event_taken(runtime, run, "TICKET_CREATED", ticket["ticketId"], skipped=skipped))
    then(rng.randint(20, 120), started("root.steps[0]", "tryLookup"))
    then(2, ended())  # a control.tryCatch step: its try block next
    then(3, started("root.steps[0].try.steps[0]", "lookupTicket"))
    missing = "ticket not found" if rng.random() < 0.125 else None
    if rng.random() < 0.25:
        then(rng.randint(100, 500), call("tickets.find", "upstream 503"))
        then(rng.uniform(1000, 3000), lambda when: run.update(again=when))  # its backoff, slept in the workflow
        then(
            rng.randint(100, 600),
            lambda when: runtime.action_called_again(run["call"], run["again"], when, missing),
        )
    else:
        then(rng.randint(100, 600), call("tickets.find", missing))
    then(1, ended(missing))
    if missing:
        then(20, started("root.steps[0].catch.steps[0]", "notifyOwner"))
        then(rng.randint(50, 300), call("email.send"))
        then(1, ended())
    then(10, started("root.steps[1]", "awaitApproval"))
    answer = "HUMAN_TASK_COMPLETED" if rng.random() < 0.5 else "TICKET_APPROVED"
    if answer == "TICKET_APPROVED":
        key = f"T-{rng.randint(1, 99_999)}"
        then(30, lambda when: runtime.event_wait(run["id"], "root.steps[1]", when, answer, key, 3600, temporal=True))
    else:
        then(
            30,
            lambda when: run.update(
                task=runtime.human_task(run["id"], "root.steps[1]", when, "escalationApproval", temporal=True)
            ),
        )
    if rng.random() < 0.1:
        then(
            rng.randint(1000, 4000),
            lambda when: runtime.temporal_canceled(run["id"], run["step"], run["began"], when),
        )
        then(5, lambda when: runtime.temporal_run_completed(run["id"], when, "CANCELED"))
        return writes
    then(rng.randint(1000, 5000), lambda when: runtime.event_arrived(run["id"], answer, when, temporal=True))
    then(0, _event_taken(runtime, run, answer, ticket["ticketId"], resumed="root.steps[1]"))
    then(5, ended())
    then(10, started("root.steps[2]", "notifyRequester"))
    then(rng.randint(50, 400), call("email.send"))
    then(1, ended())
    then(2, lambda when: runtime.temporal_run_completed(run["id"], when, "SUCCEEDED"))
    return writes
