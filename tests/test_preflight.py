"""`otel-bridge check` asks what `serve` would meet, the way `serve` meets it, and says what fails and why.

Every check here talks to the real thing: an OTLP receiver decoding what it is sent (over HTTP and
gRPC), redis-server, the Phase-10 stand-in's WebSocket and timeline API, PostgreSQL, a SQLite file.
"""

import json
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from builders import JobRun, WorkflowRun
from phase10_server import Phase10Server
from pki import PublicCa, make_pki
from runtime_v2_tables import Runtime, reader_of

from otel_bridge import keys
from otel_bridge.cli import main
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.export.otlp import NoSender
from otel_bridge.pipeline import Pipeline
from otel_bridge.preflight import check
from otel_bridge.runtime import Bridge
from otel_bridge.state.hearings import BOOKMARK, Hearings
from otel_bridge.state.sqlite_store import SqliteStore

_CHECKS = (
    "state",
    "names",
    "dead letters",
    "traces",
    "metrics",
    "stream",
    "websocket",
    "timeline API",
    "runtime v2",
    "access",
    "tls",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _findings(settings: Settings) -> dict[str, tuple[bool | None, str]]:
    return {f.what: (f.ok, f.detail) for f in check(settings, timeout_seconds=3)}


@pytest.fixture
def phase10():
    server = Phase10Server().start()
    yield server
    server.close()


def test_a_bridge_whose_every_part_answers_is_told_ok_part_by_part_and_exits_0(
    tmp_path, monkeypatch, otlp, redis_url, phase10, database, capsys
):
    protocol, receiver = otlp
    receiver.credential = "s3cret"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret")  # as serve reads them
    state = tmp_path / "state.db"
    SqliteStore(str(state)).close()
    stream = redis.Redis.from_url(redis_url)
    stream.delete("workflow:events:check")
    stream.xadd("workflow:events:check", {"event_id": "1"})
    stream.xgroup_create("workflow:events:check", "otel-bridge", id="0")
    options = ["--state", str(state), "--stream-url", redis_url, "--stream-key", "workflow:events:check"]
    options += ["--ws-url", phase10.ws_url, "--ws-api-url", phase10.api_url, "--api-key", "producers-key"]
    options += ["--silent-executing", "catalogImport=1h", "--runtime-v2-url", database]
    pki = make_pki(tmp_path)
    options += ["--tls-certfile", pki["bridge.pem"], "--tls-keyfile", pki["bridge.key"]]
    Runtime(psycopg.connect(database, autocommit=True)).start_run(datetime.now(UTC))
    phase10.scripts.put([])  # the engine has nothing to tell the check's connection

    assert main(["check", *options]) == 0

    lines = capsys.readouterr().out.splitlines()
    told = {what: next(line for line in lines if line[6:].startswith(what)) for what in _CHECKS}
    assert all(line.startswith("ok ") for line in lines), lines
    assert f"{state} (SQLite): 0 spans wait for export" in told["state"]
    assert told["names"].endswith(
        "0 workflows and 0 jobs stored; silent_executing names catalogImport, of which the store holds no run"
    )
    assert told["dead letters"].endswith("dead-letter.jsonl, dead-spans.jsonl: writable")
    assert "took an empty export request" in told["traces"] and "took an empty export request" in told["metrics"]
    assert "1 entries; group otel-bridge: 0 read and not acknowledged, 1 not read yet" in told["stream"]
    assert f"{phase10.ws_url}: handshake done" in told["websocket"]
    assert f"{phase10.api_url}: answers" in told["timeline API"]
    assert told["runtime v2"].endswith(
        f"{database}: readable; 1 runs running or waiting; no index on workflow_runs (updated_at): each read scans "
        "the runs (README: Cost)"
    )
    assert told["access"].endswith("api_key in X-API-KEY; /metrics open")
    assert f"{pki['bridge.pem']} serves HTTPS until " in told["tls"]
    assert receiver.received.refused == 0  # the credential was sent as configured, to each signal


def test_a_backend_that_refuses_the_bridges_credential_fails_the_check_naming_the_credential(monkeypatch, otlp):
    protocol, receiver = otlp
    receiver.credential = "s3cret"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer wrong")

    findings = _findings(Settings(state=":memory:"))

    for signal in ("traces", "metrics"):
        ok, detail = findings[signal]
        assert ok is False
        assert ("HTTP 401" if protocol == "http/protobuf" else "gRPC UNAUTHENTICATED") in detail
        assert "check the endpoint and its credentials" in detail


def test_a_backend_that_throttles_is_there_and_told_so_without_failing_the_check(monkeypatch, otlp):
    protocol, receiver = otlp
    receiver.received.asks, receiver.received.throttled_until = 30.0, time.monotonic() + 60
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)

    ok, detail = _findings(Settings(state=":memory:"))["traces"]

    assert ok is True
    assert "throttles the bridge now" in detail and ", the backend asks to wait 30 s;" in detail
    assert ("HTTP 429" if protocol == "http/protobuf" else "gRPC UNAVAILABLE") in detail


