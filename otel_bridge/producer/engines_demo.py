"""Demo traffic for the other engines: event-sourced executions on a Redis stream, the runtime v2's
runs in its PostgreSQL tables, and a Phase-10 engine's WebSocket with its timeline API, as
`otel-bridge serve --stream-url/--runtime-v2-url/--ws-url` follow them.

Each scenario is built with the producer-side builders, its events published when their time
comes (waits compressed to seconds), so Jaeger shows real timelines for all three engines.
"""

import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from otel_bridge.producer import runtime_v2
from otel_bridge.producer.event_sourced import Execution, trigger
from otel_bridge.producer.phase10 import Phase10Run, executions_page
from otel_bridge.redis_client import connect

log = logging.getLogger(__name__)

STREAM_KEY = "workflow:events:global"
# The runtime v2's tenant in the demo: a uuid, as the runtime's tenants are.
DEMO_TENANT = "5f0c1a2e-7b3d-4e8f-9a61-2c4d6e8f0a1b"
Scheduled = list[tuple[float, Any]]  # (Unix time to publish at, the message)


def _at(timestamp: str) -> float:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def event_sourced_scenario(now: datetime, rng: random.Random) -> Scheduled:
    """One of: an onboarding with a human review, started by an inbound e-mail; a failed payout; a cancel."""
    tenant = rng.choice(("acme", "globex", "initech"))
    kind = rng.choice(("onboarding", "onboarding", "payout", "cancelled"))
    entries: list[dict[str, str]] = []
    if kind == "onboarding":
        inbound = trigger("INBOUND_EMAIL_RECEIVED", tenant=tenant, at=now, subject="new customer")
        run = Execution("customerOnboarding", tenant=tenant, start=now).after(20)
        run.started({"eventId": inbound["event_id"]}).after(rng.randint(50, 300)).moved("collecting_documents")
        run.after(rng.randint(200, 900)).submitted("document_uploaded", user="u-" + str(rng.randint(1, 50)), kind="id")
        run.after(100).task_created(f"t{rng.randint(1, 10**6)}", "kyc_review")
        task = run.events[-1]["event_name"].split(":")[1]
        run.after(rng.randint(1500, 4000)).task_completed(task, to="approved", user="reviewer-1")
        run.after(rng.randint(50, 300)).ended("completed")
        entries = [inbound, *run.events]
    elif kind == "payout":
        run = Execution("vendorPayout", tenant=tenant, start=now).started().after(rng.randint(50, 200))
        run.moved("verifying").after(rng.randint(200, 800)).moved("paying").after(rng.randint(100, 600))
        entries = run.ended("failed", error="bank rejected the transfer").events
    else:
        run = Execution("vendorPayout", tenant=tenant, start=now).started().after(rng.randint(100, 400))
        entries = run.moved("verifying").after(rng.randint(300, 900)).ended("cancelled").events
    return [(_at(e["timestamp"]), e) for e in entries]


def phase10_scenario(now: datetime, rng: random.Random) -> tuple[Phase10Run, Scheduled, dict[str, int]]:
    """A three-step report: mostly fine, sometimes a failed and a skipped step; retries only in its timeline."""
    run = Phase10Run("nightlyReport", start=now.replace(tzinfo=None)).started(3, region=rng.choice(("eu", "us")))
    run.after(rng.randint(10, 50)).step_started("fetch", "fetchData", 1, "http").after(rng.randint(200, 900))
    run.step_completed("fetch", 0.5, rows=rng.randint(10, 1000)).after(5)
    run.step_started("render", "renderReport", 2, "llm").after(rng.randint(300, 1500))
    retries = {"render": rng.choice((0, 0, 1, 2))}
    if rng.random() < 0.2:
        run.step_failed("render", "template missing", 0.4).after(2).step_skipped("mail").after(1).failed()
    else:
        run.step_completed("render", 0.8).after(5).step_started("mail", "sendMail", 3, "email").after(80)
        run.step_completed("mail", 0.08).after(2).completed()
    return run, [(_at(m["timestamp"]), m) for m in run.events], retries


