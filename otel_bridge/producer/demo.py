"""`otel-bridge demo`: realistic workflow and job traffic, posted as the engine's tracker would.

Every scenario is a run split into the invocations the engine makes (one POST per
Durable Object invocation: the first run, each alarm after a retry backoff or a
sleep, each job call). Invocations are posted when their time comes, so timelines
in Jaeger show real gaps. Waits are compressed to seconds.
"""

import heapq
import itertools
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from otel_bridge.producer.events import JobRun, WorkflowRun
from otel_bridge.tracker import HttpBatchTracker

WORKFLOW_SERVICE = "shop"
JOB_SERVICE = "jobs"
# A producer on a host whose clock runs ahead (its time sync broken): the `clock-ahead` incident's.
SKEWED_SERVICE = "billing"
CLOCK_AHEAD = timedelta(hours=2)
ENV = "demo"

Invocations = list[list[dict[str, Any]]]


class _Cutter:
    """Splits a run's event stream into the engine's invocations."""

    def __init__(self, stream: WorkflowRun | JobRun) -> None:
        self.stream = stream
        self.invocations: Invocations = []
        self._mark = 0

    def cut(self) -> "_Cutter":
        self.invocations.append(self.stream.events[self._mark :])
        self._mark = len(self.stream.events)
        return self


def _object_id() -> str:
    """A Durable Object's id as the engine's runs and job instances have them: 64 hex characters, random."""
    return secrets.token_hex(32)


def _wf(name: str, now: datetime, execution_id: str | None = None) -> WorkflowRun:
    return WorkflowRun(name, _object_id(), env=ENV, service=WORKFLOW_SERVICE, start=now, execution_id=execution_id)


def _job(name: str, job_type: str, now: datetime, job_id: str | None = None) -> JobRun:
    return JobRun(name, job_type, _object_id(), env=ENV, service=JOB_SERVICE, start=now, job_id=job_id)


