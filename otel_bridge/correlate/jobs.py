"""Job records -> metric observations (DESIGN.md section 4).

Jobs become metrics, not traces. A job instance's state is whether it is counted
in `job.instance.active`, so that an end (`job.terminated`, or exhausted retries,
after which the engine purges the instance) without a `job.started` (debounce and
task jobs never emit one), or one arriving before it, never drives the gauge below
zero; and the failures told, placed in their runs of retries by time, so that each
failed attempt is counted once in any order: the last one of retries exhausted is
told only by the exhaustion's attempt count.

And when an instance is next to run, as the engine told it (a task's `scheduledAt`, a debounce's
`flushAt`), against when it last ran: an instance whose time passed with no run is **overdue**, the
job's lost alarm (`job.instance.overdue`), as a paused workflow past its `resumeAt` is.
"""

from bisect import bisect_left

from msgspec import Struct
from msgspec.structs import replace

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.lifecycle import CONTINUOUS_JOB_TYPE, JOB_KIND, JobRecord


class JobState(Struct, kw_only=True, omit_defaults=True):
    counted: bool = False
    # Counted no more after saying nothing for `max_open` (a continuous job that ended itself with
    # `ctx.terminate()` tells nothing), up to its latest event then: a run told after it counts it again.
    silent_after_ns: int = 0
    terminated: bool = False
    # When the instance last ended (terminated or purged): a start after it is a new instance.
    ended_ns: int = 0
    # When it was last started: an end told late, from before it, is of the instance before.
    started_ns: int = 0
    # The failures told, for job.executions to count each failed attempt once in any order: (time,
    # attempt) of those the engine retries and of those it does not; (time, attempts) of retries
    # exhausted, whose last attempt nothing else tells; and when runs of retries otherwise ended (a
    # success, a termination). A failure not retried and an exhaustion end their run too: the engine
    # numbers attempts from 1 again after any of those ends.
    retried: list[tuple[int, int]] = []
    final: list[tuple[int, int]] = []
    exhausted: list[tuple[int, int]] = []
    resets: list[int] = []
    # The failed attempts job.executions has counted (of those still told above): what they come to may
    # fall for a while, when an exhaustion comes before the end that parts its run from an earlier one.
    failures_counted: int = 0
    # When it last succeeded, and when that run began (its end less its durationMs; 0 when not told).
    succeeded_ns: int = 0
    succeeded_from_ns: int = 0
    # When it last failed: with `succeeded_ns`, job.execution.last_timestamp as it stands after a restart;
    # and why (its error's message, its first `FAILURE_SHOWN` characters): what a listing shows of it.
    failed_ns: int = 0
    failure: str = ""
    # When the instance is next to run (0: nothing awaited), as the latest told (by its event's time,
    # `due_told_ns`); a run at or after `due_from_ns` is the one awaited. A task's next run is told
    # before the current one's end (task.scheduled, then job.executed), so a run counts for it only from
    # a second before its time; a debounce's collection ends at any flush after its start (timeout,
    # maxEvents or manual).
    due_ns: int = 0
    due_from_ns: int = 0
    due_told_ns: int = 0
    # Its event id: of two told in one millisecond, the later id (UUIDv7, in order within an isolate) wins.
    due_told_id: str = ""
    # When it last ran: executed, failed or flushed.
    ran_ns: int = 0
    # The schedule (`due_told_id`) closed by hand (`otel-bridge close`): awaited no more. One told later
    # is awaited again.
    waived_id: str = ""
    # The application's own id of the instance, when its events tell one (what its logs name it by).
    correlation_id: str = ""
    # Enough to re-count an open instance after a restart.
    job_name: str = ""
    job_type: str = ""
    service: str = ""
    env: str = ""


def active_instance(state: JobState) -> Observation:
    """The +1 an instance counted in `job.instance.active` contributes."""
    attributes = ((c.JOB_NAME, state.job_name), (c.JOB_TYPE, state.job_type))
    return Observation(c.M_JOB_INSTANCE_ACTIVE, 1, attributes, Resource(state.service, state.env))


