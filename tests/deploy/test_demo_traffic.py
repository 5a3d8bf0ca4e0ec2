"""`otel-bridge demo` through a real bridge and OTLP receiver: every scenario it claims is a well-formed trace."""

import re
import time
from collections import defaultdict

import httpx
import pytest
from bridge_process import BridgeProcess

from otel_bridge import trace_id_for
from otel_bridge.producer.demo import ENV, INCIDENTS, SCENARIOS, SKEWED_SERVICE, WORKFLOW_SERVICE, run_demo
from otel_bridge.producer.events import ns_of

OK, ERROR, UNSET = 1, 2, 0
JOB_SCENARIOS = {"continuous-job", "debounce-job", "task-job", "task-cancelled", "job-exhausted"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from otlp_receiver import OtlpHttpReceiver

    receiver = OtlpHttpReceiver()
    # The application's own spans go to the same receiver, as the stack sends both to its Collector.
    environ = pytest.MonkeyPatch()
    environ.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    environ.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    bridge = BridgeProcess(tmp_path_factory.mktemp("demo"), receiver.endpoint, gap_grace_seconds="1").start()
    workflows: dict[str, list[str]] = defaultdict(list)

    def remember(name: str, invocations: list[list[dict]]) -> None:
        if name not in JOB_SCENARIOS:
            workflows[name].append(invocations[0][0]["workflowId"])

    summary = run_demo(f"{bridge.url}/v1/events", rate=4, duration=6, seed=5, on_scenario=remember, app_spans=True)
    environ.undo()
    got = receiver.received
    expected_roots = sum(len(ids) for ids in workflows.values())
    got.wait_for(lambda: sum(1 for s in got.unique_spans().values() if not s.parent_span_id) == expected_roots, 30)
    got.wait_for(lambda: got.metric("job.retry.exhausted") and got.metric("job.task.schedule.delay"), 10)
    yield summary, workflows, got
    bridge.close()
    receiver.close()


def _application(span) -> bool:
    """A span of the demo application's own tracer (its SDK names itself in the resource), not the bridge's."""
    return "telemetry.sdk.name" in span.resource


def _trace(got, workflow_id: str):
    trace_id = trace_id_for("durable-effect", ENV, WORKFLOW_SERVICE, workflow_id).hex()
    spans = [s for s in got.unique_spans().values() if s.trace_id == trace_id and not _application(s)]
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, f"{workflow_id}: {len(roots)} roots"
    root = roots[0]
    for span in spans:
        assert span.start_ns <= span.end_ns
        if span is not root:
            assert span.parent_span_id == root.span_id
            assert root.start_ns <= span.start_ns and span.end_ns <= root.end_ns, span.name
    steps: dict[str, dict[int, object]] = defaultdict(dict)
    for span in spans:
        if span.name.startswith("step "):
            steps[span.name[5:]][span.attributes["workflow.task.attempt"]] = span
    return root, steps, spans


def test_the_demo_ran_every_scenario_without_losing_events(demo):
    summary, workflows, _got = demo
    assert set(summary["scenarios"]) == set(SCENARIOS)
    assert summary["dropped_events"] == 0 and summary["rejected_events"] == 0
    assert set(workflows) == set(SCENARIOS) - JOB_SCENARIOS


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - JOB_SCENARIOS))
def test_every_workflow_scenario_is_a_well_formed_trace(demo, scenario):
    _summary, workflows, got = demo
    for workflow_id in workflows[scenario]:
        root, steps, spans = _trace(got, workflow_id)
        events = [name for name, _t, _a in root.events]
        result = root.attributes.get("workflow.execution.result")
        if scenario == "success":
            assert root.status_code == OK and len(steps) == 4
            assert all(s.status_code == OK for attempts in steps.values() for s in attempts.values())
        elif scenario in ("retry", "retry-as-guide-draws-it"):
            step = steps["capture" if scenario == "retry" else "pushInvoice"]
            assert (step[1].status_code, step[2].status_code) == (ERROR, OK)
            assert step[2].links == [(step[1].trace_id, step[1].span_id)]
            assert "retry.scheduled" in events and "workflow.paused" in events
        elif scenario == "exhausted":
            assert sorted(steps["capture"]) == [1, 2, 3]
            assert steps["capture"][3].status_message == "card declined"
            assert root.status_code == ERROR and root.attributes["error.type"] == "CardDeclinedError"
            assert "retry.exhausted" in events
        elif scenario == "failure":
            assert root.status_code == ERROR and steps["purgeRecords"][1].status_code == ERROR
        elif scenario == "sleep":
            assert [s.name for s in spans].count("sleep") == 1
            assert {"sleep.started", "sleep.completed", "workflow.paused", "workflow.resumed"} <= set(events)
        elif scenario == "cancel":
            assert result == "cancellation" and root.status_code == UNSET
            assert steps["bookCarrier"][1].attributes["workflow.task.result"] == "interrupted"
        elif scenario == "timeout":
            assert result == "timeout" and "timeout.exceeded" in events and "timeout.set" in events
        elif scenario == "queued":
            assert events[0] == "workflow.queued" and root.start_ns == root.events[0][1]
        elif scenario == "cached-replay":
            assert "step.cached" in events and len(steps["charge"]) == 1
        elif scenario == "evicted":
            assert root.status_code == OK and sorted(steps["pull"]) == [2]


