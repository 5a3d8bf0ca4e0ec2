"""The fold of workflow facts over a run's stored state.

`fold` takes in one fact, `settle` sends the spans that have ended. Both are pure:
state in, new state and outputs out, the time passed in. Run state is the fact
set itself (deduplicated by meaning) plus what was already sent, so the spans are
always recomputed from facts and arrival order cannot change them.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from msgspec import Struct
from msgspec.structs import replace

from otel_bridge import conventions as c
from otel_bridge.correlate.outputs import Observation, Resource, SpanRecord, SpanRole, SpanStatus
from otel_bridge.correlate.spans import build_spans, chained, ends_attempt, followed
from otel_bridge.ids import EVENT_DIGEST_BYTES, event_digest, run_trace_id, within_ratio
from otel_bridge.lifecycle import KIND, NOTE_KINDS, OUTCOME, Fact, RunKind, RunRef, by_order


def _holds(digests: bytes, digest: bytes) -> bool:
    """Whether `digest` is one of `digests` (as a whole, not straddling two of them). A new event id
    matching a digest of a forgotten run (odds n/2^64) is counted as a duplicate rather than late, and
    neither attaches it to the trace that has left."""
    at = digests.find(digest)
    while at != -1 and at % EVENT_DIGEST_BYTES:
        at = digests.find(digest, at + 1)
    return at != -1


_EXECUTING_KINDS = frozenset({KIND.RUN_STARTED, KIND.RUN_RESUMED, KIND.ATTEMPT_STARTED, KIND.ATTEMPT_ENDED})


class RunState(Struct, kw_only=True, omit_defaults=True, dict=True):
    run: RunRef
    facts: list[Fact] = []
    seq: int = 0
    # span id (hex) -> `seq` when it was sent. Journalled apart from the header (a row per settling),
    # which would otherwise grow with every span a long run sends and be rewritten at every batch.
    emitted: dict[str, int] = {}
    closed: bool = False
    ended: bool = False
    # Bridge clock when the run's end arrived (0: not yet).
    ended_seen_ns: int = 0
    # The state the latest (by time) state-changing fact put the run in, and that fact's order.
    execution_state: str = c.STATE_EXECUTING
    state_order: tuple[int, str] | None = None

    # When the bridge first heard of the run (its clock, not the producer's): max_open
    # counts from here, so replaying an old log does not close its runs at once.
    opened_ns: int = 0
    # Bridge clock when the run was closed (0: open).
    closed_ns: int = 0

    # The definition name the run is counted under in workflow.execution.active: fixed when first
    # counted, so a name learnt later (from another event) cannot leave the gauge unbalanced.
    counted_name: str | None = None

    # What tells a re-sent event (a duplicate) from a late one once the run has forgotten its facts
    # (closed and shown long enough), until the run itself is forgotten `dedup_ttl_seconds` later:
    # the event ids, each as its 8-byte digest (`event_digest`), one after another. Closed runs
    # remembered for a week are most of a busy bridge's state: as ids (~40 bytes each) a run of
    # 30 events no longer fit a page's share of a row and spilled into pages of their own.
    seen_digests: bytes = b""
    # The same as ids, as states written before the digests were: read, and turned into digests
    # when such a run is next changed.
    seen_ids: list[str] = []
    # `seq` when the run was last settled (0: never): what came since is what a settling looks at.
    settled_seq: int = 0
    # Told ended only by ends that do not stop it (`Fact.carries_on`): settled as an open run, its root
    # kept, until another end comes or `SettlePolicy.cancel_grace_ns` has passed since.
    carrying_on: bool = False
    # Told ended by an end after which the engine's summary of the run follows (`Fact.summary_follows`),
    # and whether a summary telling its end has come: until it has, the run waits as for a gap.
    awaits_summary: bool = False
    summarised: bool = False
    # Sampled out (`SettlePolicy.sample_bound`) at its first event (`step.apply`, the one place that
    # decides): its spans are built and counted, but kept back (`emitted` then holds what was built, not
    # what was sent) until its end, when it is sent whole if any of them failed or it never ended, and
    # not at all otherwise. Still set once closed only if it was never sent.
    withheld: bool = False
    # Closed by hand (`otel-bridge close`: the engine will never tell its end), and why: it closes at
    # its next settling, as incomplete unless its end came, waiting for no gap and no step going on.
    close_reason: str = ""
    # The time of its latest fact (producer clock, ns; 0: none, or stored before this was kept), whatever
    # order they came in: how long it has told nothing, from its header alone (`silent_executing`, `runs
    # --silent-for`), and where a run closed without its end ends.
    last_told_ns: int = 0

    # Not fields, so never stored (`dict=True` lets them live on the instance); built on first
    # use, then kept up by `append` and `replace_fact`: where each fact that has an identity
    # sits in `facts`, and the facts' event ids. Taking in a fact then costs the same in a run
    # of ten thousand facts as in one of ten, and scans nothing (a scan per fact made a run
    # of n facts cost n² identity computations).
    #   _where: dict[tuple[object, ...], int]
    #   _ids: set[str]
    # And the span id of each attempt, a hash computed once per run in memory, not at every settle:
    #   _attempt_ids: dict[tuple[str, int], bytes]
    # And, for settling a run that keeps going from what is new (`_facts_told_of_since_settled`): the
    # facts kept since it was last settled, and where each step's facts sit, by attempt:
    #   _told: list[Fact]
    #   _by_step: dict[str, dict[int | None, list[int]]]

    def position_of(self, identity: tuple[object, ...]) -> int | None:
        where: dict[tuple[object, ...] | None, int] | None = self.__dict__.get("_where")
        if where is None:
            where = {}
            self._where = where
            for i, known in enumerate(self.facts):
                where.setdefault(_identity(known), i)
        return where.get(identity)

    def knows_event(self, event_id: str) -> bool:
        """Whether `event_id` came before: the run's event ids are its deduplication (no table of
        seen ids for workflow events: this costs nothing to keep, and goes when the run goes)."""
        ids = self.__dict__.get("_ids")
        if ids is None:
            ids = self._ids = {f.event_id for f in self.facts}
        if event_id in ids:
            return True
        if self.seen_ids and event_id in self.seen_ids:
            return True
        return bool(self.seen_digests) and _holds(self.seen_digests, event_digest(event_id))

    def remember_seen(self, event_ids: Iterable[str]) -> None:
        """Keep these event ids among the seen ones, as digests (the ids themselves no longer needed)."""
        size = EVENT_DIGEST_BYTES
        known = {self.seen_digests[i : i + size] for i in range(0, len(self.seen_digests), size)}
        known.update(event_digest(event_id) for event_id in (*self.seen_ids, *event_ids))
        self.seen_digests = b"".join(sorted(known))
        self.seen_ids = []

    def append(self, fact: Fact, identity: tuple[object, ...] | None) -> None:
        """Keep `fact`, whose `_identity` is `identity` (the fold has it already)."""
        where = self.__dict__.get("_where")
        if identity is not None and where is not None:
            where.setdefault(identity, len(self.facts))
        by_step = self.__dict__.get("_by_step")
        if by_step is not None and fact.step is not None and fact.kind in _STEP_KINDS:
            by_step.setdefault(fact.step, {}).setdefault(fact.attempt, []).append(len(self.facts))
        self._remember(fact)
        self.facts.append(fact)

    def replace_fact(self, i: int, fact: Fact) -> None:
        """Keep `fact` in place of the fact at `i`, the same fact told otherwise (same identity:
        the same kind, step and attempt, so it sits where `_by_step` says)."""
        told_before = self.facts[i].time_ns
        self._remember(fact)
        self.facts[i] = fact
        if fact.time_ns < told_before == self.last_told_ns:  # told earlier than it was: the latest may be another
            self.last_told_ns = max(f.time_ns for f in self.facts)

    def _remember(self, fact: Fact) -> None:
        if fact.time_ns > self.last_told_ns:
            self.last_told_ns = fact.time_ns
        ids = self.__dict__.get("_ids")
        if ids is not None:
            ids.add(fact.event_id)
        told = self.__dict__.get("_told")
        if told is not None:
            told.append(fact)

    def told_since_settled(self) -> list[Fact]:
        """The facts kept since the run was last settled."""
        told = self.__dict__.get("_told")
        # Not kept since (read from the store): their arrival numbers tell.
        return told if told is not None else [f for f in self.facts if f.seq > self.settled_seq]

    def mark_settled(self) -> None:
        self.settled_seq = self.seq
        told: list[Fact] = []
        self._told = told

    def step_facts(self) -> dict[str, dict[int | None, list[int]]]:
        """Where each step's facts (its attempts' starts, ends and notes) sit in `facts`, by attempt."""
        by_step: dict[str, dict[int | None, list[int]]] | None = self.__dict__.get("_by_step")
        if by_step is None:
            by_step = {}
            self._by_step = by_step
            for i, f in enumerate(self.facts):
                if f.step is not None and f.kind in _STEP_KINDS:
                    by_step.setdefault(f.step, {}).setdefault(f.attempt, []).append(i)
        return by_step

    @property
    def going_on(self) -> bool:
        """Not ended, or told ended only by an end that does not stop it (`carrying_on`): still running,
        so counted active, listed among the open runs, and able to turn overdue."""
        return not self.closed and (not self.ended or self.carrying_on)

    @property
    def held_open(self) -> bool:
        """Told ended only by an end that does not stop it, and not closed since: settled as an open run
        until `SettlePolicy.cancel_grace_ns` has passed (a stop told that nothing more comes ends it)."""
        return self.carrying_on and not self.closed

    @property
    def counted_state(self) -> str | None:
        """The workflow.execution.state this run is counted under in workflow.execution.active."""
        if not self.going_on or not self.facts or self.run.kind is RunKind.TRIGGER:
            return None
        return self.execution_state

    @property
    def metric_name(self) -> str:
        return self.counted_name if self.counted_name is not None else self.run.name


def counted_under(state: RunState) -> str | None:
    """`counted_state` from a state's header alone (facts not read): what a restart re-counts."""
    if state.facts:  # stored by an earlier version, facts inside
        return state.counted_state
    if not state.going_on or state.counted_name is None or state.run.kind is RunKind.TRIGGER:
        return None
    return state.execution_state


