"""Of the replicas sharing a state, the one that does a follower's work alone: it holds a lease in the store
(`Store.lease`), the others stand by and take over once it lapses (a replica stopped, or stalled past it)."""

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, ask: Callable[[float], bool] | None, seconds: float, doing: str, does: str) -> None:
        """`ask(seconds)`: whether this replica holds the lease for so long (None: it is alone, and does the
        work); what the holder does, as the log says it: `doing` ("reading the runtime v2's tables") and `does`
        ("reads the runtime v2's tables")."""
        self._ask = ask
        self.seconds = seconds
        self._doing, self._does = doing, does
        # Whether this replica does the work now (None: alone, or not asked yet; False: another does).
        self.reading: bool | None = None

    def changed(self) -> bool | None:
        """Ask again: True when this replica has just begun the work, False when it has just stood by, None when
        nothing changed (or it is alone). Each change is told in the log once. Raises what `ask` raises (the
        store unavailable), its role unchanged."""
        if self._ask is None:
            return None
        leads = self._ask(self.seconds)
        if leads is self.reading:
            return None
        if leads:
            log.info("%s for the replicas sharing this state", self._doing)
        else:
            log.info("another replica sharing this state %s: standing by", self._does)
        self.reading = leads
        return leads
