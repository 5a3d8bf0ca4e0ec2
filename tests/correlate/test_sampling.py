"""Sampling runs: a share of them, chosen by trace id, is sent as it goes; of the rest, a run that failed
anywhere is sent whole at its end and the others not at all, every run counted in the metrics alike."""

import msgspec
from builders import WorkflowRun, ns_of
from histories import long_histories
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from otel_bridge import conventions as c
from otel_bridge import trace_id_for
from otel_bridge.config import Settings, sampler_ratio
from otel_bridge.correlate import runs
from otel_bridge.correlate.overview import overview
from otel_bridge.correlate.runs import RunState, SettlePolicy
from otel_bridge.correlate.step import Policy, Step, apply, settle_run
from otel_bridge.ids import run_trace_id, sample_bound, within_ratio
from otel_bridge.pipeline import policy_of
from otel_bridge.producer.event_sourced import Execution, trigger
from otel_bridge.sources.durable_effect import decode
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.state import journal
from otel_bridge.state.sqlite_store import SqliteStore

EVERY_RUN = Policy(settle=SettlePolicy(gap_grace_ns=0))
NO_RUN = Policy(settle=SettlePolicy(gap_grace_ns=0, sample_bound=0))


def _settled_as_it_goes(events: list[dict], policy: Policy, every: int = 2) -> list[Step]:
    """Fold the events in order, settling after every `every` of them and at the end."""
    state: RunState | None = None
    steps = []
    now = 0.0
    for n, raw in enumerate(events, 1):
        record = decode(raw)
        now = max(now, record.fact.time_ns / 1e9)
        state = apply(state, None, record, now, policy).state  # type: ignore[assignment]
        if n % every == 0 or n == len(events):
            assert state is not None
            step = settle_run(state, now + 1, policy)
            steps.append(step)
            state = step.state  # type: ignore[assignment]
    return steps


def _sent(steps: list[Step]) -> list[bytes]:
    return sorted(msgspec.json.encode(span) for step in steps for span in step.spans)


def _settled_once_at_its_end(events: list[dict]) -> list[bytes]:
    """What a run sends when it is settled once, from every fact, at its end: the run whole."""
    return _sent(_settled_as_it_goes(events, EVERY_RUN, every=len(events)))


def _observed(steps: list[Step]) -> list[tuple]:
    return sorted(
        (o.instrument, o.value, o.attributes, o.trace_id is not None) for step in steps for o in step.observations
    )


def _a_long_run(ending: str) -> WorkflowRun:
    run = WorkflowRun("nightly").started()
    for n in range(6):
        run.after(10).step_started(f"item-{n}").after(5).step_completed(f"item-{n}")
    run.after(10).sleep_started(60_000).paused("sleep").after(60_000).resumed().sleep_completed(60_000)
    run.after(10).step_started("report")
    if ending == "failed":
        return run.after(5).step_failed("report").failed(step="report")
    return run.after(5).step_completed("report").completed()


def test_runs_are_chosen_by_trace_id_as_the_sdks_traceidratio_sampler_chooses():
    policy = policy_of(Settings(trace_sample_ratio=0.3))
    sdk = TraceIdRatioBased(0.3)
    chosen = []
    for _ in range(400):
        run = WorkflowRun("pick").started()
        state = apply(None, None, decode(run.events[0]), 0.0, policy).state
        assert isinstance(state, RunState)
        by_sdk = sdk.should_sample(None, int.from_bytes(run_trace_id(state.run.identity)), "run").decision
        assert policy.settle.samples(state) is by_sdk.is_sampled()
        chosen.append(policy.settle.samples(state))
    assert 80 < sum(chosen) < 160  # about 30 % of 400


