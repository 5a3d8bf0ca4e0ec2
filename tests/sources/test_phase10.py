"""The Phase-10 engine's WebSocket messages and timelines become traces."""

import hashlib
from datetime import UTC, datetime

import pytest
from fold_harness import fold_events
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otel_bridge.correlate.outputs import Observation, SpanRecord, SpanStatus
from otel_bridge.correlate.overview import overview
from otel_bridge.correlate.runs import Admission, RunState, counted_under
from otel_bridge.correlate.step import Policy, apply, settle_run
from otel_bridge.export.span_encoding import encode_span
from otel_bridge.producer.phase10 import Phase10Run
from otel_bridge.receivers.timeline_api import in_workspace
from otel_bridge.sources.phase10 import Phase10Decoder, Phase10Options, workflow_named, workspace_of
from otel_bridge.sources.wire import DecodeError
from otel_bridge.state import journal

DECODE = Phase10Decoder(Phase10Options(service="agents", env="prod"))


def _ns(message: dict) -> int:
    # The engine's timestamps carry no zone: they are UTC.
    return int(datetime.fromisoformat(message["timestamp"]).replace(tzinfo=UTC).timestamp() * 1000) * 1_000_000


def _report() -> Phase10Run:
    run = Phase10Run("nightly-report").started(3).step_started("s1", "fetch", 1, "http").after(800)
    run.step_completed("s1", 0.8, rows=10).after(5).step_started("s2", "render", 2).after(300)
    run.step_failed("s2", "template missing", 0.3).after(1).step_skipped("s3")
    return run.after(2).failed()


def test_steps_are_spans_named_by_their_step_and_the_run_ends_as_told():
    run = _report()
    folded = fold_events(run.events, decoder=DECODE)
    root = folded.root
    assert root.name == "workflow nightly-report"
    assert (root.start_ns, root.end_ns) == (_ns(run.events[0]), _ns(run.events[-1]))
    assert root.status is SpanStatus.ERROR and root.status_message == "1 step failed"
    assert root.attributes["workflow.execution.id"] == run.execution_id
    assert root.attributes["workspace.id"] == "ws-1"
    fetch = folded.span("step fetch")
    assert (fetch.start_ns, fetch.end_ns) == (_ns(run.events[1]), _ns(run.events[2]))
    assert fetch.status is SpanStatus.OK
    assert fetch.attributes["workflow.task.type"] == "http" and fetch.attributes["workflow.task.order"] == 1
    assert folded.span("step render").status_message == "template missing"
    skipped = folded.span("step s3")
    assert skipped.status is SpanStatus.UNSET and skipped.attributes["workflow.task.result"] == "skipped"
    assert root.attributes["workflow.task.name"] == "render"


def test_a_step_order_is_kept_only_when_it_is_a_whole_number_and_any_size_still_makes_a_span():
    run = Phase10Run("orders").started().step_started("s1", "a", True).after(5).step_completed("s1")
    run.after(1).step_started("s2", "b", 2**70).after(5).step_completed("s2").after(1).completed()
    folded = fold_events(run.events, decoder=DECODE)
    assert "workflow.task.order" not in folded.span("step a").attributes
    big = folded.span("step b")
    assert big.attributes["workflow.task.order"] == 2**70
    sent = Span.FromString(encode_span(big))  # beyond OTLP's int64: told as text, the span still goes
    assert {kv.key: kv.value.string_value for kv in sent.attributes}["workflow.task.order"] == str(2**70)


def test_an_exception_failure_carries_its_type():
    run = Phase10Run("x").started().after(1).failed("division by zero", "ZeroDivisionError")
    root = fold_events(run.events, decoder=DECODE).root
    assert root.status_message == "division by zero" and root.attributes["error.type"] == "ZeroDivisionError"


