"""The other two engines keep the same promise as the durable-effect one (test_disorder.py): any order of
an execution's events, any of them told twice, gives the trace and metrics of the ordered stream.

The event-sourced runtime's stream comes back out of order when a bridge claims a dead one's pending
entries, and two bridges of one consumer group each take part of an execution's entries; a Phase-10
execution's messages are told again by the timeline fetched after a reconnect. Each engine's runs are
also settled as they go (kept in memory or read back from the store) and closed by hand at any point:
each span leaves once (hypothesis)."""

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from typing import Any

import msgspec
from fold_harness import comparable, fold_events, net_metrics, read_back
from histories import executions, phase10_mid_run, phase10_runs, phase10_told_twice
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy
from otel_bridge.correlate.step import Policy, apply, close, settle_run
from otel_bridge.lifecycle import WorkflowRecord
from otel_bridge.producer.event_sourced import as_row
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options
from otel_bridge.state.sqlite_store import SqliteStore

EVENT_SOURCED = EventSourcedDecoder(EventSourcedOptions(service="crm", env="prod"))
PHASE10 = Phase10Decoder(Phase10Options(service="agents", env="prod"))
# Each example folds a history whole; those settled as they go settle it after every event, and take fewer.
_ORDERS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SETTLED_AS_THEY_GO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _trace(events: list[Any], decoder: Callable[[Any], Any]) -> list[tuple]:
    return comparable(fold_events(events, decoder=decoder).spans)


def _net_metrics(events: list[Any], decoder: Callable[[Any], Any]) -> Counter:
    return net_metrics(fold_events(events, decoder=decoder).observations)


def _same_in_any_order(history: list[Any], data: st.DataObject, decoder: Callable[[Any], Any]) -> None:
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=len(history)))
    shuffled = data.draw(st.permutations(history + duplicates))
    # The execution was taken in (an open one may have no span yet): not two empty lists compared.
    assert fold_events(history, settle_at_ns=None, decoder=decoder).runs
    assert _trace(shuffled, decoder) == _trace(history, decoder)
    assert _net_metrics(shuffled, decoder) == _net_metrics(history, decoder)


@_ORDERS
@given(history=executions(), data=st.data())
def test_an_event_sourced_execution_told_in_any_order_and_twice_gives_the_same_trace_and_metrics(history, data):
    # Some of them as rows of the runtime's `workflow_events` table (`replay --format event-sourced`): a
    # history replayed over what the stream told is the same trace.
    as_rows = data.draw(st.lists(st.booleans(), min_size=len(history), max_size=len(history)))
    told = [as_row(entry) if row else entry for entry, row in zip(history, as_rows, strict=True)]
    assert _trace(told, EVENT_SOURCED) == _trace(history, EVENT_SOURCED)
    _same_in_any_order(told, data, EVENT_SOURCED)


def _told_states(history: list[dict[str, str]]) -> tuple[list[tuple], list[tuple]]:
    """The states an execution sat in, as the runtime told them in the order it published them: (state,
    from, to) each; and the events submitted in each, (state, at, name). (Which visit of a state an event
    belongs to is not said when the state was left and entered again in its millisecond.)"""
    states: list[tuple] = []
    notes: list[tuple] = []
    current: tuple[str, int] | None = None
    for e in history:
        if not e["execution_id"] or e["event_type"] == "task_created":
            continue  # the trigger; a task opened moves nothing
        at = _ns(e)
        if e["to_state"] and e["to_state"] != e["from_state"]:
            if current is not None:
                states.append((*current, at))
            current = None if e["to_state"] in ("completed", "failed", "cancelled") else (e["to_state"], at)
        elif current is not None and not e["event_name"].startswith("Task:"):
            notes.append((current[0], at, e["event_name"]))
    return sorted(states), sorted(notes)


def _ns(entry: dict[str, str]) -> int:
    return int(datetime.fromisoformat(entry["timestamp"]).timestamp() * 1000) * 1_000_000


