"""However the poller's reads fall among the runtime v2's writes, it hands over what one read at the end would.

Runs written into a real PostgreSQL as the runtime writes them (`producer.runtime_v2.scenario`: retries,
waits for an event or a person, failures, cancels; `temporal_scenario`, as its Temporal workflow writes
them: a catch block taking a failed step, calls retried in one row), several at once, each by a worker whose clock runs
behind by up to ten seconds (its rows dated before others already read), with reads of the poller drawn
among the writes, and restarts of it (a new poller going on from the mark the last one kept): the spans of
every row they handed over are the spans of the rows read once, whole, at the end; and the events the
runtime took in, each told once, as that read tells them. And a workflow's schedules made, fired, disabled
and deleted among reads and restarts (deleted while no poller ran too): the occurrences awaited at the end
are those the table holds.
"""

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fold_harness import comparable, fold_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_bridge.consumer import IngestReport
from otel_bridge.producer import runtime_v2
from otel_bridge.receivers.postgres_poll import TablePoller
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder

DECODE = RuntimeV2Decoder()
T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC).timestamp()


class _Kept:
    """Every row handed over, as the pipeline would take them (each decodes: none is refused)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def ingest(self, events: Any, *, producer: str | None = None) -> IngestReport:
        for row in events:
            DECODE(row)
        self.rows += events
        return IngestReport(accepted=len(events))


@pytest.fixture(scope="module")
def tables(postgres) -> psycopg.Connection[Any]:
    url = postgres.database("polls")
    db = psycopg.connect(url, autocommit=True)
    db.execute(runtime_v2.SCHEMA)
    return db


def _poller(url: str, kept: _Kept, marks: dict[str, bytes], **settings: Any) -> TablePoller:
    # No dead letters: every row decodes (`_Kept` would have raised).
    return TablePoller(url, kept, None, marks.get, marks.__setitem__, look_back_seconds=10**9, **settings)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    runs=st.integers(1, 6),
    reads=st.lists(st.integers(0, 200), max_size=12),
    restarts=st.lists(st.integers(0, 200), max_size=3),
    behind=st.lists(st.floats(0, 10), min_size=6, max_size=6),
)
def test_reads_drawn_among_the_writes_hand_over_what_one_read_at_the_end_would(
    tables, seed, runs, reads, restarts, behind
):
    tables.execute("TRUNCATE workflow_definitions, workflow_runtime_events CASCADE")
    url = tables.info.dsn
    runtime = runtime_v2.Runtime(tables, name="escalation")
    rng = random.Random(seed)
    writes = []
    for n in range(runs):
        started = T0 + rng.uniform(0, 20)
        skew = behind[n]  # this run's worker's clock is behind by so much
        # As its Temporal workflow writes a run (a failed step marks it FAILED before its catch block goes on;
        # its waits written without it), or as its interpreter before did.
        play = runtime_v2.temporal_scenario if rng.random() < 0.5 else runtime_v2.scenario
        writes += [(at, skew, write) for at, write in play(runtime, started, rng)]
    writes.sort(key=lambda w: w[0])
    kept, marks = _Kept(), {}
    poller = _poller(url, kept, marks, overlap_seconds=15)
    for i, (at, skew, write) in enumerate(writes):
        write(datetime.fromtimestamp(at - skew, UTC))
        if i in restarts:
            poller.close()
            poller = _poller(url, kept, marks, overlap_seconds=15)
        if i in reads:
            poller.poll_once()
    poller.poll_once()
    poller.close()

    once = _Kept()
    whole = _poller(url, once, {}, overlap_seconds=0)
    whole.poll_once()
    whole.close()
    assert comparable(fold_events(_latest_calls(kept.rows), decoder=DECODE).spans) == comparable(
        fold_events(once.rows, decoder=DECODE).spans
    )
    # The events the runtime took in (those that started the runs and resumed their waits): each handed over,
    # told as the pipeline takes it (its first reading of an event id), as the read at the end tells it.
    assert _events(kept.rows) == _events(once.rows) and len(_events(once.rows)) >= runs


def _events(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each event the runtime took in, by its id: what its first reading tells of it (the pipeline takes an
    event id once)."""
    told: dict[str, str] = {}
    for row in rows:
        if "event_name" in row and "run_id" not in row:
            (record,) = DECODE(row)
            told.setdefault(record.event_id, record.kind.value)
    return told


def _latest_calls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, but those of an action's calls its row holds no more: a failed call its step retries is
    overwritten by the next in the same row, and shown only if a read fell between (README), the one thing
    a reading along the way may show that one at the end cannot."""
    latest: dict[str, int] = {}
    for row in rows:
        if "invocation_id" in row:
            latest[row["invocation_id"]] = max(latest.get(row["invocation_id"], 0), row["invocation_attempt"])
    return [r for r in rows if "invocation_id" not in r or r["invocation_attempt"] == latest[r["invocation_id"]]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["make", "fire", "fail", "skip", "disable", "delete"]),
            st.integers(0, 5),
            st.booleans(),  # read after it
            st.integers(0, 3).map(lambda n: n == 0),  # restarted after it (before the read)
        ),
        min_size=1,
        max_size=25,
    )
)
def test_however_reads_and_restarts_fall_among_a_schedules_changes_what_is_awaited_is_what_the_table_says(
    tables, steps
):
    # A schedule made, fired (launched, failed, let pass), disabled or deleted — deleted while no poller ran
    # too, between a restart's stop and start —: the occurrences awaited at the end are those the table holds.
    from otel_bridge.correlate.jobs import overdue_since_ns

    tables.execute("TRUNCATE workflow_definitions, tenant_workflow_schedule CASCADE")
    url = tables.info.dsn
    runtime = runtime_v2.Runtime(tables, name="digest")
    every = timedelta(minutes=5)
    made: list[str] = []
    kept, marks = _Kept(), {}
    poller = _poller(url, kept, marks, overlap_seconds=15)
    for i, (step, which, read, restart) in enumerate(steps):
        when = datetime.fromtimestamp(T0 + 60 * i, UTC)
        if step == "make" or not made:
            made.append(runtime.schedule(f"schedule {i}", when, every))
        else:
            schedule = made[which % len(made)]
            if step == "delete":
                runtime.schedule_deleted(schedule)
                made.remove(schedule)
            elif step == "disable":
                runtime.schedule_disabled(schedule, when)
            else:
                result = {"fire": "success", "fail": "error", "skip": "skipped"}[step]
                runtime.schedule_fired(schedule, when, result, "refused" if step == "fail" else None, when + every)
        if restart:  # stopped before this change was read: only the next poller may read it
            poller.close()
            poller = _poller(url, kept, marks, overlap_seconds=15)
        if read:
            poller.poll_once()
    poller.poll_once()
    poller.close()

    awaited = {
        state.job_name: overdue_since_ns(state)
        for state in fold_events(kept.rows, decoder=DECODE, settle_at_ns=None).jobs.values()
        if overdue_since_ns(state) is not None
    }
    said = tables.execute(
        "SELECT name, next_fire_at FROM tenant_workflow_schedule WHERE enabled AND status = 'scheduled'"
    ).fetchall()
    assert awaited == {name: int(at.timestamp() * 1e9) for name, at in said}
