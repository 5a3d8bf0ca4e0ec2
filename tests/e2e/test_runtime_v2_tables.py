"""The runtime v2's runs in a real PostgreSQL, followed by `otel-bridge serve --runtime-v2-url`, to a real
OTLP receiver."""

import glob
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import redis
from bridge_process import BridgeProcess
from runtime_v2_tables import Runtime, at

from otel_bridge import trace_id_for

OK, ERROR = 1, 2


def _bridge(tmp_path, otlp_http, database: str, **settings: str) -> BridgeProcess:
    return BridgeProcess(
        tmp_path,
        otlp_http.endpoint,
        runtime_v2_url=database,
        runtime_v2_poll_seconds="0.2",
        # The runs are dated 2026-12-04 09:00: a first start reads back far enough to meet them.
        runtime_v2_look_back_seconds=str(10**9),
        runtime_v2_service_name="psa",
        runtime_v2_env="prod",
        **settings,
    )


def _trace(run_id: str, env: str = "prod", service: str = "psa") -> str:
    return trace_id_for("workflow-runtime-v2", env, service, run_id).hex()


def _root(got, run_id: str):
    return next((s for s in got.trace(_trace(run_id)) if s.parent_span_id == ""), None)


def _escalation(runtime: Runtime, offset: float = 0) -> str:
    run = runtime.start_run(at(offset))
    lookup = runtime.step_started(run, "root.steps[0]", "lookup", at(offset + 1))
    runtime.action_called(run, "root.steps[0]", "tickets.find", at(offset + 1.1), at(offset + 1.9), "upstream 503")
    runtime.retry_scheduled(run, lookup, "root.steps[0]", at(offset + 1), at(offset + 2), backoff=5)
    runtime.due_waits_resolved(run, "retry", at(offset + 7))
    again = runtime.step_started(run, "root.steps[0]", "lookup", at(offset + 7.1))
    runtime.action_called(run, "root.steps[0]", "tickets.find", at(offset + 7.2), at(offset + 7.9))
    runtime.step_succeeded(run, again, at(offset + 7.1), at(offset + 8), "root.steps[1]")
    runtime.step_started(run, "root.steps[1]", "wait-approval", at(offset + 8.1))
    runtime.event_wait(run, "root.steps[1]", at(offset + 8.2), "APPROVED", "T-1", timeout=3600)
    runtime.event_arrived(run, "APPROVED", at(offset + 100))
    resumed = runtime.step_started(run, "root.steps[1]", "wait-approval", at(offset + 100.1))
    runtime.step_succeeded(run, resumed, at(offset + 100.1), at(offset + 100.2), None)
    return run


