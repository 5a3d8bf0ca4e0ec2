"""Hypothesis strategies of whole event histories, for the properties the correlate stage keeps."""

from typing import Any

from builders import JobRun, WorkflowRun
from hypothesis import strategies as st

from otel_bridge.producer.event_sourced import Execution, trigger
from otel_bridge.producer.phase10 import Phase10Run

# Any JSON value, a few levels deep: what a producer with a bug, or no producer, might send.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def long_histories(draw: st.DrawFn) -> list[dict]:
    """A run that keeps going: many steps, retries, timeouts, sleeps and pauses; open or ended."""
    run = WorkflowRun("batch").started()
    gap = st.integers(min_value=0, max_value=2000)
    names = [f"item-{n}" for n in range(draw(st.integers(min_value=1, max_value=12)))]
    polled = draw(st.sampled_from([None, *names]))  # a step tried again and again
    for step in names:
        attempts = draw(st.integers(min_value=1, max_value=25 if step == polled else 3))
        run.after(draw(gap)).step_started(step, 1)
        if draw(st.booleans()):
            run.timeout_set(step, 1000)
        for attempt in range(1, attempts):
            run.after(draw(gap)).retry_scheduled(step, attempt, delay_ms=100)
            run.paused("retry", step=step).after(draw(gap)).resumed().step_started(step, attempt + 1)
        ending = draw(st.sampled_from(["completed", "completed", "failed", "exhausted", "timeout", "open"]))
        run.after(draw(gap))
        if ending == "completed":
            run.step_completed(step, attempts, duration_ms=draw(st.floats(0, 10_000)))
        elif ending == "failed":
            run.step_failed(step, attempts)
        elif ending == "exhausted":
            run.retry_exhausted(step, attempts)
        elif ending == "timeout":
            run.timeout_exceeded(step, 1000)
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            run.after(1).sleep_started(60_000).paused("sleep").after(60_000).resumed().sleep_completed(60_000)
    if draw(st.booleans()):
        run.after(1).completed(names)
    return run.events


