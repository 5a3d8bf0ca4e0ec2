"""A state file SQLite finds damaged: what still reads is salvaged into a fresh file the bridge goes on with."""

import math
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from faults import broken_page, open_runs

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state import salvage as salvage_module
from otel_bridge.state.salvage import SalvageError, salvage
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import StoreInUse

RUNS = 300


def _pipeline(path: Path) -> Pipeline:
    settings = Settings(state=str(path), settle_seconds=0)
    return Pipeline(SqliteStore(settings.state), MetricsHub(), settings)


def _rows(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def test_a_broken_page_of_run_states_loses_the_runs_on_it_and_no_other(tmp_path):
    path = tmp_path / "otel-bridge.db"
    runs = open_runs(path, RUNS)
    states, facts = _rows(path, "state"), _rows(path, "facts")
    lost = broken_page(path, "state")
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        _rows(path, "state")

    done = salvage(path)

    assert done is not None and done.broken == ["state"]
    # The page's rows are lost, and no other: the two that bound it in the page above are read one at a
    # time (sqlite3, stepping ahead into the broken page before it handed them over, lost them).
    assert done.copied["state"] == states - lost
    # The facts of the runs lost with their state are left out: a run is its state and its facts together.
    assert done.copied["facts"] + done.orphaned_facts == facts and done.orphaned_facts > 0
    assert done.kept_as.name.startswith("otel-bridge.db.damaged-") and done.kept_as.is_file()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Each run kept keeps the ids of the spans it has sent: none is sent twice.
    sent = db.execute("SELECT count(DISTINCT key) FROM facts WHERE substr(key, 1, 5) = ?", ("sent\x1f",))
    assert sent.fetchone()[0] == done.copied["state"]
    db.close()
    # The bridge goes on with the fresh file: the runs kept carry on to their end, those lost start afresh.
    pipeline = _pipeline(path)
    listed = {run.run_id for run in pipeline.list_runs(RunQuery(), limit=RUNS)[0]}
    assert len(listed) == done.copied["state"]
    kept = next(run for run in runs if run.workflow_id in listed)
    gone = next(run for run in runs if run.workflow_id not in listed)
    for run in (kept, gone):
        pipeline.ingest(run.step_completed("pay").completed().events[-2:])
    assert pipeline.settle_due(horizon=time.time() + 3600) > 0
    assert pipeline.store.outbox_depth() > 0


def test_a_broken_page_of_facts_loses_the_facts_on_it_and_every_run(tmp_path):
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    states, facts = _rows(path, "state"), _rows(path, "facts")
    lost = broken_page(path, "facts")

    done = salvage(path)

    assert done is not None and done.broken == ["facts"]
    assert done.copied["state"] == states
    assert done.copied["facts"] == facts - lost  # read from both ends up to the broken page


def test_two_broken_pages_of_the_outbox_lose_the_spans_on_them_and_none_between(tmp_path):
    # Read from both ends, the spans between the two pages were lost with them: a read of the outbox can
    # begin from any id, past a page it cannot read.
    path = tmp_path / "otel-bridge.db"
    store = SqliteStore(path)
    store.run(lambda tx: tx.outbox_add(("svc\x1fenv", n.to_bytes(4, "big") * 75) for n in range(3000)))
    store.close()
    lost = broken_page(path, "outbox", 0.3) + broken_page(path, "outbox", 0.7)

    done = salvage(path)

    assert done is not None and done.broken == ["outbox"] and done.copied["outbox"] == 3000 - lost
    salvaged = SqliteStore(path)
    payloads = [row.payload for row in salvaged.outbox_peek(3000)]
    salvaged.close()
    assert payloads == sorted(payloads) and len(payloads) == 3000 - lost


def test_events_that_meet_a_broken_page_are_rejected_naming_it_and_the_others_are_stored(tmp_path):
    # Refused with a 503, they were dropped after the producer's three re-sends: rejected, each is kept in
    # the dead-letter file (replayed once the file is salvaged), and the producer's other runs go on.
    path = tmp_path / "otel-bridge.db"
    runs = open_runs(path, RUNS)
    broken_page(path, "facts")
    pipeline = _pipeline(path)  # it starts: a start reads the states, not their facts
    pipeline.restore_gauges()
    rejected = accepted = 0
    for run in runs:
        report = pipeline.ingest(run.step_completed("pay").events[-1:])
        accepted += report.accepted
        for rejection in report.rejected:
            assert "the state file is damaged" in rejection.reason and "salvage-state" in rejection.reason
            rejected += 1
    assert rejected > 0 and accepted > 0 and rejected + accepted == RUNS
    assert pipeline.damage is not None and "damaged" in pipeline.damage


def test_runs_on_a_broken_page_are_left_unsettled_and_every_other_run_settles(tmp_path):
    # One pass met the broken page at the first such run and failed, and every pass after it the same:
    # no trace left the bridge, and the log had a traceback a minute.
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    broken_page(path, "facts")
    later = time.time() + 8 * 86_400  # past max_open_seconds: each run is closed, its facts read
    settings = Settings(state=str(path), settle_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: later)
    pipeline.settle_due()  # each slice that meets a run on the broken page made again without it
    left = len(pipeline._damaged_runs)
    assert 0 < left < 20
    # Each run's first step waited for export already; each other run's root and its attempt now too.
    assert pipeline.store.outbox_depth() == RUNS + 2 * (RUNS - left)
    assert pipeline.list_runs(RunQuery(), limit=0)[1] == left


def test_a_file_nothing_is_damaged_in_is_left_as_it_is(tmp_path):
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    before = path.read_bytes()
    assert salvage(path) is None
    assert path.read_bytes() == before and list(tmp_path.glob("*.damaged-*")) == []


def test_a_file_whose_first_page_is_broken_is_said_to_hold_nothing_that_reads_and_left_as_it_is(tmp_path):
    # Its schema is on that page: the salvage met "file is not a database" copying, and raised it (a traceback).
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    with path.open("r+b") as file:
        file.write(b"\xff" * 512)
    before = path.read_bytes()

    with pytest.raises(SalvageError, match=r"nothing of .*otel-bridge\.db reads \(file is not a database: .*backup"):
        salvage(path)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["otel-bridge.db", "otel-bridge.db.lock"]


def test_a_file_a_bridge_holds_is_not_salvaged_under_it(tmp_path):
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    broken_page(path, "state")
    held = SqliteStore(str(path))
    try:
        with pytest.raises(StoreInUse):
            salvage(path)
    finally:
        held.close()


def test_a_disk_without_room_for_the_fresh_file_is_said_before_anything_changes(tmp_path, small_disk):
    # A fresh file as large as the damaged one would have filled the disk the bridge's state lives on.
    open_runs(tmp_path / "made.db", 600)  # made elsewhere: unchecked, SQLite's log outgrows the small disk
    path = small_disk / "otel-bridge.db"
    shutil.copyfile(tmp_path / "made.db", path)
    broken_page(path, "state")
    ballast = small_disk / "other.log"  # what else the volume holds
    ballast.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - path.stat().st_size // 2))
    before = path.read_bytes()
    with pytest.raises(SalvageError, match=r"MiB free beside .* make room"):
        salvage(path)
    assert path.read_bytes() == before
    assert not [p.name for p in small_disk.iterdir() if ".salvaged" in p.name or ".damaged-" in p.name]
    ballast.unlink()
    assert salvage(path) is not None  # once there is room


def test_runs_on_a_broken_page_are_left_as_indexed_and_every_other_run_is_judged_by_the_settings(tmp_path):
    # Met by the overdue index written again at start (silent_executing set since): it failed every pass,
    # with a traceback each minute, and no run was indexed by the new settings.
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    broken_page(path, "facts")
    settings = Settings(state=str(path), settle_seconds=0, silent_executing="*=60s")
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)

    assert pipeline.index_by_these_settings() == RUNS
    left = len(pipeline._damaged_runs)
    assert 0 < left < 20
    assert len(pipeline.store.overdue_keys(math.inf)) == RUNS - left
    # Counted overdue an hour on, as the gauge counts them: those it can read.
    overdue, _jobs = pipeline.overdue(now=time.time() + 3600)
    assert len(overdue) == RUNS - left and pipeline.damage is not None


