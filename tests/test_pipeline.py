"""The pipeline around the fold: one bad run never blocks the others; job state stays bounded;
an event sent again is a duplicate, known by its run (workflows) or the seen ids (jobs)."""

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from bridge_counters import counted
from builders import JobRun, WorkflowRun, ns_of
from faults import BUG, a_bug_for
from fold_harness import net_metrics
from histories import executions, job_histories, long_histories, phase10_runs
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import keys
from otel_bridge.config import Settings
from otel_bridge.consumer import AmbiguousId
from otel_bridge.correlate.overview import JobQuery, RunQuery
from otel_bridge.export.metrics import INSTRUMENTS, MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.producer.event_sourced import Execution
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.runtime import open_store
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.state import journal
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore


def _pipeline(tmp_path, **values) -> Pipeline:
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, **values)
    return Pipeline(SqliteStore(settings.state), MetricsHub(), settings)


def _corrupted(pipeline: Pipeline, key: str, blob: bytes, due: float | None) -> Pipeline:
    """The state of `key` made unreadable in the file, then the bridge restarted over it."""
    with pipeline.store.transaction() as tx:
        tx.save(key, blob, due)
    pipeline.store.close()
    return Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), pipeline.settings)


def test_an_unreadable_run_state_does_not_stop_other_runs_from_settling(tmp_path):
    pipeline = _pipeline(tmp_path)
    good = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    bad = WorkflowRun().started()
    pipeline.ingest(good.events + bad.events)
    bad_key = next(k for k, _ in pipeline.store.states() if bad.workflow_id in k)
    pipeline = _corrupted(pipeline, bad_key, b"{not a run state", time.time() - 1)
    assert pipeline.settle_due(horizon=time.time() + 1) == 2  # the good run's two spans
    assert pipeline.store.outbox_depth() == 2


def test_job_instances_not_counted_as_active_are_forgotten_after_the_ttl(tmp_path):
    pipeline = _pipeline(tmp_path)
    pipeline.ingest(JobRun("t", "task").task_scheduled(10).executed(0).events + JobRun("c").started().events)
    ttl = pipeline.settings.dedup_ttl_seconds
    assert pipeline.settle_due(horizon=time.time() + ttl + 1) == 0
    remaining = [k for k, _ in pipeline.store.states()]
    assert len(remaining) == 1  # the running continuous job is still counted in job.instance.active


def test_an_unreadable_run_state_is_set_aside_and_the_run_starts_afresh(tmp_path):
    pipeline = _pipeline(tmp_path)
    run = WorkflowRun().started()
    pipeline.ingest(run.events)
    key = next(k for k, _ in pipeline.store.states())
    pipeline = _corrupted(pipeline, key, b"\x00garbage", None)
    report = pipeline.ingest(run.after(5).step_started("a").events)
    # The afresh run knows none of its events: the start sent again is taken in again.
    assert report.accepted == 2
    keys = [k for k, _ in pipeline.store.states()]
    assert "unreadable\x1f" + key in keys and key in keys


def _restarted(pipeline: Pipeline) -> Pipeline:
    pipeline.store.close()
    return Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), pipeline.settings)


def test_an_event_sent_again_is_a_duplicate_even_one_only_its_id_names(tmp_path):
    pipeline = _pipeline(tmp_path)
    run = WorkflowRun().started().paused("sleep")  # a pause has no identity but its event id
    pipeline.ingest(run.events)
    report = _restarted(pipeline).ingest(run.events)
    assert (report.accepted, report.duplicates) == (0, 2)


def test_a_finished_runs_events_sent_again_stay_duplicates_after_its_facts_are_forgotten(tmp_path):
    pipeline = _pipeline(tmp_path)
    run = WorkflowRun().started().paused("sleep").resumed().completed()
    pipeline.ingest(run.events)
    pipeline.settle_due(horizon=time.time() + 1)  # sent, closed
    pipeline.settle_due(horizon=time.time() + pipeline.settings.keep_finished_seconds + 1)  # facts forgotten
    (key,) = [k for k, _ in pipeline.store.states()]
    assert pipeline.store.facts(key) == []
    pipeline = _restarted(pipeline)

    report = pipeline.ingest(run.events)
    assert (report.accepted, report.duplicates, report.late) == (0, 4, 0)
    straggler = run.after(5).step_started("x").events[-1:]
    assert pipeline.ingest(straggler).late == 1
    assert pipeline.ingest(straggler).duplicates == 1  # late once, not twice


def test_job_events_sent_again_are_duplicates(tmp_path):
    pipeline = _pipeline(tmp_path)
    job = JobRun("sync").started().executed(1)
    pipeline.ingest(job.events)
    report = _restarted(pipeline).ingest(job.events)
    assert (report.accepted, report.duplicates) == (0, 2)


def _settling(tmp_path, monkeypatch, batch_waiting: bool) -> tuple[Pipeline, list[str], list[str]]:
    """Five ended runs due, slices of no time at all, and whether a batch always waits for the store:
    the pipeline, then the transactions and the reads of the due runs that settling them takes."""
    import otel_bridge.pipeline as module
    from otel_bridge.state.sqlite_store import SqliteTransaction

    monkeypatch.setattr(module, "_SETTLE_SLICE", 0.0)
    pipeline = _pipeline(tmp_path)
    monkeypatch.setattr(pipeline.store, "awaited", lambda: batch_waiting)
    runs = [WorkflowRun().started().step_started("a").after(1).step_completed("a").completed() for _ in range(5)]
    pipeline.ingest([e for run in runs for e in run.events])
    transactions: list[str] = []
    reads: list[str] = []
    run, due_after = pipeline.store.run, SqliteTransaction.due_after
    monkeypatch.setattr(pipeline.store, "run", lambda work: transactions.append("tx") or run(work))
    monkeypatch.setattr(SqliteTransaction, "due_after", lambda tx, *a: reads.append("due") or due_after(tx, *a))
    return pipeline, transactions, reads


def test_settling_gives_way_to_a_waiting_batch_and_still_settles_every_due_run(tmp_path, monkeypatch):
    pipeline, transactions, reads = _settling(tmp_path, monkeypatch, batch_waiting=True)
    assert pipeline.settle_due(horizon=time.time() + 1) == 10  # a root and an attempt each
    assert len(transactions) >= 5  # a run per transaction
    assert len(reads) == 2  # the due runs read once for every slice, then once to find none left