def test_runs_in_the_tables_become_traces_failed_and_waiting_ones_included(tmp_path, otlp_http, database):
    runtime = Runtime(psycopg.connect(database, autocommit=True))
    escalated = _escalation(runtime)
    failed = runtime.start_run(at(10))
    lookup = runtime.step_started(failed, "root.steps[0]", "lookup", at(11))
    runtime.step_failed(failed, lookup, "root.steps[0]", at(11), at(12))
    waiting = runtime.start_run(at(20))
    runtime.step_started(waiting, "root.steps[0]", "wait-approval", at(21))
    # Waiting for longer than the test's clock will run: a day from its fixed morning made it overdue the next day.
    runtime.event_wait(waiting, "root.steps[0]", at(22), "APPROVED", "T-9", timeout=100 * 365 * 86_400)
    # Launched, and no worker took it: RUNNING with no step, hours ago.
    stranded = runtime.start_run(at(30))
    # A schedule that ran once, and whose next occurrence, hours ago, never came: its job runner lost it.
    nightly = runtime.schedule("Nightly digest", at(0), timedelta(minutes=5))
    runtime.schedule_fired(nightly, at(300), then=at(600))

    # With a password in its URL (the test's server trusts any): told nowhere.
    bridge = _bridge(tmp_path, otlp_http, database.replace("postgres@", "postgres:hunter2@")).start()
    got = otlp_http.received
    try:
        got.wait_for(lambda: _root(got, escalated) is not None and _root(got, failed) is not None, timeout=30)
        listed = bridge.client.get(f"{bridge.url}/v1/runs", params={"state": "paused"}).json()
        assert [r["run_id"] for r in listed["runs"]] == [waiting]
        assert listed["runs"][0]["name"] == "ticket-escalation"
        overdue = bridge.client.get(f"{bridge.url}/v1/runs", params={"overdue": "true"}).json()["runs"]
        assert [(r["run_id"], r["state"]) for r in overdue] == [(stranded, "pending")]
        jobs = bridge.client.get(f"{bridge.url}/v1/jobs", params={"overdue": "true"}).json()["jobs"]
        assert [(j["name"], j["job_type"], j["instance_id"]) for j in jobs] == [
            ("Nightly digest", "recurring", nightly)
        ]
        scraped = bridge.client.get(f"{bridge.url}/metrics").text
        assert 'job_executions_total{deployment_environment_name="prod",job_execution_result="success",' in scraped
        # Written while the bridge runs (later than every change before): read at its next poll.
        runtime.event_arrived(waiting, "APPROVED", at(300))
        resumed = runtime.step_started(waiting, "root.steps[0]", "wait-approval", at(300.1))
        runtime.step_succeeded(waiting, resumed, at(300.1), at(301), None)
        got.wait_for(lambda: _root(got, waiting) is not None, timeout=30)
        # Its operator retries the failed run, which succeeds: a trace of its own, following the failed one.
        runtime.retried(failed, "root.steps[0]", at(400), "the ticket was restored")
        again = runtime.step_started(failed, "root.steps[0]", "lookup", at(400.1))
        runtime.step_succeeded(failed, again, at(400.1), at(401), None)
        got.wait_for(lambda: _root(got, f"{failed}/retry-1") is not None, timeout=30)
    finally:
        bridge.close()

    spans = sorted((s.name, s.status_code) for s in got.trace(_trace(escalated)))
    assert spans == [
        ("step lookup", OK),
        ("step lookup", ERROR),
        ("step wait-approval", OK),
        ("step wait-approval", OK),
        ("workflow ticket-escalation", OK),
    ]
    failed_lookup = next(s for s in got.trace(_trace(escalated)) if s.name == "step lookup" and s.status_code == ERROR)
    (action,) = [(name, attrs) for name, _t, attrs in failed_lookup.events if name.startswith("action.")]
    assert action[0] == "action.failed" and action[1]["workflow.action.id"] == "tickets.find"
    assert action[1]["exception.message"] == "upstream 503" and action[1]["workflow.action.duration_ms"] == 800
    root = _root(got, escalated)
    assert root.resource == {"service.name": "psa", "deployment.environment.name": "prod"}
    assert root.attributes["tenant.id"] == "acme" and root.attributes["workflow.platform.name"] == "workflow-runtime-v2"
    failed_root = _root(got, failed)
    assert failed_root.status_code == ERROR and failed_root.status_message == "ticket not found"
    retry = _root(got, f"{failed}/retry-1")
    assert retry.status_code == OK and retry.links == [(failed_root.trace_id, failed_root.span_id)]
    assert retry.attributes["workflow.execution.id"] == failed and retry.attributes["workflow.execution.retry"] == 1
    assert [s.name for s in got.trace(_trace(failed))].count("workflow ticket-escalation") == 1, "sent once, failed"
    assert failed_root.attributes["error.type"] == "ActionError"
    told = bridge.log.read_text()
    assert "following the runtime v2's runs at postgresql://postgres:***@" in told and "hunter2" not in told


def test_kill_9_between_polls_loses_nothing_and_doubles_nothing(tmp_path, otlp_http, database):
    runtime = Runtime(psycopg.connect(database, autocommit=True))
    bridge = _bridge(tmp_path, otlp_http, database).start()
    got = otlp_http.received
    runs = []
    try:
        for i in range(6):
            runs.append(_escalation(runtime, offset=200 * i))
            if i % 2:
                bridge.kill()
                bridge.start()
        for run in runs:
            got.wait_for(lambda run=run: _root(got, run) is not None, timeout=30)
    finally:
        bridge.close()
    unique = got.unique_spans()  # a span received twice must be identical
    for run in runs:
        assert len([s for s in unique.values() if s.trace_id == _trace(run)]) == 5


