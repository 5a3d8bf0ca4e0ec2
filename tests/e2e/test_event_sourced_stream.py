"""The event-sourced runtime's Redis stream, consumed by `otel-bridge serve --stream-url`, to a real OTLP receiver."""

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from bridge_process import BridgeProcess
from redis_server import RedisServer

from otel_bridge import trace_id_for
from otel_bridge.consumer import IngestReport
from otel_bridge.producer.event_sourced import Execution, trigger
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.redis_stream import StreamReceiver

KEY = "workflow:events:global"
OK, ERROR = 1, 2
PRODUCER = 4  # OTLP SpanKind


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def _publish(server: RedisServer, entries: list[dict[str, str]]) -> None:
    # Exactly as the runtime publishes: XADD * with MAXLEN ~ 1000.
    client = server.client()
    for entry in entries:
        client.xadd(KEY, entry, maxlen=1000, approximate=True)


def _bridge(tmp_path, otlp_http, server: RedisServer, **settings: str) -> BridgeProcess:
    return BridgeProcess(
        tmp_path,
        otlp_http.endpoint,
        stream_url=server.url,
        stream_service_name="crm",
        stream_env="prod",
        gap_grace_seconds="1",
        **settings,
    )


def _trace(execution: Execution) -> str:
    return trace_id_for("event-sourced", "prod", "crm", execution.execution_id, execution.tenant).hex()


def _metrics(bridge: BridgeProcess) -> str:
    return httpx.get(f"{bridge.url}/metrics").text


def _metric(bridge: BridgeProcess, name: str) -> float:
    text = _metrics(bridge)
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def _executions() -> tuple[list[Execution], dict[str, str]]:
    inbound = trigger("INBOUND_EMAIL_RECEIVED", tenant="acme", subject="new lead")
    onboarding = Execution("onboarding", tenant="acme").started({"eventId": inbound["event_id"]}).after(10)
    onboarding.moved("collecting").after(5).submitted("document_uploaded", user="u-1").after(5)
    onboarding.task_created("t-1", "review").after(500).task_completed("t-1", to="approved").after(5).ended("completed")
    payout = Execution("payout", tenant="globex").started().after(10).moved("paying").after(5)
    payout.ended("failed", error="card declined")
    cancelled = Execution("payout", tenant="globex").started().after(10).ended("cancelled")
    return [onboarding, payout, cancelled], inbound


def test_executions_across_tenants_become_traces_with_states_tasks_and_triggers(tmp_path, otlp_http, redis_server):
    executions, inbound = _executions()
    _publish(redis_server, [inbound] + [e for run in executions for e in run.events])
    bridge = _bridge(tmp_path, otlp_http, redis_server).start()
    got = otlp_http.received
    try:
        for run in executions:
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))))
        trigger_trace = trace_id_for("event-sourced", "prod", "crm", inbound["event_id"], "acme").hex()
        got.wait_for(lambda: got.trace(trigger_trace))
        got.wait_for(lambda: redis_server.client().xpending(KEY, "otel-bridge")["pending"] == 0)
    finally:
        bridge.close()

    onboarding, payout, cancelled = executions
    spans = {s.name: s for s in got.trace(_trace(onboarding))}
    assert set(spans) == {
        "workflow onboarding",
        "state initial",
        "state collecting",
        "state approved",
        "task review",
    }
    root = spans["workflow onboarding"]
    assert root.status_code == OK and root.resource == {"service.name": "crm", "deployment.environment.name": "prod"}
    assert (
        root.attributes["tenant.id"] == "acme" and root.attributes["workflow.execution.id"] == onboarding.execution_id
    )
    (trigger_span,) = got.trace(trigger_trace)
    assert trigger_span.name == "trigger INBOUND_EMAIL_RECEIVED" and trigger_span.kind == PRODUCER
    assert root.links == [(trigger_trace, trigger_span.span_id)]
    assert [name for name, _t, _a in spans["state collecting"].events] == ["document_uploaded"]

    failed_root = next(s for s in got.trace(_trace(payout)) if s.parent_span_id == "")
    assert failed_root.status_code == ERROR and failed_root.status_message == "card declined"
    cancelled_root = next(s for s in got.trace(_trace(cancelled)) if s.parent_span_id == "")
    assert cancelled_root.attributes["workflow.execution.result"] == "cancellation"


def test_the_dead_consumers_pending_entries_are_claimed_and_traces_come_out_whole(tmp_path, otlp_http, redis_server):
    executions, inbound = _executions()
    _publish(redis_server, [inbound] + [e for run in executions for e in run.events])
    client = redis_server.client()
    # A bridge that read these and died before acknowledging: what kill -9 between read and ack leaves.
    client.xgroup_create(KEY, "otel-bridge", id="0")
    assert len(client.xreadgroup("otel-bridge", "dead-bridge", {KEY: ">"}, count=1000)[0][1]) == 12
    bridge = _bridge(tmp_path, otlp_http, redis_server, stream_claim_after_seconds="1").start()
    got = otlp_http.received
    try:
        for run in executions:
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))))
        got.wait_for(lambda: client.xpending(KEY, "otel-bridge")["pending"] == 0)
    finally:
        bridge.close()
    assert len(got.trace(_trace(executions[0]))) == 5


