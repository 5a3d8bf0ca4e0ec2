"""What an operator gets wrong at start is said in one line naming it, never a traceback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bridge_process import BridgeProcess, free_port
from builders import WorkflowRun
from faults import broken_page, open_runs, small_filesystem
from redis_server import RedisServer


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", **env}
    environment.setdefault("OTEL_BRIDGE_PORT", str(free_port()))
    return subprocess.run(
        [sys.executable, "-m", "otel_bridge", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("otel-bridge:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_corrupt_state_file(tmp_path):
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    _one_clear_line(_run("serve", "--state", "state.db", cwd=tmp_path), "state.db", "not a SQLite database")
    # Its salvage asked for: it was a traceback.
    _one_clear_line(_run("salvage-state", "--state", "state.db", cwd=tmp_path), "nothing of state.db reads")


def test_a_damaged_state_file_is_named_with_what_to_do_and_salvaged_by_the_command_it_names(tmp_path):
    # A page SQLite cannot read (a disk fault, a copy taken mid-write): the start read every run state and
    # failed with uvicorn's traceback, and so did `runs`. A listing never salvages (it only reads), nor does
    # a start told not to.
    open_runs(tmp_path / "state.db", 300)
    broken_page(tmp_path / "state.db", "state")
    for command in (("serve", "--no-salvage-at-start"), ("runs",)):
        _one_clear_line(_run(*command, "--state", "state.db", cwd=tmp_path), "state.db is damaged", "salvage-state")
    note = tmp_path / "state.db.needs-salvage"
    assert "state.db is damaged" in note.read_text()  # left by the listing, for the next start to salvage
    note.unlink()
    checked = _run("check", "--state", "state.db", cwd=tmp_path)
    assert checked.returncode == 1 and "FAIL  state         state.db (SQLite) is damaged" in checked.stdout
    assert note.exists()  # and by `check`

    salvaged = _run("salvage-state", "--state", "state.db", cwd=tmp_path)

    assert salvaged.returncode == 0, salvaged.stderr
    assert "broken pages met in: state" in salvaged.stdout and "state.db.damaged-" in salvaged.stdout
    assert not note.exists()
    listed = _run("runs", "--state", "state.db", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and 290 <= len(json.loads(listed.stdout)) < 300, listed.stderr


def test_serve_salvages_a_damaged_state_file_before_it_serves_and_goes_on_with_what_reads(tmp_path):
    runs = open_runs(tmp_path / "state.db", 300)
    broken_page(tmp_path / "state.db", "state")
    bridge = BridgeProcess(tmp_path, "http://127.0.0.1:9", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    try:
        bridge.start()
        listed = bridge.client.get(f"{bridge.url}/v1/runs").json()["count"]
        answer = bridge.post(runs[0].step_completed("pay").completed().events[-2:])
        assert bridge.stop()
    finally:
        bridge.close()
    assert 290 <= listed < 300 and answer.status_code == 200, answer.text
    log = bridge.log.read_text()
    assert "salvaging it before the bridge starts" in log and "the state file" in log and "is salvaged" in log
    assert "Traceback" not in log and len(list(tmp_path.glob("state.db.damaged-*[0-9Z]"))) == 1


def test_a_state_that_names_a_directory(tmp_path):
    # It said "unable to open database file (is its directory writable by this user?)".
    (tmp_path / "data").mkdir()
    _one_clear_line(_run("serve", "--state", "data", cwd=tmp_path), "data: it is a directory", "data/otel-bridge.db")
    # One not made yet, named as a directory: "No such file or directory: 'later/.lock'".
    _one_clear_line(_run("serve", "--state", "later/", cwd=tmp_path), "it is a directory", "later/otel-bridge.db")


def test_a_dead_letter_file_that_names_a_directory(tmp_path):
    (tmp_path / "letters").mkdir()  # it was said to be read-only
    result = _run("serve", "--state", ":memory:", "--dead-letter", "letters", cwd=tmp_path)
    _one_clear_line(result, "letters: it is a directory; set dead_letter (--dead-letter, OTEL_BRIDGE_DEAD_LETTER)")


def test_a_state_directory_that_cannot_be_written(tmp_path):
    # /proc refuses new files even to root, as a read-only mount does.
    _one_clear_line(_run("serve", "--state", "/proc/otel-bridge/state.db", cwd=tmp_path), "/proc/otel-bridge")


def test_an_unreachable_redis(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    _one_clear_line(_run("serve", "--state", url, cwd=tmp_path), "redis", str(url.split(":")[2].split("/")[0]))


def test_a_redis_that_refuses_the_password(tmp_path):
    server = RedisServer(None, "--requirepass", "right").start()
    try:
        result = _run("serve", "--state", f"redis://:wrong@127.0.0.1:{server.port}/0", cwd=tmp_path)
    finally:
        server.close()
    _one_clear_line(result, "redis")
    assert "wrong" not in result.stderr  # the password is not printed


def test_a_port_another_server_listens_on_is_named_before_the_state_is_opened(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _run("serve", "--state", "state.db", cwd=tmp_path, OTEL_BRIDGE_PORT=str(port))
    _one_clear_line(result, f"127.0.0.1:{port}", "in use")
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--tls-certfile", "cert.pem", "--tls-keyfile", "key.pem"], ["cert.pem", "key.pem", "No such file"]),
        (["--tls-certfile", "junk.pem"], ["junk.pem", "not a PEM certificate"]),
        (["--tls-keyfile", "junk.pem"], ["tls_keyfile", "without tls_certfile"]),  # would serve plain HTTP
    ],
    ids=["missing", "not-pem", "key-alone"],
)
def test_a_tls_certificate_the_server_cannot_use_is_named_before_the_state_is_opened(tmp_path, options, words):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    _one_clear_line(_run("serve", "--state", "state.db", *options, cwd=tmp_path), *words)
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("password", [None, "not its"], ids=["no pass phrase", "another pass phrase"])
def test_an_encrypted_key_without_its_pass_phrase_is_named_before_the_state_is_opened(tmp_path, password):
    # OpenSSL asked for it on the terminal (a service started from one waited there), else "Invalid argument".
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=127.0.0.1", "-passout",
         "pass:its own", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    options = ["--tls-certfile", "cert.pem", "--tls-keyfile", "key.pem"]
    given = {"OTEL_BRIDGE_TLS_KEYFILE_PASSWORD": password} if password else {}
    said = "is encrypted: give its pass phrase (tls_keyfile_password" if password is None else "is not its"
    _one_clear_line(_run("serve", "--state", "state.db", *options, cwd=tmp_path, **given), "key.pem", said)
    assert not (tmp_path / "state.db").exists()


def test_an_empty_api_key_refuses_to_start_instead_of_turning_auth_off(tmp_path):
    _one_clear_line(_run("serve", cwd=tmp_path, OTEL_BRIDGE_API_KEY=""), "api_key", "empty")


def test_a_missing_replay_file(tmp_path):
    _one_clear_line(_run("replay", "nowhere.jsonl", "--no-progress", cwd=tmp_path), "nowhere.jsonl", "no such file")


@pytest.mark.parametrize("command", [["replay", "--no-progress"], ["resend-spans"], ["import-timeline"]])
def test_a_directory_given_for_a_file_is_named_as_one(tmp_path, command):
    (tmp_path / "history").mkdir()
    _one_clear_line(_run(*command, "history", cwd=tmp_path), "history", "a directory, not a file")


def test_a_replay_file_starting_with_a_bom_is_read(tmp_path):
    run = WorkflowRun().started().step_started("a").after(1).step_completed("a").completed()
    text = "\n".join(json.dumps(e) for e in run.events)
    (tmp_path / "events.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = _run("replay", "events.jsonl", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accepted: 4" in result.stdout and "rejected: 0" in result.stdout


def test_a_second_bridge_on_the_same_sqlite_file_refuses_naming_the_first(tmp_path, otlp_http):
    first = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        result = _run("serve", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
        assert first.proc is not None
        _one_clear_line(result, "in use by another otel-bridge", f"pid {first.proc.pid}")
        assert first.post(WorkflowRun().started().events).status_code == 200  # the first one goes on
        # Importing history beside it is told how: a state of its own.
        (tmp_path / "timeline.json").write_text("{}")
        imported = _run("import-timeline", "timeline.json", "--state", str(tmp_path / "state.db"), cwd=tmp_path)
        _one_clear_line(imported, "in use by another otel-bridge", "give this command a state of its own (--state")
    finally:
        first.close()


@pytest.mark.parametrize("sent", [10, 0])
def test_a_client_that_disconnects_mid_body_is_a_debug_line_not_an_error(tmp_path, otlp_http, sent):
    bridge = BridgeProcess(tmp_path, otlp_http.endpoint).start()
    try:
        with socket.create_connection(("127.0.0.1", bridge.port)) as sock:
            head = (
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            sock.sendall(head + b"{" * sent)
        assert bridge.post(WorkflowRun().started().events).status_code == 200
    finally:
        bridge.close()
    log = bridge.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.mark.parametrize(
    ("setting", "flag"), [("dead_letter", "--span-dead-letter"), ("span_dead_letter", "--dead-letter")]
)
def test_a_dead_letter_file_in_a_read_only_working_directory(tmp_path, setting, flag):
    # A container's read-only root: the files are made at the first dead letter, and each was lost
    # then, with a traceback on stderr; the bridge had started as if all was well.
    with small_filesystem(tmp_path / "ro", 1, read_only=True) as read_only:
        result = _run("serve", "--state", str(tmp_path / "s.db"), flag, str(tmp_path / "other.jsonl"), cwd=read_only)
    _one_clear_line(result, "cannot write the dead-letter file", setting, "OTEL_BRIDGE_" + setting.upper())
