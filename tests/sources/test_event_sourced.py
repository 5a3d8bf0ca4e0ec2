"""The event-sourced runtime's stream entries become traces: states as spans, tasks, triggers, no completion event."""

import itertools
from datetime import datetime

import orjson
import pytest
from fold_harness import FAR_FUTURE_NS, fold_events, settle_all

from otel_bridge import trace_id_for
from otel_bridge.correlate.outputs import SpanKind, SpanStatus
from otel_bridge.correlate.runs import SettlePolicy, settle
from otel_bridge.ids import RunIdentity, root_span_id
from otel_bridge.producer.event_sourced import Execution, as_row, trigger
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.wire import CONTROL_CHARACTERS, DecodeError

DECODE = EventSourcedDecoder(EventSourcedOptions(service="crm", env="prod"))


def _ns(entry: dict) -> int:
    return int(datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() * 1000) * 1_000_000


def _onboarding() -> Execution:
    run = Execution("onboarding", tenant="acme").started({"email": "a@b.c"}).after(20)
    run.moved("collecting_docs").after(5).submitted("document_uploaded", user="u-7", kind="passport")
    run.after(30).task_created("t-1", "kyc_review").after(2000).task_completed("t-1", to="approved", user="u-9")
    return run.after(10).ended("completed")


def test_each_state_is_a_span_from_the_move_into_it_to_the_move_out():
    run = _onboarding()
    folded = fold_events(run.events, decoder=DECODE)
    root = folded.root
    assert root.name == "workflow onboarding" and root.kind is SpanKind.SERVER
    assert (root.start_ns, root.end_ns) == (_ns(run.events[0]), _ns(run.events[-1]))
    assert root.status is SpanStatus.OK and root.attributes["workflow.execution.result"] == "success"
    assert root.attributes["tenant.id"] == "acme" and root.attributes["workflow.execution.id"] == run.execution_id
    states = {s.name: s for s in folded.spans if s.name.startswith("state ")}
    assert set(states) == {"state initial", "state collecting_docs", "state approved"}
    collecting = states["state collecting_docs"]
    assert (collecting.start_ns, collecting.end_ns) == (_ns(run.events[1]), _ns(run.events[4]))
    assert collecting.attributes["workflow.state.from"] == "initial"
    assert states["state approved"].end_ns == root.end_ns


def test_an_event_that_moved_nothing_is_an_event_of_the_state_it_happened_in():
    folded = fold_events(_onboarding().events, decoder=DECODE)
    (event,) = folded.span("state collecting_docs").events
    assert event.name == "document_uploaded"
    assert event.attributes["enduser.id"] == "u-7"
    assert event.attributes["workflow.event.payload"] == '["kind"]'  # keys only: payloads hold personal data
    assert "document_uploaded" not in [e.name for e in folded.root.events]


def test_a_human_task_is_a_span_from_created_to_complete():
    run = _onboarding()
    task = fold_events(run.events, decoder=DECODE).span("task kyc_review")
    assert (task.start_ns, task.end_ns) == (_ns(run.events[3]), _ns(run.events[4]))
    assert task.attributes["workflow.human_task.id"] == "t-1"


def test_terminal_states_end_the_run_case_insensitively_with_their_result():
    failed = Execution("payout").started().after(5).moved("paying").after(5).ended("FAILED", error="card declined")
    folded = fold_events(failed.events, decoder=DECODE)
    assert folded.root.status is SpanStatus.ERROR and folded.root.status_message == "card declined"
    # It failed in a state, not in a step: no empty workflow.task.name on the root, nor on the error count.
    assert "workflow.task.name" not in folded.root.attributes
    (error,) = [o for o in folded.observations if o.instrument == "workflow.execution.errors"]
    assert "workflow.task.name" not in dict(error.attributes) and error.value == 1
    cancelled = Execution("payout").started().after(5).ended("terminated")
    root = fold_events(cancelled.events, decoder=DECODE).root
    assert root.attributes["workflow.execution.result"] == "cancellation"
    assert root.status is SpanStatus.UNSET


def test_a_payload_saying_is_complete_ends_the_run():
    run = Execution("quick").started().after(5).submitted("all_done", isComplete=True)
    assert fold_events(run.events, decoder=DECODE).root.attributes["workflow.execution.result"] == "success"


