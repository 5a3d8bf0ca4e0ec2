"""Redis state: one replica and two replicas on one Redis, same workload, in one run.

    python benchmarks/redis_replicas.py [--events 30000] [--rounds 3] [--wait-replicas 1]

The replay mix in POSTs of 100 from 4 clients (split evenly between the replicas when
there are two), every run's events in one client's share as a producer's tracker sends
them; OTLP/HTTP to a local counting receiver; a round ends when every span is delivered.
Shows accepted events per second and per bridge CPU-second (all replicas together),
medians over alternating rounds. `--wait-replicas N` adds this tree with N Redis replicas of the
primary, each batch answered once they hold it (`wait_replicas`): what that wait costs.
Needs `redis-server` (./scripts/test installs it).
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bridge_process import BridgeProcess
from redis_server import RedisServer, replica_of
from replay_throughput import generate
from sidecar_cpu import CountingReceiver, cpu_seconds, post_all, wait_delivered


def one_round(
    replicas: int,
    bodies: list[bytes],
    receiver: CountingReceiver,
    clients: int,
    tree: str | None = None,
    wait_replicas: int = 0,
) -> tuple[float, float]:
    redis = RedisServer().start()
    copies = [replica_of(redis) for _ in range(wait_replicas)]
    bridges = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(replicas):
                workdir = Path(tmp) / f"replica-{n}"
                workdir.mkdir()
                bridge = BridgeProcess(workdir, receiver.endpoint, log_level="WARNING", settle_seconds="1")
                bridge.env["OTEL_BRIDGE_STATE"] = redis.url
                if wait_replicas:
                    bridge.env["OTEL_BRIDGE_WAIT_REPLICAS"] = str(wait_replicas)
                bridge.env.pop("OTEL_BSP_SCHEDULE_DELAY")
                bridge.env.pop("OTEL_METRIC_EXPORT_INTERVAL")
                if tree is not None:  # another checkout, as a baseline
                    bridge.env["PYTHONPATH"], bridge.cwd = tree, tree
                bridges.append(bridge.start())
            receiver.reset()
            cpu_before = sum(cpu_seconds(b.proc.pid) for b in bridges)
            shares = [bodies[i::replicas] for i in range(replicas)]
            threads = [
                threading.Thread(target=post_all, args=(f"{b.url}/v1/events", share, clients // replicas))
                for b, share in zip(bridges, shares, strict=True)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            accept = time.perf_counter() - started
            wait_delivered(receiver)
            cpu = sum(cpu_seconds(b.proc.pid) for b in bridges) - cpu_before
            return accept, cpu
    finally:
        for b in bridges:
            b.close()
        for copy in copies:
            copy.close()
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, measured the same way")
    parser.add_argument("--wait-replicas", type=int, default=0, help="also this tree waiting for N Redis replicas")
    args = parser.parse_args()
    events = generate(args.events)
    # A run's events stay together in one POST sequence, as one producer sends them.
    bodies = [orjson.dumps({"events": events[i : i + 100]}) for i in range(0, len(events), 100)]
    receiver = CountingReceiver()
    # name -> (checkout, Redis replicas each batch waits for)
    trees: dict[str, tuple[str | None, int]] = {"otel-bridge": (None, 0)}
    if args.baseline:
        trees["baseline"] = (args.baseline, 0)
    if args.wait_replicas:
        trees[f"wait {args.wait_replicas}"] = (None, args.wait_replicas)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {(t, r): [] for t in trees for r in (1, 2)}
    for _ in range(args.rounds):
        for (name, replicas), rounds in results.items():
            rounds.append(one_round(replicas, bodies, receiver, args.clients, *trees[name]))
    receiver.close()
    n = len(events)
    print(f"{n} events, POSTs of 100, {args.clients} clients, {args.rounds} rounds (cores: {os.cpu_count()})")
    print(f"{'':<14}{'replicas':<10}{'accept ev/s':>14}{'ev/CPU-s':>12}")
    for name in trees:
        rates = {}
        for replicas in (1, 2):
            rounds = results[(name, replicas)]
            rates[replicas] = n / statistics.median(r[0] for r in rounds)
            cpu = n / statistics.median(r[1] for r in rounds)
            print(f"{name:<14}{replicas:<10}{rates[replicas]:>14,.0f}{cpu:>12,.0f}")
        print(f"{name}: two replicas {rates[2] / rates[1]:.2f}x one replica's events per second")


if __name__ == "__main__":
    main()
