"""The HTTP batch tracker: the engine's `HttpBatchTracker` for Python producers, sync and asyncio.

`emit` enriches an event with `env` and `serviceKey` and buffers it; the buffer is POSTed
as `{"events": [...]}` when it holds `batch_size` events, every `flush_interval_seconds`,
and on `flush()`/`close()`. A failed POST (non-2xx or a network error) is re-sent
identically `max_attempts` more times after 1, 2, 4 … s (`initial_delay_ms`, doubling),
as the real engine does — or after the `Retry-After` a refusal asks for, when longer (at
most a minute; drawn up to half as long again, so that producers refused together do not
come back together) — then dropped and counted. Nothing is ever raised into the
workflow, and a flush returns within `(max_attempts + 1) * timeout_seconds + the backoffs`.
In a child process forked after the tracker was made, it starts afresh: an empty buffer
(the parent's events are the parent's to send), its own locks, timer and connections.
"""

import asyncio
import gzip
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import orjson

from otel_bridge.forks import after_fork_in_child, event_like
from otel_bridge.json_text import as_read_back, dumps
from otel_bridge.repeated_failure import Cadence
from otel_bridge.retry_after import seconds_asked
from otel_bridge.tokens import CONTROL_CHARACTER, HEADER_NAME
from otel_bridge.tracker.contract import AfterClose, at_exit, checked_labels, enriched
from otel_bridge.urls import host_problem, without_secrets

if TYPE_CHECKING:
    from opentelemetry.context import Context

log = logging.getLogger(__name__)


