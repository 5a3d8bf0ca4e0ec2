"""The shared store: Redis, so several bridge replicas behind a load balancer build one trace per run.

A transaction WATCHes every key it reads (job events' seen ids, run states and
facts, the runs of a batch read ahead by one script) and writes with one script
inside MULTI/EXEC; when another replica changed one of them first, EXEC fails and
the whole transaction runs again on fresh reads (optimistic concurrency). Seen ids
are keys with a time-to-live, so the dedup memory expires by itself. The outbox
is a stream read through one consumer group: each span goes to one replica, is
deleted when the backend acknowledged it, and spans a crashed replica had taken
are claimed by another after `claim_after_seconds` (a replica gone for an hour is forgotten
from the group: `redis_groups`). On a Redis Cluster every key
carries one hash tag, so every transaction and script stays within one slot.
"""

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from hashlib import blake2b
from typing import Any, cast

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError, WatchError
from redis.sentinel import SentinelConnectionPool

from otel_bridge.redis_client import REDIS_ERRORS, connect, is_cluster, tls_hint
from otel_bridge.redis_groups import Departures
from otel_bridge.state.store import OutboxRow, Passed, StoreOpenError, StoreUnavailable, T, own_name
from otel_bridge.urls import without_secrets

log = logging.getLogger(__name__)

_GROUP = "exporters"
# A transaction's writes as one command: each write is its name, how many arguments it has, and
# those arguments, one after another in ARGV, run in order. redis-py spends ~7-10 µs of the
# bridge's CPU on each command it sends in a MULTI (packing it, then reading its QUEUED and its
# reply), and a batch of 100 events wrote ~110 of them: as one script, a command is an ARGV
# slice packed in C. EVAL, not EVALSHA: inside MULTI a script Redis has forgotten (a restart)
# would fail alone, after the WATCH had passed; Redis caches the compiled script by its digest.
_WRITE = """
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  redis.call(ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
  i = i + 2 + n
end
"""
# A script unpacks at most ~8,000 arguments for one command: fact rows go a thousand per HSET.
_ROWS_PER_WRITE = 1000
# What a transaction reads ahead, as one command too: KEYS[1] is the due index, ARGV how many runs,
# each run's key, state key and facts key, then the keys of journals read alone. A reply per run: its
# state (or nil), its due score (or nil), its facts as field, value, …; then each journal's.
# Both scripts name the due index as their one key: a cluster client sends a script to the node of its
# keys, and every key of the bridge's is in that node's slot (`RedisStore`).
_READ = """
local due, n, out, i = KEYS[1], tonumber(ARGV[1]), {}, 2
for _ = 1, n do
  local run, state, facts = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  out[#out + 1] = {redis.call('GET', state), redis.call('ZSCORE', due, run), redis.call('HGETALL', facts)}
  i = i + 3
end
for j = i, #ARGV do
  out[#out + 1] = redis.call('HGETALL', ARGV[j])
end
return out
"""
# Stream entries as the client gives them (it does not decode responses): (id, fields).
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
_MAX_ATTEMPTS = 50


# A lease let go by its holder alone: one that lapsed and was taken by another is not taken from it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Renew the lease its holder holds, or take it when no one does: one script, so that a lease lapsing between
# a read and a renewal is never renewed for another.
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""


def _refusal(exc: Exception) -> StoreUnavailable | None:
    """Redis's own refusals: unreachable, or refusing writes (out of memory under `noeviction`, a
    read-only replica after a failover, a failed snapshot with `stop-writes-on-bgsave-error`)."""
    if isinstance(exc, WatchError) or not isinstance(exc, REDIS_ERRORS):
        return None  # another replica won the race (run again), or not Redis's doing
    if isinstance(exc, (RedisConnectionError, redis.exceptions.TimeoutError, RedisClusterException)):
        return StoreUnavailable(f"redis unavailable: {exc}")
    # A pipeline's error names its command with every argument (spans' bytes), and one raised inside
    # a script the script and its line: keep what Redis said.
    said = str(exc).rpartition(" of pipeline caused error: ")[2].partition(" script: ")[0]
    return StoreUnavailable(f"redis refused: {said}")


