"""`otel-bridge show` draws a run's story: every attempt, retry, pause and sleep, in order, open or finished."""

import random
from datetime import UTC, datetime

import pytest
from builders import JobRun, WorkflowRun
from fold_harness import fold_events
from rich.console import Console

from otel_bridge import trace_id_for
from otel_bridge.correlate.overview import JobQuery, RunQuery, job_overview, overview
from otel_bridge.correlate.step import Policy, close
from otel_bridge.producer.demo import SCENARIOS
from otel_bridge.producer.event_sourced import Execution
from otel_bridge.sources.event_sourced import EventSourcedDecoder, EventSourcedOptions
from otel_bridge.sources.runtime_v2 import RuntimeV2Decoder
from otel_bridge.terminal import abbreviated, duration, jobs_table, jobs_title, runs_table, runs_title, waterfall

NOW = 1_900_000_000 * 10**9
EVENT_SOURCED = EventSourcedDecoder(EventSourcedOptions(service="crm", env="prod"))


def _render(events: list[dict]) -> str:
    (state,) = fold_events(events, settle_at_ns=None).runs.values()
    console = Console(record=True, width=200)
    console.print(waterfall(state, NOW))
    return console.export_text()


def _scenario(name: str) -> list[dict]:
    invocations = SCENARIOS[name](datetime(2025, 6, 1, tzinfo=UTC), random.Random(1))
    return [e for batch in invocations for e in batch]


def test_a_retried_run_shows_each_attempt_and_the_retry_in_order():
    text = _render(_scenario("retry"))
    steps = [line.split()[:3] for line in text.splitlines() if line.startswith("  step ")]
    assert steps == [["step", "authorize", "#1"], ["step", "capture", "#1"], ["step", "capture", "#2"]]
    first_try = next(line for line in text.splitlines() if "capture #1" in line)
    assert "error" in first_try and "retry scheduled" in first_try
    events = [line.split()[4] for line in text.splitlines() if line[:4].isdigit()]  # date, time, +n unit, event
    assert events == ["retry.scheduled", "workflow.paused", "workflow.resumed"]


def test_states_a_run_passed_through_in_one_millisecond_are_drawn_in_the_order_it_went():
    run = Execution("approval").started().after(10).moved("review").moved("approved").after(60_000)
    (state,) = fold_events(run.events, settle_at_ns=None, decoder=EVENT_SOURCED).runs.values()
    console = Console(record=True, width=200)
    console.print(waterfall(state, NOW))
    rows = [line.split()[1] for line in console.export_text().splitlines() if line.startswith("  state ")]
    assert rows == ["initial", "review", "approved"]  # not by name: `approved` sorts before `review`


def test_a_sleeping_run_shows_the_sleep_between_its_steps():
    text = _render(_scenario("sleep"))
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("  ")]
    assert "sleep" in rows and rows.index("sleep") not in (0, len(rows) - 1)  # between its steps
    assert text.index("sleep.started") < text.index("workflow.resumed") < text.index("sleep.completed")


def test_every_workflow_scenario_of_the_demo_draws():
    for name in SCENARIOS:
        events = _scenario(name)
        if "workflowId" not in events[0]:
            continue
        text = _render(events)
        assert "workflow " in text, name


def test_a_run_without_retries_pauses_or_sleeps_draws_no_empty_events_table():
    text = _render(_scenario("success"))
    assert "step chargeCard #1" in text
    assert "events" not in text.split() and "detail" not in text


def test_an_open_run_is_drawn_up_to_now():
    events = _scenario("sleep")
    open_events = [e for e in events if e["type"] not in ("workflow.completed",)]
    assert "open: drawn up to now" in _render(open_events)


