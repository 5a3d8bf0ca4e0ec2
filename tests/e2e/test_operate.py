"""Stuck runs, seen the way an on-call engineer asks: `otel-bridge runs`, `GET /v1/runs`, the overdue gauge,
`otel-bridge show`; and a log that says an export failure once, not every second."""

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from bridge_process import BridgeProcess, held_port
from builders import WorkflowRun
from cryptography import x509
from otlp_receiver import OtlpHttpReceiver
from pki import make_pki
from redis_server import RedisServer

from otel_bridge import trace_id_for
from otel_bridge.state import hearings
from otel_bridge.state.sqlite_store import SqliteStore

KEY = "on-call"
JAEGER = "http://jaeger.example:16686/trace/{trace_id}"


def _cli(*args: str, state: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OTEL_BRIDGE_STATE": state,
        "OTEL_BRIDGE_OVERDUE_GRACE_SECONDS": "1",
        "OTEL_BRIDGE_TRACE_URL": JAEGER,
        **{f"OTEL_BRIDGE_{name.upper()}": value for name, value in settings.items()},
    }
    return subprocess.run(
        [sys.executable, "-m", "otel_bridge", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _overdue_gauge(bridge: BridgeProcess) -> float:
    text = httpx.get(f"{bridge.url}/metrics").text
    found = re.findall(
        r'^workflow_execution_overdue\{[^}]*workflow_execution_state="paused"[^}]*\} ([0-9.]+)$', text, re.M
    )
    return sum(float(v) for v in found)


def _listed(bridge: BridgeProcess, **params: str) -> list[dict]:
    response = bridge.client.get(f"{bridge.url}/v1/runs", params=params, headers={"X-API-KEY": KEY})
    assert response.status_code == 200, response.text
    return response.json()["runs"]


def _stuck() -> WorkflowRun:
    # Paused for a sleep whose resumeAt (in 2025) is long past: the engine lost its alarm.
    return (
        WorkflowRun("nightly")
        .started()
        .step_started("a")
        .after(5)
        .step_completed("a")
        .sleep_started(60_000)
        .paused("sleep", resume_in_ms=60_000)
    )


def test_an_overdue_run_is_listed_counted_shown_and_marked_when_it_resumes(tmp_path, otlp_http):
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, overdue_grace_seconds="1", api_key=KEY, trace_url=JAEGER
    ).start()
    stuck, running = _stuck(), WorkflowRun("busy").started().step_started("x")
    trace_id = trace_id_for("durable-effect", "production", "shop", stuck.workflow_id).hex()
    state = str(tmp_path / "state.db")
    try:
        assert bridge.post(stuck.events + running.events, headers={"X-API-KEY": KEY}).status_code == 200
        got = otlp_http.received
        got.wait_for(lambda: _overdue_gauge(bridge) == 1)

        listed = json.loads(_cli("runs", "--overdue", "--json", state=state).stdout)  # read while it runs
        assert [r["run_id"] for r in listed] == [stuck.workflow_id]
        assert listed[0]["state"] == "paused" and listed[0]["overdue_seconds"] > 0
        assert listed[0]["resume_at"] == stuck.events[-1]["resumeAt"]
        assert listed[0]["traceparent"].split("-")[1] == trace_id
        assert listed[0]["trace_url"] == f"http://jaeger.example:16686/trace/{trace_id}"  # one click to Jaeger
        table = _cli("runs", state=state).stdout
        assert stuck.workflow_id[:12] in table and "busy" in table and "nightly" in table
        (overdue_run,) = _listed(bridge, overdue="true")
        assert (overdue_run["run_id"], overdue_run["trace_url"]) == (stuck.workflow_id, listed[0]["trace_url"])
        one = bridge.client.get(f"{bridge.url}/v1/runs", params={"limit": "1"}, headers={"X-API-KEY": KEY})
        assert len(one.json()["runs"]) == 1 and one.json()["count"] == 2  # the oldest, and how many there are
        bad = bridge.client.get(f"{bridge.url}/v1/runs", params={"limit": "all"}, headers={"X-API-KEY": KEY})
        assert bad.status_code == 400 and "limit" in bad.json()["error"]
        assert bridge.client.get(f"{bridge.url}/v1/runs").status_code == 401
        shown = _cli("show", stuck.workflow_id, state=state)
        assert shown.returncode == 0, shown.stderr
        assert "workflow nightly" in shown.stdout and "sleep" in shown.stdout and "workflow.paused" in shown.stdout
        assert f"trace: http://jaeger.example:16686/trace/{trace_id}" in shown.stdout

        stuck.after(3_600_000).resumed().sleep_completed(60_000).completed(["a"])
        assert bridge.post(stuck.events[-3:], headers={"X-API-KEY": KEY}).status_code == 200
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(trace_id)))
        got.wait_for(lambda: _overdue_gauge(bridge) == 0)
        assert _listed(bridge, overdue="true") == []
    finally:
        bridge.close()
    root = next(s for s in got.trace(trace_id) if s.parent_span_id == "")
    (overdue,) = [a for name, _t, a in root.events if name == "workflow.overdue"]
    assert overdue["workflow.overdue.seconds"] == 3540  # woke an hour after the pause, due a minute after it