class Admission(StrEnum):
    ACCEPTED = "accepted"
    # Same fact re-emitted under a new event id (a re-executed invocation).
    REPEATED = "repeated"
    # The run's root span has already been sent.
    LATE = "late"


# What `fold` and `settle` answer: made for every event and every settled run, so msgspec
# Structs (built in C) rather than dataclasses.
class FoldResult(Struct):
    state: RunState
    admission: Admission
    observations: list[Observation] = []
    # What changed in the run's fact set: the fact now kept, and the `seq` of one it replaced.
    added: Fact | None = None
    replaced: int | None = None


class SettleResult(Struct):
    state: RunState
    spans: list[SpanRecord] = []
    # What this settling added to `state.emitted` (the store journals it: a row per settling).
    sent: dict[str, int] = {}
    observations: list[Observation] = []
    incomplete: bool = False
    # The run ended but its facts show gaps: nothing was sent, ask again after a while.
    held: bool = False
    # It ended and was never sent (`RunState.withheld`, none of its spans failed, not incomplete).
    kept_back: bool = False


@dataclass(frozen=True, slots=True)
class SettlePolicy:
    max_open_ns: int = 7 * 86_400 * 10**9
    # How long an ended run with gaps waits for its missing events.
    gap_grace_ns: int = 15 * 10**9
    # How long a run told cancelled without being stopped (`Fact.carries_on`) waits for what follows.
    cancel_grace_ns: int = 3_600 * 10**9
    sleep_spans: bool = True
    # A run woken (or started) more than this after it was due gets a `workflow.overdue` event.
    overdue_grace_ns: int | None = 300 * 10**9
    # Runs whose trace id's low 64 bits are below this are sent as they go (the SDK's `traceidratio`
    # rule, so the same trace ids as its sampler's); the others are withheld (`RunState.withheld`).
    # None: every run is sent as it goes.
    sample_bound: int | None = None

    def samples(self, state: "RunState") -> bool:
        return (
            self.sample_bound is None
            or within_ratio(run_trace_id(state.run.identity), self.sample_bound)
            or retries_a_failed_run(state.run)
            or self.takes_family(state.run)
        )

    def takes_family(self, run: RunRef) -> bool:
        """Whether the ratio takes the family of a child run (`family_root`) by the run it began with: a parent
        taken is shown with every run it called, and theirs, as the SDK's `parentbased_` samplers keep a trace
        whole. A child is taken by its own id too, so that which telling of it comes first (the one naming its
        parent, or another) changes when it is sent, never whether: decided again at its end (`settle_run`)."""
        root = family_root(run)
        return root is not None and within_ratio(run_trace_id(followed(run.identity, root)), self.sample_bound)

    def keeps_link(self, run: RunRef, trace_id: bytes) -> bool:
        """Whether a link of `run`'s to the trace `trace_id` leads to a trace that is sent: one the ratio takes (a
        trigger, its own one-span trace, which never fails, is sent only then); any of a retry of a failed run
        (they lead to the run it retries, sent whole for failing); a child's to its parent, taken with the
        family. A link to a trace kept back would lead nowhere."""
        return (
            self.sample_bound is None
            or within_ratio(trace_id, self.sample_bound)
            or retries_a_failed_run(run)
            or (trace_id == _parent_trace(run) and self.takes_family(run))
        )


