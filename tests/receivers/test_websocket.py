"""Following the Phase-10 WebSocket (a real stand-in on uvicorn): what a reconnect asks the engine for."""

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from phase10_server import DROP, Phase10Server
from websockets.sync.client import ClientConnection

from otel_bridge.config import Settings
from otel_bridge.consumer import IngestReport, Unavailable
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.lifecycle import KIND
from otel_bridge.pipeline import Pipeline
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers import websocket
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.replay import replay
from otel_bridge.receivers.websocket import WebSocketReceiver
from otel_bridge.sources import phase10
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore


@pytest.fixture
def engine() -> Iterator[Phase10Server]:
    server = Phase10Server().start()
    yield server
    server.close()


def _wait(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class _Following:
    """A WebSocketReceiver storing into a real pipeline, run in a thread until the block ends."""

    def __init__(
        self, tmp_path, engine: Phase10Server, at_end: bool = False, store: Any = None, holder: str | None = None
    ) -> None:
        """`at_end`: each execution's timeline fetched as it is told ended (`ws_timeline_at_end`). `store`: a state
        shared with other replicas (a RedisStore), the stream followed by the `holder` of its lease (1 s)."""
        settings = Settings(state=str(tmp_path / "state.db"), dead_letter=str(tmp_path / "dead.jsonl"))
        self.pipeline = Pipeline(store or SqliteStore(settings.state), MetricsHub(), settings)
        options = Phase10Options(
            service="agents", env="prod", decode=self.pipeline.decode_options, timeline_at_end=at_end
        )
        decoder = Phase10Decoder(options)
        self._dead_letters = DeadLetters(
            settings.dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups
        )
        store = self.pipeline.store
        self.receiver = WebSocketReceiver(
            engine.ws_url,
            self.pipeline.consumer(decoder),
            self._dead_letters,
            progress=phase10.progress,
            api_url=engine.api_url,
            named=phase10.workflow_named,
            workspace_id="ws-1",
            workspace_of=phase10.workspace_of,
            recall=lambda name: store.bookmark(f"websocket {name}"),
            note=lambda name, value: store.set_bookmark(f"websocket {name}", value),
            timeline_at_end_seconds=15.0 if at_end else None,
            no_timeline=lambda execution: self.pipeline.summary_not_coming(decoder.state_key(execution)),
            # As the bridge reads them at start (runtime): the runs its store holds open.
            open_at_start=lambda: [
                (run.run_id, phase10.workspace_in(run))
                for run in self.pipeline.open_runs_of(phase10.ENGINE, "prod", "agents")
            ],
            lease=(lambda seconds: store.lease("websocket", holder, seconds)) if holder else None,
            lease_seconds=1.0,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.receiver.run, args=(self._stop,), daemon=True)

    def __enter__(self) -> "_Following":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._dead_letters.close()

    def listed(self) -> set[str]:
        """The open runs."""
        return {run.run_id for run in self.pipeline.list_runs(RunQuery())[0]}


def test_an_execution_the_engine_does_not_know_is_asked_for_once_not_at_every_reconnect(tmp_path, engine):
    deleted = Phase10Run("purged").started(1)  # the engine forgets it: its timeline is a 404
    ended = Phase10Run("finished").started(1)
    engine.timelines[ended.execution_id] = ended.after(10).completed().timeline()
    last = Phase10Run("after").started(1)
    engine.scripts.put([*deleted.events, *ended.events[:1], DROP])
    engine.scripts.put([DROP])  # reconnect: both asked for once
    engine.scripts.put(list(last.events[:1]))  # and again: nobody left to ask for

    with _Following(tmp_path, engine) as following:
        _wait(lambda: last.execution_id in following.listed(), "the third connection's message was not stored")
        _wait(lambda: ended.execution_id not in following.listed(), "the ended run was not caught up")
    asked = [execution for execution, _workspace in engine.timeline_requests]
    assert engine.connections == 3
    assert sorted(asked) == sorted([deleted.execution_id, ended.execution_id])
    assert following.receiver.open_executions == {last.execution_id: None}
    # The forgotten run is still the bridge's to tell: open, listed, ended at max_open_seconds.
    assert following.listed() == {deleted.execution_id, last.execution_id}


def _stored(following: _Following, execution: str) -> bool:
    return bool(following.pipeline.runs_named(execution))


def _retries(following: _Following, execution: str) -> int:
    return sum(f.kind is KIND.RETRY_SCHEDULED for run in following.pipeline.runs_named(execution) for f in run.facts)


def test_an_execution_told_ended_has_its_timeline_fetched_for_the_retries_no_message_tells(tmp_path, engine):
    run = Phase10Run("report", workflow_id="wf-r").started(1).step_started("s1", "fetch").after(10)
    run.step_completed("s1").after(1).completed()
    engine.timelines = {run.execution_id: run.timeline(retries={"s1": 2})}
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine, at_end=True) as following:
        _wait(lambda: _retries(following, run.execution_id) == 2, "the timeline was not fetched at the end")
    assert [execution for execution, _workspace in engine.timeline_requests] == [run.execution_id]  # once


