"""Faults injected into the real pipeline: for the tests of what it does when it has a bug."""

from otel_bridge import pipeline
from otel_bridge.lifecycle import event_id_of

BUG = "a bug the pipeline has for this event"


def a_bug_for(monkeypatch, event_id: str) -> None:
    """From now until `monkeypatch.undo()` (or the test's end), `apply` raises for `event_id`, only for it."""
    real = pipeline.apply

    def apply(state, due, record, now, policy):
        if event_id_of(record) == event_id:
            raise RuntimeError(BUG)
        return real(state, due, record, now, policy)

    monkeypatch.setattr(pipeline, "apply", apply)