def test_the_documents_envelope_is_accepted_too():
    def message(event: str, at: str, **data: object) -> dict:
        return {"event": event, "data": {"execution_id": "e-1", "timestamp": f"2024-01-15T{at}Z", **data}}

    envelope = [
        message("workflow_started", "10:00:00", workflow_id="w"),
        message("step_started", "10:00:00", step_id="s1", step_name="initialize"),
        message("step_completed", "10:00:30", step_id="s1", step_name="initialize", duration_seconds=30.0),
        message("workflow_completed", "10:02:30", workflow_id="w", status="completed"),
    ]
    folded = fold_events(envelope, decoder=DECODE)
    assert folded.span("step initialize").end_ns - folded.span("step initialize").start_ns == 30 * 10**9
    assert folded.root.status is SpanStatus.OK


def test_a_run_starting_tells_its_workflows_name_in_either_shape_and_nothing_else_does():
    run = Phase10Run("nightly-report", workflow_id="wf-9").started().step_started("s1", "fetch")
    enveloped = {"event": "workflow_started", "data": {"workflow_id": "wf-9", "workflow_name": "nightly-report"}}
    assert workflow_named(run.events[0]) == workflow_named(enveloped) == ("wf-9", "nightly-report")
    assert workflow_named(run.events[1]) is None and workflow_named("not a message") is None


def test_a_run_whose_step_is_told_before_its_start_is_active_under_its_name_once_the_start_comes():
    # Before, it stayed counted as active under no name for as long as it ran.
    run = Phase10Run("nightly-report").started(2).step_started("s1", "fetch")
    start, step = run.events
    folded = fold_events([step, start], settle_at_ns=None, decoder=DECODE)
    active: dict[str, float] = {}
    for o in folded.observations:
        if o.instrument == "workflow.execution.active":
            name = dict(o.attributes)["workflow.definition.name"]
            active[name] = active.get(name, 0) + o.value
    assert active == {"": 0, "nightly-report": 1}


def test_a_timeline_taken_in_before_its_runs_start_is_named_by_the_start_when_it_comes():
    # A timeline carries no name: its run stands named by its workflow's id until the engine tells the
    # name (the catch-up after a reconnect can fetch it before the live start is read). Before, the
    # stand-in stayed: the root, and the metrics, named by the id.
    run = _report()
    folded = fold_events([run.timeline(retries={"s2": 1}), *run.events], decoder=DECODE)
    assert folded.root.name == "workflow nightly-report"
    counted = [o for o in folded.observations if o.instrument != "workflow.execution.active"]
    assert {dict(o.attributes)["workflow.definition.name"] for o in counted} == {"nightly-report"}
    # The timeline alone began and ended the run under the stand-in, in the active gauge: net nothing.
    assert sum(folded.metric("workflow.execution.active", **{"workflow.definition.name": "wf-report"})) == 0
    alone = fold_events([run.timeline(retries={"s2": 1})], decoder=DECODE)  # no start ever: the id it is
    assert alone.root.name == "workflow wf-report"
    assert alone.metric("workflow.task.retries", **{"workflow.definition.name": "wf-report"}) == [1]


def test_a_message_is_known_by_the_same_event_id_whether_its_time_says_utc_or_says_no_zone():
    # The engine writes UTC without a zone; the id hashes the time as an aware datetime writes it,
    # as earlier versions did: a message told again after an upgrade is still a duplicate.
    started = _report().events[0]
    assert "+" not in started["timestamp"] and not started["timestamp"].endswith("Z")
    ids = {DECODE(started | {"timestamp": started["timestamp"] + zone}).fact.event_id for zone in ("", "Z", "+00:00")}
    said = datetime.fromisoformat(started["timestamp"]).replace(tzinfo=UTC).isoformat()
    hashed = "\x1f".join(["workflow_started", started["workflow_execution_id"], "None", said])
    assert ids == {"p10-" + hashlib.sha256(hashed.encode()).hexdigest()[:32]}


def test_other_platform_events_and_heartbeats_are_ignored():
    assert DECODE({"type": "heartbeat", "timestamp": "2025-01-01T00:00:00"}) is None
    assert DECODE({"event_type": "agent_message", "timestamp": "2025-01-01T00:00:00"}) is None


