"""The store protocol: run state, the ids already seen, and the export outbox.

One ingest is one transaction (DESIGN.md section 2): skip event ids already seen,
fold the rest into run state, put finished spans into the outbox, commit.
`Store.run(work)` runs `work(tx)` as one transaction; a store shared by several
bridge replicas may run it again when another replica changed what it read, so
`work` must compute everything from what it reads through `tx`.
"""

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from otel_bridge.consumer import Unavailable

T = TypeVar("T")
_P = ParamSpec("_P")


class StoreUnavailable(Unavailable):
    """The store cannot take writes now (locked, unreachable, full): answer 503, let the producer retry."""


def refusals_answered(
    refusal: Callable[[Exception], StoreUnavailable | None],
) -> Callable[[Callable[_P, T]], Callable[_P, T]]:
    """A transaction's method that answers its store's own refusals as StoreUnavailable.

    `refusal` turns an error the store raised for reasons of its own (a full disk or memory,
    an I/O error, a read-only replica) into the StoreUnavailable to raise, and anything else
    into None: raised as it is. A full store must get the producer a 503 to retry, never be
    taken for a fault of the events (rejected, and so dropped) or of a run (set aside).
    """

    def wrap(method: Callable[_P, T]) -> Callable[_P, T]:
        @functools.wraps(method)
        def answered(*args: _P.args, **kwargs: _P.kwargs) -> T:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                unavailable = refusal(exc)
                if unavailable is None:
                    raise
                raise unavailable from exc

        return answered

    return wrap


class StoreOpenError(Exception):
    """The store cannot be opened at all (corrupt, read-only, in use, unreachable): said in one line at start."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int | str
    resource: str
    payload: bytes


class Transaction(Protocol):
    def unseen(self, event_ids: list[str]) -> set[str]: ...

    def mark_seen(self, event_ids: Iterable[str], now: float) -> None: ...

    def prefetch(self, keys: list[str]) -> None:
        """These runs are about to be loaded (state, due time, facts): a store across a network
        reads them in one round trip, to answer `load` and `facts` from; a local one ignores it."""

    def load(self, key: str) -> tuple[bytes, float | None] | None: ...

    def save(self, key: str, blob: bytes, due: float | None, overdue_at: float | None = None) -> None:
        """A state's header: `due` is when to settle it (bridge clock), `overdue_at` when it turns
        overdue (producer clock); both indexed, so neither question reads every state."""

    def delete(self, key: str) -> None:
        """The state and its facts."""

    # A run's facts are a journal beside its state: appended, not rewritten, so a batch costs
    # the same for a run of ten facts or of ten thousand. A row holds the facts one transaction
    # added, keyed by the first one's `seq`; `facts` answers the rows in that order.
    def facts(self, key: str) -> list[bytes]: ...

    def append(self, key: str, rows: list[tuple[int, bytes]]) -> None: ...

    def forget(self, key: str) -> None: ...

    def due_keys(self, now: float, limit: int) -> list[str]: ...

    def outbox_add(self, rows: Iterable[tuple[str, bytes]]) -> None: ...


class Store(Protocol):
    # Whether the state is shared with other bridge processes (then in-memory gauges are per replica).
    shared: bool
    # Whether the index of when runs turn overdue was just created over states stored without it.
    overdue_index_new: bool

    def run(self, work: Callable[[Transaction], T]) -> T: ...

    def awaited(self) -> bool:
        """Whether a transaction is waiting for the one running now to end (never, on a shared store)."""

    def outbox_peek(self, limit: int) -> list[OutboxRow]: ...

    def outbox_ack(self, ids: list[int | str]) -> None: ...

    def outbox_depth(self) -> int: ...

    def purge_seen(self, before: float) -> int: ...

    def states(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """Every state's header, (key, blob); with `prefix` (whole fields of a key, ending with its
        separator: `keys.runs_of`), only those under it, found through the key index, not filtered."""

    def facts(self, key: str) -> list[bytes]: ...

    def overdue(self, now: float) -> list[tuple[str, bytes]]:
        """The (key, header) of runs whose `overdue_at` has passed."""

    def close(self) -> None: ...


@runtime_checkable
class Checkpointed(Protocol):
    """A store with a write-ahead log the bridge moves into its main file in the background."""

    def checkpoint(self) -> int:
        """Copy committed pages out of the log, holding up no transaction; the pages copied."""