def test_kill_9_between_read_and_ack_loses_nothing_and_doubles_nothing(tmp_path, otlp_http, redis_server):
    rng = random.Random(7)
    runs = []
    for i in range(30):
        run = Execution(f"flow-{i % 3}", tenant=f"t{i % 4}").started().after(5).moved("working").after(5)
        runs.append(run.submitted("note").after(5).ended("completed"))
    entries = [e for run in runs for e in run.events]
    # Each start on its port is the consumer it was (host and port): it reads what it left pending at once.
    bridge = _bridge(tmp_path, otlp_http, redis_server, stream_claim_after_seconds="1").start()
    got = otlp_http.received
    try:
        sent = 0
        for _ in range(3):
            n = rng.randint(20, 40)
            _publish(redis_server, entries[sent : sent + n])
            sent += n
            bridge.kill()  # whatever it had read and not acknowledged stays pending
            bridge.start()
        _publish(redis_server, entries[sent:])
        for run in runs:
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))), timeout=30)
    finally:
        bridge.close()
    unique = got.unique_spans()  # a span received twice must be identical
    for run in runs:
        names = sorted(s.name for s in unique.values() if s.trace_id == _trace(run))
        assert names == ["state initial", "state working", f"workflow {run.name}"]


def test_entries_trimmed_before_they_were_read_are_counted_as_lost(tmp_path, otlp_http, redis_server):
    client = redis_server.client()
    run = Execution("early").started().after(5).ended("completed")
    _publish(redis_server, run.events)
    bridge = _bridge(tmp_path, otlp_http, redis_server).start()
    got = otlp_http.received
    try:
        got.wait_for(lambda: got.trace(_trace(run)))
        # A series at zero from the start: the first loss is an increase an alert sees (BridgeStreamEntriesLost).
        assert re.search(r"^otel_bridge_stream_entries_lost_total(\{[^}]*\})? 0\.0$", _metrics(bridge), re.M)
        bridge.stop()
        # The producer goes on while the bridge is away, trimming hard.
        for i in range(50):
            client.xadd(KEY, Execution(f"burst-{i}").started().events[0], maxlen=10, approximate=False)
        bridge.start()
        got.wait_for(lambda: _metric(bridge, "otel_bridge_stream_entries_lost_total") > 0)
        assert _metric(bridge, "otel_bridge_stream_entries_lost_total") == 40
    finally:
        bridge.close()
    assert "trimmed past 40 entries" in bridge.log.read_text()


def test_a_backlog_is_read_once_however_long_it_is(redis_server, tmp_path):
    """Catching up after an outage, or on a stream not trimmed: each entry crosses the wire once
    (finding trimmed entries once read the whole rest of the stream at every turn: 20 000 took 15 s)."""
    client = redis_server.client()
    pipe = client.pipeline(transaction=False)
    published = [Execution(f"backlog-{i}").started().events[0] for i in range(3000)]
    for entry in published:
        pipe.xadd(KEY, entry)
    pipe.execute()
    taken: list[str] = []

    class Recording:
        def ingest(self, events):
            taken.extend(e["event_id"] for e in events)
            return IngestReport(accepted=len(events))

    receiver = StreamReceiver(
        redis_server.url, KEY, "bridge", "c1", Recording(), DeadLetters(tmp_path / "dead.jsonl", 10**6, 1), block_ms=50
    )
    sent_before = client.info("stats")["total_net_output_bytes"]
    stop = threading.Event()
    consuming = threading.Thread(target=receiver.run, args=(stop,))
    consuming.start()
    try:
        deadline = time.monotonic() + 60
        # Caught up: everything taken, and the receiver has looked again (the lag is told then).
        while (len(taken) < 3000 or receiver.lag != 0) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        consuming.join()
    sent = client.info("stats")["total_net_output_bytes"] - sent_before
    once_before = client.info("stats")["total_net_output_bytes"]
    client.xrange(KEY)  # the whole stream, once: what reading it once costs on the wire
    once = client.info("stats")["total_net_output_bytes"] - once_before
    assert sorted(taken) == sorted(e["event_id"] for e in published)
    assert receiver.lag == 0
    assert sent < 2 * once


def _following(bridge: BridgeProcess) -> str:
    return bridge.client.get(f"{bridge.url}/readyz").json()["following"]["redis-stream"]


