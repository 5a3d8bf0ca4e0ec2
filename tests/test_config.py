"""Settings read from the environment: a variable that is no setting is told, not silently ignored; what a
bridge works with is told at its start, credentials left out."""

import logging

import pytest

from otel_bridge import __version__
from otel_bridge.cli import main
from otel_bridge.config import Settings, unknown_variables
from otel_bridge.export import otlp
from otel_bridge.export.console import ConsoleMetrics
from otel_bridge.runtime import started


def test_a_misspelt_variable_is_told_with_the_one_it_was_likely_meant_as():
    told = unknown_variables({"OTEL_BRIDGE_SETTLE_SECOND": "5", "OTEL_BRIDGE_STAT": "x.db", "PATH": "/bin"})
    assert told == [
        "OTEL_BRIDGE_SETTLE_SECOND is not a setting of otel-bridge and is ignored; "
        "did you mean OTEL_BRIDGE_SETTLE_SECONDS?",
        "OTEL_BRIDGE_STAT is not a setting of otel-bridge and is ignored; did you mean OTEL_BRIDGE_STATE?",
    ]


@pytest.mark.parametrize(
    ("sampler", "told"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "jaeger_remote"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "traceidratio (OTEL_TRACES_SAMPLER_ARG=half)",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "parentbased_traceidratio (OTEL_TRACES_SAMPLER_ARG=2)",
        ),
    ],
)
def test_a_sampler_the_bridge_cannot_follow_is_told_at_start_as_every_run_is_sent(monkeypatch, sampler, told):
    for name, value in sampler.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.trace_sample_ratio == 1.0
    assert settings.told_at_start(sampler) == [
        f"OTEL_TRACES_SAMPLER={told}: otel-bridge follows always_on, always_off and traceidratio with a ratio "
        "from 0 to 1 (and their parentbased_ forms), so it sends every run; set OTEL_BRIDGE_TRACE_SAMPLE_RATIO"
    ]


@pytest.mark.parametrize(
    "sampler",
    ["always_on", "parentbased_always_on", "ALWAYS_ON", "always_off", "traceidratio", "parentbased_traceidratio"],
)
def test_a_sampler_the_bridge_follows_is_not_told_of(monkeypatch, sampler):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    assert Settings().told_at_start({"OTEL_TRACES_SAMPLER": sampler}) == []


def test_a_sampler_is_neither_read_nor_told_of_when_the_ratio_is_given(monkeypatch):
    # By keyword or flag, or by the bridge's own variable.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "xray")
    assert Settings(trace_sample_ratio=0.5).told_at_start({"OTEL_TRACES_SAMPLER": "xray"}) == []
    monkeypatch.setenv("OTEL_BRIDGE_TRACE_SAMPLE_RATIO", "0.5")
    told = Settings().told_at_start({"OTEL_TRACES_SAMPLER": "xray", "OTEL_BRIDGE_TRACE_SAMPLE_RATIO": "0.5"})
    assert told == []


def test_a_variable_like_no_setting_points_at_the_list_of_settings():
    (told,) = unknown_variables({"OTEL_BRIDGE_VERSION_PINNED_BY_OPS": "3"})
    assert told.endswith("is ignored (otel-bridge config lists the settings)")


@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_BRIDGE_SETTLE_SECONDS",
        "otel_bridge_state",  # read regardless of case
        "OTEL_BRIDGE_EXPORT_DELAY_MS",  # and the settings read from a standard variable, under both names
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BRIDGE_METRIC_EXPORT_INTERVAL_MS",
        "OTEL_BRIDGE_ATTRIBUTE_VALUE_LIMIT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ],
)
def test_the_variables_of_settings_are_not_told(variable):
    assert unknown_variables({variable: "1"}) == []


def test_the_attribute_value_limit_is_the_bridges_own_else_the_sdks_for_spans_else_for_every_signal(monkeypatch):
    for name in (
        "OTEL_BRIDGE_ATTRIBUTE_VALUE_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert Settings().attribute_value_limit == 4096
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "300")
    assert Settings().attribute_value_limit == 300
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "200")
    assert Settings().attribute_value_limit == 200
    monkeypatch.setenv("OTEL_BRIDGE_ATTRIBUTE_VALUE_LIMIT", "100")
    assert Settings().attribute_value_limit == 100
    assert Settings(attribute_value_limit=50).attribute_value_limit == 50  # a flag, or a tracker's keyword