def test_a_timeline_alone_makes_the_whole_trace_with_its_retries():
    run = _report()
    folded = fold_events([run.timeline(retries={"s2": 2})], decoder=DECODE)
    render = folded.span("step render")
    assert render.attributes["workflow.task.attempt"] == 3
    assert [e.name for e in render.events].count("retry.scheduled") == 2
    assert folded.metric("workflow.task.retries", **{"workflow.task.name": "render"}) == [1, 1]
    assert folded.root.status is SpanStatus.ERROR


def test_a_timeline_fetched_in_a_workspace_names_it_on_the_root_as_a_live_run_does():
    run = _report()
    fetched = fold_events([in_workspace(run.timeline(), "ws-7")], decoder=DECODE)
    assert fetched.root.attributes["workspace.id"] == "ws-7"
    assert "workspace.id" not in fold_events([run.timeline()], decoder=DECODE).root.attributes  # from a file


def test_a_timeline_after_the_messages_changes_nothing_but_adds_the_retries():
    run = _report()
    live = fold_events(run.events, decoder=DECODE)
    both = fold_events([*run.events, run.timeline(retries={"s2": 1})], decoder=DECODE)
    assert sorted((s.name, s.start_ns, s.end_ns, s.span_id) for s in both.spans) == sorted(
        (s.name, s.start_ns, s.end_ns, s.span_id) for s in live.spans
    )
    assert both.span("step render").attributes["workflow.task.attempt"] == 2


def test_the_same_message_twice_is_one_event():
    run = Phase10Run("x").started().after(1).completed()
    folded = fold_events(run.events + run.events, decoder=DECODE)
    assert len(folded.runs) == 1 and folded.root.status is SpanStatus.OK


def test_an_execution_cancelled_that_carries_on_ends_at_its_cancellation_and_shows_its_later_completion():
    # The engine's cancel marks the execution cancelled and says so, but does not stop it: its
    # steps go on and it is then told completed (backend/services/workflows/engine.py).
    run = Phase10Run("r").started(1).step_started("s1", "a").after(100).cancelled()
    run.after(900).step_completed("s1", 1.0).after(5).completed()
    folded = fold_events([*run.events, run.timeline()], decoder=DECODE)
    root = folded.root
    assert root.end_ns == _ns(run.events[2]) and root.attributes["workflow.execution.result"] == "cancellation"
    (later,) = [e for e in root.events if e.name == "workflow_completed"]
    assert later.time_ns == _ns(run.events[-1]) and later.attributes["workflow.execution.result"] == "success"
    step = folded.span("step a")
    assert step.end_ns == _ns(run.events[3]) and step.status is SpanStatus.OK


class _Live:
    """One run as a bridge meets it: each message taken in when it is sent, settled when due."""

    def __init__(self, decoder: Phase10Decoder = DECODE) -> None:
        self.policy = Policy()
        self.decoder = decoder
        self.state: RunState | None = None
        self.due: float | None = None
        self.admissions: list[Admission] = []
        self.sent: list[SpanRecord] = []
        self.active = 0  # the run's share of workflow.execution.active
        self.observed: list[Observation] = []

    def _count(self, observations: list[Observation]) -> None:
        self.active += sum(int(o.value) for o in observations if o.instrument == "workflow.execution.active")
        self.observed += observations

    def take(self, messages: list[dict], at_s: float | None = None) -> None:
        """Each message taken in at its own time, or at `at_s` (a timeline, which has none of its own)."""
        for message in messages:
            decoded = self.decoder(message)
            for record in decoded if isinstance(decoded, list) else [decoded]:
                now = at_s if at_s is not None else _ns(message) / 1e9
                step = apply(self.state, self.due, record, now, self.policy)
                self.state, self.due = step.state, step.due  # type: ignore[assignment]
                self.admissions.append(step.admission)
                self._count(step.observations)

    def settle_when_due(self, until_s: float) -> list[SpanRecord]:
        """Settle at each due time up to `until_s`, as the settle loop does: the spans sent."""
        out: list[SpanRecord] = []
        while self.state is not None and self.due is not None and self.due <= until_s:
            step = settle_run(self.state, self.due, self.policy)
            self.state, self.due = step.state, step.due  # type: ignore[assignment]
            out += step.spans
            self._count(step.observations)
        self.sent += out
        return out


