"""The Phase-10 engine's WebSocket, followed by `otel-bridge serve --ws-url`, through a real OTLP receiver."""

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import pytest
import redis
from bridge_process import BridgeProcess
from phase10_server import DROP, Pause, Phase10Server
from pki import make_pki

from otel_bridge import trace_id_for
from otel_bridge.producer.phase10 import Phase10Run

OK, ERROR = 1, 2


@pytest.fixture
def engine() -> Iterator[Phase10Server]:
    server = Phase10Server().start()
    yield server
    server.close()


def _trace(run: Phase10Run) -> str:
    return trace_id_for("phase10", "prod", "agents", run.execution_id).hex()


def _following(tmp_path, otlp_http, engine: Phase10Server, **settings: str) -> BridgeProcess:
    """`otel-bridge serve` following the stand-in's WebSocket, its timelines behind workspace ws-1."""
    return BridgeProcess(
        tmp_path,
        otlp_http.endpoint,
        ws_url=engine.ws_url,
        ws_api_url=engine.api_url,
        ws_workspace_id="ws-1",
        ws_service_name="agents",
        ws_env="prod",
        **settings,
    )


def test_a_dropped_connection_is_caught_up_from_the_timeline(tmp_path, otlp_http, engine):
    interrupted = Phase10Run("nightly-report").started(2).step_started("s1", "fetch", 1, "http").after(400)
    before_drop = list(interrupted.events)
    # While the bridge is away the run goes on: fetch completes, render is retried once, the run ends.
    # Its second step's name ends in an emoji the engine sliced in half: JSON with a lone surrogate escape.
    interrupted.step_completed("s1", 0.4).after(5).step_started("s2", "render \ud83d", 2).after(300)
    interrupted.step_completed("s2", 0.3).after(2).completed()
    engine.timelines[interrupted.execution_id] = interrupted.timeline(retries={"s2": 1})

    later = Phase10Run("ingest").started(1).step_started("a", "load", 1).after(50).step_failed("a", "disk full")
    later.after(1).failed()
    noise = {"event_type": "agent_message", "timestamp": later.events[0]["timestamp"], "data": {}}
    engine.scripts.put([*before_drop, DROP])
    engine.scripts.put([noise, {"type": "heartbeat", "timestamp": "2025-03-01T12:00:00"}, *later.events])

    # `later` has no timeline (a 404 at its end): sent at once, not at the end of the grace (here longer
    # than the wait below).
    bridge = _following(tmp_path, otlp_http, engine, gap_grace_seconds="120").start()
    got = otlp_http.received
    try:
        for run in (interrupted, later):
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))), timeout=30)
    finally:
        bridge.close()

    assert engine.connections >= 2
    assert (interrupted.execution_id, "ws-1") in engine.timeline_requests
    spans = {s.name: s for s in got.trace(_trace(interrupted))}
    assert set(spans) == {"workflow nightly-report", "step fetch", "step render \ufffd"}
    root = spans["workflow nightly-report"]
    assert root.status_code == OK and root.attributes["workflow.execution.id"] == interrupted.execution_id
    assert root.resource == {"service.name": "agents", "deployment.environment.name": "prod"}
    assert spans["step fetch"].attributes["workflow.task.type"] == "http"  # told live, before the drop
    render = spans["step render \ufffd"]
    assert render.attributes["workflow.task.attempt"] == 2
    assert [name for name, _t, _a in render.events] == ["retry.scheduled"]

    failed = {s.name: s for s in got.trace(_trace(later))}
    assert failed["workflow ingest"].status_code == ERROR
    assert failed["step load"].status_message == "disk full"
    assert failed["workflow ingest"].attributes["workflow.task.name"] == "load"


