"""Writes the Grafana dashboards in collector-config/grafana/dashboards/ (run after editing).

Panels follow the seed guide's "UI Design Recommendations": workflow list and detail
views become run, duration, step and retry panels; the job dashboard has continuous,
debounce and task sections. Histogram panels show exemplars (click: the trace in
Jaeger); counter panels link to a Jaeger search of the same workflow or service.
tests/deploy/test_dashboards.py runs every PromQL query here against a real Prometheus.
"""

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "collector-config" / "grafana" / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
JAEGER = {"type": "jaeger", "uid": "jaeger"}
SEL = 'service_name=~"$service", deployment_environment_name=~"$env"'
# Workflow series also say which engine ran them (durable-effect, event-sourced, phase10).
WF = SEL + ', workflow_platform_name=~"$source"'
JAEGER_SEARCH = "http://localhost:16686/search?service=${service}"
# The alerting path's heartbeat (prometheus/alerting-path.yml) always fires: listed, it would be a line that
# never goes away among the alerts someone must look at. Grafana's label matcher syntax.
WITHOUT_HEARTBEAT = '{alertname!="Watchdog"}'
# The bridge's own alerts and the alerting path's (prometheus/alerting-path.yml), the heartbeat left out: what
# the operator of the bridge, rather than of the workflows, is paged for.
THE_BRIDGES = '{alertname=~"Bridge.+|Producer.+|Prometheus.+|Alertmanager.+"}'
# A bridge's HTTP requests that post batches (closing a run by hand is a POST too), and only a bridge's: other
# servers scraped by the same Prometheus time their requests under the same name.
BATCHES = 'http_request_method="POST", http_route!~".*/close"'
ON_BRIDGES = "and on (instance) otel_bridge_build_info"
GONE = "gone before its answer"


class Board:
    def __init__(self, uid: str, title: str, description: str, sources: bool = False) -> None:
        self.uid, self.title, self.description = uid, title, description
        self.sources = sources
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = 0
        self._next_id = 1

    def row(self, title: str) -> None:
        if self._x:
            self._y += 8
            self._x = 0
        self.panels.append(
            {"type": "row", "title": title, "id": self._take_id(), "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}}
        )  # fmt: skip
        self._y += 1

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def panel(
        self,
        title: str,
        queries: list[tuple[str, str]],
        kind: str = "timeseries",
        unit: str = "short",
        width: int = 8,
        exemplars: bool = False,
        description: str = "",
        link: str | None = None,
        thresholds: list[tuple[float | None, str]] | None = None,
    ) -> None:
        if self._x + width > 24:
            self._x = 0
            self._y += 8
        panel: dict[str, Any] = {
            "id": self._take_id(),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": PROMETHEUS,
            "gridPos": {"h": 8, "w": width, "x": self._x, "y": self._y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [
                {"refId": chr(65 + i), "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend,
                 "exemplar": exemplars, "range": True, "instant": kind in ("stat", "bargauge")}
                for i, (expr, legend) in enumerate(queries)
            ],
        }  # fmt: skip
        if link:
            panel["links"] = [{"title": "Open in Jaeger", "url": link, "targetBlank": True}]
        if thresholds:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"value": value, "color": color} for value, color in thresholds],
            }
            panel["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
        self.panels.append(panel)
        self._x += width

    def state(self, title: str, gauge: str, by: str, width: int, description: str) -> None:
        """A 1/0 gauge of the bridge as a timeline per `by` label: down while any of them is."""
        self.panel(
            title, [(f"min by ({by}) ({gauge})", f"{{{{{by}}}}}")], kind="state-timeline", width=width,
            description=description,
        )  # fmt: skip

    def alerts(self, title: str, width: int = 8, only: str = WITHOUT_HEARTBEAT) -> None:
        """The alerts Prometheus evaluates (collector-config/prometheus/) that fire now, of those `only` (Grafana's
        label matchers) names: by default all but the heartbeat."""
        if self._x + width > 24:
            self._x = 0
            self._y += 8
        self.panels.append(
            {"id": self._take_id(), "type": "alertlist", "title": title,
             "gridPos": {"h": 8, "w": width, "x": self._x, "y": self._y},
             "options": {"viewMode": "list", "groupMode": "default", "maxItems": 20, "sortOrder": 1,
                         "dashboardAlerts": False, "alertName": "", "alertInstanceLabelFilter": only,
                         "datasource": "Prometheus",
                         "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False,
                                         "error": True}}}
        )  # fmt: skip
        self._x += width

    def traces(self, title: str, tags: str, width: int = 24) -> None:
        """A Jaeger search panel: the runs themselves, one click from their timeline."""
        if self._x + width > 24:
            self._x = 0
            self._y += 8
        self.panels.append(
            {"id": self._take_id(), "type": "table", "title": title, "datasource": JAEGER,
             "gridPos": {"h": 8, "w": width, "x": self._x, "y": self._y},
             "targets": [{"refId": "A", "datasource": JAEGER, "queryType": "search",
                          "service": "$service", "tags": tags, "limit": 20}]}
        )  # fmt: skip
        self._x += width

    def json(self) -> dict[str, Any]:
        variables = [
            {"name": "service", "label": "service", "type": "query", "datasource": PROMETHEUS,
             "query": {"query": "label_values(service_name)", "refId": "service"},
             "definition": "label_values(service_name)", "includeAll": True, "multi": True,
             "allValue": ".+", "current": {"text": "All", "value": "$__all"}, "refresh": 2},
            {"name": "env", "label": "environment", "type": "query", "datasource": PROMETHEUS,
             "query": {"query": "label_values(deployment_environment_name)", "refId": "env"},
             "definition": "label_values(deployment_environment_name)", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        ]  # fmt: skip
        if self.sources:
            variables.append(
                {"name": "source", "label": "engine", "type": "query", "datasource": PROMETHEUS,
                 "query": {"query": "label_values(workflow_platform_name)", "refId": "source"},
                 "definition": "label_values(workflow_platform_name)", "includeAll": True, "multi": True,
                 "allValue": ".+", "current": {"text": "All", "value": "$__all"}, "refresh": 2}
            )  # fmt: skip
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["otel-bridge"],
            "timezone": "browser",
            "schemaVersion": 39,
            "version": 1,
            "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"},
            "templating": {"list": variables},
            "links": [{"title": "Jaeger", "url": "http://localhost:16686", "type": "link", "targetBlank": True}],
            "panels": self.panels,
        }