def test_a_stuck_run_closed_by_hand_leaves_as_an_incomplete_trace_and_is_overdue_no_more(tmp_path, otlp_http):
    # As on call: `otel-bridge close` beside the bridge, with its settings (its port, its credential).
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, overdue_grace_seconds="1", api_key=KEY).start()
    stuck = _stuck()
    trace_id = trace_id_for("durable-effect", "production", "shop", stuck.workflow_id).hex()
    state, port = str(tmp_path / "state.db"), str(bridge.port)
    try:
        assert bridge.post(stuck.events, headers={"X-API-KEY": KEY}).status_code == 200
        got = otlp_http.received
        got.wait_for(lambda: _overdue_gauge(bridge) == 1)

        closed = _cli(
            "close", "no-such-run", stuck.workflow_id, "--reason", "INC-42", state=state, port=port, api_key=KEY
        )

        # Each id closed that can be; one with nothing open named, and the exit status says so.
        assert closed.returncode == 1, closed.stderr
        assert f"closed run {stuck.workflow_id} of nightly (shop), paused since" in closed.stdout
        assert "sent, the run marked incomplete (INC-42); 00-" + trace_id in closed.stdout
        assert f"nothing closed: no open run or job instance no-such-run at {bridge.url}" in closed.stderr
        got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(trace_id)))
        got.wait_for(lambda: _overdue_gauge(bridge) == 0)
        again = _cli("close", stuck.workflow_id, "--json", state=state, port=port, api_key=KEY)
        assert again.returncode == 1 and json.loads(again.stdout) == []
        # Closed again (a close answered 503 and sent again, say): told it is closed already, and how.
        closed_already = f"run {stuck.workflow_id} of nightly (shop/production) is closed already, by hand (INC-42)"
        assert f"no open run or job instance {stuck.workflow_id} at {bridge.url}: {closed_already}" in again.stderr
        refused = _cli("close", stuck.workflow_id, state=state, port=port, api_key="wrong")
        assert refused.returncode == 2 and "answered 401: missing or wrong credential" in refused.stderr
        shown = _cli("show", stuck.workflow_id, state=state)
        assert "incomplete: INC-42" in shown.stdout and "(open: drawn up to now)" not in shown.stdout
    finally:
        bridge.close()
    (root,) = [s for s in got.trace(trace_id) if s.parent_span_id == ""]
    assert root.attributes["workflow.execution.incomplete"] is True
    assert root.attributes["workflow.execution.close_reason"] == "INC-42"
    nowhere = _cli("close", stuck.workflow_id, "--url", bridge.url, state=state)
    assert nowhere.returncode == 2 and f"cannot reach the bridge at {bridge.url}" in nowhere.stderr


