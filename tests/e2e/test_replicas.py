"""Several bridge replicas behind a load balancer, sharing Redis, build one coherent trace per run; several bridges
telling one producer's metrics each write a stream of their own."""

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
from bridge_process import BridgeProcess
from builders import JobRun, WorkflowRun, ns_of

from otel_bridge import trace_id_for

_databases = itertools.count(1)


def _invocations(i: int) -> list[list[dict]]:
    run = WorkflowRun("replicated", workflow_id=f"rep-{i:03d}").started().step_started("a").after(10)
    run.retry_scheduled("a", 1, delay_ms=300).paused("retry", step="a")
    first = len(run.events)
    run.after(300).resumed().step_started("a", 2).after(5).step_completed("a", 2)
    run.sleep_started(200).paused("sleep")
    second = len(run.events)
    run.after(200).resumed().sleep_completed(200).step_started("b").after(3).step_completed("b").completed(["a", "b"])
    return [run.events[:first], run.events[first:second], run.events[second:]]


def test_invocations_spread_over_two_replicas_make_whole_traces_even_when_one_is_killed(tmp_path, otlp_http, redis_url):
    state = redis_url.rsplit("/", 1)[0] + f"/{next(_databases)}"
    replicas = [
        BridgeProcess(tmp_path / name, otlp_http.endpoint, state=state, claim_after_seconds="2") for name in ("a", "b")
    ]
    for replica in replicas:
        replica.workdir.mkdir()
        replica.env["OTEL_BRIDGE_DEAD_LETTER"] = str(replica.workdir / "dead.jsonl")
        replica.start()
    runs = [_invocations(i) for i in range(40)]
    rng = random.Random(4)

    def post_anywhere(batch: list[dict]) -> None:
        # The load balancer: any replica; if it is gone, the producer's re-send lands on the other.
        for replica in rng.sample(replicas, 2) * 3:
            try:
                if replica.proc is not None and replica.post(batch).status_code == 200:
                    return
            except httpx.HTTPError:
                continue
        raise AssertionError("no replica took the batch")

    try:
        for n in range(3):
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(post_anywhere, [run[n] for run in runs]))
            if n == 1:
                replicas[0].kill()  # -9 in the middle: replica b carries on alone
        got = otlp_http.received
        got.wait_for(lambda: len(got.unique_spans()) == 40 * 5, timeout=60)
    finally:
        for replica in replicas:
            replica.close()

    spans = got.unique_spans().values()  # raises if a span id ever came with two different contents
    for i, run in enumerate(runs):
        trace_id = trace_id_for("durable-effect", "production", "shop", f"rep-{i:03d}").hex()
        trace = [s for s in spans if s.trace_id == trace_id]
        assert sorted((s.name, s.attributes.get("workflow.task.attempt")) for s in trace) == [
            ("sleep", None),
            ("step a", 1),
            ("step a", 2),
            ("step b", 1),
            ("workflow replicated", None),
        ]
        root = next(s for s in trace if not s.parent_span_id)
        assert root.start_ns == ns_of(run[0][0])
        assert [name for name, _t, _a in root.events].count("workflow.resumed") == 2


def test_two_bridges_telling_one_producers_metrics_over_otlp_write_two_streams_a_backend_can_sum(tmp_path, otlp_http):
    # The sidecars of two pods of one service (or two replicas, or two processes with an in-process tracker):
    # each writes the producer's cumulative series. Alike in resource and attributes, a backend read them as
    # one stream going up and down (the receiver kept whichever came last); each now carries its writer.
    bridges = [BridgeProcess(tmp_path / name, otlp_http.endpoint, OTEL_METRICS_EXPORTER="otlp") for name in "ab"]
    try:
        for n, bridge in enumerate(bridges, start=1):
            bridge.workdir.mkdir()
            bridge.start()
            job = JobRun("tokenRefresher", service="shop", env="prod", start=datetime.now(UTC)).started()
            for _ in range(n):
                job.after(10).executed(1, duration_ms=20)
            assert bridge.post(job.events).status_code == 200
        got = otlp_http.received

        def told() -> dict[str, float]:
            name = "job.executions"
            with got.lock:
                return {
                    dict(resource).get("service.instance.id", ""): point["value"]
                    for (n, resource, _attributes), point in got.metrics.items()
                    if n == name and dict(resource)["service.name"] == "shop"
                }

        got.wait_for(lambda: sorted(told().values()) == [1, 2])
        writers = told()
        assert "" not in writers and len(writers) == 2
        own = {
            dict(resource)["service.instance.id"] for (n, resource, _a) in got.metrics if n.startswith("otel_bridge")
        }
        assert set(writers) == own  # each bridge's own id, as its own telemetry carries it
    finally:
        for bridge in bridges:
            bridge.close()
