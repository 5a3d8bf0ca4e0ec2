"""What a sidecar costs: events per CPU-second of the bridge, beside the naive peer and the floor, in one run.

    python benchmarks/sidecar_cpu.py [--events 50000] [--rounds 3] [--bridge-env KEY=VALUE ...]

The workload a user meets: 4 concurrent clients POST 100-event batches of the replay mix
(workflows with retries, pauses and sleeps; recurring jobs) to `POST /v1/events`; the
server exports OTLP/HTTP to a local receiver that decodes every request and counts spans;
a round ends when everything is delivered. Rows (medians over alternating rounds):
1. otel-bridge: `otel-bridge serve` subprocess, SQLite state, defaults;
2. naive peer (`naive_peer.py`): SDK tracer + BatchSpanProcessor + a dict, no durability;
3. floor, in this process: orjson parse + batch validation + in-place OTLP encoding of as
   many spans as the bridge delivered, nothing else.
Columns: events per CPU-second of the server process (user + system, from /proc), accept
rate while posting, drain time (last answer to last span delivered), spans delivered, peak RSS.
Then the producer's view: 6-event batches (one invocation), first in a closed loop — the
bridge's peak rate for them and the CPU each POST costs it (beside the baseline's, with
`--baseline`, and the naive peer's: a small POST's cost is mostly fixed, per request and per
transaction) — then paced at half of that peak, p50/p95/p99 of the answer; and the naive
peer's at the same pace, which says what the machine, the HTTP stack and the load generator
cost without the bridge.
"""

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bridge_process import BridgeProcess, free_port
from replay_throughput import generate, step_span

from otel_bridge.export.span_encoding import encode_span
from otel_bridge.sources.durable_effect import decode
from otel_bridge.sources.wire import DecodeOptions

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CountingReceiver:
    """OTLP/HTTP: decodes each trace request and counts its spans; metrics are taken and dropped."""

    def __init__(self, delay: float = 0.0) -> None:
        self.spans = 0
        self.last = 0.0
        # Seconds each trace request waits before its answer: a backend that far away.
        self.delay = delay
        # While set, every request is answered 503: a backend down (a Collector restarting).
        self.down = False
        self.refused = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if receiver.down:
                    with lock:
                        receiver.refused += 1
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path == "/v1/traces":
                    time.sleep(receiver.delay)
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                    with lock:
                        receiver.spans += n
                        receiver.last = time.perf_counter()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.spans, self.last = 0, 0.0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def post_all(url: str, bodies: list[bytes], clients: int, interval: float = 0.0) -> tuple[list[float], float]:
    """POST every body from `clients` threads (closed loop, or one every `interval` s per client).

    The clients are the standard library's `http.client`, one kept-alive connection each, not
    httpx: they share the machine's 2 cores with what they measure, and with httpx this process
    (clients and the OTLP receiver) spent 0.32-0.36 s of CPU while 30,000 events were posted in
    100s, against 0.06 s; a closed-loop 6-event POST read 0.27-0.3 ms slower, bridge or peer."""
    latencies: list[float] = []
    lock = threading.Lock()
    target = urlsplit(url)
    headers = {"content-type": "application/json"}

    def client(n: int, share: list[bytes]) -> None:
        mine = []
        connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
        try:
            # Paced clients take turns, `interval / clients` apart: started together, they would post
            # in bursts of `clients` at once, each burst's last answer waiting for the others.
            next_at = started + n * interval / clients
            for body in share:
                if interval:
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                start = time.perf_counter()
                connection.request("POST", target.path, body, headers)
                response = connection.getresponse()
                answer = response.read()
                mine.append(time.perf_counter() - start)
                assert response.status == 200, answer.decode(errors="replace")
        finally:
            connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i, bodies[i::clients])) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started