def quantiles(metric: str, by: str, extra: str = "", base: str = SEL) -> list[tuple[str, str]]:
    selector = f"{base}{extra}"
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def workflows() -> Board:
    b = Board(
        "otel-bridge-workflows",
        "Workflows",
        "Workflow runs of every engine otel-bridge converts (pick one with the engine variable).",
        sources=True,
    )
    b.row("Runs")
    b.panel(
        "Runs by outcome",
        [(f'sum by (workflow_execution_result) (rate(workflow_execution_duration_seconds_count{{{WF}, '
          f'workflow_execution_state="executing"}}[$__rate_interval]))', "{{workflow_execution_result}}")],
        unit="ops", link=JAEGER_SEARCH + '&tags={"error":"true"}',
        description="Finished runs per second: success, failure, cancellation, timeout.",
    )  # fmt: skip
    b.panel(
        "Success rate",
        [(f'sum(rate(workflow_execution_duration_seconds_count{{{WF}, workflow_execution_state="executing", '
          f'workflow_execution_result="success"}}[$__range])) / sum(rate(workflow_execution_duration_seconds_count'
          f'{{{WF}, workflow_execution_state="executing"}}[$__range]))', "success rate")],
        kind="stat", unit="percentunit", width=4,
    )  # fmt: skip
    b.panel(
        "Open runs by state",
        [(f"sum by (workflow_execution_state) (workflow_execution_active{{{WF}}})", "{{workflow_execution_state}}")],
        kind="stat", width=4, description="Running (executing), paused (sleep or retry backoff), queued (pending).",
    )  # fmt: skip
    b.panel(
        "Overdue runs",
        # Each store counted once (sidecars each their own; replicas on one Redis by the one that counts): sum.
        [(f"sum by (workflow_execution_state) (workflow_execution_overdue{{{WF}}}) or on() vector(0)",
          "{{workflow_execution_state}}")],
        kind="stat", width=4,
        description="Paused past their resumeAt, queued and not started, or executing and silent past "
                    "silent_executing, by more than the overdue grace (otel-bridge runs --overdue lists them).",
    )  # fmt: skip
    b.alerts("Firing alerts")
    b.panel(
        "Failures by failing step",
        [(f"sum by (workflow_definition_name, workflow_task_name) "
          f"(increase(workflow_execution_errors_total{{{WF}}}[$__range]))",
          "{{workflow_definition_name}} / {{workflow_task_name}}")],
        kind="bargauge", link=JAEGER_SEARCH + '&tags={"error":"true"}',
    )  # fmt: skip
    b.panel(
        "Failures by error type",
        [(f"sum by (workflow_definition_name, error_type) "
          f"(increase(workflow_execution_errors_total{{{WF}}}[$__range]))",
          "{{workflow_definition_name}} / {{error_type}}")],
        kind="bargauge", link=JAEGER_SEARCH + '&tags={"error":"true"}',
        description="The class of error failed runs ended with (error.type: the error's name in its stack, the "
                    "engine's error type, timeout; _OTHER when the engine told none). In Jaeger, the tag "
                    "error.type finds the runs.",
    )  # fmt: skip
    b.panel(
        "Run duration (start to end)",
        quantiles("workflow_execution_duration_seconds", "workflow_definition_name",
                  ', workflow_execution_state="executing"', WF),
        unit="s", width=12, exemplars=True, description="Percentiles; dots are exemplars: click for the trace.",
    )  # fmt: skip
    b.panel(
        "Queue wait (queued until it began)",
        quantiles("workflow_execution_duration_seconds", "workflow_definition_name",
                  ', workflow_execution_state="pending"', WF),
        unit="s", width=12, exemplars=True,
        description="From queued to running: durable-effect's runAsync until workflow.started, the runtime v2's "
        "launch until a worker begins its first step. A run no worker takes is not here: see Overdue runs.",
    )  # fmt: skip
    b.row("Steps")
    b.panel(
        "Step duration p95 by step",
        [(f"histogram_quantile(0.95, sum by (le, workflow_task_name) "
          f"(rate(workflow_task_duration_seconds_bucket{{{WF}}}[$__rate_interval])))", "{{workflow_task_name}}")],
        unit="s", width=12, exemplars=True,
    )  # fmt: skip
    b.panel(
        "Step attempts by result",
        [(f"sum by (workflow_task_name, workflow_task_result) "
          f"(rate(workflow_task_duration_seconds_count{{{WF}}}[$__rate_interval]))",
          "{{workflow_task_name}} {{workflow_task_result}}")],
        unit="ops", width=12,
    )  # fmt: skip
    b.panel(
        "Retries by step",
        [(f"sum by (workflow_task_name) (increase(workflow_task_retries_total{{{WF}}}[$__rate_interval]))",
          "{{workflow_task_name}}")],
        link=JAEGER_SEARCH,
    )  # fmt: skip
    b.panel(
        "Timeouts by step",
        [(f"sum by (workflow_task_name) (increase(workflow_task_timeouts_total{{{WF}}}[$__range]))",
          "{{workflow_task_name}}")],
        kind="bargauge", link=JAEGER_SEARCH + '&tags={"error.type":"timeout"}',
    )  # fmt: skip
    b.panel(
        "Retry success: attempts that succeeded after a retry",
        [(f'sum(rate(workflow_task_duration_seconds_count{{{WF}, workflow_task_result="success"}}[$__range])) '
          f"/ (sum(rate(workflow_task_duration_seconds_count{{{WF}, workflow_task_result=\"success\"}}[$__range])) "
          f"+ sum(rate(workflow_task_retries_total{{{WF}}}[$__range])))", "attempt success ratio")],
        kind="stat", unit="percentunit",
    )  # fmt: skip
    b.panel(
        "Backoff before a retry",
        quantiles("workflow_task_retry_delay_seconds", "workflow_task_name", base=WF),
        unit="s", width=12, exemplars=True,
        description="The delay the engine scheduled each retry after (its backoff, jitter included); click a dot for "
                    "the attempt it followed.",
    )  # fmt: skip
    b.panel(
        "Attempts per step that succeeded",
        [(f"1 + sum by (workflow_task_name) (increase(workflow_task_retries_total{{{WF}}}[$__range])) "
          f'/ sum by (workflow_task_name) (increase(workflow_task_duration_seconds_count{{{WF}, '
          f'workflow_task_result="success"}}[$__range]))', "{{workflow_task_name}}")],
        kind="bargauge", width=12,
        description="On average, how many attempts a step took to succeed (1: never retried).",
    )  # fmt: skip
    b.row("Sleeps")
    b.panel(
        "Sleep duration",
        quantiles("workflow_sleep_duration_seconds", "workflow_definition_name", base=WF),
        unit="s", width=24, exemplars=True,
    )  # fmt: skip
    b.row("States (state-machine engines)")
    b.panel(
        "Time in state p95",
        [(f"histogram_quantile(0.95, sum by (le, workflow_state_name) "
          f"(rate(workflow_state_duration_seconds_bucket{{{WF}}}[$__rate_interval])))", "{{workflow_state_name}}")],
        unit="s", width=12, exemplars=True, description="How long executions sit in each state; click for the trace.",
    )  # fmt: skip
    b.panel(
        "Transitions",
        [(f"sum by (workflow_state_from, workflow_state_to) "
          f"(increase(workflow_state_transitions_total{{{WF}}}[$__range]))",
          "{{workflow_state_from}} → {{workflow_state_to}}")],
        kind="bargauge", width=12,
    )  # fmt: skip
    b.row("Runs in Jaeger")
    b.traces("Failed runs (pick a service)", "error=true")
    return b


