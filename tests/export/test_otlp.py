"""The OTLP senders as the standard variables configure them: what no export could work with is a configuration
error naming the variable, a gRPC endpoint that will be TLS unasked is told, the timeout counts milliseconds."""

import logging
import re
import subprocess

import pytest
from opentelemetry.sdk.metrics.export import MetricsData

from otel_bridge.export import otlp, otlp_config

_TOLD = "has no scheme, so it is reached with TLS"


def _senders_built(monkeypatch, caplog, **env: str) -> list[str]:
    for name in ("ENDPOINT", "INSECURE", "CERTIFICATE"):
        for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_"):
            monkeypatch.delenv(prefix + name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setattr(otlp_config, "_TOLD", set())  # told once per process: each test is a fresh start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
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


def test_a_grpc_endpoint_given_in_code_without_a_scheme_is_told_with_the_option_that_says_plain_text(
    monkeypatch, caplog
):
    monkeypatch.setattr(otlp_config, "_TOLD", set())
    config = otlp_config.OtlpConfig.in_code({"endpoint": "collector:4317", "protocol": "grpc"}, otlp_config.SECONDS)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        otlp.trace_sender(config).shutdown()
    assert [r.getMessage() for r in caplog.records] == [
        f"OTLP/gRPC traces endpoint 'collector:4317' {_TOLD}; for a plain-text Collector write "
        "http://collector:4317 (or set otlp['insecure']=True)"
    ]
    caplog.clear()
    plain = otlp_config.OtlpConfig.in_code(
        {"endpoint": "collector:4317", "protocol": "grpc", "insecure": True}, otlp_config.SECONDS
    )
    sender = otlp.trace_sender(plain)
    assert sender._insecure  # type: ignore[attr-defined]
    sender.shutdown()
    assert not caplog.records


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


def _standard_variables(monkeypatch, **env: str) -> None:
    """Only `env` of the exporters' endpoint, timeout, header and TLS variables set, as a fresh start sees them."""
    for name in ("ENDPOINT", "TIMEOUT", "HEADERS", "CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_METRICS_"):
            monkeypatch.delenv(prefix + name, raising=False)
    monkeypatch.setattr(otlp_config, "_TOLD", set())
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize(
    ("variable", "endpoint", "why"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1", "Invalid IPv6 URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:port", "Port could not be cast to integer value"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999", "Port out of range 0-65535"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://", "it names no host"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://:4318/v1/traces", "it names no host"),
    ],
)
def test_an_endpoint_that_does_not_parse_is_a_configuration_error_naming_its_variable(
    monkeypatch, protocol, variable, endpoint, why
):
    # The HTTP exporter took it and every export failed, told as a backend away; the gRPC one failed
    # the start with a bare "Invalid IPv6 URL", or took the port that is no number and failed as well.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, **{variable: endpoint})
    with pytest.raises(ValueError, match=re.escape(f"{variable}={endpoint!r}: the ") + f".* traces endpoint .*{why}"):
        otlp.trace_sender()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "the CA the backend's certificate is checked against"),
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "the bridge's own key, for mutual TLS"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "the bridge's own certificate, for mutual TLS"),
    ],
)
def test_a_tls_file_that_cannot_be_read_is_a_configuration_error_naming_its_variable(
    monkeypatch, tmp_path, protocol, variable, what
):
    # A CA file that was not there failed every OTLP/HTTP export, told as a backend away; the gRPC
    # exporter logged a traceback and went on without it.
    endpoint = "https://collector:4318"
    for path, why in ((tmp_path / "missing.pem", "No such file or directory"), (tmp_path, "Is a directory")):
        _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
        monkeypatch.setenv(variable, str(path))
        with pytest.raises(ValueError) as raised:
            otlp.trace_sender()
        assert str(raised.value) == f"{variable}={str(path)!r} cannot be read ({why}): it is {what}"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_encrypted_client_key_is_a_configuration_error_the_variables_give_no_pass_phrase(
    monkeypatch, tmp_path, protocol
):
    # OpenSSL asked for its pass phrase on the terminal at the first export (OTLP/HTTP); gRPC refused the key.
    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=bridge", "-passout",
         "pass:its own", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    _standard_variables(
        monkeypatch,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_EXPORTER_OTLP_ENDPOINT="https://collector:4318",
        OTEL_EXPORTER_OTLP_CLIENT_KEY=str(key),
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(certificate),
    )
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_CLIENT_KEY=.*key\.pem' is encrypted: the OTLP exporters"):
        otlp.trace_sender()


