"""Settling's slices on the HTTP server's event loop: taken there when the store is free, else run where asked."""

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import otel_bridge.on_loop as module
from otel_bridge.on_loop import OnLoop


@contextmanager
def _running_loop(takes=lambda: True) -> Iterator[tuple[OnLoop, asyncio.AbstractEventLoop, int]]:
    """A loop running in a thread of its own, the OnLoop made there, and that thread's id."""
    loop = asyncio.new_event_loop()
    made: list[OnLoop] = []
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        made.append(OnLoop(loop, takes))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(10)
        yield made[0], loop, thread.ident
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _where(shared: bool) -> tuple[int | None, bool]:
    return threading.get_ident(), shared


def test_a_slice_runs_on_the_loops_thread_as_shared_and_its_result_comes_back():
    with _running_loop() as (on_loop, _loop, loop_thread):
        assert on_loop(_where) == (loop_thread, True)


def test_a_slice_that_fails_on_the_loop_fails_in_the_thread_that_asked():
    def broken(_shared: bool) -> None:
        raise ValueError("no such run")

    with _running_loop() as (on_loop, _loop, _thread), pytest.raises(ValueError, match="no such run"):
        on_loop(broken)


def test_a_slice_the_loop_cannot_take_when_it_comes_up_runs_in_the_thread_that_asked():
    asked: list[int] = []

    def store_busy() -> bool:
        asked.append(threading.get_ident())
        return False

    with _running_loop(store_busy) as (on_loop, _loop, loop_thread):
        assert on_loop(_where) == (threading.get_ident(), False)
    assert asked == [loop_thread]  # asked on the loop, when it could have run it


def test_a_slice_that_must_stay_runs_where_it_was_asked():
    with _running_loop() as (on_loop, _loop, _thread):
        assert on_loop(_where, movable=False) == (threading.get_ident(), False)


def test_a_slice_asked_for_on_the_loops_own_thread_runs_there_without_waiting_for_itself():
    with _running_loop() as (on_loop, loop, loop_thread):
        future = asyncio.run_coroutine_threadsafe(_call(on_loop), loop)
        assert future.result(10) == (loop_thread, False)


async def _call(on_loop: OnLoop) -> tuple[int | None, bool]:
    return on_loop(_where)


def test_a_slice_handed_to_a_loop_that_stopped_before_taking_it_runs_in_the_thread_that_asked():
    loop = asyncio.new_event_loop()
    try:
        on_loop = OnLoop(loop, lambda: True)  # made here, so the loop's thread is another: a worker asks
        asked = threading.Thread(target=lambda: answers.append(on_loop(_where)))
        answers: list[tuple[int | None, bool]] = []
        asked.start()
        asked.join(10)
        assert answers == [(asked.ident, False)]
    finally:
        loop.close()


def test_a_slice_a_busy_loop_does_not_begin_in_time_runs_once_in_the_thread_that_asked(monkeypatch):
    monkeypatch.setattr(module, "_PATIENCE", 0.01)
    ran: list[tuple[int | None, bool]] = []

    def slice_(shared: bool) -> None:
        ran.append(_where(shared))

    with _running_loop() as (on_loop, loop, _thread):
        busy = threading.Event()
        loop.call_soon_threadsafe(lambda: (busy.set(), time.sleep(0.2)))  # a request that holds the loop
        assert busy.wait(10)
        on_loop(slice_)
        assert ran == [(threading.get_ident(), False)]
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)  # the loop free again
    assert ran == [(threading.get_ident(), False)]  # and not run a second time there


def test_a_slice_handed_to_a_closed_loop_runs_in_the_thread_that_asked():
    loop = asyncio.new_event_loop()
    on_loop = OnLoop(loop, lambda: True)
    loop.close()
    answers: list[tuple[int | None, bool]] = []
    asked = threading.Thread(target=lambda: answers.append(on_loop(_where)))
    asked.start()
    asked.join(10)
    assert answers == [(asked.ident, False)]
