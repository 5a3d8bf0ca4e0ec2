"""What Redis's own settings can cost the batches the bridge answered, said to the operator as it starts
and by `otel-bridge check`: keys evicted when Redis is full, and what a crash of Redis loses when it
keeps too little on disk. Against a real redis-server started with those settings."""

import pytest
import redis
from redis_server import RedisServer

from otel_bridge.state.redis_store import RedisStore


def _risks(*redis_args: str, wait_replicas: int = 0, user: str = "") -> list[str]:
    server = RedisServer(None, *redis_args).start()
    try:
        if user:  # an ACL user without some commands, as managed services give
            name, _, denied = user.partition(":")
            commands = ["+@all", *(f"-{command}" for command in denied.split(","))]
            server.client().acl_setuser(name, enabled=True, passwords=["+pw"], keys=["*"], commands=commands)
        url = server.url.replace("redis://", f"redis://{user.partition(':')[0]}:pw@") if user else server.url
        store = RedisStore(url, seen_ttl_seconds=60, wait_replicas=wait_replicas)
        try:
            return store.risks()
        finally:
            store.close()
    finally:
        server.close()


@pytest.mark.parametrize(
    ("policy", "risk"),
    [
        ("noeviction", None),
        ("volatile-lru", "counted again"),  # only keys with a time to live: seen ids, ended runs kept
        ("volatile-ttl", "counted again"),
        ("allkeys-lru", "already acknowledged"),  # any key: open runs, the outbox
        ("allkeys-random", "already acknowledged"),
    ],
)
def test_redis_says_what_its_eviction_policy_can_cost(policy, risk):
    said = [r for r in _risks("--maxmemory-policy", policy) if "maxmemory-policy" in r]
    if risk is None:
        assert said == []
    else:
        assert len(said) == 1 and policy in said[0] and risk in said[0] and "noeviction" in said[0]


def test_redis_that_will_not_say_its_eviction_policy_is_named_for_the_operator_to_check():
    # Managed services forbid CONFIG, as does an ACL user without it.
    said = [r for r in _risks(user="bridge:config") if "maxmemory-policy" in r]
    assert len(said) == 1 and "cannot read" in said[0] and "noeviction" in said[0]


def test_a_redis_that_keeps_nothing_on_disk_is_said_to_lose_every_answered_batch_at_a_restart():
    # The tests' own servers run so (`--save "" --appendonly no`), as a Redis started bare in a container
    # with its data in no volume does.
    (said,) = _risks()
    assert said.startswith("Redis keeps nothing on disk (appendonly no, no save points): a restart of Redis loses")
    assert said.endswith(
        "set appendonly yes (appendfsync everysec), or give Redis a replica and the bridge --wait-replicas 1"
    )


def test_a_redis_that_only_takes_snapshots_is_said_to_lose_what_came_since_the_last(tmp_path):
    (said,) = _risks("--save", "60 1", "--dir", str(tmp_path))
    assert said.startswith("Redis writes no append-only file, only snapshots (save 60 1): a crash of Redis loses")


@pytest.mark.parametrize("fsync", ["everysec", "always"])
def test_a_redis_writing_an_append_only_file_before_it_answers_risks_nothing(tmp_path, fsync):
    # Written (not yet synced) before each answer: a crash of Redis's process loses nothing.
    assert _risks("--appendonly", "yes", "--appendfsync", fsync, "--dir", str(tmp_path)) == []


def test_an_append_only_file_the_system_flushes_when_it_likes_is_said_to_risk_a_machine_crash(tmp_path):
    (said,) = _risks("--appendonly", "yes", "--appendfsync", "no", "--dir", str(tmp_path))
    assert "appendfsync no" in said and "crash of Redis's machine" in said and "appendfsync everysec" in said


def test_batches_waiting_for_replicas_need_no_disk_a_failover_keeps_them():
    # `wait_replicas`: what was answered is on a replica too, which a failover makes the primary.
    assert _risks(wait_replicas=1) == []


def test_a_redis_that_will_not_show_its_settings_is_said_to_keep_at_most_snapshots():
    # CONFIG forbidden, INFO allowed (managed services): no append-only file is told by INFO alone.
    said = [r for r in _risks(user="bridge:config") if "maxmemory-policy" not in r]
    assert said == [
        "Redis writes no append-only file, at most snapshots: a crash of Redis loses the batches answered since"
        " its last snapshot; set appendonly yes (appendfsync everysec), or give Redis a replica and the bridge"
        " --wait-replicas 1"
    ]


def test_a_redis_that_will_not_say_how_it_keeps_its_data_is_named_for_the_operator_to_check():
    eviction, persistence = _risks(user="bridge:config,info")
    assert eviction == "cannot read Redis's maxmemory-policy (CONFIG GET refused); make sure it is noeviction"
    assert persistence.startswith("cannot read Redis's persistence (")
    assert persistence.endswith("make sure it writes an append-only file (appendonly yes)")


def test_on_a_cluster_the_primary_holding_the_bridges_keys_is_the_one_asked(redis_cluster_url):
    # Every key of the bridge's is in one slot (`{otel-bridge}`): what the other shards keep is not its.
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    holder = cluster.get_node_from_key("{otel-bridge}:outbox")
    primaries = cluster.get_primaries()
    assert holder in primaries and len(primaries) == 3
    store = RedisStore(redis_cluster_url, seen_ttl_seconds=60)

    def keeping_a_log(nodes) -> list[str]:
        for node in primaries:
            node.redis_connection.config_set("appendonly", "yes" if node in nodes else "no")
        return [risk for risk in store.risks() if "append-only" in risk or "on disk" in risk]

    try:
        assert keeping_a_log([holder]) == []
        (said,) = keeping_a_log([node for node in primaries if node is not holder])
        assert said.startswith("Redis keeps nothing on disk")
    finally:
        keeping_a_log([])  # as the session's cluster was started
        store.close()
        cluster.close()