def test_an_execution_told_ended_whose_timeline_the_engine_has_not_is_sent_at_once_not_after_the_grace(
    tmp_path, engine
):
    # A 404 (deleted at once, or another workspace's that no message named): nothing more will come, and
    # the run no longer waits the 15 s of the grace for it.
    run = Phase10Run("report", workflow_id="wf-r").started(1).step_started("s1", "fetch").after(10)
    run.step_completed("s1").after(1).completed()
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine, at_end=True) as following:
        _wait(lambda: engine.timeline_requests, "the timeline was not asked for at the end")
        _wait(lambda: not following.pipeline.runs_named(run.execution_id)[0].awaits_summary, "the run still waits")
        following.pipeline.settle_due(horizon=time.time() + 1)  # its settle window, not the grace
    (sent,) = following.pipeline.runs_named(run.execution_id)
    assert sent.closed and following.pipeline.store.outbox_depth() == 2  # the step and the root
    assert len(engine.timeline_requests) == 1


def test_a_timeline_not_yet_written_as_ended_is_asked_again_until_it_is(tmp_path, engine):
    # The engine tells the end before its row says so: a timeline still running is asked for again.
    run = Phase10Run("report", workflow_id="wf-r").started(1).step_started("s1", "fetch").after(10)
    run.step_completed("s1").after(1).completed()
    ended = run.timeline(retries={"s1": 1})
    engine.timelines = _WrittenLate({run.execution_id: ended}, ended | {"status": "running", "completed_at": None})
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine, at_end=True) as following:
        _wait(lambda: _retries(following, run.execution_id) == 1, "the timeline was not stored")
        _wait(lambda: following.pipeline.runs_named(run.execution_id)[0].summarised, "the ended one was not asked for")
    assert len(engine.timeline_requests) == 2


def test_a_bridge_restarted_before_an_ended_executions_timeline_came_fetches_it_at_its_first_connection(
    tmp_path, engine
):
    # Which ended executions await their timeline is not only the follower's memory: their runs, ended and
    # held for it, are not closed, and a restarted bridge catches up on the runs its store holds open.
    run = Phase10Run("report", workflow_id="wf-r").started(1).step_started("s1", "fetch").after(10)
    run.step_completed("s1").after(1).completed()
    engine.timelines = {run.execution_id: run.timeline(retries={"s1": 2})}
    engine.timeline_failures[run.execution_id] = 1_000  # the API restarting as the bridge stops
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine, at_end=True) as before:
        _wait(lambda: engine.timeline_requests, "the timeline was not asked for at the end")
        (held,) = before.pipeline.runs_named(run.execution_id)
        assert held.ended and held.awaits_summary and not held.summarised
    before.pipeline.store.close()
    engine.timeline_failures.clear()
    engine.scripts.put([])
    with _Following(tmp_path, engine, at_end=True) as after:
        _wait(lambda: _retries(after, run.execution_id) == 2, "the restarted bridge did not fetch the timeline")
        assert after.pipeline.runs_named(run.execution_id)[0].summarised


