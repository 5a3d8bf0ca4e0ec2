"""Duplicates change nothing, before or after a restart; late and never-ending runs are visible."""

import re
import time
from datetime import UTC, datetime

import httpx
from bridge_process import BridgeProcess
from builders import JobRun, WorkflowRun

from otel_bridge import trace_id_for


def _metric(bridge: BridgeProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{bridge.url}/metrics").text
    total = 0.0
    for label_text, value in re.findall(rf"^{name}{{([^}}]*)}} ([0-9.e+-]+)$", text, re.M):
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def test_the_same_events_any_number_of_times_across_a_restart_count_once(tmp_path, otlp_http):
    run = WorkflowRun("dup").started().step_started("a").after(5).retry_scheduled("a", 1).after(100)
    run.step_started("a", 2).after(5).step_completed("a", 2).completed()
    job = JobRun("dedup-job").started().executed(1, duration_ms=10)
    events = run.events + job.events
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        assert bridge.post(events).json()["accepted"] == len(events)
        assert bridge.post(events + events[:3]).json()["duplicates"] == len(events) + 3
        assert bridge.stop()
        bridge.start()
        assert bridge.post(list(reversed(events))).json() == {
            "accepted": 0,
            "duplicates": len(events),
            "late": 0,
            "rejected": [],
        }
        assert _metric(bridge, "job_executions_total", job_name="dedup-job") == 0  # counted before the restart
        assert bridge.post(JobRun("dedup-job").executed(2).events).status_code == 200
        assert _metric(bridge, "job_executions_total", job_name="dedup-job") == 1
        assert _metric(bridge, "otel_bridge_events_duplicate_total") == len(events)
    finally:
        bridge.close()
    got = otlp_http.received
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    got.wait_for(lambda: len(got.trace(trace_id)) >= 3)
    root = next(s for s in got.unique_spans().values() if s.trace_id == trace_id and not s.parent_span_id)
    assert [name for name, _t, _a in root.events] == ["retry.scheduled"]
    assert len(got.trace(trace_id)) == 3
    assert got.metric("workflow.task.retries", **{"workflow.definition.name": "dup"})[0]["value"] == 1


def test_re_emitted_facts_under_new_event_ids_are_duplicates_too(tmp_path, otlp_http):
    run = WorkflowRun("reexec").started().step_started("a")
    again = WorkflowRun("reexec", workflow_id=run.workflow_id, start=run.now).after(50).step_started("a")
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        bridge.post(run.events)
        assert bridge.post(again.events).json()["duplicates"] == 1
    finally:
        bridge.close()


def test_late_events_and_never_ending_runs_show_on_metrics(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, max_open_seconds="1").start()
    try:
        forever = WorkflowRun("forever").started().step_started("wait")
        assert bridge.post(forever.events).status_code == 200
        got = otlp_http.received
        got.wait_for(lambda: any(s.attributes.get("workflow.execution.incomplete") for s in got.spans))
        assert _metric(bridge, "otel_bridge_runs_incomplete_total") == 1
        root = next(s for s in got.spans if not s.parent_span_id)
        assert root.attributes["workflow.execution.incomplete"] is True

        late = WorkflowRun("forever", workflow_id=forever.workflow_id, start=forever.now).after(10)
        answer = bridge.post(late.step_completed("wait").events).json()
        assert (answer["accepted"], answer["late"]) == (0, 1)
        assert _metric(bridge, "otel_bridge_events_late_total") == 1
        time.sleep(0.5)
        assert len([s for s in got.spans if s.trace_id == root.trace_id]) == 2  # nothing new was sent
        assert "late event" in bridge.log.read_text()
    finally:
        bridge.close()


def test_a_run_asleep_past_max_open_stays_open_and_its_waking_joins_its_trace(tmp_path, otlp_http):
    # max_open a second, the sleep four: a month's sleep against a week's max_open, as serve runs it.
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, max_open_seconds="1").start()
    try:
        asleep = WorkflowRun("nap", start=datetime.now(UTC)).started().step_started("a").after(5).step_completed("a")
        assert bridge.post(asleep.sleep_started(4000).paused("sleep", resume_in_ms=4000).events).status_code == 200
        got = otlp_http.received
        got.wait_for(lambda: any(s.name == "step a" for s in got.spans))
        time.sleep(2)  # past max_open: the run was closed incomplete here
        assert _metric(bridge, "otel_bridge_runs_incomplete_total") == 0
        woke = WorkflowRun("nap", workflow_id=asleep.workflow_id, start=asleep.now).after(4000).resumed()
        woke.sleep_completed(4000).completed(["a"])
        assert bridge.post(woke.events).json() == {"accepted": 3, "duplicates": 0, "late": 0, "rejected": []}
        got.wait_for(lambda: any(not s.parent_span_id for s in got.spans))
        root = next(s for s in got.spans if not s.parent_span_id)
        assert root.status_code == 1 and "workflow.execution.incomplete" not in root.attributes  # OK, whole
        assert {s.name for s in got.spans if s.trace_id == root.trace_id} == {"workflow nap", "step a", "sleep"}
    finally:
        bridge.close()


def test_a_task_scheduled_past_the_memory_of_ids_is_still_awaited_and_turns_overdue(tmp_path, otlp_http):
    # dedup_ttl three seconds, the task due in two and a half (overdue a second later): a month's schedule
    # against a week's memory. Forgotten at three seconds, it never turned overdue.
    bridge = BridgeProcess(
        tmp_path, otlp_http.endpoint, dedup_ttl_seconds="3", overdue_grace_seconds="1", overdue_tasks="reminder"
    ).start()
    try:
        task = JobRun("reminder", "task", start=datetime.now(UTC)).task_scheduled(in_ms=2500)
        assert bridge.post(task.events).json()["accepted"] == 1
        time.sleep(3)
        assert _metric(bridge, "job_instance_active") == 0  # a task is never counted active: kept for its schedule
        deadline = time.monotonic() + 5
        while _metric(bridge, "job_instance_overdue", job_name="reminder") != 1:
            assert time.monotonic() < deadline, "the task's lost alarm never showed"
            time.sleep(0.1)
    finally:
        bridge.close()


def test_the_dedup_memory_forgets_after_its_time_to_live(tmp_path, otlp_http):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, dedup_ttl_seconds="1").start()
    try:
        events = JobRun("ttl-job").executed(1).events
        assert bridge.post(events).json()["accepted"] == 1
        assert bridge.post(events).json()["duplicates"] == 1
        time.sleep(2.5)
        assert bridge.post(events).json()["accepted"] == 1  # remembered no longer: memory stays bounded
    finally:
        bridge.close()