@pytest.mark.parametrize(
    ("setting", "own", "sdks", "default"),
    [
        ("max_span_events", "OTEL_BRIDGE_MAX_SPAN_EVENTS", "OTEL_SPAN_EVENT_COUNT_LIMIT", 128),
        ("max_span_links", "OTEL_BRIDGE_MAX_SPAN_LINKS", "OTEL_SPAN_LINK_COUNT_LIMIT", 128),
        ("export_batch_size", "OTEL_BRIDGE_EXPORT_BATCH_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    ],
)
def test_the_spans_limits_and_export_batch_are_the_bridges_own_else_the_sdks(monkeypatch, setting, own, sdks, default):
    for name in (own, sdks):
        monkeypatch.delenv(name, raising=False)
    assert getattr(Settings(), setting) == default  # the specification's default
    monkeypatch.setenv(sdks, "500")
    assert getattr(Settings(), setting) == 500
    monkeypatch.setenv(own, "50")
    assert getattr(Settings(), setting) == 50


def test_the_command_tells_it_before_doing_anything(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OTEL_BRIDGE_STAT", str(tmp_path / "state.db"))  # so the default file is looked for
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert main(["runs"]) == 2
    assert "cannot open the state file otel-bridge.db" in capsys.readouterr().err
    told = "OTEL_BRIDGE_STAT is not a setting of otel-bridge and is ignored; did you mean OTEL_BRIDGE_STATE?"
    assert told in caplog.text


def test_a_trace_url_that_does_not_say_where_the_trace_id_goes_is_a_configuration_error(capsys):
    assert main(["runs", "--trace-url", "http://localhost:16686/trace/"]) == 2
    assert "trace_url: must hold {trace_id}, where the run's trace id goes" in capsys.readouterr().err


def test_the_line_a_started_bridge_logs_names_what_it_works_with_and_no_password():
    settings = Settings(
        state="redis://:s3cret@redis:6379/0",
        stream_url="redis://user:s3cret@redis:6379/1",
        ws_url="ws://engine:8765/ws/stream",
    )
    line = started(settings, otlp.NoSender(), ConsoleMetrics(None), 12, follow=True)
    assert line == (
        f"otel-bridge {__version__} started: state Redis redis://:***@redis:6379/0 (12 spans waiting to be sent); "
        "traces to nowhere (turned off), metrics to stdout (OTLP/JSON); following the Redis stream "
        "workflow:events:global at redis://user:***@redis:6379/1 and the WebSocket ws://engine:8765/ws/stream"
    )
    assert "s3cret" not in started(settings, otlp.NoSender(), otlp.NoSender(), 0, follow=False)


def test_the_start_line_says_while_retiring_credentials_are_still_accepted():
    rotating = Settings(api_key="new", retiring_api_keys="old1,old2", bearer_token="t2", retiring_bearer_tokens="t1")
    line = started(rotating, otlp.NoSender(), otlp.NoSender(), 0, follow=False)
    assert line.endswith("; still accepting 2 retiring api keys and 1 retiring bearer token")
    assert "old1" not in line and "t1" not in line


def test_a_log_level_is_one_of_loggings_in_any_case_and_a_typo_is_a_configuration_error(capsys):
    assert Settings(log_level="debug").log_level == "DEBUG"
    assert main(["serve", "--log-level", "loud"]) == 2
    assert "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'loud'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "url", "told"),
    [
        ("--stream-url", "localhost:6379", "stream_url: must start with redis:// or rediss:// or unix://"),
        ("--ws-url", "http://engine:8080/ws/stream", "ws_url: must start with ws:// or wss://"),
        ("--ws-api-url", "ws://engine:8080", "ws_api_url: must start with http:// or https://"),
    ],
)
def test_an_engine_url_of_the_wrong_kind_is_a_configuration_error_naming_it(capsys, option, url, told):
    # Unchecked, the stream's failed the start-up with a traceback, and the WebSocket's was logged
    # once while the bridge ran on without ever following it.
    assert main(["serve", option, url]) == 2
    assert told in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "url", "told"),
    [
        ("--stream-url", "redis://[::1/0", "stream_url: 'redis://[::1/0' is not a URL: Invalid IPv6 URL"),
        ("--ws-url", "ws://engine:port/ws", "ws_url: 'ws://engine:port/ws' is not a URL: Port could not be cast"),
        ("--ws-api-url", "http://[engine", "ws_api_url: 'http://[engine' is not a URL: Invalid IPv6 URL"),
        ("--state", "redis://:secret@cache:63 79/0", "state: 'redis://:***@cache:63 79/0' is not a URL: Port"),
    ],
)
def test_a_url_that_does_not_parse_is_a_configuration_error_naming_it_and_hiding_its_password(
    capsys, option, url, told
):
    # Unchecked, the stream's and the WebSocket's failed the start-up with a traceback, the state's with
    # a bare "Invalid IPv6 URL".
    assert main(["serve", option, url]) == 2
    err = capsys.readouterr().err
    assert told in err and "secret" not in err


