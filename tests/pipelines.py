"""Real pipelines for the properties that play events through them: each engine's decoder as the bridge
makes it, and the store on SQLite or, under a prefix of its own, on a Redis several tests share."""

from typing import Any

from otel_bridge.config import Settings
from otel_bridge.pipeline import Decoder, Pipeline
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.state.redis_store import RedisStore
from otel_bridge.state.sqlite_store import SqliteStore

ENGINES = ("durable-effect", "event-sourced", "phase10")


def decoder_for(engine: str, pipeline: Pipeline, timeline_at_end: bool = False) -> Decoder | None:
    """`engine`'s decoder with the pipeline's options (None: the pipeline's own, durable-effect's);
    `timeline_at_end`: a Phase-10 run told ended awaits its timeline, as the WebSocket's do."""
    options = pipeline.decode_options
    if engine == "event-sourced":
        return EventSourcedDecoder(EventSourcedOptions(decode=options))
    if engine == "phase10":
        return Phase10Decoder(Phase10Options(decode=options, timeline_at_end=timeline_at_end))
    return None


def store_for(settings: Settings, prefix: str) -> Any:
    """The store `settings.state` names: a SQLite file, or a Redis whose keys this one keeps under `prefix`."""
    if settings.shared_state:
        return RedisStore(settings.state, settings.dedup_ttl_seconds, prefix)
    return SqliteStore(settings.state)