def test_an_engine_behind_tls_with_a_private_ca_is_followed_and_caught_up(tmp_path, otlp_http):
    # `wss://` and an `https://` API whose certificate a CA of the organisation's signed: given as the
    # machine's trust (`SSL_CERT_FILE`), which websockets and httpx read as OpenSSL does.
    pki = make_pki(tmp_path)
    engine = Phase10Server(tls=(pki["backend.pem"], pki["backend.key"])).start()
    interrupted = Phase10Run("nightly-report").started(1).step_started("s1", "fetch", 1, "http").after(400)
    engine.scripts.put([*interrupted.events, DROP])
    engine.scripts.put([])
    interrupted.step_completed("s1", 0.4).after(5).completed()
    engine.timelines[interrupted.execution_id] = interrupted.timeline()
    bridge = _following(tmp_path, otlp_http, engine)
    bridge.env["SSL_CERT_FILE"] = pki["ca.pem"]
    got = otlp_http.received
    try:
        bridge.start()
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(interrupted))), timeout=30)
    finally:
        bridge.close()
        engine.close()
    assert engine.connections >= 2 and (interrupted.execution_id, "ws-1") in engine.timeline_requests
    assert {s.name for s in got.trace(_trace(interrupted))} == {"workflow nightly-report", "step fetch"}


@pytest.mark.parametrize("workspace", ["ws-1", "ws-2"])  # the bridge's own (`ws_workspace_id`), another's
def test_a_run_that_ended_while_the_bridge_restarted_is_caught_up_from_the_timeline(
    tmp_path, otlp_http, engine, workspace
):
    run = Phase10Run("deploy-day", workspace_id=workspace).started(1).step_started("s1", "build", 1).after(200)
    seen_live = list(run.events)
    run.step_completed("s1", 0.2).after(1).completed()  # while the bridge is being redeployed
    engine.timelines[run.execution_id] = run.timeline()
    # The engine tells it only in its workspace's context: the restarted bridge asks in the one stored.
    engine.timeline_workspaces[run.execution_id] = workspace
    engine.scripts.put(seen_live)  # the first process's connection: the start, then quiet
    engine.scripts.put([])  # the restarted one's: nothing new is ever told of the run
    bridge = _following(tmp_path, otlp_http, engine).start()
    got = otlp_http.received
    try:
        runs = f"{bridge.url}/v1/runs"
        deadline = time.monotonic() + 20
        while not bridge.client.get(runs).json()["runs"]:  # the start is stored
            assert time.monotonic() < deadline, "the run's start was not stored"
            time.sleep(0.05)
        assert bridge.stop()
        assert not engine.timeline_requests  # nothing to catch up on the first start
        bridge.start()
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(run))), timeout=30)
    finally:
        bridge.close()
    assert engine.timeline_requests == [(run.execution_id, workspace)]
    spans = {s.name: s for s in got.trace(_trace(run))}
    assert spans["workflow deploy-day"].status_code == OK and spans["step build"].status_code == OK


def test_a_run_that_began_and_ended_while_the_bridge_was_down_is_fetched_after_its_restart(tmp_path, otlp_http, engine):
    # No message tells it and no open run holds it: the restarted bridge lists the workflow's executions
    # begun since the last it followed (its bookmark, kept in the state file), and fetches this one.
    told = Phase10Run("deploy-day", start=datetime.now()).started(1).after(10).completed()
    engine.scripts.put(list(told.events))
    engine.scripts.put([])  # the restarted one's: nothing is told live
    bridge = _following(tmp_path, otlp_http, engine).start()
    got = otlp_http.received
    try:
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(told))), timeout=30)
        assert bridge.stop()
        while_down = Phase10Run("deploy-day", start=datetime.now()).started(1).step_started("s1", "build", 1)
        while_down.after(200).step_completed("s1", 0.2).after(1).completed()
        engine.runs = [told, while_down]
        engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
        bridge.start()
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(while_down))), timeout=30)
    finally:
        bridge.close()
    spans = {s.name: s for s in got.trace(_trace(while_down))}
    assert set(spans) == {"workflow deploy-day", "step build"}  # named as the workflow's runs told live
    assert engine.listing_requests == [(told.workflow_id, "ws-1")]
    assert "Traceback" not in bridge.log.read_text()


