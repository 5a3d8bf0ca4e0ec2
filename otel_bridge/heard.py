"""What a running bridge has heard of each producer, read from its `/metrics` (`otel-bridge producers`).

The producers' series: how many events each sent since the bridge started, when it last sent one (kept in
the store across restarts: `state/hearings.py`), and, for those `expected_producers` names, how long each may
go without (the `ProducerNotHeard` alert's terms). Pure: the exposition's text in, the producers out; or, of a
bridge that does not answer, what its store kept.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from otel_bridge.state.hearings import Hearings

EVENTS = "otel_bridge_producer_events"
LAST_HEARD = "otel_bridge_producer_last_heard_timestamp_seconds"
EXPECTED_WITHIN = "otel_bridge_producer_expected_within_seconds"


@dataclass
class Producer:
    service: str
    env: str
    engines: set[str] = field(default_factory=set)
    # Since the bridge started; None when read from its store (the count is the running bridge's alone).
    events: float | None = 0.0
    # Unix time the bridge last took an event of it; for one it expects and has never heard from, since when it has.
    last_heard: float | None = None
    expected_within: float | None = None
    heard: bool = False  # an event of it taken, before the bridge's latest restart too

    def silent_for(self, now: float) -> float | None:
        return None if self.last_heard is None else max(now - self.last_heard, 0.0)

    def overdue(self, now: float) -> bool:
        """Expected, and silent longer than it may go without: what ProducerNotHeard fires for."""
        silent = self.silent_for(now)
        return self.expected_within is not None and silent is not None and silent > self.expected_within

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "service": self.service,
            "env": self.env,
            "engines": sorted(self.engines),
            "events": None if self.events is None else int(self.events),
            "heard": self.heard,
            "last_heard": self.last_heard,
            "silent_seconds": self.silent_for(now),
            "expected_within_seconds": self.expected_within,
            "overdue": self.overdue(now),
        }


def producers_in(exposition: str) -> list[Producer]:
    """The producers a bridge's `/metrics` text tells of, by service then env."""
    found: dict[tuple[str, str], Producer] = {}

    def of(labels: dict[str, str]) -> Producer:
        key = (labels.get("service_name", ""), labels.get("deployment_environment_name", ""))
        return found.setdefault(key, Producer(*key))

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            if sample.name == f"{EVENTS}_total":
                producer = of(labels)
                producer.events = (producer.events or 0.0) + value
                producer.engines.add(labels.get("workflow_platform_name", ""))
            elif sample.name == LAST_HEARD:
                producer = of(labels)
                producer.last_heard = value if producer.last_heard is None else max(producer.last_heard, value)
                # A series by engine is an event's (this start's, or one before, kept in the store); the one
                # without, since when the bridge expects a producer.
                if "workflow_platform_name" in labels:
                    producer.heard = True
                    producer.engines.add(labels["workflow_platform_name"])
            elif sample.name == EXPECTED_WITHIN:
                of(labels).expected_within = value
    return sorted(found.values(), key=lambda p: (p.service, p.env))


def producers_kept(kept: Hearings, expected: Mapping[str, float]) -> list[Producer]:
    """The producers a bridge's store tells of, for when the bridge does not answer (stopped, crash-looping):
    when each was last heard from, since when each expected one has been (`expected`: `serviceKey@env`, the
    seconds it may go without, as the settings name them), as the bridge's gauges tell them at its next start.
    How many events each sent is the running bridge's count alone: None."""
    found: dict[tuple[str, str], Producer] = {}

    def of(service: str, env: str) -> Producer:
        return found.setdefault((service, env), Producer(service, env, events=None))

    for (engine, env, service), at in kept.heard.items():
        producer = of(service, env)
        producer.heard = True
        producer.engines.add(engine)
        producer.last_heard = at if producer.last_heard is None else max(producer.last_heard, at)
    for named in {*kept.expected_since, *expected}:
        service, _, env = named.rpartition("@")
        producer = of(service, env)
        producer.expected_within = expected.get(named)
        # Silent since the later of its hearing and its expectation, as the gauges the alert reads tell it.
        if (since := kept.expected_since.get(named)) is not None:
            producer.last_heard = since if producer.last_heard is None else max(producer.last_heard, since)
    return sorted(found.values(), key=lambda p: (p.service, p.env))
