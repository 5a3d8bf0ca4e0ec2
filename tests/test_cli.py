"""The command: its process is tuned for being the bridge (an application using the library keeps its own),
and it says its version."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest
from builders import JobRun, WorkflowRun, iso, ns_of
from otlp_receiver import OtlpHttpReceiver

from otel_bridge.cli import _listening, main
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.terminal import abbreviated, duration

_REPORT = "import gc; print(gc.get_threshold(), gc.get_freeze_count() > 0)"


def _python(code: str, **env: str) -> str:
    command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | env).stdout.strip()


def test_the_bridges_own_process_freezes_start_up_and_collects_the_young_generation_less_often():
    assert _python(f"from otel_bridge.cli import own_process_gc; own_process_gc(); {_REPORT}") == "(10000, 20, 50) True"


def test_an_application_with_the_in_process_tracker_keeps_its_garbage_collection():
    code = f"""
from otel_bridge.tracker import OtelTracker
with OtelTracker("production", "shop", flush_interval_seconds=None):
    pass
{_REPORT}"""
    backend = OtlpHttpReceiver()  # its metrics go somewhere at close, at once
    try:
        otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": backend.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        reported = _python(code, **otlp)
    finally:
        backend.close()
    assert reported == _python(_REPORT)  # the interpreter's own: (700, 10, 10) up to 3.12, (2000, 10, 10) on 3.13


def test_the_command_says_which_version_it_is(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"otel-bridge {version('otel-bridge')}"


@pytest.mark.parametrize("command", ["serve", "replay", "runs", "jobs", "show", "settle-again", "check"])
def test_a_commands_help_puts_its_own_arguments_first_and_the_settings_apart(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage, _, rest = capsys.readouterr().out.partition("\n\n")
    assert usage.endswith("[--SETTING VALUE ...]")
    assert "--state" not in usage  # seventy settings no longer bury the command's own arguments
    own, _, settings = rest.partition("\nsettings:\n")
    assert "--help" in own and "--state" not in own
    assert "--state STATE" in settings and "--trace-url TRACE_URL" in settings


def test_a_setting_given_as_a_flag_is_still_taken_after_the_commands_own_arguments(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["runs", "--json", "--state", str(missing)]) == 2
    assert f"no state file at {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["runs"], ["jobs"], ["show", "abcdef"]])
def test_a_state_in_memory_is_said_to_be_the_running_bridges_alone_not_a_file_missing(command, capsys):
    # It read "cannot open the state file :memory:: no state file at :memory:".
    assert main([*command, "--state", ":memory:"]) == 2
    said = capsys.readouterr().err.strip()
    assert said == "otel-bridge: the state is in memory (:memory:), the running bridge's alone: nothing on disk to read"


def test_runs_says_in_words_that_there_are_none_instead_of_drawing_an_empty_table(tmp_path, capsys):
    state = tmp_path / "state.db"
    SqliteStore(str(state)).close()
    assert main(["runs", "--state", str(state), "--overdue", "--service", "[billing]"]) == 0
    assert capsys.readouterr().out.strip() == "no overdue runs of [billing]"


def test_runs_and_jobs_piped_keep_each_cell_whole_on_its_line_however_wide(tmp_path, capsys):
    # At 200 columns a traceparent was folded over two lines: grep found half, a paste took half.
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    name = "reconcileEveryLedgerOfEveryTenantInEveryRegionBeforeTheMonthCloses"
    run = WorkflowRun(name, execution_id="ledger-close-2026-11").started().step_started("sumAllTheEntriesOfTheMonth")
    job = JobRun("aDigestMailerWithAVeryLongNameIndeed", "debounce").debounce_started(flush_in_ms=1000)
    pipeline.ingest(run.events + job.events)
    pipeline.store.close()

    assert main(["runs", "--state", state]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if name in line]
    assert len(re.findall(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", row)) == 1  # whole, on the row's line
    assert row.count("│") == 12 and "ledger-close-2026-11" in row
    assert main(["jobs", "--state", state]) == 0
    assert any("aDigestMailerWithAVeryLongNameIndeed" in line for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize("limit", ["-1", "ten"])
def test_runs_takes_a_limit_of_zero_or_more_as_get_v1_runs_does(limit, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["runs", "--limit", limit])
    assert exited.value.code == 2
    assert "--limit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "told"),
    [
        # Taken as it was, every POST failed and each batch went through the tracker's retries first.
        (["--url", "127.0.0.1:4380"], "--url '127.0.0.1:4380' is not an http:// or https:// URL"),
        (["--header", "X-API-KEY"], "--header 'X-API-KEY' is not NAME=VALUE"),  # was a traceback
        (["--url", "http://[::1"], "--url 'http://[::1' names no bridge to post to: Invalid IPv6 URL"),  # likewise
    ],
)
def test_the_demo_says_at_once_what_is_wrong_with_its_options(capsys, options, told):
    assert main(["demo", *options, "--duration", "1"]) == 2
    assert told in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "told"),
    [
        (["demo", "--rate", "0"], "--rate: must be above 0"),  # was a ZeroDivisionError
        (["demo", "--rate", "nan"], "--rate: must be above 0"),
        (["demo", "--duration", "-5"], "--duration: must be 0 or more"),  # ran nothing and said nothing
        (["demo", "--ws-port", "99999"], "--ws-port: must be a port from 1 to 65535"),  # a thread's traceback
        (["close", "x", "--timeout", "-1"], "--timeout: must be above 0"),  # "Timeout value out of range"
        (["check", "--timeout", "inf"], "--timeout: must be above 0 and at most 86,400"),
        # A traceparent printed for a run the bridge would reject: the id of a trace that will never exist.
        (["trace-id", "--env", "p", "--service", "s", "--workflow-id", "w\x1f"], "--workflow-id: 'w\\x1f' is none"),
        (["trace-id", "--env", "p", "--service", "s", "--workflow-id", ""], "--workflow-id: must not be empty"),
        (["trace-id", "--env", "p", "--service", "s", "--workflow-id", "w", "--step", "a", "--attempt", "-1"],
         "--attempt: must be 0 or more"),
    ],
)  # fmt: skip
def test_a_value_a_command_cannot_work_with_is_refused_naming_its_flag(capsys, argv, told):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert told in capsys.readouterr().err


def test_jobs_lists_the_instances_that_await_a_run_with_how_late_the_missed_ones_are(tmp_path, capsys):
    state = str(tmp_path / "state.db")
    settings = Settings(state=state, overdue_tasks=["reminder"])  # the bridge's; the commands below have none
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), settings)
    missed = JobRun("reminder", "task").task_scheduled(in_ms=60_000)  # in 2025: long past
    pipeline.ingest(missed.events)
    pipeline.store.close()

    assert main(["jobs", "--state", state, "--overdue"]) == 0
    table = capsys.readouterr().out
    assert "1 overdue job instance" in table and abbreviated(missed.base["instanceId"]) in table and " d " in table
    assert main(["jobs", "--state", state, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["job_type"], listed["active"]) == ("reminder", "task", False)
    assert listed["due"] == iso(datetime.fromtimestamp(ns_of(missed.events[0]) / 1e9 + 60, UTC))
    assert listed["overdue_seconds"] > 0
    assert main(["jobs", "--state", state, "--service", "elsewhere"]) == 0
    assert capsys.readouterr().out.strip() == "no job instances of elsewhere"
    # An instance id given to `show` (pasted from a job's logs) is told for what it is, not "no run".
    assert main(["show", missed.base["instanceId"], "--state", state]) == 0
    shown = capsys.readouterr().out
    assert "is a job instance: its runs are metrics, not a trace" in shown and "reminder" in shown


def test_jobs_failing_lists_those_whose_latest_run_failed_with_why_whatever_they_await(tmp_path, capsys):
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    # A task not scheduled again awaits nothing (as the runtime v2's events, each a run when one comes).
    failed = JobRun("sendInvoice", "task").failed(1, will_retry=False)
    failed.events[-1]["error"] = {"message": "SMTP 451: mailbox unavailable"}
    pipeline.ingest(failed.events)
    pipeline.store.close()

    assert main(["jobs", "--state", state]) == 0
    assert capsys.readouterr().out.strip() == "no job instances"
    assert main(["jobs", "--state", state, "--failing"]) == 0
    table = capsys.readouterr().out
    assert "1 failing job instance" in table and "sendInvoice" in table and "mailbox unavailable" in table
    assert main(["jobs", "--state", state, "--failing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["last_failure"] == "SMTP 451: mailbox unavailable"


def test_show_and_jobs_tell_and_take_the_applications_own_id(tmp_path, capsys):
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    order = WorkflowRun("checkout", execution_id="order-42").started().step_started("pay").after(30)
    digest = JobRun("digestMailer", "debounce", job_id="digest-user-7").debounce_started(flush_in_ms=60_000)
    pipeline.ingest(order.step_completed("pay").events + digest.events)
    pipeline.store.close()

    assert main(["show", "order-42", "--state", state]) == 0
    shown = capsys.readouterr().out
    assert f"{order.workflow_id} (order-42)" in shown and "step pay #1" in shown
    assert main(["jobs", "--state", state]) == 0
    assert "digest-user-7" in capsys.readouterr().out
    assert main(["jobs", "--state", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["correlation_id"] == "digest-user-7"
    assert main(["show", "digest-user-7", "--state", state]) == 0
    assert abbreviated(digest.base["instanceId"]) in capsys.readouterr().out


def test_show_takes_the_beginning_of_an_id_as_runs_lists_it_and_says_when_it_names_several(tmp_path, capsys):
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    first, second = "ab12cd34ef56" + "0" * 52, "ab12cd99ef56" + "1" * 52
    for object_id in (first, second):
        pipeline.ingest(WorkflowRun("checkout", workflow_id=object_id).started().step_started("pay").events)
    pipeline.store.close()

    assert main(["runs", "--state", state]) == 0
    assert "ab12cd34ef56…" in capsys.readouterr().out
    assert main(["show", "ab12cd34ef56…".rstrip("…"), "--state", state]) == 0
    assert first in capsys.readouterr().out  # the waterfall names it whole
    assert main(["show", "ab12cd", "--state", state]) == 2
    told = capsys.readouterr().err
    assert "ab12cd begins the ids of 2 runs" in told and first in told and "give more of it" in told
    assert main(["show", "ab12c", "--state", state]) == 2
    assert "an id is taken by its beginning from 6 characters on" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["show", ""], ["close", "wf-1", "", "--url", "http://127.0.0.1:9"]])
def test_an_empty_id_is_refused_naming_it_before_anything_is_asked(tmp_path, capsys, command):
    # It was "no run  in otel-bridge.db", or a close asked of a bridge that may not be running.
    with pytest.raises(SystemExit) as exited:
        main([*command, "--state", str(tmp_path / "s.db")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "must not be empty" in err, err


@pytest.mark.parametrize(
    ("given", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 259_200), ("5400", 5400)]
)
def test_silent_for_takes_a_duration_as_a_person_writes_it(tmp_path, capsys, given, seconds):
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    pipeline.ingest(WorkflowRun("export").started().step_started("upload").events)  # in 2025: long silent
    pipeline.store.close()
    assert main(["runs", "--state", state, "--run-state", "executing", "--silent-for", given]) == 0
    assert f"1 executing run silent for {duration(seconds)} or more" in capsys.readouterr().out


@pytest.mark.parametrize("given", ["soon", "-5m", "infs", "nan"])
def test_a_silence_that_is_no_duration_is_refused_naming_it(tmp_path, capsys, given):
    with pytest.raises(SystemExit) as exited:
        main(["runs", "--state", str(tmp_path / "s.db"), f"--silent-for={given}"])
    assert exited.value.code == 2 and "--silent-for" in capsys.readouterr().err


def test_trace_id_of_what_looks_like_the_beginning_of_an_object_id_says_it_is_of_that_id_exactly(capsys):
    # `runs` shows a Durable Object's id by its first twelve characters: pasted here, it names another trace.
    assert main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", "47e1aff6d17e"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("00-") and "looks like the beginning of a Durable Object's id" in err
    whole = "47e1aff6d17e" + "0" * 52
    assert main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", whole]) == 0
    assert capsys.readouterr().err == ""


def test_the_text_log_of_a_command_shows_what_producers_sent_with_its_control_characters_escaped():
    said = (
        "from otel_bridge.cli import _logging; import logging; _logging('INFO');"
        "logging.getLogger('otel_bridge.pipeline').warning('late event %s: counted', 'e-1\\nINFO forged\\x1b[2J')"
    )
    written = subprocess.run([sys.executable, "-c", said], capture_output=True, text=True, check=True).stderr
    assert written.count("\n") == 1 and "late event e-1\\x0aINFO forged\\x1b[2J: counted" in written


def test_a_pipe_or_device_given_to_replay_is_told_as_such_and_standard_input_named(tmp_path, capsys):
    # It was told "no such file": a process substitution (`<(zcat events.gz)`) is a pipe that exists.
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    assert main(["replay", str(fifo), "--state", str(tmp_path / "s.db")]) == 2
    assert "not a regular file (`-` reads standard input)" in capsys.readouterr().err
    assert main(["resend-spans", "/dev/null", "--state", str(tmp_path / "s.db")]) == 2
    assert "cannot resend /dev/null: not a regular file\n" in capsys.readouterr().err


def _reached(listener, address: str) -> bool:
    listener.listen()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        return client.connect_ex((address, listener.getsockname()[1])) == 0


def test_listening_on_double_colon_takes_ipv6_and_ipv4_alike():
    # A dual-stack cluster reaches a pod at either address: `::` took IPv6 alone.
    (listener,) = _listening("::", 0)
    with listener:
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert _reached(listener, "::1") and _reached(listener, "127.0.0.1")


def test_listening_on_no_host_binds_every_address_of_both_families_one_socket_each():
    listeners = _listening("", 0)  # it was "cannot listen on :4380: Name or service not known"
    try:
        assert {s.family for s in listeners} == {socket.AF_INET, socket.AF_INET6}
        six = next(s for s in listeners if s.family == socket.AF_INET6)
        assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1  # IPv4 is the other's
    finally:
        for listener in listeners:
            listener.close()


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ([], "k-from-the-settings"),  # was: every POST 401, each batch retried and dropped
        (["--header", "x-api-key=shop-key"], "shop-key"),  # a producer's own key, whatever its case
    ],
)
def test_the_demo_posts_with_the_credential_the_settings_give_unless_one_is_given(monkeypatch, capsys, given, sent):
    keys: list[str | None] = []

    class Bridge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            keys.extend(self.headers.get_all("X-API-KEY") or [None])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bridge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_BRIDGE_API_KEY", "k-from-the-settings")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["demo", "--url", url, "--duration", "0.5", "--rate", "4", "--seed", "1", *given]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert keys and set(keys) == {sent}
    assert '"dropped_events": 0' in capsys.readouterr().out


# It read "Expecting value: line 1 column 1 (char 0)" (200), or printed the whole page (an error).
@pytest.mark.parametrize("status", [200, 404])
@pytest.mark.parametrize("command", [["runs"], ["jobs"], ["close", "wf-1"]])
def test_another_server_at_the_url_is_said_to_be_no_bridge_in_one_line(capsys, command, status):
    class Elsewhere(BaseHTTPRequestHandler):
        def answer(self) -> None:
            page = b"<!DOCTYPE html>\n<html><body>Welcome to someone else's server</body></html>\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert main([*command, "--url", f"http://127.0.0.1:{server.server_address[1]}"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    (line,) = capsys.readouterr().err.splitlines()
    assert f"answered {status}" in line and "not an otel-bridge's" in line and "does --url name the bridge" in line


def test_a_bridge_behind_a_certificate_the_machine_does_not_trust_is_said_with_how_to_trust_it(tmp_path, capsys):
    import ssl

    from pki import make_pki

    pki = make_pki(tmp_path)

    class Bridge(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Bridge)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki["backend.pem"], pki["backend.key"])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert main(["runs", "--url", f"https://127.0.0.1:{server.server_address[1]}"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    (line,) = capsys.readouterr().err.splitlines()
    assert "CERTIFICATE_VERIFY_FAILED" in line and line.endswith(
        "trust the CA that signed it: SSL_CERT_FILE=/path/ca.pem"
    )


def test_a_listing_whose_reader_went_away_stops_quietly_as_one_its_pipes_sigpipe_ends(tmp_path):
    # `otel-bridge runs | head` said "otel-bridge: Broken pipe", and exited 2 as if it had failed.
    listing = subprocess.Popen(
        [sys.executable, "-m", "otel_bridge", "config"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # the reader gone before it writes
    assert listing.wait(timeout=30) == 141  # 128 + SIGPIPE, what a shell reports of one SIGPIPE ended
    assert listing.stderr.read() == b""


def test_show_says_an_open_run_is_overdue_as_its_row_in_runs_does(tmp_path, capsys):
    state = str(tmp_path / "state.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    lost = WorkflowRun("nightly").started().sleep_started(60_000).paused("sleep", resume_in_ms=60_000)  # 2025
    awake = WorkflowRun("nightly", start=datetime.now(UTC)).started().step_started("a")
    pipeline.ingest(lost.events + awake.events)
    pipeline.store.close()

    assert main(["show", lost.workflow_id, "--state", state]) == 0
    assert "paused, overdue by " in capsys.readouterr().out
    assert main(["show", awake.workflow_id, "--state", state]) == 0
    assert "overdue" not in capsys.readouterr().out


def test_openapi_prints_the_document_a_bridge_of_these_settings_serves(capsys, monkeypatch):
    from otel_bridge.receivers.http_contract import openapi

    monkeypatch.setenv("OTEL_BRIDGE_API_KEY", "k")
    assert main(["openapi", "--path", "/ingest"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(openapi(Settings(path="/ingest", api_key="k"))))
    assert "/ingest" in printed["paths"] and printed["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-KEY"