def test_a_stream_the_bridge_cannot_reach_is_told_by_a_gauge_and_readyz_and_then_caught_up(
    tmp_path, otlp_http, redis_server
):
    executions, inbound = _executions()
    bridge = _bridge(tmp_path, otlp_http, redis_server).start()
    connected = "otel_bridge_follower_connected"
    try:
        got = otlp_http.received
        got.wait_for(lambda: _metric(bridge, connected) == 1 and _following(bridge) == "connected")
        redis_server.kill()
        got.wait_for(lambda: _metric(bridge, connected) == 0, timeout=20)
        assert _following(bridge).startswith("disconnected for ")
        ready = bridge.client.get(f"{bridge.url}/readyz")
        assert ready.status_code == 200  # the endpoint still takes batches: told, not a reason
        redis_server.start()  # empty: a producer publishes again
        _publish(redis_server, [inbound, *[e for x in executions for e in x.events]])
        got.wait_for(lambda: _metric(bridge, connected) == 1, timeout=40)
        for execution in executions:
            got.wait_for(lambda execution=execution: any(s.parent_span_id == "" for s in got.trace(_trace(execution))))
    finally:
        bridge.close()
    # Told once, not at every retry, and its end told too.
    told = bridge.log.read_text()
    assert told.count("reconnecting (told again once a minute while it lasts)") == 1, told
    assert re.search(rf"following {KEY} again, after \d+ s and \d+ tries", told), told


def test_on_a_redis_cluster_two_replicas_keep_their_state_and_follow_the_stream(tmp_path, otlp_http, redis_cluster_url):
    # Managed Redis in cluster mode: the runtime's stream and the bridge's state both on a three-node cluster.
    executions, inbound = _executions()
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    for entry in [inbound] + [e for run in executions for e in run.events]:
        cluster.xadd(KEY, entry, maxlen=1000, approximate=True)
    settings = {
        "state": redis_cluster_url,
        "stream_url": redis_cluster_url,
        "stream_service_name": "crm",
        "stream_env": "prod",
        "gap_grace_seconds": "1",
    }
    checked = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "check", "--json"],
        env=os.environ
        | {f"OTEL_BRIDGE_{k.upper()}": v for k, v in settings.items()}
        | {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    told = {c["check"]: c for c in json.loads(checked.stdout)["checks"]}
    assert told["state"]["ok"] and told["stream"]["ok"], checked.stdout
    assert told["state"]["detail"].startswith(f"Redis Cluster {redis_cluster_url}: ")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    replicas = [BridgeProcess(tmp_path / name, otlp_http.endpoint, **settings) for name in ("a", "b")]
    got = otlp_http.received
    try:
        for replica in replicas:
            replica.start()
        for run in executions:
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))))
        got.wait_for(lambda: cluster.xpending(KEY, "otel-bridge")["pending"] == 0)
    finally:
        for replica in replicas:
            replica.close()
    onboarding = {s.name for s in got.trace(_trace(executions[0]))}
    assert onboarding == {"workflow onboarding", "state initial", "state collecting", "state approved", "task review"}
    assert all(len(got.trace(_trace(run))) == len({s.span_id for s in got.trace(_trace(run))}) for run in executions)
    # Every key of the bridge's in its one slot, {otel-bridge}: a transaction's keys, a script's, together.
    assert cluster.keys("otel-bridge:*") == [] and cluster.keys("{otel-bridge}:state:*")
    logs = [replica.log.read_text() for replica in replicas]
    assert all(f"started: state Redis Cluster {redis_cluster_url}" in log and "Traceback" not in log for log in logs)


def test_replicas_on_one_host_are_consumers_of_their_own_and_read_no_entry_twice(tmp_path, otlp_http, redis_server):
    # Named after the host alone, two bridges on one machine were one consumer of the group: each read its
    # "own" pending entries first, the ones the other had just read and not yet acknowledged, and both
    # stored them (every_engine.py --replicas 2 counted 309 in four minutes). Host and port: each its own,
    # and a bridge started again on its port is the consumer it was, reading what it left unacknowledged.
    executions, inbound = _executions()
    state = redis_server.url.rsplit("/", 1)[0] + "/3"
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(_bridge(tmp_path / name, otlp_http, redis_server, state=state).start())
    got = otlp_http.received
    try:
        _publish(redis_server, [inbound] + [e for run in executions for e in run.events])
        for run in executions:
            got.wait_for(lambda run=run: any(s.parent_span_id == "" for s in got.trace(_trace(run))))
        client = redis_server.client()
        got.wait_for(lambda: client.xpending(KEY, "otel-bridge")["pending"] == 0)
        names = {c["name"].decode() for c in client.xinfo_consumers(KEY, "otel-bridge")}
        assert names == {f"{socket.gethostname()}:{httpx.URL(r.url).port}" for r in replicas}
        assert (
            sum(_metric(r, 'otel_bridge_events_duplicate_total{[^}]*receiver="redis-stream"[^}]*}') for r in replicas)
            == 0
        )
    finally:
        for replica in replicas:
            replica.close()
