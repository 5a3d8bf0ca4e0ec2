"""What a producer feels: POST latency and throughput of the tracker endpoint, beside a floor, in one run.

    python benchmarks/http_ingest.py [--posts 3000] [--clients 4]

The engine awaits each POST inside the workflow, so the bridge's answer time is added to every
step. Rows, all against one `otel-bridge serve` subprocess on 127.0.0.1:
- floor: GET /healthz on the same server (HTTP + ASGI, no work);
- ingest: POST /v1/events with one invocation's batch (6 events of one new run: decode,
  dedup, fold, SQLite commit), as the engine's tracker sends it.
Each client is a thread with its own keep-alive connection.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bridge_process import BridgeProcess, free_port

from otel_bridge.producer.events import WorkflowRun


def _load(url: str, bodies: list[dict] | None, posts: int, clients: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[dict | None]) -> None:
        mine = []
        with httpx.Client(timeout=30) as http:
            for body in share:
                start = time.perf_counter()
                response = http.post(url, json=body) if body is not None else http.get(url)
                mine.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
        with lock:
            latencies.extend(mine)

    work: list[dict | None] = bodies if bodies is not None else [None] * posts
    shares = [work[i::clients] for i in range(clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(work) / (time.perf_counter() - started)


def _row(name: str, latencies: list[float], rate: float) -> str:
    q = statistics.quantiles(latencies, n=100)
    return f"{name:<34}{rate:>10,.0f}/s {q[49] * 1000:>9.2f} {q[94] * 1000:>9.2f} {q[98] * 1000:>9.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    bodies = []
    for _ in range(args.posts):
        run = WorkflowRun().started().step_started("a").after(5).step_completed("a").step_started("b")
        bodies.append({"events": run.after(3).step_completed("b").completed().events})
    with tempfile.TemporaryDirectory() as tmp:
        bridge = BridgeProcess(Path(tmp), f"http://127.0.0.1:{free_port()}", OTEL_TRACES_EXPORTER="none",
                               OTEL_METRICS_EXPORTER="none", log_level="WARNING").start()  # fmt: skip
        try:
            _load(f"{bridge.url}/healthz", None, 200, args.clients)  # warm up
            floor = _load(f"{bridge.url}/healthz", None, args.posts, args.clients)
            ingest = _load(f"{bridge.url}/v1/events", bodies, args.posts, args.clients)
        finally:
            bridge.close()
    print(f"{args.posts} requests, {args.clients} clients (cores: 2)")
    print(f"{'what':<34}{'rate':>12} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
    print(_row("floor: GET /healthz", *floor))
    print(_row("ingest: POST 6-event batch", *ingest))
    print(f"{'':<34}{ingest[1] * 6:>10,.0f} events/s")


if __name__ == "__main__":
    main()
