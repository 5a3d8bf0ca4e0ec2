"""A producer that forks after making its tracker (gunicorn's `preload_app`, Celery's prefork pool,
`multiprocessing`): each child's tracker works on its own, and nothing is sent twice."""

import asyncio
import gc
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from builders import WorkflowRun

from otel_bridge import trace_id_for
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.tracker import AsyncHttpBatchTracker, HttpBatchTracker, OtelTracker

# Forking a process whose tracker runs threads is what these tests are about (gunicorn's preload_app forks such
# a process); Python 3.12 and later warn of it, the risk the tracker's at-fork handlers are there to meet.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")


def _in_child(work: Callable[[], Any], timeout: float = 30.0) -> Any:
    """`work()` in a forked child process; what it returned (JSON), or its failure raised here."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        os.close(read)
        try:
            answer = {"ok": work()}
        except BaseException:
            answer = {"failed": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            json.dump(answer, out)
        os._exit(0)
    os.close(write)
    _reap(pid, timeout)
    with os.fdopen(read) as answer:
        told = json.loads(answer.read() or '{"failed": "the child died"}')
    assert "failed" not in told, told["failed"]
    return told["ok"]


def _reap(pid: int, timeout: float = 30.0) -> None:
    """Wait for the child to end; one hung (a lock held across the fork) is killed and failed, never waited
    on for ever: the suite hung so past pytest-timeout, whose alarm cannot end a wait in a `finally`."""
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child did not finish within {timeout} s (a lock held across the fork?)")
        time.sleep(0.05)


class _SlowEndpoint:
    """A real HTTP endpoint on 127.0.0.1 that takes `delay` seconds to answer; what it was sent, by workflow."""

    def __init__(self, delay: float) -> None:
        self.workflows: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                endpoint.workflows += [e["workflowId"] for e in body["events"]]
                time.sleep(delay)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_an_http_tracker_forked_mid_flush_sends_the_childs_events_by_itself():
    endpoint = _SlowEndpoint(delay=1.0)
    tracker = HttpBatchTracker(endpoint.url, "production", "shop", flush_interval_seconds=0.1)
    try:
        tracker.emit(WorkflowRun(workflow_id="parent").started().events[0])
        flushing = threading.Thread(target=tracker.flush)
        flushing.start()  # the fork comes while this POST waits for its answer, its lock held
        time.sleep(0.3)

        def child() -> dict:
            tracker.emit(WorkflowRun(workflow_id="child").started().events[0])
            deadline = time.monotonic() + 10
            while tracker.pending() and time.monotonic() < deadline:  # its own timer sends it
                time.sleep(0.05)
            return {"pending": tracker.pending(), "flushed": tracker.flush(), "posts": tracker.stats.posts}

        assert _in_child(child) == {"pending": 0, "flushed": True, "posts": 1}
        flushing.join()
    finally:
        tracker.close()
        endpoint.server.shutdown()
    assert sorted(endpoint.workflows) == ["child", "parent"]  # the parent's event once, by the parent


def test_an_asyncio_http_tracker_forked_sends_the_childs_events_from_the_childs_event_loop():
    endpoint = _SlowEndpoint(delay=0.0)
    tracker = AsyncHttpBatchTracker(endpoint.url, "production", "shop", flush_interval_seconds=0.1)

    async def in_parent() -> None:  # its timer task and connections live on this loop
        await tracker.emit(WorkflowRun(workflow_id="parent").started().events[0])
        await tracker.flush()

    async def in_child() -> dict:
        await tracker.emit(WorkflowRun(workflow_id="child").started().events[0])
        deadline = time.monotonic() + 10
        while await tracker.pending() and time.monotonic() < deadline:  # its own timer sends it
            await asyncio.sleep(0.05)
        pending = await tracker.pending()
        await tracker.close()
        return {"pending": pending, "posts": tracker.stats.posts, "events": tracker.stats.events}

    try:
        asyncio.run(in_parent())
        assert _in_child(lambda: asyncio.run(in_child())) == {"pending": 0, "posts": 1, "events": 1}
    finally:
        endpoint.server.shutdown()
    assert endpoint.workflows == ["parent", "child"]


def _run(workflow_id: str) -> WorkflowRun:
    return WorkflowRun(workflow_id=workflow_id).started().step_started("a").after(5).step_completed("a").completed()


def test_an_in_process_tracker_forked_sends_the_childs_runs_and_never_the_parents_again(monkeypatch, otlp_http):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    parent, child = _run("parent"), _run("child")
    tracker = OtelTracker("production", "shop", settle_seconds=0.2, flush_interval_seconds=0.1)
    try:
        for event in parent.events[:2]:  # stored, the run still open at the fork
            tracker.emit(event)
        tracker.flush()
        tracker.emit(parent.events[2])  # and one still in the buffer

        def in_child() -> int:
            for event in child.events:
                tracker.emit(event)
            tracker.close()  # the child's bridge sends its runs
            return tracker.pending()

        assert _in_child(in_child) == 0
        for event in parent.events[3:]:
            tracker.emit(event)
    finally:
        tracker.close()
    got = otlp_http.received
    for workflow_id in ("parent", "child"):
        trace_id = trace_id_for("durable-effect", "production", "shop", workflow_id).hex()
        got.wait_for(lambda trace_id=trace_id: len(got.trace(trace_id)) == 2, timeout=20)
    time.sleep(0.5)  # anything sent twice would be here by now
    assert len(got.spans) == 4  # each run's root and step, once


def test_a_tracker_with_a_state_file_keeps_a_forked_childs_runs_in_memory_and_says_so(
    tmp_path, monkeypatch, otlp_http, caplog
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    state = tmp_path / "tracker.db"
    with OtelTracker("production", "shop", state=state, settle_seconds=0.2) as tracker:

        def in_child() -> dict[str, Any]:
            for event in _run("child").events:
                tracker.emit(event)
            tracker.flush()
            kept = tracker.bridge.settings  # in memory now: remembered as an in-memory tracker remembers
            tracker.close()
            said = [r.getMessage() for r in caplog.records if "forked" in r.getMessage()]
            return {"said": said, "kept": [kept.dedup_ttl_seconds, kept.keep_finished_seconds]}

        child = _in_child(in_child)
        (said,) = child["said"]
        assert str(state) in said and "post_fork" in said
        assert child["kept"] == [3600, 0]
    trace_id = trace_id_for("durable-effect", "production", "shop", "child").hex()
    otlp_http.received.wait_for(lambda: len(otlp_http.received.trace(trace_id)) == 2, timeout=20)
    SqliteStore(state).close()  # the parent's file, untouched by the child: it opens


def test_a_forked_childs_gauges_on_the_applications_meter_provider_are_its_own_bridges(tmp_path, monkeypatch):
    # The parent's gauges, left registered, read the parent's store from the child (what SQLite warns against
    # across a fork), and the child's own were never read.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    def hot_runs() -> list[float]:
        return [
            point.value
            for rm in reader.get_metrics_data().resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "otel_bridge.state.hot_runs"
            for point in m.data.data_points
        ]

    with OtelTracker("production", "shop", state=tmp_path / "t.db", meter_provider=provider) as tracker:
        for n in range(3):
            tracker.emit(WorkflowRun(f"parent{n}").started().events[0])
        tracker.flush()

        def in_child() -> list[float]:
            tracker.emit(WorkflowRun("child").started().events[0])
            tracker.flush()  # its own bridge, in memory, made here
            try:
                return hot_runs()
            finally:
                tracker.close()

        assert _in_child(in_child) == [1]
        assert hot_runs() == [3]


def test_a_tracker_on_redis_keeps_a_forked_childs_runs_there_beside_the_parents(
    redis_url, monkeypatch, otlp_http, caplog
):
    # A shared state is the child's too: its bridge opens Redis anew, and a run begun in the parent ends
    # in the child as one trace.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    state = redis_url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(state).flushdb()
    run = WorkflowRun(workflow_id="resumed").started().step_started("a").after(5).step_completed("a")
    begun = len(run.events)
    run.after(5).step_started("b").after(5).step_completed("b").completed(["a", "b"])
    with OtelTracker("production", "shop", state=state, settle_seconds=0.2) as tracker:
        for event in run.events[:begun]:
            tracker.emit(event)
        tracker.flush()

        def in_child() -> dict[str, Any]:
            for event in run.events[begun:]:
                tracker.emit(event)
            tracker.flush()
            kept = tracker.bridge.settings.state
            tracker.close()
            return {"kept": kept, "said": [r.getMessage() for r in caplog.records if "forked" in r.getMessage()]}

        assert _in_child(in_child) == {"kept": state, "said": []}
    trace_id = trace_id_for("durable-effect", "production", "shop", "resumed").hex()
    got = otlp_http.received
    got.wait_for(lambda: len(got.trace(trace_id)) == 3, timeout=20)
    time.sleep(0.5)  # anything sent twice would be here by now
    assert sorted(s.name for s in got.trace(trace_id)) == ["step a", "step b", "workflow orderProcessing"]


def test_a_forked_child_holds_no_claim_on_the_state_file(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    started, finish = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that outlives the parent's use of the file
        os.write(started[1], b"1")
        os.read(finish[0], 1)
        os._exit(0)
    try:
        assert select.select([started[0]], [], [], 30)[0], "the child did not start (a lock held across the fork?)"
        os.read(started[0], 1)
        store.close()
        SqliteStore(tmp_path / "s.db").close()  # not "in use by another otel-bridge"
    finally:
        os.write(finish[1], b"1")
        _reap(pid)
        for fd in (*started, *finish):
            os.close(fd)


def test_a_forked_childs_rejected_events_go_to_a_dead_letter_file_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, spans = tmp_path / "dead.jsonl", tmp_path / "spans.jsonl"
    bad = {"type": "step.started", "workflowId": "w", "eventId": "e-1"}  # no time, no step
    files = {"dead_letter": dead, "span_dead_letter": spans}
    with OtelTracker("production", "shop", flush_interval_seconds=None, **files) as tracker:

        def in_child() -> int:
            tracker.emit(bad)
            tracker.flush()
            return os.getpid()

        child = _in_child(in_child)
        tracker.emit(dict(bad, eventId="e-2"))
        tracker.flush()
    kept = [json.loads(line) for line in (tmp_path / f"dead.{child}.jsonl").read_text().splitlines()]
    assert [k["event"]["eventId"] for k in kept] == ["e-1"]
    assert [json.loads(line)["event"]["eventId"] for line in dead.read_text().splitlines()] == ["e-2"]
    assert not list(tmp_path.glob("otel-tracker-*"))  # both files given: no directory of the tracker's made


def test_an_in_memory_trackers_forked_child_keeps_its_dead_letters_in_a_directory_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    bad = {"type": "step.started", "workflowId": "w", "eventId": "e-1"}
    with OtelTracker("production", "shop", flush_interval_seconds=None) as tracker:
        (parents,) = tmp_path.iterdir()

        def in_child() -> str:
            tracker.emit(bad)
            tracker.close()
            return str(tracker.bridge.dead_letters.path)

        kept = Path(_in_child(in_child))
    assert not parents.exists()  # the parent rejected nothing: its directory went at its close
    assert kept.parent.parent == tmp_path and kept.parent != parents  # the child's, left for it to own
    assert [json.loads(line)["event"]["eventId"] for line in kept.read_text().splitlines()] == ["e-1"]


def test_a_fork_waits_for_the_sqlite_stores_transaction_in_flight_to_end(tmp_path):
    # A thread inside SQLite at the fork may hold one of SQLite's own process-wide mutexes: the child,
    # which lacks that thread, then hung on its first SQLite call (one fork in ten under load).
    store = SqliteStore(tmp_path / "s.db")
    inside, finish = threading.Event(), threading.Event()

    def long_transaction(tx) -> None:
        tx.save("run", b"header", None)
        inside.set()
        finish.wait(10)

    worker = threading.Thread(target=store.run, args=(long_transaction,))
    worker.start()
    assert inside.wait(10)
    threading.Timer(0.3, finish.set).start()

    def rows_seen_by_the_child() -> int:
        return sqlite3.connect(tmp_path / "s.db").execute("SELECT count(*) FROM state").fetchone()[0]

    assert _in_child(rows_seen_by_the_child) == 1  # forked once the transaction had committed
    worker.join(10)
    store.close()


def test_a_fork_cuts_short_the_check_of_every_page_under_way_which_then_starts_over(tmp_path):
    # The check after a start reads the file on a thread of its own, and SQLite takes its process-wide
    # mutexes there too: children forked as it ran hung on their first SQLite call (a sixth of them).
    store = SqliteStore(tmp_path / "s.db")
    store.run(lambda tx: [tx.save(f"run-{n}", b"x" * 2000, None) for n in range(2000)])
    found: list[str | None] = []
    stop = threading.Event()

    def check_again_and_again() -> None:
        while not stop.is_set():
            found.append(store.damage_found())

    checking = threading.Thread(target=check_again_and_again)
    checking.start()
    try:
        for _ in range(12):
            time.sleep(0.01)
            assert _in_child(lambda: sqlite3.connect(":memory:").execute("SELECT 1").fetchone()[0], 10) == 1
    finally:
        stop.set()
        checking.join(30)
    assert found and set(found) == {None}  # each check, started over after a fork, read every page
    store.close()


_MULTIPROCESSING = """
import json, multiprocessing, sys
from otel_bridge.tracker import HttpBatchTracker, OtelTracker