def test_a_run_left_out_that_succeeds_sends_nothing_and_is_counted_as_every_run_is():
    events = _a_long_run("completed").events
    left_out = _settled_as_it_goes(events, NO_RUN)
    sent = _settled_as_it_goes(events, EVERY_RUN)

    assert _sent(left_out) == [] and len(_sent(sent)) == 9  # root, seven steps, the sleep
    assert [step.kept_back for step in left_out] == [False] * (len(left_out) - 1) + [True]  # told at its end
    assert not any(step.kept_back for step in sent)
    # The same measurements, but none links to a trace that is not there.
    assert [o[:3] for o in _observed(left_out)] == [o[:3] for o in _observed(sent)]
    assert not any(linked for *_, linked in _observed(left_out))


def test_a_run_left_out_that_fails_is_sent_whole_at_its_end_each_span_once():
    events = _a_long_run("failed").events
    steps = _settled_as_it_goes(events, NO_RUN)

    assert all(step.spans == [] for step in steps[:-1])  # nothing while it went on
    assert not any(step.kept_back for step in steps)
    assert _sent(steps) == _settled_once_at_its_end(events)
    # Linked to its trace only where the span will be there: the failed step's, and the run's at its end.
    linked = [o.instrument for step in steps for o in step.observations if o.trace_id is not None]
    assert c.M_WORKFLOW_TASK_DURATION in linked and c.M_WORKFLOW_EXECUTION_DURATION in linked


def test_a_run_left_out_whose_step_failed_then_succeeded_on_retry_is_sent_whole():
    # A Collector's status_code policy keeps a trace with any failed span; so does the bridge, but with
    # every span of the run, however long after `decision_wait` its end came.
    run = WorkflowRun("retrying").started().step_started("pay").after(5).step_failed("pay", will_retry=True)
    run.retry_scheduled("pay", 1, delay_ms=3_600_000).paused("retry", step="pay").after(3_600_000).resumed()
    run.step_started("pay", 2).after(5).step_completed("pay", 2).completed(["pay"])

    steps = _settled_as_it_goes(run.events, NO_RUN)

    assert _sent(steps) == _settled_once_at_its_end(run.events)
    assert [s.status.value for s in steps[-1].spans if s.name == "step pay"] == ["error", "ok"]


def test_a_run_left_out_is_still_left_out_when_read_back_from_the_store():
    run = WorkflowRun("kept").started().step_started("a").after(5).step_completed("a")
    state = None
    for raw in run.events:
        state = apply(state, None, decode(raw), 1.0, NO_RUN).state
    settled = settle_run(state, 2.0, NO_RUN)
    assert settled.spans == [] and settled.state.withheld

    key = settled.state.run.state_key

    def written_and_read_back(tx):
        journal.write(tx, key, journal.Changes(settled.state, None, dict(enumerate(state.facts)), settled.sent), None)
        return journal.load(tx, key)[0]

    read = SqliteStore(":memory:").run(written_and_read_back)
    # Now every run would be sent as it goes; this one has been kept back, so it goes on so.
    run.after(1).step_started("b").after(5).step_completed("b")
    for raw in run.events[-2:]:
        read = apply(read, None, decode(raw), 3.0, EVERY_RUN).state
    going_on = settle_run(read, 4.0, EVERY_RUN)
    assert going_on.spans == [] and [o.instrument for o in going_on.observations] == [c.M_WORKFLOW_TASK_DURATION]
    run.after(1).completed(["a", "b"])
    ended = settle_run(apply(read, None, decode(run.events[-1]), 5.0, EVERY_RUN).state, 6.0, EVERY_RUN)
    # And at its end the ratio takes it in: sent whole, though nothing of it failed.
    assert sorted(s.name for s in ended.spans) == ["step a", "step b", "workflow kept"]


def test_a_run_that_has_sent_spans_goes_on_sending_when_the_ratio_falls():
    # Kept back from then on, its trace would lack its root: the ratio decides only runs not yet sent.
    run = WorkflowRun("going").started().step_started("a").after(5).step_completed("a")
    steps = _settled_as_it_goes(run.events, EVERY_RUN, every=3)
    state = steps[-1].state
    run.after(1).step_started("b").after(5).step_completed("b").completed(["a", "b"])
    for raw in run.events[-3:]:
        state = apply(state, None, decode(raw), 10.0, NO_RUN).state
    assert sorted(s.name for s in settle_run(state, 11.0, NO_RUN).spans) == ["step b", "workflow going"]


