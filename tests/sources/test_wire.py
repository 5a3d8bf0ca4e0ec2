"""What every source's wire models share: times OTLP can carry, judged in UTC; identities without control
characters, of bounded length; payloads shown within bounds."""

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, ValidationError

from otel_bridge.sources.wire import CONTROL_CHARACTERS, DecodeOptions, Identity, IsoTime, iso, ns, summary
from otel_bridge.sources.wire import reason as reason_of


class _Event(BaseModel):
    at: IsoTime
    id: Identity = "x"


def _problem(**fields: object) -> str:
    try:
        _Event.model_validate(fields)
    except ValidationError as exc:
        return reason_of(exc.errors(include_url=False)[0])
    return ""


@pytest.mark.parametrize(
    ("at", "kept"),
    [
        ("1970-01-01T00:30:00-01:00", True),  # 01:30 UTC
        ("1970-01-01T00:30:00+01:00", False),  # 1969 in UTC
        ("2554-07-20T23:00:00+02:00", True),
        ("2554-07-20T23:00:00-02:00", False),  # the 21st, 01:00 UTC: past the last time
        ("2025-03-01T12:00:00+14:00", True),
        ("2025-03-01T12:00:00", True),  # no offset: UTC
    ],
)
def test_a_time_is_judged_in_utc_whatever_its_offset(at, kept):
    assert (_problem(at=at) == "") is kept


def test_a_time_without_offset_is_read_as_utc():
    with_offset, without = _Event(at="2025-03-01T12:00:00Z"), _Event(at="2025-03-01T12:00:00")
    assert ns(with_offset.at) == ns(without.at)


def test_a_time_that_is_not_text_or_out_of_range_is_named_as_such():
    assert _problem(at=1740830400) == "must be an ISO-8601 timestamp string"  # not read as Unix seconds
    assert _problem(at=None) == "must be an ISO-8601 timestamp string"
    too_late = "must lie between 1970-01-01 and 2554-07-21 (UTC): OTLP cannot carry other times"
    assert _problem(at="2554-07-21T00:00:01") == too_late
    assert _problem(at="1969-12-31T23:59:59Z") == too_late
    assert "datetime" in _problem(at="yesterday")  # pydantic's own word on text that is no time


def test_a_time_keeps_its_microseconds():
    assert ns(_Event(at="2025-03-01T12:00:00.123456Z").at) == 1_740_830_400_123_456_000


def test_a_time_without_offset_comes_out_as_utc():
    assert _Event(at="2025-03-01T12:00:00").at == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert _Event(at="2025-03-01T12:00:00").at.isoformat() == "2025-03-01T12:00:00+00:00"


def test_an_identity_with_a_control_character_is_named_as_such():
    assert _problem(at="2025-03-01T12:00:00Z", id="a\x1fb") == CONTROL_CHARACTERS
    assert _problem(at="2025-03-01T12:00:00Z", id="a\x7f") == CONTROL_CHARACTERS
    assert _problem(at="2025-03-01T12:00:00Z", id="café ✓") == ""


def test_an_identity_is_at_most_a_thousand_characters_as_temporals_ids_are():
    assert _problem(at="2025-03-01T12:00:00Z", id="i" * 1000) == ""
    assert _problem(at="2025-03-01T12:00:00Z", id="i" * 1001) == "String should have at most 1000 characters"


def test_a_captured_input_nested_too_deeply_to_write_out_is_said_so_and_its_event_kept():
    deep: dict = {}
    inner = deep
    for _ in range(300):  # valid JSON, parsed by the bridge; orjson writes at most 254 levels
        inner["a"] = inner = {}
    assert summary(deep, DecodeOptions(capture_input=True)) == "[not shown: nested too deeply to write out]"


_OFFSETS = [
    None,  # naive: UTC
    UTC,
    _Event(at="2025-03-01T12:00:00Z").at.tzinfo,  # pydantic's own tzinfo, as every event's time has
    _Event(at="2025-03-01T12:00:00-05:30").at.tzinfo,
    timezone(timedelta(hours=14)),
    timezone(-timedelta(hours=3, minutes=7, seconds=5, microseconds=9)),
    ZoneInfo("Europe/Paris"),  # offsets that move (summer time)
    ZoneInfo("America/St_Johns"),
]


@pytest.mark.parametrize("offset", _OFFSETS, ids=str)
def test_nanoseconds_and_iso_text_are_those_of_the_instant_in_utc(offset):
    picks = random.Random(7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(300):
        wall = datetime(1970, 1, 2) + timedelta(microseconds=picks.randrange(0, 18_000_000_000_000_000))
        moment = wall.replace(tzinfo=offset)
        instant = moment if offset is not None else moment.replace(tzinfo=UTC)
        assert ns(moment) == (instant - epoch) // timedelta(microseconds=1) * 1_000
        assert iso(moment) == instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