def test_a_tls_file_of_the_other_signal_is_asked_of_that_signal_only(monkeypatch, tmp_path):
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE=str(tmp_path / "missing.pem"))
    otlp.trace_sender().shutdown()
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE="):
        otlp.metric_sender()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize(
    ("headers", "which"),
    [
        ("x-api-key:s3cret", "the header 'x-api-key'"),  # a colon for the `=`
        ("tenant=a,authorization :Bearer s3cret", "the header 'authorization'"),
        ("s3cret", "its header number 1"),  # a lone token might be the credential: not named
        ("tenant=a, api key=s3cret", "its header number 2"),
        ("x-api-key=s3cr\u00e9t", "the header 'x-api-key'"),  # not ASCII: URL-encoded it is taken
    ],
)
def test_a_header_the_sdk_would_drop_is_a_configuration_error_that_never_shows_its_value(
    monkeypatch, caplog, protocol, headers, which
):
    # The SDK dropped it, every export was then refused, and its warning wrote the header whole,
    # credential and all, three times at every start.
    headers = headers.encode().decode("unicode_escape")
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_HEADERS=headers)
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as raised:
        otlp.trace_sender()
    assert str(raised.value).startswith(f"OTEL_EXPORTER_OTLP_HEADERS: {which} is no name=value")
    assert "s3cr" not in str(raised.value) + caplog.text


@pytest.mark.parametrize(
    "headers",
    ["x-api-key=s3cret", "Authorization=Bearer s3cret", " a = 1 , b=2=3,", "x-api-key=s3cr%C3%A9t", ""],
)
def test_headers_the_sdk_takes_are_taken(monkeypatch, headers):
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_HEADERS=headers)
    otlp.trace_sender().shutdown()


@pytest.mark.parametrize(
    ("protocol", "env", "compression"),
    [
        ("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}, "none"),  # the SDK's gRPC exporter failed the start
        ("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"}, "gzip"),
        ("grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": ""}, "gzip"),
        ("http/protobuf", {"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "deflate"}, "deflate"),
        (
            "http/protobuf",
            {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"},
            "none",
        ),
        ("http/protobuf", {}, "none"),
    ],
)
def test_the_compression_the_variables_ask_for_is_the_one_the_exporter_uses(monkeypatch, protocol, env, compression):
    for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_"):
        monkeypatch.delenv(prefix + "COMPRESSION", raising=False)
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, **env)
    assert otlp_config.export_compression("traces", protocol) == compression
    sender = otlp.trace_sender()
    # grpc.Compression.NoCompression or Gzip; the HTTP exporter's own NONE, DEFLATE or GZIP.
    assert sender._compression.name.lower() in {compression, compression.replace("none", "nocompression")}
    sender.shutdown()


@pytest.mark.parametrize(
    ("protocol", "value", "kinds"),
    [("grpc", "deflate", "gzip, none"), ("grpc", "zstd", "gzip, none"), ("http/protobuf", "br", "gzip, deflate, none")],
)
def test_a_compression_the_protocol_has_not_is_a_configuration_error_naming_its_variable(
    monkeypatch, protocol, value, kinds
):
    # The SDK's HTTP exporter warned and sent uncompressed; its gRPC exporter failed the start with a traceback.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_COMPRESSION=value)
    with pytest.raises(ValueError) as raised:
        otlp.metric_sender()
    assert (
        str(raised.value) == f"OTEL_EXPORTER_OTLP_COMPRESSION={value!r}: OTLP over {protocol} compresses with {kinds}"
    )


@pytest.mark.parametrize("insecure", ["OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE"])
def test_an_http_grpc_endpoint_is_plain_text_whatever_insecure_says(monkeypatch, otlp_grpc, insecure):
    # The specification lets the scheme decide; the SDK let INSECURE=false (an operator's default for
    # every exporter) turn http:// into TLS, and every export failed its handshake with the Collector.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_grpc.endpoint)
    monkeypatch.setenv(insecure, "false")
    sender = otlp.trace_sender()
    otlp.stop_retrying(sender)
    try:
        assert sender.send(b"") == otlp.SENT  # an empty request, answered by the plain-text receiver
    finally:
        sender.shutdown()


@pytest.mark.parametrize(
    ("env", "plain"),
    [
        ({}, True),  # the SDK's default endpoint, http://localhost:4317
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "TRUE"}, True),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false",
            },
            False,
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:1"},
            True,
        ),
    ],
)
def test_grpc_speaks_plain_text_or_tls_as_the_specification_decides(monkeypatch, env, plain):
    for prefix in ("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_"):
        monkeypatch.delenv(prefix + "INSECURE", raising=False)
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", **env)
    sender = otlp.trace_sender()
    assert sender._insecure is plain
    sender.shutdown()


def test_an_insecure_neither_true_nor_false_is_told_once_and_read_as_false(monkeypatch, caplog):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_INSECURE", raising=False)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "yes"}
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", **env)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        senders = [otlp.trace_sender(), otlp.trace_sender()]
    assert [sender._insecure for sender in senders] == [False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_INSECURE=yes is neither true nor false: read as false, so traces go over TLS"
    ]
    for sender in senders:
        sender.shutdown()


