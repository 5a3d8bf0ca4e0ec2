"""Follows the runtime v2's runs in its PostgreSQL tables (sources/runtime_v2.py), beside the HTTP endpoint.

The runtime publishes nothing; it updates its rows in place. Every change its interpreter makes
to a run's steps, waits and actions is followed by an update of the run's row (`updated_at`), so
the poller reads the runs changed since its mark, oldest first, and with each the rows of its
steps, waits, actions and log lines changed since it last read the run — all of them for a run
this process has not read yet, so a run first met mid-way (or met again after a restart) gets its
whole trace, once. A run Temporal drives writes its waits without updating its row: the waits
still waiting are read at every poll too; so are the log lines of a run that ended within the
overlap, which the runtime writes just after the run's last update (its end, an operator's
cancel). A run that ended within the second before a poll (by the database's clock) is left to the
next poll, once, so that those lines come with its end: handed over before them, its trace was sent
before they were read. The mark is kept with the state once the rows are committed, so a restarted
bridge goes on where it stopped.

`updated_at` is written by the runtime's workers' clocks (to the millisecond) and committed a
moment after: each poll reads again the last `overlap` seconds, handing over again only runs whose
row changed since they were read — by its version (`xmin`), not its `updated_at` alone, which two
updates of one millisecond share; of the others, only their keys are read again. A row read twice
tells the same facts under the same event ids: a no-op.

The workflows' schedules, written at each occurrence, are read as the runs are (those written within the
overlap by their keys and row versions, a row again only once it changed), and all their keys once their
count says one is gone, which is told deleted.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import orjson
import psycopg

from otel_bridge.consumer import EventConsumer, Unavailable
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.lease import Lease
from otel_bridge.repeated_failure import Backoff, Cadence
from otel_bridge.repeated_failure import told_followed as _told_followed
from otel_bridge.repeated_failure import told_unreachable as _told_unreachable
from otel_bridge.sources.runtime_v2 import ALWAYS_READ, CANCELED_BY_OPERATOR, OPERATOR_LINES, RETRY_REQUESTED
from otel_bridge.urls import without_secrets

log = logging.getLogger(__name__)

_BOOKMARK = "runtime-v2 runs updated_at"
# The schedules read, what names each (JSON): one deleted while no bridge read the tables is ended at the next start.
_SCHEDULES_KNOWN = "runtime-v2 schedules read"
# What the poller reads (and `check` looks for).
TABLES = (
    "workflow_runs",
    "workflow_run_steps",
    "workflow_run_waits",
    "workflow_action_invocations",
    "workflow_run_logs",
    "workflow_definitions",
)
# Where a keyset page starts when no run of that instant was read yet: before every uuid.
_FIRST_ID = "00000000-0000-0000-0000-000000000000"
# How long before a run's row's last update the lines its log is read again for were written: the
# runtime writes them after it, from the process that updated the row (clocks of one machine). A run that
# ended within it is read at the next poll (`_holds`).
_TRAILING = timedelta(seconds=1)
# Whether a run's row says it ended (a run Temporal drives may be marked FAILED a moment before a catch block
# takes the failure on), and whether it was updated within `_TRAILING` of the database's clock.
_DONE = "r.status IN ('SUCCEEDED', 'FAILED', 'CANCELED')"
_JUST_UPDATED = f"r.updated_at > now() - interval '{_TRAILING.total_seconds():g} seconds'"
# Rows handed to the pipeline at once: a run of 20,000 steps read whole (its log at `info`, 60,000 rows) peaked
# at 355 MiB handed over in one batch, 189 MiB in batches of 5,000.
_BATCH = 5_000
# Runs remembered as read (when, and what their row said): one met again past it is read whole again, once.
_REMEMBERED = 100_000
# Payloads the bridge does not show (the input only with capture_input): not read at all.
_RUN_PAYLOADS = ["resume_event_payload", "trigger_metadata_json", "resume_error"]


def _retries(row: str, at: str) -> str:
    """How many retries of a failed run its operator asked for by `at`: which of the run's traces the row
    `row` belongs to. Counted in the query's `retried` (`_asked`), the times they were asked for, per run."""
    return f"(SELECT count(*) FROM retried q, unnest(q.asked) t WHERE q.run_id = {row}.run_id AND t <= {at})"


def _asked(runs: str) -> str:
    """`retried`: for each of the runs `runs` selects, when a retry of it was asked for — its log read once
    a query, by the runtime's index on (run_id, created_at), not once a row."""
    return (
        f"WITH retried AS MATERIALIZED (SELECT run_id, array_agg(created_at) AS asked FROM workflow_run_logs "
        f"WHERE message = '{RETRY_REQUESTED}' AND run_id IN ({runs}) GROUP BY run_id)\n"
    )


def _execution(row: str, at: str) -> str:
    """The execution of its step the row `row` was written in, by `at`: the latest at its path by then."""
    return (
        f"(SELECT max(s.attempt) FROM workflow_run_steps s "
        f"WHERE s.run_id = {row}.run_id AND s.step_path = {row}.step_path AND s.started_at <= {at})"
    )


def _named(row: str) -> str:
    """What a row of a run or a schedule (`row`) reads its workflow's name (`d.name`) by, after its FROM."""
    return f"LEFT JOIN workflow_definitions d ON d.workflow_id = {row}.workflow_id"


