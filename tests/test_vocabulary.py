"""No module outside `sources/` knows any engine's wire names: correlation and export speak the lifecycle vocabulary."""

import ast
from pathlib import Path

import otel_bridge
from otel_bridge.lifecycle import FactKind
from otel_bridge.sources import durable_effect, phase10

PACKAGE = Path(otel_bridge.__file__).parent
# Where wire names belong: the sources that decode them, and the producer side (builders, trackers) that emits them.
ALLOWED = ("sources", "producer", "tracker")
WIRE_NAMES = (
    set(durable_effect.EVENT_TYPES)
    | set(phase10.WORKFLOW_EVENTS)
    | {"task_created", "isComplete", "workflowComplete", "step_timeline", "workflow_execution_id"}
)


# The vocabulary's own spelling of a sleep's start until this version: still read from stored run state.
LEGACY = {"lifecycle.py": {"sleep.started"}}


def _strings(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_stage_outside_the_sources_names_a_wire_event():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ALLOWED:
            continue
        known = _strings(path) & WIRE_NAMES - LEGACY.get(str(path.relative_to(PACKAGE)), set())
        if known:
            offenders[str(path.relative_to(PACKAGE))] = sorted(known)
    assert offenders == {}


def test_run_state_stored_by_earlier_versions_still_reads():
    assert FactKind("sleep.started") is FactKind.SLEEP_STARTED


def test_the_check_sees_wire_names_where_they_belong():
    assert "retry.scheduled" in _strings(PACKAGE / "sources" / "durable_effect.py") & WIRE_NAMES
    assert "workflow_started" in _strings(PACKAGE / "sources" / "phase10.py") & WIRE_NAMES