def family_root(run: RunRef) -> str | None:
    """The run the family of a child run began with (`workflow.execution.root_id`, else the parent that called
    it); None for a run no other called."""
    root = run.attributes.get(c.WORKFLOW_EXECUTION_ROOT_ID) or run.attributes.get(c.WORKFLOW_EXECUTION_PARENT_ID)
    return root if isinstance(root, str) and root else None


def _parent_trace(run: RunRef) -> bytes | None:
    """The trace of the run that called this one, if one did."""
    parent = run.attributes.get(c.WORKFLOW_EXECUTION_PARENT_ID)
    return run_trace_id(followed(run.identity, parent)) if isinstance(parent, str) and parent else None


def retries_a_failed_run(run: RunRef) -> bool:
    """A run that is its operator's retry of a failed run (`workflow.execution.retry`): always sent, as the run
    it retries was (a failed run is sent whole). Left out, the failed trace was there without the retry that
    mended it, and the retry's link to it was dropped as if it led nowhere."""
    return bool(run.attributes.get(c.WORKFLOW_EXECUTION_RETRY))


def _identity(f: Fact) -> tuple[object, ...] | None:
    """What makes two facts the same fact, whatever their event ids."""
    match f.kind:
        case KIND.RUN_QUEUED | KIND.RUN_STARTED:
            return (f.kind,)
        case KIND.RUN_ENDED:
            # Told ended twice alike is one end (a message and a timeline); a cancelled run then
            # told completed has ended twice (Phase-10 cancels without stopping the run).
            return (f.kind, f.outcome)
        case KIND.ATTEMPT_STARTED:
            return (f.kind, f.step, f.attempt)
        case KIND.ATTEMPT_ENDED if not f.cached:
            return (f.kind, f.step, f.attempt)
        case KIND.TRIGGER:
            return (f.kind,)
        case KIND.TASK_OPENED | KIND.TASK_CLOSED:
            return (f.kind, f.step)
        case kind if kind in NOTE_KINDS and f.step is not None:
            return (f.kind, f.name, f.step, f.attempt, f.ordinal)
    # Pauses, resumes and sleeps repeat legitimately: only the event id names them.
    return None


