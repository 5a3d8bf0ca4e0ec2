"""What an on-call engineer asks of an open run: in which state since when, due to wake when, stuck or not.

Pure functions of a run's stored state and the time: the `runs` and `show` commands,
`GET /v1/runs` and the `workflow.execution.overdue` gauge all read runs through them.
A run is **overdue** when it is paused (a sleep or a retry backoff) and its `resumeAt`
passed more than the grace ago with nothing since, or queued and not started within the
grace: the engine loses alarms on eviction and never flushes a cancel of a paused run.
"""

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.correlate.jobs import JobState, last_failure
from otel_bridge.correlate.jobs import overdue_since_ns as job_overdue_since_ns
from otel_bridge.correlate.runs import RunState
from otel_bridge.correlate.spans import chained, iso_ns, ns_of_iso
from otel_bridge.ids import root_span_id, run_trace_id, traceparent
from otel_bridge.lifecycle import KIND, OUTCOME, Fact, RunKind, by_order


@dataclass(frozen=True, slots=True)
class RunOverview:
    engine: str
    service: str
    env: str
    name: str
    run_id: str
    tenant: str | None
    state: str
    since_ns: int
    resume_at_ns: int | None
    overdue_ns: int | None
    last_event: str
    last_event_ns: int
    traceparent: str
    # Its progress: the steps that have succeeded so far (how many there will be, only its end tells).
    steps_done: int = 0
    # A state machine's run (the event-sourced runtime's): the state it sits in, entered at `since`.
    machine_state: str | None = None
    # The application's own id of the run (durable-effect's `executionId`), when told.
    correlation_id: str | None = None

    def as_dict(self, trace_url: str | None = None) -> dict[str, Any]:
        """As JSON shows it; with the `trace_url` template, the link to the run's trace as well."""
        out = asdict(self)
        # `last_event` is the event's name: its time is `last_event_at` (it took the name's place).
        for key, told in (("since_ns", "since"), ("resume_at_ns", "resume_at"), ("last_event_ns", "last_event_at")):
            value = out.pop(key)
            out[told] = iso_ns(value) if value is not None else None
        overdue = out.pop("overdue_ns")
        out["overdue_seconds"] = None if overdue is None else round(overdue / 1e9, 3)
        if trace_url and self.sampled:
            out["trace_url"] = trace_link(trace_url, self.trace_id)
        return out

    @classmethod
    def from_dict(cls, told: Mapping[str, Any]) -> "RunOverview":
        """`as_dict` read back (a running bridge's `GET /v1/runs`), for the same table; what it adds (its
        `trace_url`) is left."""
        values = {f.name: told[f.name] for f in fields(cls) if f.name in told}
        for key, said in (("since_ns", "since"), ("resume_at_ns", "resume_at"), ("last_event_ns", "last_event_at")):
            values[key] = ns_of_iso(told[said]) if told.get(said) is not None else None
        values["overdue_ns"] = _ns_of_seconds(told.get("overdue_seconds"))
        return cls(**values)

    @property
    def sampled(self) -> bool:
        """False for a run the sampling keeps back (`trace_sample_ratio`): sent only if it fails or never ends."""
        return self.traceparent.endswith("-01")

    @property
    def trace_id(self) -> str:
        """The run's trace id in hex, as its `traceparent` carries it."""
        return self.traceparent.split("-")[1]


def trace_link(template: str, trace_id: str) -> str:
    """The tracing UI's page of a trace (`trace_id` in hex): `{trace_id}` in `template` replaced."""
    return template.replace("{trace_id}", trace_id)


def overdue_since_ns(state: RunState, silence_ns: int | None = None) -> int | None:
    """From when an open run counts as late (it is overdue once the grace has passed too): a paused run
    from its resumeAt, a queued one from then, and — given `silence_ns`, how long one may execute telling
    nothing (`silent_executing`) — an executing one from that long after its latest event.

    Asked on every save of a run, so no sort; `overview` tells it too. The fact that put the run
    in its state is looked for from the newest: most often the last one, in a run of any length (a
    step polled thousands of times pauses between its attempts).
    """
    if not state.going_on:
        return None
    if state.execution_state == c.STATE_EXECUTING:  # told by its header (a restart re-indexes from headers)
        if silence_ns is None or not state.last_told_ns or state.run.kind is RunKind.TRIGGER:
            return None
        return state.last_told_ns + silence_ns
    if not state.facts:
        return None
    if state.execution_state == c.STATE_PAUSED:
        # The latest pause is the fact that put the run in its state (every pause states it).
        paused = _stating_fact(state)
        if paused is not None and paused.kind is KIND.RUN_PAUSED:
            return paused.resume_at_ns
        pauses = [f for f in state.facts if f.kind is KIND.RUN_PAUSED]
        return max(pauses, key=by_order).resume_at_ns if pauses else None
    if state.execution_state == c.STATE_PENDING:
        return (_stating_fact(state) or min(state.facts, key=by_order)).time_ns
    return None