@st.composite
def job_histories(draw: st.DrawFn) -> list[dict]:
    """One task or debounce instance's events in the order the engine sends them: schedules (each told
    before the run before it ends), runs that come on time, early, late or never, failures, an end."""
    kind = draw(st.sampled_from(["task", "debounce"]))
    job = JobRun("reminder", kind)
    # Often none: the engine tells several things in one millisecond.
    gap = st.one_of(st.just(0), st.integers(min_value=0, max_value=120_000))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        told_in = draw(st.integers(min_value=0, max_value=60_000))
        if kind == "task":
            job.after(draw(gap)).task_scheduled(in_ms=told_in)
        else:
            job.after(draw(gap)).debounce_started(flush_in_ms=told_in)
        run = draw(st.sampled_from(["on time", "early", "late", "never", "failed"]))
        if run == "never":
            continue
        job.after({"on time": told_in, "early": told_in // 2, "late": told_in + draw(gap)}.get(run, told_in))
        if run == "failed":
            job.failed(0, will_retry=False)
        elif kind == "task":
            job.executed(0)
        else:
            job.executed(0).debounce_flushed(3, reason="timeout")
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        job.after(draw(gap)).terminated(0)
    return job.events


@st.composite
def job_retry_histories(draw: st.DrawFn) -> tuple[list[dict], int]:
    """One continuous or debounce instance's executions as the engine's retry executor tells them, and
    the failed attempts they come to: each failure retried is told (`willRetry`), and a run of retries
    ends in a success, in a failure not retried (its attempt told, and numbering starts again), or in
    exhausted retries (the last attempt told by nothing but the count), after which the instance is
    purged and the same id may be used again; or, as the seed guide draws it, a final `job.failed` and
    the exhaustion at once. Any gap of at least a millisecond between invocations; at most fifteen ends
    of runs of retries (what the fold keeps to place an event told late)."""
    kind = draw(st.sampled_from(["continuous", "debounce"]))
    job = JobRun("sync", kind)
    gap = st.integers(min_value=1, max_value=90_000)
    max_attempts = draw(st.integers(min_value=1, max_value=3))
    failed = 0
    for _incarnation in range(draw(st.integers(min_value=1, max_value=3))):
        if kind == "continuous":
            job.after(draw(gap)).started()
        run = 0
        for _execution in range(draw(st.integers(min_value=1, max_value=4))):
            run += 1
            retried = draw(st.integers(min_value=0, max_value=max_attempts))
            for attempt in range(1, retried + 1):
                job.after(draw(gap)).failed(run, attempt=attempt, will_retry=True)
            failed += retried
            ending = draw(st.sampled_from(["success", "success", "not retried", "exhausted", "guide"]))
            job.after(draw(gap))
            if ending == "success":
                job.executed(run, attempt=retried + 1)
                continue
            failed += 1
            if ending == "not retried":
                job.failed(run, attempt=retried + 1, will_retry=False)
                continue
            if ending == "guide":
                job.failed(run, attempt=retried + 1, will_retry=False)
            job.retry_exhausted(attempts=retried + 1)
            break  # purged: the next incarnation begins again
        else:
            if draw(st.booleans()):
                job.after(draw(gap)).terminated(run)
    return job.events, failed


_GAP = st.integers(min_value=0, max_value=5000)
_IDS = st.uuids().map(lambda u: u.hex)


@st.composite
def executions(draw: st.DrawFn) -> list[dict[str, str]]:
    """An execution as the runtime publishes it: moves, events submitted in a state, human tasks, a
    trigger that started it, and any ending — or none yet."""
    started_by = draw(st.booleans())
    events = [trigger("INBOUND_EMAIL_RECEIVED", from_="a@b.c")] if started_by else []
    # Ids drawn, not random: the ids break ties in time, and a failure found must be found again.
    run = Execution(draw(st.sampled_from(["onboarding", "claims"])), execution_id=f"exec-{draw(_IDS)}")
    initial = {"eventId": events[0]["event_id"]} if started_by else {}
    run.started(initial)
    tasks = 0
    for state in draw(st.lists(st.sampled_from(["review", "docs", "approval"]), max_size=4)):
        run.after(draw(_GAP))
        action = draw(st.sampled_from(["move", "submit", "task"]))
        if action == "move":
            run.moved(state, user=draw(st.sampled_from(["", "u-1"])))
        elif action == "submit":
            run.submitted("document_uploaded", user="u-2", kind=state)
        else:
            tasks += 1
            run.task_created(f"t-{tasks}", state)
            if draw(st.booleans()):
                run.after(draw(_GAP)).task_completed(f"t-{tasks}", to=draw(st.sampled_from([None, "approved"])))
    ending = draw(st.sampled_from(["completed", "failed", "cancelled", "open"]))
    if ending == "failed":
        run.after(draw(_GAP)).ended("failed", error="kyc rejected")
    elif ending != "open":
        run.after(draw(_GAP)).ended(ending)
    return events + run.events


@st.composite
def phase10_runs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A Phase-10 execution's messages."""
    return draw(phase10_executions()).events


@st.composite
def phase10_told_twice(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A Phase-10 execution's messages, and its timeline as the API answers once it has ended (fetched
    after a reconnect, with retries no message tells)."""
    run = draw(phase10_executions(ended=True))
    retries = draw(st.dictionaries(st.sampled_from([f"s{n}" for n in range(1, 5)]), st.integers(1, 3), max_size=2))
    return run.events, run.timeline(retries)


@st.composite
def phase10_mid_run(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A Phase-10 execution's messages, and its timeline as the API answered while it ran (fetched for a
    run first told of mid-way, whose start the stream no longer tells)."""
    snapshots: list[dict[str, Any]] = []
    run = draw(phase10_executions(snapshots=snapshots))
    return run.events, draw(st.sampled_from(snapshots)) if snapshots else run.timeline()


@st.composite
def phase10_executions(
    draw: st.DrawFn, ended: bool = False, snapshots: list[dict[str, Any]] | None = None
) -> Phase10Run:
    """A Phase-10 execution as its WebSocket tells it: steps that complete, fail or are skipped, and any
    ending — a cancellation with a step that goes on after it, or none yet. `snapshots`: its timeline
    as it stood at some of the moments between (for the caller to pick from)."""

    def maybe_fetched() -> None:
        if snapshots is not None and draw(st.booleans()):
            snapshots.append(run.timeline())

    steps = draw(st.integers(min_value=1, max_value=4))
    run = Phase10Run(draw(st.sampled_from(["nightly-report", "triage"])), execution_id=f"p10-exec-{draw(_IDS)}")
    run.started(steps)
    for n in range(1, steps + 1):
        maybe_fetched()
        outcome = draw(st.sampled_from(["completed", "completed", "failed", "skipped"]))
        if outcome == "skipped":
            run.after(draw(_GAP)).step_skipped(f"s{n}")
            continue
        run.after(draw(_GAP)).step_started(f"s{n}", f"step-{n}", n)
        maybe_fetched()
        run.after(draw(_GAP))
        if outcome == "completed":
            run.step_completed(f"s{n}", 0.5, rows=n)
        else:
            run.step_failed(f"s{n}", "boom", 0.3)
    endings = ["completed", "failed", "cancelled", "cancelled-then-completed", *([] if ended else ["open"])]
    ending = draw(st.sampled_from(endings))
    if ending == "completed":
        run.after(draw(_GAP)).completed()
    elif ending == "failed":
        run.after(draw(_GAP)).failed(draw(st.sampled_from([None, "agent crashed"])))
    elif ending.startswith("cancelled"):
        run.after(draw(_GAP)).cancelled()
        if ending == "cancelled-then-completed":  # the engine's cancel lets a running step finish
            run.after(draw(_GAP)).step_started("late", "late", steps + 1).after(draw(_GAP))
            run.step_completed("late", 0.1).after(1).completed()
    return run
