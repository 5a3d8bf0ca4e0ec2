"""Faults injected into the real pipeline: for the tests of what it does when it has a bug, or when
its disk is full."""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otel_bridge import pipeline
from otel_bridge.lifecycle import event_id_of

BUG = "a bug the pipeline has for this event"


def a_bug_for(monkeypatch, event_id: str) -> None:
    """From now until `monkeypatch.undo()` (or the test's end), `apply` raises for `event_id`, only for it."""
    real = pipeline.apply

    def apply(state, due, record, now, policy):
        if event_id_of(record) == event_id:
            raise RuntimeError(BUG)
        return real(state, due, record, now, policy)

    monkeypatch.setattr(pipeline, "apply", apply)


@contextmanager
def small_filesystem(where: Path, mib: int, read_only: bool = False) -> Iterator[Path]:
    """A filesystem of `mib` MiB of its own (tmpfs) at `where`, to be filled up for real: SQLite's
    `max_page_count` leaves its write-ahead log free to grow, which a full disk does not. Mounted as
    root, or through `sudo` otherwise, as ./scripts/test installs its packages; `read_only`, as a
    container's read-only root is."""
    as_root = [] if os.geteuid() == 0 else ["sudo", "-n"]
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [
            *as_root,
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={mib}m,mode=1777{',ro' if read_only else ''}",
            "tmpfs",
            str(where),
        ],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, (
        f"cannot mount a {mib} MiB tmpfs (root, or sudo without a password): {mounted.stderr}"
    )
    try:
        yield where
    finally:
        subprocess.run([*as_root, "umount", "-l", str(where)], check=False)
