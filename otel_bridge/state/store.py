"""The store protocol: run state, the ids already seen, and the export outbox.

One ingest is one transaction (DESIGN.md section 2): skip event ids already seen,
fold the rest into run state, put finished spans into the outbox, commit.
`Store.run(work)` runs `work(tx)` as one transaction; a store shared by several
bridge replicas may run it again when another replica changed what it read, so
`work` must compute everything from what it reads through `tx`.
"""

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from otel_bridge.consumer import Unavailable


def own_name() -> str:
    """A name of its own for one of those sharing a state (a lease's holder, a consumer of the Redis outbox): its
    host and process, which tell a person where it runs, and a random part, since they do not tell two apart —
    two stores of one application, containers that share the host's name and are each process 1."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


T = TypeVar("T")


# What to do about a state file SQLite found damaged: said wherever the damage is met.
DAMAGED_HELP = (
    "the bridge's next start salvages it (salvage_at_start), or `otel-bridge salvage-state` does, the bridge "
    "stopped: what still reads goes into a fresh file, the damaged one kept beside (README: Runbook: a damaged "
    "state file)"
)


# Why an event was rejected whose place in the state file was damaged: kept in the dead-letter file, and
# taken again from there after a salvage at start (`Bridge.opened`).
DAMAGE_REJECTED = "could not be stored: the state file is damaged where it goes"


def damage_met(found: object, state: object = None) -> str:
    """A state file found damaged, and what SQLite found: what the bridge keeps of it for its warnings."""
    return f"the state file{f' {state}' if state is not None else ''} is damaged ({found})"


def damaged_said(state: object, found: object) -> str:
    """One line for a state file found damaged: which, what SQLite found, and what to do."""
    return f"{damage_met(found, state)}: {DAMAGED_HELP}"


class StoreUnavailable(Unavailable):
    """The store cannot take writes now (locked, unreachable, full): answer 503, let the producer retry."""


class StoreOpenError(Exception):
    """The store cannot be opened at all (corrupt, read-only, in use, unreachable): said in one line at start."""


class StoreDamaged(StoreOpenError):
    """The SQLite state file has a page SQLite cannot read, met opening it or reading it back at start."""

    def __init__(self, state: object, found: object) -> None:
        super().__init__(damaged_said(state, found))
        self.met = damage_met(found, state)  # without what to do: the salvage at start is doing it


class StoreInUse(StoreOpenError):
    """Another bridge holds the SQLite state file."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int | str
    resource: str
    payload: bytes


class Transaction(Protocol):
    def unseen(self, event_ids: list[str]) -> set[str]: ...

    def mark_seen(self, event_ids: Iterable[str], now: float) -> None: ...

    def prefetch(self, keys: list[str], journals: Iterable[str] = ()) -> None:
        """These runs are about to be loaded (state, due time, facts), and the rows of these
        `journals` (keys with rows and no state) read: a store across a network reads them in one
        round trip, to answer `load` and `facts` from; a local one ignores it."""

    def load(self, key: str) -> tuple[bytes, float | None] | None: ...

    def save(self, key: str, blob: bytes, due: float | None, overdue_at: float | None = None) -> None:
        """A state's header: `due` is when to settle it (bridge clock), `overdue_at` when it turns
        overdue (producer clock); both indexed, so neither question reads every state."""

    def reschedule(self, key: str, due: float) -> None:
        """Move a saved state's due time, and nothing else: its header and overdue time stay."""

    def delete(self, key: str) -> None:
        """The state and its facts."""

    def expire_at(self, key: str, when: float) -> bool:
        """Have the store drop this state by itself at `when` (wall clock), a save before or after
        keeping it so: True. False: it cannot, and the state stays due then, to be deleted by its
        settling. Asked of a run that forgot its facts, kept only to tell late events (it never
        opens again): the store then keeps no due entry for it."""

    # A run's facts are a journal beside its state: appended, not rewritten, so a batch costs
    # the same for a run of ten facts or of ten thousand. A row holds the facts one transaction
    # added, keyed by the first one's `seq`; `facts` answers the rows in that order.
    def facts(self, key: str) -> list[bytes]: ...

    def append(self, key: str, rows: list[tuple[int, bytes]]) -> None: ...

    def forget(self, key: str) -> None: ...

    def due_after(self, now: float, limit: int, after: tuple[float, str] | None) -> list[tuple[float, str]]:
        """Due by `now`, in (due, key) order, strictly after `after`: (due, key) pairs."""
        ...

    def outbox_add(self, rows: Iterable[tuple[str, bytes]]) -> None: ...


class Passed(NamedTuple):
    """Ids of the outbox on a damaged page, passed over by its read, and what SQLite found there."""

    first: int
    last: int
    found: str


