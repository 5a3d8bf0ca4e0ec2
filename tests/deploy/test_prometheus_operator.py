"""kubernetes/prometheus-operator.yaml: the stack's alert rules and the bridge's scrape, for a Prometheus the
Prometheus Operator runs. No cluster and no operator here: the rules it carries are the stack's own, checked
by promtool as Prometheus loads them, and its ServiceMonitor is checked against the Service it must find."""

import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "kubernetes" / "prometheus-operator.yaml"
MONITOR, RULE = yaml.safe_load_all(MANIFEST.read_text())
SERVICE, _ = yaml.safe_load_all((ROOT / "kubernetes" / "otel-bridge.yaml").read_text())
STACK_RULES = yaml.safe_load((ROOT / "collector-config" / "prometheus" / "rules.yml").read_text())


def test_the_file_is_what_its_script_writes_from_the_stacks_rules():
    # Edited by hand, the two would drift: an alert mended in the compose stack and not in the cluster.
    script = runpy.run_path(str(ROOT / "scripts" / "build_prometheus_rule.py"))
    assert MANIFEST.read_text() == script["render"](), "run scripts/build_prometheus_rule.py"


def test_the_prometheus_rule_carries_every_alert_of_the_stack_as_it_is():
    assert (RULE["apiVersion"], RULE["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert RULE["spec"] == STACK_RULES


def test_promtool_accepts_the_rules_it_carries(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the prometheus package (scripts/test installs it)"
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(RULE["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in RULE['spec']['groups'])} rules found" in result.stdout


def test_the_service_monitor_scrapes_the_bridges_service_under_the_job_the_alerts_name():
    assert (MONITOR["apiVersion"], MONITOR["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    selected = MONITOR["spec"]["selector"]["matchLabels"]
    assert selected.items() <= SERVICE["metadata"]["labels"].items()
    (endpoint,) = MONITOR["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in SERVICE["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The operator names the scrape's job after the Service (no jobLabel): BridgeDown's `up{job=…}`.
    assert "jobLabel" not in MONITOR["spec"]
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', (ROOT / "collector-config" / "prometheus" / "rules.yml").read_text()))
    assert jobs == {SERVICE["metadata"]["name"]}


@pytest.mark.parametrize("document", [MONITOR, RULE], ids=["ServiceMonitor", "PrometheusRule"])
def test_each_has_only_the_fields_of_its_kind(document):
    # The operator's schemas are not the API's (kubernetes-validate has none of them): the fields used here,
    # as the operator's CRDs of monitoring.coreos.com/v1 name them.
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(document["metadata"]) == {"name", "labels"}
    if document["kind"] == "ServiceMonitor":
        assert set(document["spec"]) == {"selector", "endpoints"}
        assert set(document["spec"]["endpoints"][0]) <= {"port", "path", "interval", "scheme", "authorization"}
    else:
        assert set(document["spec"]) == {"groups"}