@pytest.mark.parametrize(
    ("variable", "value", "told"),
    [
        ("OTEL_BRIDGE_MAX_OPEN_SECONDS", "1e300", "max_open_seconds: must be at most a century (3,153,600,000 s)"),
        ("OTEL_BRIDGE_GAP_GRACE_SECONDS", "inf", "gap_grace_seconds: Input should be a finite number"),
        ("OTEL_BRIDGE_TRACE_SAMPLE_RATIO", "nan", "trace_sample_ratio: Input should be a finite number"),
        ("OTEL_BRIDGE_DISK_RESERVE_MIB", "1e300", "disk_reserve_mib: Input should be less than or equal to 1048576"),
        (
            "OTEL_BRIDGE_EXPORT_BATCH_SIZE",
            str(10**20),
            "export_batch_size (OTEL_BRIDGE_EXPORT_BATCH_SIZE or OTEL_BSP_MAX_EXPORT_BATCH_SIZE): "
            "Input should be less than or equal to",
        ),
        (
            "OTEL_BRIDGE_METRIC_EXPORT_INTERVAL_MS",
            "1e300",
            "metric_export_interval_ms (OTEL_METRIC_EXPORT_INTERVAL or OTEL_BRIDGE_METRIC_EXPORT_INTERVAL_MS): must be "
            "at most a century",
        ),
    ],
)
def test_a_time_or_size_too_large_to_count_is_a_configuration_error_naming_the_setting(
    capsys, monkeypatch, variable, value, told
):
    # Each failed the start with an OverflowError's traceback (times are counted in nanoseconds beside
    # today's date; SQLite takes a 64-bit LIMIT).
    monkeypatch.setenv(variable, value)
    assert main(["runs"]) == 2
    assert told in capsys.readouterr().err


def test_a_century_is_a_time_a_setting_may_give():
    assert Settings(max_open_seconds=100 * 365 * 86_400, dedup_ttl_seconds="3e9").max_open_seconds == 3_153_600_000


def test_an_error_of_a_setting_read_from_several_variables_names_them_all(capsys, monkeypatch):
    # pydantic named only the first (the standard OTEL_BSP_SCHEDULE_DELAY), whichever variable was given.
    monkeypatch.setenv("OTEL_BRIDGE_EXPORT_DELAY_MS", "soon")
    assert main(["runs"]) == 2
    assert "export_delay_ms (OTEL_BSP_SCHEDULE_DELAY or OTEL_BRIDGE_EXPORT_DELAY_MS): " in capsys.readouterr().err


def test_a_path_without_its_leading_slash_is_the_path_producers_post_to():
    # Every request's path begins with "/": `events` was an endpoint no POST could reach.
    assert Settings(path="events").path == "/events"
    assert Settings(path="").path == "/"


@pytest.mark.parametrize("path", ["/metrics", "/healthz/", "readyz", "/v1/runs", "/v1/jobs/j-1/close"])
def test_a_path_that_is_one_of_the_bridges_own_is_a_configuration_error(capsys, path):
    # `/metrics` took Prometheus's scrape (a GET answered 405).
    assert main(["serve", "--path", path]) == 2
    assert "is one of the bridge's own paths" in capsys.readouterr().err


