"""What a run costs the store once it has ended: the room it keeps for `dedup_ttl_seconds`, beside a baseline.

    python benchmarks/closed_runs.py [--events 20000] [--baseline DIR]

A closed run is kept (its header and what tells its events sent again from late ones) for
`dedup_ttl_seconds`, a week by default, after its facts are forgotten (`keep_finished_seconds`
after it closed); a job event's id is kept as long. On a bridge that takes a steady stream,
that is most of the state: a week of it is what the disk (SQLite) or the memory (Redis) must
hold. The workload, in-process for each tree: the replay mix in 100-event batches, every run
settled, then the clock moved past `keep_finished_seconds` and settled again (facts forgotten).
Columns: closed runs; SQLite's pages in use per closed run (the whole file, after a checkpoint,
job ids included), and the `state` table's alone; Redis' `used_memory` grown per closed run.
Needs redis-server (Debian package `redis-server`).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve()
sys.path.insert(0, str(_HERE.parents[1] / "tests"))

from redis_server import RedisServer

_WORKLOAD = """
import json, sqlite3, sys, tempfile, time
tree, events, redis_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path[:0] = [tree, tree + "/tests", tree + "/benchmarks"]
import otel_bridge.producer.events as producer_events
producer_events._PROCESS_SALT = "00000000"  # the same event and run ids in every tree
import redis
from replay_throughput import generate
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.runtime import open_store

def closed(state):
    clock = [time.time()]
    settings = Settings(state=state, settle_seconds=1, disk_reserve_mib=0)
    store = open_store(settings)
    pipeline = Pipeline(store, MetricsHub(), settings, clock=lambda: clock[0])
    mix = generate(events)
    for i in range(0, len(mix), 100):
        pipeline.ingest(mix[i : i + 100])
    clock[0] += 10
    pipeline.settle_due()
    clock[0] += settings.keep_finished_seconds + 10
    pipeline.settle_due()
    while rows := store.outbox_peek(1000):  # delivered: the spans leave the store
        store.outbox_ack([row.id for row in rows])
    runs = sum(1 for key, _ in store.states() if key.startswith("run"))
    if hasattr(store, "checkpoint"):
        store.checkpoint()
    store.close()
    return runs

out = {}
with tempfile.TemporaryDirectory() as tmp:
    path = tmp + "/state.db"
    out["runs"] = closed(path)
    db = sqlite3.connect(path)
    size = db.execute("pragma page_size").fetchone()[0]
    used = db.execute("pragma page_count").fetchone()[0] - db.execute("pragma freelist_count").fetchone()[0]
    out["file"] = used * size
    out["state"] = db.execute("select sum(pgsize) from dbstat where name = 'state'").fetchone()[0]
    db.close()
client = redis.Redis.from_url(redis_url)
client.flushall()
before = client.info("memory")["used_memory"]
out["redis_runs"] = closed(redis_url)
out["redis"] = client.info("memory")["used_memory"] - before
print(json.dumps(out))
"""


def measure(tree: Path, events: int, redis_url: str) -> dict[str, int]:
    command = [sys.executable, "-c", _WORKLOAD, str(tree), str(events), redis_url]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(tree)}, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"the workload in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, measured the same way")
    args = parser.parse_args()
    trees = [("otel-bridge", _HERE.parents[1])]
    if args.baseline:
        trees.insert(0, ("baseline", Path(args.baseline).resolve()))
    print(f"{args.events:,} events of the replay mix, every run closed and its facts forgotten")
    columns = f"{'closed runs':>12}{'SQLite file':>14}{'state table':>14}{'Redis memory':>14}"
    print(f"{'what':<14}{columns}  (bytes per closed run)")
    for name, tree in trees:
        # A Redis of its own for each tree: one emptied by FLUSHALL keeps what its tables grew to,
        # and the tree measured second read ~330 bytes a run less than the same code measured first.
        redis = RedisServer().start()
        try:
            m = measure(tree, args.events, redis.url)
        finally:
            redis.close()
        runs = m["runs"]
        print(
            f"{name:<14}{runs:>12,}{m['file'] / runs:>14,.0f}{m['state'] / runs:>14,.0f}"
            f"{m['redis'] / m['redis_runs']:>14,.0f}"
        )


if __name__ == "__main__":
    main()