class _WrittenLate(dict):
    """Timelines whose first reading still says running, as a row not yet written ended does."""

    def __init__(self, timelines: dict[str, dict], first: dict) -> None:
        super().__init__(timelines)
        self._first: dict | None = first

    def __getitem__(self, key: str) -> dict:
        first, self._first = self._first, None
        return first if first is not None else super().__getitem__(key)


def test_without_timelines_at_the_end_none_is_asked_for_an_execution_seen_whole(tmp_path, engine):
    run = Phase10Run("report", workflow_id="wf-r").started(1).after(10).completed()
    engine.timelines = {run.execution_id: run.timeline()}
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine) as following:
        _wait(lambda: _stored(following, run.execution_id), "the run was not stored")
        time.sleep(0.3)
    assert engine.timeline_requests == []


def test_an_execution_begun_and_ended_while_the_stream_was_not_followed_is_fetched_at_the_reconnect(tmp_path, engine):
    # No message tells it, and no open run's timeline: the workflow's executions begun since the disconnection
    # are listed, and those never told of fetched.
    now = datetime.now(UTC)
    told = Phase10Run("report", workflow_id="wf-r", workspace_id="ws-2", start=now).started(1)
    missed = Phase10Run("report", workflow_id="wf-r", workspace_id="ws-2", start=now).started(1)
    missed.step_started("s1", "fetch").after(10).step_completed("s1").completed()
    history = Phase10Run("report", workflow_id="wf-r", workspace_id="ws-2", start=now - timedelta(days=2))
    history.started(1).after(10).completed()
    engine.runs = [told, missed, history]
    engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
    engine.timeline_workspaces = {run.execution_id: "ws-2" for run in engine.runs}
    engine.scripts.put([*told.events, DROP])
    engine.scripts.put([])  # connected from then on
    with _Following(tmp_path, engine) as following:
        _wait(lambda: _stored(following, missed.execution_id), "the execution begun meanwhile was not fetched")
        (run,) = following.pipeline.runs_named(missed.execution_id)
        assert run.run.name == "report"  # named as the workflow's runs told as they started
    assert engine.listing_requests == [("wf-r", "ws-2")]  # once, at the reconnect, in the workflow's workspace
    asked = [execution for execution, _workspace in engine.timeline_requests]
    assert missed.execution_id in asked and history.execution_id not in asked
    assert not _stored(following, history.execution_id)  # begun long before: history, `import-timeline`'s


def test_a_listing_that_fails_after_a_reconnect_is_asked_again(tmp_path, engine):
    now = datetime.now(UTC)
    told = Phase10Run("report", workflow_id="wf-r", start=now).started(1)
    missed = Phase10Run("report", workflow_id="wf-r", start=now).started(1).after(10).completed()
    engine.runs = [told, missed]
    engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
    engine.listing_fails_from = 0  # the API answers 500
    engine.scripts.put([*told.events, DROP])
    engine.scripts.put([])
    with _Following(tmp_path, engine) as following:
        _wait(lambda: len(engine.listing_requests) >= 2, "the listing was not asked again")
        engine.listing_fails_from = None
        _wait(lambda: _stored(following, missed.execution_id), "the execution begun meanwhile was not fetched")


def test_a_restarted_bridge_fetches_what_began_and_ended_while_it_was_down(tmp_path, engine):
    # The bridge before it wrote down, with the state, until when it followed and the workflows told of.
    now = datetime.now(UTC)
    told = Phase10Run("report", workflow_id="wf-r", start=now).started(1).after(10).completed()
    engine.scripts.put(list(told.events))
    with _Following(tmp_path, engine) as before:
        _wait(lambda: _stored(before, told.execution_id), "the first bridge did not store the run")
    before.pipeline.store.close()  # stopped: the next bridge opens the file
    missed = Phase10Run("report", workflow_id="wf-r", start=datetime.now(UTC)).started(1).after(10).completed()
    history = Phase10Run("report", workflow_id="wf-r", start=now - timedelta(days=2)).started(1).after(10).completed()
    engine.runs = [told, missed, history]
    engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
    engine.scripts.put([])
    with _Following(tmp_path, engine) as after:
        _wait(lambda: _stored(after, missed.execution_id), "the run begun while the bridge was down was not fetched")
    assert engine.listing_requests == [("wf-r", "ws-1")]
    assert history.execution_id not in [execution for execution, _ in engine.timeline_requests]


