"""The spans of one run, computed from the set of its facts.

A pure function of the fact set (sorted by time, then event id), so any arrival
order of the same facts gives the same spans: that is what makes the fold
indifferent to disorder and replays.
"""

import re
from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime

from msgspec import Struct

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import SpanEvent, SpanKind, SpanRecord, SpanRole, SpanStatus
from otel_bridge.ids import RunIdentity, attempt_span_id, root_span_id, run_trace_id, span_id_for
from otel_bridge.lifecycle import (
    KIND,
    NOTE_KINDS,
    OUTCOME,
    AttributeValue,
    ErrorInfo,
    Fact,
    RunKind,
    RunRef,
    by_order,
)

_ROOT_EVENT_KINDS = frozenset(
    {KIND.RUN_QUEUED, KIND.RUN_PAUSED, KIND.RUN_RESUMED, KIND.SLEEP_STARTED, KIND.SLEEP_ENDED} | NOTE_KINDS
)
_TASK_KINDS = frozenset({KIND.TASK_OPENED, KIND.TASK_CLOSED})
# Facts that end an attempt as the reason its workflow failed (a scheduled retry does not).
_FAILING_KINDS = frozenset({KIND.RETRIES_EXHAUSTED, KIND.TIMEOUT_EXCEEDED})
_RUN_START_KINDS = frozenset({KIND.RUN_QUEUED, KIND.RUN_STARTED})
# Facts after which a run is due to go on (a queue, a pause until a time): only they can make it overdue.
_WAIT_KINDS = frozenset({KIND.RUN_QUEUED, KIND.RUN_PAUSED})
_JS_ERROR_NAME = re.compile(r"^\s*([A-Za-z_$][\w$.]*)(?::|$)")


class _Attempt(Struct):
    step: str
    number: int
    start: Fact | None = None
    end: Fact | None = None
    notes: list[Fact] = []
    # Its failure told after a note had ended it: the engine's workflow-v2 (and its npm package) sends
    # `retry.exhausted`, then `step.failed` for the same attempt with the real error and stack.
    failure: Fact | None = None


def sorted_facts(facts: list[Fact]) -> list[Fact]:
    return sorted(facts, key=by_order)


def chained(moves: Iterable[Fact]) -> list[Fact]:
    """A state machine's moves in order: by time, then event id, and those of one instant in the order their
    states chain (each leaves the state the one before it entered).

    A workflow that moves on at once (`draft → review → approved` in one tick) tells its moves in one
    millisecond, and nothing in its events says which came first but their states: their ids are random
    (the stream's own order is not in an event, nor in the table's rows). Ordered by id, such a run was
    shown half the time sitting in `review` until its next move. Among moves of one instant, the one leaving
    the state entered last goes next; failing one, one that leaves no state another of them enters; then the id.
    """
    moves = sorted(moves, key=by_order)
    out: list[Fact] = []
    current: str | None = None
    i, n = 0, len(moves)
    while i < n:
        j = i + 1
        while j < n and moves[j].time_ns == moves[i].time_ns:
            j += 1
        tied = moves[i:j] if j - i == 1 else _chain(moves[i:j], current)
        out += tied
        current = next((m.entered_state for m in reversed(tied) if m.entered_state is not None), current)
        i = j
    return out


def _chain(tied: list[Fact], current: str | None) -> list[Fact]:
    left = list(tied)
    ordered: list[Fact] = []
    while left:
        pick = next((m for m in left if m.attributes.get(c.WORKFLOW_STATE_FROM) == current), None)
        if pick is None:
            entered = {m.entered_state for m in left}
            pick = next((m for m in left if m.attributes.get(c.WORKFLOW_STATE_FROM) not in entered), left[0])
        left.remove(pick)
        ordered.append(pick)
        current = pick.entered_state if pick.entered_state is not None else current
    return ordered


