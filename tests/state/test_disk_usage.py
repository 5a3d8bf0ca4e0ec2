"""What the SQLite state takes of its disk, told to the operator before a full disk refuses batches:
the state's files and the room left on their filesystem, as gauges on /metrics. On a real filesystem of 12 MiB."""

import os
import re
import sqlite3
from pathlib import Path

from otel_bridge.config import Settings
from otel_bridge.export.otlp import NoSender
from otel_bridge.runtime import Bridge
from otel_bridge.state import sqlite_store
from otel_bridge.state.sqlite_store import SqliteStore

MiB = 2**20


def _free(disk: Path) -> int:
    stat = os.statvfs(disk)
    return stat.f_bavail * stat.f_frsize


def _files(disk: Path) -> int:
    """The database and its write-ahead log (not the reserve, the lock or the shared-memory index)."""
    return sum(f.stat().st_size for f in (disk / "s.db", disk / "s.db-wal") if f.exists())


def _bridge(tmp_path: Path, state: str) -> Bridge:
    settings = Settings(state=state, dead_letter=tmp_path / "dead.jsonl", span_dead_letter=tmp_path / "spans.jsonl")
    return Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())


def _gauges(bridge: Bridge) -> dict[str, float]:
    body, _ = bridge.exposition("text/plain")
    # The disk's gauges (in bytes): the state's others (its risks, the runs in memory) are not the disk's.
    found = re.findall(r"^(otel_bridge_state_\w+_bytes)\{[^}]*\} (\S+)$", body.decode(), re.M)
    return {name: float(value) for name, value in found}


def test_the_store_tells_the_size_of_its_files_and_the_room_left_on_their_disk(small_disk):
    store = SqliteStore(small_disk / "s.db", reserve_bytes=MiB)
    size, free = store.disk_usage()
    assert size == _files(small_disk)
    assert free == _free(small_disk)  # the reserve beside the state is not counted as free

    store.run(lambda tx: tx.outbox_add([("svc", os.urandom(1500)) for _ in range(2000)]))  # ~3 MiB
    grown, left = store.disk_usage()
    assert grown >= size + 2 * MiB and left <= free - 2 * MiB
    assert grown == _files(small_disk)


def test_the_bridge_exposes_them_as_gauges(small_disk, tmp_path):
    bridge = _bridge(tmp_path, str(small_disk / "s.db"))
    size, free = bridge.store.disk_usage()
    gauges = _gauges(bridge)
    assert gauges["otel_bridge_state_size_bytes"] == size
    assert abs(gauges["otel_bridge_state_disk_free_bytes"] - free) < MiB  # read a moment apart


def test_a_state_not_on_this_disk_has_no_such_gauges(tmp_path, redis_url):
    assert _gauges(_bridge(tmp_path, redis_url)) == {}


def test_a_log_grown_past_its_usual_size_gives_the_room_back_once_it_starts_over(tmp_path, monkeypatch):
    # A reader holding an old snapshot (a backup, a `sqlite3` shell left in a transaction) keeps
    # checkpoints from ending: the log grows meanwhile, and SQLite kept it at that size for good.
    monkeypatch.setattr(sqlite_store, "_WAL_KEPT_BYTES", MiB, raising=False)
    store = SqliteStore(tmp_path / "s.db")
    reader = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbox").fetchone()
    for _ in range(8):
        store.run(lambda tx: tx.outbox_add([("svc", os.urandom(1000)) for _ in range(500)]))
        store.checkpoint()
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > 3 * MiB
    reader.execute("COMMIT")
    store.checkpoint()
    store.run(lambda tx: tx.outbox_add([("svc", b"x")]))  # the log starts over
    assert wal.stat().st_size <= MiB
    reader.close()
    store.close()
