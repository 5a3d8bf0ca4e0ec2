"""Deterministic trace and span ids.

Replays, restarts and replicas must agree on ids without talking to each other,
so every id is a hash of what identifies the thing it names. Fields are joined
with U+001F (unit separator) so that no two field lists hash alike.
"""

import hashlib
from dataclasses import dataclass

SEPARATOR = "\x1f"


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What names one run: the engine, the producer (env, service) and the engine's run id."""

    engine: str
    env: str
    service: str
    run_id: str


def _digest(*fields: str) -> bytes:
    return hashlib.sha256(SEPARATOR.join(fields).encode()).digest()


def _non_zero(raw: bytes) -> bytes:
    # An all-zero id is invalid in W3C trace context; a hash hitting it is
    # astronomically unlikely, but the fix costs nothing.
    return raw if any(raw) else raw[:-1] + b"\x01"


def trace_id_for(engine: str, env: str, service: str, run_id: str) -> bytes:
    """The 16-byte trace id of one workflow run."""
    return _non_zero(_digest("trace", engine, env, service, run_id)[:16])


def span_id_for(run: RunIdentity, kind: str, *parts: str) -> bytes:
    """The 8-byte id of a span of `run`: `kind` is "root", "attempt", "sleep", "event"…"""
    return _non_zero(_digest(kind, run.engine, run.env, run.service, run.run_id, *parts)[:8])


def run_trace_id(run: RunIdentity) -> bytes:
    return trace_id_for(run.engine, run.env, run.service, run.run_id)


def root_span_id(run: RunIdentity) -> bytes:
    return span_id_for(run, "root")


def attempt_span_id(run: RunIdentity, step: str, attempt: int) -> bytes:
    return span_id_for(run, "attempt", step, str(attempt))


def traceparent(trace_id: bytes, span_id: bytes, sampled: bool = True) -> str:
    """W3C `traceparent` header value for a span."""
    return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"
