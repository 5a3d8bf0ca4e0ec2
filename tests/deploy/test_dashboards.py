"""A real Prometheus scrapes a real bridge fed by `otel-bridge demo`; every dashboard query returns data."""

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from bridge_process import BridgeProcess, free_port
from pki import make_pki
from prometheus_servers import prometheus_server, stack_rule_files
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 25
# Grafana's variables, as a dashboard viewer with "All" selected would send them.
VARIABLES = {
    "$__rate_interval": "20s",
    "$__range": "5m",
    "$__interval": "5s",
    '"$service"': '".+"',
    '"$env"': '".*"',
    '"$source"': '".+"',
}


def _queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "collector-config" / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                if "expr" in target:
                    out.append((path.stem, panel["title"], target["expr"]))
    return out


DEMO_KEY = "demo-key"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, postgres) -> Iterator[str]:
    """Prometheus with the stack's own prometheus.yml, its targets pointed at processes on this machine."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus package is missing: ./scripts/test installs it (apt-get install prometheus)"
    workdir = tmp_path_factory.mktemp("prometheus")
    otlp_port = free_port()  # traces are not the point here: nothing listens, the outbox just waits
    # Every engine feeds the bridge: durable-effect over HTTP, the event-sourced runtime's stream on a
    # real Redis, its successor's tables in a real PostgreSQL, and a Phase-10 stand-in's WebSocket that
    # the demo serves.
    stream = RedisServer().start()
    tables = postgres.database("runtime")
    ws_port = free_port()
    # A client certificate for the export (the endpoint is plain HTTP: it is never presented), so that the
    # certificates' panel has one to tell the end of.
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    bridge = BridgeProcess(
        workdir,
        f"http://127.0.0.1:{otlp_port}",
        OTEL_METRICS_EXPORTER="none",
        stream_url=stream.url,
        ws_url=f"ws://127.0.0.1:{ws_port}/ws/stream",
        ws_api_url=f"http://127.0.0.1:{ws_port}",
        runtime_v2_url=tables,
        runtime_v2_poll_seconds="0.5",
        api_key=DEMO_KEY,  # the demo's producer sends it: the requests by credential have data
        expected_producers="shop@demo=1m,jobs@demo=1m",  # the producers' last events have limits to show
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=pki["bridge.pem"],
        OTEL_EXPORTER_OTLP_CLIENT_KEY=pki["bridge.key"],
    ).start()

    config = yaml.safe_load((ROOT / "collector-config" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    bridge_job = next(job for job in config["scrape_configs"] if job["job_name"] == "otel-bridge")
    bridge_job["static_configs"] = [{"targets": [f"127.0.0.1:{bridge.port}"]}]
    config["scrape_configs"] = [bridge_job]  # the Collector has no native package: only the bridge job runs
    config["rule_files"] = [str(path) for path in stack_rule_files()]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    server, url = prometheus_server(binary, workdir)
    began = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "otel_bridge", "demo", "--url", f"{bridge.url}/v1/events", "--rate", "3",
         "--duration", str(DEMO_SECONDS), "--seed", "11", "--incidents", "0.1", "--stream-url", stream.url,
         "--ws-port", str(ws_port), "--ws-host", "127.0.0.1", "--header", f"X-API-KEY={DEMO_KEY}",
         "--runtime-v2-url", tables],
        capture_output=True, text=True, timeout=DEMO_SECONDS + 60,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    _post_and_go_away(bridge.port)
    # A few more scrapes after the last run settled, and the first events the runtime took in read: once their
    # rows are 30 s old (sources/runtime_v2.py, the poller's `_SETTLED`).
    time.sleep(max(3.0, began + 36 - time.monotonic()))
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)
        bridge.close()
        stream.close()


def _post_and_go_away(port: int) -> None:
    """A producer that closes its connection halfway through its batch (its own timeout, a restart)."""
    head = f"POST /v1/events HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nX-API-KEY: {DEMO_KEY}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(f'{head}Content-Length: 100\r\n\r\n{{"events": ['.encode())


@pytest.mark.timeout(DEMO_SECONDS + 120)
@pytest.mark.parametrize(("board", "panel", "expr"), _queries(), ids=lambda v: v if len(v) < 40 else v[:40])
def test_every_panel_query_returns_data(prometheus, board, panel, expr):
    query = expr
    for variable, value in VARIABLES.items():
        query = query.replace(variable, value)
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    assert response["status"] == "success", f"{board}/{panel}: {response}"
    assert response["data"]["result"], f"{board}/{panel}: no data for {query}"


@pytest.mark.timeout(DEMO_SECONDS + 120)
def test_batches_by_answer_names_a_producer_gone_before_its_answer(prometheus):
    (expr,) = [expr for _, panel, expr in _queries() if panel == "Batches by answer"]
    query = expr.replace("$__rate_interval", "5m")
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    legends = {series["metric"].get("http_response_status_code", "") for series in response["data"]["result"]}
    assert legends == {"200", "gone before its answer"}


@pytest.mark.timeout(DEMO_SECONDS + 120)
def test_histogram_exemplars_carry_trace_ids(prometheus):
    response = httpx.get(
        f"{prometheus}/api/v1/query_exemplars",
        params={"query": "workflow_task_duration_seconds_bucket", "start": time.time() - 600, "end": time.time()},
        timeout=10,
    ).json()
    exemplars = [e for series in response["data"] for e in series["exemplars"]]
    assert exemplars, response
    assert all(len(e["labels"]["trace_id"]) == 32 for e in exemplars)


@pytest.mark.timeout(DEMO_SECONDS + 120)
def test_prometheus_loads_and_evaluates_the_alert_rules(prometheus):
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    written = [group for path in stack_rule_files() for group in yaml.safe_load(path.read_text())["groups"]]
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for g in written for rule in g["rules"])
    assert all(rule["health"] == "ok" for rule in rules), rules
    # The alert for a bridge Prometheus cannot scrape names the real scrape job: quiet while it is scraped.
    (down,) = [rule for rule in rules if rule["name"] == "BridgeDown"]
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": down["query"]}, timeout=10).json()
    assert answer["status"] == "success" and answer["data"]["result"] == []


@pytest.mark.timeout(DEMO_SECONDS + 120)
def test_every_engine_the_stack_follows_has_its_runs_on_the_dashboards(prometheus):
    query = "sum by (workflow_platform_name) (workflow_execution_duration_seconds_count)"
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    engines = {r["metric"]["workflow_platform_name"] for r in response["data"]["result"]}
    assert engines == {"durable-effect", "event-sourced", "phase10", "workflow-runtime-v2"}
