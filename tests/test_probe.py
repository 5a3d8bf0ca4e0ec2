"""`otel-bridge probe`: what a producer's first batch meets, told step by step, against real bridges (one
serving HTTPS with a certificate of the test's own CA and a key, one serving plain HTTP)."""

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from bridge_process import BridgeProcess, free_port
from pki import ISSUERS_URL, PublicCa, make_pki

from otel_bridge.cli import main

KEY = "producer-key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_bridge(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str]) -> Iterator[BridgeProcess]:
    served = {"tls_certfile": pki["backend.pem"], "tls_keyfile": pki["backend.key"], "api_key": KEY}
    bridge = BridgeProcess(tmp_path_factory.mktemp("https"), f"http://127.0.0.1:{free_port()}", **served)
    bridge.url = bridge.url.replace("http://", "https://")
    bridge.client = httpx.Client(verify=ssl.create_default_context(cafile=pki["ca.pem"]), timeout=10)
    bridge.start()
    yield bridge
    bridge.close()


@pytest.fixture(scope="module")
def plain_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    bridge = BridgeProcess(tmp_path_factory.mktemp("plain"), f"http://127.0.0.1:{free_port()}").start()
    yield bridge
    bridge.close()


def _probed(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(["probe", *args])
    return status, capsys.readouterr().out.splitlines()


def test_a_producer_that_trusts_the_ca_and_sends_the_key_is_taken(https_bridge, pki, capsys):
    status, told = _probed(capsys, https_bridge.url, "--header", f"X-API-KEY={KEY}", "--cafile", pki["ca.pem"])
    assert status == 0
    assert told[0] == f"ok    address  https://127.0.0.1, port {https_bridge.port}"
    assert told[1].startswith("ok    tls      a certificate of test CA the producer trusts, for 127.0.0.1, ending in")
    assert told[2].startswith("ok    answer   takes batches (200 in ")


def test_a_certificate_of_a_ca_the_producer_does_not_trust_is_said_before_any_batch_is_sent(https_bridge, capsys):
    status, told = _probed(capsys, https_bridge.url, "--header", f"X-API-KEY={KEY}")  # the public CAs alone
    assert status == 1 and len(told) == 2
    assert told[1].startswith(
        "FAIL  tls      unable to get local issuer certificate: the certificate is of a CA the producer was not given"
    )
    assert "NODE_EXTRA_CA_CERTS" in told[1]


def test_a_public_cas_certificate_served_without_its_intermediate_is_said_as_that(tmp_path, capsys):
    ca = PublicCa(tmp_path)  # a root the producer trusts, as the public ones; R11 issued the leaf
    served = {"tls_certfile": str(ca.file("cert.pem", ca.leaf)), "tls_keyfile": str(tmp_path / "leaf.key")}
    bridge = BridgeProcess(tmp_path, f"http://127.0.0.1:{free_port()}", **served)
    bridge.url = bridge.url.replace("http://", "https://")
    bridge.client = httpx.Client(verify=False, timeout=10)
    try:
        bridge.start()
        status, told = _probed(capsys, bridge.url, "--cafile", str(tmp_path / "root.pem"))
    finally:
        bridge.close()
    assert status == 1
    assert told[1] == (
        f"FAIL  tls      unable to get local issuer certificate: the bridge sends its certificate without the "
        f"certificate of its issuer, CN=R11 ({ISSUERS_URL}), which only browsers fetch: give its tls_certfile the "
        "certificate then its intermediates (certbot's fullchain.pem, not cert.pem)"
    )


@pytest.mark.parametrize(
    ("path", "key", "said"),
    [
        ("/v1/events", "not-the-key", "401 in"),
        ("/events", KEY, "no endpoint /events: batches are posted to /v1/events"),
    ],
    ids=["a wrong key", "a wrong path"],
)
def test_what_the_bridge_answers_a_batch_it_refuses_is_said(https_bridge, pki, capsys, path, key, said):
    url = https_bridge.url + path
    status, told = _probed(capsys, url, "--header", f"X-API-KEY={key}", "--cafile", pki["ca.pem"])
    assert status == 1 and told[2].startswith("FAIL  answer   ") and said in told[2]
    if key != KEY:
        assert "the credential sent (X-API-KEY) is not one the bridge takes" in told[2]
        assert key not in told[2]


def test_http_to_a_bridge_serving_https_and_https_to_one_serving_http_are_each_said(https_bridge, plain_bridge, capsys):
    status, told = _probed(capsys, https_bridge.url.replace("https://", "http://"), "--header", f"X-API-KEY={KEY}")
    assert status == 1
    assert told[-1].startswith("FAIL  answer   400 in ") and "plain HTTP to an HTTPS port" in told[-1]
    status, told = _probed(capsys, plain_bridge.url.replace("http://", "https://"))
    assert status == 1
    assert told[-1].startswith("FAIL  tls      ") and "the server there speaks plain HTTP" in told[-1]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("otel-bridge.example.com/v1/events", "is not an http:// or https:// URL"),
        ("https://otel-bridge.example.com:99999/v1/events", "names no host to post to: "),
        ("http://[::1/v1/events", "names no host to post to: "),
    ],
)
def test_a_url_that_names_no_endpoint_fails_its_address_without_a_traceback(capsys, url, said):
    status, told = _probed(capsys, url)
    assert status == 1 and len(told) == 1
    assert told[0].startswith("FAIL  address  ") and said in told[0]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("https://203.0.113.7/v1/events", "reaches hosts by name, never by address"),
        ("https://otel-bridge.example.com:4380/v1/events", "ignores a port in the URL and sends to 443"),
    ],
)
def test_an_address_a_deployed_worker_cannot_reach_fails_before_anything_is_sent(capsys, url, said):
    status, told = _probed(capsys, url, "--worker")
    assert status == 1 and len(told) == 1
    assert told[0].startswith("FAIL  address  ") and said in told[0]


