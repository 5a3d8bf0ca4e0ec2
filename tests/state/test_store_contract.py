"""What every store promises (SQLite and Redis alike): seen ids, run state and the outbox, transactionally."""

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from otel_bridge import keys
from otel_bridge.keys import runs_of
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import SharedLeases


def _due(tx, now: float, limit: int) -> list[str]:
    """The keys due by `now`, the earliest first."""
    return [key for _due_at, key in tx.due_after(now, limit, None)]


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def open_store(request, tmp_path):
    """Opens (or reopens) one store; each test gets its own file or key prefix (on a cluster, its own slot:
    the tests' states land on each of its nodes)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "s.db")
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    prefix = f"test{uuid.uuid4().hex[:8]}:"
    return lambda: RedisStore(url, seen_ttl_seconds=3600, prefix=prefix, claim_after_seconds=0.2)


def _side_by_side(work: Callable[[int], None], threads: int) -> None:
    """`work(n)` in `threads` threads at once, n = 0, 1, …; back when all are done."""
    running = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()


def test_seen_ids_state_and_outbox_survive_reopening(open_store):
    store = open_store()

    def write(tx):
        tx.mark_seen(["a", "b"], now=100.0)
        tx.save("run1", b"{}", due=5.0)
        tx.outbox_add([("svc\x1fenv", b"span-1"), ("svc\x1fenv", b"span-2")])

    store.run(write)
    store.close()

    store = open_store()
    assert store.run(lambda tx: tx.unseen(["a", "c"])) == {"c"}
    assert store.run(lambda tx: tx.load("run1")) == (b"{}", 5.0)
    assert store.run(lambda tx: _due(tx, 10.0, 10)) == ["run1"]
    assert store.run(lambda tx: _due(tx, 1.0, 10)) == []
    assert [row.payload for row in store.outbox_peek(10)] == [b"span-1", b"span-2"]
    assert dict(store.states())["run1"] == b"{}"
    store.close()


def test_a_producers_runs_are_found_by_the_prefix_of_their_keys(open_store):
    store = open_store()
    mine = [runs_of("phase10", "prod", "a*[x]") + n for n in ("1", "t\x1f2")]
    others = [
        runs_of("phase10", "prod", "ab[x]") + "3",  # a pattern would take `*` and `[x]` for wildcards
        runs_of("phase10", "prod", "a*[x]y") + "4",
        runs_of("phase10", "prodx", "a*[x]") + "5",
        runs_of("durable-effect", "prod", "a*[x]") + "6",
    ]
    store.run(lambda tx: [tx.save(key, key.encode(), None) for key in mine + others])
    assert sorted(store.states(runs_of("phase10", "prod", "a*[x]"))) == sorted((k, k.encode()) for k in mine)
    assert len(list(store.states())) == 6


def test_every_state_is_read_however_many_there_are(open_store):
    store = open_store()
    saved = [runs_of("durable-effect", "prod", f"s{n % 3}") + f"{n:05d}" for n in range(2345)]
    store.run(lambda tx: [tx.save(key, b"h", None) for key in saved])
    assert sorted(key for key, _ in store.states()) == sorted(saved)
    of_one = sorted(key for key, _ in store.states(runs_of("durable-effect", "prod", "s1")))
    assert of_one == [key for key in sorted(saved) if f"{keys.SEPARATOR}s1{keys.SEPARATOR}" in key]


def test_one_transaction_writes_and_reads_ahead_however_much_it_holds(open_store):
    # A big run settled at once (10,000 attempts: as many spans) is one transaction; on Redis its
    # writes are one script's arguments (and 5,000 rows more than a script unpacks for one command),
    # its reads ahead one script's answer.
    store = open_store()
    runs = [runs_of("durable-effect", "prod", "big") + f"{n:04d}" for n in range(3000)]
    rows = [(n, bytes(200)) for n in range(1, 5001)]

    def write(tx):
        for key in runs:
            tx.save(key, b"h", 1.0)
        tx.append(runs[0], rows)
        tx.outbox_add([("r", bytes(300))] * 20_000)

    store.run(write)

    def read(tx):
        tx.prefetch(runs)
        return [tx.load(key) for key in runs], tx.facts(runs[0])

    states, facts = store.run(read)
    assert states == [(b"h", 1.0)] * len(runs) and facts == [blob for _, blob in rows]
    assert store.outbox_depth() == 20_000


def test_acknowledged_spans_leave_the_outbox(open_store):
    store = open_store()
    store.run(lambda tx: tx.outbox_add([("r", bytes([i])) for i in range(5)]))
    rows = store.outbox_peek(3)
    store.outbox_ack([r.id for r in rows])
    assert store.outbox_depth() == 2
    assert [r.payload for r in store.outbox_peek(10)] == [bytes([3]), bytes([4])]


def test_spans_taken_but_not_acknowledged_are_offered_again(open_store):
    store = open_store()
    store.run(lambda tx: tx.outbox_add([("r", b"x")]))
    first = store.outbox_peek(10)
    again = store.outbox_peek(10)  # the export failed: the same spans come back
    assert [r.payload for r in again] == [r.payload for r in first] == [b"x"]


def test_a_transaction_that_raises_leaves_no_trace(open_store):
    store = open_store()

    def crash(tx):
        tx.mark_seen(["x"], now=1.0)
        tx.outbox_add([("r", b"s")])
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        store.run(crash)
    assert store.run(lambda tx: tx.unseen(["x"])) == {"x"}
    assert store.outbox_depth() == 0


def test_deleted_state_is_gone_and_no_longer_due(open_store):
    store = open_store()
    store.run(lambda tx: tx.save("k", b"1", due=1.0))
    store.run(lambda tx: tx.delete("k"))
    assert store.run(lambda tx: (tx.load("k"), _due(tx, 10.0, 10))) == (None, [])


def test_the_earliest_due_time_is_that_of_the_state_due_soonest(open_store):
    store = open_store()
    assert store.earliest_due() is None  # nothing due at all
    store.run(lambda tx: [tx.save("later", b"h", 30.0), tx.save("sooner", b"h", 20.0), tx.save("never", b"h", None)])
    assert store.earliest_due() == 20.0
    store.run(lambda tx: tx.reschedule("sooner", 40.0))
    assert store.earliest_due() == 30.0
    store.run(lambda tx: tx.delete("later"))
    assert store.earliest_due() == 40.0


def test_a_state_rescheduled_keeps_its_header_and_overdue_time(open_store):
    store = open_store()
    store.run(lambda tx: tx.save("k", b"h", due=1.0, overdue_at=50.0))
    store.run(lambda tx: tx.reschedule("k", 20.0))
    assert store.run(lambda tx: (tx.load("k"), _due(tx, 10.0, 10), _due(tx, 20.0, 10))) == (
        (b"h", 20.0),
        [],
        ["k"],
    )
    assert store.overdue(100.0) == [("k", b"h")]


def test_a_runs_fact_rows_are_a_journal_appended_replaced_and_forgotten_in_seq_order(open_store):
    store = open_store()
    store.run(lambda tx: (tx.save("k", b"h", due=None), tx.append("k", [(2, b"b"), (10, b"c"), (1, b"a")])))
    store.run(lambda tx: tx.append("k", [(2, b"B"), (11, b"d")]))
    assert store.run(lambda tx: tx.facts("k")) == [b"a", b"B", b"c", b"d"]
    assert store.facts("k") == [b"a", b"B", b"c", b"d"]
    store.run(lambda tx: tx.forget("k"))
    assert store.facts("k") == [] and store.run(lambda tx: tx.load("k")) == (b"h", None)
    store.run(lambda tx: (tx.append("k", [(1, b"a")]), tx.delete("k")))
    assert store.facts("k") == [] and store.run(lambda tx: tx.load("k")) is None


def test_runs_read_ahead_read_as_runs_loaded_one_by_one(open_store):
    store = open_store()
    store.run(
        lambda tx: (tx.save("a", b"ha", due=5.0), tx.append("a", [(2, b"y"), (1, b"x")]), tx.save("b", b"hb", None))
    )

    def read(tx):
        tx.prefetch(["a", "b", "missing", "a"])
        return [(tx.load(k), tx.facts(k)) for k in ("a", "b", "missing")]

    assert store.run(read) == [((b"ha", 5.0), [b"x", b"y"]), ((b"hb", None), []), (None, [])]


def test_concurrent_read_modify_write_transactions_on_runs_read_ahead_lose_nothing(open_store):
    store = open_store()

    def work(_n: int) -> None:
        for _ in range(30):

            def one(tx):
                tx.prefetch(["counter"])
                counter = tx.load("counter")
                value = int(counter[0]) if counter else 0
                tx.save("counter", str(value + 1).encode(), None)
                tx.append("counter", [(value + 1, b"f")])

            store.run(one)

    _side_by_side(work, threads=4)
    assert store.run(lambda tx: tx.load("counter"))[0] == b"120"
    assert len(store.facts("counter")) == 120


def test_journals_read_ahead_read_as_their_rows_read_one_by_one(open_store):
    # A journal: rows under a key with no state (a run's sent span ids), read ahead beside the runs.
    store = open_store()
    store.run(lambda tx: tx.append("sent-a", [(1, b"q"), (0, b"p")]))

    def read(tx):
        tx.prefetch(["a"], ["sent-a", "sent-missing", "sent-a"])
        return [tx.facts(k) for k in ("sent-a", "sent-missing")], tx.load("a")

    assert store.run(read) == ([[b"p", b"q"], []], None)


def test_concurrent_appends_to_a_journal_read_ahead_lose_nothing(open_store):
    store = open_store()

    def work(_n: int) -> None:
        for _ in range(30):

            def one(tx):
                tx.prefetch([], ["journal"])
                rows = tx.facts("journal")
                tx.append("journal", [(len(rows), b"r")])  # the next row's key: taken twice, one is lost

            store.run(one)

    _side_by_side(work, threads=4)
    assert len(store.facts("journal")) == 120


def test_runs_are_found_by_when_they_turn_overdue_without_reading_the_others(open_store):
    store = open_store()
    store.run(lambda tx: (tx.save("late", b"1", None, overdue_at=50.0), tx.save("fine", b"2", None, 500.0)))
    store.run(lambda tx: tx.save("never", b"3", None))
    assert store.overdue(100.0) == [("late", b"1")]
    assert store.overdue_keys(100.0) == {"late"} and store.overdue_keys(600.0) == {"late", "fine"}
    store.run(lambda tx: tx.save("late", b"1", None))  # woke up
    assert store.overdue(100.0) == [] and store.overdue_keys(100.0) == set()
    store.run(lambda tx: tx.delete("fine"))
    assert store.overdue(1000.0) == []


def test_concurrent_read_modify_write_transactions_lose_nothing(open_store):
    store = open_store()

    def work(n: int) -> None:
        for i in range(30):

            def one(tx, i=i):
                counter = tx.load("counter")
                value = int(counter[0]) if counter else 0
                tx.save("counter", str(value + 1).encode(), None)
                tx.mark_seen([f"{n}-{i}"], now=1.0)

            store.run(one)

    _side_by_side(work, threads=6)
    assert store.run(lambda tx: tx.load("counter"))[0] == b"180"
    assert store.run(lambda tx: tx.unseen([f"{n}-{i}" for n in range(6) for i in range(30)])) == set()


def test_sqlite_purges_old_seen_ids(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    store.run(lambda tx: (tx.mark_seen(["old"], now=1.0), tx.mark_seen(["new"], now=100.0)))
    assert store.purge_seen(before=50.0) == 1
    assert store.run(lambda tx: tx.unseen(["old", "new"])) == {"old"}


def test_sqlite_keeps_a_job_event_id_as_its_8_byte_digest(tmp_path):
    # A week of them is kept: ~45 bytes of file each, where the ids took ~115.
    store = SqliteStore(tmp_path / "s.db")
    event_id = "01955193-de27-70cb-808e-b08ec5d7b582"
    store.run(lambda tx: tx.mark_seen([event_id], now=1.0))
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT typeof(event_id), length(event_id) FROM seen").fetchall() == [("blob", 8)]
    assert store.run(lambda tx: tx.unseen([event_id, "another"])) == {"another"}


def test_sqlite_still_knows_job_event_ids_an_earlier_version_kept_as_text_until_they_expire(tmp_path):
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:  # as the version before kept them
        db.execute("INSERT INTO seen VALUES ('kept-as-text', 1.0)")
    store = SqliteStore(path)
    store.run(lambda tx: tx.mark_seen(["kept-as-digest"], now=100.0))
    assert store.run(lambda tx: tx.unseen(["kept-as-text", "kept-as-digest", "new"])) == {"new"}
    assert store.purge_seen(before=50.0) == 1
    assert not store._text_ids  # none left: a lookup no longer asks for ids as text
    assert store.run(lambda tx: tx.unseen(["kept-as-text", "kept-as-digest"])) == {"kept-as-text"}


def test_sqlite_tells_a_running_transaction_that_another_waits_to_begin(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    waiter = threading.Thread(target=lambda: store.run(lambda tx: None))
    with store.transaction():
        assert not store.awaited()
        waiter.start()
        deadline = time.monotonic() + 5
        while not store.awaited() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store.awaited()
    waiter.join()
    assert not store.awaited()
    store.close()


def test_sqlite_lets_a_transaction_waiting_to_begin_go_before_the_next_one_of_the_thread_it_waited_for(tmp_path):
    # Settling runs transaction after transaction; a producer's batch waiting between two of them
    # must not wait for the interpreter to switch threads (5 ms) while settling takes the lock back.
    store = SqliteStore(tmp_path / "s.db")
    order = []
    waiter = threading.Thread(target=lambda: store.run(lambda tx: order.append("waiter")))
    with store.transaction():
        waiter.start()
        deadline = time.monotonic() + 5
        while not store.awaited() and time.monotonic() < deadline:
            time.sleep(0.001)
    store.run(lambda tx: order.append("next"))  # at once, from the thread that just ended one
    waiter.join()
    assert order == ["waiter", "next"]
    store.close()


def _in_main_file(path) -> list[tuple]:
    """The runs the database file itself holds, leaving its write-ahead log aside."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return db.execute("SELECT key, blob FROM state").fetchall()
    finally:
        db.close()


