"""Hypothesis strategies of whole event histories, for the properties the correlate stage keeps."""

from builders import JobRun, WorkflowRun
from hypothesis import strategies as st


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
