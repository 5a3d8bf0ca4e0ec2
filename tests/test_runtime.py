"""The running bridge: where it stores an HTTP batch and settles (on the server's event loop only where that
cannot hold it up), how far behind settling is, and what it warns of as it starts."""

import asyncio
import contextlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import JobRun, WorkflowRun, ns_of
from redis_server import RedisServer

from otel_bridge import conventions as c
from otel_bridge import runtime
from otel_bridge.config import Settings
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.otlp import NoSender
from otel_bridge.on_loop import OnLoop
from otel_bridge.pipeline import here
from otel_bridge.runtime import Bridge
from otel_bridge.state import hearings
from otel_bridge.state.hearings import Hearings
from otel_bridge.state.store import StoreDamaged, StoreOpenError


def _bridge(tmp_path, state: str | None = None, clock=time.time, **values) -> Bridge:
    settings = Settings(
        state=state or str(tmp_path / "s.db"),
        dead_letter=tmp_path / "dead.jsonl",
        span_dead_letter=tmp_path / "spans.jsonl",
        **values,
    )
    return Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender(), clock=clock)


def test_a_small_batch_on_a_free_local_store_is_stored_on_the_event_loop(tmp_path):
    bridge = _bridge(tmp_path)
    assert bridge.ingests_inline(6)
    assert bridge.ingests_inline(128)


def test_a_large_batch_goes_to_a_worker_thread(tmp_path):
    assert not _bridge(tmp_path).ingests_inline(129)


def test_an_fsync_per_batch_goes_to_a_worker_thread(tmp_path):
    assert not _bridge(tmp_path, durability="full").ingests_inline(6)


def test_a_batch_while_another_thread_is_in_a_transaction_goes_to_a_worker_thread(tmp_path):
    bridge = _bridge(tmp_path)
    inside, leave = threading.Event(), threading.Event()

    def settling() -> None:
        with bridge.store.transaction():
            inside.set()
            leave.wait(10)

    other = threading.Thread(target=settling)
    other.start()
    try:
        assert inside.wait(10)
        assert not bridge.ingests_inline(6)
    finally:
        leave.set()
        other.join()
    assert bridge.ingests_inline(6)


@pytest.mark.usefixtures("redis_url")
def test_a_store_across_a_network_goes_to_a_worker_thread(tmp_path, redis_url):
    assert not _bridge(tmp_path, state=redis_url).ingests_inline(6)


async def _settling_on_loop(bridge: Bridge) -> None:
    bridge.settle_on_loop()


def test_settling_is_handed_to_the_servers_event_loop_on_a_local_store_until_the_bridge_stops(tmp_path):
    bridge = _bridge(tmp_path)
    asyncio.run(_settling_on_loop(bridge))
    assert isinstance(bridge.pipeline.slices, OnLoop)
    bridge.stop()
    assert bridge.pipeline.slices is here  # the last settling is the stopping thread's


def test_settling_stays_in_its_thread_with_an_fsync_per_batch(tmp_path):
    bridge = _bridge(tmp_path, durability="full")
    asyncio.run(_settling_on_loop(bridge))
    assert bridge.pipeline.slices is here


@pytest.mark.usefixtures("redis_url")
def test_settling_stays_in_its_thread_on_a_store_across_a_network(tmp_path, redis_url):
    bridge = _bridge(tmp_path, state=redis_url)
    asyncio.run(_settling_on_loop(bridge))
    assert bridge.pipeline.slices is here


def test_the_settle_lag_is_how_long_the_run_due_soonest_has_waited_past_its_due_time(tmp_path):
    now = [1_000.0]
    bridge = _bridge(tmp_path, clock=lambda: now[0], settle_seconds=1)
    assert bridge.settle_lag() == 0.0  # nothing due
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    bridge.pipeline.ingest(run.events)
    assert bridge.settle_lag() == 0.0  # due in a second: not late
    now[0] += 7.0
    assert bridge.settle_lag() == 6.0
    assert _exposed(bridge, "otel_bridge_settle_lag_seconds") == 6.0
    bridge.pipeline.settle_due()
    assert bridge.settle_lag() == 0.0


def _exposed(bridge: Bridge, name: str) -> float:
    body, _ = bridge.exposition("")
    line = next(
        line for line in body.decode().splitlines() if line.startswith(name + " ") or line.startswith(name + "{")
    )
    return float(line.rsplit(" ", 1)[1])


def _started_on_redis(tmp_path, caplog, *redis_args: str) -> dict[str, object]:
    """Start and stop a bridge on a Redis of its own started with `redis_args`: its /readyz meanwhile
    (the warnings it logged are in `caplog`)."""
    server = RedisServer(None, *redis_args).start()
    try:
        bridge = _bridge(tmp_path, state=server.url)
        with caplog.at_level(logging.WARNING, logger="otel_bridge.runtime"):
            bridge.start(follow=False)
        readiness = bridge.readiness()
        bridge.stop()
    finally:
        server.close()
    return readiness


