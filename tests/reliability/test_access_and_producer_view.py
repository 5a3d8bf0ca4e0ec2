"""Credentials, TLS, and what the producer sees: a bounded answer, never a non-2xx for a stored batch."""

import sqlite3
import ssl
import subprocess
import threading
import time

import httpx
import pytest
from bridge_process import BridgeProcess, free_port, healthcheck_command
from builders import WorkflowRun

SECRET = "k3y-that-must-not-leak"


def test_credentials_are_checked_and_never_logged(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, api_key=SECRET, log_level="DEBUG").start()
    try:
        events = WorkflowRun().started().events
        assert bridge.post(events, headers={"X-API-KEY": SECRET}).status_code == 200
        assert bridge.post(events, headers={"X-API-KEY": SECRET[:-1]}).status_code == 401
        assert bridge.post(events).status_code == 401
    finally:
        bridge.close()
    assert SECRET not in bridge.log.read_text()


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain key", "encrypted key"])
def test_tls_with_the_servers_certificate_options(tmp_path, otlp_http, certificate, encrypted):
    cert, key = certificate
    given = {}
    if encrypted:  # its pass phrase given in the environment
        subprocess.run(["openssl", "pkey", "-in", key, "-aes256", "-passout", "pass:its own", "-out", key + ".enc"],
                       check=True, capture_output=True)  # fmt: skip
        key, given = key + ".enc", {"tls_keyfile_password": "its own"}
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, tls_certfile=cert, tls_keyfile=key, **given)
    bridge.url = bridge.url.replace("http://", "https://")
    bridge.client = httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=10)
    try:
        bridge.start()
        assert bridge.post(WorkflowRun().started().events).status_code == 200
        # A producer whose endpoint says http:// is answered, not cut off in a handshake, and the log says why.
        plain = httpx.post(f"http://127.0.0.1:{bridge.port}/v1/events", json={"events": []}, timeout=5)
        assert plain.status_code == 400
        assert plain.json() == {"error": "plain HTTP to an HTTPS port: this endpoint is https://"}
        # A producer that does not trust the certificate is counted, for BridgeTlsHandshakesFailing.
        refused = 'otel_bridge_tls_handshakes_failed_total{reason="certificate_refused",service_name="otel-bridge"}'
        assert f"{refused} 0.0" in bridge.client.get(f"{bridge.url}/metrics").text
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.post(f"{bridge.url}/v1/events", json={"events": []}, timeout=5)  # the system's CAs
        deadline = time.monotonic() + 10  # the bridge's side of the handshake ends a moment after the client's
        while f"{refused} 1.0" not in (metrics := bridge.client.get(f"{bridge.url}/metrics").text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
        # The container's health check asks over TLS, on the port the bridge was given.
        assert subprocess.run(healthcheck_command(), env=bridge.env, capture_output=True, timeout=10).returncode == 0
    finally:
        bridge.close()
    log = bridge.log.read_text()
    assert "its own" not in log
    assert "refused a request from 127.0.0.1 (400): plain HTTP on this HTTPS port" in log


def test_a_producer_speaking_tls_to_the_plain_port_is_told_and_counted(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    lost = 'otel_bridge_tls_handshakes_failed_total{reason="no_certificate",service_name="otel-bridge"}'
    try:
        assert f"{lost} 0.0" in bridge.client.get(f"{bridge.url}/metrics").text
        with pytest.raises(httpx.ConnectError):
            httpx.post(bridge.url.replace("http://", "https://") + "/v1/events", json={"events": []}, timeout=5)
        assert f"{lost} 1.0" in bridge.client.get(f"{bridge.url}/metrics").text
    finally:
        bridge.close()
    assert "a TLS handshake from 127.0.0.1 on this plain-HTTP port" in bridge.log.read_text()


def test_the_answer_does_not_wait_for_an_unreachable_backend(tmp_path):
    bridge = BridgeProcess(tmp_path, f"http://127.0.0.1:{free_port()}", OTEL_EXPORTER_OTLP_TIMEOUT="30000").start()
    try:
        for i in range(20):
            run = WorkflowRun(workflow_id=f"wait-{i}").started().step_started("a").after(1).step_completed("a")
            # A generous bound, not a speed claim: ingest must not be stuck behind a 30 s export.
            response = bridge.client.post(f"{bridge.url}/v1/events", json={"events": run.events}, timeout=5)
            assert response.status_code == 200
            time.sleep(0.1)
    finally:
        bridge.close()


def test_a_store_locked_by_someone_else_gives_503_then_the_retry_lands(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, store_timeout_seconds="1").start()
    try:
        events = WorkflowRun().started().events
        blocker = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = bridge.client.post(f"{bridge.url}/v1/events", json={"events": events}, timeout=30)
            assert response.status_code == 503
            assert response.headers["retry-after"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert bridge.post(events).json()["accepted"] == 1
    finally:
        bridge.close()


def test_concurrent_producers_all_get_answers(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    answers: list[int] = []
    try:

        def producer(n: int) -> None:
            with httpx.Client(timeout=10) as client:
                for i in range(20):
                    run = WorkflowRun(workflow_id=f"p{n}-{i}").started().step_started("a")
                    answers.append(client.post(f"{bridge.url}/v1/events", json={"events": run.events}).status_code)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        bridge.close()
    assert answers == [200] * 120