AT_END = Phase10Decoder(Phase10Options(service="agents", env="prod", timeline_at_end=True))


def test_a_run_told_ended_waits_for_the_timeline_fetched_at_its_end_for_the_retries_only_it_tells():
    # No live message tells a retry (issue 7): the follower fetches each execution's timeline as it is told
    # ended, and the run waits for it as for a gap: its trace is then the timeline's, retries and all.
    run = _report()
    ended_at = _ns(run.events[-1]) / 1e9
    live = _Live(AT_END)
    live.take(run.events)
    assert live.settle_when_due(ended_at + 5) == []  # all of it waits for the timeline

    live.take([run.timeline(retries={"s2": 2})], at_s=ended_at + 6)
    sent = {s.name: s for s in live.settle_when_due(ended_at + 10)}
    assert sorted(sent) == ["step fetch", "step render", "step s3", "workflow nightly-report"]
    assert sent["step render"].attributes["workflow.task.attempt"] == 3
    assert [e.name for e in sent["step render"].events].count("retry.scheduled") == 2
    retries = [o for o in live.observed if o.instrument == "workflow.task.retries"]
    assert sum(o.value for o in retries) == 2 and {dict(o.attributes)["workflow.task.name"] for o in retries} == {
        "render"
    }


def test_a_step_sent_before_its_run_ended_has_its_retries_told_on_the_root():
    # A long run's steps are sent as they end; the timeline comes at its end: what it adds of a step that
    # has left is told on the run's root, and counted.
    run = Phase10Run("nightly-report").started(2).step_started("s1", "fetch", 1, "http").after(800)
    run.step_completed("s1", 0.8).after(60_000).step_started("s2", "render", 2).after(300).step_completed("s2", 0.3)
    run.after(1).completed()
    ended_at = _ns(run.events[-1]) / 1e9
    live = _Live(AT_END)
    live.take(run.events[:3])
    assert [s.name for s in live.settle_when_due(ended_at - 30)] == ["step fetch"]
    live.take(run.events[3:])
    assert live.settle_when_due(ended_at + 5) == []  # the rest waits for the timeline
    live.take([run.timeline(retries={"s1": 1})], at_s=ended_at + 6)
    sent = {s.name: s for s in live.settle_when_due(ended_at + 10)}
    assert sorted(sent) == ["step render", "workflow nightly-report"]
    assert [e.name for e in sent["workflow nightly-report"].events].count("retry.scheduled") == 1
    assert sum(o.value for o in live.observed if o.instrument == "workflow.task.retries") == 1


def test_a_run_whose_timeline_never_comes_is_sent_once_the_gap_grace_has_passed():
    run = _report()
    ended_at = _ns(run.events[-1]) / 1e9
    live = _Live(AT_END)
    live.take(run.events)
    live.settle_when_due(ended_at + 14)
    assert "workflow nightly-report" not in [s.name for s in live.sent]
    live.settle_when_due(ended_at + 16)
    assert "workflow nightly-report" in [s.name for s in live.sent]  # as it was before: no retries, sent


def test_a_cancellation_awaits_no_timeline_the_execution_goes_on_and_the_stream_tells_it():
    run = Phase10Run("r").started(1).step_started("s1", "a").after(100).step_completed("s1").after(1).cancelled()
    (state,) = fold_events(run.events, settle_at_ns=None, decoder=AT_END).runs.values()
    assert not state.awaits_summary