def _probed_at(capsys: pytest.CaptureFixture[str], handler: type[BaseHTTPRequestHandler]) -> tuple[int, list[str]]:
    """What the probe tells of a server of another kind than the bridge, answering as `handler` does."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return _probed(capsys, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


class _NotABridge(BaseHTTPRequestHandler):
    """Another server at the address (a proxy's default page, a server of another team's): HTML, not JSON."""

    def do_POST(self) -> None:
        body = b"<html><body><h1>404 Not Found</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Redirecting(BaseHTTPRequestHandler):
    """A proxy in front that sends http:// on to https:// (an Ingress's ssl-redirect), as a 308 or a 301."""

    status = 308

    def do_POST(self) -> None:
        self.send_response(self.status)
        self.send_header("Location", "https://otel-bridge.example.com/v1/events")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "mark", "said"), [(308, "-    ", "the batch with it"), (301, "FAIL ", "as a GET")])
def test_a_redirect_is_said_with_where_it_sends_and_whether_the_batch_goes_with_it(capsys, status, mark, said):
    code, told = _probed_at(capsys, type("Redirecting", (_Redirecting,), {"status": status}))
    assert told[-1].startswith(f"{mark} answer   {status} in ")
    assert "sent on to https://otel-bridge.example.com/v1/events" in told[-1] and said in told[-1]
    assert code == (0 if status == 308 else 1)


def test_something_else_answering_at_the_address_or_nothing_is_said(capsys):
    status, told = _probed_at(capsys, _NotABridge)
    assert status == 1
    assert told[-1].startswith("FAIL  answer   404 in ") and "by something that is not otel-bridge" in told[-1]
    status, told = _probed(capsys, f"http://127.0.0.1:{free_port()}")
    assert status == 1 and told[-1].startswith("FAIL  answer   no answer: ")