def test_of_replicas_sharing_a_redis_state_one_follows_the_stream_and_another_takes_over_when_it_stops(
    tmp_path, engine, redis_url
):
    """Each replica following the stream took every message in and asked for every timeline: the work, and the
    duplicates counted, once a replica."""
    prefix = f"otel-bridge-test:{uuid.uuid4().hex[:8]}:"
    now = datetime.now(UTC)
    going_on = Phase10Run("report", workflow_id="wf-r", start=now).started(1)
    engine.scripts.put(list(going_on.events))  # the first replica's connection
    engine.scripts.put([])  # the second's, once it takes over
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(_Following(tmp_path / name, engine, store=RedisStore(redis_url, 3600, prefix), holder=name))
    first, second = replicas
    first.__enter__()
    _wait(lambda: _stored(first, going_on.execution_id), "the first replica did not store the run")
    second.__enter__()
    time.sleep(1)
    assert (engine.connections, second.receiver.reading) == (1, False), "the other stands by"
    first.__exit__(None, None, None)  # stopped: its lease lapses within a second
    ended = going_on.after(20).completed()
    missed = Phase10Run("report", workflow_id="wf-r", start=datetime.now(UTC)).started(1).after(10).completed()
    engine.runs = [ended, missed]
    engine.timelines = {run.execution_id: run.timeline() for run in engine.runs}
    try:
        _wait(lambda: engine.connections == 2, "the other replica did not take over")
        _wait(lambda: going_on.execution_id not in second.listed(), "the run the first left open was not caught up")
        _wait(lambda: _stored(second, missed.execution_id), "the run begun while none followed was not fetched")
    finally:
        second.__exit__(None, None, None)
    assert second.receiver.reading is True
    assert engine.listing_requests == [("wf-r", "ws-1")], "from where the first left off, written in the state"


def test_the_first_connection_of_a_bridge_never_started_before_lists_nothing(tmp_path, engine):
    run = Phase10Run("report", workflow_id="wf-r", start=datetime.now(UTC)).started(1)
    engine.runs = [run]
    engine.scripts.put(list(run.events))
    with _Following(tmp_path, engine) as following:
        _wait(lambda: run.execution_id in following.listed(), "the message was not stored")
    assert engine.listing_requests == []


def test_a_hung_timeline_api_does_not_hold_up_the_live_messages(tmp_path, engine):
    interrupted = Phase10Run("interrupted").started(1)
    engine.timelines[interrupted.execution_id] = interrupted.after(10).completed().timeline()
    engine.timeline_gates[interrupted.execution_id] = gate = threading.Event()
    live = Phase10Run("live").started(1)
    engine.scripts.put([*interrupted.events[:1], DROP])
    engine.scripts.put(list(live.events[:1]))  # told while the API has not answered
    with _Following(tmp_path, engine) as following:
        _wait(lambda: live.execution_id in following.listed(), "the live message waited for the API")
        assert not gate.is_set() and interrupted.execution_id in following.listed()
        gate.set()  # the API answers at last
        _wait(lambda: interrupted.execution_id not in following.listed(), "the timeline was not caught up")


def test_a_timeline_the_api_could_not_answer_is_asked_again_without_a_reconnect(tmp_path, engine):
    run = Phase10Run("restarting-api").started(1)
    engine.timelines[run.execution_id] = run.after(10).completed().timeline()
    engine.timeline_failures[run.execution_id] = 2  # 503, 503, then the timeline
    engine.scripts.put([*run.events[:1], DROP])
    engine.scripts.put([])  # connected from then on
    with _Following(tmp_path, engine) as following:
        _wait(lambda: engine.connections == 2, "no reconnect")
        _wait(lambda: run.execution_id not in following.listed(), "the run's end was not caught up", timeout=30)
    assert engine.connections == 2
    assert [execution for execution, _ in engine.timeline_requests] == [run.execution_id] * 3