def test_a_backend_that_is_not_there_is_told_as_the_connection_refused_not_as_nested_client_errors(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_free_port()}")

    ok, detail = _findings(Settings(state=":memory:"))["traces"]

    assert ok is False
    assert detail.endswith("/v1/traces: cannot connect: [Errno 111] Connection refused")


def test_a_backend_that_takes_the_connection_and_never_answers_fails_within_the_timeout(monkeypatch):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")

        findings = check(Settings(state=":memory:"), timeout_seconds=0.5)

    (traces,) = [f for f in findings if f.what == "traces"]
    assert traces.ok is False and "timed out" in traces.detail


def test_exports_turned_off_and_engines_not_followed_are_not_asked_and_do_not_fail(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")

    assert main(["check", "--state", str(tmp_path / "new.db")]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok ") and "does not exist yet: made at the first start" in lines[0]
    assert [line.split()[0] for line in lines[1:2] + lines[3:]] == ["-"] * 9  # no credential asked, plain HTTP
    assert "OTEL_TRACES_EXPORTER=none" in lines[3] and "OTEL_METRICS_EXPORTER=console" in lines[4]


def test_the_certificate_serve_would_serve_is_loaded_with_its_key_and_its_end_told(tmp_path):
    pki = make_pki(tmp_path)
    served = {"state": ":memory:", "tls_certfile": pki["bridge.pem"], "tls_keyfile": pki["bridge.key"]}
    (tls,) = [f for f in check(Settings(**served)) if f.what == "tls"]
    assert tls.ok and tls.detail.startswith(f"{pki['bridge.pem']} serves HTTPS until ")
    assert tls.detail.endswith(
        "in 1.0 days (BridgeCertificateExpiring warns from two weeks before); a renewed one is taken within 30 s"
    )
    another_key = {**served, "tls_keyfile": pki["backend.key"]}
    (tls,) = [f for f in check(Settings(**another_key)) if f.what == "tls"]
    assert tls.ok is False and tls.detail.startswith(f"cannot use the TLS certificate {pki['bridge.pem']} (key ")
    (tls,) = [f for f in check(Settings(state=":memory:")) if f.what == "tls"]
    assert (tls.ok, tls.detail) == (None, "plain HTTP (tls_certfile)")


def test_a_certificate_served_without_its_intermediate_fails_the_check_saying_what_to_serve(tmp_path):
    ca = PublicCa(tmp_path)
    served = {"state": ":memory:", "tls_keyfile": str(tmp_path / "leaf.key")}
    alone = ca.file("cert.pem", ca.leaf)
    (tls,) = [f for f in check(Settings(**served, tls_certfile=alone)) if f.what == "tls"]
    assert tls.ok is False
    assert tls.detail.startswith(f"the TLS certificate {alone} is served without the certificate of its issuer, CN=R11")
    assert "certbot's fullchain.pem, not cert.pem" in tls.detail
    full = ca.file("fullchain.pem", ca.leaf, ca.r11)
    (tls,) = [f for f in check(Settings(**served, tls_certfile=full)) if f.what == "tls"]
    assert tls.ok and tls.detail.startswith(f"{full} serves HTTPS until ")

    # Made by hand without a subjectAltName: its host named in its CN alone, which no client looks at.
    bare = tmp_path / "bare.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-key", str(tmp_path / "leaf.key"), "-days", "1", "-subj", "/CN=bridge.example.org",
         "-out", str(bare)],
        check=True, capture_output=True,
    )  # fmt: skip
    (tls,) = [f for f in check(Settings(**served, tls_certfile=bare)) if f.what == "tls"]
    assert tls.ok is False and tls.detail.startswith(f"the TLS certificate {bare} names no host in its subjectAltName")