def test_steps_that_go_on_after_a_cancellation_join_the_trace_and_none_is_late(tmp_path, otlp_http, engine):
    # The engine's cancel lets the execution run on: its step ends, the next runs, then it completes,
    # each long after the bridge's settle window (0.2 s here) has passed since the cancellation.
    run = Phase10Run("triage").started(2).step_started("s1", "classify", 1, "agent").after(50).cancelled()
    told = len(run.events)
    run.after(1_500).step_completed("s1", 1.55).after(5).step_started("s2", "notify", 2).after(20)
    run.step_completed("s2", 0.02).after(2).completed()
    engine.scripts.put([*run.events[:told], Pause(1.5), *run.events[told:]])
    bridge = _following(tmp_path, otlp_http, engine).start()
    got = otlp_http.received
    try:
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(run))), timeout=30)
        metrics = httpx.get(f"{bridge.url}/metrics").text
    finally:
        bridge.close()
    spans = {s.name: s for s in got.trace(_trace(run))}
    assert set(spans) == {"workflow triage", "step classify", "step notify"}
    assert spans["step classify"].status_code == OK and spans["step notify"].status_code == OK
    root = spans["workflow triage"]
    assert root.attributes["workflow.execution.result"] == "cancellation"
    assert "workflow_completed" in [name for name, _t, _a in root.events]
    late = re.search(r'^otel_bridge_events_late_total\{receiver="websocket"[^}]*\} (\S+)$', metrics, re.M)
    assert late is not None and float(late.group(1)) == 0


