import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import small_filesystem
from redis_server import RedisServer, replica_of


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real filesystem of 12 MiB, mounted for the test (tmpfs): its disk can truly fill."""
    with small_filesystem(tmp_path / "disk", 12) as disk:
        yield disk


@pytest.fixture
def primary() -> Iterator[RedisServer]:
    """A real redis-server of the test's own, as a primary."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def replica(primary) -> Iterator[RedisServer]:
    """A real redis-server replicating `primary`, in sync when the test begins."""
    server = replica_of(primary)
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)  # a test that stopped it (SIGSTOP) and failed
    server.close()
