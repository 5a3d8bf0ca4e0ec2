"""Settling a run that is still open sends what a settling from every fact would send, reading only what changed."""

from itertools import pairwise

import msgspec
from builders import WorkflowRun
from fold_harness import read_back
from histories import long_histories
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from otel_bridge import conventions as c
from otel_bridge.correlate import runs
from otel_bridge.correlate.runs import RunState, SettlePolicy
from otel_bridge.correlate.step import Policy, apply, settle_run
from otel_bridge.lifecycle import WorkflowRecord
from otel_bridge.sources.durable_effect import decode
from otel_bridge.state.sqlite_store import SqliteStore

_POLICY = Policy(settle=SettlePolicy(gap_grace_ns=0))


def _settled_in_chunks(events: list[dict], cuts: list[int], how: str) -> list[list[tuple]]:
    """Fold `events` in this order, settling after each chunk: the spans each settling sent.

    `how`: "from-every-fact" (as if never settled before), "in-memory" (as a hot run), "read-back"
    (as a run the store gives back at each settling)."""
    store = SqliteStore(":memory:")
    state: RunState | None = None
    sent: list[list[tuple]] = []
    bounds = [0, *sorted(set(cuts)), len(events)]
    now = 0.0
    for start, end in pairwise(bounds):
        for raw in events[start:end]:
            record = decode(raw)
            assert isinstance(record, WorkflowRecord)
            now = max(now, record.fact.time_ns / 1e9)
            state = apply(state, None, record, now, _POLICY).state  # type: ignore[assignment]
        if state is None:
            continue
        if how == "from-every-fact":
            state.settled_seq = 0  # as if never settled: every span built from every fact
        elif how == "read-back":
            state = read_back(state, store)
        step = settle_run(state, now + 1, _POLICY)
        sent.append(sorted((s.span_id, msgspec.json.encode(s)) for s in step.spans))
        state = step.state  # type: ignore[assignment]
    return sent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=long_histories(), data=st.data())
def test_settling_from_the_steps_told_since_sends_what_settling_from_every_fact_sends(history, data):
    # Any order, some events twice, a few lost, settled after any chunk: the same spans leave at each settling.
    lost = data.draw(st.sets(st.integers(min_value=1, max_value=len(history) - 1), max_size=2))
    history = [event for n, event in enumerate(history) if n not in lost]
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=len(history) // 3))
    delivered = data.draw(st.permutations(history + duplicates)) if data.draw(st.booleans()) else history
    # A settling after any event: the next chunk then tells of one step, or of several, or of a sleep.
    cuts = [n for n, cut in enumerate(data.draw(st.lists(st.booleans(), min_size=len(delivered))), 1) if cut]
    reference = _settled_in_chunks(delivered, cuts, "from-every-fact")
    assert _settled_in_chunks(delivered, cuts, "in-memory") == reference
    assert _settled_in_chunks(delivered, cuts, "read-back") == reference


def test_a_settling_of_an_open_run_reads_only_the_steps_told_since_the_last(monkeypatch):
    run = WorkflowRun("batch").started()
    for n in range(100):
        run.after(1).step_started(f"item-{n}").after(1).step_completed(f"item-{n}")
    state = None
    for raw in run.events:
        state = apply(state, None, decode(raw), 1.0, _POLICY).state
    first = settle_run(state, 2.0, _POLICY)
    assert len(first.spans) == 100

    built_from: list[int] = []
    real = runs.build_spans
    monkeypatch.setattr(
        runs, "build_spans", lambda run_, facts, *a: built_from.append(len(facts)) or real(run_, facts, *a)
    )
    run.after(1).step_started("item-100").after(1).step_completed("item-100")
    for raw in run.events[-2:]:
        state = apply(first.state, None, decode(raw), 3.0, _POLICY).state
    second = settle_run(state, 4.0, _POLICY)

    assert [s.name for s in second.spans] == ["step item-100"]
    assert built_from == [2]  # that step's start and end, not the run's 203 facts


def _folded(state: RunState | None, events: list[dict], now: float) -> tuple[RunState | None, float]:
    for raw in events:
        record = decode(raw)
        assert isinstance(record, WorkflowRecord)
        now = max(now, record.fact.time_ns / 1e9)
        state = apply(state, None, record, now, _POLICY).state  # type: ignore[assignment]
    return state, now


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=long_histories(), data=st.data())
def test_a_run_split_in_two_states_and_merged_settles_as_the_run_told_to_one_state(history, data):
    # A run set aside while its producer went on: its later events started it afresh under the same key.
    # Joined, it sends what one state told every event sends, each span once, whatever the order.
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=len(history) // 3))
    delivered = data.draw(st.permutations(history + duplicates)) if data.draw(st.booleans()) else history
    split = data.draw(st.integers(min_value=1, max_value=len(delivered) - 1))
    cuts = [n for n in data.draw(st.lists(st.integers(min_value=1, max_value=split), max_size=3))]
    reference = _settled_in_chunks(delivered, [*cuts, split], "in-memory")

    store = SqliteStore(":memory:")
    sent: list[list[tuple]] = []
    kept: RunState | None = None
    now = 0.0
    for start, end in pairwise([0, *sorted(set(cuts)), split]):
        kept, now = _folded(kept, delivered[start:end], now)
        assert kept is not None
        step = settle_run(kept, now + 1, _POLICY)
        sent.append(sorted((s.span_id, msgspec.json.encode(s)) for s in step.spans))
        kept = step.state  # type: ignore[assignment]
        # Set aside while it went on: a run that had ended and been sent takes what follows as late, alike.
        assume(kept is not None and not kept.closed)
    later, now = _folded(None, delivered[split:], now)
    assert kept is not None and later is not None
    joined = runs.merge(read_back(kept, store), read_back(later, store), int(now * 1e9))
    step = settle_run(read_back(joined, store), now + 1, _POLICY)
    sent.append(sorted((s.span_id, msgspec.json.encode(s)) for s in step.spans))

    assert [chunk for chunk in sent if chunk] == [chunk for chunk in reference if chunk]


def test_merging_keeps_the_spans_the_later_state_sent_as_sent_and_its_events_as_known():
    run = WorkflowRun("split").started().step_started("a").after(1).step_completed("a")
    kept, now = _folded(None, run.events, 0.0)
    run.after(1).step_started("b").after(1).step_completed("b")
    later, now = _folded(None, run.events[-2:], now)
    assert later is not None
    sent_by_later = settle_run(later, now + 1, _POLICY)
    assert [s.name for s in sent_by_later.spans] == ["step b"]

    joined = runs.merge(kept, later, int(now * 1e9))

    assert [s.name for s in settle_run(joined, now + 1, _POLICY).spans] == ["step a"]  # b left already
    again = apply(joined, None, decode(run.events[-1]), now, _POLICY)
    assert again.admission is runs.Admission.REPEATED  # b's end, sent again by the producer
    run.after(1).completed(["a", "b"])
    ended = settle_run(apply(joined, None, decode(run.events[-1]), now, _POLICY).state, now + 1, _POLICY)
    (root,) = ended.spans
    # b's facts came before b's span left, not after it: none is shown on the root as late.
    assert [e.name for e in root.events if e.attributes.get(c.WORKFLOW_LATE_EVENT)] == []
