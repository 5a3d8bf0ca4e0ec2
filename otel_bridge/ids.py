"""Deterministic trace and span ids.

Replays, restarts and replicas must agree on ids without talking to each other,
so every id is a hash of what identifies the thing it names. Fields are joined
with U+001F (unit separator) so that no two field lists hash alike.
"""

import hashlib
from dataclasses import dataclass

from otel_bridge.keys import SEPARATOR


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What names one run: the engine, the producer (env, service), the tenant where the engine
    has tenants, and the engine's run id."""

    engine: str
    env: str
    service: str
    run_id: str
    tenant: str | None = None

    def fields(self) -> tuple[str, ...]:
        # The tenant adds a field rather than joining the run id: a run of a tenant-less
        # engine can never hash like a tenant's run.
        base = (self.engine, self.env, self.service)
        return (*base, self.tenant, self.run_id) if self.tenant is not None else (*base, self.run_id)


def _digest(*fields: str) -> bytes:
    return hashlib.sha256(SEPARATOR.join(fields).encode()).digest()


# What an event id is remembered by where it is kept long (a week, to tell a re-sent event from a new
# one): 8 bytes instead of ~40. A new id matches one of n kept digests with odds of n/2^64.
EVENT_DIGEST_BYTES = 8


def event_digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=EVENT_DIGEST_BYTES).digest()


def _non_zero(raw: bytes) -> bytes:
    # An all-zero id is invalid in W3C trace context; a hash hitting it is
    # astronomically unlikely, but the fix costs nothing.
    return raw if any(raw) else raw[:-1] + b"\x01"


def trace_id_for(engine: str, env: str, service: str, run_id: str, tenant: str | None = None) -> bytes:
    """The 16-byte trace id of one workflow run."""
    return _non_zero(_digest("trace", *RunIdentity(engine, env, service, run_id, tenant).fields())[:16])


def span_id_for(run: RunIdentity, kind: str, *parts: str) -> bytes:
    """The 8-byte id of a span of `run`: `kind` is "root", "attempt", "sleep", "state", "task"…"""
    return _non_zero(_digest(kind, *run.fields(), *parts)[:8])


def run_trace_id(run: RunIdentity) -> bytes:
    return _non_zero(_digest("trace", *run.fields())[:16])


def root_span_id(run: RunIdentity) -> bytes:
    return span_id_for(run, "root")


def attempt_span_id(run: RunIdentity, step: str, attempt: int) -> bytes:
    return span_id_for(run, "attempt", step, str(attempt))


def sample_bound(ratio: float) -> int | None:
    """What `within_ratio` compares with: the SDK's own bound for `ratio`, so that a run is chosen as its
    `traceidratio` sampler would choose the trace. None: every trace (a ratio of 1)."""
    # Here, not at the top: a producer's HttpBatchTracker imports this module, and not the SDK.
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    return None if ratio >= 1 else TraceIdRatioBased.get_bound_for_rate(ratio)


def within_ratio(trace_id: bytes, bound: int | None) -> bool:
    """Whether the SDK's `traceidratio` sampler samples the trace: its id's low 64 bits below `bound`."""
    return bound is None or int.from_bytes(trace_id) & _LOW_64_BITS < bound


_LOW_64_BITS = (1 << 64) - 1


def traceparent(trace_id: bytes, span_id: bytes, sampled: bool = True) -> str:
    """W3C `traceparent` header value for a span."""
    return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"