def last_runs(state: JobState) -> list[Observation]:
    """When the instance last ran, by result, as job.execution.last_timestamp tells it: what a restart
    counts again from the store."""
    job = ((c.JOB_NAME, state.job_name), (c.JOB_TYPE, state.job_type))
    resource = Resource(state.service, state.env)
    return [
        Observation(c.M_JOB_EXECUTION_LAST, at / 1e9, (*job, (c.JOB_EXECUTION_RESULT, result)), resource)
        for at, result in ((state.succeeded_ns, c.RESULT_SUCCESS), (state.failed_ns, c.RESULT_FAILURE))
        if at
    ]


# A failure's message kept with the instance, as far as a listing shows it.
FAILURE_SHOWN = 300


def last_failure(state: JobState) -> str | None:
    """Why its latest run failed, when its latest run did (a success since clears it), or None."""
    failed = state.failed_ns and state.failed_ns >= state.succeeded_ns
    return (state.failure or "failed, saying nothing of why") if failed else None


# An alarm may fire a little before the time it was set for: a run this much earlier still counts.
_EARLY_NS = 1_000_000_000
# A run's events are stamped within it: its start (its end less its durationMs, the engine's clock read a
# moment apart) may come out a millisecond after a schedule it told. Later than this, another invocation.
_SAME_INVOCATION_NS = 5_000_000
_RAN = frozenset({JOB_KIND.EXECUTED, JOB_KIND.FAILED, JOB_KIND.DEBOUNCE_FLUSHED, JOB_KIND.SKIPPED})


def overdue_since_ns(state: JobState, silence_ns: int | None = None) -> int | None:
    """When the instance was due to run and has not (the producer's clock), or None.

    Not once it ended (terminated, or purged after its retries) after being told, nor once a run came
    at or after the one awaited, nor once a run of its own came between (below): asked of the state as
    it stands, so the order events came in does not matter. Whether an instance that is due counts as
    overdue is the bridge's settings' to say (`overdue_tasks`, `correlate.step.overdue_at`). A continuous
    job tells no next run: given `silence_ns`, how long it may go without one (`silent_continuous`), one
    counted active is due that long after it last ran (or started).
    """
    if state.job_type == CONTINUOUS_JOB_TYPE:
        since = max(state.ran_ns, state.started_ns)
        return since + silence_ns if silence_ns is not None and state.counted and since else None
    if not state.due_ns or state.ran_ns >= state.due_from_ns or state.due_told_id == state.waived_id:
        return None
    if state.succeeded_from_ns > state.due_told_ns + _SAME_INVOCATION_NS and state.succeeded_ns < state.due_from_ns:
        # A task's run begun after its schedule was told, and ended before its time, that told no schedule
        # of its own (the engine tells one before its run's end): the schedule stands, or the run cancelled
        # it (`ctx.cancelSchedule()`: nothing tells it). Awaited no more: an order paid is no alarm lost.
        return None
    if state.terminated and state.ended_ns >= state.due_told_ns:
        return None
    return state.due_ns


# The latest ends of runs of retries kept (and the failures after the oldest of them) to place what is
# told late: its producer re-sends a batch for 7 s at most, while sixteen runs of an instance take
# longer than that (each an alarm of its own, a retry after its backoff). Told later still, a failure
# is counted in a run of its own, and an end no longer parts the runs on either side of it.
_ENDS_KEPT = 16
_COUNTS_FAILURES = frozenset({JOB_KIND.FAILED, JOB_KIND.RETRY_EXHAUSTED, JOB_KIND.EXECUTED, JOB_KIND.TERMINATED})


def _ends(state: JobState) -> list[int]:
    return sorted({*state.resets, *(t for t, _ in state.exhausted), *(t for t, _ in state.final)})


def failed_attempts(state: JobState) -> int:
    """The failed attempts the failures told so far come to: in each run of retries (up to and with the
    end that closes it), every attempt once — those retried, and all an exhaustion counts — and the
    failure not retried that ended it, but for one an exhaustion in the same millisecond counts already
    (the seed guide's `job.failed` with `willRetry: false`, then `job.retryExhausted`)."""
    if not (state.retried or state.final or state.exhausted):
        return 0
    ends = _ends(state)
    # Counted, not listed: an exhaustion's attempts 1..N, and each attempt told beyond them, once.
    exhausted_at: dict[int, int] = {}
    for t, count in state.exhausted:
        run = bisect_left(ends, t)
        exhausted_at[run] = max(exhausted_at.get(run, 0), count)
    beyond: set[tuple[int, int]] = set()  # (run, attempt) of retried attempts past their run's exhaustion
    for t, attempt in state.retried:
        run = bisect_left(ends, t)
        if attempt > exhausted_at.get(run, 0):
            beyond.add((run, attempt))
    finals = sum(1 for t, attempt in state.final if attempt > exhausted_at.get(bisect_left(ends, t), 0))
    return sum(exhausted_at.values()) + len(beyond) + finals


