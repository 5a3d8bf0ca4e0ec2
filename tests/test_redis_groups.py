"""Consumers gone from a Redis consumer group are forgotten; the others, and what they hold, are not."""

import threading
import time

import pytest
import redis

from otel_bridge.consumer import IngestReport
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.redis_stream import StreamReceiver
from otel_bridge.redis_client import connect
from otel_bridge.redis_groups import Departures
from otel_bridge.state.redis_store import RedisStore

KEY, GROUP = "{t}:stream", "bridges"


def _read(client, name: str, acknowledged: bool = True) -> None:
    """`name` reads an entry of the group (and acknowledges it): a consumer Redis keeps listing from then on."""
    client.xadd(KEY, {"n": "1"})
    entries = client.xreadgroup(GROUP, name, {KEY: ">"})[0][1]
    if acknowledged:
        client.xack(KEY, GROUP, *[entry_id for entry_id, _fields in entries])


def _consumers(client, key: str = KEY, group: str = GROUP) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(key, group)}


def _group_of_its_own(url: str):
    client = connect(url)
    client.delete(KEY)
    client.xgroup_create(KEY, GROUP, id="0", mkstream=True)
    return client


@pytest.fixture(params=["server", "cluster"])
def client(request):
    client = _group_of_its_own(
        request.getfixturevalue("redis_url" if request.param == "server" else "redis_cluster_url")
    )
    yield client
    client.close()


def test_a_consumer_silent_past_the_time_with_nothing_pending_is_forgotten_and_no_other(client):
    _read(client, "gone")
    _read(client, "dead-with-entries", acknowledged=False)  # claimed by the others first, then forgotten
    _read(client, "me")
    time.sleep(0.3)
    _read(client, "reading")
    departures = Departures(KEY, GROUP, "me", after_seconds=0.2)
    assert departures.sweep(client) == ["gone"]
    assert _consumers(client) == {"dead-with-entries": 1, "me": 0, "reading": 0}
    assert departures.forgotten == 1


def test_the_group_is_looked_at_once_a_while_however_often_asked(redis_url):
    client = _group_of_its_own(redis_url)
    now = [100.0]
    departures = Departures(KEY, GROUP, "me", after_seconds=0, every_seconds=60, clock=lambda: now[0])
    _read(client, "a")
    assert departures.sweep(client) == ["a"]
    _read(client, "b")
    now[0] += 59
    assert departures.sweep(client) == []
    now[0] += 1
    assert departures.sweep(client) == ["b"]


def test_a_consumer_forgotten_that_comes_back_is_named_again_by_its_next_read(redis_url):
    client = _group_of_its_own(redis_url)
    _read(client, "away")
    assert Departures(KEY, GROUP, "me", after_seconds=0).sweep(client) == ["away"]
    _read(client, "away", acknowledged=False)
    assert _consumers(client) == {"away": 1}


def test_a_redis_away_is_no_failure_of_the_read_loop_and_is_looked_at_again_later(redis_url):
    away = redis.Redis(port=1, socket_connect_timeout=0.2)
    departures = Departures(KEY, GROUP, "me", after_seconds=0, every_seconds=0)
    assert departures.sweep(away) == []


def test_the_stream_receiver_forgets_the_bridges_gone_from_its_group(redis_url, tmp_path):
    client = _group_of_its_own(redis_url)
    _read(client, "old-pod:4380")  # a bridge of an earlier deploy

    class Taking:
        def ingest(self, events):
            return IngestReport(accepted=len(events))

    receiver = StreamReceiver(
        redis_url,
        KEY,
        GROUP,
        "new-pod:4380",
        Taking(),
        DeadLetters(tmp_path / "dead.jsonl", 10**6, 1),
        block_ms=50,
        forget_after_seconds=0.2,
    )
    time.sleep(0.3)
    stop = threading.Event()
    consuming = threading.Thread(target=receiver.run, args=(stop,))
    consuming.start()
    try:
        client.xadd(KEY, {"n": "2"})
        deadline = time.monotonic() + 10
        while receiver.departures.forgotten == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        consuming.join()
        receiver.close()
    assert "old-pod:4380" not in _consumers(client)


def test_the_redis_state_forgets_the_outbox_consumers_of_processes_gone(redis_url):
    store = RedisStore(redis_url, seen_ttl_seconds=60, prefix="forget:")
    client = redis.Redis.from_url(redis_url)
    outbox = "forget:outbox"
    client.xadd(outbox, {"resource": "r", "payload": b"p"})
    taken = client.xreadgroup("exporters", "host-1234", {outbox: ">"})[0][1]  # a process of the past
    client.xack(outbox, "exporters", *[entry_id for entry_id, _fields in taken])
    store.departures = Departures(outbox, "exporters", "me", after_seconds=0)
    try:
        store.outbox_peek(10)
        assert "host-1234" not in _consumers(client, outbox, "exporters")
    finally:
        store.close()


def test_a_redis_whose_acl_refuses_the_script_is_told_once_and_the_consumers_stay(redis_url, caplog):
    client = _group_of_its_own(redis_url)
    _read(client, "gone")
    client.acl_setuser("no-scripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-eval"])
    limited = redis.Redis.from_url(redis_url, username="no-scripts", password="pw")
    departures = Departures(KEY, GROUP, "me", after_seconds=0, every_seconds=0)
    assert departures.sweep(limited) == [] and departures.sweep(limited) == []
    told = [r for r in caplog.records if "cannot forget the consumers gone from the group" in r.getMessage()]
    assert len(told) == 1 and "no permissions to run the 'eval' command" in told[0].getMessage()
    assert "gone" in _consumers(client)
    client.acl_deluser("no-scripts")
