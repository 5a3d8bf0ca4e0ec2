"""CPU instructions per event through the pipeline, counted rather than timed, beside a baseline.

    python benchmarks/instructions.py [--events 5000] [--batch 100] [--baseline DIR]

Wall-clock and CPU-time figures move by tens of percent from one minute to the next on a
shared machine, so a change worth 5 % cannot be told from noise by timing it. An
instruction count can: valgrind's cachegrind counts every instruction the process executes,
the same count on every run. The workload is the pipeline in-process, as `serve` runs it
without HTTP and export: the replay mix in 100-event batches into a SQLite state, settling
every 10 batches and once at the end, spans into the outbox. Start-up (imports, building
the events) is counted once more with the workload skipped and subtracted. `--batch 6` counts
the producer's usual batch instead, one invocation's, where what each batch costs whatever
its size (its transaction) weighs more. Garbage collection is
set as `otel-bridge serve` sets it, where the tree does.

It counts user-space instructions only: time in the kernel (SQLite's writes) and waiting
are not in it, and an instruction is not a fixed time. It tells which of two trees does less
work, not how many events a second either takes: `sidecar_cpu.py` says that.
Needs valgrind (Debian package `valgrind`).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve()
_WORKLOAD = """
import os, sys, tempfile, time
from pathlib import Path
tree = sys.argv[1]
sys.path[:0] = [tree, tree + "/tests", tree + "/benchmarks"]
import otel_bridge.producer.events as producer_events
producer_events._PROCESS_SALT = "00000000"  # the same event and run ids in every run
from replay_throughput import generate
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.sqlite_store import SqliteStore
events = generate(int(sys.argv[2]))
with tempfile.TemporaryDirectory() as tmp:
    settings = Settings(state=str(Path(tmp) / "state.db"), settle_seconds=1)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    try:  # garbage collection as `serve` sets it, in a tree that does
        from otel_bridge.cli import own_process_gc
    except ImportError:
        pass
    else:
        own_process_gc()
    if sys.argv[3] == "run":
        batch = int(sys.argv[4])
        for i in range(0, len(events), batch):
            pipeline.ingest(events[i : i + batch])
            if i % 1000 < batch:  # once every 1,000 events
                pipeline.settle_due(horizon=time.time() + 10)
        pipeline.settle_due(horizon=time.time() + 10)
"""


def instructions(tree: Path, events: int, mode: str, batch: int) -> int:
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    command += [sys.executable, "-c", _WORKLOAD, str(tree), str(events), mode, str(batch)]
    env = os.environ | {"PYTHONHASHSEED": "0", "PYTHONPATH": str(tree)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run in {tree} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_event(tree: Path, events: int, batch: int) -> float:
    return (instructions(tree, events, "run", batch) - instructions(tree, events, "start", batch)) / events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=100, help="events per batch (6: one invocation's)")
    parser.add_argument("--baseline", help="another checkout of otel-bridge, counted the same way")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    trees = [("otel-bridge", _HERE.parents[1])]
    if args.baseline:
        trees.insert(0, ("baseline", Path(args.baseline).resolve()))
    print(
        f"{args.events:,} events of the replay mix in {args.batch}-event batches, in-process, SQLite state;"
        " instructions per event (cachegrind)"
    )
    counted = {name: per_event(tree, args.events, args.batch) for name, tree in trees}
    for name, count in counted.items():
        print(f"{name:<14}{count:>12,.0f}")
    if args.baseline:
        ratio = counted["baseline"] / counted["otel-bridge"]
        print(f"otel-bridge vs baseline: {ratio:.2f}x fewer instructions per event")


if __name__ == "__main__":
    main()
