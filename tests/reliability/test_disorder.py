"""Any permutation of a run's events, duplicated, gives the same trace as the ordered stream (hypothesis)."""

from collections import Counter

from builders import WorkflowRun
from fold_harness import comparable, fold_events, net_metrics
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@st.composite
def histories(draw: st.DrawFn) -> list[dict]:
    """Valid workflow histories as the engine emits them: retries, timeouts, sleeps, every ending."""
    run = WorkflowRun(draw(st.sampled_from(["checkout", "refund"])))
    gap = st.integers(min_value=0, max_value=5000)
    if draw(st.booleans()):
        run.queued().after(draw(gap))
    if draw(st.booleans()):
        run.started()
    else:
        run.resumed()  # first invocation evicted
    steps = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True))
    for step in steps:
        attempts = draw(st.integers(min_value=1, max_value=3))
        run.after(draw(gap)).step_started(step, 1)
        if draw(st.booleans()):
            run.timeout_set(step, 1000)
        for attempt in range(1, attempts):
            if draw(st.booleans()):
                run.step_failed(step, attempt, will_retry=True)
            run.after(draw(gap)).retry_scheduled(step, attempt, delay_ms=draw(st.floats(10, 5000)))
            run.paused("retry", step=step).after(draw(gap)).resumed().step_started(step, attempt + 1)
            if draw(st.booleans()):
                # An evicted invocation re-executes: the same start again, later, under a new event id.
                run.after(draw(st.integers(min_value=1, max_value=500))).step_started(step, attempt + 1)
        run.after(draw(gap))
        ending = draw(st.sampled_from(["completed", "completed", "failed", "exhausted", "timeout"]))
        if ending == "completed":
            run.step_completed(step, attempts, duration_ms=draw(st.floats(0, 10_000)))
        elif ending == "failed":
            run.step_failed(step, attempts).failed("boom", step=step, attempt=attempts)
            return run.events
        elif ending == "exhausted":
            run.retry_exhausted(step, attempts).failed("gave up", step=step)
            return run.events
        else:
            run.timeout_exceeded(step, 1000).failed("timed out", step=step)
            return run.events
        if draw(st.booleans()):
            run.after(1).sleep_started(60_000).paused("sleep").after(60_000).resumed().sleep_completed(60_000)
        if draw(st.booleans()):
            run.step_completed(step, attempts, duration_ms=0, cached=True)
    end = draw(st.sampled_from(["completed", "cancelled", "open"]))
    if end == "completed":
        run.after(1).completed(steps)
    elif end == "cancelled":
        run.after(1).cancelled(reason=steps[-1])
    return run.events


# Duplicates go to the fold as they come: a workflow event's id is remembered by its run, not by the
# store's set of seen ids (which holds job events only), so dropping a repeat is the fold's own work.
def _trace(events: list[dict]) -> list[tuple]:
    return comparable(fold_events(events).spans)


def _net_metrics(events: list[dict]) -> Counter:
    return net_metrics(fold_events(events).observations)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), data=st.data())
def test_shuffled_and_duplicated_histories_give_the_same_trace_and_metrics(history, data):
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=len(history)))
    shuffled = data.draw(st.permutations(history + duplicates))
    assert _trace(shuffled) == _trace(history)
    assert _net_metrics(shuffled) == _net_metrics(history)