def test_check_answers_json_for_a_deploy_pipeline_with_the_same_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")

    assert main(["check", "--json", "--state", str(tmp_path / "s.db")]) == 1

    told = json.loads(capsys.readouterr().out)
    assert told["ok"] is False
    by_check = {c["check"]: c for c in told["checks"]}
    assert list(by_check) == list(_CHECKS)
    assert by_check["state"]["ok"] is True and by_check["metrics"]["ok"] is None
    assert by_check["traces"]["ok"] is False and "Connection refused" in by_check["traces"]["detail"]


def test_a_state_file_that_cannot_be_made_fails_the_check_one_in_a_folder_to_be_made_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a file where a folder would have to be

    ok, detail = _findings(Settings(state=str(blocked / "state.db")))["state"]
    assert ok is False and detail.endswith("cannot be made: no writable folder to make it in")

    ok, detail = _findings(Settings(state=str(tmp_path / "new" / "folder" / "state.db")))["state"]
    assert ok is True and detail.endswith("does not exist yet: made at the first start")  # serve makes the folders
    assert not (tmp_path / "new").exists()  # the check makes nothing


def test_the_credentials_asked_are_named_by_their_settings_never_their_secrets():
    assert _findings(Settings(state=":memory:"))["access"] == (
        None,
        "open: no credential is asked (api_key, bearer_token, producer_api_keys)",
    )
    guarded = Settings(
        state=":memory:",
        api_key="s3cret-new",
        retiring_api_keys="s3cret-old",
        producer_api_keys="shop=s3cret-shop,billing=s3cret-billing,shop=s3cret-shop2",
        metrics_auth=True,
    )
    ok, detail = _findings(guarded)["access"]
    assert ok is True and "s3cret" not in detail
    assert detail == (
        "api_key in X-API-KEY (and 1 retiring); producer keys of billing, shop; /metrics behind the bridge's own "
        "credential"
    )


def test_names_the_store_holds_nothing_of_are_told_with_the_one_likely_meant(tmp_path):
    # A workflow misspelt in silent_executing: the alert its runs were named for never fires, and nothing said so.
    state = str(tmp_path / "s.db")
    pipeline = Pipeline(SqliteStore(state), MetricsHub(), Settings(state=state))
    pipeline.ingest(
        WorkflowRun("catalogImport").started().events + JobRun("reminderSender", "task").task_scheduled(in_ms=1).events
    )
    pipeline.store.close()
    settings = Settings(
        state=state,
        silent_executing="catalogImprt=1m,*=2h",
        overdue_tasks=["reminderSender", "monthlyClose"],
        cleared_debounces=["*"],
        silent_continuous={"reminderSender": 60},
        expected_producers="shop@prod=1h,shop@production=1h",
    )

    ok, detail = _findings(settings)["names"]

    assert ok is True  # told, not failed: a monthly job may not have run yet
    assert detail.split("; ") == [
        "1 workflows and 1 jobs stored",
        "silent_executing names catalogImprt, of which the store holds no run (did you mean catalogImport?)",
        "overdue_tasks names monthlyClose, of which the store holds no job instance",
        # A producer misspelt: ProducerNotHeard would page for one that does not exist.
        "expected_producers names shop@prod, of which the store holds no run or job instance nor an event heard "
        "(did you mean shop@production?)",
    ]
    assert _findings(Settings(state=state))["names"] == (
        None,
        "no workflow, job or producer named (silent_executing, silent_continuous, overdue_tasks, cleared_debounces, "
        "expected_producers)",
    )
    nowhere = Settings(state=str(tmp_path / "new.db"), overdue_tasks=["reminderSender"])
    assert _findings(nowhere)["names"] == (None, "nothing stored yet to find the names in")


