"""`otel-bridge serve` as a subprocess, a producer POSTing over HTTP, a real OTLP receiver decoding protobuf."""

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from bridge_process import BridgeProcess, healthcheck_command
from builders import JobRun, WorkflowRun, ns_of

from otel_bridge import RunIdentity, root_span_id, trace_id_for
from otel_bridge.ids import attempt_span_id

SERVER, INTERNAL = 2, 1  # OTLP SpanKind values
OK, ERROR = 1, 2


@pytest.fixture
def bridge(tmp_path, otlp) -> Iterator[tuple[BridgeProcess, object]]:
    protocol, receiver = otlp
    process = BridgeProcess(tmp_path, receiver.endpoint, protocol).start()
    yield process, receiver
    process.close()


def _retry_workflow() -> WorkflowRun:
    run = WorkflowRun("checkout", service="shop", env="staging", execution_id="order-42").queued()
    run.after(40).started().after(2).step_started("reserve").after(30).step_completed("reserve", duration_ms=30)
    run.after(1).step_started("charge", 1).after(20).retry_scheduled("charge", 1, delay_ms=500.5)
    run.paused("retry", step="charge").after(500).resumed().step_started("charge", 2)
    run.after(25).step_completed("charge", 2, duration_ms=546).after(1).completed(["reserve", "charge"], duration_ms=27)
    return run


def test_a_workflow_posted_in_invocation_batches_becomes_one_trace(bridge):
    process, receiver = bridge
    run = _retry_workflow()
    # One POST per invocation, as the engine's tracker sends: queued, first run, after the retry alarm.
    for batch in (run.events[:1], run.events[1:8], run.events[8:]):
        response = process.post(batch)
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == []

    trace_id = trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
    receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 4)
    spans = {(s.name, s.attributes.get("workflow.task.attempt")): s for s in receiver.received.trace(trace_id)}
    assert set(spans) == {("workflow checkout", None), ("step reserve", 1), ("step charge", 1), ("step charge", 2)}

    identity = RunIdentity("durable-effect", "staging", "shop", run.workflow_id)
    root = spans[("workflow checkout", None)]
    assert root.span_id == root_span_id(identity).hex()
    assert root.parent_span_id == ""
    assert root.kind == SERVER
    assert root.status_code == OK
    assert root.start_ns == ns_of(run.events[0])
    assert root.end_ns == ns_of(run.events[-1])
    assert root.resource == {"service.name": "shop", "deployment.environment.name": "staging"}
    assert root.attributes["workflow.execution.correlation_id"] == "order-42"
    assert [name for name, _t, _a in root.events] == [
        "workflow.queued",
        "retry.scheduled",
        "workflow.paused",
        "workflow.resumed",
    ]

    first, second = spans[("step charge", 1)], spans[("step charge", 2)]
    for step in (first, second, spans[("step reserve", 1)]):
        assert step.parent_span_id == root.span_id
        assert step.kind == INTERNAL
    assert first.status_code == ERROR
    assert first.end_ns - first.start_ns == 20_000_000
    assert "exception" in [name for name, _t, _a in first.events]
    assert second.status_code == OK
    assert second.links == [(trace_id, attempt_span_id(identity, "charge", 1).hex())]
    assert second.end_ns - second.start_ns == 25_000_000


