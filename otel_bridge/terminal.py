"""What the terminal shows of runs: the open-runs table (`otel-bridge runs`) and one run's waterfall (`show`).

Drawn with rich from the same spans the bridge exports (`correlate.spans.build_spans`), so
the terminal and Jaeger never disagree; a run still open is drawn up to now.
"""

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from otel_bridge import conventions as c
from otel_bridge import keys
from otel_bridge.correlate.outputs import SpanRecord, SpanStatus
from otel_bridge.correlate.overview import JobOverview, JobQuery, RunOverview, RunQuery, trace_link
from otel_bridge.correlate.runs import RunState, any_failed
from otel_bridge.correlate.spans import build_spans
from otel_bridge.heard import Producer
from otel_bridge.visible import visible

_BAR = 48
# The shortest a terminal too narrow for them makes the waterfall's bars: still a time axis.
_SHORTEST_BAR = 12
# A Durable Object's id is shown by its first characters (`abbreviated`): so many.
_SHOWN = 12
_STATUS_STYLE = {SpanStatus.OK: "green", SpanStatus.ERROR: "red", SpanStatus.UNSET: "yellow"}


def _cell(text: object, style: str = "") -> Text:
    """A table cell of what producers said: Text, never markup (a name holding "[/bold]" raised rich's
    MarkupError, and "[link=…]" made a link), its control characters shown."""
    return Text(visible(text), style=style)


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _listed_when(ns: int | None, now_ns: int | None) -> str:
    """A time in a listing's row (UTC), as short as tells it apart from `now_ns`: the hour today, the day and
    minute this year, the date before — three whole timestamps a row folded it over two lines or three."""
    if ns is None or now_ns is None:
        return _when(ns)
    at, now = datetime.fromtimestamp(ns / 1e9, UTC), datetime.fromtimestamp(now_ns / 1e9, UTC)
    if at.date() == now.date():
        return at.strftime("%H:%M:%S")
    return at.strftime("%b %d %H:%M") if at.year == now.year else at.strftime("%Y-%m-%d")


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"  # a run open for weeks: days, not 15,364.3 h


def _in_words(
    shown: int, count: int, noun: str, service: str | None, env: str | None, first: str, then: str = ""
) -> str:
    """A listing's title: how many `noun`s (of `service`, in `env`, `then`), and which `shown` when cut short."""
    of = (f" of {service}" if service else "") + (f" in {env}" if env else "") + then
    if count == 0:
        return f"no {noun}s{of}"
    named = f"{noun}{'' if count == 1 else 's'}{of}"
    if shown == 0:  # `--limit 0`: how many there are, not "the 0 oldest of 1"
        return f"{count:,} {named}, none listed"
    return f"{count:,} {named}" if shown >= count else f"the {shown:,} {first} of {count:,} {named}"


def runs_title(shown: int, count: int, query: RunQuery) -> str:
    """What a listing holds, in words: "3 overdue nightlyReport runs of billing", "the 1,000 oldest of 52,310
    open runs"."""
    kind = "overdue" if query.overdue else "open"
    if query.state is not None:
        kind = f"{kind} {query.state}" if query.overdue else query.state
    noun = f"{kind} {query.workflow} run" if query.workflow else f"{kind} run"
    silent = f" silent for {duration(query.silent_for)} or more" if query.silent_for is not None else ""
    return _in_words(shown, count, noun, query.service, query.env, "oldest", silent)


def jobs_title(shown: int, count: int, query: JobQuery) -> str:
    """As `runs_title`: "2 overdue digestMailer job instances of jobs", "no job instances"."""
    noun = f"{query.job} job instance" if query.job else "job instance"
    noun = f"failing {noun}" if query.failing else noun
    first = "latest failed" if query.failing else "most pressing"
    return _in_words(shown, count, f"overdue {noun}" if query.overdue else noun, query.service, query.env, first)


# What a terminal too narrow for the whole table does without, least needed first: every one is in
# `--json`, and the trace in `show`. At 80 columns the eleven of them folded each row over six lines.
_SPARED = ("traceparent", "trace", "env", "steps done", "resumeAt", "last event")
# And of the job instances (at 80 columns, a row over four lines): the kind of job, then the env.
_JOBS_SPARED = ("env", "type", "last ran")


