"""Run state as the store keeps it: a small header per run, its facts as appended rows.

One loader, one policy for a state this version cannot read (kept aside under
`keys.UNREADABLE`, the run starts afresh), used by ingest, settling and start-up.
Headers and facts are msgspec JSON (defaults left out), and only what changed is
written: a batch appends its new facts (one row per run), it never rewrites the run.
The ids of the spans a run has sent are a journal of their own (`keys.sent_spans`), a
row per settling that sent any: a header holding them grew with every span a long run
sent, and was rewritten at every batch (240 KiB at 10,000 attempts). The JSON is the
one earlier versions wrote with pydantic, and a row of one fact reads like a row of
several, so their files read as they are; a header with its sent ids inside (written
before they had rows) reads too, and they are journalled at that reading.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson

import otel_bridge
from otel_bridge import keys
from otel_bridge.correlate.jobs import JobState
from otel_bridge.correlate.runs import RunState, merge
from otel_bridge.lifecycle import Fact
from otel_bridge.repeated_failure import Cadence
from otel_bridge.state.store import Store, Transaction

log = logging.getLogger(__name__)

State = RunState | JobState
_encode = msgspec.json.Encoder().encode
_RUN = msgspec.json.Decoder(RunState)
_JOB = msgspec.json.Decoder(JobState)
_FACTS = msgspec.json.Decoder(list[Fact])
_SENT = msgspec.json.Decoder(dict[str, int])


def encode_header(state: State) -> bytes:
    # Defaults are left out (the structs say `omit_defaults`); a run's facts and sent span ids are rows of their own.
    if isinstance(state, RunState) and (state.facts or state.emitted):
        return _encode(msgspec.structs.replace(state, facts=[], emitted={}))
    return _encode(state)


def encode_fact(fact: Fact) -> bytes:
    return _encode(fact)


def decode(key: str, header: bytes, rows: list[bytes], sent: list[bytes] | None = None) -> State:
    """Raises ValueError when this version cannot read it. `sent`: the rows of the run's sent span ids."""
    if keys.is_job(key):
        return _JOB.decode(header)
    state = with_facts(_RUN.decode(header), rows)
    if sent:
        # Rows are JSON objects without their braces: together, one object.
        state.emitted.update(_SENT.decode(b"{" + b",".join(sent) + b"}"))
    return state


def with_facts(state: RunState, rows: list[bytes]) -> RunState:
    """A run decoded from its header alone, given its fact rows. Raises ValueError as `decode`."""
    if rows:
        state.facts.extend(_FACTS.decode(b"[" + b",".join(rows) + b"]"))
    if state.facts and not state.last_told_ns:  # stored before its header kept it
        state.last_told_ns = max(f.time_ns for f in state.facts)
    return state


def load(
    tx: Transaction, key: str, unreadable: Callable[[str], object] | None = None
) -> tuple[State | None, float | None]:
    """A state and when it is due, or (None, None): never stored, or unreadable (then kept aside, and
    its key handed to `unreadable`)."""
    loaded = tx.load(key)
    if loaded is None:
        return None, None
    header, due = loaded
    job = keys.is_job(key)
    rows = [] if job else tx.facts(key)
    sent = [] if job else tx.facts(keys.sent_spans(key))
    try:
        state = decode(key, header, rows, sent)
    except ValueError as exc:
        # A state this version cannot read must not refuse every later event of the run: kept
        # aside whole (its facts, the spans it sent, why) for `settle-again` to put back once a
        # version that reads it runs (after a downgrade, the upgrade again), and the run started afresh.
        why = f"unreadable by otel-bridge {otel_bridge.__version__}: {type(exc).__name__}: {exc}"
        set_aside(tx, key, header, why, time.time(), under=keys.UNREADABLE)
        _tell_unreadable(key)
        if unreadable is not None:
            unreadable(key)
        return None, None
    if isinstance(state, RunState) and state.facts and not rows:
        # Stored by an earlier version, facts inside the state: from now on they are rows.
        tx.append(key, [(0, _row(state.facts))])
    if isinstance(state, RunState) and state.emitted and not sent:
        # Sent span ids inside the header, as earlier versions kept them: from now on they are rows.
        tx.append(keys.sent_spans(key), [(0, _sent_row(state.emitted))])
    return state, due


