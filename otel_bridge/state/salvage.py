"""Salvaging a damaged SQLite state file: what of it still reads, copied into a fresh file put in its place.

SQLite's own recovery (the `.recover` of its shell) is not reachable from Python's sqlite3 module,
and the shell Debian 12 ships (3.40) stops at this schema's first table with "SQL logic error". A
broken page loses the rows it holds and stops any read that walks through it; the rest of the file
reads. So each table is read in the order of its key from both ends, each direction up to the
first page that does not read, and the rows of one table that another names are read by their
key, which reaches them past a broken page elsewhere: a run's state by the keys its facts and the
state's two indexes hold, a run's facts (and the spans it has sent) by its state's key. The outbox,
keyed by numbers, is read in order past each broken page, from the first id after it. Facts whose
run state was lost are left out (a run is its state and its facts together: what its next event
brings starts it afresh). The last rows before a broken page are read one at a time: Python's
sqlite3 steps to the next row before it hands one over, and the step into the broken page lost the
row it was about to hand over, among them the key kept in the page above, between two pages.

The damaged file is kept beside, renamed, with its log; of those kept, the oldest beyond a number (two by
default) are deleted as another is kept.

The fresh file takes the damaged one's name once the damaged file's log is taken away (it must not be read
into the fresh one); a note beside (`<state>.swapping`, naming the copy kept) says the swap is under way, and
a salvage cut short in it is finished by the next (`salvage`, which every start makes when it finds the note):
made again, it read the damaged file without its log.

A bridge that meets a damaged page while it runs, or a command that does (`check`, a listing), leaves
a note of it beside the file (`<state>.needs-salvage`): the next start salvages the file first
(`Bridge.opened`), though its own reads might not pass through the page. A salvage takes the note away,
and leaves one (`<state>.take-again`) for the next start to take again the events the damage rejected.
"""

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from otel_bridge import keys
from otel_bridge.state.disk_reserve import free_bytes
from otel_bridge.state.sqlite_store import (
    BOOKMARKS,
    OUTBOX_READ,
    SqliteStore,
    claimed,
    damaged,
    file_bytes,
    quick_check,
    read_around_damage,
)
from otel_bridge.state.store import Passed

# Each table the bridge keeps, with the columns of its key.
_TABLES: dict[str, tuple[str, ...]] = {
    "state": ("key",),
    "facts": ("key", "seq"),
    "outbox": ("id",),
    "seen": ("event_id",),
    "bookmarks": ("name",),
}
# The outbox's columns, as this version and those before it make it: its key is the number a read begins from.
_OUTBOX = ("id", "resource", "payload")
# The state table's indexes, each holding the keys of the states it indexes (partial: read as they are).
_STATE_INDEXES = {"state_due": "due IS NOT NULL", "state_overdue": "overdue_at IS NOT NULL"}
# The files SQLite keeps beside a database in WAL mode, moved with it.
_BESIDE = ("-wal", "-shm")

# A facts key's state key, in SQL (`keys.state_of`): its own, or, for the spans it has sent, after the prefix.
_OWNER = (
    f"CASE WHEN substr(key, 1, {len(keys.sent_spans(''))}) = '{keys.sent_spans('')}' "
    f"THEN substr(key, {len(keys.sent_spans('')) + 1}) ELSE key END"
)
# Rows written to the fresh file at a time.
_CHUNK = 1000


class SalvageError(Exception):
    """The salvage could not be made (no room for the fresh file): nothing was changed, said in one line."""


@dataclass
class Salvaged:
    """What `salvage` copied, table by table, and where it met a page it could not read."""

    kept_as: Path
    copied: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    orphaned_facts: int = 0
    # The damaged files earlier salvages kept, deleted as this one keeps another (`keep_damaged`).
    deleted: list[Path] = field(default_factory=list)
    # An earlier salvage cut short as its fresh file took the name, finished: nothing copied again.
    finished: bool = False

    def told(self) -> list[str]:
        """What was done, a line each: what the command prints, what a start's salvage logs."""
        if self.finished:
            lines = ["the fresh file of a salvage cut short as it took the state's name is put in place"]
        else:
            copied = ", ".join(f"{table} {count:,}" for table, count in self.copied.items())
            lines = [f"what reads is in a fresh file, rows: {copied}"]
        if self.broken:
            lines.append(f"broken pages met in: {', '.join(self.broken)} (their rows on those pages are lost)")
        if self.orphaned_facts:
            lost = "their run's state was lost (its next events start it afresh)"
            lines.append(f"{self.orphaned_facts:,} facts left out: {lost}")
        lines.append(f"the damaged file is kept as {self.kept_as} (with its -wal and -shm)")
        if self.deleted:
            lines.append(f"older damaged files deleted (salvage_keep_damaged): {', '.join(map(str, self.deleted))}")
        return lines


