"""The HTTP tracker endpoint: what a durable-effect HTTP batch tracker POSTs to.

The producer re-sends a batch three times on any non-2xx and then drops it, so a
batch whose envelope is valid is always answered 200, with the bad events listed
(and dead-lettered) beside the count of accepted ones. Only a body that is not a
batch at all gets a 4xx. The ASGI app runs on uvicorn.

`POST /v1/events` is an ASGI endpoint of its own, reached before Starlette's middleware and
router: a producer posts a batch per workflow invocation, and for a 6-event batch Starlette's
middleware stack, routing and response objects took more than half of what the app spent around
the pipeline (47 against ~24 µs a POST). It still reads the request through Starlette's `Request`
(its headers and body stream). The other endpoints are few and rare; they stay Starlette routes.
"""

import asyncio
import hmac
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache, partial
from typing import Any, NamedTuple

import orjson
from pydantic import SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from otel_bridge import conventions as c
from otel_bridge.config import Settings
from otel_bridge.consumer import AmbiguousId, Backpressure, EventConsumer, Unavailable
from otel_bridge.correlate.overview import JobQuery, RunQuery, seconds_of
from otel_bridge.export.aggregation import Attributes
from otel_bridge.json_text import loads
from otel_bridge.receivers.dead_letter import DeadLetters
from otel_bridge.receivers.http_contract import LISTING_PARAMETERS, CloseRequest, openapi
from otel_bridge.receivers.http_protocol import OVER_LIMIT
from otel_bridge.repeated_failure import Refusals, RepeatedFailure
from otel_bridge.sources.wire import every_reason, json_kind

log = logging.getLogger(__name__)

# JSON's media types; any `application/…+json` is JSON too, by its structured syntax suffix (RFC 6839).
_JSON_TYPES = ("application/json", "text/json", "application/x-ndjson")
# What `GET /v1/runs?overdue=` takes.
_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# Runs `GET /v1/runs` lists unless asked for more (`limit`): the oldest; `count` tells them all.
_RUNS_LISTED = 1000


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# A status, a JSON body and headers beyond its type and length: what the ingest endpoint answers.
_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, more: dict[str, object] | None = None
) -> _Answer:
    """Every error the endpoints answer: `{"error": message}`, and `more` fields beside it."""
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    return status, orjson.dumps({"error": message, **(more or {})}), encoded


def _problem(
    status: int, message: str, headers: dict[str, str] | None = None, more: dict[str, object] | None = None
) -> Response:
    """`_error` as the Starlette routes answer it."""
    status, body, _ = _error(status, message, more=more)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


# A missing or wrong credential: the answer (with its challenge) of every endpoint behind it.
_UNAUTHORIZED = (401, "missing or wrong credential", {"WWW-Authenticate": 'Bearer realm="otel-bridge"'})


class Access(NamedTuple):
    """Who a request's credential lets in: its name, and the one producer (serviceKey) whose events it may
    post, None for a credential of the bridge's own (any producer's events, the runs API, `/metrics`)."""

    credential: str
    producer: str | None = None

    def acting_for(self, asked: str | None, doing: str, what: str) -> str | None:
        """The producer a listing or a close acts for: the one asked (any, unsaid) with the bridge's own
        credential; with a producer's key, that producer, and another asked for by name is a 403 — not an
        empty answer that would read as "nothing stuck"."""
        if self.producer is None:
            return asked
        if asked not in (None, "", self.producer):
            raise _Reject(403, f"this credential {doing} {self.producer}'s {what} only")
        return self.producer


