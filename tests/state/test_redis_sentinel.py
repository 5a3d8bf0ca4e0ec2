"""A Redis state whose primary Sentinels watch (`redis+sentinel://`): the bridge asks the Sentinels where the
primary is, and after a failover writes to the replica made primary — an address of the old primary
would lead to a server that is gone, or comes back as a replica refusing every write. Against real
redis-servers and a real Sentinel (Debian's redis-server in sentinel mode)."""

import socket
import time
from collections.abc import Iterator

import pytest
from builders import WorkflowRun
from pki import make_pki
from pydantic import ValidationError
from redis_server import SentinelServer, TlsRedisServer, free_port

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.preflight import check
from otel_bridge.sources.wire import every_reason
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.store import StoreUnavailable
from otel_bridge.urls import sentinels_of


@pytest.fixture
def sentinel(tmp_path, primary, replica) -> Iterator[SentinelServer]:
    server = SentinelServer(tmp_path, primary).start()
    deadline = time.monotonic() + 30
    # Known to it once it has asked the primary: its replica too, which a failover needs.
    while not server.client().execute_command("SENTINEL", "REPLICAS", server.service):
        assert time.monotonic() < deadline, "the Sentinel did not find the replica"
        time.sleep(0.1)
    yield server
    server.close()


def _pipeline(url: str) -> Pipeline:
    settings = Settings(state=url, store_timeout_seconds=2, settle_seconds=0)
    return Pipeline(RedisStore(url, seen_ttl_seconds=3600, timeout_seconds=2), MetricsHub(), settings)


def _ingested_as_a_producer_resends(pipeline: Pipeline, events: list[dict], seconds: float = 20) -> None:
    """As the producer's tracker does: a batch refused (503) is sent again until it is taken."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            report = pipeline.ingest(events)
            assert report.rejected == []
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the batch was never taken after the failover"
            time.sleep(0.2)


def test_the_state_is_kept_on_the_primary_the_sentinels_watch(primary, replica, sentinel):
    pipeline = _pipeline(sentinel.url)
    pipeline.ingest(WorkflowRun(workflow_id="watched").started().events)
    assert any(b"watched" in key for key in primary.client().keys("*"))
    pipeline.store.close()


def test_after_a_failover_batches_go_to_the_replica_made_primary_and_nothing_answered_is_lost(
    primary, replica, sentinel
):
    pipeline = _pipeline(sentinel.url)
    run = WorkflowRun(workflow_id="failed-over").started().step_started("a")
    pipeline.ingest(run.events)
    deadline = time.monotonic() + 10
    while not any(b"failed-over" in key for key in replica.client().keys("*")):  # replicated
        assert time.monotonic() < deadline
        time.sleep(0.05)

    primary.kill()
    assert sentinel.wait_failed_over_from(primary.port) == replica.port

    _ingested_as_a_producer_resends(pipeline, run.after(10).step_completed("a").completed(["a"]).events)
    assert pipeline.settle_due(horizon=time.time() + 3600, told_all=True) == 2  # the step and the root
    assert replica.client().info("replication")["role"] == "master"
    pipeline.store.close()


def test_check_and_the_stream_reach_redis_through_its_sentinels(primary, replica, sentinel, tmp_path):
    settings = Settings(
        state=sentinel.url,
        stream_url=sentinel.url,
        dead_letter=tmp_path / "d.jsonl",
        span_dead_letter=tmp_path / "s.jsonl",
    )
    found = {f.what: f for f in check(settings, timeout_seconds=2)}
    named = f"Redis {sentinel.url} (the Sentinels' primary now 127.0.0.1:{primary.port}): "
    assert found["state"].ok is True and found["state"].detail.startswith(named)
    assert found["stream"].ok is True, found["stream"].detail

    primary.kill()  # where the primary is after a failover is what is said
    sentinel.wait_failed_over_from(primary.port)
    found = {f.what: f for f in check(settings, timeout_seconds=2)}
    assert f"(the Sentinels' primary now 127.0.0.1:{replica.port})" in found["state"].detail


def test_a_primary_and_its_sentinel_over_tls_are_both_reached_with_the_ca_the_url_gives(tmp_path):
    # `rediss+sentinel://…?ssl_ca_certs=…`: the Sentinel, and the primary it names, each over TLS only.
    pki = make_pki(tmp_path)
    primary = TlsRedisServer(pki)
    sentinel = SentinelServer(tmp_path, primary, pki=pki).start()
    try:
        pipeline = _pipeline(sentinel.url)
        pipeline.ingest(WorkflowRun(workflow_id="encrypted").started().events)
        assert any(b"encrypted" in key for key in primary.client().keys("*"))
        pipeline.store.close()
    finally:
        sentinel.close()
        primary.close()


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db"),
    [
        ("redis+sentinel://s1/mymaster", [("s1", 26379)], "mymaster", 0),
        ("redis+sentinel://:pw@s1:26380,s2/cache/3", [("s1", 26380), ("s2", 26379)], "cache", 3),
        (
            "rediss+sentinel://u:pw@[::1]:5000,[fe80::1]/m/1?ssl_ca_certs=/ca.pem",
            [("::1", 5000), ("fe80::1", 26379)],
            "m",
            1,
        ),
    ],
)
def test_a_sentinel_url_names_the_sentinels_their_service_and_the_database(url, sentinels, service, db):
    assert sentinels_of(url) == (sentinels, service, db)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://:secret@s1:26379/", "names no service"),
        ("redis+sentinel://s1:port/mymaster", "'s1:port' is no host[:port] of a Sentinel"),
        ("redis+sentinel://s1/mymaster/zero", "the database 'zero' is no number"),
    ],
)
def test_a_sentinel_url_it_cannot_read_is_refused_with_what_is_wrong_and_no_password(url, said):
    with pytest.raises(ValidationError) as refused:
        Settings(state=url)
    told = every_reason(refused.value)  # what `otel-bridge serve` prints, and exits 2
    assert said in told and "secret" not in told
    with pytest.raises(ValidationError, match="names no service"):
        Settings(stream_url="redis+sentinel://s1")


def test_the_tests_sentinel_moves_to_another_port_when_another_server_took_the_one_it_found_free(
    tmp_path, primary, monkeypatch
):
    # The fixture's own behaviour, as the TLS Redis's: the suite runs two test files at once.
    import redis_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(redis_server, "free_port", lambda: next(ports, None) or free_port())
        server = SentinelServer(tmp_path, primary).start()
        try:
            assert server.port != taken.getsockname()[1] and server.client().ping()
            assert str(server.port) in server.url
        finally:
            server.close()
