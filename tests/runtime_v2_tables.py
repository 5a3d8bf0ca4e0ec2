"""When the runs the tests write happen: the runtime's clock, from a fixed morning."""

from datetime import UTC, datetime, timedelta

from otel_bridge.producer.runtime_v2 import Runtime

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


__all__ = ["Runtime", "at"]
