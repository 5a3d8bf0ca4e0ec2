"""A background task that keeps failing, told in the log: once in full, a line a minute, its recovery."""

import logging
import sqlite3
import threading

from otel_bridge.repeated_failure import Backoff, Refusals, RepeatedFailure
from otel_bridge.state.store import StoreUnavailable


def test_a_task_failing_every_second_logs_its_first_failure_then_a_line_a_minute_then_its_recovery(caplog):
    now = [0.0]
    failures = RepeatedFailure("checkpointing the state file", clock=lambda: now[0])
    full = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.INFO, logger="otel_bridge.repeated_failure"):
        for second in range(150):  # two and a half minutes of a full disk
            now[0] = float(second)
            failures.failed(full)
        failures.succeeded()
        failures.succeeded()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("ERROR", "checkpointing the state file failed; retrying", True),
        ("ERROR", "checkpointing the state file still failing (61 times in 60 s): database or disk is full", False),
        ("ERROR", "checkpointing the state file still failing (121 times in 120 s): database or disk is full", False),
        ("WARNING", "checkpointing the state file works again, after 150 failures", False),
    ]


def test_a_failure_after_a_recovery_is_told_in_full_again(caplog):
    failures = RepeatedFailure("checkpointing the state file", clock=lambda: 0.0)
    with caplog.at_level(logging.ERROR, logger="otel_bridge.repeated_failure"):
        failures.failed(OSError("disk I/O error"))
        failures.succeeded()
        failures.failed(OSError("disk I/O error"))
    assert [r.exc_info is not None for r in caplog.records] == [True, True]


def test_the_store_down_is_told_in_one_line_without_a_traceback(caplog):
    failures = RepeatedFailure("settling", clock=lambda: 0.0)
    with caplog.at_level(logging.ERROR, logger="otel_bridge.repeated_failure"):
        failures.failed(StoreUnavailable("redis unavailable: Connection refused"))
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [
        ("settling failed, retrying: redis unavailable: Connection refused", None)
    ]


def test_an_attempt_answers_what_the_work_returned_or_none_when_it_raised(caplog):
    failures = RepeatedFailure("reading the gauge", clock=lambda: 0.0)

    def broken() -> float:
        raise StoreUnavailable("redis unavailable")

    with caplog.at_level(logging.INFO, logger="otel_bridge.repeated_failure"):
        assert failures.attempt(broken) is None
        assert failures.attempt(lambda: 7.0) == 7.0
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]  # failed, then works again


class _Recorded(threading.Event):
    """A stop that is never set, and keeps the waits asked of it instead of waiting them."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return False


def test_a_followers_waits_double_up_to_the_most_and_start_again_once_it_works():
    stop, backoff = _Recorded(), Backoff(least=0.5, most=3.0, spread=0)
    for _ in range(5):
        backoff.wait(stop)
    backoff.worked()
    backoff.wait(stop)
    assert stop.waits == [0.5, 1.0, 2.0, 3.0, 3.0, 0.5]


def test_each_wait_is_drawn_about_its_time_so_that_bridges_failing_together_do_not_try_again_in_step():
    waits = []
    for _ in range(200):
        stop, backoff = _Recorded(), Backoff(least=1.0, most=4.0)
        for _ in range(4):
            backoff.wait(stop)
        waits.append(stop.waits)
    for n, time in enumerate([1.0, 2.0, 4.0]):
        drawn = [w[n] for w in waits]
        assert min(drawn) >= time * 0.5 and max(drawn) <= min(time * 1.5, 4.0)
        assert len(set(drawn)) > 150  # spread, not a few fixed values
    at_most = [w[3] for w in waits]  # at the most, drawn below it: never past it, and never in step there
    assert max(at_most) <= 4.0 and min(at_most) >= 2.0 and len(set(at_most)) > 150


def test_a_wait_the_other_side_asked_for_is_kept_whole_and_the_next_doubles_from_it():
    stop, backoff = _Recorded(), Backoff(least=0.5, most=30.0)
    backoff.wait(stop, at_least=3.0)  # a throttling backend's Retry-After: never cut short by the draw
    backoff.wait(stop)
    assert stop.waits[0] == 3.0
    assert 3.0 <= stop.waits[1] <= 9.0  # about 6 s: twice what was asked


def test_refusals_that_come_with_every_request_are_told_once_then_a_line_a_minute_with_how_many_then_their_end(caplog):
    now = [0.0]
    logger = logging.getLogger("otel_bridge.receivers.http")
    refusals = Refusals("batches", logger, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="otel_bridge.receivers.http"):
        for second in range(90):  # a minute and a half of a full backlog, a batch a second
            now[0] = float(second)
            refusals.refused(f"export backlog full ({second})")
        refusals.over()
        refusals.over()
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("otel_bridge.receivers.http", "WARNING", "export backlog full (0)"),
        ("otel_bridge.receivers.http", "WARNING", "export backlog full (60) (60 batches refused since the last line)"),
        ("otel_bridge.receivers.http", "INFO", "taking batches again, after 89 s and 90 refused"),
    ]
