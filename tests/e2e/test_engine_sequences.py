"""The durable-effect engine's real sequences (PRODUCER_FACTS.md), one POST per invocation,
through `otel-bridge serve` to a real OTLP receiver: the traces and metrics tell what ran."""

import time
from collections.abc import Iterator

import pytest
from bridge_process import BridgeProcess
from builders import JobRun, WorkflowRun, ns_of

from otel_bridge import trace_id_for

ERROR = 2
TIMEOUT_STACK = "WorkflowTimeoutError: Step 'slow' timed out after 0ms\n    at Timeout._onTimeout (executor.js:88:19)"


@pytest.fixture
def bridge(tmp_path, otlp_http) -> Iterator[tuple[BridgeProcess, object]]:
    process = BridgeProcess(tmp_path, otlp_http.endpoint, gap_grace_seconds="4").start()
    yield process, otlp_http.received
    process.close()


def _trace(run: WorkflowRun) -> str:
    return trace_id_for("durable-effect", run.base["env"], run.base["serviceKey"], run.workflow_id).hex()


def _root(got, run: WorkflowRun):
    got.wait_for(lambda: any(s.parent_span_id == "" for s in got.trace(_trace(run))))
    return next(s for s in got.trace(_trace(run)) if s.parent_span_id == "")


def test_the_engines_sequences_give_the_traces_and_metrics_of_what_ran(bridge):
    process, got = bridge

    # 1. Retries exhausted: workflow.failed does not name the step; the facts do.
    exhausted = WorkflowRun("payout", service="facts").started().step_started("charge", 1).after(10)
    exhausted.retry_scheduled("charge", 1).paused("retry", step="charge")
    exhausted_alarm = len(exhausted.events)
    exhausted.after(1000).resumed().step_started("charge", 2).after(10).retry_exhausted("charge", 2)
    exhausted.failed("gateway down")

    # 2. A sleep restarted after an eviction.
    sleeper = WorkflowRun("drip", service="facts").started().sleep_started(60_000).paused("sleep")
    restart = len(sleeper.events)
    sleeper.after(10_000).resumed().sleep_started(50_000).paused("sleep", resume_in_ms=50_000)
    wake = len(sleeper.events)
    sleeper.after(50_000).resumed().sleep_completed(60_000).step_started("send").after(3).step_completed("send")
    sleeper.completed(["send"])

    # 4. A timeout fired mid-step.
    timed = WorkflowRun("report", service="facts").started().step_started("slow").timeout_set("slow", 1)
    timed.after(1).step_failed("slow", 1, message="timed out after 0ms", stack=TIMEOUT_STACK)
    timed.failed("timed out after 0ms", stack=TIMEOUT_STACK)

    # 3. A job whose retries run out: the last failure is told only by the attempt count.
    job = JobRun("sync", "continuous", service="facts").started()
    job.after(1000).failed(1, attempt=1).after(1000).failed(1, attempt=2).after(1000).retry_exhausted(attempts=3)

    invocations = [
        exhausted.events[:exhausted_alarm],
        exhausted.events[exhausted_alarm:],
        sleeper.events[:restart],
        sleeper.events[restart:wake],
        sleeper.events[wake:],
        timed.events,
        job.events[:1],
        job.events[1:2],
        job.events[2:],
    ]
    for batch in invocations:
        response = process.post(batch)
        assert response.status_code == 200 and response.json()["rejected"] == [], response.text

    root = _root(got, exhausted)
    assert root.status_code == ERROR
    assert root.attributes["workflow.task.name"] == "charge"

    _root(got, sleeper)
    sleep_spans = [s for s in got.trace(_trace(sleeper)) if s.name == "sleep"]
    assert len(sleep_spans) == 1
    assert (sleep_spans[0].start_ns, sleep_spans[0].end_ns) == (
        ns_of(sleeper.events[1]),
        ns_of(sleeper.events[wake + 1]),
    )
    assert [name for name, _t, _a in sleep_spans[0].events] == ["sleep.restarted"]

    timed_root = _root(got, timed)
    assert timed_root.attributes["workflow.execution.result"] == "timeout"
    (attempt,) = [s for s in got.trace(_trace(timed)) if s.name == "step slow"]
    assert attempt.attributes["error.type"] == "timeout"

    got.wait_for(lambda: got.metric("workflow.execution.errors", **{"workflow.task.name": "slow"}))
    got.wait_for(lambda: got.metric("workflow.sleep.duration", **{"workflow.definition.name": "drip"}))
    assert got.metric("workflow.execution.errors", **{"workflow.task.name": "charge"})[0]["value"] == 1
    assert got.metric("workflow.execution.errors", **{"workflow.task.name": ""}) == []
    assert got.metric("workflow.task.timeouts", **{"workflow.task.name": "slow"})[0]["value"] == 1
    assert got.metric("workflow.sleep.duration", **{"workflow.definition.name": "drip"})[0]["count"] == 1
    assert got.metric("workflow.sleep.duration", **{"workflow.definition.name": "drip"})[0]["sum"] == 60
    got.wait_for(lambda: got.metric("job.retry.exhausted", **{"job.name": "sync"}))
    assert got.metric("job.executions", **{"job.name": "sync", "job.execution.result": "failure"})[0]["value"] == 3
    assert got.metric("job.instance.active", **{"job.name": "sync"})[0]["value"] == 0


def test_a_run_whose_start_arrives_after_its_steps_starts_at_workflow_started(bridge):
    process, got = bridge
    run = WorkflowRun("late-start", service="facts").started().after(2).step_started("a").after(5)
    run.step_completed("a").completed(["a"])
    assert process.post(run.events[1:]).status_code == 200
    time.sleep(1.0)  # well past the settle window (0.2 s), inside the gap grace
    assert process.post(run.events[:1]).status_code == 200
    assert _root(got, run).start_ns == ns_of(run.events[0])
