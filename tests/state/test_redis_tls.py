"""Redis over TLS (`rediss://`), as managed Redis with encryption in transit runs: the state and the
engine's stream on a real redis-server answering over TLS only, the CA (and for mutual TLS, the bridge's
certificate) given in the URL as redis-py reads them, and a clear word when they are missing."""

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from bridge_process import free_port
from pki import make_pki
from pydantic import ValidationError
from redis_server import TlsRedisServer

from otel_bridge.config import Settings
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.store import StoreOpenError


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(pki)
    yield server
    server.close()


def test_the_state_is_kept_on_a_redis_over_tls_with_its_ca_given_in_the_url(tls_redis):
    store = RedisStore(tls_redis.url, seen_ttl_seconds=60, prefix="tls-test:")
    try:
        store.run(lambda tx: (tx.save("run1", b"{}", due=5.0), tx.outbox_add([("svc\x1fenv", b"span")])))
        assert store.run(lambda tx: tx.load("run1")) == (b"{}", 5.0)
        assert [row.payload for row in store.outbox_peek(10)] == [b"span"]
    finally:
        store.close()


def test_without_the_ca_the_state_is_refused_naming_the_url_parameter_to_give(tls_redis):
    without_ca = tls_redis.url.partition("?")[0]
    with pytest.raises(StoreOpenError, match=r"certificate verify failed.*rediss://…\?ssl_ca_certs=/path/ca.pem"):
        RedisStore(without_ca, seen_ttl_seconds=60)


def test_mutual_tls_takes_the_bridges_certificate_from_the_url(pki):
    server = TlsRedisServer(pki, clients_need_certificates=True)
    try:
        with pytest.raises(StoreOpenError, match=r"ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem"):
            RedisStore(server.url, seen_ttl_seconds=60)
        url = f"{server.url}&ssl_certfile={pki['bridge.pem']}&ssl_keyfile={pki['bridge.key']}"
        store = RedisStore(url, seen_ttl_seconds=60, prefix="mtls-test:")
        assert store.outbox_depth() == 0
        store.close()
        # Its key encrypted: the pass phrase in the URL too. Without it OpenSSL asked on the terminal (a
        # service started from one waited there); now the settings refuse it in one line.
        encrypted = f"{pki['bridge.key']}.enc"
        subprocess.run(
            ["openssl", "pkey", "-in", pki["bridge.key"], "-aes256", "-passout", "pass:its own", "-out", encrypted],
            check=True, capture_output=True,
        )  # fmt: skip
        url = f"{server.url}&ssl_certfile={pki['bridge.pem']}&ssl_keyfile={encrypted}"
        with pytest.raises(ValidationError, match=r"state\n.*its key .*\.enc is encrypted: give its pass phrase"):
            Settings(state=url)
        store = RedisStore(Settings(state=f"{url}&ssl_password=its own").state, seen_ttl_seconds=60, prefix="m:")
        assert store.outbox_depth() == 0
        store.close()
    finally:
        server.close()


def test_check_says_what_a_stream_on_a_redis_asking_for_the_bridges_certificate_needs(tmp_path, pki):
    server = TlsRedisServer(pki, clients_need_certificates=True)
    try:
        check = subprocess.run(
            [sys.executable, "-m", "otel_bridge", "check", "--state", ":memory:", "--stream-url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
        )
    finally:
        server.close()
    (stream,) = [line for line in check.stdout.splitlines() if line.split()[1:2] == ["stream"]]
    # Whether Redis's refusal comes as an alert or (TLS 1.3, one run in a few) as a reset: the same answer.
    assert stream.startswith("FAIL") and "ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem" in stream, stream
    assert check.returncode == 1


def test_check_reaches_the_state_and_the_stream_over_tls(tmp_path, tls_redis):
    check = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "check", "--state", tls_redis.url, "--stream-url", tls_redis.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
    )
    lines = {line.split()[1]: line for line in check.stdout.splitlines() if len(line.split()) > 1}
    assert lines["state"].startswith("ok") and lines["stream"].startswith("ok"), check.stdout


def test_the_tests_tls_redis_moves_to_another_port_when_another_server_took_the_one_it_found_free(pki, monkeypatch):
    # The fixture's own behaviour: a port found free, taken by another test's server before redis-server
    # bound it, failed the test that asked for a TLS Redis (the suite runs two test files at once).
    import redis_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(redis_server, "free_port", lambda: next(ports, None) or free_port())
        server = TlsRedisServer(pki)
        try:
            assert server.port != taken.getsockname()[1] and server.client().ping()
        finally:
            server.close()