def test_sqlite_checkpoint_copies_committed_transactions_from_the_log_into_the_database_file(tmp_path):
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    assert store.checkpoint() > 0  # the schema, created at opening
    store.run(lambda tx: tx.save("run", b"state", None))
    assert _in_main_file(path) == []  # committed, in the log only: no COMMIT checkpoints by itself
    assert store.checkpoint() > 0
    assert _in_main_file(path) == [("run", b"state")]
    assert store.checkpoint() == 0  # nothing committed since
    store.run(lambda tx: tx.save("run", b"later", None))
    store.close()
    assert store.checkpoint() == 0  # closed: no connection opened again behind the store's back
    assert SqliteStore(path, read_only=True).checkpoint() == 0


def test_redis_transactions_never_wait_for_each_other(redis_url):
    store = RedisStore(redis_url, seen_ttl_seconds=3600, prefix=f"t{uuid.uuid4().hex}:")
    assert store.run(lambda tx: store.awaited()) is False  # optimistic: nothing ever waits to begin
    store.close()


def test_redis_lets_seen_ids_expire(redis_url):
    store = RedisStore(redis_url, seen_ttl_seconds=1, prefix=f"ttl{uuid.uuid4().hex[:6]}:")
    store.run(lambda tx: tx.mark_seen(["e"], now=time.time()))
    assert store.run(lambda tx: tx.unseen(["e"])) == set()
    time.sleep(2.1)
    assert store.run(lambda tx: tx.unseen(["e"])) == {"e"}