def test_workflow_and_job_metrics_arrive_with_their_names_attributes_and_resources(bridge):
    process, receiver = bridge
    run = _retry_workflow()
    failing = WorkflowRun("checkout", service="shop", env="staging").started().step_started("charge")
    stack = "CardDeclinedError: card declined\n    at charge (worker.js:12:7)"
    failing.after(10).retry_exhausted("charge", 1).failed("card declined", step="charge", attempt=1, stack=stack)
    # Told now, as a live producer tells it: an instance silent for max_open_seconds is presumed ended.
    job = JobRun("tokenRefresher", "continuous", service="jobs", start=datetime.now(UTC)).started()
    job.after(10).executed(1, duration_ms=200)
    debounce = JobRun("webhookBatcher", "debounce", service="jobs").debounce_started()
    debounce.after(5000).executed(0).debounce_flushed(7, reason="maxEvents", duration_ms=5000)
    task = JobRun("reminder", "task", service="jobs").task_scheduled(in_ms=60_000, trigger="idle")
    assert process.post(run.events + failing.events + job.events + debounce.events + task.events).status_code == 200

    got = receiver.received
    got.wait_for(lambda: got.metric("workflow.execution.duration", **{"workflow.execution.state": "pending"}))
    got.wait_for(lambda: got.metric("job.task.schedule.delay"))
    got.wait_for(lambda: got.metric("workflow.execution.errors"))

    pending = got.metric("workflow.execution.duration", **{"workflow.execution.state": "pending"})[0]
    assert pending["unit"] == "s" and pending["count"] == 1 and pending["sum"] == pytest.approx(0.04)
    assert pending["bounds"][0] == 0.005 and pending["bounds"][-1] == 2592000
    assert (
        pending["exemplars"]
        and pending["exemplars"][0][0] == trace_id_for("durable-effect", "staging", "shop", run.workflow_id).hex()
    )
    assert got.metric("workflow.task.retries", **{"workflow.task.name": "charge"})[0]["value"] == 1
    assert got.metric("workflow.execution.errors", **{"workflow.task.name": "charge"})[0]["value"] == 1
    assert got.metric("workflow.execution.errors", **{"error.type": "CardDeclinedError"})[0]["value"] == 1
    charge = {"workflow.task.name": "charge"}
    succeeded = got.metric("workflow.task.duration", **charge, **{"workflow.task.result": "success"})
    failed = got.metric("workflow.task.duration", **charge, **{"workflow.task.result": "failure"})
    assert [p["count"] for p in succeeded] == [1]
    assert sorted(p["count"] for p in failed) == [1, 1]  # failed twice (two runs), a series for each error's class
    assert got.metric("workflow.task.duration", **{"error.type": "CardDeclinedError"})[0]["count"] == 1
    assert (
        got.metric("job.executions", **{"job.name": "tokenRefresher", "job.execution.result": "success"})[0]["value"]
        == 1
    )
    assert got.metric("job.instance.active", **{"job.name": "tokenRefresher"})[0]["value"] == 1
    (last,) = got.metric("job.execution.last_timestamp", **{"job.name": "tokenRefresher"})
    assert (last["kind"], last["unit"], last["value"]) == ("gauge", "s", ns_of(job.events[-1]) / 1e9)
    flush = got.metric("job.debounce.flush.size", **{"job.debounce.flush.reason": "maxEvents"})[0]
    assert (flush["count"], flush["sum"]) == (1, 7)
    assert got.metric("job.task.schedule.delay", **{"job.task.trigger": "idle"})[0]["sum"] == 60
    # The bridge's own telemetry says which bridge: its name and version (beside the SDK's own attributes).
    (own,) = got.metric_resources("otel_bridge.events.accepted")
    assert (own["service.name"], own["service.version"]) == ("otel-bridge", version("otel-bridge"))
    # A producer's series say which producer, and which process wrote them: the bridge's own instance id.
    writer = {"service.instance.id": own["service.instance.id"]}
    assert {"service.name": "jobs", "deployment.environment.name": "production", **writer} in got.metric_resources(
        "job.executions"
    )
    assert {"service.name": "shop", "deployment.environment.name": "staging", **writer} in got.metric_resources(
        "workflow.task.retries"
    )


def test_metrics_endpoint_labels_every_series_with_its_producer(bridge):
    process, _receiver = bridge
    now = datetime.now(UTC)
    job = JobRun("tokenRefresher", service="jobs", env="prod", start=now).started().executed(1, duration_ms=20)
    other = JobRun("tokenRefresher", service="billing", env="prod", start=now).started().executed(1, duration_ms=20)
    assert process.post(job.events + other.events).status_code == 200
    text = httpx.get(f"{process.url}/metrics").text
    assert (
        'job_executions_total{deployment_environment_name="prod",job_execution_result="success",'
        'job_name="tokenRefresher",job_type="continuous",service_name="jobs"} 1.0' in text
    )
    assert 'service_name="billing"' in text
    assert "job_execution_duration_seconds_bucket" in text
    assert 'otel_bridge_events_accepted_total{receiver="http",service_name="otel-bridge"} 4.0' in text
    assert f'otel_bridge_build_info{{service_name="otel-bridge",version="{version("otel-bridge")}"}} 1.0' in text