def test_an_execution_without_an_end_stays_open():
    run = Execution("pending").started().after(5).moved("waiting")
    folded = fold_events(run.events, decoder=DECODE)
    assert [s.name for s in folded.spans] == ["state initial"]


def test_a_trigger_is_its_own_trace_and_the_runs_it_started_link_to_it():
    inbound = trigger("INBOUND_EMAIL_RECEIVED", tenant="acme", subject="hello")
    run = Execution("triage", tenant="acme").started({"eventId": inbound["event_id"]}).after(5).ended("completed")
    folded = fold_events([inbound, *run.events], decoder=DECODE)
    (trigger_span,) = [s for s in folded.spans if s.name == "trigger INBOUND_EMAIL_RECEIVED"]
    assert trigger_span.kind is SpanKind.PRODUCER and trigger_span.parent_span_id is None
    identity = RunIdentity("event-sourced", "prod", "crm", inbound["event_id"], "acme")
    assert trigger_span.trace_id == trace_id_for("event-sourced", "prod", "crm", inbound["event_id"], "acme")
    root = next(s for s in folded.spans if s.name == "workflow triage")
    assert root.remote_links == [(trigger_span.trace_id, root_span_id(identity))]


def test_one_trace_per_tenant_and_execution():
    a = Execution("same", tenant="acme", execution_id="exec-1").started().after(1).ended()
    b = Execution("same", tenant="globex", execution_id="exec-1").started().after(1).ended()
    roots = [s for s in fold_events(a.events + b.events, decoder=DECODE).spans if s.parent_span_id is None]
    assert len({r.trace_id for r in roots}) == 2


def test_metrics_count_transitions_and_time_in_state_not_tenants():
    folded = fold_events(_onboarding().events, decoder=DECODE)
    moves = folded.metric("workflow.state.transitions", **{"workflow.state.to": "collecting_docs"})
    assert moves == [1]
    (first,) = [dict(o.attributes) for o in folded.observations
                if dict(o.attributes).get("workflow.state.to") == "initial"]  # fmt: skip
    assert "workflow.state.from" not in first  # where it came from is none, not an empty name
    assert folded.metric("workflow.state.duration", **{"workflow.state.name": "collecting_docs"})
    assert folded.metric("workflow.execution.duration", **{"workflow.execution.result": "success"})
    assert sum(folded.metric("workflow.execution.active")) == 0
    assert all("tenant.id" not in dict(o.attributes) for o in folded.observations)


def test_moves_told_before_their_executions_start_are_counted_under_its_name_once_the_start_comes():
    # Two bridges of one consumer group each take part of an execution's entries, and a claimed entry
    # comes late: the start, which alone names the workflow, may be stored after a move.
    run = Execution("onboarding").started().after(5).moved("review").after(5).ended("completed")
    start, *moves = run.events
    folded = fold_events([*moves, start], decoder=DECODE)
    counted = [(dict(o.attributes)["workflow.definition.name"], o.value) for o in folded.observations
               if o.instrument == "workflow.state.transitions"]  # fmt: skip
    assert counted == [("onboarding", 1)] * 3  # into initial, review, completed: none under no name


def test_an_execution_never_named_counts_its_moves_under_no_name_as_it_closes_not_never():
    run = Execution("onboarding").started().after(5).moved("review").after(5).ended("completed")
    folded = fold_events(run.events[1:], settle_at_ns=None, decoder=DECODE)  # its start lost for good
    assert not folded.metric("workflow.state.transitions")
    settle_all(folded, FAR_FUTURE_NS)
    assert folded.metric("workflow.state.transitions", **{"workflow.definition.name": ""}) == [1, 1]


def test_table_rows_decode_like_stream_entries():
    run = _onboarding()
    assert (
        fold_events([as_row(e) for e in run.events], decoder=DECODE).names()
        == fold_events(run.events, decoder=DECODE).names()
    )


def test_rows_of_a_table_whose_payload_column_is_text_decode_the_same():
    run = _onboarding()
    quoted = [as_row(e) | {"payload": orjson.dumps(as_row(e)["payload"]).decode()} for e in run.events]
    assert fold_events(quoted, decoder=DECODE).names() == fold_events(run.events, decoder=DECODE).names()
    with pytest.raises(DecodeError, match="payload is not valid JSON"):
        DECODE(as_row(run.events[0]) | {"payload": "{broken"})