@dataclass
class TrackerStats:
    posts: int = 0
    events: int = 0
    retries: int = 0
    dropped_batches: int = 0
    dropped_events: int = 0
    # Events the bridge took in and rejected (each listed in its answer, kept in its dead-letter file).
    rejected_events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    # When rejections are told, and how many came since the last line: a producer whose every event
    # is rejected (a version mismatch) gets a line a minute, not one per batch.
    _rejections_told: Cadence = field(default_factory=Cadence, repr=False)
    _rejections_untold: int = field(default=0, repr=False)

    def answered(self, response: httpx.Response, batch: list[dict[str, Any]]) -> bool:
        """Count one answer; True when it took the batch."""
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.is_success:
            self.events += len(batch)
            self._rejections(response, len(batch))
        return response.is_success

    def _rejections(self, response: httpx.Response, sent: int) -> None:
        # The bridge answers a batch with bad events in it 200, listing them: re-sending would not
        # mend them, but the producer's log is where whoever can fix them looks.
        try:
            answer = orjson.loads(response.content)
            listed = answer["rejected"]
            count = int(answer.get("rejectedCount", len(listed)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # another endpoint than the bridge's: its answer is its own
        if not count:
            return
        self.rejected_events += count
        if not self._rejections_told.failed():
            self._rejections_untold += count
            return
        first = listed[0] if listed and isinstance(listed[0], dict) else {}
        since = f"; {self._rejections_untold} more since the last such line" if self._rejections_untold else ""
        log.warning(
            "the bridge rejected %d of %d events (it keeps them in its dead-letter file); the first, "
            "event %s (eventId %s): %s%s",
            count, sent, first.get("index", 0), first.get("eventId"), first.get("error"), since,
        )  # fmt: skip
        self._rejections_untold = 0

    def dropped(self, batch: list[dict[str, Any]], attempts: int, endpoint: str, last: str) -> bool:
        self.dropped_batches += 1
        self.dropped_events += len(batch)
        log.error(
            "tracker dropped a batch of %d events after %d attempts to %s; the last: %s",
            len(batch), attempts, endpoint, last,
        )  # fmt: skip
        return False


@dataclass(frozen=True)
class _Config:
    endpoint: str
    env: str
    service_key: str
    batch_size: int
    flush_interval: float | None
    headers: dict[str, str]
    max_attempts: int
    initial_delay: float
    timeout: float
    # "gzip": each body compressed (`Content-Encoding: gzip`, which the bridge takes), else None.
    compression: str | None = None

    def delay(self, attempt: int, asked: float | None = None) -> float:
        """Before re-send `attempt`: the engine's backoff, or longer when the bridge asked for it — drawn up to
        half as long again: the bridge asks every producer it refuses for the same wait (2 s, 5 s), and those
        it refused together came back to it at the same instant, to be refused together again."""
        backoff = self.initial_delay * 2.0 ** (attempt - 1)
        return backoff if asked is None or asked <= backoff else random.uniform(asked, asked * 1.5)


# The longest Retry-After honoured: a flush must still end in bounded time.
_MAX_RETRY_AFTER = 60.0


def _retry_after(response: httpx.Response) -> float | None:
    """The wait a refusal asks for (`Retry-After`: seconds, or an HTTP date), at most a minute."""
    if response.is_success or (asked := seconds_asked(response.headers.get("retry-after"))) is None:
        return None
    return min(asked, _MAX_RETRY_AFTER)


# How much of a refusal's body the log keeps: the bridge names what was wrong in a line or two.
_BODY_TOLD = 300


def _encoded(batch: list[Any], stats: TrackerStats) -> tuple[bytes, list[Any]]:
    """The POST body of `batch`, and the events in it.

    An event that cannot be written as JSON even so (a circular reference, nested deeper
    than 254 levels) is dropped, counted and told, not allowed to sink the rest of its batch
    (the POST used to fail, be re-sent for seconds, and drop every event with it). A string
    sliced mid-emoji (a lone surrogate) is written with U+FFFD in its place, as the in-process
    tracker stores it."""
    try:
        return dumps({"events": batch}), batch
    except orjson.JSONEncodeError:
        pass
    written: list[bytes] = []
    kept: list[Any] = []
    for event in batch:
        event = as_read_back(event)
        try:
            written.append(dumps(event))
        except orjson.JSONEncodeError as exc:
            stats.dropped_events += 1
            name = event.get("eventId") if isinstance(event, dict) else None
            log.error("tracker dropped an event (eventId %s) that cannot be written as JSON: %s", name, exc)
            continue
        kept.append(event)
    return b'{"events":[' + b",".join(written) + b"]}", kept


def _told(answer: httpx.Response | Exception) -> str:
    """A failed POST in a few words: the status and what the server said, or the error."""
    if isinstance(answer, Exception):
        return f"{type(answer).__name__}: {answer}"
    said = answer.text.strip()
    told = f"{answer.status_code} {answer.reason_phrase}"
    return f"{told}: {said[:_BODY_TOLD]}" if said else told


# What an endpoint, an identity and a header the bridge takes look like, checked as the tracker is made:
# taken as given, each one was a tracker whose every batch was re-sent for seconds and dropped (a URL
# with no scheme), whose every event the bridge rejected (a serviceKey holding a tab), or whose timer thread
# died (an interval of `inf`) — in the producer's log at best, and the workflow none the wiser.
_SCHEMES = ("http://", "https://")  # config's HTTP_SCHEMES, without loading pydantic-settings into a producer
_COMPRESSIONS = (None, "gzip")
_LONGEST_SECONDS = 86_400.0


def _checked(
    endpoint: str,
    env: str,
    service_key: str,
    headers: Mapping[str, str],
    flush_interval_seconds: float | None,
    initial_delay_ms: float,
    timeout_seconds: float,
    compression: str | None = None,
) -> None:
    """A ValueError naming the first argument no bridge or clock could work with."""
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be 'gzip' or None, not {compression!r}")
    if why := host_problem(endpoint) if endpoint.startswith(_SCHEMES) else "is not an http:// or https:// URL":
        raise ValueError(f"endpoint {without_secrets(endpoint)!r}: {why}")
    checked_labels(env, service_key)
    for header, value in headers.items():
        if not HEADER_NAME.fullmatch(str(header)) or CONTROL_CHARACTER.search(str(value).replace("\t", "")):
            raise ValueError(f"header {header!r} is no HTTP header a request can carry (its value is not shown)")
    # None or 0 and less: no timer (flush on size, flush() and close() only).
    if flush_interval_seconds is not None and not flush_interval_seconds <= _LONGEST_SECONDS:
        raise ValueError(f"flush_interval_seconds must be at most a day, not {flush_interval_seconds}")
    if not 0 <= initial_delay_ms <= _LONGEST_SECONDS * 1000:
        raise ValueError(f"initial_delay_ms must be 0 or more and at most a day, not {initial_delay_ms}")
    if not 0 < timeout_seconds <= _LONGEST_SECONDS:
        raise ValueError(f"timeout_seconds must be above 0 and at most a day, not {timeout_seconds}")


def _config(
    endpoint: str,
    env: str,
    service_key: str,
    batch_size: int,
    flush_interval_seconds: float | None,
    headers: Mapping[str, str] | None,
    max_attempts: int,
    initial_delay_ms: float,
    timeout_seconds: float,
    compression: str | None,
) -> _Config:
    _checked(
        endpoint, env, service_key, dict(headers or {}), flush_interval_seconds, initial_delay_ms, timeout_seconds,
        compression,
    )  # fmt: skip
    encoding = {"content-encoding": compression} if compression else {}
    return _Config(
        endpoint,
        env,
        service_key,
        max(batch_size, 1),
        flush_interval_seconds if flush_interval_seconds and flush_interval_seconds > 0 else None,
        {"content-type": "application/json", **(headers or {}), **encoding},
        max(max_attempts, 0),
        initial_delay_ms / 1000,
        timeout_seconds,
        compression,
    )


class _Delivery:
    """One batch's delivery as the engine makes it, without its I/O, so that the threaded and the
    asyncio tracker share it: wait `wait` seconds, POST `body`, `take` the answer (the response, or
    the exception the POST raised), until `over`; then send each of `halves` the same way (a batch
    refused as too large) and give `outcome` what they came to."""

    def __init__(self, c: _Config, stats: TrackerStats, batch: list[Any]) -> None:
        self._c, self._stats = c, stats
        self.body, self._batch = _encoded(batch, stats)
        if c.compression:
            # zlib's own default level: 100 of the demo's events, 35 KB, become 3.3 KB in 0.2 ms; level 9
            # took 2.5 times as long for 4 % less, level 1 a quarter of the time for 20 % more bytes.
            self.body = gzip.compress(self.body, compresslevel=6, mtime=0)
        self._whole = len(self._batch) == len(batch)  # no event dropped as impossible to write
        self.attempts = 0
        self.wait = 0.0
        self.delivered = False
        self.over = not self._batch  # nothing left to send
        # Refused as too large (413): sent again in halves, by whoever sends.
        self.split = False

    @property
    def halves(self) -> tuple[list[Any], ...]:
        middle = len(self._batch) // 2
        return (self._batch[:middle], self._batch[middle:]) if self.split else ()

    def outcome(self, halves_delivered: list[bool]) -> bool:
        """True when every event of the batch was taken (its halves', when it was split)."""
        return (all(halves_delivered) if self.split else self.delivered) and self._whole

    def take(self, answer: httpx.Response | Exception) -> None:
        self._stats.posts += 1
        self.attempts += 1
        asked = None
        if isinstance(answer, Exception):  # never into the workflow
            log.warning("tracker POST to %s failed: %s", without_secrets(self._c.endpoint), answer)
        elif self._stats.answered(answer, self._batch):
            self.over = self.delivered = True
            return
        elif answer.status_code == 413:
            # Too large (the bridge's max_body_bytes or max_batch_events): the same body would be refused
            # again. Halves are sent instead, so one event with a huge input takes no other with it;
            # an event too large alone is dropped at once.
            self.over = True
            if len(self._batch) > 1:
                self.split = True
            else:
                self._stats.dropped(self._batch, self.attempts, without_secrets(self._c.endpoint), _told(answer))
            return
        else:
            asked = _retry_after(answer)
        if self.attempts > self._c.max_attempts:
            self.over = True
            self._stats.dropped(self._batch, self.attempts, without_secrets(self._c.endpoint), _told(answer))
            return
        self._stats.retries += 1
        self.wait = self._c.delay(self.attempts, asked)


def _deliver(
    c: _Config, stats: TrackerStats, batch: list[Any], post: Callable[[bytes], httpx.Response | Exception]
) -> bool:
    """One batch, re-sent and waited for as the engine does, blocking: True when all of it was taken."""
    delivery = _Delivery(c, stats, batch)
    while not delivery.over:
        if delivery.wait:
            time.sleep(delivery.wait)
        delivery.take(post(delivery.body))
    return delivery.outcome([_deliver(c, stats, half, post) for half in delivery.halves])


def _post_with(client: httpx.Client, c: _Config, body: bytes) -> httpx.Response | Exception:
    try:
        return client.post(c.endpoint, content=body, headers=c.headers)
    except Exception as exc:
        return exc


class _RunContexts:
    _c: _Config

    def context(
        self,
        workflow_id: str,
        step: str | None = None,
        attempt: int | None = None,
        context: "Context | None" = None,
        *,
        sample_ratio: float = 1.0,
    ) -> "Context":
        """As `OtelTracker.context`, for the runs this tracker posts; `sample_ratio`: the bridge's
        `trace_sample_ratio`, when it samples runs. No I/O (so not a coroutine in the asyncio flavour)."""
        from otel_bridge.propagation import run_context  # the OpenTelemetry API: only when asked for

        c = self._c
        return run_context(c.env, c.service_key, workflow_id, step, attempt, sample_ratio=sample_ratio, context=context)


class HttpBatchTracker(_RunContexts):
    def __init__(
        self,
        endpoint: str,
        env: str,
        service_key: str,
        *,
        batch_size: int = 100,
        flush_interval_seconds: float | None = 1.0,
        headers: Mapping[str, str] | None = None,
        max_attempts: int = 3,
        initial_delay_ms: float = 1000,
        timeout_seconds: float = 10.0,
        client: httpx.Client | None = None,
        compression: str | None = None,
    ) -> None:
        """`client`: an httpx client of the application's (then its to make safe across a fork).
        `compression="gzip"`: each batch's body compressed, for a bridge across a network."""
        self._c = _config(
            endpoint, env, service_key, batch_size, flush_interval_seconds, headers, max_attempts,
            initial_delay_ms, timeout_seconds, compression,
        )  # fmt: skip
        self._client = client  # or one of ours, made at the first POST (in each process)
        self._own_client = client is None
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one flush at a time: batches leave in order
        self._closed = threading.Event()
        self._after_close = AfterClose("HttpBatchTracker")
        self.stats = TrackerStats()
        self._start_timer()
        after_fork_in_child(self._forked)
        self._forget_exit = at_exit(self, HttpBatchTracker._close_at_exit)

    def _start_timer(self) -> None:
        if self._c.flush_interval is not None and not self._closed.is_set():
            threading.Thread(target=self._timer, name="tracker-flush", daemon=True).start()

    def _forked(self) -> None:
        # A flush in flight at the fork left `_sending` held for ever in the child; a client
        # passed in is the application's to make safe across a fork, one of ours is made anew.
        self._buffer = []
        self._lock, self._sending, self._closed = threading.Lock(), threading.Lock(), event_like(self._closed)
        self._after_close = AfterClose("HttpBatchTracker")
        self.stats = TrackerStats()
        if self._own_client:
            self._client = None
        self._start_timer()

    def emit(self, event: Mapping[str, Any]) -> None:
        if self._closed.is_set():
            self._after_close.drop()
            self.stats.dropped_events += 1
            return
        with self._lock:
            self._buffer.append(enriched(event, self._c.env, self._c.service_key))
            full = len(self._buffer) >= self._c.batch_size
        if full:
            self.flush()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> bool:
        """POST the buffer; True when every batch was taken (False: some were dropped)."""
        delivered = True
        with self._sending:
            while True:
                with self._lock:
                    batch, self._buffer = self._buffer[: self._c.batch_size], self._buffer[self._c.batch_size :]
                if not batch:
                    return delivered
                delivered = self._send(batch) and delivered

    def _send(self, batch: list[dict[str, Any]]) -> bool:
        return _deliver(self._c, self.stats, batch, self._post)

    def _post(self, body: bytes) -> httpx.Response | Exception:
        if self._client is None:  # `_send` runs under `_sending`: one is made
            self._client = httpx.Client(timeout=self._c.timeout)
        return _post_with(self._client, self._c, body)

    def _timer(self) -> None:
        assert self._c.flush_interval is not None
        while not self._closed.wait(self._c.flush_interval):
            if self.pending():
                self.flush()

    def _close_at_exit(self) -> None:
        # One attempt per batch, no re-sends: an application that never closed its tracker must not
        # hang in its exit for the backoffs (as the SDK's exporters stop retrying at shutdown).
        self._c = replace(self._c, max_attempts=0)
        self.close()

    def close(self) -> None:
        """Send what is buffered and stop; also done at interpreter exit for a tracker never closed."""
        self._forget_exit()
        self._closed.set()
        self.flush()
        if self._own_client and self._client is not None:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncHttpBatchTracker(_RunContexts):
    """The same tracker for asyncio producers: the POST and its backoff never block the event loop."""

    def __init__(
        self,
        endpoint: str,
        env: str,
        service_key: str,
        *,
        batch_size: int = 100,
        flush_interval_seconds: float | None = 1.0,
        headers: Mapping[str, str] | None = None,
        max_attempts: int = 3,
        initial_delay_ms: float = 1000,
        timeout_seconds: float = 10.0,
        client: httpx.AsyncClient | None = None,
        compression: str | None = None,
    ) -> None:
        self._c = _config(
            endpoint, env, service_key, batch_size, flush_interval_seconds, headers, max_attempts,
            initial_delay_ms, timeout_seconds, compression,
        )  # fmt: skip
        self._client = client  # or one of ours, made at the first POST (in each process)
        self._own_client = client is None
        self._buffer: list[dict[str, Any]] = []
        self._sending = asyncio.Lock()
        self._timer_task: asyncio.Task[None] | None = None
        self._closed = False
        self._after_close = AfterClose("AsyncHttpBatchTracker")
        self.stats = TrackerStats()
        after_fork_in_child(self._forked)
        self._forget_exit = at_exit(self, AsyncHttpBatchTracker._send_at_exit)

    def _forked(self) -> None:
        # The parent's event loop, its timer task and its connections do not run in the child.
        self._buffer = []
        self._sending = asyncio.Lock()
        self._timer_task = None
        self.stats = TrackerStats()
        if self._own_client:
            self._client = None

    def _ensure_timer(self) -> None:
        if self._c.flush_interval is not None and self._timer_task is None:
            self._timer_task = asyncio.get_running_loop().create_task(self._timer())

    async def emit(self, event: Mapping[str, Any]) -> None:
        if self._closed:  # nor a timer started again
            self._after_close.drop()
            self.stats.dropped_events += 1
            return
        self._ensure_timer()
        self._buffer.append(enriched(event, self._c.env, self._c.service_key))
        if len(self._buffer) >= self._c.batch_size:
            await self.flush()

    async def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> bool:
        delivered = True
        async with self._sending:
            while self._buffer:
                batch, self._buffer = self._buffer[: self._c.batch_size], self._buffer[self._c.batch_size :]
                delivered = await self._send(batch) and delivered
        return delivered

    async def _send(self, batch: list[dict[str, Any]]) -> bool:
        delivery = _Delivery(self._c, self.stats, batch)
        while not delivery.over:
            if delivery.wait:
                await asyncio.sleep(delivery.wait)
            delivery.take(await self._post(delivery.body))
        return delivery.outcome([await self._send(half) for half in delivery.halves])

    async def _post(self, body: bytes) -> httpx.Response | Exception:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._c.timeout)
        try:
            return await self._client.post(self._c.endpoint, content=body, headers=self._c.headers)
        except Exception as exc:
            return exc

    async def _timer(self) -> None:
        assert self._c.flush_interval is not None
        while True:
            await asyncio.sleep(self._c.flush_interval)
            if self._buffer:
                # Shielded: `close()` cancels this task, and a batch taken out of the buffer
                # but not yet answered would be lost with it (close's own flush waits for it).
                await asyncio.shield(self.flush())

    def _send_at_exit(self) -> None:
        # The application's event loop has ended without `close()`: what is buffered goes out as the
        # threaded tracker sends it, rather than with the process.
        self._closed = True
        batches = [self._buffer[i : i + self._c.batch_size] for i in range(0, len(self._buffer), self._c.batch_size)]
        self._buffer = []
        if batches:
            once = replace(self._c, max_attempts=0)  # no re-sends at exit, as the threaded tracker
            with httpx.Client(timeout=once.timeout) as client:
                for batch in batches:
                    _deliver(once, self.stats, batch, lambda body: _post_with(client, once, body))

    async def close(self) -> None:
        self._forget_exit()
        self._closed = True
        if self._timer_task is not None:
            self._timer_task.cancel()
            self._timer_task = None
        await self.flush()
        if self._own_client and self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()