def _stating_fact(state: RunState) -> Fact | None:
    """The fact whose order is the run's `state_order`, from the newest fact back."""
    order = tuple(state.state_order or ())
    return next((f for f in reversed(state.facts) if f.order == order), None)


def overview(state: RunState, now_ns: int, grace_ns: int, silence_ns: int | None = None) -> RunOverview | None:
    """The run as it stands, or None when it has ended (or holds nothing to tell). `silence_ns`: as
    `overdue_since_ns`."""
    if not state.going_on or not state.facts:
        return None
    last = max(state.facts, key=by_order)
    current = state.execution_state
    since = _stating_fact(state) or min(state.facts, key=by_order)
    moves = chained(f for f in state.facts if f.entered_state is not None)
    entered = moves[-1] if moves else None
    if entered is not None and current == c.STATE_EXECUTING:
        since = entered  # in the state it sits in since it entered it, not since a later event in it
    due = overdue_since_ns(state, silence_ns)  # when it was due to go on, or (executing) to tell something
    late = now_ns - due if due is not None else None
    run = state.run
    identity = run.identity
    return RunOverview(
        engine=run.engine,
        service=run.service,
        env=run.env,
        name=run.name,
        run_id=run.run_id,
        tenant=run.tenant,
        state=current,
        since_ns=since.time_ns,
        resume_at_ns=due if current == c.STATE_PAUSED else None,
        overdue_ns=late if late is not None and late > grace_ns else None,
        last_event=last.name,
        last_event_ns=last.time_ns,
        # Not sampled: kept back by the ratio (sent only if it fails or never ends).
        traceparent=traceparent(run_trace_id(identity), root_span_id(identity), not state.withheld),
        steps_done=len({f.step for f in state.facts if f.kind is KIND.ATTEMPT_ENDED and f.outcome is OUTCOME.SUCCESS}),
        machine_state=entered.entered_state if entered is not None else None,
        correlation_id=run.correlation_id,
    )


@dataclass(frozen=True, slots=True)
class JobOverview:
    """A job instance as an on-call engineer asks of it: when it is next to run, late or not."""

    engine: str
    service: str
    env: str
    name: str
    job_type: str
    instance_id: str
    # Active (a continuous job started and not ended), or when it is next to run, as the engine told it.
    active: bool
    due_ns: int | None
    overdue_ns: int | None
    last_ran_ns: int | None
    # The application's own id of the instance (a durable-effect job's `id`), when told.
    correlation_id: str | None = None
    # Why its latest run failed, when it did (its error's message; a schedule's launch that failed).
    last_failure: str | None = None

    @property
    def going_on(self) -> bool:
        """Whether it runs (a continuous job started and not ended) or awaits a run: what a listing shows."""
        return self.active or self.due_ns is not None

    @classmethod
    def from_dict(cls, told: Mapping[str, Any]) -> "JobOverview":
        """`as_dict` read back (a running bridge's `GET /v1/jobs`), for the same table."""
        values = {f.name: told[f.name] for f in fields(cls) if f.name in told}
        for key in ("due_ns", "last_ran_ns"):
            said = told.get(key.removesuffix("_ns"))
            values[key] = ns_of_iso(said) if said is not None else None
        values["overdue_ns"] = _ns_of_seconds(told.get("overdue_seconds"))
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("due_ns", "last_ran_ns"):
            value = out.pop(key)
            out[key.removesuffix("_ns")] = iso_ns(value) if value is not None else None
        overdue = out.pop("overdue_ns")
        out["overdue_seconds"] = None if overdue is None else round(overdue / 1e9, 3)
        return out