def test_a_cancelled_execution_stays_open_for_the_steps_that_go_on_and_is_sent_when_told_completed():
    # Steps that end after the cancellation, well past the settle window, were late: counted and lost.
    run = Phase10Run("r").started(2).step_started("s1", "research", 1, "agent").after(100).cancelled()
    cancelled_at = _ns(run.events[-1]) / 1e9
    live = _Live()
    live.take(run.events)
    assert live.settle_when_due(cancelled_at + 60) == []  # research still running: nothing ends at the cancel
    assert live.state is not None and not live.state.closed
    # Still running: counted active, and listed among the open runs as executing.
    assert live.active == 1
    header = journal.decode(live.state.run.state_key, journal.encode_header(live.state), [])
    assert counted_under(header) == "executing"  # and so counted again after a restart
    listed = overview(live.state, int(cancelled_at * 1e9) + 60 * 10**9, 0)
    assert listed is not None and listed.state == "executing" and listed.last_event == "workflow_cancelled"

    told = len(run.events)
    run.after(120_000).step_completed("s1", 120.1).after(5).step_started("s2", "write", 2).after(30_000)
    run.step_completed("s2", 30.0).after(3).completed()
    live.take(run.events[told:])
    live.settle_when_due(_ns(run.events[-1]) / 1e9 + 10)
    assert set(live.admissions) == {Admission.ACCEPTED} and live.active == 0
    by_name = {s.name: s for s in live.sent}
    assert sorted(by_name) == ["step research", "step write", "workflow r"]
    root = by_name["workflow r"]
    assert root.end_ns == _ns(run.events[2]) and root.attributes["workflow.execution.result"] == "cancellation"
    assert [e.name for e in root.events if e.name == "workflow_completed"] == ["workflow_completed"]
    research = by_name["step research"]
    assert research.end_ns == _ns(run.events[3]) and research.status is SpanStatus.OK
    assert research.attributes["workflow.task.result"] == "success"


def test_a_step_that_ends_after_the_cancellation_is_sent_when_it_ends_before_the_run_is_told_completed():
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).cancelled().after(4_000)
    live = _Live()
    live.take(run.events)
    told = len(run.events)
    live.take(run.step_completed("s1", 4.1).events[told:])
    (step,) = live.settle_when_due(_ns(run.events[-1]) / 1e9 + 5)
    assert step.name == "step a" and step.end_ns == _ns(run.events[-1])


def test_a_cancelled_execution_told_nothing_more_ends_at_its_cancellation_after_the_cancel_grace():
    # The engine's task cancelled (a shutdown) says `workflow_cancelled` and nothing after it.
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).cancelled()
    cancelled_at = _ns(run.events[-1])
    live = _Live()
    live.take(run.events)
    grace_s = live.policy.settle.cancel_grace_ns / 1e9
    assert live.settle_when_due(cancelled_at / 1e9 + grace_s - 1) == []
    spans = {s.name: s for s in live.settle_when_due(cancelled_at / 1e9 + grace_s + 1)}
    assert spans["workflow r"].end_ns == spans["step a"].end_ns == cancelled_at
    assert spans["step a"].attributes["workflow.task.result"] == "interrupted"
    assert live.state is not None and live.state.closed and live.active == 0


def test_only_a_cancellation_goes_on_and_an_end_told_first_is_not_undone_by_a_cancellation_after_it():
    ended = Phase10Run("r").started().step_started("s1", "a").after(10).step_completed("s1").completed()
    for messages in (ended.events, [*ended.events, {**ended.events[-1], "event_type": "workflow_cancelled"}]):
        live = _Live()
        live.take(messages)
        assert live.state is not None and not live.state.carrying_on
    cancelled = Phase10Run("r").started().after(10).cancelled()
    assert DECODE(cancelled.events[-1]).fact.carries_on  # type: ignore[union-attr]
    told_by_timeline = DECODE(cancelled.timeline())
    assert isinstance(told_by_timeline, list) and not any(r.fact.carries_on for r in told_by_timeline)


def test_a_step_cancelled_with_its_run_ends_with_the_run_as_a_cancellation_not_a_failure():
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).cancelled()
    timeline = run.timeline()
    timeline["step_timeline"][0] |= {"status": "cancelled", "completed_at": None}  # as the engine leaves it
    folded = fold_events([timeline], decoder=DECODE)
    step = folded.span("step a")
    assert step.end_ns == folded.root.end_ns == _ns(run.events[-1])
    assert step.status is SpanStatus.UNSET and step.attributes["workflow.task.result"] == "cancellation"
    assert [e.name for e in step.events] == []


