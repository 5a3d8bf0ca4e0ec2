"""The stack's Alertmanager (collector-config/alertmanager.yml): amtool accepts it, each alert goes where its
severity says, and a real Alertmanager, fed by a real Prometheus with the stack's rules, groups, routes and
keeps a consequence quiet while its cause fires, as the file says."""

import datetime as dt
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from bridge_process import held_port
from prometheus_servers import alertmanager_server, prometheus_server, stack_rule_files, unit_tests_of

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "collector-config" / "alertmanager.yml"
ALERTMANAGER = yaml.safe_load(CONFIG.read_text())
RULES = ROOT / "collector-config" / "prometheus" / "rules.yml"
ALERTS = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
# The labels each alert fires with, as the rules' unit tests (promtool) expect them.
FIRED = [
    (case["alertname"], expected["exp_labels"])
    for path in unit_tests_of(RULES)
    for test in yaml.safe_load(path.read_text())["tests"]
    for case in test["alert_rule_test"]
    for expected in case["exp_alerts"]
]
ALERTING_PATH = RULES.parent / "alerting-path.yml"
PATH_ALERTS = [rule for group in yaml.safe_load(ALERTING_PATH.read_text())["groups"] for rule in group["rules"]]
HEARTBEAT = {"alertname": "Watchdog", "severity": "none"}  # as alerting-path.yml fires it
# Where an alert goes other than by its severity: the heartbeat to the dead man's switch alone, a failing
# integration through both receivers (the one that works tells of the one that fails).
NOT_BY_SEVERITY = {"Watchdog": "heartbeat", "AlertmanagerFailedToSendAlerts": "page,notify"}
AMTOOL = shutil.which("amtool")
BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL, "the prometheus-alertmanager package is missing: ./scripts/test installs it"
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_amtool_accepts_the_configuration():
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "alert", ALERTS + PATH_ALERTS, ids=lambda alert: f"{alert['alert']}-{alert['labels']['severity']}"
)
def test_every_alert_goes_to_the_receiver_its_severity_says(alert):
    severity = alert["labels"]["severity"]
    expected = NOT_BY_SEVERITY.get(alert["alert"], "page" if severity == "critical" else "notify")
    result = _amtool(
        "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={expected}",
        f"alertname={alert['alert']}", f"severity={severity}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_heartbeat_goes_to_the_dead_mans_switch_and_nowhere_else():
    labels = [f"{name}={value}" for name, value in HEARTBEAT.items()]
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=heartbeat", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    (route,) = [route for route in ALERTMANAGER["route"]["routes"] if route["receiver"] == "heartbeat"]
    assert not route.get("continue")  # a person is never told it fires


def test_no_inhibition_quiets_the_heartbeat():
    # Inhibited, it would stop reaching the switch whenever its source fires: a page for nothing, mid-incident.
    for rule in ALERTMANAGER["inhibit_rules"]:
        wanted = dict(re.fullmatch(r'(\w+)="([^"]*)"', matcher).groups() for matcher in rule["target_matchers"])
        assert not wanted.items() <= HEARTBEAT.items(), rule


def test_each_inhibition_pairs_alerts_that_exist_and_carry_the_labels_it_compares():
    # `equal` on a label one of them lacks holds only while both lack it: the pair would never match.
    def named(matchers: list[str]) -> str | None:
        for matcher in matchers:
            if matcher.startswith("alertname="):
                return matcher.split("=", 1)[1].strip('"')
        return None

    labels_of: dict[str, list[dict[str, str]]] = {}
    for name, labels in FIRED:
        labels_of.setdefault(name, []).append(labels)
    for rule in ALERTMANAGER["inhibit_rules"]:
        source, target = named(rule["source_matchers"]), named(rule["target_matchers"])
        if source is None:  # by severity alone: an alert's critical twin quiets its warning one
            assert target is None and rule["equal"][0] == "alertname"
            continue
        assert source in labels_of and target in labels_of, rule
        for label in rule["equal"]:
            assert all(label in labels for labels in labels_of[source] + labels_of[target]), (rule, label)
    assert any(rule["equal"] == ["instance"] for rule in ALERTMANAGER["inhibit_rules"])


def test_nothing_is_inhibited_across_bridges():
    for rule in ALERTMANAGER["inhibit_rules"]:
        assert "instance" in rule["equal"], rule


class _Webhook:
    """A receiver's webhook on 127.0.0.1: each notification Alertmanager posts, by the receiver it was for."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, receiver: str) -> list[dict[str, Any]]:
        return [alert for to, note in list(self.received) if to == receiver for alert in note["alerts"]]

    def wait_for(self, receiver: str, alertname: str, seconds: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for alert in self.alerts(receiver):
                if alert["labels"]["alertname"] == alertname:
                    return alert
            time.sleep(0.1)
        raise AssertionError(f"{receiver} was not told {alertname}: {self.received}")


@pytest.fixture(scope="module")
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory, webhook) -> Iterator[str]:
    """The stack's Alertmanager, its receivers given a webhook each and its waits cut to a second: the routes,
    groups and inhibitions are the file's own."""
    assert BINARY, "the prometheus-alertmanager package is missing: ./scripts/test installs it"
    workdir = tmp_path_factory.mktemp("alertmanager")
    config = json.loads(json.dumps(ALERTMANAGER))
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": f"{webhook.url}/{receiver['name']}", "send_resolved": False}]
    for route in [config["route"], *config["route"]["routes"]]:
        route["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    # The heartbeat's minute cut to a second, its repeat kept shorter than its interval, as the file has it.
    (heartbeat,) = [route for route in config["route"]["routes"] if route["receiver"] == "heartbeat"]
    heartbeat.update(group_interval="1s", repeat_interval="500ms")
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    server, url = alertmanager_server(BINARY, workdir, webhook.url)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_prometheus_sends_what_the_stacks_rules_fire_to_the_alertmanager_which_pages_for_a_critical_one(
    tmp_path, alertmanager, webhook
):
    binary = shutil.which("prometheus")
    assert binary, "the prometheus package is missing: ./scripts/test installs it"
    down = held_port()  # the bridge Prometheus scrapes is down: BridgeDown, once its 2 minutes are cut
    config = yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    bridge_job = next(job for job in config["scrape_configs"] if job["job_name"] == "otel-bridge")
    bridge_job["static_configs"] = [{"targets": [f"127.0.0.1:{down.getsockname()[1]}"]}]
    config["scrape_configs"] = [bridge_job]
    ((sent_to,),) = [am["static_configs"][0]["targets"] for am in config["alerting"]["alertmanagers"]]
    assert sent_to == "alertmanager:9093"  # the stack's service
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager.removeprefix("http://")]
    # The alerts and the heartbeat, as the stack mounts them.
    config["rule_files"] = [str(_firing_at_once(path, tmp_path)) for path in stack_rule_files()]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    # An alert that fires before Prometheus has found its Alertmanager is sent again a minute later: a second.
    server, _url = prometheus_server(binary, tmp_path, "--rules.alert.resend-delay=1s")
    try:
        alert = webhook.wait_for("page", "BridgeDown", seconds=60)
        heartbeat = webhook.wait_for("heartbeat", "Watchdog", seconds=30)
    finally:
        server.terminate()
        server.wait(10)
        down.close()
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == "otel-bridge"
    assert alert["annotations"]["runbook"] == "README.md#runbook-bridgedown"
    assert "BridgeDown" not in {a["labels"]["alertname"] for a in webhook.alerts("notify")}
    assert heartbeat["labels"] == HEARTBEAT
    assert "Watchdog" not in {a["labels"]["alertname"] for to in ("page", "notify") for a in webhook.alerts(to)}


def _firing_at_once(rules: Path, into: Path) -> Path:
    """The rule file `rules` written in `into`, each alert firing at its first evaluation (no `for`)."""
    written = yaml.safe_load(rules.read_text())
    for group in written["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    (into / rules.name).write_text(yaml.safe_dump(written))
    return into / rules.name


def _post(alertmanager: str, *alerts: dict[str, str]) -> None:
    """Alerts as Prometheus posts them, firing for the next ten minutes."""
    ends = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).isoformat()
    body = [{"labels": labels, "annotations": {"summary": labels["alertname"]}, "endsAt": ends} for labels in alerts]
    httpx.post(f"{alertmanager}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def _states(alertmanager: str, instance: str) -> dict[tuple[str, str], str]:
    listed = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": f'instance="{instance}"'}, timeout=5).json()
    return {(a["labels"]["alertname"], a["labels"]["severity"]): a["status"]["state"] for a in listed}


def test_a_consequence_is_kept_quiet_while_its_cause_fires_on_the_same_bridge_and_not_on_another(alertmanager, webhook):
    a, b = "bridge-a:4380", "bridge-b:4380"
    _post(
        alertmanager,
        {"alertname": "BridgeStuck", "severity": "critical", "instance": a},
        {"alertname": "BridgeSettlingBehind", "severity": "warning", "instance": a},
        {"alertname": "BridgeExportFailing", "severity": "critical", "instance": a, "signal": "traces"},
        {"alertname": "BridgeOutboxGrowing", "severity": "warning", "instance": a},
        {"alertname": "BridgeStateDiskFillingUp", "severity": "critical", "instance": a},
        {"alertname": "BridgeStateDiskFillingUp", "severity": "warning", "instance": a},
        # The same consequences on another bridge, whose causes do not fire: told.
        {"alertname": "BridgeSettlingBehind", "severity": "warning", "instance": b},
        {"alertname": "BridgeOutboxGrowing", "severity": "warning", "instance": b},
        {"alertname": "BridgeStateDiskFillingUp", "severity": "warning", "instance": b},
    )
    webhook.wait_for("page", "BridgeStateDiskFillingUp")
    for name in ("BridgeSettlingBehind", "BridgeOutboxGrowing", "BridgeStateDiskFillingUp"):
        webhook.wait_for("notify", name)
    time.sleep(2)  # a notification the inhibited ones would have had, had they not been: its group's wait

    assert _states(alertmanager, a) == {
        ("BridgeStuck", "critical"): "active",
        ("BridgeExportFailing", "critical"): "active",
        ("BridgeStateDiskFillingUp", "critical"): "active",
        ("BridgeSettlingBehind", "warning"): "suppressed",
        ("BridgeOutboxGrowing", "warning"): "suppressed",
        ("BridgeStateDiskFillingUp", "warning"): "suppressed",
    }
    assert set(_states(alertmanager, b).values()) == {"active"}
    told = [(x["labels"]["alertname"], x["labels"]["instance"]) for x in webhook.alerts("notify")]
    assert {(name, instance) for name, instance in told if instance in (a, b)} == {
        ("BridgeSettlingBehind", b),
        ("BridgeOutboxGrowing", b),
        ("BridgeStateDiskFillingUp", b),
    }


def test_the_alerts_of_one_producer_are_one_notification_and_anothers_another(alertmanager, webhook):
    overdue = [
        {"alertname": "WorkflowRunsOverdue", "severity": "warning", "service_name": service,
         "deployment_environment_name": "prod", "workflow_definition_name": definition}
        for service in ("shop", "billing")
        for definition in ("checkout", "refund", "invoice")
    ]  # fmt: skip
    _post(alertmanager, *overdue)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        notes = [n for to, n in list(webhook.received) if n["groupLabels"].get("alertname") == "WorkflowRunsOverdue"]
        if sum(len(n["alerts"]) for n in notes) >= 6:
            break
        time.sleep(0.1)
    by_service = {n["groupLabels"]["service_name"]: n for n in notes}
    assert len(notes) == 2 and set(by_service) == {"shop", "billing"}
    for service, note in by_service.items():
        definitions = sorted(alert["labels"]["workflow_definition_name"] for alert in note["alerts"])
        assert definitions == ["checkout", "invoice", "refund"], service


def test_the_heartbeat_is_told_again_at_every_tick_while_it_fires(alertmanager, webhook):
    # A dead man's switch pages when the pings stop: one notification, then silence while nothing changes (as
    # any other alert is told), would page it within its period.
    before = len(webhook.received)  # another test's Prometheus may have sent it already
    _post(alertmanager, HEARTBEAT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_heartbeats(webhook, before)) < 3:
        time.sleep(0.1)
    notes = _heartbeats(webhook, before)
    assert len(notes) >= 3, webhook.received
    assert all([alert["labels"] for alert in note["alerts"]] == [HEARTBEAT] for note in notes)


def _heartbeats(webhook: _Webhook, after: int) -> list[dict[str, Any]]:
    return [note for to, note in webhook.received[after:] if to == "heartbeat"]


def test_the_alerting_path_tells_of_a_receiver_that_fails_and_of_a_rule_that_cannot_be_evaluated(
    tmp_path, alertmanager, webhook
):
    """A real Prometheus with the stack's alerting-path rules scrapes itself and a real Alertmanager whose only
    receiver posts where nothing listens; a rule of its own fails at every evaluation."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus package is missing: ./scripts/test installs it"
    nowhere = held_port()
    failing_dir = tmp_path / "failing"
    failing_dir.mkdir()
    broken = {"name": "broken", "webhook_configs": [{"url": f"http://127.0.0.1:{nowhere.getsockname()[1]}/"}]}
    failing_config = {
        "route": {"receiver": "broken", "group_wait": "1s", "group_interval": "1s"},
        "receivers": [broken],
    }
    (failing_dir / "alertmanager.yml").write_text(yaml.safe_dump(failing_config))
    failing, failing_url = alertmanager_server(BINARY, failing_dir, broken["webhook_configs"][0]["url"])

    # Two `up` series on each side of a one-to-one match on nothing: an error at every evaluation.
    failing_rule = {"groups": [{"name": "broken", "rules": [{"alert": "NeverFires", "expr": "up + on() up"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(failing_rule))
    config = yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(_firing_at_once(ALERTING_PATH, tmp_path)), str(tmp_path / "broken.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager.removeprefix("http://")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["alertmanager"]["static_configs"] = [{"targets": [failing_url.removeprefix("http://")]}]
    config["scrape_configs"] = [jobs["prometheus"], jobs["alertmanager"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server, url = prometheus_server(binary, tmp_path, "--rules.alert.resend-delay=1s")
    try:
        # Its own address is known once it runs: told, and the configuration read again (SIGHUP).
        jobs["prometheus"]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        server.send_signal(signal.SIGHUP)
        _post(failing_url, {"alertname": "SomethingToTell", "severity": "warning"})

        failed = webhook.wait_for("page", "AlertmanagerFailedToSendAlerts", seconds=60)
        told = webhook.wait_for("notify", "AlertmanagerFailedToSendAlerts", seconds=10)
        rule_failing = webhook.wait_for("page", "PrometheusRuleFailures", seconds=30)
        # Every series the path's alerts read is there, by the job the stack scrapes it under.
        for name, job in {(n, j) for rule in PATH_ALERTS for n, j in re.findall(r'(\w+)\{job="(\w+)"\}', rule["expr"])}:
            found = httpx.get(f"{url}/api/v1/query", params={"query": f'{name}{{job="{job}"}}'}, timeout=5).json()
            assert found["data"]["result"], f"{name} of {job}"
        # A configuration refused at a reload, each server running the one before: what the reload alerts read.
        (failing_dir / "alertmanager.yml").write_text("route: [")
        httpx.post(f"{failing_url}/-/reload", timeout=5)
        (tmp_path / "prometheus.yml").write_text("scrape_configs: [")
        server.send_signal(signal.SIGHUP)
        for metric in ("alertmanager_config_last_reload_successful", "prometheus_config_last_reload_successful"):
            deadline = time.monotonic() + 30
            while _value(url, metric) != 0.0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _value(url, metric) == 0.0, metric
    finally:
        server.terminate()
        server.wait(10)
        failing.terminate()
        failing.wait(10)
        nowhere.close()
    assert failed["labels"] == told["labels"]
    assert failed["labels"]["integration"] == "webhook" and failed["labels"]["severity"] == "warning"
    assert rule_failing["labels"]["rule_group"] == f"{tmp_path / 'broken.yml'};broken"
    assert rule_failing["labels"]["severity"] == "critical"


def _value(prometheus: str, metric: str) -> float | None:
    """The latest value of `metric`, scraped by the stack's job of that name's server."""
    job = metric.split("_")[0]
    found = httpx.get(f"{prometheus}/api/v1/query", params={"query": f'{metric}{{job="{job}"}}'}, timeout=5).json()
    return float(found["data"]["result"][0]["value"][1]) if found["data"]["result"] else None
