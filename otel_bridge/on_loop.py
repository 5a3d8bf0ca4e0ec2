"""Settling's slices taken by the HTTP server's event loop, between the requests it reads.

The settling thread and the event loop share one interpreter. While settling builds spans, a request
that arrives waits for the interpreter, and every time the loop lets go of it (each read and write of
the socket, each SQLite call) it may wait again, up to the 5 ms switch interval each time: that wait
was the p99 of a producer's 6-event POST. A slice the loop runs itself holds up a request at most the
slice (~1 ms), and never again within it. So the settling thread hands each slice (one transaction)
to the loop and waits for it, where the loop can take it: the store is a local file that would begin a
transaction at once and commit without a disk sync (`Store.quick_now`), asked again on the loop when the
slice comes up. Otherwise (Redis, `durability full`, another thread in a transaction), and when the
loop has not begun the slice within `_PATIENCE` (a loop kept busy by many producers), the slice runs in
the settling thread as before.
"""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

# How long a slice waits for the loop to begin it before the settling thread runs it itself. The loop
# takes a slice in its turn, after the requests ready before it: a loop kept busy by many producers could
# starve settling (its spans late, its due runs piling up). Under 4 and 16 closed-loop clients, 4 and 6
# slices of a run waited longer; a loop that stopped never begins one.
_PATIENCE = 0.005


class _NotNow:
    """The loop could not take the slice when it came up: the thread runs it."""


class OnLoop:
    """`Pipeline.slices` for a bridge behind the HTTP server: made on the loop's own thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, takes: Callable[[], bool]) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        # Asked on the loop when the slice comes up, not before in the settling thread: that thread runs
        # while the loop is inside SQLite (storing a batch, the interpreter let go), which holds the store.
        self._takes = takes

    def __call__(self, work: Callable[[bool], T], movable: bool = True) -> T:
        # On the loop's own thread already (a stop called there), waiting for it would never end.
        if not movable or threading.get_ident() == self._loop_thread:
            return work(False)
        answer: Future[T | _NotNow] = Future()

        def on_loop() -> None:
            if not answer.set_running_or_notify_cancel():
                return  # the thread gave up waiting and ran it itself
            if not self._takes():
                answer.set_result(_NotNow())
                return
            try:
                answer.set_result(work(True))
            except Exception as exc:  # the settling thread's to handle, as if it had run it
                answer.set_exception(exc)
            except BaseException as exc:  # an interrupt: the loop's to handle; the thread must not wait on
                answer.set_exception(exc)
                raise

        try:
            self._loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the loop is closed
            return work(False)
        try:
            result = answer.result(timeout=_PATIENCE)
        except TimeoutError:
            if answer.cancel():  # not begun: busy, or stopped
                return work(False)
            result = answer.result()  # begun meanwhile: it ends, or fails, on the loop
        return work(False) if isinstance(result, _NotNow) else result
