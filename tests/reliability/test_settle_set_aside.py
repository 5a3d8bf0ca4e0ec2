"""A run that cannot be settled is tried a few times, then set aside with its reason and counted: never a loop."""

import time
from typing import Any

import orjson
import pytest
from bridge_counters import counted
from builders import WorkflowRun
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge import pipeline as pipeline_module
from otel_bridge.cli import main
from otel_bridge.config import Settings
from otel_bridge.export.metrics import MetricsHub
from otel_bridge.pipeline import Pipeline
from otel_bridge.runtime import open_store
from otel_bridge.state import journal as journal_module
from otel_bridge.state.sqlite_store import SqliteStore
from otel_bridge.state.store import Store


def _due(tx, now: float, limit: int) -> list[str]:
    """The keys due by `now`, the earliest first."""
    return [key for _due_at, key in tx.due_after(now, limit, None)]


def test_a_run_that_never_settles_is_set_aside_after_the_configured_tries(tmp_path, monkeypatch):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, settle_attempts=3, gap_grace_seconds=0)
    metrics = MetricsHub()
    now = [1_000_000.0]
    pipeline = Pipeline(SqliteStore(settings.state), metrics, settings, clock=lambda: now[0])

    tries = []
    real_encode = pipeline_module.encode_span

    def encode(span, *args):
        if span.name == "workflow poisoned":
            tries.append(span.name)
            raise OverflowError("a value OTLP cannot carry")
        return real_encode(span, *args)

    monkeypatch.setattr(pipeline_module, "encode_span", encode)
    good = WorkflowRun("healthy").started().step_started("a").after(1).step_completed("a").completed()
    bad = WorkflowRun("poisoned").started().step_started("a").after(1).step_completed("a").completed()
    pipeline.ingest(good.events + bad.events)

    for _ in range(20):  # twenty minutes of the settle loop
        now[0] += 60
        pipeline.settle_due()

    assert pipeline.store.outbox_depth() == 2  # the healthy run, untouched by its neighbour
    assert len(tries) == 3
    kept = {key: blob for key, blob in pipeline.store.states() if bad.workflow_id in key}
    (key,) = kept
    assert key.startswith("unsettled\x1f")
    aside = orjson.loads(kept[key])
    assert "OverflowError" in aside["reason"] and bad.workflow_id in aside["state"]
    assert counted(metrics, "otel_bridge.runs.set_aside") == 1


def test_a_stuck_run_that_fails_to_settle_is_still_listed_as_overdue_while_it_is_tried_again(tmp_path, monkeypatch):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, settle_attempts=5, gap_grace_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)

    def encode(span, *args):
        raise OverflowError("a value OTLP cannot carry")

    monkeypatch.setattr(pipeline_module, "encode_span", encode)
    # Due back in 2025: overdue now, with a step span to send at its first settling.
    stuck = WorkflowRun().started().step_started("a").after(1).step_completed("a").paused("sleep", resume_in_ms=1000)
    pipeline.ingest(stuck.events)
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]

    pipeline.settle_due(horizon=time.time() + 10)  # fails, and is to be tried again

    assert pipeline.store.run(lambda tx: _due(tx, time.time() + 10, 10)) != []
    assert [r.run_id for r in pipeline.overdue_runs()] == [stuck.workflow_id]


class _Poison:
    """Span encoding that fails for one run's root span while `on`, as a bug would."""

    def __init__(self, monkeypatch, root: str) -> None:
        self.on = True
        real = pipeline_module.encode_span

        def encode(span, *args):
            if self.on and span.name == root:
                raise OverflowError("a value OTLP cannot carry")
            return real(span, *args)

        monkeypatch.setattr(pipeline_module, "encode_span", encode)


def _taken(store: Store) -> list[Span]:
    """The spans in the outbox, taken out of it as an export takes them."""
    rows = store.outbox_peek(1000)
    if rows:
        store.outbox_ack([row.id for row in rows])
    return [Span.FromString(row.payload) for row in rows]


def _exported(store: Store) -> list[str]:
    return sorted(span.name for span in _taken(store))


def _spans(store: Store) -> dict[str, Span]:
    return {span.name: span for span in _taken(store)}


def _pipeline(kind: str, tmp_path, request, **settings: Any) -> tuple[Pipeline, Settings, list[float]]:
    """A pipeline on SQLite or Redis with a clock the test moves, and its settings."""
    state = str(tmp_path / "p.db") if kind == "sqlite" else request.getfixturevalue("redis_url")
    chosen = Settings(state=state, settle_seconds=0, gap_grace_seconds=0, **settings)
    now = [time.time()]
    return Pipeline(open_store(chosen), MetricsHub(), chosen, clock=lambda: now[0]), chosen, now