def _import(tmp_path, otlp_http, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`otel-bridge import-timeline …` into a state of its own, its runs as the agents service in prod."""
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint,
        "OTEL_BRIDGE_STATE": str(tmp_path / "state.db"),
        "OTEL_BRIDGE_DEAD_LETTER": str(tmp_path / "dead.jsonl"),
        "OTEL_BRIDGE_SPAN_DEAD_LETTER": str(tmp_path / "dead-spans.jsonl"),
        "OTEL_BRIDGE_WS_SERVICE_NAME": "agents",
        "OTEL_BRIDGE_WS_ENV": "prod",
    }
    command = [sys.executable, "-m", "otel_bridge", "import-timeline", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_import_timeline_turns_documents_into_complete_traces(tmp_path, otlp_http):
    run = Phase10Run("backfill").started(2).step_started("x", "extract", 1).after(100).step_completed("x")
    run.after(1).step_started("y", "load", 2).after(100).step_failed("y", "constraint violated").after(1).failed()
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps(run.timeline(retries={"y": 2})))
    result = _import(tmp_path, otlp_http, str(path))
    assert result.returncode == 0, result.stderr
    assert "rejected: 0" in result.stdout
    spans = {s.name: s for s in otlp_http.received.trace(_trace(run))}
    assert set(spans) == {"workflow wf-report", "step extract", "step load"}
    assert spans["step load"].attributes["workflow.task.attempt"] == 3
    assert spans["workflow wf-report"].status_code == ERROR


def test_import_timeline_of_a_file_that_is_no_timeline_rejects_it_naming_what_it_lacks(tmp_path, otlp_http):
    path = tmp_path / "timeline.json"
    path.write_text(json.dumps({"detail": "Not authenticated"}))  # an error body saved where a timeline was asked
    result = _import(tmp_path, otlp_http, str(path))
    assert result.returncode == 1, result.stdout + result.stderr  # it was "timelines: 1 … rejected: 0", exit 0
    assert "rejected: 1" in result.stdout and "timeline.json: execution_id: Field required" in result.stdout
    (letter,) = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["receiver"] == "import-timeline" and letter["event"] == {"detail": "Not authenticated"}


def test_import_timeline_takes_a_workflows_history_from_the_api_page_by_page_in_a_window(tmp_path, otlp_http, engine):
    start = datetime(2026, 11, 30, 8, 0)
    history = [
        Phase10Run("nightly", workflow_id="wf-nightly", start=start + timedelta(minutes=i))
        .started(1)
        .step_started("s", "fetch", 1)
        .after(200)
        .step_completed("s")
        .completed()
        for i in range(130)
    ]
    other = Phase10Run("hourly", workflow_id="wf-hourly", start=start + timedelta(minutes=45)).started(1).completed()
    engine.runs = [*history, other]
    engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
    engine.page_limit = 50  # the API's cap, not the bridge's: three pages
    missing = history[40]
    del engine.timelines[missing.execution_id]  # listed, but its timeline is a 404
    # Named as the live runs of the workflow are (its timelines carry no name).
    window = [
        "--workflow-id",
        "wf-nightly=nightly",
        "--since",
        "2026-11-30T08:30:00Z",
        "--until",
        "2026-11-30T10:00:00",
    ]
    result = _import(tmp_path, otlp_http, "--ws-api-url", engine.api_url, *window, "--workspace-id", "ws-1")

    assert result.returncode == 1, result.stdout + result.stderr  # one listed timeline could not be fetched
    assert "timelines: 89" in result.stdout and "not fetched: 1" in result.stdout
    assert f"{missing.execution_id}: " in result.stdout and "404" in result.stdout
    imported = [run for run in history[30:120] if run is not missing]  # 08:30 to 09:59
    got = otlp_http.received
    roots = {s.trace_id for s in got.unique_spans().values() if s.name == "workflow nightly"}
    assert roots == {_trace(run) for run in imported}  # none before 08:30, none from 10:00, no other workflow
    assert {workspace for _execution, workspace in engine.timeline_requests} == {"ws-1"}
    # The workspace the engine answered in is the runs', on their roots as a live run's is.
    assert {s.attributes.get("workspace.id") for s in got.unique_spans().values() if s.name == "workflow nightly"} == {
        "ws-1"
    }


def test_import_timeline_behind_a_rate_limiter_fetches_every_timeline_as_fast_as_it_is_let(tmp_path, otlp_http, engine):
    # Each request answered 429 but for the first in every 0.2 s, asking for that much: all of a history
    # came back "not fetched" but a few, each asked for once at full speed.
    history = [Phase10Run("nightly", workflow_id="wf-nightly").started(1).completed() for _ in range(12)]
    engine.runs = history
    engine.timelines = {run.execution_id: run.timeline() for run in history}
    engine.min_interval, engine.retry_after = 0.2, "0.2"

    result = _import(tmp_path, otlp_http, "--ws-api-url", engine.api_url, "--workflow-id", "wf-nightly")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "timelines: 12" in result.stdout and "not fetched" not in result.stdout
    assert len(engine.timeline_requests) == 12  # each taken once
    # Asked again when the limiter asked, not sooner: no request refused twice in a row.
    assert 0 < len(engine.throttled) <= len(engine.timeline_requests) + len(engine.listing_requests)
    assert "the Phase-10 API answered 429" in result.stderr and "as it asks" in result.stderr


def test_import_timeline_from_an_api_that_stays_unavailable_waits_for_the_first_timeline_only(
    tmp_path, otlp_http, engine
):
    # A load balancer answers 503 for as long as the API behind it is down: each of a history's timelines
    # waited out its five tries.
    history = [Phase10Run("nightly", workflow_id="wf-nightly").started(1).completed() for _ in range(6)]
    engine.runs = history
    engine.timelines = {run.execution_id: run.timeline() for run in history}
    engine.timeline_failures = {run.execution_id: 1_000 for run in history}
    engine.retry_after = "0.05"

    result = _import(tmp_path, otlp_http, "--ws-api-url", engine.api_url, "--workflow-id", "wf-nightly")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "not fetched: 6" in result.stdout and "503" in result.stdout
    assert len(engine.timeline_requests) == 5 + 5  # the first asked five times, the others once each


def test_import_timeline_keeps_what_it_stored_when_the_listing_fails_halfway(tmp_path, otlp_http, engine):
    start = datetime(2026, 11, 30, 8, 0)
    history = [
        Phase10Run("nightly", workflow_id="wf-nightly", start=start + timedelta(minutes=i)).started(1).completed()
        for i in range(130)
    ]
    engine.runs = history
    engine.timelines = {run.execution_id: run.timeline() for run in history}
    engine.page_limit = 50
    engine.listing_fails_from = 100  # the third page of the listing is a 500

    result = _import(tmp_path, otlp_http, "--ws-api-url", engine.api_url, "--workflow-id", "wf-nightly")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot list the executions of wf-nightly" in result.stderr and "500" in result.stderr
    assert "100 timelines stored" in result.stderr  # the same command again goes on from there
    roots = {s.trace_id for s in otlp_http.received.unique_spans().values() if s.name.startswith("workflow ")}
    assert roots == {_trace(run) for run in history[30:]}  # the API lists the newest first


def test_a_run_that_began_while_the_bridge_was_away_gets_its_whole_trace_and_its_workflows_name(
    tmp_path, otlp_http, engine
):
    # The bridge connects mid-run: the stream tells only the second step and the end. Before, the trace
    # had no first step and its root began at the second; the engine's timeline tells the beginning.
    run = Phase10Run("nightly-report").started(2).step_started("s1", "fetch", 1, "http").after(400)
    missed = len(run.events)
    run.step_completed("s1", 0.4).after(5).step_started("s2", "render", 2).after(300).step_completed("s2", 0.3)
    run.after(2).completed()
    engine.timelines[run.execution_id] = run.timeline()
    # A timeline has no name: the workflow's run seen starting meanwhile tells it.
    other = Phase10Run("nightly-report").started(1).after(50).completed()
    engine.timelines[other.execution_id] = other.timeline()
    engine.scripts.put([*other.events, *run.events[missed:]])

    bridge = _following(tmp_path, otlp_http, engine).start()
    got = otlp_http.received
    try:
        got.wait_for(lambda: len(got.trace(_trace(run))) == 3, timeout=30)
        got.wait_for(lambda: len(got.trace(_trace(other))) == 1, timeout=30)  # sent once its timeline came
    finally:
        bridge.close()
    # For its beginning (which serves as its end's too, unless the end came while it was being fetched), and
    # the other run's at its end (`ws_timeline_at_end`).
    asked = [execution for execution, _ in engine.timeline_requests]
    assert set(asked) == {run.execution_id, other.execution_id} and asked.count(other.execution_id) == 1
    spans = {s.name: s for s in got.trace(_trace(run))}
    assert set(spans) == {"workflow nightly-report", "step fetch", "step render"}
    root = spans["workflow nightly-report"]
    assert root.start_ns == spans["step fetch"].start_ns  # the run's start, not s2's
    assert root.status_code == OK
    # What the bridge says of its fetches, not httpx's line for each (thousands, in a long catch-up).
    assert "HTTP Request:" not in bridge.log.read_text()


def test_of_two_replicas_on_one_redis_state_one_follows_the_stream_and_the_other_says_it_stands_by(
    tmp_path, otlp_http, engine, redis_url
):
    state = redis_url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(state).flushdb()
    run = Phase10Run("ingest").started(1).step_started("a", "load", 1).after(50).step_completed("a", 0.05)
    run.after(1).completed()
    engine.scripts.put(list(run.events))
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(_following(tmp_path / name, otlp_http, engine, state=state))
    got = otlp_http.received
    try:
        for replica in replicas:
            replica.start()
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(run))), timeout=30)
        said = {replica.client.get(f"{replica.url}/readyz").json()["following"]["websocket"] for replica in replicas}
    finally:
        for replica in replicas:
            replica.close()
    assert said == {"connected", "standing by: another replica sharing the state follows it"}
    assert engine.connections == 1, "one replica took the stream in"
    told = [replica.log.read_text() for replica in replicas]
    assert sum("for the replicas sharing this state" in t for t in told) == 1, told
    assert sum("standing by" in t for t in told) == 1, told
    assert len({s.span_id for s in got.trace(_trace(run))}) == 2
