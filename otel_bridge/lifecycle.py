"""The engine-neutral lifecycle vocabulary.

Sources translate their wire formats into these records; everything downstream
(correlation, state, export) speaks only this vocabulary, so a new engine is a
new source module and nothing else.
"""

from enum import StrEnum
from functools import cached_property
from operator import attrgetter
from types import SimpleNamespace

from msgspec import Struct

from otel_bridge import keys
from otel_bridge.ids import RunIdentity

AttributeValue = str | bool | int | float | list[str]


class FactKind(StrEnum):
    RUN_QUEUED = "run.queued"
    RUN_STARTED = "run.started"
    RUN_PAUSED = "run.paused"
    RUN_RESUMED = "run.resumed"
    RUN_ENDED = "run.ended"
    ATTEMPT_STARTED = "attempt.started"
    ATTEMPT_ENDED = "attempt.ended"
    SLEEP_STARTED = "sleep.begun"
    SLEEP_ENDED = "sleep.ended"
    # What happened to a step besides starting and ending. Each is a span event,
    # and, when `closes_attempt` is set, the end of the attempt it names.
    RETRY_SCHEDULED = "attempt.retry_scheduled"
    RETRIES_EXHAUSTED = "attempt.retries_exhausted"
    TIMEOUT_SET = "attempt.timeout_set"
    TIMEOUT_EXCEEDED = "attempt.timeout_exceeded"
    # Anything else worth a span event on the run (or the step it names).
    ANNOTATION = "annotation"
    # The run moved into a state of its own (state machines): `entered_state` names it.
    STATE_ENTERED = "state.entered"
    # A human task of the run opened or closed: `step` is the task's id, `label` its kind.
    TASK_OPENED = "task.opened"
    TASK_CLOSED = "task.closed"
    # Something outside any run that starts runs (an inbound event): a run of its own kind,
    # begun and ended by this one fact; the runs it started link to it.
    TRIGGER = "trigger"

    @classmethod
    def _missing_(cls, value: object) -> "FactKind | None":
        # Run state stored by earlier versions spells a sleep's start the way its first engine did.
        return cls.SLEEP_STARTED if value == "sleep.started" else None


# Facts that are notes about a step or the run rather than its start or end.
NOTE_KINDS = frozenset(
    {
        FactKind.RETRY_SCHEDULED,
        FactKind.RETRIES_EXHAUSTED,
        FactKind.TIMEOUT_SET,
        FactKind.TIMEOUT_EXCEEDED,
        FactKind.ANNOTATION,
    }
)


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLATION = "cancellation"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"


# The members again, as plain attributes: on Python 3.11 reading a member off its enum class
# (`FactKind.RUN_ENDED`) goes through EnumType.__getattr__'s hook, ~150 ns or ten times a
# module attribute, and the fold, span building and the sources compare kinds fact by fact.
# `KIND.RUN_ENDED is FactKind.RUN_ENDED`.
KIND = SimpleNamespace(**FactKind.__members__)
OUTCOME = SimpleNamespace(**Outcome.__members__)


class ErrorInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    message: str
    type: str | None = None
    stacktrace: str | None = None
    step: str | None = None
    attempt: int | None = None


class RunKind(StrEnum):
    WORKFLOW = "workflow"
    TRIGGER = "trigger"


class RunRef(Struct, frozen=True, kw_only=True, omit_defaults=True, dict=True):
    """A run as the source knows it: its identity plus the names shown to people.

    `name` may be empty when an event does not carry it (it is learnt from another).
    """

    engine: str
    env: str
    service: str
    run_id: str
    name: str
    correlation_id: str | None = None
    tenant: str | None = None
    kind: RunKind = RunKind.WORKFLOW
    # Low-cardinality facts about the run shown on its root span (a workspace id, a definition id).
    attributes: dict[str, AttributeValue] = {}

    # Cached: asked for every record of a batch, and a RunRef never changes (frozen).
    @cached_property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.engine, self.env, self.service, self.run_id, self.tenant)

    @cached_property
    def state_key(self) -> str:
        return keys.run_key(self.identity.fields())


