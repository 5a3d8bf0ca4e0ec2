"""The SQLite store where a page of its file no longer reads (a disk fault under a running bridge): the
outbox is read past it, and only the spans on it wait for the salvage."""

import os
import sqlite3
from pathlib import Path

import pytest
from faults import broken_page

from otel_bridge.state.sqlite_store import SqliteStore, damaged
from otel_bridge.state.store import StoreOpenError

SPANS = 3000


def _outbox(path: Path, payloads: list[bytes]) -> SqliteStore:
    store = SqliteStore(path)
    store.run(lambda tx: tx.outbox_add(("svc\x1fenv", payload) for payload in payloads))
    return store


def _damaged_under(store: SqliteStore, path: Path, *pages: tuple[float, str]) -> int:
    """Break pages of the outbox of the open `store` (`broken_page`'s `at` and `kind`), as a disk fault
    does under a running bridge: the rows they held."""
    lost = sum(broken_page(path, "outbox", at, kind) for at, kind in pages)
    other = sqlite3.connect(path)  # a commit of another connection: the store reads the file anew
    other.execute("CREATE TABLE IF NOT EXISTS touched (x)")
    other.commit()
    other.close()
    return lost


def _sent(store: SqliteStore, batch: int = 100) -> list[bytes]:
    """Every span the outbox gives, in order, each acknowledged once read (as the export does)."""
    sent: list[bytes] = []
    while rows := store.outbox_peek(batch):
        sent += [row.payload for row in rows]
        store.outbox_ack([row.id for row in rows])
    return sent


@pytest.mark.parametrize("read_only", [False, True], ids=["serve", "a listing"])
def test_a_state_that_names_no_file_is_refused_saying_so_and_nothing_is_made_beside_it(tmp_path, read_only):
    # /dev/null for no state: SQLite said "disk I/O error", having made its lock and journal beside the device.
    pipe = tmp_path / "state"
    os.mkfifo(pipe)
    with pytest.raises(StoreOpenError, match=r"state: it is no file \(a device, a pipe or a socket\).*:memory:"):
        SqliteStore(pipe, read_only=read_only)
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_the_outbox_is_read_past_two_damaged_pages_losing_only_the_spans_they_held(tmp_path):
    # The export read the outbox in order and failed at the damaged page every round: every span taken
    # after it waited for the bridge to be stopped and the file salvaged.
    payloads = [n.to_bytes(4, "big") * 75 for n in range(SPANS)]
    store = _outbox(tmp_path / "s.db", payloads)
    lost = _damaged_under(store, tmp_path / "s.db", (0.3, "leaf"), (0.7, "leaf"))

    sent = _sent(store)

    assert 0 < lost < 100 and len(sent) == SPANS - lost
    assert sent == sorted(sent)  # in the order they were taken
    assert sent[0] == payloads[0] and sent[-1] == payloads[-1]
    missing = sorted(payloads.index(m) + 1 for m in set(payloads) - set(sent))  # their ids
    assert len({n - i for i, n in enumerate(missing)}) == 2  # two runs of neighbours
    assert store.outbox_passed is not None
    first, last, found = store.outbox_passed  # the last met
    assert (first, last) == (missing[-lost // 2], missing[-1]) and "malformed" in found
    store.close()


def test_a_damaged_page_of_one_big_span_loses_that_span_alone(tmp_path):
    # A span too big for its leaf goes on in pages of its own: reading its payload meets the damage.
    payloads = [bytes([n]) * 300 for n in range(100)]
    payloads[50] = b"big" * 5000
    store = _outbox(tmp_path / "s.db", payloads)
    _damaged_under(store, tmp_path / "s.db", (0.5, "overflow"))

    assert _sent(store, batch=10) == payloads[:50] + payloads[51:]
    assert store.outbox_passed is not None and store.outbox_passed[:2] == (51, 51)
    store.close()


def test_an_outbox_with_no_read_past_its_damage_is_told_as_damaged(tmp_path):
    # A broken page above the leaves (here, the table's root) holds up every read past it.
    store = _outbox(tmp_path / "s.db", [bytes(300)] * SPANS)
    _damaged_under(store, tmp_path / "s.db", (0.0, "internal"))

    with pytest.raises(sqlite3.DatabaseError) as raised:
        store.outbox_peek(100)

    assert damaged(raised.value) and store.outbox_passed is None
    store.close()
