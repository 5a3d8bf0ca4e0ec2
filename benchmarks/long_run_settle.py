"""Settling one long run: CPU to send the newest 50 attempts of a run that already sent thousands.

    python benchmarks/long_run_settle.py [--attempts 10000] [--baseline DIR]

A run that keeps going is settled once per settle window, each time for the attempts that
ended since. Two shapes of it: a batch job with a step per item ("items"), and one step polled
again and again, each attempt failing and retried ("poll"). Settling holds the store, so its cost is
also what other producers' batches may wait. In-process, SQLite state: batches of 50
attempts, each followed by a settle; the CPU of the settles at 1/5, 2/5 … of the run (the median
of the nine settles up to there: one settle's CPU time moves by milliseconds from one to the next).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve()
_WORKLOAD = """
import sys, tempfile, time
from pathlib import Path
tree, attempts, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path[:0] = [tree, tree + "/tests"]
from builders import WorkflowRun
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.sqlite_store import SqliteStore
with tempfile.TemporaryDirectory() as tmp:
    settings = Settings(state=str(Path(tmp) / "s.db"), settle_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    run = WorkflowRun("long", workflow_id="long-1").started()
    sent = 0
    took = []
    marks = {attempts * k // 5 for k in range(1, 6)}
    for batch in range(attempts // 50):
        for j in range(50):
            if shape == "items":
                run.after(1).step_started(f"s{batch}-{j}").after(1).step_completed(f"s{batch}-{j}")
            else:  # one step polled: each attempt fails and is retried
                n = batch * 50 + j + 1
                run.after(1).step_started("poll", n).after(1).step_failed("poll", n, will_retry=True)
        pipeline.ingest(run.events[sent:])
        sent = len(run.events)
        started = time.process_time()
        pipeline.settle_due(horizon=time.time() + 1)
        took.append(time.process_time() - started)
        if (batch + 1) * 50 in marks:
            print((batch + 1) * 50, sorted(took[-9:])[len(took[-9:]) // 2])
"""


def settle_times(tree: Path, attempts: int, shape: str) -> list[tuple[int, float]]:
    done = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, str(tree), str(attempts), shape],
        capture_output=True, text=True, cwd=tree, env=os.environ | {"PYTHONPATH": str(tree)},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the workload failed in {tree}:\n{done.stderr[-2000:]}")
    return [(int(n), float(cpu)) for n, cpu in (line.split() for line in done.stdout.split("\n") if line)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, measured the same way")
    args = parser.parse_args()
    trees = [("otel-bridge", _HERE.parents[1])]
    if args.baseline:
        trees.insert(0, ("baseline", Path(args.baseline).resolve()))
    print("one run, batches of 50 attempts, each followed by a settle: ms of CPU for a settle (median of 9)")
    for shape in ("items", "poll"):
        rows = {name: settle_times(tree, args.attempts, shape) for name, tree in trees}
        print(f"{shape + ': sent':<14}" + "".join(f"{n:>10,}" for n, _ in next(iter(rows.values()))))
        for name, times in rows.items():
            print(f"{name:<14}" + "".join(f"{cpu * 1000:>10.1f}" for _, cpu in times))


if __name__ == "__main__":
    main()
