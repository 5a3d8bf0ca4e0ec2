"""`otel-bridge replay FILE`: historical event logs through the same pipeline."""

import json
import os
import subprocess
import sys

from builders import JobRun, WorkflowRun

from otel_bridge import trace_id_for
from otel_bridge.producer.event_sourced import Execution, as_row


def _run_replay(
    tmp_path, receiver, source: str, stdin: bytes | None = None, *options: str
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BRIDGE_STATE": str(tmp_path / "replay.db"),
        "OTEL_BRIDGE_DEAD_LETTER": str(tmp_path / "dead.jsonl"),
        "OTEL_BRIDGE_SPAN_DEAD_LETTER": str(tmp_path / "dead-spans.jsonl"),
    }
    return subprocess.run(
        [sys.executable, "-m", "otel_bridge", "replay", source, "--no-progress", *options],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def test_replay_of_a_clean_log_exports_the_traces_and_exits_zero(tmp_path, otlp_http):
    run = WorkflowRun("import").started().step_started("load").after(50).step_completed("load").completed()
    job = JobRun().started().executed(1)
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in run.events + job.events) + "\n")

    result = _run_replay(tmp_path, otlp_http, str(log))

    assert result.returncode == 0, result.stderr.decode()
    assert "accepted: 6" in result.stdout.decode()
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert sorted(s.name for s in otlp_http.received.trace(trace_id)) == ["step load", "workflow import"]
    assert otlp_http.received.metric("job.executions")


def test_replay_reports_rejected_lines_with_reasons_and_exits_non_zero(tmp_path, otlp_http):
    run = WorkflowRun().started().completed()
    lines = [json.dumps(run.events[0]), "{broken", json.dumps({**run.events[1], "type": "workflow.exploded"})]
    result = _run_replay(tmp_path, otlp_http, "-", stdin="\n".join(lines).encode())

    assert result.returncode == 1
    out = result.stdout.decode()
    assert "accepted: 1" in out and "rejected: 2" in out
    assert "line 2: line is not valid JSON" in out
    assert "line 3: type: unknown event type 'workflow.exploded'" in out
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 2


def test_replaying_the_same_log_twice_is_all_duplicates(tmp_path, otlp_http):
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in run.events))
    assert _run_replay(tmp_path, otlp_http, str(log)).returncode == 0
    again = _run_replay(tmp_path, otlp_http, str(log))
    assert "accepted: 0  duplicates: 4" in again.stdout.decode()


def test_replay_of_the_event_sourced_runtimes_table_rows(tmp_path, otlp_http):
    run = Execution("onboarding", tenant="acme").started().after(20).moved("reviewing").after(30).ended("completed")
    log = tmp_path / "workflow_events.jsonl"
    log.write_text("\n".join(json.dumps(as_row(e)) for e in run.events) + "\n")

    result = _run_replay(tmp_path, otlp_http, str(log), None, "--format", "event-sourced")

    assert result.returncode == 0, result.stderr.decode()
    assert "accepted: 3" in result.stdout.decode()
    trace_id = trace_id_for("event-sourced", "production", "event-sourced", run.execution_id, "acme").hex()
    names = {s.name for s in otlp_http.received.trace(trace_id)}
    assert names == {"workflow onboarding", "state initial", "state reviewing"}
