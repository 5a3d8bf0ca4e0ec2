"""Consumers of a Redis consumer group that are gone, forgotten.

Redis never deletes a group's consumer by itself: every bridge that ever read a group stays listed
in it (`XINFO CONSUMERS`) — for the state's outbox a consumer per store made (`host-pid-random`), for
the runtime's stream one per pod where the platform names pods anew at each deploy — hundreds within
months, each a line of every tool that lists them, and a dead bridge is not told from a live one. A
consumer with nothing pending and silent for `after_seconds` is a bridge gone: deleting it loses
nothing (`XGROUP DELCONSUMER` drops only the consumer's pending entries, and it has none; a dead
one's are claimed by the others first), and were it to come back, its next read names it again.

The check and the deletion are one script, so a consumer that reads between them is not deleted
with what it just read pending.
"""

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from otel_bridge.redis_client import REDIS_ERRORS

log = logging.getLogger(__name__)

# A consumer's fields come as a flat list of names and values (RESP2): `pending` its entries read and
# not acknowledged, `idle` the milliseconds since it last asked the group for anything.
_FORGET = """
local gone = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local field = {}
  for i = 1, #consumer, 2 do field[consumer[i]] = consumer[i + 1] end
  if field['name'] ~= ARGV[2] and field['pending'] == 0 and field['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field['name'])
    gone[#gone + 1] = field['name']
  end
end
return gone
"""

# An hour: a live bridge asks its group for entries every few seconds at most (a blocking read, a
# backoff's longest wait), one cut off from Redis for longer cannot read anything either.
FORGET_AFTER_SECONDS = 3600.0


class Departures:
    """The group `group` of the stream `key`, read by `own` among others: `sweep` forgets the consumers gone
    from it, at most once every `every_seconds` however often it is called (from a read loop)."""

    def __init__(
        self,
        key: str,
        group: str,
        own: str,
        after_seconds: float = FORGET_AFTER_SECONDS,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self._group = group
        self._own = own
        self._after_ms = int(after_seconds * 1000)
        self._every = every_seconds
        self._clock = clock
        self._next = clock()
        self.forgotten = 0
        self._refused = False

    def sweep(self, client: Any) -> list[str]:
        """The consumers forgotten now (none when not yet time, or Redis failed: tried at the next time)."""
        now = self._clock()
        if now < self._next:
            return []
        self._next = now + self._every
        try:
            answer = client.eval(_FORGET, 1, self._key, self._group, self._own, self._after_ms)
        except ResponseError as exc:  # refused, not away: an ACL without EVAL or XGROUP, told once
            if not self._refused:
                self._refused = True
                log.warning(
                    "cannot forget the consumers gone from the group %s of %s (%s): they stay listed; nothing "
                    "else depends on it",
                    self._group,
                    self._key,
                    exc,
                )
            return []
        except REDIS_ERRORS as exc:  # Redis away: the read loop tells it
            log.debug("could not look for consumers gone from the group %s: %s", self._group, exc)
            return []
        gone = [name.decode(errors="replace") if isinstance(name, bytes) else str(name) for name in answer or []]
        if gone:
            self.forgotten += len(gone)
            log.info(
                "forgot %d consumer(s) of the group %s of %s, silent for %d s with nothing pending (bridges gone): %s",
                len(gone),
                self._group,
                self._key,
                self._after_ms // 1000,
                ", ".join(gone),
            )
        return gone