def test_a_signals_own_http_endpoint_without_a_path_is_told_with_the_one_meant(monkeypatch, caplog):
    # Used as it is given, as the specification says: every export went to the Collector's root, 404.
    _standard_variables(
        monkeypatch,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://collector:4318",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://collector:4318/v1/metrics",
    )
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        for sender in (otlp.trace_sender(), otlp.trace_sender(), otlp.metric_sender()):
            sender.shutdown()
    assert [r.getMessage() for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://collector:4318 has no path: a signal's own endpoint is used "
        "as it is given, so the traces go to its root; write http://collector:4318/v1/traces (or give the base "
        "URL as OTEL_EXPORTER_OTLP_ENDPOINT)"
    ]


def test_a_base_endpoint_ending_with_a_signals_path_is_told_once_with_the_base_meant(monkeypatch, caplog):
    # Each signal's path is added to it: every export went to …/v1/traces/v1/traces, the Collector's 404.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/v1/traces")
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        for sender in (otlp.trace_sender(), otlp.metric_sender()):
            sender.shutdown()
    assert [r.getMessage() for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318/v1/traces ends with a signal's path: it is the base "
        "URL, and each signal's path is added to it (http://collector:4318/v1/traces/v1/traces); write "
        "http://collector:4318"
    ]
    caplog.clear()  # a signal with an endpoint of its own does not add to the base
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://a:4318/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a:4318/v1/traces")
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
        otlp.trace_sender().shutdown()
    assert caplog.records == []


@pytest.mark.parametrize("query", ["?api-key=k1", "/?api-key=k1", "/otlp?api-key=k1", "/otlp/#top"])
def test_a_base_endpoint_with_a_query_has_each_signals_path_put_in_its_path(monkeypatch, otlp_http, query):
    # The SDK adds the path to the end of the text: `/?api-key=k1/v1/traces`, a gateway's 404 for every export.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=otlp_http.endpoint + query)
    otlp_http.prefix = prefix = "/otlp" if "otlp" in query else ""
    traces, metrics = otlp.trace_sender(), otlp.metric_sender()
    try:
        # Where it goes is told (the start line, every failing export) without the key.
        assert otlp.endpoint_of(traces).endswith("/v1/traces?api-key=***" if "?" in query else "/v1/traces")
        assert traces.send(b"") == otlp.SENT
        assert metrics.send(MetricsData(resource_metrics=[])) == otlp.SENT
    finally:
        traces.shutdown()
        metrics.shutdown()
    asked = "?api-key=k1" if "?" in query else ""  # a fragment is no part of a request
    assert otlp_http.received.targets == [f"{prefix}/v1/traces{asked}", f"{prefix}/v1/metrics{asked}"]


@pytest.mark.parametrize("base", ["", "/otlp", "/otlp?api-key=k1"])
def test_a_base_endpoint_given_in_code_is_each_signals_in_place_of_every_endpoint_variable(
    monkeypatch, otlp_http, base
):
    # The SDK's exporter never reads code's base: it is given each signal's URL, the variables left aside.
    _standard_variables(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://elsewhere:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://elsewhere:4318/v1/traces",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://elsewhere:4318/v1/metrics",
    )
    otlp_http.prefix = prefix = "/otlp" if base else ""
    config = otlp_config.OtlpConfig.in_code({"endpoint": otlp_http.endpoint + base}, otlp_config.SECONDS)
    traces, metrics = otlp.trace_sender(config), otlp.metric_sender(config)
    try:
        assert traces.send(b"") == otlp.SENT
        assert metrics.send(MetricsData(resource_metrics=[])) == otlp.SENT
    finally:
        traces.shutdown()
        metrics.shutdown()
    asked = "?api-key=k1" if "?" in base else ""
    assert otlp_http.received.targets == [f"{prefix}/v1/traces{asked}", f"{prefix}/v1/metrics{asked}"]


def test_a_signals_own_endpoint_with_a_query_is_used_as_it_is_given(monkeypatch, otlp_http):
    _standard_variables(
        monkeypatch,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://elsewhere:4318/?k=1",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{otlp_http.endpoint}/v1/traces?api-key=k1",
    )
    traces = otlp.trace_sender()
    try:
        assert traces.send(b"") == otlp.SENT
    finally:
        traces.shutdown()
    assert otlp_http.received.targets == ["/v1/traces?api-key=k1"]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_where_the_export_goes_is_told_without_the_password_its_url_holds(monkeypatch, protocol):
    # Written at start ("traces to …") and at every failing export.
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318")
    sender = otlp.trace_sender()
    for kept in ("http://user:s3cret@c:4318/v1/traces", "user:s3cret@c:4317"):  # as each SDK exporter keeps it
        sender._endpoint = kept
        assert "s3cret" not in otlp.endpoint_of(sender) and "***@c:431" in otlp.endpoint_of(sender)
    sender.shutdown()


