"""A run that grows big: the cost of each batch must not grow with the run it lands in.

    python benchmarks/big_run.py [--attempts 10000] [--batch 5000] [--baseline DIR]

One workflow polls a step 10,000 times (each attempt a start and a failure that will be
retried), posted to `otel-bridge serve` (SQLite) in batches of 5,000 events, one after the
other. Prints how long each POST took to be answered; then, once those attempts were settled
(sent), the median answer to POSTs into the same run of one invocation of the poller each, as the
engine tells it (woken, the attempt, its retry scheduled, paused: 4 events), which is what a long
run's producer waits on. With `--baseline DIR` the same
against another checkout of otel-bridge, for the before/after of the same run.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bridge_process import BridgeProcess

from otel_bridge.producer.events import WorkflowRun


def post_times(events: list[dict], batch: int, tree: str | None, small: list[list[dict]]) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as tmp:
        bridge = BridgeProcess(Path(tmp), "http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none",
                               OTEL_METRICS_EXPORTER="none", log_level="WARNING", settle_seconds="1")  # fmt: skip
        if tree is not None:
            bridge.env["PYTHONPATH"] = tree
            bridge.cwd = tree
        bridge.start()
        times = []
        try:
            with httpx.Client(timeout=600) as http:
                for i in range(0, len(events), batch):
                    body = orjson.dumps({"events": events[i : i + batch]})
                    started = time.perf_counter()
                    response = http.post(f"{bridge.url}/v1/events", content=body)
                    times.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                time.sleep(2.5)  # settled: its attempts' spans sent
                answers = []
                for events_ in small:
                    started = time.perf_counter()
                    response = http.post(f"{bridge.url}/v1/events", content=orjson.dumps({"events": events_}))
                    answers.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
        finally:
            bridge.close()
    return times, statistics.median(answers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--baseline", help="another checkout of otel-bridge to measure the same way")
    args = parser.parse_args()
    run = WorkflowRun("poller").started()
    for n in range(1, args.attempts + 1):
        run.step_started("poll", n).after(1).step_failed("poll", n, will_retry=True)
    events = run.events[: 2 * args.attempts]
    small = []
    for attempt in range(args.attempts + 1, args.attempts + 51):
        first = len(run.events)
        run.after(1000).resumed().step_started("poll", attempt).after(1).retry_scheduled("poll", attempt)
        small.append(run.paused("retry", step="poll").events[first:])
    rows = [("otel-bridge", post_times(events, args.batch, None, small))]
    if args.baseline:
        rows.insert(0, ("baseline", post_times(events, args.batch, args.baseline, small)))
    print(f"one run, {args.attempts:,} attempts, POSTs of {args.batch:,} events, one after the other;")
    print("then 50 POSTs of one invocation (4 events) into the same run, once it was settled: their median answer")
    for name, (times, answer) in rows:
        print(f"{name:<14}" + "".join(f"{t:>9.2f} s" for t in times) + f"   invocation POST {answer * 1000:.2f} ms")


if __name__ == "__main__":
    main()
