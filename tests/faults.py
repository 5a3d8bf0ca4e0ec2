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


def broken_page(path: Path, table: str, at: float = 0.5, kind: str = "leaf") -> int:
    """Overwrite a page of `table` in the SQLite file at `path` (no process holding it) with noise, as a disk
    fault or a copy taken mid-write leaves one; the rows that page held (lost with it). Which: the one `at`
    that fraction of the table's pages of that `kind` (SQLite's `dbstat`: leaf, internal, overflow), in
    the order they lie in the file."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
        leaves = db.execute(
            "SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno", (table, kind)
        ).fetchall()
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    assert len(leaves) >= 3 or kind != "leaf", f"{table} fits on {len(leaves)} pages: store more to break one"
    page, rows = leaves[min(int(len(leaves) * at), len(leaves) - 1)]
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(bytes(range(256)) * (page_size // 256))
    return rows


def open_runs(path: Path, count: int) -> list:
    """A bridge's SQLite state file at `path` holding `count` workflow runs, each mid-way (open: a step done
    and its span waiting for export, the next begun), the bridge stopped: enough pages for one of them to
    be broken (`broken_page`)."""
    from builders import WorkflowRun

    from otel_bridge.config import Settings
    from otel_bridge.export.metrics import MetricsHub
    from otel_bridge.state.sqlite_store import SqliteStore

    settings = Settings(state=str(path), settle_seconds=0)
    store = SqliteStore(settings.state)
    bridge = pipeline.Pipeline(store, MetricsHub(), settings)
    runs = [WorkflowRun(f"order{n % 7}").started({"order": n}) for n in range(count)]
    for run in runs:
        run.step_started("check").after(3).step_completed("check").step_started("pay").after(5)
        bridge.ingest(run.events)
    bridge.settle_due(horizon=float("inf"))  # each first step's span in the outbox, its id among the sent
    store.close()
    return runs