def test_a_run_closed_without_its_end_is_drawn_as_its_trace_was_sent_incomplete_and_why():
    open_events = [e for e in _scenario("sleep") if e["type"] != "workflow.completed"]
    (at_max_open,) = fold_events(open_events, settle_at_ns=NOW, max_open_ns=0).runs.values()
    (by_hand,) = fold_events(open_events, settle_at_ns=None).runs.values()
    close(by_hand, "INC-42", NOW / 1e9, Policy())
    for state, told in (
        (at_max_open, "incomplete: never ended, closed at max_open_seconds"),
        (by_hand, "incomplete: INC-42"),
    ):
        console = Console(record=True, width=200)
        console.print(waterfall(state, NOW))
        text = console.export_text()
        assert told in text and "open: drawn up to now" not in text and "running" not in text


def test_with_a_trace_url_each_open_run_and_a_shown_run_link_to_their_trace_in_the_tracing_ui():
    events = _scenario("retry")
    (state,) = fold_events(events, settle_at_ns=None).runs.values()
    trace_id = trace_id_for("durable-effect", events[0]["env"], events[0]["serviceKey"], events[0]["workflowId"]).hex()
    console = Console(record=True, width=200)
    console.print(waterfall(state, NOW, "http://jaeger:16686/trace/{trace_id}"))
    assert f"trace: http://jaeger:16686/trace/{trace_id}" in console.export_text()

    (opened,) = fold_events(events[:2], settle_at_ns=None).runs.values()
    run = overview(opened, NOW, 0)
    wide = Console(record=True, width=300)
    wide.print(runs_table([run], "http://jaeger:16686/trace/{trace_id}"))
    assert f"http://jaeger:16686/trace/{trace_id}" in wide.export_text()


def test_a_run_kept_back_by_sampling_says_so_instead_of_linking_to_a_trace_that_is_not_there():
    events = _scenario("retry")
    url = "http://jaeger:16686/trace/{trace_id}"
    (opened,) = fold_events(events[:2], settle_at_ns=None).runs.values()
    opened.withheld = True  # as a ratio that left it out decides at its first event
    wide = Console(record=True, width=400)
    wide.print(runs_table([overview(opened, NOW, 0)], url))
    assert (
        "kept back (sent only if it fails or never ends) 00-" in wide.export_text()
        and "jaeger" not in wide.export_text()
    )
    assert "trace_url" not in overview(opened, NOW, 0).as_dict(url)

    console = Console(record=True, width=200)
    console.print(waterfall(opened, NOW, url))
    assert (
        "trace: kept back by sampling, sent whole at its end only if a span of it fails, or it never ends"
        in console.export_text()
    )
    # The retried attempt failed: at its end the run is sent whole, and the trace is there to link to.
    (ended,) = fold_events(events, settle_at_ns=None).runs.values()
    ended.withheld = True
    console.print(waterfall(ended, NOW, url))
    assert "trace: http://jaeger:16686/trace/" in console.export_text()


def test_a_run_another_called_says_which_and_where_its_family_began():
    decode = RuntimeV2Decoder()
    first, parent, child = (
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    )
    rows = {
        run_id: {"run_id": run_id, "workflow_id": "w", "workflow_name": name, "status": "RUNNING",
                 "started_at": "2026-12-04T09:00:00+00:00"} | columns
        for run_id, name, columns in (
            (first, "escalation", {}),
            (parent, "notify", {"parent_run_id": first, "root_run_id": first}),
            (child, "page", {"parent_run_id": parent, "root_run_id": first}),
        )
    }  # fmt: skip
    shown = {}
    for run_id, row in rows.items():
        (state,) = fold_events([row], settle_at_ns=None, decoder=decode).runs.values()
        console = Console(record=True, width=200)
        console.print(waterfall(state, NOW))
        shown[run_id] = console.export_text()
    assert f"called by {first}\n" in shown[parent]  # its parent is where its family began
    assert f"called by {parent}  its family began with {first}" in shown[child]
    assert "called by" not in shown[first]


def test_durations_read_in_the_unit_a_person_would_say():
    assert [duration(s) for s in (0.25, 42, 600, 3 * 3600, 30 * 86_400)] == [
        "250 ms",
        "42.0 s",
        "10.0 min",
        "3.0 h",
        "30.0 d",
    ]