def job_overview(
    key: str, state: JobState, now_ns: int, grace_ns: int, judged: bool = True, silence_ns: int | None = None
) -> JobOverview:
    """The instance under `key` as it stands; `judged`: whether its time passing with no run told is
    overdue (`Policy.judges`) — if not, it awaits nothing once its time has passed (a task that ended
    itself, cancelled, or lost: nothing tells which). `silence_ns`: as `jobs.overdue_since_ns`."""
    awaited = job_overdue_since_ns(state, silence_ns)  # when its awaited run was due, not yet come
    late = now_ns - awaited if awaited is not None else None
    if not judged and late is not None and 0 <= late <= grace_ns:
        awaited = late = None
    engine, env, service, instance_id = keys.job_fields(key)
    return JobOverview(
        engine=engine,
        service=service,
        env=env,
        name=state.job_name,
        job_type=state.job_type,
        instance_id=instance_id,
        active=state.counted,
        due_ns=awaited,
        overdue_ns=late if late is not None and late > grace_ns else None,
        last_ran_ns=state.ran_ns or None,
        correlation_id=state.correlation_id or None,
        last_failure=last_failure(state),
    )


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What an on-call engineer asks for: the runs in a state, overdue only, of one service, environment
    or workflow — the labels an alert names them by (`WorkflowRunsOverdue`)."""

    state: str | None = None
    overdue: bool = False
    service: str | None = None
    env: str | None = None
    workflow: str | None = None
    # Only the runs whose latest event is at least this old (seconds): a run stuck executing (its
    # invocation died mid-step, or its engine failed it without a word) tells nothing more. No index
    # keeps its silence; its header does (`last_told_ns`), so only the silent ones' facts are read.
    silent_for: float | None = None

    def may_hold(self, header: RunState, now_ns: int) -> bool:
        """Whether a run known by its header alone (no facts read) may be one asked for, at `now_ns`."""
        run = header.run
        told = header.last_told_ns  # 0: stored by a version that did not keep it; its facts will tell
        return (
            header.going_on
            and (self.service is None or run.service == self.service)
            and (self.env is None or run.env == self.env)
            and (self.workflow is None or run.name == self.workflow)
            and (self.state is None or header.execution_state == self.state)
            and (self.silent_for is None or not told or now_ns - told >= self.silent_for * 1e9)
        )

    def holds(self, run: RunOverview, now_ns: int) -> bool:
        """Whether `run` is one asked for, at `now_ns` (what `silent_for` counts from)."""
        return (
            (self.state is None or run.state == self.state)
            and (not self.overdue or run.overdue_ns is not None)
            and (self.service is None or run.service == self.service)
            and (self.env is None or run.env == self.env)
            and (self.workflow is None or run.name == self.workflow)
            and (self.silent_for is None or now_ns - run.last_event_ns >= self.silent_for * 1e9)
        )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# What `seconds_of` reads, as the HTTP API's document gives it: `float()` alone also took `1e3`,
# `1_000`, ` 5` and `5\n`, which no one writes for a duration and the document could not say.
# Twenty digits (three trillion years) and it stays a finite float in any unit: a longer one may not.
DURATION = r"^([0-9]{1,20}(\.[0-9]*)?|\.[0-9]+)[smhd]?$"


def seconds_of(text: str) -> float:
    """A length of time as a person writes it (`90s`, `15m`, `2h`, `3d`, `1.5h`) or in seconds (`5400`),
    as `silent_for` takes it from the command line and the HTTP listing alike; ValueError if it is none."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration of 0 or more (90s, 15m, 2h, 3d, or seconds)")
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    return float(number) * _UNITS[unit]


@dataclass(frozen=True, slots=True)
class JobQuery:
    """What an on-call engineer asks of the job instances: overdue only, of one service, environment or
    job — the labels `JobsOverdue` names them by."""

    overdue: bool = False
    service: str | None = None
    env: str | None = None
    job: str | None = None
    # Those whose latest run failed, whatever they await: a job that runs only when something comes (an
    # event the runtime took in, a task no one scheduled again) awaits nothing, and was listed nowhere.
    failing: bool = False

    def may_hold(self, state: JobState) -> bool:
        """Whether an instance may be one asked for, before its overview is made."""
        return (
            (self.service is None or state.service == self.service)
            and (self.env is None or state.env == self.env)
            and (self.job is None or state.job_name == self.job)
        )

    def holds(self, job: JobOverview) -> bool:
        listed = job.last_failure is not None if self.failing else job.going_on
        return listed and (not self.overdue or job.overdue_ns is not None)


# Why a run was closed by hand, when the one who closed it did not say.
DEFAULT_CLOSE_REASON = "closed by hand"


@dataclass(frozen=True, slots=True)
class Closed:
    """What `otel-bridge close` closed: a run or a job instance as it stood, and what that sent."""

    was: RunOverview | JobOverview
    # The run's spans sent by its closing (its root among them), and whether it ended incomplete.
    spans: int = 0
    incomplete: bool = False

    @property
    def what(self) -> str:
        """It in words, for the log and the terminal."""
        was = self.was
        producer = f"{was.service}/{was.env}" if was.env else was.service
        if isinstance(was, JobOverview):
            return f"job instance {was.instance_id} of {was.name} ({producer})"
        return f"run {was.run_id} of {was.name or 'workflow'} ({producer})"

    def as_dict(self, trace_url: str | None = None) -> dict[str, Any]:
        if isinstance(self.was, JobOverview):
            return {"job": self.was.as_dict()}
        return {"run": self.was.as_dict(trace_url), "spans_sent": self.spans, "incomplete": self.incomplete}


def not_open_in_words(state: RunState) -> str | None:
    """Why a run the store knows is not open, for a close that finds nothing to close; None when it is."""
    run = state.run
    producer = f"{run.service}/{run.env}" if run.env else run.service
    what = f"run {run.run_id} of {run.name or 'workflow'} ({producer})"
    if state.closed:
        how = f"by hand ({state.close_reason})" if state.close_reason else "at its end"
        return f"{what} is closed already, {how}"
    if state.ended and not state.carrying_on:
        return f"{what} has ended: it closes by itself at its next settling"
    return None


def _ns_of_seconds(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1e9)