def build_spans(
    run: RunRef,
    facts: list[Fact],
    emitted: dict[str, int],
    incomplete_at_ns: int | None = None,
    sleep_spans: bool = True,
    overdue_grace_ns: int | None = None,
    attempt_ids: dict[tuple[str, int], bytes] | None = None,
    close_reason: str = "",
) -> list[SpanRecord]:
    """Every span the facts describe, but those already sent; a span with `end_ns` None is still open.

    `emitted` maps span ids (hex) already sent to the arrival sequence number at
    which they left: facts that arrived later and belong to them are shown as
    events of the root span instead. `incomplete_at_ns` closes a run that never
    ended (max_open, or by hand: `close_reason`, said on the root) at that time. `attempt_ids`: the
    attempts' span ids known so far, kept up here (they are hashes of the run and the attempt, the same
    at every call).
    """
    if not facts:
        return []
    ordered = sorted_facts(facts)
    identity = run.identity
    trace_id = run_trace_id(identity)
    root_id = root_span_id(identity)

    if run.kind is RunKind.TRIGGER:
        return [_trigger_span(run, trace_id, root_id, ordered[0])]
    ended = next((f for f in ordered if f.kind is KIND.RUN_ENDED), None)
    starts = [f for f in ordered if f.kind in _RUN_START_KINDS]
    root_start = starts[0].time_ns if starts else ordered[0].time_ns
    root_end = ended.time_ns if ended else incomplete_at_ns

    attempts = _attempts(ordered)
    # Each attempt's span id is a hash: computed once here, for its span, its successor's link and late facts.
    if attempt_ids is None:
        ids = {key: attempt_span_id(identity, *key) for key in attempts}
    else:
        # Not `attempts.keys() - attempt_ids.keys()`: that walks every attempt of the run ever seen.
        for key in attempts:
            if key not in attempt_ids:
                attempt_ids[key] = attempt_span_id(identity, *key)
        ids = {key: attempt_ids[key] for key in attempts}
    # An attempt whose span was sent is not built again: a run of 10,000 attempts settled at every
    # window built them all each time to send the few new ones (280 ms for 50 spans).
    spans = [
        _attempt_span(identity, trace_id, root_id, a, attempts, ids, ended, root_end)
        for key, a in attempts.items()
        if not emitted or ids[key].hex() not in emitted
    ]
    # Most runs have no sleeps, states, tasks or waits: their passes over the facts are skipped.
    kinds = {f.kind for f in ordered}
    if sleep_spans and KIND.SLEEP_STARTED in kinds:
        spans.extend(_sleep_spans(identity, trace_id, root_id, ordered, root_end))
    told: set[str] = set()
    if any(f.entered_state is not None for f in ordered):
        state_spans, told = _state_spans(identity, trace_id, root_id, ordered, root_end)
        spans.extend(state_spans)
    if not kinds.isdisjoint(_TASK_KINDS):
        spans.extend(_task_spans(identity, trace_id, root_id, ordered, root_end))
    late = _late_facts(ordered, emitted, ids) if emitted else []
    root_facts = [f for f in ordered if f.event_id not in told] if told else ordered
    root = _root_span(run, trace_id, root_id, root_facts, root_start, root_end, ended, attempts, late, close_reason)
    if overdue_grace_ns is not None and not kinds.isdisjoint(_WAIT_KINDS):
        overdue = overdue_events(ordered, overdue_grace_ns)
        if overdue:
            root.events = sorted(root.events + overdue, key=_at)
    spans.append(root)
    return spans


def _attempts(ordered: list[Fact]) -> dict[tuple[str, int], _Attempt]:
    attempts: dict[tuple[str, int], _Attempt] = {}
    for f in ordered:
        if f.kind is KIND.ATTEMPT_STARTED and f.step is not None and f.attempt is not None:
            attempts.setdefault((f.step, f.attempt), _Attempt(f.step, f.attempt, start=f))
    for f in ordered:
        closes = ends_attempt(f)
        step_note = f.kind in NOTE_KINDS and f.step is not None
        if not (closes or step_note):
            continue
        key = _attempt_of(f, attempts)
        if key is None:
            continue
        attempt = attempts.get(key)
        if attempt is None:
            if not closes:
                continue
            # A completion whose start was never seen (evicted invocation, lost POST).
            attempt = attempts[key] = _Attempt(key[0], key[1])
        if step_note:
            attempt.notes.append(f)
        if closes:
            if attempt.end is None:
                attempt.end = f
            elif attempt.end.kind is not KIND.ATTEMPT_ENDED and f.kind is KIND.ATTEMPT_ENDED:
                attempt.failure = f
    return {key: attempts[key] for key in sorted(attempts)}