@contextmanager
def _away_said() -> Iterator[None]:
    """A read while Redis is away: StoreUnavailable ("redis unavailable"), which the receivers answer 503 and
    the background loops tell in one line, not the client's own error (a 500 and a traceback)."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc


def eviction_risk(policy: str) -> str | None:
    """What Redis's `maxmemory-policy` can cost the bridge's promises once Redis is full, or None when
    nothing: `noeviction` refuses writes instead (503s the producers retry), and every other policy
    drops keys the bridge wrote. Managed Redis services often default to `volatile-lru`."""
    if policy == "noeviction":
        return None
    advice = "set maxmemory-policy to noeviction: a full Redis then refuses batches (503, retried) instead"
    if policy.startswith("volatile-"):
        return (
            f"Redis evicts keys with a time to live when full (maxmemory-policy {policy}): the seen ids of job"
            f" events and the ended runs kept for late events may go early, and an event re-sent after that is"
            f" counted again; {advice}"
        )
    return (
        f"Redis evicts any key when full (maxmemory-policy {policy}): open runs' state and spans waiting in the"
        f" outbox may go, and events already acknowledged with them; {advice}"
    )


_KEEP_IT = "set appendonly yes (appendfsync everysec), or give Redis a replica and the bridge --wait-replicas 1"


def persistence_risk(aof: bool, appendfsync: str | None, save: str | None) -> str | None:
    """What Redis's persistence can cost batches the bridge answered once Redis goes down, or None when
    nothing: an append-only file written before each answer keeps them through a crash of Redis's process.
    `appendfsync`, `save`: Redis's settings (`save ""` takes no snapshot), None where it would not say."""
    if aof:
        if appendfsync != "no":
            return None
        return (
            "Redis leaves flushing its append-only file to the system (appendfsync no): a crash of Redis's"
            " machine can lose the last ~30 s of batches already answered; set appendfsync everysec"
        )
    if save == "":
        return (
            "Redis keeps nothing on disk (appendonly no, no save points): a restart of Redis loses every batch"
            f" already answered that is not sent yet (open runs, seen ids, spans waiting for export); {_KEEP_IT}"
        )
    taken = f"only snapshots (save {save})" if save else "at most snapshots"
    return (
        f"Redis writes no append-only file, {taken}: a crash of Redis loses the batches answered since its last"
        f" snapshot; {_KEEP_IT}"
    )


def _glob_escaped(text: str) -> str:
    """`text` matched literally in a SCAN pattern (a service may be named `a*` or `[x]`)."""
    return "".join(f"\\{ch}" if ch in "*?[]\\" else ch for ch in text)


def _config(client: Any, name: str) -> str | None:
    """One of Redis's settings, or None where it will not say (CONFIG forbidden or renamed)."""
    try:
        answer = cast(dict[Any, Any], client.config_get(name))
    except REDIS_ERRORS:
        return None
    value = next(iter(answer.values()), None)
    return value.decode() if isinstance(value, bytes) else value


