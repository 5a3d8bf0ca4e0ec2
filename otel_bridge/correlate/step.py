"""How one record changes a run's state, and when the run is next due: the one place that decides.

`apply` takes in one record, `settle_run` sends what a due run has to send. Both are
pure: state and the time in, a `Step` out. The pipeline only loads, applies, saves
what the step says changed, and puts its spans in the outbox.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import msgspec
from msgspec import Struct

from otel_bridge.correlate.jobs import JobState, close_job, fold_job, last_told_ns, presume_ended
from otel_bridge.correlate.jobs import overdue_since_ns as job_overdue_since_ns
from otel_bridge.correlate.outputs import Observation, SpanRecord
from otel_bridge.correlate.overview import overdue_since_ns
from otel_bridge.correlate.runs import Admission, RunState, SettlePolicy, closes_at_ns, fold, forget_facts, settle
from otel_bridge.lifecycle import (
    CONTINUOUS_JOB_TYPE,
    KIND,
    SCHEDULED_JOB_TYPES,
    TASK_JOB_TYPE,
    Fact,
    LifecycleRecord,
    WorkflowRecord,
)


@dataclass(frozen=True, slots=True)
class Policy:
    """When runs are due, from the settings."""

    settle: SettlePolicy = field(default_factory=SettlePolicy)
    settle_seconds: float = 1.0
    dedup_ttl_seconds: float = 7 * 86_400
    keep_finished_seconds: float = 3_600
    # The task jobs (by name; `*`: all) whose time passing with no run told is overdue (`overdue_tasks`).
    overdue_tasks: frozenset[str] = frozenset()
    # The debounce jobs (by name; `*`: all) whose clients clear them, silently: not judged (`cleared_debounces`).
    cleared_debounces: frozenset[str] = frozenset()
    # The workflows (by name; `*`: the others) whose runs executing and silent this long (ns) are due to
    # have told something, so overdue once the grace has passed too (`silent_executing`).
    silent_executing: Mapping[str, int] = field(default_factory=dict)
    # The continuous jobs (by name; `*`: the others) that are due to run again this long (ns) after they
    # last ran, so overdue once the grace has passed too (`silent_continuous`).
    silent_continuous: Mapping[str, int] = field(default_factory=dict)

    @property
    def max_open_seconds(self) -> float:
        return self.settle.max_open_ns / 1e9

    def silence_ns(self, workflow: str) -> int | None:
        """How long a run of `workflow` may execute telling nothing (`silent_executing`); None: for ever."""
        return _named(self.silent_executing, workflow)

    def job_silence_ns(self, job: JobState) -> int | None:
        """How long a continuous job instance may go without a run (`silent_continuous`); None: for ever."""
        return _named(self.silent_continuous, job.job_name) if job.job_type == CONTINUOUS_JOB_TYPE else None

    def overdue_judged_by(self) -> bytes:
        """What decides when runs and job instances turn overdue, as the store's overdue index is written
        by it: the index written by another (a restart with other settings) is written again."""
        return msgspec.json.encode(
            [
                self.settle.overdue_grace_ns,
                sorted(self.overdue_tasks),
                sorted(self.cleared_debounces),
                sorted(self.silent_executing.items()),
                sorted(self.silent_continuous.items()),
            ]
        )

    def judging_as(self, told: bytes) -> "Policy":
        """These settings, judging overdue as those `overdue_judged_by` told (the ones that wrote a store's
        overdue index); these alone when it tells nothing this version reads."""
        try:
            grace, tasks, cleared, executing, continuous = msgspec.json.decode(told, type=_JUDGED_BY)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self
        return replace(
            self,
            settle=replace(self.settle, overdue_grace_ns=grace),
            overdue_tasks=frozenset(tasks),
            cleared_debounces=frozenset(cleared),
            silent_executing=dict(executing),
            silent_continuous=dict(continuous),
        )

    def judges(self, job: JobState) -> bool:
        """Whether a job instance whose time passed with no run told counts as overdue: a debounce's (its
        flush always tells) unless the settings say its clients clear it — a client's `clear()` purges it
        untold —, a task's only where the settings name it — one that ends itself at its alarm
        (`ctx.clear()`, the engine's own one-shot reminder) tells nothing, as a lost alarm —, a schedule's
        always."""
        if job.job_type == TASK_JOB_TYPE:
            return "*" in self.overdue_tasks or job.job_name in self.overdue_tasks
        if job.job_type in SCHEDULED_JOB_TYPES:
            return True  # its scheduler tells every occurrence, on time or let pass
        return "*" not in self.cleared_debounces and job.job_name not in self.cleared_debounces


# What `Policy.overdue_judged_by` writes: the grace, the tasks named, the debounces cleared, the silences.
_JUDGED_BY = tuple[int | None, list[str], list[str], list[tuple[str, int]], list[tuple[str, int]]]


def _named(durations: Mapping[str, int], name: str) -> int | None:
    return durations.get(name, durations.get("*")) if durations else None


class Step(Struct):
    """What one record or one settling did to a run (one per event: a Struct, built in C)."""

    # The state to keep, or None: forget the run (its memory is no longer needed).
    state: RunState | JobState | None
    # When the run is next due to settle (bridge clock, seconds), or None: never by itself.
    due: float | None
    admission: Admission = Admission.ACCEPTED
    spans: list[SpanRecord] = []
    observations: list[Observation] = []
    # The run's fact set as a journal: facts to write, facts (by `seq`) to drop, or all dropped.
    added: list[Fact] = []
    dropped: list[int] = []
    facts_forgotten: bool = False
    # Span ids (hex) this settling sent, with the run's `seq` then: journalled with the run.
    sent: dict[str, int] = {}
    incomplete: bool = False
    # It ended and was never sent: the sampling left it out, none of its spans failed, it ended.
    kept_back: bool = False
    # A job instance counted active, presumed ended for its silence.
    presumed_ended: bool = False


# Facts that end no span: they give the run nothing to send, so they do not make it due.
# A run that only starts (a million of them waiting on people) is then not settled until
# it has something to send, or has been open `max_open_seconds`.
_QUIET = frozenset(
    {
        KIND.RUN_QUEUED,
        KIND.RUN_STARTED,
        KIND.ATTEMPT_STARTED,
        KIND.SLEEP_STARTED,
        KIND.TIMEOUT_SET,
        KIND.TASK_OPENED,
    }
)


def _first_due(due: float | None, now: float, policy: Policy) -> float:
    # Settle after the first unsettled event, not the last: a busy run still
    # gets its spans out every settle window.
    candidate = now + policy.settle_seconds
    return due if due is not None and due <= candidate else candidate


def overdue_at(state: RunState | JobState, policy: Policy) -> float | None:
    """When a run (or job instance) turns overdue (producer clock, seconds): stored, so finding overdue
    runs reads only them."""
    if isinstance(state, RunState):
        since = overdue_since_ns(state, policy.silence_ns(state.run.name))
    elif policy.judges(state):
        since = job_overdue_since_ns(state, policy.job_silence_ns(state))
    else:
        return None
    return _after_grace(since, policy)


def _after_grace(since_ns: int | None, policy: Policy) -> float | None:
    return None if since_ns is None else (since_ns + (policy.settle.overdue_grace_ns or 0)) / 1e9


def job_kept_until(job: JobState, now: float, policy: Policy) -> float:
    """Until when a job instance is remembered (or, counted active, looked at again): while counted, until
    it has told nothing for `max_open_seconds` (then it is presumed ended, `settle_run`); else
    `dedup_ttl_seconds` (its events' ids), and as long after the run it awaits would turn overdue — a task
    scheduled a month ahead was forgotten at a week, and with it the lost alarm its time would have shown
    (overdue, listed by `jobs`)."""
    if job.counted:
        return max(now, last_told_ns(job) / 1e9 + policy.max_open_seconds)
    return max(now, _after_grace(job_overdue_since_ns(job), policy) or now) + policy.dedup_ttl_seconds


def apply(
    state: RunState | JobState | None, due: float | None, record: LifecycleRecord, now: float, policy: Policy
) -> Step:
    """Take one record, received at `now`, into its run's (or job instance's) state."""
    if not isinstance(record, WorkflowRecord):
        job, observations = fold_job(state, record)  # type: ignore[arg-type]
        # Counted, it keeps its due: looked at then, it is looked at again later if it told something since
        # (`settle_run`), rather than the due index rewritten at every run of every continuous job.
        kept = due if job.counted and due is not None else job_kept_until(job, now, policy)
        return Step(job, kept, observations=observations)
    result = fold(state, record.run, record.fact, int(now * 1e9))  # type: ignore[arg-type]
    if state is None and not policy.settle.samples(result.state):
        result.state.withheld = True  # from its first event, so that `otel-bridge runs` says so
    step = Step(result.state, due, result.admission, observations=result.observations)
    if result.added is not None:
        step.added.append(result.added)
    if result.replaced is not None:
        step.dropped.append(result.replaced)
    if result.admission is Admission.ACCEPTED:
        if record.fact.kind not in _QUIET:
            step.due = _first_due(due, now, policy)
        elif due is None:
            step.due = result.state.opened_ns / 1e9 + policy.max_open_seconds
    return step


def settle_run(state: RunState | JobState, now: float, policy: Policy) -> Step:
    """Send what a due run has to send: its ended spans, its end; forget what is no longer needed."""
    if isinstance(state, JobState):
        if not state.counted:
            return Step(None, None)  # due only once it no longer matters
        if (until := job_kept_until(state, now, policy)) > now:
            return Step(state, until)  # it told something since it was due: not silent long enough
        job, observations = presume_ended(state)
        return Step(job, job_kept_until(job, now, policy), observations=observations, presumed_ended=True)
    if state.closed:
        if not state.facts:
            return Step(None, None)  # remembered for late events long enough
        # Kept to be shown (`otel-bridge show`) for a while; now only remembered for late events.
        closed = state.closed_ns / 1e9 or now
        forget_facts(state)
        return Step(state, max(closed + policy.dedup_ttl_seconds, now), facts_forgotten=True)
    result = settle(state, int(now * 1e9), policy.settle)
    if result.held:
        due = now + max(policy.settle_seconds, 0.2)
    elif state.closed:
        due = now + min(policy.keep_finished_seconds, policy.dedup_ttl_seconds)
    else:
        due = max(closes_at_ns(state, int(now * 1e9), policy.settle) / 1e9, now)
        if state.carrying_on:  # ends at its cancellation if nothing more comes
            due = min(due, max((state.ended_seen_ns + policy.settle.cancel_grace_ns) / 1e9, now))
    return Step(
        state,
        due,
        spans=result.spans,
        sent=result.sent,
        observations=result.observations,
        incomplete=result.incomplete,
        kept_back=result.kept_back,
    )


def close(state: RunState | JobState, reason: str, now: float, policy: Policy) -> Step | None:
    """Close by hand what the engine will never end (`otel-bridge close`), or None: nothing open there.

    A run is settled at once and closed, as incomplete with `reason` unless its end came (then it waits
    for no straggler and no step going on); a job instance awaits its run no more, and is no longer
    counted active."""
    if isinstance(state, JobState):
        if not state.counted and job_overdue_since_ns(state) is None:
            return None
        job, observations = close_job(state)
        return Step(job, job_kept_until(job, now, policy), observations=observations)
    if state.closed or not state.facts:
        return None
    state.close_reason = reason
    return settle_run(state, now, policy)
