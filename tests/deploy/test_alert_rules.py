"""The alert rules the stack loads: promtool checks and unit-tests them; each is documented and tested both ways."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "collector-config" / "prometheus" / "rules.yml"
TESTS = ROOT / "collector-config" / "prometheus" / "rules.test.yml"
ALERTS = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
HEARTBEAT = ROOT / "collector-config" / "prometheus" / "watchdog.yml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with the prometheus package (scripts/test)")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=RULES.parent, timeout=60)


def test_promtool_accepts_the_rules():
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_unit_test_passes():
    result = _promtool("test", "rules", TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_one_test_and_stays_quiet_in_another():
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{alert['alert']} never fires in a test"
        assert any(not case["exp_alerts"] for case in mine), f"{alert['alert']} is never shown quiet"


def _readme_anchors() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    # GitHub's anchors: lower case, punctuation dropped, spaces as hyphens.
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", readme, re.M)}


def test_every_alert_says_what_happened_and_points_to_its_runbook():
    anchors = _readme_anchors()
    for alert in ALERTS:
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        assert annotations["runbook"] == f"README.md#runbook-{alert['alert'].lower()}"
        assert f"runbook-{alert['alert'].lower()}" in anchors, f"README has no runbook section for {alert['alert']}"


def test_the_heartbeat_always_fires_even_with_nothing_scraped():
    # Its unit test evaluates it on no series at all, at once and a month on: a heartbeat that waited for the
    # bridge's metrics would stop when the bridge does, and the dead man's switch would page for BridgeDown.
    assert _promtool("check", "rules", HEARTBEAT.name).returncode == 0
    result = _promtool("test", "rules", "watchdog.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    (group,) = yaml.safe_load(HEARTBEAT.read_text())["groups"]
    (watchdog,) = group["rules"]
    assert (watchdog["alert"], watchdog["expr"], watchdog.get("for")) == ("Watchdog", "vector(1)", None)
    # kube-prometheus's name and label: the routes people already have for theirs take this one.
    assert watchdog["labels"] == {"severity": "none"}


def test_the_heartbeat_says_what_it_is_for_and_points_to_its_runbook():
    (group,) = yaml.safe_load(HEARTBEAT.read_text())["groups"]
    (watchdog,) = group["rules"]
    assert "dead man's switch" in watchdog["annotations"]["description"]
    assert watchdog["annotations"]["runbook"] == "README.md#runbook-watchdog"
    assert "runbook-watchdog" in _readme_anchors()
    assert "Watchdog" not in {alert["alert"] for alert in ALERTS}  # one heartbeat, not a second in rules.yml
