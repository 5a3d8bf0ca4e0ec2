"""The tracker endpoint's answers (DESIGN.md section 6), against the real server process."""

import gzip
import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from otlp_receiver import OtlpHttpReceiver

LIMIT = 64 * 1024
KEY = "s3cret-key"
TOKEN = "bearer-token-1"
KEEP_ALIVE = 6.0  # above uvicorn's 5 s, as behind a load balancer that keeps its connections a minute


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> Iterator[BridgeProcess]:
    receiver = OtlpHttpReceiver()
    process = BridgeProcess(
        tmp_path_factory.mktemp("http"),
        receiver.endpoint,
        api_key=KEY,
        bearer_token=TOKEN,
        max_body_bytes=str(LIMIT),
        keep_alive_seconds=str(KEEP_ALIVE),
    ).start()
    yield process
    process.close()
    receiver.close()


def _post(bridge: BridgeProcess, content: bytes, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", "x-api-key": KEY} | headers
    return httpx.post(f"{bridge.url}/v1/events", content=content, headers=headers, timeout=10)


def _batch(n: int = 2) -> bytes:
    run = WorkflowRun().started()
    for i in range(n - 1):
        run.step_started(f"s{i}")
    return json.dumps({"events": run.events}).encode()


def test_the_shared_secret_header_is_accepted(bridge):
    assert _post(bridge, _batch()).status_code == 200


def test_a_bearer_token_is_accepted(bridge):
    response = _post(bridge, _batch(), **{"x-api-key": "", "authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": ""}, {"x-api-key": "wrong"}, {"x-api-key": "", "authorization": "Bearer nope"}],
)
def test_a_missing_or_wrong_credential_is_401_and_never_echoed(bridge, headers):
    response = _post(bridge, _batch(), **headers)
    assert response.status_code == 401
    assert KEY not in response.text and TOKEN not in response.text
    assert KEY not in bridge.log.read_text()


def test_gzip_bodies_are_accepted(bridge):
    response = _post(bridge, gzip.compress(_batch(3)), **{"content-encoding": "gzip"})
    assert response.status_code == 200
    assert response.json()["accepted"] == 3


def test_a_body_over_the_limit_is_413(bridge):
    response = _post(bridge, b" " * (LIMIT + 1))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]