def test_a_producer_whose_runs_were_all_forgotten_is_known_by_its_hearing_and_one_never_heard_by_its_first_day(
    tmp_path,
):
    # Finished runs are forgotten after keep_finished_seconds: a producer healthy all along was told as unknown.
    state = str(tmp_path / "s.db")
    store = SqliteStore(state)
    heard = Hearings({("durable-effect", "production", "shop"): 1_800_000_000.0}, {"ghost@production": 1_800_000_000.0})
    store.set_bookmark(BOOKMARK, heard.encoded())
    store.close()
    settings = Settings(state=state, expected_producers="shop@production=1h,ghost@production=1h")

    ok, detail = _findings(settings)["names"]

    assert ok is True
    assert detail.split("; ") == [
        "0 workflows and 0 jobs stored",
        "expected_producers names ghost@production, of which the store holds no run or job instance nor an event "
        "heard (expected since 2027-01-15 08:00 UTC)",
    ]


def test_a_state_in_memory_is_said_to_be_one_and_what_it_keeps_not():
    ok, detail = _findings(Settings(state=":memory:"))["state"]
    assert ok is True and detail == "in memory (:memory:): kept for this process only, nothing across a restart"


def test_a_dead_letter_place_that_cannot_be_written_fails_the_check_naming_the_setting(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a file where a folder would have to be
    settings = Settings(state=":memory:", span_dead_letter=blocked / "spans" / "dead.jsonl")

    ok, detail = _findings(settings)["dead letters"]

    assert ok is False and detail == f"span_dead_letter {blocked / 'spans' / 'dead.jsonl'} cannot be written"


def test_a_redis_state_that_is_not_there_fails_the_check():
    ok, detail = _findings(Settings(state=f"redis://127.0.0.1:{_free_port()}/0"))["state"]

    assert ok is False and "cannot use the redis state" in detail


def test_a_redis_state_that_answers_says_what_waits_for_export(redis_url):
    ok, detail = _findings(Settings(state=redis_url))["state"]

    assert ok is True and detail.startswith(f"Redis {redis_url}: ") and "spans wait for export" in detail
    # Still fine to serve, but what Redis keeps on disk is said (the tests' servers keep nothing).
    assert "; Redis keeps nothing on disk (appendonly no, no save points)" in detail
    ok, detail = _findings(Settings(state=redis_url, overdue_tasks=["noSuchTaskAnywhere"]))["names"]
    assert ok is True and detail.endswith(
        "overdue_tasks names noSuchTaskAnywhere, of which the store holds no job instance"
    )


def test_which_bridge_sharing_a_redis_state_does_each_task_done_alone_is_named(redis_url):
    # One replica counts the store's gauges, one follows each engine: the one whose log and /readyz to read.
    state = f"{redis_url.rpartition('/')[0]}/11"  # a database of its own: no other test's leases
    redis.Redis.from_url(state).flushdb()
    ws_url = f"ws://127.0.0.1:{_free_port()}/events"
    settings = Settings(state=state, ws_url=ws_url, runtime_v2_url=f"postgresql://127.0.0.1:{_free_port()}/psa")
    counting = Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())
    try:
        assert counting.count_active()  # as its overdue loop asks
        assert counting.store.lease(keys.websocket_lease(ws_url), "web-2-7-1f3a9c0e", 30)

        ok, detail = _findings(settings)["state"]

        assert ok is True
        assert (
            f"the store's counts (open runs, overdue, outbox depth) told by {counting._active_holder} (its lease:"
            in detail
        )
        assert f"the WebSocket {ws_url} followed by web-2-7-1f3a9c0e (its lease: 30 s left)" in detail
        assert "the runtime v2's tables read by no bridge now" in detail
        counting.let_counts_go()  # as it stops
        assert (
            "the store's counts (open runs, overdue, outbox depth) told by no bridge now"
            in _findings(Settings(state=state))["state"][1]
        )
    finally:
        counting.store.close()