_GIVEN_RUNS = _asked("SELECT unnest(%(runs)s::uuid[])")

# The schedule whose occurrence launched a run, from what its launch wrote of it (its trigger's metadata, a
# payload otherwise not read; read through the row's JSON: older schemas have no such column).
_LAUNCHED_BY = ", ".join(
    f"'{field}', to_jsonb(r)->'trigger_metadata_json'->>'{key}'"
    for field, key in (
        ("schedule_id", "scheduleId"),
        ("schedule_name", "scheduleName"),
        ("scheduled_for", "scheduledFor"),
    )
)
# A run's row, with its workflow's name, its retries and when the latest was asked for, the schedule that
# launched it, and for one its operator cancelled, the reason they gave (in its log: the run's cancel action
# writes it a moment after).
_RUN_ROW = f"""(to_jsonb(r) - %(dropped)s::text[] || jsonb_build_object(
          'workflow_name', d.name, 'retries', {_retries("r", "'infinity'")}, {_LAUNCHED_BY}, 'retried_at', (
            SELECT max(t) FROM retried q, unnest(q.asked) t WHERE q.run_id = r.run_id),
          'cancel_reason', CASE WHEN r.status = 'CANCELED' THEN (
            SELECT l.context_json->>'reason' FROM workflow_run_logs l
            WHERE l.run_id = r.run_id AND l.message = '{CANCELED_BY_OPERATOR}'
            ORDER BY l.created_at DESC LIMIT 1) END))::text"""
# What `_RUN_ROW` reads its workflow's name by, after `FROM workflow_runs r`.
_NAMED = _named("r")
# The runs changed past a point, by their keys alone, with the version of their row (`xmin`, new at every
# update, even two in one millisecond): the overlap is read again at every poll, and most of it was read.
_RUN_KEYS = f"""
SELECT r.updated_at, r.run_id::text, r.xmin::text, {_DONE}, {_JUST_UPDATED}
FROM workflow_runs r
WHERE r.updated_at >= %(after)s AND (r.updated_at, r.run_id::text) > (%(after)s, %(after_id)s)
ORDER BY r.updated_at, r.run_id::text
LIMIT %(limit)s
"""
# The rows of those not read as they are.
_RUNS = f"""
SELECT {_RUN_ROW}
FROM workflow_runs r {_NAMED}
WHERE r.run_id = ANY(%(runs)s::uuid[])
"""
# A step's row, and for one left STARTED when the step was run again (the runtime's interpreter resumes a
# wait in a new execution; a worker that died leaves its execution so): when the next began, and when the
# wait at that path between them began, if one did.
_STEP_ROW = f"""(to_jsonb(s) - 'snapshot_id' || jsonb_build_object('retries', {_retries("s", "s.started_at")})
        || CASE WHEN s.status <> 'STARTED' THEN '{{}}' ELSE coalesce((
          SELECT jsonb_build_object('next_started_at', n.started_at, 'waited_at', (
                   SELECT max(w.created_at) FROM workflow_run_waits w
                   WHERE w.run_id = s.run_id AND w.step_path = s.step_path
                     AND w.created_at >= s.started_at AND w.created_at <= n.started_at))
          FROM workflow_run_steps n
          WHERE n.run_id = s.run_id AND n.step_path = s.step_path AND n.attempt = s.attempt + 1), '{{}}') END)::text"""
# The rows of the changed runs changed since each run was last read (`since` null: all of them), found by
# run_id (the runtime's index on steps' (run_id, step_path)); and an execution left STARTED whose step
# was run again since.
_STEPS = f"""
SELECT {_STEP_ROW}
FROM workflow_run_steps s
JOIN unnest(%(runs)s::uuid[], %(since)s::timestamptz[]) AS c(run_id, since) ON s.run_id = c.run_id
WHERE c.since IS NULL OR s.started_at >= c.since OR s.completed_at >= c.since
   OR (s.status = 'STARTED' AND EXISTS (
         SELECT 1 FROM workflow_run_steps n
         WHERE n.run_id = s.run_id AND n.step_path = s.step_path AND n.attempt = s.attempt + 1
           AND n.started_at >= c.since))
"""
# A wait names its step's path, not the execution it parked: the latest one at that path by then.
_WAIT_ROW = f"""(to_jsonb(w) - 'payload' || jsonb_build_object(
          'task_type', w.payload->>'taskType', 'quota_used', w.payload->>'usedCount',
          'quota_limit', w.payload->>'effectiveLimit', 'retries', {_retries("w", "w.created_at")}) || coalesce((
          SELECT jsonb_build_object('attempt', s.attempt, 'definition_step_id', s.definition_step_id)
          FROM workflow_run_steps s
          WHERE s.run_id = w.run_id AND s.step_path = w.step_path AND s.started_at <= w.created_at
          ORDER BY s.attempt DESC LIMIT 1), '{{}}'))::text"""
_WAITS = f"""
SELECT {_WAIT_ROW}
FROM workflow_run_waits w
JOIN unnest(%(runs)s::uuid[], %(since)s::timestamptz[]) AS c(run_id, since) ON w.run_id = c.run_id
WHERE c.since IS NULL OR w.created_at >= c.since OR w.resolved_at >= c.since
"""
# The actions a step called, ended since (their inputs and outputs not read), each with the execution of
# its step it was called from: the latest at its path by then.
_ACTION_ROW = f"""(to_jsonb(a) - 'input_json' - 'output_json' - 'idempotency_key' - 'lease_owner' - 'lease_expires_at'
        || jsonb_build_object('retries', {_retries("a", "coalesce(a.started_at, a.created_at)")},
             'invocation_attempt', a.attempt, 'attempt', {_execution("a", "a.started_at")}))::text"""
