"""Replay throughput: events/s through the whole pipeline, beside its baselines, in one run.

    python benchmarks/replay_throughput.py [--events 100000]

Rows:
- decode only: orjson + pydantic validation of every line (the floor any pipeline pays);
- replay: `otel-bridge replay` in-process — decode, dedup, fold, SQLite commit,
  settle, span encoding and OTLP/HTTP export to a local sink;
- span encoding: building OTLP protobuf spans in place (what the outbox stores)
  against the SDK's ReadableSpan + encode_spans path.
"""

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from builders import JobRun, WorkflowRun

from otel_bridge.config import Settings
from otel_bridge.correlate.outputs import SpanRecord
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.replay import replay
from otel_bridge.runtime import Bridge
from otel_bridge.sources.durable_effect import decode


def generate(n_events: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    events: list[dict] = []
    while len(events) < n_events:
        if rng.random() < 0.8:
            run = WorkflowRun(rng.choice(["checkout", "onboarding", "refund"]), service=rng.choice(["shop", "billing"]))
            run.started()
            for step in ("validate", "charge", "ship", "notify")[: rng.randint(2, 4)]:
                run.after(rng.randint(1, 50)).step_started(step)
                if rng.random() < 0.2:
                    run.after(20).retry_scheduled(step, 1).paused("retry", step=step).after(1000).resumed()
                    run.step_started(step, 2)
                    run.after(10).step_completed(step, 2)
                else:
                    run.after(rng.randint(1, 200)).step_completed(step)
            if rng.random() < 0.2:
                run.sleep_started(60_000).paused("sleep").after(60_000).resumed().sleep_completed(60_000)
            run.after(1).completed()
            events += run.events
        else:
            job = JobRun(rng.choice(["tokenRefresher", "sync"]), service="jobs").started()
            for n in range(1, 6):
                job.after(60_000).executed(n, duration_ms=rng.randint(5, 500))
            events += job.events
    return events[:n_events]


class _Sink(BaseHTTPRequestHandler):
    spans_bytes = 0

    def log_message(self, *_a) -> None:  # noqa: ANN002
        pass

    def do_POST(self) -> None:
        _Sink.spans_bytes += len(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


def bench_decode(lines: list[bytes]) -> float:
    start = time.perf_counter()
    for line in lines:
        decode(orjson.loads(line))
    return len(lines) / (time.perf_counter() - start)


def bench_replay(path: Path, workdir: Path, sink_port: int) -> tuple[float, float]:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    settings = Settings(state=str(workdir / "bench.db"), dead_letter=workdir / "dead.jsonl", settle_seconds=0.2)
    bridge = Bridge(settings).start()
    dead = DeadLetters(settings.dead_letter, settings.dead_letter_max_bytes, 1)
    start = time.perf_counter()
    summary = replay({"durable-effect": bridge.pipeline}, str(path), dead, progress=False)
    ingested = time.perf_counter() - start
    bridge.stop()
    total = time.perf_counter() - start
    assert not summary.rejected, summary.render()
    return summary.accepted / ingested, summary.accepted / total


def step_span() -> SpanRecord:
    """A typical span of the mix: one attempt of a step."""
    return SpanRecord(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        parent_span_id=os.urandom(8),
        name="step charge",
        kind="internal",
        start_ns=1,
        end_ns=2,
        attributes={"workflow.task.name": "charge", "workflow.task.attempt": 1, "workflow.definition.name": "x"},
    )


def bench_encoding(n: int = 20_000) -> tuple[float, float]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    record = step_span()
    start = time.perf_counter()
    for _ in range(n):
        encode_span(record)
    ours = (time.perf_counter() - start) / n * 1e6

    context = SpanContext(int.from_bytes(record.trace_id), int.from_bytes(record.span_id), False, TraceFlags(1))
    parent = SpanContext(int.from_bytes(record.trace_id), int.from_bytes(record.parent_span_id), False, TraceFlags(1))
    resource = Resource({"service.name": "shop"})
    start = time.perf_counter()
    for _ in range(n):
        span = ReadableSpan(
            name=record.name,
            context=context,
            parent=parent,
            resource=resource,
            attributes=record.attributes,
            kind=SpanKind.INTERNAL,
            start_time=1,
            end_time=2,
        )
        encode_spans([span]).SerializeToString()
    sdk = (time.perf_counter() - start) / n * 1e6
    return ours, sdk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    events = generate(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = workdir / "events.jsonl"
        lines = [orjson.dumps(e) for e in events]
        path.write_bytes(b"\n".join(lines) + b"\n")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        decode_rate = bench_decode(lines)
        ingest_rate, end_to_end_rate = bench_replay(path, workdir, server.server_address[1])
        server.shutdown()
    ours, sdk = bench_encoding()
    print(f"events: {len(events)}  (cores: {os.cpu_count()}, python {sys.version.split()[0]})")
    print(f"{'what':<48}{'rate':>16}")
    print(f"{'baseline: decode only (orjson + pydantic)':<48}{decode_rate:>12,.0f} ev/s")
    print(f"{'replay: ingest into SQLite (dedup, fold, commit)':<48}{ingest_rate:>12,.0f} ev/s")
    print(f"{'replay: end to end incl. settle + OTLP export':<48}{end_to_end_rate:>12,.0f} ev/s")
    print(f"{'span encoding: in place (outbox)':<48}{ours:>12.1f} µs/span")
    print(f"{'baseline: SDK ReadableSpan + encode_spans':<48}{sdk:>12.1f} µs/span")


if __name__ == "__main__":
    main()
