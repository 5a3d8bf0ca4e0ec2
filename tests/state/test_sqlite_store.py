"""The SQLite store: seen ids, run state and the outbox survive reopening; a failed transaction leaves nothing."""

import threading

import pytest

from otel_bridge.state.sqlite_store import SqliteStore


def test_seen_ids_state_and_outbox_survive_reopening(tmp_path):
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.mark_seen(["a", "b"], now=100.0)
        tx.save("run1", b"{}", due=5.0)
        tx.outbox_add([("svc\x1fenv", b"span-1"), ("svc\x1fenv", b"span-2")])
    store.close()

    store = SqliteStore(path)
    with store.transaction() as tx:
        assert tx.unseen(["a", "c"]) == {"c"}
        assert tx.load("run1") == (b"{}", 5.0)
        assert tx.due_keys(now=10.0, limit=10) == ["run1"]
        assert tx.due_keys(now=1.0, limit=10) == []
    assert [row.payload for row in store.outbox_peek(10)] == [b"span-1", b"span-2"]
    store.close()


def test_acknowledged_spans_leave_the_outbox(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    with store.transaction() as tx:
        tx.outbox_add([("r", bytes([i])) for i in range(5)])
    rows = store.outbox_peek(3)
    store.outbox_ack([r.id for r in rows])
    assert store.outbox_depth() == 2
    assert [r.payload for r in store.outbox_peek(10)] == [bytes([3]), bytes([4])]


def test_a_transaction_that_raises_leaves_no_trace(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.mark_seen(["x"], now=1.0)
        tx.outbox_add([("r", b"s")])
        raise RuntimeError("crash before commit")
    with store.transaction() as tx:
        assert tx.unseen(["x"]) == {"x"}
    assert store.outbox_depth() == 0


def test_old_seen_ids_are_purged_after_their_time_to_live(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    with store.transaction() as tx:
        tx.mark_seen(["old"], now=1.0)
        tx.mark_seen(["new"], now=100.0)
    assert store.purge_seen(before=50.0) == 1
    with store.transaction() as tx:
        assert tx.unseen(["old", "new"]) == {"old"}


def test_concurrent_transactions_from_many_threads_all_commit(tmp_path):
    store = SqliteStore(tmp_path / "s.db")

    def work(n: int) -> None:
        for i in range(50):
            with store.transaction() as tx:
                tx.mark_seen([f"{n}-{i}"], now=1.0)
                tx.outbox_add([("r", b"x")])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.outbox_depth() == 400
    with store.transaction() as tx:
        assert tx.unseen([f"{n}-{i}" for n in range(8) for i in range(50)]) == set()