def test_redis_takes_transactions_after_forgetting_the_scripts_they_run_as(redis_url):
    # A transaction reads ahead and writes as one script each: Redis restarted (or SCRIPT FLUSH)
    # forgets scripts, and the next transaction must not fail for it after its WATCH passed.
    store = RedisStore(redis_url, seen_ttl_seconds=60, prefix=f"lua{uuid.uuid4().hex[:6]}:")
    key, payload = runs_of("durable-effect", "prod", "shop") + "r", bytes(range(256))  # every byte value
    store.run(lambda tx: (tx.save(key, b"h1", 5.0), tx.append(key, [(1, b"f1")]), tx.outbox_add([("r", payload)])))
    store._client.script_flush()

    def read_and_write(tx):
        tx.prefetch([key], [keys.sent_spans(key)])
        found = (tx.load(key), tx.facts(key), tx.facts(keys.sent_spans(key)))
        tx.append(key, [(2, b"f2")])
        return found

    assert store.run(read_and_write) == ((b"h1", 5.0), [b"f1"], [])
    assert store.run(lambda tx: tx.facts(key)) == [b"f1", b"f2"]
    assert [row.payload for row in store.outbox_peek(10)] == [payload]
    store.close()


def test_redis_hands_a_crashed_replicas_spans_to_another(redis_url):
    prefix = f"claim{uuid.uuid4().hex[:6]}:"
    crashed = RedisStore(redis_url, seen_ttl_seconds=60, prefix=prefix, claim_after_seconds=0.2)
    crashed.run(lambda tx: tx.outbox_add([("r", b"orphan")]))
    assert [r.payload for r in crashed.outbox_peek(10)] == [b"orphan"]  # taken, never acknowledged
    survivor = RedisStore(redis_url, seen_ttl_seconds=60, prefix=prefix, claim_after_seconds=0.2)
    time.sleep(0.3)
    rows = survivor.outbox_peek(10)
    assert [r.payload for r in rows] == [b"orphan"]
    survivor.outbox_ack([r.id for r in rows])
    assert survivor.outbox_depth() == 0


