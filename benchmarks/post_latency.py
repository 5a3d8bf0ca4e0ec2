"""A producer's wait: 6-event POSTs at a fixed pace, the bridge beside a baseline and the naive peer.

    python benchmarks/post_latency.py [--rate 220] [--posts 1000] [--rounds 3] [--baseline DIR]

One durable-effect invocation posts its events as one batch of about six and waits for the
answer, so the tail of that answer is the producer's cost. 4 clients post `--posts`
6-event batches of the replay mix at `--rate` POSTs per second in all, taking turns (an open
loop: a slow answer does not slow the next POST) to a fresh `otel-bridge serve` (SQLite, OTLP/HTTP
to a local receiver), to a baseline checkout and to the naive peer, in alternating rounds (the bridge and
the baseline each first in every other round).
Rows: p50/p95/p99 of the answers, each the median over the rounds. The peer's row says
what the machine, the HTTP stack and this load generator cost without the bridge.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_throughput import generate
from sidecar_cpu import CountingReceiver, bridge_process, peer_process, post_all, quantiles_ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=220.0, help="POSTs per second, all clients together")
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--baseline", help="another checkout of otel-bridge, run in alternate rounds")
    args = parser.parse_args()
    events = generate(args.posts * 6)
    bodies = [orjson.dumps({"events": events[i : i + 6]}) for i in range(0, len(events), 6)]
    interval = args.clients / args.rate
    receiver = CountingReceiver()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            trees = [("otel-bridge", None), *((("baseline", args.baseline),) if args.baseline else ())]
            # Each first in every other round: which runs first moved p50 by ~0.3 ms in some runs.
            for name, tree in trees if n % 2 == 0 else trees[::-1]:
                workdir = Path(tmp) / f"{name}-{n}"
                workdir.mkdir()
                bridge = bridge_process(workdir, receiver, {}, tree).start()
                try:
                    latencies, _ = post_all(f"{bridge.url}/v1/events", bodies, args.clients, interval=interval)
                finally:
                    bridge.close()
                rows.setdefault(name, []).append(quantiles_ms(latencies))
            with peer_process(receiver) as (_pid, url):
                latencies, _ = post_all(url, bodies, args.clients, interval=interval)
            rows.setdefault("naive peer", []).append(quantiles_ms(latencies))
    receiver.close()
    print(
        f"{args.posts} POSTs of 6 events at {args.rate:g}/s from {args.clients} clients,"
        f" medians of {args.rounds} rounds (cores: {os.cpu_count()})"
    )
    print(f"{'what':<14}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}   p99 of each round")
    for name, quantiles in rows.items():
        p50, p95, p99 = (statistics.median(q[i] for q in quantiles) for i in range(3))
        each = ", ".join(f"{q[2]:.1f}" for q in quantiles)
        print(f"{name:<14}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}   {each}")


if __name__ == "__main__":
    main()
