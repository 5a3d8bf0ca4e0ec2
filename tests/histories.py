"""Hypothesis strategies of whole event histories, for the properties the correlate stage keeps."""

from builders import WorkflowRun
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