_ACTIONS = f"""
SELECT {_ACTION_ROW}
FROM workflow_action_invocations a
JOIN unnest(%(runs)s::uuid[], %(since)s::timestamptz[]) AS c(run_id, since) ON a.run_id = c.run_id
WHERE a.completed_at IS NOT NULL AND (c.since IS NULL OR a.completed_at >= c.since)
"""
# The run's log lines written since (`since` null: all of them) that are told (at a level asked for, an
# operator's, a retry asked for), each with the execution of its step it was written in, and for a retry
# when the run retried did its last; by the runtime's index on the log's (run_id, created_at).
_LOG_ROW = f"""(to_jsonb(l) || jsonb_build_object(
          'retries', {_retries("l", "l.created_at")},
          'attempt', coalesce(
            (SELECT s.attempt FROM workflow_run_steps s WHERE s.step_id = l.step_id),
            {_execution("l", "l.created_at")}),
          'ended_at', CASE WHEN l.message = '{RETRY_REQUESTED}' THEN (
            SELECT max(s.completed_at) FROM workflow_run_steps s
            WHERE s.run_id = l.run_id AND s.started_at <= l.created_at) END)
        || CASE WHEN l.message <> '{RETRY_REQUESTED}' THEN '{{}}' ELSE jsonb_build_object(
          'run', (SELECT {_RUN_ROW}::jsonb FROM workflow_runs r {_NAMED} WHERE r.run_id = l.run_id),
          'failed_error', (SELECT s.error_json FROM workflow_run_steps s
                           WHERE s.run_id = l.run_id AND s.status = 'FAILED' AND s.started_at <= l.created_at
                           ORDER BY s.completed_at DESC LIMIT 1)) END)::text"""
_LOG_TOLD = f"""(l.level = ANY(%(levels)s::text[]) OR l.message IN ({", ".join(f"'{m}'" for m in ALWAYS_READ)})
       OR (%(operators)s AND l.level = 'INFO' AND l.message = ANY(%(operator_lines)s::text[])))"""
_LOGS = f"""
SELECT {_LOG_ROW}
FROM workflow_run_logs l
JOIN unnest(%(runs)s::uuid[], %(since)s::timestamptz[]) AS c(run_id, since) ON l.run_id = c.run_id
WHERE (c.since IS NULL OR l.created_at >= c.since) AND {_LOG_TOLD}
"""
# All of them in one read, the retries asked for counted once: the rows of runs changed, or the lines of
# the log of runs that ended (`_TRAILING`).
_TAKE = f"{_GIVEN_RUNS}{_RUNS}UNION ALL{_STEPS}UNION ALL{_WAITS}UNION ALL{_ACTIONS}UNION ALL{_LOGS}"
_TRAILING_LINES = f"{_GIVEN_RUNS}{_LOGS}"
# An event the runtime took in, as its row is, but its payload (the event's data, not shown).
_EVENT_JSON = "(to_jsonb(e) - 'payload' - 'schema_ref_conflict')"
_EVENT_ROW = f"{_EVENT_JSON}::text"
# The waits still waiting, by the runtime's index on (wait_type, status): a run that Temporal drives writes
# its waits without updating its own row, so they are not met through it until the run goes on. Their ids
# at every poll (a task may wait for days), and the rows of a new one once, with its run's key and version,
# and once more as it leaves them.
_WAITING = """
SELECT w.wait_id::text FROM workflow_run_waits w
WHERE w.wait_type IN ('retry', 'time', 'event', 'human', 'quota') AND w.status = 'WAITING' AND w.created_at >= %(after)s
"""
_WAITING_ROWS = f"""{_asked("SELECT run_id FROM workflow_run_waits WHERE wait_id = ANY(%(waits)s::uuid[])")}
SELECT {_WAIT_ROW}, r.run_id::text, r.updated_at, r.xmin::text, {_DONE} AND {_JUST_UPDATED}
FROM workflow_run_waits w
JOIN workflow_runs r ON r.run_id = w.run_id
WHERE w.wait_id = ANY(%(waits)s::uuid[])
"""


def _kept(table: str) -> str:
    """Whether `table`, which only some editions or versions of the runtime have, is there (null: no) and may be
    read: without it, or without the right, the runs are read as before."""
    return f"SELECT CASE WHEN to_regclass('{table}') IS NOT NULL THEN has_table_privilege('{table}', 'SELECT') END"


