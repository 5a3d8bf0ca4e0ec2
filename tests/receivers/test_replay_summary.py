"""What a replay tells at its end: its summary, for the person who ran it."""

from otel_bridge.consumer import Rejection
from otel_bridge.receivers.replay import At, ReplaySummary


def test_the_rejected_lines_are_told_in_the_files_order():
    # A batch's lines that are not JSON were told first, then the ones its decoder refused.
    rejected = [
        (At(3), Rejection(0, None, "", "not JSON")),
        (At(2, 1), Rejection(2, "e3", "", "late")),
        (At(1), Rejection(0, "e1", "type", "no")),
        (At(2, 0), Rejection(1, "e2", "", "bad")),
    ]
    summary = ReplaySummary(lines=3, rejected=rejected)
    told = summary.render().splitlines()
    assert told[1:] == [
        "  line 1: type: no (eventId e1)",
        "  line 2 events[0]: bad (eventId e2)",
        "  line 2 events[1]: late (eventId e3)",
        "  line 3: not JSON",
    ]


def test_the_events_are_counted_beside_the_lines_only_when_a_line_held_a_batch():
    assert ReplaySummary(lines=3, accepted=3).render() == "lines: 3  accepted: 3  duplicates: 0  late: 0  rejected: 0"
    batched = ReplaySummary(lines=3, batch_lines=2, batched=250, accepted=251)
    assert batched.render().startswith("lines: 3  events: 251  accepted: 251  ")
