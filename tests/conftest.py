from collections.abc import Iterator

import pytest
from otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver


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
