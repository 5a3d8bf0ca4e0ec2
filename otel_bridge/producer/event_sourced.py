"""Stream entries of the event-sourced runtime, written the way it publishes them (issue 7).

run = Execution("onboarding", tenant="acme")
run.started().after(50).moved("awaiting_docs").task_created("t1", "review").after(9000).task_completed("t1", to="done")
"""

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import orjson

from otel_bridge.producer.events import iso

_BASE = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
_ids = itertools.count(1)


def _entry(
    at: datetime,
    event_type: str,
    event_name: str,
    tenant: str,
    execution_id: str = "",
    from_state: str = "",
    to_state: str = "",
    user_id: str = "",
    payload: dict[str, Any] | None = None,
) -> dict[str, str]:
    """One stream entry: flat string fields, an empty string meaning absent."""
    return {
        "event_id": str(uuid.uuid4()),
        "execution_id": execution_id,
        "event_name": event_name,
        "event_type": event_type,
        "tenant": tenant,
        "timestamp": iso(at),
        "user_id": user_id,
        "from_state": from_state,
        "to_state": to_state,
        "payload_json": orjson.dumps(payload).decode() if payload else "",
    }


def as_row(entry: dict[str, str]) -> dict[str, Any]:
    """The same event as a row of the `workflow_events` table (nested payload, created_at)."""
    row: dict[str, Any] = {k: v for k, v in entry.items() if k not in ("payload_json", "timestamp")}
    row["payload"] = orjson.loads(entry["payload_json"]) if entry["payload_json"] else None
    row["created_at"] = entry["timestamp"]
    return row


def trigger(event_type: str, tenant: str = "acme", at: datetime | None = None, **payload: Any) -> dict[str, str]:
    """A domain event from outside (an inbound e-mail…): no execution of its own."""
    return _entry(at or _BASE, event_type, event_type, tenant, payload=payload or None)


class Execution:
    def __init__(
        self,
        name: str = "onboarding",
        tenant: str = "acme",
        execution_id: str | None = None,
        start: datetime | None = None,
    ) -> None:
        self.name = name
        self.tenant = tenant
        self.execution_id = execution_id or f"exec-{next(_ids):06d}-{uuid.uuid4().hex[:8]}"
        self.now = start or _BASE
        self.state = "none"
        self.events: list[dict[str, str]] = []

    def after(self, ms: float) -> Self:
        self.now += timedelta(milliseconds=ms)
        return self

    def _emit(self, event_type: str, event_name: str, to_state: str, **fields: Any) -> Self:
        self.events.append(
            _entry(self.now, event_type, event_name, self.tenant, self.execution_id, self.state, to_state, **fields)
        )
        self.state = to_state or self.state
        return self

    def started(self, initial_data: dict[str, Any] | None = None, version: str = "1") -> Self:
        payload = {"workflow_name": self.name, "workflow_version": version, "initial_data": initial_data or {}}
        return self._emit("system", "workflow.started", "initial", payload=payload)

    def moved(self, to: str, event_name: str | None = None, user: str = "", **payload: Any) -> Self:
        return self._emit("workflow", event_name or f"moved_to_{to}", to, user_id=user, payload=payload or None)

    def submitted(self, event_name: str, user: str = "", **payload: Any) -> Self:
        """An event submitted asynchronously: published with to_state == from_state."""
        return self._emit("workflow", event_name, self.state, user_id=user, payload=payload or None)

    def task_created(self, task_id: str, task_type: str = "approval") -> Self:
        entry = _entry(
            self.now, "task_created", f"Task:{task_id}:Created", self.tenant, self.execution_id, "", "pending"
        )
        entry["payload_json"] = orjson.dumps({"taskType": task_type}).decode()
        self.events.append(entry)
        return self

    def task_completed(self, task_id: str, to: str | None = None, user: str = "") -> Self:
        return self._emit("workflow", f"Task:{task_id}:Complete", to or self.state, user_id=user)

    def ended(self, state: str = "completed", **payload: Any) -> Self:
        return self._emit("workflow", f"moved_to_{state}", state, payload=payload or None)