def test_catching_up_behind_a_rate_limiter_asks_again_when_it_is_let_not_sooner(tmp_path, engine):
    # A 429 was a failure like any: the next execution was asked for at once (refused too), and every
    # one again after the backoff, most of them refused again.
    runs = [Phase10Run(f"limited-{n}").started(1) for n in range(6)]
    for run in runs:
        engine.timelines[run.execution_id] = run.after(10).completed().timeline()
    engine.min_interval, engine.retry_after = 0.3, "0.3"
    engine.scripts.put([*(run.events[0] for run in runs), DROP])
    engine.scripts.put([])  # reconnected: the six open executions caught up
    with _Following(tmp_path, engine) as following:
        _wait(lambda: engine.connections == 2, "no reconnect")
        for run in runs:
            _wait(lambda run=run: run.execution_id not in following.listed(), "an end was not caught up", timeout=30)
    assert sorted(e for e, _ in engine.timeline_requests) == sorted(run.execution_id for run in runs)  # once each
    assert 0 < len(engine.throttled) <= len(engine.timeline_requests)  # none refused twice in a row


def test_an_api_that_stays_unavailable_is_waited_out_once_not_at_every_pass(tmp_path, engine):
    # A load balancer answers 503 while the API behind it is down. Each catch-up pass made a client of its
    # own, so each waited out the first timeline's five tries again before asking the rest once.
    first, second = (Phase10Run(f"down-{n}").started(1) for n in range(2))
    engine.timeline_failures = {first.execution_id: 1_000, second.execution_id: 1_000}
    engine.retry_after = "0.05"
    engine.scripts.put([first.events[0], second.events[0], DROP])
    engine.scripts.put([])  # reconnected: both caught up on, and asked again after each backoff
    with _Following(tmp_path, engine):
        _wait(lambda: len(engine.timeline_requests) >= 10, "the catch-up was not asked again", timeout=30)
    asked = [execution for execution, _ in engine.timeline_requests][:10]
    a, b = first.execution_id, second.execution_id
    assert asked == [a] * 5 + [b] + [a, b] * 2  # then once each a pass, until one is answered


def test_the_receiver_tells_since_when_the_engine_is_not_followed(tmp_path, engine):
    engine.scripts.put([])  # connected, quiet
    following = _Following(tmp_path, engine)
    receiver = following.receiver
    assert receiver.disconnected_since is not None  # not yet connected
    with following:
        _wait(lambda: receiver.disconnected_since is None, "never connected")
        engine.close()  # the engine goes away and does not come back
        _wait(lambda: receiver.disconnected_since is not None, "the lost connection went unnoticed")


def test_a_message_over_a_mebibyte_is_taken_as_the_http_endpoint_takes_a_body(tmp_path, engine):
    # A run's input (or an agent's output) over websockets' default 1 MiB closed the connection, and the
    # message was gone: a start lost, its run never caught up.
    large = Phase10Run("large-input").started(1, document="x" * (3 * 2**20))
    engine.scripts.put(list(large.events[:1]))
    with _Following(tmp_path, engine) as following:
        _wait(lambda: large.execution_id in following.listed(), "the large message was not stored")
    assert engine.connections == 1


def test_a_spoilt_message_is_kept_with_why_and_the_follower_goes_on(tmp_path, engine):
    # A list where the event's name is, an object where its execution's id is: told of in the dead-letter
    # file, where reading such a message once stopped the follower for good (an unhashable name).
    run = Phase10Run("after").started(1)
    spoilt = dict(run.events[0], event_type=["workflow_started"], workflow_execution_id={"id": 1})
    engine.scripts.put([spoilt, *run.events])
    with _Following(tmp_path, engine) as following:
        _wait(lambda: run.execution_id in following.listed(), "the follower did not go on past the spoilt message")
    (letter,) = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert letter["event"] == spoilt
    assert (letter["field"], letter["error"]) == ("event_type", "event_type: must be text, not an array")