def ends_attempt(f: Fact) -> bool:
    """Whether `f` ends an attempt: its end (a cached one is not an attempt), or a note that closes
    one. One naming no attempt (`retry.exhausted`, `timeout.exceeded`) ends the step's latest."""
    return (f.kind is KIND.ATTEMPT_ENDED and not f.cached) or (f.kind in NOTE_KINDS and f.closes_attempt is not None)


def _attempt_of(f: Fact, attempts: dict[tuple[str, int], _Attempt]) -> tuple[str, int] | None:
    if f.step is None:
        return None
    if f.attempt is not None:
        return (f.step, f.attempt)
    # retry.exhausted, timeout.set and timeout.exceeded name a step, not an
    # attempt: they belong to the latest attempt of that step started by then.
    candidates = [
        a for a in attempts.values() if a.step == f.step and a.start is not None and a.start.time_ns <= f.time_ns
    ]
    open_ones = [a for a in candidates if a.end is None]
    pick = max(open_ones or candidates, key=lambda a: a.number, default=None)
    return (pick.step, pick.number) if pick else None


def _error_type(error: ErrorInfo | None) -> str:
    if error is None:
        return c.OVERFLOW_VALUE
    if error.type:
        return error.type
    if error.stacktrace and (m := _JS_ERROR_NAME.match(error.stacktrace)):
        return m.group(1)
    return c.OVERFLOW_VALUE


def _exception_event(time_ns: int, message: str, error: ErrorInfo | None) -> SpanEvent:
    attributes: dict[str, AttributeValue] = {c.EXCEPTION_MESSAGE: message}
    # `_OTHER` is error.type's word for a class not told; exception.type names a class or is left out
    # (the exception conventions want it only where there is no message, and the message is always here).
    if (told := _error_type(error)) != c.OVERFLOW_VALUE:
        attributes[c.EXCEPTION_TYPE] = told
    if error is not None and error.stacktrace:
        attributes[c.EXCEPTION_STACKTRACE] = error.stacktrace
    return SpanEvent(c.EXCEPTION_EVENT, time_ns, attributes)