class Fact(Struct, kw_only=True, omit_defaults=True):
    """One thing that happened in a run, at `time_ns` (Unix epoch nanoseconds).

    Like every record of this vocabulary, a msgspec Struct: built once per event and
    written as a journal row, it costs a tenth of a pydantic model, and sources build it
    from wire models that are validated already (no validation on construction).
    """

    event_id: str
    time_ns: int
    kind: FactKind
    # The producer's name for it (e.g. "retry.scheduled"): span events carry it.
    name: str
    step: str | None = None
    attempt: int | None = None
    outcome: Outcome | None = None
    closes_attempt: Outcome | None = None
    error: ErrorInfo | None = None
    duration_ms: float | None = None
    cached: bool = False
    reason: str | None = None
    # The name people know a step or task by, when `step` is an id.
    label: str | None = None
    # When a pause says the run will wake up (Unix ns): a run still paused well after it is overdue.
    resume_at_ns: int | None = None
    # The state this fact moved the run into (state machines), if it did.
    entered_state: str | None = None
    # The state a fact that moved nothing happened in (state machines), when its source tells it: places
    # it among moves of the same instant, which its time alone cannot.
    in_state: str | None = None
    # Runs this one follows from (a trigger's run id): the root span links to their roots. On an attempt's
    # start, the run the attempt before it ran in, when not this one (a retry's trace): its span links there.
    links: tuple[str, ...] = ()
    # Which of several like facts of one step this is, when the source numbers them (the
    # retries a summary tells of): keeps them apart in deduplication.
    ordinal: int | None = None
    # On a run's end: the engine said so without stopping the run (Phase-10's cancel), whose steps go
    # on and which is told completed or failed later. The run stays open for them (`cancel_grace`).
    carries_on: bool = False
    # On a run's end: its engine's summary of the run (a timeline, fetched as it ends) follows and tells what
    # the live stream does not (Phase-10's retries); the run waits for it as for a gap (`gap_grace_ns`).
    summary_follows: bool = False
    # Told by such a summary of the whole run rather than live.
    summary: bool = False
    # `{}` is copied for each fact (msgspec does so for empty mutable defaults).
    attributes: dict[str, AttributeValue] = {}
    # Arrival order inside the run, set by the fold: tells whether a fact came
    # before or after the span it belongs to was sent.
    seq: int = 0

    @property
    def order(self) -> tuple[int, str]:
        # Timestamps share milliseconds; the UUIDv7 event id breaks ties in
        # emission order.
        return (self.time_ns, self.event_id)


# `Fact.order` as a sort key (C speed: facts are sorted at every settle).
by_order = attrgetter("time_ns", "event_id")


class WorkflowRecord(Struct, frozen=True):
    """One fact of one run: a plain pair, built per event."""

    run: RunRef
    fact: Fact


class JobKind(StrEnum):
    STARTED = "started"
    EXECUTED = "executed"
    FAILED = "failed"
    RETRY_EXHAUSTED = "retry_exhausted"
    TERMINATED = "terminated"
    DEBOUNCE_STARTED = "debounce_started"
    DEBOUNCE_FLUSHED = "debounce_flushed"
    TASK_SCHEDULED = "task_scheduled"
    # An occurrence its scheduler let pass on purpose (the runtime v2's schedule outside business days).
    SKIPPED = "skipped"


JOB_KIND = SimpleNamespace(**JobKind.__members__)  # as KIND, for the same reason


# The job type whose next run its own code schedules (`scheduledAt`), and may cancel or end unsaid.
TASK_JOB_TYPE = "task"
CONTINUOUS_JOB_TYPE = "continuous"
# The job types of a scheduler that tells every occurrence it fires (the runtime v2's schedules, by their
# `trigger_type`: cron, or once at a time): an occurrence whose time passes untold is a lost one.
SCHEDULED_JOB_TYPES = frozenset({"recurring", "schedule"})


class JobRecord(Struct, kw_only=True):
    """One job lifecycle observation."""

    event_id: str
    time_ns: int
    kind: JobKind
    engine: str
    env: str
    service: str
    instance_id: str
    job_name: str
    job_type: str
    duration_ms: float | None = None
    count: int | None = None
    # The attempt a job execution or failure was (1 = the first try).
    attempt: int | None = None
    # A failure the engine retries (`willRetry`): its attempt is one of a run of retries.
    will_retry: bool = False
    # Why: a retry exhaustion's, a flush's, a termination's; a failure's error message.
    reason: str | None = None
    trigger: str | None = None
    # When the instance is next to run, as the engine told it: a task's scheduledAt, a debounce's flushAt.
    scheduled_at_ns: int | None = None
    # The application's own id of the instance (durable-effect's job `id`), as its logs name it.
    correlation_id: str | None = None

    @property
    def state_key(self) -> str:
        return keys.job_key(self.engine, self.env, self.service, self.instance_id)


LifecycleRecord = WorkflowRecord | JobRecord


def event_id_of(record: LifecycleRecord) -> str:
    return record.fact.event_id if isinstance(record, WorkflowRecord) else record.event_id


def state_key_of(record: LifecycleRecord) -> str:
    return record.run.state_key if isinstance(record, WorkflowRecord) else record.state_key
