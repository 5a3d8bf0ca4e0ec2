"""What receivers hand their events to, and what they get back.

Receivers are the first stage: they depend on this contract, not on the pipeline
behind it (as a Collector receiver is given its next consumer).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event of a batch that could not be used: where it was, and why."""

    index: int
    event_id: str | None
    field: str
    reason: str

    @property
    def error(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "eventId": self.event_id, "field": self.field, "error": self.error}


@dataclass(slots=True)
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def add(self, other: "IngestReport") -> None:
        """Count another batch's outcome in this one (its rejections are the caller's to place: their
        indexes are the other batch's)."""
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.late += other.late

    def as_dict(self, max_listed: int | None = None) -> dict[str, Any]:
        """The answer to the producer: at most `max_listed` rejections one by one, all of them counted."""
        listed = self.rejected if max_listed is None else self.rejected[:max_listed]
        answer: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "late": self.late,
            "rejected": [r.as_dict() for r in listed],
        }
        if len(listed) < len(self.rejected):
            answer["rejectedCount"] = len(self.rejected)
        return answer


class Unavailable(Exception):
    """Nothing of the batch was stored (store locked, full or unreachable): the sender should retry."""


class Backpressure(Unavailable):
    """The export backlog reached its bound: batches are refused rather than anything dropped."""


class AmbiguousId(LookupError):
    """A run (or job instance) asked for by the first characters of its id, which begin more than one id."""

    def __init__(self, given: str, ids: list[str], what: str) -> None:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        super().__init__(f"{given} begins the ids of {len(ids)} {what} ({shown}): give more of it")
        self.ids = ids


class EventConsumer(Protocol):
    def ingest(self, events: Sequence[Any], *, producer: str | None = None) -> IngestReport:
        """Store one batch of raw events; raises Unavailable when nothing could be stored. `producer`: the
        one serviceKey the batch's credential may post for (a producer's own key): another's event is rejected."""
        ...