def test_a_bug_in_reading_which_execution_a_message_tells_of_does_not_end_following(tmp_path, engine):
    first, second = Phase10Run("first").started(1), Phase10Run("second").started(1)
    engine.scripts.put([*first.events, *second.events])
    following = _Following(tmp_path, engine)
    read = following.receiver._progress

    def progress(message):
        if message.get("workflow_execution_id") == first.execution_id:
            raise RuntimeError("a bug the follower has for this message")
        return read(message)

    following.receiver._progress = progress
    with following:
        _wait(lambda: following.listed() == {first.execution_id, second.execution_id}, "following ended")
    assert following.receiver.open_executions == {second.execution_id: None}  # the first's read failed


def test_a_message_received_as_the_bridge_stops_is_stored_before_the_follower_ends(tmp_path, engine, monkeypatch):
    run = Phase10Run("in-hand").started(1)
    engine.scripts.put(list(run.events[:1]))
    following = _Following(tmp_path, engine)
    received = ClientConnection.recv

    def stopped_on_receiving(connection: ClientConnection, *args, **kwargs):
        message = received(connection, *args, **kwargs)
        following._stop.set()  # the stop comes between reading the message and storing it
        return message

    monkeypatch.setattr(ClientConnection, "recv", stopped_on_receiving)
    with following:
        following._thread.join(10)
    assert following.listed() == {run.execution_id}


