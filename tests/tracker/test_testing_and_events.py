"""The no-op and in-memory trackers, as the seed's tests use them, and the typed event builders."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from otel_bridge.sources.durable_effect import EVENT_TYPES, decode
from otel_bridge.tracker import (
    AsyncInMemoryTracker,
    InMemoryTracker,
    JobEvents,
    NoopTracker,
    Tracker,
    WorkflowEvents,
    create_in_memory_tracker,
)


def _workflow(tracker: Tracker) -> None:
    run = WorkflowEvents("wf-1", "checkout")
    tracker.emit(run.started(input={"order": 1}))
    tracker.emit(run.step_started("charge", 1))
    tracker.emit(run.step_completed("charge", 1, duration_ms=12))
    tracker.emit(run.completed(["charge"]))


def test_the_in_memory_tracker_is_used_as_the_seeds_example_uses_its_handle():
    tracker, handle = create_in_memory_tracker()
    _workflow(tracker)  # run the workflow under the tracker
    assert handle.has_event("workflow.started")  # assert a specific event was emitted
    events = handle.events()  # inspect all events
    assert [e["type"] for e in events] == ["workflow.started", "step.started", "step.completed", "workflow.completed"]
    step_events = handle.events_by_type("step.completed")  # filter by type
    assert len(step_events) == 1 and step_events[0]["stepName"] == "charge"
    handle.clear()
    assert handle.events() == [] and not handle.has_event("workflow.started")


def test_every_tracker_keeps_the_contract():
    for tracker in (NoopTracker(), InMemoryTracker()):
        assert isinstance(tracker, Tracker)
        with tracker:
            _workflow(tracker)
            assert tracker.pending() == 0


def test_the_asyncio_in_memory_tracker():
    async def go() -> list[dict]:
        async with AsyncInMemoryTracker() as tracker:
            await tracker.emit(WorkflowEvents("wf", "x").started())
            return tracker.handle.events()

    assert [e["type"] for e in asyncio.run(go())] == ["workflow.started"]


def test_builders_make_all_24_events_the_bridge_accepts_with_uuidv7_ids():
    now = datetime.now(UTC)
    run, job = WorkflowEvents("wf-9", "checkout", execution_id="order-9"), JobEvents("inst-1", "continuous", "sync")
    events = [
        run.started(input={"a": 1}),
        run.queued(),
        run.resumed(),
        run.paused("sleep", resume_at=now + timedelta(minutes=5)),
        run.completed(["a"], duration_ms=10),
        run.failed("boom", stack="Error: boom"),
        run.cancelled("a"),
        run.step_started("a", 1),
        run.step_completed("a", 1, duration_ms=5),
        run.step_failed("a", 1, "bad"),
        run.retry_scheduled("a", 1, delay_ms=1000.5, next_attempt_at=now + timedelta(seconds=1)),
        run.retry_exhausted("a", 3),
        run.sleep_started(1000, resume_at=now + timedelta(seconds=1)),
        run.sleep_completed(1000),
        run.timeout_set("a", 500, deadline=now),
        run.timeout_exceeded("a", 500),
        job.started(),
        job.executed(1, duration_ms=20),
        job.failed(1, "Retry scheduled for attempt 2", will_retry=True),
        job.retry_exhausted(3),
        job.terminated(3, reason="manual"),
        job.debounce_started(flush_at=now),
        job.debounce_flushed(5, "timeout", 5000),
        job.task_scheduled(now + timedelta(minutes=1), "event"),
    ]
    assert sorted(e["type"] for e in events) == sorted(EVENT_TYPES)
    for event in events:
        assert uuid.UUID(event["eventId"]).version == 7
        decode({**event, "env": "production", "serviceKey": "shop"})  # the bridge takes each one


def test_a_builder_refuses_what_the_bridge_would_reject():
    with pytest.raises(ValueError, match="would be rejected"):
        WorkflowEvents("wf", "x").step_started("a", attempt=-1)
    with pytest.raises(ValueError, match="would be rejected"):
        JobEvents("i", "cron", "x").started()