def _attempt_span(
    run: RunIdentity,
    trace_id: bytes,
    root_id: bytes,
    a: _Attempt,
    attempts: dict[tuple[str, int], _Attempt],
    ids: dict[tuple[str, int], bytes],
    ended: Fact | None,
    root_end: int | None,
) -> SpanRecord:
    end = a.end
    if a.start is not None:
        start_ns = a.start.time_ns
    else:
        assert end is not None
        start_ns = max(end.time_ns - int((end.duration_ms or 0) * 1_000_000), 0)
        previous = attempts.get((a.step, a.number - 1))
        if previous is not None and previous.end is not None:
            # durationMs runs from the first attempt's start: never reach back
            # before the previous attempt ended.
            start_ns = max(start_ns, previous.end.time_ns)
    start = a.start  # an attempt.started fact, when one arrived
    label = (start.label if start is not None else None) or (end.label if end is not None else None) or a.step
    # Retries a source tells of without their attempts (a summary's retry count) still count.
    untold = sum(1 for n in a.notes if n.kind is KIND.RETRY_SCHEDULED and n.closes_attempt is None)
    attributes: dict[str, AttributeValue] = dict(start.attributes) if start is not None else {}
    if attributes:
        attributes.pop(c.WORKFLOW_EVENT_ID, None)
    attributes[c.WORKFLOW_TASK_NAME] = label
    attributes[c.WORKFLOW_TASK_ATTEMPT] = a.number + untold
    attributes[c.WORKFLOW_TASK_CACHED] = False
    if end is not None and end.kind is KIND.ATTEMPT_ENDED and end.attributes:
        attributes.update({k: v for k, v in end.attributes.items() if k != c.WORKFLOW_EVENT_ID})
    events = [SpanEvent(n.name, n.time_ns, dict(n.attributes)) for n in a.notes]
    status, message = SpanStatus.UNSET, ""
    if end is not None:
        end_ns = max(end.time_ns, start_ns)
        if end.kind is KIND.ATTEMPT_ENDED and end.outcome is OUTCOME.SUCCESS:
            status = SpanStatus.OK
            attributes[c.WORKFLOW_TASK_RESULT] = c.RESULT_SUCCESS
        elif end.kind is KIND.ATTEMPT_ENDED and end.outcome is OUTCOME.SKIPPED:
            attributes[c.WORKFLOW_TASK_RESULT] = c.TASK_RESULT_SKIPPED
        elif end.kind is KIND.ATTEMPT_ENDED and end.outcome is OUTCOME.CANCELLATION:
            attributes[c.WORKFLOW_TASK_RESULT] = c.RESULT_CANCELLATION  # stopped, not failed: as a run cancelled
        else:
            status = SpanStatus.ERROR
            attributes[c.WORKFLOW_TASK_RESULT] = c.RESULT_FAILURE
            error = (
                end.error or (a.failure.error if a.failure is not None else None) or _run_error_for(ended, a, attempts)
            )
            message = _attempt_error_message(end, error)
            events.append(_exception_event(end_ns, message, error))
            attributes[c.ERROR_TYPE] = c.RESULT_TIMEOUT if _timed_out(end) else _error_type(error)
    elif root_end is not None:
        end_ns = max(root_end, start_ns)
        attributes[c.WORKFLOW_TASK_RESULT] = c.TASK_RESULT_INTERRUPTED
    else:
        end_ns = None
    links: list[bytes] = []
    remote_links: list[tuple[bytes, bytes]] = []
    if a.number > 1:
        previous_id = ids.get((a.step, a.number - 1))
        if previous_id is None and start is not None and start.links:
            # The attempt before ran in another trace (a retry of a failed run its operator asked for).
            other = followed(run, start.links[0])
            remote_links = [(run_trace_id(other), attempt_span_id(other, a.step, a.number - 1))]
        else:
            links = [previous_id or attempt_span_id(run, a.step, a.number - 1)]
    return SpanRecord(
        role=SpanRole.ATTEMPT,
        trace_id=trace_id,
        span_id=ids[(a.step, a.number)],
        parent_span_id=root_id,
        name=c.STEP_SPAN_PREFIX + label,
        kind=SpanKind.INTERNAL,
        start_ns=start_ns,
        end_ns=end_ns,
        status=status,
        status_message=message,
        attributes=attributes,
        events=sorted(events, key=_at) if len(events) > 1 else events,
        links=links,
        remote_links=remote_links,
    )


def _at(event: SpanEvent) -> int:
    return event.time_ns


def _timed_out(end: Fact) -> bool:
    return end.closes_attempt is OUTCOME.TIMEOUT or end.outcome is OUTCOME.TIMEOUT


def _run_error_for(ended: Fact | None, a: _Attempt, attempts: dict[tuple[str, int], _Attempt]) -> ErrorInfo | None:
    """The workflow's failure error, when it names this attempt (exhausted retries carry it only there)."""
    if ended is None or ended.error is None or ended.error.step != a.step:
        return None
    if ended.error.attempt is not None:
        return ended.error if ended.error.attempt == a.number else None
    last = max(n for (step, n) in attempts if step == a.step)
    return ended.error if a.number == last else None


def _attempt_error_message(end: Fact, error: ErrorInfo | None) -> str:
    if error is not None and error.message:
        return error.message
    if _timed_out(end):
        limit = end.attributes.get(c.WORKFLOW_TIMEOUT_MS)
        return f"timeout of {limit} ms exceeded" if limit is not None else "timeout exceeded"
    if end.kind is KIND.RETRIES_EXHAUSTED:
        return f"retries exhausted after {end.attributes.get(c.WORKFLOW_RETRY_ATTEMPTS)} attempts"
    if end.kind is KIND.RETRY_SCHEDULED:
        return "attempt failed, retry scheduled"
    return "step failed"


