"""A backend that refuses some spans for good: they are set aside with its reason, nothing behind them waits,
and they are sent again as they were once the backend takes them."""

import json
import re
import subprocess
import sys

import httpx
import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import trace_id_for


def _metric(bridge: BridgeProcess, name: str) -> float:
    text = httpx.get(f"{bridge.url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


@pytest.mark.parametrize("partial", [False, True], ids=["refused-request", "partial-success"])
def test_spans_the_backend_refuses_are_dead_lettered_and_the_rest_delivered(tmp_path, otlp, partial):
    protocol, receiver = otlp
    receiver.received.poison = "poison"
    receiver.received.partial = partial
    # One export request carries every span of the test, the poisoned ones among them.
    bridge = BridgeProcess(tmp_path, receiver.endpoint, protocol, OTEL_BSP_SCHEDULE_DELAY="1000").start()
    try:
        runs = [WorkflowRun("healthy", workflow_id=f"ok-{i}").started().step_started("a") for i in range(6)]
        runs.insert(3, WorkflowRun("poison", workflow_id="bad").started().step_started("a"))
        events = [e for run in runs for e in run.after(2).step_completed("a").completed().events]
        assert bridge.post(events).status_code == 200

        got = receiver.received
        got.wait_for(lambda: len(got.unique_spans()) == 13)
        got.wait_for(lambda: _metric(bridge, "otel_bridge_spans_rejected_total") == 1)
        assert bridge.client.get(f"{bridge.url}/readyz").status_code == 200
        # ...and export goes on for what comes after.
        later = WorkflowRun("healthy", workflow_id="later").started().step_started("a").after(1)
        assert bridge.post(later.step_completed("a").completed().events).status_code == 200
        trace_id = trace_id_for("durable-effect", "production", "shop", "later").hex()
        got.wait_for(lambda: len(got.trace(trace_id)) == 2)
    finally:
        bridge.close()

    names = {s.name for s in got.unique_spans().values()}
    assert names == {"workflow healthy", "step a"}
    (dead,) = [json.loads(line) for line in (tmp_path / "dead-spans.jsonl").read_text().splitlines()]
    assert dead["event"]["name"] == "workflow poison"
    assert dead["trace_id"] == trace_id_for("durable-effect", "production", "shop", "bad").hex()  # as Jaeger shows it
    assert "refused by policy" in dead["reason"] or "400" in dead["reason"]
    assert dead["service.name"] == "shop"


def test_a_backend_refusing_the_bridges_credential_keeps_every_span_until_it_is_fixed(tmp_path, otlp):
    # A 401 (gRPC UNAUTHENTICATED) refuses the bridge, not its spans: taken for a refusal for good, it
    # set every span aside, one request per span, while the API key was wrong.
    protocol, receiver = otlp
    receiver.credential = "right-key"
    wrong = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20wrong-key"}
    # Stopped while refused, it drains for a second, not the default ten: the spans stay for the next start.
    bridge = BridgeProcess(
        tmp_path, receiver.endpoint, protocol, export_unready_seconds="1", drain_timeout_seconds="1", **wrong
    ).start()
    runs = [WorkflowRun("keyed", workflow_id=f"k-{i}").started().step_started("a") for i in range(4)]
    events = [e for run in runs for e in run.after(2).step_completed("a").completed().events]
    try:
        assert bridge.post(events).status_code == 200
        got = receiver.received
        got.wait_for(lambda: got.refused >= 2)

        def told() -> list[str]:
            return bridge.client.get(f"{bridge.url}/readyz").json()["reasons"]

        got.wait_for(lambda: any("trace export failing" in reason for reason in told()))
        assert _metric(bridge, "otel_bridge_outbox_depth") == 8 and got.unique_spans() == {}
        assert _metric(bridge, "otel_bridge_spans_rejected_total") == 0
        assert "refuses the bridge, not its spans" in bridge.log.read_text()
        assert bridge.stop()
        bridge.env["OTEL_EXPORTER_OTLP_HEADERS"] = "authorization=Bearer%20right-key"  # the operator's fix
        bridge.start()
        got.wait_for(lambda: len(got.unique_spans()) == 8)
    finally:
        bridge.close()
    assert not (tmp_path / "dead-spans.jsonl").exists() or not (tmp_path / "dead-spans.jsonl").read_text()


def test_spans_set_aside_are_sent_again_as_they_were_once_the_backend_takes_them(tmp_path, otlp):
    protocol, receiver = otlp
    receiver.received.poison = "poison"
    bridge = BridgeProcess(tmp_path, receiver.endpoint, protocol).start()
    run = WorkflowRun("poison", workflow_id="bad").started().step_started("a").after(2).step_completed("a")
    try:
        assert bridge.post(run.completed().events).status_code == 200
        got = receiver.received
        got.wait_for(lambda: _metric(bridge, "otel_bridge_spans_rejected_total") == 1)
    finally:
        bridge.close()
    (step,) = got.unique_spans().values()  # the root was refused: the step's parent is missing
    (tmp_path / "dead-spans.jsonl").rename(tmp_path / "refused.jsonl")
    with (tmp_path / "refused.jsonl").open("a") as file:
        file.write('{"receiver": "otlp", "event": {"name": "no resource"}}\n')
    receiver.received.poison = ""  # the backend's policy is fixed

    command = [sys.executable, "-m", "otel_bridge", "resend-spans", str(tmp_path / "refused.jsonl")]
    result = subprocess.run(command, env=bridge.env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1, result.stdout + result.stderr  # one line held no span to send
    assert "queued: 1  exported: 1  refused again: 0  not readable: 1" in result.stdout
    assert "line 2: names no 'service.name'" in result.stdout
    root = next(s for s in got.unique_spans().values() if s.name == "workflow poison")
    assert (root.trace_id, root.span_id) == (step.trace_id, step.parent_span_id)
    assert root.resource["service.name"] == "shop"
    assert not (tmp_path / "dead-spans.jsonl").exists() or not (tmp_path / "dead-spans.jsonl").read_text()


def test_the_span_dead_letter_file_being_written_is_not_resent_into_itself(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)
    (tmp_path / "dead-spans.jsonl").write_text("")
    command = [sys.executable, "-m", "otel_bridge", "resend-spans", str(tmp_path / "dead-spans.jsonl")]
    result = subprocess.run(command, env=bridge.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "it is the span dead-letter file this bridge writes to; move it aside first" in result.stderr


def test_resending_tells_as_left_what_the_outbox_holds_at_its_end_the_runs_its_stop_settled_included(
    tmp_path, otlp_http
):
    otlp_http.up = False  # the backend is away for the whole test
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, settle_seconds="3600").start()
    run = WorkflowRun("waiting").started().step_started("a").after(2).step_completed("a").completed()
    try:
        assert bridge.post(run.events).status_code == 200
    finally:
        bridge.kill()  # the run ended and was stored, but not settled: the resend's stop settles it
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="refused once", start_time_unix_nano=1)
    letter = {"service.name": "shop", "deployment.environment.name": "production", "event": MessageToDict(span)}
    (tmp_path / "refused.jsonl").write_text(json.dumps(letter) + "\n")

    command = [sys.executable, "-m", "otel_bridge", "resend-spans", str(tmp_path / "refused.jsonl")]
    env = {**bridge.env, "OTEL_BRIDGE_DRAIN_TIMEOUT_SECONDS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "queued: 1  exported: 0" in result.stdout
    # The resent span, and the run's root and step its stop settled: all three wait for the next start.
    assert "3 spans are still in the outbox (the backend did not take them in time)" in result.stdout


def test_resending_with_the_state_in_memory_keeps_what_the_backend_did_not_take_in_a_file_and_says_so(
    tmp_path, otlp_http
):
    # `--state :memory:` keeps clear of the running bridge's state; what it could not send went with it.
    otlp_http.up = False
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="refused once", start_time_unix_nano=1)
    letter = {"service.name": "shop", "deployment.environment.name": "production", "event": MessageToDict(span)}
    (tmp_path / "refused.jsonl").write_text(json.dumps(letter) + "\n")
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint)

    command = [sys.executable, "-m", "otel_bridge", "resend-spans", "--state", ":memory:", "refused.jsonl"]
    env = {**bridge.env, "OTEL_BRIDGE_DRAIN_TIMEOUT_SECONDS": "1"}
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "1 spans were not sent in time (the backend did not take them): the state is in memory, so they are " in (
        result.stdout
    )
    (kept,) = [json.loads(line) for line in (tmp_path / "dead-spans.jsonl").read_text().splitlines()]
    assert (kept["trace_id"], kept["span_id"], kept["event"]["name"]) == ("01" * 16, "02" * 8, "refused once")
