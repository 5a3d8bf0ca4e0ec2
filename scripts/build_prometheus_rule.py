"""Writes kubernetes/prometheus-operator.yaml: the stack's alert rules as a PrometheusRule and the bridge's
scrape as a ServiceMonitor, for a Prometheus the Prometheus Operator runs (kube-prometheus-stack).

The rules are collector-config/prometheus/rules.yml itself, indented under the PrometheusRule's `spec`
(its comments kept): edit that file, then run this script. tests/deploy/test_prometheus_operator.py
checks that the file is what this script writes, and has promtool check the rules it carries.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "collector-config" / "prometheus" / "rules.yml"
OUT = ROOT / "kubernetes" / "prometheus-operator.yaml"

HEAD = """\
# For a Prometheus run by the Prometheus Operator (kube-prometheus-stack): the bridge of otel-bridge.yaml
# scraped through its Service, and the stack's alert rules. Written by scripts/build_prometheus_rule.py
# from collector-config/prometheus/rules.yml: edit that file, then run the script.
#
#   kubectl apply -f kubernetes/otel-bridge.yaml -f kubernetes/prometheus-operator.yaml
#
# A Prometheus picks up only the ServiceMonitors and PrometheusRules its selectors name: kube-prometheus-stack
# asks for the label `release: <its Helm release>` unless told otherwise (serviceMonitorSelector,
# ruleSelector), so add that label to both here. The scrape's job is the Service's name, otel-bridge,
# which BridgeDown and ProducerSilent name (`up{job="otel-bridge"}`). With OTEL_BRIDGE_METRICS_AUTH=true,
# the endpoint needs the credential too (an `authorization` from the Secret). The compose stack's alerts on its
# alerting path (collector-config/prometheus/alerting-path.yml: Watchdog, AlertmanagerFailedToSendAlerts…) are
# not here: kube-prometheus-stack has its own, by the same names.
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: otel-bridge
  labels:
    app.kubernetes.io/name: otel-bridge
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: otel-bridge
  endpoints:
    - port: http
      path: /metrics
      interval: 15s
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: otel-bridge
  labels:
    app.kubernetes.io/name: otel-bridge
spec:
"""


def render() -> str:
    text = RULES.read_text()
    groups = text[text.index("\ngroups:\n") + 1 :]
    return HEAD + "".join(f"  {line}" if line.strip() else line for line in groups.splitlines(keepends=True))


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