def test_a_redis_state_with_fewer_replicas_than_batches_wait_for_fails_the_check(redis_url):
    ok, detail = _findings(Settings(state=redis_url, wait_replicas=1))["state"]

    assert ok is False and detail.endswith(
        "Redis has 0 replicas connected, and batches wait for 1 (wait_replicas): every batch is refused (503)"
        " until enough are"
    )


def test_a_stream_not_published_yet_is_fine_the_bridge_makes_it(redis_url):
    redis.Redis.from_url(redis_url).delete("workflow:events:none-yet")

    ok, detail = _findings(Settings(state=":memory:", stream_url=redis_url, stream_key="workflow:events:none-yet"))[
        "stream"
    ]

    assert ok is True and "no stream yet" in detail


def test_engines_that_are_not_there_fail_the_check_each_with_its_address():
    port = _free_port()
    findings = _findings(
        Settings(
            state=":memory:",
            stream_url=f"redis://127.0.0.1:{port}/0",
            ws_url=f"ws://127.0.0.1:{port}/ws/stream",
            ws_api_url=f"http://127.0.0.1:{port}",
        )
    )

    for what in ("stream", "websocket", "timeline API"):
        ok, detail = findings[what]
        assert ok is False, what
        assert str(port) in detail, what


def test_a_state_file_too_big_to_be_checked_page_by_page_in_time_says_so_and_is_not_failed(tmp_path):
    from faults import open_runs

    open_runs(tmp_path / "state.db", 50)
    settings = Settings(state=str(tmp_path / "state.db"))
    (finding,) = [f for f in check(settings, timeout_seconds=1e-9) if f.what == "state"]
    assert finding.ok is True and "not every page checked for damage within 1e-09 s" in finding.detail
    (finding,) = [f for f in check(settings, timeout_seconds=5) if f.what == "state"]
    assert finding.ok is True and "not every page" not in finding.detail


def test_a_database_without_the_runtimes_tables_fails_the_check_naming_them(database):
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert ok is False
    assert detail.endswith(
        ": no table workflow_runs, workflow_run_steps, workflow_run_waits, workflow_action_invocations, "
        "workflow_run_logs, workflow_definitions here (its search_path)"
    )
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database + "_gone"))["runtime v2"]
    assert ok is False and 'database "' in detail and "does not exist" in detail


def test_the_runtimes_tables_readable_by_another_role_fail_the_check_with_the_grant_it_needs(database):
    import psycopg

    db = psycopg.connect(database, autocommit=True)
    Runtime(db)
    db.execute("DROP ROLE IF EXISTS otel_bridge_check; CREATE ROLE otel_bridge_check LOGIN")
    db.execute("GRANT SELECT ON workflow_runs, workflow_run_steps, workflow_definitions TO otel_bridge_check")
    reader = database.replace("postgresql://postgres@", "postgresql://otel_bridge_check@")
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=reader))["runtime v2"]
    assert ok is False and detail.endswith(
        ": may not read workflow_run_waits, workflow_action_invocations, workflow_run_logs (GRANT SELECT ON "
        "workflow_run_waits, workflow_action_invocations, workflow_run_logs TO otel_bridge_check)"
    )
    db.execute("CREATE INDEX ON workflow_runs (updated_at)")
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert ok is True and detail.endswith(": readable; 0 runs running or waiting"), "indexed as README advises"


