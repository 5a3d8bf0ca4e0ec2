"""Objects that hold threads, locks, sockets or files start afresh in a child process after a fork."""

import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound `method` in the child of every later fork, for as long as its object lives.

    A process forked after making a tracker or opening a store (gunicorn's `preload_app`, Celery's
    prefork pool, `multiprocessing`) gives the child a copy whose threads are gone, whose locks may
    be held by a thread the child does not have, and whose sockets and files are the parent's.
    The OpenTelemetry SDK's batch processors start afresh in the child the same way."""
    weak = weakref.WeakMethod(method)

    def call() -> None:
        if (alive := weak()) is not None:
            alive()

    os.register_at_fork(after_in_child=call)


def held_across_fork(locks: Callable[[], list[threading.Lock]], timeout: float) -> None:
    """Hold the locks the bound method `locks` names while the process forks, for as long as its object lives.

    A thread inside SQLite when another forks may hold one of SQLite's own process-wide mutexes (its
    allocator takes one on every malloc): the child, which lacks that thread, then waits for ever on
    its first SQLite call (seen: `sqlite3.connect` in a forked child of an application using the
    in-process tracker). Holding the locks that guard every SQLite call of an object lets those calls
    finish first. A lock not had within `timeout` (the forking thread holds it itself) is forked as it is.
    """
    weak = weakref.WeakMethod(locks)
    taken: list[threading.Lock] = []  # forks are one at a time: CPython holds its import lock across them

    def before() -> None:
        if (alive := weak()) is not None:
            taken.extend(lock for lock in alive() if lock.acquire(timeout=timeout))

    def release() -> None:  # in the parent, and the child's copies, held by its only thread
        while taken:
            taken.pop().release()

    os.register_at_fork(before=before, after_in_parent=release, after_in_child=release)


def event_like(event: threading.Event) -> threading.Event:
    """A new Event set as `event` is: its condition's lock may be held by a thread the child does not have."""
    fresh = threading.Event()
    if event.is_set():
        fresh.set()
    return fresh


def of_this_process(path: Path) -> Path:
    """`path` with this process's id before its suffix: `dead.jsonl` -> `dead.4242.jsonl`."""
    return path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