def wait_delivered(receiver: CountingReceiver, quiet: float = 3.0, timeout: float = 600) -> None:
    """Until no span arrived for `quiet` seconds (the bridge settles ended runs within a second)."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if receiver.spans != seen:
            seen, since = receiver.spans, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


@dataclass
class Round:
    cpu: float
    accept_seconds: float
    drain_seconds: float
    spans: int
    rss_mib: float
    latencies: list[float]


def measure(pid: int, url: str, bodies: list[bytes], receiver: CountingReceiver, clients: int) -> Round:
    receiver.reset()
    cpu_before = cpu_seconds(pid)
    latencies, accept = post_all(url, bodies, clients)
    answered = time.perf_counter()
    wait_delivered(receiver)
    cpu = cpu_seconds(pid) - cpu_before
    drain = max(receiver.last - answered, 0.0)
    return Round(cpu, accept, drain, receiver.spans, peak_rss_mib(pid), latencies)


def bridge_process(workdir: Path, receiver: "CountingReceiver", env: dict, tree: str | None = None) -> BridgeProcess:
    """`otel-bridge serve` with production defaults (not the test harness's quick ones), not yet started.

    `tree`: another checkout of otel-bridge to run instead of this one (a baseline)."""
    bridge = BridgeProcess(workdir, receiver.endpoint, log_level="WARNING", settle_seconds="1", **env)
    bridge.env.pop("OTEL_BSP_SCHEDULE_DELAY")
    bridge.env.pop("OTEL_METRIC_EXPORT_INTERVAL")
    if tree is not None:
        bridge.env["PYTHONPATH"] = tree
        bridge.cwd = tree
    return bridge


def run_bridge(
    workdir: Path, receiver: CountingReceiver, bodies: list[bytes], clients: int, env: dict, tree: str | None = None
) -> Round:
    bridge = bridge_process(workdir, receiver, env, tree).start()
    try:
        return measure(bridge.proc.pid, f"{bridge.url}/v1/events", bodies, receiver, clients)
    finally:
        bridge.close()


@contextmanager
def peer_process(receiver: CountingReceiver) -> Iterator[tuple[int, str]]:
    """The naive peer, started and answering: its pid and its `POST /v1/events` URL."""
    port = free_port()
    script = str(Path(__file__).parent / "naive_peer.py")
    peer = subprocess.Popen([sys.executable, script, "--port", str(port), "--endpoint", receiver.endpoint])
    url = f"http://127.0.0.1:{port}/v1/events"
    try:
        for _ in range(200):
            try:
                httpx.post(url, content=b'{"events":[]}', timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield peer.pid, url
    finally:
        peer.kill()
        peer.wait()


def run_peer(receiver: CountingReceiver, bodies: list[bytes], clients: int) -> Round:
    with peer_process(receiver) as (pid, url):
        return measure(pid, url, bodies, receiver, clients)


def run_floor(bodies: list[bytes], spans: int) -> float:
    """CPU seconds of the floor, in this process."""
    options = DecodeOptions()
    record = step_span()
    start = time.process_time()
    for body in bodies:
        for raw in orjson.loads(body)["events"]:
            decode(raw, options)
    for _ in range(spans):
        encode_span(record)
    return time.process_time() - start


def median(rounds: list[Round], what: Callable[[Round], float]) -> float:
    return statistics.median(what(r) for r in rounds)


def quantiles_ms(latencies: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[94] * 1000, q[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--bridge-env", action="append", default=[], help="KEY=VALUE setting for the bridge")
    parser.add_argument("--baseline", help="another checkout of otel-bridge, run in alternate rounds (row 0)")
    args = parser.parse_args()
    env = dict(kv.split("=", 1) for kv in args.bridge_env)
    events = generate(args.events)
    bodies = [orjson.dumps({"events": events[i : i + 100]}) for i in range(0, len(events), 100)]
    receiver = CountingReceiver()
    baseline_rounds: list[Round] = []
    bridge_rounds: list[Round] = []
    peer_rounds: list[Round] = []
    floor_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            workdir = Path(tmp) / f"round-{n}"
            workdir.mkdir()
            trees = [(baseline_rounds, workdir / "baseline", args.baseline)] if args.baseline else []
            trees.append((bridge_rounds, workdir / "bridge", None))
            # The bridge and the baseline each first in every other round.
            for rounds, where, tree in trees if n % 2 == 0 else trees[::-1]:
                where.mkdir()
                rounds.append(run_bridge(where, receiver, bodies, args.clients, env, tree))
            peer_rounds.append(run_peer(receiver, bodies, args.clients))
            floor_cpu.append(run_floor(bodies, bridge_rounds[-1].spans))
        small = [orjson.dumps({"events": events[i : i + 6]}) for i in range(0, min(len(events), 12_000), 6)]
        peak_dir = Path(tmp) / "latency-peak"
        peak_dir.mkdir()
        peak = run_bridge(peak_dir, receiver, small, args.clients, env)
        peak_rate = len(small) / peak.accept_seconds
        small_cpu = [("otel-bridge", peak.cpu)]
        if args.baseline:
            (peak_dir / "baseline").mkdir()
            small_cpu.append(
                ("baseline", run_bridge(peak_dir / "baseline", receiver, small, args.clients, env, args.baseline).cpu)
            )
        small_cpu.append(("naive peer", run_peer(receiver, small, args.clients).cpu))
        paced_dir = Path(tmp) / "latency-paced"
        paced_dir.mkdir()
        interval = args.clients / (peak_rate / 2)
        bridge = bridge_process(paced_dir, receiver, env).start()
        try:
            paced, _ = post_all(f"{bridge.url}/v1/events", small, args.clients, interval=interval)
        finally:
            bridge.close()
        # The same POSTs at the same pace to the naive peer: what the machine, the HTTP stack and
        # this load generator cost on their own.
        with peer_process(receiver) as (_pid, url):
            peer_paced, _ = post_all(url, small, args.clients, interval=interval)
    receiver.close()

    n = len(events)
    print(f"{n} events, {len(bodies)} POSTs of 100, {args.clients} clients, medians of {args.rounds} rounds")
    print(f"(cores: {os.cpu_count()}, python {sys.version.split()[0]})")
    print(f"{'what':<40}{'ev/CPU-s':>10}{'accept ev/s':>13}{'drain s':>9}{'spans':>8}{'peak RSS':>10}")
    rows = [("1. otel-bridge (SQLite, OTLP/HTTP)", bridge_rounds), ("2. naive peer (SDK + dict)", peer_rounds)]
    if baseline_rounds:
        rows.insert(0, ("0. baseline otel-bridge", baseline_rounds))
    for name, rounds in rows:
        cpu, accept = median(rounds, lambda r: r.cpu), median(rounds, lambda r: r.accept_seconds)
        print(
            f"{name:<40}{n / cpu:>10,.0f}{n / accept:>13,.0f}"
            f"{median(rounds, lambda r: r.drain_seconds):>9.1f}{median(rounds, lambda r: r.spans):>8,.0f}"
            f"{median(rounds, lambda r: r.rss_mib):>7,.0f} MiB"
        )
    print(f"{'3. floor (parse + validate + encode)':<40}{n / statistics.median(floor_cpu):>10,.0f}")
    ratio = median(peer_rounds, lambda r: r.cpu) / median(bridge_rounds, lambda r: r.cpu)
    print(f"otel-bridge vs naive peer: {ratio:.2f}x the events per CPU-second")
    if baseline_rounds:
        gain = median(baseline_rounds, lambda r: r.cpu) / median(bridge_rounds, lambda r: r.cpu)
        print(f"otel-bridge vs baseline: {gain:.2f}x the events per CPU-second")
    p50, p95, p99 = quantiles_ms(peak.latencies)
    print(f"6-event POSTs, closed loop: {peak_rate:,.0f}/s, p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
    print(
        "  CPU per 6-event POST, closed loop: "
        + ", ".join(f"{name} {cpu / len(small) * 1e6:,.0f} µs" for name, cpu in small_cpu)
    )
    p50, p95, p99 = quantiles_ms(paced)
    print(f"6-event POSTs at half that rate: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
    p50, p95, p99 = quantiles_ms(peer_paced)
    print(f"  the naive peer at that rate:    p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