# A downgrade makes every open run's state unreadable at once (a bridge's start meets them all): the
# first is told with its traceback, then a line a minute with how many more, not a traceback per run.
_UNREADABLE = Cadence(60.0)
_TELLING = threading.Lock()


def _tell_unreadable(key: str) -> None:
    with _TELLING:
        tell, count = _UNREADABLE.failed(), _UNREADABLE.failures
    if not tell:
        return
    if count == 1:
        log.exception(
            "unreadable state for %r; kept as %r and the run started afresh (written by another version? "
            "`otel-bridge settle-again` puts back what the running version reads)",
            key,
            keys.UNREADABLE + key,
        )
    else:
        log.error(
            "%d run states unreadable so far, each kept as unreadable\u241fKEY and its run started afresh; the "
            "latest %r (`otel-bridge settle-again --dry-run` lists them with why)",
            count,
            key,
        )


def prefetch(tx: Transaction, keys_: list[str]) -> None:
    """Read ahead what loading these states reads (one round trip to a store across a network). The
    journals' keys are made only if the store reads them: a local one does not, at every batch."""
    tx.prefetch(keys_, (keys.sent_spans(k) for k in keys_ if not keys.is_job(k)))


def delete(tx: Transaction, key: str) -> None:
    """The state, its facts and its sent span ids."""
    tx.delete(key)
    if not keys.is_job(key):
        tx.forget(keys.sent_spans(key))


@dataclass(slots=True)
class Changes:
    """What a transaction changed in one run, written once at its end."""

    state: State | None
    due: float | None
    added: dict[int, Fact] = field(default_factory=dict)
    # Span ids (hex) sent, with the run's `seq` then: added to the run's journal of them.
    sent: dict[str, int] = field(default_factory=dict)
    # A fact told again replaced one kept in an earlier row: the run's facts are written anew.
    rewritten: bool = False
    forgotten: bool = False


def write(tx: Transaction, key: str, changes: Changes, overdue_at: float | None) -> None:
    state = changes.state
    if state is None:
        delete(tx, key)
        return
    if changes.forgotten:
        tx.forget(key)
        tx.forget(keys.sent_spans(key))
    if changes.rewritten and isinstance(state, RunState):
        # As one row (rare: the same fact under two event ids).
        tx.forget(key)
        tx.append(key, [(0, _row(state.facts))])
    elif changes.added:
        # One row per transaction, keyed by its first fact's `seq`: a batch's facts of one run are
        # one insert, not one each.
        tx.append(key, [(min(changes.added), _row(changes.added.values()))])
    if changes.sent and isinstance(state, RunState) and not state.closed:
        # A closed run sends nothing again: what it sent is read no more (most runs are settled once,
        # at their end, and write no row). Keyed by how many were sent before: `emitted` only grows
        # until the run forgets it, with its rows.
        tx.append(keys.sent_spans(key), [(len(state.emitted) - len(changes.sent), _sent_row(changes.sent))])
    due = changes.due
    # A run that forgot its facts is kept only to tell late events, then dropped: by the store itself
    # where it can (a state saved again for a late event keeps that), else by settling it when due.
    if changes.forgotten and due is not None and tx.expire_at(key, due):
        due = None
    tx.save(key, encode_header(state), due, overdue_at)


def _sent_row(sent: dict[str, int]) -> bytes:
    """Span ids and their `seq` as one row: a JSON object without its braces (`decode` joins the rows)."""
    return _encode(sent)[1:-1]


