import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

if TYPE_CHECKING:
    from postgres_server import PostgresServer

# The suite specifies the bridge's defaults and the settings each test gives: none from the shell it
# runs in (an exported OTEL_EXPORTER_OTLP_ENDPOINT would send the tests' spans to a real backend, and an
# OTEL_BRIDGE_* variable would change what every bridge the tests start does, or be warned of).
for _name in [name for name in os.environ if name.startswith("OTEL_")]:
    del os.environ[_name]
# Every bridge the tests start, in this process or as a child, keeps 1 MiB beside its state file
# rather than the default 16: hundreds of them run (tests/state/test_disk_reserve.py tries the real size).
os.environ["OTEL_BRIDGE_DISK_RESERVE_MIB"] = "1"


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
    from redis_server import RedisServer

    server = RedisServer().start()
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory) -> Iterator[str]:
    """A real Redis Cluster of three nodes on 127.0.0.1 (Debian's redis-server, in cluster mode)."""
    from redis_server import RedisClusterNodes

    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster.url
    cluster.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator["PostgresServer"]:
    """A real PostgreSQL on 127.0.0.1 (Debian's package, installed by ./scripts/test), for a test file."""
    from postgres_server import PostgresServer

    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture
def database(postgres: "PostgresServer", request: pytest.FixtureRequest) -> str:
    """The URL of a database of this test's own on the file's PostgreSQL."""
    return postgres.database("t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50])
