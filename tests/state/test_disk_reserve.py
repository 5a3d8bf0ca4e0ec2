"""A disk truly full under the SQLite state: what waits for export still leaves, thanks to the room kept
beside the state file; new batches are refused until the disk has room, and then the room is kept again.
On a real filesystem of 12 MiB, filled up."""

import contextlib
import errno
import os
import sqlite3

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge.export import otlp
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.outbox_drain import OutboxDrain
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import StoreUnavailable

MiB = 2**20


def _add(store: SqliteStore, n: int = 20) -> None:
    store.run(lambda tx: tx.outbox_add([("svc", os.urandom(1500)) for _ in range(n)]))


def _fill(store: SqliteStore) -> int:
    """Spans into the outbox until the disk refuses them (what a backend outage leaves behind), the
    log checkpointed after each batch as `serve` does every second, which may fail and is retried."""
    added = 0
    while store.refuses_batches() is None:  # asked by the pipeline before each batch
        try:
            _add(store)
        except StoreUnavailable as exc:
            assert "disk is full" in str(exc)
            return added
        added += 20
        with contextlib.suppress(sqlite3.OperationalError):  # the disk is full: `serve` tries again a second later
            store.checkpoint()
    return added


def _drain(store: SqliteStore, batch: int = 256) -> None:
    """What the export does once the backend is back: take a batch, acknowledge it, checkpoint."""
    while rows := store.outbox_peek(batch):
        store.outbox_ack([r.id for r in rows])
        store.checkpoint()


def test_on_a_full_disk_what_waits_for_export_leaves_and_batches_wait_for_room(small_disk):
    (small_disk / "other.log").write_bytes(os.urandom(5 * MiB))  # someone else's file, deleted later
    store = SqliteStore(small_disk / "s.db", reserve_bytes=2 * MiB)
    reserve = small_disk / "s.db.reserve"
    assert reserve.stat().st_size == 2 * MiB
    waiting = _fill(store)
    assert waiting > 500

    _drain(store)  # the backend took them: they leave, and are not sent again
    assert store.outbox_depth() == 0 and not reserve.exists()
    # The room released is for what drains the disk (settling what was taken, exporting), not for
    # more batches: the pipeline refuses them without trying.
    assert "disk is full" in (store.refuses_batches() or "")

    (small_disk / "other.log").unlink()  # room again
    assert store.refuses_batches() is None and reserve.stat().st_size == 2 * MiB
    _add(store)
    assert store.outbox_depth() == 20
    store.close()


def test_acknowledging_sent_spans_logs_the_pages_that_index_them_not_their_bytes_again(tmp_path):
    # SQLite as Debian and Ubuntu build it zeroes what a DELETE frees (SECURE_DELETE): every span
    # acknowledged would be written to the log again as zeroes, so a drain on a full disk needed as
    # much room as it was to free, and the reserve ran out before the outbox was empty.
    store = SqliteStore(tmp_path / "s.db")
    store.run(lambda tx: tx.outbox_add([("svc", os.urandom(6000)) for _ in range(500)]))  # ~3 MiB
    store.checkpoint()
    checkpointed = sqlite3.connect(tmp_path / "s.db")
    checkpointed.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the log starts empty
    store.outbox_ack([row.id for row in store.outbox_peek(500)])
    _busy, logged, _copied = checkpointed.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert logged < 25  # pages of 4 KiB: the outbox's index and the free list, where zeroing logged 752
    checkpointed.close()
    store.close()


def test_without_the_reserve_a_full_disk_keeps_the_spans_sent_in_the_outbox(small_disk):
    # Why the room is kept: SQLite can neither delete nor checkpoint on a full disk, so every span
    # would be sent again at every drain, and nothing would ever free the disk.
    (small_disk / "other.log").write_bytes(os.urandom(5 * MiB))
    store = SqliteStore(small_disk / "s.db", reserve_bytes=0)
    waiting = _fill(store)
    with pytest.raises(StoreUnavailable, match="disk is full"):  # the store's refusal, told in a line, not a bug
        _drain(store)
    assert store.outbox_depth() > waiting // 2
    store.close()


def test_spans_the_store_cannot_acknowledge_are_not_sent_again_meanwhile(small_disk, otlp_http, monkeypatch):
    # A bridge restarted on a full disk has no reserve to give back: its acknowledgements fail until
    # someone frees the disk. Every drain sent the same spans to the backend once more meanwhile.
    (small_disk / "other.log").write_bytes(os.urandom(5 * MiB))
    store = SqliteStore(small_disk / "s.db", reserve_bytes=0)
    rows = 0
    with contextlib.suppress(StoreUnavailable):
        while True:
            spans = [
                ("svc\x1fenv", Span(span_id=os.urandom(8), name="x" * 1500).SerializeToString()) for _ in range(20)
            ]
            store.run(lambda tx, spans=spans: tx.outbox_add(spans))
            rows += 20
            with contextlib.suppress(sqlite3.OperationalError):
                store.checkpoint()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    sent = otlp_http.received.spans  # each span as many times as it was sent
    drain = OutboxDrain(store, otlp.trace_sender(), MetricsHub(), batch_size=100, poll_seconds=0.01, version="t")
    for _ in range(5):  # the drain's rounds while the disk stays full
        with pytest.raises(StoreUnavailable, match="disk is full"):
            drain.export_once()
    assert drain.drain(0.2) is False  # a stop's last drain says so, and ends
    assert len(sent) == 100  # the first round's, sent once

    (small_disk / "other.log").unlink()  # room again
    while drain.export_once():
        store.checkpoint()
    assert store.outbox_depth() == 0
    assert len(sent) == len({s.span_id for s in sent}) == rows  # every span, each once
    store.close()


def test_a_disk_too_full_for_the_reserve_at_start_takes_batches_and_keeps_it_once_there_is_room(small_disk):
    (small_disk / "other.log").write_bytes(os.urandom(11 * MiB))
    store = SqliteStore(small_disk / "s.db", reserve_bytes=MiB)
    reserve = small_disk / "s.db.reserve"
    assert not reserve.exists() and not list(small_disk.glob("*.new"))  # no half-made file left
    _add(store, 1)  # not refused for want of a reserve it never had
    (small_disk / "other.log").unlink()
    store.checkpoint()
    assert reserve.stat().st_size == MiB
    store.close()


def test_the_reserve_is_written_out_where_the_filesystem_cannot_allocate_it(tmp_path, monkeypatch):
    def cannot(*_args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", cannot)
    store = SqliteStore(tmp_path / "s.db", reserve_bytes=MiB + 5)
    reserve = tmp_path / "s.db.reserve"
    assert reserve.stat().st_size == MiB + 5 and reserve.stat().st_blocks * 512 >= MiB  # blocks taken, not sparse
    store.close()


def test_a_reserve_no_longer_wanted_gives_its_room_back(tmp_path):
    SqliteStore(tmp_path / "s.db", reserve_bytes=MiB).close()
    assert (tmp_path / "s.db.reserve").exists()
    SqliteStore(tmp_path / "s.db", reserve_bytes=0).close()  # disk_reserve_mib set to 0
    assert not (tmp_path / "s.db.reserve").exists()
