"""An application's own spans inside a run's trace: the context of the run's root, or of one attempt.

The bridge's ids are hashes of what names a run and an attempt (`ids.py`), known before the bridge has
sent anything, so the producer can start its own spans (the HTTP calls and queries a step makes) as
children of the attempt span the bridge will send, and Jaeger draws them under that step. Only the
OpenTelemetry API is needed: a producer that POSTs to a sidecar has no SDK of the bridge's in it.
"""

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_bridge import conventions as c
from otel_bridge.ids import RunIdentity, attempt_span_id, root_span_id, run_trace_id, sample_bound, within_ratio


def span_context_for(
    run: RunIdentity, step: str | None = None, attempt: int | None = None, sample_ratio: float = 1.0
) -> SpanContext:
    """The span context of the run's root span, or of `step`'s attempt (the first when none is given),
    sampled when the bridge sends the run as it goes (`trace_sample_ratio`)."""
    trace_id = run_trace_id(run)
    span_id = root_span_id(run) if step is None else attempt_span_id(run, step, 1 if attempt is None else attempt)
    sampled = within_ratio(trace_id, sample_bound(sample_ratio))
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    # Remote: the span is the bridge's, made in another process (or later), as a traceparent header says.
    return SpanContext(int.from_bytes(trace_id), int.from_bytes(span_id), is_remote=True, trace_flags=flags)


def run_context(
    env: str,
    service_key: str,
    workflow_id: str,
    step: str | None = None,
    attempt: int | None = None,
    *,
    engine: str = c.PLATFORM_DURABLE_EFFECT,
    tenant: str | None = None,
    sample_ratio: float = 1.0,
    context: Context | None = None,
) -> Context:
    """`context` (by default the current one) with the run's root span, or `step`'s attempt, as its span:
    what `tracer.start_as_current_span(name, context=...)`, or `opentelemetry.context.attach`, takes.

    `sample_ratio`: the bridge's `trace_sample_ratio` (an `OtelTracker`'s `context` knows its own): the
    span is sampled when the bridge sends the run as it goes, so that a parent-based sampler keeps the
    application's spans with the run, or leaves them out with it.
    """
    run = RunIdentity(engine, env, service_key, workflow_id, tenant)
    return trace.set_span_in_context(NonRecordingSpan(span_context_for(run, step, attempt, sample_ratio)), context)
