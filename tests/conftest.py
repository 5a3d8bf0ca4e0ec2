import os
from collections.abc import Iterator

import pytest
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

# Every bridge the tests start, in this process or as a child, keeps 1 MiB beside its state file
# rather than the default 16: hundreds of them run (tests/state/test_disk_reserve.py tries the real size).
os.environ.setdefault("OTEL_BRIDGE_DISK_RESERVE_MIB", "1")


@pytest.fixture
def otlp_http() -> Iterator[OtlpHttpReceiver]:
    receiver = OtlpHttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def otlp_grpc() -> Iterator[OtlpGrpcReceiver]:
    receiver = OtlpGrpcReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(params=["http/protobuf", "grpc"])
def otlp(request: pytest.FixtureRequest) -> Iterator[tuple[str, OtlpHttpReceiver | OtlpGrpcReceiver]]:
    """A real OTLP receiver for each protocol the bridge speaks."""
    receiver = OtlpHttpReceiver() if request.param == "http/protobuf" else OtlpGrpcReceiver()
    yield request.param, receiver
    receiver.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server on 127.0.0.1 (Debian's package, installed by ./scripts/test)."""
    import shutil
    import subprocess
    import time

    import redis
    from bridge_process import free_port

    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: ./scripts/test installs it (apt-get install redis-server)"
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(10)
