"""uvicorn's httptools protocol with the two limits it lacks — the size of a request head, and its time — and an
offer to switch protocols ignored, as HTTP/1.1 lets a server ignore one (below, `_UPGRADE`).

uvicorn bounds neither how large a request's headers may grow (a 128 MiB header is
parsed into memory) nor how long they may take to arrive (its keep-alive timer is
armed only after a first response, so a client that trickles a header line every
few seconds holds a connection, and a slot of `limit_concurrency`, for ever). A
head over `max_head_bytes` gets 431, and so do trailers (the header fields after a
chunked body's last chunk, which the parser keeps as it keeps a head); a head not
complete within `head_timeout` seconds gets 408; both close the connection.
"""

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from otel_bridge import conventions as c
from otel_bridge.repeated_failure import Refusals

log = logging.getLogger(__name__)

# A head too large is a client's request lost — a producer's batch, dropped after three re-sends (a proxy
# between them that adds a huge header): told, at most once a minute for every connection. A head that never
# arrives is not: a load balancer's TCP probe opens a connection and sends nothing.
_TOO_LARGE = Refusals("requests", log)
# A request the parser cannot read (a scanner's bytes, or a TLS handshake on the plain-HTTP port: a producer whose
# endpoint says https://), uvicorn told in a line of its own for every one, without who sent it or what.
_NOT_HTTP = Refusals("requests", log)
_INVALID_REQUEST = "Invalid HTTP request received."  # uvicorn's line for it
_TLS_HANDSHAKE = b"\x16\x03"  # a TLS record: a handshake, of TLS 1.0 to 1.3

_END_OF_HEAD = b"\r\n\r\n"
# The scope's mark of a request past `limit_concurrency`, saying how many are open: the app answers it (503).
OVER_LIMIT = "otel_bridge.over_limit"
# An offer to switch protocols (`Upgrade: h2c`, which Java's HttpClient and Spring's RestClient add to a POST by
# default; a scanner's WebSocket): the bridge switches to none, and the parser, told of one, stops at the end of the
# head and leaves the body unread — uvicorn then hands the app an empty body (uvicorn#2722), a batch refused as
# empty and dropped. Renamed before the parser reads it, the offer is ignored as HTTP/1.1 lets a server ignore it.
_UPGRADE = re.compile(rb"\n(upgrade)[ \t]*:", re.IGNORECASE)
_IGNORED_UPGRADE = b"\nX-Upgrade-Ignored:"
# A read that ends a few bytes into a header line that may be that name (`\nUpgr`): held back for the next read,
# which completes it (the parser can do nothing with part of a line meanwhile), so that a name cut in two is
# renamed too.
_PART_OF_UPGRADE = re.compile(rb"\n(?:u(?:p(?:g(?:r(?:a(?:d(?:e[ \t]*)?)?)?)?)?)?)?\Z", re.IGNORECASE)