class _Killed(BaseException):
    """The process killed at that point (a node drained, an out-of-memory kill, in the middle of a salvage)."""


def test_a_salvage_cut_short_as_the_fresh_file_takes_its_place_leaves_a_whole_file_and_the_next_finishes_it(
    tmp_path, monkeypatch
):
    # The damaged file was renamed away before the fresh one took its name: killed between the two, there
    # was no state file, and the next start began an empty one. Then the next salvage made it again from the
    # damaged file, its log taken away already: what the log held was lost.
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    states = _rows(path, "state")
    lost = broken_page(path, "state")
    _logged(path, "an event taken last")
    damaged = path.read_bytes()

    monkeypatch.setattr(Path, "replace", _killed)
    with pytest.raises(_Killed):
        salvage(path)
    monkeypatch.undo()

    assert path.read_bytes() == damaged  # the damaged file, still where the bridge reads it
    (first,) = tmp_path.glob("otel-bridge.db.damaged-*[0-9Z]")
    assert first.read_bytes() == damaged and Path(f"{first}-wal").exists()  # already kept beside, with its log

    done = salvage(path)

    assert done is not None and done.finished and done.kept_as == first
    assert "cut short" in done.told()[0] and str(first) in done.told()[-1]
    assert _rows(path, "state") == states - lost
    assert _seen(path, "an event taken last")
    assert len(list(tmp_path.glob("otel-bridge.db.damaged-*[0-9Z]"))) == 1
    assert {p.name for p in tmp_path.iterdir()} >= {"otel-bridge.db", "otel-bridge.db.take-again"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".swapping", ".salvaged"))]
    assert salvage(path) is None, "nothing damaged in it now"


