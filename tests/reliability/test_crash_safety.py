"""kill -9 at random points of a long stream loses nothing that was answered 2xx."""

import random
import time

import httpx
import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun, ns_of

from otel_bridge import trace_id_for

RUNS = 30


def _invocations(i: int) -> list[list[dict]]:
    """A workflow as the engine's tracker posts it: one batch per invocation."""
    run = WorkflowRun(f"flow{i % 4}", workflow_id=f"crash-{i:04d}", service="shop").started()
    run.after(2).step_started("reserve").after(8).step_completed("reserve")
    run.after(1).step_started("charge", 1).after(12).retry_scheduled("charge", 1, delay_ms=800)
    run.paused("retry", step="charge")
    first = len(run.events)
    run.after(800).resumed().step_started("charge", 2).after(9).step_completed("charge", 2)
    run.after(1).sleep_started(5000).paused("sleep")
    second = len(run.events)
    run.after(5000).resumed().sleep_completed(5000).step_started("notify").after(3).step_completed("notify")
    run.completed(["reserve", "charge", "notify"])
    return [run.events[:first], run.events[first:second], run.events[second:]]


def _post_until_accepted(bridge: BridgeProcess, batch: list[dict], deadline_batches: int = 400) -> None:
    """Re-send the identical batch on any failure, like the engine's tracker (without its give-up)."""
    for _ in range(deadline_batches):
        try:
            response = bridge.post(batch)
            if response.status_code == 200:
                assert response.json()["rejected"] == []
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("batch never accepted")


@pytest.mark.parametrize(("store", "seed"), [("sqlite", 1), ("sqlite", 2), ("sqlite", 3), ("redis", 4)])
def test_random_kills_lose_no_accepted_event_and_every_trace_is_whole(request, tmp_path, otlp_http, store, seed):
    rng = random.Random(seed)
    runs = [_invocations(i) for i in range(RUNS)]
    # Interleave invocations of different runs, as concurrent workflows do.
    schedule = [(i, n) for i in range(RUNS) for n in range(3)]
    schedule.sort(key=lambda item: (item[1], rng.random()))
    settings = {}
    if store == "redis":
        # Its own database of the test server, and spans a killed process had taken are reclaimed fast.
        settings = {"state": request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/9", "claim_after_seconds": "1"}
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint, **settings).start()
    kills = 0
    try:
        for position, (i, n) in enumerate(schedule):
            _post_until_accepted(bridge, runs[i][n])
            if rng.random() < 0.08 or position == len(schedule) // 2:
                bridge.kill()  # SIGKILL: no drain, no flush
                kills += 1
                bridge.start()
        got = otlp_http.received
        got.wait_for(lambda: sum(1 for s in got.unique_spans().values() if not s.parent_span_id) == RUNS, 60)
        got.wait_for(lambda: len(got.unique_spans()) == RUNS * 6, 30)
    finally:
        bridge.close()
    assert kills >= 2
    events = sum(len(batch) for run in runs for batch in run)
    print(f"\ncrash safety ({store}) seed {seed}: {kills} kill -9, {len(schedule)} batches, {events} events, 0 lost")

    spans = got.unique_spans().values()
    for i in range(RUNS):
        trace_id = trace_id_for("durable-effect", "production", "shop", f"crash-{i:04d}").hex()
        trace = [s for s in spans if s.trace_id == trace_id]
        assert sorted((s.name, s.attributes.get("workflow.task.attempt")) for s in trace) == [
            ("sleep", None),
            ("step charge", 1),
            ("step charge", 2),
            ("step notify", 1),
            ("step reserve", 1),
            (f"workflow flow{i % 4}", None),
        ]
        root = next(s for s in trace if not s.parent_span_id)
        assert root.status_code == 1
        assert root.start_ns == ns_of(runs[i][0][0])
        assert [name for name, _t, _a in root.events].count("workflow.resumed") == 2
        assert all(s.parent_span_id == root.span_id for s in trace if s is not root)
