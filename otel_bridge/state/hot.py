"""The states of recently active runs, in memory, in the process that owns the store.

With a store of its own (SQLite, one bridge per file) nothing else writes it, so a
state in memory is the stored one: a batch or a settle finds its runs here instead
of reading and parsing them again. Bounded (least recently used out) by how many runs
and by how many facts they hold together; a miss reads the store. Whatever a failed
transaction touched is dropped, to be read again.
"""

from collections import OrderedDict
from collections.abc import Iterable

from otel_bridge.correlate.runs import RunState
from otel_bridge.state.journal import State


def _weight(state: State) -> int:
    """What a state costs in memory, in facts (~0.8 KiB each in memory); a run's header or a job's state counts one."""
    return 1 + len(state.facts) if isinstance(state, RunState) else 1


class HotStates:
    def __init__(self, capacity: int, max_facts: int | None = None) -> None:
        self.capacity = capacity
        # Runs counted alone let 20,000 open runs of forty facts each hold ~650 MiB: a bridge beside
        # busy, long workflows grew past what its many short ones needed.
        self.max_facts = max_facts
        self.facts = 0
        self._states: OrderedDict[str, tuple[State, float | None, int]] = OrderedDict()

    def get(self, key: str) -> tuple[State, float | None] | None:
        found = self._states.get(key)
        if found is None:
            return None
        self._states.move_to_end(key)
        return found[0], found[1]

    def put(self, key: str, state: State | None, due: float | None) -> None:
        before = self._states.pop(key, None)
        if before is not None:
            self.facts -= before[2]
        if state is None:
            return
        weight = _weight(state)
        self._states[key] = (state, due, weight)
        self.facts += weight
        budget = self.max_facts
        # The run just kept stays, however large: it is the one being worked on.
        while len(self._states) > 1 and (
            len(self._states) > self.capacity or (budget is not None and self.facts > budget)
        ):
            self.facts -= self._states.popitem(last=False)[1][2]

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            found = self._states.pop(key, None)
            if found is not None:
                self.facts -= found[2]

    def __len__(self) -> int:
        return len(self._states)
