"""Event streams for tests: the producer-side builders, written like the seed guide's flow diagrams."""

from otel_bridge.producer.events import JobRun, WorkflowRun, iso, ns, ns_of

__all__ = ["JobRun", "WorkflowRun", "iso", "ns", "ns_of"]
