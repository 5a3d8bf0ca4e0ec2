"""The peer most people write first, as a baseline: the OpenTelemetry SDK tracer, a dict for state.

    python benchmarks/naive_peer.py --port 4999 --endpoint http://127.0.0.1:4318

It takes the same `POST /v1/events` batches as otel-bridge on the same server stack (Starlette
on uvicorn), starts a span per run and per step with the producer's timestamps, ends them on
the matching event, puts pauses, retries and sleeps as events on the run's span, counts job
executions, and exports through a BatchSpanProcessor over OTLP/HTTP. No durability, no
deduplication, no reordering: an event that arrives before its start is dropped, a restart
loses every open run. That is what it costs to be that simple; the benchmark compares CPU.
"""

import argparse
import logging
from datetime import datetime
from typing import Any

import orjson
import uvicorn
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _ns(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1e9)


class NaivePeer:
    def __init__(self, endpoint: str) -> None:
        resource = Resource({"service.name": "naive-peer"})
        self.provider = TracerProvider(resource=resource)
        # A queue big enough that nothing is dropped: the comparison is of delivered spans.
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"), max_queue_size=1_000_000, max_export_batch_size=512
        )
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("naive-peer")
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"))
        self.meters = MeterProvider(resource=resource, metric_readers=[reader])
        self.executions = self.meters.get_meter("naive-peer").create_counter("job.executions")
        self.runs: dict[str, dict[str, Any]] = {}

    def take(self, e: dict[str, Any]) -> None:
        kind = e.get("type", "")
        if kind.startswith("job."):
            self.executions.add(1, {"job.name": e.get("jobName", ""), "event": kind})
            return
        run_id = e.get("workflowId", "")
        at = _ns(e["timestamp"])
        if kind == "workflow.started":
            root = self.tracer.start_span(e.get("workflowName", "workflow"), start_time=at)
            self.runs[run_id] = {"root": root, "context": trace.set_span_in_context(root), "steps": {}}
            return
        run = self.runs.get(run_id)
        if run is None:
            return
        if kind == "step.started":
            name = e.get("stepName", "")
            span = self.tracer.start_span(f"step {name}", context=run["context"], start_time=at)
            span.set_attribute("workflow.task.name", name)
            span.set_attribute("workflow.task.attempt", e.get("attempt", 1))
            run["steps"][name] = span
        elif kind in ("step.completed", "step.failed"):
            span = run["steps"].pop(e.get("stepName", ""), None)
            if span is not None:
                span.set_attribute("workflow.task.result", "success" if kind == "step.completed" else "failure")
                span.end(end_time=at)
        elif kind in ("workflow.completed", "workflow.failed", "workflow.cancelled"):
            for span in run["steps"].values():
                span.end(end_time=at)
            run["root"].set_attribute("workflow.execution.result", kind.split(".")[1])
            run["root"].end(end_time=at)
            del self.runs[run_id]
        else:
            run["root"].add_event(kind, timestamp=at)


def app(peer: NaivePeer) -> Starlette:
    async def ingest(request: Request) -> Response:
        body = orjson.loads(await request.body())
        for event in body["events"]:
            peer.take(event)
        return Response(b'{"accepted":%d}' % len(body["events"]), media_type="application/json")

    return Starlette(routes=[Route("/v1/events", ingest, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    uvicorn.run(app(NaivePeer(args.endpoint)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