def test_a_gzip_body_that_inflates_over_the_limit_is_413(bridge):
    bomb = gzip.compress(b'{"events": [' + b" " * (LIMIT * 50) + b"]}")
    assert len(bomb) < LIMIT
    response = _post(bridge, bomb, **{"content-encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]


def test_a_body_that_is_not_gzip_but_says_so_is_400(bridge):
    response = _post(bridge, _batch(), **{"content-encoding": "gzip"})
    assert response.status_code == 400
    assert "gzip" in response.json()["error"]


def test_an_empty_batch_is_fine(bridge):
    assert _post(bridge, b'{"events": []}').json() == {"accepted": 0, "duplicates": 0, "late": 0, "rejected": []}


def _requests(bridge: BridgeProcess, credential: str | None) -> float:
    """The bridge's count of requests that carried `credential` (None: refused), from its /metrics."""
    text = httpx.get(f"{bridge.url}/metrics", headers={"x-api-key": KEY}).text
    name, label = (
        ("otel_bridge_requests_unauthorized_total", "")
        if credential is None
        else ("otel_bridge_requests_authenticated_total", f'credential="{credential}",')
    )
    found = re.search(rf"^{name}\{{{label}[^}}]*\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_each_request_is_counted_by_the_credential_it_carried_and_refusals_apart(bridge):
    before = {c: _requests(bridge, c) for c in ("api_key", "bearer_token", None)}
    _post(bridge, _batch())
    _post(bridge, _batch(), **{"x-api-key": "", "authorization": f"Bearer {TOKEN}"})
    _post(bridge, _batch(), **{"x-api-key": "wrong"})
    _post(bridge, _batch(), **{"x-api-key": "wrong"})
    after = {c: _requests(bridge, c) for c in ("api_key", "bearer_token", None)}
    # The metrics scrapes carry the key too (`/metrics` is open here: checked only when metrics_auth).
    assert {c: after[c] - before[c] for c in after} == {"api_key": 1, "bearer_token": 1, None: 2}


def _answered(bridge: BridgeProcess, status: int) -> float:
    """The bridge's count of batches it answered with `status`, from its /metrics."""
    text = httpx.get(f"{bridge.url}/metrics").text
    labels = f'http_request_method="POST",http_response_status_code="{status}",http_route="/v1/events"'
    found = re.search(rf"^http_server_request_duration_seconds_count\{{{labels},[^}}]*\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_each_batch_is_timed_by_its_answer_and_one_refused_whole_is_told_in_the_log(bridge):
    before = {status: _answered(bridge, status) for status in (200, 413)}
    _post(bridge, _batch())
    _post(bridge, b" " * (LIMIT + 1))
    _post(bridge, b" " * (LIMIT + 1))
    assert {status: _answered(bridge, status) - before[status] for status in before} == {200: 1, 413: 2}
    told = [line for line in bridge.log.read_text().splitlines() if "refused a batch from 127.0.0.1 (413)" in line]
    assert told and f"over the limit of {LIMIT} bytes" in told[0], told


def test_an_idle_connection_is_kept_for_the_next_batch_as_long_as_keep_alive_seconds_says(bridge):
    # A balancer sends the next batch down the connection it holds: closed by the bridge first, a 502.
    request = (
        f"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nX-API-KEY: {KEY}\r\n"
        f"Content-Length: {len(_batch())}\r\n\r\n"
    ).encode() + _batch()
    kept, left = (socket.create_connection(("127.0.0.1", bridge.port), timeout=KEEP_ALIVE + 10) for _ in range(2))
    with kept, left:
        for sock in (kept, left):
            sock.sendall(request)
            assert _answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(KEEP_ALIVE - 0.5)
        kept.sendall(request)  # idle past uvicorn's 5 s, within the setting's: served on the same connection
        assert _answer(kept).startswith(b"HTTP/1.1 200")
        assert left.recv(65536) == b""  # idle past the setting: the bridge closed it


def test_a_batch_from_a_client_that_offers_http2_is_taken_whole(bridge):
    # Java's HttpClient and Spring's RestClient offer h2c on a POST by default; the body was lost (uvicorn#2722).
    body = _batch(3)
    request = (
        f"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nX-API-KEY: {KEY}\r\n"
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as sock:
        sock.sendall(request)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["accepted"] == 3


def _answer(sock: socket.socket) -> bytes:
    """One whole answer (its head and body may come in segments of their own); none, the connection closed."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        if not (read := sock.recv(65536)):
            return answer
        answer += read
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length and (read := sock.recv(65536)):
        body += read
    return head + b"\r\n\r\n" + body


def test_health_needs_no_credential(bridge):
    assert httpx.get(f"{bridge.url}/healthz").status_code == 200
    assert httpx.get(f"{bridge.url}/metrics").status_code == 200


def test_past_limit_concurrency_a_batch_is_turned_away_as_any_refusal_for_now_told_counted_and_answered(tmp_path):
    # uvicorn's own check answered a plain-text 503 without a wait, wrote a line of log for every request past it,
    # and handed nothing to the app: no metric counted the batches turned away, and no alert could fire.
    receiver = OtlpHttpReceiver()
    bridge = BridgeProcess(tmp_path, receiver.endpoint, limit_concurrency="5").start()
    try:
        idle = [socket.create_connection(("127.0.0.1", bridge.port), timeout=5) for _ in range(6)]
        time.sleep(0.5)  # taken by the server: six connections open, past the limit of five
        with idle[0]:
            answers = [httpx.post(f"{bridge.url}/v1/events", content=_batch(), timeout=10) for _ in range(3)]
        for answer in answers:
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert answer.headers["connection"] == "close"
            assert answer.json()["error"].startswith("too many connections at once, retry later: ")
            assert "(limit_concurrency 5)" in answer.json()["error"]
        for connection in idle:
            connection.close()
        time.sleep(0.5)
        assert bridge.post(WorkflowRun().started().events).status_code == 200  # room again
        metrics = httpx.get(f"{bridge.url}/metrics", timeout=10).text
    finally:
        bridge.close()
        receiver.close()
    refused = re.search(
        r'^otel_bridge_events_refused_total\{[^}]*reason="connections_at_limit"[^}]*\} (\S+)$', metrics, re.M
    )
    assert refused is not None and float(refused.group(1)) == 3  # one a batch: its body was not read
    turned_away = re.search(
        r'^http_server_request_duration_seconds_count\{[^}]*http_response_status_code="503"[^}]*http_route="/v1/events"'
        r"[^}]*\} (\S+)$",
        metrics,
        re.M,
    )
    assert turned_away is not None and float(turned_away.group(1)) == 3
    logged = bridge.log.read_text()
    assert logged.count("turned requests away: ") == 1  # at most a line a minute, not one a request
    assert "Exceeded concurrency limit" not in logged