def _fresh_of(path: Path) -> Path:
    """Where a salvage of the state file at `path` makes the fresh file, before it takes the name."""
    return path.with_name(path.name + ".salvaged")


def _made_for(fresh: Path) -> tuple[Path, ...]:
    """The fresh file `fresh` and those SQLite and the store make beside it as it is written."""
    return (fresh, *(Path(f"{fresh}{suffix}") for suffix in (*_BESIDE, ".lock")))


def swapping(path: Path) -> Path:
    """The note beside a state file a salvage leaves while its fresh file takes the name (`_put_in_place`)."""
    return path.with_name(path.name + ".swapping")


def needs_salvage(path: Path) -> Path:
    """The note beside a state file that asks its next start for a salvage (`note_damage`)."""
    return path.with_name(path.name + ".needs-salvage")


def note_damage(path: Path, found: str) -> None:
    """Leave beside the state file at `path` what was found damaged in it (once: an earlier note stays)."""
    note = needs_salvage(path)
    try:
        with note.open("x") as out:
            out.write(f"{found} (noted {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n")
    except FileExistsError:
        pass


def note_met(state: str, found: str) -> None:
    """`note_damage` for a command that met the damage (`check`, a listing): nothing for a state that is no
    file (in memory, Redis), nor where the note cannot be written (what to do is said all the same)."""
    if Path(state).is_file():
        with contextlib.suppress(OSError):
            note_damage(Path(state), found)


def take_again(path: Path) -> Path:
    """The note a salvage leaves beside the state file at `path` for the next start to take again the events the
    damage rejected (`Bridge.opened`), which a salvage by hand left to a replay with the bridge stopped again;
    taken away once they are."""
    return path.with_name(path.name + ".take-again")


def damage_noted(path: Path) -> str | None:
    """What a bridge, `check` or a listing noted damaged in the state file at `path`, or None."""
    try:
        return needs_salvage(path).read_text().strip() or f"the state file {path} is noted damaged"
    except FileNotFoundError:
        return None