def test_the_bridges_own_paths_are_every_route_the_app_answers_on():
    from otel_bridge.config import OWN_PATHS
    from otel_bridge.receivers.http import create_app

    app = create_app(lambda events: None, Settings(), metrics=lambda _accept: (b"", "text/plain"), readiness=dict)
    routes = {route.path.split("/{")[0] for route in app.app.routes}
    assert routes == set(OWN_PATHS)


@pytest.mark.parametrize("header", ["X API KEY", "X-API-KEY:", ""])
def test_an_api_key_header_no_request_can_carry_is_a_configuration_error(capsys, header):
    # With an api_key set, every batch was answered 401: no client sends a header named so.
    assert main(["serve", "--api-key-header", header]) == 2
    assert "api_key_header: must be an HTTP header name" in capsys.readouterr().err


def test_a_state_that_is_no_url_is_a_sqlite_file_whatever_it_holds():
    assert Settings(state="runs [2026]:old.db").state == "runs [2026]:old.db"


def test_an_engine_url_names_no_password_when_it_is_refused(capsys):
    assert main(["serve", "--ws-url", "http://user:secret@engine/ws"]) == 2
    err = capsys.readouterr().err
    assert "secret" not in err and "user:***@engine" in err


def test_silences_are_workflow_and_duration_pairs_and_one_that_is_not_is_a_configuration_error(capsys, monkeypatch):
    monkeypatch.setenv("OTEL_BRIDGE_SILENT_EXECUTING", "checkout=15m, *=2h")
    assert Settings().silent_executing == {"checkout": 900.0, "*": 7_200.0}
    assert main(["serve", "--silent-executing", "checkout"]) == 2
    assert "'checkout' is not workflow=duration (comma-separated: checkout=15m,*=2h)" in capsys.readouterr().err
    assert main(["serve", "--silent-executing", "checkout=soon"]) == 2
    assert "'soon' is not a duration of 0 or more" in capsys.readouterr().err
    assert main(["serve", "--silent-continuous", "tokenRefresher=100000d"]) == 2
    assert "'tokenRefresher=100000d': must be at most a century" in capsys.readouterr().err


def test_expected_producers_are_named_as_service_key_at_env_each_with_how_long_it_may_go_without(capsys, monkeypatch):
    monkeypatch.setenv("OTEL_BRIDGE_EXPECTED_PRODUCERS", "billing@production=15m, shop@eu@production=1h")
    assert Settings().expected_producers == {"billing@production": 900.0, "shop@eu@production": 3600.0}
    assert main(["serve", "--expected-producers", "billing=15m"]) == 2
    assert "'billing': name the producer as serviceKey@env (billing@production=15m)" in capsys.readouterr().err
    assert main(["serve", "--expected-producers", "billing@production"]) == 2
    assert "'billing@production' is not serviceKey@env=duration" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'@production': name the producer as serviceKey@env"):
        Settings(expected_producers={"@production": 60})
    with pytest.raises(ValueError, match="'\\*@production': name each producer"):
        Settings(expected_producers={"*@production": 60})


@pytest.mark.parametrize(
    ("setting", "url", "pass_phrase"),
    [
        ("runtime_v2_url", "postgresql://bridge@db/alga?sslmode=verify-full&sslkey={key}", "sslpassword"),
        ("stream_url", "rediss://redis:6380/0?ssl_certfile=cert.pem&ssl_keyfile={key}", "ssl_password"),
    ],
    ids=["libpq", "redis-py"],
)
def test_a_urls_encrypted_key_without_its_pass_phrase_is_refused_with_the_settings(tmp_path, setting, url, pass_phrase):
    # OpenSSL, and libpq, asked for it on the terminal at the first connection (a service started from one waited).
    import subprocess

    from pydantic import ValidationError

    key = tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes256",
         "-pass", "pass:its own", "-out", str(key)],
        check=True, capture_output=True,
    )  # fmt: skip
    given = url.format(key=key)
    with pytest.raises(ValidationError, match=rf"{setting}\n.*its key .*key\.pem is encrypted: .*&{pass_phrase}="):
        Settings(**{setting: given})
    assert getattr(Settings(**{setting: f"{given}&{pass_phrase}=its%20own"}), setting).endswith("its%20own")
