"""Salvaging a damaged SQLite state file: what of it still reads, copied into a fresh file put in its place.

SQLite's own recovery (the `.recover` of its shell) is not reachable from Python's sqlite3 module,
and the shell Debian 12 ships (3.40) stops at this schema's first table with "SQL logic error". A
broken page loses the rows it holds and stops any read that walks through it; the rest of the file
reads. So each table is read in the order of its key from both ends, each direction up to the
first page that does not read, and the rows of one table that another names are read by their
key, which reaches them past a broken page elsewhere: a run's state by the keys its facts and the
state's two indexes hold, a run's facts (and the spans it has sent) by its state's key. Facts whose
run state was lost are left out (a run is its state and its facts together: what its next event
brings starts it afresh). A key between two pages, kept in the page above them, is read on the way
to it from one side only: one on the far side of a broken page is lost with it.

The damaged file is kept beside, renamed, with its log: nothing is deleted.
"""

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from otel_bridge import keys
from otel_bridge.state.sqlite_store import BOOKMARKS, SqliteStore, claimed, damaged, quick_check

# Each table the bridge keeps, with the columns of its key.
_TABLES: dict[str, tuple[str, ...]] = {
    "state": ("key",),
    "facts": ("key", "seq"),
    "outbox": ("id",),
    "seen": ("event_id",),
    "bookmarks": ("name",),
}
# The state table's indexes, each holding the keys of the states it indexes (partial: read as they are).
_STATE_INDEXES = {"state_due": "due IS NOT NULL", "state_overdue": "overdue_at IS NOT NULL"}
# The files SQLite keeps beside a database in WAL mode, moved with it.
_BESIDE = ("-wal", "-shm")

Row = tuple[object, ...]


@dataclass
class Table:
    """The rows read of one table, each with its key's columns first, in the order `columns` names."""

    columns: list[str]
    rows: list[Row] = field(default_factory=list)


@dataclass
class Salvaged:
    """What `salvage` copied, table by table, and where it met a page it could not read."""

    kept_as: Path
    copied: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    orphaned_facts: int = 0


def salvage(path: Path) -> Salvaged | None:
    """Copy what reads of the state file at `path` into a fresh one, keep the damaged file beside as
    `<path>.damaged-<UTC time>` and put the fresh one in its place; None when SQLite finds nothing
    damaged (nothing is done then). Holds the file's lock throughout: no bridge may run on it."""
    with claimed(str(path)):
        source = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            if quick_check(source) is None:
                return None
            tables, broken = _read_all(source)
        finally:
            source.close()
        out = Salvaged(path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"))
        out.broken = broken
        if "state" in tables and "facts" in tables:  # a run is its state and its facts together
            states = {row[0] for row in tables["state"].rows}
            whole = [row for row in tables["facts"].rows if keys.state_of(str(row[0])) in states]
            out.orphaned_facts = len(tables["facts"].rows) - len(whole)
            tables["facts"].rows = whole
        fresh = path.with_name(path.name + ".salvaged")
        for stale in (fresh, *(Path(f"{fresh}{suffix}") for suffix in _BESIDE)):
            stale.unlink(missing_ok=True)
        SqliteStore(str(fresh), reserve_bytes=0).close()  # the schema, as this version makes it
        Path(f"{fresh}.lock").unlink(missing_ok=True)
        out.copied = _write(fresh, tables)
        for suffix in ("", *_BESIDE):
            if Path(f"{path}{suffix}").exists():
                Path(f"{path}{suffix}").rename(f"{out.kept_as}{suffix}")
        fresh.rename(path)
        return out


def _read_all(db: sqlite3.Connection) -> tuple[dict[str, Table], list[str]]:
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables: dict[str, Table] = {}
    broken: list[str] = []
    for name, key in _TABLES.items():
        if name not in present:
            continue
        found = [column for (_cid, column, *_rest) in db.execute(f"PRAGMA table_info({name})")]
        table = tables[name] = Table([*key, *(c for c in found if c not in key)])
        if _from_both_ends(db, name, table, len(key)):
            broken.append(name)
    if "state" in tables:
        known = {row[0] for row in tables["state"].rows}
        facts = tables["facts"].rows if "facts" in tables else []
        named = _indexed_keys(db) | {keys.state_of(str(row[0])) for row in facts}
        tables["state"].rows += _by_key(db, "state", tables["state"], named - known)
    if "facts" in broken and "state" in tables:
        read = {row[:2] for row in tables["facts"].rows}
        owners = [str(row[0]) for row in tables["state"].rows]
        again = _by_key(db, "facts", tables["facts"], [*owners, *map(keys.sent_spans, owners)])
        tables["facts"].rows += [row for row in again if row[:2] not in read]
    return tables, broken


def _from_both_ends(
    db: sqlite3.Connection, name: str, table: Table, width: int, where: str = "", value: object = None
) -> bool:
    """Read into `table` the rows of `name` (those `where` picks, by `value`) from the first up to a broken
    page, and from the last down to one; whether a broken page was met. A row read before the read
    failed is kept: a key between two pages (kept in the page above them) is read on the way."""
    key = table.columns[:width]
    taken: set[Row] = set()
    for order in ("ASC", "DESC"):
        query = (
            f"SELECT {', '.join(table.columns)} FROM {name} {where} ORDER BY {', '.join(f'{k} {order}' for k in key)}"
        )
        try:
            for row in db.execute(query, () if value is None else (value,)):
                if row[:width] in taken:  # read from the other end already
                    return True
                taken.add(row[:width])
                table.rows.append(row)
            if order == "ASC":
                return False
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
    return True


def _indexed_keys(db: sqlite3.Connection) -> set[object]:
    found: set[object] = set()
    for index, where in _STATE_INDEXES.items():
        try:
            found.update(key for (key,) in db.execute(f"SELECT key FROM state INDEXED BY {index} WHERE {where}"))
        except sqlite3.OperationalError:  # an index this file has not (an earlier version's)
            continue
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
    return found


def _by_key(db: sqlite3.Connection, name: str, table: Table, wanted: Iterable[object]) -> list[Row]:
    """The rows of `name` whose first key column is each of `wanted`, read by key: a broken page
    elsewhere is not walked through; the rows on one are left."""
    found = Table(table.columns)
    for value in wanted:
        _from_both_ends(db, name, found, len(_TABLES[name]), f"WHERE {table.columns[0]} = ?", value)
    return found.rows


def _write(fresh: Path, tables: dict[str, Table]) -> dict[str, int]:
    copied: dict[str, int] = {}
    db = sqlite3.connect(fresh, isolation_level=None)
    try:
        db.execute("BEGIN")
        if "bookmarks" in tables:
            db.execute(BOOKMARKS)
        for name, table in tables.items():
            marks = ", ".join("?" * len(table.columns))
            db.executemany(f"INSERT OR IGNORE INTO {name} ({', '.join(table.columns)}) VALUES ({marks})", table.rows)
            copied[name] = db.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        db.execute("COMMIT")
    finally:
        db.close()
    return copied