def test_a_bad_entry_names_its_field():
    entry = Execution().started().events[0] | {"payload_json": "{broken"}
    try:
        DECODE(entry)
    except DecodeError as exc:
        assert "payload_json" in exc.reason
    else:
        raise AssertionError("a broken payload_json was accepted")
    try:
        DECODE(Execution().started().events[0] | {"execution_id": ""})
    except DecodeError as exc:
        assert exc.field == "execution_id"
    else:
        raise AssertionError("an execution event without an execution was accepted")
    try:
        DECODE(Execution().started().events[0] | {"execution_id": "a\x1fb"})
    except DecodeError as exc:
        assert (exc.field, exc.reason) == ("execution_id", CONTROL_CHARACTERS)
    else:
        raise AssertionError("an execution id holding the field separator was accepted")


def test_a_stream_entry_as_redis_hands_it_decodes_whatever_its_bytes():
    entry = {k.encode(): v.encode() for k, v in Execution().started().events[0].items()}
    # A field not UTF-8 at all, name and value, once a traceback in the log ("could not be decoded").
    assert DECODE(entry | {b"extra \xff": b"\xfe"}).fact.name == "workflow.started"
    assert DECODE(entry | {b"execution_id": b"exec-\xff"}).run.run_id == "exec-\ufffd"


def test_a_run_whose_start_or_a_middle_move_is_still_in_flight_waits_for_it():
    run = Execution("flow").started().after(5).moved("working").after(5).ended("completed")
    policy = SettlePolicy(gap_grace_ns=15 * 10**9)
    for missing in (0, 1):  # the start; the move into "working"
        told = [e for i, e in enumerate(run.events) if i != missing]
        (state,) = fold_events(told, settle_at_ns=None, decoder=DECODE).runs.values()
        assert settle(state, state.ended_seen_ns + 10**9, policy).held, missing
    (whole,) = fold_events(run.events, settle_at_ns=None, decoder=DECODE).runs.values()
    assert not settle(whole, whole.ended_seen_ns + 10**9, policy).held


@pytest.mark.parametrize("ids", list(itertools.permutations(["e-1", "e-2", "e-3", "e-4"])))
def test_what_happened_in_one_millisecond_is_ordered_by_the_states_it_names_whatever_the_ids(ids):
    # A workflow that moves on at once tells its moves in one millisecond; their ids are random, and the
    # stream's order is in no event: `initial → review` comes before `review → approved`, and an event
    # submitted in between (to_state == from_state names its state) belongs to the state it names.
    run = Execution("approval").started().after(10).moved("review").submitted("reviewed")
    run.moved("approved").submitted("noted").after(3_600_000).ended("completed")
    events = [dict(e) for e in run.events]
    for event, given in zip(events[1:5], ids, strict=True):
        event["event_id"] = given
    (state,) = fold_events(events, settle_at_ns=None, decoder=DECODE).runs.values()
    folded = fold_events(events, decoder=DECODE)

    review, approved = folded.span("state review"), folded.span("state approved")
    assert review.start_ns == review.end_ns == approved.start_ns == _ns(events[1])
    assert approved.end_ns == folded.root.end_ns == _ns(events[-1])  # the hour was spent approved
    assert approved.attributes["workflow.state.from"] == "review"
    assert [e.name for e in review.events] == ["reviewed"] and [e.name for e in approved.events] == ["noted"]
    # Nothing seems missing between the moves: the run is sent as it ends, not held for a move in flight.
    assert not settle(state, state.ended_seen_ns + 10**9, SettlePolicy(gap_grace_ns=15 * 10**9)).held


def test_an_error_message_is_kept_to_what_a_span_carries():
    run = Execution("payout").started().after(5).ended("failed", error="e" * 10_000)
    root = fold_events(run.events, decoder=DECODE).root
    assert root.status_message == "e" * 4096


def test_names_and_states_of_a_megabyte_are_kept_to_what_a_span_attribute_carries():
    run = Execution("w" * 1_000_000).started().after(5).moved("s" * 1_000_000, event_name="e" * 1_000_000)
    started, moved = DECODE(run.events[0]), DECODE(run.events[1])
    assert started.run.name == "w" * 4096
    assert (moved.fact.name, moved.fact.entered_state) == ("e" * 4096, "s" * 4096)
