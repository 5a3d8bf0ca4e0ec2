"""`otel-bridge replay FILE`: historical event logs through the same pipeline."""

import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bridge_process import free_port
from builders import JobRun, WorkflowRun

from otel_bridge import trace_id_for
from otel_bridge.producer.event_sourced import Execution, as_row
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers.dead_letter import DeadLetters


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


def test_a_replay_is_history_not_its_producers_heard_from(tmp_path, otlp_http):
    # Last week's file replayed told a producer gone silent as heard now, and kept it so for the next start of
    # the bridge on that state: ProducerNotHeard held back for as long as the producer may go without.
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in WorkflowRun().started().events) + "\n")
    assert _run_replay(tmp_path, otlp_http, str(log)).returncode == 0

    env = {**os.environ, "OTEL_BRIDGE_STATE": str(tmp_path / "replay.db"), "OTEL_BRIDGE_PORT": str(free_port())}
    env["OTEL_BRIDGE_EXPECTED_PRODUCERS"] = "shop@production=1h"
    told = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "producers", "--json"], env=env, capture_output=True, timeout=60
    )
    (shop,) = json.loads(told.stdout)
    assert (shop["service"], shop["heard"]) == ("shop", False)  # expected, never heard from
    # Nor told heard by the replay's own metrics; its events counted all the same.
    engine = {"workflow.platform.name": "durable-effect"}
    assert otlp_http.received.metric("otel_bridge.producer.events", **engine)
    assert not otlp_http.received.metric("otel_bridge.producer.last_heard_timestamp", **engine)


def test_a_history_with_events_lost_sends_its_ended_runs_at_the_end_of_the_file(tmp_path, otlp_http):
    # Live, such runs wait gap_grace_seconds for a straggler; read to its end, a file has none to
    # give, and a replay into a state of its own would otherwise leave them unsent for good.
    lost_end = WorkflowRun("lossy").started().step_started("a").after(5).completed()  # step.completed lost
    lost_attempt = WorkflowRun("gap").started().after(5).step_completed("a", attempt=2).completed(["a"])
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in lost_end.events + lost_attempt.events) + "\n")

    assert _run_replay(tmp_path, otlp_http, str(log)).returncode == 0
    for run in (lost_end, lost_attempt):
        trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
        assert sorted(s.name for s in otlp_http.received.trace(trace_id)) == [
            "step a",
            f"workflow {run.base['workflowName']}",
        ]


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


def _history(tmp_path, name: str, runs: int = 250) -> tuple[list[WorkflowRun], str]:
    done = [
        WorkflowRun("history", workflow_id=f"{name}-{i}").started().step_started("a").after(5).step_completed("a")
        for i in range(runs)
    ]
    log = tmp_path / f"{name}.jsonl"
    log.write_text("\n".join(json.dumps(e) for run in done for e in run.completed().events))
    return done, str(log)


def test_a_replay_refused_for_a_full_export_backlog_waits_for_the_backend_or_stops_at_a_line(
    tmp_path, otlp_http, monkeypatch
):
    down = type("Down", (), {"endpoint": f"http://127.0.0.1:{free_port()}"})()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")  # each export's own retries: a second
    quick = ("--settle-seconds", "0", "--drain-timeout-seconds", "1")
    earlier, earlier_log = _history(tmp_path, "earlier")
    assert _run_replay(tmp_path, down, earlier_log, None, *quick).returncode == 0  # its 500 spans wait
    bounded = (*quick, "--max-outbox-spans", "50", "--export-unready-seconds", "1")

    # The backlog is full and the backend has been failing: waiting would not help, so it stops.
    runs, log = _history(tmp_path, "later")
    stopped = _run_replay(tmp_path, down, log, None, *bounded)
    out = stopped.stdout.decode()
    assert stopped.returncode == 2, out + stopped.stderr.decode()
    assert "stopped at line 1: 500 spans wait for export" in out and "replay the same file again" in out

    # The backend is back: the replay waits for the backlog to drain, as often as needed, and ends.
    again = _run_replay(tmp_path, otlp_http, log, None, *bounded)
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert "accepted: 1000  duplicates: 0" in again.stdout.decode()
    assert len(otlp_http.received.unique_spans()) == 2 * len(earlier + runs)


