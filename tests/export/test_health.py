"""What the SDK exporters' loggers say is dropped while the bridge's own senders export, and only then."""

import logging

import pytest
from builders import finished_span

from otel_bridge import keys
from otel_bridge.export import otlp
from otel_bridge.export.span_encoding import encode_span, export_request

_SDK = "opentelemetry.exporter"


def _from_the_sdk(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith(_SDK)]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_sdk_exporters_say_nothing_of_the_bridges_exports_but_an_applications_own_are_heard(
    monkeypatch, caplog, protocol
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")  # nobody listens
    sender = otlp.trace_sender()
    metrics = otlp.metric_sender()
    otlp.stop_retrying(sender, metrics)  # one attempt each, no backoff; made, they filter the SDK's loggers
    request = export_request([(keys.resource_key("shop", "production"), encode_span(finished_span()))], "1")
    with caplog.at_level(logging.DEBUG):
        assert sender.send(request).delivery is otlp.Delivery.RETRY
        sender.shutdown()
        metrics.shutdown()
        assert _from_the_sdk(caplog) == []
        # An application beside the in-process tracker exports its own telemetry through the same
        # SDK exporters: what they tell it is not the bridge's to drop.
        names = sorted(n for n in logging.root.manager.loggerDict if n.startswith(_SDK + "."))
        assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" in names
        for name in names:
            logging.getLogger(name).warning("the application's own export failed")
    assert _from_the_sdk(caplog) == [f"{name}: the application's own export failed" for name in names]