def _row(facts: Iterable[Fact]) -> bytes:
    """Facts as one journal row: their JSON objects joined by commas (`decode` reads rows the same way
    whether each holds one fact, as earlier versions wrote them, or several)."""
    return b",".join(map(_encode, facts))


def set_aside(tx: Transaction, key: str, header: bytes, reason: str, now: float, under: str = keys.SET_ASIDE) -> None:
    """A run out of play (its settling keeps failing; `keys.UNREADABLE`: this version cannot read it):
    its state, facts and sent span ids kept whole under the prefix `under` with the reason, for
    `put_back` once the cause is mended. A run set aside before (which started afresh since, its
    producer going on) keeps that earlier state inside the new one: a second setting aside used to
    write over the first, and that part of the run was lost."""
    kept: dict[str, Any] = {
        "reason": reason,
        "at": now,
        "state": header.decode(errors="replace"),
        "facts": [row.decode(errors="replace") for row in tx.facts(key)],
        "sent": [row.decode(errors="replace") for row in tx.facts(keys.sent_spans(key))],
    }
    before = tx.load(under + key)
    if before is not None:
        try:
            kept["earlier"] = _kept(under + key, before[0])
        except ValueError:  # not one this version wrote: kept as text, for a person to read
            kept["earlier"] = {"text": before[0].decode(errors="replace")}
    tx.save(under + key, orjson.dumps(kept), None)
    delete(tx, key)


def kept_aside(store: Store) -> dict[str, bytes]:
    """Every state out of play (set aside after failing to settle, or unreadable), by its kept key.

    A dict: on Redis, SCAN may name a key twice, and a second put-back would say "no longer set aside"."""
    return dict([*store.states(keys.SET_ASIDE), *store.states(keys.UNREADABLE)])


class Aside(NamedTuple):
    """A run (or job) `set_aside` kept: its state with its facts, why, and when (Unix seconds)."""

    state: State
    reason: str
    at: float


def _kept(aside: str, blob: bytes) -> dict[str, Any]:
    try:
        kept = orjson.loads(blob)
    except orjson.JSONDecodeError:
        kept = None
    if isinstance(kept, dict) and isinstance(kept.get("state"), str):
        return kept
    if aside.startswith(keys.UNREADABLE):
        # As earlier versions kept an unreadable state: its header and fact rows, a line each.
        header, *rows = blob.split(b"\n")
        return {
            "reason": "unreadable (kept by an earlier otel-bridge, without the spans it had sent)",
            "at": 0.0,
            "state": header.decode(errors="replace"),
            "facts": [row.decode(errors="replace") for row in rows],
        }
    raise ValueError("not a run set aside by this bridge")


def _states_of(aside: str, kept: dict[str, Any]) -> list[State]:
    """The states of one run `kept` under the key `aside`, the earliest first (`set_aside` nests them),
    as this version reads them (raises ValueError)."""
    chain = [kept]
    while (earlier := chain[-1].get("earlier")) is not None:
        if not (isinstance(earlier, dict) and isinstance(earlier.get("state"), str)):
            raise ValueError("an earlier state of the run kept beside it is not one this bridge wrote")
        chain.append(earlier)
    key = keys.in_play(aside)
    return [
        decode(key, k["state"].encode(), [r.encode() for r in k["facts"]], [r.encode() for r in k.get("sent", [])])
        for k in reversed(chain)
    ]


def _joined(states: list[State], now: float) -> State | str:
    """States of one run, the earliest first, as one (`runs.merge`); or why they cannot be."""
    first, *rest = states
    for later in rest:
        if not isinstance(first, RunState) or not isinstance(later, RunState):
            return "a job instance has a newer state: left set aside"
        if later.closed:
            return (
                "the run started afresh after it was set aside and has ended since, its end sent without what "
                "was set aside: left set aside"
            )
        merge(first, later, int(now * 1e9))
    return first


def _due_when_back(state: State, now: float, dedup_ttl: float) -> float:
    # When it closed is not kept once its facts are forgotten (`forget_facts`): remembered a whole
    # `dedup_ttl` from now, at worst that much longer than it would have been.
    return now + dedup_ttl if isinstance(state, RunState) and state.closed and not state.facts else now


