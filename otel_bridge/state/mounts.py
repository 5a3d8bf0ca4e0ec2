"""Which filesystem holds the state file, read from the kernel's mount table.

SQLite's write-ahead log keeps its index in a file every connection maps into memory, and a writer
is kept alone by the file's locks: a network filesystem (NFS, SMB, a FUSE mount of remote storage,
WSL's 9p view of Windows drives) keeps neither reliably. SQLite says so itself ("WAL does not work
over a network filesystem"), and what a user meets there is a "disk I/O error" at the first write,
or two bridges on two machines that both hold the file's lock and corrupt it.
"""

from pathlib import Path

# Filesystem types as /proc/self/mountinfo names them.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
    "fuse.sshfs", "fuse.glusterfs", "fuse.ceph-fuse", "fuse.s3fs", "fuse.mountpoint-s3", "fuse.gcsfuse",
    "fuse.blobfuse2", "fuse.rclone", "fuse.grpcfuse", "fuse.juicefs",
})  # fmt: skip

_MOUNTINFO = Path("/proc/self/mountinfo")


def _unescaped(field: str) -> str:
    """A mount point as the kernel writes it: space, tab, newline and backslash as octal escapes."""
    for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escape, char)
    return field


def filesystem_type(path: Path, mountinfo: str) -> str | None:
    """The type of the filesystem mounted at the deepest mount point above `path` (absolute, links
    resolved), as the mount table `mountinfo` says; of two mounts on one point, the later (on top)."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not after:
            continue
        point = Path(_unescaped(parts[4]))
        if (path == point or point in path.parents) and (best is None or len(point.parts) >= best[0]):
            best = (len(point.parts), after.split(" ", 1)[0])
    return None if best is None else best[1]


def filesystem_of(path: str | Path) -> str | None:
    """The type of the filesystem that holds `path` (or would, for a file not made yet); None where the
    kernel does not say (not Linux)."""
    where = Path(path).resolve()
    try:
        return filesystem_type(where, _MOUNTINFO.read_text())
    except OSError:
        return None


def network_risk(path: str | Path) -> str | None:
    """What keeping the state file at `path` costs, in a sentence for the operator; None on a local disk."""
    kind = filesystem_of(path)
    if kind not in NETWORK_FILESYSTEMS:
        return None
    return (
        f"the state file {path} is on a network filesystem ({kind}): SQLite's write-ahead log and its locks are"
        " not kept reliably there — writes can fail (disk I/O error), and bridges on two machines can both take"
        " the file and corrupt it; keep the state on a local disk (a ReadWriteOnce volume), or give the bridges"
        " a shared Redis state (--state redis://…)"
    )