def runs_table(
    runs: list[RunOverview],
    trace_url: str | None = None,
    title: str | None = None,
    now_ns: int | None = None,
    width: int | None = None,
) -> Table:
    """With a `trace_url` template, each run links to its trace in the tracing UI instead of its traceparent;
    with `now_ns`, times are told as short as tells them apart from it; with `width` (a terminal's), the
    columns least needed are left out, as many as it takes for a row to fit on a line, and the caption
    names them."""
    title = title or runs_title(len(runs), len(runs), RunQuery())
    names = ["service", "env", "workflow", "id", "state", "steps done", "since", "resumeAt", "overdue by"]
    names += ["last event", "trace" if trace_url else "traceparent"]
    rows: list[list[Text | str]] = []
    for run in runs:
        overdue = Text(duration(run.overdue_ns / 1e9), style="bold red") if run.overdue_ns is not None else Text("-")
        rows.append(
            [
                _cell(run.service),
                _cell(run.env),
                _cell(run.name),
                _with_own_id(run.run_id if run.tenant is None else f"{run.tenant}/{run.run_id}", run.correlation_id),
                _cell(run.state if run.machine_state is None else f"{run.state}: {run.machine_state}"),
                str(run.steps_done),
                _listed_when(run.since_ns, now_ns),
                _listed_when(run.resume_at_ns, now_ns),
                overdue,
                _cell(f"{run.last_event} {_listed_when(run.last_event_ns, now_ns)}"),
                _cell(_trace_cell(run, trace_url), "dim"),
            ]
        )
    return _fitted(title, names, rows, width, _SPARED)


def _fitted(
    title: str, names: list[str], rows: list[list[Text | str]], width: int | None, spared: tuple[str, ...]
) -> Table:
    """The table of these rows, with as few of the `spared` columns left out (in that order) as let it be
    `width` wide with no cell folded; the caption names them."""
    left_out: list[str] = []
    while True:
        table = _table(title, names, rows, left_out)
        spare = next((n for n in spared if n in names and n not in left_out), None)
        if width is None or spare is None or widest(table) <= width:
            return table
        left_out.append(spare)


def _table(title: str, names: list[str], rows: list[list[Text | str]], left_out: list[str]) -> Table:
    kept = [i for i, name in enumerate(names) if name not in left_out]
    caption = "times in UTC" + (f"; left out to fit: {', '.join(left_out)} (--json has them)" if left_out else "")
    # Text, not a str: a service named "[prod]" is not markup.
    table = Table(title=Text(title), caption=caption, header_style="bold")
    for i in kept:
        table.add_column(names[i], overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in kept))
    return table


def widest(renderable: RenderableType) -> int:
    """How wide `renderable` is with no cell folded."""
    unbounded = Console(width=100_000)
    return Measurement.get(unbounded, unbounded.options, renderable).maximum


def jobs_table(jobs: list[JobOverview], title: str, now_ns: int | None = None, width: int | None = None) -> Table:
    """As `runs_table`, of job instances."""
    names = ["service", "env", "job", "type", "instance", "next run", "overdue by", "last ran"]
    rows: list[list[Text | str]] = []
    for job in jobs:
        overdue = Text(duration(job.overdue_ns / 1e9), style="bold red") if job.overdue_ns is not None else Text("-")
        due = _listed_when(job.due_ns, now_ns) if job.due_ns is not None else ("running" if job.active else "-")
        said = map(_cell, (job.service, job.env, job.name, job.job_type))
        last_ran: Text | str = _listed_when(job.last_ran_ns, now_ns)
        if job.last_failure is not None:  # its latest run failed: why, under when
            last_ran = Text.assemble(_cell(str(last_ran)), "\n", _cell(f"failed: {job.last_failure}", "red"))
        rows.append([*said, _with_own_id(job.instance_id, job.correlation_id), _cell(due), overdue, last_ran])
    return _fitted(title, names, rows, width, _JOBS_SPARED)


def producers_title(producers: list[Producer], now: float) -> str:
    expected = [p for p in producers if p.expected_within is not None]
    overdue = sum(p.overdue(now) for p in expected)
    said = f"{len(producers):,} producer{'' if len(producers) == 1 else 's'}"
    if expected:
        said += f", {len(expected):,} expected" + (f", {overdue:,} not heard from in time" if overdue else "")
    return said