def read_aside(aside: str, blob: bytes) -> Aside:
    """What `set_aside` kept under the key `aside` (a run set aside more than once: its states joined, as
    `put_back` would); raises ValueError when it cannot be read."""
    kept = _kept(aside, blob)
    states = _states_of(aside, kept)
    joined = _joined(states, float(kept.get("at", 0.0)))
    reason = str(kept.get("reason", ""))
    if len(states) > 1:
        reason += f" (set aside {len(states)} times: it started afresh in between)"
    return Aside(joined if not isinstance(joined, str) else states[-1], reason, float(kept.get("at", 0.0)))


def put_back(tx: Transaction, aside: str, now: float, dedup_ttl: float = 0.0) -> str | None:
    """The run set aside under `aside` in play again, due now; None when done, else why not. A run that
    had ended and forgotten its facts (kept only to tell its events sent again) is due `dedup_ttl` from
    now: due now, its next settling dropped it at once, and an event of it sent again started a run afresh.

    Alone, it goes back as it was kept. A run set aside more than once, or one that started again under the
    same key meanwhile (its later events), goes back as one run: the states joined (`runs.merge`), the
    spans any of them sent not sent again. One whose newer state has ended is left set aside: that end
    was sent without the rest. Raises ValueError when this version cannot read it (nothing is put back
    then)."""
    key = keys.in_play(aside)
    loaded = tx.load(aside)
    if loaded is None:
        return "no longer set aside"
    # Read before it is put back: one this version cannot read would be set aside again at its first event.
    states = _states_of(aside, _kept(aside, loaded[0]))
    newer = tx.load(key)
    if newer is not None:
        job = keys.is_job(key)
        try:
            states.append(
                decode(key, newer[0], [] if job else tx.facts(key), [] if job else tx.facts(keys.sent_spans(key)))
            )
        except ValueError:
            return "the run's newer state cannot be read by this version: left set aside"
    joined = _joined(states, now)
    if isinstance(joined, str):
        return joined
    # Written as this version writes a state (header, a row of facts, a row of sent span ids), whatever
    # version kept it: one set aside by earlier versions without its sent ids may send its spans again.
    delete(tx, key)
    tx.save(key, encode_header(joined), _due_when_back(joined, now, dedup_ttl))
    if isinstance(joined, RunState) and joined.facts:
        tx.append(key, [(0, _row(joined.facts))])
    if isinstance(joined, RunState) and joined.emitted:
        tx.append(keys.sent_spans(key), [(0, _sent_row(joined.emitted))])
    tx.delete(aside)
    return None


def headers(store: Store, prefix: str = "") -> Iterator[tuple[str, State | None]]:
    """Every state in play decoded from its header alone (facts not read), or None for one this version
    cannot read: what a start, the overdue index and `check` read of every run and job instance (with
    `prefix`, those under it: `keys.JOBS`)."""
    for key, header in store.states(prefix):
        if keys.is_kept_aside(key):
            continue
        try:
            yield key, decode(key, header, [])
        except ValueError:
            yield key, None


class Names(NamedTuple):
    workflows: set[str]
    jobs: set[str]
    producers: set[str]  # serviceKey@env


def names(store: Store) -> Names:
    """The workflow and job names the stored states carry (runs open, or closed and remembered for their
    late events; job instances), from their headers, and the producers whose they are: what names in the
    settings can be checked against. States this version cannot read are passed over."""
    found = Names(set(), set(), set())
    for key, state in headers(store):
        if state is None:
            continue
        _engine, env, service = keys.producer_of(key)
        found.producers.add(f"{service}@{env}")
        if isinstance(state, JobState):
            found.jobs.add(state.job_name)
        else:
            found.workflows.add(state.run.name)
    found.workflows.discard("")
    found.jobs.discard("")
    return found