def test_the_ratio_is_the_sdks_sampler_when_the_bridge_is_not_given_one(monkeypatch):
    asked = {
        "": 1.0,
        "always_on": 1.0,
        "always_off": 0.0,
        "parentbased_always_off": 0.0,
        "traceidratio": 1.0,  # no argument: the SDK's default
        "traceidratio 0.25": 0.25,
        "parentbased_traceidratio 0.1": 0.1,
        "traceidratio half": None,
        "traceidratio 1.5": None,
        "jaeger_remote": None,
    }
    for value, ratio in asked.items():
        sampler, _, arg = value.partition(" ")
        environ = {"OTEL_TRACES_SAMPLER": sampler} | ({"OTEL_TRACES_SAMPLER_ARG": arg} if arg else {})
        assert sampler_ratio(environ) == ratio, value

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.2")
    assert Settings().trace_sample_ratio == 0.2
    assert Settings(trace_sample_ratio=0.5).trace_sample_ratio == 0.5
    monkeypatch.setenv("OTEL_BRIDGE_TRACE_SAMPLE_RATIO", "0.7")
    assert Settings().trace_sample_ratio == 0.7
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")
    monkeypatch.delenv("OTEL_BRIDGE_TRACE_SAMPLE_RATIO")
    assert Settings().trace_sample_ratio == 1.0  # told in the log (tests/export/test_otlp.py)


def test_an_open_run_kept_back_is_listed_with_a_traceparent_that_says_not_sampled():
    run = WorkflowRun("waiting").started().step_started("approve")
    kept_back = None
    for raw in run.events:
        kept_back = apply(kept_back, None, decode(raw), 1.0, NO_RUN).state
    sent = apply(None, None, decode(run.events[0]), 1.0, EVERY_RUN).state
    assert isinstance(kept_back, RunState) and isinstance(sent, RunState)
    assert overview(kept_back, 2 * 10**9, 0).traceparent.endswith("-00")
    assert overview(sent, 2 * 10**9, 0).traceparent.endswith("-01")


def test_a_run_kept_back_then_set_aside_while_its_producer_went_on_sent_live_is_joined_each_span_sent_once():
    # Set aside under a ratio of 0; the ratio raised to 1 before its later events started it afresh.
    run = WorkflowRun("split").started().step_started("a").after(5).step_completed("a")
    kept = _settled_as_it_goes(run.events, NO_RUN, every=3)[-1].state
    run.after(5).step_started("b").after(5).step_completed("b")
    later_steps = _settled_as_it_goes(run.events[-2:], EVERY_RUN)
    assert [s.name for s in later_steps[-1].spans] == ["step b"]

    joined = runs.merge(kept, later_steps[-1].state, 10**10)
    run.after(1).completed(["a", "b"])
    ended = settle_run(apply(joined, None, decode(run.events[-1]), 11.0, EVERY_RUN).state, 12.0, EVERY_RUN)

    assert sorted(s.name for s in ended.spans) == ["step a", "workflow split"]  # b had left; a never had


def test_a_run_kept_back_forgets_that_it_was_once_it_only_recognises_late_events():
    # A week of closed runs is most of a busy bridge's state: the header keeps nothing it no longer needs.
    run = WorkflowRun("done").started().step_started("a").after(5).step_completed("a").completed(["a"])
    closed = _settled_as_it_goes(run.events, NO_RUN, every=len(run.events))[-1]
    assert closed.kept_back and closed.state.withheld
    forgotten = settle_run(closed.state, closed.due, NO_RUN)
    assert forgotten.facts_forgotten and b"withheld" not in journal.encode_header(forgotten.state)


