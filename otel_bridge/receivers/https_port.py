"""The HTTPS port, its connections accepted here rather than by the event loop's server, to see how each begins.

Given a certificate, the loop's server made each TLS handshake before the protocol saw a byte, and a handshake
that failed was said only in the loop's debug mode. Two producers lost every batch with nothing in the bridge's
log: one whose endpoint says `http://` (plain HTTP to the HTTPS port), and one that does not trust the bridge's
certificate (its CA unknown to it, a name the certificate does not cover, a certificate ended). Here a
connection's first byte is peeked at before anything reads it: a TLS record goes on to the handshake (the loop's
own, `connect_accepted_socket`, then uvicorn's protocol as before); anything else is answered 400, as nginx
answers it, counted as a request refused, and told with the sender; a handshake that fails is told with
OpenSSL's reason and what it means for a producer. Each at most once a minute.
"""

import asyncio
import errno
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import uvicorn

from otel_bridge import conventions as c
from otel_bridge.export.aggregation import Attributes
from otel_bridge.receivers.http import request_attributes
from otel_bridge.receivers.http_protocol import raw_answer
from otel_bridge.repeated_failure import Refusals

log = logging.getLogger(__name__)

_TLS_RECORD = 0x16  # a TLS handshake record's first byte; an HTTP request begins with its method's letters
# A client gone before its connection was accepted. Any other failure to accept (out of file descriptors, most
# often) leaves the connection in the listen backlog, accepted a moment later, as the loop's own server does.
_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
_ACCEPT_AGAIN_SECONDS = 1.0
# What a client's alert in the handshake says of the bridge's certificate: it refused it.
_CERTIFICATE_REFUSED = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED", "DECRYPT_ERROR")
# A client of a TLS older than the bridge takes (1.2), or with no cipher in common. Not WRONG_VERSION_NUMBER: a
# record that is no TLS's (a scanner's bytes after a first 0x16).
_TOO_OLD = ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "PROTOCOL_VERSION", "NO_SHARED_CIPHER", "NO_CIPHERS")
# How an HTTP request begins: its method, then a space.
_REQUEST_LINE = re.compile(rb"[A-Z]{3,10} ")


# As nginx answers it (its 497), in the bridge's JSON.
PLAIN_HTTP_ANSWER = raw_answer(400, "Bad Request", "plain HTTP to an HTTPS port: this endpoint is https://")


def handshake_failure(reason: str) -> tuple[str, str]:
    """What a failed handshake's OpenSSL reason means for the producer behind it: its kind, counted
    (`otel_bridge_tls_handshakes_failed_total{reason}`), and what to say of it."""
    if any(refused in reason for refused in _CERTIFICATE_REFUSED):
        return c.HANDSHAKE_CERTIFICATE_REFUSED, (
            "the client refused the bridge's certificate: a producer that does not trust its CA (Node.js: "
            "NODE_EXTRA_CA_CERTS), or reaches the bridge by a name the certificate does not cover, loses every batch"
        )
    if any(old in reason for old in _TOO_OLD):
        return (
            c.HANDSHAKE_VERSION_OR_CIPHER,
            "the client offers no TLS version or cipher the bridge takes (TLS 1.2 and later)",
        )
    return c.HANDSHAKE_OTHER, "no batch of it reaches the bridge"


