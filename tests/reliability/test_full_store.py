"""A store that is full (a disk, Redis's memory) refuses the batch for the producer to retry: no event
is taken for a bad one, no run is set aside, what waits for export can still leave, and once there
is room again nothing is missing."""

import contextlib
import sqlite3
import time

import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from faults import small_filesystem
from redis_server import RedisServer

from otel_bridge import trace_id_for
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import StoreUnavailable


def _run(i: int) -> WorkflowRun:
    return WorkflowRun("full", workflow_id=f"full-{i}").started().step_started("a").after(1).step_completed("a")


class _FullDisk:
    """A SQLite state file that may not grow: SQLite's own `database or disk is full` (SQLITE_FULL)."""

    def __init__(self, store: SqliteStore) -> None:
        self._db = store._db

    def fill(self) -> None:
        # Pages freed earlier are still used again: what a test writes must need more than those.
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    def free(self) -> None:
        self._db.execute("PRAGMA max_page_count = 1073741823")


def _pipeline(tmp_path) -> tuple[Pipeline, _FullDisk]:
    settings = Settings(state=str(tmp_path / "full.db"), settle_seconds=0, settle_attempts=2)
    store = SqliteStore(settings.state)
    return Pipeline(store, MetricsHub(), settings), _FullDisk(store)


def test_a_full_disk_refuses_the_batch_for_a_retry_instead_of_rejecting_its_events(tmp_path):
    pipeline, disk = _pipeline(tmp_path)
    pipeline.ingest(_run(0).events)
    disk.fill()
    many = [e for i in range(1, 40) for e in _run(i).events]
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        pipeline.ingest(many)
    disk.free()
    report = pipeline.ingest(many)  # the producer's re-send
    assert (report.accepted, report.rejected, report.duplicates) == (len(many), [], 0)


def test_a_full_disk_sets_no_run_aside_however_often_settling_fails(tmp_path):
    pipeline, disk = _pipeline(tmp_path)
    pipeline.ingest([e for i in range(100) for e in _run(i).completed().events])
    disk.fill()
    for _ in range(4):  # twice settle_attempts
        with pytest.raises(StoreUnavailable):
            pipeline.settle_due(horizon=time.time() + 10)
    disk.free()
    assert pipeline.settle_due(horizon=time.time() + 10) == 200  # every run's root and step
    assert not [k for k, _ in pipeline.store.states() if k.startswith("unreadable")]


def test_a_full_disk_fails_every_batch_of_a_group_commit_and_leaves_none_half_written(tmp_path):
    store = SqliteStore(tmp_path / "group.db")
    store.run(lambda tx: tx.save("before", b"x", None))
    disk = _FullDisk(store)
    disk.fill()

    def big(name: str):
        return lambda tx: tx.outbox_add([(name, bytes(4096)) for _ in range(20)])

    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        store.run_many([lambda tx: tx.save("small", b"y", None), big("a"), big("b")])
    disk.free()
    assert store.run(lambda tx: (tx.load("before"), tx.load("small"))) == ((b"x", None), None)
    assert store.outbox_depth() == 0


def test_on_a_full_disk_settling_waits_for_the_outbox_to_drain(tmp_path):
    # The room the reserve gives back is first for what frees the disk (acknowledging, checkpointing):
    # settling adds spans to the outbox, and had taken it all before the drain could delete a row.
    with small_filesystem(tmp_path / "disk", 12) as disk:
        (disk / "other.log").write_bytes(bytes(4 * 2**20))
        store = SqliteStore(disk / "s.db", reserve_bytes=2**20)
        pipeline = Pipeline(store, MetricsHub(), Settings(state=str(disk / "s.db"), settle_seconds=60))
        pipeline.ingest(_run(0).completed().events)  # taken, due in a minute
        # A backend outage: spans wait until the disk is full, checkpointed as `serve` does.
        with contextlib.suppress(StoreUnavailable):
            while store.refuses_batches() is None:  # asked by the pipeline before each batch
                store.run(lambda tx: tx.outbox_add([("svc", bytes(3000)) for _ in range(20)]))
                with contextlib.suppress(sqlite3.OperationalError):  # full: `serve` tries again a second later
                    store.checkpoint()
        assert "disk is full" in (store.refuses_batches() or "")
        waiting = store.outbox_depth()

        assert pipeline.settle_due(horizon=time.time() + 120) == 0  # not tried: nothing fails, nothing is lost
        assert store.outbox_depth() == waiting
        while rows := store.outbox_peek(256):  # the backend is back
            store.outbox_ack([row.id for row in rows])
            store.checkpoint()
        assert pipeline.settle_due(horizon=time.time() + 120) == 2  # then the run's root and step
        store.close()