def test_redis_stores_of_one_host_and_process_each_send_their_own_spans_once(redis_url):
    # Two trackers of one application on one Redis (a service key each), or two bridges whose containers share
    # the host's name (host networking) and are each process 1: were they one consumer of the outbox, each
    # would read the spans the other had taken as its own and send them again.
    prefix = f"one{uuid.uuid4().hex[:6]}:"
    first, second = (RedisStore(redis_url, seen_ttl_seconds=60, prefix=prefix) for _ in range(2))
    first.run(lambda tx: tx.outbox_add([("r", b"taken by the first")]))
    assert [r.payload for r in first.outbox_peek(10)] == [b"taken by the first"]
    second.run(lambda tx: tx.outbox_add([("r", b"taken by the second")]))
    assert [r.payload for r in second.outbox_peek(10)] == [b"taken by the second"]
    assert [r.payload for r in first.outbox_peek(10)] == [b"taken by the first"]  # again, until acknowledged
    first.close()
    second.close()


def test_redis_lists_each_state_once_though_scan_may_return_a_key_twice(redis_url, monkeypatch):
    # SCAN's own contract: "a given element may be returned multiple times" (while the keyspace's
    # table is resized); a listing must not show, nor count, a run twice.
    store = RedisStore(redis_url, seen_ttl_seconds=60, prefix=f"scan{uuid.uuid4().hex[:6]}:")
    saved = [runs_of("durable-effect", "prod", "shop") + f"{n:04d}" for n in range(1200)]
    store.run(lambda tx: [tx.save(key, b"h", None) for key in saved])
    scan, returned = store._client.scan, []

    def returning_keys_again(cursor, **options):
        cursor, found = scan(cursor, **options)
        again = returned[:50]
        returned.extend(found)
        return cursor, found + again

    monkeypatch.setattr(store._client, "scan", returning_keys_again)
    assert sorted(key for key, _ in store.states()) == sorted(saved)
    store.close()