def raw_answer(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout = 10.0
    # `limit_concurrency`, counted here rather than by uvicorn: its own check answered a plain-text 503 without
    # Retry-After, logged a line for every request past it, and handed nothing to the app, so no metric counted
    # the batches turned away. Past it a request is marked (`OVER_LIMIT`) for the app to answer.
    max_open: int | None = None
    # Told of each TLS handshake met on this plain-HTTP port (`c.HANDSHAKE_NO_CERTIFICATE`), as the HTTPS port
    # tells of those that fail: counted, for the alert. In a list: a function as a class attribute is a method.
    handshake_failed: ClassVar[list[Callable[[str], object]]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._held = b""  # the start of a head's line, held for the next read (`_PART_OF_UPGRADE`)
        self._head_timer: asyncio.TimerHandle | None = None
        # A body's bytes read that are not the body (a chunked one's sizes, and the trailers after its last chunk,
        # which the parser keeps as it keeps a head), and the body's own.
        self._framing = self._body_bytes = 0
        self._head_start = b""  # how the request being read began, for a refusal of it to say
        self.logger = _UVICORN_LOG  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only for a connection closed cleanly: one a client or a balancer
        # reset left the timer holding the connection, its request and its headers for `keep_alive_seconds`.
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_bytes == 0:
                self._head_start = data[:32]
            seen = self._tail + data
            end = seen.find(_END_OF_HEAD)
            self._head_bytes += len(data) if end < 0 else max(end + len(_END_OF_HEAD) - len(self._tail), 0)
            self._tail = seen[-3:]
            if self._head_bytes > self.max_head_bytes:
                self._too_large("request head")
                return
            head = len(data) if end < 0 else end + len(_END_OF_HEAD) - (len(seen) - len(data))
            data, head, self._held = self._held + data, head + len(self._held), b""
            if end < 0 and (part := _PART_OF_UPGRADE.search(data)) is not None:
                data, head, self._held = data[: part.start()], part.start(), data[part.start() :]
            if _UPGRADE.search(data, 0, head):
                data = _UPGRADE.sub(_IGNORED_UPGRADE, data[:head]) + data[head:]
        else:
            self._framing += len(data)  # the body in it is taken off as it is parsed (`on_body`)
        super().data_received(data)
        # Trailers grew without bound: read within the body's time, 200 MiB of one took 270 MiB. A chunked body's
        # sizes are a few bytes a chunk; a quarter of the body is room for chunks of a few dozen bytes.
        if not self._in_head and self._framing > self.max_head_bytes + self._body_bytes // 4:
            self._too_large("request trailers, or a chunked body's framing,")

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if (limit := self.max_open) is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            told = f"{len(self.connections)} connections open, {len(self.tasks)} requests under way"
            cast(dict[str, Any], self.scope)[OVER_LIMIT] = f"{told} (limit_concurrency {limit})"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # What follows on this connection is the next request's head: a pipelined one arrives before this one is
        # answered. Counted from its answer only, a head sent right behind a batch was not counted at all, and
        # grew in the parser's buffer as far as the client cared to send (300 MiB of it took 400 MiB).
        self._in_head, self._head_bytes, self._tail = True, 0, b""
        self._framing = self._body_bytes = 0
        super().on_message_complete()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            message = f"request head not received within {self.head_timeout:g} s"
            log.debug("closing a connection from %s: %s", self.client, message)
            self._close(raw_answer(408, "Request Timeout", message))

    def send_400_response(self, msg: str) -> None:
        # The parser refused the request: said here, once a minute, with who sent it and how it began.
        if self._head_start.startswith(_TLS_HANDSHAKE):
            _NOT_HTTP.refused(
                f"a TLS handshake from {self._host()} on this plain-HTTP port: its endpoint says https://, and the "
                "bridge serves plain HTTP (tls_certfile unset): every batch it sends is lost — give the bridge a "
                "certificate, or the producer an http:// endpoint"
            )
            self._close(None)  # an HTTP answer would be garbage to a TLS client
            for told in self.handshake_failed:
                told(c.HANDSHAKE_NO_CERTIFICATE)
            return
        _NOT_HTTP.refused(f"refused a request from {self._host()} (400): not HTTP/1.1 (it began {self._head_start!r})")
        self._close(raw_answer(400, "Bad Request", "not an HTTP/1.1 request"))

    def _too_large(self, what: str) -> None:
        message = f"{what} over {self.max_head_bytes} bytes"
        _TOO_LARGE.refused(
            f"refused a request from {self._host()} (431): {message}; a producer re-sends its batch three times, "
            "then drops it"
        )
        self._close(raw_answer(431, "Request Header Fields Too Large", message))

    def _host(self) -> str:
        return self.client[0] if self.client else "a client"

    def _close(self, answer: bytes | None) -> None:
        """The connection closed, after `answer` (None: none, for a client that could not read one)."""
        self._disarm_head_timer()
        self._in_head = False
        if not self.transport.is_closing():
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()


class _QuietOnInvalid:
    """uvicorn's logger for a connection, but for its line for each request the parser refused: the protocol's
    `send_400_response` tells those."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg != _INVALID_REQUEST:
            self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


# The one logger uvicorn gives every connection (`uvicorn.error`), wrapped once for all of them.
_UVICORN_LOG = _QuietOnInvalid(logging.getLogger("uvicorn.error"))


def guarded_protocol(
    max_head_bytes: int,
    head_timeout: float,
    max_open: int | None = None,
    handshake_failed: Callable[[str], object] | None = None,
) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn builds per connection, with these limits (`max_open`: `limit_concurrency`, given
    here instead of to uvicorn), telling `handshake_failed` of a TLS handshake on its plain-HTTP port."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout": head_timeout,
            "max_open": max_open,
            "handshake_failed": [handshake_failed] if handshake_failed is not None else [],
        },
    )
