"""`wait_replicas`: on a Redis with replicas, a batch is answered only once they hold it, so that a
failover (a replica made primary) cannot lose what was answered; one they do not hold in time is
refused, kept, and taken as duplicates when the producer sends it again."""

import os
import signal
import threading

import pytest
from builders import WorkflowRun
from redis_server import RedisServer

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.store import StoreUnavailable


def _pipeline(url: str, wait_replicas: int) -> Pipeline:
    # A store's wait is half its timeout: 1 s here.
    settings = Settings(state=url, wait_replicas=wait_replicas, store_timeout_seconds=2, settle_seconds=0)
    store = RedisStore(url, seen_ttl_seconds=3600, timeout_seconds=2, wait_replicas=wait_replicas)
    return Pipeline(store, MetricsHub(), settings)


def _stopped(server: RedisServer) -> None:
    """The server frozen (SIGSTOP): it takes no part in replication until continued."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def _continued(server: RedisServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


def test_a_batch_is_answered_only_once_the_replica_holds_it(primary, replica):
    pipeline = _pipeline(primary.url, wait_replicas=1)
    run = WorkflowRun(workflow_id="replicated").started().step_started("a")
    answered = threading.Event()
    _stopped(replica)
    worker = threading.Thread(target=lambda: (pipeline.ingest(run.events), answered.set()))
    worker.start()
    try:
        assert not answered.wait(0.3)  # committed on the primary, and waiting for the replica
    finally:
        _continued(replica)
    worker.join(10)
    assert answered.is_set()

    # The primary dies the moment after; its replica, made primary, has the run.
    primary.kill()
    replica.client().execute_command("REPLICAOF", "NO", "ONE")
    promoted = _pipeline(replica.url, wait_replicas=0)
    assert [r.run.run_id for r in promoted.runs_named("replicated")] == ["replicated"]
    report = promoted.ingest(run.events)
    assert (report.accepted, report.duplicates) == (0, 2)


def test_a_batch_the_replica_does_not_hold_in_time_is_refused_then_taken_as_duplicates(primary, replica):
    pipeline = _pipeline(primary.url, wait_replicas=1)
    run = WorkflowRun(workflow_id="lagging").started().step_started("a").after(1).step_completed("a").completed()
    _stopped(replica)
    try:
        with pytest.raises(
            StoreUnavailable,
            match=r"on 0 of the 1 replicas asked for \(wait_replicas\) after 1 s: the batch is kept, and taken as dup",
        ):
            pipeline.ingest(run.events)
        assert pipeline.refused is not None  # unready meanwhile: /health says why
    finally:
        _continued(replica)
    report = pipeline.ingest(run.events)  # the producer sends it again
    assert (report.accepted, report.duplicates) == (0, len(run.events))
    assert pipeline.refused is None
    assert pipeline.settle_due(horizon=float("inf")) == 2  # the run's root and step, once


def test_a_run_closed_by_hand_is_answered_only_once_the_replica_holds_the_close(primary, replica):
    # As a batch is: a close the replica does not hold would be undone by a failover, the run open again.
    pipeline = _pipeline(primary.url, wait_replicas=1)
    pipeline.ingest(WorkflowRun(workflow_id="stuck").started().step_started("a").events)
    _stopped(replica)
    try:
        with pytest.raises(StoreUnavailable, match=r"^closed, but not yet held by the replicas asked for.*on 0 of"):
            pipeline.close("stuck", "lost alarm")
    finally:
        _continued(replica)
    assert pipeline.close("stuck", "lost alarm") == []  # closed all the same: nothing open by that id

    pipeline.ingest(WorkflowRun(workflow_id="stuck-too").started().events)
    assert len(pipeline.close("stuck-too", "lost alarm")) == 1  # the replica holds it: answered
    primary.kill()
    replica.client().execute_command("REPLICAOF", "NO", "ONE")
    assert _pipeline(replica.url, wait_replicas=0).runs_named("stuck-too")[0].closed


def test_without_replicas_to_wait_for_a_batch_is_answered_once_the_primary_has_it(primary, replica):
    pipeline = _pipeline(primary.url, wait_replicas=0)
    _stopped(replica)
    try:
        assert pipeline.ingest(WorkflowRun().started().events).accepted == 1
    finally:
        _continued(replica)


def test_replicas_too_few_for_the_wait_are_told(primary, replica):
    store = RedisStore(primary.url, seen_ttl_seconds=60, wait_replicas=2)
    assert store.replicas() == (
        1,
        "Redis has 1 replica connected, and batches wait for 2 (wait_replicas): every batch is refused (503)"
        " until enough are",
    )
    assert RedisStore(primary.url, seen_ttl_seconds=60, wait_replicas=1).replicas() == (1, None)


def test_a_redis_cluster_answers_once_the_replica_of_the_bridges_primary_holds_the_batch(tmp_path):
    from redis_server import RedisClusterNodes

    cluster = RedisClusterNodes(tmp_path / "cluster", replicas=1).start()
    try:
        pipeline = _pipeline(cluster.url, wait_replicas=1)
        assert pipeline.ingest(WorkflowRun().started().events).accepted == 1
        assert isinstance(pipeline.store, RedisStore)
        assert pipeline.store.replicas() == (1, None)
    finally:
        cluster.close()


def test_wait_replicas_is_refused_for_a_sqlite_state():
    with pytest.raises(ValueError, match="wait_replicas is for a Redis state"):
        Settings(state="otel-bridge.db", wait_replicas=1)