def _state_named_by(f: Fact) -> str | None:
    """The workflow.execution.state a fact puts its run in, if it says anything about it."""
    if f.kind is KIND.RUN_QUEUED:
        return c.STATE_PENDING
    if f.kind is KIND.RUN_PAUSED:
        return c.STATE_PAUSED
    if f.kind in _EXECUTING_KINDS or f.kind in (KIND.SLEEP_ENDED, KIND.STATE_ENTERED):
        return c.STATE_EXECUTING
    return None


def _advance_state(state: "RunState", f: Fact) -> None:
    """Move workflow.execution.state on `f`: the latest stating fact wins, whatever the arrival order."""
    if f.kind in (KIND.RUN_ENDED, KIND.TRIGGER):
        state.ended = True
    named = _state_named_by(f)
    if named is not None and (state.state_order is None or f.order > tuple(state.state_order)):
        state.state_order = f.order
        state.execution_state = named


def _definition(run: RunRef, name: str | None = None) -> tuple[tuple[str, str], ...]:
    """The attributes every workflow metric carries: which engine, which definition."""
    return ((c.WORKFLOW_PLATFORM_NAME, run.engine), (c.WORKFLOW_DEFINITION_NAME, run.name if name is None else name))


def _resource(run: RunRef) -> Resource:
    return _producer(run.service, run.env)


@lru_cache(maxsize=1024)
def _producer(service: str, env: str) -> Resource:
    # One Resource per producer rather than one per observation (a frozen dataclass is slow to build).
    return Resource(service, env)


def active_run(state: RunState, counted: str, value: int = 1) -> Observation:
    """What a run counted in workflow.execution.active under the state `counted` contributes."""
    attributes = (*_definition(state.run, state.metric_name), (c.WORKFLOW_EXECUTION_STATE, counted))
    return Observation(c.M_WORKFLOW_EXECUTION_ACTIVE, value, attributes, _resource(state.run))


def _active_change(state: RunState, old: str | None) -> list[Observation]:
    """The workflow.execution.active moves from counting the run under `old` to its state now."""
    new = state.counted_state
    if new == old:
        return []
    if state.counted_name is None:
        state.counted_name = state.run.name
    return [active_run(state, which, value) for value, which in ((-1, old), (1, new)) if which is not None]


def _counted(f: Fact, run: RunRef) -> list[Observation]:
    """Counters that move the moment a fact is known."""
    if f.entered_state is not None:
        # The first move (into the initial state) leaves none: no `from`, rather than an empty one.
        left = f.attributes.get(c.WORKFLOW_STATE_FROM)
        came_from = ((c.WORKFLOW_STATE_FROM, str(left)),) if left is not None else ()
        moved = (*_definition(run), *came_from, (c.WORKFLOW_STATE_TO, f.entered_state))
        return [Observation(c.M_WORKFLOW_STATE_TRANSITIONS, 1, moved, _resource(run))]
    if f.step is None:
        return []
    if f.kind is KIND.RETRIES_EXHAUSTED:
        name = c.M_WORKFLOW_TASK_EXHAUSTED
    elif f.kind is KIND.RETRY_SCHEDULED:
        name = c.M_WORKFLOW_TASK_RETRIES
    # A timeout counts however it fires: told by the engine, or as a failure that says so.
    elif f.kind is KIND.TIMEOUT_EXCEEDED or (f.kind is KIND.ATTEMPT_ENDED and f.outcome is OUTCOME.TIMEOUT):
        name = c.M_WORKFLOW_TASK_TIMEOUTS
    else:
        return []  # most step facts (starts, ends) count nothing the moment they are known
    attributes = (*_definition(run), (c.WORKFLOW_TASK_NAME, f.label or f.step))
    return [Observation(name, 1, attributes, _resource(run))]


def _told_name(run: RunRef) -> bool:
    """Whether the run's name is one its engine told: not none, nor the stand-in a Phase-10 timeline,
    which carries no name, is given (its workflow's id)."""
    return bool(run.name) and run.name != run.attributes.get(c.WORKFLOW_DEFINITION_ID)


def _counted_facts(state: RunState) -> list[Observation]:
    """What the run's facts count the moment they are known, all of them: for a run counted late."""
    return [o for f in state.facts for o in _counted(f, state.run)]


def _learnt(known: RunRef, told: RunRef) -> RunRef:
    """What a run's events say of it, together: one event may carry a name another lacks, or the name
    of which another had only a stand-in."""
    update: dict[str, object] = {}
    if known.name and (known.correlation_id or not told.correlation_id) and not told.attributes:
        return known  # the common case: nothing this event could add
    if told.correlation_id and not known.correlation_id:
        update["correlation_id"] = told.correlation_id
    if told.attributes.keys() - known.attributes.keys():
        update["attributes"] = told.attributes | dict(known.attributes)
    if told.name and not _told_name(known) and (not known.name or _told_name(told)):
        update["name"] = told.name
    return replace(known, **update) if update else known