def test_restart_mid_workflow_continues_the_same_trace_from_its_original_start(tmp_path, otlp_http):
    first = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    run = WorkflowRun("onboarding").started().step_started("welcome").after(10).step_completed("welcome")
    run.after(1).sleep_started(60_000).paused("sleep")
    try:
        assert first.post(run.events).status_code == 200
        assert first.stop()
    finally:
        first.close()
    got = otlp_http.received
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    assert {s.name for s in got.trace(trace_id)} == {"step welcome"}  # drained on SIGTERM; root still open

    run.after(60_000).resumed().sleep_completed(60_000).step_started("tips").after(5).step_completed("tips").completed()
    second = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        assert second.post(run.events[5:]).status_code == 200
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(trace_id)))
    finally:
        second.close()
    spans = got.trace(trace_id)
    assert sorted(s.name for s in spans) == ["sleep", "step tips", "step welcome", "workflow onboarding"]
    root = next(s for s in spans if s.parent_span_id == "")
    assert root.start_ns == ns_of(run.events[0])
    assert all(s.parent_span_id == root.span_id for s in spans if s is not root)


def test_bad_events_beside_good_ones_are_reported_and_dead_lettered(bridge, tmp_path):
    process, receiver = bridge
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    bad = [{"eventId": "x-1", "type": "step.started", "source": "workflow"}, "not an event"]
    response = process.post(run.events[:2] + bad + run.events[2:])
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 4
    assert [(r["index"], r["eventId"]) for r in body["rejected"]] == [(2, "x-1"), (3, None)]
    assert "workflowId: Field required" in body["rejected"][0]["error"]
    assert "timestamp: Field required" in body["rejected"][0]["error"]
    lines = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"x-1"' in lines[0]
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 2)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
        (b'{"evts": []}', {"content-type": "application/json"}, 400, 'no "events"'),
        (b'{"events": {}}', {"content-type": "application/json"}, 400, "must be an array"),
        (b"[1]", {"content-type": "application/json"}, 400, "JSON object"),
        (b'{"events": []}', {"content-type": "text/plain"}, 415, "Content-Type"),
        (b'{"events": []}', {"content-type": "application/json", "content-encoding": "br"}, 415, "Content-Encoding"),
    ],
)
def test_a_body_that_is_not_a_batch_gets_a_4xx_naming_the_problem(bridge, body, headers, status, message):
    process, _receiver = bridge
    response = httpx.post(f"{process.url}/v1/events", content=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_health_and_readiness(bridge):
    process, _receiver = bridge
    assert httpx.get(f"{process.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{process.url}/readyz").json()["status"] == "ready"


def test_answers_name_no_server_software(bridge):
    # `server: uvicorn` on every answer told a scanner of an endpoint the internet reaches what to try.
    process, _receiver = bridge
    answers = [process.post([]), httpx.get(f"{process.url}/healthz"), httpx.get(f"{process.url}/nowhere")]
    assert [a.headers.get("server") for a in answers] == [None, None, None]
    assert all(a.headers["date"] for a in answers)  # RFC 9110: an origin server with a clock sends Date


def test_duplicate_batches_from_producer_retries_change_nothing(bridge):
    process, receiver = bridge
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    assert process.post(run.events).json()["accepted"] == 4
    again = process.post(run.events).json()
    assert (again["accepted"], again["duplicates"]) == (0, 4)
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 2)
    assert len(receiver.received.trace(trace_id)) == 2