def test_settling_that_nobody_waits_for_commits_its_whole_chunk_at_once(tmp_path, monkeypatch):
    pipeline, transactions, _ = _settling(tmp_path, monkeypatch, batch_waiting=False)
    assert pipeline.settle_due(horizon=time.time() + 1) == 10
    assert len(transactions) == 2  # the five runs, then a look for more


def test_a_slice_where_requests_wait_ends_at_its_time_though_no_batch_waits(tmp_path, monkeypatch):
    pipeline, transactions, _ = _settling(tmp_path, monkeypatch, batch_waiting=False)
    pipeline.slices = lambda work, movable=True: work(movable)  # every slice shared, as on the event loop
    assert pipeline.settle_due(horizon=time.time() + 1) == 10
    assert len(transactions) >= 5  # a run per transaction


def test_a_run_with_more_new_facts_than_a_shared_slice_takes_is_settled_by_the_settling_thread(tmp_path):
    pipeline = _pipeline(tmp_path)
    small = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    big = WorkflowRun().started()
    for attempt in range(1, 131):  # 262 facts
        big.step_started("poll", attempt).after(1).step_failed("poll", attempt, will_retry=True)
    big.completed()
    pipeline.ingest(small.events + big.events)
    sent: list[tuple[bool, int]] = []  # (shared, spans the slice sent)

    def on_loop_where_it_may(work, movable=True):
        before = pipeline.store.outbox_depth()
        result = work(movable)
        sent.append((movable, pipeline.store.outbox_depth() - before))
        return result

    pipeline.slices = on_loop_where_it_may
    assert pipeline.settle_due(horizon=time.time() + 1) == 2 + 131
    assert (True, 2) in sent  # the small run where requests wait
    assert [n for shared, n in sent if not shared] == [131]  # the big one alone in the settling thread


def test_a_run_read_as_due_and_moved_later_before_its_slice_is_left_for_later(tmp_path, monkeypatch):
    import otel_bridge.pipeline as module

    monkeypatch.setattr(module, "_SETTLE_SLICE", 0.0)
    pipeline = _pipeline(tmp_path)
    monkeypatch.setattr(pipeline.store, "awaited", lambda: True)  # a batch always waiting: one run per transaction
    first, second = (WorkflowRun().started().step_started("a").after(1).step_completed("a").completed() for _ in "12")
    pipeline.ingest(first.events)
    pipeline.ingest(second.events)  # due after the first
    key = next(k for k, _ in pipeline.store.states() if second.workflow_id in k)
    later = time.time() + 3600
    run = pipeline.store.run

    def move_second_after_first_slice(work):
        result = run(work)
        if pipeline.store.outbox_depth() and not moved:
            moved.append(key)
            with pipeline.store.transaction() as tx:
                tx.save(key, tx.load(key)[0], later)
            if pipeline.hot is not None:
                pipeline.hot.discard([key])
        return result

    moved: list[str] = []
    monkeypatch.setattr(pipeline.store, "run", move_second_after_first_slice)
    assert pipeline.settle_due(horizon=time.time() + 1) == 2  # the first run's two spans only
    assert moved
    assert pipeline.settle_due(horizon=later + 1) == 2


def test_an_event_the_pipeline_fails_on_is_rejected_alone_and_the_rest_of_its_batch_is_stored(tmp_path, monkeypatch):
    pipeline = _pipeline(tmp_path)
    good = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    poison = WorkflowRun().started()
    poisoned = poison.events[0]["eventId"]
    a_bug_for(monkeypatch, poisoned)
    batch = good.events[:2] + poison.events + good.events[2:]
    report = pipeline.ingest(batch)
    assert report.accepted == len(good.events)
    (rejected,) = report.rejected
    assert (rejected.index, rejected.event_id) == (2, poisoned)
    assert BUG in rejected.reason
    assert [r.run_id for r in pipeline.open_runs()] == []  # the good run is whole and ended; the poison is not kept

    monkeypatch.undo()  # the bug fixed: the same batch sent again
    again = pipeline.ingest(batch)
    assert (again.accepted, again.duplicates, again.rejected) == (1, len(good.events), [])


def test_a_long_list_of_open_runs_keeps_the_oldest_and_counts_them_all(tmp_path):
    pipeline = _pipeline(tmp_path)
    runs = [WorkflowRun(workflow_id=f"open-{n:04d}", service=f"s{n % 2}") for n in range(1500)]
    for n, run in enumerate(runs):
        run.after(n).started()
    pipeline.ingest([e for run in reversed(runs) for e in run.events])  # stored newest first
    listed, count = pipeline.list_runs(RunQuery(), limit=10)
    assert count == 1500 and [r.run_id for r in listed] == [f"open-{n:04d}" for n in range(10)]
    listed, count = pipeline.list_runs(RunQuery(service="s1", state="executing"), limit=3)
    assert count == 750 and [r.run_id for r in listed] == ["open-0001", "open-0003", "open-0005"]
    assert pipeline.list_runs(RunQuery(state="paused"))[1] == 0


def test_runs_and_job_instances_are_listed_by_the_labels_an_alert_names_them_by(tmp_path):
    # WorkflowRunsOverdue and JobsOverdue name a service, an environment and a workflow (a job): the
    # listing the runbook gives is of exactly those.
    pipeline = _pipeline(tmp_path, overdue_tasks=["*"])
    runs = [
        WorkflowRun(name, workflow_id=f"{name}-{env}", service="shop", env=env).started().paused(resume_in_ms=1)
        for name in ("nightlyReport", "checkout")
        for env in ("production", "staging")
    ]
    jobs = [
        JobRun(name, "task", f"{name}-{env}", env=env, service="jobs").task_scheduled(in_ms=1)
        for name in ("reminder", "digest")
        for env in ("production", "staging")
    ]
    pipeline.ingest([e for stream in (*runs, *jobs) for e in stream.events])  # each in 2025: long overdue

    asked = RunQuery(overdue=True, service="shop", env="production", workflow="nightlyReport")
    (run,), count = pipeline.list_runs(asked)
    assert run.run_id == "nightlyReport-production" and count == 1
    assert {r.run_id for r in pipeline.list_runs(RunQuery(env="staging"))[0]} == {
        "nightlyReport-staging",
        "checkout-staging",
    }
    assert pipeline.list_runs(RunQuery(workflow="checkout", env="test"))[1] == 0
    (job,), count = pipeline.list_jobs(JobQuery(overdue=True, service="jobs", env="staging", job="digest"))
    assert job.instance_id == "digest-staging" and count == 1
    assert {j.instance_id for j in pipeline.list_jobs(JobQuery(job="reminder"))[0]} == {
        "reminder-production",
        "reminder-staging",
    }