@_ORDERS
@given(history=executions())
def test_an_event_sourced_execution_shows_each_state_from_the_move_into_it_to_the_next_ties_and_all(history):
    # The gaps are drawn from 0 ms: moves and events submitted in one millisecond, whose ids (random, as
    # the runtime's) say nothing of the order they were published in; their states do.
    assume(history[-1]["to_state"] in ("completed", "failed", "cancelled"))  # an open one sends no states yet
    spans = [s for s in fold_events(history, decoder=EVENT_SOURCED).spans if s.name.startswith("state ")]
    shown = sorted((s.name.removeprefix("state "), s.start_ns, s.end_ns) for s in spans)
    inside = sorted((s.name.removeprefix("state "), e.time_ns, e.name) for s in spans for e in s.events)
    assert (shown, inside) == _told_states(history)
    assert all(s.start_ns <= e.time_ns <= s.end_ns for s in spans for e in s.events)


@_ORDERS
@given(history=phase10_runs(), data=st.data())
def test_a_phase10_execution_told_in_any_order_and_twice_gives_the_same_trace_and_metrics(history, data):
    _same_in_any_order(history, data, PHASE10)


@_ORDERS
@given(told=phase10_told_twice(), data=st.data())
def test_a_phase10_timeline_fetched_before_between_or_after_the_messages_gives_the_same_trace(told, data):
    # The catch-up after a reconnect fetches timelines beside the live stream: the timeline may be taken
    # in before the messages it repeats, between them, or after, and messages may come twice.
    messages, timeline = told
    delivered = data.draw(st.permutations(messages + data.draw(st.lists(st.sampled_from(messages), max_size=3))))
    at = data.draw(st.integers(min_value=0, max_value=len(delivered)))
    ordered = [*messages, timeline]
    assert _trace([*delivered[:at], timeline, *delivered[at:]], PHASE10) == _trace(ordered, PHASE10)
    assert _net_metrics([*delivered[:at], timeline, *delivered[at:]], PHASE10) == _net_metrics(ordered, PHASE10)


@_ORDERS
@given(told=phase10_mid_run(), data=st.data())
def test_a_phase10_timeline_fetched_while_the_run_went_on_changes_nothing_wherever_it_is_taken_in(told, data):
    # What a timeline of a running execution says is what the messages said up to then: taken in before,
    # between or after them, the trace is the one the messages make.
    messages, timeline = told
    delivered = data.draw(st.permutations(messages))
    at = data.draw(st.integers(min_value=0, max_value=len(delivered)))
    mixed = [*delivered[:at], timeline, *delivered[at:]]
    assert _trace(mixed, PHASE10) == _trace(messages, PHASE10)
    assert _net_metrics(mixed, PHASE10) == _net_metrics(messages, PHASE10)


_POLICY = Policy(settle=SettlePolicy(gap_grace_ns=0))


def _settled_in_chunks(events: list[Any], cuts: list[int], from_store: bool, decoder: Callable[[Any], Any]) -> list:
    """Fold `events` in this order, settling every run after each chunk, kept in memory or given back by the
    store each time: the spans each settling sent, and the metric totals."""
    store = SqliteStore(":memory:")
    states: dict[str, RunState] = {}
    sent: list[list[tuple]] = []
    totals: Counter = Counter()
    now = 0.0
    for start, end in pairwise([0, *sorted(set(cuts)), len(events)]):
        for raw in events[start:end]:
            record = decoder(raw)
            assert isinstance(record, WorkflowRecord)
            now = max(now, record.fact.time_ns / 1e9)
            step = apply(states.get(record.run.state_key), None, record, now, _POLICY)
            states[record.run.state_key] = step.state  # type: ignore[assignment]
            totals.update(net_metrics(step.observations))
        for key, state in sorted(states.items()):
            settled = settle_run(read_back(state, store) if from_store else state, now + 1, _POLICY)
            sent.append(sorted((s.span_id, msgspec.json.encode(s)) for s in settled.spans))
            totals.update(net_metrics(settled.observations))
            if settled.state is None:  # forgotten: nothing more to tell of it
                del states[key]
            else:
                states[key] = settled.state  # type: ignore[assignment]
    return [sent, {series: total for series, total in totals.items() if total}]


