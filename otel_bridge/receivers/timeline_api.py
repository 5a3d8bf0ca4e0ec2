"""The Phase-10 engine's REST API: a workflow's executions page by page, and an execution's timeline
(read for history, and by the WebSocket follower to catch up).

`GET /api/workflows/{workflow_id}/executions?skip&limit&status` lists a workflow's executions
(`{"items", "total", "skip", "limit"}`, at most 100 a page); `GET /api/workflows/executions/
{id}/timeline` is each one's whole story. With `X-Workspace-Id` when the engine has several.
"""

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from otel_bridge.json_text import loads
from otel_bridge.sources.wire import utc

log = logging.getLogger(__name__)

PAGE = 100  # the most the API hands out at once


@dataclass(frozen=True)
class Window:
    """Executions started in [since, until); either end open."""

    since: datetime | None = None
    until: datetime | None = None

    def holds(self, started_at: Any) -> bool:
        if self.since is None and self.until is None:
            return True
        if not isinstance(started_at, str):
            return False  # not started (queued): in no window of start times
        try:
            started = utc(datetime.fromisoformat(started_at))
        except ValueError:
            return False
        return (self.since is None or started >= self.since) and (self.until is None or started < self.until)


class ApiError(Exception):
    """What the engine's API answered that is not a list of executions or a timeline; `status`, the
    HTTP status when it answered one that is an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def executions(
    client: httpx.Client,
    api_url: str,
    workflow_id: str,
    window: Window,
    status: str | None = None,
    workspace_id: str | None = None,
) -> Iterator[str]:
    """The ids of the workflow's executions started in `window`, page by page (`workspace_id`: the
    workflow's workspace, when not the client's)."""
    skip = 0
    headers = {"X-Workspace-Id": workspace_id} if workspace_id else None
    listed: set[str] = set()
    while True:
        params: dict[str, Any] = {"skip": skip, "limit": PAGE} | ({"status": status} if status else {})
        url = f"{api_url}/api/workflows/{quote(workflow_id, safe='')}/executions"
        page = _json(client.get(url, params=params, headers=headers), url)
        items = page.get("items") if isinstance(page, dict) else page
        if not isinstance(items, list):
            raise ApiError(f"{url} answered no list of executions (expected {{'items': [...]}})")
        new = 0
        for item in items:
            execution = (item.get("id") or item.get("execution_id")) if isinstance(item, dict) else None
            if not isinstance(execution, str) or execution in listed:
                continue
            listed.add(execution)
            new += 1
            if window.holds(item.get("started_at")):
                yield execution
        skip += len(items)
        total = page.get("total") if isinstance(page, dict) else None
        # The page size is the API's to cap: the end is an empty page, or the total reached.
        if not items or (isinstance(total, int) and skip >= total):
            return
        if not new:
            # A page of executions all listed already: an API that does not page (`skip` ignored), which
            # would otherwise be asked for the same page for ever, and no total to stop at.
            log.warning(
                "%s answered the executions it had listed already at skip=%d: the listing ends there (%d listed)",
                url, skip - len(items), len(listed),
            )  # fmt: skip
            return


def history(
    client: httpx.Client, api_url: str, workflow_id: str, window: Window, status: str | None, name: str = ""
) -> Iterator[tuple[str, Any]]:
    """(execution id, its timeline, or the error that kept it from being fetched) for each execution
    listed; `name` given to timelines that carry none (they never do). A failing listing raises."""
    for execution in executions(client, api_url, workflow_id, window, status):
        try:
            document = timeline(client, api_url, execution)
        except (httpx.HTTPError, ApiError) as exc:
            yield execution, exc
            continue
        if name and isinstance(document, dict) and not document.get("workflow_name"):
            document["workflow_name"] = name
        yield execution, document


def name_it(document: Any, names: Mapping[str, str]) -> Any:
    """The timeline given the name of its workflow's runs, as `names` has it by workflow id, when it
    carries none (they never do: without it, its run is named by the workflow id)."""
    if not isinstance(document, dict) or document.get("workflow_name"):
        return document
    if (name := names.get(str(document.get("workflow_id")))) is not None:
        document["workflow_name"] = name
    return document


def in_workspace(document: Any, workspace_id: str | None) -> Any:
    """The timeline with the workspace it was fetched in, which it does not carry: the engine answers a
    timeline only in its execution's workspace, so that is the run's (`workspace.id`, as a live
    message's run has it)."""
    if isinstance(document, dict) and workspace_id and not document.get("workspace_id"):
        document["workspace_id"] = workspace_id
    return document


def timeline(client: httpx.Client, api_url: str, execution_id: str, workspace_id: str | None = None) -> Any:
    """`workspace_id`: the execution's workspace, when not the client's (the engine answers 404 for an
    execution of another workspace than the one its `X-Workspace-Id` names)."""
    # Escaped: an id is what a message said, and one holding "/" or ".." must not name another resource.
    url = f"{api_url}/api/workflows/executions/{quote(execution_id, safe='')}/timeline"
    headers = {"X-Workspace-Id": workspace_id} if workspace_id else None
    return _json(client.get(url, headers=headers), url)


def _json(response: httpx.Response, url: str) -> Any:
    if response.is_error:
        raise ApiError(f"{url} answered {response.status_code}: {response.text[:200]}", response.status_code)
    try:
        return loads(response.content)  # lone surrogates made U+FFFD, as the WebSocket's messages
    except ValueError as exc:
        raise ApiError(f"{url} answered no JSON: {exc}") from None