def test_sqlite_leaves_dropping_a_state_to_its_due_time(tmp_path):
    store = SqliteStore(str(tmp_path / "s.db"))
    assert store.run(lambda tx: tx.expire_at("k", time.time())) is False  # the journal keeps it due instead
    store.close()


def test_the_due_index_is_read_on_from_a_cursor_in_due_then_key_order(open_store):
    store = open_store()
    due = {"a": 1.0, "c": 2.0, "b": 2.0, "d": 2.0, "e": 3.0, "later": 50.0, "never": None}
    store.run(lambda tx: [tx.save(key, b"{}", at) for key, at in due.items()])

    def read(after, limit=2):
        return store.run(lambda tx: tx.due_after(10.0, limit, after))

    assert read(None) == [(1.0, "a"), (2.0, "b")]
    assert read((2.0, "b")) == [(2.0, "c"), (2.0, "d")]  # a batch's runs share one due: read on by key
    assert read((2.0, "d")) == [(3.0, "e")]
    assert read((3.0, "e")) == []
    assert read((1.0, "a"), limit=10) == [(2.0, "b"), (2.0, "c"), (2.0, "d"), (3.0, "e")]
    store.close()


def test_a_followers_bookmark_is_kept_with_the_state_across_reopening(open_store):
    store = open_store()
    assert store.bookmark("websocket") is None
    store.set_bookmark("websocket", b'{"followed_at": 1}')
    store.set_bookmark("websocket", b'{"followed_at": 2}')  # the latest written is the one read
    store.close()
    store = open_store()
    assert store.bookmark("websocket") == b'{"followed_at": 2}'
    assert store.bookmark("another") is None
    assert list(store.states()) == []  # a bookmark is no run's state


