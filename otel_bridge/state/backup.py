"""A copy of a SQLite state file taken while a bridge runs on it: one moment of it, whole.

A file copied with `cp` while the bridge writes is torn (pages of two moments), and without its
`-wal` it lacks the last second's commits: put back, SQLite finds it damaged. SQLite's online backup
copies every page as of one read transaction, which WAL lets the bridge write beside; the copy is
checked (`PRAGMA quick_check`) and made a file of its own (no log beside it) before it takes the name
asked, so an interrupted backup never leaves half a file there.
"""

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from otel_bridge import keys
from otel_bridge.files import special
from otel_bridge.state.disk_reserve import free_bytes
from otel_bridge.state.sqlite_store import damaged, file_bytes, quick_check
from otel_bridge.state.store import damaged_said


class BackupError(Exception):
    """The backup could not be taken: said in one line."""


@dataclass(frozen=True, slots=True)
class Copied:
    """What the copy holds."""

    runs: int
    jobs: int
    outbox: int
    size_bytes: int


def back_up(state: Path, to: Path) -> Copied:
    """Copy the state file at `state` (a bridge may run on it) to `to` (replaced if there)."""
    if not state.is_file():
        raise BackupError(f"no state file at {state}")
    _may_take(to, state)
    partial = to.with_name(to.name + ".partial")
    partial.unlink(missing_ok=True)
    _room_for(state, to)
    source = sqlite3.connect(f"file:{state.resolve()}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)  # every page in one step: one read transaction, one moment
            copy.execute("PRAGMA journal_mode = DELETE")  # one file: its own, to copy or move as it is
            if (found := quick_check(copy)) is not None:
                raise BackupError(damaged_said(state, found))
            copied = _what(copy)
        finally:
            copy.close()
    except sqlite3.DatabaseError as exc:
        partial.unlink(missing_ok=True)
        if damaged(exc):
            raise BackupError(damaged_said(state, exc)) from None
        raise BackupError(f"cannot back up {state} to {to}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    os.replace(partial, to)
    return Copied(copied.runs, copied.jobs, copied.outbox, to.stat().st_size)


def _may_take(to: Path, state: Path) -> None:
    """Raise BackupError unless the copy may take the name `to`: a regular file (replaced) or none, and not the
    state file's own, nor one of the files its bridge keeps beside it. Taken, the state's name left the
    running bridge writing to a file no longer named, beside a log no longer its own; a device's (as root)
    was replaced by the copy."""
    if special(to):
        raise BackupError(f"{to} is no file to copy to (a device, a pipe or a socket): name a file or a directory")
    own = [Path(f"{state}{suffix}") for suffix in ("", "-wal", "-shm", ".lock", ".reserve")]
    if any(to.resolve() == file.resolve() or (to.exists() and file.exists() and to.samefile(file)) for file in own):
        raise BackupError(f"{to} is the state file's own, or one its bridge keeps beside it: name another")


def _room_for(state: Path, to: Path) -> None:
    """Raise BackupError when the copy would not fit where it goes, or, on the state's own disk, would leave
    the running bridge less room than the state takes: it writes on while the copy is taken, the copy stays
    (BridgeStateDiskFillingUp counts it), and a full disk refuses its batches."""
    size, free = file_bytes(state), free_bytes(to.parent)
    shared = os.stat(to.parent).st_dev == os.stat(state.parent).st_dev
    left = free - size
    if left >= size or (left >= 0 and not shared):
        return
    why = "it would not fit" if left < 0 else "it would leave the running bridge less room than its state takes"
    where = "the state's own disk" if shared else "another disk"
    raise BackupError(
        f"{free / 2**20:,.0f} MiB free where the copy goes ({where}), and it takes up to "
        f"{size / 2**20:,.0f} MiB: {why}; back up to another disk, or make room"
    )


def _what(db: sqlite3.Connection) -> Copied:
    runs = db.execute("SELECT count(*) FROM state WHERE substr(key, 1, ?) = ?", (len(keys.RUNS), keys.RUNS))
    jobs = db.execute("SELECT count(*) FROM state WHERE substr(key, 1, ?) = ?", (len(keys.JOBS), keys.JOBS))
    outbox = db.execute("SELECT count(*) FROM outbox")
    return Copied(runs.fetchone()[0], jobs.fetchone()[0], outbox.fetchone()[0], 0)
