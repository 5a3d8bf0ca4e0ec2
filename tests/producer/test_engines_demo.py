"""The demo's Phase-10 stand-in answers the engine's REST API as `otel-bridge` reads it: timelines, and a
workflow's executions page by page (what `import-timeline --workflow-id` asks a real engine)."""

from datetime import UTC, datetime, timedelta

import httpx
from bridge_process import free_port

from otel_bridge.producer.engines_demo import Phase10Engine
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers.timeline_api import Window, executions, timeline


def test_the_demo_engine_lists_a_workflows_executions_as_the_history_import_pages_them():
    port = free_port()
    engine = Phase10Engine("127.0.0.1", port)
    start = datetime(2026, 11, 30, 8, 0)
    runs = [
        Phase10Run("report", workflow_id="wf-report", start=start + timedelta(minutes=i)).started(1).completed()
        for i in range(25)
    ]
    for run in runs:
        engine.runs[run.execution_id] = (run, {})
    api = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            listed = list(executions(client, api, "wf-report", Window(since=start.replace(tzinfo=UTC))))
            assert sorted(listed) == sorted(run.execution_id for run in runs)
            assert list(executions(client, api, "wf-other", Window())) == []
            assert timeline(client, api, runs[3].execution_id)["execution_id"] == runs[3].execution_id
            assert client.get(f"{api}/api/workflows/wf-report/executions", params={"limit": "x"}).status_code == 422
    finally:
        engine.close()
