"""A backend far away: how fast the outbox drains with one export request in flight, or several.

    python benchmarks/distant_backend.py [--events 30000] [--rtt-ms 200] [--rounds 2]

The replay mix in POSTs of 100 from 4 clients to `otel-bridge serve` (SQLite, production
defaults), OTLP/HTTP to a local receiver that answers each trace request after `--rtt-ms`
(a SaaS backend in another region, or a proxy in front of one). One row per
`export_concurrency` (1 is the drain before it could send requests side by side): seconds
from the first POST until the last span arrived, the spans per second that makes, and how
long the last span took to arrive after the last POST was answered. Medians of alternating rounds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_throughput import generate
from sidecar_cpu import CountingReceiver, bridge_process, post_all, wait_delivered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rtt-ms", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    events = generate(args.events)
    bodies = [orjson.dumps({"events": events[i : i + 100]}) for i in range(0, len(events), 100)]
    receiver = CountingReceiver(delay=args.rtt_ms / 1000)
    rows: dict[int, list[tuple[float, int, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for concurrency in args.concurrency:
                workdir = Path(tmp) / f"{n}-{concurrency}"
                workdir.mkdir()
                bridge = bridge_process(workdir, receiver, {"export_concurrency": str(concurrency)}).start()
                try:
                    receiver.reset()
                    started = time.perf_counter()
                    post_all(f"{bridge.url}/v1/events", bodies, 4)
                    answered = time.perf_counter()
                    wait_delivered(receiver, quiet=max(3.0, 3 * args.rtt_ms / 1000))
                    after = receiver.last - answered
                    rows.setdefault(concurrency, []).append((receiver.last - started, receiver.spans, after))
                finally:
                    bridge.close()
    receiver.close()
    print(f"{args.events} events, POSTs of 100 from 4 clients, backend answering after {args.rtt_ms:g} ms,")
    print(f"medians of {args.rounds} rounds (cores: {os.cpu_count()})")
    print(f"{'export_concurrency':<20}{'delivered in':>14}{'spans/s':>10}{'spans':>8}{'after the last POST':>21}")
    for concurrency, results in rows.items():
        seconds = statistics.median(r[0] for r in results)
        spans = statistics.median(r[1] for r in results)
        after = statistics.median(r[2] for r in results)
        print(f"{concurrency:<20}{seconds:>12.1f} s{spans / seconds:>10,.0f}{spans:>8,.0f}{after:>19.1f} s")


if __name__ == "__main__":
    main()
