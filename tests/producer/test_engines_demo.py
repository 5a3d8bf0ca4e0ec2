"""The demo's Phase-10 stand-in answers the engine's REST API as `otel-bridge` reads it: timelines, and a
workflow's executions page by page (what `import-timeline --workflow-id` asks a real engine); its runtime
v2 writes whole runs into a real PostgreSQL."""

from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg
from bridge_process import free_port

from otel_bridge.producer.engines_demo import Phase10Engine, run_engines_demo
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers.timeline_api import Window, executions, timeline
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder


def test_the_demo_engine_lists_a_workflows_executions_as_the_history_import_pages_them():
    port = free_port()
    engine = Phase10Engine("127.0.0.1", port)
    start = datetime(2026, 11, 30, 8, 0)
    runs = [
        Phase10Run("report", workflow_id="wf-report", start=start + timedelta(minutes=i)).started(1).completed()
        for i in range(25)
    ]
    for run in runs:
        engine.runs[run.execution_id] = (run, {})
    api = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            listed = list(executions(client, api, "wf-report", Window(since=start.replace(tzinfo=UTC))))
            assert sorted(listed) == sorted(run.execution_id for run in runs)
            assert list(executions(client, api, "wf-other", Window())) == []
            assert timeline(client, api, runs[3].execution_id)["execution_id"] == runs[3].execution_id
            assert client.get(f"{api}/api/workflows/wf-report/executions", params={"limit": "x"}).status_code == 422
    finally:
        engine.close()


def test_the_demo_plays_the_runtime_v2_in_its_tables_and_every_run_it_writes_reads_whole(database):
    counts = run_engines_demo(None, None, rate=4, duration=3, seed=5, runtime_v2_url=database, schedule_every=1)
    assert counts["runtime-v2"] >= 10
    decode = RuntimeV2Decoder()
    with psycopg.connect(database) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM workflow_runs GROUP BY status").fetchall())
        rows = [orjson.loads(r[0]) for r in db.execute(
            "SELECT to_jsonb(r)::text FROM workflow_runs r "
            "UNION ALL SELECT to_jsonb(s)::text FROM workflow_run_steps s "
            "UNION ALL SELECT to_jsonb(w)::text FROM workflow_run_waits w"
        )]  # fmt: skip
        schedules = db.execute("SELECT to_jsonb(s)::text FROM tenant_workflow_schedule s")
        (digest,) = [orjson.loads(r[0]) for r in schedules]
        events = [orjson.loads(r[0]) for r in db.execute("SELECT to_jsonb(e)::text FROM workflow_runtime_events e")]
    assert sum(statuses.values()) == counts["runtime-v2"] and set(statuses) <= {"SUCCEEDED", "FAILED", "CANCELED"}
    assert statuses.get("SUCCEEDED", 0) > 0
    facts = [record.fact for row in rows for record in decode(row)]
    assert sum(1 for f in facts if f.kind.value == "run.ended") == counts["runtime-v2"]
    # Its schedule's occurrences, each a run of the workflow (those let pass none), the next one awaited.
    assert digest["name"] == "escalation-digest" and digest["last_run_status"] in ("success", "skipped")
    assert [r.kind.value for r in decode(digest)] == ["executed" if digest["last_run_status"] == "success"
                                                      else "skipped", "task_scheduled"]  # fmt: skip
    # The events that started its runs (not those of the schedule) and resumed their waits, and those no run took.
    taken = [(record.job_name, record.kind.value) for row in events for record in decode(row)]
    assert ("TICKET_CREATED", "executed") in taken and ("TICKET_UPDATED", "skipped") in taken
    assert taken.count(("TICKET_UPDATED", "skipped")) == sum(1 for r in rows if r.get("event_type") == "TICKET_CREATED")


def test_the_demo_runtime_v2_incidents_are_runs_no_worker_takes_the_first_of_them_one(database):
    counts = run_engines_demo(None, None, rate=4, duration=1, seed=5, runtime_v2_url=database, incidents=0.01)
    with psycopg.connect(database) as db:
        first_run, first_status, engine, its_steps = db.execute(
            "SELECT r.run_id, r.status, r.engine, "
            "(SELECT count(*) FROM workflow_run_steps s WHERE s.run_id = r.run_id) "
            "FROM workflow_runs r ORDER BY r.started_at LIMIT 1"
        ).fetchone()
        stranded = db.execute(
            "SELECT count(*) FROM workflow_runs r WHERE r.status = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.run_id)"
        ).fetchone()[0]
        lost = db.execute("SELECT last_fire_at FROM tenant_workflow_schedule WHERE name = 'weekly-report'").fetchone()
        undelivered = db.execute("SELECT count(*) FROM workflow_runtime_events WHERE error_message LIKE 'Failed%'")
        (not_delivered,) = undelivered.fetchone()
        skips = {reason for (reason,) in db.execute("SELECT reason FROM workflow_event_launch_skips")}
    assert lost == (None,), "among the incidents, a schedule whose occurrences never come"
    assert not_delivered >= 1, "and an event the runtime could not deliver, with the first run"
    assert "launch_failed" in skips, "the workflow it did not launch written, as the runtime writes it"
    assert (first_status, engine, its_steps) == ("RUNNING", "temporal", 0) and first_run
    assert 1 <= stranded < counts["runtime-v2"], "the others are taken and run to their end"