class _Schedule:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def add(self, items: Scheduled) -> None:
        with self._lock:
            for at, message in items:
                heapq.heappush(self._heap, (at, next(self._seq), message))

    def due(self) -> list[Any]:
        out = []
        with self._lock:
            while self._heap and self._heap[0][0] <= time.time():
                out.append(heapq.heappop(self._heap)[2])
        return out

    def __len__(self) -> int:
        return len(self._heap)


class Phase10Engine:
    """The demo's Phase-10 stand-in: `/ws/stream` broadcasts to every follower, the REST API serves timelines."""

    def __init__(self, host: str, port: int) -> None:
        self.runs: dict[str, tuple[Phase10Run, dict[str, int]]] = {}
        self._clients: set[ServerConnection] = set()
        self._lock = threading.Lock()
        self._server = serve(self._follow, host, port, process_request=self._rest)
        threading.Thread(target=self._server.serve_forever, name="phase10-demo", daemon=True).start()

    def _rest(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        parts = url.path.strip("/").split("/")
        if parts[:3] == ["api", "workflows", "executions"] and len(parts) == 5 and parts[4] == "timeline":
            known = self.runs.get(parts[3])
            if known is None:
                return connection.respond(404, '{"detail": "Execution not found"}\n')
            return _json(known[0].timeline(retries=known[1]))
        if parts[:2] == ["api", "workflows"] and len(parts) == 4 and parts[3] == "executions":
            query = dict(parse_qsl(url.query))
            try:
                skip, limit = int(query.get("skip", 0)), int(query.get("limit", 10))
            except ValueError:
                return connection.respond(422, '{"detail": "skip and limit are integers"}\n')
            runs = [run for run, _retries in self.runs.values()]
            return _json(executions_page(runs, parts[2], skip, limit, query.get("status")))
        if parts == ["ws", "stream"]:
            return None  # the WebSocket handshake
        return connection.respond(404, "not found\n")

    def _follow(self, connection: ServerConnection) -> None:
        with self._lock:
            self._clients.add(connection)
        try:
            for _ in connection:  # followers send nothing; wait until they leave
                pass
        finally:
            with self._lock:
                self._clients.discard(connection)

    def broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.send(text)
            except Exception:  # a follower that left: it catches up from the timelines
                log.debug("a follower left mid-send")

    def close(self) -> None:
        self._server.shutdown()


def run_engines_demo(
    stream_url: str | None,
    ws_port: int | None,
    rate: float,
    duration: float,
    seed: int | None,
    ws_host: str = "0.0.0.0",
    stop: threading.Event | None = None,
    runtime_v2_url: str | None = None,
    incidents: float = 0.0,
    schedule_every: float = 20.0,
) -> dict[str, int]:
    """Publish `rate` runs per second of each engine given, for `duration` s (0: until `stop`), and of the
    runtime v2 a schedule's run every `schedule_every` s. `incidents`: the share of the runtime v2's runs
    launched that no worker takes (the first of them is one), a quarter of that of events not delivered (with
    the first run: Temporal out of reach) and as many whose second workflow refused their payload beside the
    run they launched; and one schedule whose occurrences never come."""
    rng = random.Random(seed)
    stop = stop or threading.Event()
    client = connect(stream_url) if stream_url else None
    engine = Phase10Engine(ws_host, ws_port) if ws_port else None
    # The runtime v2's tables, made in that database if they are not there (the demo's own database).
    # Its tenant a uuid, as the runtime's are: the workflows it did not launch for an event are kept by it.
    tables = (
        runtime_v2.Runtime(psycopg.connect(runtime_v2_url, autocommit=True), tenant=DEMO_TENANT)
        if runtime_v2_url
        else None
    )
    schedule = _Schedule()
    started = next_start = time.time()
    counts = {"event-sourced": 0, "phase10": 0, "runtime-v2": 0}
    publishers: list[Callable[[datetime], None]] = []
    if tables is not None:
        # A second workflow that starts on the tickets created, whose trigger refuses now and then the payload
        # of one: the escalation launched, and the runtime writes no error of it, only why it did not launch.
        notify = tables.published("notify-owner")
        refused = (
            notify,
            "payload_validation_failed",
            'Payload validation failed using payload.TicketCreated.v1: [{"path":"ownerId","code":"invalid_type",'
            '"message":"Required"}]',
        )

        def escalation(now: datetime) -> None:
            stranded = incidents > 0 and (not counts["runtime-v2"] or rng.random() < incidents)
            # Half of them as its Temporal workflow runs them (its only mode since June 2026), half as its
            # interpreter before did, whose runs an operator could still retry.
            skipped = [refused] if incidents > 0 and rng.random() < incidents / 4 else []
            if not stranded and rng.random() < 0.5:
                writes = runtime_v2.temporal_scenario(tables, now.timestamp(), rng, skipped=skipped)
            else:
                writes = runtime_v2.scenario(tables, now.timestamp(), rng, stranded, skipped=skipped)
            schedule.add([(at, ("tables", write)) for at, write in writes])
            counts["runtime-v2"] += 1
            # Events no run takes (most of them), and among incidents one its worker could not deliver.
            tables.event_taken("TICKET_UPDATED", now, key=None)
            if incidents > 0 and (counts["runtime-v2"] == 1 or rng.random() < incidents / 4):
                down = "Failed to launch Temporal workflow: 14 UNAVAILABLE: No connection established"
                tables.event_taken("TICKET_CREATED", now, skipped=[(tables.workflow_id, "launch_failed", down)])

        publishers.append(escalation)
        # A schedule of the workflow, each occurrence a run of it (one in ten let pass, not a business day);
        # among incidents, one whose job runner is lost: its first occurrence never comes.
        every = timedelta(seconds=schedule_every)
        digest = tables.schedule("escalation-digest", datetime.now(UTC), every)
        if incidents > 0:
            tables.schedule("weekly-report", datetime.now(UTC), every)

        def occurrence(now: datetime) -> None:
            skipped = rng.random() < 0.1
            tables.schedule_fired(digest, now, "skipped" if skipped else "success", then=now + every)
            if not skipped:
                launched_by = (digest, "escalation-digest", now)
                writes = runtime_v2.temporal_scenario(tables, now.timestamp(), rng, launched_by)
                schedule.add([(at, ("tables", write)) for at, write in writes])
                counts["runtime-v2"] += 1

        next_occurrence = time.time() + schedule_every
    if client is not None:

        def execution(now: datetime) -> None:
            schedule.add([(at, ("stream", entry)) for at, entry in event_sourced_scenario(now, rng)])
            counts["event-sourced"] += 1

        publishers.append(execution)
    if engine is not None:

        def report(now: datetime) -> None:
            run, items, retries = phase10_scenario(now, rng)
            engine.runs[run.execution_id] = (run, retries)
            schedule.add([(at, ("ws", message)) for at, message in items])
            counts["phase10"] += 1

        publishers.append(report)
    try:
        while not stop.is_set():
            now = time.time()
            stopping = duration and now - started >= duration
            if stopping and not len(schedule):
                break
            if tables is not None and not stopping and now >= next_occurrence:
                occurrence(datetime.fromtimestamp(now, UTC))
                next_occurrence += schedule_every
            if not stopping and now >= next_start and publishers:
                for publish in publishers:
                    publish(datetime.fromtimestamp(now, UTC))
                next_start += 1 / rate
            for where, message in schedule.due():
                if where == "tables":
                    message(datetime.now(UTC))  # written at the runtime's clock: the time it is
                elif where == "stream" and client is not None:
                    client.xadd(STREAM_KEY, message, maxlen=1000, approximate=True)
                elif engine is not None:
                    engine.broadcast(message)
            stop.wait(0.02)
    finally:
        if engine is not None:
            engine.close()
        if client is not None:
            client.close()
        if tables is not None:
            tables.db.close()
    return counts


def _json(document: Any) -> Response:
    return Response(200, "OK", Headers({"Content-Type": "application/json"}), json.dumps(document).encode())
