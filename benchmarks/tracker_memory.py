"""The in-process tracker under a producer busy on the CPU: memory, settling's lag, what arrives.

    python benchmarks/tracker_memory.py [--runs 80000] [--backend-down] [--baseline DIR]

A loop emits runs of four events (started, a step, its end, the run's end) as fast as it can through
an `OtelTracker` with its defaults (state in memory), spans to a local OTLP/HTTP receiver that decodes
them; then closes the tracker. Each tree runs in a process of its own (`--baseline DIR`: another
checkout, the same way after). Printed side by side: how long the loop took, the producer's RSS
after it, how far settling was behind then and how many runs it still had to settle, the spans waiting
in the outbox, how long `close()` took, and the spans the receiver got against those expected (two a run).

`--backend-down`: no backend answers (the exporter's endpoint a port nothing listens on), as in an outage:
every span waits in the outbox, and `close()` makes one attempt and keeps them in the span dead-letter
file (in a temporary directory, removed after).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bridge_process import free_port
from otlp_receiver import OtlpHttpReceiver

_PRODUCER = r"""
import json, os, sys, time
from otel_bridge.tracker import OtelTracker, WorkflowEvents

def rss_mib():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

runs, files = int(sys.argv[1]), sys.argv[2:]
kept = {"dead_letter": files[0], "span_dead_letter": files[1]} if files else {}
tracker = OtelTracker(env="bench", service_key="svc", flush_interval_seconds=None, **kept)
began = time.perf_counter()
for n in range(runs):
    run = WorkflowEvents(workflow_id=f"wf-{n}", workflow_name="invoice")
    tracker.emit(run.started())
    tracker.emit(run.step_started("a", attempt=1))
    tracker.emit(run.step_completed("a", attempt=1, duration_ms=5))
    tracker.emit(run.completed(["a"]))
tracker.flush()
looped = time.perf_counter() - began
bridge = tracker.bridge
def due(tx):
    # `due_keys` in versions before the settling's cursor (a baseline's)
    read = getattr(tx, "due_after", None)
    return len(read(time.time(), 10**9, None)) if read else len(tx.due_keys(time.time(), 10**9))
behind = bridge.store.run(due)
row = {"rss": rss_mib(), "lag": bridge.settle_lag(), "behind": behind, "outbox": bridge.store.outbox_depth()}
row["loop"] = looped
began = time.perf_counter()
tracker.close(retry_export=not files)
row["close"] = time.perf_counter() - began
print(json.dumps(row))
"""


def measure(runs: int, tree: Path, backend_down: bool) -> dict:
    # The receiver in this process: the spans it keeps are not the producer's memory.
    receiver = OtlpHttpReceiver()
    kept = tempfile.TemporaryDirectory(prefix="tracker-memory-")
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "OTEL_METRICS_EXPORTER": "none"}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}" if backend_down else receiver.endpoint
        files = [f"{kept.name}/dead.jsonl", f"{kept.name}/dead-spans.jsonl"] if backend_down else []
        done = subprocess.run(
            [sys.executable, "-c", _PRODUCER, str(runs), *files],
            env=env, cwd=tree, capture_output=True, text=True, timeout=3600, check=True,
        )  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        time.sleep(0.5)
        row["received"] = len(receiver.received.unique_spans())
        return row
    finally:
        receiver.close()
        kept.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=80_000)
    parser.add_argument("--backend-down", action="store_true", help="no backend answers: spans wait in the outbox")
    parser.add_argument("--baseline", help="another checkout of otel-bridge, measured the same way after")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = [("otel-bridge", here), *((("baseline", Path(args.baseline).resolve()),) if args.baseline else ())]
    down = ", no backend answering" if args.backend_down else ""
    print(f"{args.runs:,} runs of 4 events emitted in a loop, OtelTracker defaults{down} (cores: {os.cpu_count()})")
    print(
        f"{'what':<14}{'loop':>8}{'RSS':>10}{'behind':>10}{'unsettled':>11}{'outbox':>9}{'close':>9}"
        f"{'spans received':>22}"
    )
    for name, tree in trees:
        row = measure(args.runs, tree, args.backend_down)
        got = f"{row['received']:,} of {2 * args.runs:,}"
        print(
            f"{name:<14}{row['loop']:>6.1f} s{row['rss']:>6,.0f} MiB{row['lag']:>8.1f} s{row['behind']:>11,}"
            f"{row.get('outbox', 0):>9,}{row['close']:>7.1f} s{got:>22}"
        )


if __name__ == "__main__":
    main()