def test_import_reads_the_history_at_once_and_again_is_all_duplicates(tmp_path, otlp_http, database):
    runtime = Runtime(psycopg.connect(database, autocommit=True))
    runs = [_escalation(runtime, offset=0), _escalation(runtime, offset=500)]
    env = {**BridgeProcess(tmp_path, otlp_http.endpoint).env, "OTEL_BRIDGE_RUNTIME_V2_URL": database}
    command = [sys.executable, "-m", "otel_bridge", "import-runtime-v2"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("runs: 2  events accepted: 34  duplicates: 0  rejected: 0"), first.stdout
    for run in runs:
        # The runs' service and environment by default.
        assert len(otlp_http.received.trace(_trace(run, "production", "workflow-runtime-v2"))) == 5
    later = subprocess.run([*command, "--since", "2026-12-04T09:05:00Z"], env=env, capture_output=True, text=True)
    assert later.stdout.startswith("runs: 1  events accepted: 0  duplicates: 17"), later.stdout
    elsewhere = {**env, "OTEL_BRIDGE_RUNTIME_V2_URL": database + "_gone"}
    gone = subprocess.run(command, env=elsewhere, capture_output=True, text=True, timeout=120)
    assert gone.returncode != 0 and "cannot read the runs at" in gone.stderr and "does not exist" in gone.stderr


def test_the_export_replayed_makes_the_traces_the_import_makes(tmp_path, otlp_http, database):
    printed = [sys.executable, "-m", "otel_bridge", "import-runtime-v2", "--export-sql"]
    query = subprocess.run(printed, capture_output=True, text=True, check=True, timeout=60).stdout
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "otel-bridge import-runtime-v2 --export-sql > export.sql" in readme
    runtime = Runtime(psycopg.connect(database, autocommit=True))
    for offset in (0, 500):
        _escalation(runtime, offset)
    waiting = runtime.start_run(at(900))
    runtime.step_started(waiting, "root.steps[0]", "wait-approval", at(901))
    runtime.event_wait(waiting, "root.steps[0]", at(902), "APPROVED", "T-2", timeout=60)
    retried = runtime.start_run(at(1000))
    lookup = runtime.step_started(retried, "root.steps[0]", "lookup", at(1001))
    runtime.step_failed(retried, lookup, "root.steps[0]", at(1001), at(1002))
    runtime.retried(retried, "root.steps[0]", at(1100), "the ticket was restored")
    again = runtime.step_started(retried, "root.steps[0]", "lookup", at(1101))
    runtime.step_succeeded(retried, again, at(1101), at(1102), None)
    runtime.event_taken("TICKET_CREATED", at(1103), started=retried)  # read too: replayed, not rejected (exit 1)
    psql = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1]
    export = tmp_path / "runs.jsonl"
    with export.open("w") as out:
        subprocess.run([psql, database, "-At"], input=query, stdout=out, text=True, check=True, timeout=60)
    (tmp_path / "imported").mkdir()
    imported = {**BridgeProcess(tmp_path / "imported", otlp_http.endpoint).env, "OTEL_BRIDGE_RUNTIME_V2_URL": database}
    command = [sys.executable, "-m", "otel_bridge", "import-runtime-v2"]
    assert subprocess.run(command, env=imported, capture_output=True, text=True, timeout=120).returncode == 0
    got = otlp_http.received
    by_import = _seen(got.spans)
    replayed = BridgeProcess(tmp_path, otlp_http.endpoint).env
    command = [sys.executable, "-m", "otel_bridge", "replay", str(export), "--format", "runtime-v2", "--no-progress"]
    result = subprocess.run(command, env=replayed, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_seen(got.spans[len(by_import) :])) == set(by_import)
    parked = [s for s in set(by_import) if s[0] == "step wait-approval" and s[3] == OK]
    assert len(parked) == 4 and all(end - start < 10**9 for _n, start, end, _s, _e in parked)
    failed = [s for s in set(by_import) if s[0] == "step lookup" and "action.failed" in s[4]]
    assert len(failed) == 2 and all(s[3] == ERROR for s in failed), "one a run: on its first lookup"
    roots = [
        s for s in set(by_import) if s[0] == "workflow ticket-escalation" and s[1] >= at(1000).timestamp() * 1e9 - 1
    ]
    assert sorted((s[3], "Run retry requested" in s[4]) for s in roots) == [(OK, True), (ERROR, False)]


def _seen(spans) -> list[tuple]:
    return [(s.name, s.start_ns, s.end_ns, s.status_code, tuple(sorted(e[0] for e in s.events))) for s in spans]


def test_of_two_replicas_on_one_redis_state_one_reads_the_tables(tmp_path, otlp_http, database, redis_url):
    state = redis_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(state).flushdb()
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(_bridge(tmp_path / name, otlp_http, database, state=state))
    runtime = Runtime(psycopg.connect(database, autocommit=True))
    got = otlp_http.received
    try:
        for replica in replicas:
            replica.start()
        runs = [_escalation(runtime, offset) for offset in (0, 500, 1000)]
        for run in runs:
            got.wait_for(lambda run=run: _root(got, run) is not None, timeout=30)
    finally:
        for replica in replicas:
            replica.close()
    told = [replica.log.read_text() for replica in replicas]
    assert sum("reading the runtime v2's tables" in t for t in told) == 1, told
    assert sum("standing by" in t for t in told) == 1, told
    for run in runs:
        assert len({s.span_id for s in got.trace(_trace(run))}) == 5