def test_runs_stuck_executing_are_found_by_how_long_they_have_told_nothing(tmp_path):
    # Its invocation died mid-step, or its engine failed it for its recovery limit without a word: of a
    # workflow `silent_executing` does not name, it is overdue for nothing. `--silent-for` finds it by when its
    # header says it last told anything, reading the facts of the silent runs only.
    pipeline = _pipeline(tmp_path)
    now = datetime(2025, 3, 1, 14, 0, tzinfo=UTC).timestamp()  # two hours after the builders' runs begin
    stuck = WorkflowRun("export", workflow_id="stuck").started().step_started("upload")  # 12:00
    busy = WorkflowRun("export", workflow_id="busy").started().after(7_000_000).step_started("upload")  # 13:56
    asleep = WorkflowRun("export", workflow_id="asleep").started().paused(resume_in_ms=86_400_000)
    pipeline.ingest(stuck.events + busy.events + asleep.events)

    read: list[str] = []
    facts = pipeline.store.facts
    pipeline.store.facts = lambda key: read.append(key) or facts(key)  # type: ignore[method-assign]

    executing = RunQuery(state="executing", silent_for=3600)
    (run,), count = pipeline.list_runs(executing, now=now)
    assert run.run_id == "stuck" and count == 1
    assert read and all(key.endswith("stuck") for key in read)
    assert {r.run_id for r in pipeline.list_runs(RunQuery(silent_for=3600), now=now)[0]} == {"stuck", "asleep"}
    assert pipeline.list_runs(RunQuery(silent_for=3 * 3600), now=now) == ([], 0)


def test_open_runs_are_listed_by_when_they_entered_their_state_reading_the_facts_of_those_listed_only(tmp_path):
    pipeline = _pipeline(tmp_path)
    long_running = WorkflowRun(workflow_id="paused-late").started().after(5_000).paused(resume_in_ms=600_000)
    recent = WorkflowRun(workflow_id="started-between").after(1_000).started()
    newest = WorkflowRun(workflow_id="started-last").after(9_000).started()
    pipeline.ingest([*long_running.events, *recent.events, *newest.events])
    read: list[str] = []
    facts = pipeline.store.facts
    pipeline.store.facts = lambda key: read.append(key) or facts(key)  # type: ignore[method-assign]

    listed, count = pipeline.list_runs(RunQuery(), limit=2)

    # Paused at 5 s, it has been in its state for less long than the run started at 1 s.
    assert count == 3 and [r.run_id for r in listed] == ["started-between", "paused-late"]
    assert [r.state for r in listed] == ["executing", "paused"]
    assert len(read) == 2 and not any(key.endswith("started-last") for key in read)


def test_a_phase10_run_cancelled_stays_open_across_a_restart_and_ends_when_nothing_more_will_come(tmp_path):
    # The engine's cancel does not stop the execution: its running step ends later, and is not late.
    decoder = Phase10Decoder(Phase10Options())
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).cancelled()
    pipeline = _pipeline(tmp_path)
    pipeline.ingest(run.events, decoder)
    assert pipeline.settle_due(horizon=time.time() + 60) == 0  # a still runs: nothing ended with the run
    pipeline.store.close()

    restarted = Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), pipeline.settings)
    told = len(run.events)
    report = restarted.ingest(run.after(90_000).step_completed("s1", 90.1).events[told:], decoder)
    assert (report.accepted, report.late) == (1, 0)
    assert restarted.settle_due(horizon=time.time() + 60) == 1  # the step, as it ended
    # A stop told that nothing more will come (a replayed file's end) ends the run at its cancellation,
    # though it is not due before its grace ends.
    assert restarted.settle_due(horizon=time.time() + 1, told_all=True) == 1
    (root,) = [Span.FromString(row.payload) for row in restarted.store.outbox_peek(10)][-1:]
    cancelled_at = datetime.fromisoformat(run.events[2]["timestamp"]).replace(tzinfo=UTC)
    assert root.name == "workflow r" and root.end_time_unix_nano == int(cancelled_at.timestamp() * 1000) * 10**6


def test_a_run_held_open_after_its_cancellation_before_a_restart_is_ended_by_a_stop_told_all(tmp_path):
    decoder = Phase10Decoder(Phase10Options())
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).cancelled()
    pipeline = _pipeline(tmp_path)
    pipeline.ingest(run.events, decoder)
    assert pipeline.settle_due(horizon=time.time() + 60) == 0  # held: due when its grace ends
    pipeline.store.close()
    restarted = Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), pipeline.settings)
    restarted.restore_gauges()  # as a start does: it reads every header, the held runs' among them
    assert restarted.settle_due(horizon=time.time() + 1, told_all=True) == 2  # the root, and a ended there


def test_a_run_that_slept_a_thousand_times_sends_a_root_span_of_bounded_events_saying_how_many_it_dropped(tmp_path):
    # Four events a sleep on the root: unbounded, a month of sleeping every minute was a root span
    # of megabytes that a backend refuses whole, and with it the run's trace would have no root.
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, max_span_events=100)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    run = WorkflowRun("poller").started()
    for _ in range(1000):
        run.sleep_started(60_000).paused("sleep").after(60_000).resumed().sleep_completed(60_000)
    run.completed()
    pipeline.ingest(run.events)
    pipeline.settle_due(horizon=time.time() + 1)
    spans = [Span.FromString(row.payload) for row in pipeline.store.outbox_peek(5000)]
    (root,) = [s for s in spans if not s.parent_span_id]
    assert len(root.events) == 100 and root.dropped_events_count == 4000 - 100
    assert root.events[0].time_unix_nano == root.start_time_unix_nano  # how it began...
    assert root.events[-1].time_unix_nano == root.end_time_unix_nano  # ...and how it came to end


def test_an_errors_stack_is_stored_as_long_as_a_span_may_carry_it_and_sent_the_same(tmp_path):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, attribute_value_limit=300)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    stack = "Error: declined\n" + "    at pay (pay.ts:1:1)\n" * 40_000  # ~1 MB
    run = WorkflowRun().started().step_started("pay").after(5).step_failed("pay", 1, stack=stack)
    pipeline.ingest(run.events)
    (key,) = [key for key, _ in pipeline.store.states()]
    stored = sum(map(len, pipeline.store.run(lambda tx: tx.facts(key))))
    assert stored < 1_500  # the run's facts with 300 characters of the stack, not a megabyte

    pipeline.settle_due(horizon=time.time() + 3600)
    (row,) = pipeline.store.outbox_peek(10)
    sent = {kv.key: kv.value.string_value for e in Span.FromString(row.payload).events for kv in e.attributes}
    assert sent["exception.stacktrace"] == stack[:300]