def producers_table(producers: list[Producer], title: str, now: float, width: int | None = None) -> Table:
    """What a running bridge has heard of each producer: its events since the bridge started (`-` when read from
    its store), its last (before a restart too), how long it has been silent (one never heard from: since it was
    first expected), and for an expected one how long it may be (red past it: ProducerNotHeard)."""
    names = ["service", "env", "engines", "events", "last event", "silent for", "may go without"]
    rows: list[list[Text | str]] = []
    now_ns = int(now * 1e9)
    for producer in producers:
        silent = producer.silent_for(now)
        if producer.heard:
            last = _listed_when(int(producer.last_heard * 1e9) if producer.last_heard else None, now_ns)
        else:
            last = "never, since expected"
        style = "bold red" if producer.overdue(now) else ""
        within = producer.expected_within
        rows.append([
            *map(_cell, (producer.service, producer.env, ", ".join(sorted(producer.engines - {""})) or "-")),
            f"{producer.events:,.0f}" if producer.events is not None else "-",
            _cell(last, style if not producer.heard else ""),
            Text(duration(silent) if silent is not None else "-", style=style),
            duration(within) if within is not None else "-",
        ])  # fmt: skip
    return _fitted(title, names, rows, width, _PRODUCERS_SPARED)


_PRODUCERS_SPARED = ("engines", "env")


def _with_own_id(engine_id: str, own_id: str | None) -> Text:
    """The engine's id, under the application's own when told: the one its logs name it by, which `show`
    and `close` take too."""
    shown = abbreviated(engine_id)
    return _cell(shown) if not own_id else Text.assemble(_cell(own_id), "\n", _cell(shown, "dim"))


def abbreviated(engine_id: str) -> str:
    """A Durable Object's id (64 hex characters, random) by its first twelve, as docker shows a container's:
    a table row on one line, not four; `show` and `close` take it (`--json` lists them whole). Other ids
    (an execution's `exec-…`, a tenant's) are shown whole: their beginnings say little apart."""
    if len(engine_id) >= 32 and keys.is_hex(engine_id):
        return engine_id[:_SHOWN] + "…"
    return engine_id


def _trace_cell(run: RunOverview, trace_url: str | None) -> str:
    if not run.sampled:
        return f"kept back (sent only if it fails or never ends) {run.traceparent}"
    return trace_link(trace_url, run.trace_id) if trace_url else run.traceparent


def waterfall(
    state: RunState,
    now_ns: int,
    trace_url: str | None = None,
    standing: RunOverview | None = None,
    width: int | None = None,
) -> RenderableType:
    """The run's spans as bars on one time axis, with the root's events (retries, pauses, sleeps) in order;
    with `standing` (the run as `runs` lists it), an open run overdue says so, as its row does; with
    `width` (a terminal's), the bars are as long as leave each row on a line (at least `_SHORTEST_BAR`)."""
    # Closed without its end (open `max_open_seconds`, or closed by hand): drawn as its trace was sent.
    incomplete_at = state.last_told_ns if state.closed and not state.ended and state.facts else None
    spans = build_spans(state.run, state.facts, {}, incomplete_at, True, close_reason=state.close_reason)
    root = next(s for s in spans if s.parent_span_id is None)
    end = root.end_ns or max([now_ns, *[s.end_ns or s.start_ns for s in spans]])
    start = root.start_ns
    open_note = "" if root.end_ns is not None else " (open: drawn up to now)"
    named = visible(state.run.run_id) + (f" ({visible(state.run.correlation_id)})" if state.run.correlation_id else "")
    late = standing.overdue_ns if standing is not None and root.end_ns is None else None
    title = Text.assemble(
        (visible(root.name), "bold"),
        f"  {named}  {_when(start)} → {_when(end)}  {duration((end - start) / 1e9)}{open_note}",
        (f"  {standing.state}, overdue by {duration(late / 1e9)}", "bold red") if standing and late else "",
    )
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("span", "status", "duration", "timeline"):
        table.add_column(column)
    # Of spans begun at one instant, the one that ended first is drawn first: a state a run passed through
    # in the millisecond it entered the next one reads before that one.
    children = sorted(
        (s for s in spans if s is not root),
        key=lambda s: (s.start_ns, s.end_ns if s.end_ns is not None else end, s.name),
    )
    labels = [_labels(span, end, span is root) for span in [root, *children]]
    bar = _BAR
    if width is not None:  # what the other columns leave: two spaces between each two, and the bar's `…`
        widths = [max(map(_length, column)) for column in zip(*labels, strict=True)]
        bar = max(min(_BAR, width - sum(widths) - 2 * len(widths) - 1), _SHORTEST_BAR)
    scale = bar / max(end - start, 1)
    for span, row in zip([root, *children], labels, strict=True):
        table.add_row(*row, _bar(span, start, end, scale, bar))
    events = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("at", "+", "event", "detail"):
        events.add_column(column)
    for event in root.events:
        shown = {k: v for k, v in event.attributes.items() if k != c.WORKFLOW_EVENT_ID}
        detail = ", ".join(f"{key}={shown[name]}" for name, key in _short_names(shown).items())
        events.add_row(_when(event.time_ns), duration((event.time_ns - start) / 1e9), _cell(event.name), _cell(detail))
    parts: list[RenderableType] = [title, table]
    if called := _called_by(root):
        parts.insert(1, called)
    if root.events:  # a header over no rows reads as if something failed to show
        parts += [Text("events", style="bold"), events]
    # Still set once closed only if it was never sent; an ended run not settled yet will be, if it failed.
    sent = not state.withheld or (not state.closed and root.end_ns is not None and any_failed(spans))
    if not sent:
        # Kept back by `trace_sample_ratio`: no trace to link to, unless it fails.
        told = (
            "sent whole at its end only if a span of it fails, or it never ends" if root.end_ns is None else "not sent"
        )
        parts.insert(1, Text(f"trace: kept back by sampling, {told}", style="dim"))
    elif trace_url:
        link = trace_link(trace_url, root.trace_id.hex())
        parts.insert(1, Text.assemble("trace: ", (link, f"link {link}")))
    return Group(*parts)