def test_the_runs_no_worker_has_begun_are_counted_by_the_check(database):
    import psycopg

    runtime = Runtime(psycopg.connect(database, autocommit=True))
    now = datetime.now(UTC)
    runtime.start_run(now - timedelta(minutes=5), temporal=True)  # launched, and no worker took it
    runtime.step_started(runtime.start_run(now - timedelta(minutes=5)), "root.steps[0]", "lookup", now)
    runtime.start_run(now)  # just launched
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert (
        ok is True
        and ": readable; 3 runs running or waiting, 1 launched over a minute ago that no worker has begun; no index"
        in detail
    )


def test_the_schedules_past_their_next_occurrence_and_the_events_not_delivered_are_counted_and_an_unreadable_table_told(
    database,
):
    import psycopg

    db = psycopg.connect(database, autocommit=True)
    runtime = Runtime(db)
    now = datetime.now(UTC)
    runtime.schedule("Nightly digest", now - timedelta(minutes=10), timedelta(minutes=5))  # due 5 minutes ago
    runtime.schedule("Weekly report", now, timedelta(days=7))
    runtime.schedule_disabled(runtime.schedule("Old report", now, timedelta(days=7)), now)
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert ok is True and (
        "; 2 schedules awaiting their next occurrence, 1 past it by over a minute (their job runner lost them?)"
        in detail
    )
    # The events of the hour, and those not delivered: an event with no correlation key is not one.
    run = runtime.start_run(now)
    runtime.event_taken("TICKET_CREATED", now, started=run)
    runtime.event_taken("TICKET_UPDATED", now, key=None)
    runtime.event_taken("TICKET_CREATED", now, error="Failed to launch Temporal workflow for workflow w: down")
    runtime.event_taken("TICKET_CREATED", now - timedelta(hours=2))
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    said = "1 not delivered (their error_message and workflow_event_launch_skips say why)"
    assert f"; 3 events taken in within the hour, {said}" in detail
    # None within the hour: since when, as its event worker may be down.
    db.execute("UPDATE workflow_runtime_events SET created_at = created_at - interval '3 hours'")
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert "; no event taken in within the hour, the latest 3.0 h ago" in detail
    assert "no index on workflow_runtime_events" not in detail
    db.execute("DROP INDEX idx_workflow_runtime_events_created_at")  # as the runtime's first migration left it
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    assert ok is True and detail.endswith(
        "; no index on workflow_runtime_events (created_at): each read scans the events (CREATE INDEX CONCURRENTLY "
        "ON workflow_runtime_events (created_at))"
    )
    reader = reader_of(database, "otel_bridge_schedules")
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=reader))["runtime v2"]
    assert ok is True and (
        "; may not read tenant_workflow_schedule (GRANT SELECT ON tenant_workflow_schedule TO otel_bridge_schedules)"
        in detail
    )
    assert (
        "; may not read workflow_runtime_events (GRANT SELECT ON workflow_runtime_events TO otel_bridge_schedules)"
        in detail
    )


def test_the_events_not_delivered_are_counted_by_the_workflows_not_launched_as_the_bridge_reads_them(database):
    import psycopg

    db = psycopg.connect(database, autocommit=True)
    runtime = Runtime(db, tenant=str(uuid.uuid4()))
    now, other = datetime.now(UTC), runtime.workflow_id
    run = runtime.start_run(now)
    invalid = (other, "payload_validation_failed", "Payload validation failed using ticket.v1: [...]")
    for name in ("TICKET_CREATED", "TICKET_UPDATED"):  # no error written: not delivered all the same
        runtime.event_taken(name, now, started=run, skipped=[invalid])
    runtime.event_taken("TICKET_CREATED", now, skipped=[(other, "lineage_loop_guard", "Guarded")])  # an error, meant
    runtime.event_taken("TICKET_CREATED", now, skipped=[(other, "launch_failed", "Failed to launch: down")])
    runtime.event_taken("TICKET_CREATED", now, error="Failed to signal Temporal event wait for run x: down",
                        skipped=[(other, "paused", "Workflow is paused")])  # fmt: skip
    runtime.event_taken("TICKET_CREATED", now, error="Payload validation failed for workflow w (w): [...]")  # older
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=database))["runtime v2"]
    said = (
        "5 not delivered (their error_message and workflow_event_launch_skips say why: payload_validation_failed 2, "
        "launch_failed 1)"
    )
    assert f"; 6 events taken in within the hour, {said}" in detail
    # Not a failure, and counted nowhere else: a workflow paused and forgotten misses every event meanwhile.
    assert (
        "; not launched on purpose: ticket-escalation (lineage_loop_guard) for 1 event, "
        "ticket-escalation (paused) for 1 event" in detail
    )
    reader = reader_of(database, "otel_bridge_skips", "workflow_runtime_events")
    ok, detail = _findings(Settings(state=":memory:", runtime_v2_url=reader))["runtime v2"]
    assert (
        ok is True
        and (
            "; 6 events taken in within the hour, 4 not delivered (their error_message says why); may not read "
            "workflow_event_launch_skips (GRANT SELECT ON workflow_event_launch_skips TO otel_bridge_skips)"
        )
        in detail
    )


