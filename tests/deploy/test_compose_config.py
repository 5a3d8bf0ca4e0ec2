"""docker-compose.yml and every config it mounts agree with each other (no Docker engine here: parse them)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_servers import stack_rule_files

from otel_bridge.config import unknown_variables
from otel_bridge.export.metrics import DURATION_BUCKETS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
COLLECTOR = yaml.safe_load((ROOT / "collector-config" / "otel-collector.yaml").read_text())
JAEGER = yaml.safe_load((ROOT / "collector-config" / "jaeger.yaml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())
DATASOURCES = yaml.safe_load(
    (ROOT / "collector-config" / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
)
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in (ROOT / "collector-config/grafana/dashboards").glob("*.json")}


def _published(service: str) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in SERVICES[service].get("ports", [])}


def _host_port(endpoint: str) -> tuple[str, int]:
    match = re.match(r"^(?:\w+://)?([^:/]+):(\d+)", endpoint)
    assert match, endpoint
    return match.group(1), int(match.group(2))


def test_every_image_is_pinned_to_a_version():
    for name, service in SERVICES.items():
        image = service.get("image", "")
        if "build" in service or image == "otel-bridge:local":
            continue
        assert re.search(r":[0-9v][\w.-]*$", image), f"{name}: image {image!r} is not pinned"
        assert not image.endswith(":latest")


def test_the_stack_has_every_service_with_its_ui_port():
    assert {"otel-bridge", "otel-collector", "jaeger", "prometheus", "alertmanager", "grafana", "demo"} <= set(SERVICES)
    assert 16686 in _published("jaeger")
    assert 9090 in _published("prometheus")
    assert 9093 in _published("alertmanager")
    assert 3000 in _published("grafana")
    assert 4380 in _published("otel-bridge")
    assert "jaegertracing/jaeger:2." in SERVICES["jaeger"]["image"]  # Jaeger v2 all-in-one
    assert "opentelemetry-collector-contrib" in SERVICES["otel-collector"]["image"]


def test_every_mounted_file_exists_in_the_repo():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_the_bridge_exports_to_the_collectors_otlp_receiver():
    env = SERVICES["otel-bridge"]["environment"]
    host, port = _host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == "otel-collector"
    protocol = "grpc" if env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc" else "http"
    assert _host_port(COLLECTOR["receivers"]["otlp"]["protocols"][protocol]["endpoint"])[1] == port


def test_the_demo_posts_to_the_bridge_service():
    command = SERVICES["demo"]["command"]
    url = command[command.index("--url") + 1]
    host, port = _host_port(url)
    assert (host, port) == ("otel-bridge", 4380)
    assert SERVICES["demo"]["depends_on"]["otel-bridge"]["condition"] == "service_healthy"


def test_the_demo_sends_its_applications_own_spans_to_the_collector():
    demo = SERVICES["demo"]
    assert "--app-spans" in demo["command"]
    assert _host_port(demo["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", 4317)
    assert demo["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_the_bridge_follows_the_other_engines_the_demo_plays():
    env = SERVICES["otel-bridge"]["environment"]
    command = SERVICES["demo"]["command"]
    stream = command[command.index("--stream-url") + 1]
    assert env["OTEL_BRIDGE_STREAM_URL"] == stream and _host_port(stream)[0] == "redis" and "redis" in SERVICES
    ws_port = int(command[command.index("--ws-port") + 1])
    assert _host_port(env["OTEL_BRIDGE_WS_URL"]) == ("demo", ws_port)
    assert env["OTEL_BRIDGE_WS_URL"].endswith("/ws/stream")
    assert _host_port(env["OTEL_BRIDGE_WS_API_URL"]) == ("demo", ws_port)
    tables = command[command.index("--runtime-v2-url") + 1]
    assert env["OTEL_BRIDGE_RUNTIME_V2_URL"] == tables and _host_port(tables.split("@")[-1]) == ("postgres", 5432)
    postgres = SERVICES["postgres"]
    assert tables.rsplit("/", 1)[1] == postgres["environment"]["POSTGRES_DB"]
    assert SERVICES["otel-bridge"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_collector_pipelines_reference_defined_components():
    pipelines = COLLECTOR["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in COLLECTOR[kind], f"{name} uses undefined {kind[:-1]} {component}"
        assert pipeline["processors"][0] == "memory_limiter", "memory_limiter must come first"
        assert "batch" in pipeline["processors"]
    for extension in COLLECTOR["service"].get("extensions", []):
        assert extension in COLLECTOR["extensions"]


def test_collector_sends_traces_to_jaeger_and_exposes_metrics_for_prometheus():
    jaeger = COLLECTOR["exporters"]["otlp/jaeger"]
    assert _host_port(jaeger["endpoint"]) == ("jaeger", 4317)
    # A Collector distribution's receivers listen on localhost unless told (jaegertracing/jaeger#6207).
    assert JAEGER["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert "otlp" in JAEGER["service"]["pipelines"]["traces"]["receivers"]
    assert COLLECTOR["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
    exporter_port = _host_port(COLLECTOR["exporters"]["prometheus"]["endpoint"])[1]
    targets = {t for job in PROMETHEUS["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"otel-collector:{exporter_port}" in targets
    assert exporter_port in _published("otel-collector")


def test_jaeger_is_started_with_its_configuration_and_its_pipelines_reference_defined_components():
    assert SERVICES["jaeger"]["command"] == ["--config=/etc/jaeger/config.yaml"]
    assert "./collector-config/jaeger.yaml:/etc/jaeger/config.yaml:ro" in SERVICES["jaeger"]["volumes"]
    pipelines = JAEGER["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        for kind, defined_in in (("receivers", "receivers"), ("processors", "processors"), ("exporters", "exporters")):
            for component in pipeline.get(kind, []):
                # A connector is the exporter of one pipeline and the receiver of another.
                assert component in JAEGER[defined_in] or component in JAEGER["connectors"], (name, component)
    for extension in JAEGER["service"]["extensions"]:
        assert extension in JAEGER["extensions"]
    ui = JAEGER["extensions"]["jaeger_query"]["http"]["endpoint"]
    assert ui.startswith("0.0.0.0:") and _host_port(ui)[1] in _published("jaeger")


def test_jaegers_monitor_tab_reads_the_span_metrics_jaeger_counts_from_the_stacks_prometheus():
    pipelines = JAEGER["service"]["pipelines"]
    assert "spanmetrics" in pipelines["traces"]["exporters"]
    (counted,) = [p for p in pipelines.values() if "spanmetrics" in p.get("receivers", [])]
    exporter_port = _host_port(JAEGER["exporters"][counted["exporters"][0]]["endpoint"])[1]
    targets = {t for job in PROMETHEUS["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"jaeger:{exporter_port}" in targets
    storage, query = JAEGER["extensions"]["jaeger_storage"], JAEGER["extensions"]["jaeger_query"]["storage"]
    assert query["traces"] in storage["backends"]
    assert JAEGER["exporters"]["jaeger_storage_exporter"]["trace_storage"] == query["traces"]
    prometheus = storage["metric_backends"][query["metrics"]]["prometheus"]
    assert _host_port(prometheus["endpoint"]) == ("prometheus", 9090) and 9090 in _published("prometheus")
    # The names the connector's Prometheus exporter writes (`_total`, `_milliseconds`): durations in ms.
    assert prometheus["normalize_calls"] is True and prometheus["normalize_duration"] is True
    assert JAEGER["connectors"]["spanmetrics"]["histogram"]["unit"] == "ms"


def test_jaegers_span_latencies_are_bucketed_as_the_bridges_own_up_to_a_month():
    # The connector's default buckets stop at 15 s: every run that slept would show a latency of 15 s.
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    told = JAEGER["connectors"]["spanmetrics"]["histogram"]["explicit"]["buckets"]
    seconds = [float(b[:-2]) * units["ms"] if b.endswith("ms") else float(b[:-1]) * units[b[-1]] for b in told]
    assert seconds == pytest.approx(DURATION_BUCKETS)


def test_the_collector_config_documents_load_balancing_and_tail_sampling():
    text = (ROOT / "collector-config" / "otel-collector.yaml").read_text()
    assert "# loadbalancing:" in text and "routing_key: traceID" in text
    assert "# processors:\n#   tail_sampling:" in text and "status_codes: [ERROR]" in text
    # Not for the bridge's workflows: their failure comes after `decision_wait`, their sampling is the bridge's.
    assert "sample in otel-bridge, not here (OTEL_BRIDGE_TRACE_SAMPLE_RATIO" in text


def test_prometheus_scrapes_only_services_of_the_stack():
    for job in PROMETHEUS["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _port = _host_port(target)
                assert host in SERVICES, f"{job['job_name']} scrapes unknown host {host}"
    bridge_job = next(j for j in PROMETHEUS["scrape_configs"] if j["job_name"] == "otel-bridge")
    assert bridge_job["static_configs"][0]["targets"] == ["otel-bridge:4380"]
    # The alerting path's own alerts name these jobs: Prometheus itself, the Alertmanager it sends to.
    by_job = {job["job_name"]: job["static_configs"][0]["targets"] for job in PROMETHEUS["scrape_configs"]}
    assert by_job["prometheus"] == ["prometheus:9090"] and by_job["alertmanager"] == ["alertmanager:9093"]
    assert "--enable-feature=exemplar-storage" in SERVICES["prometheus"]["command"]


def test_prometheus_sends_its_alerts_to_the_stacks_alertmanager_which_reads_the_file_the_tests_check():
    ((target,),) = [
        static["targets"] for am in PROMETHEUS["alerting"]["alertmanagers"] for static in am["static_configs"]
    ]
    assert _host_port(target) == ("alertmanager", 9093)
    mounted = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["alertmanager"]["volumes"]}
    assert mounted["./collector-config/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in SERVICES["alertmanager"]["command"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with the prometheus package")
def test_promtool_accepts_the_prometheus_config():
    result = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(ROOT / "collector-config" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_datasources_point_at_stack_services_and_link_exemplars_to_jaeger():
    by_uid = {d["uid"]: d for d in DATASOURCES["datasources"]}
    assert _host_port(by_uid["prometheus"]["url"]) == ("prometheus", 9090)
    assert _host_port(by_uid["jaeger"]["url"]) == ("jaeger", 16686)
    assert _host_port(by_uid["alertmanager"]["url"]) == ("alertmanager", 9093)
    assert by_uid["alertmanager"]["jsonData"]["implementation"] == "prometheus"  # silences made from Grafana
    destinations = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [{"name": "trace_id", "datasourceUid": "jaeger"}]
    env = SERVICES["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_dashboards_use_only_provisioned_datasource_uids():
    uids = {d["uid"] for d in DATASOURCES["datasources"]}
    assert set(DASHBOARDS) == {"workflows", "jobs", "bridge"}
    for name, board in DASHBOARDS.items():
        for panel in board["panels"]:
            for ref in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                if ref:
                    assert ref["uid"] in uids, f"{name}/{panel['title']} uses unknown datasource {ref}"
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] in uids


def test_prometheus_loads_every_rule_file_of_the_stack_as_the_tests_check_it():
    # A rule file beside rules.yml that prometheus.yml does not name, or compose does not mount, would be
    # unit-tested here and missing there.
    rules = ROOT / "collector-config" / "prometheus"
    assert set(stack_rule_files()) == {path for path in rules.glob("*.yml") if not path.name.endswith(".test.yml")}
    assert {path.name for path in stack_rule_files()} == {"rules.yml", "alerting-path.yml"}


def _listed(matcher: str, names: set[str]) -> set[str]:
    """The alerts of `names` an alert list's label matcher (Grafana's syntax, one matcher on the name) shows."""
    match = re.fullmatch(r'\{alertname(!=|=~)"([^"]*)"\}', matcher)
    assert match, matcher
    op, value = match.groups()
    return {name for name in names if (name != value if op == "!=" else re.fullmatch(value, name))}


def test_the_dashboards_alert_lists_show_what_each_is_for_and_never_the_always_firing_heartbeat():
    alerts = {
        path.name: {rule["alert"] for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]}
        for path in stack_rule_files()
    }
    (heartbeat,) = [
        rule["alert"]
        for group in yaml.safe_load((ROOT / "collector-config/prometheus/alerting-path.yml").read_text())["groups"]
        for rule in group["rules"]
        if rule["expr"] == "vector(1)"
    ]
    every = alerts["rules.yml"] | alerts["alerting-path.yml"]
    lists = {
        name: [
            panel["options"]["alertInstanceLabelFilter"] for panel in board["panels"] if panel["type"] == "alertlist"
        ]
        for name, board in DASHBOARDS.items()
    }
    # The workflows' dashboard: every alert firing, but the heartbeat.
    assert [_listed(matcher, every) for matcher in lists["workflows"]] == [every - {heartbeat}]
    # The bridge's: its own alerts (Bridge*, the producers it hears from) and the alerting path's.
    bridge = {n for n in alerts["rules.yml"] if n.startswith(("Bridge", "Producer"))} | alerts["alerting-path.yml"]
    assert [_listed(matcher, every) for matcher in lists["bridge"]] == [bridge - {heartbeat}]
    assert lists["jobs"] == []


def test_dashboards_are_what_the_generator_writes(tmp_path):
    script = ROOT / "scripts" / "build_dashboards.py"
    namespace: dict = {"__name__": "build_dashboards", "__file__": str(script)}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    assert namespace["workflows"]().json() == DASHBOARDS["workflows"]
    assert namespace["jobs"]().json() == DASHBOARDS["jobs"]
    assert namespace["bridge"]().json() == DASHBOARDS["bridge"]


def test_histogram_panels_show_exemplars_and_counter_panels_link_to_jaeger():
    workflows = DASHBOARDS["workflows"]["panels"]
    for panel in workflows:
        exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
        if "histogram_quantile" in exprs:
            assert all(t["exemplar"] for t in panel["targets"]), panel["title"]
    assert any(p.get("links") for p in workflows)
    assert any(p.get("datasource", {}).get("uid") == "jaeger" for p in workflows)


def test_dockerfile_is_slim_non_root_and_checks_liveness_not_readiness():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    (command,) = re.findall(r"^HEALTHCHECK .*\\\n\s*CMD (.*)$", dockerfile, re.M)
    # A restart mends a loop that hangs, not a backend away: unhealthy must not follow /readyz.
    assert "/healthz" in command and "/readyz" not in command


def test_every_bridge_variable_of_the_compose_file_is_a_setting():
    assert unknown_variables(SERVICES["otel-bridge"]["environment"]) == []


def test_the_bridges_runs_link_to_their_traces_in_the_jaeger_ui_the_stack_publishes():
    link = SERVICES["otel-bridge"]["environment"]["OTEL_BRIDGE_TRACE_URL"]
    assert link == "http://localhost:16686/trace/{trace_id}"
    assert "127.0.0.1:16686:16686" in [str(port).split()[0] for port in SERVICES["jaeger"]["ports"]]


def test_every_port_is_published_on_the_loopback_only():
    # Docker publishes on every interface unless told: the demo stack's ingest endpoint, anonymous Grafana
    # and Prometheus's lifecycle API would be open to the machine's whole network.
    published = [(name, str(port)) for name, service in SERVICES.items() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for _, port in published), published


def test_the_bridge_runs_on_a_read_only_image_writing_its_volume_and_tmp_only():
    # The same confinement as the Kubernetes manifests', whose test runs a bridge under it for real.
    bridge = SERVICES["otel-bridge"]
    assert bridge["read_only"] is True and bridge["tmpfs"] == ["/tmp"]
    assert bridge["cap_drop"] == ["ALL"] and bridge["security_opt"] == ["no-new-privileges:true"]
    # Where it writes its state and dead letters: the image's ENV, unless the service says otherwise.
    image = dict(re.findall(r"(OTEL_BRIDGE_\w+)=(\S+)", (ROOT / "Dockerfile").read_text()))
    places = ("OTEL_BRIDGE_STATE", "OTEL_BRIDGE_DEAD_LETTER", "OTEL_BRIDGE_SPAN_DEAD_LETTER")
    written = [bridge["environment"].get(name, image[name]) for name in places]
    assert {str(Path(path).parent) for path in written} == {"/data"}
    assert [volume.split(":")[1] for volume in bridge["volumes"]] == ["/data"]