def _forget_old_failures(state: JobState) -> None:
    if len(state.resets) + len(state.exhausted) + len(state.final) <= _ENDS_KEPT:
        return  # no more ends than that (some may share a time)
    ends = _ends(state)
    if len(ends) <= _ENDS_KEPT:
        return
    told = failed_attempts(state)
    oldest = ends[-_ENDS_KEPT]
    state.resets = [t for t in state.resets if t >= oldest]
    state.exhausted = [e for e in state.exhausted if e[0] >= oldest]
    state.retried = [f for f in state.retried if f[0] > oldest]
    state.final = [f for f in state.final if f[0] >= oldest]
    state.failures_counted = max(state.failures_counted - (told - failed_attempts(state)), 0)


def _with_failure_told(state: JobState, record: JobRecord) -> None:
    """The record added to the failures told (new lists: the state before may still be read)."""
    told = (record.time_ns, record.attempt or 1)
    match record.kind:
        case JOB_KIND.FAILED if record.will_retry:
            state.retried = [*state.retried, told]
        case JOB_KIND.FAILED:
            state.final = [*state.final, told]
        case JOB_KIND.RETRY_EXHAUSTED:
            state.exhausted = [*state.exhausted, (record.time_ns, record.count or 0)]
        case _:
            state.resets = [*state.resets, record.time_ns]


def last_told_ns(state: JobState) -> int:
    """The latest time any of its events told (the producer's clock): how long it has said nothing. Every
    kind of event moves one of these on (a start, a run, an end, a schedule told)."""
    return max(state.started_ns, state.ran_ns, state.ended_ns, state.due_told_ns)


def presume_ended(state: JobState) -> tuple[JobState, list[Observation]]:
    """An instance counted active that has told nothing for `max_open`, counted no more: a continuous job
    that ends itself (`ctx.terminate()`) tells nothing, and was counted, and kept, for ever. Should it run
    again (a schedule slower than `max_open`), it is counted again."""
    if not state.counted:
        return state, []
    state = replace(state, counted=False, silent_after_ns=last_told_ns(state))
    return state, [replace(active_instance(state), value=-1)]


def close_job(state: JobState) -> tuple[JobState, list[Observation]]:
    """Await no more what the engine will never do (`otel-bridge close`): the instance's awaited run is
    waived, and it is counted active no more. What the engine tells of it later counts as before."""
    state = replace(state, waived_id=state.due_told_id)
    out: list[Observation] = []
    if state.counted:
        out.append(replace(active_instance(state), value=-1))
        state.counted = False
    return state, out


