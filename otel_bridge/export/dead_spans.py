"""Spans the backend refused for good, read back from the span dead-letter file to be sent again.

Once the backend's limit or policy is fixed, the spans it refused are put back into the
outbox as they were: the same ids and content, under the same resource, so they join
their traces as if never refused.
"""

from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import keys


class NotResendable(ValueError):
    """A line of a span dead-letter file that holds no span to send again; the message says why."""


def outbox_row(letter: Any) -> tuple[str, bytes]:
    """A span dead letter -> the outbox row it was: (resource key, encoded span)."""
    if not isinstance(letter, dict) or not isinstance(letter.get("event"), dict):
        raise NotResendable("not a span dead letter: a JSON object with the span as 'event'")
    service, env = letter.get("service.name"), letter.get("deployment.environment.name")
    if not isinstance(service, str) or not isinstance(env, str):
        raise NotResendable("names no 'service.name' and 'deployment.environment.name' to send the span under")
    try:
        span = ParseDict(letter["event"], Span())
    except ParseError as exc:
        raise NotResendable(f"the span is not OTLP JSON: {exc}") from None
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise NotResendable("the span has no valid traceId and spanId")
    return keys.resource_key(service, env), span.SerializeToString()