def _one_run_through(tmp_path, protocol: str, receiver, **env: str) -> None:
    """A run of two spans posted to a bridge exporting to `receiver` with `env`, until both arrived."""
    process = BridgeProcess(tmp_path, receiver.endpoint, protocol, **env).start()
    try:
        run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
        assert process.post(run.events).status_code == 200
        receiver.received.wait_for(lambda: len(receiver.received.spans) == 2)
    finally:
        process.close()


def test_the_standard_otlp_headers_variable_reaches_the_backend(tmp_path, otlp):
    protocol, receiver = otlp
    _one_run_through(tmp_path, protocol, receiver, OTEL_EXPORTER_OTLP_HEADERS="x-tenant=acme")
    assert any(h.get("x-tenant") == "acme" for h in receiver.received.headers)


def test_the_standard_otlp_compression_variable_compresses_what_the_backend_gets(tmp_path, otlp):
    # Backends across the internet (a SaaS) are sent gzip: the outbox's encoded spans are compressed as the
    # SDK's exporters compress their own, and the receiver decodes them as a Collector does.
    protocol, receiver = otlp
    _one_run_through(tmp_path, protocol, receiver, OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
    if protocol == "http/protobuf":  # gRPC's own header is the transport's, not shown to the service
        assert receiver.received.headers[-1].get("content-encoding") == "gzip"


def test_with_json_logs_every_line_the_process_writes_is_one_json_object(tmp_path, otlp_http):
    process = BridgeProcess(tmp_path, otlp_http.endpoint, log_format="json").start()
    try:
        run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
        assert process.post(run.events).status_code == 200
        otlp_http.received.wait_for(lambda: len(otlp_http.received.unique_spans()) == 2)
        assert process.post(run.step_started("b").events[-1:]).json()["late"] == 1  # the bridge logs it
    finally:
        assert process.stop()
    lines = [json.loads(line) for line in process.log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert not any("\x1b" in str(value) for line in lines for value in line.values())  # no terminal colours
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.error" in loggers  # the server's own lines too ("Started server process", shutdown)
    (start,) = [line for line in lines if line["logger"] == "otel_bridge.runtime" and "started" in line["message"]]
    assert f"traces to {otlp_http.endpoint}/v1/traces" in start["message"]
    (late,) = [line for line in lines if line["logger"] == "otel_bridge.pipeline"]
    assert late["level"] == "WARNING" and late["message"].startswith("late event")
    assert all(line["time"].endswith("+00:00") for line in lines)


def test_with_json_logs_a_failing_grpc_export_writes_no_line_of_its_own_and_the_bridges_says_why(tmp_path, otlp_grpc):
    # TLS asked of a plain-text Collector: the gRPC core wrote an `I…ssl_transport_security.cc…` line to
    # stderr at each handshake, breaking the JSON a log pipeline reads, and the metric line said no why.
    endpoint = otlp_grpc.endpoint.replace("http://", "https://")
    # Each export given up on after a second, not the default ten: the failure is told sooner.
    process = BridgeProcess(
        tmp_path,
        endpoint,
        "grpc",
        log_format="json",
        metric_export_interval_ms="500",
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
    ).start()
    try:
        deadline = time.monotonic() + 20
        while "metric export to" not in process.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        assert process.stop()
    lines = [json.loads(line) for line in process.log.read_text().splitlines() if line.strip()]
    (failing,) = [line["message"] for line in lines if line["message"].startswith("metric export to")]
    assert "is failing (gRPC UNAVAILABLE" in failing and "handshake" in failing.lower()


def test_the_containers_health_check_asks_the_port_the_bridge_was_given(tmp_path, otlp_http):
    process = BridgeProcess(tmp_path, otlp_http.endpoint).start()  # a free port, not 4380
    try:
        healthy = subprocess.run(healthcheck_command(), env=process.env, capture_output=True, timeout=10)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        process.close()
    gone = subprocess.run(healthcheck_command(), env=process.env, capture_output=True, timeout=10)
    assert gone.returncode != 0


def test_sampled_with_the_standard_variables_a_failed_run_arrives_whole_and_a_kept_back_one_not_at_all(
    tmp_path, otlp_http
):
    # A ratio of 0: every run kept back. The run that fails goes out whole at its end, the step that had
    # ended long before it included; the run that succeeds never goes out, and both are counted.
    process = BridgeProcess(
        tmp_path, otlp_http.endpoint, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0"
    ).start()
    got = otlp_http.received

    def counted(step: str) -> bool:
        return f'workflow_task_name="{step}"' in httpx.get(f"{process.url}/metrics").text

    try:
        fine = WorkflowRun("nightly").started().step_started("fetch").after(5).step_completed("fetch").completed()
        assert process.post(fine.events).status_code == 200
        failing = WorkflowRun("nightly").started().step_started("load").after(5).step_completed("load")
        assert process.post(failing.events).status_code == 200
        got.wait_for(lambda: counted("fetch") and counted("load"))  # both settled, nothing sent

        failing.after(60_000).step_started("report").after(5).step_failed("report").failed(step="report")
        assert process.post(failing.events[3:]).status_code == 200
        failed = trace_id_for("durable-effect", "production", "shop", failing.workflow_id).hex()
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(failed)))
        metrics = httpx.get(f"{process.url}/metrics").text
    finally:
        process.close()
    assert sorted(s.name for s in got.trace(failed)) == ["step load", "step report", "workflow nightly"]
    assert got.trace(trace_id_for("durable-effect", "production", "shop", fine.workflow_id).hex()) == []
    assert 'otel_bridge_runs_kept_back_total{service_name="otel-bridge"} 1.0' in metrics