class HttpsPort:
    """Accepts connections on `listeners` and serves each one that begins with a TLS record with `protocol` over
    `tls`; `answered(attributes, seconds)` of each plain-HTTP request refused, `failed(kind)` of each handshake
    that failed (`handshake_failure`). `close()` stops accepting, as an asyncio server's does."""

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        tls: ssl.SSLContext,
        protocol: Callable[[], asyncio.Protocol],
        answered: Callable[[Attributes, float], object],
        failed: Callable[[str], object],
        timeout: float,
        backlog: int,
    ) -> None:
        self._listeners, self._tls, self._protocol = listeners, tls, protocol
        self._answered, self._failed, self._timeout, self._backlog = answered, failed, timeout, backlog
        self._accepting: list[asyncio.Task[None]] = []
        self._taking: set[asyncio.Task[None]] = set()  # connections not yet handed on: held, or they are collected
        self._plain = Refusals("requests", log)
        self._garbage = Refusals("requests", log)  # apart: a scanner's lines do not hold back a producer's
        self._handshakes = Refusals("handshakes", log)
        self._not_accepted = Refusals("connections", log)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.setblocking(False)
            listener.listen(self._backlog)
            self._accepting.append(loop.create_task(self._accept(listener)))

    def close(self) -> None:
        for task in [*self._accepting, *self._taking]:
            task.cancel()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, address = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                self._not_accepted.refused(f"cannot accept a connection on the HTTPS port: {exc.strerror or exc}")
                await asyncio.sleep(_ACCEPT_AGAIN_SECONDS)
                continue
            task = loop.create_task(self._take(connection, address[0]))
            self._taking.add(task)
            task.add_done_callback(self._taking.discard)

    async def _take(self, connection: socket.socket, host: str) -> None:
        if not await self._begins_tls(connection, host):
            return
        try:  # the socket is the transport's from here on, closed by it
            await asyncio.get_running_loop().connect_accepted_socket(
                self._protocol, connection, ssl=self._tls, ssl_handshake_timeout=self._timeout
            )
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            kind, said = handshake_failure(reason)
            self._failed(kind)
            self._handshakes.refused(f"a TLS handshake from {host} failed ({reason}): {said}")
        except OSError:  # gone, or not through the handshake within the head's time
            pass

    async def _begins_tls(self, connection: socket.socket, host: str) -> bool:
        """Whether the connection begins with a TLS record; closed when it does not (plain HTTP, answered), when
        it ends or stays silent for the head's time first (a balancer's probe of the port), or when the port
        closes meanwhile."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tls = False
        try:
            async with asyncio.timeout(self._timeout):
                first = await _first_byte(loop, connection)
                tls = first == _TLS_RECORD
                if first is not None and not tls:
                    await self._refuse_plain(loop, connection, host, started)
        except (OSError, TimeoutError):  # a client gone, or silent: nothing to tell it
            pass
        finally:
            if not tls:
                connection.close()
        return tls

    async def _refuse_plain(
        self, loop: asyncio.AbstractEventLoop, connection: socket.socket, host: str, started: float
    ) -> None:
        head = connection.recv(64, socket.MSG_PEEK)
        if _REQUEST_LINE.match(head):
            self._plain.refused(
                f"refused a request from {host} (400): plain HTTP on this HTTPS port (it began {head[:32]!r}): its "
                "endpoint says http://, and the bridge serves HTTPS (tls_certfile): every batch it sends is lost — "
                "give the producer an https:// endpoint"
            )
        else:  # neither TLS nor HTTP: a scanner's bytes
            self._garbage.refused(f"refused a request from {host} (400): neither TLS nor HTTP (it began {head[:32]!r})")
        await loop.sock_sendall(connection, PLAIN_HTTP_ANSWER)
        method = head.split(b" ", 1)[0].decode("ascii", "replace")
        self._answered(request_attributes(method, None, 400, "http"), time.perf_counter() - started)
        # Closed with the request unread, the connection would be reset, and a client could lose the answer
        # before it read it: its end waited for (within the head's time), what it sends read and dropped.
        connection.shutdown(socket.SHUT_WR)
        while await loop.sock_recv(connection, 65536):
            pass


async def _first_byte(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> int | None:
    """The connection's first byte, left to be read (None: closed before one)."""
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(connection, ready)
    try:
        await readable
    finally:
        loop.remove_reader(connection)
    first = connection.recv(1, socket.MSG_PEEK)
    return first[0] if first else None


class HttpsServer(uvicorn.Server):
    """uvicorn's server, its sockets accepted by an `HttpsPort` rather than by a server of the loop's."""

    def __init__(
        self,
        config: uvicorn.Config,
        tls: ssl.SSLContext,
        answered: Callable[[Attributes, float], object],
        failed: Callable[[str], object],
    ) -> None:
        super().__init__(config)
        self._tls, self._answered, self._failed = tls, answered, failed
        self._port: HttpsPort | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's lifespan, and no server of the loop's
        protocol: Any = self.config.http_protocol_class
        self._port = HttpsPort(
            sockets or [],
            self._tls,
            partial(protocol, config=self.config, server_state=self.server_state, app_state=self.lifespan.state),
            self._answered,
            self._failed,
            timeout=protocol.head_timeout,
            backlog=self.config.backlog,
        )
        self._port.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._port is not None:  # no connection taken from here on, as the loop's server stops taking them
            self._port.close()
        await super().shutdown(sockets)
