"""The alert rules the stack loads: promtool checks and unit-tests them; each is documented and tested both ways.
Two files: the alerts on workflows, jobs and the bridge (rules.yml), and those on the alerting path itself
(alerting-path.yml), each with its unit tests beside it."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_servers import unit_tests_of

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "collector-config" / "prometheus" / "rules.yml"
ALERTING_PATH = ROOT / "collector-config" / "prometheus" / "alerting-path.yml"
FILES = [RULES, ALERTING_PATH]
ALERTS = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
PATH_ALERTS = [rule for group in yaml.safe_load(ALERTING_PATH.read_text())["groups"] for rule in group["rules"]]
UNIT_TESTS = [(rules, tests) for rules in FILES for tests in unit_tests_of(rules)]
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with the prometheus package (scripts/test)")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=RULES.parent, timeout=60)


@pytest.mark.parametrize("rules", FILES, ids=lambda path: path.name)
def test_promtool_accepts_the_rules(rules):
    result = _promtool("check", "rules", rules.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("rules", "tests"), UNIT_TESTS, ids=[tests.name for _, tests in UNIT_TESTS])
def test_every_rule_unit_test_passes(rules, tests):
    result = _promtool("test", "rules", tests.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(tests.read_text())["rule_files"] == [rules.name]


@pytest.mark.parametrize(("rules", "alerts"), [(RULES, ALERTS), (ALERTING_PATH, PATH_ALERTS)], ids=["rules", "path"])
def test_every_alert_fires_in_one_test_and_stays_quiet_in_another(rules, alerts):
    tests = [test for path in unit_tests_of(rules) for test in yaml.safe_load(path.read_text())["tests"]]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in alerts:
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{alert['alert']} never fires in a test"
        if alert["alert"] == "Watchdog":
            continue  # the heartbeat, which is never quiet: its silence is what the dead man's switch tells
        assert any(not case["exp_alerts"] for case in mine), f"{alert['alert']} is never shown quiet"


def _readme_anchors() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    # GitHub's anchors: lower case, punctuation dropped, spaces as hyphens.
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}


def test_every_alert_says_what_happened_and_points_to_its_runbook():
    anchors = _readme_anchors()
    for alert in ALERTS + PATH_ALERTS:
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        assert annotations["runbook"] == f"README.md#runbook-{alert['alert'].lower()}"
        assert f"runbook-{alert['alert'].lower()}" in anchors, f"README has no runbook section for {alert['alert']}"
    assert not {a["alert"] for a in ALERTS} & {a["alert"] for a in PATH_ALERTS}  # each told once


def test_the_heartbeat_always_fires_even_with_nothing_scraped():
    # Its unit test evaluates it on no series at all, at once and a month on: a heartbeat that waited for the
    # bridge's metrics would stop when the bridge does, and the dead man's switch would page for BridgeDown.
    (watchdog,) = [alert for alert in PATH_ALERTS if alert["alert"] == "Watchdog"]
    assert (watchdog["expr"], watchdog.get("for")) == ("vector(1)", None)
    # kube-prometheus's name and label: the routes people already have for theirs take this one.
    assert watchdog["labels"] == {"severity": "none"}
    assert "dead man's switch" in watchdog["annotations"]["description"]
    tests = [test for path in unit_tests_of(ALERTING_PATH) for test in yaml.safe_load(path.read_text())["tests"]]
    (test,) = [t for t in tests if not t["input_series"]]
    assert {case["alertname"] for case in test["alert_rule_test"]} == {"Watchdog"}


def test_the_alerting_path_is_watched_on_the_servers_the_stack_scrapes():
    # Each of its alerts but the heartbeat reads the metrics of Prometheus or the Alertmanager, by the jobs
    # prometheus.yml scrapes them under; kube-prometheus's names, since its stack has these alerts too.
    jobs = {
        job["job_name"]
        for job in yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())["scrape_configs"]
    }
    for alert in PATH_ALERTS:
        if alert["alert"] == "Watchdog":
            continue
        named = set(re.findall(r'job="([^"]+)"', alert["expr"]))
        assert named and named <= jobs & {"prometheus", "alertmanager"}, alert["alert"]
    assert {a["alert"] for a in PATH_ALERTS} == {
        "Watchdog", "AlertmanagerFailedToSendAlerts", "PrometheusRuleFailures", "PrometheusBadConfig",
        "AlertmanagerFailedReload",
    }  # fmt: skip
