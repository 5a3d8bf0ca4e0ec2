"""Following the Phase-10 WebSocket (a real stand-in on uvicorn): what a reconnect asks the engine for."""

import threading
import time
from collections.abc import Iterator

import pytest
from phase10_server import DROP, Phase10Server

from otel_bridge.config import Settings
from otel_bridge.correlate.overview import RunQuery
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.websocket import WebSocketReceiver
from otel_bridge.sources import phase10
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
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


def test_an_execution_the_engine_does_not_know_is_asked_for_once_not_at_every_reconnect(tmp_path, engine):
    settings = Settings(state=str(tmp_path / "state.db"), dead_letter=str(tmp_path / "dead.jsonl"))
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    decoder = Phase10Decoder(Phase10Options(service="agents", env="prod", decode=pipeline.decode_options))
    dead_letters = DeadLetters(settings.dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups)
    receiver = WebSocketReceiver(
        engine.ws_url,
        pipeline.consumer(decoder),
        dead_letters,
        progress=phase10.progress,
        api_url=engine.api_url,
        workspace_id="ws-1",
    )
    deleted = Phase10Run("purged").started(1)  # the engine forgets it: its timeline is a 404
    ended = Phase10Run("finished").started(1)
    engine.timelines[ended.execution_id] = ended.after(10).completed().timeline()
    last = Phase10Run("after").started(1)
    engine.scripts.put([*deleted.events, *ended.events[:1], DROP])
    engine.scripts.put([DROP])  # reconnect: both asked for once
    engine.scripts.put(list(last.events[:1]))  # and again: nobody left to ask for

    def listed() -> set[str]:
        return {run.run_id for run in pipeline.list_runs(RunQuery())[0]}

    stop = threading.Event()
    following = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    following.start()
    try:
        _wait(lambda: last.execution_id in listed(), "the third connection's message was not stored")
    finally:
        stop.set()
        following.join(10)
        dead_letters.close()
    asked = [execution for execution, _workspace in engine.timeline_requests]
    assert engine.connections == 3
    assert sorted(asked) == sorted([deleted.execution_id, ended.execution_id])
    assert receiver.open_executions == {last.execution_id: None}
    # The forgotten run is still the bridge's to tell: open, listed, ended at max_open_seconds.
    assert listed() == {deleted.execution_id, last.execution_id}
