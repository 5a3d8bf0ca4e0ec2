"""The HTTP port answering while the bridge salvages its state file at start, before its server runs.

The port is bound before the state is opened (a port another server holds is said first), and its server
starts once the state is read back. A salvage at start copies the whole file meanwhile, ~20 s a GiB:
with nothing answering, a startup probe failed on every try and had the salvage cut short by a restart,
again and again, for a state larger than the probe allowed for. Meanwhile `/healthz` says alive (the
salvage is under way), `/readyz` not ready, and anything else is asked again later (503, Retry-After),
as the server says while its store is unavailable.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence

import orjson

log = logging.getLogger(__name__)

# Longest wait for a request's head: a client that sends nothing does not hold a connection for long.
_HEAD_SECONDS = 5.0
_HEAD_BYTES = 65536
# What the server's answers to a batch refused for now say to wait (seconds).
_RETRY_AFTER = 5
# Longest wait, as the salvage ends, for the answers of the connections let go to end.
_LET_GO_SECONDS = 2.0


@contextlib.contextmanager
def answering(listening: Sequence[socket.socket], doing: str, tls: ssl.SSLContext | None = None) -> Iterator[None]:
    """Answer on the bound `listening` sockets for the block, saying the bridge is `doing`; after it they
    listen still, for the server the sockets are handed to (the connections waiting included)."""
    ready = threading.Event()
    stopped = threading.Event()
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        connected: set[asyncio.StreamWriter] = set()
        # Each socket's own copy: a server closes the sockets it serves on, and these go on to the next.
        servers = [
            await asyncio.start_server(_answerer(doing, connected), sock=listener.dup(), ssl=tls, limit=_HEAD_BYTES)
            for listener in listening
        ]
        ready.set()
        while not stopped.is_set():
            await asyncio.sleep(0.05)
        for server in servers:
            server.close()
        # Before waiting for the servers to close: from Python 3.12 on that waits for their connections too,
        # and a client that sent nothing held the start up to the head's timeout.
        await _let_go(connected)
        for server in servers:
            await server.wait_closed()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except Exception:  # the start goes on all the same, answering nothing until its server runs
            log.warning("answering on the port while the bridge starts failed", exc_info=True)
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name="otel-bridge-starting", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield
    finally:
        stopped.set()
        thread.join(10)


async def _let_go(connected: set[asyncio.StreamWriter]) -> None:
    """Close the connections still open (clients that sent nothing yet) while the loop runs, and wait for
    their answers to end.

    Left to the loop's close, an answer was cut at an await and closed its writer on a closed loop
    ("Exception ignored" in the log, the client left hanging until it gave up). Cut by `Task.cancel`,
    Python 3.11's own callback on the task raised in the log ("Exception in callback … connection_made"),
    and a read ended in the same turn lost its exception ("Task exception was never retrieved"). So each
    connection is aborted instead: its read meets the end, and its answer ends as for a client gone. A
    connection accepted meanwhile is let go in the next round.
    """
    deadline = asyncio.get_running_loop().time() + _LET_GO_SECONDS
    while others := [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]:
        for writer in list(connected):
            writer.transport.abort()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            for task in others:  # an answer that did not end: it would be cut at the loop's close anyway
                task.cancel()
            await asyncio.wait(others)
            return
        await asyncio.wait(others, timeout=min(left, 0.05))


def _answerer(
    doing: str, connected: set[asyncio.StreamWriter]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_SECONDS)
            path = head.split(b" ", 2)[1].split(b"?", 1)[0] if head.count(b" ") >= 2 else b""
            body: dict[str, object]
            if path == b"/healthz":
                status, body, more = "200 OK", {"status": "ok", "starting": doing}, b""
            elif path == b"/readyz":
                status, body, more = "503 Service Unavailable", _not_yet(doing), b""
            else:
                status, body, more = "503 Service Unavailable", _not_yet(doing), b"Retry-After: %d\r\n" % _RETRY_AFTER
            content = orjson.dumps(body)
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
                % (status.encode(), len(content), more)
                + content
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            pass  # a client gone, silent or speaking something else: nothing to answer
        finally:
            connected.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    return answer


def _not_yet(doing: str) -> dict[str, object]:
    reason = f"the bridge is starting: {doing}"
    return {"status": "not ready", "error": reason, "ready": False, "reasons": [reason]}