url, events = sys.argv[1], json.loads(sys.argv[2])
made_before = HttpBatchTracker(url, "production", "shop", flush_interval_seconds=None)


def with_the_inherited_tracker(workflow_id):
    made_before.emit(events[workflow_id])  # buffered, and the worker is never told to flush


def with_a_tracker_of_its_own(workflow_id):
    tracker = HttpBatchTracker(url, "production", "shop", flush_interval_seconds=None)
    tracker.emit(events[workflow_id])  # never flushed, never closed


def in_process(workflow_id):
    tracker = OtelTracker("production", "shop", flush_interval_seconds=None)
    for event in events[workflow_id]:  # a whole run, settled and sent as the child ends
        tracker.emit(event)


if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    for target, workflow_id in ((with_a_tracker_of_its_own, "own"), (in_process, "in-process")):
        child = fork.Process(target=target, args=(workflow_id,))
        child.start()
        child.join()
    pool = fork.Pool(2)
    pool.map(with_the_inherited_tracker, ["pool-1", "pool-2", "pool-3"])
    pool.close()
    pool.join()
    made_before.close()  # the parent's buffer is empty: its children had the events
"""


def test_children_multiprocessing_forks_send_what_their_trackers_hold_when_they_end(tmp_path, otlp_http):
    # Such a child ends by os._exit, which skips atexit: before, every event here was lost with it.
    endpoint = _SlowEndpoint(delay=0.0)
    events = {w: WorkflowRun(workflow_id=w).started().events[0] for w in ("own", "pool-1", "pool-2", "pool-3")}
    events["in-process"] = _run("in-process").events
    script = tmp_path / "producer.py"
    script.write_text(_MULTIPROCESSING)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env["TMPDIR"] = str(temp)  # where an in-memory tracker keeps its dead letters
    try:
        done = subprocess.run(
            [sys.executable, str(script), endpoint.url, json.dumps(events)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        endpoint.server.shutdown()
    assert done.returncode == 0, done.stderr
    assert sorted(endpoint.workflows) == ["own", "pool-1", "pool-2", "pool-3"]
    trace_id = trace_id_for("durable-effect", "production", "shop", "in-process").hex()
    assert {s.name for s in otlp_http.received.trace(trace_id)} == {"workflow orderProcessing", "step a"}
    assert not list(temp.iterdir())  # nor the in-memory tracker's empty directory left behind


def test_trackers_made_and_closed_by_the_thousand_leave_nothing_behind_for_later_forks():
    # os.register_at_fork cannot take a hook back: one per tracker kept ~1.6 KiB of each for good.
    def made_and_closed() -> None:
        HttpBatchTracker("http://127.0.0.1:9/v1/events", "production", "shop", flush_interval_seconds=None).close()

    def ours() -> int:  # what is held by allocations the package made, not by other threads of the suite
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*/otel_bridge/*", all_frames=True)]
        )
        return sum(stat.size for stat in snapshot.statistics("filename"))

    for _ in range(20):  # whatever is made once per process
        made_and_closed()
    gc.collect()
    tracemalloc.start(10)
    try:
        before = ours()
        for _ in range(1_000):
            made_and_closed()
        gc.collect()
        kept = ours() - before
    finally:
        tracemalloc.stop()
    assert kept / 1_000 < 100  # bytes a tracker; was 1,625