def _called_by(root: SpanRecord) -> Text | None:
    """For a run another called (a child workflow), which, and the run its family began with when that is
    another: the runs to `show` next, which its trace reaches only by a link."""
    parent = root.attributes.get(c.WORKFLOW_EXECUTION_PARENT_ID)
    if not parent:
        return None
    first = root.attributes.get(c.WORKFLOW_EXECUTION_ROOT_ID)
    family = (("  its family began with ", "dim"), _cell(first)) if first and first != parent else ()
    return Text.assemble(("called by ", "dim"), _cell(parent), *family)


def _length(cell: Text | str) -> int:
    return len(cell.plain if isinstance(cell, Text) else cell)


def _bar(span: SpanRecord, start: int, end: int, scale: float, bar: int) -> Text:
    """The span on the run's time axis, `bar` characters long; `…` after one still going on."""
    span_end = span.end_ns if span.end_ns is not None else end
    offset = int((span.start_ns - start) * scale)
    width = max(int((span_end - span.start_ns) * scale), 1)
    drawn = Text(" " * offset) + Text("█" * min(width, bar - offset or 1), style=_STATUS_STYLE[span.status])
    if span.end_ns is None:
        drawn += Text("…", style="dim")
    return drawn


def _labels(span: SpanRecord, end: int, is_root: bool) -> tuple[Text, Text, str]:
    """The span's name, status and duration, as its row of the waterfall gives them."""
    span_end = span.end_ns if span.end_ns is not None else end
    attempt = span.attributes.get(c.WORKFLOW_TASK_ATTEMPT)
    name = span.name + (f" #{attempt}" if attempt is not None else "")
    result = str(span.attributes.get(c.WORKFLOW_TASK_RESULT) or span.attributes.get(c.WORKFLOW_EXECUTION_RESULT) or "")
    status = span.status.value + (f" ({result})" if result else "") if span.end_ns is not None else "running"
    if span.attributes.get(c.WORKFLOW_EXECUTION_INCOMPLETE):
        reason = span.attributes.get(c.WORKFLOW_EXECUTION_CLOSE_REASON)
        status = "incomplete" + (f": {reason}" if reason else ": never ended, closed at max_open_seconds")
    if span.status_message:
        status += f": {span.status_message[:60]}"
    label = _cell(name if is_root else "  " + name, style="bold" if is_root else "")
    return label, _cell(status, _STATUS_STYLE[span.status]), duration((span_end - span.start_ns) / 1e9)


def _short_names(attributes: Mapping[str, object]) -> dict[str, str]:
    """Each attribute's name as an event's detail shows it: its last part, or its last two where another's
    last part is the same (`workflow.event.type` and `workflow.trigger.type`: `event.type`, `trigger.type`)."""
    last = Counter(name.rsplit(".", 1)[-1] for name in attributes)
    return {
        name: name.rsplit(".", 1)[-1] if last[name.rsplit(".", 1)[-1]] == 1 else ".".join(name.split(".")[-2:])
        for name in attributes
    }
