"""The request head's limits uvicorn lacks, held on a connection fed as a client would feed it."""

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from otel_bridge.receivers.http_protocol import guarded_protocol

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


async def _fed(*chunks: bytes, max_head_bytes: int = 1024) -> tuple[bytes, bool]:
    """What the server wrote back to a connection given `chunks` one read after another while its first request
    is still being answered (a batch being stored), and whether it closed it."""

    async def storing(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(60)

    config = uvicorn.Config(storing, http=guarded_protocol(max_head_bytes, 10.0), log_config=None)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    connection = Connection()
    protocol.connection_made(connection)
    for chunk in chunks:
        protocol.data_received(chunk)
    answered = connection.written, connection.closed
    protocol.connection_lost(None)
    return answered


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
