"""Batches that arrive together share one commit, and each still succeeds or fails on its own."""

import threading
import time

import pytest

from otel_bridge.state.group_commit import GroupCommit
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import StoreUnavailable


def test_a_failing_batch_is_rolled_back_alone_and_the_others_commit(tmp_path):
    store = SqliteStore(tmp_path / "s.db")

    def broken(tx):
        tx.save("b", b"half", None)
        raise ValueError("a bug in one batch")

    outcomes = store.run_many([lambda tx: tx.save("a", b"1", None), broken, lambda tx: tx.save("c", b"3", None) or 3])
    assert outcomes[0] is None and isinstance(outcomes[1], ValueError) and outcomes[2] == 3
    assert dict(store.states()) == {"a": b"1", "c": b"3"}


def test_concurrent_batches_share_transactions_and_each_gets_its_own_answer(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    commits = GroupCommit(store, timeout_seconds=10)
    answers: dict[int, object] = {}

    def batch(n: int) -> None:
        def work(tx):
            time.sleep(0.01)  # long enough for the others to queue behind it
            tx.save(f"k{n}", str(n).encode(), None)
            if n == 3:
                raise KeyError("batch 3 is bad")
            return n

        try:
            answers[n] = commits.run(work)
        except KeyError as exc:
            answers[n] = exc

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {n: a for n, a in answers.items() if n != 3} == {n: n for n in range(8) if n != 3}
    assert isinstance(answers[3], KeyError)
    assert commits.batches == 8 and commits.transactions < 8
    assert sorted(k for k, _ in store.states()) == sorted(f"k{n}" for n in range(8) if n != 3)


def test_a_batch_kept_waiting_past_the_timeout_is_told_the_store_is_busy_and_never_runs(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    commits = GroupCommit(store, timeout_seconds=0.2)
    release = threading.Event()
    holder = threading.Thread(target=lambda: commits.run(lambda tx: release.wait(5)))
    holder.start()
    time.sleep(0.05)
    with pytest.raises(StoreUnavailable):
        commits.run(lambda tx: tx.save("late", b"x", None))
    release.set()
    holder.join()
    commits.run(lambda tx: None)
    assert [k for k, _ in store.states()] == []


def test_a_batch_that_comes_alone_is_a_transaction_of_its_own_without_a_savepoint(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    commits = GroupCommit(store, timeout_seconds=10)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)

    def broken(tx):
        tx.save("b", b"half", None)
        raise ValueError("a bug")

    assert commits.run(lambda tx: tx.save("a", b"1", None) or 7) == 7
    with pytest.raises(ValueError):
        commits.run(broken)
    assert not any(s.startswith("SAVEPOINT") for s in statements)
    assert dict(store.states()) == {"a": b"1"}
    assert (commits.transactions, commits.batches) == (2, 2)