def test_a_lease_is_held_by_one_holder_until_it_lapses(open_store):
    store = open_store()
    assert store.lease("runtime-v2", "a", 0.3) and store.lease("runtime-v2", "a", 0.3), "taken, then renewed"
    if not store.shared:
        assert store.lease("runtime-v2", "b", 0.3), "a file is one bridge's: no one else to lease it from"
        return
    assert not store.lease("runtime-v2", "b", 0.3), "another replica's while it holds"
    assert store.lease("another task", "b", 0.3)
    assert isinstance(store, SharedLeases)  # which replica holds each, for `check`
    holder, left = store.lease_held("runtime-v2") or ("", 0.0)
    assert holder == "a" and 0 < left <= 0.3 and store.lease_held("no such task") is None
    time.sleep(0.5)  # a lapses: stopped, or stalled past it
    assert store.lease_held("runtime-v2") is None
    assert store.lease("runtime-v2", "b", 0.3) and not store.lease("runtime-v2", "a", 0.3)
    store.close()


def test_a_lease_let_go_by_its_holder_is_taken_at_once_and_one_not_held_is_not_let_go(open_store):
    store = open_store()
    assert store.lease("shared counts", "a", 60)
    store.release("shared counts", "b")  # not b's: nothing happens
    if store.shared:
        assert not store.lease("shared counts", "b", 60), "still a's"
    store.release("shared counts", "a")
    assert store.lease("shared counts", "b", 60), "let go: taken at once, not a minute on"
    store.close()