def _named(state: RunState, learnt: RunRef) -> list[Observation]:
    """Take in what a telling says of its run. A name told only now (the event-sourced runtime and the
    Phase-10 engine name a run in its start alone, and a move, a step or a timeline may arrive first)
    counts what the facts before it could not, under it, and moves the run's place in the active gauge
    to it."""
    unnamed = not _told_name(state.run)
    state.run = learnt
    if not unnamed or not _told_name(learnt) or state.closed:  # a closed run counted its facts as it closed
        return []
    observed = _counted_facts(state)
    counted = state.counted_state
    if counted is not None and state.counted_name not in (None, learnt.name):
        observed.append(active_run(state, counted, -1))
        state.counted_name = learnt.name
        observed.append(active_run(state, counted, 1))
    return observed


def fold(state: RunState | None, run: RunRef, fact: Fact, now_ns: int) -> FoldResult:
    """Take one fact, received at `now_ns`, into the run's state."""
    named: list[Observation] = []
    if state is None:
        state = RunState(run=run, opened_ns=now_ns)
    elif run is not state.run:
        learnt = _learnt(state.run, run)
        if learnt is not state.run:
            named = _named(state, learnt)
    if fact.kind is KIND.RUN_ENDED and (fact.summary_follows or fact.summary) and not state.closed:
        # Marked whether or not this telling is new: a summary that only repeats the live end has come all the same.
        state.awaits_summary |= fact.summary_follows
        state.summarised |= fact.summary
    if state.knows_event(fact.event_id):
        return FoldResult(state, Admission.REPEATED, named)
    identity = _identity(fact)
    if state.closed:
        if identity is not None and state.position_of(identity) is not None:
            return FoldResult(state, Admission.REPEATED)
        # Remembered, so that the same event sent again is a duplicate, not late a second time.
        state.remember_seen([fact.event_id])
        return FoldResult(state, Admission.LATE)

    state.seq += 1
    fact.seq = state.seq  # the fold owns the fact it is given
    i = state.position_of(identity) if identity is not None else None
    if i is not None:
        known = state.facts[i]
        # Keep the earliest telling of a fact, whichever arrived first, with what any
        # telling adds (a live message names a step's type, a summary does not).
        earlier, later = (fact, known) if fact.order < known.order else (known, fact)
        merged = later.attributes | earlier.attributes
        if merged != earlier.attributes or (later.label and not earlier.label):
            earlier = replace(earlier, attributes=merged, label=earlier.label or later.label)
        if earlier is known:
            return FoldResult(state, Admission.REPEATED, named)
        state.replace_fact(i, earlier)
        return FoldResult(state, Admission.REPEATED, named, added=earlier, replaced=known.seq)

    counted = state.counted_state
    state.append(fact, identity)
    if fact.kind is KIND.RUN_ENDED:
        state.ended_seen_ns = now_ns
        # Only while no end that stops the run has come, in whatever order they arrive.
        state.carrying_on = fact.carries_on and (state.carrying_on or not state.ended)
    _advance_state(state, fact)
    # Not yet named: counted once a telling names it (`_named`), or under the name it has as it closes.
    observations = _counted(fact, state.run) if _told_name(state.run) else []
    if named:
        observations = named + observations
    observations += _active_change(state, counted)
    return FoldResult(state, Admission.ACCEPTED, observations, added=fact)


def merge(kept: RunState, later: RunState, now_ns: int) -> RunState:
    """One run held in two states as one: `later`'s facts taken into `kept` as if they had come to it
    after its own, and the spans either sent known as sent. Returns `kept`.

    A run is split so when it is set aside (its settling failed, or a downgraded version could not
    read it) and its producer goes on: its later events start it afresh under the same key. The fold
    is indifferent to order and deduplicates, so the joined run settles to the spans one state told
    every event would have. What `later` sent counts as sent once all its facts are in (at `kept`'s
    `seq` then), so none of its facts reads as arriving after its span left. `later` must not be
    closed: what a closed run sent at its end is not journalled (`journal.write`).
    """
    assert not later.closed, "a closed run's sent spans are not known"
    for fact in sorted(later.facts, key=lambda f: f.seq):
        fold(kept, later.run, fact, now_ns)
    if later.withheld and not kept.withheld:
        pass  # what `later` built was never sent: `kept`'s way sends it
    elif kept.withheld and not later.withheld:
        kept.withheld = False  # sent as it went since: what `kept` had built goes out as the rest does
        kept.emitted = {span_id: kept.seq for span_id in later.emitted}
    else:
        for span_id in later.emitted:
            kept.emitted.setdefault(span_id, kept.seq)
    if later.seen_digests or later.seen_ids:
        kept.seen_digests += later.seen_digests
        kept.remember_seen(later.seen_ids)
    return kept


def closes_at_ns(state: RunState, now_ns: int, policy: SettlePolicy) -> int:
    """When a run that has not ended is closed as incomplete: `policy.max_open_ns` after the latest of when
    the bridge first heard of it, its latest event, and the latest time its engine said a pause of it would
    end (a sleep's or a retry's `resumeAt`). A run that keeps telling is going on, not stuck: an approval
    that gathers a comment a day, closed a week after it started, sent its trace incomplete and all it told
    after as late. Nor is a workflow asleep for thirty days: closed at a week, all it told on waking was
    late. One that does not wake is overdue from its `resumeAt` on, and closed `max_open` after it. The
    engine's clock meets the bridge's here: a skew of seconds against a grace of days.

    While the first of those times is still ahead of `now_ns`, that time is returned: the soonest the run
    can close, when it is looked at again — most runs' facts are then never looked through."""
    opened = state.opened_ns + policy.max_open_ns
    if opened > now_ns:
        return opened
    told = (f.resume_at_ns for f in state.facts if f.kind is KIND.RUN_PAUSED and f.resume_at_ns is not None)
    return max(opened, state.last_told_ns + policy.max_open_ns, max(told, default=0) + policy.max_open_ns)