def jobs() -> Board:
    b = Board(
        "otel-bridge-jobs",
        "Jobs",
        "Continuous, debounce and task jobs, and the runtime v2's schedules and the events it took in, converted by "
        "otel-bridge.",
    )
    b.row("All jobs")
    b.panel(
        "Executions by job and result",
        [(f"sum by (job_name, job_execution_result) (rate(job_executions_total{{{SEL}}}[$__rate_interval]))",
          "{{job_name}} {{job_execution_result}}")],
        unit="ops", width=12,
    )  # fmt: skip
    b.panel(
        "Error rate by job",
        [(f'sum by (job_name) (rate(job_executions_total{{{SEL}, job_execution_result="failure"}}[$__range])) '
          f'/ sum by (job_name) (rate(job_executions_total{{{SEL}, job_execution_result!="skipped"}}[$__range]))',
          "{{job_name}}")],
        kind="bargauge", unit="percentunit", width=6,
    )  # fmt: skip
    b.panel(
        "Run counter (total executions)",
        [(f"sum by (job_name) (increase(job_executions_total{{{SEL}}}[$__range]))", "{{job_name}}")],
        kind="stat", width=6,
    )  # fmt: skip
    b.panel("Execution duration", quantiles("job_execution_duration_seconds", "job_name"), unit="s", width=12)
    b.panel(
        "Retries exhausted",
        [(f"sum by (job_name, job_retry_exhausted_reason) (increase(job_retry_exhausted_total{{{SEL}}}[$__range]))",
          "{{job_name}} {{job_retry_exhausted_reason}}")],
        kind="bargauge", width=6,
    )  # fmt: skip
    b.panel(
        "Active instances",
        [(f"sum by (job_name) (job_instance_active{{{SEL}}})", "{{job_name}}")], kind="stat", width=6,
    )  # fmt: skip
    b.panel(
        "Terminations",
        [(f"sum by (job_name) (increase(job_terminations_total{{{SEL}}}[$__range]))", "{{job_name}}")],
        kind="bargauge", width=6,
    )  # fmt: skip
    b.panel(
        "Since the last successful run",
        # The latest of every instance and every replica: max, then how long ago.
        [(f'time() - max by (job_name) (job_execution_last_timestamp_seconds{{{SEL}, job_execution_result="success"}})',
          "{{job_name}}")],
        kind="stat", unit="s", width=6,
        description="How long ago each job last ran successfully (its latest instance): the seed's \"last "
                    "execution\". A continuous job tells no next run, so a stalled one shows here, growing; "
                    "alert on it with the interval you gave it (README, Stuck runs).",
    )  # fmt: skip
    b.panel(
        "Overdue instances",
        # Each store counted once (sidecars each their own; replicas on one Redis by the one that counts): sum.
        [(f"sum by (job_name) (job_instance_overdue{{{SEL}}}) or on() vector(0)",
          "{{job_name}}")],
        kind="stat", width=12,
        description="Past their time to run (a debounce's flushAt, the scheduledAt of a task OTEL_BRIDGE_OVERDUE_TASKS "
                    "names, a continuous job's last run and its OTEL_BRIDGE_SILENT_CONTINUOUS) by more than the "
                    "overdue grace with no run: a lost alarm (otel-bridge jobs --overdue lists them).",
    )  # fmt: skip
    b.row("Debounce")
    b.panel(
        "Events per flush (histogram)",
        [(f"sum by (le) (increase(job_debounce_flush_size_bucket{{{SEL}}}[$__range]))", "{{le}}")],
        kind="bargauge", width=8,
    )  # fmt: skip
    b.panel(
        "Average batch size",
        [(f"sum by (job_name) (rate(job_debounce_flush_size_sum{{{SEL}}}[$__range])) / "
          f"sum by (job_name) (rate(job_debounce_flush_size_count{{{SEL}}}[$__range]))", "{{job_name}}")],
        kind="stat", width=8,
    )  # fmt: skip
    b.panel(
        "Flush reasons",
        [(f"sum by (job_debounce_flush_reason) (increase(job_debounce_flush_size_count{{{SEL}}}[$__range]))",
          "{{job_debounce_flush_reason}}")],
        kind="piechart", width=8,
    )  # fmt: skip
    b.panel("Collection window", quantiles("job_debounce_flush_duration_seconds", "job_name"), unit="s", width=24)
    b.row("Tasks")
    b.panel(
        "Schedules by trigger",
        [(f"sum by (job_task_trigger) (increase(job_task_scheduled_total{{{SEL}}}[$__rate_interval]))",
          "{{job_task_trigger}}")],
        width=12,
    )  # fmt: skip
    b.panel("Schedule delay", quantiles("job_task_schedule_delay_seconds", "job_name"), unit="s", width=12)
    b.row("Events taken in (runtime v2)")
    events = f'{SEL}, job_type="event"'
    b.panel(
        "Events by name and what came of them",
        [(f"sum by (job_name, job_execution_result) (rate(job_executions_total{{{events}}}[$__rate_interval]))",
          "{{job_name}} {{job_execution_result}}")],
        unit="ops", width=12,
        description="Each event the runtime took in, by its name: success (it started or resumed a run), failure "
                    "(not delivered), skipped (no run took it, or it had no correlation key).",
    )  # fmt: skip
    b.panel(
        "Not delivered",
        [(f'sum by (job_name) (increase(job_executions_total{{{events}, job_execution_result="failure"}}[$__range]))',
          "{{job_name}}")],
        kind="bargauge", width=12,
        description="Events whose run was not launched or resumed (WorkflowEventsNotDelivered): each event's "
                    "row says why (workflow_runtime_events.error_message); otel-bridge jobs --failing lists the "
                    "names whose latest event was not delivered.",
    )  # fmt: skip
    return b


