"""Room kept on the state file's disk, given back when that disk is full.

On a full disk SQLite can neither delete nor checkpoint: a DELETE appends its pages to the
write-ahead log, and a checkpoint copies the log into the database file, both of which need room.
So the spans waiting in the outbox would be sent, never acknowledged, and sent again at every
drain — and nothing would ever free the disk. A file of `size` bytes beside the state file is that
room: released the first time SQLite says the disk is full while freeing room (acknowledging
sent spans, checkpointing), never for a write that adds (batches are refused, 503, as before;
settling waits until the outbox is empty), it lets the outbox drain; the pages freed then serve
what was taken and new batches inside files already as large as they need to be, and the reserve is
made again once the disk has room for it twice over. The same idea as CockroachDB's ballast file.
"""

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class DiskReserve:
    """`kept`: the file is on disk. `full`: SQLite said the disk is full; until the disk has room
    again, batches are refused without being tried, settling waits for the outbox to empty, and what
    room there is (the reserve, once released) goes to what drains the disk."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.full = False
        self.kept = self._make()
        if not self.kept:
            log.warning("no room to keep %d MiB beside the state file (%s): kept once there is", size // 2**20, path)

    def _make(self) -> bool:
        """Have the reserve on disk (blocks allocated, not a sparse file); False when there is no room."""
        try:
            if self.path.stat().st_size == self.size:
                return True
        except FileNotFoundError:
            pass
        making = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(making, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.size)
            finally:
                os.close(fd)
            making.replace(self.path)
        except OSError:
            making.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> bool:
        """Freeing room met a full disk: give the reserve back (True when this call did)."""
        self.full = True
        if not self.kept:
            return False
        self.kept = False
        self.path.unlink(missing_ok=True)
        log.error(
            "the disk of the state file is full: released the %d MiB kept for this (%s), so that what waits for "
            "export can still leave; batches are refused until the disk has room again. Free some space on it.",
            self.size // 2**20,
            self.path,
        )
        return True

    def room(self) -> bool:
        """Whether the disk has room again (twice the reserve free); then the reserve is kept again."""
        if free_bytes(self.path.parent) < 2 * self.size:
            return False
        if not self.kept:
            self.kept = self._make()
            if not self.kept:
                return False
        if self.full:
            self.full = False
            log.warning("the disk of the state file has room again: batches are taken, %d MiB kept", self.size // 2**20)
        return True


def free_bytes(directory: Path) -> int:
    """The room left to the bridge (not to root alone) on the filesystem of `directory`."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _allocate(fd: int, size: int) -> None:
    """`size` bytes of blocks really taken on disk, not a sparse file that would give nothing back."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC: no room
    chunk = bytes(2**20)  # a filesystem without fallocate (some network ones): written out
    for start in range(0, size, len(chunk)):
        os.write(fd, chunk[: min(len(chunk), size - start)])
    os.fsync(fd)


def forget(path: Path) -> None:
    """No reserve wanted (`disk_reserve_mib` 0): one left by an earlier start gives its room back."""
    path.unlink(missing_ok=True)