def settle(state: RunState, now_ns: int, policy: SettlePolicy) -> SettleResult:
    """Send every span that has ended and was not sent yet; close the run when it ended.

    Called once the run's settle window has passed. A run not ended by `closes_at_ns` (`max_open`
    after the bridge first heard of it, its latest event, or the end of its latest pause), or closed by hand
    (`close_reason`), is closed as incomplete.
    An ended run whose facts show gaps waits up to `policy.gap_grace_ns` for them. A run told
    ended by an end that does not stop it is settled as still open for `policy.cancel_grace_ns`:
    its steps that go on are sent as they end, and its root when it ends for good. A run the sampling
    leaves out (`policy.sample_bound`) is settled alike, its spans counted but kept back; at its end it
    is sent whole if any span of it failed or it is closed incomplete (`result.kept_back` otherwise).
    """
    result = SettleResult(state)
    if state.closed or not state.facts:
        return result
    ended = state.ended
    by_hand = bool(state.close_reason)
    # `carrying_on` is only ever set with the end that made the run `ended`.
    carrying_on = state.carrying_on and not by_hand and now_ns - state.ended_seen_ns < policy.cancel_grace_ns
    if carrying_on:
        ended = False
    incomplete = not ended and (by_hand or now_ns >= closes_at_ns(state, now_ns, policy))
    incomplete_at = state.last_told_ns if incomplete else None
    if ended and not by_hand and now_ns - state.ended_seen_ns < policy.gap_grace_ns and _awaits_more(state):
        result.held = True
        return result

    # A withheld run's end builds it whole, as if nothing had left: what was built before was kept back.
    whole = state.withheld and (ended or incomplete)
    # Kept from the second settling on: most runs are settled once, and a dict per run would cost them.
    attempt_ids = state.__dict__.setdefault("_attempt_ids", {}) if state.emitted else None
    told = None if ended or incomplete else _facts_told_of_since_settled(state)
    facts = state.facts if told is None else told
    if carrying_on and told is None:
        # Without the end that did not stop it, what is still running is not ended at it.
        facts = [f for f in facts if f.kind is not KIND.RUN_ENDED]
    spans = (
        build_spans(
            state.run,
            facts,
            {} if whole else state.emitted,
            incomplete_at,
            policy.sleep_spans,
            policy.overdue_grace_ns,
            attempt_ids,
            state.close_reason,
        )
        if facts
        else []
    )
    state.mark_settled()
    # Sent whole when a span of it failed, as a tail sampler keeping failures would (but with every
    # span, however long the run: a Collector decides on what came within its `decision_wait`); when
    # it never ended (closed at `max_open`: stuck, or its end lost); or when the ratio takes it in now.
    send = not state.withheld or (whole and (incomplete or policy.samples(state) or any_failed(spans)))
    for span in spans:
        if span.end_ns is None or (span.role is SpanRole.RUN and not (ended or incomplete)):
            continue
        key = span.span_id.hex()
        built = key in state.emitted
        if not built:
            state.emitted[key] = result.sent[key] = state.seq
            # A kept-back span's exemplar would lead nowhere, unless its failure will take the run in.
            linked = send or span.status is SpanStatus.ERROR
            result.observations.extend(_span_observations(state.run, span, state.facts, linked))
        if send and (whole or not built):
            if span.remote_links and policy.sample_bound is not None:
                span.remote_links = [link for link in span.remote_links if policy.keeps_link(state.run, link[0])]
            result.spans.append(span)

    if ended or incomplete:
        counted = state.counted_state
        result.incomplete = incomplete
        result.kept_back = not send
        state.withheld = not send
        state.closed = True
        state.closed_ns = now_ns
        result.observations += _active_change(state, counted)
        if not _told_name(state.run):  # never named: what its facts count, under the name it has, not never
            result.observations += _counted_facts(state)
    return result


# What a step's attempt spans are built from; and what tells only of the run (its root span's
# events), which is sent when the run ends, from every fact.
_STEP_KINDS = NOTE_KINDS | {KIND.ATTEMPT_STARTED, KIND.ATTEMPT_ENDED}
_ROOT_ONLY_KINDS = frozenset({KIND.RUN_QUEUED, KIND.RUN_STARTED, KIND.RUN_PAUSED, KIND.RUN_RESUMED})


