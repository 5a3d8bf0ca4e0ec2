"""A stand-in for the Phase-10 engine: its `/ws/stream` WebSocket and REST endpoints (timelines, a workflow's
executions), on uvicorn.

Each connection is handed the next script of messages; a script ending in DROP closes the
connection there, as a restarting engine or a network cut would, and a Pause in it waits before
the messages after it, as an engine whose steps take a while does.
"""

import asyncio
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from otel_bridge.producer.phase10 import Phase10Run, executions_page

DROP = object()


@dataclass(frozen=True)
class Pause:
    seconds: float


class Phase10Server:
    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """`tls`: (certificate, key): its WebSocket and API over TLS (`wss://`, `https://`)."""
        # Bound here, handed to uvicorn: no other test's server can take the port in between.
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        secure = "s" if tls else ""
        self.ws_url = f"ws{secure}://127.0.0.1:{self.port}/ws/stream"
        self.api_url = f"http{secure}://127.0.0.1:{self.port}"
        self.scripts: queue.Queue[list[Any]] = queue.Queue()
        self.timelines: dict[str, dict[str, Any]] = {}
        self.timeline_requests: list[tuple[str, str | None]] = []
        # An execution's workspace: its timeline is "not found" in another's context, as the engine has it.
        self.timeline_workspaces: dict[str, str] = {}
        # An execution's timeline answered only once its gate opens (a slow or hung API) ...
        self.timeline_gates: dict[str, threading.Event] = {}
        # ... or with a 503 this many times first (an API restarting).
        self.timeline_failures: dict[str, int] = {}
        self.connections = 0
        # Executions `GET /api/workflows/{id}/executions` lists, at most `page_limit` a page.
        self.runs: list[Phase10Run] = []
        self.page_limit = 100
        # The listing answers 500 from this offset on (an API failing halfway through a history).
        self.listing_fails_from: int | None = None
        # (workflow id, X-Workspace-Id) of each listing asked for.
        self.listing_requests: list[tuple[str, str | None]] = []
        # A rate limiter before the API: each request answered 429 with `retry_after` (none when None)
        # when it comes sooner than `min_interval` seconds after the last one taken; when each was.
        self.min_interval = 0.0
        self.retry_after: str | None = None
        self.throttled: list[float] = []
        self._last_taken = 0.0

        def limited() -> Response | None:
            now = time.monotonic()
            if now - self._last_taken < self.min_interval:
                self.throttled.append(now)
                asks = {"retry-after": self.retry_after} if self.retry_after is not None else None
                return JSONResponse({"detail": "Too Many Requests"}, status_code=429, headers=asks)
            self._last_taken = now
            return None

        async def stream(websocket: WebSocket) -> None:
            await websocket.accept()
            self.connections += 1
            try:
                script = await asyncio.to_thread(self.scripts.get, True, 30)
            except queue.Empty:
                await websocket.close()
                return
            try:
                for message in script:
                    if message is DROP:
                        await websocket.close(code=1012)  # service restart
                        return
                    if isinstance(message, Pause):
                        await asyncio.sleep(message.seconds)
                        continue
                    await websocket.send_json(message)
                while True:  # stay connected, as the engine does, until the client leaves
                    await websocket.receive_text()
            except WebSocketDisconnect:
                return

        async def timeline(request: Request) -> Response:
            execution = request.path_params["execution_id"]
            if (refused := limited()) is not None:
                return refused
            self.timeline_requests.append((execution, request.headers.get("x-workspace-id")))
            if (gate := self.timeline_gates.get(execution)) is not None:
                await asyncio.to_thread(gate.wait, 60)
            if self.timeline_failures.get(execution, 0) > 0:
                self.timeline_failures[execution] -= 1
                asks = {"retry-after": self.retry_after} if self.retry_after is not None else None
                return JSONResponse({"detail": "Service Unavailable"}, status_code=503, headers=asks)
            owner = self.timeline_workspaces.get(execution)
            if execution not in self.timelines or owner not in (None, request.headers.get("x-workspace-id")):
                return JSONResponse({"detail": "Execution not found"}, status_code=404)
            # json.dumps escapes as JavaScript's JSON.stringify does, lone surrogates included.
            return Response(json.dumps(self.timelines[execution]), media_type="application/json")

        async def executions(request: Request) -> Response:
            query = request.query_params
            if (refused := limited()) is not None:
                return refused
            self.listing_requests.append((request.path_params["workflow_id"], request.headers.get("x-workspace-id")))
            if self.listing_fails_from is not None and int(query.get("skip", 0)) >= self.listing_fails_from:
                return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
            page = executions_page(
                self.runs,
                request.path_params["workflow_id"],
                int(query.get("skip", 0)),
                int(query.get("limit", 10)),
                query.get("status"),
                self.page_limit,
            )
            return JSONResponse(page)

        app = Starlette(
            routes=[
                WebSocketRoute("/ws/stream", stream),
                Route("/api/workflows/executions/{execution_id}/timeline", timeline),
                Route("/api/workflows/{workflow_id}/executions", executions),
            ]
        )
        certificate, key = tls or (None, None)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", ssl_certfile=certificate, ssl_keyfile=key
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> "Phase10Server":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the Phase-10 stand-in did not start"
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()