# The workflows' schedules (an edition of the runtime without them has no such table): the keys and versions
# of the rows written since the latest read (less the overlap) at every poll, and the rows changed since read,
# with their workflow's name. A row last written before this process's first mark tells
# the occurrence it awaits, not the one it last had: that is history the bridge did not follow (counted
# again after a restart once its event ids were forgotten, it would be an execution counted twice).
SCHEDULES_KEPT = _kept("tenant_workflow_schedule")
_SCHEDULE_KEYS = "SELECT s.id::text, s.xmin::text FROM tenant_workflow_schedule s"
# Those written since a moment; how many there are, and the latest written: all their keys are read only when
# the count says one is gone (10,000 schedules: 13-18 ms of the bridge's CPU a poll, each key compared).
_RECENT_SCHEDULES = f"{_SCHEDULE_KEYS} WHERE s.updated_at >= %(after)s"
_SCHEDULES_COUNTED = "SELECT count(*), max(updated_at) FROM tenant_workflow_schedule"
_OCCURRENCE = ["last_fire_at", "last_run_status", "last_error", "last_fire_key"]
# What names a schedule's job, kept to tell that it is awaited no more once its row is gone.
_NAMING = ("id", "workflow_id", "workflow_name", "name", "trigger_type")
_DELETED = {"enabled": False, "status": "deleted", "next_fire_at": None}
_SCHEDULES = f"""
SELECT (to_jsonb(s) - 'payload_json'
          - CASE WHEN s.updated_at < %(looked)s THEN %(occurrence)s::text[] ELSE '{{}}'::text[] END
        || jsonb_build_object('workflow_name', d.name))::text
FROM tenant_workflow_schedule s {_named("s")}
WHERE s.id = ANY(%(ids)s::uuid[])
"""


def _recalled_names(kept: bytes | None) -> dict[str, dict[str, Any]]:
    """The schedules read before, by id, as `_take_schedules` kept them; none when none were, or what was kept
    does not read (an older bridge's, a damaged value: their deletions while no bridge read go untold)."""
    try:
        names = orjson.loads(kept) if kept else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(names, dict):
        return {}
    return {id_: value for id_, value in names.items() if isinstance(value, dict) and value.get("id") == id_}


# The events the runtime took in (`workflow_runtime_events`): its event worker writes an event's row as it takes
# it, then, as it goes on, the run it started or resumed and what failed. A row is read once it is `_SETTLED`
# old, by the runtime's index on `created_at`, from the latest read less the overlap (its workers' clocks):
# the keys of those written since, and the rows of those not yet handed over, without their payloads.
EVENTS_KEPT = _kept("workflow_runtime_events")
_EVENTS_MARK = "runtime-v2 events created_at"
_SETTLED = timedelta(seconds=30)
_EVENT_KEYS = """
SELECT e.created_at, e.event_id::text FROM workflow_runtime_events e
WHERE (e.created_at, e.event_id) > (%(after)s, %(after_id)s::uuid) AND e.created_at < now() - %(settled)s
ORDER BY e.created_at, e.event_id LIMIT %(limit)s
"""
# The rows (as `row` reads them) of the events whose ids are given.
_EVENTS_BY_ID = "SELECT {row} FROM workflow_runtime_events e WHERE e.event_id = ANY(%(ids)s::uuid[])"
_EVENTS = _EVENTS_BY_ID.format(row=_EVENT_ROW)
# An event whose row tells nothing yet of what came of it (no run, no error, no workflow not launched) may
# still be in its worker's hands — each launch or signal it makes with Temporal out of reach waits out the
# connection's 10 s timeout, and it writes what came of them all at the end —, or nothing waits for it nor
# starts on it (then it tells nothing ever). Held, and its row read again at every poll, until it tells or is
# `_HELD` old (handed over as it is then: no run took it), `_HELD_AT_MOST` at a time (the oldest go first).
_HELD = timedelta(minutes=5)
_HELD_AT_MOST = 10_000
# The workflows the runtime did not launch for an event, and why (`workflow_event_launch_skips`, since October
# 2026): read with the event, by the table's key on (tenant, event_id, workflow_id) — its tenant a uuid, the
# event's text (one that is no uuid has none: the runtime could not have written them) — with their workflow's
# name, asked of each skip alone: 500 events read in 13-17 ms of the database's time, against 6-7 without them
# (200,000 events, 60,000 skips; the key's index scanned once an event).
LAUNCH_SKIPS = "workflow_event_launch_skips"
LAUNCH_SKIPS_KEPT = _kept(LAUNCH_SKIPS)
_UUID = "'^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'"
# The skips (`s`) of the event `e`.
OF_THE_EVENT = f"s.tenant = CASE WHEN e.tenant ~* {_UUID} THEN e.tenant::uuid END AND s.event_id = e.event_id"
_LAUNCH_SKIPS = f"""coalesce((
  SELECT jsonb_agg(jsonb_build_object(
           'workflow_id', s.workflow_id, 'reason', s.reason, 'intentional', s.intentional, 'message', s.message,
           'workflow_name', (SELECT d.name FROM workflow_definitions d WHERE d.workflow_id = s.workflow_id))
         ORDER BY s.created_at, s.workflow_id)
  FROM {LAUNCH_SKIPS} s WHERE {OF_THE_EVENT}), '[]')"""