def test_a_state_file_a_bridge_noted_damaged_is_said_to_be_salvaged_by_the_next_start(tmp_path):
    # Too big for its pages to be read within the timeout, a file a running bridge met damaged looked fine.
    from faults import open_runs

    open_runs(tmp_path / "state.db", 50)
    (tmp_path / "state.db.needs-salvage").write_text("the state file state.db is damaged (malformed) (noted …)\n")
    settings = Settings(state=str(tmp_path / "state.db"))

    (finding,) = [f for f in check(settings, timeout_seconds=1e-9) if f.what == "state"]

    assert finding.ok is True and "not every page checked" in finding.detail
    assert "noted (the state file state.db is damaged (malformed) (noted …)): the next start salvages it" in (
        finding.detail
    )
    (finding,) = [f for f in check(Settings(state=settings.state, salvage_at_start=False), 1e-9) if f.what == "state"]
    assert "noted" not in finding.detail  # a start that will not salvage it


def _state_with_beside(tmp_path, beside: dict[str, bytes]) -> tuple[bool | None, str]:
    """What `check` says of a state file of 50 open runs with these files beside it (by name)."""
    from faults import open_runs

    open_runs(tmp_path / "state.db", 50)
    for name, content in beside.items():
        (tmp_path / name).write_bytes(content)
    return _findings(Settings(state=str(tmp_path / "state.db")))["state"]


def test_the_damaged_copies_salvages_kept_beside_the_state_are_counted_with_their_size(tmp_path):
    # Each as large as the state was: a disk that damages the file again and again fills with them.
    ok, detail = _state_with_beside(
        tmp_path,
        {
            name: b"\0" * size
            for at in ("20261205T010000Z", "20261205T020000Z")
            for name, size in ((f"state.db.damaged-{at}", 2**20), (f"state.db.damaged-{at}-shm", 2**15))
        },
    )

    assert (
        ok is True
        and (
            "2 damaged copies kept beside it by a salvage (2 MiB, the latest state.db.damaged-20261205T020000Z): "
            "delete once the bridge runs well"
        )
        in detail
    )


def test_the_events_a_salvage_left_to_the_next_start_to_take_again_are_said_to_wait(tmp_path):
    # A start that could not take them all again (its log said why) leaves the note for the next one.
    ok, detail = _state_with_beside(tmp_path, {"state.db.take-again": b"salvaged 2026-12-05T05:00:00Z\n"})

    assert ok is True and "the events the damage rejected wait in the dead-letter file for the next start" in detail


def test_a_salvage_cut_short_as_its_fresh_file_took_the_name_is_said_to_be_finished_by_the_next_start(tmp_path):
    ok, detail = _state_with_beside(tmp_path, {"state.db.swapping": b"state.db.damaged-20261205T050000Z\n"})

    assert (
        ok is True and "a salvage was cut short as its fresh file took the name: the next start finishes it" in detail
    )