def test_a_settling_reads_the_due_runs_on_past_the_ones_it_settled_that_are_due_again(tmp_path):
    # Ended and kept no time, 300 settled runs were due again at once, ahead of the runs due later:
    # skipped as done, the first 256 read as nothing left, and the pass ended before the later ones.
    # An in-memory tracker so lost its last runs at close.
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=1, keep_finished_seconds=0, gap_grace_seconds=0)
    now = [1_000_000.0]
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: now[0])
    early = [
        WorkflowRun(workflow_id=f"early-{n}").started().step_started("a").after(1).step_completed("a")
        for n in range(300)
    ]
    pipeline.ingest([event for run in early for event in run.completed().events])  # due at 1,000,001
    now[0] += 10
    late = WorkflowRun(workflow_id="late").started().step_started("a").after(1).step_completed("a").completed()
    pipeline.ingest(late.events)  # due at 1,000,011
    now[0] -= 5  # settled at 1,000,005: the early ones closed, due again then

    pipeline.settle_due(horizon=now[0] + 100)

    roots = [Span.FromString(row.payload).name for row in pipeline.store.outbox_peek(1000)]
    assert roots.count("workflow orderProcessing") == 301


def test_job_instances_are_listed_most_pressing_first_and_overdue_ones_found_through_the_index(tmp_path):
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    missed_long = JobRun("reminder", "task", start=now - timedelta(hours=2)).task_scheduled(in_ms=60_000)
    missed = JobRun("batcher", "debounce", start=now - timedelta(minutes=30)).debounce_started(flush_in_ms=5000)
    soon = JobRun("reminder", "task", start=now).task_scheduled(in_ms=3_600_000)
    running = JobRun("refresher", "continuous", start=now - timedelta(minutes=5)).started().after(60_000).executed(1)
    done = JobRun("reminder", "task", start=now - timedelta(hours=1)).task_scheduled(in_ms=1000).after(1000)
    done.executed(0)
    ended = JobRun("refresher", "continuous", start=now - timedelta(hours=1)).started().after(10).terminated(0)
    # A task the settings do not name, past its time: it may have ended itself then (`ctx.clear()`).
    unsaid = JobRun("oneShot", "task", start=now - timedelta(hours=1)).task_scheduled(in_ms=1000)
    pipeline = _pipeline(tmp_path, overdue_tasks=["reminder"])
    pipeline.ingest([e for job in (missed_long, missed, soon, running, done, ended, unsaid) for e in job.events])
    at = now.timestamp()

    listed, count = pipeline.list_jobs(now=at)

    ids = [j.instance_id for j in listed]
    assert count == 4 and ids == [job.base["instanceId"] for job in (missed_long, missed, soon, running)]
    assert [j.overdue_ns is not None for j in listed] == [True, True, False, False]
    assert listed[3].active and listed[3].due_ns is None and listed[3].last_ran_ns == ns_of(running.events[-1])
    overdue, count = pipeline.list_jobs(JobQuery(overdue=True), now=at)
    assert count == 2 and [j.name for j in overdue] == ["reminder", "batcher"]
    assert pipeline.list_jobs(JobQuery(overdue=True, service="elsewhere"), now=at) == ([], 0)
    assert [j.instance_id for j in pipeline.list_jobs(now=at, limit=1)[0]] == ids[:1]


def test_job_instances_whose_latest_run_failed_are_listed_whatever_they_await_the_latest_failed_first(tmp_path):
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    # A task not scheduled again awaits nothing: listed nowhere before, though its latest run failed.
    earlier = JobRun("reminder", "task", start=now - timedelta(hours=2)).failed(1, will_retry=False)
    later = JobRun("mailer", "task", start=now - timedelta(hours=1)).failed(1, will_retry=False)
    mended = JobRun("mailer", "task", start=now - timedelta(hours=3)).failed(1).after(1000).executed(1)
    pipeline = _pipeline(tmp_path)
    pipeline.ingest([e for job in (earlier, later, mended) for e in job.events])
    at = now.timestamp()

    assert pipeline.list_jobs(now=at) == ([], 0)
    failing, count = pipeline.list_jobs(JobQuery(failing=True), now=at)
    assert count == 2 and [j.instance_id for j in failing] == [later.base["instanceId"], earlier.base["instanceId"]]
    assert all(j.last_failure for j in failing)
    assert pipeline.list_jobs(JobQuery(failing=True, job="reminder"), now=at)[1] == 1
    assert pipeline.list_jobs(JobQuery(failing=True, overdue=True), now=at) == ([], 0)


def test_a_debounce_its_clients_clear_is_overdue_no_more_once_the_settings_say_so_restarted_or_not(tmp_path):
    cleared = JobRun("batcher", "debounce").debounce_started(flush_in_ms=1000)  # in 2025: long past its flushAt
    pipeline = _pipeline(tmp_path)
    pipeline.ingest(cleared.events)
    assert pipeline.list_jobs(JobQuery(overdue=True))[1] == 1
    pipeline.store.close()

    told = Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), Settings(**{
        **pipeline.settings.model_dump(), "cleared_debounces": ["batcher"]
    }))  # fmt: skip
    told.restore_gauges()
    assert told.index_by_these_settings() == 1  # indexed again by these settings as it starts
    assert told.index_by_these_settings() == 0  # once for each change of them

    assert told.list_jobs(JobQuery(overdue=True)) == ([], 0)
    assert told.store.overdue_keys(math.inf) == set()
    assert told.list_jobs() == ([], 0)  # past its time it awaits nothing, as a task the settings do not name


def test_a_run_silent_mid_step_past_its_workflows_silence_is_overdue_until_it_tells_something_again(tmp_path):
    pipeline = _pipeline(tmp_path, silent_executing={"checkout": 3_600})
    stuck = WorkflowRun("checkout").started().step_started("charge")  # its Durable Object died mid-step
    rendering = WorkflowRun("report").started().step_started("render")  # unnamed: a step may run for hours
    pipeline.ingest(stuck.events + rendering.events)
    silent_since = ns_of(stuck.events[-1]) / 1e9

    assert pipeline.list_runs(RunQuery(overdue=True), now=silent_since + 3_600 + 299) == ([], 0)  # the grace
    (late,), count = pipeline.list_runs(RunQuery(overdue=True), now=silent_since + 3_600 + 301)
    assert count == 1 and (late.run_id, late.state, late.resume_at_ns) == (stuck.workflow_id, "executing", None)
    assert late.overdue_ns == 301 * 10**9  # past the time it was due to tell something
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]

    pipeline.ingest(stuck.after(60_000).step_completed("charge").events[-1:])  # it was slow, not dead
    assert pipeline.list_runs(RunQuery(overdue=True), now=silent_since + 3_600 + 301) == ([], 0)