def test_the_applications_own_spans_sit_inside_the_attempts_they_were_started_under(demo):
    _summary, _workflows, got = demo
    spans = got.unique_spans().values()
    attempts = {s.span_id: s for s in spans if s.name.startswith("step ") and not _application(s)}
    calls = [s for s in spans if _application(s)]
    assert {c.name for c in calls} >= {"POST /v1/charges", "POST /v1/payment_intents/capture"}
    for call in calls:
        attempt = attempts[call.parent_span_id]  # under the very attempt, in the run's trace
        assert call.trace_id == attempt.trace_id
        assert attempt.start_ns <= call.start_ns <= call.end_ns <= attempt.end_ns
        assert (call.status_code == ERROR) == (attempt.status_code == ERROR), attempt.name
    # Each checkout's card charge has its call, and every call found its attempt.
    charges = [s for s in attempts.values() if s.name == "step chargeCard"]
    assert charges and len(charges) == sum(1 for c in calls if c.name == "POST /v1/charges")


def test_job_scenarios_become_metrics(demo):
    _summary, _workflows, got = demo
    assert got.metric("job.executions", **{"job.name": "tokenRefresher", "job.execution.result": "success"})
    assert got.metric("job.executions", **{"job.name": "tokenRefresher", "job.execution.result": "failure"})
    assert got.metric("job.terminations", **{"job.name": "tokenRefresher"})
    assert got.metric("job.debounce.flush.size", **{"job.name": "webhookBatcher"})
    assert got.metric("job.task.scheduled", **{"job.name": "reminderSender"})
    assert got.metric(
        "job.retry.exhausted", **{"job.name": "ledgerReconcile", "job.retry.exhausted.reason": "max_attempts"}
    )


def test_the_demos_incidents_turn_overdue_where_the_alerts_and_the_listings_look(tmp_path, otlp_http):
    # Its tasks past their time are no incident: the reminder that cleared itself, the order timeout its
    # payment cancelled (though the settings name it), the delivery check run on time.
    bridge = BridgeProcess(
        tmp_path,
        otlp_http.endpoint,
        overdue_grace_seconds="1",
        overdue_tasks="orderTimeout",
        silent_executing="catalogImport=1s",
        silent_continuous="tokenRefresher=2s",
    )
    bridge.start()
    try:
        due: list[float] = []  # when each task was scheduled to run, in Unix seconds
        skewed: list[dict] = []  # the events of the producer whose clock runs ahead

        def scheduled(name: str, invocations: list[list[dict]]) -> None:
            told = [e["scheduledAt"] for batch in invocations for e in batch if e["type"] == "task.scheduled"]
            due.extend(ns_of({"timestamp": at}) / 1e9 for at in told)
            if name == "clock-ahead":
                skewed.extend(e for batch in invocations for e in batch)

        summary = run_demo(f"{bridge.url}/v1/events", rate=8, duration=5, seed=3, incidents=0.5, on_scenario=scheduled)
        assert set(summary["scenarios"]) >= set(INCIDENTS) | {"task-job", "task-cancelled"}
        assert summary["dropped_events"] == 0 and summary["rejected_events"] == 0

        def counted(metric: str, name_label: str, name: str) -> float:
            text = httpx.get(f"{bridge.url}/metrics", timeout=5).text
            found = re.findall(rf'^{metric}\{{[^}}]*{name_label}="{name}"[^}}]*\}} ([0-9.]+)$', text, re.M)
            return sum(float(v) for v in found)

        lost = summary["scenarios"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            counted("workflow_execution_overdue", "workflow_definition_name", "nightlyReport")
            == lost["lost-sleep-alarm"]
            and counted("workflow_execution_overdue", "workflow_definition_name", "catalogImport")
            == lost["died-mid-step"]
            and counted("job_instance_overdue", "job_name", "digestMailer") == lost["lost-flush-alarm"]
            and counted("job_instance_overdue", "job_name", "tokenRefresher") == lost["lost-continuous-alarm"]
        ):
            time.sleep(0.2)
        assert (
            counted("workflow_execution_overdue", "workflow_definition_name", "nightlyReport")
            == lost["lost-sleep-alarm"]
        )
        assert (
            counted("workflow_execution_overdue", "workflow_definition_name", "catalogImport") == lost["died-mid-step"]
        )
        assert counted("workflow_execution_overdue", "workflow_execution_state", "executing") == lost["died-mid-step"]
        assert counted("job_instance_overdue", "job_name", "tokenRefresher") == lost["lost-continuous-alarm"]
        assert counted("job_instance_overdue", "job_name", "digestMailer") == lost["lost-flush-alarm"]
        time.sleep(max(max(due) + 1 + 2 - time.time(), 0))  # every task's time and grace passed, and a count
        listed = httpx.get(f"{bridge.url}/v1/jobs", params={"overdue": "true"}, timeout=5).json()
        assert listed["count"] == lost["lost-flush-alarm"] + lost["lost-continuous-alarm"]
        assert {job["name"] for job in listed["jobs"]} == {"digestMailer", "tokenRefresher"}
        assert counted("job_instance_overdue", "job_type", "task") == 0
        # Posted as they happened, timestamped two hours on: each counted under its producer, no other's.
        assert skewed and all(ns_of(e) / 1e9 > time.time() + 3600 for e in skewed)
        assert counted("otel_bridge_producer_events_ahead_total", "service_name", SKEWED_SERVICE) == len(skewed)
        assert counted("otel_bridge_producer_events_ahead_total", "service_name", WORKFLOW_SERVICE) == 0
    finally:
        bridge.close()