def _open_files_limit(pid: int) -> tuple[int, int]:
    (line,) = [
        line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max open files")
    ]
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_started_with_a_low_soft_limit_of_open_files_the_bridge_raises_it_and_serves_past_it(tmp_path, otlp_http):
    # systemd starts a service with a soft limit of 1,024 open files (its hard one 524,288): each producer's
    # kept-alive connection holds one, and past it new connections were dropped unanswered. Here 100 and 4,096.
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    bridge.wrapper = ["prlimit", "--nofile=100:4096", "--"]
    bridge.start()
    idle: list[socket.socket] = []
    try:
        assert _open_files_limit(bridge.proc.pid) == (4096, 4096)
        idle = [socket.create_connection(("127.0.0.1", bridge.port), timeout=5) for _ in range(300)]
        with httpx.Client(timeout=10) as producer:  # a connection of its own, past the 300 the bridge holds
            response = producer.post(f"{bridge.url}/v1/events", json={"events": WorkflowRun().started().events})
        assert response.status_code == 200 and response.json()["accepted"] == 1
    finally:
        for connection in idle:
            connection.close()
        bridge.close()


def test_out_of_file_descriptors_the_bridge_answers_on_the_connections_it_holds(tmp_path, otlp_http):
    # At its hard limit the bridge can open nothing: new connections are shed (the producer's tracker sends
    # again), while those it holds are served; what needs a file it has not opened yet (here the dead letters')
    # is told in a line.
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    bridge.wrapper = ["prlimit", "--nofile=64:64", "--"]
    bridge.start()  # its probe's connection, kept alive: the producer's own below
    idle: list[socket.socket] = []
    try:
        idle = [socket.create_connection(("127.0.0.1", bridge.port), timeout=5) for _ in range(100)]
        time.sleep(1)  # taken until the descriptors run out, the rest shed
        assert bridge.client.get(f"{bridge.url}/metrics").status_code == 200
        run = WorkflowRun().started().step_started("a")
        batch = [*run.events, {"type": "nonsense", "eventId": "x"}]
        answer = bridge.post(batch)
        assert answer.status_code == 200
        assert (answer.json()["accepted"], [r["index"] for r in answer.json()["rejected"]]) == (2, [2])
    finally:
        for connection in idle:
            connection.close()
        bridge.close()
    logged = bridge.log.read_text()
    assert "run_in_threadpool" not in logged and "internal error" not in logged
    assert "could not keep a dead letter" in logged  # its file could not be opened: said, not a traceback