def test_producers_are_listed_from_a_running_bridge_with_those_not_heard_from_in_time(tmp_path, otlp_http):
    # A producer that never sent has no run to list: what the bridge heard of each tells.
    expected = "shop@production=60s,late@production=1s,ghost@production=1h"
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, api_key=KEY, metrics_auth="true", expected_producers=expected
    ).start()
    nowhere = str(tmp_path / "no-store-here.db")
    try:
        shop, late = WorkflowRun().started(), WorkflowRun(service="late").started()
        assert bridge.post(shop.events + late.events, headers={"X-API-KEY": KEY}).status_code == 200
        time.sleep(1.5)  # late's second of grace over
        told = _cli("producers", "--json", "--url", bridge.url, state=nowhere, api_key=KEY)
        table = _cli("producers", "--url", bridge.url, state=nowhere, api_key=KEY)
        refused = _cli("producers", "--url", bridge.url, state=nowhere)  # /metrics behind the credential
    finally:
        bridge.close()
    assert told.returncode == 1, told.stderr  # one expected producer not heard from in time: as the alert
    said = {p["service"]: p for p in json.loads(told.stdout)}
    assert {name: (p["heard"], p["events"], p["overdue"]) for name, p in said.items()} == {
        "ghost": (False, 0, False),  # never, but within its hour
        "late": (True, 1, True),
        "shop": (True, 1, False),
    }
    assert said["shop"]["engines"] == ["durable-effect"] and said["ghost"]["expected_within_seconds"] == 3600
    assert table.returncode == 1 and "3 producers, 3 expected, 1 not heard from in time" in table.stdout
    assert "never, since expected" in table.stdout
    assert refused.returncode == 2 and "answered 401 to GET /metrics" in refused.stderr


def test_a_bridge_killed_and_started_again_still_knows_when_it_last_heard_from_each_producer(tmp_path, otlp_http):
    # Kept with each metrics export: a crash costs at most one interval of the latest hearing, and an
    # expected producer that never sends is still counted silent from the bridge's first start.
    expected = "shop@production=1h,ghost@production=1h"
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, expected_producers=expected, metric_export_interval_ms="300"
    ).start()
    nowhere = str(tmp_path / "no-store-here.db")
    try:
        assert bridge.post(WorkflowRun().started().events).status_code == 200
        before = {
            p["service"]: p for p in json.loads(_cli("producers", "--json", "--url", bridge.url, state=nowhere).stdout)
        }
        time.sleep(1.0)  # a few exports
        bridge.kill()
        bridge.start()
        after = _cli("producers", "--json", "--url", bridge.url, state=nowhere)
        table = _cli("producers", "--url", bridge.url, state=nowhere)
    finally:
        bridge.close()
    said = {p["service"]: p for p in json.loads(after.stdout)}
    assert {name: (p["heard"], p["events"], p["last_heard"]) for name, p in said.items()} == {
        "ghost": (False, 0, before["ghost"]["last_heard"]),  # expected since the first start
        "shop": (True, 0, before["shop"]["last_heard"]),  # none since the restart, its last one before
    }
    assert "never, since expected" in table.stdout


def test_a_bridge_killed_while_it_drains_at_its_stop_kept_what_it_heard(tmp_path):
    # A supervisor's kill within the drain (the backend down, a grace period shorter than drain_timeout_seconds)
    # lost the hearings since the last metrics export: they were written after the drain.
    held = held_port()
    bridge = BridgeProcess(
        tmp_path,
        f"http://127.0.0.1:{held.getsockname()[1]}",
        drain_timeout_seconds="60",
        metric_export_interval_ms="600000",  # no export, and no hearing written with one, before the stop
    ).start()
    try:
        run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
        assert bridge.post(run.events).status_code == 200  # its spans to drain, to a backend down
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while "trace export to" not in bridge.log.read_text():
            assert time.monotonic() < deadline, bridge.log.read_text()
            time.sleep(0.1)
        assert "Application shutdown complete" not in bridge.log.read_text()
        bridge.kill()  # within its drain
    finally:
        bridge.close()
        held.close()
    store = SqliteStore(str(tmp_path / "state.db"), read_only=True)
    try:
        kept = hearings.decoded(store.bookmark(hearings.BOOKMARK))
    finally:
        store.close()
    assert list(kept.heard) == [("durable-effect", "production", "shop")]


