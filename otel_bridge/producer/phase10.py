"""Messages of the Phase-10 engine's `/ws/stream`, in the shape it really sends (issue 7), and its timelines.

run = Phase10Run("nightly-report")
run.started(3).step_started("s1", "fetch", 1).after(800).step_completed("s1").completed()
"""

import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any, Self

_BASE = datetime(2025, 3, 1, 12, 0, 0)  # the engine's timestamps carry no zone: UTC
_ids = itertools.count(1)


def _naive_iso(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds")


class Phase10Run:
    def __init__(
        self,
        name: str = "nightly-report",
        execution_id: str | None = None,
        workflow_id: str = "wf-report",
        workspace_id: str = "ws-1",
        start: datetime | None = None,
    ) -> None:
        self.name = name
        self.execution_id = execution_id or f"p10-exec-{next(_ids):06d}-{uuid.uuid4().hex[:8]}"
        self.workflow_id = workflow_id
        self.workspace_id = workspace_id
        self.now = (start or _BASE).replace(tzinfo=None)
        self.events: list[dict[str, Any]] = []
        self._steps: dict[str, dict[str, Any]] = {}
        self.status = "running"
        self.error: str | None = None
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None

    def after(self, ms: float) -> Self:
        self.now += timedelta(milliseconds=ms)
        return self

    def _emit(
        self,
        event_type: str,
        data: dict[str, Any],
        step_id: str | None = None,
        with_workflow: bool = True,
        agent_id: str | None = None,
    ) -> Self:
        self.events.append(
            {
                "event_type": event_type,
                "timestamp": _naive_iso(self.now),
                "workspace_id": self.workspace_id,
                "agent_id": agent_id,
                "task_id": None,
                "run_id": None,
                "workflow_id": self.workflow_id if with_workflow else None,
                "workflow_execution_id": self.execution_id,
                "workflow_step_id": step_id,
                "data": data,
                "message": event_type.replace("_", " "),
            }
        )
        return self

    def started(self, step_count: int = 1, **variables: Any) -> Self:
        self.started_at = self.now
        data = {"workflow_name": self.name, "input_variables": variables, "step_count": step_count}
        return self._emit("workflow_started", data)

    def step_started(
        self, step_id: str, name: str, order: int = 1, step_type: str = "action", agent_id: str | None = None
    ) -> Self:
        self._steps[step_id] = {"step_id": step_id, "step_name": name, "step_order": order, "started_at": self.now}
        data = {"step_name": name, "step_type": step_type, "step_order": order, "config": {}}
        # An agent step names the agent instance that runs it, beside `data` (the engine's StepStartedEvent).
        return self._emit("step_started", data, step_id, agent_id=agent_id)

    def _step_ended(self, step_id: str, status: str, event_type: str, data: dict[str, Any]) -> Self:
        step = self._steps.setdefault(step_id, {"step_id": step_id, "step_name": step_id, "step_order": 0})
        step |= {"status": status, "completed_at": self.now, "error_message": data.get("error_message")}
        # Step results carry no workflow_id on the wire.
        return self._emit(event_type, data, step_id, with_workflow=False)

    def step_completed(self, step_id: str, duration: float = 0.5, **output: Any) -> Self:
        return self._step_ended(step_id, "completed", "step_completed", {"output_data": output, "duration": duration})

    def step_failed(self, step_id: str, error: str = "boom", duration: float = 0.5) -> Self:
        return self._step_ended(step_id, "failed", "step_failed", {"error_message": error, "duration": duration})

    def step_skipped(self, step_id: str) -> Self:
        return self._step_ended(step_id, "skipped", "step_skipped", {})

    def _counts(self) -> dict[str, int]:
        statuses = [s.get("status") for s in self._steps.values()]
        return {
            "step_count": len(statuses),
            "completed_steps": statuses.count("completed"),
            "failed_steps": statuses.count("failed"),
            "skipped_steps": statuses.count("skipped"),
        }

    def completed(self) -> Self:
        self.status, self.completed_at = "completed", self.now
        return self._emit("workflow_completed", self._counts())

    def failed(self, error_message: str | None = None, error_type: str | None = None) -> Self:
        self.status, self.completed_at, self.error = "failed", self.now, error_message
        data = {"error_message": error_message, "error_type": error_type} if error_message else self._counts()
        return self._emit("workflow_failed", data)

    def cancelled(self) -> Self:
        self.status, self.completed_at = "cancelled", self.now
        return self._emit("workflow_cancelled", {})

    def timeline(self, retries: dict[str, int] | None = None) -> dict[str, Any]:
        """`GET /api/workflows/executions/{id}/timeline` for this run as it stands."""
        retries = retries or {}
        steps = []
        for step in self._steps.values():
            started, ended = step.get("started_at"), step.get("completed_at")
            steps.append(
                {
                    "step_id": step["step_id"],
                    "step_name": step["step_name"],
                    "step_order": step["step_order"],
                    "status": step.get("status", "running"),
                    "started_at": started and _naive_iso(started),
                    "completed_at": ended and _naive_iso(ended),
                    "duration_seconds": (ended - started).total_seconds() if started and ended else None,
                    "retry_count": retries.get(step["step_id"], 0),
                    "error_message": step.get("error_message"),
                    "input_summary": None,
                    "output_summary": None,
                }
            )
        counts = self._counts()
        started, completed, duration = self._when()
        return {
            "execution_id": self.execution_id,
            "workflow_id": self.workflow_id,
            "status": self.status,
            "started_at": started,
            "completed_at": completed,
            "total_duration_seconds": duration,
            "step_count": counts["step_count"],
            "completed_step_count": counts["completed_steps"],
            "failed_step_count": counts["failed_steps"],
            "skipped_step_count": counts["skipped_steps"],
            "step_timeline": steps,
            "error_message": self.error,
        }

    def summary(self) -> dict[str, Any]:
        """This run as an item of `GET /api/workflows/{workflow_id}/executions`."""
        started, completed, duration = self._when()
        return {
            "id": self.execution_id,
            "workflow_id": self.workflow_id,
            "status": self.status,
            "started_at": started,
            "completed_at": completed,
            "duration": duration,
        }

    def _when(self) -> tuple[str | None, str | None, float | None]:
        """When the run started and ended, as the API writes them, and how long it took in seconds."""
        started, completed = self.started_at, self.completed_at
        return (
            _naive_iso(started) if started else None,
            _naive_iso(completed) if completed else None,
            (completed - started).total_seconds() if started and completed else None,
        )


def executions_page(
    runs: list[Phase10Run], workflow_id: str, skip: int, limit: int, status: str | None, max_limit: int = 100
) -> dict[str, Any]:
    """`GET /api/workflows/{workflow_id}/executions?skip&limit&status` over these runs, as the API pages it
    (newest first, `limit` at most `max_limit`)."""
    mine = [run for run in runs if run.workflow_id == workflow_id and (status is None or run.status == status)]
    mine.sort(key=lambda run: run.started_at or datetime.min, reverse=True)
    limit = min(max(limit, 1), max_limit)
    return {
        "items": [run.summary() for run in mine[skip : skip + limit]],
        "total": len(mine),
        "skip": skip,
        "limit": limit,
    }
