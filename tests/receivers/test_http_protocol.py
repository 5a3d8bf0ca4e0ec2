"""The request head's limits uvicorn lacks, held on a connection fed as a client would feed it."""

import asyncio
import gc
import weakref
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from otel_bridge.receivers import http_protocol
from otel_bridge.receivers.http_protocol import guarded_protocol
from otel_bridge.repeated_failure import Refusals

BATCH = b'POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Length: 14\r\n\r\n{"events": []}'


class Connection(asyncio.Transport):
    """The server's side of a client's connection: what it wrote back, and whether it closed it."""

    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 4380), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _storing(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(60)  # a batch being stored: its answer is not yet sent


async def _ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _connected(
    app: Any, max_head_bytes: int = 1024, handshake_failed: Any = None, **options: Any
) -> tuple[Any, Connection]:
    """The bridge's protocol in front of `app` on a client's new connection, as uvicorn makes one (in a loop)."""
    protocol_class = guarded_protocol(max_head_bytes, 10.0, handshake_failed=handshake_failed)
    config = uvicorn.Config(app, http=protocol_class, log_config=None, **options)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    connection = Connection()
    protocol.connection_made(connection)
    return protocol, connection


async def _fed(
    *chunks: bytes, max_head_bytes: int = 1024, app: Any = _storing, handshake_failed: Any = None
) -> tuple[bytes, bool]:
    """What the server wrote back to a connection given `chunks` one read after another (while its first request
    is still being answered, by default), and whether it closed it."""
    protocol, connection = _connected(app, max_head_bytes, handshake_failed)
    for chunk in chunks:
        protocol.data_received(chunk)
        await asyncio.sleep(0)  # the app's turn, as the event loop gives it between reads
    for _ in range(10):
        await asyncio.sleep(0)
    answered = connection.written, connection.closed
    protocol.connection_lost(None)
    return answered


def _bodies_read(*chunks: bytes) -> tuple[list[bytes], bytes]:
    """The bodies an app read from a connection given `chunks`, and what the connection was answered."""
    bodies: list[bytes] = []

    async def reading(scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        bodies.append(body)
        await _ok(send)

    written, _closed = asyncio.run(_fed(*chunks, app=reading))
    return bodies, written


def test_a_head_over_the_limit_is_431_and_the_connection_closed():
    written, closed = asyncio.run(_fed(b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nX-Big: ", *[b"a" * 512] * 4))
    assert written.startswith(b"HTTP/1.1 431") and closed


def test_a_head_pipelined_behind_a_batch_still_being_answered_is_held_to_the_limit():
    # HTTP/1.1 lets a client send its next request before the answer to the one before: that head was counted
    # from the answer on, so one sent behind a batch grew in the parser's buffer as far as the client cared.
    next_head = b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nX-Big: "
    written, closed = asyncio.run(_fed(BATCH + next_head, *[b"a" * 512] * 4))
    assert written.startswith(b"HTTP/1.1 431") and closed


def test_a_batch_and_a_pipelined_head_within_the_limit_are_left_to_be_answered():
    assert asyncio.run(_fed(BATCH, BATCH[:40], BATCH[40:])) == (b"", False)


CHUNKED = b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_trailers_over_the_limit_after_a_chunked_body_are_431():
    # Read within the body's time (30 s), 200 MiB of one trailer took 270 MiB of the bridge's memory.
    written, closed = asyncio.run(_fed(CHUNKED + _chunk(b'{"events": []}') + b"0\r\nX-Trailer: ", *[b"a" * 512] * 4))
    assert written.startswith(b"HTTP/1.1 431") and closed
    assert b"trailers" in written


def test_a_chunked_body_larger_than_the_limit_in_chunks_of_an_event_each_is_read_on():
    event = b'{"type": "step.started", "eventId": "%d", "pad": "' + b"x" * 250 + b'"}'
    chunks = [_chunk(event % n) for n in range(1000)]  # ~300 KiB, a few bytes of framing a chunk
    assert asyncio.run(_fed(CHUNKED, *chunks, b"0\r\nX-Checksum: abc\r\n\r\n")) == (b"", False)


H2C_OFFER = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"


def test_a_batch_offering_to_switch_to_http2_is_read_whole_as_http_1_1():
    # Java's HttpClient and Spring's RestClient offer h2c on a POST by default: the parser, told of the offer,
    # left the body unread, and the batch was refused as empty (uvicorn#2722), then dropped after three re-sends.
    head = b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\n" + H2C_OFFER
    body = b'{"events": []}'
    bodies, written = _bodies_read(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert bodies == [body] and written.startswith(b"HTTP/1.1 200")
    chunked, written = _bodies_read(head + b"Transfer-Encoding: chunked\r\n\r\n", _chunk(body) + b"0\r\n\r\n")
    assert chunked == [body] and written.startswith(b"HTTP/1.1 200")


def test_an_offer_to_switch_cut_in_two_by_the_reads_that_bring_it_is_ignored_as_well():
    # A head arrives in as many reads as the network cuts it into: one ending in "\r\nUpgr" and the next starting
    # "ade: h2c" left the name unseen, and the body unread.
    head = b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\n" + H2C_OFFER
    body = b'{"events": []}'
    request = head + b"Content-Length: %d\r\n\r\n" % len(body)
    bodies, written = _bodies_read(*[request[i : i + 1] for i in range(len(request))], body)
    assert bodies == [body] and written.startswith(b"HTTP/1.1 200")
    cut = request.index(b"Upgrade:") + 4
    bodies, written = _bodies_read(request[:cut], request[cut:] + body)
    assert bodies == [body] and written.startswith(b"HTTP/1.1 200")


def test_only_the_head_is_read_for_an_offer_to_switch_never_the_body():
    body = b"{\nUpgrade: as the body has it\n}"
    bodies, _ = _bodies_read(
        b"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert bodies == [body]


def test_a_connection_reset_after_its_answer_leaves_nothing_behind():
    # uvicorn cancelled its keep-alive timer only for a connection closed cleanly: one reset (a balancer's RST)
    # was held with its request and headers for `keep_alive_seconds` — 620 s behind Google's balancer.
    async def answering(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await _ok(send)

    async def reset() -> weakref.ref[Any]:
        protocol, connection = _connected(answering, timeout_keep_alive=620)
        protocol.data_received(BATCH)
        for _ in range(10):
            await asyncio.sleep(0)
        assert connection.written.startswith(b"HTTP/1.1 200")  # answered: the keep-alive timer runs
        protocol.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        left = weakref.ref(protocol)
        del protocol
        gc.collect()
        return left

    assert asyncio.run(reset())() is None


CLIENT_HELLO = bytes.fromhex("160301020001") + bytes(40)  # how a TLS client's first bytes begin


def test_a_tls_handshake_on_the_plain_port_is_said_as_such_once_counted_each_time_and_left_unanswered(
    monkeypatch, caplog
):
    # A producer whose endpoint says https:// to a bridge serving plain HTTP loses every batch: uvicorn wrote
    # "Invalid HTTP request received." for each, without who or why.
    monkeypatch.setattr(http_protocol, "_NOT_HTTP", Refusals("requests", http_protocol.log))
    counted: list[str] = []
    for _ in range(3):
        # Closed: an HTTP answer would be garbage to it.
        assert asyncio.run(_fed(CLIENT_HELLO, handshake_failed=counted.append)) == (b"", True)
    assert counted == ["no_certificate"] * 3  # for BridgeTlsHandshakesFailing
    told = [r.getMessage() for r in caplog.records if r.name == "otel_bridge.receivers.http_protocol"]
    assert len(told) == 1 and told[0].startswith("a TLS handshake from 127.0.0.1 on this plain-HTTP port")
    assert "give the bridge a certificate, or the producer an http:// endpoint" in told[0]
    assert not [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]


def test_what_is_no_http_request_is_answered_400_as_the_bridge_answers_and_said_once_with_how_it_began(
    monkeypatch, caplog
):
    monkeypatch.setattr(http_protocol, "_NOT_HTTP", Refusals("requests", http_protocol.log))
    for _ in range(3):
        written, closed = asyncio.run(_fed(b"GARBAGE\r\n\r\n"))
        assert written.startswith(b"HTTP/1.1 400") and closed
        assert written.endswith(b'{"error":"not an HTTP/1.1 request"}')
    told = [r.getMessage() for r in caplog.records if r.name == "otel_bridge.receivers.http_protocol"]
    assert told == ["refused a request from 127.0.0.1 (400): not HTTP/1.1 (it began b'GARBAGE\\r\\n\\r\\n')"]
    assert not [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]
