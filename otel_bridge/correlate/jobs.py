"""Job records -> metric observations (DESIGN.md section 4).

Jobs become metrics, not traces. A job instance's state is whether it is counted
in `job.instance.active`, so that an end (`job.terminated`, or exhausted retries,
after which the engine purges the instance) without a `job.started` (debounce and
task jobs never emit one), or one arriving before it, never drives the gauge below
zero; and which failed attempts of the current run of retries were counted, since
the last failed attempt is told only by the exhaustion's attempt count.

And when an instance is next to run, as the engine told it (a task's `scheduledAt`, a debounce's
`flushAt`), against when it last ran: an instance whose time passed with no run is **overdue**, the
job's lost alarm (`job.instance.overdue`), as a paused workflow past its `resumeAt` is.
"""

from msgspec import Struct
from msgspec.structs import replace

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.lifecycle import JOB_KIND, JobRecord


class JobState(Struct, kw_only=True, omit_defaults=True):
    counted: bool = False
    terminated: bool = False
    # When the instance last ended (terminated or purged): a start after it is a new instance.
    ended_ns: int = 0
    # Failed attempts counted in job.executions since the last success, and when that was.
    failed_attempts: list[int] = []
    succeeded_ns: int = 0
    # When it last failed: with `succeeded_ns`, job.execution.last_timestamp as it stands after a restart.
    failed_ns: int = 0
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


# An alarm may fire a little before the time it was set for: a run this much earlier still counts.
_EARLY_NS = 1_000_000_000
_RAN = frozenset({JOB_KIND.EXECUTED, JOB_KIND.FAILED, JOB_KIND.DEBOUNCE_FLUSHED})


def overdue_since_ns(state: JobState) -> int | None:
    """When the instance was due to run and has not (the producer's clock), or None.

    Not once it ended (terminated, or purged after its retries) after being told, nor once a run came
    at or after the one awaited: asked of the state as it stands, so the order events came in does not
    matter.
    """
    if not state.due_ns or state.ran_ns >= state.due_from_ns or state.due_told_id == state.waived_id:
        return None
    if state.terminated and state.ended_ns >= state.due_told_ns:
        return None
    return state.due_ns


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
    state.service, state.env = record.service, record.env
    resource = Resource(record.service, record.env)
    job = ((c.JOB_NAME, record.job_name), (c.JOB_TYPE, record.job_type))

    def obs(instrument: str, value: float, *extra: tuple[str, str]) -> Observation:
        return Observation(instrument, value, job + extra, resource)

    out: list[Observation] = []
    failure = (c.JOB_EXECUTION_RESULT, c.RESULT_FAILURE)

    def end_instance() -> None:
        if state.counted:
            out.append(obs(c.M_JOB_INSTANCE_ACTIVE, -1))
        state.counted, state.terminated = False, True
        state.ended_ns = max(state.ended_ns, record.time_ns)

    if record.kind in _RAN:
        state.ran_ns = max(state.ran_ns, record.time_ns)
    elif record.scheduled_at_ns is not None and (record.time_ns, record.event_id) > (
        state.due_told_ns,
        state.due_told_id,
    ):
        state.due_ns, state.due_told_ns, state.due_told_id = record.scheduled_at_ns, record.time_ns, record.event_id
        waited = record.scheduled_at_ns - _EARLY_NS if record.kind is JOB_KIND.TASK_SCHEDULED else record.time_ns
        state.due_from_ns = waited

    match record.kind:
        case JOB_KIND.STARTED:
            if not state.counted and (not state.terminated or record.time_ns > state.ended_ns):
                state.counted, state.terminated = True, False
                out.append(obs(c.M_JOB_INSTANCE_ACTIVE, 1))
        case JOB_KIND.EXECUTED:
            out.append(obs(c.M_JOB_EXECUTIONS, 1, (c.JOB_EXECUTION_RESULT, c.RESULT_SUCCESS)))
            out.append(obs(c.M_JOB_EXECUTION_LAST, record.time_ns / 1e9, (c.JOB_EXECUTION_RESULT, c.RESULT_SUCCESS)))
            if record.duration_ms is not None:
                out.append(obs(c.M_JOB_EXECUTION_DURATION, record.duration_ms / 1000))
            if record.time_ns >= state.succeeded_ns:
                state.succeeded_ns, state.failed_attempts = record.time_ns, []
        case JOB_KIND.FAILED:
            out.append(obs(c.M_JOB_EXECUTION_LAST, record.time_ns / 1e9, failure))
            state.failed_ns = max(state.failed_ns, record.time_ns)
            attempt = record.attempt or 1
            current = record.time_ns >= state.succeeded_ns
            if not (current and attempt in state.failed_attempts):
                out.append(obs(c.M_JOB_EXECUTIONS, 1, failure))
                if current:
                    state.failed_attempts.append(attempt)
        case JOB_KIND.RETRY_EXHAUSTED:
            out.append(obs(c.M_JOB_RETRY_EXHAUSTED, 1, (c.JOB_RETRY_EXHAUSTED_REASON, record.reason or "")))
            # The last attempt's failure is never sent: the attempt count is its only trace.
            untold = [n for n in range(1, (record.count or 0) + 1) if n not in state.failed_attempts]
            if untold:
                out.append(obs(c.M_JOB_EXECUTIONS, len(untold), failure))
                state.failed_attempts.extend(untold)
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
