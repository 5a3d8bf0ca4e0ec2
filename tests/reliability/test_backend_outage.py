"""The OTLP backend refuses or vanishes: ingest goes on into the outbox, everything arrives when it is back."""

import re
import socket
import subprocess
import threading
import time

import httpx
import pytest
from bridge_process import BridgeProcess, healthcheck_command, held_port
from builders import JobRun, WorkflowRun
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, Received

OUTAGE_SECONDS = 12
LONG_OUTAGE_SECONDS = 120


def _runs(n: int, prefix: str) -> list[WorkflowRun]:
    runs = []
    for i in range(n):
        run = WorkflowRun("outage", workflow_id=f"{prefix}-{i}").started().step_started("a").after(5)
        runs.append(run.step_completed("a").completed())
    return runs


def _metric(bridge: BridgeProcess, name: str) -> float:
    text = httpx.get(f"{bridge.url}/metrics").text
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def test_a_refusing_backend_keeps_spans_in_the_outbox_until_it_accepts(tmp_path):
    receiver = OtlpHttpReceiver()
    receiver.up = False  # answers 503
    bridge = BridgeProcess(tmp_path, receiver.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1000").start()
    try:
        runs = _runs(20, "refused")
        started = time.monotonic()
        while time.monotonic() - started < OUTAGE_SECONDS:
            # Ingest keeps accepting all through the outage.
            assert bridge.post(runs.pop().events if runs else JobRun().executed(1).events).status_code == 200
            time.sleep(0.3)
        assert not runs
        assert _metric(bridge, "otel_bridge_outbox_depth") == 40
        assert _metric(bridge, "otel_bridge_export_failures_total") >= 2
        assert receiver.received.refused >= 2 and receiver.received.spans == []

        receiver.up = True
        receiver.received.wait_for(lambda: len(receiver.received.unique_spans()) == 40, timeout=60)
        receiver.received.wait_for(lambda: _metric(bridge, "otel_bridge_outbox_depth") == 0, timeout=10)
    finally:
        bridge.close()
        receiver.close()


@pytest.mark.timeout(LONG_OUTAGE_SECONDS + 180)
def test_an_unreachable_grpc_backend_for_two_minutes_gets_everything_once_it_starts(tmp_path):
    held = held_port()
    port = held.getsockname()[1]
    bridge = BridgeProcess(tmp_path, f"http://127.0.0.1:{port}", "grpc", OTEL_EXPORTER_OTLP_TIMEOUT="1000").start()
    receiver = None
    try:
        runs = _runs(60, "unreachable")
        for run in runs:  # one run every 2 s through a 2-minute outage
            assert bridge.post(run.events).status_code == 200
            time.sleep(LONG_OUTAGE_SECONDS / len(runs))
        assert _metric(bridge, "otel_bridge_export_failures_total") >= 3
        assert _metric(bridge, "otel_bridge_outbox_depth") == 120
        held.close()
        receiver = OtlpGrpcReceiver(port=port)
        receiver.received.wait_for(lambda: len(receiver.received.unique_spans()) == 120, timeout=90)
    finally:
        bridge.close()
        if receiver:
            receiver.close()


def test_a_full_outbox_answers_503_with_retry_after_and_recovers(tmp_path):
    received = Received()
    receiver = OtlpHttpReceiver(received=received)
    receiver.up = False
    bridge = BridgeProcess(
        tmp_path,
        receiver.endpoint,
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        max_outbox_spans="10",
        export_unready_seconds="1",
    ).start()
    try:
        refused = None
        for run in _runs(30, "full"):
            response = bridge.post(run.events)
            if response.status_code == 503:
                refused = (response, run)
                break
            assert response.status_code == 200
            time.sleep(0.3)  # let the settle window move spans into the outbox
        assert refused is not None, "the outbox bound never pushed back"
        response, run = refused
        assert response.headers["retry-after"] == "5"
        assert "backlog full" in response.json()["error"]
        # Counted for an alert: the refused batch's events, and why; not as received.
        refused_events = (
            'otel_bridge_events_refused_total{reason="outbox_full",receiver="http",service_name="otel-bridge"}'
        )
        assert _metric(bridge, re.escape(refused_events)) == len(run.events)
        # Readiness tells the load balancer the same, with the reasons.
        ready = bridge.client.get(f"{bridge.url}/readyz")
        assert ready.status_code == 503
        assert "export backlog full" in ready.json()["error"]

        def export_failing_said() -> bool:
            reasons = bridge.client.get(f"{bridge.url}/readyz").json()["reasons"]
            return any("trace export failing" in r for r in reasons)

        received.wait_for(export_failing_said, timeout=20)
        # Not ready, yet alive: the container's health check passes, so no supervisor restarts the
        # bridge for a backend away (which a restart would not bring back, and producers would lose).
        assert bridge.client.get(f"{bridge.url}/healthz").json() == {"status": "ok"}
        assert subprocess.run(healthcheck_command(), env=bridge.env, capture_output=True, timeout=10).returncode == 0

        receiver.up = True
        received.wait_for(lambda: _metric(bridge, "otel_bridge_outbox_depth") == 0, timeout=60)
        assert bridge.post(run.events).status_code == 200  # the producer's retry now lands
        received.wait_for(lambda: bridge.client.get(f"{bridge.url}/readyz").status_code == 200, timeout=10)
    finally:
        bridge.close()
        receiver.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_stopped_while_the_backend_is_down_the_bridge_exits_within_its_drain_timeout_and_keeps_the_spans(
    tmp_path, protocol
):
    # The exporters retry within one export for up to OTEL_EXPORTER_OTLP_TIMEOUT (10 s by default):
    # the export at exit waited that out twice (spans, then metrics) past the drain timeout.
    held = held_port()
    bridge, runs = _runs_posted(tmp_path, f"http://127.0.0.1:{held.getsockname()[1]}", protocol, "at-exit")
    assert bridge.stop(timeout=8)  # 1 s of drain, and no 20 s of retries after it
    _sent_at_the_next_start(bridge, protocol, 2 * len(runs), held)


def _runs_posted(tmp_path, endpoint: str, protocol: str, name: str) -> tuple[BridgeProcess, list]:
    """A bridge with a 1 s drain timeout, three runs posted to it, each answered 200."""
    bridge = BridgeProcess(tmp_path, endpoint, protocol, drain_timeout_seconds="1").start()
    runs = _runs(3, name)
    for run in runs:
        assert bridge.post(run.events).status_code == 200
    return bridge, runs


def _sent_at_the_next_start(
    bridge: BridgeProcess, protocol: str, spans: int, held: socket.socket | None = None
) -> None:
    """The bridge started again, a backend up (on the port `held`, or any): every span kept arrives."""
    port = held.getsockname()[1] if held else 0
    if held:
        held.close()
    received = Received()
    receiver = (OtlpHttpReceiver if protocol == "http/protobuf" else OtlpGrpcReceiver)(port, received)
    bridge.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    bridge.start()
    try:
        received.wait_for(lambda: len(received.unique_spans()) == spans)
    finally:
        bridge.close()
        receiver.close()


class _Unanswering:
    """A backend that takes connections and reads requests but never answers (hung, or behind a dead proxy)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.requests = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._held.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        try:
            if connection.recv(65536):
                self.requests.set()
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_stopped_while_an_export_waits_on_a_backend_that_never_answers_the_bridge_exits_within_its_drain_timeout(
    tmp_path, protocol
):
    # Each request waited its whole OTEL_EXPORTER_OTLP_TIMEOUT (10 s): the one in flight, the drain's,
    # then the metrics' — 27 s past SIGTERM, where an orchestrator's grace is 30.
    backend = _Unanswering()
    try:
        bridge, runs = _runs_posted(tmp_path, f"http://127.0.0.1:{backend.port}", protocol, "hung")
        assert backend.requests.wait(20), "no export reached the backend"
        assert bridge.stop(timeout=6)  # 1 s of drain, not three request timeouts
    finally:
        backend.close()
    _sent_at_the_next_start(bridge, protocol, 2 * len(runs))  # the backend replaced


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_export_timeout_counts_milliseconds_as_the_specification_says(tmp_path, protocol):
    # 1500 is a second and a half in the specification, the Collector and the other languages' SDKs;
    # read as the Python SDK reads it (seconds), each request to a backend that takes the connection
    # and never answers waited 25 minutes before the export was told failing.
    backend = _Unanswering()
    endpoint = f"http://127.0.0.1:{backend.port}"
    bridge = BridgeProcess(tmp_path, endpoint, protocol, OTEL_EXPORTER_OTLP_TIMEOUT="1500").start()
    try:
        assert bridge.post(_runs(1, "timed")[0].events).status_code == 200
        assert backend.requests.wait(20), "no export reached the backend"
        deadline = time.monotonic() + 60
        while "trace export to" not in bridge.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        told = [line for line in bridge.log.read_text().splitlines() if "trace export to" in line]
        assert told and "is failing" in told[0], told
    finally:
        bridge.close()
        backend.close()
