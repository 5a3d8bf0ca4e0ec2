"""What a replay tells at its end: its summary, for the person who ran it."""

from otel_bridge.consumer import Rejection
from otel_bridge.receivers.replay import ReplaySummary


def test_the_rejected_lines_are_told_in_the_files_order():
    # A batch's lines that are not JSON were told first, then the ones its decoder refused.
    rejected = [(3, Rejection(0, None, "", "not JSON")), (1, Rejection(0, "e1", "type", "no"))]
    summary = ReplaySummary(lines=3, rejected=rejected)
    told = summary.render().splitlines()
    assert told[1:] == ["  line 1: type: no (eventId e1)", "  line 3: not JSON"]
