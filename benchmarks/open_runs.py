"""A million open runs: memory, store size and the settle loop's idle cost, in one run.

    python benchmarks/open_runs.py [--runs 1000000]

Runs are started and never end (a workflow waiting on a human, a sleep of a month):
the bridge must keep them without its memory or its idle CPU growing with their number.
One `otel-bridge serve` subprocess (SQLite state, exporters off) takes `workflow.started`
events in POSTs of 1,000 from 2 clients; the table shows peak RSS at each quarter (flat
is the goal), the state file's size per open run (its write-ahead log beside it: it grows under
sustained writes up to SQLite's automatic checkpoint, 40 MiB), the ingest rate, and then the CPU the
idle bridge spends per second (settle loop, overdue count, metric collection) with all of
them open, beside the same with none; then the bridge started again on all of them (ready in,
peak RSS), the overdue runs listed, and the 1,000 oldest of all.
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


def bodies(first: int, count: int, per_post: int = 1000) -> list[bytes]:
    template = WorkflowRun("waits-for-a-human").started().events[0]
    out = []
    for start in range(first, first + count, per_post):
        events = [
            dict(template, eventId=f"0195{n:028x}", workflowId=f"open-{n:012d}")
            for n in range(start, min(start + per_post, first + count))
        ]
        out.append(orjson.dumps({"events": events}))
    return out


def idle_cpu_per_second(pid: int, seconds: float = 10.0, after: float = 3.0) -> float:
    # Counted from `after` seconds on: the checkpoint that copies the last posts' write-ahead log
    # (up to 40 MiB) into the file is the ingest's work, not idleness's (~50 ms of CPU, which
    # read as 13.0 against 8.0 ms/s in a 10-second window begun at the last answer).
    time.sleep(after)
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def measure(runs: int, tree: str | None) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        bridge = BridgeProcess(
            Path(tmp), "http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none",
            log_level="WARNING", settle_seconds="1",
        )  # fmt: skip
        if tree is not None:  # another checkout, as a baseline
            bridge.env["PYTHONPATH"], bridge.cwd = tree, tree
        bridge.start()
        pid = bridge.proc.pid
        try:
            empty_idle = idle_cpu_per_second(pid)
            quarter = runs // 4
            rows = []
            started = time.perf_counter()
            for q in range(4):
                post_all(f"{bridge.url}/v1/events", bodies(q * quarter, quarter), clients=2)
                rows.append(((q + 1) * quarter, peak_rss_mib(pid), time.perf_counter() - started))
            full_idle = idle_cpu_per_second(pid)
            store = (Path(tmp) / "state.db").stat().st_size
            log = Path(tmp) / "state.db-wal"
            wal = log.stat().st_size if log.exists() else 0
            # Started again on all of them: start-up reads every open run (the active gauges),
            # and an on-call engineer lists the overdue ones.
            assert bridge.stop(timeout=600)
            began = time.perf_counter()
            bridge.start(timeout=600)
            restart = (time.perf_counter() - began, peak_rss_mib(bridge.proc.pid))
            listing = []
            for params in ({"overdue": "true"}, {}):  # the overdue ones, then the 1,000 oldest of all
                began = time.perf_counter()
                bridge.client.get(f"{bridge.url}/v1/runs", params=params, timeout=1200).raise_for_status()
                listing.append((time.perf_counter() - began, peak_rss_mib(bridge.proc.pid)))
        finally:
            bridge.close()
    return rows, store, wal, empty_idle, full_idle, restart, listing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, measured the same way after")
    args = parser.parse_args()
    print(f"{args.runs:,} runs started, never ended (cores: {os.cpu_count()})")
    for name, tree in (("otel-bridge", None), *((("baseline", args.baseline),) if args.baseline else ())):
        rows, store, wal, empty_idle, full_idle, restart, listing = measure(args.runs, tree)
        print(f"{name}:")
        print(f"{'open runs':>12}{'peak RSS':>12}{'ingest ev/s':>14}")
        for n, rss, elapsed in rows:
            print(f"{n:>12,}{rss:>8,.0f} MiB{n / elapsed:>14,.0f}")
        print(
            f"state file: {store / 2**20:,.0f} MiB, {store / args.runs:,.0f} bytes per open run"
            f" (and its write-ahead log: {wal / 2**20:,.0f} MiB)"
        )
        print(f"idle bridge CPU: {empty_idle * 1000:.1f} ms/s with no run open, {full_idle * 1000:.1f} ms/s all open")
        print(f"restarted on them all: ready in {restart[0]:.1f} s, peak RSS {restart[1]:,.0f} MiB")
        for what, (seconds, rss) in zip(("GET /v1/runs?overdue=true", "GET /v1/runs (all)"), listing, strict=True):
            print(f"{what}: {seconds:.2f} s, peak RSS then {rss:,.0f} MiB")


if __name__ == "__main__":
    main()
