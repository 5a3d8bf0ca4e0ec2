"""A run's facts are a journal: a batch appends what it adds, never rewrites the run; one loader reads it all."""

import base64
import sqlite3
import time
import uuid

import orjson
import pytest
from bridge_counters import counted
from builders import WorkflowRun

from otel_bridge import keys
from otel_bridge.config import Settings
from otel_bridge.correlate.runs import RunState
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import NoSender
from otel_bridge.lifecycle import FactKind, Outcome
from otel_bridge.pipeline import Pipeline
from otel_bridge.repeated_failure import Cadence
from otel_bridge.runtime import Bridge
from otel_bridge.state import journal
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore, SqliteTransaction


def _due(tx, now: float, limit: int) -> list[str]:
    """The keys due by `now`, the earliest first."""
    return [key for _due_at, key in tx.due_after(now, limit, None)]


def _pipeline(path, **settings) -> Pipeline:
    s = Settings(state=str(path), settle_seconds=0, **settings)
    return Pipeline(SqliteStore(s.state), MetricsHub(), s)


def _rows(path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, count(*) FROM facts GROUP BY key"))


def _kept(store, key: str) -> list[dict]:
    """The facts a run's rows hold, in order (a row holds a transaction's facts, comma-joined)."""
    return orjson.loads(b"[" + b",".join(store.facts(key)) + b"]")


def test_a_batch_writes_its_own_facts_whatever_the_size_of_the_run(tmp_path, monkeypatch):
    pipeline = _pipeline(tmp_path / "s.db")
    run = WorkflowRun().started()
    for n in range(1, 2001):
        run.step_started("poll", n).after(1).step_failed("poll", n, will_retry=True)
    pipeline.ingest(run.events)
    written: list[int] = []
    append = SqliteTransaction.append
    monkeypatch.setattr(
        SqliteTransaction, "append", lambda tx, key, rows: (written.append(len(rows)), append(tx, key, rows))
    )
    headers: list[int] = []
    save = SqliteTransaction.save
    monkeypatch.setattr(
        SqliteTransaction, "save", lambda tx, key, blob, *a: (headers.append(len(blob)), save(tx, key, blob, *a))
    )

    pipeline.ingest(run.after(1).step_started("poll", 2001).events)

    assert written == [1]  # one new fact, one row: the 4,001 already kept are not touched
    assert headers[0] < 1000  # the run's header holds no facts
    (key,) = _rows(tmp_path / "s.db")
    assert _rows(tmp_path / "s.db") == {key: 2}  # a row per batch
    assert len(_kept(pipeline.store, key)) == 4002


def test_a_batch_keeps_each_runs_new_facts_as_one_row(tmp_path):
    pipeline = _pipeline(tmp_path / "s.db")
    first, second = WorkflowRun(), WorkflowRun()
    pipeline.ingest(first.started().step_started("a").events + second.started().events)
    pipeline.ingest(first.after(5).step_completed("a").completed().events)
    assert sorted(_rows(tmp_path / "s.db").values()) == [1, 2]
    (key,) = [k for k, n in _rows(tmp_path / "s.db").items() if n == 2]
    assert [f["name"] for f in _kept(pipeline.store, key)] == [
        "workflow.started",
        "step.started",
        "step.completed",
        "workflow.completed",
    ]


def test_a_fact_told_again_earlier_rewrites_the_runs_rows_and_reads_back_as_kept(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path)
    run = WorkflowRun().started().after(10).step_started("a")
    pipeline.ingest(run.events)
    # The same attempt's start under another event id, told earlier: it replaces the one kept.
    again = dict(run.events[-1], eventId="another-id", timestamp=run.events[0]["timestamp"])
    report = pipeline.ingest([again])
    assert (report.accepted, report.duplicates) == (0, 1)
    (key,) = _rows(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM facts").fetchall() == [(0,)]  # written anew, as one row
    in_memory = pipeline.hot.get(key)[0].facts
    assert [f["event_id"] for f in _kept(pipeline.store, key)] == [f.event_id for f in in_memory]
    assert "another-id" in [f.event_id for f in in_memory]
    pipeline.store.close()
    reread = _pipeline(path, hot_runs=0)
    reread.ingest(run.after(5).step_completed("a").completed().events)
    assert reread.settle_due(horizon=time.time() + 1) == 2  # the step and the root, read from the rows


def test_a_run_reads_back_whole_after_a_restart_and_settles_the_same(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path, hot_runs=0)  # every batch reads the store
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    pipeline.ingest(run.events)
    pipeline.ingest(run.after(1).completed().events)
    pipeline.store.close()
    again = _pipeline(path)
    assert again.settle_due(horizon=time.time() + 1) == 2  # the step and the root
    assert _rows(path)  # kept to be shown a while


def test_a_state_stored_by_an_earlier_version_with_its_facts_inside_is_read_and_journalled(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path)
    run = WorkflowRun().started().step_started("a")
    pipeline.ingest(run.events)
    (key,) = [k for k, _ in pipeline.store.states()]
    facts = _kept(pipeline.store, key)
    header = orjson.loads(next(blob for _k, blob in pipeline.store.states()))
    with pipeline.store.transaction() as tx:  # as the previous version kept it: one blob
        tx.forget(key)
        tx.save(key, orjson.dumps({**header, "facts": facts}), None)
    pipeline.store.close()

    again = _pipeline(path)
    again.ingest(run.after(5).step_completed("a").completed().events)
    assert _rows(path) == {key: 2}  # the two journalled at reading, the batch's two
    assert len(_kept(again.store, key)) == 4
    assert again.settle_due(horizon=time.time() + 1) == 2


def _sent_ids(store, key: str) -> dict[str, int]:
    """The span ids a run's journal says were sent (rows are JSON objects without their braces)."""
    return orjson.loads(b"{" + b",".join(store.facts(keys.sent_spans(key))) + b"}")


def test_a_settling_journals_the_span_ids_it_sent_as_a_row_and_the_header_holds_none(tmp_path, monkeypatch):
    pipeline = _pipeline(tmp_path / "s.db")
    run = WorkflowRun().started()
    for n in range(2000):
        run.after(1).step_started(f"item-{n}").after(1).step_completed(f"item-{n}")
    pipeline.ingest(run.events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 2000  # the run is open: its steps
    (key,) = [k for k, _ in pipeline.store.states()]
    appended: list[tuple[str, list]] = []
    append = SqliteTransaction.append
    monkeypatch.setattr(
        SqliteTransaction, "append", lambda tx, k, rows: (appended.append((k, rows)), append(tx, k, rows))
    )
    headers: list[int] = []
    save = SqliteTransaction.save
    monkeypatch.setattr(
        SqliteTransaction, "save", lambda tx, k, blob, *a: (headers.append(len(blob)), save(tx, k, blob, *a))
    )

    pipeline.ingest(run.after(1).step_started("last").after(1).step_completed("last").events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 1

    assert max(headers) < 1000  # at the batch and at the settling: 2,001 span ids are not in it
    (sent_key, (row,)) = appended[-1]
    assert sent_key == keys.sent_spans(key)
    assert len(orjson.loads(b"{" + row[1] + b"}")) == 1  # this settling's one span
    assert len(_sent_ids(pipeline.store, key)) == 2001


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_after_a_restart_a_run_sends_none_of_its_spans_again(store, tmp_path, request):
    prefix = f"t{uuid.uuid4().hex}:"

    def restarted(**settings) -> Pipeline:
        if store == "sqlite":
            return _pipeline(tmp_path / "s.db", **settings)
        s = Settings(settle_seconds=0, **settings)
        return Pipeline(
            RedisStore(request.getfixturevalue("redis_url"), seen_ttl_seconds=3600, prefix=prefix), MetricsHub(), s
        )

    pipeline = restarted()
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    pipeline.ingest(run.events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 1  # step a
    pipeline.store.close()

    again = restarted(hot_runs=0)  # every batch and settling reads the store
    again.ingest(run.after(1).step_started("b").after(5).step_completed("b").events)
    assert again.settle_due(horizon=time.time() + 1) == 1  # step b alone
    again.ingest(run.after(1).completed(["a", "b"]).events)
    assert again.settle_due(horizon=time.time() + 1) == 1  # the root


def test_sent_span_ids_an_earlier_version_kept_in_the_header_are_read_and_journalled(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path)
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    pipeline.ingest(run.events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 1
    (key,) = [k for k, _ in pipeline.store.states()]
    sent = _sent_ids(pipeline.store, key)
    header = orjson.loads(next(blob for _k, blob in pipeline.store.states()))
    assert "emitted" not in header
    with pipeline.store.transaction() as tx:  # as the previous version kept them: inside the header
        tx.forget(keys.sent_spans(key))
        tx.save(key, orjson.dumps({**header, "emitted": sent}), None)
    pipeline.store.close()

    again = _pipeline(path, hot_runs=0)
    again.ingest(run.after(1).completed(["a"]).events)
    assert again.settle_due(horizon=time.time() + 1) == 1  # the root; step a is not sent again
    assert sent.items() <= _sent_ids(again.store, key).items()
    assert "emitted" not in orjson.loads(next(blob for _k, blob in again.store.states()))


def test_a_run_settled_once_at_its_end_journals_no_span_ids(tmp_path):
    # Closed, it sends nothing again: what it sent would never be read (most runs are settled so).
    pipeline = _pipeline(tmp_path / "s.db")
    pipeline.ingest(WorkflowRun().started().step_started("a").after(5).step_completed("a").completed(["a"]).events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 2
    (key,) = [k for k, _ in pipeline.store.states()]
    assert _rows(tmp_path / "s.db") == {key: 1}  # its facts, kept to be shown


def test_a_run_that_forgets_its_facts_forgets_the_ids_of_its_spans_too(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path, keep_finished_seconds=0)
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a")
    pipeline.ingest(run.events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 1  # step a, the run still open
    (key,) = [k for k, _ in pipeline.store.states()]
    assert _sent_ids(pipeline.store, key)
    pipeline.ingest(run.after(1).completed(["a"]).events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 1  # the root: the run is closed
    pipeline.settle_due(horizon=time.time() + 2)  # kept to be shown for no time: forgotten now
    assert _rows(path) == {}  # neither its facts nor its sent span ids are kept


def test_a_forgotten_run_an_earlier_version_stored_with_its_event_ids_still_knows_them(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path, keep_finished_seconds=0)
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed(["a"])
    pipeline.ingest(run.events)
    pipeline.settle_due(horizon=time.time() + 1)  # sent and closed
    pipeline.settle_due(horizon=time.time() + 2)  # its facts forgotten
    ((key, blob),) = list(pipeline.store.states())
    header = orjson.loads(blob)
    assert len(base64.b64decode(header.pop("seen_digests"))) == 4 * 8  # an 8-byte digest per event
    with pipeline.store.transaction() as tx:  # as the previous version kept them: the ids themselves
        tx.save(key, orjson.dumps({**header, "seen_ids": sorted(e["eventId"] for e in run.events)}), None)
    pipeline.store.close()

    again = _pipeline(path, hot_runs=0)
    assert again.ingest(run.events).duplicates == 4
    straggler = run.after(1).step_started("b").events[-1:]
    assert again.ingest(straggler).late == 1
    upgraded = orjson.loads(next(blob for _k, blob in again.store.states()))
    assert "seen_ids" not in upgraded and len(base64.b64decode(upgraded["seen_digests"])) == 5 * 8
    assert again.ingest(run.events).duplicates == 5  # the straggler among them now


def test_an_unreadable_state_does_not_stop_the_bridge_from_starting(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path)
    pipeline.ingest(WorkflowRun().started().events)
    (key,) = [k for k, _ in pipeline.store.states()]
    with pipeline.store.transaction() as tx:
        tx.save(key, b"\x00 not a state", None)
    pipeline.store.close()
    settings = Settings(state=str(path), dead_letter=tmp_path / "dead.jsonl", span_dead_letter=tmp_path / "spans.jsonl")
    bridge = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())
    bridge.start(follow=False)  # start-up reads every state's header
    try:
        assert bridge.pipeline.open_runs() == []
        assert any(k.startswith("unreadable\x1f") for k, _ in bridge.pipeline.store.states())
    finally:
        bridge.stop()


def test_a_downgrade_that_makes_every_state_unreadable_is_told_once_a_minute_not_once_a_run(
    tmp_path, monkeypatch, caplog
):
    now = [0.0]
    monkeypatch.setattr(journal, "_UNREADABLE", Cadence(60.0, clock=lambda: now[0]))
    pipeline = _pipeline(tmp_path / "s.db")
    runs = [WorkflowRun().started() for _ in range(5)]
    pipeline.ingest([event for run in runs for event in run.events])
    stored = [key for key, _ in pipeline.store.states()]
    with pipeline.store.transaction() as tx:
        for key in stored:
            tx.save(key, b"\x00 written by another version", None)
    pipeline.store.close()
    caplog.set_level("ERROR", logger="otel_bridge.state.journal")
    started = _pipeline(tmp_path / "s.db")
    started.restore_gauges()  # a start meets them all
    started.store.close()
    assert counted(started.metrics, "otel_bridge.runs.unreadable") == 5  # alert BridgeRunsUnreadable
    (told,) = caplog.records
    assert told.exc_info is not None and "settle-again" in told.getMessage()  # the first, in full
    now[0] += 61
    again = _pipeline(tmp_path / "s.db")
    again.ingest(runs[0].after(1).step_started("a").events[-1:])  # the afresh run: readable, nothing told
    (key,) = [k for k, _ in again.store.states() if runs[0].workflow_id in k and not keys.is_kept_aside(k)]
    with again.store.transaction() as tx:
        tx.save(key, b"\x00 unreadable again", None)
    again.store.close()
    third = _pipeline(tmp_path / "s.db")  # not from memory: read from the file
    third.ingest(runs[0].after(1).step_started("b").events[-1:])
    third.store.close()
    assert counted(third.metrics, "otel_bridge.runs.unreadable") == 1  # met by a batch: counted as it commits
    assert len(caplog.records) == 2
    assert "6 run states unreadable so far" in caplog.records[1].getMessage()


def test_full_durability_syncs_every_commit(tmp_path):
    store = SqliteStore(tmp_path / "s.db", durability="full")
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert SqliteStore(tmp_path / "t.db")._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


def test_a_running_bridge_copies_the_log_into_the_state_file_in_the_background(tmp_path):
    # No producer's COMMIT pays for the checkpoint (and its fsyncs): the bridge's own thread does.
    path = tmp_path / "s.db"
    settings = Settings(state=str(path), dead_letter=tmp_path / "dead.jsonl", span_dead_letter=tmp_path / "spans.jsonl")
    bridge = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender()).start(follow=False)
    try:
        bridge.pipeline.ingest(WorkflowRun().started().step_started("a").events)

        def in_main_file() -> int:  # the database file alone, its write-ahead log left aside
            with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as db:
                try:
                    return db.execute("SELECT count(*) FROM facts").fetchone()[0]
                except sqlite3.OperationalError:  # not even the schema copied yet
                    return 0

        deadline = time.monotonic() + 10
        while in_main_file() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_main_file() == 1  # the run's two facts, one journal row
    finally:
        bridge.stop()


def test_runs_paused_before_the_overdue_index_existed_are_found_after_the_upgrade(tmp_path):
    path = tmp_path / "s.db"
    pipeline = _pipeline(path)
    stuck = WorkflowRun().started().paused("sleep", resume_in_ms=1000)  # due back in 2025
    busy = WorkflowRun().started().step_started("a")
    pipeline.ingest(stuck.events + busy.events)
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]
    pipeline.store.close()
    with sqlite3.connect(path) as db:  # the state file as the previous version left it
        db.execute("DROP INDEX state_overdue")
        db.execute("ALTER TABLE state DROP COLUMN overdue_at")

    again = _pipeline(path)
    again.restore_gauges()  # start-up
    again.index_by_these_settings()  # and, in the background, before the first count
    assert [r.run_id for r in again.overdue_runs()] == [stuck.workflow_id]


# Written by the version that kept run state as pydantic models (commit e7857e5).
_PYDANTIC_HEADER = (
    b'{"run":{"engine":"durable-effect","env":"production","service":"shop","run_id":"r1","name":"order"},'
    b'"seq":2,"state_order":[1001,"e1"],"opened_ns":5,"counted_name":"order"}'
)
_PYDANTIC_FACTS = [
    b'{"event_id":"e0","time_ns":1000,"kind":"run.started","name":"run.started",'
    b'"attributes":{"workflow.event.id":"e0"},"seq":1}',
    b'{"event_id":"e1","time_ns":1001,"kind":"attempt.ended","name":"attempt.ended","step":"charge","attempt":1,'
    b'"outcome":"failure","error":{"message":"card declined","step":"charge","attempt":1},'
    b'"attributes":{"workflow.event.id":"e1"},"seq":2}',
]


def test_rows_written_by_the_pydantic_version_read_back_and_are_written_the_same_way():
    key = keys.run_key(("durable-effect", "production", "shop", "r1"))
    state = journal.decode(key, _PYDANTIC_HEADER, _PYDANTIC_FACTS)
    assert isinstance(state, RunState)
    assert (state.run.run_id, state.seq, state.state_order, state.counted_name) == ("r1", 2, (1001, "e1"), "order")
    failed = state.facts[1]
    assert failed.error is not None
    assert (failed.kind, failed.outcome, failed.error.message) == (
        FactKind.ATTEMPT_ENDED,
        Outcome.FAILURE,
        "card declined",
    )
    assert state.last_told_ns == 1001  # not in its header: its latest fact's time
    assert journal.encode_header(state) == _PYDANTIC_HEADER[:-1] + b',"last_told_ns":1001}'
    assert [journal.encode_fact(f) for f in state.facts] == _PYDANTIC_FACTS


def test_redis_drops_a_run_kept_only_for_late_events_by_itself_a_late_event_keeping_its_expiry(redis_url):
    # The week a closed run is remembered, a member of the due index per run (~200 bytes) was most of
    # what Redis kept beside the run itself, and settling woke up only to delete it.
    settings = Settings(state=redis_url, settle_seconds=0, keep_finished_seconds=0, dedup_ttl_seconds=3)
    store = RedisStore(redis_url, seen_ttl_seconds=3, prefix=f"x{uuid.uuid4().hex[:6]}:")
    pipeline = Pipeline(store, MetricsHub(), settings)
    run = WorkflowRun().started().step_started("a").after(5).step_completed("a").completed()
    pipeline.ingest(run.events)
    assert pipeline.settle_due(horizon=time.time() + 1) == 2  # sent, closed
    pipeline.settle_due(horizon=time.time() + 1)  # kept to be shown for no time: forgotten now
    (key,) = [k for k, _ in store.states()]
    assert store.run(lambda tx: tx.load(key)) is not None
    assert store.run(lambda tx: _due(tx, float("inf"), 10)) == []  # nothing left to settle
    assert 0 < store._client.pttl(f"{store._p}state:{key}") <= 3000

    assert pipeline.ingest(run.after(1).step_started("straggler").events[-1:]).late == 1
    assert pipeline.ingest(run.events[:1]).duplicates == 1  # still told apart from a new event
    assert 0 < store._client.pttl(f"{store._p}state:{key}") <= 3000  # saved again, expiring as before
    time.sleep(3.2)
    assert list(store.states()) == []
    store.close()
