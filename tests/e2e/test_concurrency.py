"""Concurrent producers: batches of many runs, shuffled and sent from several threads at once."""

import random
from concurrent.futures import ThreadPoolExecutor

from bridge_process import BridgeProcess
from builders import WorkflowRun

from otel_bridge import trace_id_for


def _run(i: int) -> WorkflowRun:
    run = WorkflowRun(f"flow{i % 3}", service="shop").started()
    run.after(1).step_started("a").after(10).retry_scheduled("a", 1).after(100).step_started("a", 2)
    run.after(5).step_completed("a", 2).after(1).sleep_started(50).after(50).sleep_completed(50)
    run.step_started("b").after(3).step_completed("b").completed(["a", "b"])
    return run


def test_shuffled_batches_from_concurrent_requests_give_every_run_its_full_trace(tmp_path, otlp_http):
    runs = [_run(i) for i in range(60)]
    events = [e for run in runs for e in run.events]
    random.Random(3).shuffle(events)
    batches = [events[i : i + 25] for i in range(0, len(events), 25)]
    # The default settle window: concurrent batches of one run arrive well within a second.
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, settle_seconds="1").start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: bridge.post(b).json(), batches))
        assert sum(a["accepted"] for a in answers) == len(events)
        got = otlp_http.received
        got.wait_for(lambda: len(got.spans) == 5 * len(runs), timeout=30)
    finally:
        bridge.close()
    for run in runs:
        spans = got.trace(trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex())
        assert sorted((s.name, s.attributes.get("workflow.task.attempt")) for s in spans) == [
            ("sleep", None),
            ("step a", 1),
            ("step a", 2),
            ("step b", 1),
            (f"workflow {run.base['workflowName']}", None),
        ]
        root = next(s for s in spans if not s.parent_span_id)
        assert root.start_ns < min(s.start_ns for s in spans if s is not root) + 1
        assert all(s.parent_span_id == root.span_id for s in spans if s is not root)