def _facts_told_of_since_settled(state: RunState) -> list[Fact] | None:
    """What a settling of a run still open builds its spans from, when only attempts of its steps can
    have ended since it was last settled: the facts of those attempts. None: every fact.

    A run that keeps going (a batch job with a step per item, a step polled ten thousand times) is
    settled once per settle window; building every span of it each time to send the newest grew with
    the run (100 ms at 10,000 attempts). While the run is open an attempt's span is made of its step's
    facts and nothing else (`_attempts`, `_attempt_span`), and every attempt that ended before the last
    settling was sent by it: so the steps told of since hold every attempt there is to send. Where each
    of a step's facts names its attempt, only the attempts told of are built, with the ones before them
    (an attempt whose start was lost starts where the one before it ended). A sleep, a state, a task or
    a note of no step may end spans of their own or change the run's: those settle from every fact, as
    do the run's end and its first settling. What arrived since and where each step's facts sit are
    kept up with the run in memory (`told_since_settled`, `step_facts`): nothing here walks the run.
    """
    if not state.settled_seq or not state.emitted:
        return None
    told: dict[str, set[int] | None] = {}
    for f in state.told_since_settled():
        if f.entered_state is not None:
            return None
        if f.kind in _STEP_KINDS and f.step is not None:
            if f.attempt is None:
                told[f.step] = None
            elif (numbers := told.setdefault(f.step, set())) is not None:
                numbers.update((f.attempt, f.attempt - 1))
        elif f.kind not in _ROOT_ONLY_KINDS:
            return None
    by_step = state.step_facts()
    positions: list[int] = []
    for step, numbers in told.items():
        by_attempt = by_step.get(step, {})
        # A note that names no attempt belongs to the latest one started by then: the whole step decides.
        if numbers is None or None in by_attempt:
            positions.extend(i for at in by_attempt.values() for i in at)
        else:
            positions.extend(i for n in numbers for i in by_attempt.get(n, ()))
    return [state.facts[i] for i in positions]


def forget_facts(state: RunState) -> None:
    """A closed run kept long enough to be shown: from now on it only recognises late events."""
    state.remember_seen(f.event_id for f in state.facts)
    state.facts = []
    state.emitted = {}
    # What only an open run, or its settling, reads: left at its default, it is left out of the
    # stored header (a week of closed runs is most of a busy bridge's state).
    state.seq = state.settled_seq = state.opened_ns = state.closed_ns = state.ended_seen_ns = state.last_told_ns = 0
    state.state_order = state.counted_name = None
    state.execution_state = c.STATE_EXECUTING
    state.carrying_on = state.withheld = state.awaits_summary = state.summarised = False
    state.__dict__.pop("_where", None)
    state.__dict__.pop("_ids", None)
    state.__dict__.pop("_attempt_ids", None)
    state.__dict__.pop("_told", None)
    state.__dict__.pop("_by_step", None)


def _awaits_more(state: RunState) -> bool:
    """Whether more of an ended run is still on its way: events its facts show missing (`has_gaps`), or the
    engine's summary of it, which its end said follows."""
    return (state.awaits_summary and not state.summarised) or has_gaps(state.facts)


def has_gaps(facts: list[Fact]) -> bool:
    """Whether an ended run's facts say that some of its events have not arrived yet.

    A step the workflow lists as completed with no step event at all, an attempt
    that ended with no start while later attempts exist, an attempt n > 1
    without attempt n - 1, or an attempt of a run that completed still without its
    end (a completed run has no interrupted step): typical of a batch still in flight
    from another request, or re-sent by the producer's tracker after a failed POST.
    """
    steps_seen: set[str] = set()
    starts: set[tuple[str | None, int | None]] = set()
    ends: set[tuple[str | None, int | None]] = set()
    ended_steps: set[str] = set()  # closed by a note that names no attempt: its latest one
    attempts: dict[str, set[int]] = {}
    completed_steps: list[str] = []
    started = moved = succeeded = False
    # One pass over the facts: settling asks this of every ended run it sends.
    for f in facts:
        kind = f.kind
        if kind is KIND.RUN_STARTED or kind is KIND.RUN_QUEUED:
            started = True
        elif kind is KIND.RUN_ENDED and f.outcome is OUTCOME.SUCCESS:
            succeeded = True
            listed = f.attributes.get(c.WORKFLOW_EXECUTION_COMPLETED_STEPS)
            completed_steps = listed if isinstance(listed, list) else []
        if f.entered_state is not None:
            moved = True
        if f.step is None:
            continue
        if kind is KIND.ATTEMPT_STARTED or kind is KIND.ATTEMPT_ENDED:
            steps_seen.add(f.step)
            if f.attempt is not None and not f.cached:
                attempts.setdefault(f.step, set()).add(f.attempt)
            if kind is KIND.ATTEMPT_STARTED:
                starts.add((f.step, f.attempt))
        if ends_attempt(f):
            if f.attempt is None:
                ended_steps.add(f.step)
            else:
                ends.add((f.step, f.attempt))
    if any(step not in steps_seen for step in completed_steps):
        return True
    if succeeded and any(key not in ends and key[0] not in ended_steps for key in starts):
        return True
    if (not started and _start_missing(facts, moved)) or (moved and _move_missing(facts)):
        return True
    for step, numbers in attempts.items():
        if len(numbers) == 1 and 1 in numbers:
            continue  # the common case: one first attempt, nothing before it to miss
        if any(n > 1 and n - 1 not in numbers for n in numbers):
            return True
        last = max(numbers)
        if any((step, n) not in starts for n in numbers if n < last):
            return True
    return False