def _sleeps(ordered: list[Fact]) -> list[tuple[Fact, list[Fact], Fact | None]]:
    """Each sleep as (its start, its restarts, its end or None while it lasts).

    A sleeping run whose object was evicted and woken early starts its sleep again
    (a new resume time) before the one completion: a start while a sleep is still
    running is a restart of that sleep, not a second one.
    """
    sleeps: list[tuple[Fact, list[Fact], Fact | None]] = []
    current: tuple[Fact, list[Fact]] | None = None
    for f in ordered:
        if f.kind is KIND.SLEEP_STARTED:
            if current is None:
                current = (f, [])
            else:
                current[1].append(f)
        elif f.kind is KIND.SLEEP_ENDED and current is not None:
            sleeps.append((*current, f))
            current = None
    if current is not None:
        sleeps.append((*current, None))
    return sleeps


def _sleep_spans(
    run: RunIdentity, trace_id: bytes, root_id: bytes, ordered: list[Fact], root_end: int | None
) -> list[SpanRecord]:
    spans = []
    for sleep, restarts, wake in _sleeps(ordered):
        end_ns = wake.time_ns if wake is not None else root_end
        events = [
            SpanEvent(c.SLEEP_RESTARTED_EVENT, r.time_ns, {k: v for k, v in r.attributes.items()}) for r in restarts
        ]
        spans.append(
            SpanRecord(
                role=SpanRole.SLEEP,
                trace_id=trace_id,
                span_id=span_id_for(run, "sleep", sleep.event_id),
                parent_span_id=root_id,
                name=c.SLEEP_SPAN_NAME,
                kind=SpanKind.INTERNAL,
                start_ns=sleep.time_ns,
                end_ns=None if end_ns is None else max(end_ns, sleep.time_ns),
                attributes={k: v for k, v in sleep.attributes.items() if k != c.WORKFLOW_EVENT_ID},
                events=events,
            )
        )
    return spans


def _state_spans(
    run: RunIdentity, trace_id: bytes, root_id: bytes, ordered: list[Fact], root_end: int | None
) -> tuple[list[SpanRecord], set[str]]:
    """A span per state the run sat in, from the move into it to the move out of it (or the run's end).

    Annotations (events that moved nothing) become events of the state they happened in;
    the second value is their event ids, which the root then leaves out.
    """
    moves = chained(f for f in ordered if f.entered_state is not None)
    # Each annotation belongs to the state entered last before it (or at its very instant); among moves
    # of that instant, to the one into the state it says it happened in, when it says.
    inside_of: list[list[Fact]] = [[] for _ in moves]
    times = [m.time_ns for m in moves]
    for f in ordered:
        if f.kind is not KIND.ANNOTATION or f.step is not None:
            continue
        at = bisect_right(times, f.time_ns) - 1
        if f.in_state is not None:  # back through the moves of its instant, to the last one before it
            j = at
            while j >= 0 and moves[j].entered_state != f.in_state and times[j] == f.time_ns:
                j -= 1
            if j >= 0 and moves[j].entered_state == f.in_state:
                at = j
        if at >= 0:
            inside_of[at].append(f)
    spans: list[SpanRecord] = []
    told: set[str] = set()
    for i, entry in enumerate(moves):
        if entry.kind is KIND.RUN_ENDED:
            continue
        leave = moves[i + 1] if i + 1 < len(moves) else None
        end_ns = leave.time_ns if leave is not None else root_end
        inside = inside_of[i]
        told.update(f.event_id for f in inside)
        attributes: dict[str, AttributeValue] = {c.WORKFLOW_STATE_NAME: str(entry.entered_state)}
        if (previous := entry.attributes.get(c.WORKFLOW_STATE_FROM)) is not None:
            attributes[c.WORKFLOW_STATE_FROM] = previous
        spans.append(
            SpanRecord(
                role=SpanRole.STATE,
                trace_id=trace_id,
                span_id=span_id_for(run, "state", entry.event_id),
                parent_span_id=root_id,
                name=c.STATE_SPAN_PREFIX + str(entry.entered_state),
                kind=SpanKind.INTERNAL,
                start_ns=entry.time_ns,
                end_ns=None if end_ns is None else max(end_ns, entry.time_ns),
                attributes=attributes,
                events=[SpanEvent(f.name, f.time_ns, dict(f.attributes)) for f in inside],
            )
        )
    return spans, told