def test_a_bridge_that_does_not_answer_has_its_producers_told_from_its_store(tmp_path, otlp_http):
    # Stopped, or crash-looping: when whether a producer still sends matters most, the bridge's own `/metrics`
    # cannot say; what it kept in its store can, with the same verdict ProducerNotHeard reaches.
    state = str(tmp_path / "state.db")
    expected = "shop@production=1h,ghost@production=1s"
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, expected_producers=expected).start()
    port = str(bridge.port)
    try:
        assert bridge.post(WorkflowRun().started().events).status_code == 200
        asked = json.loads(_cli("producers", "--json", state=state, port=port).stdout)  # answered by the bridge
    finally:
        bridge.close()
    time.sleep(1.1)  # ghost's second of grace over
    told = _cli("producers", "--json", state=state, port=port, expected_producers=expected)
    table = _cli("producers", state=state, port=port, expected_producers=expected)
    elsewhere = _cli("producers", "--url", bridge.url, state=state, expected_producers=expected)
    no_store = _cli("producers", state=str(tmp_path / "none.db"), port=port)

    assert told.returncode == 1  # as the alert would: ghost never sent, past its second
    assert f"the bridge at {bridge.url} does not answer" in told.stderr and "what its store kept" in told.stderr
    said = {p["service"]: p for p in json.loads(told.stdout)}
    assert {name: (p["heard"], p["events"], p["engines"], p["overdue"]) for name, p in said.items()} == {
        "ghost": (False, None, [], True),
        "shop": (True, None, ["durable-effect"], False),  # how many events: the running bridge's count alone
    }
    assert {name: said[name]["last_heard"] for name in said} == {p["service"]: p["last_heard"] for p in asked}
    assert table.returncode == 1 and "2 producers, 2 expected, 1 not heard from in time, from its store" in table.stdout
    # A bridge named by --url is asked alone: its store need be none of this machine's.
    assert elsewhere.returncode == 2 and f"cannot reach the bridge at {bridge.url}" in elsewhere.stderr
    assert no_store.returncode == 2 and "nor can its store be read (cannot open the state file" in no_store.stderr


def test_runs_and_jobs_are_listed_from_a_running_bridge_a_producers_key_listing_its_own(tmp_path, otlp_http):
    # From another machine or pod, no store at hand: a team lists its stuck runs with its own key.
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, overdue_grace_seconds="1", api_key=KEY, producer_api_keys="shop=shop-key"
    ).start()
    stuck = _stuck()
    billing = WorkflowRun("invoice", service="billing").started().step_started("bill")
    nowhere = tmp_path / "no-store-here.db"
    try:
        assert bridge.post(stuck.events + billing.events, headers={"X-API-KEY": KEY}).status_code == 200

        mine = _cli("runs", "--json", "--url", bridge.url, state=str(nowhere), api_key="shop-key")
        assert mine.returncode == 0, mine.stderr
        assert [(r["run_id"], r["service"]) for r in json.loads(mine.stdout)] == [(stuck.workflow_id, "shop")]
        table = _cli("runs", "--overdue", "--url", bridge.url, state=str(nowhere), api_key="shop-key")
        assert table.returncode == 0, table.stderr
        assert "1 overdue run of shop" in table.stdout and "billing" not in table.stdout  # whose, the title says
        every = _cli("runs", "--json", "--url", bridge.url, state=str(nowhere), api_key=KEY)
        assert sorted(r["service"] for r in json.loads(every.stdout)) == ["billing", "shop"]
        asked = ["runs", "--json", "--run-state", "executing", "--silent-for", "1h", "--url", bridge.url]
        silent = _cli(*asked, state=str(nowhere), api_key=KEY)  # billing's, told nothing since 2025
        assert [r["service"] for r in json.loads(silent.stdout)] == ["billing"], silent.stderr
        jobs = _cli("jobs", "--url", bridge.url, state=str(nowhere), api_key="shop-key")
        assert jobs.returncode == 0 and "no job instances" in jobs.stdout
        theirs = _cli("runs", "--service", "billing", "--url", bridge.url, state=str(nowhere), api_key="shop-key")
        assert theirs.returncode == 2 and "answered 403: this credential lists shop's runs only" in theirs.stderr
    finally:
        bridge.close()
    assert not nowhere.exists()  # the store was never opened


def test_close_asks_a_bridge_behind_tls_trusting_the_certificate_it_serves_whatever_its_name(tmp_path, otlp_http):
    # The certificate names the service (CN=otel-bridge, no 127.0.0.1): asked at the loopback address, the
    # name could not match. The CLI trusts exactly the certificate the settings serve, no more.
    pki = make_pki(tmp_path)
    tls = {"tls_certfile": pki["bridge.pem"], "tls_keyfile": pki["bridge.key"]}
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, api_key=KEY, **tls)
    bridge.url = bridge.url.replace("http://", "https://")
    bridge.client = httpx.Client(verify=False, timeout=10)  # the test's own look at it, not what is tested
    stuck = _stuck()
    state = str(tmp_path / "state.db")
    try:
        bridge.start()
        assert bridge.post(stuck.events, headers={"X-API-KEY": KEY}).status_code == 200
        closed = _cli("close", stuck.workflow_id, state=state, port=str(bridge.port), api_key=KEY, **tls)
        assert closed.returncode == 0, closed.stderr
        assert f"closed run {stuck.workflow_id}" in closed.stdout
        # Another certificate of the same CA is not the one served: refused.
        other = {"tls_certfile": pki["backend.pem"], "tls_keyfile": pki["backend.key"]}
        refused = _cli("close", stuck.workflow_id, state=state, port=str(bridge.port), api_key=KEY, **other)
        assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
    finally:
        bridge.close()


