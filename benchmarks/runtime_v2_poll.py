"""What following the runtime v2's tables costs the database and the bridge, by how much of the run's log is read.

A real PostgreSQL (Debian's, in a temporary directory) holds `--runs` finished runs of five steps,
written as the runtime writes them in bulk (each step's start and end logged at INFO, a run's start
and end too: 12 log lines a run), then the poller reads:

1. idle: nothing changed since its last read (the overlap's keys only);
2. `--changed` runs of five steps each written since (with their log lines);
3. idle again, those runs ended within the overlap (their logs read again, for lines written after
   their row's last update).

With `--schedules N`, the workflow has N schedules too, whose keys every poll reads (the first poll of each
round, before these, reads their rows). With `--events N`, N events the runtime took in were written within
the overlap before the mark (15 s: N/15 events a second, as the runtime takes them in steadily), whose keys
every poll reads again, handing over none (the first poll of each round hands them over).

Each row: the median of `--rounds` reads, the poll's wall time (the database's time, mostly) and the
bridge's CPU, rows handed over. Side by side in one run: `--runtime-v2-log-level` none (the rows alone
and the retries' count), warn (the default) and info, and with `--baseline DIR` the poller of another
checkout of the bridge (`git worktree add DIR d5af3a0`: before the log was read) on the same tables.
The rows are handed to a consumer that keeps nothing: the pipeline's cost is the other benchmarks'.
Each poller runs in a process of its own.

    python benchmarks/runtime_v2_poll.py --runs 200000 --changed 100 --baseline /tmp/base
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from postgres_server import PostgresServer

from otel_bridge.consumer import IngestReport
from otel_bridge.producer.runtime_v2 import Runtime
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.postgres_poll import TablePoller

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)

# Finished runs of five steps, each logged as the runtime logs it (a line at each step's start and end).
_BULK = """
WITH runs AS (
  INSERT INTO workflow_runs (workflow_id, workflow_version, tenant_id, status, started_at, completed_at, updated_at)
  SELECT %(workflow)s, 3, 'acme', 'SUCCEEDED', t, t + interval '5 s', t + interval '5 s'
  FROM (SELECT %(t0)s::timestamptz + n * interval '10 ms' AS t FROM generate_series(1, %(runs)s) n) g
  RETURNING run_id, started_at
), steps AS (
  INSERT INTO workflow_run_steps (run_id, step_path, definition_step_id, status, attempt, started_at, completed_at)
  SELECT run_id, 'root.steps[' || i || ']', 's' || i, 'SUCCEEDED', 1, started_at + i * interval '1 s',
         started_at + i * interval '1 s' + interval '500 ms'
  FROM runs, generate_series(0, 4) i
  RETURNING step_id, run_id, step_path, started_at, completed_at
)
INSERT INTO workflow_run_logs (run_id, step_id, step_path, level, message, source, created_at)
SELECT run_id, step_id, step_path, 'INFO', m, 'runtime',
       CASE WHEN m = 'Step started' THEN started_at ELSE completed_at END
FROM steps, unnest(ARRAY['Step started', 'Step succeeded']) m
"""


# Schedules of the workflow, each having run once (one a second, before the runs) and awaiting its next occurrence.
_SCHEDULES = """
INSERT INTO tenant_workflow_schedule (tenant, workflow_id, workflow_version, name, trigger_type, cron, timezone,
  last_fire_at, last_run_status, last_fire_key, next_fire_at, created_at, updated_at)
SELECT 'acme', %(workflow)s, 3, 'schedule ' || n, 'recurring', '0 * * * *', 'UTC', t, 'success',
  'workflow-schedule-fire:' || n, t + interval '1 hour', t, t
FROM (SELECT n, %(t0)s::timestamptz - n * interval '1 s' AS t FROM generate_series(1, %(schedules)s) n) g
"""


# Events the runtime took in, each starting a run, spread over the overlap before the mark (`--events`).
_EVENTS = """
INSERT INTO workflow_runtime_events (tenant, event_name, correlation_key, created_at, processed_at, matched_run_id)
SELECT 'acme', 'TICKET_CREATED', 'T-' || n, t, t, gen_random_uuid()
FROM (SELECT n, %(mark)s::timestamptz - n * (interval '15 s' / %(events)s) AS t FROM generate_series(1, %(events)s) n) g
"""


def _mark(db: Any) -> datetime:
    """A mark past every run's `updated_at`, beyond the overlap: as a bridge that followed them."""
    latest = db.execute("SELECT max(updated_at) FROM workflow_runs").fetchone()
    assert latest is not None
    return latest[0] + timedelta(minutes=1)  # type: ignore[no-any-return]


class Dropped:
    """A consumer that keeps nothing: what the poller costs alone."""

    def __init__(self) -> None:
        self.rows = 0

    def ingest(self, events: Any, *, producer: str | None = None) -> IngestReport:
        self.rows += len(events)
        return IngestReport(accepted=len(events))