def _task_spans(
    run: RunIdentity, trace_id: bytes, root_id: bytes, ordered: list[Fact], root_end: int | None
) -> list[SpanRecord]:
    """A span per human task, from its opening to its closing (or the run's end)."""
    tasks: dict[str, list[Fact]] = {}
    for f in ordered:
        if f.kind in _TASK_KINDS and f.step is not None:
            tasks.setdefault(f.step, []).append(f)
    spans = []
    for task_id, told in tasks.items():
        opened = next((f for f in told if f.kind is KIND.TASK_OPENED), None)
        closed = next((f for f in told if f.kind is KIND.TASK_CLOSED), None)
        start_ns = (opened or closed).time_ns  # type: ignore[union-attr]
        end_ns = closed.time_ns if closed is not None else root_end
        label = next((f.label for f in told if f.label), None) or task_id
        attributes: dict[str, AttributeValue] = {c.WORKFLOW_HUMAN_TASK_ID: task_id}
        if label != task_id:
            attributes[c.WORKFLOW_HUMAN_TASK_TYPE] = label
        if closed is None and end_ns is not None:
            attributes[c.WORKFLOW_TASK_RESULT] = c.TASK_RESULT_INTERRUPTED
        for f in told:
            attributes.update({k: v for k, v in f.attributes.items() if k != c.WORKFLOW_EVENT_ID})
        spans.append(
            SpanRecord(
                role=SpanRole.TASK,
                trace_id=trace_id,
                span_id=span_id_for(run, "task", task_id),
                parent_span_id=root_id,
                name=c.TASK_SPAN_PREFIX + label,
                kind=SpanKind.INTERNAL,
                start_ns=start_ns,
                end_ns=None if end_ns is None else max(end_ns, start_ns),
                attributes=attributes,
            )
        )
    return spans


def _trigger_span(run: RunRef, trace_id: bytes, root_id: bytes, fact: Fact) -> SpanRecord:
    attributes: dict[str, AttributeValue] = dict(run.attributes) | dict(fact.attributes)
    attributes.pop(c.WORKFLOW_EVENT_ID, None)
    attributes[c.WORKFLOW_PLATFORM_NAME] = run.engine
    if run.tenant is not None:
        attributes[c.TENANT_ID] = run.tenant
    return SpanRecord(
        role=SpanRole.TRIGGER,
        trace_id=trace_id,
        span_id=root_id,
        parent_span_id=None,
        name=c.TRIGGER_SPAN_PREFIX + (run.name or run.run_id),
        kind=SpanKind.PRODUCER,
        start_ns=fact.time_ns,
        end_ns=fact.time_ns,
        attributes=attributes,
    )


def _remote_links(run: RunRef, ordered: list[Fact]) -> list[tuple[bytes, bytes]]:
    """The roots of the runs (triggers) this run follows from."""
    # An attempt's links name where the attempt before it ran: its own span's link, not the root's.
    linked = dict.fromkeys(link for f in ordered if f.links and f.kind is not KIND.ATTEMPT_STARTED for link in f.links)
    out = []
    for run_id in linked:
        other = followed(run.identity, run_id)
        out.append((run_trace_id(other), root_span_id(other)))
    return out


def followed(run: RunIdentity, run_id: str) -> RunIdentity:
    """The run `run_id` of the same producer as `run`."""
    return RunIdentity(run.engine, run.env, run.service, run_id, run.tenant)