def _start_missing(facts: list[Fact], moved: bool) -> bool:
    """The run's first invocation is known only by its first step: its start event is still in flight.

    Asked of a run with no start (nor queueing) among its facts; `moved`: some fact moved it
    into a state. An engine posts a run's start together with its first step's first attempt,
    so a run whose earliest fact is a first attempt, with no start at all, lacks part of
    that POST. (A run first seen at a resume is an evicted one: nothing is missing.)
    """
    # A state machine's run always opens with its start: moves without it are missing their head.
    if moved:
        return True
    earliest = min(facts, key=by_order)
    return earliest.kind in (KIND.ATTEMPT_STARTED, KIND.ATTEMPT_ENDED) and earliest.attempt == 1


def _move_missing(facts: list[Fact]) -> bool:
    """A state machine's move that leaves a state the run was never seen entering: one is still in flight."""
    entered: str | None = None
    for f in chained(f for f in facts if f.entered_state is not None or f.kind is KIND.RUN_ENDED):
        left = f.attributes.get(c.WORKFLOW_STATE_FROM)
        if entered is not None and left is not None and left != entered:
            return True
        if f.entered_state is not None:
            entered = f.entered_state
    return False


def any_failed(spans: list[SpanRecord]) -> bool:
    return any(span.status is SpanStatus.ERROR for span in spans)


def _error_type_of(span: SpanRecord) -> tuple[tuple[str, str], ...]:
    """The span's `error.type` as a metric attribute: present if and only if it failed, as the workflow
    conventions require it of the errors counter and of a failed run's or task's duration."""
    error_type = span.attributes.get(c.ERROR_TYPE)
    return ((c.ERROR_TYPE, str(error_type)),) if error_type is not None else ()


def _span_observations(run: RunRef, span: SpanRecord, facts: list[Fact], linked: bool = True) -> list[Observation]:
    resource = _resource(run)
    definition = _definition(run)
    assert span.end_ns is not None
    seconds = (span.end_ns - span.start_ns) / 1e9
    exemplar = {"trace_id": span.trace_id, "span_id": span.span_id} if linked else {}
    if span.role is SpanRole.ATTEMPT:
        result = span.attributes.get(c.WORKFLOW_TASK_RESULT)
        if result not in (c.RESULT_SUCCESS, c.RESULT_FAILURE):
            return []
        step = (*definition, (c.WORKFLOW_TASK_NAME, str(span.attributes[c.WORKFLOW_TASK_NAME])))
        outcome = (*step, (c.WORKFLOW_TASK_RESULT, result), *_error_type_of(span))
        observed = [Observation(c.M_WORKFLOW_TASK_DURATION, seconds, outcome, resource, **exemplar)]
        # The backoff the engine chose after this attempt, linked to the attempt it follows.
        for event in span.events:
            delay = event.attributes.get(c.WORKFLOW_RETRY_DELAY_MS)
            if isinstance(delay, int | float) and not isinstance(delay, bool) and delay >= 0:
                observed.append(Observation(c.M_WORKFLOW_TASK_RETRY_DELAY, delay / 1000, step, resource, **exemplar))
        return observed
    if span.role is SpanRole.SLEEP:
        return [Observation(c.M_WORKFLOW_SLEEP_DURATION, seconds, definition, resource, **exemplar)]
    if span.role is SpanRole.STATE:
        in_state = (*definition, (c.WORKFLOW_STATE_NAME, str(span.attributes[c.WORKFLOW_STATE_NAME])))
        return [Observation(c.M_WORKFLOW_STATE_DURATION, seconds, in_state, resource, **exemplar)]
    if span.role is not SpanRole.RUN:
        return []
    result = span.attributes.get(c.WORKFLOW_EXECUTION_RESULT)
    if result is None:
        return []
    out = []
    if result in (c.RESULT_FAILURE, c.RESULT_TIMEOUT):
        # Counted when the trace is complete, so the failing step can be named from every fact.
        # A run that failed outside its steps (in a state, before any step) names none: no empty name.
        failed_in = span.attributes.get(c.WORKFLOW_TASK_NAME)
        failing = (*definition, (c.WORKFLOW_TASK_NAME, str(failed_in))) if failed_in is not None else definition
        out.append(Observation(c.M_WORKFLOW_EXECUTION_ERRORS, 1, (*failing, *_error_type_of(span)), resource))
    ordered = sorted(facts, key=by_order)
    queued = next((f for f in ordered if f.kind is KIND.RUN_QUEUED), None)
    started = next((f for f in ordered if f.kind in _EXECUTING_KINDS), None)
    result_attr = (c.WORKFLOW_EXECUTION_RESULT, str(result))
    if queued is not None and started is not None and started.time_ns >= queued.time_ns:
        out.append(
            Observation(
                c.M_WORKFLOW_EXECUTION_DURATION,
                (started.time_ns - queued.time_ns) / 1e9,
                (*definition, (c.WORKFLOW_EXECUTION_STATE, c.STATE_PENDING), result_attr),
                resource,
                **exemplar,
            )
        )
    begin = started.time_ns if started is not None else span.start_ns
    out.append(
        Observation(
            c.M_WORKFLOW_EXECUTION_DURATION,
            max(span.end_ns - begin, 0) / 1e9,
            (*definition, (c.WORKFLOW_EXECUTION_STATE, c.STATE_EXECUTING), result_attr, *_error_type_of(span)),
            resource,
            **exemplar,
        )
    )
    return out