@pytest.mark.parametrize(
    ("shown", "count", "query", "title"),
    [
        (1, 1, RunQuery(), "1 open run"),
        (3, 3, RunQuery(overdue=True, service="billing"), "3 overdue runs of billing"),
        (2, 2, RunQuery(state="paused"), "2 paused runs"),
        (1000, 52_310, RunQuery(), "the 1,000 oldest of 52,310 open runs"),
        (0, 52_310, RunQuery(), "52,310 open runs, none listed"),  # --limit 0: a count alone
        (0, 0, RunQuery(overdue=True), "no overdue runs"),
        (0, 0, RunQuery(service="billing"), "no open runs of billing"),
        (
            2,
            2,
            RunQuery(overdue=True, service="shop", env="prod", workflow="nightly"),
            "2 overdue nightly runs of shop in prod",
        ),
        (1, 1, RunQuery(env="staging"), "1 open run in staging"),
    ],
)
def test_a_listing_of_runs_says_what_it_holds_in_words(shown, count, query, title):
    assert runs_title(shown, count, query) == title


@pytest.mark.parametrize(
    ("count", "query", "title"),
    [
        (2, JobQuery(overdue=True, service="jobs"), "2 overdue job instances of jobs"),
        (1, JobQuery(job="digestMailer", env="prod"), "1 digestMailer job instance in prod"),
        (0, JobQuery(overdue=True, job="reminder"), "no overdue reminder job instances"),
    ],
)
def test_a_listing_of_job_instances_says_what_it_holds_in_words(count, query, title):
    assert jobs_title(count, count, query) == title


def _written(*renderables) -> str:
    """What a terminal is sent: rich's own styling off, so that any escape left is the data's."""
    console = Console(record=True, width=250, color_system=None, force_terminal=True)
    for renderable in renderables:
        console.print(renderable)
    return console.export_text(styles=False)


def test_what_producers_named_is_shown_as_they_named_it_never_as_markup_or_terminal_commands():
    # "[/bold]" once raised rich's MarkupError (no `runs`, no `show`), "[link=…]" made a hidden link, and an
    # ESC reached the terminal as a command (here: clear the screen, retitle the window).
    name = "[/bold]nightly [link=https://evil.example]x[/link]\x1b[2J"
    step = "fetch\x1b]0;pwned\x07"
    run = WorkflowRun(name).started().step_started(step).after(5).step_completed(step).sleep_started(60_000)
    (state,) = fold_events(run.paused("sleep").events, settle_at_ns=None).runs.values()
    listed = overview(state, NOW, 0)
    assert listed is not None

    text = _written(runs_table([listed]), waterfall(state, NOW))

    assert "\x1b" not in text and "\x07" not in text
    assert "[/bold]nightly [link=https://evil.example]x[/link]\\x1b[2J" in text
    assert "step fetch\\x1b]0;pwned\\x07" in text


def test_a_job_named_with_markup_is_listed_as_named():
    lost = JobRun("[/red]reminder\x1b[5m", "task").task_scheduled(in_ms=60_000)
    folded = fold_events(lost.events, settle_at_ns=None)
    ((key, state),) = folded.jobs.items()
    text = _written(jobs_table([job_overview(key, state, NOW, 0)], "1 job instance"))
    assert "[/red]reminder\\x1b[5m" in text and "\x1b" not in text


def test_a_job_whose_latest_run_failed_is_listed_with_why_under_when_it_ran():
    sync = JobRun("invoiceSync", "continuous").started().after(10).failed(1, will_retry=False)
    sync.events[-1]["error"]["message"] = "the ledger refused\x1b[2J the invoice"
    ((key, state),) = fold_events(sync.events, settle_at_ns=None).jobs.items()
    listed = job_overview(key, state, NOW, 0)
    assert listed.last_failure == "the ledger refused\x1b[2J the invoice"
    assert listed.as_dict()["last_failure"] == listed.last_failure  # `--json`, GET /v1/jobs
    text = " ".join(_written(jobs_table([listed], "1 job instance")).split())
    assert "failed: the ledger refused\\x1b[2J the invoice" in text and "\x1b" not in text