def test_a_bridge_behind_tls_serves_its_renewed_certificate_without_a_restart(tmp_path, otlp_http):
    # A certificate cert-manager or certbot renews on disk: read once, it was served until it ended, and every
    # producer then refused the bridge.
    pki = make_pki(tmp_path)
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    certfile.write_bytes(Path(pki["bridge.pem"]).read_bytes())
    keyfile.write_bytes(Path(pki["bridge.key"]).read_bytes())
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, tls_certfile=str(certfile), tls_keyfile=str(keyfile), tls_reload_seconds="0.2"
    )
    bridge.url = bridge.url.replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=pki["ca.pem"])
    trusted.check_hostname = False  # its name is the service's (CN=otel-bridge), asked at the loopback address
    bridge.client = httpx.Client(verify=trusted, timeout=10)

    def served() -> str:
        return ssl.get_server_certificate(("127.0.0.1", bridge.port))

    def expiration() -> float:
        text = bridge.client.get(f"{bridge.url}/metrics").text
        (value,) = re.findall(
            r'^otel_bridge_tls_certificate_expiration_timestamp_seconds{[^}]*certificate="tls_certfile"[^}]*} (\S+)$',
            text,
            re.M,
        )
        return float(value)

    def ends(pem: str) -> float:
        return x509.load_pem_x509_certificate(Path(pem).read_bytes()).not_valid_after_utc.timestamp()

    try:
        bridge.start()
        before = bridge.client.get(f"{bridge.url}/healthz")  # a connection kept open across the renewal
        assert before.status_code == 200 and served() == _pem_of(pki["bridge.pem"])
        assert expiration() == ends(pki["bridge.pem"])
        keyfile.write_bytes(Path(pki["backend.key"]).read_bytes())  # the key first: not served until its certificate
        certfile.write_bytes(Path(pki["backend.pem"]).read_bytes())
        deadline = time.monotonic() + 10
        while served() != _pem_of(pki["backend.pem"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served() == _pem_of(pki["backend.pem"])
        assert expiration() == ends(pki["backend.pem"])
        assert bridge.client.get(f"{bridge.url}/healthz").status_code == 200
    finally:
        bridge.close()
    log = bridge.log.read_text()
    assert f"serving the renewed TLS certificate {certfile}" in log and "Traceback" not in log


def test_sighup_reads_the_certificate_again_at_once_and_the_bridge_goes_on(tmp_path, otlp_http):
    # `systemctl reload` after certbot renewed, where a SIGHUP ended the bridge there and then (no drain).
    pki = make_pki(tmp_path)
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    certfile.write_bytes(Path(pki["bridge.pem"]).read_bytes())
    keyfile.write_bytes(Path(pki["bridge.key"]).read_bytes())
    tls = {"tls_certfile": str(certfile), "tls_keyfile": str(keyfile), "tls_reload_seconds": "3600"}
    (tmp_path / "tls").mkdir()
    (tmp_path / "plain").mkdir()
    bridge = BridgeProcess(tmp_path / "tls", otlp_http.endpoint, **tls)
    bridge.url = bridge.url.replace("http://", "https://")
    bridge.client = httpx.Client(verify=False, timeout=10)  # the test's own look at it, not what is tested
    plain = BridgeProcess(tmp_path / "plain", otlp_http.endpoint)
    try:
        bridge.start()
        plain.start()
        keyfile.write_bytes(Path(pki["backend.key"]).read_bytes())
        certfile.write_bytes(Path(pki["backend.pem"]).read_bytes())
        assert bridge.proc is not None and plain.proc is not None
        bridge.proc.send_signal(signal.SIGHUP)
        plain.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while ssl.get_server_certificate(("127.0.0.1", bridge.port)) != _pem_of(pki["backend.pem"]):
            assert time.monotonic() < deadline, "the renewed certificate was not served after SIGHUP"
            time.sleep(0.05)
        assert bridge.client.get(f"{bridge.url}/healthz").status_code == 200
        deadline = time.monotonic() + 5
        while "SIGHUP: nothing to read again" not in plain.log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert plain.client.get(f"{plain.url}/healthz").status_code == 200
    finally:
        bridge.close()
        plain.close()


def _pem_of(path: str) -> str:
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(Path(path).read_text()))


def test_overdue_runs_are_counted_from_the_store_after_a_restart(tmp_path, otlp_http):
    stuck = _stuck()
    first = BridgeProcess(tmp_path, otlp_http.endpoint, overdue_grace_seconds="1", api_key=KEY).start()
    try:
        assert first.post(stuck.events, headers={"X-API-KEY": KEY}).status_code == 200
        assert first.stop()
    finally:
        first.close()
    second = BridgeProcess(tmp_path, otlp_http.endpoint, overdue_grace_seconds="1", api_key=KEY).start()
    try:  # no event since the restart: the store alone says it
        otlp_http.received.wait_for(lambda: _overdue_gauge(second) == 1)
        assert [r["run_id"] for r in _listed(second, overdue="true")] == [stuck.workflow_id]
    finally:
        second.close()


def test_two_replicas_on_redis_both_list_the_overdue_run_and_count_it_once(tmp_path, otlp_http):
    # Each told the store's count, and the alerts took the max over bridges, which with a sidecar a pod told the
    # busiest pod's stuck runs alone: now the replica that counts the open runs tells it, and the others none.
    redis = RedisServer().start()
    replicas = [
        BridgeProcess(tmp_path / name, otlp_http.endpoint, state=redis.url, overdue_grace_seconds="1", api_key=KEY)
        for name in ("a", "b")
    ]
    stuck = _stuck()
    try:
        for replica in replicas:
            replica.workdir.mkdir()
            replica.start()
        assert replicas[0].post(stuck.events, headers={"X-API-KEY": KEY}).status_code == 200
        otlp_http.received.wait_for(lambda: [_overdue_gauge(replica) for replica in replicas] in ([1, 0], [0, 1]))
        for replica in replicas:
            assert [r["run_id"] for r in _listed(replica, overdue="true")] == [stuck.workflow_id]
        listed = _cli("runs", "--overdue", "--json", state=redis.url)
        assert [r["run_id"] for r in json.loads(listed.stdout)] == [stuck.workflow_id]
    finally:
        for replica in replicas:
            replica.close()
        redis.close()


@pytest.mark.timeout(90)
def test_an_unreachable_backend_is_said_once_then_at_most_once_an_interval_then_its_recovery(tmp_path):
    held = held_port()
    port = held.getsockname()[1]
    bridge = BridgeProcess(
        tmp_path, f"http://127.0.0.1:{port}", OTEL_EXPORTER_OTLP_TIMEOUT="1000", export_log_interval_seconds="4"
    ).start()
    receiver = None
    try:
        run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
        assert bridge.post(run.events).status_code == 200
        time.sleep(10)  # 10 s of failing exports, retried every few seconds
        log = bridge.log.read_text()
        failing = [line for line in log.splitlines() if "trace export to" in line]
        assert 1 <= len(failing) <= 4, failing  # once, then at most once per 4 s
        assert "is failing" in failing[0] and f"127.0.0.1:{port}" in failing[0]
        assert "2 spans wait safely in the outbox" in failing[0]
        assert "opentelemetry.exporter" not in log  # the SDK's own line per retry is quiet
        held.close()
        receiver = OtlpHttpReceiver(port=port)
        receiver.received.wait_for(lambda: len(receiver.received.spans) == 2, timeout=40)
        bridge.stop()
    finally:
        bridge.close()
        if receiver is not None:
            receiver.close()
    recovered = [
        line for line in bridge.log.read_text().splitlines() if "trace export to" in line and "recovered" in line
    ]
    assert len(recovered) == 1


def _served_on_a_damaged_page(tmp_path, otlp_http) -> tuple[list[WorkflowRun], BridgeProcess]:
    """A page of the runs' facts overwritten under a stopped bridge; then a bridge served on the file, each
    run's end posted to it, and stopped: the runs, and the bridge (its log)."""
    from faults import broken_page, open_runs

    runs = open_runs(tmp_path / "state.db", 300)
    broken_page(tmp_path / "state.db", "facts")
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, gap_grace_seconds="0").start()
    try:
        answers = [bridge.post(run.step_completed("pay").completed().events[-2:]) for run in runs]
        assert {answer.status_code for answer in answers} == {200}
        rejected = [r for answer in answers for r in answer.json().get("rejected", [])]
        assert 0 < len(rejected) < len(runs) // 4 and all("the state file is damaged" in r["error"] for r in rejected)
        kept = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
        assert len(kept) == len(rejected)  # each kept, to be replayed once the file is salvaged
        ready = httpx.get(f"{bridge.url}/readyz", timeout=5).json()
        assert ready["ready"] and any("the state file is damaged" in w for w in ready["warnings"])
        assert re.search(r"^otel_bridge_state_risks\S* 1(\.0)?$", httpx.get(f"{bridge.url}/metrics").text, re.M)
        # Every run the damage spared is sent whole: its root reaches the backend.
        got = otlp_http.received
        spared = sum(1 for answer in answers if not answer.json().get("rejected"))
        got.wait_for(lambda: sum(1 for s in got.unique_spans().values() if not s.parent_span_id) >= spared, 30)
        assert bridge.stop()
    finally:
        bridge.close()
    log = bridge.log.read_text()
    assert "the state file is damaged" in log and "salvage-state" in log and "Traceback" not in log
    return runs, bridge


