"""Nothing lost, clear errors: a batch whose events are some good and some bad, posted to `POST /v1/events`
(the app in-process, on a real pipeline and SQLite state), is answered 200 with every bad event listed by
its index, its id and why, each kept in the dead-letter file in order, and its good events stored as if
they had come alone — whichever they are and wherever they stand (hypothesis)."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from histories import job_histories, long_histories
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.json_text import loads
from otel_bridge.pipeline import Pipeline
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.http import create_app
from otel_bridge.sources.durable_effect import DecodeError, decode
from otel_bridge.state.sqlite_store import SqliteStore

_NOW = 1_000_000.0
# Any value JSON text can hold (no infinities: JSON has no word for them).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


class _Bridge:
    """The endpoint in front of a real pipeline on a SQLite state, with its dead-letter file."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        # Every rejection listed and kept, however many: the limits on both are test_hostile_input.py's.
        self.settings = Settings(
            state=str(directory / "s.db"),
            dead_letter=directory / "dead.jsonl",
            settle_seconds=1,
            max_rejections_listed=10**6,
            max_dead_letter_bytes_per_batch=10**9,
        )
        self.pipeline = Pipeline(SqliteStore(self.settings.state), MetricsHub(), self.settings, clock=lambda: _NOW)
        self.dead_letters = DeadLetters(self.settings.dead_letter, 10**9, 1)
        self.app = create_app(
            self.pipeline,
            self.settings,
            metrics=lambda _accept: (b"", "text/plain"),
            readiness=lambda: {"ready": True},
            dead_letters=self.dead_letters,
        )

    def post(self, body: bytes) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://b") as client:
                return await client.post("/v1/events", content=body)

        return asyncio.run(go())

    def kept(self) -> list[dict[str, Any]]:
        """The dead letters, a JSON line each (lines end at "\n" alone: U+2028 and the like are text in JSON)."""
        self.dead_letters.close()
        path = self.settings.dead_letter
        return [json.loads(line) for line in path.read_text().split("\n") if line] if path.exists() else []

    def sent(self) -> list[bytes]:
        self.pipeline.settle_due(horizon=_NOW + 10**7, told_all=True)
        return sorted(row.payload for row in self.pipeline.store.outbox_peek(10**6))

    def close(self) -> None:
        self.dead_letters.close()
        self.pipeline.store.close()


@st.composite
def _spoiled(draw: st.DrawFn, event: dict[str, Any]) -> Any:
    """The event as a producer's bug might send it: a field dropped or given a value of any JSON kind, an
    identity holding a control character, a time OTLP cannot carry, an unknown type, or no object at all."""
    how = draw(st.sampled_from(["drop", "retype", "control", "time", "type", "not an object"]))
    spoiled = dict(event)
    if how == "not an object":
        return draw(json_values.filter(lambda v: not isinstance(v, dict)))
    if how == "drop":
        del spoiled[draw(st.sampled_from(sorted(event)))]
    elif how == "retype":
        spoiled[draw(st.sampled_from(sorted(event)))] = draw(json_values)
    elif how == "control":
        field = "workflowId" if "workflowId" in event else "instanceId"
        spoiled[field] = event[field] + draw(st.sampled_from(["\x00", "\x1f", "\n", "\x7f"]))
    elif how == "time":
        spoiled["timestamp"] = draw(st.sampled_from(["1969-12-31T23:59:59Z", "2600-01-01T00:00:00Z", "yesterday"]))
    else:
        spoiled["type"] = draw(st.sampled_from(["workflow.exploded", "job.vanished", ""]))
    return spoiled


def _readable(event: Any) -> bool:
    try:
        decode(event)
    except DecodeError:
        return False
    return True


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_bad_events_are_listed_and_kept_and_the_good_ones_beside_them_stored_as_if_alone(tmp_path_factory, data):
    events = [
        e
        for history in data.draw(st.lists(long_histories() | job_histories(), min_size=1, max_size=3))
        for e in history
    ]
    spoil = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    batch = [data.draw(_spoiled(e)) if bad else e for e, bad in zip(events, spoil, strict=True)]
    # A spoiled event can still be a good one (a field it may leave out, dropped): the decoder says which.
    bad = [i for i, event in enumerate(batch) if not _readable(loads(json.dumps(event).encode()))]
    good = [event for i, event in enumerate(batch) if i not in bad]

    # As the bridge reads the body: numbers past 64 bits as floats, a lone surrogate as U+FFFD.
    body = json.dumps({"events": batch}).encode()
    read = loads(body)["events"]

    tmp = tmp_path_factory.mktemp("batch")
    mixed, alone = _Bridge(tmp / "mixed"), _Bridge(tmp / "alone")
    try:
        answer = mixed.post(body)
        assert answer.status_code == 200, answer.text
        told = answer.json()
        assert [r["index"] for r in told["rejected"]] == bad
        for rejection in told["rejected"]:
            event = read[rejection["index"]]
            named = event.get("eventId") if isinstance(event, dict) else None
            assert rejection["eventId"] == (named if isinstance(named, str) else None)
            assert rejection["error"]  # which field, and why
        assert told["accepted"] + told["duplicates"] == len(good)
        assert [(k["index"], k["event"]) for k in mixed.kept()] == [(i, read[i]) for i in bad]

        assert alone.post(json.dumps({"events": good}).encode()).json()["rejected"] == []
        assert mixed.sent() == alone.sent()
    finally:
        mixed.close()
        alone.close()
