"""The states of recently active runs, in memory, in the process that owns the store.

With a store of its own (SQLite, one bridge per file) nothing else writes it, so a
state in memory is the stored one: a batch or a settle finds its runs here instead
of reading and parsing them again. Bounded (least recently used out); a miss reads
the store. Whatever a failed transaction touched is dropped, to be read again.
"""

from collections import OrderedDict
from collections.abc import Iterable

from otel_bridge.state.journal import State


class HotStates:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[str, tuple[State, float | None]] = OrderedDict()

    def get(self, key: str) -> tuple[State, float | None] | None:
        found = self._states.get(key)
        if found is not None:
            self._states.move_to_end(key)
        return found

    def put(self, key: str, state: State | None, due: float | None) -> None:
        if state is None:
            self._states.pop(key, None)
            return
        self._states[key] = (state, due)
        self._states.move_to_end(key)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._states.pop(key, None)

    def __len__(self) -> int:
        return len(self._states)