def test_a_grpc_endpoint_with_a_user_and_password_is_a_configuration_error(monkeypatch):
    # gRPC sends no user info: every export failed resolving "user:s3cret@collector", the password in each failure.
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:s3cret@collector:4317"}
    _standard_variables(monkeypatch, **env)
    with pytest.raises(ValueError) as raised:
        otlp.trace_sender()
    assert "s3cret" not in str(raised.value) and "give them as a header" in str(raised.value)


def test_an_endpoint_that_does_not_parse_is_told_without_its_password(monkeypatch):
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="https://user:s3cret@[::1")
    with pytest.raises(ValueError) as raised:
        otlp.trace_sender()
    assert "s3cret" not in str(raised.value) and "'https://***@[::1'" in str(raised.value)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_senders_wait_as_long_as_the_timeout_says(monkeypatch, protocol):
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_TIMEOUT="2500")
    for sender in (otlp.trace_sender(), otlp.metric_sender()):
        exporter = getattr(sender, "_exporter", sender)
        # OTLP/HTTP keeps it on its client, OTLP/gRPC on the exporter.
        assert getattr(getattr(exporter, "_client", None), "_timeout", None) == 2.5 or exporter._timeout == 2.5
        sender.shutdown()


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten", "'ten' is no number of milliseconds"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "'-5' must be above 0 and at most a day (86,400,000 milliseconds)"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0", "'0' must be above 0"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "1e300", "'1e300' must be above 0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "nan", "'nan' must be above 0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "inf", "'inf' must be above 0"),
    ],
)
def test_a_timeout_no_export_could_keep_is_a_configuration_error_naming_its_variable(monkeypatch, variable, value, why):
    # The SDK took -5 or 1e300 and every export failed; its gRPC exporter failed the start on "ten".
    _standard_variables(monkeypatch, **{variable: value})
    with pytest.raises(ValueError, match=re.escape(f"{variable}={why}")):
        otlp.trace_sender() if "METRICS" not in variable else otlp.metric_sender()


def test_a_grpc_signal_timeout_set_but_empty_is_told_as_what_it_is(monkeypatch):
    # The SDK's gRPC exporter reads it whatever timeout it is given: "could not convert string to float: ''".
    _standard_variables(monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT is set but empty"):
        otlp.trace_sender()


def test_an_exporter_otel_bridge_does_not_speak_is_told_once_for_every_sender(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setattr(otlp_config, "_TOLD", set())
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
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
    monkeypatch.setattr(otlp_config, "_TOLD", set())  # told once per process: each test is a fresh start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="otel_bridge.export"):
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


def test_a_preference_for_exponential_histograms_is_told_once_as_the_bridge_exports_explicit_buckets(
    monkeypatch, caplog
):
    variable = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
    told = _told_making_two(monkeypatch, caplog, otlp.metric_sender, **{variable: "base2_exponential_bucket_histogram"})
    assert told == [
        f"{variable}=base2_exponential_bucket_histogram: otel-bridge exports its histograms with explicit buckets, "
        "from 5 ms to 30 days (workflows sleep for days), which its dashboards and alert rules read"
    ]
    caplog.clear()
    assert _told_making_two(monkeypatch, caplog, otlp.metric_sender, **{variable: "explicit_bucket_histogram"}) == []


def test_a_preference_for_cumulative_metrics_is_what_the_bridge_does_and_is_not_told(monkeypatch, caplog):
    told = _told_making_two(
        monkeypatch, caplog, otlp.metric_sender, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="Cumulative"
    )
    assert told == []


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_failing_metric_export_says_why_as_a_trace_export_does(monkeypatch, request, protocol):
    # The SDK's metric exporter says only that it failed: the bridge's line said "is failing" and no more,
    # the reason left to the gRPC core's own lines on stderr, outside the log (and its JSON).
    receiver = request.getfixturevalue("otlp_http" if protocol == "http/protobuf" else "otlp_grpc")
    _standard_variables(
        monkeypatch, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
    )
    sender = otlp.metric_sender()
    otlp.stop_retrying(sender)
    try:
        assert sender.send(MetricsData(resource_metrics=[])) == otlp.SENT
        receiver.credential = "the-right-one"
        refused = sender.send(MetricsData(resource_metrics=[]))
    finally:
        sender.shutdown()
    assert refused.delivery is otlp.Delivery.RETRY
    assert refused.reason.startswith("HTTP 401" if protocol == "http/protobuf" else "gRPC UNAUTHENTICATED")
    assert refused.reason.endswith(
        "(the backend refuses the bridge, not its data points: check the endpoint and its credentials)"
    )
