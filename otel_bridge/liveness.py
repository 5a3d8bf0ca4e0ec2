"""Whether the bridge's own loops still come round: what `/healthz` tells a supervisor that restarts.

Readiness (`/readyz`) says whether batches are taken now: a backend or a store that is away makes
it false, and restarting the bridge would bring neither back (under Docker Swarm, a health check
on it replaced the bridge every half minute of a backend outage, and the producers' batches sent
meanwhile were lost at the producer). Liveness says what a restart mends: a thread of the bridge's
own that has ended, or a loop inside one pass (a settle slice, an export, a checkpoint) for longer
than `stuck_after_seconds`.
"""

import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


class Passes:
    """When each loop began the pass it is in; a loop waiting for its next pass is not listed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}

    @contextmanager
    def running(self, loop: str) -> Iterator[None]:
        self._since[loop] = self._clock()
        try:
            yield
        finally:
            self._since.pop(loop, None)

    def progressed(self, loop: str) -> None:
        """A long pass moved on (a settle slice committed): it is not stuck, however long it runs."""
        if loop in self._since:
            self._since[loop] = self._clock()

    def busy(self) -> dict[str, float]:
        """Seconds each loop has been in its pass without moving on."""
        now = self._clock()
        return {loop: now - since for loop, since in list(self._since.items())}


def reasons(threads: Mapping[str, threading.Thread], passes: Passes, stuck_after: float) -> dict[str, str]:
    """What a restart would mend, by thread, in words; none while every loop comes round."""
    told = {name: f"the {name} thread has ended" for name, thread in threads.items() if not thread.is_alive()}
    for loop, seconds in sorted(passes.busy().items()):
        if seconds > stuck_after:
            told[loop] = (
                f"the {loop} loop has been in one pass for {seconds:.0f} s (stuck_after_seconds {stuck_after:g})"
            )
    return told


def stack_of(thread: threading.Thread) -> str:
    """Where a thread is now, as a traceback reads: what the log tells of a loop found stuck."""
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no longer running)"
