"""Objects that hold threads, locks, sockets or files start afresh in a child process after a fork."""

import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound `method` in the child of every later fork, for as long as its object lives.

    A process forked after making a tracker or opening a store (gunicorn's `preload_app`, Celery's
    prefork pool, `multiprocessing`) gives the child a copy whose threads are gone, whose locks may
    be held by a thread the child does not have, and whose sockets and files are the parent's.
    The OpenTelemetry SDK's batch processors start afresh in the child the same way."""
    _in_child.add(method)


class Lock(Protocol):
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...

    def release(self) -> None: ...


class GivenUpToFork:
    """A lock held through one long SQLite call (a check of every page: seconds a GiB) that its holder gives
    up when a fork wants it: `wanted` turns true, the call is cut short (its progress handler), and the
    holder takes it again once the fork is done, then starts over. Forks alone wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forks = 0  # waiting: forks are one at a time, so only one thread ever counts

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._forks += 1
        try:
            return self._lock.acquire(blocking, timeout)
        finally:
            self._forks -= 1

    def release(self) -> None:
        self._lock.release()

    def wanted(self) -> bool:
        return self._forks > 0

    def __enter__(self) -> None:
        while self._forks:  # the holder that gave way lets the fork take it first
            time.sleep(0.001)
        self._lock.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._lock.release()


def held_across_fork(locks: Callable[[], list[Lock]], timeout: float) -> None:
    """Hold the locks the bound method `locks` names while the process forks, for as long as its object lives.

    A thread inside SQLite when another forks may hold one of SQLite's own process-wide mutexes (its
    allocator takes one on every malloc): the child, which lacks that thread, then waits for ever on
    its first SQLite call (seen: `sqlite3.connect` in a forked child of an application using the
    in-process tracker). Holding the locks that guard every SQLite call of an object lets those calls
    finish first. A lock not had within `timeout` (the forking thread holds it itself) is forked as it is.
    """
    _held.add(locks, timeout)


class _Registry:
    """Bound methods called at every fork while their objects live, in the order they came.

    `os.register_at_fork` cannot take a hook back: one per object made kept ~1.6 KiB of every
    tracker an application made and closed (4.5 KiB an in-memory one), for the process's life, and
    ran them all at each fork. One hook per process calls these instead; a method leaves with its
    object.

    Each is kept as a weak reference to its object beside its function, not as a `WeakMethod`:
    the callback a WeakMethod sets on itself can run after the WeakMethod is gone while the
    interpreter exits, and CPython then prints "Exception ignored in ... WeakMethod ... '_alive'"
    (an in-process tracker's every exit did; blinker met the same, pallets-eco/blinker#174)."""

    def __init__(self) -> None:
        self._methods: dict[int, tuple[weakref.ref[Any], Callable[..., Any], Any]] = {}

    def add(self, method: Callable[..., Any], extra: Any = None) -> None:
        owner = weakref.ref(method.__self__, self._gone)  # type: ignore[attr-defined]
        self._methods[id(owner)] = (owner, method.__func__, extra)  # type: ignore[attr-defined]

    def _gone(self, owner: weakref.ref[Any]) -> None:
        self._methods.pop(id(owner), None)

    def alive(self) -> list[tuple[Callable[..., Any], Any]]:
        found = []
        for owner, function, extra in list(self._methods.values()):
            if (obj := owner()) is not None:
                found.append((function.__get__(obj), extra))
        return found


_in_child = _Registry()
_held = _Registry()
_taken: list[Lock] = []  # forks are one at a time: CPython holds its import lock across them


def _start_afresh() -> None:
    for method, _ in _in_child.alive():
        method()


def _hold() -> None:
    for locks, timeout in _held.alive():
        _taken.extend(lock for lock in locks() if lock.acquire(timeout=timeout))


def _release() -> None:  # in the parent, and the child's copies, held by its only thread
    while _taken:
        _taken.pop().release()


# The child lets go of the locks it was forked holding first: an object starting afresh may take one.
os.register_at_fork(before=_hold, after_in_parent=_release, after_in_child=_release)
os.register_at_fork(after_in_child=_start_afresh)


def event_like(event: threading.Event) -> threading.Event:
    """A new Event set as `event` is: its condition's lock may be held by a thread the child does not have."""
    fresh = threading.Event()
    if event.is_set():
        fresh.set()
    return fresh


def of_this_process(path: Path) -> Path:
    """`path` with this process's id before its suffix: `dead.jsonl` -> `dead.4242.jsonl`."""
    return path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
