"""Open runs that have done something: memory while many long workflows are under way.

    python benchmarks/busy_runs.py [--runs 20000] [--steps 20]

`open_runs.py` keeps a million runs that only started. Here every run has finished `--steps` steps
(two facts each) and goes on: the runs kept in memory between batches hold all their facts. One
`otel-bridge serve` subprocess (SQLite state, exporters off) takes them in POSTs of 100 from 2
clients, a batch per step of a hundred runs at a time, as producers would send them; printed side
by side: the bridge as it is (`hot_facts`, 150,000 facts kept in memory at most), and the same
bridge with the runs in memory counted alone (`hot_facts` past anything this load reaches: as
every version before), peak RSS and events per CPU-second of the bridge process.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bridge_process import BridgeProcess
from sidecar_cpu import cpu_seconds, peak_rss_mib, post_all

from otel_bridge.producer.events import WorkflowRun


def bodies(runs: int, steps: int) -> list[bytes]:
    """A hundred runs at a time: their starts, then each of their steps in turn."""
    out = []
    for first in range(0, runs, 100):
        group = [WorkflowRun("long-job", workflow_id=f"busy-{n:09d}") for n in range(first, min(first + 100, runs))]
        out.append(orjson.dumps({"events": [run.started().last() for run in group]}))
        for step in range(steps):
            events = []
            for run in group:
                run.after(10).step_started(f"item-{step}").after(10).step_completed(f"item-{step}")
                events += run.events[-2:]
            for start in range(0, len(events), 100):
                out.append(orjson.dumps({"events": events[start : start + 100]}))
    return out


def measure(runs: int, steps: int, hot_facts: int) -> tuple[float, float, int]:
    posts = bodies(runs, steps)
    events = runs * (1 + 2 * steps)
    with tempfile.TemporaryDirectory() as tmp:
        bridge = BridgeProcess(
            Path(tmp), "http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none",
            OTEL_BRIDGE_HOT_FACTS=str(hot_facts), log_level="WARNING", settle_seconds="1",
        )  # fmt: skip
        bridge.start()
        pid = bridge.proc.pid
        try:
            before = cpu_seconds(pid)
            post_all(f"{bridge.url}/v1/events", posts, clients=2)
            cpu = cpu_seconds(pid) - before
            return peak_rss_mib(pid), events / cpu, events
        finally:
            bridge.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.runs:,} open runs of {args.steps} steps each (cores: {os.cpu_count()})")
    print(f"{'what':<44}{'peak RSS':>12}{'ev/CPU-s':>10}")
    for name, hot_facts in (
        ("otel-bridge (hot_facts 150,000)", 150_000),
        ("runs in memory counted alone (as before)", 10**12),
    ):
        rss, rate, events = measure(args.runs, args.steps, hot_facts)
        print(f"{name:<44}{rss:>8,.0f} MiB{rate:>10,.0f}")
    print(f"({events:,} events)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"in {time.perf_counter() - start:.0f} s")