def fold_job(state: JobState | None, record: JobRecord) -> tuple[JobState, list[Observation]]:
    state = replace(state) if state is not None else JobState()
    state.job_name, state.job_type = record.job_name, record.job_type
    if record.correlation_id:
        state.correlation_id = record.correlation_id
    state.service, state.env = record.service, record.env
    resource = Resource(record.service, record.env)
    job = ((c.JOB_NAME, record.job_name), (c.JOB_TYPE, record.job_type))

    def obs(instrument: str, value: float, *extra: tuple[str, str]) -> Observation:
        return Observation(instrument, value, job + extra, resource)

    out: list[Observation] = []
    failure = (c.JOB_EXECUTION_RESULT, c.RESULT_FAILURE)

    def end_instance() -> None:
        if state.counted and record.time_ns >= state.started_ns:
            out.append(obs(c.M_JOB_INSTANCE_ACTIVE, -1))
            state.counted = False
        state.terminated = True
        state.ended_ns = max(state.ended_ns, record.time_ns)

    if record.kind in _COUNTS_FAILURES:
        _forget_old_failures(state)
        _with_failure_told(state, record)
        if (more := failed_attempts(state) - state.failures_counted) > 0:
            out.append(obs(c.M_JOB_EXECUTIONS, more, failure))
            state.failures_counted += more

    if record.kind in _RAN:
        state.ran_ns = max(state.ran_ns, record.time_ns)
        if state.silent_after_ns and record.time_ns > state.silent_after_ns and not state.terminated:
            # Presumed ended for its silence, it runs: a schedule slower than that, counted again.
            state.counted, state.silent_after_ns = True, 0
            out.append(obs(c.M_JOB_INSTANCE_ACTIVE, 1))
    elif record.scheduled_at_ns is not None and (record.time_ns, record.event_id) > (
        state.due_told_ns,
        state.due_told_id,
    ):
        state.due_ns, state.due_told_ns, state.due_told_id = record.scheduled_at_ns, record.time_ns, record.event_id
        waited = record.scheduled_at_ns - _EARLY_NS if record.kind is JOB_KIND.TASK_SCHEDULED else record.time_ns
        state.due_from_ns = waited

    match record.kind:
        case JOB_KIND.STARTED:
            state.started_ns = max(state.started_ns, record.time_ns)
            if not state.counted and (not state.terminated or record.time_ns > state.ended_ns):
                state.counted, state.terminated, state.silent_after_ns = True, False, 0
                out.append(obs(c.M_JOB_INSTANCE_ACTIVE, 1))
        case JOB_KIND.EXECUTED:
            out.append(obs(c.M_JOB_EXECUTIONS, 1, (c.JOB_EXECUTION_RESULT, c.RESULT_SUCCESS)))
            out.append(obs(c.M_JOB_EXECUTION_LAST, record.time_ns / 1e9, (c.JOB_EXECUTION_RESULT, c.RESULT_SUCCESS)))
            if record.duration_ms is not None:
                out.append(obs(c.M_JOB_EXECUTION_DURATION, record.duration_ms / 1000))
            began = record.time_ns - int(record.duration_ms * 1_000_000) if record.duration_ms is not None else 0
            if record.time_ns > state.succeeded_ns:
                state.succeeded_ns, state.succeeded_from_ns = record.time_ns, began
            elif record.time_ns == state.succeeded_ns:
                state.succeeded_from_ns = max(state.succeeded_from_ns, began)
        case JOB_KIND.SKIPPED:
            out.append(obs(c.M_JOB_EXECUTIONS, 1, (c.JOB_EXECUTION_RESULT, c.TASK_RESULT_SKIPPED)))
        case JOB_KIND.FAILED:
            out.append(obs(c.M_JOB_EXECUTION_LAST, record.time_ns / 1e9, failure))
            if record.time_ns >= state.failed_ns:
                state.failed_ns, state.failure = record.time_ns, (record.reason or "")[:FAILURE_SHOWN]
        case JOB_KIND.RETRY_EXHAUSTED:
            out.append(obs(c.M_JOB_RETRY_EXHAUSTED, 1, (c.JOB_RETRY_EXHAUSTED_REASON, record.reason or "")))
            end_instance()
        case JOB_KIND.TERMINATED:
            out.append(obs(c.M_JOB_TERMINATIONS, 1))
            end_instance()
        case JOB_KIND.DEBOUNCE_FLUSHED:
            reason = ((c.JOB_NAME, record.job_name), (c.JOB_DEBOUNCE_FLUSH_REASON, record.reason or ""))
            out.append(Observation(c.M_JOB_DEBOUNCE_FLUSH_SIZE, record.count or 0, reason, resource))
            if record.duration_ms is not None:
                out.append(Observation(c.M_JOB_DEBOUNCE_FLUSH_DURATION, record.duration_ms / 1000, reason, resource))
        case JOB_KIND.TASK_SCHEDULED:
            trigger = ((c.JOB_NAME, record.job_name), (c.JOB_TASK_TRIGGER, record.trigger or ""))
            out.append(Observation(c.M_JOB_TASK_SCHEDULED, 1, trigger, resource))
            if record.scheduled_at_ns is not None:
                delay = max(record.scheduled_at_ns - record.time_ns, 0) / 1e9
                out.append(Observation(c.M_JOB_TASK_SCHEDULE_DELAY, delay, trigger, resource))
    return state, out