@pytest.mark.parametrize("refusal", ["out of memory", "read-only replica"])
def test_a_redis_refusing_writes_gets_the_producer_a_503_and_nothing_is_lost(tmp_path, otlp_http, refusal):
    server = RedisServer().start()
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, state=server.url).start()
    got = otlp_http.received
    redis = server.client()
    try:
        assert bridge.post(_run(0).completed().events).status_code == 200
        if refusal == "out of memory":
            redis.config_set("maxmemory-policy", "noeviction")
            redis.config_set("maxmemory", 1)
            said = "maxmemory"
        else:  # a failover left the bridge on a replica: Redis refuses writes with READONLY
            redis.replicaof("127.0.0.1", 1)
            said = "read only replica"
        events = _run(1).completed().events
        refused = bridge.post(events)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert said in refused.json()["error"]
        ready = bridge.client.get(f"{bridge.url}/readyz")
        assert ready.status_code == 503 and said in " ".join(ready.json()["reasons"])

        redis.config_set("maxmemory", 0)
        redis.replicaof("NO", "ONE")
        again = bridge.post(events)  # the producer's re-send
        assert again.status_code == 200 and again.json()["accepted"] == len(events)
        assert not (tmp_path / "dead-letter.jsonl").exists()
        for i in (0, 1):
            trace_id = trace_id_for("durable-effect", "production", "shop", f"full-{i}").hex()
            got.wait_for(lambda trace_id=trace_id: len(got.trace(trace_id)) == 2, timeout=30)
    finally:
        bridge.close()
        server.close()


def test_a_redis_refusal_says_what_redis_said_and_not_the_script_that_met_it():
    server = RedisServer().start()
    try:
        store = RedisStore(server.url, seen_ttl_seconds=3600)
        server.client().replicaof("127.0.0.1", 1)  # a failover left the bridge on a replica
        with pytest.raises(StoreUnavailable) as refused:
            store.run(lambda tx: tx.save("k", b"x", 1.0))
        assert str(refused.value) == "redis refused: You can't write against a read only replica."
    finally:
        server.close()


def test_a_redis_out_of_memory_still_drains_the_outbox_so_memory_comes_back():
    server = RedisServer().start()
    try:
        store = RedisStore(server.url, seen_ttl_seconds=3600)
        store.run(lambda tx: tx.outbox_add([("r", bytes(100)) for _ in range(10)]))
        redis = server.client()
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", 1)
        # A MULTI is refused whole out of memory, even an acknowledgement that frees memory.
        while rows := store.outbox_peek(4):
            store.outbox_ack([row.id for row in rows])
        assert store.outbox_depth() == 0
    finally:
        server.close()


def test_a_span_deleted_but_not_acknowledged_before_a_crash_is_acknowledged_at_the_next_read():
    server = RedisServer().start()
    try:
        store = RedisStore(server.url, seen_ttl_seconds=3600)
        store.run(lambda tx: tx.outbox_add([("r", b"gone"), ("r", b"kept")]))
        first, _kept = store.outbox_peek(10)
        server.client().xdel("otel-bridge:outbox", first.id)  # the crash came between XDEL and XACK
        assert [row.payload for row in store.outbox_peek(10)] == [b"kept"]
        assert server.client().xpending("otel-bridge:outbox", "exporters")["pending"] == 1
    finally:
        server.close()


def test_a_bridge_whose_disk_fills_during_a_backend_outage_delivers_everything_it_took_once_each(tmp_path, otlp_http):
    received = otlp_http.received
    otlp_http.up = False  # the backend is away: spans pile up in the outbox until the disk is full
    with small_filesystem(tmp_path / "disk", 32) as disk:
        (disk / "other.log").write_bytes(bytes(12 * 2**20))  # someone else's file, deleted later
        bridge = BridgeProcess(
            tmp_path, otlp_http.endpoint, state=str(disk / "state.db"), disk_reserve_mib="6", settle_seconds="0"
        ).start()
        try:
            taken, refused, i = [], None, 0
            while refused is None and i < 5000:
                run = WorkflowRun("full", workflow_id=f"disk-{i}").started().step_started("a").after(1)
                run.step_failed("a", 1, message="x" * 3000).failed("y" * 3000, step="a")  # spans of ~6 KB
                # At a steady pace: the reserve is sized for what comes between two checkpoints (a
                # second apart), not for a disk filled from empty within one.
                time.sleep(0.02)
                answer = bridge.post(run.events)
                if answer.status_code == 503:
                    refused = answer
                else:
                    assert answer.status_code == 200
                    taken.append(run.workflow_id)
                i += 1
            assert refused is not None and "disk is full" in refused.json()["error"], "the disk never filled"
            assert refused.headers["retry-after"]

            otlp_http.up = True
            want = {trace_id_for("durable-effect", "production", "shop", w).hex() for w in taken}
            received.wait_for(lambda: want <= {s.trace_id for s in received.spans}, timeout=60)
            received.wait_for(lambda: _depth(bridge) == 0, timeout=30)
            # Each span once: acknowledged as it was delivered, not sent again at every drain.
            ids = [s.span_id for s in received.spans if s.trace_id in want]
            assert len(ids) == len(set(ids)) == 2 * len(taken)

            assert bridge.post(run.events).status_code == 503  # the room is the drain's, not new batches'
            # Told on /metrics for an alert: the events refused, and why (the first refusal and this one).
            refused_events = _metric(
                bridge, 'otel_bridge_events_refused_total{reason="store_unavailable",receiver="http"'
            )
            assert refused_events >= 2 * len(run.events)
            assert _metric(bridge, 'otel_bridge_events_refused_total{reason="outbox_full"') == 0
            (disk / "other.log").unlink()
            received.wait_for(lambda: bridge.post(run.events).status_code == 200, timeout=10)
        finally:
            bridge.close()


def _metric(bridge: BridgeProcess, series: str) -> float:
    """The sum of the /metrics lines that start with `series` (a name, or a name and its first labels)."""
    text = bridge.client.get(f"{bridge.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


def _depth(bridge: BridgeProcess) -> float:
    return _metric(bridge, "otel_bridge_outbox_depth")