def _changed(runtime: Runtime, count: int, at: datetime) -> None:
    for i in range(count):
        began = at + timedelta(milliseconds=i)
        run = runtime.start_run(began)
        for s in range(5):
            path = f"root.steps[{s}]"
            step = runtime.step_started(run, path, f"s{s}", began + timedelta(milliseconds=s))
            last = s == 4
            ended = began + timedelta(milliseconds=s + 0.5)
            runtime.step_succeeded(
                run, step, ended - timedelta(milliseconds=0.5), ended, None if last else f"root.steps[{s + 1}]"
            )


def _timed(poller: TablePoller, consumer: Dropped) -> tuple[float, float, int]:
    before_rows = consumer.rows
    wall, cpu = time.perf_counter(), time.process_time()
    poller.poll_once()
    return time.perf_counter() - wall, time.process_time() - cpu, consumer.rows - before_rows


def measure(
    url: str, level: str, rounds: int, changed: int, events: int = 0
) -> dict[str, list[tuple[float, float, int]]]:
    """This process's poller (the checkout on its path), idle, after `changed` runs, idle again."""
    import psycopg

    db = psycopg.connect(url, autocommit=True)
    runtime = Runtime(db)
    readings: dict[str, list[tuple[float, float, int]]] = {"idle": [], "changed": [], "idle after": []}
    settings: dict[str, Any] = {}
    if level != "baseline":
        from otel_bridge.sources.runtime_v2 import levels_from

        settings["log_levels"] = levels_from(level)
    for _round in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            consumer = Dropped()
            letters = DeadLetters(Path(tmp) / "dead.jsonl", 1_000_000, 1)
            last = _mark(db)
            if events:  # within this round's overlap
                db.execute(_EVENTS, {"mark": last, "events": events})
            marks = {"runtime-v2 runs updated_at": last.isoformat().encode()}
            poller = TablePoller(url, consumer, letters, marks.get, marks.__setitem__, **settings)
            poller.poll_once()
            readings["idle"].append(_timed(poller, consumer))
            _changed(runtime, changed, last + timedelta(hours=1))
            readings["changed"].append(_timed(poller, consumer))
            readings["idle after"].append(_timed(poller, consumer))
            poller.close()
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--schedules", type=int, default=0, help="schedules of the workflow, each read at every poll")
    parser.add_argument("--events", type=int, default=0, help="events taken in within the overlap, read at every poll")
    parser.add_argument("--baseline", help="a checkout of the bridge whose poller to measure beside this one")
    parser.add_argument("--measure", nargs=2, metavar=("URL", "LEVEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.rounds, args.changed, args.events)))
        return

    import psycopg

    server = PostgresServer().start()
    try:
        url = server.database("bench")
        db = psycopg.connect(url, autocommit=True)
        runtime = Runtime(db)
        started = time.perf_counter()
        db.execute(_BULK, {"workflow": runtime.workflow_id, "t0": T0, "runs": args.runs})
        db.execute(_SCHEDULES, {"workflow": runtime.workflow_id, "t0": T0, "schedules": args.schedules})
        db.execute("ANALYZE")
        print(f"{args.runs:,} finished runs of five steps written in {time.perf_counter() - started:.1f} s")
        if args.schedules:
            print(f"{args.schedules:,} schedules of the workflow, each read at every poll (by key and version)")
        if args.events:
            print(f"{args.events:,} events taken in within the overlap, each read at every poll (by key)")
        here = str(Path(__file__).resolve().parents[1])
        pollers = [("baseline", args.baseline)] if args.baseline else []
        pollers += [(level, here) for level in ("none", "warn", "info")]
        rows: dict[str, dict[str, list[list[float]]]] = {}
        for level, checkout in pollers:
            command = [sys.executable, __file__, "--measure", url, level]
            command += ["--rounds", str(args.rounds), "--changed", str(args.changed), "--events", str(args.events)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")])}
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=checkout)
            rows[level] = json.loads(done.stdout)
        print(f"\n{'read':<27}{'poller':<11}{'wall ms':>9}{'bridge CPU ms':>15}{'rows':>7}")
        for what in ("idle", "changed", "idle after"):
            label = {"changed": f"{args.changed} runs changed", "idle after": "idle, they ended just now"}.get(
                what, f"idle, {args.runs:,} runs"
            )
            for level, readings in rows.items():
                wall = statistics.median(x[0] for x in readings[what]) * 1000
                cpu = statistics.median(x[1] for x in readings[what]) * 1000
                handed = statistics.median(x[2] for x in readings[what])
                print(f"{label:<27}{level:<11}{wall:>9.1f}{cpu:>15.1f}{handed:>7.0f}")
    finally:
        server.close()  # its cluster's directory too


if __name__ == "__main__":
    main()