_EVENT_SKIPPED_ROW = f"({_EVENT_JSON} || jsonb_build_object('launch_skips', {_LAUNCH_SKIPS}))::text"
_EVENTS_SKIPPED = _EVENTS_BY_ID.format(row=_EVENT_SKIPPED_ROW)
# Every row the poller reads, as it reads them: for `psql` where the bridge cannot reach the database. The events
# with their launch skips where the table is there and may be read, as the poller reads them (psql's `\if`, of
# PostgreSQL 10 on: a query naming a table not there fails whole).
_EXPORT = f"""{_asked("SELECT run_id FROM workflow_runs")}SELECT {_RUN_ROW}
  FROM workflow_runs r {_NAMED}
UNION ALL SELECT {_STEP_ROW}
  FROM workflow_run_steps s
UNION ALL SELECT {_WAIT_ROW}
  FROM workflow_run_waits w
UNION ALL SELECT {_ACTION_ROW}
  FROM workflow_action_invocations a WHERE a.completed_at IS NOT NULL
UNION ALL SELECT {_LOG_ROW}
  FROM workflow_run_logs l WHERE {_LOG_TOLD};
SELECT coalesce(({LAUNCH_SKIPS_KEPT}), false) AS otel_bridge_launch_skips \\gset
\\if :otel_bridge_launch_skips
SELECT {_EVENT_SKIPPED_ROW} FROM workflow_runtime_events e;
\\else
SELECT {_EVENT_ROW} FROM workflow_runtime_events e;
\\endif
"""


def _tells(event: dict[str, Any]) -> bool:
    """Whether an event's row tells what came of it: a run started or resumed, an error, a workflow not launched."""
    return bool(event.get("matched_run_id") or event.get("error_message") or event.get("launch_skips"))


def _now_at(db: psycopg.Connection[Any]) -> datetime:
    """The database's time: how old the rows its clock dated are."""
    now = db.execute("SELECT now()").fetchone()
    assert now is not None
    return now[0]  # type: ignore[no-any-return]


def _now(db: psycopg.Connection[Any]) -> str:
    """The database's time, as it writes a timestamptz in JSON."""
    now = db.execute("SELECT to_jsonb(now())::text").fetchone()
    assert now is not None
    return str(orjson.loads(now[0]))


def _settled(capture_input: bool, log_levels: tuple[str, ...]) -> dict[str, Any]:
    """What the settings make of the rows' queries: the run's payloads left out (its input but with
    `capture_input`), and which of the runs' log lines are read (sources/runtime_v2.py `log_is_read` says
    the same, for rows it is given otherwise)."""
    return {
        "dropped": _RUN_PAYLOADS if capture_input else [*_RUN_PAYLOADS, "input_json"],
        "levels": list(log_levels),
        "operators": "WARN" in log_levels,
        "operator_lines": list(OPERATOR_LINES),
    }


def export_sql(capture_input: bool, log_levels: tuple[str, ...]) -> str:
    """The query that writes every row the poller would read, one JSON object a line (`psql -At`), for
    `otel-bridge replay --format runtime-v2` where the bridge cannot reach the database."""

    def literal(value: Any) -> str:
        # Only the bridge's own names and levels: none holds a quote.
        if isinstance(value, bool):
            return "true" if value else "false"
        return "ARRAY[" + ", ".join(f"'{item}'" for item in value) + "]"

    return _EXPORT % {name: literal(value) for name, value in _settled(capture_input, log_levels).items()}