class Authenticator:
    """An optional shared secret in a named header, or a bearer token, each with earlier ones still
    accepted while producers move to it, and keys of one producer each; compared in constant time.
    `told(name)`: each request checked, with the name of the credential it carried (`api_key`,
    `retiring_api_keys.1`, `producer_api_keys.shop`, …), None when refused."""

    def __init__(
        self,
        header: str,
        api_keys: Sequence[str],
        bearers: Sequence[str],
        told: Callable[[str | None], object] = lambda _name: None,
        producer_keys: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._header, self._header_named = header.lower(), header  # header names are read in lower case
        self._api_keys = _named("api_key", api_keys)
        self._bearers = _named("bearer_token", bearers)
        self._told = told
        self._producer_keys: list[tuple[str, bytes]] = []
        self._producers: dict[str, str] = {}  # credential name -> its producer
        kept: dict[str, int] = {}
        for service, key in producer_keys:  # a producer's second key (rotating) is `….shop.1`
            n = kept[service] = kept.get(service, -1) + 1
            name = f"producer_api_keys.{service}" + (f".{n}" if n else "")
            self._producer_keys.append((name, key.encode()))
            self._producers[name] = service

    @staticmethod
    def _raw(value: str) -> bytes:
        # Starlette decodes header bytes as Latin-1: encoding back gives the bytes that were sent,
        # so a UTF-8 secret (non-ASCII) matches the UTF-8 bytes a client sends for it.
        return value.encode("latin-1", errors="replace")

    @property
    def enabled(self) -> bool:
        return bool(self._api_keys or self._bearers or self._producer_keys)

    def allows(self, headers: Mapping[str, str]) -> bool:
        """Whether `headers` carry a credential of the bridge's own (a producer's key is not one).
        `headers`: by lower-case name, decoded as Latin-1 (Starlette's `request.headers` is such a mapping)."""
        access = self.access(headers)
        return access is not None and access.producer is None

    def access(self, headers: Mapping[str, str]) -> Access | None:
        """Who `headers` let in, None when no credential of theirs is right (or every request, when there are none)."""
        if not self.enabled:
            return Access("")
        name = self.credential(headers)
        self._told(name)
        return None if name is None else Access(name, self._producers.get(name))

    def credential(self, headers: Mapping[str, str]) -> str | None:
        """The name of the credential `headers` carry, None when none is right."""
        found = None
        given = headers.get(self._header)
        if given is not None and self._api_keys:
            found = _matching(self._raw(given), self._api_keys)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else None
        if found is None and bearer is not None and self._bearers:
            found = _matching(self._raw(bearer), self._bearers)
        if found is None and self._producer_keys:  # in the key's header, or as a bearer token
            for offered in (given, bearer):
                if offered is not None and found is None:
                    found = _matching(self._raw(offered), self._producer_keys)
        return found

    def offered(self, headers: Mapping[str, str]) -> str:
        """What a refused request offered as its credential, for the log: where, never what."""
        said = [f"a key in {self._header_named} that matches none"] if self._header in headers else []
        if (authorization := headers.get("authorization")) is not None:
            bearer = authorization.partition(" ")[0].lower() == "bearer"
            said.append("a bearer token that matches none" if bearer else "an Authorization that is no bearer token")
        return " and ".join(said) or "no credential"


def _named(setting: str, secrets: Sequence[str]) -> list[tuple[str, bytes]]:
    """The current secret as its setting, the retiring ones by their place among them."""
    return [(setting if n == 0 else f"retiring_{setting}s.{n}", s.encode()) for n, s in enumerate(secrets)]


def _matching(given: bytes, secrets: list[tuple[str, bytes]]) -> str | None:
    found = None
    for name, secret in secrets:  # each compared, whichever matches: how long it takes tells nothing
        if hmac.compare_digest(given, secret) and found is None:
            found = name
    return found


def _secrets(current: SecretStr | None, retiring: Sequence[SecretStr]) -> list[str]:
    return [current.get_secret_value(), *(r.get_secret_value() for r in retiring)] if current else []


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, decompressed, never holding more than `limit` bytes of either form.

    A client that trickles its body (slow-loris) gets a 408 after `timeout` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise _Reject(408, f"request body not received within {timeout:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    headers = request.headers
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _Reject(413, f"body of {length} bytes is over the limit of {limit} bytes")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", ""):
        raise _Reject(415, f"unsupported Content-Encoding {encoding!r}: send identity or gzip")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise _Reject(413, f"body is over the limit of {limit} bytes")
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(bytes(chunks), limit)
    return bytes(chunks)


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _Reject(400, f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _Reject(413, f"decompressed body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise _Reject(400, "body is not valid gzip: truncated stream")
    return out


def _charset(parameters: list[str]) -> str | None:
    """The `charset` among a Content-Type's parameters (lowercase), if one is given."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset":
            return value.strip().strip('"')
    return None


def _loads(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as exc:
        raise _Reject(400, f"body is not valid JSON: {exc}") from None


def parse_envelope(body: bytes, max_events: int | None = None) -> list[Any]:
    """The `events` list of a `{"events": [...]}` body, or a 4xx naming what is wrong."""
    if not body.strip():
        raise _Reject(400, 'empty body: expected {"events": [...]}')
    payload = _loads(body)
    if not isinstance(payload, dict):
        raise _Reject(400, f'body must be a JSON object {{"events": [...]}}, not {json_kind(payload)}')
    if "events" not in payload:
        raise _Reject(400, 'body has no "events" field: expected {"events": [...]}')
    events = payload["events"]
    if not isinstance(events, list):
        raise _Reject(400, f'"events" must be an array, not {json_kind(events)}')
    if max_events is not None and len(events) > max_events:
        raise _Reject(413, f"batch of {len(events)} events is over the limit of {max_events} (max_batch_events)")
    return events


def create_app(
    consumer: EventConsumer,
    settings: Settings,
    metrics: Callable[[str], tuple[bytes, str]],
    readiness: Callable[[], dict[str, Any]],
    liveness: Callable[[], dict[str, Any]] = lambda: {"alive": True, "reasons": []},
    on_start: Callable[[], object] = lambda: None,
    on_stop: Callable[[], object] = lambda: None,
    dead_letters: DeadLetters | None = None,
    runs: Callable[[RunQuery, int], tuple[list[dict[str, Any]], int]] | None = None,
    jobs: Callable[[JobQuery, int], tuple[list[dict[str, Any]], int]] | None = None,
    ingest_inline: Callable[[int], bool] = lambda _events: False,
    close: Callable[[str, str, bool, str | None], list[dict[str, Any]]] | None = None,
    not_open: Callable[[str, str | None], list[str]] = lambda _id, _service: [],
    credentials: Callable[[str | None], object] = lambda _name: None,
    answered: Callable[[Attributes, float], object] = lambda _attributes, _seconds: None,
    turned_away: Callable[[str], object] = lambda _reason: None,
) -> "_IngestFirst":
    """The tracker endpoint in front of `consumer`.

    `metrics(accept)` renders `/metrics`; `readiness()` answers `/readyz` (its `ready` and `reasons`),
    `liveness()` `/healthz` (its `alive` and `reasons`: asked on the event loop, so it must not wait);
    `on_start`/`on_stop` run at server start and graceful shutdown (the SIGTERM drain);
    `runs(query, limit)` answers `GET /v1/runs`, `jobs(query, limit)` `GET /v1/jobs` (both behind
    the ingest credential);
    `close(id, reason, jobs, service)` answers `POST /v1/runs/{id}/close` and `POST /v1/jobs/{id}/close`
    (behind the ingest credential too): what it closed, [] when nothing open has that id; `not_open(id,
    service)` then says why each run of that id the store knows is not open, in the 404 (its `error`, and
    `not_open` listing them);
    `credentials(name)` is told of each request checked, with its credential's name (None: refused);
    `answered(attributes, seconds)` of each request answered, as the HTTP semantic conventions describe a
    server's request (`http.server.request.duration`): how long from its start to its answer's end;
    `turned_away(reason)` of each batch refused for now before its body is read (past `limit_concurrency`);
    `ingest_inline(n)` says whether a batch of n events is stored on the event loop itself, for
    when that is quicker than the hop to a worker thread (the default: always a worker).
    """
    auth = Authenticator(
        settings.api_key_header,
        _secrets(settings.api_key, settings.retiring_api_keys),
        _secrets(settings.bearer_token, settings.retiring_bearer_tokens),
        credentials,
        [(service, key.get_secret_value()) for service, key in settings.producer_api_keys],
    )
    owned = dead_letters is None
    if dead_letters is None:
        dead_letters = DeadLetters(settings.dead_letter, settings.dead_letter_max_bytes, settings.dead_letter_backups)

    def unauthorized() -> Response:
        return _problem(*_UNAUTHORIZED)

    # Batches refused whole for good: a producer re-sends such a batch three times, then drops it, and its
    # answer was the one place the reason was said. Batches refused for now (503): every request is refused
    # alike while it lasts, and producers re-send each three times.
    refused_whole, refused_for_now = Refusals("batches", log), Refusals("batches", log)
    # A credential missing or wrong: the batch is lost the same way. A scanner's requests too, so at most a line a
    # minute, and no line when batches are taken (a scanner's refusals would alternate with the producers').
    unauthorized_told = Refusals("batches", log)
    # A fault of the bridge's own while storing (a bug): its traceback, but not one a request while it lasts.
    failed = RepeatedFailure("storing a batch")

    async def ingest(scope: Scope, receive: Receive) -> _Answer:
        request = Request(scope, receive)
        answer = await _ingest(request)
        if answer[0] == 200:
            refused_for_now.over()
            failed.succeeded()
        elif answer[0] in _REFUSED_WHOLE and answer is not _GONE:
            refused_whole.refused(_lost(request, answer[0], orjson.loads(answer[1])["error"]))
        elif answer[0] == 401:
            unauthorized_told.refused(_lost(request, 401, auth.offered(request.headers)))
        return answer

    async def _ingest(request: Request) -> _Answer:
        headers = request.headers
        if (access := auth.access(headers)) is None:
            return _error(*_UNAUTHORIZED)
        content_type, *parameters = headers.get("content-type", "application/json").lower().split(";")
        content_type = content_type.strip()
        if content_type not in _JSON_TYPES and not (
            content_type.startswith("application/") and content_type.endswith("+json")
        ):
            return _error(415, f"unsupported Content-Type {content_type!r}: send application/json")
        if (charset := _charset(parameters)) not in (None, "utf-8", "utf8", "us-ascii"):
            # JSON exchanged between systems is UTF-8 (RFC 8259, 8.1): read as such, UTF-16 was "not valid JSON".
            return _error(415, f"unsupported charset {charset!r}: send application/json in UTF-8")
        try:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds)
            events = parse_envelope(body, settings.max_batch_events)
            if ingest_inline(len(events)):
                report = consumer.ingest(events, producer=access.producer)
            else:
                report = await run_in_threadpool(partial(consumer.ingest, producer=access.producer), events)
        except _Reject as exc:
            return _error(exc.status, str(exc), exc.headers)
        except ClientDisconnect:
            # Nothing was stored and nobody is left to answer: the producer re-sends.
            log.debug("client %s disconnected before its body was complete", request.client)
            return _GONE
        except Backpressure as exc:
            refused_for_now.refused(f"export backlog full, asking the producer to retry: {exc}")
            return _error(503, f"export backlog full, retry later: {exc}", {"Retry-After": "5"})
        except Unavailable as exc:
            refused_for_now.refused(f"store unavailable, asking the producer to retry: {exc}")
            return _error(503, f"state store unavailable, retry later: {exc}", {"Retry-After": "2"})
        except Exception as exc:
            # Nothing was committed (the pipeline guards everything after its commit): a retry is safe.
            failed.failed(exc)
            return _error(503, "internal error while storing the batch, retry later", {"Retry-After": "2"})
        if report.rejected:
            try:
                await run_in_threadpool(
                    dead_letters.keep,
                    "http",
                    [(r.as_dict(), events[r.index]) for r in report.rejected],
                    settings.max_dead_letter_bytes_per_batch,
                )
            except Exception:  # the batch is stored: a full disk must not make the producer re-send it
                log.exception("writing %d rejected events to the dead-letter file failed", len(report.rejected))
        return 200, orjson.dumps(report.as_dict(settings.max_rejections_listed)), []

    def listing(name: str, answer: _Listing | None) -> Callable[[Request], Awaitable[Response]]:
        """`GET /v1/{name}`: what `answer(params, overdue, limit)` lists, as `{name: [...], "count": n}`,
        behind the ingest credential; 404 where there is no such listing, 400 for a filter that is none."""

        async def listed(request: Request) -> Response:
            if (access := auth.access(request.headers)) is None:
                return unauthorized()
            if answer is None:
                return _problem(404, f"no {name.removesuffix('s')} listing here")
            params: Mapping[str, str] = request.query_params
            known = LISTING_PARAMETERS[name]
            if unknown := [p for p in params if p not in known]:  # `overdu=true` listed every run as overdue
                return _problem(400, f"unknown parameter {unknown[0]!r}: {name} are asked by {', '.join(known)}")
            try:
                if (service := access.acting_for(params.get("service"), "lists", name)) is not None:
                    params = {**params, "service": service}
            except _Reject as exc:
                return _problem(exc.status, str(exc))
            asked = _overdue_and_limit(params)
            if isinstance(asked, Response):
                return asked
            try:
                found = await run_in_threadpool(answer, params, *asked)
            except Unavailable as exc:  # Redis away, or a damaged state file: said, not a server's error
                return _problem(503, f"state store unavailable: {exc}", {"Retry-After": "2"})
            if isinstance(found, Response):
                return found
            listed: dict[str, Any] = {name: found[0], "count": found[1]}
            if access.producer is not None:  # whose alone: a title can say so
                listed["service"] = access.producer
            return Response(orjson.dumps(listed), media_type="application/json")

        return listed

    def open_runs(params: Mapping[str, str], overdue: bool, limit: int) -> _Found | Response:
        assert runs is not None
        state = params.get("state") or None
        if state is not None and state not in c.RUN_STATES:
            return _problem(400, f"state must be one of {', '.join(c.RUN_STATES)}, not {state!r}")
        given = params.get
        silent = given("silent_for") or None
        try:
            silent_for = seconds_of(silent) if silent is not None else None
        except ValueError:
            return _problem(
                400, f"silent_for must be a number of seconds (or 90s, 15m, 2h, 3d), 0 or more, not {silent!r}"
            )
        filters = (given("service") or None, given("env") or None, given("workflow") or None)
        return runs(RunQuery(state, overdue, *filters, silent_for), limit)

    def job_instances(params: Mapping[str, str], overdue: bool, limit: int) -> _Found | Response:
        assert jobs is not None
        given = params.get
        if isinstance(failing := _flag(params, "failing"), Response):
            return failing
        filters = (given("service") or None, given("env") or None, given("job") or None)
        return jobs(JobQuery(overdue, *filters, failing), limit)

    def closing(name: str) -> Callable[[Request], Awaitable[Response]]:
        """`POST /v1/{name}/{id}/close`: close by hand what the engine will never end, with an optional
        `{"reason": ..., "service": ...}`; 404 when nothing open has that id."""

        async def closed(request: Request) -> Response:
            if (access := auth.access(request.headers)) is None:
                return unauthorized()
            if close is None:
                return _problem(404, f"nothing to close here: {name} are not kept by this bridge")
            try:
                asked = _close_request(await read_body(request, settings.max_body_bytes, settings.body_timeout_seconds))
                asked.service = access.acting_for(asked.service, "closes", name)
            except _Reject as exc:
                return _problem(exc.status, str(exc), exc.headers)
            except ClientDisconnect:
                return Response(status_code=400)
            instance_id = request.path_params["id"]
            what = "run" if name == "runs" else "job instance"
            if not instance_id:
                return _problem(400, f"no id: POST /v1/{name}/{{id}}/close names the {what} to close")
            try:
                done = await run_in_threadpool(close, instance_id, asked.reason, name == "jobs", asked.service)
            except Unavailable as exc:
                return _problem(503, f"state store unavailable, try again: {exc}", {"Retry-After": "2"})
            except AmbiguousId as exc:  # closing one of them could be closing a stranger's
                return _problem(409, str(exc), more={"ids": exc.ids})
            if not done:
                of = f" of {asked.service}" if asked.service else ""
                try:
                    why = await run_in_threadpool(not_open, instance_id, asked.service) if name == "runs" else []
                except (Unavailable, AmbiguousId):  # the store went away since: the 404 says less, no less true
                    why = []
                if not why:
                    return _problem(404, f"no open {what} {instance_id}{of}")
                return _problem(404, "; ".join([f"no open {what} {instance_id}{of}", *why]), more={"not_open": why})
            return Response(orjson.dumps({"closed": done}), media_type="application/json")

        return closed

    async def healthz(_request: Request) -> Response:
        # On the event loop, not in the worker threads: a loop that cannot answer is not alive either.
        status = liveness()
        if not status.get("alive"):
            reasons = status.get("reasons") or ["not alive"]
            return JSONResponse({"status": "stuck", "error": "; ".join(reasons), "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        status = await run_in_threadpool(readiness)
        if not status.get("ready"):
            reasons = status.get("reasons") or ["not ready"]
            return JSONResponse({"status": "not ready", "error": "; ".join(reasons), **status}, status_code=503)
        return JSONResponse({"status": "ready", **status})

    # Made at the first asking (a few ms of schema building), not at every start.
    described = cache(lambda: orjson.dumps(openapi(settings)))

    async def contract(_request: Request) -> Response:
        return Response(described(), media_type="application/json")

    async def prometheus(request: Request) -> Response:
        if settings.metrics_auth and not auth.allows(request.headers):
            return unauthorized()
        body, content_type = await run_in_threadpool(metrics, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        on_start()
        # The thread pool's backend, imported at its first use: that import opens files, and a bridge out of
        # file descriptors then failed the first batch it handed to a thread (its dead letters lost).
        await run_in_threadpool(lambda: None)
        try:
            yield
        finally:
            await run_in_threadpool(on_stop)
            if owned:
                dead_letters.close()

    routes = [
        Route("/v1/runs", listing("runs", open_runs if runs is not None else None), methods=["GET"]),
        Route("/v1/jobs", listing("jobs", job_instances if jobs is not None else None), methods=["GET"]),
        Route("/v1/runs/{id:path}/close", closing("runs"), methods=["POST"]),
        Route("/v1/jobs/{id:path}/close", closing("jobs"), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", contract, methods=["GET"]),
    ]
    # Starlette's own 404 and 405 are plain text: every answer of the bridge's is `{"error": …}`
    # (a close of an id holding a newline, which no route matches, was the one that was not).
    unrouted = {status: _unrouted(_route_of(settings.path), auth) for status in (404, 405)}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=unrouted)
    return _IngestFirst(app, settings.path, ingest, answered, turned_away)


def _unrouted(batch_path: str, auth: Authenticator) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def answer(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        if status == 404 and auth.enabled and auth.credential(request.headers) is None:
            # A path that is no endpoint, asked without a credential where one is set: no producer's (a producer
            # sends its key), a scanner's of an endpoint the internet reaches (a Worker's is). 401, and not counted
            # as a producer refused (`BridgeRequestsUnauthorized`) nor told as a batch lost (`BridgeBatchesRejected`,
            # which reads a 404): scanners raised both alerts, and an alert that cries wolf gets muted.
            return _problem(*_UNAUTHORIZED)
        said = f"no endpoint {request.url.path}" if status == 404 else f"{request.method} is not allowed here"
        if status == 404 and request.method == "POST":  # a producer pointed at another path than the batches'
            said += f": batches are posted to {batch_path}"
        return _problem(status, said, getattr(exc, "headers", None))

    return answer


# A listing's answer (its items as JSON values, how many there are in all), or why it will not be given.
_Found = tuple[list[dict[str, Any]], int]
_Listing = Callable[[Mapping[str, str], bool, int], _Found | Response]


def _overdue_and_limit(params: Mapping[str, str]) -> tuple[bool, int] | Response:
    """A listing's `overdue` (true or false) and `limit` (a whole number of 0 or more, 1,000 when not
    given), or the 400 saying which is not. A filter that is not one (`overdue=maybe`) answered an
    empty list, as if nothing were there: the on-call engineer is told instead."""
    if isinstance(overdue := _flag(params, "overdue"), Response):
        return overdue
    given = params.get("limit")
    try:
        limit = int(given) if given is not None else _RUNS_LISTED
    except ValueError:
        return _problem(400, f"limit must be a whole number, not {given!r}")
    return (overdue, limit) if limit >= 0 else _problem(400, f"limit must be 0 or more, not {limit}")


def _flag(params: Mapping[str, str], name: str) -> bool | Response:
    """A listing's flag (true or false, 1/0, yes/no; false when not given), or the 400 saying it is none."""
    flag = _FLAGS.get(params.get(name, "false").lower())
    return flag if flag is not None else _problem(400, f"{name} must be true or false, not {params[name]!r}")


def _close_request(body: bytes) -> CloseRequest:
    """The body of a close, or the 400 naming what is wrong with it (an empty body asks nothing more)."""
    if not body.strip():
        return CloseRequest()
    try:
        return CloseRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _Reject(400, f"not a close request ({every_reason(exc, 'body')})") from None


class _IngestFirst:
    """`{path}` straight to the ingest endpoint; everything else (lifespan included) to Starlette.

    The path with a trailing slash is the same endpoint (as a Starlette route, it was a redirect to it).
    Every request is timed here, from its start to its answer's end, and told to `answered` with what the
    HTTP semantic conventions describe it by: the one place that sees them all, the Collector's obsreport."""

    def __init__(
        self,
        app: Starlette,
        path: str,
        ingest: Callable[[Scope, Receive], Awaitable[_Answer]],
        answered: Callable[[Attributes, float], object],
        turned_away: Callable[[str], object] = lambda _reason: None,
    ) -> None:
        self.app = app
        self._route = _route_of(path)
        self._paths = {self._route, path.rstrip("/") + "/"}
        self._ingest = ingest
        self._answered = answered
        self._turned_away = turned_away
        # A producer pointed at another path loses every batch: told, at most once a minute (a scanner's too).
        self._astray = Refusals("batches", log)
        # Past limit_concurrency every request is turned away while it lasts: at most a line a minute.
        self._over_limit = Refusals("requests", log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # A producer's base URL with a slash of its own before the path's (`http://bridge:4380/` + `/v1/events`)
        # is the batch path too, as a proxy that merges slashes (nginx's default) would make it.
        path = scope["path"]
        batch_path = path in self._paths or _SLASHES.sub("/", path) in self._paths
        if (open_ := scope.get(OVER_LIMIT)) is not None:
            await self._over(scope, send, open_, batch_path, started)
            return
        if not batch_path:
            await self._routed(scope, receive, send, started)
            return
        if scope["method"] == "POST":
            answer = await self._ingest(scope, receive)
        else:
            answer = _error(405, f"{scope['method']} is not allowed here: POST a batch", {"Allow": "POST"})
        await _send(send, answer)
        self._timed(scope, self._route, None if answer is _GONE else answer[0], started)

    def _timed(
        self, scope: Scope, route: str | None, status: int | None, started: float, error: str | None = None
    ) -> None:
        """The request told to `answered`, as the HTTP conventions describe it, with how long it took."""
        attributes = request_attributes(scope["method"], route, status, scope.get("scheme", "http"), error)
        self._answered(attributes, time.perf_counter() - started)

    async def _over(self, scope: Scope, send: Send, open_: str, batch_path: bool, started: float) -> None:
        """A request past `limit_concurrency`: 503 with a wait, the connection closed to make room, its body unread."""
        await _send(
            send,
            _error(
                503, f"too many connections at once, retry later: {open_}", {"Retry-After": "1", "Connection": "close"}
            ),
        )
        self._over_limit.refused(
            f"turned requests away: {open_}; a producer re-sends a batch three times, then drops it — raise "
            "limit_concurrency (each producer's kept-alive connection counts), or run more replicas"
        )
        if batch_path and scope["method"] == "POST":
            self._turned_away(c.REFUSED_CONNECTIONS_AT_LIMIT)
        self._timed(scope, self._route if batch_path else None, 503, started)

    async def _routed(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        """A request for Starlette's routes, its answer's status read as it is sent."""
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        error = None
        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:  # told, then raised on: uvicorn answers 500 where nothing was sent
            error = type(exc).__qualname__
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            told = status[0] if status else None
            self._timed(scope, _template(route), told, started, error)
            if told == 404 and route is None and scope["method"] == "POST":
                why = f"POST {scope['path'][:200]} is no endpoint: batches are posted to {self._route}"
                self._astray.refused(_lost(Request(scope), 404, why))


def _route_of(path: str) -> str:
    """The batch path as its route: without a trailing slash, which the endpoint takes as well."""
    return path.rstrip("/") or "/"


# Slashes doubled in a path: one, as a proxy that merges them takes them.
_SLASHES = re.compile(r"//+")
# An answer to a client that went away before its batch was whole: sent, to no one.
_GONE: _Answer = (400, b"", [])
# What a batch is refused whole with, for good (its producer drops it after three re-sends): not JSON or not
# the envelope, too slow to arrive, too large, not JSON's media type. A 401 is counted apart; 503 is for now.
_REFUSED_WHOLE = frozenset({400, 408, 413, 415})
# The methods the HTTP semantic conventions name as they are; any other is `_OTHER`.
_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})


def request_attributes(
    method: str, route: str | None, status: int | None, scheme: str, error: str | None = None
) -> Attributes:
    """A request answered, as `http.server.request.duration` is told it: `error.type` is the status of a 5xx,
    `client_disconnected` for a client gone before its answer, or what was raised where none was sent."""
    return _attributes(method if method in _METHODS else c.OVERFLOW_VALUE, route, status, scheme, error)


@cache
def _attributes(method: str, route: str | None, status: int | None, scheme: str, error: str | None) -> Attributes:
    # Each value is one of a few (the method is the client's, so it is one of the conventions' before it comes
    # here; the routes are the app's own): the cache stays small.
    attributes = [(c.HTTP_REQUEST_METHOD, method), (c.URL_SCHEME, scheme)]
    if route is not None:
        attributes.append((c.HTTP_ROUTE, route))
    if status is not None:
        attributes.append((c.HTTP_RESPONSE_STATUS_CODE, str(status)))
    if error is None and (status is None or status >= 500):
        error = str(status) if status is not None else "client_disconnected"
    if error is not None:
        attributes.append((c.ERROR_TYPE, error))
    return tuple(attributes)


def _lost(request: Request, status: int, why: str) -> str:
    """The log's line for a batch refused for good: where it came from, as far as the log can tell (behind a
    balancer or a proxy its address is theirs, so the producer it forwards for too: `X-Forwarded-For`'s first, the
    client's word, so said, never relied on; the log's formatter escapes it), and why."""
    sender = request.client.host if request.client else "a client"
    if forwarded := request.headers.get("x-forwarded-for", "").split(",")[0].strip():
        sender = f"{forwarded[:64]} through {sender}"
    return f"refused a batch from {sender} ({status}): {why}; a producer re-sends it three times, then drops it"


@cache
def _template(path: str | None) -> str | None:
    """A Starlette route as the conventions write one: `/v1/runs/{id}/close`, its converter left out."""
    return None if path is None else re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


async def _send(send: Send, answer: _Answer) -> None:
    status, body, headers = answer
    content = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": content + headers})
    await send({"type": "http.response.body", "body": body})