def bridge() -> Board:
    b = Board(
        "otel-bridge-itself",
        "otel-bridge",
        "The bridge's own health: what it takes in and from whom, what waits for export, its state, the engines it "
        "follows. Each alert of the bridge (Bridge*, ProducerSilent) reads a panel here.",
    )
    b.alerts("Firing alerts: the bridge's own and the alerting path's", width=24, only=THE_BRIDGES)
    b.row("What comes in")
    b.panel(
        "Events in",
        [("sum by (receiver) (rate(otel_bridge_events_accepted_total[$__rate_interval]))", "accepted {{receiver}}"),
         ("sum by (receiver) (rate(otel_bridge_events_duplicate_total[$__rate_interval]))", "duplicate {{receiver}}"),
         ("sum by (receiver) (rate(otel_bridge_events_rejected_total[$__rate_interval]))", "rejected {{receiver}}"),
         ("sum(rate(otel_bridge_events_late_total[$__rate_interval]))", "late"),
         ("sum by (reason) (rate(otel_bridge_events_refused_total[$__rate_interval]))", "refused {{reason}}")],
        unit="ops",
        width=12,
        description="Duplicates are events already taken in, by the receiver that met them again: a producer's "
        "re-sends after a failed POST (http), the rows the runtime v2's poller reads again within its overlap "
        "(runtime-v2), the timelines a Phase-10 follower fetches beside the live messages (websocket) — by design, "
        "not a fault. Late: events of a run whose trace was already sent (alert BridgeLateEvents).",
    )  # fmt: skip
    b.panel(
        "Events by producer",
        [("sum by (service_name, deployment_environment_name, workflow_platform_name) "
          "(rate(otel_bridge_producer_events_total[$__rate_interval]))",
          "{{service_name}} ({{deployment_environment_name}}, {{workflow_platform_name}})"),
         ("sum by (service_name, deployment_environment_name, workflow_platform_name) "
          "(rate(otel_bridge_producer_events_ahead_total[$__rate_interval]))",
          "clock ahead: {{service_name}} ({{deployment_environment_name}}, {{workflow_platform_name}})")],
        unit="ops",
        width=12,
        description="Each producer's events taken into the store (duplicates not counted). A line that drops to "
        "nothing is a producer whose tracker stopped delivering, or that stopped: alert ProducerSilent, against "
        "the same hour a week before. A 'clock ahead' line: a producer's events timestamped more than a minute "
        "ahead of the bridge's clock, whose spans show in the future (alert ProducerClockAhead; the bridge's log "
        "says how far).",
    )  # fmt: skip
    b.panel(
        "Since each producer's last event",
        [("time() - max by (service_name, deployment_environment_name) "
          "(otel_bridge_producer_last_heard_timestamp_seconds)",
          "{{service_name}} ({{deployment_environment_name}})"),
         ("max by (service_name, deployment_environment_name) (otel_bridge_producer_expected_within_seconds)",
          "may go without: {{service_name}} ({{deployment_environment_name}})")],
        unit="s",
        width=12,
        description="How long since the bridge last took an event of each producer (the latest of its replicas). "
        "For the producers named in expected_producers, how long each may go without, and since the bridge's "
        "start for one not heard from at all: a line above its own limit is alert ProducerNotHeard, which tells "
        "of a producer that never sent, as ProducerSilent cannot.",
    )  # fmt: skip
    b.panel(
        "Batches by answer",
        # A producer gone before its answer has no status (error.type says why): named, not an empty legend.
        [(f"label_replace(sum by (http_response_status_code, error_type) (rate("
          f"http_server_request_duration_seconds_count{{{BATCHES}}}[$__rate_interval]) {ON_BRIDGES}), "
          f'"http_response_status_code", "{GONE}", "error_type", "client_disconnected")',
          "{{http_response_status_code}}")],
        unit="reqps",
        width=12,
        description="Producers' POSTs of batches by the status each was answered: 200 taken (its bad events, if "
        "any, listed and dead-lettered), 503 refused for now (re-sent: alert BridgeRefusingBatches), 401 a "
        "credential missing or wrong (alert BridgeRequestsUnauthorized), 400/404/408/413/415 refused whole for good — "
        "the producer drops such a batch after three re-sends (alert BridgeBatchesRejected; the log says why); "
        f"'{GONE}': the producer closed the connection before its batch was whole or answered (its own "
        "timeout, a restart): it re-sends the batch, or lost it if it was going away.",
    )  # fmt: skip
    b.panel(
        "Time to answer a batch",
        [(f"histogram_quantile({q}, sum by (le) (rate(http_server_request_duration_seconds_bucket{{{BATCHES}}}"
          f"[$__rate_interval]) {ON_BRIDGES}))", f"p{round(q * 100)}") for q in (0.5, 0.99)],
        unit="s",
        width=12,
        description="From a POST's first byte to its answer's last (http.server.request.duration): the producer "
        "awaits it inside the workflow's own invocation, so it is added to every step. A 6-event batch takes "
        "about a millisecond; a p99 in seconds is a bridge short of CPU or a state store that is slow to commit "
        "(alert BridgeSlowToAnswer, past a second for 15 minutes).",
    )  # fmt: skip
    b.panel(
        "Requests by credential, TLS handshakes failed",
        [("sum by (credential) (rate(otel_bridge_requests_authenticated_total[$__rate_interval]))", "{{credential}}"),
         ("sum(rate(otel_bridge_requests_unauthorized_total[$__rate_interval]))", "refused (401)"),
         ("sum by (reason) (rate(otel_bridge_tls_handshakes_failed_total[$__rate_interval]))",
          "TLS handshake failed: {{reason}}")],
        unit="reqps",
        width=8,
        description="With api_key or bearer_token set: each request by the credential it carried, named by its "
        "setting and place (never the secret). While rotating, a retiring key whose rate has dropped to 0 on every "
        "replica can go. Refused requests lose their producer's events: alert BridgeRequestsUnauthorized. TLS "
        "handshakes that failed, by what it means: certificate_refused (a client refused the bridge's certificate) "
        "and no_certificate (TLS spoken to a bridge serving plain HTTP) each lose a producer's every batch — alert "
        "BridgeTlsHandshakesFailing; version_or_cipher, other: mostly scanners.",
    )  # fmt: skip
    b.state(
        "Engines followed",
        "otel_bridge_follower_connected",
        "follower",
        width=8,
        description="1 while the bridge follows the engine's stream (the event-sourced runtime's Redis stream, "
        "the Phase-10 WebSocket), 0 while it cannot reach it: alert BridgeFollowerDisconnected.",
    )
    b.panel(
        "Stream lag",
        [("max(otel_bridge_stream_lag)", "entries behind")],
        width=8,
        description="Entries of the event-sourced runtime's stream not yet read by the bridge's consumer group "
        "(the group's: every replica that follows the stream tells the same, so the largest, not their sum).",
    )
    b.row("What goes out, and the state")
    b.panel(
        "Outbox depth",
        [("sum(otel_bridge_outbox_depth)", "spans waiting")],
        description="Spans waiting for export, over every bridge (replicas sharing a Redis state: told by one).",
    )
    b.panel(
        "Export failures, incomplete, set-aside, unreadable and kept-back runs, stream entries lost, jobs presumed "
        "ended",
        [("sum(increase(otel_bridge_export_failures_total[$__range]))", "export failures"),
         ("sum(increase(otel_bridge_runs_incomplete_total[$__range]))", "incomplete runs"),
         ("sum(increase(otel_bridge_jobs_presumed_ended_total[$__range]))", "jobs presumed ended"),
         ("sum(increase(otel_bridge_runs_set_aside_total[$__range]))", "runs set aside"),
         ("sum(increase(otel_bridge_runs_unreadable_total[$__range]))", "runs unreadable"),
         ("sum(increase(otel_bridge_runs_kept_back_total[$__range]))", "runs kept back"),
         ("sum(increase(otel_bridge_stream_entries_lost_total[$__range]))", "stream entries lost")],
        kind="stat",
        description="Over the dashboard's range. Incomplete: runs closed after max_open_seconds with events "
        "missing. Set aside: runs whose settling kept failing, kept out of play until `otel-bridge settle-again` "
        "(alert BridgeRunsSetAside). Unreadable: run states another version wrote, kept aside whole, their runs "
        "started afresh (alert BridgeRunsUnreadable). Stream entries lost: the Redis stream trimmed past entries "
        "the bridge had not read (alert BridgeStreamEntriesLost). Kept back: runs `trace_sample_ratio` left out "
        "that ended without a failed span, counted in every metric, never sent.",
    )  # fmt: skip
    b.panel(
        "Settle lag",
        [("max by (instance) (otel_bridge_settle_lag_seconds)", "{{instance}}")],
        unit="s",
        width=8,
        description="How long the run due soonest has waited past its settle window: a few tenths of a second "
        "while settling keeps up; growing, traces reach the backend late (alert BridgeSettlingBehind).",
    )
    b.panel(
        "State on disk",
        [("max by (instance) (otel_bridge_state_size_bytes)", "state {{instance}}"),
         ("min by (instance) (otel_bridge_state_disk_free_bytes)", "room left {{instance}}")],
        unit="bytes",
        width=8,
        description="The SQLite state file with its log, and the room left on its filesystem; with none left, "
        "batches are refused (503): alert BridgeStateDiskFillingUp. Ended runs are kept for dedup_ttl_seconds.",
    )  # fmt: skip
    b.panel(
        "Runs in memory",
        [("max by (instance) (otel_bridge_state_hot_facts)", "facts {{instance}}"),
         ("max by (instance) (otel_bridge_state_hot_runs)", "runs {{instance}}")],
        width=8,
        description="SQLite state: the runs kept in memory between batches and the facts they hold together, "
        "against hot_facts (150,000 by default, ~0.8 KiB each). At it, runs leave memory and are read back from "
        "the store at their next event: raise hot_facts where the bridge has the memory and its CPU per event grows.",
    )  # fmt: skip
    b.panel(
        "State store settings at risk",
        [("max by (instance) (otel_bridge_state_risks)", "{{instance}}")],
        width=8,
        description="Settings of each bridge's state store that can lose events it answered, or count them again "
        "(a Redis that evicts keys or keeps too little on disk, a SQLite file on a network filesystem), read every "
        "minute, and a damaged state file the bridge met (a restart salvages it); /readyz's warnings name them "
        "and the fix. 0 is the goal: alert BridgeStateAtRisk.",
    )  # fmt: skip
    b.panel(
        "Certificates: time left",
        [("min by (instance, certificate) (otel_bridge_tls_certificate_expiration_timestamp_seconds) - time()",
          "{{certificate}} {{instance}}")],
        kind="bargauge",
        unit="s",
        width=8,
        thresholds=[(None, "red"), (2 * 86400, "orange"), (14 * 86400, "green")],
        description="Serving HTTPS, or exporting with a client certificate: how long until each certificate the "
        "bridge presents ends (tls_certfile; OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE), as renewed on disk — a "
        "renewed file is taken without a restart, so a bar that does not grow back after a renewal names a bridge "
        "that cannot read it. Orange within two weeks, red within two days: alert BridgeCertificateExpiring. Empty "
        "where the bridge presents none.",
    )  # fmt: skip
    b.row("The process")
    b.panel(
        "CPU",
        [(f"rate(process_cpu_seconds_total[$__rate_interval]) {ON_BRIDGES}", "{{instance}}")],
        unit="percentunit",
        description="The CPU each bridge process uses, 100% a core (process_cpu_seconds_total): what a sidecar "
        "costs its pod. About 45 µs of CPU an event in 100-event batches (README, Performance).",
    )
    b.panel(
        "Memory",
        [(f"process_resident_memory_bytes {ON_BRIDGES}", "{{instance}}")],
        unit="bytes",
        description="Each bridge process's resident memory. Mostly the runs kept in memory between batches "
        "(Runs in memory): 130 MiB with a million runs open and nothing else going on (README, Performance); "
        "one that grows while they do not is worth an issue.",
    )
    b.panel(
        "Open files",
        [(f"process_open_fds / process_max_fds {ON_BRIDGES}", "{{instance}}")],
        unit="percentunit",
        thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")],
        description="The files each bridge process holds open against its limit: mostly producers' kept-alive "
        "connections. At the limit new connections are shed: alert BridgeFileDescriptorsRunningOut.",
    )  # fmt: skip
    b.panel(
        "Starts",
        [(f"changes(process_start_time_seconds[$__range]) {ON_BRIDGES}", "{{instance}}")],
        kind="stat",
        width=8,
        description="How many times each bridge process started again over the dashboard's range: a crash, the OOM "
        "killer, a liveness probe. Three within half an hour: alert BridgeRestarting.",
    )
    b.state(
        "Alive",
        "otel_bridge_alive",
        "instance",
        width=16,
        description="1 while every loop of the bridge comes round, 0 while /healthz says a restart would mend one "
        "(a thread ended, or a loop stuck in one pass): alert BridgeStuck.",
    )
    return b


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, board in (("workflows", workflows()), ("jobs", jobs()), ("bridge", bridge())):
        (OUT / f"{name}.json").write_text(json.dumps(board.json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
