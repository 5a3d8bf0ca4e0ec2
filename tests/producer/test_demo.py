"""The demo application's own spans: under the attempt each was started in, over either OTLP protocol."""

import random
from datetime import UTC, datetime

from otel_bridge import RunIdentity, trace_id_for
from otel_bridge.ids import attempt_span_id
from otel_bridge.producer.demo import ENV, SCENARIOS, WORKFLOW_SERVICE, ApplicationSpans


def test_each_attempt_of_a_retried_step_gets_its_call_under_it_over_the_protocol_configured(otlp, monkeypatch):
    protocol, receiver = otlp
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    invocations = SCENARIOS["retry"](datetime(2025, 6, 1, tzinfo=UTC), random.Random(1))
    workflow_id = invocations[0][0]["workflowId"]

    app = ApplicationSpans()
    for batch in invocations:
        app.posted(batch)
    app.close()  # flushes

    run = RunIdentity("durable-effect", ENV, WORKFLOW_SERVICE, workflow_id)
    calls = receiver.received.trace(trace_id_for("durable-effect", ENV, WORKFLOW_SERVICE, workflow_id).hex())
    by_parent = {call.parent_span_id: call for call in calls if call.name == "POST /v1/payment_intents/capture"}
    assert set(by_parent) == {attempt_span_id(run, "capture", n).hex() for n in (1, 2)}
    assert (
        by_parent[attempt_span_id(run, "capture", 1).hex()].status_code,
        by_parent[attempt_span_id(run, "capture", 2).hex()].status_code,
    ) == (2, 0)