def test_the_applications_own_id_is_shown_above_the_engines_its_control_characters_escaped():
    digest = JobRun("digestMailer", "debounce", job_id="digest-user-7\x1b[2J").debounce_started(flush_in_ms=60_000)
    ((key, state),) = fold_events(digest.events, settle_at_ns=None).jobs.items()
    order = WorkflowRun("checkout", execution_id="order-42").started().step_started("pay")
    (run,) = fold_events(order.events, settle_at_ns=None).runs.values()
    listed = overview(run, NOW, 0)
    assert listed is not None

    lines = _written(jobs_table([job_overview(key, state, NOW, 0)], "1 job instance"), runs_table([listed]))
    lines = lines.splitlines()

    (own,) = [i for i, line in enumerate(lines) if "digest-user-7\\x1b[2J" in line]
    assert abbreviated(digest.base["instanceId"]) in lines[own + 1] and "\x1b" not in "".join(lines)
    (own,) = [i for i, line in enumerate(lines) if "order-42" in line]
    assert abbreviated(order.workflow_id) in lines[own + 1]
    assert "order-42" in _written(waterfall(run, NOW)).splitlines()[0]


def test_a_durable_objects_id_is_listed_by_its_first_twelve_characters_each_run_on_one_line():
    # 64 hex characters folded a row of `runs` over four lines; docker shows a container's id so too,
    # and `show` and `close` take it (tests/test_pipeline.py). Other engines' ids say little by their start.
    object_id = "3f9a0c7e51d24b6a" + "8e" * 24
    order = WorkflowRun("checkout", workflow_id=object_id).started().step_started("pay")
    execution = WorkflowRun("payout", workflow_id="exec-000001-f41324df").started()
    folded = fold_events(order.events + execution.events, settle_at_ns=None).runs.values()
    runs = [listed for run in folded if (listed := overview(run, NOW, 0)) is not None]

    text = _written(runs_table(runs))

    assert abbreviated(object_id) == "3f9a0c7e51d2…" and "3f9a0c7e51d2…" in text and object_id not in text
    assert "exec-000001-f41324df" in text
    assert [abbreviated(i) for i in ("ABCDEF" * 11, "0123456789abcdef" * 1)] == ["ABCDEF" * 11, "0123456789abcdef"]


