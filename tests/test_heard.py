"""What a running bridge has heard of each producer, read back from the exposition it serves."""

from builders import WorkflowRun

from otel_bridge.config import Settings
from otel_bridge.export.otlp import NoSender
from otel_bridge.heard import Producer, producers_in, producers_kept
from otel_bridge.runtime import Bridge
from otel_bridge.state.hearings import Hearings

STARTED = 1_800_000_000.0


def _exposition(tmp_path, events: list[dict], **values) -> str:
    clock = [STARTED]
    settings = Settings(
        state=str(tmp_path / "s.db"),
        dead_letter=tmp_path / "dead.jsonl",
        span_dead_letter=tmp_path / "spans.jsonl",
        **values,
    )
    bridge = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender(), clock=lambda: clock[0]).start(
        follow=False
    )
    try:
        clock[0] += 30
        bridge.pipeline.ingest(events)
        return bridge.exposition("")[0].decode()
    finally:
        bridge.stop()


def test_each_producer_heard_is_told_with_its_events_and_its_last_and_an_expected_one_with_its_limit(tmp_path):
    shop = WorkflowRun().started().step_started("a").events
    billing = WorkflowRun("invoice", service="billing").started().events
    expected = {"shop@production": 60, "ghost@production": 10}

    producers = producers_in(_exposition(tmp_path, shop + billing, expected_producers=expected))

    told = {(p.service, p.env): (p.heard, p.events, p.engines, p.last_heard, p.expected_within) for p in producers}
    assert told == {
        ("billing", "production"): (True, 1, {"durable-effect"}, STARTED + 30, None),
        ("ghost", "production"): (False, 0, set(), STARTED, 10),  # never: as silent as the bridge is old
        ("shop", "production"): (True, 2, {"durable-effect"}, STARTED + 30, 60),
    }
    by_name = {p.service: p for p in producers}
    # Past its limit, as ProducerNotHeard fires: strictly longer than it may go without.
    assert not by_name["ghost"].overdue(STARTED + 10) and by_name["ghost"].overdue(STARTED + 10.5)
    assert not by_name["shop"].overdue(STARTED + 90) and by_name["shop"].overdue(STARTED + 91)
    assert not by_name["billing"].overdue(STARTED + 10**6)  # not expected: never told overdue


def test_a_bridge_that_heard_nothing_and_expects_nothing_tells_no_producer(tmp_path):
    assert producers_in(_exposition(tmp_path, [])) == []


def test_a_producer_heard_before_the_bridge_restarted_is_told_heard_by_its_engine_with_no_event_since(tmp_path):
    _exposition(tmp_path, WorkflowRun().started().events)  # heard at STARTED + 30, then stopped

    (shop,) = producers_in(_exposition(tmp_path, []))

    assert (shop.heard, shop.events, shop.engines, shop.last_heard) == (True, 0, {"durable-effect"}, STARTED + 30)


def test_what_a_store_kept_is_told_as_the_bridges_gauges_would_tell_it_at_its_next_start():
    kept = Hearings(
        heard={
            ("durable-effect", "production", "shop"): STARTED + 5,
            ("event-sourced", "production", "shop"): STARTED + 9,
            ("durable-effect", "staging", "shop"): STARTED + 1,
            ("durable-effect", "production", "billing"): STARTED - 100,  # heard before it was expected again
        },
        expected_since={"ghost@production": STARTED, "billing@production": STARTED, "retired@production": STARTED},
    )
    expected = {"ghost@production": 10.0, "billing@production": 60.0, "shop@production": 600.0}

    told = {(p.service, p.env): p for p in producers_kept(kept, expected)}

    assert {key: (p.heard, p.events, p.engines, p.last_heard, p.expected_within) for key, p in told.items()} == {
        ("billing", "production"): (True, None, {"durable-effect"}, STARTED, 60.0),  # silent since expected
        ("ghost", "production"): (False, None, set(), STARTED, 10.0),
        # Expected by the bridge that wrote it, not by these settings: no window to be overdue against.
        ("retired", "production"): (False, None, set(), STARTED, None),
        ("shop", "production"): (True, None, {"durable-effect", "event-sourced"}, STARTED + 9, 600.0),
        ("shop", "staging"): (True, None, {"durable-effect"}, STARTED + 1, None),
    }
    assert told[("shop", "production")].overdue(STARTED + 610) and not told[("retired", "production")].overdue(10**10)
    # Named by the settings, never by the bridge that wrote the store: nothing to count its silence from.
    assert producers_kept(Hearings(), {"new@production": 5.0}) == [
        Producer("new", "production", events=None, expected_within=5.0)
    ]
