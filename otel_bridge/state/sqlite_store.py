"""The default store: one SQLite file, WAL mode, nothing to install.

WAL with synchronous=NORMAL survives a killed process without losing a committed
transaction (it can lose the last ones on power loss, which a bridge fed by a
retrying producer can afford). One connection behind a lock: SQLite has one
writer at a time anyway, and ingest transactions are short.

The write-ahead log is copied into the database by `checkpoint()`, on a connection of its
own, from the bridge's background thread: SQLite's automatic checkpoint runs inside the
COMMIT that fills the log, and with its fsyncs it held that producer's answer for 11-16 ms
(the p99 of a 6-event POST). It stays on, at a larger size, for a store nobody checkpoints.
"""

import fcntl
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from otel_bridge.files import NO_FILE, special
from otel_bridge.forks import GivenUpToFork, Lock, after_fork_in_child, held_across_fork
from otel_bridge.ids import event_digest
from otel_bridge.state import disk_reserve, mounts
from otel_bridge.state.disk_reserve import DiskReserve
from otel_bridge.state.store import (
    OutboxRow,
    Passed,
    StoreDamaged,
    StoreInUse,
    StoreOpenError,
    StoreUnavailable,
    T,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_at ON seen(at);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, blob BLOB NOT NULL, due REAL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_due ON state(due) WHERE due IS NOT NULL;
CREATE TABLE IF NOT EXISTS facts (key TEXT NOT NULL, seq INTEGER NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (key, seq))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, resource TEXT NOT NULL, payload BLOB NOT NULL);
"""

# Followers' bookmarks (where they were), made by the first written: a state no follower uses has no table.
BOOKMARKS = "CREATE TABLE IF NOT EXISTS bookmarks (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"

# The outbox's ids are rowids, not AUTOINCREMENT (files made before keep theirs: both work): an
# id is taken again only once the table's newest row has left it, and the drain acknowledges only
# rows it has just read, which are still there. AUTOINCREMENT's sqlite_sequence row was one more
# page written at every settle (0.7 % of the instructions per event).

_SAVE = """INSERT INTO state (key, blob, due, overdue_at) VALUES (?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET blob = excluded.blob, due = excluded.due, overdue_at = excluded.overdue_at"""

# Pages of write-ahead log after which a COMMIT checkpoints by itself (SQLite's default is 1,000):
# only reached when `checkpoint()` is not called, or cannot keep up.
_AUTOCHECKPOINT_PAGES = 10_000
# The write-ahead log is cut back to this size when it starts over after a checkpoint. A second's
# writes (what a checkpoint a second copies) stay within it at the 16 MiB a second the disk reserve
# is sized for, so it is not cut and grown again at every checkpoint; what a backlog or a reader
# holding an old snapshot (a backup, a `sqlite3` shell left in a transaction) made it grow to is
# given back to the disk, where SQLite keeps a log at its largest size for good.
_WAL_KEPT_BYTES = 16 * 2**20
# A thread that has just ended a transaction lets those waiting go first, for at most this long.
_GIVE_WAY_SECONDS = 0.05

# The outbox's spans in the order they were taken, from an id on.
OUTBOX_READ = "SELECT id, resource, payload FROM outbox WHERE id >= ? ORDER BY id"
# How many ids past a damaged page of the outbox its read is tried from one by one, more than a leaf page
# holds; past them (a broken page above the leaves holds up many) the step doubles.
_ONE_BY_ONE = 512
_LAST_ROWID = 2**63 - 1

# States read at a time when all are asked for (`states()`).
_STATES_CHUNK = 1000

# SQLite caps host parameters per statement (32766 on current builds); stay well below.
_CHUNK = 900


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _is_disk_full(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.Error):
        return False
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def file_bytes(path: str | Path) -> int:
    """The state file's size with its write-ahead log (none while the database is closed)."""
    files = (Path(f"{path}{suffix}") for suffix in ("", "-wal"))
    return sum(f.stat().st_size for f in files if f.exists())


def damaged(exc: BaseException) -> bool:
    """SQLite met a page of the file it cannot read as what it should hold (SQLITE_CORRUPT): the file was
    damaged from outside (copied while in use, a disk or filesystem fault). No retry mends it."""
    # The extended code (SQLITE_CORRUPT_INDEX, …) in its high bits, the primary one in its low byte.
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF == sqlite3.SQLITE_CORRUPT


class GaveWay(Exception):
    """A check of every page cut short for a fork (`quick_check`'s `give_way`)."""


def quick_check(
    db: sqlite3.Connection, within_seconds: float | None = None, give_way: Callable[[], bool] | None = None
) -> str | None:
    """What SQLite's check of every page of `db` finds broken (its first three findings), or None.
    `within_seconds`: TimeoutError once that long has passed (a file of many GiB takes minutes).
    `give_way`: GaveWay, the check cut short, once it turns true."""
    deadline = None if within_seconds is None else time.monotonic() + within_seconds
    if deadline is not None or give_way is not None:
        db.set_progress_handler(
            lambda: (give_way is not None and give_way()) or (deadline is not None and time.monotonic() > deadline),
            1_000,
        )
    try:
        rows = [str(row) for (row,) in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc) and give_way is not None and give_way():
            raise GaveWay() from None
        if "interrupted" in str(exc) and within_seconds is not None:
            raise TimeoutError(f"not every page checked within {within_seconds:g} s") from None
        return str(exc)
    except sqlite3.DatabaseError as exc:  # too broken to be walked at all
        return str(exc)
    finally:
        db.set_progress_handler(None, 0)
    # Its first row opens with which database ("*** in database main ***"), and rows hold several lines.
    found = [line.strip() for row in rows for line in row.splitlines() if line.strip() and "***" not in line]
    return None if found == ["ok"] else "; ".join(found[:3])


def read_around_damage(db: sqlite3.Connection, at: int, limit: int) -> list[tuple[int, str, bytes] | Passed]:
    """Up to `limit` rows of the outbox of `db` from id `at` on, in order, read one at a time around its
    damaged pages (`readable_from`), each passed over in its place as `Passed`: sqlite3 steps to the next
    row before it hands one over, and a step into a damaged page loses the row it was about to hand over.
    Raises the damage met when nothing past it reads and no row was read before it."""
    read: list[tuple[int, str, bytes] | Passed] = []
    rows = 0
    while rows < limit:
        try:
            found = db.execute(f"{OUTBOX_READ} LIMIT 1", (at,)).fetchone()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            past = readable_from(db, at)
            if past is None:
                if rows:
                    break
                raise
            read.append(Passed(at, past - 1, str(exc)))
            at = past
            continue
        if found is None:
            break
        read.append(found)
        rows += 1
        at = found[0] + 1
    return read


def readable_from(db: sqlite3.Connection, at: int) -> int | None:
    """The least id past `at` from which the outbox of `db` reads again, when its read from `at` meets a
    damaged page: the ids from `at` up to it are on that page. None when no read past `at` gets past it.

    A read from an id goes down through the pages above the leaves to the leaf that would hold it: from
    past the last id a leaf may hold (the key its parent keeps for it), to the leaf after it, never into
    the damaged one. Each try reads one row (`LIMIT 1` ends the read before it steps to the next page),
    with its payload: a span too big for its leaf goes on in pages of its own, which may be the damaged ones."""

    def reads(start: int) -> bool:
        try:
            db.execute(f"{OUTBOX_READ} LIMIT 1", (start,)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            return False
        return True

    for start in range(at + 1, at + _ONE_BY_ONE + 1):
        if reads(start):
            return start
    low, step = at + _ONE_BY_ONE, _ONE_BY_ONE
    while not reads(high := min(low + step, _LAST_ROWID)):
        if high == _LAST_ROWID:
            return None
        low, step = high, step * 2
    while high - low > 1:  # reads from `high`, not from `low`: the least id it reads from lies between
        middle = (low + high) // 2
        low, high = (low, middle) if reads(middle) else (middle, high)
    return high


@contextmanager
def _full_refused() -> Iterator[None]:
    """A read or an acknowledgement that met a full disk — SQLite spills its cache to the file, or a
    private temporary file's, as it reads too — is the store refusing for now, as a write that met it is:
    told in a line where it is retried, not as a bug with its traceback. Decorates the store's reads too."""
    try:
        yield
    except sqlite3.Error as exc:
        if not _is_disk_full(exc):
            raise
        raise StoreUnavailable(f"the state file's disk is full (sqlite: {exc})") from exc


def _refusal(exc: BaseException) -> StoreUnavailable | None:
    """SQLite refusing for reasons of its own (a full disk, an I/O error, a read-only file), not
    because of what was asked: a retry may succeed, and no event is to blame. Not a damaged page
    (`damaged`): no retry mends it, and only what needs that page meets it."""
    if damaged(exc):
        return None
    if isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError:
        return StoreUnavailable(f"the state file refused a write: {exc}")
    return None


def _facts(db: sqlite3.Connection, key: str) -> list[bytes]:
    return [blob for (blob,) in db.execute("SELECT blob FROM facts WHERE key = ? ORDER BY seq", (key,))]


def _migrate(db: sqlite3.Connection) -> bool:
    """Bring a state file of an earlier version up to this one's schema; True when the overdue
    index is new (its runs' `overdue_at` are still to be filled in)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(state)")}
    added = "overdue_at" not in columns
    if added:
        db.execute("ALTER TABLE state ADD COLUMN overdue_at REAL")
    db.execute("CREATE INDEX IF NOT EXISTS state_overdue ON state(overdue_at) WHERE overdue_at IS NOT NULL")
    return added


class SqliteTransaction:
    def __init__(self, db: sqlite3.Connection, text_ids: bool = False) -> None:
        self._db = db
        self.added = 0
        # Job event ids are kept as their 8-byte digests (a week of them: ~45 bytes of file each, where
        # the ids took ~115); `text_ids`: the file still holds ids a version before kept as text, until they expire.
        self._text_ids = text_ids
        # The digests `unseen` computed, for `mark_seen` of the same ids (a batch asks, then marks).
        self._digests: dict[str, bytes] = {}

    def _digest(self, event_id: str) -> bytes:
        digest = self._digests.get(event_id)
        if digest is None:
            digest = self._digests[event_id] = event_digest(event_id)
        return digest

    def unseen(self, event_ids: list[str]) -> set[str]:
        by_digest: dict[bytes | str, str] = {self._digest(e): e for e in set(event_ids)}
        fresh = set(by_digest.values())
        asked = [*by_digest, *fresh] if self._text_ids else list(by_digest)
        for chunk in _chunks(asked):
            marks = ",".join("?" * len(chunk))
            for (seen,) in self._db.execute(f"SELECT event_id FROM seen WHERE event_id IN ({marks})", chunk):
                fresh.discard(by_digest.get(seen, seen))
        return fresh

    def mark_seen(self, event_ids: Iterable[str], now: float) -> None:
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", ((self._digest(e), now) for e in event_ids))

    def prefetch(self, keys: list[str], journals: Iterable[str] = ()) -> None:
        pass  # in this process: a load costs no round trip

    def load(self, key: str) -> tuple[bytes, float | None] | None:
        row = self._db.execute("SELECT blob, due FROM state WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def save(self, key: str, blob: bytes, due: float | None, overdue_at: float | None = None) -> None:
        # An upsert, not INSERT OR REPLACE: a replace deletes the row and inserts it again, which
        # rewrites both index entries even when the due time did not move (a third more per save).
        self._db.execute(_SAVE, (key, blob, due, overdue_at))

    def reschedule(self, key: str, due: float) -> None:
        self._db.execute("UPDATE state SET due = ? WHERE key = ?", (due, key))

    def expire_at(self, key: str, when: float) -> bool:
        return False  # no expiry in SQLite: the due index does it

    def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM state WHERE key = ?", (key,))
        self._db.execute("DELETE FROM facts WHERE key = ?", (key,))

    def facts(self, key: str) -> list[bytes]:
        return _facts(self._db, key)

    def append(self, key: str, rows: list[tuple[int, bytes]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?)", ((key, n, b) for n, b in rows))

    def forget(self, key: str) -> None:
        self._db.execute("DELETE FROM facts WHERE key = ?", (key,))

    def due_after(self, now: float, limit: int, after: tuple[float, str] | None) -> list[tuple[float, str]]:
        if after is None:
            rows = self._db.execute(
                "SELECT due, key FROM state WHERE due IS NOT NULL AND due <= ? ORDER BY due, key LIMIT ?", (now, limit)
            )
        else:
            due, key = after
            rows = self._db.execute(
                "SELECT due, key FROM state WHERE due IS NOT NULL AND due <= ? AND (due > ? OR (due = ? AND key > ?)) "
                "ORDER BY due, key LIMIT ?",
                (now, due, due, key, limit),
            )
        return [(float(d), k) for d, k in rows]

    def outbox_add(self, rows: Iterable[tuple[str, bytes]]) -> None:
        before = self._db.total_changes
        self._db.executemany("INSERT INTO outbox (resource, payload) VALUES (?, ?)", rows)
        self.added += self._db.total_changes - before


def _names_a_file(path: str) -> None:
    """Raise OSError, saying why, unless `path` names a file SQLite can hold the state in, or may make."""
    named = Path(path)
    if named.is_dir() or path.endswith("/"):
        # SQLite says "unable to open database file"; one not there yet, "No such file …: 'dir/.lock'".
        raise OSError(f"it is a directory: name a file in it (--state {named / 'otel-bridge.db'})")
    if special(named):
        # /dev/null for no state: SQLite said "disk I/O error", having made its lock and journal beside the
        # device (as root, in /dev); `:memory:` is what keeps nothing.
        raise OSError(f"{NO_FILE}: name a file, or :memory: to keep nothing")


def _claim(path: str) -> IO[str]:
    """Hold `path`.lock for as long as this store is open: one bridge per SQLite file.

    Two bridges on one file would each settle and export the same runs. The lock is
    the kernel's (flock), so a bridge killed with -9 releases it by dying.
    """
    lock_path = f"{path}.lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreInUse(
            f"{path} is in use by another otel-bridge ({holder}): one bridge per SQLite file "
            "(several replicas share a redis:// state instead)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


@contextmanager
def claimed(path: str) -> Iterator[None]:
    """Hold `path`'s lock for the block, as a bridge on it does (`_claim`): none starts on it meanwhile."""
    handle = _claim(path)
    try:
        yield
    finally:
        handle.close()


def _keeping_nothing() -> sqlite3.Connection:
    """A database that goes with its connection (the state `:memory:`): a private temporary file SQLite
    removes as it makes it (the name ""), its page cache in memory and the rest on disk.

    Not the process's memory: there the spans a backend outage left in the outbox grew an application's
    memory by ~0.55 KiB each (200 MiB for 400,000; the outbox holds up to `max_outbox_spans`, a million).
    SQLite makes the file at the first page it spills, in the first directory it may write of
    SQLITE_TMPDIR, TMPDIR, /var/tmp, /usr/tmp, /tmp and the working directory: asked now, by spilling one,
    so that a process that has none keeps its state in memory, as before, instead of failing a batch
    at the first spill. Its rollback journal is in memory and nothing is synced: no crash is to find it.
    """
    db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = MEMORY")
    db.execute("PRAGMA synchronous = OFF")
    (cache,) = db.execute("PRAGMA cache_size").fetchone()
    try:
        db.execute("PRAGMA cache_size = 10")
        db.execute("BEGIN")
        db.execute("CREATE TABLE spilled (b BLOB)")
        db.execute("INSERT INTO spilled VALUES (zeroblob(1048576))")  # 256 pages: past the cache of 10
    except sqlite3.OperationalError as exc:
        db.close()
        log.warning(
            "SQLite could make no temporary file (%s; it looks in SQLITE_TMPDIR, TMPDIR, /var/tmp, /usr/tmp, /tmp "
            "and the working directory): the state is kept in this process's memory, a backend outage's spans "
            "with it",
            exc,
        )
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    db.execute("ROLLBACK")
    db.execute(f"PRAGMA cache_size = {int(cache)}")
    return db


class SqliteStore:
    shared = False

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 5000,
        lock_timeout_seconds: float = 5.0,
        read_only: bool = False,
        durability: str = "process",
        reserve_bytes: int = 0,
    ) -> None:
        """`read_only`: a look at a store a running bridge owns (`otel-bridge runs`), which WAL allows.

        `reserve_bytes`: room kept beside the file (`STATE.reserve`) and given back when its disk is
        full, so that the outbox can still drain (`disk_reserve.py`).

        `durability`: "process" (WAL, synchronous=NORMAL) keeps every committed batch through a
        killed process; "full" (synchronous=FULL) also through power loss, at an fsync per batch.
        """
        self.path = str(path)
        self._claimed: IO[str] | None = None
        self.overdue_index_new = False
        try:
            if self.path != ":memory:":
                _names_a_file(self.path)
            if read_only:
                if not Path(self.path).is_file():
                    raise OSError(f"no state file at {self.path}")
                uri = f"file:{Path(self.path).resolve()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            else:
                if self.path == ":memory:":
                    self._db = _keeping_nothing()  # its one connection's alone: nothing to wait for, or log
                else:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                    self._claimed = _claim(self.path)
                    self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                    self._db.execute("PRAGMA journal_mode = WAL")
                    self._db.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
                    self._db.execute(f"PRAGMA journal_size_limit = {_WAL_KEPT_BYTES}")
                    self._db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
                # Debian and Ubuntu build SQLite to zero what a DELETE frees (SECURE_DELETE): every
                # span acknowledged was written to the log again as zeroes, twice the I/O, and on a
                # full disk a drain needed as much room as it would free. FAST zeroes only within
                # pages written anyway; what is deleted was sent to the backend, nothing secret.
                self._db.execute("PRAGMA secure_delete = FAST")
                self._db.executescript(_SCHEMA)
                self.overdue_index_new = _migrate(self._db)
            # Kept in memory so the backpressure check on every ingest costs nothing.
            self._depth: int = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            self._text_ids = self._holds_text_ids()
        except (sqlite3.Error, OSError) as exc:
            if hasattr(self, "_db"):
                self._db.close()
            if self._claimed is not None:
                self._claimed.close()
            if damaged(exc):  # salvaged at start (`Bridge.opened`), or by `salvage-state`
                raise StoreDamaged(self.path, exc) from exc
            raise StoreOpenError(f"cannot open the state file {self.path}: {_why(exc)}") from exc
        # Where the background checkpoint finds the file (absolute: the working directory may change).
        self._checkpoint_path = None if read_only or self.path == ":memory:" else str(Path(self.path).resolve())
        self._lock = threading.Lock()
        self._lock_timeout = lock_timeout_seconds
        self._syncs = durability == "full"
        # Transactions committed (opening wrote the schema), and how many the last checkpoint saw.
        self._commits = 1
        self._checkpointed = 0
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self._checking = GivenUpToFork()  # the check of every page (`damage_found`)
        # Threads waiting to begin a transaction: a long one (settling) gives way when there are any.
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._released_by: int | None = None
        # Damaged pages of the outbox met while the bridge runs: where its reads begin (past the ids on
        # them, once every span before them is sent), the last id read, the ids on each (the last to the
        # first), and the ids sent whose rows beside them could not be deleted.
        self._outbox_from = self._outbox_read = 0
        self._outbox_damaged: dict[int, int] = {}
        self._outbox_sent: set[int] = set()
        self.outbox_passed: Passed | None = None
        self._reserve = None
        if self._checkpoint_path is not None:
            reserve = Path(self._checkpoint_path + ".reserve")
            if reserve_bytes > 0:
                self._reserve = DiskReserve(reserve, reserve_bytes)
            else:
                disk_reserve.forget(reserve)
        after_fork_in_child(self._forked)
        held_across_fork(self._guards, timeout=lock_timeout_seconds)

    def _guards(self) -> list[Lock]:
        """The locks every SQLite call of this store is made under."""
        return [self._lock, self._checkpoint_lock, self._checking]

    def _forked(self) -> None:
        # One bridge per file: a child process holds no claim on it. Its copy of the lock's file
        # would keep the file locked after this process ended, while the child lives.
        if self._claimed is not None:
            self._claimed.close()
            self._claimed = None

    def _acquire(self) -> None:
        # A thread that runs transaction after transaction (settling) would take the lock back
        # the moment it released it, before the waiter it woke gets the interpreter: that
        # waiter then waits for the 5 ms switch interval, a 6-event POST's p99. It gives way.
        # (Only that thread: one giving way is not counted as waiting, so the holder would not
        # know to cut its transaction short for it.)
        if self._waiting and self._released_by == threading.get_ident():
            until = time.monotonic() + _GIVE_WAY_SECONDS
            while self._waiting and time.monotonic() < until:
                time.sleep(0.0001)
        # A store that stays busy must turn into a 503 the producer retries, not a
        # request that hangs inside the producer's workflow.
        if self._lock.acquire(blocking=False):
            return
        with self._waiting_lock:
            self._waiting += 1
        try:
            acquired = self._lock.acquire(timeout=self._lock_timeout)
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if not acquired:
            raise StoreUnavailable(f"store busy for more than {self._lock_timeout} s")

    def refuses_batches(self) -> str | None:
        """Why new batches are refused without being tried: the disk is full, and what room there is
        goes to what drains it (settling what was taken, acknowledging spans, checkpointing)."""
        if self._reserve is None or not self._reserve.full or self._reserve.room():
            return None
        return (
            "the state file refused a write: its disk is full (database or disk is full); what was taken is "
            "still sent, batches are taken again once the disk has room"
        )

    def damage_found(self, within_seconds: float | None = None) -> str | None:
        """What SQLite's check of every page finds broken (`PRAGMA quick_check`: it reads the whole file, a
        few seconds a GiB), or None when it finds nothing (or nothing is on disk: a store in memory). On a
        connection of its own, read-only: the store is not held meanwhile (its writes go on, WAL; the check
        reads the file as it was as it began). Never on the hot path. `within_seconds`: TimeoutError once that
        long has passed."""
        if self.path == ":memory:":
            return None
        deadline = None if within_seconds is None else time.monotonic() + within_seconds
        while True:
            # Its SQLite calls take SQLite's process-wide mutexes: one held as another thread forks would be
            # held for ever in the child (`held_across_fork`). So the check gives way to a fork, and starts over.
            with self._checking:
                db = sqlite3.connect(f"file:{Path(self.path).resolve()}?mode=ro", uri=True)
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    return quick_check(db, left, give_way=self._checking.wanted)
                except GaveWay:
                    pass
                finally:
                    db.close()

    def confirm(self) -> None:
        pass  # a commit is as kept as it gets here (`durability`): in the log, or synced to the disk

    def awaited(self) -> bool:
        """Whether another thread is waiting to begin a transaction."""
        return self._waiting > 0

    def quick_now(self) -> bool:
        # No sync per commit, nobody in a transaction or waiting for one.
        return not self._syncs and not self._waiting and not self._lock.locked()

    @contextmanager
    def transaction(self) -> Iterator[SqliteTransaction]:
        self._acquire()
        try:
            tx = SqliteTransaction(self._db, self._text_ids)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield tx
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if self._reserve is not None and _is_disk_full(exc):
                    self._reserve.full = True  # the next batches are refused without being tried
                # SQLite's own refusal, at BEGIN, in a statement of the work or at COMMIT: the
                # store's fault, answered here once rather than by every statement of the hot path.
                if (refused := _refusal(exc)) is not None:
                    raise refused from exc
                raise
            self._depth += tx.added
            self._commits += 1
        finally:
            self._released_by = threading.get_ident()
            self._lock.release()

    def refusal(self, exc: Exception) -> StoreUnavailable | None:
        return _refusal(exc)

    def damaged(self, exc: Exception) -> bool:
        return damaged(exc)

    def _rollback(self) -> None:
        # SQLite may have rolled the transaction back itself (a full disk, an I/O error): a
        # ROLLBACK then fails, and its error would hide the one that says what happened.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def run(self, work: Callable[[SqliteTransaction], T]) -> T:
        with self.transaction() as tx:
            return work(tx)

    def run_many(self, works: list[Callable[[SqliteTransaction], T]]) -> list[T | Exception]:
        """Each work in its own savepoint of one transaction (group commit): its result, or its exception."""
        out: list[T | Exception] = []
        with self.transaction() as tx:
            for work in works:
                self._db.execute("SAVEPOINT batch")
                added = tx.added
                try:
                    out.append(work(tx))
                except Exception as exc:
                    if _refusal(exc) is not None:
                        raise  # the store refused, not this batch: the transaction fails, and every batch in it
                    self._db.execute("ROLLBACK TO batch")
                    tx.added = added
                    out.append(exc)
                self._db.execute("RELEASE batch")
        return out

    @_full_refused()
    def outbox_peek(self, limit: int) -> list[OutboxRow]:
        with self._lock:
            try:
                sent = self._outbox_sent
                read = self._db.execute(f"{OUTBOX_READ} LIMIT ?", (self._outbox_from, limit + len(sent))).fetchall()
                rows = [OutboxRow(*row) for row in read if not sent or row[0] not in sent][:limit]
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
                rows = self._outbox_around_damage(limit)
            if rows:
                self._outbox_read = int(rows[-1].id)
            return rows

    def _outbox_around_damage(self, limit: int) -> list[OutboxRow]:
        """The outbox's next `limit` spans read around its damaged pages (`read_around_damage`), each met
        for the first time told in `outbox_passed`."""
        rows: list[OutboxRow] = []
        for read in read_around_damage(self._db, self._outbox_from, limit + len(self._outbox_sent)):
            if isinstance(read, Passed):
                if read.last not in self._outbox_damaged:  # newly met: from past the last span read
                    self._outbox_damaged[read.last] = first = max(read.first, self._outbox_read + 1)
                    self.outbox_passed = Passed(first, read.last, read.found)
                if not rows:  # nothing before the damage is left to send: the reads begin past it from now on
                    self._outbox_from = read.last + 1
            elif read[0] not in self._outbox_sent:
                rows.append(OutboxRow(*read))
        return rows[:limit]

    @_full_refused()
    def outbox_ack(self, ids: list[int | str]) -> None:
        with self._lock:
            for chunk in _chunks(ids):
                delete = f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})"
                try:
                    self._depth -= self._freeing(self._db, delete, chunk).rowcount
                except sqlite3.DatabaseError as exc:
                    if not damaged(exc):
                        raise
                    self._depth -= self._ack_beside_damage(chunk)
                self._commits += 1  # a commit of its own: the checkpoint has it to copy

    def _ack_beside_damage(self, ids: Sequence[int | str]) -> int:
        """Acknowledge `ids` one by one, where deleting them together met a damaged page (SQLite merging a
        leaf left nearly empty with its neighbours, the damaged one among them): those whose row cannot
        be deleted are passed over by the outbox's reads from now on, never sent again. How many went."""
        deleted = 0
        for i in ids:
            try:
                deleted += self._freeing(self._db, "DELETE FROM outbox WHERE id = ?", (i,)).rowcount
            except sqlite3.DatabaseError as exc:
                if not damaged(exc):
                    raise
                self._outbox_sent.add(int(i))
        return deleted

    def _freeing(self, db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """A statement that frees room (acknowledging sent spans, checkpointing, purging seen ids): if
        SQLite says the disk is full, the reserve is given back to it and it is tried once more. Never
        for a write that adds: the room is for what drains the disk, not for more batches filling it."""
        try:
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            if self._reserve is None or not _is_disk_full(exc) or not self._reserve.release():
                raise
            return db.execute(sql, params)

    def outbox_depth(self) -> int:
        return self._depth

    def bookmark(self, name: str) -> bytes | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT value FROM bookmarks WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:  # no follower ever wrote one here: its table is made by the first
            return None
        return None if row is None else bytes(row[0])

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        return True  # the file is this process's alone (its lock): no other bridge shares the state

    def release(self, name: str, holder: str) -> None:
        pass

    def set_bookmark(self, name: str, value: bytes) -> None:
        def write(tx: SqliteTransaction) -> None:
            tx._db.execute(BOOKMARKS)
            tx._db.execute("INSERT OR REPLACE INTO bookmarks VALUES (?, ?)", (name, value))

        self.run(write)

    @_full_refused()
    def earliest_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT due FROM state WHERE due IS NOT NULL ORDER BY due LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    @_full_refused()
    def purge_seen(self, before: float) -> int:
        with self._lock:
            purged = self._freeing(self._db, "DELETE FROM seen WHERE at < ?", (before,)).rowcount
            self._commits += 1
            if purged and self._text_ids:
                self._text_ids = self._holds_text_ids()
            return purged

    def _holds_text_ids(self) -> bool:
        """Whether seen ids an earlier version kept as text are left: the first key says (text sorts
        before the digests' blobs), found through the key index, not by a scan."""
        first = self._db.execute("SELECT typeof(event_id) FROM seen ORDER BY event_id LIMIT 1").fetchone()
        return first is not None and first[0] == "text"

    def states(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        # Read in chunks along the key, the lock held for one chunk at a time: a million open runs
        # are never in memory at once (start-up read them all: 270 MiB for 200,000), and batches
        # are stored between chunks. A key stored meanwhile may or may not be among them.
        bound = " AND key < ?" if prefix else ""
        # A prefix is a range of the primary key (keys compare as their bytes): up to the
        # successor of its last character, the separator.
        upper = (prefix[:-1] + chr(ord(prefix[-1]) + 1),) if prefix else ()
        query = f"SELECT key, blob FROM state WHERE key {{}} ?{bound} ORDER BY key LIMIT {_STATES_CHUNK}"
        rows: list[tuple[str, bytes]] = []
        while True:
            with self._lock, _full_refused():
                if rows:
                    rows = self._db.execute(query.format(">"), (rows[-1][0], *upper)).fetchall()
                else:
                    rows = self._db.execute(query.format(">="), (prefix, *upper)).fetchall()
            yield from rows
            if len(rows) < _STATES_CHUNK:
                return

    @_full_refused()
    def facts(self, key: str) -> list[bytes]:
        with self._lock:
            return _facts(self._db, key)

    @_full_refused()
    def overdue(self, now: float) -> list[tuple[str, bytes]]:
        with self._lock:
            return self._db.execute("SELECT key, blob FROM state WHERE overdue_at <= ?", (now,)).fetchall()

    @_full_refused()
    def overdue_keys(self, now: float) -> set[str]:
        with self._lock:
            return {key for (key,) in self._db.execute("SELECT key FROM state WHERE overdue_at <= ?", (now,))}

    def risks(self) -> list[str]:
        risk = None if self.path == ":memory:" else mounts.network_risk(self.path)
        return [] if risk is None else [risk]

    def disk_usage(self) -> tuple[int, int] | None:
        if self._checkpoint_path is None:
            return None
        return file_bytes(self._checkpoint_path), disk_reserve.free_bytes(Path(self._checkpoint_path).parent)

    def checkpoint(self) -> int:
        """Copy the log's committed pages into the database without holding up any transaction.

        A PASSIVE checkpoint on a connection of its own: it neither takes the store's lock nor
        waits for SQLite's writer, and the sqlite3 module lets go of the interpreter while it
        writes and syncs. Returns the pages copied (0 when nothing was committed since the last).
        """
        if self._reserve is not None and not self._reserve.kept:
            self._reserve.room()
        if self._checkpoint_path is None or self._commits == self._checkpointed:
            return 0
        with self._checkpoint_lock:
            if self._checkpoint_path is None:  # closed meanwhile
                return 0
            if self._checkpointer is None:
                path = self._checkpoint_path
                self._checkpointer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            commits = self._commits
            _busy, logged, copied = self._freeing(self._checkpointer, "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied == logged:  # else a reader still needed some pages: the next call copies them
                self._checkpointed = commits
            return max(int(copied), 0)

    def close(self) -> None:
        with self._checkpoint_lock:
            self._checkpoint_path = None
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._db.close()
            if self._claimed is not None:
                self._claimed.close()
                self._claimed = None


def _why(exc: Exception) -> str:
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        return "it is not a SQLite database (corrupt, or another file): move it aside, or point --state elsewhere"
    if isinstance(exc, PermissionError) or "readonly" in str(exc) or "unable to open" in str(exc):
        return f"{exc} (is its directory writable by this user?)"
    return str(exc)