class Store(Protocol):
    # Whether the state is shared with other bridge processes (then in-memory gauges are per replica).
    shared: bool
    # Whether the index of when runs turn overdue was just created over states stored without it.
    overdue_index_new: bool
    # The outbox's ids on the latest damaged part of it its reads now pass over, with what the store found
    # there; None while none is (a store with no pages to damage never has one).
    outbox_passed: Passed | None

    def run(self, work: Callable[[Transaction], T]) -> T:
        """`work` as one transaction; the store's own refusals (unreachable, full, read-only) are
        raised as StoreUnavailable: a producer gets a 503 to retry, no event is taken for a bad one."""

    def confirm(self) -> None:
        """Return once what this process has committed is kept as the store was asked to keep it before
        an answer (Redis: on `wait_replicas` replicas as well); raise StoreUnavailable when it is not
        within the store's wait. Called after a batch's transaction, before the batch is answered."""

    def refusal(self, exc: Exception) -> StoreUnavailable | None:
        """The StoreUnavailable that an error this store raised inside a transaction stands for
        (its own refusal), or None: the error is the caller's. For code that catches broadly
        inside `work` (settling, one run at a time) and must not blame a run for a full disk."""

    def damaged(self, exc: Exception) -> bool:
        """Whether an error this store raised says a part of it is damaged (a page of a SQLite file that
        no longer reads): not a refusal of every batch, nor the caller's fault, but what the events and
        runs that need that part meet until it is salvaged; the rest of the store is used as before."""

    def refuses_batches(self) -> str | None:
        """Why new batches are refused before any is tried (a full disk), or None; then settling waits
        for the outbox to drain too. Answered from what the store knows, without I/O."""

    def awaited(self) -> bool:
        """Whether a transaction is waiting for the one running now to end (never, on a shared store)."""

    def quick_now(self) -> bool:
        """Whether a transaction begun now would start at once and commit without waiting for a
        network or a disk sync. A hint (another thread may begin one the moment after): enough to
        choose whether to wait for the store where waiting holds up others too (an event loop)."""

    def outbox_peek(self, limit: int) -> list[OutboxRow]: ...

    def outbox_ack(self, ids: list[int | str]) -> None: ...

    def outbox_depth(self) -> int: ...

    def earliest_due(self) -> float | None:
        """When the state due soonest is due (None: none is), through the due index."""

    def purge_seen(self, before: float) -> int: ...

    def states(self, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """Every state's header, (key, blob); with `prefix` (whole fields of a key, ending with its
        separator: `keys.runs_of`), only those under it, found through the key index, not filtered."""

    def facts(self, key: str) -> list[bytes]: ...

    def overdue(self, now: float) -> list[tuple[str, bytes]]:
        """The (key, header) of runs whose `overdue_at` has passed."""

    def overdue_keys(self, now: float) -> set[str]:
        """The keys alone of `overdue(now)`: what a listing of every run asks of each (headers not read)."""

    def bookmark(self, name: str) -> bytes | None:
        """What was written down under `name` (`set_bookmark`), kept with the state so that a restarted bridge
        knows it — where a follower of an engine was, the settings the overdue index was written by —; None
        when nothing was."""

    def set_bookmark(self, name: str, value: bytes) -> None:
        """Write a bookmark, outside any batch's transaction; raises StoreUnavailable."""

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Whether `holder` holds the lease `name` for the next `seconds` (taken if no one holds it, renewed
        if `holder` does): of the bridges sharing the state, the one that does a task alone. Raises
        StoreUnavailable."""

    def release(self, name: str, holder: str) -> None:
        """Let the lease `name` go, if `holder` holds it: another takes it at its next ask, not once it lapses.
        Raises StoreUnavailable."""

    def close(self) -> None: ...


@runtime_checkable
class Checkpointed(Protocol):
    """A store with a write-ahead log the bridge moves into its main file in the background."""

    def checkpoint(self) -> int:
        """Copy committed pages out of the log, holding up no transaction; the pages copied."""


@runtime_checkable
class PagesChecked(Protocol):
    """A store in a file whose every page can be read through beside the bridge (SQLite)."""

    def damage_found(self, within_seconds: float | None = None) -> str | None:
        """What a read of every page finds broken, on a connection of its own (the store goes on meanwhile),
        or None; TimeoutError once `within_seconds` have passed."""


@runtime_checkable
class OnDisk(Protocol):
    """A store kept in files on this machine (SQLite): what it takes of its disk, for the operator."""

    def disk_usage(self) -> tuple[int, int] | None:
        """(bytes of the state's files: the database and its log; bytes free to the bridge on their
        filesystem), or None when it has no file (in memory)."""


@runtime_checkable
class WithRisks(Protocol):
    """A store whose setting-up can undo what the bridge answered (Redis: what it evicts when full, what it
    keeps on disk; SQLite: a file on a network filesystem): said as the bridge starts, in /readyz and by check."""

    def risks(self) -> list[str]:
        """What the store's setting-up can cost, a sentence each for the operator; none when nothing."""


@runtime_checkable
class SharedLeases(Protocol):
    """A store bridges share (Redis), whose leases say which of them does each task done alone (`Store.lease`)."""

    def lease_held(self, name: str) -> tuple[str, float] | None:
        """Who holds the lease `name` (`own_name()`'s host, process and random part) and for how many seconds
        more; None when no one does. Raises StoreUnavailable."""


@runtime_checkable
class Replicated(Protocol):
    """A store whose server copies what it commits to replicas (Redis): a batch can be answered once they have it."""

    def replicas(self) -> tuple[int, str | None]:
        """Replicas connected to the server holding the state, and a sentence for the operator when fewer
        than batches wait for (`wait_replicas`): every batch is refused until enough are."""