def _mapping(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash as HGETALL answers a script: field, value, field, value, …"""
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=True))


def _in_order(rows: dict[bytes, bytes]) -> list[bytes]:
    return [blob for _n, blob in sorted(rows.items(), key=lambda row: int(row[0]))]


class RedisTransaction:
    def __init__(self, client: Any, pipe: Any, prefix: str, seen_ttl: float) -> None:
        self._client = client
        self._pipe = pipe
        self._p = prefix
        self._seen_ttl = max(int(seen_ttl), 1)
        # The writes, run by one script at commit (`_WRITE`): command, argument count, arguments.
        self._writes: list[Any] = []
        # Runs read ahead by `prefetch`: key -> (state, due score, fact rows).
        self._fetched: dict[str, tuple[bytes | None, float | None, dict[bytes, bytes]]] = {}

    def unseen(self, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        keys = [f"{self._p}seen:{e}" for e in event_ids]
        self._pipe.watch(*keys)
        # As a command: a cluster's pipeline blocks its multi-key `mget` (these keys share one slot).
        known = self._pipe.execute_command("MGET", *keys)
        return {e for e, seen in zip(event_ids, known, strict=True) if seen is None}

    def _write(self, command: str, *args: Any) -> None:
        self._writes += (command, len(args), *args)

    def mark_seen(self, event_ids: Iterable[str], now: float) -> None:
        for e in event_ids:
            self._write("SET", f"{self._p}seen:{e}", int(now), "EX", self._seen_ttl)

    def prefetch(self, keys: list[str], journals: Iterable[str] = ()) -> None:
        wanted = [k for k in dict.fromkeys(keys) if k not in self._fetched]
        rows_only = [k for k in dict.fromkeys(journals) if k not in self._fetched]
        if not wanted and not rows_only:
            return
        state_keys = [f"{self._p}state:{k}" for k in wanted]
        fact_keys = [f"{self._p}facts:{k}" for k in wanted]
        journal_keys = [f"{self._p}facts:{k}" for k in rows_only]
        self._pipe.watch(*state_keys, *fact_keys, *journal_keys)
        # Read after the WATCH (any connection will do): a change after this read is a change after
        # the WATCH, and fails the EXEC as it would have on reads one by one.
        runs = [part for triple in zip(wanted, state_keys, fact_keys, strict=True) for part in triple]
        answers = self._client.eval(_READ, 1, f"{self._p}due", len(wanted), *runs, *journal_keys)
        for key, (blob, due, rows) in zip(wanted, answers[: len(wanted)], strict=True):
            self._fetched[key] = (blob, None if due is None else float(due), _mapping(rows))
        for key, rows in zip(rows_only, answers[len(wanted) :], strict=True):
            self._fetched[key] = (None, None, _mapping(rows))

    def load(self, key: str) -> tuple[bytes, float | None] | None:
        if key in self._fetched:
            blob, due, _facts = self._fetched[key]
            return None if blob is None else (blob, due)
        state_key = f"{self._p}state:{key}"
        self._pipe.watch(state_key)
        blob = self._pipe.get(state_key)
        if blob is None:
            return None
        return blob, self._pipe.zscore(f"{self._p}due", key)

    def save(self, key: str, blob: bytes, due: float | None, overdue_at: float | None = None) -> None:
        # An expiry set by `expire_at` outlives the saves after it (a late event to a run kept for them).
        self._write("SET", f"{self._p}state:{key}", blob, "KEEPTTL")
        for index, score in (("due", due), ("overdue", overdue_at)):
            if score is None:
                self._write("ZREM", f"{self._p}{index}", key)
            else:
                self._write("ZADD", f"{self._p}{index}", score, key)

    def reschedule(self, key: str, due: float) -> None:
        self._write("ZADD", f"{self._p}due", due, key)

    def expire_at(self, key: str, when: float) -> bool:
        # Redis drops the key itself: no member of the due index (~200 bytes a run) for the week a run
        # is kept for late events, and no settling to delete it.
        self._write("PEXPIREAT", f"{self._p}state:{key}", int(when * 1000))
        return True

    def delete(self, key: str) -> None:
        self._write("DEL", f"{self._p}state:{key}", f"{self._p}facts:{key}")
        self._write("ZREM", f"{self._p}due", key)
        self._write("ZREM", f"{self._p}overdue", key)

    def facts(self, key: str) -> list[bytes]:
        if key in self._fetched:
            return _in_order(self._fetched[key][2])
        facts_key = f"{self._p}facts:{key}"
        self._pipe.watch(facts_key)
        return _in_order(self._pipe.hgetall(facts_key))

    def append(self, key: str, rows: list[tuple[int, bytes]]) -> None:
        for start in range(0, len(rows), _ROWS_PER_WRITE):
            chunk = rows[start : start + _ROWS_PER_WRITE]
            self._write("HSET", f"{self._p}facts:{key}", *(part for n, blob in chunk for part in (n, blob)))

    def forget(self, key: str) -> None:
        self._write("DEL", f"{self._p}facts:{key}")

    def due_after(self, now: float, limit: int, after: tuple[float, str] | None) -> list[tuple[float, str]]:
        # Not watched: every ingest touches the due index, and each key's state is watched when loaded.
        # Members of one score come in their bytes' order, as SQLite orders keys of one due (ASCII keys).
        # From the cursor's score on: the members of that score up to the cursor are read and dropped,
        # read more while they take the page's room (a batch's runs share one due).
        low: float | str = "-inf" if after is None else after[0]
        count = limit
        while True:
            got = self._client.zrangebyscore(f"{self._p}due", low, now, start=0, num=count, withscores=True)
            entries = [(float(score), member.decode()) for member, score in got]
            if after is not None:
                entries = [e for e in entries if e[0] > after[0] or e[1] > after[1]]
            if len(entries) >= limit or len(got) < count:
                return entries[:limit]
            count *= 2

    def outbox_add(self, rows: Iterable[tuple[str, bytes]]) -> None:
        for resource, payload in rows:
            self._write("XADD", f"{self._p}outbox", "*", "resource", resource, "payload", payload)

    def commit(self) -> None:
        self._pipe.multi()
        if self._writes:
            # As a command: a cluster's transaction pipeline has no `eval` of its own.
            self._pipe.execute_command("EVAL", _WRITE, 1, f"{self._p}due", *self._writes)
        self._pipe.execute()


class RedisStore:
    shared = True
    overdue_index_new = False  # earlier versions' runs enter the index at their next save
    outbox_passed: Passed | None = None  # no page of it to damage

    def __init__(
        self,
        url: str,
        seen_ttl_seconds: float,
        prefix: str = "otel-bridge:",
        claim_after_seconds: float = 60.0,
        timeout_seconds: float = 5.0,
        wait_replicas: int = 0,
    ) -> None:
        """`wait_replicas`: replicas that must hold what was committed before `confirm` returns, waited
        for at most half of `timeout_seconds` (the client's own timeout for an answer)."""
        self._wait_replicas = wait_replicas
        self._wait_ms = max(int(timeout_seconds * 500), 1)
        try:
            self._client: Any = connect(url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
            # On a cluster every key is in one hash slot, `{otel-bridge}`: a transaction WATCHes and writes
            # keys of many runs at once, and a cluster runs a transaction (and a script) within one slot only.
            # One shard holds the state, as one server did; the cluster gives it its failover.
            self.cluster = is_cluster(self._client)
            self._p = f"{{{prefix.rstrip(':')}}}:" if self.cluster else prefix
            self._seen_ttl = seen_ttl_seconds
            self._claim_after_ms = int(claim_after_seconds * 1000)
            # A consumer of its own for each store: a store reads its consumer's pending spans as its own, so two
            # that host and process named alike each sent the other's again.
            self._consumer = own_name()
            self._outbox = f"{self._p}outbox"
            # A consumer per store made: those of processes gone would pile up in the group for ever.
            self.departures = Departures(self._outbox, _GROUP, self._consumer)
            self._confirmed = f"{self._p}confirmed"
            self._ensure_group()
        except REDIS_ERRORS as exc:
            raise StoreOpenError(
                f"cannot use the redis state at {without_secrets(url)}: {exc}{tls_hint(exc, url)}"
            ) from exc

    def _ensure_group(self) -> None:
        """Create the outbox stream and its consumer group if they are missing (at start, or after Redis lost them)."""
        try:
            self._client.xgroup_create(self._outbox, _GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def risks(self) -> list[str]:
        holder = self._holder()
        said = [self._eviction_risk(holder)]
        if not self._wait_replicas:  # the replicas hold what was answered: a failover keeps it
            said.append(self._persistence_risk(holder))
        return [risk for risk in said if risk is not None]

    @staticmethod
    def _eviction_risk(holder: Any) -> str | None:
        policy = _config(holder, "maxmemory-policy")
        if policy is None:
            # Managed services rename or forbid CONFIG, and an ACL user may lack it: say what to check.
            return "cannot read Redis's maxmemory-policy (CONFIG GET refused); make sure it is noeviction"
        return eviction_risk(policy)

    @staticmethod
    def _persistence_risk(holder: Any) -> str | None:
        try:
            aof = bool(int(holder.info("persistence").get("aof_enabled", 0)))
        except REDIS_ERRORS as exc:
            return f"cannot read Redis's persistence ({exc}); make sure it writes an append-only file (appendonly yes)"
        return persistence_risk(aof, _config(holder, "appendfsync"), _config(holder, "save"))

    def refuses_batches(self) -> str | None:
        return None  # Redis says so itself, at each write (out of memory, read-only)

    def awaited(self) -> bool:
        return False  # optimistic: transactions run side by side and never wait for each other

    def quick_now(self) -> bool:
        return False  # every transaction is round trips to a server

    def run(self, work: Callable[[RedisTransaction], T]) -> T:
        for attempt in range(_MAX_ATTEMPTS):
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    tx = RedisTransaction(self._client, pipe, self._p, self._seen_ttl)
                    result = work(tx)
                    tx.commit()
                    return result
            except WatchError:
                # Another replica got there first: read again and redo, after a jittered pause
                # so that contenders do not collide again in lockstep.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            except TimeoutError as exc:
                raise StoreUnavailable(f"redis unavailable: {exc}") from exc
            except REDIS_ERRORS as exc:  # unreachable, or refusing writes: answered here, once
                refused = _refusal(exc)
                if refused is None:
                    raise
                raise refused from exc
        raise StoreUnavailable(f"gave up after {_MAX_ATTEMPTS} conflicting attempts")

    def confirm(self) -> None:
        if not self._wait_replicas:
            return
        # WAIT counts the replicas that have its own connection's writes, and a transaction's connection
        # went back to the pool at EXEC. One write more on the connection WAIT goes on stands for them:
        # Redis replicates in order, so a replica that has this write has every write before it.
        try:
            with self._holder().pipeline(transaction=False) as pipe:
                pipe.set(self._confirmed, self._consumer, px=60_000)
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
                _, holding = pipe.execute()
        except REDIS_ERRORS as exc:
            raise (_refusal(exc) or StoreUnavailable(f"redis unavailable: {exc}")) from exc
        if int(holding) < self._wait_replicas:
            raise StoreUnavailable(
                f"redis had it on {holding} of the {self._wait_replicas} replicas asked for (wait_replicas)"
                f" after {self._wait_ms / 1000:g} s"
            )

    def _holder(self) -> Any:
        """A client of the server holding the bridge's keys alone: on a cluster, the primary of its slot as
        it is now (a failover moves it)."""
        return self._client.get_node_from_key(self._outbox).redis_connection if self.cluster else self._client

    def primary(self) -> str | None:
        """Where the primary the Sentinels watch is now (`host:port`), asked of them; None without Sentinels."""
        pool = getattr(self._client, "connection_pool", None)
        if not isinstance(pool, SentinelConnectionPool):
            return None
        host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
        return f"{host}:{port}"

    def replicas(self) -> tuple[int, str | None]:
        connected = int(self._holder().info("replication").get("connected_slaves", 0))
        if connected >= self._wait_replicas:
            return connected, None
        return connected, (
            f"Redis has {connected} replica{'' if connected == 1 else 's'} connected, and batches wait for"
            f" {self._wait_replicas} (wait_replicas): every batch is refused (503) until enough are"
        )

    def refusal(self, exc: Exception) -> StoreUnavailable | None:
        return _refusal(exc)

    def damaged(self, exc: Exception) -> bool:
        return False  # what Redis keeps reads whole or not at all: a failure of it is a refusal

    def outbox_peek(self, limit: int) -> list[OutboxRow]:
        try:
            return self._peek(limit)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise StoreUnavailable(f"redis refused: {exc}") from exc
            # Redis restarted without its data: the stream and group are gone. Make them again
            # and go on; what Redis lost is lost, what arrives from now on is exported.
            log.warning("the redis outbox group was gone (redis lost its data?): creating it again")
            try:
                self._ensure_group()
                return self._peek(limit)
            except REDIS_ERRORS as again:
                raise StoreUnavailable(f"redis unavailable: {again}") from again

    def _peek(self, limit: int) -> list[OutboxRow]:
        try:
            # Ours first (taken before a failed export), then a crashed replica's, then new ones.
            entries = self._read(limit, "0")
            if not entries:
                _next, claimed, *_ = self._client.xautoclaim(
                    self._outbox, _GROUP, self._consumer, self._claim_after_ms, "0-0", count=limit
                )
                entries = [e for e in claimed if e[1]]
            if not entries:
                self.departures.sweep(self._client)
                entries = self._read(limit, ">")
        except ResponseError:
            raise
        except REDIS_ERRORS as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc
        return [
            OutboxRow(entry_id.decode(), fields[b"resource"].decode(), fields[b"payload"])
            for entry_id, fields in entries
        ]

    def _read(self, limit: int, start: str) -> _Entries:
        answer = self._client.xreadgroup(_GROUP, self._consumer, {self._outbox: start}, count=limit)
        entries = [e for _stream, found in cast(list[tuple[bytes, _Entries]], answer) for e in found]
        # Entries deleted after delivery come back with no fields: nothing to send, and
        # acknowledged, or they would come back at every read.
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            self._client.xack(self._outbox, _GROUP, *gone)
        return [e for e in entries if e[1]]

    def outbox_ack(self, ids: list[int | str]) -> None:
        try:
            # Not a MULTI: out of memory, Redis refuses every write of one, even these two that free
            # memory, and the outbox could never drain. Deleted first: a crash between the two
            # leaves a pending id with no entry, which the next read acknowledges (`_read`).
            with self._client.pipeline(transaction=False) as pipe:
                pipe.xdel(self._outbox, *ids)
                pipe.xack(self._outbox, _GROUP, *ids)
                pipe.execute()
        except REDIS_ERRORS as exc:
            # Sent but not acknowledged here: sent again later (at-least-once), never lost.
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc

    def outbox_depth(self) -> int:
        with _away_said():
            return int(self._client.xlen(self._outbox))

    def bookmark(self, name: str) -> bytes | None:
        with _away_said():
            return cast(bytes | None, self._client.get(f"{self._p}bookmark:{name}"))

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        with _away_said():
            return bool(self._client.eval(_LEASE, 1, f"{self._p}lease:{name}", holder, max(int(seconds * 1000), 1)))

    def release(self, name: str, holder: str) -> None:
        with _away_said():
            self._client.eval(_RELEASE, 1, f"{self._p}lease:{name}", holder)

    def lease_held(self, name: str) -> tuple[str, float] | None:
        with _away_said():
            holder, left_ms = (
                self._client.pipeline(transaction=False)
                .get(f"{self._p}lease:{name}")
                .pttl(f"{self._p}lease:{name}")
                .execute()
            )
        return None if holder is None or left_ms < 0 else (holder.decode(), left_ms / 1000)

    def set_bookmark(self, name: str, value: bytes) -> None:
        try:
            self._client.set(f"{self._p}bookmark:{name}", value)
        except REDIS_ERRORS as exc:
            raise (_refusal(exc) or StoreUnavailable(f"redis unavailable: {exc}")) from exc

    def earliest_due(self) -> float | None:
        with _away_said():
            first = cast(list[tuple[bytes, float]], self._client.zrange(f"{self._p}due", 0, 0, withscores=True))
        return float(first[0][1]) if first else None

    def purge_seen(self, before: float) -> int:
        return 0  # seen ids expire by themselves

    def states(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        with _away_said():
            yield from self._states(prefix)

    def _states(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        pattern = f"{_glob_escaped(self._p)}state:{_glob_escaped(prefix)}*"
        skip = len(f"{self._p}state:")
        cursor = 0
        # SCAN may return a key twice (while Redis resizes its table): a listing would show and
        # count that run twice. What is remembered of a key listed is a 128-bit digest, not the
        # key: 74 MiB at a million open runs instead of 175 (two keys alike by chance: 1.5e-27).
        listed: set[int] = set()
        # On a cluster, the node holding the bridge's slot (asked again at each listing: a failover moves it).
        node = {"target_nodes": self._client.get_node_from_key(self._outbox)} if self.cluster else {}
        while True:
            # A page of keys, then their states in one round trip (not one per state).
            cursor, page = self._client.scan(cursor, match=pattern, count=500, **node)
            if isinstance(cursor, dict):  # a cluster's: each node's cursor
                (cursor,) = cursor.values()
            found: list[bytes] = []
            for key in cast(list[bytes], page):  # bytes: the client does not decode responses
                digest = int.from_bytes(blake2b(key, digest_size=16).digest())
                if digest not in listed:
                    listed.add(digest)
                    found.append(key)
            if found:
                for key, blob in zip(found, cast(list[bytes | None], self._client.mget(found)), strict=True):
                    if blob is not None:  # deleted since the scan
                        yield key.decode()[skip:], blob
            if cursor == 0:
                return

    def facts(self, key: str) -> list[bytes]:
        with _away_said():
            return _in_order(cast(dict[bytes, bytes], self._client.hgetall(f"{self._p}facts:{key}")))

    def overdue_keys(self, now: float) -> set[str]:
        with _away_said():
            found = cast(list[bytes], self._client.zrangebyscore(f"{self._p}overdue", "-inf", now))
        return {k.decode() for k in found}

    def overdue(self, now: float) -> list[tuple[str, bytes]]:
        with _away_said():
            found = cast(list[bytes], self._client.zrangebyscore(f"{self._p}overdue", "-inf", now))
            keys = [k.decode() for k in found]
            blobs = cast(list[bytes | None], self._client.mget([f"{self._p}state:{k}" for k in keys]) if keys else [])
        return [(k, b) for k, b in zip(keys, blobs, strict=True) if b is not None]

    def close(self) -> None:
        self._client.close()