def test_a_continuous_job_that_runs_no_more_is_overdue_where_the_settings_name_it_until_it_runs_again(tmp_path):
    pipeline = _pipeline(tmp_path, silent_continuous={"tokenRefresher": 900})
    lost = JobRun("tokenRefresher", "continuous").started().after(300_000).executed(1)  # its alarm lost
    unnamed = JobRun("ledgerReconcile", "continuous").started().after(300_000).executed(1)
    pipeline.ingest(lost.events + unnamed.events)
    ran = ns_of(lost.events[-1]) / 1e9

    assert pipeline.list_jobs(JobQuery(overdue=True), now=ran + 900 + 299) == ([], 0)  # the grace
    (late,), count = pipeline.list_jobs(JobQuery(overdue=True), now=ran + 900 + 301)
    assert count == 1 and (late.name, late.job_type, late.overdue_ns) == ("tokenRefresher", "continuous", 301 * 10**9)
    assert late.due_ns == int((ran + 900) * 1e9) and late.last_ran_ns == ns_of(lost.events[-1])  # "next run"

    pipeline.ingest(lost.after(1_200_000).executed(2).events[-1:])  # it ran at last
    assert pipeline.list_jobs(JobQuery(overdue=True), now=ran + 900 + 301) == ([], 0)


def test_a_bridge_started_with_another_grace_judges_the_runs_already_paused_by_it(tmp_path):
    # A paused run whose alarm is lost is saved no more: it stayed due by the grace it was first saved under.
    paused = WorkflowRun("nightly", start=datetime.now(UTC) - timedelta(seconds=63)).started().sleep_started(60_000)
    paused.paused("sleep", resume_in_ms=60_000)  # due 3 s ago
    first = _pipeline(tmp_path)  # the default grace, 300 s
    first.ingest(paused.events)
    first.index_by_these_settings()
    assert first.list_runs(RunQuery(overdue=True))[1] == 0
    first.store.close()

    again = _pipeline(tmp_path, overdue_grace_seconds=1)

    assert again.index_by_these_settings() == 1
    assert again.list_runs(RunQuery(overdue=True))[1] == 1
    again.store.close()
    one_more_silence = Settings(**{**again.settings.model_dump(), "silent_executing": {"checkout": 60}})
    later = Pipeline(SqliteStore(one_more_silence.state), MetricsHub(), one_more_silence)
    assert later.index_by_these_settings() == 0  # the same grace: the paused runs are left as they are


def _lost_sleep(service: str, workflow_id: str | None = None) -> WorkflowRun:
    run = WorkflowRun("nightly", workflow_id=workflow_id, service=service).started().step_started("a").after(5)
    return run.step_completed("a").sleep_started(60_000).paused("sleep", resume_in_ms=60_000)  # in 2025: long past


def test_a_run_closed_by_hand_is_sent_incomplete_overdue_no_more_and_stays_closed_after_a_restart(tmp_path):
    pipeline = _pipeline(tmp_path)
    stuck = _lost_sleep("shop")
    namesake = _lost_sleep("billing", stuck.workflow_id)  # another producer's run of the same id
    pipeline.ingest(stuck.events + namesake.events)
    pipeline.settle_due(horizon=time.time() + 1)
    sent_before = pipeline.store.outbox_depth()
    assert len(pipeline.overdue_runs()) == 2

    (closed,) = pipeline.close(stuck.workflow_id, "cancelled in the engine", service="shop")

    assert (closed.was.service, closed.was.state, closed.spans, closed.incomplete) == ("shop", "paused", 2, True)
    rows = pipeline.store.outbox_peek(100)[sent_before:]
    (root,) = [s for s in (Span.FromString(row.payload) for row in rows) if not s.parent_span_id]
    told = {a.key: a.value for a in root.attributes}
    assert told["workflow.execution.incomplete"].bool_value
    assert told["workflow.execution.close_reason"].string_value == "cancelled in the engine"
    assert [r.service for r in pipeline.overdue_runs()] == ["billing"]  # through the index: no longer there
    assert pipeline.close(stuck.workflow_id, "again", service="shop") == []  # nothing open left of it
    pipeline.store.close()
    restarted = Pipeline(SqliteStore(pipeline.settings.state), MetricsHub(), pipeline.settings)
    assert [r.service for r in restarted.list_runs(RunQuery())[0]] == ["billing"]


def test_a_run_whose_summary_will_not_come_waits_for_it_no_more(tmp_path):
    settings = Settings(state=str(tmp_path / "s.db"), settle_seconds=1)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    decoder = Phase10Decoder(Phase10Options(service="agents", env="prod", timeline_at_end=True))
    run = Phase10Run("report").started(1).step_started("s1", "fetch").after(10).step_completed("s1").completed()
    pipeline.ingest(run.events, decoder)
    key = decoder.state_key(run.execution_id)
    assert pipeline.settle_due(horizon=time.time() + 2) == 0  # held for its timeline (up to the grace): no span sent

    assert pipeline.summary_not_coming(key)

    assert pipeline.settle_due(horizon=time.time() + 2) == 2 and pipeline.runs_named(run.execution_id)[0].closed
    assert not pipeline.summary_not_coming(key)  # closed: nothing to forgo
    assert not pipeline.summary_not_coming(decoder.state_key("never-told-of"))