def test_a_bridge_on_a_redis_that_may_evict_what_it_took_warns_as_it_starts(tmp_path, caplog):
    readiness = _started_on_redis(tmp_path, caplog, "--maxmemory-policy", "allkeys-lru")
    assert any("allkeys-lru" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Told by /readyz too, as long as it runs; batches are still taken.
    assert readiness["ready"] is True and "allkeys-lru" in readiness["warnings"][0]


def test_a_bridge_on_a_redis_that_keeps_nothing_on_disk_warns_as_it_starts(tmp_path, caplog):
    readiness = _started_on_redis(tmp_path, caplog)  # the tests' servers: `--save "" --appendonly no`
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("Redis keeps nothing on disk")
    assert readiness["ready"] is True and readiness["warnings"] == [warning]


def test_a_bridge_on_a_redis_that_refuses_writes_when_full_and_keeps_a_log_starts_without_a_warning(tmp_path, caplog):
    # Redis's default policy, noeviction; an append-only file written before each answer.
    readiness = _started_on_redis(tmp_path, caplog, "--appendonly", "yes", "--dir", str(tmp_path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "warnings" not in readiness


def test_a_redis_set_to_keep_nothing_on_disk_while_the_bridge_runs_is_told_and_told_again_once_mended(
    tmp_path, caplog, monkeypatch
):
    # As a Redis recreated without its volume, or reconfigured by hand or by a managed service, would be.
    monkeypatch.setattr(runtime, "_RISKS_EVERY", 0.0)  # read again at every pass of the overdue loop
    server = RedisServer(None, "--appendonly", "yes", "--dir", str(tmp_path)).start()
    bridge = _bridge(tmp_path, state=server.url, overdue_grace_seconds=4)  # a pass a second
    try:
        with caplog.at_level(logging.INFO, logger="otel_bridge.runtime"):
            bridge.start(follow=False)
            assert "warnings" not in bridge.readiness()
            assert _exposed(bridge, "otel_bridge_state_risks") == 0.0

            server.client().config_set("appendonly", "no")
            warnings = _eventually(lambda: bridge.readiness().get("warnings"))
            assert len(warnings) == 1 and warnings[0].startswith("Redis keeps nothing on disk")
            assert bridge.readiness()["ready"] is True  # told, not refused: batches are still taken
            assert _exposed(bridge, "otel_bridge_state_risks") == 1.0  # what BridgeStateAtRisk alerts on

            server.client().config_set("appendonly", "yes")
            _eventually(lambda: "warnings" not in bridge.readiness())
            assert _exposed(bridge, "otel_bridge_state_risks") == 0.0
    finally:
        bridge.stop()
        server.close()
    told = [(r.levelno, r.getMessage()) for r in caplog.records if "keeps nothing on disk" in r.getMessage()]
    assert told == [
        (logging.WARNING, warnings[0]),
        (logging.INFO, f"no longer so, the state store's settings read again: {warnings[0]}"),
    ]


def _eventually(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.05)
    return result


def test_a_failing_export_is_a_warning_of_readyz_not_a_reason_the_bridge_still_takes_batches(tmp_path):
    # A readiness probe that followed the backend took the bridge out of its Service (a sidecar: the
    # application's whole pod) in the very outage its outbox is there to ride out.
    bridge = _bridge(tmp_path)
    bridge.ready = True  # as start() leaves it
    bridge.trace_health.failed("cannot connect: [Errno 111] Connection refused")

    status = bridge.readiness()

    assert status["ready"] is True and status["reasons"] == []
    (warning,) = status["warnings"]
    assert warning.startswith("trace export failing for ") and warning.endswith(": spans wait in the outbox (0)")


def test_with_export_unready_seconds_set_a_failing_export_makes_the_bridge_not_ready_after_that_long(tmp_path):
    bridge = _bridge(tmp_path, export_unready_seconds=60)
    bridge.ready = True
    bridge.trace_health.failed("HTTP 503")
    assert bridge.readiness()["ready"] is True  # not yet a minute

    bridge.trace_health._cadence.since -= 61  # type: ignore[operator]  # a minute of failing later

    status = bridge.readiness()
    assert status["ready"] is False
    assert [r.split(" for ")[0] for r in status["reasons"]] == ["trace export failing"]


def _exposed_by(bridge: Bridge, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    body, _ = bridge.exposition("")
    found = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            given = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            found[tuple(given.get(label, "") for label in labels)] = float(line.rsplit(" ", 1)[1])
    return found


def test_the_producers_a_bridge_expects_are_heard_from_at_its_start_until_their_events_arrive(tmp_path):
    clock = [1_800_000_000.0]
    expected = {"shop@production": 900, "billing@production": 3600}
    bridge = _bridge(tmp_path, clock=lambda: clock[0], expected_producers=expected)
    bridge.start(follow=False)
    try:
        clock[0] += 60
        run = WorkflowRun().started()
        bridge.pipeline.ingest([dict(event, serviceKey="shop", env="production") for event in run.events])
        within = _exposed_by(bridge, "otel_bridge_producer_expected_within_seconds", "service_name")
        heard = _exposed_by(
            bridge, "otel_bridge_producer_last_heard_timestamp_seconds", "service_name", "workflow_platform_name"
        )
    finally:
        bridge.stop()
    assert within == {("shop",): 900.0, ("billing",): 3600.0}
    # Each as heard at the start; shop, once its event arrived, when it did (by the engine, as its events count).
    assert heard == {
        ("shop", ""): 1_800_000_000.0,
        ("billing", ""): 1_800_000_000.0,
        ("shop", "durable-effect"): 1_800_000_060.0,
    }


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own: what replicas count there is only what the test stored."""
    server = RedisServer().start()
    yield server
    server.close()


def _heard_by(bridge: Bridge) -> dict[tuple[str, ...], float]:
    return _exposed_by(
        bridge, "otel_bridge_producer_last_heard_timestamp_seconds", "service_name", "workflow_platform_name"
    )


def test_a_restarted_bridge_counts_a_producers_silence_from_its_last_event_and_an_expectation_from_its_first_day(
    tmp_path,
):
    # Counted from each start, a bridge restarted more often than a producer's window never told of one that
    # never sends (ProducerNotHeard), and gave one gone silent as much more grace as the bridge was young.
    clock = [1_800_000_000.0]
    bridge = _bridge(
        tmp_path, clock=lambda: clock[0], expected_producers={"shop@production": 900, "ghost@production": 900}
    )
    bridge.start(follow=False)
    clock[0] += 60
    bridge.pipeline.ingest([dict(e, serviceKey="shop", env="production") for e in WorkflowRun().started().events])
    bridge.stop()

    clock[0] += 3600  # an hour later, and the producers expected now otherwise
    expected = {"shop@production": 900, "ghost@production": 900, "new@production": 900}
    restarted = _bridge(tmp_path, clock=lambda: clock[0], expected_producers=expected)
    restarted.start(follow=False)
    try:
        heard = _heard_by(restarted)
    finally:
        restarted.stop()
    assert heard == {
        ("shop", ""): 1_800_000_000.0,  # expected since the first start, as ghost
        ("ghost", ""): 1_800_000_000.0,
        ("new", ""): 1_800_003_660.0,  # newly expected: from now
        ("shop", "durable-effect"): 1_800_000_060.0,  # its last event, before the restart
    }


def test_what_a_bridge_heard_is_kept_in_the_store_with_the_metrics_export_not_only_at_its_stop(tmp_path):
    # A crash skips the stop: what the last export wrote is what the next start reads back.
    clock = [1_800_000_000.0]
    bridge = _bridge(tmp_path, clock=lambda: clock[0])
    bridge.pipeline.ingest([dict(e, serviceKey="shop") for e in WorkflowRun().started().events])
    bridge.keep_hearings()  # as the metric export's loop does after each export
    crashed = bridge.store
    restarted = _bridge(tmp_path.parent / (tmp_path.name + "-copy"), state=_copy_of(tmp_path / "s.db"))
    restarted.start(follow=False)
    try:
        assert _heard_by(restarted) == {("shop", "durable-effect"): 1_800_000_000.0}
    finally:
        restarted.stop()
        crashed.close()


def _copy_of(state: Path) -> str:
    """The state file as a crash leaves it: what was committed, the bridge that wrote it never stopped."""
    copy = state.parent.parent / (state.parent.name + "-copy") / state.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(state, copy)
    for suffix in ("-wal", "-shm"):
        if Path(f"{state}{suffix}").exists():
            shutil.copy(f"{state}{suffix}", f"{copy}{suffix}")
    return str(copy)


def test_a_redis_gone_as_the_bridge_stops_is_said_once_and_the_stop_ends(tmp_path, own_redis, caplog):
    # It ended the stop with a traceback ("Application shutdown failed"), after a warning every half second of
    # the drain; what waits in Redis stays there for the next start.
    bridge = _bridge(tmp_path, state=own_redis.url, drain_timeout_seconds=1).start(follow=False)
    bridge.pipeline.ingest(WorkflowRun().started().step_started("a").events)
    own_redis.close()

    with caplog.at_level(logging.WARNING, logger="otel_bridge"):
        bridge.stop()

    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if m.startswith("draining the outbox failed")]) == 1
    assert len([m for m in said if m.startswith("the store is unavailable as the bridge stops")]) == 1


def test_replicas_sharing_a_redis_store_each_restore_the_latest_hearing_of_every_producer(tmp_path, own_redis):
    clock = [1_800_000_000.0]
    one = _bridge(tmp_path, state=own_redis.url, clock=lambda: clock[0])
    two = _bridge(tmp_path, state=own_redis.url, clock=lambda: clock[0])
    one.pipeline.ingest([dict(e, serviceKey="shop") for e in WorkflowRun().started().events])
    clock[0] += 10
    two.pipeline.ingest([dict(e, serviceKey="billing") for e in WorkflowRun().started().events])
    clock[0] += 10
    one.pipeline.ingest([dict(e, serviceKey="billing") for e in WorkflowRun().started().events])
    two.keep_hearings()
    one.keep_hearings()  # the later of billing's is one's: kept over two's, whichever wrote last
    one.store.close()
    two.store.close()

    third = _bridge(tmp_path, state=own_redis.url, clock=lambda: clock[0])
    third.start(follow=False)
    try:
        heard = _heard_by(third)
    finally:
        third.stop()
    assert heard == {("shop", "durable-effect"): 1_800_000_000.0, ("billing", "durable-effect"): 1_800_000_020.0}


def test_a_hearing_another_replicas_write_at_the_same_moment_left_out_is_written_again_within_ten_minutes(tmp_path):
    clock = [1_800_000_000.0]
    bridge = _bridge(tmp_path, clock=lambda: clock[0])
    bridge.pipeline.ingest([dict(e, serviceKey="shop") for e in WorkflowRun().started().events])
    bridge.keep_hearings()
    # Another replica read before that write and wrote after it: what it heard, without shop.
    other = Hearings({("durable-effect", "production", "billing"): clock[0]}, {})
    bridge.store.set_bookmark(hearings.BOOKMARK, other.encoded())

    bridge.keep_hearings()  # nothing heard since: not written again at once
    unchanged = hearings.decoded(bridge.store.bookmark(hearings.BOOKMARK))
    bridge._hearings_written_at -= hearings.REWRITTEN_AFTER_SECONDS  # ten minutes later
    bridge.keep_hearings()
    again = hearings.decoded(bridge.store.bookmark(hearings.BOOKMARK))
    bridge.store.close()

    assert unchanged == other
    assert again.heard == {
        ("durable-effect", "production", "billing"): 1_800_000_000.0,
        ("durable-effect", "production", "shop"): 1_800_000_000.0,
    }


def test_when_producers_were_heard_from_unreadable_in_the_store_is_said_and_counted_from_the_start(tmp_path, caplog):
    first = _bridge(tmp_path)
    first.store.set_bookmark("producers heard", b"written by hand")
    first.store.close()
    clock = [1_800_000_000.0]
    bridge = _bridge(tmp_path, clock=lambda: clock[0], expected_producers={"ghost@production": 900})
    with caplog.at_level(logging.WARNING, "otel_bridge"):
        bridge.start(follow=False)
    try:
        assert _heard_by(bridge) == {("ghost", ""): 1_800_000_000.0}
    finally:
        bridge.stop()
    assert "when the producers were last heard from could not be read" in caplog.text
    restarted = _bridge(tmp_path, clock=lambda: clock[0] + 60, expected_producers={"ghost@production": 900})
    restarted.start(follow=False)
    try:
        assert _heard_by(restarted) == {("ghost", ""): 1_800_000_000.0}  # written anew by the first start
    finally:
        restarted.stop()


def test_replicas_on_a_redis_store_all_restarted_tell_when_each_job_last_ran_and_what_is_open_again(
    tmp_path, own_redis
):
    # The counts are each replica's share, never read back on a shared store; the latest time is the same told by
    # all: left unread, a daily job's "since the last successful run" stayed empty for a day after a deploy.
    sync = JobRun("sync", "continuous").started().executed(1).after(60_000).failed(2, will_retry=False)
    first = _bridge(tmp_path, state=own_redis.url)
    first.pipeline.ingest(sync.events + WorkflowRun().started().events)
    first.store.close()

    restarted = _bridge(tmp_path, state=own_redis.url).start(follow=False)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (_last_runs(restarted) and _open_runs(restarted)):
            time.sleep(0.05)  # read back in the background, as the overdue loop starts
        told = _last_runs(restarted)
        open_runs = _open_runs(restarted)  # and the open runs counted, as the replica holding the lease
    finally:
        restarted.stop()
    assert open_runs == {("executing",): 1}
    succeeded, failed = (ns_of(e) / 1e9 for e in sync.events if e["type"] in ("job.executed", "job.failed"))
    assert told == {("sync", "success"): succeeded, ("sync", "failure"): failed}


def _open_runs(*replicas: Bridge) -> dict[tuple[str, ...], float]:
    """workflow.execution.active as a backend sums it over the replicas' series."""
    summed: dict[tuple[str, ...], float] = {}
    for replica in replicas:
        exposed = _exposed_by(
            replica, "workflow_execution_active", "workflow_definition_name", "workflow_execution_state"
        )
        for (_name, state), value in exposed.items():
            summed[(state,)] = summed.get((state,), 0) + value
    return {series: value for series, value in summed.items() if value}


def test_replicas_on_a_redis_store_count_the_open_runs_from_it_whichever_replica_restarted_or_ended_them(
    tmp_path, own_redis
):
    # Each replica counted its share of the changes it saw: one started again lost its share, and the runs it had
    # counted, ended by another, took that one below zero — after a deploy of every replica, the sum was negative.
    runs = [WorkflowRun(f"w{n}").started().step_started("a") for n in range(3)]
    holder = _bridge(tmp_path, state=own_redis.url)
    other = _bridge(tmp_path, state=own_redis.url)
    other.pipeline.ingest([e for run in runs for e in run.events] + JobRun("sync", "continuous").started().events)
    holder.count_active()
    other.count_active()  # the lease is the holder's: it tells nothing
    assert _open_runs(holder, other) == {("executing",): 3}
    assert _exposed_by(holder, "job_instance_active", "job_name") == {("sync",): 1.0}
    assert _exposed_by(other, "job_instance_active", "job_name") == {}
    # And what is overdue (a debounce's flush long past), told once: a sum over bridges counts each store once.
    other.pipeline.ingest(JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000).events)
    holder.count_overdue()
    other.count_overdue()
    assert _exposed_by(holder, "job_instance_overdue", "job_name") == {("webhookBatcher",): 1.0}
    assert _exposed_by(other, "job_instance_overdue", "job_name") == {}

    other.store.close()
    restarted = _bridge(tmp_path, state=own_redis.url)  # the other started again, and ends two of the runs
    restarted.pipeline.ingest([e for run in runs[:2] for e in run.after(10).step_completed("a").completed().events])
    restarted.pipeline.settle_due(horizon=float("inf"), told_all=True)
    holder.count_active()
    restarted.count_active()
    assert _open_runs(holder, restarted) == {("executing",): 1}
    # The one outbox's depth, told by the holder alone: each told it, and a sum over replicas doubled it.
    depth = restarted.store.outbox_depth()
    assert depth > 0 and list(_exposed_by(holder, "otel_bridge_outbox_depth").values()) == [depth]
    assert _exposed_by(restarted, "otel_bridge_outbox_depth") == {}

    # The lease lapses (its holder stalled): the restarted replica counts, the former holder takes back its own.
    (lease,) = own_redis.client().keys("*lease:shared counts")
    own_redis.client().delete(lease)
    restarted.count_active()
    holder.count_active()
    assert _open_runs(holder, restarted) == {("executing",): 1}
    assert _open_runs(holder) == {}
    holder.store.close()
    restarted.store.close()


def test_the_counting_lease_is_renewed_at_each_pass_and_a_replica_taking_it_counts_at_once(tmp_path, own_redis):
    # Renewed only as often as it counted (a minute), a holder killed left the gauges untold for three.
    holder = _bridge(tmp_path, state=own_redis.url)
    other = _bridge(tmp_path, state=own_redis.url)
    assert holder.count_active() is True and _open_runs(holder) == {}
    other.pipeline.ingest(WorkflowRun().started().events)
    assert holder.count_active(count=False) is False  # a pass between counts: renewed, not counted again
    assert other.count_active(count=False) is False and _open_runs(holder, other) == {}
    (lease,) = own_redis.client().keys("*lease:shared counts")
    assert 0 < own_redis.client().pttl(lease) <= 45_000 + 3_000

    own_redis.client().delete(lease)  # the holder killed, its lease lapsed
    assert other.count_active(count=False) is True  # taken at a pass: counted at once, not a minute on
    assert _open_runs(other) == {("executing",): 1}
    holder.store.close()
    other.store.close()


def _one_counting(tmp_path, url: str) -> tuple[Bridge, Bridge]:
    """Two replicas on one Redis, a run open, the first counting it (the lease's holder)."""
    leaving = _bridge(tmp_path, state=url)
    staying = _bridge(tmp_path, state=url)
    staying.pipeline.ingest(WorkflowRun().started().events)
    leaving.count_active()
    staying.count_active()
    return leaving, staying


def test_a_replica_that_counted_the_open_runs_lets_the_counting_go_as_it_stops(tmp_path, own_redis):
    leaving, staying = _one_counting(tmp_path, own_redis.url)
    assert _open_runs(leaving) == {("executing",): 1} and _open_runs(staying) == {}

    leaving.stop()  # a deploy: the next count of another takes it over, not one three minutes on
    staying.count_active()
    assert _open_runs(staying) == {("executing",): 1}
    staying.store.close()


def test_a_replica_letting_the_counting_go_takes_back_what_it_told(tmp_path, own_redis):
    # It lets go as its stop begins, before the drain: its last export (the drain may outlast the next holder's
    # count) was summed beside the new holder's, the open runs counted twice.
    leaving, staying = _one_counting(tmp_path, own_redis.url)
    assert _open_runs(leaving) == {("executing",): 1}

    leaving.let_counts_go()
    staying.count_active()

    assert _open_runs(leaving) == {} and _open_runs(leaving, staying) == {("executing",): 1}
    leaving.store.close()
    staying.store.close()


def _last_runs(bridge: Bridge) -> dict[tuple[str, ...], float]:
    return _exposed_by(bridge, "job_execution_last_timestamp_seconds", "job_name", "job_execution_result")


def _count_overdue(bridge: Bridge) -> None:
    """As a pass of the overdue loop: on a shared store the replica that counts tells them (here the only one)."""
    bridge.count_active()
    bridge.count_overdue()


def _stopped(bridge: Bridge) -> None:
    """A replica gone, without the rest of a stop (its last settling would end the long-silent instances)."""
    bridge.let_counts_go()
    bridge.store.close()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_job_instances_past_their_time_to_run_are_counted_overdue_from_the_store_and_again_after_a_restart(
    tmp_path, store
):
    # Told in 2025 (the builders' clock): long past, well beyond the grace.
    missed = JobRun("reminder", "task").task_scheduled(in_ms=30_000)
    ran = JobRun("reminder", "task").task_scheduled(in_ms=30_000).after(30_000).executed(0)
    collecting = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    server = RedisServer().start() if store == "redis" else None  # a Redis of its own: nothing else counted
    state = server.url if server is not None else None
    try:
        bridge = _bridge(tmp_path, state=state, overdue_tasks=["reminder"])
        bridge.pipeline.ingest(missed.events + ran.events + collecting.events)

        _count_overdue(bridge)

        expected = {("reminder", "task"): 1.0, ("webhookBatcher", "debounce"): 1.0}
        assert _exposed_by(bridge, "job_instance_overdue", "job_name", "job_type") == expected
        _stopped(bridge)
        restarted = _bridge(tmp_path, state=state, overdue_tasks=["reminder"])
        _count_overdue(restarted)
        assert _exposed_by(restarted, "job_instance_overdue", "job_name", "job_type") == expected

        restarted.pipeline.ingest(missed.after(3_600_000).executed(0).events[-1:])  # the alarm fired at last
        _count_overdue(restarted)
        assert _exposed_by(restarted, "job_instance_overdue", "job_name", "job_type") == {
            ("webhookBatcher", "debounce"): 1.0
        }
        _stopped(restarted)
    finally:
        if server is not None:
            server.close()


def test_a_restart_with_other_tasks_named_counts_overdue_by_its_own_settings(tmp_path):
    # The overdue index is written as instances are saved; a lost task alarm saved by a bridge that named
    # its task stayed counted for a week by one that did not (an upgrade to tasks unnamed by default).
    missed = JobRun("reminder", "task").task_scheduled(in_ms=30_000)  # in 2025: long past
    collecting = JobRun("webhookBatcher", "debounce").debounce_started(flush_in_ms=5000)
    bridge = _bridge(tmp_path, overdue_tasks=["*"])
    bridge.pipeline.ingest(missed.events + collecting.events)
    _stopped(bridge)
    counted = []
    for named in ([], ["reminder"]):
        restarted = _bridge(tmp_path, overdue_tasks=named)
        restarted.pipeline.restore_gauges()  # as `start` does
        restarted.index_by_these_settings()
        _count_overdue(restarted)
        counted.append(_exposed_by(restarted, "job_instance_overdue", "job_name", "job_type"))
        _stopped(restarted)

    assert counted == [
        {("webhookBatcher", "debounce"): 1.0},
        {("reminder", "task"): 1.0, ("webhookBatcher", "debounce"): 1.0},
    ]


def test_runs_silent_mid_step_are_counted_overdue_by_the_silences_the_bridge_is_started_with(tmp_path):
    # Silent since 2025 (the builders' clock); the first one stored as a version before this one did,
    # its header not saying when it last told anything.
    died = WorkflowRun("checkout").started().step_started("charge")
    crashed = WorkflowRun("checkout").started().step_started("ship")
    rendering = WorkflowRun("report").started().step_started("render")
    bridge = _bridge(tmp_path)
    bridge.pipeline.ingest(died.events + crashed.events + rendering.events)
    (key,) = [key for key, _head in bridge.store.states() if key.endswith(died.workflow_id)]
    with bridge.store.transaction() as tx:
        header, due = tx.load(key) or (b"", None)
        tx.save(key, header.replace(b',"last_told_ns":' + str(ns_of(died.events[-1])).encode(), b""), due)
    _stopped(bridge)
    counted = []
    for silences in ({"checkout": 3_600}, {"report": 3_600}, {}):
        restarted = _bridge(tmp_path, silent_executing=silences)
        restarted.pipeline.restore_gauges()  # as `start` does
        restarted.index_by_these_settings()
        _count_overdue(restarted)
        counted.append(
            _exposed_by(restarted, "workflow_execution_overdue", "workflow_definition_name", "workflow_execution_state")
        )
        _stopped(restarted)

    assert counted == [{("checkout", "executing"): 2.0}, {("report", "executing"): 1.0}, {}]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_continuous_jobs_that_run_no_more_are_counted_overdue_by_the_silences_the_bridge_is_started_with(
    tmp_path, store
):
    # On Redis too, where no start reads every state: the instance that runs no more tells nothing that
    # would save it again, and stayed as the settings before had judged it.
    stopped = JobRun("tokenRefresher", "continuous").started().after(60_000).executed(1)  # not run since 2025
    server = RedisServer().start() if store == "redis" else None
    state = server.url if server is not None else None
    try:
        bridge = _bridge(tmp_path, state=state)
        bridge.pipeline.ingest(stopped.events)
        _stopped(bridge)
        counted = []
        for silences in ({"tokenRefresher": 900}, {"tokenRefresher": 900}, {}):
            restarted = _bridge(tmp_path, state=state, silent_continuous=silences)
            restarted.pipeline.restore_gauges()  # as `start` does
            counted.append(restarted.index_by_these_settings())
            _count_overdue(restarted)
            counted.append(_exposed_by(restarted, "job_instance_overdue", "job_name", "job_type"))
            _stopped(restarted)
    finally:
        if server is not None:
            server.close()

    overdue = {("tokenRefresher", "continuous"): 1.0}
    assert counted == [1, overdue, 0, overdue, 1, {}]  # indexed again once for each change of the settings


def test_a_failing_metric_export_is_told_with_why(tmp_path, otlp_http, monkeypatch, caplog):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otlp_http.credential = "not-the-bridges"
    settings = Settings(
        state=str(tmp_path / "s.db"), dead_letter=tmp_path / "d.jsonl", span_dead_letter=tmp_path / "s.jsonl"
    )
    bridge = Bridge(settings, trace_sender=NoSender())
    bridge.metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="traces")  # something to send
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        assert not bridge.export_metrics()
    (told,) = [r.getMessage() for r in caplog.records if "metric export" in r.getMessage()]
    assert f"metric export to {otlp_http.endpoint}/v1/metrics is failing (HTTP 401" in told
    assert "not its data points" in told


def test_metrics_are_pushed_again_once_the_wait_a_throttling_backend_asked_for_is_over(
    tmp_path, otlp_http, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500")  # shorter than the wait: the exporter gives up at once
    got = otlp_http.received
    got.throttles_metrics, got.asks, got.throttled_until = True, 2.0, time.monotonic() + 1.9
    settings = Settings(
        state=str(tmp_path / "s.db"),
        dead_letter=tmp_path / "d.jsonl",
        span_dead_letter=tmp_path / "s.jsonl",
        metric_export_interval_ms=100,
    )
    bridge = Bridge(settings, trace_sender=NoSender())
    bridge.metrics.bridge(c.M_BRIDGE_EXPORT_FAILURES, 1, signal="traces")  # something to send
    pushing = threading.Thread(target=bridge._metric_loop, daemon=True)
    pushing.start()
    try:
        got.wait_for(lambda: bool(got.metrics), timeout=10)
    finally:
        bridge._stop.set()
        pushing.join(5)
        bridge.store.close()
    assert len(got.throttled_at) == 1  # not once every 100 ms until the wait was over


def test_a_damaged_page_nothing_has_needed_yet_is_found_after_the_start_and_told(tmp_path, caplog):
    # A page of run facts: the start reads the states, not their facts, so nothing met it until an event of
    # one of those runs came (hours later, maybe), and only `check` found it before.
    from faults import broken_page, open_runs

    open_runs(tmp_path / "s.db", 300)
    broken_page(tmp_path / "s.db", "facts")
    bridge = _bridge(tmp_path)
    bridge.start(follow=False)
    try:
        for _ in range(200):
            if bridge.pages_damage is not None:
                break
            time.sleep(0.05)
        (told,) = bridge.at_risk()
    finally:
        bridge.stop()
    assert "is damaged" in told and "found reading every page after the start" in told and "salvage-state" in told
    assert "found reading every page after the start" in caplog.text


def _opened(tmp_path, while_salvaging=contextlib.nullcontext, **values) -> Bridge:
    """`Bridge.opened`, as `serve` and a tracker open the state, on the test's files."""
    settings = Settings(
        state=str(tmp_path / "s.db"),
        dead_letter=tmp_path / "dead.jsonl",
        span_dead_letter=tmp_path / "spans.jsonl",
        **values,
    )
    return Bridge.opened(settings, while_salvaging, trace_sender=NoSender(), metric_sender=NoSender())


def _open_runs_listed(bridge: Bridge) -> int:
    return bridge.pipeline.list_runs(RunQuery(), limit=0)[1]


def test_a_state_file_found_damaged_at_start_is_salvaged_before_the_bridge_starts_the_damaged_one_kept(
    tmp_path, caplog
):
    # The start refused, naming `salvage-state`: a sidecar restarted by its orchestrator never came back
    # by itself, and its producers dropped every batch after three re-sends meanwhile.
    from faults import broken_page, open_runs

    open_runs(tmp_path / "s.db", 300)
    broken_page(tmp_path / "s.db", "state")
    caplog.set_level(logging.WARNING)

    began = time.time()
    meanwhile: list[str] = []

    @contextlib.contextmanager
    def answering() -> Iterator[None]:  # `serve`'s port answers meanwhile: the salvage is under way in it
        meanwhile.append("entered" + ("" if list(tmp_path.glob("s.db.damaged-*")) else ", not yet salvaged"))
        yield
        meanwhile.append("left" + (", salvaged" if list(tmp_path.glob("s.db.damaged-*")) else ""))

    bridge = _opened(tmp_path, answering)
    try:
        assert meanwhile == ["entered, not yet salvaged", "left, salvaged"]
        assert 290 <= _open_runs_listed(bridge) < 300  # those on the broken page lost, the rest kept
        # What BridgeStateSalvaged alerts on for an hour.
        assert began <= _exposed(bridge, "otel_bridge_state_salvaged_timestamp_seconds") <= time.time()
    finally:
        bridge.stop()
    (kept,) = tmp_path.glob("s.db.damaged-*[0-9Z]")
    assert kept.stat().st_size > 0  # the damaged file, whole, beside the fresh one
    assert "s.db is damaged" in caplog.text and "salvaging it before the bridge starts" in caplog.text
    assert "broken pages met in: state" in caplog.text and str(kept) in caplog.text


def test_after_a_salvage_by_hand_the_next_start_takes_again_the_events_the_damage_rejected(tmp_path, monkeypatch):
    # They were left to a replay by hand, the bridge stopped a second time.
    from faults import broken_page, open_runs

    from otel_bridge.receivers.dead_letter import DeadLetters
    from otel_bridge.state.salvage import salvage
    from otel_bridge.state.store import DAMAGE_REJECTED

    open_runs(tmp_path / "s.db", 300)
    broken_page(tmp_path / "s.db", "state")
    letters = DeadLetters(tmp_path / "dead.jsonl", 10**7, 1)
    rejected = WorkflowRun().started().events
    letters.keep("http", [({"index": 0, "error": f"{DAMAGE_REJECTED} (malformed)"}, event) for event in rejected])
    letters.close()
    assert salvage(tmp_path / "s.db") is not None
    note = tmp_path / "s.db.take-again"
    assert note.exists()

    # A start whose taking again fails serves all the same, and leaves the note for the next one.
    def failing(self: Bridge) -> None:
        raise OSError("the dead-letter file cannot be read")

    monkeypatch.setattr(Bridge, "take_again_what_damage_rejected", failing)
    _opened(tmp_path).stop()
    assert note.exists()
    monkeypatch.undo()
    bridge = _opened(tmp_path)
    try:
        listed = bridge.pipeline.list_runs(RunQuery(), limit=1000)[0]
        assert rejected[0]["workflowId"] in {run.run_id for run in listed}
    finally:
        bridge.stop()
    assert not note.exists()


def test_a_start_finishes_a_salvage_cut_short_as_its_fresh_file_took_the_name_whatever_the_settings(
    tmp_path, monkeypatch, caplog
):
    # The damaged file was left in place without its log: started on, what the log held was lost, and the
    # damage was met again later or never (a page the start does not read).
    from faults import broken_page, open_runs

    from otel_bridge.state.salvage import salvage

    open_runs(tmp_path / "s.db", 300)
    lost = broken_page(tmp_path / "s.db", "state")

    def killed(self: Path, target: object) -> Path:
        raise KeyboardInterrupt  # the process killed as the fresh file was to take the name

    monkeypatch.setattr(Path, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        salvage(tmp_path / "s.db")
    monkeypatch.undo()
    caplog.set_level(logging.WARNING)

    bridge = _opened(tmp_path, salvage_at_start=False)
    try:
        assert _open_runs_listed(bridge) == 300 - lost
    finally:
        bridge.stop()
    assert "was cut short as its fresh file took the name" in caplog.text
    assert "the fresh file of a salvage cut short as it took the state's name is put in place" in caplog.text
    assert not (tmp_path / "s.db.swapping").exists() and len(list(tmp_path.glob("s.db.damaged-*[0-9Z]"))) == 1


def test_the_fresh_file_a_salvage_killed_while_it_copied_left_is_deleted_by_the_next_start(tmp_path, caplog):
    # As large as what it had copied, it stayed until the next salvage, which might never come.
    from faults import open_runs

    open_runs(tmp_path / "s.db", 10)
    (tmp_path / "s.db.salvaged").write_bytes(b"\0" * 2**20)  # the copy, cut short
    (tmp_path / "s.db.salvaged-wal").write_bytes(b"\0" * 2**10)
    caplog.set_level(logging.WARNING)

    _opened(tmp_path).stop()

    assert not [p.name for p in tmp_path.iterdir() if ".salvaged" in p.name]
    assert (
        "a salvage of" in caplog.text and "killed while it copied left its fresh file (1.0 MiB): deleted" in caplog.text
    )


def test_without_salvage_at_start_a_state_file_found_damaged_refuses_the_start_and_is_left_as_it_is(tmp_path):
    from faults import broken_page, open_runs

    open_runs(tmp_path / "s.db", 300)
    broken_page(tmp_path / "s.db", "state")
    before = (tmp_path / "s.db").read_bytes()

    with pytest.raises(StoreDamaged, match=r"s\.db is damaged .*salvage-state"):
        _opened(tmp_path, salvage_at_start=False)

    assert (tmp_path / "s.db").read_bytes() == before and not list(tmp_path.glob("s.db.damaged-*"))


def test_a_damage_met_while_running_is_noted_beside_the_file_and_salvaged_at_the_next_start(tmp_path):
    # A page of run facts: the start reads the states, not their facts, so a restart ran on around the
    # damage, and the salvage waited for someone to stop the bridge and run `salvage-state`.
    from faults import broken_page, open_runs

    open_runs(tmp_path / "s.db", 300)
    broken_page(tmp_path / "s.db", "facts")
    bridge = _opened(tmp_path).start(follow=False)
    try:
        for _ in range(200):
            if bridge.pages_damage is not None:
                break
            time.sleep(0.05)
        assert bridge.pages_damage is not None
    finally:
        bridge.stop()
    note = tmp_path / "s.db.needs-salvage"
    assert "s.db is damaged" in note.read_text()
    assert not list(tmp_path.glob("s.db.damaged-*"))  # the start that met nothing salvaged nothing

    again = _opened(tmp_path).start(follow=False)
    try:
        found = again.store.damage_found()  # type: ignore[attr-defined]
    finally:
        again.stop()
    assert found is None and not note.exists() and len(list(tmp_path.glob("s.db.damaged-*[0-9Z]"))) == 1


def test_a_note_of_damage_sqlite_no_longer_finds_is_taken_away_and_the_file_used_as_it_is(tmp_path, caplog):
    from faults import open_runs

    open_runs(tmp_path / "s.db", 20)
    (tmp_path / "s.db.needs-salvage").write_text("the state file s.db is damaged (…) (noted 2026-12-05T00:00:00Z)\n")
    caplog.set_level(logging.WARNING)

    bridge = _opened(tmp_path)
    body, _ = bridge.exposition("")
    bridge.stop()

    assert not (tmp_path / "s.db.needs-salvage").exists() and not list(tmp_path.glob("s.db.damaged-*"))
    salvaged = [line for line in body.decode().splitlines() if line.startswith("otel_bridge_state_salvaged")]
    assert salvaged == []  # nothing was salvaged
    assert "SQLite finds nothing damaged in" in caplog.text


def test_a_salvage_at_start_without_room_for_the_fresh_file_refuses_the_start_saying_so(tmp_path):
    from faults import broken_page, open_runs, small_filesystem

    with small_filesystem(tmp_path / "disk", 16) as disk:
        open_runs(disk / "s.db", 300)
        broken_page(disk / "s.db", "state")
        size = (disk / "s.db").stat().st_size
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - size // 2))
        before = (disk / "s.db").read_bytes()

        with pytest.raises(
            StoreOpenError, match=r"s\.db is damaged \(.*\); its salvage at start could not be made.*make room"
        ):
            _opened(disk, disk_reserve_mib=0)

        assert (disk / "s.db").read_bytes() == before and not list(disk.glob("s.db.*salvaged*"))


def test_a_whole_state_file_is_checked_after_the_start_and_nothing_is_told(tmp_path):
    from faults import open_runs

    open_runs(tmp_path / "s.db", 50)
    bridge = _bridge(tmp_path)
    checked = threading.Event()
    real = bridge.store.damage_found

    def damage_found(within_seconds: float | None = None) -> str | None:
        try:
            return real(within_seconds)
        finally:
            checked.set()

    bridge.store.damage_found = damage_found  # type: ignore[method-assign]
    bridge.start(follow=False)
    try:
        assert checked.wait(10)
        time.sleep(0.1)
        assert bridge.pages_damage is None and bridge.at_risk() == []
    finally:
        bridge.stop()
