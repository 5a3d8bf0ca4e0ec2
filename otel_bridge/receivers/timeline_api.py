"""The Phase-10 engine's REST API: a workflow's executions page by page, and an execution's timeline
(read for history, and by the WebSocket follower to catch up).

`GET /api/workflows/{workflow_id}/executions?skip&limit&status` lists a workflow's executions
(`{"items", "total", "skip", "limit"}`, at most 100 a page); `GET /api/workflows/executions/
{id}/timeline` is each one's whole story. With `X-Workspace-Id` when the engine has several.
"""

import logging
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from otel_bridge.json_text import loads
from otel_bridge.repeated_failure import Cadence
from otel_bridge.retry_after import seconds_asked
from otel_bridge.sources.wire import utc

log = logging.getLogger(__name__)

PAGE = 100  # the most the API hands out at once

# Answers that say "not now" rather than "no": a rate limiter before the API, the API overloaded or
# restarting. Asked again as the answer asks (`Retry-After`), else after 1, 2, 4, 8 s, before the
# answer is taken for a failure: a history of thousands of executions behind a rate limiter was
# fetched at full speed, most of it "not fetched", and the follower's catch-up asked again at once.
THROTTLED = frozenset({429, 503})
_TRIES = 5
_LONGEST_WAIT = 60.0
_throttled = Cadence()  # told once, then once a minute while it lasts
# The clients one of whose requests was throttled through all its tries (an API down behind a load
# balancer answers 503 for as long as it is down): their requests after it are asked once, until one is
# answered otherwise, or a history of thousands of executions would wait 15 s for each.
_gave_up: "weakref.WeakSet[httpx.Client]" = weakref.WeakSet()


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
    stop: threading.Event | None = None,
) -> Iterator[str]:
    """The ids of the workflow's executions started in `window`, page by page (`workspace_id`: the
    workflow's workspace, when not the client's; `stop`: what ends a wait a throttled answer asks)."""
    skip = 0
    headers = {"X-Workspace-Id": workspace_id} if workspace_id else None
    listed: set[str] = set()
    while True:
        params: dict[str, Any] = {"skip": skip, "limit": PAGE} | ({"status": status} if status else {})
        url = f"{api_url}/api/workflows/{quote(workflow_id, safe='')}/executions"
        page = _get(client, url, params=params, headers=headers, stop=stop)
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


def timeline(
    client: httpx.Client,
    api_url: str,
    execution_id: str,
    workspace_id: str | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """`workspace_id`: the execution's workspace, when not the client's (the engine answers 404 for an
    execution of another workspace than the one its `X-Workspace-Id` names); `stop`: as `executions`'."""
    # Escaped: an id is what a message said, and one holding "/" or ".." must not name another resource.
    url = f"{api_url}/api/workflows/executions/{quote(execution_id, safe='')}/timeline"
    headers = {"X-Workspace-Id": workspace_id} if workspace_id else None
    return _get(client, url, headers=headers, stop=stop)


def _get(
    client: httpx.Client,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """The JSON `url` answers, asked again while the answer is a throttled one (`THROTTLED`)."""
    response = client.get(url, params=params, headers=headers)
    for attempt in range(0 if client in _gave_up else _TRIES - 1):
        if response.status_code not in THROTTLED:
            break
        asked = seconds_asked(response.headers.get("retry-after"))
        wait = min(asked if asked is not None else 2.0**attempt, _LONGEST_WAIT)
        if _throttled.failed():
            log.warning(
                "the Phase-10 API answered %d at %s: asked again in %.3g s%s (told once a minute while it lasts)",
                response.status_code, url, wait, ", as it asks" if asked is not None else "",
            )  # fmt: skip
        if stop is None:
            time.sleep(wait)
        elif stop.wait(wait):
            break  # stopping: the answer as it was
        response = client.get(url, params=params, headers=headers)
    if response.status_code in THROTTLED:
        _gave_up.add(client)
    else:
        _gave_up.discard(client)
        _throttled.recovered()
    return _json(response, url)


def _json(response: httpx.Response, url: str) -> Any:
    if response.is_error:
        raise ApiError(f"{url} answered {response.status_code}: {response.text[:200]}", response.status_code)
    try:
        return loads(response.content)  # lone surrogates made U+FFFD, as the WebSocket's messages
    except ValueError as exc:
        raise ApiError(f"{url} answered no JSON: {exc}") from None