def said(exc: psycopg.Error) -> str:
    """What PostgreSQL said, its first line ("relation "workflow_runs" does not exist"), not the query it
    quotes after it."""
    return exc.diag.message_primary or (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class TablePoller:
    def __init__(
        self,
        url: str,
        consumer: EventConsumer,
        dead_letters: DeadLetters,
        recall: Callable[[str], bytes | None],
        note: Callable[[str, bytes], None],
        poll_seconds: float = 2.0,
        overlap_seconds: float = 15.0,
        look_back_seconds: float = 3600.0,
        capture_input: bool = False,
        page: int = 500,
        start: datetime | None = None,
        lease: Callable[[float], bool] | None = None,
        lease_seconds: float | None = None,
        log_levels: tuple[str, ...] = ("WARN", "ERROR"),
        follows: bool = True,
    ) -> None:
        """`start`: read the runs changed since then, whatever mark is kept (an import of the history).
        `follows`: polls follow this one (False: one read, an import: no run is left to a next poll).
        `lease(seconds)`: whether this bridge holds the lease of reading the tables for so long, among
        replicas sharing a state (None: it is alone); held `lease_seconds` (five polls, 10 s at least)."""
        self._url = url
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._recall = recall
        self._note = note
        self._poll = poll_seconds
        self._overlap = timedelta(seconds=overlap_seconds)
        self._look_back = timedelta(seconds=look_back_seconds)
        self._page = page
        self._settled = _settled(capture_input, log_levels)
        self._db: psycopg.Connection[Any] | None = None
        # The runs read, oldest read first: the updated_at and the version (xmin) of their row read.
        self._seen: dict[str, tuple[datetime, str]] = {}
        # The waits handed over while still waiting (those the last poll found so).
        self._waiting: set[str] = set()
        # The runs (and the version of their row) that had just ended, left to the next poll by the last one and
        # by this one.
        self._follows = follows
        self._left: set[tuple[str, str]] = set()
        self._leaving: set[tuple[str, str]] = set()
        # The schedules read (the version of their row, what names them, the latest `updated_at` read), and
        # since when their occurrences are followed (this process's first mark).
        self._schedule_versions: dict[str, str] = {}
        self._schedule_names: dict[str, dict[str, Any]] = {}
        self._schedules_mark: datetime | None = None
        self._looked: datetime | None = None
        self._mark: datetime | None = start
        # The events the runtime took in: the latest `created_at` read, and those handed over since it less the
        # overlap (when each was written).
        self._events_mark: datetime | None = start
        self._events_told: dict[str, datetime] = {}
        # Those read that told nothing yet (`_HELD`), when each was written; and the mark kept with the state,
        # the oldest of them when some are held: a restart reads them again.
        self._events_held: dict[str, datetime] = {}
        self._events_kept: datetime | None = None
        # Whether the database has the tables only some editions or versions of the runtime have, and they may
        # be read (not asked on this connection yet: absent).
        self._readable: dict[str, bool] = {}
        # Since when (monotonic) the tables are not read, None while they are.
        self.disconnected_since: float | None = time.monotonic()
        self._shown = without_secrets(url)
        self._unreachable = Cadence()
        self._followed = False
        tables = "the runtime v2's tables"
        self._lease = Lease(lease, lease_seconds or max(5 * poll_seconds, 10.0), f"reading {tables}", f"reads {tables}")

    @property
    def reading(self) -> bool | None:
        """Whether this replica read the tables at its last turn (None: alone, or not asked yet)."""
        return self._lease.reading

    def _leads(self) -> bool:
        """Whether this replica reads the tables now: one of the replicas sharing a state does, the others
        stand by and take over once its lease lapses (a replica stopped, or stalled past it)."""
        turned = self._lease.changed()
        if turned:
            # Where the one that read them left off: the marks kept with the state, not this replica's.
            self._mark = self._events_mark = None
        elif turned is False:
            self._seen.clear()
            self._waiting.clear()
            self._schedule_versions.clear()
            self._schedule_names.clear()
            self._schedules_mark = None
            self._events_told.clear()
            self._events_held.clear()
        return self._lease.reading is not False

    def _connect(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            # Autocommit: each poll's reads see what was committed by then, and hold no snapshot between polls.
            self._db = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            self._readable.clear()
        return self._db

    def _start_mark(self, db: psycopg.Connection[Any]) -> datetime:
        kept = self._recall(_BOOKMARK)
        if kept:
            return datetime.fromisoformat(kept.decode())
        return _now_at(db) - self._look_back

    def poll_once(self) -> int:
        """Read what changed since the mark and hand it over; how many runs changed."""
        db = self._connect()
        if self._mark is None:
            self._mark = self._start_mark(db)
        if self._events_mark is None:
            # Where the events are read from: where they were, or where the runs' read begins (this poll moves
            # the runs' mark to the latest run it reads, and a first one reads the look-back's runs).
            kept = self._recall(_EVENTS_MARK)
            self._events_mark = datetime.fromisoformat(kept.decode()) if kept else self._mark
            self._events_kept = self._events_mark if kept else None
        after, after_id = self._mark - self._overlap, _FIRST_ID
        self._looked = self._looked or after
        self._left, self._leaving = self._leaving, set()
        changed_runs = 0
        # The first run left to the next poll: the mark stops there, so that it is read again however small the
        # overlap.
        left_at: datetime | None = None
        while True:
            keys = db.execute(_RUN_KEYS, {"after": after, "after_id": after_id, "limit": self._page}).fetchall()
            if not keys:
                break
            fresh: list[tuple[str, tuple[datetime, str]]] = []
            ended: list[str] = []
            since: list[datetime] = []
            for at, run, version, done, just in keys:
                if self._seen.get(run) != (at, version):
                    if done and just and self._holds(run, version):
                        left_at = left_at or at
                        continue
                    fresh.append((run, (at, version)))
                elif done:
                    # A run that ended, read as it is: the lines of its log written after its row's last update
                    # (the runtime writes its end's, an operator's cancel, just after, from the same process),
                    # read again while in the overlap.
                    ended.append(run)
                    since.append(at - _TRAILING)
            if ended:
                logs = db.execute(_TRAILING_LINES, {"runs": ended, "since": since, **self._settled})
                self._hand_over([row[0] for row in logs])
            if fresh:
                self._take(db, fresh)
                changed_runs += len(fresh)
            after, after_id = keys[-1][0], keys[-1][1]
            if (marked := min(after, left_at or after)) > self._mark:
                self._mark = marked
                self._note(_BOOKMARK, marked.isoformat().encode())
            if len(keys) < self._page:
                break
        self._take_waiting(db)
        for what, table, take in (
            ("schedules", "tenant_workflow_schedule", self._take_schedules),
            ("events taken in", "workflow_runtime_events", self._take_events),
        ):
            if not self._reads(db, what, table):
                continue
            try:
                take(db)
            except (
                psycopg.errors.InsufficientPrivilege,
                psycopg.errors.UndefinedTable,
                psycopg.errors.UndefinedColumn,
            ) as exc:
                # The right to read them taken back, their table dropped or made otherwise: the runs are followed
                # all the same (a poll failing on them followed none); asked again at the next connection.
                log.warning("the runtime v2's %s are not followed: %s", what, said(exc))
                self._readable[table] = False
        return changed_runs

    def _reads(self, db: psycopg.Connection[Any], what: str, table: str) -> bool:
        """Whether `table`, which only some editions or versions of the runtime have, is there and may be read."""
        if table not in self._readable:
            kept = db.execute(_kept(table)).fetchone()
            self._readable[table] = bool(kept and kept[0])
            if kept and kept[0] is False:
                log.warning(
                    "the runtime v2's %s are not followed: this user may not read %s (GRANT SELECT ON %s TO it)",
                    what,
                    table,
                    table,
                )
        return self._readable[table]

    def _take_schedules(self, db: psycopg.Connection[Any]) -> None:
        if self._schedules_mark is None and not self._schedule_versions:
            # The first read here: those read before (by this bridge before its restart, or the replica that
            # read the tables) are compared with the table as the read finds it, as if read with no version.
            self._schedule_names = _recalled_names(self._recall(_SCHEDULES_KNOWN))
            self._schedule_versions = dict.fromkeys(self._schedule_names, "")
        changed, gone = self._schedule_changes(db)
        # A schedule deleted (with its workflow, or by its operator) is awaited no more.
        deleted = [self._schedule_names[id_] for id_ in gone if id_ in self._schedule_names]
        if deleted:
            told = _DELETED | {"updated_at": _now(db)}
            deleted = [row | told for row in deleted]
        fetched: list[dict[str, Any]] = []
        if changed:
            asked = {"ids": sorted(changed), "looked": self._looked, "occurrence": _OCCURRENCE}
            fetched = [orjson.loads(text) for (text,) in db.execute(_SCHEDULES, asked)]
        self._hand_over_rows([*deleted, *fetched])
        for id_ in gone:
            self._schedule_versions.pop(id_, None)
            self._schedule_names.pop(id_, None)
        self._schedule_versions.update(changed)
        named = {row["id"]: {name: row.get(name) for name in _NAMING} for row in fetched}
        renamed = [id_ for id_, names in named.items() if self._schedule_names.get(id_) != names]
        self._schedule_names.update(named)
        if gone or renamed:  # kept as the set or a name changes: a schedule made, renamed or deleted
            self._note(_SCHEDULES_KNOWN, orjson.dumps(self._schedule_names))

    def _schedule_changes(self, db: psycopg.Connection[Any]) -> tuple[dict[str, str], list[str]]:
        """The schedules whose row changed since read (their new version), and those gone: of those written
        since the latest read (less the overlap: the runtime's clocks write `updated_at`), unless their count
        says one is gone, or none was read yet; then of all of them."""
        counted = db.execute(_SCHEDULES_COUNTED).fetchone()
        assert counted is not None
        count, latest = counted
        known = self._schedule_versions
        if self._schedules_mark is not None:
            recent = db.execute(_RECENT_SCHEDULES, {"after": self._schedules_mark - self._overlap}).fetchall()
            changed = {id_: version for id_, version in recent if known.get(id_) != version}
            if count == len(known) + sum(1 for id_ in changed if id_ not in known):
                self._schedules_mark = latest or self._schedules_mark
                return changed, []
        every = dict(db.execute(_SCHEDULE_KEYS).fetchall())
        self._schedules_mark = latest
        return {id_: v for id_, v in every.items() if known.get(id_) != v}, [id_ for id_ in known if id_ not in every]

    def _take_events(self, db: psycopg.Connection[Any]) -> None:
        """Hand over the events the runtime took in since the latest read (less the overlap), once each, once
        their rows are `_SETTLED` old: by then the event worker has written what came of most; those that
        tell nothing yet are held (`_HELD`)."""
        assert self._events_mark is not None
        now = _now_at(db)
        if self._events_held:
            self._hand_over_events(db, now, list(self._events_held))
        after, after_id = self._events_mark - self._overlap, _FIRST_ID
        while True:
            asked = {"after": after, "after_id": after_id, "settled": _SETTLED, "limit": self._page}
            keys = db.execute(_EVENT_KEYS, asked).fetchall()
            if not keys:
                break
            fresh = {id_: at for at, id_ in keys if id_ not in self._events_told}
            if fresh:
                self._hand_over_events(db, now, list(fresh))
                self._events_told.update(fresh)  # those held among them too: they are read again as held
            after, after_id = keys[-1]
            self._events_mark = max(self._events_mark, after)
            self._keep_events_mark()
            if len(keys) < self._page:
                break
        if len(self._events_held) > _HELD_AT_MOST:
            by_age = sorted(self._events_held, key=self._events_held.__getitem__)
            self._hand_over_events(db, None, by_age[: len(by_age) - _HELD_AT_MOST])
        self._keep_events_mark()
        forgotten = self._events_mark - self._overlap
        self._events_told = {id_: at for id_, at in self._events_told.items() if at >= forgotten}

    def _hand_over_events(self, db: psycopg.Connection[Any], now: datetime | None, ids: list[str]) -> None:
        """The rows of the events `ids` handed over, but those that tell nothing yet and are younger than
        `_HELD` at `now` (None: none held), which are held."""
        given: list[Any] = []
        held: dict[str, datetime] = {}
        for row in map(orjson.loads, self._event_rows(db, ids)):
            written = datetime.fromisoformat(row["created_at"])
            if now is None or _tells(row) or written <= now - _HELD:
                given.append(row)
            else:
                held[row["event_id"]] = written
        self._hand_over_rows(given)
        for id_ in ids:  # handed over, or gone from the table (a row deleted): held no more
            self._events_held.pop(id_, None)
        self._events_held.update(held)

    def _keep_events_mark(self) -> None:
        """The events' mark kept with the state: the latest read, or the oldest held when some are (a restart,
        or a replica taking over, reads them again)."""
        assert self._events_mark is not None
        kept = min(self._events_mark, *self._events_held.values()) if self._events_held else self._events_mark
        if kept != self._events_kept:
            self._note(_EVENTS_MARK, kept.isoformat().encode())
            self._events_kept = kept

    def _event_rows(self, db: psycopg.Connection[Any], ids: list[str]) -> list[str]:
        """The rows of the events `ids`, with the workflows not launched for each where the runtime writes them."""
        if self._reads(db, "workflows not launched for an event", LAUNCH_SKIPS):
            try:
                return [text for (text,) in db.execute(_EVENTS_SKIPPED, {"ids": ids})]
            except (
                psycopg.errors.InsufficientPrivilege,
                psycopg.errors.UndefinedTable,
                psycopg.errors.UndefinedColumn,
            ) as exc:
                # Their right taken back, their table dropped, the events' tenant named otherwise (`tenant_id`,
                # as before the runtime wrote them): the events are read all the same, as before.
                log.warning("the runtime v2's workflows not launched for an event are not followed: %s", said(exc))
                self._readable[LAUNCH_SKIPS] = False
        return [text for (text,) in db.execute(_EVENTS, {"ids": ids})]

    def _take_waiting(self, db: psycopg.Connection[Any]) -> None:
        assert self._mark is not None
        waiting = {row[0] for row in db.execute(_WAITING, {"after": self._mark - self._look_back})}
        # The new ones, and those no longer waiting: the runtime's scan that resumes quota waits resolves them,
        # and sets their runs RUNNING, without updating the runs' `updated_at` (it would be read at the run's
        # next change, a Temporal run's re-entry, maybe never).
        if changed := sorted(waiting ^ self._waiting):
            rows = db.execute(_WAITING_ROWS, {"waits": changed}).fetchall()
            # A run whose row changed since it was read is read as the runs are, with every row of it changed since,
            # its waits among them: handed over alone, its row could tell the run's end without the step's end
            # written a moment before it (a run cancelled while its task waited, between this poll's read of the
            # runs and of the waits), and the run was sent before its next read brought the step's. One that has
            # just ended is left to the next poll's read of the runs, as there.
            fresh = {
                run: (at, version) for _wait, run, at, version, _just in rows if self._seen.get(run) != (at, version)
            }
            left = {
                run for _wait, run, _at, version, just in rows if run in fresh and just and self._holds(run, version)
            }
            if taken := [(run, read) for run, read in fresh.items() if run not in left]:
                self._take(db, taken)
            self._hand_over([wait_row for wait_row, run, *_read in rows if run not in fresh])
        self._waiting = waiting

    def _holds(self, run: str, version: str) -> bool:
        """Whether to leave to the next poll a run whose row has just told its end: the lines of its log the
        runtime writes just after (an operator's reason, `Run failed`) come then with it. Once a version of its
        row, whatever the clock of the worker that dated it."""
        if not self._follows or (run, version) in self._left:
            return False
        self._leaving.add((run, version))
        return True

    def _hand_over(self, texts: list[str]) -> None:
        """The rows (as PostgreSQL wrote them in JSON) to the pipeline, read a batch at a time."""
        self._hand_over_rows(map(orjson.loads, texts))

    def _hand_over_rows(self, rows: Iterable[Any]) -> None:
        """The rows to the pipeline, `_BATCH` at a time, committed when this returns; those it cannot read kept
        as dead letters."""
        left = iter(rows)
        while batch := list(islice(left, _BATCH)):
            report = self._consumer.ingest(batch)
            if report.rejected:
                self._dead_letters.keep("runtime-v2", [(r.as_dict(), batch[r.index]) for r in report.rejected])

    def _take(self, db: psycopg.Connection[Any], fresh: list[tuple[str, tuple[datetime, str]]]) -> None:
        """Hand over the rows of these runs (by id, with the (updated_at, version) they were found at) and of
        their steps, waits, actions and log lines changed since each was read."""
        runs = [run for run, _read in fresh]
        since = [self._seen[run][0] - self._overlap if run in self._seen else None for run in runs]
        self._hand_over([row[0] for row in db.execute(_TAKE, {"runs": runs, "since": since, **self._settled})])
        for run, read in fresh:
            self._seen.pop(run, None)  # to the end: the oldest read is forgotten first
            self._seen[run] = read
        while len(self._seen) > _REMEMBERED:
            del self._seen[next(iter(self._seen))]

    def run(self, stop: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                if not self._leads():
                    self.disconnected_since = None
                    stop.wait(self._poll)
                    continue
                self.poll_once()
                if self.disconnected_since is not None:
                    again = _told_followed(self._unreachable, log, f"runs at {self._shown}", self._followed)
                    if not again and not self._followed:
                        log.info("following the runtime v2's runs at %s, read every %g s", self._shown, self._poll)
                    self._followed = True
                self.disconnected_since = None
                backoff.worked()
                stop.wait(self._poll)
            except Unavailable as exc:
                log.warning("store unavailable, the runs' rows are read again at the next poll: %s", exc)
                backoff.wait(stop)
            except psycopg.Error as exc:
                _told_unreachable(self._unreachable, log, f"runs at {self._shown}", said(exc))
                self.disconnected_since = self.disconnected_since or time.monotonic()
                self.close()
                backoff.wait(stop)
            except Exception:
                log.exception("runtime v2 poller failed; retrying")
                backoff.wait(stop)
        self.close()

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None