def _same_kept_in_memory_or_read_back(history: list[Any], data: st.DataObject, decoder: Callable[[Any], Any]) -> None:
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=len(history) // 2))
    delivered = data.draw(st.permutations(history + duplicates)) if data.draw(st.booleans()) else history
    cuts = [n for n, cut in enumerate(data.draw(st.lists(st.booleans(), min_size=len(delivered))), 1) if cut]
    in_memory = _settled_in_chunks(delivered, cuts, False, decoder)
    assert any(in_memory[0]) or in_memory[1], "nothing was sent or counted"
    assert _settled_in_chunks(delivered, cuts, True, decoder) == in_memory


@_SETTLED_AS_THEY_GO
@given(history=executions(), data=st.data())
def test_an_event_sourced_execution_settled_as_it_goes_sends_the_same_whether_kept_in_memory_or_read_back(
    history, data
):
    # Each settling after any event, the run kept in memory (a hot run) or read back from the store (a
    # run another replica wrote, or one the cache let go): the same spans leave at each, each once.
    _same_kept_in_memory_or_read_back(history, data, EVENT_SOURCED)


@_SETTLED_AS_THEY_GO
@given(history=phase10_runs(), data=st.data())
def test_a_phase10_execution_settled_as_it_goes_sends_the_same_whether_kept_in_memory_or_read_back(history, data):
    _same_kept_in_memory_or_read_back(history, data, PHASE10)


_CLOSING = Policy(settle=SettlePolicy(max_open_ns=10_000 * 10**9), settle_seconds=2, dedup_ttl_seconds=1000)


def _closed_by_hand_at_any_point(history: list[Any], data: st.DataObject, decoder: Callable[[Any], Any]) -> None:
    """Any order, repeats, settled when due after any event, closed by hand after any event: each span leaves
    once, the root once, and what comes after the close is late or a repeat."""
    repeats = data.draw(st.lists(st.sampled_from(history), max_size=len(history) // 3))
    delivered = data.draw(st.permutations(history + repeats))
    at = data.draw(st.integers(min_value=1, max_value=len(delivered)))
    settled_after = set(data.draw(st.lists(st.integers(min_value=1, max_value=len(delivered)), max_size=5)))
    states: dict[str, tuple[Any, float | None]] = {}
    sent: list[bytes] = []
    roots: dict[str, int] = {}
    now = 100.0
    for n, raw in enumerate(delivered, 1):
        now += 1
        record = decoder(raw)
        key = record.run.state_key
        state, due = states.get(key, (None, None))
        step = apply(state, due, record, now, _CLOSING)
        if key in roots:  # closed by hand, or ended and sent whole: nothing more is taken in
            assert step.admission in (Admission.LATE, Admission.REPEATED), raw
        states[key] = (step.state, step.due)
        for key, (state, due) in list(states.items()):
            settling = None
            if n == at and key not in roots:
                settling = close(state, "gone", now, _CLOSING)
            elif n in settled_after and due is not None and due <= now:
                settling = settle_run(state, now, _CLOSING)
            if settling is None:
                continue
            states[key] = (settling.state, settling.due)
            sent += [span.span_id for span in settling.spans]
            for span in settling.spans:
                if span.parent_span_id is None:
                    roots[key] = roots.get(key, 0) + 1
    assert len(sent) == len(set(sent)), "a span sent twice"
    assert all(count == 1 for count in roots.values()), roots


@_SETTLED_AS_THEY_GO
@given(history=executions(), data=st.data())
def test_an_event_sourced_execution_closed_by_hand_at_any_point_sends_each_span_once(history, data):
    _closed_by_hand_at_any_point(history, data, EVENT_SOURCED)


@_SETTLED_AS_THEY_GO
@given(history=phase10_runs(), data=st.data())
def test_a_phase10_execution_closed_by_hand_at_any_point_sends_each_span_once(history, data):
    # A cancelled execution whose step goes on after the cancellation (held open) closed by hand too.
    _closed_by_hand_at_any_point(history, data, PHASE10)
