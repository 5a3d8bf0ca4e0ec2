"""What configures the OTLP export: the timeouts as the specification and the Python SDK count them, and the
options code gives in the variables' place. (How the senders are made of it: test_otlp.py.)"""

import logging

import pytest

from otel_bridge.export import otlp_config


def _timeouts(monkeypatch, **env: str) -> None:
    """Only `env` of the export's timeout variables set, as a fresh start sees them."""
    for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_"):
        monkeypatch.delenv(prefix + "TIMEOUT", raising=False)
    monkeypatch.setattr(otlp_config, "_TOLD", set())
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_a_timeout_given_in_code_counts_seconds_whatever_the_variables_count():
    config = otlp_config.OtlpConfig.in_code({"timeout_seconds": 2.5}, otlp_config.MILLISECONDS)
    assert otlp_config.export_timeout("traces", config) == otlp_config.export_timeout("metrics", config) == 2.5


@pytest.mark.parametrize(
    ("env", "seconds"),
    [
        ({}, 10.0),  # the specification's default
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}, 10.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}, 2.5),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "500"}, 0.5),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "3000", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": ""}, 3.0),  # empty: unset
    ],
)
def test_the_export_timeout_counts_the_specifications_milliseconds(monkeypatch, env, seconds):
    _timeouts(monkeypatch, **env)
    assert otlp_config.export_timeout("traces") == seconds


def test_in_a_python_application_the_export_timeout_counts_seconds_as_its_own_exporters_do(monkeypatch):
    # The in-process tracker shares the variable with the application's own Python SDK exporters.
    _timeouts(monkeypatch, OTEL_EXPORTER_OTLP_TIMEOUT="5")
    assert otlp_config.export_timeout("traces", otlp_config.OtlpConfig(timeout_unit=otlp_config.SECONDS)) == 5.0


def test_a_timeout_likely_meant_in_seconds_is_told_once_with_what_to_write(monkeypatch, caplog):
    _timeouts(monkeypatch, OTEL_EXPORTER_OTLP_TIMEOUT="30")
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        assert otlp_config.export_timeout("traces") == otlp_config.export_timeout("metrics") == 0.03
    assert [r.getMessage() for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_TIMEOUT=30 is 30 ms for each export request: the specification's unit, milliseconds, "
        "which otel-bridge reads (the Python SDK reads seconds); for 30 seconds write 30000"
    ]


def test_an_option_given_in_code_is_read_in_place_of_both_its_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "deflate")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
    config = otlp_config.OtlpConfig.in_code({"compression": "gzip"}, otlp_config.SECONDS)
    assert config.variable("traces", "COMPRESSION") == ("otlp['compression']", "gzip")
    assert otlp_config.export_compression("traces", "http/protobuf", config) == "gzip"
    # What code did not give is still the variables'.
    assert config.variable("traces", "HEADERS") == otlp_config.FROM_ENVIRONMENT.variable("traces", "HEADERS")


def test_headers_given_in_code_are_read_as_the_sdk_reads_the_variable_whatever_they_hold():
    headers = {"Authorization": "Bearer a,b;c=d%e", "x-empty": ""}
    config = otlp_config.OtlpConfig.in_code({"headers": headers}, otlp_config.SECONDS)
    assert otlp_config.parsed_headers(config.variable("traces", "HEADERS")[1]) == {
        "authorization": "Bearer a,b;c=d%e",
        "x-empty": "",
    }