def _settled_for(pipeline: Pipeline, now: list[float], minutes: int = 20) -> None:
    for _ in range(minutes):
        now[0] += 60
        pipeline.settle_due()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_settle_again_puts_a_run_set_aside_back_and_it_is_sent_once_the_cause_is_mended(
    kind, tmp_path, monkeypatch, capsys, request
):
    pipeline, settings, now = _pipeline(kind, tmp_path, request, settle_attempts=2)
    poison = _Poison(monkeypatch, "workflow poisoned")
    # It sends its first step before it pauses; the root span it fails on only once it has ended.
    run = WorkflowRun("poisoned", execution_id="poison-1").started().step_started("a").after(1).step_completed("a")
    pipeline.ingest(run.paused("sleep", resume_in_ms=1000).events)
    _settled_for(pipeline, now, 1)
    assert _exported(pipeline.store) == ["step a"]
    pipeline.ingest(run.resumed().step_started("b").after(1).step_completed("b").completed().events[-4:])
    _settled_for(pipeline, now)
    assert [key for key, _ in pipeline.store.states() if key.startswith("unsettled")]  # set aside
    pipeline.store.close()

    assert main(["settle-again", "--state", settings.state, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "poisoned" in listed and "OverflowError" in listed and "set aside: 1" in listed
    assert main(["show", run.workflow_id, "--state", settings.state]) == 0  # what it holds, and why it is out
    shown = capsys.readouterr().out
    assert "set aside, failed to settle: OverflowError" in shown and "step b #1" in shown
    assert main(["show", "poison-1", "--state", settings.state]) == 0  # by the application's own id too
    assert "set aside, failed to settle: OverflowError" in capsys.readouterr().out

    poison.on = False  # the bridge upgraded: the bug mended
    assert main(["settle-again", "--state", settings.state]) == 0
    assert "put back: 1" in capsys.readouterr().out
    pipeline = Pipeline(open_store(settings), MetricsHub(), settings, clock=lambda: now[0])
    _settled_for(pipeline, now, 1)
    # Every span once: the step sent before it was set aside is not sent again.
    assert _exported(pipeline.store) == ["step b", "workflow poisoned"]
    assert not [key for key, _ in pipeline.store.states() if key.startswith("unsettled")]
    pipeline.store.close()
    assert main(["settle-again", "--state", settings.state]) == 0
    assert "set aside: 0" in capsys.readouterr().out


def _told_to_one_state(tmp_path, run: WorkflowRun, now: float) -> dict[str, Span]:
    """The spans of the run had every event come to one state that settled."""
    settings = Settings(state=str(tmp_path / "control.db"), settle_seconds=0, gap_grace_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: now)
    pipeline.ingest(run.events)
    pipeline.settle_due()
    try:
        return _spans(pipeline.store)
    finally:
        pipeline.store.close()


def _put_back_and_ended(settings: Settings, run: WorkflowRun, now: list[float], capsys) -> dict[str, Span]:
    """`settle-again`, then the run's end: the spans the bridge then sends."""
    assert main(["settle-again", "--state", settings.state]) == 0
    assert "put back: 1" in capsys.readouterr().out
    pipeline = Pipeline(open_store(settings), MetricsHub(), settings, clock=lambda: now[0])
    run.after(1).completed(["a", "b", "c"])
    pipeline.ingest(run.events[-1:])
    _settled_for(pipeline, now)
    try:
        return _spans(pipeline.store)
    finally:
        pipeline.store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_run_set_aside_that_went_on_meanwhile_is_put_back_as_one_run_each_span_sent_once(
    kind, tmp_path, monkeypatch, capsys, request
):
    pipeline, settings, now = _pipeline(kind, tmp_path, request, settle_attempts=1)
    poison = _Poison(monkeypatch, "step b")
    run = WorkflowRun("split").started().step_started("a").after(1).step_completed("a")
    pipeline.ingest(run.events)
    _settled_for(pipeline, now, 1)
    run.after(1).step_started("b").after(1).step_completed("b")
    pipeline.ingest(run.events[-2:])
    _settled_for(pipeline, now, 2)
    assert [key for key, _ in pipeline.store.states() if key.startswith("unsettled")]  # set aside
    poison.on = False  # the bug mended; the workflow went on meanwhile, its run started afresh
    run.after(1).step_started("c").after(1).step_completed("c")
    pipeline.ingest(run.events[-2:])
    _settled_for(pipeline, now, 1)
    sent = _spans(pipeline.store)
    assert sorted(sent) == ["step a", "step c"]
    pipeline.store.close()

    sent_after = _put_back_and_ended(settings, run, now, capsys)

    # Each span once, and the trace the one a bridge that never failed would have sent.
    assert sorted(sent_after) == ["step b", "workflow split"]
    assert sent | sent_after == _told_to_one_state(tmp_path, run, now[0])


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_run_set_aside_twice_keeps_both_parts_and_is_put_back_whole(kind, tmp_path, monkeypatch, capsys, request):
    pipeline, settings, now = _pipeline(kind, tmp_path, request, settle_attempts=1)
    poison_b, poison_c = _Poison(monkeypatch, "step b"), _Poison(monkeypatch, "step c")
    run = WorkflowRun("twice").started().step_started("a").after(1).step_completed("a")
    run.after(1).step_started("b").after(1).step_completed("b")
    pipeline.ingest(run.events)
    _settled_for(pipeline, now, 2)
    # It went on, started afresh, and failed again: the second setting aside used to write over the first.
    run.after(1).step_started("c").after(1).step_completed("c")
    pipeline.ingest(run.events[-2:])
    _settled_for(pipeline, now, 2)
    assert _spans(pipeline.store) == {}
    pipeline.store.close()

    assert main(["settle-again", "--state", settings.state, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "set aside 2 times" in listed and "set aside: 1" in listed
    assert main(["show", run.workflow_id, "--state", settings.state]) == 0
    shown = capsys.readouterr().out
    assert "step a #1" in shown and "step c #1" in shown  # both parts

    poison_b.on = poison_c.on = False
    assert _put_back_and_ended(settings, run, now, capsys) == _told_to_one_state(tmp_path, run, now[0])


def test_a_run_set_aside_whose_fresh_part_has_ended_is_left_set_aside_and_said_so(tmp_path, monkeypatch, capsys):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, settle_attempts=1, gap_grace_seconds=0)
    now = [time.time()]
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: now[0])
    poison = _Poison(monkeypatch, "step a")
    run = WorkflowRun("poisoned").started().step_started("a").after(1).step_completed("a")
    pipeline.ingest(run.events)
    _settled_for(pipeline, now, 2)
    poison.on = False
    pipeline.ingest(run.after(1).completed(["a"]).events[-1:])  # its end, sent without what was set aside
    _settled_for(pipeline, now, 2)
    pipeline.store.close()

    assert main(["settle-again", "--state", settings.state]) == 1
    said = capsys.readouterr().out
    assert "put back: 0" in said and "left: 1" in said and "has ended since" in said


def test_settle_again_beside_a_running_bridge_lists_but_says_to_stop_it_before_putting_back(tmp_path, capsys):
    state = str(tmp_path / "p.db")
    running = SqliteStore(state)  # the bridge's claim on its file
    try:
        assert main(["settle-again", "--state", state, "--dry-run"]) == 0  # looking is fine, as `runs` does
        assert "set aside: 0" in capsys.readouterr().out
        assert main(["settle-again", "--state", state]) == 2
    finally:
        running.close()
    said = capsys.readouterr().err
    assert "in use by another otel-bridge" in said and "stop it first" in said and "history.db" not in said


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["put-back", "dry-run"])
def test_settle_again_on_a_path_that_is_no_state_file_says_so_and_makes_none(tmp_path, capsys, dry_run):
    mistyped = tmp_path / "otel-brdige.db"
    assert main(["settle-again", "--state", str(mistyped), *dry_run]) == 2
    assert f"no state file at {mistyped}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not a new, empty state beside the real one
    assert main(["settle-again", "--state", ":memory:", *dry_run]) == 2
    assert "the state is :memory:" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_run_an_older_version_could_not_read_is_put_back_whole_once_a_version_that_reads_it_runs(
    kind, tmp_path, monkeypatch, capsys, request
):
    pipeline, settings, now = _pipeline(kind, tmp_path, request)
    run = WorkflowRun("downgraded").started().step_started("a").after(1).step_completed("a")
    pipeline.ingest(run.paused("sleep", resume_in_ms=60_000).events)
    _settled_for(pipeline, now, 1)
    assert _exported(pipeline.store) == ["step a"]
    pipeline.store.close()

    # A downgrade: the older version cannot read the state the newer one wrote.
    readable = journal_module.decode

    def older(key, header, *args, **kwargs):
        if key.startswith("run\x1f"):
            raise ValueError("Object contains unknown field `carrying_on`")
        return readable(key, header, *args, **kwargs)

    monkeypatch.setattr(journal_module, "decode", older)
    older = open_store(settings)
    (key,) = {k for k, _ in older.states() if k.startswith("run\x1f") and run.workflow_id in k}  # SCAN: maybe twice
    older.run(lambda tx: journal_module.load(tx, key))  # met (at its start, an event, settling): set aside
    older.close()
    assert main(["settle-again", "--state", settings.state]) == 1
    said = capsys.readouterr().out
    assert "cannot be read by this version" in said and "put back: 0" in said

    monkeypatch.setattr(journal_module, "decode", readable)  # the upgrade again
    assert main(["settle-again", "--state", settings.state, "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "downgraded" in listed and "unreadable by otel-bridge" in listed and "unknown field" in listed
    assert main(["show", run.workflow_id, "--state", settings.state]) == 0
    assert "set aside, unreadable by otel-bridge" in capsys.readouterr().out
    assert main(["settle-again", "--state", settings.state]) == 0
    assert "put back: 1" in capsys.readouterr().out

    pipeline = Pipeline(open_store(settings), MetricsHub(), settings, clock=lambda: now[0])
    pipeline.ingest(run.resumed().step_started("b").after(1).step_completed("b").completed().events[-4:])
    _settled_for(pipeline, now)
    # The run whole, each span once: the step sent before the downgrade is not sent again.
    assert _exported(pipeline.store) == ["step b", "workflow downgraded"]
    assert not [key for key, _ in pipeline.store.states() if key.startswith("unreadable")]
    pipeline.store.close()


def test_an_unreadable_state_kept_by_an_earlier_version_is_read_and_put_back_too(tmp_path, capsys):
    settings = Settings(state=str(tmp_path / "p.db"), settle_seconds=0, gap_grace_seconds=0)
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    run = WorkflowRun("kept-before").started().step_started("a").after(1).step_completed("a")
    pipeline.ingest(run.events)
    (key,) = [k for k, _ in pipeline.store.states()]
    with pipeline.store.transaction() as tx:
        header, _due = tx.load(key)
        rows = tx.facts(key)
        journal_module.delete(tx, key)
        tx.save("unreadable\x1f" + key, b"\n".join([header, *rows]), None)  # as earlier versions kept it
    pipeline.store.close()
    assert main(["settle-again", "--state", settings.state]) == 0
    assert "put back: 1" in capsys.readouterr().out
    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings)
    assert [r.run_id for r in pipeline.open_runs()] == [run.workflow_id]  # in play again
    (state,) = pipeline.runs_named(run.workflow_id)
    assert len(state.facts) == len(run.events)  # with its facts
    pipeline.store.close()


def test_an_ended_run_put_back_still_tells_its_events_sent_again_for_the_dedup_ttl(tmp_path, monkeypatch, capsys):
    # A run that had ended and forgotten its facts is kept to tell its events sent again. Put back due
    # now, its next settling dropped it at once, and an event of it sent again started a run afresh.
    pipeline, settings, now = _pipeline("sqlite", tmp_path, None, keep_finished_seconds=60)
    run = WorkflowRun("ended").started().step_started("a").after(1).step_completed("a").completed()
    pipeline.ingest(run.events)
    _settled_for(pipeline, now, 3)  # sent, then its facts forgotten
    (key,) = [k for k, _ in pipeline.store.states()]
    readable = journal_module.decode
    monkeypatch.setattr(journal_module, "decode", lambda *a, **k: (_ for _ in ()).throw(ValueError("newer")))
    pipeline.store.run(lambda tx: journal_module.load(tx, key))  # a downgraded version meets it: set aside
    monkeypatch.setattr(journal_module, "decode", readable)
    pipeline.store.close()
    assert main(["settle-again", "--state", settings.state]) == 0
    capsys.readouterr()

    pipeline = Pipeline(SqliteStore(settings.state), MetricsHub(), settings, clock=lambda: now[0])
    _settled_for(pipeline, now, 3)
    report = pipeline.ingest(run.events[:1])  # the producer sends its start again
    assert (report.accepted, report.duplicates) == (0, 1)
    pipeline.store.close()
