"""The SQLite store where a page of its file no longer reads (a disk fault under a running bridge): the
outbox is read past it, and only the spans on it wait for the salvage. And a state that keeps nothing
(`:memory:`, the in-process tracker's default): on disk, in a file no one else sees, not in memory."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from faults import broken_page

from otel_bridge.state.sqlite_store import SqliteStore, damaged
from otel_bridge.state.store import StoreOpenError, StoreUnavailable

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


class _DiskFull:
    """A connection whose every statement meets a full disk, as SQLite's own reads do when they must spill
    its cache to a file that cannot grow."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, *_args: object) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        self.db.close()


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("outbox_peek", (10,)),
        ("outbox_ack", ([1],)),
        ("earliest_due", ()),
        ("overdue", (0,)),
        ("overdue_keys", (0,)),
        ("facts", ("k",)),
        ("states", ()),
        ("purge_seen", (0,)),
    ],
)
def test_a_read_or_an_acknowledgement_that_meets_a_full_disk_is_the_stores_refusal_not_a_bug(method, args):
    # A bug's traceback in the log for a condition: the outbox's drain and the settle lag's gauge told one.
    store = SqliteStore(":memory:")
    store._db = _DiskFull(store._db)
    with pytest.raises(StoreUnavailable, match=r"^the state file's disk is full \(sqlite: database or disk is full\)$"):
        list(getattr(store, method)(*args) or ())
    store.close()


def _unlinked_temporaries() -> dict[int, int]:
    """This process's open files SQLite made and removed at once (its private temporary databases): their
    descriptor, and their size."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if "etilqs_" in target and target.endswith("(deleted)"):
                found[int(fd)] = os.stat(f"/proc/self/fd/{fd}").st_size
        except OSError:
            pass  # the descriptor listdir itself held
    return found


def test_a_state_that_keeps_nothing_holds_its_pages_on_disk_in_a_file_removed_as_it_was_made():
    # In the process's memory, the spans a backend outage left in the outbox grew an application's memory
    # by ~0.55 KiB each: 200 MiB for 400,000.
    before = _unlinked_temporaries()
    store = _outbox(":memory:", [n.to_bytes(4, "big") * 125 for n in range(20_000)])  # ~10 MB of spans
    made = {fd: size for fd, size in _unlinked_temporaries().items() if fd not in before}
    assert len(made) == 1 and next(iter(made.values())) > 8 * 2**20  # on disk, beyond SQLite's page cache
    assert store.outbox_depth() == 20_000 and len(_sent(store, batch=1000)) == 20_000
    store.close()
    assert not set(_unlinked_temporaries()) - set(before)  # gone with the connection: nothing left behind


def test_where_sqlite_can_make_no_temporary_file_a_state_that_keeps_nothing_is_held_in_memory_as_before():
    # SQLite makes the file at its first spill: were it made then, a batch in the middle of a run failed there.
    script = textwrap.dedent(
        """
        import logging, resource
        from otel_bridge.state.sqlite_store import SqliteStore
        logging.basicConfig(format="%(levelname)s %(message)s")
        free = min(set(range(64)) - {int(fd) for fd in __import__("os").listdir("/proc/self/fd")})
        resource.setrlimit(resource.RLIMIT_NOFILE, (free - 1, free - 1))  # no file more can be opened
        store = SqliteStore(":memory:")
        store.run(lambda tx: tx.outbox_add(("svc\\x1fenv", bytes(500)) for _ in range(20_000)))
        print(store.outbox_depth(), len(store.outbox_peek(50_000)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["20000", "20000"]
    assert "WARNING SQLite could make no temporary file (unable to open database file;" in done.stderr
    assert "the state is kept in this process's memory" in done.stderr