class _StoreDownAtStop:
    """The store refuses the message at the moment the bridge stops."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def ingest(self, events):
        self._stop.set()
        raise Unavailable("the store went away")


def test_a_message_the_store_cannot_take_at_stop_is_kept_and_can_be_offered_again(tmp_path, engine):
    run = Phase10Run("kept").started(1)
    engine.scripts.put(list(run.events[:1]))
    following = _Following(tmp_path, engine)
    consumer = following.receiver._consumer
    following.receiver._consumer = _StoreDownAtStop(following._stop)
    with following:
        following._thread.join(10)
    assert following.listed() == set()

    (letter,) = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert letter["receiver"] == "websocket" and "the bridge stopped while the store was unavailable" in letter["error"]
    assert letter["event"] == run.events[0]
    (tmp_path / "dead.jsonl").rename(tmp_path / "kept.jsonl")
    dead_letters = DeadLetters(tmp_path / "dead.jsonl", 10**6, 1)
    summary = replay(
        {"phase10": consumer}, str(tmp_path / "kept.jsonl"), dead_letters, False, source_format="dead-letter"
    )
    dead_letters.close()
    assert (summary.accepted, summary.rejected) == (1, [])
    assert following.listed() == {run.execution_id}


def test_a_cancelled_execution_that_goes_on_is_caught_up_after_a_reconnect_until_told_completed(tmp_path, engine):
    # The cancel does not stop the execution: what it told while the bridge was away is in its timeline.
    run = Phase10Run("triage").started(1).step_started("s1", "classify").after(10).cancelled()
    told = len(run.events)
    engine.timelines[run.execution_id] = run.after(500).step_completed("s1", 0.5).after(1).completed().timeline()
    later = Phase10Run("after").started(1)
    engine.scripts.put([*run.events[:told], DROP])
    engine.scripts.put(list(later.events[:1]))

    with _Following(tmp_path, engine) as following:
        _wait(lambda: later.execution_id in following.listed(), "the second connection's message was not stored")
        _wait(lambda: run.execution_id not in following.receiver.open_executions, "the run was not caught up")
    assert [execution for execution, _ in engine.timeline_requests] == [run.execution_id]
    (state,) = following.pipeline.runs_named(run.execution_id)
    assert {f.name for f in state.facts} >= {"workflow_cancelled", "step_completed", "workflow_completed"}
    assert not state.carrying_on  # told completed: its trace goes at the next settling


def test_an_execution_first_told_of_mid_way_is_fetched_once_for_the_beginning_the_stream_no_longer_tells(
    tmp_path, engine
):
    # It started while the bridge was away (before its first connection): the stream goes on from there.
    run = Phase10Run("triage").started(1).step_started("s1", "classify").after(10)
    missed = len(run.events)
    run.step_completed("s1", 0.01).after(1).step_started("s2", "answer").after(20)
    engine.timelines[run.execution_id] = run.timeline()
    later = Phase10Run("after").started(1)
    engine.scripts.put([*run.events[missed:], *later.events[:1]])

    with _Following(tmp_path, engine) as following:
        _wait(lambda: later.execution_id in following.listed(), "the live messages were not stored")
        _wait(lambda: engine.timeline_requests, "the execution told of mid-way was not fetched")
        _wait(lambda: not following.receiver._unstarted, "its timeline was not stored")
    assert [execution for execution, _ in engine.timeline_requests] == [run.execution_id]  # once, not per message
    (state,) = following.pipeline.runs_named(run.execution_id)
    assert {f.name for f in state.facts} >= {"workflow_started", "step_started", "step_completed"}
    # Still running: open, and caught up on again after a disconnection, as one seen starting.
    assert run.execution_id in following.receiver.open_executions


def test_an_execution_of_another_workspace_is_fetched_in_its_workspaces_context(tmp_path, engine):
    # The platform's stream tells every workspace's executions; the engine tells a timeline only in the
    # context of its execution's workspace, and answered the bridge's own workspace a 404.
    run = Phase10Run("triage", workspace_id="ws-2").started(1).step_started("s1", "classify").after(10)
    missed = len(run.events)
    run.step_completed("s1", 0.01).after(1).completed()
    engine.timelines[run.execution_id] = run.timeline()
    engine.timeline_workspaces[run.execution_id] = "ws-2"
    engine.scripts.put(run.events[missed:])

    with _Following(tmp_path, engine) as following:
        _wait(lambda: engine.timeline_requests, "the execution told of mid-way was not fetched")
        _wait(lambda: not following.receiver._unstarted, "its timeline was not stored")
    assert engine.timeline_requests == [(run.execution_id, "ws-2")]
    (state,) = following.pipeline.runs_named(run.execution_id)
    assert "workflow_started" in {f.name for f in state.facts}  # the beginning the stream no longer told


class _NothingExpected:
    def ingest(self, events: list[object]) -> IngestReport:
        raise AssertionError(f"nothing was to be delivered, got {len(events)} events")


def test_a_password_in_the_engines_url_never_reaches_the_log(tmp_path, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dead_letters = DeadLetters(tmp_path / "dead.jsonl", 1 << 20, 1)
    receiver = WebSocketReceiver(
        f"ws://bridge:s3cret@127.0.0.1:{port}/ws/stream",
        _NothingExpected(),
        dead_letters,
        progress=phase10.progress,
    )
    stop = threading.Event()
    follower = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.receivers.websocket"):
        follower.start()
        _wait(lambda: "reconnecting" in caplog.text, "the failed connection is told")
        stop.set()
        follower.join(10)
    dead_letters.close()
    assert "s3cret" not in caplog.text and f"ws://bridge:***@127.0.0.1:{port}/ws/stream" in caplog.text


def test_an_engine_away_is_told_once_then_once_a_minute_and_when_it_is_followed(tmp_path, caplog, monkeypatch):
    # An engine down for a night wrote a warning a reconnection (two a minute once backed off).
    monkeypatch.setattr(websocket, "_MAX_BACKOFF", 0.1)
    engine = Phase10Server()  # its port bound, nothing answering yet
    dead_letters = DeadLetters(tmp_path / "dead.jsonl", 1 << 20, 1)
    receiver = WebSocketReceiver(engine.ws_url, _NothingExpected(), dead_letters, progress=phase10.progress)
    stop = threading.Event()
    follower = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    try:
        with caplog.at_level(logging.INFO, logger="otel_bridge.receivers.websocket"):
            follower.start()
            _wait(lambda: receiver._unreachable.failures >= 4, "it tries again and again")
            assert caplog.text.count("reconnecting") == 1
            assert "told again once a minute while it lasts" in caplog.text
            engine.scripts.put([])  # nothing to tell: connected until the follower leaves
            engine.start()
            _wait(lambda: " tries" in caplog.text, "its coming is told")
            stop.set()
            follower.join(10)
        # Never followed before: it is followed, not followed "again".
        assert re.search(rf"following {engine.ws_url}, after \d+ s and \d+ tries", caplog.text)
    finally:
        stop.set()
        follower.join(10)
        engine.close()
        dead_letters.close()