def test_a_close_that_finds_nothing_open_is_told_why_each_run_of_that_id_is_not(tmp_path):
    pipeline = _pipeline(tmp_path)
    stuck, namesake = _lost_sleep("shop"), _lost_sleep("billing")
    ended = WorkflowRun("report", service="shop").started().step_started("a").step_completed("a").completed(["a"])
    gone = WorkflowRun("report", service="shop").started().step_started("a").step_completed("a").completed(["a"])
    pipeline.ingest(stuck.events + namesake.events[:1] + gone.events)
    pipeline.settle_due(horizon=time.time() + 1)  # `gone` closes at its end
    pipeline.ingest(ended.events)  # ended, not yet settled
    pipeline.close(stuck.workflow_id, "INC-7", service="shop")

    assert pipeline.not_open(stuck.workflow_id) == [
        f"run {stuck.workflow_id} of nightly (shop/production) is closed already, by hand (INC-7)"
    ]
    assert pipeline.not_open(gone.workflow_id) == [
        f"run {gone.workflow_id} of report (shop/production) is closed already, at its end"
    ]
    assert pipeline.not_open(ended.workflow_id) == [
        f"run {ended.workflow_id} of report (shop/production) has ended: it closes by itself at its next settling"
    ]
    assert pipeline.not_open(namesake.workflow_id) == []  # open: a close closes it
    assert pipeline.not_open(stuck.workflow_id, service="billing") == pipeline.not_open("no-such-run") == []


def test_a_job_instance_an_earlier_version_counted_for_ever_is_presumed_ended_after_a_restart(tmp_path):
    # Stored by a version that kept a counted instance for ever: no due.
    pipeline = _pipeline(tmp_path)
    poller = JobRun("poller").started().after(60_000).executed(1)  # in 2025: silent for long since
    pipeline.ingest(poller.events)
    ((key, header),) = list(pipeline.store.states(keys.JOBS))
    with pipeline.store.transaction() as tx:
        tx.save(key, header, None)
    pipeline.store.close()
    hub = MetricsHub()
    restarted = Pipeline(SqliteStore(pipeline.settings.state), hub, pipeline.settings)

    restarted.restore_gauges()
    restarted.settle_due(horizon=time.time() + 1)

    assert restarted.list_jobs() == ([], 0)  # counted at the restart, then presumed ended
    assert counted(hub, "otel_bridge.jobs.presumed_ended") == 1  # and said so
    (state,) = [journal.decode(k, h, []) for k, h in restarted.store.states(keys.JOBS)]
    assert not state.counted and state.silent_after_ns == ns_of(poller.events[-1])


def test_runs_and_job_instances_are_found_by_the_applications_own_id_too(tmp_path):
    # An on-call engineer holds the id the application logs (durable-effect's executionId, a job's `id`),
    # not the Durable Object's hex: `show`, `close` and the listings take and tell it.
    pipeline = _pipeline(tmp_path)
    order = WorkflowRun("checkout", service="shop", execution_id="order-42").started().step_started("pay")
    digest = JobRun("digestMailer", "debounce", job_id="digest-user-7").debounce_started(flush_in_ms=60_000)
    other = JobRun("digestMailer", "debounce", job_id="digest-user-8").debounce_started(flush_in_ms=60_000)
    pipeline.ingest(order.events + digest.events + other.events)

    (run,) = pipeline.runs_named("order-42")
    (job,) = pipeline.jobs_named("digest-user-7")

    assert run.run.run_id == order.workflow_id and job.instance_id == digest.base["instanceId"]
    assert job.correlation_id == "digest-user-7"
    (listed,) = pipeline.list_runs(RunQuery())[0]
    assert listed.as_dict()["correlation_id"] == "order-42"
    assert pipeline.runs_named(order.workflow_id) == [run]  # the engine's id, as before
    assert pipeline.runs_named("order-43") == [] and pipeline.jobs_named("digest-user-9") == []
    (closed,) = pipeline.close("digest-user-7", "cleared by its client", jobs=True)
    assert closed.was.instance_id == digest.base["instanceId"]
    (closed,) = pipeline.close("order-42", "INC-9")
    assert closed.incomplete and closed.was.run_id == order.workflow_id


def test_a_run_or_job_instance_is_found_by_the_first_characters_of_its_id_when_they_name_one(tmp_path):
    # `runs` and `jobs` show a Durable Object's id by its first twelve characters (as docker shows a
    # container's): `show` and `close` take that, or any beginning of six or more that names one id.
    pipeline = _pipeline(tmp_path)
    first, second = "3f9a0c7e51d2" + "4b" * 26, "3f9a0c7e99aa" + "c1" * 26
    runs = [WorkflowRun("checkout", workflow_id=i).started().step_started("pay") for i in (first, second)]
    digest = JobRun("digestMailer", "debounce", "3f9a0c7e51d2" + "d9" * 26).debounce_started(flush_in_ms=60_000)
    pipeline.ingest(runs[0].events + runs[1].events + digest.events)

    (found,) = pipeline.runs_named("3f9a0c7e51d2")  # a job instance's id begins so too: not a run's
    assert found.run.run_id == first
    (job,) = pipeline.jobs_named("3f9a0c7e51")
    assert job.instance_id == digest.base["instanceId"]
    with pytest.raises(AmbiguousId, match=f"3f9a0c7e begins the ids of 2 runs \\({first}, {second}\\)"):
        pipeline.runs_named("3f9a0c7e")
    with pytest.raises(AmbiguousId):  # closing one of them could be closing a stranger's
        pipeline.close("3f9a0c", "INC-1")
    assert pipeline.runs_named("3f9a0") == []  # five characters name nothing: a slip would close a stranger's run
    assert pipeline.runs_named("4b4b4b4b") == []  # its beginning, not any part of it

    (closed,) = pipeline.close("3f9a0c7e99", "INC-2")
    assert closed.was.run_id == second and closed.incomplete


def test_a_job_instance_closed_by_hand_is_overdue_and_listed_no_more(tmp_path):
    pipeline = _pipeline(tmp_path, overdue_tasks=["*"])
    lost = JobRun("reminder", "task").task_scheduled(in_ms=60_000)  # in 2025: long past
    pipeline.ingest(lost.events)
    instance = lost.base["instanceId"]
    assert pipeline.close(instance, "purged") == []  # a run's id is asked by default, not a job instance's

    (closed,) = pipeline.close(instance, "purged", jobs=True)

    assert closed.was.instance_id == instance and closed.was.overdue_ns is not None
    assert pipeline.overdue() == ([], []) and pipeline.list_jobs() == ([], 0)


def test_on_redis_any_replica_closes_a_run_by_hand(redis_url):
    # A database of its own: the spans it sends stay out of other tests' outbox.
    settings = Settings(state=redis_url.rsplit("/", 1)[0] + "/7", settle_seconds=0)
    one, other = (Pipeline(open_store(settings), MetricsHub(), settings) for _ in range(2))
    stuck = _lost_sleep(f"shop-{time.time_ns()}")
    one.ingest(stuck.events)

    (closed,) = other.close(stuck.workflow_id, "cancelled in the engine")

    assert closed.incomplete and closed.spans == 3  # the step, the sleep and the root: none settled before
    assert [r for r in one.list_runs(RunQuery(service=closed.was.service))[0]] == []
    assert stuck.workflow_id not in [r.run_id for r in one.overdue_runs()]


