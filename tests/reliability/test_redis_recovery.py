"""Redis restarted without its data under load: the bridge recreates what is missing and goes on, no restart."""

import time
from collections.abc import Callable

import httpx
from bridge_process import BridgeProcess, free_port
from builders import WorkflowRun
from redis_server import RedisClusterNodes, RedisServer

from otel_bridge import trace_id_for
from otel_bridge.state.redis_store import RedisStore


def _run(i: int) -> WorkflowRun:
    return (
        WorkflowRun("amnesia", workflow_id=f"amnesia-{i}")
        .started()
        .step_started("a")
        .after(1)
        .step_completed("a")
        .completed()
    )


def _until(done: Callable[[], bool], bridge: BridgeProcess, seconds: float) -> None:
    """Wait for `done()`; past `seconds`, fail with the bridge's log."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, bridge.log.read_text()
        time.sleep(0.1)


def test_redis_restarted_empty_under_load_is_recovered_without_a_bridge_restart(tmp_path, otlp_http):
    server = RedisServer().start()
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, state=server.url).start()
    got = otlp_http.received
    try:
        for i in range(5):
            assert bridge.post(_run(i).events).status_code == 200
        got.wait_for(lambda: len(got.unique_spans()) == 10)

        server.kill()  # gone with everything it held: no persistence
        server.start()

        delivered_after = []
        for i in range(5, 25):
            events = _run(i).events
            for _attempt in range(20):  # the producer re-sends what got a 503
                try:
                    if bridge.post(events).status_code == 200:
                        delivered_after.append(i)
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            time.sleep(0.05)
        assert delivered_after == list(range(5, 25))
        for i in delivered_after:
            trace_id = trace_id_for("durable-effect", "production", "shop", f"amnesia-{i}").hex()
            got.wait_for(lambda trace_id=trace_id: len(got.trace(trace_id)) == 2, timeout=30)
        assert bridge.client.get(f"{bridge.url}/readyz").status_code == 200
        assert bridge.proc is not None and bridge.proc.poll() is None
    finally:
        bridge.close()
        server.close()


def test_redis_down_for_a_while_is_told_once_in_full_then_its_recovery(tmp_path, otlp_http):
    server = RedisServer().start()
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, state=server.url).start()
    try:
        assert bridge.post(_run(0).events).status_code == 200
        server.kill()
        time.sleep(3)  # the settle loop retries four times a second meanwhile
        # An on-call engineer asks meanwhile: the listings were a 500 with a traceback each.
        for listing in ("runs", "jobs"):
            answer = bridge.client.get(f"{bridge.url}/v1/{listing}")
            assert answer.status_code == 503 and "redis unavailable" in answer.json()["error"], answer.text
        assert bridge.client.get(f"{bridge.url}/metrics").status_code == 200
        server.start()
        _until(lambda: "settling works again" in bridge.log.read_text(), bridge, 20)
    finally:
        bridge.close()
        server.close()
    log = bridge.log.read_text()
    assert log.count("settling failed, retrying: redis unavailable") == 1
    # A line each at most: settling, the outbox drain, the outbox depth gauge, the overdue count.
    assert log.count(" ERROR ") <= 4, log
    assert "Traceback" not in log  # Redis down is a condition, not a bug


def test_a_redis_cluster_with_no_node_answering_is_unavailable_not_a_bug_and_recovered(tmp_path, otlp_http):
    # A cluster client reaching no node raises an error of its own (not a RedisError): it was a 503 with
    # "internal error" and a traceback a retry.
    cluster = RedisClusterNodes(tmp_path / "cluster").start()
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, state=cluster.url).start()
    try:
        assert bridge.post(_run(0).events).status_code == 200
        cluster.kill()
        refused = bridge.post(_run(1).events)
        assert refused.status_code == 503 and "state store unavailable" in refused.json()["error"]
        assert "Redis Cluster cannot be connected" in refused.json()["error"]
        time.sleep(1)
        cluster.start_again()  # empty: what Redis lost is lost (appendonly no), what comes next is kept
        back = "settling works again"
        _until(lambda: bridge.post(_run(2).events).status_code == 200 and back in bridge.log.read_text(), bridge, 30)
    finally:
        bridge.close()
        cluster.close()
    log = bridge.log.read_text()
    assert "settling failed, retrying: redis unavailable: Redis Cluster cannot be connected" in log
    assert "Traceback" not in log and "internal error" not in log


def test_a_redis_cluster_failing_over_the_bridges_primary_is_ridden_out(tmp_path):
    # Managed clusters replace a primary that dies by its replica: the bridge's slot moves to another node,
    # with the spans waiting in its outbox (the backend is away here, so they wait).
    cluster = RedisClusterNodes(tmp_path / "cluster", replicas=1).start()
    bridge = BridgeProcess(tmp_path, f"http://127.0.0.1:{free_port()}", state=cluster.url).start()
    store = RedisStore(cluster.url, seen_ttl_seconds=60)
    try:
        for i in range(3):
            assert bridge.post(_run(i).events).status_code == 200
        _until(lambda: store.outbox_depth() == 6, bridge, 20)  # each run's root and step, settled
        time.sleep(0.5)  # replicated: Redis replicates after it answers, and what it had not is Redis's to lose
        cluster.kill_primary_of("{otel-bridge}")
        _until(lambda: bridge.post(_run(3).events).status_code == 200, bridge, 30)
        _until(lambda: store.outbox_depth() == 8, bridge, 30)  # what waited is still there, and the new run
    finally:
        store.close()
        bridge.close()
        cluster.close()
    log = bridge.log.read_text()
    assert "Traceback" not in log and "group was gone" not in log