def _late_facts(ordered: list[Fact], emitted: dict[str, int], ids: dict[tuple[str, int], bytes]) -> list[Fact]:
    """Step facts that arrived after their attempt's span had been sent (`ids`: every attempt's span id)."""
    late = []
    for f in ordered:
        if f.kind not in (KIND.ATTEMPT_STARTED, KIND.ATTEMPT_ENDED) or f.cached:
            continue
        if f.step is None or f.attempt is None:
            continue
        # Every such fact opened or closed an attempt of `_attempts`, so its span id is there.
        sent_at = emitted.get(ids[(f.step, f.attempt)].hex())
        if sent_at is not None and f.seq > sent_at:
            late.append(f)
    return late


def _step_attributes(f: Fact) -> dict[str, AttributeValue]:
    attributes = dict(f.attributes)
    if f.step is not None:
        attributes[c.WORKFLOW_TASK_NAME] = f.step
    if f.attempt is not None:
        attributes[c.WORKFLOW_TASK_ATTEMPT] = f.attempt
    if f.duration_ms is not None:
        attributes[c.WORKFLOW_TASK_DURATION_MS] = f.duration_ms
    return attributes


def _root_span(
    run: RunRef,
    trace_id: bytes,
    root_id: bytes,
    ordered: list[Fact],
    start_ns: int,
    end_ns: int | None,
    ended: Fact | None,
    attempts: dict[tuple[str, int], _Attempt],
    late: list[Fact],
    close_reason: str,
) -> SpanRecord:
    attributes: dict[str, AttributeValue] = dict(run.attributes) | {
        c.WORKFLOW_DEFINITION_NAME: run.name,
        # A source may show its engine's id where the bridge's differs (a retry of a run, a trace of its own).
        c.WORKFLOW_EXECUTION_ID: run.attributes.get(c.WORKFLOW_EXECUTION_ID, run.run_id),
        c.WORKFLOW_PLATFORM_NAME: run.engine,
    }
    if run.correlation_id:
        attributes[c.WORKFLOW_EXECUTION_CORRELATION_ID] = run.correlation_id
    if run.tenant is not None:
        attributes[c.TENANT_ID] = run.tenant
    for f in ordered:
        if f.kind in _RUN_START_KINDS and c.WORKFLOW_EXECUTION_INPUT in f.attributes:
            attributes[c.WORKFLOW_EXECUTION_INPUT] = f.attributes[c.WORKFLOW_EXECUTION_INPUT]
            break

    events: list[SpanEvent] = []
    run_ended = KIND.RUN_ENDED
    for f in ordered:
        if f.kind in _ROOT_EVENT_KINDS:
            events.append(SpanEvent(f.name, f.time_ns, dict(f.attributes)))
        elif f.kind is run_ended and f is not ended:
            # The run ends at the first end told. An engine may tell another after it (Phase-10
            # cancels an execution without stopping it, which then completes): shown, not lost.
            told = {c.WORKFLOW_EXECUTION_RESULT: str(f.outcome)} if f.outcome is not None else {}
            events.append(SpanEvent(f.name, f.time_ns, dict(f.attributes) | told))
    events.extend(
        SpanEvent(c.STEP_CACHED_EVENT, f.time_ns, _step_attributes(f) | {c.WORKFLOW_TASK_CACHED: True})
        for f in ordered
        if f.kind is KIND.ATTEMPT_ENDED and f.cached
    )
    events.extend(SpanEvent(f.name, f.time_ns, _step_attributes(f) | {c.WORKFLOW_LATE_EVENT: True}) for f in late)

    status, message = SpanStatus.UNSET, ""
    if ended is not None:
        attributes.update(ended.attributes)
        attributes.pop(c.WORKFLOW_EVENT_ID, None)
        result = _run_result(ended, attempts)
        attributes[c.WORKFLOW_EXECUTION_RESULT] = result
        if ended.outcome is OUTCOME.SUCCESS:
            status = SpanStatus.OK
        elif ended.outcome in (OUTCOME.FAILURE, OUTCOME.TIMEOUT):
            status = SpanStatus.ERROR
            if failing := failing_step(ordered, ended):  # none for a run failed outside its steps
                attributes[c.WORKFLOW_TASK_NAME] = failing
            message = (ended.error.message if ended.error else "") or "workflow failed"
            attributes[c.ERROR_TYPE] = c.RESULT_TIMEOUT if result == c.RESULT_TIMEOUT else _error_type(ended.error)
            events.append(_exception_event(ended.time_ns, message, ended.error))
        elif ended.reason:
            attributes[c.WORKFLOW_EXECUTION_CANCEL_REASON] = ended.reason
    elif end_ns is not None:
        attributes[c.WORKFLOW_EXECUTION_INCOMPLETE] = True
        if close_reason:
            attributes[c.WORKFLOW_EXECUTION_CLOSE_REASON] = close_reason
    return SpanRecord(
        role=SpanRole.RUN,
        trace_id=trace_id,
        span_id=root_id,
        parent_span_id=None,
        name=c.ROOT_SPAN_PREFIX + (run.name or run.run_id),
        kind=SpanKind.SERVER,
        start_ns=start_ns,
        end_ns=None if end_ns is None else max(end_ns, start_ns),
        status=status,
        status_message=message,
        attributes=attributes,
        events=sorted(events, key=lambda e: e.time_ns),
        remote_links=_remote_links(run, ordered),
    )


