"""The HTTPS port looks at how each connection begins: TLS goes on to the handshake, plain HTTP is answered and
told, a failed handshake is told with what it means — on the event loop `serve` runs (uvloop), real sockets."""

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from pki import make_pki

from otel_bridge.receivers import https_port
from otel_bridge.receivers.https_port import HttpsPort, handshake_failure

POST = b'POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{"events": []}'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Answering(asyncio.Protocol):
    """The app's protocol as uvicorn's stands in it: what it was given, over which transport; answers 200."""

    served: list[tuple[bool, bytes]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        Answering.served.append((self.transport.get_extra_info("sslcontext") is not None, data))
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        self.transport.close()


class Port:
    """An `HttpsPort` on 127.0.0.1 serving `Answering` with the test CA's server certificate, on uvloop."""

    def __init__(self, pki: dict[str, str], timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(pki["backend.pem"], pki["backend.key"])
        self.answered: list[tuple[Any, float]] = []
        self.failed: list[str] = []
        self.port = HttpsPort(
            [self.listener],
            tls,
            Answering,
            lambda a, s: self.answered.append((a, s)),
            self.failed.append,
            timeout=timeout,
            backlog=16,
        )


def _serving(pki: dict[str, str], client: Callable[[Port], Any], timeout: float = 5.0, loop: Any = None) -> Any:
    """What `client(port)` returned, run in a thread while the port serves in a loop (uvloop's by default)."""
    Answering.served = []

    async def main() -> Any:
        port = Port(pki, timeout)
        port.port.start()
        try:
            return await asyncio.to_thread(client, port)
        finally:
            port.port.close()
            port.listener.close()

    with asyncio.Runner(loop_factory=loop or uvloop.new_event_loop) as runner:
        return runner.run(main())


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _plain(port: Port, request: bytes = POST) -> bytes:
    with socket.create_connection(port.address, timeout=5) as sock:
        sock.sendall(request)
        return _read_all(sock)


def _over_tls(port: Port, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(port.address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(POST)
        return _read_all(sock)


def _trusting(pki: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki["ca.pem"])


def _told(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == https_port.log.name]


def test_a_connection_that_begins_with_a_tls_record_is_handed_to_the_protocol_over_tls(pki):
    answers = _serving(pki, lambda port: [_over_tls(port, _trusting(pki)) for _ in range(3)])
    assert all(a.startswith(b"HTTP/1.1 200 OK") and a.endswith(b"ok") for a in answers)
    assert Answering.served == [(True, POST)] * 3


def test_plain_http_to_the_https_port_is_answered_400_counted_as_a_request_and_told_once_a_minute(pki, caplog):
    port_answered: list[Any] = []

    def client(port: Port) -> list[bytes]:
        answers = [_plain(port) for _ in range(3)]
        port_answered.extend(port.answered)
        return answers

    caplog.set_level(logging.INFO)
    answers = _serving(pki, client)
    assert answers == [https_port.PLAIN_HTTP_ANSWER] * 3
    assert answers[0].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answers[0].endswith(b'{"error":"plain HTTP to an HTTPS port: this endpoint is https://"}')
    assert Answering.served == []  # nothing of it reached the app
    # As the request metric has every request: a POST refused whole, for `BridgeBatchesRejected`.
    assert [dict(attributes) for attributes, _seconds in port_answered] == [
        {"http.request.method": "POST", "url.scheme": "http", "http.response.status_code": "400"}
    ] * 3
    told = _told(caplog)
    assert len(told) == 1
    assert told[0].startswith(
        "refused a request from 127.0.0.1 (400): plain HTTP on this HTTPS port (it began b'POST /v1/events HTTP/1.1"
    )
    assert (
        "its endpoint says http://, and the bridge serves HTTPS (tls_certfile): every batch it sends is lost" in told[0]
    )


def test_bytes_that_are_neither_tls_nor_http_are_answered_400_and_told_apart_from_a_producers_plain_http(pki, caplog):
    caplog.set_level(logging.INFO)
    answers = _serving(pki, lambda port: [_plain(port, b"\x05\x01\x00garbage"), _plain(port)])
    assert answers == [https_port.PLAIN_HTTP_ANSWER] * 2
    told = _told(caplog)
    assert (
        told[0] == "refused a request from 127.0.0.1 (400): neither TLS nor HTTP (it began b'\\x05\\x01\\x00garbage')"
    )
    assert told[1].startswith("refused a request from 127.0.0.1 (400): plain HTTP on this HTTPS port")  # not held back


def test_a_client_that_refuses_the_bridges_certificate_is_told_as_a_producer_losing_every_batch(pki, caplog):
    def client(port: Port) -> tuple[list[str], list[str]]:
        refused = []
        for _ in range(2):
            with pytest.raises(ssl.SSLCertVerificationError) as raised:
                _over_tls(port, ssl.create_default_context())  # the system's CAs: not the test's
            refused.append(raised.value.reason)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), port.loop).result()  # the port's side of the second
        return refused, list(port.failed)

    refused, counted = _serving(pki, client)
    assert refused == ["CERTIFICATE_VERIFY_FAILED"] * 2
    assert counted == ["certificate_refused"] * 2  # each counted, for the alert; told once
    assert Answering.served == []
    told = _told(caplog)
    assert len(told) == 1
    assert told[0].startswith("a TLS handshake from 127.0.0.1 failed (TLSV1_ALERT_UNKNOWN_CA): the client refused")


@pytest.mark.parametrize(
    ("reason", "kind", "said"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "certificate_refused", "refused the bridge's certificate"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "certificate_refused", "refused the bridge's certificate"),
        ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate_refused", "refused the bridge's certificate"),
        ("UNSUPPORTED_PROTOCOL", "version_or_cipher", "no TLS version or cipher the bridge takes"),
        ("NO_SHARED_CIPHER", "version_or_cipher", "no TLS version or cipher the bridge takes"),
        ("UNEXPECTED_EOF_WHILE_READING", "other", "no batch of it reaches the bridge"),
        ("WRONG_VERSION_NUMBER", "other", "no batch of it reaches the bridge"),  # a record that is no TLS's
    ],
)
def test_a_failed_handshake_is_counted_and_said_as_what_it_means_for_the_producer(reason, kind, said):
    counted, told = handshake_failure(reason)
    assert counted == kind and said in told


def test_a_connection_closed_or_silent_before_its_first_byte_is_closed_untold(pki, caplog):
    def client(port: Port) -> bytes:
        socket.create_connection(port.address, timeout=5).close()  # a balancer's probe of the port
        with socket.create_connection(port.address, timeout=5) as silent:
            return _read_all(silent)  # closed by the port after `timeout`

    assert _serving(pki, client, timeout=0.3) == b""
    assert _told(caplog) == [] and Answering.served == []


def test_plain_and_tls_connections_one_after_another_are_each_taken_as_they_begin(pki):
    # Each connection's descriptor is looked at and handed on, then reused by the next: none is taken for another.
    def client(port: Port) -> list[bytes]:
        return [_plain(port) if i % 2 else _over_tls(port, _trusting(pki)) for i in range(20)]

    answers = _serving(pki, client)
    assert answers[1::2] == [https_port.PLAIN_HTTP_ANSWER] * 10
    assert all(a.endswith(b"ok") for a in answers[::2]) and len(Answering.served) == 10


def test_a_connection_it_could_not_accept_is_told_and_accepted_once_it_can(pki, caplog, monkeypatch):
    monkeypatch.setattr(https_port, "_ACCEPT_AGAIN_SECONDS", 0.05)
    failures = [OSError(errno.EMFILE, "Too many open files")] * 3

    def loop() -> asyncio.AbstractEventLoop:
        made = asyncio.new_event_loop()
        accept = made.sock_accept

        async def out_of_descriptors(listener: socket.socket) -> Any:
            if failures:
                await asyncio.sleep(0.01)
                raise failures.pop()
            return await accept(listener)

        made.sock_accept = out_of_descriptors  # type: ignore[method-assign]
        return made

    answer = _serving(pki, lambda port: _over_tls(port, _trusting(pki)), loop=loop)
    assert answer.endswith(b"ok")
    told = _told(caplog)
    assert told == ["cannot accept a connection on the HTTPS port: Too many open files"]


def test_closed_it_accepts_no_more_and_lets_go_of_a_connection_it_had_not_handed_on(pki):
    def client(port: Port) -> bytes:
        with socket.create_connection(port.address, timeout=5) as waiting:  # no first byte yet
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), port.loop).result()  # accepted meanwhile
            port.loop.call_soon_threadsafe(port.port.close)
            assert _read_all(waiting) == b""  # closed, not left to the collector
        with socket.create_connection(port.address, timeout=0.5) as sock:  # in the listen backlog, never taken
            sock.sendall(POST)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        return b"untaken"

    assert _serving(pki, client) == b"untaken"