def test_when_each_job_last_ran_is_told_again_after_a_restart(tmp_path):
    pipeline = _pipeline(tmp_path)
    job = JobRun("sync").started().after(60_000).executed(1).after(60_000).failed(2).after(1000).executed(2)
    pipeline.ingest(job.events)
    pipeline.store.close()
    hub = MetricsHub()
    restarted = Pipeline(SqliteStore(pipeline.settings.state), hub, pipeline.settings)

    restarted.restore_gauges()

    points = {
        point.attributes["job.execution.result"]: point.value
        for data in hub.collect()
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        if metric.name == "job.execution.last_timestamp"
        for point in metric.data.data_points
    }
    assert points == {"success": ns_of(job.events[-1]) / 1e9, "failure": ns_of(job.events[2]) / 1e9}


def _counted(pipeline: Pipeline, name: str) -> dict[tuple[str, str, str], float]:
    """Each producer's count of `name`: (service, environment, engine) -> value."""
    return {
        (
            data.resource_metrics[0].resource.attributes["service.name"],
            data.resource_metrics[0].resource.attributes["deployment.environment.name"],
            point.attributes["workflow.platform.name"],
        ): point.value
        for data in pipeline.metrics.collect()
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    }


def test_each_producers_events_taken_are_counted_under_it_by_engine_and_a_repeat_is_not(tmp_path):
    # What the ProducerSilent alert reads: the one sign of a producer whose tracker stopped delivering.
    pipeline = _pipeline(tmp_path)
    checkout = WorkflowRun("checkout", service="shop").started().step_started("pay")
    refresher = JobRun("refresher", service="shop").started()
    staging = WorkflowRun("checkout", service="shop", env="staging").started()
    pipeline.ingest([*checkout.events, *refresher.events, *staging.events])
    pipeline.ingest(checkout.events)  # sent again: duplicates
    stream = pipeline.consumer(EventSourcedDecoder(EventSourcedOptions("crm", "production")))
    stream.ingest(Execution("onboarding").started().after(10).moved("review").events)

    assert _counted(pipeline, "otel_bridge.producer.events") == {
        ("shop", "production", "durable-effect"): 3,  # a run's two and a job's one, not the two sent again
        ("shop", "staging", "durable-effect"): 1,
        ("crm", "production", "event-sourced"): 2,
    }


def test_events_timestamped_ahead_of_the_bridges_clock_are_counted_under_their_producer_and_told(tmp_path, caplog):
    # A producer's clock an hour ahead: its spans show in the future, its runs turn overdue and close an hour
    # late, and nothing said why.
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0)
    now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: now.timestamp())
    ahead = WorkflowRun("checkout", service="shop", start=now + timedelta(hours=1)).started().step_started("pay")
    in_time = WorkflowRun("checkout", service="billing", start=now + timedelta(seconds=30)).started()
    with caplog.at_level(logging.WARNING, logger="otel_bridge.pipeline"):
        pipeline.ingest([*ahead.events, *in_time.events])
        pipeline.ingest(ahead.events)  # sent again: duplicates, not counted again
        pipeline.ingest(WorkflowRun("refund", service="shop", start=now + timedelta(hours=1)).started().events)

    shop, billing = ("shop", "production", "durable-effect"), ("billing", "production", "durable-effect")
    assert _counted(pipeline, "otel_bridge.producer.events_ahead") == {shop: 3}
    assert _counted(pipeline, "otel_bridge.producer.events") == {shop: 3, billing: 1}
    (told,) = [
        r.getMessage() for r in caplog.records if "ahead of this host's clock" in r.getMessage()
    ]  # once a minute
    assert told.startswith(
        "events timestamped up to 3600 s ahead of this host's clock: 2 of shop (production, durable-effect);"
    )


def test_a_listing_with_other_settings_than_the_bridges_says_overdue_what_the_bridge_counts(tmp_path):
    # `otel-bridge runs` run on another machine, without the bridge's OTEL_BRIDGE_OVERDUE_GRACE_SECONDS:
    # it listed "no overdue runs" while the gauge counted them.
    settings = Settings(
        state=str(tmp_path / "p.db"),
        settle_seconds=0,
        overdue_grace_seconds=1,
        overdue_tasks=["reminder"],
        silent_executing={"checkout": 60},
        silent_continuous={"tokenRefresher": 60},
    )
    bridge = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    stuck = _lost_sleep("shop")  # a minute's sleep in 2025, long past
    lost = JobRun("reminder", "task").task_scheduled(in_ms=60_000)
    just_now = WorkflowRun("nightly", start=datetime.now(UTC) - timedelta(seconds=63)).started().sleep_started(60_000)
    just_now.paused("sleep", resume_in_ms=60_000)  # due 3 s ago: overdue to the bridge, not by 300 s
    died = WorkflowRun("checkout").started().step_started("charge")  # silent since 2025
    stopped = JobRun("tokenRefresher", "continuous").started().after(60_000).executed(1)  # not run since 2025
    bridge.ingest(stuck.events + lost.events + just_now.events + died.events + stopped.events)
    assert len(bridge.overdue_runs()) == 3 and len(bridge.overdue()[1]) == 2
    bridge.store.close()
    elsewhere = Settings(state=settings.state, settle_seconds=0)  # the default grace (300 s), no task named
    earlier = Pipeline(SqliteStore(settings.state), MetricsHub(), elsewhere)  # an index that kept no settings
    (unnamed,) = [r for r in earlier.list_runs(RunQuery(overdue=True))[0] if r.state == "executing"]
    assert abs(unnamed.overdue_ns - (time.time() * 1e9 - ns_of(died.events[-1]))) < 5e9  # as silent since
    earlier.store.close()
    bridge = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    bridge.index_by_these_settings()  # as a serving bridge does as it starts: the store keeps its settings
    bridge.store.close()
    command = Pipeline(SqliteStore(settings.state), MetricsHub(), elsewhere)

    overdue, count = command.list_runs(RunQuery(overdue=True))

    assert count == 3 and {r.run_id for r in overdue} == {stuck.workflow_id, just_now.workflow_id, died.workflow_id}
    (silent,) = [r for r in overdue if r.state == "executing"]
    silent_for = time.time() * 1e9 - ns_of(died.events[-1])
    assert abs(silent.overdue_ns - (silent_for - 60e9)) < 5e9  # past the bridge's silence, not these settings' none
    assert all(r.overdue_ns for r in command.list_runs(RunQuery())[0])
    listed = command.list_jobs(JobQuery(overdue=True))[0]
    assert {j.instance_id for j in listed} == {lost.base["instanceId"], stopped.base["instanceId"]}
    (refresher,) = [j for j in listed if j.name == "tokenRefresher"]
    assert refresher.due_ns == ns_of(stopped.events[-1]) + 60 * 10**9  # "next run", by the bridge's silence