def _stored(state: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            return db.execute("SELECT count(*) FROM state").fetchone()[0] > 0
    except sqlite3.Error:  # not there yet, or its schema not yet written
        return False


_CTRL_C_AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'otel-bridge'; runpy.run_module('otel_bridge', run_name='__main__')"
)


def test_ctrl_c_stops_a_replay_at_a_line_and_running_it_again_goes_on(tmp_path, otlp_http):
    done, log = _history(tmp_path, "long", runs=5000)
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint,
        "OTEL_BRIDGE_STATE": str(tmp_path / "replay.db"),
        "OTEL_BRIDGE_DEAD_LETTER": str(tmp_path / "dead.jsonl"),
    }
    command = [sys.executable, "-m", "otel_bridge", "replay", log, "--no-progress"]
    # The first run reads the same lines from a pipe, a fifth of them for now: it is surely interrupted
    # halfway. And Ctrl-C raises in it whatever the runner left SIGINT as: a shell's background job
    # (`./scripts/test &`) ignores it, and so would the replay, which then reads to the end.
    from_pipe = [sys.executable, "-c", _CTRL_C_AS_IN_A_TERMINAL, "replay", "-", "--no-progress"]
    replaying = subprocess.Popen(
        from_pipe, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert replaying.stdin is not None
    replaying.stdin.write(b"".join(Path(log).read_bytes().splitlines(keepends=True)[:4000]))
    replaying.stdin.flush()
    deadline = time.monotonic() + 60
    while not _stored(tmp_path / "replay.db"):  # a first batch is in; it stores the rest it was given, and waits
        assert time.monotonic() < deadline and replaying.poll() is None
        time.sleep(0.02)
    replaying.send_signal(signal.SIGINT)
    out, err = replaying.communicate(timeout=60)
    assert replaying.returncode == 130, out.decode() + err.decode()
    line = int(re.search(r"stopped at line (\d+): interrupted", out.decode()).group(1))
    assert 1 <= line <= 4000
    assert b"Traceback" not in err

    again = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    # Everything before the line was stored the first time (the batch it starts may have been too).
    accepted, duplicates = map(int, re.search(r"accepted: (\d+)  duplicates: (\d+)", again.stdout.decode()).groups())
    assert accepted + duplicates == 20_000 and duplicates >= line - 1
    otlp_http.received.wait_for(lambda: len(otlp_http.received.unique_spans()) == 2 * len(done), timeout=60)


@pytest.mark.parametrize("stopping", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_a_hangup_stops_a_replay_as_ctrl_c_does(tmp_path, otlp_http, stopping):
    # `timeout`, a Kubernetes Job deleted, `systemctl stop`; a terminal closed under it (SIGHUP): their default
    # ended it on the spot, no line said, its summary unsaid, the spans it had stored left for another start.
    _, log = _history(tmp_path, "long", runs=1000)
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint,
        "OTEL_BRIDGE_STATE": str(tmp_path / "replay.db"),
        "OTEL_BRIDGE_DEAD_LETTER": str(tmp_path / "dead.jsonl"),
    }
    replaying = subprocess.Popen(
        [sys.executable, "-m", "otel_bridge", "replay", "-", "--no-progress"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert replaying.stdin is not None
    replaying.stdin.write(b"".join(Path(log).read_bytes().splitlines(keepends=True)[:2000]))  # and waits for more
    replaying.stdin.flush()
    deadline = time.monotonic() + 60
    while not _stored(tmp_path / "replay.db"):
        assert time.monotonic() < deadline and replaying.poll() is None
        time.sleep(0.02)
    replaying.send_signal(stopping)
    out, err = replaying.communicate(timeout=60)
    assert replaying.returncode == 128 + stopping, out.decode() + err.decode()
    stored = int(re.search(r"stopped at line (\d+): interrupted", out.decode()).group(1)) - 1
    assert b"Traceback" not in err
    # What it had stored, sent before it exited: two spans a run, a run every five lines.
    otlp_http.received.wait_for(lambda: len(otlp_http.received.unique_spans()) >= 2 * (stored // 5), timeout=10)


def test_a_dead_letter_file_is_offered_again_each_event_in_the_format_it_was_received_in(tmp_path, otlp_http):
    # What three receivers kept, as they keep it: the events of a bridge that could not store them then.
    durable = WorkflowRun("from-http").started().step_started("a").after(5).step_completed("a").completed()
    stream = Execution("from-stream", tenant="acme").started().after(20).ended("completed")
    live = Phase10Run("from-websocket").started(1).after(10).completed()
    kept = tmp_path / "kept.jsonl"
    letters = DeadLetters(kept, 10**7, 1)
    why = {"index": 0, "eventId": None, "field": "", "error": "could not be stored: a bug since fixed"}
    letters.keep("http", [(why, event) for event in durable.events])
    letters.keep("redis-stream:workflow-events", [(why, event) for event in stream.events])
    letters.keep("websocket", [(why, event) for event in live.events])
    letters.keep("websocket", [({"error": "message is not valid JSON: truncated"}, '{"event_type": "wor')])
    letters.close()
    with kept.open("a") as file:  # and what a budget left out: counted, no event
        file.write(json.dumps({"at": "2026-12-01T00:00:00Z", "receiver": "http", "omitted": 3}) + "\n")

    result = _run_replay(tmp_path, otlp_http, str(kept), None, "--format", "dead-letter")

    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()  # two lines held nothing to offer again
    events = len(durable.events) + len(stream.events) + len(live.events)
    assert f"accepted: {events}" in out and "rejected: 2" in out
    assert f"line {events + 1}: the event was not kept as JSON" in out
    assert f"line {events + 2}: holds no event" in out
    names = {s.name for s in otlp_http.received.unique_spans().values()}
    assert {"workflow from-http", "workflow from-stream", "workflow from-websocket"} <= names
    assert not (tmp_path / "dead.jsonl").exists()  # nothing kept again: the file read still holds them


def test_the_dead_letter_file_the_replay_writes_to_is_not_replayed_into_itself(tmp_path, otlp_http):
    (tmp_path / "dead.jsonl").write_text("")
    result = _run_replay(tmp_path, otlp_http, str(tmp_path / "dead.jsonl"), None, "--format", "dead-letter")
    assert result.returncode != 0
    assert "it is the dead-letter file this replay writes to; move it aside first" in result.stderr.decode()


def test_without_a_backend_the_console_exporter_writes_the_traces_as_otlp_json_lines(tmp_path):
    run = WorkflowRun("look").started().step_started("a").after(50).step_completed("a").completed()
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in run.events))
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_BRIDGE_STATE": str(tmp_path / "replay.db"),
        "OTEL_BRIDGE_DEAD_LETTER": str(tmp_path / "dead.jsonl"),
    }
    command = [sys.executable, "-m", "otel_bridge", "replay", str(log), "--no-progress"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    spans = [s for line in lines for r in line.get("resourceSpans", []) for ss in r["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["name"] for s in spans) == ["step a", "workflow look"]
    assert {s["traceId"] for s in spans} == {
        trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    }
    assert any("resourceMetrics" in line for line in lines)  # the counts at exit
    assert "accepted: 4" in result.stdout  # the summary beside them; the log stays on stderr


def test_a_gzip_compressed_log_is_replayed_and_a_truncated_one_up_to_where_it_breaks(tmp_path, otlp_http):
    runs = [WorkflowRun("archived", workflow_id=f"arch-{i}").started().completed() for i in range(400)]
    text = "\n".join(json.dumps(e) for run in runs for e in run.events).encode()
    whole = tmp_path / "events.jsonl.gz"
    whole.write_bytes(gzip.compress(text))
    result = _run_replay(tmp_path, otlp_http, str(whole))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert "accepted: 800" in result.stdout.decode()

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])  # a copy that stopped half-way
    result = _run_replay(tmp_path, otlp_http, str(cut), None, "--state", str(tmp_path / "cut.db"))
    out = result.stdout.decode()
    assert result.returncode == 2, out + result.stderr.decode()
    read = int(re.search(r"lines: (\d+)", out).group(1))
    assert 0 < read < 800 and f"accepted: {read}" in out
    assert f"the file cannot be read from line {read + 1} on (Compressed file ended" in out
    assert "Traceback" not in result.stderr.decode()
