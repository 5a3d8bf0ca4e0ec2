"""`/healthz` is liveness: it fails for what a restart mends (a loop of the bridge's own that ended or
hangs), never for a backend or a store that is away, which `/readyz` tells and a restart cannot mend."""

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from otel_bridge.config import Settings
from otel_bridge.export.otlp import NoSender
from otel_bridge.liveness import Passes, reasons
from otel_bridge.receivers.http import create_app
from otel_bridge.runtime import Bridge


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ended_thread() -> threading.Thread:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return thread


def test_a_loop_in_one_pass_longer_than_the_limit_is_named_and_one_waiting_for_its_next_is_not():
    clock = _Clock()
    passes = Passes(clock)
    with passes.running("settle"):
        clock.now += 299
        assert reasons({}, passes, stuck_after=300) == {}
        clock.now += 2
        assert reasons({}, passes, stuck_after=300) == {
            "settle": "the settle loop has been in one pass for 301 s (stuck_after_seconds 300)"
        }
    assert reasons({}, passes, stuck_after=300) == {}  # the pass ended: waiting is not stuck


def test_a_long_pass_that_moves_on_is_not_stuck():
    clock = _Clock()
    passes = Passes(clock)
    with passes.running("settle"):
        for _ in range(10):
            clock.now += 100
            passes.progressed("settle")  # a settle slice committed
        assert reasons({}, passes, stuck_after=300) == {}


def test_a_thread_that_ended_is_named():
    alive = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    alive.start()
    assert reasons({"settle": alive, "overdue": _ended_thread()}, Passes(), 300) == {
        "overdue": "the overdue thread has ended"
    }


def _bridge(tmp_path, **values: Any) -> Bridge:
    settings = Settings(
        state=str(tmp_path / "s.db"),
        dead_letter=tmp_path / "dead.jsonl",
        span_dead_letter=tmp_path / "spans.jsonl",
        **values,
    )
    return Bridge(settings, trace_sender=NoSender(), metric_sender=NoSender())


def _until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _alive_gauge(bridge: Bridge) -> float:
    body, _ = bridge.exposition("text/plain")
    (line,) = [line for line in body.decode().splitlines() if line.startswith("otel_bridge_alive")]
    return float(line.rsplit(" ", 1)[1])


def test_a_settling_that_hangs_makes_the_bridge_not_alive_until_it_comes_round_again(tmp_path, caplog):
    bridge = _bridge(tmp_path, stuck_after_seconds=0.3)
    release, hanging = threading.Event(), threading.Event()
    settle_due = bridge.pipeline.settle_due

    def hangs(*args: Any, **kwargs: Any) -> int:
        if not release.is_set():
            hanging.set()
            release.wait(30)  # a store lock never given back, a call that never returns
        return settle_due(*args, **kwargs)

    bridge.pipeline.settle_due = hangs  # type: ignore[method-assign]
    bridge.start(follow=False)
    try:
        assert hanging.wait(10)
        assert _until(lambda: not bridge.liveness()["alive"])
        (reason,) = bridge.liveness()["reasons"]  # type: ignore[misc]
        assert reason.startswith("the settle loop has been in one pass for")
        assert _alive_gauge(bridge) == 0  # what the BridgeStuck alert watches
        # Told once, with where the thread is: what to read before a restart wipes it out.
        (told,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not alive")]
        assert "the settle loop" in told and "in hangs" in told and "release.wait(30)" in told
        release.set()
        assert _until(lambda: bridge.liveness()["alive"])
        assert _alive_gauge(bridge) == 1
    finally:
        release.set()
        bridge.stop()


def test_a_settling_of_many_runs_that_moves_on_slice_by_slice_stays_alive(tmp_path):
    bridge = _bridge(tmp_path, stuck_after_seconds=0.3)
    seen, long_done = [], threading.Event()

    def long_settling(*args: Any, **kwargs: Any) -> int:
        if not long_done.is_set():
            for _ in range(12):  # 1.2 s, four times the limit, one slice every 0.1 s
                time.sleep(0.1)
                bridge.pipeline.settled_slice()
                seen.append(bridge.liveness()["alive"])
            long_done.set()
        return 0

    bridge.pipeline.settle_due = long_settling  # type: ignore[method-assign]
    bridge.start(follow=False)
    try:
        assert long_done.wait(10)
        assert seen and all(seen)
    finally:
        bridge.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's end is the point
def test_a_loop_whose_thread_ended_makes_the_bridge_not_alive_and_healthz_says_which(tmp_path):
    bridge = _bridge(tmp_path)

    def ends() -> None:
        raise SystemExit  # past the loop's own catching of failures: the thread ends

    bridge.count_overdue = ends  # type: ignore[method-assign]
    bridge.start(follow=False)
    try:
        assert _until(lambda: not bridge.liveness()["alive"])
        app = create_app(bridge.consumer("http"), bridge.settings, bridge.exposition, bridge.readiness, bridge.liveness)

        async def healthz() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
                return await client.get("/healthz")

        answer = asyncio.run(healthz())
        assert answer.status_code == 503
        assert answer.json()["status"] == "stuck" and answer.json()["reasons"] == ["the overdue thread has ended"]
    finally:
        bridge.stop()


def test_a_bridge_not_started_or_stopping_is_not_called_stuck_for_its_loops_being_down(tmp_path):
    bridge = _bridge(tmp_path)
    assert bridge.liveness() == {"alive": True, "reasons": []}
    bridge.start(follow=False)
    assert bridge.liveness() == {"alive": True, "reasons": []}
    bridge.stop()
    assert bridge.liveness() == {"alive": True, "reasons": []}