def _outbox_after(state: str, batches: list[list[dict]], restart_after: set[int], **values) -> list[bytes]:
    """Every span the pipeline put in its outbox, ingesting `batches` one by one and settling after each
    as a running bridge does (its clock two seconds on each time), restarted after the batches named.
    `state`: a SQLite file, or a Redis URL with the key prefix to use after a space."""
    now = [1_000_000.0]
    url, _, prefix = state.partition(" ")
    chosen = Settings(state=url, settle_seconds=1, **values)

    def opened() -> Pipeline:
        store = RedisStore(url, chosen.dedup_ttl_seconds, prefix=prefix) if prefix else SqliteStore(url)
        return Pipeline(store, MetricsHub(), chosen, clock=lambda: now[0])

    pipeline = opened()
    for n, batch in enumerate(batches):
        pipeline.ingest(batch)
        now[0] += 2
        pipeline.settle_due()
        if n in restart_after:
            pipeline.store.close()
            pipeline = opened()
    pipeline.settle_due(horizon=now[0] + 10**6, told_all=True)
    sent = sorted(row.payload for row in pipeline.store.outbox_peek(10**6))
    pipeline.store.close()
    return sent


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(runs=st.lists(long_histories(), min_size=1, max_size=3), data=st.data())
def test_runs_kept_in_memory_or_read_from_the_store_or_across_restarts_send_the_same_spans(
    tmp_path_factory, redis_url, runs, data
):
    # The runs in memory are a cache of the store: with none, with one so small that runs leave it between
    # their batches, and with restarts between batches, the outbox holds the same spans, each once; and
    # so does Redis's store, which keeps no run in memory (its replicas share the runs).
    events = [e for run in runs for e in run]
    delivered = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=5))))
    cuts = (
        sorted(set(data.draw(st.lists(st.integers(1, len(delivered) - 1), max_size=6)))) if len(delivered) > 1 else []
    )
    batches = [delivered[a:b] for a, b in pairwise([0, *cuts, len(delivered)])]
    restarts = set(data.draw(st.lists(st.integers(0, len(batches) - 1), max_size=3)))
    tmp = tmp_path_factory.mktemp("cache")
    in_memory = _outbox_after(str(tmp / "hot.db"), batches, set())
    assert in_memory and len({Span.FromString(p).span_id for p in in_memory}) == len(in_memory)
    assert _outbox_after(str(tmp / "cold.db"), batches, set(), hot_runs=0) == in_memory
    assert _outbox_after(str(tmp / "tiny.db"), batches, set(), hot_runs=1, hot_facts=1) == in_memory
    assert _outbox_after(str(tmp / "restarted.db"), batches, restarts) == in_memory
    assert _outbox_after(f"{redis_url} {tmp.name}:", batches, restarts) == in_memory


class _Recorded(MetricsHub):
    """The hub the pipeline records into, keeping every observation for the test to add up."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: list = []

    def record(self, observations) -> None:
        self.observed += list(observations)


def _exported_after(state: str, batches: list[list[dict]], restart_after: set[int], decoder=None) -> tuple:
    """What the bridge would export, restarted after the batches named: the active gauges (workflow runs,
    job instances) of the last process — what it restored from the store as it started, and what it
    counted since — and every counter's and histogram's total over all the processes."""
    now = [1_000_000.0]
    chosen = Settings(state=state, settle_seconds=1)
    observed: list = []

    def opened() -> Pipeline:
        pipeline = Pipeline(SqliteStore(state), _Recorded(), chosen, clock=lambda: now[0])
        pipeline.restore_gauges()  # as a bridge does as it starts
        return pipeline

    pipeline = opened()
    for n, batch in enumerate(batches):
        pipeline.ingest(batch, decoder)
        now[0] += 2
        pipeline.settle_due()
        if n in restart_after:
            pipeline.store.close()
            observed += pipeline.metrics.observed  # type: ignore[attr-defined]
            pipeline = opened()
    pipeline.store.close()
    last: list = pipeline.metrics.observed  # type: ignore[attr-defined]
    active = net_metrics(o for o in last if o.instrument.endswith(".active"))
    summed = net_metrics(o for o in observed + last if INSTRUMENTS[o.instrument].kind in ("counter", "histogram"))
    return {k: v for k, v in active.items() if v}, summed


_ENGINES = {
    "durable-effect": (st.lists(st.one_of(long_histories(), job_histories()), max_size=3), None),
    "event-sourced": (st.lists(executions(), max_size=2), EventSourcedDecoder(EventSourcedOptions("crm", "prod"))),
    "phase10": (st.lists(phase10_runs(), max_size=2), Phase10Decoder(Phase10Options("agents", "prod"))),
}


@pytest.mark.parametrize("engine", list(_ENGINES))
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_restarted_bridge_exports_the_gauges_and_counts_of_one_that_never_stopped(tmp_path_factory, engine, data):
    # A restart recounts the open runs and job instances from the store (their states' headers): the gauges
    # it exports then are the ones a bridge that never stopped would export — for each engine's runs, and
    # for runs whose name came after their first events (the moved place in the gauge is kept with them).
    # And events sent again across a restart are known there: nothing is counted twice.
    histories, decoder = _ENGINES[engine]
    events = [e for history in data.draw(histories) for e in history]
    assume(events)
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=len(events) // 2))
    delivered = data.draw(st.permutations(events + repeats))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(len(delivered) - 1, 1)), max_size=5))))
    batches = [delivered[a:b] for a, b in pairwise([0, *cuts, len(delivered)]) if a < b]
    restarts = set(data.draw(st.lists(st.integers(0, len(batches) - 1), min_size=1, max_size=3)))
    tmp = tmp_path_factory.mktemp("gauges")
    assert _exported_after(str(tmp / "restarted.db"), batches, restarts, decoder) == _exported_after(
        str(tmp / "running.db"), batches, set(), decoder
    )