def _restarted_takes_them_again(tmp_path, otlp_http, runs: list[WorkflowRun]) -> str:
    """A bridge started on the salvaged state (or the one its start salvages): it takes again the events the
    damage rejected, every run ends in its trace, and the note asking for it is gone; its log."""
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, gap_grace_seconds="0").start()
    try:
        got = otlp_http.received
        got.wait_for(lambda: sum(1 for s in got.unique_spans().values() if not s.parent_span_id) == len(runs), 30)
        assert bridge.stop()
    finally:
        bridge.close()
    log = bridge.log.read_text()
    assert "Traceback" not in log
    taken = re.search(r"taken again from \S+: (\d+) accepted, 0 duplicates, 0 rejected again", log)
    assert taken is not None and int(taken[1]) > 0, log
    assert not (tmp_path / "state.db.take-again").exists()
    return log


def test_a_damaged_state_file_is_worked_around_told_and_its_rejected_events_kept(tmp_path, otlp_http):
    # An event that needed the damaged page was answered 503 and dropped by its producer after three re-sends.
    runs, _bridge = _served_on_a_damaged_page(tmp_path, otlp_http)

    # The runbook by hand: salvaged, the bridge started again, which takes the rejected events again (they were
    # replayed by hand, the bridge stopped a second time): every run ends in its trace.
    salvaged = _cli("salvage-state", state=str(tmp_path / "state.db"))
    assert salvaged.returncode == 0 and "broken pages met in: facts" in salvaged.stdout, salvaged.stderr
    assert "start the bridge: it takes again the events the damage rejected" in salvaged.stdout
    log = _restarted_takes_them_again(tmp_path, otlp_http, runs)
    assert "salvaging it before" not in log


