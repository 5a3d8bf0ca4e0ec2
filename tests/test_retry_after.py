"""`Retry-After` as RFC 9110 writes it: delay-seconds or an HTTP-date; what reads as neither is no wait."""

from email.utils import formatdate

import pytest

from otel_bridge.retry_after import seconds_asked

NOW = 1_445_412_470.0  # 2015-10-21 07:27:50 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),  # not the RFC's integer, but meant plainly
        ("-3", 0.0),  # a wait already over
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 10.0),  # no zone known: GMT, as every HTTP-date
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date past
        (formatdate(NOW + 60, usegmt=True), 60.0),
    ],
)
def test_a_wait_reads_as_the_seconds_it_asks_from_now(value, seconds):
    assert seconds_asked(value, now=NOW) == seconds


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "nan", "inf", "-inf", "Wed, 99 Foo 2015"])
def test_what_reads_as_no_wait_is_none(value):
    assert seconds_asked(value, now=NOW) is None