def failing_step(ordered: list[Fact], ended: Fact) -> str:
    """The step a failed run failed in: the engine's word if it gave one, else its facts'.

    durable-effect never names it in `workflow.failed`; the attempt that failed last
    (a failure that was not retried, exhausted retries, an exceeded timeout) did it. One told at
    the very time of the end is before it, whatever the event ids say: only durable-effect's ids
    are in emission order (the event-sourced runtime's are random, Phase-10's content hashes).
    """
    if ended.error is not None and ended.error.step:
        return ended.error.step
    failed = (
        f
        for f in reversed(ordered)
        if f.step is not None
        and f.time_ns <= ended.time_ns
        and (
            f.kind in _FAILING_KINDS
            or (f.kind is KIND.ATTEMPT_ENDED and f.outcome in (OUTCOME.FAILURE, OUTCOME.TIMEOUT))
        )
    )
    last = next(failed, None)
    if last is None or last.step is None:
        return ""
    return next((f.label for f in ordered if f.step == last.step and f.label), None) or last.step


def _run_result(ended: Fact, attempts: dict[tuple[str, int], _Attempt]) -> str:
    if ended.outcome is OUTCOME.SUCCESS:
        return c.RESULT_SUCCESS
    if ended.outcome is OUTCOME.CANCELLATION:
        return c.RESULT_CANCELLATION
    if ended.outcome is OUTCOME.TIMEOUT or any(a.end is not None and _timed_out(a.end) for a in attempts.values()):
        return c.RESULT_TIMEOUT
    return c.RESULT_FAILURE


def overdue_events(ordered: list[Fact], grace_ns: int) -> list[SpanEvent]:
    """A `workflow.overdue` root event where a run woke up (or started) more than the grace after it was due."""
    events = []
    due: int | None = None
    for f in ordered:
        if due is not None and f.kind is not KIND.RUN_PAUSED:
            if f.time_ns - due > grace_ns:
                late: dict[str, AttributeValue] = {
                    c.WORKFLOW_OVERDUE_SECONDS: round((f.time_ns - due) / 1e9, 3),
                    c.WORKFLOW_OVERDUE_DUE_AT: iso_ns(due),
                }
                events.append(SpanEvent(c.WORKFLOW_OVERDUE_EVENT, f.time_ns, late))
            due = None
        if f.kind is KIND.RUN_PAUSED and f.resume_at_ns is not None:
            due = f.resume_at_ns
        elif f.kind is KIND.RUN_QUEUED:
            due = f.time_ns
    return events


def iso_ns(ns: int) -> str:
    """Unix nanoseconds as the ISO-8601 UTC text the engines write (milliseconds, Z)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ns_of_iso(text: str) -> int:
    """`iso_ns` read back, to the millisecond it keeps."""
    return round(datetime.fromisoformat(text).timestamp() * 1000) * 1_000_000