def salvage(path: Path, keep_damaged: int = 2) -> Salvaged | None:
    """Copy what reads of the state file at `path` into a fresh one, keep the damaged file beside as
    `<path>.damaged-<UTC time>` and put the fresh one in its place; None when SQLite finds nothing
    damaged (nothing is done then). Of the damaged files kept, the latest `keep_damaged` are left, this
    one among them: the older ones are deleted before the copy, which needs their room. Holds the file's
    lock throughout: no bridge may run on it. Rows go from one file to the other a thousand at a time: a
    state of any size is salvaged in little memory. An earlier salvage cut short as its fresh file took the
    name (`swapping`) is finished instead."""
    with claimed(str(path)):
        if (finished := _finish_swap(path)) is not None:
            return finished
        source = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            if quick_check(source) is None:
                needs_salvage(path).unlink(missing_ok=True)
                return None
            _schema_reads(source, path)
            out = Salvaged(_kept_name(path))
            out.deleted = _delete_oldest(damaged_copies(path), keep_damaged - 1)
            fresh = _fresh_of(path)
            _fresh_copy(source, path, fresh, out)
        finally:
            source.close()
        # Before the swap: a salvage cut short after it takes nothing again otherwise (the file reads whole).
        take_again(path).write_text(f"salvaged {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        _put_in_place(fresh, path, out.kept_as)
        needs_salvage(path).unlink(missing_ok=True)
        return out


def _schema_reads(source: sqlite3.Connection, path: Path) -> None:
    """Raise SalvageError unless the schema of `source` (the file at `path`) reads: without it no row is found."""
    try:
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise SalvageError(
            f"nothing of {path} reads ({exc}: no SQLite database, or its first page, which holds where every "
            "table is, is broken); move it aside to start with an empty state, or put a backup back (backup-state)"
        ) from None


def cut_copy_swept(path: Path) -> int:
    """The fresh file a salvage killed while it copied left beside the state file at `path` (no swap under
    way: `swapping`), deleted with its files: of no use, and as large as what it had copied, it stayed until
    the next salvage, which might never come. Its bytes, 0 when there was none. Called holding the lock of
    the file (a bridge's), so that no salvage is making one meanwhile."""
    if swapping(path).exists():
        return 0
    swept = 0
    for made in _made_for(_fresh_of(path)):
        with contextlib.suppress(FileNotFoundError):
            swept += made.stat().st_size
            made.unlink()
    return swept


def damaged_copies(path: Path) -> list[Path]:
    """The damaged files salvages of the state file at `path` kept beside it, the oldest first."""
    kept = path.with_name(f"{path.name}.damaged-*")
    return sorted(copy for copy in path.parent.glob(kept.name) if not copy.name.endswith(_BESIDE))


def _delete_oldest(copies: list[Path], keep: int) -> list[Path]:
    """The oldest of the damaged files `copies` (oldest first) deleted, with their logs, but the latest
    `keep`: those deleted."""
    deleted = copies[: max(len(copies) - keep, 0)]
    for copy in deleted:
        for suffix in ("", *_BESIDE):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
    return deleted


def _kept_name(path: Path) -> Path:
    """`<path>.damaged-<UTC time>`, one no earlier salvage took (one cut short a moment before took it)."""
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    n = 1
    while any(Path(f"{kept}{suffix}").exists() for suffix in ("", *_BESIDE)):
        kept, n = kept.with_name(f"{kept.name.split('~')[0]}~{n}"), n + 1
    return kept


def _put_in_place(fresh: Path, path: Path, kept_as: Path) -> None:
    """The fresh file in the damaged one's place, the damaged one (with its log) kept as `kept_as`. Whenever
    the process is killed, `path` is one whole file or the other: a salvage at start may be cut short by
    the restart of its pod, and a state file gone would have the next start begin an empty one."""
    with fresh.open("rb+") as written:  # written with synchronous=OFF: on the disk before it takes the name
        os.fsync(written.fileno())
    _keep(path, kept_as)
    note = swapping(path)
    with note.open("w") as out:  # the copy kept, and the damaged file as it is: another put in its place is told
        out.write(f"{kept_as}\n{_as_it_is(path)}\n")
        out.flush()
        os.fsync(out.fileno())
    _sync_folder(path.parent)
    _swap(fresh, path)


def _keep(path: Path, kept_as: Path) -> None:
    """The damaged file at `path`, with its log, kept under the name `kept_as` too (but what is kept already)."""
    for suffix in ("", *_BESIDE):
        now, kept = Path(f"{path}{suffix}"), Path(f"{kept_as}{suffix}")
        if now.exists() and not kept.exists():
            try:
                os.link(now, kept)  # before anything is taken away
            except OSError:  # a filesystem without hard links
                shutil.copy2(now, kept)


def _swap(fresh: Path, path: Path) -> None:
    """The fresh file in the place of the damaged one, kept beside already; the note of the swap taken away."""
    for suffix in _BESIDE:
        # The damaged file's log must not be read into the fresh one: gone before the fresh file takes the
        # name. Cut short here, the damaged file is left without it: the note has the next salvage finish.
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    fresh.replace(path)
    _sync_folder(path.parent)
    swapping(path).unlink(missing_ok=True)


def _as_it_is(path: Path) -> str:
    """The file at `path` as it is (its size, when it was last written): told apart from another put in its place."""
    now = path.stat()
    return f"{now.st_size} {now.st_mtime_ns}"


def _finish_swap(path: Path) -> Salvaged | None:
    """A salvage cut short as its fresh file took the name of the state file at `path` (the note of the swap
    left), finished; None when none was. Made again, it read the damaged file without its log, which was
    taken away first: what the log held was lost to the fresh file."""
    note = swapping(path)
    try:
        named, *stat = note.read_text().splitlines() or [""]
    except FileNotFoundError:
        return None
    kept_as = Path(named) if named else _kept_name(path)  # a note cut short as it was written: a name of its own
    fresh = _fresh_of(path)
    if not fresh.exists():  # cut short after the fresh file took the name: only the note was left
        note.unlink(missing_ok=True)
    elif stat and stat[0] != _as_it_is(path):
        # Another file put in the state's place since (a backup put back): it is not the damaged one to swap.
        fresh.unlink()
        note.unlink(missing_ok=True)
        return None
    else:
        _keep(path, kept_as)
        _swap(fresh, path)
    needs_salvage(path).unlink(missing_ok=True)
    return Salvaged(kept_as, finished=True)


def _sync_folder(folder: Path) -> None:
    """The names changed in `folder` on the disk (a rename is the folder's write)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fresh_copy(source: sqlite3.Connection, path: Path, fresh: Path, out: Salvaged) -> None:
    """Make `fresh` of what reads of `source` (the file at `path`); on a failure, nothing of it is left."""
    made = _made_for(fresh)
    for stale in made:
        stale.unlink(missing_ok=True)
    _room_for(path)
    try:
        SqliteStore(str(fresh), reserve_bytes=0).close()  # the schema, as this version makes it
        # Two connections: SQLite rolls back the transaction a read that meets a broken page is in.
        target = sqlite3.connect(fresh, isolation_level=None)
        try:
            target.execute("PRAGMA synchronous = OFF")  # a file of no use until it is whole and renamed
            _copy_all(source, target, out)
            out.copied = {name: target.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in _TABLES}
        finally:
            target.close()
    except BaseException as exc:  # the damaged file as it was, and nothing half made beside it
        for partial in made:
            partial.unlink(missing_ok=True)
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
            raise SalvageError(f"the disk beside {path} filled up during the salvage: {exc}") from None
        raise
    finally:
        Path(f"{fresh}.lock").unlink(missing_ok=True)


def _room_for(path: Path) -> None:
    """Raise SalvageError unless the disk has room for a fresh copy as large as the file and its log."""
    size, free = file_bytes(path), free_bytes(path.parent)
    if free < size:
        reserve = Path(f"{path}.reserve")  # the bridge's room for a full disk (`disk_reserve.py`)
        spare = ""
        if reserve.exists():
            spare = f"; its .reserve ({reserve.stat().st_size / 2**20:.0f} MiB) may go, made again at start"
        raise SalvageError(
            f"{free / 2**20:.0f} MiB free beside {path}, and its salvage writes a fresh file of up to "
            f"{size / 2**20:.0f} MiB: make room{spare}, then run it again"
        )


def _copy_all(source: sqlite3.Connection, target: sqlite3.Connection, out: Salvaged) -> None:
    target.execute(BOOKMARKS)
    present = {name for (name,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    columns: dict[str, list[str]] = {}
    for name, key in _TABLES.items():
        if name not in present:
            continue
        found = [column for (_cid, column, *_rest) in source.execute(f"PRAGMA table_info({name})")]
        columns[name] = [*key, *(c for c in found if c not in key)]
        if name == "outbox" and columns[name] == list(_OUTBOX):
            broken = _outbox_past_damage(source, target)
        else:
            broken = _from_both_ends(source, target, name, columns[name], len(key))
        if broken:
            out.broken.append(name)
    if "state" in columns:
        # The states the facts and the state's indexes name that no scan reached, each read by its key.
        missing = f"SELECT DISTINCT {_OWNER} AS owner FROM facts WHERE owner NOT IN (SELECT key FROM state)"
        for key in [key for (key,) in target.execute(missing)] + _indexed_keys(source, target):
            _from_both_ends(source, target, "state", columns["state"], 1, "key = ?", key)
    if "facts" in out.broken:
        owners = [key for (key,) in target.execute("SELECT key FROM state")]
        for key in (*owners, *map(keys.sent_spans, owners)):
            _from_both_ends(source, target, "facts", columns["facts"], 2, "key = ?", key)
    # A run is its state and its facts together: facts whose state was lost are left out.
    orphans = f"DELETE FROM facts WHERE {_OWNER} NOT IN (SELECT key FROM state)"
    out.orphaned_facts = target.execute(orphans).rowcount


def _from_both_ends(
    source: sqlite3.Connection,
    target: sqlite3.Connection,
    name: str,
    columns: list[str],
    width: int,
    pick: str = "",
    value: object = None,
) -> bool:
    """Copy the rows of `name` (those the condition `pick` picks, by `value`) from the first up to a broken
    page, and from the last down to one, or to a row copied already; whether a broken page was met."""
    listed = ", ".join(columns)
    insert = f"INSERT OR IGNORE INTO {name} ({listed}) VALUES ({', '.join('?' * len(columns))})"
    for order in ("ASC", "DESC"):
        rows: list[tuple[object, ...]] = []
        last: tuple[object, ...] | None = None
        ordered = f"ORDER BY {', '.join(f'{k} {order}' for k in columns[:width])}"
        query = f"SELECT {listed} FROM {name} {f'WHERE {pick}' if pick else ''} {ordered}"
        try:
            for last in source.execute(query, () if value is None else (value,)):
                rows.append(last)
                if len(rows) == _CHUNK:
                    copied = _inserted(target, insert, rows)
                    if order == "DESC" and copied < len(rows):  # reached, from the other end, what was copied
                        return True
                    rows = []
            _inserted(target, insert, rows)
            if order == "ASC":
                return False
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            rows += _up_to_damage(source, name, listed, columns[:width], ordered, pick, value, last)
            _inserted(target, insert, rows)
    return True


def _up_to_damage(
    source: sqlite3.Connection,
    name: str,
    listed: str,
    keys: list[str],
    ordered: str,
    pick: str,
    value: object,
    last: tuple[object, ...] | None,
) -> list[tuple[object, ...]]:
    """The rows after `last` in that order, read one at a time up to the broken page: sqlite3 steps to the
    next row before it hands one over, and the step into a broken page lost the row it was about to hand
    over (the key between two pages, kept in the page above them, among them). `LIMIT 1` ends each read
    before it steps on."""
    after = "<" if ordered.endswith("DESC") else ">"
    found: list[tuple[object, ...]] = []
    while True:
        conditions = [pick] if pick else []
        params = [] if value is None else [value]
        if last is not None:
            conditions.append(f"({', '.join(keys)}) {after} ({', '.join('?' * len(keys))})")
            params += last[: len(keys)]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        try:
            last = source.execute(f"SELECT {listed} FROM {name} {where} {ordered} LIMIT 1", params).fetchone()
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            return found
        if last is None:
            return found
        found.append(last)


def _outbox_past_damage(source: sqlite3.Connection, target: sqlite3.Connection) -> bool:
    """Copy the outbox's rows in the order of their ids, past each broken page (`read_around_damage`): a
    read can begin from any id, beyond a page it cannot read, where other tables' text keys are only
    known from the rows read. Whether a broken page was met."""
    insert = f"INSERT OR IGNORE INTO outbox ({', '.join(_OUTBOX)}) VALUES (?, ?, ?)"
    at, broken = 0, False
    while True:
        rows: list[tuple[int, str, bytes]] = []
        try:
            for row in source.execute(OUTBOX_READ, (at,)):
                rows.append(row)
                if len(rows) == _CHUNK:
                    _inserted(target, insert, rows)
                    at, rows = rows[-1][0] + 1, []
            _inserted(target, insert, rows)
            return broken
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
        _inserted(target, insert, rows)
        at = rows[-1][0] + 1 if rows else at
        try:
            around = read_around_damage(source, at, _CHUNK)
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            return True  # nothing past the damage reads
        if not around:
            return broken
        _inserted(target, insert, [read for read in around if not isinstance(read, Passed)])
        broken = broken or any(isinstance(read, Passed) for read in around)
        last = around[-1]
        at = (last.last if isinstance(last, Passed) else last[0]) + 1


def _inserted(target: sqlite3.Connection, insert: str, rows: Sequence[tuple[object, ...]]) -> int:
    before = target.total_changes
    target.execute("BEGIN")
    target.executemany(insert, rows)
    target.execute("COMMIT")
    return target.total_changes - before


def _indexed_keys(source: sqlite3.Connection, target: sqlite3.Connection) -> list[object]:
    """The state keys the state's indexes hold that no scan copied (read up to a broken page, if any)."""
    found: list[object] = []
    for index, where in _STATE_INDEXES.items():
        query = f"SELECT key FROM state INDEXED BY {index} WHERE {where}"
        try:
            for (key,) in source.execute(query):
                if target.execute("SELECT 1 FROM state WHERE key = ?", (key,)).fetchone() is None:
                    found.append(key)
        except sqlite3.OperationalError:  # an index this file has not (an earlier version's)
            continue
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
    return found
