"""The OTLP senders as the SDK's variables configure them: a gRPC endpoint that will be TLS unasked is told."""

import logging

import pytest

from otel_bridge.export import otlp

_TOLD = "has no scheme, so it is reached with TLS"


def _senders_built(monkeypatch, caplog, **env: str) -> list[str]:
    for name in ("ENDPOINT", "INSECURE", "CERTIFICATE"):
        for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_"):
            monkeypatch.delenv(prefix + name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setattr(otlp, "_TOLD", set())  # told once per process: each test is a fresh start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export.otlp"):
        for sender in (otlp.trace_sender(), otlp.metric_sender()):
            sender.shutdown()
    return [r.getMessage() for r in caplog.records if _TOLD in r.getMessage()]


def test_a_grpc_endpoint_without_a_scheme_is_told_to_be_tls_for_each_signal(monkeypatch, caplog):
    told = _senders_built(monkeypatch, caplog, OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317")
    assert told == [
        f"OTLP/gRPC {signal} endpoint 'collector:4317' {_TOLD}; for a plain-text Collector write "
        "http://collector:4317 (or set OTEL_EXPORTER_OTLP_INSECURE=true)"
        for signal in ("traces", "metrics")
    ]


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "false"},
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4317",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "collector:4317",
            "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "true",
        },
        {},  # the SDK's default, http://localhost:4317
    ],
    ids=["http", "https", "insecure", "tls-asked", "per-signal-insecure", "default"],
)
def test_a_grpc_endpoint_whose_transport_was_said_is_not_told(monkeypatch, caplog, env):
    assert _senders_built(monkeypatch, caplog, **env) == []


@pytest.mark.parametrize(
    ("env", "signal", "endpoint"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "traces", "collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "::1"}, "traces", "::1"),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "collector:4318/v1/metrics"}, "metrics", "collector:4318/v1/metrics"),
    ],
)
def test_an_otlp_http_endpoint_that_is_no_url_is_a_configuration_error_naming_it(monkeypatch, env, signal, endpoint):
    # The SDK took it and every export failed, told as a backend away rather than as the setting.
    for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_"):
        monkeypatch.delenv(prefix + "ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"OTLP/HTTP {signal} endpoint '{endpoint}' is not an http"):
        otlp.trace_sender() if signal == "traces" else otlp.metric_sender()


def test_an_exporter_otel_bridge_does_not_speak_is_told_once_for_every_sender(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setattr(otlp, "_TOLD", set())
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export.otlp"):
        senders = [otlp.trace_sender() for _ in range(4)]  # one per concurrent export
    for sender in senders:
        sender.shutdown()
    assert len([r for r in caplog.records if "OTEL_TRACES_EXPORTER=zipkin" in r.getMessage()]) == 1


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_otel_sdk_disabled_turns_both_senders_off(monkeypatch, value):
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert isinstance(otlp.trace_sender(), otlp.NoSender)
    assert isinstance(otlp.metric_sender(), otlp.NoSender)


def _told_making_two(monkeypatch, caplog, make, **env: str) -> list[str]:
    """What the log says as two senders are made (a bridge makes one per concurrent export) under `env`."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setattr(otlp, "_TOLD", set())  # told once per process: each test is a fresh start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export.otlp"):
        senders = [make(), make()]
    for sender in senders:
        assert not isinstance(sender, otlp.NoSender)
        sender.shutdown()
    return [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("value", ["", "false", "FALSE"])
def test_otel_sdk_disabled_false_or_unset_leaves_export_on(monkeypatch, caplog, value):
    assert _told_making_two(monkeypatch, caplog, otlp.trace_sender, OTEL_SDK_DISABLED=value) == []


def test_otel_sdk_disabled_neither_true_nor_false_is_told_once_and_read_as_false(monkeypatch, caplog):
    # As the specification reads a boolean: "1" and "yes" are not true.
    assert _told_making_two(monkeypatch, caplog, otlp.trace_sender, OTEL_SDK_DISABLED="yes") == [
        "OTEL_SDK_DISABLED=yes is neither true nor false: read as false, telemetry is exported"
    ]


def test_a_preference_for_delta_metrics_is_told_once_as_the_bridge_exports_cumulative(monkeypatch, caplog):
    told = _told_making_two(
        monkeypatch, caplog, otlp.metric_sender, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta"
    )
    assert told == [
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta: otel-bridge exports its metrics cumulative; "
        "a backend that takes delta only gets them through the Collector's cumulativetodelta processor"
    ]


def test_a_preference_for_cumulative_metrics_is_what_the_bridge_does_and_is_not_told(monkeypatch, caplog):
    told = _told_making_two(
        monkeypatch, caplog, otlp.metric_sender, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="Cumulative"
    )
    assert told == []
