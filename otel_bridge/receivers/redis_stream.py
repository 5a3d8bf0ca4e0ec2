"""Consumes the event-sourced runtime's Redis stream with a consumer group, beside the HTTP endpoint.

Entries are acknowledged (XACK) only once the batch is committed to the store, so a
bridge killed between reading and acknowledging leaves them pending: the same consumer
reads its own pending entries first on its next turn, and another consumer of the group
claims a dead one's (XAUTOCLAIM) once they have been idle for `claim_after_seconds`; a consumer
silent for an hour with nothing pending is forgotten (`redis_groups`).
Event ids make a redelivered entry a no-op. The runtime trims the stream
(`MAXLEN ~ 1000`): entries trimmed before the group read them are lost, and said so,
loudly, with a count.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from redis.exceptions import ResponseError

from otel_bridge.consumer import EventConsumer, Unavailable
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.redis_client import REDIS_ERRORS, connect
from otel_bridge.redis_groups import FORGET_AFTER_SECONDS, Departures
from otel_bridge.repeated_failure import Backoff, Cadence
from otel_bridge.repeated_failure import told_followed as _told_followed
from otel_bridge.repeated_failure import told_unreachable as _told_unreachable
from otel_bridge.urls import without_secrets

log = logging.getLogger(__name__)

# What leaves a loss untold this time (Redis away, the group or its fields not there yet): told at a later read.
_NOT_TOLD: tuple[type[Exception], ...] = (*REDIS_ERRORS, StopIteration, KeyError)


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`milliseconds-sequence`) as what orders it."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(fields: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in fields.items()}


class StreamReceiver:
    def __init__(
        self,
        url: str,
        key: str,
        group: str,
        consumer_name: str,
        consumer: EventConsumer,
        dead_letters: DeadLetters,
        claim_after_seconds: float = 30.0,
        batch: int = 500,
        block_ms: int = 1000,
        on_lost: Callable[[int], None] = lambda n: None,
        forget_after_seconds: float = FORGET_AFTER_SECONDS,
    ) -> None:
        self._url = url
        self._timeout = max(block_ms / 1000 + 5, 10)
        # Made at the first connection (`run`), where a Redis away is waited for: a cluster's client when
        # the runtime's Redis is a cluster (its stream is one key: one node holds it).
        self._client: Any = None
        self._key = key
        self._group = group
        self._name = consumer_name
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._claim_after_ms = int(claim_after_seconds * 1000)
        self._batch = batch
        self._block_ms = block_ms
        self._on_lost = on_lost
        self.departures = Departures(key, group, consumer_name, forget_after_seconds)
        self.lag: int | None = None
        # Since when (monotonic) the stream is not read, None while it is (entries wait in the stream).
        self.disconnected_since: float | None = time.monotonic()
        self._shown = without_secrets(url)
        # Redis away for a night: its first failure and then a line a minute, not one a retry.
        self._unreachable = Cadence()
        self._followed = False  # ever: a connection after failures then follows the stream "again"

    def _ensure_group(self) -> None:
        if self._client is None:
            self._client = connect(self._url, socket_timeout=self._timeout)
        try:
            # From the start of what the stream holds: event ids make anything seen before a no-op.
            self._client.xgroup_create(self._key, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _next_entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # Ours first (read before a crash or a refused batch), then a dead consumer's, then new ones.
        mine = self._read("0", block=None)
        if mine:
            return mine
        _next, claimed, *_ = self._client.xautoclaim(
            self._key, self._group, self._name, self._claim_after_ms, "0-0", count=self._batch
        )
        if claimed:
            return cast(list[tuple[bytes, dict[bytes, bytes]]], claimed)
        self._check_losses()
        self.departures.sweep(self._client)
        return self._read(">", block=self._block_ms)

    def _read(self, start: str, block: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        answer = self._client.xreadgroup(self._group, self._name, {self._key: start}, count=self._batch, block=block)
        # bytes: the client does not decode responses
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None, answer)
        return [entry for _stream, entries in streams or [] for entry in entries]

    def _check_losses(self) -> None:
        """Count entries the stream trimmed before the group read them.

        Redis counts entries added to the stream and entries the group read; what was
        added after the group's position, less what is still there, was trimmed unread.
        Once told, the group's read count is corrected (XGROUP SETID … ENTRIESREAD), so
        the same loss is told once, by one replica.
        """
        try:
            stream = self._client.xinfo_stream(self._key)
            groups = self._client.xinfo_groups(self._key)
            group = next(g for g in groups if _str(g["name"]) == self._group)
            delivered = _str(group["last-delivered-id"])
        except _NOT_TOLD:
            return
        added, read = stream.get("entries-added"), group.get("entries-read")
        first = stream.get("first-entry")
        if first is None or _order(_str(first[0])) > _order(delivered):
            # Every entry left is after the group's position (none, or the stream was trimmed
            # past it): they are all waiting, and what was added past the position but is no
            # longer there was trimmed unread. Counted, not read: the stream may be long.
            waiting = int(stream["length"])
        else:
            # The group's position is inside the stream: trimming took only entries it had
            # read. Redis 7 counts the rest (None when it cannot: entries deleted in between).
            lag = group.get("lag")
            self.lag = None if lag is None else int(lag)
            return
        self.lag = waiting
        if added is None or read is None:
            return  # Redis before 7: no counts to compare
        lost = int(added) - int(read) - waiting
        if lost <= 0:
            return
        log.error(
            "the stream %s was trimmed past %d entries the group %s had not read: their events are lost "
            "(the bridge fell behind the producer's MAXLEN)",
            self._key,
            lost,
            self._group,
        )
        self._on_lost(lost)
        try:
            self._client.xgroup_setid(self._key, self._group, delivered, entries_read=int(added) - waiting)
        except REDIS_ERRORS as exc:
            log.warning("could not record the loss on the group: %s", exc)

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        ids = [entry_id for entry_id, _fields in entries]
        events = [_text(fields) for _id, fields in entries if fields]
        if events:
            report = self._consumer.ingest(events)  # committed when this returns
            if report.rejected:
                kept = [(r.as_dict(), events[r.index]) for r in report.rejected]
                self._dead_letters.keep(f"redis-stream:{self._key}", kept)
        self._client.xack(self._key, self._group, *ids)

    def run(self, stop: threading.Event) -> None:
        backoff = Backoff()
        ready = False
        while not stop.is_set():
            try:
                if not ready:
                    self._ensure_group()
                    ready = True
                    _told_followed(self._unreachable, log, self._key, self._followed)
                    self._followed = True
                    log.info("consuming %s as %s of group %s", self._key, self._name, self._group)
                entries = self._next_entries()
                self.disconnected_since = None
                if entries:
                    self._take(entries)
                backoff.worked()
            except Unavailable as exc:
                log.warning("store unavailable, stream entries stay pending: %s", exc)
                backoff.wait(stop)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("the consumer group %s is gone (redis lost its data?): creating it again", self._group)
                    ready = False
                    continue
                log.error("redis refused the stream read: %s", exc)
                self.disconnected_since = self.disconnected_since or time.monotonic()
                backoff.wait(stop)
            except REDIS_ERRORS as exc:
                _told_unreachable(self._unreachable, log, f"stream {self._key} at {self._shown}", exc)
                self.disconnected_since = self.disconnected_since or time.monotonic()
                ready = False
                backoff.wait(stop)
            except Exception:
                log.exception("stream receiver failed; retrying")
                backoff.wait(stop)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