def test_a_listing_tells_each_time_as_short_as_tells_it_apart_from_now_in_utc():
    # Three whole timestamps folded a row of `runs` over two lines or three: the hour today, the day this
    # year, the date before; the caption says the zone.
    now = int(datetime(2026, 12, 4, 15, 0, tzinfo=UTC).timestamp() * 1e9)
    cases = {
        datetime(2026, 12, 4, 9, 7, 5, tzinfo=UTC): "09:07:05",
        datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC): "Nov 30 23:59",
        datetime(2025, 3, 1, 12, 0, tzinfo=UTC): "2025-03-01",
    }
    for at, shown in cases.items():
        run = WorkflowRun("checkout", start=at).started().step_started("pay")
        (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
        listed = overview(state, now, 0)
        assert listed is not None
        text = _written(runs_table([listed], now_ns=now))
        assert f"│ {shown}" in text and "times in UTC" in text, text
    assert "2025-03-01 12:00:00" in _written(runs_table([listed]))  # no `now`: whole, as before


@pytest.mark.parametrize("width", [80, 100, 120])
def test_on_a_narrow_terminal_the_runs_table_leaves_out_what_it_least_needs_and_says_so(width):
    # Eleven columns folded each row of `runs` over six lines at 80 columns. The trace, the env, the steps
    # done, resumeAt and the last event are left out in that order, as few as fit: all are in `--json`.
    now = int(datetime(2026, 12, 4, 15, 0, tzinfo=UTC).timestamp() * 1e9)
    runs = []
    for name in ("checkout", "nightlyReport"):
        run = WorkflowRun(name, start=datetime(2026, 12, 4, 14, 0, tzinfo=UTC)).started().step_started("pay")
        run.after(5).step_completed("pay").sleep_started(60_000)
        (state,) = fold_events(run.events, settle_at_ns=None).runs.values()
        runs.append(overview(state, now, 0))

    console = Console(record=True, width=width)
    console.print(runs_table(runs, now_ns=now, width=width))
    text = console.export_text()

    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    rows = [line for line in lines if "checkout" in line or "nightlyReport" in line]
    assert len(rows) == 2  # each run on one line
    assert "left out to fit: traceparent" in " ".join(text.split())
    for kept in ("workflow", "id", "state", "since", "overdue by"):
        assert kept in text
    whole = Console(record=True, width=400)
    whole.print(runs_table(runs, now_ns=now))
    assert "traceparent" in whole.export_text() and "left out" not in whole.export_text()


def test_on_a_narrow_terminal_the_jobs_table_leaves_out_env_type_and_last_ran_as_it_must():
    jobs = []
    for name in ("digestMailer", "tokenRefresher"):
        job = JobRun(name, "debounce", instance_id=f"{name}-user-2167").debounce_started().debounce_flushed(3)
        folded = fold_events(job.events, settle_at_ns=None)
        jobs += [job_overview(key, state, NOW, 0) for key, state in folded.jobs.items()]

    console = Console(record=True, width=70)
    console.print(jobs_table(jobs, "2 job instances", width=70))
    text = console.export_text()

    assert all(len(line) <= 70 for line in text.splitlines())
    assert "left out to fit: env" in " ".join(text.split()) and "instance" in text and "next run" in text
    assert "left out" not in _written(jobs_table(jobs, "2 job instances"))


def test_on_a_narrow_terminal_the_waterfall_draws_shorter_bars_whole():
    # Bars of a fixed 48 characters were cut by the terminal at 80 columns: a step late in the run, drawn
    # past the cut, had no bar at all.
    run = WorkflowRun("catalogImport").started().step_started("importPage1").after(10_000)
    run.step_completed("importPage1").after(80_000).step_started("importPage2").after(10_000)
    run.step_completed("importPage2").completed()
    (state,) = fold_events(run.events, settle_at_ns=None).runs.values()

    console = Console(record=True, width=80)
    console.print(waterfall(state, NOW, width=80))
    rows = [line for line in console.export_text().splitlines() if "█" in line]

    assert len(rows) == 3 and all(len(row.rstrip()) <= 80 for row in rows), rows  # the root and both steps
    assert rows[-1].index("█") > rows[1].index("█") + 20  # drawn where it is on the axis: near its end
    whole = Console(record=True, width=200)
    whole.print(waterfall(state, NOW))
    assert max(line.count("█") for line in whole.export_text().splitlines()) == 48


def test_an_events_detail_names_each_attribute_by_its_last_part_or_two_where_one_would_repeat():
    run = {"run_id": "9b0cada3-b0e3-48c0-8325-98e0c9a4a2ff", "workflow_id": "4f0c2f4e-8d3a-4a53-9d1e-3b1d1c0e2a11",
           "workflow_name": "escalation", "status": "RUNNING", "trigger_type": "event", "event_type": "TICKET_CREATED",
           "started_at": "2026-12-04T09:00:00+00:00", "updated_at": "2026-12-04T09:00:00+00:00"}  # fmt: skip
    (state,) = fold_events([run], settle_at_ns=None, decoder=RuntimeV2Decoder()).runs.values()
    console = Console(record=True, width=200)
    console.print(waterfall(state, NOW))
    assert "run.queued  event.type=TICKET_CREATED, trigger.type=event" in console.export_text()
