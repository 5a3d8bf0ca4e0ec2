"""When the bridge last heard from each producer, kept in the store (a bookmark) across its restarts.

`ProducerNotHeard` counts a producer's silence from its last event reaching a bridge, or, for one never heard
from, from when the bridge began to expect it. Held in memory alone, both began again at every restart: a bridge
restarted more often than a producer's window (a crash loop, a deploy a day against `=1d`) never told of a
producer that never sends, and gave one gone silent as much more grace as the bridge was young. Written now and
then (with the metrics' export, and at the stop), so a crash costs that much of the latest hearing, never an
alert. Pure: bytes in, bytes out; the bridge reads and writes them (`Bridge.keep_hearings`).
"""

import logging
from dataclasses import dataclass, field

import msgspec

log = logging.getLogger("otel_bridge")

BOOKMARK = "producers heard"

# A producer neither heard from nor expected in this long is forgotten: a retired one's series would be
# restored at every start for ever.
FORGOTTEN_AFTER_SECONDS = 7 * 24 * 3600.0

# Written again this often, changed or not: replicas' writes at the same moment are merged by the later one.
REWRITTEN_AFTER_SECONDS = 600.0

# (engine, env, service): a producer's series by engine, as its events are counted.
Producer = tuple[str, str, str]


class _Kept(msgspec.Struct, omit_defaults=True):
    heard: list[tuple[str, str, str, float]] = []
    expected_since: dict[str, float] = {}


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Kept).decode


@dataclass
class Hearings:
    # When each producer's latest event was taken (Unix time, the bridge's clock), by engine.
    heard: dict[Producer, float] = field(default_factory=dict)
    # Since when each producer of `expected_producers` (`serviceKey@env`) has been expected.
    expected_since: dict[str, float] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return _encode(
            _Kept(
                sorted((*producer, at) for producer, at in self.heard.items()),
                dict(sorted(self.expected_since.items())),
            )
        )

    def merged(self, other: "Hearings") -> "Hearings":
        """Both, the later hearing of each: replicas sharing a store each write what they heard."""
        heard = dict(self.heard)
        for producer, at in other.heard.items():
            heard[producer] = max(at, heard.get(producer, at))
        since = dict(self.expected_since)
        for expected, at in other.expected_since.items():
            since[expected] = min(at, since.get(expected, at))
        return Hearings(heard, since)

    def expecting(self, expected: dict[str, float], now: float) -> "Hearings":
        """As a bridge expecting `expected` from `now` keeps them: each expected producer since it first was (one
        named again after it was taken out, since now), and what was heard of the others within
        `FORGOTTEN_AFTER_SECONDS`. A bridge that expects none leaves the expectations as they are: a `replay` or
        an import on the state, run without the server's settings, took them all out."""
        forgotten = now - FORGOTTEN_AFTER_SECONDS
        heard = {
            (engine, env, service): at
            for (engine, env, service), at in self.heard.items()
            if at >= forgotten or f"{service}@{env}" in expected or f"{service}@{env}" in self.expected_since
        }
        if not expected:
            return Hearings(heard, dict(self.expected_since))
        since = {producer: min(self.expected_since.get(producer, now), now) for producer in expected}
        return Hearings(heard, since)

    def told_again(self, expected: dict[str, float], producers: int) -> dict[Producer, float]:
        """The hearings a starting bridge tells as its gauges: the expected producers', and the latest of the
        others up to `producers` producers in all (`max_producers`: past it the metrics count every new producer
        as one, `_other`). A week of short-lived producers (an environment per pull request) read back at every
        start took the places of the producers heard next."""
        places = max(producers - len(expected), 0)
        others: dict[tuple[str, str], float] = {}
        for (_engine, env, service), at in self.heard.items():
            if f"{service}@{env}" not in expected:
                others[(service, env)] = max(at, others.get((service, env), at))
        latest = set(sorted(others, key=lambda producer: others[producer], reverse=True)[:places])
        return {
            (engine, env, service): at
            for (engine, env, service), at in self.heard.items()
            if f"{service}@{env}" in expected or (service, env) in latest
        }


def decoded(blob: bytes | None) -> Hearings:
    """What a bookmark holds; one that does not read (written by hand, cut short) is said and read as empty: the
    producers' clocks start again, as they did before they were kept."""
    if blob is None:
        return Hearings()
    try:
        kept = _decode(blob)
    except msgspec.DecodeError as exc:
        log.warning("when the producers were last heard from could not be read (%s): counted from now", exc)
        return Hearings()
    return Hearings({(e, env, s): at for e, env, s, at in kept.heard}, dict(kept.expected_since))