def test_a_run_left_out_that_never_ends_is_sent_whole_when_closed_incomplete():
    # Stuck, or its end lost: what an operator looks for, as much as a failure.
    policy = Policy(settle=SettlePolicy(gap_grace_ns=0, sample_bound=0, max_open_ns=3_600 * 10**9))
    run = WorkflowRun("stuck").started().step_started("a").after(5).step_completed("a").step_started("b")
    state, heard = None, ns_of(run.events[-1]) / 1e9  # its last event, as the bridge's clock reads it
    for raw in run.events:
        state = apply(state, None, decode(raw), heard, policy).state
    assert settle_run(state, heard + 1, policy).spans == []
    closed = settle_run(state, heard + 3_601, policy)
    assert sorted(s.name for s in closed.spans) == ["step a", "step b", "workflow stuck"] and not closed.kept_back
    assert closed.incomplete


def test_a_run_sent_links_only_to_the_triggers_the_ratio_sends():
    # A trigger is a one-span trace that never fails: the ratio alone decides it, and a run it started
    # that is sent (here: it failed) keeps its link only to a trigger that is sent too.
    decoder = EventSourcedDecoder(EventSourcedOptions(service="crm", env="prod"))
    bound = sample_bound(0.5)
    inbound = [trigger("INBOUND_EMAIL_RECEIVED", tenant="acme") for _ in range(40)]
    sent = {
        t["event_id"]: within_ratio(trace_id_for("event-sourced", "prod", "crm", t["event_id"], "acme"), bound)
        for t in inbound
    }
    assert 5 < sum(sent.values()) < 35
    policy = Policy(settle=SettlePolicy(gap_grace_ns=0, sample_bound=bound))
    for chosen in (True, False):
        first = next(t for t in inbound if sent[t["event_id"]] is chosen)
        run = Execution("triage", tenant="acme").started({"eventId": first["event_id"]}).after(5).ended("failed")
        state = None
        for raw in run.events:
            state = apply(state, None, decoder(raw), 1.0, policy).state
        (root,) = [s for s in settle_run(state, 2.0, policy).spans if s.parent_span_id is None]
        assert len(root.remote_links) == (1 if chosen else 0)


def _settled_at(events: list[dict], cuts: list[int], policy: Policy) -> list[Step]:
    """Fold `events` in this order, settling after each chunk that `cuts` ends, and at the end."""
    state: RunState | None = None
    steps, now, mark = [], 0.0, 0
    for end in [*sorted(set(cuts)), len(events)]:
        for raw in events[mark:end]:
            record = decode(raw)
            now = max(now, record.fact.time_ns / 1e9)
            state = apply(state, None, record, now, policy).state  # type: ignore[assignment]
        mark = end
        if state is not None and not state.closed:
            steps.append(step := settle_run(state, now + 1, policy))
            state = step.state  # type: ignore[assignment]
    return steps


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=long_histories(), data=st.data())
def test_a_run_left_out_sends_whole_at_its_end_if_anything_failed_whatever_the_order_and_repeats(history, data):
    # Its end last: one arriving before the rest closes the run, which then takes the rest as late, left
    # out or not (a live bridge waits `gap_grace_seconds` for what a completed run lacks).
    ends = [event for event in history if event["type"] == "workflow.completed"]
    going = [event for event in history if event not in ends]
    duplicates = data.draw(st.lists(st.sampled_from(going), max_size=len(going) // 3))
    delivered = data.draw(st.permutations(going + duplicates)) + ends
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(delivered)), max_size=6))
    left_out = _settled_at(delivered, cuts, NO_RUN)
    reference = _settled_at(delivered, [], EVERY_RUN)  # once, from every fact: the run whole
    ended = bool(ends)
    failed = any(span.status.value == "error" for step in reference for span in step.spans)

    assert all(step.spans == [] for step in left_out[:-1])  # nothing while it goes on
    assert _sent(left_out) == (_sent(reference) if ended and failed else [])
    assert left_out[-1].kept_back is (ended and not failed)
