"""A backend behind TLS, and behind mutual TLS (a Collector that asks for the bridge's certificate): the
standard `OTEL_EXPORTER_OTLP_*` certificate variables, over both protocols, through `otel-bridge serve`."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from cryptography import x509
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from pki import make_pki

from otel_bridge import trace_id_for
from otel_bridge.state.sqlite_store import SqliteStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["http/protobuf", "grpc"])
def mutual_tls_backend(request, pki) -> Iterator[tuple[str, OtlpHttpReceiver | OtlpGrpcReceiver]]:
    tls = (pki["backend.pem"], pki["backend.key"], pki["ca.pem"])
    receiver = OtlpHttpReceiver(tls=tls) if request.param == "http/protobuf" else OtlpGrpcReceiver(tls=tls)
    yield request.param, receiver
    receiver.close()


def _run_sent(
    tmp_path, protocol: str, receiver, environ: dict[str, str] | None = None, **env: str
) -> tuple[BridgeProcess, bool]:
    """A run posted to a bridge exporting to `receiver` with `env` (and other variables, `environ`);
    whether its two spans arrived."""
    process = BridgeProcess(tmp_path, receiver.endpoint, protocol, **env)
    process.env.update(environ or {})
    process.start()
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()

    def arrived() -> bool:
        return len(receiver.received.trace(trace_id)) == 2

    def refused() -> bool:  # the bridge tells a failing export at its first failure: no need to wait longer
        told = process.log.read_text()
        return "trace export to" in told and "is failing" in told

    try:
        assert process.post(run.events).status_code == 200
        try:
            receiver.received.wait_for(lambda: arrived() or refused(), timeout=8)
        except AssertionError:
            return process, False
        return process, arrived()
    finally:
        process.close()


def test_a_backend_behind_mutual_tls_gets_the_spans_with_the_bridges_client_certificate(
    tmp_path, pki, mutual_tls_backend
):
    protocol, receiver = mutual_tls_backend
    _process, arrived = _run_sent(
        tmp_path,
        protocol,
        receiver,
        OTEL_EXPORTER_OTLP_CERTIFICATE=pki["ca.pem"],
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki["bridge.pem"],
        OTEL_EXPORTER_OTLP_CLIENT_KEY=pki["bridge.key"],
        # Set where a corporate CA bundle is (this machine's image sets it): requests let it take over from
        # the certificate the bridge was given, and no export got through.
        environ={"REQUESTS_CA_BUNDLE": certifi.where()},
    )
    assert arrived


def test_without_its_client_certificate_nothing_is_lost_the_spans_wait_and_check_says_why(
    tmp_path, pki, mutual_tls_backend
):
    protocol, receiver = mutual_tls_backend
    # An export given up on after a second, not the default ten: its failure is told, and waited for, sooner.
    process, arrived = _run_sent(
        tmp_path, protocol, receiver, OTEL_EXPORTER_OTLP_CERTIFICATE=pki["ca.pem"], OTEL_EXPORTER_OTLP_TIMEOUT="1000"
    )
    assert not arrived
    store = SqliteStore(tmp_path / "state.db")  # the bridge stopped: its spans wait for the backend
    assert store.outbox_depth() == 2
    store.close()
    check = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "check"],
        env=process.env,
        cwd=process.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (traces,) = [line for line in check.stdout.splitlines() if line.split()[1:2] == ["traces"]]
    assert traces.startswith("FAIL") and "give OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and" in traces, traces


def test_a_backend_whose_ca_is_not_given_is_named_untrusted_by_check(tmp_path, pki):
    # Over HTTP on a machine whose requests bundle is set (REQUESTS_CA_BUNDLE): the system's CAs only.
    receiver = OtlpHttpReceiver(tls=(pki["backend.pem"], pki["backend.key"], None))
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        env.pop("OTEL_EXPORTER_OTLP_CERTIFICATE", None)
        traces = _checked_traces(env, tmp_path / "s.db")
    finally:
        receiver.close()
    assert traces.startswith("FAIL") and "give its CA in OTEL_EXPORTER_OTLP_CERTIFICATE" in traces, traces


def test_a_client_certificate_renewed_on_disk_is_presented_at_the_next_connection(tmp_path, pki, mutual_tls_backend):
    # cert-manager renews the bridge's client certificate in place: read once, the old one was presented
    # at every reconnection after it ended (gRPC's credentials were built at start), and nothing got through
    # until a restart.
    protocol, receiver = mutual_tls_backend
    (tmp_path / "other-ca").mkdir()
    other = make_pki(tmp_path / "other-ca")  # a certificate the backend's CA never signed: refused
    certificate, key = tmp_path / "client.pem", tmp_path / "client.key"
    certificate.write_bytes(Path(other["bridge.pem"]).read_bytes())
    key.write_bytes(Path(other["bridge.key"]).read_bytes())
    process = BridgeProcess(
        tmp_path,
        receiver.endpoint,
        protocol,
        OTEL_EXPORTER_OTLP_CERTIFICATE=pki["ca.pem"],
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(certificate),
        OTEL_EXPORTER_OTLP_CLIENT_KEY=str(key),
    )
    process.env["REQUESTS_CA_BUNDLE"] = certifi.where()
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    try:
        process.start()
        assert process.post(run.events).status_code == 200
        with pytest.raises(AssertionError):  # refused: the spans wait in the outbox
            receiver.received.wait_for(lambda: receiver.received.trace(trace_id), timeout=3)
        key.write_bytes(Path(pki["bridge.key"]).read_bytes())  # renewed, by the CA the backend trusts
        certificate.write_bytes(Path(pki["bridge.pem"]).read_bytes())
        receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 2, timeout=60)
        # When it ends, read as renewed: the alert before a renewal that did not come stops the export.
        metrics = process.client.get(f"{process.url}/metrics").text
        series = (
            r"^otel_bridge_tls_certificate_expiration_timestamp_seconds"
            r'{[^}]*certificate="OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"[^}]*} (\S+)$'
        )
        (ends,) = re.findall(series, metrics, re.M)
        renewed = x509.load_pem_x509_certificate(Path(pki["bridge.pem"]).read_bytes())
        assert float(ends) == renewed.not_valid_after_utc.timestamp()
    finally:
        process.close()
    if protocol == "grpc":  # over HTTP each new connection reads the files (requests' own way)
        assert "the OTLP/gRPC traces export's TLS files changed" in process.log.read_text()


def test_check_says_when_the_client_certificate_a_backend_took_ends(tmp_path, pki, mutual_tls_backend):
    protocol, receiver = mutual_tls_backend
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": pki["ca.pem"],
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": pki["bridge.pem"],
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": pki["bridge.key"],
        "REQUESTS_CA_BUNDLE": certifi.where(),
    }
    traces = _checked_traces(env, tmp_path / "s.db")
    assert traces.startswith("ok") and f"its client certificate ({pki['bridge.pem']}) ends " in traces, traces
    assert traces.endswith("in 1.0 days"), traces


def _checked_traces(env: dict[str, str], state: Path) -> str:
    """What `otel-bridge check` with `env` says of the traces' export: its line."""
    check = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "check", "--state", str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (traces,) = [line for line in check.stdout.splitlines() if line.split()[1:2] == ["traces"]]
    return traces
