"""`otel-bridge backup-state`: one moment of a running bridge's SQLite state, whole, that a bridge goes on from."""

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from faults import broken_page, open_runs

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.backup import BackupError, back_up
from otel_bridge.state.sqlite_store import SqliteStore


def test_a_backup_taken_while_the_bridge_writes_is_whole_and_a_bridge_goes_on_from_it(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    answered: list[WorkflowRun] = []
    stop = threading.Event()

    def producing() -> None:  # runs begun one after another, each answered before the next
        while not stop.is_set():
            run = WorkflowRun("checkout").started().step_started("pay")
            assert bridge.post(run.events).status_code == 200
            answered.append(run)

    producer = threading.Thread(target=producing)
    producer.start()
    try:
        time.sleep(1)
        before = len(answered)
        copy = tmp_path / "backups"
        copy.mkdir()
        backed_up = subprocess.run(
            [sys.executable, "-m", "otel_bridge", "backup-state", str(copy), "--state", str(tmp_path / "state.db")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        after = len(answered)
        time.sleep(0.5)  # and it takes batches on as before
    finally:
        stop.set()
        producer.join()
        bridge.close()
    assert backed_up.returncode == 0, backed_up.stderr
    assert "backed up to" in backed_up.stdout and "run states" in backed_up.stdout
    assert len(answered) > after
    saved = copy / "state.db"
    assert list(copy.iterdir()) == [saved]  # one file of its own: no log, no half copy beside it
    db = sqlite3.connect(saved)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()

    # Put back (the bridge stopped), it holds every run answered before the backup began: each goes on.
    settings = Settings(state=str(saved), settle_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    listed = {run.run_id for run in pipeline.list_runs(RunQuery(), limit=None)[0]}
    assert {run.workflow_id for run in answered[:before]} <= listed
    assert len(listed) <= after + 1  # as of one moment within the backup
    first = answered[0]
    pipeline.ingest(first.after(5).step_completed("pay").completed().events[-2:])
    assert pipeline.settle_due(horizon=time.time() + 60) == 2  # the attempt and the run's root


def test_a_damaged_state_is_not_backed_up_and_nothing_is_left_where_the_copy_was_asked(tmp_path):
    state = tmp_path / "otel-bridge.db"
    open_runs(state, 300)
    broken_page(state, "state")
    to = tmp_path / "copy.db"
    with pytest.raises(BackupError, match=r"is damaged .*salvage-state"):
        back_up(state, to)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("copy.db")]


def test_a_backup_replaces_the_one_before(tmp_path):
    state = tmp_path / "otel-bridge.db"
    open_runs(state, 10)
    to = tmp_path / "copy.db"
    to.write_bytes(b"yesterday's")
    copied = back_up(state, to)
    assert copied.runs == 10 and copied.outbox == 10 and copied.size_bytes == to.stat().st_size
    assert to.read_bytes().startswith(b"SQLite format 3\x00")


@pytest.mark.parametrize("name", ["otel-bridge.db", "otel-bridge.db-wal", "a hard link of it", "a pipe"])
def test_a_copy_is_not_put_in_the_place_of_the_state_its_files_or_what_is_no_file(tmp_path, name):
    # The state's own name was taken (`backup-state .` beside it), and a device's as root (/dev/full became a file).
    state = tmp_path / "otel-bridge.db"
    open_runs(state, 10)
    to = tmp_path / name
    if name == "a hard link of it":
        os.link(state, to)
    elif name == "a pipe":
        os.mkfifo(to)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}

    with pytest.raises(BackupError, match=r"is the state file's own|is no file to copy to"):
        back_up(state, to)

    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_a_redis_state_is_not_backed_up_by_the_bridge(tmp_path, capsys):
    from otel_bridge.cli import main

    assert main(["backup-state", str(tmp_path / "copy.db"), "--state", "redis://127.0.0.1:6399/0"]) == 2
    assert "backup-state copies a SQLite state file" in capsys.readouterr().err
    assert not (tmp_path / "copy.db").exists()


def test_a_backup_that_would_leave_the_bridge_less_room_than_its_state_takes_is_not_taken(tmp_path, small_disk):
    # On the state's own disk the copy stays: the bridge, writing on, would meet a full disk (503s).
    open_runs(tmp_path / "made.db", 600)  # made elsewhere: unchecked, SQLite's log outgrows the small disk
    state = small_disk / "otel-bridge.db"
    shutil.copyfile(tmp_path / "made.db", state)
    size = state.stat().st_size
    ballast = small_disk / "other.log"
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - size * 3 // 2))
    with pytest.raises(BackupError, match="less room than its state takes; back up to another disk"):
        back_up(state, small_disk / "copy.db")
    assert not [p.name for p in small_disk.iterdir() if p.name.startswith("copy.db")]
    assert back_up(state, tmp_path / "copy.db").runs == 600  # to another disk