def success(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("orderCheckout", now)
    cut = _Cutter(run.started({"orderId": rng.randint(1, 9999)}))
    for step in ("validateCart", "reserveStock", "chargeCard", "sendReceipt"):
        run.after(rng.randint(2, 20)).step_started(step).after(rng.randint(10, 400)).step_completed(step)
    run.after(2).completed(["validateCart", "reserveStock", "chargeCard", "sendReceipt"])
    return cut.cut().invocations


def retry(now: datetime, rng: random.Random) -> Invocations:
    """The engine's retry: retry.scheduled instead of step.failed, then an alarm runs attempt 2."""
    run = _wf("paymentCapture", now)
    cut = _Cutter(run.started().step_started("authorize").after(30).step_completed("authorize"))
    delay = rng.randint(800, 1500) + rng.random()
    run.step_started("capture", 1).after(rng.randint(50, 200)).retry_scheduled("capture", 1, delay_ms=delay)
    run.paused("retry", step="capture", resume_in_ms=delay)
    cut.cut()
    run.after(delay).resumed().step_started("capture", 2).after(rng.randint(40, 120)).step_completed("capture", 2)
    run.after(1).completed(["authorize", "capture"])
    return cut.cut().invocations


def retry_as_guide_draws_it(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("invoiceSync", now)
    cut = _Cutter(run.started().step_started("pushInvoice", 1).after(80))
    run.step_failed("pushInvoice", 1, message="upstream 502", will_retry=True).retry_scheduled("pushInvoice", 1, 900)
    run.paused("retry", step="pushInvoice", resume_in_ms=900)
    cut.cut()
    run.after(900).resumed().step_started("pushInvoice", 2).after(60).step_completed("pushInvoice", 2).completed()
    return cut.cut().invocations


def exhausted(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("paymentCapture", now)
    cut = _Cutter(run.started().step_started("authorize").after(25).step_completed("authorize"))
    for attempt in (1, 2):
        run.step_started("capture", attempt).after(rng.randint(30, 90)).retry_scheduled("capture", attempt, 600)
        run.paused("retry", step="capture", resume_in_ms=600)
        cut.cut()
        run.after(600).resumed()
    run.step_started("capture", 3).after(50).retry_exhausted("capture", 3)
    run.failed("card declined", step="capture", attempt=3, stack="CardDeclinedError: card declined\n    at capture")
    return cut.cut().invocations


def failure(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("accountDeletion", now)
    run.started().step_started("exportData").after(120).step_completed("exportData")
    run.step_started("purgeRecords").after(40)
    run.step_failed("purgeRecords", 1, message="constraint violation", stack="DatabaseError: constraint violation")
    run.failed("constraint violation", step="purgeRecords", attempt=1, stack="DatabaseError: constraint violation")
    return [run.events]


def sleep(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("userOnboarding", now)
    cut = _Cutter(run.started().step_started("createAccount").after(90).step_completed("createAccount"))
    nap = rng.randint(1500, 3000)
    run.after(2).sleep_started(nap).paused("sleep", resume_in_ms=nap)
    cut.cut()
    run.after(nap).resumed().sleep_completed(nap).step_started("sendWelcome").after(70).step_completed("sendWelcome")
    run.completed(["createAccount", "sendWelcome"])
    return cut.cut().invocations


def cancel(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("shipmentTracking", now)
    run.started().step_started("bookCarrier").after(rng.randint(100, 300)).cancelled(reason="bookCarrier")
    return [run.events]


def timeout(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("reportGeneration", now)
    cut = _Cutter(run.started().step_started("render", 1).timeout_set("render", 500))
    run.after(500).retry_scheduled("render", 1, 700).paused("retry", step="render", resume_in_ms=700)
    cut.cut()
    run.after(700).resumed().step_started("render", 2).after(1).timeout_exceeded("render", 500)
    run.failed("step render timed out after 500 ms", step="render", attempt=2)
    return cut.cut().invocations


def queued(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("dataExport", now)
    cut = _Cutter(run.queued({"format": "csv"})).cut()  # runAsync: the queue event has its own POST
    run.after(rng.randint(200, 800)).started().step_started("collect").after(150).step_completed("collect")
    run.step_started("upload").after(90).step_completed("upload").completed(["collect", "upload"])
    return cut.cut().invocations


def cached_replay(now: datetime, rng: random.Random) -> Invocations:
    """Older engines re-emit `step.completed` with `cached: true` for every replayed step."""
    run = _wf("subscriptionRenewal", now)
    cut = _Cutter(run.started().step_started("charge").after(60).step_completed("charge"))
    run.after(1).sleep_started(1000).paused("sleep", resume_in_ms=1000)
    cut.cut()
    run.after(1000).resumed().step_completed("charge", attempt=0, duration_ms=0, cached=True).sleep_completed(1000)
    run.step_started("notify").after(20).step_completed("notify").completed(["charge", "notify"])
    return cut.cut().invocations


def evicted(now: datetime, rng: random.Random) -> Invocations:
    """The first invocation was evicted with its buffer: the run is first seen at `workflow.resumed`."""
    run = _wf("inventorySync", now)
    run.resumed().step_started("pull", 2).after(80).step_completed("pull", 2, duration_ms=2500).completed(["pull"])
    return [run.events]


def continuous_job(now: datetime, rng: random.Random) -> Invocations:
    job = _job("tokenRefresher", "continuous", now)
    cut = _Cutter(job.started()).cut()
    for n in range(1, 4):
        job.after(rng.randint(400, 900)).executed(n, duration_ms=rng.randint(20, 300))
        cut.cut()
    job.after(300).failed(4, attempt=1, will_retry=True)
    cut.cut()
    job.after(500).executed(4, duration_ms=80, attempt=2)
    cut.cut()
    job.after(200).terminated(4, reason="manual")
    return cut.cut().invocations


def debounce_job(now: datetime, rng: random.Random) -> Invocations:
    job = _job("webhookBatcher", "debounce", now)
    window = rng.randint(800, 2000)
    cut = _Cutter(job.debounce_started(flush_in_ms=window)).cut()
    reason = rng.choice(["timeout", "timeout", "maxEvents", "manual"])
    job.after(window).executed(0, duration_ms=rng.randint(10, 200))
    job.debounce_flushed(rng.randint(1, 120), reason=reason, duration_ms=window)  # after job.executed, as emitted
    return cut.cut().invocations


def task_job(now: datetime, rng: random.Random) -> Invocations:
    """The engine's own one-shot reminder: the event's run schedules it (told before the run's end); at
    its time the alarm sends it and the task clears itself (`ctx.clear()`), which tells nothing."""
    job = _job("reminderSender", "task", now)
    job.task_scheduled(in_ms=rng.randint(300, 1500), trigger="event").after(rng.randint(1, 5))
    return [job.executed(0, duration_ms=rng.randint(5, 20)).events]


def task_cancelled(now: datetime, rng: random.Random) -> Invocations:
    """An order's payment deadline, scheduled as it is created and cancelled when it is paid
    (`ctx.cancelSchedule()` in the payment's run, which tells its run and nothing of the schedule)."""
    job = _job("orderTimeout", "task", now)
    deadline = rng.randint(2500, 3500)
    cut = _Cutter(job.task_scheduled(in_ms=deadline, trigger="event").after(2).executed(0, duration_ms=4)).cut()
    job.after(rng.randint(300, 900)).executed(0, duration_ms=rng.randint(5, 30))  # paid
    return cut.cut().invocations


def job_exhausted(now: datetime, rng: random.Random) -> Invocations:
    job = _job("ledgerReconcile", "continuous", now)
    cut = _Cutter(job.started().after(100).failed(1, attempt=1)).cut()
    job.after(400).failed(1, attempt=2, will_retry=False).retry_exhausted(attempts=2, reason="max_attempts")
    return cut.cut().invocations


Scenario = Callable[[datetime, random.Random], Invocations]

SCENARIOS: dict[str, Scenario] = {
    "success": success,
    "retry": retry,
    "retry-as-guide-draws-it": retry_as_guide_draws_it,
    "exhausted": exhausted,
    "failure": failure,
    "sleep": sleep,
    "cancel": cancel,
    "timeout": timeout,
    "queued": queued,
    "cached-replay": cached_replay,
    "evicted": evicted,
    "continuous-job": continuous_job,
    "debounce-job": debounce_job,
    "task-job": task_job,
    "task-cancelled": task_cancelled,
    "job-exhausted": job_exhausted,
}


# What the alerts are for, played on request (`--incidents`): the engine loses an alarm, so the run or
# job instance is told when it will go on and then never goes on; or a run dies mid-step, or a
# continuous job runs no more, and tells nothing of it. Each turns overdue once its time (for those
# silent, `silent_executing` of `catalogImport`, `silent_continuous` of `tokenRefresher`) and
# `overdue_grace_seconds` have passed (WorkflowRunsOverdue, JobsOverdue). Not a task's: one that ends
# itself at its alarm tells as little (`task_job`), so only the tasks `overdue_tasks` names are. And a
# producer whose clock runs ahead (`clock_ahead`: ProducerClockAhead).
def lost_sleep_alarm(now: datetime, rng: random.Random) -> Invocations:
    run = _wf("nightlyReport", now, execution_id=f"report-{rng.randint(1, 99_999)}")  # the app's own id, as it logs it
    cut = _Cutter(run.started().step_started("gatherFigures").after(rng.randint(20, 80)))
    run.step_completed("gatherFigures").after(2).sleep_started(1000).paused("sleep", resume_in_ms=1000)
    return cut.cut().invocations  # the alarm never fires: nothing more is sent


def died_mid_step(now: datetime, rng: random.Random) -> Invocations:
    """A long invocation's tracker posts at `batchSize`, mid-step; then its Durable Object is evicted with
    the rest of its buffer, and the engine fails the run for its recovery limit, which tells nothing."""
    run = _wf("catalogImport", now, execution_id=f"import-{rng.randint(1, 99_999)}")
    run.started()
    for page in range(1, 4):
        step = f"importPage{page}"
        run.after(rng.randint(2, 10)).step_started(step).after(rng.randint(50, 150)).step_completed(step)
    return [run.after(2).step_started("importPage4").events]


def lost_continuous_alarm(now: datetime, rng: random.Random) -> Invocations:
    """A continuous job runs, then its alarm is lost: it runs no more and tells nothing of it."""
    job = _job("tokenRefresher", "continuous", now, job_id=f"token-tenant-{rng.randint(1, 999)}")
    cut = _Cutter(job.started()).cut()
    job.after(rng.randint(400, 900)).executed(1, duration_ms=rng.randint(20, 300))
    return cut.cut().invocations


def clock_ahead(now: datetime, rng: random.Random) -> Invocations:
    """A run whose producer's clock runs `CLOCK_AHEAD` ahead: told now, timestamped two hours on
    (ProducerClockAhead). Its spans show in the future, as a backend shows what such a host sends."""
    run = WorkflowRun("invoiceRun", _object_id(), env=ENV, service=SKEWED_SERVICE, start=now + CLOCK_AHEAD)
    run.started({"invoice": rng.randint(1, 99_999)})
    for step in ("collectUsage", "priceUsage", "issueInvoice"):
        run.after(rng.randint(2, 10)).step_started(step).after(rng.randint(20, 200)).step_completed(step)
    return [run.after(2).completed(["collectUsage", "priceUsage", "issueInvoice"]).events]


def lost_flush_alarm(now: datetime, rng: random.Random) -> Invocations:
    job = _job("digestMailer", "debounce", now, job_id=f"digest-user-{rng.randint(1, 9999)}")
    return _Cutter(job.debounce_started(flush_in_ms=rng.randint(500, 1500))).cut().invocations


INCIDENTS: dict[str, Scenario] = {
    "lost-sleep-alarm": lost_sleep_alarm,
    "died-mid-step": died_mid_step,
    "lost-flush-alarm": lost_flush_alarm,
    "lost-continuous-alarm": lost_continuous_alarm,
    "clock-ahead": clock_ahead,
}
# How often each scenario comes up once every one has run once: mostly healthy traffic.
WEIGHTS = {name: 1 for name in SCENARIOS} | {"success": 6, "retry": 3, "continuous-job": 3, "debounce-job": 3}


# What the demo application does inside a step, as its own tracer would show it: the call a step makes.
_CALLS = {
    "chargeCard": "POST /v1/charges",
    "capture": "POST /v1/payment_intents/capture",
    "authorize": "POST /v1/payment_intents",
    "reserveStock": "UPDATE inventory",
    "sendReceipt": "POST /v3/mail/send",
    "pushInvoice": "PUT /api/invoices",
    "purgeRecords": "DELETE FROM user_records",
}
_STEP_ENDS = ("step.completed", "step.failed", "retry.scheduled")
_RUN_ENDS = ("workflow.completed", "workflow.failed", "workflow.cancelled")


class ApplicationSpans:
    """The demo application's own spans: a call inside each step attempt, a child of the attempt's span
    (`run_context`), exported by the SDK over OTLP as the standard variables configure. What an
    application gets by starting its spans in `tracker.context(...)`."""

    def __init__(self) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from otel_bridge.export.otlp_config import GRPC, protocol_for

        if protocol_for("traces") == GRPC:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        resource = Resource.create({"service.name": WORKFLOW_SERVICE, "deployment.environment.name": ENV})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("otel-bridge demo")
        # When each attempt started, by run: a run's are dropped at its end, the interrupted ones with them.
        self._started: dict[str, dict[tuple[str, int], int]] = {}

    def posted(self, batch: list[dict[str, Any]]) -> None:
        from opentelemetry.trace import Status, StatusCode

        from otel_bridge.propagation import run_context

        for event in batch:
            run = event.get("workflowId")
            if run is None:  # a job's
                continue
            if event["type"] in _RUN_ENDS:
                self._started.pop(run, None)
            if "stepName" not in event or "attempt" not in event:
                continue
            key = (event["stepName"], event["attempt"])
            at = int(_timestamp(event) * 1e9)
            if event["type"] == "step.started":
                self._started.setdefault(run, {})[key] = at
            elif event["type"] in _STEP_ENDS and (start := self._started.get(run, {}).pop(key, None)) is not None:
                # Inside the attempt, as a call the step makes is.
                margin = (at - start) // 5
                context = run_context(ENV, WORKFLOW_SERVICE, run, *key)
                call = _CALLS.get(key[0], f"call {key[0]}")
                span = self._tracer.start_span(call, context=context, start_time=start + margin)
                if event["type"] != "step.completed":
                    span.set_status(Status(StatusCode.ERROR, (event.get("error") or {}).get("message", "")))
                span.end(end_time=at - margin)

    def close(self) -> None:
        self._provider.shutdown()


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    events: list[dict[str, Any]] = field(compare=False)


def _timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _due(batch: list[dict[str, Any]]) -> float:
    """When an invocation posts, by the clock of the host it runs on: a skewed producer's timestamps are
    ahead of it."""
    ahead = CLOCK_AHEAD.total_seconds() if batch[0]["serviceKey"] == SKEWED_SERVICE else 0.0
    return _timestamp(batch[0]) - ahead


def run_demo(
    url: str,
    rate: float = 2.0,
    duration: float = 0.0,
    seed: int | None = None,
    headers: dict[str, str] | None = None,
    on_scenario: Callable[[str, Invocations], None] | None = None,
    app_spans: bool = False,
    incidents: float = 0.0,
) -> dict[str, Any]:
    """Start `rate` runs per second (every scenario once first) for `duration` s (0: forever).

    `app_spans`: also export the application's own spans, a call inside each step attempt (`ApplicationSpans`).
    `incidents`: the share of starts that are an incident instead (`INCIDENTS`: a lost alarm, a run that
    dies, a producer's clock ahead), each once first, then drawn at random."""
    rng = random.Random(seed)
    client = httpx.Client(timeout=30)
    trackers = {
        # No timer: one POST per invocation, flushed when it ends, as the engine does.
        service: HttpBatchTracker(url, ENV, service, headers=headers, client=client, flush_interval_seconds=None)
        for service in (WORKFLOW_SERVICE, JOB_SERVICE, SKEWED_SERVICE)
    }
    names = list(SCENARIOS)
    order = itertools.chain(names, iter(lambda: rng.choices(names, [WEIGHTS[n] for n in names])[0], None))
    # Each incident once first, as each scenario: every alert has something to show within minutes.
    mishaps = itertools.chain(INCIDENTS, iter(lambda: rng.choice(list(INCIDENTS)), None))
    app = ApplicationSpans() if app_spans else None
    queue: list[_Due] = []
    seq = itertools.count()
    started = time.time()
    next_start = started
    counts: dict[str, int] = {}
    try:
        while True:
            now = time.time()
            stopping = duration and now - started >= duration
            if not stopping and now >= next_start:
                name = next(mishaps) if incidents and rng.random() < incidents else next(order)
                invocations = (SCENARIOS | INCIDENTS)[name](datetime.fromtimestamp(now, UTC), rng)
                counts[name] = counts.get(name, 0) + 1
                if on_scenario:
                    on_scenario(name, invocations)
                for batch in invocations:
                    heapq.heappush(queue, _Due(_due(batch), next(seq), batch))
                next_start += 1 / rate
            if stopping and not queue:
                break
            while queue and queue[0].at <= time.time():
                batch = heapq.heappop(queue).events
                tracker = trackers[batch[0]["serviceKey"]]
                for event in batch:
                    tracker.emit(event)
                tracker.flush()  # one POST per invocation, awaited, as the engine does
                if app is not None:
                    app.posted(batch)
            candidates = [queue[0].at] if queue else []
            if not stopping:
                candidates.append(next_start)
            wake = min(candidates, default=time.time() + 0.05)
            time.sleep(max(0.0, min(wake - time.time(), 0.25)))
    finally:
        for tracker in trackers.values():
            tracker.close()
        if app is not None:
            app.close()
    stats = [t.stats for t in trackers.values()]
    return {
        "scenarios": counts,
        "events": sum(s.events for s in stats),
        "posts": sum(s.posts for s in stats),
        "retries": sum(s.retries for s in stats),
        "dropped_events": sum(s.dropped_events for s in stats),
        "rejected_events": sum(s.rejected_events for s in stats),
    }