def test_an_execution_the_timeline_says_timed_out_ends_in_error_as_a_timeout():
    run = Phase10Run("r").started(1).step_started("s1", "a").after(100).step_completed("s1", 0.1).after(5)
    timeline = run.timeline() | {"status": "timeout", "completed_at": run.now.isoformat()}
    root = fold_events([timeline], decoder=DECODE).root
    assert root.end_ns - root.start_ns == 105 * 10**6
    assert root.status is SpanStatus.ERROR and root.status_message == "workflow timed out"
    assert root.attributes["workflow.execution.result"] == "timeout" and root.attributes["error.type"] == "timeout"


def test_a_step_the_timeline_lists_as_pending_never_ran_and_makes_no_span():
    # The engine writes a step's row, with a `started_at`, when its level comes; one whose
    # dependencies failed stays `pending` and never runs.
    run = Phase10Run("r").started(2).step_started("s1", "a").after(100).step_failed("s1", "boom", 0.1).after(5)
    timeline = run.after(1).failed().timeline()
    timeline["step_timeline"].append(
        timeline["step_timeline"][0] | {"step_id": "s2", "step_name": "b", "status": "pending"}
    )
    folded = fold_events([timeline], decoder=DECODE)
    assert sorted(s.name for s in folded.spans) == ["step a", "workflow wf-report"]


def test_an_agent_step_names_its_agent_with_the_genai_convention():
    run = Phase10Run("r").started().step_started("s1", "plan", 1, "agent", agent_id="agent-7").after(5)
    run.step_completed("s1").after(1).step_started("s2", "notify", 2).after(5).step_completed("s2").completed()
    folded = fold_events(run.events, decoder=DECODE)
    assert folded.span("step plan").attributes["gen_ai.agent.id"] == "agent-7"
    assert "gen_ai.agent.id" not in folded.span("step notify").attributes  # the engine sends null


def test_an_error_message_is_kept_to_what_a_span_carries():
    run = Phase10Run("x").started().step_started("s1", "a", 1).after(5).step_failed("s1", "e" * 10_000, 0.1)
    run.after(1).failed("f" * 10_000, "T" * 10_000)
    records = [DECODE(raw) for raw in run.events]
    errors = [r.fact.error for r in records if r is not None and r.fact.error is not None]
    assert [(len(e.message), len(e.type or "")) for e in errors] == [(4096, 0), (4096, 4096)]


def test_names_of_a_megabyte_are_kept_to_what_a_span_attribute_carries():
    run = Phase10Run("w" * 1_000_000).started().step_started("s1", "n" * 1_000_000, 1).after(5).step_completed("s1")
    started, step = DECODE(run.events[0]), DECODE(run.events[1])
    assert started is not None and step is not None
    assert (started.run.name, step.fact.label) == ("w" * 4096, "n" * 4096)


def test_a_live_message_tells_its_executions_workspace_and_nothing_else_does():
    run = Phase10Run("triage", workspace_id="ws-2").started(1)
    assert workspace_of(run.events[0]) == "ws-2"
    assert workspace_of(run.timeline()) is None  # a timeline names none
    assert workspace_of({"event": "workflow_started", "data": {"execution_id": "e"}}) is None
    assert workspace_of("not a message") is None


@pytest.mark.parametrize(
    ("document", "told"),
    [
        ({"x": 1}, ("execution_id", "Field required")),
        # A run of no steps, whose timeline may leave `step_timeline` out: it was ignored as a message was.
        ({"execution_id": "e1", "status": "completed", "started_at": "2026-11-30T08:00:00Z"}, None),
        ([], ("", "a timeline must be a JSON object, not an array")),
    ],
)
def test_a_document_imported_as_a_timeline_is_one_or_is_rejected_naming_what_it_lacks(document, told):
    # As a WebSocket message, a JSON object of no message type is ignored: `import-timeline` of a wrong file
    # (or of an error body fetched for a timeline) said "1 timeline, 0 events" and exited 0.
    if told is None:
        assert [r.fact.kind for r in DECODE.timeline_document(document)][:1] == ["run.started"]
        return
    with pytest.raises(DecodeError) as raised:
        DECODE.timeline_document(document)
    assert (raised.value.field, raised.value.reason) == told