def test_a_salvage_cut_short_once_its_fresh_file_took_the_name_leaves_nothing_to_finish(tmp_path, monkeypatch):
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    broken_page(path, "state")
    monkeypatch.setattr(salvage_module, "_sync_folder", _killed_once_renamed(path))
    with pytest.raises(_Killed):
        salvage(path)
    monkeypatch.undo()
    done = salvage(path)
    assert done is not None and done.finished and not (tmp_path / "otel-bridge.db.swapping").exists()
    assert _rows(path, "state") > 0 and salvage(path) is None


def test_a_backup_put_back_after_a_salvage_was_cut_short_is_not_swapped_away(tmp_path, monkeypatch):
    path, backup = tmp_path / "otel-bridge.db", tmp_path / "backup.db"
    open_runs(path, RUNS)
    shutil.copyfile(path, backup)
    broken_page(path, "state")
    monkeypatch.setattr(Path, "replace", _killed)
    with pytest.raises(_Killed):
        salvage(path)
    monkeypatch.undo()
    time.sleep(0.01)  # a later write, as a person's is
    shutil.copyfile(backup, path)  # the runbook's way: the bridge stopped, its log removed, the backup copied over

    assert salvage(path) is None and path.read_bytes() == backup.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".swapping", ".salvaged"))]


def _killed(self: Path, target: object) -> Path:
    raise _Killed()


def _killed_once_renamed(path: Path):
    """`_sync_folder` killed once the fresh file took the name of `path` (before the note of the swap went)."""
    sync = salvage_module._sync_folder

    def syncing(folder: Path) -> None:
        sync(folder)
        if not path.with_name(path.name + ".salvaged").exists():
            raise _Killed()

    return syncing


def _logged(path: Path, event_id: str) -> None:
    """An event id taken, written to the file at `path` in its log alone (the file as it was, the log beside),
    as a bridge killed before SQLite copied its log into the file leaves it."""
    before = path.read_bytes()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("INSERT INTO seen (event_id, at) VALUES (?, ?)", (event_id, time.time()))
    db.commit()
    log = Path(f"{path}-wal").read_bytes()
    db.close()
    path.write_bytes(before)
    Path(f"{path}-wal").write_bytes(log)


def _seen(path: Path, event_id: str) -> bool:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT 1 FROM seen WHERE event_id = ?", (event_id,)).fetchone() is not None
    finally:
        db.close()


def test_of_the_damaged_files_salvages_keep_the_latest_are_left_and_the_older_deleted(tmp_path):
    # Each is as large as the state was: a disk that damaged the file again and again filled with them.
    path = tmp_path / "otel-bridge.db"
    open_runs(path, RUNS)
    kept: list[Path] = []
    for _ in range(3):
        broken_page(path, "state")
        done = salvage(path, keep_damaged=2)
        assert done is not None
        kept.append(done.kept_as)
        Path(f"{done.kept_as}-wal").write_bytes(b"its log")  # as a bridge's running on it leaves one
        assert done.deleted == kept[:-2]
    left = sorted(tmp_path.glob("otel-bridge.db.damaged-*"))
    assert [p for p in left if not p.name.endswith(("-wal", "-shm"))] == kept[1:]
    assert not {f"{kept[0].name}{suffix}" for suffix in ("", "-wal", "-shm")} & {p.name for p in left}  # its log too
    assert any("older damaged files deleted (salvage_keep_damaged)" in line for line in done.told())
    broken_page(path, "state")
    done = salvage(path, keep_damaged=1)
    assert done is not None and done.deleted == kept[1:]
    assert {p.name for p in tmp_path.glob("otel-bridge.db.damaged-*")} <= {
        f"{done.kept_as.name}{suffix}" for suffix in ("", "-wal", "-shm")
    }