def test_a_restart_salvages_a_state_file_damaged_under_a_running_bridge_and_takes_its_rejected_events_again(
    tmp_path, otlp_http
):
    # The same without the runbook's hands: the start met no damage (it reads the runs' headers, not their
    # facts), so a restart ran on around it, and the events it rejected waited in the dead-letter file.
    runs, _first = _served_on_a_damaged_page(tmp_path, otlp_http)
    assert (tmp_path / "state.db.needs-salvage").exists()  # noted by the bridge that met it

    log = _restarted_takes_them_again(tmp_path, otlp_http, runs)
    assert "salvaging it before the bridge starts" in log and "broken pages met in: facts" in log
    assert not (tmp_path / "state.db.needs-salvage").exists() and not (tmp_path / "state.db.take-again").exists()


def test_a_listing_that_meets_a_damaged_state_file_is_a_503_naming_it(tmp_path, otlp_http):
    from faults import broken_page, open_runs

    open_runs(tmp_path / "state.db", 300)
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        assert httpx.get(f"{bridge.url}/v1/runs", timeout=10).json()["count"] == 300
        broken_page(tmp_path / "state.db", "state")  # under the running bridge: a disk fault
        answer = httpx.get(f"{bridge.url}/v1/runs", timeout=10)
        assert answer.status_code == 503, answer.text  # it was a 500
        assert "state.db is damaged" in answer.json()["error"] and "salvage-state" in answer.json()["error"]
    finally:
        bridge.close()
